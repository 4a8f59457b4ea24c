//! The mysql engine against real MariaDB servers, below the controllers: self-fencing (a
//! primary whose replica stopped acknowledging acknowledges no commit) and the fence of such a
//! primary: left alone while its commits wait for acknowledgements that do not come (cutting
//! them off could acknowledge them), cut off and read-only once they flow, while clients keep
//! coming.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use mysql_async::prelude::Queryable as _;
use understudy::{
    engines::{Credentials, Engine, ObservedRole, mysql::MysqlEngine},
    localmysql::{APP_PASSWORD, APP_USER, LocalMysql, OPERATOR_PASSWORD, OPERATOR_USER},
};

use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(30);

fn engine() -> MysqlEngine {
    let creds = Credentials { username: Some(OPERATOR_USER.into()), secret: Some(OPERATOR_PASSWORD.into()) };
    MysqlEngine::new(creds, Duration::from_secs(5))
}

/// Clients inserting in a loop at `server`, reconnecting after any failure; counts what was
/// acknowledged.
fn clients(
    server: &LocalMysql,
    n: usize,
    stop: Arc<AtomicUsize>,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks = (0..n)
        .map(|_| {
            let (ip, port, acked, stop) = (server.ip.clone(), server.port, acked.clone(), stop.clone());
            tokio::spawn(async move {
                while stop.load(SeqCst) == 0 {
                    let opts = mysql_async::OptsBuilder::default()
                        .ip_or_hostname(ip.clone())
                        .tcp_port(port)
                        .user(Some(APP_USER))
                        .pass(Some(APP_PASSWORD))
                        .db_name(Some("app"))
                        .prefer_socket(false);
                    let Ok(Ok(mut c)) =
                        tokio::time::timeout(Duration::from_secs(1), mysql_async::Conn::new(opts)).await
                    else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    while stop.load(SeqCst) == 0 {
                        match tokio::time::timeout(
                            Duration::from_secs(60),
                            c.query_drop("INSERT INTO t (v) VALUES (1)"),
                        )
                        .await
                        {
                            Ok(Ok(())) => {
                                acked.fetch_add(1, SeqCst);
                            }
                            _ => break,
                        }
                    }
                }
            })
        })
        .collect();
    (acked, tasks)
}

#[tokio::test]
async fn a_self_fencing_primary_without_acknowledgements_acknowledges_nothing_and_is_fenced() {
    let engine = engine();
    let (primary, replica) = (LocalMysql::start(), LocalMysql::start());
    engine.promote(&primary.endpoint()).await.expect("promote");
    engine.follow(&replica.endpoint(), &primary.endpoint()).await.expect("follow");
    engine.set_self_fencing(&primary.endpoint(), 1, 2).await.expect("self-fencing on the primary");
    engine.set_self_fencing(&replica.endpoint(), 1, 2).await.expect("self-fencing on the replica");
    let p = eventually(WAIT, "the primary to count its semi-sync replica", || async {
        engine.probe(&primary.endpoint()).await.ok().filter(|p| p.good_replicas == Some(1))
    })
    .await;
    assert_eq!(p.role, ObservedRole::Primary);
    assert!(p.self_fencing, "{p:?}");
    let r = engine.probe(&replica.endpoint()).await.unwrap();
    assert!(r.self_fencing && r.link_up, "{r:?}");
    primary
        .sql(&["CREATE DATABASE app", "CREATE TABLE app.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT)"])
        .unwrap();

    let stop = Arc::new(AtomicUsize::new(0));
    let (acked, tasks) = clients(&primary, 8, stop.clone());
    eventually(WAIT, "clients to write", || async { (acked.load(SeqCst) > 200).then_some(()) }).await;
    // The replica stops acknowledging (frozen): the primary's commits wait, none is
    // acknowledged.
    replica.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = acked.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(acked.load(SeqCst), before, "commits were acknowledged with no replica acknowledging");
    // Its commits wait for an acknowledgement that does not come: cutting them off (a kill,
    // semi-sync turned off) could acknowledge them, so the fence leaves them alone and says
    // why; nothing is acknowledged.
    let refused = engine.demote(&primary.endpoint()).await.expect_err("a stuck primary is not cut off");
    assert!(refused.to_string().contains("acknowledges nothing"), "{refused}");
    let refused = engine.follow(&primary.endpoint(), &replica.endpoint()).await.expect_err("nor re-pointed");
    assert!(refused.to_string().contains("acknowledges nothing"), "{refused}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(acked.load(SeqCst), before, "a waiting commit was acknowledged");
    // The replica thaws and acknowledges: the waits end by themselves, and now the fence
    // cuts the clients off and makes it read-only while they keep coming.
    replica.signal(libc::SIGCONT);
    eventually(WAIT, "acknowledgements to resume", || async { (acked.load(SeqCst) > before).then_some(()) })
        .await;
    let fenced = tokio::time::timeout(Duration::from_secs(20), engine.demote(&primary.endpoint())).await;
    let list = primary
        .sql(&["SELECT ID, USER, COMMAND, STATE, TIME FROM information_schema.PROCESSLIST"])
        .unwrap_or_default();
    assert!(matches!(fenced, Ok(Ok(()))), "demote: {fenced:?}\n{list}");
    assert_eq!(primary.sql(&["SELECT @@global.read_only"]).unwrap().trim(), "1");
    let after_fence = acked.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(acked.load(SeqCst), after_fence, "a write was acknowledged after the fence");
    // Everything acknowledged is on the replica.
    let on_primary = primary.sql(&["SELECT COUNT(*) FROM app.t"]).unwrap().trim().parse::<usize>().unwrap();
    eventually(WAIT, "the replica to have every row", || async {
        let n = replica.sql(&["SELECT COUNT(*) FROM app.t"]).ok()?.trim().parse::<usize>().ok()?;
        (n == on_primary && n >= after_fence).then_some(())
    })
    .await;
    stop.store(1, SeqCst);
    for t in tasks {
        t.abort();
    }
}
