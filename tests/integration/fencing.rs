//! Self-fencing: a primary frozen past the failure window and thawed after another member was
//! promoted acknowledges no write sent after that promotion, and what it acknowledged that the
//! new primary never received is measured and recorded, not hidden.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::HaCluster;

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    support::{self, Operator, RedisServer, eventually, redis_conn},
};

/// One write: when it was sent, whether the server acknowledged it.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    sent: SystemTime,
    answered: SystemTime,
    acked: bool,
    error: Option<String>,
}

/// A client connected to one server, writing one key at a time (each write waits for its
/// answer, as most clients do), until stopped.
fn writer(ip: String, port: u16, prefix: String, log: Arc<Mutex<Vec<Write>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // A long response timeout: a write sent to the frozen server is answered after the thaw.
        let Ok(mut conn) = redis_conn(&ip, port, None, 60_000).await else { return };
        for i in 0u64.. {
            let key = format!("{prefix}-{i}");
            let sent = SystemTime::now();
            let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(i).query_async(&mut conn).await;
            let answered = SystemTime::now();
            let w = Write { key, sent, answered, acked: r.is_ok(), error: r.err().map(|e| e.to_string()) };
            // Refusals (the redis crate spells READONLY as "ReadOnly") are answers: keep writing.
            let broken = w.error.as_deref().is_some_and(|e| {
                let e = e.to_ascii_uppercase();
                !e.contains("NOREPLICAS") && !e.contains("READONLY")
            });
            log.lock().unwrap().push(w);
            if broken {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// 20 times: a client writes to the primary; the primary is frozen (SIGSTOP) past the failure
/// window; another member is promoted; the old one is thawed while the client keeps writing.
/// Every write sent after the promotion must be refused or reach the new primary — except the
/// one window Redis leaves open (README, "Fencing"): a freeze in the middle of an event-loop
/// pass can let the client's first write after the thaw be answered before the pass that reads
/// the queued demotion. That write, and only that one, may be acknowledged and lost, and then
/// it must be counted in `lostOffset` like the writes the old primary acknowledged before the
/// promotion that the new one never received.
/// With self-fencing (the default): the thawed primary refuses writes (its queued demotion
/// runs first; self-fencing would also refuse them once it recounts its replicas).
#[tokio::test]
async fn a_thawed_primary_acknowledges_no_write_sent_after_the_failover() {
    thaw_tries("thaw", json!({}), true, 20, &["not demoted", "self-fencing", "a demotion is queued"]).await;
}

/// Without self-fencing (`minReplicasToWrite: 0`, failover forced past the silent primary)
/// the only fence is the demotion queued on the fence line: before it, a thawed primary took
/// writes until the next heartbeat demoted it (~100 ms of a 2 ms writer's writes, all lost).
#[tokio::test]
async fn without_self_fencing_the_queued_demotion_alone_fences_a_thawed_primary() {
    let extra = json!({"onTimeout": "Force", "fencing": {"minReplicasToWrite": 0}});
    thaw_tries("thaw-nofence", extra, false, 5, &["onTimeout: Force", "a demotion is queued"]).await;
}

/// `tries` times: freeze the primary, wait for another to be promoted, thaw it while a client
/// keeps writing to it; every write sent after the promotion is refused or reached the new
/// primary, and what was lost from before it is in `lostOffset`. `fencing` is the cluster's
/// `spec.failover.fencing` (and `onTimeout`); `fence_says` what the fence step must say.
async fn thaw_tries(
    prefix: &str,
    extra: serde_json::Value,
    self_fencing: bool,
    tries: usize,
    fence_says: &[&str],
) {
    let client = support::client().await;
    let ns = support::namespace(&client, prefix).await;
    let servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let names = ["a", "b", "c"];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = names.iter().copied().zip(servers.iter()).collect();
    // Writes reach the primary up to the instant it freezes; one it applied but had not yet
    // streamed to the replicas would make them lag it, and maxLagOnFailover 0 would then
    // rightly refuse to fail over. This test is about fencing, so any replica may be promoted.
    let mut failover =
        json!({"heartbeatInterval": "100ms", "failureThreshold": 3, "maxLagOnFailover": 1_000_000});
    failover.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    api.create(&PostParams::default(), &cluster("thaw", &[("s0", &members)], failover)).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let (mut after_promotion, mut refused_after, mut lost_acked, mut accounted) = (0, 0, 0, 0);
    let (mut noreplicas, mut thaw_window) = (0, 0);
    let mut primary = wait_primary(&api, "thaw", "s0", None).await;
    for n in 0..tries {
        let pi = names.iter().position(|x| *x == primary).unwrap();
        for i in (0..3).filter(|i| *i != pi) {
            wait_follows(&servers[i], &servers[pi]).await;
        }
        // Self-fencing is in place (or not) on the primary before the fault.
        eventually(Duration::from_secs(10), "self-fencing as configured on the primary", || async {
            let info = servers[pi].replication().await?;
            let good = info.get("min_slaves_good_slaves").map(String::as_str);
            (if self_fencing { good == Some("2") } else { good.is_none() }).then_some(())
        })
        .await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = writer(servers[pi].ip.clone(), servers[pi].port, format!("t{n}"), log.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        servers[pi].signal(libc::SIGSTOP);
        // When a replica started acting as primary, seen from outside within a few ms (status
        // times have whole seconds only).
        let promoted = {
            let others: Vec<&RedisServer> = (0..3).filter(|i| *i != pi).map(|i| &servers[i]).collect();
            let deadline = Instant::now() + Duration::from_secs(30);
            'poll: loop {
                for s in &others {
                    if s.role().await.as_deref() == Some("master") {
                        break 'poll SystemTime::now();
                    }
                }
                if Instant::now() > deadline {
                    let st = api.get("thaw").await.ok().and_then(|c| c.status);
                    panic!("try {n}: no replica became primary; status: {st:#?}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let next = wait_primary(&api, "thaw", "s0", Some(&primary)).await;
        let record = api.get("thaw").await.unwrap().status.unwrap().last_failover.unwrap();
        let fence = record.steps.iter().find(|s| s.name == "fence").and_then(|s| s.message.clone());
        assert!(
            fence.as_deref().is_some_and(|m| fence_says.iter().all(|w| m.contains(w))),
            "the fence step says what happened to the frozen primary ({fence_says:?}): {fence:?}"
        );
        let thawed = SystemTime::now();
        servers[pi].signal(libc::SIGCONT);
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.abort();
        let ni = names.iter().position(|x| *x == next).unwrap();
        wait_follows(&servers[pi], &servers[ni]).await;
        // The old primary's data is now the new primary's: check every acknowledged write.
        let writes = log.lock().unwrap().clone();
        let first_after_thaw = writes.iter().position(|w| w.sent > thawed);
        let mut lost_here = 0;
        for (i, w) in writes.iter().enumerate() {
            let present: Option<String> = servers[ni].cmd(redis::cmd("GET").arg(&w.key)).await.unwrap();
            if w.sent > promoted {
                after_promotion += 1;
                refused_after += usize::from(!w.acked);
                noreplicas += usize::from(w.error.as_deref().is_some_and(|e| e.contains("NOREPLICAS")));
                if w.acked && present.is_none() {
                    // Redis's thaw window: only the client's first write after the thaw.
                    assert!(
                        Some(i) == first_after_thaw,
                        "try {n}: write {} sent {:?} after the promotion (not the first after the thaw) was acknowledged by the old primary and lost",
                        w.key,
                        w.sent.duration_since(promoted).unwrap()
                    );
                    eprintln!(
                        "try {n}: thaw window: write {} answered {:?} after the thaw, lost",
                        w.key,
                        w.answered.duration_since(thawed).unwrap_or_default()
                    );
                    thaw_window += 1;
                    lost_here += 1;
                }
            } else if w.acked && present.is_none() {
                lost_here += 1;
            }
        }
        lost_acked += lost_here;
        if lost_here > 0 {
            // Measured when the old primary was re-attached.
            let lost = eventually(Duration::from_secs(10), "a reattach step", || async {
                let r = api.get("thaw").await.ok()?.status?.last_failover?;
                r.steps.iter().any(|s| s.name == "reattach").then_some((r.lost_offset, r.loss_accounting))
            })
            .await;
            let (lost, accounting) = lost;
            assert_eq!(
                accounting,
                Some(understudy::resources::hacluster::LossAccounting::Measured),
                "try {n}: counted when it returned"
            );
            assert!(
                lost.unwrap_or(0) > 0,
                "try {n}: {lost_here} acknowledged writes lost but lostOffset is {lost:?}"
            );
            accounted += 1;
        }
        eprintln!(
            "try {n}: {primary} frozen, {next} promoted; {} writes, {lost_here} acknowledged before the promotion and lost",
            writes.len()
        );
        primary = next;
    }
    eprintln!(
        "{tries} tries: {after_promotion} writes sent to the old primary after the promotion, {refused_after} refused ({noreplicas} by self-fencing, NOREPLICAS; the rest READONLY once demoted), {thaw_window} acknowledged-then-lost in Redis's thaw window; {lost_acked} acknowledged writes lost in all, recorded in lostOffset in {accounted} tries"
    );
    assert!(after_promotion > 0, "the client never wrote after a promotion: the test proved nothing");
    operator.stop().await;
}

/// Self-fencing follows the spec and the shard: switched off with 0, capped at the number of
/// other members.
#[tokio::test]
async fn self_fencing_follows_the_spec_and_the_shard_size() {
    let client = support::client().await;
    let ns = support::namespace(&client, "fence-spec").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members = [("a", &servers[0]), ("b", &servers[1])];
    let failover = json!({"heartbeatInterval": "200ms", "fencing": {"minReplicasToWrite": 3, "maxReplicaLagSeconds": 4}});
    api.create(&PostParams::default(), &cluster("f", &[("s0", &members)], failover)).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    wait_primary(&api, "f", "s0", None).await;
    let config = |i: usize| {
        let s = &servers[i];
        async move {
            let v: Vec<String> = s.cmd(redis::cmd("CONFIG").arg("GET").arg("min-replicas-*")).await.ok()?;
            let m: std::collections::HashMap<_, _> =
                v.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
            Some((m.get("min-replicas-to-write")?.clone(), m.get("min-replicas-max-lag")?.clone()))
        }
    };
    for i in 0..2 {
        let want = Some(("1".to_owned(), "4".to_owned()));
        eventually(Duration::from_secs(10), "min-replicas-to-write capped at 1", || async {
            (config(i).await == want).then_some(())
        })
        .await;
    }
    let off = json!({"spec": {"failover": {"fencing": {"minReplicasToWrite": 0}}}});
    api.patch("f", &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    let started = Instant::now();
    for i in 0..2 {
        eventually(Duration::from_secs(10), "self-fencing switched off", || async {
            (config(i).await?.0 == "0").then_some(())
        })
        .await;
    }
    eprintln!("self-fencing switched off on both members {:?} after the spec change", started.elapsed());
    operator.stop().await;
}
