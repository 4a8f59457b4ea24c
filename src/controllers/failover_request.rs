//! The FailoverRequest controller (seed 000): a batch of switchovers or failovers, one item
//! per cluster/shard, run as a task DAG recorded in `status.task`.
//!
//! Per item: check → lock (epoch + target recorded) → fence → promote → redirect (carried out
//! by the cluster's monitor in one go, which records when each of its steps ran; the subtasks
//! carry those times) → route (the request's Service) → record. Items run in parallel.
//! An item naming a standby cluster runs seed 000's standby chain instead: check → lock →
//! reset-restore-source (the relation's end recorded in `status.standbyReleased`) →
//! failover-to-primary (epoch + target recorded, the leader made writable by the monitor) →
//! create-service-name → update-primary-info.
//! [`crate::core::dag`] decides what may run, what to roll back and when the whole is
//! terminal; every step is idempotent and its status is written before the next starts, so a
//! restarted operator resumes from status. Every log line of a request carries its
//! `status.traceId`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::controller::Action};
use tracing::{Instrument as _, info, info_span, warn};

use super::{
    Context, SecretCache,
    operation::{
        Holder, acquire, facts_from_status, lock_all, record_target, release, release_standby,
        restore_standby,
    },
    routing, write_status,
};
use crate::{
    core::{
        dag::{self, Chain, ItemOutcome},
        member::ObservedRole,
        shard::{self, Policy},
        standby,
        vocabulary::{Action as EventAction, ConditionType, Reason},
    },
    engines,
    resources::{
        FailoverRequest, HaCluster, ProtectionGroup,
        failover_request::{
            FailoverItem, FailoverRequestStatus, ItemResult, RequestPhase, RequestType, Subtask,
            TaskInstance, TaskStatus,
        },
        hacluster::{OnTimeout, Standby},
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
    /// Waiting, having recorded something elsewhere that resuming the step needs (kept in
    /// the subtask's context), e.g. the epoch of a promotion it recorded.
    Recorded(String, BTreeMap<String, String>),
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
    // Chosen once and kept in status: every log line about the request carries it.
    let trace_id = status
        .trace_id
        .get_or_insert_with(|| new_trace_id(&fr.uid().unwrap_or_default(), Timestamp::now()))
        .clone();
    status.executor = Some(ctx.executor.clone());
    let span =
        info_span!("failover_request", request = %fr.name_any(), namespace = %ns, trace_id = %trace_id);
    drive(&ctx, api, fr, status).instrument(span).await
}

/// The reconcile of a request that is not terminal, inside its span.
async fn drive(
    ctx: &Context,
    api: Api<FailoverRequest>,
    fr: Arc<FailoverRequest>,
    mut status: FailoverRequestStatus,
) -> Result<Action, Error> {
    let ns = fr.namespace().unwrap_or_default();
    let now = Time(Timestamp::now());
    let Some(mut task) = status.task.clone() else {
        // An item naming a standby cluster runs the standby chain; a cluster not there yet is
        // taken for one with a primary (its check says so if it turns out a standby).
        let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
        let mut chains = Vec::new();
        for item in &fr.spec.items {
            let standby = clusters.get_opt(&item.cluster).await?.is_some_and(|c| c.standby().is_some());
            chains.push(if standby { Chain::Standby } else { Chain::Primary });
        }
        let subtasks = dag::build(&chains)
            .into_iter()
            .filter_map(|p| {
                let item = fr.spec.items.get(p.item as usize)?;
                let what = chains.get(p.item as usize)?.describe(p.name);
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
        return abandon(ctx, &api, &fr, status, task, Reason::InvalidStatus, why).await;
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
            return abandon(ctx, &api, &fr, status, task, Reason::DeadlineExceeded, why).await;
        }
    }

    // Roll back failed items that may still be rolled back, newest step first.
    let items: Vec<i32> = (0..fr.spec.items.len() as i32).collect();
    for item in &items {
        for id in dag::to_roll_back(&task.subtasks, *item) {
            let sub = task.subtasks.iter().find(|t| t.id == id).cloned().expect("id from the dag");
            let msg = roll_back(ctx, &fr, &sub).await?;
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
            run_step(ctx, &fr, &sub, &context, dag::chain(&task.subtasks, sub.item)).await?
        };
        let t = task.subtasks.iter_mut().find(|t| t.id == id).expect("id from the dag");
        let outcome = match outcome {
            Step::DoneAt(msg, from, to) => {
                t.start_time = Some(from);
                t.end_time = Some(to);
                Step::Done(msg)
            }
            Step::Recorded(msg, facts) => {
                // What the step recorded elsewhere, kept for resuming it.
                t.start_time = Some(started);
                t.context.extend(facts);
                Step::Waiting(msg)
            }
            other => {
                t.start_time = Some(started);
                other
            }
        };
        match outcome {
            Step::DoneAt(..) | Step::Recorded(..) => unreachable!("converted above"),
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
            // The relation counts as ended once its reset is done (and not rolled back).
            let released = task.subtasks.iter().any(|t| {
                t.item == *i && t.name == "reset-restore-source" && t.status == TaskStatus::Successful
            });
            Some(ItemResult {
                cluster: c.get("cluster")?.clone(),
                shard: c.get("shard")?.clone(),
                from: c.get("from").cloned(),
                to: (dag::item_outcome(&task.subtasks, *i) == Some(ItemOutcome::Succeeded))
                    .then(|| c.get("to").cloned())
                    .flatten(),
                released_from: released.then(|| standby_from_context(&c)).flatten(),
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
                .map(|r| match &r.released_from {
                    Some(up) => format!(
                        "{}/{}: {} is primary, no longer a standby of {}",
                        r.cluster,
                        r.shard,
                        r.to.clone().unwrap_or_default(),
                        describe_upstream(up)
                    ),
                    None => format!(
                        "{}/{}: {} → {}",
                        r.cluster,
                        r.shard,
                        r.from.clone().unwrap_or_default(),
                        r.to.clone().unwrap_or_default()
                    ),
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => failures.join("; "),
        };
        task.status = tstatus;
        task.end_time = Some(Time(Timestamp::now()));
        status.duration_ms = duration_ms(&task);
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
        let check = tasks.iter().find(|t| t.name == "check" && t.context.get("cluster") == Some(&r.cluster));
        let to = check.and_then(|t| t.context.get("to").cloned()).unwrap_or_default();
        let from = r.from.clone().unwrap_or_default();
        // A standby's check said what it will do and which case it was: "will make …; …".
        let standby_plan = check
            .filter(|t| dag::chain(tasks, t.item) == Chain::Standby)
            .and_then(|t| t.message.as_deref()?.split_once("; will ").map(|(_, plan)| plan));
        match standby_plan {
            Some(plan) => format!("{}/{}: would {plan}", r.cluster, r.shard),
            None => format!("{}/{}: would promote {to} (now {from})", r.cluster, r.shard),
        }
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
    chain: Chain,
) -> Result<Step, kube::Error> {
    let ns = fr.namespace().unwrap_or_default();
    let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(item) = fr.spec.items.get(sub.item as usize) else {
        return Ok(Step::Failed(format!("subtask {} names no item of spec.items", sub.id)));
    };
    let uid = fr.uid().unwrap_or_default();
    let get = |k: &str| c.get(k).cloned().unwrap_or_default();
    if sub.name != "check"
        && let Err(why) = plan_fits(item, c, chain)
    {
        return Ok(Step::Failed(format!("the plan recorded by check does not match spec.items: {why}")));
    }
    Ok(match sub.name.as_str() {
        "check" => {
            // A cluster that does not exist yet is waited for until the step's deadline:
            // GitOps tools apply a request and its cluster together.
            let Some(cluster) = clusters.get_opt(&item.cluster).await? else {
                return Ok(Step::Waiting(format!("HaCluster {} not found (yet)", item.cluster)));
            };
            match chain {
                Chain::Primary => check(&clusters, cluster, item, fr.spec.type_).await?,
                Chain::Standby => check_standby(ctx, cluster, item, fr.spec.type_).await?,
            }
        }
        "reset-restore-source" => reset_restore_source(ctx, &clusters, fr, c).await?,
        "failover-to-primary" => failover_to_primary(ctx, &clusters, fr, sub, c).await?,
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
            // A standby's lock records no promotion yet: the relation ends first.
            let taken = match chain {
                Chain::Primary => {
                    acquire(&clusters, &cluster, &holder, &[(get("shard"), get("to"))], deadline).await?
                }
                Chain::Standby => lock_all(&clusters, &cluster, &holder, deadline).await?,
            };
            match (taken, chain) {
                (Ok(()), Chain::Primary) => Step::Done(format!(
                    "locked {}/{}; epoch bumped, target {}",
                    get("cluster"),
                    get("shard"),
                    get("to")
                )),
                (Ok(()), Chain::Standby) => Step::Done(format!(
                    "locked {}; its monitor changes no role until the request releases it",
                    get("cluster")
                )),
                (Err(h), _) => Step::Waiting(format!("db_busy: {h} holds the operation lock")),
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
        "route" | "create-service-name" => match &item.service_name {
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
        "record" | "update-primary-info" => {
            release(&clusters, &get("cluster"), &uid).await?;
            let was = match standby_from_context(c).filter(|_| chain == Chain::Standby) {
                Some(up) => format!("a standby of {} until now", describe_upstream(&up)),
                None => format!("was {}", get("from")),
            };
            Step::Done(format!(
                "{}/{}: primary {} ({was}); lock released",
                get("cluster"),
                get("shard"),
                get("to")
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
    cluster: HaCluster,
    item: &FailoverItem,
    type_: RequestType,
) -> Result<Step, kube::Error> {
    // A cluster with no primary yet is waited for until the step's deadline, like one that
    // does not exist yet.
    if let Some(why) = cluster.paused_refusal() {
        return Ok(Step::Failed(why));
    }
    // Planned before the cluster existed, or before it became a standby: its leader must be
    // failed over to primary, which this item's steps do not do.
    if cluster.standby().is_some() {
        let client = clusters.clone().into_client();
        return Ok(Step::Failed(match protected_refusal(&client, &cluster).await {
            Some(why) => why,
            None => format!(
                "HaCluster {} is a standby cluster, which it was not when this request was planned; nothing touched: create the request again to fail it over to primary",
                item.cluster
            ),
        }));
    }
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
    if let Some(refused) = expected_primary_refusal(item, &shard, &current, "the primary") {
        return Ok(refused);
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
            if let Some(refused) = candidate_refusal(m) {
                return Ok(refused);
            }
            if let Some(refused) = lag_refusal(&facts, m, &current, max_lag) {
                return Ok(refused);
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

/// Validate an item naming a standby cluster and choose the member to make primary: its
/// leader (the member its monitor keeps following the upstream), or the item's healthy
/// candidate. Refused, with nothing touched, when a ProtectionGroup owns the relation and —
/// unless the request is forced — while the upstream still takes writes.
async fn check_standby(
    ctx: &Context,
    cluster: HaCluster,
    item: &FailoverItem,
    type_: RequestType,
) -> Result<Step, kube::Error> {
    if let Some(why) = protected_refusal(&ctx.client, &cluster).await.or_else(|| cluster.paused_refusal()) {
        return Ok(Step::Failed(why));
    }
    let Some(standby) = cluster.standby().cloned() else {
        return Ok(Step::Failed(format!(
            "HaCluster {} is no longer a standby cluster; nothing touched: create the request again to move its primary",
            item.cluster
        )));
    };
    let st = cluster.status.clone().unwrap_or_default();
    if st.shards.len() > 1
        || cluster.spec.shards.as_ref().is_some_and(|s| s.len() > 1)
        || !standby.shard_endpoints.is_empty()
    {
        return Ok(Step::Failed(format!(
            "HaCluster {} is a standby with more than one shard: failing over to primary is supported for one-shard standbys; nothing touched",
            item.cluster
        )));
    }
    let Some(s) = st.shards.first() else {
        return Ok(Step::Waiting(format!("HaCluster {} has no shards yet", item.cluster)));
    };
    let shard = s.name.clone();
    if item.shard.as_ref().is_some_and(|x| x != &shard) {
        return Ok(Step::Failed(format!(
            "HaCluster {} has no shard {}",
            item.cluster,
            item.shard.as_deref().unwrap_or_default()
        )));
    }
    let Some(leader) = s.current_primary.clone() else {
        return Ok(Step::Waiting(format!("{}/{shard} has no leader yet", item.cluster)));
    };
    if let Some(refused) = expected_primary_refusal(item, &shard, &leader, "the standby's leader") {
        return Ok(refused);
    }
    let facts = facts_from_status(&cluster, &shard, &[]);
    let to = item.candidate.clone().unwrap_or_else(|| leader.clone());
    let Some(m) = facts.members.iter().find(|m| m.name == to) else {
        return Ok(Step::Failed(format!("candidate {to} is not a member of {}/{shard}", item.cluster)));
    };
    if let Some(refused) = candidate_refusal(m) {
        return Ok(refused);
    }
    let upstream = upstream_state(ctx, &cluster, &standby).await;
    let note = match standby::gate(type_ == RequestType::Failover, &upstream) {
        standby::Gate::Go(note) => note,
        standby::Gate::Refused(why) => return Ok(Step::Failed(why)),
    };
    // `k=v` words (see parse_context): the relation's fields that are set.
    let relation: String = [
        ("upstreamCluster", &standby.cluster),
        ("upstreamNamespace", &standby.namespace),
        ("upstreamEndpoint", &standby.primary_endpoint),
    ]
    .iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| format!(" {k}={v}")))
    .collect();
    Ok(Step::Done(format!(
        "cluster={} shard={shard} from={leader} to={to}{relation}; will make {to} (the standby's leader is {leader}) the writable primary, ending replication from {}; {note}",
        item.cluster,
        describe_upstream(&standby)
    )))
}

/// The expectedPrimary guard: refused, nothing touched, when the item expects another
/// member than `current` (`what` it is) of `shard`.
fn expected_primary_refusal(item: &FailoverItem, shard: &str, current: &str, what: &str) -> Option<Step> {
    let expected = item.expected_primary.as_ref().filter(|e| *e != current)?;
    Some(Step::Failed(format!(
        "expectedPrimary is {expected} but {what} of {}/{shard} is {current}; refusing, nothing touched",
        item.cluster
    )))
}

/// Why member `m` may not be made primary now, if it may not: priority 0 and a pod being
/// deleted are refused; one not healthy may be starting (a cluster applied together with the
/// request) and is waited for until the step's deadline.
fn candidate_refusal(m: &shard::MemberFacts) -> Option<Step> {
    let c = &m.name;
    if m.priority <= 0 {
        return Some(Step::Failed(format!("candidate {c} has priority 0: never promoted")));
    }
    if m.leaving {
        return Some(Step::Failed(format!(
            "candidate {c} is leaving (its pod is being deleted): never promoted; name another candidate or none"
        )));
    }
    (!shard::is_healthy(m)).then(|| Step::Waiting(format!("candidate {c} is not healthy (yet)")))
}

/// A forced failover to a named candidate is held to the cluster's `maxLagOnFailover`, as
/// the candidate it would elect is: naming a member does not buy the right to lose more than
/// the spec allows (raise it to accept that). With the primary lost the candidate cannot
/// catch up, so the request fails at once, saying why; with the primary still answering it
/// may, so the step waits (until its deadline).
fn lag_refusal(facts: &shard::ShardFacts, m: &shard::MemberFacts, primary: &str, max: i64) -> Option<Step> {
    let c = &m.name;
    let why = match shard::lag(m, facts.last_primary_offset) {
        Some(l) if l <= max => return None,
        Some(l) => {
            format!("candidate {c} lags {l} bytes behind the last primary offset (maxLagOnFailover {max})")
        }
        None => format!(
            "candidate {c} reports no replication offset, so what it lacks is unknown (maxLagOnFailover {max})"
        ),
    };
    let primary_lost = facts.members.iter().find(|p| p.name == primary).is_none_or(|p| !shard::is_healthy(p));
    Some(if primary_lost {
        Step::Failed(format!(
            "{why}: promoting it would lose acknowledged writes it never received; nothing touched — raise spec.failover.maxLagOnFailover of the cluster to accept that loss, or name another candidate"
        ))
    } else {
        Step::Waiting(format!("{why}; waiting for it to catch up"))
    })
}

/// The standby relation `check_standby` recorded.
fn standby_from_context(c: &BTreeMap<String, String>) -> Option<Standby> {
    let s = Standby {
        cluster: c.get("upstreamCluster").cloned(),
        namespace: c.get("upstreamNamespace").cloned(),
        primary_endpoint: c.get("upstreamEndpoint").cloned(),
        shard_endpoints: Vec::new(),
    };
    (s.cluster.is_some() || s.primary_endpoint.is_some()).then_some(s)
}

/// `HaCluster <ns>/<name>` or `<host:port>`, for messages.
fn describe_upstream(s: &Standby) -> String {
    match (&s.cluster, &s.primary_endpoint) {
        (Some(c), _) => match &s.namespace {
            Some(ns) => format!("HaCluster {ns}/{c}"),
            None => format!("HaCluster {c}"),
        },
        (None, Some(ep)) => ep.clone(),
        (None, None) => "(no upstream)".into(),
    }
}

/// The refusal for a cluster whose standby relation a ProtectionGroup owns, if it is one.
async fn protected_refusal(client: &kube::Client, cluster: &HaCluster) -> Option<String> {
    let group = cluster.status.as_ref()?.protection.as_ref().filter(|p| p.standby.is_some())?.group.clone();
    let (ns, name) = group.split_once('/').unwrap_or(("", group.as_str()));
    let me = cluster.name_any();
    // Which site this cluster is at, when the group is in this control plane.
    let site = match Api::<ProtectionGroup>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(Some(pg)) if pg.spec.pairs.iter().any(|p| p.target == me) => "target",
        Ok(Some(pg)) if pg.spec.pairs.iter().any(|p| p.source == me) => "source",
        _ => "<this cluster's site>",
    };
    Some(format!(
        "HaCluster {me} is the DR side of ProtectionGroup {group}, which owns its standby relation; fail over the group instead: kubectl understudy site-failover {name} --to {site} -n {ns} (add --force --reason … when the production site is lost); nothing touched"
    ))
}

/// Whether the standby's upstream still takes writes: every member of the upstream HaCluster
/// (with its own engine and credentials) and the address the standby last followed, probed
/// now. A member that answers but whose role cannot be read counts as writable (nothing is
/// promoted on a guess).
async fn upstream_state(ctx: &Context, cluster: &HaCluster, standby: &Standby) -> standby::Upstream {
    let mut targets: Vec<(String, String)> = Vec::new();
    if let Some(ep) = &standby.primary_endpoint {
        targets.push(("primaryEndpoint".into(), ep.clone()));
    }
    let mut source = cluster.clone();
    if let Some(name) = &standby.cluster {
        let ns = standby.namespace.clone().or_else(|| cluster.namespace()).unwrap_or_default();
        if let Ok(Some(up)) = Api::<HaCluster>::namespaced(ctx.client.clone(), &ns).get_opt(name).await {
            for s in up.status.iter().flat_map(|s| &s.shards) {
                for m in &s.members {
                    if let Some(ep) = &m.endpoint {
                        targets.push((format!("{name}/{}", m.name), ep.clone()));
                    }
                }
            }
            source = up;
        }
    }
    let followed = cluster.status.as_ref().and_then(|s| s.shards.first()).and_then(|s| s.upstream.clone());
    if let Some(ep) = followed
        && !targets.iter().any(|(_, e)| e == &ep)
    {
        targets.push(("the address it last followed".into(), ep));
    }
    if targets.is_empty() {
        return standby::Upstream::NotWritable("no address of the upstream is known".into());
    }
    let ns = source.namespace().unwrap_or_default();
    let key = source.spec.engine.secret_key();
    let (creds, ca) =
        match super::cached_credentials(ctx, &ns, source.spec.secret_ref.as_ref(), key, SecretCache::TTL)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                return standby::Upstream::Writable(format!(
                    "{} (its credentials cannot be read to check it: {e})",
                    describe_upstream(standby)
                ));
            }
        };
    let engine = engines::for_cluster(source.spec.engine, creds, ca.as_deref(), UPSTREAM_PROBE, None);
    let probes = futures::future::join_all(
        targets.iter().map(|(_, ep)| async { tokio::time::timeout(UPSTREAM_PROBE, engine.probe(ep)).await }),
    )
    .await;
    let mut seen = Vec::new();
    for ((who, ep), probe) in targets.iter().zip(probes) {
        match probe {
            Ok(Ok(p)) if p.role == ObservedRole::Primary => {
                return standby::Upstream::Writable(format!("{who} ({ep})"));
            }
            Ok(Ok(_)) => seen.push(format!("{who} ({ep}) is a replica")),
            Ok(Err(e)) if e.member_answered() => {
                return standby::Upstream::Writable(format!(
                    "{who} ({ep}), which answers but not with its role ({e})"
                ));
            }
            Ok(Err(e)) => seen.push(format!("{who} ({ep}): {e}")),
            Err(_) => seen.push(format!("{who} ({ep}): no answer within {UPSTREAM_PROBE:?}")),
        }
    }
    standby::Upstream::NotWritable(seen.join("; "))
}

/// How long a probe of a standby's upstream may take.
const UPSTREAM_PROBE: Duration = Duration::from_secs(2);

/// reset-restore-source: end the standby relation in the cluster's status (one
/// resourceVersion-guarded write, under the request's lock); from then on its monitor no
/// longer re-attaches the leader to the old upstream, which the item's result names.
async fn reset_restore_source(
    ctx: &Context,
    clusters: &Api<HaCluster>,
    fr: &FailoverRequest,
    c: &BTreeMap<String, String>,
) -> Result<Step, kube::Error> {
    let name = c.get("cluster").cloned().unwrap_or_default();
    let Some(standby) = standby_from_context(c) else {
        return Ok(Step::Failed("check recorded no upstream".into()));
    };
    let by = format!("{LOCK_KIND} {}/{}", fr.namespace().unwrap_or_default(), fr.name_any());
    let uid = fr.uid().unwrap_or_default();
    Ok(match release_standby(clusters, &name, &uid, &by, &standby).await? {
        Ok(written) => {
            let ns = fr.namespace().unwrap_or_default();
            let fence = fence_upstream(ctx, clusters, &ns, &name, &uid, &by, &standby).await?;
            let msg = format!(
                "{name} no longer replicates from {} (status.standbyReleased; spec.standby is left as it is); {fence}",
                describe_upstream(&standby)
            );
            // Announced once, after the write.
            if written && let Some(cluster) = clusters.get_opt(&name).await? {
                let note = format!("{msg}; by {by}");
                ctx.event(&cluster, false, Reason::StandbyReleased, EventAction::FailoverRequest, note).await;
            }
            Step::Done(msg)
        }
        Err(why) => Step::Failed(format!("{why}; nothing touched")),
    })
}

/// Make sure the old upstream is fenced when it returns: for an upstream HaCluster here, its
/// `status.supersededBy` names the standby and its members (written before the standby is
/// made writable, so no instant exists where the upstream could return unfenced). What was
/// done, for the step's message.
async fn fence_upstream(
    ctx: &Context,
    clusters: &Api<HaCluster>,
    here: &str,
    name: &str,
    uid: &str,
    by: &str,
    standby: &Standby,
) -> Result<String, kube::Error> {
    let Some(upstream) = &standby.cluster else {
        return Ok(format!(
            "its upstream {} is an address, not an HaCluster the operator manages: nothing here can fence it when it returns — make sure it comes back as a replica or not at all",
            describe_upstream(standby)
        ));
    };
    let ns = standby.namespace.clone().unwrap_or_else(|| here.to_owned());
    let made = format!("{here}/{name}");
    let members: Vec<String> = match clusters.get_opt(name).await? {
        Some(c) => c
            .status
            .iter()
            .flat_map(|s| &s.shards)
            .flat_map(|s| &s.members)
            .filter_map(|m| m.endpoint.clone())
            .collect(),
        None => Vec::new(),
    };
    let upstreams: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(match super::operation::supersede(&upstreams, upstream, uid, by, &made, members).await? {
        Some(_) => format!(
            "HaCluster {ns}/{upstream} is told (status.supersededBy) to follow {made}: should its members return as primaries, its monitor makes them follow it on the first heartbeat that sees them, before promoting anything there"
        ),
        None => format!("HaCluster {ns}/{upstream} no longer exists: nothing to fence"),
    })
}

/// Undo what reset-restore-source of `uid` did for `cluster`: the upstream no longer told to
/// follow it, the standby relation restored.
async fn restore_relation(
    ctx: &Context,
    clusters: &Api<HaCluster>,
    here: &str,
    cluster: &str,
    uid: &str,
    standby: Option<&Standby>,
) -> Result<(), kube::Error> {
    if let Some(s) = standby
        && let Some(upstream) = &s.cluster
    {
        let ns = s.namespace.as_deref().unwrap_or(here);
        let upstreams: Api<HaCluster> = Api::namespaced(ctx.client.clone(), ns);
        super::operation::unsupersede(&upstreams, upstream, uid).await?;
    }
    restore_standby(clusters, cluster, uid).await
}

/// failover-to-primary: record the promotion of the chosen member (epoch + 1, target) under
/// the request's lock, once — the gate is asked again just before, so an upstream that came
/// back since the check is not joined by a second writable cluster — then wait for the
/// cluster's monitor to carry it out (the relation is released: it makes the member
/// writable, not a follower of the upstream).
async fn failover_to_primary(
    ctx: &Context,
    clusters: &Api<HaCluster>,
    fr: &FailoverRequest,
    sub: &Subtask,
    c: &BTreeMap<String, String>,
) -> Result<Step, kube::Error> {
    let get = |k: &str| c.get(k).cloned().unwrap_or_default();
    let (name, shard_name, to) = (get("cluster"), get("shard"), get("to"));
    let Some(cluster) = clusters.get_opt(&name).await? else {
        return Ok(Step::Failed(format!("HaCluster {name} was deleted")));
    };
    let uid = fr.uid().unwrap_or_default();
    let s = shard_of(&cluster, &shard_name).cloned().unwrap_or_default();
    let lock = s.operation.as_ref().filter(|l| l.uid.as_deref() == Some(uid.as_str()));
    let since = |t: &Time| lock.is_some_and(|l| t.0 >= l.acquired_at.0);
    let st = cluster.status.clone().unwrap_or_default();
    let record = st.last_failover.as_ref().filter(|r| r.shard == shard_name && since(&r.started_at));
    let facts = standby::PromotionFacts {
        to: to.clone(),
        recorded_epoch: sub.context.get("epoch").and_then(|e| e.parse().ok()),
        lock_ours: lock.is_some(),
        current_primary: s.current_primary.clone(),
        target_primary: s.target_primary.clone(),
        epoch: s.epoch,
        promoted_since_lock: record.and_then(|r| Some((r.to.clone()?, r.epoch))),
        abandoned: condition(&st.conditions, ConditionType::LastPromotion)
            .filter(|c| c.status == "False" && since(&c.last_transition_time))
            .map(|c| c.message.clone()),
    };
    let epoch_fact = |e: i64| BTreeMap::from([("epoch".to_owned(), e.to_string())]);
    Ok(match standby::promotion_next(&facts) {
        standby::PromotionNext::Record => {
            let Some(standby) = standby_from_context(c) else {
                return Ok(Step::Failed("check recorded no upstream".into()));
            };
            let upstream = upstream_state(ctx, &cluster, &standby).await;
            let note = match standby::gate(fr.spec.type_ == RequestType::Failover, &upstream) {
                standby::Gate::Go(note) => note,
                standby::Gate::Refused(why) => return Ok(Step::Failed(why)),
            };
            match record_target(clusters, &name, &uid, &shard_name, &to).await? {
                Ok(epoch) => Step::Recorded(
                    format!(
                        "epoch {epoch} recorded; waiting for {name}'s monitor to make {to} writable ({note})"
                    ),
                    epoch_fact(epoch),
                ),
                Err(why) => Step::Failed(format!("{why}; not promoting")),
            }
        }
        standby::PromotionNext::Wait(epoch) => Step::Recorded(
            format!("epoch {epoch} recorded; waiting for {name}'s monitor to make {to} writable"),
            epoch_fact(epoch),
        ),
        standby::PromotionNext::Done(epoch) => {
            let msg = format!("{to} is the writable primary of {name}/{shard_name} (epoch {epoch})");
            match record.and_then(|r| r.steps.iter().find(|st| st.name == "promote")) {
                Some(r) => Step::DoneAt(
                    format!("{msg}: {}", r.message.clone().unwrap_or_default()),
                    r.started_at.clone(),
                    r.finished_at.clone(),
                ),
                None => Step::Done(msg),
            }
        }
        standby::PromotionNext::Failed(why) => Step::Failed(why),
    })
}

async fn roll_back(ctx: &Context, fr: &FailoverRequest, sub: &Subtask) -> Result<String, kube::Error> {
    let ns = fr.namespace().unwrap_or_default();
    let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let tasks =
        fr.status.as_ref().and_then(|s| s.task.as_ref()).map(|t| t.subtasks.clone()).unwrap_or_default();
    let c = item_context(&tasks, sub.item);
    let cluster = c.get("cluster").cloned().unwrap_or_default();
    Ok(match sub.name.as_str() {
        "lock" => {
            release(&clusters, &cluster, &fr.uid().unwrap_or_default()).await?;
            format!("released the lock on {cluster}; the old primary keeps its role and routing")
        }
        "reset-restore-source" => {
            let uid = fr.uid().unwrap_or_default();
            restore_relation(ctx, &clusters, &ns, &cluster, &uid, standby_from_context(&c).as_ref()).await?;
            let up =
                standby_from_context(&c).map_or_else(|| "its upstream".into(), |s| describe_upstream(&s));
            let msg = format!(
                "{cluster} is a standby of {up} again: its leader follows it once the lock is released"
            );
            if let Some(hac) = clusters.get_opt(&cluster).await? {
                ctx.event(&hac, false, Reason::StandbyRestored, EventAction::FailoverRequest, msg.clone())
                    .await;
            }
            msg
        }
        _ => "nothing to undo".into(),
    })
}

/// Whether the plan `check` recorded for an item (read back from status) is one `check`
/// could have made for it: same cluster, the shard, candidate and expected primary the item
/// names, and a candidate that is not the primary.
fn plan_fits(item: &FailoverItem, c: &BTreeMap<String, String>, chain: Chain) -> Result<(), String> {
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
    // A standby's leader is its recorded primary and, by default, the member made writable.
    if get("to").is_empty()
        || (get("to") == get("from") && chain == Chain::Primary)
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
/// `why`, a standby relation it ended is restored where its item may still roll back, and
/// every lock the request holds on its items' clusters is released (a recorded promotion not
/// yet carried out is abandoned with it).
async fn abandon(
    ctx: &Context,
    api: &Api<FailoverRequest>,
    fr: &Arc<FailoverRequest>,
    mut status: FailoverRequestStatus,
    mut task: TaskInstance,
    reason: Reason,
    why: String,
) -> Result<Action, Error> {
    let ns = fr.namespace().unwrap_or_default();
    let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = fr.uid().unwrap_or_default();
    for (i, item) in fr.spec.items.iter().enumerate() {
        let i = i as i32;
        if dag::chain(&task.subtasks, i) == Chain::Standby && dag::may_roll_back(&task.subtasks, i) {
            let standby = standby_from_context(&item_context(&task.subtasks, i));
            restore_relation(ctx, &clusters, &ns, &item.cluster, &uid, standby.as_ref()).await?;
        }
    }
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
    status.duration_ms = duration_ms(&task);
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

/// Milliseconds from the task's start to its end, once it has both.
fn duration_ms(task: &TaskInstance) -> Option<i64> {
    let (start, end) = (task.start_time.as_ref()?, task.end_time.as_ref()?);
    Some(end.0.duration_since(start.0).as_millis().max(0) as i64)
}

/// A request's trace id: 16 hex digits of an FNV-1a hash of its uid and the instant it was
/// first reconciled.
fn new_trace_id(uid: &str, now: Timestamp) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes().chain(now.as_nanosecond().to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_sixteen_hex_digits_and_differs_per_request_and_instant() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let id = new_trace_id("5b1d0c1e-uid", t);
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(id, new_trace_id("5b1d0c1e-uid", t), "a function of its inputs");
        assert_ne!(id, new_trace_id("another-uid", t));
        assert_ne!(id, new_trace_id("5b1d0c1e-uid", t + Duration::from_nanos(1)));
    }

    fn context(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_standby_items_plan_may_keep_its_leader_and_the_relation_is_read_back_whole() {
        let item: FailoverItem = serde_json::from_value(serde_json::json!({"cluster": "dr"})).unwrap();
        let c = context(&[
            ("cluster", "dr"),
            ("shard", "s0"),
            ("from", "d-a"),
            ("to", "d-a"),
            ("upstreamCluster", "src"),
            ("upstreamNamespace", "prod"),
        ]);
        assert_eq!(plan_fits(&item, &c, Chain::Standby), Ok(()));
        assert!(plan_fits(&item, &c, Chain::Primary).is_err(), "a primary cannot replace itself");
        let up = standby_from_context(&c).unwrap();
        assert_eq!((up.cluster.as_deref(), up.namespace.as_deref()), (Some("src"), Some("prod")));
        assert_eq!(up.primary_endpoint, None);
        assert_eq!(describe_upstream(&up), "HaCluster prod/src");
        assert_eq!(standby_from_context(&context(&[("cluster", "dr")])), None);
        // check's message is read back into the context word by word.
        let msg = "cluster=dr shard=s0 from=d-a to=d-a upstreamEndpoint=10.0.0.7:6379; will make d-a the writable primary; upstream is not taking writes (x=y)";
        let parsed = parse_context(msg);
        assert_eq!(parsed.get("upstreamEndpoint").map(String::as_str), Some("10.0.0.7:6379"));
        assert!(!parsed.contains_key("x"), "only the words before the first ';'");
    }
}
