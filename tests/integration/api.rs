//! Every kind can be created, read, listed with its printer columns, and has its status
//! patched through the status subresource — on a real kube-apiserver.

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{FailoverRequest, HaCluster, ProtectionGroup, ShardFailover};

use crate::support::{self, kubectl};

fn from_json<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).expect("valid object")
}

/// `kubectl get <kind> -n <ns>` and return the header and first row split on whitespace.
fn table(kind: &str, ns: &str, wide: bool) -> (Vec<String>, Vec<String>) {
    let mut args = vec!["get", kind, "-n", ns];
    if wide {
        args.extend(["-o", "wide"]);
    }
    let out = kubectl(&args);
    let mut lines = out.lines();
    let split = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    (split(lines.next().unwrap_or_default()), split(lines.next().unwrap_or_default()))
}

fn column<'a>(t: &'a (Vec<String>, Vec<String>), name: &str) -> &'a str {
    let i = t.0.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {:?}", t.0));
    &t.1[i]
}

#[tokio::test]
async fn hacluster_create_read_list_status() {
    let client = support::client().await;
    let ns = support::namespace(&client, "api-hac").await;
    let api: Api<HaCluster> = Api::namespaced(client, &ns);
    let hac: HaCluster = from_json(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": "orders"},
        "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": [
            {"name": "a", "endpoint": "10.0.0.1:6379"},
            {"name": "b", "endpoint": "redis-b.orders:6379", "priority": 50, "node": "n2"}]}]}
    }));
    api.create(&PostParams::default(), &hac).await.expect("create");

    // Defaults are applied by the API server from the schema.
    let got = api.get("orders").await.unwrap();
    assert_eq!(got.spec.failover.heartbeat_interval.to_string(), "1s");
    assert_eq!(got.spec.failover.failure_threshold, 3);
    let shards = got.spec.shards.as_ref().unwrap();
    assert_eq!(shards[0].members[0].priority, 100, "priority defaults to 100");
    assert_eq!(shards[0].members[1].priority, 50);

    // Status goes through the status subresource only.
    let status = json!({"status": {
        "phase": "Healthy", "primary": "a", "healthyMembers": "2/2", "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "PrimaryElected",
                        "message": "a is primary", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "shards": [{"name": "s0", "currentPrimary": "a", "epoch": 7, "members": [
            {"name": "a", "role": "Primary", "healthy": true},
            {"name": "b", "role": "Replica", "healthy": true, "lag": 0}]}]
    }});
    api.patch_status("orders", &PatchParams::default(), &Patch::Merge(&status)).await.expect("patch status");
    // A status written through the main resource is ignored.
    let ignored = json!({"status": {"phase": "Failed"}});
    api.patch("orders", &PatchParams::default(), &Patch::Merge(&ignored)).await.unwrap();
    let got = api.get("orders").await.unwrap();
    let st = got.status.expect("status");
    assert_eq!(st.primary.as_deref(), Some("a"));
    assert_eq!(st.shards[0].epoch, 7);
    assert_eq!(st.conditions[0].reason, "PrimaryElected");

    let list = api.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);

    let t = table("hac", &ns, true);
    assert_eq!(column(&t, "NAME"), "orders");
    assert_eq!(column(&t, "ENGINE"), "Redis");
    assert_eq!(column(&t, "PHASE"), "Healthy");
    assert_eq!(column(&t, "PRIMARY"), "a");
    assert_eq!(column(&t, "EPOCH"), "7");
    assert_eq!(column(&t, "HEALTHY"), "2/2");
    assert!(t.0.contains(&"AGE".to_owned()));
    // The category lists every Understudy kind.
    assert!(kubectl(&["get", "understudy", "-n", &ns]).contains("hacluster.understudy.dev/orders"));
}

#[tokio::test]
async fn failover_request_create_read_list_status() {
    let client = support::client().await;
    let ns = support::namespace(&client, "api-fr").await;
    let api: Api<FailoverRequest> = Api::namespaced(client, &ns);
    let fr: FailoverRequest = from_json(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "FailoverRequest",
        "metadata": {"name": "move-orders"},
        "spec": {"type": "Switchover", "items": [{"cluster": "orders", "candidate": "b", "serviceName": "orders-rw"}]}
    }));
    api.create(&PostParams::default(), &fr).await.expect("create");
    let got = api.get("move-orders").await.unwrap();
    assert_eq!(got.spec.timeout_seconds, 1800, "timeoutSeconds defaults to 1800");
    assert!(!got.spec.dry_run);

    let status = json!({"status": {"phase": "Running", "progress": "2/6", "task": {
        "id": "t-1", "name": "switchover", "status": "RUNNING", "subtasks": [
            {"id": 1, "name": "check", "description": "check orders", "status": "SUCCESSFUL", "item": 0,
             "downstreams": [2], "timeoutSeconds": 1800},
            {"id": 2, "name": "fence", "description": "fence a", "status": "RUNNING", "item": 0,
             "upstreams": [1], "timeoutSeconds": 1800, "prohibitRollback": false}]}}});
    api.patch_status("move-orders", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status");
    let st = api.get("move-orders").await.unwrap().status.unwrap();
    assert_eq!(st.task.unwrap().subtasks.len(), 2);
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 1);

    let t = table("fr", &ns, true);
    assert_eq!(column(&t, "TYPE"), "Switchover");
    assert_eq!(column(&t, "PHASE"), "Running");
    assert_eq!(column(&t, "PROGRESS"), "2/6");
    assert_eq!(column(&t, "DRYRUN"), "false");
}

#[tokio::test]
async fn shard_failover_create_read_list_status() {
    let client = support::client().await;
    let ns = support::namespace(&client, "api-sfo").await;
    let api: Api<ShardFailover> = Api::namespaced(client, &ns);
    let sfo: ShardFailover = from_json(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
        "metadata": {"name": "sfo-1"},
        "spec": {"shardUids": ["a", "c"], "deadNodes": ["n1"], "dryRun": true}
    }));
    api.create(&PostParams::default(), &sfo).await.expect("create");
    let got = api.get("sfo-1").await.unwrap();
    assert_eq!(got.spec.shard_uids, ["a", "c"]);
    assert_eq!(got.spec.timeout_seconds, 300);

    let status = json!({"status": {"actionUid": "00000000-0000-0000-0000-000000000001", "phase": "Failed",
        "cluster": "orders", "errorCode": "shard_is_slave", "message": "c is a replica",
        "shards": [{"uid": "c", "from": "c", "phase": "Failed", "message": "c is a replica"}]}});
    api.patch_status("sfo-1", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status");
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 1);

    let t = table("sfo", &ns, true);
    assert_eq!(column(&t, "CLUSTER"), "orders");
    assert_eq!(column(&t, "PHASE"), "Failed");
    assert_eq!(column(&t, "ERROR"), "shard_is_slave");
    assert_eq!(column(&t, "DRYRUN"), "true");
}

#[tokio::test]
async fn protection_group_create_read_list_status() {
    let client = support::client().await;
    let ns = support::namespace(&client, "api-pg").await;
    let api: Api<ProtectionGroup> = Api::namespaced(client, &ns);
    let pg: ProtectionGroup = from_json(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup",
        "metadata": {"name": "dr"},
        "spec": {"sites": {"source": {"namespace": "east"}, "target": {"namespace": "west"}},
                 "pairs": [{"source": "orders", "target": "orders"}]}
    }));
    api.create(&PostParams::default(), &pg).await.expect("create");
    let got = api.get("dr").await.unwrap();
    assert_eq!(serde_json::to_value(got.spec.priority_site).unwrap(), "Source");

    let status = json!({"status": {"phase": "Protected", "productionSite": "Source",
        "replicationDirection": "east->west", "pairs": [{"source": "orders", "target": "orders", "state": "replicating", "lag": 0}]}});
    api.patch_status("dr", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status");
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 1);

    let t = table("pg", &ns, true);
    assert_eq!(column(&t, "PHASE"), "Protected");
    assert_eq!(column(&t, "PRODUCTION"), "Source");
    assert_eq!(column(&t, "PRIORITY"), "Source", "the schema's default");
    assert_eq!(column(&t, "DIRECTION"), "east->west");
}

/// Enum values are CamelCase; the lowercase (and kebab-case) spellings of earlier versions are
/// still accepted by the API server and read by the operator, which writes CamelCase back.
#[tokio::test]
async fn earlier_lowercase_enum_spellings_are_still_accepted_and_read() {
    use understudy::resources::{
        hacluster::{Engine, FailoverMode, Role},
        protection_group::{ProtectionPhase, SiteRole},
    };
    let client = support::client().await;
    let ns = support::namespace(&client, "api-spelling").await;
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    // Sent as written (a typed object would be re-serialized in CamelCase on the way).
    let raw = |erased: kube::api::ApiResource| -> Api<kube::api::DynamicObject> {
        Api::namespaced_with(client.clone(), &ns, &erased)
    };
    let raw_hacs = raw(kube::api::ApiResource::erase::<HaCluster>(&()));
    let hac = |name: &str, engine: &str, mode: &str| -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": name},
            "spec": {"engine": engine, "failover": {"mode": mode},
                     "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "10.0.0.1:6379"}]}]}
        }))
        .unwrap()
    };
    for (name, engine, mode) in
        [("old", "redis", "manual"), ("new", "Redis", "Manual"), ("agent", "agent", "automatic")]
    {
        raw_hacs
            .create(&PostParams::default(), &hac(name, engine, mode))
            .await
            .unwrap_or_else(|e| panic!("{engine}/{mode} refused: {e}"));
    }
    let stored = raw_hacs.get("old").await.unwrap();
    assert_eq!(stored.data["spec"]["engine"], "redis", "stored as written");
    let old = hacs.get("old").await.unwrap();
    assert_eq!((old.spec.engine, old.spec.failover.mode), (Engine::Redis, FailoverMode::Manual));
    assert_eq!(hacs.get("agent").await.unwrap().spec.engine, Engine::Agent);
    // What the operator writes back is CamelCase.
    let v = serde_json::to_value(&old.spec).unwrap();
    assert_eq!((v["engine"].as_str(), v["failover"]["mode"].as_str()), (Some("Redis"), Some("Manual")));
    // A status written by an earlier version (lowercase roles) is read.
    let status = json!({"status": {"shards": [{"name": "s0", "currentPrimary": "a", "epoch": 1,
        "members": [{"name": "a", "role": "primary", "healthy": true}]}]}});
    hacs.patch_status("old", &PatchParams::default(), &Patch::Merge(&status)).await.expect("lowercase role");
    let st = hacs.get("old").await.unwrap().status.unwrap();
    assert_eq!(st.shards[0].members[0].role, Role::Primary);
    // Any other spelling is refused.
    let err = raw_hacs.create(&PostParams::default(), &hac("bad", "REDIS", "Manual")).await.unwrap_err();
    assert!(err.to_string().contains("spec.engine"), "{err}");

    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &ns);
    let pg: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup", "metadata": {"name": "dr"},
        "spec": {"sites": {"source": {"namespace": "east"}, "target": {"namespace": "west"}},
                 "pairs": [{"source": "orders", "target": "orders"}], "prioritySite": "target"}
    }))
    .unwrap();
    raw(kube::api::ApiResource::erase::<ProtectionGroup>(&()))
        .create(&PostParams::default(), &pg)
        .await
        .expect("lowercase prioritySite");
    assert_eq!(pgs.get("dr").await.unwrap().spec.priority_site, SiteRole::Target);
    let status = json!({"status": {"phase": "failing-over", "productionSite": "source"}});
    pgs.patch_status("dr", &PatchParams::default(), &Patch::Merge(&status)).await.expect("kebab-case phase");
    let st = pgs.get("dr").await.unwrap().status.unwrap();
    assert_eq!((st.phase, st.production_site), (Some(ProtectionPhase::FailingOver), Some(SiteRole::Source)));
}

#[tokio::test]
async fn the_test_control_plane_is_a_real_kube_apiserver() {
    let shared = support::shared();
    let client = support::client().await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.git_version, shared.version);
    let want = format!("v{}", env_version());
    assert_eq!(info.git_version, want, "discovery reports the version we built");
    // The server knows our API group, installed through `kubectl apply`.
    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "understudy.dev"));
}

fn env_version() -> String {
    let env = include_str!("../../tools/controlplane/versions.env");
    env.lines().find_map(|l| l.strip_prefix("KUBE_VERSION=")).unwrap().trim().to_owned()
}
