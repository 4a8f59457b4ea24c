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

/// A standby cluster with two shards follows its upstream shard by shard, by name (the
/// standby declares them in the other order): each leader replicates from the primary of the
/// upstream shard of its name, holds that shard's data only, and follows that shard's
/// failover while the other shard's relation is left alone. A standby naming a shard the
/// upstream lacks says so in Ready, and its other shard still follows.
#[tokio::test]
async fn a_standby_with_two_shards_follows_the_upstream_shard_by_shard() {
    let client = support::client().await;
    let ns = support::namespace(&client, "standby-shards").await;
    let mut src: Vec<RedisServer> = (0..4).map(|_| RedisServer::start(None)).collect();
    let dr: Vec<RedisServer> = (0..4).map(|_| RedisServer::start(None)).collect();
    let odd: Vec<RedisServer> = (0..2).map(|_| RedisServer::start(None)).collect();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let hb = json!({"heartbeatInterval": "200ms"});
    let (s0, s1) = (vec![("a0", &src[0]), ("b0", &src[1])], vec![("a1", &src[2]), ("b1", &src[3])]);
    hacs.create(&PostParams::default(), &cluster("src", &[("s0", &s0), ("s1", &s1)], hb.clone()))
        .await
        .unwrap();
    let (d0, d1) = (vec![("d0-a", &dr[0]), ("d0-b", &dr[1])], vec![("d1-a", &dr[2]), ("d1-b", &dr[3])]);
    let mut standby = cluster("dr", &[("s1", &d1), ("s0", &d0)], hb.clone());
    standby.spec.standby = Some(serde_json::from_value(json!({"cluster": "src"})).unwrap());
    hacs.create(&PostParams::default(), &standby).await.unwrap();
    let (o0, o9) = (vec![("o0", &odd[0])], vec![("o9", &odd[1])]);
    let mut mismatched = cluster("odd", &[("s0", &o0), ("s9", &o9)], hb);
    mismatched.spec.standby = Some(serde_json::from_value(json!({"cluster": "src"})).unwrap());
    hacs.create(&PostParams::default(), &mismatched).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);

    let index = |name: &str| ["a0", "b0", "a1", "b1"].iter().position(|n| *n == name).unwrap();
    let p0 = index(&wait_primary(&hacs, "src", "s0", None).await);
    let p1 = index(&wait_primary(&hacs, "src", "s1", None).await);
    // Each shard's leader follows its own shard's primary.
    let leader_of = |shard: &'static str, upstream: String| {
        let hacs = hacs.clone();
        async move {
            eventually(WAIT, &format!("dr/{shard}'s leader to follow {upstream}"), || async {
                let st = hacs.get("dr").await.ok()?.status?;
                let s = st.shards.iter().find(|s| s.name == shard)?;
                let l = s.current_primary.clone()?;
                let ok = s.upstream.as_deref() == Some(upstream.as_str())
                    && s.members.iter().any(|m| m.name == l && m.healthy && m.role == Role::Replica);
                ok.then_some(l)
            })
            .await
        }
    };
    let dindex = |name: &str| ["d0-a", "d0-b", "d1-a", "d1-b"].iter().position(|n| *n == name).unwrap();
    let l0 = dindex(&leader_of("s0", src[p0].endpoint()).await);
    let l1 = dindex(&leader_of("s1", src[p1].endpoint()).await);
    wait_follows(&dr[l0], &src[p0]).await;
    wait_follows(&dr[l1], &src[p1]).await;
    let _: () = src[p0].cmd(redis::cmd("SET").arg("in-s0").arg("1")).await.unwrap();
    let _: () = src[p1].cmd(redis::cmd("SET").arg("in-s1").arg("1")).await.unwrap();
    for (leader, key, other) in [(l0, "in-s0", "in-s1"), (l1, "in-s1", "in-s0")] {
        eventually(WAIT, &format!("{key} to reach its shard's standby leader"), || async {
            let v: Option<String> = dr[leader].cmd(redis::cmd("GET").arg(key)).await.ok()?;
            v.filter(|v| v == "1")
        })
        .await;
        let v: Option<String> = dr[leader].cmd(redis::cmd("GET").arg(other)).await.unwrap();
        assert_eq!(v, None, "a shard's standby holds its own shard's data only");
    }

    // The mismatched standby: s9 has no upstream shard and says so; s0 follows.
    eventually(WAIT, "odd to say which shard has no upstream", || async {
        let st = hacs.get("odd").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False"
            && ready.reason == "UpstreamUnknown"
            && ready.message.contains("shard s9")
            && ready.message.contains("no shard named s9"))
        .then_some(())
    })
    .await;
    wait_follows(&odd[0], &src[p0]).await;

    // Shard s1 of the upstream fails over: only dr/s1's leader moves.
    src[p1].kill();
    let q1 = index(&wait_primary(&hacs, "src", "s1", Some(["a0", "b0", "a1", "b1"][p1])).await);
    wait_follows(&dr[l1], &src[q1]).await;
    leader_of("s1", src[q1].endpoint()).await;
    wait_follows(&dr[l0], &src[p0]).await;
    let st = hacs.get("dr").await.unwrap().status.unwrap();
    let s0 = st.shards.iter().find(|s| s.name == "s0").unwrap();
    assert_eq!(s0.upstream.as_deref(), Some(src[p0].endpoint().as_str()), "s0's relation untouched");
    for d in dr.iter().chain(odd.iter()) {
        assert_eq!(d.role().await.as_deref(), Some("slave"), "a standby member is never writable");
    }
    operator.stop().await;
}
