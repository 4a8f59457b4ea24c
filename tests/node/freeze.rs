//! A frozen primary pod (issue 14, item 10, for pod members). Its redis-server is stopped
//! (SIGSTOP) past the failure window; the operator cannot demote it, so it deletes the pod
//! with no grace period before promoting a replica (`fencing.deleteUnreachablePods`, on by
//! default), and the kubelet kills the stopped process. SIGCONT comes after the promotion, at
//! several delays. A client holding a connection to the old primary itself (not through the
//! Service: the worst case, a connection made before the freeze) must get no write
//! acknowledged that the new primary does not have, and no two members may answer as
//! primary at once.

use std::time::{Duration, Instant};

use kube::ResourceExt;
use understudy::localredis::redis_conn;

use crate::{
    client::{RoleSampler, Writer, missing},
    redis_pods::{Managed, PORT, managed_redis, wait_primary, wait_replicas_follow},
    support::{self, container_id, pod_ip, pods},
};

const TRIES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_pod_is_killed_before_a_replica_is_promoted_and_acknowledges_nothing_after() {
    let Some(node) = support::node() else { return };
    let _shared = support::SHARED_NODE.read().await;
    let Managed { client, ns, hacs, mut primary } = managed_redis(node, "frz").await;
    let sampler = RoleSampler::start(client.clone(), &ns.name, "app=cache", PORT);
    let mut after_thaw_lost = Vec::new();
    let (mut killed_before_thaw, mut acked_after_freeze, mut async_lost) = (0, 0, 0);
    let mut writable = Vec::new();
    // What the thawed old primaries answered to a write instead.
    let mut answers = std::collections::BTreeSet::new();
    for attempt in 0..TRIES {
        let pod =
            pods(&client, &ns.name, "app=cache").await.into_iter().find(|p| p.name_any() == primary).unwrap();
        let ip = pod_ip(&pod).unwrap();
        let pid = node.container_pid(&container_id(&pod).unwrap()).unwrap();
        let writer = Writer::start(&ip, PORT);
        writer.wait_more(100, Duration::from_secs(30)).await;
        let frozen = Instant::now();
        assert!(signal("STOP", pid), "could not stop {primary}'s redis-server (pid {pid})");
        let next = wait_primary(&hacs, "cache", Some(&primary)).await;
        let promoted = frozen.elapsed();
        // The thaw comes 0, 100, 200 or 300 ms after the new primary is recorded.
        tokio::time::sleep(Duration::from_millis(100 * (attempt as u64 % 4))).await;
        let alive = signal("CONT", pid);
        killed_before_thaw += usize::from(!alive);
        // Is the thawed process writable (a second member taking writes)? Asked at its own
        // address for a second, as a client still holding that address would: a SET of a key
        // the writer does not use.
        let thawed = Instant::now();
        let mut writable_for = None;
        while thawed.elapsed() < Duration::from_secs(1) {
            if let Ok(mut c) = redis_conn(&ip, PORT, None, 100).await {
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg("probe").arg(attempt).query_async(&mut c).await;
                match r {
                    Ok(()) => writable_for = Some(thawed.elapsed()),
                    Err(e) => {
                        answers.insert(e.code().unwrap_or("no answer").to_owned());
                    }
                }
            } else {
                answers.insert("no connection".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(w) = writable_for {
            writable.push((attempt, w));
        }
        // Anything acknowledged after the freeze was answered by the thawed old primary (with a
        // margin for the writer's own bookkeeping of an answer that came just before it).
        let late = writer.acked_since(frozen + Duration::from_millis(50));
        let acked = writer.stop().await;
        let next_ip = pods(&client, &ns.name, "app=cache")
            .await
            .into_iter()
            .find(|p| p.name_any() == next)
            .and_then(|p| pod_ip(&p))
            .unwrap();
        let lost_late = missing(&next_ip, PORT, &late).await;
        let lost_all = missing(&next_ip, PORT, &acked).await;
        acked_after_freeze += late.len();
        after_thaw_lost.extend(lost_late.iter().copied());
        async_lost += lost_all.len() - lost_late.len();
        eprintln!(
            "try {attempt}: {primary} frozen → {next} recorded after {promoted:?}; SIGCONT {} ms later: process {}, writable after the thaw: {:?}; acknowledged after the freeze {}, of them lost {}; acknowledged before it and lost (asynchronous replication) {}",
            100 * (attempt % 4),
            if alive { "still there (thawed)" } else { "already killed" },
            writable.last().filter(|w| w.0 == attempt).map(|w| w.1),
            late.len(),
            lost_late.len(),
            lost_all.len() - lost_late.len()
        );
        wait_replicas_follow(&client, &ns.name, "cache", &next).await;
        primary = next;
    }
    eprintln!(
        "frozen primary pods: {TRIES} tries; killed before the thaw in {killed_before_thaw}; {acked_after_freeze} writes acknowledged after a freeze, {} of them lost; {async_lost} acknowledged before a freeze and lost (asynchronous replication: counted in lostOffset, not fenced); most members answering as primary at once: {}; thawed old primaries that took a write: {writable:?} (their answers otherwise: {answers:?})",
        after_thaw_lost.len(),
        sampler.max()
    );
    assert!(
        after_thaw_lost.is_empty(),
        "writes acknowledged by a thawed old primary and lost: {after_thaw_lost:?}"
    );
    assert!(writable.is_empty(), "a thawed old primary took writes (try, time after the thaw): {writable:?}");
    assert!(sampler.rounds() > 50, "the role sampler ran {} rounds", sampler.rounds());
    assert_eq!(sampler.max(), 1, "two members answered as primary at once");
}

/// `kill -<sig> pid`; false if the process is gone.
fn signal(sig: &str, pid: u32) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
