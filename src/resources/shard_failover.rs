//! `ShardFailover`: fail chosen primary shards over to their replicas.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::conditions_schema;

/// Fail over the named primary members to their replicas. Immutable once created.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "understudy.dev",
    version = "v1alpha1",
    kind = "ShardFailover",
    plural = "shardfailovers",
    singular = "shardfailover",
    shortname = "sfo",
    category = "understudy",
    namespaced,
    status = "ShardFailoverStatus",
    derive = "PartialEq",
    doc = "Fail over chosen primary shards (by member uid) of one HaCluster to their replicas.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".status.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Error", type_ = "string", json_path = ".status.errorCode"),
    printcolumn(name = "DryRun", type_ = "boolean", json_path = ".spec.dryRun", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "a ShardFailover is immutable once created; delete it and create a new one"
    },
    {
        "rule": "has(self.shardUids) && size(self.shardUids) > 0",
        "message": "shard_uids_required: shardUids must name at least one primary shard"
    },
    {
        "rule": "!has(self.deadUids) || !has(self.shardUids) || self.deadUids.all(u, u in self.shardUids)",
        "message": "deadUids must be uids listed in shardUids (the primaries being failed over that are dead)"
    }
]))]
pub struct ShardFailoverSpec {
    /// Members (uids) that are currently primaries of one HaCluster and should
    /// be failed over to a replica.
    ///
    /// Missing or empty is rejected with the seed's `shard_uids_required`.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)), transform = no_default)]
    #[schemars(extend(
        "x-kubernetes-validations" = [
            {"rule": "self.distinct().size() == size(self)", "message": "shardUids must not repeat a uid"}
        ]
    ))]
    pub shard_uids: Vec<String>,
    /// Primaries not to stop or demote (they are unreachable): they are only
    /// taken out of routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub dead_uids: Vec<String>,
    /// Nodes not to drain and not to promote on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub dead_nodes: Vec<String>,
    /// Validate and report the plan without touching anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Re-point routing at the promoted replicas right after promotion.
    #[serde(default)]
    pub force_rebind: bool,
    /// How long the whole failover may take, in seconds, including waiting for
    /// a busy shard's lock.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
}

/// `shardUids` must stay unset when omitted so the spec-level rule can report
/// `shard_uids_required` instead of the API server defaulting it.
fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

fn default_timeout_seconds() -> i64 {
    300
}

/// Observed progress of a ShardFailover.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardFailoverStatus {
    /// Identifier of this action (the seed's action_uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_uid: Option<String>,
    /// Pending, Running, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ShardFailoverPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// HaCluster the shards belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// On failure: the seed's error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ShardFailoverError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Per shard: from which member to which, and how far it got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Phases of a ShardFailover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ShardFailoverPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// The seed's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShardFailoverError {
    /// No shard uid given (normally rejected by the API server already).
    ShardUidsRequired,
    /// A uid names no member of any HaCluster in the namespace.
    ShardNotExist,
    /// A uid names a replica, not a primary.
    ShardIsSlave,
    /// The uids belong to more than one HaCluster.
    FailoverShardsDifferentBdb,
    /// A uid names a member of several HaClusters (member names should be unique in a
    /// namespace; which one was meant cannot be told).
    ShardUidAmbiguous,
    /// Another operation held a shard's lock until the deadline.
    DbBusy,
    /// No eligible replica to promote.
    NoEligibleReplica,
    /// A step failed or timed out.
    FailoverFailed,
}

/// Progress of one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardProgress {
    /// The primary member named in shardUids.
    pub uid: String,
    /// Shard of the cluster it is primary of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    pub from: String,
    /// Replica chosen (or, in a dry run, that would be chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub phase: ShardStep,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How far one shard got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ShardStep {
    Planned,
    WaitingForLock,
    Fencing,
    Promoting,
    Redirecting,
    Rebinding,
    Succeeded,
    Failed,
}
