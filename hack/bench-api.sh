#!/usr/bin/env bash
# The migration API's ingest benchmark: files/s and MB/s per stage (RSA unwrap, AES, unzip, parse and
# check, insert) and for the whole ingest path, naming the slowest stage. Needs PostgreSQL (started
# here by hack/test-env.sh when SFM_PG_ADMIN_URL is not set). Also PostgreSQL's CPU per patient stored
# (when the server is this run's own). Figures only, nothing asserted.
#   SFM_BENCH_FILES=200 SFM_BENCH_KEY_BITS=2048 hack/bench-api.sh   (SFM_BENCH_PROFILE=--profile=dev: no release build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${SFM_PG_ADMIN_URL:-}" ]; then
  export SFM_BENCH_KEY_BITS=${SFM_BENCH_KEY_BITS:-2048}
  exec hack/test-env.sh "$0" "$@"
fi
# PostgreSQL's CPU seconds, when the server is this run's own (hack/test-env.sh). The benchmark
# stores its N patients twice (the insert stage and the whole path, each into a database of its
# own), so the figure per patient is over 2N.
. "$root/hack/cpu.sh"
pg_data=${SFM_TEST_WORK_DIR:-}/postgres/data
before=$(postgres_cpu "$pg_data")
cargo test ${SFM_BENCH_PROFILE:---release} --test api_bench -- --ignored --nocapture --test-threads=1
if [ -n "${SFM_TEST_WORK_DIR:-}" ]; then
  files=${SFM_BENCH_FILES:-200}
  awk -v a="$before" -v b="$(postgres_cpu "$pg_data")" -v n="$files" 'BEGIN {
    printf "PostgreSQL CPU of the run: %.2f s, %.2f ms per patient stored (2 x %d, databases made included)\n", b - a, (b - a) * 1000 / (2 * n), n }'
fi
