//! A user's Redis StatefulSet, run by the kubelet, managed by an HaCluster with `selector`,
//! with the operator installed by Helm as a pod; a client writes through the primary
//! Service's ClusterIP the whole time.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client, api::PostParams};
use serde_json::json;
use understudy::resources::{HaCluster, ShardFailover, hacluster::Role, shard_failover::ShardFailoverPhase};

use crate::{
    client::{RoleSampler, Writer, master_host, missing},
    support::{self, Node, TestNs, container_id, eventually, pod_ip, pods},
};

const WAIT: Duration = Duration::from_secs(90);
pub const PORT: u16 = 6379;

/// A StatefulSet of three Redis pods as a user writes it: every member starts as a replica of
/// nothing (`--replicaof 127.0.0.1 1`) and the operator elects the primary.
pub fn redis_statefulset(node: &Node, name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}-headless}}
spec:
  clusterIP: None
  selector: {{app: {name}}}
  ports: [{{name: redis, port: {PORT}}}]
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
      terminationGracePeriodSeconds: 5
      containers:
      - name: redis
        image: {image}
        imagePullPolicy: Never
        args: ["--port", "{PORT}", "--protected-mode", "no", "--replicaof", "127.0.0.1", "1",
               "--save", "", "--appendonly", "no"]
        ports: [{{name: redis, containerPort: {PORT}}}]
        readinessProbe:
          tcpSocket: {{port: {PORT}}}
          periodSeconds: 2
"#,
        image = node.redis_image
    )
}

pub fn haclusterlike(name: &str) -> String {
    format!(
        r#"
apiVersion: understudy.dev/v1alpha1
kind: HaCluster
metadata: {{name: {name}}}
spec:
  engine: Redis
  selector:
    matchLabels: {{app: {name}}}
    port: {PORT}
  failover: {{heartbeatInterval: 200ms, failureThreshold: 3}}
"#
    )
}

/// The shard's current primary once it is healthy and no promotion is in flight, other than `not`.
pub async fn wait_primary(api: &Api<HaCluster>, name: &str, not: Option<&str>) -> String {
    eventually(WAIT, &format!("a healthy primary of {name} other than {not:?}"), || async {
        let c = api.get(name).await.ok()?;
        let s = c.status?.shards.into_iter().find(|s| s.name == "main")?;
        let p = s.current_primary.clone()?;
        let healthy = s.members.iter().any(|m| m.name == p && m.healthy && m.role == Role::Primary);
        (healthy && s.target_primary.is_none() && Some(p.as_str()) != not).then_some(p)
    })
    .await
}

/// Wait until every pod of `app` other than the primary replicates from it, link up.
pub async fn wait_replicas_follow(client: &Client, ns: &str, app: &str, primary: &str) {
    eventually(WAIT, &format!("every replica of {app} following {primary}"), || async {
        let pods = pods(client, ns, &format!("app={app}")).await;
        let primary_ip =
            pods.iter().find(|p| p.metadata.name.as_deref() == Some(primary)).and_then(pod_ip)?;
        for p in pods.iter().filter(|p| p.metadata.name.as_deref() != Some(primary)) {
            let ip = pod_ip(p)?;
            if master_host(&ip, PORT).await? != primary_ip {
                return None;
            }
        }
        (pods.len() == 3).then_some(())
    })
    .await
}

pub async fn cluster_ip(client: &Client, ns: &str, svc: &str) -> String {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("Service {svc}"), || async {
        api.get(svc).await.ok()?.spec?.cluster_ip.filter(|ip| ip != "None")
    })
    .await
}

/// What every test of a managed Redis StatefulSet starts from.
pub struct Managed {
    pub client: Client,
    pub ns: TestNs,
    pub hacs: Api<HaCluster>,
    /// The primary elected at bootstrap, with both replicas following it.
    pub primary: String,
}

/// The operator installed by Helm into a fresh namespace, a Redis StatefulSet `cache` of three
/// pods and an HaCluster `cache` over it; returns once a primary is elected and followed.
pub async fn managed_redis(node: &'static Node, prefix: &str) -> Managed {
    let client = node.client().await.expect("client");
    let ns = TestNs::new(node, &client, prefix).await;
    node.install_operator(&ns.name, &[]).unwrap();
    let t = Instant::now();
    node.apply(&ns.name, &redis_statefulset(node, "cache")).unwrap();
    node.apply(&ns.name, &haclusterlike("cache")).unwrap();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns.name);
    let primary = wait_primary(&hacs, "cache", None).await;
    wait_replicas_follow(&client, &ns.name, "cache", &primary).await;
    eprintln!(
        "bootstrap: {primary} primary, both replicas following, {:.2}s after apply",
        t.elapsed().as_secs_f64()
    );
    Managed { client, ns, hacs, primary }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_statefulset_fails_over_and_switches_over_through_its_service() {
    let Some(node) = support::node() else { return };
    let _shared = support::SHARED_NODE.read().await;
    let Managed { client, ns, hacs, primary: first } = managed_redis(node, "sts").await;
    let sampler = RoleSampler::start(client.clone(), &ns.name, "app=cache", PORT);
    let vip = cluster_ip(&client, &ns.name, "cache-primary").await;
    let writer = Writer::start(&vip, PORT);
    writer.wait_more(200, WAIT).await;

    // 1. The primary's container is killed (SIGKILL through the runtime); the kubelet restarts it.
    let victim = pods(&client, &ns.name, "app=cache")
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(&first))
        .unwrap();
    let killed = Instant::now();
    node.kill_container(&container_id(&victim).expect("container id")).unwrap();
    let second = wait_primary(&hacs, "cache", Some(&first)).await;
    let promoted = killed.elapsed();
    writer.wait_more(200, WAIT).await;
    let gap = writer.longest_gap(killed, Instant::now());
    eprintln!(
        "container kill: {first} → {second}; status after {promoted:?}, client write gap through the Service {gap:?}"
    );
    wait_replicas_follow(&client, &ns.name, "cache", &second).await;
    eprintln!("the restarted {first} is a replica of {second}");

    // 2. The new primary's pod is force-deleted; the StatefulSet recreates it.
    let deleted = Instant::now();
    node.kubectl(&["-n", &ns.name, "delete", "pod", &second, "--grace-period=0", "--force"]).unwrap();
    let third = wait_primary(&hacs, "cache", Some(&second)).await;
    writer.wait_more(200, WAIT).await;
    let gap2 = writer.longest_gap(deleted, Instant::now());
    eprintln!("force delete: {second} → {third}; status after {:?}, client gap {gap2:?}", deleted.elapsed());
    wait_replicas_follow(&client, &ns.name, "cache", &third).await;
    eprintln!("the recreated {second} is a replica of {third}");

    // 3. A planned switchover (ShardFailover) under the same client: nothing acknowledged is lost.
    let from_seq = writer.last_seq() + 1;
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns.name);
    let sfo: ShardFailover = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
        "metadata": {"name": "planned"}, "spec": {"shardUids": [third]}
    }))
    .unwrap();
    let started = Instant::now();
    sfos.create(&PostParams::default(), &sfo).await.unwrap();
    let done = eventually(WAIT, "ShardFailover planned to finish", || async {
        let s = sfos.get("planned").await.ok()?;
        let phase = s.status.as_ref()?.phase?;
        matches!(phase, ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed).then_some(s)
    })
    .await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(ShardFailoverPhase::Succeeded), "{:?}", done.status);
    let fourth = wait_primary(&hacs, "cache", Some(&third)).await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(started, Instant::now());
    eprintln!(
        "switchover: {third} → {fourth} in {:?}; longest client pause through the Service {pause:?}",
        started.elapsed()
    );

    let acked = writer.stop().await;
    let planned: Vec<u64> = acked.iter().copied().filter(|n| *n >= from_seq).collect();
    let lost_planned = missing(&vip, PORT, &planned).await;
    let lost_all = missing(&vip, PORT, &acked).await;
    eprintln!(
        "writes: {} acknowledged, {} missing on the final primary ({} of them in the unplanned failovers); switchover: {} acknowledged, {} lost",
        acked.len(),
        lost_all.len(),
        lost_all.len() - lost_planned.len(),
        planned.len(),
        lost_planned.len()
    );
    assert!(
        lost_planned.is_empty(),
        "acknowledged writes lost in the switchover: {:?}",
        &lost_planned[..lost_planned.len().min(20)]
    );
    assert!(sampler.rounds() > 50, "the role sampler ran {} rounds", sampler.rounds());
    assert_eq!(sampler.max(), 1, "two members answered as primary at once");
}
