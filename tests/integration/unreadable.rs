//! An object the API server holds but the operator cannot read is reported on itself and
//! stops nothing else: other clusters in the namespace are bootstrapped and failed over,
//! before and after an operator restart, and ShardFailovers there still validate.
//!
//! Such objects come from before an upgrade: the schema and the operator's parser agree (a
//! duration of more than 24 h is refused by both), but objects stored under an older, looser
//! CRD are not validated again. The test does exactly that on a control plane of its own: it
//! loosens the CRD, stores `failoverDelay: 300000h`, and installs the real CRD again.

use std::time::Duration;

use kube::{
    Api,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::{
    controlplane::{ControlPlane, Options},
    resources::{HaCluster, ShardFailover, shard_failover::ShardFailoverPhase},
};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    shard_failover::shard_failover,
    support::{Operator, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_unreadable_cluster_is_reported_and_stops_nothing_else() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let cp = ControlPlane::start(Options { controller_manager: false, keep: false }).await.unwrap();
    cp.install_generated_crds().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = "unreadable";
    cp.create_namespace(ns).await.unwrap();
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "bad"},
        "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": [{"name": "x", "endpoint": "127.0.0.1:1"}]}],
                 "failover": {"failoverDelay": "300000h"}}
    }))
    .unwrap();
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<HaCluster>(&()));
    // Today's schema refuses it, naming the field.
    let refused = dynamic.create(&PostParams::default(), &bad).await.expect_err("the schema refuses 300000h");
    assert!(refused.to_string().contains("failoverDelay"), "{refused}");
    assert!(refused.to_string().contains("24h"), "{refused}");
    // An older, looser CRD accepted it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let delay = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/failover/properties/failoverDelay";
    let loosen = json!([{"op": "replace", "path": delay, "value": {"type": "string"}}]);
    crds.patch(
        "haclusters.understudy.dev",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(loosen).unwrap()),
    )
    .await
    .unwrap();
    eventually(WAIT, "the loosened CRD to accept 300000h", || async {
        dynamic.create(&PostParams::default(), &bad).await.ok()
    })
    .await;
    cp.install_generated_crds().await.unwrap();
    let mut bad2 = bad.clone();
    bad2.metadata.name = Some("bad2".into());
    assert!(dynamic.create(&PostParams::default(), &bad2).await.is_err(), "the real CRD is back");

    let mut servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let members = [("a", &servers[0]), ("b", &servers[1]), ("c", &servers[2])];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), ns);
    let good = cluster("good", &[("s0", &members)], json!({"heartbeatInterval": "200ms"}));
    api.create(&PostParams::default(), &good).await.unwrap();
    let operator = Operator::start(client.clone(), ns);
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
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), ns);
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
    let operator = Operator::start(client.clone(), ns);
    let third_server = (0..3).find(|i| *i != index(&first) && *i != index(&second)).unwrap();
    wait_follows(&servers[third_server], &servers[index(&second)]).await;
    servers[index(&second)].kill();
    let third = wait_primary(&api, "good", "s0", Some(&second)).await;
    assert_eq!(index(&third), third_server);
    operator.stop().await;
}
