#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, built from upstream parts the way "Kubernetes the
# hard way" does, with nothing from a container registry: etcd, kube-apiserver, kube-controller-manager
# (all default controllers), kube-scheduler, kubelet, kube-proxy (all v1.34.3), containerd 2.x with
# Debian's runc and CNI plugins (bridge, host-local, loopback, portmap), a pause image built here from
# Debian's catatonit, and kube-router v2.1.0 as the NetworkPolicy enforcer (its firewall only).
# docs/node.md says why and how; hack/test-node.sh runs the chart and the tests on it.
#
#   hack/node.sh start DIR   starts it, writes DIR/env (KUBECONFIG, PATH, CONTAINERD_ADDRESS) and waits
#                            until the node is Ready and NetworkPolicy enforcement has settled
#   hack/node.sh stop DIR    stops it and removes everything it made outside DIR (idempotent)
#   hack/node.sh import DIR ARCHIVE...   imports image archives (docker-archive) into the node's containerd
#   hack/node.sh settled DIR             returns once kube-router enforces every NetworkPolicy, pod and
#                                        namespace change made so far (a probe right after a change could
#                                        see the old rules otherwise)
#   hack/node.sh leftovers DIR           lists what a stopped node left behind; fails if anything
#
# It is a machine-wide singleton (root only): the node's address 10.250.0.1 lives on an empty bridge
# sfm0, pods get 10.244.0.0/24 on the bridge cni0, Services 10.96.0.0/16, the API server listens on
# 10.250.0.1:6443. Nothing listens on or sends to any other address.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|import DIR [ARCHIVE...]" >&2; exit 2; }

node_ip=10.250.0.1
node_name=sfm-node
pod_cidr=10.244.0.0/24
cluster_cidr=10.244.0.0/16
service_cidr=10.96.0.0/16
api_service_ip=10.96.0.1
api_port=6443
pause_image=localhost/sfm-pause:catatonit
bridge=cni0
node_if=sfm0
cni_bin=/usr/lib/cni
runc_bin=/usr/sbin/runc
# Outside DIR, what the kubelet, containerd and libcni write to fixed paths. `start` notes which of these
# did not exist before, and `stop` removes only those.
# (buildah, even for images FROM scratch, sets up its network configuration in /etc and /var.)
outside=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd /run/netns /run/nri
         /opt/containerd /etc/cni /etc/containers/networks /var/lib/containers /run/containers)

say() { echo "node: $*" >&2; }
die() { echo "node: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------- stop
stop_pid() { # name: TERM, wait up to 10 s, then KILL
  local f="$dir/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Removes the rules and chains that kubelet, kube-proxy, kube-router and the CNI plugins add, in every
# table of iptables and ip6tables: first the jumps from the built-in chains, then the chains themselves.
clean_netfilter() {
  local ipt table chain rule family
  # Only the tables that exist (listing one with iptables-nft would create it).
  while read -r family table; do
    case "$family" in ip) ipt=iptables ;; ip6) ipt=ip6tables ;; *) continue ;; esac
    {
      # Rules of built-in chains that jump to our chains (or mention them), deleted one by one.
      while IFS= read -r rule; do
        [ -n "$rule" ] || continue
        eval "\"$ipt\" -t \"$table\" ${rule/#-A /-D }" 2>/dev/null || true
      done < <("$ipt" -t "$table" -S 2>/dev/null \
                 | { grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*(KUBE-|CNI-)' || true; })
      local chains=()
      while IFS= read -r chain; do chains+=("$chain"); done < <("$ipt" -t "$table" -S 2>/dev/null \
        | { grep -E '^-N (KUBE-|CNI-)' || true; } | cut -d' ' -f2)
      for chain in "${chains[@]}"; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in "${chains[@]}"; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
      # A table the start found missing goes again once it holds no rule of anyone's.
      if [ -f "$dir/nft-tables.before" ] && ! grep -qx "table $family $table" "$dir/nft-tables.before" \
          && [ -z "$("$ipt" -t "$table" -S 2>/dev/null | grep -v '^-P ')" ]; then
        nft delete table "$family" "$table" 2>/dev/null || true
      fi
    }
  done < <(nft list tables 2>/dev/null | awk '$1 == "table" {print $2, $3}')
  if command -v ipset >/dev/null; then
    local set
    for set in $(ipset list -n 2>/dev/null | { grep -E '^(KUBE-|kube-router|inet6:KUBE-)' || true; }); do
      ipset destroy "$set" 2>/dev/null || true
    done
  fi
}

# Kills every process left in the kubelet's pod cgroups (containers whose shim is gone) and removes the
# cgroups, deepest first, in every cgroup v1 controller.
clean_cgroups() {
  local controller d pid
  for controller in /sys/fs/cgroup/*/; do
    [ -d "$controller/kubepods" ] || continue
    while IFS= read -r d; do
      for pid in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    done < <(find "$controller/kubepods" -type d)
  done
  for controller in /sys/fs/cgroup/*/; do
    [ -d "$controller/kubepods" ] || continue
    for _ in $(seq 50); do
      find "$controller/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$controller/kubepods" ] || break
      sleep 0.1
    done
  done
}

kill_exe() { # kills every process running the given executable
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = "$1" ] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  return 0
}

unmount_under() { # unmounts every mount point below the given paths, deepest first
  local mounts=() m prefix
  while IFS= read -r m; do
    for prefix in "$@"; do
      case "$m" in "$prefix"/*|"$prefix") mounts+=("$m"); break ;; esac
    done
  done < <(awk '{print $5}' /proc/self/mountinfo | sort -r)
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}

stop() {
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  local ctr_bin
  # The enforcers and the kubelet first, so nothing restarts what is stopped next.
  for p in kube-router kube-proxy kubelet kube-scheduler kube-controller-manager; do stop_pid "$p"; done
  # Every container, through containerd while it still runs (its shims exit with their tasks).
  if [ -f "$dir/containerd.pid" ] && [ -S "$dir/containerd/containerd.sock" ]; then
    ctr_bin=$(cat "$dir/ctr-path" 2>/dev/null || true)
    if [ -x "$ctr_bin" ]; then
      local ctr=("$ctr_bin" --address "$dir/containerd/containerd.sock" -n k8s.io) id
      for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
        "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      done
      for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
        for _ in $(seq 50); do
          "${ctr[@]}" tasks delete "$id" >/dev/null 2>&1 && break
          sleep 0.1
        done
      done
      for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
        "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
      done
    fi
  fi
  stop_pid containerd
  # Shims that outlived their tasks (a pod sandbox keeps its shim): ours, known by their binary's path.
  kill_exe "$(dirname "$(cat "$dir/ctr-path" 2>/dev/null || echo /nonexistent/ctr)")/containerd-shim-runc-v2"
  clean_cgroups
  for p in kube-apiserver etcd; do stop_pid "$p"; done
  # Network namespaces of the pods (their veths go with them), the bridge, the node's address.
  local ns
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    ip netns delete "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
  done
  unmount_under "$dir" /run/containerd /var/lib/kubelet
  ip link delete "$bridge" 2>/dev/null || true
  ip link delete "$node_if" 2>/dev/null || true
  clean_netfilter
  if [ -f "$dir/ip_forward.before" ]; then
    sysctl -qw net.ipv4.ip_forward="$(cat "$dir/ip_forward.before")" || true
    rm -f "$dir/ip_forward.before"
  fi
  if [ -f "$dir/bridge-nf.before" ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables="$(cat "$dir/bridge-nf.before")" 2>/dev/null || true
    rm -f "$dir/bridge-nf.before"
  fi
  rm -f "$dir/nft-tables.before"
  # outside.created stays: `leftovers` checks the paths in it are gone.
  if [ -f "$dir/outside.created" ]; then
    local path
    while IFS= read -r path; do [ -n "$path" ] && rm -rf "$path"; done <"$dir/outside.created"
  fi
  # Files libcni caches for our network even where /var/lib/cni existed before.
  rm -rf /var/lib/cni/results/sfm-node-* /var/lib/cni/networks/sfm-node 2>/dev/null || true
  return 0
}

# What a stopped node must not leave: its processes, mounts, network namespaces, links, netfilter chains
# and sets, cgroups, forwarding, and the paths outside DIR that the start made.
leftovers() {
  local found=0 line
  report() { echo "node: left behind: $*" >&2; found=1; }
  for line in /proc/[0-9]*; do
    line=${line#/proc/}
    exe=$(readlink "/proc/$line/exe" 2>/dev/null || true)
    # Ours: built into the cache and started with a path in DIR (other control planes use the same binaries).
    case "$exe" in "${SFM_CACHE_DIR:-$HOME/.cache/sfm-migration}"/*)
      tr '\0' ' ' 2>/dev/null <"/proc/$line/cmdline" | grep -q -- "$dir/" && report "process $line $exe" ;;
    esac
  done
  while IFS= read -r line; do report "mount $line"; done < <(awk '{print $5}' /proc/self/mountinfo \
    | { grep -E "^($dir|/run/containerd|/var/lib/kubelet|/run/netns/cni-)" || true; })
  for line in /run/netns/cni-*; do [ -e "$line" ] && report "network namespace $line"; done
  for line in "$bridge" "$node_if"; do ip link show "$line" >/dev/null 2>&1 && report "link $line"; done
  while IFS= read -r line; do report "iptables $line"; done < <({ iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } \
    | { grep -E '(KUBE-|CNI-)' || true; })
  while IFS= read -r line; do report "ipset $line"; done < <(ipset list -n 2>/dev/null | { grep -E '^(KUBE-|kube-router)' || true; })
  for line in /sys/fs/cgroup/*/kubepods; do [ -e "$line" ] && report "cgroup $line"; done
  if [ -f "$dir/outside.created" ]; then
    while IFS= read -r line; do [ -n "$line" ] && [ -e "$line" ] && report "path $line"; done <"$dir/outside.created"
  fi
  [ -f "$dir/ip_forward.before" ] && report "net.ipv4.ip_forward not restored"
  for line in "$dir"/*.pid; do [ -e "$line" ] && report "pid file $line"; done
  return $found
}

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  say "$name did not become ready in ${secs}s; last log lines:"
  tail -n 30 "$dir/$name.log" >&2 || true
  return 1
}

case "$cmd" in
stop) stop; exit 0 ;;
leftovers) [ -d "$dir" ] && dir=$(cd "$dir" && pwd); leftovers; exit $? ;;
start) ;;
import)
  shift 2
  dir=$(cd "$dir" && pwd)
  for archive in "$@"; do
    "$(cat "$dir/ctr-path")" --address "$dir/containerd/containerd.sock" -n k8s.io images import \
      --no-unpack=false "$archive" >&2
  done
  exit 0 ;;
settled)
  # kube-router rewrites the filter table in a full sync after every pod or policy change; until the sync
  # that follows a change is done the change is not enforced. So: change a marker policy (selecting no
  # pod) and wait until a sync that started after that change has finished (-v 1 logs both).
  dir=$(cd "$dir" && pwd)
  log="$dir/kube-router.log"
  before=$(grep -c 'Starting sync of iptables' "$log" || true)
  "$("$root/hack/build-controlplane.sh")/kubectl" --kubeconfig "$dir/kubeconfig" -n default apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sync-marker, annotations: {sfm.nhn.no/marker: "$(date +%s%N)"}}
spec: {podSelector: {matchLabels: {sfm.nhn.no/sync-marker: none}}, policyTypes: [Ingress]}
EOF
  for _ in $(seq 300); do
    awk -v before="$before" '/Starting sync of iptables/ {n++} n > before && /sync iptables took/ {found=1} END {exit !found}' "$log" \
      && exit 0
    sleep 0.1
  done
  die "kube-router did not finish a policy sync within 30 s" ;;
*) echo "usage: $0 start|stop|import|leftovers|settled DIR [ARCHIVE...]" >&2; exit 2 ;;
esac

# --------------------------------------------------------------------------------------------- start
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, cgroups, iptables)"
for tool in "$runc_bin" "$cni_bin/bridge" "$cni_bin/host-local" "$cni_bin/loopback" "$cni_bin/portmap" \
    /usr/bin/catatonit /usr/bin/buildah /usr/sbin/iptables /usr/sbin/ipset /usr/sbin/conntrack /usr/sbin/nft; do
  [ -x "$tool" ] || die "$tool is missing: run hack/install-deps.sh"
done
[ -d /sys/fs/cgroup/memory ] || die "expected cgroup v1 (see docs/node.md)"
if ip link show "$node_if" >/dev/null 2>&1 || ip link show "$bridge" >/dev/null 2>&1; then
  die "$node_if or $bridge exists: another node runs here (or one was not stopped: hack/node.sh stop DIR)"
fi

started=$(date +%s)
cp_bin=$("$root/hack/build-controlplane.sh")
mapfile -t node_bins < <("$root/hack/build-node.sh")
k8s_bin=${node_bins[0]}; containerd_bin=${node_bins[1]}; router_bin=${node_bins[2]}
say "binaries ready in $(( $(date +%s) - started ))s"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
trap 'say "start failed; stopping what was started"; stop' ERR
mkdir -p "$dir/pki" "$dir/containerd" "$dir/cni/net.d" "$dir/kubelet" "$dir/images"
: >"$dir/outside.created"
for path in "${outside[@]}"; do [ -e "$path" ] || echo "$path" >>"$dir/outside.created"; done
echo "$containerd_bin/ctr" >"$dir/ctr-path"
pki="$dir/pki"

# --- the host's network: the node's address, forwarding, bridged traffic through iptables
# A bridge with no ports: this kernel has no dummy interfaces, and a local address on it stays local.
ip link add "$node_if" type bridge
ip addr add "$node_ip/32" dev "$node_if"
ip link set "$node_if" up
sysctl -n net.ipv4.ip_forward >"$dir/ip_forward.before"
nft list tables 2>/dev/null >"$dir/nft-tables.before" || true
modprobe br_netfilter 2>/dev/null || true
sysctl -n net.bridge.bridge-nf-call-iptables >"$dir/bridge-nf.before" 2>/dev/null || true
modprobe overlay 2>/dev/null || true
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

# --- certificates: one CA for everything (the cluster's client CA, serving CA and CSR signer)
# shellcheck source=hack/pki.sh
source "$root/hack/pki.sh"
pki_ca sfm-node-ca
issue apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:$node_ip,IP:$api_service_ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
issue admin "/O=system:masters/CN=sfm-admin" "extendedKeyUsage=clientAuth"
issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
issue kubelet "/O=system:nodes/CN=system:node:$node_name" "extendedKeyUsage=clientAuth"
issue kubelet-serving "/CN=$node_name" "subjectAltName=IP:$node_ip,DNS:$node_name
extendedKeyUsage=serverAuth"
issue controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
issue scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
issue proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
# kube-router is a test-harness component; it reads pods, namespaces, policies and nodes cluster-wide.
issue router "/O=system:masters/CN=kube-router" "extendedKeyUsage=clientAuth"
pki_service_account_keys

kubeconfig() { # name (certificate), file
  cat >"$2" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: sfm-node
  cluster: {server: "https://$node_ip:$api_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$pki/$1.crt", client-key: "$pki/$1.key"}
contexts:
- name: sfm-node
  context: {cluster: sfm-node, user: $1, namespace: default}
current-context: sfm-node
KCFG
}
for c in admin kubelet controller-manager scheduler proxy router; do kubeconfig "$c" "$dir/$c.kubeconfig"; done
cp "$dir/admin.kubeconfig" "$dir/kubeconfig"

# --- control plane
free_port() { "$root/hack/free-port"; }
etcd_port=$(free_port); etcd_peer=$(free_port)
"$cp_bin/etcd" --name sfm --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "sfm=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --log-level warn \
  >"$dir/etcd.log" 2>&1 &
echo $! >"$dir/etcd.pid"
wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

"$cp_bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address "$node_ip" --advertise-address "$node_ip" \
  --secure-port "$api_port" --cert-dir "$pki" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$pki/ca.crt" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" --allow-privileged=true \
  >"$dir/kube-apiserver.log" 2>&1 &
echo $! >"$dir/kube-apiserver.pid"
export KUBECONFIG="$dir/kubeconfig"
kubectl=("$cp_bin/kubectl")
wait_for kube-apiserver 90 "${kubectl[@]}" get --raw /readyz

"$cp_bin/kube-controller-manager" --kubeconfig "$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
  --controllers '*' --leader-elect=false --secure-port 0 --use-service-account-credentials=true \
  --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --allocate-node-cidrs=true --cluster-cidr "$cluster_cidr" --node-cidr-mask-size 24 \
  --service-cluster-ip-range "$service_cidr" \
  >"$dir/kube-controller-manager.log" 2>&1 &
echo $! >"$dir/kube-controller-manager.pid"

"$k8s_bin/kube-scheduler" --kubeconfig "$dir/scheduler.kubeconfig" \
  --authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --leader-elect=false --secure-port 0 \
  >"$dir/kube-scheduler.log" 2>&1 &
echo $! >"$dir/kube-scheduler.pid"

# --- containerd, with the pause image built here
cat >"$dir/cni/net.d/10-sfm-node.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "sfm-node",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "dataDir": "$dir/cni/ipam",
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
JSON
cat >"$dir/containerd/config.toml" <<TOML
version = 3
root = "$dir/containerd/root"
state = "/run/containerd"
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause_image"
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the parent's.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$runc_bin"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$cni_bin"]
    conf_dir = "$dir/cni/net.d"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
TOML
PATH="$containerd_bin:$PATH" "$containerd_bin/containerd" --config "$dir/containerd/config.toml" \
  >"$dir/containerd.log" 2>&1 &
echo $! >"$dir/containerd.pid"
ctr=("$containerd_bin/ctr" --address "$dir/containerd/containerd.sock" -n k8s.io)
wait_for containerd 30 "${ctr[@]}" version

# The sandbox image: catatonit (static, from Debian) in pause mode, as user 65535 like the upstream pause.
pause_archive="$dir/images/pause.tar"
ctr_id=$(buildah --storage-driver vfs --root "$dir/buildah" --runroot "$dir/buildah-run" from scratch)
buildah --storage-driver vfs --root "$dir/buildah" --runroot "$dir/buildah-run" \
  copy "$ctr_id" /usr/bin/catatonit /pause >/dev/null
buildah --storage-driver vfs --root "$dir/buildah" --runroot "$dir/buildah-run" \
  config --entrypoint '["/pause", "-P"]' --user 65535:65535 "$ctr_id"
buildah --storage-driver vfs --root "$dir/buildah" --runroot "$dir/buildah-run" \
  commit -q "$ctr_id" "$pause_image" >/dev/null
buildah --storage-driver vfs --root "$dir/buildah" --runroot "$dir/buildah-run" \
  push -q "$pause_image" "docker-archive:$pause_archive:$pause_image" >/dev/null
buildah --storage-driver vfs --root "$dir/buildah" --runroot "$dir/buildah-run" rm -a >/dev/null
"${ctr[@]}" images import "$pause_archive" >/dev/null

# --- kubelet
cat >"$dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
containerRuntimeEndpoint: "unix://$dir/containerd/containerd.sock"
# cgroup v1 is what these machines have (docs/node.md).
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# No cluster DNS: pods and the chart reach everything by address.
resolvConf: /etc/resolv.conf
podCIDR: "$pod_cidr"
maxPods: 60
# Low thresholds: the machine's disk and memory are shared with builds and other tests.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
# Imported images cannot be pulled again: image garbage collection never removes them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
YAML
"$k8s_bin/kubelet" --config "$dir/kubelet/config.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
  --root-dir "$dir/kubelet" --cert-dir "$pki" --hostname-override "$node_name" --node-ip "$node_ip" \
  >"$dir/kubelet.log" 2>&1 &
echo $! >"$dir/kubelet.pid"

# --- kube-proxy (iptables mode)
cat >"$dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$dir/proxy.kubeconfig"}
mode: iptables
clusterCIDR: "$cluster_cidr"
hostnameOverride: "$node_name"
bindAddress: "$node_ip"
healthzBindAddress: "127.0.0.1:$(free_port)"
metricsBindAddress: "127.0.0.1:$(free_port)"
nodePortAddresses: ["$node_ip/32"]
conntrack: {maxPerCore: 0}
YAML
"$k8s_bin/kube-proxy" --config "$dir/kube-proxy.yaml" >"$dir/kube-proxy.log" 2>&1 &
echo $! >"$dir/kube-proxy.pid"

wait_for kubelet 90 "${kubectl[@]}" wait --for=condition=Ready "node/$node_name" --timeout=1s
# kube-proxy has programmed the Services once the API server's own one is in the nat table.
proxy_synced() { iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https'; }
wait_for kube-proxy 60 proxy_synced

# --- kube-router: NetworkPolicy only (no routing, no service proxy)
"$router_bin/kube-router" --kubeconfig "$dir/router.kubeconfig" --hostname-override "$node_name" \
  --run-firewall=true --run-router=false --run-service-proxy=false \
  --metrics-port 0 --health-port 0 -v 1 \
  >"$dir/kube-router.log" 2>&1 &
echo $! >"$dir/kube-router.pid"
# Enforcing once its first full sync of the policy chains is done (-v 1 logs each sync's end; hack/test-node.sh
# waits for a sync that started after its last change the same way).
router_synced() { grep -q 'sync iptables took' "$dir/kube-router.log"; }
wait_for kube-router 60 router_synced

cat >"$dir/env" <<ENV
export KUBECONFIG=$dir/kubeconfig
export PATH=$cp_bin:$containerd_bin:\$PATH
export SFM_NODE_IP=$node_ip
export SFM_NODE_DIR=$dir
ENV
trap - ERR
say "node $node_name Ready ($("${kubectl[@]}" get node "$node_name" -o jsonpath='{.status.nodeInfo.kubeletVersion}'), containerd $("${ctr[@]}" version 2>/dev/null | awk '/Version:/{print $2; exit}')) in $(( $(date +%s) - started ))s"
say "API server https://$node_ip:$api_port; 'source $dir/env' for KUBECONFIG and kubectl"
