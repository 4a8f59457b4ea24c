//! `ProtectionGroup`: disaster recovery between a production and a DR site.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::{SecretKeyRef, conditions_schema};

/// Pairs of HaClusters replicating from a production site to a DR site.
/// Changing `prioritySite` performs a planned failover.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "understudy.dev",
    version = "v1alpha1",
    kind = "ProtectionGroup",
    plural = "protectiongroups",
    singular = "protectiongroup",
    shortname = "pg",
    category = "understudy",
    namespaced,
    status = "ProtectionGroupStatus",
    derive = "PartialEq",
    doc = "Disaster recovery for pairs of HaClusters between a production site and a DR site.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Production", type_ = "string", json_path = ".status.productionSite"),
    printcolumn(name = "Priority", type_ = "string", json_path = ".spec.prioritySite"),
    printcolumn(
        name = "Direction",
        type_ = "string",
        json_path = ".status.replicationDirection",
        priority = 1
    ),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.step", priority = 1),
    printcolumn(name = "Job", type_ = "string", json_path = ".status.jobId", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.pairs) || (self.pairs.map(p, p.source).distinct().size() == size(self.pairs) && self.pairs.map(p, p.target).distinct().size() == size(self.pairs))",
        "message": "each HaCluster may appear in only one pair on each side"
    },
    {
        "rule": "has(self.sites.source.kubeconfigSecretRef) || has(self.sites.target.kubeconfigSecretRef) || self.sites.source.__namespace__ != self.sites.target.__namespace__ || !has(self.pairs) || self.pairs.all(p, p.source != p.target)",
        "message": "a pair cannot protect a cluster with itself"
    },
    {
        "rule": "!has(oldSelf.prioritySite) || !has(self.prioritySite) || self.prioritySite == oldSelf.prioritySite || (has(self.pairs) && size(self.pairs) > 0)",
        "message": "a planned failover (changing prioritySite) needs replication pairs"
    }
]))]
pub struct ProtectionGroupSpec {
    /// The two sites.
    pub sites: Sites,
    /// Replication pairs: a cluster at the source site and its counterpart at the target site.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub pairs: Vec<ReplicationPair>,
    /// Which site should be production. Changing it is a planned failover.
    #[serde(default)]
    pub priority_site: SiteRole,
    /// Deadline of one planned failover, from its start to its end (seconds). When it passes
    /// the move is stopped where it is safe and the group goes to `ErrorReversing`.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 5, max = 86400))]
    pub timeout_seconds: i64,
}

fn default_timeout() -> i64 {
    300
}

/// Source and target site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sites {
    pub source: Site,
    pub target: Site,
}

/// Where a site's clusters live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    /// Namespace of the site's HaClusters.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// For a site in another Kubernetes cluster: a Secret (in the
    /// ProtectionGroup's namespace) holding a kubeconfig (key default `kubeconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
}

/// A protected pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationPair {
    /// HaCluster at the source site.
    #[schemars(length(min = 1, max = 63))]
    pub source: String,
    /// HaCluster at the target site.
    #[schemars(length(min = 1, max = 63))]
    pub target: String,
}

/// One of the two sites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::resources::shared::also_earlier_spelling)]
pub enum SiteRole {
    #[default]
    #[serde(alias = "source")]
    Source,
    #[serde(alias = "target")]
    Target,
}

impl SiteRole {
    pub fn other(self) -> Self {
        match self {
            Self::Source => Self::Target,
            Self::Target => Self::Source,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "Source",
            Self::Target => "Target",
        }
    }

    /// `source-to-target` when `self` is production.
    pub fn direction(self) -> &'static str {
        match self {
            Self::Source => "source-to-target",
            Self::Target => "target-to-source",
        }
    }
}

/// Observed state of a ProtectionGroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionGroupStatus {
    /// Pending, Protected, FailingOver, ErrorReversing, Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProtectionPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The site currently serving writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_site: Option<SiteRole>,
    /// `source-to-target` or `target-to-source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_direction: Option<String>,
    /// Identifier of the current or last planned failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Step of the planned failover in progress: stop-writes, sync, promote, reverse, reroute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Per pair: replication state and lag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// When the current or last planned failover started, and its deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_deadline: Option<Time>,
    /// How long the last planned failover blocked writes (pause to promotion), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write_pause_ms: Option<i64>,
    /// The `understudy.dev/retry` annotation value the last planned failover ran for:
    /// changing the annotation re-asserts the spec after `ErrorReversing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_retry: Option<String>,
}

/// Phases, in the seed's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::resources::shared::also_earlier_spelling)]
pub enum ProtectionPhase {
    #[serde(alias = "pending")]
    Pending,
    #[serde(alias = "protected")]
    Protected,
    #[serde(alias = "failing-over")]
    FailingOver,
    #[serde(alias = "error-reversing")]
    ErrorReversing,
    #[serde(alias = "error")]
    Error,
}

/// Replication state of one pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PairStatus {
    pub source: String,
    pub target: String,
    /// The site whose cluster is writable for this pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<SiteRole>,
    /// Replicating, Syncing, Broken.
    pub state: String,
    /// Offset difference between the production primary and the DR primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
