#!/bin/sh
# Entrypoint of the MariaDB member image (tools/image.sh mariadb): starts mariadbd the way
# Understudy expects a MySQL-family member to start — read-only, following nobody — on a data
# directory under /data (the member's volume), initialised from the image's template on first
# start.
#
# The operator's account is made at every start from the environment the operator's pod spec
# gives it (UNDERSTUDY_USER, default root; UNDERSTUDY_PASSWORD, from the HaCluster's Secret),
# with the binary log off: it exists on every member and is never replicated, so it is never
# an errant transaction. Everything else is mariadbd's own arguments ("$@", from the pod),
# given before this script's so that none of them moves the data directory or the socket.
set -eu
data="${UNDERSTUDY_DATA_DIR:-/data}/mariadb"
if [ ! -d "$data/mysql" ]; then
  # Copied aside and renamed: a start interrupted half-way copies again.
  rm -rf "$data.init"
  cp -R /usr/share/understudy/mariadb-template "$data.init"
  # A server_id of its own for every new data directory. A replica skips the events that
  # carry its own server_id (they would be its own, in a replication loop), so a member
  # rebuilt on a new data directory under an old id would silently skip what its previous
  # incarnation wrote as primary when it replays the primary's binary log.
  id="$(od -An -N4 -tu4 /dev/urandom | sed 's/[^0-9]//g')"
  [ "${id:-0}" != 0 ] || id=1
  printf '%s\n' "$id" >"$data.init/understudy-server-id"
  mv "$data.init" "$data"
fi
# The data directory's server_id replaces the operator's default (ordinal + 1), which only
# data directories made before there was one keep.
server_id=""
[ -f "$data/understudy-server-id" ] && read -r server_id <"$data/understudy-server-id"
set -- "$@" ${server_id:+"--server-id=$server_id"}
init=/tmp/understudy-init.sql
if [ -n "${UNDERSTUDY_PASSWORD:-}" ]; then
  # SQL string literals: backslash and quote escaped.
  esc() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g"; }
  user="$(esc "${UNDERSTUDY_USER:-root}")"
  password="$(esc "$UNDERSTUDY_PASSWORD")"
  umask 077
  printf '%s\n' "SET sql_log_bin = 0;" \
    "CREATE USER IF NOT EXISTS '$user'@'%' IDENTIFIED BY '$password';" \
    "ALTER USER '$user'@'%' IDENTIFIED BY '$password';" \
    "GRANT ALL PRIVILEGES ON *.* TO '$user'@'%' WITH GRANT OPTION;" >"$init"
  exec /usr/sbin/mariadbd --no-defaults "$@" --datadir="$data" --socket=/tmp/mariadb.sock \
    --pid-file=/tmp/mariadb.pid --init-file="$init"
fi
exec /usr/sbin/mariadbd --no-defaults "$@" --datadir="$data" --socket=/tmp/mariadb.sock \
  --pid-file=/tmp/mariadb.pid
