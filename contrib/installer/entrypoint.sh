#!/usr/bin/env bash
# The installer image's entrypoint, run by the chart's DaemonSets (privileged, hostPID, host directories under /host).
#
#   entrypoint.sh install        put berth on this node, write its config, start its unit, wait for its socket,
#                                switch kubelet to it when BERTH_KUBELET_SWITCH=true; then stay (ready) until stopped
#   entrypoint.sh uninstall      the pre-delete hook: switch kubelet back if it was switched, uninstall berth; then
#                                stay (ready = this node is clean) until helm deletes the hook
#   entrypoint.sh retire NAME SECONDS         the first hook Job: delete the installer DaemonSet NAME and wait until
#                                its pods are gone (none may reinstall berth while the cleanup removes it)
#   entrypoint.sh wait-cleanup NAME SECONDS   the last hook Job: wait until every pod of DaemonSet NAME is ready
#
# The host is reached two ways: its directories mounted under BERTH_HOST_ROOT (install.sh --root writes there), and
# nsenter into PID 1's namespaces for systemctl and systemd-run. Switching kubelet stops kubelet and removes every
# pod of the old runtime, this pod among them, so that part runs on the host as a transient systemd unit
# (host-step.sh); the pod kubelet then starts under the new runtime finishes the job (uncordon). Every step is
# idempotent: the pod may be killed and restarted between any two.
set -euo pipefail

mode=${1:-install}
host=${BERTH_HOST_ROOT:-/host}
image_dir=${BERTH_INSTALLER_DIR:-/opt/berth-installer}
install_sh=${BERTH_INSTALL_SH:-$image_dir/install.sh}
host_step=${BERTH_HOST_STEP:-$image_dir/host-step.sh}
# The image's unpacked bundle (its opt/berth, linked by the Dockerfile): its node runs the CRI probe.
bundle_dir=${BERTH_BUNDLE_DIR:-$image_dir/berth}
# The host's own socket, reached through PID 1's root: /run/berth is not mounted (it holds namespace pins).
socket=${BERTH_SOCKET_PATH:-/proc/1/root/run/berth/berth.sock}
chart_config=${BERTH_CHART_CONFIG:-/etc/berth-chart/config.toml}
ready_file=${BERTH_READY_FILE:-/tmp/berth-ready}
cleaned_file=${BERTH_CLEANED_FILE:-/tmp/berth-cleaned}
socket_wait=${BERTH_SOCKET_WAIT_SECONDS:-120}
node_name=${NODE_NAME:-}
# On the host (paths as the host sees them) and through the mount.
host_state=/var/lib/berth-installer
state=$host$host_state
berth_endpoint=unix:///run/berth/berth.sock

log() {
  local level=$1; shift
  local msg=$*
  msg=${msg//\\/\\\\}; msg=${msg//\"/\\\"}
  printf '{"time":"%s","level":"%s","msg":"%s","component":"installer","mode":"%s","node":"%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$level" "$msg" "$mode" "$node_name" >&2
}
die() { log error "$*"; exit 1; }

on_host() { timeout "${BERTH_HOST_COMMAND_TIMEOUT:-300}" nsenter --target 1 --mount --uts --ipc --net --pid -- "$@"; }

stay() {
  # SIGTERM (pod deletion, a rolling update) ends the pod and nothing else: uninstalling is the hook's job.
  local sleeper=
  trap 'log info "stopping"; [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null; exit 0' TERM INT
  while true; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper" || true
  done
}

bundle_file() {
  local f
  if [ -n "${BERTH_BUNDLE:-}" ]; then echo "$BERTH_BUNDLE"; return; fi
  for f in "$image_dir"/berth-*-linux-*.tar.gz; do
    [ -f "$f" ] && { echo "$f"; return; }
  done
  die "no berth-*-linux-*.tar.gz in $image_dir"
}

probe() { timeout 15 "$bundle_dir/node/bin/node" "$bundle_dir/dist/src/installer/main.js" probe --endpoint "unix://$socket" --timeout-seconds 5 >/dev/null 2>&1; }

wait_for_socket() {
  local deadline=$((SECONDS + socket_wait))
  until probe; do
    [ $SECONDS -lt $deadline ] || die "berth's socket $berth_endpoint did not answer within ${socket_wait}s (journalctl -u berth on the node)"
    sleep 1
  done
}

# The chart's config, with [metrics] address on this node's address when the chart asks (the ConfigMap holds a
# loopback placeholder: one ConfigMap serves every node). Prints the text.
node_config() {
  if [ "${BERTH_METRICS_ON_NODE_IP:-false}" = true ]; then
    [ -n "${NODE_IP:-}" ] || die "BERTH_METRICS_ON_NODE_IP=true needs NODE_IP (status.hostIP)"
    local ip=$NODE_IP
    case $ip in *:*) ip="[$ip]" ;; esac
    awk -v ip="$ip" '
      /^\[/ { section = $0 }
      section == "[metrics]" && /^address = "127\.0\.0\.1:[0-9]+"$/ { sub(/127\.0\.0\.1/, ip) }
      { print }' "$chart_config"
  else
    cat "$chart_config"
  fi
}

# The chart owns /etc/berth/config.toml (install.sh runs with --no-config and leaves /etc/berth alone). A file it
# did not write (an operator's, or an earlier plain install's) is kept once as config.toml.pre-chart; the new one
# replaces it atomically. Exit status 0 when the file changed.
write_config() {
  local dest=$host/etc/berth/config.toml sum_file=$state/config.sha256 new
  [ -f "$chart_config" ] || { log info "no chart config at $chart_config: keeping the node's"; return 1; }
  mkdir -p "$host/etc/berth"
  new=$(mktemp "$host/etc/berth/.config.toml.XXXXXX")
  node_config >"$new"
  if [ -f "$dest" ] && cmp -s "$new" "$dest"; then rm -f "$new"; return 1; fi
  # berth itself judges the file, on the host (CA and TLS files are host paths), before it replaces a good one.
  local check
  if ! check=$(on_host /opt/berth/bin/berth config check --config "/etc/berth/$(basename "$new")" 2>&1 >/dev/null); then
    rm -f "$new"
    die "the chart's config is refused by berth, /etc/berth/config.toml left as it was: $check"
  fi
  if [ -f "$dest" ] && [ ! -e "$dest.pre-chart" ] && ! { [ -f "$sum_file" ] && [ "$(sha256sum <"$dest")" = "$(cat "$sum_file")" ]; }; then
    cp -p "$dest" "$dest.pre-chart"
    log info "kept the node's earlier /etc/berth/config.toml as /etc/berth/config.toml.pre-chart"
  fi
  chmod 0644 "$new"
  mv -f "$new" "$dest"
  sha256sum <"$dest" >"$sum_file"
  log info "wrote /etc/berth/config.toml"
  return 0
}

# Where host-step.sh finds what it needs: written before every launch, read on the host.
write_switch_env() {
  mkdir -p "$state/bin"
  # The host step runs from the host's disk: install.sh for the uninstall that follows a switch back.
  cp -f "$host_step" "$state/bin/host-step.sh"
  cp -f "$install_sh" "$state/bin/install.sh"
  chmod 0755 "$state/bin/host-step.sh" "$state/bin/install.sh"
  {
    printf 'KUBELET_CONFIG=%q\n' "${BERTH_KUBELET_CONFIG:-/var/lib/kubelet/config.yaml}"
    printf 'KUBELET_FLAGS=%q\n' "${BERTH_KUBELET_FLAGS:-/var/lib/kubelet/kubeadm-flags.env}"
    printf 'PREVIOUS_ENDPOINT=%q\n' "${BERTH_PREVIOUS_RUNTIME_ENDPOINT:-}"
    printf 'BERTH_ENDPOINT=%q\n' "$berth_endpoint"
  } >"$state/switch.env"
}

kubectl_node() { timeout "$((${BERTH_DRAIN_TIMEOUT_SECONDS:-600} + 60))" kubectl "$@" "$node_name"; }

cordon_and_drain() {
  [ -n "$node_name" ] || die "NODE_NAME (spec.nodeName) is not set"
  kubectl_node cordon
  # DaemonSet pods (this one too) and static pods stay: the host step removes them from the runtime itself.
  kubectl_node drain --ignore-daemonsets --delete-emptydir-data --force --timeout="${BERTH_DRAIN_TIMEOUT_SECONDS:-600}s"
}

# Runs host-step.sh ACTION on the host as a transient unit, which outlives this pod, then waits to be killed with
# the old runtime's pods. Coming back here means the step ended without killing us: it failed (its marker says why).
run_host_step() {
  local action=$1
  write_switch_env
  rm -f "$state/$action.failed"
  log info "kubelet $action: handing over to the host (systemd unit berth-kubelet-$action); this pod is removed with its runtime's pods"
  on_host systemd-run --unit="berth-kubelet-$action" --collect --quiet --property=Type=oneshot \
    "$host_state/bin/host-step.sh" "$action"
  local deadline=$((SECONDS + ${BERTH_HOST_STEP_WAIT_SECONDS:-900}))
  while [ $SECONDS -lt $deadline ]; do
    if [ -f "$state/$action.failed" ]; then die "kubelet $action failed on the host: $(cat "$state/$action.failed") (kubelet was put back as it was; the node stays cordoned)"; fi
    if [ -f "$state/$action.done" ]; then return 0; fi
    sleep 2
  done
  die "kubelet $action: the host step did not finish within ${BERTH_HOST_STEP_WAIT_SECONDS:-900}s (journalctl -u berth-kubelet-$action)"
}

do_install() {
  local bundle sum was_active=0 changed=0
  bundle=$(bundle_file)
  mkdir -p "$state"
  sum=$(sha256sum <"$bundle")
  [ "$sum" = "$(cat "$state/bundle.sha256" 2>/dev/null)" ] || changed=1
  timeout 300 "$install_sh" --root "$host" --no-config "$bundle"
  if write_config; then changed=1; fi
  if on_host systemctl is-active --quiet berth.service; then was_active=1; fi
  on_host systemctl daemon-reload
  on_host systemctl enable --now berth.service
  if [ $was_active = 1 ] && [ $changed = 1 ]; then
    # Containers outlive the restart (KillMode=process); the new berth adopts them.
    log info "restarting berth.service for the new bundle or config"
    on_host systemctl restart berth.service
  fi
  wait_for_socket
  echo "$sum" >"$state/bundle.sha256"
  log info "berth serves on $berth_endpoint"

  if [ "${BERTH_KUBELET_SWITCH:-false}" = true ]; then
    if [ -f "$state/switch.done" ]; then
      # The pod kubelet started under berth after the host step: finish.
      kubectl_node uncordon
      mv -f "$state/switch.done" "$state/switched"
      log info "kubelet uses berth; node uncordoned"
    elif [ ! -f "$state/switched" ]; then
      cordon_and_drain
      run_host_step switch
      # Still alive: the old runtime did not remove this pod (it was already gone?). Finish here.
      kubectl_node uncordon
      mv -f "$state/switch.done" "$state/switched"
      log info "kubelet uses berth; node uncordoned"
    fi
  elif [ -f "$state/switched" ]; then
    log warn "kubeletSwitch is off but this node's kubelet was switched to berth by an earlier revision: it stays on berth; helm uninstall switches it back"
  fi
  touch "$ready_file"
  stay
}

do_uninstall() {
  mkdir -p "$state"
  if [ -f "$state/unswitch.done" ]; then
    # The pod kubelet started under the old runtime after the host step (which also uninstalled berth).
    kubectl_node uncordon
    rm -f "$state/unswitch.done"
    log info "kubelet back on its previous runtime; node uncordoned"
  elif [ -f "$state/switched" ] || [ -f "$state/switch.done" ]; then
    cordon_and_drain
    run_host_step unswitch
    kubectl_node uncordon
    rm -f "$state/unswitch.done"
  fi
  if [ -f "$host/opt/berth/.install-manifest" ]; then
    if on_host systemctl is-enabled --quiet berth.service || on_host systemctl is-active --quiet berth.service; then
      on_host systemctl disable --now berth.service
    fi
    timeout 300 "$install_sh" --root "$host" --uninstall
    on_host systemctl daemon-reload
  fi
  # The config the chart wrote stays (install.sh keeps it); the installer's own state goes: kubelet is not switched
  # (any more), so nothing in it is still needed. $state is the pod's hostPath mount: its contents are removed here
  # (never across another mount), the directory itself on the host, where it is no mount point.
  find "$state" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +
  on_host rmdir "$host_state" 2>/dev/null || [ ! -d "$host/$host_state" ] || log warn "could not remove $host_state on the host"
  log info "node clean"
  touch "$cleaned_file"
  stay
}

do_retire() {
  local name=${1:?retire needs the DaemonSet name} seconds=${2:-900}
  log info "deleting daemonset/$name and waiting for its pods to be gone"
  # Foreground: the DaemonSet object goes only after its pods did, and --wait waits for the object.
  timeout "$((seconds + 30))" kubectl -n "${POD_NAMESPACE:?}" delete "daemonset/$name" --ignore-not-found \
    --cascade=foreground --wait --timeout="${seconds}s"
}

do_wait_cleanup() {
  local name=${1:?wait-cleanup needs the DaemonSet name} seconds=${2:-900}
  log info "waiting for every pod of daemonset/$name to report its node clean"
  # Ready pods are clean nodes; rollout status returns once every scheduled pod is ready.
  timeout "$((seconds + 30))" kubectl -n "${POD_NAMESPACE:?}" rollout status "daemonset/$name" --timeout="${seconds}s"
}

case $mode in
  install) do_install ;;
  uninstall) do_uninstall ;;
  retire) shift; do_retire "$@" ;;
  wait-cleanup) shift; do_wait_cleanup "$@" ;;
  *) echo "usage: entrypoint.sh install|uninstall|retire NAME SECONDS|wait-cleanup NAME SECONDS" >&2; exit 2 ;;
esac
