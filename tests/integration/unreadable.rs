//! An object the API server accepts but the operator cannot read (here a `failoverDelay` its
//! duration type refuses) is reported on itself and stops nothing else: other clusters in
//! the namespace are bootstrapped and failed over, before and after an operator restart, and
//! ShardFailovers there still validate.

use std::time::Duration;

use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams},
};
use serde_json::json;
use understudy::resources::{HaCluster, ShardFailover, shard_failover::ShardFailoverPhase};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    shard_failover::shard_failover,
    support::{self, Operator, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_unreadable_cluster_is_reported_and_stops_nothing_else() {
    let client = support::client().await;
    let ns = support::namespace(&client, "unreadable").await;
    // The bad cluster, written as raw JSON: the operator's own types cannot even express it.
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "bad"},
        "spec": {"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "x", "endpoint": "127.0.0.1:1"}]}],
                 "failover": {"failoverDelay": "300000h"}}
    }))
    .unwrap();
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<HaCluster>(&()));
    dynamic.create(&PostParams::default(), &bad).await.expect("the API server accepts it");

    let mut servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let members = [("a", &servers[0]), ("b", &servers[1]), ("c", &servers[2])];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let good = cluster("good", &[("s0", &members)], json!({"heartbeatInterval": "200ms"}));
    api.create(&PostParams::default(), &good).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let first = wait_primary(&api, "good", "s0", None).await;
    let message = eventually(WAIT, "the bad cluster's SpecValid=False condition", || async {
        let o = dynamic.get("bad").await.ok()?;
        let conditions = o.data["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .find(|c| c["type"] == "SpecValid" && c["status"] == "False" && c["reason"] == "InvalidObject")
            .and_then(|c| c["message"].as_str().map(str::to_owned))
    })
    .await;
    assert!(message.contains("300000h"), "the condition names what cannot be read: {message}");

    // A ShardFailover in the namespace validates (the list of clusters skips the bad one).
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    sfos.create(
        &PostParams::default(),
        &shard_failover("dry", json!({"shardUids": [first], "dryRun": true})),
    )
    .await
    .unwrap();
    eventually(WAIT, "the dry-run ShardFailover to succeed", || async {
        (sfos.get("dry").await.ok()?.status?.phase == Some(ShardFailoverPhase::Succeeded)).then_some(())
    })
    .await;

    // Failover works, also after the operator restarted with the bad object in place.
    let index = |n: &str| ["a", "b", "c"].iter().position(|x| *x == n).unwrap();
    servers[index(&first)].kill();
    let second = wait_primary(&api, "good", "s0", Some(&first)).await;
    operator.stop().await;
    let operator = Operator::start(client.clone(), &ns);
    let third_server = (0..3).find(|i| *i != index(&first) && *i != index(&second)).unwrap();
    wait_follows(&servers[third_server], &servers[index(&second)]).await;
    servers[index(&second)].kill();
    let third = wait_primary(&api, "good", "s0", Some(&second)).await;
    assert_eq!(index(&third), third_server);
    operator.stop().await;
}
