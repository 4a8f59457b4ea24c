//! How the operator talks to members. One trait; one module per engine. Adding an engine
//! touches one module plus [`for_cluster`].

pub mod agent;
pub mod redis;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::resources::hacluster::Engine as EngineKind;

/// What a member says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedRole {
    Primary,
    Replica,
}

/// One successful probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub role: ObservedRole,
    /// Replication offset: for a primary how much it has written, for a replica how much it
    /// has applied. `None` when the engine has no offsets (agent).
    pub offset: Option<i64>,
    /// For a replica: the `host:port` it follows, if any.
    pub following: Option<String>,
    /// For a replica: whether its link to the upstream is up.
    pub link_up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{endpoint} unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("{endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint} refused our credentials: {message}")]
    Unauthorized { endpoint: String, message: String },
    #[error("{endpoint}: {message}")]
    Protocol { endpoint: String, message: String },
}

impl EngineError {
    /// Whether the member answered at all (a wrong password still proves it is alive).
    pub fn member_answered(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Protocol { .. })
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// Credentials from the cluster's Secret.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    /// Redis password or agent token.
    pub secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The operations Understudy needs from a replicated service. Every call is bounded by the
/// engine's timeout; endpoints are `host:port`.
pub trait Engine: Send + Sync {
    /// Role, offset and upstream of one member.
    fn probe<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<Probe>>;
    /// Make the member a writable primary. Idempotent.
    fn promote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>>;
    /// Make the member replicate from `primary`. Idempotent. Engines whose replicas learn
    /// the primary elsewhere (agent: a ConfigMap) return Ok without doing anything.
    fn follow<'a>(&'a self, endpoint: &'a str, primary: &'a str) -> BoxFuture<'a, EngineResult<()>>;
    /// Stop the member from accepting writes (demote / fence). Idempotent.
    fn demote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>>;
    /// Block writes for at most `max` (graceful switchover). Engines without it return Ok.
    fn pause_writes<'a>(&'a self, endpoint: &'a str, max: Duration) -> BoxFuture<'a, EngineResult<()>>;
    /// Undo [`Engine::pause_writes`].
    fn resume_writes<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>>;
    /// True if replicas are pointed at the primary by [`Engine::follow`] (redis), false if
    /// through the cluster's `redirect` ConfigMap (agent).
    fn follows_directly(&self) -> bool;
}

/// Build the engine for a cluster.
pub fn for_cluster(kind: EngineKind, creds: Credentials, timeout: Duration) -> Box<dyn Engine> {
    match kind {
        EngineKind::Redis => Box::new(redis::RedisEngine::new(creds, timeout)),
        EngineKind::Agent => Box::new(agent::AgentEngine::new(creds, timeout)),
    }
}

/// Split `host:port` (IPv6 hosts in brackets).
pub fn split_endpoint(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_endpoints() {
        assert_eq!(split_endpoint("10.0.0.1:6379"), Some(("10.0.0.1", 6379)));
        assert_eq!(split_endpoint("redis-0.redis:6380"), Some(("redis-0.redis", 6380)));
        assert_eq!(split_endpoint("[::1]:6379"), Some(("::1", 6379)));
        assert_eq!(split_endpoint("nohost"), None);
        assert_eq!(split_endpoint("h:99999"), None);
    }

    #[test]
    fn credentials_never_print_the_secret() {
        let c = Credentials { username: None, secret: Some("hunter2".into()) };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
