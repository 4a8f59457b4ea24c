//! The HaCluster controller.
//!
//! A kube-runtime `Controller` notices clusters and makes sure each has a *monitor*: a task of
//! its own that heartbeats the members every `heartbeatInterval`, asks [`crate::core::shard`]
//! what to do and does it. Probing never waits on a reconcile, and a reconcile never waits on
//! a probe. The monitor reads the latest object from the controller's in-memory store, so a
//! quiet cluster costs no API requests at all: status is written only when it changes.
//!
//! Safety: a promotion is preceded by a resourceVersion-guarded status write that bumps the
//! shard's epoch and records the target and the operation lock; if the write fails (conflict,
//! API server down) nothing is promoted. The current primary is never demoted by the monitor.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::{
    api::core::v1::{Node, NodeStatus, Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt as _,
        controller::Action,
        reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{debug, info, warn};

use super::{
    Context, SecretCache, cached_credentials, key,
    promotion::{EarlyRoute, OpDone, ShardOp},
    routing,
};
use crate::{
    core::{
        member::stream_stalled,
        saga::{self, Become, End, OldPrimary, Start},
        shard::{self, MemberFacts, Plan, Policy, Promotion, PromotionKind, ShardFacts},
        standby,
        vocabulary::{Action as EventAction, ConditionType, Reason},
    },
    engines::{self, Engine, EngineError, Fault, ObservedRole, Probe},
    metrics::{FailoverLabels, MemberLabels, ShardLabels},
    resources::{
        HaCluster, ProtectionGroup,
        hacluster::{
            ClusterPhase, Engine as EngineKind, FailoverMode, HaClusterStatus, LossAccounting, MemberStatus,
            ReplicasDown, Role, ShardStatus, StepRecord, Yielded,
        },
        shared::set_condition,
    },
};

/// `LastPromotion` reason when a graceful switchover was abandoned because the candidate did
/// not catch up in time (an operation with onTimeout: Force may then force it).
pub const ABANDON_DRAIN: Reason = Reason::DrainTimedOut;

/// Kind recorded in the operation lock by automatic failover and bootstrap.
pub const LOCK_KIND: &str = "HaCluster";

type Monitors = Arc<Mutex<HashMap<String, MonitorHandle>>>;

/// A running monitor, and how the controller wakes it.
struct MonitorHandle {
    task: tokio::task::JoinHandle<()>,
    wake: Arc<Wake>,
    oref: ObjectRef<Guarded>,
}

/// Shared between a monitor and the controller: a change the monitor did not make itself
/// (spec edit, an operation taking the lock) starts a heartbeat at once instead of at the
/// next interval.
#[derive(Default)]
struct Wake {
    notify: tokio::sync::Notify,
    /// resourceVersions the monitor has acted on or written itself (the newest few). They
    /// are opaque strings: a version not among them is a change worth a heartbeat.
    known: Mutex<std::collections::VecDeque<String>>,
}

impl Wake {
    const REMEMBERED: usize = 16;

    fn remember(&self, rv: Option<String>) {
        let Some(rv) = rv else { return };
        let mut known = self.known.lock().expect("wake lock");
        if !known.contains(&rv) {
            if known.len() == Self::REMEMBERED {
                known.pop_front();
            }
            known.push_back(rv);
        }
    }

    fn knows(&self, rv: Option<&str>) -> bool {
        rv.is_some_and(|rv| self.known.lock().expect("wake lock").iter().any(|k| k == rv))
    }
}

/// HaClusters as watched: an object the operator cannot read is kept as an error (with its
/// metadata), so one malformed object never stalls the watch of all the others.
type Guarded = DeserializeGuard<HaCluster>;

struct State {
    ctx: Context,
    store: Store<Guarded>,
    pods: Store<Pod>,
    shared: Shared,
    monitors: Monitors,
}

/// Caches every monitor reads, whatever its scope.
#[derive(Clone)]
struct Shared {
    /// Node conditions (cluster-wide).
    nodes: Store<Node>,
    /// ProtectionGroups of every watched scope: a group's sites may be other namespaces
    /// than its own.
    groups: Arc<Vec<Store<DeserializeGuard<ProtectionGroup>>>>,
}

impl Shared {
    /// The groups, or None until every scope's first list has arrived.
    fn groups(&self) -> Option<Vec<Arc<DeserializeGuard<ProtectionGroup>>>> {
        let ready =
            |s: &Store<_>| matches!(futures::FutureExt::now_or_never(s.wait_until_ready()), Some(Ok(())));
        self.groups.iter().all(ready).then(|| self.groups.iter().flat_map(Store::state).collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HaCluster has no uid")]
    NoUid,
}

/// Run the controller for every watched scope until the process stops.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let monitors: Monitors = Arc::default();
    // Monitors are detached tasks: stop them when this future ends or is dropped (lost
    // leadership, shutdown), so nothing acts after the controller stops.
    let _guard = AbortOnDrop(monitors.clone());
    let mut runs = Vec::new();
    // Node conditions, cluster-wide: members on a node that is not Ready are not promoted.
    // Not needed for readiness — without the right to read nodes (or before the first list)
    // no node counts as dead.
    let (nodes, writer) = reflector::store();
    let node_watch = reflector(
        writer,
        watcher(Api::<Node>::all(ctx.client.clone()), watcher::Config::default().any_semantic())
            .modify(slim_node),
    )
    .default_backoff()
    .for_each(|e| async move {
        if let Err(e) = e {
            debug!(error = %e, "node watch");
        }
    });
    runs.push(node_watch.boxed());
    // ProtectionGroups, for a cluster's first election (see [`Monitor::awaiting_group`]).
    let mut groups = Vec::new();
    for api in ctx.scopes::<DeserializeGuard<ProtectionGroup>>() {
        let (store, writer) = reflector::store();
        let watch = reflector(writer, watcher(api, watcher::Config::default().any_semantic()))
            .default_backoff()
            .for_each(|e| async move {
                if let Err(e) = e {
                    debug!(error = %e, "protection group watch");
                }
            });
        runs.push(watch.boxed());
        groups.push(store);
    }
    let shared = Shared { nodes, groups: Arc::new(groups) };
    for api in ctx.scopes::<Guarded>() {
        // Pod members come from a reflector in the same scope: monitors read it from memory.
        let pod_api: Api<Pod> = match api.namespace() {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        };
        let (pods, writer) = reflector::store();
        ctx.readiness.track(pods.clone());
        let pod_watch = reflector(writer, watcher(pod_api, watcher::Config::default().any_semantic()))
            .default_backoff()
            .for_each(|_| async {});
        runs.push(pod_watch.boxed());
        let controller = Controller::new(api, watcher::Config::default().any_semantic());
        ctx.readiness.track(controller.store());
        let state = Arc::new(State {
            ctx: ctx.clone(),
            store: controller.store(),
            pods,
            shared: shared.clone(),
            monitors: monitors.clone(),
        });
        runs.push(supervise(state.clone()).boxed());
        runs.push(
            controller
                .run(reconcile, error_policy, state)
                .for_each(|res| async move {
                    if let Err(e) = res {
                        debug!(error = %e, "hacluster reconcile");
                    }
                })
                .boxed(),
        );
    }
    // None of these ends while the process runs (watches retry for ever): one that does leaves
    // part of the operator blind, so the whole operator stops and its pod is restarted.
    let (_, which, _) = futures::future::select_all(runs).await;
    anyhow::bail!("the HaCluster controller's stream {which} ended")
}

/// The kubelet's Node condition type (Kubernetes' vocabulary, not the operator's
/// [`ConditionType`]).
const NODE_READY: &str = "Ready";

/// Keep of a Node only what decisions need: its name and its Ready condition.
fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.labels = None;
    node.spec = None;
    if let Some(st) = node.status.as_mut() {
        let ready =
            st.conditions.take().unwrap_or_default().into_iter().filter(|c| c.type_ == NODE_READY).collect();
        *st = NodeStatus { conditions: Some(ready), ..NodeStatus::default() };
    }
}

/// Nodes whose Ready condition says False or Unknown: their members are not promoted. A node
/// without a Ready condition (nobody ever reported on it) is not judged.
fn dead_nodes(nodes: &Store<Node>) -> Vec<String> {
    nodes
        .state()
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == NODE_READY && c.status != "True"))
        })
        .map(|n| n.name_any())
        .collect()
}

/// How many replicas `primary` of `shard` needs to take writes: the spec's
/// `minReplicasToWrite`, capped at the shard's other members — with `replicasDown:
/// KeepWriting` only those that answered the latest probe and, as replicas, have their
/// replication link up. A replica still in its first sync (a new or restarted pod: Redis
/// waits `repl-diskless-sync-delay`, 5 s, before it even starts) acknowledges nothing; counting
/// it made a two-member cluster refuse every write until the sync was done (measured: 5 s
/// after an evicted member's pod came back). A replica whose pod is being deleted does not
/// count either: it is about to stop, and the primary must not refuse writes from the moment
/// it does until the next heartbeat notices (measured: a 135 ms pause when an evicted old
/// primary, by then a replica, stopped at the end of its preStop sleep).
fn fencing_want(
    cluster: &HaCluster,
    declared: &[Declared],
    members: &HashMap<String, MemberState>,
    shard: &str,
    primary: &str,
) -> u32 {
    let f = &cluster.spec.failover.fencing;
    let up = |name: &str| {
        members.get(name).is_some_and(|m| {
            m.misses == 0 && m.probe.as_ref().is_some_and(|p| p.role != ObservedRole::Replica || p.link_up)
        })
    };
    let others = declared
        .iter()
        .filter(|d| d.shard == shard && d.name != primary)
        .filter(|d| f.replicas_down == ReplicasDown::PauseWrites || (up(&d.name) && !d.leaving))
        .count() as u32;
    (f.min_replicas_to_write.max(0) as u32).min(others)
}

/// Counts a running monitor down when its task ends, also when it is aborted.
struct MonitorCount(prometheus_client::metrics::gauge::Gauge);

impl Drop for MonitorCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct AbortOnDrop(Monitors);

impl Drop for Monitor {
    /// Promotions in flight end with their monitor (cluster gone, leadership lost).
    fn drop(&mut self) {
        for (_, task) in self.ops.values() {
            task.abort();
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.lock() {
            for (_, h) in m.drain() {
                h.task.abort();
            }
        }
    }
}

async fn reconcile(guarded: Arc<Guarded>, state: Arc<State>) -> Result<Action, Error> {
    state.ctx.metrics.reconciles.get_or_create(&ctrl_label()).inc();
    let obj = match &guarded.0 {
        Ok(obj) => obj,
        Err(invalid) => {
            // Its monitor, if any, idles until the object can be read again.
            super::report_invalid::<HaCluster>(&state.ctx, invalid).await;
            return Ok(Action::await_change());
        }
    };
    let uid = obj.uid().ok_or(Error::NoUid)?;
    let mut monitors = state.monitors.lock().expect("monitors lock");
    monitors.retain(|_, h| !h.task.is_finished());
    if obj.metadata.deletion_timestamp.is_some() {
        if let Some(h) = monitors.remove(&uid) {
            h.task.abort();
        }
        return Ok(Action::await_change());
    }
    let handle = monitors.entry(uid.clone()).or_insert_with(|| {
        info!(cluster = %key(obj), "starting monitor");
        start_monitor(&state, ObjectRef::from_obj(guarded.as_ref()), uid)
    });
    if !handle.wake.knows(obj.resource_version().as_deref()) {
        handle.wake.notify.notify_one();
    }
    Ok(Action::await_change())
}

/// `namespace/name`, as [`key`] gives for the object.
fn oref_key(oref: &ObjectRef<Guarded>) -> String {
    format!("{}/{}", oref.namespace.as_deref().unwrap_or_default(), oref.name)
}

fn start_monitor(state: &State, oref: ObjectRef<Guarded>, uid: String) -> MonitorHandle {
    let wake = Arc::new(Wake::default());
    let span = tracing::info_span!("monitor", cluster = %oref_key(&oref));
    let monitor = Monitor::new(
        state.ctx.clone(),
        state.store.clone(),
        state.pods.clone(),
        state.shared.clone(),
        oref.clone(),
        uid,
        wake.clone(),
    );
    MonitorHandle { task: tokio::spawn(tracing::Instrument::instrument(monitor.run(), span)), wake, oref }
}

/// A monitor ends by itself only when its cluster is gone. One that ended otherwise (a panic:
/// a bug, but one that must not leave a production cluster unmonitored until its object next
/// changes) is counted in `reconcile_errors{error="monitor-panic"}` and started again within a
/// second, from status, as after an operator restart.
async fn supervise(state: Arc<State>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let ended: Vec<(String, MonitorHandle)> = {
            let mut monitors = state.monitors.lock().expect("monitors lock");
            let done: Vec<String> =
                monitors.iter().filter(|(_, h)| h.task.is_finished()).map(|(uid, _)| uid.clone()).collect();
            done.into_iter().filter_map(|uid| monitors.remove(&uid).map(|h| (uid, h))).collect()
        };
        for (uid, handle) in ended {
            let panic = match futures::FutureExt::now_or_never(handle.task) {
                Some(Err(e)) if e.is_panic() => super::panic_message(e.into_panic().as_ref()),
                _ => continue,
            };
            let labels =
                crate::metrics::ErrorLabels { controller: "hacluster".into(), error: "monitor-panic".into() };
            state.ctx.metrics.reconcile_errors.get_or_create(&labels).inc();
            let current =
                state.store.get(&handle.oref).is_some_and(|o| o.uid().as_deref() == Some(uid.as_str()));
            if !current {
                warn!(cluster = %oref_key(&handle.oref), panic = %panic, "a monitor panicked; its cluster is gone");
                continue;
            }
            warn!(cluster = %oref_key(&handle.oref), panic = %panic, "a monitor panicked; starting it again");
            let mut monitors = state.monitors.lock().expect("monitors lock");
            monitors.entry(uid.clone()).or_insert_with(|| start_monitor(&state, handle.oref.clone(), uid));
        }
    }
}

fn error_policy(_obj: Arc<Guarded>, err: &Error, state: Arc<State>) -> Action {
    let kind = match err {
        Error::NoUid => "no-uid",
    };
    let labels = crate::metrics::ErrorLabels { controller: "hacluster".into(), error: kind.into() };
    state.ctx.metrics.reconcile_errors.get_or_create(&labels).inc();
    Action::requeue(Duration::from_secs(5))
}

fn ctrl_label() -> crate::metrics::ControllerLabels {
    crate::metrics::ControllerLabels { controller: "hacluster".into() }
}

/// What the monitor remembers about a member between heartbeats.
#[derive(Clone, Debug, Default)]
struct MemberState {
    endpoint: String,
    misses: u32,
    /// When the last counted miss was: misses count at most one per heartbeat interval.
    last_miss: Option<Instant>,
    probe: Option<Probe>,
    /// The offset of the successful probe before `probe`.
    offset_before: Option<i64>,
    unauthorized: bool,
    /// What an ambiguous answer to the latest probe said ([`EngineError::Ambiguous`]).
    ambiguous: Option<String>,
    last_ok: Option<Timestamp>,
    error: Option<String>,
    /// How the latest failed probe failed.
    last_fault: Option<Fault>,
    /// The latest answer said the member fences itself (kept while it does not answer).
    self_fencing: bool,
    /// The self-fencing setting last written to the member (min replicas, max lag).
    fencing_applied: Option<(u32, u32)>,
    /// Why the latest demotion or re-pointing of this member failed (cleared when one
    /// succeeds): in its status message, and logged as a warning once per distinct reason,
    /// not every heartbeat.
    action_error: Option<String>,
    /// Transactions the primary never had, from the latest attempt to attach the member
    /// (empty once one succeeds): the Degraded condition lists them.
    errant: Vec<String>,
}

impl MemberState {
    /// Transactions the member holds that the primary never had: what the latest attempt to
    /// attach it refused for, or what its replication stopped on.
    fn errant(&self) -> &[String] {
        if !self.errant.is_empty() {
            return &self.errant;
        }
        self.probe.as_ref().map_or(&[], |p| p.errant.as_slice())
    }
}

/// What an engine is built from: a change in any of it means a new engine.
#[derive(PartialEq)]
struct EngineInputs {
    kind: EngineKind,
    timeout: Duration,
    agent_lease: Option<Duration>,
    username: Option<String>,
    secret: Option<String>,
    ca: Option<Vec<u8>>,
}

/// A member as declared (static) or discovered (pods).
#[derive(Clone, Debug, Default)]
pub(super) struct Declared {
    pub shard: String,
    pub name: String,
    pub endpoint: String,
    /// `host:port` clients are routed to.
    pub route: String,
    pub node: Option<String>,
    pub priority: i32,
    /// Its pod is being deleted: still a member while it runs (a primary is moved off it,
    /// drained), never promoted, not routed as a replica.
    pub leaving: bool,
}

/// Reads and resourceVersion-guarded writes of one HaCluster's status, shared by its
/// monitor and the promotions it runs.
#[derive(Clone)]
pub(super) struct StatusHandle {
    ctx: Context,
    store: Store<Guarded>,
    pub oref: ObjectRef<Guarded>,
    uid: String,
    wake: Arc<Wake>,
    /// The newest object written through this handle, until the store shows it (the watch
    /// brings it back within milliseconds; it is trusted for at most [`WRITTEN_TRUSTED`]).
    pub written: Option<HaCluster>,
    written_at: Option<Instant>,
    /// The store's resourceVersion when we wrote: while the store still shows that copy,
    /// ours is newer; once it shows any other, another write may have come after ours (a
    /// lock, a published standby relation), and the store's copy is used.
    written_over: Option<String>,
}

/// How long a copy we wrote is preferred to the store's: resourceVersions are opaque, so
/// which of two copies is newer is known only when the store shows ours.
const WRITTEN_TRUSTED: Duration = Duration::from_secs(2);

impl StatusHandle {
    /// The newest copy of the cluster: the store's, or ours if we wrote after it. None when
    /// this incarnation (uid) of the cluster is gone.
    pub fn latest(&self) -> Option<HaCluster> {
        let stored = self.store.get(&self.oref)?.0.clone().ok()?;
        if stored.uid().as_deref() != Some(self.uid.as_str()) {
            return None;
        }
        match (&self.written, self.written_at) {
            // Until the store moves on from the copy we wrote over, ours is newer — unless
            // the spec moved on (a spec edit bumps the generation; status writes do not).
            // resourceVersions are opaque: a store that shows a copy other than that one
            // and ours may show a write made after ours, so it is not second-guessed.
            (Some(w), Some(at))
                if w.resource_version() != stored.resource_version()
                    && stored.resource_version() == self.written_over
                    && w.metadata.generation >= stored.metadata.generation
                    && at.elapsed() < WRITTEN_TRUSTED =>
            {
                Some(w.clone())
            }
            _ => Some(stored),
        }
    }

    /// Forget our copy once the store shows it (or it is too old to trust).
    fn settle(&mut self) {
        let caught_up = self.written.as_ref().is_some_and(|w| {
            self.store.get(&self.oref).is_some_and(|s| s.resource_version() == w.resource_version())
        });
        if caught_up || self.written_at.is_none_or(|at| at.elapsed() >= WRITTEN_TRUSTED) {
            self.written = None;
            self.written_at = None;
            self.written_over = None;
        }
    }

    /// The resourceVersion of the store's copy.
    fn stored_version(&self) -> Option<String> {
        self.store.get(&self.oref).and_then(|s| s.resource_version())
    }

    fn wrote(&mut self, written: HaCluster, over: Option<String>) {
        self.wake.remember(written.resource_version());
        self.written = Some(written);
        self.written_at = Some(Instant::now());
        self.written_over = over;
    }

    /// The cluster read from the API server.
    pub async fn fetch(&self) -> Option<HaCluster> {
        let api: Api<HaCluster> =
            Api::namespaced(self.ctx.client.clone(), self.oref.namespace.as_deref().unwrap_or_default());
        api.get_opt(&self.oref.name).await.ok().flatten()
    }

    /// Replace the status with resourceVersion (optimistic concurrency).
    pub async fn replace(&mut self, next: &HaCluster) -> Result<(), kube::Error> {
        let api: Api<HaCluster> =
            Api::namespaced(self.ctx.client.clone(), self.oref.namespace.as_deref().unwrap_or_default());
        let over = self.stored_version();
        let written = {
            let _slot = self.ctx.decision_slots.acquire().await.expect("never closed");
            api.replace_status(&self.oref.name, &super::put_params(), next).await?
        };
        // Before the watch brings our own write back: it must not wake the monitor.
        self.wrote(written, over);
        Ok(())
    }

    /// Server-side apply of the observed part of the status ([`observed_part`]) under the
    /// monitor's own field manager: no resourceVersion, so it never conflicts with (and can
    /// never overwrite) the lock, epoch, target or failover record that the compare-and-set
    /// path ([`Self::replace`]) owns. The API server takes no uid precondition on an apply,
    /// so it is written only while the store shows this incarnation of the cluster.
    pub async fn apply_observed(&mut self, status: &HaClusterStatus) -> Result<(), kube::Error> {
        let api: Api<HaCluster> =
            Api::namespaced(self.ctx.client.clone(), self.oref.namespace.as_deref().unwrap_or_default());
        if self.latest().is_none() {
            return Ok(());
        }
        let body = observed_part(status);
        let over = self.stored_version();
        let written = {
            let _slot = self.ctx.api_slots.acquire().await.expect("never closed");
            let pp = PatchParams::apply(OBSERVER).force();
            api.patch_status(&self.oref.name, &pp, &Patch::Apply(&body)).await?
        };
        self.wrote(written, over);
        Ok(())
    }

    /// Take what a promotion wrote: it finished after anything this handle wrote before the
    /// promotion started; a later write of ours would have conflicted with it.
    fn adopt(&mut self, other: Option<HaCluster>) {
        if let Some(o) = other {
            let over = self.stored_version();
            self.written = Some(o);
            self.written_at = Some(Instant::now());
            self.written_over = over;
        }
    }
}

struct Monitor {
    ctx: Context,
    store: Store<Guarded>,
    pods: Store<Pod>,
    shared: Shared,
    oref: ObjectRef<Guarded>,
    uid: String,
    members: HashMap<String, MemberState>,
    last_primary_offset: HashMap<String, i64>,
    lost_since: HashMap<String, Instant>,
    engine: Option<Arc<dyn Engine>>,
    /// What the current engine was built from.
    engine_inputs: Option<EngineInputs>,
    /// Status reads and writes (and the newest copy this monitor wrote).
    status: StatusHandle,
    /// Promotions in flight, one task per shard.
    ops: HashMap<String, (Instant, tokio::task::JoinHandle<()>)>,
    done_tx: tokio::sync::mpsc::UnboundedSender<OpDone>,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<OpDone>,
    last_routes: Option<routing::Routes>,
    /// What the agent redirect ConfigMap was last written (or found) to say, and when it was
    /// last read back.
    last_redirect: Option<Vec<(String, String)>>,
    redirect_checked_at: Option<Instant>,
    config_error: Option<(Reason, String)>,
    pod_services_generation: Option<i64>,
    /// Standby clusters: the upstream primary each shard follows, as this heartbeat resolved
    /// it (shards without one are in `upstream_unknown`, with why).
    upstream_seen: BTreeMap<String, String>,
    upstream_unknown: BTreeMap<String, String>,
    /// A production cluster of a ProtectionGroup whose other site acts as a primary (a
    /// forced failover made it production while this site was cut off): that primary's
    /// endpoint, by shard (each shard follows its own counterpart's primary; a cluster told
    /// no shards follows the one primary with all of them). Those shards then behave as a
    /// standby of it.
    superseded_by: BTreeMap<String, String>,
    /// The other site's shard of each endpoint this cluster yields to
    /// (`status.protection.yieldToShards`); empty: any of them for every shard.
    yield_shards: HashMap<String, String>,
    /// Whom this cluster yields to, for messages: the other site of its ProtectionGroup, or
    /// the cluster a failover to primary made production in its place.
    yield_source: String,
    /// The current members of the cluster named by status.supersededBy, read at most every
    /// [`SUPERSEDER_REFRESH`]: (cluster, read at, endpoints; None: it does not exist).
    superseder_members: Option<(String, Instant, Option<Vec<String>>)>,
    /// The group's contact renewal (`status.protection.contactAt`) last seen, and when this
    /// monitor saw it change (None: not since it started). Its own clock only.
    contact_seen: Option<(Option<Time>, Option<Instant>)>,
    wake: Arc<Wake>,
    /// Metric series this monitor created, removed when their member or the cluster goes.
    exported_members: HashSet<MemberLabels>,
    exported_shards: HashSet<ShardLabels>,
    /// No stale Endpoints/EndpointSlices of a formerly selector Service are left (pod members).
    foreign_endpoints_checked: bool,
    /// What the last routing write could not do (names taken by objects this cluster does
    /// not own, endpoints Kubernetes cannot route to, clientAddress not allowed): the
    /// `Routed` condition.
    routing_problems: BTreeMap<Reason, String>,
    /// Shards whose lost primary could not be fenced (onTimeout: Abort): no automatic
    /// failover past it until it answers again.
    unfenced: HashMap<String, String>,
    /// When this monitor last wrote the observed status.
    observed_written_at: Option<Instant>,
    /// Old primaries a promotion passed while they did not answer, with a demotion queued on
    /// them (shard, member, its offset when that demotion runs).
    thaw_watches: Vec<(String, String, tokio::sync::oneshot::Receiver<i64>)>,
    /// Shards whose promotion failed and stays recorded: retried no sooner than this (by the
    /// next heartbeat), not at once each time the failed attempt wakes the monitor.
    retry_at: HashMap<String, Instant>,
}

impl Monitor {
    fn new(
        ctx: Context,
        store: Store<Guarded>,
        pods: Store<Pod>,
        shared: Shared,
        oref: ObjectRef<Guarded>,
        uid: String,
        wake: Arc<Wake>,
    ) -> Self {
        let status = StatusHandle {
            ctx: ctx.clone(),
            store: store.clone(),
            oref: oref.clone(),
            uid: uid.clone(),
            wake: wake.clone(),
            written: None,
            written_at: None,
            written_over: None,
        };
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            pods,
            shared,
            ctx,
            store,
            oref,
            uid,
            status,
            ops: HashMap::new(),
            done_tx,
            done_rx,
            members: HashMap::new(),
            last_primary_offset: HashMap::new(),
            lost_since: HashMap::new(),
            engine: None,
            engine_inputs: None,
            last_routes: None,
            last_redirect: None,
            redirect_checked_at: None,
            config_error: None,
            pod_services_generation: None,
            upstream_seen: BTreeMap::new(),
            upstream_unknown: BTreeMap::new(),
            superseded_by: BTreeMap::new(),
            yield_shards: HashMap::new(),
            yield_source: String::new(),
            superseder_members: None,
            contact_seen: None,
            wake,
            exported_members: HashSet::new(),
            exported_shards: HashSet::new(),
            foreign_endpoints_checked: false,
            routing_problems: BTreeMap::new(),
            unfenced: HashMap::new(),
            observed_written_at: None,
            thaw_watches: Vec::new(),
            retry_at: HashMap::new(),
        }
    }

    /// The newest copy of the cluster (see [`StatusHandle::latest`]).
    fn latest(&self) -> Option<HaCluster> {
        self.status.latest()
    }

    async fn run(mut self) {
        self.ctx.metrics.monitors.inc();
        let _running = MonitorCount(self.ctx.metrics.monitors.clone());
        loop {
            self.status.settle();
            let Some(cluster) = self.latest() else {
                // The monitor is started from the object in the store, so the store knows it;
                // absent, or under the same name with another uid (deleted and created again,
                // which has a monitor of its own), this incarnation is gone.
                let why = match self.store.get(&self.oref) {
                    None => "cluster deleted",
                    Some(o) if o.uid().as_deref() != Some(self.uid.as_str()) => {
                        "cluster deleted and recreated"
                    }
                    Some(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                info!(cluster = %self.oref, "stopping monitor: {why}");
                self.ctx.forget_routed(&self.uid);
                self.keep_member_series(HashSet::new());
                for labels in std::mem::take(&mut self.exported_shards) {
                    self.ctx.metrics.epoch.remove(&labels);
                }
                return;
            };
            let interval = cluster.spec.failover.heartbeat_interval.0.max(Duration::from_millis(100));
            // Pod members come from the pod reflector: until its first list has arrived, the
            // membership would look empty and the routing written from it would take the
            // primary out of its Service (seen when a new leader took over mid-operation).
            if cluster.pod_membership().is_some()
                && !matches!(futures::FutureExt::now_or_never(self.pods.wait_until_ready()), Some(Ok(())))
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let started = Instant::now();
            self.wake.remember(cluster.resource_version());
            // Boxed: the heartbeat's state lives on the heap only while it runs, so an idle
            // monitor holds a few hundred bytes instead of the largest await state (~19 KB).
            crate::faults::panic_point("monitor-tick");
            Box::pin(self.tick(cluster)).await;
            tokio::select! {
                () = tokio::time::sleep(interval.saturating_sub(started.elapsed())) => {}
                () = self.wake.notify.notified() => {}
            }
        }
    }

    fn declared(&self, cluster: &HaCluster) -> Vec<Declared> {
        if let Some(sel) = cluster.pod_membership().as_deref() {
            let ns = cluster.namespace();
            let mut pods: Vec<Arc<Pod>> = self
                .pods
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns)
                .filter(|p| sel.match_labels.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
                .collect();
            pods.sort_by_key(|p| p.name_any());
            return pods.iter().filter_map(|p| pod_member(p, sel)).collect();
        }
        let mut out = Vec::new();
        for s in cluster.spec.shards.iter().flatten() {
            for m in &s.members {
                let route = routing::route_of(m, self.ctx.allow_client_address);
                out.push(Declared {
                    shard: s.name.clone(),
                    name: m.name.clone(),
                    endpoint: m.endpoint.clone(),
                    route,
                    node: m.node.clone(),
                    priority: m.priority,
                    leaving: false,
                });
            }
        }
        out
    }

    fn shard_names(cluster: &HaCluster, declared: &[Declared]) -> Vec<String> {
        if cluster.pod_membership().is_some() {
            let mut names: Vec<String> = declared.iter().map(|d| d.shard.clone()).collect();
            names.sort();
            names.dedup();
            return names;
        }
        cluster.spec.shards.iter().flatten().map(|s| s.name.clone()).collect()
    }

    /// A standby: of its upstream, or of the other site's primary once superseded (any shard).
    fn is_standby(&self, cluster: &HaCluster) -> bool {
        cluster.standby().is_some() || !self.superseded_by.is_empty() || cluster.detached()
    }

    /// Whether this shard is a standby: the cluster's, or superseded itself.
    fn shard_standby(&self, cluster: &HaCluster, shard: &str) -> bool {
        cluster.standby().is_some() || self.superseded_by.contains_key(shard) || cluster.detached()
    }

    /// The members to watch, should one act as a primary: for a production cluster of a
    /// ProtectionGroup the other site's (`status.protection.yieldTo`) — except while the group
    /// itself holds the lock, as a planned move makes the other site primary on purpose and
    /// publishes the relation before it lets go; for the old upstream of a standby a
    /// FailoverRequest made production, that cluster's (`status.supersededBy`: its members'
    /// current endpoints while it exists, the recorded ones otherwise). None otherwise (and
    /// the cluster is not superseded).
    async fn yield_targets(&mut self, cluster: &HaCluster) -> Option<Vec<String>> {
        let status = cluster.status.as_ref();
        let protection = status.and_then(|s| s.protection.as_ref());
        // The group's contact renewal, watched whatever the relation: a change seen is contact.
        let contact = protection.and_then(|p| p.contact_at.clone());
        let seen = match self.contact_seen.take() {
            Some((before, at)) if before == contact => (before, at),
            Some(_) => (contact, Some(Instant::now())),
            None => (contact, None),
        };
        let vouched = seen.0.is_some() && seen.1.is_some_and(|at| at.elapsed() < CONTACT_LEASE);
        self.contact_seen = Some(seen);
        if let Some(p) = protection.filter(|p| p.standby.is_none() && !p.yield_to.is_empty()) {
            let group_moving = status.iter().flat_map(|s| &s.shards).any(|s| {
                s.operation.as_ref().is_some_and(|l| {
                    matches!(
                        l.kind.as_str(),
                        super::protection_group::LOCK_KIND | super::protection_group::REMOTE_LOCK_KIND
                    ) && l.expires_at.0 > Timestamp::now()
                })
            });
            self.yield_source = format!("the other site of ProtectionGroup {}", p.group);
            // The group in contact vouches for the other site: it decides, the members' roles
            // there are not followed on sight.
            if vouched {
                return None;
            }
            self.yield_shards = p
                .yield_to_shards
                .iter()
                .flat_map(|y| y.members.iter().map(|m| (m.clone(), y.shard.clone())))
                .collect();
            return (!group_moving).then(|| p.yield_to.clone());
        }
        let record = status.and_then(|s| s.superseded_by.as_ref());
        self.yield_shards.clear();
        let Some(r) = record.filter(|_| protection.is_none() && cluster.standby().is_none()) else {
            self.superseded_by.clear();
            self.superseder_members = None;
            return None;
        };
        self.yield_source =
            format!("HaCluster {}, made production in this cluster's place by {}", r.cluster, r.by);
        let fresh = self
            .superseder_members
            .as_ref()
            .is_some_and(|(c, at, _)| c == &r.cluster && at.elapsed() < SUPERSEDER_REFRESH);
        if !fresh {
            let (ns, name) = r.cluster.split_once('/').unwrap_or_default();
            // Unreadable now: those read before (or the recorded ones) still count.
            if let Ok(found) = Api::<HaCluster>::namespaced(self.ctx.client.clone(), ns).get_opt(name).await {
                let endpoints = found.map(|c| {
                    c.status
                        .iter()
                        .flat_map(|st| &st.shards)
                        .flat_map(|s| &s.members)
                        .filter_map(|m| m.endpoint.clone())
                        .collect()
                });
                self.superseder_members = Some((r.cluster.clone(), Instant::now(), endpoints));
            }
        }
        // While that cluster exists, its members now: pod addresses change and are reused,
        // so a recorded one is not trusted once the cluster says otherwise. Until it can be
        // read, and once it is deleted (its servers may well still run: deleting an HaCluster
        // stops nothing), what was recorded — never two writable clusters on a guess.
        let mut targets = match &self.superseder_members {
            Some((c, _, Some(current))) if c == &r.cluster => current.clone(),
            _ => r.members.clone(),
        };
        targets.sort();
        targets.dedup();
        Some(targets)
    }

    /// Whether a member of the other site of this production cluster's ProtectionGroup acts
    /// as a primary (`found`, probed beside the members every heartbeat, so before any
    /// promotion here), by shard: a shard told its counterpart's members follows a primary
    /// among them, a cluster told no shards follows the one primary with all of them. Once
    /// superseded a shard follows that primary until the group publishes the relation.
    async fn superseded(
        &mut self,
        cluster: &HaCluster,
        other: OtherSite,
        shards: &[String],
    ) -> BTreeMap<String, String> {
        for shard in shards {
            let found = standby::superseding_primary(shard, &other.primaries, &self.yield_shards);
            let before = self.superseded_by.get(shard).cloned();
            // The member it followed answers, and not as a primary: the other site stepped
            // down (moved back, or its relation was restored); the shard decides for itself
            // again.
            if found.is_none()
                && let Some(by) = before.as_ref().filter(|by| other.not_primary.contains(by))
            {
                info!(cluster = %key(cluster), %shard, member = %by, "the other site's member no longer acts as a primary; no longer following it");
                self.superseded_by.remove(shard);
            }
            if let Some(by) = found.as_ref().filter(|f| Some(*f) != before.as_ref()) {
                let source = &self.yield_source;
                let which = if shards.len() > 1 { format!("shard {shard}: ") } else { String::new() };
                warn!(cluster = %key(cluster), %shard, primary = %by, %source, "a member of the cluster made production in this one's place acts as a primary: following it, nothing here is writable");
                self.ctx
                    .event(
                        cluster,
                        true,
                        Reason::SiteSuperseded,
                        EventAction::Fence,
                        format!(
                            "{which}{by}, of {source}, acts as a primary (it was made production while this cluster was cut off or lost): this cluster follows it and nothing here is made writable"
                        ),
                    )
                    .await;
            }
            // Once superseded it stays so while the other primary answers as one; if it stops
            // answering the shard stays a standby of it (never writable on a guess) until it
            // answers as something else or the group publishes the relation.
            if let Some(by) = found {
                self.superseded_by.insert(shard.clone(), by);
            }
        }
        self.superseded_by.retain(|s, _| shards.contains(s));
        self.superseded_by.clone()
    }

    fn policy(cluster: &HaCluster, engine: &dyn Engine, upstream: Option<String>, standby: bool) -> Policy {
        let f = &cluster.spec.failover;
        Policy {
            automatic: f.mode == FailoverMode::Automatic,
            paused: cluster.spec.paused,
            failure_threshold: f.failure_threshold.max(1) as u32,
            failover_delay: f.failover_delay.0,
            max_lag: f.max_lag_on_failover,
            follows_directly: engine.follows_directly(),
            standby,
            upstream,
            upstream_unknown: None,
            detached: cluster.detached(),
            awaiting_group: None,
        }
    }

    /// A standby cluster's upstream, shard by shard: the primary endpoint of the same shard
    /// of the HaCluster it follows (read from that cluster's status; see
    /// [`standby::pair_shards`]), or the fixed `primaryEndpoint` for a one-shard cluster.
    /// Empty for a cluster that is not a standby.
    async fn upstreams(
        &self,
        cluster: &HaCluster,
        shards: &[String],
    ) -> Vec<(String, Result<String, String>)> {
        let Some(standby) = cluster.standby() else { return Vec::new() };
        if let Some(ep) = &standby.primary_endpoint {
            return standby::pair_endpoint(shards, ep);
        }
        if !standby.shard_endpoints.is_empty() {
            let theirs: Vec<(String, String)> =
                standby.shard_endpoints.iter().map(|e| (e.shard.clone(), e.endpoint.clone())).collect();
            return standby::pair_shard_endpoints(shards, &theirs);
        }
        let all = |why: String| shards.iter().map(|s| (s.clone(), Err(why.clone()))).collect();
        let Some(name) = standby.cluster.as_ref() else {
            return all("spec.standby names neither a cluster nor a primaryEndpoint".into());
        };
        let ns = standby.namespace.clone().or_else(|| cluster.namespace()).unwrap_or_default();
        let what = format!("HaCluster {ns}/{name}");
        let other = match Api::<HaCluster>::namespaced(self.ctx.client.clone(), &ns).get_opt(name).await {
            Ok(Some(o)) => o,
            Ok(None) => return all(format!("{what} does not exist")),
            Err(e) => return all(format!("{what} cannot be read: {e}")),
        };
        let theirs: Vec<standby::UpstreamShard> = other
            .status
            .iter()
            .flat_map(|st| &st.shards)
            .map(|s| standby::UpstreamShard {
                name: s.name.clone(),
                primary: s
                    .current_primary
                    .as_ref()
                    .filter(|_| s.target_primary.is_none())
                    .and_then(|p| s.members.iter().find(|m| &m.name == p))
                    .and_then(|m| m.endpoint.clone()),
            })
            .collect();
        standby::pair_shards(shards, &what, &theirs)
    }

    /// The engine for what the spec and the Secret say now. The Secret comes from the shared
    /// cache (re-read every [`SecretCache::TTL`], or every few seconds while members refuse
    /// the credentials); the engine is rebuilt only when its inputs changed, so kept-alive
    /// connections survive quiet heartbeats.
    async fn ensure_engine(&mut self, cluster: &HaCluster) -> bool {
        let ns = cluster.namespace().unwrap_or_default();
        let default_key = cluster.spec.engine.secret_key();
        // Actions (promote, follow, pause) get the step timeout; probes are cut shorter in
        // probe_all so a heartbeat never outlasts its interval.
        let timeout = cluster.spec.failover.step_timeout.0.max(Duration::from_millis(200));
        let refused = self.members.values().any(|m| m.unauthorized);
        let max_age = if refused { SecretCache::REFUSED_TTL } else { SecretCache::TTL };
        let policy = &cluster.spec.failover;
        let agent_lease =
            policy.agent_lease.as_ref().map(|l| l.0).filter(|_| cluster.spec.engine == EngineKind::Agent);
        if let Some(lease) = agent_lease
            && let Err(why) = crate::core::lease::check(
                lease,
                policy.heartbeat_interval.0,
                policy.failure_threshold.max(1) as u32,
                policy.failover_delay.0,
            )
        {
            self.config_error = Some((
                Reason::InvalidAgentLease,
                format!("{why}; the operator does not touch the members until it is fixed"),
            ));
            self.engine = None;
            return false;
        }
        match cached_credentials(&self.ctx, &ns, cluster.spec.secret_ref.as_ref(), default_key, max_age).await
        {
            Ok((creds, ca)) => {
                let inputs = EngineInputs {
                    kind: cluster.spec.engine,
                    timeout,
                    agent_lease,
                    username: creds.username.clone(),
                    secret: creds.secret.clone(),
                    ca: ca.clone(),
                };
                if self.engine.is_none() || self.engine_inputs.as_ref() != Some(&inputs) {
                    self.engine = Some(Arc::from(engines::for_cluster(
                        cluster.spec.engine,
                        creds,
                        ca.as_deref(),
                        timeout,
                        agent_lease,
                    )));
                    self.engine_inputs = Some(inputs);
                }
                self.config_error = None;
                true
            }
            Err(e @ (super::CredentialsError::NotFound(_) | super::CredentialsError::MissingKey { .. })) => {
                self.config_error = Some((
                    Reason::SecretNotFound,
                    format!("{e}; the operator does not touch the members until it exists"),
                ));
                self.engine = None;
                false
            }
            Err(e) => {
                // API trouble: keep using the engine we have, if any.
                warn!(cluster = %self.oref, error = %e, "could not read credentials");
                self.engine.is_some()
            }
        }
    }

    async fn tick(&mut self, cluster: HaCluster) {
        let declared = self.declared(&cluster);
        self.collect_done(&declared).await;
        // Finished promotions may have written status: go on from the newest copy.
        let cluster = self.latest().unwrap_or(cluster);
        self.forget_stale_records(&cluster).await;
        let cluster = self.latest().unwrap_or(cluster);
        if !self.ensure_engine(&cluster).await {
            self.write_status(&cluster, &[]).await;
            return;
        }
        let engine = self.engine.clone().expect("ensured");
        // Tests widen the window between reading the cluster and probing its members here.
        crate::faults::delay_point("heartbeat-after-read").await;
        self.detach_removed(engine.as_ref(), &cluster, &declared).await;
        // The other site of a ProtectionGroup is probed beside the members, so an unreachable
        // site does not lengthen the heartbeat.
        let others = self.yield_targets(&cluster).await;
        let timeout = cluster.spec.failover.heartbeat_interval.0.max(Duration::from_millis(200));
        let (_, acting) = futures::join!(
            self.probe_all(engine.as_ref(), &declared, &cluster),
            acting_primary(engine.as_ref(), others.as_deref().unwrap_or_default(), timeout)
        );
        self.keep_self_fencing(engine.as_ref(), &declared, &cluster).await;
        self.start_stalled_streams(engine.as_ref(), &declared, &cluster).await;
        let shards = Self::shard_names(&cluster, &declared);
        // The relation (standby or not, of whom, yielding to whom) this heartbeat resolves
        // its upstreams and policies from.
        let relation = |c: &HaCluster| {
            (
                c.standby().cloned(),
                c.detached(),
                c.status.as_ref().and_then(|s| s.protection.as_ref().map(|p| p.relation())),
            )
        };
        let relation_at_start = relation(&cluster);
        let superseded = self.superseded(&cluster, acting, &shards).await;
        let mut upstreams = self.upstreams(&cluster, &shards).await;
        upstreams.retain(|(s, _)| !superseded.contains_key(s));
        upstreams.extend(superseded.into_iter().map(|(s, by)| (s, Ok(by))));
        self.upstream_seen.clear();
        self.upstream_unknown.clear();
        for (shard, to) in upstreams {
            match to {
                Ok(ep) => self.upstream_seen.insert(shard, ep),
                Err(why) => self.upstream_unknown.insert(shard, why),
            };
        }
        let awaiting_group = self.awaiting_group(&cluster, &shards);
        let shard_policy = |me: &Self, shard: &str| {
            let standby = me.shard_standby(&cluster, shard);
            let mut p =
                Self::policy(&cluster, engine.as_ref(), me.upstream_seen.get(shard).cloned(), standby);
            p.upstream_unknown = me.upstream_unknown.get(shard).cloned();
            p.awaiting_group = awaiting_group.clone();
            p
        };

        let mut plans = HashMap::new();
        let mut spawned = false;
        for shard_name in shards {
            let policy = shard_policy(self, &shard_name);
            if self.ops.contains_key(&shard_name) {
                // A promotion of this shard is under way in its own task: it owns the roles.
                plans.insert(shard_name, Plan::default());
                continue;
            }
            // Earlier shards may have written status: decide on the newest copy.
            let cluster = self.latest().unwrap_or_else(|| cluster.clone());
            // ... but only if its relation is still the one the policy was made from: a
            // ProtectionGroup that reverses the relation and then releases its lock between
            // the two reads would otherwise have its freshly promoted primary fenced to
            // follow the old upstream (seen in CI: a forced failover's new Mysql primary made
            // read-only, then replaced). The next heartbeat decides on the new relation.
            if relation(&cluster) != relation_at_start {
                debug!(cluster = %key(&cluster), shard = %shard_name, "the standby relation changed during the heartbeat; deciding on it next heartbeat");
                plans.insert(shard_name, Plan::default());
                continue;
            }
            let facts = self.facts(&cluster, &shard_name, &declared);
            let plan = shard::plan(&facts, &policy);
            let mut busy = shard_status(&cluster, &shard_name)
                .and_then(|s| s.operation.clone())
                .filter(|l| l.kind != LOCK_KIND && l.expires_at.0 > Timestamp::now());
            // A lock whose holder object is gone is released (looked up only while a lock
            // is held, so a quiet cluster costs nothing).
            if let Some(lock) = &busy
                && !super::operation::holder_exists(&self.ctx.client, Some(lock)).await
            {
                info!(cluster = %key(&cluster), shard = %shard_name, holder = %lock.name, "releasing a lock whose holder is gone");
                if let Some(uid) = &lock.uid
                    && super::operation::release(
                        &Api::namespaced(self.ctx.client.clone(), &cluster.namespace().unwrap_or_default()),
                        &cluster.name_any(),
                        uid,
                    )
                    .await
                    .is_ok()
                {
                    busy = None;
                    let fresh = self.fetch().await;
                    self.status.adopt(fresh);
                }
            }
            if let Some(lock) = busy {
                // Another operation owns the shard's roles. Only the promotion it recorded
                // (target + epoch) is carried out here; nothing else is touched.
                let mut plan = plan;
                let requested = plan.promote.take().filter(|p| p.kind == PromotionKind::Resume);
                let p = Plan {
                    blocked: requested.is_none().then(|| shard::Blocked {
                        reason: Reason::DatabaseBusy,
                        message: format!("{} {} holds the shard's operation lock", lock.kind, lock.name),
                    }),
                    ..Plan::default()
                };
                if let Some(mut promotion) = requested {
                    promotion.reason = format!(
                        "requested by {} {}{}",
                        lock.kind,
                        lock.name,
                        if lock.force { " (forced: the old primary is fenced, not drained)" } else { "" }
                    );
                    spawned |= self.spawn_promotion(&engine, &cluster, &shard_name, &declared, promotion);
                }
                plans.insert(shard_name, p);
                continue;
            }
            self.apply_repairs(engine.as_ref(), &cluster, &shard_name, &declared, &plan).await;
            if let Some(promotion) = plan.promote.clone() {
                spawned |= self.spawn_promotion(&engine, &cluster, &shard_name, &declared, promotion);
            }
            plans.insert(shard_name, plan);
        }
        let Some(cluster) = self.latest() else { return };
        // A promotion just started records its decision now: the observed status waits for
        // the next heartbeat rather than race that write.
        if spawned {
            return;
        }
        let mut blocks: Vec<(String, Reason, String)> = plans
            .iter()
            .filter_map(|(shard, plan)| {
                plan.blocked.as_ref().map(|b| (shard.clone(), b.reason, b.message.clone()))
            })
            .collect();
        // Stable order: the Ready message names the first and must not flap between writes.
        blocks.sort();
        self.write_status(&cluster, &blocks).await;
        if let Some(cluster) = self.latest() {
            self.update_routing(&cluster, &declared).await;
        }
    }

    /// Records of other operations that say nothing any more, removed (one
    /// resourceVersion-guarded write, retried next heartbeat on a conflict):
    /// - status.standbyReleased, once spec.standby no longer names the relation a failover to
    ///   primary ended (removed, or another upstream), so that naming the same upstream again
    ///   later makes the cluster a standby again — only while no operation holds a lock (a
    ///   FailoverRequest rolling back removes its own record);
    /// - status.supersededBy, once the cluster has a standby relation again (spec.standby or
    ///   a ProtectionGroup): it follows what that says, not the cluster that superseded it.
    async fn forget_stale_records(&mut self, cluster: &HaCluster) {
        let Some(st) = cluster.status.as_ref() else { return };
        let stale_release = st.standby_released.as_ref().filter(|r| {
            cluster.spec.standby.as_ref() != Some(&r.standby)
                && !st.shards.iter().any(|s| s.operation.is_some() || s.target_primary.is_some())
        });
        let stale_supersession =
            st.superseded_by.as_ref().filter(|_| st.protection.is_some() || cluster.standby().is_some());
        if stale_release.is_none() && stale_supersession.is_none() {
            return;
        }
        let mut next = cluster.clone();
        if let Some(s) = next.status.as_mut() {
            if stale_release.is_some() {
                s.standby_released = None;
            }
            if stale_supersession.is_some() {
                s.superseded_by = None;
            }
        }
        match self.replace_status(&next).await {
            Ok(()) => {
                if let Some(r) = stale_release {
                    info!(cluster = %key(cluster), by = %r.by, "spec.standby no longer names the relation a failover ended; its record is cleared");
                }
                if let Some(r) = stale_supersession {
                    info!(cluster = %key(cluster), by = %r.by, superseded_by = %r.cluster, "the cluster has a standby relation again; the record of its supersession is cleared");
                }
            }
            Err(e) => {
                debug!(cluster = %key(cluster), error = %e, "could not clear a stale record; retried next heartbeat")
            }
        }
    }

    /// A cluster that has no relation yet (no `status.protection`, no `spec.standby`) and a
    /// shard without a primary, that a ProtectionGroup of this control plane protects as its
    /// DR side: what names it. Its first election waits for the group to publish its side — a
    /// DR cluster created or re-created under a group would otherwise elect a writable primary
    /// of its own until then (a second writable site). Until the groups' first list has
    /// arrived it waits too: the election is not made on a guess. A group in another control
    /// plane cannot be seen from here (README).
    fn awaiting_group(&self, cluster: &HaCluster, shards: &[String]) -> Option<String> {
        let st = cluster.status.as_ref();
        if cluster.spec.standby.is_some() || st.is_some_and(|s| s.protection.is_some()) {
            return None;
        }
        let has_primary = |shard: &String| {
            st.and_then(|s| s.shards.iter().find(|x| &x.name == shard))
                .is_some_and(|x| x.current_primary.is_some() || x.target_primary.is_some())
        };
        if shards.iter().all(has_primary) {
            return None;
        }
        let Some(groups) = self.shared.groups() else {
            return Some(
                "the ProtectionGroups have not been listed yet (one may protect this cluster)".into(),
            );
        };
        let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
        groups.iter().find_map(|g| {
            let pg = g.0.as_ref().ok().filter(|pg| pg.metadata.deletion_timestamp.is_none())?;
            let side = pg.holds_as_dr(&ns, &name)?;
            Some(format!("ProtectionGroup {} protects this cluster as {side}", key(pg)))
        })
    }

    /// Members removed from the membership are detached: fenced (no longer replicating, no
    /// longer writable) and forgotten. A removed primary is fenced too; the shard then fails
    /// over to a remaining member, so it never runs on as an unmanaged second primary.
    async fn detach_removed(&mut self, engine: &dyn Engine, cluster: &HaCluster, declared: &[Declared]) {
        let removed: Vec<(String, String)> = self
            .members
            .iter()
            .filter(|(name, _)| !declared.iter().any(|d| &d.name == *name))
            .map(|(n, m)| (n.clone(), m.endpoint.clone()))
            .collect();
        if cluster.spec.paused {
            for (name, _) in removed {
                self.members.remove(&name);
            }
            return;
        }
        // At once and bounded by a heartbeat: a removed member is usually a pod that is gone,
        // whose address no longer answers, and waiting on it (a connect timeout each, one
        // after the other) held up this monitor's heartbeats — measured: 20 s without probes
        // after two replicas were removed, during which an evicted primary was not moved off.
        let timeout = cluster.spec.failover.heartbeat_interval.0.max(Duration::from_millis(200));
        let demoted = futures::future::join_all(removed.iter().map(|(_, endpoint)| async move {
            tokio::time::timeout(timeout, engine.demote(endpoint))
                .await
                .unwrap_or_else(|_| Err(EngineError::Timeout { endpoint: endpoint.clone(), timeout }))
        }))
        .await;
        for ((name, _), result) in removed.into_iter().zip(demoted) {
            match result {
                Ok(()) => {
                    info!(cluster = %key(cluster), member = %name, "detached a member removed from the membership");
                    self.ctx
                        .event(
                            cluster,
                            false,
                            Reason::MemberDetached,
                            EventAction::Detach,
                            format!("{name} was removed from the membership and detached"),
                        )
                        .await;
                }
                Err(e) => {
                    warn!(cluster = %key(cluster), member = %name, error = %e, "removed member could not be detached (unreachable); it is out of routing")
                }
            }
            self.members.remove(&name);
        }
    }

    async fn probe_all(&mut self, engine: &dyn Engine, declared: &[Declared], cluster: &HaCluster) {
        let probe_timeout = cluster.spec.failover.heartbeat_interval.0.max(Duration::from_millis(200));
        let threshold = cluster.spec.failover.failure_threshold.max(1) as u32;
        // A monitor also probes when woken between heartbeats (a spec edit, a pod event, an
        // operation's lock). Those probes may clear misses but count at most one miss per
        // heartbeat interval: `failureThreshold` misses always span the window the spec
        // promises (threshold − 1 intervals after the first miss), however often it is woken.
        let miss_spacing =
            cluster.spec.failover.heartbeat_interval.0.mul_f64(crate::core::lease::MISS_SPACING);
        let probes = futures::future::join_all(declared.iter().map(|d| async {
            tokio::time::timeout(probe_timeout, engine.probe(&d.endpoint)).await.unwrap_or_else(|_| {
                Err(EngineError::Timeout { endpoint: d.endpoint.clone(), timeout: probe_timeout })
            })
        }))
        .await;
        let ns = cluster.namespace().unwrap_or_default();
        let mut current = HashSet::new();
        for (d, result) in declared.iter().zip(probes) {
            let st = self.members.entry(d.name.clone()).or_default();
            st.endpoint.clone_from(&d.endpoint);
            let up = match result {
                Ok(p) => {
                    self.unfenced.retain(|_, m| m != &d.name);
                    st.misses = 0;
                    st.last_miss = None;
                    st.unauthorized = false;
                    st.ambiguous = None;
                    st.error = None;
                    st.last_ok = Some(Timestamp::now());
                    st.last_fault = None;
                    st.self_fencing = p.self_fencing;
                    st.offset_before = st.probe.as_ref().and_then(|p| p.offset);
                    if p.role == ObservedRole::Primary
                        && let Some(o) = p.offset
                    {
                        let e = self.last_primary_offset.entry(d.shard.clone()).or_insert(o);
                        *e = (*e).max(o);
                    }
                    st.probe = Some(p);
                    true
                }
                Err(e) => {
                    st.unauthorized = matches!(e, EngineError::Unauthorized { .. });
                    st.ambiguous = match &e {
                        EngineError::Ambiguous { message, .. } => Some(message.clone()),
                        _ => None,
                    };
                    st.last_fault = Some(e.fault());
                    if !e.member_answered() {
                        if st.last_miss.is_none_or(|t| t.elapsed() >= miss_spacing) {
                            st.misses = st.misses.saturating_add(1);
                            st.last_miss = Some(Instant::now());
                        }
                    } else {
                        st.misses = 0;
                        st.last_miss = None;
                    }
                    // One slow answer is not a failure: the last answer stands until the
                    // member is down (failureThreshold misses), so status and routing do not
                    // flap under load. Promotion still requires a fresh answer (misses == 0).
                    // An ambiguous answer withdraws the last known role at once: nothing is
                    // decided on a role the member no longer states.
                    if st.unauthorized || st.ambiguous.is_some() || st.misses >= threshold {
                        st.probe = None;
                    }
                    st.error = Some(e.to_string());
                    false
                }
            };
            let labels = MemberLabels {
                namespace: ns.clone(),
                cluster: cluster.name_any(),
                shard: d.shard.clone(),
                member: d.name.clone(),
            };
            self.ctx.metrics.member_up.get_or_create(&labels).set(i64::from(up));
            current.insert(labels);
        }
        self.keep_member_series(current);
    }

    /// Keep every answering member's self-fencing (redis `min-replicas-to-write`) in step
    /// with the spec and the shard's size: at most the number of other members, so a
    /// one-member shard is never fenced. Written when it differs from what was last written
    /// or when the member says it is not fencing (a restart loses the setting).
    async fn keep_self_fencing(&mut self, engine: &dyn Engine, declared: &[Declared], cluster: &HaCluster) {
        if !engine.self_fences() || cluster.spec.paused {
            return;
        }
        let lag = cluster.spec.failover.fencing.max_replica_lag_seconds.max(1) as u32;
        let mut todo = Vec::new();
        for d in declared {
            let want = fencing_want(cluster, declared, &self.members, &d.shard, &d.name);
            let Some(st) = self.members.get(&d.name) else { continue };
            let Some(p) = st.probe.as_ref().filter(|_| st.misses == 0 && !st.unauthorized) else { continue };
            if p.self_fencing != (want > 0) || st.fencing_applied != Some((want, lag)) {
                todo.push((d.name.clone(), d.endpoint.clone(), want));
            }
        }
        let results = futures::future::join_all(
            todo.iter().map(|(_, endpoint, want)| engine.set_self_fencing(endpoint, *want, lag)),
        )
        .await;
        for ((name, _, want), r) in todo.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    if let Some(st) = self.members.get_mut(&name) {
                        st.fencing_applied = Some((want, lag));
                        if let Some(p) = st.probe.as_mut() {
                            p.self_fencing = want > 0;
                        }
                        st.self_fencing = want > 0;
                    }
                }
                Err(e) => {
                    warn!(cluster = %key(cluster), member = %name, error = %e, "could not set self-fencing; retried next heartbeat")
                }
            }
        }
    }

    /// Ask every replica whose command stream is held back ([`stream_stalled`]) to
    /// acknowledge, so that what its primary acknowledges to clients reaches it. The engine
    /// already does this right after it attaches a replica; this catches the syncs it did not
    /// start (a replica's link broke and it resynced by itself).
    async fn start_stalled_streams(
        &mut self,
        engine: &dyn Engine,
        declared: &[Declared],
        cluster: &HaCluster,
    ) {
        let mut stalled = Vec::new();
        for shard in Self::shard_names(cluster, declared) {
            let Some(primary) = shard_status(cluster, &shard).and_then(|s| s.current_primary.clone()) else {
                continue;
            };
            let Some(p) = self.members.get(&primary).filter(|m| m.misses == 0) else { continue };
            if p.probe.as_ref().is_none_or(|p| p.role != ObservedRole::Primary) {
                continue;
            }
            for d in declared.iter().filter(|d| d.shard == shard && d.name != primary) {
                let Some(st) = self.members.get(&d.name).filter(|m| m.misses == 0) else { continue };
                if let Some(probe) = &st.probe
                    && stream_stalled(probe, st.offset_before, &p.endpoint, p.offset_before)
                {
                    stalled.push(d.clone());
                }
            }
        }
        for d in stalled {
            match engine.request_ack(&d.endpoint).await {
                Ok(()) => info!(
                    cluster = %key(cluster), member = %d.name,
                    "replica received nothing for a heartbeat while behind its primary; asked it to acknowledge"
                ),
                Err(e) => {
                    warn!(cluster = %key(cluster), member = %d.name, error = %e, "could not ask a stalled replica to acknowledge")
                }
            }
        }
    }

    /// `member_up` series from now on are `keep`: remove those of members no longer there.
    fn keep_member_series(&mut self, keep: HashSet<MemberLabels>) {
        for gone in self.exported_members.difference(&keep) {
            self.ctx.metrics.member_up.remove(gone);
        }
        self.exported_members = keep;
    }

    fn facts(&mut self, cluster: &HaCluster, shard_name: &str, declared: &[Declared]) -> ShardFacts {
        let status = shard_status(cluster, shard_name);
        // A monitor that has not seen this shard's primary answer (a new operator leader, a
        // restart — often on the node that took the primary down with it) starts from the
        // offset status recorded, so the replicas' lag, and maxLagOnFailover, still count.
        if !self.last_primary_offset.contains_key(shard_name)
            && let Some(o) = status.and_then(ShardStatus::last_primary_offset)
        {
            self.last_primary_offset.insert(shard_name.to_owned(), o);
        }
        let members: Vec<MemberFacts> = declared
            .iter()
            .filter(|d| d.shard == shard_name)
            .map(|d| {
                let st = self.members.get(&d.name).cloned().unwrap_or_default();
                MemberFacts {
                    name: d.name.clone(),
                    endpoint: d.endpoint.clone(),
                    node: d.node.clone(),
                    priority: d.priority,
                    probe: st.probe,
                    misses: st.misses,
                    unauthorized: st.unauthorized,
                    ambiguous: st.ambiguous.clone(),
                    leaving: d.leaving,
                }
            })
            .collect();
        let current_primary = status.and_then(|s| s.current_primary.clone());
        // How long the primary has been lost, measured on our monotonic clock.
        let policy_threshold = cluster.spec.failover.failure_threshold.max(1) as u32;
        let lost = current_primary.as_ref().is_some_and(|p| {
            members.iter().find(|m| &m.name == p).is_none_or(|m| {
                m.misses >= policy_threshold
                    || (m.leaving && m.misses > 0)
                    || m.probe.as_ref().is_some_and(|p| p.role == ObservedRole::Replica)
            })
        });
        let lost_for = if lost {
            self.lost_since.entry(shard_name.to_owned()).or_insert_with(Instant::now).elapsed()
        } else {
            self.lost_since.remove(shard_name);
            Duration::ZERO
        };
        ShardFacts {
            members,
            current_primary,
            target_primary: status.and_then(|s| s.target_primary.clone()),
            last_primary_offset: self.last_primary_offset.get(shard_name).copied(),
            primary_lost_for: lost_for,
            avoid_nodes: dead_nodes(&self.shared.nodes),
            unfenced: self.unfenced.get(shard_name).cloned(),
        }
    }

    async fn apply_repairs(
        &mut self,
        engine: &dyn Engine,
        cluster: &HaCluster,
        shard_name: &str,
        declared: &[Declared],
        plan: &Plan,
    ) {
        let Some(primary) = shard_status(cluster, shard_name).and_then(|s| s.current_primary.clone()) else {
            // Bootstrap: demote extra acting primaries before electing.
            for name in &plan.demote {
                if let Some(d) = declared.iter().find(|d| &d.name == name) {
                    self.demote(engine, cluster, d, None).await;
                }
            }
            return;
        };
        let Some(p) = declared.iter().find(|d| d.name == primary) else { return };
        for name in &plan.demote {
            if let Some(d) = declared.iter().find(|d| &d.name == name) {
                self.demote(engine, cluster, d, Some(&p.endpoint)).await;
            }
        }
        for name in &plan.follow {
            if let Some(d) = declared.iter().find(|d| &d.name == name) {
                // An old primary that demoted itself on thawing (a queued demotion) still holds
                // what it wrote: measure it before it resyncs and loses it.
                let offset = self
                    .members
                    .get(&d.name)
                    .and_then(|m| m.probe.as_ref())
                    .filter(|p| p.role == ObservedRole::Replica && p.following.is_none())
                    .and_then(|p| p.offset)
                    .filter(|o| *o > 0);
                if let Some(offset) = offset {
                    self.account_reattached(cluster, &d.shard, &d.name, offset).await;
                }
                // A standby leader follows the upstream; everyone else follows the leader.
                let (target, upstream) = match self.upstream_seen.get(&d.shard) {
                    Some(up) if d.name == p.name => (up.clone(), true),
                    _ => (p.endpoint.clone(), false),
                };
                // A leader acting as primary yields to the upstream: where it stood is what
                // it held (the part beyond the upstream's promotion is lost).
                let yielded_at = self
                    .members
                    .get(&d.name)
                    .and_then(|m| m.probe.as_ref())
                    .filter(|p| upstream && p.role == ObservedRole::Primary)
                    .and_then(|p| p.offset);
                let result = match yielded_at {
                    // Where it stopped taking writes, exactly, where the engine can say.
                    Some(probed) => {
                        engine.yield_to(&d.endpoint, &target).await.map(|at| Some(at.unwrap_or(probed)))
                    }
                    None => engine.follow(&d.endpoint, &target).await.map(|()| None),
                };
                self.note_errant(&d.name, result.as_ref().err());
                match result {
                    Ok(yielded) => {
                        if let Some(offset) = yielded {
                            self.record_yield(cluster, &d.shard, &d.name, offset).await;
                        }
                        self.action_failed(&d.name, None);
                        info!(cluster = %key(cluster), member = %d.name, primary = %p.name, "replica now follows the primary")
                    }
                    Err(e) => {
                        let message = format!("could not be pointed at the primary {}: {e}", p.name);
                        if self.action_failed(&d.name, Some(message)) {
                            warn!(cluster = %key(cluster), member = %d.name, error = %e, "could not point replica at the primary")
                        }
                    }
                }
            }
        }
    }

    /// Demote a member acting as primary that must not be, then point it at `primary`.
    async fn demote(
        &mut self,
        engine: &dyn Engine,
        cluster: &HaCluster,
        d: &Declared,
        primary: Option<&str>,
    ) {
        let offset = self.members.get(&d.name).and_then(|m| m.probe.as_ref()).and_then(|p| p.offset);
        let result = match (engine.follows_directly(), primary) {
            (true, Some(p)) => engine.follow(&d.endpoint, p).await,
            _ => engine.demote(&d.endpoint).await,
        };
        self.note_errant(&d.name, result.as_ref().err());
        match result {
            Ok(()) => {
                self.action_failed(&d.name, None);
                info!(cluster = %key(cluster), member = %d.name, "demoted a member acting as primary");
                self.ctx
                    .event(
                        cluster,
                        false,
                        Reason::Demoted,
                        EventAction::Demote,
                        format!(
                            "{} acted as primary but is not the shard's primary; demoted to replica",
                            d.name
                        ),
                    )
                    .await;
                if let Some(st) = self.members.get_mut(&d.name)
                    && let Some(p) = st.probe.as_mut()
                {
                    p.role = ObservedRole::Replica;
                }
                if let Some(offset) = offset {
                    self.account_reattached(cluster, &d.shard, &d.name, offset).await;
                }
            }
            Err(e) => {
                let message = format!("acts as primary and could not be demoted: {e}");
                if self.action_failed(&d.name, Some(message)) {
                    warn!(cluster = %key(cluster), member = %d.name, error = %e, "could not demote")
                } else {
                    debug!(cluster = %key(cluster), member = %d.name, error = %e, "could not demote (again)")
                }
            }
        }
    }

    /// Keep what an attempt to attach the member said about errant transactions: the GTIDs
    /// when it refused for them, nothing when it worked (another failure keeps what was known).
    fn note_errant(&mut self, member: &str, error: Option<&EngineError>) {
        let Some(st) = self.members.get_mut(member) else { return };
        match error {
            None => st.errant.clear(),
            Some(EngineError::Errant { gtids, .. }) => st.errant = gtids.clone(),
            Some(_) => {}
        }
    }

    /// Record how the latest action on a member went (`None`: it worked); true when the
    /// failure is new (not the one recorded last), i.e. worth a warning.
    fn action_failed(&mut self, member: &str, error: Option<String>) -> bool {
        let Some(st) = self.members.get_mut(member) else { return error.is_some() };
        let new = error.is_some() && st.action_error != error;
        st.action_error = error;
        new
    }

    /// A standby leader that acted as a primary now follows the upstream: keep where it stood
    /// in status.yielded (the latest per shard) for the group that forced a failover to
    /// measure what was lost. Accounting only: the member was fenced first, and a failed
    /// write is logged, not retried.
    async fn record_yield(&mut self, cluster: &HaCluster, shard: &str, member: &str, offset: i64) {
        warn!(cluster = %key(cluster), %member, %shard, offset, "a standby leader acting as a primary was made to follow the upstream");
        for attempt in 0..4 {
            let base = if attempt == 0 { self.latest() } else { self.fetch().await };
            let Some(mut next) = base else { return };
            let Some(st) = next.status.as_mut() else { return };
            st.yielded.retain(|y| y.shard != shard);
            st.yielded.push(Yielded {
                shard: shard.to_owned(),
                member: member.to_owned(),
                offset,
                at: Time(Timestamp::now()),
            });
            match self.replace_status(&next).await {
                Ok(()) => return,
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => {
                    warn!(cluster = %key(cluster), %member, error = %e, "could not record where the yielded leader stood");
                    return;
                }
            }
        }
    }

    /// An old primary came back still acting as primary and was demoted: what it wrote beyond
    /// the point its successor was promoted at is lost (asynchronous replication cannot save
    /// it). Raise the last failover's `lostOffset` to that, once, with a `reattach` step.
    async fn account_reattached(&mut self, cluster: &HaCluster, shard: &str, member: &str, offset: i64) {
        // Retried on a conflict (a promotion or an operation wrote first): once demoted, the
        // old primary's offset is gone.
        for attempt in 0..4 {
            let base = if attempt == 0 { self.latest() } else { self.fetch().await };
            let Some(base) = base else { return };
            let Some(record) = base.status.as_ref().and_then(|s| s.last_failover.as_ref()) else { return };
            if record.shard != shard || record.from.as_deref() != Some(member) {
                info!(cluster = %key(cluster), %member, offset, "not recorded: the last failover is another member's");
                return;
            }
            let Some(promoted_at) = record.promoted_at_offset else {
                info!(cluster = %key(cluster), %member, offset, "not recorded: the last failover has no promotion point");
                return;
            };
            let lost = (offset - promoted_at).max(0);
            // Two reports can come (the heartbeat's probe of the returned member, and its
            // queued demotion's answer), in either order: a later one that shows more lost
            // raises the figure; one that adds nothing is not recorded twice.
            let reattached = record.steps.iter().any(|s| s.name == "reattach");
            if reattached && lost <= record.lost_offset.unwrap_or(0) {
                debug!(cluster = %key(cluster), %member, offset, promoted_at, "re-attached old primary already recorded");
                return;
            }
            let mut next = base.clone();
            let Some(r) = next.status.as_mut().and_then(|s| s.last_failover.as_mut()) else { return };
            r.lost_offset = Some(r.lost_offset.unwrap_or(0).max(lost));
            r.loss_accounting = Some(LossAccounting::Measured);
            let now = Time(Timestamp::now());
            r.steps.push(StepRecord {
                name: "reattach".into(),
                started_at: now.clone(),
                finished_at: now,
                message: Some(format!(
                    "{member} came back at offset {offset}, {lost} bytes beyond the point {} was promoted at ({promoted_at}); those writes are lost",
                    r.to.clone().unwrap_or_default()
                )),
            });
            match self.replace_status(&next).await {
                Ok(()) if lost > 0 => {
                    warn!(cluster = %key(cluster), %member, lost, "the re-attached old primary had writes its successor never received");
                    let msg = format!(
                        "{member} had {lost} bytes of writes beyond the promotion point; they are lost"
                    );
                    self.ctx.event(cluster, true, Reason::WritesLost, EventAction::Reattach, msg).await;
                    return;
                }
                Ok(()) => return,
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => {
                    warn!(cluster = %key(cluster), %member, error = %e, "could not record the re-attached old primary's offset");
                    return;
                }
            }
        }
        warn!(cluster = %key(cluster), %member, "could not record the re-attached old primary's offset: conflicting writes");
    }

    /// Start promotion `p` of `shard` in a task of its own (one per shard); false if it
    /// cannot start now.
    fn spawn_promotion(
        &mut self,
        engine: &Arc<dyn Engine>,
        cluster: &HaCluster,
        shard: &str,
        declared: &[Declared],
        p: Promotion,
    ) -> bool {
        if !declared.iter().any(|d| d.name == p.to)
            || self.retry_at.get(shard).is_some_and(|at| Instant::now() < *at)
        {
            return false;
        }
        let Some(start) = self.saga_start(engine.as_ref(), cluster, shard, declared, &p) else {
            return false;
        };
        let mut op = ShardOp::new(self.ctx.clone(), self.status.clone(), self.pods.clone());
        // The primary Service moves as soon as the new primary is promoted, where it has
        // exactly the old one behind it (one shard, routed, not a standby).
        let route = |name: &str| declared.iter().find(|d| d.name == name).map(|d| d.route.clone());
        op.early_route = match (&p.from, &self.last_routes) {
            (Some(from), Some(last)) if cluster.spec.routing.enabled && !self.is_standby(cluster) => {
                route(from).zip(route(&p.to)).map(|(from, to)| EarlyRoute { last: last.clone(), from, to })
            }
            _ => None,
        };
        let span = tracing::info_span!("promotion", shard, to = %p.to);
        let run = tracing::Instrument::instrument(
            op.run(engine.clone(), cluster.clone(), shard.to_owned(), declared.to_vec(), p, start),
            span,
        );
        let (tx, wake) = (self.done_tx.clone(), self.wake.clone());
        let task = tokio::spawn(async move {
            let done = run.await;
            let _ = tx.send(done);
            // Apply it at once: routing moves, then the Event.
            wake.notify.notify_one();
        });
        self.ops.insert(shard.to_owned(), (Instant::now(), task));
        true
    }

    /// Apply what finished promotions reported.
    async fn collect_done(&mut self, declared: &[Declared]) {
        // A task that ended without a report (it panicked) frees its shard too.
        self.ops.retain(|_, (_, t)| !t.is_finished());
        while let Ok(mut done) = self.done_rx.try_recv() {
            self.ops.remove(&done.shard);
            if let (End::Promoted, Some((member, rx))) = (&done.end, done.thawed.take()) {
                self.thaw_watches.push((done.shard.clone(), member, rx));
            }
            self.apply_done(done, declared).await;
        }
        self.account_thawed().await;
    }

    /// An old primary passed while silent ran its queued demotion: what it had beyond the
    /// promotion point is lost, measured now — a pod deleted meanwhile is never probed again.
    async fn account_thawed(&mut self) {
        let mut ran = Vec::new();
        self.thaw_watches.retain_mut(|(shard, member, rx)| match rx.try_recv() {
            Ok(offset) => {
                ran.push((shard.clone(), member.clone(), offset));
                false
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
        });
        for (shard, member, offset) in ran {
            let Some(cluster) = self.latest() else { return };
            self.account_reattached(&cluster, &shard, &member, offset).await;
        }
    }

    /// One finished promotion: member state, metrics, routing, then the Event.
    async fn apply_done(&mut self, done: OpDone, declared: &[Declared]) {
        self.status.adopt(done.written.clone());
        if let Some(mains) = done.redirect_mains.clone() {
            self.last_redirect = Some(mains);
        }
        let shard_name = done.shard.as_str();
        let p = &done.promotion;
        if done.promoted {
            if let Some(st) = self.members.get_mut(&p.to) {
                let offset = st.probe.as_ref().and_then(|p| p.offset);
                let self_fencing = st.self_fencing;
                let drains = st.probe.as_ref().is_some_and(|p| p.drains);
                st.probe = Some(Probe {
                    role: ObservedRole::Primary,
                    offset,
                    following: None,
                    link_up: true,
                    self_fencing,
                    good_replicas: None,
                    link_error: None,
                    errant: Vec::new(),
                    drains,
                });
            }
            // The new primary's own offset is the reference from now on.
            self.last_primary_offset.remove(shard_name);
            if let Some(o) = done.promoted_at_offset {
                self.last_primary_offset.insert(shard_name.to_owned(), o);
            }
            self.lost_since.remove(shard_name);
            self.unfenced.remove(shard_name);
        }
        let Some(cluster) = self.latest() else { return };
        let ckey = key(&cluster);
        match done.end {
            End::Promoted => {
                let labels = FailoverLabels {
                    namespace: cluster.namespace().unwrap_or_default(),
                    cluster: cluster.name_any(),
                    shard: shard_name.to_owned(),
                    kind: match p.kind {
                        PromotionKind::Failover => "automatic".into(),
                        PromotionKind::Resume => "resume".into(),
                        PromotionKind::Bootstrap | PromotionKind::Adopt => "bootstrap".into(),
                    },
                };
                self.ctx.metrics.failovers.get_or_create(&labels).inc();
                self.ctx
                    .metrics
                    .failover_duration
                    .get_or_create(&labels)
                    .observe(done.started.elapsed().as_secs_f64());
                let shard_labels = ShardLabels {
                    namespace: labels.namespace.clone(),
                    cluster: labels.cluster.clone(),
                    shard: labels.shard.clone(),
                };
                self.ctx.metrics.epoch.get_or_create(&shard_labels).set(done.epoch);
                self.exported_shards.insert(shard_labels);
                let ms = done.started.elapsed().as_millis();
                let note = match &p.from {
                    Some(f) => format!(
                        "shard {shard_name}: {} promoted, replacing {f} (epoch {}, {ms} ms; {})",
                        p.to, done.epoch, p.reason
                    ),
                    None => {
                        format!(
                            "shard {shard_name}: {} is primary (epoch {}; {})",
                            p.to, done.epoch, p.reason
                        )
                    }
                };
                info!(cluster = %ckey, "{note}");
                // Clients first: the Services move before the Event is published.
                if let Some(c) = self.latest() {
                    let routing_started = Instant::now();
                    self.update_routing(&c, declared).await;
                    debug!(
                        cluster = %ckey,
                        took_ms = routing_started.elapsed().as_secs_f64() * 1000.0,
                        since_start_ms = done.started.elapsed().as_secs_f64() * 1000.0,
                        "routing updated after the promotion"
                    );
                }
                let reason = if p.from.is_some() { Reason::FailedOver } else { Reason::PrimaryElected };
                self.ctx.event(&cluster, false, reason, EventAction::Promote, note).await;
            }
            End::Abandoned { reason, message } => {
                warn!(cluster = %ckey, shard = shard_name, %reason, "{message}");
                if reason == Reason::FenceTimedOut
                    && let Some(from) = &done.from
                {
                    self.unfenced.insert(shard_name.to_owned(), from.clone());
                }
                self.ctx
                    .event(
                        &cluster,
                        true,
                        Reason::PromotionAbandoned,
                        EventAction::Promote,
                        format!("shard {shard_name}: {message}"),
                    )
                    .await;
                if let Some(c) = self.latest() {
                    self.last_routes = None;
                    self.update_routing(&c, declared).await;
                }
            }
            End::NotStarted(e) => {
                warn!(cluster = %ckey, shard = shard_name, error = %e, "not promoting: could not record the new epoch")
            }
            End::Retry(e) => {
                warn!(cluster = %ckey, shard = shard_name, "{e}; the target stays recorded and is retried");
                // Half a heartbeat: the next heartbeat retries it, a wake-up in between does not.
                let next = Instant::now() + cluster.spec.failover.heartbeat_interval.0 / 2;
                self.retry_at.insert(shard_name.to_owned(), next);
                self.ctx
                    .event(
                        &cluster,
                        true,
                        Reason::PromotionFailed,
                        EventAction::Promote,
                        format!("shard {shard_name}: {e}"),
                    )
                    .await;
            }
            End::Unrecorded(e) => warn!(
                cluster = %ckey, shard = shard_name, error = %e,
                "roles changed but the outcome could not be recorded; the next heartbeat resumes from the recorded target"
            ),
        }
    }

    /// What the saga of promotion `p` starts from. None: nothing can be done now (a standby
    /// cluster whose upstream is unknown).
    fn saga_start(
        &self,
        engine: &dyn Engine,
        cluster: &HaCluster,
        shard_name: &str,
        declared: &[Declared],
        p: &Promotion,
    ) -> Option<Start> {
        let lock = shard_status(cluster, shard_name)
            .and_then(|s| s.operation.clone())
            .filter(|l| l.kind != LOCK_KIND);
        let forced = lock.as_ref().is_some_and(|l| l.force);
        let (dead_members, dead_nodes) = lock.map(|l| (l.dead_members, l.dead_nodes)).unwrap_or_default();
        let declared_dead = |d: &Declared| {
            dead_members.contains(&d.name) || d.node.as_ref().is_some_and(|n| dead_nodes.contains(n))
        };
        let become_ = match (self.shard_standby(cluster, shard_name), self.upstream_seen.get(shard_name)) {
            (false, _) => Become::Writable,
            (true, Some(up)) => Become::Follower(up.clone()),
            (true, None) => return None,
        };
        let from = p.from.as_ref().and_then(|f| declared.iter().find(|d| &d.name == f)).map(|d| {
            let st = self.members.get(&d.name).cloned().unwrap_or_default();
            OldPrimary {
                name: d.name.clone(),
                healthy_primary: st.misses == 0
                    && st.probe.as_ref().is_some_and(|p| p.role == ObservedRole::Primary),
                reachable: st.probe.is_some(),
                last_fault: st.last_fault.clone(),
                self_fencing: st.self_fencing,
                self_fencing_how: engine.self_fencing_how().to_owned(),
                declared_dead: declared_dead(d),
                // A pod already being deleted may be deleted at once: that is what was asked.
                killable: cluster.pod_membership().is_some()
                    && (cluster.spec.failover.fencing.delete_unreachable_pods || d.leaving),
            }
        });
        let others = declared
            .iter()
            .filter(|d| d.shard == shard_name && d.name != p.to && !declared_dead(d))
            .filter(|d| self.members.get(&d.name).is_some_and(|m| m.probe.is_some()))
            .map(|d| d.name.clone())
            .collect();
        let on_timeout =
            if forced || cluster.spec.failover.on_timeout == crate::resources::hacluster::OnTimeout::Force {
                saga::OnTimeout::Force
            } else {
                saga::OnTimeout::Abort
            };
        // Engines without a built-in pause (agent) drain only when both members taking part
        // (the old primary and the candidate) advertise the optional step; otherwise the
        // record says which one did not.
        let cannot_drain: Vec<&str> = declared
            .iter()
            .filter(|d| d.shard == shard_name && (d.name == p.to || p.from.as_ref() == Some(&d.name)))
            .filter(|d| !self.members.get(&d.name).and_then(|m| m.probe.as_ref()).is_some_and(|p| p.drains))
            .map(|d| d.name.as_str())
            .collect();
        let drains = engine.follows_directly() || cannot_drain.is_empty();
        let not_drained = (!forced && !drains)
            .then(|| format!("{} do(es) not advertise the agent's drain step", cannot_drain.join(", ")));
        Some(Start {
            kind: p.kind,
            to: p.to.clone(),
            from,
            graceful: drains && !forced,
            not_drained,
            become_,
            others,
            on_timeout,
        })
    }

    async fn fetch(&self) -> Option<HaCluster> {
        self.status.fetch().await
    }

    async fn replace_status(&mut self, next: &HaCluster) -> Result<(), kube::Error> {
        self.status.replace(next).await
    }

    /// Compute the observed status and write it if anything meaningful changed.
    async fn write_status(&mut self, cluster: &HaCluster, blocks: &[(String, Reason, String)]) {
        let old = cluster.status.clone().unwrap_or_default();
        let next_status = self.observed_status(cluster, &old, blocks);
        let max_lag = cluster.spec.failover.max_lag_on_failover;
        // Offsets and lag alone are refreshed at most every OFFSETS_REFRESH, with the time of
        // the probe they came from (lastHeartbeat), so status never shows old numbers as new.
        let offsets_due = self.observed_written_at.is_none_or(|t| t.elapsed() >= OFFSETS_REFRESH)
            && offsets(&old) != offsets(&next_status);
        if significant(&old, max_lag) == significant(&next_status, max_lag) && !offsets_due {
            return;
        }
        // A promotion that started moments ago writes its outcome within a moment, compared
        // against the copy it decided on: an observed write now would only make that fail
        // and be retried (at a thousand clusters bootstrapping, those retries multiplied).
        // What the monitor sees meanwhile is written after it, or once the promotion has run
        // for OBSERVED_HELD_FOR a drain can take longer.
        if self.ops.values().any(|(started, _)| started.elapsed() < OBSERVED_HELD_FOR) {
            return;
        }
        match self.status.apply_observed(&next_status).await {
            Ok(()) => self.observed_written_at = Some(Instant::now()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(cluster = %self.oref, error = %s.message, "cluster gone; status not written");
            }
            Err(e) => warn!(cluster = %self.oref, error = %e, "could not write status"),
        }
        self.prune_undeclared(cluster).await;
    }

    /// Remove shards and members that are no longer declared. The observed part drops them
    /// from what the monitor applies, but an entry another writer also set (the shard's
    /// lock and epoch, or fields written before the monitor applied its own) stays until it
    /// is removed through the compare-and-set path.
    async fn prune_undeclared(&mut self, cluster: &HaCluster) {
        let declared = self.declared(cluster);
        let names = Self::shard_names(cluster, &declared);
        let Some(latest) = self.latest() else { return };
        let Some(st) = latest.status.as_ref() else { return };
        let stale = |s: &ShardStatus| {
            !names.contains(&s.name)
                || s.members.iter().any(|m| !declared.iter().any(|d| d.name == m.name && d.shard == s.name))
        };
        if !st.shards.iter().any(stale) {
            return;
        }
        let mut next = latest.clone();
        let st = next.status.as_mut().expect("checked");
        // A shard whose lock is held stays until its operation ends.
        st.shards.retain(|s| names.contains(&s.name) || s.operation.is_some());
        for s in &mut st.shards {
            s.members.retain(|m| declared.iter().any(|d| d.name == m.name && d.shard == s.name));
        }
        if let Err(e) = self.replace_status(&next).await {
            debug!(cluster = %self.oref, error = %e, "could not prune undeclared members; retried next heartbeat");
        }
    }

    fn observed_status(
        &self,
        cluster: &HaCluster,
        old: &HaClusterStatus,
        blocks: &[(String, Reason, String)],
    ) -> HaClusterStatus {
        let declared = self.declared(cluster);
        let now = Time(Timestamp::now());
        let generation = cluster.metadata.generation;
        let mut status = old.clone();
        status.observed_generation = generation;
        let mut healthy = 0;
        let mut shards = Vec::new();
        for shard_name in Self::shard_names(cluster, &declared) {
            let mut s = shard_status(cluster, &shard_name)
                .cloned()
                .unwrap_or_else(|| ShardStatus { name: shard_name.clone(), ..Default::default() });
            let primary = s.current_primary.clone();
            let primary_endpoint = primary
                .as_ref()
                .and_then(|p| declared.iter().find(|d| &d.name == p))
                .map(|d| d.endpoint.clone());
            let last_offset = self.last_primary_offset.get(&shard_name).copied();
            s.members = declared
                .iter()
                .filter(|d| d.shard == shard_name)
                .map(|d| {
                    let st = self.members.get(&d.name).cloned().unwrap_or_default();
                    // Healthy means it answered the latest probe; a member that stopped
                    // answering is unhealthy at once (it is *down* after failureThreshold
                    // misses, which is what failover waits for).
                    // A replica whose replication stopped with an error is not healthy either.
                    let ok = st.probe.as_ref().is_some_and(|p| p.link_error.is_none())
                        && st.misses == 0
                        && !st.unauthorized;
                    if ok {
                        healthy += 1;
                    }
                    let previous = old
                        .shards
                        .iter()
                        .find(|x| x.name == shard_name)
                        .and_then(|x| x.members.iter().find(|m| m.name == d.name));
                    let role = match st.probe.as_ref().map(|p| &p.role) {
                        Some(ObservedRole::Primary) => Role::Primary,
                        Some(ObservedRole::Replica) => Role::Replica,
                        None if primary.as_deref() != Some(&d.name)
                            && previous
                                .is_some_and(|m| m.role == Role::Primary || m.role == Role::Fenced) =>
                        {
                            Role::Fenced
                        }
                        None => previous.map_or(Role::Unknown, |m| m.role),
                    };
                    let upstream = st
                        .probe
                        .as_ref()
                        .and_then(|p| p.following.clone())
                        .map(|f| declared.iter().find(|x| x.endpoint == f).map_or(f, |x| x.name.clone()));
                    let lag = match (&st.probe, last_offset, &primary_endpoint) {
                        (Some(p), Some(po), Some(_)) if p.role == ObservedRole::Replica => {
                            p.offset.map(|o| (po - o).max(0))
                        }
                        _ => None,
                    };
                    MemberStatus {
                        name: d.name.clone(),
                        endpoint: Some(d.endpoint.clone()),
                        node: d.node.clone(),
                        role,
                        healthy: ok,
                        last_heartbeat: st
                            .last_ok
                            .map(Time)
                            .or_else(|| previous.and_then(|m| m.last_heartbeat.clone())),
                        offset: st.probe.as_ref().and_then(|p| p.offset),
                        lag,
                        upstream,
                        message: st
                            .error
                            .clone()
                            .or_else(|| st.action_error.clone())
                            .or_else(|| st.probe.as_ref().and_then(|p| p.link_error.clone())),
                        leaving: d.leaving,
                        errant_transactions: st.errant().to_vec(),
                    }
                })
                .collect();
            shards.push(s);
        }
        status.shards = shards;
        status.primary = status.shards.first().and_then(|s| s.current_primary.clone());
        status.healthy_members = Some(format!("{healthy}/{}", declared.len()));

        let any_lock = status.shards.iter().any(|s| s.target_primary.is_some());
        // A standby shard's leader is a healthy replica of the upstream.
        let leader_role =
            |shard: &str| if self.shard_standby(cluster, shard) { Role::Replica } else { Role::Primary };
        for s in &mut status.shards {
            s.upstream =
                self.upstream_seen.get(&s.name).cloned().filter(|_| self.shard_standby(cluster, &s.name));
        }
        // A self-fencing primary with too few replicas refuses writes: it is not healthy for
        // clients (until the replicas are attached, after a bootstrap or a failover).
        let mut refusing = Vec::new();
        for s in status.shards.iter().filter(|s| !self.shard_standby(cluster, &s.name)) {
            let Some(p) = &s.current_primary else { continue };
            let want = fencing_want(cluster, &declared, &self.members, &s.name, p);
            let probe = self.members.get(p).and_then(|m| m.probe.as_ref()).filter(|p| p.self_fencing);
            if let Some(good) = probe.and_then(|p| p.good_replicas)
                && good < i64::from(want)
            {
                refusing.push(format!(
                    "shard {}: {p} refuses writes until {want} replica(s) acknowledge it (self-fencing); {good} do",
                    s.name
                ));
            }
        }
        let all_primaries_ok = refusing.is_empty()
            && !status.shards.is_empty()
            && status.shards.iter().all(|s| {
                s.current_primary.as_ref().is_some_and(|p| {
                    s.members.iter().any(|m| &m.name == p && m.healthy && m.role == leader_role(&s.name))
                })
            });
        let no_primary_yet = status.shards.iter().any(|s| s.current_primary.is_none());
        let mut unauthorized: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.unauthorized)
            .map(|(n, m)| format!("{n}: {}", m.error.clone().unwrap_or_default()))
            .collect();
        unauthorized.sort();
        let mut ambiguous: Vec<String> = self
            .members
            .iter()
            .filter_map(|(n, m)| m.ambiguous.as_ref().map(|said| format!("{n}: {said}")))
            .collect();
        ambiguous.sort();
        let (ready_reason, ready_msg): (Reason, String) = if let Some((reason, msg)) = &self.config_error {
            (*reason, msg.clone())
        } else if !unauthorized.is_empty() {
            (
                Reason::Unauthorized,
                format!(
                    "members refuse the credentials in the cluster's Secret; roles are left unchanged: {}",
                    unauthorized.join("; ")
                ),
            )
        } else if !ambiguous.is_empty() {
            (
                Reason::AmbiguousAnswer,
                format!(
                    "members answer without a role (neither MAIN nor BACKUP); they are not trusted in their last role, not promoted and not failed over from until they answer plainly: {}",
                    ambiguous.join("; ")
                ),
            )
        } else if !self.superseded_by.is_empty() {
            let whole = self.superseded_by.len() == status.shards.len() && status.shards.len() == 1;
            let by: Vec<String> = self
                .superseded_by
                .iter()
                .map(|(s, by)| if whole { by.clone() } else { format!("{by} (shard {s})") })
                .collect();
            let what = match by.len() {
                _ if whole => "acts as a primary: this cluster follows it and nothing here is writable",
                1 => "acts as a primary: that shard follows it and is not writable",
                _ => "act as primaries: those shards follow them and are not writable",
            };
            (
                Reason::SiteSuperseded,
                format!(
                    "{}, of {}, {what}{}",
                    by.join(", "),
                    self.yield_source,
                    if cluster.status.as_ref().is_some_and(|s| s.protection.is_some()) {
                        " until the group re-protects it"
                    } else {
                        " (make it a standby with spec.standby, or delete it)"
                    }
                ),
            )
        } else if let Some((shard, reason, msg)) = blocks.first() {
            (*reason, format!("shard {shard}: {msg}"))
        } else if !refusing.is_empty() {
            (Reason::PrimaryRefusesWrites, refusing.join("; "))
        } else if all_primaries_ok {
            (Reason::PrimaryHealthy, "every shard has a healthy primary".to_owned())
        } else {
            (Reason::NoPrimary, "waiting for a healthy primary".to_owned())
        };
        let mut conditions = old.conditions.clone();
        set_condition(
            &mut conditions,
            ConditionType::Ready,
            all_primaries_ok
                && self.config_error.is_none()
                && self.superseded_by.is_empty()
                && !cluster.detached(),
            ready_reason,
            ready_msg,
            generation,
            &now,
        );
        let degraded = healthy < declared.len() || !blocks.is_empty();
        // The message never contradicts the status: degraded with every member healthy
        // says what blocks the shard.
        let members_msg = format!("{healthy} of {} members healthy", declared.len());
        // What the latest attempt to attach it refused for, or what its replication stopped on.
        let mut errant: Vec<(&String, String)> = self
            .members
            .iter()
            .map(|(n, m)| (n, m.errant().join(",")))
            .filter(|(_, gtids)| !gtids.is_empty())
            .collect();
        errant.sort();
        let degraded = degraded || !errant.is_empty();
        let (degraded_reason, degraded_msg): (Reason, String) = if let Some((first, gtids)) = errant.first() {
            let listed: Vec<String> = errant.iter().map(|(n, g)| format!("{n} ({g})")).collect();
            let remedy = if cluster.spec.instances.is_some() {
                // Naming the transactions is how the loss is accepted (REBUILD_ANNOTATION).
                format!(
                    "to discard them, rebuild the member from the primary: annotate the HaCluster {}=<member>:<its transactions as listed>, e.g. {}={first}:{gtids}",
                    crate::resources::instances::REBUILD_ANNOTATION,
                    crate::resources::instances::REBUILD_ANNOTATION,
                )
            } else {
                "rebuild them from the primary (for example restore a backup taken from it): a member that holds nothing the primary lacks is attached".to_owned()
            };
            (
                Reason::ErrantTransactions,
                format!(
                    "{members_msg}; kept out, read-only and not attached, with transactions the primary never had: {} — {remedy}",
                    listed.join("; ")
                ),
            )
        } else if healthy < declared.len() {
            (Reason::MembersUnhealthy, members_msg)
        } else if let Some((shard, reason, msg)) = blocks.first() {
            (*reason, format!("{members_msg}, but shard {shard}: {msg}"))
        } else {
            (Reason::AllMembersHealthy, members_msg)
        };
        set_condition(
            &mut conditions,
            ConditionType::Degraded,
            degraded,
            degraded_reason,
            degraded_msg,
            generation,
            &now,
        );
        set_condition(
            &mut conditions,
            ConditionType::Paused,
            cluster.spec.paused,
            if cluster.spec.paused { Reason::Paused } else { Reason::Active },
            if cluster.spec.paused {
                "spec.paused: observing only, never acting"
            } else {
                "acting on failures"
            },
            generation,
            &now,
        );
        let routed = self.routing_problems.is_empty();
        let (routed_reason, routed_msg) = match self.routing_problems.iter().next() {
            None if cluster.spec.routing.enabled => {
                (Reason::Routed, "the Services route to the current roles".to_owned())
            }
            None => (Reason::RoutingDisabled, "spec.routing.enabled is false".to_owned()),
            Some((reason, _)) => {
                (*reason, self.routing_problems.values().cloned().collect::<Vec<_>>().join("; "))
            }
        };
        set_condition(
            &mut conditions,
            ConditionType::Routed,
            routed,
            routed_reason,
            routed_msg,
            generation,
            &now,
        );
        status.conditions = conditions;
        // The promotion's own phase and condition (it writes the same with its decision).
        status.mark_promoting(any_lock, generation, &now);
        status.phase = Some(if cluster.spec.paused {
            ClusterPhase::Paused
        } else if any_lock {
            status.phase.unwrap_or(ClusterPhase::FailingOver)
        } else if self.config_error.is_some() {
            ClusterPhase::Failed
        } else if no_primary_yet {
            ClusterPhase::Bootstrapping
        } else if !all_primaries_ok && blocks.iter().any(|b| b.1 == Reason::NoEligibleReplica) {
            ClusterPhase::Failed
        } else if let Some(lifecycle) = lifecycle_phase(&status) {
            // A planned change takes members down on purpose: say which, not Degraded.
            lifecycle
        } else if !all_primaries_ok || degraded {
            ClusterPhase::Degraded
        } else {
            ClusterPhase::Healthy
        });
        status
    }

    async fn update_routing(&mut self, cluster: &HaCluster, declared: &[Declared]) {
        let status = cluster.status.clone().unwrap_or_default();
        // While a promotion is in flight, routing stays as it is: the old primary is fenced by
        // the engine (writes paused and demoted, or dead), and the primary Service moves to
        // the new primary in one EndpointSlice write once that is recorded. Emptying it first
        // costs clients "connection refused" in between and a second kube-proxy sync, which
        // in iptables mode comes at most once per --iptables-min-sync-period (1 s by default).
        if status.shards.iter().any(|s| s.target_primary.is_some()) {
            return;
        }
        let mut primaries = Vec::new();
        let mut replicas = Vec::new();
        for s in &status.shards {
            for d in declared.iter().filter(|d| d.shard == s.name) {
                let st = self.members.get(&d.name);
                if s.current_primary.as_deref() == Some(&d.name) {
                    // The recorded primary stays routed until another one is recorded, even
                    // while it does not answer: the switch is then a single write. A standby
                    // cluster's leader is read-only and is not routed as a primary.
                    if !self.shard_standby(cluster, &s.name) {
                        primaries.push(d.route.clone());
                    }
                } else if !d.leaving
                    && st.is_some_and(|m| m.probe.as_ref().is_some_and(|p| p.role == ObservedRole::Replica))
                {
                    replicas.push(d.route.clone());
                }
            }
        }
        let ignored: Vec<&str> = cluster
            .spec
            .shards
            .iter()
            .flatten()
            .flat_map(|s| &s.members)
            .filter(|m| m.client_address.is_some())
            .map(|m| m.name.as_str())
            .collect();
        if ignored.is_empty() || self.ctx.allow_client_address {
            self.routing_problems.remove(&Reason::ClientAddressNotAllowed);
        } else {
            self.routing_problems.insert(
                Reason::ClientAddressNotAllowed,
                format!(
                    "clientAddress of {} ignored: the operator routes only to addresses it probes unless it runs with --allow-client-address (chart: allowClientAddress)",
                    ignored.join(", ")
                ),
            );
        }
        let contested = self.ctx.discovery.as_ref().map(|d| d.conflicts(&key(cluster))).unwrap_or_default();
        if contested.is_empty() {
            self.routing_problems.remove(&Reason::MasterNameConflict);
        } else {
            let said: Vec<String> = contested
                .iter()
                .map(|(name, others)| format!("{name:?} (also {})", others.join(", ")))
                .collect();
            self.routing_problems.insert(
                Reason::MasterNameConflict,
                format!(
                    "the discovery endpoint serves master name {} for no cluster: another cluster claims it too; give one of them another spec.routing.masterName",
                    said.join(", ")
                ),
            );
        }
        let routes = routing::desired_routes(cluster, &primaries, &replicas);
        if self.last_routes.as_ref() != Some(&routes) {
            self.apply_routes(cluster, routes).await;
        }
        // Agent engines, pod members too: make sure the redirect ConfigMap names every
        // shard's current main.
        self.reassert_redirect(cluster, declared, &status).await;
        // Clients first: the role labels are for the users' own selectors and kubectl, and
        // each is a pod write (measured: 40–75 ms for a switchover's two).
        if let Some(sel) = cluster.pod_membership().as_deref() {
            self.update_pod_labels_and_policy(cluster, sel, declared, &status).await;
        }
    }

    /// Agent engines: write the redirect ConfigMap when a shard's main differs from what it
    /// was last written to say (and at the first heartbeat, which reads it), and read it back
    /// every [`REDIRECT_REFRESH`] so that one edited or deleted by hand is put right (the
    /// consumers of the shards it got wrong are restarted, as after a promotion).
    async fn reassert_redirect(
        &mut self,
        cluster: &HaCluster,
        declared: &[Declared],
        status: &HaClusterStatus,
    ) {
        let Some(redirect) = &cluster.spec.redirect else { return };
        let mains = routing::redirect_mains(&status.shards, declared, None);
        let due = self.redirect_checked_at.is_none_or(|at| at.elapsed() >= REDIRECT_REFRESH);
        if mains.is_empty() || (self.last_redirect.as_ref() == Some(&mains) && !due) {
            return;
        }
        let restarts = self.ctx.allow_workload_restarts;
        if redirect.restart.is_empty() || restarts {
            self.routing_problems.remove(&Reason::WorkloadRestartsNotAllowed);
        } else {
            self.routing_problems.insert(
                Reason::WorkloadRestartsNotAllowed,
                "spec.redirect.restart ignored: the operator restarts workloads only when it runs with --allow-workload-restarts (chart: allowWorkloadRestarts)".into(),
            );
        }
        match routing::apply_redirect(&self.ctx.client, cluster, redirect, &mains, restarts).await {
            Ok(changed) => {
                if self.last_redirect.as_ref() == Some(&mains) && !changed.is_empty() {
                    warn!(cluster = %key(cluster), shards = ?changed, "the redirect ConfigMap no longer named every shard's main (edited or deleted): written again");
                }
                self.last_redirect = Some(mains);
                self.redirect_checked_at = Some(Instant::now());
                self.routing_problems.remove(&Reason::RedirectFailed);
            }
            Err(e) => {
                let cm = &redirect.config_map;
                let why = match &e {
                    kube::Error::Api(s) if s.code == 403 => format!(
                        "the redirect ConfigMap {cm} cannot be written: the operator may not write ConfigMaps in this namespace (chart: redirectNamespaces); replicas are not told the new primary"
                    ),
                    e => format!(
                        "the redirect ConfigMap {cm} could not be written ({e}); retried each heartbeat"
                    ),
                };
                // Said once (a condition, a warning); repeated each heartbeat only at debug.
                if self.routing_problems.get(&Reason::RedirectFailed) != Some(&why) {
                    warn!(cluster = %key(cluster), error = %e, "could not write the redirect ConfigMap");
                    self.routing_problems.insert(Reason::RedirectFailed, why);
                } else {
                    debug!(cluster = %key(cluster), error = %e, "could not write the redirect ConfigMap");
                }
            }
        }
    }
}

/// Graceful switchover: pause writes on the old primary, then wait until the candidate has
/// applied everything the old primary wrote (offsets equal). Err says why not.
pub(super) async fn drain(
    engine: &dyn Engine,
    from: &str,
    to: &str,
    timeout: Duration,
) -> Result<(), String> {
    engine
        .pause_writes(from, timeout + Duration::from_secs(2))
        .await
        .map_err(|e| format!("could not pause writes: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let (p, c) = futures::join!(engine.probe(from), engine.probe(to));
        let p = p.map_err(|e| format!("old primary stopped answering: {e}"))?;
        if let (Some(po), Ok(Some(co))) = (p.offset, c.map(|c| c.offset)) {
            if co >= po {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("the candidate is still {} bytes behind after {timeout:?}", po - co));
            }
        } else if Instant::now() >= deadline {
            return Err(format!("no replication offsets within {timeout:?}"));
        }
        // Writes are paused meanwhile: each millisecond here is one clients wait.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A pod as a member: name = pod name, shard from `shardLabel` (default `main`), endpoint =
/// the address annotation (`host` or `host:port`) or `<pod IP>:<port>`, priority from the
/// priority annotation (default 100). Pods without an address yet are not members yet.
fn pod_member(pod: &Pod, sel: &crate::resources::hacluster::PodMembership) -> Option<Declared> {
    let port = sel.port;
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
    let annotation = sel.address_annotation.as_ref().and_then(|a| pod.annotations().get(a).cloned());
    let endpoint = match annotation {
        Some(a) if engines::split_endpoint(&a).is_some() => a,
        Some(a) => format!("{a}:{port}"),
        None => format!("{}:{port}", ip.clone()?),
    };
    let route = ip.map_or_else(|| endpoint.clone(), |ip| format!("{ip}:{port}"));
    let shard =
        sel.shard_label.as_ref().and_then(|l| pod.labels().get(l).cloned()).unwrap_or_else(|| "main".into());
    let priority = sel
        .priority_annotation
        .as_ref()
        .and_then(|a| pod.annotations().get(a))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|p| *p >= 0)
        .unwrap_or(100);
    Some(Declared {
        shard,
        name: pod.name_any(),
        endpoint,
        route,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        priority,
        leaving: pod.metadata.deletion_timestamp.is_some(),
    })
}

impl Monitor {
    /// Write the Services and EndpointSlices of `routes` (remembered once written).
    async fn apply_routes(&mut self, cluster: &HaCluster, routes: routing::Routes) {
        let started = Instant::now();
        let applied = {
            let _slot = self.ctx.routing_slots.acquire().await.expect("never closed");
            routing::apply_routes(&self.ctx.client, cluster, &routes).await
        };
        debug!(cluster = %key(cluster), took_ms = started.elapsed().as_secs_f64() * 1000.0, ok = applied.is_ok(), "routes written");
        match applied {
            Ok(applied) => {
                self.ctx.routed(&self.uid);
                if !applied.rejected.is_empty() {
                    warn!(cluster = %key(cluster), rejected = ?applied.rejected, "endpoints Kubernetes cannot route to (loopback/link-local) were left out of the Services");
                    self.routing_problems.insert(
                        Reason::Unroutable,
                        format!(
                            "left out of the Services, Kubernetes cannot route to them (loopback/link-local): {}",
                            applied.rejected.join(", ")
                        ),
                    );
                } else {
                    self.routing_problems.remove(&Reason::Unroutable);
                }
                if applied.conflicts.is_empty() {
                    self.routing_problems.remove(&Reason::NameConflict);
                } else {
                    warn!(cluster = %key(cluster), conflicts = ?applied.conflicts, "routing objects left alone");
                    self.routing_problems.insert(Reason::NameConflict, applied.conflicts.join("; "));
                }
                // Pod members' Services were selector Services in an earlier version: clear
                // what Kubernetes left of that, after each routing write until a check finds
                // nothing (not on every write for ever). Only for Services this cluster owns.
                if cluster.pod_membership().is_some() && !self.foreign_endpoints_checked {
                    let ns = cluster.namespace().unwrap_or_default();
                    let ours: Vec<&String> =
                        routes.services.keys().filter(|s| !applied.unowned_services.contains(*s)).collect();
                    let removed = routing::remove_foreign_endpoints(&self.ctx.client, &ns, ours).await;
                    match removed {
                        Ok(0) => self.foreign_endpoints_checked = true,
                        Ok(_) => {}
                        Err(e) => {
                            warn!(cluster = %key(cluster), error = %e, "could not remove stale endpoints; retried")
                        }
                    }
                }
                self.last_routes = Some(routes);
            }
            Err(e) => {
                warn!(cluster = %key(cluster), error = %e, "could not update routing; retried next heartbeat")
            }
        }
    }

    /// Pod members: label each pod with its role (for the users' own selectors and for
    /// `kubectl get pods -L understudy.dev/role`) and keep the ACL NetworkPolicy. The
    /// Services are selector-less and routed by [`Monitor::apply_routes`], like static
    /// members', so a switch is one EndpointSlice write rather than two label changes that
    /// Kubernetes' EndpointSlice controller turns into two updates.
    async fn update_pod_labels_and_policy(
        &mut self,
        cluster: &HaCluster,
        sel: &crate::resources::hacluster::PodMembership,
        declared: &[Declared],
        status: &HaClusterStatus,
    ) {
        let mut roles = Vec::new();
        for d in declared {
            let shard = status.shards.iter().find(|s| s.name == d.shard);
            let routed_primary =
                shard.filter(|s| s.target_primary.is_none()).and_then(|s| s.current_primary.as_deref());
            let probe = self.members.get(&d.name).and_then(|m| m.probe.as_ref());
            let role = match probe.map(|p| &p.role) {
                Some(ObservedRole::Primary) if routed_primary == Some(d.name.as_str()) => Some("primary"),
                Some(ObservedRole::Replica) => Some("replica"),
                _ => None,
            };
            roles.push((d.name.clone(), role));
        }
        let current: HashMap<String, Option<String>> = self
            .pods
            .state()
            .iter()
            .filter(|p| p.namespace() == cluster.namespace())
            .map(|p| (p.name_any(), p.labels().get(crate::resources::shared::ROLE_LABEL).cloned()))
            .collect();
        let ns = cluster.namespace().unwrap_or_default();
        if let Err(e) = routing::label_pods(&self.ctx.client, &ns, &roles, &current).await {
            warn!(cluster = %key(cluster), error = %e, "could not label pods; retried next heartbeat");
        }
        // The NetworkPolicy depends on the spec only: apply once per generation.
        let generation = cluster.metadata.generation.unwrap_or_default();
        if self.pod_services_generation != Some(generation) {
            match routing::apply_acl_policy(&self.ctx.client, cluster, sel).await {
                Ok(Ok(())) => {
                    self.routing_problems.remove(&Reason::PolicyConflict);
                    self.pod_services_generation = Some(generation);
                }
                Ok(Err(why)) => {
                    warn!(cluster = %key(cluster), "{why}");
                    self.routing_problems.insert(Reason::PolicyConflict, why);
                    self.pod_services_generation = Some(generation);
                }
                Err(e) => {
                    warn!(cluster = %key(cluster), error = %e, "could not apply the ACL NetworkPolicy")
                }
            }
        }
    }
}

pub(super) fn shard_status<'a>(cluster: &'a HaCluster, shard: &str) -> Option<&'a ShardStatus> {
    cluster.status.as_ref()?.shards.iter().find(|s| s.name == shard)
}

pub(super) fn shard_entry<'a>(status: &'a mut HaClusterStatus, shard: &str) -> &'a mut ShardStatus {
    if let Some(i) = status.shards.iter().position(|s| s.name == shard) {
        &mut status.shards[i]
    } else {
        status.shards.push(ShardStatus { name: shard.to_owned(), ..Default::default() });
        status.shards.last_mut().expect("just pushed")
    }
}

/// Field manager of the observed part of HaCluster status, written by the monitor alone.
pub const OBSERVER: &str = "understudy-monitor";

/// The conditions the monitor owns; others (`LastPromotion`) are written by promotions.
const OBSERVED_CONDITIONS: [ConditionType; 5] = [
    ConditionType::Ready,
    ConditionType::Degraded,
    ConditionType::FailingOver,
    ConditionType::Paused,
    ConditionType::Routed,
];

/// The apply configuration of what the monitor observes: phase, observedGeneration, its
/// conditions, primary, healthyMembers and, per shard, upstream and members. Never the
/// shard's currentPrimary, targetPrimary, epoch, operation lock or the failover record:
/// those change only through the resourceVersion-guarded path.
fn observed_part(status: &HaClusterStatus) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut st = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            st.insert(k.into(), v);
        }
    };
    put("phase", json!(status.phase));
    put("observedGeneration", json!(status.observed_generation));
    put(
        "conditions",
        json!(
            status
                .conditions
                .iter()
                .filter(|c| OBSERVED_CONDITIONS.iter().any(|t| c.type_ == t.as_str()))
                .collect::<Vec<_>>()
        ),
    );
    put("primary", json!(status.primary));
    put("healthyMembers", json!(status.healthy_members));
    let shards: Vec<Value> = status
        .shards
        .iter()
        .map(|s| {
            let mut o = Map::new();
            o.insert("name".into(), json!(s.name));
            if let Some(u) = &s.upstream {
                o.insert("upstream".into(), json!(u));
            }
            o.insert("members".into(), json!(s.members));
            Value::Object(o)
        })
        .collect();
    put("shards", Value::Array(shards));
    json!({
        "apiVersion": HaCluster::api_version(&()),
        "kind": HaCluster::kind(&()),
        "status": st,
    })
}

/// How often changed offsets and lag alone are written to status.
const OFFSETS_REFRESH: Duration = Duration::from_secs(10);

/// How often a cluster superseded by a failover to primary re-reads the members of the
/// cluster made production in its place (between reads, those last read still count).
const SUPERSEDER_REFRESH: Duration = Duration::from_secs(5);
/// How long a change of the group's contact renewal counts as the group being in contact
/// (it renews every 5 s).
const CONTACT_LEASE: Duration = Duration::from_secs(15);
/// How often an agent cluster's redirect ConfigMap is read back and put right if it was
/// edited or deleted.
const REDIRECT_REFRESH: Duration = Duration::from_secs(10);

/// How long the monitor holds its observed write while a promotion it started is in flight
/// (most finish well within it; see [`Monitor::write_status`]).
const OBSERVED_HELD_FOR: Duration = Duration::from_secs(2);

/// Every member's offset and lag.
fn offsets(s: &HaClusterStatus) -> Vec<(Option<i64>, Option<i64>)> {
    s.shards.iter().flat_map(|s| s.members.iter().map(|m| (m.offset, m.lag))).collect()
}

/// The parts of a status whose change is worth a write: everything except heartbeat times,
/// offsets and lag, which move constantly (they are refreshed whenever something else changes;
/// lag counts only when it crosses `maxLagOnFailover`).
/// The lifecycle change under way (`spec.instances`), from the instances controller's
/// `Progressing=True` condition.
fn lifecycle_phase(status: &HaClusterStatus) -> Option<ClusterPhase> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Progressing.as_str() && c.status == "True")
        .and_then(|c| ClusterPhase::of_lifecycle(&c.reason))
}

fn significant(s: &HaClusterStatus, max_lag: i64) -> serde_json::Value {
    let mut s = s.clone();
    for shard in &mut s.shards {
        for m in &mut shard.members {
            m.last_heartbeat = None;
            m.offset = None;
            // Crossing maxLagOnFailover changes eligibility: that is worth a write.
            m.lag = m.lag.map(|l| i64::from(l > max_lag));
        }
    }
    for c in &mut s.conditions {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    serde_json::to_value(s).unwrap_or_default()
}

/// What the other site's members said: the first that acts as a primary, and those that
/// answered as something else (each within `timeout`; silent ones are in neither).
#[derive(Default)]
struct OtherSite {
    /// Every endpoint that answered as a primary.
    primaries: Vec<String>,
    not_primary: Vec<String>,
}

async fn acting_primary(engine: &dyn Engine, endpoints: &[String], timeout: Duration) -> OtherSite {
    let probes = futures::future::join_all(endpoints.iter().map(|endpoint| async move {
        let p = tokio::time::timeout(timeout, engine.probe(endpoint)).await.ok()?.ok()?;
        Some((endpoint.clone(), p.role == ObservedRole::Primary))
    }))
    .await;
    let mut out = OtherSite::default();
    for (endpoint, primary) in probes.into_iter().flatten() {
        if primary {
            out.primaries.push(endpoint);
        } else {
            out.not_primary.push(endpoint);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::hacluster::{FailoverRecord, MemberStatus, OperationLock};

    #[test]
    fn self_fencing_counts_replicas_whose_link_is_up() {
        let cluster: HaCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "c"},
            "spec": {"engine": "Redis", "selector": {"matchLabels": {"app": "c"}, "port": 6379}}
        }))
        .unwrap();
        let declared: Vec<Declared> = ["a", "b"]
            .iter()
            .map(|n| Declared { shard: "main".into(), name: (*n).into(), ..Default::default() })
            .collect();
        let probe = |role, link_up| Probe { role, link_up, ..Default::default() };
        let mut members = HashMap::from([
            (
                "a".to_owned(),
                MemberState { probe: Some(probe(ObservedRole::Primary, false)), ..Default::default() },
            ),
            (
                "b".to_owned(),
                MemberState { probe: Some(probe(ObservedRole::Replica, true)), ..Default::default() },
            ),
        ]);
        assert_eq!(fencing_want(&cluster, &declared, &members, "main", "a"), 1);
        // b is back but still in its first sync: it acknowledges nothing yet.
        members.get_mut("b").unwrap().probe = Some(probe(ObservedRole::Replica, false));
        assert_eq!(fencing_want(&cluster, &declared, &members, "main", "a"), 0);
        // Synced, but its pod is being deleted: about to stop, so not counted.
        members.get_mut("b").unwrap().probe = Some(probe(ObservedRole::Replica, true));
        let mut leaving = declared.clone();
        leaving[1].leaving = true;
        assert_eq!(fencing_want(&cluster, &declared, &members, "main", "a"), 1);
        assert_eq!(fencing_want(&cluster, &leaving, &members, "main", "a"), 0);
    }

    #[test]
    fn a_lifecycle_change_under_way_is_the_phase() {
        let t = Time(Timestamp::UNIX_EPOCH);
        let mut status = HaClusterStatus::default();
        assert_eq!(lifecycle_phase(&status), None);
        set_condition(
            &mut status.conditions,
            ConditionType::Progressing,
            true,
            Reason::Upgrading,
            "m",
            None,
            &t,
        );
        assert_eq!(lifecycle_phase(&status), Some(ClusterPhase::Upgrading));
        // Stopped (a member that does not come up) or done: the monitor's own phase.
        set_condition(
            &mut status.conditions,
            ConditionType::Progressing,
            false,
            Reason::MemberNotReady,
            "m",
            None,
            &t,
        );
        assert_eq!(lifecycle_phase(&status), None);
        for r in [
            Reason::Creating,
            Reason::AddingReplica,
            Reason::RemovingReplica,
            Reason::Restarting,
            Reason::Resizing,
            Reason::Reconfiguring,
        ] {
            let phase = ClusterPhase::of_lifecycle(r.as_str()).expect("a lifecycle reason is a phase");
            assert_eq!(serde_json::to_value(phase).unwrap(), serde_json::json!(r.as_str()));
        }
    }

    #[test]
    fn the_observed_part_carries_no_decision() {
        let t = Time(Timestamp::UNIX_EPOCH);
        let mut status = HaClusterStatus {
            phase: Some(ClusterPhase::Healthy),
            primary: Some("a".into()),
            shards: vec![ShardStatus {
                name: "s0".into(),
                current_primary: Some("a".into()),
                target_primary: Some("b".into()),
                epoch: 7,
                operation: Some(OperationLock {
                    kind: "ShardFailover".into(),
                    name: "x".into(),
                    namespace: None,
                    uid: None,
                    acquired_at: t.clone(),
                    expires_at: t.clone(),
                    force: false,
                    dead_members: vec![],
                    dead_nodes: vec![],
                }),
                upstream: None,
                members: vec![MemberStatus { name: "a".into(), role: Role::Primary, ..Default::default() }],
            }],
            last_failover: Some(FailoverRecord {
                shard: "s0".into(),
                from: None,
                to: Some("a".into()),
                reason: String::new(),
                started_at: t.clone(),
                duration_ms: None,
                lost_offset: None,
                loss_accounting: None,
                promoted_at_offset: None,
                epoch: 7,
                steps: vec![],
            }),
            ..Default::default()
        };
        set_condition(
            &mut status.conditions,
            ConditionType::Ready,
            true,
            Reason::PrimaryHealthy,
            "ok",
            None,
            &t,
        );
        set_condition(
            &mut status.conditions,
            ConditionType::LastPromotion,
            false,
            Reason::PromoteFailed,
            "x",
            None,
            &t,
        );
        let body = observed_part(&status);
        let text = body.to_string();
        for decision in [
            "currentPrimary",
            "targetPrimary",
            "epoch",
            "operation",
            "lastFailover",
            "LastPromotion",
            "protection",
            "standbyReleased",
            "supersededBy",
        ] {
            assert!(!text.contains(decision), "{decision} in {text}");
        }
        assert_eq!(body["status"]["shards"][0]["members"][0]["role"], "Primary");
        assert_eq!(body["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(body["status"]["primary"], "a");
        assert_eq!(body["kind"], "HaCluster");
    }
}
