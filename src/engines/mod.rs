//! How the operator talks to members. One trait; one module per engine. Adding an engine
//! touches one module plus [`for_cluster`].

pub mod agent;
pub mod mysql;
pub mod redis;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::resources::hacluster::Engine as EngineKind;

pub use crate::core::member::{Fault, ObservedRole, Probe};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{endpoint} unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    /// Nothing listens at the address: the member is not running.
    #[error("{endpoint} refused the connection (not running): {message}")]
    Refused { endpoint: String, message: String },
    #[error("{endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint} refused our credentials: {message}")]
    Unauthorized { endpoint: String, message: String },
    #[error("{endpoint}: {message}")]
    Protocol { endpoint: String, message: String },
    /// The member answered, but what it said does not tell its role (an HA agent answering
    /// something other than MAIN or BACKUP, or a server error): it is neither trusted in its
    /// last known role nor promoted until it answers plainly again.
    #[error("{endpoint} answered ambiguously: {message}")]
    Ambiguous { endpoint: String, message: String },
    /// The member has transactions `primary` never had: attaching it would keep them or fail
    /// on them, so it was not attached (and stays read-only).
    #[error(
        "{endpoint}: has transactions the primary {primary} never had ({}), which attaching would keep or fail on; not attached, left read-only — rebuild it from the primary",
        gtids.join(", ")
    )]
    Errant { endpoint: String, primary: String, gtids: Vec<String> },
}

impl EngineError {
    /// Whether the member answered at all (a wrong password still proves it is alive).
    pub fn member_answered(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized { .. } | Self::Protocol { .. } | Self::Ambiguous { .. } | Self::Errant { .. }
        )
    }

    /// What the failure says about whether the member may still take writes.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Refused { .. } => Fault::Refused,
            Self::Unreachable { .. } | Self::Timeout { .. } => Fault::Silent,
            Self::Unauthorized { .. }
            | Self::Protocol { .. }
            | Self::Ambiguous { .. }
            | Self::Errant { .. } => Fault::Answered,
        }
    }
}

/// Whether an error was caused by a refused TCP connection (somewhere in its source chain).
pub fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// See [`Engine::demote_when_thawed`].
pub type Thawed = Option<tokio::sync::oneshot::Receiver<i64>>;

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
    /// Make the member replicate from `primary`. Idempotent. Called for every replica where
    /// [`Engine::follows_directly`]; otherwise (agent: replicas learn their own cluster's
    /// primary from a ConfigMap) only for a standby leader or a fenced old primary, told to
    /// follow another cluster's primary.
    fn follow<'a>(&'a self, endpoint: &'a str, primary: &'a str) -> BoxFuture<'a, EngineResult<()>>;
    /// Stop the member from accepting writes (demote / fence). Idempotent.
    fn demote<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>>;
    /// Make a member acting as primary follow `primary` (another site's, which superseded it)
    /// and say where it stopped taking writes: its offset then, everything it had written,
    /// when the engine can tell exactly (Redis: `INFO` right behind `REPLICAOF` on the same
    /// connection; agent: the position in the `FOLLOW` answer). The default follows and
    /// says nothing (the caller falls back on the offset it last probed).
    fn yield_to<'a>(
        &'a self,
        endpoint: &'a str,
        primary: &'a str,
    ) -> BoxFuture<'a, EngineResult<Option<i64>>> {
        Box::pin(async move { self.follow(endpoint, primary).await.map(|()| None) })
    }
    /// Stop replicating from anything and stay read-only (a standby detached from its
    /// protection group). The default, a demotion, is exactly that where demoting points the
    /// member at nothing (Redis, Mysql).
    fn detach<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        self.demote(endpoint)
    }
    /// Demote a drained old primary: `to`, the candidate about to be promoted, holds
    /// everything it wrote. Redis makes it `to`'s replica, so that it re-attaches the moment
    /// `to` is promoted (a replica reconnects at once when its primary's replication ID
    /// changes) and the new primary's `min-replicas-to-write` counts a replica within
    /// milliseconds, not after the redirect that follows the promotion. Other engines demote
    /// as [`Engine::demote`] does.
    fn demote_drained<'a>(&'a self, endpoint: &'a str, _to: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        self.demote(endpoint)
    }
    /// Block writes for at most `max` (graceful switchover). Engines without it return Ok.
    fn pause_writes<'a>(&'a self, endpoint: &'a str, max: Duration) -> BoxFuture<'a, EngineResult<()>>;
    /// Undo [`Engine::pause_writes`].
    fn resume_writes<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>>;
    /// True if replicas are pointed at the primary by [`Engine::follow`] (redis), false if
    /// through the cluster's `redirect` ConfigMap (agent).
    fn follows_directly(&self) -> bool;
    /// Ask a replica to acknowledge to its primary now (redis: `REPLCONF GETACK`), which
    /// starts a command stream the primary holds back until the first acknowledgement.
    /// Engines without it return Ok.
    fn request_ack<'a>(&'a self, _endpoint: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Queue a demotion on a member that accepts connections but does not answer (frozen, or
    /// too slow): it is written on a connection kept open to the primary for this (redis: a
    /// fence line), so that the member runs it, when it runs again, before any command a
    /// client sends after that — a thawed old primary then refuses writes at once, not when
    /// its self-fencing notices or the next heartbeat demotes it. Engines without it say so
    /// (an error), so that the promotion's steps never claim a demotion was queued.
    ///
    /// The [`Thawed`] receiver, when the engine gives one, yields the member's replication
    /// offset at the moment its demotion ran: what it had acknowledged by then, measured even
    /// if the member is gone right after (a pod deleted meanwhile is never probed again).
    fn demote_when_thawed<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, EngineResult<Thawed>> {
        Box::pin(async move {
            Err(EngineError::Protocol {
                endpoint: endpoint.into(),
                message:
                    "not possible with this engine: nothing can be sent to a member that does not answer"
                        .into(),
            })
        })
    }
    /// How a member that [`Engine::self_fences`] stops taking writes by itself once cut off,
    /// in words for the promotion's steps.
    fn self_fencing_how(&self) -> &'static str {
        "once its replicas follow the new primary"
    }
    /// Set an engine parameter on a running member (redis: `CONFIG SET`). A parameter the
    /// member can change only at start is [`Setting::RestartRequired`]; a value it refuses is
    /// [`Setting::Refused`]. Engines without live parameters answer RestartRequired.
    fn set_parameter<'a>(
        &'a self,
        _endpoint: &'a str,
        _name: &'a str,
        _value: &'a str,
    ) -> BoxFuture<'a, EngineResult<Setting>> {
        Box::pin(async { Ok(Setting::RestartRequired) })
    }
    /// Whether [`Engine::set_self_fencing`] does anything.
    fn self_fences(&self) -> bool {
        false
    }
    /// Make the member refuse writes while fewer than `min_replicas` replicas acknowledged it
    /// within `max_lag_seconds` (0 replicas: never). Engines without it return Ok.
    fn set_self_fencing<'a>(
        &'a self,
        _endpoint: &'a str,
        _min_replicas: u32,
        _max_lag_seconds: u32,
    ) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// What a member said to a live parameter change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    Applied,
    /// Only a restart applies it (the member keeps its current value until then).
    RestartRequired,
    /// The member refused the value, with its words.
    Refused(String),
}

/// Build the engine for a cluster.
///
/// `ca` is the Secret's `ca.crt` (PEM): the agent engine speaks HTTPS trusting it, the Mysql
/// engine connects over TLS trusting only it (and has replicas replicate over TLS); the
/// Redis engine does not use it.
///
/// `agent_lease` is the agent engine's self-fencing lease (other engines ignore it).
pub fn for_cluster(
    kind: EngineKind,
    creds: Credentials,
    ca: Option<&[u8]>,
    timeout: Duration,
    agent_lease: Option<Duration>,
) -> Box<dyn Engine> {
    match kind {
        EngineKind::Redis => Box::new(redis::RedisEngine::new(creds, timeout)),
        EngineKind::Agent => {
            Box::new(agent::AgentEngine::with_ca(creds, ca, timeout).with_lease(agent_lease))
        }
        EngineKind::Mysql => Box::new(mysql::MysqlEngine::with_ca(creds, ca, timeout)),
    }
}

/// How a member the operator runs (`spec.instances`) is started: what the engine's image gets
/// as arguments. The image's entrypoint is the engine's server (Redis) or a wrapper that
/// prepares the data directory and then starts it (MariaDB, tools/images/mariadb-entry.sh).
pub struct MemberStart<'a> {
    pub port: u16,
    /// Unique within the cluster and stable across restarts (the member's ordinal + 1).
    pub server_id: u32,
    /// The data directory (the member's volume).
    pub data_dir: &'a str,
    /// The environment variable holding the Secret's password, when there is one.
    pub password_env: Option<&'a str>,
    /// `spec.instances.parameters` in force.
    pub parameters: &'a std::collections::BTreeMap<String, String>,
}

/// The arguments a member of `kind` starts with: a replica of nothing, read-only where the
/// engine has it, so a member that restarts is never a second primary (the monitor elects
/// the primary and points the others at it). `None`: the engine's members are run by
/// something else (the API server refuses `spec.instances` for them).
pub fn member_args(kind: EngineKind, start: &MemberStart<'_>) -> Option<Vec<String>> {
    match kind {
        EngineKind::Redis => Some(redis::member_args(start)),
        EngineKind::Mysql => Some(mysql::member_args(start)),
        EngineKind::Agent => None,
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
