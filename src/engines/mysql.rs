//! The `mysql` engine: MariaDB and MySQL over their client protocol (`mysql_async`). One
//! engine, two dialects ([`Flavour`], told apart by `@@version` on every session).
//!
//! - Role: a member with a replication source configured is a replica of it; one without is a
//!   primary while it is writable (`read_only` off) and a fenced replica of nothing otherwise
//!   (start members with `read_only=ON`, so that a restarted one is never a second primary).
//! - Position: the executed GTIDs, as a count: MariaDB's per-domain sequence numbers (the later
//!   of `gtid_binlog_pos` and `gtid_slave_pos` per domain), MySQL's `gtid_executed`. Replicas
//!   that apply one primary's stream in order compare by that count.
//! - Demote (fence): `read_only` (MySQL: `super_read_only`), the client sessions of every other
//!   account killed before and after, so no write lands after it; a replica also stops
//!   replicating.
//! - Promote: the received stream applied first (`MASTER_GTID_WAIT` /
//!   `WAIT_FOR_EXECUTED_GTID_SET` on what the I/O thread had), then the replica reset and made
//!   writable.
//! - Follow: `CHANGE MASTER TO … MASTER_USE_GTID=slave_pos` (MariaDB; a former primary's own
//!   binlog position taken as its replica position, so with `gtid_strict_mode` a member
//!   holding transactions the new primary lacks fails to attach instead of diverging) /
//!   `CHANGE REPLICATION SOURCE TO … SOURCE_AUTO_POSITION=1` (MySQL).
//! - Pause (switchover): `FLUSH TABLES WITH READ LOCK` on a session held until the pause is
//!   undone or expires, so writers wait rather than fail, and the fence runs on that session.
//!
//! The operator's account replicates too (the members connect to each other with it): it
//! needs `REPLICATION SLAVE`, `REPLICATION CLIENT`/`SLAVE MONITOR`, `SUPER` or
//! `READ_ONLY ADMIN`, `CONNECTION ADMIN` and `PROCESS`. Applications must use other accounts,
//! without `SUPER`/`READ_ONLY ADMIN` on MariaDB (whose `read_only` does not stop them).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt as _, future::BoxFuture};
use mysql_async::{Conn, OptsBuilder, Row, SslOpts, Value, prelude::Queryable as _};

use super::{Credentials, Engine, EngineError, EngineResult, ObservedRole, Probe, Setting, split_endpoint};

/// Which server speaks: the statements and variables differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    MariaDb,
    /// MySQL or Percona Server; `modern` from 8.0.22 on (`SHOW REPLICA STATUS`, `SOURCE_*`).
    MySql {
        modern: bool,
    },
}

impl Flavour {
    /// From `SELECT @@version`: "10.11.19-MariaDB-0+deb12u1-log", "8.0.36", "5.7.44-log".
    pub fn from_version(version: &str) -> Self {
        if version.to_ascii_lowercase().contains("mariadb") {
            return Self::MariaDb;
        }
        let mut parts = version.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
        let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        Self::MySql { modern: v >= (8, 0, 22) }
    }

    fn replica_status(self) -> &'static str {
        match self {
            Self::MySql { modern: true } => "SHOW REPLICA STATUS",
            _ => "SHOW SLAVE STATUS",
        }
    }

    fn stop_replica(self) -> &'static str {
        match self {
            Self::MySql { modern: true } => "STOP REPLICA",
            _ => "STOP SLAVE",
        }
    }

    fn stop_io_thread(self) -> &'static str {
        match self {
            Self::MySql { modern: true } => "STOP REPLICA IO_THREAD",
            _ => "STOP SLAVE IO_THREAD",
        }
    }

    /// The session id of the replication I/O thread, where its stop is known to wait (see
    /// [`Session::stop_link`]). MySQL's is not looked up (not run here).
    fn io_thread_id(self) -> Option<&'static str> {
        match self {
            Self::MariaDb => Some("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'"),
            Self::MySql { .. } => None,
        }
    }

    fn start_replica(self) -> &'static str {
        match self {
            Self::MySql { modern: true } => "START REPLICA",
            _ => "START SLAVE",
        }
    }

    fn reset_replica(self) -> &'static str {
        match self {
            Self::MySql { modern: true } => "RESET REPLICA ALL",
            _ => "RESET SLAVE ALL",
        }
    }

    /// Refuse writes from every account but replication (MySQL: even `SUPER`).
    fn read_only(self) -> &'static str {
        match self {
            Self::MariaDb => "SET GLOBAL read_only = ON",
            Self::MySql { .. } => "SET GLOBAL super_read_only = ON",
        }
    }

    /// Writable (on MySQL this clears `super_read_only` too).
    fn writable(self) -> &'static str {
        "SET GLOBAL read_only = OFF"
    }

    /// The executed GTIDs: MariaDB (binlog position, replica position), MySQL (gtid_executed, "").
    fn positions(self) -> &'static str {
        match self {
            Self::MariaDb => "SELECT @@global.read_only, @@global.gtid_binlog_pos, @@global.gtid_slave_pos",
            Self::MySql { .. } => "SELECT @@global.read_only, @@global.gtid_executed, ''",
        }
    }

    /// Semi-synchronous replication's names: (primary's switch, its timeout, its wait point,
    /// its "wait with no replica", the replica's switch, the status counting semi-sync
    /// replicas). MariaDB has it built in; MySQL needs its plugin loaded.
    fn semi_sync(self) -> SemiSyncNames {
        match self {
            Self::MySql { modern: true } => SemiSyncNames {
                primary: "rpl_semi_sync_source_enabled",
                timeout: "rpl_semi_sync_source_timeout",
                wait_point: "rpl_semi_sync_source_wait_point",
                wait_no_replica: "rpl_semi_sync_source_wait_no_replica",
                replica: "rpl_semi_sync_replica_enabled",
                clients: "Rpl_semi_sync_source_clients",
                wait_sessions: "Rpl_semi_sync_source_wait_sessions",
                acknowledged: "Rpl_semi_sync_source_yes_tx",
            },
            _ => SemiSyncNames {
                primary: "rpl_semi_sync_master_enabled",
                timeout: "rpl_semi_sync_master_timeout",
                wait_point: "rpl_semi_sync_master_wait_point",
                wait_no_replica: "rpl_semi_sync_master_wait_no_slave",
                replica: "rpl_semi_sync_slave_enabled",
                clients: "Rpl_semi_sync_master_clients",
                wait_sessions: "Rpl_semi_sync_master_wait_sessions",
                acknowledged: "Rpl_semi_sync_master_yes_tx",
            },
        }
    }

    /// Self-fencing on (`want`) or off, for a member that is (`primary`) or is not the
    /// writable primary: a primary waits for a replica's acknowledgement of every commit for
    /// as long as it takes (it never falls back to asynchronous replication), a replica
    /// acknowledges.
    pub fn self_fencing(self, want: bool, primary: bool) -> String {
        let n = self.semi_sync();
        let on = |b: bool| if b { "ON" } else { "OFF" };
        if want {
            format!(
                "SET GLOBAL {} = {FENCE_TIMEOUT_MS}, GLOBAL {} = 'AFTER_SYNC', GLOBAL {} = ON, GLOBAL {} = ON, GLOBAL {} = {}",
                n.timeout,
                n.wait_point,
                n.wait_no_replica,
                n.replica,
                n.primary,
                on(primary)
            )
        } else {
            format!("SET GLOBAL {} = OFF, GLOBAL {} = {ORDINARY_TIMEOUT_MS}", n.primary, n.timeout)
        }
    }

    /// Everything the member executed: MariaDB's `gtid_binlog_state` (the last GTID of each
    /// domain and server in its binlog), MySQL's `gtid_executed`.
    fn executed_set(self) -> &'static str {
        match self {
            Self::MariaDb => "SELECT @@global.gtid_binlog_state",
            Self::MySql { .. } => "SELECT @@global.gtid_executed",
        }
    }

    /// Point the member at `host:port` by GTID, over TLS when `tls`.
    pub fn change_source(self, host: &str, port: u16, user: &str, password: &str, tls: bool) -> String {
        let (host, user, password, tls) = (quote(host), quote(user), quote(password), u8::from(tls));
        match self {
            Self::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST = {host}, MASTER_PORT = {port}, MASTER_USER = {user}, MASTER_PASSWORD = {password}, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, MASTER_SSL = {tls}"
            ),
            Self::MySql { modern: true } => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {host}, SOURCE_PORT = {port}, SOURCE_USER = {user}, SOURCE_PASSWORD = {password}, SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = 1, GET_SOURCE_PUBLIC_KEY = 1, SOURCE_SSL = {tls}"
            ),
            Self::MySql { modern: false } => format!(
                "CHANGE MASTER TO MASTER_HOST = {host}, MASTER_PORT = {port}, MASTER_USER = {user}, MASTER_PASSWORD = {password}, MASTER_AUTO_POSITION = 1, MASTER_CONNECT_RETRY = 1, MASTER_SSL = {tls}"
            ),
        }
    }

    /// Wait up to `seconds` until everything in `received` (the I/O thread's GTIDs) is
    /// applied; the query answers 0 when it is (MySQL: 0 too; -1 or 1 on timeout).
    pub fn wait_applied(self, received: &str, seconds: u64) -> String {
        match self {
            Self::MariaDb => format!("SELECT MASTER_GTID_WAIT({}, {seconds})", quote(received)),
            Self::MySql { .. } => {
                format!("SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {seconds})", quote(received))
            }
        }
    }

    /// A replica-status row (column name → text) as far as the operator cares; `None` when
    /// no source is configured.
    pub fn parse_replica_status(self, row: &HashMap<String, String>) -> Option<ReplicaStatus> {
        let get = |mariadb: &str, modern: &str| {
            let key = if self == (Self::MySql { modern: true }) { modern } else { mariadb };
            row.get(key).map(|v| v.trim().to_owned()).unwrap_or_default()
        };
        let host = get("Master_Host", "Source_Host");
        if host.is_empty() {
            return None;
        }
        let received = match self {
            Self::MariaDb => get("Gtid_IO_Pos", "Gtid_IO_Pos"),
            Self::MySql { .. } => get("Retrieved_Gtid_Set", "Retrieved_Gtid_Set"),
        };
        Some(ReplicaStatus {
            port: get("Master_Port", "Source_Port").parse().unwrap_or(0),
            host,
            io_running: get("Slave_IO_Running", "Replica_IO_Running"),
            sql_running: get("Slave_SQL_Running", "Replica_SQL_Running"),
            last_io_error: get("Last_IO_Error", "Last_IO_Error"),
            last_sql_error: get("Last_SQL_Error", "Last_SQL_Error"),
            received,
        })
    }

    /// How many transactions a member has executed, from [`Flavour::positions`]' two texts.
    pub fn executed(self, first: &str, second: &str) -> i64 {
        match self {
            Self::MariaDb => {
                let mut per_domain: BTreeMap<u32, u64> = BTreeMap::new();
                for (domain, _, seq) in
                    parse_mariadb_gtids(first).into_iter().chain(parse_mariadb_gtids(second))
                {
                    let e = per_domain.entry(domain).or_default();
                    *e = (*e).max(seq);
                }
                per_domain.values().sum::<u64>() as i64
            }
            Self::MySql { .. } => count_mysql_gtids(first) as i64,
        }
    }
}

/// The names of semi-synchronous replication's variables in one dialect.
#[derive(Clone, Copy, Debug)]
struct SemiSyncNames {
    primary: &'static str,
    timeout: &'static str,
    wait_point: &'static str,
    wait_no_replica: &'static str,
    replica: &'static str,
    clients: &'static str,
    /// Status: sessions waiting for an acknowledgement now.
    wait_sessions: &'static str,
    /// Status: commits acknowledged by a replica so far.
    acknowledged: &'static str,
}

/// A self-fencing primary's semi-synchronous timeout: a year, i.e. never fall back to
/// asynchronous replication (a commit no replica acknowledged is never acknowledged).
pub const FENCE_TIMEOUT_MS: u64 = 365 * 24 * 3600 * 1000;
/// Any timeout from a day up is taken for self-fencing (below, a primary falls back).
const FENCING_TIMEOUT_MIN_MS: u64 = 24 * 3600 * 1000;
/// The servers' default, restored when self-fencing is turned off.
const ORDINARY_TIMEOUT_MS: u64 = 10_000;

/// What a member's semi-synchronous replication says about self-fencing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SemiSync {
    /// Configured for self-fencing: a fencing timeout, waiting with no replica, and the
    /// replica side on.
    pub fencing: bool,
    /// The primary side is on (commits wait for an acknowledgement).
    pub primary_on: bool,
    /// Semi-synchronous replicas connected to it.
    pub clients: Option<i64>,
}

impl Flavour {
    /// From `SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync%'` and `SHOW GLOBAL STATUS LIKE
    /// 'Rpl_semi_sync%'` (name → value; empty when the server has no semi-sync).
    pub fn parse_semi_sync(
        self,
        vars: &HashMap<String, String>,
        status: &HashMap<String, String>,
    ) -> SemiSync {
        let n = self.semi_sync();
        let on = |k: &str| vars.get(k).is_some_and(|v| v.eq_ignore_ascii_case("ON") || v == "1");
        let timeout = vars.get(n.timeout).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        SemiSync {
            fencing: timeout >= FENCING_TIMEOUT_MIN_MS && on(n.wait_no_replica) && on(n.replica),
            primary_on: on(n.primary),
            clients: status.get(n.clients).and_then(|v| v.parse().ok()),
        }
    }
}

/// The replication source of a member, as its status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub host: String,
    pub port: u16,
    /// "Yes", "No" or "Connecting".
    pub io_running: String,
    pub sql_running: String,
    pub last_io_error: String,
    pub last_sql_error: String,
    /// What the I/O thread has received (MariaDB `Gtid_IO_Pos`, MySQL `Retrieved_Gtid_Set`).
    pub received: String,
}

impl ReplicaStatus {
    pub fn running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }

    /// Why replication stopped, if a thread stopped with an error. An I/O thread still
    /// trying ("Connecting": its source is down) has not stopped.
    pub fn error(&self) -> Option<String> {
        let errors: Vec<String> = [
            ("I/O thread", &self.last_io_error, &self.io_running),
            ("SQL thread", &self.last_sql_error, &self.sql_running),
        ]
        .into_iter()
        .filter(|(_, e, running)| !e.is_empty() && running.as_str() == "No")
        .map(|(t, e, _)| (t, e))
        .map(|(t, e)| format!("{t}: {e}"))
        .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }
}

/// The GTIDs a MariaDB member has that a primary never had, from their `gtid_binlog_state`s
/// (the last GTID of each domain and server): under `gtid_strict_mode` sequence numbers rise
/// within a domain and replication applies in order, so the primary has a member's
/// (domain, server, seq) exactly when its own entry for (domain, server) is at seq or beyond.
pub fn mariadb_errant(member: &str, primary: &str) -> Vec<String> {
    let primary = parse_mariadb_gtids(primary);
    parse_mariadb_gtids(member)
        .into_iter()
        .filter(|(d, srv, seq)| !primary.iter().any(|(pd, ps, pseq)| pd == d && ps == srv && pseq >= seq))
        .map(|(d, srv, seq)| format!("{d}-{srv}-{seq}"))
        .collect()
}

/// MariaDB GTID positions: "0-1-5,1-2-7" → (domain, server_id, seq_no) each.
pub fn parse_mariadb_gtids(text: &str) -> Vec<(u32, u32, u64)> {
    text.split(',')
        .filter_map(|g| {
            let mut it = g.trim().splitn(3, '-');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// The number of transactions in a MySQL GTID set: "uuid:1-5:7,\nuuid2:1-3" → 9.
pub fn count_mysql_gtids(text: &str) -> u64 {
    text.split(',')
        .flat_map(|source| source.trim().split(':').skip(1))
        .filter_map(|interval| {
            let interval = interval.trim();
            // MySQL 8.3+ tagged GTIDs: "uuid:tag:1-5"; a tag is not a number.
            let (lo, hi) = interval.split_once('-').unwrap_or((interval, interval));
            let (lo, hi) = (lo.parse::<u64>().ok()?, hi.parse::<u64>().ok()?);
            (hi >= lo).then(|| hi - lo + 1)
        })
        .sum()
}

/// A string literal (single quotes; backslashes and quotes escaped — both dialects accept it
/// under the default `sql_mode`).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `SET GLOBAL name = value`, or why not: names are plain identifiers; numbers go bare,
/// anything else as a string.
pub fn set_global(name: &str, value: &str) -> Result<String, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{name:?} is not a server variable name"));
    }
    let numeric = !value.is_empty() && value.parse::<f64>().is_ok();
    let value = if numeric { value.to_owned() } else { quote(value) };
    Ok(format!("SET GLOBAL {name} = {value}"))
}

/// How long a fence watches waiting commits for an acknowledgement before it takes them for
/// stuck.
const STUCK_WATCH: Duration = Duration::from_millis(50);
/// How often a fence kills client sessions while `read_only` waits.
const KILL_INTERVAL: Duration = Duration::from_millis(20);

/// Sessions that are not clients: replication and the server's own threads.
const NOT_CLIENTS: &str =
    "'Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker', 'Killed'";

/// The probe of a member from what it said.
///
/// Self-fencing: a replica counts as fencing when semi-sync is configured for it (it will
/// acknowledge, and fence once promoted); a primary only when its commits do wait.
pub fn probe_from(read_only: bool, executed: i64, source: Option<&ReplicaStatus>, semi: &SemiSync) -> Probe {
    match source {
        Some(s) => Probe {
            role: ObservedRole::Replica,
            offset: Some(executed),
            following: Some(format!("{}:{}", s.host, s.port)),
            link_up: s.running(),
            self_fencing: semi.fencing,
            good_replicas: None,
            link_error: s.error(),
            errant: Vec::new(),
            drains: false,
        },
        // Writable and following nobody: a primary. Read-only and following nobody: fenced.
        None if !read_only => Probe {
            role: ObservedRole::Primary,
            offset: Some(executed),
            following: None,
            link_up: true,
            self_fencing: semi.fencing && semi.primary_on,
            good_replicas: semi.clients.filter(|_| semi.fencing && semi.primary_on),
            link_error: None,
            errant: Vec::new(),
            drains: false,
        },
        None => Probe {
            role: ObservedRole::Replica,
            offset: Some(executed),
            following: None,
            link_up: false,
            self_fencing: semi.fencing,
            good_replicas: None,
            link_error: None,
            errant: Vec::new(),
            drains: false,
        },
    }
}

#[derive(Clone)]
pub struct MysqlEngine {
    creds: Credentials,
    timeout: Duration,
    /// TLS to the members, trusting only the Secret's `ca.crt` (see [`MysqlEngine::with_ca`]).
    tls: Option<SslOpts>,
    /// Sessions holding `FLUSH TABLES WITH READ LOCK` for a switchover (see
    /// [`Engine::pause_writes`]); closing one releases its lock.
    paused: Arc<Mutex<HashMap<String, Held>>>,
}

type Held = Arc<tokio::sync::Mutex<Option<(Conn, Flavour, Ours)>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn classify(endpoint: &str, e: mysql_async::Error) -> EngineError {
    let endpoint = endpoint.to_owned();
    let message = e.to_string();
    match &e {
        // The member answered, but not as the Secret says it must: a configuration error,
        // not a member down (nothing is failed over for it).
        _ if tls_failure(&e) => EngineError::Unauthorized { endpoint, message: format!("TLS: {message}") },
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
            EngineError::Unauthorized {
                endpoint,
                message: "the Secret has a ca.crt, so the operator connects over TLS, and this server does not offer TLS".into(),
            }
        }
        // Access denied (1045, 1698 for a socket-authenticated account).
        mysql_async::Error::Server(s) if matches!(s.code, 1045 | 1698) => {
            EngineError::Unauthorized { endpoint, message }
        }
        mysql_async::Error::Server(_) => EngineError::Protocol { endpoint, message },
        mysql_async::Error::Io(_) if super::connection_refused(&e) => {
            EngineError::Refused { endpoint, message }
        }
        mysql_async::Error::Io(_) => EngineError::Unreachable { endpoint, message },
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => {
            EngineError::Unreachable { endpoint, message }
        }
        _ => EngineError::Protocol { endpoint, message },
    }
}

/// The TLS handshake failed (a certificate the CA did not sign, …): the driver's own TLS
/// error, or rustls's inside an I/O error (how the handshake reports it).
fn tls_failure(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(mysql_async::IoError::Tls(_)) => true,
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        }
        _ => false,
    }
}

/// A column value as text (NULL: empty).
fn text(v: &Value) -> String {
    match v {
        Value::NULL => String::new(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        other => other.as_sql(true).trim_matches('\'').to_owned(),
    }
}

fn row_map(row: &Row) -> HashMap<String, String> {
    row.columns_ref()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name_str().into_owned(), row.as_ref(i).map(text).unwrap_or_default()))
        .collect()
}

/// One session: a connection and the dialect it speaks.
struct Session<'a> {
    conn: Conn,
    flavour: Flavour,
    endpoint: &'a str,
    ours: Ours,
}

/// This process's open sessions, by member and connection id: a fence kills every other
/// client session, never one of these (another task's probe, the killer beside a fence, the
/// session holding a switchover's read lock). Process-wide, since every controller builds
/// its own engine.
static OURS: std::sync::LazyLock<Mutex<HashSet<(String, u32)>>> = std::sync::LazyLock::new(Mutex::default);

/// One session's place in [`OURS`], given up when the session goes.
struct Ours((String, u32));

impl Ours {
    fn new(endpoint: &str, conn: &Conn) -> Self {
        let key = (endpoint.to_owned(), conn.id());
        lock(&OURS).insert(key.clone());
        Self(key)
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        lock(&OURS).remove(&self.0);
    }
}

/// The connection ids of this process's sessions on `endpoint`.
fn ours_at(endpoint: &str) -> Vec<u32> {
    lock(&OURS).iter().filter(|(e, _)| e == endpoint).map(|(_, id)| *id).collect()
}

impl Session<'_> {
    async fn run(&mut self, sql: &str) -> EngineResult<()> {
        self.conn.query_drop(sql).await.map_err(|e| classify(self.endpoint, e))
    }

    async fn rows(&mut self, sql: &str) -> EngineResult<Vec<HashMap<String, String>>> {
        let rows: Vec<Row> = self.conn.query(sql).await.map_err(|e| classify(self.endpoint, e))?;
        Ok(rows.iter().map(row_map).collect())
    }

    async fn source(&mut self) -> EngineResult<Option<ReplicaStatus>> {
        let rows = self.rows(self.flavour.replica_status()).await?;
        Ok(rows.first().and_then(|r| self.flavour.parse_replica_status(r)))
    }

    /// (read_only, executed transactions).
    async fn position(&mut self) -> EngineResult<(bool, i64)> {
        let row: Option<Row> =
            self.conn.query_first(self.flavour.positions()).await.map_err(|e| classify(self.endpoint, e))?;
        let row = row.ok_or_else(|| self.protocol("no answer to the position query"))?;
        let get = |i: usize| row.as_ref(i).map(text).unwrap_or_default();
        let read_only = matches!(get(0).as_str(), "1" | "ON");
        Ok((read_only, self.flavour.executed(&get(1), &get(2))))
    }

    async fn pairs(&mut self, sql: &str) -> EngineResult<HashMap<String, String>> {
        let rows: Vec<(String, String)> =
            self.conn.query(sql).await.map_err(|e| classify(self.endpoint, e))?;
        Ok(rows.into_iter().collect())
    }

    /// Semi-synchronous replication as configured (and whether the server has it at all:
    /// MySQL without the plugin has none of its variables).
    async fn semi_sync(&mut self) -> EngineResult<(SemiSync, bool)> {
        let vars = self.pairs("SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync%'").await?;
        let status = self.pairs("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync%'").await?;
        Ok((self.flavour.parse_semi_sync(&vars, &status), !vars.is_empty()))
    }

    /// Commits waiting for acknowledgements that do not come: some wait, and over
    /// [`STUCK_WATCH`] no acknowledgement arrived. `None` when none wait or acknowledgements
    /// flow (waits then end by themselves, acknowledged by a replica that has the commit).
    async fn stuck_commits(&mut self) -> EngineResult<Option<i64>> {
        let names = self.flavour.semi_sync();
        let (waiting, acks) = (names.wait_sessions, names.acknowledged);
        let sample = async |s: &mut Self| -> EngineResult<(i64, i64)> {
            let st = s.pairs("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync%'").await?;
            let n = |k: &str| st.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            Ok((n(waiting), n(acks)))
        };
        let (w0, a0) = sample(self).await?;
        if w0 == 0 {
            return Ok(None);
        }
        tokio::time::sleep(STUCK_WATCH).await;
        let (w1, a1) = sample(self).await?;
        Ok((w1 > 0 && a1 == a0).then_some(w1))
    }

    /// Turn the primary side of semi-sync off, after the clients that might be waiting in it
    /// are gone: turning it off acknowledges their waiting commits, which no replica may
    /// have. Read-only must be on already.
    async fn stop_waiting_for_replicas(&mut self) -> EngineResult<()> {
        let (semi, present) = self.semi_sync().await?;
        if present && semi.primary_on {
            if let Some(waiting) = self.stuck_commits().await? {
                return Err(self.protocol(&format!(
                    "{waiting} commit(s) wait for a replica's acknowledgement that does not come; turning semi-synchronous replication off would acknowledge them"
                )));
            }
            self.kill_clients().await?;
            let sql = format!("SET GLOBAL {} = OFF", self.flavour.semi_sync().primary);
            self.run(&sql).await?;
        }
        Ok(())
    }

    /// Kill every client session (not replication, not the server's own threads) but this
    /// process's own sessions ([`OURS`]) — the operator's account's included, which an
    /// application must not use (`read_only` does not stop it) but which is then at least cut
    /// off like any other.
    async fn kill_clients(&mut self) -> EngineResult<usize> {
        let mut ids: Vec<String> = ours_at(self.endpoint).iter().map(u32::to_string).collect();
        ids.push("0".into());
        self.kill_listed(&format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND ID NOT IN ({}) AND USER NOT IN ('system user', 'event_scheduler') AND COMMAND NOT IN ({NOT_CLIENTS})",
            ids.join(", ")
        ))
        .await
    }

    /// Kill the sessions whose `ID`s `sql` lists; how many were still there to kill.
    async fn kill_listed(&mut self, sql: &str) -> EngineResult<usize> {
        let ids: Vec<u64> = self.rows(sql).await?.iter().filter_map(|r| r.get("ID")?.parse().ok()).collect();
        let mut killed = 0;
        for id in ids {
            match self.conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => killed += 1,
                // Gone meanwhile (1094: unknown thread id).
                Err(mysql_async::Error::Server(s)) if s.code == 1094 => {}
                Err(e) => return Err(classify(self.endpoint, e)),
            }
        }
        Ok(killed)
    }

    /// Stop replicating: the I/O thread only (`whole` false) or both threads. A semi-synchronous
    /// replica's stop first connects to its source to end the source's side of the link, and
    /// waits for that connection up to 2 s; a frozen source never answers, so each stop cost 2 s
    /// (measured: 2,017 ms, twice per failover of a frozen primary). Killing the I/O thread
    /// first skips that step (measured: 17–58 ms for the kill and the stop). What the thread
    /// received is in the relay log either way.
    async fn stop_link(&mut self, whole: bool) -> EngineResult<()> {
        if let Some(sql) = self.flavour.io_thread_id() {
            self.kill_listed(sql).await?;
        }
        self.run(if whole { self.flavour.stop_replica() } else { self.flavour.stop_io_thread() }).await
    }

    fn protocol(&self, message: &str) -> EngineError {
        EngineError::Protocol { endpoint: self.endpoint.to_owned(), message: message.to_owned() }
    }
}

impl MysqlEngine {
    pub fn new(creds: Credentials, timeout: Duration) -> Self {
        Self::with_ca(creds, None, timeout)
    }

    /// With `ca` (PEM), every connection to a member is TLS and trusts only that CA; the
    /// server's name is not checked against its certificate (members are reached at pod
    /// addresses that change: MySQL's `VERIFY_CA`, not `VERIFY_IDENTITY`). Replicas are
    /// pointed at their source with `MASTER_SSL=1` / `SOURCE_SSL=1` (encrypted; a member
    /// verifies its source's certificate only if its own server configuration says so).
    pub fn with_ca(creds: Credentials, ca: Option<&[u8]>, timeout: Duration) -> Self {
        let tls = ca.map(|pem| {
            SslOpts::default()
                .with_root_certs(vec![pem.to_vec().into()])
                .with_disable_built_in_roots(true)
                .with_danger_skip_domain_validation(true)
        });
        Self { creds, timeout, tls, paused: Arc::default() }
    }

    /// The operator's account (also the one replicas connect with); `root` when the Secret
    /// names none.
    fn user(&self) -> &str {
        self.creds.username.as_deref().unwrap_or("root")
    }

    async fn connect<'a>(&self, endpoint: &'a str) -> EngineResult<Session<'a>> {
        let (host, port) = split_endpoint(endpoint).ok_or_else(|| EngineError::Protocol {
            endpoint: endpoint.into(),
            message: "not host:port".into(),
        })?;
        let opts = OptsBuilder::default()
            .ip_or_hostname(host)
            .tcp_port(port)
            .user(Some(self.user()))
            .pass(self.creds.secret.clone())
            .prefer_socket(false)
            .stmt_cache_size(0)
            .tcp_nodelay(true)
            .ssl_opts(self.tls.clone());
        let mut conn = Conn::new(opts).await.map_err(|e| classify(endpoint, e))?;
        let ours = Ours::new(endpoint, &conn);
        let version: Option<String> =
            conn.query_first("SELECT @@version").await.map_err(|e| classify(endpoint, e))?;
        let flavour = Flavour::from_version(&version.unwrap_or_default());
        Ok(Session { conn, flavour, endpoint, ours })
    }

    /// `work` on a new session, the whole of it bounded by the engine's timeout.
    async fn with_session<T>(
        &self,
        endpoint: &str,
        work: impl AsyncFnOnce(&mut Session<'_>) -> EngineResult<T>,
    ) -> EngineResult<T> {
        let run = async {
            let mut s = self.connect(endpoint).await?;
            let out = work(&mut s).await;
            let _ = s.conn.disconnect().await;
            out
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| EngineError::Timeout { endpoint: endpoint.into(), timeout: self.timeout })?
    }

    /// Make the server refuse writes: client sessions killed, then `read_only` — which waits
    /// for the commits in progress, and a self-fencing primary's commits wait for a replica's
    /// acknowledgement for ever; killing a waiting session passes the wait to the next commit
    /// of its group, and clients keep connecting. So a second session keeps killing client
    /// sessions until `read_only` is in place (from the moment it is requested, new writes
    /// queue behind it). A session killed in the middle of its commit may still be answered
    /// OK; that is safe only while acknowledgements flow (a replica has the commit).
    ///
    /// So not when commits wait for acknowledgements that do not come (its replicas gone or
    /// frozen): a commit whose wait is cut short — killed, or semi-sync turned off — may be
    /// acknowledged to its client (measured: 5 of 18 killed waits answered OK), and no replica
    /// has it. Such a member acknowledges nothing as it is; it is left alone with an error
    /// saying so (stopping its process, SIGKILL or a pod deletion, is what clears it).
    async fn fence_writes(&self, s: &mut Session<'_>) -> EngineResult<()> {
        if let Some(waiting) = s.stuck_commits().await? {
            return Err(s.protocol(&format!(
                "fences itself: {waiting} commit(s) wait for a replica's acknowledgement that does not come (semi-synchronous replication, no fallback), so it acknowledges nothing; not cut off, which could acknowledge them — stop its process (SIGKILL, or delete its pod) to bring it back as a replica"
            )));
        }
        s.kill_clients().await?;
        let endpoint = s.endpoint;
        let killer = async {
            loop {
                tokio::time::sleep(KILL_INTERVAL).await;
                if let Ok(mut k) = self.connect(endpoint).await {
                    while k.kill_clients().await.is_ok() {
                        tokio::time::sleep(KILL_INTERVAL).await;
                    }
                }
            }
        };
        let read_only = s.flavour.read_only();
        tokio::select! {
            r = s.run(read_only) => r?,
            never = killer => never,
        }
        s.kill_clients().await?;
        Ok(())
    }

    /// Fence (see [`Self::fence_writes`]) and stop replicating.
    async fn fence(&self, s: &mut Session<'_>) -> EngineResult<()> {
        self.fence_writes(s).await?;
        if s.source().await?.is_some() {
            s.stop_link(true).await?;
        }
        Ok(())
    }

    /// What the member of session `s` executed that `primary` never had.
    async fn errant(&self, s: &mut Session<'_>, primary: &str) -> EngineResult<Vec<String>> {
        let mine: Option<String> =
            s.conn.query_first(s.flavour.executed_set()).await.map_err(|e| classify(s.endpoint, e))?;
        let mine = mine.unwrap_or_default();
        if mine.trim().is_empty() {
            return Ok(Vec::new());
        }
        let mut p = self.connect(primary).await?;
        let out = match p.flavour {
            Flavour::MariaDb => {
                let theirs: Option<String> =
                    p.conn.query_first(p.flavour.executed_set()).await.map_err(|e| classify(primary, e))?;
                mariadb_errant(&mine, &theirs.unwrap_or_default())
            }
            Flavour::MySql { .. } => {
                let sql = format!("SELECT GTID_SUBTRACT({}, @@global.gtid_executed)", quote(&mine));
                let rest: Option<String> = p.conn.query_first(sql).await.map_err(|e| classify(primary, e))?;
                rest.filter(|r| !r.trim().is_empty()).map(|r| r.replace('\n', "")).into_iter().collect()
            }
        };
        let _ = p.conn.disconnect().await;
        Ok(out)
    }

    fn held(&self, endpoint: &str) -> Option<Held> {
        lock(&self.paused).get(endpoint).cloned()
    }
}

impl Engine for MysqlEngine {
    fn probe<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<Probe>> {
        async move {
            self.with_session(endpoint, async |s| {
                let (read_only, executed) = s.position().await?;
                let source = s.source().await?;
                let (semi, _) = s.semi_sync().await?;
                let mut probe = probe_from(read_only, executed, source.as_ref(), &semi);
                // Replication stopped with an error: say whether the member holds transactions
                // its source never had (the usual cause under gtid_strict_mode, and one no
                // restart of replication repairs).
                if let Some(src) = source.as_ref().filter(|src| !src.running() && src.error().is_some()) {
                    let upstream = format!("{}:{}", src.host, src.port);
                    if let Ok(errant) = self.errant(s, &upstream).await
                        && !errant.is_empty()
                    {
                        probe.link_error = Some(format!(
                            "has transactions the primary {upstream} never had ({}): rebuild it from the primary; {}",
                            errant.join(", "),
                            probe.link_error.unwrap_or_default()
                        ));
                        probe.errant = errant;
                    }
                }
                Ok(probe)
            })
            .await
        }
        .boxed()
    }

    fn promote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        let wait = self.timeout.as_secs().max(1);
        async move {
            self.with_session(endpoint, async |s| {
                {
                    if s.source().await?.is_some() {
                        // Apply everything received before letting go of the source: a
                        // replica's relay log is part of what it has.
                        s.stop_link(false).await?;
                        let received = s.source().await?.map(|r| r.received).unwrap_or_default();
                        if !received.is_empty() {
                            let sql = s.flavour.wait_applied(&received, wait);
                            let waited: Vec<HashMap<String, String>> = s.rows(&sql).await?;
                            let answer = waited.first().and_then(|r| r.values().next().cloned()).unwrap_or_default();
                            if answer != "0" {
                                let status = s.source().await?.unwrap_or_default();
                                return Err(s.protocol(&format!(
                                    "the received transactions ({received}) were not applied in {wait}s (SQL thread {}: {})",
                                    status.sql_running, status.last_sql_error
                                )));
                            }
                        }
                        s.run(s.flavour.stop_replica()).await?;
                        s.run(s.flavour.reset_replica()).await?;
                    }
                    // Self-fencing: commits wait for a replica from the first write on.
                    let (semi, _) = s.semi_sync().await?;
                    if semi.fencing && !semi.primary_on {
                        let sql = format!("SET GLOBAL {} = ON", s.flavour.semi_sync().primary);
                        s.run(&sql).await?;
                    }
                    s.run(s.flavour.writable()).await
                }
            })
            .await
        }
        .boxed()
    }

    fn follow<'a>(&'a self, endpoint: &'a str, primary: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            let (host, port) = split_endpoint(primary).ok_or_else(|| EngineError::Protocol {
                endpoint: endpoint.into(),
                message: format!("primary {primary:?} is not host:port"),
            })?;
            let (user, password) = (self.user().to_owned(), self.creds.secret.clone().unwrap_or_default());
            // Paused (a switchover's old primary): replication cannot be changed while the
            // read lock is held, and every other session waits behind it. Read-only is made
            // sure of on the holding session, then the pause is released: writes meet
            // read_only from then on.
            if let Some(held) = self.held(endpoint) {
                let fenced = {
                    let mut guard = held.lock().await;
                    match guard.as_mut() {
                        Some((conn, flavour, _)) => {
                            tokio::time::timeout(self.timeout, conn.query_drop(flavour.read_only())).await
                        }
                        None => Ok(Ok(())),
                    }
                };
                match fenced {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(classify(endpoint, e)),
                    Err(_) => {
                        return Err(EngineError::Timeout {
                            endpoint: endpoint.into(),
                            timeout: self.timeout,
                        });
                    }
                }
                if let Some(h) = take_pause(&self.paused, endpoint, &held) {
                    release(h).await;
                }
            }
            self.with_session(endpoint, async |s| {
                {
                    let (read_only, _) = s.position().await?;
                    let source = s.source().await?;
                    if read_only
                        && let Some(src) = &source
                        && src.host == host
                        && src.port == port
                        && src.running()
                    {
                        return Ok(());
                    }
                    // Never writable while it changes source (a writable one is fenced first); a
                    // replica does not wait for replicas of its own (its applier would stall).
                    if !read_only {
                        self.fence_writes(s).await?;
                    }
                    s.stop_waiting_for_replicas().await?;
                    // Stopped before its position is compared: a link still running from the
                    // old source could bring in, after the comparison, a transaction the new
                    // primary never had (seen in the node tier: a replica one GTID ahead of
                    // the new primary, its I/O thread then refused with error 1236).
                    if source.is_some() {
                        s.stop_link(true).await?;
                    }
                    // Transactions the primary never had (errant): attached, they would break
                    // replication (MariaDB's strict mode) or stay as silent divergence (MySQL).
                    let errant = self.errant(s, primary).await?;
                    if !errant.is_empty() {
                        return Err(EngineError::Errant {
                            endpoint: s.endpoint.to_owned(),
                            primary: primary.to_owned(),
                            gtids: errant,
                        });
                    }
                    if s.flavour == Flavour::MariaDb {
                        // A former primary's own transactions are in its binlog, not its
                        // replica position: start from the binlog's.
                        s.run("SET GLOBAL gtid_slave_pos = @@global.gtid_binlog_pos").await?;
                    }
                    s.run(&s.flavour.change_source(host, port, &user, &password, self.tls.is_some())).await?;
                    s.run(s.flavour.start_replica()).await
                }
            })
            .await
        }
        .boxed()
    }

    fn demote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            // Paused for a switchover: fence on the session holding the lock (another session
            // would wait behind it).
            if let Some(held) = self.held(endpoint) {
                let mut guard = held.lock().await;
                if let Some((conn, flavour, ours)) = guard.take() {
                    let mut s = Session { conn, flavour, endpoint, ours };
                    let fenced = tokio::time::timeout(self.timeout, self.fence(&mut s)).await;
                    return match fenced {
                        Ok(r) => {
                            *guard = Some((s.conn, s.flavour, s.ours));
                            r
                        }
                        // Cut off mid-statement: the session is dropped (and the lock with it).
                        Err(_) => {
                            Err(EngineError::Timeout { endpoint: endpoint.into(), timeout: self.timeout })
                        }
                    };
                }
            }
            self.with_session(endpoint, async |s| self.fence(s).await).await
        }
        .boxed()
    }

    fn pause_writes<'a>(&'a self, endpoint: &'a str, max: Duration) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            let lock_wait = max.as_secs().max(1);
            let pause = async {
                let mut s = self.connect(endpoint).await?;
                // FLUSH TABLES WITH READ LOCK waits for running statements; it must not queue
                // every client behind a long one for longer than the pause may last.
                s.run(&format!("SET SESSION lock_wait_timeout = {lock_wait}")).await?;
                s.run("FLUSH TABLES WITH READ LOCK").await?;
                Ok::<_, EngineError>((s.conn, s.flavour, s.ours))
            };
            let conn = tokio::time::timeout(self.timeout, pause)
                .await
                .map_err(|_| EngineError::Timeout { endpoint: endpoint.into(), timeout: self.timeout })??;
            let held: Held = Arc::new(tokio::sync::Mutex::new(Some(conn)));
            if let Some(old) = lock(&self.paused).insert(endpoint.to_owned(), held.clone()) {
                tokio::spawn(async move { release(old).await });
            }
            // The pause expires by itself, like Redis's: the lock goes with its session.
            let paused = self.paused.clone();
            let endpoint = endpoint.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(max).await;
                if let Some(h) = take_pause(&paused, &endpoint, &held) {
                    release(h).await;
                }
            });
            Ok(())
        }
        .boxed()
    }

    fn resume_writes<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            let held = lock(&self.paused).remove(endpoint);
            if let Some(h) = held {
                tokio::time::timeout(self.timeout, release(h))
                    .await
                    .map_err(|_| EngineError::Timeout { endpoint: endpoint.into(), timeout: self.timeout })?;
            }
            Ok(())
        }
        .boxed()
    }

    fn follows_directly(&self) -> bool {
        true
    }

    fn demote_when_thawed<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<super::Thawed>> {
        async move {
            Err(EngineError::Protocol {
                endpoint: endpoint.into(),
                message: "not possible with this engine: the server runs each session on its own thread, so a queued statement has no order against the clients' after a thaw".into(),
            })
        }
        .boxed()
    }

    fn self_fences(&self) -> bool {
        true
    }

    fn self_fencing_how(&self) -> &'static str {
        "once no replica acknowledges its commits (semi-synchronous replication that never falls back)"
    }

    /// Semi-synchronous replication that never falls back: the primary acknowledges a
    /// commit only once a replica has it, so a primary cut off from its replicas (or thawed
    /// after its replicas moved on) acknowledges nothing — and a failover loses no
    /// acknowledged commit if it promotes the most advanced replica. `min_replicas` beyond 1
    /// counts as 1 (an acknowledgement from any one replica), `max_lag_seconds` does not
    /// apply (a commit waits for its own acknowledgement).
    fn set_self_fencing<'a>(
        &'a self,
        endpoint: &'a str,
        min_replicas: u32,
        _max_lag_seconds: u32,
    ) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            self.with_session(endpoint, async |s| {
                let (read_only, _) = s.position().await?;
                let source = s.source().await?;
                let (before, present) = s.semi_sync().await?;
                if !present {
                    return Err(s.protocol(
                        "no semi-synchronous replication (MySQL: load the rpl_semi_sync_source and rpl_semi_sync_replica plugins), so no self-fencing",
                    ));
                }
                let primary = !read_only && source.is_none();
                if !primary {
                    s.stop_waiting_for_replicas().await?;
                }
                s.run(&s.flavour.self_fencing(min_replicas > 0, primary)).await?;
                // A replica registers as semi-synchronous when its I/O thread starts.
                if min_replicas > 0 && !before.fencing && source.as_ref().is_some_and(ReplicaStatus::running) {
                    s.run(s.flavour.stop_io_thread()).await?;
                    s.run(s.flavour.start_replica()).await?;
                }
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn set_parameter<'a>(
        &'a self,
        endpoint: &'a str,
        name: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, EngineResult<Setting>> {
        async move {
            // Spelled as a command-line option (`max-connections`), set as a variable.
            let sql = match set_global(&name.replace('-', "_"), value) {
                Ok(sql) => sql,
                Err(why) => return Ok(Setting::Refused(why)),
            };
            self.with_session(endpoint, async |s| {
                {
                    match s.conn.query_drop(&sql).await {
                        Ok(()) => Ok(Setting::Applied),
                        // 1238: a variable read only at start.
                        Err(mysql_async::Error::Server(e)) if e.code == 1238 => Ok(Setting::RestartRequired),
                        Err(mysql_async::Error::Server(e)) => Ok(Setting::Refused(e.message)),
                        Err(e) => Err(classify(s.endpoint, e)),
                    }
                }
            })
            .await
        }
        .boxed()
    }
}

/// Take `held` out of the pauses if it is still `endpoint`'s (not replaced by a later pause).
fn take_pause(paused: &Mutex<HashMap<String, Held>>, endpoint: &str, held: &Held) -> Option<Held> {
    let mut map = lock(paused);
    match map.get(endpoint) {
        Some(h) if Arc::ptr_eq(h, held) => map.remove(endpoint),
        _ => None,
    }
}

/// Undo a pause: unlock and close the session (closing alone would release the lock too).
async fn release(held: Held) {
    if let Some((mut conn, _, _ours)) = held.lock().await.take() {
        let _ = conn.query_drop("UNLOCK TABLES").await;
        let _ = conn.disconnect().await;
    }
}

/// How every MySQL-family member starts (the operator's pods and the test harness's servers):
/// a binary log with GTIDs in strict mode, durable commits, and read-only following nobody, so
/// that a restarted member is never a second primary. Started as a semi-synchronous replica
/// in the replica role, a former primary rolls back at recovery the commits no replica
/// acknowledged instead of keeping transactions the new primary never had.
pub const MEMBER_OPTIONS: &[&str] = &[
    "--log-bin=binlog",
    "--log-basename=member",
    "--log-slave-updates=ON",
    "--binlog-format=ROW",
    "--gtid-strict-mode=ON",
    "--read-only=ON",
    "--rpl-semi-sync-slave-enabled=ON",
    "--init-rpl-role=SLAVE",
    "--skip-name-resolve",
    "--innodb-flush-log-at-trx-commit=1",
    "--sync-binlog=1",
];

/// A MariaDB member's arguments (see [`super::member_args`]): parameters as `--name=value`
/// first, then [`MEMBER_OPTIONS`], port and `server_id` — mariadbd takes the last of an option
/// given twice, so no parameter overrides what the operator relies on (the API server also
/// refuses the obvious ones; the entrypoint adds its data directory, socket and account
/// after these).
pub fn member_args(m: &super::MemberStart<'_>) -> Vec<String> {
    let mut args: Vec<String> = m.parameters.iter().map(|(k, v)| format!("--{k}={v}")).collect();
    args.extend(MEMBER_OPTIONS.iter().map(|s| (*s).to_owned()));
    args.push(format!("--port={}", m.port));
    args.push("--bind-address=*".into());
    args.push(format!("--server-id={}", m.server_id));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_flavour_comes_from_the_version() {
        assert_eq!(Flavour::from_version("10.11.19-MariaDB-0+deb12u1-log"), Flavour::MariaDb);
        assert_eq!(Flavour::from_version("5.5.5-10.6.12-MariaDB"), Flavour::MariaDb);
        assert_eq!(Flavour::from_version("8.0.36"), Flavour::MySql { modern: true });
        assert_eq!(Flavour::from_version("8.0.21-12"), Flavour::MySql { modern: false });
        assert_eq!(Flavour::from_version("5.7.44-log"), Flavour::MySql { modern: false });
        assert_eq!(Flavour::from_version("8.4.3"), Flavour::MySql { modern: true });
    }

    #[test]
    fn each_dialect_has_its_statements() {
        let maria = Flavour::MariaDb;
        let mysql = Flavour::MySql { modern: true };
        let old = Flavour::MySql { modern: false };
        assert_eq!(maria.replica_status(), "SHOW SLAVE STATUS");
        assert_eq!(mysql.replica_status(), "SHOW REPLICA STATUS");
        assert_eq!(old.stop_replica(), "STOP SLAVE");
        assert!(maria.io_thread_id().is_some_and(|q| q.contains("'Slave_IO'")));
        assert_eq!(mysql.io_thread_id(), None, "not run here: MySQL's stop is left as it is");
        assert_eq!(mysql.reset_replica(), "RESET REPLICA ALL");
        assert_eq!(maria.read_only(), "SET GLOBAL read_only = ON");
        assert_eq!(mysql.read_only(), "SET GLOBAL super_read_only = ON");
        let m = maria.change_source("10.0.0.5", 3306, "repl", "p'w\\d", false);
        assert!(m.contains("MASTER_USE_GTID = slave_pos"), "{m}");
        assert!(m.contains(r"MASTER_PASSWORD = 'p\'w\\d'"), "{m}");
        assert!(m.contains("MASTER_CONNECT_RETRY = 1"), "{m}");
        assert!(m.ends_with("MASTER_SSL = 0"), "{m}");
        let s = mysql.change_source("db-1", 3307, "repl", "pw", true);
        assert!(
            s.starts_with("CHANGE REPLICATION SOURCE TO SOURCE_HOST = 'db-1', SOURCE_PORT = 3307"),
            "{s}"
        );
        assert!(s.contains("SOURCE_AUTO_POSITION = 1") && s.ends_with("SOURCE_SSL = 1"), "{s}");
        assert!(old.change_source("h", 1, "u", "p", true).contains("MASTER_AUTO_POSITION = 1"));
        assert_eq!(maria.wait_applied("0-1-5", 3), "SELECT MASTER_GTID_WAIT('0-1-5', 3)");
        assert_eq!(mysql.wait_applied("u:1-5", 3), "SELECT WAIT_FOR_EXECUTED_GTID_SET('u:1-5', 3)");
    }

    #[test]
    fn positions_count_executed_transactions() {
        // MariaDB: per domain, the later of the binlog and replica positions.
        assert_eq!(Flavour::MariaDb.executed("0-1-5,1-2-7", "0-1-9"), 9 + 7);
        assert_eq!(Flavour::MariaDb.executed("", ""), 0);
        assert_eq!(parse_mariadb_gtids(" 0-1-5, 2-3-4"), [(0, 1, 5), (2, 3, 4)]);
        // MySQL: the size of gtid_executed.
        let set = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-3";
        assert_eq!(Flavour::MySql { modern: true }.executed(set, ""), 9);
        assert_eq!(count_mysql_gtids("3e11fa47-71ca-11e1-9e33-c80aa9429562:tag:1-2"), 2);
        assert_eq!(count_mysql_gtids(""), 0);
    }

    #[test]
    fn replica_status_in_both_dialects() {
        let maria = row(&[
            ("Master_Host", "10.0.0.1"),
            ("Master_Port", "3306"),
            ("Slave_IO_Running", "Yes"),
            ("Slave_SQL_Running", "No"),
            ("Last_SQL_Error", "Duplicate entry"),
            ("Gtid_IO_Pos", "0-1-12"),
        ]);
        let s = Flavour::MariaDb.parse_replica_status(&maria).unwrap();
        assert_eq!((s.host.as_str(), s.port, s.received.as_str()), ("10.0.0.1", 3306, "0-1-12"));
        assert!(!s.running());
        assert_eq!(s.error().as_deref(), Some("SQL thread: Duplicate entry"));
        // Retrying a source that is down is not a stop.
        let retrying = ReplicaStatus {
            io_running: "Connecting".into(),
            last_io_error: "error reconnecting to master".into(),
            sql_running: "Yes".into(),
            ..s.clone()
        };
        assert_eq!(retrying.error(), None);
        let mysql = row(&[
            ("Source_Host", "db-0"),
            ("Source_Port", "3306"),
            ("Replica_IO_Running", "Yes"),
            ("Replica_SQL_Running", "Yes"),
            ("Retrieved_Gtid_Set", "u:1-3"),
        ]);
        let s = Flavour::MySql { modern: true }.parse_replica_status(&mysql).unwrap();
        assert!(s.running());
        assert_eq!(s.received, "u:1-3");
        // Reset (no source): no status.
        assert_eq!(Flavour::MariaDb.parse_replica_status(&row(&[("Master_Host", "")])), None);
    }

    #[test]
    fn roles_follow_the_source_and_read_only() {
        let src = ReplicaStatus {
            host: "h".into(),
            port: 1,
            io_running: "Yes".into(),
            sql_running: "Yes".into(),
            ..Default::default()
        };
        let p = probe_from(true, 5, Some(&src), &SemiSync::default());
        assert_eq!((p.role, p.following.as_deref(), p.link_up), (ObservedRole::Replica, Some("h:1"), true));
        let p = probe_from(false, 5, None, &SemiSync::default());
        assert_eq!(p.role, ObservedRole::Primary);
        // Fenced: read-only and following nobody.
        let p = probe_from(true, 5, None, &SemiSync::default());
        assert_eq!((p.role, p.following, p.link_up), (ObservedRole::Replica, None, false));
    }

    #[test]
    fn self_fencing_is_semi_sync_that_never_falls_back() {
        let on = Flavour::MariaDb.self_fencing(true, true);
        assert!(on.contains(&format!("rpl_semi_sync_master_timeout = {FENCE_TIMEOUT_MS}")), "{on}");
        assert!(on.contains("rpl_semi_sync_master_wait_point = 'AFTER_SYNC'"), "{on}");
        assert!(on.contains("rpl_semi_sync_master_enabled = ON"), "{on}");
        // A replica acknowledges but does not wait (its applier would stall).
        let replica = Flavour::MariaDb.self_fencing(true, false);
        assert!(replica.contains("rpl_semi_sync_slave_enabled = ON"), "{replica}");
        assert!(replica.contains("rpl_semi_sync_master_enabled = OFF"), "{replica}");
        let modern = Flavour::MySql { modern: true }.self_fencing(true, true);
        assert!(modern.contains("rpl_semi_sync_source_wait_no_replica = ON"), "{modern}");
        assert!(modern.contains("rpl_semi_sync_replica_enabled = ON"), "{modern}");
        assert_eq!(
            Flavour::MariaDb.self_fencing(false, true),
            "SET GLOBAL rpl_semi_sync_master_enabled = OFF, GLOBAL rpl_semi_sync_master_timeout = 10000"
        );
        let vars = row(&[
            ("rpl_semi_sync_master_enabled", "ON"),
            ("rpl_semi_sync_master_timeout", &FENCE_TIMEOUT_MS.to_string()),
            ("rpl_semi_sync_master_wait_no_slave", "ON"),
            ("rpl_semi_sync_slave_enabled", "ON"),
        ]);
        let status = row(&[("Rpl_semi_sync_master_clients", "2")]);
        let semi = Flavour::MariaDb.parse_semi_sync(&vars, &status);
        assert_eq!(semi, SemiSync { fencing: true, primary_on: true, clients: Some(2) });
        let p = probe_from(false, 7, None, &semi);
        assert!(p.self_fencing);
        assert_eq!(p.good_replicas, Some(2));
        // A short timeout falls back to asynchronous replication: not fencing.
        let mut short = vars.clone();
        short.insert("rpl_semi_sync_master_timeout".into(), "10000".into());
        assert!(!Flavour::MariaDb.parse_semi_sync(&short, &status).fencing);
        assert!(!probe_from(false, 7, None, &Flavour::MariaDb.parse_semi_sync(&short, &status)).self_fencing);
    }

    #[test]
    fn errant_transactions_are_what_the_primary_never_had() {
        // The new primary (server 2) replicated server 1 up to 0-1-10 and wrote 0-2-11..15.
        let primary = "0-1-10,0-2-15";
        assert!(mariadb_errant("0-1-10", primary).is_empty(), "an old primary that had nothing more");
        assert!(mariadb_errant("0-1-8,0-2-12", primary).is_empty(), "a replica behind");
        assert_eq!(mariadb_errant("0-1-12", primary), ["0-1-12"], "the old primary's unreplicated tail");
        assert_eq!(mariadb_errant("0-1-10,0-3-11", primary), ["0-3-11"], "a write on a replica");
        assert_eq!(mariadb_errant("1-1-1", primary), ["1-1-1"], "another domain");
        assert!(mariadb_errant("", primary).is_empty());
    }

    #[test]
    fn values_are_quoted_and_names_checked() {
        assert_eq!(quote("a'b\\c\n"), r"'a\'b\\c\n'");
        assert_eq!(set_global("max_connections", "200").unwrap(), "SET GLOBAL max_connections = 200");
        assert_eq!(set_global("sql_mode", "STRICT").unwrap(), "SET GLOBAL sql_mode = 'STRICT'");
        assert!(set_global("x; DROP TABLE t", "1").is_err());
    }
}
