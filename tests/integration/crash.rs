//! The operator is killed in the middle of a switchover — after the old primary was fenced
//! (writes paused) but before the promotion, and after the promotion but before the replicas
//! were redirected — and a fresh process finishes it: never two primaries, no acknowledged
//! write lost.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use kube::{Api, api::PostParams};
use serde_json::json;
use understudy::resources::{HaCluster, ShardFailover, shard_failover::ShardFailoverPhase};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    shard_failover::shard_failover,
    support::{self, Process, RedisServer, RoleSampler, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

async fn crash_during_switchover(point: &str) {
    let client = support::client().await;
    let ns = support::namespace(&client, &format!("crash-{point}")).await;
    let servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let names = ["a", "b", "c"];
    let sampler = RoleSampler::start(servers.iter().map(RedisServer::sample_target).collect());
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = names.iter().copied().zip(servers.iter()).collect();
    hacs.create(
        &PostParams::default(),
        &cluster("k", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let args = ["run", "--namespaces", &ns, "--listen", &listen];
    let mut doomed =
        Process::understudy_with_env(&args, &format!("crash-{point}"), &[("UNDERSTUDY_CRASH_AT", point)]);
    let p = wait_primary(&hacs, "k", "s0", None).await;
    let pi = names.iter().position(|n| *n == p).unwrap();
    for i in (0..3).filter(|i| *i != pi) {
        wait_follows(&servers[i], &servers[pi]).await;
    }

    // A client writes sequenced keys to the primary throughout.
    let acked = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, port) = (acked.clone(), stop.clone(), servers[pi].port);
        tokio::spawn(async move {
            let mut conn = support::redis_conn("127.0.0.1", port, None, 10_000).await.unwrap();
            let mut i = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("w:{i}")).arg(i).query_async(&mut conn).await;
                if r.is_err() {
                    break;
                }
                acked.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    eventually(WAIT, "writes flowing", || async { (acked.load(Ordering::SeqCst) > 100).then_some(()) }).await;

    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    sfos.create(&PostParams::default(), &shard_failover("move", json!({"shardUids": [p]}))).await.unwrap();
    doomed.crashed_at(point, WAIT).await;
    assert!(doomed.log().contains(&format!("UNDERSTUDY_CRASH_AT={point}")));

    // A fresh operator resumes from status and finishes.
    let _fresh = Process::understudy(&args, &format!("resume-{point}"));
    let done = eventually(WAIT, "the switchover to finish after the restart", || async {
        let s = sfos.get("move").await.ok()?;
        matches!(s.status.as_ref()?.phase, Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed))
            .then_some(s)
    })
    .await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(ShardFailoverPhase::Succeeded), "{:?}", done.status);
    let q = wait_primary(&hacs, "k", "s0", Some(&p)).await;
    let qi = names.iter().position(|n| *n == q).unwrap();
    for i in (0..3).filter(|i| *i != qi) {
        wait_follows(&servers[i], &servers[qi]).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let acked = acked.load(Ordering::SeqCst);
    let present: i64 = servers[qi].cmd(&redis::cmd("DBSIZE")).await.unwrap();
    assert_eq!(present, acked, "every acknowledged write survived the crash and the switchover");
    assert_eq!(sampler.max(), 1, "never two primaries");
    let st = hacs.get("k").await.unwrap().status.unwrap();
    assert!(st.shards[0].operation.is_none() && st.shards[0].target_primary.is_none());
}

#[tokio::test]
async fn killed_after_fence_before_promote_a_fresh_operator_finishes() {
    crash_during_switchover("after-fence").await;
}

#[tokio::test]
async fn killed_after_promote_before_redirect_a_fresh_operator_finishes() {
    crash_during_switchover("after-promote").await;
}

/// The operator is killed right after each step of a FailoverRequest's DAG is recorded
/// (check, lock, fence, promote, redirect, route, record); a fresh process resumes from the
/// request's status and finishes it: the request succeeds, the shard has one primary (the
/// candidate), its lock is released, and nothing is done twice.
#[tokio::test]
async fn a_failover_request_resumes_after_a_kill_at_every_step() {
    use understudy::resources::{FailoverRequest, failover_request::RequestPhase};
    let client = support::client().await;
    for step in ["check", "lock", "fence", "promote", "redirect", "route", "record"] {
        let ns = support::namespace(&client, &format!("fr-crash-{step}")).await;
        let servers = [RedisServer::start(None), RedisServer::start(None)];
        let sampler = RoleSampler::start(servers.iter().map(RedisServer::sample_target).collect());
        let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
        let members = [("a", &servers[0]), ("b", &servers[1])];
        hacs.create(
            &PostParams::default(),
            &cluster("k", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
        )
        .await
        .unwrap();
        let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
        let args = ["run", "--namespaces", &ns, "--listen", &listen];
        let point = format!("fr-after-{step}");
        let mut doomed = Process::understudy_with_env(
            &args,
            &format!("fr-crash-{step}"),
            &[("UNDERSTUDY_CRASH_AT", &point)],
        );
        let p = wait_primary(&hacs, "k", "s0", None).await;
        let (pi, qi) = if p == "a" { (0, 1) } else { (1, 0) };
        wait_follows(&servers[qi], &servers[pi]).await;
        let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
        let spec = json!({"type": "Switchover", "items": [{"cluster": "k"}], "serviceName": "k-writes"});
        frs.create(&PostParams::default(), &crate::failover_request::request("move", spec)).await.unwrap();
        let (_fresh, done) = resume_after_crash(&mut doomed, &args, &frs, "move", step).await;
        let st = done.status.unwrap();
        assert_eq!(st.phase, Some(RequestPhase::Succeeded), "killed after {step}: {:?}", st.message);
        let q = wait_primary(&hacs, "k", "s0", Some(&p)).await;
        assert_eq!(q, ["a", "b"][qi], "killed after {step}: the candidate is primary");
        wait_follows(&servers[pi], &servers[qi]).await;
        let c = hacs.get("k").await.unwrap().status.unwrap();
        assert!(c.shards[0].operation.is_none(), "killed after {step}: the lock was released");
        assert_eq!(c.shards[0].epoch, 2, "killed after {step}: exactly one promotion after the bootstrap");
        assert_eq!(sampler.max(), 1, "killed after {step}: never two primaries");
        eprintln!("killed after {step}: resumed and finished ({} → {q})", p);
    }
}

/// Wait for `doomed` to crash at `fr-after-<step>`, start a fresh operator with `args` (kept
/// running while the returned process lives) and wait for request `name` to be terminal.
async fn resume_after_crash(
    doomed: &mut Process,
    args: &[&str],
    frs: &Api<understudy::resources::FailoverRequest>,
    name: &str,
    step: &str,
) -> (Process, understudy::resources::FailoverRequest) {
    use understudy::resources::failover_request::RequestPhase;
    doomed.crashed_at(&format!("fr-after-{step}"), WAIT).await;
    let fresh = Process::understudy(args, &format!("{name}-resume-{step}"));
    let done = eventually(WAIT, &format!("{name} to finish after a kill at {step}"), || async {
        let r = frs.get(name).await.ok()?;
        matches!(
            r.status.as_ref()?.phase,
            Some(RequestPhase::Succeeded | RequestPhase::Failed | RequestPhase::RolledBack)
        )
        .then_some(r)
    })
    .await;
    (fresh, done)
}

/// The same for a FailoverRequest naming a standby cluster whose upstream is gone: killed
/// right after each step of the standby chain is recorded, a fresh process finishes it — the
/// leader is the writable primary once (one epoch), the relation ended, the lock released,
/// never two writable servers.
#[tokio::test]
async fn a_standby_failover_resumes_after_a_kill_at_every_step() {
    use understudy::resources::{FailoverRequest, failover_request::RequestPhase};
    let client = support::client().await;
    for step in crate::standby_failover::STANDBY_CHAIN {
        let ns = support::namespace(&client, &format!("sb-crash-{step}")).await;
        let mut src = [RedisServer::start(None), RedisServer::start(None)];
        let dr = [RedisServer::start(None), RedisServer::start(None)];
        let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
        let hb = json!({"heartbeatInterval": "200ms"});
        let sm = [("s-a", &src[0]), ("s-b", &src[1])];
        hacs.create(&PostParams::default(), &cluster("src", &[("s0", &sm)], hb.clone())).await.unwrap();
        let dm = [("d-a", &dr[0]), ("d-b", &dr[1])];
        let mut standby = cluster("dr", &[("s0", &dm)], hb);
        standby.spec.standby = Some(serde_json::from_value(json!({"cluster": "src"})).unwrap());
        hacs.create(&PostParams::default(), &standby).await.unwrap();
        let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
        let args = ["run", "--namespaces", &ns, "--listen", &listen];
        let point = format!("fr-after-{step}");
        let mut doomed = Process::understudy_with_env(
            &args,
            &format!("sb-crash-{step}"),
            &[("UNDERSTUDY_CRASH_AT", &point)],
        );
        let sp = wait_primary(&hacs, "src", "s0", None).await;
        let spi = if sp == "s-a" { 0 } else { 1 };
        let leader = crate::standby::wait_leader(&hacs, "dr", &src[spi]).await;
        let li = if leader == "d-a" { 0 } else { 1 };
        wait_follows(&dr[li], &src[spi]).await;
        let epoch = hacs.get("dr").await.unwrap().status.unwrap().shards[0].epoch;
        src[0].kill();
        src[1].kill();
        let sampler = RoleSampler::start(dr.iter().map(RedisServer::sample_target).collect());
        let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
        let spec = json!({"type": "Failover", "items": [{"cluster": "dr", "serviceName": "dr-writes"}]});
        frs.create(&PostParams::default(), &crate::failover_request::request("up", spec)).await.unwrap();
        let (_fresh, done) = resume_after_crash(&mut doomed, &args, &frs, "up", step).await;
        let st = done.status.unwrap();
        assert_eq!(st.phase, Some(RequestPhase::Succeeded), "killed after {step}: {:?}", st.message);
        assert_eq!(
            dr[li].role().await.as_deref(),
            Some("master"),
            "killed after {step}: the leader is writable"
        );
        wait_follows(&dr[1 - li], &dr[li]).await;
        let c = hacs.get("dr").await.unwrap();
        assert!(c.standby().is_none(), "killed after {step}: the relation ended");
        let s = &c.status.unwrap().shards[0];
        assert!(s.operation.is_none() && s.target_primary.is_none(), "killed after {step}: {s:?}");
        assert_eq!(s.current_primary.as_deref(), Some(leader.as_str()));
        assert_eq!(s.epoch, epoch + 1, "killed after {step}: exactly one promotion");
        let fenced = hacs.get("src").await.unwrap().status.unwrap().superseded_by;
        assert!(
            fenced.as_ref().is_some_and(|r| r.cluster.ends_with("/dr")),
            "killed after {step}: the old upstream is told to yield: {fenced:?}"
        );
        assert_eq!(sampler.max(), 1, "killed after {step}: never two writable servers");
        eprintln!("killed after {step}: resumed and finished ({leader} is primary, epoch {})", s.epoch);
    }
}
