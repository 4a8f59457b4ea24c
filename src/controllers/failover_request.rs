//! The FailoverRequest controller (seed 000): a batch of switchovers or failovers, one item
//! per cluster/shard, run as a task DAG recorded in `status.task`.
//!
//! Per item: check → lock (epoch + target recorded) → fence → promote → redirect (carried out
//! by the cluster's monitor in one go, which records when each of its steps ran; the subtasks
//! carry those times) → route (the request's Service) → record. Items run in parallel.
//! [`crate::core::dag`] decides what may run, what to roll back and when the whole is
//! terminal; every step is idempotent and its status is written before the next starts, so a
//! restarted operator resumes from status.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::controller::Action};
use tracing::{info, warn};

use super::{
    Context,
    operation::{Holder, acquire, facts_from_status, release},
    routing, write_status,
};
use crate::{
    core::{
        dag::{self, ItemOutcome},
        shard::{self, Policy},
        vocabulary::{Action as EventAction, ConditionType, Reason},
    },
    resources::{
        FailoverRequest, HaCluster,
        failover_request::{
            FailoverItem, ItemResult, RequestPhase, RequestType, Subtask, TaskInstance, TaskStatus,
        },
        hacluster::OnTimeout,
        shared::{condition, set_condition},
    },
};

pub const LOCK_KIND: &str = "FailoverRequest";

use super::OpError as Error;

/// What a step did.
enum Step {
    Done(String),
    /// Done by the cluster's monitor, which recorded when (its promotion record).
    DoneAt(String, Time, Time),
    Waiting(String),
    Failed(String),
}

pub async fn reconcile(fr: Arc<FailoverRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = fr.namespace().unwrap_or_default();
    let api: Api<FailoverRequest> = Api::namespaced(ctx.client.clone(), &ns);
    // Steps act on clusters before the request's status records them: act on the request as
    // stored now, not on the cache's copy, which may not show the last step yet (a step run
    // twice would lock and promote twice).
    let Some(fr) = api.get_opt(&fr.name_any()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let mut status = fr.status.clone().unwrap_or_default();
    if matches!(status.phase, Some(RequestPhase::Succeeded | RequestPhase::Failed | RequestPhase::RolledBack))
    {
        return Ok(Action::await_change());
    }
    let now = Time(Timestamp::now());
    let Some(mut task) = status.task.clone() else {
        let subtasks = dag::build(fr.spec.items.len())
            .into_iter()
            .filter_map(|p| {
                let item = fr.spec.items.get(p.item as usize)?;
                let what = dag::STEPS.iter().find(|(n, ..)| *n == p.name).map_or("", |s| s.1);
                Some(Subtask {
                    id: p.id,
                    name: p.name.to_owned(),
                    description: format!(
                        "{}/{}: {what}",
                        item.cluster,
                        item.shard.as_deref().unwrap_or("(first shard)")
                    ),
                    status: p.state.into(),
                    item: p.item,
                    upstreams: p.upstreams,
                    downstreams: p.downstreams,
                    timeout_seconds: fr.spec.timeout_seconds,
                    prohibit_rollback: p.prohibit_rollback,
                    start_time: None,
                    end_time: None,
                    message: None,
                    context: Default::default(),
                })
            })
            .collect();
        status.task = Some(TaskInstance {
            id: fr.uid().unwrap_or_default(),
            name: format!("{:?}", fr.spec.type_).to_lowercase(),
            status: TaskStatus::Running,
            start_time: Some(now.clone()),
            end_time: None,
            prohibit_rollback: false,
            subtasks,
        });
        status.phase = Some(RequestPhase::Running);
        status.observed_generation = fr.metadata.generation;
        status.progress = status.task.as_ref().map(|t| dag::progress(&t.subtasks));
        write_status(&api, &fr, status).await?;
        return Ok(Action::requeue(Duration::from_millis(50)));
    };

    // What status says is input like any other (anyone granted `*/status` can write it):
    // a task this operator did not build, or a request past its deadline, ends Failed.
    if let Err(why) = dag::validate(&task.subtasks, fr.spec.items.len()) {
        let why = format!("status.task is not one this operator wrote ({why}); abandoned, locks released");
        return abandon(&ctx, &api, &fr, status, task, Reason::InvalidStatus, why).await;
    }
    if let Some(created) = fr.metadata.creation_timestamp.as_ref() {
        let whole = request_deadline(fr.spec.timeout_seconds);
        if Timestamp::now() >= created.0 + whole {
            let why = format!(
                "not finished {} s after its creation (timeoutSeconds {} × {} steps + 60 s); abandoned, locks released",
                whole.as_secs(),
                fr.spec.timeout_seconds,
                dag::STEPS.len()
            );
            return abandon(&ctx, &api, &fr, status, task, Reason::DeadlineExceeded, why).await;
        }
    }

    // Roll back failed items that may still be rolled back, newest step first.
    let items: Vec<i32> = (0..fr.spec.items.len() as i32).collect();
    for item in &items {
        for id in dag::to_roll_back(&task.subtasks, *item) {
            let sub = task.subtasks.iter().find(|t| t.id == id).cloned().expect("id from the dag");
            let msg = roll_back(&ctx, &fr, &sub).await?;
            let t = task.subtasks.iter_mut().find(|t| t.id == id).expect("id from the dag");
            t.status = TaskStatus::RolledBack;
            t.message = Some(msg);
            t.end_time = Some(Time(Timestamp::now()));
        }
    }

    // Drive every runnable subtask one step.
    let mut just_done = Vec::new();
    for id in dag::runnable(&task.subtasks) {
        let sub = task.subtasks.iter().find(|t| t.id == id).cloned().expect("id from the dag");
        let context = item_context(&task.subtasks, sub.item);
        // The deadline comes from the spec (schema-bounded) and a start no later than now,
        // whatever status says.
        let started = match sub.start_time.clone() {
            Some(t) if t.0 <= Timestamp::now() => t,
            _ => Time(Timestamp::now()),
        };
        let timed_out =
            Timestamp::now() >= started.0 + Duration::from_secs(fr.spec.timeout_seconds.max(1) as u64);
        let outcome = if fr.spec.dry_run && sub.name != "check" {
            Step::Done("dry run: skipped".into())
        } else {
            run_step(&ctx, &fr, &sub, &context).await?
        };
        let t = task.subtasks.iter_mut().find(|t| t.id == id).expect("id from the dag");
        let outcome = match outcome {
            Step::DoneAt(msg, from, to) => {
                t.start_time = Some(from);
                t.end_time = Some(to);
                Step::Done(msg)
            }
            other => {
                t.start_time = Some(started);
                other
            }
        };
        match outcome {
            Step::DoneAt(..) => unreachable!("converted above"),
            Step::Done(msg) => {
                t.status = if fr.spec.dry_run && t.name != "check" {
                    TaskStatus::Skipped
                } else {
                    TaskStatus::Successful
                };
                t.message = Some(msg.clone());
                t.end_time.get_or_insert_with(|| Time(Timestamp::now()));
                if t.name == "check" {
                    t.context = parse_context(&msg);
                }
                just_done.push(t.name.clone());
                info!(request = %fr.name_any(), step = %t.name, item = t.item, "{msg}");
            }
            Step::Waiting(msg) if !timed_out => {
                t.status = TaskStatus::Running;
                t.message = Some(msg);
            }
            Step::Waiting(msg) => {
                t.status = TaskStatus::Failed;
                t.message = Some(format!("timed out after {}s: {msg}", fr.spec.timeout_seconds));
                t.end_time = Some(Time(Timestamp::now()));
            }
            Step::Failed(msg) => {
                warn!(request = %fr.name_any(), step = %t.name, item = t.item, "{msg}");
                t.status = TaskStatus::Failed;
                t.message = Some(msg);
                t.end_time = Some(Time(Timestamp::now()));
            }
        }
    }

    task.prohibit_rollback =
        task.subtasks.iter().any(|t| t.prohibit_rollback && t.status == TaskStatus::Successful);
    status.progress = Some(dag::progress(&task.subtasks));
    status.items = items
        .iter()
        .filter_map(|i| {
            let c = item_context(&task.subtasks, *i);
            Some(ItemResult {
                cluster: c.get("cluster")?.clone(),
                shard: c.get("shard")?.clone(),
                from: c.get("from").cloned(),
                to: (dag::item_outcome(&task.subtasks, *i) == Some(ItemOutcome::Succeeded))
                    .then(|| c.get("to").cloned())
                    .flatten(),
            })
        })
        .collect();
    let generation = fr.metadata.generation;
    let mut completion = None;
    if let Some(outcome) = dag::outcome(&task.subtasks) {
        let (phase, tstatus, reason) = match outcome {
            ItemOutcome::Succeeded => (RequestPhase::Succeeded, TaskStatus::Successful, Reason::Succeeded),
            ItemOutcome::Failed => (RequestPhase::Failed, TaskStatus::Failed, Reason::Failed),
            ItemOutcome::RolledBack => (RequestPhase::RolledBack, TaskStatus::RolledBack, Reason::RolledBack),
        };
        let failures: Vec<String> = task
            .subtasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| {
                format!(
                    "{} {}: {}",
                    fr.spec.items.get(t.item as usize).map_or("?", |i| i.cluster.as_str()),
                    t.name,
                    t.message.clone().unwrap_or_default()
                )
            })
            .collect();
        let message = match outcome {
            ItemOutcome::Succeeded if fr.spec.dry_run => {
                format!(
                    "dry run: {}",
                    status.items.iter().map(plan_line(&task.subtasks)).collect::<Vec<_>>().join(", ")
                )
            }
            ItemOutcome::Succeeded => status
                .items
                .iter()
                .map(|r| {
                    format!(
                        "{}/{}: {} → {}",
                        r.cluster,
                        r.shard,
                        r.from.clone().unwrap_or_default(),
                        r.to.clone().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => failures.join("; "),
        };
        task.status = tstatus;
        task.end_time = Some(Time(Timestamp::now()));
        status.phase = Some(phase);
        status.message = Some(message.clone());
        set_condition(
            &mut status.conditions,
            ConditionType::Complete,
            outcome == ItemOutcome::Succeeded,
            reason,
            message.clone(),
            generation,
            &Time(Timestamp::now()),
        );
        completion = Some((outcome != ItemOutcome::Succeeded, reason, message));
    }
    let terminal = status.phase != Some(RequestPhase::Running);
    let finished = terminal.then(|| {
        let outcome = match status.phase {
            Some(RequestPhase::Succeeded) if fr.spec.dry_run => "DryRun",
            Some(RequestPhase::Succeeded) => "Succeeded",
            Some(RequestPhase::RolledBack) => "RolledBack",
            _ => "Failed",
        };
        (outcome, task.start_time.as_ref().map(super::seconds_since))
    });
    status.task = Some(task);
    write_status(&api, &fr, status).await?;
    for step in &just_done {
        crate::faults::crash_point(&format!("fr-after-{step}"));
    }
    // Counted and announced once the terminal status is stored: a failed write is retried,
    // and counted and announced then.
    if let Some((outcome, seconds)) = finished {
        ctx.metrics.operation_finished("FailoverRequest", outcome, seconds);
    }
    if let Some((warning, reason, message)) = completion {
        ctx.event(fr.as_ref(), warning, reason, EventAction::FailoverRequest, message).await;
    }
    // Woken by HaCluster changes while we hold its lock; the requeue is a fallback (waiting
    // for someone else's lock, timeouts).
    Ok(if terminal { Action::await_change() } else { Action::requeue(Duration::from_secs(1)) })
}

fn plan_line(tasks: &[Subtask]) -> impl Fn(&ItemResult) -> String + '_ {
    move |r| {
        let to = tasks
            .iter()
            .find(|t| t.name == "check" && t.context.get("cluster") == Some(&r.cluster))
            .and_then(|t| t.context.get("to").cloned())
            .unwrap_or_default();
        format!("{}/{}: would promote {to} (now {})", r.cluster, r.shard, r.from.clone().unwrap_or_default())
    }
}

/// The facts the `check` step recorded for an item.
fn item_context(tasks: &[Subtask], item: i32) -> BTreeMap<String, String> {
    tasks.iter().find(|t| t.item == item && t.name == "check").map(|t| t.context.clone()).unwrap_or_default()
}

/// `check` reports `cluster=… shard=… from=… to=…; text`.
fn parse_context(msg: &str) -> BTreeMap<String, String> {
    msg.split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn run_step(
    ctx: &Context,
    fr: &FailoverRequest,
    sub: &Subtask,
    c: &BTreeMap<String, String>,
) -> Result<Step, kube::Error> {
    let ns = fr.namespace().unwrap_or_default();
    let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(item) = fr.spec.items.get(sub.item as usize) else {
        return Ok(Step::Failed(format!("subtask {} names no item of spec.items", sub.id)));
    };
    let uid = fr.uid().unwrap_or_default();
    let get = |k: &str| c.get(k).cloned().unwrap_or_default();
    if sub.name != "check"
        && let Err(why) = plan_fits(item, c)
    {
        return Ok(Step::Failed(format!("the plan recorded by check does not match spec.items: {why}")));
    }
    Ok(match sub.name.as_str() {
        "check" => check(&clusters, item, fr.spec.type_).await?,
        "lock" => {
            let Some(cluster) = clusters.get_opt(&get("cluster")).await? else {
                return Ok(Step::Failed(format!("HaCluster {} was deleted", get("cluster"))));
            };
            let current = shard_of(&cluster, &get("shard")).and_then(|s| s.current_primary.clone());
            let ours = shard_of(&cluster, &get("shard"))
                .and_then(|s| s.operation.as_ref())
                .is_some_and(|l| l.uid.as_deref() == Some(uid.as_str()));
            if !ours && current.as_deref() != Some(get("from").as_str()) {
                return Ok(Step::Failed(format!(
                    "the primary changed to {} before the lock was taken; not touching it",
                    current.as_deref().unwrap_or("none")
                )));
            }
            // The candidate came back from status: it must still be a member that may be
            // promoted.
            let facts = facts_from_status(&cluster, &get("shard"), &[]);
            if !ours && !facts.members.iter().any(|m| m.name == get("to") && m.priority > 0) {
                return Ok(Step::Failed(format!(
                    "{} is not a member of {}/{} that may be promoted; not touching it",
                    get("to"),
                    get("cluster"),
                    get("shard")
                )));
            }
            let holder = Holder {
                force: fr.spec.type_ == RequestType::Failover,
                kind: LOCK_KIND.into(),
                name: fr.name_any(),
                namespace: fr.namespace(),
                uid,
                dead_members: Vec::new(),
                dead_nodes: Vec::new(),
            };
            let deadline = Timestamp::now() + Duration::from_secs(fr.spec.timeout_seconds.max(1) as u64 * 2);
            match acquire(&clusters, &cluster, &holder, &[(get("shard"), get("to"))], deadline).await? {
                Ok(()) => Step::Done(format!(
                    "locked {}/{}; epoch bumped, target {}",
                    get("cluster"),
                    get("shard"),
                    get("to")
                )),
                Err(h) => Step::Waiting(format!("db_busy: {h} holds the operation lock")),
            }
        }
        // The monitor carries fence → promote → redirect out in one go once the target is
        // recorded; each subtask completes when the promotion is recorded, with the times the
        // monitor recorded for its step. ("switch" is the single step of older requests.)
        "fence" | "promote" | "redirect" | "switch" => {
            let Some(cluster) = clusters.get_opt(&get("cluster")).await? else {
                return Ok(Step::Failed(format!("HaCluster {} was deleted", get("cluster"))));
            };
            let s = shard_of(&cluster, &get("shard"));
            let current = s.and_then(|s| s.current_primary.clone());
            let target = s.and_then(|s| s.target_primary.clone());
            if current.as_deref() == Some(get("to").as_str()) && target.is_none() {
                let record = cluster
                    .status
                    .as_ref()
                    .and_then(|st| st.last_failover.as_ref())
                    .filter(|r| r.shard == get("shard") && r.to.as_deref() == Some(get("to").as_str()))
                    .and_then(|r| r.steps.iter().find(|st| st.name == sub.name));
                match record {
                    Some(r) => Step::DoneAt(
                        r.message.clone().unwrap_or_default(),
                        r.started_at.clone(),
                        r.finished_at.clone(),
                    ),
                    None => Step::Done(format!("{} is primary; {} follows it", get("to"), get("from"))),
                }
            } else if sub.name != "fence" && sub.name != "switch" {
                Step::Failed(format!("{} is no longer the primary of {}", get("to"), get("shard")))
            } else if target.as_deref() != Some(get("to").as_str()) {
                let last = cluster
                    .status
                    .as_ref()
                    .and_then(|st| condition(&st.conditions, ConditionType::LastPromotion));
                let why = last.map_or_else(|| "the promotion was abandoned".into(), |c| c.message.clone());
                let drain_timed_out =
                    last.is_some_and(|c| c.reason == super::hacluster::ABANDON_DRAIN.as_str());
                if drain_timed_out && fr.spec.on_timeout == OnTimeout::Force {
                    force_switch(&clusters, fr, &cluster, &get("shard"), &get("to"), &why).await?
                } else {
                    Step::Failed(why)
                }
            } else {
                Step::Waiting(format!("waiting for {}'s monitor to promote {}", get("cluster"), get("to")))
            }
        }
        "route" => match &item.service_name {
            None => Step::Done("no serviceName: nothing to route".into()),
            Some(svc) => {
                let Some(cluster) = clusters.get_opt(&get("cluster")).await? else {
                    return Ok(Step::Failed(format!("HaCluster {} was deleted", get("cluster"))));
                };
                let Some(route) = routing::member_route(&cluster, &get("to"), ctx.allow_client_address)
                else {
                    return Ok(Step::Failed(format!("{} has no routable address", get("to"))));
                };
                let routes = routing::Routes {
                    services: BTreeMap::from([(svc.clone(), vec![route.clone()])]),
                    port: None,
                };
                let applied = routing::apply_routes(&ctx.client, &cluster, &routes).await?;
                if let Some(why) = applied.conflicts.first() {
                    Step::Failed(format!("serviceName: {why}"))
                } else if applied.rejected.is_empty() {
                    // From now on the cluster's monitor keeps it on the primary.
                    routing::add_primary_alias(&clusters, &cluster, svc).await?;
                    Step::Done(format!(
                        "Service {svc} → {route}; it follows {}'s primary from now on",
                        get("cluster")
                    ))
                } else {
                    Step::Failed(format!(
                        "Kubernetes cannot route to {route} (loopback/link-local); set clientAddress on the member"
                    ))
                }
            }
        },
        "record" => {
            release(&clusters, &get("cluster"), &uid).await?;
            Step::Done(format!(
                "{}/{}: primary {} (was {}); lock released",
                get("cluster"),
                get("shard"),
                get("to"),
                get("from")
            ))
        }
        other => Step::Failed(format!("unknown step {other}")),
    })
}

/// onTimeout: Force after a graceful switchover timed out draining: record the promotion
/// again, forced (the old primary is fenced at once), if the candidate is within the
/// cluster's maxLagOnFailover — otherwise forcing would lose more than the cluster allows.
async fn force_switch(
    clusters: &Api<HaCluster>,
    fr: &FailoverRequest,
    cluster: &HaCluster,
    shard_name: &str,
    to: &str,
    why: &str,
) -> Result<Step, kube::Error> {
    let facts = facts_from_status(cluster, shard_name, &[]);
    let max = cluster.spec.failover.max_lag_on_failover;
    let lag =
        facts.members.iter().find(|m| m.name == to).and_then(|m| shard::lag(m, facts.last_primary_offset));
    match lag {
        Some(l) if l <= max => {}
        other => {
            return Ok(Step::Failed(format!(
                "{why}; onTimeout Force: not forcing, {to} lags {} bytes (maxLagOnFailover {max})",
                other.map_or("an unknown number of".into(), |l| l.to_string())
            )));
        }
    }
    let holder = Holder {
        force: true,
        kind: LOCK_KIND.into(),
        name: fr.name_any(),
        namespace: fr.namespace(),
        uid: fr.uid().unwrap_or_default(),
        dead_members: Vec::new(),
        dead_nodes: Vec::new(),
    };
    let deadline = Timestamp::now() + Duration::from_secs(fr.spec.timeout_seconds.max(1) as u64 * 2);
    Ok(
        match acquire(clusters, cluster, &holder, &[(shard_name.to_owned(), to.to_owned())], deadline).await?
        {
            Ok(()) => Step::Waiting(format!("{why}; onTimeout Force: forcing the promotion of {to}")),
            Err(h) => Step::Waiting(format!("{why}; forcing: {h}")),
        },
    )
}

/// Validate an item and choose its candidate.
async fn check(
    clusters: &Api<HaCluster>,
    item: &FailoverItem,
    type_: RequestType,
) -> Result<Step, kube::Error> {
    // A cluster that does not exist yet, or has no primary yet, is waited for until the
    // step's deadline: GitOps tools apply a request and its cluster together.
    let Some(cluster) = clusters.get_opt(&item.cluster).await? else {
        return Ok(Step::Waiting(format!("HaCluster {} not found (yet)", item.cluster)));
    };
    let st = cluster.status.clone().unwrap_or_default();
    let shard = match &item.shard {
        Some(s) => s.clone(),
        None => match st.shards.first() {
            Some(s) => s.name.clone(),
            None => return Ok(Step::Waiting(format!("HaCluster {} has no shards yet", item.cluster))),
        },
    };
    let Some(s) = st.shards.iter().find(|s| s.name == shard) else {
        let declared = cluster.spec.shards.iter().flatten().any(|s| s.name == shard);
        return Ok(if declared || cluster.pod_membership().is_some() {
            Step::Waiting(format!("HaCluster {} has no status for shard {shard} yet", item.cluster))
        } else {
            Step::Failed(format!("HaCluster {} has no shard {shard}", item.cluster))
        });
    };
    let Some(current) = s.current_primary.clone() else {
        return Ok(Step::Waiting(format!("{}/{shard} has no primary yet", item.cluster)));
    };
    if let Some(expected) = &item.expected_primary
        && expected != &current
    {
        return Ok(Step::Failed(format!(
            "expectedPrimary is {expected} but the primary of {}/{shard} is {current}; refusing, nothing touched",
            item.cluster
        )));
    }
    let facts = facts_from_status(&cluster, &shard, &[]);
    if facts.members.is_empty() {
        return Ok(Step::Waiting(format!("{}/{shard} has no member status yet", item.cluster)));
    }
    // A switchover drains the primary first, so lag is not disqualifying; a forced failover
    // keeps the cluster's maxLagOnFailover.
    let max_lag = match type_ {
        RequestType::Switchover => i64::MAX,
        RequestType::Failover => cluster.spec.failover.max_lag_on_failover,
    };
    let policy = Policy { max_lag, ..Policy::default() };
    let to = match &item.candidate {
        Some(c) => {
            let Some(m) = facts.members.iter().find(|m| &m.name == c) else {
                return Ok(Step::Failed(format!(
                    "candidate {c} is not a member of {}/{shard}",
                    item.cluster
                )));
            };
            if c == &current {
                return Ok(Step::Failed(format!("candidate {c} is already the primary")));
            }
            if m.priority <= 0 {
                return Ok(Step::Failed(format!("candidate {c} has priority 0: never promoted")));
            }
            if m.leaving {
                return Ok(Step::Failed(format!(
                    "candidate {c} is leaving (its pod is being deleted): never promoted; name another candidate or none"
                )));
            }
            if !shard::is_healthy(m) {
                // It may be starting (a cluster applied together with the request): waited
                // for until the step's deadline.
                return Ok(Step::Waiting(format!("candidate {c} is not healthy (yet)")));
            }
            c.clone()
        }
        None => match shard::elect_candidate(&facts, &policy, Some(&current)) {
            Ok(m) if m.name != current => m.name.clone(),
            Ok(_) => return Ok(Step::Waiting("no replica other than the primary is eligible (yet)".into())),
            Err(why) => return Ok(Step::Waiting(format!("no eligible replica (yet): {why}"))),
        },
    };
    Ok(Step::Done(format!(
        "cluster={} shard={shard} from={current} to={to}; will promote {to}",
        item.cluster
    )))
}

async fn roll_back(ctx: &Context, fr: &FailoverRequest, sub: &Subtask) -> Result<String, kube::Error> {
    let ns = fr.namespace().unwrap_or_default();
    let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let tasks =
        fr.status.as_ref().and_then(|s| s.task.as_ref()).map(|t| t.subtasks.clone()).unwrap_or_default();
    let c = item_context(&tasks, sub.item);
    Ok(match sub.name.as_str() {
        "lock" => {
            let cluster = c.get("cluster").cloned().unwrap_or_default();
            release(&clusters, &cluster, &fr.uid().unwrap_or_default()).await?;
            format!("released the lock on {cluster}; the old primary keeps its role and routing")
        }
        _ => "nothing to undo".into(),
    })
}

/// Whether the plan `check` recorded for an item (read back from status) is one `check`
/// could have made for it: same cluster, the shard, candidate and expected primary the item
/// names, and a candidate that is not the primary.
fn plan_fits(item: &FailoverItem, c: &BTreeMap<String, String>) -> Result<(), String> {
    let get = |k: &str| c.get(k).map(String::as_str).unwrap_or_default();
    if get("cluster") != item.cluster {
        return Err(format!("cluster '{}', the item names '{}'", get("cluster"), item.cluster));
    }
    if get("shard").is_empty() || item.shard.as_deref().is_some_and(|s| s != get("shard")) {
        return Err(format!(
            "shard '{}', the item names '{}'",
            get("shard"),
            item.shard.as_deref().unwrap_or("(first)")
        ));
    }
    if get("to").is_empty()
        || get("to") == get("from")
        || item.candidate.as_deref().is_some_and(|x| x != get("to"))
    {
        return Err(format!("candidate '{}' (primary '{}')", get("to"), get("from")));
    }
    if item.expected_primary.as_deref().is_some_and(|e| e != get("from")) {
        return Err(format!(
            "primary '{}', the item expects '{}'",
            get("from"),
            item.expected_primary.as_deref().unwrap_or_default()
        ));
    }
    Ok(())
}

/// How long a whole request may take from its creation: every step of an item to its
/// deadline (items run in parallel), and a minute for the operator's own delays.
fn request_deadline(timeout_seconds: i64) -> Duration {
    Duration::from_secs(timeout_seconds.max(1) as u64 * dag::STEPS.len() as u64 + 60)
}

/// End the request Failed without driving it further: every unfinished subtask fails with
/// `why`, every lock the request holds on its items' clusters is released (a recorded
/// promotion not yet carried out is abandoned with it).
async fn abandon(
    ctx: &Context,
    api: &Api<FailoverRequest>,
    fr: &Arc<FailoverRequest>,
    mut status: crate::resources::failover_request::FailoverRequestStatus,
    mut task: TaskInstance,
    reason: Reason,
    why: String,
) -> Result<Action, Error> {
    let ns = fr.namespace().unwrap_or_default();
    let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = fr.uid().unwrap_or_default();
    let names: std::collections::BTreeSet<&str> = fr.spec.items.iter().map(|i| i.cluster.as_str()).collect();
    for cluster in names {
        release(&clusters, cluster, &uid).await?;
    }
    let now = Time(Timestamp::now());
    for t in task
        .subtasks
        .iter_mut()
        .filter(|t| matches!(t.status, TaskStatus::Ready | TaskStatus::Pending | TaskStatus::Running))
    {
        t.status = TaskStatus::Failed;
        t.message = Some(why.clone());
        t.end_time = Some(now.clone());
    }
    task.status = TaskStatus::Failed;
    task.end_time = Some(now.clone());
    let seconds = task.start_time.as_ref().map(super::seconds_since);
    status.progress = Some(dag::progress(&task.subtasks));
    status.task = Some(task);
    status.phase = Some(RequestPhase::Failed);
    status.message = Some(why.clone());
    set_condition(
        &mut status.conditions,
        ConditionType::Complete,
        false,
        reason,
        why.clone(),
        fr.metadata.generation,
        &now,
    );
    write_status(api, fr, status).await?;
    warn!(request = %fr.name_any(), "{why}");
    ctx.metrics.operation_finished("FailoverRequest", "Failed", seconds);
    ctx.event(fr.as_ref(), true, reason, EventAction::FailoverRequest, why).await;
    Ok(Action::await_change())
}

fn shard_of<'a>(c: &'a HaCluster, shard: &str) -> Option<&'a crate::resources::hacluster::ShardStatus> {
    c.status.as_ref()?.shards.iter().find(|s| s.name == shard)
}
