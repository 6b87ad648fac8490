#!/usr/bin/env bash
# `make bench`: the benchmarks of DESIGN section 8. Each prints figures; nothing is asserted (the
# machines are shared and noisy). Sizes can be lowered for a quick look, e.g.
#   SFM_BENCH_DATABASES=100 make bench
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
status=0
run() {
  echo
  echo "######## $*"
  "$@" || { echo "bench: $1 failed" >&2; status=1; }
}
run "$root/hack/bench-operator.sh" "${SFM_BENCH_DATABASES:-1000}"
for extra in bench-api.sh bench-flow.sh bench-wave.sh; do
  if [ -x "$root/hack/$extra" ]; then run "$root/hack/$extra"; fi
done
exit $status
