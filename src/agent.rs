//! `understudy agent`: the reference HA agent, speaking seed 004's HA-status protocol.
//!
//! - `GET /rest/ha/status` → `MAIN` | `BACKUP`;
//! - `POST /rest/ha/status?change=MAIN|BACKUP` → the new status;
//! - both need `Authorization: token <T>` (401 otherwise); `GET /healthz` needs nothing.
//!
//! Every agent starts as `BACKUP`, so a restarted node can never be a second main. Promotion
//! runs the `--on-promote` hook first and only becomes `MAIN` if it succeeds. Demotion answers
//! `BACKUP`, runs the `--on-demote` hook, then (by default) stops serving so that [`run`] exits
//! with code 0 and the node's supervisor restarts it, as the seed describes.
//!
//! Optional steps (README, "The HA agent protocol"), with `--on-drain` and `--position`: the status
//! answer carries `X-HA-Capabilities: drain` and `X-HA-Position: <n>`; `change=DRAIN` runs the
//! drain hook on a MAIN (which stays MAIN, taking no writes) and `change=RESUME` undoes it.
//! With `--on-follow`: `change=FOLLOW&upstream=<host:port>` makes the node replicate from
//! another cluster's main (a standby cluster's leader, a fenced old site), reported back in
//! `X-HA-Following`.
//!
//! Everything lives in a per-agent value: [`serve`] can run many agents in one process (the
//! demo, benchmarks); only [`run`] touches the process (signals, exit code).

use std::{
    fmt,
    future::Future,
    io::{self, Read as _, Seek as _, SeekFrom},
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{Query, Request, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures::future::BoxFuture;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, watch};
use tracing::{error, info, warn};

/// Environment variable holding the access token (same as `--token`).
pub const TOKEN_ENV: &str = "UNDERSTUDY_AGENT_TOKEN";
/// Environment variable telling a hook the role being entered (`MAIN` or `BACKUP`).
pub const ROLE_ENV: &str = "UNDERSTUDY_ROLE";
/// Environment variable telling a hook the agent's `--name` (when given).
pub const NAME_ENV: &str = "UNDERSTUDY_AGENT_NAME";
/// Header of the status answer listing the optional steps the agent implements
/// (comma-separated; absent = none).
pub const CAPABILITIES_HEADER: &str = "x-ha-capabilities";
/// Header of the status answer carrying the node's replication position (a non-negative
/// integer: for a MAIN how much it has written, for a BACKUP how much it has applied).
pub const POSITION_HEADER: &str = "x-ha-position";
/// The capability of `POST ?change=DRAIN` / `?change=RESUME` (with positions).
pub const DRAIN_CAPABILITY: &str = "drain";
/// Header of every operator request granting the self-fencing lease, in milliseconds.
pub const LEASE_HEADER: &str = "x-ha-lease";
/// The capability of honouring [`LEASE_HEADER`]: a MAIN that receives no request carrying
/// it for longer than the lease demotes itself.
pub const LEASE_CAPABILITY: &str = "lease";
/// The capability of `POST ?change=FOLLOW&upstream=<host:port>`.
pub const FOLLOW_CAPABILITY: &str = "follow";
/// Header of the status answer naming the upstream a BACKUP was last told to follow (and
/// whose follow hook succeeded); absent when it follows nothing outside its cluster.
pub const FOLLOWING_HEADER: &str = "x-ha-following";
/// Environment variable telling the follow hook the upstream's `host:port`.
pub const UPSTREAM_ENV: &str = "UNDERSTUDY_UPSTREAM";
/// Environment variable telling the follow hook the upstream's host alone.
pub const UPSTREAM_HOST_ENV: &str = "UNDERSTUDY_UPSTREAM_HOST";
/// How often the agent checks its lease.
const LEASE_CHECK: Duration = Duration::from_millis(20);

/// How long in-flight responses may take to finish once the agent stops serving.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How much of a hook's output is kept for logs and error messages.
const HOOK_OUTPUT_LIMIT: u64 = 2048;

/// `understudy agent`: serve the seed-004 HA-status API for a node that has none of its own.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// Address to serve the HA-status API on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Access token clients must send as `Authorization: token <T>`. Prefer --token-file or
    /// the environment variable: command lines are visible to every local user.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
    /// Read the access token from this file (surrounding whitespace ignored). Takes precedence
    /// over --token / $UNDERSTUDY_AGENT_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Shell command (`sh -c`) run before becoming MAIN; if it fails the node stays BACKUP and
    /// the request gets a 500. $UNDERSTUDY_ROLE is `MAIN`.
    #[arg(long)]
    pub on_promote: Option<String>,
    /// Shell command (`sh -c`) run after answering a switch from MAIN to BACKUP.
    /// $UNDERSTUDY_ROLE is `BACKUP`.
    #[arg(long)]
    pub on_demote: Option<String>,
    /// Time limit for a hook, e.g. `30s`, `500ms`, `2m` or plain seconds; the hook's process
    /// group is killed when it is exceeded.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub hook_timeout: Duration,
    /// Shell command run on `POST ?change=DRAIN` (a MAIN only): it must stop the node taking
    /// writes and return once no write is in flight. With --position, the agent advertises
    /// the `drain` capability and the operator drains it before a switchover.
    #[arg(long, requires = "position")]
    pub on_drain: Option<String>,
    /// Shell command run on `POST ?change=RESUME` after a drain: the node takes writes again.
    #[arg(long, requires = "on_drain")]
    pub on_resume: Option<String>,
    /// Shell command run on `POST ?change=FOLLOW&upstream=<host:port>`: it must make the node
    /// replicate from that upstream (another cluster's main: this node leads a standby
    /// cluster, or is an old main fenced behind a new site) and be safe to run again.
    /// $UNDERSTUDY_UPSTREAM is `host:port` (the upstream's agent), $UNDERSTUDY_UPSTREAM_HOST
    /// its host; both empty: replicate from nothing and stay read-only (a standby detached
    /// from its protection group). A MAIN told to follow becomes BACKUP first and runs this hook instead of
    /// --on-demote. Advertises the `follow` capability.
    #[arg(long)]
    pub on_follow: Option<String>,
    /// Shell command printing the node's replication position (a non-negative integer), run
    /// for each status request and sent in the `X-HA-Position` header.
    #[arg(long)]
    pub position: Option<String>,
    /// Exit with code 0 after being switched from MAIN to BACKUP, for the supervisor to restart
    /// the node (the protocol's behaviour). `--exit-on-demote=false` keeps serving as BACKUP.
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
    )]
    pub exit_on_demote: bool,
    /// Name of this node in logs and in hooks' $UNDERSTUDY_AGENT_NAME (default: the listen address).
    #[arg(long)]
    pub name: Option<String>,
}

/// Errors that stop an agent from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no access token: pass --token-file <path> or set {TOKEN_ENV}; the agent refuses to serve \
         the HA API without authentication"
    )]
    MissingToken,
    #[error("the access token from {from} is empty")]
    EmptyToken { from: String },
    #[error("reading the token file {path}: {source}")]
    ReadTokenFile { path: PathBuf, source: io::Error },
    #[error("loading TLS certificate {cert} / key {key}: {message}")]
    Tls { cert: PathBuf, key: PathBuf, message: String },
    #[error("serving HTTP on {addr}: {source}")]
    Serve { addr: String, source: io::Error },
}

/// A node's HA role in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Main,
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Main => "MAIN",
            Role::Backup => "BACKUP",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `change` request does from the current role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Already in the requested role: answer it, run nothing.
    Stay(Role),
    /// BACKUP → MAIN: run the on-promote hook, then become MAIN.
    Promote,
    /// MAIN → BACKUP: become BACKUP, answer, run the on-demote hook, maybe exit.
    Demote,
}

/// Decide what `change=<requested>` means for a node currently in `current`.
pub fn plan_transition(current: Role, requested: Role) -> Transition {
    match (current, requested) {
        (Role::Backup, Role::Main) => Transition::Promote,
        (Role::Main, Role::Backup) => Transition::Demote,
        (role, _) => Transition::Stay(role),
    }
}

/// Parse the `change` query parameter; the error is the 400 response body.
pub fn parse_change(value: Option<&str>) -> Result<Role, String> {
    match value {
        Some("MAIN") => Ok(Role::Main),
        Some("BACKUP") => Ok(Role::Backup),
        Some(other) => Err(format!("invalid change {other:?}: allowed values are MAIN, BACKUP")),
        None => Err("missing query parameter `change`: allowed values are MAIN, BACKUP".into()),
    }
}

/// The token in an `Authorization: token <T>` header value (scheme case-insensitive).
pub fn presented_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"token") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compare two tokens in time that depends only on their lengths, never on where they differ:
/// every byte up to the longer length is folded into one difference, and a length mismatch
/// is folded in rather than returned early.
pub fn tokens_match(expected: &[u8], presented: &[u8]) -> bool {
    let len = expected.len().max(presented.len());
    let mut diff = u8::from(expected.len() != presented.len());
    for i in 0..len {
        let a = expected.get(i).copied().unwrap_or(0);
        let b = presented.get(i).copied().unwrap_or(0);
        diff |= a ^ b;
    }
    std::hint::black_box(diff) == 0
}

/// Parse `30s`, `500ms`, `2m`, `1h` or plain (possibly fractional) seconds; must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 500ms, 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?} in {text:?}: use ms, s, m or h")),
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("invalid duration {text:?}: must be positive")),
    }
}

/// The access token; never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token with surrounding whitespace removed; `None` when nothing is left.
    pub fn new(raw: &str) -> Option<Self> {
        let t = raw.trim();
        (!t.is_empty()).then(|| Self(t.to_owned()))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The `sh -c` commands run on role changes.
#[derive(Clone, Debug)]
pub struct Hooks {
    pub on_promote: Option<String>,
    pub on_demote: Option<String>,
    pub on_drain: Option<String>,
    pub on_resume: Option<String>,
    pub on_follow: Option<String>,
    pub position: Option<String>,
    pub timeout: Duration,
}

impl Hooks {
    /// Whether the agent can be drained: a drain hook and a position to compare.
    pub fn drains(&self) -> bool {
        self.on_drain.is_some() && self.position.is_some()
    }

    /// The optional steps it advertises in [`CAPABILITIES_HEADER`].
    pub fn capabilities(&self) -> String {
        let mut c = Vec::new();
        if self.drains() {
            c.push(DRAIN_CAPABILITY);
        }
        if self.on_follow.is_some() {
            c.push(FOLLOW_CAPABILITY);
        }
        c.push(LEASE_CAPABILITY);
        c.join(", ")
    }
}

/// Check the `upstream` of a `change=FOLLOW`: `host:port`, a host of letters, digits, `.`,
/// `-`, `_` or `:` (IPv6 in brackets), a port 1–65535; or empty: follow nothing (stop
/// replicating, stay read-only — a standby detached from its group). The error is the 400
/// response body. Returns the host (`None` for nothing).
pub fn parse_upstream(value: Option<&str>) -> Result<Option<&str>, String> {
    let Some(v) = value else {
        return Err("change=FOLLOW needs `upstream=<host:port>` (or `upstream=` to follow nothing)".into());
    };
    if v.is_empty() {
        return Ok(None);
    }
    let bad = || format!("invalid upstream {v:?}: expected host:port");
    if v.len() > 261 {
        return Err(bad());
    }
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = |h: &str| {
        !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if host_ok(inner) => inner,
        Some(_) => return Err(bad()),
        None if host_ok(host) && !host.contains(':') => host,
        None => return Err(bad()),
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(Some(host)),
        _ => Err(bad()),
    }
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("could not start `sh -c`: {0}")]
    Spawn(io::Error),
    #[error("{status}{}", output_suffix(.output))]
    Failed { status: ExitStatus, output: String },
    #[error("timed out after {timeout:?} and was killed{}", output_suffix(.output))]
    TimedOut { timeout: Duration, output: String },
    #[error("waiting for it: {0}")]
    Wait(io::Error),
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() { String::new() } else { format!(" (output: {output})") }
}

impl Hooks {
    /// Run `command` with `sh -c` in its own process group, `$UNDERSTUDY_ROLE` set to `role`,
    /// the token variable removed, stdout and stderr captured. On timeout the whole process
    /// group is killed. Background processes it leaves behind are not waited for.
    async fn run(&self, command: &str, role: Role, name: &str) -> Result<String, HookError> {
        self.run_with(command, role, name, &[]).await
    }

    /// [`Hooks::run`] with further environment variables.
    async fn run_with(
        &self,
        command: &str,
        role: Role,
        name: &str,
        env: &[(&str, &str)],
    ) -> Result<String, HookError> {
        let mut output = tempfile::tempfile().map_err(HookError::Spawn)?;
        let stdout = output.try_clone().map_err(HookError::Spawn)?;
        let stderr = output.try_clone().map_err(HookError::Spawn)?;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env(ROLE_ENV, role.as_str())
            .env(NAME_ENV, name)
            .envs(env.iter().copied())
            .env_remove(TOKEN_ENV)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(HookError::Spawn)?;
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(output_tail(&mut output)),
            Ok(Ok(status)) => Err(HookError::Failed { status, output: output_tail(&mut output) }),
            Ok(Err(e)) => Err(HookError::Wait(e)),
            Err(_) => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: kill(2) on the process group this hook leads (process_group(0)).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.wait().await;
                Err(HookError::TimedOut { timeout: self.timeout, output: output_tail(&mut output) })
            }
        }
    }
}

/// The last [`HOOK_OUTPUT_LIMIT`] bytes a hook wrote, trimmed.
fn output_tail(file: &mut std::fs::File) -> String {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(HOOK_OUTPUT_LIMIT))).is_ok() {
        let _ = file.take(HOOK_OUTPUT_LIMIT).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// PEM files for HTTPS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything one agent needs; independent of any other agent in the process.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Name in logs and in hooks' environment.
    pub name: String,
    pub token: Token,
    pub hooks: Hooks,
    /// Stop serving after a switch from MAIN to BACKUP ([`serve`] returns [`Stopped::Demoted`]).
    pub exit_on_demote: bool,
    pub tls: Option<TlsFiles>,
}

impl AgentConfig {
    /// Resolve the command line: read the token file, check a token is there.
    pub fn from_args(args: &AgentArgs) -> Result<Self, AgentError> {
        let token = match (&args.token_file, &args.token) {
            (Some(path), _) => {
                let raw = std::fs::read_to_string(path)
                    .map_err(|source| AgentError::ReadTokenFile { path: path.clone(), source })?;
                Token::new(&raw).ok_or_else(|| AgentError::EmptyToken { from: path.display().to_string() })?
            }
            (None, Some(raw)) => Token::new(raw)
                .ok_or_else(|| AgentError::EmptyToken { from: format!("--token/{TOKEN_ENV}") })?,
            (None, None) => return Err(AgentError::MissingToken),
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        };
        Ok(Self {
            name: args.name.clone().unwrap_or_else(|| args.listen.to_string()),
            token,
            hooks: Hooks {
                on_promote: args.on_promote.clone(),
                on_demote: args.on_demote.clone(),
                on_drain: args.on_drain.clone(),
                on_resume: args.on_resume.clone(),
                on_follow: args.on_follow.clone(),
                position: args.position.clone(),
                timeout: args.hook_timeout,
            },
            exit_on_demote: args.exit_on_demote,
            tls,
        })
    }
}

/// Why [`serve`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The `shutdown` future completed.
    Shutdown,
    /// Switched from MAIN to BACKUP with `exit_on_demote`: the node should exit (code 0) and be
    /// restarted by its supervisor. The demotion response has been sent.
    Demoted,
}

/// `understudy agent`: serve until SIGTERM/Ctrl-C, or exit with code 0 after a demotion.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // The agent's own TLS config names ring explicitly; installing it as the process default
    // too keeps any other rustls user in this process from failing to pick a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = AgentConfig::from_args(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let name = config.name.clone();
    match serve(config, listener, termination()).await? {
        Stopped::Shutdown => Ok(()),
        Stopped::Demoted => {
            info!(agent = %name, "exiting with code 0 after demotion; the supervisor restarts this node as BACKUP");
            std::process::exit(0)
        }
    }
}

/// Serve one agent on `listener` until `shutdown` completes or, with `exit_on_demote`, until it
/// has been demoted. In-flight responses are given [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    config: AgentConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Stopped, AgentError> {
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    info!(agent = %config.name, %addr, tls = tls.is_some(), exit_on_demote = config.exit_on_demote, role = %Role::Backup, "HA agent serving");
    let agent = Arc::new(Agent::new(config));
    let watchdog = tokio::spawn(keep_lease(agent.clone()));
    let _stop_watchdog = AbortOnDrop(watchdog);
    let app = router(agent.clone()).into_make_service();
    let handle = axum_server::Handle::<SocketAddr>::new();
    let server = axum_server::Server::from_listener(listener).handle(handle.clone());
    let mut server: BoxFuture<'static, io::Result<()>> = match tls {
        Some(tls) => Box::pin(server.acceptor(RustlsAcceptor::new(tls)).serve(app)),
        None => Box::pin(server.serve(app)),
    };
    let serve_error = |source| AgentError::Serve { addr: addr.clone(), source };
    let stopped = tokio::select! {
        result = &mut server => return result.map(|()| Stopped::Shutdown).map_err(serve_error),
        () = shutdown => Stopped::Shutdown,
        () = agent.exit.notified() => Stopped::Demoted,
    };
    info!(agent = %agent.name, reason = ?stopped, "HA agent stopping");
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    server.await.map_err(serve_error)?;
    Ok(stopped)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The self-fencing watchdog: a MAIN whose lease (renewed by each operator request carrying
/// [`LEASE_HEADER`]) ran out demotes itself as `change=BACKUP` would (on-demote hook, exit).
/// An agent that was never sent a lease never demotes itself.
async fn keep_lease(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(LEASE_CHECK).await;
        let expired = agent.lease_deadline().is_some_and(|d| tokio::time::Instant::now() > d);
        if expired && agent.role() == Role::Main {
            warn!(agent = %agent.name, "no request from the operator within the lease: demoting itself");
            agent.set_lease_deadline(None);
            if let Err(e) = change_role(agent.clone(), Role::Backup).await {
                error!(agent = %agent.name, error = %e, "self-demotion failed");
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot handle SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// A rustls server config with the ring provider named explicitly (no process default needed).
fn load_tls(files: &TlsFiles) -> Result<RustlsConfig, AgentError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let fail =
        |message: String| AgentError::Tls { cert: files.cert.clone(), key: files.key.clone(), message };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(format!("reading certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no certificate in the PEM file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| fail(format!("reading the key: {e}")))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| fail(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// One agent's state, shared by its handlers.
struct Agent {
    name: String,
    token: Token,
    hooks: Hooks,
    exit_on_demote: bool,
    /// The current role; read without waiting for a transition in progress.
    role: watch::Sender<Role>,
    /// Held for the whole of a transition, hooks included: changes happen one at a time.
    transitions: Arc<Mutex<Lifecycle>>,
    /// Signalled once the demotion is complete and the agent should stop serving.
    exit: Notify,
    /// When the operator's lease runs out (None: never granted).
    lease: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The upstream of the last `change=FOLLOW` whose hook succeeded; cleared by a promotion.
    following: std::sync::Mutex<Option<String>>,
}

#[derive(Default)]
struct Lifecycle {
    /// Demoted with `exit_on_demote`: refuse further changes until the restart.
    exiting: bool,
    /// A MAIN whose drain hook ran (and no resume since): it takes no writes.
    drained: bool,
}

impl Agent {
    fn new(config: AgentConfig) -> Self {
        Self {
            name: config.name,
            token: config.token,
            hooks: config.hooks,
            exit_on_demote: config.exit_on_demote,
            role: watch::Sender::new(Role::Backup),
            transitions: Arc::new(Mutex::new(Lifecycle::default())),
            exit: Notify::new(),
            lease: std::sync::Mutex::new(None),
            following: std::sync::Mutex::new(None),
        }
    }

    fn following(&self) -> Option<String> {
        self.following.lock().map(|f| f.clone()).unwrap_or(None)
    }

    fn set_following(&self, upstream: Option<String>) {
        if let Ok(mut f) = self.following.lock() {
            *f = upstream;
        }
    }

    fn lease_deadline(&self) -> Option<tokio::time::Instant> {
        self.lease.lock().map(|l| *l).unwrap_or(None)
    }

    fn set_lease_deadline(&self, deadline: Option<tokio::time::Instant>) {
        if let Ok(mut l) = self.lease.lock() {
            *l = deadline;
        }
    }

    fn role(&self) -> Role {
        *self.role.borrow()
    }

    fn authorized(&self, header: Option<&HeaderValue>) -> bool {
        header
            .and_then(|v| presented_token(v.as_bytes()))
            .is_some_and(|t| tokens_match(self.token.as_bytes(), t))
    }
}

fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/rest/ha/status", get(get_status).post(post_status))
        .route_layer(middleware::from_fn_with_state(agent.clone(), require_token))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(agent)
}

async fn require_token(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    if agent.authorized(req.headers().get(header::AUTHORIZATION)) {
        // Renewed before the request runs: a promotion carries its own lease.
        if let Some(ms) =
            req.headers().get(LEASE_HEADER).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        {
            agent.set_lease_deadline(Some(tokio::time::Instant::now() + Duration::from_millis(ms)));
        }
        return next.run(req).await;
    }
    warn!(agent = %agent.name, method = %req.method(), path = %req.uri().path(), "rejected: invalid or missing token");
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "token")], "invalid or missing token")
        .into_response()
}

/// The bare role (seed 004), with the optional steps advertised and the position in headers.
async fn get_status(State(agent): State<Arc<Agent>>) -> Response {
    let role = agent.role();
    let mut resp = role.as_str().into_response();
    let headers = resp.headers_mut();
    if let Ok(capabilities) = HeaderValue::from_str(&agent.hooks.capabilities()) {
        headers.insert(CAPABILITIES_HEADER, capabilities);
    }
    if let Some(up) = agent.following().and_then(|f| HeaderValue::from_str(&f).ok()) {
        headers.insert(FOLLOWING_HEADER, up);
    }
    if let Some(p) = position(&agent, role).await {
        headers.insert(POSITION_HEADER, HeaderValue::from(p));
    }
    resp
}

/// The node's position from the `--position` command, if it has one and it printed one.
async fn position(agent: &Agent, role: Role) -> Option<u64> {
    let command = agent.hooks.position.as_ref()?;
    match agent.hooks.run(command, role, &agent.name).await {
        Ok(out) => {
            let p = out.lines().last().map(str::trim).and_then(|p| p.parse::<u64>().ok());
            if p.is_none() {
                warn!(agent = %agent.name, output = %out, "the position command printed no integer");
            }
            p
        }
        Err(e) => {
            warn!(agent = %agent.name, error = %e, "the position command failed");
            None
        }
    }
}

#[derive(serde::Deserialize)]
struct ChangeQuery {
    change: Option<String>,
    upstream: Option<String>,
}

async fn post_status(
    State(agent): State<Arc<Agent>>,
    query: Result<Query<ChangeQuery>, QueryRejection>,
) -> Response {
    match query.as_ref().ok().map(|Query(q)| (q.change.as_deref(), q.upstream.clone())) {
        Some((Some("DRAIN"), _)) => return run_in_task(drain(agent)).await,
        Some((Some("RESUME"), _)) => return run_in_task(resume(agent)).await,
        Some((Some("FOLLOW"), upstream)) => return run_in_task(follow(agent, upstream)).await,
        _ => {}
    }
    let requested = match query {
        Ok(Query(q)) => parse_change(q.change.as_deref()),
        Err(e) => Err(format!("{}: expected change=MAIN, BACKUP, DRAIN, RESUME or FOLLOW", e.body_text())),
    };
    let requested = match requested {
        Ok(role) => role,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    run_in_task(change_role(agent, requested)).await
}

/// In its own task: a client hanging up must not cancel a transition half-way through a hook.
/// The answer to a change: the role, and for a MAIN told to follow the position where it
/// stopped taking writes.
struct Answer(Role, Option<u64>);

impl From<Role> for Answer {
    fn from(role: Role) -> Self {
        Self(role, None)
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut resp = self.0.as_str().into_response();
        if let Some(p) = self.1 {
            resp.headers_mut().insert(POSITION_HEADER, HeaderValue::from(p));
        }
        resp
    }
}

async fn run_in_task<A: Into<Answer> + Send + 'static>(
    transition: impl Future<Output = Result<A, ChangeError>> + Send + 'static,
) -> Response {
    match tokio::spawn(transition).await {
        Ok(Ok(answer)) => answer.into().into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("transition task failed: {e}")).into_response(),
    }
}

/// `change=DRAIN`: a MAIN runs its drain hook and stays MAIN, taking no writes. Answers MAIN.
async fn drain(agent: Arc<Agent>) -> Result<Role, ChangeError> {
    let mut lifecycle = agent.transitions.clone().lock_owned().await;
    if lifecycle.exiting {
        return Err(ChangeError::Exiting);
    }
    let Some(command) = agent.hooks.on_drain.as_ref().filter(|_| agent.hooks.drains()) else {
        return Err(ChangeError::Unsupported("DRAIN", "--on-drain and --position"));
    };
    if agent.role() != Role::Main {
        return Err(ChangeError::NotMain);
    }
    if !lifecycle.drained {
        info!(agent = %agent.name, "draining: running the on-drain hook");
        let output =
            agent.hooks.run(command, Role::Main, &agent.name).await.map_err(ChangeError::DrainHook)?;
        lifecycle.drained = true;
        info!(agent = %agent.name, %output, "drained: writes stopped");
    }
    Ok(Role::Main)
}

/// `change=RESUME`: undo a drain (run the resume hook). Answers the role; nothing to do when
/// not drained.
async fn resume(agent: Arc<Agent>) -> Result<Role, ChangeError> {
    let mut lifecycle = agent.transitions.clone().lock_owned().await;
    if lifecycle.exiting {
        return Err(ChangeError::Exiting);
    }
    if !agent.hooks.drains() {
        return Err(ChangeError::Unsupported("RESUME", "--on-drain and --position"));
    }
    if lifecycle.drained {
        if let Some(command) = &agent.hooks.on_resume {
            let output =
                agent.hooks.run(command, agent.role(), &agent.name).await.map_err(ChangeError::ResumeHook)?;
            info!(agent = %agent.name, %output, "on-resume hook succeeded");
        }
        lifecycle.drained = false;
        info!(agent = %agent.name, "resumed: takes writes again");
    }
    Ok(agent.role())
}

/// `change=FOLLOW&upstream=<host:port>`: run the follow hook, which makes the node replicate
/// from `upstream`, and report it in [`FOLLOWING_HEADER`]. A MAIN becomes BACKUP first and
/// says where it stopped taking writes — drained and measured before the hook when it can
/// drain, otherwise measured right after the hook stopped its writes — and, with
/// `exit_on_demote`, exits after answering, as a demotion does; the restarted node is told to
/// follow again. Answers BACKUP (and that position, when known).
async fn follow(agent: Arc<Agent>, upstream: Option<String>) -> Result<Answer, ChangeError> {
    let Some(command) = agent.hooks.on_follow.clone() else {
        return Err(ChangeError::Unsupported("FOLLOW", "--on-follow"));
    };
    let host = parse_upstream(upstream.as_deref()).map_err(ChangeError::BadRequest)?.unwrap_or("").to_owned();
    let upstream = upstream.unwrap_or_default();
    let mut lifecycle = agent.transitions.clone().lock_owned().await;
    if lifecycle.exiting {
        return Err(ChangeError::Exiting);
    }
    let was_main = agent.role() == Role::Main;
    if was_main {
        agent.role.send_replace(Role::Backup);
        lifecycle.drained = false;
        info!(agent = %agent.name, %upstream, from = %Role::Main, to = %Role::Backup, "told to follow another main: demoted first");
    }
    agent.set_following(None);
    let mut stopped_at = None;
    if was_main && let Some(drain) = agent.hooks.on_drain.as_ref().filter(|_| agent.hooks.drains()) {
        match agent.hooks.run(drain, Role::Backup, &agent.name).await {
            Ok(_) => stopped_at = position(&agent, Role::Backup).await,
            Err(e) => {
                warn!(agent = %agent.name, error = %e, "could not drain before following; measured after")
            }
        }
    }
    info!(agent = %agent.name, %upstream, "following: running the on-follow hook");
    let env = [(UPSTREAM_ENV, upstream.as_str()), (UPSTREAM_HOST_ENV, host.as_str())];
    let result = agent.hooks.run_with(&command, Role::Backup, &agent.name, &env).await;
    if was_main && stopped_at.is_none() && result.is_ok() {
        stopped_at = position(&agent, Role::Backup).await;
    }
    match &result {
        Ok(output) => {
            agent.set_following(Some(upstream.clone()).filter(|u| !u.is_empty()));
            info!(agent = %agent.name, %upstream, %output, "on-follow hook succeeded");
        }
        Err(e) => {
            error!(agent = %agent.name, %upstream, error = %e, "on-follow hook failed; follows nothing")
        }
    }
    if was_main && agent.exit_on_demote {
        lifecycle.exiting = true;
        // The answer goes out first; the exit follows (graceful shutdown lets it finish).
        tokio::spawn(async move {
            agent.exit.notify_one();
            drop(lifecycle);
        });
    }
    result.map(|_| Answer(Role::Backup, stopped_at)).map_err(ChangeError::FollowHook)
}

#[derive(Debug, thiserror::Error)]
enum ChangeError {
    #[error("on-promote hook failed, staying BACKUP: {0}")]
    PromoteHook(HookError),
    #[error("demoted to BACKUP and exiting; retry once the node has restarted")]
    Exiting,
    #[error("change={0} is not supported by this agent (it needs {1})")]
    Unsupported(&'static str, &'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("on-follow hook failed, the node follows nothing: {0}")]
    FollowHook(HookError),
    #[error("only a MAIN drains")]
    NotMain,
    #[error("on-drain hook failed, writes may not be stopped: {0}")]
    DrainHook(HookError),
    #[error("on-resume hook failed, the node stays drained: {0}")]
    ResumeHook(HookError),
}

impl IntoResponse for ChangeError {
    fn into_response(self) -> Response {
        let code = match self {
            ChangeError::PromoteHook(_)
            | ChangeError::DrainHook(_)
            | ChangeError::ResumeHook(_)
            | ChangeError::FollowHook(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ChangeError::Exiting => StatusCode::SERVICE_UNAVAILABLE,
            ChangeError::Unsupported(..) => StatusCode::NOT_FOUND,
            ChangeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ChangeError::NotMain => StatusCode::CONFLICT,
        };
        (code, self.to_string()).into_response()
    }
}

async fn change_role(agent: Arc<Agent>, requested: Role) -> Result<Role, ChangeError> {
    let mut lifecycle = agent.transitions.clone().lock_owned().await;
    if lifecycle.exiting {
        return Err(ChangeError::Exiting);
    }
    match plan_transition(agent.role(), requested) {
        Transition::Stay(role) => {
            info!(agent = %agent.name, %role, "change={requested}: already {role}");
            Ok(role)
        }
        Transition::Promote => {
            if let Some(command) = &agent.hooks.on_promote {
                info!(agent = %agent.name, "promoting: running the on-promote hook");
                match agent.hooks.run(command, Role::Main, &agent.name).await {
                    Ok(output) => info!(agent = %agent.name, %output, "on-promote hook succeeded"),
                    Err(e) => {
                        error!(agent = %agent.name, error = %e, "on-promote hook failed; staying BACKUP");
                        return Err(ChangeError::PromoteHook(e));
                    }
                }
            }
            agent.role.send_replace(Role::Main);
            agent.set_following(None);
            info!(agent = %agent.name, from = %Role::Backup, to = %Role::Main, "promoted");
            Ok(Role::Main)
        }
        Transition::Demote => {
            agent.role.send_replace(Role::Backup);
            lifecycle.drained = false;
            lifecycle.exiting = agent.exit_on_demote;
            info!(agent = %agent.name, from = %Role::Main, to = %Role::Backup, exit = agent.exit_on_demote, "demoted");
            // The answer goes out now; the hook and the exit follow, still holding the lock.
            tokio::spawn(finish_demotion(agent, lifecycle));
            Ok(Role::Backup)
        }
    }
}

async fn finish_demotion(agent: Arc<Agent>, lifecycle: OwnedMutexGuard<Lifecycle>) {
    if let Some(command) = &agent.hooks.on_demote {
        match agent.hooks.run(command, Role::Backup, &agent.name).await {
            Ok(output) => info!(agent = %agent.name, %output, "on-demote hook succeeded"),
            Err(e) => {
                error!(agent = %agent.name, error = %e, "on-demote hook failed (the node is BACKUP regardless)")
            }
        }
    }
    if lifecycle.exiting {
        agent.exit.notify_one();
    }
    drop(lifecycle);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn args(extra: &[&str]) -> AgentArgs {
        let argv = ["agent"].into_iter().chain(extra.iter().copied());
        Cli::try_parse_from(argv).expect("parse").agent
    }

    #[test]
    fn tokens_match_only_when_identical() {
        assert!(tokens_match(b"s3cret", b"s3cret"));
        assert!(!tokens_match(b"s3cret", b"x3cret"), "first byte differs");
        assert!(!tokens_match(b"s3cret", b"s3crex"), "last byte differs");
        assert!(!tokens_match(b"s3cret", b"s3cre"), "presented is a prefix");
        assert!(!tokens_match(b"s3cret", b"s3cret!"), "presented is longer");
        assert!(!tokens_match(b"s3cret", b""), "empty presented");
        // A shorter token padded with the zero bytes used for folding still differs in length.
        assert!(!tokens_match(b"ab", b"ab\0"));
        assert!(!tokens_match(b"ab\0", b"ab"));
    }

    #[test]
    fn authorization_header_uses_the_token_scheme() {
        assert_eq!(presented_token(b"token abc"), Some(&b"abc"[..]));
        assert_eq!(presented_token(b"Token   abc  "), Some(&b"abc"[..]));
        assert_eq!(presented_token(b"Bearer abc"), None);
        assert_eq!(presented_token(b"tokenabc"), None);
        assert_eq!(presented_token(b"token "), None);
        assert_eq!(presented_token(b"abc"), None);
    }

    #[test]
    fn change_accepts_exactly_main_and_backup() {
        assert_eq!(parse_change(Some("MAIN")), Ok(Role::Main));
        assert_eq!(parse_change(Some("BACKUP")), Ok(Role::Backup));
        for bad in [Some("main"), Some("PRIMARY"), Some(""), None] {
            let err = parse_change(bad).unwrap_err();
            assert!(err.contains("MAIN, BACKUP"), "{err}");
        }
    }

    #[test]
    fn transitions() {
        assert_eq!(plan_transition(Role::Backup, Role::Main), Transition::Promote);
        assert_eq!(plan_transition(Role::Main, Role::Backup), Transition::Demote);
        assert_eq!(plan_transition(Role::Main, Role::Main), Transition::Stay(Role::Main));
        assert_eq!(plan_transition(Role::Backup, Role::Backup), Transition::Stay(Role::Backup));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "abc", "10x", "0", "0ms", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn command_line_defaults_and_flags() {
        let a = args(&["--token", "t"]);
        assert_eq!(a.listen, "0.0.0.0:8080".parse().unwrap());
        assert!(a.exit_on_demote);
        assert_eq!(a.hook_timeout, Duration::from_secs(30));
        assert!(args(&["--token", "t", "--exit-on-demote"]).exit_on_demote);
        assert!(!args(&["--token", "t", "--exit-on-demote=false"]).exit_on_demote);
        assert!(!args(&["--token", "t", "--exit-on-demote", "false"]).exit_on_demote);
        assert_eq!(
            args(&["--token", "t", "--hook-timeout", "500ms"]).hook_timeout,
            Duration::from_millis(500)
        );
        assert!(Cli::try_parse_from(["agent", "--tls-cert", "c.pem"]).is_err(), "--tls-cert needs --tls-key");
    }

    #[test]
    fn a_token_is_required_and_a_token_file_wins() {
        let mut a = args(&[]);
        a.token = None;
        assert!(matches!(AgentConfig::from_args(&a), Err(AgentError::MissingToken)));
        a.token = Some("  \n".into());
        assert!(matches!(AgentConfig::from_args(&a), Err(AgentError::EmptyToken { .. })));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        a.token = Some("from-flag".into());
        a.token_file = Some(file.clone());
        let config = AgentConfig::from_args(&a).unwrap();
        assert_eq!(config.token.as_bytes(), b"from-file");
        assert_eq!(format!("{:?}", config.token), "Token(<redacted>)");

        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(AgentConfig::from_args(&a), Err(AgentError::EmptyToken { .. })));
        a.token_file = Some(dir.path().join("missing"));
        assert!(matches!(AgentConfig::from_args(&a), Err(AgentError::ReadTokenFile { .. })));
    }

    fn config(exit_on_demote: bool, on_promote: Option<&str>) -> AgentConfig {
        AgentConfig {
            name: "test".into(),
            token: Token::new("tok").unwrap(),
            hooks: Hooks {
                on_promote: on_promote.map(Into::into),
                on_demote: None,
                on_drain: None,
                on_resume: None,
                on_follow: None,
                position: None,
                timeout: Duration::from_secs(5),
            },
            exit_on_demote,
            tls: None,
        }
    }

    #[tokio::test]
    async fn hooks_report_status_output_and_timeouts() {
        let hooks = Hooks {
            on_promote: None,
            on_demote: None,
            on_drain: None,
            on_resume: None,
            on_follow: None,
            position: None,
            timeout: Duration::from_millis(300),
        };
        let out = hooks.run("printf %s \"$UNDERSTUDY_ROLE\"", Role::Main, "n").await.unwrap();
        assert_eq!(out, "MAIN");
        let err = hooks.run("echo boom >&2; exit 3", Role::Main, "n").await.unwrap_err();
        assert!(matches!(err, HookError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("exit status: 3") && err.to_string().contains("boom"), "{err}");
        let started = std::time::Instant::now();
        let err = hooks.run("sleep 30", Role::Main, "n").await.unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// The optional drain step: advertised (with the position) only with both hooks; DRAIN on
    /// a BACKUP is a 409, on a MAIN runs the hook once and stays MAIN; RESUME undoes it;
    /// an agent without the hooks answers 404 and advertises nothing.
    #[tokio::test]
    async fn drain_is_advertised_runs_once_on_a_main_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hooks");
        let mut with = config(false, None);
        with.hooks.on_drain = Some(format!("echo drain >> '{}'", log.display()));
        with.hooks.on_resume = Some(format!("echo resume >> '{}'", log.display()));
        with.hooks.position = Some("echo 41; echo 42".into());
        let client = reqwest::Client::new();
        let start = |cfg: AgentConfig| async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/rest/ha/status", listener.local_addr().unwrap());
            tokio::spawn(serve(cfg, listener, std::future::pending()));
            url
        };
        let (url, plain) = (start(with).await, start(config(false, None)).await);
        let get = |url: &str| client.get(url).header("Authorization", "token tok").send();
        let post = |url: &str, change: &str| {
            client.post(url).query(&[("change", change)]).header("Authorization", "token tok").send()
        };
        let hooks_ran = || std::fs::read_to_string(&log).unwrap_or_default();

        let resp = get(&url).await.unwrap();
        assert_eq!(resp.headers()[CAPABILITIES_HEADER], "drain, lease");
        assert_eq!(resp.headers()[POSITION_HEADER], "42", "the last line printed");
        assert_eq!(post(&url, "DRAIN").await.unwrap().status(), 409, "a BACKUP does not drain");
        assert_eq!(post(&url, "MAIN").await.unwrap().status(), 200);
        for _ in 0..2 {
            let resp = post(&url, "DRAIN").await.unwrap();
            assert_eq!((resp.status().as_u16(), resp.text().await.unwrap()), (200, "MAIN".to_owned()));
        }
        assert_eq!(hooks_ran(), "drain\n", "drained once");
        assert_eq!(get(&url).await.unwrap().text().await.unwrap(), "MAIN", "a drained node stays MAIN");
        assert_eq!(post(&url, "RESUME").await.unwrap().status(), 200);
        assert_eq!(post(&url, "RESUME").await.unwrap().status(), 200, "nothing to resume: still 200");
        assert_eq!(hooks_ran(), "drain\nresume\n");

        let resp = get(&plain).await.unwrap();
        assert_eq!(resp.headers()[CAPABILITIES_HEADER], LEASE_CAPABILITY, "no drain without its hooks");
        assert!(resp.headers().get(POSITION_HEADER).is_none());
        assert_eq!(post(&plain, "MAIN").await.unwrap().status(), 200);
        assert_eq!(post(&plain, "DRAIN").await.unwrap().status(), 404);
        assert_eq!(post(&plain, "RESUME").await.unwrap().status(), 404);
    }

    #[test]
    fn upstreams_are_host_and_port_or_nothing() {
        assert_eq!(parse_upstream(Some("10.0.0.7:8080")), Ok(Some("10.0.0.7")));
        assert_eq!(parse_upstream(Some("db-0.db.prod.svc:8080")), Ok(Some("db-0.db.prod.svc")));
        assert_eq!(parse_upstream(Some("[fd00::7]:8080")), Ok(Some("fd00::7")));
        assert_eq!(parse_upstream(Some("")), Ok(None), "empty: follow nothing");
        assert!(parse_upstream(None).unwrap_err().contains("upstream=<host:port>"));
        let long = format!("{}:1", "a".repeat(300));
        for bad in
            ["host", ":80", "h:0", "h:65536", "h:x", "fd00::7:80", "h;rm -rf /:80", "h $(id):80", &long]
        {
            assert!(parse_upstream(Some(bad)).is_err(), "{bad:?} should be refused");
        }
    }

    /// The optional follow step: advertised with its hook; FOLLOW on a BACKUP runs the hook
    /// with the upstream in its environment and reports it in `X-HA-Following`; an empty
    /// upstream follows nothing; a MAIN told to follow becomes BACKUP (and, exiting on
    /// demotion, stops serving); a promotion clears it; bad input is a 400 and runs nothing;
    /// an agent without the hook answers 404.
    #[tokio::test]
    async fn follow_runs_its_hook_reports_the_upstream_and_demotes_a_main() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hooks");
        let with = |exit| {
            let mut c = config(exit, None);
            c.hooks.on_follow = Some(format!(
                "echo \"$UNDERSTUDY_ROLE $UNDERSTUDY_UPSTREAM $UNDERSTUDY_UPSTREAM_HOST\" >> '{}'",
                log.display()
            ));
            c.hooks.position = Some("echo 7".into());
            c
        };
        let client = reqwest::Client::new();
        let start = |cfg: AgentConfig| async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/rest/ha/status", listener.local_addr().unwrap());
            (url, tokio::spawn(serve(cfg, listener, std::future::pending())))
        };
        let ((url, _), (plain, _)) = (start(with(false)).await, start(config(false, None)).await);
        let get = |url: &str| client.get(url).header("Authorization", "token tok").send();
        let post = |url: &str, query: Vec<(&'static str, &'static str)>| {
            client.post(url).query(&query).header("Authorization", "token tok").send()
        };
        let following =
            |r: &reqwest::Response| r.headers().get(FOLLOWING_HEADER).map(|v| v.to_str().unwrap().to_owned());
        let hooks_ran = || std::fs::read_to_string(&log).unwrap_or_default();

        let resp = get(&url).await.unwrap();
        assert_eq!(resp.headers()[CAPABILITIES_HEADER], "follow, lease");
        assert_eq!(following(&resp), None);
        for bad in [vec![("change", "FOLLOW")], vec![("change", "FOLLOW"), ("upstream", "x;reboot")]] {
            assert_eq!(post(&url, bad).await.unwrap().status(), 400);
        }
        assert_eq!(hooks_ran(), "", "bad input runs nothing");
        let resp = post(&url, vec![("change", "FOLLOW"), ("upstream", "10.1.2.3:8080")]).await.unwrap();
        assert!(resp.headers().get(POSITION_HEADER).is_none(), "a BACKUP took no writes to measure");
        assert_eq!((resp.status().as_u16(), resp.text().await.unwrap()), (200, "BACKUP".to_owned()));
        assert_eq!(hooks_ran(), "BACKUP 10.1.2.3:8080 10.1.2.3\n");
        assert_eq!(following(&get(&url).await.unwrap()).as_deref(), Some("10.1.2.3:8080"));
        assert_eq!(post(&url, vec![("change", "FOLLOW"), ("upstream", "")]).await.unwrap().status(), 200);
        assert_eq!(following(&get(&url).await.unwrap()), None, "follows nothing");
        assert!(hooks_ran().ends_with("BACKUP  \n"), "the hook got empty variables: {:?}", hooks_ran());
        // A MAIN told to follow: BACKUP at once; a promotion clears what it followed.
        post(&url, vec![("change", "FOLLOW"), ("upstream", "10.1.2.3:8080")]).await.unwrap();
        assert_eq!(post(&url, vec![("change", "MAIN")]).await.unwrap().status(), 200);
        assert_eq!(following(&get(&url).await.unwrap()), None, "a MAIN follows nothing");
        let resp = post(&url, vec![("change", "FOLLOW"), ("upstream", "10.9.9.9:8080")]).await.unwrap();
        assert_eq!(resp.headers()[POSITION_HEADER], "7", "a MAIN says where it stopped taking writes");
        assert_eq!(resp.text().await.unwrap(), "BACKUP");
        let resp = get(&url).await.unwrap();
        assert_eq!(following(&resp).as_deref(), Some("10.9.9.9:8080"));
        assert_eq!(resp.text().await.unwrap(), "BACKUP");

        // Exiting on demotion: a MAIN told to follow stops serving after answering.
        let (exiting, task) = start(with(true)).await;
        post(&exiting, vec![("change", "MAIN")]).await.unwrap();
        let resp = post(&exiting, vec![("change", "FOLLOW"), ("upstream", "10.1.2.3:8080")]).await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "BACKUP");
        let stopped = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
        assert_eq!(stopped, Stopped::Demoted);

        let resp = get(&plain).await.unwrap();
        assert_eq!(resp.headers()[CAPABILITIES_HEADER], LEASE_CAPABILITY);
        let resp = post(&plain, vec![("change", "FOLLOW"), ("upstream", "10.1.2.3:8080")]).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert!(resp.text().await.unwrap().contains("--on-follow"));
    }

    /// Two agents in one process, each with its own state; demotion ends only its own `serve`.
    #[tokio::test]
    async fn agents_embed_in_one_process_and_demotion_ends_serve() {
        let client = reqwest::Client::new();
        let start = |cfg: AgentConfig| async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/rest/ha/status", listener.local_addr().unwrap());
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(cfg, listener, async {
                let _ = stop_rx.await;
            }));
            (url, stop_tx, task)
        };
        let (a_url, _a_stop, a_task) = start(config(true, None)).await;
        let (b_url, b_stop, b_task) = start(config(true, None)).await;
        let post = |url: &str, change: &str| {
            client.post(url).query(&[("change", change)]).header("Authorization", "token tok").send()
        };
        let resp = post(&a_url, "MAIN").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "MAIN");
        let b_status = client.get(&b_url).header("Authorization", "token tok").send().await.unwrap();
        assert_eq!(b_status.text().await.unwrap(), "BACKUP", "agents share no state");

        let resp = post(&a_url, "BACKUP").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "BACKUP");
        let stopped = tokio::time::timeout(Duration::from_secs(10), a_task).await.unwrap().unwrap().unwrap();
        assert_eq!(stopped, Stopped::Demoted);

        assert!(!b_task.is_finished());
        b_stop.send(()).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(10), b_task).await.unwrap().unwrap().unwrap();
        assert_eq!(stopped, Stopped::Shutdown);
    }
}
