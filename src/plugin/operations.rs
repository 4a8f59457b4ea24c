//! `switchover`, `failover` and `site-failover`: the plan (pure: which object, or why not),
//! the object — an ordinary resource a GitOps user could have written: named after the
//! cluster and the time, labelled, the requester recorded — created, then followed.
//!
//! `switchover` creates a ShardFailover of the shard's primary (seed 001: the operator drains
//! it and promotes the best replica). A ShardFailover cannot name the replica, so
//! `switchover --to M` creates a FailoverRequest of type Switchover with `candidate: M`
//! instead, guarded by `expectedPrimary` (the primary the plugin saw). `failover` creates a
//! FailoverRequest of type Failover.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{
    FIELD_MANAGER, FailoverArgs, PluginError, Site, SiteFailoverArgs, SwitchoverArgs,
    connect::{Requester, Target},
    follow::Followed,
    read::get_cluster,
    render::{self, REQUEST_REASON, REQUESTED_BY},
};
use crate::resources::{
    FailoverRequest, HaCluster, ProtectionGroup, ShardFailover,
    failover_request::{FailoverItem, FailoverRequestSpec, RequestType},
    hacluster::{OnTimeout, Role, ShardStatus},
    instances::CLUSTER_LABEL,
    protection_group::{ProtectionPhase, SiteRole},
    shard_failover::ShardFailoverSpec,
};

/// Label on every object the plugin creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kubectl-understudy");
/// Annotation on an object the plugin changed (rather than created): what, by whom, when.
pub const LAST_REQUEST: &str = "understudy.dev/last-request";
/// The annotation that re-asserts a ProtectionGroup's spec after `ErrorReversing`.
const RETRY_ANNOTATION: &str = crate::controllers::protection_group::RETRY_ANNOTATION;
const DRY_RUN_ANNOTATION: &str = crate::controllers::protection_group::DRY_RUN_ANNOTATION;
/// A ShardFailover's default `timeoutSeconds` (the resource's own default).
const SHARD_FAILOVER_TIMEOUT: i64 = 300;
/// `timeoutSeconds` per step of the FailoverRequests the plugin creates. The resource's own
/// default (1800 s) suits batch requests written by hand; a command someone waits on at a
/// terminal ends within minutes (seven steps, a minute each at most, plus the operator's
/// minute): a step that takes longer rolls back (onTimeout Abort) or, for `failover --force`,
/// goes ahead without fencing (onTimeout Force).
const REQUEST_STEP_TIMEOUT: i64 = 60;

/// Why a command cannot be carried out as asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The command line lacks something (exit 2).
    Usage(String),
    /// The cluster's state forbids it (exit 1).
    State(String),
}

impl From<Refusal> for PluginError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Usage(m) => PluginError::Usage(m),
            Refusal::State(m) => PluginError::Refused(m),
        }
    }
}

/// What a switchover or failover command creates.
#[derive(Debug, PartialEq)]
pub enum Operation {
    Shard(ShardFailover),
    Request(FailoverRequest),
}

/// `<cluster>-<verb>-<yyyymmdd-hhmmss>`: readable in `kubectl get`, ordered by time, a valid
/// object name however long the cluster's name is.
pub fn operation_name(cluster: &str, verb: &str, at: Timestamp) -> String {
    let suffix = format!("-{verb}-{}", at.strftime("%Y%m%d-%H%M%S"));
    let room = 253usize.saturating_sub(suffix.len());
    let head: String = cluster.chars().take(room).collect();
    format!("{}{suffix}", head.trim_end_matches(['-', '.']))
}

/// Name, labels and annotations of an object the plugin creates for `cluster`.
pub fn operation_meta(cluster: &str, verb: &str, ns: &str, who: &Requester) -> ObjectMeta {
    let mut labels = BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())]);
    // A name longer than a label value can be is simply not labelled.
    if cluster.len() <= 63 {
        labels.insert(CLUSTER_LABEL.to_owned(), cluster.to_owned());
    }
    let mut annotations = BTreeMap::from([(REQUESTED_BY.to_owned(), who.user.clone())]);
    if let Some(r) = &who.reason {
        annotations.insert(REQUEST_REASON.to_owned(), render::one_line(r));
    }
    ObjectMeta {
        name: Some(operation_name(cluster, verb, who.at)),
        namespace: Some(ns.to_owned()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}

/// The shard a command acts on: `--shard`, or the cluster's only shard.
fn choose_shard<'a>(cluster: &'a HaCluster, shard: Option<&str>) -> Result<&'a ShardStatus, Refusal> {
    let name = cluster.name_any();
    let shards = cluster.status.as_ref().map(|s| s.shards.as_slice()).unwrap_or_default();
    let names = || shards.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    match (shard, shards) {
        (_, []) => Err(Refusal::State(format!(
            "HaCluster {name} has no shard status yet: the operator has not reported on it (is it running?)"
        ))),
        (Some(want), _) => shards.iter().find(|s| s.name == want).ok_or_else(|| {
            Refusal::State(format!("HaCluster {name} has no shard {want} (shards: {})", names()))
        }),
        (None, [only]) => Ok(only),
        (None, _) => {
            Err(Refusal::Usage(format!("HaCluster {name} has shards {}: name one with --shard", names())))
        }
    }
}

fn refuse_if_paused(cluster: &HaCluster) -> Result<(), Refusal> {
    if cluster.spec.paused {
        return Err(Refusal::State(format!(
            "HaCluster {0} is paused (spec.paused): the operator changes no role while paused, so the operation would only wait for its deadline; `kubectl understudy resume {0}` first",
            cluster.name_any()
        )));
    }
    Ok(())
}

fn primary_is_healthy(shard: &ShardStatus, primary: &str) -> bool {
    shard.members.iter().any(|m| m.name == primary && m.healthy && m.role == Role::Primary)
}

/// The object a switchover creates: a ShardFailover of the shard's primary, or with `to` a
/// FailoverRequest of type Switchover naming it.
pub fn plan_switchover(
    cluster: &HaCluster,
    shard: Option<&str>,
    to: Option<&str>,
    dry_run: bool,
    who: &Requester,
) -> Result<Operation, Refusal> {
    refuse_if_paused(cluster)?;
    let name = cluster.name_any();
    let ns = cluster.namespace().unwrap_or_default();
    let s = choose_shard(cluster, shard)?;
    let Some(primary) = s.current_primary.clone() else {
        return Err(Refusal::State(format!(
            "shard {} of {name} has no primary to switch over; `kubectl understudy failover {name}` promotes a replica",
            s.name
        )));
    };
    if !primary_is_healthy(s, &primary) {
        return Err(Refusal::State(format!(
            "primary {primary} of {name}/{} is not healthy: a switchover drains a live primary; `kubectl understudy failover {name}` promotes a replica in place of a lost one",
            s.name
        )));
    }
    let meta = operation_meta(&name, "switchover", &ns, who);
    Ok(match to {
        None => Operation::Shard(ShardFailover {
            metadata: meta,
            spec: ShardFailoverSpec {
                shard_uids: vec![primary],
                dead_uids: Vec::new(),
                dead_nodes: Vec::new(),
                dry_run,
                force_rebind: false,
                timeout_seconds: SHARD_FAILOVER_TIMEOUT,
            },
            status: None,
        }),
        Some(to) => Operation::Request(FailoverRequest {
            metadata: meta,
            spec: FailoverRequestSpec {
                type_: RequestType::Switchover,
                items: vec![FailoverItem {
                    cluster: name,
                    shard: Some(s.name.clone()),
                    candidate: Some(to.to_owned()),
                    expected_primary: Some(primary),
                    service_name: None,
                }],
                timeout_seconds: REQUEST_STEP_TIMEOUT,
                on_timeout: OnTimeout::Abort,
                dry_run,
            },
            status: None,
        }),
    })
}

/// The FailoverRequest of type Failover a failover creates. A healthy primary is failed over
/// only with `force` (a switchover loses nothing); `force` also lets the promotion go ahead
/// when the old primary cannot be fenced (onTimeout: Force).
pub fn plan_failover(
    cluster: &HaCluster,
    args: &FailoverArgs,
    who: &Requester,
) -> Result<FailoverRequest, Refusal> {
    refuse_if_paused(cluster)?;
    let name = cluster.name_any();
    let s = choose_shard(cluster, args.shard.as_deref())?;
    if let Some(p) = &s.current_primary
        && primary_is_healthy(s, p)
        && !args.force
    {
        return Err(Refusal::State(format!(
            "primary {p} of {name}/{} is healthy: `kubectl understudy switchover {name}` moves it without losing writes; add --force to fail over anyway (writes not yet replicated may be lost)",
            s.name
        )));
    }
    Ok(FailoverRequest {
        metadata: operation_meta(&name, "failover", &cluster.namespace().unwrap_or_default(), who),
        spec: FailoverRequestSpec {
            type_: RequestType::Failover,
            items: vec![FailoverItem {
                cluster: name,
                shard: Some(s.name.clone()),
                candidate: args.candidate.clone(),
                expected_primary: args.expected_primary.clone().or_else(|| s.current_primary.clone()),
                service_name: None,
            }],
            timeout_seconds: REQUEST_STEP_TIMEOUT,
            on_timeout: if args.force { OnTimeout::Force } else { OnTimeout::Abort },
            dry_run: args.change.dry_run,
        },
        status: None,
    })
}

/// How long a FailoverRequest may run in all: every step to its deadline, plus the minute the
/// operator allows itself (the controller's own rule).
fn request_deadline(fr: &FailoverRequest) -> Duration {
    Duration::from_secs(fr.spec.timeout_seconds.max(1) as u64 * crate::core::dag::STEPS.len() as u64 + 60)
}

pub async fn switchover(target: &Target, args: SwitchoverArgs) -> Result<(), PluginError> {
    let change = &args.change;
    let follow_args = &change.follow;
    let cluster = get_cluster(&target.client, &target.namespace, &change.cluster).await?;
    let who = Requester::identify(&target.client, &change.request).await;
    let op = plan_switchover(&cluster, args.shard.as_deref(), args.to.as_deref(), change.dry_run, &who)?;
    let message = match op {
        Operation::Shard(sfo) => {
            let api: Api<ShardFailover> = Api::namespaced(target.client.clone(), &target.namespace);
            let sfo = create(&api, &sfo).await?;
            let name = sfo.name_any();
            println!("created ShardFailover {name}: switch over {}", sfo.spec.shard_uids.join(", "));
            if !follow_args.following() {
                return Ok(());
            }
            let own = Duration::from_secs(sfo.spec.timeout_seconds.max(1) as u64);
            Followed {
                api: &api,
                name: &name,
                what: format!("ShardFailover {name}"),
                how: format!("kubectl get shardfailover {name} -n {} -w", target.namespace),
                timeout: follow_args.deadline(own),
                progress: &render::shard_failover_progress,
                outcome: &render::shard_failover_outcome,
            }
            .to_the_end()
            .await?
        }
        Operation::Request(fr) => create_and_follow(target, fr, follow_args).await?.unwrap_or_default(),
    };
    after(target, &change.cluster, &message, follow_args.following()).await
}

pub async fn failover(target: &Target, args: FailoverArgs) -> Result<(), PluginError> {
    let change = &args.change;
    let cluster = get_cluster(&target.client, &target.namespace, &change.cluster).await?;
    let who = Requester::identify(&target.client, &change.request).await;
    let fr = plan_failover(&cluster, &args, &who)?;
    let message = create_and_follow(target, fr, &change.follow).await?.unwrap_or_default();
    after(target, &change.cluster, &message, change.follow.following()).await
}

/// Create an object under its name, or, when that name is taken (two requests in the same
/// second), under the name plus a suffix the API server draws.
async fn create<K>(api: &Api<K>, obj: &K) -> Result<K, PluginError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.create(&pp, obj).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let mut again = obj.clone();
            let name = again.meta_mut().name.take();
            again.meta_mut().generate_name = name.map(|n| format!("{n}-"));
            Ok(api.create(&pp, &again).await?)
        }
        other => Ok(other?),
    }
}

/// Create a FailoverRequest and, when asked, follow it: its message when it succeeded.
async fn create_and_follow(
    target: &Target,
    fr: FailoverRequest,
    follow_args: &super::FollowArgs,
) -> Result<Option<String>, PluginError> {
    let api: Api<FailoverRequest> = Api::namespaced(target.client.clone(), &target.namespace);
    let fr = create(&api, &fr).await?;
    let name = fr.name_any();
    println!("created FailoverRequest {name}: {}", render::one_line(&request_line(&fr)));
    if !follow_args.following() {
        return Ok(None);
    }
    Followed {
        api: &api,
        name: &name,
        what: format!("FailoverRequest {name}"),
        how: format!("kubectl get failoverrequest {name} -n {} -w", target.namespace),
        timeout: follow_args.deadline(request_deadline(&fr)),
        progress: &render::request_progress,
        outcome: &render::request_outcome,
    }
    .to_the_end()
    .await
    .map(Some)
}

fn request_line(fr: &FailoverRequest) -> String {
    let items: Vec<String> = fr
        .spec
        .items
        .iter()
        .map(|i| {
            let mut s = format!(
                "{:?} of {}/{}",
                fr.spec.type_,
                i.cluster,
                i.shard.as_deref().unwrap_or("(first shard)")
            );
            if let Some(c) = &i.candidate {
                s = format!("{s} to {c}");
            }
            if let Some(e) = &i.expected_primary {
                s = format!("{s}, expected primary {e}");
            }
            s
        })
        .collect();
    let dry = if fr.spec.dry_run { " (dry run)" } else { "" };
    format!("{}{dry}", items.join("; "))
}

/// After a followed operation succeeded: its message and who is primary now.
async fn after(target: &Target, cluster: &str, message: &str, followed: bool) -> Result<(), PluginError> {
    if !followed {
        return Ok(());
    }
    println!("succeeded: {message}");
    let c = get_cluster(&target.client, &target.namespace, cluster).await?;
    for s in c.status.iter().flat_map(|s| &s.shards) {
        println!(
            "{cluster}/{}: primary {} (epoch {})",
            s.name,
            s.current_primary.as_deref().unwrap_or("none"),
            s.epoch
        );
    }
    Ok(())
}

/// What site-failover does with a group.
#[derive(Debug, PartialEq, Eq)]
pub enum SiteMove {
    /// Change spec.prioritySite.
    Request,
    /// spec.prioritySite already names the site and the group is in ErrorReversing: re-assert
    /// it (the retry annotation).
    Retry,
    /// The site is production already.
    AlreadyThere,
    /// Already asked for and under way: follow it.
    UnderWay,
}

pub fn plan_site_failover(pg: &ProtectionGroup, to: SiteRole, force: bool) -> Result<SiteMove, Refusal> {
    let name = pg.name_any();
    if pg.spec.pairs.is_empty() {
        return Err(Refusal::State(format!(
            "ProtectionGroup {name} has no replication pairs: nothing to move"
        )));
    }
    let st = pg.status.clone().unwrap_or_default();
    let authorised = pg.spec.forced_failover.as_ref().is_some_and(|f| f.to == to);
    if force {
        return Ok(match st.phase {
            Some(ProtectionPhase::Protected | ProtectionPhase::FailedOver)
                if st.production_site == Some(to) =>
            {
                SiteMove::AlreadyThere
            }
            _ if pg.spec.priority_site == to && authorised => SiteMove::UnderWay,
            _ => SiteMove::Request,
        });
    }
    if pg.spec.priority_site != to {
        return Ok(SiteMove::Request);
    }
    Ok(match st.phase {
        Some(ProtectionPhase::ErrorReversing) => SiteMove::Retry,
        Some(ProtectionPhase::Protected) if st.production_site == Some(to) => SiteMove::AlreadyThere,
        _ => SiteMove::UnderWay,
    })
}

pub async fn site_failover(target: &Target, args: SiteFailoverArgs) -> Result<(), PluginError> {
    let api: Api<ProtectionGroup> = Api::namespaced(target.client.clone(), &target.namespace);
    let name = args.group.clone();
    let pg = api.get_opt(&name).await?.ok_or_else(|| {
        PluginError::Refused(format!("ProtectionGroup {name} not found in namespace {}", target.namespace))
    })?;
    let to = match args.to {
        Site::Source => SiteRole::Source,
        Site::Target => SiteRole::Target,
    };
    if args.dry_run {
        return site_failover_dry_run(&api, &name, to, args.force).await;
    }
    let reason = match (&args.request.reason, args.force) {
        (Some(r), true) if !r.trim().is_empty() => Some(r.clone()),
        (_, true) => {
            return Err(PluginError::Usage(
                "a forced site failover needs --reason: it is recorded in the group's spec.forcedFailover and status".into(),
            ));
        }
        _ => None,
    };
    let plan = plan_site_failover(&pg, to, args.force)?;
    let who = Requester::identify(&target.client, &args.request).await;
    let before = pg.status.as_ref().and_then(|s| s.job_id.clone());
    let note = format!("site-failover to {} by {}", to.as_str(), who.describe());
    let patch = match plan {
        SiteMove::AlreadyThere => {
            println!("ProtectionGroup {name}: the {} site is production already; nothing to do", to.as_str());
            return Ok(());
        }
        SiteMove::UnderWay => None,
        SiteMove::Request => Some(match &reason {
            None => json!({
                "metadata": {"annotations": {LAST_REQUEST: note}},
                "spec": {"prioritySite": to.as_str()}
            }),
            Some(why) => json!({
                "metadata": {"annotations": {LAST_REQUEST: note}},
                "spec": {"prioritySite": to.as_str(), "forcedFailover": {"to": to.as_str(), "reason": why}}
            }),
        }),
        SiteMove::Retry => Some(json!({
            "metadata": {"annotations": {LAST_REQUEST: note, RETRY_ANNOTATION: render::rfc3339(&Time(who.at))}}
        })),
    };
    if let Some(patch) = patch {
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        api.patch(&name, &pp, &Patch::Merge(&patch)).await?;
        match plan {
            _ if reason.is_some() => {
                println!(
                    "ProtectionGroup {name}: spec.prioritySite set to {} with spec.forcedFailover (a forced failover where the other site does not answer)",
                    to.as_str()
                );
                eprintln!(
                    "warning: spec.prioritySite and spec.forcedFailover are part of the ProtectionGroup's manifest: change the manifest too, or a GitOps tool applying it sets them back"
                );
            }
            SiteMove::Retry => println!(
                "ProtectionGroup {name}: re-asserting the move to the {} site (annotation {RETRY_ANNOTATION})",
                to.as_str()
            ),
            _ => {
                println!(
                    "ProtectionGroup {name}: spec.prioritySite set to {} (a planned failover)",
                    to.as_str()
                );
                eprintln!(
                    "warning: spec.prioritySite is part of the ProtectionGroup's manifest: a GitOps tool applying the manifest will set it back unless the manifest is changed too"
                );
            }
        }
    } else {
        println!(
            "ProtectionGroup {name}: a move to the {} site was already asked for; following it",
            to.as_str()
        );
    }
    if !args.follow.following() {
        return Ok(());
    }
    let own = Duration::from_secs(pg.spec.timeout_seconds.max(5) as u64);
    let outcome_of = |g: &ProtectionGroup| render::site_failover_outcome(g, to, before.as_deref());
    let message = Followed {
        api: &api,
        name: &name,
        what: format!(
            "the {} failover of ProtectionGroup {name}",
            if args.force { "forced" } else { "planned" }
        ),
        how: format!("kubectl get protectiongroup {name} -n {} -w", target.namespace),
        timeout: args.follow.deadline(own),
        progress: &render::site_failover_progress,
        outcome: &outcome_of,
    }
    .to_the_end()
    .await?;
    println!("succeeded: {message}");
    Ok(())
}

/// Ask the operator for a dry run (annotation [`DRY_RUN_ANNOTATION`]) and print its answer.
async fn site_failover_dry_run(
    api: &Api<ProtectionGroup>,
    name: &str,
    to: SiteRole,
    force: bool,
) -> Result<(), PluginError> {
    let ask = format!(
        "{}{}@{}",
        to.as_str(),
        if force { "/Forced" } else { "" },
        Timestamp::now().as_millisecond()
    );
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.patch(name, &pp, &Patch::Merge(json!({"metadata": {"annotations": {DRY_RUN_ANNOTATION: ask}}})))
        .await?;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let g = api.get(name).await?;
        if let Some(r) = g.status.and_then(|s| s.dry_run).filter(|r| r.request == ask) {
            println!(
                "dry run of a {} failover of ProtectionGroup {name} to the {} site: {}; nothing was changed",
                if r.forced { "forced" } else { "planned" },
                r.to.as_str(),
                if r.possible { "possible now" } else { "not possible now" }
            );
            for b in &r.blockers {
                println!("  blocked: {b}");
            }
            for (i, s) in r.steps.iter().enumerate() {
                println!("  {}. {s}", i + 1);
            }
            for p in &r.pairs {
                println!(
                    "  pair {}/{}: {}{}{}",
                    p.source,
                    p.target,
                    p.state,
                    p.lag.map(|l| format!(", lag {l} bytes")).unwrap_or_default(),
                    p.message.as_ref().map(|m| format!(" — {m}")).unwrap_or_default()
                );
            }
            return if r.possible {
                Ok(())
            } else {
                Err(PluginError::Refused(format!("not possible now: {}", r.blockers.join("; "))))
            };
        }
        if std::time::Instant::now() > until {
            return Err(PluginError::TimedOut {
                what: format!("the dry run of ProtectionGroup {name}"),
                waited: "30s".into(),
                how: format!("kubectl get protectiongroup {name} -o jsonpath='{{.status.dryRun}}'"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn who() -> Requester {
        Requester {
            user: "alice".into(),
            reason: Some("kernel\nupgrade".into()),
            at: "2026-12-05T03:15:02Z".parse().unwrap(),
        }
    }

    fn cluster(paused: bool, shards: serde_json::Value) -> HaCluster {
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"engine": "Redis", "paused": paused, "shards": [{"name": "main", "members": [
                {"name": "a", "endpoint": "10.0.0.1:6379"}, {"name": "b", "endpoint": "10.0.0.2:6379"}]}]},
            "status": {"shards": shards}
        }))
        .unwrap()
    }

    fn one_shard(primary_healthy: bool) -> serde_json::Value {
        json!([{"name": "main", "currentPrimary": "a", "epoch": 2, "members": [
            {"name": "a", "role": "Primary", "healthy": primary_healthy},
            {"name": "b", "role": "Replica", "healthy": true}]}])
    }

    #[test]
    fn names_carry_the_cluster_the_verb_and_the_time() {
        let at = who().at;
        assert_eq!(operation_name("orders", "switchover", at), "orders-switchover-20261205-031502");
        let long = "x".repeat(300);
        let n = operation_name(&long, "failover", at);
        assert_eq!(n.len(), 253);
        assert!(n.ends_with("-failover-20261205-031502"));
        let meta = operation_meta(&long, "failover", "shop", &who());
        assert!(!meta.labels.unwrap().contains_key(CLUSTER_LABEL), "too long for a label value");
    }

    #[test]
    fn a_switchover_is_a_shard_failover_of_the_primary_labelled_and_attributed() {
        let op = plan_switchover(&cluster(false, one_shard(true)), None, None, false, &who()).unwrap();
        let Operation::Shard(sfo) = op else { panic!("a ShardFailover") };
        assert_eq!(sfo.spec.shard_uids, ["a"]);
        assert_eq!(sfo.spec.timeout_seconds, 300);
        assert_eq!(sfo.metadata.name.as_deref(), Some("orders-switchover-20261205-031502"));
        assert_eq!(sfo.metadata.namespace.as_deref(), Some("shop"));
        let labels = sfo.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get("app.kubernetes.io/managed-by").map(String::as_str),
            Some("kubectl-understudy")
        );
        assert_eq!(labels.get(CLUSTER_LABEL).map(String::as_str), Some("orders"));
        let annotations = sfo.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.get(REQUESTED_BY).map(String::as_str), Some("alice"));
        assert_eq!(annotations.get(REQUEST_REASON).map(String::as_str), Some("kernel upgrade"));
        // What a GitOps user would have written: it reads back as the same object.
        let yaml = serde_yaml::to_string(&sfo).unwrap();
        assert!(yaml.contains("kind: ShardFailover") && yaml.contains("shardUids:"), "{yaml}");
    }

    #[test]
    fn a_switchover_to_a_member_is_a_guarded_request() {
        let op = plan_switchover(&cluster(false, one_shard(true)), None, Some("b"), true, &who()).unwrap();
        let Operation::Request(fr) = op else { panic!("a FailoverRequest") };
        assert_eq!(fr.spec.type_, RequestType::Switchover);
        assert!(fr.spec.dry_run);
        let item = &fr.spec.items[0];
        assert_eq!(
            (
                item.cluster.as_str(),
                item.shard.as_deref(),
                item.candidate.as_deref(),
                item.expected_primary.as_deref()
            ),
            ("orders", Some("main"), Some("b"), Some("a"))
        );
        assert_eq!(request_deadline(&fr), Duration::from_secs(60 * 7 + 60));
    }

    #[test]
    fn switchovers_are_refused_with_the_reason_and_what_to_do() {
        let r = plan_switchover(&cluster(true, one_shard(true)), None, None, false, &who()).unwrap_err();
        assert!(
            matches!(&r, Refusal::State(m) if m.contains("is paused") && m.contains("kubectl understudy resume orders")),
            "{r:?}"
        );
        let r = plan_switchover(&cluster(false, one_shard(false)), None, None, false, &who()).unwrap_err();
        assert!(
            matches!(&r, Refusal::State(m) if m.contains("not healthy") && m.contains("failover orders")),
            "{r:?}"
        );
        let r = plan_switchover(&cluster(false, one_shard(true)), Some("other"), None, false, &who())
            .unwrap_err();
        assert_eq!(r, Refusal::State("HaCluster orders has no shard other (shards: main)".into()));
        let two = json!([{"name": "s0", "currentPrimary": "a"}, {"name": "s1", "currentPrimary": "b"}]);
        let r = plan_switchover(&cluster(false, two), None, None, false, &who()).unwrap_err();
        assert_eq!(r, Refusal::Usage("HaCluster orders has shards s0, s1: name one with --shard".into()));
        let r = plan_switchover(&cluster(false, json!([])), None, None, false, &who()).unwrap_err();
        assert!(matches!(&r, Refusal::State(m) if m.contains("has not reported")), "{r:?}");
    }

    fn failover_args(extra: &[&str]) -> FailoverArgs {
        use clap::Parser as _;
        let cli = super::super::Cli::try_parse_from(
            ["kubectl-understudy", "failover", "orders"].iter().chain(extra.iter()).copied(),
        )
        .unwrap();
        match cli.command {
            super::super::Command::Failover(f) => f,
            _ => panic!("failover"),
        }
    }

    #[test]
    fn a_failover_of_a_healthy_primary_needs_force() {
        let c = cluster(false, one_shard(true));
        let r = plan_failover(&c, &failover_args(&[]), &who()).unwrap_err();
        assert!(
            matches!(&r, Refusal::State(m) if m.contains("is healthy") && m.contains("--force")),
            "{r:?}"
        );
        let fr = plan_failover(&c, &failover_args(&["--force", "--candidate", "b"]), &who()).unwrap();
        assert_eq!(fr.spec.type_, RequestType::Failover);
        assert_eq!(fr.spec.on_timeout, OnTimeout::Force);
        assert_eq!(fr.spec.items[0].candidate.as_deref(), Some("b"));
        assert_eq!(fr.spec.items[0].expected_primary.as_deref(), Some("a"), "guarded by the primary seen");
        let lost = cluster(false, one_shard(false));
        let fr = plan_failover(&lost, &failover_args(&["--expected-primary", "zz"]), &who()).unwrap();
        assert_eq!(fr.spec.on_timeout, OnTimeout::Abort);
        assert_eq!(fr.spec.items[0].expected_primary.as_deref(), Some("zz"));
        assert_eq!(fr.metadata.name.as_deref(), Some("orders-failover-20261205-031502"));
    }

    fn group(priority: &str, status: serde_json::Value, pairs: bool) -> ProtectionGroup {
        let pairs = if pairs { json!([{"source": "orders", "target": "orders-dr"}]) } else { json!([]) };
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup",
            "metadata": {"name": "dr", "namespace": "shop"},
            "spec": {"sites": {"source": {"namespace": "shop"}, "target": {"namespace": "shop-dr"}},
                     "pairs": pairs, "prioritySite": priority},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_site_failover_changes_the_priority_retries_or_says_there_is_nothing_to_do() {
        let protected = json!({"phase": "Protected", "productionSite": "Source"});
        let g = group("Source", protected.clone(), true);
        assert_eq!(plan_site_failover(&g, SiteRole::Target, false), Ok(SiteMove::Request));
        assert_eq!(plan_site_failover(&g, SiteRole::Source, false), Ok(SiteMove::AlreadyThere));
        let failed = group("Target", json!({"phase": "ErrorReversing", "productionSite": "Source"}), true);
        assert_eq!(plan_site_failover(&failed, SiteRole::Target, false), Ok(SiteMove::Retry));
        let moving = group("Target", json!({"phase": "FailingOver", "productionSite": "Source"}), true);
        assert_eq!(plan_site_failover(&moving, SiteRole::Target, false), Ok(SiteMove::UnderWay));
        assert!(matches!(plan_site_failover(&g, SiteRole::Target, true), Ok(SiteMove::Request)));
        let empty = group("Source", protected, false);
        assert!(
            matches!(plan_site_failover(&empty, SiteRole::Target, false), Err(Refusal::State(m)) if m.contains("no replication pairs"))
        );
    }
}
