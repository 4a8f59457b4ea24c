//! A FailoverRequest naming a standby cluster (issue 18 point 7, seed 000's standby tenant):
//! its leader is made the writable primary through the seed's chain (reset the log restore
//! source, fail over to primary, create the service name, update primary info) — with real
//! redis-server processes, checked on the servers: never two writable members, the standby
//! relation ended in status and kept ended by the monitor, a failed failover rolled back to a
//! standby, and nothing touched while the upstream still takes writes (unless forced), on a
//! dry run, or when a ProtectionGroup owns the relation.

use std::time::Duration;

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{
    FailoverRequest, HaCluster, ProtectionGroup,
    failover_request::{RequestPhase, TaskStatus},
    hacluster::{Role, Standby},
    protection_group::SiteRole,
};

use crate::{
    failover_request::{finish, request, slice_addresses, submit},
    hacluster_redis::{cluster, observe_heartbeats_sampled, route_ip, wait_follows, wait_primary},
    protection_group::{pg, wait_protected},
    standby::wait_leader,
    support::{self, Operator, RedisServer, RoleSampler, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

/// The subtasks of a standby item, in order (seed 000's chain).
pub(crate) const STANDBY_CHAIN: [&str; 6] = [
    "check",
    "lock",
    "reset-restore-source",
    "failover-to-primary",
    "create-service-name",
    "update-primary-info",
];

/// The standby cluster `dr` as its user's manifest has it.
fn standby_manifest(dr: &[RedisServer; 2], failure_threshold: i32) -> HaCluster {
    let members = [("d-a", &dr[0]), ("d-b", &dr[1])];
    let mut c = cluster(
        "dr",
        &[("s0", &members)],
        json!({"heartbeatInterval": "200ms", "failureThreshold": failure_threshold}),
    );
    c.spec.standby = Some(serde_json::from_value(json!({"cluster": "src"})).unwrap());
    c
}

/// An upstream `src` and its standby `dr`, two members each, the operator running, the
/// standby's leader replicating from the upstream's primary. Returns the index of the
/// upstream's primary and of the standby's leader, and the leader's name.
async fn upstream_and_standby(
    hacs: &Api<HaCluster>,
    src: &[RedisServer; 2],
    dr: &[RedisServer; 2],
) -> (usize, usize, String) {
    let sm = [("s-a", &src[0]), ("s-b", &src[1])];
    hacs.create(
        &PostParams::default(),
        &cluster("src", &[("s0", &sm)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    hacs.create(&PostParams::default(), &standby_manifest(dr, 3)).await.unwrap();
    let sp = wait_primary(hacs, "src", "s0", None).await;
    let spi = if sp == "s-a" { 0 } else { 1 };
    let leader = wait_leader(hacs, "dr", &src[spi]).await;
    let li = if leader == "d-a" { 0 } else { 1 };
    wait_follows(&dr[li], &src[spi]).await;
    wait_follows(&dr[1 - li], &dr[li]).await;
    (spi, li, leader)
}

/// What must not change when a request touches nothing: epoch, lock, target, release record.
async fn untouched(hacs: &Api<HaCluster>, epoch: i64, what: &str) {
    let st = hacs.get("dr").await.unwrap().status.unwrap();
    let s = &st.shards[0];
    assert_eq!(s.epoch, epoch, "{what}: epoch unchanged");
    assert!(s.operation.is_none() && s.target_primary.is_none(), "{what}: no lock, no target: {s:?}");
    assert!(st.standby_released.is_none(), "{what}: the relation was not ended: {:?}", st.standby_released);
}

#[tokio::test]
async fn a_standby_with_a_live_upstream_is_only_planned_or_refused_never_made_writable() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sb-live").await;
    let src = [RedisServer::start(None), RedisServer::start(None)];
    let dr = [RedisServer::start(None), RedisServer::start(None)];
    let sampler = RoleSampler::start(src.iter().chain(dr.iter()).map(RedisServer::sample_target).collect());
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let operator = Operator::start(client.clone(), &ns);
    let (spi, li, _) = upstream_and_standby(&hacs, &src, &dr).await;
    let epoch = hacs.get("dr").await.unwrap().status.unwrap().shards[0].epoch;
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);

    // Not even a forced request (type Failover) fails a standby over while its upstream
    // takes writes: refused at check, nothing touched.
    let st = submit(&frs, "forced", json!({"type": "Failover", "items": [{"cluster": "dr"}]})).await;
    assert_eq!(st.phase, Some(RequestPhase::Failed), "{:?}", st.message);
    let msg = st.message.clone().unwrap_or_default();
    assert!(msg.contains("even forced") && msg.contains("still answers as a writable primary"), "{msg}");
    untouched(&hacs, epoch, "forced while the upstream is alive").await;

    // A planned failover (Switchover) while the upstream takes writes: refused at check.
    frs.create(
        &PostParams::default(),
        &request("planned", json!({"type": "Switchover", "items": [{"cluster": "dr"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "planned").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Failed), "{:?}", st.message);
    let msg = st.message.clone().unwrap_or_default();
    assert!(
        msg.contains("still answers as a writable primary") && msg.contains("two writable clusters"),
        "the message says which case it was: {msg}"
    );
    assert!(msg.contains(&src[spi].endpoint()), "it names the writable upstream member: {msg}");
    let task = st.task.unwrap();
    assert_eq!(task.subtasks[0].status, TaskStatus::Failed);
    assert!(task.subtasks[1..].iter().all(|t| t.status == TaskStatus::Pending), "{:?}", task.subtasks);
    untouched(&hacs, epoch, "refused").await;

    // Heartbeats later the standby still follows the upstream; one writable server throughout.
    observe_heartbeats_sampled(&dr[li], 10, &sampler).await;
    assert_eq!(dr[li].role().await.as_deref(), Some("slave"));
    wait_follows(&dr[li], &src[spi]).await;
    assert!(sampler.count() > 20, "the sampler ran ({} samples)", sampler.count());
    assert_eq!(sampler.max(), 1, "never two writable servers");
    operator.stop().await;
}

#[tokio::test]
async fn a_standby_whose_upstream_is_gone_is_failed_over_to_primary_and_stays_primary() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sb-fo").await;
    let mut src = [RedisServer::start(None), RedisServer::start(None)];
    let dr = [RedisServer::start(None), RedisServer::start(None)];
    let mut sampler =
        RoleSampler::start(src.iter().chain(dr.iter()).map(RedisServer::sample_target).collect());
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let operator = Operator::start(client.clone(), &ns);
    let (spi, li, leader) = upstream_and_standby(&hacs, &src, &dr).await;
    let _: () = src[spi].cmd(redis::cmd("SET").arg("before-the-disaster").arg("1")).await.unwrap();
    eventually(WAIT, "the write to reach the standby's leader", || async {
        let v: Option<String> = dr[li].cmd(redis::cmd("GET").arg("before-the-disaster")).await.ok()?;
        v.filter(|v| v == "1")
    })
    .await;
    let epoch = hacs.get("dr").await.unwrap().status.unwrap().shards[0].epoch;
    // The upstream site is lost.
    src[0].kill();
    src[1].kill();
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);

    // Dry run: the plan, nothing else.
    frs.create(
        &PostParams::default(),
        &request("dry", json!({"type": "Failover", "dryRun": true, "items": [{"cluster": "dr"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "dry").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Succeeded), "{:?}", st.message);
    let msg = st.message.clone().unwrap_or_default();
    assert!(
        msg.contains(&format!("would make {leader}"))
            && msg.contains("ending replication from HaCluster src"),
        "{msg}"
    );
    let task = st.task.unwrap();
    assert_eq!(task.subtasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), STANDBY_CHAIN);
    for t in task.subtasks.iter().filter(|t| t.name != "check") {
        assert_eq!(t.status, TaskStatus::Skipped, "{t:?}");
    }
    assert!(st.items[0].released_from.is_none(), "a dry run ends no relation");
    untouched(&hacs, epoch, "dry run").await;

    // The leader refuses to be promoted (REPLICAOF revoked): the failover to primary times
    // out and is rolled back — the relation restored, the leader a follower of the upstream.
    let _: () = dr[li].cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("-replicaof")).await.unwrap();
    frs.create(
        &PostParams::default(),
        &request("doomed", json!({"type": "Switchover", "timeoutSeconds": 3, "items": [{"cluster": "dr"}]})),
    )
    .await
    .unwrap();
    let (fr, seen, _) = finish(&frs, "doomed").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::RolledBack), "{:?}", st.message);
    for step in ["reset-restore-source", "lock"] {
        assert!(seen.contains(&(step.to_owned(), TaskStatus::RolledBack)), "{step} rolled back: {seen:?}");
    }
    let failed = st.task.unwrap().subtasks.into_iter().find(|t| t.name == "failover-to-primary").unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(failed.message.unwrap_or_default().contains("timed out"));
    let cst = hacs.get("dr").await.unwrap().status.unwrap();
    assert!(cst.standby_released.is_none(), "the relation is restored");
    let upstream = hacs.get("src").await.unwrap().status.unwrap();
    assert!(
        upstream.superseded_by.is_none(),
        "the upstream is no longer told to yield: {:?}",
        upstream.superseded_by
    );
    assert!(
        cst.shards[0].operation.is_none() && cst.shards[0].target_primary.is_none(),
        "{:?}",
        cst.shards[0]
    );
    assert_eq!(dr[li].role().await.as_deref(), Some("slave"), "still a standby");
    eventually(WAIT, "the standby to follow its upstream again in status", || async {
        let st = hacs.get("dr").await.ok()?.status?;
        st.shards[0].upstream.as_deref().filter(|u| *u == src[spi].endpoint()).map(|_| ())
    })
    .await;
    let _: () = dr[li].cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("+replicaof")).await.unwrap();
    let epoch_after_rollback = hacs.get("dr").await.unwrap().status.unwrap().shards[0].epoch;
    assert!(epoch_after_rollback >= epoch);

    // The seed's case: the standby failed over to primary, with its service name.
    frs.create(
        &PostParams::default(),
        &request(
            "promote-dr",
            json!({"type": "Switchover", "items": [{"cluster": "dr", "serviceName": "dr-rw", "expectedPrimary": leader}]}),
        ),
    )
    .await
    .unwrap();
    let (fr, seen, _) = finish(&frs, "promote-dr").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Succeeded), "{:?}", st.message);
    assert_eq!(st.progress.as_deref(), Some("6/6"));
    let task = st.task.clone().unwrap();
    assert_eq!(task.subtasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), STANDBY_CHAIN);
    for t in &task.subtasks {
        assert_eq!(t.status, TaskStatus::Successful, "{t:?}");
        assert!(t.start_time.is_some() && t.end_time.is_some() && !t.description.is_empty(), "{t:?}");
    }
    assert!(!seen.iter().any(|(_, s)| *s == TaskStatus::Failed), "nothing failed on the way: {seen:?}");
    assert!(task.prohibit_rollback, "failover to primary is the point of no return");
    let note = |name: &str| task.subtasks.iter().find(|t| t.name == name).and_then(|t| t.message.clone());
    assert!(
        note("check").unwrap_or_default().contains("not taking writes"),
        "which case: {:?}",
        note("check")
    );
    assert!(
        note("failover-to-primary").unwrap_or_default().contains("is writable"),
        "{:?}",
        note("failover-to-primary")
    );
    // The envelope: who ran it, how long it took, a trace id.
    assert!(st.executor.as_deref().is_some_and(|e| !e.is_empty()), "{:?}", st.executor);
    assert!(st.duration_ms.is_some_and(|d| d >= 0), "{:?}", st.duration_ms);
    let trace = st.trace_id.clone().unwrap_or_default();
    assert!(trace.len() == 16 && trace.chars().all(|c| c.is_ascii_hexdigit()), "{trace}");
    let released: Standby = serde_json::from_value(json!({"cluster": "src"})).unwrap();
    let item = &st.items[0];
    assert_eq!((item.to.as_deref(), item.released_from.as_ref()), (Some(leader.as_str()), Some(&released)));
    assert!(
        st.message.clone().unwrap_or_default().contains("no longer a standby of HaCluster src"),
        "{:?}",
        st.message
    );

    // On the servers: the leader is writable and kept what it replicated; the other member
    // follows it. In status: the relation ended, one promotion recorded, the lock released.
    assert_eq!(dr[li].role().await.as_deref(), Some("master"));
    let kept: Option<String> = dr[li].cmd(redis::cmd("GET").arg("before-the-disaster")).await.unwrap();
    assert_eq!(kept.as_deref(), Some("1"));
    let _: () = dr[li].cmd(redis::cmd("SET").arg("after-the-failover").arg("1")).await.expect("writable");
    wait_follows(&dr[1 - li], &dr[li]).await;
    let c = hacs.get("dr").await.unwrap();
    assert!(c.standby().is_none(), "no longer a standby");
    assert!(c.spec.standby.is_some(), "the spec is the user's: left as it was");
    let cst = c.status.unwrap();
    let record = cst.standby_released.clone().expect("the release recorded");
    assert_eq!(record.standby, released);
    assert_eq!(record.by, format!("FailoverRequest {ns}/promote-dr"));
    let s = &cst.shards[0];
    assert_eq!(s.current_primary.as_deref(), Some(leader.as_str()));
    assert_eq!(s.epoch, epoch_after_rollback + 1, "exactly one promotion");
    assert!(s.operation.is_none() && s.target_primary.is_none() && s.upstream.is_none(), "{s:?}");
    let last = cst.last_failover.clone().expect("the promotion is on record");
    assert_eq!((last.to.as_deref(), last.epoch), (Some(leader.as_str()), s.epoch));
    assert!(last.reason.contains("promote-dr"), "{}", last.reason);
    eventually(WAIT, "dr-rw to point at the new primary", || async {
        (slice_addresses(&client, &ns, "dr-rw").await == [route_ip(dr[li].port)]).then_some(())
    })
    .await;

    // The old upstream is told, before its standby was made writable, whom it yields to.
    let record = hacs.get("src").await.unwrap().status.unwrap().superseded_by.expect("src told to yield");
    assert_eq!(record.cluster, format!("{ns}/dr"));
    assert_eq!(record.by, format!("FailoverRequest {ns}/promote-dr"));
    assert!(record.members.contains(&dr[li].endpoint()), "{:?}", record.members);
    assert!(
        note("reset-restore-source").unwrap_or_default().contains("status.supersededBy"),
        "{:?}",
        note("reset-restore-source")
    );
    assert!(sampler.count() > 20, "the sampler ran ({} samples)", sampler.count());
    assert_eq!(sampler.max(), 1, "never two writable servers up to here");
    // The lost upstream returns: its servers restart empty, its old primary as a master (as
    // a redis-server whose configuration names no master does), and its monitor makes them
    // follow the standby's leader — nothing of the old upstream stays writable, nothing is
    // promoted there, the standby's data is untouched.
    let src_epoch = hacs.get("src").await.unwrap().status.unwrap().shards[0].epoch;
    src[0].restart();
    src[1].restart();
    let _: () = src[spi].cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await.unwrap();
    let returned = std::time::Instant::now();
    // Shaped like a standby cluster: its leader follows the new production primary, the other
    // member follows its leader.
    wait_follows(&src[spi], &dr[li]).await;
    eprintln!(
        "the returned upstream's old primary, a master again, follows the new production primary {:?} later",
        returned.elapsed()
    );
    wait_follows(&src[1 - spi], &src[spi]).await;
    eventually(WAIT, "src to say it is superseded", || async {
        let st = hacs.get("src").await.ok()?.status?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False"
            && ready.reason == "SiteSuperseded"
            && ready.message.contains(&format!("{ns}/dr")))
        .then_some(())
    })
    .await;
    let _: () = dr[li].cmd(redis::cmd("SET").arg("after-the-return").arg("1")).await.expect("still writable");
    eventually(WAIT, "the returned members to replicate the new production's writes", || async {
        let v: Option<String> = src[spi].cmd(redis::cmd("GET").arg("after-the-return")).await.ok()?;
        v.filter(|v| v == "1")
    })
    .await;
    // A fresh sampler from here on (the restarted servers were masters until fenced).
    sampler = RoleSampler::start(src.iter().chain(dr.iter()).map(RedisServer::sample_target).collect());
    observe_heartbeats_sampled(&src[spi], 10, &sampler).await;
    for s in &src {
        assert_eq!(s.role().await.as_deref(), Some("slave"), "a returned upstream member stays fenced");
    }
    assert_eq!(
        hacs.get("src").await.unwrap().status.unwrap().shards[0].epoch,
        src_epoch,
        "nothing promoted in src"
    );

    // Its monitor keeps it primary heartbeat after heartbeat, also when the unchanged
    // manifest is applied again (GitOps) and when another field of the spec is edited.
    let keeps_primary = |what: &'static str| keeps_primary(&hacs, &dr[li], &sampler, &leader, what);
    keeps_primary("after the failover").await;
    let apply = |failure_threshold: i32| {
        let mut m = serde_json::to_value(standby_manifest(&dr, failure_threshold)).unwrap();
        m.as_object_mut().unwrap().remove("status");
        m
    };
    let gitops = PatchParams::apply("gitops").force();
    let generation = hacs.get("dr").await.unwrap().metadata.generation;
    hacs.patch("dr", &gitops, &Patch::Apply(apply(3))).await.unwrap();
    assert_eq!(hacs.get("dr").await.unwrap().metadata.generation, generation, "an unchanged manifest");
    keeps_primary("the unchanged manifest applied again").await;
    hacs.patch("dr", &gitops, &Patch::Apply(apply(4))).await.unwrap();
    assert_ne!(hacs.get("dr").await.unwrap().metadata.generation, generation, "a spec edit");
    keeps_primary("another field of the spec edited").await;
    // The user removes spec.standby: production by the spec too, and the record goes.
    hacs.patch("dr", &PatchParams::default(), &Patch::Merge(json!({"spec": {"standby": null}})))
        .await
        .unwrap();
    eventually(WAIT, "the release record to be cleared", || async {
        hacs.get("dr").await.ok()?.status?.standby_released.is_none().then_some(())
    })
    .await;
    keeps_primary("spec.standby removed").await;
    // The user makes the old upstream a standby of the new production cluster: its record of
    // the supersession goes and it follows by the relation.
    hacs.patch(
        "src",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"standby": {"cluster": "dr"}}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "src's supersession record to be cleared", || async {
        hacs.get("src").await.ok()?.status?.superseded_by.is_none().then_some(())
    })
    .await;
    let src_leader = wait_leader(&hacs, "src", &dr[li]).await;
    let sli = if src_leader == "s-a" { 0 } else { 1 };
    wait_follows(&src[sli], &dr[li]).await;
    keeps_primary("the old upstream made a standby of it").await;
    assert!(sampler.count() > 20, "the sampler ran ({} samples)", sampler.count());
    assert_eq!(sampler.max(), 1, "never two writable servers");
    operator.stop().await;
}

/// After 10 heartbeats seen on the leader's server: it is still writable, and the cluster
/// is not a standby again.
async fn keeps_primary(
    hacs: &Api<HaCluster>,
    server: &RedisServer,
    sampler: &RoleSampler,
    leader: &str,
    what: &str,
) {
    let started = std::time::Instant::now();
    observe_heartbeats_sampled(server, 10, sampler).await;
    eprintln!("{what}: 10 heartbeats seen in {:?}", started.elapsed());
    assert_eq!(server.role().await.as_deref(), Some("master"), "{what}: still writable");
    let c = hacs.get("dr").await.unwrap();
    assert!(c.standby().is_none(), "{what}: not a standby again");
    let s = c.status.unwrap().shards[0].clone();
    assert_eq!(s.current_primary.as_deref(), Some(leader), "{what}");
    assert!(s.members.iter().any(|m| m.name == leader && m.role == Role::Primary), "{what}: {s:?}");
}

#[tokio::test]
async fn a_standby_a_protection_group_owns_is_refused_with_the_group_named() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sb-pg").await;
    let src = [RedisServer::start(None), RedisServer::start(None)];
    let dr = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let sm = [("s-a", &src[0]), ("s-b", &src[1])];
    let dm = [("t-a", &dr[0]), ("t-b", &dr[1])];
    let hb = json!({"heartbeatInterval": "200ms"});
    hacs.create(&PostParams::default(), &cluster("p", &[("s0", &sm)], hb.clone())).await.unwrap();
    hacs.create(&PostParams::default(), &cluster("p-dr", &[("s0", &dm)], hb)).await.unwrap();
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &ns);
    pgs.create(&PostParams::default(), &pg("site", &ns, &ns, &["p"], None)).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    wait_protected(&pgs, "site", SiteRole::Source).await;
    // Both clusters elected a primary before the group made p-dr its standby: from now on
    // only the production site's primary is writable.
    let sampler = RoleSampler::start(src.iter().chain(dr.iter()).map(RedisServer::sample_target).collect());
    let c = hacs.get("p-dr").await.unwrap();
    assert!(c.standby().is_some(), "the group made p-dr a standby");
    let epoch = c.status.as_ref().unwrap().shards[0].epoch;
    let leader = c.status.as_ref().unwrap().shards[0].current_primary.clone().unwrap();
    let li = if leader == "t-a" { 0 } else { 1 };

    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    frs.create(
        &PostParams::default(),
        &request("bypass", json!({"type": "Failover", "items": [{"cluster": "p-dr"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "bypass").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Failed), "{:?}", st.message);
    let msg = st.message.unwrap_or_default();
    assert!(
        msg.contains(&format!("ProtectionGroup {ns}/site"))
            && msg.contains("kubectl understudy site-failover site --to target")
            && msg.contains("nothing touched"),
        "{msg}"
    );
    let task = st.task.unwrap();
    assert_eq!(task.subtasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), STANDBY_CHAIN);
    assert!(task.subtasks[1..].iter().all(|t| t.status == TaskStatus::Pending), "{:?}", task.subtasks);
    let cst = hacs.get("p-dr").await.unwrap().status.unwrap();
    assert_eq!(cst.shards[0].epoch, epoch, "nothing touched");
    assert!(cst.standby_released.is_none() && cst.shards[0].operation.is_none());
    observe_heartbeats_sampled(&dr[li], 5, &sampler).await;
    assert_eq!(dr[li].role().await.as_deref(), Some("slave"), "still the group's standby");
    wait_protected(&pgs, "site", SiteRole::Source).await;
    assert_eq!(sampler.max(), 1, "never two writable servers");
    operator.stop().await;
}

/// Deleting the HaCluster a failover to primary made production stops none of its servers:
/// the old upstream, returning afterwards, still yields to the recorded members and is never
/// a second writable cluster.
#[tokio::test]
async fn the_old_upstream_still_yields_when_the_new_production_cluster_object_is_deleted() {
    let client = support::client().await;
    let ns = support::namespace(&client, "sb-del").await;
    let mut src = [RedisServer::start(None), RedisServer::start(None)];
    let dr = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let operator = Operator::start(client.clone(), &ns);
    let (spi, li, _) = upstream_and_standby(&hacs, &src, &dr).await;
    src[0].kill();
    src[1].kill();
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    frs.create(
        &PostParams::default(),
        &request("promote", json!({"type": "Failover", "items": [{"cluster": "dr"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "promote").await;
    assert_eq!(fr.status.unwrap().phase, Some(RequestPhase::Succeeded));
    assert_eq!(dr[li].role().await.as_deref(), Some("master"));
    hacs.delete("dr", &Default::default()).await.unwrap();
    eventually(WAIT, "dr to be gone", || async { hacs.get_opt("dr").await.ok()?.is_none().then_some(()) })
        .await;
    // The old upstream returns with its old primary a master: it follows the deleted
    // cluster's leader, which still runs and still takes writes.
    src[0].restart();
    src[1].restart();
    let _: () = src[spi].cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await.unwrap();
    wait_follows(&src[spi], &dr[li]).await;
    let sampler = RoleSampler::start(src.iter().chain(dr.iter()).map(RedisServer::sample_target).collect());
    observe_heartbeats_sampled(&src[spi], 10, &sampler).await;
    assert_eq!(src[spi].role().await.as_deref(), Some("slave"), "still fenced");
    assert_eq!(sampler.max(), 1, "one writable server: the deleted cluster's leader");
    let st = hacs.get("src").await.unwrap().status.unwrap();
    assert!(st.superseded_by.is_some(), "the record stays until the upstream is given a relation");
    operator.stop().await;
}
