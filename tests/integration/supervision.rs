//! A bug that panics one task stops neither the operator nor that task's work: a monitor that
//! panicked is started again and the cluster is still failed over; an operation reconcile that
//! panicked is retried and the operation still succeeds; the process never exits.

use std::time::Duration;

use kube::{Api, api::PostParams};
use serde_json::json;
use understudy::resources::{HaCluster, ShardFailover, shard_failover::ShardFailoverPhase};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    shard_failover::shard_failover,
    support::{self, Process, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

async fn metrics(listen: &str) -> Option<String> {
    let (code, body) = support::http_get(listen.parse().ok()?, "/metrics").await.ok()?;
    (code == 200).then_some(body)
}

fn counter(metrics: &str, controller: &str, error: &str) -> Option<u64> {
    let prefix =
        format!("understudy_reconcile_errors_total{{controller=\"{controller}\",error=\"{error}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Cluster `k` of `n` redis members named a, b, … (200 ms heartbeats) and an operator process
/// that panics once at `point`: the servers, the operator and where it serves /metrics.
async fn panicking_operator(
    hacs: &Api<HaCluster>,
    ns: &str,
    n: usize,
    point: &str,
) -> (Vec<RedisServer>, Process, String) {
    let servers: Vec<RedisServer> = (0..n).map(|_| RedisServer::start(None)).collect();
    let members: Vec<(&str, &RedisServer)> = NAMES.iter().copied().zip(servers.iter()).collect();
    hacs.create(
        &PostParams::default(),
        &cluster("k", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let operator = Process::understudy_with_env(
        &["run", "--namespaces", ns, "--listen", &listen],
        &format!("panic-{point}"),
        &[("UNDERSTUDY_PANIC_AT", point)],
    );
    (servers, operator, listen)
}

#[tokio::test]
async fn a_monitor_that_panicked_is_started_again_and_still_fails_over() {
    let client = support::client().await;
    let ns = support::namespace(&client, "panic-monitor").await;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let (mut servers, mut operator, listen) = panicking_operator(&hacs, &ns, 3, "monitor-tick").await;
    // The first heartbeat panics; the cluster is monitored all the same.
    let p = wait_primary(&hacs, "k", "s0", None).await;
    let log = operator.log();
    assert!(log.contains("UNDERSTUDY_PANIC_AT=monitor-tick"), "the monitor panicked: {log}");
    assert!(log.contains("a monitor panicked; starting it again"), "{log}");
    let m = eventually(WAIT, "the panic counted", || async { metrics(&listen).await }).await;
    assert_eq!(counter(&m, "hacluster", "monitor-panic"), Some(1), "{m}");
    let pi = NAMES.iter().position(|n| *n == p).unwrap();
    for i in (0..3).filter(|i| *i != pi) {
        wait_follows(&servers[i], &servers[pi]).await;
    }
    // And it still does its job: the primary dies, another member takes over.
    servers[pi].kill();
    let next = wait_primary(&hacs, "k", "s0", Some(&p)).await;
    assert_ne!(next, p);
    assert!(
        operator.child.try_wait().unwrap().is_none(),
        "the operator is still running: {}",
        operator.log()
    );
    operator.terminate();
}

#[tokio::test]
async fn an_operation_whose_reconcile_panicked_is_retried_and_succeeds() {
    let client = support::client().await;
    let ns = support::namespace(&client, "panic-op").await;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let (servers, mut operator, listen) = panicking_operator(&hacs, &ns, 2, "reconcile-shardfailover").await;
    let p = wait_primary(&hacs, "k", "s0", None).await;
    let other = if p == "a" { &servers[1] } else { &servers[0] };
    let primary = if p == "a" { &servers[0] } else { &servers[1] };
    wait_follows(other, primary).await;
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    sfos.create(&PostParams::default(), &shard_failover("move", json!({"shardUids": [p]}))).await.unwrap();
    let phase = eventually(WAIT, "the ShardFailover ends", || async {
        let phase = sfos.get("move").await.ok()?.status?.phase?;
        matches!(phase, ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed).then_some(phase)
    })
    .await;
    assert_eq!(phase, ShardFailoverPhase::Succeeded, "{}", operator.log());
    wait_primary(&hacs, "k", "s0", Some(&p)).await;
    let log = operator.log();
    assert!(log.contains("UNDERSTUDY_PANIC_AT=reconcile-shardfailover"), "the reconcile panicked: {log}");
    let m = eventually(WAIT, "metrics", || async { metrics(&listen).await }).await;
    assert_eq!(counter(&m, "shardfailover", "panic"), Some(1), "{m}");
    assert!(operator.child.try_wait().unwrap().is_none(), "the operator is still running: {log}");
    operator.terminate();
}
