//! The redis engine against real redis-servers: a replica's command stream starts at once.
//!
//! After a diskless full sync a Redis primary holds a replica's command stream back until the
//! replica's first acknowledgement; when that acknowledgement races the end of the sync, the
//! stream waits for the next one (replicas acknowledge once a second) while the primary already
//! counts the replica as good. `bench chaos` lost about 1,100 acknowledged writes twice in that
//! window. The engine asks a replica to acknowledge (`REPLCONF GETACK`) right after attaching it
//! and the monitor does it whenever a replica received nothing for a heartbeat while behind.

use std::time::{Duration, Instant};

use understudy::engines::{Credentials, Engine, redis::RedisEngine};

use crate::support::{RedisServer, eventually};

fn field(info: &std::collections::HashMap<String, String>, key: &str) -> Option<i64> {
    info.get(key).and_then(|v| v.parse().ok())
}

/// What the primary knows the replica `slave0` has acknowledged, and its own offset.
async fn acked_and_written(primary: &RedisServer) -> (i64, i64) {
    let info = primary.replication().await.expect("primary answers");
    let acked = info
        .get("slave0")
        .and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("offset=")).and_then(|v| v.parse().ok()))
        .unwrap_or(-1);
    (acked, field(&info, "master_repl_offset").unwrap_or(-1))
}

async fn pair() -> (RedisEngine, RedisServer, RedisServer) {
    let engine = RedisEngine::new(Credentials::default(), Duration::from_secs(2));
    let primary = RedisServer::start(None);
    let replica = RedisServer::start(None);
    engine.promote(&primary.endpoint()).await.expect("promote");
    engine.follow(&replica.endpoint(), &primary.endpoint()).await.expect("follow");
    eventually(Duration::from_secs(10), "the replica's link is up", || async {
        replica.replication().await.filter(|i| i.get("master_link_status").is_some_and(|s| s == "up"))
    })
    .await;
    (engine, primary, replica)
}

/// The call itself: a replica asked to acknowledge does so at once (without it, the primary
/// learns what the replica has only at its once-a-second acknowledgement). Five writes in a
/// row, each acknowledged within 100 ms of the request: by chance that is about 0.1⁵.
#[tokio::test]
async fn a_replica_asked_to_acknowledge_does_so_at_once() {
    let (engine, primary, replica) = pair().await;
    for i in 0..5 {
        let () = primary.cmd(redis::cmd("SET").arg("k").arg(i)).await.expect("write");
        // Wait out the acknowledgement of anything before this write's.
        let (_, written) = acked_and_written(&primary).await;
        engine.request_ack(&replica.endpoint()).await.expect("the replica takes the request");
        let asked = Instant::now();
        loop {
            let (acked, _) = acked_and_written(&primary).await;
            if acked >= written {
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_millis(100),
                "write {i}: the primary still knows the replica at {acked} of {written} 100 ms after the request"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Past the replica's own next acknowledgement would prove nothing: space them out.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // A primary ignores the request and still answers.
    engine.request_ack(&primary.endpoint()).await.expect("a primary takes the request too");
}

/// Attached ten times (each time restarted empty, so each attach is a full diskless sync)
/// while a client writes: the replica's offset moves within 300 ms of its link coming up,
/// every time.
#[tokio::test]
async fn a_newly_attached_replica_receives_the_stream_at_once() {
    let (engine, primary, mut replica) = pair().await;
    let writing = primary.sample_target();
    let writer = tokio::spawn(async move {
        let mut conn =
            understudy::localredis::redis_conn(&writing.0, writing.1, None, 1000).await.expect("connect");
        for i in 0u64.. {
            let _: redis::RedisResult<()> = redis::cmd("SET").arg("w").arg(i).query_async(&mut conn).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    for attach in 0..10 {
        replica.restart();
        engine.follow(&replica.endpoint(), &primary.endpoint()).await.expect("follow");
        let started = Instant::now();
        let (linked_at, base) = loop {
            if let Some(i) = replica.replication().await
                && i.get("master_link_status").is_some_and(|s| s == "up")
            {
                break (Instant::now(), field(&i, "slave_read_repl_offset"));
            }
            assert!(started.elapsed() < Duration::from_secs(10), "attach {attach}: the link never came up");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        loop {
            let now = replica.replication().await.and_then(|i| field(&i, "slave_read_repl_offset"));
            if now > base {
                break;
            }
            assert!(
                linked_at.elapsed() < Duration::from_millis(300),
                "attach {attach}: the replica received nothing for 300 ms after its link came up (offset {now:?}) while the primary took writes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    writer.abort();
}

/// A switchover's new primary takes writes at once although it fences itself: the drained old
/// primary, demoted as the candidate's replica, re-attaches the moment the candidate is
/// promoted. Demoted to nowhere (as a silent old primary is), it would wait for the redirect
/// after the promotion, and the new primary refused writes with NOREPLICAS meanwhile (the
/// 30–70 ms switchover pauses `bench discovery` measured in the node tier).
#[tokio::test]
async fn a_drained_old_primary_follows_the_new_one_from_its_promotion() {
    let (engine, old, new) = pair().await;
    for server in [&old, &new] {
        engine.set_self_fencing(&server.endpoint(), 1, 10).await.expect("self-fencing");
    }
    // The primary counts its replica as good from the replica's first acknowledgement, which
    // may come a moment after the link is up (replicas acknowledge once a second).
    eventually(Duration::from_secs(5), "the self-fencing primary takes a write", || async {
        old.cmd::<()>(redis::cmd("SET").arg("k").arg("before")).await.ok()
    })
    .await;
    // The switchover's own order: pause, drain (the candidate has everything), demote, promote.
    engine.pause_writes(&old.endpoint(), Duration::from_secs(5)).await.expect("pause");
    eventually(Duration::from_secs(5), "the candidate has everything", || async {
        let o = field(&old.replication().await?, "master_repl_offset")?;
        let n = field(&new.replication().await?, "master_repl_offset")?;
        (n >= o).then_some(())
    })
    .await;
    engine.demote_drained(&old.endpoint(), &new.endpoint()).await.expect("demote");
    engine.promote(&new.endpoint()).await.expect("promote");
    let promoted = Instant::now();
    loop {
        match new.cmd::<()>(redis::cmd("SET").arg("k").arg("after")).await {
            Ok(()) => break,
            Err(e) => assert!(
                promoted.elapsed() < Duration::from_millis(200),
                "the new primary still refuses writes 200 ms after its promotion: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let info = old.replication().await.expect("old answers");
    assert_eq!(info.get("role").map(String::as_str), Some("slave"));
    assert_eq!(info.get("master_port").and_then(|p| p.parse().ok()), Some(new.port));
    engine.resume_writes(&old.endpoint()).await.expect("unpause");
}
