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
    },
    {
        "rule": "!has(self.forcedFailover) || self.forcedFailover.to == self.prioritySite",
        "message": "forcedFailover.to must be the prioritySite: a forced failover moves production to the priority site (remove forcedFailover to move back by a planned failover)"
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
    /// Authorises a forced failover to `to` (which must be `prioritySite`): production moves
    /// there even when the current production site does not answer, without waiting for it.
    /// Writes the lost site took after the DR side last received them are lost; status records
    /// how much it knows (`status.lastForcedFailover`). The lost site is fenced when it
    /// returns (its clusters follow the new production site, never a second one) and
    /// protection is re-established in the reverse direction. Without this block nothing is
    /// promoted while the production site does not answer. It only ever acts on a move to
    /// `to`: leave it in place afterwards, or remove it; moving back is a planned failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_failover: Option<ForcedFailover>,
    /// `Started` (default): the pairs replicate from the production site. `Stopped`:
    /// replication is detached and each DR cluster is left as `detachPolicy` says; the
    /// production clusters are ordinary clusters again. Setting `Started` again re-protects:
    /// the DR side's data is replaced by the production side's.
    #[serde(default)]
    pub protection: ProtectionState,
    /// What each DR cluster becomes when protection stops or the group is deleted:
    /// `ReadOnly` (default) keeps its data, replicates from nothing and is never made
    /// writable until its `status.protection` is removed; `Writable` promotes its leader: an
    /// ordinary cluster, independent of the production site.
    #[serde(default)]
    pub detach_policy: DetachPolicy,
}

/// Whether the group protects its pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ProtectionState {
    #[default]
    Started,
    Stopped,
}

/// What a DR cluster becomes when protection stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DetachPolicy {
    #[default]
    ReadOnly,
    Writable,
}

/// The explicit intent of a forced failover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForcedFailover {
    /// The site to make production.
    pub to: SiteRole,
    /// Why production is moved by force (recorded in status and Events).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
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

impl ProtectionGroupSpec {
    /// The pair naming the HaCluster `ns/name` on a site of this group that is this control
    /// plane (no `kubeconfigSecretRef`), with that site; None when protection is stopped.
    pub fn local_pair(&self, ns: &str, name: &str) -> Option<(SiteRole, &ReplicationPair)> {
        if self.protection != ProtectionState::Started {
            return None;
        }
        let sites = [(SiteRole::Source, &self.sites.source), (SiteRole::Target, &self.sites.target)];
        sites.into_iter().find_map(|(role, site)| {
            if site.kubeconfig_secret_ref.is_some() || site.namespace != ns {
                return None;
            }
            let pair = self.pairs.iter().find(|p| match role {
                SiteRole::Source => p.source == name,
                SiteRole::Target => p.target == name,
            })?;
            Some((role, pair))
        })
    }
}

impl ProtectionGroup {
    /// Whether this group, in the same control plane as the HaCluster `ns/name`, protects it
    /// as its DR side: then the cluster's roles are the group's to set from its first election
    /// on (for messages: which site and pair). Its production side is never held — a group
    /// that cannot act (an error, a pair it refuses) must not keep production from electing.
    /// Production is what the group's status says for the pair, else for the group, else its
    /// priority site (a group not reconciled yet).
    pub fn holds_as_dr(&self, ns: &str, name: &str) -> Option<String> {
        let (role, pair) = self.spec.local_pair(ns, name)?;
        let st = self.status.as_ref();
        let production = st
            .and_then(|s| s.pairs.iter().find(|p| p.source == pair.source && p.target == pair.target))
            .and_then(|p| p.production)
            .or(st.and_then(|s| s.production_site))
            .unwrap_or(self.spec.priority_site);
        (role != production)
            .then(|| format!("the DR side ({} site) of pair {}/{}", role.as_str(), pair.source, pair.target))
    }
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
    /// Pending, Protected, FailingOver, ErrorReversing, Error, FailedOver (production moved
    /// by a forced failover; the lost site is fenced and re-protected when it returns),
    /// Stopped (protection stopped, the pairs detached).
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
    /// The last forced failover: when, why, and per pair what it may have lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_forced_failover: Option<ForcedFailoverRecord>,
    /// The answer to the last dry run (the `understudy.dev/dry-run` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunReport>,
}

/// What a forced failover did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForcedFailoverRecord {
    pub job_id: String,
    /// When the DR side was promoted.
    pub at: Time,
    pub from: SiteRole,
    pub to: SiteRole,
    /// `spec.forcedFailover.reason`.
    pub reason: String,
    pub pairs: Vec<ForcedPair>,
}

/// One pair of a forced failover.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForcedPair {
    pub source: String,
    pub target: String,
    /// The shard, in a pair of clusters of more than one shard (each is forced on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// When the operator last saw both leaders of the pair answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Time>,
    /// Bytes the new production leader lacked, at the last contact, of what the lost leader
    /// had (its replication lag then): the least that may be lost. Writes after
    /// `lastContact` are not known until the lost site returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub possible_loss: Option<i64>,
    /// The new production leader's replication offset when it was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at_offset: Option<i64>,
    /// Measured when the lost site returned: bytes its leader held beyond
    /// `promotedAtOffset` (discarded when it was fenced). Absent while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_offset: Option<i64>,
    /// When the lost site's cluster was fenced (made to follow the new production site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A dry run of a planned or forced failover: what it would do now, and what stops it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunReport {
    /// The annotation value answered (`Target`, `Source`, `Target/Forced`, …).
    pub request: String,
    pub at: Time,
    pub to: SiteRole,
    pub forced: bool,
    /// True when nothing stops the failover now.
    pub possible: bool,
    /// The steps it would take, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// What stops it (empty when possible).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blockers: Vec<String>,
    /// Per pair: what would happen and the current lag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairStatus>,
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
    // Production was moved by a forced failover and the lost site has not been re-protected
    // yet (it is fenced when it returns, then replication is reversed). Undocumented here so
    // the schema stays one `enum` (see `also_earlier_spelling`).
    #[serde(alias = "failed-over")]
    FailedOver,
    // spec.protection is Stopped (or the group is being deleted) and the pairs are detached.
    #[serde(alias = "stopped")]
    Stopped,
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
    /// Replicating, Syncing, Broken; after a forced failover SiteLost (the old side does not
    /// answer) until it is fenced.
    pub state: String,
    /// Offset difference between the production primary and the DR primary (the largest
    /// of its shards').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A pair of clusters of more than one shard replicates shard by shard (by name): each
    /// shard's state and lag. The pair's state is its worst shard's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardPairStatus>,
}

/// Replication state of one shard of a pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardPairStatus {
    pub shard: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(target_remote: bool, protection: ProtectionState, status: serde_json::Value) -> ProtectionGroup {
        let target = if target_remote {
            serde_json::json!({"namespace": "b", "kubeconfigSecretRef": {"name": "site-b"}})
        } else {
            serde_json::json!({"namespace": "b"})
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup", "metadata": {"name": "pg"},
            "spec": {
                "sites": {"source": {"namespace": "a"}, "target": target},
                "pairs": [{"source": "orders", "target": "orders-dr"}],
                "protection": protection,
            },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_group_holds_the_dr_side_its_pairs_name_on_its_local_sites() {
        let g = group(false, ProtectionState::Started, serde_json::json!(null));
        // Not reconciled yet: the priority site (Source) is production.
        assert_eq!(
            g.holds_as_dr("b", "orders-dr").as_deref(),
            Some("the DR side (Target site) of pair orders/orders-dr")
        );
        assert_eq!(g.holds_as_dr("a", "orders"), None, "production is never held");
        // The right name in the wrong namespace, or on the other side, is not it.
        assert_eq!(g.holds_as_dr("a", "orders-dr"), None);
        assert_eq!(g.holds_as_dr("b", "orders"), None);
        assert_eq!(g.holds_as_dr("b", "other"), None);
    }

    #[test]
    fn production_is_read_from_the_pair_then_the_group() {
        let moved = group(false, ProtectionState::Started, serde_json::json!({"productionSite": "Target"}));
        assert!(moved.holds_as_dr("a", "orders").is_some());
        assert_eq!(moved.holds_as_dr("b", "orders-dr"), None);
        let pair = serde_json::json!({"productionSite": "Target",
            "pairs": [{"source": "orders", "target": "orders-dr", "production": "Source", "state": "Replicating"}]});
        let pair = group(false, ProtectionState::Started, pair);
        assert!(pair.holds_as_dr("b", "orders-dr").is_some(), "the pair's own record wins");
    }

    #[test]
    fn a_remote_site_or_stopped_protection_is_not_this_control_planes_to_hold() {
        let remote = group(true, ProtectionState::Started, serde_json::json!(null));
        assert_eq!(remote.holds_as_dr("b", "orders-dr"), None, "the target site is another control plane");
        let stopped = group(false, ProtectionState::Stopped, serde_json::json!(null));
        assert_eq!(stopped.holds_as_dr("b", "orders-dr"), None);
    }
}
