//! `kubectl understudy` (the built `kubectl-understudy` binary) against the shared control
//! plane, with the operator in-process and real redis-server members: each command's output
//! and exit code, and refusals explained in one line.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::{
    plugin::render::{HistoryView, StatusList},
    resources::{
        FailoverRequest, HaCluster, ProtectionGroup, ShardFailover, protection_group::SiteRole,
        shard_failover::ShardFailoverPhase,
    },
};

use crate::{
    hacluster_redis::{cluster, wait_follows, wait_primary},
    protection_group::{pg, wait_protected},
    support::{self, Operator, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

/// What one run of the plugin did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout:\n{}--- stderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Run {
    /// The lines of stderr that are not warnings.
    fn errors(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.is_empty() && !l.starts_with("warning:")).collect()
    }
}

/// Run `kubectl-understudy -n <ns> <args>` against the shared control plane. Asynchronously:
/// the operator runs on this test's runtime and must keep working meanwhile.
async fn plugin(ns: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-understudy"))
        .arg("--kubeconfig")
        .arg(&support::shared().kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run kubectl-understudy");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ kubectl understudy -n {ns} {}\n{run}", args.join(" "));
    run
}

/// The user the API server says the test's credentials are.
async fn kube_user(client: &Client) -> String {
    let r = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    r.status.unwrap().user_info.unwrap().username.unwrap()
}

/// The primary named on the `Primary:` line of `status`.
fn primary_line(stdout: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.starts_with("Primary:"))?;
    line.split_whitespace().nth(1).map(str::to_owned)
}

#[tokio::test]
async fn status_switchover_refusals_history_and_machine_output() {
    let client = support::client().await;
    let ns = support::namespace(&client, "plugin").await;
    let servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let members: Vec<(&str, &RedisServer)> =
        vec![("ra", &servers[0]), ("rb", &servers[1]), ("rc", &servers[2])];
    let mut hac = cluster("c", &[("s0", &members)], json!({"heartbeatInterval": "200ms"}));
    // rc may never be promoted.
    hac.spec.shards.as_mut().unwrap()[0].members[2].priority = 0;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    hacs.create(&PostParams::default(), &hac).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&hacs, "c", "s0", None).await;
    let pi = ["ra", "rb", "rc"].iter().position(|n| *n == p).unwrap();
    for i in (0..3).filter(|i| *i != pi) {
        wait_follows(&servers[i], &servers[pi]).await;
    }
    // Every member healthy in status, so `status` has the whole picture.
    eventually(WAIT, "three healthy members in status", || async {
        let st = hacs.get("c").await.ok()?.status?;
        (st.healthy_members.as_deref() == Some("3/3")).then_some(())
    })
    .await;

    // status of one cluster: members, roles, the primary and its epoch.
    let r = plugin(&ns, &["status", "c"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.starts_with(&format!("Cluster:        {ns}/c (Redis)\n")), "{r}");
    assert_eq!(primary_line(&r.stdout).as_deref(), Some(p.as_str()), "{r}");
    let epoch = hacs.get("c").await.unwrap().status.unwrap().shards[0].epoch;
    assert!(r.stdout.contains(&format!("(shard s0, epoch {epoch})")), "{r}");
    for m in ["ra", "rb", "rc"] {
        let row =
            r.stdout.lines().find(|l| l.starts_with(&format!("{m} "))).unwrap_or_else(|| panic!("{m}: {r}"));
        let role = if m == p { "Primary" } else { "Replica" };
        assert!(row.contains(role) && row.contains(" yes "), "{m}: {row}");
    }
    assert!(r.stdout.contains("In flight:      none"), "{r}");
    // every cluster of the namespace, one line each
    let r = plugin(&ns, &["status"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.starts_with("NAME  ENGINE  PHASE"), "{r}");
    assert!(r.stdout.lines().nth(1).is_some_and(|l| l.starts_with("c     Redis") && l.contains(&p)), "{r}");
    // -o json / -o yaml: the documented shape.
    let r = plugin(&ns, &["status", "c", "-o", "json"]).await;
    assert_eq!(r.code, 0, "{r}");
    let list: StatusList = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert_eq!(list.clusters.len(), 1);
    assert_eq!(list.clusters[0].shards[0].primary.as_deref(), Some(p.as_str()));
    assert_eq!(list.clusters[0].shards[0].members.len(), 3);
    let r = plugin(&ns, &["status", "-o", "yaml"]).await;
    let list: StatusList = serde_yaml::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert_eq!(list.clusters[0].name, "c");

    // switchover, followed: progress lines, exit 0, the new primary in status.
    let r = plugin(&ns, &["switchover", "c", "--reason", "plugin test"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.starts_with("created ShardFailover c-switchover-"), "{r}");
    let progress: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with('[') && l.contains("s] ")).collect();
    assert!(progress.iter().any(|l| l.contains("Succeeded")), "{r}");
    assert!(r.stdout.contains("succeeded: done: s0:"), "{r}");
    let q = wait_primary(&hacs, "c", "s0", Some(&p)).await;
    assert_ne!(q, "rc", "priority 0 is never promoted");
    assert!(r.stdout.contains(&format!("c/s0: primary {q} (epoch {})", epoch + 1)), "{r}");
    let r = plugin(&ns, &["status", "c"]).await;
    assert_eq!(primary_line(&r.stdout).as_deref(), Some(q.as_str()), "{r}");
    assert!(r.stdout.contains(&format!("Last failover:  s0: {p} → {q}")), "{r}");
    // What it created is an ordinary, labelled, attributed resource.
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    let created = sfos.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(created.len(), 1);
    let sfo = &created[0];
    assert_eq!(sfo.spec.shard_uids, std::slice::from_ref(&p));
    assert_eq!(
        sfo.labels().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("kubectl-understudy")
    );
    assert_eq!(sfo.labels().get("understudy.dev/cluster").map(String::as_str), Some("c"));
    assert_eq!(sfo.annotations().get("understudy.dev/requested-by"), Some(&kube_user(&client).await));
    assert_eq!(sfo.annotations().get("understudy.dev/reason").map(String::as_str), Some("plugin test"));
    assert_eq!(sfo.status.as_ref().and_then(|s| s.phase), Some(ShardFailoverPhase::Succeeded));

    // Refused by the operator: a member that may never be promoted, and one that does not
    // exist. Exit 1, the reason on one line; nothing changes.
    let epoch = epoch + 1;
    let r = plugin(&ns, &["switchover", "c", "--to", "rc"]).await;
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.errors().len(), 1, "one line: {r}");
    assert!(r.errors()[0].contains("candidate rc has priority 0: never promoted"), "{r}");
    let r = plugin(&ns, &["switchover", "c", "--to", "zz"]).await;
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.errors().len(), 1, "one line: {r}");
    assert!(r.errors()[0].contains("candidate zz is not a member of c/s0"), "{r}");
    assert_eq!(hacs.get("c").await.unwrap().status.unwrap().shards[0].epoch, epoch, "nothing touched");
    // Refused by the API server (a CEL rule): the primary cannot replace itself.
    let r = plugin(&ns, &["switchover", "c", "--to", &q]).await;
    assert_eq!(r.code, 1, "{r}");
    assert!(r.errors()[0].contains("candidate must be another member than expectedPrimary"), "{r}");
    // A dry run names the member it would promote and changes nothing.
    let r = plugin(&ns, &["switchover", "c", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("succeeded: dry run: s0:"), "{r}");
    assert_eq!(
        hacs.get("c").await.unwrap().status.unwrap().shards[0].epoch,
        epoch,
        "dry run touched nothing"
    );
    // --to a replica that may be promoted: a FailoverRequest, followed step by step.
    let back = p.clone();
    let r = plugin(&ns, &["switchover", "c", "--to", &back]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.starts_with("created FailoverRequest c-switchover-"), "{r}");
    assert!(r.stdout.contains(&format!("expected primary {q}")), "{r}");
    for step in ["check: SUCCESSFUL", "lock: SUCCESSFUL", "promote: SUCCESSFUL", "record: SUCCESSFUL"] {
        assert!(r.stdout.contains(&format!("c {step}")), "{step}: {r}");
    }
    assert_eq!(wait_primary(&hacs, "c", "s0", Some(&q)).await, back);

    // history: what was asked, what happened, oldest first.
    let r = plugin(&ns, &["history", "c"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains(&format!("ShardFailover/{}", sfo.name_any())), "{r}");
    assert!(r.stdout.contains("Created: switch over"), "{r}");
    // The last role change: the operator's Event, or status.lastFailover where no Event is left.
    assert!(
        r.stdout.contains(&format!("{back} promoted, replacing {q}"))
            || r.stdout.contains("RoleChange requested by FailoverRequest"),
        "{r}"
    );
    assert!(
        r.stdout.contains("Warning Failed:") && r.stdout.contains("never promoted"),
        "the refusal's Event: {r}"
    );
    let r = plugin(&ns, &["history", "c", "-o", "json"]).await;
    let h: HistoryView = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r}"));
    let times: Vec<&str> = h.entries.iter().map(|e| e.time.as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    for fr in frs.list(&ListParams::default()).await.unwrap().items {
        let object = format!("FailoverRequest/{}", fr.name_any());
        assert!(h.entries.iter().any(|e| e.object == object && e.kind == "Created"), "{object}: {r}");
    }

    // Usage errors exit 2; an unknown cluster is a one-line refusal.
    let r = plugin(&ns, &["switchover"]).await;
    assert_eq!(r.code, 2, "{r}");
    let r = plugin(&ns, &["status", "c", "-A"]).await;
    assert_eq!(r.code, 2, "{r}");
    let r = plugin(&ns, &["status", "nope"]).await;
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.errors(), [format!("error: HaCluster nope not found in namespace {ns}").as_str()], "{r}");
    let r = plugin(&ns, &["completion", "bash"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("complete -F") && r.stdout.contains("kubectl-understudy"), "{}", r.code);
    operator.stop().await;
}

#[tokio::test]
async fn failover_pause_resume_and_following_past_the_deadline() {
    let client = support::client().await;
    let ns = support::namespace(&client, "plugin-fo").await;
    let mut servers = [RedisServer::start(None), RedisServer::start(None)];
    let members: Vec<(&str, &RedisServer)> = vec![("fa", &servers[0]), ("fb", &servers[1])];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    // Manual: a lost primary waits for a failover request.
    hacs.create(
        &PostParams::default(),
        &cluster("f", &[("s0", &members)], json!({"heartbeatInterval": "200ms", "mode": "Manual"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&hacs, "f", "s0", None).await;
    let (pi, ri) = if p == "fa" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;

    // A healthy primary is not failed over without --force.
    let r = plugin(&ns, &["failover", "f"]).await;
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.errors().len(), 1, "{r}");
    assert!(r.errors()[0].contains("is healthy") && r.errors()[0].contains("--force"), "{r}");

    // The replica falls behind (cut from its primary while the cluster is paused, so nothing
    // re-points it), then the primary dies; manual mode waits; status says what is wrong.
    let set_paused = |paused: bool| {
        let hacs = hacs.clone();
        async move {
            let body = json!({"spec": {"paused": paused}});
            hacs.patch("f", &PatchParams::default(), &Patch::Merge(body)).await.unwrap();
        }
    };
    set_paused(true).await;
    eventually(WAIT, "Paused reported", || async {
        let st = hacs.get("f").await.ok()?.status?;
        st.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True").then_some(())
    })
    .await;
    let () = servers[ri].cmd(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1)).await.unwrap();
    // Its self-fencing would refuse writes without a replica: lifted by hand (the paused
    // operator does not put it back), so the primary takes writes the replica never gets.
    let () =
        servers[pi].cmd(redis::cmd("CONFIG").arg("SET").arg("min-replicas-to-write").arg(0)).await.unwrap();
    for i in 0..20 {
        let () = servers[pi].cmd(redis::cmd("SET").arg(format!("unreplicated:{i}")).arg(i)).await.unwrap();
    }
    eventually(WAIT, "status records the replica behind", || async {
        let st = hacs.get("f").await.ok()?.status?;
        let s = st.shards.first()?;
        let offset = |n: &str| s.members.iter().find(|m| m.name == n).and_then(|m| m.offset);
        (offset(&p)? > offset(["fa", "fb"][ri])?).then_some(())
    })
    .await;
    servers[pi].kill();
    set_paused(false).await;
    eventually(WAIT, "the lost primary reported", || async {
        let st = hacs.get("f").await.ok()?.status?;
        st.conditions.iter().any(|c| c.reason == "ManualFailover").then_some(())
    })
    .await;
    // Naming the lagging replica does not promote it past maxLagOnFailover (0): refused at
    // once, in one line, nothing touched.
    let epoch = hacs.get("f").await.unwrap().status.unwrap().shards[0].epoch;
    let r = plugin(&ns, &["failover", "f", "--candidate", ["fa", "fb"][ri]]).await;
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.errors().len(), 1, "one line: {r}");
    assert!(r.errors()[0].contains("bytes behind the last primary offset (maxLagOnFailover 0)"), "{r}");
    assert_eq!(hacs.get("f").await.unwrap().status.unwrap().shards[0].epoch, epoch, "nothing touched");
    // Accepting that loss is a spec change of the cluster, made on purpose.
    let accept = json!({"spec": {"failover": {"maxLagOnFailover": 1_000_000}}});
    hacs.patch("f", &PatchParams::default(), &Patch::Merge(accept)).await.unwrap();
    let r = plugin(&ns, &["status", "f"]).await;
    assert!(r.stdout.contains("Conditions not OK:") && r.stdout.contains("ManualFailover"), "{r}");
    assert!(
        r.stdout.lines().any(|l| l.starts_with(&format!("{p} ")) && l.contains(" NO ")),
        "the dead primary is unhealthy: {r}"
    );
    let r = plugin(&ns, &["failover", "f", "--reason", "primary host lost"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.starts_with("created FailoverRequest f-failover-"), "{r}");
    assert!(r.stdout.contains(&format!("expected primary {p}")), "guarded by the primary it saw: {r}");
    let q = ["fa", "fb"][ri];
    let epoch = hacs.get("f").await.unwrap().status.unwrap().shards[0].epoch;
    assert!(r.stdout.contains(&format!("f/s0: primary {q} (epoch {epoch})")), "{r}");
    assert_eq!(wait_primary(&hacs, "f", "s0", Some(&p)).await, q);
    servers[pi].try_spawn().unwrap();
    wait_follows(&servers[pi], &servers[ri]).await;

    // pause: the field, who paused, the operator's report; a switchover is refused meanwhile.
    let r = plugin(&ns, &["pause", "f", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(!hacs.get("f").await.unwrap().spec.paused, "a dry run changes nothing");
    let r = plugin(&ns, &["pause", "f", "--reason", "maintenance"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("Paused=True Paused"), "the operator reported it: {r}");
    assert!(r.stderr.contains("GitOps"), "the GitOps warning: {r}");
    let c = hacs.get("f").await.unwrap();
    assert!(c.spec.paused);
    let by = c.annotations().get("understudy.dev/paused-by").cloned().unwrap_or_default();
    assert!(by.starts_with(&kube_user(&client).await) && by.contains("(reason: maintenance)"), "{by}");
    let r = plugin(&ns, &["status", "f"]).await;
    assert!(r.stdout.contains("PAUSED (spec.paused)"), "{r}");
    let r = plugin(&ns, &["switchover", "f"]).await;
    assert_eq!(r.code, 1, "{r}");
    assert!(r.errors()[0].contains("is paused"), "{r}");
    let r = plugin(&ns, &["pause", "f"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("paused already"), "{r}");
    let r = plugin(&ns, &["resume", "f"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("Paused=False Active"), "{r}");
    let c = hacs.get("f").await.unwrap();
    assert!(!c.spec.paused && !c.annotations().contains_key("understudy.dev/paused-by"));

    // Nobody carries the switchover out (the operator is stopped): following gives up at
    // --timeout with exit 3; the request stays, and the operator finishes it once back.
    operator.stop().await;
    let r = plugin(&ns, &["switchover", "f", "--timeout", "2s"]).await;
    assert_eq!(r.code, 3, "{r}");
    assert!(r.errors()[0].contains("goes on in the cluster"), "{r}");
    let operator = Operator::start(client.clone(), &ns);
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the switchover finished by the restarted operator", || async {
        let items = sfos.list(&ListParams::default()).await.ok()?.items;
        let s = items.first()?.status.clone()?;
        (s.phase == Some(ShardFailoverPhase::Succeeded)).then_some(())
    })
    .await;
    assert_eq!(wait_primary(&hacs, "f", "s0", Some(q)).await, p);
    operator.stop().await;
}

#[tokio::test]
async fn restart_is_refused_for_static_members_and_followed_for_members_the_operator_runs() {
    let client = support::client().await;
    let ns = support::namespace(&client, "plugin-rs").await;
    let server = RedisServer::start(None);
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    hacs.create(&PostParams::default(), &cluster("s", &[("s0", &[("sa", &server)])], json!({})))
        .await
        .unwrap();
    // Members the operator runs: pods it creates (there is no kubelet here, so they never run).
    let run: HaCluster = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "p"},
        "spec": {"engine": "Redis", "instances": {"members": 2, "image": "redis:7"}}
    }))
    .unwrap();
    hacs.create(&PostParams::default(), &run).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);

    let r = plugin(&ns, &["restart", "s"]).await;
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.errors().len(), 1, "{r}");
    assert!(r.errors()[0].contains("has no spec.instances"), "{r}");

    let revision = |c: &HaCluster| c.status.as_ref()?.instances.as_ref()?.revision.clone();
    let before =
        eventually(WAIT, "the members' revision recorded", || async { revision(&hacs.get("p").await.ok()?) })
            .await;
    let r = plugin(&ns, &["restart", "p", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(hacs.get("p").await.unwrap().spec.instances.unwrap().pod.annotations.is_empty());
    // Followed to the end of the roll, which never comes here (the node tier follows one
    // through: tests/node/instances.rs): exit 3, the restart going on in the cluster.
    let r = plugin(&ns, &["restart", "p", "--timeout", "5s"]).await;
    assert_eq!(r.code, 3, "{r}");
    assert!(r.stdout.contains("Progressing=True"), "the roll's progress is shown: {r}");
    let c = hacs.get("p").await.unwrap();
    let at =
        c.spec.instances.as_ref().unwrap().pod.annotations.get("kubectl.kubernetes.io/restartedAt").cloned();
    assert!(at.is_some_and(|t| t.parse::<k8s_openapi::jiff::Timestamp>().is_ok()), "an RFC 3339 time");
    assert_ne!(revision(&c), Some(before));
    operator.stop().await;
}

#[tokio::test]
async fn site_failover_moves_production_and_says_when_there_is_nothing_to_do() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "plugin-pg").await;
    let dr_ns = support::namespace(&client, "plugin-pg-dr").await;
    let src_servers = [RedisServer::start(None), RedisServer::start(None)];
    let dr_servers = [RedisServer::start(None), RedisServer::start(None)];
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    let hb = json!({"heartbeatInterval": "200ms"});
    src.create(
        &PostParams::default(),
        &cluster("a", &[("s0", &[("s-0", &src_servers[0]), ("s-1", &src_servers[1])])], hb.clone()),
    )
    .await
    .unwrap();
    dr.create(
        &PostParams::default(),
        &cluster("a-dr", &[("s0", &[("t-0", &dr_servers[0]), ("t-1", &dr_servers[1])])], hb),
    )
    .await
    .unwrap();
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &src_ns);
    pgs.create(&PostParams::default(), &pg("dr", &src_ns, &dr_ns, &["a"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);
    wait_protected(&pgs, "dr", SiteRole::Source).await;

    let r = plugin(&src_ns, &["site-failover", "dr", "--to", "target", "--force"]).await;
    assert_eq!(r.code, 2, "{r}");
    assert!(r.errors()[0].contains("needs --reason"), "{r}");
    // The operator's dry run: the steps it would take now, and the lag.
    let r = plugin(&src_ns, &["site-failover", "dr", "--to", "target", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("possible now") && r.stdout.contains("pause writes on 1 production primaries"),
        "{r}"
    );
    assert!(r.stdout.contains("pair a/a-dr: Move"), "{r}");
    // A forced dry run while both sites answer: nothing needs forcing, the pair moves as planned.
    let r = plugin(&src_ns, &["site-failover", "dr", "--to", "target", "--dry-run", "--force"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("forced failover") && r.stdout.contains("pair a/a-dr: Move"), "{r}");
    let r = plugin(&src_ns, &["site-failover", "dr", "--to", "source", "--dry-run"]).await;
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("blocked: the Source site is production already"), "{r}");
    assert_eq!(pgs.get("dr").await.unwrap().spec.priority_site, SiteRole::Source, "dry run");
    let r = plugin(&src_ns, &["site-failover", "dr", "--to", "target"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("spec.prioritySite set to Target"), "{r}");
    assert!(r.stdout.lines().any(|l| l.starts_with('[') && l.contains("production site")), "progress: {r}");
    assert!(
        r.stdout.contains("succeeded: job ") && r.stdout.contains("the Target site is production"),
        "{r}"
    );
    wait_protected(&pgs, "dr", SiteRole::Target).await;
    let r = plugin(&src_ns, &["site-failover", "dr", "--to", "target"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("production already"), "{r}");
    // The cluster's history shows the group's move.
    let r = plugin(&src_ns, &["history", "a"]).await;
    assert!(r.stdout.contains("ProtectionGroup/dr"), "{r}");
    operator.stop().await;
}
