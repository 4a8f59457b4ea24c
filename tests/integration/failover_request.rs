//! FailoverRequest (seed 000) with real redis-server processes and real agents: a batch over
//! two clusters with its task DAG visible in status, serviceName routing, the
//! expectedPrimary guard, and rollback when the candidate cannot be promoted.

use std::{collections::HashSet, time::Duration};

use k8s_openapi::api::{core::v1::Secret, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;
use understudy::resources::{
    FailoverRequest, HaCluster,
    failover_request::{RequestPhase, TaskStatus},
};

use crate::{
    hacluster_redis::{cluster, route_ip, wait_follows, wait_primary},
    support::{self, Operator, RedisServer, SupervisedAgent, eventually},
};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "fr-token";

pub fn request(name: &str, spec: serde_json::Value) -> FailoverRequest {
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "FailoverRequest", "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Create the request `name` with `spec` and wait until it is terminal; its status.
pub(crate) async fn submit(
    api: &Api<FailoverRequest>,
    name: &str,
    spec: serde_json::Value,
) -> understudy::resources::failover_request::FailoverRequestStatus {
    api.create(&kube::api::PostParams::default(), &request(name, spec)).await.unwrap();
    finish(api, name).await.0.status.unwrap()
}

/// Wait for a terminal phase, collecting every (step, status) the DAG showed on the way.
/// Poll a request until it is terminal; returns it, every (subtask, status) seen, and whether
/// a snapshot before the end showed the DAG part-way (some subtasks done, others not).
pub(crate) async fn finish(
    api: &Api<FailoverRequest>,
    name: &str,
) -> (FailoverRequest, HashSet<(String, TaskStatus)>, bool) {
    let mut seen = HashSet::new();
    let mut mid_way = false;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(fr) = api.get(name).await
            && let Some(st) = fr.status.clone()
        {
            let subtasks: Vec<_> = st.task.iter().flat_map(|t| t.subtasks.iter()).collect();
            for t in &subtasks {
                seen.insert((t.name.clone(), t.status));
            }
            let terminal = matches!(
                st.phase,
                Some(RequestPhase::Succeeded | RequestPhase::Failed | RequestPhase::RolledBack)
            );
            let done = subtasks.iter().filter(|t| t.status == TaskStatus::Successful).count();
            mid_way |= !terminal && done > 0 && done < subtasks.len();
            if terminal {
                return (fr, seen, mid_way);
            }
        }
        assert!(std::time::Instant::now() < deadline, "FailoverRequest {name} did not finish; saw {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn slice_addresses(client: &kube::Client, ns: &str, service: &str) -> Vec<String> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let l = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .unwrap();
    l.items.iter().flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone())).collect()
}

#[tokio::test]
async fn batch_switchover_over_a_redis_and_an_agent_cluster() {
    let client = support::client().await;
    let ns = support::namespace(&client, "fr-batch").await;
    let servers = [RedisServer::start(None), RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> =
        vec![("ra", &servers[0]), ("rb", &servers[1]), ("rc", &servers[2])];
    hacs.create(
        &PostParams::default(),
        &cluster("r", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "agent-token"}, "stringData": {"token": TOKEN}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let agents = [SupervisedAgent::start("127.0.0.41", TOKEN), SupervisedAgent::start("127.0.0.42", TOKEN)];
    for a in &agents {
        eventually(WAIT, "agent up", || a.status(TOKEN)).await;
    }
    let agent_ip = |i: usize| format!("10.66.0.{}", i + 1);
    let g: HaCluster = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "g"},
        "spec": {"engine": "Agent", "secretRef": {"name": "agent-token"},
                 "shards": [{"name": "main", "members": [
                     {"name": "ga", "endpoint": agents[0].addr.to_string(), "clientAddress": agent_ip(0)},
                     {"name": "gb", "endpoint": agents[1].addr.to_string(), "clientAddress": agent_ip(1)}]}],
                 "failover": {"heartbeatInterval": "200ms"}}
    }))
    .unwrap();
    hacs.create(&PostParams::default(), &g).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let rp = wait_primary(&hacs, "r", "s0", None).await;
    let gp = wait_primary(&hacs, "g", "main", None).await;
    let rpi = ["ra", "rb", "rc"].iter().position(|n| *n == rp).unwrap();
    for i in (0..3).filter(|i| *i != rpi) {
        wait_follows(&servers[i], &servers[rpi]).await;
    }
    let epochs_before: Vec<i64> = vec![
        hacs.get("r").await.unwrap().status.unwrap().shards[0].epoch,
        hacs.get("g").await.unwrap().status.unwrap().shards[0].epoch,
    ];

    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    frs.create(
        &PostParams::default(),
        &request(
            "batch",
            json!({"type": "Switchover", "items": [
                {"cluster": "r", "serviceName": "r-rw", "expectedPrimary": rp},
                {"cluster": "g", "serviceName": "g-rw"}]}),
        ),
    )
    .await
    .unwrap();
    let (fr, seen, mid_way) = finish(&frs, "batch").await;
    let st = fr.status.clone().unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Succeeded), "{:?}", st);
    assert_eq!(st.progress.as_deref(), Some("14/14"));
    let task = st.task.unwrap();
    assert_eq!(task.subtasks.len(), 14, "seven steps per item");
    assert!(task.prohibit_rollback, "the promote step is the point of no return");
    // fence / promote / redirect carry the times and notes the cluster's monitor recorded.
    for (step, note) in [("fence", "drained"), ("promote", "is writable"), ("redirect", "follow")] {
        assert!(
            task.subtasks
                .iter()
                .any(|t| t.name == step && t.message.as_deref().is_some_and(|m| m.contains(note))),
            "{step}: {:?}",
            task.subtasks.iter().filter(|t| t.name == step).map(|t| t.message.clone()).collect::<Vec<_>>()
        );
    }
    for t in &task.subtasks {
        assert_eq!(t.status, TaskStatus::Successful, "{t:?}");
        assert!(t.start_time.is_some() && t.end_time.is_some());
        assert!(!t.description.is_empty());
    }
    // Progress is visible while it runs (polled every 20 ms; a single step such as the fence
    // can be over between two polls, so no particular step is required to be seen Running).
    assert!(mid_way, "the DAG was visible mid-way: {seen:?}");
    for s in ["check", "lock", "fence", "promote", "redirect", "route", "record"] {
        assert!(seen.contains(&(s.to_owned(), TaskStatus::Successful)), "{s} seen successful: {seen:?}");
    }

    // Redis: a new primary, the others follow it, the Service points at it.
    let r_new = st.items.iter().find(|i| i.cluster == "r").and_then(|i| i.to.clone()).unwrap();
    assert_ne!(r_new, rp);
    let ni = ["ra", "rb", "rc"].iter().position(|n| *n == r_new).unwrap();
    assert_eq!(servers[ni].role().await.as_deref(), Some("master"));
    for i in (0..3).filter(|i| *i != ni) {
        wait_follows(&servers[i], &servers[ni]).await;
    }
    assert_eq!(slice_addresses(&client, &ns, "r-rw").await, [route_ip(servers[ni].port)]);
    // Agents: the other agent is MAIN now, the old one came back as BACKUP.
    let g_new = st.items.iter().find(|i| i.cluster == "g").and_then(|i| i.to.clone()).unwrap();
    assert_ne!(g_new, gp);
    let gi = if g_new == "ga" { 0 } else { 1 };
    assert_eq!(agents[gi].status(TOKEN).await.map(|s| s.1).as_deref(), Some("MAIN"));
    eventually(WAIT, "old MAIN back as BACKUP", || async {
        agents[1 - gi].status(TOKEN).await.filter(|s| s.1 == "BACKUP")
    })
    .await;
    assert_eq!(slice_addresses(&client, &ns, "g-rw").await, [agent_ip(gi)]);
    let epochs_after: Vec<i64> = vec![
        hacs.get("r").await.unwrap().status.unwrap().shards[0].epoch,
        hacs.get("g").await.unwrap().status.unwrap().shards[0].epoch,
    ];
    assert_eq!(epochs_after, vec![epochs_before[0] + 1, epochs_before[1] + 1]);
    for c in ["r", "g"] {
        assert!(
            hacs.get(c).await.unwrap().status.unwrap().shards[0].operation.is_none(),
            "lock released on {c}"
        );
    }
    // The request's Service is maintained for its whole life: after a later automatic
    // failover it points at the newest primary, not at the one the request chose.
    let annotated = hacs.get("r").await.unwrap();
    assert_eq!(
        annotated
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("understudy.dev/primary-aliases"))
            .cloned(),
        Some("r-rw".to_owned())
    );
    let mut servers = servers;
    servers[ni].kill();
    let r_third = wait_primary(&hacs, "r", "s0", Some(&r_new)).await;
    let ti = ["ra", "rb", "rc"].iter().position(|n| *n == r_third).unwrap();
    eventually(WAIT, "r-rw to follow the automatic failover", || async {
        (slice_addresses(&client, &ns, "r-rw").await == [route_ip(servers[ti].port)]).then_some(())
    })
    .await;
    operator.stop().await;
}

/// Cluster `c`: two redis members, the operator running, the primary elected.
async fn two_members(
    client: &kube::Client,
    ns: &str,
) -> ([RedisServer; 2], Api<HaCluster>, Operator, String) {
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), ns);
    let members: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1])];
    hacs.create(
        &PostParams::default(),
        &cluster("c", &[("s0", &members)], json!({"heartbeatInterval": "200ms"})),
    )
    .await
    .unwrap();
    let operator = Operator::start(client.clone(), ns);
    let p = wait_primary(&hacs, "c", "s0", None).await;
    (servers, hacs, operator, p)
}

#[tokio::test]
async fn expected_primary_mismatch_is_refused_and_a_failed_promotion_rolls_back() {
    let client = support::client().await;
    let ns = support::namespace(&client, "fr-guard").await;
    let (servers, hacs, operator, p) = two_members(&client, &ns).await;
    let (pi, ri) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;
    let epoch = hacs.get("c").await.unwrap().status.unwrap().shards[0].epoch;
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);

    // expectedPrimary guard.
    let replica = ["a", "b"][ri];
    frs.create(
        &PostParams::default(),
        &request(
            "guard",
            json!({"type": "Switchover", "items": [{"cluster": "c", "expectedPrimary": replica}]}),
        ),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "guard").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Failed));
    assert!(st.message.as_deref().unwrap_or_default().contains("expectedPrimary"), "{:?}", st.message);
    assert_eq!(hacs.get("c").await.unwrap().status.unwrap().shards[0].epoch, epoch, "nothing touched");

    // Dry run: the plan, nothing else.
    frs.create(
        &PostParams::default(),
        &request("dry", json!({"type": "Switchover", "dryRun": true, "items": [{"cluster": "c"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "dry").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Succeeded));
    assert!(st.message.unwrap().contains(&format!("would promote {replica}")));
    assert!(
        st.task
            .unwrap()
            .subtasks
            .iter()
            .filter(|t| t.name != "check")
            .all(|t| t.status == TaskStatus::Skipped)
    );
    assert_eq!(
        hacs.get("c").await.unwrap().status.unwrap().shards[0].epoch,
        epoch,
        "dry run touched nothing"
    );

    // The candidate refuses to be promoted (its REPLICAOF is revoked by an ACL): the
    // switchover is abandoned and rolled back; the old primary is writable again.
    let _: () =
        servers[ri].cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("-replicaof")).await.unwrap();
    frs.create(
        &PostParams::default(),
        &request("doomed", json!({"type": "Switchover", "items": [{"cluster": "c", "candidate": replica}]})),
    )
    .await
    .unwrap();
    let (fr, seen, _) = finish(&frs, "doomed").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::RolledBack), "{:?}", st.message);
    assert!(seen.contains(&("lock".to_owned(), TaskStatus::RolledBack)), "{seen:?}");
    assert_eq!(servers[pi].role().await.as_deref(), Some("master"), "the old primary kept its role");
    let _: () = servers[pi]
        .cmd(redis::cmd("SET").arg("after-rollback").arg("1"))
        .await
        .expect("old primary writable again");
    let cst = hacs.get("c").await.unwrap().status.unwrap();
    assert_eq!(cst.shards[0].current_primary.as_deref(), Some(p.as_str()));
    assert!(cst.shards[0].operation.is_none() && cst.shards[0].target_primary.is_none());
    // Each terminal phase is counted once, with its duration.
    let metrics = operator.metrics.render();
    for outcome in ["Failed", "DryRun", "RolledBack"] {
        let line = format!("understudy_operations_total{{kind=\"FailoverRequest\",outcome=\"{outcome}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} missing:\n{metrics}");
    }
    assert!(metrics.contains(
        "understudy_operation_duration_seconds_count{kind=\"FailoverRequest\",outcome=\"RolledBack\"} 1"
    ));
    operator.stop().await;
}

#[tokio::test]
async fn a_request_waits_for_a_busy_shard_and_gives_up_at_its_deadline() {
    let client = support::client().await;
    let ns = support::namespace(&client, "fr-busy").await;
    let (_servers, hacs, operator, p) = two_members(&client, &ns).await;
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    // Another operation (a real object) holds the shard's lock.
    let holder = frs
        .create(
            &PostParams::default(),
            &request("holder", json!({"type": "Switchover", "dryRun": true, "items": [{"cluster": "c"}]})),
        )
        .await
        .unwrap();
    // The monitor writes status too: retry the injection on a conflict.
    let lock: understudy::resources::hacluster::OperationLock = serde_json::from_value(json!({
        "kind": "FailoverRequest", "name": "holder", "namespace": ns, "uid": holder.metadata.uid,
        "acquiredAt": "2026-01-01T00:00:00Z", "expiresAt": "2099-01-01T00:00:00Z"
    }))
    .unwrap();
    let c = eventually(WAIT, "the lock injected", || async {
        let mut c = hacs.get("c").await.ok()?;
        c.status.as_mut()?.shards[0].operation = Some(lock.clone());
        hacs.replace_status("c", &PostParams::default(), &c).await.ok()
    })
    .await;
    let epoch = c.status.as_ref().unwrap().shards[0].epoch;

    frs.create(
        &PostParams::default(),
        &request("second", json!({"type": "Switchover", "timeoutSeconds": 3, "items": [{"cluster": "c"}]})),
    )
    .await
    .unwrap();
    let waiting = eventually(WAIT, "the request to report the busy lock", || async {
        let st = frs.get("second").await.ok()?.status?;
        let lock = st.task?.subtasks.into_iter().find(|t| t.name == "lock")?;
        (lock.status == TaskStatus::Running).then(|| lock.message.unwrap_or_default())
    })
    .await;
    assert!(waiting.contains("db_busy") && waiting.contains("holder"), "{waiting}");
    let (fr, _, _) = finish(&frs, "second").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::RolledBack), "{:?}", st.message);
    assert!(st.message.unwrap_or_default().contains("db_busy"));
    let cst = hacs.get("c").await.unwrap().status.unwrap();
    assert_eq!(cst.shards[0].current_primary.as_deref(), Some(p.as_str()), "nothing touched");
    assert_eq!(cst.shards[0].epoch, epoch);
    operator.stop().await;
}

#[tokio::test]
async fn a_forced_failover_and_a_switchover_that_cannot_drain_aborts_or_is_forced() {
    let client = support::client().await;
    let ns = support::namespace(&client, "fr-force").await;
    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let members: Vec<(&str, &RedisServer)> = vec![("a", &servers[0]), ("b", &servers[1])];
    // The test cuts replication on purpose and writes on: self-fencing would refuse those writes.
    let failover = json!({"heartbeatInterval": "200ms", "stepTimeout": "1s", "maxLagOnFailover": 100_000_000,
        "fencing": {"minReplicasToWrite": 0}});
    hacs.create(&PostParams::default(), &cluster("c", &[("s0", &members)], failover)).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);
    let p = wait_primary(&hacs, "c", "s0", None).await;
    let (pi, ri) = if p == "a" { (0, 1) } else { (1, 0) };
    wait_follows(&servers[ri], &servers[pi]).await;
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);

    // type Failover on a healthy primary: forced — fenced at once, not drained.
    frs.create(
        &PostParams::default(),
        &request("forced", json!({"type": "Failover", "items": [{"cluster": "c"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "forced").await;
    assert_eq!(fr.status.as_ref().unwrap().phase, Some(RequestPhase::Succeeded), "{:?}", fr.status);
    let q = wait_primary(&hacs, "c", "s0", Some(&p)).await;
    assert_eq!(q, ["a", "b"][ri]);
    // The Event follows the status record and the routing switch: wait for it.
    eventually(WAIT, "a FailedOver event saying the promotion was forced", || async {
        let evs = crate::hacluster_redis::events(&client, &ns).await;
        evs.iter().any(|(r, n)| r == "FailedOver" && n.contains("forced")).then_some(())
    })
    .await;
    wait_follows(&servers[pi], &servers[ri]).await;

    // The replica cannot catch up (the primary refuses its re-sync and the link is cut), so a
    // graceful switchover cannot drain within stepTimeout.
    let primary = &servers[ri];
    let _: () = primary
        .cmd(redis::cmd("ACL").arg("SETUSER").arg("default").arg("-sync").arg("-psync"))
        .await
        .unwrap();
    let _: i64 = primary.cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica")).await.unwrap();
    for i in 0..20 {
        let _: () = primary.cmd(redis::cmd("SET").arg(format!("unreplicated:{i}")).arg(i)).await.unwrap();
    }
    // onTimeout Abort (the default): rolled back, the primary keeps its role.
    frs.create(
        &PostParams::default(),
        &request("abort", json!({"type": "Switchover", "items": [{"cluster": "c"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "abort").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::RolledBack), "{:?}", st.message);
    assert!(st.message.unwrap_or_default().contains("abandoned"));
    assert_eq!(primary.role().await.as_deref(), Some("master"), "the primary kept its role");
    let _: () = primary.cmd(redis::cmd("SET").arg("still-writable").arg("1")).await.expect("writable again");
    // onTimeout Force: the drain timed out, the candidate is within maxLagOnFailover, so the
    // promotion is forced.
    frs.create(
        &PostParams::default(),
        &request("force", json!({"type": "Switchover", "onTimeout": "Force", "items": [{"cluster": "c"}]})),
    )
    .await
    .unwrap();
    let (fr, _, _) = finish(&frs, "force").await;
    let st = fr.status.unwrap();
    assert_eq!(st.phase, Some(RequestPhase::Succeeded), "{:?}", st.message);
    let fence = st.task.unwrap().subtasks.into_iter().find(|t| t.name == "fence").unwrap();
    let msg = fence.message.unwrap_or_default();
    assert!(
        msg.contains("demoted") && !msg.contains("drained"),
        "forced: demoted at once, not drained: {msg}"
    );
    let r = wait_primary(&hacs, "c", "s0", Some(&q)).await;
    assert_eq!(r, p, "forced back to the first member");
    let _: () =
        servers[pi].cmd(redis::cmd("SET").arg("after-force").arg("1")).await.expect("new primary writable");
    operator.stop().await;
}
