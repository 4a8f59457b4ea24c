//! `understudy run`: the controller manager — HTTP endpoints, leader election, controllers.

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    controllers::{self, Context},
    leader::{Elector, LeaseConfig},
    metrics::Metrics,
    readiness::{Readiness, Role},
};

/// How `understudy run` behaves.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Campaign for a Lease and act only while holding it.
    pub leader_elect: Option<LeaseConfig>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Namespaces to watch; empty means the whole cluster.
    pub namespaces: Vec<String>,
    /// Route clients to a static member's `clientAddress` (an address the operator does not
    /// probe). Off by default: it lets whoever may edit an HaCluster put any address into an
    /// EndpointSlice, which Kubernetes' own `edit` role deliberately cannot do.
    pub allow_client_address: bool,
    /// Restart the workloads an HaCluster's redirect lists. Off by default: it lets whoever
    /// may edit an HaCluster have any Deployment, StatefulSet or DaemonSet of its namespace
    /// restarted.
    pub allow_workload_restarts: bool,
    /// Serve Sentinel-compatible discovery (every replica, leader or standby).
    pub sentinel: Option<crate::sentinel::SentinelConfig>,
}

#[derive(Clone)]
struct HttpState {
    ready: Readiness,
    metrics: Metrics,
}

/// Run until `shutdown` resolves (or leadership is lost, which is an error so that the
/// process restarts clean as a standby).
pub async fn run(client: Client, cfg: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(client, cfg, Metrics::new(), shutdown).await
}

/// [`run`], exporting into the given registry (which an in-process caller can read).
pub async fn run_with(
    client: Client,
    cfg: RunConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let files = raise_file_limit();
    // Half the descriptors may hold kept-alive agent connections; the rest is for the API
    // server, Redis members and the HTTP endpoints.
    let budget = std::env::var("UNDERSTUDY_AGENT_KEEPALIVE").ok().and_then(|v| v.parse().ok());
    crate::engines::agent::set_keepalive_budget(budget.unwrap_or((files / 2) as i64));
    info!(open_files = files, "file descriptor limit");
    let mut ctx = Context::new(client.clone(), metrics.clone(), cfg.namespaces.clone());
    ctx.allow_client_address = cfg.allow_client_address;
    ctx.allow_workload_restarts = cfg.allow_workload_restarts;
    let discovery_state =
        cfg.sentinel.as_ref().map(|s| crate::sentinel::Discovery::new(s.allow_client_address));
    ctx.discovery = discovery_state.clone();
    let ready = ctx.readiness.clone();
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { ready: ready.clone(), metrics: metrics.clone() });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    info!(%local, "serving /healthz, /readyz and /metrics");

    let version = client.apiserver_version().await.context("contacting the API server")?;
    info!(server = %version.git_version, "connected to the API server");

    // Discovery does not wait for leadership: a standby answers clients too.
    let discovery = cfg.sentinel.clone().zip(discovery_state).map(|(s, state)| {
        ready.require_discovery();
        tokio::spawn(crate::sentinel::serve(client.clone(), s, state, ready.clone()))
    });
    let discovery_failed = async {
        match discovery {
            Some(task) => {
                let abort = task.abort_handle();
                let _stop = scopeguard(abort);
                match task.await {
                    Ok(Ok(())) => anyhow::anyhow!("the discovery endpoint stopped"),
                    Ok(Err(e)) => e.context("the discovery endpoint failed"),
                    Err(e) => anyhow::anyhow!("the discovery endpoint panicked: {e}"),
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(discovery_failed);

    tokio::pin!(shutdown);
    let roles = async {
        match cfg.leader_elect {
            None => {
                ready.set_role(Role::Leader);
                metrics.leader.set(1);
                let (_tx, rx) = watch::channel(true);
                tokio::select! {
                    r = controllers::run_all(ctx, rx) => r,
                    () = &mut shutdown => Ok(()),
                }
            }
            Some(lease) => {
                let advertise = ctx.discovery.as_ref().map(crate::sentinel::Discovery::advertise);
                let elector = Elector::start(client, lease.clone(), ready.clone(), advertise);
                info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for leadership");
                let outcome = tokio::select! {
                    () = elector.acquired() => None,
                    () = &mut shutdown => Some(Ok(())),
                };
                let outcome = match outcome {
                    Some(done) => done,
                    None => {
                        metrics.leader.set(1);
                        let mut leading = elector.subscribe();
                        let lost = async move {
                            let _ = leading.wait_for(|l| !*l).await;
                        };
                        let r = tokio::select! {
                            r = controllers::run_all(ctx, elector.subscribe()) => r,
                            () = lost => Err(anyhow::anyhow!("lost leadership of lease {}; exiting so a fresh process campaigns again", lease.name)),
                            () = &mut shutdown => Ok(()),
                        };
                        metrics.leader.set(0);
                        r
                    }
                };
                elector.release().await;
                outcome
            }
        }
    };
    let result = tokio::select! {
        r = roles => r,
        e = &mut discovery_failed => Err(e),
    };
    server.abort();
    if let Err(e) = &result {
        warn!(error = %e, "operator stopped");
    }
    result
}

/// Aborts the task when dropped (the discovery endpoint stops with the operator).
fn scopeguard(abort: tokio::task::AbortHandle) -> impl Drop {
    struct Guard(tokio::task::AbortHandle);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    Guard(abort)
}

/// Raise the soft open-files limit to the hard one (as the Go runtime does): every member
/// probed costs a descriptor. Returns the limit in force.
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    match s.ready.not_ready_reason() {
        None => (StatusCode::OK, "ok"),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render_metrics(State(s): State<HttpState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.render(),
    )
}

/// The operator running inside this process (demo, benchmarks, tests), watching one
/// namespace without leader election. Stopped by [`InProcess::stop`], aborted on drop.
pub struct InProcess {
    /// What the operator exports on `/metrics`.
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub fn start(client: Client, namespace: &str) -> Self {
        Self::start_namespaces(client, &[namespace])
    }

    /// Watching several namespaces (e.g. the two sites of a ProtectionGroup).
    pub fn start_namespaces(client: Client, namespaces: &[&str]) -> Self {
        Self::start_config(client, Self::config(namespaces))
    }

    /// What [`InProcess::start_namespaces`] runs with.
    pub fn config(namespaces: &[&str]) -> RunConfig {
        RunConfig {
            leader_elect: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            // The tests' members listen on loopback and stand for routable addresses.
            allow_client_address: true,
            allow_workload_restarts: true,
            sentinel: None,
        }
    }

    /// Serving the discovery endpoint on a loopback port too: returns where it listens.
    pub async fn start_with_sentinel(
        client: Client,
        namespace: &str,
        password: Option<&str>,
    ) -> anyhow::Result<(Self, SocketAddr)> {
        let (bound, mut rx) = tokio::sync::watch::channel(None);
        let mut cfg = Self::config(&[namespace]);
        cfg.sentinel = Some(crate::sentinel::SentinelConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            password: password.map(Into::into),
            namespaces: vec![namespace.to_owned()],
            allow_client_address: true,
            identity: format!("in-process-{}", std::process::id()),
            advertise_ip: None,
            bound: Some(std::sync::Arc::new(bound)),
        });
        let op = Self::start_config(client, cfg);
        let addr = tokio::time::timeout(std::time::Duration::from_secs(30), rx.wait_for(Option::is_some))
            .await
            .context("the discovery endpoint did not listen within 30 s")?
            .context("the operator stopped before its discovery endpoint listened")?
            .expect("waited for Some");
        Ok((op, addr))
    }

    /// Run with `cfg`.
    pub fn start_config(client: Client, cfg: RunConfig) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = Metrics::new();
        let task = tokio::spawn(run_with(client, cfg, metrics.clone(), async move {
            let _ = rx.await;
        }));
        Self { metrics, stop: Some(tx), task }
    }

    /// Shut down cleanly and wait for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}
