#!/usr/bin/env bash
# Operator benchmark (DESIGN section 8): N MigrationDatabases (default 1,000) against one PostgreSQL
# server. Prints the time until all are Ready, the operator's peak memory, and the floor: the same SQL
# run by a plain parallel psql script. Figures only, nothing asserted.
#
#   hack/bench-operator.sh [N]          (SFM_BENCH_CONCURRENCY=8 sets both the operator and psql fan-out)
#
# SFM_BENCH_FLOORS=0 skips the two psql floors and SFM_BENCH_OPERATOR=PATH runs that operator binary
# instead of the one built here (both for comparing operator builds). Over the operator's run it also
# prints the CPU seconds of the kube-apiserver, etcd, PostgreSQL (with its reaped children) and the
# operator, and the kube-apiserver's requests by verb and resource (`apiserver_request_total`; they
# include the benchmark's own apply and polling).
#
# Runs inside hack/test-env.sh (its own PostgreSQL and control plane). PostgreSQL runs with fsync on here
# (unlike the tests), so the figures are those of a durable server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-1000}
concurrency=${SFM_BENCH_CONCURRENCY:-8}

if [ -z "${SFM_TEST_WORK_DIR:-}" ]; then
  (cd "$root" && cargo build --quiet --bins ${SFM_BENCH_RELEASE:+--release})
  SFM_PG_FAST=0 exec "$root/hack/test-env.sh" "$0" "$@"
fi
work=$SFM_TEST_WORK_DIR
profile=${SFM_BENCH_RELEASE:+release}
profile=${profile:-debug}
operator_bin=${SFM_BENCH_OPERATOR:-$root/target/$profile/sfm-operator}
ns=bench
echo "== operator benchmark: $n MigrationDatabases, concurrency $concurrency, $profile build of sfm-operator (SFM_BENCH_RELEASE=1 for release)"
psql_admin() { psql "$SFM_PG_ADMIN_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_admin -c "ALTER SYSTEM SET max_connections = 300" >/dev/null
"$root/hack/postgres.sh" stop "$work/postgres" >/dev/null && "$root/hack/postgres.sh" start "$work/postgres" >/dev/null

kubectl apply --server-side -f "$root/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/migrationdatabases.sfm.nhn.no >/dev/null
kubectl create namespace $ns >/dev/null
kubectl create namespace sfm-system >/dev/null

# CPU seconds of the kube-apiserver, etcd, PostgreSQL (the postmaster and every backend) and the
# operator, in that order.
. "$root/hack/cpu.sh"
cpu_seconds() {
  echo "$(cpu_of "$(cat "$work/controlplane/kube-apiserver.pid")") $(cpu_of "$(cat "$work/controlplane/etcd.pid")")" \
    "$(postgres_cpu "$work/postgres/data") $(cpu_of "$operator")"
}
requests() {
  kubectl get --raw /metrics | awk '/^apiserver_request_total\{/ {
      match($0, /resource="[^"]*"/); r = substr($0, RSTART + 10, RLENGTH - 11)
      match($0, /verb="[^"]*"/); v = substr($0, RSTART + 6, RLENGTH - 7)
      if (r ~ /^(secrets|networkpolicies|migrationdatabases|events|configmaps|leases|migrationkeys)$/) n[v " " r] += $NF
    } END { for (k in n) print k, n[k] }' | sort
}

manifests=$work/databases.yaml
for i in $(seq 1 "$n"); do
  printf 'apiVersion: sfm.nhn.no/v1alpha1\nkind: MigrationDatabase\nmetadata:\n  name: org-%d\n  namespace: %s\nspec:\n  organisation:\n    name: Bench %d\n    organisationNumber: "974760673"\n    helseIdClientId: bench-%d\n  dataModelVersion: 4\n  reclaimPolicy: Delete\n---\n' "$i" "$ns" "$i" "$i"
done >"$manifests"

SFM_DEFAULT_ADMIN_URL=$SFM_PG_ADMIN_URL RUST_LOG=warn "$operator_bin" run \
  --api-namespace sfm-system --watch-namespace $ns --leader-election=false \
  --concurrency "$concurrency" >"$work/operator.log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null || true' EXIT
requests >"$work/requests-before.txt"
read -r cpu_api cpu_etcd cpu_pg cpu_op < <(cpu_seconds)
start=$(date +%s.%N)
kubectl apply --server-side -f "$manifests" >/dev/null
applied=$(date +%s.%N)
ready=0
while [ "$ready" -lt "$n" ]; do
  sleep 5
  ready=$(kubectl -n $ns get mdb -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  printf '\r   %d/%d Ready after %.0fs' "$ready" "$n" "$(echo "$(date +%s.%N) - $start" | bc)"
  kill -0 $operator 2>/dev/null || { echo; echo "the operator died; see $work/operator.log" >&2; exit 1; }
done
done_at=$(date +%s.%N)
read -r cpu_api2 cpu_etcd2 cpu_pg2 cpu_op2 < <(cpu_seconds)
requests >"$work/requests-after.txt"
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$operator/status")
echo
databases=$(psql_admin -At -c "SELECT count(*) FROM pg_database WHERE datname LIKE 'sfm\\_bench\\_%'")
operator_s=$(echo "$done_at - $start" | bc)
printf 'operator: %d databases Ready in %.1fs (apply took %.1fs), %.1f databases/s; peak RSS %.0f MiB; %s tagged databases on the server\n' \
  "$n" "$operator_s" "$(echo "$applied - $start" | bc)" \
  "$(echo "$n / ($done_at - $start)" | bc -l)" "$(echo "$peak_kb / 1024" | bc -l)" "$databases"
printf 'CPU seconds over the operator run: kube-apiserver %.1f, etcd %.1f, PostgreSQL %.1f, operator %.1f\n' \
  "$(echo "$cpu_api2 - $cpu_api" | bc -l)" "$(echo "$cpu_etcd2 - $cpu_etcd" | bc -l)" \
  "$(echo "$cpu_pg2 - $cpu_pg" | bc -l)" "$(echo "$cpu_op2 - $cpu_op" | bc -l)"
echo "kube-apiserver requests over the operator run (verb resource count, per database):"
join -a 2 -e 0 -o 0,1.2,2.2 <(sed 's/ /:/' "$work/requests-before.txt" | sort) \
  <(sed 's/ /:/' "$work/requests-after.txt" | sort) |
  awk -v n="$n" '{d = $3 - $2; if (d > 0) {sub(":", " ", $1); printf "   %-32s %7d %6.2f\n", $1, d, d / n; t += d}}
    END {printf "   %-32s %7d %6.2f\n", "total", t, t / n}'
kill $operator; wait $operator 2>/dev/null || true

# The restart: a new operator process looks at every database (its reconcile count reaches N) and
# should find nothing to do. Sessions opened meanwhile are PostgreSQL's own count (pg_stat_database,
# flushed by each backend within a second).
sessions() { psql_admin -At -c "SELECT sum(sessions) FROM pg_stat_database"; }
metrics_port=$("$root/hack/free-port")
sessions_before=$(sessions)
SFM_DEFAULT_ADMIN_URL=$SFM_PG_ADMIN_URL RUST_LOG=warn "$operator_bin" run \
  --api-namespace sfm-system --watch-namespace $ns --leader-election=false \
  --concurrency "$concurrency" --metrics-address "127.0.0.1:$metrics_port" >"$work/operator-restart.log" 2>&1 &
operator=$!
start=$(date +%s.%N)
passes=0
while [ "${passes%.*}" -lt "$n" ]; do
  sleep 0.5
  passes=$(curl -s "http://127.0.0.1:$metrics_port/metrics" \
    | awk '/^sfm_operator_reconciliations_total\{controller="database"/ {s += $NF} END {print s+0}')
  kill -0 $operator 2>/dev/null || { echo "the restarted operator died; see $work/operator-restart.log" >&2; exit 1; }
done
done_at=$(date +%s.%N)
sleep 2
printf 'restart: all %d databases looked at in %.1fs; %d PostgreSQL sessions opened meanwhile (one per pass would be %d or more)\n' \
  "$n" "$(echo "$done_at - $start" | bc)" "$(( $(sessions) - sessions_before ))" "$n"
kill $operator; wait $operator 2>/dev/null || true
[ "${SFM_BENCH_FLOORS:-1}" = 0 ] && exit 0

# Two floors, the same statements from psql, $concurrency at a time: roles with SCRAM verifiers,
# a tagged database made under a temporary name and renamed, grants, the metadata row. Floor (a)
# replays the schema migrations as the owner in every database (what the operator did before
# templates); floor (b) copies a template migrated once and hands its objects to the owner (what the
# operator does now).
migrations=$(ls "$root"/migrations/*.sql | sort)
roles() {
  local i=$1 base=$2
  psql_admin <<SQL
CREATE ROLE ${base}_owner NOLOGIN; COMMENT ON ROLE ${base}_owner IS 'sfm.nhn.no/migration-database-uid=$i';
CREATE ROLE ${base}_migrator LOGIN PASSWORD 'SCRAM-SHA-256\$4096:c2FsdHNhbHRzYWx0c2FsdA==\$6m4nR2o5ZN1V1cNxyEg9Qj6Ql4W3AitKWa8pDNsbmHY=:Y9gMvFAIjPhkbLmEHXbI1XzwuWTqsYyzkp3SRnmdwwo=';
COMMENT ON ROLE ${base}_migrator IS 'sfm.nhn.no/migration-database-uid=$i';
CREATE ROLE ${base}_app NOLOGIN; COMMENT ON ROLE ${base}_app IS 'sfm.nhn.no/migration-database-uid=$i';
GRANT ${base}_owner TO CURRENT_USER;
SQL
}
tag_and_rename() {
  local i=$1 base=$2
  psql_admin <<SQL
COMMENT ON DATABASE tmp_${base} IS 'sfm.nhn.no/migration-database-uid=$i';
REVOKE ALL ON DATABASE tmp_${base} FROM PUBLIC;
ALTER DATABASE tmp_${base} RENAME TO ${base};
GRANT CONNECT ON DATABASE ${base} TO ${base}_migrator;
SQL
}
grants() {
  local base=$1
  echo "GRANT USAGE ON SCHEMA sfm TO ${base}_migrator;"
  echo "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sfm TO ${base}_migrator;"
  echo "REVOKE INSERT, UPDATE, DELETE ON sfm.metadata FROM ${base}_migrator;"
  echo "INSERT INTO sfm.metadata (mode, data_model_version, migration_database_uid) VALUES ('staging', 4, gen_random_uuid());"
}
replay_one() {
  local i=$1 base="sfm_floor_$1"
  roles "$i" "$base"
  psql_admin -c "CREATE DATABASE tmp_${base} OWNER ${base}_owner"
  tag_and_rename "$i" "$base"
  {
    echo "SET ROLE ${base}_owner;"
    for m in $migrations; do cat "$m"; echo; done
    echo "RESET ROLE;"
    grants "$base"
  } | psql "${SFM_PG_ADMIN_URL%/*}/${base}" -X -q -v ON_ERROR_STOP=1 >/dev/null
}
copy_one() {
  local i=$1 base="sfm_copy_$1"
  roles "$i" "$base"
  psql_admin -c "CREATE DATABASE tmp_${base} TEMPLATE sfm_copy_template OWNER ${base}_owner"
  psql "${SFM_PG_ADMIN_URL%/*}/tmp_${base}" -X -q -v ON_ERROR_STOP=1 \
    -c "REASSIGN OWNED BY sfm_copy_template_owner TO ${base}_owner" >/dev/null
  tag_and_rename "$i" "$base"
  grants "$base" | psql "${SFM_PG_ADMIN_URL%/*}/${base}" -X -q -v ON_ERROR_STOP=1 >/dev/null
}
export -f roles tag_and_rename grants replay_one copy_one psql_admin
export migrations
floor() {
  local label=$1 one=$2 start done_at
  start=$(date +%s.%N)
  seq 1 "$n" | xargs -P "$concurrency" -I{} bash -c "$one {}" >"$work/floor-$one.log" 2>&1 || {
    echo "the psql floor failed; see $work/floor-$one.log" >&2; tail -5 "$work/floor-$one.log" >&2; exit 1; }
  done_at=$(date +%s.%N)
  floor_s=$(echo "$done_at - $start" | bc)
  printf 'floor (%s, psql, %d at a time): %d databases in %.1fs, %.1f databases/s\n' \
    "$label" "$concurrency" "$n" "$floor_s" "$(echo "$n / $floor_s" | bc -l)"
}
# Each floor's databases are dropped after it is timed: 1,000 databases are about 8 GB, and three
# sets of them (the operator's and two floors') filled this machine's disk once.
drop_all() {
  psql_admin -At -c "SELECT datname FROM pg_database WHERE datname LIKE '$1%' AND NOT datistemplate" |
    xargs -r -P "$concurrency" -I{} psql "$SFM_PG_ADMIN_URL" -X -q -c 'DROP DATABASE "{}"' >/dev/null
}
floor "a: replaying the migrations" replay_one
replay_s=$floor_s
drop_all sfm_floor_
psql_admin <<SQL
CREATE ROLE sfm_copy_template_owner NOLOGIN;
GRANT sfm_copy_template_owner TO CURRENT_USER;
CREATE DATABASE sfm_copy_template;
GRANT CREATE ON DATABASE sfm_copy_template TO sfm_copy_template_owner;
SQL
{
  echo "GRANT CREATE ON SCHEMA public TO sfm_copy_template_owner; SET ROLE sfm_copy_template_owner;"
  for m in $migrations; do cat "$m"; echo; done
  echo "RESET ROLE; REVOKE CREATE ON SCHEMA public FROM sfm_copy_template_owner;"
} | psql "${SFM_PG_ADMIN_URL%/*}/sfm_copy_template" -X -q -v ON_ERROR_STOP=1 >/dev/null
psql_admin -c "ALTER DATABASE sfm_copy_template WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
floor "b: copying a template" copy_one
copy_s=$floor_s
drop_all sfm_copy_
printf 'operator against the floors: %.2fx floor (a), %.2fx floor (b) (goals: at least 2.5x and 0.8x)\n' \
  "$(echo "$replay_s / $operator_s" | bc -l)" "$(echo "$copy_s / $operator_s" | bc -l)"
