//! HaCluster with real redis-server processes: bootstrap, automatic failover, a returning old
//! primary, shard isolation, lag safety, missing credentials — sampling server roles throughout.

use std::time::Duration;

use k8s_openapi::api::{core::v1::Secret, discovery::v1::EndpointSlice, events::v1::Event};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{
    HaCluster,
    hacluster::{ClusterPhase, Role},
};

use crate::support::{self, Operator, RedisServer, RoleSampler, eventually};

const WAIT: Duration = Duration::from_secs(60);

pub fn cluster(
    name: &str,
    shards: &[(&str, &[(&str, &RedisServer)])],
    failover: serde_json::Value,
) -> HaCluster {
    let shards: Vec<_> = shards
        .iter()
        .map(|(s, members)| {
            json!({"name": s, "members": members.iter().map(|(n, r)| json!({
                "name": n, "endpoint": r.endpoint(),
                // Kubernetes cannot route to loopback: clients would reach this member at a
                // test address; the operator itself probes the loopback endpoint.
                "clientAddress": route_ip(r.port),
            })).collect::<Vec<_>>()})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": name},
        "spec": {"engine": "Redis", "shards": shards, "failover": failover}
    }))
    .unwrap()
}

/// A made-up routable address standing for the member listening on `port`.
pub fn route_ip(port: u16) -> String {
    format!("10.77.{}.{}", port >> 8, port & 0xff)
}

pub async fn get(api: &Api<HaCluster>, name: &str) -> HaCluster {
    api.get(name).await.unwrap()
}

/// Wait until shard `shard` has a healthy primary other than `not`; returns its name.
pub async fn wait_primary(api: &Api<HaCluster>, name: &str, shard: &str, not: Option<&str>) -> String {
    eventually(WAIT, &format!("a healthy primary of {name}/{shard} other than {not:?}"), || async {
        let c = api.get(name).await.ok()?;
        let st = c.status?;
        let s = st.shards.iter().find(|s| s.name == shard)?;
        let p = s.current_primary.clone()?;
        let healthy = s.members.iter().any(|m| m.name == p && m.healthy && m.role == Role::Primary);
        (healthy && s.target_primary.is_none() && Some(p.as_str()) != not).then_some(p)
    })
    .await
}

/// Wait until the server on `replica` replicates from `primary` with its link up.
pub async fn wait_follows(replica: &RedisServer, primary: &RedisServer) {
    eventually(WAIT, &format!("{} to replicate from {}", replica.port, primary.port), || async {
        let info = replica.replication().await?;
        (info.get("role")? == "slave"
            && info.get("master_port")? == &primary.port.to_string()
            && info.get("master_link_status")? == "up")
            .then_some(())
    })
    .await
}

/// Wait until the operator has probed `server` at least `n` more times: each probe opens a
/// connection (`total_connections_received`; this function's own reads are subtracted). So
/// "nothing happened" is asserted after heartbeats that were seen to happen, not after a sleep.
pub async fn observe_heartbeats(server: &RedisServer, n: u64) {
    count_heartbeats(server, n, None).await;
}

/// [`observe_heartbeats`] on a server that a [`RoleSampler`] polls too: the sampler's
/// connections (one per server and sample) are subtracted as well (a sample in flight may be
/// counted as a heartbeat, so at least `n - 1` were seen).
pub async fn observe_heartbeats_sampled(server: &RedisServer, n: u64, sampler: &RoleSampler) {
    count_heartbeats(server, n, Some(sampler)).await;
}

async fn count_heartbeats(server: &RedisServer, n: u64, sampler: Option<&RoleSampler>) {
    let samples = || sampler.map_or(0, |s| s.count() as u64);
    let connections = || async {
        let info: String = server.cmd(redis::cmd("INFO").arg("stats")).await.ok()?;
        info.lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix("total_connections_received:"))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (start, sampled) = (connections().await.expect("INFO stats"), samples());
    let deadline = std::time::Instant::now() + WAIT;
    for ours in 1u64.. {
        let now = connections().await.expect("INFO stats");
        // Connections since `start`, less this loop's own (one per read after the first) and
        // the sampler's.
        let others = ours + samples().saturating_sub(sampled);
        if now.saturating_sub(start).saturating_sub(others) >= n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the operator did not probe {} {n} times", server.port);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn events(client: &Client, ns: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn redis_bootstrap_failover_and_return_of_the_old_primary() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-fo").await;
    let mut servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let names = ["a", "b", "c"];
    let sampler = RoleSampler::start(servers.iter().map(RedisServer::sample_target).collect());
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = names.iter().copied().zip(servers.iter()).collect();
    api.create(
        &PostParams::default(),
        &cluster("orders", &[("s0", &members)], json!({"heartbeatInterval": "200ms", "failureThreshold": 3})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);

    // Bootstrap: one primary, two replicas replicating from it — checked on the servers.
    let first = wait_primary(&api, "orders", "s0", None).await;
    let pi = names.iter().position(|n| *n == first).unwrap();
    for (i, s) in servers.iter().enumerate() {
        if i == pi {
            assert_eq!(s.role().await.as_deref(), Some("master"));
        } else {
            wait_follows(s, &servers[pi]).await;
        }
    }
    let c = get(&api, "orders").await;
    let st = c.status.unwrap();
    assert_eq!(st.shards[0].epoch, 1, "bootstrap records epoch 1");
    assert_eq!(st.primary.as_deref(), Some(first.as_str()));

    // Routing: the primary Service's EndpointSlice points at the primary's port.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let primary_port = servers[pi].port as i32;
    eventually(WAIT, "primary EndpointSlice", || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=orders-primary"))
            .await
            .ok()?;
        let s = l.items.first()?;
        (s.ports.as_ref()?[0].port == Some(primary_port)
            && s.endpoints[0].addresses == [route_ip(primary_port as u16)])
        .then_some(())
    })
    .await;

    // Acknowledged writes before the failure.
    for i in 0..100 {
        let _: () = servers[pi].cmd(redis::cmd("SET").arg(format!("k{i}")).arg(i)).await.unwrap();
    }
    // Let the replicas catch up so none is ineligible, then SIGKILL the primary.
    for (i, s) in servers.iter().enumerate() {
        if i != pi {
            eventually(WAIT, "replica caught up", || async {
                let n: i64 = s.cmd(&redis::cmd("DBSIZE")).await.ok()?;
                (n == 100).then_some(())
            })
            .await;
        }
    }
    let killed_at = std::time::Instant::now();
    servers[pi].kill();
    let second = wait_primary(&api, "orders", "s0", Some(&first)).await;
    let elapsed = killed_at.elapsed();
    let si = names.iter().position(|n| *n == second).unwrap();
    assert_eq!(servers[si].role().await.as_deref(), Some("master"));
    let other = (0..3).find(|i| *i != pi && *i != si).unwrap();
    wait_follows(&servers[other], &servers[si]).await;
    let n: i64 = servers[si].cmd(&redis::cmd("DBSIZE")).await.unwrap();
    assert_eq!(n, 100, "every acknowledged write survived on the new primary");

    let st = get(&api, "orders").await.status.unwrap();
    let lf = st.last_failover.expect("lastFailover recorded");
    assert_eq!((lf.from.as_deref(), lf.to.as_deref()), (Some(first.as_str()), Some(second.as_str())));
    assert_eq!(lf.epoch, 2);
    assert_eq!(lf.lost_offset, Some(0), "the promoted replica had everything");
    // Everything the operator saw; what the killed primary took after its last probe is not
    // known (it is not back): the figure is said to be a floor.
    assert_eq!(lf.loss_accounting, Some(understudy::resources::hacluster::LossAccounting::AtLeast));
    eprintln!(
        "failover: detected and promoted {:.2}s after SIGKILL (heartbeat 200ms x 3); promotion itself took {} ms",
        elapsed.as_secs_f64(),
        lf.duration_ms.unwrap_or_default()
    );
    let new_port = servers[si].port as i32;
    eventually(WAIT, "primary EndpointSlice moved", || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=orders-primary"))
            .await
            .ok()?;
        (l.items.len() == 1
            && l.items[0].ports.as_ref()?[0].port == Some(new_port)
            && l.items[0].endpoints[0].addresses == [route_ip(new_port as u16)])
        .then_some(())
    })
    .await;
    // Clients first: the Event is published after the Services moved.
    let evs = eventually(WAIT, "the FailedOver event", || async {
        let evs = events(&client, &ns).await;
        evs.iter().any(|(r, m)| r == "FailedOver" && m.contains(&second)).then_some(evs)
    })
    .await;
    assert!(evs.iter().any(|(r, m)| r == "FailingOver" && m.contains(&first)), "{evs:?}");
    assert!(evs.iter().any(|(r, m)| r == "PrimaryElected" && m.contains(&first)), "{evs:?}");

    // The old primary returns (as it starts: a replica of nothing) and is attached as a replica.
    servers[pi].restart();
    wait_follows(&servers[pi], &servers[si]).await;
    eventually(WAIT, "old primary listed as a healthy replica", || async {
        let st = api.get("orders").await.ok()?.status?;
        let m = st.shards[0].members.iter().find(|m| m.name == first)?;
        (m.healthy && m.role == Role::Replica && st.phase == Some(ClusterPhase::Healthy)).then_some(())
    })
    .await;
    assert_eq!(get(&api, "orders").await.status.unwrap().primary.as_deref(), Some(second.as_str()));

    assert!(sampler.count() > 20, "the sampler ran ({} samples)", sampler.count());
    assert_eq!(sampler.max(), 1, "never two primaries at any sampled instant");
    operator.stop().await;
}

#[tokio::test]
async fn redis_two_shards_fail_over_independently() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-2s").await;
    let mut s0 = [RedisServer::start(None), RedisServer::start(None)];
    let s1 = [RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let m0: Vec<(&str, &RedisServer)> = vec![("a0", &s0[0]), ("b0", &s0[1])];
    let m1: Vec<(&str, &RedisServer)> = vec![("a1", &s1[0]), ("b1", &s1[1])];
    api.create(
        &PostParams::default(),
        &cluster(
            "sharded",
            &[("s0", &m0), ("s1", &m1)],
            json!({"heartbeatInterval": "200ms", "failureThreshold": 3}),
        ),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p0 = wait_primary(&api, "sharded", "s0", None).await;
    let p1 = wait_primary(&api, "sharded", "s1", None).await;
    let epoch1 =
        get(&api, "sharded").await.status.unwrap().shards.iter().find(|s| s.name == "s1").unwrap().epoch;
    // A quiet cluster costs no writes: status is written only when something changed.
    // Settled means Healthy with every replica's link and lag reported: a replica's first sync
    // completing after Healthy is a real change (its lag becomes known), not steady-state noise.
    eventually(WAIT, "cluster Healthy with every replica's lag known", || async {
        let st = api.get("sharded").await.ok()?.status?;
        let settled = st.phase == Some(ClusterPhase::Healthy)
            && st.shards.iter().all(|s| {
                s.members.iter().all(|m| {
                    Some(&m.name) == s.current_primary.as_ref() || (m.upstream.is_some() && m.lag.is_some())
                })
            });
        settled.then_some(())
    })
    .await;
    let rv = get(&api, "sharded").await.metadata.resource_version;
    observe_heartbeats(&s1[0], 10).await;
    assert_eq!(
        get(&api, "sharded").await.metadata.resource_version,
        rv,
        "no status write while nothing changes"
    );

    let i0 = if p0 == "a0" { 0 } else { 1 };
    s0[i0].kill();
    let q0 = wait_primary(&api, "sharded", "s0", Some(&p0)).await;
    assert_ne!(q0, p0);
    let st = get(&api, "sharded").await.status.unwrap();
    let shard1 = st.shards.iter().find(|s| s.name == "s1").unwrap();
    assert_eq!(shard1.current_primary.as_deref(), Some(p1.as_str()), "the other shard is untouched");
    assert_eq!(shard1.epoch, epoch1, "the other shard's epoch did not move");
    let i1 = if p1 == "a1" { 0 } else { 1 };
    assert_eq!(s1[i1].role().await.as_deref(), Some("master"));
    wait_follows(&s1[1 - i1], &s1[i1]).await;
    operator.stop().await;
}

#[tokio::test]
async fn redis_lagging_replica_is_not_promoted_when_max_lag_is_zero() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-lag").await;
    let pass = "s3cret";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "redis-auth"}, "stringData": {"password": pass}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let mut servers = [RedisServer::start(Some(pass)), RedisServer::start(Some(pass))];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1])];
    let mut hac = cluster(
        "lag",
        &[("s0", &members)],
        // The test cuts replication on purpose and writes on: self-fencing would refuse them.
        json!({"heartbeatInterval": "200ms", "failureThreshold": 3, "maxLagOnFailover": 0,
            "fencing": {"minReplicasToWrite": 0}}),
    );
    hac.spec.secret_ref =
        Some(understudy::resources::shared::SecretKeyRef { name: "redis-auth".into(), key: None });
    api.create(&PostParams::default(), &hac).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&api, "lag", "s0", None).await;
    let (pi, ri) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;

    // Break the replica's link (wrong masterauth) so it falls behind while still answering.
    let _: () =
        servers[ri].cmd(redis::cmd("CONFIG").arg("SET").arg("masterauth").arg("wrong")).await.unwrap();
    let _: () = servers[ri].cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("master")).await.unwrap();
    for i in 0..50 {
        let _: () =
            servers[pi].cmd(redis::cmd("SET").arg(format!("k{i}")).arg("x".repeat(100))).await.unwrap();
    }
    // The operator must have seen the primary's new offset before it dies.
    eventually(WAIT, "operator to observe the lag", || async {
        let st = api.get("lag").await.ok()?.status?;
        st.shards[0].members.iter().any(|m| m.role == Role::Replica && m.lag.unwrap_or(0) > 0).then_some(())
    })
    .await;
    servers[pi].kill();
    let reason = eventually(WAIT, "a condition saying why nothing was promoted", || async {
        let st = api.get("lag").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "NoEligibleReplica").then(|| ready.message.clone())
    })
    .await;
    assert!(reason.contains("lags") && reason.contains("maxLagOnFailover 0"), "{reason}");
    // Several more heartbeats: still nothing promoted.
    observe_heartbeats(&servers[ri], 10).await;
    assert_eq!(servers[ri].role().await.as_deref(), Some("slave"), "the lagging replica was not promoted");
    let st = get(&api, "lag").await.status.unwrap();
    assert_eq!(st.shards[0].current_primary.as_deref(), Some(p.as_str()));
    assert_eq!(st.shards[0].epoch, 1);
    assert_eq!(st.phase, Some(ClusterPhase::Failed));
    operator.stop().await;

    // A fresh operator (a restart, a new leader — often after losing the node the primary
    // ran on) never saw the primary answer: it counts the lag from what status recorded and
    // promotes nothing either (before, every replica looked caught up to it).
    let operator = Operator::start(client.clone(), &ns);
    observe_heartbeats(&servers[ri], 15).await;
    assert_eq!(servers[ri].role().await.as_deref(), Some("slave"), "not promoted after a restart");
    let st = get(&api, "lag").await.status.unwrap();
    assert_eq!((st.shards[0].current_primary.as_deref(), st.shards[0].epoch), (Some(p.as_str()), 1));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.reason == "NoEligibleReplica" && ready.message.contains("lags"), "{ready:?}");
    operator.stop().await;
}

#[tokio::test]
async fn redis_missing_secret_is_reported_and_nothing_is_touched() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-nosecret").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1])];
    let mut hac = cluster("nosecret", &[("s0", &members)], json!({"heartbeatInterval": "200ms"}));
    hac.spec.secret_ref =
        Some(understudy::resources::shared::SecretKeyRef { name: "does-not-exist".into(), key: None });
    api.create(&PostParams::default(), &hac).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let msg = eventually(WAIT, "SecretNotFound condition", || async {
        let st = api.get("nosecret").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "SecretNotFound" && ready.status == "False").then(|| ready.message.clone())
    })
    .await;
    assert!(msg.contains("does-not-exist"), "{msg}");
    for s in &servers {
        let info = s.replication().await.unwrap();
        assert_eq!(info["role"], "slave");
        assert_eq!(info["master_port"], "1", "member untouched (still the replica of nothing it started as)");
    }
    // Paused clusters observe only.
    api.patch(
        "nosecret",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"paused": true, "secretRef": null}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "Paused phase", || async {
        (api.get("nosecret").await.ok()?.status?.phase == Some(ClusterPhase::Paused)).then_some(())
    })
    .await;
    observe_heartbeats(&servers[0], 5).await;
    for s in &servers {
        assert_eq!(s.role().await.as_deref(), Some("slave"), "paused: nothing promoted");
    }
    operator.stop().await;
}

#[tokio::test]
async fn redis_membership_edits_attach_and_detach_members() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-members").await;
    let servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let two: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1])];
    api.create(
        &PostParams::default(),
        &cluster("grow", &[("s0", &two)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&api, "grow", "s0", None).await;
    let (pi, ri) = if p == "a" { (0, 1) } else { (1, 0) };

    // Add c: it is attached as a replica of the primary.
    let three: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1]), ("c", &servers[2])];
    let spec = cluster("grow", &[("s0", &three)], json!({"heartbeatInterval": "200ms"})).spec;
    api.patch("grow", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"shards": spec.shards}})))
        .await
        .unwrap();
    wait_follows(&servers[2], &servers[pi]).await;
    eventually(WAIT, "c listed as a healthy replica", || async {
        let st = api.get("grow").await.ok()?.status?;
        st.shards[0]
            .members
            .iter()
            .any(|m| m.name == "c" && m.healthy && m.role == Role::Replica)
            .then_some(())
    })
    .await;

    // Remove the other replica: it is detached (no longer replicating) and leaves status.
    let removed = ["a", "b"][ri];
    let kept: Vec<(&str, &RedisServer)> = vec![(["a", "b"][pi], &servers[pi]), ("c", &servers[2])];
    let spec = cluster("grow", &[("s0", &kept)], json!({"heartbeatInterval": "200ms"})).spec;
    api.patch("grow", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"shards": spec.shards}})))
        .await
        .unwrap();
    eventually(WAIT, "removed member detached", || async {
        let info = servers[ri].replication().await?;
        (info.get("master_port")? == "1").then_some(())
    })
    .await;
    eventually(WAIT, "removed member gone from status", || async {
        let st = api.get("grow").await.ok()?.status?;
        (!st.shards[0].members.iter().any(|m| m.name == removed)
            && st.healthy_members.as_deref() == Some("2/2"))
        .then_some(())
    })
    .await;
    assert_eq!(servers[pi].role().await.as_deref(), Some("master"));
    operator.stop().await;
}

#[tokio::test]
async fn redis_manual_mode_never_fails_over_by_itself() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-manual").await;
    let mut servers = [RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1])];
    api.create(
        &PostParams::default(),
        &cluster("manual", &[("s0", &members)], json!({"heartbeatInterval": "200ms", "mode": "Manual"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&api, "manual", "s0", None).await;
    let (pi, ri) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;
    servers[pi].kill();
    let msg = eventually(WAIT, "a condition asking for a FailoverRequest", || async {
        let st = api.get("manual").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "ManualFailover").then(|| ready.message.clone())
    })
    .await;
    assert!(msg.contains("FailoverRequest"), "{msg}");
    observe_heartbeats(&servers[ri], 5).await;
    assert_eq!(servers[ri].role().await.as_deref(), Some("slave"), "manual mode: nothing promoted");
    assert_eq!(get(&api, "manual").await.status.unwrap().shards[0].epoch, 1);
    operator.stop().await;
}

/// A frozen primary (SIGSTOP: the port accepts connections, nothing answers) is detected by
/// probe timeouts and failed over; thawed, it is demoted to a replica of the new primary.
/// (Between the thaw and the next heartbeat it still reports `master` — Redis cannot be fenced
/// while frozen — so this test does not sample for two primaries.)
#[tokio::test]
async fn redis_frozen_primary_is_failed_over_and_demoted_when_it_thaws() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-frozen").await;
    let servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let names = ["a", "b", "c"];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = names.iter().copied().zip(servers.iter()).collect();
    api.create(
        &PostParams::default(),
        &cluster("frozen", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&api, "frozen", "s0", None).await;
    let pi = names.iter().position(|n| *n == p).unwrap();
    for i in (0..3).filter(|i| *i != pi) {
        wait_follows(&servers[i], &servers[pi]).await;
    }
    servers[pi].signal(libc::SIGSTOP);
    let q = wait_primary(&api, "frozen", "s0", Some(&p)).await;
    let qi = names.iter().position(|n| *n == q).unwrap();
    assert_eq!(servers[qi].role().await.as_deref(), Some("master"));
    servers[pi].signal(libc::SIGCONT);
    wait_follows(&servers[pi], &servers[qi]).await;
    eventually(WAIT, "thawed primary listed as a replica", || async {
        let st = api.get("frozen").await.ok()?.status?;
        st.shards[0].members.iter().any(|m| m.name == p && m.healthy && m.role == Role::Replica).then_some(())
    })
    .await;
    operator.stop().await;
}

/// Misses count at most once per heartbeat interval, however often the monitor is woken: a
/// cluster edited every 50 ms (each edit wakes its monitor, which probes) whose primary died
/// is failed over no sooner than `failureThreshold − 1` intervals after the first miss. Before,
/// every wake-up counted a miss, and the same cluster failed over in a fraction of its window.
#[tokio::test]
async fn wake_ups_between_heartbeats_do_not_shorten_the_failure_window() {
    let client = support::client().await;
    let ns = support::namespace(&client, "window").await;
    let mut servers = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members = [("a", &servers[0]), ("b", &servers[1])];
    let hac = cluster("w", &[("s0", &members)], json!({"heartbeatInterval": "1s", "failureThreshold": 3}));
    hacs.create(&PostParams::default(), &hac).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let first = wait_primary(&hacs, "w", "s0", None).await;
    let (pi, ri) = if first == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;

    let poker = {
        let hacs = hacs.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                let patch = json!({"metadata": {"annotations": {"test.understudy.dev/poke": n.to_string()}}});
                let _ = hacs.patch("w", &PatchParams::default(), &Patch::Merge(&patch)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    servers[pi].kill();
    let killed = std::time::Instant::now();
    let second = wait_primary(&hacs, "w", "s0", Some(&first)).await;
    let after = killed.elapsed();
    poker.abort();
    eprintln!("{first} killed; {second} promoted {after:?} later, with the cluster edited every 50 ms");
    assert!(
        after >= Duration::from_millis(1800),
        "failed over {after:?} after the kill: 3 misses at least 0.9 s apart take at least 1.8 s"
    );
    operator.stop().await;
}

/// Automatic failover never promotes a member whose node is not Ready: the node that would
/// win the election (highest priority) is NotReady, so the next one is promoted.
#[tokio::test]
async fn automatic_failover_avoids_members_on_not_ready_nodes() {
    use k8s_openapi::api::core::v1::Node;
    let client = support::client().await;
    let ns = support::namespace(&client, "dead-node").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = ["a", "b", "c"].iter().map(|m| format!("{ns}-{m}")).collect();
    for (name, ready) in names.iter().zip(["True", "False", "True"]) {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": ready, "reason": "Test",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    }
    let mut servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let members = [("a", &servers[0]), ("b", &servers[1]), ("c", &servers[2])];
    let mut hac = cluster("dn", &[("s0", &members)], json!({"heartbeatInterval": "200ms"}));
    for (m, (node, priority)) in
        hac.spec.shards.as_mut().unwrap()[0].members.iter_mut().zip(names.iter().zip([300, 200, 100]))
    {
        m.node = Some(node.clone());
        m.priority = priority;
    }
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &hac).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    assert_eq!(wait_primary(&api, "dn", "s0", None).await, "a");
    wait_follows(&servers[1], &servers[0]).await;
    wait_follows(&servers[2], &servers[0]).await;
    servers[0].kill();
    let next = wait_primary(&api, "dn", "s0", Some("a")).await;
    assert_eq!(next, "c", "b has the higher priority but its node is not Ready");
    operator.stop().await;
    for name in &names {
        let _ = nodes.delete(name, &Default::default()).await;
    }
}

/// A promotion that fails on the candidate (its ACL forbids `REPLICAOF`) stays recorded and is
/// retried every heartbeat. The attempts are repeated Warnings, not a flood of Events: one
/// Event per (reason, note) whose `series.count` grows.
#[tokio::test]
async fn repeated_failed_promotions_are_one_event_not_one_per_attempt() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-repeat").await;
    let mut servers = [RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &cluster(
            "r",
            &[("s0", &[("a", &servers[0]), ("b", &servers[1])])],
            json!({"heartbeatInterval": "200ms"}),
        ),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&api, "r", "s0", None).await;
    let (pi, other) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[other], &servers[pi]).await;
    // The replica refuses to be promoted; the primary dies.
    let () =
        servers[other].cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("-replicaof")).await.unwrap();
    servers[pi].kill();
    let evs: Api<Event> = Api::namespaced(client.clone(), &ns);
    let failed = || async {
        evs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("PromotionFailed"))
            .collect::<Vec<_>>()
    };
    // The series is written at the earliest 30 s after the first Event, for a repeat.
    let counted = eventually(Duration::from_secs(90), "a PromotionFailed series", || async {
        failed().await.into_iter().find_map(|e| e.series.map(|s| s.count)).filter(|c| *c >= 10)
    })
    .await;
    let all = failed().await;
    let notes: std::collections::BTreeSet<_> =
        all.iter().map(|e| e.note.clone().unwrap_or_default()).collect();
    assert_eq!(all.len(), notes.len(), "one Event per distinct note: {all:#?}");
    assert!(all.len() <= 2, "{} PromotionFailed Events for {counted} attempts: {notes:#?}", all.len());
    assert_eq!(servers[other].role().await.as_deref(), Some("slave"), "nothing promoted");
    operator.stop().await;
}

/// One writer per status field: the monitor writes what it observes (members, conditions,
/// phase) by server-side apply under its own field manager and never the fields of the
/// compare-and-set path (lock, epoch, currentPrimary, targetPrimary, lastFailover); an
/// observed field forced by another writer is taken back.
#[tokio::test]
async fn observed_status_and_role_decisions_have_separate_writers() {
    let client = support::client().await;
    let ns = support::namespace(&client, "redis-owners").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1])];
    api.create(
        &PostParams::default(),
        &cluster("own", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    wait_primary(&api, "own", "s0", None).await;
    eventually(WAIT, "both members healthy in status", || async {
        let st = api.get("own").await.ok()?.status?;
        (st.shards.first()?.members.iter().filter(|m| m.healthy).count() == 2).then_some(())
    })
    .await;

    let c = api.get("own").await.unwrap();
    let owned = |manager: &str| -> serde_json::Value {
        let fields: Vec<_> = c
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some(manager) && m.subresource.as_deref() == Some("status"))
            .filter_map(|m| m.fields_v1.as_ref().map(|f| f.0.clone()))
            .collect();
        serde_json::Value::Array(fields)
    };
    let monitor = owned("understudy-monitor").to_string();
    assert!(monitor.contains("f:members") && monitor.contains("f:conditions"), "{monitor}");
    for control in ["f:epoch", "f:currentPrimary", "f:targetPrimary", "f:operation", "f:lastFailover"] {
        assert!(!monitor.contains(control), "the monitor owns {control}: {monitor}");
    }
    let writers_of_epoch: Vec<_> = c
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.to_string().contains("f:epoch")))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(!writers_of_epoch.is_empty() && !writers_of_epoch.iter().any(|m| m == "understudy-monitor"));

    // Someone else forces an observed field: the monitor's next apply takes it back.
    let body = json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "status": {"healthyMembers": "0/2"},
    });
    api.patch_status("own", &PatchParams::apply("a-stale-writer").force(), &Patch::Apply(&body))
        .await
        .unwrap();
    eventually(WAIT, "the monitor's truth back", || async {
        let st = api.get("own").await.ok()?.status?;
        (st.healthy_members.as_deref() == Some("2/2")).then_some(())
    })
    .await;
    operator.stop().await;
}
