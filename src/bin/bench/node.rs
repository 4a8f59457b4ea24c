//! `bench node`: failover and switchover as users see them — the operator as two pods
//! installed by Helm from the image built here, a Redis StatefulSet of three pods run by a
//! real kubelet, and the same writer as the loopback scenarios going through the primary
//! Service's ClusterIP (kube-proxy, iptables mode). Printed side by side with the loopback
//! figures of the same run, so what the EndpointSlice → kube-proxy hop costs is visible; once
//! with kube-proxy's defaults and once with `--iptables-min-sync-period=0s`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};
use understudy::{
    nodecluster::NodeCluster,
    resources::{HaCluster, ShardFailover},
};

use super::{Args, Resolver, Stats, Writer, switch_over, wait_new_primary, wait_settled};

const NS: &str = "bench";
const PORT: u16 = 6379;
/// Quiet time before a switchover: two of kube-proxy's default min-sync periods, since a
/// change that arrives within one period of a sync is applied a period later.
const QUIET_MS: u64 = 3000;

fn manifests(node: &NodeCluster, heartbeat_ms: u64) -> String {
    redis_statefulset(node, "b", heartbeat_ms)
}

/// A Redis StatefulSet `name` of three pods, started as replicas of nothing, and an HaCluster
/// `name` adopting them by label (`selector`): what users run without `spec.instances`.
pub fn redis_statefulset(node: &NodeCluster, name: &str, heartbeat_ms: u64) -> String {
    redis_statefulset_failover(
        node,
        name,
        &format!("heartbeatInterval: {heartbeat_ms}ms, failureThreshold: 3"),
    )
}

/// [`redis_statefulset`] with the HaCluster's `spec.failover` given (YAML flow mapping body).
pub fn redis_statefulset_failover(node: &NodeCluster, name: &str, failover: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}-headless}}
spec: {{clusterIP: None, selector: {{app: {name}}}, ports: [{{port: {PORT}}}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: {name}-headless
  replicas: 3
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      dnsPolicy: Default
      terminationGracePeriodSeconds: 2
      containers:
      - name: redis
        image: {image}
        imagePullPolicy: Never
        args: ["--port", "{PORT}", "--protected-mode", "no", "--replicaof", "127.0.0.1", "1", "--save", "", "--appendonly", "no"]
        readinessProbe: {{tcpSocket: {{port: {PORT}}}, periodSeconds: 2}}
---
apiVersion: understudy.dev/v1alpha1
kind: HaCluster
metadata: {{name: {name}}}
spec:
  engine: Redis
  selector: {{matchLabels: {{app: {name}}}, port: {PORT}}}
  failover: {{{failover}}}
"#,
        image = node.redis_image
    )
}

pub async fn node(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    // Loopback first (the node is not running yet, so it takes no CPU from them).
    let mut stats = Vec::new();
    let mut notes = Vec::new();
    for switchover in [false, true] {
        let (_, s, n) = super::understudy_bench(args, switchover).await?;
        let kind = if switchover { "switchover" } else { "failover" };
        let first = s.into_iter().next().context("loopback stats")?;
        stats.push(Stats { name: format!("loopback {kind}: {}", first.name), values_ms: first.values_ms });
        notes.extend(n.into_iter().map(|n| format!("loopback {kind}: {n}")));
    }
    let node = NodeCluster::up()?;
    let result = on_node(args, &node, &mut stats, &mut notes).await;
    node.down();
    result?;
    let title = format!(
        "Client through the primary Service's ClusterIP, operator as pods (node tier) vs loopback; 3 members, heartbeat {} ms × 3",
        args.heartbeat()
    );
    Ok((title, stats, notes))
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
    wait_settled(&hacs).await?;
    let vip = super::lifecycle::cluster_ip(&client, "b-primary").await?;
    let resolve: Resolver = {
        let vip = vip.clone();
        Arc::new(move || {
            let vip = vip.clone();
            Box::pin(async move { Some((vip, PORT)) })
        })
    };
    for (proxy, flags) in
        [("kube-proxy default", None), ("kube-proxy min-sync 0s", Some("--iptables-min-sync-period=0s"))]
    {
        if let Some(flag) = flags {
            node.node_sh("proxy", &[flag])?;
            // Let the restarted kube-proxy program the Services before measuring.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let mut failover = Stats { name: format!("node, {proxy}: failover client gap"), values_ms: vec![] };
        let mut flip = Stats { name: format!("node, {proxy}: failover kill → status"), values_ms: vec![] };
        let mut switchover =
            Stats { name: format!("node, {proxy}: switchover client pause"), values_ms: vec![] };
        let (mut lost_f, mut lost_s, mut acked) = (0, 0, 0);
        for run in 0..args.runs {
            for planned in [false, true] {
                let primary = wait_settled(&hacs).await?;
                if planned {
                    // A planned switchover on a quiet cluster: the previous run's recovery
                    // (a new pod joining the replicas Service) made kube-proxy sync just now,
                    // and with default settings it would hold the switch back until one
                    // --iptables-min-sync-period (1 s) after that sync. Measured both ways
                    // in BENCHMARKS.md.
                    tokio::time::sleep(Duration::from_millis(QUIET_MS)).await;
                }
                let writer = Writer::start(
                    format!("n{}{run}{}", flags.is_some() as u8, planned as u8),
                    resolve.clone(),
                )
                .await;
                let t0 = Instant::now();
                if planned {
                    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), NS);
                    switch_over(&sfos, &format!("sw-{}-{run}", flags.is_some() as u8), &primary).await?;
                } else {
                    let pod = pods.get(&primary).await?;
                    let cid = pod
                        .status
                        .and_then(|s| s.container_statuses)
                        .and_then(|c| c.into_iter().next())
                        .and_then(|c| c.container_id)
                        .context("container id of the primary")?;
                    node.kill_container(&cid)?;
                }
                let new = wait_new_primary(&hacs, &primary).await?;
                let status_ms = t0.elapsed().as_secs_f64() * 1000.0;
                let (gap, missing, n) = writer.finish(t0, 1500, (&vip, PORT)).await?;
                acked += n;
                if planned {
                    switchover.values_ms.push(gap);
                    lost_s += missing;
                } else {
                    failover.values_ms.push(gap);
                    flip.values_ms.push(status_ms);
                    lost_f += missing;
                    // A fresh pod instead of a restarted container: the kubelet's restart
                    // back-off would otherwise grow with every run.
                    pods.delete(
                        &primary,
                        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
                    )
                    .await?;
                }
                eprintln!(
                    "{proxy} run {run} {}: {primary} → {new}, client gap {gap:.1} ms (status after {status_ms:.0} ms)",
                    if planned { "switchover" } else { "failover" }
                );
            }
        }
        notes.push(format!(
            "node, {proxy}: acknowledged writes {acked}; lost in failovers {lost_f} (asynchronous replication); lost in switchovers {lost_s}"
        ));
        stats.extend([failover, flip, switchover]);
    }
    Ok(())
}
