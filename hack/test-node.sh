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
#            Operational, with one API pod killed mid-upload: nothing lost or doubled; each stored file's
#            upload id (the client's ledger) followed to the pod that stored it (the pods' logs): the
#            killed pod stored some before it died, the other replica stored the rest after
#   failover the leading operator pod killed: the other takes the Lease and brings a database applied
#            meanwhile to Ready
#   rbac     no "forbidden" in any operator or API log
#
#   hack/test-node.sh          start a node in a temporary directory, run everything, stop it
#   SFM_NODE_KEEP=1 hack/test-node.sh   leave the node running (hack/node.sh stop DIR stops it)
#   SFM_NODE_WORK=DIR        work in DIR instead of a temporary directory
#
# The chart's steps are hack/chart-steps.sh, which hack/kind-e2e.sh runs on kind. Each phase ends with
# "== PHASE: N s". Needs root (the node does) and what hack/install-deps.sh installs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# shellcheck source=hack/chart-steps.sh
source "$root/hack/chart-steps.sh"
tag=node
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
    phase teardown
    "$root/hack/node.sh" stop "$node_dir"
    "$root/hack/postgres.sh" stop "$work/postgres" >/dev/null 2>&1
    # The teardown is part of the test: CI runs on this machine right after.
    if "$root/hack/node.sh" leftovers "$node_dir"; then say "node stopped, nothing left behind"
    else say "FAILED: the stopped node left something behind (above)"; rc=1; fi
    phase ""
    [ $rc -eq 0 ] && [ "$failures" -eq 0 ] && rm -rf "$work"
  else
    say "kept the node: source $node_dir/env; stop with hack/node.sh stop $node_dir"
  fi
  exit $rc
}
trap cleanup EXIT

phase_start=$(date +%s); total_start=$phase_start
phase() { # ends the current phase with "== NAME: N s" and starts the next (none: "")
  local now; now=$(date +%s)
  [ -n "${phase_name:-}" ] && echo "== $phase_name: $((now - phase_start)) s" >&2
  phase_name=$1; phase_start=$now
  [ -z "$1" ] || say "-- $1"
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
node_address=$SFM_NODE_IP
api_server_cidr=$SFM_NODE_IP/32
ctr=(ctr --address "$node_dir/containerd/containerd.sock" -n k8s.io)
container_pid() { # POD: the host's pid of the pod's (first) container
  local id
  id=$(kubectl -n "$system" get pod "$1" -o jsonpath='{.status.containerStatuses[0].containerID}')
  "${ctr[@]}" tasks ls 2>/dev/null | awk -v id="${id#containerd://}" '$1 == id {print $2}'
}

# Before probing: kube-router enforces every change made so far.
policies_settled() { "$root/hack/node.sh" settled "$node_dir" || fail "NetworkPolicy enforcement did not settle"; }

phase "node images"
"$root/hack/images.sh" build "$node_dir" "$tag"
"$root/hack/images.sh" check "$node_dir" "$tag" || wrong "the images and the Dockerfile disagree"

phase "postgresql on the host"
# The external server: on the node's address, admitting the pod network (scram-sha-256); reachable from
# pods only where the NetworkPolicies let them.
SFM_PG_FAST=1 SFM_PG_LISTEN=$node_ip SFM_PG_CLIENTS=10.244.0.0/16 \
  "$root/hack/postgres.sh" start "$work/postgres" 5432 >/dev/null
# shellcheck disable=SC1091
source "$work/postgres/env"
pg_host=$node_ip
pg_port=$SFM_PG_PORT
chart_start=$(date +%s)

phase "helm install"
# examples/05 is written for kind's in-cluster name of the server; here the default server is the host's.
chart_namespaces
kubectl -n "$system" create secret generic sfm-postgres-admin --from-literal=uri="$SFM_PG_ADMIN_URL" >/dev/null
chart_install

phase pods
chart_pods
# Each container's process as seen from the node: UID 65532, root filesystem mounted read-only.
for pod in $(kubectl -n "$system" get pods -l "app.kubernetes.io/instance=$release" -o jsonpath='{.items[*].metadata.name}'); do
  pid=$(container_pid "$pod")
  uid=$(awk '/^Uid:/{print $2}' "/proc/$pid/status")
  [ "$uid" = 65532 ] && ok "$pod runs as UID 65532" || wrong "$pod runs as UID '$uid'"
  rootfs=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | cut -d, -f1)
  [ "$rootfs" = ro ] && ok "$pod's root filesystem is read-only" || wrong "$pod's root filesystem is '$rootfs'"
done

phase examples
chart_examples

phase "policy (staging)"
chart_policy_staging

phase "upload (one API pod killed)"
# The API pod is deleted (--grace-period=0 --force: its endpoint leaves the Service) and its process
# killed (SIGKILL) at once: even so deleted, the kubelet gives a pod SIGTERM and two seconds, in which it
# went on serving the connections it had open (seen: 135 more files of an upload that took 3.6 s). The
# client's requests go on through the Service. The pod's log is the node's file, opened before the
# deletion (the kubelet removes the file with the pod) and read once containerd, which writes it, has
# closed it: containerd may still be copying the container's last output when the process is gone.
kill_api_pod() {
  local restarts uid pid
  victim=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[0].metadata.name}')
  survivor=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[1].metadata.name}')
  restarts=$(kubectl -n "$system" get pod "$victim" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  uid=$(kubectl -n "$system" get pod "$victim" -o jsonpath='{.metadata.uid}')
  victim_log_path=/var/log/pods/${system}_${victim}_${uid}/api/$restarts.log
  exec {victim_log}<"$victim_log_path"
  pid=$(container_pid "$victim")
  say "  killing API pod $victim (pid $pid); the other replica is $survivor"
  kubectl -n "$system" delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
  kill -KILL "$pid"
}
chart_upload "$patients" kill_api_pod
containerd_pid=$(cat "$node_dir/containerd.pid")
for _ in $(seq 300); do
  find "/proc/$containerd_pid/fd" -lname "$victim_log_path*" 2>/dev/null | grep -q . || break
  sleep 0.1
done
find "/proc/$containerd_pid/fd" -lname "$victim_log_path*" 2>/dev/null | grep -q . \
  && wrong "containerd still writes the log of the killed pod $victim 30 s after the upload"
sed 's/^[^{]*//' <&"$victim_log" >"$work/$victim.log"
exec {victim_log}<&-

# Which replica stored each upload: the upload id at the end of each stored file's URL in the client's
# ledger, against the API pods' "file ingested" lines (debug level: the upload id, nothing else).
ingested() { # a pod's log on stdin; prints "UPLOAD-ID TIMESTAMP" per upload it stored (RFC 3339, UTC)
  jq -rR 'fromjson? | select(.fields.message == "file ingested" and .fields.upload != null)
    | "\(.fields.upload | gsub("-"; "")) \(.timestamp)"'
}
ingested <"$work/$victim.log" >"$work/ingested.$victim"
for pod in $(kubectl -n "$system" get pods -l app.kubernetes.io/component=api -o jsonpath='{.items[*].metadata.name}'); do
  kubectl -n "$system" logs "$pod" | ingested >"$work/ingested.$pod"
done
jq -rs 'map({(.name): .}) | add | .[] | select(.state == "stored") | .url | sub(".*\\."; "")' "$ledger" \
  | sort >"$work/stored.ids"
stored_files=$(wc -l <"$work/stored.ids")
by_victim=$(wc -l <"$work/ingested.$victim")
# The timestamps all come from one clock in one format (microseconds, UTC): compared as strings.
victim_last=$(awk '$2 > last {last = $2} END {print last}' "$work/ingested.$victim")
after_victim=$(awk -v t="$victim_last" '$2 > t' "$work/ingested.$survivor" | wc -l)
cat "$work"/ingested.* | awk '{print $1}' | sort | uniq -d >"$work/twice.ids"
missing=$(cut -d' ' -f1 "$work"/ingested.* | sort -u | comm -13 - "$work/stored.ids" | wc -l)
say "  uploads stored, by pod: $(for f in "$work"/ingested.*; do printf '%s %s; ' "${f##*/ingested.}" "$(wc -l <"$f")"; done)"
[ "$by_victim" -gt 0 ] && ok "the killed pod $victim stored $by_victim uploads before it died" \
  || wrong "the killed pod $victim stored no upload: it took no part in the upload"
[ "$after_victim" -gt 0 ] && ok "the other replica $survivor stored $after_victim uploads after the killed pod's last ($victim_last)" \
  || wrong "the other replica $survivor stored no upload after the killed pod's last ($victim_last): the kill came too late"
[ "$missing" = 0 ] && ok "each of the $stored_files files the client has as stored was stored by an API pod's ingest" \
  || wrong "$missing of the $stored_files files the client has as stored are in no API pod's log"
[ ! -s "$work/twice.ids" ] && ok "no upload stored twice" || wrong "stored twice: $(head -3 "$work/twice.ids")"

phase "policy (operational)"
chart_policy_operational

phase "operator failover"
holder=$(kubectl -n "$system" get lease sfm-operator -o jsonpath='{.spec.holderIdentity}')
leader=${holder%_*}
other=$(kubectl -n "$system" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[*].metadata.name}' \
  | tr ' ' '\n' | grep -vx "$leader")
leader_pid=$(container_pid "$leader")
# The leader halts at once (SIGSTOP: no renewal, no release of the Lease, no more work) and is killed
# (SIGKILL) once the database applied meanwhile is Ready: a graceful stop would hand the Lease to whoever
# asks first, and a killed container that the kubelet restarts at once would race the other replica.
say "  stopping the leading operator $holder (pid $leader_pid); the other replica is $other"
kill -STOP "$leader_pid"
kubectl apply -f "$root/examples/11-migrationdatabase-manual.yaml" -f "$root/examples/21-migrationkey-manual.yaml" >/dev/null
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
expect blocked "PostgreSQL from the application pod of sykehjem-nordby (staging)" "$organisations" app-nordby "$pg_host" "$pg_port"

phase rbac
chart_rbac

phase ""
echo "== chart checks: $(( $(date +%s) - chart_start )) s" >&2
say "total before the teardown $(( $(date +%s) - total_start )) s"
[ "$failures" -eq 0 ] || fail "$failures check(s) wrong"
say "every check right"
