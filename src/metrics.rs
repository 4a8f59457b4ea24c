//! Prometheus metrics, served on `/metrics`.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

/// A failed reconcile: the controller and the kind of error (`conflict`, `not-found`,
/// `forbidden`, `api-error`, `unavailable`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub namespace: String,
    pub cluster: String,
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub namespace: String,
    pub cluster: String,
    pub shard: String,
    /// `automatic`, `switchover`, `failover`, `shard-failover`, `site-failover`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `FailoverRequest`, `ShardFailover`, `ProtectionGroup`.
    pub kind: String,
    /// The terminal phase: `Succeeded`, `Failed`, `RolledBack`, `DryRun`, `ErrorReversing`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    pub namespace: String,
    pub cluster: String,
    pub shard: String,
    pub member: String,
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub failovers: Family<FailoverLabels, Counter>,
    pub failover_duration: Family<FailoverLabels, Histogram>,
    pub operations: Family<OperationLabels, Counter>,
    pub operation_duration: Family<OperationLabels, Histogram>,
    pub member_up: Family<MemberLabels, Gauge>,
    pub epoch: Family<ShardLabels, Gauge>,
    pub leader: Gauge,
    /// HaCluster monitors running in this process.
    pub monitors: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("understudy");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let failovers = Family::<FailoverLabels, Counter>::default();
        let failover_duration = Family::<FailoverLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0])
        });
        let operations = Family::<OperationLabels, Counter>::default();
        let operation_duration = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0])
        });
        let member_up = Family::<MemberLabels, Gauge>::default();
        let epoch = Family::<ShardLabels, Gauge>::default();
        let leader = Gauge::default();
        let monitors = Gauge::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that returned an error",
            reconcile_errors.clone(),
        );
        registry.register("failovers", "Role changes carried out (promotions)", failovers.clone());
        registry.register(
            "failover_duration_seconds",
            "From the decision to fail over to the new primary being routed",
            failover_duration.clone(),
        );
        registry.register(
            "operations",
            "Operations (FailoverRequest, ShardFailover, planned site failover) that reached a terminal phase",
            operations.clone(),
        );
        registry.register(
            "operation_duration_seconds",
            "From an operation's start to its terminal phase",
            operation_duration.clone(),
        );
        registry.register("member_up", "1 if the member answered its last probe", member_up.clone());
        registry.register("shard_epoch", "Current epoch (fencing token) of the shard", epoch.clone());
        registry.register("leader", "1 while this process holds the leader lease", leader.clone());
        registry.register(
            "monitors",
            "HaCluster monitors running in this process (one per cluster while leading)",
            monitors.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            reconcile_errors,
            failovers,
            failover_duration,
            operations,
            operation_duration,
            member_up,
            epoch,
            leader,
            monitors,
        }
    }

    /// One operation reached its terminal phase after `seconds` (None when its start is unknown).
    pub fn operation_finished(&self, kind: &str, outcome: &str, seconds: Option<f64>) {
        let labels = OperationLabels { kind: kind.into(), outcome: outcome.into() };
        self.operations.get_or_create(&labels).inc();
        if let Some(s) = seconds {
            self.operation_duration.get_or_create(&labels).observe(s.max(0.0));
        }
    }

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
