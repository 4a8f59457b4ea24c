//! Leader election through a `coordination.k8s.io/v1` Lease.
//!
//! Expiry is judged on this process's monotonic clock from the moment it last *saw the lease
//! record change* (as client-go does), never by comparing another node's wall clock with ours,
//! so clock skew between operator replicas cannot produce two leaders. Writes are guarded by
//! resourceVersion, so two candidates racing for an expired lease cannot both win.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::readiness::{Readiness, Role};

/// The Lease annotation where the leader says where its discovery endpoint listens: the other
/// replicas' endpoints follow the leader's announcements from there.
pub const DISCOVERY_ANNOTATION: &str = "understudy.io/discovery-endpoint";

/// What the Lease carries for the discovery endpoints.
#[derive(Clone, Debug)]
pub struct Advertise {
    /// Where this replica's endpoint listens, once it does (written while leading).
    pub ours: watch::Receiver<Option<SocketAddr>>,
    /// Told where the leader's endpoint listens: None while this replica leads, or while no
    /// live leader says.
    pub leaders: Arc<watch::Sender<Option<SocketAddr>>>,
}

/// Timing of the election, like client-go's LeaderElectionConfig.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease is valid after its last observed renewal.
    pub lease_duration: Duration,
    /// The leader gives up if it could not renew for this long (must be < lease_duration).
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What we last saw of the lease.
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    duration: Duration,
    seen_at: Instant,
    /// The holder's discovery endpoint, as its Lease says.
    discovery: Option<SocketAddr>,
}

/// A running election. `is_leader()` flips to true once acquired and back to false if the
/// lease is lost; the loop keeps running until [`Elector::release`] or drop.
pub struct Elector {
    rx: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    /// Campaign for the lease; `readiness` learns this replica's role after every round.
    /// With `advertise`, the discovery endpoints' addresses are exchanged through the Lease.
    pub fn start(
        client: Client,
        config: LeaseConfig,
        readiness: Readiness,
        advertise: Option<Advertise>,
    ) -> Self {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(api.clone(), config.clone(), tx, readiness, advertise));
        Self { rx, task, api, config }
    }

    /// A receiver that tracks leadership.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Wait until this process leads.
    pub async fn acquired(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Stop campaigning and, if leading, hand the lease back so a standby takes over at once.
    pub async fn release(self) {
        self.task.abort();
        let was_leader = *self.rx.borrow();
        if !was_leader {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.config.identity) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
                    Ok(_) => info!(lease = %self.config.name, "released leadership"),
                    Err(e) => {
                        warn!(error = %e, "could not release the lease; a standby takes over when it expires")
                    }
                }
            }
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    readiness: Readiness,
    advertise: Option<Advertise>,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renew = Instant::now();
    loop {
        let leading = *tx.borrow();
        let ours = advertise.as_ref().and_then(|a| *a.ours.borrow());
        let round = try_acquire_or_renew(&api, &cfg, &mut observed, ours).await;
        if let Some(a) = &advertise {
            // Follow a live leader other than this replica (through a failed round too, while
            // its lease as last seen is valid); nobody while leading or unsure.
            let leader = match (&round, &observed) {
                (Ok(true), _) => None,
                (_, Some(o))
                    if o.holder.as_deref().is_some_and(|h| !h.is_empty() && h != cfg.identity)
                        && o.seen_at.elapsed() <= o.duration =>
                {
                    o.discovery
                }
                _ => None,
            };
            a.leaders.send_if_modified(|l| std::mem::replace(l, leader) != leader);
        }
        match round {
            Ok(true) => {
                readiness.set_role(Role::Leader);
                last_renew = Instant::now();
                if !leading {
                    info!(lease = %cfg.name, identity = %cfg.identity, "acquired leadership");
                    let _ = tx.send(true);
                }
            }
            Ok(false) => {
                readiness.set_role(Role::Standby);
                if leading {
                    warn!(lease = %cfg.name, "lost leadership to another holder");
                    let _ = tx.send(false);
                }
            }
            Err(e) => {
                if leading && last_renew.elapsed() >= cfg.renew_deadline {
                    warn!(lease = %cfg.name, error = %e, "could not renew within the renew deadline; stepping down");
                    let _ = tx.send(false);
                } else {
                    warn!(lease = %cfg.name, error = %e, "lease update failed; retrying");
                }
            }
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

/// One round: Ok(true) if we hold the lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
    discovery: Option<SocketAddr>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                annotations: discovery.map(|d| [(DISCOVERY_ANNOTATION.to_owned(), d.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let advertised =
        |l: &Lease| l.metadata.annotations.as_ref()?.get(DISCOVERY_ANNOTATION)?.parse::<SocketAddr>().ok();
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    let changed = observed.as_ref().is_none_or(|o| {
        o.holder != spec.holder_identity || o.renew_time != spec.renew_time || o.duration != duration
    });
    if changed {
        *observed = Some(Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            duration,
            seen_at: Instant::now(),
            discovery: advertised(&lease),
        });
    }
    let obs = observed.as_ref().expect("set above");
    let ours = spec.holder_identity.as_deref() == Some(&cfg.identity);
    let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    let expired = obs.seen_at.elapsed() > obs.duration;
    if !ours && !free && !expired {
        return Ok(false);
    }
    let new_spec = lease.spec.get_or_insert_with(Default::default);
    if !ours {
        new_spec.acquire_time = Some(now.clone());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    new_spec.holder_identity = Some(cfg.identity.clone());
    new_spec.lease_duration_seconds = Some(cfg.lease_duration.as_secs() as i32);
    new_spec.renew_time = Some(now);
    let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
    match discovery {
        Some(d) => annotations.insert(DISCOVERY_ANNOTATION.to_owned(), d.to_string()),
        None => annotations.remove(DISCOVERY_ANNOTATION),
    };
    // `replace` carries the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(written) => {
            let discovery = advertised(&written);
            let s = written.spec.unwrap_or_default();
            *observed = Some(Observed {
                holder: s.holder_identity,
                renew_time: s.renew_time,
                duration: cfg.lease_duration,
                seen_at: Instant::now(),
                discovery,
            });
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
