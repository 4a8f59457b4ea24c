//! `kubectl understudy`: one command per operation, with progress, for people used to
//! `kubectl cnpg` and `patronictl`.
//!
//! - [`render`]: pure — the views (`-o json|yaml`) and every line of text, unit-tested.
//! - [`connect`]: the client, configured like kubectl (kubeconfig, `--context`,
//!   `--namespace`), and who is asking (recorded on what the plugin creates or changes).
//! - [`read`]: `status` and `history`.
//! - [`operations`]: `switchover`, `failover`, `site-failover` — objects a GitOps user could
//!   have written, created and then followed.
//! - [`maintenance`]: `pause`, `resume`, `restart` — merge patches of one spec field.
//! - [`follow`]: watching an object until it reaches an end, with a deadline.
//!
//! Exit codes: 0 done, 1 failed or refused (the reason on one line on stderr), 2 usage error,
//! 3 timed out while following (the operation goes on in the cluster), 130 interrupted.

pub mod connect;
pub mod follow;
pub mod maintenance;
pub mod operations;
pub mod read;
pub mod render;

use std::{path::PathBuf, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::resources::shared::GoDuration;

/// The field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-understudy";

/// Operations on Understudy HaClusters: status, switchover, failover, pause/resume, restart,
/// site failover, history.
#[derive(Parser, Debug)]
#[command(name = "kubectl-understudy", bin_name = "kubectl understudy", version)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where to connect, as kubectl takes it.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Members, roles, health, lag, epoch, the last failover, operations in flight and the
    /// conditions that are not OK; every cluster of the namespace when no name is given.
    Status(StatusArgs),
    /// Move the primary to a replica without losing writes (a ShardFailover, or with --to a
    /// FailoverRequest of type Switchover), and follow it.
    Switchover(SwitchoverArgs),
    /// Promote a replica in place of a lost primary (a FailoverRequest of type Failover), and
    /// follow it.
    Failover(FailoverArgs),
    /// Stop the operator from changing any role of the cluster (spec.paused); it keeps
    /// observing and reporting.
    Pause(ClusterChange),
    /// Let the operator act on the cluster again (spec.paused: false).
    Resume(ClusterChange),
    /// Restart the members the operator runs (spec.instances), one at a time, replicas first,
    /// the primary after a switchover.
    Restart(ClusterChange),
    /// Make the other site of a ProtectionGroup production (a planned failover), and follow it.
    SiteFailover(SiteFailoverArgs),
    /// Past operations, role changes and Events of a cluster, oldest first.
    History(HistoryArgs),
    /// Print a shell completion script for kubectl-understudy.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people.
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The HaCluster; every cluster of the namespace when omitted.
    pub cluster: Option<String>,
    /// Every namespace (only without a cluster name).
    #[arg(short = 'A', long, conflicts_with = "cluster")]
    pub all_namespaces: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    pub cluster: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// Following an operation until it ends.
#[derive(Args, Debug, Clone)]
pub struct FollowArgs {
    /// Follow the operation until it ends, printing each change (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Create the object, print its name and return.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow (e.g. 90s, 10m). Default: the operation's own deadline plus 30s;
    /// for pause and resume, 30s for the operator to report the change; for restart, 15m for
    /// the roll to end. When it
    /// passes the plugin exits 3; the operation goes on in the cluster.
    #[arg(long)]
    pub timeout: Option<GoDuration>,
}

impl FollowArgs {
    pub fn following(&self) -> bool {
        !self.no_wait
    }

    /// The deadline to follow for: `--timeout`, else the object's own deadline plus a margin.
    pub fn deadline(&self, own: Duration) -> Duration {
        self.timeout.map_or(own + Duration::from_secs(30), Duration::from)
    }
}

/// Who asked and why, recorded on what the plugin creates or changes.
#[derive(Args, Debug, Clone)]
pub struct RequestArgs {
    /// Why: recorded in the annotation understudy.dev/reason and shown by `history`.
    #[arg(long)]
    pub reason: Option<String>,
}

/// A change to one cluster: which, who asks and why, whether to follow it.
#[derive(Args, Debug)]
pub struct ClusterChange {
    /// The HaCluster.
    pub cluster: String,
    /// Change nothing: switchover and failover create their request with spec.dryRun (the
    /// operator validates it and reports the member it would promote); pause, resume and
    /// restart are a server-side dry run (the API server validates the change).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub request: RequestArgs,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Args, Debug)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub change: ClusterChange,
    /// The replica to promote (default: the operator picks the best one).
    #[arg(long)]
    pub to: Option<String>,
    /// The shard to switch over; required for clusters with several shards.
    #[arg(long)]
    pub shard: Option<String>,
}

#[derive(Args, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub change: ClusterChange,
    /// Accept that writes not yet replicated may be lost: fail over even though the primary
    /// answers, and promote when the old primary cannot be fenced (onTimeout: Force).
    #[arg(long)]
    pub force: bool,
    /// Refuse unless this member is the primary (default: the primary the plugin sees now).
    #[arg(long)]
    pub expected_primary: Option<String>,
    /// The replica to promote (default: the operator picks the best eligible one).
    #[arg(long)]
    pub candidate: Option<String>,
    /// The shard; required for clusters with several shards.
    #[arg(long)]
    pub shard: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Site {
    Source,
    Target,
}

#[derive(Args, Debug)]
pub struct SiteFailoverArgs {
    /// The ProtectionGroup.
    pub group: String,
    /// The site to make production.
    #[arg(long, value_enum)]
    pub to: Site,
    /// A forced failover: where the production site does not answer, its DR side is
    /// promoted without waiting for it (sets spec.forcedFailover; needs --reason).
    #[arg(long)]
    pub force: bool,
    /// Ask the operator what the failover would do now (steps, blockers, lag per pair);
    /// change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub request: RequestArgs,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// Why a command did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The command line cannot be acted on (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Refused before anything was changed, or the operation failed (exit 1).
    #[error("{0}")]
    Refused(String),
    /// Following ran out of time (exit 3); the operation goes on in the cluster.
    #[error("{what} is still running after {waited}; it goes on in the cluster (follow it with `{how}`)")]
    TimedOut { what: String, waited: String, how: String },
    /// Ctrl-C while following (exit 130).
    #[error("stopped following; {0} goes on in the cluster")]
    Interrupted(String),
    /// Reading the kubeconfig or talking to the API server (exit 1).
    #[error("{0}")]
    Client(String),
}

impl PluginError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Refused(_) | Self::Client(_) => 1,
            Self::TimedOut { .. } => 3,
            Self::Interrupted(_) => 130,
        }
    }
}

impl From<kube::Error> for PluginError {
    fn from(e: kube::Error) -> Self {
        Self::Client(api_error(&e))
    }
}

/// A kube error on one line: the API server's own message where there is one.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => render::one_line(&s.message),
        other => render::one_line(&other.to_string()),
    }
}

/// Run one command; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Completion { shell } => {
            // For the executable itself: kubectl does not pass its own completion on to plugins.
            let mut command = Cli::command().bin_name("kubectl-understudy");
            clap_complete::generate(shell, &mut command, "kubectl-understudy", &mut std::io::stdout());
            Ok(())
        }
        command => dispatch(&cli.connection, command).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(conn: &ConnectionArgs, command: Command) -> Result<(), PluginError> {
    let target = connect::connect(conn).await?;
    match command {
        Command::Status(a) => read::status(&target, a).await,
        Command::History(a) => read::history(&target, a).await,
        Command::Switchover(a) => operations::switchover(&target, a).await,
        Command::Failover(a) => operations::failover(&target, a).await,
        Command::SiteFailover(a) => operations::site_failover(&target, a).await,
        Command::Pause(a) => maintenance::set_paused(&target, a, true).await,
        Command::Resume(a) => maintenance::set_paused(&target, a, false).await,
        Command::Restart(a) => maintenance::restart(&target, a).await,
        Command::Completion { .. } => unreachable!("handled before connecting"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-understudy").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_like_kubectl() {
        let cli = parse(&["-n", "shop", "--context", "prod", "status", "orders", "-o", "json"]).unwrap();
        assert_eq!(cli.connection.namespace.as_deref(), Some("shop"));
        assert_eq!(cli.connection.context.as_deref(), Some("prod"));
        let Command::Status(s) = cli.command else { panic!("status") };
        assert_eq!((s.cluster.as_deref(), s.output), (Some("orders"), Output::Json));
        // Global flags also after the subcommand.
        let cli = parse(&["status", "-A", "--kubeconfig", "/tmp/k"]).unwrap();
        assert_eq!(cli.connection.kubeconfig, Some(PathBuf::from("/tmp/k")));
        assert!(parse(&["status", "orders", "-A"]).is_err(), "-A is for all clusters");
        assert!(parse(&["status", "-o", "xml"]).is_err());
        assert!(parse(&["switchover"]).is_err(), "a cluster is required");
        assert!(parse(&["site-failover", "dr", "--to", "elsewhere"]).is_err());
    }

    #[test]
    fn following_is_the_default_and_the_deadline_has_a_margin() {
        let cli = parse(&["switchover", "orders", "--to", "b"]).unwrap();
        let Command::Switchover(s) = cli.command else { panic!("switchover") };
        assert_eq!((s.change.cluster.as_str(), s.to.as_deref()), ("orders", Some("b")));
        assert!(s.change.follow.following());
        assert_eq!(s.change.follow.deadline(Duration::from_secs(300)), Duration::from_secs(330));
        let cli = parse(&["failover", "orders", "--no-wait", "--timeout", "2m"]).unwrap();
        let Command::Failover(f) = cli.command else { panic!("failover") };
        assert!(!f.change.follow.following());
        assert_eq!(f.change.follow.deadline(Duration::from_secs(300)), Duration::from_secs(120));
        let cli = parse(&["failover", "orders", "--no-wait", "--wait"]).unwrap();
        let Command::Failover(f) = cli.command else { panic!("failover") };
        assert!(f.change.follow.following(), "the last of --wait/--no-wait wins");
        assert!(parse(&["failover", "orders", "--timeout", "soon"]).is_err());
    }

    /// deploy/krew/understudy.yaml: a krew Plugin whose version follows the crate, whose
    /// archives are this version's and hold this binary, and whose checksums are the
    /// release's placeholder or a real SHA-256 — never something made up in between.
    #[test]
    fn the_krew_manifest_follows_the_crate_version() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/krew/understudy.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let m: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(m["apiVersion"].as_str(), Some("krew.googlecontainertools.github.com/v1alpha2"));
        assert_eq!(
            (m["kind"].as_str(), m["metadata"]["name"].as_str()),
            (Some("Plugin"), Some("understudy"))
        );
        let version = format!("v{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            m["spec"]["version"].as_str(),
            Some(version.as_str()),
            "update deploy/krew/understudy.yaml"
        );
        let platforms = m["spec"]["platforms"].as_sequence().unwrap();
        assert!(!platforms.is_empty());
        for p in platforms {
            let uri = p["uri"].as_str().unwrap();
            assert!(uri.contains(&format!("/{version}/kubectl-understudy-{version}-")), "{uri}");
            assert_eq!(p["bin"].as_str(), Some("kubectl-understudy"));
            let sha = p["sha256"].as_str().unwrap();
            let real =
                sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
            assert!(sha == "RELEASE_SHA256" || real, "sha256 {sha:?}: the placeholder or a real checksum");
        }
    }

    #[test]
    fn exit_codes_say_what_happened() {
        assert_eq!(PluginError::Usage("x".into()).exit_code(), 2);
        assert_eq!(PluginError::Refused("x".into()).exit_code(), 1);
        let t = PluginError::TimedOut { what: "a".into(), waited: "1s".into(), how: "b".into() };
        assert_eq!(t.exit_code(), 3);
        assert!(t.to_string().contains("goes on in the cluster"));
    }
}
