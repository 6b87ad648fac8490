#!/usr/bin/env bash
# The migration API's ingest benchmark: files/s and MB/s per stage (RSA unwrap, AES, unzip, parse and
# check, insert) and for the whole ingest path, naming the slowest stage. Needs PostgreSQL (started
# here by hack/test-env.sh when SFM_PG_ADMIN_URL is not set). Figures only, nothing asserted.
#   SFM_BENCH_FILES=200 SFM_BENCH_KEY_BITS=2048 hack/bench-api.sh   (SFM_BENCH_PROFILE=--profile=dev: no release build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run=(cargo test ${SFM_BENCH_PROFILE:---release} --test api_bench -- --ignored --nocapture --test-threads=1)
if [ -n "${SFM_PG_ADMIN_URL:-}" ]; then
  "${run[@]}"
else
  bits=${SFM_BENCH_KEY_BITS:-2048}
  SFM_BENCH_KEY_BITS=$bits hack/test-env.sh "${run[@]}"
fi
