//! ProtectionGroup when the production site is lost (issue 18): nothing is promoted without
//! explicit intent; a forced failover promotes the DR side while the production site's
//! control plane and members are gone, and records what it may lose; the lost site, when it
//! returns, is fenced (its writable primary made to follow the new production site, what it
//! held beyond the promotion measured) and re-protected. A production cluster also fences
//! itself when it sees the other site acting as a primary. Stopping protection or deleting
//! the group detaches the pairs by the group's policy.

use std::time::{Duration, Instant};

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{
    HaCluster, ProtectionGroup,
    hacluster::Standby,
    protection_group::{ProtectionGroupStatus, ProtectionPhase, SiteRole},
};

use crate::{
    hacluster_redis::{cluster, observe_heartbeats, observe_heartbeats_sampled, wait_primary},
    protection_group::{
        OnePair, PairServers, SiteWriter, create_pairs, leader, missing_seqs, one_pair, pg, remote_site,
        replicated_bytes, set_priority, wait_protected,
    },
    support::{self, Operator, RedisServer, RoleSampler, eventually},
};

const WAIT: Duration = Duration::from_secs(90);

async fn status(pgs: &Api<ProtectionGroup>) -> ProtectionGroupStatus {
    pgs.get("pg").await.unwrap().status.unwrap_or_default()
}

/// Apply `spec` (which stops protection) and wait for phase Stopped.
async fn stop(pgs: &Api<ProtectionGroup>, spec: serde_json::Value) -> ProtectionGroupStatus {
    pgs.patch("pg", &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await.unwrap();
    let st = eventually(WAIT, "phase Stopped", || async {
        let st = status(pgs).await;
        (st.phase == Some(ProtectionPhase::Stopped)).then_some(st)
    })
    .await;
    eprintln!("stopped: {:?}", st.message);
    st
}

fn ready(st: &ProtectionGroupStatus) -> Option<(String, String, String)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_lost_production_site_is_failed_over_by_force_then_fenced_and_reprotected_when_it_returns() {
    let client = support::client().await;
    let dr_ns = support::namespace(&client, "pg-lost-dr").await;
    // The production site: its own kube-apiserver + etcd and its own operator, lost below.
    let src_ns = "prod-site";
    let (mut prod, pclient) = remote_site(&client, &dr_ns, src_ns).await;
    let x = PairServers::start("x");
    let src: Api<HaCluster> = Api::namespaced(pclient.clone(), src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    create_pairs(&src, &dr, &[&x]).await;
    // The group lives at the DR site: that is what survives the loss of production.
    let mut group = pg("pg", src_ns, &dr_ns, &["x"], None);
    group.spec.sites.source.kubeconfig_secret_ref =
        Some(serde_json::from_value(json!({"name": "prod-site"})).unwrap());
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &dr_ns);
    pgs.create(&PostParams::default(), &group).await.unwrap();
    let dr_op = Operator::start(client.clone(), &dr_ns);
    let prod_op = Operator::start(pclient.clone(), src_ns);
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let dl_name = leader(&dr, "x-dr").await;
    let dl = if dl_name == "t-0" { &x.dr[0] } else { &x.dr[1] };
    let old = x.master().await.expect("one master").port;
    let oi = x.src.iter().position(|s| s.port == old).expect("the master is a source member");

    let sampler = x.sampler();
    let writer = SiteWriter::start("f", x.all().iter().map(|s| ("127.0.0.1".to_owned(), s.port)).collect());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Writes the DR site never receives (on purpose): its leader is frozen while production
    // takes them, then the production site is lost — members frozen (they come back as they
    // were: the old primary still writable), operator and control plane stopped.
    // (Its link is cut by the primary too: bytes already on their way would otherwise
    // reach it when it thaws.)
    dl.signal(libc::SIGSTOP);
    let _: redis::Value =
        x.src[oi].cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in &x.src {
        s.signal(libc::SIGSTOP);
    }
    prod_op.stop().await;
    prod.stop_apiserver();
    dl.signal(libc::SIGCONT);

    // Without explicit intent nothing is promoted: moving the priority is not enough.
    set_priority(&pgs, "pg", "Target").await;
    let (_, reason, why) =
        eventually(WAIT, "the group to say the production site cannot be reached", || async {
            ready(&status(&pgs).await).filter(|(s, r, _)| s == "False" && r == "SiteUnreachable")
        })
        .await;
    eprintln!("without intent: {reason}: {why}");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(dl.role().await.as_deref(), Some("slave"), "nothing is promoted on a guess");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The forced failover, with its reason.
    let asked = Instant::now();
    pgs.patch(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"forcedFailover": {"to": "Target", "reason": "site A lost power"}}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "the DR leader to take writes", || async {
        dl.cmd::<()>(redis::cmd("SET").arg("forced-probe").arg(1)).await.ok()
    })
    .await;
    let took = asked.elapsed();
    let st = eventually(WAIT, "phase FailedOver with production at the DR site", || async {
        let st = status(&pgs).await;
        (st.phase == Some(ProtectionPhase::FailedOver)
            && st.production_site == Some(SiteRole::Target)
            && st.pairs.first().is_some_and(|p| p.state == "SiteLost"))
        .then_some(st)
    })
    .await;
    eprintln!(
        "forced failover: DR leader writable {} ms after the request; {:?}",
        took.as_millis(),
        st.message
    );
    let rec = st.last_forced_failover.clone().expect("the forced failover is recorded");
    assert_eq!(
        (rec.from, rec.to, rec.reason.as_str()),
        (SiteRole::Source, SiteRole::Target, "site A lost power")
    );
    assert_eq!(rec.pairs.len(), 1);
    assert!(rec.pairs[0].promoted_at_offset.is_some_and(|o| o > 0), "{rec:?}");
    assert!(rec.pairs[0].last_contact.is_some(), "this process saw both leaders: {rec:?}");
    assert!(rec.pairs[0].fenced_at.is_none());
    assert_eq!(ready(&st).map(|r| r.1), Some("ForcedFailover".to_owned()));
    assert_eq!(sampler.max(), 1, "one writable member while the production site was gone");

    // The production site returns: its members thaw (the old primary still acts as one,
    // with writes the DR site never got), then its control plane.
    for s in &x.src {
        s.signal(libc::SIGCONT);
    }
    prod.restart_apiserver().await.unwrap();
    let fenced = eventually(WAIT, "the returned site to be fenced", || async {
        let st = status(&pgs).await;
        st.last_forced_failover.and_then(|f| f.pairs.into_iter().next()).filter(|p| p.fenced_at.is_some())
    })
    .await;
    eprintln!("fenced: {:?}", fenced.message);
    assert_eq!(x.src[oi].role().await.as_deref(), Some("slave"), "the old primary follows the new one");
    // Its own operator comes back too; the group re-protects the site in the other direction.
    let pclient = prod.client().await.unwrap();
    let prod_op = Operator::start(pclient.clone(), src_ns);
    let g = wait_protected(&pgs, "pg", SiteRole::Target).await;
    let acked = writer.stop().await;
    let m = x.master().await.expect("one master");
    assert_eq!(m.port, dl.port, "the DR leader is production");
    let lost = missing_seqs(m, "f", &acked).await;
    let lost_bytes = replicated_bytes("f", &lost);
    let lost_offset = fenced.lost_offset;
    eprintln!(
        "acknowledged {}, lost {} (on purpose, {lost_bytes} B replicated); recorded lostOffset {lost_offset:?}",
        acked.len(),
        lost.len()
    );
    assert!(!lost.is_empty(), "the writes the frozen DR leader never received are lost");
    assert!(lost_offset.is_some_and(|b| b >= lost_bytes), "what was lost is recorded, not less: {fenced:?}");
    let back = src.get("x").await.unwrap();
    assert!(
        back.standby().and_then(|s| s.primary_endpoint.clone()) == Some(m.endpoint()),
        "the old site follows"
    );
    assert_eq!(g.status.unwrap().phase, Some(ProtectionPhase::Protected));
    let events = support::kubectl(&["get", "events.events.k8s.io", "-n", &dr_ns, "-o", "json"]);
    assert!(events.contains("ForcedFailover") && events.contains("SiteFenced"), "audited in Events");
    dr_op.stop().await;
    prod_op.stop().await;
}

/// A production cluster `x` of two members with the operator running, and a server of
/// "the other site" replicating from its primary (as a DR leader does).
struct OtherSite {
    ns: String,
    servers: [RedisServer; 2],
    other: RedisServer,
    hacs: Api<HaCluster>,
    operator: Operator,
    /// Index of the primary in `servers`.
    pi: usize,
}

async fn with_other_site(prefix: &str) -> OtherSite {
    let client = support::client().await;
    let ns = support::namespace(&client, prefix).await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let other = RedisServer::start(None);
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members = vec![("a", &servers[0]), ("b", &servers[1])];
    hacs.create(
        &PostParams::default(),
        &cluster("x", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&hacs, "x", "s0", None).await;
    let pi = if p == "a" { 0 } else { 1 };
    let () = other.cmd(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(servers[pi].port)).await.unwrap();
    OtherSite { ns, servers, other, hacs, operator, pi }
}

/// The fence on the lost site's own side: a production cluster of a group whose other site
/// starts acting as a primary (a forced failover there) follows it at once, promotes nothing
/// of its own even when its primary dies, and says why.
#[tokio::test]
async fn a_production_cluster_whose_other_site_acts_as_primary_follows_it_and_says_so() {
    let OtherSite { ns, mut servers, other, hacs, operator, pi } = with_other_site("superseded").await;
    let ri = 1 - pi;
    // What a ProtectionGroup publishes on its production side once the other replicates.
    let body = json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "status": {"protection": {"group": format!("{ns}/pg"), "yieldTo": [other.endpoint()]}}
    });
    hacs.patch_status("x", &PatchParams::apply("test-group").force(), &Patch::Apply(&body)).await.unwrap();
    // Many heartbeats later nothing changed: a replica on the other side is no reason.
    observe_heartbeats(&servers[pi], 10).await;
    assert_eq!(servers[pi].role().await.as_deref(), Some("master"));

    // The other site is made production by force.
    let () = other.cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await.unwrap();
    let since = Instant::now();
    // Its leader follows the other site's primary, its replica the leader (as in a standby).
    eventually(Duration::from_secs(10), "this cluster to follow the other site's primary", || async {
        let (l, r) = (servers[pi].replication().await?, servers[ri].replication().await?);
        let port =
            |i: &std::collections::HashMap<String, String>| i.get("master_port").and_then(|p| p.parse().ok());
        (port(&l) == Some(other.port) && r.get("role").map(String::as_str) == Some("slave")).then_some(())
    })
    .await;
    eprintln!("fenced itself {} ms after the other site's promotion", since.elapsed().as_millis());
    let sampler = RoleSampler::start(vec![servers[0].sample_target(), servers[1].sample_target()]);
    let why = eventually(WAIT, "Ready=False SiteSuperseded", || async {
        let c = hacs.get("x").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == "False" && c.reason == "SiteSuperseded").then_some(c.message)
    })
    .await;
    assert!(why.contains(&other.endpoint()), "{why}");
    // Its primary dies: nothing of its own is promoted, the other member keeps following.
    servers[pi].kill();
    observe_heartbeats_sampled(&servers[ri], 10, &sampler).await;
    assert_eq!(servers[ri].role().await.as_deref(), Some("slave"), "nothing here is made writable");
    assert_eq!(sampler.max(), 0, "no member of this cluster was writable once it followed the other site");
    let x = hacs.get("x").await.unwrap();
    assert_eq!(x.status.unwrap().shards[0].upstream.as_deref(), Some(other.endpoint().as_str()));
    // The other site steps down (it replicates from nothing now): this cluster decides for
    // itself again, and fails over from its dead primary.
    let () = other.cmd(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1)).await.unwrap();
    eventually(WAIT, "this cluster to promote a member of its own", || async {
        (servers[ri].role().await.as_deref() == Some("master")).then_some(())
    })
    .await;
    servers[pi].restart();
    operator.stop().await;
}

/// The group in contact vouches for the other site (`status.protection.contactAt`, renewed
/// every few seconds): a member of `yieldTo` acting as a primary is then not followed on sight
/// — a DR cluster re-created and electing its own primary, or a promotion made there by hand,
/// must not demote production (it would resync from the other site and lose what that site
/// never had). Once the renewals stop (the group lost contact, or withdrew it for a forced
/// failover), the fence applies again: the cluster follows that primary.
#[tokio::test]
async fn a_production_cluster_the_group_vouches_for_ignores_a_primary_on_the_other_site() {
    let OtherSite { ns, servers, other, hacs, operator, pi } = with_other_site("vouched").await;
    // What the group publishes, renewing its contact every 2 s (as it does every 5 s).
    let renewing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let renewer = {
        let (hacs, ns, other, renewing) = (hacs.clone(), ns.clone(), other.endpoint(), renewing.clone());
        tokio::spawn(async move {
            while renewing.load(std::sync::atomic::Ordering::SeqCst) {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let body = json!({
                    "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
                    "status": {"protection": {"group": format!("{ns}/pg"), "yieldTo": [other], "contactAt": now}}
                });
                let _ = hacs
                    .patch_status("x", &PatchParams::apply("test-group").force(), &Patch::Apply(&body))
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A primary on the other site, made by hand: production stays production.
    let () = other.cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await.unwrap();
    observe_heartbeats(&servers[pi], 15).await;
    assert_eq!(servers[pi].role().await.as_deref(), Some("master"), "vouched for: not followed");
    // The renewals stop: within the lease (15 s) the fence applies again.
    renewing.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = renewer.await;
    let stopped = Instant::now();
    eventually(WAIT, "this cluster to follow the other site's primary", || async {
        let l = servers[pi].replication().await?;
        (l.get("master_port")? == &other.port.to_string()).then_some(())
    })
    .await;
    let after = stopped.elapsed();
    eprintln!("followed the other site {} ms after the last renewal", after.as_millis());
    assert!(after >= Duration::from_secs(10), "not before the lease ran out: {after:?}");
    operator.stop().await;
}

/// The same fence shard by shard: a production cluster of two shards told which of the other
/// site's members are each shard's counterparts (`yieldToShards`) follows, per shard, only
/// its own counterpart's primary — one shard superseded leaves the other writable, and a
/// shard never follows the other shard's primary.
#[tokio::test]
async fn a_production_cluster_of_two_shards_yields_shard_by_shard() {
    let client = support::client().await;
    let ns = support::namespace(&client, "superseded-shards").await;
    let [s0, s1] = std::array::from_fn(|_| [RedisServer::start(None), RedisServer::start(None)]);
    // The other site's members: o0 for shard s0, o1 for shard s1.
    let (o0, o1) = (RedisServer::start(None), RedisServer::start(None));
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let shards =
        [("s0", &[("a0", &s0[0]), ("a1", &s0[1])][..]), ("s1", &[("b0", &s1[0]), ("b1", &s1[1])][..])];
    hacs.create(&PostParams::default(), &cluster("x", &shards, json!({"heartbeatInterval": "200ms"})))
        .await
        .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p0 = if wait_primary(&hacs, "x", "s0", None).await == "a0" { 0 } else { 1 };
    let p1 = if wait_primary(&hacs, "x", "s1", None).await == "b0" { 0 } else { 1 };
    for (o, primary) in [(&o0, &s0[p0]), (&o1, &s1[p1])] {
        let () = o.cmd(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(primary.port)).await.unwrap();
    }
    let body = json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "status": {"protection": {
            "group": format!("{ns}/pg"),
            "yieldTo": [o0.endpoint(), o1.endpoint()],
            "yieldToShards": [{"shard": "s0", "members": [o0.endpoint()]}, {"shard": "s1", "members": [o1.endpoint()]}],
        }}
    });
    hacs.patch_status("x", &PatchParams::apply("test-group").force(), &Patch::Apply(&body)).await.unwrap();

    // Shard s1's counterpart is made primary: shard s1 follows it; shard s0 stays writable.
    let () = o1.cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await.unwrap();
    crate::hacluster_redis::wait_follows(&s1[p1], &o1).await;
    let why = eventually(WAIT, "Ready=False SiteSuperseded for shard s1", || async {
        let c = hacs.get("x").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.reason == "SiteSuperseded").then_some(c.message)
    })
    .await;
    assert!(why.contains("(shard s1)") && why.contains("that shard follows it"), "{why}");
    observe_heartbeats(&s0[p0], 10).await;
    assert_eq!(s0[p0].role().await.as_deref(), Some("master"), "shard s0 is not superseded: {why}");

    // Shard s0's counterpart too: shard s0 follows o0 — not o1, the first primary it could see.
    let () = o0.cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await.unwrap();
    crate::hacluster_redis::wait_follows(&s0[p0], &o0).await;
    observe_heartbeats(&s1[p1], 10).await;
    let port = |i: std::collections::HashMap<String, String>| i.get("master_port").cloned();
    assert_eq!(port(s1[p1].replication().await.unwrap()), Some(o1.port.to_string()), "s1 still follows o1");
    assert_eq!(port(s0[p0].replication().await.unwrap()), Some(o0.port.to_string()), "s0 follows o0");
    operator.stop().await;
}

/// Stopping protection detaches every pair by the group's policy (ReadOnly by default: the
/// DR cluster keeps its data, replicates from nothing and is never made writable), starting
/// it again re-protects, and deleting the group detaches too (here Writable: the DR cluster
/// becomes an ordinary cluster) before its finalizer lets it go.
#[tokio::test]
async fn stopping_protection_detaches_by_policy_and_deleting_the_group_does_too() {
    let client = support::client().await;
    let OnePair { src_ns, dr_ns, servers: x, src, dr, pgs } = one_pair(&client, "pg-stop", "x").await;
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    assert!(
        pgs.get("pg")
            .await
            .unwrap()
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"understudy.dev/protection-group".to_owned())
    );
    let dl_name = leader(&dr, "x-dr").await;
    let dl = if dl_name == "t-0" { &x.dr[0] } else { &x.dr[1] };
    let m = x.master().await.expect("one master");
    let () = m.cmd(redis::cmd("SET").arg("before-stop").arg(1)).await.unwrap();
    eventually(WAIT, "the DR leader to have the write", || async {
        has(dl, "before-stop").await.then_some(())
    })
    .await;

    // Stop (ReadOnly, the default).
    let st = stop(&pgs, json!({"protection": "Stopped"})).await;
    assert_eq!(ready(&st).map(|r| r.1), Some("ProtectionStopped".to_owned()));
    assert!(
        src.get("x").await.unwrap().status.unwrap().protection.is_none(),
        "the production side is ordinary"
    );
    assert!(dr.get("x-dr").await.unwrap().detached(), "the DR side is detached");
    let why = eventually(WAIT, "the DR cluster to say it is detached", || async {
        let c = dr.get("x-dr").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == "False" && c.reason == "DetachedReadOnly").then_some(c.message)
    })
    .await;
    eprintln!("{why}");
    let () = m.cmd(redis::cmd("SET").arg("after-stop").arg(1)).await.unwrap();
    observe_heartbeats(dl, 10).await;
    for s in &x.dr {
        let i = s.replication().await.unwrap();
        assert_eq!(i.get("role").map(String::as_str), Some("slave"), "nothing at the DR site is writable");
        assert_ne!(
            i.get("master_port").and_then(|p| p.parse().ok()),
            Some(m.port),
            "detached from production"
        );
    }
    assert!(
        has(dl, "before-stop").await && !has(dl, "after-stop").await,
        "it kept its data and took no more"
    );

    // Started again: re-protected, the DR side catches up.
    pgs.patch("pg", &PatchParams::default(), &Patch::Merge(json!({"spec": {"protection": "Started"}})))
        .await
        .unwrap();
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    eventually(WAIT, "the DR leader to catch up", || async { has(dl, "after-stop").await.then_some(()) })
        .await;
    assert!(!dr.get("x-dr").await.unwrap().detached());

    // Deleted with policy Writable: the DR cluster is an ordinary, writable cluster after it.
    pgs.patch("pg", &PatchParams::default(), &Patch::Merge(json!({"spec": {"detachPolicy": "Writable"}})))
        .await
        .unwrap();
    pgs.delete("pg", &Default::default()).await.unwrap();
    eventually(WAIT, "the group to be gone", || async {
        pgs.get_opt("pg").await.ok()?.is_none().then_some(())
    })
    .await;
    let d = dr.get("x-dr").await.unwrap();
    assert!(d.status.as_ref().unwrap().protection.is_none(), "the DR side is ordinary");
    eventually(WAIT, "the DR leader to take writes", || async {
        dl.cmd::<()>(redis::cmd("SET").arg("independent").arg(1)).await.ok()
    })
    .await;
    wait_primary(&dr, "x-dr", "s0", None).await;
    assert_eq!(m.role().await.as_deref(), Some("master"), "the production site is untouched");
    let events = support::kubectl(&["get", "events.events.k8s.io", "-n", &src_ns, "-o", "json"]);
    assert!(events.contains("ProtectionStopped"), "audited");
    operator.stop().await;
}

async fn has(s: &RedisServer, k: &str) -> bool {
    s.cmd::<Option<String>>(redis::cmd("GET").arg(k)).await.ok().flatten().is_some()
}

/// The operator is killed right after it promoted the DR leader in a forced failover (before
/// recording the end of the move): a fresh process finishes the same job from status — the
/// record of what the forced pair may lose is the one written before the promotion.
#[tokio::test]
async fn killed_after_forcing_the_dr_site_a_fresh_operator_finishes_the_same_job() {
    use crate::support::Process;
    let client = support::client().await;
    let OnePair { src_ns, dr_ns, servers: k, src, dr, pgs } = one_pair(&client, "pg-forced-crash", "k").await;
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let namespaces = format!("{src_ns},{dr_ns}");
    let args = ["run", "--namespaces", &namespaces, "--listen", &listen];
    let mut doomed = Process::understudy_with_env(
        &args,
        "pg-forced-crash",
        &[("UNDERSTUDY_CRASH_AT", "site-after-promote")],
    );
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    // The production site's members are lost; the forced failover is asked for.
    for s in &k.src {
        s.signal(libc::SIGSTOP);
    }
    pgs.patch(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"prioritySite": "Target", "forcedFailover": {"to": "Target", "reason": "test"}}}),
        ),
    )
    .await
    .unwrap();
    doomed.crashed_at("site-after-promote", WAIT).await;
    let before = status(&pgs).await;
    assert_eq!(before.phase, Some(ProtectionPhase::FailingOver));
    let rec = before.last_forced_failover.clone().expect("recorded before the promotion");
    assert_eq!(Some(&rec.job_id), before.job_id.as_ref());

    let _fresh = Process::understudy(&args, "pg-forced-resume");
    let after = eventually(WAIT, "FailedOver at the DR site", || async {
        let st = status(&pgs).await;
        (st.phase == Some(ProtectionPhase::FailedOver) && st.production_site == Some(SiteRole::Target))
            .then_some(st)
    })
    .await;
    assert_eq!(after.job_id, before.job_id, "the same job was finished, not a new one");
    assert_eq!(after.last_forced_failover.as_ref().map(|r| &r.pairs), Some(&rec.pairs), "the record stands");
    let m = k.master().await.expect("one master while the production site is frozen");
    assert!(k.dr.iter().any(|s| s.port == m.port));
    // The production site returns and is fenced, then re-protected.
    for s in &k.src {
        s.signal(libc::SIGCONT);
    }
    wait_protected(&pgs, "pg", SiteRole::Target).await;
    let m = k.master().await.expect("one master");
    assert!(k.dr.iter().any(|s| s.port == m.port), "the returned site follows the DR site");
    for (api, name) in [(&src, "k"), (&dr, "k-dr")] {
        let st = api.get(name).await.unwrap().status.unwrap();
        assert!(st.shards[0].operation.is_none(), "{name}: the lock was released");
    }
}

/// `db` (shards s0 = a0, a1 and s1 = b0, b1) and `db-dr` (s0 = c0, c1; s1 = d0, d1) on
/// the servers of source s0, source s1, target s0, target s1.
fn two_shard_clusters(s: [&[RedisServer; 2]; 4]) -> (HaCluster, HaCluster) {
    let policy = json!({"heartbeatInterval": "200ms"});
    let db = cluster(
        "db",
        &[("s0", &[("a0", &s[0][0]), ("a1", &s[0][1])]), ("s1", &[("b0", &s[1][0]), ("b1", &s[1][1])])],
        policy.clone(),
    );
    let db_dr = cluster(
        "db-dr",
        &[("s0", &[("c0", &s[2][0]), ("c1", &s[2][1])]), ("s1", &[("d0", &s[3][0]), ("d1", &s[3][1])])],
        policy,
    );
    (db, db_dr)
}

/// The one server of `servers` that is a master, once there is exactly one.
async fn one_master(servers: &[RedisServer], what: &str) -> usize {
    eventually(WAIT, &format!("one master in {what}"), || async {
        let mut masters = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            if s.role().await.as_deref() == Some("master") {
                masters.push(i);
            }
        }
        (masters.len() == 1).then(|| masters[0])
    })
    .await
}

/// Pairs of clusters of two shards are paired shard by shard (issue 18, breadth): each DR
/// shard's leader follows its own production shard; a planned move demotes and promotes
/// every shard; a forced failover promotes each DR shard's leader and records each shard; and
/// when the lost site returns, each of its shards follows its own counterpart — a shard never
/// follows another shard's primary (it holds another part of the data).
#[tokio::test]
async fn two_shard_pairs_move_and_fail_over_shard_by_shard() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-shards").await;
    let dr_ns = support::namespace(&client, "pg-shards-dr").await;
    // Source: s0 = a0, a1; s1 = b0, b1. Target: s0 = c0, c1; s1 = d0, d1.
    let [s0, s1, t0, t1] = std::array::from_fn(|_| [RedisServer::start(None), RedisServer::start(None)]);
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    let pp = PostParams::default();
    let (db, db_dr) = two_shard_clusters([&s0, &s1, &t0, &t1]);
    src.create(&pp, &db).await.unwrap();
    dr.create(&pp, &db_dr).await.unwrap();
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&pp, &pg("pg", &src_ns, &dr_ns, &["db"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);

    // Protected shard by shard: the pair lists both shards, each replicating. (Before, each
    // cluster elected primaries of its own.)
    let g = wait_protected(&pgs, "pg", SiteRole::Source).await;
    let shard0: Vec<_> = s0.iter().chain(&t0).map(|s| s.sample_target()).collect();
    let shard1: Vec<_> = s1.iter().chain(&t1).map(|s| s.sample_target()).collect();
    let (sampler0, sampler1) = (RoleSampler::start(shard0), RoleSampler::start(shard1));
    let pair = &g.status.unwrap().pairs[0];
    let shards: Vec<(&str, &str)> =
        pair.shards.iter().map(|s| (s.shard.as_str(), s.state.as_str())).collect();
    assert_eq!(shards, vec![("s0", "Replicating"), ("s1", "Replicating")], "{pair:?}");
    let (p0, p1) = (one_master(&s0, "source s0").await, one_master(&s1, "source s1").await);
    // Each DR shard's leader follows its own shard's primary: a key written to one shard
    // reaches that shard's DR side only.
    let mut c = s0[p0].connect().await.unwrap();
    let () = redis::cmd("SET").arg("in-s0").arg(1).query_async(&mut c).await.unwrap();
    let mut c = s1[p1].connect().await.unwrap();
    let () = redis::cmd("SET").arg("in-s1").arg(1).query_async(&mut c).await.unwrap();
    for (dr_servers, has, lacks) in [(&t0, "in-s0", "in-s1"), (&t1, "in-s1", "in-s0")] {
        eventually(WAIT, &format!("{has} at the DR side of its shard"), || async {
            for s in dr_servers.iter() {
                let mut c = s.connect().await.ok()?;
                let (a, b): (Option<String>, Option<String>) =
                    redis::pipe().get(has).get(lacks).query_async(&mut c).await.ok()?;
                assert!(b.is_none(), "{lacks} reached the DR side of the other shard");
                a?;
            }
            Some(())
        })
        .await;
    }

    // A planned move: every shard's DR leader is promoted, every production one follows it.
    set_priority(&pgs, "pg", "Target").await;
    wait_protected(&pgs, "pg", SiteRole::Target).await;
    let (q0, q1) = (one_master(&t0, "target s0").await, one_master(&t1, "target s1").await);
    // Each old production leader follows its own shard's new primary (the other member of a
    // standby shard follows its leader).
    crate::hacluster_redis::wait_follows(&s0[p0], &t0[q0]).await;
    crate::hacluster_redis::wait_follows(&s1[p1], &t1[q1]).await;
    let protection = src.get("db").await.unwrap().status.unwrap().protection.unwrap();
    assert!(protection.standby.is_some(), "the source cluster is the standby now: {protection:?}");
    let protection = dr.get("db-dr").await.unwrap().status.unwrap().protection.unwrap();
    let yields: Vec<(String, usize)> =
        protection.yield_to_shards.iter().map(|y| (y.shard.clone(), y.members.len())).collect();
    assert_eq!(
        yields,
        vec![("s0".into(), 2), ("s1".into(), 2)],
        "each shard yields to its own: {protection:?}"
    );

    // Never two masters in a shard through the planned move (a move demotes before it
    // promotes).
    let (m0, m1) = (sampler0.max(), sampler1.max());
    eprintln!(
        "two shards: {} / {} samples, most masters at once {m0} / {m1}",
        sampler0.count(),
        sampler1.count()
    );
    assert!(m0 <= 1 && m1 <= 1, "two masters in a shard: {m0} / {m1}");
    drop((sampler0, sampler1));

    // The target site is lost: a forced failover back to the source promotes each shard.
    for s in t0.iter().chain(&t1) {
        s.signal(libc::SIGSTOP);
    }
    pgs.patch(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"prioritySite": "Source", "forcedFailover": {"to": "Source", "reason": "site B lost"}}})),
    )
    .await
    .unwrap();
    let st = eventually(WAIT, "phase FailedOver at the source", || async {
        let st = status(&pgs).await;
        (st.phase == Some(ProtectionPhase::FailedOver) && st.production_site == Some(SiteRole::Source))
            .then_some(st)
    })
    .await;
    let forced: Vec<Option<String>> =
        st.last_forced_failover.iter().flat_map(|f| &f.pairs).map(|p| p.shard.clone()).collect();
    assert_eq!(forced, vec![Some("s0".into()), Some("s1".into())], "each shard is recorded: {st:?}");
    let (n0, n1) = (one_master(&s0, "source s0").await, one_master(&s1, "source s1").await);

    // The target site returns: its shards were masters when it froze; each follows its own
    // shard's new primary (never the other's), and the group re-protects it.
    for s in t0.iter().chain(&t1) {
        s.signal(libc::SIGCONT);
    }
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    crate::hacluster_redis::wait_follows(&t0[q0], &s0[n0]).await;
    crate::hacluster_redis::wait_follows(&t1[q1], &s1[n1]).await;

    // Protection stopped with policy Writable: every DR shard's leader is made writable.
    stop(&pgs, json!({"protection": "Stopped", "detachPolicy": "Writable"})).await;
    let (w0, w1) = (one_master(&t0, "target s0").await, one_master(&t1, "target s1").await);
    assert_eq!((w0, w1), (q0, q1), "each DR shard's leader is writable");
    operator.stop().await;
}

/// Pairs of two-shard clusters across two control planes: the DR cluster follows the
/// production leaders by address, one per shard (`spec.standby.shardEndpoints` in its
/// `status.protection`), and a planned move reverses that shard by shard.
#[tokio::test]
async fn two_shard_pairs_across_two_control_planes_follow_one_address_per_shard() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-xshards").await;
    let dr_ns = "dr-site";
    let (_remote, rclient) = remote_site(&client, &src_ns, dr_ns).await;
    let [s0, s1, t0, t1] = std::array::from_fn(|_| [RedisServer::start(None), RedisServer::start(None)]);
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(rclient.clone(), dr_ns);
    let pp = PostParams::default();
    let (db, db_dr) = two_shard_clusters([&s0, &s1, &t0, &t1]);
    src.create(&pp, &db).await.unwrap();
    dr.create(&pp, &db_dr).await.unwrap();
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&pp, &pg("pg", &src_ns, dr_ns, &["db"], Some("dr-site"))).await.unwrap();
    let local_op = Operator::start(client.clone(), &src_ns);
    let remote_op = Operator::start(rclient.clone(), dr_ns);

    let by_shard = |s: Standby| -> Vec<(String, String)> {
        s.shard_endpoints.into_iter().map(|e| (e.shard, e.endpoint)).collect()
    };
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let (p0, p1) = (one_master(&s0, "source s0").await, one_master(&s1, "source s1").await);
    let standby = dr.get("db-dr").await.unwrap().standby().cloned().unwrap();
    assert_eq!(standby.primary_endpoint, None);
    assert_eq!(
        by_shard(standby),
        vec![("s0".into(), s0[p0].endpoint()), ("s1".into(), s1[p1].endpoint())],
        "across control planes: one address per shard"
    );

    set_priority(&pgs, "pg", "Target").await;
    wait_protected(&pgs, "pg", SiteRole::Target).await;
    let (q0, q1) = (one_master(&t0, "target s0").await, one_master(&t1, "target s1").await);
    crate::hacluster_redis::wait_follows(&s0[p0], &t0[q0]).await;
    crate::hacluster_redis::wait_follows(&s1[p1], &t1[q1]).await;
    let back = src.get("db").await.unwrap().standby().cloned().unwrap();
    assert_eq!(
        by_shard(back),
        vec![("s0".into(), t0[q0].endpoint()), ("s1".into(), t1[q1].endpoint())],
        "the source follows the remote shard by shard"
    );
    local_op.stop().await;
    remote_op.stop().await;
}
