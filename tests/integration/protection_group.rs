//! ProtectionGroup (issue 5): planned site failover between two sites of Redis HaClusters —
//! within one control plane (two namespaces) and across two control planes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::{
    controlplane::{ControlPlane, Options},
    resources::{
        HaCluster, ProtectionGroup,
        protection_group::{ProtectionPhase, SiteRole},
    },
};

use crate::{
    hacluster_redis::{cluster, observe_heartbeats, wait_follows, wait_primary},
    support::{self, Operator, Process, RedisServer, RoleSampler, eventually, redis_conn},
};

const WAIT: Duration = Duration::from_secs(90);

/// Two members per site for one pair: (source servers, target servers).
pub(crate) struct PairServers {
    name: String,
    pub(crate) src: [RedisServer; 2],
    pub(crate) dr: [RedisServer; 2],
}

impl PairServers {
    pub(crate) fn start(name: &str) -> Self {
        Self {
            name: name.into(),
            src: [RedisServer::start(None), RedisServer::start(None)],
            dr: [RedisServer::start(None), RedisServer::start(None)],
        }
    }
    pub(crate) fn all(&self) -> Vec<&RedisServer> {
        self.src.iter().chain(self.dr.iter()).collect()
    }
    pub(crate) fn sampler(&self) -> RoleSampler {
        RoleSampler::start(self.all().iter().map(|s| s.sample_target()).collect())
    }
    fn source_cluster(&self) -> HaCluster {
        let m = [("s-0", &self.src[0]), ("s-1", &self.src[1])];
        cluster(&self.name, &[("s0", &m)], json!({"heartbeatInterval": "200ms"}))
    }
    pub(crate) fn target_cluster(&self) -> HaCluster {
        let m = [("t-0", &self.dr[0]), ("t-1", &self.dr[1])];
        cluster(&format!("{}-dr", self.name), &[("s0", &m)], json!({"heartbeatInterval": "200ms"}))
    }
    /// The server acting as master, if exactly one does.
    pub(crate) async fn master(&self) -> Option<&RedisServer> {
        let mut found = Vec::new();
        for s in self.all() {
            if s.role().await.as_deref() == Some("master") {
                found.push(s);
            }
        }
        (found.len() == 1).then(|| found[0])
    }
}

pub(crate) fn pg(
    name: &str,
    src_ns: &str,
    dr_ns: &str,
    pairs: &[&str],
    dr_secret: Option<&str>,
) -> ProtectionGroup {
    let mut target = json!({"namespace": dr_ns});
    if let Some(s) = dr_secret {
        target["kubeconfigSecretRef"] = json!({"name": s});
    }
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup",
        "metadata": {"name": name},
        "spec": {
            "sites": {"source": {"namespace": src_ns}, "target": target},
            "pairs": pairs.iter().map(|p| json!({"source": p, "target": format!("{p}-dr")})).collect::<Vec<_>>(),
            "prioritySite": "Source",
            "timeoutSeconds": 60,
        }
    }))
    .unwrap()
}

/// Wait for phase `protected` with production at `site` and every pair replicating.
pub(crate) async fn wait_protected(
    pgs: &Api<ProtectionGroup>,
    name: &str,
    site: SiteRole,
) -> ProtectionGroup {
    eventually(WAIT, &format!("{name} protected with production at {site:?}"), || async {
        let g = pgs.get(name).await.ok()?;
        let st = g.status.clone()?;
        (st.phase == Some(ProtectionPhase::Protected)
            && st.production_site == Some(site)
            && !st.pairs.is_empty()
            && st.pairs.iter().all(|p| p.state == "Replicating" && p.production == Some(site)))
        .then_some(g)
    })
    .await
}

pub(crate) async fn set_priority(pgs: &Api<ProtectionGroup>, name: &str, site: &str) {
    pgs.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"prioritySite": site}})))
        .await
        .unwrap();
}

/// Writes `prefix:<seq>` every 2 ms to whichever server of the pair is master; remembers
/// every acknowledged sequence number.
pub(crate) struct SiteWriter {
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SiteWriter {
    pub(crate) fn start(prefix: &str, servers: Vec<(String, u16)>) -> Self {
        let (acked, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (a, s, prefix) = (acked.clone(), stop.clone(), prefix.to_owned());
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            let mut conn = None;
            while !s.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if conn.is_none() {
                    for (ip, port) in &servers {
                        let Ok(mut c) = redis_conn(ip, *port, None, 200).await else { continue };
                        let info: String = redis::cmd("INFO")
                            .arg("replication")
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        if info.contains("role:master") {
                            conn = Some(c);
                            break;
                        }
                    }
                    continue;
                }
                let c = conn.as_mut().unwrap();
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("{prefix}:{seq}")).arg(seq).query_async(c).await;
                match r {
                    Ok(()) => {
                        a.lock().unwrap().push(seq);
                        seq += 1;
                    }
                    Err(_) => conn = None,
                }
            }
        });
        Self { acked, stop, task }
    }

    pub(crate) async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// How many of the acknowledged keys are missing on `server`.
pub(crate) async fn missing(server: &RedisServer, prefix: &str, acked: &[u64]) -> usize {
    missing_seqs(server, prefix, acked).await.len()
}

/// The acknowledged sequence numbers whose keys are missing on `server`.
pub(crate) async fn missing_seqs(server: &RedisServer, prefix: &str, acked: &[u64]) -> Vec<u64> {
    let mut c = server.connect().await.unwrap();
    let mut out = Vec::new();
    for chunk in acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|s| format!("{prefix}:{s}")).collect();
        let vals: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await.unwrap();
        out.extend(chunk.iter().zip(&vals).filter(|(_, v)| v.is_none()).map(|(s, _)| *s));
    }
    out
}

/// The bytes `SET <prefix>:<seq> <seq>` (what [`SiteWriter`] writes) takes in Redis's
/// replication stream.
pub(crate) fn replicated_bytes(prefix: &str, seqs: &[u64]) -> i64 {
    let bulk = |s: &str| (1 + s.len().to_string().len() + 2 + s.len() + 2) as i64;
    seqs.iter().map(|s| 4 + bulk("SET") + bulk(&format!("{prefix}:{s}")) + bulk(&s.to_string())).sum()
}

/// The recorded leader of a (possibly standby) cluster once it is healthy.
pub(crate) async fn leader(api: &Api<HaCluster>, name: &str) -> String {
    eventually(WAIT, &format!("a healthy leader of {name}"), || async {
        let st = api.get(name).await.ok()?.status?;
        let s = st.shards.first()?;
        let l = s.current_primary.clone()?;
        (s.target_primary.is_none() && s.members.iter().any(|m| m.name == l && m.healthy)).then_some(l)
    })
    .await
}

/// Create both clusters of each pair (the PG then makes the DR side standby).
pub(crate) async fn create_pairs(src: &Api<HaCluster>, dr: &Api<HaCluster>, pairs: &[&PairServers]) {
    for p in pairs {
        src.create(&PostParams::default(), &p.source_cluster()).await.unwrap();
        dr.create(&PostParams::default(), &p.target_cluster()).await.unwrap();
    }
}

/// One pair `name` (source) / `name-dr` (target) in two fresh namespaces and the group `pg`
/// protecting it, production at the source; no operator yet.
pub(crate) struct OnePair {
    pub(crate) src_ns: String,
    pub(crate) dr_ns: String,
    pub(crate) servers: PairServers,
    pub(crate) src: Api<HaCluster>,
    pub(crate) dr: Api<HaCluster>,
    pub(crate) pgs: Api<ProtectionGroup>,
}

pub(crate) async fn one_pair(client: &Client, prefix: &str, name: &str) -> OnePair {
    let src_ns = support::namespace(client, prefix).await;
    let dr_ns = support::namespace(client, &format!("{prefix}-dr")).await;
    let servers = PairServers::start(name);
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    create_pairs(&src, &dr, &[&servers]).await;
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, &dr_ns, &[name], None)).await.unwrap();
    OnePair { src_ns, dr_ns, servers, src, dr, pgs }
}

#[tokio::test]
async fn planned_site_failover_and_failback_with_two_pairs_loses_nothing() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-src").await;
    let dr_ns = support::namespace(&client, "pg-dr").await;
    let (a, b) = (PairServers::start("a"), PairServers::start("b"));
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    create_pairs(&src, &dr, &[&a, &b]).await;
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, &dr_ns, &["a", "b"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);

    let g = wait_protected(&pgs, "pg", SiteRole::Source).await;
    assert_eq!(g.status.unwrap().replication_direction.as_deref(), Some("source-to-target"));
    let dr_a = dr.get("a-dr").await.unwrap();
    assert_eq!(dr_a.standby().and_then(|s| s.cluster.as_deref()), Some("a"), "the DR side is a standby");
    assert!(dr_a.spec.standby.is_none(), "the relation is published in status, the spec is the user's");
    assert_eq!(
        dr_a.status.as_ref().and_then(|s| s.protection.as_ref()).map(|p| p.group.as_str()),
        Some(format!("{src_ns}/pg").as_str())
    );
    for p in [&a, &b] {
        let m = p.master().await.expect("one master per pair");
        assert!(p.src.iter().any(|s| s.port == m.port), "production is the source site");
        let _: () = m.cmd(redis::cmd("SET").arg("before").arg(&p.name)).await.unwrap();
    }

    // Planned failover to the target site under a steady writer; sample roles throughout.
    let (sa, sb) = (a.sampler(), b.sampler());
    let writer = SiteWriter::start("w", a.all().iter().map(|s| ("127.0.0.1".to_owned(), s.port)).collect());
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_priority(&pgs, "pg", "Target").await;
    let g = wait_protected(&pgs, "pg", SiteRole::Target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writer.stop().await;
    let st = g.status.unwrap();
    assert_eq!(st.replication_direction.as_deref(), Some("target-to-source"));
    assert!(st.job_id.is_some() && st.last_write_pause_ms.is_some(), "{st:?}");
    for p in [&a, &b] {
        let m = p.master().await.expect("one master per pair after the move");
        assert!(p.dr.iter().any(|s| s.port == m.port), "{}: production moved to the target site", p.name);
        let v: Option<String> = m.cmd(redis::cmd("GET").arg("before")).await.unwrap();
        assert_eq!(
            v.as_deref(),
            Some(p.name.as_str()),
            "writes before the move are on the new production site"
        );
        // The old production leader replicates from the new one.
        let old_leader = leader(&src, &p.name).await;
        let old = if old_leader == "s-0" { &p.src[0] } else { &p.src[1] };
        wait_follows(old, m).await;
    }
    let ma = a.master().await.unwrap();
    assert!(acked.len() > 100, "the writer made progress: {}", acked.len());
    assert_eq!(missing(ma, "w", &acked).await, 0, "every acknowledged write survives the site failover");
    assert_eq!(sa.max(), 1, "pair a never had two writable sites");
    assert_eq!(sb.max(), 1, "pair b never had two writable sites");
    assert!(sa.count() > 10);
    assert!(src.get("a").await.unwrap().standby().is_some(), "the old production cluster is a standby now");
    assert!(dr.get("a-dr").await.unwrap().standby().is_none());

    // A tool that owns the whole spec (kubectl replace, a GitOps sync) puts the user's
    // manifests back, which say nothing about standby: nothing moves, nothing fights.
    for _ in 0..3 {
        for (api, name) in [(&src, "a"), (&dr, "a-dr"), (&src, "b"), (&dr, "b-dr")] {
            // A status write between the read and the replace is a conflict, as for any
            // client that replaces: read again and replace again.
            for attempt in 1.. {
                let mut c = api.get(name).await.unwrap();
                c.spec.standby = None;
                c.metadata.managed_fields = None;
                let pp = PostParams { field_manager: Some("gitops".into()), ..Default::default() };
                match api.replace(name, &pp, &c).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 409 && attempt < 10 => continue,
                    Err(e) => panic!("replacing {name}: {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for p in [&a, &b] {
        let m = p.master().await.expect("one master per pair after the re-apply");
        assert!(p.dr.iter().any(|s| s.port == m.port), "{}: production stays on the target site", p.name);
    }
    assert!(src.get("a").await.unwrap().standby().is_some(), "the old production cluster is still a standby");
    for (api, name) in [(&src, "a"), (&dr, "a-dr")] {
        let c = api.get(name).await.unwrap();
        let spec_writers: Vec<_> = c
            .managed_fields()
            .iter()
            .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").is_some()))
            .filter_map(|m| m.manager.clone())
            .filter(|m| m.starts_with("understudy"))
            .collect();
        assert!(spec_writers.is_empty(), "{name}: the operator wrote the spec: {spec_writers:?}");
    }
    assert_eq!(sa.max(), 1, "pair a never had two writable sites, re-apply included");
    let g = pgs.get("pg").await.unwrap();
    assert_eq!(g.status.as_ref().and_then(|s| s.phase), Some(ProtectionPhase::Protected), "{:?}", g.status);

    // Fail back to the source site; replication continues in the new direction meanwhile.
    let _: () = ma.cmd(redis::cmd("SET").arg("on-dr").arg("1")).await.unwrap();
    set_priority(&pgs, "pg", "Source").await;
    let g = wait_protected(&pgs, "pg", SiteRole::Source).await;
    assert_eq!(g.status.unwrap().replication_direction.as_deref(), Some("source-to-target"));
    let m = a.master().await.expect("one master");
    assert!(a.src.iter().any(|s| s.port == m.port));
    let v: Option<String> = m.cmd(redis::cmd("GET").arg("on-dr")).await.unwrap();
    assert_eq!(v.as_deref(), Some("1"), "writes made at the DR site came back");
    assert_eq!(missing(m, "w", &acked).await, 0);
    assert_eq!((sa.max(), sb.max()), (1, 1));
    // A planned move makes the other site primary on purpose: no cluster took it for a
    // forced failover it had to fence itself from.
    for ns in [&src_ns, &dr_ns] {
        let events = support::kubectl(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"]);
        assert!(!events.contains("SiteSuperseded"), "{ns}: a planned move was taken for a forced one");
    }
    let yields = src.get("a").await.unwrap().status.and_then(|s| s.protection).map(|p| p.yield_to);
    assert_eq!(
        yields.map(|y| y.len()),
        Some(2),
        "the production side lists the DR members once they replicate"
    );
    operator.stop().await;
}

#[tokio::test]
async fn refused_without_pairs_or_protection_and_error_reversing_recovers_when_reasserted() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-c-src").await;
    let dr_ns = support::namespace(&client, "pg-c-dr").await;
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);

    // No pairs: the API server refuses the planned failover.
    pgs.create(&PostParams::default(), &pg("empty", &src_ns, &dr_ns, &[], None)).await.unwrap();
    let err = pgs
        .patch("empty", &PatchParams::default(), &Patch::Merge(json!({"spec": {"prioritySite": "Target"}})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs replication pairs"), "{err}");

    let c = PairServers::start("c");
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    create_pairs(&src, &dr, &[&c]).await;
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, &dr_ns, &["c"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let sampler = c.sampler();
    let prod = c.master().await.unwrap().port;

    // Not protected (the DR site is frozen): refused with a condition, nothing touched.
    for s in &c.dr {
        s.signal(libc::SIGSTOP);
    }
    eventually(WAIT, "the group notices the pair is broken", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        (st.phase == Some(ProtectionPhase::Pending)).then_some(())
    })
    .await;
    set_priority(&pgs, "pg", "Target").await;
    eventually(WAIT, "a FailoverAllowed=False condition", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        let cond = st.conditions.iter().find(|c| c.type_ == "FailoverAllowed")?;
        (cond.status == "False"
            && cond.reason == "NotProtected"
            && cond.message.contains("only in phase Protected"))
        .then_some(())
    })
    .await;
    assert_eq!(c.master().await.map(|m| m.port), Some(prod), "nothing was touched");
    set_priority(&pgs, "pg", "Source").await;
    for s in &c.dr {
        s.signal(libc::SIGCONT);
    }
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let dr_leader = leader(&dr, "c-dr").await;
    let dl = if dr_leader == "t-0" { &c.dr[0] } else { &c.dr[1] };

    // The DR leader cannot be promoted (its ACL forbids REPLICAOF): error-reversing, and the
    // production site keeps (gets back) its writes.
    let _: () = dl.cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("-replicaof")).await.unwrap();
    set_priority(&pgs, "pg", "Target").await;
    let st = eventually(WAIT, "error-reversing", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        (st.phase == Some(ProtectionPhase::ErrorReversing)).then_some(st)
    })
    .await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "PromoteFailed", "{ready:?}");
    assert!(ready.message.contains(&dr_leader), "{}", ready.message);
    assert_eq!(st.production_site, Some(SiteRole::Source));
    let m = eventually(WAIT, "the source primary writable again", || async {
        let m = c.master().await?;
        let r: redis::RedisResult<()> = m.cmd(redis::cmd("SET").arg("after-failure").arg("1")).await;
        (r.is_ok() && m.port == prod).then_some(m.port)
    })
    .await;
    assert_eq!(m, prod);
    // It stays in error-reversing (no automatic retries that would pause writes again).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pgs.get("pg").await.unwrap().status.unwrap().phase, Some(ProtectionPhase::ErrorReversing));

    // Fix the cause and re-assert the spec: the move completes.
    let _: () = dl.cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("+replicaof")).await.unwrap();
    pgs.patch(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"understudy.dev/retry": "1"}}})),
    )
    .await
    .unwrap();
    wait_protected(&pgs, "pg", SiteRole::Target).await;
    let m = c.master().await.unwrap();
    assert_eq!(m.port, dl.port, "the DR leader is production now");
    let v: Option<String> = m.cmd(redis::cmd("GET").arg("after-failure")).await.unwrap();
    assert_eq!(v.as_deref(), Some("1"), "writes made after the failed attempt were kept");
    assert_eq!(sampler.max(), 1, "never two writable sites");
    operator.stop().await;
}

/// Another site: its own kube-apiserver + etcd with the CRDs and the namespace `ns`, and a
/// Secret `ns` in `local_ns` (on the shared control plane) holding its kubeconfig.
pub(crate) async fn remote_site(client: &Client, local_ns: &str, ns: &str) -> (ControlPlane, Client) {
    let remote = ControlPlane::start(Options::default()).await.expect("second control plane");
    remote.install_crds(&support::crds_dir()).await.unwrap();
    let rclient: Client = remote.client().await.unwrap();
    remote.create_namespace(ns).await.unwrap();
    let kubeconfig = remote.kubeconfig_inline().unwrap();
    Api::<Secret>::namespaced(client.clone(), local_ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta { name: Some(ns.into()), ..Default::default() },
                data: Some([("kubeconfig".to_owned(), ByteString(kubeconfig.into_bytes()))].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (remote, rclient)
}

#[tokio::test]
async fn planned_site_failover_across_two_control_planes() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-x-src").await;
    // The DR site: its own kube-apiserver + etcd, its own operator.
    let dr_ns = "dr-site";
    let (remote, rclient) = remote_site(&client, &src_ns, dr_ns).await;
    let kubeconfig = remote.kubeconfig_inline().unwrap();

    let x = PairServers::start("x");
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(rclient.clone(), dr_ns);
    create_pairs(&src, &dr, &[&x]).await;
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, dr_ns, &["x"], Some("dr-site"))).await.unwrap();
    let local_op = Operator::start(client.clone(), &src_ns);
    let remote_op = Operator::start(rclient.clone(), dr_ns);

    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let sp = x.master().await.unwrap().endpoint();
    let standby = dr.get("x-dr").await.unwrap().standby().cloned().unwrap();
    assert_eq!(standby.primary_endpoint.as_deref(), Some(sp.as_str()), "across control planes: by endpoint");
    let sampler = x.sampler();
    let writer = SiteWriter::start("x", x.all().iter().map(|s| ("127.0.0.1".to_owned(), s.port)).collect());
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_priority(&pgs, "pg", "Target").await;
    wait_protected(&pgs, "pg", SiteRole::Target).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writer.stop().await;
    let m = x.master().await.expect("one master");
    assert!(x.dr.iter().any(|s| s.port == m.port), "production moved to the remote site");
    assert_eq!(missing(m, "x", &acked).await, 0);
    assert!(acked.len() > 50);
    assert_eq!(sampler.max(), 1);
    let back = src.get("x").await.unwrap().standby().cloned().unwrap();
    assert_eq!(
        back.primary_endpoint.as_deref(),
        Some(m.endpoint().as_str()),
        "the source follows the remote"
    );
    // The remote cluster's monitor sees its own primary.
    wait_primary(&dr, "x-dr", "s0", None).await;

    // Credentials never leak into status or Events.
    let key_line = kubeconfig.lines().find(|l| l.contains("client-key-data")).unwrap();
    let key_b64 = key_line.split(':').nth(1).unwrap().trim();
    let status = serde_json::to_string(&pgs.get("pg").await.unwrap().status).unwrap();
    assert!(!status.contains(key_b64) && !status.contains("PRIVATE KEY"));
    let events = support::kubectl(&["get", "events.events.k8s.io", "-n", &src_ns, "-o", "json"]);
    assert!(events.contains("PlannedFailover"), "events were published");
    assert!(!events.contains(key_b64) && !events.contains("PRIVATE KEY"));
    local_op.stop().await;
    remote_op.stop().await;
}

/// The operator is killed in the middle of a planned site failover; a fresh process resumes
/// from status and finishes it: never two writable sites, no acknowledged write lost.
async fn crash_during_site_failover(point: &str) {
    let client = support::client().await;
    let src_ns = support::namespace(&client, &format!("pg-{point}")).await;
    let dr_ns = support::namespace(&client, &format!("pg-{point}-dr")).await;
    let k = PairServers::start("k");
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    create_pairs(&src, &dr, &[&k]).await;
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, &dr_ns, &["k"], None)).await.unwrap();
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let namespaces = format!("{src_ns},{dr_ns}");
    let args = ["run", "--namespaces", &namespaces, "--listen", &listen];
    let mut doomed =
        Process::understudy_with_env(&args, &format!("pg-{point}"), &[("UNDERSTUDY_CRASH_AT", point)]);
    wait_protected(&pgs, "pg", SiteRole::Source).await;

    let sampler = k.sampler();
    let writer = SiteWriter::start("c", k.all().iter().map(|s| ("127.0.0.1".to_owned(), s.port)).collect());
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_priority(&pgs, "pg", "Target").await;
    doomed.crashed_at(point, WAIT).await;
    let st = pgs.get("pg").await.unwrap().status.unwrap();
    assert_eq!(st.phase, Some(ProtectionPhase::FailingOver), "the move was recorded before it started");

    let _fresh = Process::understudy(&args, &format!("pg-resume-{point}"));
    let g = wait_protected(&pgs, "pg", SiteRole::Target).await;
    assert_eq!(g.status.unwrap().job_id, st.job_id, "the same job was finished, not a new one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writer.stop().await;
    let m = k.master().await.expect("one master");
    assert!(k.dr.iter().any(|s| s.port == m.port), "production is at the target site");
    assert!(acked.len() > 50);
    assert_eq!(missing(m, "c", &acked).await, 0, "every acknowledged write survived the crash");
    assert_eq!(sampler.max(), 1, "never two writable sites");
    for (api, name) in [(&src, "k"), (&dr, "k-dr")] {
        let st = api.get(name).await.unwrap().status.unwrap();
        assert!(st.shards[0].operation.is_none(), "{name}: the lock was released");
    }
}

#[tokio::test]
async fn killed_after_demoting_the_production_site_a_fresh_operator_finishes_the_move() {
    crash_during_site_failover("site-after-demote").await;
}

#[tokio::test]
async fn killed_after_promoting_the_dr_site_a_fresh_operator_finishes_the_move() {
    crash_during_site_failover("site-after-promote").await;
}

/// The group's Ready condition: (status, reason, message).
fn ready_of(
    st: &understudy::resources::protection_group::ProtectionGroupStatus,
) -> Option<(String, String, String)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Wait for phase Error with `reason`; its message.
async fn wait_error(pgs: &Api<ProtectionGroup>, reason: &str) -> String {
    eventually(WAIT, &format!("phase Error, {reason}"), || async {
        let st = pgs.get("pg").await.ok()?.status?;
        let (status, r, message) = ready_of(&st)?;
        (st.phase == Some(ProtectionPhase::Error) && status == "False" && r == reason).then_some(message)
    })
    .await
}

/// The error phase (issue 18): a pair's cluster deleted, then the DR site unreachable (its
/// kubeconfig names an address where no API server answers). Each time the group says
/// `Error` with the reason, touches nothing — the production primary keeps taking writes —
/// and is `Protected` again once the cluster is back or the site reachable.
#[tokio::test]
async fn a_deleted_pair_cluster_and_an_unreachable_site_are_errors_that_touch_nothing() {
    let client = support::client().await;
    let OnePair { src_ns, dr_ns, servers: k, src: _, dr, pgs } = one_pair(&client, "pg-err", "k").await;
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let m = k.master().await.expect("one master");
    let still_production = |what: &'static str| async move {
        assert_eq!(m.role().await.as_deref(), Some("master"), "{what}: production untouched");
        let _: () = m.cmd(redis::cmd("SET").arg("during").arg(what)).await.expect("production takes writes");
    };

    dr.delete("k-dr", &Default::default()).await.unwrap();
    let why = wait_error(&pgs, "ClusterNotFound").await;
    eprintln!("cluster deleted: {why}");
    assert!(why.contains("k-dr") && why.contains("does not exist"), "{why}");
    still_production("the DR cluster deleted").await;
    // Re-created, it elects nothing of its own while the group names it and has not made it a
    // standby again: never a second writable server (before, its bootstrap promoted a DR
    // member for up to one group reconcile).
    let sampler = k.sampler();
    dr.create(&PostParams::default(), &k.target_cluster()).await.unwrap();
    let created = std::time::Instant::now();
    eventually(WAIT, "the group publishes the re-created cluster's side", || async {
        dr.get("k-dr").await.ok()?.status?.protection.map(|_| ())
    })
    .await;
    eprintln!(
        "re-created DR cluster: relation published {} ms after its creation",
        created.elapsed().as_millis()
    );
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    leader(&dr, "k-dr").await;
    observe_heartbeats(&k.dr[0], 10).await;
    assert_eq!(
        sampler.max(),
        1,
        "a re-created DR cluster made a second primary ({} samples)",
        sampler.count()
    );
    drop(sampler);

    let dead = understudy::controlplane::free_port().unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: gone, cluster: {{server: \"https://127.0.0.1:{dead}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: c, context: {{cluster: gone, user: u}}}}]\ncurrent-context: c\n"
    );
    Api::<Secret>::namespaced(client.clone(), &src_ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta { name: Some("gone".into()), ..Default::default() },
                data: Some([("kubeconfig".to_owned(), ByteString(kubeconfig.into_bytes()))].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let target = |r: serde_json::Value| json!({"spec": {"sites": {"target": {"kubeconfigSecretRef": r}}}});
    pgs.patch("pg", &PatchParams::default(), &Patch::Merge(target(json!({"name": "gone"})))).await.unwrap();
    let why = wait_error(&pgs, "SiteUnreachable").await;
    eprintln!("site unreachable: {why}");
    assert!(why.contains("remote site"), "{why}");
    still_production("the DR site unreachable").await;
    pgs.patch("pg", &PatchParams::default(), &Patch::Merge(target(serde_json::Value::Null))).await.unwrap();
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    assert_eq!(k.master().await.map(|x| x.port), Some(m.port), "production never moved");
    operator.stop().await;
}

/// A monitor heartbeat that reads its cluster, is held up (here by a delay point, as by a
/// slow API server), and probes and decides after a move reversed the cluster's relation and
/// released its lock, must not act on the relation it read: it would make the new production
/// primary follow the old one (seen in CI: a forced failover's new primary fenced). Every
/// heartbeat of this operator waits 1.5 s between reading the cluster and probing, so the
/// move lands inside one; the new primary stays writable and nothing acknowledged is lost.
#[tokio::test]
async fn a_heartbeat_held_up_across_a_move_does_not_act_on_the_old_relation() {
    let client = support::client().await;
    let OnePair { src_ns, dr_ns, servers: k, src: _, dr: _, pgs } =
        one_pair(&client, "pg-slowbeat", "k").await;
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let namespaces = format!("{src_ns},{dr_ns}");
    let args = ["run", "--namespaces", &namespaces, "--listen", &listen];
    let operator = Process::understudy_with_env(
        &args,
        "pg-slowbeat",
        &[("UNDERSTUDY_DELAY_AT", "heartbeat-after-read:1500")],
    );
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let sampler = k.sampler();
    let writer = SiteWriter::start("h", k.all().iter().map(|s| ("127.0.0.1".to_owned(), s.port)).collect());
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_priority(&pgs, "pg", "Target").await;
    wait_protected(&pgs, "pg", SiteRole::Target).await;
    let m = k.master().await.expect("one master after the move");
    assert!(k.dr.iter().any(|s| s.port == m.port), "production is at the target site");
    // Two full (held-up) heartbeats of both clusters: the new primary stays the primary.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        assert_eq!(m.role().await.as_deref(), Some("master"), "the new production primary was fenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = writer.stop().await;
    assert!(acked.len() > 50, "the writer wrote through the move: {}", acked.len());
    assert_eq!(missing(m, "h", &acked).await, 0);
    assert_eq!(sampler.max(), 1, "never two writable sites");
    let skipped = operator.log().matches("the standby relation changed during the heartbeat").count();
    eprintln!("heartbeats that saw the relation change under them and waited: {skipped}");
    assert!(skipped > 0, "the move never landed inside a held-up heartbeat: the race was not exercised");
}

/// A planned move whose future is dropped half-way — the operator stopped (as when it loses
/// leadership) while the move waits with production writes paused — gives the writes back at
/// once instead of leaving them paused until the pause expires (up to a minute).
#[tokio::test]
async fn a_move_dropped_while_writes_are_paused_gives_them_back_at_once() {
    let client = support::client().await;
    let OnePair { src_ns, dr_ns, servers: k, src, dr: _, pgs } = one_pair(&client, "pg-drop", "k").await;
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let production = k.master().await.expect("one master");
    // The production site will be cut from its replicas on purpose and written on: without
    // self-fencing, which would refuse those writes.
    let off = json!({"spec": {"failover": {"fencing": {"minReplicasToWrite": 0}}}});
    src.patch("k", &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    eventually(WAIT, "self-fencing off on the production primary", || async {
        let v: Vec<String> =
            production.cmd(redis::cmd("CONFIG").arg("GET").arg("min-replicas-to-write")).await.ok()?;
        (v.get(1)? == "0").then_some(())
    })
    .await;
    // The DR site can no longer catch up: the move will wait (writes paused) for it.
    let _: () = production
        .cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("-sync").arg("-psync"))
        .await
        .unwrap();
    let _: i64 = production.cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica")).await.unwrap();
    for i in 0..20 {
        let _: () = production.cmd(redis::cmd("SET").arg(format!("behind:{i}")).arg(i)).await.unwrap();
    }
    set_priority(&pgs, "pg", "Target").await;
    eventually(WAIT, "the move waiting for the DR site with writes paused", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        (st.step.as_deref()? == "sync").then_some(())
    })
    .await;
    // Writes are paused now: a write waits.
    let mut slow = redis_conn("127.0.0.1", production.port, None, 300).await.unwrap();
    let paused: redis::RedisResult<()> = redis::cmd("SET").arg("during").arg(1).query_async(&mut slow).await;
    assert!(paused.is_err(), "writes are paused while the move waits");
    operator.stop().await;
    let started = std::time::Instant::now();
    let mut conn = redis_conn("127.0.0.1", production.port, None, 5_000).await.unwrap();
    let r: redis::RedisResult<()> = redis::cmd("SET").arg("after-drop").arg(1).query_async(&mut conn).await;
    r.expect("production takes writes again once the move is dropped");
    let took = started.elapsed();
    eprintln!("production writable {took:?} after the operator stopped mid-move");
    assert!(took < Duration::from_secs(3), "writes came back only after {took:?}");
}

/// A ProtectionGroup's status written by someone else never starts a site move: with the
/// pair replicating source → target, a status claiming production is at the target site
/// is corrected from the pairs (the cluster that is not a standby) instead of being "moved
/// back" (a move pauses production writes), the DR cluster stays a standby, and the source
/// keeps the only master.
#[tokio::test]
async fn a_forged_production_site_in_status_moves_nothing() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-f-src").await;
    let dr_ns = support::namespace(&client, "pg-f-dr").await;
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    let f = PairServers::start("f");
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    create_pairs(&src, &dr, &[&f]).await;
    // As an earlier version left it: spec.standby written by the group's field manager.
    let earlier =
        PatchParams { field_manager: Some("understudy-protectiongroup".into()), ..Default::default() };
    dr.patch(
        "f-dr",
        &earlier,
        &Patch::Merge(json!({"spec": {"standby": {"cluster": "f", "namespace": src_ns}}})),
    )
    .await
    .unwrap();
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, &dr_ns, &["f"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    let g = wait_protected(&pgs, "pg", SiteRole::Source).await;
    eventually(WAIT, "the earlier spec.standby moved to status.protection", || async {
        let c = dr.get("f-dr").await.ok()?;
        (c.spec.standby.is_none() && c.standby().and_then(|s| s.cluster.as_deref()) == Some("f"))
            .then_some(())
    })
    .await;
    let sampler = f.sampler();
    let prod = f.master().await.unwrap().port;
    let job = g.status.as_ref().unwrap().job_id.clone();
    let mut pairs = serde_json::to_value(&g.status.as_ref().unwrap().pairs).unwrap();
    pairs[0]["production"] = json!("target");
    pgs.patch_status(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"productionSite": "target", "replicationDirection": "target-to-source", "pairs": pairs}})),
    )
    .await
    .unwrap();
    // Corrected back from the pairs, with no move in between.
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    // And it stays so over several reconciles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let g = pgs.get("pg").await.unwrap();
    let st = g.status.unwrap();
    assert_eq!(st.production_site, Some(SiteRole::Source), "{st:?}");
    assert_eq!(st.phase, Some(ProtectionPhase::Protected), "{st:?}");
    assert_eq!(
        st.job_id, job,
        "no site move was started (each move is a new job, pausing production writes)"
    );
    assert!(dr.get("f-dr").await.unwrap().standby().is_some(), "the DR cluster is still a standby");
    assert_eq!(f.master().await.map(|s| s.port), Some(prod), "the source keeps the only master");
    assert_eq!(sampler.max(), 1, "never two masters");
    operator.stop().await;
}

/// A move advances one recorded step per reconcile: while another operation holds a
/// cluster's lock the group waits in step `lock` (production keeps taking writes, nothing is
/// paused), an operator killed there is replaced by one that goes on from the record, and
/// the move completes once the lock is free.
#[tokio::test]
async fn a_move_waiting_for_a_busy_lock_survives_an_operator_kill_and_completes() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-busy").await;
    let dr_ns = support::namespace(&client, "pg-busy-dr").await;
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    let q = PairServers::start("q");
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    create_pairs(&src, &dr, &[&q]).await;
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, &dr_ns, &["q"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let sampler = q.sampler();

    // Another operation (a kind this control plane cannot look up: alive until its lease
    // ends) holds the DR cluster's lock for 8 s.
    let mut c = dr.get("q-dr").await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now();
    let until = now + std::time::Duration::from_secs(8);
    let st = c.status.as_mut().unwrap();
    st.shards[0].operation = Some(
        serde_json::from_value(json!({
            "kind": "RemoteProtectionGroup", "name": "elsewhere", "uid": "not-here",
            "acquiredAt": now.to_string(), "expiresAt": until.to_string(),
        }))
        .unwrap(),
    );
    dr.replace_status("q-dr", &PostParams::default(), &c).await.unwrap();
    let writer = SiteWriter::start("q", q.all().iter().map(|s| ("127.0.0.1".to_owned(), s.port)).collect());
    set_priority(&pgs, "pg", "Target").await;
    eventually(WAIT, "the move waiting in step lock", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        (st.phase == Some(ProtectionPhase::FailingOver)
            && st.step.as_deref() == Some("lock")
            && st.message.as_deref()?.contains("holds the lock of q-dr"))
        .then_some(())
    })
    .await;
    // Nothing is paused while it waits: production answers a write at once.
    let prod = q.master().await.unwrap();
    let mut conn = redis_conn("127.0.0.1", prod.port, None, 300).await.unwrap();
    let r: redis::RedisResult<()> =
        redis::cmd("SET").arg("while-waiting").arg(1).query_async(&mut conn).await;
    r.expect("production takes writes while the move waits for a lock");
    assert!(q.src.iter().any(|s| s.port == prod.port), "still at the source site");

    // Killed while waiting; a fresh operator goes on from the recorded step.
    operator.stop().await;
    let job = pgs.get("pg").await.unwrap().status.unwrap().job_id;
    let _fresh = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    let g = wait_protected(&pgs, "pg", SiteRole::Target).await;
    let st = g.status.unwrap();
    assert_eq!(st.job_id, job, "the same job finished");
    assert!(st.last_write_pause_ms.is_some(), "{st:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writer.stop().await;
    let m = q.master().await.expect("one master");
    assert!(q.dr.iter().any(|s| s.port == m.port), "production moved to the target site");
    assert_eq!(missing(m, "q", &acked).await, 0, "every acknowledged write survived");
    assert_eq!(sampler.max(), 1, "never two writable sites");
}
