//! The `agent` engine: the HTTP HA-status protocol (seed 004) spoken by `understudy agent`.
//!
//! `GET /rest/ha/status` → `MAIN` | `BACKUP`; `POST /rest/ha/status?change=MAIN|BACKUP`;
//! `Authorization: token <T>`. A node switched to BACKUP exits and is restarted by its
//! supervisor; replicas learn the new main of their own cluster through the cluster's
//! `redirect` ConfigMap. [`Engine::follow`] is the optional `change=FOLLOW` step: a standby
//! cluster's leader (or a fenced old main) is told which other cluster's main to replicate
//! from. If the Secret holds `ca.crt`, agents are spoken to over HTTPS trusting that CA.

use std::{
    collections::HashMap,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt as _, future::BoxFuture};

use super::{Credentials, Engine, EngineError, EngineResult, ObservedRole, Probe};
use crate::agent;

/// How many members, across the whole process, may keep an idle connection open between
/// heartbeats. Each costs a file descriptor; the members past the budget connect per probe
/// instead (a few tens of microseconds more per heartbeat). Set from the file-descriptor
/// limit by the operator at start ([`set_keepalive_budget`]).
static KEEPALIVE_LEFT: AtomicI64 = AtomicI64::new(4096);

/// Set how many members may hold a kept-alive connection (see [`KEEPALIVE_LEFT`]).
pub fn set_keepalive_budget(members: i64) {
    KEEPALIVE_LEFT.store(members.max(0), Ordering::SeqCst);
}

/// The process-wide plain-HTTP clients: one keeping an idle connection per member, one
/// opening a connection per request. Shared by every agent engine (the token travels per
/// request), so 10,000 clusters do not mean 10,000 connection pools.
fn plain_clients() -> &'static (reqwest::Client, reqwest::Client) {
    static CLIENTS: OnceLock<(reqwest::Client, reqwest::Client)> = OnceLock::new();
    CLIENTS.get_or_init(|| {
        let pooled = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap_or_default();
        let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap_or_default();
        (pooled, fresh)
    })
}

enum Clients {
    /// Plain HTTP through the shared clients; which members got a kept-alive connection.
    Shared { keepalive: Mutex<HashMap<String, bool>> },
    /// HTTPS trusting one CA: a client of this engine's own.
    Own(reqwest::Client),
    /// The Secret's `ca.crt` is not a usable certificate: every request is refused with this
    /// reason, never sent over plain HTTP instead.
    BadCa(String),
}

pub struct AgentEngine {
    clients: Clients,
    token: String,
    scheme: &'static str,
    timeout: Duration,
    /// The self-fencing lease sent with every request ([`agent::LEASE_HEADER`]).
    lease: Option<Duration>,
}

impl AgentEngine {
    pub fn new(creds: Credentials, timeout: Duration) -> Self {
        Self::with_ca(creds, None, timeout)
    }

    /// With `ca_pem`, talk HTTPS and trust only that CA. A `ca_pem` that is not a usable
    /// certificate refuses every request (it never falls back to plain HTTP).
    pub fn with_ca(creds: Credentials, ca_pem: Option<&[u8]>, timeout: Duration) -> Self {
        let token = creds.secret.unwrap_or_default();
        let Some(pem) = ca_pem else {
            return Self {
                clients: Clients::Shared { keepalive: Mutex::default() },
                token,
                scheme: "http",
                timeout,
                lease: None,
            };
        };
        // reqwest takes any bytes here and then trusts nothing; parse them first.
        let parsed: Result<Vec<_>, _> = {
            use rustls::pki_types::{CertificateDer, pem::PemObject as _};
            CertificateDer::pem_slice_iter(pem).collect()
        };
        let clients = match parsed {
            Ok(certs) if !certs.is_empty() => reqwest::Certificate::from_pem(pem)
                .and_then(|cert| {
                    reqwest::Client::builder()
                        .pool_max_idle_per_host(1)
                        .tls_built_in_root_certs(false)
                        .add_root_certificate(cert)
                        .build()
                })
                .map_or_else(
                    |e| Clients::BadCa(format!("the Secret's ca.crt is not usable ({e}); nothing is sent")),
                    Clients::Own,
                ),
            Ok(_) => Clients::BadCa("the Secret's ca.crt holds no PEM certificate; nothing is sent".into()),
            Err(e) => {
                Clients::BadCa(format!("the Secret's ca.crt is not a PEM certificate ({e}); nothing is sent"))
            }
        };
        Self { clients, token, scheme: "https", timeout, lease: None }
    }

    /// Grant every agent `lease` with each request: an agent MAIN that hears nothing for
    /// longer demotes itself (see [`crate::core::lease`] for the timing rule).
    pub fn with_lease(mut self, lease: Option<Duration>) -> Self {
        self.lease = lease;
        self
    }

    /// The client for `endpoint`: kept-alive while the process-wide budget lasts.
    fn http(&self, endpoint: &str) -> &reqwest::Client {
        match &self.clients {
            Clients::Own(c) => c,
            // Never sent: `send` refuses first.
            Clients::BadCa(_) => &plain_clients().1,
            Clients::Shared { keepalive } => {
                let mut map = keepalive.lock().expect("keepalive map");
                let kept = *map.entry(endpoint.to_owned()).or_insert_with(|| {
                    KEEPALIVE_LEFT
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > 0).then(|| n - 1))
                        .is_ok()
                });
                let (pooled, fresh) = plain_clients();
                if kept { pooled } else { fresh }
            }
        }
    }

    async fn send(&self, endpoint: &str, req: reqwest::RequestBuilder) -> EngineResult<String> {
        self.send_with_headers(endpoint, req).await.map(|(_, body)| body)
    }

    /// [`AgentEngine::send`], with the answer's headers (where the optional protocol steps are
    /// advertised).
    async fn send_with_headers(
        &self,
        endpoint: &str,
        req: reqwest::RequestBuilder,
    ) -> EngineResult<(reqwest::header::HeaderMap, String)> {
        if let Clients::BadCa(why) = &self.clients {
            return Err(EngineError::Unauthorized { endpoint: endpoint.into(), message: why.clone() });
        }
        let req = match self.lease {
            Some(lease) => req.header(agent::LEASE_HEADER, lease.as_millis().to_string()),
            None => req,
        };
        let resp = req
            .header("Authorization", format!("token {}", self.token))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    EngineError::Timeout { endpoint: endpoint.into(), timeout: self.timeout }
                } else if super::connection_refused(&e) {
                    EngineError::Refused { endpoint: endpoint.into(), message: without_url(&e) }
                } else {
                    EngineError::Unreachable { endpoint: endpoint.into(), message: without_url(&e) }
                }
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|e| EngineError::Unreachable { endpoint: endpoint.into(), message: without_url(&e) })?;
        match status.as_u16() {
            200..=299 => Ok((headers, body.trim().to_owned())),
            401 | 403 => Err(EngineError::Unauthorized {
                endpoint: endpoint.into(),
                message: format!("HTTP {status}: {}", body.trim()),
            }),
            // A server error says nothing of the role the node is in now (a hook failed or
            // is still running, the node is restarting).
            500..=599 => Err(EngineError::Ambiguous {
                endpoint: endpoint.into(),
                message: format!("HTTP {status}: {}", body.trim()),
            }),
            _ => Err(EngineError::Protocol {
                endpoint: endpoint.into(),
                message: format!("HTTP {status}: {}", body.trim()),
            }),
        }
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}://{endpoint}/rest/ha/status", self.scheme)
    }

    async fn change(&self, endpoint: &str, to: &str) -> EngineResult<()> {
        let req = self.http(endpoint).post(self.url(endpoint)).query(&[("change", to)]);
        self.send(endpoint, req).await.map(|_| ())
    }

    /// The optional `change=FOLLOW` step (`upstream` empty: follow nothing). An agent without
    /// it is still demoted if it acts as MAIN — a node that must follow another site's main
    /// never stays writable — and the error says what it lacks.
    /// Returns the position in the answer (a MAIN's: where it stopped taking writes).
    async fn follow_step(&self, endpoint: &str, upstream: &str) -> EngineResult<Option<i64>> {
        let req = self
            .http(endpoint)
            .post(self.url(endpoint))
            .query(&[("change", "FOLLOW"), ("upstream", upstream)]);
        match self.send_with_headers(endpoint, req).await {
            Ok((headers, _)) => {
                Ok(headers.get(agent::POSITION_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_position))
            }
            // A 4xx: no such step here (or a request it could not take).
            Err(EngineError::Protocol { message: answer, .. }) => {
                let demoted = match self.probe(endpoint).await {
                    Ok(p) if p.role == ObservedRole::Primary => {
                        self.change(endpoint, "BACKUP").await.map(|()| "; demoted to BACKUP instead")?
                    }
                    _ => "",
                };
                let what = if upstream.is_empty() {
                    "stop replicating".to_owned()
                } else {
                    format!("replicate from {upstream}")
                };
                Err(EngineError::Protocol {
                    endpoint: endpoint.into(),
                    message: format!(
                        "the agent did not take change=FOLLOW ({answer}; the reference agent needs --on-follow), so it cannot {what}{demoted}"
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// An optional step (`DRAIN`, `RESUME`): an agent that does not implement it answers a
    /// 4xx, which is [`Optional::Unsupported`], not an error.
    async fn optional_change(&self, endpoint: &str, to: &str) -> EngineResult<Optional> {
        match self.change(endpoint, to).await {
            Ok(()) => Ok(Optional::Done),
            Err(EngineError::Protocol { message, .. }) => Ok(Optional::Unsupported(message)),
            Err(e) => Err(e),
        }
    }
}

/// How an agent took an optional step.
enum Optional {
    Done,
    /// It answered a 4xx (other than 401/403): it does not implement the step.
    Unsupported(String),
}

impl Drop for AgentEngine {
    /// Kept-alive slots go back to the budget (the connections themselves idle out).
    fn drop(&mut self) {
        if let Clients::Shared { keepalive } = &self.clients {
            let kept = keepalive.lock().map(|m| m.values().filter(|k| **k).count()).unwrap_or(0);
            KEEPALIVE_LEFT.fetch_add(kept as i64, Ordering::SeqCst);
        }
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// The capabilities an agent lists in its status answer's header (comma-separated).
pub fn capabilities(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').map(str::trim).filter(|c| !c.is_empty())
}

/// The position header's value: a non-negative integer, or nothing usable.
pub fn parse_position(value: &str) -> Option<i64> {
    value.trim().parse::<i64>().ok().filter(|p| *p >= 0)
}

/// Parse the body of `GET /rest/ha/status`.
pub fn parse_status(body: &str) -> Option<ObservedRole> {
    match body.trim() {
        "MAIN" => Some(ObservedRole::Primary),
        "BACKUP" => Some(ObservedRole::Replica),
        _ => None,
    }
}

impl Engine for AgentEngine {
    fn probe<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<Probe>> {
        async move {
            let req = self.http(endpoint).get(self.url(endpoint));
            let (headers, body) = self.send_with_headers(endpoint, req).await?;
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let capable = |what: &str| {
                header(agent::CAPABILITIES_HEADER).is_some_and(|c| capabilities(&c).any(|c| c == what))
            };
            let role = parse_status(&body).ok_or_else(|| EngineError::Ambiguous {
                endpoint: endpoint.into(),
                message: format!("HA status {body:?} is neither MAIN nor BACKUP"),
            })?;
            Ok(Probe {
                role,
                offset: header(agent::POSITION_HEADER).as_deref().and_then(parse_position),
                following: header(agent::FOLLOWING_HEADER),
                link_up: true,
                // Granted a lease it honours: cut off from the operator, it demotes itself.
                self_fencing: self.lease.is_some() && capable(agent::LEASE_CAPABILITY),
                good_replicas: None,
                link_error: None,
                errant: Vec::new(),
                drains: capable(agent::DRAIN_CAPABILITY),
            })
        }
        .boxed()
    }

    fn self_fencing_how(&self) -> &'static str {
        "when its lease from the operator runs out (failover.agentLease)"
    }

    fn promote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        self.change(endpoint, "MAIN").boxed()
    }

    /// `POST ?change=FOLLOW&upstream=<primary>`: the agent's follow hook points the node at
    /// another cluster's main; a MAIN becomes BACKUP first. Only standby leaders and fenced
    /// old mains are told this (replicas of the cluster's own main learn it from the redirect
    /// ConfigMap).
    fn follow<'a>(&'a self, endpoint: &'a str, primary: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move { self.follow_step(endpoint, primary).await.map(|_| ()) }.boxed()
    }

    /// The same step; a MAIN's answer carries the position where it stopped taking writes.
    fn yield_to<'a>(
        &'a self,
        endpoint: &'a str,
        primary: &'a str,
    ) -> BoxFuture<'a, EngineResult<Option<i64>>> {
        self.follow_step(endpoint, primary).boxed()
    }

    /// `POST ?change=FOLLOW&upstream=`: replicate from nothing, stay BACKUP.
    fn detach<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move { self.follow_step(endpoint, "").await.map(|_| ()) }.boxed()
    }

    fn demote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        self.change(endpoint, "BACKUP").boxed()
    }

    /// `POST ?change=DRAIN`: the agent's drain hook stops the node taking writes and returns
    /// once none is in flight; its position (probe offset) is then final. An agent without
    /// the step does nothing, as before it existed (switchovers only drain agents that
    /// advertise it; see [`Probe::drains`]).
    fn pause_writes<'a>(&'a self, endpoint: &'a str, _max: Duration) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            match self.optional_change(endpoint, "DRAIN").await? {
                Optional::Done => Ok(()),
                Optional::Unsupported(why) => {
                    tracing::debug!(endpoint, %why, "the agent does not drain; writes are not paused");
                    Ok(())
                }
            }
        }
        .boxed()
    }

    /// `POST ?change=RESUME`: undo a drain. A node that exits after its demotion answers 503,
    /// and one without the step a 4xx: there is nothing to resume on either.
    fn resume_writes<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async move {
            match self.optional_change(endpoint, "RESUME").await {
                Ok(_) | Err(EngineError::Ambiguous { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        .boxed()
    }

    fn follows_directly(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ca_that_is_not_a_certificate_refuses_rather_than_falls_back_to_http() {
        let creds = Credentials { username: None, secret: Some("t".into()) };
        let engine = AgentEngine::with_ca(creds, Some(b"not a certificate"), Duration::from_secs(1));
        match engine.probe("127.0.0.1:1").await {
            Err(EngineError::Unauthorized { message, .. }) => {
                assert!(message.contains("ca.crt"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn parses_capabilities_and_positions() {
        assert_eq!(capabilities(" drain, lease ,,").collect::<Vec<_>>(), vec!["drain", "lease"]);
        assert_eq!(capabilities("").count(), 0);
        assert_eq!(parse_position(" 42\n"), Some(42));
        for bad in ["-1", "x", "", "1.5"] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_ha_status() {
        assert_eq!(parse_status("MAIN\n"), Some(ObservedRole::Primary));
        assert_eq!(parse_status("BACKUP"), Some(ObservedRole::Replica));
        assert_eq!(parse_status("main"), None);
    }
}
