//! `bench chaos --runs N [--seed S]`: a randomized fault loop.
//!
//! Each run gets a fresh namespace, three fresh redis-server members, a fresh HaCluster and
//! its own operator process (`bench operator`, so that it can be SIGKILLed). Two clients
//! write sequenced keys: one to whatever the HaCluster's status names as primary (re-resolving
//! after errors), one straight to the member that was primary when the run started (a stale
//! client that never follows routing, so that a frozen-then-thawed old primary is exercised).
//! At a random instant one random fault is injected and later healed:
//!
//! - SIGKILL of the primary or of a replica (restarted after a random hold, empty; holds are
//!   50 ms to 1 s in three runs of ten, otherwise 1 s to `--max-hold-secs`);
//! - SIGSTOP of the primary or of a replica (SIGCONT after a random hold);
//! - SIGKILL of the operator (restarted after a random hold);
//! - SIGSTOP of kube-apiserver for 5–60 s (`--max-outage-secs` shortens it);
//! - a switchover (ShardFailover) or a FailoverRequest (type Switchover) in flight.
//!
//! Every choice of a run (fault, instant, member, hold) is drawn up front from the run's seed:
//! `--runs 1 --seed S` replays run S's choices exactly (not the timing of the processes).
//!
//! The checker, per run:
//!
//! - *two writable at once*: from every acknowledged write (its server, when it was sent, when
//!   it was acknowledged). A write acknowledged before another was sent certainly happened
//!   before it; the longest chain of such certainly-ordered writes gives the number of
//!   changes of the server taking writes that no ordering of the writes can avoid. More
//!   changes than promotions (epoch increments) means two members took writes at once;
//!   overlapping but unordered writes prove nothing and are not counted;
//! - *planned loss*: after a switchover or FailoverRequest every acknowledged write is on the
//!   primary; *loss without role change*: the same for any run whose primary did not change;
//!   acknowledged writes lost in an unplanned failover are reported, with whether
//!   `status.lastFailover.lostOffset` recorded a loss;
//! - *deadline*: the operation reaches a terminal phase by its deadline (ShardFailover:
//!   timeoutSeconds; FailoverRequest: timeoutSeconds per subtask × 7 subtasks), 5 s slack;
//! - *not healthy*: after the fault is healed (or the operation submitted) the cluster is
//!   Healthy again within `--bound-secs`: status phase Healthy with one primary and every
//!   member healthy, and the servers agree (the primary has both replicas attached, each
//!   replica's link to it is up); after an operator kill also its /readyz.
//!
//! The same runs on pods of a real node: `bench chaos-node` (`chaos_node.rs`, a [`Site`] of
//! its own). `--faults a,b` draws only those kinds of fault.
//!
//! `CHAOS_DEBUG=1` prints what the health check sees on every poll.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use tokio::process::{Child, Command};
use understudy::{
    controlplane::{ControlPlane, Options, free_port},
    localredis::{LocalRedis, redis_conn},
    resources::{
        FailoverRequest, HaCluster, ShardFailover,
        failover_request::RequestPhase,
        hacluster::{ClusterPhase, Role},
        shard_failover::ShardFailoverPhase,
    },
};

use super::{Args, Stats};

const NAMES: [&str; 3] = ["m0", "m1", "m2"];
const CLUSTER: &str = "c";
/// API calls of the harness never wait longer than this (the API server may be frozen).
const API_TIMEOUT: Duration = Duration::from_secs(2);
const SFO_TIMEOUT_SECS: i64 = 30;
const FR_TIMEOUT_SECS: i64 = 10;
const FR_SUBTASKS: i64 = 7;
const DEADLINE_SLACK: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Seeded choices

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in [lo, hi].
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.below(hi - lo + 1) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillPrimary,
    KillReplica,
    StopPrimary,
    StopReplica,
    KillOperator,
    StopApiserver,
    Switchover,
    FailoverRequest,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::KillPrimary,
        Fault::KillReplica,
        Fault::StopPrimary,
        Fault::StopReplica,
        Fault::KillOperator,
        Fault::StopApiserver,
        Fault::Switchover,
        Fault::FailoverRequest,
    ];
    fn name(self) -> &'static str {
        match self {
            Fault::KillPrimary => "kill-primary",
            Fault::KillReplica => "kill-replica",
            Fault::StopPrimary => "stop-primary",
            Fault::StopReplica => "stop-replica",
            Fault::KillOperator => "kill-operator",
            Fault::StopApiserver => "stop-apiserver",
            Fault::Switchover => "switchover",
            Fault::FailoverRequest => "failover-request",
        }
    }
    fn planned(self) -> bool {
        matches!(self, Fault::Switchover | Fault::FailoverRequest)
    }
}

/// Everything random about a run, drawn up front from its seed.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    fault: Fault,
    /// Writing time before the fault.
    delay_ms: u64,
    /// How long the fault lasts before it is healed (not for operations).
    hold_ms: u64,
    /// Which replica (0 or 1, in member order) a replica fault hits.
    replica: usize,
}

impl Plan {
    /// The plan of run `seed`, its fault drawn from `kinds` (replays need the same kinds).
    fn draw(seed: u64, kinds: &[Fault], max_outage_ms: u64, max_hold_ms: u64) -> Self {
        let mut rng = Rng(seed);
        let fault = kinds[rng.below(kinds.len() as u64) as usize];
        let delay_ms = rng.range(200, 2000);
        let short = rng.below(10) < 3;
        let hold_ms = match fault {
            Fault::StopApiserver => rng.range(5000.min(max_outage_ms), max_outage_ms),
            // Often around the detection window, otherwise up to the longest hold.
            _ if short => rng.range(50, 1000.min(max_hold_ms)),
            _ => rng.range(1000.min(max_hold_ms), max_hold_ms),
        };
        let replica = rng.below(2) as usize;
        Self { fault, delay_ms, hold_ms, replica }
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
struct Ack {
    /// 0: follows the routing; 1: stale, always the first primary.
    writer: u8,
    seq: u64,
    /// The server that acknowledged it ([`Servers`] index).
    server: u16,
    sent: Instant,
    acked: Instant,
}

impl Ack {
    fn key(&self, run: usize) -> String {
        format!("k{run}:{}:{}", self.writer, self.seq)
    }
}

/// The servers that acknowledged writes in one run, by address (`host:port` as the server
/// itself sees its end of the connection): through a Service, the address a client dialled
/// is not the server that answered.
#[derive(Clone, Default)]
struct Servers(Arc<Mutex<Vec<String>>>);

impl Servers {
    fn id(&self, addr: &str) -> u16 {
        let mut v = self.0.lock().expect("servers");
        match v.iter().position(|a| a == addr) {
            Some(i) => i as u16,
            None => {
                v.push(addr.to_owned());
                (v.len() - 1) as u16
            }
        }
    }
    fn addr(&self, id: u16) -> String {
        self.0.lock().expect("servers").get(id as usize).cloned().unwrap_or_default()
    }
}

#[derive(Default)]
struct ClientLog {
    acks: Vec<Ack>,
    /// Error kinds (first word of the message) per writer.
    errors: BTreeMap<String, usize>,
}

struct Clients {
    log: Arc<Mutex<ClientLog>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Where the routed client connects: the member status names as primary (loopback), or the
/// primary Service (node).
pub(crate) type Resolve =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<(String, u16)>> + Send + Sync>;

/// The server end of a connection (`laddr` of `CLIENT INFO`).
async fn server_addr(c: &mut redis::aio::MultiplexedConnection) -> Option<String> {
    let info: String = redis::cmd("CLIENT").arg("INFO").query_async(c).await.ok()?;
    info.split_whitespace().find_map(|f| f.strip_prefix("laddr=")).map(str::to_owned)
}

impl Clients {
    fn start(run: usize, resolve: Resolve, stale: (String, u16), servers: Servers) -> Self {
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let routed = {
            let (log, stop, servers) = (log.clone(), stop.clone(), servers.clone());
            tokio::spawn(async move {
                let mut conn: Option<(redis::aio::MultiplexedConnection, u16)> = None;
                let mut seq = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    if conn.is_none() {
                        if let Some((host, port)) = resolve().await
                            && let Ok(mut c) = redis_conn(&host, port, None, 300).await
                            && let Some(addr) = server_addr(&mut c).await
                        {
                            conn = Some((c, servers.id(&addr)));
                        }
                        if conn.is_none() {
                            continue;
                        }
                    }
                    let (c, server) = conn.as_mut().expect("connected");
                    let server = *server;
                    let sent = Instant::now();
                    let r: redis::RedisResult<()> =
                        redis::cmd("SET").arg(format!("k{run}:0:{seq}")).arg(seq).query_async(c).await;
                    let acked = Instant::now();
                    let mut l = log.lock().expect("log");
                    match r {
                        Ok(()) => {
                            l.acks.push(Ack { writer: 0, seq, server, sent, acked });
                            seq += 1;
                        }
                        Err(e) => {
                            *l.errors.entry(format!("routed {}", error_kind(&e))).or_default() += 1;
                            conn = None;
                        }
                    }
                }
            })
        };
        let stale = {
            let (log, stop) = (log.clone(), stop.clone());
            let server = servers.id(&format!("{}:{}", stale.0, stale.1));
            tokio::spawn(async move {
                let mut conn: Option<redis::aio::MultiplexedConnection> = None;
                let mut seq = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    if conn.is_none() {
                        // Connect quickly, but wait for an answer as long as a frozen server
                        // may take: a write queued during a freeze is answered after the thaw.
                        conn = redis_conn_slow(&stale.0, stale.1).await.ok();
                        if conn.is_none() {
                            continue;
                        }
                    }
                    let c = conn.as_mut().expect("connected");
                    let sent = Instant::now();
                    let r: redis::RedisResult<()> =
                        redis::cmd("SET").arg(format!("k{run}:1:{seq}")).arg(seq).query_async(c).await;
                    let acked = Instant::now();
                    let mut l = log.lock().expect("log");
                    match r {
                        Ok(()) => l.acks.push(Ack { writer: 1, seq, server, sent, acked }),
                        Err(e) => {
                            let kind = error_kind(&e);
                            // Refusals keep the connection (the server is up); others drop it.
                            if kind != "NOREPLICAS" && kind != "READONLY" {
                                conn = None;
                            }
                            *l.errors.entry(format!("stale {kind}")).or_default() += 1;
                        }
                    }
                    // Every attempt uses a new key: a refused key is never retried.
                    seq += 1;
                }
            })
        };
        Self { log, stop, tasks: vec![routed, stale] }
    }

    fn acks_after(&self, t: Instant) -> usize {
        self.log.lock().expect("log").acks.iter().filter(|a| a.acked > t).count()
    }

    async fn stop(self) -> ClientLog {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            // A write still in flight (to a server that was frozen) is abandoned: not acknowledged.
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
                abort.abort();
            }
        }
        std::mem::take(&mut *self.log.lock().expect("log"))
    }
}

fn error_kind(e: &redis::RedisError) -> String {
    e.code().map(str::to_owned).unwrap_or_else(|| format!("{:?}", e.kind()))
}

async fn redis_conn_slow(host: &str, port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(300)))
        .set_response_timeout(Some(Duration::from_secs(180)));
    redis::Client::open(format!("redis://{host}:{port}/"))?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

// ---------------------------------------------------------------------------------------
// The checker

/// The longest chain of certainly-ordered acknowledged writes (each acknowledged before the
/// next was sent), maximising the number of changes of server along it: the fewest changes
/// of the member taking writes any real order of these writes has. Returns that number and a
/// witness chain (indices into `acks`, one per server change plus the first).
fn forced_switches(acks: &[Ack]) -> (usize, Vec<usize>) {
    let n = acks.len();
    if n == 0 {
        return (0, vec![]);
    }
    let mut by_sent: Vec<usize> = (0..n).collect();
    by_sent.sort_by_key(|&i| acks[i].sent);
    let mut by_ack: Vec<usize> = (0..n).collect();
    by_ack.sort_by_key(|&i| acks[i].acked);
    let mut best = vec![0usize; n];
    let mut pred = vec![usize::MAX; n];
    // Per server: the best chain value among writes acknowledged so far, and its last write.
    let mut top: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
    let mut j = 0;
    for &w in &by_sent {
        while j < n && acks[by_ack[j]].acked < acks[w].sent {
            let u = by_ack[j];
            let e = top.entry(acks[u].server).or_insert((best[u], u));
            if best[u] > e.0 {
                *e = (best[u], u);
            }
            j += 1;
        }
        let mut b = (0usize, usize::MAX);
        for (&server, &(v, i)) in &top {
            let v = if server == acks[w].server { v } else { v + 1 };
            if b.1 == usize::MAX || v > b.0 {
                b = (v, i);
            }
        }
        best[w] = b.0;
        pred[w] = b.1;
    }
    let end = (0..n).max_by_key(|&i| best[i]).expect("n > 0");
    let mut chain = vec![end];
    let mut i = end;
    while pred[i] != usize::MAX {
        i = pred[i];
        chain.push(i);
    }
    chain.reverse();
    // Keep the first write and each write on a different server than the one before it,
    // with the last write on the previous server, so that the witness shows each change.
    let mut witness = Vec::new();
    for (k, &i) in chain.iter().enumerate() {
        let changes_next = chain.get(k + 1).is_some_and(|&nx| acks[nx].server != acks[i].server);
        let changed = k == 0 || acks[chain[k - 1]].server != acks[i].server;
        if changed || changes_next {
            witness.push(i);
        }
    }
    (best[end], witness)
}

/// Acknowledged keys missing on the server at `host:port`.
async fn missing(acks: &[Ack], run: usize, (host, port): (&str, u16)) -> anyhow::Result<Vec<usize>> {
    let mut c = redis_conn(host, port, None, 5000).await?;
    let mut out = Vec::new();
    for (k, chunk) in acks.chunks(500).enumerate() {
        let keys: Vec<String> = chunk.iter().map(|a| a.key(run)).collect();
        let vals: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        out.extend(vals.iter().enumerate().filter(|(_, v)| v.is_none()).map(|(i, _)| k * 500 + i));
    }
    Ok(out)
}

/// Milliseconds from `t0` (negative before it).
fn rel_ms(t: Instant, t0: Instant) -> f64 {
    if t >= t0 { (t - t0).as_secs_f64() * 1000.0 } else { -(t0 - t).as_secs_f64() * 1000.0 }
}

/// Which acknowledged writes are missing: per (client, member that acknowledged them), how
/// many, their sequence numbers and when (ms from the fault) they were sent and acknowledged.
fn describe_missing(
    acks: &[Ack],
    lost: &[usize],
    label: &dyn Fn(u16) -> String,
    injected: Instant,
) -> String {
    let mut groups: BTreeMap<(u8, u16), Vec<&Ack>> = BTreeMap::new();
    for &i in lost {
        groups.entry((acks[i].writer, acks[i].server)).or_default().push(&acks[i]);
    }
    groups
        .iter()
        .map(|((w, server), v)| {
            let (first, last) = (v[0], v[v.len() - 1]);
            format!(
                "{} {} acked by {} (#{}..#{}, sent {:+.1}..{:+.1} ms, acked {:+.1}..{:+.1} ms)",
                v.len(),
                if *w == 0 { "routed" } else { "stale" },
                label(*server),
                first.seq,
                last.seq,
                rel_ms(first.sent, injected),
                rel_ms(last.sent, injected),
                rel_ms(first.acked, injected),
                rel_ms(last.acked, injected)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------
// Processes

/// The operator of one run, as `bench operator` in a child process of its own.
struct Operator {
    kubeconfig: PathBuf,
    ns: String,
    logs: PathBuf,
    port: u16,
    child: Option<Child>,
    starts: usize,
}

impl Operator {
    fn start(kubeconfig: &Path, ns: &str, logs: &Path) -> anyhow::Result<Self> {
        let mut op = Self {
            kubeconfig: kubeconfig.to_owned(),
            ns: ns.to_owned(),
            logs: logs.to_owned(),
            port: free_port()?,
            child: None,
            starts: 0,
        };
        op.spawn()?;
        Ok(op)
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.logs.join(format!("{}-operator-{n}.log", self.ns))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.log_path(self.starts))?;
        self.starts += 1;
        let child = Command::new(std::env::current_exe()?)
            .args(["operator", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.ns, "--listen", &format!("127.0.0.1:{}", self.port)])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,understudy=debug,kube=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the operator (bench operator)")?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    async fn ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest::Client::builder().timeout(Duration::from_millis(500)).build();
        match client {
            Ok(c) => c.get(url).send().await.is_ok_and(|r| r.status().is_success()),
            Err(_) => false,
        }
    }

    fn logs(&self) -> Vec<PathBuf> {
        (0..self.starts).map(|n| self.log_path(n)).collect()
    }
}

/// The pid of this control plane's kube-apiserver: our child, running from its directory.
fn apiserver_pid(cp: &ControlPlane) -> Option<i32> {
    let me = std::process::id().to_string();
    let dir = cp.dir().to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.ends_with("kube-apiserver"))
            || !args.iter().any(|a| a.contains(&dir))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(me.as_str()) {
            return Some(pid);
        }
    }
    None
}

/// A stopped process, continued on drop (also when the run fails).
struct Frozen(i32);

impl Frozen {
    fn stop(pid: i32) -> Self {
        // SAFETY: kill(2) on a process we started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

pub(crate) async fn api<T, E>(f: impl std::future::Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(API_TIMEOUT, f).await.ok()?.ok()
}

/// Where one run's members, operator and API server live: local processes on loopback
/// ([`Loopback`]), or pods of a real node (`chaos_node`).
pub(crate) trait Site {
    /// The HaCluster's name.
    fn cluster(&self) -> &str;
    /// Member names, in member order.
    fn names(&self) -> &[String];
    /// Each member's current address (host, port), in member order; `None` while unknown.
    async fn addrs(&self) -> Vec<Option<(String, u16)>>;
    /// The host pid of member `i`'s server process.
    async fn pid(&self, i: usize) -> Option<i32>;
    /// Whatever kills a process here also restarts it (a kubelet): a kill has no hold and
    /// nothing to heal.
    fn restarts_by_itself(&self) -> bool;
    async fn kill_member(&mut self, i: usize) -> anyhow::Result<()>;
    async fn revive_member(&mut self, i: usize) -> anyhow::Result<()>;
    async fn kill_operator(&mut self) -> anyhow::Result<()>;
    async fn revive_operator(&mut self) -> anyhow::Result<()>;
    /// Every operator replica answers ready.
    async fn operator_ready(&self) -> bool;
    fn apiserver_pid(&self) -> Option<i32>;
    /// Where the routed client connects.
    fn routed(&self, hacs: &Api<HaCluster>) -> Resolve;
}

/// Three redis-server processes on loopback and `bench operator` as a child process.
struct Loopback<'a> {
    cp: &'a ControlPlane,
    redis: Vec<LocalRedis>,
    names: Vec<String>,
    op: Operator,
}

impl Site for Loopback<'_> {
    fn cluster(&self) -> &str {
        CLUSTER
    }
    fn names(&self) -> &[String] {
        &self.names
    }
    async fn addrs(&self) -> Vec<Option<(String, u16)>> {
        self.redis.iter().map(|r| Some(("127.0.0.1".to_owned(), r.port))).collect()
    }
    async fn pid(&self, i: usize) -> Option<i32> {
        self.redis[i].pid().map(|p| p as i32)
    }
    fn restarts_by_itself(&self) -> bool {
        false
    }
    async fn kill_member(&mut self, i: usize) -> anyhow::Result<()> {
        self.redis[i].kill();
        Ok(())
    }
    async fn revive_member(&mut self, i: usize) -> anyhow::Result<()> {
        self.redis[i].try_spawn()
    }
    async fn kill_operator(&mut self) -> anyhow::Result<()> {
        self.op.kill().await;
        Ok(())
    }
    async fn revive_operator(&mut self) -> anyhow::Result<()> {
        self.op.spawn()
    }
    async fn operator_ready(&self) -> bool {
        self.op.ready().await
    }
    fn apiserver_pid(&self) -> Option<i32> {
        apiserver_pid(self.cp)
    }
    fn routed(&self, hacs: &Api<HaCluster>) -> Resolve {
        let (hacs, ports) = (hacs.clone(), self.redis.iter().map(|r| r.port).collect::<Vec<_>>());
        let names = self.names.clone();
        Arc::new(move || {
            let (hacs, ports, names) = (hacs.clone(), ports.clone(), names.clone());
            Box::pin(async move {
                let st = api(hacs.get(CLUSTER)).await?.status?;
                let s = st.shards.first()?;
                if s.target_primary.is_some() {
                    return None;
                }
                let i = names.iter().position(|n| Some(n.as_str()) == s.current_primary.as_deref())?;
                Some(("127.0.0.1".to_owned(), ports[i]))
            })
        })
    }
}

// ---------------------------------------------------------------------------------------
// Cluster state

#[derive(Clone, Debug)]
struct Seen {
    primary: usize,
    epoch: i64,
}

/// `INFO replication` of the server at host:port, as a map (None if it does not answer
/// within 300 ms: a frozen server).
async fn replication(host: &str, port: u16) -> Option<BTreeMap<String, String>> {
    let info: String = tokio::time::timeout(Duration::from_millis(300), async {
        let mut c = redis_conn(host, port, None, 300).await.ok()?;
        redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()
    })
    .await
    .ok()??;
    Some(
        info.lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// Status Healthy (one primary, all members healthy, no promotion under way) and the servers
/// agree with it: the primary has both replicas attached, each follows it with its link up.
/// With `settled` also: replicas caught up and the primary self-fencing with 2 good replicas.
async fn healthy_now(hacs: &Api<HaCluster>, site: &impl Site, settled: bool) -> Option<Seen> {
    let names = site.names();
    let c = api(hacs.get(site.cluster())).await?;
    let st = c.status?;
    let s = st.shards.first()?;
    let p = s.current_primary.as_deref()?;
    let pi = names.iter().position(|n| n == p)?;
    let ok = st.phase == Some(ClusterPhase::Healthy)
        && s.target_primary.is_none()
        && s.members.len() == 3
        && s.members.iter().all(|m| m.healthy)
        && s.members.iter().filter(|m| m.role == Role::Primary).count() == 1
        && s.members.iter().any(|m| m.name == p && m.role == Role::Primary)
        && (!settled || s.members.iter().all(|m| m.role != Role::Replica || m.lag.unwrap_or(1) == 0));
    let addrs = site.addrs().await;
    if std::env::var_os("CHAOS_DEBUG").is_some() {
        let ready =
            st.conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.reason.clone(), c.message.clone()));
        let roles: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{}:{:?}:{}:{:?}", m.name, m.role, m.healthy, m.upstream))
            .collect();
        let mut info = Vec::new();
        for (host, port) in addrs.iter().flatten() {
            let i = replication(host, *port).await.unwrap_or_default();
            let get = |k: &str| i.get(k).cloned().unwrap_or_default();
            info.push(format!(
                "{host}:{port}:{}/{}/{}/{}",
                get("role"),
                i.get("master_port").or(i.get("connected_slaves")).cloned().unwrap_or_default(),
                get("master_link_status"),
                get("min_slaves_good_slaves")
            ));
        }
        eprintln!(
            "  debug: ok={ok} phase {:?} lock {:?} ready {ready:?} {roles:?} {info:?}",
            st.phase,
            s.operation.as_ref().map(|o| &o.name)
        );
    }
    if !ok {
        return None;
    }
    let (phost, pport) = addrs.get(pi)?.clone()?;
    let info = replication(&phost, pport).await?;
    let get = |k: &str| info.get(k).map(String::as_str);
    if get("role") != Some("master") || get("connected_slaves") != Some("2") {
        return None;
    }
    if settled && get("min_slaves_good_slaves") != Some("2") {
        return None;
    }
    let primary_addr = format!("{phost}:{pport}");
    for (i, a) in addrs.iter().enumerate().filter(|(i, _)| *i != pi) {
        let (host, port) = a.clone()?;
        let info = replication(&host, port).await?;
        let get = |k: &str| info.get(k).map(String::as_str);
        let upstream = format!("{}:{}", get("master_host")?, get("master_port")?);
        if get("role") != Some("slave") || upstream != primary_addr || get("master_link_status") != Some("up")
        {
            if std::env::var_os("CHAOS_DEBUG").is_some() {
                eprintln!("  debug: member {i} follows {upstream}, primary at {primary_addr}");
            }
            return None;
        }
    }
    Some(Seen { primary: pi, epoch: s.epoch })
}

async fn wait_healthy(
    hacs: &Api<HaCluster>,
    site: &impl Site,
    settled: bool,
    until: Instant,
    with_operator: bool,
) -> Option<(Seen, Instant)> {
    loop {
        if let Some(seen) = healthy_now(hacs, site, settled).await
            && (!with_operator || site.operator_ready().await)
        {
            return Some((seen, Instant::now()));
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// One run

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Violation {
    TwoWritable,
    PlannedLoss,
    LossWithoutRoleChange,
    Deadline,
    NotHealthy,
}

impl Violation {
    fn name(self) -> &'static str {
        match self {
            Violation::TwoWritable => "two members took writes at once",
            Violation::PlannedLoss => "acknowledged writes lost in a planned operation",
            Violation::LossWithoutRoleChange => "acknowledged writes lost, primary unchanged",
            Violation::Deadline => "operation not terminal by its deadline",
            Violation::NotHealthy => "not Healthy within the bound",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Outcome {
    seed: u64,
    plan: Plan,
    violations: Vec<(Violation, String)>,
    /// Heal (or submission) → Healthy, ms.
    recovery_ms: Option<f64>,
    acked: usize,
    lost: usize,
    lost_detail: String,
    /// Unplanned failover with lost writes: lostOffset recorded (> 0)?
    lost_offset: Option<i64>,
    /// How far lastFailover said its lostOffset can be trusted.
    loss_accounting: Option<understudy::resources::hacluster::LossAccounting>,
    op_phase: Option<String>,
    /// Submission → terminal phase, ms.
    op_ms: Option<f64>,
    from: String,
    to: String,
    epochs: (i64, i64),
    errors: BTreeMap<String, usize>,
    pub logs: Vec<PathBuf>,
}

struct Bench<'a> {
    cp: &'a ControlPlane,
    client: Client,
    args: &'a Args,
    logs: PathBuf,
}

impl Outcome {
    pub(crate) fn violated(&self) -> bool {
        !self.violations.is_empty()
    }

    /// Acknowledged writes were lost and `lastFailover.lostOffset` does not say so.
    pub(crate) fn unrecorded_loss(&self) -> bool {
        self.lost > 0 && self.lost_offset.unwrap_or(0) == 0
    }
}

/// Runs one seeded plan end to end on some tier.
pub(crate) trait Runner {
    async fn run(&mut self, run: usize, seed: u64, plan: Plan) -> anyhow::Result<Outcome>;
}

impl Runner for Bench<'_> {
    async fn run(&mut self, run: usize, seed: u64, plan: Plan) -> anyhow::Result<Outcome> {
        let ns = format!("chaos-{run}");
        self.cp.create_namespace(&ns).await?;
        let redis: Vec<LocalRedis> = (0..3)
            .map(|_| LocalRedis::try_start_on("127.0.0.1", free_port()?, None))
            .collect::<anyhow::Result<_>>()?;
        let hacs: Api<HaCluster> = Api::namespaced(self.client.clone(), &ns);
        let members: Vec<_> =
            NAMES.iter().zip(&redis).map(|(n, r)| json!({"name": n, "endpoint": r.endpoint()})).collect();
        let hac: HaCluster = serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": CLUSTER},
            "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": members}],
                     "failover": {"heartbeatInterval": format!("{}ms", self.args.heartbeat()),
                                  "failureThreshold": 3, "maxLagOnFailover": 1_000_000_000_i64}}
        }))?;
        hacs.create(&PostParams::default(), &hac).await?;
        let op = Operator::start(&self.cp.kubeconfig_path(), &ns, &self.logs)?;
        let mut site =
            Loopback { cp: self.cp, redis, names: NAMES.iter().map(|n| (*n).to_owned()).collect(), op };
        let ops = Ops { client: &self.client, ns: &ns, suffix: "" };
        let result = run_in(self.args, &ops, run, seed, plan, &hacs, &mut site).await;
        site.op.kill().await;
        let _ = api(hacs.delete(CLUSTER, &DeleteParams::default())).await;
        drop(site.redis);
        let mut out = result?;
        if out.violations.is_empty() {
            for l in site.op.logs() {
                let _ = std::fs::remove_file(l);
            }
        } else {
            out.logs = site.op.logs();
        }
        Ok(out)
    }
}

/// One run on any site: wait until the cluster is settled, start the two clients, inject the
/// plan's fault, heal it, wait for Healthy, then check.
pub(crate) async fn run_in(
    args: &Args,
    ops: &Ops<'_>,
    run: usize,
    seed: u64,
    plan: Plan,
    hacs: &Api<HaCluster>,
    site: &mut impl Site,
) -> anyhow::Result<Outcome> {
    let bound = Duration::from_secs(args.bound_secs);
    let (start, _) = wait_healthy(hacs, site, true, Instant::now() + Duration::from_secs(120), true)
        .await
        .context("the new cluster did not settle within 120 s")?;
    let names = site.names().to_vec();
    let pi = start.primary;
    let replicas: Vec<usize> = (0..3).filter(|i| *i != pi).collect();
    let ri = replicas[plan.replica];
    let first_addrs = site.addrs().await;
    // Which member each address belonged to when it was seen (a recreated pod has a new one).
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    let mut learn = |addrs: &[Option<(String, u16)>]| {
        for (i, a) in addrs.iter().enumerate() {
            if let Some((h, p)) = a {
                known.insert(format!("{h}:{p}"), names[i].clone());
            }
        }
    };
    learn(&first_addrs);
    let stale = first_addrs[pi].clone().context("the primary's address")?;
    let servers = Servers::default();
    let clients = Clients::start(run, site.routed(hacs), stale, servers.clone());
    let t_start = Instant::now();
    let sampler = std::env::var_os("CHAOS_SAMPLE").map(|_| {
        let addrs: Vec<(String, u16)> = first_addrs.iter().flatten().cloned().collect();
        tokio::spawn(async move {
            loop {
                let mut line = format!("{:>8.1}", t_start.elapsed().as_secs_f64() * 1000.0);
                for (h, p) in &addrs {
                    let f = replication(h, *p).await.unwrap_or_default();
                    let get = |k: &str| f.get(k).cloned().unwrap_or_else(|| "-".to_owned());
                    line += &format!(
                        " | {h}:{p} {} off {} link {} slaves {} good {} mport {} read {} sync {} io {} s0 {}",
                        get("role"),
                        get("master_repl_offset"),
                        get("master_link_status"),
                        get("connected_slaves"),
                        get("min_slaves_good_slaves"),
                        get("master_port"),
                        get("slave_read_repl_offset"),
                        get("master_sync_in_progress"),
                        get("master_last_io_seconds_ago"),
                        get("slave0"),
                    );
                }
                eprintln!("  sample {line}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    });
    tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
    let mut violations = Vec::new();
    let mut op_phase = None;
    let mut op_ms = None;
    let injected = Instant::now();
    let hold = Duration::from_millis(plan.hold_ms);
    let healed = match plan.fault {
        Fault::KillPrimary | Fault::KillReplica => {
            let i = if plan.fault == Fault::KillPrimary { pi } else { ri };
            site.kill_member(i).await?;
            if !site.restarts_by_itself() {
                tokio::time::sleep(hold).await;
                site.revive_member(i).await?;
            }
            Instant::now()
        }
        Fault::StopPrimary | Fault::StopReplica => {
            let i = if plan.fault == Fault::StopPrimary { pi } else { ri };
            let pid = site.pid(i).await.with_context(|| format!("{}'s pid", names[i]))?;
            let frozen = Frozen::stop(pid);
            tokio::time::sleep(hold).await;
            drop(frozen);
            Instant::now()
        }
        Fault::KillOperator => {
            site.kill_operator().await?;
            if !site.restarts_by_itself() {
                tokio::time::sleep(hold).await;
                site.revive_operator().await?;
            }
            Instant::now()
        }
        Fault::StopApiserver => {
            let pid = site.apiserver_pid().context("kube-apiserver's pid not found")?;
            let frozen = Frozen::stop(pid);
            tokio::time::sleep(hold).await;
            drop(frozen);
            Instant::now()
        }
        Fault::Switchover | Fault::FailoverRequest => {
            let (phase, deadline_ok, detail) =
                ops.operation(run, plan.fault, site.cluster(), &names[pi]).await?;
            if !deadline_ok {
                violations.push((Violation::Deadline, detail.clone()));
            }
            op_phase = Some(phase);
            op_ms = Some(injected.elapsed().as_secs_f64() * 1000.0);
            // Recovery is counted from the submission.
            injected
        }
    };
    let until = healed + bound;
    let recovered = wait_healthy(hacs, site, false, until, true).await;
    let recovery_ms = recovered.as_ref().map(|(_, at)| (*at - healed).as_secs_f64() * 1000.0);
    // Let the routed client write on the (new) primary before stopping.
    if recovered.is_some() {
        let t = Instant::now();
        let end = t + Duration::from_secs(3);
        while clients.acks_after(t) < 200 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let log = clients.stop().await;
    if let Some(s) = sampler {
        s.abort();
    }
    let end_addrs = site.addrs().await;
    learn(&end_addrs);
    let label = |id: u16| {
        let addr = servers.addr(id);
        match known.get(&addr) {
            Some(name) if site.restarts_by_itself() => format!("{name} ({addr})"),
            Some(name) => name.clone(),
            None => addr,
        }
    };
    let st = api(hacs.get(site.cluster())).await.and_then(|c| c.status);
    let end = match &recovered {
        Some((seen, _)) => seen.clone(),
        None => {
            let s = st.as_ref().and_then(|s| s.shards.first());
            let name = s.and_then(|s| s.current_primary.clone()).unwrap_or_default();
            let epoch = s.map_or(start.epoch, |s| s.epoch);
            let pick = names.iter().position(|n| *n == name).unwrap_or(pi);
            violations.push((
                Violation::NotHealthy,
                format!(
                    "not Healthy {} s after the heal; phase {:?}, conditions: {}",
                    bound.as_secs(),
                    st.as_ref().and_then(|s| s.phase),
                    st.as_ref()
                        .map(|s| s
                            .conditions
                            .iter()
                            .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                            .collect::<Vec<_>>()
                            .join("; "))
                        .unwrap_or_default()
                ),
            ));
            Seen { primary: pick, epoch }
        }
    };

    // Two members taking writes at once.
    let (switches, witness) = forced_switches(&log.acks);
    let promotions = (end.epoch - start.epoch).max(0) as usize;
    if switches > promotions {
        let chain: Vec<String> = witness
            .iter()
            .map(|&i| {
                let a = &log.acks[i];
                format!(
                    "{} w{}#{} [{:+.1}, {:+.1}] ms",
                    label(a.server),
                    a.writer,
                    a.seq,
                    rel_ms(a.sent, injected),
                    rel_ms(a.acked, injected)
                )
            })
            .collect();
        violations.push((
            Violation::TwoWritable,
            format!(
                "{switches} forced changes of the writable member but {promotions} promotion(s); chain (times from the fault): {}",
                chain.join(" → ")
            ),
        ));
    }

    // Lost acknowledged writes, checked on the primary at the end.
    let lost_idx = match (&recovered, end_addrs.get(end.primary).cloned().flatten()) {
        (Some(_), Some((h, p))) => missing(&log.acks, run, (&h, p)).await?,
        _ => vec![],
    };
    let lost = lost_idx.len();
    let lost_detail = describe_missing(&log.acks, &lost_idx, &label, injected);
    let mut lost_offset = None;
    let mut loss_accounting = None;
    if lost > 0 {
        if plan.fault.planned() {
            violations.push((
                Violation::PlannedLoss,
                format!("{lost} of {} acknowledged writes missing on {}", log.acks.len(), names[end.primary]),
            ));
        } else if end.primary == pi {
            violations.push((
                Violation::LossWithoutRoleChange,
                format!(
                    "{lost} of {} acknowledged writes missing on {} (primary throughout, epoch {} → {}): {lost_detail}",
                    log.acks.len(),
                    names[pi],
                    start.epoch,
                    end.epoch
                ),
            ));
        } else {
            // Recorded when the old primary is re-attached (or at the promotion).
            let t = Instant::now() + Duration::from_secs(10);
            loop {
                let lf =
                    api(hacs.get(site.cluster())).await.and_then(|c| c.status).and_then(|s| s.last_failover);
                lost_offset = lf.as_ref().map(|l| l.lost_offset.unwrap_or(0));
                loss_accounting = lf.as_ref().and_then(|l| l.loss_accounting);
                let reattached = lf.as_ref().is_some_and(|l| l.steps.iter().any(|s| s.name == "reattach"));
                if lost_offset.unwrap_or(0) > 0 && reattached || Instant::now() > t {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(Outcome {
        seed,
        plan,
        violations,
        recovery_ms,
        acked: log.acks.len(),
        lost,
        lost_detail,
        lost_offset,
        loss_accounting,
        op_phase,
        op_ms,
        from: names[pi].clone(),
        to: names[end.primary].clone(),
        epochs: (start.epoch, end.epoch),
        errors: log.errors,
        logs: vec![],
    })
}

/// Submits the planned operations of a run.
pub(crate) struct Ops<'a> {
    pub client: &'a Client,
    pub ns: &'a str,
    /// Appended to the operation's name (a namespace shared by runs needs new names).
    pub suffix: &'a str,
}

impl Ops<'_> {
    /// Submit the operation and wait until it is terminal or past its deadline (+ slack).
    /// Returns (final phase, terminal in time, detail).
    async fn operation(
        &self,
        run: usize,
        fault: Fault,
        cluster: &str,
        primary: &str,
    ) -> anyhow::Result<(String, bool, String)> {
        let submitted = Instant::now();
        let suffix = if self.suffix.is_empty() { String::new() } else { format!("-{run}") };
        match fault {
            Fault::Switchover => {
                let api_: Api<ShardFailover> = Api::namespaced(self.client.clone(), self.ns);
                let name = format!("sw{suffix}");
                let sfo: ShardFailover = serde_json::from_value(json!({
                    "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover", "metadata": {"name": name},
                    "spec": {"shardUids": [primary], "timeoutSeconds": SFO_TIMEOUT_SECS}
                }))?;
                api_.create(&PostParams::default(), &sfo).await?;
                let budget = Duration::from_secs(SFO_TIMEOUT_SECS as u64);
                let what = format!("ShardFailover (timeoutSeconds {SFO_TIMEOUT_SECS})");
                Ok(await_terminal(submitted, budget, &what, || async {
                    let s = api(api_.get(&name)).await.and_then(|s| s.status).unwrap_or_default();
                    let terminal =
                        matches!(s.phase, Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed));
                    let message = format!("{:?} {}", s.error_code, s.message.unwrap_or_default());
                    (s.phase.map(|p| format!("{p:?}")), terminal, message)
                })
                .await)
            }
            _ => {
                let api_: Api<FailoverRequest> = Api::namespaced(self.client.clone(), self.ns);
                let name = format!("fr{suffix}");
                let fr: FailoverRequest = serde_json::from_value(json!({
                    "apiVersion": "understudy.dev/v1alpha1", "kind": "FailoverRequest", "metadata": {"name": name},
                    "spec": {"type": "Switchover", "timeoutSeconds": FR_TIMEOUT_SECS,
                             "items": [{"cluster": cluster, "expectedPrimary": primary}]}
                }))?;
                api_.create(&PostParams::default(), &fr).await?;
                let budget = Duration::from_secs((FR_TIMEOUT_SECS * FR_SUBTASKS) as u64);
                let what = format!("FailoverRequest (timeoutSeconds {FR_TIMEOUT_SECS} per subtask)");
                Ok(await_terminal(submitted, budget, &what, || async {
                    let s = api(api_.get(&name)).await.and_then(|s| s.status).unwrap_or_default();
                    let terminal = s.phase.is_some_and(RequestPhase::is_terminal);
                    (s.phase.map(|p| format!("{p:?}")), terminal, s.message.unwrap_or_default())
                })
                .await)
            }
        }
    }
}

/// Poll an operation's (phase, terminal, message) every 10 ms until it is terminal or its
/// budget (+ slack) from `submitted` has passed. Returns (final phase, terminal in time, detail).
async fn await_terminal<F, Fut>(
    submitted: Instant,
    budget: Duration,
    what: &str,
    read: F,
) -> (String, bool, String)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (Option<String>, bool, String)>,
{
    let deadline = submitted + budget + DEADLINE_SLACK;
    loop {
        let (phase, terminal, message) = read().await;
        let phase = phase.unwrap_or_else(|| "no phase".into());
        if terminal {
            return (phase.clone(), true, format!("{phase} {message}"));
        }
        if Instant::now() > deadline {
            let detail = format!(
                "{what} still {phase} {:.1} s after submission: {message}",
                submitted.elapsed().as_secs_f64()
            );
            return (format!("{phase} (stuck)"), false, detail);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The scenario

/// `node`: the node tier (`bench chaos-node`) instead of loopback processes.
pub async fn chaos(args: &Args, node: bool) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let base = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            % 1_000_000_000
    });
    let kinds: Vec<Fault> = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        let mut k = Vec::new();
        for name in &args.faults {
            let f = Fault::ALL.iter().find(|f| f.name() == name.as_str()).with_context(|| {
                let all: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("--faults: no fault {name:?} (one of {})", all.join(", "))
            })?;
            k.push(*f);
        }
        k
    };
    let logs = std::env::temp_dir().join(format!("understudy-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    eprintln!(
        "chaos: {} runs from seed {base}; operator logs of violating runs kept in {}",
        args.runs,
        logs.display()
    );
    let (outcomes, errors) = if node {
        let mut bench = super::chaos_node::NodeBench::up(args, logs).await?;
        let r = all_runs(args, base, &kinds, &mut bench).await;
        bench.down();
        r
    } else {
        let cp = ControlPlane::start(Options { controller_manager: false, keep: false }).await?;
        cp.install_generated_crds().await?;
        let client = cp.client().await?;
        let mut bench = Bench { cp: &cp, client, args, logs };
        all_runs(args, base, &kinds, &mut bench).await
    };
    let tier = if node {
        "node tier: 3 redis pods of a StatefulSet, operator as 2 pods (Helm), routed client through the ClusterIP"
    } else {
        "loopback: 3 redis-server processes, operator as a process"
    };
    Ok(report(args, base, tier, &outcomes, &errors))
}

type RunError = (u64, Fault, String);

async fn all_runs(
    args: &Args,
    base: u64,
    kinds: &[Fault],
    bench: &mut impl Runner,
) -> (Vec<Outcome>, Vec<RunError>) {
    let max_outage_ms = args.max_outage_secs.max(1) * 1000;
    let max_hold_ms = args.max_hold_secs.max(1) * 1000;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut errors: Vec<RunError> = Vec::new();
    for run in 0..args.runs {
        let seed = base.wrapping_add(run as u64);
        let plan = Plan::draw(seed, kinds, max_outage_ms, max_hold_ms);
        let what = describe(&plan);
        match bench.run(run, seed, plan.clone()).await {
            Ok(o) => {
                eprintln!(
                    "run {run} seed {seed}: {what}: {} → {} (epoch {} → {}), recovery {}, {} acked, {} lost{}{} — {}",
                    o.from,
                    o.to,
                    o.epochs.0,
                    o.epochs.1,
                    o.recovery_ms.map_or("none".to_owned(), |r| format!("{r:.0} ms")),
                    o.acked,
                    o.lost,
                    o.lost_offset.map_or(String::new(), |l| format!(" (lostOffset {l}: {})", o.lost_detail)),
                    o.op_phase.as_ref().map_or(String::new(), |p| format!(", operation {p}")),
                    if o.violations.is_empty() {
                        "ok".to_owned()
                    } else {
                        format!("VIOLATION {:?}", o.violations)
                    }
                );
                outcomes.push(o);
            }
            Err(e) => {
                eprintln!("run {run} seed {seed}: {what}: harness error: {e:#}");
                errors.push((seed, plan.fault, format!("{e:#}")));
            }
        }
    }
    (outcomes, errors)
}

fn describe(p: &Plan) -> String {
    let target = match p.fault {
        Fault::KillReplica | Fault::StopReplica => format!(" (replica #{})", p.replica),
        _ => String::new(),
    };
    match p.fault {
        Fault::Switchover | Fault::FailoverRequest => format!("{} after {} ms", p.fault.name(), p.delay_ms),
        _ => format!("{}{target} after {} ms, held {} ms", p.fault.name(), p.delay_ms, p.hold_ms),
    }
}

fn report(
    args: &Args,
    base: u64,
    tier: &str,
    outcomes: &[Outcome],
    errors: &[RunError],
) -> (String, Vec<Stats>, Vec<String>) {
    let title = format!(
        "Chaos: one random fault per run ({tier}), heartbeat {} ms × 3, Healthy bound {} s, apiserver outages ≤ {} s, other holds ≤ {} s",
        args.heartbeat(),
        args.bound_secs,
        args.max_outage_secs,
        args.max_hold_secs
    );
    let mut stats = Vec::new();
    let mut by_kind: BTreeMap<Fault, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_kind.entry(o.plan.fault).or_default().push(o);
    }
    for (f, os) in &by_kind {
        stats.push(Stats {
            name: format!("recovery after {} (→ Healthy)", f.name()),
            values_ms: os.iter().filter_map(|o| o.recovery_ms).collect(),
        });
    }
    for (f, os) in by_kind.iter().filter(|(f, _)| f.planned()) {
        stats.push(Stats {
            name: format!("{} submitted → terminal", f.name()),
            values_ms: os.iter().filter_map(|o| o.op_ms).collect(),
        });
    }
    let mut extra = Vec::new();
    let kinds: Vec<String> = by_kind.iter().map(|(f, os)| format!("{} {}", f.name(), os.len())).collect();
    extra.push(format!(
        "runs: {} (seeds {base}..{}), completed {}, harness errors {}; faults: {}",
        args.runs,
        base.wrapping_add(args.runs as u64 - 1),
        outcomes.len(),
        errors.len(),
        kinds.join(", ")
    ));
    let mut violations: BTreeMap<Violation, Vec<u64>> = BTreeMap::new();
    for o in outcomes {
        for (v, _) in &o.violations {
            violations.entry(*v).or_default().push(o.seed);
        }
    }
    if violations.is_empty() {
        extra.push("violations: none".to_owned());
    } else {
        let v: Vec<String> = violations
            .iter()
            .map(|(v, seeds)| format!("{} ×{} (seeds {seeds:?})", v.name(), seeds.len()))
            .collect();
        extra.push(format!("violations: {}", v.join("; ")));
        for o in outcomes.iter().filter(|o| !o.violations.is_empty()) {
            for (v, d) in &o.violations {
                extra.push(format!("- seed {} {}: {}: {d}", o.seed, describe(&o.plan), v.name()));
            }
            if !o.logs.is_empty() {
                extra.push(format!(
                    "  operator logs: {}",
                    o.logs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
                ));
            }
        }
    }
    let unplanned_lost: Vec<&Outcome> =
        outcomes.iter().filter(|o| !o.plan.fault.planned() && o.lost > 0 && o.from != o.to).collect();
    let recorded = unplanned_lost.iter().filter(|o| o.lost_offset.unwrap_or(0) > 0).count();
    let unrecorded: Vec<u64> =
        unplanned_lost.iter().filter(|o| o.lost_offset.unwrap_or(0) <= 0).map(|o| o.seed).collect();
    // Of those, the ones whose record said its figure was only a floor (the old primary's
    // writes after its last probe not known): honest, if not a measurement.
    let floors = unplanned_lost
        .iter()
        .filter(|o| {
            o.lost_offset.unwrap_or(0) <= 0
                && o.loss_accounting == Some(understudy::resources::hacluster::LossAccounting::AtLeast)
        })
        .count();
    let failovers = outcomes.iter().filter(|o| !o.plan.fault.planned() && o.from != o.to).count();
    extra.push(format!(
        "unplanned failovers: {failovers}; with acknowledged writes lost: {} ({} writes), lastFailover.lostOffset > 0 in {recorded}{}",
        unplanned_lost.len(),
        unplanned_lost.iter().map(|o| o.lost).sum::<usize>(),
        if unrecorded.is_empty() {
            String::new()
        } else {
            format!(" (not recorded: seeds {unrecorded:?}; {floors} of them said lossAccounting AtLeast)")
        }
    ));
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.plan.fault.planned()) {
        *ops.entry(format!("{} {}", o.plan.fault.name(), o.op_phase.as_deref().unwrap_or("?")))
            .or_default() += 1;
    }
    if !ops.is_empty() {
        extra.push(format!(
            "operations: {}",
            ops.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        ));
    }
    extra.push(format!(
        "acknowledged writes: {}; lost in planned operations: {}",
        outcomes.iter().map(|o| o.acked).sum::<usize>(),
        outcomes.iter().filter(|o| o.plan.fault.planned()).map(|o| o.lost).sum::<usize>()
    ));
    for (seed, f, e) in errors {
        extra.push(format!("harness error, seed {seed} ({}): {e}", f.name()));
    }
    extra.push(format!(
        "replay one run: cargo run --release --bin bench -- {} --runs 1 --seed <seed> --max-outage-secs {} --max-hold-secs {} --bound-secs {} --heartbeat-ms {}{}",
        if tier.starts_with("node") { "chaos-node" } else { "chaos" },
        args.max_outage_secs,
        args.max_hold_secs,
        args.bound_secs,
        args.heartbeat(),
        if args.faults.is_empty() { String::new() } else { format!(" --faults {}", args.faults.join(",")) }
    ));
    if let Some(path) = &args.json {
        let runs: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| {
                json!({"seed": o.seed, "fault": o.plan.fault.name(), "delayMs": o.plan.delay_ms,
                       "holdMs": o.plan.hold_ms, "replica": o.plan.replica, "from": o.from, "to": o.to,
                       "epochs": [o.epochs.0, o.epochs.1], "recoveryMs": o.recovery_ms, "acked": o.acked,
                       "lost": o.lost, "lostDetail": o.lost_detail, "lostOffset": o.lost_offset, "lossAccounting": o.loss_accounting, "operation": o.op_phase, "operationMs": o.op_ms,
                       "clientErrors": o.errors,
                       "violations": o.violations.iter().map(|(v, d)| json!({"kind": v.name(), "detail": d})).collect::<Vec<_>>()})
            })
            .collect();
        let file = path.with_extension("runs.json");
        if let Err(e) = serde_json::to_string_pretty(&runs).map_err(anyhow::Error::from).and_then(|s| {
            std::fs::write(&file, s)?;
            Ok(())
        }) {
            eprintln!("writing {}: {e:#}", file.display());
        } else {
            extra.push(format!("per-run details: {}", file.display()));
        }
    }
    (title, stats, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(server: u16, sent: u64, acked: u64, t0: Instant) -> Ack {
        Ack {
            writer: 0,
            seq: 0,
            server,
            sent: t0 + Duration::from_millis(sent),
            acked: t0 + Duration::from_millis(acked),
        }
    }

    #[test]
    fn ordered_writes_on_two_servers_force_switches() {
        let t0 = Instant::now();
        // a, then b, then a again, each acknowledged before the next was sent: 2 changes.
        let acks = [ack(1, 0, 1, t0), ack(2, 2, 3, t0), ack(1, 4, 5, t0)];
        assert_eq!(forced_switches(&acks).0, 2);
        // One change only.
        let acks = [ack(1, 0, 1, t0), ack(1, 2, 3, t0), ack(2, 4, 5, t0)];
        assert_eq!(forced_switches(&acks).0, 1);
    }

    #[test]
    fn a_write_queued_across_the_change_proves_nothing() {
        let t0 = Instant::now();
        // a's second write was sent before b's and acknowledged after it (a frozen primary
        // answering after the thaw): the order a, a, b is possible — one change.
        let acks = [ack(1, 0, 1, t0), ack(2, 10, 11, t0), ack(1, 5, 50, t0)];
        assert_eq!(forced_switches(&acks).0, 1);
    }

    #[test]
    fn plans_replay_from_their_seed() {
        let a = Plan::draw(42, &Fault::ALL, 60_000, 15_000);
        let b = Plan::draw(42, &Fault::ALL, 60_000, 15_000);
        assert_eq!((a.fault, a.delay_ms, a.hold_ms, a.replica), (b.fault, b.delay_ms, b.hold_ms, b.replica));
        let kinds: std::collections::BTreeSet<Fault> =
            (0..200).map(|s| Plan::draw(s, &Fault::ALL, 60_000, 15_000).fault).collect();
        assert_eq!(kinds.len(), Fault::ALL.len());
        for s in 0..500 {
            let p = Plan::draw(s, &Fault::ALL, 60_000, 15_000);
            let max = if p.fault == Fault::StopApiserver { 60_000 } else { 15_000 };
            assert!(p.hold_ms <= max, "seed {s}: {:?} held {} ms", p.fault, p.hold_ms);
            if p.fault == Fault::StopApiserver {
                assert!(p.hold_ms >= 5_000, "seed {s}: an outage of {} ms", p.hold_ms);
            }
        }
    }
}
