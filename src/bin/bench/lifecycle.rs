//! `bench lifecycle`: an ordered restart of three Redis members as users see it, in a real
//! node (tools/node/node.sh), with the operator as pods and a client writing through the
//! primary Service's ClusterIP. Side by side in the same run:
//! - `spec.instances` (the operator runs the members): replicas one at a time, a
//!   switchover, then the old primary;
//! - the peer users have without it: a StatefulSet whose pods an HaCluster adopts
//!   (`selector`), restarted with `kubectl rollout restart` — the StatefulSet controller
//!   deletes the pods from the highest ordinal down, the primary among them, and the
//!   operator fails over when it stops answering.
//!
//! Each run measures the longest pause the client sees, acknowledged writes lost, the roll's
//! duration and the most members that answered as primary at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{Pod, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use understudy::{
    nodecluster::NodeCluster,
    resources::{HaCluster, hacluster::Role, instances::REVISION_ANNOTATION},
};

use super::{Args, Resolver, Stats, Writer};

const NS: &str = "bench";
const PORT: u16 = 6379;
/// Quiet time before each roll, as in `bench node`: two of kube-proxy's default min-sync
/// periods, so that a roll never starts inside the rate limit of the previous one's changes.
const QUIET: Duration = Duration::from_secs(3);
const ROLL_TIMEOUT: Duration = Duration::from_secs(180);

fn manifests(node: &NodeCluster, heartbeat_ms: u64) -> String {
    format!(
        r#"
apiVersion: understudy.dev/v1alpha1
kind: HaCluster
metadata: {{name: u}}
spec:
  engine: Redis
  instances:
    members: 3
    image: {image}
    imagePullPolicy: Never
    parameters: {{save: "", appendonly: "no"}}
    pod: {{terminationGracePeriodSeconds: 2}}
  failover: {{heartbeatInterval: {heartbeat_ms}ms, failureThreshold: 3}}
"#,
        image = node.redis_image
    ) + &format!("---\n{}", super::node::redis_statefulset(node, "s", heartbeat_ms))
}

pub async fn lifecycle(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let node = NodeCluster::up()?;
    let mut stats = Vec::new();
    let mut notes = Vec::new();
    let result = on_node(args, &node, &mut stats, &mut notes).await;
    node.down();
    result?;
    let title = format!(
        "Ordered restart of 3 Redis members through the primary Service (node tier): spec.instances vs a StatefulSet rollout restart; heartbeat {} ms × 3",
        args.heartbeat()
    );
    Ok((title, stats, notes))
}

/// The primary of cluster `name` once every member is healthy, no promotion is in flight,
/// exactly one member is primary and every replica follows it.
async fn settled(hacs: &Api<HaCluster>, name: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + ROLL_TIMEOUT;
    loop {
        if let Ok(c) = hacs.get(name).await
            && let Some(s) = c.status.as_ref().and_then(|s| s.shards.first())
            && let Some(p) = &s.current_primary
            && s.target_primary.is_none()
            && s.members.len() == 3
            && s.members.iter().all(|m| m.healthy)
            && s.members.iter().filter(|m| m.role == Role::Primary).count() == 1
            && s.members.iter().all(|m| m.role == Role::Primary || m.upstream.as_deref() == Some(p))
        {
            return Ok(p.clone());
        }
        if Instant::now() > deadline {
            bail!("cluster {name} did not settle");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `spec.instances` roll is over: Progressing=False UpToDate, three ready pods at the
/// recorded revision, none of them older than the roll.
async fn instances_rolled(
    client: &Client,
    hacs: &Api<HaCluster>,
    since: &[String],
    moved: &mut PrimaryWatch,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + ROLL_TIMEOUT;
    loop {
        let c = hacs.get("u").await?;
        moved.see(&c);
        let st = c.status.clone().unwrap_or_default();
        let up_to_date = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.status == "False" && c.reason == "UpToDate");
        let revision = st.instances.and_then(|i| i.revision);
        let list = pods.list(&ListParams::default().labels("understudy.dev/cluster=u")).await?.items;
        let fresh = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| !since.contains(&p.uid().unwrap_or_default()))
            .filter(|p| revision.is_some() && p.annotations().get(REVISION_ANNOTATION) == revision.as_ref())
            .count();
        if up_to_date && fresh == 3 && list.len() == 3 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the instances roll did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The StatefulSet rollout is over: every replica updated and ready.
async fn sts_rolled(client: &Client, hacs: &Api<HaCluster>, moved: &mut PrimaryWatch) -> anyhow::Result<()> {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + ROLL_TIMEOUT;
    loop {
        if let Ok(c) = hacs.get("s").await {
            moved.see(&c);
        }
        let s = sts.get("s").await?;
        let st = s.status.clone().unwrap_or_default();
        if st.observed_generation >= s.metadata.generation
            && st.update_revision.is_some()
            && st.current_revision == st.update_revision
            && st.updated_replicas == Some(3)
            && st.ready_replicas == Some(3)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the StatefulSet rollout did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When the recorded primary first changed (seen by polling status every 100 ms).
struct PrimaryWatch {
    from: String,
    at: Option<Instant>,
}

impl PrimaryWatch {
    fn see(&mut self, c: &HaCluster) {
        let now = c.status.as_ref().and_then(|s| s.shards.first()).and_then(|s| s.current_primary.clone());
        if self.at.is_none() && now.is_some_and(|p| p != self.from) {
            self.at = Some(Instant::now());
        }
    }
}

/// Samples every member's role every 20 ms and keeps the most primaries seen at once.
struct Sampler {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(client: Client, selector: &'static str) -> Self {
        let (max, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (m, s) = (max.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, NS);
            while !s.load(SeqCst) {
                let ips: Vec<String> = pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                    .collect();
                let roles = futures::future::join_all(ips.iter().map(|ip| role(ip))).await;
                m.fetch_max(roles.iter().filter(|r| r.as_deref() == Some("master")).count(), SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { max, stop, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, SeqCst);
        let _ = self.task.await;
        self.max.load(SeqCst)
    }
}

async fn role(ip: &str) -> Option<String> {
    let mut c = understudy::localredis::redis_conn(ip, PORT, None, 300).await.ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("role:")).map(|r| r.trim().to_owned())
}

/// The ClusterIP of Service `svc` in the bench namespace, once allocated.
pub async fn cluster_ip(client: &Client, svc: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + ROLL_TIMEOUT;
    loop {
        let s = Api::<Service>::namespaced(client.clone(), NS).get_opt(svc).await?;
        if let Some(ip) = s.and_then(|s| s.spec).and_then(|s| s.cluster_ip).filter(|ip| ip != "None") {
            return Ok(ip);
        }
        if Instant::now() > deadline {
            bail!("no ClusterIP for {svc}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn on_node(
    args: &Args,
    node: &NodeCluster,
    stats: &mut Vec<Stats>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let client = node.client().await?;
    node.kubectl(&["create", "namespace", NS])?;
    node.install_operator(NS, &[])?;
    node.apply(NS, &manifests(node, args.heartbeat()))?;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    if args.trace_dir.is_some() {
        node.kubectl(&["-n", NS, "set", "env", "deployment/understudy", "RUST_LOG=info,understudy=debug"])?;
        node.kubectl(&["-n", NS, "rollout", "status", "deployment/understudy", "--timeout=120s"])?;
        node.node_sh("proxy", &["--v=2"])?;
    }
    let result = rolls(args, &client, &hacs, &pods, &sts, stats, notes).await;
    if let Some(dir) = &args.trace_dir {
        std::fs::create_dir_all(dir)?;
        for p in pods.list(&ListParams::default().labels("app.kubernetes.io/name=understudy")).await? {
            let log = node.kubectl(&["-n", NS, "logs", &p.name_any()])?;
            std::fs::write(dir.join(format!("{}.log", p.name_any())), log)?;
        }
        std::fs::copy(node.dir.join("logs/kube-proxy.log"), dir.join("kube-proxy.log"))?;
        eprintln!("trace kept in {}", dir.display());
    }
    result
}

async fn rolls(
    args: &Args,
    client: &Client,
    hacs: &Api<HaCluster>,
    pods: &Api<Pod>,
    sts: &Api<StatefulSet>,
    stats: &mut Vec<Stats>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let kinds: &[(&str, &str, &str)] = if args.trace_dir.is_some() {
        &[("instances", "u", "understudy.dev/cluster=u")]
    } else {
        &[("instances", "u", "understudy.dev/cluster=u"), ("statefulset", "s", "app=s")]
    };
    for &(kind, name, selector) in kinds {
        settled(hacs, name).await.with_context(|| format!("{kind} bootstrap"))?;
        let vip = cluster_ip(client, &format!("{name}-primary")).await?;
        let resolve: Resolver = {
            let vip = vip.clone();
            Arc::new(move || {
                let vip = vip.clone();
                Box::pin(async move { Some((vip, PORT)) })
            })
        };
        let label = if kind == "instances" {
            "spec.instances roll (replicas, switchover, old primary)"
        } else {
            "StatefulSet rollout restart (selector; primary deleted, failover)"
        };
        let mut pause = Stats { name: format!("{label}: client pause"), values_ms: vec![] };
        let mut took = Stats { name: format!("{label}: roll duration"), values_ms: vec![] };
        let (mut lost, mut acked, mut most_primaries) = (0, 0, 0);
        for run in 0..args.runs {
            let primary = settled(hacs, name).await?;
            tokio::time::sleep(QUIET).await;
            let before: Vec<String> = pods
                .list(&ListParams::default().labels(selector))
                .await?
                .items
                .iter()
                .filter_map(|p| p.uid())
                .collect();
            let sampler = Sampler::start(client.clone(), selector);
            let writer = Writer::start(format!("{name}{run}"), resolve.clone()).await;
            let t0 = Instant::now();
            let stamp = format!("run-{run}");
            let mut moved = PrimaryWatch { from: primary.clone(), at: None };
            let rolled = async {
                if kind == "instances" {
                    let p = json!({"spec": {"instances": {"pod": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}});
                    hacs.patch(name, &PatchParams::default(), &Patch::Merge(&p)).await?;
                    instances_rolled(client, hacs, &before, &mut moved).await?;
                } else {
                    let p = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}});
                    sts.patch(name, &PatchParams::default(), &Patch::Merge(&p)).await?;
                    sts_rolled(client, hacs, &mut moved).await?;
                }
                settled(hacs, name).await
            };
            let new = match rolled.await {
                Ok(new) => new,
                // The peer can end without a primary (a restart that outpaces replication):
                // that is its result, reported; the remaining rolls of it are not run.
                Err(e) if kind == "statefulset" => {
                    let ready = hacs
                        .get(name)
                        .await
                        .ok()
                        .and_then(|c| c.status)
                        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                        .map(|c| format!("{}: {}", c.reason, c.message))
                        .unwrap_or_default();
                    let n = writer.abandon();
                    let primaries = sampler.finish().await;
                    let msg = format!(
                        "{label}: run {run} did not recover ({e:#}); {n} writes had been acknowledged; at most {primaries} primary at once; Ready: {ready}; no further rolls of it were run"
                    );
                    eprintln!("{msg}");
                    notes.push(msg);
                    break;
                }
                Err(e) => return Err(e),
            };
            let roll_ms = t0.elapsed().as_secs_f64() * 1000.0;
            let (gap, began, missing, n) = writer.finish_detailed(t0, 500, (&vip, PORT)).await?;
            let missing = missing.len();
            let primaries = sampler.finish().await;
            let at =
                |i: Option<Instant>| i.map_or("-".to_owned(), |i| format!("+{:.1}s", (i - t0).as_secs_f64()));
            if args.trace_dir.is_some()
                && let Some(b) = began
            {
                let wall = std::time::SystemTime::now() - b.elapsed();
                let wall: k8s_openapi::jiff::Timestamp = wall.try_into()?;
                eprintln!("trace: run {run} pause from {wall} for {gap:.1} ms");
            }
            eprintln!(
                "{kind} run {run}: primary {primary} → {new} (status at {}), roll {roll_ms:.0} ms, client pause {gap:.1} ms (began at {}), {missing} of {n} acknowledged writes missing, at most {primaries} primary at once",
                at(moved.at),
                at(began)
            );
            pause.values_ms.push(gap);
            took.values_ms.push(roll_ms);
            lost += missing;
            acked += n;
            most_primaries = most_primaries.max(primaries);
        }
        // A peer that did not finish one roll has no figures, only its note.
        if !pause.values_ms.is_empty() {
            notes.push(format!(
                "{label}: {} rolls, {acked} acknowledged writes, {lost} lost; at most {most_primaries} member(s) answered as primary at once (sampled every 20 ms)",
                pause.values_ms.len()
            ));
            stats.extend([pause, took]);
        }
    }
    Ok(())
}
