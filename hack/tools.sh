#!/usr/bin/env bash
# Builds the chart tools, helm and kubeconform, from their Go modules (`go install`, pinned versions)
# into a cache outside the clone, keyed by this script, so a second run is instant. Prints the bin
# directory on stdout. Cold (module downloads included): 379 s on the shared 2-core machine.
set -euo pipefail
helm_version=v4.3.1
kubeconform_version=v0.8.0
key=$(cat "$0" | sha256sum | cut -c1-16)
cache="${SFM_CACHE_DIR:-$HOME/.cache/sfm-migration}/tools-$key"
bin="$cache/bin"
if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubeconform" ]; then
  command -v go >/dev/null || { echo "tools: Go is not installed" >&2; exit 1; }
  echo "tools: building helm $helm_version and kubeconform $kubeconform_version into $bin" >&2
  mkdir -p "$cache"
  tmp="$cache/bin.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$(date +%s)
  # -trimpath and no VCS stamping: the result depends only on the module versions.
  GOBIN="$tmp" GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 \
    go install -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" \
      "helm.sh/helm/v4/cmd/helm@$helm_version" >&2
  GOBIN="$tmp" GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 \
    go install -ldflags="-s -w -X main.version=$kubeconform_version" \
      "github.com/yannh/kubeconform/cmd/kubeconform@$kubeconform_version" >&2
  rm -rf "$bin"; mv "$tmp" "$bin"
  trap - EXIT
  echo "tools: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
