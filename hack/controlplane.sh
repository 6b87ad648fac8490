#!/usr/bin/env bash
# A real, local Kubernetes control plane on loopback, the way controller-runtime's envtest starts one:
# etcd, kube-apiserver (generated certificates, RBAC, service-account signing so `kubectl create token`
# works) and kube-controller-manager (garbage collector, namespace and service-account controllers).
# No kubelet, so no pods run; everything else is the real API server.
#
#   hack/controlplane.sh start DIR   starts it, writes DIR/env (KUBECONFIG, PATH) and prints where it is
#   hack/controlplane.sh stop DIR    stops it (idempotent)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

free_port() { "$root/hack/free-port"; }

stop() {
  for p in kube-controller-manager kube-apiserver etcd; do
    if [ -f "$dir/$p.pid" ]; then
      pid=$(cat "$dir/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
}

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "controlplane: $name did not become ready in ${secs}s; last log lines:" >&2
  tail -n 30 "$dir/$name.log" >&2 || true
  return 1
}

case "$cmd" in
stop) stop; exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac

bin=$("$root/hack/build-controlplane.sh")
mkdir -p "$dir/pki"
dir=$(cd "$dir" && pwd)
pki="$dir/pki"
trap 'stop' ERR

# Certificates: one CA, a serving cert for 127.0.0.1, an admin client cert in system:masters, and the
# service-account signing key pair.
# shellcheck source=hack/pki.sh
source "$root/hack/pki.sh"
pki_ca sfm-local-ca
issue apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
issue admin "/O=system:masters/CN=sfm-admin" "extendedKeyUsage=clientAuth"
pki_service_account_keys

etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)

"$bin/etcd" --name sfm --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "sfm=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --log-level warn \
  >"$dir/etcd.log" 2>&1 &
echo $! >"$dir/etcd.pid"
wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

"$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --secure-port "$api_port" --cert-dir "$pki" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
  --disable-admission-plugins ServiceAccount \
  >"$dir/kube-apiserver.log" 2>&1 &
echo $! >"$dir/kube-apiserver.pid"

cat >"$dir/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: sfm-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: sfm-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: sfm-local
  context: {cluster: sfm-local, user: sfm-admin, namespace: default}
current-context: sfm-local
KCFG
export KUBECONFIG="$dir/kubeconfig"
wait_for kube-apiserver 90 "$bin/kubectl" get --raw /readyz

"$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
  --controllers garbage-collector-controller,namespace-controller,serviceaccount-controller \
  --leader-elect=false --secure-port 0 --use-service-account-credentials=false \
  >"$dir/kube-controller-manager.log" 2>&1 &
echo $! >"$dir/kube-controller-manager.pid"
# Ready once the service-account controller has made the default ServiceAccount.
wait_for kube-controller-manager 60 "$bin/kubectl" get serviceaccount default -n default

cat >"$dir/env" <<ENV
export KUBECONFIG=$dir/kubeconfig
export PATH=$bin:\$PATH
ENV
trap - ERR
echo "controlplane: kube-apiserver https://127.0.0.1:$api_port (etcd 127.0.0.1:$etcd_port)"
echo "controlplane: KUBECONFIG=$dir/kubeconfig; 'source $dir/env' puts kubectl $("$bin/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') on PATH"
