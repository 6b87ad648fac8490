#!/usr/bin/env bash
# The chart on a kind cluster, for anyone with Docker (there is no Docker engine on the project's own
# machines, so this is not part of `make test`). The chart's steps are hack/chart-steps.sh, the same that
# hack/test-node.sh runs on the local node in every `make test`; only the cluster, the images and the
# PostgreSQL server are kind's own here:
#
#   1. a kind cluster (Kubernetes v1.34) with Calico, a CNI that enforces NetworkPolicy;
#   2. the operator and migration API images built from the Dockerfile, and the probe image, loaded
#      into kind;
#   3. PostgreSQL 15 outside the cluster (the chart's ipBlock path, as on the local node): a container on
#      kind's Docker network, behind a Service without selector named as examples/05 says, so that
#      examples/05-postgres-admin-secret.yaml is applied as shipped;
#   4. the chart's steps: namespaces with Pod Security "restricted" enforced, helm install (two operator
#      and two API replicas, the API on a NodePort), the pods, the examples as shipped, NetworkPolicy
#      probed from pods while the database is in staging, sfm-migrate on this host sending an export
#      through the NodePort with one API pod deleted midway, the policies once it is operational, no
#      "forbidden" in any log;
#   5. the in-cluster operator stopped and the end-to-end suite run against the cluster
#      (SFM_USE_EXISTING_CLUSTER=1; the suite starts its own operator and PostgreSQL as local processes).
#
#   hack/kind-e2e.sh              run everything and delete the cluster afterwards
#   SFM_KIND_KEEP=1 hack/kind-e2e.sh   keep the cluster (kubectl --context kind-sfm-e2e ...)
#   SFM_KIND_SKIP_SUITE=1         stop after step 4
#
# Needs: what `make test` needs (hack/install-deps.sh), docker, jq, and network access for the
# Calico manifest and the base images.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=hack/chart-steps.sh
source "$root/hack/chart-steps.sh"

cluster=${SFM_KIND_CLUSTER:-sfm-e2e}
kind_version=v0.30.0
node_image=${SFM_KIND_NODE_IMAGE:-kindest/node:v1.34.0}
calico_version=${SFM_CALICO_VERSION:-v3.30.0}
tag=e2e
postgres_image=docker.io/library/postgres:15-bookworm
patients=${SFM_KIND_PATIENTS:-400}

failures=0
say() { echo "kind-e2e: $*" >&2; }
ok() { say "  ok: $*"; }
wrong() { say "  WRONG: $*"; failures=$((failures + 1)); }
fail() { say "FAILED: $*"; exit 1; }

command -v docker >/dev/null || fail "docker is needed"
tools=$("$root/hack/tools.sh")
export PATH="$tools:$PATH"
if ! command -v kind >/dev/null; then
  GOBIN="$tools" go install "sigs.k8s.io/kind@$kind_version"
fi
command -v kubectl >/dev/null || PATH="$("$root/hack/build-controlplane.sh"):$PATH"
cargo build --quiet --bins

work=$(mktemp -d /tmp/sfm-kind.XXXXXX)
export KUBECONFIG="$work/kubeconfig"
cleanup() {
  set +e
  if [ -z "${SFM_KIND_KEEP:-}" ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1
    docker rm -f "$cluster-postgresql" >/dev/null 2>&1
    rm -rf "$work"
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
node_address=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cluster-control-plane")
api_server_cidr=$(kubectl get endpoints kubernetes -o jsonpath='{.subsets[0].addresses[0].ip}')/32

say "2. images sfm-operator:$tag, sfm-migration-api:$tag and sfm-probe:$tag"
docker build --target operator -t "sfm-operator:$tag" .
docker build --target migration-api -t "sfm-migration-api:$tag" .
# The probe image: bash's /dev/tcp with a timeout, as user 65532 (restricted); NetworkPolicy probes only.
docker build -t "sfm-probe:$tag" - <<EOF
FROM debian:bookworm-slim
USER 65532:65532
ENTRYPOINT ["/bin/sleep"]
CMD ["3600"]
EOF
kind load docker-image --name "$cluster" "sfm-operator:$tag" "sfm-migration-api:$tag" "sfm-probe:$tag"

say "3. PostgreSQL outside the cluster, on kind's network"
admin_uri=$(sed -n 's/^ *uri: *//p' examples/05-postgres-admin-secret.yaml)
docker run -d --name "$cluster-postgresql" --network kind \
  -e POSTGRES_PASSWORD="$(sed -E 's|^postgres://[^:]+:([^@]+)@.*|\1|' <<<"$admin_uri")" \
  -e POSTGRES_HOST_AUTH_METHOD=scram-sha-256 -e POSTGRES_INITDB_ARGS="--auth-host=scram-sha-256 --auth-local=scram-sha-256" \
  "$postgres_image" >/dev/null
pg_host=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cluster-postgresql")
pg_port=5432
# Listening on TCP only once the image's initialisation is done.
for _ in $(seq 120); do pg_isready -q -h "$pg_host" -p "$pg_port" && break; sleep 1; done
pg_isready -h "$pg_host" -p "$pg_port"

say "4. the chart's steps (hack/chart-steps.sh)"
# Calico logs nothing to wait for: a canary pod in default whose egress a marker policy cuts, under a
# new label value each time. Calico has caught up with every earlier change once the canary's
# connection to the PostgreSQL server (open from default) fails.
policies_settled() {
  local marker
  marker=m$(date +%s%N)
  kubectl -n default get pod canary >/dev/null 2>&1 || probe_pod default canary run=canary
  kubectl -n default label --overwrite pod canary "sfm.nhn.no/marker=$marker" >/dev/null
  kubectl -n default apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sync-marker}
spec: {podSelector: {matchLabels: {sfm.nhn.no/marker: "$marker"}}, policyTypes: [Egress]}
EOF
  for _ in $(seq 120); do connects default canary "$pg_host" "$pg_port" || return 0; sleep 1; done
  fail "Calico did not apply a policy change within about 2 minutes"
}
chart_namespaces
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: sfm-postgresql, namespace: $system}
spec: {ports: [{name: postgres, port: 5432, targetPort: $pg_port}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sfm-postgresql-external, namespace: $system, labels: {kubernetes.io/service-name: sfm-postgresql}}
addressType: IPv4
ports: [{name: postgres, port: $pg_port}]
endpoints: [{addresses: ["$pg_host"]}]
EOF
kubectl apply -f examples/05-postgres-admin-secret.yaml >/dev/null
chart_install
chart_pods
chart_examples
kubectl get sfm -n "$organisations"
chart_policy_staging
delete_api_pod() {
  local victim
  victim=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[0].metadata.name}')
  say "  deleting API pod $victim"
  kubectl -n "$system" delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
}
chart_upload "$patients" delete_api_pod
chart_policy_operational
chart_rbac
[ "$failures" -eq 0 ] || fail "$failures check(s) wrong"
say "the chart's steps: every check right"

[ -n "${SFM_KIND_SKIP_SUITE:-}" ] && exit 0

say "5. the end-to-end suite against the cluster"
# The suite applies the examples itself and runs its own operator: clear the way.
kubectl -n "$organisations" delete mdb --all --timeout=120s
kubectl delete namespace "$organisations" --timeout=120s
kubectl -n "$system" scale "deployment/$release-operator" --replicas=0
kubectl -n "$system" rollout status "deployment/$release-operator" --timeout=120s
SFM_USE_EXISTING_CLUSTER=1 hack/test-env.sh cargo test --test e2e
say "done"
