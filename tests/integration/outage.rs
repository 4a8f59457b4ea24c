//! An API-server outage must never demote a healthy primary, and nothing may be promoted
//! while the epoch cannot be recorded. Runs its own control plane so it can stop it.

use std::time::Duration;

use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde_json::json;
use understudy::{
    controlplane::{ControlPlane, Options},
    resources::HaCluster,
};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    support::{Operator, RedisServer, RoleSampler, crds_dir, init_logging},
};

#[tokio::test]
async fn an_api_server_outage_never_demotes_a_healthy_primary() {
    init_logging();
    let mut cp =
        ControlPlane::start(Options { controller_manager: false, ..Options::default() }).await.unwrap();
    cp.install_crds(&crds_dir()).await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = "outage";
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let meta = ObjectMeta { name: Some(ns.into()), ..Default::default() };
    nss.create(
        &PostParams::default(),
        &k8s_openapi::api::core::v1::Namespace { metadata: meta, ..Default::default() },
    )
    .await
    .unwrap();

    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let sampler = RoleSampler::start(servers.iter().map(RedisServer::sample_target).collect());
    let api: Api<HaCluster> = Api::namespaced(client.clone(), ns);
    let members = vec![("a", &servers[0]), ("b", &servers[1])];
    api.create(
        &PostParams::default(),
        &cluster("orders", &[("s0", &members)], json!({"heartbeatInterval": "200ms", "failureThreshold": 3})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), ns);
    let primary = wait_primary(&api, "orders", "s0", None).await;
    let (pi, ri) = if primary == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;

    // The API server goes away for 10x the failure-detection window (200 ms x 3).
    cp.stop_apiserver();
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        assert_eq!(servers[pi].role().await.as_deref(), Some("master"), "primary kept during the outage");
        assert_eq!(servers[ri].role().await.as_deref(), Some("slave"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.restart_apiserver().await.unwrap();

    // Back: same primary, same epoch, and the cluster is still healthy.
    let after = wait_primary(&api, "orders", "s0", None).await;
    assert_eq!(after, primary);
    let st = api.get("orders").await.unwrap().status.unwrap();
    assert_eq!(st.shards[0].epoch, 1, "no promotion happened");
    assert_eq!(servers[pi].role().await.as_deref(), Some("master"));
    wait_follows(&servers[ri], &servers[pi]).await;

    // The primary dies while the API server is down: no promotion can be recorded, so none
    // happens; once the API server is back the replica is promoted.
    let mut servers = servers;
    cp.stop_apiserver();
    servers[pi].kill();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert_eq!(
            servers[ri].role().await.as_deref(),
            Some("slave"),
            "no promotion without a recorded epoch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.restart_apiserver().await.unwrap();
    let promoted = wait_primary(&api, "orders", "s0", Some(&primary)).await;
    assert_eq!(servers[ri].role().await.as_deref(), Some("master"));
    assert_eq!(api.get("orders").await.unwrap().status.unwrap().shards[0].epoch, 2);
    assert_ne!(promoted, primary);
    assert_eq!(sampler.max(), 1, "never two primaries");
    operator.stop().await;
}
