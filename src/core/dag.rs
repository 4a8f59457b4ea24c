//! The task DAG of a FailoverRequest (seed 000's task instance): which subtasks may run,
//! what to roll back, and when the whole is terminal. Pure: the controller executes steps and
//! records their status; these functions decide.

use std::collections::BTreeMap;

use crate::resources::failover_request::{Subtask, TaskStatus};

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

/// Build the DAG: one chain of [`STEPS`] per item; items are independent (run in parallel).
pub fn build(items: usize, timeout_seconds: i64, describe: impl Fn(usize, &str) -> String) -> Vec<Subtask> {
    let mut out = Vec::new();
    for item in 0..items {
        let base = (item * STEPS.len()) as i64;
        for (i, (name, _, prohibit)) in STEPS.iter().enumerate() {
            let id = base + i as i64 + 1;
            out.push(Subtask {
                id,
                name: (*name).to_owned(),
                description: describe(item, name),
                status: if i == 0 { TaskStatus::Ready } else { TaskStatus::Pending },
                item: item as i32,
                upstreams: if i == 0 { vec![] } else { vec![id - 1] },
                downstreams: if i + 1 == STEPS.len() { vec![] } else { vec![id + 1] },
                timeout_seconds,
                prohibit_rollback: *prohibit,
                start_time: None,
                end_time: None,
                message: None,
                context: BTreeMap::new(),
            });
        }
    }
    out
}

fn done(s: TaskStatus) -> bool {
    matches!(s, TaskStatus::Successful | TaskStatus::Skipped)
}

/// Subtasks to start or keep driving: not finished, every upstream done, and their item has
/// not failed.
pub fn runnable(tasks: &[Subtask]) -> Vec<i64> {
    let status = |id: i64| tasks.iter().find(|t| t.id == id).map(|t| t.status);
    tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Ready | TaskStatus::Pending | TaskStatus::Running))
        .filter(|t| !item_failed(tasks, t.item))
        .filter(|t| t.upstreams.iter().all(|u| status(*u).is_some_and(done)))
        .map(|t| t.id)
        .collect()
}

fn item_failed(tasks: &[Subtask], item: i32) -> bool {
    tasks.iter().any(|t| t.item == item && matches!(t.status, TaskStatus::Failed | TaskStatus::RolledBack))
}

/// Whether an item may still be rolled back: no prohibitRollback subtask of it has started.
pub fn may_roll_back(tasks: &[Subtask], item: i32) -> bool {
    !tasks.iter().any(|t| {
        t.item == item
            && t.prohibit_rollback
            && matches!(t.status, TaskStatus::Successful | TaskStatus::Running)
    })
}

/// Completed subtasks of a failed, still rollbackable item, newest first.
pub fn to_roll_back(tasks: &[Subtask], item: i32) -> Vec<i64> {
    if !item_failed(tasks, item) || !may_roll_back(tasks, item) {
        return Vec::new();
    }
    let mut ids: Vec<i64> =
        tasks.iter().filter(|t| t.item == item && t.status == TaskStatus::Successful).map(|t| t.id).collect();
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

pub fn item_outcome(tasks: &[Subtask], item: i32) -> Option<ItemOutcome> {
    let mine: Vec<&Subtask> = tasks.iter().filter(|t| t.item == item).collect();
    if mine.iter().all(|t| done(t.status)) {
        return Some(ItemOutcome::Succeeded);
    }
    if !mine.iter().any(|t| t.status == TaskStatus::Failed) {
        return None;
    }
    if mine.iter().any(|t| t.status == TaskStatus::Running) || !to_roll_back(tasks, item).is_empty() {
        return None;
    }
    let rolled = mine.iter().any(|t| t.status == TaskStatus::RolledBack);
    Some(if rolled { ItemOutcome::RolledBack } else { ItemOutcome::Failed })
}

/// The request's outcome once every item ended: any Failed → Failed, else any RolledBack →
/// RolledBack, else Succeeded.
pub fn outcome(tasks: &[Subtask]) -> Option<ItemOutcome> {
    let items: std::collections::BTreeSet<i32> = tasks.iter().map(|t| t.item).collect();
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
pub fn progress(tasks: &[Subtask]) -> String {
    format!("{}/{}", tasks.iter().filter(|t| done(t.status)).count(), tasks.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(tasks: &mut [Subtask], id: i64, s: TaskStatus) {
        tasks.iter_mut().find(|t| t.id == id).unwrap().status = s;
    }

    #[test]
    fn chains_run_in_order_and_items_in_parallel() {
        let mut t = build(2, 60, |_, n| n.to_owned());
        assert_eq!(runnable(&t), [1, 8], "the first step of each item");
        set(&mut t, 1, TaskStatus::Successful);
        assert_eq!(runnable(&t), [2, 8]);
        assert_eq!(progress(&t), "1/14");
    }

    #[test]
    fn a_failure_before_the_point_of_no_return_rolls_back_newest_first() {
        let mut t = build(1, 60, |_, n| n.to_owned());
        set(&mut t, 1, TaskStatus::Successful);
        set(&mut t, 2, TaskStatus::Successful);
        set(&mut t, 3, TaskStatus::Failed);
        assert_eq!(to_roll_back(&t, 0), [2, 1]);
        assert_eq!(item_outcome(&t, 0), None, "not terminal until rolled back");
        set(&mut t, 2, TaskStatus::RolledBack);
        set(&mut t, 1, TaskStatus::RolledBack);
        assert_eq!(outcome(&t), Some(ItemOutcome::RolledBack));
    }

    #[test]
    fn after_the_promotion_nothing_is_rolled_back() {
        let mut t = build(1, 60, |_, n| n.to_owned());
        // check, lock, fence, promote succeeded; redirect failed.
        for id in 1..=4 {
            set(&mut t, id, TaskStatus::Successful);
        }
        set(&mut t, 5, TaskStatus::Failed);
        assert!(to_roll_back(&t, 0).is_empty());
        assert_eq!(outcome(&t), Some(ItemOutcome::Failed));
    }

    fn status() -> impl Strategy<Value = TaskStatus> {
        prop_oneof![
            Just(TaskStatus::Ready),
            Just(TaskStatus::Pending),
            Just(TaskStatus::Running),
            Just(TaskStatus::Successful),
            Just(TaskStatus::Failed),
            Just(TaskStatus::Skipped),
            Just(TaskStatus::RolledBack),
        ]
    }

    proptest! {
        /// Whatever the statuses: runnable subtasks have their upstreams done, rollback never
        /// crosses the point of no return, and a terminal outcome means nothing is runnable.
        #[test]
        fn dag_invariants(items in 1usize..4, statuses in proptest::collection::vec(status(), 20)) {
            let mut t = build(items, 60, |_, n| n.to_owned());
            for (task, s) in t.iter_mut().zip(statuses) {
                task.status = s;
            }
            for id in runnable(&t) {
                let task = t.iter().find(|x| x.id == id).unwrap();
                for u in &task.upstreams {
                    let up = t.iter().find(|x| x.id == *u).unwrap();
                    prop_assert!(done(up.status));
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
            let mut t = build(items, 60, |_, n| n.to_owned());
            let mut steps = 0;
            while outcome(&t).is_none() {
                let r = runnable(&t);
                prop_assert!(!r.is_empty());
                for id in r {
                    set(&mut t, id, TaskStatus::Successful);
                    steps += 1;
                }
            }
            prop_assert_eq!(outcome(&t), Some(ItemOutcome::Succeeded));
            prop_assert_eq!(steps, items * STEPS.len());
        }
    }
}
