#!/usr/bin/env bash
# Builds container images without Docker, as docker-archive tarballs (`docker load`,
# `ctr images import`, `kind load image-archive`, `podman load` all read them).
#
#   tools/image.sh understudy [OUT.tar]  the operator: the release binary built WITHOUT the
#                                        `testbed` feature (no demo, no control-plane builder,
#                                        no crash points), its shared libraries, a CA bundle,
#                                        user 65532, entrypoint `understudy run` — the same
#                                        files, user and entrypoint as the root Dockerfile.
#                                        Named ghcr.io/understudy-dev/understudy:<crate version>,
#                                        which is what the chart and deploy/ reference.
#   tools/image.sh redis [OUT.tar]       Debian's redis-server and redis-cli (node tier, bench),
#                                        named docker.io/local/redis:<version>.
#   tools/image.sh mariadb [OUT.tar]     Debian's mariadbd with an initialised template data directory
#                                        and tools/images/mariadb-entry.sh as entrypoint (the
#                                        members of `engine: Mysql` clusters with spec.instances),
#                                        named docker.io/local/mariadb:<version>.
#   tools/image.sh pause [OUT.tar]       a static pause binary for containerd's sandbox_image,
#                                        named registry.k8s.io/pause:3.10.
#
# Prints the tarball's path on stdout (default: under ${UNDERSTUDY_CACHE:-~/.cache/understudy}/images);
# progress goes to stderr. The operator's release build keeps its target directory in the same
# cache, so a clean clone rebuilds only what changed (first build ≈ 7 min on 2 cores).
#   IMAGE_NAME overrides the image's name.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${UNDERSTUDY_CACHE:-$HOME/.cache/understudy}"
what="${1:?usage: tools/image.sh understudy|redis|mariadb|pause [OUT.tar]}"
log() { printf '[image] %s\n' "$*" >&2; }

crate_version() { sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"

# Copy a binary and every shared library `ldd` lists to the same paths in the rootfs.
add_binary() { # src dst
  local src="$1" dst="$2"
  install -D -m 0755 "$src" "$rootfs$dst"
  ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}

add_users() {
  mkdir -p "$rootfs/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  install -d -m 0755 -o 65532 -g 65532 "$rootfs/home/nonroot"
  install -d -m 1777 "$rootfs/tmp"
}

# JSON string array from arguments.
json_array() {
  local out="" a
  for a in "$@"; do out+="${out:+,}\"${a//\"/\\\"}\""; done
  printf '[%s]' "$out"
}

# Pack $rootfs as a one-layer docker-archive: manifest.json + config + layer.
pack() { # name out user workdir entrypoint-json cmd-json
  local name="$1" out="$2" user="$3" workdir="$4" entrypoint="$5" cmd="$6"
  local layer="$work/layer.tar"
  (cd "$rootfs" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$layer" -- *)
  local diff
  diff="$(sha256sum "$layer" | cut -d' ' -f1)"
  local config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\
\"config\":{\"User\":\"$user\",\"WorkingDir\":\"$workdir\",\"Env\":[\"PATH=/usr/local/bin:/usr/bin:/bin\"],\
\"Entrypoint\":$entrypoint,\"Cmd\":$cmd,\"Labels\":{\"org.opencontainers.image.source\":\"https://github.com/understudy-dev/understudy\"}},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff\"]},\
\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"tools/image.sh $what\"}]}"
  local cid
  cid="$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)"
  mkdir -p "$work/archive/$diff"
  mv "$layer" "$work/archive/$diff/layer.tar"
  printf '%s' "$config" >"$work/archive/$cid.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$cid" "$name" "$diff" \
    >"$work/archive/manifest.json"
  mkdir -p "$(dirname "$out")"
  (cd "$work/archive" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$out.tmp" -- *)
  mv "$out.tmp" "$out"
  log "$name → $out ($(du -h "$out" | cut -f1))"
}

case "$what" in
  understudy)
    version="$(crate_version)"
    name="${IMAGE_NAME:-ghcr.io/understudy-dev/understudy:$version}"
    out="${2:-$cache/images/understudy-$version.tar}"
    target="$cache/image-target"
    log "cargo build --release --no-default-features (target dir $target; first build ≈ 7 min on 2 cores)"
    start=$SECONDS
    (cd "$root" && CARGO_TARGET_DIR="$target" cargo build --release --locked --no-default-features --bin understudy >&2)
    log "release build took $((SECONDS - start))s"
    add_binary "$target/release/understudy" /usr/local/bin/understudy
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    add_users
    pack "$name" "$out" "65532:65532" "/home/nonroot" "$(json_array /usr/local/bin/understudy run)" "[]"
    ;;
  redis)
    command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
    version="$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')"
    name="${IMAGE_NAME:-docker.io/local/redis:$version}"
    out="${2:-$cache/images/redis-$version.tar}"
    # /usr/bin/redis-server is a symlink to redis-check-rdb; redis picks its mode from argv[0],
    # so the real file goes in under the server's name.
    add_binary "$(readlink -f "$(command -v redis-server)")" /usr/bin/redis-server
    add_binary "$(command -v redis-cli)" /usr/bin/redis-cli
    add_users
    install -d -m 0777 "$rootfs/data"
    pack "$name" "$out" "65532:65532" "/data" "$(json_array /usr/bin/redis-server)" "[]"
    ;;
  mariadb)
    command -v mariadbd >/dev/null || { echo "mariadbd is not installed (apt-get install mariadb-server)" >&2; exit 1; }
    version="$(mariadbd --version | sed -n 's/.*Ver \([0-9.]*\)-MariaDB.*/\1/p')"
    name="${IMAGE_NAME:-docker.io/local/mariadb:$version}"
    out="${2:-$cache/images/mariadb-$version.tar}"
    # Rebuilt only when the entrypoint, this script or the server changed (the template is ~100 MB).
    stamp="$version-$(cat "$root/tools/images/mariadb-entry.sh" "$root/tools/image.sh" | sha256sum | cut -c1-12)"
    if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
      log "$name → $out (up to date)"
      echo "$out"
      exit 0
    fi
    add_binary "$(command -v mariadbd)" /usr/sbin/mariadbd
    add_binary "$(readlink -f "$(command -v dash)")" /bin/sh
    add_binary "$(readlink -f "$(command -v sed)")" /bin/sed
    add_binary "$(readlink -f "$(command -v cp)")" /bin/cp
    add_binary "$(readlink -f "$(command -v mv)")" /bin/mv
    add_binary "$(readlink -f "$(command -v rm)")" /bin/rm
    add_binary "$(readlink -f "$(command -v od)")" /bin/od
    mkdir -p "$rootfs/usr/share/mysql"
    cp -R /usr/share/mysql/english /usr/share/mysql/charsets "$rootfs/usr/share/mysql/"
    # mysql.* tables and root@localhost (unix socket only); the operator's account is made
    # by the entrypoint at every start, from the pod's environment.
    template="$rootfs/usr/share/understudy/mariadb-template"
    mariadb-install-db --no-defaults --datadir="$template" --user="$(id -un)" \
      --auth-root-authentication-method=socket --skip-test-db --innodb-log-file-size=8M >"$work/install-db.log" 2>&1 \
      || { cat "$work/install-db.log" >&2; exit 1; }
    chmod -R a+rX "$template"
    install -D -m 0755 "$root/tools/images/mariadb-entry.sh" "$rootfs/usr/local/bin/mariadb-entry"
    add_users
    install -d -m 0777 "$rootfs/data"
    pack "$name" "$out" "65532:65532" "/data" "$(json_array /usr/local/bin/mariadb-entry)" "[]"
    echo "$stamp" >"$out.stamp"
    ;;
  pause)
    name="${IMAGE_NAME:-registry.k8s.io/pause:3.10}"
    out="${2:-$cache/images/pause-3.10.tar}"
    (cd "$root/tools/node/pause" && GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 \
      GOCACHE="${GOCACHE:-$cache/go-build}" go build -trimpath -ldflags "-s -w" -o "$rootfs/pause" .)
    pack "$name" "$out" "65535:65535" "/" "$(json_array /pause)" "[]"
    ;;
  *)
    echo "unknown image '$what' (understudy, redis, mariadb or pause)" >&2
    exit 2
    ;;
esac
echo "$out"
