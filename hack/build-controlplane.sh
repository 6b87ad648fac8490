#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from their Go modules
# (tools/controlplane) into a cache outside the clone, keyed by the module's go.sum, so a second run is
# instant. Prints the bin directory on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/controlplane"
version=v1.34.3 # must match k8s.io/kubernetes in tools/controlplane/go.mod
key=$(cat "$mod/go.mod" "$mod/go.sum" "$mod"/cmd/*/*.go "$0" | sha256sum | cut -c1-16)
cache="${SFM_CACHE_DIR:-$HOME/.cache/sfm-migration}/controlplane-$key"
bin="$cache/bin"
want=(etcd kube-apiserver kube-controller-manager kubectl)
missing=0
for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
  command -v go >/dev/null || { echo "build-controlplane: Go is not installed" >&2; exit 1; }
  echo "build-controlplane: building ${want[*]} from Go modules into $bin (cold: about 12 minutes on 2 cores)" >&2
  mkdir -p "$cache"
  tmp="$cache/bin.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  start=$(date +%s)
  # Stamp the real version, as Kubernetes' own build does, so clients and the emulation-version logic see v1.34.
  ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=34 -X $pkg.gitTreeState=clean"
  done
  (cd "$mod" && go build -ldflags="-s -w $ldflags" -o "$tmp/" ./cmd/etcd \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl) >&2
  rm -rf "$bin"; mv "$tmp" "$bin"
  echo "build-controlplane: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
