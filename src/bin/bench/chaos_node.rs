//! `bench chaos-node`: the randomized fault loop of `bench chaos` where users run Understudy —
//! the operator as two pods installed by Helm from the image built here (leader election), a
//! Redis StatefulSet of three pods run by a real kubelet and adopted by an HaCluster
//! (`selector`), the routed client writing through the primary Service's ClusterIP
//! (kube-proxy), the stale client holding a connection to the first primary's pod IP.
//!
//! Faults are those of `bench chaos`, aimed at the real processes: SIGKILL or SIGSTOP of a
//! member's redis-server (host pid from containerd; a killed one is restarted by the
//! kubelet, so a kill has no hold), SIGKILL of the leader operator pod's process (the kubelet
//! restarts it; the other replica may take the Lease), SIGSTOP of the node's kube-apiserver,
//! a ShardFailover or FailoverRequest. The checker is the same; the server that acknowledged
//! a write is the address the server itself reports for the connection (`CLIENT INFO`), since
//! the routed client dials a ClusterIP.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};
use understudy::{nodecluster::NodeCluster, resources::HaCluster};

use super::{
    Args,
    chaos::{Ops, Outcome, Plan, Resolve, Runner, Site, api, run_in},
};

const NS: &str = "chaos";
const PORT: u16 = 6379;
const OPERATOR_PODS: &str = "app.kubernetes.io/name=understudy";

pub struct NodeBench<'a> {
    node: NodeCluster,
    client: Client,
    args: &'a Args,
    logs: PathBuf,
}

impl<'a> NodeBench<'a> {
    /// Start the node, install the operator (two replicas, leader election) into `chaos`.
    pub async fn up(args: &'a Args, logs: PathBuf) -> anyhow::Result<Self> {
        let node = NodeCluster::up()?;
        let client = node.client().await?;
        node.kubectl(&["create", "namespace", NS])?;
        node.install_operator(NS, &[])?;
        Ok(Self { node, client, args, logs })
    }

    pub fn down(&self) {
        self.node.down();
    }

    /// Both operator pods' logs since the run began, into the logs directory.
    fn save_operator_logs(&self, run: usize, since: Duration) -> Vec<PathBuf> {
        let since = format!("--since={}s", since.as_secs() + 5);
        let mut out = Vec::new();
        let pods = self.node.kubectl(&["-n", NS, "get", "pods", "-l", OPERATOR_PODS, "-o", "name"]);
        for pod in pods.unwrap_or_default().lines() {
            let short = pod.trim_start_matches("pod/");
            for previous in [false, true] {
                let mut a = vec!["-n", NS, "logs", pod, since.as_str()];
                if previous {
                    a.push("--previous");
                }
                if let Ok(log) = self.node.kubectl(&a) {
                    let path = self.logs.join(format!(
                        "chaos-node-{run}-{short}{}.log",
                        if previous { "-previous" } else { "" }
                    ));
                    if std::fs::write(&path, log).is_ok() {
                        out.push(path);
                    }
                }
            }
        }
        // What status recorded (lastFailover's steps say which reports arrived).
        if let Ok(yaml) = self.node.kubectl(&["-n", NS, "get", "haclusters", "-o", "yaml"]) {
            let path = self.logs.join(format!("chaos-node-{run}-haclusters.yaml"));
            if std::fs::write(&path, yaml).is_ok() {
                out.push(path);
            }
        }
        out
    }
}

impl Runner for NodeBench<'_> {
    async fn run(&mut self, run: usize, seed: u64, plan: Plan) -> anyhow::Result<Outcome> {
        let began = Instant::now();
        let name = format!("c{run}");
        let failover = format!(
            "heartbeatInterval: {}ms, failureThreshold: 3, maxLagOnFailover: 1000000000",
            self.args.heartbeat()
        );
        self.node.apply(NS, &super::node::redis_statefulset_failover(&self.node, &name, &failover))?;
        let hacs: Api<HaCluster> = Api::namespaced(self.client.clone(), NS);
        let vip = cluster_ip(&self.client, &format!("{name}-primary")).await?;
        let mut site = NodeSite {
            node: &self.node,
            client: self.client.clone(),
            names: (0..3).map(|i| format!("{name}-{i}")).collect(),
            name,
            vip,
            killed_operator: None,
            operator_restarts: vec![],
        };
        site.operator_restarts =
            site.pods(OPERATOR_PODS).await.iter().map(|p| (p.name_any(), restarts(p))).collect();
        let ops = Ops { client: &self.client, ns: NS, suffix: "node" };
        let result = run_in(self.args, &ops, run, seed, plan, &hacs, &mut site).await;
        let mut out = match result {
            Ok(o) => o,
            Err(e) => {
                let logs = self.save_operator_logs(run, began.elapsed());
                site.remove().await;
                return Err(e.context(format!("operator logs: {logs:?}")));
            }
        };
        // Also a loss the operator did not record: what it did is the only way to learn why.
        if out.violated() || out.unrecorded_loss() {
            out.logs = self.save_operator_logs(run, began.elapsed());
        }
        site.remove().await;
        Ok(out)
    }
}

async fn cluster_ip(client: &Client, svc: &str) -> anyhow::Result<String> {
    let api: Api<Service> = Api::namespaced(client.clone(), NS);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(ip) =
            api.get_opt(svc).await?.and_then(|s| s.spec).and_then(|s| s.cluster_ip).filter(|ip| ip != "None")
        {
            return Ok(ip);
        }
        anyhow::ensure!(Instant::now() < until, "Service {svc} has no ClusterIP after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run's members: the pods `<name>-0..2` of StatefulSet `<name>`.
struct NodeSite<'a> {
    node: &'a NodeCluster,
    client: Client,
    name: String,
    names: Vec<String>,
    vip: String,
    /// The operator pod whose process was killed, with its uid and restart count then: it
    /// is ready again only once the kubelet has restarted it (or it was replaced).
    killed_operator: Option<(String, String, i32)>,
    /// Each operator pod's restart count when the run began.
    operator_restarts: Vec<(String, i32)>,
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl NodeSite<'_> {
    async fn pods(&self, selector: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        api(pods.list(&ListParams::default().labels(selector))).await.map(|l| l.items).unwrap_or_default()
    }

    async fn pod(&self, name: &str) -> Option<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        api(pods.get(name)).await
    }

    /// The host pid of a pod's first container.
    fn pid_of(&self, pod: &Pod) -> Option<i32> {
        let cid = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.container_id.clone()?;
        self.node.container_pid(&cid).ok().map(|p| p as i32)
    }

    /// Delete the run's objects and wait (up to 30 s) until its pods are gone, so that the
    /// next run starts on a quiet node. An operator pod whose process was killed is replaced
    /// too: the kubelet's restart back-off of a container grows with every crash (up to five
    /// minutes), and the runs share the operator pods.
    async fn remove(&self) {
        // Restarted during the run: killed, or exited on losing its Lease in an API outage.
        let restarted: Vec<String> = self
            .pods(OPERATOR_PODS)
            .await
            .iter()
            .filter(|p| {
                self.operator_restarts.iter().any(|(name, n)| *name == p.name_any() && restarts(p) > *n)
            })
            .map(|p| p.name_any())
            .collect();
        if !restarted.is_empty() {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), NS);
            for pod in &restarted {
                let _ = api
                    .delete(pod, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                    .await;
            }
            let until = Instant::now() + Duration::from_secs(120);
            loop {
                let pods = self.pods(OPERATOR_PODS).await;
                let fresh = !pods.iter().any(|p| restarted.contains(&p.name_any()));
                if fresh && pods.len() == 2 && pods.iter().all(ready) || Instant::now() > until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for kind in ["hacluster", "statefulset", "service"] {
            let obj = if kind == "service" { format!("{}-headless", self.name) } else { self.name.clone() };
            let _ =
                self.node.kubectl(&["-n", NS, "delete", kind, &obj, "--wait=false", "--ignore-not-found"]);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        for p in self.pods(&format!("app={}", self.name)).await {
            let _ = api
                .delete(&p.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                .await;
        }
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && !self.pods(&format!("app={}", self.name)).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Site for NodeSite<'_> {
    fn cluster(&self) -> &str {
        &self.name
    }
    fn names(&self) -> &[String] {
        &self.names
    }
    async fn addrs(&self) -> Vec<Option<(String, u16)>> {
        let pods = self.pods(&format!("app={}", self.name)).await;
        self.names
            .iter()
            .map(|n| {
                let p =
                    pods.iter().find(|p| p.name_any() == *n && p.metadata.deletion_timestamp.is_none())?;
                Some((p.status.as_ref()?.pod_ip.clone()?, PORT))
            })
            .collect()
    }
    async fn pid(&self, i: usize) -> Option<i32> {
        let pod = self.pod(&self.names[i]).await?;
        self.pid_of(&pod)
    }
    fn restarts_by_itself(&self) -> bool {
        true
    }
    async fn kill_member(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.pid(i).await.with_context(|| format!("{}'s pid", self.names[i]))?;
        // SAFETY: kill(2) of a member container's host process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Ok(())
    }
    async fn revive_member(&mut self, _: usize) -> anyhow::Result<()> {
        Ok(())
    }
    async fn kill_operator(&mut self) -> anyhow::Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NS);
        let leader = api(leases.get("understudy-leader"))
            .await
            .and_then(|l| l.spec?.holder_identity)
            .context("the operator's Lease holder")?;
        let pod = self.pod(&leader).await.with_context(|| format!("the leader pod {leader}"))?;
        let pid = self.pid_of(&pod).with_context(|| format!("{leader}'s pid"))?;
        self.killed_operator = Some((leader, pod.uid().unwrap_or_default(), restarts(&pod)));
        // SAFETY: kill(2) of the operator container's host process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Ok(())
    }
    async fn revive_operator(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    async fn operator_ready(&self) -> bool {
        let pods = self.pods(OPERATOR_PODS).await;
        let restarted = self.killed_operator.as_ref().is_none_or(|(name, uid, n)| {
            pods.iter()
                .any(|p| p.name_any() == *name && (p.uid().as_deref() != Some(uid) || restarts(p) > *n))
                || !pods.iter().any(|p| p.name_any() == *name)
        });
        pods.len() == 2 && restarted && pods.iter().all(ready)
    }
    fn apiserver_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.node.dir.join("pids/kube-apiserver")).ok()?.trim().parse().ok()
    }
    fn routed(&self, _: &Api<HaCluster>) -> Resolve {
        let vip = self.vip.clone();
        Arc::new(move || {
            let vip = vip.clone();
            Box::pin(async move { Some((vip, PORT)) })
        })
    }
}
