#!/usr/bin/env bash
# The platform the way NHN runs it, on a real local node (hack/node.sh): the images built with buildah
# (hack/images.sh), the chart installed with helm (two operator replicas with leader election, two API
# replicas behind a NodePort Service, Pod Security "restricted" enforced), PostgreSQL on the host as an
# external server (the chart's ipBlock path), and the data controller's sfm-migrate on the host. Then:
#
#   pods     Ready through their real probes, as UID 65532 with a read-only root, restricted enforced
#   examples the examples as shipped reach Ready (the admin Secret points at the host's server)
#   policy   NetworkPolicy probed from pods (kube-router enforcing): staging versus operational for the SFM
#            application pods, unlabelled pods, the API's and the operator's ingress and egress
#   upload   an export made by sfm-export and sent by sfm-migrate run through the NodePort reaches
#            Operational, with one API pod killed mid-upload: nothing lost or doubled
#   failover the leading operator pod killed: the other takes the Lease and brings a database applied
#            meanwhile to Ready
#   rbac     no "forbidden" in any operator or API log
#
#   hack/test-node.sh          start a node in a temporary directory, run everything, stop it
#   SFM_NODE_KEEP=1 hack/test-node.sh   leave the node running (hack/node.sh stop DIR stops it)
#   SFM_NODE_WORK=DIR        work in DIR instead of a temporary directory (make demo-node uses
#                            /tmp/sfm-demo-node; make demo-node-down stops it)
#
# Each phase prints its time. Needs root (the node does) and what hack/install-deps.sh installs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

release=sfm-migration
system=sfm-system
organisations=sfm-organisations
tag=node
node_port=30080
patients=${SFM_NODE_PATIENTS:-400}

if [ -n "${SFM_NODE_WORK:-}" ]; then work=$SFM_NODE_WORK; rm -rf "$work"; mkdir -p "$work"
else work=$(mktemp -d /tmp/sfm-node-test.XXXXXX); fi
chmod 755 "$work"
node_dir=$work/node
failures=0
say() { echo "test-node: $*" >&2; }
wrong() { say "  WRONG: $*"; failures=$((failures + 1)); }
ok() { say "  ok: $*"; }
fail() { say "FAILED: $*"; exit 1; }

cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ] || [ "$failures" -ne 0 ]; then
    mkdir -p "$work/logs"
    if [ -f "$node_dir/env" ]; then
      for pod in $(kubectl -n "$system" get pods -o name 2>/dev/null); do
        kubectl -n "$system" logs "$pod" --all-containers --prefix >"$work/logs/${pod#pod/}.log" 2>&1
      done
    fi
    say "logs of the pods and the node are in $work (kept)"
  fi
  if [ -z "${SFM_NODE_KEEP:-}" ]; then
    local stop_start; stop_start=$(date +%s)
    "$root/hack/node.sh" stop "$node_dir"
    "$root/hack/postgres.sh" stop "$work/postgres" >/dev/null 2>&1
    # The teardown is part of the test: CI runs on this machine right after.
    if "$root/hack/node.sh" leftovers "$node_dir"; then say "node stopped, nothing left behind, in $(( $(date +%s) - stop_start ))s"
    else say "FAILED: the stopped node left something behind (above)"; rc=1; fi
    [ $rc -eq 0 ] && [ "$failures" -eq 0 ] && rm -rf "$work"
  else
    say "kept the node: source $node_dir/env; stop with hack/node.sh stop $node_dir"
  fi
  exit $rc
}
trap cleanup EXIT

phase_start=$(date +%s); total_start=$phase_start
phase() { # prints the time of the phase that ended and starts the next
  local now; now=$(date +%s)
  [ -n "${phase_name:-}" ] && say "phase '$phase_name' took $((now - phase_start))s"
  phase_name=$1; phase_start=$now
  say "== $1"
}

phase build
cargo build --quiet --bins
helm_bin=$("$root/hack/tools.sh")
export PATH="$helm_bin:$PATH"

phase "node start"
"$root/hack/node.sh" start "$node_dir"
# shellcheck disable=SC1091
source "$node_dir/env"
node_ip=$SFM_NODE_IP
ctr=(ctr --address "$node_dir/containerd/containerd.sock" -n k8s.io)

phase images
"$root/hack/images.sh" build "$node_dir" "$tag"
"$root/hack/images.sh" check "$node_dir" "$tag" || wrong "the images and the Dockerfile disagree"

phase "postgresql on the host"
# The external server: on the node's address, admitting the pod network (scram-sha-256); reachable from
# pods only where the NetworkPolicies let them.
SFM_PG_FAST=1 SFM_PG_LISTEN=$node_ip SFM_PG_CLIENTS=10.244.0.0/16 \
  "$root/hack/postgres.sh" start "$work/postgres" 5432 >/dev/null
# shellcheck disable=SC1091
source "$work/postgres/env"

phase "helm install"
kubectl apply -f examples/00-namespace.yaml >/dev/null
kubectl create namespace monitoring --dry-run=client -o yaml | kubectl apply -f - >/dev/null
for ns in "$system" "$organisations" monitoring default; do
  kubectl label --overwrite namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >/dev/null
done
# examples/05 is written for kind's in-cluster server; here the default server is the host's.
kubectl -n "$system" create secret generic sfm-postgres-admin --from-literal=uri="$SFM_PG_ADMIN_URL" >/dev/null
"$root/target/debug/sfm-export" keygen --out "$work/keys" >/dev/null
kubectl -n "$system" create secret generic sfm-decryption-key \
  --from-file=private.pem="$work/keys/private_key.pem" >/dev/null
helm install "$release" charts/sfm-migration --namespace "$system" \
  --set image.tag="$tag" --set image.pullPolicy=Never \
  --set operator.defaultServer.existingSecret=sfm-postgres-admin \
  --set operator.replicas=2 --set api.replicas=2 \
  --set api.service.type=NodePort --set api.service.nodePort="$node_port" \
  --set "networkPolicy.egress.kubeApiServer.cidrs={$node_ip/32}" \
  --set "networkPolicy.postgresql.cidrs={$node_ip/32}" \
  --set "networkPolicy.postgresql.applicationNamespaces={$organisations}" >/dev/null
kubectl -n "$system" rollout status "deployment/$release-operator" --timeout=180s
kubectl -n "$system" rollout status "deployment/$release-api" --timeout=180s

phase pods
# Ready through the probes (rollout status above), and each container's process as seen from the node:
# UID 65532, root filesystem mounted read-only.
for component in operator api; do
  pods=$(kubectl -n "$system" get pods -l "app.kubernetes.io/component=$component" -o jsonpath='{.items[*].metadata.name}')
  [ "$(wc -w <<<"$pods")" = 2 ] || wrong "$component: expected 2 pods, got '$pods'"
  for pod in $pods; do
    ready=$(kubectl -n "$system" get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
    [ "$ready" = True ] && ok "$pod Ready" || wrong "$pod not Ready"
    account=$(kubectl -n "$system" get pod "$pod" -o jsonpath='{.spec.serviceAccountName}')
    [ "$account" = "$release-$component" ] && ok "$pod runs as ServiceAccount $account" \
      || wrong "$pod runs as ServiceAccount '$account', not the chart's $release-$component"
    id=$(kubectl -n "$system" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].containerID}')
    pid=$("${ctr[@]}" tasks ls | awk -v id="${id#containerd://}" '$1 == id {print $2}')
    uid=$(awk '/^Uid:/{print $2}' "/proc/$pid/status")
    [ "$uid" = 65532 ] && ok "$pod runs as UID 65532" || wrong "$pod runs as UID '$uid'"
    rootfs=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | cut -d, -f1)
    [ "$rootfs" = ro ] && ok "$pod's root filesystem is read-only" || wrong "$pod's root filesystem is '$rootfs'"
  done
done
# Pod Security "restricted" is enforced: a pod that asks for root is refused.
if kubectl -n "$system" run psa-probe --image="sfm-probe:$tag" --image-pull-policy=Never --restart=Never \
    --dry-run=server -o name >/dev/null 2>"$work/psa.err"; then
  wrong "a pod breaking the restricted profile was admitted in $system"
elif grep -q 'violates PodSecurity "restricted' "$work/psa.err"; then ok "restricted enforced in $system"
else wrong "refused for another reason: $(cat "$work/psa.err")"; fi

phase examples
kubectl apply -f examples/10-migrationdatabase.yaml -f examples/20-migrationkey.yaml >/dev/null
kubectl -n "$organisations" wait --for=condition=Ready mdb/legekontoret-fjordby --timeout=180s >/dev/null \
  && ok "legekontoret-fjordby Ready" || wrong "legekontoret-fjordby not Ready"
kubectl -n "$organisations" wait --for=jsonpath='{.status.phase}'=Active mkey/fjordby-key-1 --timeout=60s >/dev/null \
  && ok "fjordby-key-1 Active" || wrong "fjordby-key-1 not Active"

# --- NetworkPolicy probes from pods
probe_pod() { # NAMESPACE NAME LABELS: a running pod to probe from (restricted-compliant)
  local ns=$1 name=$2 labels=$3
  kubectl -n "$ns" run "$name" --image="sfm-probe:$tag" --image-pull-policy=Never --restart=Never \
    --labels="$labels" --overrides='{"spec": {"automountServiceAccountToken": false,
      "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
      "containers": [{"name": "'"$name"'", "image": "sfm-probe:'"$tag"'", "imagePullPolicy": "Never",
        "command": ["/bin/sleep", "3600"],
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}}}]}}' >/dev/null
  kubectl -n "$ns" wait --for=condition=Ready "pod/$name" --timeout=60s >/dev/null
}
connects() { # NAMESPACE POD HOST PORT: 0 when a TCP connection opens within 3 s
  kubectl -n "$1" exec "$2" -- /usr/bin/timeout 3 /bin/bash -c "</dev/tcp/$3/$4" >/dev/null 2>&1
}
expect() { # open|blocked WHAT NAMESPACE POD HOST PORT
  local want=$1 what=$2 got=blocked; shift 2
  connects "$@" && got=open
  [ "$got" = "$want" ] && ok "$what: $got" || wrong "$what is $got, should be $want"
}

# kube-router rewrites the filter table in a full sync after every pod or policy change; until the sync
# that follows a change is done the change is not enforced. So before probing: change a marker policy
# (selecting no pod) and wait until a sync that started after that change has finished.
policies_settled() {
  local log="$node_dir/kube-router.log" before
  before=$(grep -c 'Starting sync of iptables' "$log" || true)
  kubectl -n default apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sync-marker, annotations: {sfm.nhn.no/marker: "$(date +%s%N)"}}
spec: {podSelector: {matchLabels: {sfm.nhn.no/sync-marker: none}}, policyTypes: [Ingress]}
EOF
  for _ in $(seq 300); do
    if awk -v before="$before" '/Starting sync of iptables/ {n++} n > before && /sync iptables took/ {found=1} END {exit !found}' "$log"; then
      return 0
    fi
    sleep 0.1
  done
  fail "kube-router did not finish a policy sync within 30 s"
}

phase "policy (staging)"
api_labels="app.kubernetes.io/name=sfm-migration,app.kubernetes.io/instance=$release,app.kubernetes.io/component=api"
operator_labels="app.kubernetes.io/name=sfm-migration,app.kubernetes.io/instance=$release,app.kubernetes.io/component=operator"
pg_port=$SFM_PG_PORT
probe_pod "$organisations" app-fjordby sfm.nhn.no/application-database=legekontoret-fjordby
probe_pod "$organisations" app-nordby sfm.nhn.no/application-database=sykehjem-nordby
probe_pod "$organisations" unlabelled run=probe
probe_pod default outsider run=probe
probe_pod monitoring scraper run=probe
policies_settled
api_pod_ip=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[0].status.podIP}')
operator_pod_ip=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].status.podIP}')
expect blocked "PostgreSQL from the application pod of legekontoret-fjordby (staging)" "$organisations" app-fjordby "$node_ip" "$pg_port"
expect blocked "PostgreSQL from an unlabelled pod in $organisations" "$organisations" unlabelled "$node_ip" "$pg_port"
# The reference: the same server from a namespace the chart does not govern is reachable, so "blocked"
# above is the policies' doing, not the server's.
expect open "PostgreSQL from a pod in default (no policy there)" default outsider "$node_ip" "$pg_port"
expect open "the API's port from another namespace" default outsider "$api_pod_ip" 8080
expect blocked "the operator's metrics from default" default outsider "$operator_pod_ip" 8080
expect open "the operator's metrics from monitoring" monitoring scraper "$operator_pod_ip" 8080
# Egress of the operator and the API: what the chart says (PostgreSQL, the API server), nothing else
# (the kubelet's port on the node listens, and is reachable from a pod without policy).
probe_pod "$system" api-probe "$api_labels,sfm.nhn.no/probe=true"
probe_pod "$system" operator-probe "$operator_labels,sfm.nhn.no/probe=true"
policies_settled
for who in api operator; do
  expect open "PostgreSQL from a pod with the $who's labels" "$system" "$who-probe" "$node_ip" "$pg_port"
  expect open "the API server (Service 10.96.0.1:443) from a pod with the $who's labels" "$system" "$who-probe" 10.96.0.1 443
  expect blocked "the kubelet's port from a pod with the $who's labels" "$system" "$who-probe" "$node_ip" 10250
done
expect open "the kubelet's port from a pod in default (no policy there)" default outsider "$node_ip" 10250
# The probes with the components' labels would be endpoints of the API Service: gone before the upload.
kubectl -n "$system" delete pod api-probe operator-probe --wait=true >/dev/null

phase "upload (one API pod killed)"
"$root/target/debug/sfm-export" generate --cert "$work/keys/certificate.pem" --out "$work/export" \
  --patients "$patients" --organisation-number 974760673 --seed 2026 >/dev/null
api_url="http://$node_ip:$node_port"
export SFM_MIGRATE_CONFIG_DIR=$work/client
SFM_MIGRATION_KEY=$(kubectl -n "$organisations" get secret fjordby-key-1-key -o jsonpath='{.data.key}' | base64 -d) \
  "$root/target/debug/sfm-migrate" key add fjordby --for-api "$api_url" >/dev/null
"$root/target/debug/sfm-migrate" run "$work/export" --workers 8 --plain >"$work/run.log" 2>&1 &
client_pid=$!
ledger="$work/export/sfm-migrate.ledger"
for _ in $(seq 600); do
  stored=$(grep -c '"state":"stored"' "$ledger" 2>/dev/null || true)
  [ "${stored:-0}" -ge $((patients / 5)) ] && break
  kill -0 "$client_pid" 2>/dev/null || break
  sleep 0.2
done
kill -0 "$client_pid" 2>/dev/null && [ "${stored:-0}" -lt "$patients" ] \
  || wrong "the upload ended before an API pod could be killed in the middle of it (${stored:-0} stored)"
victim=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[0].metadata.name}')
say "  killing API pod $victim after ${stored:-0} of $patients patients stored"
kubectl -n "$system" delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
if wait "$client_pid"; then ok "sfm-migrate run finished"; else wrong "sfm-migrate run failed: $(tail -20 "$work/run.log")"; fi
kubectl -n "$organisations" wait --for=condition=Operational mdb/legekontoret-fjordby --timeout=180s >/dev/null \
  && ok "legekontoret-fjordby Operational" || wrong "legekontoret-fjordby not Operational"
mdb_field() { kubectl -n "$organisations" get mdb/legekontoret-fjordby -o jsonpath="{.status.migration.$1}"; }
[ "$(mdb_field patients.stored)" = "$patients" ] && ok "patients stored: $patients" \
  || wrong "patients stored: $(mdb_field patients.stored), expected $patients"
[ "$(mdb_field patients.rejected)" = 0 ] && ok "patients rejected: 0" || wrong "patients rejected: $(mdb_field patients.rejected)"
[ "$(mdb_field users.stored)" = 25 ] && [ "$(mdb_field users.rejected)" = 0 ] && ok "users stored: 25" \
  || wrong "users stored: $(mdb_field users.stored), rejected $(mdb_field users.rejected); expected 25, 0"
client_digest=$(sed -n 's/^Verified: .* digest \([0-9a-f]\{64\}\) .*/\1/p' "$work/run.log")
[ -n "$client_digest" ] && [ "$(mdb_field validatedDigest)" = "$client_digest" ] \
  && ok "validated digest $client_digest, as the client computed it" \
  || wrong "validated digest '$(mdb_field validatedDigest)', the client verified '$client_digest'"
app_uri=$(kubectl -n "$organisations" get secret legekontoret-fjordby-application -o jsonpath='{.data.uri}' | base64 -d)
in_db=$(psql "$app_uri" -Atc 'select count(*) from sfm.patients' 2>&1 || true)
[ "$in_db" = "$patients" ] && ok "rows in sfm.patients: $in_db (none lost, none doubled)" \
  || wrong "rows in sfm.patients: '$in_db', expected $patients"

phase "policy (operational)"
policies_settled
expect open "PostgreSQL from the application pod of legekontoret-fjordby (operational)" "$organisations" app-fjordby "$node_ip" "$pg_port"
expect blocked "PostgreSQL from an unlabelled pod in $organisations" "$organisations" unlabelled "$node_ip" "$pg_port"

phase "operator failover"
holder=$(kubectl -n "$system" get lease sfm-operator -o jsonpath='{.spec.holderIdentity}')
leader=${holder%_*}
other=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[*].metadata.name}' \
  | tr ' ' '\n' | grep -vx "$leader")
leader_id=$(kubectl -n "$system" get pod "$leader" -o jsonpath='{.status.containerStatuses[0].containerID}')
leader_pid=$("${ctr[@]}" tasks ls | awk -v id="${leader_id#containerd://}" '$1 == id {print $2}')
# The leader halts at once (SIGSTOP: no renewal, no release of the Lease, no more work) and is killed
# (SIGKILL) once the database applied meanwhile is Ready: a graceful stop would hand the Lease to whoever
# asks first, and a killed container that the kubelet restarts at once would race the other replica.
say "  stopping the leading operator $holder (pid $leader_pid); the other replica is $other"
kill -STOP "$leader_pid"
kubectl apply -f examples/11-migrationdatabase-manual.yaml -f examples/21-migrationkey-manual.yaml >/dev/null
kubectl -n "$organisations" wait --for=condition=Ready mdb/sykehjem-nordby --timeout=180s >/dev/null \
  && ok "sykehjem-nordby, applied after the leader stopped, Ready" || wrong "sykehjem-nordby not Ready"
kubectl -n "$organisations" wait --for=jsonpath='{.status.phase}'=Active mkey/nordby-key-1 --timeout=60s >/dev/null \
  && ok "nordby-key-1 Active" || wrong "nordby-key-1 not Active"
new_holder=$(kubectl -n "$system" get lease sfm-operator -o jsonpath='{.spec.holderIdentity}')
[ "${new_holder%_*}" = "$other" ] && ok "the other replica took the Lease ($new_holder)" \
  || wrong "the Lease is held by '$new_holder', not by the other replica $other"
kill -KILL "$leader_pid"
say "  killed $leader's operator process; the kubelet restarts it as a follower"
policies_settled
expect blocked "PostgreSQL from the application pod of sykehjem-nordby (staging)" "$organisations" app-nordby "$node_ip" "$pg_port"

phase rbac
for pod in $(kubectl -n "$system" get pods -l app.kubernetes.io/instance=$release -o name); do
  if { kubectl -n "$system" logs "$pod"; kubectl -n "$system" logs "$pod" --previous 2>/dev/null; } | grep -qi forbidden; then
    wrong "$pod logged a forbidden request: $(kubectl -n "$system" logs "$pod" | grep -i forbidden | head -2)"
  else ok "no forbidden request in ${pod#pod/}'s log"; fi
done

phase done
say "total $(( $(date +%s) - total_start ))s"
[ "$failures" -eq 0 ] || fail "$failures check(s) wrong"
say "every check right"
