#!/usr/bin/env bash
# The whole platform on a kind cluster, for anyone with Docker (there is no Docker engine on the project's
# own machines, so this is not part of `make test`):
#
#   1. a kind cluster (Kubernetes v1.34) with Calico, a CNI that enforces NetworkPolicy;
#   2. the operator and migration API images built from the Dockerfile and loaded into kind;
#   3. PostgreSQL 15 in sfm-system (scram-sha-256), matching examples/05-postgres-admin-secret.yaml;
#   4. the chart installed as release sfm-migration in sfm-system, with the in-cluster PostgreSQL's
#      ingress policy and egress restricted to DNS, the API server and PostgreSQL;
#   5. the examples applied as shipped and brought to Ready by the operator running in a pod;
#   6. NetworkPolicy checks with probe pods: what must be blocked is blocked, what must be allowed is
#      allowed (staging versus operational for the SFM application pods, the API's port, the operator's
#      metrics, PostgreSQL);
#   7. the in-cluster operator stopped and the end-to-end suite run against the cluster
#      (SFM_USE_EXISTING_CLUSTER=1; the suite starts its own operator and PostgreSQL as local processes).
#
#   hack/kind-e2e.sh              run everything and delete the cluster afterwards
#   SFM_KIND_KEEP=1 hack/kind-e2e.sh   keep the cluster (kubectl --context kind-sfm-e2e ...)
#   SFM_KIND_SKIP_SUITE=1         stop after step 6
#
# Needs: what `make test` needs (hack/install-deps.sh), docker, jq, and network access for the
# Calico manifest and the base images.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cluster=${SFM_KIND_CLUSTER:-sfm-e2e}
kind_version=v0.30.0
node_image=${SFM_KIND_NODE_IMAGE:-kindest/node:v1.34.0}
calico_version=${SFM_CALICO_VERSION:-v3.30.0}
tag=e2e
release=sfm-migration
system=sfm-system
organisations=sfm-organisations
probe_image=docker.io/library/postgres:15-bookworm

say() { echo "kind-e2e: $*" >&2; }
fail() { echo "kind-e2e: FAILED: $*" >&2; exit 1; }

command -v docker >/dev/null || fail "docker is needed"
tools=$("$root/hack/tools.sh")
export PATH="$tools:$PATH"
if ! command -v kind >/dev/null; then
  GOBIN="$tools" go install "sigs.k8s.io/kind@$kind_version"
fi
command -v kubectl >/dev/null || export PATH="$("$root/hack/build-controlplane.sh"):$PATH"

work=$(mktemp -d /tmp/sfm-kind.XXXXXX)
export KUBECONFIG="$work/kubeconfig"
cleanup() {
  set +e
  if [ -z "${SFM_KIND_KEEP:-}" ]; then kind delete cluster --name "$cluster" >/dev/null 2>&1; rm -rf "$work"
  else say "kept cluster $cluster; KUBECONFIG=$KUBECONFIG"; fi
}
trap cleanup EXIT

say "1. kind cluster $cluster ($node_image) with Calico $calico_version"
cat >"$work/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: true     # Calico instead of kindnet, which does not enforce NetworkPolicy
  podSubnet: 192.168.0.0/16
nodes:
  - role: control-plane
  - role: worker
EOF
kind create cluster --name "$cluster" --image "$node_image" --config "$work/kind.yaml" --kubeconfig "$KUBECONFIG" --wait 0s
kubectl apply --server-side -f "https://raw.githubusercontent.com/projectcalico/calico/$calico_version/manifests/calico.yaml" >/dev/null
kubectl -n kube-system rollout status daemonset/calico-node --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s

say "2. images sfm-operator:$tag and sfm-migration-api:$tag"
docker build --target operator -t "sfm-operator:$tag" .
docker build --target migration-api -t "sfm-migration-api:$tag" .
kind load docker-image --name "$cluster" "sfm-operator:$tag" "sfm-migration-api:$tag"
docker pull -q "$probe_image" >/dev/null
kind load docker-image --name "$cluster" "$probe_image"

say "3. namespaces, admin Secret (examples as shipped), decryption key, PostgreSQL"
kubectl apply -f examples/00-namespace.yaml -f examples/05-postgres-admin-secret.yaml
admin_uri=$(kubectl -n "$system" get secret sfm-postgres-admin -o jsonpath='{.data.uri}' | base64 -d)
pg_password=$(sed -E 's|^postgres://[^:]+:([^@]+)@.*|\1|' <<<"$admin_uri")
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/decryption-key.pem" 2>/dev/null
kubectl -n "$system" create secret generic sfm-decryption-key --from-file=private.pem="$work/decryption-key.pem"
kubectl -n "$system" create secret generic sfm-postgresql --from-literal=password="$pg_password"
kubectl apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: sfm-postgresql, namespace: $system, labels: {app.kubernetes.io/name: postgresql}}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: postgresql}}
  template:
    metadata: {labels: {app.kubernetes.io/name: postgresql}}
    spec:
      containers:
        - name: postgres
          image: $probe_image
          env:
            - {name: POSTGRES_PASSWORD, valueFrom: {secretKeyRef: {name: sfm-postgresql, key: password}}}
            - {name: POSTGRES_HOST_AUTH_METHOD, value: scram-sha-256}
            - {name: POSTGRES_INITDB_ARGS, value: "--auth-host=scram-sha-256 --auth-local=scram-sha-256"}
          ports: [{name: postgres, containerPort: 5432}]
          readinessProbe: {exec: {command: [pg_isready, -U, postgres]}, periodSeconds: 3}
---
apiVersion: v1
kind: Service
metadata: {name: sfm-postgresql, namespace: $system}
spec:
  selector: {app.kubernetes.io/name: postgresql}
  ports: [{name: postgres, port: 5432, targetPort: postgres}]
EOF
kubectl -n "$system" rollout status deployment/sfm-postgresql --timeout=300s

say "4. helm install $release"
api_server=$(kubectl get endpoints kubernetes -o jsonpath='{.subsets[0].addresses[0].ip}')
helm install "$release" charts/sfm-migration --namespace "$system" \
  --set image.tag="$tag" --set image.pullPolicy=Never \
  --set operator.defaultServer.existingSecret=sfm-postgres-admin \
  --set operator.replicas=2 \
  --set "networkPolicy.egress.kubeApiServer.cidrs={$api_server/32}" \
  --set networkPolicy.postgresql.inCluster.enabled=true \
  --set 'networkPolicy.postgresql.inCluster.podLabels.app\.kubernetes\.io/name=postgresql'
kubectl -n "$system" rollout status "deployment/$release-operator" --timeout=300s
kubectl -n "$system" rollout status "deployment/$release-api" --timeout=300s \
  || say "the migration API did not become ready (kubectl -n $system logs deploy/$release-api); continuing"

say "5. examples as shipped, reconciled by the operator in its pod"
kubectl apply -f examples/10-migrationdatabase.yaml -f examples/11-migrationdatabase-manual.yaml \
  -f examples/20-migrationkey.yaml -f examples/21-migrationkey-manual.yaml
kubectl -n "$organisations" wait --for=condition=Ready mdb/legekontoret-fjordby mdb/sykehjem-nordby --timeout=300s
kubectl get sfm -n "$organisations"

say "6. NetworkPolicies"
failures=0
# probe NAMESPACE LABELS HOST PORT: 0 when a TCP connection opens within 5 s.
probe() {
  kubectl -n "$1" run "probe-$RANDOM$RANDOM" --image="$probe_image" --image-pull-policy=Never \
    --restart=Never --rm -i --quiet --labels="$2" --command -- \
    timeout 5 bash -c "</dev/tcp/$3/$4" >/dev/null 2>&1
}
expect() { # expect open|blocked WHAT NAMESPACE LABELS HOST PORT
  local want=$1 what=$2; shift 2
  local got=blocked
  for _ in 1 2 3; do
    if probe "$@"; then got=open; fi
    [ "$got" = "$want" ] && break
    sleep 2
  done
  if [ "$got" = "$want" ]; then say "  ok: $what is $got"
  else say "  WRONG: $what is $got, should be $want"; failures=$((failures + 1)); fi
}
pg=sfm-postgresql.$system.svc
api=$release-api.$system.svc
api_labels="app.kubernetes.io/name=sfm-migration,app.kubernetes.io/instance=$release,app.kubernetes.io/component=api"
kubectl create namespace monitoring --dry-run=client -o yaml | kubectl apply -f - >/dev/null
expect open    "PostgreSQL from a pod with the API's labels" "$system" "$api_labels" "$pg" 5432
expect blocked "PostgreSQL from an unlabelled pod" default "run=probe" "$pg" 5432
expect blocked "PostgreSQL from the SFM application of a database in staging" "$organisations" \
  "sfm.nhn.no/application-database=legekontoret-fjordby" "$pg" 5432
operator_metrics=$release-operator-metrics.$system.svc
expect blocked "the operator's metrics from outside monitoring" default "run=probe" "$operator_metrics" 8080
expect open    "the operator's metrics from monitoring" monitoring "run=probe" "$operator_metrics" 8080
if kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[*].status.containerStatuses[*].ready}' | grep -q true; then
  expect open    "the API's port from any namespace" default "run=probe" "$api" 8080
else
  say "  skipped: the API's ingress check (no ready API pod)"
fi
# Switch legekontoret-fjordby to operational as the migration API would (validation record written with
# the migrator's credentials, status.migration under the API's field manager), then the labelled SFM
# application pod must reach the server.
migrator=$(kubectl -n "$organisations" get mdb legekontoret-fjordby -o jsonpath='{.status.database.migratorSecret}')
key_id=$(kubectl -n "$organisations" get mkey fjordby-key-1 -o jsonpath='{.status.keyId}')
digest=$(head -c 32 /dev/urandom | sha256sum | cut -c1-64)
sql="INSERT INTO sfm.validation (manifest_sha256, users_expected, users_stored, patients_expected, patients_stored, files_rejected, migration_key_id, activation_requested_at) VALUES (decode('$digest', 'hex'), 0, 0, 0, 0, 0, '$key_id', now())"
# The migrator's URI reaches psql from its Secret (env), never through the pod spec or a command line.
name="validate-$RANDOM"
overrides=$(jq -n --arg name "$name" --arg image "$probe_image" --arg secret "${migrator#*/}" \
  --arg sql "$sql" '{spec: {containers: [{
    name: $name, image: $image, imagePullPolicy: "Never", stdin: true, stdinOnce: true,
    command: ["bash", "-c", "psql \"$URI\" -v ON_ERROR_STOP=1 -qc \"$SQL\""],
    env: [{name: "URI", valueFrom: {secretKeyRef: {name: $secret, key: "uri"}}},
          {name: "SQL", value: $sql}]}]}}')
kubectl -n "$system" run "$name" --image="$probe_image" --restart=Never --rm -i --quiet \
  --labels="$api_labels" --overrides="$overrides"
kubectl apply --server-side --field-manager=sfm-migration-api --subresource=status -f - <<EOF
apiVersion: sfm.nhn.no/v1alpha1
kind: MigrationDatabase
metadata: {name: legekontoret-fjordby, namespace: $organisations}
status:
  migration: {validatedDigest: "$digest", activationRequestedAt: "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
EOF
kubectl -n "$organisations" wait --for=condition=Operational mdb/legekontoret-fjordby --timeout=300s
expect open    "PostgreSQL from the SFM application of an operational database" "$organisations" \
  "sfm.nhn.no/application-database=legekontoret-fjordby" "$pg" 5432
expect blocked "PostgreSQL from the SFM application of the other database, still in staging" "$organisations" \
  "sfm.nhn.no/application-database=sykehjem-nordby" "$pg" 5432
[ "$failures" -eq 0 ] || fail "$failures NetworkPolicy check(s) wrong"
say "NetworkPolicies: every check right"

[ -n "${SFM_KIND_SKIP_SUITE:-}" ] && exit 0

say "7. the end-to-end suite against the cluster"
# The suite applies the examples itself and runs its own operator: clear the way.
kubectl -n "$organisations" delete mdb --all --timeout=120s
kubectl delete namespace "$organisations" --timeout=120s
kubectl -n "$system" scale "deployment/$release-operator" --replicas=0
kubectl -n "$system" rollout status "deployment/$release-operator" --timeout=120s
SFM_USE_EXISTING_CLUSTER=1 hack/test-env.sh cargo test --test e2e
say "done"
