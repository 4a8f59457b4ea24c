//! `spec.instances` against the API server alone (no kubelet: the pods are created but never
//! run): what the operator does when a member's name is already taken.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::json;
use understudy::resources::HaCluster;

use crate::support::{self, Operator, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn cluster(name: &str, extra: serde_json::Value) -> HaCluster {
    let mut spec = json!({"engine": "Redis", "instances": {"members": 2, "image": "redis:7"}});
    for (k, v) in extra.as_object().unwrap() {
        spec["instances"][k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// The Progressing condition's (status, reason, message).
async fn progressing(hacs: &Api<HaCluster>, name: &str) -> Option<(String, String, String)> {
    let c = hacs.get(name).await.ok()?;
    let cond = c.status?.conditions.into_iter().find(|c| c.type_ == "Progressing")?;
    Some((cond.status, cond.reason, cond.message))
}

#[tokio::test]
async fn a_name_taken_by_someone_elses_pod_or_volume_is_reported_and_left_alone() {
    let client = support::client().await;
    let ns = support::namespace(&client, "inst").await;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    // Someone else's pod under the name of member p-0, and someone else's claim under the
    // name of member v-0's volume.
    let foreign_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p-0", "labels": {"app": "mine"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    let foreign_pod = pods.create(&PostParams::default(), &foreign_pod).await.unwrap();
    let foreign_pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-v-0", "labels": {"app": "mine"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    let foreign_pvc = pvcs.create(&PostParams::default(), &foreign_pvc).await.unwrap();
    let _operator = Operator::start(client.clone(), &ns);
    hacs.create(&PostParams::default(), &cluster("p", json!({}))).await.unwrap();
    hacs.create(&PostParams::default(), &cluster("v", json!({"storage": {"size": "64Mi"}}))).await.unwrap();

    let (status, _, message) = eventually(WAIT, "p reports the taken pod name", || async {
        progressing(&hacs, "p").await.filter(|(_, r, _)| r == "NameConflict")
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("pod p-0 exists and is not a member"), "{message}");
    let (status, _, message) = eventually(WAIT, "v reports the taken volume name", || async {
        progressing(&hacs, "v").await.filter(|(_, r, _)| r == "NameConflict")
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("PersistentVolumeClaim data-v-0 exists"), "{message}");

    // Nothing of theirs was touched, and no member pod mounts their volume.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = pods.get("p-0").await.unwrap();
    assert_eq!(pod.uid(), foreign_pod.uid());
    assert_eq!(pod.resource_version(), foreign_pod.resource_version(), "the foreign pod was written to");
    let pvc = pvcs.get("data-v-0").await.unwrap();
    assert_eq!(pvc.resource_version(), foreign_pvc.resource_version(), "the foreign claim was written to");
    let members = pods.list(&ListParams::default().labels("understudy.dev/cluster=v")).await.unwrap();
    assert!(
        members.items.iter().all(|p| p.name_any() != "v-0"),
        "member v-0 was created beside someone else's volume"
    );
    // The condition stays put (no flapping back to Creating on every retry).
    let again = progressing(&hacs, "p").await.unwrap();
    assert_eq!(again.1, "NameConflict");

    // Once the pod is gone, the member is created.
    pods.delete("p-0", &Default::default()).await.unwrap();
    eventually(WAIT, "member p-0 created once the name is free", || async {
        let p = pods.get_opt("p-0").await.unwrap()?;
        p.labels().get("understudy.dev/cluster").is_some_and(|c| c == "p").then_some(())
    })
    .await;
}
