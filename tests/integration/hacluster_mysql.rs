//! HaCluster with real MariaDB servers (engine Mysql): bootstrap, a planned switchover under a
//! writing client with every acknowledged row checked, the fenced old primary refusing a
//! client still connected to it, an unplanned failover (SIGKILL) and the old primary's return
//! as a replica, and credentials the servers refuse.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use mysql_async::prelude::Queryable as _;
use serde_json::json;
use understudy::{
    localmysql::{APP_PASSWORD, APP_USER, LocalMysql, OPERATOR_PASSWORD, OPERATOR_USER},
    resources::{
        HaCluster, ShardFailover,
        hacluster::{ClusterPhase, Role},
        shard_failover::ShardFailoverPhase,
    },
};

use crate::{
    hacluster_redis::{get, route_ip, wait_primary},
    support::{self, Operator, eventually},
};

const WAIT: Duration = Duration::from_secs(60);
const NAMES: [&str; 3] = ["a", "b", "c"];

fn cluster(name: &str, members: &[(&str, &LocalMysql)], failover: serde_json::Value) -> HaCluster {
    let members: Vec<_> = members
        .iter()
        .map(|(n, s)| json!({"name": n, "endpoint": s.endpoint(), "clientAddress": route_ip(s.port)}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": name},
        "spec": {"engine": "Mysql", "secretRef": {"name": "db-creds"},
                 "shards": [{"name": "main", "members": members}], "failover": failover}
    }))
    .unwrap()
}

async fn secret(client: &Client, ns: &str, password: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-creds"},
        "stringData": {"username": OPERATOR_USER, "password": password}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
}

/// A session as the application's account, in database `app`.
async fn app_conn(server: &LocalMysql) -> mysql_async::Result<mysql_async::Conn> {
    conn_as(server, (APP_USER, APP_PASSWORD), Some("app")).await
}

/// A session as the operator's account (as an application that wrongly uses it would open).
async fn operator_conn(server: &LocalMysql) -> mysql_async::Result<mysql_async::Conn> {
    conn_as(server, (OPERATOR_USER, OPERATOR_PASSWORD), None).await
}

async fn conn_as(
    server: &LocalMysql,
    (user, password): (&str, &str),
    db: Option<&str>,
) -> mysql_async::Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(server.ip.clone())
        .tcp_port(server.port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await
}

/// Wait until `replica` replicates from `primary` with both threads running.
async fn wait_follows(replica: &LocalMysql, primary: &LocalMysql) {
    eventually(WAIT, &format!("{} to replicate from {}", replica.port, primary.port), || async {
        let rows = replica.rows("SHOW SLAVE STATUS").ok()?;
        let st = rows.first()?;
        let field = |k: &str| st.get(k).map(String::as_str).unwrap_or_default();
        (field("Master_Port") == primary.port.to_string()
            && field("Slave_IO_Running") == "Yes"
            && field("Slave_SQL_Running") == "Yes")
            .then_some(())
    })
    .await;
}

/// HaCluster `db` over `servers` (members a, b, c in order) with `failover`, and its operator.
async fn run_cluster(
    client: &Client,
    ns: &str,
    servers: &[LocalMysql],
    failover: serde_json::Value,
) -> (Api<HaCluster>, Operator) {
    let api: Api<HaCluster> = Api::namespaced(client.clone(), ns);
    let members: Vec<(&str, &LocalMysql)> = NAMES.iter().copied().zip(servers.iter()).collect();
    api.create(&PostParams::default(), &cluster("db", &members, failover)).await.unwrap();
    (api, Operator::start(client.clone(), ns))
}

/// The elected primary's name and index, once every other member replicates from it.
async fn bootstrapped(api: &Api<HaCluster>, servers: &[LocalMysql]) -> (String, usize) {
    let first = wait_primary(api, "db", "main", None).await;
    let pi = NAMES.iter().position(|n| *n == first).unwrap();
    for (i, s) in servers.iter().enumerate() {
        if i != pi {
            wait_follows(s, &servers[pi]).await;
        }
    }
    (first, pi)
}

/// Database `app` and its table `t` (`seq` unique) on `primary`.
fn create_table(primary: &LocalMysql) {
    primary
        .sql(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT UNIQUE)",
        ])
        .unwrap();
}

fn read_only(server: &LocalMysql) -> Option<bool> {
    server.sql(&["SELECT @@global.read_only"]).ok().map(|o| o.trim() == "1")
}

/// The sequence numbers in `app.t` on `server`.
fn rows(server: &LocalMysql) -> BTreeSet<u64> {
    server.sql(&["SELECT seq FROM app.t"]).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A client inserting one row per millisecond into `app.t` at whichever server `target`
/// names, reconnecting when it changes or a write fails. Only a write whose INSERT returned
/// OK counts as acknowledged (with when it was sent and when it was answered).
struct Writer {
    acked: Arc<Mutex<Vec<(u64, Instant, Instant)>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Sequence numbers start after `base` (two writers on one table use different ranges).
    fn start(target: tokio::sync::watch::Receiver<(String, u16)>, base: u64) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let a = acked.clone();
        let task = tokio::spawn(async move {
            let mut conn: Option<(mysql_async::Conn, (String, u16))> = None;
            let mut seq = base;
            while !*stopped.borrow() {
                let want = target.borrow().clone();
                if conn.as_ref().is_none_or(|(_, at)| *at != want) {
                    let opts = mysql_async::OptsBuilder::default()
                        .ip_or_hostname(want.0.clone())
                        .tcp_port(want.1)
                        .user(Some(APP_USER))
                        .pass(Some(APP_PASSWORD))
                        .db_name(Some("app"))
                        .prefer_socket(false);
                    conn =
                        match tokio::time::timeout(Duration::from_millis(500), mysql_async::Conn::new(opts))
                            .await
                        {
                            Ok(Ok(c)) => Some((c, want)),
                            _ => {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                continue;
                            }
                        };
                }
                seq += 1;
                let (c, _) = conn.as_mut().unwrap();
                let sent = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_millis(2000),
                    c.exec_drop("INSERT INTO t (seq) VALUES (?)", (seq,)),
                )
                .await;
                match r {
                    Ok(Ok(())) => a.lock().unwrap().push((seq, sent, Instant::now())),
                    _ => conn = None,
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Self { acked, stop, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_more(&self, n: usize) {
        let start = self.count();
        eventually(WAIT, "the writer to write", || async { (self.count() >= start + n).then_some(()) }).await;
    }

    /// The longest time between two acknowledgements within [from, to].
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let times: Vec<Instant> =
            acked.iter().map(|(_, _, t)| *t).filter(|t| *t >= from && *t <= to).collect();
        times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    async fn stop(self) -> BTreeSet<u64> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.acked.lock().unwrap().iter().map(|(s, _, _)| *s).collect()
    }
}

/// Follows status: the writer's target is the member status names primary.
fn follow_primary(
    api: Api<HaCluster>,
    name: &'static str,
    endpoints: Vec<(String, (String, u16))>,
    first: &str,
) -> (tokio::sync::watch::Receiver<(String, u16)>, tokio::task::JoinHandle<()>) {
    let at = |n: &str| endpoints.iter().find(|(m, _)| m == n).map(|(_, e)| e.clone()).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(at(first));
    let task = tokio::spawn(async move {
        loop {
            if let Ok(c) = api.get(name).await
                && let Some(p) = c.status.and_then(|s| s.primary)
                && let Some((_, e)) = endpoints.iter().find(|(m, _)| *m == p)
            {
                tx.send_if_modified(|cur| {
                    let changed = cur != e;
                    *cur = e.clone();
                    changed
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (rx, task)
}

#[tokio::test]
async fn mysql_bootstrap_switchover_failover_and_return_of_the_old_primary() {
    let client = support::client().await;
    let ns = support::namespace(&client, "mysql").await;
    secret(&client, &ns, OPERATOR_PASSWORD).await;
    let mut servers = [LocalMysql::start(), LocalMysql::start(), LocalMysql::start()];
    let names = ["a", "b", "c"];
    for s in &servers {
        assert_eq!(read_only(s), Some(true), "members start read-only");
    }
    // Asynchronous replication: a failover may promote a replica a few transactions behind
    // (the loss is recorded); a switchover waits for everything.
    let policy = json!({"heartbeatInterval": "200ms", "failureThreshold": 3, "maxLagOnFailover": 100000});
    let (api, operator) = run_cluster(&client, &ns, &servers, policy).await;

    // Bootstrap: one writable primary, two read-only replicas replicating from it.
    let first = wait_primary(&api, "db", "main", None).await;
    let pi = names.iter().position(|n| *n == first).unwrap();
    assert_eq!(read_only(&servers[pi]), Some(false), "the primary is writable");
    for (i, s) in servers.iter().enumerate() {
        if i != pi {
            wait_follows(s, &servers[pi]).await;
            assert_eq!(read_only(s), Some(true), "a replica is read-only");
        }
    }
    let st = get(&api, "db").await.status.unwrap();
    assert_eq!(st.shards[0].epoch, 1);
    create_table(&servers[pi]);
    // The application's account cannot write to a replica.
    let other = (0..3).find(|i| *i != pi).unwrap();
    eventually(WAIT, "the table replicated", || async {
        servers[other].sql(&["SELECT 1 FROM app.t LIMIT 1"]).ok()
    })
    .await;
    let mut direct = app_conn(&servers[other]).await.unwrap();
    let refused = direct.query_drop("INSERT INTO t (seq) VALUES (0)").await.unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    drop(direct);

    let endpoints: Vec<(String, (String, u16))> =
        names.iter().zip(servers.iter()).map(|(n, s)| ((*n).to_owned(), (s.ip.clone(), s.port))).collect();
    let (target, follower) = follow_primary(api.clone(), "db", endpoints, &first);
    let writer = Writer::start(target, 0);
    writer.wait_more(300).await;

    // 1. A planned switchover (ShardFailover) under the writing client: zero loss, and a
    // session still open on the old primary cannot write after it.
    let mut stale = app_conn(&servers[pi]).await.unwrap();
    stale.query_drop("INSERT INTO t (seq) VALUES (1000000000)").await.unwrap();
    // A session of the operator's own account that is not the operator's (an application
    // that wrongly uses it; read_only does not stop it) is cut off by the fence too.
    let mut misused = operator_conn(&servers[pi]).await.unwrap();
    misused.query_drop("SELECT 1").await.unwrap();
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    let sfo: ShardFailover = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
        "metadata": {"name": "planned"}, "spec": {"shardUids": [first]}
    }))
    .unwrap();
    let submitted = Instant::now();
    sfos.create(&PostParams::default(), &sfo).await.unwrap();
    let done = eventually(WAIT, "the switchover to finish", || async {
        let s = sfos.get("planned").await.ok()?;
        let st = s.status?;
        matches!(st.phase, Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed)).then_some(st)
    })
    .await;
    assert_eq!(done.phase, Some(ShardFailoverPhase::Succeeded), "{done:?}");
    let second = wait_primary(&api, "db", "main", Some(&first)).await;
    let switched = submitted.elapsed();
    writer.wait_more(300).await;
    let pause = writer.longest_gap(submitted, Instant::now());
    let si = names.iter().position(|n| *n == second).unwrap();
    assert_eq!(read_only(&servers[si]), Some(false));
    assert_eq!(read_only(&servers[pi]), Some(true), "the old primary is fenced");
    wait_follows(&servers[pi], &servers[si]).await;
    let after = stale.query_drop("INSERT INTO t (seq) VALUES (1000000001)").await;
    assert!(after.is_err(), "a session on the old primary wrote after the switchover");
    assert!(
        misused.query_drop("SELECT 1").await.is_err(),
        "the operator account's foreign session was not killed"
    );
    let acked_by_then: BTreeSet<u64> = writer.acked.lock().unwrap().iter().map(|(s, _, _)| *s).collect();
    let on_new = rows(&servers[si]);
    let lost: Vec<_> = acked_by_then.difference(&on_new).collect();
    assert!(lost.is_empty(), "acknowledged rows missing on the new primary after a switchover: {lost:?}");
    assert!(on_new.contains(&1_000_000_000), "the stale session's acknowledged row is on the new primary");
    eprintln!(
        "mysql switchover {first} → {second}: Succeeded {:.0} ms after submission; longest write gap {:.1} ms; {} acknowledged rows, 0 lost",
        switched.as_secs_f64() * 1000.0,
        pause.as_secs_f64() * 1000.0,
        acked_by_then.len()
    );

    // 2. An unplanned failover: the primary's mariadbd is SIGKILLed.
    for (i, s) in servers.iter().enumerate() {
        if i != si {
            wait_follows(s, &servers[si]).await;
        }
    }
    writer.wait_more(200).await;
    let killed = Instant::now();
    servers[si].kill();
    let third = wait_primary(&api, "db", "main", Some(&second)).await;
    let detected = killed.elapsed();
    writer.wait_more(200).await;
    let gap = writer.longest_gap(killed - Duration::from_millis(50), Instant::now());
    let ti = names.iter().position(|n| *n == third).unwrap();
    let lf = get(&api, "db").await.status.unwrap().last_failover.expect("lastFailover");
    assert_eq!((lf.from.as_deref(), lf.to.as_deref()), (Some(second.as_str()), Some(third.as_str())));
    let remaining = (0..3).find(|i| *i != si && *i != ti).unwrap();
    wait_follows(&servers[remaining], &servers[ti]).await;

    // The old primary restarts with its data, read-only, and is attached as a replica.
    servers[si].restart();
    assert_eq!(read_only(&servers[si]), Some(true));
    wait_follows(&servers[si], &servers[ti]).await;
    eventually(WAIT, "the old primary listed as a healthy replica", || async {
        let st = api.get("db").await.ok()?.status?;
        let m = st.shards[0].members.iter().find(|m| m.name == second)?;
        (m.healthy && m.role == Role::Replica && st.phase == Some(ClusterPhase::Healthy)).then_some(())
    })
    .await;
    let acked = writer.stop().await;
    follower.abort();
    let on_final = rows(&servers[ti]);
    let lost: Vec<_> = acked.difference(&on_final).copied().collect();
    let lf = get(&api, "db").await.status.unwrap().last_failover.expect("lastFailover");
    eprintln!(
        "mysql failover {second} → {third}: status {:.0} ms after SIGKILL (heartbeat 200 ms × 3), longest client gap {:.0} ms; {} acknowledged rows, {} lost ({lost:?}), lostOffset {:?}",
        detected.as_secs_f64() * 1000.0,
        gap.as_secs_f64() * 1000.0,
        acked.len(),
        lost.len(),
        lf.lost_offset
    );
    // Asynchronous replication may lose the rows in flight at the kill; they are counted.
    assert!(
        lost.len() as i64 <= lf.lost_offset.unwrap_or(0),
        "{} acknowledged rows lost but lostOffset says {:?}",
        lost.len(),
        lf.lost_offset
    );
    operator.stop().await;
}

#[tokio::test]
async fn mysql_refused_credentials_are_a_condition_and_nothing_is_touched() {
    let client = support::client().await;
    let ns = support::namespace(&client, "mysql-401").await;
    secret(&client, &ns, "not-the-password").await;
    let servers = [LocalMysql::start(), LocalMysql::start()];
    let (api, operator) = run_cluster(&client, &ns, &servers, json!({"heartbeatInterval": "200ms"})).await;
    let msg = eventually(WAIT, "Unauthorized condition", || async {
        let st = api.get("db").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "Unauthorized" && ready.status == "False").then(|| ready.message.clone())
    })
    .await;
    assert!(msg.contains("Access denied"), "{msg}");
    for s in &servers {
        assert_eq!(read_only(s), Some(true), "nothing promoted");
        assert_eq!(s.sql(&["SHOW SLAVE STATUS"]).unwrap().trim(), "", "nothing pointed anywhere");
    }
    assert_eq!(get(&api, "db").await.status.unwrap().shards[0].epoch, 0);
    // Fixed in the Secret: the cluster comes up.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "db-creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": OPERATOR_PASSWORD}})),
        )
        .await
        .unwrap();
    let p = wait_primary(&api, "db", "main", None).await;
    let (pi, ri) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;
    operator.stop().await;
}

/// Self-fencing (semi-synchronous replication that never falls back, on by default): a
/// frozen primary is failed over without being reachable, every row any client had
/// acknowledged is on the new primary, and the thawed old primary acknowledges nothing sent
/// after the freeze — a client still connected to it waits, then is cut off when the operator
/// fences it. The one write in flight at the freeze may be answered at the thaw, when a
/// replica had acknowledged it before: then it is on the new primary like every other.
#[tokio::test]
async fn mysql_frozen_primary_is_failed_over_and_acknowledges_nothing_after_it_thaws() {
    let client = support::client().await;
    let ns = support::namespace(&client, "mysql-frz").await;
    secret(&client, &ns, OPERATOR_PASSWORD).await;
    let mut servers = [LocalMysql::start(), LocalMysql::start(), LocalMysql::start()];
    let names = ["a", "b", "c"];
    let policy = json!({"heartbeatInterval": "200ms", "failureThreshold": 3});
    let (api, operator) = run_cluster(&client, &ns, &servers, policy).await;
    let (first, pi) = bootstrapped(&api, &servers).await;
    // Semi-sync on the primary, acknowledging replicas connected to it.
    eventually(WAIT, "the primary's commits to wait for a replica", || async {
        let v = servers[pi]
            .sql(&["SELECT @@global.rpl_semi_sync_master_enabled, @@global.rpl_semi_sync_master_timeout"])
            .ok()?;
        let clients = servers[pi].rows("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'").ok()?;
        let n: i64 = clients.first()?.get("Value")?.parse().ok()?;
        (v.split_whitespace().next() == Some("1") && n >= 1).then_some(())
    })
    .await;
    create_table(&servers[pi]);
    let endpoints: Vec<(String, (String, u16))> =
        names.iter().zip(servers.iter()).map(|(n, s)| ((*n).to_owned(), (s.ip.clone(), s.port))).collect();
    let (target, follower) = follow_primary(api.clone(), "db", endpoints, &first);
    let routed = Writer::start(target, 0);
    // A client that never follows routing: it keeps writing to the old primary.
    let (_fixed_tx, fixed) = tokio::sync::watch::channel((servers[pi].ip.clone(), servers[pi].port));
    let stale = Writer::start(fixed, 1_000_000_000_000);
    routed.wait_more(200).await;
    stale.wait_more(200).await;

    let frozen = Instant::now();
    servers[pi].signal(libc::SIGSTOP);
    let second = wait_primary(&api, "db", "main", Some(&first)).await;
    let promoted = frozen.elapsed();
    servers[pi].signal(libc::SIGCONT);
    // The thawed old primary's commits wait for an acknowledgement no replica gives (they
    // all follow the new primary): it acknowledges nothing, and the operator does not cut
    // them off (that could acknowledge them).
    tokio::time::sleep(Duration::from_secs(1)).await;
    routed.wait_more(200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Answered after the freeze: only a write already sent before it (the one in flight,
    // whose commit a replica had acknowledged before the freeze; that acknowledgement waited in
    // the frozen server's socket). Nothing sent after the freeze is acknowledged.
    let (answered_after, sent_after): (Vec<_>, Vec<_>) = {
        let acked = stale.acked.lock().unwrap();
        let after = |t: &Instant| *t > frozen + Duration::from_millis(5);
        (
            acked.iter().filter(|(_, _, t)| after(t)).map(|(s, _, _)| *s).collect(),
            acked.iter().filter(|(_, sent, _)| after(sent)).map(|(s, _, _)| *s).collect(),
        )
    };
    let acked: BTreeSet<u64> = routed.stop().await;
    let stale_acked: BTreeSet<u64> = stale.stop().await;
    follower.abort();
    let si = names.iter().position(|n| *n == second).unwrap();
    let on_new = rows(&servers[si]);
    let lost_routed: Vec<_> = acked.difference(&on_new).collect();
    // Semi-sync: what the old primary acknowledged before the freeze is on a replica, and the
    // most advanced replica was promoted.
    let lost_stale: Vec<_> = stale_acked.difference(&on_new).collect();
    let lf = get(&api, "db").await.status.unwrap().last_failover.expect("lastFailover");
    let fence_step =
        lf.steps.iter().find(|s| s.name == "fence").and_then(|s| s.message.clone()).unwrap_or_default();
    eprintln!(
        "mysql frozen primary {first} → {second}: status after {:.0} ms; fence step: {fence_step:?}; routed client {} acknowledged, {} missing; stale client {} acknowledged, {} missing, {} answered after the freeze (all sent before it), {} sent after it",
        promoted.as_secs_f64() * 1000.0,
        acked.len(),
        lost_routed.len(),
        stale_acked.len(),
        lost_stale.len(),
        answered_after.len(),
        sent_after.len(),
    );
    assert!(fence_step.contains("refuses writes by itself"), "{fence_step}");
    assert!(
        sent_after.is_empty(),
        "the old primary acknowledged writes sent after it was frozen: {sent_after:?}"
    );
    assert!(
        answered_after.len() <= 1,
        "more than the write in flight answered after the freeze: {answered_after:?}"
    );
    assert!(lost_routed.is_empty(), "acknowledged rows lost: {lost_routed:?}");
    assert!(
        lost_stale.is_empty(),
        "rows the old primary acknowledged are not on the new one: {lost_stale:?}"
    );
    // Its status says why it is not demoted.
    let said = eventually(WAIT, "the stuck old primary's status message", || async {
        let st = api.get("db").await.ok()?.status?;
        let m = st.shards[0].members.iter().find(|m| m.name == first)?;
        m.message.clone().filter(|msg| msg.contains("acknowledges nothing"))
    })
    .await;
    eprintln!("status of the thawed old primary {first}: {said}");
    // Stopped for real (as its error says) and started again: read-only, and — its
    // unacknowledged commits rolled back at recovery (started as a semi-sync replica) — attached
    // to the new primary as a replica.
    servers[pi].restart();
    assert_eq!(read_only(&servers[pi]), Some(true));
    wait_follows(&servers[pi], &servers[si]).await;
    let st = get(&api, "db").await.status.unwrap();
    assert_eq!(st.primary.as_deref(), Some(second.as_str()));
    operator.stop().await;
}

/// A member with a transaction the primary never had (errant: written on a replica) is not
/// attached: it stays read-only, out of replication, and its status names the transaction.
#[tokio::test]
async fn mysql_errant_transactions_keep_a_member_out_with_the_gtids_in_its_status() {
    let client = support::client().await;
    let ns = support::namespace(&client, "mysql-errant").await;
    secret(&client, &ns, OPERATOR_PASSWORD).await;
    let servers = [LocalMysql::start(), LocalMysql::start()];
    let names = ["a", "b"];
    let policy =
        json!({"heartbeatInterval": "200ms", "failureThreshold": 3, "fencing": {"minReplicasToWrite": 0}});
    let (api, operator) = run_cluster(&client, &ns, &servers, policy).await;
    let (_, pi) = bootstrapped(&api, &servers).await;
    let ri = 1 - pi;
    create_table(&servers[pi]);
    eventually(WAIT, "the table replicated", || async {
        servers[ri].sql(&["SELECT 1 FROM app.t LIMIT 1"]).ok()
    })
    .await;
    // Someone writes on the replica behind the operator's back, then the primary writes on.
    servers[ri]
        .sql(&[
            "STOP SLAVE",
            "SET GLOBAL read_only = OFF",
            "INSERT INTO app.t (seq) VALUES (-1)",
            "SET GLOBAL read_only = ON",
            "START SLAVE",
        ])
        .unwrap();
    let errant = servers[ri].sql(&["SELECT @@global.gtid_binlog_pos"]).unwrap().trim().to_owned();
    servers[pi].sql(&["INSERT INTO app.t (seq) VALUES (1)"]).unwrap();
    let name = names[ri];
    let said = eventually(WAIT, "the errant member's status", || async {
        let st = api.get("db").await.ok()?.status?;
        let m = st.shards[0].members.iter().find(|m| m.name == name)?;
        m.message.clone().filter(|msg| msg.contains("never had") && msg.contains(&errant))
    })
    .await;
    eprintln!("errant member {name}: {said}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(read_only(&servers[ri]), Some(true), "left read-only");
    let st = servers[ri].rows("SHOW SLAVE STATUS").unwrap();
    let running = st.first().is_some_and(|r| r.get("Slave_SQL_Running").map(String::as_str) == Some("Yes"));
    assert!(!running, "not replicating: {st:?}");
    let m = get(&api, "db").await.status.unwrap().shards[0]
        .members
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .unwrap();
    assert!(!m.healthy, "{m:?}");
    // The cluster says so too, with the GTIDs.
    let degraded = eventually(WAIT, "Degraded=True ErrantTransactions", || async {
        let c = api.get("db").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Degraded")?;
        (c.status == "True" && c.reason == "ErrantTransactions").then_some(c.message)
    })
    .await;
    eprintln!("Degraded: {degraded}");
    assert!(degraded.contains(name) && degraded.contains(&errant), "{degraded}");
    operator.stop().await;
}

/// A FailoverRequest (the seed's task DAG) switches a MariaDB cluster over: Succeeded, the
/// roles swapped on the servers, every row on the new primary.
#[tokio::test]
async fn mysql_failover_request_switches_over() {
    use understudy::resources::{FailoverRequest, failover_request::RequestPhase};
    let client = support::client().await;
    let ns = support::namespace(&client, "mysql-fr").await;
    secret(&client, &ns, OPERATOR_PASSWORD).await;
    let servers = [LocalMysql::start(), LocalMysql::start()];
    let names = ["a", "b"];
    let (api, operator) = run_cluster(&client, &ns, &servers, json!({"heartbeatInterval": "200ms"})).await;
    let (first, pi) = bootstrapped(&api, &servers).await;
    let ri = 1 - pi;
    create_table(&servers[pi]);
    servers[pi].sql(&["INSERT INTO app.t (seq) VALUES (1), (2), (3)"]).unwrap();
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    let fr: FailoverRequest = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "FailoverRequest", "metadata": {"name": "move"},
        "spec": {"type": "Switchover", "items": [{"cluster": "db", "expectedPrimary": first}]}
    }))
    .unwrap();
    frs.create(&PostParams::default(), &fr).await.unwrap();
    let st = eventually(WAIT, "the FailoverRequest to end", || async {
        let st = frs.get("move").await.ok()?.status?;
        matches!(st.phase, Some(RequestPhase::Succeeded | RequestPhase::Failed | RequestPhase::RolledBack))
            .then_some(st)
    })
    .await;
    assert_eq!(st.phase, Some(RequestPhase::Succeeded), "{st:?}");
    let second = wait_primary(&api, "db", "main", Some(&first)).await;
    assert_eq!(second, names[ri]);
    assert_eq!(read_only(&servers[ri]), Some(false));
    assert_eq!(read_only(&servers[pi]), Some(true));
    wait_follows(&servers[pi], &servers[ri]).await;
    assert_eq!(rows(&servers[ri]), BTreeSet::from([1, 2, 3]));
    operator.stop().await;
}

/// Two sites of MariaDB clusters in two namespaces — `db` (members a, b on servers 0, 1) and
/// `db-dr` (c, d on 2, 3) — a ProtectionGroup `pg` pairing them, at the DR site's namespace
/// when `group_at_dr` (what survives the loss of production), and the operator of both.
struct MysqlPair {
    src: Api<HaCluster>,
    dr: Api<HaCluster>,
    pgs: Api<understudy::resources::ProtectionGroup>,
    servers: [LocalMysql; 4],
    operator: Operator,
}

async fn mysql_pair(prefix: &str, group_at_dr: bool) -> MysqlPair {
    use crate::protection_group::pg;
    let client = support::client().await;
    let src_ns = support::namespace(&client, &format!("{prefix}-src")).await;
    let dr_ns = support::namespace(&client, &format!("{prefix}-dr")).await;
    secret(&client, &src_ns, OPERATOR_PASSWORD).await;
    secret(&client, &dr_ns, OPERATOR_PASSWORD).await;
    let servers = [LocalMysql::start(), LocalMysql::start(), LocalMysql::start(), LocalMysql::start()];
    // Detection is not what these tests are about: a 600 ms window failed over a live DR
    // primary under load (4 busy loops beside 9 tests, each sampling its servers with client
    // processes every 20 ms): nothing was lost (it self-fences), but it stays read_only=OFF
    // until it answers again, which the tests would count as a second writable server.
    let policy = json!({"heartbeatInterval": "200ms", "failureThreshold": 10});
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    let pp = PostParams::default();
    src.create(&pp, &cluster("db", &[("a", &servers[0]), ("b", &servers[1])], policy.clone())).await.unwrap();
    dr.create(&pp, &cluster("db-dr", &[("c", &servers[2]), ("d", &servers[3])], policy)).await.unwrap();
    let pgs = Api::namespaced(client.clone(), if group_at_dr { &dr_ns } else { &src_ns });
    pgs.create(&pp, &pg("pg", &src_ns, &dr_ns, &["db"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    crate::protection_group::wait_protected(
        &pgs,
        "pg",
        understudy::resources::protection_group::SiteRole::Source,
    )
    .await;
    MysqlPair { src, dr, pgs, servers, operator }
}

/// A ProtectionGroup moves production between two sites of MariaDB clusters and back, under
/// a client inserting rows at whichever site is production: every acknowledged row on the
/// new production primary, the old production leader replicating from it, one writable
/// server of four at every check.
#[tokio::test]
async fn mysql_protection_group_moves_production_and_back_losing_no_row() {
    use understudy::resources::protection_group::SiteRole;

    use crate::protection_group::{set_priority, wait_protected};
    let MysqlPair { src, dr, pgs, servers, operator } = mysql_pair("mysql-pg", false).await;
    let writable = || -> Vec<usize> { (0..4).filter(|&i| read_only(&servers[i]) == Some(false)).collect() };
    let production = writable();
    assert_eq!(production.len(), 1, "one writable server: {production:?}");
    assert!(production[0] < 2, "production is the source site");
    create_table(&servers[production[0]]);
    // The DR site's leader replicates from the production primary, its replica from it.
    eventually(WAIT, "the table at the DR site", || async {
        (servers[2..].iter().all(|s| s.sql(&["SELECT 1 FROM app.t LIMIT 1"]).is_ok())).then_some(())
    })
    .await;

    // The client writes wherever production is: the site's primary named in status.
    let (tx, rx) =
        tokio::sync::watch::channel((servers[production[0]].ip.clone(), servers[production[0]].port));
    let endpoints: Vec<(String, (String, u16))> = [("a", 0), ("b", 1), ("c", 2), ("d", 3)]
        .iter()
        .map(|(n, i)| ((*n).to_owned(), (servers[*i].ip.clone(), servers[*i].port)))
        .collect();
    let follow = tokio::spawn({
        let (src, dr) = (src.clone(), dr.clone());
        async move {
            loop {
                for (api, name) in [(&src, "db"), (&dr, "db-dr")] {
                    if let Ok(c) = api.get(name).await
                        && c.standby().is_none()
                        && let Some(p) = c.status.and_then(|s| s.primary)
                        && let Some((_, e)) = endpoints.iter().find(|(m, _)| *m == p)
                    {
                        tx.send_if_modified(|cur| std::mem::replace(cur, e.clone()) != *e);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let writer = Writer::start(rx, 0);
    writer.wait_more(300).await;

    for (site, range) in [(SiteRole::Target, 2..4), (SiteRole::Source, 0..2)] {
        let t = Instant::now();
        set_priority(&pgs, "pg", if site == SiteRole::Target { "Target" } else { "Source" }).await;
        let g = wait_protected(&pgs, "pg", site).await;
        let moved = t.elapsed();
        writer.wait_more(300).await;
        let pause = writer.longest_gap(t, Instant::now());
        let now = writable();
        assert_eq!(now.len(), 1, "one writable server after the move: {now:?}");
        assert!(range.contains(&now[0]), "production moved to {site:?}: {now:?}");
        // The old production leader replicates from the new one.
        let old: Vec<usize> = (0..4).filter(|i| !range.contains(i)).collect();
        wait_any_follows(&servers, &old, &servers[now[0]]).await;
        eprintln!(
            "site move to {site:?}: protected again after {moved:?}, write pause {:?} ms (status), longest client pause {pause:?}",
            g.status.and_then(|s| s.last_write_pause_ms)
        );
    }
    let acked = writer.stop().await;
    follow.abort();
    let primary = &servers[writable()[0]];
    let present = rows(primary);
    let lost: Vec<&u64> = acked.difference(&present).collect();
    eprintln!("rows: {} acknowledged, {} lost", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged rows missing: {:?}", &lost[..lost.len().min(20)]);
    operator.stop().await;
}

/// Wait until one of `which` replicates from `primary` with both threads running.
async fn wait_any_follows(servers: &[LocalMysql], which: &[usize], primary: &LocalMysql) {
    eventually(WAIT, "the old production leader to replicate from the new one", || async {
        which
            .iter()
            .any(|&i| {
                servers[i].rows("SHOW SLAVE STATUS").ok().and_then(|r| r.first().cloned()).is_some_and(|st| {
                    let field = |k: &str| st.get(k).cloned().unwrap_or_default();
                    field("Master_Port") == primary.port.to_string()
                        && field("Slave_IO_Running") == "Yes"
                        && field("Slave_SQL_Running") == "Yes"
                })
            })
            .then_some(())
    })
    .await
}

/// TLS: members that refuse clients without it (`require_secure_transport`, replicas
/// included), the CA in the Secret's `ca.crt`. With a CA that did not sign the servers'
/// certificates nothing is touched and the members' status says TLS; with the right one the
/// operator elects, attaches the replica over TLS, and switches over.
#[tokio::test]
async fn mysql_over_tls_trusts_the_ca_of_the_secret() {
    use understudy::localmysql::TestTls;
    let client = support::client().await;
    let ns = support::namespace(&client, "mysql-tls").await;
    let (tls, other) = (TestTls::generate().unwrap(), TestTls::generate().unwrap());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let with_ca = |ca: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": "db-creds"},
            "stringData": {"username": OPERATOR_USER, "password": OPERATOR_PASSWORD, "ca.crt": ca}
        }))
        .unwrap()
    };
    secrets.create(&PostParams::default(), &with_ca(&other.ca_pem)).await.unwrap();
    let servers = [LocalMysql::start_tls(&tls), LocalMysql::start_tls(&tls)];
    let (api, operator) = run_cluster(&client, &ns, &servers, json!({"heartbeatInterval": "200ms"})).await;
    let said = eventually(WAIT, "the members' status to say TLS", || async {
        let st = api.get("db").await.ok()?.status?;
        let ms = &st.shards.first()?.members;
        let all = ms.len() == 2 && ms.iter().all(|m| m.message.as_deref().is_some_and(|x| x.contains("TLS")));
        all.then(|| ms[0].message.clone().unwrap_or_default())
    })
    .await;
    eprintln!("a CA that did not sign the servers' certificates: {said}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(get(&api, "db").await.status.unwrap().primary.is_none(), "nothing elected");
    assert_eq!((read_only(&servers[0]), read_only(&servers[1])), (Some(true), Some(true)), "nothing touched");

    // The right CA: elected, the replica attached over TLS, a switchover.
    secrets.replace("db-creds", &PostParams::default(), &with_ca(&tls.ca_pem)).await.unwrap();
    let (first, pi) = bootstrapped(&api, &servers).await;
    let ri = 1 - pi;
    let link = servers[ri].rows("SHOW SLAVE STATUS").unwrap();
    assert_eq!(link[0].get("Master_SSL_Allowed").map(String::as_str), Some("Yes"), "{link:?}");
    create_table(&servers[pi]);
    servers[pi].sql(&["INSERT INTO app.t (seq) VALUES (1), (2), (3)"]).unwrap();
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    let sfo: ShardFailover = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
        "metadata": {"name": "planned"}, "spec": {"shardUids": [first]}
    }))
    .unwrap();
    sfos.create(&PostParams::default(), &sfo).await.unwrap();
    let second = wait_primary(&api, "db", "main", Some(&first)).await;
    assert_eq!(second, NAMES[ri]);
    wait_follows(&servers[pi], &servers[ri]).await;
    assert_eq!(rows(&servers[ri]), BTreeSet::from([1, 2, 3]));
    assert_eq!((read_only(&servers[ri]), read_only(&servers[pi])), (Some(false), Some(true)));
    operator.stop().await;
}

/// A pair whose two clusters run different engines cannot replicate: the group says so and
/// touches neither.
#[tokio::test]
async fn a_protection_group_refuses_a_pair_of_two_engines() {
    use understudy::resources::ProtectionGroup;

    use crate::protection_group::pg;
    let client = support::client().await;
    let src_ns = support::namespace(&client, "mixed-src").await;
    let dr_ns = support::namespace(&client, "mixed-dr").await;
    secret(&client, &src_ns, OPERATOR_PASSWORD).await;
    let server = LocalMysql::start();
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    let pp = PostParams::default();
    src.create(&pp, &cluster("db", &[("a", &server)], json!({"heartbeatInterval": "200ms"}))).await.unwrap();
    let redis: HaCluster = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": "db-dr"},
        "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": [{"name": "r", "endpoint": "127.0.0.1:1"}]}]}
    }))
    .unwrap();
    dr.create(&pp, &redis).await.unwrap();
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&pp, &pg("pg", &src_ns, &dr_ns, &["db"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    let why = eventually(WAIT, "the group to refuse the pair", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        let c = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == "False" && c.reason == "UnsupportedEngine").then_some(c.message)
    })
    .await;
    eprintln!("{why}");
    assert!(why.contains("two engines"), "{why}");
    assert!(dr.get("db-dr").await.unwrap().standby().is_none(), "the DR cluster was not made a standby");
    // A group that cannot act never keeps the production side from electing; its DR side
    // waits for it (created under the group, it would otherwise be a second writable site).
    assert_eq!(wait_primary(&src, "db", "main", None).await, "a");
    let held = eventually(WAIT, "the DR side held for the group", || async {
        let c = dr.get("db-dr").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.reason == "AwaitingProtectionGroup").then_some(c.message)
    })
    .await;
    assert!(held.contains("the DR side (Target site) of pair db/db-dr"), "{held}");
    operator.stop().await;
}

/// A ProtectionGroup of Mysql clusters whose production site is lost: the DR site is
/// promoted only by an explicit forced failover, and when the old site's servers return —
/// the old primary with rows the DR site never received — it never takes writes beside the
/// new production primary: it is fenced (read-only), and the group says what became of it.
#[tokio::test]
async fn mysql_forced_site_failover_fences_the_returned_old_primary() {
    use understudy::resources::protection_group::{ProtectionPhase, SiteRole};

    let MysqlPair { src, dr, pgs, servers, operator } = mysql_pair("mysql-lost", true).await;
    let writable = || -> Vec<usize> { (0..4).filter(|&i| read_only(&servers[i]) == Some(false)).collect() };
    let production = writable();
    assert_eq!(production.len(), 1, "one writable server: {production:?}");
    let old = production[0];
    assert!(old < 2, "production is the source site");
    create_table(&servers[old]);
    servers[old].sql(&["INSERT INTO app.t (seq) VALUES (1), (2), (3)"]).unwrap();
    // The DR leader as its cluster records it, once it has the rows.
    let dr_leader = eventually(WAIT, "the rows at the DR leader", || async {
        let leader = dr.get("db-dr").await.ok()?.status?.shards.first()?.current_primary.clone()?;
        let i = 2 + ["c", "d"].iter().position(|n| *n == leader)?;
        servers[i].sql(&["SELECT COUNT(*) FROM app.t"]).ok().filter(|n| n.trim() == "3").map(|_| i)
    })
    .await;
    // Rows the DR site never receives: its servers frozen while production takes them; then
    // the production site is lost (its servers frozen, as a power loss would leave them).
    // (The DR leader's link is cut by the primary too: binlog events already on their way
    // would otherwise reach it from its socket buffer when it thaws.)
    servers[2].signal(libc::SIGSTOP);
    servers[3].signal(libc::SIGSTOP);
    let dumps = servers[old]
        .sql(&["SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'"])
        .unwrap();
    for id in dumps.lines().filter_map(|l| l.trim().parse::<u64>().ok()) {
        let _ = servers[old].sql(&[&format!("KILL {id}")]);
    }
    servers[old].sql(&["INSERT INTO app.t (seq) VALUES (4), (5)"]).unwrap();
    servers[0].signal(libc::SIGSTOP);
    servers[1].signal(libc::SIGSTOP);
    servers[2].signal(libc::SIGCONT);
    servers[3].signal(libc::SIGCONT);

    let asked = Instant::now();
    pgs.patch(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"prioritySite": "Target", "forcedFailover": {"to": "Target", "reason": "site A lost"}}})),
    )
    .await
    .unwrap();
    let promoted = eventually(WAIT, "a DR server to take writes", || async {
        (2..4).find(|&i| read_only(&servers[i]) == Some(false))
    })
    .await;
    eprintln!("forced: DR server {promoted} writable {:?} after the request", asked.elapsed());
    eventually(WAIT, "phase FailedOver", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        (st.phase == Some(ProtectionPhase::FailedOver) && st.production_site == Some(SiteRole::Target))
            .then_some(())
    })
    .await;
    assert_eq!(promoted, dr_leader, "the DR leader was promoted (writable now: {:?})", writable());
    if let Err(e) = servers[promoted].sql(&["INSERT INTO app.t (seq) VALUES (100)"]) {
        panic!("the new production primary refused a write: {e} (writable now: {:?})", writable());
    }

    // The old site returns. Its old primary holds rows 4 and 5, which the new production
    // primary never had: it must not be writable beside it, not for a sample.
    let thawed = Instant::now();
    servers[0].signal(libc::SIGCONT);
    servers[1].signal(libc::SIGCONT);
    let mut two_writable = Vec::new();
    let mut fenced_after = None;
    while thawed.elapsed() < Duration::from_secs(20) {
        let w = writable();
        if w.len() > 1 {
            two_writable.push((thawed.elapsed(), w.clone()));
        }
        if fenced_after.is_none() && read_only(&servers[old]) == Some(true) {
            fenced_after = Some(thawed.elapsed());
        }
        if fenced_after.is_some_and(|f| thawed.elapsed() > f + Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = pgs.get("pg").await.unwrap().status.unwrap();
    eprintln!(
        "returned: old primary read-only after {fenced_after:?}; writable samples with two: {}; group: {:?} {:?}; pair: {:?}",
        two_writable.len(),
        st.phase,
        st.conditions.iter().find(|c| c.type_ == "Ready").map(|c| (&c.reason, &c.message)),
        st.pairs.first().map(|p| (&p.state, &p.message))
    );
    // It thaws writable, as it froze (nothing can reach a frozen server); from the moment
    // it is fenced it never is again.
    let fenced = fenced_after.expect("the returned old primary was made read-only");
    assert!(
        two_writable.iter().all(|(t, _)| *t <= fenced),
        "two writable servers after the old primary was fenced: {two_writable:?}"
    );
    assert_eq!(writable(), vec![promoted], "only the new production primary is writable");
    let kept = rows(&servers[promoted]);
    assert!(kept.contains(&100) && kept.contains(&3), "the new production's rows are kept: {kept:?}");
    // Rows 4 and 5 were acknowledged by the old primary and never reached the DR site: the
    // old primary is not attached over them (that would keep them, or fail on them) — it is
    // named with its errant transactions and kept read-only, and the group is not called
    // protected over it.
    let gtid = eventually(WAIT, "the old primary named with its errant transactions", || async {
        let st = src.get("db").await.ok()?.status?;
        let m = st.shards.first()?.members.iter().find(|m| m.name == ["a", "b"][old])?.clone();
        (!m.errant_transactions.is_empty()).then_some(m.errant_transactions)
    })
    .await;
    let old_rows = rows(&servers[old]);
    assert!(
        old_rows.contains(&4) && old_rows.contains(&5),
        "its own rows are left for a rebuild to discard: {old_rows:?}"
    );
    let kept = rows(&servers[promoted]);
    assert!(!kept.contains(&4) && !kept.contains(&5), "the new production never had them: {kept:?}");
    assert_eq!(read_only(&servers[old]), Some(true), "the old primary stays read-only");
    let st = pgs.get("pg").await.unwrap().status.unwrap();
    assert_eq!(st.phase, Some(ProtectionPhase::FailedOver), "not protected over a divergent member: {st:?}");
    eprintln!(
        "old primary kept out with errant transactions {gtid:?}; group: {:?}",
        st.pairs.first().map(|p| &p.message)
    );
    operator.stop().await;
}
