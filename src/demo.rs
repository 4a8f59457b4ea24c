//! `understudy demo`: a failover you can watch, on a local control plane with three real
//! redis-server members. Bootstrap → kill the primary → automatic failover → the old primary
//! returns as a replica → a graceful switchover (ShardFailover) → a summary of measured times.
//! The live view is what `kubectl understudy status` prints, and the switchover is the object
//! `kubectl understudy switchover` creates (both from [`crate::plugin`]).

use std::{
    io::{IsTerminal as _, Write as _},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{api::events::v1::Event, jiff::Timestamp};
use kube::{
    Api, ResourceExt as _,
    api::{ListParams, PostParams},
};
use serde_json::json;

use crate::{
    controlplane::{ControlPlane, Options, free_port},
    core::vocabulary::ConditionType,
    localredis::LocalRedis,
    operator::InProcess,
    plugin::{
        connect::Requester,
        operations::{Operation, plan_switchover},
        render::{cluster_text, cluster_view, history, history_text},
    },
    resources::{
        HaCluster, ShardFailover,
        hacluster::{HaClusterStatus, Role},
        shard_failover::ShardFailoverPhase,
        shared::{TRUE, condition},
    },
};

const NS: &str = "understudy-demo";
const NAMES: [&str; 3] = ["redis-a", "redis-b", "redis-c"];
const STEP: Duration = Duration::from_secs(90);

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Leave everything running at the end and print how to explore it with kubectl.
    #[arg(long)]
    pub keep: bool,
    /// Heartbeat interval of the demo cluster (failure detection = 3 heartbeats).
    #[arg(long, default_value = "500ms")]
    pub heartbeat: String,
}

/// Install Debian's redis-server if it is missing.
fn ensure_redis() -> anyhow::Result<()> {
    if which("redis-server") {
        return Ok(());
    }
    println!("redis-server is not installed; installing Debian's package (about a minute)…");
    let root = unsafe { libc::geteuid() } == 0;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = if root { Command::new(args[0]) } else { Command::new("sudo") };
        if !root {
            cmd.arg(args[0]);
        }
        let status = cmd.args(&args[1..]).env("DEBIAN_FRONTEND", "noninteractive").status()?;
        if !status.success() {
            bail!("`{}` failed ({status}); install redis-server yourself and rerun", args.join(" "));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    run(&["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"])?;
    Ok(())
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// The live view: `kubectl understudy status demo`, redrawn in place on a terminal, printed
/// once per change otherwise.
struct View {
    tty: bool,
    /// What the last view showed, heartbeat times left out (they change on every poll).
    last: String,
    lines: usize,
}

impl View {
    fn show(&mut self, cluster: &HaCluster, sfos: &[ShardFailover]) {
        let mut view = cluster_view(cluster, sfos, &[]);
        let text = cluster_text(&view, Timestamp::now());
        for m in view.shards.iter_mut().flat_map(|s| &mut s.members) {
            m.last_heartbeat = None;
        }
        let key = serde_json::to_string(&view).unwrap_or_default();
        if key == self.last {
            return;
        }
        let mut block = format!("  $ kubectl understudy status demo -n {NS}\n");
        for line in text.lines() {
            if !line.is_empty() {
                block.push_str("  ");
            }
            block.push_str(line);
            block.push('\n');
        }
        let mut out = std::io::stdout().lock();
        if self.tty && self.lines > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.lines);
        }
        let _ = write!(out, "{block}");
        let _ = out.flush();
        self.lines = block.lines().count();
        self.last = key;
    }

    fn say(&mut self, msg: &str) {
        println!("\n▶ {msg}");
        self.lines = 0;
        self.last.clear();
    }
}

/// Run the demo. Ctrl-C at any point cleans up every process it started.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = demo(args) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping everything the demo started");
            Ok(())
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "Understudy demo: a real kube-apiserver, three real redis-server processes, the operator in-process."
    );
    ensure_redis()?;
    println!(
        "\n▶ starting the local control plane (the first run builds etcd and kube-apiserver from the Go module proxy: ~12 min on 2 cores; cached afterwards)"
    );
    let cp = ControlPlane::start(Options { controller_manager: true, keep: args.keep }).await?;
    cp.install_generated_crds().await?;
    let client = cp.client().await?;
    println!(
        "  kube-apiserver {} ready at {}",
        client.apiserver_version().await?.git_version,
        cp.server_url()
    );

    let mut redis = Vec::new();
    for _ in NAMES {
        redis.push(LocalRedis::try_start_on("127.0.0.1", free_port()?, None)?);
    }
    let ports: Vec<u16> = redis.iter().map(|r| r.port).collect();
    println!(
        "  redis-server ×3 on 127.0.0.1:{:?}, each started as a replica of nothing (the operator picks the primary)",
        ports
    );

    cp.create_namespace(NS).await?;
    let op = InProcess::start(client.clone(), NS);

    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), NS);
    let members: Vec<_> = NAMES
        .iter()
        .zip(&ports)
        .map(|(n, p)| json!({"name": n, "endpoint": format!("127.0.0.1:{p}")}))
        .collect();
    let hac: HaCluster = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "demo"},
        // Loopback members cannot be behind a Service: routing off, rather than a
        // `Routed=False Unroutable` condition greeting the newcomer.
        "spec": {"engine": "Redis", "shards": [{"name": "main", "members": members}],
                 "failover": {"heartbeatInterval": args.heartbeat, "failureThreshold": 3},
                 "routing": {"enabled": false}}
    }))?;
    let mut view = View { tty: std::io::stdout().is_terminal(), last: String::new(), lines: 0 };

    // 1. Bootstrap.
    view.say("creating HaCluster `demo`: the operator elects a primary and points the replicas at it");
    let t = Instant::now();
    hacs.create(&PostParams::default(), &hac).await?;
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), NS);
    let first = watch_until(&hacs, &sfos, &mut view, |st| healthy_primary(st, None)).await?;
    let bootstrap = t.elapsed();
    let fi = index(&first)?;

    // 2. Writes, then kill the primary.
    let mut conn = redis[fi].connect().await?;
    for i in 0..1000 {
        let _: () = redis::cmd("SET").arg(format!("key:{i}")).arg(i).query_async(&mut conn).await?;
    }
    view.say(&format!("wrote 1000 keys to {first}; now SIGKILL {first} (the primary)"));
    wait_replicas_have(&redis, fi, 1000).await;
    let t = Instant::now();
    redis[fi].kill();
    let second = watch_until(&hacs, &sfos, &mut view, |st| healthy_primary(st, Some(&first))).await?;
    let failover = t.elapsed();
    let si = index(&second)?;
    let st = hacs.get("demo").await?.status.unwrap_or_default();
    let promotion_ms = st.last_failover.as_ref().and_then(|f| f.duration_ms).unwrap_or_default();
    let mut c2 = redis[si].connect().await?;
    let kept: i64 = redis::cmd("DBSIZE").query_async(&mut c2).await?;

    // 3. The old primary returns.
    view.say(&format!(
        "restarting {first}: it comes back as a replica of {second}, never as a second primary"
    ));
    redis[fi].try_spawn()?;
    watch_until(&hacs, &sfos, &mut view, |st| {
        let m = st.shards.first()?.members.iter().find(|m| m.name == first)?;
        (m.healthy && m.role == Role::Replica).then_some(())
    })
    .await?;

    // 4. Graceful switchover while a client writes.
    view.say(&format!(
        "`kubectl understudy switchover demo`: a ShardFailover moves the primary off {second} while a client writes"
    ));
    let acked = Arc::new(AtomicI64::new(0));
    let max_gap = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, max_gap, stop) = (acked.clone(), max_gap.clone(), stop.clone());
        let mut conn = redis[si].connect().await?;
        tokio::spawn(async move {
            let mut last = Instant::now();
            let mut i = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("sw:{i}")).arg(i).query_async(&mut conn).await;
                if r.is_err() {
                    break;
                }
                max_gap.fetch_max(last.elapsed().as_micros() as i64, Ordering::SeqCst);
                last = Instant::now();
                acked.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            last
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The object the plugin creates: named, labelled, the requester recorded.
    let who = Requester {
        user: "understudy-demo".into(),
        reason: Some("the demo's switchover".into()),
        at: Timestamp::now(),
    };
    let Operation::Shard(sfo) = plan_switchover(&hacs.get("demo").await?, None, None, false, &who)
        .map_err(|r| anyhow::anyhow!("switchover refused: {r:?}"))?
    else {
        bail!("a switchover without --to is a ShardFailover");
    };
    let t = Instant::now();
    let sfo_name = sfos.create(&PostParams::default(), &sfo).await?.name_any();
    let third = watch_until(&hacs, &sfos, &mut view, |st| healthy_primary(st, Some(&second))).await?;
    let switchover = t.elapsed();
    let phase = wait_sfo(&sfos, &sfo_name).await?;
    watch_until(&hacs, &sfos, &mut view, |st| {
        let s = st.shards.first()?;
        let primaries = s.members.iter().filter(|m| m.role == Role::Primary).count();
        // The lock released too, so the last view is the settled cluster.
        (primaries == 1 && s.operation.is_none() && s.members.iter().all(|m| m.healthy)).then_some(())
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let ti = index(&third)?;
    let mut c3 = redis[ti].connect().await?;
    let sw_keys: Vec<String> = redis::cmd("KEYS").arg("sw:*").query_async(&mut c3).await?;
    let acked = acked.load(Ordering::SeqCst);
    let lost = acked - sw_keys.len() as i64;

    view.say("what happened, as `kubectl understudy history demo` tells it");
    let events = Api::<Event>::namespaced(client.clone(), NS).list(&ListParams::default()).await?.items;
    let operations = sfos.list(&ListParams::default()).await?.items;
    let told = history(&hacs.get("demo").await?, &operations, &[], None, &events);
    for line in history_text(&told, Timestamp::now()).lines() {
        println!("  {line}");
    }

    println!("\n=== SUMMARY ===");
    println!("bootstrap                : {first} elected primary in {:.2}s", bootstrap.as_secs_f64());
    println!(
        "automatic failover       : {first} killed → {second} primary in {:.2}s (detection window {} × 3; promotion {} ms)",
        failover.as_secs_f64(),
        args.heartbeat,
        promotion_ms
    );
    println!("writes kept on failover  : {kept}/1000 keys on {second}");
    println!("old primary              : {first} returned as a replica");
    println!(
        "switchover (ShardFailover {phase:?}): {second} → {third} in {:.2}s; longest write pause {:.0} ms; {acked} writes acknowledged, {lost} lost",
        switchover.as_secs_f64(),
        max_gap.load(Ordering::SeqCst) as f64 / 1000.0
    );
    println!("total                    : {:.1}s", started.elapsed().as_secs_f64());
    if kept != 1000 || lost != 0 {
        bail!("acknowledged writes were lost ({kept}/1000 after failover, {lost} after switchover)");
    }

    if args.keep {
        println!("\nEverything keeps running. Explore it:");
        println!("  export KUBECONFIG={}", cp.kubeconfig_path().display());
        let k = cp.kubectl();
        println!("  {} get hac,sfo -n {NS} -o wide", k.display());
        println!(
            "  kubectl understudy status demo -n {NS}      # the plugin: cargo install --path . --bin kubectl-understudy --no-default-features"
        );
        println!("  kubectl understudy history demo -n {NS}");
        println!("  {} get hacluster demo -n {NS} -o yaml", k.display());
        println!("  {} get events -n {NS}", k.display());
        println!("  redis-cli -p {} info replication", ports[ti]);
        println!("Press Ctrl-C to stop and clean up.");
        tokio::signal::ctrl_c().await?;
    }
    op.stop().await;
    Ok(())
}

fn index(name: &str) -> anyhow::Result<usize> {
    NAMES.iter().position(|n| *n == name).with_context(|| format!("unknown member {name}"))
}

/// The primary (other than `not`) once the cluster is Ready: a healthy primary that takes
/// writes (with self-fencing, once a replica acknowledges it).
fn healthy_primary(st: &HaClusterStatus, not: Option<&str>) -> Option<String> {
    let s = st.shards.first()?;
    let p = s.current_primary.clone()?;
    let ready = condition(&st.conditions, ConditionType::Ready).is_some_and(|c| c.status == TRUE);
    let ok = ready
        && s.target_primary.is_none()
        && s.members.iter().any(|m| m.name == p && m.healthy && m.role == Role::Primary);
    (ok && Some(p.as_str()) != not).then_some(p)
}

async fn watch_until<T>(
    api: &Api<HaCluster>,
    sfos: &Api<ShardFailover>,
    view: &mut View,
    done: impl Fn(&HaClusterStatus) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(c) = api.get("demo").await {
            let operations = sfos.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
            view.show(&c, &operations);
            if let Some(v) = done(&c.status.unwrap_or_default()) {
                return Ok(v);
            }
        }
        if Instant::now() > deadline {
            bail!("the demo step did not complete within {STEP:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_replicas_have(redis: &[LocalRedis], primary: usize, keys: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, r) in redis.iter().enumerate() {
        if i == primary {
            continue;
        }
        while Instant::now() < deadline {
            if let Ok(mut c) = r.connect().await
                && redis::cmd("DBSIZE").query_async::<i64>(&mut c).await.is_ok_and(|n| n >= keys)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_sfo(api: &Api<ShardFailover>, name: &str) -> anyhow::Result<ShardFailoverPhase> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(p) = api.get(name).await?.status.and_then(|s| s.phase)
            && matches!(p, ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed)
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("the switchover did not finish within {STEP:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
