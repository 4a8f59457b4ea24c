//! The `agent` engine: the HTTP HA-status protocol (seed 004) spoken by `understudy agent`.
//!
//! `GET /rest/ha/status` → `MAIN` | `BACKUP`; `POST /rest/ha/status?change=MAIN|BACKUP`;
//! `Authorization: token <T>`. A node switched to BACKUP exits and is restarted by its
//! supervisor; replicas learn the new main through the cluster's `redirect` ConfigMap, so
//! [`Engine::follow`] does nothing here. If the Secret holds `ca.crt`, agents are spoken to
//! over HTTPS trusting that CA.

use std::time::Duration;

use futures::{FutureExt as _, future::BoxFuture};

use super::{Credentials, Engine, EngineError, EngineResult, ObservedRole, Probe};

pub struct AgentEngine {
    http: reqwest::Client,
    token: String,
    scheme: &'static str,
    timeout: Duration,
}

impl AgentEngine {
    pub fn new(creds: Credentials, timeout: Duration) -> Self {
        Self::with_ca(creds, None, timeout)
    }

    /// With `ca_pem`, talk HTTPS and trust only that CA.
    pub fn with_ca(creds: Credentials, ca_pem: Option<&[u8]>, timeout: Duration) -> Self {
        let mut builder =
            reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).pool_max_idle_per_host(1);
        let mut scheme = "http";
        if let Some(cert) = ca_pem.and_then(|pem| reqwest::Certificate::from_pem(pem).ok()) {
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
            scheme = "https";
        }
        let http = builder.build().unwrap_or_default();
        Self { http, token: creds.secret.unwrap_or_default(), scheme, timeout }
    }

    async fn send(&self, endpoint: &str, req: reqwest::RequestBuilder) -> EngineResult<String> {
        let resp =
            req.header("Authorization", format!("token {}", self.token)).send().await.map_err(|e| {
                if e.is_timeout() {
                    EngineError::Timeout { endpoint: endpoint.into(), timeout: self.timeout }
                } else {
                    EngineError::Unreachable { endpoint: endpoint.into(), message: without_url(&e) }
                }
            })?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| EngineError::Unreachable { endpoint: endpoint.into(), message: without_url(&e) })?;
        match status.as_u16() {
            200..=299 => Ok(body.trim().to_owned()),
            401 | 403 => Err(EngineError::Unauthorized {
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
        let req = self.http.post(self.url(endpoint)).query(&[("change", to)]);
        self.send(endpoint, req).await.map(|_| ())
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
            let body = self.send(endpoint, self.http.get(self.url(endpoint))).await?;
            let role = parse_status(&body).ok_or_else(|| EngineError::Protocol {
                endpoint: endpoint.into(),
                message: format!("unexpected HA status {body:?}"),
            })?;
            Ok(Probe { role, offset: None, following: None, link_up: true })
        }
        .boxed()
    }

    fn promote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        self.change(endpoint, "MAIN").boxed()
    }

    fn follow<'a>(&'a self, _endpoint: &'a str, _primary: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async { Ok(()) }.boxed()
    }

    fn demote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        self.change(endpoint, "BACKUP").boxed()
    }

    fn pause_writes<'a>(&'a self, _endpoint: &'a str, _max: Duration) -> BoxFuture<'a, EngineResult<()>> {
        async { Ok(()) }.boxed()
    }

    fn resume_writes<'a>(&'a self, _endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        async { Ok(()) }.boxed()
    }

    fn follows_directly(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ha_status() {
        assert_eq!(parse_status("MAIN\n"), Some(ObservedRole::Primary));
        assert_eq!(parse_status("BACKUP"), Some(ObservedRole::Replica));
        assert_eq!(parse_status("main"), None);
    }
}
