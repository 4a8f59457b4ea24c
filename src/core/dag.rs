//! The task DAG of a FailoverRequest (seed 000's task instance): which subtasks may run,
//! what to roll back, and when the whole is terminal. Pure: the controller executes steps and
//! records their status; these functions decide. They work on any [`Node`] (the CRD's
//! subtask implements it), so the core knows nothing of the API types.
//!
//! An item runs one of two chains: [`STEPS`] for a cluster with a primary, [`STANDBY_STEPS`]
//! for a standby cluster (seed 000's standby tenant), whose leader is made the primary.

/// The steps of one item of a cluster with a primary, in order (the longest chain: a
/// request's deadline counts these). `prohibit_rollback` marks the point of no return: once
/// the new primary took over, the old one is not restored.
pub const STEPS: [(&str, &str, bool); 7] = [
    ("check", "validate the cluster, the expected primary and the candidate", false),
    ("lock", "take the shard's operation lock and record the new epoch and target", false),
    ("fence", "drain (switchover) or fence (failover) the old primary", false),
    ("promote", "make the candidate the writable primary", true),
    ("redirect", "point the other members at the new primary", true),
    ("route", "point the request's Service at the new primary", false),
    ("record", "record the new primary and release the lock", false),
];

/// The steps of one item naming a standby cluster, in the order of seed 000's DAG: the log
/// restore source is reset (the end of the standby relation recorded) before the leader is
/// failed over to primary, so the cluster's monitor never re-attaches a writable leader to
/// the old upstream. Failover to primary and update primary info are the points of no
/// return, as in the seed.
pub const STANDBY_STEPS: [(&str, &str, bool); 6] = [
    (
        "check",
        "validate the standby cluster and the member to promote; refuse while its upstream still takes writes, unless forced",
        false,
    ),
    ("lock", "take the cluster's operation lock", false),
    (
        "reset-restore-source",
        "end the standby relation in status (the leader stops following the upstream); record the old upstream",
        false,
    ),
    ("failover-to-primary", "record the new epoch and make the standby's leader the writable primary", true),
    ("create-service-name", "point the request's Service at the new primary", false),
    ("update-primary-info", "record the new primary and release the lock", true),
];

/// Which chain of steps an item runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// A cluster with a primary: [`STEPS`].
    Primary,
    /// A standby cluster, made a primary cluster: [`STANDBY_STEPS`].
    Standby,
}

impl Chain {
    pub fn steps(self) -> &'static [(&'static str, &'static str, bool)] {
        match self {
            Self::Primary => &STEPS,
            Self::Standby => &STANDBY_STEPS,
        }
    }

    /// What step `name` does, for a subtask's description.
    pub fn describe(self, name: &str) -> &'static str {
        self.steps().iter().find(|(n, ..)| *n == name).map_or("", |s| s.1)
    }

    /// The chain a step name belongs to, if only one ("check", "lock" are in both).
    fn of_step(name: &str) -> Option<Self> {
        let primary = name == "switch" || STEPS.iter().any(|(n, ..)| *n == name);
        let standby = STANDBY_STEPS.iter().any(|(n, ..)| *n == name);
        match (primary, standby) {
            (true, false) => Some(Self::Primary),
            (false, true) => Some(Self::Standby),
            _ => None,
        }
    }
}

/// The chain item `item` runs, read from its subtasks' names (a chain with only the steps
/// both share is a primary chain).
pub fn chain<N: Node>(tasks: &[N], item: i32) -> Chain {
    tasks.iter().filter(|t| t.item() == item).find_map(|t| Chain::of_step(t.name())).unwrap_or(Chain::Primary)
}

/// A subtask's state (seed 000's task states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Ready,
    Pending,
    Running,
    Successful,
    Failed,
    Skipped,
    RolledBack,
}

/// A subtask as the decisions need it.
pub trait Node {
    fn id(&self) -> i64;
    /// One of [`STEPS`] or [`STANDBY_STEPS`] (or `switch`, the single step of older requests).
    fn name(&self) -> &str;
    fn item(&self) -> i32;
    fn state(&self) -> State;
    fn upstreams(&self) -> &[i64];
    fn prohibit_rollback(&self) -> bool;
}

/// A subtask to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub id: i64,
    /// One of the item's chain's steps.
    pub name: &'static str,
    pub item: i32,
    pub state: State,
    pub upstreams: Vec<i64>,
    pub downstreams: Vec<i64>,
    pub prohibit_rollback: bool,
}

impl Node for Planned {
    fn id(&self) -> i64 {
        self.id
    }
    fn name(&self) -> &str {
        self.name
    }
    fn item(&self) -> i32 {
        self.item
    }
    fn state(&self) -> State {
        self.state
    }
    fn upstreams(&self) -> &[i64] {
        &self.upstreams
    }
    fn prohibit_rollback(&self) -> bool {
        self.prohibit_rollback
    }
}

/// Build the DAG: one chain per item (`chains[i]` for item `i`); items are independent (run
/// in parallel). Item `i`'s ids start at `i × STEPS.len() + 1` whatever its chain.
pub fn build(chains: &[Chain]) -> Vec<Planned> {
    let mut out = Vec::new();
    for (item, chain) in chains.iter().enumerate() {
        let base = (item * STEPS.len()) as i64;
        let steps = chain.steps();
        for (i, (name, _, prohibit)) in steps.iter().enumerate() {
            let id = base + i as i64 + 1;
            out.push(Planned {
                id,
                name,
                item: item as i32,
                state: if i == 0 { State::Ready } else { State::Pending },
                upstreams: if i == 0 { vec![] } else { vec![id - 1] },
                downstreams: if i + 1 == steps.len() { vec![] } else { vec![id + 1] },
                prohibit_rollback: *prohibit,
            });
        }
    }
    out
}

/// Why subtasks read back from status cannot be driven, if they cannot: the status
/// subresource is writable by anyone granted `*/status`, so what comes back is input like any
/// other. Accepted: unique ids, every item of `0..items` present and no other, known step
/// names of one chain per item with one `check` per item and no upstream of its own,
/// upstreams that exist within the same item, no cycle. Anything this module's [`build`]
/// made passes.
pub fn validate<N: Node>(tasks: &[N], items: usize) -> Result<(), String> {
    use std::collections::{BTreeMap, BTreeSet};
    if tasks.is_empty() {
        return Err("no subtasks".into());
    }
    let mut by_id: BTreeMap<i64, &N> = BTreeMap::new();
    for t in tasks {
        if by_id.insert(t.id(), t).is_some() {
            return Err(format!("subtask id {} appears twice", t.id()));
        }
        if t.item() < 0 || t.item() as usize >= items {
            return Err(format!(
                "subtask {} names item {}, but spec.items has {items} entries",
                t.id(),
                t.item()
            ));
        }
        let known = |n: &str| n == "switch" || STEPS.iter().chain(&STANDBY_STEPS).any(|(s, ..)| *s == n);
        if !known(t.name()) {
            return Err(format!("subtask {} has an unknown step name {:?}", t.id(), t.name()));
        }
        if let Some(other) = Chain::of_step(t.name())
            && other != chain(tasks, t.item())
        {
            return Err(format!(
                "subtask {} ({}) mixes the steps of a standby item with those of a primary item",
                t.id(),
                t.name()
            ));
        }
        for u in t.upstreams() {
            match tasks.iter().find(|x| x.id() == *u) {
                None => {
                    return Err(format!("subtask {} waits for subtask {u}, which does not exist", t.id()));
                }
                Some(x) if x.item() != t.item() => {
                    return Err(format!("subtask {} waits for subtask {u} of another item", t.id()));
                }
                Some(_) => {}
            }
        }
    }
    let present: BTreeSet<i32> = tasks.iter().map(|t| t.item()).collect();
    if present.len() != items {
        return Err(format!("spec.items has {items} entries but the subtasks cover {}", present.len()));
    }
    for item in 0..items as i32 {
        let checks: Vec<&N> = tasks.iter().filter(|t| t.item() == item && t.name() == "check").collect();
        match checks.as_slice() {
            [c] if c.upstreams().is_empty() => {}
            [_] => return Err(format!("the check of item {item} waits for another subtask")),
            _ => return Err(format!("item {item} has {} check subtasks, not one", checks.len())),
        }
    }
    // Kahn: repeatedly take subtasks whose upstreams are all taken; what is left is a cycle.
    let mut taken: BTreeSet<i64> = BTreeSet::new();
    loop {
        let next: Vec<i64> = tasks
            .iter()
            .filter(|t| !taken.contains(&t.id()) && t.upstreams().iter().all(|u| taken.contains(u)))
            .map(|t| t.id())
            .collect();
        if next.is_empty() {
            break;
        }
        taken.extend(next);
    }
    if taken.len() != tasks.len() {
        let left: Vec<i64> = tasks.iter().map(|t| t.id()).filter(|id| !taken.contains(id)).collect();
        return Err(format!("subtasks {left:?} wait for each other in a cycle"));
    }
    Ok(())
}

fn done(s: State) -> bool {
    matches!(s, State::Successful | State::Skipped)
}

/// Subtasks to start or keep driving: not finished, every upstream done, and their item has
/// not failed.
pub fn runnable<N: Node>(tasks: &[N]) -> Vec<i64> {
    let status = |id: i64| tasks.iter().find(|t| t.id() == id).map(|t| t.state());
    tasks
        .iter()
        .filter(|t| matches!(t.state(), State::Ready | State::Pending | State::Running))
        .filter(|t| !item_failed(tasks, t.item()))
        .filter(|t| t.upstreams().iter().all(|u| status(*u).is_some_and(done)))
        .map(|t| t.id())
        .collect()
}

fn item_failed<N: Node>(tasks: &[N], item: i32) -> bool {
    tasks.iter().any(|t| t.item() == item && matches!(t.state(), State::Failed | State::RolledBack))
}

/// Whether an item may still be rolled back: no prohibitRollback subtask of it has started.
pub fn may_roll_back<N: Node>(tasks: &[N], item: i32) -> bool {
    !tasks.iter().any(|t| {
        t.item() == item && t.prohibit_rollback() && matches!(t.state(), State::Successful | State::Running)
    })
}

/// Completed subtasks of a failed, still rollbackable item, newest first.
pub fn to_roll_back<N: Node>(tasks: &[N], item: i32) -> Vec<i64> {
    if !item_failed(tasks, item) || !may_roll_back(tasks, item) {
        return Vec::new();
    }
    let mut ids: Vec<i64> =
        tasks.iter().filter(|t| t.item() == item && t.state() == State::Successful).map(|t| t.id()).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// How one item ended, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    Succeeded,
    /// Failed before doing anything (check) or after the point of no return.
    Failed,
    RolledBack,
}

pub fn item_outcome<N: Node>(tasks: &[N], item: i32) -> Option<ItemOutcome> {
    let mine: Vec<&N> = tasks.iter().filter(|t| t.item() == item).collect();
    if mine.iter().all(|t| done(t.state())) {
        return Some(ItemOutcome::Succeeded);
    }
    if !mine.iter().any(|t| t.state() == State::Failed) {
        return None;
    }
    if mine.iter().any(|t| t.state() == State::Running) || !to_roll_back(tasks, item).is_empty() {
        return None;
    }
    let rolled = mine.iter().any(|t| t.state() == State::RolledBack);
    Some(if rolled { ItemOutcome::RolledBack } else { ItemOutcome::Failed })
}

/// The request's outcome once every item ended: any Failed → Failed, else any RolledBack →
/// RolledBack, else Succeeded.
pub fn outcome<N: Node>(tasks: &[N]) -> Option<ItemOutcome> {
    let items: std::collections::BTreeSet<i32> = tasks.iter().map(|t| t.item()).collect();
    let outcomes: Option<Vec<ItemOutcome>> = items.into_iter().map(|i| item_outcome(tasks, i)).collect();
    let outcomes = outcomes?;
    Some(if outcomes.contains(&ItemOutcome::Failed) {
        ItemOutcome::Failed
    } else if outcomes.contains(&ItemOutcome::RolledBack) {
        ItemOutcome::RolledBack
    } else {
        ItemOutcome::Succeeded
    })
}

/// `done/all` for the printer column.
pub fn progress<N: Node>(tasks: &[N]) -> String {
    format!("{}/{}", tasks.iter().filter(|t| done(t.state())).count(), tasks.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn primary(items: usize) -> Vec<Planned> {
        build(&vec![Chain::Primary; items])
    }

    fn set(tasks: &mut [Planned], id: i64, s: State) {
        tasks.iter_mut().find(|t| t.id == id).unwrap().state = s;
    }

    #[test]
    fn chains_run_in_order_and_items_in_parallel() {
        let mut t = primary(2);
        assert_eq!(runnable(&t), [1, 8], "the first step of each item");
        set(&mut t, 1, State::Successful);
        assert_eq!(runnable(&t), [2, 8]);
        assert_eq!(progress(&t), "1/14");
    }

    #[test]
    fn a_failure_before_the_point_of_no_return_rolls_back_newest_first() {
        let mut t = primary(1);
        set(&mut t, 1, State::Successful);
        set(&mut t, 2, State::Successful);
        set(&mut t, 3, State::Failed);
        assert_eq!(to_roll_back(&t, 0), [2, 1]);
        assert_eq!(item_outcome(&t, 0), None, "not terminal until rolled back");
        set(&mut t, 2, State::RolledBack);
        set(&mut t, 1, State::RolledBack);
        assert_eq!(outcome(&t), Some(ItemOutcome::RolledBack));
    }

    #[test]
    fn after_the_promotion_nothing_is_rolled_back() {
        let mut t = primary(1);
        // check, lock, fence, promote succeeded; redirect failed.
        for id in 1..=4 {
            set(&mut t, id, State::Successful);
        }
        set(&mut t, 5, State::Failed);
        assert!(to_roll_back(&t, 0).is_empty());
        assert_eq!(outcome(&t), Some(ItemOutcome::Failed));
    }

    #[test]
    fn a_standby_item_runs_the_seeds_chain_beside_a_primary_item() {
        let mut t = build(&[Chain::Standby, Chain::Primary]);
        assert_eq!(validate(&t, 2), Ok(()));
        assert_eq!((chain(&t, 0), chain(&t, 1)), (Chain::Standby, Chain::Primary));
        let names: Vec<&str> = t.iter().filter(|x| x.item == 0).map(|x| x.name).collect();
        assert_eq!(
            names,
            [
                "check",
                "lock",
                "reset-restore-source",
                "failover-to-primary",
                "create-service-name",
                "update-primary-info"
            ]
        );
        // As in the seed: the source is reset before the failover, which waits for it.
        let reset = t.iter().find(|x| x.name == "reset-restore-source").unwrap().id;
        let failover = t.iter().find(|x| x.name == "failover-to-primary").unwrap();
        assert_eq!(failover.upstreams, [reset]);
        let prohibit: Vec<&str> =
            t.iter().filter(|x| x.item == 0 && x.prohibit_rollback).map(|x| x.name).collect();
        assert_eq!(prohibit, ["failover-to-primary", "update-primary-info"]);
        // Ids of the second item do not depend on the first item's chain.
        assert_eq!(runnable(&t), [1, 8]);
        assert_eq!(progress(&t), "0/13");
        // A failure of the failover rolls back the reset, then the lock, newest first.
        for id in 1..=3 {
            set(&mut t, id, State::Successful);
        }
        set(&mut t, 4, State::Failed);
        assert_eq!(to_roll_back(&t, 0), [3, 2, 1]);
        assert!(to_roll_back(&t, 1).is_empty(), "the other item is not touched");
        // Once the leader is primary, a failed service name rolls nothing back.
        let mut t = build(&[Chain::Standby]);
        for id in 1..=4 {
            set(&mut t, id, State::Successful);
        }
        set(&mut t, 5, State::Failed);
        assert!(to_roll_back(&t, 0).is_empty());
        assert_eq!(outcome(&t), Some(ItemOutcome::Failed));
    }

    #[test]
    fn an_item_mixing_both_chains_is_not_one_this_module_built() {
        let mut t = build(&[Chain::Standby]);
        t[4].name = "route";
        assert!(validate(&t, 1).unwrap_err().contains("mixes"), "{:?}", validate(&t, 1));
        let mut t = primary(1);
        t[3].name = "failover-to-primary";
        assert!(validate(&t, 1).is_err());
    }

    fn status() -> impl Strategy<Value = State> {
        prop_oneof![
            Just(State::Ready),
            Just(State::Pending),
            Just(State::Running),
            Just(State::Successful),
            Just(State::Failed),
            Just(State::Skipped),
            Just(State::RolledBack),
        ]
    }

    #[test]
    fn what_the_builder_makes_is_valid_and_tampering_is_not() {
        assert_eq!(validate(&primary(3), 3), Ok(()));
        assert!(validate(&primary(3), 2).unwrap_err().contains("item 2"), "an item beyond spec.items");
        assert!(validate(&primary(2), 3).is_err(), "an item without subtasks");
        let mut t = primary(1);
        t[1].upstreams = vec![3];
        t[2].upstreams = vec![2];
        assert!(validate(&t, 1).unwrap_err().contains("cycle"));
        let mut t = primary(1);
        t[3].upstreams = vec![99];
        assert!(validate(&t, 1).unwrap_err().contains("does not exist"));
        let mut t = primary(2);
        t[8].upstreams = vec![3];
        assert!(validate(&t, 2).unwrap_err().contains("another item"));
        let mut t = primary(1);
        t[4].id = 1;
        assert!(validate(&t, 1).unwrap_err().contains("twice"));
        let mut t = primary(1);
        t[4].name = "drop-tables";
        assert!(validate(&t, 1).unwrap_err().contains("unknown step"));
        let mut t = primary(1);
        t[0].upstreams = vec![7];
        assert!(validate(&t, 1).is_err(), "a check with an upstream");
        let mut t = primary(1);
        t[0].item = -1;
        assert!(validate(&t, 1).is_err());
        assert!(validate::<Planned>(&[], 1).is_err());
    }

    proptest! {
        /// Whatever the statuses: runnable subtasks have their upstreams done, rollback never
        /// crosses the point of no return, and a terminal outcome means nothing is runnable.
        #[test]
        fn dag_invariants(items in 1usize..4, statuses in proptest::collection::vec(status(), 20)) {
            let mut t = primary(items);
            for (task, s) in t.iter_mut().zip(statuses) {
                task.state = s;
            }
            for id in runnable(&t) {
                let task = t.iter().find(|x| x.id == id).unwrap();
                for u in &task.upstreams {
                    let up = t.iter().find(|x| x.id == *u).unwrap();
                    prop_assert!(done(up.state));
                }
            }
            for item in 0..items as i32 {
                let rb = to_roll_back(&t, item);
                if !rb.is_empty() {
                    prop_assert!(may_roll_back(&t, item));
                    prop_assert!(rb.windows(2).all(|w| w[0] > w[1]));
                }
                if item_outcome(&t, item).is_some() {
                    prop_assert!(!runnable(&t).iter().any(|id| t.iter().any(|x| x.id == *id && x.item == item)));
                }
            }
        }

        /// Driving the DAG to completion step by step always terminates in Succeeded when
        /// every step succeeds, after exactly one pass per subtask.
        #[test]
        fn all_success_terminates(standby in proptest::collection::vec(any::<bool>(), 1..5)) {
            let chains: Vec<Chain> =
                standby.iter().map(|s| if *s { Chain::Standby } else { Chain::Primary }).collect();
            let mut t = build(&chains);
            prop_assert_eq!(validate(&t, chains.len()), Ok(()));
            let mut steps = 0;
            while outcome(&t).is_none() {
                let r = runnable(&t);
                prop_assert!(!r.is_empty());
                for id in r {
                    set(&mut t, id, State::Successful);
                    steps += 1;
                }
            }
            prop_assert_eq!(outcome(&t), Some(ItemOutcome::Succeeded));
            prop_assert_eq!(steps, chains.iter().map(|c| c.steps().len()).sum::<usize>());
        }
    }
}
