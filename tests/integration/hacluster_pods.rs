//! HaCluster with pod members (selector): role labels on pods, selector-less Services whose
//! EndpointSlices the operator writes (pod IPs), and the ACL NetworkPolicy. There is no
//! kubelet: the test creates the pods and sets their status (IP, Ready) itself, as kwok
//! does; each pod's `understudy.dev/address` annotation points at a real redis-server on its
//! own loopback address.

use std::time::Duration;

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Resource,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::HaCluster;

use crate::{
    hacluster_redis::{wait_follows, wait_primary},
    support::{self, Operator, RedisServer, eventually},
};

const WAIT: Duration = Duration::from_secs(60);

async fn make_pod(pods: &Api<Pod>, name: &str, ip: &str, address: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "cache"}, "annotations": {"understudy.dev/address": address}},
        "spec": {"nodeName": "test-node", "containers": [{"name": "redis", "image": "redis:7"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

async fn role_label(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok()?.metadata.labels?.get("understudy.dev/role").cloned()
}

#[tokio::test]
async fn pod_members_get_role_labels_services_and_a_network_policy() {
    let client = support::client().await;
    let ns = support::namespace(&client, "pods").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "test-node"}})).unwrap();
    let _ = nodes.create(&PostParams::default(), &node).await;

    let port = understudy::controlplane::free_port().unwrap();
    let mut servers = [
        RedisServer::start_on("127.0.0.31", port, None),
        RedisServer::start_on("127.0.0.32", port, None),
        RedisServer::start_on("127.0.0.33", port, None),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_ips = ["10.88.0.1", "10.88.0.2", "10.88.0.3"];
    let names = ["cache-0", "cache-1", "cache-2"];
    for i in 0..3 {
        make_pod(&pods, names[i], pod_ips[i], &servers[i].ip).await;
    }
    let api: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    let hac: HaCluster = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": "cache"},
        "spec": {
            "engine": "Redis",
            "selector": {"matchLabels": {"app": "cache"}, "port": port, "addressAnnotation": "understudy.dev/address"},
            "failover": {"heartbeatInterval": "200ms", "failureThreshold": 3},
            "acls": ["10.0.0.0/8"],
        }
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &hac).await.unwrap();
    // An earlier version made the primary Service select pods by role label. Leave one behind,
    // routed by kube-controller-manager to a pod labelled primary by hand: after the upgrade
    // its EndpointSlice must go, or kube-proxy would route to that pod beside the real primary.
    // Applied as that version did: server-side apply by the operator's field manager, owned
    // by the cluster.
    let owner = created.controller_owner_ref(&()).unwrap();
    let old = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cache-primary", "ownerReferences": [owner]},
        "spec": {"selector": {"app": "cache", "understudy.dev/role": "primary"}, "ports": [{"name": "main", "port": port}]}
    });
    Api::<Service>::namespaced(client.clone(), &ns)
        .patch("cache-primary", &PatchParams::apply("understudy").force(), &Patch::Apply(&old))
        .await
        .unwrap();
    let stale = names[2];
    pods.patch(
        stale,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"understudy.dev/role": "primary"}}})),
    )
    .await
    .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "kube-controller-manager's EndpointSlice for the old selector Service", || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=cache-primary"))
            .await
            .ok()?;
        l.items
            .iter()
            .any(|s| s.endpoints.iter().any(|e| e.addresses.contains(&pod_ips[2].to_owned())))
            .then_some(())
    })
    .await;
    let operator = Operator::start(client.clone(), &ns);

    let first = wait_primary(&api, "cache", "main", None).await;
    let pi = names.iter().position(|n| *n == first).unwrap();
    for i in (0..3).filter(|i| *i != pi) {
        wait_follows(&servers[i], &servers[pi]).await;
    }
    for (i, n) in names.iter().enumerate() {
        let want = if i == pi { "primary" } else { "replica" };
        let got =
            eventually(WAIT, "role label", || async { role_label(&pods, n).await.filter(|r| r == want) })
                .await;
        assert_eq!(got, want);
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    // Pod labels are written just before the Services, in the same pass: wait for the write.
    let svc = eventually(WAIT, "Service cache-primary without a selector", || async {
        services
            .get("cache-primary")
            .await
            .ok()
            .filter(|s| s.spec.as_ref().is_some_and(|s| s.selector.is_none()))
    })
    .await;
    let spec = svc.spec.unwrap();
    assert_eq!(spec.selector, None, "selector-less: the operator moves its EndpointSlice in one write");
    assert_eq!(spec.ports.unwrap()[0].port, i32::from(port));

    // The operator's EndpointSlice routes the Service to the primary pod's IP.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let primary_ips = || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=cache-primary"))
            .await
            .ok()?;
        Some(
            l.items
                .iter()
                .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
                .collect::<Vec<_>>(),
        )
    };
    let want = vec![pod_ips[pi].to_owned()];
    eventually(WAIT, "primary EndpointSlice on the primary pod", || async {
        primary_ips().await.filter(|ips| *ips == want)
    })
    .await;

    let np = Api::<NetworkPolicy>::namespaced(client.clone(), &ns).get("cache-acl").await.unwrap();
    let spec = serde_json::to_value(np.spec.unwrap()).unwrap();
    assert_eq!(spec["podSelector"]["matchLabels"]["app"], "cache");
    assert_eq!(spec["ingress"][0]["from"][1]["ipBlock"]["cidr"], "10.0.0.0/8");
    assert_eq!(spec["ingress"][0]["ports"][0]["port"], port);

    // Fail over: labels and the routed endpoint follow the new primary.
    servers[pi].kill();
    let second = wait_primary(&api, "cache", "main", Some(&first)).await;
    let si = names.iter().position(|n| *n == second).unwrap();
    eventually(WAIT, "new primary labelled", || async {
        role_label(&pods, &second).await.filter(|r| r == "primary")
    })
    .await;
    let want = vec![pod_ips[si].to_owned()];
    eventually(WAIT, "primary EndpointSlice moved to the new primary pod", || async {
        primary_ips().await.filter(|ips| *ips == want)
    })
    .await;
    assert_ne!(
        role_label(&pods, &first).await.as_deref(),
        Some("primary"),
        "the dead primary is no longer routed"
    );
    operator.stop().await;
}
