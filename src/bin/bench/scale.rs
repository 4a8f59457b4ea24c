//! Scale and failover-storm benchmarks: thousands of HaClusters whose members are simulated
//! agents ([`super::sim`]), the operator in a child process of its own (so that its memory
//! and CPU are its own), the real local control plane.
//!
//! `scale`: time to the first full reconcile, then a steady window (nothing changes) in
//! which the operator's resident memory, CPU per member heartbeat and the API server's
//! request rate are read; then spec edits, timed from the write to the operator's status
//! answering them (watch → reconcile → status, as seen by a client).
//!
//! `storm`: the primaries of `--fail` clusters die at once; time until each is failed over.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};
use understudy::{
    controlplane::{ControlPlane, Options, free_port},
    resources::HaCluster,
};

use super::{Args, Scenario, Stats, sim};

const NS: &str = "scale";
const TOKEN: &str = "bench-agent-token";

/// The simulator processes, each answering for up to [`sim::PER_PROCESS`] members.
struct Sims {
    children: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Sims {
    async fn start(members: usize, logs: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for first in (0..members).step_by(sim::PER_PROCESS) {
            let count = sim::PER_PROCESS.min(members - first);
            let log = std::fs::File::create(logs.join(format!("sim-{first}.log")))?;
            let mut child = Command::new(&exe)
                .args(["simulate", "--first", &first.to_string(), "--count", &count.to_string()])
                .env("BENCH_AGENT_TOKEN", TOKEN)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting a simulator")?;
            let stdin = child.stdin.take().context("stdin")?;
            let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
            match lines.next_line().await? {
                Some(l) if l == "ready" => {}
                other => {
                    bail!("simulator for members {first}.. did not start: {other:?} (see {})", logs.display())
                }
            }
            children.push((child, stdin, lines));
        }
        Ok(Self { children })
    }

    async fn kill(&mut self, g: usize) -> anyhow::Result<()> {
        let (_, stdin, _) = &mut self.children[g / sim::PER_PROCESS];
        stdin.write_all(format!("kill {g}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Requests answered so far, by all simulators.
    async fn served(&mut self) -> anyhow::Result<u64> {
        let mut total = 0;
        for (_, stdin, lines) in &mut self.children {
            stdin.write_all(b"count\n").await?;
            stdin.flush().await?;
            let line = lines.next_line().await?.context("simulator exited")?;
            total += line.strip_prefix("count ").context("count")?.parse::<u64>()?;
        }
        Ok(total)
    }
}

/// What the benchmark's own watch knows about each cluster.
#[derive(Default)]
struct Seen {
    /// First moment the cluster had a recorded primary and no promotion in flight.
    ready_at: HashMap<String, Instant>,
    primary: HashMap<String, String>,
    observed_generation: HashMap<String, i64>,
    /// Spec edits waiting for their answer: name → (generation, sent at).
    pending: HashMap<String, (i64, Instant)>,
    answered: Vec<f64>,
    /// When each cluster's primary last changed.
    changed_at: HashMap<String, Instant>,
}

fn watch(api: Api<HaCluster>, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
        futures::pin_mut!(stream);
        while let Ok(Some(ev)) = stream.try_next().await {
            let (watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) = ev else { continue };
            let now = Instant::now();
            let name = obj.name_any();
            let Some(st) = obj.status else { continue };
            let mut s = seen.lock().expect("seen");
            if let Some(g) = st.observed_generation {
                s.observed_generation.insert(name.clone(), g);
                if let Some((want, sent)) = s.pending.get(&name).copied()
                    && g >= want
                {
                    s.pending.remove(&name);
                    s.answered.push((now - sent).as_secs_f64() * 1000.0);
                }
            }
            let Some(shard) = st.shards.first() else { continue };
            if let (Some(p), None) = (&shard.current_primary, &shard.target_primary) {
                s.ready_at.entry(name.clone()).or_insert(now);
                if s.primary.get(&name) != Some(p) {
                    s.primary.insert(name.clone(), p.clone());
                    s.changed_at.insert(name, now);
                }
            }
        }
    })
}

/// Resident memory (KiB), its peak (KiB) and CPU time (s) of a process.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((kib("VmRSS:"), kib("VmHWM:"), ticks as f64 / hz))
}

/// `apiserver_request_total` summed by (verb, resource).
async fn apiserver_requests(client: &Client) -> anyhow::Result<HashMap<(String, String), f64>> {
    let text = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |k: &str| {
            labels
                .split(&format!("{k}=\"")[..])
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        *out.entry((label("verb"), label("resource"))).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

fn cluster(i: usize, members: usize, heartbeat_ms: u64, routing: bool) -> anyhow::Result<HaCluster> {
    let ms: Vec<_> = (0..members)
        .map(|j| json!({"name": format!("m{j}"), "endpoint": sim::endpoint(i * members + j)}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": format!("c{i:05}")},
        "spec": {"engine": "Agent", "secretRef": {"name": "agent-token"},
                 "shards": [{"name": "s0", "members": ms}], "routing": {"enabled": routing},
                 "failover": {"heartbeatInterval": format!("{heartbeat_ms}ms"), "failureThreshold": 3}}
    }))?)
}

/// The operator, as `bench operator` in a child process.
async fn start_operator(kubeconfig: &Path, logs: &Path) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let log = std::fs::File::create(logs.join("operator.log"))?;
    let mut cmd = match std::env::var("BENCH_OPERATOR_WRAP") {
        Ok(w) => {
            let mut c = Command::new(w);
            c.arg(std::env::current_exe()?);
            c
        }
        Err(_) => Command::new(std::env::current_exe()?),
    };
    let child = cmd
        .args(["operator", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--namespace", NS, "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the operator")?;
    Ok((child, port))
}

struct Setup {
    cp: ControlPlane,
    client: Client,
    sims: Sims,
    operator: Child,
    seen: Arc<Mutex<Seen>>,
    names: Vec<String>,
    logs: PathBuf,
    create_s: f64,
    started: Instant,
    members: usize,
    /// API requests (verb, resource, count) from the operator's start until every cluster
    /// had a primary; the API server's own Lease renewals excluded.
    bootstrap_requests: Vec<(String, String, f64)>,
}

/// Control plane, simulators, `clusters` HaClusters, then the operator; returns once every
/// cluster has a primary.
async fn setup(args: &Args, clusters: usize) -> anyhow::Result<Setup> {
    let members = args.members;
    let cp = ControlPlane::start(Options { controller_manager: false, keep: false }).await?;
    cp.install_generated_crds().await?;
    let client = cp.client().await?;
    cp.create_namespace(NS).await?;
    // Outside the control plane's directory, which goes when it stops: the logs outlive the run.
    let logs = std::env::temp_dir().join("understudy-bench-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    eprintln!("logs: {}", logs.display());
    let sims = Sims::start(clusters * members, &logs).await?;
    eprintln!("{} simulated agents on 127.x.y.z:{}", clusters * members, sim::PORT);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "agent-token"}, "stringData": {"token": TOKEN}}),
            )?,
        )
        .await?;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), NS);
    let t = Instant::now();
    let heartbeat = args.heartbeat();
    futures::stream::iter(0..clusters)
        .map(|i| {
            let hacs = hacs.clone();
            async move {
                hacs.create(&PostParams::default(), &cluster(i, members, heartbeat, !args.no_routing)?)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let create_s = t.elapsed().as_secs_f64();
    eprintln!("created {clusters} HaClusters in {create_s:.1} s");
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch(hacs.clone(), seen.clone());
    let before = apiserver_requests(&client).await?;
    let started = Instant::now();
    let (operator, _) = start_operator(&cp.kubeconfig_path(), &logs).await?;
    let names: Vec<String> = (0..clusters).map(|i| format!("c{i:05}")).collect();
    let deadline = Duration::from_secs(60 + clusters as u64 / 10);
    loop {
        let ready = seen.lock().expect("seen").ready_at.len();
        if ready == clusters {
            break;
        }
        if started.elapsed() > deadline {
            bail!(
                "only {ready}/{clusters} clusters got a primary within {deadline:?}; see {}",
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = apiserver_requests(&client).await?;
    let mut bootstrap_requests: Vec<(String, String, f64)> = after
        .iter()
        .map(|(k, v)| (k.0.clone(), k.1.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|r| r.2 > 0.0 && r.1 != "leases")
        .collect();
    bootstrap_requests.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(Setup {
        cp,
        client,
        sims,
        operator,
        seen,
        names,
        logs,
        create_s,
        started,
        members,
        bootstrap_requests,
    })
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY")
}

/// Wait `--settle-secs`, then until the API server has seen no write from us for 5 s (the
/// Services of a first reconcile take the API server a while to allocate), at most 10 min.
async fn settle(client: &Client, args: &Args) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let t = Instant::now();
    let writes = |m: &HashMap<(String, String), f64>| {
        m.iter()
            .filter(|((verb, resource), _)| resource != "leases" && is_write(verb))
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    let mut before = writes(&apiserver_requests(client).await?);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = writes(&apiserver_requests(client).await?);
        if now == before || t.elapsed() > Duration::from_secs(600) {
            break;
        }
        before = now;
    }
    eprintln!("settled: quiet {:.0} s after the settle time", t.elapsed().as_secs_f64());
    Ok(())
}

pub async fn scale(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let clusters = args.clusters;
    let mut s = setup(args, clusters).await?;
    let pid = s.operator.id().context("operator pid")?;
    let mut first =
        Stats { name: "first full reconcile: start → cluster has a primary".into(), values_ms: vec![] };
    first.values_ms = s
        .seen
        .lock()
        .expect("seen")
        .ready_at
        .values()
        .map(|t| (*t - s.started).as_secs_f64() * 1000.0)
        .collect();
    let all_ready = first.values_ms.iter().copied().fold(0.0, f64::max);
    eprintln!("all {clusters} clusters have a primary after {:.1} s", all_ready / 1000.0);
    let (rss_start, _, _) = proc_usage(pid)?;

    // Steady state: nothing changes.
    settle(&s.client, args).await?;
    let window = Duration::from_secs(args.window_secs);
    let (_, _, cpu0) = proc_usage(pid)?;
    let api0 = apiserver_requests(&s.client).await?;
    let served0 = s.sims.served().await?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (rss, _, cpu1) = proc_usage(pid)?;
    let api1 = apiserver_requests(&s.client).await?;
    let served1 = s.sims.served().await?;
    let secs = t0.elapsed().as_secs_f64();
    let members = (clusters * s.members) as f64;
    let probes_per_s = (served1 - served0) as f64 / secs;
    let cpu = cpu1 - cpu0;
    let mut rates: Vec<(String, String, f64)> = api1
        .iter()
        .map(|(k, v)| (k.0.clone(), k.1.clone(), (v - api0.get(k).copied().unwrap_or(0.0)) / secs))
        .filter(|r| r.2 > 0.0)
        .collect();
    rates.sort_by(|a, b| b.2.total_cmp(&a.2));
    // The API server renews its own identity Lease: not ours.
    let ours = |r: &&(String, String, f64)| r.1 != "leases";
    let total: f64 = rates.iter().filter(ours).map(|r| r.2).sum::<f64>() + 0.0;
    let writes: f64 = rates.iter().filter(ours).filter(|r| is_write(&r.0)).map(|r| r.2).sum::<f64>() + 0.0;

    // Spec edits, answered through watch → reconcile → monitor → status.
    let hacs: Api<HaCluster> = Api::namespaced(s.client.clone(), NS);
    let samples = args.samples.min(clusters);
    let step = clusters / samples.max(1);
    for k in 0..samples {
        let name = &s.names[k * step];
        let sent = Instant::now();
        let patched = hacs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"failover": {"maxLagOnFailover": 1 + k}}})),
            )
            .await?;
        let generation = patched.metadata.generation.unwrap_or_default();
        {
            let mut seen = s.seen.lock().expect("seen");
            if seen.observed_generation.get(name).copied().unwrap_or(0) < generation {
                seen.pending.insert(name.clone(), (generation, sent));
            } else {
                seen.answered.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    while !s.seen.lock().expect("seen").pending.is_empty() && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (unanswered, answered) = {
        let seen = s.seen.lock().expect("seen");
        (seen.pending.len(), seen.answered.clone())
    };
    let (rss_end, hwm, _) = proc_usage(pid)?;
    let latency =
        Stats { name: "spec edit → status answers it (watch→reconcile)".into(), values_ms: answered };

    let heartbeat = args.heartbeat();
    let per_member_s = members / (heartbeat as f64 / 1000.0);
    let mut extra = vec![
        format!(
            "clusters: {clusters} × {} members = {members} simulated agents; heartbeat {heartbeat} ms; \
             created in {:.1} s; every cluster had a primary {:.1} s after the operator started",
            s.members,
            s.create_s,
            all_ready / 1000.0
        ),
        format!(
            "operator resident memory: {:.1} MiB after the first reconcile, {:.1} MiB steady, {:.1} MiB at the end, peak {:.1} MiB",
            rss_start as f64 / 1024.0,
            rss as f64 / 1024.0,
            rss_end as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        format!(
            "steady window {secs:.0} s: operator CPU {:.1}% of one core; {probes_per_s:.0} heartbeat probes/s answered \
             (expected {per_member_s:.0}); CPU per member heartbeat {:.1} µs",
            cpu / secs * 100.0,
            cpu / secs / probes_per_s.max(1.0) * 1e6
        ),
        format!(
            "API server in the steady window: {total:.2} requests/s, of which {writes:.2} writes/s (the API server's own Lease renewals excluded)"
        ),
    ];
    let breakdown: Vec<String> = rates
        .iter()
        .map(|r| format!("{} {}: {:.2}/s", r.0, if r.1.is_empty() { "-" } else { &r.1 }, r.2))
        .collect();
    extra.push(format!("by verb and resource: {}", breakdown.join(", ")));
    let bootstrap: Vec<String> = s
        .bootstrap_requests
        .iter()
        .map(|r| format!("{} {}: {:.0}", r.0, if r.1.is_empty() { "-" } else { &r.1 }, r.2))
        .collect();
    extra.push(format!(
        "API requests until every cluster had a primary, by verb and resource: {}",
        bootstrap.join(", ")
    ));
    if unanswered > 0 {
        extra.push(format!("{unanswered} spec edits were not answered within 30 s"));
    }
    s.operator.kill().await.ok();
    drop(s.sims);
    eprintln!("logs were in {}", s.logs.display());
    drop(s.cp);
    let title = format!("Understudy at scale: {clusters} HaClusters of simulated agents");
    Ok((title, vec![first, latency], extra))
}

pub async fn storm(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let clusters = args.clusters;
    let fail = args.fail.min(clusters);
    let mut s = setup(args, clusters).await?;
    settle(&s.client, args).await?;
    let before: HashMap<String, String> = s.seen.lock().expect("seen").primary.clone();
    let step = clusters / fail.max(1);
    let victims: Vec<(usize, String)> = (0..fail).map(|k| (k * step, s.names[k * step].clone())).collect();
    let mut kills = Vec::new();
    for (i, name) in &victims {
        let primary = before.get(name).context("primary")?;
        let j: usize = primary.trim_start_matches('m').parse()?;
        kills.push(i * s.members + j);
    }
    let t0 = Instant::now();
    for g in kills {
        s.sims.kill(g).await?;
    }
    let deadline = Duration::from_secs(300);
    loop {
        let done = {
            let seen = s.seen.lock().expect("seen");
            victims.iter().filter(|(_, n)| seen.changed_at.get(n).is_some_and(|t| *t > t0)).count()
        };
        if done == fail {
            break;
        }
        if t0.elapsed() > deadline {
            bail!("only {done}/{fail} failed over within {deadline:?}; see {}", s.logs.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let stragglers show: any other cluster whose primary moved is a false failover.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (times, collateral) = {
        let seen = s.seen.lock().expect("seen");
        let times: Vec<f64> = victims
            .iter()
            .filter_map(|(_, n)| seen.changed_at.get(n))
            .map(|t| (*t - t0).as_secs_f64() * 1000.0)
            .collect();
        let victim_names: std::collections::HashSet<&String> = victims.iter().map(|v| &v.1).collect();
        let collateral = s
            .names
            .iter()
            .filter(|n| !victim_names.contains(n))
            .filter(|n| seen.changed_at.get(*n).is_some_and(|t| *t > t0))
            .count();
        (times, collateral)
    };
    let all = times.iter().copied().fold(0.0, f64::max);
    let heartbeat = args.heartbeat();
    let extra = vec![format!(
        "{fail} of {clusters} primaries killed at once ({} members each, heartbeat {heartbeat} ms × failureThreshold 3 = \
             {} ms detection window); all failed over {:.0} ms after the kill; clusters failed over that were not killed: {collateral}",
        s.members,
        heartbeat * 3,
        all
    )];
    s.operator.kill().await.ok();
    drop(s.sims);
    drop(s.cp);
    let stats = vec![Stats { name: "kill → new primary recorded (per cluster)".into(), values_ms: times }];
    Ok((format!("Failover storm: {fail} of {clusters} primaries at once"), stats, extra))
}

/// `bench operator`: the operator alone in this process, watching one namespace.
pub async fn operator_child(args: &Args) -> anyhow::Result<()> {
    let kubeconfig = args.kubeconfig.clone().context("--kubeconfig")?;
    let client = understudy::controlplane::client_from_kubeconfig(&kubeconfig).await?;
    let cfg = understudy::operator::RunConfig {
        leader_elect: None,
        listen: args.listen.context("--listen")?,
        namespaces: vec![args.namespace.clone()],
        allow_client_address: true,
        allow_workload_restarts: true,
        sentinel: None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    understudy::operator::run(client, cfg, async move {
        term.recv().await;
    })
    .await
}

pub fn is_child(s: Scenario) -> bool {
    matches!(s, Scenario::Simulate | Scenario::Operator)
}
