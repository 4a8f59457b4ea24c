#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls exactly this).
# Installs or builds what is missing, then: cargo fmt --check, clippy -D warnings, cargo test.
#   First run: apt packages (~1 min), Go build of etcd/kube-apiserver/kube-controller-manager/
#   kubectl/kubelet/kube-scheduler/kube-proxy (~6-12 min on 2 cores) and helm (~3-4 min), cargo
#   build (~6 min), the operator image's release build (~6 min), redis-py and a go-redis writer
#   for the discovery tests (~1 min). Later runs reuse the caches in
#   ${UNDERSTUDY_CACHE:-~/.cache/understudy} and take a few minutes.
#   UNDERSTUDY_NODE_TIER=skip skips the node tier (a real kubelet + containerd; needs root).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { printf '\n[test] %s\n' "$*" >&2; }
start=$SECONDS

# Debian packages the integration tests run for real (redis-server, MariaDB).
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
command -v mariadbd >/dev/null || need+=(mariadb-server)
command -v mariadb >/dev/null || need+=(mariadb-client)
# redis-py's virtualenv (tools/clients/setup.sh) and the third-party agent the agent tests run.
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
node_tier=1
[ "${UNDERSTUDY_NODE_TIER:-}" = skip ] && node_tier=0
if [ "$node_tier" = 1 ]; then
  # The node tier: a real one-node Kubernetes (tools/node/node.sh).
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  # kube-proxy's nftables mode, which `bench discovery` measures beside iptables mode.
  command -v nft >/dev/null || need+=(nftables)
  command -v openssl >/dev/null || need+=(openssl)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The packaged services are not wanted; tests start their own servers on free ports.
  $sudo_ systemctl disable --now redis-server redis-sentinel >/dev/null 2>&1 || true
  $sudo_ service redis-server stop >/dev/null 2>&1 || true
  $sudo_ service redis-sentinel stop >/dev/null 2>&1 || true
  $sudo_ systemctl disable --now mariadb >/dev/null 2>&1 || true
  $sudo_ service mariadb stop >/dev/null 2>&1 || true
  # Nor the packaged containerd: the node tier starts its own, with its own state.
  $sudo_ systemctl disable --now containerd >/dev/null 2>&1 || true
  $sudo_ service containerd stop >/dev/null 2>&1 || true
fi
command -v go >/dev/null || { echo "Go >= 1.25 is required to build the test control plane (https://go.dev/dl)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "Rust (cargo) is required (https://rustup.rs)" >&2; exit 1; }

log "control plane binaries (built from the Go module proxy on first use)"
UNDERSTUDY_CONTROLPLANE_BIN="$(tools/controlplane/build.sh)"
export UNDERSTUDY_CONTROLPLANE_BIN
if [ "$node_tier" = 1 ]; then
  log "node binaries: kubelet, kube-scheduler, kube-proxy (built from the Go module proxy on first use)"
  tools/controlplane/build.sh node >/dev/null
fi
log "helm (built from the Go module proxy on first use)"
tools/helm/build.sh >/dev/null
log "client libraries the discovery tests drive: redis-py (PyPI), go-redis (Go module proxy)"
tools/clients/setup.sh >/dev/null

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test"
cargo test --locked -- "$@"
if [ "$node_tier" = 1 ]; then
  log "the node tier left nothing behind"
  if ! tools/node/node.sh leftovers; then
    echo "the node tier's teardown left the above on this machine" >&2
    exit 1
  fi
fi
if [ "$node_tier" = 1 ]; then
  log "all passed in $((SECONDS - start))s (loopback tier and node tier)"
else
  log "all passed in $((SECONDS - start))s — NODE TIER SKIPPED (UNDERSTUDY_NODE_TIER=skip): nothing ran as a pod"
fi
