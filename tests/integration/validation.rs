//! Invalid objects are rejected by the real API server (OpenAPI schema + CEL) with a message
//! a user understands, and nothing is stored.

use kube::{
    Api, Resource,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use understudy::resources::{FailoverRequest, HaCluster, ProtectionGroup, ShardFailover};

use crate::support;

struct Case {
    what: &'static str,
    kind: &'static str,
    spec: Value,
    /// Every fragment must appear in the API server's message.
    expect: &'static [&'static str],
}

fn resource(kind: &str) -> ApiResource {
    match kind {
        "HaCluster" => ApiResource::erase::<HaCluster>(&()),
        "FailoverRequest" => ApiResource::erase::<FailoverRequest>(&()),
        "ShardFailover" => ApiResource::erase::<ShardFailover>(&()),
        "ProtectionGroup" => ApiResource::erase::<ProtectionGroup>(&()),
        other => panic!("unknown kind {other}"),
    }
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    let mut obj = json!({
        "apiVersion": format!("{}/{}", HaCluster::group(&()), HaCluster::version(&())),
        "kind": kind, "metadata": {"name": name}
    });
    if !spec.is_null() {
        obj["spec"] = spec;
    }
    serde_json::from_value(obj).unwrap()
}

fn members(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"name": n, "endpoint": format!("10.0.0.{}:6379", i + 1)}))
            .collect(),
    )
}

fn redis(extra: Value) -> Value {
    let mut spec = json!({"engine": "redis", "shards": [{"name": "s0", "members": members(&["a", "b"])}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

fn cases() -> Vec<Case> {
    let sites = json!({"source": {"namespace": "east"}, "target": {"namespace": "west"}});
    vec![
        Case {
            what: "unknown engine",
            kind: "HaCluster",
            spec: redis(json!({"engine": "mysql"})),
            expect: &["spec.engine", "Unsupported value: \"mysql\"", "\"redis\"", "\"agent\""],
        },
        Case {
            what: "missing engine",
            kind: "HaCluster",
            spec: json!({"shards": [{"name": "s0", "members": members(&["a"])}]}),
            expect: &["spec.engine: Required value"],
        },
        Case {
            what: "both static members and a selector",
            kind: "HaCluster",
            spec: redis(json!({"selector": {"matchLabels": {"app": "redis"}, "port": 6379}})),
            expect: &["set exactly one of spec.shards (static members) or spec.selector (pod members)"],
        },
        Case {
            what: "neither static members nor a selector",
            kind: "HaCluster",
            spec: json!({"engine": "redis"}),
            expect: &["set exactly one of spec.shards"],
        },
        Case {
            what: "duplicate member names across shards",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [
                {"name": "s0", "members": members(&["a", "b"])},
                {"name": "s1", "members": members(&["c", "a"])}]}),
            expect: &["member names must be unique across all shards"],
        },
        Case {
            what: "duplicate member names within a shard",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": members(&["a", "a"])}]}),
            expect: &["Duplicate value", "\"a\""],
        },
        Case {
            what: "negative priority",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [
                {"name": "a", "endpoint": "10.0.0.1:6379", "priority": -1}]}]}),
            expect: &["priority", "should be greater than or equal to 0"],
        },
        Case {
            what: "malformed duration",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"heartbeatInterval": "5 seconds"}})),
            expect: &["spec.failover.heartbeatInterval", "must be a duration such as 500ms, 5s, 1m30s or 2h"],
        },
        Case {
            what: "endpoint port out of range",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [
                {"name": "a", "endpoint": "redis-a:99999"}]}]}),
            expect: &["endpoint must be host:port with a port from 1 to 65535"],
        },
        Case {
            what: "endpoint without a port",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [
                {"name": "a", "endpoint": "10.0.0.1"}]}]}),
            expect: &["endpoint must be host:port"],
        },
        Case {
            what: "zero failure threshold",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"failureThreshold": 0}})),
            expect: &["spec.failover.failureThreshold", "should be greater than or equal to 1"],
        },
        Case {
            what: "unknown failover mode",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"mode": "auto"}})),
            expect: &["spec.failover.mode", "Unsupported value: \"auto\""],
        },
        Case {
            what: "redirect with the redis engine",
            kind: "HaCluster",
            spec: redis(json!({"redirect": {"configMap": "app-config"}})),
            expect: &["spec.redirect is only used with engine agent"],
        },
        Case {
            what: "ACL that is not a CIDR",
            kind: "HaCluster",
            spec: redis(json!({"acls": ["10.0.0.0/8", "everyone"]})),
            expect: &["every acls entry must be a CIDR"],
        },
        Case {
            what: "empty pod selector",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "selector": {"matchLabels": {}, "port": 6379}}),
            expect: &["selector.matchLabels must name at least one label"],
        },
        Case {
            what: "member name that is not a DNS label",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [
                {"name": "Redis_A", "endpoint": "10.0.0.1:6379"}]}]}),
            expect: &["spec.shards[0].members[0].name", "should match"],
        },
        Case {
            what: "failover request without items",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": []}),
            expect: &["items must name at least one cluster"],
        },
        Case {
            what: "unknown failover request type",
            kind: "FailoverRequest",
            spec: json!({"type": "Failback", "items": [{"cluster": "orders"}]}),
            expect: &["spec.type", "Unsupported value: \"Failback\"", "\"Switchover\"", "\"Failover\""],
        },
        Case {
            what: "the same cluster twice in one request",
            kind: "FailoverRequest",
            spec: json!({"type": "Failover", "items": [{"cluster": "orders"}, {"cluster": "orders"}]}),
            expect: &["each cluster/shard may appear only once in items"],
        },
        Case {
            what: "zero timeout",
            kind: "FailoverRequest",
            spec: json!({"type": "Failover", "items": [{"cluster": "orders"}], "timeoutSeconds": 0}),
            expect: &["spec.timeoutSeconds", "should be greater than or equal to 1"],
        },
        Case {
            what: "empty shardUids (seed: shard_uids_required)",
            kind: "ShardFailover",
            spec: json!({"shardUids": []}),
            expect: &["shard_uids_required: shardUids must name at least one primary shard"],
        },
        Case {
            what: "missing shardUids (seed: shard_uids_required)",
            kind: "ShardFailover",
            spec: json!({"dryRun": true}),
            expect: &["shard_uids_required"],
        },
        Case {
            what: "repeated shard uid",
            kind: "ShardFailover",
            spec: json!({"shardUids": ["a", "a"]}),
            expect: &["shardUids must not repeat a uid"],
        },
        Case {
            what: "unknown priority site",
            kind: "ProtectionGroup",
            spec: json!({"sites": sites, "prioritySite": "primary"}),
            expect: &["spec.prioritySite", "Unsupported value: \"primary\"", "\"source\"", "\"target\""],
        },
        Case {
            what: "a cluster paired with itself",
            kind: "ProtectionGroup",
            spec: json!({"sites": {"source": {"namespace": "east"}, "target": {"namespace": "east"}},
                         "pairs": [{"source": "orders", "target": "orders"}]}),
            expect: &["a pair cannot protect a cluster with itself"],
        },
        Case {
            what: "a cluster in two pairs",
            kind: "ProtectionGroup",
            spec: json!({"sites": sites, "pairs": [{"source": "orders", "target": "a"}, {"source": "orders", "target": "b"}]}),
            expect: &["each HaCluster may appear in only one pair on each side"],
        },
        Case {
            what: "a duration beyond 24h (the parser's bound too)",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"failoverDelay": "300000h"}})),
            expect: &["spec.failover.failoverDelay", "must be at most 24h"],
        },
        Case {
            what: "a step timeout of 25h",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"stepTimeout": "25h"}})),
            expect: &["spec.failover.stepTimeout", "must be at most 24h"],
        },
        Case {
            what: "a standby primaryEndpoint that is not host:port",
            kind: "HaCluster",
            spec: redis(json!({"standby": {"primaryEndpoint": "garbage!!"}})),
            expect: &["spec.standby.primaryEndpoint", "host:port"],
        },
        Case {
            what: "missing sites",
            kind: "ProtectionGroup",
            spec: json!({"pairs": []}),
            expect: &["spec.sites: Required value"],
        },
    ]
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_clear_messages() {
    let client = support::client().await;
    let ns = support::namespace(&client, "invalid").await;
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let ar = resource(case.kind);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let name = format!("case-{i}");
        match api.create(&PostParams::default(), &object(case.kind, &name, case.spec.clone())).await {
            Ok(_) => failures.push(format!("{}: accepted, expected a rejection", case.what)),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<_> = case.expect.iter().filter(|f| !status.message.contains(**f)).collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{}: code {}, message {:?}, missing {missing:?}",
                        case.what, status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.what)),
        }
        // Nothing was stored.
        assert!(api.get_opt(&name).await.unwrap().is_none(), "{}: object was stored", case.what);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn specs_of_operations_are_immutable() {
    let client = support::client().await;
    let ns = support::namespace(&client, "immutable").await;
    for (kind, spec, change, expect) in [
        (
            "FailoverRequest",
            json!({"type": "Switchover", "items": [{"cluster": "orders"}]}),
            json!({"spec": {"type": "Failover"}}),
            "a FailoverRequest is immutable once created; delete it and create a new one",
        ),
        (
            "ShardFailover",
            json!({"shardUids": ["a"], "dryRun": true}),
            json!({"spec": {"dryRun": false}}),
            "a ShardFailover is immutable once created; delete it and create a new one",
        ),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource(kind));
        api.create(&PostParams::default(), &object(kind, "op", spec.clone())).await.expect("valid create");
        let err = api
            .patch("op", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .expect_err("mutation rejected");
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{kind}: {}", s.message);
                assert!(s.message.contains(expect), "{kind}: {}", s.message);
            }
            other => panic!("{kind}: unexpected error {other}"),
        }
        let stored = api.get("op").await.unwrap();
        for (k, v) in spec.as_object().unwrap() {
            assert_eq!(&stored.data["spec"][k], v, "{kind}: stored spec.{k} unchanged");
        }
        // Labels and annotations stay editable.
        let label = json!({"metadata": {"labels": {"team": "db"}}});
        api.patch("op", &PatchParams::default(), &Patch::Merge(&label)).await.expect("metadata edit allowed");
    }
}
