//! `FailoverRequest`: an imperative, immutable request to fail over or switch
//! over a batch of clusters, tracked as a task DAG.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    hacluster::OnTimeout,
    shared::{conditions_schema, observed_schema},
};

/// A batch failover or switchover. Immutable once created: to change it,
/// delete it and create a new one.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "understudy.dev",
    version = "v1alpha1",
    kind = "FailoverRequest",
    plural = "failoverrequests",
    singular = "failoverrequest",
    shortname = "fr",
    category = "understudy",
    namespaced,
    status = "FailoverRequestStatus",
    derive = "PartialEq",
    doc = "An auditable, resumable request to fail over or switch over one or more HaClusters.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress",
        description = "Subtasks done / all subtasks"
    ),
    printcolumn(name = "DryRun", type_ = "boolean", json_path = ".spec.dryRun", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "a FailoverRequest is immutable once created; delete it and create a new one"
    },
    {
        "rule": "self.items.map(i, i.cluster + '/' + (has(i.shard) ? i.shard : '')).distinct().size() == size(self.items)",
        "message": "each cluster/shard may appear only once in items"
    }
]))]
pub struct FailoverRequestSpec {
    /// `Switchover`: graceful, zero loss (writes paused until the candidate has
    /// everything). `Failover`: forced, for a primary that is gone.
    #[serde(rename = "type")]
    pub type_: RequestType,
    /// Clusters (and shards) to move. Items run in parallel.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "size(self) > 0",
        "message": "items must name at least one cluster"
    }]))]
    pub items: Vec<FailoverItem>,
    /// Deadline of each subtask, in seconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
    /// What to do when a subtask's deadline passes: `Abort` rolls back, `Force`
    /// carries on where that is still safe (a Failover may promote without
    /// having fenced an unreachable old primary, which is then kept out of routing).
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Validate and plan, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_timeout_seconds() -> i64 {
    1800
}

/// Graceful or forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RequestType {
    Switchover,
    Failover,
}

/// One cluster (or shard) to move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.candidate) || !has(self.expectedPrimary) || self.candidate != self.expectedPrimary",
    "message": "candidate must be another member than expectedPrimary (the primary cannot replace itself)"
}]))]
pub struct FailoverItem {
    /// HaCluster in the request's namespace. A standby cluster (spec.standby) is failed over
    /// to primary: its leader is made writable and the standby relation ends (recorded in
    /// the cluster's status.standbyReleased). A standby that a ProtectionGroup protects is
    /// refused: fail over the group instead.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// Shard to move; required for clusters with more than one shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub shard: Option<String>,
    /// Member to promote; by default the best eligible replica (of a standby cluster: its
    /// leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub candidate: Option<String>,
    /// Refuse unless this member is the current primary (of a standby cluster: its leader)
    /// — guards against acting on a stale view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub expected_primary: Option<String>,
    /// A Service of this name is created or updated to point at the new primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub service_name: Option<String>,
}

/// Observed progress of a FailoverRequest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRequestStatus {
    /// Pending, Running, Succeeded, Failed, RolledBack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `done/total` subtasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Human-readable summary of the outcome or of what is being waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The task DAG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInstance>,
    /// Per item: old and new primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemResult>,
    /// The operator pod that ran the request's latest step (`POD_NAME`, else the host name),
    /// like the seed's `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// Set once the request is terminal: milliseconds from its start to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// 16 hex digits chosen when the request is first reconciled; every log line about the
    /// request carries it (`trace_id`), for troubleshooting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Terminal and non-terminal phases of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RequestPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    RolledBack,
}

impl RequestPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::RolledBack)
    }
}

/// Outcome per item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemResult {
    pub cluster: String,
    pub shard: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// For a standby cluster failed over to primary: the standby relation the request ended
    /// (the old upstream cluster or endpoint), which must be fenced when it returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "observed_schema::<Option<super::hacluster::Standby>>")]
    pub released_from: Option<super::hacluster::Standby>,
}

/// The task DAG of a request, shaped like the seed's task instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskInstance {
    pub id: String,
    pub name: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
    /// True once a subtask marked prohibitRollback has succeeded.
    #[serde(default)]
    pub prohibit_rollback: bool,
    pub subtasks: Vec<Subtask>,
}

/// One node of the DAG.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subtask {
    pub id: i64,
    /// Step kind: check, lock, fence, promote, redirect, route, record; for a standby
    /// cluster check, lock, reset-restore-source, failover-to-primary, create-service-name,
    /// update-primary-info.
    pub name: String,
    pub description: String,
    pub status: TaskStatus,
    /// Index of the item the subtask belongs to.
    pub item: i32,
    #[serde(default)]
    pub upstreams: Vec<i64>,
    #[serde(default)]
    pub downstreams: Vec<i64>,
    pub timeout_seconds: i64,
    /// Once this subtask succeeded, nothing before it is rolled back.
    #[serde(default)]
    pub prohibit_rollback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Facts a step records for the steps after it and for resuming
    /// (e.g. the chosen candidate, the offset at fence time).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
}

/// Status of a task or subtask (the seed's vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Ready,
    Pending,
    Running,
    Successful,
    Failed,
    Skipped,
    RolledBack,
}

impl From<TaskStatus> for crate::core::dag::State {
    fn from(s: TaskStatus) -> Self {
        use crate::core::dag::State;
        match s {
            TaskStatus::Ready => State::Ready,
            TaskStatus::Pending => State::Pending,
            TaskStatus::Running => State::Running,
            TaskStatus::Successful => State::Successful,
            TaskStatus::Failed => State::Failed,
            TaskStatus::Skipped => State::Skipped,
            TaskStatus::RolledBack => State::RolledBack,
        }
    }
}

impl From<crate::core::dag::State> for TaskStatus {
    fn from(s: crate::core::dag::State) -> Self {
        use crate::core::dag::State;
        match s {
            State::Ready => TaskStatus::Ready,
            State::Pending => TaskStatus::Pending,
            State::Running => TaskStatus::Running,
            State::Successful => TaskStatus::Successful,
            State::Failed => TaskStatus::Failed,
            State::Skipped => TaskStatus::Skipped,
            State::RolledBack => TaskStatus::RolledBack,
        }
    }
}

/// The DAG decisions of [`crate::core::dag`] read subtasks through this.
impl crate::core::dag::Node for Subtask {
    fn id(&self) -> i64 {
        self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn item(&self) -> i32 {
        self.item
    }
    fn state(&self) -> crate::core::dag::State {
        self.status.into()
    }
    fn upstreams(&self) -> &[i64] {
        &self.upstreams
    }
    fn prohibit_rollback(&self) -> bool {
        self.prohibit_rollback
    }
}
