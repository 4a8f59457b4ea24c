//! The ProtectionGroup controller (seed 002): pairs of HaClusters replicating from a
//! production site to a DR site, and the planned failover that reverses them.
//!
//! Steady state: for every pair the production cluster is a normal HaCluster and its DR
//! counterpart is a standby of it (published in the clusters' `status.protection`, a field
//! this controller alone writes, so that the user's spec stays the user's); the controller
//! reports per-pair state and lag; phase `protected` when every pair replicates.
//!
//! Planned failover (spec.prioritySite ≠ status.productionSite), allowed in `protected` or
//! `error-reversing`: lock every cluster of both sites (the monitors then keep their hands
//! off) → decide per pair from what the leaders say ([`crate::core::site`]) → stop writes
//! at the production leaders → wait until every DR leader has everything (offsets equal) →
//! demote the production leaders (they follow the DR leaders) → promote the DR leaders →
//! reverse the standby relation → resume writes → release the locks → wait
//! until the new production clusters route to their primaries. No instant has two writable
//! leaders in a pair: a production leader is demoted before its DR leader is promoted.
//!
//! A reconcile advances one step recorded in `status.step`: `lock` (retried every 500 ms
//! while another operation holds a lock; nothing in the data plane changes) → the switch
//! (`decide` … `reverse`: the only step that pauses writes, one future bounded by the job's
//! deadline whose paused writes are resumed if it is dropped, e.g. on a lost leadership) →
//! `reroute`. Each step is idempotent and the switch is decided from the data plane, so a
//! restarted operator goes on from the recorded step (phase `FailingOver`); a failure leaves the group in
//! `error-reversing` with the reason, and re-asserting the spec (the `understudy.dev/retry`
//! annotation, or changing `prioritySite` back) completes or reverts the move.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::{info, warn};

use super::{Context, OpError as Error, key, operation, read_credentials};
use crate::{
    core::{
        site::{self, Leader, PairMove},
        vocabulary::{Action as EventAction, ConditionType, Reason},
    },
    engines::{self, Engine, Probe},
    resources::{
        HaCluster, ProtectionGroup,
        hacluster::{Protection, Role, ShardEndpoint, ShardYield, Standby},
        protection_group::{
            DetachPolicy, DryRunReport, ForcedFailoverRecord, ForcedPair, PairStatus, ProtectionGroupStatus,
            ProtectionPhase as Phase, ProtectionState, ShardPairStatus, Site, SiteRole,
        },
        shared::{remove_condition, set_condition},
    },
};

pub const LOCK_KIND: &str = "ProtectionGroup";
/// Lock kind on clusters in another control plane (the holder cannot be looked up there).
pub const REMOTE_LOCK_KIND: &str = "RemoteProtectionGroup";
/// Held by every group until its pairs are detached by its policy.
pub const FINALIZER: &str = "understudy.dev/protection-group";
/// Changing this annotation re-asserts the spec after `error-reversing`.
pub const RETRY_ANNOTATION: &str = "understudy.dev/retry";
/// Field manager of the `status.protection` field of HaClusters, which this controller owns
/// (and of `spec.standby`, which versions before it wrote).
const STANDBY_MANAGER: &str = "understudy-protectiongroup";
/// Lag changes smaller than this (bytes) are not worth a status write.
const LAG_NOISE: i64 = 1 << 20;
/// How often the group renews `status.protection.contactAt` on a production cluster it
/// reaches (see [`crate::resources::hacluster::Protection::contact_at`]).
const CONTACT_RENEW: Duration = Duration::from_secs(5);
/// How long a request to another site's API server may take to connect, and to answer.
const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REMOTE_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long renewing the group's contact may hold up a reconcile.
const CONTACT_RENEW_BUDGET: Duration = Duration::from_secs(2);
/// How long a probe of a leader may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forced failover waits for a leader of the site declared lost before it takes
/// it for silent: the site was declared lost, and every second here is a second without a
/// writable site. One that answers later is still fenced (its clusters yield to the new
/// production site on their next heartbeat).
const FORCED_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One side of the group: where its clusters live.
#[derive(Clone)]
struct SiteHandle {
    namespace: String,
    client: Client,
    remote: bool,
}

/// One shard of one cluster of a pair, with what its leader said.
#[derive(Clone)]
struct Side {
    cluster: HaCluster,
    api: Api<HaCluster>,
    engine: Arc<dyn Engine>,
    /// The shard of `cluster` this side is (a pair of clusters of more than one shard is
    /// handled shard by shard, by name).
    shard: String,
    leader: Option<Leader>,
    /// Why this side's cluster could not be read (its site's API server is unreachable, or
    /// its Secret): only while a forced failover is authorised or a lost site is awaited.
    /// `cluster` is then a stand-in with the pair's name and the other side's spec.
    lost: Option<String>,
}

impl Side {
    /// Endpoints of the members the spec lists in this side's shard (protection groups take
    /// static shards).
    fn endpoints(&self) -> Vec<String> {
        self.cluster
            .spec
            .shards
            .iter()
            .flatten()
            .filter(|s| s.name == self.shard)
            .flat_map(|s| s.members.iter().map(|m| m.endpoint.clone()))
            .collect()
    }
}

/// Production leaders whose writes a move paused. However the move ends — also when its
/// future is dropped half-way (leadership lost, shutdown) — their writes are given back when
/// this is dropped, instead of staying paused until the pause expires (up to a minute).
/// Giving writes back is always safe: a leader already demoted refuses them as a replica.
struct PausedWrites(Vec<(Arc<dyn Engine>, String)>);

impl Drop for PausedWrites {
    fn drop(&mut self) {
        let paused = std::mem::take(&mut self.0);
        if paused.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for (engine, endpoint) in paused {
                    if let Err(e) = engine.resume_writes(&endpoint).await {
                        warn!(%endpoint, error = %e, "could not resume writes (the pause expires by itself)");
                    }
                }
            });
        }
    }
}

/// One shard of a pair of the spec: a pair of one-shard clusters is one, a pair of clusters
/// of more than one shard is one per shard. Everything in the data plane (leaders, moves,
/// contacts, fencing) is per shard; the relation between the clusters and the locks are per
/// pair of clusters.
struct Pair {
    source: Side,
    target: Side,
    /// Index of the pair in `spec.pairs` (and `status.pairs`).
    index: usize,
    /// The shard, in a pair of clusters of more than one shard.
    shard: Option<String>,
}

impl Pair {
    fn side(&self, role: SiteRole) -> &Side {
        match role {
            SiteRole::Source => &self.source,
            SiteRole::Target => &self.target,
        }
    }
    fn name(&self) -> String {
        let shard = self.shard.as_ref().map(|s| format!(" shard {s}")).unwrap_or_default();
        format!("{}/{}{shard}", self.source.cluster.name_any(), self.target.cluster.name_any())
    }
    /// Whether this is the first shard of its pair of clusters (where per-cluster work is done).
    fn first_of(pairs: &[Pair], i: usize) -> bool {
        i == 0 || pairs[i - 1].index != pairs[i].index
    }
    /// Its pair's recorded status.
    fn recorded<'a>(&self, status: &'a ProtectionGroupStatus) -> Option<&'a PairStatus> {
        status.pairs.get(self.index)
    }
    /// The lag last recorded for this shard of its pair.
    fn recorded_lag(&self, status: &ProtectionGroupStatus) -> Option<i64> {
        self.recorded_shard(status)?.lag
    }
    /// This shard's recorded state, lag and message: its pair's own fields for a pair of
    /// one-shard clusters, its entry in the pair's `shards` otherwise.
    fn recorded_shard(&self, status: &ProtectionGroupStatus) -> Option<ShardPairStatus> {
        let p = self.recorded(status)?;
        match &self.shard {
            None => Some(pair_as_shard(p)),
            Some(s) => p.shards.iter().find(|x| &x.shard == s).cloned(),
        }
    }
    /// Whether `f` is the forced-failover record of this shard of its pair.
    fn is_recorded_in(&self, f: &ForcedPair) -> bool {
        f.source == self.source.cluster.name_any()
            && f.target == self.target.cluster.name_any()
            && f.shard == self.shard
    }
}

pub async fn reconcile(pg: Arc<ProtectionGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pg.namespace().unwrap_or_default();
    let api: Api<ProtectionGroup> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide on the newest object, not the cache's copy: a status we wrote a moment ago
    // (a finished move) must not be mistaken for one still in progress.
    let Some(pg) = api.get_opt(&pg.name_any()).await? else { return Ok(Action::await_change()) };
    let pg = Arc::new(pg);
    let mut w = Writer { api, obj: (*pg).clone() };
    let mut status = pg.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());

    let deleting = pg.metadata.deletion_timestamp.is_some();
    if !deleting && !pg.finalizers().iter().any(|f| f == FINALIZER) {
        // Deleting a group detaches its pairs by its policy first: nothing half-configured.
        let mut finalizers = pg.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": pg.resource_version()}});
        w.api.patch(&pg.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    let sites = match connect(&ctx, &pg).await {
        Ok(s) => s,
        Err(msg) => {
            if !matches!(status.phase, Some(Phase::FailingOver | Phase::FailedOver)) {
                status.phase = Some(Phase::Error);
            }
            return not_ready(&mut w, status, Reason::SiteUnreachable, msg).await;
        }
    };
    let stopping = deleting || pg.spec.protection == ProtectionState::Stopped;
    if stopping && status.phase != Some(Phase::FailingOver) {
        return stop_protection(&ctx, &mut w, &sites, status, deleting).await;
    }
    // Not while a forced failover is asked for and not done: the site it leaves may not
    // answer at all.
    let forcing = pg.spec.forced_failover.as_ref().is_some_and(|f| Some(f.to) != status.production_site);
    if !forcing
        && tokio::time::timeout(CONTACT_RENEW_BUDGET, renew_contact(&pg, &sites, &status)).await.is_err()
    {
        tracing::debug!(group = %key(&*pg), "renewing the group's contact did not finish in time; next reconcile");
    }
    // A forced failover authorised for the wanted site, a lost site awaited after one, or a
    // forced dry run: a site that cannot be reached does not stop the group.
    let want = pg.spec.priority_site;
    let forced = pg.spec.forced_failover.as_ref().filter(|f| f.to == want).map(|f| f.reason.clone());
    let dry = dry_run_request(&pg).filter(|d| status.dry_run.as_ref().is_none_or(|r| r.request != d.request));
    let lenient =
        forced.is_some() || status.phase == Some(Phase::FailedOver) || dry.as_ref().is_some_and(|d| d.forced);
    let mut pairs = match load_pairs(&pg, &sites, lenient).await {
        Ok(p) => p,
        Err((reason, msg)) => {
            if !matches!(status.phase, Some(Phase::FailingOver | Phase::FailedOver)) {
                status.phase = Some(Phase::Error);
            }
            return not_ready(&mut w, status, reason, msg).await;
        }
    };
    // Leaders are probed where what they say is used (a dry run, steady state): a move probes
    // them itself when it decides, and a silent leader costs a probe timeout each time.
    let mut probed = false;
    if let Some(d) = dry {
        probe_leaders(&mut pairs, PROBE_TIMEOUT).await;
        probed = true;
        let report = dry_run(&pairs, &status, d, forced.is_some());
        info!(group = %key(&*pg), request = %report.request, possible = report.possible, "dry run answered");
        ctx.event(
            &*pg,
            false,
            Reason::DryRunAnswered,
            EventAction::DryRun,
            format!(
                "dry run {}: {}",
                report.request,
                if report.possible { report.steps.join(" → ") } else { report.blockers.join("; ") }
            ),
        )
        .await;
        status.dry_run = Some(report);
    }

    // Status is input like any other (anyone granted `*/status` can write it): in a steady
    // state, where each pair replicates from (the cluster that is not a standby) wins over
    // what status claims, so a forged production site never starts a move.
    if status.phase == Some(Phase::Protected) {
        let corrected = correct_production(&mut status, &pairs);
        if !corrected.is_empty() {
            warn!(pg = %pg.name_any(), pairs = ?corrected, "status named another production site than the pairs show; corrected from the pairs");
        }
    }
    // First sight: the production site is where the pairs already replicate from, else the
    // priority site (the DR side's data is then replaced by the production side's).
    let production = *status.production_site.get_or_insert_with(|| adopt(&pg, &pairs));
    status.replication_direction.get_or_insert_with(|| production.direction().into());

    let retry = pg.annotations().get(RETRY_ANNOTATION).cloned();
    let reasserted = status.phase == Some(Phase::ErrorReversing)
        && (pg.metadata.generation != status.observed_generation || retry != status.observed_retry);
    let all_at_want =
        pairs.iter().all(|p| p.recorded(&status).and_then(|p| p.production).unwrap_or(production) == want);
    // In error-reversing nothing moves until the spec is re-asserted (a new generation or
    // retry annotation): every attempt pauses production writes, so no automatic retries.
    let move_wanted = match status.phase {
        Some(Phase::FailingOver) => true,
        Some(Phase::ErrorReversing) => reasserted,
        _ => !all_at_want || want != production,
    };

    if move_wanted && status.phase != Some(Phase::FailingOver) {
        // A forced failover is for when things are broken: any phase but a move under way.
        let allowed =
            forced.is_some() || matches!(status.phase, Some(Phase::Protected | Phase::ErrorReversing));
        if pairs.is_empty() || !allowed {
            let (reason, msg) = if pairs.is_empty() {
                (
                    Reason::NoReplicationPairs,
                    "a planned failover needs replication pairs; nothing was changed".to_owned(),
                )
            } else {
                (
                    Reason::NotProtected,
                    format!(
                        "a planned failover to {} is allowed only in phase Protected or ErrorReversing (phase is {}); nothing was changed",
                        want.as_str(),
                        phase_name(status.phase)
                    ),
                )
            };
            set_condition(
                &mut status.conditions,
                ConditionType::FailoverAllowed,
                false,
                reason,
                msg,
                pg.metadata.generation,
                &now,
            );
            if !probed {
                probe_leaders(&mut pairs, PROBE_TIMEOUT).await;
            }
            steady(&ctx, &pg, &sites, &pairs, &mut status).await;
            w.save(&status).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
    }
    if move_wanted {
        return run_move(&ctx, &mut w, &sites, pairs, status, want, retry, forced).await;
    }
    remove_condition(&mut status.conditions, ConditionType::FailoverAllowed);
    if !probed {
        probe_leaders(&mut pairs, PROBE_TIMEOUT).await;
    }
    if status.phase == Some(Phase::FailedOver) {
        fence_returned(&ctx, &pg, &sites, &pairs, &mut status).await;
    }
    account_yields(&pairs, &mut status);
    steady(&ctx, &pg, &sites, &pairs, &mut status).await;
    w.save(&status).await?;
    // Probing is cheap but not free: a protected group is looked at every 5 s (HaCluster
    // changes of locked clusters wake it at once), anything else every 2 s.
    let every = if status.phase == Some(Phase::Protected) { 5 } else { 2 };
    Ok(Action::requeue(Duration::from_secs(every)))
}

fn phase_name(p: Option<Phase>) -> String {
    p.map_or("unknown".into(), |p| {
        serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    })
}

/// Status writes of the group: resourceVersion-guarded; on a conflict (the spec was edited)
/// the newest object is read and the write repeated — the status is ours alone.
struct Writer {
    api: Api<ProtectionGroup>,
    obj: ProtectionGroup,
}

impl Writer {
    /// Err unless the status is written: after five conflicts in a row the last one is
    /// returned, so a step is never taken as recorded when it was not.
    async fn save(&mut self, status: &ProtectionGroupStatus) -> Result<(), kube::Error> {
        let mut conflict = None;
        for _ in 0..5 {
            if self.obj.status.as_ref() == Some(status) {
                return Ok(());
            }
            let mut next = self.obj.clone();
            next.status = Some(status.clone());
            match self.api.replace_status(&self.obj.name_any(), &super::put_params(), &next).await {
                Ok(o) => {
                    self.obj = o;
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    self.obj = self.api.get(&self.obj.name_any()).await?;
                    conflict = Some(kube::Error::Api(e));
                }
                Err(e) => return Err(e),
            }
        }
        Err(conflict.expect("five conflicts"))
    }
}

/// Clients for both sites. A remote site is reached through the kubeconfig in a Secret of
/// the group's namespace; errors never quote the Secret's content.
async fn connect(ctx: &Context, pg: &ProtectionGroup) -> Result<[SiteHandle; 2], String> {
    let ns = pg.namespace().unwrap_or_default();
    let handle = |site: &Site| {
        let (ctx, ns, site) = (ctx.clone(), ns.clone(), site.clone());
        async move {
            let client = match &site.kubeconfig_secret_ref {
                None => ctx.client.clone(),
                Some(r) => {
                    remote_client(&ctx.client, &ns, &r.name, r.key.as_deref().unwrap_or("kubeconfig")).await?
                }
            };
            Ok::<_, String>(SiteHandle {
                namespace: site.namespace.clone(),
                client,
                remote: site.kubeconfig_secret_ref.is_some(),
            })
        }
    };
    Ok([handle(&pg.spec.sites.source).await?, handle(&pg.spec.sites.target).await?])
}

type ClientCache = Mutex<HashMap<(String, String, String), (String, Client)>>;

async fn remote_client(local: &Client, ns: &str, name: &str, key: &str) -> Result<Client, String> {
    static CACHE: OnceLock<ClientCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let secret = Api::<Secret>::namespaced(local.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?
        .ok_or_else(|| format!("kubeconfig Secret {name} not found"))?;
    let rv = secret.resource_version().unwrap_or_default();
    let ck = (ns.to_owned(), name.to_owned(), key.to_owned());
    if let Some((cached_rv, c)) = cache.lock().expect("cache").get(&ck)
        && *cached_rv == rv
    {
        return Ok(c.clone());
    }
    let data: std::collections::BTreeMap<String, ByteString> = secret.data.unwrap_or_default();
    let text = data
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .ok_or_else(|| format!("Secret {name} has no key {key}"))?;
    let kc = kube::config::Kubeconfig::from_yaml(&text)
        .map_err(|_| format!("Secret {name} key {key} is not a valid kubeconfig"))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|_| {
            format!(
                "Secret {name} key {key}: the kubeconfig cannot be used (no current context, user or cluster)"
            )
        })?;
    // Only single requests go to another site (no watches): a site whose API server is cut
    // off (packets dropped, not refused) is given up on in seconds, not kube's defaults of
    // 30 s to connect and 295 s to read, which would hold up a forced failover.
    cfg.connect_timeout = Some(REMOTE_CONNECT_TIMEOUT);
    cfg.read_timeout = Some(REMOTE_READ_TIMEOUT);
    let client = Client::try_from(cfg).map_err(|e| format!("Secret {name}: cannot build a client: {e}"))?;
    cache.lock().expect("cache").insert(ck, (rv, client.clone()));
    Ok(client)
}

/// Read both clusters of every pair and build their engines. `lenient`: a side whose site
/// cannot be reached (a forced failover is authorised, or a lost site is awaited) becomes a
/// stand-in marked `lost` instead of failing the whole group; one side of each pair must
/// be readable.
async fn load_pairs(
    pg: &ProtectionGroup,
    sites: &[SiteHandle; 2],
    lenient: bool,
) -> Result<Vec<Pair>, (Reason, String)> {
    let mut out = Vec::new();
    for p in &pg.spec.pairs {
        let mut sides: Vec<Result<Side, (Reason, String)>> = Vec::new();
        for (site, name) in [(&sites[0], &p.source), (&sites[1], &p.target)] {
            sides.push(load_side(site, name).await);
        }
        let target = sides.pop().expect("two sides");
        let source = sides.pop().expect("two sides");
        let unreachable = |r: &Result<Side, (Reason, String)>| {
            matches!(r, Err((Reason::SiteUnreachable | Reason::SecretNotFound, _)))
        };
        let (source, target) = match (source, target) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), Ok(t)) if lenient && unreachable(&Err(e.clone())) => {
                (stand_in(&p.source, &sites[0], &t, e.1), t)
            }
            (Ok(s), Err(e)) if lenient && unreachable(&Err(e.clone())) => {
                let t = stand_in(&p.target, &sites[1], &s, e.1);
                (s, t)
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if source.cluster.spec.engine != target.cluster.spec.engine {
            return Err((
                Reason::UnsupportedEngine,
                format!(
                    "the pair {} → {} runs two engines ({:?} and {:?}); a pair replicates one engine's data",
                    p.source, p.target, source.cluster.spec.engine, target.cluster.spec.engine
                ),
            ));
        }
        let index = out.last().map_or(0, |l: &Pair| l.index + 1);
        for (shard, (s, t)) in shard_pairs(&source, &target)? {
            out.push(Pair {
                source: Side { shard: s, leader: None, ..source.clone() }.with_leader(),
                target: Side { shard: t, leader: None, ..target.clone() }.with_leader(),
                index,
                shard,
            });
        }
    }
    Ok(out)
}

/// The shards of a pair of clusters, paired: (the pair's shard name when there are more
/// than one, (source shard, target shard)). One shard on both sides: those two, whatever
/// their names; otherwise shard by shard, by name — the same names on both sides (a lost
/// side's are the other's).
#[allow(clippy::type_complexity)]
fn shard_pairs(
    source: &Side,
    target: &Side,
) -> Result<Vec<(Option<String>, (String, String))>, (Reason, String)> {
    let names = |s: &Side| -> Vec<String> {
        let mut n: Vec<String> = s.cluster.spec.shards.iter().flatten().map(|x| x.name.clone()).collect();
        n.sort();
        n
    };
    let (mut sn, mut tn) = (names(source), names(target));
    if source.lost.is_some() {
        sn = tn.clone();
    }
    if target.lost.is_some() {
        tn = sn.clone();
    }
    let pair = format!("{} → {}", source.cluster.name_any(), target.cluster.name_any());
    if let ([s], [t]) = (&sn[..], &tn[..]) {
        return Ok(vec![(None, (s.clone(), t.clone()))]);
    }
    if sn != tn {
        return Err((
            Reason::UnsupportedCluster,
            format!(
                "the pair {pair} has shards {} and {}: clusters of more than one shard are paired shard by shard, by name, so both need the same shards",
                sn.join(", "),
                tn.join(", ")
            ),
        ));
    }
    Ok(sn.into_iter().map(|n| (Some(n.clone()), (n.clone(), n))).collect())
}

/// A side whose cluster cannot be read: its name, the other side's spec (so its engine and
/// members' shape are known), no leader.
fn stand_in(name: &str, site: &SiteHandle, other: &Side, why: String) -> Side {
    let mut cluster = HaCluster::new(name, other.cluster.spec.clone());
    cluster.metadata.namespace = Some(site.namespace.clone());
    cluster.spec.shards = None;
    Side {
        api: Api::namespaced(site.client.clone(), &site.namespace),
        engine: other.engine.clone(),
        shard: String::new(),
        leader: None,
        lost: Some(why),
        cluster,
    }
}

impl Side {
    /// With the recorded leader of its shard.
    fn with_leader(mut self) -> Self {
        self.leader = recorded_leader(&self.cluster, &self.shard);
        self
    }
}

/// Read one cluster of a pair and build its engine.
async fn load_side(site: &SiteHandle, name: &str) -> Result<Side, (Reason, String)> {
    let api: Api<HaCluster> = Api::namespaced(site.client.clone(), &site.namespace);
    let where_ = if site.remote { " (remote site)" } else { "" };
    let cluster = api
        .get_opt(name)
        .await
        .map_err(|e| {
            (Reason::SiteUnreachable, format!("reading HaCluster {}/{name}{where_}: {e}", site.namespace))
        })?
        .ok_or_else(|| {
            (
                Reason::ClusterNotFound,
                format!("HaCluster {}/{name}{where_} of a pair does not exist", site.namespace),
            )
        })?;
    let shards = cluster.spec.shards.as_ref().map_or(0, Vec::len);
    if cluster.pod_membership().is_some() || shards == 0 {
        return Err((
            Reason::UnsupportedCluster,
            format!("HaCluster {name}: protection groups support clusters of static shards (spec.shards)"),
        ));
    }
    let timeout = cluster.spec.failover.step_timeout.0.max(Duration::from_millis(500));
    let (creds, ca) = read_credentials(
        &site.client,
        &site.namespace,
        cluster.spec.secret_ref.as_ref(),
        cluster.spec.engine.secret_key(),
    )
    .await
    .map_err(|e| (Reason::SecretNotFound, format!("HaCluster {name}: {e}")))?;
    Ok(Side {
        api,
        // No lease: the cluster's monitor renews it with every heartbeat.
        engine: Arc::from(engines::for_cluster(cluster.spec.engine, creds, ca.as_deref(), timeout, None)),
        shard: String::new(),
        leader: None,
        lost: None,
        cluster,
    })
}

/// A shard's recorded primary (a standby cluster's leader) and its endpoint.
fn recorded_leader(c: &HaCluster, shard: &str) -> Option<Leader> {
    let s = c.status.as_ref()?.shards.iter().find(|s| s.name == shard)?;
    let name = s.current_primary.clone()?;
    let endpoint = s.members.iter().find(|m| m.name == name)?.endpoint.clone()?;
    Some(Leader { name, endpoint, probe: None })
}

async fn probe(engine: &dyn Engine, endpoint: &str) -> Option<Probe> {
    probe_within(engine, endpoint, PROBE_TIMEOUT).await
}

async fn probe_within(engine: &dyn Engine, endpoint: &str, timeout: Duration) -> Option<Probe> {
    tokio::time::timeout(timeout, engine.probe(endpoint)).await.ok()?.ok()
}

/// Every leader at once, each within `timeout`.
async fn probe_leaders(pairs: &mut [Pair], timeout: Duration) {
    let sides = pairs.iter_mut().flat_map(|p| [&mut p.source, &mut p.target]);
    futures::future::join_all(sides.filter_map(|side| {
        let engine = side.engine.clone();
        side.leader.as_mut().map(|l| async move {
            l.probe = probe_within(engine.as_ref(), &l.endpoint, timeout).await;
        })
    }))
    .await;
}

/// The production side a pair shows: the one of its clusters that is not a standby.
fn observed_production(p: &Pair) -> Option<SiteRole> {
    match (p.source.cluster.standby().is_some(), p.target.cluster.standby().is_some()) {
        (false, true) => Some(SiteRole::Source),
        (true, false) => Some(SiteRole::Target),
        _ => None,
    }
}

/// Make status's production sites agree with what the pairs show; returns the pairs whose
/// recorded production was wrong.
fn correct_production(status: &mut ProtectionGroupStatus, pairs: &[Pair]) -> Vec<String> {
    let mut corrected = Vec::new();
    for p in clusters(pairs) {
        let Some(observed) = observed_production(p) else { continue };
        if let Some(ps) = status.pairs.get_mut(p.index)
            && ps.production.is_some_and(|r| r != observed)
        {
            ps.production = Some(observed);
            corrected.push(p.name());
        }
    }
    let mut seen: Vec<SiteRole> = pairs.iter().filter_map(observed_production).collect();
    seen.dedup();
    if let [only] = seen[..]
        && status.production_site.is_some_and(|r| r != only)
    {
        status.production_site = Some(only);
        status.replication_direction = Some(only.direction().into());
        corrected.push("productionSite".into());
    }
    corrected
}

/// A cluster this group protects in this control plane that has no relation yet (created, or
/// deleted and re-created) wakes the group, so its side is published at once — a DR cluster
/// elects nothing until it is — instead of at the next periodic reconcile.
pub fn wakes(pg: &ProtectionGroup, cluster: &HaCluster) -> bool {
    cluster.status.as_ref().and_then(|s| s.protection.as_ref()).is_none()
        && pg.spec.local_pair(&cluster.namespace().unwrap_or_default(), &cluster.name_any()).is_some()
}

fn adopt(pg: &ProtectionGroup, pairs: &[Pair]) -> SiteRole {
    pairs.iter().find_map(observed_production).unwrap_or(pg.spec.priority_site)
}

/// What the DR cluster of a pair should follow: the production cluster by name within one
/// control plane, or its leaders' endpoints across two (one address for a one-shard pair,
/// one per shard otherwise). `None` while not known (a remote upstream whose primaries are
/// not all known is left as it is). `pairs`: every shard of the pair; `production`: its
/// production site.
fn standby_for(pairs: &[&Pair], production: SiteRole, sites: &[SiteHandle; 2]) -> Option<Standby> {
    let cluster = &pairs.first()?.side(production).cluster;
    if sites.iter().any(|s| s.remote) {
        let status = cluster.status.as_ref()?;
        if status.shards.iter().any(|s| s.target_primary.is_some()) {
            return None;
        }
        let leaders: Option<Vec<(String, String)>> = pairs
            .iter()
            .map(|p| {
                let s = p.side(production);
                s.leader.as_ref().map(|l| (s.shard.clone(), l.endpoint.clone()))
            })
            .collect();
        let leaders = leaders?;
        let one = (leaders.len() == 1).then(|| leaders[0].1.clone());
        return Some(Standby {
            cluster: None,
            namespace: None,
            primary_endpoint: one.clone(),
            shard_endpoints: if one.is_some() {
                Vec::new()
            } else {
                leaders.into_iter().map(|(shard, endpoint)| ShardEndpoint { shard, endpoint }).collect()
            },
        });
    }
    Some(Standby {
        cluster: Some(cluster.name_any()),
        namespace: cluster.namespace(),
        primary_endpoint: None,
        shard_endpoints: Vec::new(),
    })
}

/// Every shard of the pair of clusters at `index`.
fn shards_of(pairs: &[Pair], index: usize) -> Vec<&Pair> {
    pairs.iter().filter(|q| q.index == index).collect()
}

/// Publish a cluster's side of the relation in its `status.protection` (`standby: None` on
/// the production side), by server-side apply of exactly that field under this
/// controller's field manager. Never in the spec, which belongs to the user and to the tool
/// that applies the user's manifests. A `spec.standby` that an earlier version of this
/// controller wrote is removed once the status carries the relation.
async fn set_standby(
    side: &Side,
    group: &str,
    standby: Option<Standby>,
    yield_to: Vec<String>,
    yield_to_shards: Vec<ShardYield>,
) -> Result<(), kube::Error> {
    let name = side.cluster.name_any();
    let mut yield_to = yield_to;
    yield_to.sort();
    yield_to.dedup();
    // The group's contact is renewed by renew_contact and withdrawn by a forced move only.
    let contact_at =
        side.cluster.status.as_ref().and_then(|s| s.protection.as_ref()).and_then(|p| p.contact_at.clone());
    let want = Protection {
        group: group.to_owned(),
        standby,
        yield_to,
        yield_to_shards,
        detached: false,
        contact_at,
    };
    publish(side, Some(want)).await?;
    if side.cluster.spec.standby.is_some() && spec_standby_is_ours(&side.cluster) {
        let pp = PatchParams { field_manager: Some(STANDBY_MANAGER.into()), ..Default::default() };
        side.api.patch(&name, &pp, &Patch::Merge(json!({"spec": {"standby": null}}))).await?;
    }
    Ok(())
}

/// The group vouches for the other site on every production cluster it reaches, pairs in
/// error included (a DR cluster deleted and re-created elects a primary of its own before the
/// group makes it a standby again; production must not follow it): `status.protection.
/// contactAt` renewed once it is [`CONTACT_RENEW`] old. Not while a move is under way or a
/// forced failover awaits its fence — then a member of `yieldTo` acting as a primary may
/// well be the new production site.
async fn renew_contact(pg: &ProtectionGroup, sites: &[SiteHandle; 2], status: &ProtectionGroupStatus) {
    let Some(production) = status.production_site else { return };
    if matches!(status.phase, Some(Phase::FailingOver | Phase::FailedOver))
        || status.last_forced_failover.as_ref().is_some_and(|f| f.pairs.iter().any(|p| p.fenced_at.is_none()))
    {
        return;
    }
    let group = key(pg);
    let site = &sites[if production == SiteRole::Source { 0 } else { 1 }];
    let api: Api<HaCluster> = Api::namespaced(site.client.clone(), &site.namespace);
    for p in &pg.spec.pairs {
        let name = if production == SiteRole::Source { &p.source } else { &p.target };
        let Ok(Some(c)) = api.get_opt(name).await else { continue };
        let Some(have) = c.status.as_ref().and_then(|s| s.protection.as_ref()) else { continue };
        if have.group != group || have.standby.is_some() || have.detached {
            continue;
        }
        let fresh = have
            .contact_at
            .as_ref()
            .is_some_and(|t| Timestamp::now().duration_since(t.0).unsigned_abs() < CONTACT_RENEW);
        if fresh {
            continue;
        }
        let want = Protection { contact_at: Some(Time(Timestamp::now())), ..have.clone() };
        let body = json!({"apiVersion": HaCluster::api_version(&()), "kind": HaCluster::kind(&()), "status": {"protection": want}});
        if let Err(e) =
            api.patch_status(name, &PatchParams::apply(STANDBY_MANAGER).force(), &Patch::Apply(&body)).await
        {
            tracing::debug!(%group, cluster = %name, error = %e, "could not renew the group's contact");
        }
    }
}

/// Server-side apply of exactly `status.protection` under this controller's field manager:
/// `None` removes it (the cluster is an ordinary one again). Skipped when it already says so.
async fn publish(side: &Side, want: Option<Protection>) -> Result<(), kube::Error> {
    let have = side.cluster.status.as_ref().and_then(|s| s.protection.as_ref());
    if have == want.as_ref() {
        return Ok(());
    }
    let status = match &want {
        Some(p) => json!({"protection": p}),
        None => json!({}),
    };
    let body =
        json!({"apiVersion": HaCluster::api_version(&()), "kind": HaCluster::kind(&()), "status": status});
    side.api
        .patch_status(
            &side.cluster.name_any(),
            &PatchParams::apply(STANDBY_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
}

/// Whether `spec.standby` was written by this controller (before it published the relation
/// in status) and by no one else.
fn spec_standby_is_ours(c: &HaCluster) -> bool {
    let owns = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry| {
        m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:standby")).is_some())
    };
    let owners: Vec<_> = c.managed_fields().iter().filter(|m| owns(m)).collect();
    !owners.is_empty() && owners.iter().all(|m| m.manager.as_deref() == Some(STANDBY_MANAGER))
}

/// One status per pair of clusters from its shards' (in the order of `pairs`): a pair of
/// one-shard clusters is its shard; otherwise the shards are listed and the pair shows the
/// worst of their states, the largest lag and what its shards say.
fn fold(pairs: &[Pair], units: Vec<PairStatus>) -> Vec<PairStatus> {
    /// Worst first.
    const ORDER: [&str; 10] = [
        "Broken",
        "Blocked",
        "SiteLost",
        "Syncing",
        "Force",
        "Move",
        "PromoteOnly",
        "InPlace",
        "Detached",
        "Replicating",
    ];
    let mut out: Vec<PairStatus> = Vec::new();
    for (p, u) in pairs.iter().zip(units) {
        let Some(shard) = &p.shard else {
            out.push(u);
            continue;
        };
        let entry = ShardPairStatus {
            shard: shard.clone(),
            state: u.state.clone(),
            lag: u.lag,
            message: u.message.clone(),
        };
        match out.get_mut(p.index) {
            Some(pair) => pair.shards.push(entry),
            None => out.push(PairStatus { shards: vec![entry], ..u }),
        }
    }
    for p in out.iter_mut().filter(|p| !p.shards.is_empty()) {
        let rank = |s: &str| ORDER.iter().position(|o| *o == s).unwrap_or(0);
        if let Some(worst) = p.shards.iter().min_by_key(|x| rank(&x.state)) {
            p.state = worst.state.clone();
        }
        p.lag = p.shards.iter().filter_map(|x| x.lag).max();
        let said: Vec<String> =
            p.shards.iter().filter_map(|x| x.message.as_ref().map(|m| format!("{}: {m}", x.shard))).collect();
        p.message = (!said.is_empty()).then(|| said.join("; "));
    }
    out
}

/// Keep every pair replicating from its production side and report how it does.
async fn steady(
    ctx: &Context,
    pg: &ProtectionGroup,
    sites: &[SiteHandle; 2],
    pairs: &[Pair],
    status: &mut ProtectionGroupStatus,
) {
    let production = status.production_site.unwrap_or_default();
    let now = Time(Timestamp::now());
    let group = key(pg);
    // Each shard of each pair: how it replicates.
    let mut units = Vec::new();
    let mut replicating_units = Vec::new();
    for p in pairs {
        let prod = p.recorded(status).and_then(|s| s.production).unwrap_or(production);
        let (ps, ds) = (p.side(prod), p.side(prod.other()));
        let awaiting_fence = awaits_fence(status, p);
        let mut st = match (&ps.lost, &ds.lost) {
            (_, Some(why)) if awaiting_fence => site::PairState {
                state: "SiteLost",
                lag: None,
                message: Some(format!(
                    "{} does not answer ({why}); fenced when it returns",
                    ds.cluster.name_any()
                )),
            },
            (Some(why), _) | (_, Some(why)) => site::PairState {
                state: "Broken",
                lag: None,
                message: Some(format!("cannot be read: {why}")),
            },
            _ => site::pair_state(ps.leader.as_ref(), ds.leader.as_ref()),
        };
        remember_contact(&group, p, prod);
        replicating_units.push(st.state == "Replicating");
        if awaiting_fence && ds.lost.is_none() && st.state == "Replicating" {
            st.state = "Syncing";
        }
        // Lag is written when it moves by LAG_NOISE bytes or comes back to zero, so a busy
        // but healthy pair does not cost a status write every reconcile.
        if let Some(ShardPairStatus { state: prev_state, lag: Some(a), .. }) = p.recorded_shard(status)
            && prev_state == st.state
            && let Some(b) = st.lag
            && (a - b).abs() < LAG_NOISE
            && !(b == 0 && a != 0)
        {
            st.lag = Some(a);
        }
        units.push(PairStatus {
            source: p.source.cluster.name_any(),
            target: p.target.cluster.name_any(),
            production: Some(prod),
            state: st.state.into(),
            lag: st.lag,
            message: st.message,
            shards: Vec::new(),
        });
    }
    // The relation, per pair of clusters.
    for p in clusters(pairs) {
        let prod = p.recorded(status).and_then(|s| s.production).unwrap_or(production);
        let (ps, ds) = (p.side(prod), p.side(prod.other()));
        let told = ps.cluster.status.as_ref().and_then(|s| s.protection.as_ref());
        // The production side yields, shard by shard, to the other site's members once they
        // are known to replicate from it (so never to a site a forced failover left behind,
        // until it is fenced); otherwise what it was told stands.
        let mut yield_to = Vec::new();
        let mut yield_shards = Vec::new();
        let mut awaiting = false;
        for (j, q) in pairs.iter().enumerate().filter(|(_, q)| q.index == p.index) {
            awaiting |= awaits_fence(status, q);
            let members = match (&q.shard, replicating_units[j]) {
                (_, true) => q.side(prod.other()).endpoints(),
                (None, false) => told.map(|t| t.yield_to.clone()).unwrap_or_default(),
                (Some(sh), false) => told
                    .and_then(|t| t.yield_to_shards.iter().find(|y| &y.shard == sh))
                    .map(|y| y.members.clone())
                    .unwrap_or_default(),
            };
            yield_to.extend(members.iter().cloned());
            if let Some(sh) = &q.shard {
                yield_shards.push(ShardYield { shard: sh.clone(), members });
            }
        }
        if ps.lost.is_none()
            && let Err(e) = set_standby(ps, &group, None, yield_to, yield_shards).await
        {
            warn!(%group, cluster = %ps.cluster.name_any(), error = %e, "could not publish the production side");
        }
        if ds.lost.is_none()
            && !awaiting
            && let Some(v) = standby_for(&shards_of(pairs, p.index), prod, sites)
            && let Err(e) = set_standby(ds, &group, Some(v), Vec::new(), Vec::new()).await
        {
            warn!(%group, cluster = %ds.cluster.name_any(), error = %e, "could not set standby");
        }
    }
    let out = fold(pairs, units);
    let replicating = out.iter().filter(|p| p.state == "Replicating").count();
    let all = !out.is_empty() && replicating == out.len();
    let prev = status.phase;
    status.phase = Some(match prev {
        // Sticky until a planned failover (re-asserted) completes.
        Some(Phase::ErrorReversing) => Phase::ErrorReversing,
        // Sticky until the lost site is back, fenced, and replicates again.
        Some(Phase::FailedOver) if !all => Phase::FailedOver,
        _ if all => Phase::Protected,
        _ => Phase::Pending,
    });
    if prev != status.phase {
        status.last_transition_time = Some(now.clone());
        if status.phase == Some(Phase::Protected) {
            let again = if prev == Some(Phase::FailedOver) { "re-protected: " } else { "" };
            ctx.event(
                pg,
                false,
                Reason::Protected,
                EventAction::Replicate,
                format!("{again}{} pairs replicate {}", out.len(), production.direction()),
            )
            .await;
        }
    }
    let (ok, reason, msg) = match status.phase {
        Some(Phase::Protected) => {
            (true, Reason::Protected, format!("{replicating}/{} pairs replicate", out.len()))
        }
        // The failed move's reason stands until the spec is re-asserted.
        Some(Phase::ErrorReversing) => {
            status.pairs = out;
            return;
        }
        Some(Phase::FailedOver) => (
            false,
            Reason::ForcedFailover,
            format!(
                "production was moved to the {} site by a forced failover; not protected until the {} site returns and is fenced: {}",
                production.as_str(),
                production.other().as_str(),
                out.iter()
                    .map(|p| format!(
                        "{}/{}: {}",
                        p.source,
                        p.target,
                        p.message.clone().unwrap_or_else(|| p.state.clone())
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        _ if out.is_empty() => {
            (false, Reason::NoReplicationPairs, "the group has no replication pairs".into())
        }
        _ => (
            false,
            Reason::NotReplicating,
            out.iter()
                .filter(|p| p.state != "Replicating")
                .map(|p| {
                    format!(
                        "{}/{}: {}",
                        p.source,
                        p.target,
                        p.message.clone().unwrap_or_else(|| p.state.clone())
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    set_condition(
        &mut status.conditions,
        ConditionType::Ready,
        ok,
        reason,
        msg,
        pg.metadata.generation,
        &now,
    );
    status.pairs = out;
}

/// A step after writes were stopped: recorded if possible, but an API-server outage must not
/// leave the data plane half-way (the move is decided from the data plane on resume).
async fn progress(w: &mut Writer, status: &mut ProtectionGroupStatus, name: &str, message: String) {
    if let Err(e) = step(w, status, name, message).await {
        warn!(group = %key(&w.obj), step = name, error = %e, "could not record progress; carrying on");
    }
}

/// A step of the planned failover, recorded before it runs.
async fn step(
    w: &mut Writer,
    status: &mut ProtectionGroupStatus,
    name: &str,
    message: String,
) -> Result<(), kube::Error> {
    info!(group = %key(&w.obj), job = ?status.job_id, step = name, "{message}");
    status.step = Some(name.into());
    status.message = Some(message);
    w.save(status).await
}

/// Steps of a move in `status.step`. A reconcile advances one: `lock` (until every cluster
/// of both sites is locked) → the switch (one bounded future from `decide` through
/// `stop-writes`, `sync`, `demote`, `promote` and `reverse`, writes resumed even if it is
/// dropped) → `reroute` (until the new production clusters route to their primaries).
const STEP_LOCK: &str = "lock";
const STEP_DECIDE: &str = "decide";
const STEP_REROUTE: &str = "reroute";
/// The steps inside the switch: a move resumed at any of them runs the switch again, decided
/// from what the leaders say.
const SWITCH_STEPS: [&str; 7] = [STEP_DECIDE, "stop-writes", "sync", "demote", "force", "promote", "reverse"];

/// What one reconcile of a move did.
enum Next {
    /// Recorded in status; go on after this long.
    Again(Duration),
    /// The move ended (Ok: how long production writes were paused).
    End(Result<Option<Duration>, Failure>),
}

/// Carry out (or resume) the planned failover to `want`, one step per reconcile.
#[allow(clippy::too_many_arguments)]
async fn run_move(
    ctx: &Context,
    w: &mut Writer,
    sites: &[SiteHandle; 2],
    mut pairs: Vec<Pair>,
    mut status: ProtectionGroupStatus,
    want: SiteRole,
    retry: Option<String>,
    forced: Option<String>,
) -> Result<Action, Error> {
    let pg = w.obj.clone();
    let now = Timestamp::now();
    if forced.is_some() {
        // The group no longer vouches for the other site where it still reaches the site
        // being failed over from: its monitors follow a primary there on sight again.
        for p in clusters(&pairs) {
            let os = p.side(want.other());
            let have = os.cluster.status.as_ref().and_then(|s| s.protection.as_ref());
            if let Some(h) = have.filter(|h| os.lost.is_none() && h.contact_at.is_some())
                && let Err(e) = publish(os, Some(Protection { contact_at: None, ..h.clone() })).await
            {
                warn!(cluster = %os.cluster.name_any(), error = %e, "could not withdraw the group's contact");
            }
        }
    }
    if status.phase != Some(Phase::FailingOver) {
        let deadline = now + Duration::from_secs(pg.spec.timeout_seconds.max(5) as u64);
        status.job_id = Some(format!(
            "{}-{:x}",
            pg.uid().unwrap_or_default().split('-').next().unwrap_or("pg"),
            now.as_millisecond()
        ));
        status.job_started_at = Some(Time(now));
        status.job_deadline = Some(Time(deadline));
        status.phase = Some(Phase::FailingOver);
        status.step = None;
        status.last_write_pause_ms = None;
        status.last_transition_time = Some(Time(now));
        status.observed_generation = pg.metadata.generation;
        status.observed_retry = retry;
        remove_condition(&mut status.conditions, ConditionType::FailoverAllowed);
        set_condition(
            &mut status.conditions,
            ConditionType::Ready,
            false,
            Reason::FailingOver,
            match &forced {
                None => format!("planned failover to {} in progress", want.as_str()),
                Some(why) => format!(
                    "failover to {} in progress, forced where the other site does not answer ({why})",
                    want.as_str()
                ),
            },
            pg.metadata.generation,
            &Time(now),
        );
        ctx.event(
            &pg,
            false,
            Reason::FailingOver,
            EventAction::PlannedFailover,
            format!(
                "job {}: planned failover to the {} site",
                status.job_id.clone().unwrap_or_default(),
                want.as_str()
            ),
        )
        .await;
    }
    let deadline = status.job_deadline.as_ref().map_or(now + Duration::from_secs(60), |t| t.0);
    let job = status.job_id.clone().unwrap_or_default();
    let next = match status.step.as_deref() {
        Some(STEP_REROUTE) => reroute(w, &pairs, &mut status, want, deadline).await,
        Some(s) if SWITCH_STEPS.contains(&s) => {
            switch(w, sites, &mut pairs, &mut status, want, deadline, forced.as_deref()).await
        }
        _ => lock(w, sites, &pairs, &mut status, deadline).await,
    };
    let result = match next {
        Next::Again(after) => return Ok(Action::requeue(after)),
        Next::End(result) => result,
    };
    let took = status
        .job_started_at
        .as_ref()
        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default();
    // Whatever happened: the locks go, so the monitors take over again.
    release_all(&pg, &pairs).await;
    let now = Time(Timestamp::now());
    let was_forced = status.last_forced_failover.as_ref().is_some_and(|f| f.job_id == job);
    let (ok, reason, msg) = match result {
        Ok(_) if was_forced => {
            status.production_site = Some(want);
            status.replication_direction = Some(want.direction().into());
            status.phase = Some(Phase::FailedOver);
            status.step = Some("done".into());
            let lost: Vec<String> = status
                .last_forced_failover
                .iter()
                .flat_map(|f| &f.pairs)
                .map(|p| {
                    format!(
                        "{}/{}{}: {}",
                        p.source,
                        p.target,
                        p.shard.as_ref().map(|s| format!(" shard {s}")).unwrap_or_default(),
                        p.possible_loss
                            .map_or("loss unknown".into(), |b| format!("at least {b} bytes may be lost"))
                    )
                })
                .collect();
            let msg = format!(
                "job {job}: the {} site is production, forced while the {} site did not answer ({} ms; {}); the {} site is fenced and re-protected when it returns",
                want.as_str(),
                want.other().as_str(),
                took.as_millis(),
                lost.join("; "),
                want.other().as_str(),
            );
            (false, Reason::ForcedFailover, msg)
        }
        Ok(pause) => {
            status.production_site = Some(want);
            status.replication_direction = Some(want.direction().into());
            status.phase = Some(Phase::Protected);
            status.step = Some("done".into());
            status.last_write_pause_ms = pause.map(|d| d.as_millis() as i64);
            let msg = format!(
                "job {job}: the {} site is production; replication {} ({} ms{})",
                want.as_str(),
                want.direction(),
                took.as_millis(),
                pause.map(|p| format!(", writes paused {} ms", p.as_millis())).unwrap_or_default()
            );
            (true, Reason::FailedOver, msg)
        }
        Err(Failure { reason, message }) => {
            status.phase = Some(Phase::ErrorReversing);
            status.step = Some("failed".into());
            (false, reason, format!("job {job}: {message}"))
        }
    };
    status.message = Some(msg.clone());
    status.last_transition_time = Some(now.clone());
    set_condition(
        &mut status.conditions,
        ConditionType::Ready,
        ok,
        reason,
        msg.clone(),
        pg.metadata.generation,
        &now,
    );
    if ok {
        info!(group = %key(&pg), "{msg}");
    } else {
        warn!(group = %key(&pg), %reason, "{msg}");
    }
    let action = if was_forced { EventAction::ForcedFailover } else { EventAction::PlannedFailover };
    ctx.event(&pg, !ok, reason, action, msg).await;
    w.save(&status).await?;
    ctx.metrics.operation_finished(
        "ProtectionGroup",
        if was_forced {
            "FailedOver"
        } else if ok {
            "Succeeded"
        } else {
            "ErrorReversing"
        },
        Some(took.as_secs_f64()),
    );
    Ok(Action::requeue(Duration::from_millis(500)))
}

struct Failure {
    reason: Reason,
    message: String,
}

fn fail(reason: Reason, message: impl Into<String>) -> Failure {
    Failure { reason, message: message.into() }
}

fn holder(pg: &ProtectionGroup, remote: bool) -> operation::Holder {
    operation::Holder {
        force: false,
        kind: if remote { REMOTE_LOCK_KIND } else { LOCK_KIND }.into(),
        name: pg.name_any(),
        namespace: pg.namespace(),
        uid: pg.uid().unwrap_or_default(),
        dead_members: Vec::new(),
        dead_nodes: Vec::new(),
    }
}

fn remaining(deadline: Timestamp) -> Duration {
    let left: SignedDuration = deadline.duration_since(Timestamp::now());
    left.try_into().unwrap_or(Duration::ZERO)
}

/// Why not every cluster could be locked.
enum LockBlock {
    Busy { cluster: String, by: String },
    Api { cluster: String, error: kube::Error },
}

/// One attempt at the operation lock of every cluster of both sites (locks already ours are
/// kept, or renewed to `deadline` once expired).
async fn lock_once(
    pg: &ProtectionGroup,
    sites: &[SiteHandle; 2],
    pairs: &[Pair],
    deadline: Timestamp,
) -> Result<(), LockBlock> {
    for p in clusters(pairs) {
        for (side, remote) in [(&p.source, sites[0].remote), (&p.target, sites[1].remote)] {
            // A lost site's clusters cannot be locked (nor changed): a forced failover goes on
            // without them, and they are fenced when they return.
            if side.lost.is_some() {
                continue;
            }
            let cluster = side.cluster.name_any();
            let locked = match side.api.get(&cluster).await {
                Ok(c) => operation::lock_all(&side.api, &c, &holder(pg, remote), deadline).await,
                Err(e) => Err(e),
            };
            match locked {
                Ok(Ok(())) => {}
                Ok(Err(by)) => return Err(LockBlock::Busy { cluster, by }),
                Err(error) => return Err(LockBlock::Api { cluster, error }),
            }
        }
    }
    Ok(())
}

/// Take the operation lock of every cluster of both sites (one attempt per reconcile;
/// locks already ours are kept). Nothing in the data plane changes in this step.
async fn lock(
    w: &mut Writer,
    sites: &[SiteHandle; 2],
    pairs: &[Pair],
    status: &mut ProtectionGroupStatus,
    deadline: Timestamp,
) -> Next {
    let pg = w.obj.clone();
    let save_err = |e: kube::Error| {
        Next::End(Err(fail(Reason::StatusWriteFailed, format!("could not record progress: {e}"))))
    };
    if status.step.as_deref() != Some(STEP_LOCK)
        && let Err(e) = step(
            w,
            status,
            STEP_LOCK,
            format!("taking the operation lock of {} clusters", clusters(pairs).count() * 2),
        )
        .await
    {
        return save_err(e);
    }
    match lock_once(&pg, sites, pairs, deadline).await {
        Ok(()) => {}
        Err(LockBlock::Busy { cluster, by }) if remaining(deadline) > Duration::ZERO => {
            let message = format!("waiting: {by} holds the lock of {cluster}");
            if status.message.as_deref() != Some(message.as_str()) {
                status.message = Some(message.clone());
                set_condition(
                    &mut status.conditions,
                    ConditionType::Ready,
                    false,
                    Reason::DatabaseBusy,
                    message,
                    pg.metadata.generation,
                    &Time(Timestamp::now()),
                );
                if let Err(e) = w.save(status).await {
                    return save_err(e);
                }
            }
            return Next::Again(Duration::from_millis(500));
        }
        Err(LockBlock::Busy { cluster, by }) => {
            return Next::End(Err(fail(
                Reason::DatabaseBusy,
                format!("{by} held the lock of {cluster} until the deadline; nothing was changed"),
            )));
        }
        Err(LockBlock::Api { cluster, error }) => {
            return Next::End(Err(fail(Reason::SiteUnreachable, format!("locking {cluster}: {error}"))));
        }
    }
    match step(
        w,
        status,
        STEP_DECIDE,
        "every cluster is locked; deciding per pair from what the leaders say".into(),
    )
    .await
    {
        Ok(()) => Next::Again(Duration::ZERO),
        Err(e) => save_err(e),
    }
}

/// The switch: decide per pair, stop writes, wait for the DR site, demote, promote,
/// reverse, resume writes — one future, bounded by the job's deadline (plus a little for the
/// last step), whose writes come back if it is dropped ([`PausedWrites`]). Resumed at any of
/// its steps it runs again from the data plane.
async fn switch(
    w: &mut Writer,
    sites: &[SiteHandle; 2],
    pairs: &mut [Pair],
    status: &mut ProtectionGroupStatus,
    want: SiteRole,
    deadline: Timestamp,
    forced: Option<&str>,
) -> Next {
    // Resumed after the deadline (the operator was down): settle what is half-done under a
    // short fresh lock — promote where no leader is writable and no write is lost — and stop.
    let expired = remaining(deadline).is_zero();
    let deadline = if expired { Timestamp::now() + Duration::from_secs(60) } else { deadline };
    let bound = remaining(deadline) + Duration::from_secs(10);
    let run = async {
        if expired {
            match lock_once(&w.obj, sites, pairs, deadline).await {
                Ok(()) => {}
                Err(LockBlock::Busy { cluster, by }) => {
                    return Err(fail(
                        Reason::DatabaseBusy,
                        format!(
                            "the deadline passed while the operator was away and {by} holds the lock of {cluster}; re-assert the spec to settle the move"
                        ),
                    ));
                }
                Err(LockBlock::Api { cluster, error }) => {
                    return Err(fail(Reason::SiteUnreachable, format!("locking {cluster}: {error}")));
                }
            }
        }
        switch_pairs(w, sites, pairs, status, want, deadline, expired, forced).await
    };
    match tokio::time::timeout(bound, run).await {
        Ok(Ok(pause)) => {
            status.last_write_pause_ms = pause.map(|d| d.as_millis() as i64);
            // After the locks are released the new production clusters route to their
            // primaries; the next reconciles wait (bounded) until their status says so.
            release_all(&w.obj, pairs).await;
            match step(
                w,
                status,
                STEP_REROUTE,
                "waiting until the new production clusters route to their primaries".into(),
            )
            .await
            {
                Ok(()) => Next::Again(Duration::ZERO),
                // Not recorded: the switch runs again next time and finds everything in place.
                Err(e) => {
                    warn!(group = %key(&w.obj), error = %e, "could not record the end of the switch; it is checked again");
                    Next::Again(Duration::from_millis(500))
                }
            }
        }
        Ok(Err(failure)) => Next::End(Err(failure)),
        Err(_) => Next::End(Err(fail(
            Reason::DeadlineExceeded,
            format!("the switch did not finish within {} s; writes were resumed", bound.as_secs()),
        ))),
    }
}

/// Done when every new production cluster's status shows its leader as a healthy primary, or
/// at the job's deadline (their monitors finish routing by themselves).
async fn reroute(
    w: &mut Writer,
    pairs: &[Pair],
    status: &mut ProtectionGroupStatus,
    want: SiteRole,
    deadline: Timestamp,
) -> Next {
    let pause = status.last_write_pause_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
    let mut pending = Vec::new();
    for p in pairs {
        let s = p.side(want);
        let ok = s.api.get(&s.cluster.name_any()).await.ok().is_some_and(|c| {
            let l = recorded_leader(&c, &s.shard).map(|l| l.name);
            c.status.as_ref().and_then(|st| st.shards.iter().find(|x| x.name == s.shard)).is_some_and(|sh| {
                sh.target_primary.is_none()
                    && sh
                        .members
                        .iter()
                        .any(|m| Some(&m.name) == l.as_ref() && m.role == Role::Primary && m.healthy)
            })
        });
        if !ok {
            pending.push(format!("{} shard {}", s.cluster.name_any(), s.shard));
        }
    }
    if pending.is_empty() {
        return Next::End(Ok(pause));
    }
    if remaining(deadline).is_zero() {
        warn!(group = %key(&w.obj), clusters = ?pending, "new production clusters did not report their primary in time; their monitors finish routing");
        return Next::End(Ok(pause));
    }
    Next::Again(Duration::from_millis(100))
}

/// Steps 2–7 of the move. Ok(write pause) when every pair is production at `want`.
#[allow(clippy::too_many_arguments)]
async fn switch_pairs(
    w: &mut Writer,
    sites: &[SiteHandle; 2],
    pairs: &mut [Pair],
    status: &mut ProtectionGroupStatus,
    want: SiteRole,
    deadline: Timestamp,
    expired: bool,
    forced: Option<&str>,
) -> Result<Option<Duration>, Failure> {
    let save_err =
        |e: kube::Error| fail(Reason::StatusWriteFailed, format!("could not record progress: {e}"));
    // 2. Decide per pair from what the leaders say now (re-read: the locks are ours now).
    for p in pairs.iter_mut() {
        for side in [&mut p.source, &mut p.target] {
            if side.lost.is_some() {
                continue;
            }
            if let Ok(c) = side.api.get(&side.cluster.name_any()).await {
                side.leader = recorded_leader(&c, &side.shard);
                side.cluster = c;
            }
        }
    }
    probe_leaders(pairs, if forced.is_some() { FORCED_PROBE_TIMEOUT } else { PROBE_TIMEOUT }).await;
    let moves: Vec<PairMove> = pairs
        .iter()
        .map(|p| {
            let (w, o) = (p.side(want).leader.as_ref(), p.side(want.other()).leader.as_ref());
            if forced.is_some() { site::forced_pair_move(w, o) } else { site::pair_move(w, o) }
        })
        .collect();
    let blocked: Vec<String> = pairs
        .iter()
        .zip(&moves)
        .filter_map(|(p, m)| match m {
            PairMove::Blocked(why) => Some(format!("{}: {why}", p.name())),
            _ => None,
        })
        .collect();
    if !blocked.is_empty() && !expired {
        return Err(fail(Reason::PairNotReady, format!("{}; nothing was changed", blocked.join("; "))));
    }
    let moving: Vec<usize> = (0..pairs.len()).filter(|&i| moves[i] == PairMove::Move && !expired).collect();
    let forcing: Vec<usize> = (0..pairs.len()).filter(|&i| moves[i] == PairMove::Force && !expired).collect();
    let promoting: Vec<usize> = (0..pairs.len())
        .filter(|&i| moves[i] == PairMove::PromoteOnly || moving.contains(&i) || forcing.contains(&i))
        .collect();
    if !forcing.is_empty() {
        // Recorded before anything is promoted: what each forced pair may lose, from the
        // last time both of its leaders answered, and the offset it is promoted at.
        record_forced(w, pairs, status, want, &forcing, forced.unwrap_or_default())
            .await
            .map_err(save_err)?;
    }
    if expired {
        // Pairs that cannot be decided keep (or get back) their old production leader.
        let undecided: Vec<usize> =
            (0..pairs.len()).filter(|&i| matches!(moves[i], PairMove::Blocked(_))).collect();
        restore(pairs, &undecided, want).await;
    }

    // 3. Stop writes at the production leaders.
    let pause_started = Instant::now();
    let mut paused = PausedWrites(Vec::new());
    if !moving.is_empty() {
        step(w, status, "stop-writes", format!("pausing writes on {} production primaries", moving.len()))
            .await
            .map_err(save_err)?;
        let pause_for = remaining(deadline).min(Duration::from_secs(60)) + Duration::from_secs(2);
        for &i in &moving {
            let o = pairs[i].side(want.other());
            let l = o.leader.as_ref().expect("decided");
            // Armed before the pause: a future dropped while the command is in flight still
            // gives the writes back.
            paused.0.push((o.engine.clone(), l.endpoint.clone()));
            if let Err(e) = o.engine.pause_writes(&l.endpoint, pause_for).await {
                resume(pairs, &moving, want).await;
                return Err(fail(
                    Reason::StopWritesFailed,
                    format!("could not pause writes on {}: {e}; nothing was changed", l.name),
                ));
            }
        }
        // 4. Wait until every DR leader has everything.
        progress(w, status, "sync", "waiting until the DR primaries have every write".into()).await;
        let sync_deadline = Instant::now() + remaining(deadline).min(Duration::from_secs(60));
        loop {
            let mut behind = Vec::new();
            for &i in &moving {
                let (ws, os) = (pairs[i].side(want), pairs[i].side(want.other()));
                let (wl, ol) = (ws.leader.as_ref().expect("decided"), os.leader.as_ref().expect("decided"));
                let (wp, op) = futures::join!(
                    probe(ws.engine.as_ref(), &wl.endpoint),
                    probe(os.engine.as_ref(), &ol.endpoint)
                );
                match (wp, op) {
                    (Some(wp), Some(op)) if site::caught_up(&wp, &op) => {}
                    (Some(wp), Some(op)) => behind.push(format!(
                        "{} is {} bytes behind {}",
                        wl.name,
                        op.offset.unwrap_or(0) - wp.offset.unwrap_or(0),
                        ol.name
                    )),
                    (None, _) => behind.push(format!("{} does not answer", wl.name)),
                    (_, None) => behind.push(format!("{} does not answer", ol.name)),
                }
            }
            if behind.is_empty() {
                break;
            }
            if Instant::now() >= sync_deadline {
                resume(pairs, &moving, want).await;
                return Err(fail(
                    Reason::SyncTimeout,
                    format!(
                        "the DR site did not catch up: {}; writes resumed at the production site, nothing was promoted",
                        behind.join("; ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // 5. Demote the production leaders: they follow the DR leaders (no writable leader
        //    for a moment, never two).
        progress(w, status, "demote", format!("demoting {} production primaries", moving.len())).await;
        let mut demoted = Vec::new();
        for &i in &moving {
            let (ws, os) = (pairs[i].side(want), pairs[i].side(want.other()));
            let (wl, ol) = (ws.leader.as_ref().expect("decided"), os.leader.as_ref().expect("decided"));
            match os.engine.follow(&ol.endpoint, &wl.endpoint).await {
                Ok(()) => demoted.push(i),
                Err(e) => {
                    restore(pairs, &demoted, want).await;
                    resume(pairs, &moving, want).await;
                    return Err(fail(
                        Reason::DemoteFailed,
                        format!("could not demote {}: {e}; the production site keeps its roles", ol.name),
                    ));
                }
            }
        }
        crate::faults::crash_point("site-after-demote");
    }

    // 6. Promote the DR leaders.
    progress(w, status, "promote", format!("promoting {} DR primaries", promoting.len())).await;
    let results = futures::future::join_all(promoting.iter().map(|&i| {
        let ws = pairs[i].side(want);
        let l = ws.leader.as_ref().expect("decided");
        async move {
            match tokio::time::timeout(
                remaining(deadline).max(Duration::from_millis(500)),
                ws.engine.promote(&l.endpoint),
            )
            .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("promoting {}: {e}", l.name)),
                Err(_) => Err(format!("promoting {} did not finish by the deadline", l.name)),
            }
        }
    }))
    .await;
    let failed: Vec<(usize, String)> =
        promoting.iter().zip(results).filter_map(|(&i, r)| r.err().map(|e| (i, e))).collect();
    let pause = (!moving.is_empty()).then(|| pause_started.elapsed());
    if !failed.is_empty() {
        // Give the failed pairs their old production leader back; pairs that moved stay. A
        // pair of clusters moves whole or not at all (which cluster follows which is one
        // relation): its shards that were promoted follow their old production leaders again
        // first — promoted a moment ago, while writes were paused and clients still routed to
        // the production site.
        let failed_pairs: Vec<usize> = failed.iter().map(|(i, _)| pairs[*i].index).collect();
        let failed_idx: Vec<usize> =
            promoting.iter().copied().filter(|&i| failed_pairs.contains(&pairs[i].index)).collect();
        for &i in failed_idx.iter().filter(|i| !failed.iter().any(|(f, _)| f == *i)) {
            let (ws, os) = (pairs[i].side(want), pairs[i].side(want.other()));
            if let (Some(wl), Some(ol)) = (&ws.leader, &os.leader)
                && let Err(e) = ws.engine.follow(&wl.endpoint, &ol.endpoint).await
            {
                warn!(member = %wl.name, error = %e, "could not put back a promoted shard of a pair that did not move whole");
            }
        }
        restore(pairs, &failed_idx, want).await;
        let moved: Vec<usize> = promoting.iter().copied().filter(|i| !failed_idx.contains(i)).collect();
        record_pairs(w, sites, pairs, status, want, &moved).await;
        resume(pairs, &moving, want).await;
        let msgs: Vec<String> = failed.into_iter().map(|(_, m)| m).collect();
        return Err(fail(
            Reason::PromoteFailed,
            format!("{}; those pairs stay at the {} site", msgs.join("; "), want.other().as_str()),
        ));
    }
    crate::faults::crash_point("site-after-promote");

    // 7. Reverse: the specs say who follows whom; writes resume (refused as READONLY by the
    //    demoted leaders, so clients move to the new production site).
    progress(
        w,
        status,
        "reverse",
        "reversing replication: the old production clusters become standbys".into(),
    )
    .await;
    let done: Vec<usize> =
        (0..pairs.len()).filter(|&i| moves[i] == PairMove::InPlace || promoting.contains(&i)).collect();
    record_pairs(w, sites, pairs, status, want, &done).await;
    resume(pairs, &moving, want).await;
    if expired {
        return Err(fail(
            Reason::DeadlineExceeded,
            "the deadline passed while the operator was away; half-done pairs were settled, the others were not moved",
        ));
    }

    Ok(pause)
}

/// Specs and per-pair status of the pairs that now have their production at `want`.
async fn record_pairs(
    w: &mut Writer,
    sites: &[SiteHandle; 2],
    pairs: &[Pair],
    status: &mut ProtectionGroupStatus,
    want: SiteRole,
    moved: &[usize],
) {
    let group = key(&w.obj);
    let production = status.production_site.unwrap_or_default();
    let mut units: Vec<PairStatus> = pairs
        .iter()
        .map(|p| {
            let recorded = p.recorded(status);
            // A shard without an entry yet (the pair's first record by shard) starts from
            // its pair's.
            let was = p.recorded_shard(status).or_else(|| recorded.map(pair_as_shard));
            PairStatus {
                source: p.source.cluster.name_any(),
                target: p.target.cluster.name_any(),
                production: Some(recorded.and_then(|r| r.production).unwrap_or(production)),
                state: was.as_ref().map_or("Syncing".into(), |x| x.state.clone()),
                lag: was.as_ref().and_then(|x| x.lag),
                message: was.and_then(|x| x.message),
                shards: Vec::new(),
            }
        })
        .collect();
    for &i in moved {
        let ws = pairs[i].side(want);
        units[i].production = Some(want);
        units[i].state = "Syncing".into();
        units[i].message = Some(format!("{} is production", ws.cluster.name_any()));
    }
    // The relation is per pair of clusters: reversed once every shard of the pair moved (a
    // pair whose shards did not all move is put back by the caller).
    for p in clusters(pairs) {
        let shards: Vec<usize> = (0..pairs.len()).filter(|&j| pairs[j].index == p.index).collect();
        if !shards.iter().all(|j| moved.contains(j)) {
            continue;
        }
        let (ws, os) = (p.side(want), p.side(want.other()));
        // The new production cluster first (its leaders are the upstream the other follows).
        // Member roles are the monitors' to write: the published relation wakes them.
        // It yields to no one until the other side is seen replicating from it (steady state).
        if let Err(e) = set_standby(ws, &group, None, Vec::new(), Vec::new()).await {
            warn!(cluster = %ws.cluster.name_any(), error = %e, "could not publish the production side; retried in steady state");
        }
        if os.lost.is_none()
            && let Some(v) = standby_for(&shards_of(pairs, p.index), want, sites)
            && let Err(e) = set_standby(os, &group, Some(v), Vec::new(), Vec::new()).await
        {
            warn!(cluster = %os.cluster.name_any(), error = %e, "could not publish the standby side; retried in steady state");
        }
    }
    status.pairs = fold(pairs, units);
    let _ = w.save(status).await;
}

/// Give writes back to the production leaders of `idx` (a pause that is already over is fine).
async fn resume(pairs: &[Pair], idx: &[usize], want: SiteRole) {
    for &i in idx {
        let o = pairs[i].side(want.other());
        if let Some(l) = &o.leader
            && let Err(e) = o.engine.resume_writes(&l.endpoint).await
        {
            warn!(member = %l.name, error = %e, "could not resume writes (the pause expires by itself)");
        }
    }
}

/// Undo a demotion: the old production leader of each pair in `idx` becomes writable again,
/// unless its DR counterpart already is.
async fn restore(pairs: &[Pair], idx: &[usize], want: SiteRole) {
    for &i in idx {
        let (ws, os) = (pairs[i].side(want), pairs[i].side(want.other()));
        let (Some(wl), Some(ol)) = (&ws.leader, &os.leader) else { continue };
        let dr_writable = probe(ws.engine.as_ref(), &wl.endpoint)
            .await
            .is_some_and(|p| p.role == engines::ObservedRole::Primary);
        if dr_writable {
            continue;
        }
        if let Err(e) = os.engine.promote(&ol.endpoint).await {
            warn!(member = %ol.name, error = %e, "could not restore the old production primary");
        }
    }
}

/// A pair's own state, lag and message, as one shard's.
fn pair_as_shard(p: &PairStatus) -> ShardPairStatus {
    ShardPairStatus { shard: String::new(), state: p.state.clone(), lag: p.lag, message: p.message.clone() }
}

/// The first shard of each pair of clusters: where what is done per cluster is done.
fn clusters(pairs: &[Pair]) -> impl Iterator<Item = &Pair> {
    pairs.iter().enumerate().filter(|(i, _)| Pair::first_of(pairs, *i)).map(|(_, p)| p)
}

async fn release_all(pg: &ProtectionGroup, pairs: &[Pair]) {
    let uid = pg.uid().unwrap_or_default();
    for p in clusters(pairs) {
        for s in [&p.source, &p.target] {
            if let Err(e) = operation::release(&s.api, &s.cluster.name_any(), &uid).await {
                warn!(cluster = %s.cluster.name_any(), error = %e, "could not release the lock (it expires at the deadline)");
            }
        }
    }
}

/// The last time both leaders of a pair answered, and their offsets then: what a forced
/// failover reports it may lose. Kept in memory (a fresh operator process falls back on the
/// lag last written to status).
#[derive(Clone, Copy)]
struct Contact {
    at: Timestamp,
    production_offset: Option<i64>,
    dr_offset: Option<i64>,
}

/// Group key, source cluster, target cluster, shard.
type ContactKey = (String, String, String, Option<String>);

fn contacts() -> &'static Mutex<HashMap<ContactKey, Contact>> {
    static CONTACTS: OnceLock<Mutex<HashMap<ContactKey, Contact>>> = OnceLock::new();
    CONTACTS.get_or_init(Default::default)
}

fn contact_key(group: &str, p: &Pair) -> ContactKey {
    (group.to_owned(), p.source.cluster.name_any(), p.target.cluster.name_any(), p.shard.clone())
}

/// Note a contact when both leaders answered this reconcile (production first).
fn remember_contact(group: &str, p: &Pair, production: SiteRole) {
    let (ps, ds) = (p.side(production), p.side(production.other()));
    let offset = |s: &Side| s.leader.as_ref().and_then(|l| l.probe.as_ref()).map(|p| p.offset);
    if let (Some(po), Some(d)) = (offset(ps), offset(ds)) {
        let c = Contact { at: Timestamp::now(), production_offset: po, dr_offset: d };
        contacts().lock().expect("contacts").insert(contact_key(group, p), c);
    }
}

/// A pair that a forced failover left behind and that is not fenced yet.
fn awaits_fence(status: &ProtectionGroupStatus, p: &Pair) -> bool {
    status.phase == Some(Phase::FailedOver)
        && status
            .last_forced_failover
            .as_ref()
            .is_some_and(|f| f.pairs.iter().any(|fp| p.is_recorded_in(fp) && fp.fenced_at.is_none()))
}

/// Record, before anything is promoted, which pairs a failover forces and what each may lose.
async fn record_forced(
    w: &mut Writer,
    pairs: &[Pair],
    status: &mut ProtectionGroupStatus,
    want: SiteRole,
    forcing: &[usize],
    reason: &str,
) -> Result<(), kube::Error> {
    let group = key(&w.obj);
    let job = status.job_id.clone().unwrap_or_default();
    let mut out = Vec::new();
    for &i in forcing {
        let p = &pairs[i];
        let dr = p.side(want);
        let dr_offset = dr.leader.as_ref().and_then(|l| l.probe.as_ref()).and_then(|p| p.offset);
        let contact = contacts().lock().expect("contacts").get(&contact_key(&group, p)).copied();
        let lost = p.side(want.other()).lost.clone();
        let silent = lost.unwrap_or_else(|| "its leader does not answer".into());
        let (last_contact, possible_loss, message) = match contact {
            Some(c) => (
                Some(Time(c.at)),
                site::possible_loss(c.production_offset, dr_offset),
                format!(
                    "{} forced: {silent}; at the last contact ({}) it lagged {}; writes after that are not known until the lost side returns",
                    dr.cluster.name_any(),
                    Time(c.at).0,
                    site::possible_loss(c.production_offset, c.dr_offset)
                        .map_or("by an unknown amount".into(), |b| format!("{b} bytes"))
                ),
            ),
            None => (
                None,
                p.recorded_lag(status),
                format!(
                    "{} forced: {silent}; this operator process never saw both leaders answer, so the loss is the lag last written to status, and writes after it are not known",
                    dr.cluster.name_any()
                ),
            ),
        };
        out.push(ForcedPair {
            source: p.source.cluster.name_any(),
            target: p.target.cluster.name_any(),
            shard: p.shard.clone(),
            last_contact,
            possible_loss,
            promoted_at_offset: dr_offset,
            lost_offset: None,
            fenced_at: None,
            message: Some(message),
        });
    }
    status.last_forced_failover = Some(ForcedFailoverRecord {
        job_id: job,
        at: Time(Timestamp::now()),
        from: want.other(),
        to: want,
        reason: reason.to_owned(),
        pairs: out,
    });
    step(
        w,
        status,
        "force",
        format!(
            "forcing {} pairs ({} shards) whose {} side does not answer",
            forcing.iter().map(|&i| pairs[i].index).collect::<std::collections::BTreeSet<_>>().len(),
            forcing.len(),
            want.other().as_str()
        ),
    )
    .await
}

/// After a forced failover: a lost site's cluster that can be read again is fenced — every
/// member of it acting as a primary is made to follow the new production leader (what it
/// took after the promotion is measured where it can be, then discarded) — and then
/// published as a standby, from which steady state re-protects it.
async fn fence_returned(
    ctx: &Context,
    pg: &ProtectionGroup,
    sites: &[SiteHandle; 2],
    pairs: &[Pair],
    status: &mut ProtectionGroupStatus,
) {
    let production = status.production_site.unwrap_or_default();
    let group = key(pg);
    for p in clusters(pairs) {
        let shards = shards_of(pairs, p.index);
        if !shards.iter().any(|q| awaits_fence(status, q)) {
            continue;
        }
        let os = p.side(production.other());
        if os.lost.is_some() {
            continue;
        }
        // Each returned shard follows its own new production leader (a shard holds its own
        // part of the data): every one of them must act as a primary first.
        let leaders: Vec<Option<&Leader>> = shards
            .iter()
            .map(|q| {
                q.side(production)
                    .leader
                    .as_ref()
                    .filter(|l| l.probe.as_ref().is_some_and(|p| p.role == engines::ObservedRole::Primary))
            })
            .collect();
        if leaders.iter().any(Option::is_none) {
            continue;
        }
        let mut fenced: Vec<(String, Option<i64>, Vec<String>, String)> = Vec::new();
        let mut failed = Vec::new();
        let mut answered = 0;
        for (q, pl) in shards.iter().zip(leaders.into_iter().flatten()) {
            let promoted_at = status
                .last_forced_failover
                .as_ref()
                .and_then(|f| f.pairs.iter().find(|fp| q.is_recorded_in(fp)))
                .and_then(|fp| fp.promoted_at_offset);
            let mut measured: Option<i64> = None;
            let mut acting = Vec::new();
            for ep in q.side(production.other()).endpoints() {
                let Some(pr) = probe(os.engine.as_ref(), &ep).await else { continue };
                answered += 1;
                if pr.role != engines::ObservedRole::Primary {
                    continue;
                }
                acting.push(ep.clone());
                // Where it stopped taking writes, exactly where the engine can say; otherwise
                // the offset just probed (writes after it are not counted).
                let stopped_at = match os.engine.yield_to(&ep, &pl.endpoint).await {
                    Ok(at) => at.or(pr.offset),
                    Err(e) => {
                        failed.push(format!("{ep}: {e}"));
                        continue;
                    }
                };
                if let Some(l) = site::lost_on_return(stopped_at, promoted_at) {
                    measured = Some(measured.unwrap_or(0).max(l));
                }
            }
            fenced.push((q.shard.clone().unwrap_or_default(), measured, acting, pl.name.clone()));
        }
        if !failed.is_empty() {
            warn!(%group, cluster = %os.cluster.name_any(), errors = ?failed, "could not fence the returned site yet; retried");
            continue;
        }
        // Its API server answers but none of its members does: not back yet (a member that
        // returns as a primary is measured and fenced then).
        if answered == 0 {
            continue;
        }
        if let Some(v) = standby_for(&shards, production, sites)
            && let Err(e) = set_standby(os, &group, Some(v), Vec::new(), Vec::new()).await
        {
            warn!(%group, cluster = %os.cluster.name_any(), error = %e, "could not publish the returned site as a standby; retried");
            continue;
        }
        let said: Vec<String> = fenced
            .iter()
            .filter(|(_, _, acting, _)| !acting.is_empty())
            .map(|(shard, measured, acting, leader)| {
                format!(
                    "{}{} followed {leader} ({})",
                    if shard.is_empty() { String::new() } else { format!("shard {shard}: ") },
                    acting.join(", "),
                    measured.map_or("what it held beyond the promotion could not be measured".into(), |b| {
                        format!("{b} bytes beyond the promotion discarded")
                    })
                )
            })
            .collect();
        let what = if said.is_empty() {
            "none of its members acted as a primary (it had fenced itself, or restarted as replicas)"
                .to_owned()
        } else {
            said.join("; ")
        };
        let msg = format!("{} returned and was fenced: {what}; re-protecting it", os.cluster.name_any());
        info!(%group, "{msg}");
        for (q, (_, measured, _, _)) in shards.iter().zip(&fenced) {
            if let Some(fp) = status
                .last_forced_failover
                .as_mut()
                .and_then(|f| f.pairs.iter_mut().find(|fp| q.is_recorded_in(fp)))
            {
                fp.fenced_at = Some(Time(Timestamp::now()));
                fp.lost_offset = *measured;
                fp.message = Some(msg.clone());
            }
        }
        ctx.event(pg, false, Reason::SiteFenced, EventAction::Fence, msg).await;
    }
}

/// A returned site whose own monitor fenced its leader (made it follow the new production
/// site, `status.yielded`) before the group saw it acting as a primary: what it held beyond
/// the promotion is read from there into the forced failover's record.
fn account_yields(pairs: &[Pair], status: &mut ProtectionGroupStatus) {
    let Some(rec) = status.last_forced_failover.as_mut() else { return };
    let (forced_at, lost_site) = (rec.at.0, rec.from);
    for fp in rec.pairs.iter_mut().filter(|fp| fp.lost_offset.is_none()) {
        let Some(q) = pairs.iter().find(|q| q.is_recorded_in(fp)) else { continue };
        let side = q.side(lost_site);
        let yielded =
            side.cluster.status.as_ref().and_then(|s| s.yielded.iter().find(|y| y.shard == side.shard));
        let Some(y) = yielded else { continue };
        let fenced_at = fp.fenced_at.as_ref().map(|t| t.0);
        let Some(lost) = site::lost_by_yield(y.offset, y.at.0, forced_at, fenced_at, fp.promoted_at_offset)
        else {
            continue;
        };
        fp.lost_offset = Some(lost);
        let said = format!(
            "{} had fenced itself first: it was at offset {}, {lost} bytes beyond the promotion discarded",
            y.member, y.offset
        );
        fp.message = Some(match fp.message.take() {
            Some(m) => format!("{m}; {said}"),
            None => said,
        });
        info!(pair = %format!("{} → {}", fp.source, fp.target), lost, "what the returned site held is measured from where it yielded");
    }
}

/// Annotation asking for a dry run: `<Site>` (planned) or `<Site>/Forced`, optionally
/// followed by `@<anything>` so the same question can be asked again.
pub const DRY_RUN_ANNOTATION: &str = "understudy.dev/dry-run";

struct DryRunAsk {
    request: String,
    to: SiteRole,
    forced: bool,
    /// The value could not be read: said in the answer, nothing else is done.
    unreadable: Option<String>,
}

fn dry_run_request(pg: &ProtectionGroup) -> Option<DryRunAsk> {
    let v = pg.annotations().get(DRY_RUN_ANNOTATION)?;
    let ask = v.split('@').next().unwrap_or_default();
    let (site, mode) = match ask.split_once('/') {
        Some((s, m)) => (s, Some(m)),
        None => (ask, None),
    };
    let to = match site.to_ascii_lowercase().as_str() {
        "source" => Some(SiteRole::Source),
        "target" => Some(SiteRole::Target),
        _ => None,
    };
    let forced = mode.is_some_and(|m| m.eq_ignore_ascii_case("forced"));
    let unreadable = (to.is_none() || (mode.is_some() && !forced)).then(|| {
        format!("{DRY_RUN_ANNOTATION}={v:?} cannot be read: expected Source or Target, optionally followed by /Forced and by @<anything>")
    });
    Some(DryRunAsk { request: v.clone(), to: to.unwrap_or(pg.spec.priority_site), forced, unreadable })
}

/// What a failover to `ask.to` would do now, from what the leaders just said; touches
/// nothing.
fn dry_run(
    pairs: &[Pair],
    status: &ProtectionGroupStatus,
    ask: DryRunAsk,
    forced_authorised: bool,
) -> DryRunReport {
    if let Some(why) = ask.unreadable {
        return DryRunReport {
            request: ask.request,
            at: Time(Timestamp::now()),
            to: ask.to,
            forced: ask.forced,
            possible: false,
            steps: Vec::new(),
            blockers: vec![why],
            pairs: Vec::new(),
        };
    }
    let production = status.production_site.unwrap_or_default();
    let mut blockers = Vec::new();
    let mut steps = Vec::new();
    let mut out = Vec::new();
    if ask.to == production && status.phase != Some(Phase::ErrorReversing) {
        blockers.push(format!("the {} site is production already", ask.to.as_str()));
    }
    if pairs.is_empty() {
        blockers.push("the group has no replication pairs".into());
    }
    if !ask.forced && !matches!(status.phase, Some(Phase::Protected | Phase::ErrorReversing)) {
        blockers.push(format!(
            "a planned failover is allowed only in phase Protected or ErrorReversing (phase is {})",
            phase_name(status.phase)
        ));
    }
    let (mut moving, mut forcing, mut promoting) = (0, 0, 0);
    for p in pairs {
        let (w, o) = (p.side(ask.to).leader.as_ref(), p.side(ask.to.other()).leader.as_ref());
        let m = if ask.forced { site::forced_pair_move(w, o) } else { site::pair_move(w, o) };
        let lag = p.recorded_lag(status);
        let (state, message) = match &m {
            PairMove::InPlace => {
                ("InPlace", format!("{} is writable already", p.side(ask.to).cluster.name_any()))
            }
            PairMove::Move => {
                moving += 1;
                (
                    "Move",
                    format!(
                        "pause writes, wait until {} has everything, demote, promote",
                        p.side(ask.to).cluster.name_any()
                    ),
                )
            }
            PairMove::PromoteOnly => {
                promoting += 1;
                (
                    "PromoteOnly",
                    format!("promote {} (neither side is writable)", p.side(ask.to).cluster.name_any()),
                )
            }
            PairMove::Force => {
                forcing += 1;
                (
                    "Force",
                    format!(
                        "promote {} without waiting for {}, which does not answer ({}); writes it did not receive are lost{}",
                        p.side(ask.to).cluster.name_any(),
                        p.side(ask.to.other()).cluster.name_any(),
                        p.side(ask.to.other()).lost.clone().unwrap_or_else(|| "its leader is silent".into()),
                        lag.map(|l| format!(" (lag last recorded: {l} bytes)")).unwrap_or_default()
                    ),
                )
            }
            PairMove::Blocked(why) => {
                blockers.push(format!("{}: {why}", p.name()));
                ("Blocked", why.clone())
            }
        };
        out.push(PairStatus {
            source: p.source.cluster.name_any(),
            target: p.target.cluster.name_any(),
            production: p.recorded(status).and_then(|s| s.production),
            state: state.into(),
            lag,
            message: Some(message),
            shards: Vec::new(),
        });
    }
    if ask.forced && forcing > 0 && !forced_authorised {
        steps.push(format!(
            "(needs spec.forcedFailover {{to: {}, reason: …}} to be carried out)",
            ask.to.as_str()
        ));
    }
    steps.push(format!("lock the clusters of both sites that answer ({} pairs)", clusters(pairs).count()));
    if moving > 0 {
        steps.push(format!("pause writes on {moving} production primaries"));
        steps.push("wait until the DR primaries have every write".into());
        steps.push(format!("demote {moving} production primaries (they follow the DR primaries)"));
    }
    if forcing > 0 {
        steps.push(format!("record what {forcing} forced pairs may lose"));
    }
    if moving + forcing + promoting > 0 {
        steps.push(format!("promote {} DR primaries", moving + forcing + promoting));
    }
    steps.push("reverse replication and release the locks".into());
    if forcing > 0 {
        steps.push(format!(
            "when the {} site returns: fence it (its primaries follow the new production site), then re-protect it",
            ask.to.other().as_str()
        ));
    }
    DryRunReport {
        request: ask.request,
        at: Time(Timestamp::now()),
        to: ask.to,
        forced: ask.forced,
        possible: blockers.is_empty(),
        steps,
        blockers,
        pairs: fold(pairs, out),
    }
}

/// Ready=False with `reason`, written; looked at again in 5 s.
async fn not_ready(
    w: &mut Writer,
    mut status: ProtectionGroupStatus,
    reason: Reason,
    msg: String,
) -> Result<Action, Error> {
    let generation = w.obj.metadata.generation;
    set_condition(
        &mut status.conditions,
        ConditionType::Ready,
        false,
        reason,
        msg,
        generation,
        &Time(Timestamp::now()),
    );
    w.save(&status).await?;
    Ok(Action::requeue(Duration::from_secs(5)))
}

/// Stop protection (spec.protection Stopped, or the group is being deleted): every pair is
/// detached by `detachPolicy` — the production cluster becomes an ordinary cluster (it no
/// longer yields to the other site), the DR cluster keeps its data read-only, replicating
/// from nothing (`ReadOnly`), or has its leader promoted and becomes an ordinary cluster
/// (`Writable`). A side that cannot be read is left as it was and said so. Then the
/// finalizer of a group being deleted is removed.
async fn stop_protection(
    ctx: &Context,
    w: &mut Writer,
    sites: &[SiteHandle; 2],
    mut status: ProtectionGroupStatus,
    deleting: bool,
) -> Result<Action, Error> {
    let pg = w.obj.clone();
    let now = Time(Timestamp::now());
    let policy = pg.spec.detach_policy;
    let done = status.phase == Some(Phase::Stopped) && status.observed_generation == pg.metadata.generation;
    if !done {
        let mut pairs = match load_pairs(&pg, sites, true).await {
            Ok(p) => p,
            Err((reason, msg)) => return not_ready(w, status, reason, msg).await,
        };
        probe_leaders(&mut pairs, PROBE_TIMEOUT).await;
        let production = status.production_site.unwrap_or(pg.spec.priority_site);
        let group = key(&pg);
        let mut failed = Vec::new();
        let mut out = Vec::new();
        for p in clusters(&pairs) {
            let shards = shards_of(&pairs, p.index);
            let prod = p.recorded(&status).and_then(|s| s.production).unwrap_or(production);
            let (ps, ds) = (p.side(prod), p.side(prod.other()));
            let mut said = Vec::new();
            // The production cluster first: it must no longer yield to a DR side that may be
            // made writable next.
            match &ps.lost {
                Some(why) => said.push(format!("{} left as it was ({why})", ps.cluster.name_any())),
                None => match publish(ps, None).await {
                    Ok(()) => said.push(format!("{} is an ordinary cluster", ps.cluster.name_any())),
                    Err(e) => failed.push(format!("{}: {e}", ps.cluster.name_any())),
                },
            }
            if let Some(why) = &ds.lost {
                said.push(format!("{} left as it was ({why})", ds.cluster.name_any()));
            } else {
                // Detached first, so its monitor stops pointing its leader at the upstream.
                let detached = Protection {
                    group: group.clone(),
                    standby: None,
                    yield_to: Vec::new(),
                    yield_to_shards: Vec::new(),
                    detached: true,
                    contact_at: None,
                };
                let r = async {
                    publish(ds, Some(detached)).await.map_err(|e| e.to_string())?;
                    // Every shard's leader: each holds its own part of the data.
                    for q in &shards {
                        let d = q.side(prod.other());
                        let shard = q.shard.as_ref().map(|s| format!("shard {s} ")).unwrap_or_default();
                        let Some(l) = d.leader.as_ref() else {
                            return Err(format!("its {shard}has no recorded leader"));
                        };
                        match policy {
                            DetachPolicy::ReadOnly => d.engine.detach(&l.endpoint).await,
                            DetachPolicy::Writable => d.engine.promote(&l.endpoint).await,
                        }
                        .map_err(|e| format!("{shard}{e}"))?;
                    }
                    if matches!(policy, DetachPolicy::Writable) {
                        publish(ds, None).await.map_err(|e| e.to_string())?;
                    }
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) => said.push(match policy {
                        DetachPolicy::ReadOnly => {
                            format!("{} kept read-only, replicating from nothing", ds.cluster.name_any())
                        }
                        DetachPolicy::Writable => format!(
                            "{} is writable, independent of the production site",
                            ds.cluster.name_any()
                        ),
                    }),
                    Err(e) => failed.push(format!("{}: {e}", ds.cluster.name_any())),
                }
            }
            out.push(PairStatus {
                source: p.source.cluster.name_any(),
                target: p.target.cluster.name_any(),
                production: Some(prod),
                state: "Detached".into(),
                lag: None,
                message: Some(said.join("; ")),
                shards: Vec::new(),
            });
        }
        if !failed.is_empty() {
            let msg = format!("stopping protection: {}; retried", failed.join("; "));
            warn!(group = %key(&pg), "{msg}");
            set_condition(
                &mut status.conditions,
                ConditionType::Ready,
                false,
                Reason::ProtectionStopped,
                msg,
                pg.metadata.generation,
                &now,
            );
            w.save(&status).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let msg = format!(
            "protection stopped{}: {}",
            if deleting { " (the group is being deleted)" } else { "" },
            out.iter().filter_map(|p| p.message.clone()).collect::<Vec<_>>().join("; ")
        );
        info!(group = %key(&pg), "{msg}");
        ctx.event(&pg, false, Reason::ProtectionStopped, EventAction::Detach, msg.clone()).await;
        status.pairs = out;
        status.phase = Some(Phase::Stopped);
        status.observed_generation = pg.metadata.generation;
        status.last_transition_time = Some(now.clone());
        status.message = Some(msg.clone());
        set_condition(
            &mut status.conditions,
            ConditionType::Ready,
            false,
            Reason::ProtectionStopped,
            msg,
            pg.metadata.generation,
            &now,
        );
        w.save(&status).await?;
    }
    if deleting {
        let finalizers: Vec<String> = pg.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
        let patch =
            json!({"metadata": {"finalizers": finalizers, "resourceVersion": w.obj.resource_version()}});
        w.api.patch(&pg.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(annotation: Option<&str>) -> ProtectionGroup {
        let mut g: ProtectionGroup = serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup",
            "metadata": {"name": "pg", "namespace": "a"},
            "spec": {"sites": {"source": {"namespace": "a"}, "target": {"namespace": "b"}}, "pairs": []}
        }))
        .unwrap();
        if let Some(v) = annotation {
            g.metadata.annotations = Some([(DRY_RUN_ANNOTATION.to_owned(), v.to_owned())].into());
        }
        g
    }

    #[test]
    fn a_dry_run_is_asked_by_site_with_an_optional_force_and_nonce() {
        assert!(dry_run_request(&group(None)).is_none());
        let ask = dry_run_request(&group(Some("Target"))).unwrap();
        assert_eq!((ask.to, ask.forced, ask.request.as_str()), (SiteRole::Target, false, "Target"));
        let ask = dry_run_request(&group(Some("source/Forced@1733300000"))).unwrap();
        assert_eq!((ask.to, ask.forced), (SiteRole::Source, true));
        assert_eq!(ask.request, "source/Forced@1733300000", "the whole value is what is answered");
        // Anything else is answered as unreadable (and nothing is done on it).
        for bad in ["", "Elsewhere", "Targets/Forced", "Target/Planned", "@1"] {
            let ask = dry_run_request(&group(Some(bad))).unwrap();
            let why = ask.unreadable.clone().expect(bad);
            assert!(why.contains("expected Source or Target"), "{why}");
            let report = dry_run(&[], &ProtectionGroupStatus::default(), ask, false);
            assert!(!report.possible && report.steps.is_empty() && report.blockers == vec![why]);
        }
    }
}
