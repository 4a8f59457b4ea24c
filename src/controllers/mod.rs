//! Controllers: gather facts, ask [`crate::core`] what to do, apply it. What the controllers
//! share (context, events, credentials, status writes) lives here so they are not copies.

mod events;
pub mod failover_request;
pub mod hacluster;
pub mod instances;
pub mod operation;
mod promotion;
pub mod protection_group;
pub mod routing;
pub mod shard_failover;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DeserializeGuard, error_boundary::InvalidObject},
};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{
    core::vocabulary::{Action as EventAction, ConditionType, Reason},
    engines::Credentials,
    metrics::Metrics,
    resources::shared::SecretKeyRef,
};

/// Field manager for every write the operator makes.
pub const MANAGER: &str = "understudy";

/// The write options of a compare-and-set status write (a PUT with the resourceVersion
/// read): under the operator's field manager, so that `managedFields` names it rather
/// than "unknown".
pub fn put_params() -> kube::api::PostParams {
    kube::api::PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }
}

/// What every controller gets, behind an `Arc`.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    /// This replica's name in Events.
    pub instance: String,
    /// The operator pod that runs operations (`POD_NAME`, else the host name): recorded in
    /// a FailoverRequest's status as its executor.
    pub executor: String,
    /// Engine credentials, shared by every monitor that names the same Secret.
    pub secrets: SecretCache,
    /// Bounds how many monitor status writes and Events are in flight at once. The client
    /// opens one API connection per concurrent request and keeps it: without a bound, a
    /// burst (a thousand clusters bootstrapping or failing over together) left a thousand
    /// idle TLS connections, ~100 MiB, with the process for good.
    pub api_slots: Arc<tokio::sync::Semaphore>,
    /// The same for decisions (compare-and-set status writes: a promotion's decision and
    /// outcome, locks), separately, so that they never queue behind a thousand monitors'
    /// observed status writes.
    pub decision_slots: Arc<tokio::sync::Semaphore>,
    /// The same for routing updates (Services, EndpointSlices), separately, so that a slow
    /// Service allocation never holds up a promotion's status write.
    pub routing_slots: Arc<tokio::sync::Semaphore>,
    /// `--allow-client-address`: route to static members' clientAddress.
    pub allow_client_address: bool,
    /// `--allow-workload-restarts`: restart the workloads a redirect lists.
    pub allow_workload_restarts: bool,
    /// What `/readyz` reports; controllers register their caches here.
    pub readiness: crate::readiness::Readiness,
    /// When each cluster's routing (its Services' EndpointSlices) was last written, by
    /// cluster uid, and when this process started: how long the routing has been quiet.
    routed: Arc<std::sync::Mutex<(std::time::Instant, HashMap<String, std::time::Instant>)>>,
    /// Warnings already published, aggregated into series.
    warnings: Arc<std::sync::Mutex<events::Series>>,
    /// The discovery endpoint, when served: promotions announce the new primary to it.
    pub discovery: Option<crate::sentinel::Discovery>,
}

/// Who runs operations: the `POD_NAME` environment variable (the Downward API in the chart),
/// else the host name (a pod's host name is its name too).
fn executor_name() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `len` bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(host) if ok && !host.is_empty() => host.to_owned(),
        _ => "unknown".into(),
    }
}

/// Monitor status writes and Events in flight at once (see [`Context::api_slots`]).
pub const API_CONCURRENCY: usize = 64;
/// Decisions in flight at once (see [`Context::decision_slots`]).
pub const DECISION_CONCURRENCY: usize = 16;
/// Routing updates in flight at once (see [`Context::routing_slots`]).
pub const ROUTING_CONCURRENCY: usize = 16;

impl Context {
    pub fn new(client: Client, metrics: Metrics, namespaces: Vec<String>) -> Self {
        let instance =
            std::env::var("POD_NAME").unwrap_or_else(|_| format!("understudy-{}", std::process::id()));
        Self {
            client,
            metrics,
            namespaces,
            instance,
            executor: executor_name(),
            secrets: SecretCache::default(),
            api_slots: Arc::new(tokio::sync::Semaphore::new(API_CONCURRENCY)),
            decision_slots: Arc::new(tokio::sync::Semaphore::new(DECISION_CONCURRENCY)),
            routing_slots: Arc::new(tokio::sync::Semaphore::new(ROUTING_CONCURRENCY)),
            allow_client_address: false,
            allow_workload_restarts: false,
            readiness: crate::readiness::Readiness::default(),
            routed: Arc::new(std::sync::Mutex::new((std::time::Instant::now(), HashMap::new()))),
            warnings: Arc::default(),
            discovery: None,
        }
    }

    /// One `Api` per watched scope.
    pub fn scopes<K>(&self) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        if self.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.namespaces.iter().map(|ns| Api::namespaced(self.client.clone(), ns)).collect()
        }
    }

    /// Note that the routing of the cluster with uid `uid` was just written.
    pub fn routed(&self, uid: &str) {
        self.routed.lock().expect("routed lock").1.insert(uid.to_owned(), std::time::Instant::now());
    }

    /// Seconds since the routing of the cluster with uid `uid` was last written (by this
    /// process; at most since it started, since another may have written it just before).
    pub fn routing_quiet_secs(&self, uid: &str) -> f64 {
        let routed = self.routed.lock().expect("routed lock");
        routed.1.get(uid).unwrap_or(&routed.0).elapsed().as_secs_f64()
    }

    /// Forget the routing time of a cluster that is gone.
    pub fn forget_routed(&self, uid: &str) {
        self.routed.lock().expect("routed lock").1.remove(uid);
    }

    /// Publish a Kubernetes Event about `obj`; failures are logged, never fatal. Each Normal
    /// event is its own Event (role changes must not be folded into a series that keeps only
    /// the first note); a Warning repeated with the same reason and note is counted in the
    /// first one's `series` (see [`events::Series`]).
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: Reason, action: EventAction, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        use k8s_openapi::{api::events::v1::Event as EventV1, apimachinery::pkg::apis::meta::v1::MicroTime};
        let (reason, action) = (reason.as_str(), action.as_str());
        let regarding = obj.object_ref(&());
        let ns = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let note: String = note.chars().take(1024).collect();
        let uid = regarding.uid.clone().unwrap_or_default();
        let api: Api<EventV1> = Api::namespaced(self.client.clone(), &ns);
        if warning {
            let publish =
                self.warnings.lock().expect("warnings lock").observe(&uid, reason, &note, Instant::now());
            match publish {
                events::Publish::Create => {}
                events::Publish::Skip => return,
                events::Publish::Patch { name, count } => {
                    let patch = serde_json::json!({"series": {
                        "count": count,
                        "lastObservedTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
                    }});
                    let _slot = self.api_slots.acquire().await.expect("never closed");
                    let pp = kube::api::PatchParams::default();
                    if let Err(e) = api.patch(&name, &pp, &kube::api::Patch::Merge(&patch)).await {
                        warn!(error = %e, reason, "could not update an event's series");
                    }
                    return;
                }
            }
        }
        let ev = EventV1 {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}-", regarding.name.clone().unwrap_or_default())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(note.clone()),
            regarding: Some(regarding),
            reporting_controller: Some("understudy.dev/operator".into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let _slot = self.api_slots.acquire().await.expect("never closed");
        let created = api.create(&kube::api::PostParams::default(), &ev).await;
        if let Err(e) = &created {
            warn!(error = %e, reason, "could not publish event");
        }
        if warning {
            let name = created.ok().and_then(|e| e.metadata.name);
            self.warnings.lock().expect("warnings lock").created(&uid, reason, &note, name);
        }
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("Secret {0} not found")]
    NotFound(String),
    #[error("Secret {secret} has no key {key}")]
    MissingKey { secret: String, key: String },
    #[error("reading Secret {0}: {1}")]
    Api(String, kube::Error),
}

/// Read credentials for an engine from `secret_ref` in `namespace`. `default_key` is
/// `password` (redis) or `token` (agent). Also returns the optional `ca.crt`.
pub async fn read_credentials(
    client: &Client,
    namespace: &str,
    secret_ref: Option<&SecretKeyRef>,
    default_key: &str,
) -> Result<(Credentials, Option<Vec<u8>>), CredentialsError> {
    let Some(r) = secret_ref else { return Ok((Credentials::default(), None)) };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(|e| CredentialsError::Api(r.name.clone(), e))?
        .ok_or_else(|| CredentialsError::NotFound(r.name.clone()))?;
    credentials_from(r, &secret.data.unwrap_or_default(), default_key)
}

type SecretData = Arc<BTreeMap<String, ByteString>>;
type SecretSlot = Arc<tokio::sync::Mutex<Option<(Instant, Option<SecretData>)>>>;

/// Secrets read by the monitors, each fetched at most once per [`SecretCache::TTL`] however
/// many clusters name it (10,000 clusters sharing one Secret cost one GET per TTL, not
/// 10,000). Callers of one Secret queue behind a single fetch; API errors are not cached.
#[derive(Clone, Default)]
pub struct SecretCache {
    slots: Arc<std::sync::Mutex<HashMap<(String, String), SecretSlot>>>,
}

impl SecretCache {
    /// How long a read Secret (or its absence) is believed: a rotated password or a Secret
    /// created late is noticed within this.
    pub const TTL: Duration = Duration::from_secs(30);
    /// A missing Secret is looked for again sooner: it is usually about to be created.
    pub const MISSING_TTL: Duration = Duration::from_secs(5);
    /// When members refuse the credentials, the Secret is re-read on every heartbeat: a
    /// rotated password or token takes effect at once, not after a whole TTL.
    pub const REFUSED_TTL: Duration = Duration::ZERO;

    /// The data of `namespace/name`, or `None` when it does not exist, read at most `max_age`
    /// ago (at most `max_age` or [`SecretCache::MISSING_TTL`], whichever is shorter, for a
    /// Secret that did not exist).
    pub async fn get(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        max_age: Duration,
    ) -> Result<Option<SecretData>, kube::Error> {
        let slot = {
            let mut slots = self.slots.lock().expect("secret cache lock");
            slots.entry((namespace.to_owned(), name.to_owned())).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some((at, data)) = cached.as_ref()
            && at.elapsed() < if data.is_some() { max_age } else { max_age.min(Self::MISSING_TTL) }
        {
            return Ok(data.clone());
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let data = api.get_opt(name).await?.map(|s| Arc::new(s.data.unwrap_or_default()));
        *cached = Some((Instant::now(), data.clone()));
        Ok(data)
    }
}

/// [`read_credentials`] through the shared [`SecretCache`].
pub async fn cached_credentials(
    ctx: &Context,
    namespace: &str,
    secret_ref: Option<&SecretKeyRef>,
    default_key: &str,
    max_age: Duration,
) -> Result<(Credentials, Option<Vec<u8>>), CredentialsError> {
    let Some(r) = secret_ref else { return Ok((Credentials::default(), None)) };
    let data = ctx
        .secrets
        .get(&ctx.client, namespace, &r.name, max_age)
        .await
        .map_err(|e| CredentialsError::Api(r.name.clone(), e))?
        .ok_or_else(|| CredentialsError::NotFound(r.name.clone()))?;
    credentials_from(r, &data, default_key)
}

fn credentials_from(
    r: &SecretKeyRef,
    data: &BTreeMap<String, ByteString>,
    default_key: &str,
) -> Result<(Credentials, Option<Vec<u8>>), CredentialsError> {
    let text = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).trim_end_matches('\n').to_owned());
    let key = r.key.as_deref().unwrap_or(default_key);
    let secret_value =
        text(key).ok_or_else(|| CredentialsError::MissingKey { secret: r.name.clone(), key: key.into() })?;
    Ok((
        Credentials { username: text("username"), secret: Some(secret_value) },
        data.get("ca.crt").map(|v| v.0.clone()),
    ))
}

/// Errors of the operation controllers: transient API failures, retried.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The reconcile panicked (a bug): the object is retried with backoff and every other
    /// object goes on being served.
    #[error("reconcile panicked: {0}")]
    Panic(String),
}

impl OpError {
    /// What kind of failure this is, for the `reconcile_errors` metric and the log level.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(e) => kube_error_kind(e),
            Self::Panic(_) => "panic",
        }
    }
}

/// The message a panic carried (`panic!` with a literal or a formatted string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".into())
}

/// A kube client error as a short label.
pub fn kube_error_kind(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 409 => "conflict",
        kube::Error::Api(s) if s.code == 404 => "not-found",
        kube::Error::Api(s) if s.code == 403 || s.code == 401 => "forbidden",
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => "invalid",
        kube::Error::Api(s) if s.code >= 500 || s.code == 429 => "unavailable",
        kube::Error::Api(_) => "api-error",
        kube::Error::SerdeError(_) => "unreadable",
        _ => "unavailable",
    }
}

/// Per-object exponential backoff for failed reconciles: 500 ms doubling to 60 s, reset by
/// a success, so a persistent failure of one object costs little and hides nothing.
#[derive(Clone, Default)]
pub struct Backoff(Arc<std::sync::Mutex<HashMap<String, u32>>>);

impl Backoff {
    /// The delay before retrying `key` after another failure.
    pub fn failed(&self, key: &str) -> Duration {
        let mut m = self.0.lock().expect("backoff lock");
        let n = m.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_millis(500u64.saturating_mul(1u64 << (*n - 1).min(7))).min(Duration::from_secs(60))
    }

    pub fn succeeded(&self, key: &str) {
        self.0.lock().expect("backoff lock").remove(key);
    }
}

/// An object the operator cannot read: it passed the API server's schema but not the
/// operator's types (a duration too long for it, a status someone else wrote). It is reported
/// once per generation — condition `SpecValid=False` (reason `InvalidObject`), a warning
/// Event and a log line — and otherwise left alone until it changes; every other object is
/// handled as usual.
pub async fn report_invalid<K>(ctx: &Context, invalid: &InvalidObject)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    /// (uid, generation, error) of the objects already reported.
    type Reported = std::sync::Mutex<std::collections::HashSet<(String, Option<i64>, String)>>;
    static REPORTED: std::sync::LazyLock<Reported> = std::sync::LazyLock::new(Default::default);
    let meta = &invalid.metadata;
    let first = REPORTED.lock().expect("reported lock").insert((
        meta.uid.clone().unwrap_or_default(),
        meta.generation,
        invalid.error.clone(),
    ));
    if !first {
        return;
    }
    let (ns, name) = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
    let kind = K::kind(&()).to_string();
    let message = format!(
        "the operator cannot read this {kind}: {}; nothing is done with it until it is fixed",
        invalid.error
    );
    let object = format!("{ns}/{name}");
    warn!(kind = %kind, %object, error = %invalid.error, "an object the operator cannot read is left alone");
    let now = k8s_openapi::jiff::Timestamp::now();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": ConditionType::SpecValid.as_str(), "status": "False",
        "reason": Reason::InvalidObject.as_str(), "message": message,
        "lastTransitionTime": now.to_string(), "observedGeneration": meta.generation,
    }]}});
    let api: Api<DeserializeGuard<K>> = Api::namespaced(ctx.client.clone(), &ns);
    if let Err(e) =
        api.patch_status(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await
    {
        warn!(kind = %kind, %object, error = %e, "could not report the unreadable object in its status");
    }
    let guard: DeserializeGuard<K> = DeserializeGuard(Err(invalid.clone()));
    ctx.event(&guard, true, Reason::InvalidObject, EventAction::Validate, message).await;
}

/// Run a kube-runtime Controller for `K` in every watched scope: reconciles and errors are
/// counted under `name`, a failed reconcile is retried after 2 s. Used by the operation
/// controllers (ShardFailover, FailoverRequest), which differ only in their reconcile.
/// `wakes(object, cluster)`: whether a change of that HaCluster should reconcile the object
/// besides the operation whose lock the cluster names (a group, a cluster it protects).
pub async fn run_controller<K, F, Fut>(
    ctx: Context,
    name: &'static str,
    reconcile: F,
    wakes: fn(&K, &crate::resources::HaCluster) -> bool,
) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(std::sync::Arc<K>, std::sync::Arc<Context>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<kube::runtime::controller::Action, OpError>> + Send + 'static,
{
    use futures::{FutureExt as _, StreamExt as _};
    use kube::runtime::{Controller, controller::Action, watcher};
    let ctx = std::sync::Arc::new(ctx);
    let label = crate::metrics::ControllerLabels { controller: name.into() };
    let mut runs = Vec::new();
    // Objects the operator cannot read are kept as errors (DeserializeGuard): one malformed
    // object is reported and skipped instead of stalling the watch of all the others.
    for api in ctx.scopes::<DeserializeGuard<K>>() {
        let (reconcile, label) = (reconcile.clone(), label.clone());
        let backoff = Backoff::default();
        let backoff_ok = backoff.clone();
        let kind = K::kind(&()).to_string();
        let mut controller = Controller::new(api, watcher::Config::default().any_semantic());
        ctx.readiness.track(controller.store());
        let objects = controller.store();
        // An operation is woken by changes of the HaCluster whose lock it holds (the monitor
        // recording a promotion), and an object by those `wakes` says it wants — not only by
        // its own requeue. The clusters of every watched namespace: a group's sites, and the
        // clusters it locks, may be in other namespaces than the group.
        for clusters in ctx.scopes::<DeserializeGuard<crate::resources::HaCluster>>() {
            let (kind, objects) = (kind.clone(), objects.clone());
            controller =
                controller.watches(clusters, watcher::Config::default().any_semantic(), move |guarded| {
                    let Ok(hac) = guarded.0 else { return Vec::new() };
                    let ns = hac.namespace();
                    let mut refs = hac
                        .status
                        .iter()
                        .flat_map(|s| s.shards.iter())
                        .filter_map(|s| s.operation.as_ref())
                        .filter(|l| l.kind == kind)
                        .map(|l| {
                            let r = kube::runtime::reflector::ObjectRef::<DeserializeGuard<K>>::new(&l.name);
                            match l.namespace.clone().or_else(|| ns.clone()) {
                                Some(n) => r.within(&n),
                                None => r,
                            }
                        })
                        .collect::<Vec<_>>();
                    refs.extend(
                        objects
                            .state()
                            .iter()
                            .filter(|o| o.0.as_ref().is_ok_and(|k| wakes(k, &hac)))
                            .map(|o| kube::runtime::reflector::ObjectRef::from_obj(o.as_ref())),
                    );
                    refs
                });
        }
        let run = controller
            .run(
                move |obj: std::sync::Arc<DeserializeGuard<K>>, ctx: std::sync::Arc<Context>| {
                    use tracing::Instrument as _;
                    ctx.metrics.reconciles.get_or_create(&label).inc();
                    let reconcile = reconcile.clone();
                    let backoff = backoff_ok.clone();
                    let object = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
                    let span = tracing::info_span!("reconcile", controller = name, %object);
                    async move {
                        let r = match &obj.0 {
                            Ok(k) => {
                                // A panic would unwind through the controller's stream and end
                                // the process, and on restart do it again: one object would
                                // stop the operator for every other.
                                let work = async {
                                    crate::faults::panic_point(&format!("reconcile-{name}"));
                                    reconcile(std::sync::Arc::new(k.clone()), ctx).await
                                };
                                std::panic::AssertUnwindSafe(work)
                                    .catch_unwind()
                                    .await
                                    .unwrap_or_else(|p| Err(OpError::Panic(panic_message(p.as_ref()))))
                            }
                            Err(invalid) => {
                                report_invalid::<K>(&ctx, invalid).await;
                                Ok(Action::await_change())
                            }
                        };
                        if r.is_ok() {
                            backoff.succeeded(&object);
                        }
                        r
                    }
                    .instrument(span)
                },
                move |obj: std::sync::Arc<DeserializeGuard<K>>, err: &OpError, ctx: std::sync::Arc<Context>| {
                    let labels =
                        crate::metrics::ErrorLabels { controller: name.into(), error: err.kind().into() };
                    ctx.metrics.reconcile_errors.get_or_create(&labels).inc();
                    let object = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
                    let delay = backoff.failed(&object);
                    match err.kind() {
                        // An optimistic-concurrency retry is ordinary: someone else wrote first.
                        "conflict" => debug!(controller = name, %object, error = %err, "conflict; retrying"),
                        kind => {
                            warn!(controller = name, %object, error = %err, kind, ?delay, "reconcile failed; retrying")
                        }
                    }
                    Action::requeue(delay)
                },
                ctx.clone(),
            )
            .for_each(move |r| async move {
                if let Err(e) = r {
                    debug!(controller = name, error = %e, "reconcile");
                }
            });
        runs.push(run.boxed());
    }
    // A controller stream never ends while the process runs (watches retry for ever): one
    // that does leaves the operator blind to that kind, so it stops and its pod is restarted.
    let (_, which, _) = futures::future::select_all(runs).await;
    anyhow::bail!("the {name} controller's stream {which} ended")
}

/// Replace `obj`'s status with `status` (resourceVersion-guarded), unless it is unchanged.
pub async fn write_status<K>(api: &Api<K>, obj: &K, status: K::Status) -> Result<(), kube::Error>
where
    K: kube::core::object::HasStatus
        + Resource
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::Status: PartialEq,
{
    if obj.status() == Some(&status) {
        return Ok(());
    }
    let mut next = obj.clone();
    *next.status_mut() = Some(status);
    api.replace_status(&obj.name_any(), &put_params(), &next).await.map(|_| ())
}

/// Run every controller until one fails or `leading` turns false.
pub async fn run_all(ctx: Context, mut leading: watch::Receiver<bool>) -> anyhow::Result<()> {
    // Per scope: HaClusters and Pods (HaCluster controller), HaClusters (instances
    // controller) and one store per operation controller (ShardFailover, FailoverRequest,
    // ProtectionGroup).
    ctx.readiness.expect_caches(ctx.scopes::<crate::resources::HaCluster>().len() * 6);
    tokio::select! {
        r = hacluster::run(ctx.clone()) => r,
        r = instances::run(ctx.clone()) => r,
        r = run_controller(ctx.clone(), "shardfailover", shard_failover::reconcile, |_, _| false) => r,
        r = run_controller(ctx.clone(), "failoverrequest", failover_request::reconcile, |_, _| false) => r,
        r = run_controller(ctx.clone(), "protectiongroup", protection_group::reconcile, protection_group::wakes) => r,
        _ = leading.wait_for(|l| !*l) => Ok(()),
    }
}

/// `name.namespace` for logs.
pub fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Exponential backoff for requeues: 1s, 2s, 4s … capped at 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(8)).min(Duration::from_secs(300))
}

/// Seconds from a recorded status time until now (negative clock skew counts as 0).
pub(crate) fn seconds_since(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    let d = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
    d.as_secs_f64().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_and_resets_on_success() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.failed("ns/a").as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
        assert_eq!(b.failed("ns/b").as_millis(), 500, "per object");
        b.succeeded("ns/a");
        assert_eq!(b.failed("ns/a").as_millis(), 500);
    }

    #[test]
    fn kube_errors_have_short_kinds() {
        let api = |code| kube::Error::Api(kube::core::Status { code, ..Default::default() }.into());
        assert_eq!(kube_error_kind(&api(409)), "conflict");
        assert_eq!(kube_error_kind(&api(404)), "not-found");
        assert_eq!(kube_error_kind(&api(403)), "forbidden");
        assert_eq!(kube_error_kind(&api(503)), "unavailable");
        assert_eq!(kube_error_kind(&api(418)), "api-error");
    }
}
