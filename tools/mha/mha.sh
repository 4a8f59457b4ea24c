#!/usr/bin/env bash
# mha.sh — run MHA 0.58 (mha4mysql, Debian 12 packages) against three local
# MariaDB 10.11 servers, as the baseline for the Understudy failover benchmark.
#
# Subcommands
#   mha.sh install
#       apt-get install (only if missing) mha4mysql-manager, mha4mysql-node,
#       openssh-server (+ perl deps pulled by apt). Stops/disables any packaged
#       sshd that the install started (we run a private sshd). Idempotent.
#       First run: ~16 s here (~40 small .debs, mostly perl libs); later: <1 s.
#   mha.sh up DIR
#       (Re)creates the whole testbed in DIR (tears down anything a previous
#       `up` left running in DIR first, then recreates from scratch):
#         * three mariadbd (m0,m1,m2) on 127.0.0.11/12/13 port 3306,
#           server_id 1..3; m0 primary, m1+m2 replicas (MASTER_USE_GTID=slave_pos)
#         * users: repl/repl (replication), mha/mha (MHA admin, ALL + GRANT),
#           app/app (SELECT,INSERT,UPDATE,DELETE,CREATE on bench.* only)
#         * a private sshd on the same three addresses, port $MHA_SSH_PORT
#           (default 2222), own host key + root key in DIR/ssh
#         * a patched overlay of the MHA perl modules in DIR/mha-perl
#           (MHA 0.58 dies on MariaDB 10.11 otherwise; see patch_mha below)
#         * DIR/app.cnf (MHA config), DIR/ip_failover.sh and
#           DIR/ip_online_change.sh (VIP stand-ins writing DIR/new-primary)
#       then runs masterha_check_ssh and masterha_check_repl (must pass).
#       Costs ~19-22 s on this 2-core VM: install-db ~3 s, 3 server starts
#       ~2 s, sshd+ssh checks ~3 s, masterha_check_ssh ~5 s,
#       masterha_check_repl ~9-10 s (MHA runs its node tools over ssh).
#   mha.sh manager DIR [--ping-interval N]
#       Starts masterha_manager in the background (log DIR/manager.log, pid
#       DIR/manager.pid); default MHA settings (ping_interval=3) unless
#       --ping-interval is given (written as ping_interval= into app.cnf).
#       Returns once MHA logs that it is monitoring (~9-12 s: the manager
#       re-runs the check_repl checks at start). Re-running it restarts the
#       manager. MHA's manager exits by design after one failover, and it
#       refuses to start again while the dead master is in app.cnf -> run `up`.
#   mha.sh switch DIR NEW_HOST
#       Planned switchover: stops the manager if running (MHA requires that),
#       masterha_master_switch --master_state=alive --new_master_host=NEW_HOST
#       --orig_master_is_new_slave --interactive=0, then restarts the manager
#       if it was running. Log: DIR/switch.log. masterha_master_switch itself
#       ~2.5 s (writes blocked only ~30 ms of that, idle cluster); with a
#       running manager add ~3-4 s masterha_stop + ~10 s manager restart.
#   mha.sh down DIR
#       Stops manager, sshd and the three mariadbd started for DIR (by their
#       pid files only) and waits until none is left (~3 s, ~7 s with a
#       manager). Data stays in DIR.
#   mha.sh measure-failover DIR [--load]
#       Extra helper for the benchmark: expects `up` + `manager` done; SIGKILLs
#       the current primary's mariadbd and prints seconds from the kill until
#       (a) DIR/new-primary names another host and (b) user `app` can INSERT
#       on that host. --load runs a background INSERT loop as `app` meanwhile.
#
# DIR/new-primary always holds the hostname (127.0.0.1x) of the current
# primary: written by `up`, then by MHA's master_ip_*_script on promotion.
#
# Environment: MHA_SSH_PORT (default 2222).
set -euo pipefail

SSH_PORT=${MHA_SSH_PORT:-2222}
HOSTS=(127.0.0.11 127.0.0.12 127.0.0.13)
MYSQL_PORT=3306
ADMIN_USER=mha ADMIN_PASS=mha
REPL_USER=repl REPL_PASS=repl

log() { printf '[mha.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }

absdir() {
  [[ -n ${1:-} ]] || die "DIR argument required"
  mkdir -p "$1"
  local d; d=$(cd "$1" && pwd)
  case $d in / | /tmp | /root | /work | /work/main | /work/main/*) die "refusing DIR=$d" ;; esac
  [[ $d != *' '* ]] || die "DIR must not contain spaces (MHA splits ssh_options on spaces)"
  printf '%s' "$d"
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- install --
cmd_install() {
  local pkgs=(mha4mysql-manager mha4mysql-node openssh-server openssh-sftp-server openssh-client
              mariadb-server mariadb-client libdbd-mysql-perl bc iproute2) missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    log "all packages already installed"
  fi
  # We run our own sshd. Services that *this run* installed (and the package started) are
  # stopped and disabled; a machine's own sshd or MariaDB, installed before, is never touched.
  local fresh_ssh=0 fresh_db=0 svcs=()
  [[ " ${missing[*]} " == *" openssh-server "* ]] && fresh_ssh=1 && svcs+=(ssh.service ssh.socket)
  [[ " ${missing[*]} " == *" mariadb-server "* ]] && fresh_db=1 && svcs+=(mariadb.service)
  if ((${#svcs[@]})) && [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl disable --now "${svcs[@]}" >/dev/null 2>&1 || true
  elif ((${#svcs[@]})); then
    ((fresh_db)) && { service mariadb stop >/dev/null 2>&1 || true; update-rc.d mariadb disable >/dev/null 2>&1 || true; }
    if ((fresh_ssh)); then
      update-rc.d ssh disable >/dev/null 2>&1 || true
      if [[ -s /run/sshd.pid ]] && [[ $(readlink -f "/proc/$(cat /run/sshd.pid)/exe" 2>/dev/null) == /usr/sbin/sshd ]]; then
        log "stopping the sshd this install started (pid $(cat /run/sshd.pid))"
        kill "$(cat /run/sshd.pid)" || true
      fi
    fi
  fi
  mkdir -p /run/sshd   # sshd privilege-separation dir (compiled-in path)
  log "install done"
}

# ------------------------------------------------------------ MHA patches --
# MHA 0.58 modules all run under `use warnings FATAL => 'all'`. Two places die
# on MariaDB 10.11; we patch copies in DIR/mha-perl and put that first in
# PERL5LIB (for the manager via env, for node tools run over ssh via sshd
# SetEnv). The system files in /usr/share/perl5/MHA stay untouched.
patch_mha() {
  local D=$1 o=$1/mha-perl/MHA
  rm -rf "$D/mha-perl"; mkdir -p "$o"
  cp /usr/share/perl5/MHA/*.pm "$o/"
  # 1) parse_mysql_version("10.11.19-MariaDB-0+deb12u1-log") feeds 6 numbers to
  #    a 3-conversion sprintf -> "Redundant argument in sprintf" -> die.
  perl -0pi -e '
    s/sprintf\( \x27%03d%03d%03d\x27, \$str =~ m\/\(\\d\+\)\/g \)/sprintf( \x27%03d%03d%03d\x27, ( map { \$_ \/\/ 0 } ( \$str =~ m\/(\\d+)\/g )[0..2] ) )/;
    s/sprintf\( \x27%03d%03d\x27, \$str =~ m\/\(\\d\+\)\/g \)/sprintf( \x27%03d%03d\x27, ( map { \$_ \/\/ 0 } ( \$str =~ m\/(\\d+)\/g )[0..1] ) )/;
  ' "$o/NodeUtil.pm"
  # 2) check_if_super_read_only() runs SELECT @@global.super_read_only with
  #    RaiseError=1; MariaDB has no such variable -> die during failover
  #    (apply_diff_relay_logs / apply_binlog_to_master). Treat error as "off".
  perl -0pi -e '
    s/(my \$sth = \$dbh->prepare\("SELECT \\\@\\\@global\.super_read_only as Value"\);\n\s*\$sth->execute\(\);)/my \$sth = eval { my \$s = \$dbh->prepare("SELECT \\\@\\\@global.super_read_only as Value"); \$s->execute(); \$s };\n  return (0, 0) unless \$sth;/;
  ' "$o/SlaveUtil.pm"
  # 3) masterha_check_ssh does `exit MHA::SSHCheck::main()`, whose value is
  #    the return of Log::Dispatch->info() — undef with Debian 12's
  #    Log::Dispatch 2.70 -> "Use of uninitialized value in exit" -> FATAL ->
  #    exit 255 even though every ssh test passed.
  perl -0pi -e '
    s/return do_ssh_connection_check\( \\\@servers_config, \$log, "debug", "\/tmp" \);/do_ssh_connection_check( \\\@servers_config, \$log, "debug", "\/tmp" );\n  return 0;/;
  ' "$o/SSHCheck.pm"
  grep -q '^  return 0;$' "$o/SSHCheck.pm" || die "SSHCheck.pm patch did not apply"
  grep -q '\[0\.\.2\]' "$o/NodeUtil.pm" || die "NodeUtil.pm patch did not apply"
  grep -q 'return (0, 0) unless \$sth' "$o/SlaveUtil.pm" || die "SlaveUtil.pm patch did not apply"
  PERL5LIB=$D/mha-perl perl -MMHA::NodeUtil -MMHA::SlaveUtil -e '
    MHA::NodeUtil::mysql_version_ge("10.11.19-MariaDB-0+deb12u1-log","5.6.0") or die "ver";' \
    || die "patched MHA modules fail to load"
}

# --------------------------------------------------------------- mariadb ---
sock() { printf '%s/m%d/mysqld.sock' "$1" "$2"; }
sql()  { local D=$1 i=$2; shift 2; mariadb --no-defaults -uroot --socket="$(sock "$D" "$i")" -N -B "$@"; }

start_mariadbd() {
  local D=$1 i=$2 ro=$3 h=${HOSTS[$2]}
  local m=$D/m$i
  # shellcheck disable=SC2206
  local opts=(
    --no-defaults --user=root
    --datadir="$m/data" --socket="$m/mysqld.sock" --pid-file="$m/mysqld.pid"
    --log-error="$m/error.log"
    --bind-address="$h" --port=$MYSQL_PORT
    --server-id=$((i + 1))
    --log-bin="$m/data/mysql-bin" --log-slave-updates --binlog-format=ROW
    --relay-log="$m/data/relay-bin" --relay-log-purge=0
    --gtid-strict-mode=ON
    --skip-name-resolve
    --read-only="$ro"
  )
  setsid mariadbd "${opts[@]}" </dev/null >>"$m/stdout.log" 2>&1 &
  local t=0
  until mariadb-admin --no-defaults -uroot --socket="$m/mysqld.sock" ping >/dev/null 2>&1; do
    sleep 0.2; t=$((t + 1))
    ((t < 300)) || { tail -20 "$m/error.log" >&2; die "m$i did not start"; }
  done
  log "m$i mariadbd up on $h:$MYSQL_PORT (pid $(cat "$m/mysqld.pid"))"
}

stop_pidfile() { # $1 pidfile, $2 name, $3 signal
  local f=$1 name=$2 sig=${3:-TERM} p t=0
  pid_alive "$f" || return 0
  p=$(cat "$f")
  kill -"$sig" "$p" 2>/dev/null || true
  while kill -0 "$p" 2>/dev/null; do
    sleep 0.2; t=$((t + 1))
    if ((t == 150)); then log "$name (pid $p) ignores SIG$sig, sending KILL"; kill -KILL "$p" 2>/dev/null || true; fi
  done
  log "stopped $name (pid $p)"
}

# ------------------------------------------------------------------ sshd ---
setup_ssh() {
  local D=$1 s=$1/ssh
  mkdir -p "$s" /run/sshd
  chmod 700 "$s"
  ssh-keygen -q -t ed25519 -N '' -f "$s/host_ed25519_key" -C mha-host
  ssh-keygen -q -t ed25519 -N '' -f "$s/id_ed25519" -C mha-root
  cp "$s/id_ed25519.pub" "$s/authorized_keys"; chmod 600 "$s/authorized_keys"
  : >"$s/known_hosts"
  {
    for h in "${HOSTS[@]}"; do echo "ListenAddress $h:$SSH_PORT"; done
    cat <<EOF
HostKey $s/host_ed25519_key
PidFile $s/sshd.pid
AuthorizedKeysFile $s/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 50
UseDNS no
LogLevel INFO
# MHA copies binlog/relay-log diffs with scp; OpenSSH 9 scp speaks SFTP by
# default, so without this line every scp fails ("subsystem request failed").
Subsystem sftp /usr/lib/openssh/sftp-server
# node tools (save_binary_logs, apply_diff_relay_logs) need the patched modules
SetEnv PERL5LIB=$D/mha-perl
EOF
  } >"$s/sshd_config"
  # the ssh client options MHA will use (also in app.cnf ssh_options)
  SSH_OPTS="-i $s/id_ed25519 -o UserKnownHostsFile=$s/known_hosts -o StrictHostKeyChecking=no -o LogLevel=ERROR"
  /usr/sbin/sshd -t -f "$s/sshd_config"
  /usr/sbin/sshd -f "$s/sshd_config" -E "$s/sshd.log"
  local t=0
  until pid_alive "$s/sshd.pid"; do sleep 0.1; t=$((t + 1)); ((t < 100)) || die "sshd did not start: $(tail -5 "$s/sshd.log")"; done
  for h in "${HOSTS[@]}"; do
    # shellcheck disable=SC2086
    ssh $SSH_OPTS -o BatchMode=yes -p "$SSH_PORT" "root@$h" 'echo ok; echo "PERL5LIB=$PERL5LIB"' | grep -q "PERL5LIB=$D/mha-perl" \
      || die "ssh root@$h:$SSH_PORT failed or PERL5LIB not set"
  done
  # shellcheck disable=SC2086
  scp $SSH_OPTS -o BatchMode=yes -P "$SSH_PORT" "$s/sshd_config" "root@${HOSTS[1]}:$s/scp-test" \
    && cmp -s "$s/sshd_config" "$s/scp-test" || die "scp via private sshd failed"
  rm -f "$s/scp-test"
  log "sshd up on ${HOSTS[*]} port $SSH_PORT (pid $(cat "$s/sshd.pid"))"
}

# ---------------------------------------------------- VIP stand-in script ---
write_ip_scripts() {
  local D=$1
  cat >"$D/ip_script.sh" <<EOF
#!/usr/bin/env bash
# MHA master_ip_failover_script / master_ip_online_change_script stand-in.
# There is no VIP: "moving the VIP" = writing the new primary's host to
# $D/new-primary (atomic rename). Every call is logged with a timestamp.
set -uo pipefail
D=$D
mode=\$1; shift          # failover | online
cmd= new= orig_ip= orig_port= orig_user= orig_pass=
for a in "\$@"; do
  case \$a in
    --command=*) cmd=\${a#*=} ;;
    --new_master_host=*) new=\${a#*=} ;;
    --orig_master_ip=*) orig_ip=\${a#*=} ;;
    --orig_master_port=*) orig_port=\${a#*=} ;;
    --orig_master_user=*) orig_user=\${a#*=} ;;
    --orig_master_password=*) orig_pass=\${a#*=} ;;
  esac
done
echo "\$(date +%s.%N) \$mode \$cmd new=\$new orig=\$orig_ip" >>"\$D/ip_script.log"
case \$cmd in
  start)
    [[ -n \$new ]] || exit 1
    echo "\$new" >"\$D/new-primary.tmp" && mv -f "\$D/new-primary.tmp" "\$D/new-primary"
    echo "\$(date +%s.%N) new-primary=\$new" >>"\$D/ip_script.log" ;;
  stop)
    # planned switch: block app writes on the old primary (the sample MHA
    # script does the same); MHA then takes FLUSH TABLES WITH READ LOCK.
    if [[ \$mode == online ]]; then
      mariadb --no-defaults -h "\$orig_ip" -P "\$orig_port" -u "\$orig_user" -p"\$orig_pass" \\
        -e 'SET GLOBAL read_only=1' || exit 1
    fi ;;
  stopssh|status) ;;
esac
exit 0
EOF
  printf '#!/bin/sh\nexec %s/ip_script.sh failover "$@"\n' "$D" >"$D/ip_failover.sh"
  printf '#!/bin/sh\nexec %s/ip_script.sh online "$@"\n' "$D" >"$D/ip_online_change.sh"
  chmod +x "$D/ip_script.sh" "$D/ip_failover.sh" "$D/ip_online_change.sh"
}

write_app_cnf() {
  local D=$1
  {
    cat <<EOF
[server default]
user=$ADMIN_USER
password=$ADMIN_PASS
repl_user=$REPL_USER
repl_password=$REPL_PASS
ssh_user=root
ssh_port=$SSH_PORT
ssh_options=$SSH_OPTS
manager_workdir=$D/manager
manager_log=$D/manager.log
remote_workdir=$D/remote
master_ip_failover_script=$D/ip_failover.sh
master_ip_online_change_script=$D/ip_online_change.sh
EOF
    for i in 0 1 2; do
      cat <<EOF

[server$((i + 1))]
hostname=${HOSTS[$i]}
port=$MYSQL_PORT
ssh_port=$SSH_PORT
master_binlog_dir=$D/m$i/data
remote_workdir=$D/m$i/mha
candidate_master=1
EOF
    done
  } >"$D/app.cnf"
}

# -------------------------------------------------------------------- up ---
cmd_up() {
  local D; D=$(absdir "${1:-}")
  local t0; t0=$(now)
  for b in mariadbd mariadb-install-db masterha_manager apply_diff_relay_logs /usr/sbin/sshd; do
    command -v "$b" >/dev/null || die "$b missing; run: $0 install"
  done
  cmd_down "$D"
  for h in "${HOSTS[@]}"; do
    if ss -Hltn "( src $h:$MYSQL_PORT or src $h:$SSH_PORT )" | grep -q .; then
      die "$h:$MYSQL_PORT or $h:$SSH_PORT already in use by something else"
    fi
  done
  rm -rf "$D"/m0 "$D"/m1 "$D"/m2 "$D"/seed "$D"/ssh "$D"/manager "$D"/remote "$D"/mha-perl \
         "$D"/*.log "$D"/new-primary "$D"/app.cnf "$D"/ip_*.sh "$D"/manager.pid
  mkdir -p "$D/manager" "$D/remote"
  patch_mha "$D"

  log "mariadb-install-db"
  mariadb-install-db --no-defaults --datadir="$D/seed" --user=root \
    --auth-root-authentication-method=socket --skip-test-db >"$D/install-db.log" 2>&1 \
    || { tail -20 "$D/install-db.log" >&2; die "mariadb-install-db failed"; }
  for i in 0 1 2; do
    mkdir -p "$D/m$i/mha"; cp -a "$D/seed" "$D/m$i/data"
  done
  rm -rf "$D/seed"

  start_mariadbd "$D" 0 OFF
  sql "$D" 0 <<EOF
DELETE FROM mysql.global_priv WHERE User='';
FLUSH PRIVILEGES;
CREATE USER '$REPL_USER'@'127.%' IDENTIFIED BY '$REPL_PASS';
GRANT REPLICATION SLAVE, REPLICATION SLAVE ADMIN, REPLICATION CLIENT ON *.* TO '$REPL_USER'@'127.%';
CREATE USER '$ADMIN_USER'@'127.%' IDENTIFIED BY '$ADMIN_PASS';
GRANT ALL PRIVILEGES ON *.* TO '$ADMIN_USER'@'127.%' WITH GRANT OPTION;
CREATE DATABASE bench;
CREATE USER 'app'@'127.%' IDENTIFIED BY 'app';
CREATE USER 'app'@'localhost' IDENTIFIED BY 'app';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON bench.* TO 'app'@'127.%';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON bench.* TO 'app'@'localhost';
EOF
  for i in 1 2; do
    start_mariadbd "$D" "$i" ON
    sql "$D" "$i" <<EOF
CHANGE MASTER TO MASTER_HOST='${HOSTS[0]}', MASTER_PORT=$MYSQL_PORT,
  MASTER_USER='$REPL_USER', MASTER_PASSWORD='$REPL_PASS',
  MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;
START SLAVE;
EOF
  done
  local want; want=$(sql "$D" 0 -e 'SELECT @@gtid_binlog_pos')
  for i in 1 2; do
    local t=0
    until [[ $(sql "$D" "$i" -e 'SELECT @@gtid_slave_pos') == "$want" ]]; do
      sleep 0.2; t=$((t + 1))
      ((t < 150)) || { sql "$D" "$i" -e 'SHOW SLAVE STATUS\G' >&2; die "m$i not replicating"; }
    done
  done
  log "replication up: m1,m2 at gtid $want"

  setup_ssh "$D"
  write_ip_scripts "$D"
  write_app_cnf "$D"
  echo "${HOSTS[0]}" >"$D/new-primary"

  log "masterha_check_ssh"
  PERL5LIB=$D/mha-perl masterha_check_ssh --conf="$D/app.cnf" >"$D/check_ssh.log" 2>&1 \
    || { tail -30 "$D/check_ssh.log" >&2; die "masterha_check_ssh failed (see $D/check_ssh.log)"; }
  log "masterha_check_repl"
  PERL5LIB=$D/mha-perl masterha_check_repl --conf="$D/app.cnf" >"$D/check_repl.log" 2>&1 \
    || { tail -40 "$D/check_repl.log" >&2; die "masterha_check_repl failed (see $D/check_repl.log)"; }
  grep -q 'MySQL Replication Health is OK' "$D/check_repl.log" || die "check_repl did not report OK"
  log "up done in $(echo "$(now) - $t0" | bc) s; primary ${HOSTS[0]}; config $D/app.cnf"
}

# --------------------------------------------------------------- manager ---
manager_running() { pid_alive "$1/manager.pid"; }

start_manager() {
  local D=$1 t0; t0=$(now)
  manager_running "$D" && { log "manager already running (pid $(cat "$D/manager.pid"))"; return 0; }
  [[ -f $D/app.cnf ]] || die "$D/app.cnf missing; run: $0 up $D"
  local start_line; start_line=$( (wc -l <"$D/manager.log") 2>/dev/null || echo 0)
  PERL5LIB=$D/mha-perl setsid masterha_manager --conf="$D/app.cnf" \
    </dev/null >>"$D/manager.out" 2>&1 &
  echo $! >"$D/manager.pid"
  local t=0
  until tail -n +"$((start_line + 1))" "$D/manager.log" 2>/dev/null | grep -q "waiting until MySQL doesn't respond"; do
    manager_running "$D" || { tail -n 30 "$D/manager.log" "$D/manager.out" >&2 || true; die "masterha_manager exited (after a failover the dead master is still in app.cnf and MHA refuses to start: run up again)"; }
    sleep 0.2; t=$((t + 1)); ((t < 300)) || die "manager not monitoring after 60 s"
  done
  log "manager monitoring (pid $(cat "$D/manager.pid"), $(grep -E '^ping_interval=' "$D/app.cnf" || echo 'ping_interval=3 (default)'), start took $(echo "$(now) - $t0" | bc) s)"
}

stop_manager() {
  local D=$1
  manager_running "$D" || return 0
  local t0 p; t0=$(now); p=$(cat "$D/manager.pid")
  PERL5LIB=$D/mha-perl masterha_stop --conf="$D/app.cnf" >/dev/null 2>&1 || true
  stop_pidfile "$D/manager.pid" masterha_manager TERM
  log "manager (pid $p) stopped in $(echo "$(now) - $t0" | bc) s"
}

cmd_manager() {
  local D; D=$(absdir "${1:-}"); shift || true
  local pi=
  while (($#)); do
    case $1 in
      --ping-interval) pi=${2:?}; shift 2 ;;
      --ping-interval=*) pi=${1#*=}; shift ;;
      *) die "unknown manager option $1" ;;
    esac
  done
  [[ -f $D/app.cnf ]] || die "$D/app.cnf missing; run: $0 up $D"
  if manager_running "$D"; then stop_manager "$D"; fi
  sed -i '/^ping_interval=/d' "$D/app.cnf"
  if [[ -n $pi ]]; then sed -i "/^\[server default\]/a ping_interval=$pi" "$D/app.cnf"; fi
  # a previous failover leaves app.failover.complete, which blocks the next
  # failover for 8 h; the testbed is disposable, so clear it.
  rm -f "$D"/manager/app.failover.complete "$D"/manager/app.failover.error
  start_manager "$D"
}

# ---------------------------------------------------------------- switch ---
cmd_switch() {
  local D; D=$(absdir "${1:-}")
  local new=${2:?usage: mha.sh switch DIR NEW_HOST}
  [[ -f $D/app.cnf ]] || die "$D/app.cnf missing"
  local was=0
  if manager_running "$D"; then was=1; stop_manager "$D"; fi
  local t0; t0=$(now)
  log "masterha_master_switch -> $new"
  if ! PERL5LIB=$D/mha-perl masterha_master_switch --conf="$D/app.cnf" --master_state=alive \
      --new_master_host="$new" --new_master_port=$MYSQL_PORT --orig_master_is_new_slave \
      --interactive=0 >>"$D/switch.log" 2>&1; then
    tail -40 "$D/switch.log" >&2
    die "switch failed (see $D/switch.log)"
  fi
  local t1; t1=$(now)
  log "switch done in $(echo "$t1 - $t0" | bc) s; new-primary=$(cat "$D/new-primary")"
  ((was)) && start_manager "$D"
  return 0
}

# ------------------------------------------------------------------ down ---
cmd_down() {
  local D; D=$(absdir "${1:-}")
  stop_manager "$D"
  stop_pidfile "$D/ssh/sshd.pid" sshd TERM
  local i
  for i in 0 1 2; do stop_pidfile "$D/m$i/mysqld.pid" "m$i mariadbd" TERM & done
  wait
  for i in 0 1 2; do ! pid_alive "$D/m$i/mysqld.pid" || die "m$i still running"; done
  log "down: nothing left running for $D"
}

# ----------------------------------------------------- measure-failover ---
cmd_measure_failover() {
  local D; D=$(absdir "${1:-}"); shift || true
  local load=0; [[ ${1:-} == --load ]] && load=1
  manager_running "$D" || die "manager not running"
  local old; old=$(cat "$D/new-primary")
  local i; for i in 0 1 2; do [[ ${HOSTS[$i]} == "$old" ]] && break; done
  local lp=
  if ((load)); then
    mariadb --no-defaults -h "$old" -uapp -papp bench -e 'CREATE TABLE IF NOT EXISTS t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64), ts TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6))'
    ( yes "INSERT INTO t (v) VALUES (REPEAT('x',60));" |
        mariadb --no-defaults -h "$old" -uapp -papp bench >/dev/null 2>&1 ) &
    lp=$!
    sleep 2
  fi
  local pid; pid=$(cat "$D/m$i/mysqld.pid")
  local t0; t0=$(now)
  kill -KILL "$pid"
  log "SIGKILLed m$i ($old, pid $pid) at $t0"
  [[ -n $lp ]] && { sleep 0.5; kill "$lp" 2>/dev/null || true; wait "$lp" 2>/dev/null || true; }
  local np t1='' t2=''
  while :; do
    np=$(cat "$D/new-primary" 2>/dev/null || true)
    if [[ -z $t1 && -n $np && $np != "$old" ]]; then t1=$(now); fi
    if [[ -n $t1 ]] && mariadb --no-defaults -h "$np" -uapp -papp bench --connect-timeout=1 \
        -e 'CREATE TABLE IF NOT EXISTS probe (id INT PRIMARY KEY AUTO_INCREMENT); INSERT INTO probe VALUES ();' 2>/dev/null; then
      t2=$(now); break
    fi
    if (( $(echo "$(now) - $t0 > 180" | bc) )); then die "no failover within 180 s"; fi
    sleep 0.05
  done
  printf 'kill->new-primary-file %.3f s; kill->app-writable %.3f s; new primary %s; killed at %s\n' \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t0" | bc)" "$np" "$t0"
}

# ------------------------------------------------------------------ main ---
main() {
  local c=${1:-}; shift || true
  case $c in
    install) cmd_install "$@" ;;
    up) cmd_up "$@" ;;
    manager) cmd_manager "$@" ;;
    switch) cmd_switch "$@" ;;
    down) cmd_down "$@" ;;
    measure-failover) cmd_measure_failover "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
  esac
}
main "$@"
