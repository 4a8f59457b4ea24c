//! `bench discovery`: what one client sees of a failover and a switchover in a real node, four
//! ways side by side in one run, with the same writer (go-redis, tools/clients/go: one
//! `RPUSH` per millisecond, a pause is the time between two acknowledged writes):
//!
//! - (a) go-redis' plain client on the primary Service's ClusterIP, kube-proxy defaults;
//! - (b) the same with kube-proxy's `--iptables-min-sync-period=0s`;
//! - (e) the same with kube-proxy in nftables mode (its defaults; needs `nft`);
//! - (f) nftables mode with `nftables.minSyncPeriod: 1ms` (a config file: it has no flag);
//! - (c) go-redis' failover client asking Understudy's Sentinel-compatible endpoint (the
//!   chart's `understudy-sentinel` Service, two operator pods);
//! - (d) the same client against real Redis Sentinel (Debian's redis-sentinel, three on the
//!   host, quorum 2) on the same pods, once the HaCluster is deleted.
//!
//! Equal detection: the HaCluster probes every `--heartbeat-ms` (200) × 3 and Sentinel's
//! `down-after-milliseconds` is that window. A failover is a SIGKILL of the primary's
//! container through containerd: for (a)–(c) the kubelet restarts it in place (afterwards
//! the pod is replaced by a fresh one, so the restart back-off does not grow); for (c') and
//! (d) the pod is force-deleted right after the kill, as when its node is lost. A
//! switchover is a ShardFailover for (a)–(c') and `SENTINEL FAILOVER` for (d), each after
//! 3 s of quiet.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use understudy::{
    controlplane::{free_port, spawn},
    localredis::redis_conn,
    nodecluster::NodeCluster,
    resources::{HaCluster, ShardFailover},
    testclients::{Lib, Target, Writer, now_ms},
};

use super::{Args, Stats, switch_over, wait_new_primary, wait_settled};

const NS: &str = "bench";
const PORT: u16 = 6379;
const QUIET: Duration = Duration::from_secs(3);
/// Pauses shorter than this are not reported by the writer (its loop writes every ~1.1 ms).
const GAP_MS: f64 = 5.0;
const WAIT: Duration = Duration::from_secs(60);

pub async fn discovery(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    // pip and go build before the clock matters.
    let _ = understudy::testclients::clients();
    let node = NodeCluster::up()?;
    let result = on_node(args, &node).await;
    if result.is_err() {
        // What the failure left, before the node goes.
        for a in [
            &["get", "hac,sfo,pods,endpointslices", "-o", "wide"][..],
            &["get", "hac", "-o", "yaml"][..],
            &["logs", "-l", "app.kubernetes.io/name=understudy", "--tail=60", "--prefix"][..],
        ] {
            let mut full = vec!["-n", NS];
            full.extend_from_slice(a);
            eprintln!(
                "$ kubectl {}\n{}",
                full.join(" "),
                node.kubectl(&full).unwrap_or_else(|e| e.to_string())
            );
        }
    }
    if let Some(path) = &args.operator_logs {
        let logs = node
            .kubectl(&["-n", NS, "logs", "-l", "app.kubernetes.io/name=understudy", "--tail=-1", "--prefix"])
            .unwrap_or_else(|e| e.to_string());
        std::fs::write(path, logs)?;
        eprintln!("operator logs saved to {}", path.display());
    }
    node.down();
    let (stats, notes) = result?;
    let title = format!(
        "What one client sees (go-redis, 1 write/ms), node tier, 3 Redis pods, detection {} ms × 3 for both",
        args.heartbeat()
    );
    Ok((title, stats, notes))
}

/// `cmd`'s path when it is on PATH.
fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(cmd)).find(|p| p.is_file())
}

/// The pod IP of `name` once it has one.
async fn pod_ip(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(ip) = pods.get_opt(name).await?.and_then(|p| p.status).and_then(|s| s.pod_ip) {
            return Ok(ip);
        }
        if Instant::now() > deadline {
            bail!("pod {name} has no IP");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn llen(ip: &str, key: &str) -> Option<usize> {
    let mut c = redis_conn(ip, PORT, None, 500).await.ok()?;
    redis::cmd("LLEN").arg(key).query_async(&mut c).await.ok()
}

/// Wait until the member at `ip` holds `more` more of the writer's writes than now.
async fn writes_at(ip: &str, key: &str, more: usize) -> anyhow::Result<()> {
    let start = llen(ip, key).await.unwrap_or(0);
    let deadline = Instant::now() + WAIT;
    while llen(ip, key).await.unwrap_or(0) < start + more {
        if Instant::now() > deadline {
            bail!("the writer did not write {more} times to {ip}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Wait until the primary at `ip` has two replicas online (a replica still in its first full
/// sync may not be promoted with maxLagOnFailover 0, and the operator rightly refuses to).
async fn replicas_online(ip: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = redis_conn(ip, PORT, None, 500).await
            && let Ok(info) = redis::cmd("INFO").arg("replication").query_async::<String>(&mut c).await
            && info.matches("state=online").count() == 2
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the replicas of {ip} did not come online");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The longest pause that ended after `t0_ms` (the fault), and acknowledged writes missing on
/// the member at `ip`.
/// Also says how the writes failed meanwhile (error kind × count), so that a long pause can be
/// told from a client waiting (no errors) or a primary refusing (`NOREPLICAS`, `READONLY`).
/// Pauses longer than this are told event by event.
const LONG_PAUSE_MS: f64 = 40.0;

async fn measure(writer: Writer, t0_ms: f64, ip: &str) -> anyhow::Result<(f64, usize, usize, String)> {
    let key = writer.key.clone();
    let report = writer.finish();
    let gap = report.gaps.iter().filter(|g| g.to_ms >= t0_ms).map(|g| g.ms).fold(GAP_MS, f64::max);
    // A long pause says what the client did meanwhile, in ms from its start.
    let longest = report
        .gaps
        .iter()
        .filter(|g| g.to_ms >= t0_ms && g.ms > LONG_PAUSE_MS)
        .max_by(|a, b| a.ms.total_cmp(&b.ms));
    let timeline = longest.map(|g| {
        let events: Vec<String> =
            g.events.iter().map(|(t, what)| format!("+{:.1} ms {what}", t - g.from_ms)).collect();
        format!(
            "; during the {:.1} ms pause (from {:.1} ms after the fault): {}",
            g.ms,
            g.from_ms - t0_ms,
            if events.is_empty() { "nothing failed".to_owned() } else { events.join(", ") }
        )
    });
    let mut c = redis_conn(ip, PORT, None, 2000).await?;
    let held: Vec<i64> = redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut c).await?;
    let errors = if report.errors.is_empty() {
        "no failed writes".to_owned()
    } else {
        let kinds: Vec<String> = report.errors.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        format!("failed writes: {}", kinds.join(", "))
    } + &timeline.unwrap_or_default();
    Ok((gap, report.missing(&held).len(), report.acked.len(), errors))
}

async fn container_of(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    pods.get(name)
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.container_id)
        .context("container id")
}

async fn force_delete(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    pods.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    Ok(())
}

/// A fresh pod instead of a restarted container; waits until the StatefulSet recreated it.
async fn replace_pod(pods: &Api<Pod>, name: &str, old_ip: &str) -> anyhow::Result<String> {
    force_delete(pods, name).await?;
    recreated(pods, name, old_ip).await
}

/// Wait until the StatefulSet's new pod `name` (not at `old_ip`) answers.
async fn recreated(pods: &Api<Pod>, name: &str, old_ip: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(p) = pods.get_opt(name).await?
            && let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone())
            && ip != old_ip
            && p.metadata.deletion_timestamp.is_none()
            && redis_conn(&ip, PORT, None, 300).await.is_ok()
        {
            return Ok(ip);
        }
        if Instant::now() > deadline {
            bail!("pod {name} was not recreated");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Mode {
    stats: [Stats; 3],
    acked: usize,
    lost_failover: usize,
    lost_switchover: usize,
}

impl Mode {
    fn new(name: &str) -> Self {
        let s = |what: &str| Stats { name: format!("{name}: {what}"), values_ms: vec![] };
        Self {
            stats: [
                s("failover client gap"),
                s("failover kill → new primary named"),
                s("switchover client pause"),
            ],
            acked: 0,
            lost_failover: 0,
            lost_switchover: 0,
        }
    }

    /// One run's figures: a failover's gap and when the new primary was named, or a
    /// switchover's pause.
    fn record(&mut self, planned: bool, gap: f64, named_ms: f64, lost: usize, acked: usize) {
        self.acked += acked;
        if planned {
            self.stats[2].values_ms.push(gap);
            self.lost_switchover += lost;
        } else {
            self.stats[0].values_ms.push(gap);
            self.stats[1].values_ms.push(named_ms);
            self.lost_failover += lost;
        }
    }

    fn note(&self, name: &str) -> String {
        format!(
            "{name}: {} acknowledged writes; lost in failovers {} (asynchronous replication), in switchovers {}",
            self.acked, self.lost_failover, self.lost_switchover
        )
    }
}

async fn on_node(args: &Args, node: &NodeCluster) -> anyhow::Result<(Vec<Stats>, Vec<String>)> {
    let client = node.client().await?;
    node.kubectl(&["create", "namespace", NS])?;
    let mut values = vec![
        "--set",
        "sentinel.enabled=true",
        "--set-json",
        "sentinel.namespaces=[\"*\"]",
        "--set",
        "sentinel.auth.none=true",
    ];
    if args.operator_logs.is_some() {
        values.extend(["--set", "logLevel=info\\,understudy::controllers::promotion=debug"]);
    }
    node.install_operator(NS, &values)?;
    node.apply(NS, &super::node::redis_statefulset(node, "b", args.heartbeat()))?;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), NS);
    wait_settled(&hacs).await?;
    let vip = format!("{}:{PORT}", super::lifecycle::cluster_ip(&client, "b-primary").await?);
    let sentinel_vip =
        format!("{}:26379", super::lifecycle::cluster_ip(&client, "understudy-sentinel").await?);
    let master = format!("{NS}/b");
    let (mut stats, mut notes) = (Vec::new(), Vec::new());

    // (c') is (c) with (d)'s failover: the pod force-deleted right after the kill. A container
    // restarted in place (the kubelet does that within a second) comes back as a replica of
    // nothing, which Sentinel takes ~20 s to act on (a master that reports itself a replica
    // is down only after down-after + 2 INFO periods), so (d) cannot be measured with it.
    let modes: [(&str, Option<&str>, bool); 6] = [
        ("(a) ClusterIP, kube-proxy default", None, false),
        ("(c) Sentinel client → Understudy", None, false),
        ("(c') Sentinel client → Understudy, pod deleted", None, true),
        ("(b) ClusterIP, kube-proxy min-sync 0s", Some("--iptables-min-sync-period=0s"), false),
        ("(e) ClusterIP, kube-proxy nftables mode", Some("--proxy-mode=nftables"), false),
        // 1ms, not 0s: in a config file a zero minSyncPeriod reads as unset (the 1 s default).
        ("(f) ClusterIP, kube-proxy nftables min-sync 1ms", Some("--nftables-min-sync-period=1ms"), false),
    ];
    let wanted = |name: &str| {
        args.faults.is_empty() || args.faults.iter().any(|f| name.starts_with(&format!("({f})")))
    };
    for (i, (name, proxy, delete)) in modes.into_iter().enumerate() {
        if !wanted(name) {
            continue;
        }
        if let Some(flag) = proxy {
            if flag.contains("nftables") && which("nft").is_none() {
                bail!("{name} needs the nft binary on the host: apt-get install nftables");
            }
            // Each restart starts from kube-proxy's defaults plus this one flag; the previous
            // mode's rules are cleaned up first (node.sh).
            node.node_sh("proxy", &[flag])?;
            tokio::time::sleep(QUIET).await;
        }
        let addrs = [sentinel_vip.as_str()];
        let target = if name.starts_with("(c") {
            Target::Sentinel { addrs: &addrs, master: &master, password: None }
        } else {
            Target::Plain(&vip)
        };
        let mut m = Mode::new(name);
        for run in 0..args.runs {
            for planned in [false, true] {
                let primary = wait_settled(&hacs).await?;
                let ip = pod_ip(&pods, &primary).await?;
                replicas_online(&ip).await?;
                if planned {
                    tokio::time::sleep(QUIET).await;
                }
                let key = format!("m{i}-{run}-{}", planned as u8);
                let writer = Writer::start_with(Lib::GoRedis, &target, &key, GAP_MS);
                writes_at(&ip, &key, 100).await?;
                let (t0, t0_ms) = (Instant::now(), now_ms());
                if planned {
                    switch_over(&sfos, &format!("sw-{i}-{run}"), &primary).await?;
                } else {
                    node.kill_container(&container_of(&pods, &primary).await?)?;
                    if delete {
                        force_delete(&pods, &primary).await?;
                    }
                }
                let new = wait_new_primary(&hacs, &primary).await?;
                let named_ms = t0.elapsed().as_secs_f64() * 1000.0;
                let new_ip = pod_ip(&pods, &new).await?;
                writes_at(&new_ip, &key, 100).await?;
                let (gap, lost, acked, errors) = measure(writer, t0_ms, &new_ip).await?;
                m.record(planned, gap, named_ms, lost, acked);
                if !planned && delete {
                    recreated(&pods, &primary, &ip).await?;
                } else if !planned {
                    replace_pod(&pods, &primary, &ip).await?;
                }
                eprintln!(
                    "{name} run {run} {}: {primary} → {new}, client gap {gap:.1} ms (named after {named_ms:.0} ms), lost {lost}; {errors}",
                    if planned { "switchover" } else { "failover" }
                );
            }
        }
        notes.push(m.note(name));
        stats.extend(m.stats);
    }

    if !wanted("(d)") {
        return Ok((stats, notes));
    }
    // (d) Real Redis Sentinel on the same pods: the HaCluster goes, the roles stay.
    let primary = wait_settled(&hacs).await?;
    hacs.delete("b", &Default::default()).await?;
    let deadline = Instant::now() + WAIT;
    while hacs.get_opt("b").await?.is_some() {
        if Instant::now() > deadline {
            bail!("the HaCluster was not deleted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Sentinel's own configuration on the members: no self-fencing (the operator set it).
    for p in pods.list(&ListParams::default().labels("app=b")).await?.items {
        let ip = p.status.and_then(|s| s.pod_ip).context("pod IP")?;
        let mut c = redis_conn(&ip, PORT, None, 1000).await?;
        let _: () =
            redis::cmd("CONFIG").arg("SET").arg("min-replicas-to-write").arg(0).query_async(&mut c).await?;
    }
    let (m, note) = sentinel_mode(args, node, &pods, &primary).await?;
    stats.extend(m);
    notes.push(note);
    Ok((stats, notes))
}

/// A field of a Sentinel reply (a flat field/value array; the value follows its name).
fn field(v: &redis::Value, k: &str) -> Option<String> {
    let redis::Value::Array(v) = v else { return None };
    v.chunks(2).find_map(|w| match w {
        [redis::Value::BulkString(a), redis::Value::BulkString(b)] if a == k.as_bytes() => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    })
}

/// Three redis-sentinel processes on this host (quorum 2), stopped on drop.
pub struct Sentinels {
    pub ports: Vec<u16>,
    _procs: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    /// Listening on `bind`, watching the master at `master_ip:master_port` as `m`.
    pub fn start(bind: &str, master_ip: &str, master_port: u16, down_after_ms: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (mut ports, mut procs) = (Vec::new(), Vec::new());
        for i in 0..3 {
            let port = free_port()?;
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind {bind}\nprotected-mode no\nsentinel monitor m {master_ip} {master_port} 2\nsentinel down-after-milliseconds m {down_after_ms}\nsentinel failover-timeout m 10000\nsentinel parallel-syncs m 1\n"
                ),
            )?;
            let mut cmd = std::process::Command::new("redis-sentinel");
            cmd.arg(&conf);
            procs.push(
                spawn(cmd, &dir.path().join(format!("sentinel-{i}.log")))
                    .context("redis-sentinel (apt-get install redis-sentinel)")?,
            );
            ports.push(port);
        }
        Ok(Self { ports, _procs: procs, _dir: dir })
    }

    async fn ask(&self, i: usize, args: &[&str]) -> anyhow::Result<redis::Value> {
        let mut c = redis_conn("127.0.0.1", self.ports[i], None, 1000).await?;
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(&args[1..]);
        Ok(cmd.query_async(&mut c).await?)
    }

    async fn master(&self, i: usize) -> Option<String> {
        match self.ask(i, &["SENTINEL", "get-master-addr-by-name", "m"]).await.ok()? {
            redis::Value::Array(v) => match v.first()? {
                redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every sentinel names the same master and knows the other two, and the master has two
    /// replicas online.
    async fn settled(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut agreed = None;
            let mut ok = true;
            for i in 0..3 {
                let m = self.master(i).await;
                let fields = self.ask(i, &["SENTINEL", "master", "m"]).await.ok();
                let counts = |k: &str| fields.as_ref().and_then(|f| field(f, k));
                // Replicas are checked on the master itself (two online): Sentinel's own
                // list keeps the addresses of pods that are gone.
                ok &= m.is_some()
                    && (agreed.is_none() || agreed == m)
                    && counts("num-other-sentinels").as_deref() == Some("2")
                    && counts("flags").as_deref() == Some("master");
                agreed = m;
            }
            if ok && let Some(ip) = &agreed {
                replicas_online(ip).await?;
                return Ok(ip.clone());
            }
            if Instant::now() > deadline {
                let mut why = String::new();
                for i in 0..3 {
                    let fields = self.ask(i, &["SENTINEL", "master", "m"]).await;
                    let log = std::fs::read_to_string(self._dir.path().join(format!("sentinel-{i}.log")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(25).collect();
                    why.push_str(&format!(
                        "\nsentinel {i}: {fields:?}\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
                bail!("the sentinels did not settle:{why}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn sentinel_mode(
    args: &Args,
    node: &NodeCluster,
    pods: &Api<Pod>,
    primary: &str,
) -> anyhow::Result<(Vec<Stats>, String)> {
    let name = "(d) Sentinel client → Redis Sentinel";
    let ip = pod_ip(pods, primary).await?;
    // Listening on every address: the others reach each one at the address it announces,
    // the host's end of the link to the node.
    let sentinels = Sentinels::start("0.0.0.0", &ip, PORT, args.heartbeat() * 3)?;
    let addrs: Vec<String> = sentinels.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let target = Target::Sentinel { addrs: &addrs, master: "m", password: None };
    let by_ip = |ip: String| async move {
        let list = pods.list(&ListParams::default().labels("app=b")).await?;
        list.items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip.as_str()))
            .and_then(|p| p.metadata.name)
            .with_context(|| format!("no pod has IP {ip}"))
    };
    let mut m = Mode::new(name);
    for run in 0..args.runs {
        for planned in [false, true] {
            let ip = sentinels.settled().await?;
            let primary = by_ip(ip.clone()).await?;
            if planned {
                tokio::time::sleep(QUIET).await;
            }
            let key = format!("m3-{run}-{}", planned as u8);
            let writer = Writer::start_with(Lib::GoRedis, &target, &key, GAP_MS);
            writes_at(&ip, &key, 100).await?;
            let (t0, t0_ms) = (Instant::now(), now_ms());
            if planned {
                sentinels.ask(0, &["SENTINEL", "FAILOVER", "m"]).await?;
            } else {
                node.kill_container(&container_of(pods, &primary).await?)?;
                force_delete(pods, &primary).await?;
            }
            let deadline = Instant::now() + WAIT;
            let new_ip = loop {
                if let Some(n) = sentinels.master(0).await
                    && n != ip
                {
                    break n;
                }
                if Instant::now() > deadline {
                    bail!("Sentinel did not fail over");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let named_ms = t0.elapsed().as_secs_f64() * 1000.0;
            writes_at(&new_ip, &key, 100).await?;
            let (gap, lost, acked, errors) = measure(writer, t0_ms, &new_ip).await?;
            m.record(planned, gap, named_ms, lost, acked);
            if !planned {
                // Not before every sentinel has finished the failover (the failover's leader
                // names the promoted replica while it still reconfigures the others): then a
                // fresh pod, attached by hand to the master they agree on (it starts as a
                // replica of nothing, which Sentinel never learns of). The dead address stays
                // in Sentinel's list of replicas, down; a SENTINEL RESET to drop it raced with
                // Sentinel's own reconfiguration (two failovers in a row, seen).
                let deadline = Instant::now() + WAIT;
                let agreed = loop {
                    let mut seen = Vec::new();
                    for i in 0..3 {
                        let f = sentinels.ask(i, &["SENTINEL", "master", "m"]).await.ok();
                        let f = |k| f.as_ref().and_then(|f| field(f, k));
                        seen.push((f("ip"), f("flags")));
                    }
                    if seen.iter().all(|s| s == &seen[0]) && seen[0].1.as_deref() == Some("master") {
                        break seen[0].0.clone().context("master ip")?;
                    }
                    if Instant::now() > deadline {
                        bail!("the sentinels did not finish the failover: {seen:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                if agreed != new_ip {
                    eprintln!("{name} run {run}: Sentinel moved the master again, to {agreed}");
                }
                let fresh = recreated(pods, &primary, &ip).await?;
                let mut c = redis_conn(&fresh, PORT, None, 1000).await?;
                let _: () = redis::cmd("REPLICAOF").arg(&agreed).arg(PORT).query_async(&mut c).await?;
            }
            let new = by_ip(new_ip.clone()).await.unwrap_or(new_ip);
            eprintln!(
                "{name} run {run} {}: {primary} → {new}, client gap {gap:.1} ms (named after {named_ms:.0} ms), lost {lost}; {errors}",
                if planned { "switchover" } else { "failover" }
            );
        }
    }
    let note = m.note(name);
    Ok((m.stats.into(), note))
}
