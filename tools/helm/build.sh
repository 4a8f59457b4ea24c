#!/usr/bin/env bash
# Builds helm from the pinned wrapper module (tools/helm/go.mod) into a cache outside the
# work tree, once per version. Prints the binary's path on stdout; progress goes to stderr.
#   UNDERSTUDY_CACHE (default ~/.cache/understudy) — where the binary is kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. "$here/versions.env"
cache="${UNDERSTUDY_CACHE:-$HOME/.cache/understudy}"
dir="$cache/helm/v${HELM_VERSION}"
bin="$dir/helm"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir"
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
# Keep Go's build cache with ours (shared with tools/controlplane) so a clean clone reuses it.
export GOCACHE="${GOCACHE:-$cache/go-build}"

log() { printf '[helm] %s\n' "$*" >&2; }

# Exclusive lock, so parallel callers (several test binaries) wait instead of racing.
exec 9>"$dir/.helm.lock"
flock 9
if [ ! -x "$bin" ]; then
  log "building helm v${HELM_VERSION} (first run only; ~4 min on 2 cores, cached afterwards in $dir)"
  start=$SECONDS
  cd "$here"
  # Same ldflags as helm's Makefile: version, and the Kubernetes version helm assumes
  # (from the client-go it is built with) for `helm template`/`helm lint`.
  cgo="$(go list -m -f '{{.Version}}' k8s.io/client-go)" # v0.<minor>.<patch>
  kminor="${cgo#v0.}"; kminor="${kminor%%.*}"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kminor"
  done
  go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" helm.sh/helm/v3/cmd/helm
  mv "$bin.tmp" "$bin"
  log "built helm in $((SECONDS - start))s"
fi
exec 9>&-
echo "$bin"
