//! `spec.instances` against the API server alone (no kubelet: the pods are created but never
//! run): what the operator does when a member's name is already taken.

use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{PersistentVolumeClaim, Pod},
};
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

/// The cluster's finalizer (understudy.dev/volumes) is present.
async fn finalized(hacs: &Api<HaCluster>, name: &str) -> bool {
    hacs.get_opt(name)
        .await
        .unwrap()
        .is_some_and(|c| c.finalizers().iter().any(|f| f == "understudy.dev/volumes"))
}

async fn owned_by_cluster(
    pvcs: &Api<PersistentVolumeClaim>,
    name: &str,
    cluster: &HaCluster,
) -> Option<bool> {
    let pvc = pvcs.get_opt(name).await.unwrap()?;
    Some(pvc.owner_references().iter().any(|o| Some(&o.uid) == cluster.metadata.uid.as_ref()))
}

#[tokio::test]
async fn volumes_follow_when_deleted_as_it_is_when_the_cluster_is_deleted() {
    let client = support::client().await;
    let ns = support::namespace(&client, "inst-del").await;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let _operator = Operator::start(client.clone(), &ns);
    let delete = json!({"storage": {"size": "64Mi"}, "pvcRetention": {"whenDeleted": "Delete"}});
    // k: made under Delete, then switched to Retain before the delete: its data is kept.
    let k = hacs.create(&PostParams::default(), &cluster("k", delete.clone())).await.unwrap();
    // g: Delete throughout: its volume goes.
    let g = hacs.create(&PostParams::default(), &cluster("g", delete.clone())).await.unwrap();
    for (c, name) in [(&k, "k"), (&g, "g")] {
        eventually(WAIT, "the finalizer and an owned volume", || async {
            (finalized(&hacs, name).await
                && owned_by_cluster(&pvcs, &format!("data-{name}-0"), c).await == Some(true))
            .then_some(())
        })
        .await;
    }
    let patch = json!({"spec": {"instances": {"pvcRetention": {"whenDeleted": "Retain"}}}});
    hacs.patch("k", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    eventually(WAIT, "k's volume no longer owned (Retain)", || async {
        (owned_by_cluster(&pvcs, "data-k-0", &k).await == Some(false)).then_some(())
    })
    .await;
    let kept = pvcs.get("data-k-0").await.unwrap();

    // A policy that refuses deleting g's volume: the deletion waits, and says why.
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": format!("keep-volumes-{ns}")},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["persistentvolumeclaims"]}]},
            "validations": [{"expression": format!("oldObject.metadata.namespace != '{ns}'"), "message": "volumes here are kept by policy"}]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": format!("keep-volumes-{ns}")},
        "spec": {"policyName": format!("keep-volumes-{ns}"), "validationActions": ["Deny"]}
    }))
    .unwrap();
    let vaps: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    vaps.create(&PostParams::default(), &vap).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    // The policy is in force once a direct delete is refused.
    eventually(WAIT, "the admission policy in force", || async {
        let r = pvcs.delete("data-g-0", &Default::default()).await;
        matches!(r, Err(kube::Error::Api(e)) if e.message.contains("kept by policy")).then_some(())
    })
    .await;
    hacs.delete("k", &Default::default()).await.unwrap();
    hacs.delete("g", &Default::default()).await.unwrap();
    eventually(WAIT, "k deleted", || async { hacs.get_opt("k").await.unwrap().is_none().then_some(()) })
        .await;
    let (status, _, message) = eventually(WAIT, "g reports DeletionError", || async {
        progressing(&hacs, "g").await.filter(|(_, r, _)| r == "DeletionError")
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("kept by policy"), "{message}");
    assert!(
        hacs.get_opt("g").await.unwrap().is_some(),
        "g was deleted before its volumes followed whenDeleted"
    );
    // k's volume is the same object, kept, and owned by nobody.
    let after = pvcs.get("data-k-0").await.unwrap();
    assert_eq!(after.uid(), kept.uid());
    assert!(
        after.metadata.deletion_timestamp.is_none(),
        "k's volume is being deleted despite whenDeleted: Retain"
    );
    assert!(after.owner_references().is_empty(), "{:?}", after.owner_references());

    // Policy lifted: g's deletion finishes and takes its volume.
    bindings.delete(&format!("keep-volumes-{ns}"), &Default::default()).await.unwrap();
    eventually(WAIT, "g deleted", || async { hacs.get_opt("g").await.unwrap().is_none().then_some(()) })
        .await;
    eventually(WAIT, "g's volume deleted", || async {
        pvcs.get_opt("data-g-0")
            .await
            .unwrap()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    vaps.delete(&format!("keep-volumes-{ns}"), &Default::default()).await.unwrap();
}
