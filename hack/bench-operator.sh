#!/usr/bin/env bash
# Operator benchmark (DESIGN section 8): N MigrationDatabases (default 1,000) against one PostgreSQL
# server. Prints the time until all are Ready, the operator's peak memory, and the floor: the same SQL
# run by a plain parallel psql script. Figures only, nothing asserted.
#
#   hack/bench-operator.sh [N]          (SFM_BENCH_CONCURRENCY=8 sets both the operator and psql fan-out)
#
# Runs inside hack/test-env.sh (its own PostgreSQL and control plane). PostgreSQL runs with fsync on here
# (unlike the tests), so the figures are those of a durable server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-1000}
concurrency=${SFM_BENCH_CONCURRENCY:-8}

if [ -z "${SFM_TEST_WORK_DIR:-}" ]; then
  (cd "$root" && cargo build --quiet --bins)
  SFM_PG_FAST=0 exec "$root/hack/test-env.sh" "$0" "$@"
fi
work=$SFM_TEST_WORK_DIR
ns=bench
echo "== operator benchmark: $n MigrationDatabases, concurrency $concurrency, debug build of sfm-operator (dependencies optimised)"
psql_admin() { psql "$SFM_PG_ADMIN_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_admin -c "ALTER SYSTEM SET max_connections = 300" >/dev/null
"$root/hack/postgres.sh" stop "$work/postgres" >/dev/null && "$root/hack/postgres.sh" start "$work/postgres" >/dev/null

kubectl apply --server-side -f "$root/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/migrationdatabases.sfm.nhn.no >/dev/null
kubectl create namespace $ns >/dev/null
kubectl create namespace sfm-system >/dev/null

manifests=$work/databases.yaml
for i in $(seq 1 "$n"); do
  printf 'apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: org-%d\n  namespace: %s\nspec:\n  organisation:\n    name: Bench %d\n    organisationNumber: "974760673"\n    helseIdClientId: bench-%d\n  dataModelVersion: 4\n  reclaimPolicy: Delete\n---\n' "$i" "$ns" "$i" "$i"
done >"$manifests"

SFM_DEFAULT_ADMIN_URL=$SFM_PG_ADMIN_URL RUST_LOG=warn "$root/target/debug/sfm-operator" run \
  --api-namespace sfm-system --watch-namespace $ns --leader-election=false \
  --concurrency "$concurrency" >"$work/operator.log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null || true' EXIT
start=$(date +%s.%N)
kubectl apply --server-side -f "$manifests" >/dev/null
applied=$(date +%s.%N)
ready=0
while [ "$ready" -lt "$n" ]; do
  sleep 2
  ready=$(kubectl -n $ns get mdb -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  printf '\r   %d/%d Ready after %.0fs' "$ready" "$n" "$(echo "$(date +%s.%N) - $start" | bc)"
  kill -0 $operator 2>/dev/null || { echo; echo "the operator died; see $work/operator.log" >&2; exit 1; }
done
done_at=$(date +%s.%N)
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$operator/status")
echo
databases=$(psql_admin -At -c "SELECT count(*) FROM pg_database WHERE datname LIKE 'sfm\\_bench\\_%'")
printf 'operator: %d databases Ready in %.1fs (apply took %.1fs), %.1f databases/s; peak RSS %.0f MiB; %s tagged databases on the server\n' \
  "$n" "$(echo "$done_at - $start" | bc)" "$(echo "$applied - $start" | bc)" \
  "$(echo "$n / ($done_at - $start)" | bc -l)" "$(echo "$peak_kb / 1024" | bc -l)" "$databases"
kill $operator; wait $operator 2>/dev/null || true

# The floor: the same statements (roles with SCRAM verifiers, tagged database created and renamed,
# schema migrations as the owner, grants, metadata row) from psql, $concurrency at a time.
migrations=$(ls "$root"/migrations/*.sql | sort)
floor_one() {
  local i=$1 base="sfm_floor_$1"
  psql_admin <<SQL
CREATE ROLE ${base}_owner NOLOGIN; COMMENT ON ROLE ${base}_owner IS 'sfm.nhn.no/migration-database-uid=$i';
CREATE ROLE ${base}_migrator LOGIN PASSWORD 'SCRAM-SHA-256\$4096:c2FsdHNhbHRzYWx0c2FsdA==\$6m4nR2o5ZN1V1cNxyEg9Qj6Ql4W3AitKWa8pDNsbmHY=:Y9gMvFAIjPhkbLmEHXbI1XzwuWTqsYyzkp3SRnmdwwo=';
COMMENT ON ROLE ${base}_migrator IS 'sfm.nhn.no/migration-database-uid=$i';
CREATE ROLE ${base}_app NOLOGIN; COMMENT ON ROLE ${base}_app IS 'sfm.nhn.no/migration-database-uid=$i';
GRANT ${base}_owner TO CURRENT_USER;
SQL
  psql_admin -c "CREATE DATABASE tmp_${base} OWNER ${base}_owner"
  psql_admin <<SQL
COMMENT ON DATABASE tmp_${base} IS 'sfm.nhn.no/migration-database-uid=$i';
REVOKE ALL ON DATABASE tmp_${base} FROM PUBLIC;
ALTER DATABASE tmp_${base} RENAME TO ${base};
GRANT CONNECT ON DATABASE ${base} TO ${base}_migrator;
SQL
  {
    echo "SET ROLE ${base}_owner;"
    for m in $migrations; do cat "$m"; echo; done
    echo "RESET ROLE;"
    echo "GRANT USAGE ON SCHEMA sfm TO ${base}_migrator;"
    echo "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sfm TO ${base}_migrator;"
    echo "REVOKE INSERT, UPDATE, DELETE ON sfm.metadata FROM ${base}_migrator;"
    echo "INSERT INTO sfm.metadata (mode, data_model_version, migration_database_uid) VALUES ('staging', 4, gen_random_uuid());"
  } | psql "${SFM_PG_ADMIN_URL%/*}/${base}" -X -q -v ON_ERROR_STOP=1 >/dev/null
}
export -f floor_one psql_admin
export migrations
start=$(date +%s.%N)
seq 1 "$n" | xargs -P "$concurrency" -I{} bash -c 'floor_one {}' >"$work/floor.log" 2>&1 || {
  echo "the psql floor failed; see $work/floor.log" >&2; tail -5 "$work/floor.log" >&2; exit 1; }
done_at=$(date +%s.%N)
printf 'floor (psql, %d at a time): %d databases in %.1fs, %.1f databases/s\n' \
  "$concurrency" "$n" "$(echo "$done_at - $start" | bc)" "$(echo "$n / ($done_at - $start)" | bc -l)"
