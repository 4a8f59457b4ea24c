//! MariaDB members the operator runs (`spec.instances`, engine Mysql): pods from the image
//! built here (tools/image.sh mariadb), each data directory on its own volume, the operator's
//! account from a Secret, a client inserting rows through the primary Service's ClusterIP the
//! whole time. A switchover, then the primary's mariadbd killed; every acknowledged row is
//! checked on the primary afterwards, and the killed member comes back from its volume as a
//! replica. Then a replica written behind the operator's back (an errant transaction) is kept
//! out until a rebuild that names the transaction replaces its pod and volume, and the members
//! restart in order (`restartedAt`) while the client writes on.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use mysql_async::prelude::Queryable as _;
use serde_json::json;
use understudy::resources::{
    HaCluster, ShardFailover, hacluster::Role, instances::REVISION_ANNOTATION,
    shard_failover::ShardFailoverPhase,
};

use crate::{
    instances::volumes,
    redis_pods::{cluster_ip, wait_primary},
    support::{self, TestNs, eventually, is_ready, pod_ip, pods},
};

const WAIT: Duration = Duration::from_secs(180);
const PORT: u16 = 3306;
const SELECTOR: &str = "understudy.dev/cluster=db";
const USER: &str = "understudy";
/// A quote and a backslash: the entrypoint escapes them into SQL.
const PASSWORD: &str = r"pa'ss\word";
/// The application's account: no `READ_ONLY ADMIN`, so `read_only` stops it (the operator's
/// account has every privilege, which `read_only` does not stop: README, "How MySQL-family
/// members should start").
const APP: (&str, &str) = ("app", "app-secret");

fn manifests(image: &str, class: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: db-credentials}}
stringData: {{username: {USER}, password: '{password}'}}
---
apiVersion: understudy.dev/v1alpha1
kind: HaCluster
metadata: {{name: db}}
spec:
  engine: Mysql
  secretRef: {{name: db-credentials}}
  instances:
    members: 3
    image: {image}
    imagePullPolicy: Never
    storage: {{size: 512Mi, storageClassName: {class}}}
    parameters: {{innodb-buffer-pool-size: 32M, innodb-log-file-size: 8M, performance-schema: "OFF"}}
  failover: {{heartbeatInterval: 200ms, failureThreshold: 3}}
"#,
        password = PASSWORD.replace('\'', "''")
    )
}

async fn conn(host: &str, timeout: Duration) -> mysql_async::Result<mysql_async::Conn> {
    conn_as(host, (USER, PASSWORD), timeout).await
}

async fn conn_as(
    host: &str,
    (user, password): (&str, &str),
    timeout: Duration,
) -> mysql_async::Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_owned())
        .tcp_port(PORT)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    match tokio::time::timeout(timeout, mysql_async::Conn::new(opts)).await {
        Ok(r) => r,
        Err(_) => Err(mysql_async::Error::Other("connect timed out".into())),
    }
}

async fn query_one(host: &str, sql: &str) -> Option<String> {
    let mut c = conn(host, Duration::from_secs(2)).await.ok()?;
    let v: Option<Option<String>> = c.query_first(sql).await.ok();
    let _ = c.disconnect().await;
    v.flatten()
}

/// Inserts row `seq` after row `seq` into `app.t` through `host` (the primary Service) as the
/// application's account, reconnecting on any error; a row counts as acknowledged only when
/// its INSERT returned OK.
struct RowWriter {
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RowWriter {
    /// Rows from `first + 1` on.
    fn start(host: &str, first: u64) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, host) = (acked.clone(), stop.clone(), host.to_owned());
        let task = tokio::spawn(async move {
            let mut c: Option<mysql_async::Conn> = None;
            let mut seq = first;
            while !s.load(SeqCst) {
                if c.is_none() {
                    c = conn_as(&host, APP, Duration::from_millis(500)).await.ok();
                    if c.is_none() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                }
                seq += 1;
                let insert = format!("INSERT INTO app.t (seq) VALUES ({seq})");
                let conn = c.as_mut().expect("connected");
                match tokio::time::timeout(Duration::from_secs(2), conn.query_drop(&insert)).await {
                    Ok(Ok(())) => a.lock().unwrap().push((seq, Instant::now())),
                    _ => c = None,
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
        let want = self.count() + n;
        eventually(WAIT, &format!("{n} more rows acknowledged"), || async {
            (self.count() >= want).then_some(())
        })
        .await;
    }

    /// The longest time without an acknowledgement within [from, to].
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let times: Vec<Instant> = acked.iter().map(|(_, t)| *t).filter(|t| *t >= from && *t <= to).collect();
        times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(to - from)
    }

    async fn stop(self) -> BTreeSet<u64> {
        self.stop.store(true, SeqCst);
        let _ = self.task.await;
        self.acked.lock().unwrap().iter().map(|(s, _)| *s).collect()
    }
}

/// Exactly one member answers `@@read_only` with `OFF` (writable): `primary`.
async fn only_writable(client: &kube::Client, ns: &str, primary: &str) {
    let mut roles = Vec::new();
    for p in pods(client, ns, SELECTOR).await {
        let ro = match pod_ip(&p) {
            Some(ip) => query_one(&ip, "SELECT CAST(@@global.read_only AS CHAR)").await,
            None => None,
        };
        roles.push((p.name_any(), ro));
    }
    let writable: Vec<&str> = roles
        .iter()
        .filter(|(_, ro)| matches!(ro.as_deref(), Some("0" | "OFF")))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(writable, [primary], "only the primary is writable: {roles:?}");
}

/// The sequence number of GTID domain 0 in a MariaDB position (`0-3-1234`; empty: 0).
fn seq(pos: &str) -> Option<u64> {
    if pos.trim().is_empty() {
        return Some(0);
    }
    pos.split(',').map(str::trim).find(|g| g.starts_with("0-"))?.rsplit('-').next()?.parse().ok()
}

/// Every replica's replication threads running from `primary`'s address, and its position
/// at least the primary's as read first (rows keep being written meanwhile). Returns that
/// position.
async fn caught_up(client: &kube::Client, ns: &str, primary: &str) -> Option<String> {
    let pods: Vec<Pod> = pods(client, ns, SELECTOR).await;
    let ip = pods.iter().find(|p| p.name_any() == primary).and_then(pod_ip)?;
    let want = query_one(&ip, "SELECT @@global.gtid_binlog_pos").await?;
    for p in pods.iter().filter(|p| p.name_any() != primary) {
        let mut c = conn(&pod_ip(p)?, Duration::from_secs(2)).await.ok()?;
        let row: mysql_async::Row = c.query_first("SHOW SLAVE STATUS").await.ok()??;
        let col = |name: &str| row.get_opt::<String, _>(name).and_then(Result::ok);
        let pos: Option<String> = c.query_first("SELECT @@global.gtid_slave_pos").await.ok()?;
        let _ = c.disconnect().await;
        let ok = col("Master_Host")? == ip
            && col("Slave_IO_Running")? == "Yes"
            && col("Slave_SQL_Running")? == "Yes"
            && seq(&pos?)? >= seq(&want)?;
        if !ok {
            return None;
        }
    }
    (pods.len() == 3 && pods.iter().all(is_ready)).then_some(want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_members_run_as_pods_and_fail_over_through_the_service_losing_no_row() {
    let Some(node) = support::node() else { return };
    let _shared = support::SHARED_NODE.read().await;
    let client = node.client().await.expect("client");
    let ns = TestNs::new(node, &client, "mariadb").await;
    node.install_operator(&ns.name, &[]).unwrap();
    let class = format!("local-{}", ns.name);
    // A fourth volume for the member rebuilt onto a new one.
    node.apply(&ns.name, &volumes(node, &class, 0..4, "1Gi")).unwrap();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns.name);

    // Create: three members from the image's template, the operator's account from the Secret.
    let t = Instant::now();
    node.apply(&ns.name, &manifests(&node.mariadb_image, &class)).unwrap();
    let primary = wait_primary(&hacs, "db", None).await;
    let gtid =
        eventually(WAIT, "both replicas following the primary", || caught_up(&client, &ns.name, &primary))
            .await;
    eprintln!(
        "create: 3 MariaDB members, {primary} primary, replicas at {gtid:?}, {:.1}s after apply",
        t.elapsed().as_secs_f64()
    );
    only_writable(&client, &ns.name, &primary).await;

    // The application's table, through the primary Service.
    let vip = cluster_ip(&client, &ns.name, "db-primary").await;
    let mut setup = eventually(WAIT, "a connection through the primary Service", || async {
        conn(&vip, Duration::from_secs(2)).await.ok()
    })
    .await;
    setup.query_drop("CREATE DATABASE app").await.unwrap();
    setup
        .query_drop("CREATE TABLE app.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT UNIQUE)")
        .await
        .unwrap();
    setup.query_drop(format!("CREATE USER '{}'@'%' IDENTIFIED BY '{}'", APP.0, APP.1)).await.unwrap();
    setup.query_drop(format!("GRANT SELECT, INSERT ON app.* TO '{}'@'%'", APP.0)).await.unwrap();
    let _ = setup.disconnect().await;
    let writer = RowWriter::start(&vip, 0);
    writer.wait_more(300).await;

    // Switchover: an audited ShardFailover, the client through the Service.
    let t = Instant::now();
    let sfo: ShardFailover = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
        "metadata": {"name": "move"},
        "spec": {"shardUids": [primary]}
    }))
    .unwrap();
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns.name);
    sfos.create(&PostParams::default(), &sfo).await.unwrap();
    eventually(WAIT, "the switchover to succeed", || async {
        let phase = sfos.get("move").await.ok()?.status?.phase?;
        assert_ne!(phase, ShardFailoverPhase::Failed, "the switchover failed");
        (phase == ShardFailoverPhase::Succeeded).then_some(())
    })
    .await;
    let switched = wait_primary(&hacs, "db", Some(&primary)).await;
    let done = t.elapsed();
    writer.wait_more(300).await;
    let pause = writer.longest_gap(t, Instant::now());
    eprintln!(
        "switchover: {primary} → {switched} in {done:?}; longest client pause through the Service {pause:?}"
    );

    // Failover: the primary's mariadbd is killed (SIGKILL); the kubelet restarts it on the same
    // volume, and it comes back as a replica.
    eventually(WAIT, "replicas caught up before the kill", || caught_up(&client, &ns.name, &switched)).await;
    let victim = Api::<Pod>::namespaced(client.clone(), &ns.name).get(&switched).await.unwrap();
    let t = Instant::now();
    node.kill_container(&support::container_id(&victim).expect("running container")).unwrap();
    let failed_over = wait_primary(&hacs, "db", Some(&switched)).await;
    let detected = t.elapsed();
    writer.wait_more(300).await;
    let pause = writer.longest_gap(t, Instant::now());
    let c = hacs.get("db").await.unwrap();
    let record = c.status.as_ref().and_then(|s| s.last_failover.clone()).expect("a failover record");
    eprintln!(
        "failover: {switched} killed, {failed_over} primary after {detected:?}; longest client pause {pause:?}; lostOffset {:?}",
        record.lost_offset
    );
    let rejoined = eventually(WAIT, "the killed member back as a replica", || async {
        let gtid = caught_up(&client, &ns.name, &failed_over).await?;
        let c = hacs.get("db").await.ok()?;
        let shard = c.status?.shards.into_iter().find(|s| s.name == "main")?;
        let m = shard.members.iter().find(|m| m.name == switched)?;
        (m.role == Role::Replica && m.healthy).then_some(gtid)
    })
    .await;
    eprintln!("failover: {switched} rejoined from its volume, all at {rejoined:?}");

    // Every acknowledged row is on the primary; only the primary is writable.
    every_acked_row_present(writer, &vip, "rows").await;
    only_writable(&client, &ns.name, &failed_over).await;
    // The pods are the operator's, one revision, each with its own volume.
    let members = pods(&client, &ns.name, SELECTOR).await;
    let revisions: BTreeSet<_> =
        members.iter().filter_map(|p| p.annotations().get(REVISION_ANNOTATION).cloned()).collect();
    assert_eq!((members.len(), revisions.len()), (3, 1));
    let claims =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .unwrap();
    assert_eq!(claims.items.len(), 3, "one volume per member");

    // Rebuild: a replica written behind the operator's back holds a transaction the primary
    // never had, and is kept out until a rebuild that names that transaction replaces it.
    let writer = RowWriter::start(&vip, 1_000_000);
    writer.wait_more(100).await;
    let primary = failed_over;
    let replica = members.iter().find(|p| p.name_any() != primary).unwrap().clone();
    let r = replica.name_any();
    let mut c = conn(&pod_ip(&replica).unwrap(), Duration::from_secs(5)).await.unwrap();
    for q in [
        "SET GLOBAL read_only = OFF",
        // An explicit id: the replica's auto-increment counter can trail the rows its
        // replication is inserting at this moment (CI saw a duplicate key).
        "INSERT INTO app.t (id, seq) VALUES (999999999, 999999999)",
        "SET GLOBAL read_only = ON",
    ] {
        c.query_drop(q).await.unwrap();
    }
    let _ = c.disconnect().await;
    let errant = eventually(WAIT, "the errant transaction in the member's status", || async {
        let m = member(&hacs, &r).await?;
        (!m.errant_transactions.is_empty()).then_some(m.errant_transactions)
    })
    .await;
    eprintln!("rebuild: {r} holds {errant:?}, which {primary} never had");
    let volume_uid = |claims: &[k8s_openapi::api::core::v1::PersistentVolumeClaim]| {
        claims.iter().find(|c| c.name_any() == format!("data-{r}")).and_then(|c| c.uid())
    };
    let (pod_before, volume_before) = (replica.uid(), volume_uid(&claims.items));
    let id_before = query_one(&pod_ip(&replica).unwrap(), "SELECT CAST(@@server_id AS CHAR)").await;
    // The primary is never rebuilt; a request that does not name the transactions is refused.
    rebuild(&hacs, &primary).await;
    let why = refused(&hacs, "is the primary").await;
    eprintln!("rebuild {primary}: {why}");
    rebuild(&hacs, &r).await;
    let why = refused(&hacs, "name them").await;
    eprintln!("rebuild {r}: {why}");
    assert!(why.contains(&errant.join(",")), "{why}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = Api::<Pod>::namespaced(client.clone(), &ns.name).get(&r).await.unwrap();
    assert_eq!(now.uid(), pod_before, "nothing touched for a refused request");
    // Named: the pod and the volume are replaced, and the member resynchronises.
    rebuild(&hacs, &format!("{r}:{}", errant.join(","))).await;
    let record = eventually(WAIT, "the rebuild to complete", || async {
        let rb = hacs.get("db").await.ok()?.status?.instances?.rebuild?;
        rb.completion_time.is_some().then_some(rb)
    })
    .await;
    let took = record.completion_time.as_ref().unwrap().0.duration_since(record.start_time.0);
    eprintln!("rebuild: {r} rebuilt in {:.1} s, discarding {:?}", took.as_secs_f64(), record.discarded);
    assert_eq!(record.discarded, errant);
    let gtid = eventually(WAIT, "every replica caught up after the rebuild", || {
        caught_up(&client, &ns.name, &primary)
    })
    .await;
    let now = Api::<Pod>::namespaced(client.clone(), &ns.name).get(&r).await.unwrap();
    assert_ne!(now.uid(), pod_before, "a new pod");
    let claims =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .unwrap();
    assert_ne!(volume_uid(&claims.items), volume_before, "a new volume");
    let gone =
        query_one(&pod_ip(&now).unwrap(), "SELECT CAST(COUNT(*) AS CHAR) FROM app.t WHERE seq = 999999999")
            .await;
    assert_eq!(gone.as_deref(), Some("0"), "the discarded row is gone from the rebuilt member");
    let id_after = query_one(&pod_ip(&now).unwrap(), "SELECT CAST(@@server_id AS CHAR)").await;
    eprintln!("rebuild: server_id {id_before:?} → {id_after:?}");
    assert_ne!(id_after, id_before, "a new data directory, a new server_id");
    let m = member(&hacs, &r).await.unwrap();
    assert!(m.errant_transactions.is_empty() && m.healthy && m.role == Role::Replica, "{m:?}");
    eprintln!("rebuild: {r} follows {primary} at {gtid}");

    // A rolling restart (restartedAt): replicas, then a switchover, then the old primary,
    // while the client writes on.
    let old_revision = hacs.get("db").await.unwrap().status.unwrap().instances.unwrap().revision;
    let t = Instant::now();
    let body = json!({"spec": {"instances": {"pod": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}});
    hacs.patch("db", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&body)).await.unwrap();
    let revision = eventually(WAIT, "the roll to finish", || async {
        let st = hacs.get("db").await.ok()?.status?;
        let progressing = st.conditions.iter().find(|c| c.type_ == "Progressing")?;
        let revision = st.instances?.revision?;
        let pods = pods(&client, &ns.name, SELECTOR).await;
        let rolled = pods.len() == 3
            && pods
                .iter()
                .all(|p| is_ready(p) && p.annotations().get(REVISION_ANNOTATION) == Some(&revision));
        (Some(&revision) != old_revision.as_ref() && rolled && progressing.reason == "UpToDate")
            .then_some(revision)
    })
    .await;
    let rolled = t.elapsed();
    let after = wait_primary(&hacs, "db", Some(&primary)).await;
    writer.wait_more(300).await;
    let pause = writer.longest_gap(t, Instant::now());
    eprintln!(
        "roll: 3 members to {revision} in {rolled:?}, primary {primary} → {after}; longest client pause {pause:?}"
    );
    let present = every_acked_row_present(writer, &vip, "rows during the rebuild and the roll").await;
    assert!(!present.contains(&999_999_999), "the discarded row never reached the primary");
    only_writable(&client, &ns.name, &after).await;
    // Every member holds as many rows as the primary (a member rebuilt under the server_id its
    // earlier incarnation wrote with would skip those rows when it replays the primary's log).
    let counts = eventually(WAIT, "every member with the primary's rows", || async {
        caught_up(&client, &ns.name, &after).await?;
        let mut counts = Vec::new();
        for p in pods(&client, &ns.name, SELECTOR).await {
            counts.push((
                p.name_any(),
                query_one(&pod_ip(&p)?, "SELECT CAST(COUNT(*) AS CHAR) FROM app.t").await?,
            ));
        }
        counts.windows(2).all(|w| w[0].1 == w[1].1).then_some(counts)
    })
    .await;
    eprintln!("rows on every member: {counts:?}");
}

/// Stop `writer` and check that every row it had acknowledged is on the primary (through the
/// primary Service `vip`); the rows there.
async fn every_acked_row_present(writer: RowWriter, vip: &str, what: &str) -> BTreeSet<u64> {
    let acked = writer.stop().await;
    let mut check = conn(vip, Duration::from_secs(5)).await.unwrap();
    let present: BTreeSet<u64> =
        check.query::<u64, _>("SELECT seq FROM app.t").await.unwrap().into_iter().collect();
    let _ = check.disconnect().await;
    let lost: Vec<&u64> = acked.difference(&present).collect();
    eprintln!("{what}: {} acknowledged, {} lost", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged rows missing on the primary: {:?}", &lost[..lost.len().min(20)]);
    present
}

/// Member `name` as the HaCluster's status lists it.
async fn member(hacs: &Api<HaCluster>, name: &str) -> Option<understudy::resources::hacluster::MemberStatus> {
    let st = hacs.get("db").await.ok()?.status?;
    st.shards.into_iter().find(|s| s.name == "main")?.members.into_iter().find(|m| m.name == name)
}

/// Ask for a rebuild (the annotation `understudy.dev/rebuild`).
async fn rebuild(hacs: &Api<HaCluster>, value: &str) {
    let body =
        json!({"metadata": {"annotations": {understudy::resources::instances::REBUILD_ANNOTATION: value}}});
    hacs.patch("db", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&body)).await.unwrap();
}

/// `Progressing=False RebuildRefused` with a message containing `words`: the message.
async fn refused(hacs: &Api<HaCluster>, words: &str) -> String {
    eventually(WAIT, &format!("RebuildRefused ({words})"), || async {
        let st = hacs.get("db").await.ok()?.status?;
        let c = st.conditions.into_iter().find(|c| c.type_ == "Progressing")?;
        (c.status == "False" && c.reason == "RebuildRefused" && c.message.contains(words))
            .then_some(c.message)
    })
    .await
}
