//! The ShardFailover controller (seed 001): fail over named primary shards of one HaCluster.
//!
//! Stages: validate (every uid is a current primary of one cluster, else the seed's error
//! code) → plan (which replica each shard promotes; dry run stops here) → take the operation
//! lock of every shard, bump epochs and record targets in one resourceVersion-guarded write on
//! the HaCluster → the cluster's monitor carries the promotions out (graceful if the old
//! primary is healthy) → release the lock. Everything is recorded in status first, so a
//! restarted operator resumes where it stopped.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams, runtime::controller::Action};
use tracing::{info, warn};

use super::{
    Context,
    operation::{Holder, acquire, facts_from_status, release},
    write_status,
};
use crate::{
    core::{
        shard::{self, Policy},
        vocabulary::{Action as EventAction, ConditionType, Reason},
    },
    resources::{
        HaCluster, ShardFailover,
        hacluster::FailoverMode,
        shard_failover::{
            ShardFailoverError as Code, ShardFailoverPhase as Phase, ShardFailoverStatus, ShardProgress,
            ShardStep,
        },
        shared::{condition, remove_condition, set_condition},
    },
};

pub const LOCK_KIND: &str = "ShardFailover";

use super::OpError as Error;

/// Where a uid lives.
struct Located {
    cluster: HaCluster,
    shard: String,
}

pub async fn reconcile(sfo: Arc<ShardFailover>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sfo.namespace().unwrap_or_default();
    let api: Api<ShardFailover> = Api::namespaced(ctx.client.clone(), &ns);
    // Act on the object as stored now, not on the cache's copy, which may not show the last
    // recorded step yet.
    let Some(sfo) = api.get_opt(&sfo.name_any()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let clusters: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = sfo.status.clone().unwrap_or_default();
    if matches!(status.phase, Some(Phase::Succeeded | Phase::Failed)) {
        return Ok(Action::await_change());
    }
    let uid = sfo.uid().unwrap_or_default();
    let now = Timestamp::now();
    let created = sfo.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let deadline = created + Duration::from_secs(sfo.spec.timeout_seconds.max(1) as u64);

    if status.action_uid.is_none() {
        status.action_uid = Some(uid.clone());
        status.phase = Some(Phase::Pending);
        status.start_time = Some(Time(now));
        status.observed_generation = sfo.metadata.generation;
    }

    // Validate and plan once; afterwards the recorded plan is the truth (the uids stop
    // being primaries as soon as the plan is carried out).
    if status.shards.is_empty() {
        // An HaCluster the operator cannot read is not a candidate (it is reported on its own).
        let guarded: Api<kube::core::DeserializeGuard<HaCluster>> = Api::namespaced(ctx.client.clone(), &ns);
        let all: Vec<HaCluster> =
            guarded.list(&ListParams::default()).await?.items.into_iter().filter_map(|g| g.0.ok()).collect();
        match validate_and_plan(&sfo, &all) {
            // Created before its cluster exists or has a primary (GitOps applies everything
            // at once): wait, as for a busy lock, until the deadline.
            Err(r)
                if let Some(until) =
                    r.may_pass.map(|p| created.checked_add(p).map_or(deadline, |t| t.min(deadline)))
                    && now < until =>
            {
                let msg = format!("waiting until {}: {}", Time(until).0, r.message);
                if status.message.as_deref() != Some(msg.as_str()) {
                    status.message = Some(msg);
                    write_status(&api, &sfo, status).await?;
                }
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(r) => return finish_failed(&api, &sfo, status, r.code, r.message, &ctx).await,
            Ok((cluster, plan)) => {
                status.cluster = Some(cluster);
                status.shards = plan;
            }
        }
        if sfo.spec.dry_run {
            let summary = plan_summary(&status.shards);
            status.phase = Some(Phase::Succeeded);
            status.completion_time = Some(Time(Timestamp::now()));
            status.message = Some(format!("dry run: {summary}; nothing was changed"));
            set_condition(
                &mut status.conditions,
                ConditionType::Complete,
                true,
                Reason::DryRun,
                status.message.clone().unwrap_or_default(),
                sfo.metadata.generation,
                &Time(Timestamp::now()),
            );
            let seconds = status.start_time.as_ref().map(super::seconds_since);
            write_status(&api, &sfo, status).await?;
            ctx.metrics.operation_finished("ShardFailover", "DryRun", seconds);
            return Ok(Action::await_change());
        }
        status.phase = Some(Phase::Running);
        status.message = Some(plan_summary(&status.shards));
        write_status(&api, &sfo, status.clone()).await?;
    }

    let cluster_name = status.cluster.clone().unwrap_or_default();
    let Some(cluster) = clusters.get_opt(&cluster_name).await? else {
        return finish_failed(
            &api,
            &sfo,
            status,
            Code::ShardNotExist,
            format!("HaCluster {cluster_name} was deleted"),
            &ctx,
        )
        .await;
    };
    let cstatus = cluster.status.clone().unwrap_or_default();
    // The recorded plan is read back from status, which anyone granted `*/status` can write:
    // it must be one validate_and_plan could have made for this spec.
    if let Err(why) = plan_fits(&sfo, &cluster, &status.shards) {
        release(&clusters, &cluster_name, &uid).await?;
        let msg = format!("status.shards is not a plan this operator made ({why}); nothing done");
        return finish_failed(&api, &sfo, status, Code::FailoverFailed, msg, &ctx).await;
    }

    // Done shards: the cluster's monitor made `to` the primary.
    let mut all_done = true;
    let mut need_lock = Vec::new();
    for p in &mut status.shards {
        let s = cstatus.shards.iter().find(|s| Some(&s.name) == p.shard.as_ref());
        let current = s.and_then(|s| s.current_primary.clone());
        let target = s.and_then(|s| s.target_primary.clone());
        let ours =
            s.and_then(|s| s.operation.as_ref()).is_some_and(|l| l.uid.as_deref() == Some(uid.as_str()));
        if current.is_some() && current == p.to && target.is_none() {
            p.phase = ShardStep::Succeeded;
            p.message = Some(format!("{} is primary", p.to.clone().unwrap_or_default()));
            continue;
        }
        all_done = false;
        if ours && target.is_none() {
            // The monitor abandoned our promotion (e.g. the candidate could not catch up).
            p.phase = ShardStep::Failed;
            let why = condition(&cstatus.conditions, ConditionType::LastPromotion).map(|c| c.message.clone());
            p.message = Some(why.unwrap_or_else(|| "the promotion was abandoned".into()));
        } else if !ours {
            if current.as_deref() != Some(p.from.as_str()) {
                p.phase = ShardStep::Failed;
                p.message = Some(format!(
                    "{} is no longer the primary (now {}); not touching it",
                    p.from,
                    current.as_deref().unwrap_or("none")
                ));
            } else {
                need_lock.push(p.shard.clone().unwrap_or_default());
            }
        }
    }
    if all_done {
        // forceRebind: clients are re-pointed now, from the recorded primaries, rather than
        // at the monitor's next routing pass.
        let rebind = if sfo.spec.force_rebind {
            format!(
                "; {}",
                super::routing::rebind_primaries(&ctx.client, &cluster, ctx.allow_client_address).await?
            )
        } else {
            String::new()
        };
        release(&clusters, &cluster_name, &uid).await?;
        status.phase = Some(Phase::Succeeded);
        status.completion_time = Some(Time(Timestamp::now()));
        status.message = Some(format!("done: {}{rebind}", plan_summary(&status.shards)));
        set_condition(
            &mut status.conditions,
            ConditionType::Complete,
            true,
            Reason::Succeeded,
            status.message.clone().unwrap_or_default(),
            sfo.metadata.generation,
            &Time(Timestamp::now()),
        );
        info!(shardfailover = %sfo.name_any(), "{}", status.message.clone().unwrap_or_default());
        ctx.event(
            sfo.as_ref(),
            false,
            Reason::Succeeded,
            EventAction::ShardFailover,
            status.message.clone().unwrap_or_default(),
        )
        .await;
        let seconds = status.start_time.as_ref().map(super::seconds_since);
        write_status(&api, &sfo, status).await?;
        ctx.metrics.operation_finished("ShardFailover", "Succeeded", seconds);
        return Ok(Action::await_change());
    }
    if let Some(failed) = status.shards.iter().find(|p| p.phase == ShardStep::Failed) {
        let prefix = format!("shard {}: ", failed.shard.clone().unwrap_or_default());
        let message = failed.message.clone().unwrap_or_default();
        // The monitor's own messages (LastPromotion) already name the shard.
        let msg = if message.starts_with(&prefix) { message } else { format!("{prefix}{message}") };
        release(&clusters, &cluster_name, &uid).await?;
        return finish_failed(&api, &sfo, status, Code::FailoverFailed, msg, &ctx).await;
    }
    if Timestamp::now() >= deadline {
        let msg = if need_lock.is_empty() {
            "the promotions did not finish before the deadline".to_owned()
        } else {
            format!("shards {} stayed locked by another operation until the deadline", need_lock.join(", "))
        };
        let code = if need_lock.is_empty() { Code::FailoverFailed } else { Code::DbBusy };
        release(&clusters, &cluster_name, &uid).await?;
        return finish_failed(&api, &sfo, status, code, msg, &ctx).await;
    }

    if !need_lock.is_empty() {
        let holder = Holder {
            force: false,
            kind: LOCK_KIND.into(),
            name: sfo.name_any(),
            namespace: sfo.namespace(),
            uid: uid.clone(),
            dead_members: sfo.spec.dead_uids.clone(),
            dead_nodes: sfo.spec.dead_nodes.clone(),
        };
        let targets: Vec<(String, String)> = status
            .shards
            .iter()
            .filter(|p| need_lock.contains(&p.shard.clone().unwrap_or_default()))
            .map(|p| (p.shard.clone().unwrap_or_default(), p.to.clone().unwrap_or_default()))
            .collect();
        match acquire(&clusters, &cluster, &holder, &targets, deadline).await? {
            Ok(()) => {
                for p in status
                    .shards
                    .iter_mut()
                    .filter(|p| need_lock.contains(&p.shard.clone().unwrap_or_default()))
                {
                    p.phase = ShardStep::Promoting;
                    p.message = Some(format!("promoting {}", p.to.clone().unwrap_or_default()));
                }
                remove_condition(&mut status.conditions, ConditionType::DatabaseBusy);
                info!(shardfailover = %sfo.name_any(), shards = ?need_lock, "locked; promotions recorded");
            }
            Err(holder) => {
                for p in status
                    .shards
                    .iter_mut()
                    .filter(|p| need_lock.contains(&p.shard.clone().unwrap_or_default()))
                {
                    p.phase = ShardStep::WaitingForLock;
                    p.message = Some(format!("waiting: {holder} holds the lock"));
                }
                set_condition(
                    &mut status.conditions,
                    ConditionType::DatabaseBusy,
                    true,
                    Reason::DatabaseBusy,
                    format!(
                        "db_busy: {holder} holds the operation lock; waiting until it frees or the deadline"
                    ),
                    sfo.metadata.generation,
                    &Time(Timestamp::now()),
                );
            }
        }
    }
    write_status(&api, &sfo, status).await?;
    // Woken by HaCluster changes while we hold its lock; the requeue is a fallback.
    Ok(Action::requeue(Duration::from_secs(1)))
}

fn plan_summary(shards: &[ShardProgress]) -> String {
    shards
        .iter()
        .map(|p| {
            format!(
                "{}: {} → {}",
                p.shard.clone().unwrap_or_default(),
                p.from,
                p.to.clone().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Seed-001 validation and the plan: one (shard, from, to) per uid.
fn validate_and_plan(
    sfo: &ShardFailover,
    clusters: &[HaCluster],
) -> Result<(String, Vec<ShardProgress>), Refusal> {
    let mut located: Vec<(String, Located)> = Vec::new();
    for uid in &sfo.spec.shard_uids {
        let mut found: Vec<Located> = clusters
            .iter()
            .filter_map(|c| {
                let st = c.status.as_ref()?;
                st.shards
                    .iter()
                    .find(|s| s.members.iter().any(|m| &m.name == uid))
                    .map(|s| Located { cluster: c.clone(), shard: s.name.clone() })
            })
            .collect();
        if found.len() > 1 {
            let names: Vec<String> = found.iter().map(|l| l.cluster.name_any()).collect();
            return Err(Refusal::new(
                Code::ShardUidAmbiguous,
                format!(
                    "shard_uid_ambiguous: {uid} is a member of several HaClusters in this namespace ({}); nothing touched — give members names unique in the namespace",
                    names.join(", ")
                ),
            ));
        }
        let Some(loc) = found.pop() else {
            return Err(Refusal::new(
                Code::ShardNotExist,
                format!("shard_not_exist: {uid} is not a member of any HaCluster in this namespace"),
            )
            .may_pass(true));
        };
        let primary = loc
            .cluster
            .status
            .as_ref()
            .and_then(|s| s.shards.iter().find(|s| s.name == loc.shard))
            .and_then(|s| s.current_primary.clone());
        if primary.as_deref() != Some(uid.as_str()) {
            let primary_unknown = primary.is_none();
            return Err(Refusal::new(
                Code::ShardIsSlave,
                format!(
                    "shard_is_slave: {uid} is a replica of shard {} (its primary is {})",
                    loc.shard,
                    primary.unwrap_or_else(|| "unknown".into())
                ),
            )
            .may_pass(primary_unknown));
        }
        located.push((uid.clone(), loc));
    }
    let names: std::collections::BTreeSet<String> =
        located.iter().map(|(_, l)| l.cluster.name_any()).collect();
    if names.len() > 1 {
        return Err(Refusal::new(
            Code::FailoverShardsDifferentBdb,
            format!(
                "failover_shards_different_bdb: the uids belong to different HaClusters ({})",
                names.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if let Some(why) = located.first().and_then(|(_, l)| l.cluster.paused_refusal()) {
        return Err(Refusal::new(Code::DbBusy, format!("db_busy: {why}")));
    }
    let mut plan = Vec::new();
    for (uid, loc) in &located {
        let facts = facts_from_status(&loc.cluster, &loc.shard, &sfo.spec.dead_nodes);
        let policy = Policy {
            automatic: loc.cluster.spec.failover.mode == FailoverMode::Automatic,
            max_lag: loc.cluster.spec.failover.max_lag_on_failover,
            ..Policy::default()
        };
        // A planned failover of a live primary drains it first, so lag is not a reason to
        // refuse here; the graceful path waits until the candidate has everything.
        let policy = Policy {
            max_lag: if sfo.spec.dead_uids.contains(uid) { policy.max_lag } else { i64::MAX },
            ..policy
        };
        match shard::elect_candidate(&facts, &policy, Some(uid)) {
            Ok(c) if &c.name != uid => plan.push(ShardProgress {
                uid: uid.clone(),
                shard: Some(loc.shard.clone()),
                from: uid.clone(),
                to: Some(c.name.clone()),
                phase: ShardStep::Planned,
                message: Some(format!("would promote {}", c.name)),
            }),
            Ok(_) | Err(_) => {
                let why = shard::elect_candidate(&facts, &policy, Some(uid))
                    .err()
                    .unwrap_or_else(|| "no other member qualifies".into());
                // Status may not show yet what the monitor sees: its observed write follows a
                // promotion (a bootstrap too) by up to a couple of seconds, so a request made
                // right after one reads members as they were before. A member shown
                // unreachable may answer in a moment: waited for briefly, not until the deadline.
                let unreachable = facts.members.iter().any(|m| m.name != *uid && !shard::is_healthy(m));
                return Err(Refusal::new(
                    Code::NoEligibleReplica,
                    format!("no_eligible_replica: shard {}: {why}", loc.shard),
                )
                .may_pass_for(unreachable.then_some(UNREACHABLE_PATIENCE)));
            }
        }
    }
    Ok((names.into_iter().next().unwrap_or_default(), plan))
}

/// Why a ShardFailover is refused.
struct Refusal {
    code: Code,
    message: String,
    /// It may pass by itself (a uid not yet a member of a bootstrapped cluster, a shard with no
    /// primary yet): waited for this long after the request's creation, or until its deadline
    /// if that comes first.
    may_pass: Option<Duration>,
}

/// How long a planned failover waits for a member shown unreachable before it is refused.
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(15);

impl Refusal {
    fn new(code: Code, message: String) -> Self {
        Self { code, message, may_pass: None }
    }
    /// Waited for until the deadline.
    fn may_pass(self, may_pass: bool) -> Self {
        self.may_pass_for(may_pass.then_some(Duration::MAX))
    }
    fn may_pass_for(self, may_pass: Option<Duration>) -> Self {
        Self { may_pass, ..self }
    }
}

/// Whether a plan read back from status is one [`validate_and_plan`] could have made: one
/// entry per uid of the spec, each from that uid, in a shard of `cluster` holding both it and
/// a `to` that may be promoted.
fn plan_fits(sfo: &ShardFailover, cluster: &HaCluster, plan: &[ShardProgress]) -> Result<(), String> {
    let uids: std::collections::BTreeSet<&String> = plan.iter().map(|p| &p.uid).collect();
    let spec: std::collections::BTreeSet<&String> = sfo.spec.shard_uids.iter().collect();
    if uids != spec || plan.len() != spec.len() {
        return Err("its uids are not spec.shardUids".into());
    }
    for p in plan {
        let shard = p.shard.as_deref().unwrap_or_default();
        let facts = facts_from_status(cluster, shard, &[]);
        let member = |n: &str| facts.members.iter().find(|m| m.name == n);
        if p.from != p.uid || member(&p.uid).is_none() {
            return Err(format!("{} is not a member of shard '{shard}' of {}", p.uid, cluster.name_any()));
        }
        match p.to.as_deref().and_then(member) {
            Some(m) if m.priority > 0 && m.name != p.uid => {}
            _ => {
                return Err(format!(
                    "candidate '{}' may not be promoted in shard '{shard}'",
                    p.to.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    Ok(())
}

async fn finish_failed(
    api: &Api<ShardFailover>,
    sfo: &ShardFailover,
    mut status: ShardFailoverStatus,
    code: Code,
    message: String,
    ctx: &Context,
) -> Result<Action, Error> {
    let reason = reason_of(code);
    status.phase = Some(Phase::Failed);
    status.error_code = Some(code);
    status.message = Some(message.clone());
    status.completion_time = Some(Time(Timestamp::now()));
    set_condition(
        &mut status.conditions,
        ConditionType::Complete,
        false,
        reason,
        message.clone(),
        sfo.metadata.generation,
        &Time(Timestamp::now()),
    );
    warn!(shardfailover = %sfo.name_any(), %message, "failed");
    ctx.event(sfo, true, reason, EventAction::ShardFailover, message).await;
    let seconds = status.start_time.as_ref().map(super::seconds_since);
    write_status(api, sfo, status).await?;
    ctx.metrics.operation_finished("ShardFailover", "Failed", seconds);
    Ok(Action::await_change())
}

/// The Complete condition's (and the Warning's) reason for an error code: the code
/// (`status.errorCode`, snake_case) in UpperCamelCase, `shard_is_slave` → `ShardIsSlave`.
fn reason_of(code: Code) -> Reason {
    match code {
        Code::ShardUidsRequired => Reason::ShardUidsRequired,
        Code::ShardNotExist => Reason::ShardNotExist,
        Code::ShardIsSlave => Reason::ShardIsSlave,
        Code::FailoverShardsDifferentBdb => Reason::FailoverShardsDifferentBdb,
        Code::ShardUidAmbiguous => Reason::ShardUidAmbiguous,
        Code::DbBusy => Reason::DbBusy,
        Code::NoEligibleReplica => Reason::NoEligibleReplica,
        Code::FailoverFailed => Reason::FailoverFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_of_an_error_code_is_the_code_in_upper_camel_case() {
        let codes = [
            Code::ShardUidsRequired,
            Code::ShardNotExist,
            Code::ShardIsSlave,
            Code::FailoverShardsDifferentBdb,
            Code::ShardUidAmbiguous,
            Code::DbBusy,
            Code::NoEligibleReplica,
            Code::FailoverFailed,
        ];
        for code in codes {
            let snake = serde_json::to_value(code).unwrap();
            let camel: String =
                snake.as_str().unwrap().split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect();
            assert_eq!(reason_of(code).as_str(), camel, "{snake}");
        }
        assert_eq!(reason_of(Code::ShardIsSlave).as_str(), "ShardIsSlave");
    }

    fn cluster(members: serde_json::Value) -> HaCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"engine": "Redis", "shards": [{"name": "main", "members": [
                {"name": "a", "endpoint": "127.0.0.1:1"},
                {"name": "b", "endpoint": "127.0.0.1:2", "priority": members["bPriority"].as_i64().unwrap_or(100)}
            ]}]},
            "status": {"shards": [{"name": "main", "currentPrimary": "a", "epoch": 1, "members": members["status"]}]}
        }))
        .unwrap()
    }

    /// Right after a bootstrap status may still show members as they were before it: a
    /// switchover made then waits a moment for a member shown unreachable, and only for that.
    #[test]
    fn a_switchover_waits_briefly_for_a_member_shown_unreachable_and_not_for_priority_zero() {
        let sfo: ShardFailover = serde_json::from_value(serde_json::json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
            "metadata": {"name": "planned", "namespace": "ns"}, "spec": {"shardUids": ["a"]}
        }))
        .unwrap();
        let stale = cluster(serde_json::json!({"status": [
            {"name": "a", "role": "Unknown", "healthy": false},
            {"name": "b", "role": "Unknown", "healthy": false}
        ]}));
        let r = validate_and_plan(&sfo, &[stale]).expect_err("refused for now");
        assert_eq!(r.code, Code::NoEligibleReplica);
        assert_eq!(r.may_pass, Some(UNREACHABLE_PATIENCE), "{}", r.message);
        let never = cluster(serde_json::json!({"bPriority": 0, "status": [
            {"name": "a", "role": "Primary", "healthy": true, "offset": 10},
            {"name": "b", "role": "Replica", "healthy": true, "offset": 10}
        ]}));
        let r = validate_and_plan(&sfo, &[never]).expect_err("refused");
        assert_eq!((r.code, r.may_pass), (Code::NoEligibleReplica, None), "{}", r.message);
        let fine = cluster(serde_json::json!({"status": [
            {"name": "a", "role": "Primary", "healthy": true, "offset": 10},
            {"name": "b", "role": "Replica", "healthy": true, "offset": 10}
        ]}));
        let (name, plan) = validate_and_plan(&sfo, std::slice::from_ref(&fine)).ok().expect("planned");
        assert_eq!((name.as_str(), plan[0].to.as_deref()), ("db", Some("b")));
        // Paused: refused at once and for good, saying how to resume.
        let mut paused = fine;
        paused.spec.paused = true;
        let r = validate_and_plan(&sfo, &[paused]).expect_err("a paused cluster switches nothing over");
        assert_eq!((r.code, r.may_pass), (Code::DbBusy, None), "{}", r.message);
        assert!(
            r.message.contains("db is paused") && r.message.contains("kubectl understudy resume db"),
            "{}",
            r.message
        );
    }
}
