//! The task DAG of a FailoverRequest (seed 000's task instance): which subtasks may run,
//! what to roll back, and when the whole is terminal. Pure: the controller executes steps and
//! records their status; these functions decide. They work on any [`Node`] (the CRD's
//! subtask implements it), so the core knows nothing of the API types.

/// The steps of one item, in order. `prohibit_rollback` marks the point of no return: once the
/// new primary took over, the old one is not restored.
pub const STEPS: [(&str, &str, bool); 7] = [
    ("check", "validate the cluster, the expected primary and the candidate", false),
    ("lock", "take the shard's operation lock and record the new epoch and target", false),
    ("fence", "drain (switchover) or fence (failover) the old primary", false),
    ("promote", "make the candidate the writable primary", true),
    ("redirect", "point the other members at the new primary", true),
    ("route", "point the request's Service at the new primary", false),
    ("record", "record the new primary and release the lock", false),
];

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
    fn item(&self) -> i32;
    fn state(&self) -> State;
    fn upstreams(&self) -> &[i64];
    fn prohibit_rollback(&self) -> bool;
}

/// A subtask to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub id: i64,
    /// One of [`STEPS`].
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

/// Build the DAG: one chain of [`STEPS`] per item; items are independent (run in parallel).
pub fn build(items: usize) -> Vec<Planned> {
    let mut out = Vec::new();
    for item in 0..items {
        let base = (item * STEPS.len()) as i64;
        for (i, (name, _, prohibit)) in STEPS.iter().enumerate() {
            let id = base + i as i64 + 1;
            out.push(Planned {
                id,
                name,
                item: item as i32,
                state: if i == 0 { State::Ready } else { State::Pending },
                upstreams: if i == 0 { vec![] } else { vec![id - 1] },
                downstreams: if i + 1 == STEPS.len() { vec![] } else { vec![id + 1] },
                prohibit_rollback: *prohibit,
            });
        }
    }
    out
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

    fn set(tasks: &mut [Planned], id: i64, s: State) {
        tasks.iter_mut().find(|t| t.id == id).unwrap().state = s;
    }

    #[test]
    fn chains_run_in_order_and_items_in_parallel() {
        let mut t = build(2);
        assert_eq!(runnable(&t), [1, 8], "the first step of each item");
        set(&mut t, 1, State::Successful);
        assert_eq!(runnable(&t), [2, 8]);
        assert_eq!(progress(&t), "1/14");
    }

    #[test]
    fn a_failure_before_the_point_of_no_return_rolls_back_newest_first() {
        let mut t = build(1);
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
        let mut t = build(1);
        // check, lock, fence, promote succeeded; redirect failed.
        for id in 1..=4 {
            set(&mut t, id, State::Successful);
        }
        set(&mut t, 5, State::Failed);
        assert!(to_roll_back(&t, 0).is_empty());
        assert_eq!(outcome(&t), Some(ItemOutcome::Failed));
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

    proptest! {
        /// Whatever the statuses: runnable subtasks have their upstreams done, rollback never
        /// crosses the point of no return, and a terminal outcome means nothing is runnable.
        #[test]
        fn dag_invariants(items in 1usize..4, statuses in proptest::collection::vec(status(), 20)) {
            let mut t = build(items);
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
        fn all_success_terminates(items in 1usize..5) {
            let mut t = build(items);
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
            prop_assert_eq!(steps, items * STEPS.len());
        }
    }
}
