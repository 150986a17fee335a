#!/usr/bin/env bash
# The kubelet switch's host side, run by the installer as a transient systemd unit on the node (systemd-run through
# nsenter), because it stops kubelet and removes every pod of a runtime, the installer's own pod among them.
#
#   host-step.sh switch      kubelet off; every pod of the previous runtime removed over its CRI socket; kubelet's
#                            files pointed at berth (originals kept); kubelet on
#   host-step.sh unswitch    kubelet off; every berth pod removed; kubelet's files restored; berth uninstalled;
#                            kubelet on
#
# Reads switch.env beside its bin/ directory (written by entrypoint.sh). Leaves ACTION.done, or ACTION.failed with
# the reason after putting kubelet back as it was. BERTH_HOST_PREFIX (tests only) prefixes every host path.
set -euo pipefail
action=${1:?switch or unswitch}
prefix=${BERTH_HOST_PREFIX:-}
state=$prefix/var/lib/berth-installer
# shellcheck source=/dev/null
. "$state/switch.env"
node=$prefix/opt/berth/node/bin/node
helper=$prefix/opt/berth/dist/src/installer/main.js
kubelet_files=(--config "$prefix$KUBELET_CONFIG" --flags "$prefix$KUBELET_FLAGS" --state "$state/kubelet")

log() { printf '{"time":"%s","level":"%s","msg":"%s","component":"installer-host-step","action":"%s"}\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$1" "${2//\"/\\\"}" "$action" >&2; }
helper() { timeout 600 "$node" "$helper" "$@"; }
# Every host command is bounded: a hung kubelet or berth stop must not hold the node cordoned forever.
systemctl() { timeout 300 "$(type -P systemctl)" "$@"; }
# The socket path of a unix:// endpoint, as this host step sees it.
socket_of() { echo "$prefix${1#unix://}"; }

failed() {
  local why=$1
  log error "$why"
  # Whatever happened, kubelet runs again, on the files it had before this step.
  if [ "$action" = switch ]; then helper kubelet-unswitch "${kubelet_files[@]}" >/dev/null 2>&1 || true; fi
  systemctl start kubelet.service || true
  echo "$why" >"$state/$action.failed"
  exit 1
}

remove_pods_of() {
  local endpoint=$1
  if [ ! -S "$(socket_of "$endpoint")" ]; then log info "no socket for $endpoint: no pods to remove"; return 0; fi
  helper remove-pods --endpoint "unix://$(socket_of "$endpoint")" --timeout-seconds 120 || failed "removing the pods of $endpoint failed"
}

case $action in
  switch)
    # Read kubelet's files before anything is stopped: a file the switch could not rewrite fails here, with every
    # pod still running.
    detected=$(helper kubelet-endpoint "${kubelet_files[@]::4}" 2>&1) || failed "$detected"
    previous=${PREVIOUS_ENDPOINT:-$(echo "$detected" | sed -n 's/.*"endpoint":"\([^"]*\)".*/\1/p')}
    [ "$previous" != "$BERTH_ENDPOINT" ] || failed "kubelet already uses $BERTH_ENDPOINT but no switch was recorded"
    log info "switching kubelet from $previous to $BERTH_ENDPOINT"
    systemctl stop kubelet.service || failed "systemctl stop kubelet failed"
    remove_pods_of "$previous"
    helper kubelet-switch "${kubelet_files[@]}" --endpoint "$BERTH_ENDPOINT" >/dev/null || failed "rewriting kubelet's files failed"
    echo "$previous" >"$state/previous-endpoint"
    systemctl start kubelet.service || failed "systemctl start kubelet failed"
    touch "$state/switch.done"
    ;;
  unswitch)
    log info "switching kubelet back from $BERTH_ENDPOINT"
    systemctl stop kubelet.service || failed "systemctl stop kubelet failed"
    remove_pods_of "$BERTH_ENDPOINT"
    helper kubelet-unswitch "${kubelet_files[@]}" >/dev/null || failed "restoring kubelet's files failed"
    # berth goes before kubelet comes back: nothing can start a pod on it in between.
    systemctl disable --now berth.service || failed "systemctl disable --now berth failed"
    "$state/bin/install.sh" --root "$prefix/" --uninstall || failed "install.sh --uninstall failed"
    rm -f "$state/switched" "$state/switch.done" "$state/previous-endpoint"
    systemctl start kubelet.service || failed "systemctl start kubelet failed"
    touch "$state/unswitch.done"
    ;;
  *) echo "usage: host-step.sh switch|unswitch" >&2; exit 2 ;;
esac
log info "$action done"
