#!/usr/bin/env bash
# `make demo-local`: the whole flow as local processes, the faster developer's tour (no root, no node):
# the operator and the migration API run beside a local control plane without kubelet
# (hack/controlplane.sh) and a local PostgreSQL server. `make demo` is the same flow on chart-installed
# pods (hack/demo.sh).
#
#   hack/demo-local.sh up     start everything, apply examples/, migrate a synthetic export with
#                             sfm-migrate through sfm-migration-api, and wait until the database is
#                             Operational
#   hack/demo-local.sh down   stop everything the demo started
#
# The state lives in /tmp/sfm-demo-local (SFM_DEMO_LOCAL_DIR) until `make demo-local-down`: kubeconfig,
# PostgreSQL, keys, the export, logs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state=${SFM_DEMO_LOCAL_DIR:-/tmp/sfm-demo-local}
cmd=${1:-up}

down() {
  for process in operator api; do
    if [ -f "$state/$process.pid" ]; then kill "$(cat "$state/$process.pid")" 2>/dev/null || true; rm -f "$state/$process.pid"; fi
  done
  "$root/hack/controlplane.sh" stop "$state/controlplane" >/dev/null 2>&1 || true
  "$root/hack/postgres.sh" stop "$state/postgres" >/dev/null 2>&1 || true
}

if [ "$cmd" = down ]; then down; rm -rf "$state"; echo "demo-local: stopped and removed $state"; exit 0; fi
[ "$cmd" = up ] || { echo "usage: $0 up|down" >&2; exit 2; }

down; rm -rf "$state"; mkdir -p "$state"; chmod 755 "$state"
trap 'echo "demo-local: failed; logs are in $state (make demo-local-down cleans up)" >&2' ERR

echo "== building the binaries"
(cd "$root" && cargo build --quiet --bins)
echo "== starting PostgreSQL 15 (scram-sha-256, loopback only)"
"$root/hack/postgres.sh" start "$state/postgres" >/dev/null
# shellcheck disable=SC1091
source "$state/postgres/env"
echo "== starting the local control plane (etcd, kube-apiserver, kube-controller-manager)"
"$root/hack/controlplane.sh" start "$state/controlplane"
# shellcheck disable=SC1091
source "$state/controlplane/env"

echo "== installing the CRDs"
kubectl apply --server-side -f "$root/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/migrationdatabases.sfm.nhn.no crd/migrationkeys.sfm.nhn.no >/dev/null

echo "== starting sfm-operator (log: $state/operator.log)"
SFM_DEFAULT_ADMIN_URL="$SFM_PG_ADMIN_URL" "$root/target/debug/sfm-operator" run --api-namespace sfm-system \
  --metrics-address 127.0.0.1:9090 >"$state/operator.log" 2>&1 &
echo $! >"$state/operator.pid"

echo "== applying examples/"
kubectl apply -f "$root/examples/00-namespace.yaml"
kubectl apply -f "$root/examples/10-migrationdatabase.yaml" -f "$root/examples/20-migrationkey.yaml"

ns=sfm-organisations; db=mdb/legekontoret-fjordby
phases=()
for _ in $(seq 120); do
  phase=$(kubectl -n "$ns" get "$db" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  if [ -n "$phase" ] && { [ ${#phases[@]} -eq 0 ] || [ "${phases[-1]}" != "$phase" ]; }; then
    phases+=("$phase"); echo "   phase: $phase"
  fi
  [ "$phase" = Staging ] && break
  sleep 0.5
done
kubectl -n "$ns" wait --for=condition=Ready "$db" --timeout=60s

# The data controller's side: an export in NHN's format, encrypted to the "SFM migrering" certificate
# whose private key only the migration API holds, sent with sfm-migrate and the key from the Secret.
api=http://127.0.0.1:${SFM_DEMO_API_PORT:-8088}
echo "== making the API's key pair and a synthetic export of ${SFM_DEMO_PATIENTS:-200} patients (sfm-export)"
"$root/target/debug/sfm-export" keygen --out "$state/keys" >/dev/null
"$root/target/debug/sfm-export" generate --cert "$state/keys/certificate.pem" --out "$state/export" \
  --patients "${SFM_DEMO_PATIENTS:-200}" --organisation-number 974760673 --seed 2026 | tail -1
echo "== starting sfm-migration-api on $api (log: $state/api.log)"
"$root/target/debug/sfm-migration-api" serve --listen "${api#http://}" --namespace sfm-system \
  --decryption-key "$state/keys/private_key.pem" >"$state/api.log" 2>&1 &
echo $! >"$state/api.pid"
for _ in $(seq 60); do curl -fsS "$api/healthz" >/dev/null 2>&1 && break; sleep 0.5; done

echo "== the data controller: sfm-migrate key add, then run (check, upload, verify, activate)"
export SFM_MIGRATE_CONFIG_DIR=$state/client
SFM_MIGRATION_KEY=$(kubectl -n "$ns" get secret fjordby-key-1-key -o jsonpath='{.data.key}' | base64 -d) \
  "$root/target/debug/sfm-migrate" key add fjordby --for-api "$api"
"$root/target/debug/sfm-migrate" run "$state/export" --workers 10
kubectl -n "$ns" wait --for=condition=Operational "$db" --timeout=120s
echo
kubectl -n "$ns" get mdb,mkey
echo
echo "demo-local: phases seen at the start: ${phases[*]}; now: $(kubectl -n "$ns" get "$db" -o jsonpath='{.status.phase}')"
echo "demo-local: patients stored: $(kubectl -n "$ns" get "$db" -o jsonpath='{.status.migration.patients.stored}')," \
  "rejected: $(kubectl -n "$ns" get "$db" -o jsonpath='{.status.migration.patients.rejected}')"
echo "demo-local: the export folder now holds: $(ls -A "$state/export" | tr '\n' ' ')"
cat <<TOUR

Look around:
  source $state/controlplane/env        # KUBECONFIG and kubectl v1.34
  kubectl get sfm -A                     # both kinds (category sfm)
  kubectl describe $db -n $ns            # conditions and Events of the whole lifecycle
  kubectl get events -n $ns --sort-by=.lastTimestamp
  psql "\$(kubectl get secret -n $ns legekontoret-fjordby-application -o jsonpath='{.data.uri}' | base64 -d)" -c 'select count(*) from sfm.patients'
  curl -s 127.0.0.1:9090/metrics | grep ^sfm_operator    # the operator's metrics
  curl -s $api/metrics | grep ^sfm_                      # the API's metrics
  tail -f $state/operator.log $state/api.log
Stop it all with: make demo-local-down
TOUR
