#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd (`all`, the default), or
# kubelet, kube-scheduler and kube-proxy (`node`), or one of them by name, from the pinned wrapper
# modules into a cache outside the work tree, once per version. Prints the bin dir.
#   UNDERSTUDY_CACHE (default ~/.cache/understudy) — where binaries are kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. "$here/versions.env"
cache="${UNDERSTUDY_CACHE:-$HOME/.cache/understudy}"
bin="$cache/controlplane/k8s-v${KUBE_VERSION}-etcd-v${ETCD_VERSION}"
mkdir -p "$bin"
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
# Keep Go's build cache with ours so a clean clone does not rebuild what is cached.
export GOCACHE="${GOCACHE:-$cache/go-build}"

log() { printf '[control-plane] %s\n' "$*" >&2; }

# Build one binary with an exclusive lock, so parallel callers wait instead of racing.
build() { # name moduledir package ldflags
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  [ -x "$bin/$name" ] && return 0
  exec 9>"$bin/.$name.lock"
  flock 9
  if [ ! -x "$bin/$name" ]; then
    log "building $name (first run only; all four binaries take ~12 min on 2 cores, cached afterwards in $bin)"
    local start=$SECONDS
    (cd "$here/$dir" && go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
    mv "$bin/$name.tmp" "$bin/$name"
    log "built $name in $((SECONDS - start))s"
  fi
  exec 9>&-
}

major="${KUBE_VERSION%%.*}"; minor="${KUBE_VERSION#*.}"; minor="${minor%%.*}"
kver="-X k8s.io/component-base/version.gitVersion=v${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=${major} -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"
want="${1:-all}"
case "$want" in all|etcd) build etcd etcd go.etcd.io/etcd/server/v3 "-s -w" ;; esac
case "$want" in all|kube-apiserver) build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "-s -w $kver" ;; esac
case "$want" in all|kube-controller-manager) build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "-s -w $kver" ;; esac
# kubectl of the same version: the machine's kubectl (if any) may be outside the supported skew.
case "$want" in all|kubectl) build kubectl kube k8s.io/kubernetes/cmd/kubectl "-s -w $kver" ;; esac
# The node tier (tests/node): a kubelet, kube-scheduler and kube-proxy of the same version.
case "$want" in node|kubelet) build kubelet kube k8s.io/kubernetes/cmd/kubelet "-s -w $kver" ;; esac
case "$want" in node|kube-scheduler) build kube-scheduler kube k8s.io/kubernetes/cmd/kube-scheduler "-s -w $kver" ;; esac
case "$want" in node|kube-proxy) build kube-proxy kube k8s.io/kubernetes/cmd/kube-proxy "-s -w $kver" ;; esac
echo "$bin"
