//! Benchmarks: programs that print numbers. Each scenario runs on the local control plane with
//! real redis-server processes, prints a table (median, p99, max, runs) and can write JSON.
//!
//!   cargo run --release --bin bench -- switchover --runs 20
//!   cargo run --release --bin bench -- failover --runs 30
//!   cargo run --release --bin bench -- sentinel-failover --runs 30
//!   cargo run --release --bin bench -- sentinel-switchover --runs 30
//!   cargo run --release --bin bench -- site-failover --runs 10
//!   cargo run --release --bin bench -- scale --clusters 1000
//!   cargo run --release --bin bench -- storm --clusters 1000 --fail 100
//!   cargo run --release --bin bench -- node --runs 10          (root: a real node, see tools/node)
//!   cargo run --release --bin bench -- lifecycle --runs 20     (root: a real node; spec.instances vs StatefulSet)
//!   cargo run --release --bin bench -- chaos --runs 60 --max-outage-secs 15
//!   cargo run --release --bin bench -- chaos-node --runs 110   (root: a real node, pods)
//!   cargo run --release --bin bench -- mysql --runs 5          (root: MHA 0.58 beside, see tools/mha)
//!
//! A client writes sequenced keys (one every millisecond) to whatever the system says is the
//! primary (Understudy: the HaCluster status; Sentinel: `SENTINEL get-master-addr-by-name`),
//! reconnecting on errors. Measured per run: the longest gap between two acknowledged writes
//! around the event (write pause / end-to-end), and acknowledged writes missing afterwards.

mod chaos;
mod chaos_node;
mod discovery;
mod lifecycle;
mod mysql;
mod node;
mod scale;
mod sim;
mod site_loss;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use understudy::{
    controlplane::{ControlPlane, Options, free_port},
    localredis::LocalRedis,
    operator::InProcess,
    resources::{
        HaCluster, ProtectionGroup, ShardFailover,
        hacluster::Role,
        protection_group::{ProtectionGroupStatus, ProtectionPhase, SiteRole},
        shard_failover::ShardFailoverPhase,
    },
};

#[derive(Parser)]
struct Args {
    scenario: Scenario,
    /// Repetitions.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Heartbeat interval in ms (detection = 3 heartbeats; Sentinel's down-after-milliseconds
    /// is set to the same window). Default 200, or the product default 1000 for scale/storm.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// discovery: run the operator pods with promotions logged effect by effect
    /// (`understudy::controllers::promotion=debug`) and save their logs here at the end.
    #[arg(long)]
    operator_logs: Option<std::path::PathBuf>,
    /// site-failover: the production site's members are lost (frozen) and a forced failover
    /// is requested at once; they return after it and are fenced and re-protected.
    #[arg(long)]
    forced: bool,
    /// site-failover --forced: before the production site is lost, its DR side misses this
    /// many ms of acknowledged writes on purpose (its members frozen, their link cut), so the
    /// loss the group records can be set against what the client lost. 0: no such window.
    #[arg(long, default_value_t = 0)]
    behind_ms: u64,
    /// scale/storm: how many HaClusters.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// scale/storm: simulated agents per cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// storm: how many primaries die at once.
    #[arg(long, default_value_t = 100)]
    fail: usize,
    /// scale: spec edits timed through watch → reconcile → status.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// scale/storm: seconds to let things settle after the first full reconcile.
    #[arg(long, default_value_t = 15)]
    settle_secs: u64,
    /// scale/storm: create the clusters with `routing.enabled: false` (no Services); at
    /// 10,000 clusters the API server's ClusterIP allocation otherwise dominates the setup.
    #[arg(long)]
    no_routing: bool,
    /// scale: length of the steady-state measurement window, seconds.
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// chaos: seed of the first run (run i uses seed + i); `--runs 1 --seed S` replays run S.
    #[arg(long)]
    seed: Option<u64>,
    /// chaos: longest kube-apiserver outage, seconds (it is stopped for 5 s to this).
    #[arg(long, default_value_t = 60)]
    max_outage_secs: u64,
    /// chaos: longest hold of a member or operator fault (frozen, or dead before restart), seconds.
    #[arg(long, default_value_t = 15)]
    max_hold_secs: u64,
    /// chaos: draw faults only from these (comma-separated: kill-primary, kill-replica,
    /// stop-primary, stop-replica, kill-operator, stop-apiserver, switchover, failover-request).
    /// discovery: run only these ways (a, b, c, c', d, e, f).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// chaos: the cluster must be Healthy again within this many seconds of the heal.
    #[arg(long, default_value_t = 60)]
    bound_secs: u64,
    /// lifecycle: keep the operator's debug log and kube-proxy's sync log here, print each
    /// run's pause in wall-clock time to match them against, and skip the peer.
    #[arg(long)]
    trace_dir: Option<std::path::PathBuf>,
    // Child processes of scale/storm (not for direct use).
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    count: usize,
    #[arg(long, hide = true)]
    kubeconfig: Option<std::path::PathBuf>,
    #[arg(long, hide = true, default_value = "scale")]
    namespace: String,
    #[arg(long, hide = true)]
    listen: Option<std::net::SocketAddr>,
}

impl Args {
    fn heartbeat(&self) -> u64 {
        self.heartbeat_ms.unwrap_or(match self.scenario {
            Scenario::Scale | Scenario::Storm => 1000,
            _ => 200,
        })
    }
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Scenario {
    Switchover,
    Failover,
    SentinelFailover,
    SentinelSwitchover,
    /// ProtectionGroup planned failover between two sites (alternating directions).
    SiteFailover,
    /// 1,000s of HaClusters of simulated agents: memory, first reconcile, steady-state cost.
    Scale,
    /// Many primaries die at once among many clusters.
    Storm,
    /// Failover and switchover through a Service ClusterIP with the operator as pods in a real
    /// node (tools/node/node.sh; needs root), beside the loopback figures.
    Node,
    /// What one client sees of failover and switchover in a real node (needs root): a
    /// ClusterIP client with default and tuned kube-proxy, a Sentinel client against
    /// Understudy's discovery endpoint and against real Redis Sentinel on the same pods.
    Discovery,
    /// An ordered restart of three members through the primary Service in a real node:
    /// spec.instances beside a StatefulSet rollout restart (needs root).
    Lifecycle,
    /// Randomized fault injection: one random fault per run, checked for split brain, lost
    /// writes, operation deadlines and recovery to Healthy.
    Chaos,
    /// The same fault loop in a real node (needs root): redis pods, the operator as pods
    /// (Helm), the routed client through the primary Service.
    ChaosNode,
    /// Engine Mysql beside MHA 0.58 on three local MariaDB servers: failover and switchover
    /// (root: MHA needs its own sshd; tools/mha/mha.sh).
    Mysql,
    /// (child process) simulated agents.
    #[value(hide = true)]
    Simulate,
    /// (child process) the operator alone.
    #[value(hide = true)]
    Operator,
}

/// One acknowledged-write log, shared with the writer task.
#[derive(Default)]
struct Log {
    acks: Vec<(u64, Instant)>,
}

type Resolver = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<(String, u16)>> + Send + Sync>;

/// The client of one run: writes `prefix:<seq>` every millisecond to the primary `resolve`
/// names, reconnecting on error, and logs every acknowledgement.
struct Writer {
    prefix: String,
    log: Arc<Mutex<Log>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Start writing, and return once it has run for 300 ms (the baseline before the event).
    async fn start(prefix: String, resolve: Resolver) -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = write_loop(prefix.clone(), resolve, log.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self { prefix, log, stop, task }
    }

    /// Call once the new primary is recorded: wait until the client writes again, let it
    /// settle for `settle_ms`, stop it, and return (longest gap in ms around the event at
    /// `t0`, acknowledged writes missing on `primary`, acknowledged writes).
    async fn finish(
        self,
        t0: Instant,
        settle_ms: u64,
        primary: (&str, u16),
    ) -> anyhow::Result<(f64, usize, usize)> {
        let (gap, _, missing, n) = self.finish_detailed(t0, settle_ms, primary).await?;
        Ok((gap, missing.len(), n))
    }

    /// Stop without checking anything (there is no primary to check against); returns how
    /// many writes had been acknowledged.
    fn abandon(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.abort();
        self.log.lock().expect("log").acks.len()
    }

    /// [`Writer::finish`], plus when the longest gap began.
    async fn finish_detailed(
        self,
        t0: Instant,
        settle_ms: u64,
        primary: (&str, u16),
    ) -> anyhow::Result<(f64, Option<Instant>, Vec<u64>, usize)> {
        // Wait until the client writes again (50 acknowledgements after the new primary was
        // seen in status, i.e. after this call), at most 10 s; a gap that never closes is then
        // reported as running to the end of the run, not hidden.
        let resumed_after = Instant::now();
        let deadline = resumed_after + Duration::from_secs(10);
        while Instant::now() < deadline
            && self.log.lock().expect("log").acks.iter().filter(|(_, at)| *at > resumed_after).count() < 50
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(settle_ms)).await;
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.task.await;
        let end = Instant::now();
        let log = std::mem::take(&mut *self.log.lock().expect("log"));
        let (mut gap, mut began) = longest_gap_at(&log, t0 - Duration::from_millis(300), end);
        if !log.acks.iter().any(|(_, at)| *at > resumed_after) {
            // No write got through after the switch: the gap runs to the end of the run.
            let last = log.acks.last().map_or(t0, |(_, at)| *at);
            if end - last > gap {
                (gap, began) = (end - last, Some(last));
            }
        }
        let gap = gap.as_secs_f64() * 1000.0;
        let missing = lost(&log, &self.prefix, primary.0, primary.1).await?;
        Ok((gap, began, missing, log.acks.len()))
    }
}

/// The bytes `SET <key> <value>` takes in Redis's replication stream (RESP).
fn set_command_bytes(key: &str, value: &str) -> usize {
    let bulk = |s: &str| 1 + s.len().to_string().len() + 2 + s.len() + 2;
    4 + bulk("SET") + bulk(key) + bulk(value)
}

fn write_loop(
    prefix: String,
    resolve: Resolver,
    log: Arc<Mutex<Log>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            tick.tick().await;
            if conn.is_none() {
                if let Some((host, port)) = resolve().await {
                    conn = understudy::localredis::redis_conn(&host, port, None, 300).await.ok();
                }
                if conn.is_none() {
                    continue;
                }
            }
            let c = conn.as_mut().expect("connected");
            let r: redis::RedisResult<()> =
                redis::cmd("SET").arg(format!("{prefix}:{seq}")).arg(seq).query_async(c).await;
            match r {
                Ok(()) => {
                    log.lock().expect("log").acks.push((seq, Instant::now()));
                    seq += 1;
                }
                Err(_) => conn = None,
            }
        }
    })
}

/// Longest gap between consecutive acknowledgements in [from, to], and when it began.
fn longest_gap_at(log: &Log, from: Instant, to: Instant) -> (Duration, Option<Instant>) {
    let times: Vec<Instant> = log.acks.iter().map(|a| a.1).filter(|t| *t >= from && *t <= to).collect();
    times.windows(2).map(|w| (w[1] - w[0], Some(w[0]))).max_by_key(|g| g.0).unwrap_or_default()
}

/// Acknowledged keys missing on the server at host:port.
/// The acknowledged writes of `log` missing on the server at `host:port`, by sequence number.
async fn lost(log: &Log, prefix: &str, host: &str, port: u16) -> anyhow::Result<Vec<u64>> {
    let mut c = understudy::localredis::redis_conn(host, port, None, 5000).await?;
    let mut missing = Vec::new();
    for chunk in log.acks.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|(s, _)| format!("{prefix}:{s}")).collect();
        let vals: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        missing.extend(chunk.iter().zip(&vals).filter(|(_, v)| v.is_none()).map(|((s, _), _)| *s));
    }
    Ok(missing)
}

struct Stats {
    name: String,
    values_ms: Vec<f64>,
}

impl Stats {
    fn row(&self) -> String {
        let mut v = self.values_ms.clone();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
        format!(
            "| {:<42} | {:>9.1} | {:>9.1} | {:>9.1} | {:>4} |",
            self.name,
            q(0.5),
            q(0.99),
            q(1.0),
            v.len()
        )
    }
    fn json(&self) -> serde_json::Value {
        json!({"name": self.name, "values_ms": self.values_ms})
    }
}

fn print_table(title: &str, stats: &[Stats], extra: &[String]) {
    println!("\n### {title}\n");
    println!("| {:<42} | {:>9} | {:>9} | {:>9} | {:>4} |", "metric (ms)", "median", "p99", "max", "runs");
    println!(
        "|{}|{}|{}|{}|{}|",
        "-".repeat(44),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(6)
    );
    for s in stats {
        println!("{}", s.row());
    }
    for e in extra {
        println!("\n{e}");
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if scale::is_child(args.scenario) {
        return child(&args);
    }
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

fn child(args: &Args) -> anyhow::Result<()> {
    if matches!(args.scenario, Scenario::Simulate) {
        // One thread: the simulators must not take the cores the operator is measured on.
        let token = std::env::var("BENCH_AGENT_TOKEN").context("BENCH_AGENT_TOKEN")?;
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(sim::run(args.first, args.count, token));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(scale::operator_child(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let (title, stats, extra) = match args.scenario {
        Scenario::Switchover | Scenario::Failover => {
            understudy_bench(&args, matches!(args.scenario, Scenario::Switchover)).await?
        }
        Scenario::Node => node::node(&args).await?,
        Scenario::Discovery => discovery::discovery(&args).await?,
        Scenario::Lifecycle => lifecycle::lifecycle(&args).await?,
        Scenario::Chaos => chaos::chaos(&args, false).await?,
        Scenario::ChaosNode => chaos::chaos(&args, true).await?,
        Scenario::Mysql => mysql::mysql(&args).await?,
        Scenario::SentinelFailover | Scenario::SentinelSwitchover => sentinel_bench(&args).await?,
        Scenario::SiteFailover if args.forced => site_loss::site_loss(&args).await?,
        Scenario::SiteFailover => site_bench(&args).await?,
        Scenario::Scale => scale::scale(&args).await?,
        Scenario::Storm => scale::storm(&args).await?,
        Scenario::Simulate | Scenario::Operator => unreachable!("child processes return earlier"),
    };
    print_table(&title, &stats, &extra);
    if let Some(path) = &args.json {
        let doc = json!({"scenario": format!("{:?}", args.scenario), "title": title, "runs": args.runs,
            "heartbeat_ms": args.heartbeat(), "stats": stats.iter().map(Stats::json).collect::<Vec<_>>(), "notes": extra});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

const NS: &str = "bench";

async fn understudy_bench(
    args: &Args,
    switchover: bool,
) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let cp = ControlPlane::start(Options { controller_manager: false, keep: false }).await?;
    cp.install_generated_crds().await?;
    let client = cp.client().await?;
    cp.create_namespace(NS).await?;
    let mut redis: Vec<LocalRedis> = (0..3)
        .map(|_| LocalRedis::try_start_on("127.0.0.1", free_port()?, None))
        .collect::<anyhow::Result<_>>()?;
    let names = ["m0", "m1", "m2"];
    let op = InProcess::start(client.clone(), NS);
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), NS);
    let members: Vec<_> =
        names.iter().zip(&redis).map(|(n, r)| json!({"name": n, "endpoint": r.endpoint()})).collect();
    let hac: HaCluster = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "b"},
        "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": members}],
                 "failover": {"heartbeatInterval": format!("{}ms", args.heartbeat()), "failureThreshold": 3}}
    }))?;
    hacs.create(&PostParams::default(), &hac).await?;
    let ports: Vec<u16> = redis.iter().map(|r| r.port).collect();
    let resolve = status_resolver(&hacs, names, ports.clone());

    let mut pause = Stats { name: String::new(), values_ms: vec![] };
    let mut detect =
        Stats { name: "detection + client re-resolve (end-to-end − promotion)".into(), values_ms: vec![] };
    let mut promote =
        Stats { name: "promotion (decision → new primary recorded)".into(), values_ms: vec![] };
    let mut lost_total = 0usize;
    let mut acked_total = 0usize;
    pause.name = if switchover {
        "write pause (last ack before → first after)".into()
    } else {
        "end-to-end (last ack on old → first on new)".into()
    };
    for run in 0..args.runs {
        let primary = wait_settled(&hacs).await?;
        let pi = names.iter().position(|n| *n == primary).context("primary")?;
        let writer = Writer::start(format!("r{run}"), resolve.clone()).await;
        let t0 = Instant::now();
        if switchover {
            let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), NS);
            let name = format!("sw-{run}");
            switch_over(&sfos, &name, &primary).await?;
            let _ = sfos.delete(&name, &DeleteParams::default()).await;
        } else {
            redis[pi].kill();
        }
        let new = wait_new_primary(&hacs, &primary).await?;
        let ni = names.iter().position(|n| *n == new).context("new")?;
        let (gap, missing, acked) = writer.finish(t0, 500, ("127.0.0.1", ports[ni])).await?;
        pause.values_ms.push(gap);
        lost_total += missing;
        acked_total += acked;
        let st = hacs.get("b").await?.status.unwrap_or_default();
        if let Some(lf) = st.last_failover.as_ref().filter(|_| !switchover) {
            let promotion = lf.duration_ms.unwrap_or_default() as f64;
            promote.values_ms.push(promotion);
            // What is not promotion is detection (and the client finding the new primary).
            detect.values_ms.push(pause.values_ms.last().copied().unwrap_or_default() - promotion);
        }
        if !switchover {
            redis[pi].try_spawn()?;
        }
        eprintln!(
            "run {run}: {primary} → {new}, {:.1} ms",
            pause.values_ms.last().copied().unwrap_or_default()
        );
    }
    op.stop().await;
    drop(redis.drain(..));
    let title = if switchover {
        format!("Understudy planned switchover (ShardFailover), 3 members, heartbeat {} ms", args.heartbeat())
    } else {
        format!(
            "Understudy unplanned failover (SIGKILL primary), 3 members, heartbeat {} ms × 3",
            args.heartbeat()
        )
    };
    let mut stats = vec![pause];
    if !switchover {
        stats.push(detect);
        stats.push(promote);
    }
    Ok((title, stats, vec![format!("acknowledged writes: {acked_total}; lost: {lost_total}")]))
}

/// Where cluster `b`'s first shard's primary is, from its status (members `names` on
/// 127.0.0.1 `ports`); None while a promotion is in flight.
fn status_resolver(hacs: &Api<HaCluster>, names: [&'static str; 3], ports: Vec<u16>) -> Resolver {
    let hacs = hacs.clone();
    Arc::new(move || {
        let (hacs, ports) = (hacs.clone(), ports.clone());
        Box::pin(async move {
            let st = hacs.get("b").await.ok()?.status?;
            let s = st.shards.first()?;
            if s.target_primary.is_some() {
                return None;
            }
            let i = names.iter().position(|n| Some(*n) == s.current_primary.as_deref())?;
            Some(("127.0.0.1".to_owned(), ports[i]))
        })
    })
}

/// Submit a ShardFailover `name` moving `primary` and wait until it has Succeeded.
async fn switch_over(sfos: &Api<ShardFailover>, name: &str, primary: &str) -> anyhow::Result<()> {
    let sfo: ShardFailover = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover", "metadata": {"name": name},
        "spec": {"shardUids": [primary]}
    }))?;
    sfos.create(&PostParams::default(), &sfo).await?;
    loop {
        match sfos.get(name).await?.status.and_then(|s| s.phase) {
            Some(ShardFailoverPhase::Succeeded) => return Ok(()),
            Some(ShardFailoverPhase::Failed) => bail!("switchover {name} failed"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn wait_settled(hacs: &Api<HaCluster>) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = hacs.get("b").await
            && let Some(s) = c.status.as_ref().and_then(|s| s.shards.first())
            && let Some(p) = &s.current_primary
            && s.target_primary.is_none()
            && s.members.iter().all(|m| m.healthy)
            && s.members.iter().filter(|m| m.role == Role::Primary).count() == 1
            && s.members.iter().all(|m| m.role != Role::Replica || m.lag.unwrap_or(0) == 0)
        {
            return Ok(p.clone());
        }
        if Instant::now() > deadline {
            bail!("cluster did not settle");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_new_primary(hacs: &Api<HaCluster>, old: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = hacs.get("b").await
            && let Some(s) = c.status.as_ref().and_then(|s| s.shards.first())
            && let Some(p) = &s.current_primary
            && p != old
            && s.target_primary.is_none()
        {
            return Ok(p.clone());
        }
        if Instant::now() > deadline {
            bail!("no new primary");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn sentinel_bench(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let mut redis: Vec<LocalRedis> = (0..3)
        .map(|_| LocalRedis::try_start_on("127.0.0.1", free_port()?, None))
        .collect::<anyhow::Result<_>>()?;
    // Sentinel needs a master to start from: the first server.
    let mut c = redis[0].connect().await?;
    let _: () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut c).await?;
    for r in &redis[1..] {
        let mut c = r.connect().await?;
        let _: () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(redis[0].port).query_async(&mut c).await?;
    }
    let down_after = args.heartbeat() * 3;
    let sentinels = discovery::Sentinels::start("127.0.0.1", "127.0.0.1", redis[0].port, down_after)?;
    let sentinel_ports = sentinels.ports.clone();
    let sp = sentinel_ports.clone();
    let resolve: Resolver = Arc::new(move || {
        let sp = sp.clone();
        Box::pin(async move {
            for port in sp {
                if let Ok(mut c) = understudy::localredis::redis_conn("127.0.0.1", port, None, 300).await
                    && let Ok((h, p)) = redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg("m")
                        .query_async::<(String, u16)>(&mut c)
                        .await
                {
                    return Some((h, p));
                }
            }
            None
        })
    });
    let mut pause = Stats {
        name: if matches!(args.scenario, Scenario::SentinelSwitchover) {
            "write pause (last ack before → first after)".into()
        } else {
            "end-to-end (last ack on old → first on new)".into()
        },
        values_ms: vec![],
    };
    let mut lost_total = 0;
    let mut acked_total = 0;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for run in 0..args.runs {
        let (host, port) = settle_sentinel(&resolve, &redis).await?;
        let pi = redis.iter().position(|r| r.port == port).context("master port")?;
        let writer = Writer::start(format!("s{run}"), resolve.clone()).await;
        let t0 = Instant::now();
        if matches!(args.scenario, Scenario::SentinelSwitchover) {
            let mut c =
                understudy::localredis::redis_conn("127.0.0.1", sentinel_ports[0], None, 2000).await?;
            let _: () = redis::cmd("SENTINEL").arg("FAILOVER").arg("m").query_async(&mut c).await?;
        } else {
            redis[pi].kill();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let (nh, np) = loop {
            if let Some((h, p)) = resolve().await
                && p != port
            {
                break (h, p);
            }
            if Instant::now() > deadline {
                bail!("sentinel did not fail over");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (gap, missing, acked) = writer.finish(t0, 800, (&nh, np)).await?;
        pause.values_ms.push(gap);
        lost_total += missing;
        acked_total += acked;
        if !matches!(args.scenario, Scenario::SentinelSwitchover) {
            // Sentinel reconfigures the returning old master as a replica itself.
            redis[pi].try_spawn()?;
        }
        eprintln!(
            "run {run}: {host}:{port} → {nh}:{np}, {:.1} ms",
            pause.values_ms.last().copied().unwrap_or_default()
        );
    }
    drop(sentinels);
    let title = match args.scenario {
        Scenario::SentinelSwitchover => "Redis Sentinel SENTINEL FAILOVER (3 sentinels, quorum 2)".to_owned(),
        _ => format!(
            "Redis Sentinel unplanned failover (SIGKILL master), 3 sentinels, quorum 2, down-after {down_after} ms"
        ),
    };
    let _ = &mut redis;
    Ok((title, vec![pause], vec![format!("acknowledged writes: {acked_total}; lost: {lost_total}")]))
}

/// Wait until Sentinel names a master that answers as master and has two replicas in sync.
async fn settle_sentinel(resolve: &Resolver, redis: &[LocalRedis]) -> anyhow::Result<(String, u16)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((h, p)) = resolve().await
            && let Some(r) = redis.iter().find(|r| r.port == p)
            && let Some(info) = r.replication().await
            && info.get("role").map(String::as_str) == Some("master")
            && info.get("connected_slaves").map(String::as_str) == Some("2")
        {
            return Ok((h, p));
        }
        if Instant::now() > deadline {
            bail!("sentinel setup did not settle");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two sites (namespaces of one control plane), one pair of 2-member Redis clusters, the
/// group at `Source` and the operator in this process; `resolve` finds the production
/// cluster's recorded primary.
struct TwoSites {
    _cp: ControlPlane,
    client: kube::Client,
    pgs: Api<ProtectionGroup>,
    /// Source members first, then the DR site's.
    redis: Vec<LocalRedis>,
    resolve: Resolver,
    op: InProcess,
}

const SITE_NAMESPACES: (&str, &str) = ("site-a", "site-b");

async fn two_sites(args: &Args) -> anyhow::Result<TwoSites> {
    let cp = ControlPlane::start(Options { controller_manager: false, keep: false }).await?;
    cp.install_generated_crds().await?;
    let client = cp.client().await?;
    let (src_ns, dr_ns) = SITE_NAMESPACES;
    cp.create_namespace(src_ns).await?;
    cp.create_namespace(dr_ns).await?;
    let redis: Vec<LocalRedis> = (0..4)
        .map(|_| LocalRedis::try_start_on("127.0.0.1", free_port()?, None))
        .collect::<anyhow::Result<_>>()?;
    let ports: Vec<u16> = redis.iter().map(|r| r.port).collect();
    let hb = format!("{}ms", args.heartbeat());
    for (ns, name, rs) in [(src_ns, "db", &redis[0..2]), (dr_ns, "db-dr", &redis[2..4])] {
        let members: Vec<_> = rs
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"name": format!("{name}-{i}"), "endpoint": r.endpoint()}))
            .collect();
        let hac: HaCluster = serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": name},
            "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": members}],
                     "failover": {"heartbeatInterval": hb}}
        }))?;
        Api::<HaCluster>::namespaced(client.clone(), ns).create(&PostParams::default(), &hac).await?;
    }
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), src_ns);
    let pg: ProtectionGroup = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup", "metadata": {"name": "pg"},
        "spec": {"sites": {"source": {"namespace": src_ns}, "target": {"namespace": dr_ns}},
                 "pairs": [{"source": "db", "target": "db-dr"}], "prioritySite": "Source"}
    }))?;
    pgs.create(&PostParams::default(), &pg).await?;
    let op = InProcess::start_namespaces(client.clone(), &[src_ns, dr_ns]);
    let resolve: Resolver = {
        let (client, pgs, ports) = (client.clone(), pgs.clone(), ports.clone());
        Arc::new(move || {
            let (client, pgs, ports) = (client.clone(), pgs.clone(), ports.clone());
            Box::pin(async move {
                let st = pgs.get("pg").await.ok()?.status?;
                let (ns, name) = match st.pairs.first()?.production? {
                    SiteRole::Source => (src_ns, "db"),
                    SiteRole::Target => (dr_ns, "db-dr"),
                };
                let c = Api::<HaCluster>::namespaced(client, ns).get(name).await.ok()?;
                let s = c.status?.shards.into_iter().next()?;
                let p = s.current_primary.clone()?;
                let m = s.members.iter().find(|m| m.name == p && m.role == Role::Primary)?;
                let port: u16 = m.endpoint.as_ref()?.rsplit_once(':')?.1.parse().ok()?;
                ports.contains(&port).then(|| ("127.0.0.1".to_owned(), port))
            })
        })
    };
    let sites = TwoSites { _cp: cp, client, pgs, redis, resolve, op };
    sites.wait_protected(SiteRole::Source).await?;
    Ok(sites)
}

impl TwoSites {
    /// Until the group is protected with production at `site` and every pair replicating.
    async fn wait_protected(&self, site: SiteRole) -> anyhow::Result<ProtectionGroupStatus> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(g) = self.pgs.get("pg").await
                && let Some(st) = g.status
                && st.phase == Some(ProtectionPhase::Protected)
                && st.production_site == Some(site)
                && st.pairs.iter().all(|p| p.state == "Replicating")
            {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("the group did not become protected at {site:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Planned site failovers of a ProtectionGroup with one pair (2 Redis members per site),
/// alternating target → source → target. The writer follows the group's status: the
/// production cluster's recorded primary.
async fn site_bench(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let sites = two_sites(args).await?;
    let (pgs, resolve) = (sites.pgs.clone(), sites.resolve.clone());
    let wait_site = |site: SiteRole| sites.wait_protected(site);

    let mut gap =
        Stats { name: "client write gap (last ack before → first ack after)".into(), values_ms: vec![] };
    let mut pause =
        Stats { name: "server-side write pause (status.lastWritePauseMs)".into(), values_ms: vec![] };
    let mut total =
        Stats { name: "whole planned failover (spec change → protected)".into(), values_ms: vec![] };
    let (mut lost_total, mut acked_total) = (0usize, 0usize);
    let mut site = SiteRole::Source;
    for run in 0..args.runs {
        let to = site.other();
        let writer = Writer::start(format!("r{run}"), resolve.clone()).await;
        let t0 = Instant::now();
        pgs.patch(
            "pg",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"prioritySite": to.as_str()}})),
        )
        .await?;
        let st = wait_site(to).await?;
        total.values_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        pause.values_ms.push(st.last_write_pause_ms.unwrap_or_default() as f64);
        let (host, port) = resolve().await.context("no production primary")?;
        let (g, missing, acked) = writer.finish(t0, 500, (&host, port)).await?;
        gap.values_ms.push(g);
        lost_total += missing;
        acked_total += acked;
        eprintln!(
            "run {run}: {site:?} → {to:?}: gap {g:.1} ms, {missing} of {acked} acknowledged writes missing"
        );
        site = to;
    }
    sites.op.stop().await;
    let title = format!(
        "Understudy planned site failover (ProtectionGroup, 1 pair, 2 members per site), heartbeat {} ms",
        args.heartbeat()
    );
    Ok((
        title,
        vec![gap, pause, total],
        vec![format!("acknowledged writes: {acked_total}; lost: {lost_total}")],
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_set_takes_its_resp_encoding_in_the_replication_stream() {
        let resp = "*3\r\n$3\r\nSET\r\n$5\r\nl0:12\r\n$2\r\n12\r\n";
        assert_eq!(super::set_command_bytes("l0:12", "12"), resp.len());
        let long = "*3\r\n$3\r\nSET\r\n$10\r\nl11:123456\r\n$6\r\n123456\r\n";
        assert_eq!(super::set_command_bytes("l11:123456", "123456"), long.len());
    }
}
