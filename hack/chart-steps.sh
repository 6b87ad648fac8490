# shellcheck shell=bash disable=SC2154 # (the variables the caller sets, below)
# The steps that install the chart on a cluster with pods and check it, shared by hack/test-node.sh and
# `make demo` (hack/demo.sh) on the local node and by hack/kind-e2e.sh on kind: what runs on kind is what
# runs here in every `make test`. Sourced, not run.
#
# The caller sets, before calling the steps:
#   root work tag    the clone, a scratch directory, the images' tag (sfm-operator, sfm-migration-api,
#                    sfm-probe: the last one only for the NetworkPolicy probes)
#   pg_host pg_port  the PostgreSQL server outside the cluster (the chart's ipBlock path), as pods and
#                    this host reach it; its admin Secret sfm-postgres-admin in sfm-system is the caller's
#   node_address     an address of a node, where the API's NodePort is reached from this host
#   api_server_cidr  where pods reach the API server after the Service's DNAT (the chart's egress to it)
# and defines say, ok WHAT, wrong WHAT (a check that failed; the caller counts) and fail WHY (stops),
# and policies_settled (returns once the NetworkPolicy enforcer has applied every change made so far:
# no probe is ever retried).

release=sfm-migration
system=sfm-system
organisations=sfm-organisations
node_port=30080

# The namespaces, labelled for Pod Security "restricted", enforced; monitoring is where metrics may be
# scraped from. The admin Secret is the caller's (the examples' or the host server's).
chart_namespaces() {
  kubectl apply -f "$root/examples/00-namespace.yaml" >/dev/null
  kubectl create namespace monitoring --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local ns
  for ns in "$system" "$organisations" monitoring default; do
    kubectl label --overwrite namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
      pod-security.kubernetes.io/enforce-version=latest >/dev/null
  done
}

# helm install with two operator and two API replicas, the API behind a NodePort, the egress policies
# narrowed to the API server and the external PostgreSQL server; waits for both Deployments' rollout
# (Ready through their real probes). More helm arguments may follow.
chart_install() {
  "$root/target/debug/sfm-export" keygen --out "$work/keys" >/dev/null
  kubectl -n "$system" create secret generic sfm-decryption-key \
    --from-file=private.pem="$work/keys/private_key.pem" >/dev/null
  # The upload ids at debug level (never at info, DESIGN section 6): which replica created and stored
  # each upload, for the check that follows an upload across an API pod's death.
  helm install "$release" "$root/charts/sfm-migration" --namespace "$system" \
    --set image.tag="$tag" --set image.pullPolicy=Never \
    --set operator.defaultServer.existingSecret=sfm-postgres-admin \
    --set operator.replicas=2 --set api.replicas=2 \
    --set api.service.type=NodePort --set api.service.nodePort="$node_port" \
    --set 'logging.level=info\,sqlx=warn\,sfm_migration::api::tus=debug\,sfm_migration::api::ingest=debug' \
    --set "networkPolicy.egress.kubeApiServer.cidrs={$api_server_cidr}" \
    --set "networkPolicy.postgresql.cidrs={$pg_host/32}" \
    --set "networkPolicy.postgresql.applicationNamespaces={$organisations}" "$@" >/dev/null
  kubectl -n "$system" rollout status "deployment/$release-operator" --timeout=180s
  kubectl -n "$system" rollout status "deployment/$release-api" --timeout=180s
}

# Two pods of each component, Ready, under the chart's ServiceAccounts; restricted enforced.
chart_pods() {
  local component pods pod ready account
  for component in operator api; do
    pods=$(kubectl -n "$system" get pods -l "app.kubernetes.io/component=$component" -o jsonpath='{.items[*].metadata.name}')
    [ "$(wc -w <<<"$pods")" = 2 ] || wrong "$component: expected 2 pods, got '$pods'"
    for pod in $pods; do
      ready=$(kubectl -n "$system" get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
      [ "$ready" = True ] && ok "$pod Ready" || wrong "$pod not Ready"
      account=$(kubectl -n "$system" get pod "$pod" -o jsonpath='{.spec.serviceAccountName}')
      [ "$account" = "$release-$component" ] && ok "$pod runs as ServiceAccount $account" \
        || wrong "$pod runs as ServiceAccount '$account', not the chart's $release-$component"
    done
  done
  # Pod Security "restricted" is enforced: a pod that asks for nothing (so may run as root) is refused.
  if kubectl -n "$system" run psa-probe --image="sfm-probe:$tag" --image-pull-policy=Never --restart=Never \
      --dry-run=server -o name >/dev/null 2>"$work/psa.err"; then
    wrong "a pod breaking the restricted profile was admitted in $system"
  elif grep -q 'violates PodSecurity "restricted' "$work/psa.err"; then ok "restricted enforced in $system"
  else wrong "refused for another reason: $(cat "$work/psa.err")"; fi
}

# The examples as shipped reach Ready (the database) and Active (its key).
chart_examples() {
  kubectl apply -f "$root/examples/10-migrationdatabase.yaml" -f "$root/examples/20-migrationkey.yaml" >/dev/null
  kubectl -n "$organisations" wait --for=condition=Ready mdb/legekontoret-fjordby --timeout=180s >/dev/null \
    && ok "legekontoret-fjordby Ready" || wrong "legekontoret-fjordby not Ready"
  kubectl -n "$organisations" wait --for=jsonpath='{.status.phase}'=Active mkey/fjordby-key-1 --timeout=60s >/dev/null \
    && ok "fjordby-key-1 Active" || wrong "fjordby-key-1 not Active"
}

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

# While legekontoret-fjordby is in staging: the chart's and the operator's policies, probed from pods.
# Each "blocked" has a reference probe of the same target that must be open, so a block is the
# policies' doing, not a closed port. Leaves the probe pods app-fjordby, app-nordby and unlabelled in
# the organisations' namespace for chart_policy_operational.
chart_policy_staging() {
  local api_labels operator_labels api_pod_ip operator_pod_ip api_server who
  api_labels="app.kubernetes.io/name=sfm-migration,app.kubernetes.io/instance=$release,app.kubernetes.io/component=api"
  operator_labels="app.kubernetes.io/name=sfm-migration,app.kubernetes.io/instance=$release,app.kubernetes.io/component=operator"
  probe_pod "$organisations" app-fjordby sfm.nhn.no/application-database=legekontoret-fjordby
  probe_pod "$organisations" app-nordby sfm.nhn.no/application-database=sykehjem-nordby
  probe_pod "$organisations" unlabelled run=probe
  probe_pod default outsider run=probe
  probe_pod monitoring scraper run=probe
  policies_settled
  api_pod_ip=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[0].status.podIP}')
  operator_pod_ip=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].status.podIP}')
  expect blocked "PostgreSQL from the application pod of legekontoret-fjordby (staging)" "$organisations" app-fjordby "$pg_host" "$pg_port"
  expect blocked "PostgreSQL from an unlabelled pod in $organisations" "$organisations" unlabelled "$pg_host" "$pg_port"
  expect open "PostgreSQL from a pod in default (no policy there)" default outsider "$pg_host" "$pg_port"
  expect open "the API's port from another namespace" default outsider "$api_pod_ip" 8080
  expect blocked "the operator's metrics from default" default outsider "$operator_pod_ip" 8080
  expect open "the operator's metrics from monitoring" monitoring scraper "$operator_pod_ip" 8080
  # Egress of the operator and the API: what the chart says (PostgreSQL, the API server), nothing else
  # (the kubelet's port on the node listens, and is reachable from a pod without policy).
  probe_pod "$system" api-probe "$api_labels,sfm.nhn.no/probe=true"
  probe_pod "$system" operator-probe "$operator_labels,sfm.nhn.no/probe=true"
  policies_settled
  api_server=$(kubectl -n default get service kubernetes -o jsonpath='{.spec.clusterIP}')
  for who in api operator; do
    expect open "PostgreSQL from a pod with the $who's labels" "$system" "$who-probe" "$pg_host" "$pg_port"
    expect open "the API server (Service $api_server:443) from a pod with the $who's labels" "$system" "$who-probe" "$api_server" 443
    expect blocked "the kubelet's port from a pod with the $who's labels" "$system" "$who-probe" "$node_address" 10250
  done
  expect open "the kubelet's port from a pod in default (no policy there)" default outsider "$node_address" 10250
  # The probes with the components' labels would be endpoints of the API Service: gone before the upload.
  kubectl -n "$system" delete pod api-probe operator-probe --wait=true >/dev/null
}

# The data controller's side, from this host: an export made by sfm-export, sent by sfm-migrate through
# the NodePort, reaches Operational with every patient and user stored once. With a command, runs it
# once a fifth of the patients are stored (while the upload goes on) and checks that the upload was
# still running then.
chart_upload() { # PATIENTS [COMMAND...]
  local patients=$1 stored=0 client_pid app_uri in_db client_digest; shift
  "$root/target/debug/sfm-export" generate --cert "$work/keys/certificate.pem" --out "$work/export" \
    --patients "$patients" --organisation-number 974760673 --seed 2026 >/dev/null
  api_url="http://$node_address:$node_port"
  export SFM_MIGRATE_CONFIG_DIR=$work/client
  SFM_MIGRATION_KEY=$(kubectl -n "$organisations" get secret fjordby-key-1-key -o jsonpath='{.data.key}' | base64 -d) \
    "$root/target/debug/sfm-migrate" key add fjordby --for-api "$api_url" >/dev/null
  # kube-proxy programs the NodePort some time after the Service and its endpoints appear: the client
  # starts once the API answers there.
  for _ in $(seq 300); do curl -fsS -o /dev/null "$api_url/readyz" 2>/dev/null && break; sleep 0.2; done
  curl -fsS -o /dev/null "$api_url/readyz" || fail "the API does not answer at $api_url/readyz"
  "$root/target/debug/sfm-migrate" run "$work/export" --workers 8 --plain >"$work/run.log" 2>&1 &
  client_pid=$!
  ledger="$work/export/sfm-migrate.ledger"
  if [ $# -gt 0 ]; then
    for _ in $(seq 600); do
      stored=$(grep -c '"state":"stored"' "$ledger" 2>/dev/null || true)
      [ "${stored:-0}" -ge $((patients / 5)) ] && break
      kill -0 "$client_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$client_pid" 2>/dev/null && [ "${stored:-0}" -lt "$patients" ] \
      || wrong "the upload ended before the step in the middle of it could run (${stored:-0} stored)"
    say "  after ${stored:-0} of $patients patients stored:"
    "$@"
  fi
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
  # The URI names the server as the cluster knows it; this host connects to pg_host.
  in_db=$(PGHOSTADDR=$pg_host psql "$app_uri" -Atc 'select count(*) from sfm.patients' 2>&1 || true)
  [ "$in_db" = "$patients" ] && ok "rows in sfm.patients: $in_db (none lost, none doubled)" \
    || wrong "rows in sfm.patients: '$in_db', expected $patients"
}

# Once legekontoret-fjordby is operational: its application pod reaches the server, unlabelled pods not.
chart_policy_operational() {
  policies_settled
  expect open "PostgreSQL from the application pod of legekontoret-fjordby (operational)" "$organisations" app-fjordby "$pg_host" "$pg_port"
  expect blocked "PostgreSQL from an unlabelled pod in $organisations" "$organisations" unlabelled "$pg_host" "$pg_port"
}

# The operator and the API had everything they asked the API server for: no "forbidden" in any log,
# the previous container's included.
chart_rbac() {
  local pod
  for pod in $(kubectl -n "$system" get pods -l "app.kubernetes.io/instance=$release" -o name); do
    if { kubectl -n "$system" logs "$pod"; kubectl -n "$system" logs "$pod" --previous 2>/dev/null; } | grep -qi forbidden; then
      wrong "$pod logged a forbidden request: $(kubectl -n "$system" logs "$pod" | grep -i forbidden | head -2)"
    else ok "no forbidden request in ${pod#pod/}'s log"; fi
  done
}
