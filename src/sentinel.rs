//! The Sentinel-compatible discovery endpoint (`understudy run --sentinel-listen`).
//!
//! Every operator replica serves it, leader or standby, from its own watch of HaCluster
//! status: a client keeps finding the primary while leadership moves. What is answered and
//! published is decided in [`crate::core::sentinel`]; this module watches, converts status at
//! the edge, accepts connections and fans `+switch-master` out to subscribers.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
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
        ClusterView, Directory, Event, Master, MemberView, PROMOTED, ProtocolError, Reply, Session, Settings,
        ShardView, master_name, masters, parse_reply, parse_request,
    },
    engines::split_endpoint,
    leader::Advertise,
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
    /// The address the other operator replicas reach this endpoint on (with the port bound),
    /// written to the Lease while this replica leads so that they follow its announcements.
    /// None: the listen address when it names one; else the others answer from status alone.
    pub advertise_ip: Option<IpAddr>,
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
const IDLE: Duration = Duration::from_secs(300);
/// A replica following the leader's announcements waits this long for its endpoint to
/// answer a connection, and at most this long between attempts.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(2);
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(30);
/// It pings the leader's endpoint this often, and gives up on a connection silent for three.
const FOLLOW_PING: Duration = Duration::from_secs(5);

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
        master_name: c.spec.routing.master_name.clone(),
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
    /// Where this replica's endpoint listens, for the Lease.
    ours: watch::Sender<Option<SocketAddr>>,
    /// Where the leader's endpoint listens (None while this replica leads).
    leader: Arc<watch::Sender<Option<SocketAddr>>>,
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
                ours: watch::channel(None).0,
                leader: Arc::new(watch::channel(None).0),
            }),
        }
    }

    /// What the leader election exchanges for this endpoint through the Lease.
    pub fn advertise(&self) -> Advertise {
        Advertise { ours: self.inner.ours.subscribe(), leaders: self.inner.leader.clone() }
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
        let custom = cluster.spec.routing.master_name.as_deref();
        let name =
            master_name(&cluster.namespace().unwrap_or_default(), &cluster.name_any(), custom, shard, shards);
        self.update(|d| {
            // The other replicas' endpoints hear it first, and tell their clients too.
            let mut events = vec![Event::promoted(&name, epoch, host, port)];
            events.extend(d.announce(&name, epoch, host, port));
            events
        });
    }

    /// The master names the cluster `namespace/name` claims that another served cluster
    /// claims too (served for neither), each with the others that claim it.
    pub fn conflicts(&self, cluster: &str) -> Vec<(String, Vec<String>)> {
        self.inner.directory.borrow().conflicts(cluster)
    }

    /// The leader's endpoint announced a promotion (a replica following it heard it).
    fn relay(&self, name: &str, epoch: i64, host: &str, port: u16) {
        info!(master = %name, epoch, primary = %format!("{host}:{port}"), "discovery endpoint: relaying the leader's announcement");
        self.update(|d| d.announce(name, epoch, host, port));
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
    let watching = tokio::spawn(watch_clusters(client, cfg.clone(), discovery.clone(), synced_tx));
    let _stop_watch = AbortOnDrop(watching);
    // Clients are told nothing until every served namespace has been listed once: an
    // endpoint that answered "no such master" while starting would send them away.
    synced_rx.wait_for(|s| *s).await.context("the HaCluster watch of the discovery endpoint stopped")?;
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let local = listener.local_addr()?;
    if let Some(bound) = &cfg.bound {
        bound.send_replace(Some(local));
    }
    let advertised = match cfg.advertise_ip {
        Some(ip) => Some(SocketAddr::new(ip, local.port())),
        None => Some(local).filter(|l| !l.ip().is_unspecified()),
    };
    match advertised {
        Some(a) => {
            info!(advertised = %a, "other operator replicas follow this endpoint's announcements while it leads")
        }
        None => warn!(
            "no --sentinel-advertise-ip: while this replica leads, the others answer from status alone (tens of ms later)"
        ),
    }
    discovery.inner.ours.send_replace(advertised);
    let following = tokio::spawn(follow_leader(discovery.clone(), cfg.password.clone()));
    let _stop_following = AbortOnDrop(following);
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

/// While another replica leads, follow its endpoint's announcements: a promotion reaches
/// this endpoint's clients as soon as the leader's, not after the status write and its
/// watch event. Status stays the truth; an announcement only runs ahead of it.
async fn follow_leader(discovery: Discovery, password: Option<String>) {
    let mut leader = discovery.inner.leader.subscribe();
    let mut retry = Duration::from_millis(250);
    loop {
        let Some(addr) = *leader.borrow_and_update() else {
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut followed = false;
        tokio::select! {
            r = relay(addr, password.as_deref(), &discovery, &mut followed) => {
                if followed {
                    retry = Duration::from_millis(250);
                }
                match r {
                    Err(e) if followed => info!(leader = %addr, error = %e, "stopped following the leader's discovery endpoint; reconnecting"),
                    Err(e) => debug!(leader = %addr, error = %e, retry_ms = retry.as_millis() as u64, "cannot follow the leader's discovery endpoint yet"),
                    Ok(()) => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    r = leader.changed() => if r.is_err() { return },
                }
                retry = (retry * 2).min(FOLLOW_RETRY_MAX);
            }
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

/// Subscribe to the leader's announcements at `addr` and relay them until the connection
/// ends; `followed` is set once the subscription is confirmed.
async fn relay(
    addr: SocketAddr,
    password: Option<&str>,
    discovery: &Discovery,
    followed: &mut bool,
) -> anyhow::Result<()> {
    let mut sock = tokio::time::timeout(FOLLOW_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connecting timed out")??;
    sock.set_nodelay(true)?;
    let command = |args: &[&[u8]], out: &mut Vec<u8>| {
        Reply::Array(args.iter().map(|a| Reply::Bulk(a.to_vec())).collect()).encode(out);
    };
    let mut out = Vec::new();
    if let Some(p) = password {
        command(&[b"AUTH", p.as_bytes()], &mut out);
    }
    command(&[b"SUBSCRIBE", PROMOTED.as_bytes()], &mut out);
    sock.write_all(&out).await?;
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    let mut ping = tokio::time::interval(FOLLOW_PING);
    let mut heard = Instant::now();
    loop {
        while let Some((reply, used)) = parse_reply(&buf).map_err(|e| anyhow::anyhow!(e.0))? {
            buf.drain(..used);
            let Reply::Array(items) = reply else {
                match reply {
                    Reply::Error(e) => {
                        warn!(leader = %addr, error = %e, "the leader's discovery endpoint refused this replica (do the replicas share one password?)");
                        anyhow::bail!("the leader's endpoint refused: {e}")
                    }
                    _ => continue, // AUTH's OK
                }
            };
            let word = |i: usize| match items.get(i) {
                Some(Reply::Bulk(b)) => std::str::from_utf8(b).ok(),
                _ => None,
            };
            match (word(0), word(1), word(2)) {
                (Some("subscribe"), Some(PROMOTED), _) if !*followed => {
                    *followed = true;
                    info!(leader = %addr, "following the leader's discovery announcements");
                }
                (Some("message"), Some(PROMOTED), Some(payload)) => match Event::parse_promoted(payload) {
                    Some((name, epoch, host, port)) => discovery.relay(name, epoch, host, port),
                    None => warn!(leader = %addr, %payload, "ignoring an announcement that does not parse"),
                },
                _ => {} // pong
            }
        }
        tokio::select! {
            n = sock.read(&mut chunk) => {
                let n = n?;
                anyhow::ensure!(n > 0, "the leader's endpoint closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                heard = Instant::now();
            }
            _ = ping.tick() => {
                anyhow::ensure!(heard.elapsed() < FOLLOW_PING * 3, "the leader's endpoint went silent");
                out.clear();
                command(&[b"PING"], &mut out);
                sock.write_all(&out).await?;
            }
        }
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
                    let in_scope = |k: &&String| {
                        scope
                            .as_deref()
                            .is_none_or(|ns| k.strip_prefix(ns).is_some_and(|r| r.starts_with('/')))
                    };
                    let stale: Vec<String> =
                        dir.clusters().filter(in_scope).filter(|k| !seen.contains(*k)).cloned().collect();
                    let mut published: Vec<Event> = Vec::new();
                    for key in stale {
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
