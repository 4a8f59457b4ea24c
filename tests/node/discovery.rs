//! Sentinel-aware clients — redis-py's `Sentinel` and go-redis's failover client, real
//! libraries from PyPI and the Go module proxy — configured with nothing but the operator's
//! `understudy-sentinel` Service, writing to a Redis StatefulSet's pods through a container
//! kill, a switchover, and a switchover right after the leading operator pod is killed.

use std::time::{Duration, Instant};

use kube::{Api, api::PostParams};
use serde_json::json;
use understudy::{
    localredis::redis_conn,
    resources::{HaCluster, ShardFailover, shard_failover::ShardFailoverPhase},
    testclients::{Lib, Report, Writer, now_ms},
};

use crate::{
    redis_pods::{PORT, cluster_ip, haclusterlike, redis_statefulset, wait_primary, wait_replicas_follow},
    support::{self, TestNs, container_id, eventually, pod_ip, pods},
};

const WAIT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "discovery-secret";

async fn ip_of(client: &kube::Client, ns: &str, pod: &str) -> String {
    let p = pods(client, ns, "app=cache").await;
    p.iter().find(|p| p.metadata.name.as_deref() == Some(pod)).and_then(pod_ip).expect("pod IP")
}

async fn list(ip: &str, key: &str) -> Option<Vec<i64>> {
    let mut c = redis_conn(ip, PORT, None, 1000).await.ok()?;
    redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query_async(&mut c).await.ok()
}

/// Wait until the member at `ip` holds `more` more writes of every writer than now.
async fn wait_writes_at(ip: &str, writers: &[&Writer], more: usize) {
    for w in writers {
        let start = list(ip, &w.key).await.map_or(0, |l| l.len());
        eventually(WAIT, &format!("{:?} writing to {ip}", w.lib), || async {
            (list(ip, &w.key).await?.len() >= start + more).then_some(())
        })
        .await;
    }
}

fn summary(what: &str, lib: Lib, r: &Report, since_ms: f64, lost: usize) {
    let gap = r.longest_gap_after(since_ms - 1000.0);
    eprintln!(
        "{lib:?}, {what}: {} of {} writes acknowledged, {lost} lost; longest pause {:.1} ms ({} -> {}); primaries {:?}; errors {:?}",
        r.acked.len(),
        r.attempts,
        gap.map_or(0.0, |g| g.ms),
        gap.map_or("", |g| g.before.as_str()),
        gap.map_or("", |g| g.after.as_str()),
        r.addrs.iter().map(|a| &a.0).collect::<Vec<_>>(),
        r.errors
    );
}

async fn switchover(client: &kube::Client, ns: &str, name: &str, primary: &str) -> Duration {
    let api: Api<ShardFailover> = Api::namespaced(client.clone(), ns);
    let sfo: ShardFailover = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
        "metadata": {"name": name}, "spec": {"shardUids": [primary]}
    }))
    .unwrap();
    let t = Instant::now();
    api.create(&PostParams::default(), &sfo).await.unwrap();
    let done = eventually(WAIT, &format!("ShardFailover {name} to finish"), || async {
        let s = api.get(name).await.ok()?;
        let phase = s.status.as_ref()?.phase?;
        matches!(phase, ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed).then_some(s)
    })
    .await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(ShardFailoverPhase::Succeeded), "{:?}", done.status);
    t.elapsed()
}

/// Stop the writers; every acknowledged write must be on `ip` (planned moves), and each
/// client's last writes went to `ip`.
/// The operator pods' discovery endpoints are linked: the leader says in its Lease where its
/// endpoint listens (the chart gives each pod its IP to advertise), and the other pod follows
/// it. Returns the standby pod's name.
async fn standby_follows(node: &support::Node, client: &kube::Client, ns: &str) -> String {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), ns);
    let (leader, standby, at) =
        eventually(WAIT, "the leader to advertise its discovery endpoint", || async {
            let lease = leases.get("understudy-leader").await.ok()?;
            let leader = lease.spec?.holder_identity?;
            let at = lease.metadata.annotations?.get("understudy.io/discovery-endpoint")?.clone();
            let operators = pods(client, ns, "app.kubernetes.io/name=understudy").await;
            let ip =
                operators.iter().find(|p| p.metadata.name.as_deref() == Some(&leader)).and_then(pod_ip)?;
            (at == format!("{ip}:26379")).then_some(())?;
            let standby = operators.into_iter().filter_map(|p| p.metadata.name).find(|p| *p != leader)?;
            Some((leader, standby, at))
        })
        .await;
    eventually(WAIT, "the standby operator pod to follow the leader's announcements", || async {
        let log = node.kubectl(&["-n", ns, "logs", &standby]).ok()?;
        log.lines()
            .any(|l| l.contains("following the leader's discovery announcements") && l.contains(&at))
            .then_some(())
    })
    .await;
    eprintln!("{standby} follows the discovery announcements of {leader}");
    standby
}

async fn finish(what: &str, writers: Vec<Writer>, ip: &str, since_ms: f64, must_keep: bool) {
    for w in writers {
        let (lib, key) = (w.lib, w.key.clone());
        let r = w.finish();
        let lost = r.missing(&list(ip, &key).await.expect("read the primary"));
        summary(what, lib, &r, since_ms, lost.len());
        if must_keep {
            assert!(lost.is_empty(), "{lib:?}: acknowledged writes lost in the {what}: {lost:?}");
        }
        assert_eq!(
            r.addrs.last().map(|a| a.0.clone()),
            Some(format!("{ip}:{PORT}")),
            "{lib:?} in the {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_clients_follow_the_primary_through_the_operators_service() {
    let Some(node) = support::node() else { return };
    let _shared = support::SHARED_NODE.read().await;
    // Installed (or built) before the clock matters: pip and go build.
    let _ = understudy::testclients::clients();
    let client = node.client().await.expect("client");
    let ns = TestNs::new(node, &client, "disc").await;
    let n = ns.name.as_str();
    node.apply(
        n,
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: discovery}}\nstringData: {{password: {PASSWORD}}}\n"),
    )
    .unwrap();
    node.install_operator(
        n,
        &[
            "--set",
            "sentinel.enabled=true",
            "--set-json",
            "sentinel.namespaces=[\"*\"]",
            "--set",
            "sentinel.auth.existingSecret=discovery",
        ],
    )
    .unwrap();
    node.apply(n, &redis_statefulset(node, "cache")).unwrap();
    node.apply(n, &haclusterlike("cache")).unwrap();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), n);
    let first = wait_primary(&hacs, "cache", None).await;
    wait_replicas_follow(&client, n, "cache", &first).await;
    let sentinel = format!("{}:26379", cluster_ip(&client, n, "understudy-sentinel").await);
    let master = format!("{n}/cache");
    let start = |key: &str| {
        [
            Writer::start(Lib::RedisPy, &sentinel, &master, &format!("py-{key}"), Some(PASSWORD)),
            Writer::start(Lib::GoRedis, &sentinel, &master, &format!("go-{key}"), Some(PASSWORD)),
        ]
    };

    // 1. The primary's container is killed: the clients find the promoted replica.
    let ws = start("kill");
    let ip = ip_of(&client, n, &first).await;
    wait_writes_at(&ip, &[&ws[0], &ws[1]], 200).await;
    let victim =
        pods(&client, n, "app=cache").await.into_iter().find(|p| p.metadata.name.as_deref() == Some(&first));
    let (t, since) = (Instant::now(), now_ms());
    node.kill_container(&container_id(&victim.unwrap()).unwrap()).unwrap();
    let second = wait_primary(&hacs, "cache", Some(&first)).await;
    eprintln!("container kill: {first} -> {second} recorded after {:?}", t.elapsed());
    let ip = ip_of(&client, n, &second).await;
    wait_writes_at(&ip, &[&ws[0], &ws[1]], 200).await;
    finish("container kill", ws.into(), &ip, since, false).await;
    wait_replicas_follow(&client, n, "cache", &second).await;

    // 2. A switchover: nothing acknowledged is lost; the standby operator pod relays the
    // leader's announcement to its own clients.
    let standby = standby_follows(node, &client, n).await;
    let ws = start("switchover");
    wait_writes_at(&ip, &[&ws[0], &ws[1]], 200).await;
    let since = now_ms();
    let took = switchover(&client, n, "planned", &second).await;
    let third = wait_primary(&hacs, "cache", Some(&second)).await;
    eprintln!("switchover: {second} -> {third} Succeeded after {took:?}");
    let ip = ip_of(&client, n, &third).await;
    wait_writes_at(&ip, &[&ws[0], &ws[1]], 200).await;
    finish("switchover", ws.into(), &ip, since, true).await;
    let log = node.kubectl(&["-n", n, "logs", &standby]).unwrap();
    assert!(log.contains("relaying the leader's announcement"), "{standby} did not relay:\n{log}");
    wait_replicas_follow(&client, n, "cache", &third).await;

    // 3. The leading operator pod is killed, then a switchover: the other replica leads and
    // discovery (served by every replica) follows it.
    let ws = start("leader");
    wait_writes_at(&ip, &[&ws[0], &ws[1]], 200).await;
    let (leader, pid) = support::leader(node, &client, n).await;
    // SAFETY: kill(2) of the operator container's process, found through the runtime.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    eprintln!("killed the leading operator pod {leader}");
    let since = now_ms();
    let took = switchover(&client, n, "after-leader", &third).await;
    let fourth = wait_primary(&hacs, "cache", Some(&third)).await;
    eprintln!("switchover after the leader was killed: {third} -> {fourth} Succeeded after {took:?}");
    let ip = ip_of(&client, n, &fourth).await;
    wait_writes_at(&ip, &[&ws[0], &ws[1]], 200).await;
    finish("switchover after a leader kill", ws.into(), &ip, since, true).await;
    // Whoever leads now (the other pod, or the killed one restarted in place: same pod name,
    // so same identity, which takes its unexpired lease back) advertises itself, and the other
    // pod follows it.
    standby_follows(node, &client, n).await;
}
