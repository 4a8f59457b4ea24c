//! The Sentinel-compatible discovery endpoint (`understudy run --sentinel-listen`).
//!
//! Every operator replica serves it, leader or standby, from its own watch of HaCluster
//! status: a client keeps finding the primary while leadership moves. What is answered and
//! published is decided in [`crate::core::sentinel`]; this module watches, converts status at
//! the edge, accepts connections and fans `+switch-master` out to subscribers.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use anyhow::Context as _;
use futures::{StreamExt as _, stream};
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{broadcast, watch},
};
use tracing::{debug, info, warn};

use crate::{
    controllers::routing,
    core::sentinel::{
        ClusterView, Directory, Event, Master, MemberView, ProtocolError, Session, Settings, ShardView,
        master_name, masters, parse_request,
    },
    engines::split_endpoint,
    readiness::Readiness,
    resources::{
        HaCluster,
        hacluster::{Engine, Role},
    },
};

/// How the endpoint is served.
#[derive(Clone, Debug)]
pub struct SentinelConfig {
    pub listen: SocketAddr,
    /// Clients must `AUTH` with this; None only when explicitly asked for.
    pub password: Option<String>,
    /// Namespaces whose clusters are served; empty: every namespace the operator watches.
    pub namespaces: Vec<String>,
    /// Report static members' `clientAddress` (as the Services route to it).
    pub allow_client_address: bool,
    /// This replica's identity (`SENTINEL myid` is derived from it).
    pub identity: String,
    /// Told the address actually bound (tests listen on port 0).
    pub bound: Option<Arc<watch::Sender<Option<SocketAddr>>>>,
}

/// Connections served at once; more are refused (closed) so that one client opening
/// sockets in a loop cannot take the operator's file descriptors.
const MAX_CONNECTIONS: usize = 4096;
/// Pub/Sub messages a subscriber may fall behind by before it is disconnected (it then
/// reconnects and asks afresh, as Sentinel clients do).
const BACKLOG: usize = 1024;
/// A connection that neither subscribed nor sent anything for this long is closed (its slot
/// is someone else's); clients reconnect when they next ask.
const IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether discovery serves a cluster at all: redis, and not a standby (its primary follows
/// another site and takes no writes).
fn served(c: &HaCluster) -> bool {
    c.spec.engine == Engine::Redis && c.standby().is_none()
}

/// Convert one HaCluster into what the endpoint serves, or None when it is not served: not
/// redis, a standby (its primary follows another site and takes no writes), or unreadable.
pub fn view(c: &HaCluster, allow_client_address: bool) -> Option<ClusterView> {
    if !served(c) {
        return None;
    }
    let status = c.status.as_ref()?;
    let f = &c.spec.failover;
    let shards = status
        .shards
        .iter()
        .map(|s| ShardView {
            name: s.name.clone(),
            primary: s.current_primary.clone(),
            target: s.target_primary.clone(),
            epoch: s.epoch,
            members: s
                .members
                .iter()
                .filter_map(|m| {
                    let endpoint = m.endpoint.as_deref().unwrap_or_default();
                    let addr = client_address(c, &m.name, endpoint, allow_client_address)?;
                    let (host, port) = split_endpoint(&addr)?;
                    Some(MemberView {
                        name: m.name.clone(),
                        host: host.to_owned(),
                        port,
                        healthy: m.healthy,
                        replica: m.role == Role::Replica,
                        upstream: m.upstream.clone(),
                        offset: m.offset,
                    })
                })
                .collect(),
        })
        .collect();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Some(ClusterView {
        namespace: c.namespace().unwrap_or_default(),
        name: c.name_any(),
        down_after_ms: ms(f.heartbeat_interval.0).saturating_mul(f.failure_threshold.max(1) as u64),
        failover_timeout_ms: ms(f.step_timeout.0),
        shards,
    })
}

/// A stable 40-hex-digit id for `identity` (Sentinel's run id format).
fn myid(identity: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    (0..3u8)
        .map(|salt| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (salt, identity).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect::<String>()[..40]
        .to_owned()
}

/// What is served, shared by the watch, the connections and (on the leader) the promotions:
/// the directory and the Pub/Sub fan-out. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<DiscoveryInner>,
}

struct DiscoveryInner {
    /// Changes are made under this lock, so that they are published in the order made.
    state: std::sync::Mutex<Directory>,
    directory: watch::Sender<Arc<Directory>>,
    events: broadcast::Sender<Event>,
    allow_client_address: bool,
}

impl Discovery {
    pub fn new(allow_client_address: bool) -> Self {
        let (directory, _) = watch::channel(Arc::new(Directory::default()));
        let (events, _) = broadcast::channel(BACKLOG);
        Self {
            inner: Arc::new(DiscoveryInner {
                state: std::sync::Mutex::new(Directory::default()),
                directory,
                events,
                allow_client_address,
            }),
        }
    }

    /// Change the directory; publish the changes once the new directory is visible (a client
    /// that reacts to `+switch-master` by asking is told the new primary).
    fn update(&self, change: impl FnOnce(&mut Directory) -> Vec<Event>) {
        let mut dir = self.inner.state.lock().expect("discovery lock");
        let events = change(&mut dir);
        if **self.inner.directory.borrow() != *dir {
            self.inner.directory.send_replace(Arc::new(dir.clone()));
        }
        for e in events {
            info!(channel = %e.channel, payload = %e.payload, "discovery endpoint: publishing");
            let _ = self.inner.events.send(e);
        }
    }

    /// The leader promoted `member` of `shard` (epoch `epoch`): send clients there now,
    /// before the outcome's status write and its watch event reach this and the other
    /// replicas.
    pub fn announce(&self, cluster: &HaCluster, shard: &str, epoch: i64, member: &str, endpoint: &str) {
        if !served(cluster) {
            return;
        }
        let Some(addr) = client_address(cluster, member, endpoint, self.inner.allow_client_address) else {
            return;
        };
        let Some((host, port)) = split_endpoint(&addr) else { return };
        let shards = cluster.status.as_ref().map_or(1, |s| s.shards.len());
        let name = master_name(&cluster.namespace().unwrap_or_default(), &cluster.name_any(), shard, shards);
        self.update(|d| d.announce(&name, epoch, host, port));
    }
}

/// Where clients reach `member`: a static member's route (its clientAddress when allowed),
/// a pod's endpoint (its IP, unless an address annotation names another).
fn client_address(c: &HaCluster, member: &str, endpoint: &str, allow_client_address: bool) -> Option<String> {
    let spec = c.spec.shards.iter().flatten().flat_map(|s| s.members.iter()).find(|m| m.name == member);
    match spec {
        Some(spec) => Some(routing::route_of(spec, allow_client_address)),
        None if endpoint.is_empty() => None,
        None => Some(endpoint.to_owned()),
    }
}

/// Shared between the connections.
struct Shared {
    settings: Settings,
    directory: watch::Receiver<Arc<Directory>>,
    events: broadcast::Sender<Event>,
    next_id: AtomicI64,
}

/// Serve until the process stops: watch, then (once the first list is in) listen.
pub async fn serve(
    client: Client,
    cfg: SentinelConfig,
    discovery: Discovery,
    ready: Readiness,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        settings: Settings {
            password: cfg.password.clone(),
            myid: myid(&cfg.identity),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        directory: discovery.inner.directory.subscribe(),
        events: discovery.inner.events.clone(),
        next_id: AtomicI64::new(1),
    });
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let watching = tokio::spawn(watch_clusters(client, cfg.clone(), discovery, synced_tx));
    let _stop_watch = AbortOnDrop(watching);
    // Clients are told nothing until every served namespace has been listed once: an
    // endpoint that answered "no such master" while starting would send them away.
    synced_rx.wait_for(|s| *s).await.context("the HaCluster watch of the discovery endpoint stopped")?;
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let local = listener.local_addr()?;
    if let Some(bound) = &cfg.bound {
        bound.send_replace(Some(local));
    }
    ready.set_discovery_synced();
    info!(%local, masters = shared.directory.borrow().len(), auth = cfg.password.is_some(), "serving Sentinel-compatible discovery");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                warn!(error = %e, "discovery endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "discovery endpoint: too many connections; closing");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(sock, &shared).await {
                debug!(%peer, error = %e, "discovery connection ended");
            }
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An object's `namespace/name` and its masters; None when it could not be read.
type Served = (String, Option<Vec<Master>>);

/// Keep the directory current from HaCluster watch events; publish what changed.
async fn watch_clusters(
    client: Client,
    cfg: SentinelConfig,
    discovery: Discovery,
    synced: watch::Sender<bool>,
) {
    let scopes: Vec<(Option<String>, Api<DeserializeGuard<HaCluster>>)> = if cfg.namespaces.is_empty() {
        vec![(None, Api::all(client))]
    } else {
        cfg.namespaces.iter().map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns))).collect()
    };
    let mut pending_sync: usize = scopes.len();
    let streams = scopes.into_iter().map(|(ns, api)| {
        watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .map(move |e| (ns.clone(), e))
            .boxed()
    });
    let mut all = stream::select_all(streams);
    // A re-list in progress, per scope: what it has seen so far.
    let mut relisting: BTreeMap<Option<String>, Vec<Served>> = BTreeMap::new();
    let mut listed: std::collections::BTreeSet<Option<String>> = std::collections::BTreeSet::new();
    let allow = cfg.allow_client_address;
    // An object as served: None when it is not served (or could not be read: then what was
    // served for it stays until it can be).
    let convert = |o: &DeserializeGuard<HaCluster>| -> Served {
        let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
        let served = o.0.as_ref().ok().map(|c| view(c, allow).map(|v| masters(&v)).unwrap_or_default());
        (key, served)
    };
    while let Some((scope, event)) = all.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                debug!(error = %e, "discovery endpoint: HaCluster watch");
                continue;
            }
        };
        match event {
            watcher::Event::Init => {
                relisting.insert(scope.clone(), Vec::new());
            }
            watcher::Event::InitApply(o) => {
                if let Some(list) = relisting.get_mut(&scope) {
                    list.push(convert(&o));
                }
            }
            watcher::Event::InitDone => {
                let list = relisting.remove(&scope).unwrap_or_default();
                // Clusters gone while the watch was down are dropped; the rest replaced.
                let seen: std::collections::BTreeSet<String> = list.iter().map(|(k, _)| k.clone()).collect();
                discovery.update(|dir| {
                    let stale = dir_keys(dir, scope.as_deref()).into_iter().filter(|k| !seen.contains(k));
                    let mut published: Vec<Event> = Vec::new();
                    for key in stale.collect::<Vec<_>>() {
                        published.extend(dir.replace(&key, Vec::new()));
                    }
                    // An object listed but unreadable keeps what was served for it.
                    for (key, ms) in list {
                        if let Some(ms) = ms {
                            published.extend(dir.replace(&key, ms));
                        }
                    }
                    published
                });
                if listed.insert(scope.clone()) {
                    pending_sync = pending_sync.saturating_sub(1);
                }
            }
            watcher::Event::Apply(o) => {
                if let (key, Some(ms)) = convert(&o) {
                    discovery.update(|dir| dir.replace(&key, ms));
                }
            }
            watcher::Event::Delete(o) => {
                let key = convert(&o).0;
                discovery.update(|dir| dir.replace(&key, Vec::new()));
            }
        }
        if pending_sync == 0 && !*synced.borrow() {
            synced.send_replace(true);
        }
    }
}

/// The `namespace/cluster` keys served under `scope` (every one when None).
fn dir_keys(dir: &Directory, scope: Option<&str>) -> Vec<String> {
    let mut keys: Vec<String> = dir
        .names()
        .filter_map(|n| {
            let mut parts = n.splitn(3, '/');
            let (ns, cluster) = (parts.next()?, parts.next()?);
            scope.is_none_or(|s| s == ns).then(|| format!("{ns}/{cluster}"))
        })
        .collect();
    keys.dedup();
    keys
}

/// Serve one client until it quits, breaks the protocol or goes away.
async fn connection(mut sock: TcpStream, shared: &Shared) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let mut session = Session::new(shared.next_id.fetch_add(1, Ordering::Relaxed));
    // Subscribed only while the client is: messages published before are not for it.
    let mut events: Option<broadcast::Receiver<Event>> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let mut out = Vec::with_capacity(512);
    loop {
        // Answer every complete request in the buffer (pipelined clients send several).
        loop {
            match parse_request(&buf) {
                Ok(Some((args, used))) => {
                    buf.drain(..used);
                    let dir = shared.directory.borrow().clone();
                    for r in session.handle(&shared.settings, &dir, &args) {
                        r.encode(&mut out);
                    }
                    if session.closing() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e @ ProtocolError(_)) => {
                    session.protocol_error(&e).encode(&mut out);
                    break;
                }
            }
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
        if session.closing() {
            return Ok(());
        }
        match (session.subscribed(), events.is_some()) {
            (true, false) => events = Some(shared.events.subscribe()),
            (false, true) => events = None,
            _ => {}
        }
        let next_event = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let idle = async {
            if session.subscribed() { std::future::pending().await } else { tokio::time::sleep(IDLE).await }
        };
        tokio::select! {
            () = idle => return Ok(()),
            n = sock.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            ev = next_event => match ev {
                Ok(ev) => {
                    for r in session.deliver(&ev) {
                        r.encode(&mut out);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    anyhow::bail!("subscriber fell {n} messages behind; disconnected so it asks afresh");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}
