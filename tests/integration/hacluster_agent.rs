//! HaCluster with the agent engine: three real `understudy agent` processes under a
//! supervisor, the redirect ConfigMap, consumer restarts, and a wrong token.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap, core::v1::Secret};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{HaCluster, hacluster::Role};

use crate::{
    hacluster_redis::wait_primary,
    support::{self, Operator, RedisServer, SupervisedAgent, eventually},
};

const TOKEN: &str = "agent-token-1";
const WAIT: Duration = Duration::from_secs(60);
const KEY: &str = "com.systar.electron.host";

pub(crate) async fn secret(client: &kube::Client, ns: &str, token: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "agent-token"}, "stringData": {"token": token}}))
            .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
}

pub(crate) fn agent_cluster(name: &str, agents: &[(&str, &SupervisedAgent)]) -> HaCluster {
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": name},
        "spec": {
            "engine": "Agent",
            "secretRef": {"name": "agent-token"},
            "shards": [{"name": "main", "members": agents.iter().map(|(n, a)| json!({"name": n, "endpoint": a.addr.to_string()})).collect::<Vec<_>>()}],
            "failover": {"heartbeatInterval": "200ms", "failureThreshold": 3},
            "redirect": {"configMap": "app-config", "restart": [{"kind": "Deployment", "name": "consumer"}]},
        }
    }))
    .unwrap()
}

/// Count agents answering MAIN, every 20 ms; remember the most at once.
fn main_sampler(agents: Vec<std::net::SocketAddr>) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(AtomicUsize::new(0));
    let m = max.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
        loop {
            let answers = futures::future::join_all(agents.iter().map(|a| {
                http.get(format!("http://{a}/rest/ha/status"))
                    .header("Authorization", format!("token {TOKEN}"))
                    .send()
            }))
            .await;
            let mut mains = 0;
            for r in answers.into_iter().flatten() {
                if r.text().await.is_ok_and(|t| t.trim() == "MAIN") {
                    mains += 1;
                }
            }
            m.fetch_max(mains, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (max, task)
}

#[tokio::test]
async fn agents_start_backup_one_becomes_main_and_a_dead_main_is_replaced() {
    let client = support::client().await;
    let ns = support::namespace(&client, "agents").await;
    secret(&client, &ns, TOKEN).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &consumer("consumer")).await.unwrap();

    let agents = [
        SupervisedAgent::start("127.0.0.11", TOKEN),
        SupervisedAgent::start("127.0.0.12", TOKEN),
        SupervisedAgent::start("127.0.0.13", TOKEN),
    ];
    let names = ["a", "b", "c"];
    for a in &agents {
        let s = eventually(WAIT, "agent up", || a.status(TOKEN)).await;
        assert_eq!(s, (200, "BACKUP".to_owned()), "every agent starts as BACKUP");
    }
    let (max_mains, sampler) = main_sampler(agents.iter().map(|a| a.addr).collect());
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &SupervisedAgent)> = names.iter().copied().zip(agents.iter()).collect();
    api.create(&PostParams::default(), &agent_cluster("app", &members)).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);

    let first = wait_primary(&api, "app", "main", None).await;
    let fi = names.iter().position(|n| *n == first).unwrap();
    for (i, a) in agents.iter().enumerate() {
        let want = if i == fi { "MAIN" } else { "BACKUP" };
        assert_eq!(a.status(TOKEN).await.map(|s| s.1).as_deref(), Some(want));
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let host_of = |i: usize| agents[i].addr.ip().to_string();
    let want = host_of(fi);
    eventually(WAIT, "redirect ConfigMap names the main", || async {
        let cm = cms.get_opt("app-config").await.ok()??;
        (cm.data?.get(KEY)? == &want).then_some(())
    })
    .await;

    // The main crashes and stays down: another agent becomes MAIN, replicas are redirected.
    agents[fi].kill_and_hold();
    let second = wait_primary(&api, "app", "main", Some(&first)).await;
    let si = names.iter().position(|n| *n == second).unwrap();
    assert_eq!(agents[si].status(TOKEN).await.map(|s| s.1).as_deref(), Some("MAIN"));
    let want = host_of(si);
    eventually(WAIT, "redirect ConfigMap names the new main", || async {
        let cm = cms.get_opt("app-config").await.ok()??;
        (cm.data?.get(KEY)? == &want).then_some(())
    })
    .await;
    let restarted = deployments.get("consumer").await.unwrap();
    let annotations = restarted.spec.unwrap().template.metadata.unwrap().annotations.unwrap_or_default();
    assert!(
        annotations.contains_key("kubectl.kubernetes.io/restartedAt"),
        "consumers restarted: {annotations:?}"
    );

    // The old main comes back — as BACKUP, and stays a replica.
    agents[fi].resume();
    eventually(WAIT, "old main back as a healthy replica", || async {
        let st = api.get("app").await.ok()?.status?;
        let m = st.shards[0].members.iter().find(|m| m.name == first)?;
        (m.healthy && m.role == Role::Replica).then_some(())
    })
    .await;
    assert_eq!(agents[fi].status(TOKEN).await.map(|s| s.1).as_deref(), Some("BACKUP"));
    assert!(agents[fi].restarts.load(Ordering::SeqCst) >= 1, "the supervisor restarted the crashed main");
    assert_eq!(api.get("app").await.unwrap().status.unwrap().primary.as_deref(), Some(second.as_str()));
    sampler.abort();
    assert_eq!(max_mains.load(Ordering::SeqCst), 1, "never two MAINs at any sampled instant");
    operator.stop().await;
}

#[tokio::test]
async fn wrong_token_is_refused_and_reported_without_changing_roles() {
    let client = support::client().await;
    let ns = support::namespace(&client, "agents-401").await;
    secret(&client, &ns, "not-the-token").await;
    let agents = [SupervisedAgent::start("127.0.0.21", TOKEN), SupervisedAgent::start("127.0.0.22", TOKEN)];
    for a in &agents {
        eventually(WAIT, "agent up", || a.status(TOKEN)).await;
        assert_eq!(a.status("not-the-token").await.map(|s| s.0), Some(401), "the agent answers 401");
    }
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &SupervisedAgent)> = vec![("a", &agents[0]), ("b", &agents[1])];
    api.create(&PostParams::default(), &agent_cluster("app", &members)).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let msg = eventually(WAIT, "Unauthorized condition", || async {
        let st = api.get("app").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "Unauthorized" && ready.status == "False").then(|| ready.message.clone())
    })
    .await;
    assert!(msg.contains("401") && msg.contains("refuse"), "{msg}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for a in &agents {
        assert_eq!(a.status(TOKEN).await.map(|s| s.1).as_deref(), Some("BACKUP"), "roles unchanged");
    }
    assert_eq!(api.get("app").await.unwrap().status.unwrap().shards[0].epoch, 0, "nothing was promoted");

    // The token is fixed in the Secret: while members refuse, the Secret is re-read every few
    // seconds (not once per 30 s cache lifetime), and the cluster comes up.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let fixed = std::time::Instant::now();
    secrets
        .patch("agent-token", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"token": TOKEN}})))
        .await
        .unwrap();
    wait_primary(&api, "app", "main", None).await;
    assert!(
        fixed.elapsed() < Duration::from_secs(20),
        "the fixed token took {:?} to be used (the Secret cache keeps a good Secret 30 s)",
        fixed.elapsed()
    );
    operator.stop().await;
}

/// The `kubectl.kubernetes.io/restartedAt` stamp of Deployment `name`, if it was restarted.
async fn restarted_at(deployments: &Api<Deployment>, name: &str) -> Option<String> {
    let d = deployments.get(name).await.ok()?;
    d.spec?.template.metadata?.annotations?.get("kubectl.kubernetes.io/restartedAt").cloned()
}

/// A Deployment that only exists to be restarted (its image is never pulled here).
fn consumer(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "example.invalid/consumer:1"}]}}}
    }))
    .unwrap()
}

/// Two shards of agents: the redirect ConfigMap carries each shard's main under
/// `<key>.<shard>` (and the first shard's under the bare key); when shard b's main dies, only
/// b's key moves and only the consumers of b (and the one of every shard) are restarted.
#[tokio::test]
async fn every_shard_is_redirected_and_only_its_consumers_restart() {
    let client = support::client().await;
    let ns = support::namespace(&client, "agents-shards").await;
    secret(&client, &ns, TOKEN).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for name in ["consumer-a", "consumer-b", "consumer-all"] {
        deployments.create(&PostParams::default(), &consumer(name)).await.unwrap();
    }
    let agents = [
        SupervisedAgent::start("127.0.0.31", TOKEN),
        SupervisedAgent::start("127.0.0.32", TOKEN),
        SupervisedAgent::start("127.0.0.33", TOKEN),
        SupervisedAgent::start("127.0.0.34", TOKEN),
    ];
    for a in &agents {
        eventually(WAIT, "agent up", || a.status(TOKEN)).await;
    }
    let names = ["a1", "a2", "b1", "b2"];
    let member = |i: usize| json!({"name": names[i], "endpoint": agents[i].addr.to_string()});
    let cluster: HaCluster = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": "sharded"},
        "spec": {
            "engine": "Agent",
            "secretRef": {"name": "agent-token"},
            "shards": [
                {"name": "a", "members": [member(0), member(1)]},
                {"name": "b", "members": [member(2), member(3)]},
            ],
            "failover": {"heartbeatInterval": "200ms", "failureThreshold": 3},
            "redirect": {"configMap": "app-config", "restart": [
                {"kind": "Deployment", "name": "consumer-a", "shard": "a"},
                {"kind": "Deployment", "name": "consumer-b", "shard": "b"},
                {"kind": "Deployment", "name": "consumer-all"},
            ]},
        }
    }))
    .unwrap();
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &cluster).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);

    let a_main = wait_primary(&api, "sharded", "a", None).await;
    let b_main = wait_primary(&api, "sharded", "b", None).await;
    let host = |name: &str| agents[names.iter().position(|n| *n == name).unwrap()].addr.ip().to_string();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let (key_a, key_b) = (format!("{KEY}.a"), format!("{KEY}.b"));
    let (want_a, want_b) = (host(&a_main), host(&b_main));
    eventually(WAIT, "the redirect ConfigMap names both shards' mains", || async {
        let data = cms.get_opt("app-config").await.ok()??.data?;
        (data.get(&key_a) == Some(&want_a)
            && data.get(&key_b) == Some(&want_b)
            && data.get(KEY) == Some(&want_a))
        .then_some(())
    })
    .await;
    let before_a =
        eventually(WAIT, "consumer-a restarted once", || restarted_at(&deployments, "consumer-a")).await;
    let before_b =
        eventually(WAIT, "consumer-b restarted once", || restarted_at(&deployments, "consumer-b")).await;
    let before_all =
        eventually(WAIT, "consumer-all restarted once", || restarted_at(&deployments, "consumer-all")).await;

    // Shard b's main dies: only b moves.
    agents[names.iter().position(|n| *n == b_main).unwrap()].kill_and_hold();
    let b_new = wait_primary(&api, "sharded", "b", Some(&b_main)).await;
    let want_b = host(&b_new);
    let data = eventually(WAIT, "the redirect ConfigMap names shard b's new main", || async {
        let data = cms.get_opt("app-config").await.ok()??.data?;
        (data.get(&key_b) == Some(&want_b)).then_some(data)
    })
    .await;
    assert_eq!(data.get(&key_a), Some(&want_a), "shard a's key is unchanged: {data:?}");
    assert_eq!(data.get(KEY), Some(&want_a), "the bare key still names the first shard's main: {data:?}");
    eventually(WAIT, "consumer-b restarted again", || async {
        restarted_at(&deployments, "consumer-b").await.filter(|s| *s != before_b)
    })
    .await;
    eventually(WAIT, "consumer-all restarted again", || async {
        restarted_at(&deployments, "consumer-all").await.filter(|s| *s != before_all)
    })
    .await;
    assert_eq!(
        restarted_at(&deployments, "consumer-a").await,
        Some(before_a.clone()),
        "shard a's main did not change: its consumer is not restarted"
    );
    assert_eq!(wait_primary(&api, "sharded", "a", None).await, a_main, "shard a untouched");

    // Edited by hand, the ConfigMap is put right within a read-back interval (10 s): shard
    // a's key again names a's main, and a's consumer is restarted (it may have read the
    // wrong address).
    let edit = json!({"data": {key_a.clone(): "10.255.255.1"}});
    cms.patch("app-config", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let edited = std::time::Instant::now();
    eventually(WAIT, "the edited key put right", || async {
        let data = cms.get_opt("app-config").await.ok()??.data?;
        (data.get(&key_a) == Some(&want_a)).then_some(())
    })
    .await;
    println!("an edited redirect key was put right after {} ms", edited.elapsed().as_millis());
    eventually(WAIT, "consumer-a restarted after the repair", || async {
        restarted_at(&deployments, "consumer-a").await.filter(|s| *s != before_a)
    })
    .await;
    operator.stop().await;
}

/// A third-party HA agent (a real process, python's http.server) whose answer the test sets
/// through a file holding `<HTTP code> <body>`; `POST ?change=X` sets it to `200 X`.
struct ScriptedAgent {
    addr: std::net::SocketAddr,
    answer: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

const SCRIPTED_AGENT: &str = r#"
import http.server, sys, urllib.parse
answer_file, token = sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def authorized(self):
        if self.headers.get("Authorization") == "token " + token:
            return True
        self.reply(401, "invalid or missing token")
        return False
    def do_GET(self):
        if self.authorized():
            code, body = open(answer_file).read().split(" ", 1)
            self.reply(int(code), body)
    def do_POST(self):
        if self.authorized():
            change = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).get("change", [""])[0]
            open(answer_file, "w").write("200 " + change)
            self.reply(200, change)
    def log_message(self, *args):
        pass
host, port = sys.argv[1].rsplit(":", 1)
http.server.ThreadingHTTPServer((host, int(port)), H).serve_forever()
"#;

impl ScriptedAgent {
    fn start(ip: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr: std::net::SocketAddr =
            format!("{ip}:{}", understudy::controlplane::free_port().unwrap()).parse().unwrap();
        let answer = dir.path().join("answer");
        std::fs::write(&answer, "200 BACKUP").unwrap();
        let child = std::process::Command::new("python3")
            .args(["-c", SCRIPTED_AGENT, &addr.to_string(), answer.to_str().unwrap(), token])
            .spawn()
            .expect("python3");
        Self { addr, answer, child, _dir: dir }
    }

    fn answer(&self, code: u16, body: &str) {
        std::fs::write(&self.answer, format!("{code} {body}")).unwrap();
    }
}

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent cluster "app" of two members, the first with the higher priority (so it is
/// elected first), with the given failover settings.
fn preferred_first(
    first: (&str, std::net::SocketAddr),
    second: (&str, std::net::SocketAddr),
    failover: serde_json::Value,
) -> HaCluster {
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": "app"},
        "spec": {
            "engine": "Agent",
            "secretRef": {"name": "agent-token"},
            "shards": [{"name": "main", "members": [
                {"name": first.0, "endpoint": first.1.to_string(), "priority": 200},
                {"name": second.0, "endpoint": second.1.to_string(), "priority": 100},
            ]}],
            "failover": failover,
        }
    }))
    .unwrap()
}

/// A main whose agent answers something other than MAIN/BACKUP, or a 5xx, is not trusted
/// in its last role and not failed over from on a guess: Ready=False AmbiguousAnswer says
/// who said what, and the other member stays BACKUP.
#[tokio::test]
async fn an_ambiguous_answer_is_reported_and_nothing_is_promoted_on_it() {
    let client = support::client().await;
    let ns = support::namespace(&client, "agents-ambiguous").await;
    secret(&client, &ns, TOKEN).await;
    let scripted = ScriptedAgent::start("127.0.0.41", TOKEN);
    let reference = SupervisedAgent::start("127.0.0.42", TOKEN);
    eventually(WAIT, "reference agent up", || reference.status(TOKEN)).await;
    eventually(WAIT, "scripted agent up", || async {
        reqwest::Client::new().get(format!("http://{}/rest/ha/status", scripted.addr)).send().await.ok()
    })
    .await;
    let cluster = preferred_first(
        ("scripted", scripted.addr),
        ("reference", reference.addr),
        json!({"heartbeatInterval": "200ms", "failureThreshold": 3}),
    );
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &cluster).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    assert_eq!(wait_primary(&api, "app", "main", None).await, "scripted", "the higher priority wins");
    let epoch = api.get("app").await.unwrap().status.unwrap().shards[0].epoch;

    for (code, body, shows) in [(200, "PRIMARY", "\"PRIMARY\""), (503, "hook still running", "503")] {
        scripted.answer(code, body);
        let msg = eventually(WAIT, "Ready=False AmbiguousAnswer naming what it said", || async {
            let st = api.get("app").await.ok()?.status?;
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == "AmbiguousAnswer" && ready.status == "False" && ready.message.contains(shows))
                .then(|| ready.message.clone())
        })
        .await;
        assert!(msg.contains("scripted:"), "{msg}");
        // Longer than failureThreshold heartbeats: an ambiguous main is not a dead one.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(reference.status(TOKEN).await.map(|s| s.1).as_deref(), Some("BACKUP"), "nothing promoted");
        let st = api.get("app").await.unwrap().status.unwrap();
        assert_eq!(st.shards[0].epoch, epoch, "no promotion was recorded");
        let m = st.shards[0].members.iter().find(|m| m.name == "scripted").unwrap();
        assert!(!m.healthy, "an ambiguous member is not healthy");
    }

    // It answers plainly again: Ready again, with the same main.
    scripted.answer(200, "MAIN");
    eventually(WAIT, "Ready=True again", || async {
        let st = api.get("app").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "True").then_some(())
    })
    .await;
    let st = api.get("app").await.unwrap().status.unwrap();
    assert_eq!(st.shards[0].current_primary.as_deref(), Some("scripted"));
    assert_eq!(st.shards[0].epoch, epoch);
    operator.stop().await;
}

/// A TCP proxy to `target` that holds everything `target` sends for `delay` before passing it
/// on (a slow network path, for real): a replica attached through it is always `delay`
/// behind its primary.
async fn delaying_proxy(ip: &str, target: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::TcpStream::connect(target).await else { continue };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut up_rx, mut up_tx) = upstream.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut client_rx, &mut up_tx).await });
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = up_rx.read(&mut buf).await {
                    if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((at, bytes)) = rx.recv().await {
                    tokio::time::sleep_until(at).await;
                    if client_tx.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The hooks of an agent whose "database" is the redis-server `own`, with `peer` the other
/// member's: promote = `REPLICAOF NO ONE`; demote = replicate the peer, then unpause; with
/// `drain`, drain = `CLIENT PAUSE WRITE` (the offset stops moving), resume = unpause, and the
/// position is the server's `master_repl_offset`.
fn redis_hooks(own: &RedisServer, peer: &RedisServer, drain: bool) -> Vec<String> {
    let cli = |s: &RedisServer| format!("redis-cli -h {} -p {}", s.ip, s.port);
    let (me, other) = (cli(own), peer);
    let mut args = vec![
        "--on-promote".into(),
        format!("{me} REPLICAOF NO ONE | grep -q OK"),
        "--on-demote".into(),
        format!("{me} REPLICAOF {} {} | grep -q OK && {me} CLIENT UNPAUSE", other.ip, other.port),
        "--exit-on-demote".into(),
    ];
    if drain {
        args.extend([
            "--on-drain".into(),
            format!("{me} CLIENT PAUSE 60000 WRITE | grep -q OK"),
            "--on-resume".into(),
            format!("{me} CLIENT UNPAUSE"),
            "--position".into(),
            format!("{me} INFO replication | sed -n 's/^master_repl_offset:\\([0-9]*\\).*/\\1/p'"),
        ]);
    }
    args
}

/// What a switchover under a writer did.
struct SwitchoverUnderLoad {
    acked: usize,
    acked_after: usize,
    lost: Vec<i64>,
    fence: String,
}

/// Two agents in front of two redis servers (a is MAIN, b its replica 300 ms behind), a writer
/// appending to whichever server takes its writes, a Switchover FailoverRequest to b, then
/// every acknowledged write looked for on b.
async fn switchover_under_load(ns_prefix: &str, ips: [&str; 2], drain: bool) -> SwitchoverUnderLoad {
    use understudy::resources::failover_request::{FailoverRequest, RequestPhase};

    use crate::failover_request::request;
    let client = support::client().await;
    let ns = support::namespace(&client, ns_prefix).await;
    secret(&client, &ns, TOKEN).await;
    let port = || understudy::controlplane::free_port().unwrap();
    let servers = [RedisServer::start_on(ips[0], port(), None), RedisServer::start_on(ips[1], port(), None)];
    let agents = [
        SupervisedAgent::start_with(ips[0], TOKEN, redis_hooks(&servers[0], &servers[1], drain)),
        SupervisedAgent::start_with(ips[1], TOKEN, redis_hooks(&servers[1], &servers[0], drain)),
    ];
    for a in &agents {
        eventually(WAIT, "agent up", || a.status(TOKEN)).await;
    }
    let cluster = preferred_first(
        ("a", agents[0].addr),
        ("b", agents[1].addr),
        json!({"heartbeatInterval": "500ms", "failureThreshold": 5, "stepTimeout": "20s"}),
    );
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &cluster).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    assert_eq!(wait_primary(&api, "app", "main", None).await, "a");
    // b replicates a through a path that delays what a sends by 300 ms.
    let a_addr: std::net::SocketAddr = servers[0].endpoint().parse().unwrap();
    let proxy = delaying_proxy(ips[1], a_addr, Duration::from_millis(300)).await;
    let _: () =
        servers[1].cmd(redis::cmd("REPLICAOF").arg(proxy.ip().to_string()).arg(proxy.port())).await.unwrap();
    eventually(WAIT, "b replicates a through the slow path", || async {
        let info = servers[1].replication().await?;
        (info.get("master_link_status")? == "up").then_some(())
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The writer: RPUSH a new number to the server it writes to; on a refusal or no answer
    // within 2 s it turns to the other one. Only an OK counts as acknowledged.
    let writer = {
        let (stop, targets) = (stop.clone(), [servers[0].sample_target(), servers[1].sample_target()]);
        tokio::spawn(async move {
            let (mut acked, mut on) = (Vec::<(i64, usize)>::new(), 0usize);
            let mut conns: [Option<redis::aio::MultiplexedConnection>; 2] = [None, None];
            for i in 0i64.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if conns[on].is_none() {
                    let t = &targets[on];
                    conns[on] = understudy::localredis::redis_conn(&t.0, t.1, None, 2000).await.ok();
                }
                let ok = match conns[on].as_mut() {
                    Some(c) => {
                        let mut push = redis::cmd("RPUSH");
                        push.arg("acked").arg(i);
                        let sent = push.query_async::<i64>(c);
                        matches!(tokio::time::timeout(Duration::from_secs(2), sent).await, Ok(Ok(_)))
                    }
                    None => false,
                };
                if ok {
                    acked.push((i, on));
                } else {
                    conns[on] = None;
                    on = 1 - on;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            acked
        })
    };
    eventually(WAIT, "the writer is writing", || async {
        let n: i64 = servers[0].cmd(redis::cmd("LLEN").arg("acked")).await.ok()?;
        (n > 200).then_some(())
    })
    .await;

    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    frs.create(
        &PostParams::default(),
        &request("move", json!({"type": "Switchover", "items": [{"cluster": "app", "candidate": "b"}]})),
    )
    .await
    .unwrap();
    let fr = eventually(WAIT, "the switchover finished", || async {
        let fr = frs.get("move").await.ok()?;
        let phase = fr.status.as_ref()?.phase?;
        matches!(phase, RequestPhase::Succeeded | RequestPhase::Failed | RequestPhase::RolledBack)
            .then_some(fr)
    })
    .await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Succeeded), "{st:?}");
    let fence = st
        .task
        .iter()
        .flat_map(|t| t.subtasks.iter())
        .find(|t| t.name == "fence")
        .and_then(|t| t.message.clone())
        .unwrap_or_default();
    assert_eq!(wait_primary(&api, "app", "main", None).await, "b");
    // Writes go on against the new main for a while.
    eventually(WAIT, "writes acknowledged by b", || async {
        let n: i64 = servers[1].cmd(redis::cmd("LLEN").arg("acked")).await.ok()?;
        let role = servers[1].role().await?;
        (role == "master" && n > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    let on_b: Vec<i64> = servers[1].cmd(redis::cmd("LRANGE").arg("acked").arg(0).arg(-1)).await.unwrap();
    let on_b: std::collections::HashSet<i64> = on_b.into_iter().collect();
    let lost = acked.iter().filter(|(i, _)| !on_b.contains(i)).map(|(i, _)| *i).collect();
    operator.stop().await;
    SwitchoverUnderLoad {
        acked: acked.len(),
        acked_after: acked.iter().filter(|(_, on)| *on == 1).count(),
        lost,
        fence,
    }
}

/// Agents advertising drain: the switchover pauses the old main's writes (its drain hook),
/// waits until the candidate's position reaches the old main's, demotes, promotes: not one
/// acknowledged write is missing from the new main, and the record says it was drained.
#[tokio::test]
async fn a_switchover_drains_agents_that_can_and_loses_no_acknowledged_write() {
    let r = switchover_under_load("agents-drain", ["127.0.0.51", "127.0.0.52"], true).await;
    assert!(
        r.acked > 200 && r.acked_after > 0,
        "the writer wrote through it: {} / {}",
        r.acked,
        r.acked_after
    );
    assert!(r.lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", r.lost.len(), r.acked, r.lost);
    assert!(r.fence.contains("drained"), "{}", r.fence);
}

/// Agents without the drain step still switch over (demote, then promote), and the record
/// says that no drain was done and why. The writes the candidate had not received yet are
/// lost here — what the drain prevents (the count is printed; it depends on timing).
#[tokio::test]
async fn a_switchover_without_drain_falls_back_and_says_so() {
    let r = switchover_under_load("agents-nodrain", ["127.0.0.53", "127.0.0.54"], false).await;
    assert!(r.fence.contains("without a drain") && r.fence.contains("drain step"), "{}", r.fence);
    println!("without drain: {} of {} acknowledged writes lost", r.lost.len(), r.acked);
}

/// A TCP proxy to `target` that can be cut: from then on it passes nothing on, either way,
/// and holds every connection open unanswered (a path that went dark, not one refused).
struct CuttableProxy {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl CuttableProxy {
    async fn start(ip: &str, target: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = c.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(target).await else { return };
                    let (from_client, to_client) = client.into_split();
                    let (from_up, to_up) = upstream.into_split();
                    let pass = |mut rx: tokio::net::tcp::OwnedReadHalf,
                                mut tx: tokio::net::tcp::OwnedWriteHalf,
                                cut: Arc<std::sync::atomic::AtomicBool>| async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = rx.read(&mut buf).await {
                            if cut.load(Ordering::SeqCst) {
                                // Dark: keep both ends open, pass nothing on.
                                std::future::pending::<()>().await;
                            }
                            if tx.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::join!(pass(from_client, to_up, cut.clone()), pass(from_up, to_client, cut));
                });
            }
        });
        Self { addr, cut }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// The last `date +%s%N` a hook appended to `file`, in nanoseconds.
fn last_stamp(file: &std::path::Path) -> Option<u128> {
    std::fs::read_to_string(file).ok()?.lines().last()?.trim().parse().ok()
}

/// The self-fencing lease: a lease that breaks the timing rule is refused (Ready=False
/// InvalidAgentLease, nothing touched); with a valid one a healthy main keeps its role, and a
/// main whose path to the operator goes dark demotes itself (its on-demote hook runs) before
/// the other agent's on-promote hook runs; never two MAINs.
#[tokio::test]
async fn an_agent_main_cut_off_from_the_operator_demotes_itself_before_another_is_promoted() {
    let client = support::client().await;
    let ns = support::namespace(&client, "agents-lease").await;
    secret(&client, &ns, TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let stamp = |what: &str, who: &str| dir.path().join(format!("{what}-{who}"));
    let hooks = |who: &str| {
        vec![
            "--on-promote".to_owned(),
            format!("date +%s%N >> '{}'", stamp("promoted", who).display()),
            "--on-demote".to_owned(),
            format!("date +%s%N >> '{}'", stamp("demoted", who).display()),
        ]
    };
    let agents = [
        SupervisedAgent::start_with("127.0.0.61", TOKEN, hooks("a")),
        SupervisedAgent::start_with("127.0.0.62", TOKEN, hooks("b")),
    ];
    for a in &agents {
        eventually(WAIT, "agent up", || a.status(TOKEN)).await;
    }
    // The operator reaches each agent only through a path the test can cut.
    let paths = [
        CuttableProxy::start("127.0.0.61", agents[0].addr).await,
        CuttableProxy::start("127.0.0.62", agents[1].addr).await,
    ];
    // 0.9 × 300 ms × (8 − 1) = 1.89 s before another may be promoted: the lease may be 1.59 s.
    let failover =
        |lease: &str| json!({"heartbeatInterval": "300ms", "failureThreshold": 8, "agentLease": lease});
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &preferred_first(("a", paths[0].addr), ("b", paths[1].addr), failover("1600ms")),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let msg = eventually(WAIT, "Ready=False InvalidAgentLease", || async {
        let st = api.get("app").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "InvalidAgentLease").then(|| ready.message.clone())
    })
    .await;
    assert!(msg.contains("too long") && msg.contains("1.59s"), "{msg}");
    for a in &agents {
        assert_eq!(a.status(TOKEN).await.map(|s| s.1).as_deref(), Some("BACKUP"), "nothing touched");
    }

    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"failover": failover("1200ms")}})),
    )
    .await
    .unwrap();
    assert_eq!(wait_primary(&api, "app", "main", None).await, "a");
    let (max_mains, sampler) = main_sampler(agents.iter().map(|a| a.addr).collect());
    // Renewed by every heartbeat, the lease keeps a healthy main MAIN (3 s = 2.5 leases).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agents[0].status(TOKEN).await.map(|s| s.1).as_deref(), Some("MAIN"));
    assert!(last_stamp(&stamp("demoted", "a")).is_none(), "a healthy main did not demote itself");

    paths[0].cut();
    assert_eq!(wait_primary(&api, "app", "main", Some("a")).await, "b");
    let demoted = last_stamp(&stamp("demoted", "a")).expect("the cut-off main demoted itself");
    let promoted = last_stamp(&stamp("promoted", "b")).expect("b was promoted");
    assert!(
        demoted < promoted,
        "a demoted itself {} ms after b's promotion began",
        (demoted as i128 - promoted as i128) / 1_000_000
    );
    println!("a demoted itself {} ms before b's on-promote hook ran", (promoted - demoted) / 1_000_000);
    eventually(WAIT, "a answers BACKUP (restarted by its supervisor)", || async {
        (agents[0].status(TOKEN).await?.1 == "BACKUP").then_some(())
    })
    .await;
    sampler.abort();
    assert_eq!(max_mains.load(Ordering::SeqCst), 1, "never two MAINs at any sampled instant");
    let st = api.get("app").await.unwrap().status.unwrap();
    let fence = st.last_failover.iter().flat_map(|f| f.steps.iter()).find(|s| s.name == "fence");
    let fence = fence.and_then(|s| s.message.clone()).unwrap_or_default();
    println!("fence step: {fence}");
    // What happened, not what a redis member would have had done to it: nothing is queued on
    // a silent agent, and it fences itself by its lease.
    assert!(fence.contains("no demotion could be queued"), "{fence}");
    assert!(fence.contains("its lease from the operator runs out"), "{fence}");
    operator.stop().await;
}
