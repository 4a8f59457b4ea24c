//! `bench mysql`: Understudy (engine Mysql) beside MHA 0.58 on three local MariaDB servers, in
//! one run, with the same client: one INSERT per millisecond into an AUTO_INCREMENT table at
//! whatever each system names primary (Understudy: the HaCluster status; MHA: the file its
//! `master_ip_failover_script` writes, a VIP's stand-in), reconnecting on errors; every
//! acknowledged row is checked on the final primary.
//!
//! Unplanned failover: SIGKILL of the primary's mariadbd. Planned switchover: a ShardFailover /
//! `masterha_master_switch --master_state=alive`. MHA runs through `tools/mha/mha.sh` (its
//! private sshd, patched perl overlay and testbed; see that script): `up` builds a fresh
//! testbed per failover run, because MHA's manager exits after one failover and will not start
//! again while the dead master is in its configuration.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use mysql_async::prelude::Queryable as _;
use serde_json::json;
use understudy::{
    controlplane::{ControlPlane, Options},
    localmysql::{APP_PASSWORD, APP_USER, LocalMysql, OPERATOR_PASSWORD, OPERATOR_USER},
    operator::InProcess,
    resources::{HaCluster, ShardFailover},
};

use super::{Args, Resolver, Stats, switch_over, wait_new_primary};

/// The account and database a client writes with.
#[derive(Clone)]
struct App {
    user: &'static str,
    password: &'static str,
    db: &'static str,
}

/// A client inserting `seq` values (one per millisecond) and logging what was acknowledged.
struct Writer {
    acks: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(app: App, resolve: Resolver, base: u64) -> Self {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, s) = (acks.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seq = base;
            let mut conn: Option<mysql_async::Conn> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                if conn.is_none() {
                    let Some((host, port)) = resolve().await else { continue };
                    let opts = mysql_async::OptsBuilder::default()
                        .ip_or_hostname(host)
                        .tcp_port(port)
                        .user(Some(app.user))
                        .pass(Some(app.password))
                        .db_name(Some(app.db))
                        .prefer_socket(false);
                    conn = tokio::time::timeout(Duration::from_millis(300), mysql_async::Conn::new(opts))
                        .await
                        .ok()
                        .and_then(Result::ok);
                    if conn.is_none() {
                        continue;
                    }
                }
                let c = conn.as_mut().expect("connected");
                // Every attempt gets a number of its own: a write that failed may still have
                // committed (the primary killed between its commit and its answer), so trying
                // the same number again would meet it (UNIQUE) for ever — measured: a client
                // stuck on "Duplicate entry" for 30 s in a run of five.
                seq += 1;
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.exec_drop("INSERT INTO t (seq) VALUES (?)", (seq,)),
                )
                .await;
                match r {
                    Ok(Ok(())) => a.lock().expect("acks").push((seq, Instant::now())),
                    // Not acknowledged: not counted, whatever became of it.
                    _ => conn = None,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self { acks, stop, task }
    }

    /// Wait for 50 acknowledgements after now (at most 30 s), settle, stop; (longest gap in
    /// ms from 300 ms before `t0`, acknowledged seqs).
    async fn finish(self, t0: Instant) -> (f64, BTreeSet<u64>) {
        let after = Instant::now();
        let deadline = after + Duration::from_secs(30);
        while Instant::now() < deadline
            && self.acks.lock().expect("acks").iter().filter(|(_, t)| *t > after).count() < 50
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.task.await;
        let end = Instant::now();
        let acks = std::mem::take(&mut *self.acks.lock().expect("acks"));
        let times: Vec<Instant> =
            acks.iter().map(|a| a.1).filter(|t| *t >= t0 - Duration::from_millis(300)).collect();
        let mut gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        if !acks.iter().any(|(_, t)| *t > after) {
            gap = gap.max(end - acks.last().map_or(t0, |a| a.1));
        }
        (gap.as_secs_f64() * 1000.0, acks.into_iter().map(|a| a.0).collect())
    }
}

/// The seqs in `t` on a server, read with the given account.
async fn rows(host: &str, port: u16, user: &str, password: &str, db: &str) -> anyhow::Result<BTreeSet<u64>> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some(db))
        .prefer_socket(false);
    let mut c = mysql_async::Conn::new(opts).await?;
    let seqs: Vec<u64> = c.query("SELECT seq FROM t").await?;
    Ok(seqs.into_iter().collect())
}

pub async fn mysql(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let mut stats = Vec::new();
    let mut notes = Vec::new();
    let cp = ControlPlane::start(Options { controller_manager: false, keep: false }).await?;
    cp.install_generated_crds().await?;
    // Understudy at the bench heartbeat, then at 1 s (3 s detection: MHA's at ping_interval=1
    // declares the master dead after four failed pings, 3–4 s).
    for (hb, failover) in [(args.heartbeat(), true), (1000, true), (args.heartbeat(), false)] {
        let (s, n) = understudy(args, &cp, hb, failover).await?;
        stats.extend(s);
        notes.extend(n);
    }
    drop(cp);
    let mha = Mha::install()?;
    for ping in [3, 1] {
        let (s, n) = mha.failover(args.runs, ping).await?;
        stats.extend(s);
        notes.extend(n);
    }
    let (s, n) = mha.switchover(args.runs).await?;
    stats.extend(s);
    notes.extend(n);
    let title =
        "Understudy (engine Mysql) vs MHA 0.58, 3 MariaDB 10.11 servers on loopback, one INSERT per ms"
            .to_owned();
    Ok((title, stats, notes))
}

async fn understudy(
    args: &Args,
    cp: &ControlPlane,
    heartbeat_ms: u64,
    failover: bool,
) -> anyhow::Result<(Vec<Stats>, Vec<String>)> {
    let ns = format!("my-{}-{heartbeat_ms}", if failover { "fo" } else { "sw" });
    let client = cp.client().await?;
    cp.create_namespace(&ns).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db"},
                "stringData": {"username": OPERATOR_USER, "password": OPERATOR_PASSWORD}}))?,
        )
        .await?;
    let mut servers: Vec<LocalMysql> = (0..3).map(|_| LocalMysql::start()).collect();
    let names = ["m0", "m1", "m2"];
    let members: Vec<_> =
        names.iter().zip(&servers).map(|(n, s)| json!({"name": n, "endpoint": s.endpoint()})).collect();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    hacs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "b"},
            "spec": {"engine": "Mysql", "secretRef": {"name": "db"}, "shards": [{"name": "s0", "members": members}],
                     "failover": {"heartbeatInterval": format!("{heartbeat_ms}ms"), "failureThreshold": 3}}
        }))?,
    )
    .await?;
    let op = InProcess::start(client.clone(), &ns);
    let first = super::wait_settled(&hacs).await?;
    let pi = names.iter().position(|n| *n == first).context("primary")?;
    servers[pi].sql(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT UNIQUE)",
    ])?;
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let resolve = super::status_resolver(&hacs, names, ports.clone());
    let app = App { user: APP_USER, password: APP_PASSWORD, db: "app" };
    let kind = if failover { "failover (SIGKILL)" } else { "switchover (ShardFailover)" };
    let mut gap = Stats {
        name: format!("Understudy {kind}, heartbeat {heartbeat_ms} ms: write gap"),
        values_ms: vec![],
    };
    let mut promote = Stats {
        name: format!("Understudy {kind}, heartbeat {heartbeat_ms} ms: promotion"),
        values_ms: vec![],
    };
    let (mut acked_total, mut lost_total, mut lossy) = (0, 0, 0);
    for run in 0..args.runs {
        let primary = super::wait_settled(&hacs).await?;
        let pi = names.iter().position(|n| *n == primary).context("primary")?;
        let writer = Writer::start(app.clone(), resolve.clone(), (run as u64 + 1) * 10_000_000).await;
        let t0 = Instant::now();
        if failover {
            servers[pi].kill();
        } else {
            let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
            let name = format!("sw-{run}");
            switch_over(&sfos, &name, &primary).await?;
            let _ = sfos.delete(&name, &DeleteParams::default()).await;
        }
        let new = wait_new_primary(&hacs, &primary).await?;
        let ni = names.iter().position(|n| *n == new).context("new")?;
        let (g, acked) = writer.finish(t0).await;
        let on_new = rows("127.0.0.1", ports[ni], APP_USER, APP_PASSWORD, "app").await?;
        let lost = acked.difference(&on_new).count();
        gap.values_ms.push(g);
        acked_total += acked.len();
        lost_total += lost;
        lossy += usize::from(lost > 0);
        if let Some(lf) = hacs.get("b").await?.status.and_then(|s| s.last_failover) {
            promote.values_ms.push(lf.duration_ms.unwrap_or_default() as f64);
        }
        if failover {
            servers[pi].try_spawn()?;
        }
        eprintln!(
            "understudy {kind} hb {heartbeat_ms} run {run}: {primary} → {new}, gap {g:.1} ms, lost {lost}"
        );
    }
    op.stop().await;
    drop(servers);
    let notes = vec![format!(
        "Understudy {kind}, heartbeat {heartbeat_ms} ms × 3 (semi-sync self-fencing, the default): {acked_total} acknowledged rows, {lost_total} lost ({lossy} runs with a loss)"
    )];
    Ok((vec![gap, promote], notes))
}

/// MHA 0.58 through `tools/mha/mha.sh`.
struct Mha {
    script: PathBuf,
}

const MHA_HOSTS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

impl Mha {
    fn install() -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/mha/mha.sh");
        let me = Self { script };
        me.run(&["install"])?;
        Ok(me)
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("bash").arg(&self.script).args(args).output()?;
        if !out.status.success() {
            bail!(
                "mha.sh {} failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn resolve(dir: &Path) -> Resolver {
        let file = dir.join("new-primary");
        Arc::new(move || {
            let file = file.clone();
            Box::pin(async move {
                let host = std::fs::read_to_string(&file).ok()?.trim().to_owned();
                (!host.is_empty()).then_some((host, 3306))
            })
        })
    }

    fn primary(dir: &Path) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(dir.join("new-primary"))?.trim().to_owned())
    }

    fn setup_table(&self, dir: &Path) -> anyhow::Result<()> {
        let host = Self::primary(dir)?;
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-h", &host, "-uapp", "-papp", "bench", "-e"])
            .arg("CREATE TABLE IF NOT EXISTS t (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT UNIQUE)")
            .output()?;
        if !out.status.success() {
            bail!("creating bench.t: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    const APP: App = App { user: "app", password: "app", db: "bench" };

    async fn failover(&self, runs: usize, ping: u32) -> anyhow::Result<(Vec<Stats>, Vec<String>)> {
        let mut gap = Stats {
            name: format!("MHA failover (SIGKILL), ping_interval {ping} s: write gap"),
            values_ms: vec![],
        };
        let (mut acked_total, mut lost_total, mut lossy) = (0, 0, 0);
        for run in 0..runs {
            let dir = tempfile::Builder::new().prefix("understudy-mha-").tempdir()?;
            let d = dir.path().to_str().context("dir")?.to_owned();
            self.run(&["up", &d])?;
            let ping_s = ping.to_string();
            let mut manager = vec!["manager", d.as_str()];
            if ping != 3 {
                manager.extend(["--ping-interval", ping_s.as_str()]);
            }
            self.run(&manager)?;
            self.setup_table(dir.path())?;
            let old = Self::primary(dir.path())?;
            let m = MHA_HOSTS.iter().position(|h| *h == old).context("primary host")?;
            let pid: i32 =
                std::fs::read_to_string(dir.path().join(format!("m{m}/mysqld.pid")))?.trim().parse()?;
            let writer =
                Writer::start(Self::APP, Self::resolve(dir.path()), (run as u64 + 1) * 10_000_000).await;
            let t0 = Instant::now();
            // SAFETY: kill(2) on the mariadbd that mha.sh started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = t0 + Duration::from_secs(120);
            let new = loop {
                let p = Self::primary(dir.path())?;
                if p != old {
                    break p;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(dir.path().join("manager.log")).unwrap_or_default();
                    let _ = self.run(&["down", &d]);
                    bail!("MHA did not fail over within 120 s:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let (g, acked) = writer.finish(t0).await;
            let on_new = rows(&new, 3306, "app", "app", "bench").await?;
            let lost = acked.difference(&on_new).count();
            gap.values_ms.push(g);
            acked_total += acked.len();
            lost_total += lost;
            lossy += usize::from(lost > 0);
            eprintln!("MHA failover ping {ping} run {run}: {old} → {new}, gap {g:.1} ms, lost {lost}");
            self.run(&["down", &d])?;
        }
        let notes = vec![format!(
            "MHA failover, ping_interval {ping} s (MHA's defaults otherwise; GTID mode not detected on MariaDB, so relay-log based recovery with the dead master's binlog copied over ssh): {acked_total} acknowledged rows, {lost_total} lost ({lossy} runs with a loss)"
        )];
        Ok((vec![gap], notes))
    }

    async fn switchover(&self, runs: usize) -> anyhow::Result<(Vec<Stats>, Vec<String>)> {
        let mut gap = Stats {
            name: "MHA switchover (master_switch --master_state=alive): write gap".into(),
            values_ms: vec![],
        };
        let mut total =
            Stats { name: "MHA switchover: masterha_master_switch duration".into(), values_ms: vec![] };
        let dir = tempfile::Builder::new().prefix("understudy-mha-").tempdir()?;
        let d = dir.path().to_str().context("dir")?.to_owned();
        self.run(&["up", &d])?;
        self.setup_table(dir.path())?;
        let (mut acked_total, mut lost_total) = (0, 0);
        for run in 0..runs {
            let old = Self::primary(dir.path())?;
            let i = MHA_HOSTS.iter().position(|h| *h == old).context("primary host")?;
            let target = MHA_HOSTS[(i + 1) % 3];
            let writer =
                Writer::start(Self::APP, Self::resolve(dir.path()), (run as u64 + 1) * 10_000_000).await;
            let t0 = Instant::now();
            let script = self.script.clone();
            let d2 = d.clone();
            let out = tokio::task::spawn_blocking(move || {
                Command::new("bash").arg(script).args(["switch", &d2, target]).output()
            })
            .await??;
            total.values_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() {
                bail!("mha.sh switch failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let new = Self::primary(dir.path())?;
            let (g, acked) = writer.finish(t0).await;
            let on_new = rows(&new, 3306, "app", "app", "bench").await?;
            let lost = acked.difference(&on_new).count();
            gap.values_ms.push(g);
            acked_total += acked.len();
            lost_total += lost;
            eprintln!("MHA switchover run {run}: {old} → {new}, gap {g:.1} ms, lost {lost}");
        }
        self.run(&["down", &d])?;
        let notes = vec![format!("MHA switchover: {acked_total} acknowledged rows, {lost_total} lost")];
        Ok((vec![gap, total], notes))
    }
}
