#!/usr/bin/env bash
# `make test`: every check and every test. Formatting, clippy, the committed CRDs, then all cargo tests
# (unit, PostgreSQL integration and end-to-end) against a real PostgreSQL server and a real local
# control plane, then the chart on a real local node (hack/test-node.sh). Fails if the end-to-end
# suite ran no test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Each phase ends with "== PHASE: N s" (hack/test-node.sh prints its own phases the same way).
phase_start=$(date +%s)
phase() { # ends the current phase and starts the next (none: "")
  local now; now=$(date +%s)
  [ -n "${phase_name:-}" ] && echo "== $phase_name: $((now - phase_start)) s"
  phase_name=$1; phase_start=$now
  [ -z "$1" ] || echo "-- $1${2:+ ($2)}"
}

phase "reference files" "NHN's XSD and samples"
SFM_FORMAT_DIR=$(hack/nhn-reference.sh)
export SFM_FORMAT_DIR
echo "$SFM_FORMAT_DIR"
phase fmt "cargo fmt --check"
cargo fmt --all -- --check
phase clippy "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
phase crds "crds/ is current"
cargo build --quiet --bins
./target/debug/sfm-operator crds | diff -u crds/sfm.nhn.no.yaml - \
  || { echo "crds/ is stale: run 'make crds' and commit the result" >&2; exit 1; }

log=target/test-output.log
phase "cargo test" "against a real PostgreSQL and a real kube-apiserver; log in $log"
set +e
hack/test-env.sh cargo test --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
phase ""

# Count the end-to-end tests that really ran: the result line that follows the e2e test binary.
e2e=$(awk '/Running tests\/e2e\.rs/ {seen=1} seen && /^test result:/ {print; exit}' "$log")
passed=$(sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p' <<<"$e2e")
echo "== end-to-end tests: ${e2e:-none ran}"
read -r total_passed total_failed < <(awk '/^test result:/ {
  for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
  END { print p+0, f+0 }' "$log")
if [ "$status" -ne 0 ]; then
  echo "tests: $total_passed passed, $total_failed failed"
  echo "cargo test failed" >&2
  exit "$status"
fi
if [ -z "$passed" ] || [ "$passed" -eq 0 ]; then
  echo "tests: $total_passed passed, $total_failed failed"
  echo "the end-to-end suite ran no test: that proves nothing" >&2
  exit 1
fi

# The chart on a real local node (kubelet, containerd, kube-router's NetworkPolicy firewall): images,
# pods, probes, the examples, an upload from the host, failover. Needs root, as CI has; every check
# counts as one test. SFM_TEST_NODE=0 leaves it out (a quick local run; CI never sets it).
node_passed=0 node_failed=0 node_status=0
if [ "${SFM_TEST_NODE:-1}" != 0 ]; then
  node_log=target/test-node.log
  phase node "the chart on a real local node: hack/test-node.sh, its phases below; log in $node_log"
  set +e
  hack/test-node.sh 2>&1 | tee "$node_log"
  node_status=${PIPESTATUS[0]}
  set -e
  phase ""
  node_passed=$(grep -cE '^(test-node|images):   ok: ' "$node_log" || true)
  node_failed=$(grep -cE '^(test-node|images):   WRONG: ' "$node_log" || true)
  if [ "$node_status" -ne 0 ] && [ "$node_failed" -eq 0 ]; then node_failed=1; fi
  echo "== node checks: $node_passed passed, $node_failed failed"
fi
echo "tests: $((total_passed + node_passed)) passed, $((total_failed + node_failed)) failed"
if [ "$node_status" -ne 0 ]; then echo "the node tests failed" >&2; exit "$node_status"; fi
