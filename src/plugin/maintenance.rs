//! `pause`, `resume` and `restart`: a merge patch of one spec field of the HaCluster, then
//! waiting until the operator has taken it up.
//!
//! Pause is `spec.paused`, not `spec.failover.mode: Manual`. Patroni's pause is a maintenance
//! mode: Patroni stops changing the cluster (no automatic failover, a second primary is not
//! demoted) while it keeps observing and updating its state; `spec.paused` is exactly that
//! ("observe and report, never change a role"; the operator reports `Paused=True`). Manual
//! mode is a policy, not maintenance: the operator still demotes a returning old primary and
//! keeps self-fencing in step, and only an unplanned failover waits for a request.
//! Unlike Patroni, a paused cluster carries out no switchover either, so the plugin refuses
//! switchovers and failovers of a paused cluster instead of creating requests that would wait
//! for their deadline.
//!
//! These fields belong to the cluster's manifest: a GitOps tool that applies it sets them
//! back unless the manifest changes too. Every command says so.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    ClusterChange, FIELD_MANAGER, PluginError,
    connect::{Requester, Target},
    follow::Followed,
    operations::LAST_REQUEST,
    read::get_cluster,
    render::{self, Outcome},
};
use crate::{
    core::vocabulary::{ConditionType, Reason},
    resources::{HaCluster, shared::condition},
};

/// Annotation naming who paused the cluster, when and why; removed by `resume`.
pub const PAUSED_BY: &str = "understudy.dev/paused-by";
/// The pod annotation that asks for an ordered restart of the members the operator runs.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// How long the operator gets to report a spec change it took up, unless `--timeout`.
const ACKNOWLEDGE: Duration = Duration::from_secs(30);
/// How long a restart is followed, unless `--timeout`: members restart one at a time, each
/// waiting for its pod to be ready and caught up.
const ROLL: Duration = Duration::from_secs(15 * 60);

/// The merge patch that pauses or resumes a cluster.
pub fn pause_patch(paused: bool, who: &Requester) -> serde_json::Value {
    let verb = if paused { "pause" } else { "resume" };
    json!({
        "metadata": {"annotations": {
            PAUSED_BY: if paused { json!(who.describe()) } else { json!(null) },
            LAST_REQUEST: format!("{verb} by {}", who.describe()),
        }},
        "spec": {"paused": paused}
    })
}

/// Whether the operator reports the cluster as paused (or not) for the given generation.
pub fn pause_reported(cluster: &HaCluster, paused: bool, generation: Option<i64>) -> Option<Outcome> {
    let st = cluster.status.as_ref()?;
    let c = condition(&st.conditions, ConditionType::Paused)?;
    let current = c.observed_generation >= generation;
    (current && (c.status == "True") == paused).then(|| {
        Outcome::Succeeded(format!("Paused={} {}: {}", c.status, c.reason, render::one_line(&c.message)))
    })
}

fn pause_progress(cluster: &HaCluster) -> Vec<(String, String)> {
    let st = cluster.status.clone().unwrap_or_default();
    match condition(&st.conditions, ConditionType::Paused) {
        Some(c) => vec![(
            "paused".into(),
            format!(
                "operator reports Paused={} (generation {})",
                c.status,
                c.observed_generation.unwrap_or(0)
            ),
        )],
        None => vec![("paused".into(), "the operator has not reported a Paused condition yet".into())],
    }
}

pub async fn set_paused(target: &Target, args: ClusterChange, paused: bool) -> Result<(), PluginError> {
    let api: Api<HaCluster> = Api::namespaced(target.client.clone(), &target.namespace);
    let name = args.cluster.clone();
    let cluster = get_cluster(&target.client, &target.namespace, &name).await?;
    let verb = if paused { "paused" } else { "resumed" };
    if cluster.spec.paused == paused && !args.dry_run {
        println!("HaCluster {name} is {verb} already (spec.paused: {paused}); nothing changed");
        return Ok(());
    }
    let who = Requester::identify(&target.client, &args.request).await;
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        dry_run: args.dry_run,
        ..Default::default()
    };
    let patched = api.patch(&name, &pp, &Patch::Merge(pause_patch(paused, &who))).await?;
    if args.dry_run {
        println!(
            "dry run: the API server accepts spec.paused: {paused} for HaCluster {name}; nothing was changed"
        );
        return Ok(());
    }
    if paused {
        println!(
            "HaCluster {name} paused (spec.paused: true): the operator keeps observing and reporting, and changes no role — no automatic failover, no switchover, a returning old primary is not demoted"
        );
    } else {
        println!("HaCluster {name} resumed (spec.paused: false): the operator acts on failures again");
    }
    gitops_warning("spec.paused");
    if !args.follow.following() {
        return Ok(());
    }
    let generation = patched.metadata.generation;
    let outcome = |c: &HaCluster| pause_reported(c, paused, generation);
    let reported = Followed {
        api: &api,
        name: &name,
        what: format!("the {} of HaCluster {name}", if paused { "pause" } else { "resume" }),
        how: format!("kubectl understudy status {name} -n {}", target.namespace),
        timeout: args.follow.timeout.map_or(ACKNOWLEDGE, Duration::from),
        progress: &pause_progress,
        outcome: &outcome,
    }
    .to_the_end()
    .await?;
    println!("{reported}");
    Ok(())
}

/// The merge patch that asks for an ordered restart: a new value of the members' pod
/// annotation `kubectl.kubernetes.io/restartedAt` (documented on spec.instances.pod), which
/// changes the members' revision.
pub fn restart_patch(who: &Requester) -> serde_json::Value {
    json!({
        "metadata": {"annotations": {LAST_REQUEST: format!("restart by {}", who.describe())}},
        "spec": {"instances": {"pod": {"annotations": {RESTARTED_AT: render::rfc3339(&Time(who.at))}}}}
    })
}

/// Where a restart asked when the members ran revision `before` stands: not taken up yet
/// (the revision did not change), rolling, done (every member ready at the new revision and
/// `Progressing=False UpToDate`), or stopped (`Progressing=False` with another reason, such
/// as an image that does not start).
pub fn restart_outcome(cluster: &HaCluster, before: Option<&str>) -> Option<Outcome> {
    let now = revision(cluster)?;
    if Some(now.as_str()) == before {
        return None;
    }
    let st = cluster.status.as_ref()?;
    let p = condition(&st.conditions, ConditionType::Progressing)?;
    if p.status != "False" {
        return None;
    }
    let members = cluster.spec.instances.as_ref().map_or(0, |i| i.members);
    let ready = st.instances.as_ref().map_or(0, |i| i.updated_ready);
    if p.reason == Reason::UpToDate.as_str() {
        (ready >= members).then(|| {
            Outcome::Succeeded(format!("restarted: {ready} of {members} members ready at revision {now}"))
        })
    } else {
        Some(Outcome::Failed(format!(
            "the restart stopped at {ready} of {members} members: {}: {}",
            p.reason,
            render::one_line(&p.message)
        )))
    }
}

/// The revision of the members the operator records (status.instances.revision).
fn revision(cluster: &HaCluster) -> Option<String> {
    cluster.status.as_ref()?.instances.as_ref()?.revision.clone()
}

pub async fn restart(target: &Target, args: ClusterChange) -> Result<(), PluginError> {
    let api: Api<HaCluster> = Api::namespaced(target.client.clone(), &target.namespace);
    let name = args.cluster.clone();
    let cluster = get_cluster(&target.client, &target.namespace, &name).await?;
    if cluster.spec.instances.is_none() {
        return Err(PluginError::Refused(format!(
            "HaCluster {name} has no spec.instances: its members run outside the operator (static members or your own pods); restart them with what runs them — the operator moves the primary off a member that stops"
        )));
    }
    let who = Requester::identify(&target.client, &args.request).await;
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        dry_run: args.dry_run,
        ..Default::default()
    };
    api.patch(&name, &pp, &Patch::Merge(restart_patch(&who))).await?;
    if args.dry_run {
        println!("dry run: the API server accepts the restart of HaCluster {name}; nothing was changed");
        return Ok(());
    }
    println!(
        "HaCluster {name}: restart requested ({RESTARTED_AT} in spec.instances.pod.annotations): the operator restarts the members one at a time, replicas first, then moves the primary with a switchover and restarts the old primary"
    );
    gitops_warning("spec.instances.pod.annotations");
    if !args.follow.following() {
        return Ok(());
    }
    let before = revision(&cluster);
    let outcome = |c: &HaCluster| restart_outcome(c, before.as_deref());
    let progress = |c: &HaCluster| {
        let st = c.status.clone().unwrap_or_default();
        condition(&st.conditions, ConditionType::Progressing)
            .map(|p| {
                vec![(
                    "progressing".into(),
                    format!("Progressing={} {}: {}", p.status, p.reason, render::one_line(&p.message)),
                )]
            })
            .unwrap_or_default()
    };
    let taken_up = Followed {
        api: &api,
        name: &name,
        what: format!("the restart of HaCluster {name}"),
        how: format!("kubectl understudy status {name} -n {}", target.namespace),
        timeout: args.follow.timeout.map_or(ROLL, Duration::from),
        progress: &progress,
        outcome: &outcome,
    }
    .to_the_end()
    .await?;
    println!("{taken_up}");
    Ok(())
}

fn gitops_warning(field: &str) {
    eprintln!(
        "warning: {field} is part of the HaCluster's manifest: a GitOps tool (Argo CD, Flux) applying the manifest will set it back unless the manifest is changed too"
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn who() -> Requester {
        Requester { user: "alice".into(), reason: None, at: "2026-12-05T03:15:02Z".parse().unwrap() }
    }

    #[test]
    fn pause_and_resume_patch_one_field_and_say_who() {
        let p = pause_patch(true, &who());
        assert_eq!(p["spec"], json!({"paused": true}));
        assert_eq!(p["metadata"]["annotations"][PAUSED_BY], "alice at 2026-12-05T03:15:02Z");
        let r = pause_patch(false, &who());
        assert_eq!(r["spec"], json!({"paused": false}));
        assert!(r["metadata"]["annotations"][PAUSED_BY].is_null(), "resume removes the annotation");
        assert_eq!(r["metadata"]["annotations"][LAST_REQUEST], "resume by alice at 2026-12-05T03:15:02Z");
    }

    #[test]
    fn a_restart_sets_the_documented_pod_annotation() {
        let p = restart_patch(&who());
        assert_eq!(p["spec"]["instances"]["pod"]["annotations"][RESTARTED_AT], "2026-12-05T03:15:02Z");
    }

    #[test]
    fn a_restart_is_followed_to_the_end_of_the_roll() {
        let c = |revision: &str, ready: i32, progressing: Option<(&str, &str)>| -> HaCluster {
            let conditions: Vec<_> = progressing
                .map(|(status, reason)| {
                    json!({"type": "Progressing", "status": status, "reason": reason, "message": "m",
                        "lastTransitionTime": "2026-12-05T03:15:02Z"})
                })
                .into_iter()
                .collect();
            serde_json::from_value(json!({
                "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
                "metadata": {"name": "orders"},
                "spec": {"engine": "Redis", "instances": {"members": 3, "image": "redis:7"}},
                "status": {"instances": {"revision": revision, "updatedReady": ready}, "conditions": conditions}
            }))
            .unwrap()
        };
        let before = Some("r1");
        // Not taken up yet: the old revision's UpToDate says nothing about this restart.
        assert_eq!(restart_outcome(&c("r1", 3, Some(("False", "UpToDate"))), before), None);
        assert_eq!(restart_outcome(&c("r2", 1, Some(("True", "Restarting"))), before), None);
        // The new revision recorded before any member runs it: not done although UpToDate.
        assert_eq!(restart_outcome(&c("r2", 2, Some(("False", "UpToDate"))), before), None);
        assert_eq!(restart_outcome(&c("r2", 2, None), before), None);
        assert_eq!(
            restart_outcome(&c("r2", 3, Some(("False", "UpToDate"))), before),
            Some(Outcome::Succeeded("restarted: 3 of 3 members ready at revision r2".into()))
        );
        assert_eq!(
            restart_outcome(&c("r2", 1, Some(("False", "ImageNotStarting"))), before),
            Some(Outcome::Failed("the restart stopped at 1 of 3 members: ImageNotStarting: m".into()))
        );
    }

    #[test]
    fn pause_counts_only_when_reported_for_the_new_generation() {
        let c = |status: &str, generation: i64| -> HaCluster {
            serde_json::from_value(json!({
                "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
                "metadata": {"name": "orders"},
                "spec": {"engine": "Redis", "shards": [{"name": "main", "members": [{"name": "a", "endpoint": "h:1"}]}]},
                "status": {"conditions": [{"type": "Paused", "status": status, "reason": "Paused",
                    "message": "spec.paused: observing only, never acting", "observedGeneration": generation,
                    "lastTransitionTime": "2026-12-05T03:15:02Z"}]}
            }))
            .unwrap()
        };
        assert_eq!(pause_reported(&c("False", 3), true, Some(4)), None);
        assert_eq!(pause_reported(&c("True", 3), true, Some(4)), None, "an older generation's report");
        assert_eq!(
            pause_reported(&c("True", 4), true, Some(4)),
            Some(Outcome::Succeeded("Paused=True Paused: spec.paused: observing only, never acting".into()))
        );
        assert_eq!(pause_reported(&c("True", 5), false, Some(5)), None);
    }
}
