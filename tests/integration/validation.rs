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

/// A Redis cluster of instances with `extra` merged into spec.instances.
fn instances(extra: Value) -> Value {
    let mut spec = json!({"engine": "Redis", "instances": {"members": 3, "image": "redis:7"}});
    for (k, v) in extra.as_object().unwrap() {
        spec["instances"][k] = v.clone();
    }
    spec
}

fn cases() -> Vec<Case> {
    let sites = json!({"source": {"namespace": "east"}, "target": {"namespace": "west"}});
    vec![
        Case {
            what: "unknown engine",
            kind: "HaCluster",
            spec: redis(json!({"engine": "postgres"})),
            expect: &["spec.engine", "Unsupported value: \"postgres\"", "\"redis\"", "\"agent\""],
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
            expect: &[
                "set exactly one of spec.shards (static members), spec.selector (pods run by something else) or spec.instances (pods the operator runs)",
            ],
        },
        Case {
            what: "neither static members nor a selector",
            kind: "HaCluster",
            spec: json!({"engine": "redis"}),
            expect: &["set exactly one of spec.shards"],
        },
        Case {
            what: "static members and instances",
            kind: "HaCluster",
            spec: redis(json!({"instances": {"members": 3, "image": "redis:7"}})),
            expect: &["set exactly one of spec.shards"],
        },
        Case {
            what: "zero instances",
            kind: "HaCluster",
            spec: instances(json!({"members": 0})),
            expect: &["spec.instances.members", "should be greater than or equal to 1"],
        },
        Case {
            what: "too many instances",
            kind: "HaCluster",
            spec: instances(json!({"members": 10})),
            expect: &["spec.instances.members", "should be less than or equal to 9"],
        },
        Case {
            what: "instances without an image",
            kind: "HaCluster",
            spec: json!({"engine": "Redis", "instances": {"members": 3}}),
            expect: &["spec.instances.image: Required value"],
        },
        Case {
            what: "instances of an agent engine",
            kind: "HaCluster",
            spec: json!({"engine": "Agent", "instances": {"members": 3, "image": "redis:7"}}),
            expect: &["spec.instances runs Redis and Mysql members; Agent members are run by something else"],
        },
        Case {
            what: "MariaDB instances without a Secret",
            kind: "HaCluster",
            spec: json!({"engine": "Mysql", "instances": {"members": 3, "image": "mariadb:10.11"}}),
            expect: &["spec.instances with engine Mysql needs spec.secretRef"],
        },
        Case {
            what: "a MariaDB parameter the operator sets",
            kind: "HaCluster",
            spec: json!({"engine": "Mysql", "secretRef": {"name": "s"},
                         "instances": {"members": 3, "image": "mariadb:10.11", "parameters": {"sync-binlog": "0"}}}),
            expect: &["spec.instances.parameters of a Mysql cluster cannot set what the operator relies on"],
        },
        Case {
            what: "storage size not a quantity",
            kind: "HaCluster",
            spec: instances(json!({"storage": {"size": "lots"}})),
            expect: &["storage.size must be a positive quantity such as 1Gi"],
        },
        Case {
            what: "a parameter the operator sets",
            kind: "HaCluster",
            spec: instances(json!({"parameters": {"replicaof": "10.0.0.9 6379"}})),
            expect: &["port, dir, replicaof, bind"],
        },
        Case {
            what: "a parameter that would fight the operator's self-fencing",
            kind: "HaCluster",
            spec: instances(json!({"parameters": {"min-replicas-to-write": "0"}})),
            expect: &["min-replicas-* (self-fencing) are set by the operator"],
        },
        Case {
            what: "a multi-line parameter value",
            kind: "HaCluster",
            spec: instances(json!({"parameters": {"maxmemory": "1mb\nreplicaof 10.0.0.9 6379"}})),
            expect: &["parameter values must be one line"],
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
            expect: &["spec.redirect is only used with engine Agent"],
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
        // --- more hostile input, field by field ---
        Case {
            what: "no shards at all",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": []}),
            expect: &["spec.shards"],
        },
        Case {
            what: "a shard without members",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": []}]}),
            expect: &["members"],
        },
        Case {
            what: "a shard name that is not a DNS label",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "S 0", "members": members(&["a"])}]}),
            expect: &["spec.shards[0].name"],
        },
        Case {
            what: "two shards with one name",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": members(&["a"])}, {"name": "s0", "members": members(&["b"])}]}),
            expect: &["spec.shards"],
        },
        Case {
            what: "endpoint port 0",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "10.0.0.1:0"}]}]}),
            expect: &["endpoint must be host:port"],
        },
        Case {
            what: "endpoint without a host",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": ":6379"}]}]}),
            expect: &["endpoint must be host:port"],
        },
        Case {
            what: "endpoint with a path",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "10.0.0.1:6379/0"}]}]}),
            expect: &["endpoint must be host:port"],
        },
        Case {
            what: "endpoint with a scheme",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "redis://10.0.0.1:6379"}]}]}),
            expect: &["endpoint must be host:port"],
        },
        Case {
            what: "endpoint longer than any host:port",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": format!("{}:6379", "a".repeat(300))}]}]}),
            expect: &["endpoint"],
        },
        Case {
            what: "priority beyond int32",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "10.0.0.1:6379", "priority": 4294967296_i64}]}]}),
            expect: &["priority"],
        },
        Case {
            what: "priority as a string",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "10.0.0.1:6379", "priority": "high"}]}]}),
            expect: &["priority"],
        },
        Case {
            what: "member name of 64 characters",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a".repeat(64), "endpoint": "10.0.0.1:6379"}]}]}),
            expect: &["name"],
        },
        Case {
            what: "clientAddress that is neither an IP nor a DNS name",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "10.0.0.1:6379", "clientAddress": "not an ip!"}]}]}),
            expect: &["clientAddress must be an IP address"],
        },
        Case {
            what: "failure threshold above 100",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"failureThreshold": 101}})),
            expect: &["spec.failover.failureThreshold"],
        },
        Case {
            what: "negative failure threshold",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"failureThreshold": -3}})),
            expect: &["spec.failover.failureThreshold"],
        },
        Case {
            what: "heartbeat of 1ns (a busy loop)",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"heartbeatInterval": "1ns"}})),
            expect: &["heartbeatInterval must be at least 100ms"],
        },
        Case {
            what: "heartbeat of 0s",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"heartbeatInterval": "0s"}})),
            expect: &["heartbeatInterval must be at least 100ms"],
        },
        Case {
            what: "step timeout of 1ms",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"stepTimeout": "1ms"}})),
            expect: &["stepTimeout must be at least 200ms"],
        },
        Case {
            what: "negative duration",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"failoverDelay": "-5s"}})),
            expect: &["spec.failover.failoverDelay"],
        },
        Case {
            what: "duration as a number",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"failoverDelay": 5}})),
            expect: &["spec.failover.failoverDelay"],
        },
        Case {
            what: "duration with an exponent",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"heartbeatInterval": "1e3ms"}})),
            expect: &["spec.failover.heartbeatInterval"],
        },
        Case {
            what: "negative maxLagOnFailover",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"maxLagOnFailover": -1}})),
            expect: &["spec.failover.maxLagOnFailover"],
        },
        Case {
            what: "unknown onTimeout",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"onTimeout": "Maybe"}})),
            expect: &["spec.failover.onTimeout", "Unsupported value"],
        },
        Case {
            what: "negative minReplicasToWrite",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"fencing": {"minReplicasToWrite": -1}}})),
            expect: &["minReplicasToWrite"],
        },
        Case {
            what: "minReplicasToWrite of 1000",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"fencing": {"minReplicasToWrite": 1000}}})),
            expect: &["minReplicasToWrite"],
        },
        Case {
            what: "maxReplicaLagSeconds 0",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"fencing": {"maxReplicaLagSeconds": 0}}})),
            expect: &["maxReplicaLagSeconds"],
        },
        Case {
            what: "unknown replicasDown",
            kind: "HaCluster",
            spec: redis(json!({"failover": {"fencing": {"replicasDown": "Sometimes"}}})),
            expect: &["replicasDown", "Unsupported value"],
        },
        Case {
            what: "primaryService that is not a DNS label",
            kind: "HaCluster",
            spec: redis(json!({"routing": {"primaryService": "Bad_Name"}})),
            expect: &["spec.routing.primaryService"],
        },
        Case {
            what: "replicasService that is not a DNS label",
            kind: "HaCluster",
            spec: redis(json!({"routing": {"replicasService": "x.y"}})),
            expect: &["spec.routing.replicasService"],
        },
        Case {
            what: "one name for the primary and replicas Services",
            kind: "HaCluster",
            spec: redis(json!({"routing": {"primaryService": "db", "replicasService": "db"}})),
            expect: &["spec.routing"],
        },
        Case {
            what: "ACL CIDR with a prefix of 33",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "selector": {"matchLabels": {"app": "r"}, "port": 6379}, "acls": ["10.0.0.0/33"]}),
            expect: &["acls"],
        },
        Case {
            what: "ACL IPv6 CIDR with a prefix of 129",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "selector": {"matchLabels": {"app": "r"}, "port": 6379}, "acls": ["fd00::/129"]}),
            expect: &["acls"],
        },
        Case {
            what: "pod port 0",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "selector": {"matchLabels": {"app": "r"}, "port": 0}}),
            expect: &["spec.selector.port"],
        },
        Case {
            what: "pod port 70000",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "selector": {"matchLabels": {"app": "r"}, "port": 70000}}),
            expect: &["spec.selector.port"],
        },
        Case {
            what: "pod selector label key that is not a label key",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "selector": {"matchLabels": {"bad key!": "r"}, "port": 6379}}),
            expect: &["spec.selector.matchLabels"],
        },
        Case {
            what: "pod selector label value that is not a label value",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "selector": {"matchLabels": {"app": "a b"}, "port": 6379}}),
            expect: &["spec.selector.matchLabels"],
        },
        Case {
            what: "secretRef without a name",
            kind: "HaCluster",
            spec: redis(json!({"secretRef": {"key": "password"}})),
            expect: &["spec.secretRef.name"],
        },
        Case {
            what: "secretRef with an empty name",
            kind: "HaCluster",
            spec: redis(json!({"secretRef": {"name": ""}})),
            expect: &["spec.secretRef.name"],
        },
        Case {
            what: "standby naming both a cluster and an endpoint",
            kind: "HaCluster",
            spec: redis(json!({"standby": {"cluster": "up", "primaryEndpoint": "10.0.0.9:6379"}})),
            expect: &["standby needs exactly one of cluster"],
        },
        Case {
            what: "standby naming an endpoint and endpoints by shard",
            kind: "HaCluster",
            spec: redis(
                json!({"standby": {"primaryEndpoint": "10.0.0.9:6379", "shardEndpoints": [{"shard": "s0", "endpoint": "10.0.0.9:6379"}]}}),
            ),
            expect: &["standby needs exactly one of cluster"],
        },
        Case {
            what: "standby shardEndpoints with a bad endpoint",
            kind: "HaCluster",
            spec: redis(json!({"standby": {"shardEndpoints": [{"shard": "s0", "endpoint": "nowhere"}]}})),
            expect: &["endpoint must be host:port"],
        },
        Case {
            what: "standby naming neither",
            kind: "HaCluster",
            spec: redis(json!({"standby": {}})),
            expect: &["standby needs exactly one of cluster"],
        },
        Case {
            what: "standby primaryEndpoint with port 99999",
            kind: "HaCluster",
            spec: redis(json!({"standby": {"primaryEndpoint": "10.0.0.9:99999"}})),
            expect: &["primaryEndpoint must be host:port"],
        },
        Case {
            what: "redirect restarting an unknown workload kind",
            kind: "HaCluster",
            spec: json!({"engine": "agent", "shards": [{"name": "s0", "members": members(&["a"])}], "redirect": {"configMap": "c", "key": "k", "restart": [{"kind": "CronJob", "name": "x"}]}}),
            expect: &["kind", "Unsupported value"],
        },
        Case {
            what: "engine as an empty string",
            kind: "HaCluster",
            spec: redis(json!({"engine": ""})),
            expect: &["spec.engine"],
        },
        Case {
            what: "paused as a string",
            kind: "HaCluster",
            spec: redis(json!({"paused": "yes"})),
            expect: &["spec.paused"],
        },
        Case {
            what: "101 shards",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": (0..101).map(|i| json!({"name": format!("s{i}"), "members": [{"name": format!("m{i}"), "endpoint": "10.0.0.1:6379"}]})).collect::<Vec<_>>()}),
            expect: &["spec.shards"],
        },
        Case {
            what: "a shard of 101 members",
            kind: "HaCluster",
            spec: json!({"engine": "redis", "shards": [{"name": "s0", "members": (0..101).map(|i| json!({"name": format!("m{i}"), "endpoint": "10.0.0.1:6379"})).collect::<Vec<_>>()}]}),
            expect: &["members"],
        },
        Case {
            what: "65 items in one request",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": (0..65).map(|i| json!({"cluster": format!("c{i}")})).collect::<Vec<_>>()}),
            expect: &["spec.items"],
        },
        Case {
            what: "an item with an empty cluster name",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": [{"cluster": ""}]}),
            expect: &["spec.items[0].cluster"],
        },
        Case {
            what: "an item with an empty shard",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": [{"cluster": "c", "shard": ""}]}),
            expect: &["spec.items[0].shard"],
        },
        Case {
            what: "serviceName that is not a DNS label",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": [{"cluster": "c", "serviceName": "Bad!"}]}),
            expect: &["serviceName"],
        },
        Case {
            what: "a timeout beyond a day",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": [{"cluster": "c"}], "timeoutSeconds": 86401}),
            expect: &["spec.timeoutSeconds"],
        },
        Case {
            what: "unknown onTimeout of a request",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": [{"cluster": "c"}], "onTimeout": "Later"}),
            expect: &["spec.onTimeout", "Unsupported value"],
        },
        Case {
            what: "dryRun as a string",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": [{"cluster": "c"}], "dryRun": "yes"}),
            expect: &["spec.dryRun"],
        },
        Case {
            what: "a request without a type",
            kind: "FailoverRequest",
            spec: json!({"items": [{"cluster": "c"}]}),
            expect: &["spec.type"],
        },
        Case {
            what: "a candidate that is the expected primary",
            kind: "FailoverRequest",
            spec: json!({"type": "Switchover", "items": [{"cluster": "c", "candidate": "a", "expectedPrimary": "a"}]}),
            expect: &["candidate"],
        },
        Case {
            what: "a request without a spec",
            kind: "FailoverRequest",
            spec: Value::Null,
            expect: &["spec"],
        },
        Case {
            what: "a negative ShardFailover timeout",
            kind: "ShardFailover",
            spec: json!({"shardUids": ["a"], "timeoutSeconds": -5}),
            expect: &["spec.timeoutSeconds"],
        },
        Case {
            what: "an empty shard uid",
            kind: "ShardFailover",
            spec: json!({"shardUids": [""]}),
            expect: &["shardUids"],
        },
        Case {
            what: "a dead uid that is not in shardUids",
            kind: "ShardFailover",
            spec: json!({"shardUids": ["a"], "deadUids": ["b"]}),
            expect: &["deadUids"],
        },
        Case {
            what: "an empty dead node name",
            kind: "ShardFailover",
            spec: json!({"shardUids": ["a"], "deadNodes": [""]}),
            expect: &["deadNodes"],
        },
        Case {
            what: "1000 shard uids",
            kind: "ShardFailover",
            spec: json!({"shardUids": (0..1000).map(|i| format!("m{i}")).collect::<Vec<_>>()}),
            expect: &["shardUids"],
        },
        Case {
            what: "a site namespace that is not a DNS label",
            kind: "ProtectionGroup",
            spec: json!({"sites": {"source": {"namespace": "East!"}, "target": {"namespace": "west"}}}),
            expect: &["spec.sites.source.namespace"],
        },
        Case {
            what: "a pair with an empty source",
            kind: "ProtectionGroup",
            spec: json!({"sites": sites, "pairs": [{"source": "", "target": "b"}]}),
            expect: &["source"],
        },
        Case {
            what: "a ProtectionGroup without a spec",
            kind: "ProtectionGroup",
            spec: Value::Null,
            expect: &["spec"],
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
            Ok(_) => {
                failures.push(format!("{}: accepted, expected a rejection", case.what));
                let _ = api.delete(&name, &Default::default()).await;
                continue;
            }
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

/// Edits that would lose data or orphan pods are refused by the API server; growing storage
/// and other edits pass.
#[tokio::test]
async fn instances_refuse_shrinking_storage_and_switching_membership() {
    let client = support::client().await;
    let ns = support::namespace(&client, "instances-edit").await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource("HaCluster"));
    let spec = instances(json!({"storage": {"size": "2Gi", "storageClassName": "fast"}}));
    api.create(&PostParams::default(), &object("HaCluster", "db", spec)).await.expect("valid create");
    for (what, change, expect) in [
        (
            "shrinking storage",
            json!({"spec": {"instances": {"storage": {"size": "1Gi"}}}}),
            "spec.instances.storage.size can only grow",
        ),
        (
            "another storage class",
            json!({"spec": {"instances": {"storage": {"storageClassName": "slow"}}}}),
            "storageClassName cannot change",
        ),
        (
            "dropping storage",
            json!({"spec": {"instances": {"storage": null}}}),
            "spec.instances.storage cannot be added or removed",
        ),
        (
            "switching to static members",
            json!({"spec": {"instances": null, "shards": [{"name": "s0", "members": members(&["a"])}]}}),
            "spec.instances cannot be added to or removed from an existing cluster",
        ),
    ] {
        let err = api.patch("db", &PatchParams::default(), &Patch::Merge(&change)).await.expect_err(what);
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{what}: {}", s.message);
                assert!(s.message.contains(expect), "{what}: {}", s.message);
            }
            other => panic!("{what}: unexpected error {other}"),
        }
        let stored = api.get("db").await.unwrap();
        assert_eq!(stored.data["spec"]["instances"]["storage"]["size"], "2Gi", "{what}: nothing stored");
    }
    let grow = json!({"spec": {"instances": {"storage": {"size": "3Gi"}, "members": 5}}});
    api.patch("db", &PatchParams::default(), &Patch::Merge(&grow)).await.expect("growing is allowed");
}
