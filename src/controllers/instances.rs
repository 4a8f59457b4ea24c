//! Members the operator runs (`spec.instances`): the Pods, PersistentVolumeClaims, the
//! PodDisruptionBudget and the switchovers of a roll, owned by the HaCluster.
//!
//! Each reconcile gathers what exists (pods, volumes, the monitor's view of the roles in
//! status, this cluster's switchover requests), asks [`core::instances::next_step`] for the
//! one step that comes next, carries it out and records the outcome in `status.instances`
//! and the `Progressing` condition (server-side apply under its own field manager; the
//! monitor owns the roles). Roles stay the monitor's: a new member starts as a replica of
//! nothing and the monitor attaches it; a primary is moved by a ShardFailover, the same
//! audited zero-loss path a user takes.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::{
    api::{
        core::v1::{
            Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, Lifecycle,
            LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodAntiAffinity, PodSpec, Probe,
            SecretKeySelector, SleepAction, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
            WeightedPodAffinityTerm,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt as _,
        controller::Action,
        reflector::{self, Store},
        watcher::{self, watcher},
    },
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::{Context, OpError, key};
use crate::{
    core::{
        instances::{
            Facts, MemberView, PodView, RebuildAsk, RebuildView, Resize, Step, SwitchoverState, next_step,
        },
        vocabulary::{Action as EventAction, ConditionType, Reason},
    },
    engines::Setting,
    resources::{
        HaCluster, ShardFailover,
        hacluster::{Engine, Role},
        instances::{
            CLUSTER_LABEL, DATA_DIR, Instances, InstancesStatus, ORDINAL_LABEL, REBUILD_ANNOTATION,
            REVISION_ANNOTATION, RebuildStatus, Retention,
        },
        shard_failover::{ShardFailoverPhase, ShardFailoverSpec},
        shared::set_condition,
    },
};

/// The field manager of `status.instances`, the `Progressing` condition and owned objects.
pub const MANAGER: &str = "understudy-instances";
/// Label of a switchover request: the revision whose roll asked for it.
const REVISION_LABEL: &str = "understudy.dev/revision";
/// Longest cluster name whose members' names stay valid hostnames and label values.
const MAX_NAME: usize = 55;
/// A member pod's grace period unless `spec.instances.pod` says otherwise.
const DEFAULT_GRACE_SECS: i64 = 10;
/// The engine's container in a member's pod.
const CONTAINER: &str = "engine";
/// Environment variable holding the password inside a member's container.
const PASSWORD_ENV: &str = "UNDERSTUDY_PASSWORD";
/// Environment variable holding the Secret's `username` (Mysql members' entrypoint).
const USER_ENV: &str = "UNDERSTUDY_USER";

type Guarded = DeserializeGuard<HaCluster>;

struct State {
    ctx: Context,
    /// PodDisruptionBudgets known to exist, by cluster uid.
    budgets: Mutex<HashSet<String>>,
    /// What the controller's watches of owned objects hold, one set per watched scope: read
    /// by every reconcile instead of listing them (a switchover triggers several reconciles,
    /// and their lists competed with the promotion's writes while clients waited).
    caches: Vec<Caches>,
}

struct Caches {
    pods: Store<Pod>,
    pvcs: Store<PersistentVolumeClaim>,
    requests: Store<DeserializeGuard<ShardFailover>>,
}

impl State {
    /// Once every cache has its first full list (a reconcile before that would see members
    /// missing and create them again).
    async fn caches_ready(&self) -> bool {
        for c in &self.caches {
            let ready = futures::future::join3(
                c.pods.wait_until_ready(),
                c.pvcs.wait_until_ready(),
                c.requests.wait_until_ready(),
            );
            if tokio::time::timeout(Duration::from_secs(5), ready).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Run the instances controller in every watched scope.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let mut controllers = Vec::new();
    let mut caches = Vec::new();
    for api in ctx.scopes::<Guarded>() {
        // Switchovers are read through a guard: a malformed one is skipped, not a stalled watch.
        let scoped = |ns: Option<&str>| -> (Api<Pod>, Api<PersistentVolumeClaim>, Api<DeserializeGuard<ShardFailover>>) {
            match ns {
                Some(ns) => (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                ),
                None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
            }
        };
        let (pods, pvcs, requests) = scoped(api.namespace());
        let owned = watcher::Config::default().labels(CLUSTER_LABEL).any_semantic();
        let (pod_store, pod_writer) = reflector::store();
        let (pvc_store, pvc_writer) = reflector::store();
        let (request_store, request_writer) = reflector::store();
        let controller = Controller::new(api, watcher::Config::default().any_semantic());
        ctx.readiness.track(controller.store());
        let controller = controller
            .owns_stream(watcher(pods, owned.clone()).default_backoff().reflect(pod_writer).touched_objects())
            .owns_stream(watcher(pvcs, owned.clone()).default_backoff().reflect(pvc_writer).touched_objects())
            .owns_stream(
                watcher(requests, owned).default_backoff().reflect(request_writer).touched_objects(),
            );
        caches.push(Caches { pods: pod_store, pvcs: pvc_store, requests: request_store });
        controllers.push(controller);
    }
    let state = Arc::new(State { ctx: ctx.clone(), budgets: Mutex::default(), caches });
    let mut runs = Vec::new();
    for controller in controllers {
        let run = controller.run(reconcile, error_policy, state.clone()).for_each(|r| async move {
            if let Err(e) = r {
                debug!(error = %e, "instances reconcile");
            }
        });
        runs.push(run.boxed());
    }
    let (_, which, _) = futures::future::select_all(runs).await;
    anyhow::bail!("the instances controller's stream {which} ended")
}

fn error_policy(_: Arc<Guarded>, err: &OpError, _: Arc<State>) -> Action {
    warn!(error = %err, "instances reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// A panic would unwind through the controller's stream and end the process, and on restart
/// do it again: one cluster would stop the operator for every other.
async fn reconcile(guarded: Arc<Guarded>, state: Arc<State>) -> Result<Action, OpError> {
    std::panic::AssertUnwindSafe(reconcile_one(guarded, state))
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(OpError::Panic(super::panic_message(p.as_ref()))))
}

async fn reconcile_one(guarded: Arc<Guarded>, state: Arc<State>) -> Result<Action, OpError> {
    let Ok(cluster) = &guarded.0 else { return Ok(Action::await_change()) };
    let ctx = &state.ctx;
    let finalized = cluster.finalizers().iter().any(|f| f == FINALIZER);
    if cluster.metadata.deletion_timestamp.is_some() || cluster.spec.instances.is_none() {
        // Owner references take the pods and the budget; the volumes go or stay as
        // whenDeleted says *now* (the finalizer holds the deletion until they do).
        if !finalized {
            return Ok(Action::await_change());
        }
        if !state.caches_ready().await {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        return release_volumes(&state, cluster).await;
    }
    let Some(instances) = &cluster.spec.instances else { return Ok(Action::await_change()) };
    if !finalized {
        // Before anything is created: a volume never outlives the policy it was made under.
        let mut finalizers = cluster.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        return set_finalizers(ctx, cluster, finalizers).await;
    }
    crate::faults::panic_point("reconcile-instances");
    let name = cluster.name_any();
    let ns = cluster.namespace().unwrap_or_default();
    let st = cluster.status.clone().unwrap_or_default().instances.unwrap_or_default();
    if name.len() > MAX_NAME {
        let msg = format!(
            "the cluster's name has {} characters; members are named <name>-<n> and need it to be at most {MAX_NAME}",
            name.len()
        );
        write_status(ctx, cluster, &st, (false, Reason::NameTooLong, &msg), &restart_condition(&[])).await?;
        return Ok(Action::await_change());
    }
    if !state.caches_ready().await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    ensure_budget(&state, cluster).await?;
    let revision = revision(cluster, instances);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let sfo_api: Api<ShardFailover> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = cluster.uid().unwrap_or_default();
    let owned_by_us = |m: &ObjectMeta| m.owner_references.iter().flatten().any(|o| o.uid == uid);
    let ours = |m: &ObjectMeta| {
        m.namespace.as_deref() == Some(ns.as_str())
            && m.labels.as_ref().and_then(|l| l.get(CLUSTER_LABEL)) == Some(&name)
    };
    let pods: Vec<Pod> = state
        .caches
        .iter()
        .flat_map(|c| c.pods.state())
        .filter(|p| ours(&p.metadata) && owned_by_us(&p.metadata))
        .map(|p| (*p).clone())
        .collect();
    let pvcs = cluster_volumes(&state, cluster);
    let requests: Vec<ShardFailover> = state
        .caches
        .iter()
        .flat_map(|c| c.requests.state())
        .filter_map(|r| r.0.as_ref().ok().cloned())
        .filter(|r| ours(&r.metadata) && owned_by_us(&r.metadata))
        .collect();
    let routed_at = ctx.routing_quiet_secs(&uid);
    let mut next = st.clone();
    let params = parameters(ctx, cluster, instances, &st, &pods).await?;
    next.parameters = Some(params.in_force.clone());
    volume_owners(ctx, cluster, instances.pvc_retention.when_deleted, &pvcs).await?;
    let sizes = volume_sizes(ctx, cluster, instances, &st, &pvcs).await?;
    let mut facts =
        facts(cluster, instances, &params.in_force, &st, &revision, &pods, &pvcs, &requests, &sizes);
    facts.routing_quiet_secs = routed_at;
    let plan = next_step(&facts);
    debug!(cluster = %key(cluster), step = ?plan.step, reason = %plan.reason, message = %plan.message, "instances");
    let mut plan = plan;
    if let Some(why) = &params.refused
        && !plan.progressing
    {
        plan.reason = Reason::InvalidParameter;
        plan.message = why.clone();
    }
    let restart = restart_condition(&params.restart_required);
    next.revision = Some(revision.clone());
    next.updated_ready = pods
        .iter()
        .filter(|p| st.members.contains(&p.name_any()))
        .filter(|p| pod_revision(p) == Some(revision.as_str()) && pod_ready(p))
        .count() as i32;
    if plan.reason == Reason::UpToDate {
        next.created = true;
    }
    // The rebuild in progress ends when its member is back and serving, or is no longer a
    // member (removed meanwhile: the record must not block the next request).
    if let Some(r) = next.rebuild.as_mut().filter(|r| r.completion_time.is_none()) {
        let ended = if facts.rebuild_abandoned() {
            Some(format!("the rebuild of {} ended: it is no longer a member", r.member))
        } else if facts.rebuilt() {
            Some(format!(
                "rebuilt {} from the primary in {:.1} s: it follows the primary and has caught up",
                r.member,
                Timestamp::now().duration_since(r.start_time.0).as_secs_f64()
            ))
        } else {
            None
        };
        if let Some(msg) = ended {
            r.completion_time = Some(Time(Timestamp::now()));
            info!(cluster = %key(cluster), member = %r.member, "{msg}");
            ctx.event(cluster, false, Reason::Rebuilding, EventAction::Rebuild, msg).await;
        }
    }
    // A rebuild asked by annotation: validated, then recorded (with what it replaces) before
    // anything is deleted for it.
    if let Some(value) = cluster.annotations().get(REBUILD_ANNOTATION)
        && st.rebuild.as_ref().map(|r| &r.request) != Some(value)
    {
        let admitted = RebuildAsk::parse(value)
            .map_err(|why| crate::core::instances::RebuildBlocked { waits: false, message: why })
            .and_then(|ask| facts.admit_rebuild(&ask).map(|()| ask));
        match admitted {
            Ok(ask) => {
                let (what, replaces) = if instances.storage.is_some() {
                    let claim = volume_name(&ask.member);
                    let uid = pvcs
                        .iter()
                        .find(|c| c.name_any() == claim && c.metadata.deletion_timestamp.is_none())
                        .and_then(|c| c.uid());
                    ("volume", uid)
                } else {
                    let uid = pods.iter().find(|p| p.name_any() == ask.member).and_then(|p| p.uid());
                    ("pod", uid)
                };
                let Some(replaces) = replaces else {
                    plan.message = format!("rebuild of {} waits: it has no {what} yet", ask.member);
                    write_status(
                        ctx,
                        cluster,
                        &next,
                        (plan.progressing, plan.reason, &plan.message),
                        &restart,
                    )
                    .await?;
                    return Ok(Action::requeue(Duration::from_secs(2)));
                };
                let primary = facts.primary.clone().unwrap_or_default();
                let mut msg = format!(
                    "rebuilding {} from the primary {primary} ({REBUILD_ANNOTATION}={value}): its {what} is replaced and it resynchronises",
                    ask.member
                );
                if !ask.discard.is_empty() {
                    msg.push_str(&format!(
                        "; discarding {}, which the primary never had (the request named them)",
                        ask.discard.join(",")
                    ));
                }
                next.rebuild = Some(RebuildStatus {
                    request: value.clone(),
                    member: ask.member.clone(),
                    replaces,
                    discarded: ask.discard.clone(),
                    start_time: Time(Timestamp::now()),
                    completion_time: None,
                });
                write_status(ctx, cluster, &next, (true, Reason::Rebuilding, &msg), &restart).await?;
                warn!(cluster = %key(cluster), member = %ask.member, discarded = ?ask.discard, "{msg}");
                ctx.event(cluster, !ask.discard.is_empty(), Reason::Rebuilding, EventAction::Rebuild, msg)
                    .await;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            // Said unless a step of another change is under way (waiting counts as none: a
            // member that cannot be attached keeps the cluster waiting, and the refusal is
            // what the user needs to read then).
            Err(blocked) if plan.step == Step::Wait => {
                (plan.progressing, plan.reason) =
                    if blocked.waits { (true, Reason::Rebuilding) } else { (false, Reason::RebuildRefused) };
                plan.message = blocked.message;
            }
            Err(blocked) => {
                debug!(cluster = %key(cluster), message = %blocked.message, "rebuild request not taken yet");
            }
        }
    }
    let requeue = match &plan.step {
        Step::List(members) => {
            next.members = members.clone();
            // Recorded before any pod is created or deleted for it.
            write_status(ctx, cluster, &next, (plan.progressing, plan.reason, &plan.message), &restart)
                .await?;
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        Step::CreateVolume(member) => {
            if let Some(why) = create_volume(ctx, cluster, instances, member).await? {
                return name_taken(ctx, cluster, &next, &restart, why).await;
            }
            Duration::from_millis(100)
        }
        Step::CreatePod(member) => {
            let pod = member_pod(cluster, instances, member, &revision, &params.in_force);
            match pods_api
                .create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &pod)
                .await
            {
                Ok(_) => info!(cluster = %key(cluster), member, %revision, "created member pod"),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Ours and not yet in the cache, or someone else's pod under the name.
                    if let Some(other) = pods_api.get_opt(member).await?
                        && !(ours(&other.metadata) && owned_by_us(&other.metadata))
                    {
                        let why = format!(
                            "pod {member} exists and is not a member of this HaCluster; it is left alone and member {member} is not created until it is deleted or renamed"
                        );
                        return name_taken(ctx, cluster, &next, &restart, why).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            ctx.event(cluster, false, plan.reason, EventAction::CreateMember, plan.message.clone()).await;
            Duration::from_millis(100)
        }
        Step::DeletePod(member) => {
            // Guarded by the pod's uid: a pod recreated meanwhile is not the one decided on.
            let Some(pod) = pods.iter().find(|p| &p.name_any() == member) else {
                return Ok(Action::requeue(Duration::from_millis(100)));
            };
            let dp = DeleteParams {
                preconditions: Some(kube::api::Preconditions { uid: pod.uid(), resource_version: None }),
                ..Default::default()
            };
            match pods_api.delete(member, &dp).await {
                Ok(_) => info!(cluster = %key(cluster), member, reason = %plan.reason, "deleted member pod"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            ctx.event(cluster, false, plan.reason, EventAction::DeleteMember, plan.message.clone()).await;
            Duration::from_millis(500)
        }
        Step::Resize(member) => {
            resize(ctx, cluster, instances, member, &pods_api).await?;
            Duration::from_millis(500)
        }
        Step::DeleteVolume(member) => {
            match pvc_api.delete(&volume_name(member), &DeleteParams::default()).await {
                Ok(_) => info!(cluster = %key(cluster), member, "deleted the volume of a removed member"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            Duration::from_millis(100)
        }
        Step::Switchover { from, to } => {
            let n = requests.iter().filter(|r| r.labels().get(REVISION_LABEL) == Some(&revision)).count();
            let request = switchover(cluster, &revision, n, from);
            let request_name = request.name_any();
            let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            match sfo_api.create(&pp, &request).await {
                Ok(_) => {
                    info!(cluster = %key(cluster), %from, likely = %to, request = %request_name, "requested a switchover")
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            let msg = format!("{} (ShardFailover {request_name})", plan.message);
            ctx.event(cluster, false, plan.reason, EventAction::Switchover, msg).await;
            // Status says what it will say while the switchover runs, so the reconciles its
            // progress triggers write nothing: a write then would meet the promotion's
            // outcome record (a conflict and a retry while clients wait, measured).
            plan.message = crate::core::instances::switchover_message(&request_name, from);
            Duration::from_millis(500)
        }
        Step::Wait if plan.progressing => Duration::from_secs(2),
        Step::Wait => Duration::from_secs(30),
    };
    write_status(ctx, cluster, &next, (plan.progressing, plan.reason, &plan.message), &restart).await?;
    Ok(Action::requeue(requeue))
}

/// Gather what the planner needs.
#[allow(clippy::too_many_arguments)]
fn facts(
    cluster: &HaCluster,
    instances: &Instances,
    in_force: &BTreeMap<String, String>,
    st: &InstancesStatus,
    revision: &str,
    pods: &[Pod],
    pvcs: &[PersistentVolumeClaim],
    requests: &[ShardFailover],
    sizes: &VolumeSizes,
) -> Facts {
    let status = cluster.status.clone().unwrap_or_default();
    let shard = status.shards.iter().find(|s| s.name == "main");
    let primary = shard.and_then(|s| s.current_primary.clone());
    let promoting = shard.is_some_and(|s| s.target_primary.is_some() || s.operation.is_some());
    let members = shard
        .map(|s| {
            s.members
                .iter()
                .map(|m| MemberView {
                    name: m.name.clone(),
                    healthy: m.healthy,
                    acts_primary: m.role == Role::Primary,
                    lag: m.lag.or_else(|| (primary.as_deref() == Some(m.name.as_str())).then_some(0)),
                    upstream: m.upstream.clone(),
                    errant: m.errant_transactions.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    // The rebuild in progress, and whether what it replaces (by uid) still exists.
    let rebuild = st.rebuild.as_ref().filter(|r| r.completion_time.is_none()).map(|r| {
        let uid = Some(r.replaces.as_str());
        let pending =
            pvcs.iter().any(|c| c.metadata.deletion_timestamp.is_none() && c.uid().as_deref() == uid)
                || pods.iter().any(|p| p.uid().as_deref() == uid);
        RebuildView { member: r.member.clone(), pending }
    });
    let desired_image = &instances.image;
    let desired_resources = resources_hash(instances);
    let pods = pods
        .iter()
        .map(|p| {
            let container = p.spec.as_ref().and_then(|s| s.containers.first());
            let mut resize = Resize::Done;
            let change = if rebuild.as_ref().is_some_and(|r| r.pending && r.member == p.name_any()) {
                Some(Reason::Rebuilding)
            } else if pod_revision(p) != Some(revision) {
                Some(if container.and_then(|c| c.image.as_ref()) != Some(desired_image) {
                    Reason::Upgrading
                } else {
                    Reason::Restarting
                })
            } else if let Err(why) = resize_state(p, &desired_resources).inspect(|r| resize = *r) {
                Some(why)
            } else if sizes.rebuild.contains(&p.name_any()) || sizes.restart.contains(&p.name_any()) {
                // A larger volume that needs a new pod: rebuilt, or expanded offline.
                Some(Reason::Resizing)
            } else if !pod_ready(p) && started_with(p).as_ref() != Some(in_force) {
                // Started with parameters no longer in force (a value the engine refused, and
                // since corrected): it does not serve, so it is replaced.
                Some(Reason::Reconfiguring)
            } else {
                None
            };
            PodView {
                name: p.name_any(),
                change,
                ready: pod_ready(p),
                deleting: p.metadata.deletion_timestamp.is_some(),
                waiting: waiting(p),
                resize,
            }
        })
        .collect();
    let member_of = |c: &PersistentVolumeClaim| c.name_any().strip_prefix("data-").map(str::to_owned);
    let volumes =
        pvcs.iter().filter(|c| c.metadata.deletion_timestamp.is_none()).filter_map(member_of).collect();
    let deleting_volumes =
        pvcs.iter().filter(|c| c.metadata.deletion_timestamp.is_some()).filter_map(member_of).collect();
    let ours: Vec<&ShardFailover> = requests
        .iter()
        .filter(|r| r.labels().get(REVISION_LABEL).map(String::as_str) == Some(revision))
        .collect();
    let latest = ours.iter().max_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0));
    let switchover = latest.and_then(|r| {
        let s = r.status.clone().unwrap_or_default();
        match s.phase {
            Some(ShardFailoverPhase::Succeeded) => None,
            Some(ShardFailoverPhase::Failed) => {
                let ended = s.completion_time.clone().or_else(|| r.metadata.creation_timestamp.clone());
                Some(SwitchoverState::Failed {
                    name: r.name_any(),
                    message: s.message.unwrap_or_default(),
                    ago_secs: ended.map_or(f64::MAX, |t| super::seconds_since(&t)),
                })
            }
            _ => Some(SwitchoverState::InFlight(r.name_any())),
        }
    });
    Facts {
        cluster: cluster.name_any(),
        want: usize::try_from(instances.members).unwrap_or(1),
        listed: cluster.status.as_ref().and_then(|s| s.instances.as_ref()).map(|i| i.members.clone()),
        created: st.created,
        pods,
        volumes,
        deleting_volumes,
        rebuild_volumes: sizes.rebuild.clone(),
        expanding_volumes: sizes.expanding.clone(),
        storage: instances.storage.is_some(),
        delete_volume_when_scaled: instances.pvc_retention.when_scaled == Retention::Delete,
        primary,
        promoting,
        members,
        switchover,
        max_lag: cluster.spec.failover.max_lag_on_failover,
        routing_quiet_secs: f64::MAX,
        rebuild,
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_revision(p: &Pod) -> Option<&str> {
    p.annotations().get(REVISION_ANNOTATION).map(String::as_str)
}

/// Why the member's container is not running, as the kubelet says.
fn waiting(p: &Pod) -> Option<String> {
    let st = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let w = st.state.as_ref()?.waiting.as_ref()?;
    let reason = w.reason.clone().filter(|r| r != "ContainerCreating" && r != "PodInitializing")?;
    Some(match &w.message {
        Some(m) => format!("{reason}: {m}"),
        None => reason,
    })
}

/// Pod annotation: the hash of the resources (`spec.instances.resources`) the pod was created
/// with or last resized to. Resources are not part of the revision: they change in place.
const RESOURCES_ANNOTATION: &str = "understudy.dev/resources";
/// Pod annotation: the hash of resources its node would not take in place (the API refused
/// the resize); the pod is restarted with them instead.
const RESIZE_REFUSED_ANNOTATION: &str = "understudy.dev/resize-refused";

fn resources_hash(instances: &Instances) -> String {
    fnv(&serde_json::to_vec(&instances.resources).unwrap_or_default())
}

/// Where a pod's resources stand against `want` (a [`resources_hash`]). A resize the
/// kubelet calls infeasible, or the API refused, is reported as a change (a restart).
fn resize_state(p: &Pod, want: &str) -> Result<Resize, Reason> {
    let has = p.annotations().get(RESOURCES_ANNOTATION).map(String::as_str);
    if has != Some(want) {
        if p.annotations().get(RESIZE_REFUSED_ANNOTATION).map(String::as_str) == Some(want) {
            return Err(Reason::Resizing);
        }
        return Ok(Resize::Wanted);
    }
    let conditions = p.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let active = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
    if active("PodResizePending").is_some_and(|c| c.reason.as_deref() == Some("Infeasible")) {
        return Err(Reason::Resizing);
    }
    if active("PodResizePending").is_some() || active("PodResizeInProgress").is_some() {
        return Ok(Resize::InProgress);
    }
    // A resize bumps the pod's generation; until the kubelet has seen it (it then sets the
    // conditions above while it applies it), the resize has not started.
    let observed = p.status.as_ref().and_then(|s| s.observed_generation);
    if let (Some(generation), Some(observed)) = (p.metadata.generation, observed)
        && observed < generation
    {
        return Ok(Resize::InProgress);
    }
    Ok(Resize::Done)
}

/// Pod annotation: the engine parameters (JSON) the pod's container starts with.
const PARAMETERS_ANNOTATION: &str = "understudy.dev/parameters";
/// Pod annotation: `<hash of the parameters>/<container id>` once those parameters were set
/// live in that container (a container restarted in place starts from its arguments again,
/// and gets them set again).
const LIVE_ANNOTATION: &str = "understudy.dev/parameters-live";
/// Pod annotation: the parameters set live that the engine applies only at start.
const PENDING_ANNOTATION: &str = "understudy.dev/parameters-pending";

fn parameters_hash(parameters: &BTreeMap<String, String>) -> String {
    fnv(&serde_json::to_vec(parameters).unwrap_or_default())
}

/// The parameters a pod's container starts with.
fn started_with(p: &Pod) -> Option<BTreeMap<String, String>> {
    serde_json::from_str(p.annotations().get(PARAMETERS_ANNOTATION)?).ok()
}

fn container_id(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()?.container_id.clone()
}

/// What the spec's parameters need of a member that started with `started`: the values to
/// set, and the names it has that the spec no longer does (only a restart removes those).
pub(crate) fn parameter_changes(
    started: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> (Vec<(String, String)>, Vec<String>) {
    let set = want
        .iter()
        .filter(|(k, v)| started.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed = started.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
    (set, removed)
}

/// The parameters: in force, pending a restart, or refused.
struct Parameters {
    in_force: BTreeMap<String, String>,
    restart_required: Vec<String>,
    refused: Option<String>,
}

/// Bring the spec's parameters to every member: set them live where a member started with
/// others (once per container), note what only a restart applies, and make them the
/// parameters in force once every member took them. A refused value stops there.
async fn parameters(
    ctx: &Context,
    cluster: &HaCluster,
    instances: &Instances,
    st: &InstancesStatus,
    pods: &[Pod],
) -> Result<Parameters, OpError> {
    let want = &instances.parameters;
    let Some(in_force) = st.parameters.clone() else {
        // A new cluster: its members start with the spec's.
        return Ok(Parameters { in_force: want.clone(), restart_required: Vec::new(), refused: None });
    };
    let marker_hash = parameters_hash(want);
    let listed: Vec<&Pod> = pods
        .iter()
        .filter(|p| st.members.contains(&p.name_any()) && p.metadata.deletion_timestamp.is_none())
        .collect();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let mut engine: Option<Box<dyn crate::engines::Engine>> = None;
    let mut pending = std::collections::BTreeSet::new();
    let mut all_took = listed.len() == st.members.len();
    let mut refused = None;
    let mut applied_on = Vec::new();
    for p in listed {
        let started = started_with(p).unwrap_or_default();
        if &started == want {
            continue;
        }
        let cid = container_id(p);
        let marker = cid.as_ref().map(|c| format!("{marker_hash}/{c}"));
        if marker.is_some() && p.annotations().get(LIVE_ANNOTATION) == marker.as_ref() {
            let keys = p.annotations().get(PENDING_ANNOTATION).cloned().unwrap_or_default();
            pending.extend(keys.split(',').filter(|k| !k.is_empty()).map(str::to_owned));
            continue;
        }
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
        let (Some(marker), Some(ip), true) = (marker, ip, pod_ready(p)) else {
            all_took = false;
            continue;
        };
        if engine.is_none() {
            let ns = cluster.namespace().unwrap_or_default();
            let secret = cluster.spec.secret_ref.as_ref();
            let creds = match super::cached_credentials(ctx, &ns, secret, "password", super::SecretCache::TTL)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    refused = Some(format!("parameters not applied: {e}"));
                    break;
                }
            };
            let (creds, ca) = creds;
            engine = Some(crate::engines::for_cluster(
                cluster.spec.engine,
                creds,
                ca.as_deref(),
                Duration::from_secs(2),
                None,
            ));
        }
        let e = engine.as_ref().expect("built");
        let endpoint = format!("{ip}:{}", instances.port(cluster.spec.engine));
        let (set, removed) = parameter_changes(&started, want);
        let mut restart = removed;
        let mut reached = true;
        for (k, v) in &set {
            match e.set_parameter(&endpoint, k, v).await {
                Ok(Setting::Applied) => {}
                Ok(Setting::RestartRequired) => restart.push(k.clone()),
                Ok(Setting::Refused(why)) => {
                    refused = Some(format!("{} refused parameter {k}={v:?}: {why}", p.name_any()));
                    break;
                }
                Err(err) => {
                    debug!(cluster = %key(cluster), pod = %p.name_any(), error = %err, "parameters not set yet");
                    reached = false;
                    break;
                }
            }
        }
        if refused.is_some() {
            break;
        }
        if !reached {
            all_took = false;
            continue;
        }
        let patch = json!({"metadata": {"annotations": {LIVE_ANNOTATION: marker, PENDING_ANNOTATION: restart.join(",")}}});
        pods_api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        pending.extend(restart);
        applied_on.push(p.name_any());
    }
    if !applied_on.is_empty() && refused.is_none() {
        let msg = format!("parameters set live on {}", applied_on.join(", "));
        info!(cluster = %key(cluster), "{msg}");
        ctx.event(cluster, false, Reason::Reconfiguring, EventAction::Lifecycle, msg).await;
    }
    let in_force = if refused.is_none() && all_took { want.clone() } else { in_force };
    Ok(Parameters { in_force, restart_required: pending.into_iter().collect(), refused })
}

fn restart_condition(pending: &[String]) -> (bool, Reason, String) {
    if pending.is_empty() {
        (false, Reason::ParametersApplied, "every member runs with spec.instances.parameters".into())
    } else {
        (
            true,
            Reason::ParametersNeedRestart,
            format!(
                "{} applied at the members' next restart (kubectl.kubernetes.io/restartedAt in spec.instances.pod.annotations)",
                pending.join(", ")
            ),
        )
    }
}

/// A hash of everything that shapes a member's pod: a change is rolled out. Parameters are
/// not in it: a change of them is set live (see [`parameters`]).
fn revision(cluster: &HaCluster, instances: &Instances) -> String {
    let shaping = json!({
        "image": instances.image,
        "pull": instances.image_pull_policy,
        "port": instances.port(cluster.spec.engine),
        "pod": instances.pod,
        "secret": cluster.spec.secret_ref,
        "storage": instances.storage.is_some(),
    });
    fnv(&serde_json::to_vec(&shaping).unwrap_or_default())
}

/// FNV-1a (64 bits), hex: stable across builds and Rust versions, unlike std's hasher.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn owner(cluster: &HaCluster) -> OwnerReference {
    cluster.controller_owner_ref(&()).expect("a stored cluster has a name and uid")
}

fn volume_name(member: &str) -> String {
    format!("data-{member}")
}

fn labels(cluster: &HaCluster, member: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (CLUSTER_LABEL.to_owned(), cluster.name_any()),
        ("app.kubernetes.io/managed-by".to_owned(), "understudy".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.name_any()),
    ]);
    if let Some(m) = member
        && let Some((_, n)) = m.rsplit_once('-')
    {
        l.insert(ORDINAL_LABEL.to_owned(), n.to_owned());
    }
    l
}

/// The pod of one member: the engine started as a replica of nothing (the monitor elects or
/// attaches it), its data directory on the member's volume.
pub fn member_pod(
    cluster: &HaCluster,
    instances: &Instances,
    member: &str,
    revision: &str,
    parameters: &BTreeMap<String, String>,
) -> Pod {
    let port = instances.port(cluster.spec.engine);
    let mut env = Vec::new();
    if let Some(secret) = &cluster.spec.secret_ref {
        let from_secret = |name: &str, key: String, optional: bool| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key,
                    optional: Some(optional),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        env.push(from_secret(PASSWORD_ENV, secret.key.clone().unwrap_or_else(|| "password".into()), false));
        if cluster.spec.engine == Engine::Mysql {
            // The MariaDB image's entrypoint creates the operator's account from these.
            env.push(from_secret(USER_ENV, "username".into(), true));
        }
    }
    let start = crate::engines::MemberStart {
        port: u16::try_from(port).unwrap_or_default(),
        server_id: crate::core::instances::ordinal(member).map_or(1, |o| o + 1),
        data_dir: DATA_DIR,
        password_env: cluster.spec.secret_ref.is_some().then_some(PASSWORD_ENV),
        parameters,
    };
    // The API server refuses spec.instances for engines whose members something else runs.
    let args = crate::engines::member_args(cluster.spec.engine, &start).unwrap_or_default();
    let o = &instances.pod;
    let mut pod_labels = o.labels.clone();
    pod_labels.extend(labels(cluster, Some(member)));
    let mut annotations = o.annotations.clone();
    annotations.insert(REVISION_ANNOTATION.into(), revision.into());
    annotations.insert(RESOURCES_ANNOTATION.into(), resources_hash(instances));
    annotations.insert(
        PARAMETERS_ANNOTATION.into(),
        serde_json::to_string(parameters).expect("a map of strings serializes"),
    );
    // Spread across nodes unless the user says otherwise.
    let affinity = o.affinity.clone().or_else(|| {
        Some(k8s_openapi::api::core::v1::Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                CLUSTER_LABEL.to_owned(),
                                cluster.name_any(),
                            )])),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    let volume = match &instances.storage {
        Some(_) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume_name(member),
                read_only: None,
            }),
            ..Default::default()
        },
        None => Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(member.into()),
            namespace: cluster.namespace(),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner(cluster)]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(instances.image.clone()),
                image_pull_policy: instances.image_pull_policy.map(|p| p.as_str().to_owned()),
                args: Some(args),
                env: (!env.is_empty()).then_some(env),
                ports: Some(vec![ContainerPort {
                    name: Some("engine".into()),
                    container_port: port,
                    ..Default::default()
                }]),
                readiness_probe: Some(Probe {
                    tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port), host: None }),
                    period_seconds: Some(2),
                    ..Default::default()
                }),
                resources: instances.resources.clone(),
                lifecycle: pre_stop(cluster, instances),
                volume_mounts: Some(vec![VolumeMount {
                    name: "data".into(),
                    mount_path: DATA_DIR.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![volume]),
            hostname: Some(member.into()),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(
                o.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECS),
            ),
            node_selector: (!o.node_selector.is_empty()).then(|| o.node_selector.clone()),
            tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
            affinity,
            priority_class_name: o.priority_class_name.clone(),
            security_context: o.security_context.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// Pod volumes against `spec.instances.storage.size`, by member.
#[derive(Default)]
struct VolumeSizes {
    /// Being expanded in place (asked; the volume's capacity is not there yet).
    expanding: Vec<String>,
    /// Expanded, but the file system grows only when the volume is next mounted: the member
    /// restarts.
    restart: Vec<String>,
    /// Cannot be expanded (the API refused: the StorageClass does not allow it): the member
    /// is rebuilt onto a new volume.
    rebuild: Vec<String>,
}

/// PVC annotation: the size an expansion was refused for.
const EXPANSION_REFUSED_ANNOTATION: &str = "understudy.dev/expansion-refused";

/// Ask a larger size of every member volume smaller than the spec's (once; refusals are
/// recorded on the volume) and say where each stands.
async fn volume_sizes(
    ctx: &Context,
    cluster: &HaCluster,
    instances: &Instances,
    st: &InstancesStatus,
    pvcs: &[PersistentVolumeClaim],
) -> Result<VolumeSizes, OpError> {
    use crate::resources::shared::quantity_value;
    let mut out = VolumeSizes::default();
    let Some(storage) = &instances.storage else { return Ok(out) };
    let Some(want) = quantity_value(&storage.size) else { return Ok(out) };
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    for c in pvcs.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
        let name = c.name_any();
        let Some(member) = name.strip_prefix("data-").filter(|m| st.members.iter().any(|x| x == m)) else {
            continue;
        };
        let size = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
            q.and_then(|q| quantity_value(&q.0)).unwrap_or(0.0)
        };
        let asked = size(
            c.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage")),
        );
        let status = c.status.as_ref();
        let capacity = size(status.and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage")));
        let condition = |t: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|x| x.type_ == t && x.status == "True"))
        };
        if asked < want {
            if c.annotations().get(EXPANSION_REFUSED_ANNOTATION) == Some(&storage.size) {
                out.rebuild.push(member.to_owned());
                continue;
            }
            let body = json!({"spec": {"resources": {"requests": {"storage": storage.size}}}});
            let pp = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            match api.patch(&name, &pp, &Patch::Merge(&body)).await {
                Ok(_) => {
                    info!(cluster = %key(cluster), volume = %name, size = %storage.size, "expanding a member volume");
                    out.expanding.push(member.to_owned());
                }
                Err(kube::Error::Api(e)) if matches!(e.code, 403 | 422) => {
                    warn!(cluster = %key(cluster), volume = %name, error = %e.message, "volume expansion refused; the member is rebuilt on a new volume instead");
                    let mark =
                        json!({"metadata": {"annotations": {EXPANSION_REFUSED_ANNOTATION: storage.size}}});
                    api.patch(&name, &pp, &Patch::Merge(&mark)).await?;
                    out.rebuild.push(member.to_owned());
                }
                Err(e) => return Err(e.into()),
            }
        } else if condition("FileSystemResizePending") {
            out.restart.push(member.to_owned());
        } else if capacity < want && status.and_then(|s| s.phase.as_deref()) == Some("Bound") {
            out.expanding.push(member.to_owned());
        }
    }
    Ok(out)
}

/// Give `member`'s pod the spec's resources in place (the `resize` subresource, Kubernetes
/// 1.33+), then record them on the pod. Refused by the API (a QoS class change, an API server
/// without the subresource), the pod is marked to be restarted with them instead.
async fn resize(
    ctx: &Context,
    cluster: &HaCluster,
    instances: &Instances,
    member: &str,
    pods_api: &Api<Pod>,
) -> Result<(), OpError> {
    let want = resources_hash(instances);
    // The whole resources object replaces the pod's (a limit removed from the spec goes).
    let mut resources = json!(instances.resources.clone().unwrap_or_default());
    resources["$patch"] = json!("replace");
    let body = json!({"spec": {"containers": [{"name": CONTAINER, "resources": resources}]}});
    let pp = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let (annotation, outcome) = match pods_api
        .patch_subresource("resize", member, &pp, &Patch::Strategic(&body))
        .await
    {
        Ok(_) => {
            info!(cluster = %key(cluster), member, "resizing in place");
            (RESOURCES_ANNOTATION, format!("resizing {member} in place"))
        }
        Err(kube::Error::Api(e)) if matches!(e.code, 400 | 404 | 405 | 422) => {
            warn!(cluster = %key(cluster), member, error = %e.message, "in-place resize refused; the member restarts instead");
            (
                RESIZE_REFUSED_ANNOTATION,
                format!("{member} cannot be resized in place ({}); it restarts instead", e.message),
            )
        }
        Err(e) => return Err(e.into()),
    };
    let mark = json!({"metadata": {"annotations": {annotation: want}}});
    pods_api.patch(member, &pp, &Patch::Merge(&mark)).await?;
    ctx.event(cluster, false, Reason::Resizing, EventAction::Resize, outcome).await;
    Ok(())
}

/// A pause before the engine is told to stop, so that a primary whose pod is deleted
/// (`kubectl drain`, a user) is still running when the monitor's next heartbeat sees it
/// leaving and moves the role off it, drained (a switchover, not a failover). Three
/// heartbeats, at least 2 s, within the pod's grace period.
fn pre_stop(cluster: &HaCluster, instances: &Instances) -> Option<Lifecycle> {
    let grace = instances.pod.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECS);
    let heartbeats = (cluster.spec.failover.heartbeat_interval.0.as_secs_f64() * 3.0).ceil() as i64;
    let seconds = heartbeats.max(2).min(grace - 1);
    (seconds >= 1).then(|| Lifecycle {
        pre_stop: Some(LifecycleHandler { sleep: Some(SleepAction { seconds }), ..Default::default() }),
        ..Default::default()
    })
}

/// Held on every `spec.instances` cluster: its deletion waits until the members' volumes
/// follow `pvcRetention.whenDeleted` as it is at that moment. Without the operator running,
/// remove it by hand (`kubectl patch haclusters <name> --type=json -p
/// '[{"op":"remove","path":"/metadata/finalizers"}]'`); the volumes then follow the owner
/// references they have.
pub const FINALIZER: &str = "understudy.dev/volumes";

/// Write the cluster's finalizers, guarded by its resourceVersion (a conflict is retried at
/// once from the newer copy the watch brings).
async fn set_finalizers(
    ctx: &Context,
    cluster: &HaCluster,
    finalizers: Vec<String>,
) -> Result<Action, OpError> {
    let api: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": cluster.resource_version()}});
    match api.patch(&cluster.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(Action::requeue(Duration::from_millis(100))),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The cluster's volumes, by label only: a retained volume outlives the cluster that made it
/// (and is reused by a later cluster of the same name).
fn cluster_volumes(state: &State, cluster: &HaCluster) -> Vec<PersistentVolumeClaim> {
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    state
        .caches
        .iter()
        .flat_map(|c| c.pvcs.state())
        .filter(|c| {
            c.metadata.namespace.as_deref() == Some(ns.as_str())
                && c.labels().get(CLUSTER_LABEL) == Some(&name)
        })
        .map(|c| (*c).clone())
        .collect()
}

/// Make each volume's owner reference to the cluster match `when_deleted` (owned: deleted
/// with the cluster; not owned: kept), as StatefulSet does for its retention policy. A
/// policy changed after the volumes were made would otherwise not apply to them: `Retain`
/// set before deleting a cluster would still have lost its data.
async fn volume_owners(
    ctx: &Context,
    cluster: &HaCluster,
    when_deleted: Retention,
    pvcs: &[PersistentVolumeClaim],
) -> Result<(), OpError> {
    let uid = cluster.uid().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let want = when_deleted == Retention::Delete;
    for pvc in pvcs.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
        let owned = pvc.owner_references().iter().any(|o| o.uid == uid);
        if owned == want {
            continue;
        }
        let mut owners: Vec<OwnerReference> =
            pvc.owner_references().iter().filter(|o| o.uid != uid).cloned().collect();
        if want {
            owners.push(owner(cluster));
        }
        let patch =
            json!({"metadata": {"ownerReferences": owners, "resourceVersion": pvc.resource_version()}});
        match api.patch(&pvc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                info!(cluster = %key(cluster), volume = %pvc.name_any(), owned = want, "volume follows whenDeleted")
            }
            // Changed or gone meanwhile: looked at again with the next copy.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The cluster is being deleted: apply whenDeleted to its volumes (with `Delete`, delete
/// them; with `Retain`, drop the cluster's owner reference so nothing collects them), then
/// let the deletion go on. A failure is `Progressing=False DeletionError` with the reason,
/// and is retried.
async fn release_volumes(state: &State, cluster: &HaCluster) -> Result<Action, OpError> {
    let ctx = &state.ctx;
    let when_deleted = match &cluster.spec.instances {
        Some(i) if cluster.metadata.deletion_timestamp.is_some() => i.pvc_retention.when_deleted,
        // No longer an instances cluster: its volumes are kept.
        _ => Retention::Retain,
    };
    let pvcs = cluster_volumes(state, cluster);
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let mut failed = Vec::new();
    if when_deleted == Retention::Retain {
        if let Err(e) = volume_owners(ctx, cluster, Retention::Retain, &pvcs).await {
            failed.push(e.to_string());
        }
    } else {
        for pvc in pvcs.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
            let dp = DeleteParams {
                preconditions: Some(kube::api::Preconditions { uid: pvc.uid(), resource_version: None }),
                ..Default::default()
            };
            match api.delete(&pvc.name_any(), &dp).await {
                Ok(_) => {
                    info!(cluster = %key(cluster), volume = %pvc.name_any(), "deleted member volume (whenDeleted: Delete)")
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => failed.push(format!("{}: {e}", pvc.name_any())),
            }
        }
    }
    if !failed.is_empty() {
        let msg = format!(
            "the cluster is not deleted until its volumes follow pvcRetention.whenDeleted ({when_deleted:?}); retried: {}",
            failed.join("; ")
        );
        warn!(cluster = %key(cluster), "{msg}");
        let st = cluster.status.clone().unwrap_or_default().instances.unwrap_or_default();
        write_status(ctx, cluster, &st, (false, Reason::DeletionError, &msg), &restart_condition(&[]))
            .await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let finalizers: Vec<String> = cluster.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(ctx, cluster, finalizers).await
}

/// The member's volume; owned by the cluster (deleted with it) only with
/// `pvcRetention.whenDeleted: Delete`.
async fn create_volume(
    ctx: &Context,
    cluster: &HaCluster,
    instances: &Instances,
    member: &str,
) -> Result<Option<String>, OpError> {
    let Some(storage) = &instances.storage else { return Ok(None) };
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let owners = (instances.pvc_retention.when_deleted == Retention::Delete).then(|| vec![owner(cluster)]);
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(volume_name(member)),
            labels: Some(labels(cluster, Some(member))),
            owner_references: owners,
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), storage.quantity())])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    };
    match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &pvc).await {
        Ok(_) => {
            info!(cluster = %key(cluster), member, size = %storage.size, "created member volume");
            Ok(None)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // A volume of this cluster's name is reused (it may have been retained); any
            // other claim under the name is someone else's data and is never mounted.
            let name = pvc.name_any();
            let theirs = api
                .get_opt(&name)
                .await?
                .is_some_and(|c| c.labels().get(CLUSTER_LABEL) != Some(&cluster.name_any()));
            Ok(theirs.then(|| format!(
                "PersistentVolumeClaim {name} exists and is not labelled {CLUSTER_LABEL}={}; it is never mounted, and member {member} is not created until it is deleted or renamed",
                cluster.name_any()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// A member's pod or volume name is taken by an object that is not the cluster's: say so
/// (`Progressing=False NameConflict`, a Warning Event) and look again in a while rather than
/// retrying the create every 100 ms.
async fn name_taken(
    ctx: &Context,
    cluster: &HaCluster,
    next: &InstancesStatus,
    restart: &(bool, Reason, String),
    why: String,
) -> Result<Action, OpError> {
    warn!(cluster = %key(cluster), "{why}");
    write_status(ctx, cluster, next, (false, Reason::NameConflict, &why), restart).await?;
    Ok(Action::requeue(Duration::from_secs(15)))
}

/// A PodDisruptionBudget of one: `kubectl drain` never takes two members at once.
async fn ensure_budget(state: &State, cluster: &HaCluster) -> Result<(), OpError> {
    let uid = cluster.uid().unwrap_or_default();
    if state.budgets.lock().expect("budgets").contains(&uid) {
        return Ok(());
    }
    let api: Api<PodDisruptionBudget> =
        Api::namespaced(state.ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let pdb = PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(cluster.name_any()),
            labels: Some(labels(cluster, None)),
            owner_references: Some(vec![owner(cluster)]),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(CLUSTER_LABEL.to_owned(), cluster.name_any())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &pdb).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    state.budgets.lock().expect("budgets").insert(uid);
    Ok(())
}

/// The switchover of a roll: a ShardFailover of the primary, the audited zero-loss path a
/// user would take (drain, promote the best replica, redirect, one recorded promotion), owned
/// by the cluster. Every other member runs the current revision by then, so whichever replica
/// it picks is up to date.
fn switchover(cluster: &HaCluster, revision: &str, n: usize, from: &str) -> ShardFailover {
    let name = format!("{}-switchover-{}-{n}", cluster.name_any(), &revision[..8.min(revision.len())]);
    let mut labels = labels(cluster, None);
    labels.insert(REVISION_LABEL.into(), revision.into());
    let mut sfo = ShardFailover::new(
        &name,
        ShardFailoverSpec {
            shard_uids: vec![from.into()],
            dead_uids: Vec::new(),
            dead_nodes: Vec::new(),
            dry_run: false,
            force_rebind: false,
            timeout_seconds: 120,
        },
    );
    sfo.metadata.namespace = cluster.namespace();
    sfo.metadata.labels = Some(labels);
    sfo.metadata.owner_references = Some(vec![owner(cluster)]);
    sfo
}

/// Apply `status.instances` and the Progressing and RestartRequired conditions (this
/// controller's fields only).
async fn write_status(
    ctx: &Context,
    cluster: &HaCluster,
    next: &InstancesStatus,
    (progressing, reason, message): (bool, Reason, &str),
    restart: &(bool, Reason, String),
) -> Result<(), OpError> {
    let old = cluster.status.clone().unwrap_or_default();
    let ours = [ConditionType::Progressing.as_str(), ConditionType::RestartRequired.as_str()];
    let mut conditions: Vec<_> =
        old.conditions.iter().filter(|c| ours.contains(&c.type_.as_str())).cloned().collect();
    let now = Time(Timestamp::now());
    let before = conditions.clone();
    let generation = cluster.metadata.generation;
    set_condition(
        &mut conditions,
        ConditionType::Progressing,
        progressing,
        reason,
        message,
        generation,
        &now,
    );
    set_condition(
        &mut conditions,
        ConditionType::RestartRequired,
        restart.0,
        restart.1,
        restart.2.clone(),
        generation,
        &now,
    );
    if old.instances.as_ref() == Some(next) && conditions == before {
        return Ok(());
    }
    let changed = |t: ConditionType| {
        let find = |v: &Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
            v.iter().find(|c| c.type_ == t.as_str()).map(|c| (c.reason.clone(), c.status.clone()))
        };
        find(&conditions) != find(&before)
    };
    if changed(ConditionType::Progressing) {
        let warning = matches!(
            reason,
            Reason::MemberNotReady
                | Reason::SwitchoverFailed
                | Reason::NameTooLong
                | Reason::InvalidParameter
                | Reason::NameConflict
                | Reason::DeletionError
                | Reason::RebuildRefused
        );
        ctx.event(cluster, warning, reason, EventAction::Lifecycle, message.to_owned()).await;
    }
    if changed(ConditionType::RestartRequired) && restart.0 {
        ctx.event(cluster, false, restart.1, EventAction::Lifecycle, restart.2.clone()).await;
    }
    let api: Api<HaCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": "understudy.dev/v1alpha1",
        "kind": "HaCluster",
        "metadata": {"name": cluster.name_any()},
        "status": {"instances": next, "conditions": conditions},
    });
    api.patch_status(&cluster.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn parameter_changes_are_new_values_and_removed_names() {
        let started = map(&[("maxmemory", "1mb"), ("databases", "16"), ("save", "")]);
        let want = map(&[("maxmemory", "2mb"), ("save", ""), ("hz", "20")]);
        let (set, removed) = parameter_changes(&started, &want);
        assert_eq!(set, vec![("hz".to_owned(), "20".to_owned()), ("maxmemory".to_owned(), "2mb".to_owned())]);
        assert_eq!(removed, vec!["databases".to_owned()]);
        assert_eq!(parameter_changes(&want, &want), (vec![], vec![]));
    }

    #[test]
    fn resize_state_follows_the_pod_and_the_kubelet() {
        let pod = |annotations: serde_json::Value, status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "db-0", "generation": 2, "annotations": annotations},
                "status": status,
            }))
            .unwrap()
        };
        let done = json!({"observedGeneration": 2});
        assert_eq!(
            resize_state(&pod(json!({RESOURCES_ANNOTATION: "a"}), done.clone()), "a"),
            Ok(Resize::Done)
        );
        assert_eq!(
            resize_state(&pod(json!({RESOURCES_ANNOTATION: "a"}), done.clone()), "b"),
            Ok(Resize::Wanted)
        );
        // Refused by the API for these resources: restarted instead.
        let refused = json!({RESOURCES_ANNOTATION: "a", RESIZE_REFUSED_ANNOTATION: "b"});
        assert_eq!(resize_state(&pod(refused, done), "b"), Err(Reason::Resizing));
        // Asked, not yet seen by the kubelet; then being applied; then infeasible.
        let asked = json!({RESOURCES_ANNOTATION: "b"});
        assert_eq!(
            resize_state(&pod(asked.clone(), json!({"observedGeneration": 1})), "b"),
            Ok(Resize::InProgress)
        );
        let applying = json!({"observedGeneration": 2, "conditions": [{"type": "PodResizeInProgress", "status": "True"}]});
        assert_eq!(resize_state(&pod(asked.clone(), applying), "b"), Ok(Resize::InProgress));
        let infeasible = json!({"observedGeneration": 2, "conditions": [{"type": "PodResizePending", "status": "True", "reason": "Infeasible"}]});
        assert_eq!(resize_state(&pod(asked, infeasible), "b"), Err(Reason::Resizing));
    }

    #[test]
    fn revisions_are_stable_and_ignore_parameters() {
        let cluster: HaCluster = serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "db"},
            "spec": {"engine": "Redis", "instances": {"members": 3, "image": "redis:7", "parameters": {"hz": "10"}}}
        }))
        .unwrap();
        let mut i = cluster.spec.instances.clone().unwrap();
        let r = revision(&cluster, &i);
        // FNV-1a's published test vectors: the same across builds and Rust versions (pods
        // compare it with the spec's after an operator upgrade).
        assert_eq!(fnv(b""), "cbf29ce484222325");
        assert_eq!(fnv(b"a"), "af63dc4c8601ec8c");
        i.parameters.insert("hz".into(), "20".into());
        assert_eq!(revision(&cluster, &i), r, "parameters are applied live, not rolled");
        i.resources = Some(serde_json::from_value(json!({"limits": {"memory": "1Gi"}})).unwrap());
        assert_eq!(revision(&cluster, &i), r, "resources are resized in place, not rolled");
        i.image = "redis:8".into();
        assert_ne!(revision(&cluster, &i), r);
    }

    #[test]
    fn member_pods_start_their_engine_as_a_replica_of_nothing() {
        let cluster = |engine: &str| -> HaCluster {
            serde_json::from_value(json!({
                "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "db", "namespace": "n", "uid": "u1"},
                "spec": {"engine": engine, "secretRef": {"name": "creds"},
                         "instances": {"members": 3, "image": "img", "parameters": {"max-connections": "50"}}}
            }))
            .unwrap()
        };
        let container = |c: &HaCluster, member: &str| {
            let i = c.spec.instances.clone().unwrap();
            let pod = member_pod(c, &i, member, "r1", &i.parameters);
            pod.spec.unwrap().containers.remove(0)
        };
        let env_names =
            |c: &Container| -> Vec<String> { c.env.iter().flatten().map(|e| e.name.clone()).collect() };

        let redis = container(&cluster("Redis"), "db-2");
        let args = redis.args.clone().unwrap();
        assert!(args.windows(3).any(|w| w == ["--replicaof", "127.0.0.1", "1"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--requirepass", "$(UNDERSTUDY_PASSWORD)"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--port", "6379"]), "{args:?}");
        assert_eq!(env_names(&redis), [PASSWORD_ENV]);

        let mysql = container(&cluster("Mysql"), "db-2");
        let args = mysql.args.clone().unwrap();
        assert_eq!(
            args.first().map(String::as_str),
            Some("--max-connections=50"),
            "parameters first: ours win"
        );
        for want in [
            "--server-id=3",
            "--port=3306",
            "--read-only=ON",
            "--gtid-strict-mode=ON",
            "--init-rpl-role=SLAVE",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        assert_eq!(mysql.ports.clone().unwrap()[0].container_port, 3306);
        assert_eq!(env_names(&mysql), [PASSWORD_ENV, USER_ENV]);
        let user = mysql.env.unwrap().into_iter().find(|e| e.name == USER_ENV).unwrap();
        let key = user.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((key.key.as_str(), key.optional), ("username", Some(true)));
        let other = container(&cluster("Mysql"), "db-0").args.unwrap();
        assert!(other.iter().any(|a| a == "--server-id=1"), "server ids differ by ordinal: {other:?}");
    }
}
