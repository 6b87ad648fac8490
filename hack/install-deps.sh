#!/usr/bin/env bash
# Installs what building and testing need on a bare Debian machine (idempotent; quick when present):
# Debian packages (lua5.4 runs the Argo CD health checks in the chart tests, libxml2-dev is what the
# migration API links for NHN's XSD, xmllint the tests' second opinion), the Rust components, and the
# control-plane binaries, helm and kubeconform built from Go modules.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
need=()
for pair in openssl:openssl curl:curl xmllint:libxml2-utils unzip:unzip python3:python3 runuser:util-linux \
            make:make cc:gcc pkg-config:pkg-config lua5.4:lua5.4; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && ! command -v initdb >/dev/null; then need+=(postgresql-15); fi
# The migration API links Debian's libxml2 (the XSD check): libxml2-dev to link against it.
pkg-config --exists libxml-2.0 2>/dev/null || need+=(libxml2-dev)
# The local node (hack/node.sh, make test-node): runc, the CNI plugins, catatonit (the pause image),
# buildah (the images), iptables and ipset (kube-proxy and kube-router), conntrack.
for pair in /usr/sbin/runc:runc /usr/lib/cni/bridge:containernetworking-plugins /usr/bin/catatonit:catatonit \
            /usr/bin/buildah:buildah /usr/sbin/iptables:iptables /usr/sbin/ipset:ipset /usr/sbin/conntrack:conntrack \
            /usr/sbin/nft:nftables; do
  [ -x "${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo >/dev/null || { echo "install-deps: Rust (cargo) is missing on this machine" >&2; exit 1; }
command -v go >/dev/null || { echo "install-deps: Go is missing on this machine" >&2; exit 1; }
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
# tuspy: a tus client nobody here wrote, for the migration API's end-to-end test.
python3 -c 'import tusclient' 2>/dev/null || python3 -m pip install -q tuspy 2>/dev/null \
  || python3 -m pip install -q --break-system-packages tuspy
# cryptography: the DPoP proofs (PS256) of the stand-in for NHN's uploader (tests/fixtures/nhn_uploader).
python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography 2>/dev/null \
  || python3 -m pip install -q --break-system-packages cryptography
"$root/hack/build-controlplane.sh" >/dev/null
"$root/hack/tools.sh" >/dev/null # helm and kubeconform for the chart tests
