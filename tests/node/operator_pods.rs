//! The operator as pods under duress: its leader killed in the middle of a ShardFailover,
//! and the node's kubelet stopped (node NotReady) while every member is healthy.

use std::time::{Duration, Instant};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node as KubeNode};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use understudy::resources::{HaCluster, ShardFailover, shard_failover::ShardFailoverPhase};

use crate::{
    client::{RoleSampler, Writer, missing},
    redis_pods::{Managed, cluster_ip, managed_redis, wait_primary, wait_replicas_follow},
    support::{self, eventually},
};

const WAIT: Duration = Duration::from_secs(120);
const PORT: u16 = 6379;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_takes_the_lease_and_finishes_a_shard_failover_when_the_leader_pod_dies() {
    let Some(node) = support::node() else { return };
    let _shared = support::SHARED_NODE.read().await;
    let Managed { client, ns, hacs, primary: first } = managed_redis(node, "lead").await;
    let sampler = RoleSampler::start(client.clone(), &ns.name, "app=cache", PORT);
    let vip = cluster_ip(&client, &ns.name, "cache-primary").await;
    let writer = Writer::start(&vip, PORT);
    writer.wait_more(200, WAIT).await;
    let from_seq = writer.last_seq() + 1;

    let epoch_of = |c: &HaCluster| c.status.as_ref().and_then(|s| s.shards.first()).map_or(0, |s| s.epoch);
    let epoch_before = epoch_of(&hacs.get("cache").await.unwrap());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let (leader, leader_pid) = support::leader(node, &client, &ns.name).await;

    // Submit, and kill the leader's process the moment it has taken the ShardFailover up.
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns.name);
    let sfo: ShardFailover = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
        "metadata": {"name": "planned"}, "spec": {"shardUids": [first]}
    }))
    .unwrap();
    sfos.create(&PostParams::default(), &sfo).await.unwrap();
    let seen = eventually(WAIT, "the leader to take the ShardFailover up", || async {
        sfos.get("planned").await.ok()?.status?.phase
    })
    .await;
    // SAFETY: kill(2) of the operator container's host process.
    unsafe { libc::kill(leader_pid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let pods_api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    pods_api
        .delete(&leader, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .unwrap();
    eprintln!("leader {leader} killed and its pod deleted with the ShardFailover in phase {seen:?}");

    let done = eventually(WAIT, "the ShardFailover to finish under a new leader", || async {
        let s = sfos.get("planned").await.ok()?;
        let phase = s.status.as_ref()?.phase?;
        matches!(phase, ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed).then_some(s)
    })
    .await;
    let finished = killed.elapsed();
    assert_eq!(done.status.as_ref().unwrap().phase, Some(ShardFailoverPhase::Succeeded), "{:?}", done.status);
    let new_leader = eventually(WAIT, "a new Lease holder", || async {
        leases.get("understudy-leader").await.ok()?.spec?.holder_identity.filter(|h| *h != leader)
    })
    .await;
    let second = wait_primary(&hacs, "cache", Some(&first)).await;
    wait_replicas_follow(&client, &ns.name, "cache", &second).await;
    writer.wait_more(200, WAIT).await;
    eprintln!(
        "{new_leader} holds the Lease; ShardFailover Succeeded {finished:?} after the kill ({first} → {second})"
    );

    // The epoch is a fencing token: the new leader continues from what the old one recorded.
    // (A new leader whose pod cache was still empty once saw no members, dropped the shard
    // from status and bootstrapped it again at epoch 1, below the switchover's epoch 2.)
    let c = hacs.get("cache").await.unwrap();
    let last = c.status.as_ref().and_then(|s| s.last_failover.as_ref()).map_or(0, |f| f.epoch);
    assert!(
        epoch_of(&c) > epoch_before && epoch_of(&c) >= last,
        "epoch {} after the leader change; {epoch_before} before the switchover, {last} recorded by it",
        epoch_of(&c)
    );

    let acked: Vec<u64> = writer.stop().await.into_iter().filter(|n| *n >= from_seq).collect();
    let lost = missing(&vip, PORT, &acked).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost", lost.len(), acked.len());
    assert_eq!(sampler.max(), 1, "two members answered as primary at once");
}

/// The node's heartbeat stops (kubelet down): Kubernetes marks the node NotReady, but the
/// members themselves keep answering. The operator must not fail over on node status alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_ready_node_with_a_healthy_primary_causes_no_failover() {
    let Some(node) = support::node() else { return };
    // Stopping the kubelet affects every pod on the node: this test runs alone.
    let _alone = support::SHARED_NODE.write().await;
    let Managed { client, ns, hacs, primary: first } = managed_redis(node, "notready").await;
    let epoch = |c: &HaCluster| c.status.as_ref().and_then(|s| s.shards.first()).map(|s| s.epoch);
    let before = epoch(&hacs.get("cache").await.unwrap());
    let sampler = RoleSampler::start(client.clone(), &ns.name, "app=cache", PORT);

    node.node_sh("kubelet", &["stop"]).unwrap();
    let stopped = Instant::now();
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let ready = |n: &KubeNode| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
    };
    let result = async {
        eventually(Duration::from_secs(120), "the node to turn NotReady", || async {
            let n = nodes.get("node-1").await.ok()?;
            (ready(&n).as_deref() != Some("True")).then_some(())
        })
        .await;
        eprintln!("node NotReady {:?} after the kubelet stopped", stopped.elapsed());
        // Watch the operator for 30 heartbeats (200 ms) plus the failure window with the node NotReady.
        let rounds = sampler.rounds();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(8) || sampler.rounds() < rounds + 30 {
            let c = hacs.get("cache").await.unwrap();
            let shard = c.status.as_ref().unwrap().shards.first().unwrap().clone();
            assert_eq!(
                shard.current_primary.as_deref(),
                Some(first.as_str()),
                "the primary moved while its node was NotReady"
            );
            assert_eq!(Some(shard.epoch), before, "the epoch moved while the node was NotReady");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // Whatever happens, the kubelet comes back for the tests after this one.
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    node.node_sh("kubelet", &["start"]).unwrap();
    eventually(Duration::from_secs(120), "the node Ready again", || async {
        let n = nodes.get("node-1").await.ok()?;
        (ready(&n).as_deref() == Some("True")).then_some(())
    })
    .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let c = hacs.get("cache").await.unwrap();
    assert_eq!(c.status.as_ref().unwrap().shards[0].current_primary.as_deref(), Some(first.as_str()));
    assert_eq!(epoch(&c), before);
    assert_eq!(sampler.max(), 1);
}
