#!/usr/bin/env bash
# `make demo`: the platform the way NHN runs it, on chart-installed pods on a real local node
# (hack/node.sh; needs root, as CI has): the images built with buildah, the chart installed with helm (two
# operator and two API replicas, Pod Security "restricted" enforced), PostgreSQL on the host as the
# external server, the examples applied, and the data controller's sfm-migrate on this host sending a
# synthetic export through the API's NodePort until the database is Operational. Left running to look
# around; warm (binaries and node parts built) it is up in about half a minute and says how long it took.
#
#   hack/demo.sh up     start it all (first stopping an earlier demo) and print where to look
#   hack/demo.sh down   stop everything the demo started and check the node left nothing behind
#                       (idempotent)
#
# The state lives in /tmp/sfm-demo (SFM_DEMO_DIR) until `make demo-down`. The chart's steps are
# hack/chart-steps.sh, which `make test` runs too. The node is one per machine: `make demo-down` before
# `make test`. `make demo-local` (hack/demo-local.sh) is the same flow as local processes, without root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state=${SFM_DEMO_DIR:-/tmp/sfm-demo}
cmd=${1:-up}
node_dir=$state/node

# A process and everything it started, the children first; the process held (SIGSTOP) meanwhile so it
# starts nothing new.
stop_tree() {
  local child
  kill -STOP "$1" 2>/dev/null || return 0
  for child in $(ps -o pid= --ppid "$1"); do stop_tree "$child"; done
  kill -TERM "$1" 2>/dev/null || true
  kill -CONT "$1" 2>/dev/null || true
}

down() {
  [ -d "$state" ] || return 0
  # A `make demo` still running (waiting, or stopped half-way) goes first.
  local pid
  pid=$(cat "$state/demo.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$pid" != $$ ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'demo.sh up'; then
    stop_tree "$pid"
  fi
  "$root/hack/node.sh" stop "$node_dir"
  "$root/hack/postgres.sh" stop "$state/postgres" >/dev/null 2>&1 || true
  "$root/hack/node.sh" leftovers "$node_dir" \
    || { echo "demo: the stopped node left something behind (above); $state kept" >&2; exit 1; }
  rm -rf "$state"
}

case "$cmd" in
down) down; echo "demo: stopped, nothing left behind; removed $state"; exit 0 ;;
up) ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "demo: needs root for the node (network namespaces, cgroups, iptables), as CI has; 'make demo-local' runs the same flow as local processes without it" >&2; exit 1; }
started=$(date +%s)
down
mkdir -p "$state"; chmod 755 "$state"
echo $$ >"$state/demo.pid"
trap 'echo "demo: failed after $(( $(date +%s) - started )) s; logs are in $state (make demo-down cleans up)" >&2' ERR

# shellcheck source=hack/chart-steps.sh
source "$root/hack/chart-steps.sh"
work=$state
tag=node
failures=0
say() { echo "demo: $*"; }
ok() { echo "   $*"; }
wrong() { echo "   WRONG: $*"; failures=$((failures + 1)); }
fail() { echo "demo: $*" >&2; exit 1; }

echo "== building the binaries and the chart tools"
(cd "$root" && cargo build --quiet --bins)
PATH="$("$root/hack/tools.sh"):$PATH"
echo "== starting the node (kubelet, containerd, kube-router enforcing NetworkPolicy)"
"$root/hack/node.sh" start "$node_dir"
# shellcheck disable=SC1091
source "$node_dir/env"
node_address=$SFM_NODE_IP
api_server_cidr=$SFM_NODE_IP/32
echo "== building the images with buildah and importing them into the node"
"$root/hack/images.sh" build "$node_dir" "$tag"
echo "== starting PostgreSQL 15 on the node's address (the chart's external server)"
SFM_PG_LISTEN=$node_address SFM_PG_CLIENTS=10.244.0.0/16 "$root/hack/postgres.sh" start "$state/postgres" 5432 >/dev/null
# shellcheck disable=SC1091
source "$state/postgres/env"
pg_host=$node_address
pg_port=$SFM_PG_PORT

echo "== helm install $release (two operator and two API replicas) into $system"
chart_namespaces
kubectl -n "$system" create secret generic sfm-postgres-admin --from-literal=uri="$SFM_PG_ADMIN_URL" >/dev/null
chart_install
kubectl -n "$system" get pods -o wide
echo "== applying examples/ (the database reaches Ready in staging, its key Active)"
chart_examples
"$root/hack/node.sh" settled "$node_dir" # kube-router enforces the policies of the pods just started
echo "== the data controller: sfm-migrate key add, then run (check, upload, verify, activate) through the NodePort"
chart_upload "${SFM_DEMO_PATIENTS:-200}"
[ "$failures" -eq 0 ] || fail "$failures step(s) went wrong (above); logs are in $state (make demo-down cleans up)"

echo
kubectl -n "$system" get pods
echo
kubectl get sfm -n "$organisations"
echo
sed -n 's/^Verified: /demo: the client verified: /p' "$state/run.log"
echo "demo: up in $(( $(date +%s) - started )) s"
cat <<TOUR

Look around (as root):
  source $node_dir/env                   # KUBECONFIG and kubectl v1.34 for the node
  kubectl get pods -n $system -o wide           # the chart's pods, Ready through their probes
  kubectl -n $system get lease sfm-operator -o jsonpath='{.spec.holderIdentity}'; echo   # the leader
  kubectl get sfm -A                                    # MigrationDatabases and MigrationKeys
  kubectl -n $organisations describe mdb legekontoret-fjordby   # conditions and Events
  kubectl get networkpolicy -A                          # the chart's and the operator's policies
  kubectl -n $system logs deploy/$release-api | tail -3        # JSON logs, no personal data
  psql "\$(kubectl get secret -n $organisations legekontoret-fjordby-application -o jsonpath='{.data.uri}' | base64 -d)" -c 'select count(*) from sfm.patients'
  curl -s $api_url/metrics | grep ^sfm_                 # the API's metrics, through the NodePort
Stop it all with: make demo-down
TOUR
