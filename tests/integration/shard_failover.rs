//! ShardFailover (seed 001) on real redis-server shards: dry run, every error code from a
//! real attempt, a two-shard failover that leaves the third shard alone, and zero
//! acknowledged writes lost during the graceful switchover.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{
    FailoverRequest, HaCluster, ShardFailover,
    shard_failover::{ShardFailoverError, ShardFailoverPhase},
};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    support::{self, Operator, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

/// A ShardFailover object named `name` for `uids`.
pub fn shard_failover(name: &str, spec: serde_json::Value) -> ShardFailover {
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover", "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Edit the shards of cluster `bdb` in status; the monitor writes status too, so retry on a
/// conflict.
async fn set_locks(hacs: &Api<HaCluster>, edit: impl Fn(&mut understudy::resources::hacluster::ShardStatus)) {
    eventually(WAIT, "status edited", || async {
        let mut c = hacs.get("bdb").await.ok()?;
        c.status.as_mut()?.shards.iter_mut().for_each(&edit);
        hacs.replace_status("bdb", &PostParams::default(), &c).await.ok()
    })
    .await;
}

async fn submit(api: &Api<ShardFailover>, name: &str, spec: serde_json::Value) -> ShardFailover {
    api.create(&PostParams::default(), &shard_failover(name, spec)).await.unwrap();
    eventually(WAIT, &format!("ShardFailover {name} to finish"), || async {
        let s = api.get(name).await.ok()?;
        matches!(s.status.as_ref()?.phase, Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed))
            .then_some(s)
    })
    .await
}

fn code(s: &ShardFailover) -> Option<ShardFailoverError> {
    s.status.as_ref()?.error_code
}

async fn epochs(api: &Api<HaCluster>, name: &str) -> Vec<(String, Option<String>, i64)> {
    let st = api.get(name).await.unwrap().status.unwrap();
    st.shards.iter().map(|s| (s.name.clone(), s.current_primary.clone(), s.epoch)).collect()
}

#[tokio::test]
async fn shard_failover_plans_refuses_and_fails_over_two_of_three_shards() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sfo").await;
    let servers: Vec<[RedisServer; 2]> =
        (0..3).map(|_| [RedisServer::start(None), RedisServer::start(None)]).collect();
    let names: Vec<[String; 2]> = (0..3).map(|i| [format!("a{i}"), format!("b{i}")]).collect();
    let members: Vec<Vec<(&str, &RedisServer)>> = (0..3)
        .map(|i| vec![(names[i][0].as_str(), &servers[i][0]), (names[i][1].as_str(), &servers[i][1])])
        .collect();
    let shard_names = ["s0", "s1", "s2"];
    let shards: Vec<(&str, &[(&str, &RedisServer)])> =
        (0..3).map(|i| (shard_names[i], members[i].as_slice())).collect();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    hacs.create(&PostParams::default(), &cluster("bdb", &shards, json!({"heartbeatInterval": "200ms"})))
        .await
        .unwrap();
    let other = RedisServer::start(None);
    let other_members = vec![("solo", &other)];
    hacs.create(
        &PostParams::default(),
        &cluster("other", &[("s0", &other_members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let mut primaries = Vec::new();
    for (i, s) in shard_names.iter().enumerate() {
        let p = wait_primary(&hacs, "bdb", s, None).await;
        let (pi, ri) = if p == names[i][0] { (0, 1) } else { (1, 0) };
        wait_follows(&servers[i][ri], &servers[i][pi]).await;
        primaries.push((p, pi, ri));
    }
    wait_primary(&hacs, "other", "s0", None).await;
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    let before = epochs(&hacs, "bdb").await;

    // Dry run: the plan is written, nothing is touched.
    let dry = submit(&sfos, "dry", json!({"shardUids": [primaries[0].0], "dryRun": true})).await;
    let st = dry.status.clone().unwrap();
    assert_eq!(st.phase, Some(ShardFailoverPhase::Succeeded), "{st:?}");
    assert_eq!(st.shards[0].to.as_deref(), Some(names[0][primaries[0].2].as_str()), "plan names the replica");
    assert!(st.message.unwrap().contains("dry run"));
    assert_eq!(epochs(&hacs, "bdb").await, before, "dry run changed nothing");
    assert_eq!(servers[0][primaries[0].1].role().await.as_deref(), Some("master"));

    // Every error code, from a real attempt; nothing touched.
    // (A uid that is no member yet is waited for until the deadline: GitOps ordering.)
    let r = submit(&sfos, "nope", json!({"shardUids": ["zz"], "timeoutSeconds": 2})).await;
    assert_eq!(code(&r), Some(ShardFailoverError::ShardNotExist), "{:?}", r.status);
    let replica = names[0][primaries[0].2].clone();
    let r = submit(&sfos, "slave", json!({"shardUids": [replica]})).await;
    assert_eq!(code(&r), Some(ShardFailoverError::ShardIsSlave), "{:?}", r.status);
    assert!(r.status.unwrap().message.unwrap().contains("is a replica"));
    let r = submit(&sfos, "two-dbs", json!({"shardUids": [primaries[0].0, "solo"]})).await;
    assert_eq!(code(&r), Some(ShardFailoverError::FailoverShardsDifferentBdb), "{:?}", r.status);
    // A paused cluster carries out no switchover: refused at once (not left to time out),
    // as a FailoverRequest item naming it is.
    hacs.patch("other", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true}})))
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    let r = submit(&sfos, "paused", json!({"shardUids": ["solo"], "timeoutSeconds": 30})).await;
    assert_eq!(code(&r), Some(ShardFailoverError::DbBusy), "{:?}", r.status);
    let msg = r.status.unwrap().message.unwrap_or_default();
    assert!(msg.contains("is paused") && msg.contains("kubectl understudy resume other"), "{msg}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "refused at once, not at the deadline: {:?}",
        asked.elapsed()
    );
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    let paused_fr: FailoverRequest = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "FailoverRequest", "metadata": {"name": "paused"},
        "spec": {"type": "Switchover", "items": [{"cluster": "other"}]}
    }))
    .unwrap();
    frs.create(&PostParams::default(), &paused_fr).await.unwrap();
    let fr = eventually(WAIT, "the FailoverRequest on a paused cluster to end", || async {
        let f = frs.get("paused").await.ok()?;
        let st = f.status.clone()?;
        (st.phase == Some(understudy::resources::failover_request::RequestPhase::Failed)).then_some(st)
    })
    .await;
    assert!(fr.message.clone().unwrap_or_default().contains("is paused"), "{:?}", fr.message);
    hacs.patch("other", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": false}})))
        .await
        .unwrap();
    assert_eq!(epochs(&hacs, "bdb").await, before, "refused requests changed nothing");

    // db_busy: another operation (a real object) holds s2's lock past our deadline.
    let holder: FailoverRequest = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "FailoverRequest", "metadata": {"name": "holder"},
        "spec": {"type": "Switchover", "items": [{"cluster": "bdb", "shard": "s2"}], "dryRun": true}
    }))
    .unwrap();
    let holder = frs.create(&PostParams::default(), &holder).await.unwrap();
    let lock: understudy::resources::hacluster::OperationLock = serde_json::from_value(json!({
        "kind": "FailoverRequest", "name": "holder", "namespace": ns, "uid": holder.metadata.uid,
        "acquiredAt": "2026-01-01T00:00:00Z", "expiresAt": "2099-01-01T00:00:00Z"
    }))
    .unwrap();
    set_locks(&hacs, |s| {
        if s.name == "s2" {
            s.operation = Some(lock.clone())
        }
    })
    .await;
    let r = submit(&sfos, "busy", json!({"shardUids": [primaries[2].0], "timeoutSeconds": 3})).await;
    assert_eq!(code(&r), Some(ShardFailoverError::DbBusy), "{:?}", r.status);
    assert!(
        r.status.as_ref().unwrap().conditions.iter().any(|c| c.type_ == "DatabaseBusy"),
        "reported busy while waiting"
    );
    set_locks(&hacs, |s| s.operation = None).await;
    assert_eq!(servers[2][primaries[2].1].role().await.as_deref(), Some("master"), "busy shard untouched");

    // Fail over s0 and s1 while a client writes sequenced keys to s0's primary.
    let acked = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let port = servers[0][primaries[0].1].port;
        tokio::spawn(async move {
            let mut conn = support::redis_conn("127.0.0.1", port, None, 5000).await.unwrap();
            let mut i = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("seq:{i}")).arg(i).query_async(&mut conn).await;
                match r {
                    Ok(()) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    Err(_) => break, // READONLY: the old primary follows the new one now
                }
            }
        })
    };
    eventually(WAIT, "writer running", || async { (acked.load(Ordering::SeqCst) > 200).then_some(()) }).await;
    let done = submit(
        &sfos,
        "two-shards",
        json!({"shardUids": [primaries[0].0, primaries[1].0], "forceRebind": true}),
    )
    .await;
    let st = done.status.clone().unwrap();
    assert_eq!(st.phase, Some(ShardFailoverPhase::Succeeded), "{st:?}");
    assert!(st.action_uid.is_some());
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let after = epochs(&hacs, "bdb").await;
    for i in 0..2 {
        let (_, pi, ri) = primaries[i];
        assert_eq!(after[i].1.as_deref(), Some(names[i][ri].as_str()), "shard {i} failed over");
        assert_eq!(after[i].2, before[i].2 + 1);
        assert_eq!(servers[i][ri].role().await.as_deref(), Some("master"));
        wait_follows(&servers[i][pi], &servers[i][ri]).await;
    }
    assert_eq!(after[2], before[2], "the third shard is untouched");
    // forceRebind: the primary Service names the three current primaries when it succeeds.
    assert!(st.message.as_deref().unwrap_or_default().contains("forceRebind: Service bdb-primary"), "{st:?}");
    let mut routed = crate::failover_request::slice_addresses(&client, &ns, "bdb-primary").await;
    routed.sort();
    let mut want: Vec<String> = (0..3)
        .map(|i| {
            let name = after[i].1.clone().unwrap();
            let j = names[i].iter().position(|n| *n == name).unwrap();
            crate::hacluster_redis::route_ip(servers[i][j].port)
        })
        .collect();
    want.sort();
    assert_eq!(routed, want, "clients are routed to the new primaries");
    let acked = acked.load(Ordering::SeqCst);
    let (_, _, ri) = primaries[0];
    let present: i64 = servers[0][ri].cmd(&redis::cmd("DBSIZE")).await.unwrap();
    assert_eq!(present, acked, "every acknowledged write is on the new primary (zero loss)");
    eprintln!("switchover under load: {acked} acknowledged writes, {present} on the new primary");
    operator.stop().await;
}

#[tokio::test]
async fn shard_failover_resumes_after_the_operator_restarts() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sfo-resume").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members = vec![("a", &servers[0]), ("b", &servers[1])];
    hacs.create(
        &PostParams::default(),
        &cluster("r", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&hacs, "r", "s0", None).await;
    let (pi, ri) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;
    operator.stop().await;

    // The operator is down when the request arrives; it starts, records the plan, and is
    // stopped again mid-operation; a fresh operator finishes from what status says.
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    sfos.create(&PostParams::default(), &shard_failover("move", json!({"shardUids": [p]}))).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    eventually(WAIT, "plan recorded", || async {
        let s = sfos.get("move").await.ok()?;
        (!s.status?.shards.is_empty()).then_some(())
    })
    .await;
    operator.stop().await;
    let operator = Operator::start(client.clone(), &ns);
    let done = eventually(WAIT, "finished after restart", || async {
        let s = sfos.get("move").await.ok()?;
        matches!(s.status.as_ref()?.phase, Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed))
            .then_some(s)
    })
    .await;
    assert_eq!(done.status.unwrap().phase, Some(ShardFailoverPhase::Succeeded));
    let now = wait_primary(&hacs, "r", "s0", Some(&p)).await;
    assert_ne!(now, p);
    assert_eq!(servers[ri].role().await.as_deref(), Some("master"));
    wait_follows(&servers[pi], &servers[ri]).await;
    let st = hacs.get("r").await.unwrap().status.unwrap();
    assert!(st.shards[0].operation.is_none(), "lock released");
    operator.stop().await;
}

/// Seed 001's `deadUids` and `deadNodes`: a primary listed as dead is neither drained nor
/// demoted by the operation (only taken out of routing), and a member on a dead node is
/// neither promoted nor redirected by it. The steps say so.
#[tokio::test]
async fn shard_failover_leaves_dead_uids_and_dead_nodes_untouched() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sfo-dead").await;
    let servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let names = ["a", "b", "c"];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = names.iter().copied().zip(servers.iter()).collect();
    // Priorities make the election deterministic: a first, then b, then c.
    let mut hac = cluster("d", &[("s0", &members)], json!({"heartbeatInterval": "200ms"}));
    for (m, (node, priority)) in hac.spec.shards.as_mut().unwrap()[0].members.iter_mut().zip([
        ("node-a", 300),
        ("node-b", 200),
        ("node-c", 100),
    ]) {
        m.node = Some(node.into());
        m.priority = priority;
    }
    hacs.create(&PostParams::default(), &hac).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    assert_eq!(wait_primary(&hacs, "d", "s0", None).await, "a");
    wait_follows(&servers[1], &servers[0]).await;
    wait_follows(&servers[2], &servers[0]).await;
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    let done =
        submit(&sfos, "dead", json!({"shardUids": ["a"], "deadUids": ["a"], "deadNodes": ["node-b"]})).await;
    assert_eq!(done.status.clone().unwrap().phase, Some(ShardFailoverPhase::Succeeded), "{:?}", done.status);
    assert_eq!(wait_primary(&hacs, "d", "s0", Some("a")).await, "c", "b is on a dead node: not promoted");
    let record = hacs.get("d").await.unwrap().status.unwrap().last_failover.unwrap();
    let step = |name: &str| record.steps.iter().find(|s| s.name == name).and_then(|s| s.message.clone());
    let fence = step("fence").unwrap_or_default();
    assert!(fence.contains("not touched") && fence.contains("declared dead"), "fence step: {fence}");
    let redirect = step("redirect").unwrap_or_default();
    assert_eq!(redirect, "no other member to redirect", "nobody declared dead is redirected");
    // Alive after all, a answers as a primary: the monitor (not the operation) demotes it.
    wait_follows(&servers[0], &servers[2]).await;
    wait_follows(&servers[1], &servers[2]).await;
    operator.stop().await;
}

/// One task per shard: while a switchover of shard s0 is stuck draining (its candidate cannot
/// catch up until `stepTimeout`), shard s1's dead primary is failed over in its usual window.
/// Before, the monitor handled shards one after another and s1 waited for s0's drain.
#[tokio::test]
async fn a_drain_in_one_shard_does_not_hold_up_failover_in_another() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sfo-shards").await;
    let mut servers: Vec<[RedisServer; 2]> =
        (0..2).map(|_| [RedisServer::start(None), RedisServer::start(None)]).collect();
    let names = [["a0", "b0"], ["a1", "b1"]];
    let members: Vec<Vec<(&str, &RedisServer)>> =
        (0..2).map(|i| vec![(names[i][0], &servers[i][0]), (names[i][1], &servers[i][1])]).collect();
    let shards: Vec<(&str, &[(&str, &RedisServer)])> =
        vec![("s0", members[0].as_slice()), ("s1", members[1].as_slice())];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    // Replication of s0 is cut on purpose and written on: no self-fencing.
    let failover = json!({"heartbeatInterval": "200ms", "stepTimeout": "8s", "maxLagOnFailover": 100_000_000,
        "fencing": {"minReplicasToWrite": 0}});
    hacs.create(&PostParams::default(), &cluster("bdb", &shards, failover)).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let mut roles = Vec::new();
    for (i, s) in ["s0", "s1"].iter().enumerate() {
        let p = wait_primary(&hacs, "bdb", s, None).await;
        let (pi, ri) = if p == names[i][0] { (0, 1) } else { (1, 0) };
        wait_follows(&servers[i][ri], &servers[i][pi]).await;
        roles.push((p, pi, ri));
    }
    // s0's replica can no longer catch up: its primary refuses the re-sync and cuts the link.
    let p0 = &servers[0][roles[0].1];
    let _: () =
        p0.cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("-sync").arg("-psync")).await.unwrap();
    let _: i64 = p0.cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica")).await.unwrap();
    for i in 0..20 {
        let _: () = p0.cmd(redis::cmd("SET").arg(format!("unreplicated:{i}")).arg(i)).await.unwrap();
    }
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    sfos.create(&PostParams::default(), &shard_failover("stuck", json!({"shardUids": [roles[0].0]})))
        .await
        .unwrap();
    let s0_target = |c: &HaCluster| {
        c.status
            .as_ref()
            .and_then(|s| s.shards.iter().find(|s| s.name == "s0"))
            .and_then(|s| s.target_primary.clone())
    };
    eventually(WAIT, "s0's switchover recorded (draining)", || async {
        s0_target(&hacs.get("bdb").await.ok()?).map(|_| ())
    })
    .await;
    let (p1, p1i) = (roles[1].0.clone(), roles[1].1);
    servers[1][p1i].kill();
    let killed = std::time::Instant::now();
    let q1 = wait_primary(&hacs, "bdb", "s1", Some(&p1)).await;
    let took = killed.elapsed();
    let c = hacs.get("bdb").await.unwrap();
    assert!(
        s0_target(&c).is_some(),
        "s1 failed over only after s0's drain ended ({took:?} after the kill): shards are not independent"
    );
    eprintln!("s1: {p1} killed, {q1} promoted {took:?} later while s0 was still draining");
    eventually(WAIT, "the stuck switchover to give up", || async {
        let s = sfos.get("stuck").await.ok()?;
        (s.status?.phase == Some(ShardFailoverPhase::Failed)).then_some(())
    })
    .await;
    operator.stop().await;
}
