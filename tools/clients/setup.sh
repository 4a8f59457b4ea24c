#!/usr/bin/env bash
# The real client libraries the discovery tests and benchmarks drive: redis-py (from PyPI) in
# a virtualenv, and go-redis (from the Go module proxy) built into tools/clients/go's writer.
# Cached in ${UNDERSTUDY_CACHE:-~/.cache/understudy}/clients, outside the work tree. First run
# about a minute (pip ~10 s, go build ~40 s on 2 cores); later runs return at once.
# Prints `py=<python with redis-py>` and `go=<go-redis writer>`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${UNDERSTUDY_CACHE:-$HOME/.cache/understudy}/clients"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

REDIS_PY=7.4.0
venv="$cache/redis-py-$REDIS_PY"
if ! "$venv/bin/python" -c "import redis" >/dev/null 2>&1; then
  echo "installing redis-py $REDIS_PY from PyPI into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "redis==$REDIS_PY" >&2
fi

sum="$(cat "$here/go/go.mod" "$here/go/go.sum" "$here/go/main.go" | sha256sum | cut -c1-16)"
gobin="$cache/sentinel-writer-go-$sum"
if [ ! -x "$gobin" ]; then
  command -v go >/dev/null || { echo "Go is required to build the go-redis writer" >&2; exit 1; }
  echo "building the go-redis writer (modules from the Go module proxy)" >&2
  (cd "$here/go" && go build -mod=readonly -o "$gobin.tmp" .)
  mv "$gobin.tmp" "$gobin"
fi
echo "py=$venv/bin/python"
echo "go=$gobin"
