//! The Sentinel-compatible discovery endpoint, driven by real client libraries — redis-py's
//! `Sentinel` (from PyPI) and go-redis's failover client (from the Go module proxy), installed
//! by tools/clients/setup.sh — writing through a switchover and a SIGKILL of the primary of
//! real redis-server processes; and served by a standby operator replica from status.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use understudy::{
    resources::{HaCluster, ShardFailover, shard_failover::ShardFailoverPhase},
    testclients::{Lib, Report, Writer},
};

use crate::{
    hacluster_redis::wait_primary,
    shard_failover::shard_failover,
    support::{self, Operator, Process, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "discovery-secret";

async fn llen(server: &RedisServer, key: &str) -> i64 {
    server.cmd(redis::cmd("LLEN").arg(key)).await.unwrap_or(0)
}

/// Wait until `server` holds `more` more writes of every writer than now: the clients write
/// to it.
async fn wait_writes_at(server: &RedisServer, writers: &[&Writer], more: i64) {
    for w in writers {
        let start = llen(server, &w.key).await;
        eventually(WAIT, &format!("{:?} writing to {}", w.lib, server.port), || async {
            (llen(server, &w.key).await >= start + more).then_some(())
        })
        .await;
    }
}

/// Every acknowledged write that `server` does not hold.
async fn lost(server: &RedisServer, key: &str, report: &Report) -> Vec<i64> {
    let held: Vec<i64> = server.cmd(redis::cmd("LRANGE").arg(key).arg(0).arg(-1)).await.unwrap();
    report.missing(&held)
}

fn summary(lib: Lib, what: &str, r: &Report, lost: usize) {
    let worst = r.gaps.iter().max_by(|a, b| a.ms.total_cmp(&b.ms));
    eprintln!(
        "{lib:?} through the {what}: {} of {} writes acknowledged, {lost} lost; longest pause {:.1} ms from {} ({} -> {}); primaries written {:?}; errors {:?}",
        r.acked.len(),
        r.attempts,
        worst.map_or(0.0, |g| g.ms),
        worst.map_or_else(String::new, |g| {
            let t = std::time::UNIX_EPOCH + Duration::from_micros((g.from_ms * 1000.0) as u64);
            k8s_openapi::jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
        }),
        worst.map_or("", |g| g.before.as_str()),
        worst.map_or("", |g| g.after.as_str()),
        r.addrs.iter().map(|a| &a.0).collect::<Vec<_>>(),
        r.errors,
    );
}

fn cluster(name: &str, members: &[(&str, &RedisServer)]) -> HaCluster {
    let members: Vec<_> = members.iter().map(|(n, r)| json!({"name": n, "endpoint": r.endpoint()})).collect();
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": name},
        "spec": {
            "engine": "Redis",
            "shards": [{"name": "main", "members": members}],
            "failover": {"heartbeatInterval": "200ms", "failureThreshold": 3},
            // Loopback members cannot be routed to by Services: clients find them through
            // discovery only.
            "routing": {"enabled": false},
        }
    }))
    .unwrap()
}

/// A request on a fresh connection: its reply, raw.
async fn ask(addr: SocketAddr, request: &str) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    sock.shutdown().await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

/// A subscriber: what it has read so far.
struct Subscriber(tokio::task::JoinHandle<()>, std::sync::Arc<std::sync::Mutex<String>>);

impl Subscriber {
    async fn start(addr: SocketAddr, preamble: &str) -> Self {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(format!("{preamble}PSUBSCRIBE *\r\n").as_bytes()).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let sub = Self(task, seen);
        sub.wait_for("subscribe").await;
        sub
    }

    async fn wait_for(&self, what: &str) -> String {
        eventually(WAIT, &format!("{what:?} on the subscription"), || async {
            let seen = self.1.lock().unwrap().clone();
            seen.contains(what).then_some(seen)
        })
        .await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn switchover(client: &kube::Client, ns: &str, name: &str, primary: &str) {
    let api: Api<ShardFailover> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &shard_failover(name, json!({"shardUids": [primary]}))).await.unwrap();
    let done = eventually(WAIT, "the switchover to finish", || async {
        let s = api.get(name).await.ok()?;
        matches!(s.status.as_ref()?.phase, Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed))
            .then_some(s)
    })
    .await;
    assert_eq!(done.status.unwrap().phase, Some(ShardFailoverPhase::Succeeded));
}

#[tokio::test]
async fn redis_py_and_go_redis_follow_a_switchover_and_a_failover_through_discovery() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sentinel").await;
    let mut servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let names = ["a", "b", "c"];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = names.iter().copied().zip(servers.iter()).collect();
    api.create(&PostParams::default(), &cluster("cache", &members)).await.unwrap();
    let (op, addr) = Operator::start_with_sentinel(client.clone(), &ns, Some(PASSWORD)).await.unwrap();
    let master = format!("{ns}/cache");
    let p0 = wait_primary(&api, "cache", "main", None).await;
    let at = |name: &str| names.iter().position(|n| *n == name).unwrap();

    // The protocol itself, before the clients: authentication first, then the primary.
    let noauth = ask(addr, &format!("SENTINEL get-master-addr-by-name {master}\r\n")).await;
    assert!(noauth.starts_with("-NOAUTH"), "{noauth}");
    let wrong = ask(addr, "AUTH guess\r\n").await;
    assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
    let port = servers[at(&p0)].port;
    let expect = format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.to_string().len());
    eventually(WAIT, "discovery to name the primary", || async {
        let r = ask(addr, &format!("AUTH {PASSWORD}\r\nSENTINEL get-master-addr-by-name {master}\r\n")).await;
        (r == format!("+OK\r\n{expect}")).then_some(())
    })
    .await;
    let unknown =
        ask(addr, &format!("AUTH {PASSWORD}\r\nSENTINEL get-master-addr-by-name {ns}/nothing\r\n")).await;
    assert_eq!(unknown, "+OK\r\n*-1\r\n");
    let sub = Subscriber::start(addr, &format!("AUTH {PASSWORD}\r\n")).await;

    // A switchover: every acknowledged write is on the new primary.
    let py = Writer::start(Lib::RedisPy, &addr.to_string(), &master, "py", Some(PASSWORD));
    let go = Writer::start(Lib::GoRedis, &addr.to_string(), &master, "go", Some(PASSWORD));
    wait_writes_at(&servers[at(&p0)], &[&py, &go], 200).await;
    let t = Instant::now();
    switchover(&client, &ns, "move", &p0).await;
    let p1 = wait_primary(&api, "cache", "main", Some(&p0)).await;
    eprintln!("switchover {p0} -> {p1} Succeeded after {:?}", t.elapsed());
    let (old, new) = (servers[at(&p0)].port, servers[at(&p1)].port);
    sub.wait_for(&format!("{master} 127.0.0.1 {old} 127.0.0.1 {new}")).await;
    wait_writes_at(&servers[at(&p1)], &[&py, &go], 200).await;
    for w in [py, go] {
        let (lib, key) = (w.lib, w.key.clone());
        let r = w.finish();
        let lost = lost(&servers[at(&p1)], &key, &r).await;
        summary(lib, "switchover", &r, lost.len());
        assert!(lost.is_empty(), "{lib:?}: acknowledged writes missing on the new primary: {lost:?}");
        assert_eq!(
            r.addrs.last().map(|a| a.0.as_str()),
            Some(format!("127.0.0.1:{new}").as_str()),
            "{lib:?}"
        );
    }

    // The primary killed: the clients find the promoted replica without being told.
    let py = Writer::start(Lib::RedisPy, &addr.to_string(), &master, "py2", Some(PASSWORD));
    let go = Writer::start(Lib::GoRedis, &addr.to_string(), &master, "go2", Some(PASSWORD));
    wait_writes_at(&servers[at(&p1)], &[&py, &go], 200).await;
    let t = Instant::now();
    servers[at(&p1)].kill();
    let p2 = wait_primary(&api, "cache", "main", Some(&p1)).await;
    eprintln!("failover {p1} -> {p2} recorded after {:?}", t.elapsed());
    let newest = servers[at(&p2)].port;
    sub.wait_for(&format!("{master} 127.0.0.1 {new} 127.0.0.1 {newest}")).await;
    wait_writes_at(&servers[at(&p2)], &[&py, &go], 200).await;
    for w in [py, go] {
        let (lib, key) = (w.lib, w.key.clone());
        let r = w.finish();
        // Replication is asynchronous: what the killed primary acknowledged last may be
        // lost. Measured and reported here; benchmarked in `bench discovery`.
        let lost = lost(&servers[at(&p2)], &key, &r).await;
        summary(lib, "failover", &r, lost.len());
        assert_eq!(
            r.addrs.last().map(|a| a.0.as_str()),
            Some(format!("127.0.0.1:{newest}").as_str()),
            "{lib:?}"
        );
    }
    op.stop().await;
}

/// The port a `understudy run` process says its discovery endpoint listens on.
async fn discovery_addr(p: &Process) -> SocketAddr {
    eventually(WAIT, "the discovery endpoint to listen", || async {
        let log = p.log();
        let line = log.lines().rev().find(|l| l.contains("serving Sentinel-compatible discovery"))?;
        let at = line.split_whitespace().find_map(|w| w.strip_prefix("local="))?;
        at.parse().ok()
    })
    .await
}

#[tokio::test]
async fn a_standby_replica_serves_discovery_and_relays_the_leaders_announcements() {
    // A half-configured endpoint is refused before anything runs.
    for (args, says) in [
        (&["run", "--sentinel-listen", "127.0.0.1:0", "--sentinel-no-auth"][..], "--sentinel-namespaces"),
        (
            &["run", "--sentinel-listen", "127.0.0.1:0", "--sentinel-namespaces", "x"][..],
            "--sentinel-no-auth",
        ),
        (&["run", "--sentinel-namespaces", "x"][..], "need --sentinel-listen"),
        (
            &[
                "run",
                "--namespaces",
                "a",
                "--sentinel-listen",
                "127.0.0.1:0",
                "--sentinel-no-auth",
                "--sentinel-namespaces",
                "b",
            ][..],
            "does not watch",
        ),
    ] {
        let mut p = Process::understudy(args, "sentinel-refused");
        let status = p.child.wait().unwrap();
        assert!(!status.success(), "{args:?} started");
        assert!(p.log().contains(says), "{args:?}: {}", p.log());
    }

    let client = support::client().await;
    let ns = support::namespace(&client, "sentinel-standby").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let names = ["a", "b"];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = names.iter().copied().zip(servers.iter()).collect();
    api.create(&PostParams::default(), &cluster("cache", &members)).await.unwrap();
    let args = |listen_http: &str| {
        vec![
            "run".to_owned(),
            "--leader-elect".into(),
            "--leader-election-namespace".into(),
            ns.clone(),
            "--namespaces".into(),
            ns.clone(),
            "--listen".into(),
            listen_http.into(),
            "--sentinel-listen".into(),
            "127.0.0.1:0".into(),
            "--sentinel-namespaces".into(),
            "*".into(),
            "--sentinel-no-auth".into(),
        ]
    };
    let leader_args = args("127.0.0.1:0");
    let leader =
        Process::understudy(&leader_args.iter().map(String::as_str).collect::<Vec<_>>(), "sentinel-leader");
    let p0 = wait_primary(&api, "cache", "main", None).await;
    let standby_args = args("127.0.0.1:0");
    let mut standby =
        Process::understudy(&standby_args.iter().map(String::as_str).collect::<Vec<_>>(), "sentinel-standby");
    let (la, sa) = (discovery_addr(&leader).await, discovery_addr(&standby).await);
    assert!(standby.log().contains("waiting for leadership"), "{}", standby.log());
    let master = format!("{ns}/cache");
    let port_of = |name: &str| servers[names.iter().position(|n| *n == name).unwrap()].port;
    for a in [la, sa] {
        let r = ask(a, &format!("SENTINEL get-master-addr-by-name {master}\r\nROLE\r\n")).await;
        assert!(r.contains(&format!("\r\n{}\r\n", port_of(&p0))), "{r}");
        assert!(r.contains("sentinel"), "{r}");
    }
    let sub = Subscriber::start(sa, "").await;
    // The leader says in its Lease where its endpoint listens; the standby follows it.
    eventually(WAIT, "the standby to follow the leader's announcements", || async {
        standby
            .log()
            .contains(&format!("following the leader's discovery announcements leader={la}"))
            .then_some(())
    })
    .await;

    // The leader switches over; the standby relays the leader's announcement to its
    // subscribers (before the status write reaches it), then serves what status says.
    switchover(&client, &ns, "move", &p0).await;
    let p1 = wait_primary(&api, "cache", "main", Some(&p0)).await;
    let switch = format!("{master} 127.0.0.1 {} 127.0.0.1 {}", port_of(&p0), port_of(&p1));
    sub.wait_for(&switch).await;
    let r = ask(sa, &format!("SENTINEL get-master-addr-by-name {master}\r\n")).await;
    assert!(r.contains(&format!("\r\n{}\r\n", port_of(&p1))), "{r}");
    let relayed = format!("relaying the leader's announcement master={master}");
    assert!(standby.log().contains(&relayed), "{}", standby.log());

    // A spec change the endpoint does not serve: the cluster made a standby of another site
    // is no master (its primary takes no writes).
    api.patch(
        "cache",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"standby": {"primaryEndpoint": "127.0.0.1:1"}}})),
    )
    .await
    .unwrap();
    let seen = sub.wait_for("-monitor").await;
    // Status confirming the announcement (watched in order, before this) published nothing
    // again.
    assert_eq!(seen.matches("+switch-master").count(), 1, "{seen}");
    let r = ask(sa, &format!("SENTINEL get-master-addr-by-name {master}\r\n")).await;
    assert_eq!(r, "*-1\r\n");
    drop(leader);
    standby.terminate();
}

/// The Routed condition of `name` once its reason is `reason`: its message.
async fn routed(api: &Api<HaCluster>, name: &str, reason: &str) -> String {
    eventually(WAIT, &format!("{name}: Routed {reason}"), || async {
        let st = api.get(name).await.ok()?.status?;
        let c = st.conditions.iter().find(|c| c.type_ == "Routed")?;
        (c.reason == reason).then(|| c.message.clone())
    })
    .await
}

#[tokio::test]
async fn a_master_name_is_served_for_one_cluster_and_a_contested_one_for_none() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sentinel-names").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let named = |name: &str, member: (&str, &RedisServer), master: &str| {
        let mut c = cluster(name, &[member]);
        c.spec.routing.master_name = Some(master.to_owned());
        c
    };
    // The API server refuses a name clients cannot ask for, or one shaped like the default
    // names of other namespaces (`namespace/cluster`).
    for bad in ["my master", "other/cache", "-x", "", &"m".repeat(201)] {
        let e = api.create(&PostParams::default(), &named("bad", ("a", &servers[0]), bad)).await.unwrap_err();
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 422), "{bad:?}: {e}");
    }
    api.create(&PostParams::default(), &named("one", ("a", &servers[0]), "mymaster")).await.unwrap();
    let (op, addr) = Operator::start_with_sentinel(client.clone(), &ns, None).await.unwrap();
    wait_primary(&api, "one", "main", None).await;
    let addr_of =
        |s: &RedisServer| format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{}\r\n", s.port.to_string().len(), s.port);
    let asks = |name: &str| format!("SENTINEL get-master-addr-by-name {name}\r\n");
    eventually(WAIT, "mymaster to be served", || async {
        (ask(addr, &asks("mymaster")).await == addr_of(&servers[0])).then_some(())
    })
    .await;
    assert_eq!(ask(addr, &asks(&format!("{ns}/one"))).await, "*-1\r\n", "the default name gives way");
    routed(&api, "one", "RoutingDisabled").await;

    // A second cluster claims the same name: served for neither, and both say why.
    api.create(&PostParams::default(), &named("two", ("b", &servers[1]), "mymaster")).await.unwrap();
    wait_primary(&api, "two", "main", None).await;
    eventually(WAIT, "a contested name to be served for neither", || async {
        (ask(addr, &asks("mymaster")).await == "*-1\r\n").then_some(())
    })
    .await;
    let msg = routed(&api, "one", "MasterNameConflict").await;
    assert!(msg.contains("\"mymaster\"") && msg.contains(&format!("{ns}/two")), "{msg}");
    let msg = routed(&api, "two", "MasterNameConflict").await;
    assert!(msg.contains(&format!("{ns}/one")), "{msg}");

    // One renames: each is served under its own name again.
    api.patch(
        "two",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"routing": {"masterName": "theirs"}}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "both names to be served", || async {
        let (a, b) = (ask(addr, &asks("mymaster")).await, ask(addr, &asks("theirs")).await);
        (a == addr_of(&servers[0]) && b == addr_of(&servers[1])).then_some(())
    })
    .await;
    routed(&api, "one", "RoutingDisabled").await;
    routed(&api, "two", "RoutingDisabled").await;
    op.stop().await;
}
