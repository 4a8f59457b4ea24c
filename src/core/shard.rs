//! What to do with one shard, given what its members just said.

use std::{cmp::Ordering, time::Duration};

use super::{
    member::{ObservedRole, Probe},
    vocabulary::Reason,
};

/// What the operator knows about one member right now.
#[derive(Clone, Debug, Default)]
pub struct MemberFacts {
    pub name: String,
    pub endpoint: String,
    pub node: Option<String>,
    pub priority: i32,
    /// The answer to the latest probe, if it answered.
    pub probe: Option<Probe>,
    /// Consecutive failed probes.
    pub misses: u32,
    /// The member answered but refused our credentials.
    pub unauthorized: bool,
    /// The member answered, but not with a role (an HA agent's server error or an answer
    /// other than MAIN/BACKUP): what it said. It is neither healthy nor a candidate, and as
    /// the primary it is not failed over from on a guess (it is not down either).
    pub ambiguous: Option<String>,
    /// Its pod is being deleted (a deletionTimestamp): it is never promoted, and as the
    /// primary its role is moved off it (drained) while it still runs.
    pub leaving: bool,
}

impl MemberFacts {
    pub fn answered(&self) -> bool {
        self.probe.is_some()
    }
    fn role(&self) -> Option<&ObservedRole> {
        self.probe.as_ref().map(|p| &p.role)
    }
    fn offset(&self) -> Option<i64> {
        self.probe.as_ref().and_then(|p| p.offset)
    }
}

/// What the shard's status and the operator's memory say.
#[derive(Clone, Debug, Default)]
pub struct ShardFacts {
    pub members: Vec<MemberFacts>,
    /// `status.shards[].currentPrimary`.
    pub current_primary: Option<String>,
    /// `status.shards[].targetPrimary`: a promotion that was decided (epoch written) but
    /// maybe not finished — resume it.
    pub target_primary: Option<String>,
    /// Highest offset the current primary was seen at.
    pub last_primary_offset: Option<i64>,
    /// How long the current primary has been lost.
    pub primary_lost_for: Duration,
    /// Nodes not to promote on.
    pub avoid_nodes: Vec<String>,
    /// A lost primary an earlier failover could not fence (onTimeout: Abort): nothing is
    /// promoted past it until it answers again.
    pub unfenced: Option<String>,
}

/// The cluster's failover policy, as plain data.
#[derive(Clone, Debug)]
pub struct Policy {
    pub automatic: bool,
    pub paused: bool,
    pub failure_threshold: u32,
    pub failover_delay: Duration,
    /// Never promote a replica further behind than this (bytes of replication offset).
    pub max_lag: i64,
    /// Replicas are pointed at the primary by the engine (redis), not by a ConfigMap (agent).
    pub follows_directly: bool,
    /// A standby cluster: its leader replicates from another cluster's primary instead of
    /// being writable.
    pub standby: bool,
    /// For a standby cluster, the `host:port` its leader must follow (None: not known now —
    /// then nothing is changed).
    pub upstream: Option<String>,
    /// Why `upstream` is not known now, when it is not (for the blocked message).
    pub upstream_unknown: Option<String>,
    /// Detached from its ProtectionGroup with policy ReadOnly: nothing is changed and
    /// nothing is made writable.
    pub detached: bool,
    /// A ProtectionGroup protects this cluster as its DR side and has not told it so yet
    /// (what names it, for the message): no first primary is elected or adopted — that would
    /// be a second writable site until the group makes it a standby.
    pub awaiting_group: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            automatic: true,
            paused: false,
            failure_threshold: 3,
            failover_delay: Duration::ZERO,
            max_lag: i64::MAX,
            follows_directly: true,
            standby: false,
            upstream: None,
            upstream_unknown: None,
            detached: false,
            awaiting_group: None,
        }
    }
}

/// Why a promotion happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotionKind {
    /// First primary of the shard.
    Bootstrap,
    /// The shard already had exactly one member acting as primary; record it.
    Adopt,
    /// The primary was lost.
    Failover,
    /// A promotion decided earlier (epoch already written) is being finished.
    Resume,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub kind: PromotionKind,
    pub to: String,
    pub from: Option<String>,
    pub reason: String,
    /// Offset the new primary is behind the last known primary offset: writes that may be lost.
    pub lost_offset: Option<i64>,
}

/// Why nothing is promoted although the shard has no working primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The HaCluster's Ready and Degraded condition reason.
    pub reason: Reason,
    pub message: String,
}

/// The decision for one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub promote: Option<Promotion>,
    /// Members acting as primary that must not be (demote, then follow the primary).
    pub demote: Vec<String>,
    /// Replicas to point at the primary.
    pub follow: Vec<String>,
    pub blocked: Option<Blocked>,
    /// Members acting as primary right now, for the record.
    pub primary_lost: bool,
}

/// A member is down after `failure_threshold` consecutive missed probes, or after one when
/// its pod is being deleted (it is not coming back).
pub fn is_down(m: &MemberFacts, policy: &Policy) -> bool {
    m.misses >= policy.failure_threshold.max(1) || (m.leaving && m.misses > 0)
}

/// Healthy: answered the latest probe with our credentials.
pub fn is_healthy(m: &MemberFacts) -> bool {
    m.answered() && m.misses == 0 && !m.unauthorized && m.ambiguous.is_none()
}

/// How far `m` is behind `primary_offset`; 0 for engines without offsets.
pub fn lag(m: &MemberFacts, primary_offset: Option<i64>) -> Option<i64> {
    match (primary_offset, m.offset()) {
        (Some(p), Some(o)) => Some((p - o).max(0)),
        (None, _) => Some(0),
        (Some(_), None) => None,
    }
}

/// Best first: higher priority, then higher offset, then name (deterministic).
fn rank(a: &MemberFacts, b: &MemberFacts) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| b.offset().unwrap_or(-1).cmp(&a.offset().unwrap_or(-1)))
        .then_with(|| a.name.cmp(&b.name))
}

/// Choose the replica to promote when the primary `from` is lost. Eligible: healthy, priority
/// > 0, not on an avoided node, lag ≤ `max_lag`. Err explains, per member, why none is.
pub fn elect_candidate<'a>(
    facts: &'a ShardFacts,
    policy: &Policy,
    from: Option<&str>,
) -> Result<&'a MemberFacts, String> {
    let mut why = Vec::new();
    let mut eligible: Vec<&MemberFacts> = Vec::new();
    let mut fallback: Vec<&MemberFacts> = Vec::new();
    for m in &facts.members {
        let reason = if let Some(said) = &m.ambiguous {
            Some(format!("answers ambiguously ({said})"))
        } else if !is_healthy(m) {
            Some(if m.unauthorized { "refuses our credentials".to_owned() } else { "unreachable".to_owned() })
        } else if m.leaving {
            Some("its pod is being deleted".to_owned())
        } else if let Some(e) = m.probe.as_ref().and_then(|p| p.link_error.as_ref()) {
            // Its data may differ from the primary's in ways its offset does not show
            // (transactions the primary never had).
            Some(format!("its replication stopped with an error ({e})"))
        } else if m.priority <= 0 {
            Some("priority 0 (never promoted)".to_owned())
        } else if m.node.as_ref().is_some_and(|n| facts.avoid_nodes.contains(n)) {
            Some(format!("on dead node {}", m.node.as_deref().unwrap_or_default()))
        } else {
            match lag(m, facts.last_primary_offset) {
                None => Some("reports no replication offset".to_owned()),
                Some(l) if l > policy.max_lag => Some(format!(
                    "lags {l} bytes behind the last primary offset (maxLagOnFailover {})",
                    policy.max_lag
                )),
                Some(_) => None,
            }
        };
        match reason {
            Some(r) => why.push(format!("{}: {r}", m.name)),
            None if Some(m.name.as_str()) == from => fallback.push(m),
            None => eligible.push(m),
        }
    }
    // The lost primary itself only if it came back and nobody else qualifies.
    if eligible.is_empty() {
        eligible = fallback;
    }
    eligible.sort_by(|a, b| rank(a, b));
    eligible
        .first()
        .copied()
        .ok_or_else(|| if why.is_empty() { "no members".to_owned() } else { why.join("; ") })
}

/// Decide what to do with a shard.
pub fn plan(facts: &ShardFacts, policy: &Policy) -> Plan {
    let mut plan = Plan::default();
    if policy.paused {
        return plan;
    }
    if policy.detached {
        plan.blocked = Some(Blocked {
            reason: Reason::DetachedReadOnly,
            message: "detached from its protection group (policy ReadOnly): read-only, replicating from nothing; remove status.protection to make it an ordinary cluster".into(),
        });
        return plan;
    }
    if policy.standby && policy.upstream.is_none() {
        plan.blocked = Some(Blocked {
            reason: Reason::UpstreamUnknown,
            message: format!(
                "standby cluster: the upstream primary is not known{}; nothing is changed until it is",
                policy.upstream_unknown.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
            ),
        });
        return plan;
    }
    let find = |name: &str| facts.members.iter().find(|m| m.name == name);

    // A promotion already decided and recorded (epoch bumped) is finished first.
    if let Some(target) = facts.target_primary.as_deref()
        && let Some(t) = find(target)
        && is_healthy(t)
    {
        plan.promote = Some(Promotion {
            kind: PromotionKind::Resume,
            to: target.to_owned(),
            from: facts.current_primary.clone().filter(|p| p != target),
            reason: "finishing a recorded promotion".into(),
            lost_offset: match (facts.last_primary_offset, t.offset()) {
                (Some(p), Some(o)) => Some((p - o).max(0)),
                _ => None,
            },
        });
        return plan;
    }

    let Some(primary) = facts.current_primary.as_deref() else {
        return bootstrap(facts, policy);
    };
    let pm = find(primary);
    let lost = match pm {
        None => true,
        // A standby leader is a replica (of the upstream) by design.
        Some(pm) => is_down(pm, policy) || (!policy.standby && pm.role() == Some(&ObservedRole::Replica)),
    };
    if !lost {
        let pm = pm.expect("not lost");
        repair(facts, policy, pm, &mut plan);
        if pm.leaving {
            leave(facts, policy, pm, &mut plan);
        }
        return plan;
    }
    plan.primary_lost = true;
    if !policy.automatic {
        plan.blocked = Some(Blocked {
            reason: Reason::ManualFailover,
            message: format!(
                "primary {primary} is lost and failover mode is manual; create a FailoverRequest"
            ),
        });
        return plan;
    }
    if facts.unfenced.as_deref() == Some(primary) {
        plan.blocked = Some(Blocked {
            reason: Reason::FenceTimedOut,
            message: format!(
                "primary {primary} does not answer and cannot be shown to have stopped taking writes (no self-fencing, onTimeout: Abort); no replica is promoted until it answers or a FailoverRequest forces a failover"
            ),
        });
        return plan;
    }
    if facts.primary_lost_for < policy.failover_delay {
        plan.blocked = Some(Blocked {
            reason: Reason::FailoverDelay,
            message: format!("primary {primary} is lost; waiting failoverDelay before failing over"),
        });
        return plan;
    }
    match elect_candidate(facts, policy, Some(primary)) {
        Ok(c) => {
            let lost_offset = match (facts.last_primary_offset, c.offset()) {
                (Some(p), Some(o)) => Some((p - o).max(0)),
                _ => None,
            };
            let why = match pm {
                None => format!("primary {primary} was removed from the membership"),
                Some(pm) if pm.role() == Some(&ObservedRole::Replica) => {
                    format!("primary {primary} came back as a replica (restarted)")
                }
                // The threshold, not the running count: the reason of a repeated attempt (an
                // abandoned one is tried again each heartbeat) stays the same words, so its
                // Warnings fold into one Event.
                Some(_) => format!(
                    "primary {primary} stopped answering ({} consecutive heartbeats missed)",
                    policy.failure_threshold.max(1)
                ),
            };
            plan.promote = Some(Promotion {
                kind: PromotionKind::Failover,
                to: c.name.clone(),
                from: Some(primary.to_owned()),
                reason: why,
                lost_offset,
            });
        }
        Err(why) => {
            plan.blocked = Some(Blocked {
                reason: Reason::NoEligibleReplica,
                message: format!("primary {primary} is lost and no replica may be promoted: {why}"),
            })
        }
    }
    plan
}

fn bootstrap(facts: &ShardFacts, policy: &Policy) -> Plan {
    let mut plan = Plan::default();
    if let Some(group) = &policy.awaiting_group {
        plan.blocked = Some(Blocked {
            reason: Reason::AwaitingProtectionGroup,
            message: format!(
                "{group}; nothing is elected until the group publishes this cluster's side of the relation (status.protection)"
            ),
        });
        return plan;
    }
    let undecided: Vec<&str> = facts
        .members
        .iter()
        .filter(|m| !m.answered() && !is_down(m, policy))
        .map(|m| m.name.as_str())
        .collect();
    if !undecided.is_empty() {
        plan.blocked = Some(Blocked {
            reason: Reason::Bootstrapping,
            message: format!("waiting for every member to answer once (not yet: {})", undecided.join(", ")),
        });
        return plan;
    }
    let mut acting: Vec<&MemberFacts> =
        facts.members.iter().filter(|m| is_healthy(m) && m.role() == Some(&ObservedRole::Primary)).collect();
    acting.sort_by(|a, b| rank(a, b));
    let (kind, chosen) = if let Some(first) = acting.first() {
        (PromotionKind::Adopt, Ok(*first))
    } else {
        (
            PromotionKind::Bootstrap,
            elect_candidate(facts, &Policy { max_lag: i64::MAX, ..policy.clone() }, None),
        )
    };
    match chosen {
        Ok(c) => {
            plan.promote = Some(Promotion {
                kind,
                to: c.name.clone(),
                from: None,
                reason: match kind {
                    PromotionKind::Adopt => format!("{} already acts as primary", c.name),
                    _ => format!("{} has the highest priority and offset", c.name),
                },
                lost_offset: None,
            });
            plan.demote = acting.iter().filter(|m| m.name != c.name).map(|m| m.name.clone()).collect();
        }
        Err(why) => {
            plan.blocked = Some(Blocked {
                reason: Reason::NoEligibleMember,
                message: format!("no member can be the first primary: {why}"),
            })
        }
    }
    plan
}

/// The primary's pod is being deleted (`kubectl drain`, a rollout, a user) but it still
/// serves: move the role to the best replica now, with the old primary drained, rather than
/// fail over once it has stopped. With no replica fit to take over it keeps serving until it
/// stops, and the shard says why.
fn leave(facts: &ShardFacts, policy: &Policy, primary: &MemberFacts, plan: &mut Plan) {
    let name = &primary.name;
    if !policy.automatic {
        plan.blocked = Some(Blocked {
            reason: Reason::ManualFailover,
            message: format!(
                "the pod of primary {name} is being deleted and failover mode is manual; create a FailoverRequest"
            ),
        });
        return;
    }
    match elect_candidate(facts, policy, Some(name)) {
        Ok(c) => {
            plan.promote = Some(Promotion {
                kind: PromotionKind::Failover,
                to: c.name.clone(),
                from: Some(name.clone()),
                reason: format!("the pod of primary {name} is being deleted"),
                lost_offset: match (facts.last_primary_offset, c.offset()) {
                    (Some(p), Some(o)) => Some((p - o).max(0)),
                    _ => None,
                },
            });
        }
        Err(why) => {
            plan.blocked = Some(Blocked {
                reason: Reason::NoEligibleReplica,
                message: format!(
                    "the pod of primary {name} is being deleted and no replica may take over ({why}); it serves until it stops"
                ),
            });
        }
    }
}

/// Primary is fine: demote any other member acting as primary, point stray replicas at it.
fn repair(facts: &ShardFacts, policy: &Policy, primary: &MemberFacts, plan: &mut Plan) {
    // A standby leader must follow the upstream (also if it acts as primary).
    if let Some(up) = &policy.upstream
        && primary.probe.as_ref().is_some_and(|p| p.following.as_deref() != Some(up.as_str()))
    {
        plan.follow.push(primary.name.clone());
    }
    for m in facts.members.iter().filter(|m| m.name != primary.name && is_healthy(m)) {
        match &m.probe {
            Some(p) if p.role == ObservedRole::Primary => plan.demote.push(m.name.clone()),
            Some(p)
                if policy.follows_directly && p.following.as_deref() != Some(primary.endpoint.as_str()) =>
            {
                plan.follow.push(m.name.clone())
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Option<ObservedRole>, offset: i64) -> MemberFacts {
        MemberFacts {
            name: name.into(),
            endpoint: format!("{name}:6379"),
            priority: 100,
            probe: role.map(|role| Probe {
                following: (role == ObservedRole::Replica).then(|| "a:6379".to_owned()),
                role,
                offset: Some(offset),
                link_up: true,
                ..Default::default()
            }),
            misses: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_primary_whose_pod_is_being_deleted_is_moved_off_while_it_serves() {
        let mut p = member("a", Some(ObservedRole::Primary), 100);
        p.leaving = true;
        let mut leaving_replica = member("b", Some(ObservedRole::Replica), 100);
        leaving_replica.leaving = true;
        let facts = ShardFacts {
            members: vec![p, leaving_replica, member("c", Some(ObservedRole::Replica), 100)],
            current_primary: Some("a".into()),
            last_primary_offset: Some(100),
            ..Default::default()
        };
        let plan = plan(&facts, &Policy { failover_delay: Duration::from_secs(60), ..Policy::default() });
        let promote = plan.promote.expect("moved off at once, not after failoverDelay");
        assert_eq!(
            (promote.kind, promote.to.as_str(), promote.from.as_deref()),
            (PromotionKind::Failover, "c", Some("a"))
        );
        assert!(promote.reason.contains("being deleted"), "{}", promote.reason);
        // No replica fit to take over: it keeps serving, and the shard says why.
        let mut facts = facts;
        facts.members.truncate(2);
        let plan = super::plan(&facts, &Policy::default());
        assert!(plan.promote.is_none());
        let blocked = plan.blocked.expect("blocked");
        assert_eq!(blocked.reason, Reason::NoEligibleReplica);
        assert!(blocked.message.contains("b: its pod is being deleted"), "{}", blocked.message);
    }

    #[test]
    fn a_replica_whose_replication_stopped_with_an_error_is_not_promoted() {
        let p = down(member("a", Some(ObservedRole::Primary), 100));
        let mut broken = member("b", Some(ObservedRole::Replica), 100);
        if let Some(pr) = broken.probe.as_mut() {
            pr.link_error = Some("SQL thread: out-of-order GTID".into());
        }
        let facts = ShardFacts {
            current_primary: Some("a".into()),
            members: vec![p, broken, member("c", Some(ObservedRole::Replica), 90)],
            ..Default::default()
        };
        let policy = Policy { max_lag: 1000, ..Policy::default() };
        let elected = elect_candidate(&facts, &policy, Some("a")).expect("c is eligible");
        assert_eq!(elected.name, "c", "the broken replica is further ahead but not eligible");
        let facts = ShardFacts { members: facts.members[..2].to_vec(), ..facts };
        let why = elect_candidate(&facts, &policy, Some("a")).unwrap_err();
        assert!(why.contains("replication stopped with an error"), "{why}");
    }

    fn down(mut m: MemberFacts) -> MemberFacts {
        m.probe = None;
        m.misses = 5;
        m
    }

    use ObservedRole::{Primary, Replica};

    #[test]
    fn bootstrap_waits_until_every_member_answered_once() {
        let mut b = member("b", None, 0);
        b.misses = 1;
        let facts = ShardFacts { members: vec![member("a", Some(Replica), 0), b], ..Default::default() };
        let p = plan(&facts, &Policy::default());
        assert_eq!(p.promote, None);
        assert_eq!(p.blocked.unwrap().reason, Reason::Bootstrapping);
    }

    #[test]
    fn bootstrap_elects_by_priority_then_offset() {
        let mut a = member("a", Some(Replica), 500);
        a.priority = 10;
        let b = member("b", Some(Replica), 100);
        let c = member("c", Some(Replica), 200);
        let facts = ShardFacts { members: vec![a, b, c], ..Default::default() };
        let p = plan(&facts, &Policy::default());
        let promo = p.promote.unwrap();
        assert_eq!((promo.kind, promo.to.as_str()), (PromotionKind::Bootstrap, "c"));
    }

    #[test]
    fn bootstrap_adopts_one_acting_primary_and_demotes_the_others() {
        let facts = ShardFacts {
            members: vec![
                member("a", Some(Primary), 10),
                member("b", Some(Primary), 50),
                member("c", Some(Replica), 0),
            ],
            ..Default::default()
        };
        let p = plan(&facts, &Policy::default());
        assert_eq!(p.promote.as_ref().unwrap().to, "b");
        assert_eq!(p.promote.unwrap().kind, PromotionKind::Adopt);
        assert_eq!(p.demote, ["a"]);
    }

    #[test]
    fn a_cluster_a_group_has_not_told_its_side_elects_and_adopts_nothing() {
        let policy =
            Policy { awaiting_group: Some("ProtectionGroup b/pg protects it".into()), ..Default::default() };
        for first in [Replica, Primary] {
            let facts = ShardFacts {
                members: vec![member("a", Some(first), 10), member("b", Some(Replica), 0)],
                ..Default::default()
            };
            let p = plan(&facts, &policy);
            assert_eq!((p.promote, p.demote.len()), (None, 0));
            let blocked = p.blocked.unwrap();
            assert_eq!(blocked.reason, Reason::AwaitingProtectionGroup);
            assert!(blocked.message.starts_with("ProtectionGroup b/pg protects it; nothing is elected"));
        }
        // A shard that has its primary goes on as before (failover included).
        let facts =
            with_primary(vec![down(member("a", Some(Primary), 100)), member("b", Some(Replica), 100)], 100);
        assert_eq!(plan(&facts, &policy).promote.unwrap().to, "b");
    }

    #[test]
    fn priority_zero_is_never_promoted() {
        let mut a = member("a", Some(Replica), 0);
        a.priority = 0;
        let facts = ShardFacts { members: vec![a], ..Default::default() };
        assert_eq!(plan(&facts, &Policy::default()).blocked.unwrap().reason, Reason::NoEligibleMember);
    }

    fn with_primary(members: Vec<MemberFacts>, last: i64) -> ShardFacts {
        ShardFacts {
            members,
            current_primary: Some("a".into()),
            last_primary_offset: Some(last),
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_primary_is_left_alone_and_strays_are_repaired() {
        let mut stray = member("c", Some(Replica), 0);
        stray.probe.as_mut().unwrap().following = None;
        let facts =
            with_primary(vec![member("a", Some(Primary), 10), member("b", Some(Primary), 5), stray], 10);
        let p = plan(&facts, &Policy::default());
        assert_eq!(p.promote, None);
        assert_eq!(p.demote, ["b"]);
        assert_eq!(p.follow, ["c"]);
    }

    #[test]
    fn one_missed_heartbeat_is_not_a_failure() {
        let mut a = member("a", None, 0);
        a.misses = 2;
        let facts = with_primary(vec![a, member("b", Some(Replica), 10)], 10);
        let p = plan(&facts, &Policy::default());
        assert_eq!(p.promote, None);
        assert!(!p.primary_lost);
    }

    #[test]
    fn a_lost_primary_fails_over_to_the_most_caught_up_replica() {
        let facts = with_primary(
            vec![
                down(member("a", Some(Primary), 0)),
                member("b", Some(Replica), 90),
                member("c", Some(Replica), 100),
            ],
            100,
        );
        let promo = plan(&facts, &Policy::default()).promote.unwrap();
        assert_eq!(
            (promo.kind, promo.to.as_str(), promo.lost_offset),
            (PromotionKind::Failover, "c", Some(0))
        );
    }

    #[test]
    fn max_lag_zero_refuses_a_lagging_replica_and_says_why() {
        let facts =
            with_primary(vec![down(member("a", Some(Primary), 0)), member("b", Some(Replica), 90)], 100);
        let p = plan(&facts, &Policy { max_lag: 0, ..Policy::default() });
        assert_eq!(p.promote, None);
        let blocked = p.blocked.unwrap();
        assert_eq!(blocked.reason, Reason::NoEligibleReplica);
        assert!(blocked.message.contains("b: lags 10 bytes"), "{}", blocked.message);
    }

    #[test]
    fn manual_mode_and_paused_never_promote() {
        let facts =
            with_primary(vec![down(member("a", Some(Primary), 0)), member("b", Some(Replica), 100)], 100);
        let p = plan(&facts, &Policy { automatic: false, ..Policy::default() });
        assert_eq!((p.promote, p.blocked.unwrap().reason), (None, Reason::ManualFailover));
        assert_eq!(plan(&facts, &Policy { paused: true, ..Policy::default() }), Plan::default());
    }

    #[test]
    fn failover_delay_is_respected() {
        let mut facts =
            with_primary(vec![down(member("a", Some(Primary), 0)), member("b", Some(Replica), 100)], 100);
        let policy = Policy { failover_delay: Duration::from_secs(5), ..Policy::default() };
        facts.primary_lost_for = Duration::from_secs(1);
        assert_eq!(plan(&facts, &policy).promote, None);
        facts.primary_lost_for = Duration::from_secs(6);
        assert_eq!(plan(&facts, &policy).promote.unwrap().to, "b");
    }

    #[test]
    fn a_primary_that_restarted_as_replica_is_treated_as_lost() {
        let facts = with_primary(vec![member("a", Some(Replica), 0), member("b", Some(Replica), 100)], 100);
        let promo = plan(&facts, &Policy::default()).promote.unwrap();
        assert_eq!(promo.to, "b");
        assert!(promo.reason.contains("came back as a replica"));
    }

    #[test]
    fn avoided_nodes_are_not_promoted_on() {
        let mut b = member("b", Some(Replica), 100);
        b.node = Some("n1".into());
        let mut facts =
            with_primary(vec![down(member("a", Some(Primary), 0)), b, member("c", Some(Replica), 50)], 100);
        facts.avoid_nodes = vec!["n1".into()];
        assert_eq!(plan(&facts, &Policy::default()).promote.unwrap().to, "c");
    }

    #[test]
    fn a_standby_leader_follows_the_upstream_and_is_not_lost_as_a_replica() {
        let mut a = member("a", Some(Replica), 10);
        a.probe.as_mut().unwrap().following = None;
        let facts = with_primary(vec![a, member("b", Some(Replica), 10)], 10);
        let policy = Policy { standby: true, upstream: Some("up:6379".into()), ..Policy::default() };
        let p = plan(&facts, &policy);
        assert_eq!(p.promote, None, "a replica leader is not lost in a standby cluster");
        assert_eq!(p.follow, ["a"], "the leader is pointed at the upstream");
        let unknown = Policy { standby: true, upstream: None, ..Policy::default() };
        assert_eq!(plan(&facts, &unknown).blocked.unwrap().reason, Reason::UpstreamUnknown);
    }

    #[test]
    fn a_recorded_promotion_is_resumed() {
        let mut facts =
            with_primary(vec![down(member("a", Some(Primary), 0)), member("b", Some(Replica), 100)], 100);
        facts.target_primary = Some("b".into());
        let promo = plan(&facts, &Policy::default()).promote.unwrap();
        assert_eq!((promo.kind, promo.to.as_str()), (PromotionKind::Resume, "b"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn arb_member(i: usize) -> impl Strategy<Value = MemberFacts> {
            (
                0..3i32,
                prop::option::of((any::<bool>(), 0..1000i64)),
                0..4u32,
                prop::bool::weighted(0.1),
                0..3usize,
                prop::bool::weighted(0.15),
                prop::option::weighted(0.1, Just("HTTP 500".to_owned())),
            )
                .prop_map(
                    move |(priority, probe, misses, unauthorized, node, leaving, ambiguous)| MemberFacts {
                        name: format!("m{i}"),
                        endpoint: format!("m{i}:6379"),
                        node: Some(format!("n{node}")),
                        priority: priority * 100,
                        probe: probe.map(|(primary, offset)| Probe {
                            role: if primary { Primary } else { Replica },
                            offset: Some(offset),
                            following: (!primary).then(|| "m0:6379".to_owned()),
                            link_up: true,
                            ..Default::default()
                        }),
                        misses,
                        unauthorized,
                        ambiguous,
                        leaving,
                    },
                )
        }

        fn arb_case() -> impl Strategy<Value = (ShardFacts, Policy, usize)> {
            (1..6usize)
                .prop_flat_map(|n| {
                    (
                        (0..n).map(arb_member).collect::<Vec<_>>(),
                        prop::option::of(0..n),
                        prop::option::of(0..1000i64),
                        prop::collection::vec(any::<bool>(), 3),
                        (any::<bool>(), prop::bool::weighted(0.1), 0..500i64, 1..4u32, 0..3u64, 0..3u64),
                        0..n,
                    )
                })
                .prop_map(
                    |(
                        members,
                        primary,
                        last,
                        avoid,
                        (automatic, paused, max_lag, threshold, delay, lost),
                        rot,
                    )| {
                        let facts = ShardFacts {
                            current_primary: primary.map(|i| members[i].name.clone()),
                            members,
                            target_primary: None,
                            last_primary_offset: last,
                            primary_lost_for: Duration::from_secs(lost),
                            avoid_nodes: (0..3).filter(|i| avoid[*i]).map(|i| format!("n{i}")).collect(),
                            unfenced: None,
                        };
                        let policy = Policy {
                            automatic,
                            paused,
                            failure_threshold: threshold,
                            failover_delay: Duration::from_secs(delay),
                            max_lag,
                            ..Policy::default()
                        };
                        (facts, policy, rot)
                    },
                )
        }

        /// What is promoted, demoted and followed, and why nothing is: must not depend on
        /// member order.
        type Shape = (Option<(PromotionKind, String)>, Vec<String>, Vec<String>, Option<Reason>);

        fn shape(p: &Plan) -> Shape {
            let mut demote = p.demote.clone();
            demote.sort();
            let mut follow = p.follow.clone();
            follow.sort();
            (
                p.promote.as_ref().map(|x| (x.kind, x.to.clone())),
                demote,
                follow,
                p.blocked.as_ref().map(|b| b.reason),
            )
        }

        proptest! {
            #[test]
            fn elections_are_safe_and_do_not_depend_on_member_order((facts, policy, rot) in arb_case()) {
                let plan = plan(&facts, &policy);
                let mut rotated = facts.clone();
                rotated.members.rotate_left(rot);
                prop_assert_eq!(shape(&plan), shape(&super::plan(&rotated, &policy)));
                if policy.paused {
                    prop_assert_eq!(&plan, &Plan::default());
                }
                let Some(p) = &plan.promote else { return Ok(()) };
                let m = facts.members.iter().find(|m| m.name == p.to).expect("promotes a member");
                match p.kind {
                    PromotionKind::Failover => {
                        prop_assert!(policy.automatic && !policy.paused, "failover in manual or paused mode");
                        // A primary whose pod is being deleted is moved off at once.
                        let leaving = facts
                            .members
                            .iter()
                            .any(|m| Some(&m.name) == facts.current_primary.as_ref() && m.leaving);
                        prop_assert!(leaving || facts.primary_lost_for >= policy.failover_delay);
                    }
                    PromotionKind::Resume => prop_assert!(false, "no target was recorded"),
                    PromotionKind::Bootstrap | PromotionKind::Adopt => {
                        prop_assert!(facts.current_primary.is_none())
                    }
                }
                if p.kind != PromotionKind::Adopt {
                    prop_assert!(m.priority > 0, "priority 0 promoted");
                    prop_assert!(is_healthy(m), "unhealthy member promoted: {:?}", m);
                    prop_assert!(!m.leaving, "a member whose pod is being deleted promoted: {:?}", m);
                    prop_assert!(
                        !m.node.as_ref().is_some_and(|n| facts.avoid_nodes.contains(n)),
                        "promoted on a dead node"
                    );
                }
                if p.kind == PromotionKind::Failover {
                    let lag = lag(m, facts.last_primary_offset);
                    prop_assert!(lag.is_some_and(|l| l <= policy.max_lag), "lag {:?} > {}", lag, policy.max_lag);
                }
            }
        }
    }
}
