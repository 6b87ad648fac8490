#!/usr/bin/env bash
# Onboarding-wave benchmark (#17): N organisations (default 120) migrating at once, each with
# `sfm-migrate run --workers 4`, through two API replicas behind one address, with the operator,
# against a PostgreSQL server with max_connections = 300 (fsync on). It runs the end-to-end test
# `e2e::wave` at the benchmark's size and prints its figures: the time until all are Ready, the
# wave's time, each organisation's min/median/max, and the peak connections (all, each API replica,
# the operator). The test asserts that every organisation reaches Operational, that no client fails
# and that the connection caps hold; nothing about time is asserted.
#
#   hack/bench-wave.sh [N]   (SFM_WAVE_PATIENTS=50, SFM_WAVE_WORKERS=4, SFM_WAVE_MAX_CONNECTIONS=64,
#                             SFM_WAVE_MAX_CONNECTIONS_PER_DATABASE=8; SFM_BENCH_RELEASE=1 for a
#                             release build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export SFM_WAVE_ORGANISATIONS=${1:-120}
export SFM_WAVE_PATIENTS=${SFM_WAVE_PATIENTS:-50}
export SFM_WAVE_WORKERS=${SFM_WAVE_WORKERS:-4}
# The chart's defaults (api.maxConnections, api.maxConnectionsPerDatabase); the test's own are smaller.
export SFM_WAVE_MAX_CONNECTIONS=${SFM_WAVE_MAX_CONNECTIONS:-64}
export SFM_WAVE_MAX_CONNECTIONS_PER_DATABASE=${SFM_WAVE_MAX_CONNECTIONS_PER_DATABASE:-8}
profile=${SFM_BENCH_RELEASE:+release}
echo "== onboarding wave: $SFM_WAVE_ORGANISATIONS organisations x $SFM_WAVE_PATIENTS patients, --workers $SFM_WAVE_WORKERS, ${profile:-debug} build"
log=$(mktemp /tmp/sfm-bench-wave.XXXXXX)
cd "$root"
if SFM_PG_FAST=0 hack/test-env.sh cargo test ${SFM_BENCH_RELEASE:+--release} --test e2e -- \
    --exact e2e::wave::an_onboarding_wave_reaches_operational_within_every_connection_cap \
    --nocapture >"$log" 2>&1; then
  grep '^wave:' "$log"
  rm -f "$log"
else
  grep '^wave:' "$log" || true
  tail -60 "$log" >&2
  echo "bench-wave: the wave failed (whole log: $log)" >&2
  exit 1
fi
