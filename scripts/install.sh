#!/bin/bash
# Installs a berth release bundle (npm run package) into a root, or removes what an earlier run installed.
#
#   install.sh [--root DIR] [--no-config] [BUNDLE.tar.gz]   install or upgrade in place (idempotent)
#   install.sh [--root DIR] --uninstall [--purge]     remove what the manifest lists
#
# The bundle: BUNDLE.tar.gz if given; else the unpacked bundle this script sits in (its bundle-info beside it); else
# the only berth-*-linux-*.tar.gz beside this script. DIR (default /) is the root the node boots from: the chart's
# installer passes the host's root mounted in its container.
#
# Installs DIR/opt/berth (node, JavaScript, node_modules, berth-shim), DIR/usr/local/bin/berth,
# DIR/etc/systemd/system/berth.service, DIR/etc/berth/config.toml (an existing one is kept and the bundle's written
# as config.toml.new beside it) and DIR/etc/crictl.yaml (only when none exists). Every path it creates is listed in
# DIR/opt/berth/.install-manifest with the bundle's version; --uninstall removes exactly those, except
# /etc/berth/config.toml and /var/lib/berth (what it kept is listed in /etc/berth/.install-manifest). --purge, then or
# later, removes those too and /run/berth, refusing while anything is mounted below them (a pod's rootfs, a volume).
# A file in the bundle's way that no earlier run installed is refused, naming it, before anything is written.
#
# --no-config leaves /etc/berth alone entirely: no config.toml, no config.toml.new, and what an earlier run listed
# there stays listed as it was. For a caller that owns berth's config itself (the Helm chart's installer writes
# /etc/berth/config.toml from its ConfigMap); berth without a config file runs on its defaults.
#
# It never enables, starts or stops a unit in a root other than /: the caller does that on the host. With --root /
# and systemd running it runs `systemctl daemon-reload` after installing, and before uninstalling stops and disables
# berth.service if that unit is active or enabled.
set -euo pipefail
umask 022

me="install.sh"
die() {
  echo "$me: $*" >&2
  exit 1
}
say() { echo "$me: $*"; }

root=/
uninstall=0
purge=0
write_config=1
bundle=""
bundle_tmp=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root="$2"; shift 2 ;;
    --root=*) root="${1#--root=}"; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --no-config) write_config=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$bundle" ] || die "one bundle at a time ($bundle, $1)"; bundle="$1"; shift ;;
  esac
done
[ $purge -eq 0 ] || [ $uninstall -eq 1 ] || die "--purge goes with --uninstall"
[ $uninstall -eq 0 ] || [ -z "$bundle" ] || die "--uninstall takes no bundle (it removes what the manifest lists)"
[ $uninstall -eq 0 ] || [ $write_config -eq 1 ] || die "--no-config is for installing (--uninstall keeps the config unless --purge)"
[ -d "$root" ] || die "--root $root is not a directory"
root="$(cd "$root" && pwd -P)"
# Paths below are written "$root$path" with path absolute.
[ "$root" != / ] || root=""
host_root() { [ -z "$root" ]; }

opt=/opt/berth
manifest_path="$opt/.install-manifest"
kept_manifest_path=/etc/berth/.install-manifest
config=/etc/berth/config.toml
crictl=/etc/crictl.yaml
state_dir=/var/lib/berth
run_dir=/run/berth

systemd_running() { host_root && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# The manifest: "version V", "arch A", then one "KIND<TAB>PATH" line per path this script created, KIND being
# dir, file, link or config (config: kept by --uninstall unless --purge). Paths are relative to the root.
# After an --uninstall without --purge, what remains of it (the config and the directories holding it) is listed in
# kept_manifest_path, beside the config: a later --purge removes it, a later install adopts it.
current_manifest() {
  if [ -f "$root$manifest_path" ]; then echo "$root$manifest_path"; elif [ -f "$root$kept_manifest_path" ]; then echo "$root$kept_manifest_path"; fi
}
manifest_entries() { local m; m="$(current_manifest)"; if [ -n "$m" ]; then grep -E $'^(dir|file|link|config)\t/' "$m" || true; fi; }
manifest_value() { local m; m="$(current_manifest)"; if [ -n "$m" ]; then sed -n "s/^$1 //p" "$m" | head -n1; fi; }

# An unlink+create, never a write into an existing file: a running berth (or node) keeps the inode it has open.
install_file() {
  local src="$1" dest="$2"
  if [ -L "$src" ]; then
    [ "$(readlink "$dest" 2>/dev/null)" = "$(readlink "$src")" ] && [ -L "$dest" ] && return 0
  elif [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest"; then
    chmod --reference="$src" "$dest"
    return 0
  fi
  cp -P --preserve=mode "$src" "$dest.berth-new"
  mv -fT "$dest.berth-new" "$dest"
}

# Files and links of manifest lines on stdin, in one rm (thousands of them: a process each would take a minute).
remove_listed() {
  awk -F'\t' -v r="$root" '$1 == "file" || $1 == "link" { print r $2 }' | xargs -d '\n' -r rm -f --
}

# Directories named on stdin, deepest first, each only if empty: what the node put inside one keeps it.
remove_dirs() {
  LC_ALL=C sort -r | awk -v r="$root" 'NF { print r $0 }' | xargs -d '\n' -r rmdir --ignore-fail-on-non-empty -- 2>/dev/null || true
}

# Refuses to delete a tree while something is mounted inside it (a container's rootfs, a volume bind mount): rm
# would delete through the mount into the node's data. Checked in this mount namespace and, when this runs with
# another root than pid 1's (a container with hostPID), in pid 1's too.
refuse_mounted() {
  local dir="$1"
  [ -e "$root$dir" ] || return 0
  if mounted_under "$(readlink -f "$root$dir")" /proc/self/mountinfo; then
    die "$root$dir has mounts inside it: stop and remove the pods first (crictl rmp -af), or unmount them"
  fi
  if [ -n "$root" ] && [ -r /proc/1/mountinfo ] && ! [ /proc/1/root/. -ef / ] && mounted_under "$dir" /proc/1/mountinfo; then
    die "$dir has mounts inside it on the host (pid 1's mount namespace): stop and remove the pods first"
  fi
}

# mountinfo's fifth field is the mount point, with space, tab, newline and backslash octal-escaped.
mounted_under() {
  awk -v d="$1" '{ m = $5; gsub(/\\040/, " ", m); gsub(/\\011/, "\t", m); gsub(/\\012/, "\n", m); gsub(/\\134/, "\\", m)
    if (m == d || index(m, d "/") == 1) found = 1 } END { exit !found }' "$2"
}

uninstall() {
  if [ -z "$(current_manifest)" ]; then
    say "nothing to uninstall: no $root$manifest_path"
    [ $purge -eq 0 ] || purge_data
    return 0
  fi
  if [ -f "$root$manifest_path" ] && systemd_running && { systemctl is-active --quiet berth.service || systemctl is-enabled --quiet berth.service; } 2>/dev/null; then
    say "stopping and disabling berth.service"
    systemctl disable --now berth.service
  fi
  local entries version
  entries="$(manifest_entries)"
  version="$(manifest_value version)"
  printf '%s\n' "$entries" | remove_listed
  rm -f -- "$root$manifest_path" "$root$kept_manifest_path"
  if [ $purge -eq 1 ]; then
    printf '%s\n' "$entries" | awk -F'\t' '$1 == "config" { print $2 }' | while IFS= read -r path; do rm -f -- "$root$path"; done
    purge_data
  fi
  printf '%s\n' "$entries" | awk -F'\t' '$1 == "dir" { print $2 }' | remove_dirs
  if [ $purge -eq 0 ]; then
    local kept
    kept="$(printf '%s\n' "$entries" | while IFS=$'\t' read -r kind path; do
      case "$kind" in config|dir) if [ -e "$root$path" ]; then printf '%s\t%s\n' "$kind" "$path"; fi ;; esac
    done)"
    if [ -n "$kept" ] && [ -d "$root${kept_manifest_path%/*}" ]; then
      printf '# berth: what install.sh --uninstall kept; install.sh --uninstall --purge removes it\nversion %s\n%s\n' "$version" "$kept" >"$root$kept_manifest_path"
    fi
  fi
  if systemd_running; then systemctl daemon-reload; fi
  say "uninstalled berth ${version:-?} from ${root:-/}$( [ $purge -eq 1 ] && echo ' (purged)' || echo "; kept $config and $state_dir (--purge removes them)")"
}

purge_data() {
  local dir
  for dir in "$state_dir" "$run_dir"; do refuse_mounted "$dir"; done
  for dir in "$state_dir" "$run_dir"; do rm -rf --one-file-system -- "$root$dir"; done
  rm -f -- "$root$config" "$root$config.new" "$root$kept_manifest_path"
  rmdir -- "$root/etc/berth" 2>/dev/null || true
}

machine_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64|arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

bundle_value() { sed -n "s/^$1=//p" "$2/bundle-info" | head -n1; }

install() {
  local src
  here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd -P)"
  if [ -z "$bundle" ]; then
    if [ -f "$here/bundle-info" ]; then
      src="$here"
    else
      local found=("$here"/berth-*-linux-*.tar.gz)
      [ -e "${found[0]}" ] || die "no bundle given, none beside $0, and $here is no unpacked bundle"
      [ ${#found[@]} -eq 1 ] || die "several bundles beside $0 (${found[*]}): name one"
      bundle="${found[0]}"
    fi
  fi
  if [ -n "$bundle" ]; then
    [ -f "$bundle" ] || die "$bundle: no such file"
    bundle_tmp="$(mktemp -d "${TMPDIR:-/tmp}/berth-install.XXXXXX")"
    trap 'rm -rf -- "$bundle_tmp"' EXIT
    tar -C "$bundle_tmp" --no-same-owner -xzf "$bundle" || die "$bundle: cannot unpack"
    local tops=("$bundle_tmp"/*)
    { [ ${#tops[@]} -eq 1 ] && [ -f "${tops[0]}/bundle-info" ]; } || die "$bundle is no berth bundle (no single directory with bundle-info)"
    src="${tops[0]}"
  fi
  { [ -d "$src/root$opt" ] && [ -f "$src/config/config.toml" ]; } || die "$src is no berth bundle (no root$opt or config/)"

  local version arch machine
  version="$(bundle_value version "$src")"
  arch="$(bundle_value arch "$src")"
  machine="$(machine_arch)"
  { [ -n "$version" ] && [ -n "$arch" ]; } || die "$src/bundle-info has no version or arch"
  [ "$arch" = "$machine" ] || die "the bundle is for linux-$arch, this machine is linux-$machine ($(uname -m)): use berth-$version-linux-$machine.tar.gz"

  local previous
  previous="$(manifest_value version)"
  # What an earlier install listed: still ours (dirs it created, config it wrote), and the files a new version no
  # longer ships, to be removed.
  local old_entries
  old_entries="$(manifest_entries)"
  declare -A ours=()
  local kind path
  while IFS=$'\t' read -r kind path; do [ -n "$path" ] && ours["$path"]="$kind"; done <<<"$old_entries"

  local new_manifest=""
  # A file of someone else's is never replaced (uninstall would then delete it); a previous install's is. Checked
  # before anything is written, so a refusal changes nothing.
  local -a fresh=() present=()
  while IFS= read -r path; do
    path="/$path"
    if [ -e "$root$path" ] || [ -L "$root$path" ]; then
      case "${ours[$path]:-}" in
        file|link) present+=("$path") ;;
        *) die "$root$path exists and was not installed by this script: move it aside, then run again" ;;
      esac
    else
      fresh+=("$path")
    fi
  done < <(cd "$src/root" && find . \( -type f -o -type l \) -printf '%P\n' | LC_ALL=C sort)

  # Directories, noting those this install creates.
  while IFS= read -r path; do
    path="/$path"
    if [ -d "$root$path" ] && [ ! -L "$root$path" ]; then
      if [ "${ours[$path]:-}" = dir ]; then new_manifest+="dir"$'\t'"$path"$'\n'; fi
    else
      # A symlink is not followed: under --root it would resolve in this process's filesystem, not the node's.
      if [ -L "$root$path" ]; then die "$root$path is a symlink: install.sh does not follow symlinks it would install through"; fi
      if [ -e "$root$path" ]; then die "$root$path exists and is no directory: remove it first"; fi
      mkdir -m 755 -- "$root$path"
      new_manifest+="dir"$'\t'"$path"$'\n'
    fi
    unset 'ours[$path]'
  done < <(cd "$src/root" && find . -mindepth 1 -type d -printf '%P\n' | LC_ALL=C sort)

  # New files in one tar pipe (thousands of them: a process per file would take a minute).
  if [ ${#fresh[@]} -gt 0 ]; then
    printf '%s\n' "${fresh[@]#/}" | tar -C "$src/root" --no-recursion --verbatim-files-from -T - -cf - | tar -C "${root:-/}" --no-same-owner -xpf -
  fi
  # Files an earlier install wrote: only those whose content differs, each replaced by a rename.
  local -a changed=()
  if [ ${#present[@]} -gt 0 ]; then
    mapfile -t changed < <(paste -d '\n' \
      <(cd "$src/root" && printf '%s\0' "${present[@]#/}" | xargs -0 sha256sum -- 2>/dev/null) \
      <(cd "${root:-/}" && printf '%s\0' "${present[@]#/}" | xargs -0 sha256sum -- 2>/dev/null) |
      awk 'NR % 2 == 1 { a = $0; next } a != $0 { sub(/^[^ ]+  /, "", a); print a }')
  fi
  for path in "${changed[@]}"; do install_file "$src/root/$path" "$root/$path"; done
  for path in "${present[@]}"; do [ ! -L "$src/root$path" ] || install_file "$src/root$path" "$root$path"; done
  for path in "${fresh[@]}" "${present[@]}"; do
    if [ -L "$src/root$path" ]; then new_manifest+="link"$'\t'"$path"$'\n'; else new_manifest+="file"$'\t'"$path"$'\n'; fi
    unset 'ours[$path]'
  done

  # The config: berth's is the operator's once written; the bundle's goes beside an existing one as .new. With
  # --no-config none of it is touched, and an earlier run's entries for it are carried over unchanged.
  local etc_berth=/etc/berth
  if [ $write_config -eq 0 ]; then
    for path in "$etc_berth" "$config" "$config.new"; do
      if [ -n "${ours[$path]:-}" ]; then new_manifest+="${ours[$path]}"$'\t'"$path"$'\n'; fi
      unset 'ours[$path]'
    done
  else
    if [ ! -d "$root$etc_berth" ]; then
      # umask 022: 0755, the parents too.
      mkdir -p -- "$root$etc_berth"
      new_manifest+="dir"$'\t'"$etc_berth"$'\n'
    elif [ "${ours[$etc_berth]:-}" = dir ]; then
      new_manifest+="dir"$'\t'"$etc_berth"$'\n'
    fi
    unset 'ours[$etc_berth]'
    if [ -e "$root$config" ]; then
      if [ "${ours[$config]:-}" = config ]; then new_manifest+="config"$'\t'"$config"$'\n'; fi
      if ! cmp -s "$src/config/config.toml" "$root$config"; then
        install_file "$src/config/config.toml" "$root$config.new"
        new_manifest+="file"$'\t'"$config.new"$'\n'
        unset 'ours[$config.new]'
        say "kept $root$config; this bundle's default configuration is in $root$config.new"
      fi
    else
      install_file "$src/config/config.toml" "$root$config"
      new_manifest+="config"$'\t'"$config"$'\n'
    fi
    unset 'ours[$config]'
  fi
  # crictl's: only when there is none (another runtime's node has its own), and then ours until uninstalled.
  if [ ! -e "$root$crictl" ] && [ ! -L "$root$crictl" ]; then
    install_file "$src/config/crictl.yaml" "$root$crictl"
    new_manifest+="file"$'\t'"$crictl"$'\n'
  elif [ "${ours[$crictl]:-}" = file ]; then
    new_manifest+="file"$'\t'"$crictl"$'\n'
  fi
  unset 'ours[$crictl]'

  # Files the previous version installed and this one does not ship.
  for path in "${!ours[@]}"; do
    case "${ours[$path]}" in
      file|link) rm -f -- "$root$path" ;;
    esac
  done
  # Its directories left empty by that, deepest first (those this install still has are listed already).
  while IFS= read -r path; do
    [ -n "$path" ] || continue
    # Not empty: the node put something there; still ours to try again at uninstall.
    if ! rmdir -- "$root$path" 2>/dev/null; then new_manifest+="dir"$'\t'"$path"$'\n'; fi
  done < <(for path in "${!ours[@]}"; do if [ "${ours[$path]}" = dir ] && [ -d "$root$path" ]; then echo "$path"; fi; done | LC_ALL=C sort -r)

  {
    echo "# berth install manifest: what install.sh created under this root; install.sh --uninstall removes it"
    echo "version $version"
    echo "arch $arch"
    printf '%s' "$new_manifest"
  } >"$root$manifest_path.berth-new"
  mv -fT "$root$manifest_path.berth-new" "$root$manifest_path"
  rm -f -- "$root$kept_manifest_path"

  if systemd_running; then systemctl daemon-reload; fi
  if [ -n "$previous" ] && [ "$previous" != "$version" ]; then
    say "upgraded berth $previous to $version in ${root:-/}"
  else
    say "installed berth $version in ${root:-/}"
  fi
  if host_root; then
    say "next: systemctl enable --now berth (or systemctl restart berth after an upgrade)"
  fi
}

if [ $uninstall -eq 1 ]; then uninstall; else install; fi
