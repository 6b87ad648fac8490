#!/usr/bin/env bash
# Builds what the local node (hack/node.sh) runs beside the control plane, each from its Go module into a
# cache outside the clone, keyed by what it is built from, so a second run is instant:
#   kubelet, kube-scheduler, kube-proxy   k8s.io/kubernetes v1.34.3 (tools/node, the same release as
#                                         tools/controlplane)
#   containerd, ctr, containerd-shim-runc-v2   github.com/containerd/containerd/v2 (go install @version)
#   kube-router                           github.com/cloudnativelabs/kube-router/v2 v2.1.0, for its
#                                         NetworkPolicy firewall only (test harness only, never shipped)
# runc and the CNI plugins come from Debian (hack/install-deps.sh). Prints the bin directory of each, one
# per line, on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/node"
k8s_version=v1.34.3 # must match k8s.io/kubernetes in tools/node/go.mod
containerd_version=v2.2.9
kube_router_version=v2.1.0
cache_root="${SFM_CACHE_DIR:-$HOME/.cache/sfm-migration}"
command -v go >/dev/null || { echo "build-node: Go is not installed" >&2; exit 1; }

# build NAME KEY WANT... -- COMMAND: runs COMMAND with $out set when a wanted binary is missing.
build() {
  local name=$1 key=$2; shift 2
  local want=()
  while [ "$1" != -- ]; do want+=("$1"); shift; done
  shift
  local bin="$cache_root/$name-$key/bin" missing=0
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    echo "build-node: building ${want[*]} into $bin" >&2
    mkdir -p "$(dirname "$bin")"
    out="$(dirname "$bin")/bin.tmp.$$"
    rm -rf "$out"; mkdir -p "$out"
    local start; start=$(date +%s)
    "$@" >&2
    rm -rf "$bin"; mv "$out" "$bin"
    echo "build-node: $name built in $(( $(date +%s) - start ))s" >&2
  fi
  echo "$bin"
}

k8s() {
  # Stamp the real version, as Kubernetes' own build does, or the node reports v0.0.0-master.
  local ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=34 -X $pkg.gitTreeState=clean"
  done
  (cd "$mod" && go build -ldflags="-s -w $ldflags" -o "$out/" k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy)
}
containerd() {
  # No btrfs, devmapper or zfs snapshotters (overlayfs only): no C headers needed.
  GOBIN="$out" GOFLAGS="-trimpath -buildvcs=false" go install -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version" \
    "github.com/containerd/containerd/v2/cmd/containerd@$containerd_version" \
    "github.com/containerd/containerd/v2/cmd/ctr@$containerd_version" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$containerd_version"
}
kube_router() {
  GOBIN="$out" GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 go install -ldflags="-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$kube_router_version"
}

self=$(sha256sum <"$0" | cut -c1-16)
build node-k8s "$(cat "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" "$0" | sha256sum | cut -c1-16)" \
  kubelet kube-scheduler kube-proxy -- k8s
build containerd "$containerd_version-$self" containerd ctr containerd-shim-runc-v2 -- containerd
build kube-router "$kube_router_version-$self" kube-router -- kube_router
