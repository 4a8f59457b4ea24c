//! `spec.instances`: the operator creates and runs the members itself — pods and volumes it
//! owns — and carries out the lifecycle (create, restart, upgrade, add and remove replicas,
//! a bad image, delete) while a client writes through the primary Service.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    core::v1::{PersistentVolumeClaim, Pod},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use understudy::resources::{
    HaCluster, ShardFailover,
    instances::{CLUSTER_LABEL, REVISION_ANNOTATION},
    shard_failover::ShardFailoverPhase,
};

use crate::{
    client::{RoleSampler, Writer, missing},
    redis_pods::{cluster_ip, wait_primary},
    support::{self, TestNs, eventually, is_ready, pods},
};

const WAIT: Duration = Duration::from_secs(120);
const PORT: u16 = 6379;
const SELECTOR: &str = "understudy.dev/cluster=db";

/// Static hostPath volumes (the node has no provisioner), world-writable: the Redis image
/// runs as uid 65532 and a replica's full resync writes its RDB file to /data.
pub fn volumes(node: &support::Node, class: &str, which: std::ops::Range<usize>, capacity: &str) -> String {
    let mut out = String::new();
    for i in which {
        let dir = node.dir.join("pv").join(format!("{class}-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        out.push_str(&format!(
            r#"
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {class}-{i}, labels: {{test: {class}}}}}
spec:
  capacity: {{storage: {capacity}}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: {class}
  hostPath: {{path: {path}, type: Directory}}
"#,
            path = dir.display()
        ));
    }
    out
}

fn cluster(image: &str, class: &str, members: usize) -> String {
    format!(
        r#"
apiVersion: understudy.dev/v1alpha1
kind: HaCluster
metadata: {{name: db}}
spec:
  engine: Redis
  instances:
    members: {members}
    image: {image}
    imagePullPolicy: Never
    storage: {{size: 64Mi, storageClassName: {class}}}
    parameters: {{save: "", appendonly: "no"}}
  failover: {{heartbeatInterval: 200ms, failureThreshold: 3}}
"#
    )
}

/// The Progressing condition's (status, reason, message).
fn progressing(c: &HaCluster) -> Option<(String, String, String)> {
    let cond = c.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Progressing")?;
    Some((cond.status.clone(), cond.reason.clone(), cond.message.clone()))
}

/// Wait until every one of `n` members runs the current revision, is ready and caught up
/// (Progressing=False UpToDate); returns the member pods.
async fn up_to_date(client: &kube::Client, hacs: &Api<HaCluster>, ns: &str, n: usize) -> Vec<Pod> {
    eventually(WAIT, &format!("{n} members up to date"), || async {
        let c = hacs.get("db").await.ok()?;
        let (status, reason, _) = progressing(&c)?;
        let inst = c.status.as_ref()?.instances.clone()?;
        let revision = inst.revision.clone()?;
        let pods = pods(client, ns, SELECTOR).await;
        let current = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.annotations().get(REVISION_ANNOTATION) == Some(&revision) && is_ready(p))
            .count();
        (status == "False"
            && reason == "UpToDate"
            && inst.members.len() == n
            && pods.len() == n
            && current == n)
            .then_some(pods)
    })
    .await
}

fn uids(pods: &[Pod]) -> Vec<(String, String)> {
    let mut v: Vec<_> = pods.iter().map(|p| (p.name_any(), p.uid().unwrap_or_default())).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_created_restarted_upgraded_scaled_and_deleted_under_a_writing_client() {
    let Some(node) = support::node() else { return };
    let _shared = support::SHARED_NODE.read().await;
    let client = node.client().await.expect("client");
    let ns = TestNs::new(node, &client, "inst").await;
    node.install_operator(&ns.name, &[]).unwrap();
    let class = format!("local-{}", ns.name);
    node.apply(&ns.name, &volumes(node, &class, 0..8, "1Gi")).unwrap();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);

    // 1. Create: three members from nothing, each with its volume; a primary is elected.
    let t = Instant::now();
    node.apply(&ns.name, &cluster(&node.redis_image, &class, 3)).unwrap();
    let created = up_to_date(&client, &hacs, &ns.name, 3).await;
    let primary = wait_primary(&hacs, "db", None).await;
    eprintln!(
        "create: 3 members up to date, {primary} primary, {:.1}s after apply",
        t.elapsed().as_secs_f64()
    );
    let c = hacs.get("db").await.unwrap();
    for p in &created {
        let owner = &p.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("HaCluster", c.uid().unwrap().as_str()));
    }
    let claims = pvcs.list(&ListParams::default().labels(SELECTOR)).await.unwrap().items;
    assert_eq!(claims.len(), 3, "one volume per member");
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name).get("db").await.unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    let sampler = RoleSampler::start(client.clone(), &ns.name, SELECTOR, PORT);
    let vip = cluster_ip(&client, &ns.name, "db-primary").await;
    let writer = Writer::start(&vip, PORT);
    writer.wait_more(200, WAIT).await;
    let from_seq = writer.last_seq() + 1;
    let mut pauses = Vec::new();

    // 2. Restart with `kubectl understudy restart`, followed to the end of the roll: replicas
    // first, a switchover, the old primary last; every pod is new, the primary moved once.
    let before = uids(&created);
    let t = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-understudy"))
        .arg("--kubeconfig")
        .arg(&node.kubeconfig)
        .args(["-n", &ns.name, "restart", "db", "--timeout", "120s"])
        .output()
        .await
        .expect("run kubectl-understudy");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("$ kubectl understudy restart db\n{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(0), "kubectl understudy restart: {stdout}{stderr}");
    assert!(stdout.contains("restarted: 3 of 3 members ready at revision"), "{stdout}");
    assert!(stdout.contains("Progressing=True"), "the roll's progress was shown: {stdout}");
    let restarted = up_to_date(&client, &hacs, &ns.name, 3).await;
    let after_restart = wait_primary(&hacs, "db", None).await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(t, Instant::now());
    pauses.push(pause);
    eprintln!(
        "restart: {:.1}s, primary {primary} → {after_restart}, longest client pause through the Service {pause:?}",
        t.elapsed().as_secs_f64()
    );
    for ((n, old), (_, new)) in before.iter().zip(uids(&restarted)) {
        assert_ne!(old, &new, "{n} was not restarted");
    }
    assert_ne!(after_restart, primary, "the primary was moved off by a switchover before its restart");
    let sfos = Api::<ShardFailover>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        sfos.items
            .iter()
            .any(|r| r.status.as_ref().and_then(|s| s.phase) == Some(ShardFailoverPhase::Succeeded)),
        "the roll's switchover is an audited ShardFailover"
    );

    // Parameters. A dynamic one is set live on every member: no pod restarts.
    let set = |params: serde_json::Value| {
        let hacs = hacs.clone();
        async move {
            let p = json!({"spec": {"instances": {"parameters": params}}});
            hacs.patch("db", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        }
    };
    let t = Instant::now();
    set(json!({"maxmemory": "64mb"})).await;
    let live = eventually(WAIT, "maxmemory set live on every member", || async {
        let pods = pods(&client, &ns.name, SELECTOR).await;
        for p in &pods {
            if config_get(&support::pod_ip(p)?, "maxmemory").await? != "67108864" {
                return None;
            }
        }
        let c = hacs.get("db").await.ok()?;
        let in_force = c.status?.instances?.parameters?;
        (pods.len() == 3 && in_force.get("maxmemory").map(String::as_str) == Some("64mb")).then_some(pods)
    })
    .await;
    eprintln!("parameters: maxmemory set live on 3 members in {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(uids(&live), uids(&restarted), "a dynamic parameter restarts nothing");
    // One the engine reads only at start waits for a restart, and says so.
    set(json!({"databases": "32"})).await;
    let (_, reason, message) = eventually(WAIT, "RestartRequired=True", || async {
        let c = hacs.get("db").await.ok()?;
        let cond = c.status?.conditions.into_iter().find(|c| c.type_ == "RestartRequired")?;
        (cond.status == "True").then_some((cond.status, cond.reason, cond.message))
    })
    .await;
    eprintln!("parameters: {reason}: {message}");
    assert!(message.contains("databases"), "{message}");
    // A value the engine refuses is reported; new members keep the parameters in force.
    set(json!({"maxmemory": "lots"})).await;
    let (_, _, refused) = eventually(WAIT, "Progressing=False InvalidParameter", || async {
        let c = hacs.get("db").await.ok()?;
        let p = progressing(&c)?;
        (p.1 == "InvalidParameter").then_some(p)
    })
    .await;
    eprintln!("parameters: {refused}");
    assert!(refused.contains("maxmemory"), "{refused}");
    set(json!({"maxmemory": "64mb"})).await;
    let configured = up_to_date(&client, &hacs, &ns.name, 3).await;

    // Resize (the flavor). From no resources to some, the pods' QoS class changes, which
    // Kubernetes does not do in place: the API refuses the resize and the members restart in
    // the roll's order.
    let flavor = |cpu: &str, memory: &str| {
        json!({"spec": {"instances": {"resources": {
            "requests": {"cpu": cpu, "memory": "32Mi"}, "limits": {"memory": memory}}}}})
    };
    let t = Instant::now();
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(flavor("50m", "256Mi"))).await.unwrap();
    eventually(WAIT, "Progressing=True Resizing", || async {
        let c = hacs.get("db").await.ok()?;
        let (s, r, _) = progressing(&c)?;
        (s == "True" && r == "Resizing").then_some(())
    })
    .await;
    let restarted_for_qos = eventually(WAIT, "every member restarted with resources", || async {
        let pods = up_to_date(&client, &hacs, &ns.name, 3).await;
        pods.iter().all(|p| memory_limit(p, false).as_deref() == Some("256Mi")).then_some(pods)
    })
    .await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(t, Instant::now());
    pauses.push(pause);
    eprintln!(
        "resize (QoS class changes: restarts): {:.1}s, longest client pause {pause:?}",
        t.elapsed().as_secs_f64()
    );
    for ((n, old), (_, new)) in uids(&configured).iter().zip(uids(&restarted_for_qos)) {
        assert_ne!(old, &new, "{n} was not restarted for a QoS class change");
    }
    // Within the class, the kubelet resizes the running containers: nothing restarts.
    let primary_before_resize = wait_primary(&hacs, "db", None).await;
    let t = Instant::now();
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(flavor("100m", "512Mi"))).await.unwrap();
    let resized = eventually(WAIT, "every member resized in place", || async {
        let c = hacs.get("db").await.ok()?;
        let (s, r, _) = progressing(&c)?;
        let pods = pods(&client, &ns.name, SELECTOR).await;
        (s == "False"
            && r == "UpToDate"
            && pods.len() == 3
            && pods.iter().all(|p| memory_limit(p, true).as_deref() == Some("512Mi")))
        .then_some(pods)
    })
    .await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(t, Instant::now());
    eprintln!("resize in place: {:.1}s, longest client pause {pause:?}", t.elapsed().as_secs_f64());
    assert_eq!(uids(&resized), uids(&restarted_for_qos), "an in-place resize restarts no pod");
    for p in &resized {
        let restarts =
            p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|c| c[0].restart_count);
        assert_eq!(restarts, Some(0), "{} restarted its container", p.name_any());
    }
    assert_eq!(
        wait_primary(&hacs, "db", None).await,
        primary_before_resize,
        "the primary stays through an in-place resize"
    );

    // 3. Upgrade: a new image (the same build under a new name) rolls the same way.
    let upgraded_image = "docker.io/local/redis:upgraded";
    node.tag_image(&node.redis_image, upgraded_image).unwrap();
    let t = Instant::now();
    let upgrade = json!({"spec": {"instances": {"image": upgraded_image}}});
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(&upgrade)).await.unwrap();
    eventually(WAIT, "Progressing=True Upgrading", || async {
        let c = hacs.get("db").await.ok()?;
        let (s, r, _) = progressing(&c)?;
        (s == "True" && r == "Upgrading").then_some(())
    })
    .await;
    // Mid-roll, the moment the first member runs the new image, the operator's leader is
    // killed (SIGKILL): the other operator pod takes the lease and finishes the roll from
    // what status and the pods say.
    eventually(WAIT, "the first upgraded member", || async {
        let pods = pods(&client, &ns.name, SELECTOR).await;
        pods.iter()
            .any(|p| p.spec.as_ref().and_then(|s| s.containers[0].image.as_deref()) == Some(upgraded_image))
            .then_some(())
    })
    .await;
    let (leader, leader_pid) = support::leader(node, &client, &ns.name).await;
    // SAFETY: kill(2) of the operator container's host process.
    unsafe { libc::kill(leader_pid as i32, libc::SIGKILL) };
    eprintln!("upgrade: killed the operator's leader {leader} mid-roll");
    let upgraded = up_to_date(&client, &hacs, &ns.name, 3).await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(t, Instant::now());
    pauses.push(pause);
    eprintln!("upgrade: {:.1}s, longest client pause {pause:?}", t.elapsed().as_secs_f64());
    for p in &upgraded {
        assert_eq!(p.spec.as_ref().unwrap().containers[0].image.as_deref(), Some(upgraded_image));
    }
    // The roll restarted every member: the parameter that waited for it is in force.
    for p in &upgraded {
        assert_eq!(config_get(&support::pod_ip(p).unwrap(), "databases").await.as_deref(), Some("32"));
    }
    eventually(WAIT, "RestartRequired=False", || async {
        let c = hacs.get("db").await.ok()?;
        let cond = c.status?.conditions.into_iter().find(|c| c.type_ == "RestartRequired")?;
        (cond.status == "False").then_some(())
    })
    .await;

    // 4. A bad image stops the roll at the first replica; the primary is not touched.
    let primary_before = wait_primary(&hacs, "db", None).await;
    let primary_uid = upgraded.iter().find(|p| p.name_any() == primary_before).unwrap().uid();
    let bad = json!({"spec": {"instances": {"image": "docker.io/local/redis:does-not-exist"}}});
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(&bad)).await.unwrap();
    let (_, _, message) = eventually(WAIT, "Progressing=False MemberNotReady", || async {
        let c = hacs.get("db").await.ok()?;
        let p = progressing(&c)?;
        (p.0 == "False" && p.1 == "MemberNotReady").then_some(p)
    })
    .await;
    eprintln!("bad image: {message}");
    assert!(message.contains("ErrImageNeverPull") || message.contains("Err"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = pods(&client, &ns.name, SELECTOR).await;
    let p = now.iter().find(|p| p.name_any() == primary_before).expect("the primary's pod");
    assert_eq!(p.uid(), primary_uid, "the primary's pod was not touched by a stopped roll");
    writer.wait_more(200, WAIT).await;
    // Corrected: the broken member is replaced at once, nothing else moves.
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(&upgrade)).await.unwrap();
    let fixed = up_to_date(&client, &hacs, &ns.name, 3).await;
    assert_eq!(fixed.iter().find(|p| p.name_any() == primary_before).unwrap().uid(), primary_uid);

    // Volume expansion. The test's StorageClass (static hostPath volumes) does not allow it:
    // the API refuses a larger claim, and the members are rebuilt one at a time onto new,
    // larger volumes (replicas resync), the primary last after a switchover.
    let old_claims = pvcs.list(&ListParams::default().labels(SELECTOR)).await.unwrap().items;
    let t = Instant::now();
    let grow = json!({"spec": {"instances": {"storage": {"size": "128Mi"}}}});
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(&grow)).await.unwrap();
    eventually(WAIT, "Progressing=True Resizing", || async {
        let c = hacs.get("db").await.ok()?;
        let (s, r, _) = progressing(&c)?;
        (s == "True" && r == "Resizing").then_some(())
    })
    .await;
    let grown = eventually(WAIT, "every member on a 128Mi volume", || async {
        up_to_date(&client, &hacs, &ns.name, 3).await;
        let c = pvcs.list(&ListParams::default().labels(SELECTOR)).await.ok()?.items;
        let live: Vec<_> = c.into_iter().filter(|c| c.metadata.deletion_timestamp.is_none()).collect();
        let size = |c: &PersistentVolumeClaim| {
            c.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())
        };
        (live.len() == 3 && live.iter().all(|c| size(c).as_deref() == Some("128Mi"))).then_some(live)
    })
    .await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(t, Instant::now());
    pauses.push(pause);
    eprintln!(
        "volumes 64Mi → 128Mi (expansion refused: rebuilt): {:.1}s, longest client pause {pause:?}",
        t.elapsed().as_secs_f64()
    );
    for c in &old_claims {
        assert!(!uids_of(&grown).contains(&c.uid().unwrap()), "{} was not rebuilt", c.name_any());
    }

    // In-place expansion, where the StorageClass allows it: the claims are patched, nothing is
    // rebuilt or restarted, and the operator waits until the volumes have grown. The node has
    // no CSI driver, so the test does the external resizer's part (an online expansion: the
    // volume's and then the claim's capacity) once the operator has asked for the size. The
    // static volumes hold 1Gi, so the size asked is beyond that.
    node.apply(
        &ns.name,
        &format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {class}}}\nprovisioner: kubernetes.io/no-provisioner\nallowVolumeExpansion: true\nvolumeBindingMode: Immediate\n"
        ),
    )
    .unwrap();
    let before_pods = up_to_date(&client, &hacs, &ns.name, 3).await;
    let t = Instant::now();
    let grow = json!({"spec": {"instances": {"storage": {"size": "2Gi"}}}});
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(&grow)).await.unwrap();
    let asked = eventually(WAIT, "every claim asking for 2Gi, Progressing=True Resizing", || async {
        let c = hacs.get("db").await.ok()?;
        let (s, r, _) = progressing(&c)?;
        let claims = pvcs.list(&ListParams::default().labels(SELECTOR)).await.ok()?.items;
        let request = |c: &PersistentVolumeClaim| {
            c.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())
        };
        (s == "True"
            && r == "Resizing"
            && claims.len() == 3
            && claims.iter().all(|c| request(c).as_deref() == Some("2Gi")))
        .then_some(claims)
    })
    .await;
    assert_eq!(uids_of(&asked), uids_of(&grown), "a claim was replaced instead of expanded");
    // Still waiting for the volumes: nothing has changed on the members.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = hacs.get("db").await.unwrap();
    assert_eq!(progressing(&c).map(|p| p.1).as_deref(), Some("Resizing"), "done before the volumes grew");
    let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    for claim in &asked {
        let pv = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap();
        let cap = json!({"spec": {"capacity": {"storage": "2Gi"}}});
        pvs.patch(&pv, &PatchParams::default(), &Patch::Merge(&cap)).await.unwrap();
        let cap = json!({"status": {"capacity": {"storage": "2Gi"}}});
        pvcs.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&cap)).await.unwrap();
    }
    let after_pods = up_to_date(&client, &hacs, &ns.name, 3).await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(t, Instant::now());
    eprintln!(
        "volumes 128Mi → 2Gi (expanded in place, resizer simulated): {:.1}s, longest client pause {pause:?}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(uids(&after_pods), uids(&before_pods), "a member was restarted for an online expansion");
    let grown = pvcs.list(&ListParams::default().labels(SELECTOR)).await.unwrap().items;
    assert_eq!(uids_of(&grown), uids_of(&asked));
    // Volumes large enough for the members added next.
    node.apply(&ns.name, &volumes(node, &class, 8..10, "4Gi")).unwrap();

    // 5. Add a replica, then remove two: the primary is never the one removed, and a removed
    // member's volume goes with it (pvcRetention.whenScaled: Delete).
    let t = Instant::now();
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(json!({"spec": {"instances": {"members": 4}}})))
        .await
        .unwrap();
    up_to_date(&client, &hacs, &ns.name, 4).await;
    eprintln!("add a replica: {:.1}s", t.elapsed().as_secs_f64());
    let primary_now = wait_primary(&hacs, "db", None).await;
    let t = Instant::now();
    hacs.patch("db", &PatchParams::default(), &Patch::Merge(json!({"spec": {"instances": {"members": 2}}})))
        .await
        .unwrap();
    let two = up_to_date(&client, &hacs, &ns.name, 2).await;
    eprintln!("remove two replicas: {:.1}s", t.elapsed().as_secs_f64());
    assert!(two.iter().any(|p| p.name_any() == primary_now), "the primary {primary_now} stayed");
    assert_eq!(wait_primary(&hacs, "db", None).await, primary_now, "removing replicas moved no role");
    let claims = eventually(WAIT, "the removed members' volumes to go", || async {
        let c = pvcs.list(&ListParams::default().labels(SELECTOR)).await.ok()?.items;
        let live: Vec<_> = c.into_iter().filter(|c| c.metadata.deletion_timestamp.is_none()).collect();
        (live.len() == 2).then_some(live)
    })
    .await;
    writer.wait_more(200, WAIT).await;

    // 6. The primary's pod is evicted (what `kubectl drain` does; the budget allows one): the
    // role moves to a replica before the pod stops, losing nothing, and the operator
    // recreates the member.
    let evicted = wait_primary(&hacs, "db", None).await;
    let old_uid = two.iter().find(|p| p.name_any() == evicted).and_then(|p| p.uid());
    let t = Instant::now();
    node.kubectl(&["-n", &ns.name, "delete", "pod", &evicted, "--wait=false"]).unwrap();
    let successor = wait_primary(&hacs, "db", Some(&evicted)).await;
    let back = eventually(WAIT, "the evicted member to come back", || async {
        let pods = up_to_date(&client, &hacs, &ns.name, 2).await;
        pods.iter().any(|p| p.name_any() == evicted && p.uid() != old_uid).then_some(pods)
    })
    .await;
    writer.wait_more(200, WAIT).await;
    let pause = writer.longest_gap(t, Instant::now());
    let began = writer.longest_gap_began(t, Instant::now());
    pauses.push(pause);
    eprintln!(
        "evict the primary {evicted}: {successor} took over, member back in {:.1}s, longest client pause {pause:?} (began {began:?} after the delete)",
        t.elapsed().as_secs_f64()
    );
    // Where the time went: the operator's log of the eviction.
    let (_, logs, _) = node.run(
        &node.kubectl,
        &["-n", &ns.name, "logs", "-l", "app.kubernetes.io/name=understudy", "--tail=400", "--prefix"],
    );
    let since = k8s_openapi::jiff::Timestamp::now()
        - std::time::Duration::from_secs_f64(t.elapsed().as_secs_f64() + 1.0);
    for line in logs.lines() {
        if let Some(ts) = line.split("\"timestamp\":\"").nth(1).and_then(|r| r.get(..27))
            && ts.parse::<k8s_openapi::jiff::Timestamp>().is_ok_and(|ts| ts >= since)
        {
            eprintln!("  {line}");
        }
    }
    eprintln!("  (delete at {since} + 1 s)");
    assert_eq!(back.len(), 2);
    // A switchover, not a failover: the old primary was drained while its pod was stopping.
    let record = hacs.get("db").await.unwrap().status.and_then(|s| s.last_failover).expect("lastFailover");
    eprintln!("evict the primary: {} ({:?} ms)", record.reason, record.duration_ms);
    assert_eq!(
        (record.from.as_deref(), record.to.as_deref()),
        (Some(evicted.as_str()), Some(successor.as_str()))
    );
    assert!(record.reason.contains("being deleted"), "{}", record.reason);
    assert_eq!(record.lost_offset, Some(0), "drained: {:?}", record.steps);
    assert!(
        record.steps.iter().any(|s| s.message.as_deref().unwrap_or_default().contains("drained")),
        "{:?}",
        record.steps
    );

    // Nothing acknowledged was lost; never two primaries.
    let acked = writer.stop().await;
    let since: Vec<u64> = acked.iter().copied().filter(|n| *n >= from_seq).collect();
    let lost = missing(&vip, PORT, &since).await;
    eprintln!(
        "writes: {} acknowledged through the lifecycle, {} lost; longest pauses {pauses:?}",
        since.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {:?}", &lost[..lost.len().min(20)]);
    assert!(sampler.rounds() > 50, "the role sampler ran {} rounds", sampler.rounds());
    assert_eq!(sampler.max(), 1, "two members answered as primary at once");

    // 7. Delete: the pods and the budget go with the cluster; the volumes stay (whenDeleted:
    // Retain, the default).
    hacs.delete("db", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "the members' pods to go", || async {
        pods(&client, &ns.name, SELECTOR).await.is_empty().then_some(())
    })
    .await;
    let kept = pvcs.list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}=db"))).await.unwrap().items;
    assert_eq!(
        uids_of(&kept),
        uids_of(&claims),
        "the volumes outlive the cluster (pvcRetention.whenDeleted: Retain)"
    );
    let _ = node.kubectl(&["delete", "pv", "-l", &format!("test={class}"), "--wait=false"]);
    let _ = node.kubectl(&["delete", "storageclass", &class, "--wait=false"]);
}

/// The engine container's memory limit: as the pod asks (`running` false) or as the kubelet
/// reports it applied (`running` true).
fn memory_limit(p: &Pod, running: bool) -> Option<String> {
    let resources = if running {
        p.status.as_ref()?.container_statuses.as_ref()?.first()?.resources.clone()?
    } else {
        p.spec.as_ref()?.containers.first()?.resources.clone()?
    };
    Some(resources.limits?.get("memory")?.0.clone())
}

/// `CONFIG GET name` of the member at `ip`.
async fn config_get(ip: &str, name: &str) -> Option<String> {
    let mut c = understudy::localredis::redis_conn(ip, PORT, None, 1000).await.ok()?;
    let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut c).await.ok()?;
    v.get(1).cloned()
}

fn uids_of(c: &[PersistentVolumeClaim]) -> Vec<String> {
    let mut v: Vec<String> = c.iter().filter_map(|c| c.uid()).collect();
    v.sort();
    v
}
