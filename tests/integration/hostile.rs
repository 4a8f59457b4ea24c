//! Hostile input the API server accepts and only the operator can judge. The status
//! subresource is writable by anyone granted `*/status`: what the operator reads back from it
//! is input like any other.

use std::time::Duration;

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{
    FailoverRequest, HaCluster,
    failover_request::{RequestPhase, TaskStatus},
};

use crate::{
    failover_request::request,
    hacluster_redis::{cluster, wait_follows, wait_primary},
    support::{self, Process, RedisServer, RoleSampler, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

/// The request once it is terminal.
async fn ended(frs: &Api<FailoverRequest>, name: &str) -> FailoverRequest {
    eventually(WAIT, &format!("FailoverRequest {name} to end"), || async {
        let r = frs.get(name).await.ok()?;
        r.status.as_ref()?.phase.filter(|p| p.is_terminal()).map(|_| r)
    })
    .await
}

/// A well-formed task for one item, as the operator builds it, with `check` done and its
/// plan recorded (`cluster`, `from`, `to`), every later step Pending.
fn task(cluster: &str, from: &str, to: &str) -> serde_json::Value {
    let steps = ["check", "lock", "fence", "promote", "redirect", "route", "record"];
    let subtasks: Vec<serde_json::Value> = steps
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let id = i as i64 + 1;
            let mut t = json!({
                "id": id, "name": name, "description": name, "item": 0,
                "status": if i == 0 { "SUCCESSFUL" } else { "PENDING" },
                "upstreams": if i == 0 { vec![] } else { vec![id - 1] },
                "downstreams": if i + 1 == steps.len() { vec![] } else { vec![id + 1] },
                "timeoutSeconds": 30, "prohibitRollback": *name == "promote" || *name == "redirect",
            });
            if i == 0 {
                t["context"] = json!({"cluster": cluster, "shard": "s0", "from": from, "to": to});
                t["message"] =
                    json!(format!("cluster={cluster} shard=s0 from={from} to={to}; will promote {to}"));
            }
            t
        })
        .collect();
    json!({"id": "forged", "name": "switchover", "status": "RUNNING", "subtasks": subtasks})
}

/// FailoverRequests whose status was written by someone else — out-of-range items, cycles,
/// dangling upstreams, unknown steps, a plan naming another cluster, a candidate that is not a
/// member — each end Failed with reason InvalidStatus (or Failed/RolledBack by a step that
/// names the mismatch); the operator process never panics or exits, no role changes, and a valid
/// request created afterwards still succeeds.
#[tokio::test]
async fn failover_requests_with_forged_status_fail_cleanly_and_touch_nothing() {
    let client = support::client().await;
    let ns = support::namespace(&client, "hostile-fr").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let victims = [RedisServer::start(None), RedisServer::start(None)];
    let sampler = RoleSampler::start(servers.iter().map(RedisServer::sample_target).collect());
    let victim_sampler = RoleSampler::start(victims.iter().map(RedisServer::sample_target).collect());
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let failover = json!({"heartbeatInterval": "200ms"});
    hacs.create(
        &PostParams::default(),
        &cluster("k", &[("s0", &[("a", &servers[0]), ("b", &servers[1])])], failover.clone()),
    )
    .await
    .unwrap();
    hacs.create(
        &PostParams::default(),
        &cluster("victim", &[("s0", &[("v1", &victims[0]), ("v2", &victims[1])])], failover),
    )
    .await
    .unwrap();
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let args = ["run", "--namespaces", &ns, "--listen", &listen];
    let mut operator = Process::understudy(&args, "hostile-fr-1");
    let p = wait_primary(&hacs, "k", "s0", None).await;
    let vp = wait_primary(&hacs, "victim", "s0", None).await;
    let (pi, qi) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[qi], &servers[pi]).await;
    let q = ["a", "b"][qi];
    let vq = if vp == "v1" { "v2" } else { "v1" };
    let epochs = |c: HaCluster| c.status.map(|s| s.shards[0].epoch);
    let (k_epoch, victim_epoch) =
        (epochs(hacs.get("k").await.unwrap()), epochs(hacs.get("victim").await.unwrap()));
    // With the operator stopped, requests are created and their status forged, so that the
    // operator meets them first as they are (as after a restart).
    operator.terminate();

    let mut forged: Vec<(&str, serde_json::Value, &str)> = Vec::new();
    let mut t = task("k", &p, q);
    t["subtasks"][1]["item"] = json!(5);
    forged.push(("item-out-of-range", t, "item 5"));
    let mut t = task("k", &p, q);
    t["subtasks"][1]["upstreams"] = json!([3]);
    forged.push(("cycle", t, "cycle"));
    let mut t = task("k", &p, q);
    t["subtasks"][3]["upstreams"] = json!([99]);
    forged.push(("dangling-upstream", t, "does not exist"));
    let mut t = task("k", &p, q);
    t["subtasks"][2]["name"] = json!("drop-everything");
    forged.push(("unknown-step", t, "unknown step"));
    let mut t = task("k", &p, q);
    t["subtasks"][0]["id"] = json!(2);
    forged.push(("duplicate-id", t, "twice"));
    let mut t = task("k", &p, q);
    t["subtasks"] = json!([]);
    forged.push(("no-subtasks", t, "no subtasks"));
    // Well-formed, but the plan names another cluster than the item: the request must not
    // become a way to move a cluster it does not name.
    forged.push(("plan-for-another-cluster", task("victim", &vp, vq), "does not match spec.items"));
    // Well-formed, for the right cluster, but the candidate is not a member.
    forged.push(("candidate-not-a-member", task("k", &p, "intruder"), "not a member"));

    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    for (name, task, _) in &forged {
        frs.create(
            &PostParams::default(),
            &request(name, json!({"type": "Switchover", "items": [{"cluster": "k"}]})),
        )
        .await
        .unwrap();
        frs.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "task": task}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: the API server accepts the forged status: {e}"));
    }
    let mut operator = Process::understudy(&args, "hostile-fr-2");
    for (name, _, expect) in &forged {
        let fr = ended(&frs, name).await;
        let st = fr.status.unwrap();
        // Failed, or RolledBack where a step failed after `check` (which has nothing to undo).
        assert!(
            matches!(st.phase, Some(RequestPhase::Failed | RequestPhase::RolledBack)),
            "{name}: {:?} {:?}",
            st.phase,
            st.message
        );
        let message = st.message.clone().unwrap_or_default();
        assert!(message.contains(expect), "{name}: the message says why ({expect:?}): {message}");
        let complete = st.conditions.iter().find(|c| c.type_ == "Complete").expect("Complete condition");
        assert_eq!(complete.status, "False", "{name}");
        assert!(
            st.task.iter().flat_map(|t| &t.subtasks).all(|t| t.status != TaskStatus::Running),
            "{name}: nothing left Running"
        );
        eprintln!("{name}: {:?} ({}): {message}", st.phase, complete.reason);
    }
    assert!(
        operator.child.try_wait().unwrap().is_none(),
        "the operator is still running: {}",
        operator.log()
    );
    assert!(!operator.log().contains("panicked"), "the operator never panicked: {}", operator.log());
    // Nothing moved: same primaries, same epochs, no lock left behind.
    for (name, primary, epoch) in [("k", &p, k_epoch), ("victim", &vp, victim_epoch)] {
        let c = hacs.get(name).await.unwrap();
        let s = &c.status.as_ref().unwrap().shards[0];
        assert_eq!(s.current_primary.as_deref(), Some(primary.as_str()), "{name} kept its primary");
        assert_eq!(Some(s.epoch), epoch, "{name}: no promotion");
        assert!(s.operation.is_none(), "{name}: no lock left: {:?}", s.operation);
    }

    // The operator still serves everything else: a valid request succeeds.
    frs.create(
        &PostParams::default(),
        &request("valid", json!({"type": "Switchover", "items": [{"cluster": "k"}]})),
    )
    .await
    .unwrap();
    let done = ended(&frs, "valid").await;
    assert_eq!(done.status.as_ref().unwrap().phase, Some(RequestPhase::Succeeded), "{:?}", done.status);
    assert_eq!(wait_primary(&hacs, "k", "s0", Some(&p)).await, q);
    assert_eq!(sampler.max(), 1, "never two primaries");
    assert_eq!(victim_sampler.max(), 1, "never two primaries in the victim cluster");
    assert!(operator.child.try_wait().unwrap().is_none(), "the operator is still running");
}

/// Names that routing needs but that someone else's objects already hold are never taken
/// over: an HaCluster whose `routing.primaryService` names an existing, unrelated Service
/// reports `Routed=False NameConflict` and leaves it exactly as it was (no owner reference,
/// so deleting the cluster does not garbage-collect it); a FailoverRequest whose serviceName
/// is taken fails its route step saying so. Failover itself is unaffected.
#[tokio::test]
async fn routing_never_takes_over_a_service_it_did_not_create() {
    use k8s_openapi::api::core::v1::Service;
    let client = support::client().await;
    let ns = support::namespace(&client, "hostile-owner").await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let theirs = |name: &str| -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": {"app": "payments"}},
            "spec": {"selector": {"app": "payments"}, "ports": [{"name": "http", "port": 8080}]}
        }))
        .unwrap()
    };
    for name in ["payments", "payments-writes"] {
        services.create(&PostParams::default(), &theirs(name)).await.unwrap();
    }
    let before = |s: &Service| (s.labels().clone(), s.spec.clone(), s.owner_references().to_vec());
    let original: Vec<_> =
        [services.get("payments").await.unwrap(), services.get("payments-writes").await.unwrap()]
            .iter()
            .map(before)
            .collect();

    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let mut c = cluster(
        "k",
        &[("s0", &[("a", &servers[0]), ("b", &servers[1])])],
        json!({"heartbeatInterval": "200ms"}),
    );
    c.spec.routing.primary_service = Some("payments".into());
    hacs.create(&PostParams::default(), &c).await.unwrap();
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let operator = Process::understudy(&["run", "--namespaces", &ns, "--listen", &listen], "hostile-owner");
    let p = wait_primary(&hacs, "k", "s0", None).await;
    let message = eventually(WAIT, "Routed=False NameConflict", || async {
        let st = hacs.get("k").await.ok()?.status?;
        let c = st.conditions.iter().find(|c| c.type_ == "Routed" && c.status == "False")?;
        (c.reason == "NameConflict").then(|| c.message.clone())
    })
    .await;
    assert!(message.contains("payments"), "the condition names the Service: {message}");
    // The replicas Service (not taken) is still created and owned by the cluster.
    let replicas =
        eventually(WAIT, "Service k-replicas", || async { services.get_opt("k-replicas").await.ok()? }).await;
    assert!(replicas.owner_references().iter().any(|o| o.kind == "HaCluster" && o.name == "k"));

    // A FailoverRequest whose serviceName is taken: the switchover happens, the route step
    // fails naming the Service, and the Service is untouched.
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"type": "Switchover", "items": [{"cluster": "k", "serviceName": "payments-writes"}]});
    frs.create(&PostParams::default(), &request("move", spec)).await.unwrap();
    let fr = ended(&frs, "move").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Failed), "{:?}", st.message);
    assert!(st.message.as_deref().unwrap_or_default().contains("payments-writes"), "{:?}", st.message);
    wait_primary(&hacs, "k", "s0", Some(&p)).await;

    let now: Vec<_> =
        [services.get("payments").await.unwrap(), services.get("payments-writes").await.unwrap()]
            .iter()
            .map(before)
            .collect();
    assert_eq!(now, original, "the unrelated Services are exactly as they were");
    drop(operator);
    // Deleting the cluster leaves them: the garbage collector has nothing to follow.
    hacs.delete("k", &Default::default()).await.unwrap();
    eventually(WAIT, "the HaCluster to be gone", || async {
        hacs.get_opt("k").await.ok()?.is_none().then_some(())
    })
    .await;
    // (The garbage collector runs: the cluster's own Service goes.)
    eventually(WAIT, "k-replicas to be garbage-collected", || async {
        services.get_opt("k-replicas").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(services.get_opt("payments").await.unwrap().is_some());
    assert!(services.get_opt("payments-writes").await.unwrap().is_some());
}

/// Operations that name things ambiguously are refused, and operations created before what
/// they name wait for it: a ShardFailover whose uid is a member of two HaClusters fails with
/// `shard_uid_ambiguous` and touches neither; a ShardFailover and a FailoverRequest created
/// before their clusters exist (as a GitOps tool applies them, all at once) wait and then
/// succeed once it is bootstrapped.
#[tokio::test]
async fn ambiguous_names_are_refused_and_operations_wait_for_their_cluster() {
    use understudy::resources::{
        ShardFailover,
        shard_failover::{ShardFailoverError, ShardFailoverPhase},
    };
    let client = support::client().await;
    let ns = support::namespace(&client, "hostile-order").await;
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let _operator = Process::understudy(&["run", "--namespaces", &ns, "--listen", &listen], "hostile-order");
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let sfos: Api<ShardFailover> = Api::namespaced(client.clone(), &ns);
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    let sfo = |name: &str, spec: serde_json::Value| -> ShardFailover {
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    };
    let finished = |name: &'static str| {
        let sfos = sfos.clone();
        async move {
            eventually(WAIT, &format!("ShardFailover {name} to finish"), || async {
                let s = sfos.get(name).await.ok()?;
                matches!(
                    s.status.as_ref()?.phase,
                    Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed)
                )
                .then_some(s)
            })
            .await
        }
    };

    // Before any cluster exists: a ShardFailover for member "late-a" and a FailoverRequest
    // for cluster "late". Both wait.
    sfos.create(
        &PostParams::default(),
        &sfo("early", json!({"shardUids": ["late-a"], "timeoutSeconds": 60})),
    )
    .await
    .unwrap();
    frs.create(
        &PostParams::default(),
        &request(
            "early",
            json!({"type": "Switchover", "timeoutSeconds": 60, "items": [{"cluster": "late2"}]}),
        ),
    )
    .await
    .unwrap();
    eventually(WAIT, "the ShardFailover to say it waits", || async {
        let st = sfos.get("early").await.ok()?.status?;
        (st.phase == Some(ShardFailoverPhase::Pending) && st.message?.contains("waiting")).then_some(())
    })
    .await;
    eventually(WAIT, "the FailoverRequest's check to wait", || async {
        let st = frs.get("early").await.ok()?.status?;
        let check = st.task?.subtasks.into_iter().find(|t| t.name == "check")?;
        (st.phase == Some(RequestPhase::Running) && check.status == TaskStatus::Running).then_some(())
    })
    .await;
    // The clusters arrive.
    let late = [RedisServer::start(None), RedisServer::start(None)];
    let late2 = [RedisServer::start(None), RedisServer::start(None)];
    hacs.create(
        &PostParams::default(),
        &cluster(
            "late2",
            &[("s0", &[("l2a", &late2[0]), ("l2b", &late2[1])])],
            json!({"heartbeatInterval": "200ms"}),
        ),
    )
    .await
    .unwrap();
    hacs.create(
        &PostParams::default(),
        &cluster(
            "late",
            &[("s0", &[("late-a", &late[0]), ("late-b", &late[1])])],
            json!({"heartbeatInterval": "200ms", "mode": "Manual"}),
        ),
    )
    .await
    .unwrap();
    let first = wait_primary(&hacs, "late", "s0", None).await;
    if first == "late-a" {
        let s = finished("early").await;
        assert_eq!(s.status.as_ref().unwrap().phase, Some(ShardFailoverPhase::Succeeded), "{:?}", s.status);
    } else {
        // late-b won the bootstrap: late-a is a replica, which is not a reason to wait.
        let s = finished("early").await;
        assert_eq!(
            s.status.as_ref().unwrap().error_code,
            Some(ShardFailoverError::ShardIsSlave),
            "{:?}",
            s.status
        );
    }
    let fr = ended(&frs, "early").await;
    assert_eq!(fr.status.as_ref().unwrap().phase, Some(RequestPhase::Succeeded), "{:?}", fr.status);

    // Two clusters with a member named "twin": a ShardFailover for it is ambiguous.
    let twins = [RedisServer::start(None), RedisServer::start(None)];
    let failover = json!({"heartbeatInterval": "200ms"});
    hacs.create(&PostParams::default(), &cluster("x", &[("s0", &[("twin", &twins[0])])], failover.clone()))
        .await
        .unwrap();
    hacs.create(&PostParams::default(), &cluster("y", &[("s0", &[("twin", &twins[1])])], failover))
        .await
        .unwrap();
    wait_primary(&hacs, "x", "s0", None).await;
    wait_primary(&hacs, "y", "s0", None).await;
    let epochs = |c: HaCluster| c.status.map(|s| s.shards[0].epoch);
    let before = (epochs(hacs.get("x").await.unwrap()), epochs(hacs.get("y").await.unwrap()));
    sfos.create(&PostParams::default(), &sfo("which", json!({"shardUids": ["twin"]}))).await.unwrap();
    let s = finished("which").await;
    let st = s.status.unwrap();
    assert_eq!(st.error_code, Some(ShardFailoverError::ShardUidAmbiguous), "{st:?}");
    let message = st.message.unwrap_or_default();
    assert!(message.contains("x") && message.contains("y"), "names both clusters: {message}");
    let after = (epochs(hacs.get("x").await.unwrap()), epochs(hacs.get("y").await.unwrap()));
    assert_eq!(before, after, "neither cluster was touched");
}

/// Two clusters naming the same Service: the first one's stays the first one's. The second
/// reports `Routed=False NameConflict` and never becomes an owner (the operator remembers
/// which objects each cluster owns, not which objects it has written).
#[tokio::test]
async fn a_second_cluster_cannot_take_the_first_ones_service() {
    use k8s_openapi::api::core::v1::Service;
    let client = support::client().await;
    let ns = support::namespace(&client, "hostile-shared").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let listen = format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap());
    let _operator = Process::understudy(&["run", "--namespaces", &ns, "--listen", &listen], "hostile-shared");
    let failover = json!({"heartbeatInterval": "200ms"});
    let mut first = cluster("first", &[("s0", &[("a", &servers[0])])], failover.clone());
    first.spec.routing.primary_service = Some("shared".into());
    hacs.create(&PostParams::default(), &first).await.unwrap();
    wait_primary(&hacs, "first", "s0", None).await;
    let owners = |s: &Service| s.owner_references().iter().map(|o| o.name.clone()).collect::<Vec<_>>();
    let svc = eventually(WAIT, "Service shared owned by first", || async {
        let s = services.get_opt("shared").await.ok()??;
        (owners(&s) == ["first"]).then_some(s)
    })
    .await;
    let mut second = cluster("second", &[("s0", &[("b", &servers[1])])], failover);
    second.spec.routing.primary_service = Some("shared".into());
    hacs.create(&PostParams::default(), &second).await.unwrap();
    wait_primary(&hacs, "second", "s0", None).await;
    eventually(WAIT, "second: Routed=False NameConflict", || async {
        let st = hacs.get("second").await.ok()?.status?;
        st.conditions
            .iter()
            .find(|c| c.type_ == "Routed" && c.status == "False" && c.reason == "NameConflict")?;
        Some(())
    })
    .await;
    let now = services.get("shared").await.unwrap();
    assert_eq!(owners(&now), ["first"], "only the first cluster owns it");
    assert_eq!(now.metadata.uid, svc.metadata.uid);
}
