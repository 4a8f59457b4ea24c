//! Decisions of a planned site failover (ProtectionGroup), per replication pair: what the
//! pair needs so that the wanted site's cluster is the writable one, and how far the other
//! side replicates. Pure: the controller gathers the probes and carries the answer out.

use super::member::{ObservedRole, Probe};

/// The leader of one side of a pair (the cluster's recorded primary) and what it said.
#[derive(Clone, Debug, Default)]
pub struct Leader {
    pub name: String,
    pub endpoint: String,
    /// `None`: it did not answer.
    pub probe: Option<Probe>,
}

impl Leader {
    fn role(&self) -> Option<&ObservedRole> {
        self.probe.as_ref().map(|p| &p.role)
    }
    fn offset(&self) -> Option<i64> {
        self.probe.as_ref().and_then(|p| p.offset)
    }
    fn follows(&self, other: &Leader) -> bool {
        self.probe.as_ref().is_some_and(|p| p.following.as_deref() == Some(other.endpoint.as_str()))
    }
}

/// What a pair needs for the wanted side to be the writable one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairMove {
    /// The wanted side is already writable; the other side only has to follow it.
    InPlace,
    /// The other side is writable: stop its writes, wait until the wanted side has
    /// everything, demote it, promote the wanted side.
    Move,
    /// Neither side is writable (a move stopped half-way) and the wanted side has at least
    /// everything the other side has: promote it.
    PromoteOnly,
    /// Forced failover: the other side does not answer; promote the wanted side without
    /// waiting for it (what it did not receive is lost).
    Force,
    /// Not safe to move; nothing is touched. The message says why.
    Blocked(String),
}

/// Decide one pair of a forced failover. A pair whose other side answers moves as in a
/// planned failover (nothing needs forcing there, and nothing is lost); one whose other
/// side does not answer (or whose cluster cannot even be read: `other` None) is forced,
/// provided the wanted side's leader answers.
pub fn forced_pair_move(want: Option<&Leader>, other: Option<&Leader>) -> PairMove {
    if other.is_some_and(|o| o.probe.is_some()) {
        return pair_move(want, other);
    }
    let Some(want) = want else {
        return PairMove::Blocked("the cluster to promote has no recorded primary".into());
    };
    match want.role() {
        None => PairMove::Blocked(format!(
            "{} ({}) does not answer either: nothing can be promoted",
            want.name, want.endpoint
        )),
        Some(ObservedRole::Primary) => PairMove::InPlace,
        Some(ObservedRole::Replica) => PairMove::Force,
    }
}

/// What a forced promotion of `dr` may lose, from the last time both leaders answered:
/// the bytes the DR leader lacked then (writes after that are unknown until the lost side
/// returns).
pub fn possible_loss(production_offset: Option<i64>, dr_offset: Option<i64>) -> Option<i64> {
    match (production_offset, dr_offset) {
        (Some(p), Some(d)) => Some((p - d).max(0)),
        _ => None,
    }
}

/// How long after the group saw the returned site fenced a yield its monitor records still
/// belongs to that return (the monitor fences first and writes after; the group may look
/// in between).
pub const YIELD_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Bytes a returned old leader held beyond the promotion, from where its own monitor saw it
/// when it made it follow the new production site (`status.yielded`): the monitor fenced it
/// before the group could measure it. Only a yield after the forced failover (`forced_at`)
/// and, once the group has seen the site fenced, no later than [`YIELD_WINDOW`] after that
/// counts — a later one is another story.
pub fn lost_by_yield(
    yielded_offset: i64,
    yielded_at: k8s_openapi::jiff::Timestamp,
    forced_at: k8s_openapi::jiff::Timestamp,
    fenced_at: Option<k8s_openapi::jiff::Timestamp>,
    promoted_at: Option<i64>,
) -> Option<i64> {
    let window = k8s_openapi::jiff::SignedDuration::try_from(YIELD_WINDOW).ok()?;
    let in_time = yielded_at >= forced_at && fenced_at.is_none_or(|f| yielded_at <= f + window);
    if !in_time {
        return None;
    }
    lost_on_return(Some(yielded_offset), promoted_at)
}

/// Bytes a returned old leader holds beyond the point where the DR leader was promoted:
/// discarded when it is fenced. Only meaningful while it still acts as a primary with an
/// offset in the same stream (it was not restarted empty).
pub fn lost_on_return(old_leader_offset: Option<i64>, promoted_at: Option<i64>) -> Option<i64> {
    match (old_leader_offset, promoted_at) {
        (Some(o), Some(p)) if o > 0 => Some((o - p).max(0)),
        _ => None,
    }
}

/// Decide one pair. `want` is the leader of the side that should be production.
pub fn pair_move(want: Option<&Leader>, other: Option<&Leader>) -> PairMove {
    let (Some(want), Some(other)) = (want, other) else {
        return PairMove::Blocked("a cluster of the pair has no recorded primary".into());
    };
    let Some(w) = &want.probe else {
        return PairMove::Blocked(format!("{} ({}) does not answer", want.name, want.endpoint));
    };
    match (&w.role, other.role()) {
        (ObservedRole::Primary, Some(ObservedRole::Primary)) => PairMove::Blocked(format!(
            "both {} and {} are writable; refusing to choose (fix it by hand)",
            want.name, other.name
        )),
        (ObservedRole::Primary, _) => PairMove::InPlace,
        (ObservedRole::Replica, None) => PairMove::Blocked(format!(
            "{} ({}) does not answer: a planned failover needs both sites (nothing is promoted on a guess)",
            other.name, other.endpoint
        )),
        (ObservedRole::Replica, Some(ObservedRole::Primary)) => {
            if !want.follows(other) {
                return PairMove::Blocked(format!(
                    "{} does not replicate from {} ({}); it cannot catch up",
                    want.name, other.name, other.endpoint
                ));
            }
            PairMove::Move
        }
        (ObservedRole::Replica, Some(ObservedRole::Replica)) => match (want.offset(), other.offset()) {
            (Some(wo), Some(oo)) if wo >= oo => PairMove::PromoteOnly,
            (Some(wo), Some(oo)) => PairMove::Blocked(format!(
                "neither side is writable and {} is {} bytes behind {}: promoting it would lose writes",
                want.name,
                oo - wo,
                other.name
            )),
            _ => PairMove::Blocked("neither side is writable and their offsets are unknown".into()),
        },
    }
}

/// The wanted side has everything the other side wrote.
pub fn caught_up(want: &Probe, other: &Probe) -> bool {
    matches!((want.offset, other.offset), (Some(w), Some(o)) if w >= o)
}

/// Replication state of a pair in steady state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairState {
    /// `Replicating`, `Syncing` or `Broken`.
    pub state: &'static str,
    pub lag: Option<i64>,
    pub message: Option<String>,
}

/// How the DR leader replicates from the production leader.
pub fn pair_state(production: Option<&Leader>, dr: Option<&Leader>) -> PairState {
    let broken = |m: String| PairState { state: "Broken", lag: None, message: Some(m) };
    let (Some(p), Some(d)) = (production, dr) else {
        return broken("a cluster of the pair has no recorded primary yet".into());
    };
    let Some(pp) = &p.probe else { return broken(format!("production leader {} does not answer", p.name)) };
    let Some(dp) = &d.probe else { return broken(format!("DR leader {} does not answer", d.name)) };
    if pp.role != ObservedRole::Primary {
        return broken(format!("production leader {} is not writable", p.name));
    }
    if dp.role == ObservedRole::Primary {
        return broken(format!("DR leader {} is writable: two writable sites", d.name));
    }
    let lag = match (pp.offset, dp.offset) {
        (Some(a), Some(b)) => Some((a - b).max(0)),
        _ => None,
    };
    if !d.follows(p) {
        return PairState {
            state: "Syncing",
            lag: None,
            message: Some(format!("{} does not follow {} yet", d.name, p.name)),
        };
    }
    if !dp.link_up {
        return PairState {
            state: "Syncing",
            lag,
            message: Some(format!("{} is (re)synchronising from {}", d.name, p.name)),
        };
    }
    PairState { state: "Replicating", lag, message: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(name: &str, role: Option<ObservedRole>, offset: i64, following: Option<&str>) -> Leader {
        Leader {
            name: name.into(),
            endpoint: format!("{name}:6379"),
            probe: role.map(|role| Probe {
                role,
                offset: Some(offset),
                following: following.map(|f| format!("{f}:6379")),
                link_up: true,
                ..Default::default()
            }),
        }
    }
    use ObservedRole::{Primary, Replica};

    #[test]
    fn a_replica_following_the_writable_side_is_moved() {
        let w = leader("d", Some(Replica), 90, Some("p"));
        let o = leader("p", Some(Primary), 100, None);
        assert_eq!(pair_move(Some(&w), Some(&o)), PairMove::Move);
    }

    #[test]
    fn already_writable_is_in_place() {
        let w = leader("d", Some(Primary), 100, None);
        assert_eq!(pair_move(Some(&w), Some(&leader("p", Some(Replica), 100, Some("d")))), PairMove::InPlace);
        assert_eq!(pair_move(Some(&w), Some(&leader("p", None, 0, None))), PairMove::InPlace);
    }

    #[test]
    fn half_way_promotes_only_without_loss() {
        let w = leader("d", Some(Replica), 100, Some("p"));
        assert_eq!(
            pair_move(Some(&w), Some(&leader("p", Some(Replica), 100, Some("d")))),
            PairMove::PromoteOnly
        );
        let behind = pair_move(
            Some(&leader("d", Some(Replica), 90, Some("p"))),
            Some(&leader("p", Some(Replica), 100, Some("d"))),
        );
        assert!(matches!(behind, PairMove::Blocked(m) if m.contains("10 bytes behind")));
    }

    #[test]
    fn refuses_on_guesses() {
        let w = leader("d", Some(Replica), 100, Some("p"));
        assert!(matches!(pair_move(Some(&w), Some(&leader("p", None, 0, None))), PairMove::Blocked(_)));
        assert!(matches!(pair_move(Some(&leader("d", None, 0, None)), Some(&w)), PairMove::Blocked(_)));
        assert!(matches!(pair_move(None, Some(&w)), PairMove::Blocked(_)));
        let two =
            pair_move(Some(&leader("d", Some(Primary), 1, None)), Some(&leader("p", Some(Primary), 1, None)));
        assert!(matches!(two, PairMove::Blocked(m) if m.contains("both")));
        let elsewhere = pair_move(
            Some(&leader("d", Some(Replica), 100, Some("x"))),
            Some(&leader("p", Some(Primary), 100, None)),
        );
        assert!(matches!(elsewhere, PairMove::Blocked(m) if m.contains("does not replicate")));
    }

    #[test]
    fn forced_moves_only_pairs_whose_other_side_is_silent() {
        let dr = leader("d", Some(Replica), 90, Some("p"));
        let silent = leader("p", None, 0, None);
        assert_eq!(forced_pair_move(Some(&dr), Some(&silent)), PairMove::Force);
        assert_eq!(forced_pair_move(Some(&dr), None), PairMove::Force, "the lost site cannot even be read");
        // The other side answers: a planned move, with its safety (the same as pair_move).
        let alive = leader("p", Some(Primary), 100, None);
        assert_eq!(forced_pair_move(Some(&dr), Some(&alive)), PairMove::Move);
        let both = forced_pair_move(Some(&leader("d", Some(Primary), 1, None)), Some(&alive));
        assert!(matches!(both, PairMove::Blocked(m) if m.contains("both")));
        // Already writable, or nothing to promote.
        assert_eq!(forced_pair_move(Some(&leader("d", Some(Primary), 1, None)), None), PairMove::InPlace);
        assert!(matches!(forced_pair_move(Some(&leader("d", None, 0, None)), None), PairMove::Blocked(_)));
        assert!(matches!(forced_pair_move(None, None), PairMove::Blocked(_)));
    }

    #[test]
    fn losses_are_what_the_dr_side_lacked() {
        assert_eq!(possible_loss(Some(100), Some(60)), Some(40));
        assert_eq!(possible_loss(Some(100), Some(160)), Some(0));
        assert_eq!(possible_loss(None, Some(1)), None);
        assert_eq!(lost_on_return(Some(150), Some(100)), Some(50));
        assert_eq!(lost_on_return(Some(0), Some(100)), None, "restarted empty: unknown");
        assert_eq!(lost_on_return(Some(90), Some(100)), Some(0));
    }

    #[test]
    fn steady_state_and_lag() {
        let p = leader("p", Some(Primary), 100, None);
        let s = pair_state(Some(&p), Some(&leader("d", Some(Replica), 60, Some("p"))));
        assert_eq!((s.state, s.lag), ("Replicating", Some(40)));
        assert_eq!(pair_state(Some(&p), Some(&leader("d", Some(Replica), 0, Some("x")))).state, "Syncing");
        assert_eq!(pair_state(Some(&p), Some(&leader("d", Some(Primary), 0, None))).state, "Broken");
        assert_eq!(pair_state(Some(&p), None).state, "Broken");
        assert!(caught_up(&leader("d", Some(Replica), 100, None).probe.unwrap(), &p.probe.unwrap()));
    }

    #[test]
    fn a_yield_counts_only_between_the_forced_failover_and_shortly_after_the_fence() {
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        let forced = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| forced + SignedDuration::from_secs(s);
        assert_eq!(lost_by_yield(150, at(5), forced, None, Some(100)), Some(50), "not fenced yet");
        assert_eq!(
            lost_by_yield(150, at(70), forced, Some(at(20)), Some(100)),
            Some(50),
            "written after the fence"
        );
        assert_eq!(lost_by_yield(150, at(-1), forced, None, Some(100)), None, "before the forced failover");
        assert_eq!(
            lost_by_yield(150, at(200), forced, Some(at(20)), Some(100)),
            None,
            "long after: another story"
        );
        assert_eq!(lost_by_yield(150, at(5), forced, None, None), None, "no promotion point");
    }
}
