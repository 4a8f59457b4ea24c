//! A cluster's monitor and metric series live exactly as long as the cluster: deleting it (or
//! deleting and creating it again under the same name) leaves no monitor looping and no
//! `member_up` / `shard_epoch` series behind.

use std::time::Duration;

use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use understudy::resources::HaCluster;

use crate::{
    hacluster_redis::{cluster, wait_primary},
    support::{self, Operator, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

/// The value of an unlabelled gauge, or the lines of a labelled family, in /metrics text.
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
}

fn series<'a>(metrics: &'a str, family: &str, cluster: &str) -> Vec<&'a str> {
    let needle = format!("cluster=\"{cluster}\"");
    metrics.lines().filter(|l| l.starts_with(family) && l.contains(&needle)).collect()
}

#[tokio::test]
async fn deleting_or_recreating_a_cluster_stops_its_monitor_and_removes_its_series() {
    let client = support::client().await;
    let ns = support::namespace(&client, "life").await;
    let a = RedisServer::start(None);
    let b = RedisServer::start(None);
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let first = cluster("c", &[("s0", &[("a", &a)])], json!({"heartbeatInterval": "200ms"}));
    hacs.create(&PostParams::default(), &first).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    wait_primary(&hacs, "c", "s0", None).await;
    // The series are exported by the heartbeat after the one that recorded the primary.
    let m = eventually(WAIT, "the first incarnation's series", || async {
        let m = operator.metrics.render();
        (series(&m, "understudy_member_up", "c").iter().any(|l| l.contains("member=\"a\""))
            && !series(&m, "understudy_shard_epoch", "c").is_empty())
        .then_some(m)
    })
    .await;
    assert_eq!(gauge(&m, "understudy_monitors"), Some(1), "{m}");

    // Delete and create again under the same name, with another member.
    hacs.delete("c", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "the first c gone", || async {
        hacs.get_opt("c").await.unwrap().is_none().then_some(())
    })
    .await;
    let second = cluster("c", &[("s0", &[("b", &b)])], json!({"heartbeatInterval": "200ms"}));
    hacs.create(&PostParams::default(), &second).await.unwrap();
    wait_primary(&hacs, "c", "s0", None).await;
    let m = eventually(WAIT, "one monitor, and no series of the first incarnation's member", || async {
        let m = operator.metrics.render();
        let up = series(&m, "understudy_member_up", "c");
        (gauge(&m, "understudy_monitors") == Some(1)
            && up.iter().all(|l| !l.contains("member=\"a\""))
            && up.iter().any(|l| l.contains("member=\"b\"")))
        .then_some(m)
    })
    .await;
    assert_eq!(gauge(&m, "understudy_monitors"), Some(1));

    // Delete for good: no monitor, no series.
    hacs.delete("c", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "no monitor and no series of c", || async {
        let m = operator.metrics.render();
        (gauge(&m, "understudy_monitors") == Some(0)
            && series(&m, "understudy_member_up", "c").is_empty()
            && series(&m, "understudy_shard_epoch", "c").is_empty())
        .then_some(())
    })
    .await;
    operator.stop().await;
}
