//! `HaCluster`: one replicated service whose member roles Understudy owns.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::{GoDuration, SecretKeyRef, cel_min_duration, conditions_schema};

/// Desired state of a replicated service: its members, how failures are
/// handled and where clients are routed.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "understudy.dev",
    version = "v1alpha1",
    kind = "HaCluster",
    plural = "haclusters",
    singular = "hacluster",
    shortname = "hac",
    category = "understudy",
    namespaced,
    status = "HaClusterStatus",
    derive = "PartialEq",
    doc = "A replicated stateful service whose member roles (primary, replica), replication and client routing Understudy owns.",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Primary",
        type_ = "string",
        json_path = ".status.primary",
        description = "Primary of the first shard"
    ),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.shards[0].epoch", priority = 1),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.healthyMembers",
        description = "Healthy members / all members"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.shards), has(self.selector), has(self.instances)].filter(x, x).size() == 1",
        "message": "set exactly one of spec.shards (static members), spec.selector (pods run by something else) or spec.instances (pods the operator runs)"
    },
    {
        "rule": "has(self.instances) == has(oldSelf.instances)",
        "message": "spec.instances cannot be added to or removed from an existing cluster (its pods would be orphaned or adopted); create a new HaCluster"
    },
    {
        "rule": "!has(self.instances) || !(self.engine in ['Agent', 'agent'])",
        "message": "spec.instances runs Redis and Mysql members; Agent members are run by something else"
    },
    {
        "rule": "!has(self.instances) || !(self.engine in ['Mysql', 'mysql']) || has(self.secretRef)",
        "message": "spec.instances with engine Mysql needs spec.secretRef: every member creates the operator's account (the Secret's username, default root, and password) when it starts"
    },
    {
        "rule": "!has(self.instances) || !(self.engine in ['Mysql', 'mysql']) || !has(self.instances.parameters) || self.instances.parameters.all(k, !(k in ['datadir', 'socket', 'pid-file', 'init-file', 'server-id', 'read-only', 'super-read-only', 'log-bin', 'log-basename', 'log-slave-updates', 'binlog-format', 'gtid-strict-mode', 'gtid-domain-id', 'init-rpl-role', 'rpl-semi-sync-slave-enabled', 'rpl-semi-sync-master-enabled', 'rpl-semi-sync-master-timeout', 'sync-binlog', 'innodb-flush-log-at-trx-commit', 'bind-address', 'skip-networking', 'skip-grant-tables', 'user', 'defaults-file', 'defaults-extra-file', 'no-defaults']))",
        "message": "spec.instances.parameters of a Mysql cluster cannot set what the operator relies on: data directory, socket, init file, server-id, read-only, the binary log and GTID mode, semi-synchronous replication, durable commits (sync-binlog, innodb-flush-log-at-trx-commit), networking, grants, defaults files"
    },
    {
        "rule": "!has(self.shards) || self.shards.map(s, s.members.map(m, m.name)).flatten().distinct().size() == self.shards.map(s, size(s.members)).sum()",
        "message": "member names must be unique across all shards of the cluster"
    },
    {
        "rule": "!has(self.redirect) || self.engine in ['Agent', 'agent']",
        "message": "spec.redirect is only used with engine Agent"
    }
]))]
pub struct HaClusterSpec {
    /// How the operator talks to members: `Redis` (RESP), `Mysql` (MariaDB and MySQL with
    /// GTIDs) or `Agent` (the HTTP HA-status protocol spoken by the Understudy reference
    /// agent).
    pub engine: Engine,

    /// Secret holding the credentials: for `Redis` the key `password` (and an
    /// optional `username`), for `Mysql` `username` (default `root`; the members also
    /// replicate with this account) and `password`, for `Agent` the key `token`. `key` overrides the
    /// password/token key name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// Static membership: replication groups and their members. Mutually
    /// exclusive with `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub shards: Option<Vec<ShardSpec>>,

    /// Pod membership: every pod matching `matchLabels` is a member. Mutually
    /// exclusive with `shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PodMembership>,

    /// Members the operator creates and runs: pods and volumes it owns, added, removed,
    /// restarted and upgraded in an order that keeps a primary serving. Mutually exclusive
    /// with `shards` and `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<super::instances::Instances>,

    /// When and how the operator fails over by itself.
    #[serde(default)]
    pub failover: FailoverPolicy,

    /// Services kept pointing at the primary and the replicas.
    #[serde(default)]
    pub routing: Routing,

    /// For `Agent` engines: where replicas learn the new main and which
    /// workloads to restart after a role change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,

    /// Client CIDRs allowed to reach the members; rendered as a NetworkPolicy
    /// for pod members. No entry means access is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(c, isCIDR(c))",
        "message": "every acls entry must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"
    }]))]
    pub acls: Option<Vec<String>>,

    /// Maintenance mode: observe and report, never change a role.
    #[serde(default)]
    pub paused: bool,

    /// Replicate the whole cluster from another cluster's primary (disaster
    /// recovery), set by hand. A ProtectionGroup does not use this field: it publishes
    /// the relation in status.protection, which takes precedence. A FailoverRequest that
    /// fails this cluster over to primary ends the relation without editing it: it records
    /// the release in status.standbyReleased, which holds while this field is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<Standby>,
}

/// How the operator talks to the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::resources::shared::also_earlier_spelling)]
pub enum Engine {
    /// Redis servers, driven over RESP (`ROLE`, `INFO replication`, `REPLICAOF`).
    #[serde(alias = "redis")]
    Redis,
    /// Nodes exposing the HTTP HA-status protocol (`/rest/ha/status`).
    #[serde(alias = "agent")]
    Agent,
    /// MariaDB or MySQL servers with GTID replication (the dialect is read from
    /// `@@version`): `read_only` and killed client sessions to fence, GTID positions to
    /// compare, `CHANGE MASTER TO … MASTER_USE_GTID` / `SOURCE_AUTO_POSITION` to follow.
    #[serde(alias = "mysql")]
    Mysql,
}

impl Engine {
    /// The key of the cluster's Secret holding its credential when `secretRef.key` is unset:
    /// `token` for agents, `password` otherwise.
    pub fn secret_key(self) -> &'static str {
        match self {
            Engine::Redis | Engine::Mysql => "password",
            Engine::Agent => "token",
        }
    }
}

/// One replication group: a primary (or none while failing over) and its replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardSpec {
    /// Shard name, unique in the cluster.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Members of the shard.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub members: Vec<MemberSpec>,
}

/// CEL: `host:port` (or `[ipv6]:port`) with a port from 1 to 65535.
const ENDPOINT_RULE: &str = "self.matches('^(\\\\[[0-9a-fA-F:.]+\\\\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}$') && int(self.substring(self.lastIndexOf(':') + 1)) > 0 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535";

/// A statically declared member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberSpec {
    /// The member's uid: unique in the namespace (ShardFailover names members by it).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// `host:port` (or `[ipv6]:port`) where the member's engine listens.
    #[schemars(length(min = 3, max = 261))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": ENDPOINT_RULE,
        "message": "endpoint must be host:port with a port from 1 to 65535, for example 10.0.0.7:6379 or redis-0.redis:6379"
    }]))]
    pub endpoint: String,
    /// Address clients are routed to through the cluster's Services, when it differs from
    /// the endpoint's host (the operator probes `endpoint`, clients connect to
    /// `clientAddress:<endpoint port>`). An IP, or a DNS name with at least one dot.
    /// Kubernetes cannot route to loopback or link-local endpoint hosts; those members are
    /// left out of the Services unless this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "isIP(self) || self.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\\\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": "clientAddress must be an IP address or a DNS name with at least one dot"
    }]))]
    pub client_address: Option<String>,
    /// Failure domain (Kubernetes node or host) the member runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
    /// Election priority: higher wins; 0 means never promote this member.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000000))]
    pub priority: i32,
}

fn default_priority() -> i32 {
    100
}

/// Pod membership by label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMembership {
    /// Labels a pod must carry to be a member.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "size(self) > 0",
        "message": "selector.matchLabels must name at least one label; an empty selector would match every pod"
    }, {
        "rule": "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",
        "message": "selector.matchLabels keys must be label keys (an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.')"
    }, {
        "rule": "self.all(k, self[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$'))",
        "message": "selector.matchLabels values must be label values (up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
    }], "maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub match_labels: BTreeMap<String, String>,
    /// Label whose value names a pod's shard; without it every pod is in shard `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_label: Option<String>,
    /// Port the engine listens on; the endpoint is `<pod IP>:<port>`.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Pod annotation whose value overrides the pod IP as the member's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_annotation: Option<String>,
    /// Pod annotation holding the member's election priority (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_annotation: Option<String>,
}

/// Whether the operator fails over by itself, and how cautiously.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": cel_min_duration("heartbeatInterval", "100ms"), "message": "heartbeatInterval must be at least 100ms"},
    {"rule": cel_min_duration("stepTimeout", "200ms"), "message": "stepTimeout must be at least 200ms"}
]))]
pub struct FailoverPolicy {
    /// `Automatic`: fail over when the primary is down. `Manual`: only
    /// FailoverRequest / ShardFailover objects change roles.
    #[serde(default)]
    pub mode: FailoverMode,
    /// How often each member is probed (100ms to 24h).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: GoDuration,
    /// Consecutive failed probes after which a member is down.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// Extra time to wait after the primary is declared down before failing over.
    #[serde(default = "zero")]
    pub failover_delay: GoDuration,
    /// Agent engine: the self-fencing lease sent to every agent with each request. An agent
    /// MAIN that hears nothing for longer demotes itself, so an unreachable main has stopped
    /// before another is promoted. Must be at most 0.9 × heartbeatInterval × (failureThreshold
    /// − 1) plus failoverDelay less one heartbeatInterval, and at least 2 × heartbeatInterval (otherwise `Ready=False
    /// InvalidAgentLease` and nothing is touched). Unset: no lease. An operator outage
    /// longer than the lease demotes every agent main.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_lease: Option<GoDuration>,
    /// Never promote a replica whose replication offset is further behind the
    /// last known primary offset than this (bytes for Redis, transactions for
    /// Mysql). 0: only a fully caught-up replica may be promoted.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_lag_on_failover: i64,
    /// How long a failover step (fence, promote, redirect) may take (200ms to 24h).
    #[serde(default = "default_step_timeout")]
    pub step_timeout: GoDuration,
    /// What to do when the old primary does not answer during a failover and
    /// cannot be shown to have stopped taking writes (it is not self-fencing and
    /// no pod could be deleted): `Abort` leaves the shard without a primary and
    /// reports it (condition reason FenceTimedOut) until the old primary answers
    /// again or a FailoverRequest forces a failover; `Force` promotes anyway
    /// once the old primary is out of routing.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// How an old primary is kept from taking writes after it lost its role.
    #[serde(default)]
    pub fencing: Fencing,
}

/// How an old primary is kept from acknowledging writes once another member took over.
///
/// Redis self-fencing: the operator sets `min-replicas-to-write` and `min-replicas-max-lag`
/// on the members, so a primary that fewer than `minReplicasToWrite` replicas acknowledged
/// within `maxReplicaLagSeconds` refuses writes (`NOREPLICAS`) by itself: a primary that was
/// frozen or cut off while another was promoted acknowledges no write once its replicas
/// follow the new one. `replicasDown` says what happens while the replicas are down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fencing {
    /// Replicas that must acknowledge the primary for it to take writes (capped at the
    /// number of other members of the shard; a one-member shard is never fenced). 0 turns
    /// self-fencing off.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 16))]
    pub min_replicas_to_write: i32,
    /// While replicas are down: `KeepWriting` (default) counts only the members that answer
    /// the operator, so a primary whose replicas are all down keeps taking writes (a
    /// two-member cluster takes writes after a failover), and a newly promoted primary takes
    /// writes from its promotion, fenced again once a replica has re-attached (the next
    /// heartbeat); `PauseWrites` counts every member,
    /// so writes pause until enough replicas are back — the stricter choice, which also
    /// covers a primary cut off right after its last replica returned.
    #[serde(default)]
    pub replicas_down: ReplicasDown,
    /// A replica counts while its last acknowledgement is at most this old. Keep it plus 2 s
    /// below `heartbeatInterval × failureThreshold + failoverDelay` so that a primary cut off
    /// from its replicas has stopped taking writes before another is promoted.
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_replica_lag_seconds: i32,
    /// Pod members: when the old primary does not answer during a failover, delete its pod
    /// with no grace period before promoting (what MHA's shutdown script does to a host).
    #[serde(default = "yes")]
    pub delete_unreachable_pods: bool,
}

impl Default for Fencing {
    fn default() -> Self {
        Self {
            min_replicas_to_write: one(),
            replicas_down: ReplicasDown::default(),
            max_replica_lag_seconds: two(),
            delete_unreachable_pods: true,
        }
    }
}

/// What self-fencing does while replicas are down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReplicasDown {
    /// Count only the replicas that answer: a primary alone keeps taking writes.
    #[default]
    KeepWriting,
    /// Count every replica: writes pause until enough of them are back.
    PauseWrites,
}

fn one() -> i32 {
    1
}
fn two() -> i32 {
    2
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self {
            mode: FailoverMode::default(),
            heartbeat_interval: default_heartbeat(),
            failure_threshold: default_failure_threshold(),
            failover_delay: zero(),
            agent_lease: None,
            max_lag_on_failover: 0,
            step_timeout: default_step_timeout(),
            on_timeout: OnTimeout::default(),
            fencing: Fencing::default(),
        }
    }
}

fn default_heartbeat() -> GoDuration {
    GoDuration::from_secs(1)
}
fn default_failure_threshold() -> i32 {
    3
}
fn zero() -> GoDuration {
    GoDuration::from_secs(0)
}
fn default_step_timeout() -> GoDuration {
    GoDuration::from_secs(10)
}

/// Automatic or manual failover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::resources::shared::also_earlier_spelling)]
pub enum FailoverMode {
    #[default]
    #[serde(alias = "automatic")]
    Automatic,
    #[serde(alias = "manual")]
    Manual,
}

/// What to do when a step's deadline passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OnTimeout {
    /// Stop and report; roll back what can be rolled back.
    #[default]
    Abort,
    /// Carry on with the next step when it is still safe to.
    Force,
}

/// Client routing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.primaryService) || !has(self.replicasService) || self.primaryService != self.replicasService",
    "message": "primaryService and replicasService must be different Services"
}]))]
pub struct Routing {
    /// Manage the routing Services at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Name of the Service pointing at the primary (default `<cluster>-primary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub primary_service: Option<String>,
    /// Name of the Service pointing at the replicas (default `<cluster>-replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub replicas_service: Option<String>,
    /// The master name Sentinel-aware clients ask the operator's discovery endpoint for
    /// (`understudy run --sentinel-listen`), e.g. the `mymaster` an application is already
    /// configured with. Default `<namespace>/<cluster>`; a cluster of several shards serves
    /// one master per shard, `<masterName>-<shard>` (default `<namespace>/<cluster>/<shard>`).
    /// A name claimed by two served clusters is served for neither (their Routed condition
    /// says so): a client is never sent to another cluster's primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:-]*[A-Za-z0-9])?$"))]
    pub master_name: Option<String>,
}

impl Default for Routing {
    fn default() -> Self {
        Self { enabled: true, primary_service: None, replicas_service: None, master_name: None }
    }
}

fn yes() -> bool {
    true
}

/// Agent engines: how replicas learn the new main. The ConfigMap holds `<key>.<shard>` = the
/// main host of each shard, and `<key>` = the first shard's main host (for a single-shard
/// cluster: its main). It is re-asserted every heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// ConfigMap (same namespace) the operator writes the new main's host into.
    #[schemars(length(min = 1, max = 253))]
    pub config_map: String,
    /// Key in the ConfigMap: `<key>` names the first shard's main, `<key>.<shard>` each
    /// shard's.
    #[serde(default = "default_redirect_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Workloads restarted (rollout annotation) after the main of their shard changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restart: Vec<WorkloadRef>,
}

fn default_redirect_key() -> String {
    "com.systar.electron.host".to_string()
}

/// A workload to restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The shard whose main this workload consumes: it restarts only when that shard's main
    /// changes. Unset: when any shard's main changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub shard: Option<String>,
}

/// Kinds of workload that can be restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// Where a standby cluster replicates from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.cluster) ? 1 : 0) + (has(self.primaryEndpoint) ? 1 : 0) + (has(self.shardEndpoints) ? 1 : 0) == 1",
    "message": "standby needs exactly one of cluster (an HaCluster), primaryEndpoint (host:port) or shardEndpoints (one host:port per shard)"
}]))]
pub struct Standby {
    /// HaCluster whose primary this cluster follows: each shard's leader follows the primary
    /// of the upstream's shard of the same name (one shard on each side: that one, whatever
    /// its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster: Option<String>,
    /// Namespace of `cluster` (default: this cluster's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// A fixed upstream `host:port`, for an upstream outside this control plane (one-shard
    /// clusters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 261))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": ENDPOINT_RULE,
        "message": "primaryEndpoint must be host:port with a port from 1 to 65535, for example 10.0.0.7:6379"
    }]))]
    pub primary_endpoint: Option<String>,
    /// Fixed upstream `host:port`s by shard, for an upstream of several shards outside this
    /// control plane: each shard's leader follows the endpoint of the shard of its name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64))]
    pub shard_endpoints: Vec<ShardEndpoint>,
}

/// One shard's upstream address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardEndpoint {
    #[schemars(length(min = 1, max = 63))]
    pub shard: String,
    #[schemars(length(min = 3, max = 261))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": ENDPOINT_RULE,
        "message": "endpoint must be host:port with a port from 1 to 65535, for example 10.0.0.7:6379"
    }]))]
    pub endpoint: String,
}

/// Observed state of an HaCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HaClusterStatus {
    /// Coarse summary: Pending, Bootstrapping, Healthy, Degraded, FailingOver, Paused, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Degraded, FailingOver, Paused, SpecValid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Primary of the first shard (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// `healthy/total` members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_members: Option<String>,
    /// Per-shard roles, epoch and operation lock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub shards: Vec<ShardStatus>,
    /// The most recent role change by failover or switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// Set by the ProtectionGroup that protects this cluster (never by hand, and never
    /// touched by a tool that applies the spec): which group, and what the cluster follows
    /// while it is its pair's DR side. Takes precedence over spec.standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<Protection>,
    /// Set by the FailoverRequest that failed this standby cluster over to primary: the
    /// spec.standby it ended. While spec.standby is unchanged the cluster is not a standby
    /// (re-applying the same manifest does not undo the failover); a different spec.standby
    /// makes it a standby again. Written through the resourceVersion-guarded path only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_released: Option<StandbyRelease>,
    /// Set by the FailoverRequest that failed a standby of this cluster over to primary
    /// while this cluster was lost: should one of that standby's members act as a primary
    /// when this cluster's members return, this cluster follows it and nothing here is made
    /// writable (checked before every promotion and on every heartbeat). Cleared by the
    /// monitor once spec.standby or a ProtectionGroup gives the cluster a relation again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Supersession>,
    /// Standby leaders this cluster's monitor found acting as a primary and made follow the
    /// upstream (the other site's primary after a forced failover there, or a relation
    /// given to a cluster that was production): where each stood when it yielded. What it
    /// held beyond the other site's promotion point is lost; the group that forced the
    /// failover reads it into its record. The latest per shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub yielded: Vec<Yielded>,
    /// Members the operator runs (spec.instances): which pods are members, and how far a
    /// change has rolled. Written by the instances controller only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<super::instances::InstancesStatus>,
}

/// A standby leader that acted as a primary when it was made to follow the upstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Yielded {
    #[schemars(length(min = 1, max = 63))]
    pub shard: String,
    #[schemars(length(min = 1, max = 253))]
    pub member: String,
    /// Its replication position (offset) when it yielded: everything it had written.
    pub offset: i64,
    pub at: Time,
}

/// The standby relation a ProtectionGroup keeps for one of its clusters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Protection {
    /// `namespace/name` of the group, in the control plane where it lives.
    #[schemars(length(min = 1, max = 317))]
    pub group: String,
    /// What the cluster follows while it is the DR side; absent on the production side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<Standby>,
    /// On the production side: the endpoints of the other site's members. Should one of them
    /// ever act as a primary, the other site was made production by a forced failover while
    /// this one was cut off: this cluster then follows it and nothing here is made writable
    /// (the monitor checks before every promotion and on every heartbeat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub yield_to: Vec<String>,
    /// On the production side of a cluster of more than one shard: the other site's members
    /// shard by shard (`yieldTo` lists them all). Each shard holds its own part of the data,
    /// so a shard yields only to a primary of its counterpart, and follows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub yield_to_shards: Vec<ShardYield>,
    /// The group stopped protecting this DR cluster (policy `ReadOnly`): it replicates from
    /// nothing and nothing in it is made writable. Remove `status.protection` to make it an
    /// ordinary cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
    /// On the production side: renewed every few seconds while the group reaches this
    /// cluster and vouches that the other site is not production (protected, no forced
    /// failover). While the monitor sees it renewed (its own clock: it watches the value
    /// change, it does not compare times), a member of `yieldTo` acting as a primary is not
    /// followed on sight — the group, in contact, decides (a DR cluster recreated and
    /// electing its own primary, a hand-made promotion there, must not demote production).
    /// Cleared by a forced failover, or left to go stale when the group loses contact: then
    /// `yieldTo` is followed as soon as one acts as a primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_at: Option<Time>,
}

impl Protection {
    /// The relation itself, without the group's contact renewal.
    pub fn relation(&self) -> Self {
        Self { contact_at: None, ..self.clone() }
    }
}

/// The other site's members of one shard, which that shard of a production cluster yields to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardYield {
    #[schemars(length(min = 1, max = 63))]
    pub shard: String,
    #[schemars(length(max = 64))]
    pub members: Vec<String>,
}

/// The end of a standby relation, made by a failover to primary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StandbyRelease {
    /// The operation that ended it: `FailoverRequest <namespace>/<name>`.
    #[schemars(length(min = 1, max = 400))]
    pub by: String,
    /// UID of that operation (its own record is the only one it rolls back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub uid: Option<String>,
    /// When it was ended.
    pub at: Time,
    /// The spec.standby that was ended: the old upstream, to be fenced when it returns.
    #[schemars(schema_with = "super::shared::observed_schema::<Standby>")]
    pub standby: Standby,
}

/// Another cluster was made production in this cluster's place (see
/// `HaClusterStatus::superseded_by`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Supersession {
    /// The operation that made it production: `FailoverRequest <namespace>/<name>`.
    #[schemars(length(min = 1, max = 400))]
    pub by: String,
    /// UID of that operation (its own record is the only one it rolls back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub uid: Option<String>,
    /// When it was written.
    pub at: Time,
    /// `namespace/name` of the HaCluster made production.
    #[schemars(length(min = 1, max = 317))]
    pub cluster: String,
    /// Its members' endpoints when it was written: watched while that cluster cannot be read
    /// or no longer exists (deleting it stops none of its servers); while it exists, its
    /// current ones are watched instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub members: Vec<String>,
}

impl HaCluster {
    /// How pod members are found: `spec.selector`, or for `spec.instances` the label the
    /// operator puts on the pods it runs. None for static members.
    pub fn pod_membership(&self) -> Option<std::borrow::Cow<'_, PodMembership>> {
        if let Some(sel) = &self.spec.selector {
            return Some(std::borrow::Cow::Borrowed(sel));
        }
        let instances = self.spec.instances.as_ref()?;
        let name = self.metadata.name.clone().unwrap_or_default();
        Some(std::borrow::Cow::Owned(PodMembership {
            match_labels: BTreeMap::from([(super::instances::CLUSTER_LABEL.to_owned(), name)]),
            shard_label: None,
            port: instances.port(self.spec.engine),
            address_annotation: None,
            priority_annotation: None,
        }))
    }

    /// Why an operation that promotes (a ShardFailover, a FailoverRequest item) is refused at
    /// once for this cluster, nothing touched: it is paused (`spec.paused`), and its monitor
    /// carries out no promotion, so the request would only wait for its deadline.
    pub fn paused_refusal(&self) -> Option<String> {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        self.spec.paused.then(|| {
            format!(
                "HaCluster {name} is paused (spec.paused): it carries out no failover or switchover until it is resumed (kubectl understudy resume {name}); nothing touched"
            )
        })
    }

    /// Detached from its ProtectionGroup with policy `ReadOnly`: a standby of nothing.
    pub fn detached(&self) -> bool {
        self.status.as_ref().and_then(|s| s.protection.as_ref()).is_some_and(|p| p.detached)
    }

    /// The standby relation in force: the protecting group's (status.protection) when a
    /// group protects the cluster, otherwise spec.standby unless a failover to primary
    /// released exactly that relation (status.standbyReleased).
    pub fn standby(&self) -> Option<&Standby> {
        let status = self.status.as_ref();
        match status.and_then(|s| s.protection.as_ref()) {
            Some(p) => p.standby.as_ref(),
            None => {
                let released = status.and_then(|s| s.standby_released.as_ref()).map(|r| &r.standby);
                self.spec.standby.as_ref().filter(|s| released != Some(*s))
            }
        }
    }
}

/// Coarse cluster phase. For members the operator runs (`spec.instances`), a lifecycle
/// change under way shows here too (the `Progressing` condition says which member and why),
/// unless something more urgent does: a promotion, a failure, pausing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClusterPhase {
    Pending,
    Bootstrapping,
    Healthy,
    Degraded,
    FailingOver,
    Paused,
    Failed,
    /// Members are being created (seed: BUILD).
    Creating,
    AddingReplica,
    RemovingReplica,
    /// Members restart one at a time (seed: REBOOT).
    Restarting,
    /// Members move to a new image one at a time (seed: UPGRADING).
    Upgrading,
    /// Members get new resources, in place or restarted (seed: RESIZE).
    Resizing,
    Reconfiguring,
}

impl ClusterPhase {
    /// The phase of a lifecycle change, from the reason of `Progressing=True`.
    pub fn of_lifecycle(reason: &str) -> Option<Self> {
        Some(match reason {
            "Creating" => Self::Creating,
            "AddingReplica" => Self::AddingReplica,
            "RemovingReplica" => Self::RemovingReplica,
            "Restarting" => Self::Restarting,
            "Upgrading" => Self::Upgrading,
            "Resizing" => Self::Resizing,
            "Reconfiguring" => Self::Reconfiguring,
            _ => return None,
        })
    }
}

impl ShardStatus {
    /// The primary's replication offset as status last recorded it: its own, or — once it is
    /// lost and status keeps no offset for it — what each replica's recorded lag was measured
    /// against (offset + lag, the largest). None when status says neither.
    pub fn last_primary_offset(&self) -> Option<i64> {
        self.members
            .iter()
            .find(|m| Some(&m.name) == self.current_primary.as_ref())
            .and_then(|m| m.offset)
            .or_else(|| self.members.iter().filter_map(|m| Some(m.offset? + m.lag?)).max())
    }
}

impl HaClusterStatus {
    /// Mark a promotion as under way: the phase (Bootstrapping until every shard has had a
    /// primary, FailingOver after) and the FailingOver condition. The monitor derives the same
    /// from a held target, and the promotion writes it with its decision, so the monitor's
    /// next observed write has nothing to change and does not race the promotion's outcome.
    pub fn mark_promoting(&mut self, promoting: bool, generation: Option<i64>, now: &Time) {
        use super::shared::set_condition;
        use crate::core::vocabulary::{ConditionType, Reason};
        if promoting {
            let first = self.shards.iter().any(|s| s.current_primary.is_none());
            self.phase = Some(if first { ClusterPhase::Bootstrapping } else { ClusterPhase::FailingOver });
        }
        set_condition(
            &mut self.conditions,
            ConditionType::FailingOver,
            promoting,
            if promoting { Reason::Promoting } else { Reason::Idle },
            if promoting { "a promotion is in progress" } else { "no promotion in progress" },
            generation,
            now,
        );
    }
}

/// Observed state of one shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    pub name: String,
    /// Member currently acting as primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// Member the operator is making primary (differs from currentPrimary
    /// while a promotion is under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    /// Bumped on every promotion, written before the promotion is carried out.
    #[serde(default)]
    pub epoch: i64,
    /// The operation holding this shard's lock, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationLock>,
    /// For standby clusters: the upstream primary followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Members and their observed roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub members: Vec<MemberStatus>,
}

/// The holder of a shard's operation lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationLock {
    /// Kind of the holder: HaCluster (automatic failover), FailoverRequest,
    /// ShardFailover or ProtectionGroup.
    pub kind: String,
    /// Name of the holder object.
    pub name: String,
    /// Namespace of the holder object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// UID of the holder object, so that a lock whose holder is gone can be released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// When the lock was taken.
    pub acquired_at: Time,
    /// After this instant the lock is stale and may be broken.
    pub expires_at: Time,
    /// The recorded promotion is forced: the old primary is fenced at once instead of
    /// drained (a FailoverRequest of type Failover, or onTimeout: Force).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Members the operation declared dead (ShardFailover `deadUids`): not stopped, not
    /// drained, not demoted; only taken out of routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub dead_members: Vec<String>,
    /// Nodes the operation declared dead (ShardFailover `deadNodes`): members on them are
    /// neither drained nor promoted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub dead_nodes: Vec<String>,
}

/// Observed state of a member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Primary, Replica, Fenced or Unknown.
    pub role: Role,
    /// Answering probes (fewer than failureThreshold consecutive misses).
    #[serde(default)]
    pub healthy: bool,
    /// Last successful probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    /// Replication offset last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// How far behind the primary (offset difference) the member is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The member this one replicates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Last probe error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The member's pod is being deleted (drained node, eviction, `kubectl delete pod`): it is
    /// never promoted, is out of the replicas Service, and as the primary it is switched over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Transactions the member holds that the primary never had (MySQL family: errant
    /// GTIDs): it is kept out, read-only and not attached, until it is rebuilt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errant_transactions: Vec<String>,
}

/// A member's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::resources::shared::also_earlier_spelling)]
pub enum Role {
    #[serde(alias = "primary")]
    Primary,
    #[serde(alias = "replica")]
    Replica,
    #[serde(alias = "fenced")]
    Fenced,
    #[default]
    #[serde(alias = "unknown")]
    Unknown,
}

/// How far a failover's `lostOffset` can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LossAccounting {
    /// The old primary was drained before the promotion: nothing could be lost.
    Drained,
    /// A lower bound: writes the old primary took after its last probe are not known.
    AtLeast,
    /// The old primary returned and what it held beyond the promotion was counted.
    Measured,
}

/// A completed (or abandoned) role change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    pub shard: String,
    /// Old primary (absent at bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// New primary (absent if no replica could be promoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why: PrimaryDown, Switchover, ShardFailover, SiteFailover, ...
    pub reason: String,
    pub started_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Replication offset the new primary was behind the old one: data that may
    /// have been lost (0 for a clean switchover). First the old primary's last
    /// known offset; raised to what it really had once it is re-attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_offset: Option<i64>,
    /// How far `lostOffset` can be trusted: `Drained` (the old primary was drained first:
    /// nothing could be lost), `AtLeast` (the old primary's last offset the operator saw;
    /// what it took after that is not known — until it returns with its data, and never if
    /// it returns without), `Measured` (the old primary returned and what it held beyond
    /// the promotion was counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_accounting: Option<LossAccounting>,
    /// The new primary's replication offset right after it was promoted: what the old
    /// primary had beyond it when it was re-attached was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at_offset: Option<i64>,
    /// Shard epoch after the change.
    pub epoch: i64,
    /// When each step of the promotion ran: fence (drain or demote the old primary),
    /// promote, redirect (the other members follow the new primary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

/// One step of a promotion, as carried out by the cluster's monitor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// fence, promote or redirect.
    pub name: String,
    pub started_at: Time,
    pub finished_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby_of(cluster: &str) -> Standby {
        Standby {
            cluster: Some(cluster.into()),
            namespace: None,
            primary_endpoint: None,
            shard_endpoints: Vec::new(),
        }
    }

    fn with(spec: Option<Standby>, released: Option<Standby>, protection: Option<Protection>) -> HaCluster {
        let mut c: HaCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "dr"},
            "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "a:6379"}]}]}
        }))
        .expect("a valid HaCluster");
        c.spec.standby = spec;
        c.status = Some(HaClusterStatus {
            standby_released: released.map(|standby| StandbyRelease {
                by: "FailoverRequest ns/fr".into(),
                uid: Some("u".into()),
                at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                standby,
            }),
            protection,
            ..Default::default()
        });
        c
    }

    #[test]
    fn a_released_standby_stays_released_until_its_spec_says_something_else() {
        let src = standby_of("src");
        assert_eq!(with(Some(src.clone()), None, None).standby(), Some(&src), "a standby");
        // Failed over to primary: the unchanged manifest (re-applied) does not undo it.
        assert_eq!(with(Some(src.clone()), Some(src.clone()), None).standby(), None);
        // Another upstream in the spec: a standby again.
        let other = standby_of("elsewhere");
        assert_eq!(with(Some(other.clone()), Some(src.clone()), None).standby(), Some(&other));
        let ep = Standby {
            cluster: None,
            namespace: None,
            primary_endpoint: Some("10.0.0.7:6379".into()),
            shard_endpoints: Vec::new(),
        };
        assert_eq!(with(Some(ep.clone()), Some(src.clone()), None).standby(), Some(&ep));
        // The same cluster named in another namespace is another relation.
        let ns = Standby { namespace: Some("other".into()), ..src.clone() };
        assert_eq!(with(Some(ns.clone()), Some(src.clone()), None).standby(), Some(&ns));
        // No spec.standby: production, whatever the record says.
        assert_eq!(with(None, Some(src.clone()), None).standby(), None);
    }

    #[test]
    fn a_protecting_group_decides_whatever_was_released() {
        let src = standby_of("src");
        let group = |standby: Option<Standby>| {
            Some(Protection {
                group: "ns/pg".into(),
                standby,
                yield_to: Vec::new(),
                yield_to_shards: Vec::new(),
                detached: false,
                contact_at: None,
            })
        };
        let dr = standby_of("prod");
        assert_eq!(with(Some(src.clone()), Some(src.clone()), group(Some(dr.clone()))).standby(), Some(&dr));
        assert_eq!(with(Some(src.clone()), None, group(None)).standby(), None);
    }
}
