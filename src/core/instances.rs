//! Members the operator runs (`spec.instances`): given what exists, the one step that comes
//! next. Pure: the instances controller gathers the facts, applies the step and asks again.
//!
//! The rules that keep a primary serving:
//! - a pod is deleted only when it is neither the recorded primary nor the target of a
//!   promotion, nor observed acting as a primary;
//! - a member that serves (ready) is restarted only while every other member is ready,
//!   healthy and caught up, no promotion is in flight, and one member at a time;
//! - the primary is restarted last, after a switchover has moved the role to an up-to-date
//!   replica; a member that does not come up stops the change before the primary is touched.

use super::vocabulary::Reason;

/// One member pod as the controller sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    /// What differs from the spec (Upgrading, Resizing, Reconfiguring, Restarting), or None
    /// when the pod runs the current revision.
    pub change: Option<Reason>,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Being deleted (a deletionTimestamp).
    pub deleting: bool,
    /// Why its container is not running, when the kubelet says (`ErrImagePull: …`).
    pub waiting: Option<String>,
    /// Its resources (the flavor) against the spec's, when it runs the current revision.
    pub resize: Resize,
}

/// Where a pod's resources stand against the spec's. A pod whose node cannot resize it in
/// place (the API refuses, or the kubelet calls it infeasible) is restarted instead: the
/// controller reports it as a change (`Resizing`), not here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resize {
    /// The pod has the spec's resources.
    #[default]
    Done,
    /// The spec's resources differ and have not been asked of the pod.
    Wanted,
    /// Asked (the pod's spec has them); the kubelet has not applied them yet.
    InProgress,
}

/// One member as the monitor last recorded it (HaCluster status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberView {
    pub name: String,
    pub healthy: bool,
    /// Observed acting as a primary.
    pub acts_primary: bool,
    /// Replication lag behind the primary, when known.
    pub lag: Option<i64>,
    /// The member it replicates from, when it is a replica.
    pub upstream: Option<String>,
    /// Transactions it holds that the primary never had (errant GTIDs).
    pub errant: Vec<String>,
}

/// The rebuild recorded in status and not yet complete.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RebuildView {
    pub member: String,
    /// What it replaces (the member's volume, or its pod without volumes) still exists.
    pub pending: bool,
}

/// Why a rebuild request is not carried out now.
#[derive(Clone, Debug, PartialEq)]
pub struct RebuildBlocked {
    /// It is carried out once the cluster allows (a promotion in flight, another rebuild);
    /// otherwise the request itself must change.
    pub waits: bool,
    pub message: String,
}

/// A rebuild asked with the annotation `understudy.dev/rebuild`: the member, and the
/// transactions the asker accepts to lose with it.
#[derive(Clone, Debug, PartialEq)]
pub struct RebuildAsk {
    pub member: String,
    pub discard: Vec<String>,
}

impl RebuildAsk {
    /// `<member>` or `<member>:<transaction>,<transaction>…`, either optionally followed by
    /// `@<anything>` (ignored: a new value, to ask for another rebuild of the same member).
    pub fn parse(value: &str) -> Result<Self, String> {
        let request = value.split_once('@').map_or(value, |(r, _)| r);
        let (member, discard) = match request.trim().split_once(':') {
            Some((m, gtids)) => {
                let discard: Vec<String> =
                    gtids.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_owned).collect();
                if discard.is_empty() {
                    return Err(format!(
                        "the rebuild request {value:?} has a colon but names no transaction after it"
                    ));
                }
                (m.trim(), discard)
            }
            None => (request.trim(), Vec::new()),
        };
        if member.is_empty() {
            return Err(format!("the rebuild request {value:?} names no member"));
        }
        Ok(Self { member: member.to_owned(), discard })
    }
}

/// A switchover this controller requested.
#[derive(Clone, Debug, PartialEq)]
pub enum SwitchoverState {
    InFlight(String),
    /// Failed, with the request's message and seconds since it ended.
    Failed {
        name: String,
        message: String,
        ago_secs: f64,
    },
}

/// What the planner is told.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The cluster's name: members are `<name>-<ordinal>`.
    pub cluster: String,
    /// `spec.instances.members`.
    pub want: usize,
    /// The member list recorded in status (None before the first write).
    pub listed: Option<Vec<String>>,
    /// Every member's pods have been ready at the current revision once.
    pub created: bool,
    pub pods: Vec<PodView>,
    /// Members (by name) whose volume exists.
    pub volumes: Vec<String>,
    /// Members whose volume is being deleted (a new one is created once it is gone).
    pub deleting_volumes: Vec<String>,
    /// Members whose volume is smaller than the spec's and cannot be expanded: rebuilt, one
    /// member at a time like a restart, onto a new volume (a replica resyncs its data).
    pub rebuild_volumes: Vec<String>,
    /// Members whose volume is being expanded in place.
    pub expanding_volumes: Vec<String>,
    /// Members have volumes (`spec.instances.storage`).
    pub storage: bool,
    /// Delete the volume of a removed member (`pvcRetention.whenScaled: Delete`).
    pub delete_volume_when_scaled: bool,
    /// The shard's recorded primary.
    pub primary: Option<String>,
    /// A promotion is in flight (a target primary or an operation lock is recorded).
    pub promoting: bool,
    pub members: Vec<MemberView>,
    /// The latest switchover requested for the current revision, if any.
    pub switchover: Option<SwitchoverState>,
    /// A replica further behind than this is not caught up.
    pub max_lag: i64,
    /// Seconds since the cluster's routing (its EndpointSlices) last changed.
    pub routing_quiet_secs: f64,
    /// A rebuild in progress (status.instances.rebuild without a completion time).
    pub rebuild: Option<RebuildView>,
}

/// The one thing to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Record this member list in status (before any pod of a new member is created or any
    /// pod of a removed one deleted, so a restarted operator knows which is which).
    List(Vec<String>),
    CreateVolume(String),
    CreatePod(String),
    DeletePod(String),
    DeleteVolume(String),
    /// Move the primary off `from` (a ShardFailover; `to` is the replica expected to take over).
    Switchover {
        from: String,
        to: String,
    },
    /// Give a member's pod the spec's resources in place (the `resize` subresource).
    Resize(String),
    /// Nothing to do until something changes.
    Wait,
}

/// The next step and what the `Progressing` condition says meanwhile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub step: Step,
    pub progressing: bool,
    pub reason: Reason,
    pub message: String,
}

/// How long a failed switchover waits before it is requested again.
pub const SWITCHOVER_RETRY_SECS: f64 = 30.0;

/// How long the routing must have been quiet before a roll's switchover. kube-proxy in
/// iptables mode applies at most one change per `--iptables-min-sync-period` (1 s by
/// default): a switchover arriving within a second of the sync that a restarted replica's
/// return caused reaches clients up to a second late (measured: 933 ms instead of ~50 ms).
/// Two periods, plus one for the API's whole-second timestamps. The roll is in no hurry.
pub const ROUTING_QUIET_SECS: f64 = 3.0;

/// The ordinal of member `name` (`<cluster>-<ordinal>`).
pub fn ordinal(name: &str) -> Option<u32> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// The member names of `cluster` for the lowest `n` ordinals not in `taken`.
fn free_names(cluster: &str, taken: &[String], n: usize) -> Vec<String> {
    (0u32..).map(|i| format!("{cluster}-{i}")).filter(|name| !taken.contains(name)).take(n).collect()
}

/// What `Progressing` says while switchover `name` moves the primary off `from`.
pub fn switchover_message(name: &str, from: &str) -> String {
    format!("switchover {name} moves the primary off {from}")
}

fn plan(step: Step, progressing: bool, reason: Reason, message: impl Into<String>) -> Plan {
    Plan { step, progressing, reason, message: message.into() }
}

impl Facts {
    fn pod(&self, name: &str) -> Option<&PodView> {
        self.pods.iter().find(|p| p.name == name)
    }

    fn member(&self, name: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Whether the rebuild `ask` may start now; otherwise why not (nothing is touched, and the
    /// request is looked at again at the next change).
    pub fn admit_rebuild(&self, ask: &RebuildAsk) -> Result<(), RebuildBlocked> {
        self.check_rebuild(ask).map_err(|why| RebuildBlocked {
            waits: why.starts_with("waits"),
            message: format!("rebuild of {} (understudy.dev/rebuild) {why}", ask.member),
        })
    }

    fn check_rebuild(&self, ask: &RebuildAsk) -> Result<(), String> {
        let name = &ask.member;
        if let Some(r) = &self.rebuild {
            return Err(format!("waits: the rebuild of {} is in progress", r.member));
        }
        let listed = self.listed.as_deref().unwrap_or_default();
        if !listed.contains(name) {
            return Err(format!("refused: {name} is not a member (members: {})", listed.join(", ")));
        }
        let Some(primary) = &self.primary else {
            return Err("waits: no primary is recorded to rebuild from".into());
        };
        if primary == name || self.member(name).is_some_and(|m| m.acts_primary) {
            return Err(format!(
                "refused: {name} is the primary, which is never rebuilt; move the primary off it first (a ShardFailover)"
            ));
        }
        if self.promoting {
            return Err("waits: a promotion is in flight".into());
        }
        if !self.member(primary).is_some_and(|m| m.healthy) {
            return Err(format!("waits: the primary {primary} is not healthy"));
        }
        let holds = self.member(name).map(|m| m.errant.clone()).unwrap_or_default();
        let (mut named, mut held) = (ask.discard.clone(), holds.clone());
        named.sort();
        held.sort();
        if named != held {
            let holds = holds.join(",");
            return Err(if ask.discard.is_empty() {
                format!(
                    "refused: {name} holds transactions the primary never had ({holds}), which a rebuild discards; to accept that loss, name them: {name}:{holds}"
                )
            } else if holds.is_empty() {
                format!(
                    "refused: the request names transactions to discard ({}), but {name} holds none the primary lacks; to rebuild it, name the member alone",
                    ask.discard.join(",")
                )
            } else {
                format!(
                    "refused: the request names {} but {name} now holds {holds}; nothing is discarded that was not named",
                    ask.discard.join(",")
                )
            });
        }
        Ok(())
    }

    /// The rebuild in progress is done: what it replaces is gone, and the member is back,
    /// ready and serving as a replica.
    pub fn rebuilt(&self) -> bool {
        self.rebuild.as_ref().is_some_and(|r| {
            !r.pending
                && self.pod(&r.member).is_some_and(|p| p.ready && !p.deleting)
                && self.serves_as_replica(&r.member)
        })
    }

    /// The rebuild in progress is moot: its member is no longer listed (removed meanwhile).
    pub fn rebuild_abandoned(&self) -> bool {
        self.rebuild.as_ref().is_some_and(|r| self.listed.as_ref().is_some_and(|l| !l.contains(&r.member)))
    }

    /// The member is a replica that serves: healthy, following the primary, caught up.
    fn serves_as_replica(&self, name: &str) -> bool {
        self.member(name).is_some_and(|m| {
            m.healthy
                && !m.acts_primary
                && m.upstream.is_some()
                && m.upstream == self.primary
                && m.lag.is_some_and(|l| l <= self.max_lag)
        })
    }

    /// Why this member's volume is to be replaced, if it is: the rebuild in progress, or a
    /// larger size its volume cannot grow to.
    fn replaced_volume(&self, name: &str) -> Option<(Reason, String)> {
        if self.storage && self.rebuild.as_ref().is_some_and(|r| r.pending && r.member == name) {
            return Some((Reason::Rebuilding, format!("rebuilding {name} from the primary on a new volume")));
        }
        self.rebuild_volumes
            .contains(&name.to_owned())
            .then(|| (Reason::Resizing, format!("rebuilding {name} on a larger volume")))
    }

    /// May this member's pod be deleted now without taking a primary away?
    fn deletable(&self, name: &str) -> bool {
        self.primary.as_deref() != Some(name)
            && !self.promoting
            && !self.member(name).is_some_and(|m| m.acts_primary)
    }

    /// Every listed member serves: pod ready, member healthy, replicas caught up with and
    /// following the primary, no promotion in flight. Otherwise, what is missing.
    fn all_serving(&self, listed: &[String]) -> Result<(), String> {
        let Some(primary) = &self.primary else { return Err("no primary is recorded yet".into()) };
        if self.promoting {
            return Err("a promotion is in flight".into());
        }
        for name in listed {
            let Some(pod) = self.pod(name) else { return Err(format!("{name} has no pod yet")) };
            if pod.deleting {
                return Err(format!("{name} is stopping"));
            }
            if !pod.ready {
                return Err(match &pod.waiting {
                    Some(w) => format!("{name} is not ready ({w})"),
                    None => format!("{name} is not ready"),
                });
            }
            let Some(m) = self.member(name).filter(|m| m.healthy) else {
                return Err(format!("{name} is not healthy yet"));
            };
            if name != primary {
                if m.upstream.as_deref() != Some(primary.as_str()) {
                    return Err(format!("{name} does not replicate from {primary} yet"));
                }
                if m.lag.is_none_or(|l| l > self.max_lag) {
                    return Err(format!("{name} has not caught up with {primary}"));
                }
            }
        }
        Ok(())
    }
}

/// The next step towards `facts.want` members, all at the current revision.
pub fn next_step(f: &Facts) -> Plan {
    let creating = !f.created;
    // A new cluster (or one whose list was lost): record the members first.
    let Some(listed) = &f.listed else {
        let mut names: Vec<String> = f.pods.iter().filter(|p| !p.deleting).map(|p| p.name.clone()).collect();
        names.sort_by_key(|n| (ordinal(n), n.clone()));
        if names.is_empty() {
            names = free_names(&f.cluster, &[], f.want);
        }
        return plan(Step::List(names), true, Reason::Creating, "recording the members to create");
    };
    let adding = listed.len() < f.want;
    let grow_reason = if creating { Reason::Creating } else { Reason::AddingReplica };

    // One member: rebuilding its volume would lose the data; nothing else may serve.
    if listed.len() == 1
        && let Some(name) = f.rebuild_volumes.first()
    {
        return plan(
            Step::Wait,
            false,
            Reason::VolumeNotExpandable,
            format!(
                "the volume of {name} cannot be expanded in place, and rebuilding the only member would lose its data; add a member (it is then rebuilt like a replica) or use a StorageClass with allowVolumeExpansion"
            ),
        );
    }

    // Listed members first get a volume, then a pod.
    let rebuilding = |name: &str| f.rebuild.as_ref().is_some_and(|r| r.member == name);
    for name in listed {
        if f.deleting_volumes.contains(name) {
            return plan(
                Step::Wait,
                true,
                if rebuilding(name) { Reason::Rebuilding } else { Reason::Resizing },
                format!("waiting for the old volume of {name} to go"),
            );
        }
        // A member rebuilt onto a new volume: its pod is gone, the old volume goes.
        if f.pod(name).is_none()
            && f.deletable(name)
            && let Some((reason, message)) = f.replaced_volume(name)
        {
            return plan(Step::DeleteVolume(name.clone()), true, reason, message);
        }
        if f.storage && !f.volumes.contains(name) {
            let why = if creating { Reason::Creating } else { Reason::AddingReplica };
            return plan(
                Step::CreateVolume(name.clone()),
                true,
                why,
                format!("creating the volume of {name}"),
            );
        }
    }
    for name in listed {
        match f.pod(name) {
            None => {
                let why = if rebuilding(name) {
                    Reason::Rebuilding
                } else if creating || adding {
                    grow_reason
                } else {
                    Reason::Restarting
                };
                return plan(Step::CreatePod(name.clone()), true, why, format!("creating the pod of {name}"));
            }
            Some(p) if p.deleting => {
                return plan(
                    Step::Wait,
                    true,
                    Reason::Restarting,
                    format!("waiting for the old pod of {name} to stop"),
                );
            }
            Some(_) => {}
        }
    }

    // Pods of members no longer listed go, never a primary.
    let unlisted: Vec<&PodView> =
        f.pods.iter().filter(|p| !listed.contains(&p.name) && !p.deleting).collect();
    if let Some(p) = unlisted.iter().find(|p| f.deletable(&p.name)) {
        return plan(
            Step::DeletePod(p.name.clone()),
            true,
            Reason::RemovingReplica,
            format!("removing {}", p.name),
        );
    }
    if let Some(p) = unlisted.first() {
        // Listed members were chosen among non-primaries; the role moved since. Move it back.
        return match best_replica(f, listed) {
            Some(_) if let Some(SwitchoverState::InFlight(name)) = &f.switchover => {
                plan(Step::Wait, true, Reason::RemovingReplica, switchover_message(name, &p.name))
            }
            Some(to) => plan(
                Step::Switchover { from: p.name.clone(), to: to.clone() },
                true,
                Reason::RemovingReplica,
                format!("moving the primary from {} to {to} before removing it", p.name),
            ),
            None => plan(
                Step::Wait,
                true,
                Reason::RemovingReplica,
                format!("{} is primary; waiting for a replica to take over", p.name),
            ),
        };
    }
    if f.delete_volume_when_scaled {
        for v in f.volumes.iter().filter(|v| !listed.contains(v)) {
            if f.pod(v).is_none() {
                return plan(
                    Step::DeleteVolume(v.clone()),
                    true,
                    Reason::RemovingReplica,
                    format!("deleting the volume of removed member {v}"),
                );
            }
        }
    }

    // The member count.
    if adding {
        let mut names = listed.clone();
        names.extend(free_names(&f.cluster, listed, f.want - listed.len()));
        return plan(
            Step::List(names),
            true,
            grow_reason,
            format!("adding {} member(s)", f.want - listed.len()),
        );
    }
    if listed.len() > f.want {
        let victim = listed
            .iter()
            .filter(|n| f.deletable(n))
            // Prefer a member that does not serve, then the highest ordinal.
            .max_by_key(|n| (!f.pod(n).is_some_and(|p| p.ready), ordinal(n), (*n).clone()));
        return match victim {
            Some(v) => {
                let names = listed.iter().filter(|n| *n != v).cloned().collect();
                plan(Step::List(names), true, Reason::RemovingReplica, format!("removing {v}"))
            }
            None => plan(Step::Wait, true, Reason::RemovingReplica, "waiting for the primary to be recorded"),
        };
    }

    // The roll: pods whose revision is not the spec's, replicas first, the primary last.
    let outdated: Vec<&PodView> =
        listed.iter().filter_map(|n| f.pod(n)).filter(|p| p.change.is_some()).collect();
    let Some(first) = outdated.first() else {
        if let Some(p) = next_resize(f, listed) {
            return p;
        }
        if let Some(name) = f.expanding_volumes.first() {
            return plan(Step::Wait, true, Reason::Resizing, format!("expanding the volume of {name}"));
        }
        return match f.all_serving(listed) {
            Err(why) if let Some(r) = &f.rebuild => {
                plan(Step::Wait, true, Reason::Rebuilding, format!("rebuilding {}: waiting: {why}", r.member))
            }
            Ok(()) => plan(
                Step::Wait,
                false,
                Reason::UpToDate,
                format!("{} member(s) run the current spec", listed.len()),
            ),
            Err(why) => plan(
                Step::Wait,
                true,
                if creating { Reason::Creating } else { Reason::Restarting },
                format!("waiting: {why}"),
            ),
        };
    };
    let change = first.change.unwrap_or(Reason::Restarting);
    // A member that does not serve anyway is replaced at once (a bad image, corrected; a
    // member rebuilt because it cannot be attached).
    if let Some(p) = outdated.iter().find(|p| !p.ready && f.deletable(&p.name)) {
        return plan(
            Step::DeletePod(p.name.clone()),
            true,
            p.change.unwrap_or(change),
            format!("replacing {}, which is not ready", p.name),
        );
    }
    if let Some(p) = outdated.iter().find(|p| {
        p.change == Some(Reason::Rebuilding) && f.deletable(&p.name) && !f.serves_as_replica(&p.name)
    }) {
        return plan(
            Step::DeletePod(p.name.clone()),
            true,
            Reason::Rebuilding,
            format!("rebuilding {} from the primary (it does not serve as a replica)", p.name),
        );
    }
    if let Err(why) = f.all_serving(listed) {
        let stuck = listed.iter().filter_map(|n| f.pod(n)).find(|p| p.waiting.is_some() && !p.ready);
        return match stuck {
            Some(p) => plan(
                Step::Wait,
                false,
                Reason::MemberNotReady,
                format!(
                    "{} does not come up ({}); the change waits and the primary is not touched",
                    p.name,
                    p.waiting.clone().unwrap_or_default()
                ),
            ),
            // The switchover's promotion is under way: the same words as when it was asked
            // for, so that nothing is written to status while the promotion records its
            // outcome (a write here made that record conflict and retry).
            None => match &f.switchover {
                Some(SwitchoverState::InFlight(name)) => plan(
                    Step::Wait,
                    true,
                    change,
                    switchover_message(name, f.primary.as_deref().unwrap_or_default()),
                ),
                _ => plan(Step::Wait, true, change, format!("waiting: {why}")),
            },
        };
    }
    let replicas: Vec<&&PodView> = outdated.iter().filter(|p| f.deletable(&p.name)).collect();
    if let Some(p) = replicas.iter().find(|p| p.change == Some(Reason::Rebuilding)) {
        return plan(
            Step::DeletePod(p.name.clone()),
            true,
            Reason::Rebuilding,
            format!("rebuilding {} from the primary", p.name),
        );
    }
    if let Some(p) = replicas.iter().max_by_key(|p| (ordinal(&p.name), p.name.clone())) {
        return plan(
            Step::DeletePod(p.name.clone()),
            true,
            change,
            format!("restarting replica {} ({} left)", p.name, outdated.len()),
        );
    }
    // Only the primary is left.
    let primary = f.primary.clone().unwrap_or_default();
    match &f.switchover {
        Some(SwitchoverState::InFlight(name)) => {
            plan(Step::Wait, true, change, switchover_message(name, &primary))
        }
        Some(SwitchoverState::Failed { name, message, ago_secs }) if *ago_secs < SWITCHOVER_RETRY_SECS => {
            plan(
                Step::Wait,
                false,
                Reason::SwitchoverFailed,
                format!(
                    "switchover {name} failed ({message}); retried in {:.0} s",
                    SWITCHOVER_RETRY_SECS - ago_secs
                ),
            )
        }
        _ => match best_replica(f, listed) {
            Some(_) if f.routing_quiet_secs < ROUTING_QUIET_SECS => plan(
                Step::Wait,
                true,
                change,
                format!("letting the Services settle before moving the primary off {primary}"),
            ),
            Some(to) => plan(
                Step::Switchover { from: primary.clone(), to: to.clone() },
                true,
                change,
                format!("moving the primary from {primary} to {to} before restarting it"),
            ),
            // One member: nothing can take over; it restarts (clients wait for it).
            None if listed.len() == 1 => plan(
                Step::DeletePod(primary.clone()),
                true,
                change,
                format!("restarting {primary}, the only member"),
            ),
            None => plan(Step::Wait, true, change, "waiting for an up-to-date replica to take over"),
        },
    }
}

/// In-place resizes: one member at a time, replicas first and the primary last, each only
/// while every member serves; none while a resize is being applied.
fn next_resize(f: &Facts, listed: &[String]) -> Option<Plan> {
    let pods: Vec<&PodView> = listed.iter().filter_map(|n| f.pod(n)).collect();
    if let Some(p) = pods.iter().find(|p| p.resize == Resize::InProgress) {
        return Some(plan(Step::Wait, true, Reason::Resizing, format!("the kubelet is resizing {}", p.name)));
    }
    let wanted: Vec<&&PodView> = pods.iter().filter(|p| p.resize == Resize::Wanted).collect();
    if wanted.is_empty() {
        return None;
    }
    if let Err(why) = f.all_serving(listed) {
        return Some(plan(Step::Wait, true, Reason::Resizing, format!("waiting: {why}")));
    }
    let primary = f.primary.as_deref();
    let p = wanted
        .iter()
        .filter(|p| Some(p.name.as_str()) != primary)
        .max_by_key(|p| (ordinal(&p.name), p.name.clone()))
        .or(wanted.first())?;
    Some(plan(
        Step::Resize(p.name.clone()),
        true,
        Reason::Resizing,
        format!("resizing {} in place ({} left)", p.name, wanted.len()),
    ))
}

/// The up-to-date replica best placed to take over: serving, least lag, lowest ordinal.
fn best_replica(f: &Facts, listed: &[String]) -> Option<String> {
    listed
        .iter()
        .filter(|n| f.primary.as_deref() != Some(n.as_str()))
        .filter(|n| f.pod(n).is_some_and(|p| p.ready && !p.deleting && p.change.is_none()))
        .filter_map(|n| f.member(n).filter(|m| m.healthy && !m.acts_primary))
        .filter(|m| m.lag.is_some_and(|l| l <= f.max_lag))
        .min_by_key(|m| (m.lag, ordinal(&m.name)))
        .map(|m| m.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodView {
        PodView { name: name.into(), ready: true, ..Default::default() }
    }

    fn member(name: &str, primary: &str) -> MemberView {
        MemberView {
            name: name.into(),
            healthy: true,
            acts_primary: name == primary,
            lag: (name != primary).then_some(0),
            upstream: (name != primary).then(|| primary.into()),
            errant: Vec::new(),
        }
    }

    /// Three serving members, c-1 primary.
    fn serving() -> Facts {
        let names: Vec<String> = (0..3).map(|i| format!("c-{i}")).collect();
        Facts {
            cluster: "c".into(),
            want: 3,
            listed: Some(names.clone()),
            created: true,
            pods: names.iter().map(|n| pod(n)).collect(),
            primary: Some("c-1".into()),
            members: names.iter().map(|n| member(n, "c-1")).collect(),
            max_lag: 1_000_000,
            routing_quiet_secs: 60.0,
            ..Default::default()
        }
    }

    #[test]
    fn a_new_cluster_lists_then_creates_its_members() {
        let f = Facts { cluster: "c".into(), want: 2, storage: true, ..Default::default() };
        let p = next_step(&f);
        assert_eq!(p.step, Step::List(vec!["c-0".into(), "c-1".into()]));
        assert_eq!(p.reason, Reason::Creating);
        let f = Facts { listed: Some(vec!["c-0".into(), "c-1".into()]), ..f };
        assert_eq!(next_step(&f).step, Step::CreateVolume("c-0".into()));
        let f = Facts { volumes: vec!["c-0".into(), "c-1".into()], ..f };
        assert_eq!(next_step(&f).step, Step::CreatePod("c-0".into()));
        let f = Facts { pods: vec![pod("c-0")], ..f };
        assert_eq!(next_step(&f).step, Step::CreatePod("c-1".into()));
    }

    #[test]
    fn up_to_date_when_every_member_serves() {
        let p = next_step(&serving());
        assert_eq!((p.step, p.progressing, p.reason), (Step::Wait, false, Reason::UpToDate));
    }

    #[test]
    fn removal_takes_a_replica_never_the_primary() {
        // c-2 is the highest ordinal, but primary: c-1... make c-2 primary instead.
        let mut f = serving();
        f.primary = Some("c-2".into());
        f.members = f.listed.clone().unwrap().iter().map(|n| member(n, "c-2")).collect();
        f.want = 1;
        let p = next_step(&f);
        assert_eq!(p.step, Step::List(vec!["c-0".into(), "c-2".into()]));
        assert_eq!(p.reason, Reason::RemovingReplica);
        f.listed = Some(vec!["c-0".into(), "c-2".into()]);
        assert_eq!(next_step(&f).step, Step::DeletePod("c-1".into()));
        f.listed = Some(vec!["c-2".into()]);
        f.pods.retain(|p| p.name == "c-2" || p.name == "c-0");
        f.delete_volume_when_scaled = true;
        assert_eq!(next_step(&f).step, Step::DeletePod("c-0".into()));
    }

    #[test]
    fn a_pod_left_unlisted_as_primary_is_switched_over_not_deleted() {
        let mut f = serving();
        f.listed = Some(vec!["c-0".into(), "c-2".into()]);
        f.want = 2;
        let p = next_step(&f);
        assert_eq!(p.step, Step::Switchover { from: "c-1".into(), to: "c-0".into() });
        f.promoting = true;
        assert!(!matches!(next_step(&f).step, Step::DeletePod(_)));
    }

    #[test]
    fn a_roll_restarts_replicas_one_at_a_time_then_switches_over() {
        let mut f = serving();
        for p in &mut f.pods {
            p.change = Some(Reason::Upgrading);
        }
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::DeletePod("c-2".into()), Reason::Upgrading));
        // c-2 is back at the new revision but not caught up: nothing else moves.
        f.pods[2].change = None;
        f.members[2].lag = None;
        assert_eq!(next_step(&f).step, Step::Wait);
        f.members[2].lag = Some(0);
        assert_eq!(next_step(&f).step, Step::DeletePod("c-0".into()));
        f.pods[0].change = None;
        // c-0's return just changed the replicas Service: the switchover waits for quiet.
        f.routing_quiet_secs = 0.5;
        assert_eq!(next_step(&f).step, Step::Wait);
        f.routing_quiet_secs = ROUTING_QUIET_SECS;
        let p = next_step(&f);
        assert_eq!(p.step, Step::Switchover { from: "c-1".into(), to: "c-0".into() });
        f.switchover = Some(SwitchoverState::InFlight("x".into()));
        let asked = next_step(&f);
        assert_eq!(asked.step, Step::Wait);
        // Its promotion under way: the same condition, word for word (no status write).
        f.promoting = true;
        assert_eq!(next_step(&f), asked);
    }

    #[test]
    fn a_member_that_does_not_come_up_stops_the_roll_before_the_primary() {
        let mut f = serving();
        for p in &mut f.pods {
            p.change = Some(Reason::Upgrading);
        }
        f.pods[2] = PodView {
            name: "c-2".into(),
            ready: false,
            waiting: Some("ErrImagePull: nope".into()),
            ..Default::default()
        };
        f.members[2].healthy = false;
        let p = next_step(&f);
        assert_eq!(
            (p.step.clone(), p.progressing, p.reason),
            (Step::Wait, false, Reason::MemberNotReady),
            "{p:?}"
        );
        assert!(p.message.contains("ErrImagePull"), "{}", p.message);
        // The spec is corrected: the broken pod is outdated again and replaced at once.
        f.pods[2].change = Some(Reason::Upgrading);
        assert_eq!(next_step(&f).step, Step::DeletePod("c-2".into()));
    }

    #[test]
    fn nothing_is_deleted_while_a_promotion_is_in_flight() {
        let mut f = serving();
        f.promoting = true;
        for p in &mut f.pods {
            p.change = Some(Reason::Restarting);
        }
        assert_eq!(next_step(&f).step, Step::Wait);
        f.want = 2;
        assert!(!matches!(next_step(&f).step, Step::DeletePod(_) | Step::List(_)));
    }

    #[test]
    fn a_failed_switchover_waits_then_is_requested_again() {
        let mut f = serving();
        f.pods[1].change = Some(Reason::Restarting);
        f.switchover =
            Some(SwitchoverState::Failed { name: "x".into(), message: "lag".into(), ago_secs: 5.0 });
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::Wait, Reason::SwitchoverFailed));
        f.switchover =
            Some(SwitchoverState::Failed { name: "x".into(), message: "lag".into(), ago_secs: 31.0 });
        assert!(matches!(next_step(&f).step, Step::Switchover { .. }));
    }

    #[test]
    fn resizes_in_place_one_member_at_a_time_replicas_first() {
        let mut f = serving();
        for p in &mut f.pods {
            p.resize = Resize::Wanted;
        }
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::Resize("c-2".into()), Reason::Resizing));
        f.pods[2].resize = Resize::InProgress;
        assert_eq!(next_step(&f).step, Step::Wait, "one at a time");
        f.pods[2].resize = Resize::Done;
        assert_eq!(next_step(&f).step, Step::Resize("c-0".into()));
        f.pods[0].resize = Resize::Done;
        // The primary last, and only while every replica serves.
        f.members[2].lag = None;
        assert_eq!(next_step(&f).step, Step::Wait);
        f.members[2].lag = Some(0);
        assert_eq!(next_step(&f).step, Step::Resize("c-1".into()));
        f.pods[1].resize = Resize::Done;
        assert_eq!(next_step(&f).reason, Reason::UpToDate);
        // A pod that must restart anyway is rolled, not resized.
        f.pods[0].resize = Resize::Wanted;
        f.pods[2].change = Some(Reason::Upgrading);
        assert_eq!(next_step(&f).step, Step::DeletePod("c-2".into()));
    }

    #[test]
    fn volumes_that_cannot_expand_are_rebuilt_member_by_member_never_the_primary_first() {
        let mut f = serving();
        f.storage = true;
        f.volumes = f.listed.clone().unwrap();
        f.rebuild_volumes = f.volumes.clone();
        for p in &mut f.pods {
            p.change = Some(Reason::Resizing);
        }
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::DeletePod("c-2".into()), Reason::Resizing));
        // c-2's pod is gone: its volume goes, then a new one, then the pod.
        f.pods.retain(|p| p.name != "c-2");
        assert_eq!(next_step(&f).step, Step::DeleteVolume("c-2".into()));
        f.volumes.retain(|v| v != "c-2");
        f.deleting_volumes = vec!["c-2".into()];
        assert_eq!(next_step(&f).step, Step::Wait, "the old volume must be gone first");
        f.deleting_volumes.clear();
        f.rebuild_volumes.retain(|v| v != "c-2");
        assert_eq!(next_step(&f).step, Step::CreateVolume("c-2".into()));
        // The primary's volume is never deleted while it is primary, pod or not.
        let mut g = serving();
        g.storage = true;
        g.volumes = g.listed.clone().unwrap();
        g.rebuild_volumes = vec!["c-1".into()];
        g.pods.retain(|p| p.name != "c-1");
        assert!(!matches!(next_step(&g).step, Step::DeleteVolume(_)));
        // One member: refused, nothing touched.
        let mut one = serving();
        one.listed = Some(vec!["c-1".into()]);
        one.want = 1;
        one.pods.retain(|p| p.name == "c-1");
        one.rebuild_volumes = vec!["c-1".into()];
        one.pods[0].change = Some(Reason::Resizing);
        let p = next_step(&one);
        assert_eq!((p.step, p.progressing, p.reason), (Step::Wait, false, Reason::VolumeNotExpandable));
    }

    #[test]
    fn adding_lists_the_lowest_free_ordinals() {
        let mut f = serving();
        f.listed = Some(vec!["c-0".into(), "c-2".into()]);
        f.pods.retain(|p| p.name != "c-1");
        f.primary = Some("c-0".into());
        f.members = ["c-0", "c-2"].iter().map(|n| member(n, "c-0")).collect();
        f.want = 4;
        let p = next_step(&f);
        assert_eq!(p.step, Step::List(vec!["c-0".into(), "c-2".into(), "c-1".into(), "c-3".into()]));
        assert_eq!(p.reason, Reason::AddingReplica);
    }
    #[test]
    fn rebuild_requests_name_a_member_and_what_they_discard() {
        let ask = |v: &str| RebuildAsk::parse(v);
        assert_eq!(ask("c-2"), Ok(RebuildAsk { member: "c-2".into(), discard: vec![] }));
        assert_eq!(ask(" c-2@again"), Ok(RebuildAsk { member: "c-2".into(), discard: vec![] }));
        assert_eq!(
            ask("c-2:0-3-11, 0-4-2@2"),
            Ok(RebuildAsk { member: "c-2".into(), discard: vec!["0-3-11".into(), "0-4-2".into()] })
        );
        assert!(ask("").is_err());
        assert!(ask(":0-3-11").is_err());
        assert!(ask("c-2:").unwrap_err().contains("names no transaction"));
    }

    #[test]
    fn a_rebuild_never_takes_the_primary_and_discards_only_what_it_names() {
        let mut f = serving();
        let ask = |v: &str| RebuildAsk::parse(v).unwrap();
        let refused = |r: Result<(), RebuildBlocked>| r.map_err(|b| (b.waits, b.message)).unwrap_err();
        assert_eq!(f.admit_rebuild(&ask("c-2")), Ok(()));
        let (waits, why) = refused(f.admit_rebuild(&ask("c-1")));
        assert!(!waits && why.contains("is the primary"), "{why}");
        let (waits, why) = refused(f.admit_rebuild(&ask("c-7")));
        assert!(!waits && why.contains("not a member"), "{why}");
        // Transactions the primary never had: only a request naming exactly them goes ahead.
        f.members[2].errant = vec!["0-3-11".into(), "0-3-12".into()];
        f.members[2].healthy = false;
        let (waits, why) = refused(f.admit_rebuild(&ask("c-2")));
        assert!(!waits && why.contains("name them: c-2:0-3-11,0-3-12"), "{why}");
        let (_, why) = refused(f.admit_rebuild(&ask("c-2:0-3-11")));
        assert!(why.contains("nothing is discarded that was not named"), "{why}");
        assert_eq!(f.admit_rebuild(&ask("c-2:0-3-12,0-3-11")), Ok(()));
        let (_, why) = refused(f.admit_rebuild(&ask("c-0:0-3-11")));
        assert!(why.contains("holds none"), "{why}");
        // Later, not never: a promotion in flight, another rebuild, an unhealthy primary.
        f.promoting = true;
        assert!(refused(f.admit_rebuild(&ask("c-2:0-3-11,0-3-12"))).0);
        f.promoting = false;
        f.members[1].healthy = false;
        assert!(refused(f.admit_rebuild(&ask("c-2:0-3-11,0-3-12"))).0);
        f.members[1].healthy = true;
        f.rebuild = Some(RebuildView { member: "c-0".into(), pending: false });
        assert!(refused(f.admit_rebuild(&ask("c-2:0-3-11,0-3-12"))).0);
    }

    #[test]
    fn a_member_that_cannot_be_attached_is_rebuilt_at_once_onto_a_new_volume() {
        let mut f = serving();
        f.storage = true;
        f.volumes = vec!["c-0".into(), "c-1".into(), "c-2".into()];
        f.members[2].healthy = false;
        f.members[2].upstream = None;
        f.rebuild = Some(RebuildView { member: "c-2".into(), pending: true });
        f.pods[2].change = Some(Reason::Rebuilding);
        // Not serving as a replica, so not waiting for it to.
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::DeletePod("c-2".into()), Reason::Rebuilding));
        f.pods.remove(2);
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::DeleteVolume("c-2".into()), Reason::Rebuilding));
        f.volumes.pop();
        f.deleting_volumes = vec!["c-2".into()];
        assert_eq!(next_step(&f).reason, Reason::Rebuilding);
        // The old volume is gone: a new one, then a pod, and it is not done until it serves.
        f.deleting_volumes.clear();
        f.rebuild = Some(RebuildView { member: "c-2".into(), pending: false });
        assert_eq!(next_step(&f).step, Step::CreateVolume("c-2".into()));
        f.volumes.push("c-2".into());
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::CreatePod("c-2".into()), Reason::Rebuilding));
        f.pods.push(pod("c-2"));
        let p = next_step(&f);
        assert_eq!((p.step, p.progressing, p.reason), (Step::Wait, true, Reason::Rebuilding));
        assert!(!f.rebuilt());
        f.members[2] = member("c-2", "c-1");
        assert!(f.rebuilt());
        assert_eq!(next_step(&f).reason, Reason::UpToDate);
    }

    #[test]
    fn a_rebuild_whose_member_was_removed_ends() {
        let mut f = serving();
        f.rebuild = Some(RebuildView { member: "c-2".into(), pending: true });
        assert!(!f.rebuild_abandoned());
        f.listed = Some(vec!["c-0".into(), "c-1".into()]);
        assert!(f.rebuild_abandoned());
    }

    #[test]
    fn a_serving_member_is_rebuilt_only_while_every_other_member_serves() {
        let mut f = serving();
        f.rebuild = Some(RebuildView { member: "c-2".into(), pending: true });
        f.pods[2].change = Some(Reason::Rebuilding);
        f.members[0].healthy = false;
        assert_eq!(next_step(&f).step, Step::Wait);
        f.members[0].healthy = true;
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::DeletePod("c-2".into()), Reason::Rebuilding));
        // Without volumes the new pod is the rebuild; nothing else is deleted.
        f.pods[2] = pod("c-2");
        f.rebuild = Some(RebuildView { member: "c-2".into(), pending: false });
        f.members[2].healthy = false;
        let p = next_step(&f);
        assert_eq!((p.step, p.reason), (Step::Wait, Reason::Rebuilding));
    }
}
