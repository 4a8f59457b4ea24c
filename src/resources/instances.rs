//! `spec.instances`: members the operator creates and runs itself (seed 003's instance
//! group), as Pods and PersistentVolumeClaims it owns directly — not a StatefulSet — so that
//! it alone decides the order of every restart.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, PodSecurityContext, ResourceRequirements, Toleration},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label every owned pod and PVC carries, naming its HaCluster.
pub const CLUSTER_LABEL: &str = "understudy.dev/cluster";
/// Label naming the member's ordinal (the number after the last dash of its name).
pub const ORDINAL_LABEL: &str = "understudy.dev/ordinal";
/// Pod annotation: the revision (hash of everything that shapes a member) it was built from.
pub const REVISION_ANNOTATION: &str = "understudy.dev/revision";
/// Where a member's volume is mounted (the engine's data directory).
pub const DATA_DIR: &str = "/data";
/// HaCluster annotation asking the operator to rebuild one member it runs from the primary:
/// its pod and volume are replaced and it resynchronises from scratch. The value is the
/// member's name; for a member holding transactions the primary never had (MySQL family:
/// errant GTIDs), the name, a colon and exactly those transactions as the `Degraded`
/// condition lists them (`db-2:0-3-11,0-3-12`): the rebuild discards them, and naming them is
/// how a user accepts that loss. The primary is never rebuilt. A value is acted on once
/// (`status.instances.rebuild.request`); a new value asks again (a suffix `@<anything>` is
/// ignored, so `db-2@2` asks for another rebuild of `db-2`).
pub const REBUILD_ANNOTATION: &str = "understudy.dev/rebuild";

/// Members run by the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.storage) == has(oldSelf.storage)",
        "message": "spec.instances.storage cannot be added or removed once the cluster exists (members would lose or gain their data directory)"
    }
]))]
pub struct Instances {
    /// Number of members: one primary and `members - 1` replicas. Raising it adds replicas;
    /// lowering it removes replicas (never the primary).
    #[schemars(range(min = 1, max = 9))]
    pub members: i32,
    /// Container image of every member: the engine and its version (for Redis, an image whose
    /// entrypoint runs `redis-server` with the arguments the operator passes; for Mysql, one
    /// whose entrypoint prepares /data/mariadb and the operator's account and then runs
    /// `mariadbd` with them, as `tools/image.sh mariadb` builds). Changing it
    /// upgrades the members in order: replicas first, then a switchover, then the old primary.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// When the kubelet pulls the image: `Always`, `IfNotPresent` (the default) or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Port the engine listens on (default: 6379 for Redis, 3306 for Mysql).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// CPU and memory of each member (the flavor). A change is applied to the running members
    /// in place, one at a time (the pods' resize subresource, Kubernetes 1.33+); where the
    /// node cannot (a QoS class change, such as adding the first request), the members
    /// restart in order instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A volume per member, mounted at /data. Without it members keep their data in an
    /// emptyDir: a restarted member starts empty and resynchronises from the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Engine parameters (for Redis, configuration directives such as `maxmemory: 256mb`;
    /// for Mysql, mariadbd options such as `max-connections: "500"`), passed to every member
    /// at start. A change is applied live on every member (Redis `CONFIG SET`, Mysql
    /// `SET GLOBAL`), without a restart; one the engine reads only at start sets the
    /// condition `RestartRequired=True` naming it until the members are restarted
    /// (`kubectl.kubernetes.io/restartedAt`). A value the engine refuses is reported
    /// (`Progressing=False InvalidParameter`) and new members keep the parameters in force.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(k, k.matches('^[a-z][-a-z0-9]*$') && !(k in ['port', 'dir', 'replicaof', 'slaveof', 'bind', 'protected-mode', 'include', 'rename-command', 'requirepass', 'masterauth', 'daemonize', 'aclfile', 'unixsocket', 'min-replicas-to-write', 'min-replicas-max-lag', 'min-slaves-to-write', 'min-slaves-max-lag']))",
        "message": "parameters must be lower-case directive names (letters, digits, '-'); port, dir, replicaof, bind, protected-mode, passwords, include, rename-command, daemonize, aclfile, unixsocket and min-replicas-* (self-fencing) are set by the operator"
    }, {
        "rule": "self.all(k, !self[k].contains('\\n'))",
        "message": "parameter values must be one line of at most 256 characters"
    }]))]
    pub parameters: BTreeMap<String, String>,
    /// Additions to every member's pod.
    #[serde(default)]
    pub pod: PodOverrides,
    /// What happens to the members' volumes when the cluster is deleted or scaled down.
    #[serde(default)]
    pub pvc_retention: PvcRetention,
}

impl Instances {
    /// The port members listen on: `port`, or the engine's usual one.
    pub fn port(&self, engine: super::hacluster::Engine) -> i32 {
        self.port.unwrap_or(match engine {
            super::hacluster::Engine::Mysql => 3306,
            _ => 6379,
        })
    }
}

/// When the kubelet pulls an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A volume per member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
        "message": "spec.instances.storage.size can only grow; shrinking a volume would lose data"
    },
    {
        "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "message": "spec.instances.storage.storageClassName cannot change once the cluster exists"
    }
]))]
pub struct Storage {
    /// Size of each member's volume, such as `1Gi`.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
        "message": "storage.size must be a positive quantity such as 1Gi"
    }]))]
    pub size: String,
    /// StorageClass of the volumes; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Storage {
    pub fn quantity(&self) -> Quantity {
        Quantity(self.size.clone())
    }
}

/// Additions to every member's pod. Members are spread across nodes by default (a
/// preferred pod anti-affinity on the cluster label) unless `affinity` is given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod labels (the operator's own `understudy.dev/` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations. Changing one restarts the members in order, so
    /// `kubectl.kubernetes.io/restartedAt: <time>` asks for an ordered restart, as
    /// `kubectl rollout restart` does for a Deployment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// The pods' security context: for example `fsGroup`, so that an engine image running as
    /// a non-root user can write its fresh volume, or `runAsNonRoot`/`runAsUser`. Changing it
    /// restarts the members in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Seconds a member gets to stop (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// What happens to members' volumes, in StatefulSet's words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetention {
    /// When the HaCluster is deleted: `Retain` (the default: the data outlives the cluster)
    /// or `Delete`. A change applies to the existing volumes too, and the value at the time
    /// of deletion is the one that counts: the finalizer `understudy.dev/volumes` holds the
    /// deletion until the volumes follow it (`Progressing=False DeletionError` says why they
    /// do not). Without the operator running, remove that finalizer by hand.
    #[serde(default = "retain")]
    pub when_deleted: Retention,
    /// When a member is removed by lowering `members`: `Delete` (the default) or `Retain`.
    #[serde(default = "delete")]
    pub when_scaled: Retention,
}

impl Default for PvcRetention {
    fn default() -> Self {
        Self { when_deleted: Retention::Retain, when_scaled: Retention::Delete }
    }
}

fn retain() -> Retention {
    Retention::Retain
}

fn delete() -> Retention {
    Retention::Delete
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Retention {
    #[default]
    Retain,
    Delete,
}

/// What the operator records about the members it runs (`status.instances`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancesStatus {
    /// The members, by pod name: recorded before a new member's pod is created and before a
    /// removed member's pod is deleted, so that an operator restarted at any point knows
    /// which pods are members.
    #[serde(default)]
    pub members: Vec<String>,
    /// The revision (a hash of everything that shapes a member's pod) members should run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Members whose pod runs that revision and is ready.
    #[serde(default)]
    pub updated_ready: i32,
    /// Every member has been ready at the current revision once: creation is over.
    #[serde(default)]
    pub created: bool,
    /// The parameters in force: every member runs with them (set live, or from its start)
    /// or has them pending a restart; new members start with them. Spec parameters become
    /// the parameters in force once every member took them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
    /// The latest rebuild asked with the annotation `understudy.dev/rebuild`: in progress
    /// until `completionTime` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildStatus>,
}

/// A member rebuilt from the primary (the annotation `understudy.dev/rebuild`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildStatus {
    /// The annotation's value this rebuild was accepted for.
    pub request: String,
    pub member: String,
    /// The uid of what the rebuild replaces: the member's volume, or its pod when members
    /// have no volumes. Only that object is ever deleted for this rebuild, so an operator
    /// restarted at any point neither repeats nor skips a step.
    pub replaces: String,
    /// Transactions the member held that the primary never had, discarded by the rebuild
    /// (the request named them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discarded: Vec<String>,
    pub start_time: Time,
    /// When the rebuilt member was back, following the primary and caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
