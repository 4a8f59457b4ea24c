//! The `redis` engine: RESP over TCP with the `redis` crate. `INFO replication` for role and
//! offsets, `REPLICAOF` to promote, follow and demote, `CLIENT PAUSE … WRITE` for switchover.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt as _, future::BoxFuture};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo as _, RedisConnectionInfo, RedisError,
    aio::MultiplexedConnection,
};

use super::{Credentials, Engine, EngineError, EngineResult, ObservedRole, Probe, split_endpoint};

/// Where a demoted member is pointed when there is no primary to follow yet: nothing listens
/// on port 1, so the member stays a read-only replica with its link down. Start Redis members
/// with `--replicaof 127.0.0.1 1` so a restarted member is never a second primary (the
/// operator promotes one).
pub const FENCE_HOST: &str = "127.0.0.1";
pub const FENCE_PORT: u16 = 1;

#[derive(Clone)]
pub struct RedisEngine {
    creds: Credentials,
    timeout: Duration,
    /// Replicas being watched until their command stream starts (see [`Self::start_stream`]).
    linking: Arc<Mutex<HashSet<String>>>,
    /// Fence lines to primaries (see [`Engine::demote_when_thawed`]).
    lines: Arc<Mutex<HashMap<String, Line>>>,
}

/// An authenticated connection kept open to a primary, used for nothing until the primary
/// stops answering: then a demotion is written on it, to run when the primary runs again.
enum Line {
    Opening,
    Open { stream: tokio::net::TcpStream, used: Instant },
}

/// A fence line not wanted for this long (its member no longer probed as a primary) is closed.
const LINE_IDLE: Duration = Duration::from_secs(300);
/// How long a queued demotion waits for its member to run again before its connection is
/// closed (the member still reads the command when it thaws; no answer is awaited then).
const THAW_WATCH: Duration = Duration::from_secs(600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A command in RESP.
fn resp(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
}

/// Whether a line is still connected and in step: nothing to read (a closed or reset
/// connection reads as end of file or an error; unexpected bytes mean it is out of step).
fn line_alive(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The first `n` replies in `buf` (simple strings and errors as their text, bulk strings as
/// their content), or None while incomplete.
fn parse_replies(buf: &[u8], n: usize) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < n {
        let eol = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let head = std::str::from_utf8(&buf[at..eol]).ok()?;
        at = eol + 2;
        match head.as_bytes().first()? {
            b'$' => {
                let len: usize = head[1..].parse().ok()?;
                let body = buf.get(at..at + len)?;
                out.push(String::from_utf8_lossy(body).into_owned());
                at += len + 2;
                if buf.len() < at {
                    return None;
                }
            }
            _ => out.push(head[1..].to_owned()),
        }
    }
    Some(out)
}

/// One `name:value` field of an `INFO` answer.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(name)?.strip_prefix(':'))
}

/// How long a newly attached replica is watched for its link to come up.
const LINK_WATCH: Duration = Duration::from_secs(15);
const LINK_POLL: Duration = Duration::from_millis(20);
/// When a replica whose link just came up is asked to acknowledge, after link-up: the first
/// request can race the primary's end of the sync exactly as the replica's own did.
const ACK_REQUESTS: [Duration; 3] = [Duration::ZERO, Duration::from_millis(50), Duration::from_millis(250)];

impl RedisEngine {
    pub fn new(creds: Credentials, timeout: Duration) -> Self {
        Self { creds, timeout, linking: Arc::default(), lines: Arc::default() }
    }

    /// `AUTH` as the member expects it, or nothing without a password.
    fn auth(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match (&self.creds.username, &self.creds.secret) {
            (Some(user), Some(pass)) => resp(&mut out, &["AUTH", user, pass]),
            (None, Some(pass)) => resp(&mut out, &["AUTH", pass]),
            _ => {}
        }
        out
    }

    /// A plain TCP connection (for commands written without waiting for their answers).
    async fn tcp(endpoint: &str) -> std::io::Result<tokio::net::TcpStream> {
        let (host, port) = split_endpoint(endpoint).ok_or_else(|| std::io::Error::other("not host:port"))?;
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn open_line(&self, endpoint: &str) -> std::io::Result<tokio::net::TcpStream> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = Self::tcp(endpoint).await?;
        let auth = self.auth();
        if !auth.is_empty() {
            stream.write_all(&auth).await?;
            let mut reply = [0u8; 64];
            let n = stream.read(&mut reply).await?;
            if !reply[..n].starts_with(b"+OK") {
                return Err(std::io::Error::other("AUTH refused"));
            }
        }
        Ok(stream)
    }

    /// Keep a fence line open to `endpoint` (a primary), opening it in the background when
    /// there is none or it broke; lines not wanted for [`LINE_IDLE`] are closed.
    fn keep_line(&self, endpoint: &str) {
        let mut lines = lock(&self.lines);
        lines.retain(|_, l| !matches!(l, Line::Open { used, .. } if used.elapsed() > LINE_IDLE));
        match lines.get_mut(endpoint) {
            Some(Line::Opening) => return,
            Some(Line::Open { stream, used }) if line_alive(stream) => {
                *used = Instant::now();
                return;
            }
            _ => {}
        }
        lines.insert(endpoint.to_owned(), Line::Opening);
        drop(lines);
        let this = self.clone();
        let endpoint = endpoint.to_owned();
        tokio::spawn(async move {
            let opened = tokio::time::timeout(this.timeout, this.open_line(&endpoint)).await;
            let mut lines = lock(&this.lines);
            match opened {
                Ok(Ok(stream)) => {
                    lines.insert(endpoint, Line::Open { stream, used: Instant::now() });
                }
                _ => {
                    lines.remove(&endpoint);
                }
            }
        });
    }

    /// After a diskless full sync (Redis 7's default) a primary starts sending a replica its
    /// command stream only when the replica first acknowledges (`REPLCONF ACK`). The replica
    /// acknowledges as soon as it has loaded the snapshot, but when that acknowledgement
    /// reaches the primary before it has reaped its snapshot child, it is dropped and the
    /// stream waits for the next one, up to a second later — while the primary already lists
    /// the replica as online and counts it for `min-replicas-to-write`. Writes acknowledged in
    /// that second exist on the primary only (measured: `bench chaos` seeds 3059 and 3134 lost
    /// about 1,100 writes each when the primary died in it). So after attaching a replica,
    /// watch it until its link is up and ask it to acknowledge at once, a few times.
    fn start_stream(&self, endpoint: &str) {
        if !lock(&self.linking).insert(endpoint.to_owned()) {
            return;
        }
        let this = self.clone();
        let endpoint = endpoint.to_owned();
        tokio::spawn(async move {
            let deadline = Instant::now() + LINK_WATCH;
            while Instant::now() < deadline {
                if this.probe(&endpoint).await.is_ok_and(|p| p.role == ObservedRole::Replica && p.link_up) {
                    let linked = Instant::now();
                    for at in ACK_REQUESTS {
                        tokio::time::sleep_until((linked + at).into()).await;
                        if let Err(e) = this.request_ack(&endpoint).await {
                            tracing::debug!(member = %endpoint, error = %e, "could not ask a replica to acknowledge");
                        }
                    }
                    break;
                }
                tokio::time::sleep(LINK_POLL).await;
            }
            lock(&this.linking).remove(&endpoint);
        });
    }

    async fn connect(&self, endpoint: &str) -> EngineResult<MultiplexedConnection> {
        let (host, port) = split_endpoint(endpoint).ok_or_else(|| EngineError::Protocol {
            endpoint: endpoint.into(),
            message: "not host:port".into(),
        })?;
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(user) = &self.creds.username {
            settings = settings.set_username(user);
        }
        if let Some(pass) = &self.creds.secret {
            settings = settings.set_password(pass);
        }
        let info = ConnectionAddr::Tcp(host.to_owned(), port)
            .into_connection_info()
            .map_err(|e| classify(endpoint, e))?
            .set_redis_settings(settings);
        let client = Client::open(info).map_err(|e| classify(endpoint, e))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| classify(endpoint, e))
    }

    /// Run one command on a fresh connection, the whole exchange bounded by the timeout.
    async fn call<T: redis::FromRedisValue>(&self, endpoint: &str, cmd: redis::Cmd) -> EngineResult<T> {
        self.bounded(endpoint, async {
            let mut conn = self.connect(endpoint).await?;
            cmd.query_async::<T>(&mut conn).await.map_err(|e| classify(endpoint, e))
        })
        .await
    }

    /// `work` on `endpoint`, the whole of it bounded by the engine's timeout.
    async fn bounded<T>(
        &self,
        endpoint: &str,
        work: impl std::future::Future<Output = EngineResult<T>>,
    ) -> EngineResult<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| EngineError::Timeout { endpoint: endpoint.into(), timeout: self.timeout })?
    }

    async fn replicaof(&self, endpoint: &str, host: &str, port: u16) -> EngineResult<()> {
        let mut cmd = redis::cmd("REPLICAOF");
        cmd.arg(host).arg(port);
        self.call::<()>(endpoint, cmd).await
    }

    /// Make the member at `endpoint` a replica of the member at `primary` (`host:port`).
    async fn replicaof_member(&self, endpoint: &str, primary: &str) -> EngineResult<()> {
        let (host, port) = split_endpoint(primary).ok_or_else(|| EngineError::Protocol {
            endpoint: primary.into(),
            message: "not host:port".into(),
        })?;
        self.replicaof(endpoint, host, port).await
    }
}

fn classify(endpoint: &str, e: RedisError) -> EngineError {
    let message = e.to_string();
    let endpoint = endpoint.to_owned();
    if message.contains("WRONGPASS") || message.contains("NOAUTH") || message.contains("uthentication") {
        EngineError::Unauthorized { endpoint, message }
    } else if e.is_connection_refusal() {
        EngineError::Refused { endpoint, message }
    } else if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped() {
        EngineError::Unreachable { endpoint, message }
    } else {
        EngineError::Protocol { endpoint, message }
    }
}

/// What a refused `CONFIG SET` means: Redis 7 says "can't set immutable config" of a
/// parameter it reads only at start; anything else is a value (or a name) it refuses.
fn setting_refused(message: &str) -> super::Setting {
    if message.contains("immutable") {
        super::Setting::RestartRequired
    } else {
        super::Setting::Refused(message.to_owned())
    }
}

/// Parse `INFO replication`.
pub fn parse_replication_info(info: &str) -> Result<Probe, String> {
    let fields: HashMap<&str, &str> =
        info.lines().filter_map(|l| l.trim_end_matches('\r').split_once(':')).collect();
    let int = |k: &str| fields.get(k).and_then(|v| v.parse::<i64>().ok());
    // Present only while min-replicas-to-write and min-replicas-max-lag are both set.
    let self_fencing = fields.contains_key("min_slaves_good_slaves");
    match fields.get("role").copied() {
        Some("master") => Ok(Probe {
            role: ObservedRole::Primary,
            offset: int("master_repl_offset"),
            following: None,
            link_up: true,
            self_fencing,
            good_replicas: int("min_slaves_good_slaves"),
            link_error: None,
            errant: Vec::new(),
            drains: false,
        }),
        Some("slave") => {
            let host = fields.get("master_host").copied().unwrap_or_default();
            let port = fields.get("master_port").copied().unwrap_or_default();
            let fenced = host == FENCE_HOST && port == FENCE_PORT.to_string();
            Ok(Probe {
                role: ObservedRole::Replica,
                // What the replica has applied; before its first sync Redis reports 0 or -1.
                offset: int("slave_repl_offset").or_else(|| int("slave_read_repl_offset")),
                following: (!host.is_empty() && !fenced).then(|| format!("{host}:{port}")),
                link_up: fields.get("master_link_status") == Some(&"up"),
                self_fencing,
                good_replicas: None,
                link_error: None,
                errant: Vec::new(),
                drains: false,
            })
        }
        other => Err(format!("unexpected role {other:?} in INFO replication")),
    }
}

impl Engine for RedisEngine {
    fn probe<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<Probe>> {
        async move {
            let mut cmd = redis::cmd("INFO");
            cmd.arg("replication");
            let info: String = self.call(endpoint, cmd).await?;
            let probe = parse_replication_info(&info)
                .map_err(|message| EngineError::Protocol { endpoint: endpoint.into(), message })?;
            if probe.role == ObservedRole::Primary {
                self.keep_line(endpoint);
            }
            Ok(probe)
        }
        .boxed()
    }

    fn demote_when_thawed<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<super::Thawed>> {
        async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let unreachable =
                |e: std::io::Error| EngineError::Unreachable { endpoint: endpoint.into(), message: e.to_string() };
            let line = match lock(&self.lines).remove(endpoint) {
                Some(Line::Open { stream, .. }) if line_alive(&stream) => Some(stream),
                _ => None,
            };
            let mut commands = Vec::new();
            let via = if line.is_some() { "line" } else { "new connection" };
            let (mut stream, replies) = match line {
                Some(stream) => (stream, 2),
                // No line: a new connection, which the kernel accepts while the member is frozen.
                // Its commands run when the member has accepted it — after whatever arrived
                // before, so this is weaker than a line.
                None => {
                    let stream = self.bounded(endpoint, async { Self::tcp(endpoint).await.map_err(unreachable) }).await?;
                    commands = self.auth();
                    (stream, if commands.is_empty() { 2 } else { 3 })
                }
            };
            resp(&mut commands, &["REPLICAOF", FENCE_HOST, &FENCE_PORT.to_string()]);
            // Right behind it, in the same pass: the offset it stopped at. Demoted towards a
            // host that does not exist, it never syncs, so that is everything it acknowledged.
            resp(&mut commands, &["INFO", "replication"]);
            self.bounded(endpoint, async { stream.write_all(&commands).await.map_err(unreachable) }).await?;
            // Held open until the member answers: it reads the commands when it runs again.
            let endpoint = endpoint.to_owned();
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let read = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        if let Some(r) = parse_replies(&got, replies) {
                            return Some(r);
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return None,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                };
                let answers = tokio::time::timeout(THAW_WATCH, read).await.ok().flatten();
                let demoted = answers.as_ref().and_then(|a| a.get(replies - 2)).cloned().unwrap_or_default();
                let offset = answers
                    .as_ref()
                    .and_then(|a| a.last())
                    .and_then(|info| info_field(info, "master_repl_offset"))
                    .and_then(|o| o.parse::<i64>().ok());
                tracing::info!(member = %endpoint, via, answered = answers.is_some(), reply = %demoted, ?offset, "a demotion queued while the member did not answer has run");
                if demoted == "OK"
                    && let Some(offset) = offset
                {
                    let _ = tx.send(offset);
                }
            });
            Ok(Some(rx))
        }
        .boxed()
    }

    fn promote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            let mut cmd = redis::cmd("REPLICAOF");
            cmd.arg("NO").arg("ONE");
            self.call::<()>(endpoint, cmd).await
        }
        .boxed()
    }

    fn follow<'a>(&'a self, endpoint: &'a str, primary: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            self.replicaof_member(endpoint, primary).await?;
            self.start_stream(endpoint);
            Ok(())
        }
        .boxed()
    }

    /// `REPLICAOF host port` and `INFO replication` in one pipeline: the server runs them back
    /// to back, so the offset is exactly where it stopped taking writes.
    fn yield_to<'a>(
        &'a self,
        endpoint: &'a str,
        primary: &'a str,
    ) -> BoxFuture<'a, EngineResult<Option<i64>>> {
        async move {
            let (host, port) = split_endpoint(primary).ok_or_else(|| EngineError::Protocol {
                endpoint: primary.into(),
                message: "not host:port".into(),
            })?;
            let mut pipe = redis::pipe();
            pipe.cmd("REPLICAOF").arg(host).arg(port).cmd("INFO").arg("replication");
            let (_, info): (redis::Value, String) = self
                .bounded(endpoint, async {
                    let mut conn = self.connect(endpoint).await?;
                    pipe.query_async(&mut conn).await.map_err(|e| classify(endpoint, e))
                })
                .await?;
            self.start_stream(endpoint);
            Ok(info_field(&info, "master_repl_offset").and_then(|o| o.parse::<i64>().ok()))
        }
        .boxed()
    }

    fn request_ack<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            // A replica answers `REPLCONF GETACK` by acknowledging to its primary and sends
            // this client no reply (nor does a primary, which ignores it): the PING after it
            // carries the one reply to wait for.
            let mut pipe = redis::pipe();
            pipe.cmd("REPLCONF").arg("GETACK").arg("*").cmd("PING");
            let replies = self
                .bounded(endpoint, async {
                    let mut conn = self.connect(endpoint).await?;
                    redis::aio::ConnectionLike::req_packed_commands(&mut conn, &pipe, 0, 1)
                        .await
                        .map_err(|e| classify(endpoint, e))
                })
                .await?;
            match replies.first() {
                Some(redis::Value::SimpleString(s)) if s == "PONG" => Ok(()),
                other => Err(EngineError::Protocol {
                    endpoint: endpoint.into(),
                    message: format!("REPLCONF GETACK: unexpected reply {other:?}"),
                }),
            }
        }
        .boxed()
    }

    fn demote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move { self.replicaof(endpoint, FENCE_HOST, FENCE_PORT).await }.boxed()
    }

    fn demote_drained<'a>(&'a self, endpoint: &'a str, to: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        // Until `to` is promoted the two replicate from each other; neither takes writes
        // (this one is paused, `to` is a replica) and both hold the same offset.
        async move { self.replicaof_member(endpoint, to).await }.boxed()
    }

    fn pause_writes<'a>(&'a self, endpoint: &'a str, max: Duration) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("PAUSE").arg(max.as_millis().max(1) as u64).arg("WRITE");
            self.call::<()>(endpoint, cmd).await
        }
        .boxed()
    }

    fn resume_writes<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("UNPAUSE");
            self.call::<()>(endpoint, cmd).await
        }
        .boxed()
    }

    fn follows_directly(&self) -> bool {
        true
    }

    fn self_fences(&self) -> bool {
        true
    }

    fn set_parameter<'a>(
        &'a self,
        endpoint: &'a str,
        name: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, EngineResult<super::Setting>> {
        async move {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("SET").arg(name).arg(value);
            match self.call::<()>(endpoint, cmd).await {
                Ok(()) => Ok(super::Setting::Applied),
                Err(EngineError::Protocol { message, .. }) => Ok(setting_refused(&message)),
                Err(e) => Err(e),
            }
        }
        .boxed()
    }

    fn set_self_fencing<'a>(
        &'a self,
        endpoint: &'a str,
        min_replicas: u32,
        max_lag_seconds: u32,
    ) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("SET").arg("min-replicas-to-write").arg(min_replicas);
            if min_replicas > 0 {
                cmd.arg("min-replicas-max-lag").arg(max_lag_seconds.max(1));
            }
            self.call::<()>(endpoint, cmd).await
        }
        .boxed()
    }
}

/// A Redis member's arguments (see [`super::member_args`]): `--replicaof 127.0.0.1 1` keeps it a
/// replica of nothing until the monitor points it at the primary; parameters as `--name value`.
pub fn member_args(m: &super::MemberStart<'_>) -> Vec<String> {
    let mut args: Vec<String> = ["--port", &m.port.to_string(), "--protected-mode", "no"]
        .into_iter()
        .chain(["--replicaof", "127.0.0.1", "1", "--dir", m.data_dir])
        .map(str::to_owned)
        .collect();
    if let Some(env) = m.password_env {
        // Kubernetes expands $(VAR) in args from the container's environment.
        for flag in ["--requirepass", "--masterauth"] {
            args.push(flag.into());
            args.push(format!("$({env})"));
        }
    }
    for (k, v) in m.parameters {
        args.push(format!("--{k}"));
        args.push(v.clone());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_replies_are_read_whole_or_not_at_all() {
        let info = "# Replication\r\nrole:slave\r\nmaster_repl_offset:4711\r\n";
        let all = format!("+OK\r\n+OK\r\n${}\r\n{info}\r\n", info.len());
        let replies = parse_replies(all.as_bytes(), 3).unwrap();
        assert_eq!(replies[..2], ["OK", "OK"]);
        assert_eq!(info_field(&replies[2], "master_repl_offset"), Some("4711"));
        assert_eq!(info_field(&replies[2], "master_repl"), None);
        // Every prefix is incomplete: nothing is read from half an answer.
        for cut in 0..all.len() {
            assert_eq!(parse_replies(&all.as_bytes()[..cut], 3), None, "cut at {cut}");
        }
        assert_eq!(parse_replies(b"-ERR no\r\n", 1).unwrap(), ["ERR no"]);
    }

    #[test]
    fn an_immutable_parameter_needs_a_restart_and_a_bad_value_is_refused() {
        assert_eq!(
            setting_refused(
                "ERR CONFIG SET failed (possibly related to argument 'databases') - can't set immutable config"
            ),
            super::super::Setting::RestartRequired
        );
        assert!(matches!(
            setting_refused(
                "ERR CONFIG SET failed (possibly related to argument 'maxmemory') - argument couldn't be parsed into an integer"
            ),
            super::super::Setting::Refused(m) if m.contains("maxmemory")
        ));
    }

    #[test]
    fn parses_a_primary() {
        let p = parse_replication_info(
            "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_repl_offset:1234\r\n",
        )
        .unwrap();
        assert_eq!(p.role, ObservedRole::Primary);
        assert_eq!(p.offset, Some(1234));
    }

    #[test]
    fn parses_a_replica_and_its_upstream() {
        let p = parse_replication_info(
            "role:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\nmaster_link_status:up\r\nslave_repl_offset:99\r\n",
        )
        .unwrap();
        assert_eq!(p.role, ObservedRole::Replica);
        assert_eq!(p.following.as_deref(), Some("10.0.0.1:6379"));
        assert!(p.link_up);
        assert_eq!(p.offset, Some(99));
    }

    #[test]
    fn a_fenced_replica_follows_nobody() {
        let p = parse_replication_info(
            "role:slave\nmaster_host:127.0.0.1\nmaster_port:1\nmaster_link_status:down\n",
        )
        .unwrap();
        assert_eq!(p.following, None);
        assert!(!p.link_up);
    }

    #[test]
    fn sees_self_fencing() {
        let on =
            parse_replication_info("role:master\r\nmin_slaves_good_slaves:1\r\nmaster_repl_offset:5\r\n");
        let on = on.unwrap();
        assert!(on.self_fencing);
        assert_eq!(on.good_replicas, Some(1));
        assert!(!parse_replication_info("role:master\r\nmaster_repl_offset:5\r\n").unwrap().self_fencing);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_replication_info("hello").is_err());
    }
}
