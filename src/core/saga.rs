//! One shard's promotion as data: record → fence (drain or demote the old primary) → promote
//! → redirect → record the outcome, and the ways it is abandoned.
//!
//! [`Saga::next`] says what to do next; the monitor does it and reports how it went with
//! [`Saga::observe`]. The saga holds no clock and does no I/O, so every path — including
//! each abandon path and a failure at every step — is tested here, by property tests that
//! run it against a model of the members.
//!
//! Safety rules it encodes:
//! - Nothing is done before the decision (epoch, target, lock) is recorded; a promotion
//!   resumed from status skips that step because it was recorded before.
//! - A healthy old primary is drained and demoted *before* the candidate is promoted, so at
//!   no instant are there two writable members.
//! - An old primary that does not answer is promoted past only when it cannot be taking
//!   writes (not running), when it refuses writes by itself once its replicas leave
//!   (self-fencing), when its pod was deleted, when the operation declared it dead, or when
//!   the spec says so (`onTimeout: Force`). Otherwise the promotion is abandoned.
//! - An old primary that answers but refuses to be demoted is never promoted past.
//! - Steps record what happened, never what was meant to happen.
//! - The outcome is reported as done only when it was written.

use super::{member::Fault, shard::PromotionKind, vocabulary::Reason};

/// Said of an old primary whose pod was deleted: it never comes back to be re-attached, so
/// `lostOffset` counts what it acknowledged after its last probe only if it runs again
/// before the kubelet stops it (its queued demotion reports the offset it stopped at).
const UNMEASURED: &str = "writes it acknowledged after its last probe are counted if it runs its queued demotion before the kubelet stops it, otherwise they cannot be measured";

/// How many times a status write of the saga is tried before it gives up.
pub const RECORD_ATTEMPTS: u32 = 5;

/// What to do when the old primary cannot be shown to have stopped taking writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnTimeout {
    /// Give up the promotion and report it: the shard stays without a new primary.
    #[default]
    Abort,
    /// Promote anyway; the old primary is out of routing.
    Force,
}

/// The old primary as the monitor last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OldPrimary {
    pub name: String,
    /// It answered the latest probe as a healthy primary: a switchover drains it.
    pub healthy_primary: bool,
    /// It answered the latest probe at all.
    pub reachable: bool,
    /// For one that does not answer: how its last probe failed.
    pub last_fault: Option<Fault>,
    /// It refuses writes by itself once its replicas leave (redis `min-replicas-to-write`).
    pub self_fencing: bool,
    /// How it does, in the engine's words (for the fence step), e.g. "once its replicas
    /// follow the new primary".
    pub self_fencing_how: String,
    /// The operation declared it dead (ShardFailover `deadUids`) or its node dead: it is
    /// neither drained nor demoted nor killed.
    pub declared_dead: bool,
    /// It is a pod that may be deleted (grace period 0) as a last-resort fence.
    pub killable: bool,
}

/// What the new primary becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Become {
    /// A writable primary.
    Writable,
    /// A standby cluster's leader: a replica of this upstream `host:port`.
    Follower(String),
}

/// Everything the saga needs to know when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub kind: PromotionKind,
    pub to: String,
    pub from: Option<OldPrimary>,
    /// The engine can drain (pause writes and compare offsets) and the promotion was not
    /// forced: a healthy old primary is drained rather than cut off.
    pub graceful: bool,
    /// Why a promotion that was not forced is not graceful (an HA agent that does not
    /// advertise the optional drain step): said in the fence step, so the operation's record
    /// shows that writes in flight were not waited for.
    pub not_drained: Option<String>,
    pub become_: Become,
    /// Members to point at the new primary afterwards.
    pub others: Vec<String>,
    pub on_timeout: OnTimeout,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Bump the epoch, record the target and take the shard's lock (resourceVersion-guarded).
    Record,
    /// Pause writes on `from` and wait until `to` has applied everything `from` wrote.
    Drain { from: String, to: String },
    /// Stop the member from taking writes. With `to`: the member was drained and `to` holds
    /// everything it wrote, so it is demoted by becoming `to`'s replica — re-attached the
    /// moment `to` is promoted rather than after the redirect, so the new primary's
    /// self-fencing counts a replica at once.
    Demote { member: String, to: Option<String> },
    /// Delete the member's pod with no grace period.
    Kill { member: String },
    /// The member does not answer: queue a demotion that it runs, if it runs again, before
    /// any client command sent after this (a frozen process thawing).
    QueueDemote { member: String },
    /// Give the member its writes back (undo a drain's pause).
    ResumeWrites { member: String },
    /// Make the member a writable primary.
    Promote { member: String },
    /// Make the member replicate from `upstream` (a standby cluster's leader).
    FollowUpstream { member: String, upstream: String },
    /// Point `members` at the new primary `to`. Failures are reported, not fatal: the
    /// heartbeat repairs stray replicas.
    Redirect { members: Vec<String>, to: String },
    /// Record the new primary, the steps and the lost offset; clear the target and the lock.
    RecordOutcome,
    /// Clear the target and the saga's own lock; report `reason` and `message`.
    RecordAbandon { reason: Reason, message: String },
    /// Nothing more to do.
    Done(End),
}

/// How a saga ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The new primary is recorded.
    Promoted,
    /// Given up and recorded; the old primary keeps (or got back) its role. `reason` (the
    /// `LastPromotion` condition's) is one of [`Reason::DrainTimedOut`],
    /// [`Reason::DemoteFailed`], [`Reason::PromoteFailed`] and [`Reason::FenceTimedOut`].
    Abandoned { reason: Reason, message: String },
    /// The decision could not be recorded: nothing was done.
    NotStarted(String),
    /// The promotion itself failed: the target stays recorded and the next heartbeat
    /// retries it, or elects another candidate.
    Retry(String),
    /// Roles changed but the last status write failed: the target is still recorded, so the
    /// next heartbeat resumes and records it. Nothing is reported as done.
    Unrecorded(String),
}

/// How an effect went.
pub type Report = Result<(), (Fault, String)>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Record,
    Drain,
    DemoteDrained,
    Fence,
    /// Then back to deciding on the silent old primary, `why` it was silent in hand.
    QueueDemote {
        why: String,
    },
    Kill,
    Promote,
    /// Switchover whose promotion failed: make the old primary writable again.
    RestoreOld {
        reason: Reason,
        message: String,
    },
    /// Give the drained old primary its writes back, then abandon.
    ResumeOld {
        reason: Reason,
        message: String,
    },
    Redirect,
    /// After a successful switchover: unpause the demoted old primary (it now refuses
    /// writes as a replica), then record.
    Unpause,
    Outcome,
    Abandon {
        reason: Reason,
        message: String,
    },
    Done(End),
}

/// One step as it happened, for `status.lastFailover.steps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// fence, promote or redirect.
    pub name: &'static str,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Saga {
    start: Start,
    phase: Phase,
    /// What happened so far, in order.
    pub steps: Vec<Step>,
    /// The old primary was drained and demoted: it still holds everything and may be
    /// restored if the promotion fails.
    drained: bool,
    /// Deleting the old primary's pod was tried (it is tried once).
    kill_tried: bool,
    /// Queueing a demotion on the silent old primary was tried (once).
    queue_tried: bool,
    /// The old primary's pod was deleted: its process may still thaw and answer as a
    /// primary until the kubelet kills it (at least 2 s later), so a demotion is queued too.
    killed: bool,
    attempts: u32,
}

impl Saga {
    pub fn new(start: Start) -> Self {
        let mut saga = Self {
            start,
            phase: Phase::Record,
            steps: Vec::new(),
            drained: false,
            kill_tried: false,
            queue_tried: false,
            killed: false,
            attempts: 0,
        };
        if saga.start.kind == PromotionKind::Resume {
            // Recorded before (this is how a restarted operator resumes): go on from there.
            saga.phase = saga.fence_phase();
        }
        saga
    }

    pub fn start(&self) -> &Start {
        &self.start
    }

    /// What to do now.
    pub fn next(&self) -> Effect {
        let from = || self.start.from.as_ref().map(|f| f.name.clone()).unwrap_or_default();
        match &self.phase {
            Phase::Record => Effect::Record,
            Phase::Drain => Effect::Drain { from: from(), to: self.start.to.clone() },
            Phase::DemoteDrained => Effect::Demote { member: from(), to: Some(self.start.to.clone()) },
            Phase::Fence => Effect::Demote { member: from(), to: None },
            Phase::Kill => Effect::Kill { member: from() },
            Phase::QueueDemote { .. } => Effect::QueueDemote { member: from() },
            Phase::Promote => match &self.start.become_ {
                Become::Writable => Effect::Promote { member: self.start.to.clone() },
                Become::Follower(up) => {
                    Effect::FollowUpstream { member: self.start.to.clone(), upstream: up.clone() }
                }
            },
            Phase::RestoreOld { .. } => Effect::Promote { member: from() },
            Phase::ResumeOld { .. } | Phase::Unpause => Effect::ResumeWrites { member: from() },
            Phase::Redirect => {
                Effect::Redirect { members: self.start.others.clone(), to: self.start.to.clone() }
            }
            Phase::Outcome => Effect::RecordOutcome,
            Phase::Abandon { reason, message } => {
                Effect::RecordAbandon { reason: *reason, message: message.clone() }
            }
            Phase::Done(end) => Effect::Done(end.clone()),
        }
    }

    /// Whether the saga has ended.
    pub fn done(&self) -> Option<&End> {
        match &self.phase {
            Phase::Done(e) => Some(e),
            _ => None,
        }
    }

    /// The old primary was drained and demoted (a clean switchover so far).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Report how the effect returned by [`Saga::next`] went.
    pub fn observe(&mut self, report: Report) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done(End::NotStarted(String::new())));
        self.phase = self.transition(phase, report);
    }

    fn step(&mut self, name: &'static str, message: String) {
        self.steps.push(Step { name, message });
    }

    fn old_name(&self) -> String {
        self.start.from.as_ref().map(|f| f.name.clone()).unwrap_or_default()
    }

    /// Where a recorded promotion starts acting.
    fn fence_phase(&mut self) -> Phase {
        let Some(from) = self.start.from.clone() else { return Phase::Promote };
        if from.declared_dead {
            self.step("fence", format!("{} not touched: declared dead by the operation", from.name));
            return Phase::Promote;
        }
        if from.healthy_primary && self.start.graceful {
            return Phase::Drain;
        }
        if from.reachable {
            return Phase::Fence;
        }
        self.fence_failed(from.last_fault.clone().unwrap_or(Fault::Silent), "does not answer".to_owned())
    }

    /// The old primary could not be demoted: go on only when it cannot be taking writes.
    fn fence_failed(&mut self, fault: Fault, why: String) -> Phase {
        let from = self.start.from.clone().unwrap_or_default();
        match fault {
            Fault::Refused => {
                self.step(
                    "fence",
                    format!("{} is not running (connection refused): nothing to fence", from.name),
                );
                Phase::Promote
            }
            Fault::Answered => Phase::Abandon {
                reason: Reason::DemoteFailed,
                message: format!(
                    "{} answers but could not be demoted ({why}); {} is not promoted while it may take writes",
                    from.name, self.start.to
                ),
            },
            Fault::Silent if from.killable && !self.kill_tried => {
                self.kill_tried = true;
                Phase::Kill
            }
            // Going on past it: first queue a demotion it runs if it runs again (not when the
            // promotion is abandoned — then nothing is changed on it).
            Fault::Silent
                if (from.self_fencing || self.start.on_timeout == OnTimeout::Force) && !self.queue_tried =>
            {
                self.queue_tried = true;
                Phase::QueueDemote { why }
            }
            Fault::Silent if from.self_fencing => {
                self.step(
                    "fence",
                    format!(
                        "{} unreachable ({why}), not demoted: it refuses writes by itself {} (self-fencing)",
                        from.name, from.self_fencing_how
                    ),
                );
                Phase::Promote
            }
            Fault::Silent if self.start.on_timeout == OnTimeout::Force => {
                self.step("fence", format!("{} unreachable ({why}), skipped (onTimeout: Force)", from.name));
                Phase::Promote
            }
            Fault::Silent => Phase::Abandon {
                reason: Reason::FenceTimedOut,
                message: format!(
                    "{} does not answer ({why}) and cannot be shown to have stopped taking writes (no self-fencing, onTimeout: Abort); {} is not promoted",
                    from.name, self.start.to
                ),
            },
        }
    }

    fn transition(&mut self, phase: Phase, report: Report) -> Phase {
        let from = self.old_name();
        let to = self.start.to.clone();
        match (phase, report) {
            (Phase::Record, Ok(())) => self.fence_phase(),
            (Phase::Record, Err((_, e))) => Phase::Done(End::NotStarted(e)),

            (Phase::Drain, Ok(())) => Phase::DemoteDrained,
            (Phase::Drain, Err((_, e))) => Phase::ResumeOld {
                reason: Reason::DrainTimedOut,
                message: format!("switchover to {to} abandoned: {e}"),
            },
            (Phase::DemoteDrained, Ok(())) => {
                self.drained = true;
                self.step(
                    "fence",
                    format!("{from} drained (writes paused until {to} had everything) and demoted to a replica of {to}"),
                );
                Phase::Promote
            }
            (Phase::DemoteDrained, Err((_, e))) => Phase::ResumeOld {
                reason: Reason::DemoteFailed,
                message: format!("switchover to {to} abandoned: could not demote {from}: {e}"),
            },

            (Phase::Fence, Ok(())) => {
                let msg = match &self.start.not_drained {
                    Some(why) => format!("{from} demoted without a drain ({why})"),
                    None => format!("{from} demoted"),
                };
                self.step("fence", msg);
                Phase::Promote
            }
            (Phase::Fence, Err((fault, e))) => self.fence_failed(fault, e),

            // After the pod was deleted: the queued demotion is for the moments between a thaw
            // and the kubelet's kill, and the promotion goes on either way.
            (Phase::QueueDemote { .. }, r) if self.killed => {
                let queued = match r {
                    Ok(()) => {
                        "a demotion is queued that it runs first if it runs again before the kubelet kills it"
                            .to_owned()
                    }
                    Err((_, e)) => format!("no demotion could be queued ({e})"),
                };
                self.step(
                    "fence",
                    format!(
                        "{from} unreachable; its pod was deleted (grace period 0); {queued}; {UNMEASURED}"
                    ),
                );
                Phase::Promote
            }
            (Phase::QueueDemote { why }, Ok(())) => self.fence_failed(
                Fault::Silent,
                format!("{why}; a demotion is queued that it runs before any later client command"),
            ),
            (Phase::QueueDemote { why }, Err((_, e))) => {
                self.fence_failed(Fault::Silent, format!("{why}; no demotion could be queued: {e}"))
            }
            (Phase::Kill, Ok(())) if !self.queue_tried => {
                self.killed = true;
                self.queue_tried = true;
                Phase::QueueDemote { why: String::new() }
            }
            (Phase::Kill, Ok(())) => {
                self.step(
                    "fence",
                    format!("{from} unreachable; its pod was deleted (grace period 0); {UNMEASURED}"),
                );
                Phase::Promote
            }
            (Phase::Kill, Err((_, e))) => {
                self.fence_failed(Fault::Silent, format!("its pod was not deleted: {e}"))
            }

            (Phase::Promote, Ok(())) => {
                let what = match &self.start.become_ {
                    Become::Writable => format!("{to} is writable"),
                    Become::Follower(up) => format!("{to} leads the standby cluster, following {up}"),
                };
                self.step("promote", what);
                Phase::Redirect
            }
            (Phase::Promote, Err((_, e))) if self.drained => Phase::RestoreOld {
                reason: Reason::PromoteFailed,
                message: format!("promoting {to} failed: {e}; {from} keeps the primary role"),
            },
            (Phase::Promote, Err((_, e))) => Phase::Done(End::Retry(format!("promoting {to} failed: {e}"))),

            (Phase::RestoreOld { reason, message }, Ok(())) => Phase::ResumeOld { reason, message },
            (Phase::RestoreOld { reason, message: _ }, Err((_, e))) => Phase::ResumeOld {
                reason,
                message: format!(
                    "promoting {to} failed and {from} could not be made primary again ({e}); the next heartbeat elects a primary"
                ),
            },
            // Resuming writes is best effort: the pause expires by itself.
            (Phase::ResumeOld { reason, message }, _) => Phase::Abandon { reason, message },

            (Phase::Redirect, r) => {
                let msg = match r {
                    Ok(()) if self.start.others.is_empty() => "no other member to redirect".to_owned(),
                    Ok(()) => format!("{} follow {to}", self.start.others.join(", ")),
                    Err((_, e)) => format!("not all members follow {to} yet (retried every heartbeat): {e}"),
                };
                self.step("redirect", msg);
                if self.drained { Phase::Unpause } else { Phase::Outcome }
            }
            (Phase::Unpause, _) => Phase::Outcome,

            (Phase::Outcome, Ok(())) => Phase::Done(End::Promoted),
            (Phase::Outcome, Err((_, e))) => {
                self.attempts += 1;
                if self.attempts >= RECORD_ATTEMPTS {
                    Phase::Done(End::Unrecorded(e))
                } else {
                    Phase::Outcome
                }
            }
            (Phase::Abandon { reason, message }, Ok(())) => Phase::Done(End::Abandoned { reason, message }),
            (Phase::Abandon { reason, message }, Err((_, e))) => {
                self.attempts += 1;
                if self.attempts >= RECORD_ATTEMPTS {
                    Phase::Done(End::Unrecorded(e))
                } else {
                    Phase::Abandon { reason, message }
                }
            }
            (Phase::Done(end), _) => Phase::Done(end),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn old(healthy: bool) -> OldPrimary {
        OldPrimary {
            name: "a".into(),
            healthy_primary: healthy,
            reachable: healthy,
            last_fault: (!healthy).then_some(Fault::Silent),
            ..Default::default()
        }
    }

    fn start(kind: PromotionKind, from: Option<OldPrimary>) -> Start {
        Start {
            kind,
            to: "b".into(),
            from,
            graceful: true,
            not_drained: None,
            become_: Become::Writable,
            others: vec!["c".into()],
            on_timeout: OnTimeout::Abort,
        }
    }

    /// Run the saga with every effect succeeding except those `fail` says; returns the effects.
    fn run(saga: &mut Saga, mut fail: impl FnMut(&Effect) -> Option<Fault>) -> Vec<Effect> {
        let mut out = Vec::new();
        for _ in 0..64 {
            let e = saga.next();
            if let Effect::Done(_) = e {
                out.push(e);
                return out;
            }
            let r = match fail(&e) {
                Some(f) => Err((f, "boom".to_owned())),
                None => Ok(()),
            };
            out.push(e);
            saga.observe(r);
        }
        panic!("saga did not end: {out:?}");
    }

    #[test]
    fn a_switchover_drains_and_demotes_before_promoting() {
        let mut s = Saga::new(start(PromotionKind::Resume, Some(old(true))));
        let effects = run(&mut s, |_| None);
        assert_eq!(
            effects,
            [
                Effect::Drain { from: "a".into(), to: "b".into() },
                Effect::Demote { member: "a".into(), to: Some("b".into()) },
                Effect::Promote { member: "b".into() },
                Effect::Redirect { members: vec!["c".into()], to: "b".into() },
                Effect::ResumeWrites { member: "a".into() },
                Effect::RecordOutcome,
                Effect::Done(End::Promoted),
            ]
        );
        assert_eq!(s.steps.iter().map(|s| s.name).collect::<Vec<_>>(), ["fence", "promote", "redirect"]);
    }

    #[test]
    fn a_failover_records_first_and_says_what_fencing_did() {
        let mut from = old(false);
        from.self_fencing = true;
        let mut s = Saga::new(start(PromotionKind::Failover, Some(from)));
        let effects = run(&mut s, |_| None);
        assert_eq!(effects[0], Effect::Record);
        // Silent: a demotion is queued for the moment it runs again, then it is promoted past.
        assert_eq!(effects[1], Effect::QueueDemote { member: "a".into() });
        assert_eq!(effects[2], Effect::Promote { member: "b".into() });
        assert!(s.steps[0].message.contains("not demoted"), "{:?}", s.steps);
        assert!(s.steps[0].message.contains("a demotion is queued"), "{:?}", s.steps);
        // A demotion that could not be queued is said so, and changes nothing else.
        let mut from = old(false);
        from.self_fencing = true;
        let mut s = Saga::new(start(PromotionKind::Failover, Some(from)));
        run(&mut s, |e| matches!(e, Effect::QueueDemote { .. }).then_some(Fault::Silent));
        assert_eq!(s.done(), Some(&End::Promoted));
        assert!(s.steps[0].message.contains("no demotion could be queued"), "{:?}", s.steps);
    }

    #[test]
    fn an_unreachable_primary_without_self_fencing_aborts_by_default_and_goes_on_when_forced() {
        let mut s = Saga::new(start(PromotionKind::Failover, Some(old(false))));
        let effects = run(&mut s, |_| None);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Promote { .. })));
        assert!(matches!(s.done(), Some(End::Abandoned { reason: Reason::FenceTimedOut, .. })));
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::QueueDemote { .. })),
            "abandoned: nothing queued"
        );
        let mut forced = start(PromotionKind::Failover, Some(old(false)));
        forced.on_timeout = OnTimeout::Force;
        let mut s = Saga::new(forced);
        let effects = run(&mut s, |_| None);
        assert_eq!(s.done(), Some(&End::Promoted));
        assert!(s.steps[0].message.contains("skipped"));
        assert!(effects.contains(&Effect::QueueDemote { member: "a".into() }), "promoted past it: queued");
    }

    #[test]
    fn a_stopped_process_needs_no_fencing_and_a_pod_is_deleted() {
        let mut from = old(false);
        from.last_fault = Some(Fault::Refused);
        let mut s = Saga::new(start(PromotionKind::Failover, Some(from)));
        run(&mut s, |_| None);
        assert_eq!(s.done(), Some(&End::Promoted));
        let mut from = old(false);
        from.killable = true;
        let mut s = Saga::new(start(PromotionKind::Failover, Some(from)));
        let effects = run(&mut s, |_| None);
        assert_eq!(effects[1], Effect::Kill { member: "a".into() });
        // Its process lives on until the kubelet kills it, and may thaw before: a demotion is
        // queued before the promotion, whether or not that works.
        assert_eq!(effects[2], Effect::QueueDemote { member: "a".into() });
        assert_eq!(effects[3], Effect::Promote { member: "b".into() });
        assert!(s.steps[0].message.contains("pod was deleted"));
        assert!(s.steps[0].message.contains("a demotion is queued"), "{:?}", s.steps);
        // Its replacement starts empty: what it acknowledged last is never re-attached.
        assert!(s.steps[0].message.contains("cannot be measured"), "{:?}", s.steps);
        let mut from = old(false);
        from.killable = true;
        let mut s = Saga::new(start(PromotionKind::Failover, Some(from)));
        run(&mut s, |e| matches!(e, Effect::QueueDemote { .. }).then_some(Fault::Silent));
        assert_eq!(s.done(), Some(&End::Promoted));
        assert!(s.steps[0].message.contains("no demotion could be queued"), "{:?}", s.steps);
        // The pod cannot be deleted: the rules for an unreachable primary apply.
        let mut from = old(false);
        from.killable = true;
        let mut s = Saga::new(start(PromotionKind::Failover, Some(from)));
        run(&mut s, |e| matches!(e, Effect::Kill { .. }).then_some(Fault::Silent));
        assert!(matches!(s.done(), Some(End::Abandoned { reason: Reason::FenceTimedOut, .. })));
    }

    #[test]
    fn a_failed_outcome_write_is_not_reported_as_done() {
        let mut s = Saga::new(start(PromotionKind::Resume, Some(old(true))));
        let effects = run(&mut s, |e| (*e == Effect::RecordOutcome).then_some(Fault::Silent));
        assert_eq!(effects.iter().filter(|e| **e == Effect::RecordOutcome).count(), RECORD_ATTEMPTS as usize);
        assert!(matches!(s.done(), Some(End::Unrecorded(_))));
    }

    #[test]
    fn a_declared_dead_primary_is_not_touched() {
        let mut from = old(true);
        from.declared_dead = true;
        let mut s = Saga::new(start(PromotionKind::Resume, Some(from)));
        let effects = run(&mut s, |_| None);
        assert!(!effects.iter().any(|e| matches!(
            e,
            Effect::Drain { .. }
                | Effect::Demote { .. }
                | Effect::Kill { .. }
                | Effect::QueueDemote { .. }
                | Effect::ResumeWrites { .. }
        )));
        assert_eq!(s.done(), Some(&End::Promoted));
    }

    /// The members as far as writes go, driven by the effects that succeeded.
    #[derive(Debug, Default)]
    struct Model {
        /// The old primary takes writes (it may, as far as anyone knows).
        from_writable: bool,
        from_paused: bool,
        /// The old primary refuses writes by itself once nobody replicates from it.
        from_self_fences: bool,
        to_writable: bool,
        others_follow_to: bool,
    }

    impl Model {
        fn writable(&self) -> usize {
            let from = self.from_writable
                && !self.from_paused
                && !(self.from_self_fences && self.to_writable && self.others_follow_to);
            usize::from(from) + usize::from(self.to_writable)
        }
    }

    fn arb_fault() -> impl Strategy<Value = Option<Fault>> {
        prop_oneof![
            4 => Just(None),
            1 => Just(Some(Fault::Refused)),
            1 => Just(Some(Fault::Silent)),
            1 => Just(Some(Fault::Answered)),
        ]
    }

    fn arb_start() -> impl Strategy<Value = Start> {
        (
            prop_oneof![
                Just(PromotionKind::Failover),
                Just(PromotionKind::Resume),
                Just(PromotionKind::Bootstrap)
            ],
            any::<bool>(),
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
            prop::option::of(prop_oneof![Just(Fault::Refused), Just(Fault::Silent), Just(Fault::Answered)]),
            any::<bool>(),
        )
            .prop_map(
                |(kind, has_from, (healthy, reachable, selff, dead, kill, graceful), fault, force)| Start {
                    kind,
                    to: "b".into(),
                    from: has_from.then(|| OldPrimary {
                        name: "a".into(),
                        healthy_primary: healthy && reachable,
                        reachable,
                        last_fault: if reachable { None } else { fault },
                        self_fencing: selff,
                        self_fencing_how: "once its replicas follow the new primary".into(),
                        declared_dead: dead,
                        killable: kill,
                    }),
                    graceful,
                    not_drained: (!graceful).then(|| "a does not advertise drain".into()),
                    become_: Become::Writable,
                    others: vec!["c".into()],
                    on_timeout: if force { OnTimeout::Force } else { OnTimeout::Abort },
                },
            )
    }

    /// An HA agent that does not advertise drain is demoted then the candidate promoted, and
    /// the fence step says that no drain was done and why; one that does is drained first.
    #[test]
    fn a_member_that_cannot_drain_is_demoted_and_the_record_says_so() {
        let mut s = start(PromotionKind::Failover, Some(old(true)));
        s.graceful = false;
        s.not_drained = Some("a does not advertise the drain step".into());
        let mut saga = Saga::new(s.clone());
        let effects = run(&mut saga, |_| None);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Drain { .. })), "{effects:?}");
        assert!(effects.contains(&Effect::Demote { member: "a".into(), to: None }), "{effects:?}");
        let fence = saga.steps.iter().find(|st| st.name == "fence").unwrap();
        assert_eq!(fence.message, "a demoted without a drain (a does not advertise the drain step)");

        s.graceful = true;
        s.not_drained = None;
        let mut saga = Saga::new(s);
        let effects = run(&mut saga, |_| None);
        assert_eq!(effects[1], Effect::Drain { from: "a".into(), to: "b".into() }, "{effects:?}");
        assert!(saga.steps.iter().any(|st| st.message.contains("drained")), "{:?}", saga.steps);
    }

    proptest! {
        /// Whatever fails and whenever: the saga ends, a promotion is never issued while the
        /// old primary may take writes and cannot fence itself, at most one member is writable
        /// at the end of an abandon, and success is reported only after the outcome was written.
        #[test]
        fn every_path_ends_safely(start in arb_start(), faults in prop::collection::vec(arb_fault(), 64)) {
            let mut saga = Saga::new(start.clone());
            let from = start.from.clone();
            // Before anything is done, an old primary that answers as a primary, or does not
            // answer without being known stopped, may be taking writes.
            let mut m = Model {
                from_writable: from.as_ref().is_some_and(|f| {
                    f.healthy_primary || (!f.reachable && f.last_fault != Some(Fault::Refused))
                }),
                from_self_fences: from.as_ref().is_some_and(|f| f.self_fencing),
                ..Model::default()
            };
            let declared_dead = from.as_ref().is_some_and(|f| f.declared_dead);
            let mut recorded = start.kind == PromotionKind::Resume;
            let mut outcome_written = false;
            let mut ended = None;
            for fault in faults {
                let effect = saga.next();
                if let Effect::Done(end) = effect { ended = Some(end); break; }
                let ok = fault.is_none();
                match &effect {
                    Effect::Record => recorded |= ok,
                    other => prop_assert!(recorded, "{other:?} before the decision was recorded"),
                }
                let refused = matches!(fault, Some(Fault::Refused));
                match &effect {
                    Effect::Promote { member } if member == "b" => {
                        let forced = start.on_timeout == OnTimeout::Force;
                        prop_assert!(
                            !m.from_writable || m.from_self_fences || forced || declared_dead,
                            "promoted while the old primary may take writes: {m:?} {:?}", saga.steps
                        );
                        m.to_writable |= ok;
                    }
                    Effect::Promote { .. } => m.from_writable |= ok,
                    Effect::Drain { .. } => m.from_paused |= ok,
                    Effect::Demote { .. } | Effect::Kill { .. } => m.from_writable &= !(ok || refused),
                    Effect::ResumeWrites { .. } => m.from_paused = false,
                    Effect::Redirect { .. } => m.others_follow_to |= ok,
                    Effect::RecordOutcome => outcome_written |= ok,
                    _ => {}
                }
                saga.observe(match fault {
                    Some(f) => Err((f, "injected".to_owned())),
                    None => Ok(()),
                });
            }
            let Some(end) = ended.or_else(|| saga.done().cloned()) else {
                // 64 faults were not enough to end it: only possible while retrying writes.
                let next = saga.next();
                prop_assert!(
                    matches!(next, Effect::RecordOutcome | Effect::RecordAbandon { .. } | Effect::Done(_)),
                    "still running: {:?}", next
                );
                return Ok(());
            };
            match end {
                End::Promoted => prop_assert!(outcome_written && m.to_writable),
                End::Abandoned { .. } => {
                    prop_assert!(!m.to_writable, "abandoned after promoting: {m:?}");
                    prop_assert!(!m.from_paused, "abandoned with the old primary's writes paused");
                    prop_assert!(m.writable() <= 1);
                }
                End::NotStarted(_) => prop_assert!(!m.to_writable && !m.from_paused),
                End::Retry(_) => prop_assert!(!m.to_writable && !saga.drained()),
                End::Unrecorded(_) => {}
            }
        }
    }
}
