//! Standby clusters (issue 5, part 1): an HaCluster with `standby.cluster` keeps its leader
//! replicating from the other cluster's primary and its replicas chained from the leader; it
//! follows the upstream through a failover and never becomes writable.

use std::time::Duration;

use kube::{Api, api::PostParams};
use serde_json::json;
use understudy::resources::{
    HaCluster,
    hacluster::{ClusterPhase, Role},
};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    support::{self, Operator, RedisServer, RoleSampler, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

/// Wait until standby cluster `name` is healthy with a leader (its recorded primary) that is
/// a healthy replica following `upstream` in status; returns the leader's name.
pub async fn wait_leader(hacs: &Api<HaCluster>, name: &str, upstream: &RedisServer) -> String {
    eventually(WAIT, &format!("{name}'s leader healthy and following {}", upstream.port), || async {
        let st = hacs.get(name).await.ok()?.status?;
        let s = st.shards.first()?;
        let l = s.current_primary.clone()?;
        let ok = s.members.iter().any(|m| m.name == l && m.healthy && m.role == Role::Replica)
            && s.upstream.as_deref() == Some(upstream.endpoint().as_str())
            && st.phase == Some(ClusterPhase::Healthy);
        ok.then_some(l)
    })
    .await
}

#[tokio::test]
async fn a_standby_cluster_replicates_from_the_upstream_primary_and_follows_its_failover() {
    let client = support::client().await;
    let ns = support::namespace(&client, "standby").await;
    let mut src = [RedisServer::start(None), RedisServer::start(None)];
    let dr = [RedisServer::start(None), RedisServer::start(None)];
    let all: Vec<&RedisServer> = src.iter().chain(dr.iter()).collect();
    let sampler = RoleSampler::start(all.iter().map(|s| s.sample_target()).collect());
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let sm = vec![("s-a", &src[0]), ("s-b", &src[1])];
    hacs.create(
        &PostParams::default(),
        &cluster("src", &[("s0", &sm)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let dm = vec![("d-a", &dr[0]), ("d-b", &dr[1])];
    let mut standby = cluster("dr", &[("s0", &dm)], json!({"heartbeatInterval": "200ms"}));
    standby.spec.standby = Some(serde_json::from_value(json!({"cluster": "src"})).unwrap());
    hacs.create(&PostParams::default(), &standby).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);

    let sp = wait_primary(&hacs, "src", "s0", None).await;
    let spi = if sp == "s-a" { 0 } else { 1 };
    let leader = wait_leader(&hacs, "dr", &src[spi]).await;
    let li = if leader == "d-a" { 0 } else { 1 };
    wait_follows(&dr[li], &src[spi]).await;
    wait_follows(&dr[1 - li], &dr[li]).await;
    let _: () = src[spi].cmd(redis::cmd("SET").arg("from-source").arg("1")).await.unwrap();
    for d in &dr {
        eventually(WAIT, "the write reaches the DR members", || async {
            let v: Option<String> = d.cmd(redis::cmd("GET").arg("from-source")).await.ok()?;
            v.filter(|v| v == "1")
        })
        .await;
        assert_eq!(d.role().await.as_deref(), Some("slave"), "the standby site is never writable");
    }

    // The source fails over: the standby leader re-points at the new source primary.
    src[spi].kill();
    let sq = wait_primary(&hacs, "src", "s0", Some(&sp)).await;
    let sqi = if sq == "s-a" { 0 } else { 1 };
    wait_follows(&dr[li], &src[sqi]).await;
    eventually(WAIT, "standby status shows the new upstream", || async {
        let st = hacs.get("dr").await.ok()?.status?;
        (st.shards[0].upstream.as_deref() == Some(src[sqi].endpoint().as_str())).then_some(())
    })
    .await;
    assert_eq!(sampler.max(), 1, "only the source site ever has a primary");
    operator.stop().await;
}
