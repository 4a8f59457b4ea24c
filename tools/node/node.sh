#!/usr/bin/env bash
# A real one-node Kubernetes cluster for the node tier of the tests and benchmarks:
# etcd, kube-apiserver, kube-controller-manager (default controllers), kube-scheduler,
# containerd + runc + CNI bridge, kubelet and kube-proxy (iptables mode), every one of them
# inside a private network namespace with no uplink. The host reaches it through a veth pair:
# the API server at https://10.88.0.1:6443, pods on 10.88.0.0/16 and ClusterIPs on
# 10.96.0.0/16 are routed into the namespace, nothing is routed out of it. The recipe and the
# quirks of these machines are in shared/TEST-CLUSTER.md.
#
#   tools/node/node.sh up DATADIR [OWNER_PID]  start; prints KEY=VALUE lines (KUBECONFIG, ...).
#                                              NODE_IMAGES: docker-archive tarballs to import.
#                                              With OWNER_PID a watchdog tears everything down
#                                              when that process exits (a failed test, Ctrl-C).
#   tools/node/node.sh down DATADIR            stop and remove everything, idempotent.
#   tools/node/node.sh import DATADIR TAR...   import docker-archive images into containerd.
#   tools/node/node.sh kubelet DATADIR stop|start
#                                              stop or restart the kubelet (node NotReady tests).
#   tools/node/node.sh proxy DATADIR [ARGS...] restart kube-proxy with extra flags (benchmarks;
#                                              e.g. --proxy-mode=nftables, which needs `nft`;
#                                              --nftables-min-sync-period=D alone: nftables
#                                              mode through a config file, which that needs).
#   tools/node/node.sh leftovers               list what a node left on the machine; exit 1 if any.
#
# Needs root, the control-plane binaries (tools/controlplane/build.sh all + node) in BIN_DIR,
# and Debian's containerd, runc, containernetworking-plugins, iptables, conntrack (installed by
# tools/test.sh when missing). One node per machine at a time: a lock in /run serialises users.
set -euo pipefail

NETNS=understudy-node
VETH_H=usn-h            # host end, 10.99.0.1/30
VETH_N=usn-n            # namespace end, 10.99.0.2/30
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SVC_CIDR=10.96.0.0/16
HOST_NET=10.99.0.0/30
NODE_NAME=node-1
CGROUP_ROOT=understudy-node
LOCK=/run/understudy-node.lock
CURRENT=/run/understudy-node.current
SANDBOX_IMAGE=registry.k8s.io/pause:3.10
KERNEL_SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }
in_ns() { nsenter --net="/run/netns/$NETNS" "$@"; }

# Start a daemon in the namespace, detached, with its log and pid under DATADIR. It keeps no
# descriptor of ours (fd 8 is the machine lock, held by the watchdog only).
daemon() { # name cmd...
  local name="$1"; shift
  setsid nsenter --net="/run/netns/$NETNS" "$@" </dev/null >"$D/logs/$name.log" 2>&1 8>&- &
  echo $! >"$D/pids/$name"
}

stop_pid() { # name signal grace-seconds
  local f="$D/pids/$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$2" "$pid" 2>/dev/null || true
    for _ in $(seq $(($3 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

kubectl_() { "$BIN/kubectl" --kubeconfig "$D/admin.kubeconfig" "$@"; }

check_tools() {
  [ "$(id -u)" -eq 0 ] || die "the node tier needs root (kubelet, containerd, network namespaces); set UNDERSTUDY_NODE_TIER=skip to skip it"
  local missing=()
  for c in containerd ctr runc iptables ip6tables conntrack ip nsenter openssl setsid flock; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/portmap ] || missing+=(containernetworking-plugins)
  for b in etcd kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy; do
    [ -x "$BIN/$b" ] || missing+=("$BIN/$b")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (tools/test.sh installs the Debian packages and builds the binaries)"
}

check_routes() {
  # Our addresses must not collide with the machine's own networks.
  local r
  for r in "$POD_CIDR" "$SVC_CIDR" "$HOST_NET"; do
    if ip route show to match "${r%/*}" | grep -v '^default' | grep -q .; then
      die "the machine already routes $r ($(ip route show to match "${r%/*}" | grep -v '^default' | head -1)); a leftover node? run: tools/node/node.sh down <its data dir>"
    fi
  done
}

certs() {
  local c="$D/certs"
  mkdir -p "$c"
  (
    cd "$c"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=understudy-node-ca" 2>/dev/null
    leaf() { # name subject ext
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 2 -extfile "$1.ext" 2>/dev/null
    }
    leaf apiserver "/CN=kube-apiserver" "subjectAltName=IP:$NODE_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
    leaf admin "/O=system:masters/CN=understudy-admin" "extendedKeyUsage=clientAuth"
    leaf kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  cat >"$D/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster: {server: "https://$NODE_IP:6443", certificate-authority: "$c/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$c/admin.crt", client-key: "$c/admin.key"}
contexts:
- name: node
  context: {cluster: node, user: admin, namespace: default}
current-context: node
EOF
}

network() {
  ip netns add "$NETNS"
  in_ns ip link set lo up
  ip link add "$VETH_H" type veth peer name "$VETH_N"
  ip link set "$VETH_N" netns "$NETNS"
  ip addr add 10.99.0.1/30 dev "$VETH_H"
  ip link set "$VETH_H" up
  in_ns ip addr add 10.99.0.2/30 dev "$VETH_N"
  in_ns ip link set "$VETH_N" up
  in_ns ip link add cni0 type bridge
  in_ns ip addr add "$NODE_IP/16" dev cni0
  in_ns ip link set cni0 up
  # Node → ClusterIP: the route is chosen before kube-proxy's DNAT (TEST-CLUSTER quirk 7).
  in_ns ip route add "$SVC_CIDR" dev cni0
  # The host reaches pods and ClusterIPs through the veth; the namespace has no default route.
  ip route add "$POD_CIDR" via 10.99.0.2 dev "$VETH_H"
  ip route add "$SVC_CIDR" via 10.99.0.2 dev "$VETH_H"
  in_ns sysctl -qw net.ipv4.ip_forward=1
  in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
}

save_sysctls() {
  : >"$D/sysctl.saved"
  local k
  for k in $KERNEL_SYSCTLS; do echo "$k=$(sysctl -n "$k")" >>"$D/sysctl.saved"; done
}

cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h" ] || continue
    case "$h" in */unified/) continue ;; esac
    mkdir -p "$h$CGROUP_ROOT"
    if [ -f "${h}cpuset.cpus" ]; then
      cat "${h}cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

runc_binary() {
  # Quirk 1: these VMs refuse a negative oom_score_adj even to root, and the kubelet asks for
  # -998/-997. A wrapper rewrites it to 0 in the bundle's config.json for create/run.
  if sh -c 'echo -1 > /proc/self/oom_score_adj' 2>/dev/null; then
    command -v runc
    return
  fi
  cat >"$D/runc-wrapper" <<EOF
#!/bin/sh
# Rewrites a negative process.oomScoreAdj (refused on this machine) to 0, then runs runc.
bundle=""; prev=""; cmd=""
for a in "\$@"; do
  case "\$prev" in --bundle|-b) bundle="\$a" ;; esac
  case "\$a" in create|run) [ -z "\$cmd" ] && cmd="\$a" ;; esac
  prev="\$a"
done
if [ -n "\$cmd" ] && [ -n "\$bundle" ] && [ -f "\$bundle/config.json" ]; then
  sed -i 's/"oomScoreAdj":-[0-9]*/"oomScoreAdj":0/' "\$bundle/config.json"
fi
exec $(command -v runc) "\$@"
EOF
  chmod +x "$D/runc-wrapper"
  echo "$D/runc-wrapper"
}

containerd_() {
  local c="$D/containerd"
  mkdir -p "$c" "$D/cni/conf" "$D/cni-ipam"
  cat >"$D/cni/conf/10-understudy.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "understudy", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$D/cni-ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      BinaryName = "$(runc_binary)"
      Root = "$c/runc"
EOF
  daemon containerd containerd --config "$c/config.toml"
  for _ in $(seq 100); do
    ctr --address "$c/containerd.sock" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "containerd did not start: $(tail -5 "$D/logs/containerd.log")"
}

import_images() {
  local t
  for t in "$@"; do
    ctr --address "$D/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$t" >/dev/null \
      || die "importing $t failed"
  done
}

control_plane() {
  local c="$D/certs"
  daemon etcd "$BIN/etcd" --data-dir "$D/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster default=http://127.0.0.1:2380 \
    --unsafe-no-fsync --log-level warn
  daemon kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --cert-dir="$D/apiserver-certs" --tls-cert-file="$c/apiserver.crt" --tls-private-key-file="$c/apiserver.key" \
    --client-ca-file="$c/ca.crt" --secure-port=6443 --bind-address="$NODE_IP" --advertise-address="$NODE_IP" \
    --service-cluster-ip-range="$SVC_CIDR" --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$c/sa.pub" \
    --service-account-signing-key-file="$c/sa.key" --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-client-certificate="$c/kubelet-client.crt" --kubelet-client-key="$c/kubelet-client.key" \
    --profiling=false --v=0
  local i
  for i in $(seq 600); do
    [ "$(kubectl_ get --raw /readyz 2>/dev/null)" = ok ] && break
    kill -0 "$(cat "$D/pids/kube-apiserver")" 2>/dev/null || die "kube-apiserver exited: $(tail -20 "$D/logs/kube-apiserver.log")"
    sleep 0.2
  done
  [ "$i" -lt 600 ] || die "kube-apiserver not ready after 120s: $(tail -20 "$D/logs/kube-apiserver.log")"
  daemon kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$D/admin.kubeconfig" \
    --leader-elect=false --secure-port=0 --root-ca-file="$c/ca.crt" --node-monitor-grace-period=20s \
    --service-account-private-key-file="$c/sa.key" --use-service-account-credentials=false --v=0
  daemon kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$D/admin.kubeconfig" --leader-elect=false --secure-port=0
}

kubelet_start() {
  cat >"$D/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$D/containerd/containerd.sock
podLogsDir: $D/pod-logs
address: $NODE_IP
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $D/certs/ca.crt}
authorization: {mode: AlwaysAllow}
failSwapOn: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
readOnlyPort: 0
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
EOF
  daemon kubelet "$BIN/kubelet" --config "$D/kubelet.yaml" --kubeconfig "$D/admin.kubeconfig" \
    --root-dir "$D/kubelet" --cert-dir "$D/kubelet-pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
}

proxy_start() {
  daemon kube-proxy "$BIN/kube-proxy" --kubeconfig "$D/admin.kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --iptables-localhost-nodeports=false --healthz-bind-address=127.0.0.1:10256 \
    --metrics-bind-address=127.0.0.1:10249 "$@"
}

# kube-proxy in nftables mode with a chosen minSyncPeriod, which has no flag: a
# KubeProxyConfiguration carrying proxy_start's flags (with --config, flags are ignored).
proxy_start_nftables() { # min-sync-period
  cat >"$D/kube-proxy.yaml" <<CONFIG
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $D/admin.kubeconfig
hostnameOverride: $NODE_NAME
mode: nftables
clusterCIDR: $POD_CIDR
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nftables:
  minSyncPeriod: $1
CONFIG
  daemon kube-proxy "$BIN/kube-proxy" --config "$D/kube-proxy.yaml"
}

wait_node_ready() {
  local i
  for i in $(seq 600); do
    if [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] \
      && [ -z "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.spec.taints}' 2>/dev/null)" ]; then
      return 0
    fi
    kill -0 "$(cat "$D/pids/kubelet")" 2>/dev/null || die "kubelet exited: $(tail -20 "$D/logs/kubelet.log")"
    sleep 0.2
  done
  die "node not Ready after 120s: $(tail -20 "$D/logs/kubelet.log")"
}

# Removes everything `up` made. Safe to run twice, and on a half-started node.
teardown() {
  local start=$SECONDS
  mkdir -p "$D/pids"
  # 1. Pods away through the API while it is up, so CNI DEL frees addresses and caches. The
  #    controllers stop first, or the StatefulSets and Deployments would recreate them.
  stop_pid kube-controller-manager TERM 2
  stop_pid kube-scheduler TERM 2
  if [ -f "$D/pids/kube-apiserver" ] && [ -f "$D/pids/kubelet" ] && kubectl_ get --raw /readyz >/dev/null 2>&1; then
    kubectl_ delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 100); do
      [ -z "$(ctr --address "$D/containerd/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  # 2. Node agents, then every container task, then containerd and its shims.
  stop_pid kubelet TERM 2
  stop_pid kube-proxy TERM 2
  if [ -S "$D/containerd/containerd.sock" ]; then
    local t
    for t in $(ctr --address "$D/containerd/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$D/containerd/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd TERM 3
  pkill -KILL -f -- "-address $D/containerd/containerd.sock" 2>/dev/null || true
  # 3. Control plane: the API server does not exit on SIGTERM (quirk 9).
  stop_pid kube-apiserver KILL 1
  stop_pid etcd TERM 2
  # 4. Network: iptables chains live in the namespace and go with it.
  ip link del "$VETH_H" 2>/dev/null || true
  ip netns del "$NETNS" 2>/dev/null || true
  if mountpoint -q /run/netns && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then umount /run/netns 2>/dev/null || true; fi
  # 5. Mounts, files and kernel settings outside the data dir.
  local m
  for m in $(awk -v d="$D" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  find /var/log/containers -maxdepth 1 -lname "$D/*" -delete 2>/dev/null || true
  if [ -f "$D/sysctl.saved" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done <"$D/sysctl.saved"
  fi
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CGROUP_ROOT" ] && find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  pgrep -x kubelet >/dev/null || rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rm -f "$CURRENT"
  log "torn down in $((SECONDS - start))s"
}

# Watchdog: holds the machine lock (fd 8) until its owner exits, then tears down.
watch_owner() { # owner
  local owner="$1"
  while kill -0 "$owner" 2>/dev/null && [ -d "$D" ] && [ ! -f "$D/.down" ]; do sleep 1; done
  if [ -d "$D" ] && [ ! -f "$D/.down" ]; then
    log "owner $owner exited; tearing the node down"
    teardown >>"$D/logs/teardown.log" 2>&1 || true
    [ -n "${UNDERSTUDY_KEEP_NODE:-}" ] || rm -rf "$D"
  fi
}

# Anything a node leaves on the machine after teardown; exit 1 if there is any.
leftovers() {
  local found=0 h
  ip netns list 2>/dev/null | grep -qw "$NETNS" && { echo "network namespace $NETNS"; found=1; }
  ip link show "$VETH_H" >/dev/null 2>&1 && { echo "link $VETH_H"; found=1; }
  [ -e "$CURRENT" ] && { echo "$CURRENT ($(cat "$CURRENT"))"; found=1; }
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CGROUP_ROOT" ] && { echo "cgroup $h$CGROUP_ROOT"; found=1; }
  done
  if grep -q "understudy-node-" /proc/self/mounts; then echo "mounts under a node data dir"; found=1; fi
  if find /var/log/containers -maxdepth 1 -lname '*understudy-node-*' 2>/dev/null | grep -q .; then
    echo "container log links into a node data dir"; found=1
  fi
  if pgrep -f "understudy-node-[0-9]" >/dev/null; then
    echo "processes: $(pgrep -af "understudy-node-[0-9]" | cut -c1-120 | head -5)"; found=1
  fi
  return $found
}

cmd="${1:?usage: node.sh up|down|import|kubelet|proxy|leftovers DATADIR ...}"
if [ "$cmd" = leftovers ]; then
  leftovers && exit 0
  exit 1
fi
D="$(realpath -m "${2:?data dir}")"
BIN="${BIN_DIR:-$(cd "$(dirname "$0")/../controlplane" && ./build.sh all >/dev/null && ./build.sh node)}"
shift 2
case "$cmd" in
  up)
    owner="${1:-}"
    check_tools
    exec 8>"$LOCK"
    if ! flock -n 8; then
      log "another node holds $LOCK; waiting up to 10 min"
      flock -w 600 8 || die "the node lock $LOCK is still held after 10 min"
    fi
    # A node whose owner died without teardown (machine restart excepted): clean it first.
    if [ -f "$CURRENT" ]; then
      old="$(cat "$CURRENT")"
      log "cleaning a node left by an earlier run ($old)"
      (D="$old"; teardown) || true
    fi
    if ip netns list | grep -qw "$NETNS" || ip link show "$VETH_H" >/dev/null 2>&1; then
      (D=/nonexistent; teardown) >/dev/null 2>&1 || true
    fi
    check_routes
    mkdir -p "$D/logs" "$D/pids" "$D/pod-logs"
    echo "$D" >"$CURRENT"
    start=$SECONDS
    # From here on, a failure tears down what was made.
    trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed; tearing down"; teardown >/dev/null 2>&1 || true; fi' EXIT
    save_sysctls
    certs
    network
    cgroups
    containerd_
    # shellcheck disable=SC2086 # a space-separated list of tarballs
    [ -z "${NODE_IMAGES:-}" ] || import_images $NODE_IMAGES
    control_plane
    kubelet_start
    proxy_start
    wait_node_ready
    # The default ServiceAccount exists once the controller manager has run once.
    for _ in $(seq 100); do kubectl_ -n default get sa default >/dev/null 2>&1 && break; sleep 0.1; done
    trap - EXIT
    if [ -n "$owner" ]; then
      (watch_owner "$owner" </dev/null >/dev/null 2>&1 &)
    fi
    log "node Ready in $((SECONDS - start))s (data in $D)"
    echo "KUBECONFIG=$D/admin.kubeconfig"
    echo "SERVER=https://$NODE_IP:6443"
    echo "KUBECTL=$BIN/kubectl"
    echo "CONTAINERD=$D/containerd/containerd.sock"
    echo "NODE_NAME=$NODE_NAME"
    ;;
  down)
    [ -d "$D" ] || exit 0
    touch "$D/.down"
    teardown
    [ -n "${UNDERSTUDY_KEEP_NODE:-}" ] || rm -rf "$D"
    ;;
  import)
    import_images "$@"
    ;;
  kubelet)
    case "${1:?stop|start}" in
      stop) stop_pid kubelet TERM 2 ;;
      start) kubelet_start ;;
    esac
    ;;
  proxy)
    stop_pid kube-proxy TERM 2
    # The previous mode's rules go first: switching between iptables and nftables mode leaves
    # them behind otherwise, and both would rewrite Service traffic.
    in_ns "$BIN/kube-proxy" --cleanup >"$D/logs/kube-proxy-cleanup.log" 2>&1 || die "kube-proxy --cleanup failed (see $D/logs/kube-proxy-cleanup.log)"
    case "${1:-}" in
      --nftables-min-sync-period=*) proxy_start_nftables "${1#*=}" ;;
      *) proxy_start "$@" ;;
    esac
    ;;
  *) die "unknown command $cmd" ;;
esac
