//! One shard's promotion, run in a task of its own so that a drain (up to `stepTimeout`)
//! never holds up the heartbeats of the cluster's other shards. What to do and when to give
//! up is decided by the saga of [`crate::core::saga`]; [`ShardOp::run`] only carries out the
//! effects it asks for and reports how they went. Every effect is idempotent, so a restarted
//! operator resumes from the target and epoch recorded in status. The monitor applies the
//! [`OpDone`] it gets back (member state, metrics, routing, Events).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::reflector::Store};
use tracing::{debug, info, warn};

use super::{
    Context,
    hacluster::{Declared, LOCK_KIND, StatusHandle, drain, shard_entry, shard_status},
    key, routing,
};
use crate::{
    core::{
        saga::{Effect, End, Report, Saga, Start},
        shard::{Promotion, PromotionKind},
        vocabulary::{Action, ConditionType, Reason},
    },
    engines::{Engine, EngineError, Fault, ObservedRole},
    resources::{
        HaCluster,
        hacluster::{FailoverRecord, LossAccounting, OperationLock, ReplicasDown, Role, StepRecord},
        shared::set_condition,
    },
};

/// A promotion's task: what it needs from its monitor, copied when it starts.
pub struct ShardOp {
    pub ctx: Context,
    pub status: StatusHandle,
    pub pods: Store<Pod>,
    /// What the agent redirect ConfigMap says (shard → main host), once written.
    redirect_mains: Option<Vec<(String, String)>>,
    /// Where the primary Services move once the new primary is promoted, before the outcome
    /// is recorded ([`routing::route_promoted_early`]); None where they wait for the record.
    pub early_route: Option<EarlyRoute>,
    /// The copy the last outcome or abandon write was based on (what a conflict changed).
    last_base: Option<HaCluster>,
}

/// The routes a promotion may move early: the ones last written, and the old and new
/// primaries' routes (`host:port`).
pub struct EarlyRoute {
    pub last: routing::Routes,
    pub from: String,
    pub to: String,
}

/// What a finished promotion reports to its monitor.
pub struct OpDone {
    pub shard: String,
    pub promotion: Promotion,
    pub end: End,
    pub epoch: i64,
    pub started: Instant,
    /// The promote step succeeded: the new primary acts as one.
    pub promoted: bool,
    /// The new primary's offset right after its promotion.
    pub promoted_at_offset: Option<i64>,
    /// The old primary, as the saga saw it.
    pub from: Option<String>,
    /// The newest copy of the cluster this promotion wrote.
    pub written: Option<HaCluster>,
    /// What the agent redirect ConfigMap says now, when this promotion wrote it.
    pub redirect_mains: Option<Vec<(String, String)>>,
    /// A demotion queued on a silent old primary: its offset when that demotion runs.
    pub thawed: Option<(String, tokio::sync::oneshot::Receiver<i64>)>,
}

/// How long the outcome record waits for the primary Service's early write.
const EARLY_ROUTE_WAIT: Duration = Duration::from_secs(1);
/// How long that write may take at all (the promotion's end waits for it).
const EARLY_ROUTE_DEADLINE: Duration = Duration::from_secs(5);

/// What a promotion's outcome record holds.
struct Outcome<'a> {
    promotion: &'a Promotion,
    to: &'a str,
    drained: bool,
    epoch: i64,
    started_at: &'a Time,
    duration_ms: i64,
    steps: &'a [StepRecord],
    promoted_at_offset: Option<i64>,
}

impl ShardOp {
    pub fn new(ctx: Context, status: StatusHandle, pods: Store<Pod>) -> Self {
        Self { ctx, status, pods, redirect_mains: None, early_route: None, last_base: None }
    }

    /// Carry out promotion `p` of `shard_name` as the saga started from `start` directs.
    pub async fn run(
        mut self,
        engine: Arc<dyn Engine>,
        cluster: HaCluster,
        shard_name: String,
        declared: Vec<Declared>,
        p: Promotion,
        start: Start,
    ) -> OpDone {
        let (cluster, shard_name, declared, engine) =
            (&cluster, shard_name.as_str(), &declared[..], engine.as_ref());
        let started = Instant::now();
        let started_at = Time(Timestamp::now());
        let step_timeout = cluster.spec.failover.step_timeout.0;
        let to = declared.iter().find(|d| d.name == p.to).cloned().unwrap_or_default();
        let ckey = key(cluster);
        let from = start.from.as_ref().map(|f| f.name.clone());
        let mut saga = Saga::new(start);
        let endpoint = |name: &str| {
            declared.iter().find(|d| d.name == name).map(|d| d.endpoint.clone()).unwrap_or_default()
        };
        let mut epoch = shard_status(cluster, shard_name).map_or(0, |s| s.epoch);
        let mut steps: Vec<StepRecord> = Vec::new();
        let mut step_start = Time(Timestamp::now());
        let mut promoted_at_offset = None;
        let mut promoted = false;
        let mut thawed = None;
        let mut refetch = false;
        let mut routed_early = None;
        let mut seen = 0;
        let end = loop {
            // Steps the saga recorded since the last effect, timed as they are seen.
            for s in &saga.steps[seen..] {
                let now = Time(Timestamp::now());
                steps.push(StepRecord {
                    name: s.name.into(),
                    started_at: std::mem::replace(&mut step_start, now.clone()),
                    finished_at: now,
                    message: Some(s.message.clone()),
                });
                match s.name {
                    "fence" => crate::faults::crash_point("after-fence"),
                    "promote" if from.is_some() => crate::faults::crash_point("after-promote"),
                    _ => {}
                }
            }
            seen = saga.steps.len();
            let effect = saga.next();
            let effect_started = Instant::now();
            let what = format!("{effect:?}");
            let report: Report = match effect {
                Effect::Done(end) => break end,
                Effect::Record => {
                    match self.record_decision(cluster, shard_name, &to.name, &started_at).await {
                        Ok(e) => {
                            epoch = e;
                            step_start = Time(Timestamp::now());
                            info!(cluster = %ckey, shard = shard_name, to = %to.name, from = ?p.from, epoch, reason = %p.reason, "promoting");
                            if p.kind == PromotionKind::Failover {
                                // No epoch in the words: a repeated attempt is the same Warning
                                // (folded into one Event); the epoch is in status.
                                let msg = format!("shard {shard_name}: {}; promoting {}", p.reason, to.name);
                                self.ctx
                                    .event(cluster, true, Reason::FailingOver, Action::Failover, msg)
                                    .await;
                            }
                            Ok(())
                        }
                        Err(e) => Err((Fault::Silent, e.to_string())),
                    }
                }
                Effect::Drain { from, to } => drain(engine, &endpoint(&from), &endpoint(&to), step_timeout)
                    .await
                    .map_err(|e| (Fault::Answered, e)),
                Effect::Demote { member, to: None } => reported(engine.demote(&endpoint(&member)).await),
                Effect::Demote { member, to: Some(to) } => {
                    reported(engine.demote_drained(&endpoint(&member), &endpoint(&to)).await)
                }
                Effect::QueueDemote { member } => {
                    let queued = async {
                        let watch = engine.demote_when_thawed(&endpoint(&member)).await?;
                        thawed = watch.map(|rx| (member.clone(), rx));
                        Ok(())
                    };
                    timed(QUEUE_WAIT, queued).await
                }
                Effect::Kill { member } => self.kill_pod(cluster, &member).await,
                Effect::ResumeWrites { member } => {
                    let r = reported(engine.resume_writes(&endpoint(&member)).await);
                    if let Err((_, e)) = &r {
                        warn!(cluster = %ckey, %member, error = %e, "could not unpause (the pause expires by itself)");
                    }
                    r
                }
                Effect::Promote { member } => {
                    // The point it is promoted at is its offset just before: nothing more
                    // arrives from an old primary that is drained, fenced, frozen or dead,
                    // and after the promotion clients (routed early) add to it at once.
                    let before = match &from {
                        Some(_) if member == to.name => replica_offset(engine, &to, step_timeout).await,
                        _ => None,
                    };
                    if member == to.name {
                        unfence_for_promotion(engine, cluster, &to, step_timeout).await;
                    }
                    let r = timed(step_timeout, engine.promote(&endpoint(&member))).await;
                    if r.is_ok() && member == to.name {
                        promoted = true;
                        // Sentinel clients hear of it now, not after the outcome's status
                        // write and its watch event (bootstrap has no primary to move from).
                        if let (Some(d), Some(_)) = (&self.ctx.discovery, &from) {
                            d.announce(cluster, shard_name, epoch, &to.name, &to.endpoint);
                        }
                        if let Some(early) = self.early_route.take() {
                            routed_early = Some(self.route_early(cluster, early, started));
                        }
                        let after = primary_offset(engine, &to, step_timeout).await;
                        promoted_at_offset = match (before, after) {
                            (Some(b), Some(a)) => Some(b.min(a)),
                            (b, a) => a.or(b),
                        };
                    }
                    r
                }
                Effect::FollowUpstream { member, upstream } => {
                    let r = timed(step_timeout, engine.follow(&endpoint(&member), &upstream)).await;
                    if r.is_ok() {
                        promoted = true;
                        promoted_at_offset = primary_offset(engine, &to, step_timeout).await;
                    }
                    r
                }
                Effect::Redirect { members, to: _ } => {
                    self.redirect(engine, cluster, declared, &members, &to).await
                }
                Effect::RecordOutcome => {
                    // Clients first: the primary Service's write goes to the API server before
                    // the outcome's, not beside it (on a busy API server each slowed the other).
                    if let Some(mut task) = routed_early.take()
                        && tokio::time::timeout(EARLY_ROUTE_WAIT, &mut task).await.is_err()
                    {
                        routed_early = Some(task);
                    }
                    let outcome = Outcome {
                        promotion: &p,
                        to: &to.name,
                        drained: saga.drained(),
                        epoch,
                        started_at: &started_at,
                        duration_ms: started.elapsed().as_millis() as i64,
                        steps: &steps,
                        promoted_at_offset,
                    };
                    let r = self.record_outcome(shard_name, outcome, refetch).await;
                    refetch = r.is_err();
                    r
                }
                Effect::RecordAbandon { reason, message } => {
                    let r = self.record_abandon(shard_name, reason, &message, refetch).await;
                    refetch = r.is_err();
                    r
                }
            };
            // Where a promotion's time goes, effect by effect (the status record has
            // whole seconds only).
            debug!(
                cluster = %ckey,
                shard = shard_name,
                effect = %what,
                ok = report.is_ok(),
                took_ms = effect_started.elapsed().as_secs_f64() * 1000.0,
                since_start_ms = started.elapsed().as_secs_f64() * 1000.0,
                "promotion effect"
            );
            saga.observe(report);
        };
        // Before the monitor's own routing write, which must not be overtaken by this one.
        if let Some(task) = routed_early {
            let _ = task.await;
        }
        OpDone {
            shard: shard_name.to_owned(),
            promotion: p,
            end,
            epoch,
            started,
            promoted,
            promoted_at_offset,
            from,
            written: self.status.written.take(),
            redirect_mains: self.redirect_mains.take(),
            thawed,
        }
    }

    /// Move the primary Services to the promoted member in a task of its own, beside the rest
    /// of the saga (redirecting the other replicas, recording the outcome). Skipped when every
    /// routing slot is taken: the monitor routes after the record as before.
    fn route_early(
        &self,
        cluster: &HaCluster,
        early: EarlyRoute,
        started: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let (ctx, cluster) = (self.ctx.clone(), cluster.clone());
        tokio::spawn(async move {
            let Ok(_slot) = ctx.routing_slots.clone().try_acquire_owned() else { return };
            let t = Instant::now();
            // Bounded: the promotion's end waits for this task, and an API server that does
            // not answer must not hold the outcome up (the monitor routes after it anyway).
            let write =
                routing::route_promoted_early(&ctx.client, &cluster, &early.last, &early.from, &early.to);
            let r = match tokio::time::timeout(EARLY_ROUTE_DEADLINE, write).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {EARLY_ROUTE_DEADLINE:?}")),
            };
            match &r {
                Ok(true) => ctx.routed(&cluster.uid().unwrap_or_default()),
                Ok(false) => {}
                Err(e) => {
                    warn!(cluster = %key(&cluster), error = %e, "could not move the primary Service early; it moves after the record")
                }
            }
            debug!(
                cluster = %key(&cluster),
                written = ?r.as_ref().ok(),
                took_ms = t.elapsed().as_secs_f64() * 1000.0,
                since_start_ms = started.elapsed().as_secs_f64() * 1000.0,
                "primary Service moved before the record"
            );
        })
    }

    /// Record the decision before acting: epoch+1, target, lock; resourceVersion-guarded.
    async fn record_decision(
        &mut self,
        cluster: &HaCluster,
        shard_name: &str,
        to: &str,
        started_at: &Time,
    ) -> Result<i64, kube::Error> {
        let step_timeout = cluster.spec.failover.step_timeout.0;
        // What the decision was made on: the shard's epoch, primary, target and lock, the
        // spec (its generation) and the standby relation (a ProtectionGroup publishes it in
        // status, without a new generation).
        let premise = |c: &HaCluster| {
            let s = shard_status(c, shard_name).cloned().unwrap_or_default();
            (
                s.epoch,
                s.current_primary,
                s.target_primary,
                s.operation,
                c.metadata.generation,
                c.standby().cloned(),
            )
        };
        let decided_on = premise(cluster);
        let mut base = cluster.clone();
        let mut attempt = 0;
        loop {
            let mut next = base.clone();
            let status = next.status.get_or_insert_with(Default::default);
            let s = shard_entry(status, shard_name);
            s.epoch += 1;
            s.target_primary = Some(to.to_owned());
            s.operation = Some(OperationLock {
                kind: LOCK_KIND.into(),
                name: cluster.name_any(),
                namespace: cluster.namespace(),
                uid: cluster.uid(),
                acquired_at: started_at.clone(),
                expires_at: Time(Timestamp::now() + step_timeout * 4),
                force: false,
                dead_members: Vec::new(),
                dead_nodes: Vec::new(),
            });
            let epoch = s.epoch;
            status.mark_promoting(true, cluster.metadata.generation, &Time(Timestamp::now()));
            match self.status.replace(&next).await {
                Ok(()) => return Ok(epoch),
                // Another write won (usually the monitor's observed status). The decision
                // still holds if nothing it was made on changed: write it on the new copy.
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 3 => {
                    attempt += 1;
                    match self.status.fetch().await {
                        Some(fresh) if premise(&fresh) == decided_on => base = fresh,
                        _ => return Err(kube::Error::Api(e)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Point `members` at the new primary (redis), or write the redirect ConfigMap (agent).
    async fn redirect(
        &mut self,
        engine: &dyn Engine,
        cluster: &HaCluster,
        declared: &[Declared],
        members: &[String],
        to: &Declared,
    ) -> Report {
        if engine.follows_directly() {
            let targets: Vec<&Declared> = declared.iter().filter(|d| members.contains(&d.name)).collect();
            let results =
                futures::future::join_all(targets.iter().map(|d| engine.follow(&d.endpoint, &to.endpoint)))
                    .await;
            let failed: Vec<String> = targets
                .iter()
                .zip(results)
                .filter_map(|(d, r)| r.err().map(|e| format!("{}: {e}", d.name)))
                .collect();
            if failed.is_empty() {
                Ok(())
            } else {
                warn!(cluster = %key(cluster), ?failed, "could not redirect every replica; retried next heartbeat");
                Err((Fault::Silent, failed.join("; ")))
            }
        } else if let Some(redirect) = &cluster.spec.redirect {
            // Every shard's key, this one's naming the member just promoted: the ConfigMap is
            // applied whole.
            let shard =
                declared.iter().find(|d| d.name == to.name).map(|d| d.shard.as_str()).unwrap_or_default();
            let shards = cluster.status.as_ref().map(|s| s.shards.as_slice()).unwrap_or_default();
            let mains = routing::redirect_mains(shards, declared, Some((shard, &to.name)));
            match routing::apply_redirect(
                &self.ctx.client,
                cluster,
                redirect,
                &mains,
                self.ctx.allow_workload_restarts,
            )
            .await
            {
                Ok(_) => {
                    self.redirect_mains = Some(mains);
                    Ok(())
                }
                Err(e) => Err((Fault::Silent, format!("the redirect ConfigMap was not written: {e}"))),
            }
        } else {
            Ok(())
        }
    }

    /// Delete the pod of member `name` with no grace period (the member is a pod of the
    /// cluster's selector; the uid precondition keeps a pod recreated under the same name).
    async fn kill_pod(&self, cluster: &HaCluster, name: &str) -> Report {
        let ns = cluster.namespace().unwrap_or_default();
        let uid = self
            .pods
            .state()
            .into_iter()
            .find(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.name_any() == name)
            .and_then(|p| p.uid());
        let Some(uid) = uid else { return Err((Fault::Silent, format!("no pod {name} known"))) };
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let params = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions { uid: Some(uid), resource_version: None }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                info!(cluster = %key(cluster), pod = name, "deleted the unreachable old primary's pod (grace period 0)");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err((Fault::Silent, e.to_string())),
        }
    }

    /// Record the new primary, the roles as they now are, the steps and the lost offset;
    /// clear the target and our lock. One resourceVersion-guarded write; `refetch` reads
    /// the object first (after a failed attempt).
    async fn record_outcome(&mut self, shard_name: &str, o: Outcome<'_>, refetch: bool) -> Report {
        let base = if refetch { self.status.fetch().await } else { self.status.latest() };
        let Some(base) = base else { return Err((Fault::Silent, "the cluster could not be read".into())) };
        if refetch && let Some(before) = self.last_base.take() {
            debug!(cluster = %self.status.oref, changed = ?status_changes(&before, &base), "re-read after a conflicting write");
        }
        self.last_base = Some(base.clone());
        let mut next = base.clone();
        let status = next.status.get_or_insert_with(Default::default);
        let s = shard_entry(status, shard_name);
        // An operation asked for it (a FailoverRequest making a standby's leader the primary
        // records it even though the leader was already the recorded primary).
        let requested = s.operation.as_ref().is_some_and(|l| l.kind != LOCK_KIND);
        s.current_primary = Some(o.to.to_owned());
        s.target_primary = None;
        // Record the roles as they now are, so status never shows two primaries.
        for m in &mut s.members {
            if m.name == o.to {
                m.role = Role::Primary;
                m.upstream = None;
            } else if m.role == Role::Primary {
                m.role = if o.drained { Role::Replica } else { Role::Fenced };
            }
        }
        if s.operation.as_ref().is_some_and(|l| l.kind == LOCK_KIND) {
            s.operation = None;
        }
        // The summary column follows in the same write (the first shard's primary).
        status.primary = status.shards.first().and_then(|s| s.current_primary.clone());
        let p = o.promotion;
        if p.kind == PromotionKind::Failover
            || (p.kind == PromotionKind::Resume && (p.from.is_some() || requested))
        {
            status.last_failover = Some(FailoverRecord {
                shard: shard_name.to_owned(),
                from: p.from.clone(),
                to: Some(o.to.to_owned()),
                reason: p.reason.clone(),
                started_at: o.started_at.clone(),
                duration_ms: Some(o.duration_ms),
                lost_offset: if o.drained { Some(0) } else { p.lost_offset },
                loss_accounting: Some(if o.drained {
                    LossAccounting::Drained
                } else {
                    LossAccounting::AtLeast
                }),
                promoted_at_offset: o.promoted_at_offset,
                epoch: o.epoch,
                steps: o.steps.to_vec(),
            });
        }
        self.status.replace(&next).await.map_err(|e| {
            match &e {
                // An ordinary optimistic-concurrency retry (the monitor applied what it saw).
                kube::Error::Api(s) if s.code == 409 => {
                    debug!(cluster = %self.status.oref, "recording the promotion met a concurrent write; retrying")
                }
                _ => warn!(cluster = %self.status.oref, error = %e, "recording the promotion failed; retrying"),
            }
            (Fault::Silent, e.to_string())
        })
    }

    /// Give up a recorded promotion: clear the target (and our own lock; the epoch stays
    /// bumped) and say why in the LastPromotion condition.
    async fn record_abandon(&mut self, shard_name: &str, reason: Reason, why: &str, refetch: bool) -> Report {
        let base = if refetch { self.status.fetch().await } else { self.status.latest() };
        let Some(base) = base else { return Err((Fault::Silent, "the cluster could not be read".into())) };
        let mut next = base.clone();
        let status = next.status.get_or_insert_with(Default::default);
        let s = shard_entry(status, shard_name);
        s.target_primary = None;
        if s.operation.as_ref().is_some_and(|l| l.kind == LOCK_KIND) {
            s.operation = None;
        }
        set_condition(
            &mut status.conditions,
            ConditionType::LastPromotion,
            false,
            reason,
            format!("shard {shard_name}: {why}"),
            base.metadata.generation,
            &Time(Timestamp::now()),
        );
        self.status.replace(&next).await.map_err(|e| (Fault::Silent, e.to_string()))
    }
}

/// An engine call's result in the saga's terms.
/// What another writer changed between two copies of a cluster: the status fields, and the
/// conditions by type (for the debug log of a conflicting write).
fn status_changes(before: &HaCluster, after: &HaCluster) -> Vec<String> {
    let fields = |c: &HaCluster| match serde_json::to_value(&c.status) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    let (b, a) = (fields(before), fields(after));
    let mut changed: Vec<String> =
        b.keys().chain(a.keys()).filter(|k| *k != "conditions" && b.get(*k) != a.get(*k)).cloned().collect();
    changed.dedup();
    let conditions = |c: &HaCluster| c.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    for c in conditions(after) {
        if !conditions(before).iter().any(|x| {
            x.type_ == c.type_ && x.status == c.status && x.reason == c.reason && x.message == c.message
        }) {
            changed.push(format!("condition {} = {} {}: {}", c.type_, c.status, c.reason, c.message));
        }
    }
    changed
}

fn reported(r: Result<(), EngineError>) -> Report {
    r.map_err(|e| (e.fault(), e.to_string()))
}

/// An engine action bounded by `timeout`.
/// How long queueing a demotion on a silent old primary may hold up the promotion. Over a
/// line it is a write into a socket; without one, a connection that a frozen process's kernel
/// accepts at once. One that takes longer goes to a host that is gone or cut off, where
/// nothing queued would arrive anyway.
const QUEUE_WAIT: Duration = Duration::from_millis(250);

async fn timed(
    timeout: Duration,
    action: impl std::future::Future<Output = Result<(), EngineError>>,
) -> Report {
    match tokio::time::timeout(timeout, action).await {
        Ok(r) => reported(r),
        Err(_) => Err((Fault::Silent, format!("no answer within {timeout:?}"))),
    }
}

/// A member about to be promoted starts writable, not self-fenced: with `replicasDown:
/// KeepWriting` (the default) a primary is fenced by the replicas whose link to it is up, and
/// a new primary has none at the instant it is promoted — its replicas re-attach a moment
/// later. Promoted with `min-replicas-to-write` still set (every member keeps it, so a
/// promoted replica is fenced), it answered clients the announcement had already sent there
/// `NOREPLICAS` until one did: measured 13 ms of a 44 ms switchover pause. The monitor sets it
/// again on its next heartbeat once a replica's link is up, as it does after a failover. With
/// `PauseWrites` the user chose refusals over unreplicated writes: left as it is.
async fn unfence_for_promotion(
    engine: &dyn Engine,
    cluster: &HaCluster,
    to: &Declared,
    step_timeout: Duration,
) {
    let f = &cluster.spec.failover.fencing;
    if !engine.self_fences() || f.replicas_down != ReplicasDown::KeepWriting {
        return;
    }
    let lag = f.max_replica_lag_seconds.max(1) as u32;
    if let Err(e) = timed(step_timeout, engine.set_self_fencing(&to.endpoint, 0, lag)).await {
        debug!(member = %to.name, error = ?e, "could not lift self-fencing before the promotion; it refuses writes until a replica re-attaches");
    }
}

/// A replica's offset in the stream of the primary it followed (read just before it is
/// promoted).
async fn replica_offset(engine: &dyn Engine, to: &Declared, timeout: Duration) -> Option<i64> {
    match tokio::time::timeout(timeout, engine.probe(&to.endpoint)).await {
        Ok(Ok(p)) if p.role == ObservedRole::Replica => p.offset,
        _ => None,
    }
}

/// The new primary's own offset, read at once after its promotion: the point replicas are
/// measured against from now on, and what a re-attached old primary had beyond it was lost.
async fn primary_offset(engine: &dyn Engine, to: &Declared, timeout: Duration) -> Option<i64> {
    match tokio::time::timeout(timeout, engine.probe(&to.endpoint)).await {
        Ok(Ok(p)) if p.role == ObservedRole::Primary => p.offset,
        _ => None,
    }
}
