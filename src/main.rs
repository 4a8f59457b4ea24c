use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use understudy::{leader::LeaseConfig, operator::RunConfig};

/// Understudy: owns the roles of replicated stateful services on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "UNDERSTUDY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller manager against the cluster in KUBECONFIG or the in-cluster config.
    Run(RunArgs),
    /// Print every CustomResourceDefinition as YAML (or write one file per kind).
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Walk through a failover on a local control plane with real redis-server processes.
    #[cfg(feature = "testbed")]
    Demo(understudy::demo::DemoArgs),
    /// Serve the HA-status API (GET/POST /rest/ha/status) for a node with no HA API of its own.
    Agent(understudy::agent::AgentArgs),
    /// Check a freshly started HA agent against the protocol the Agent engine relies on
    /// (README, "The HA agent protocol"); exits non-zero if a rule fails.
    AgentConformance(understudy::agent_conformance::ConformanceArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Act only while holding a coordination.k8s.io Lease (run several replicas safely).
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "understudy-leader")]
    leader_election_name: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Watch only these namespaces (comma-separated); default the whole cluster.
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Route clients to static members' `clientAddress` (an address the operator does not
    /// probe). Off by default: it lets whoever may edit an HaCluster put any address into an
    /// EndpointSlice, which Kubernetes' built-in `edit` role deliberately cannot do.
    #[arg(long, env = "UNDERSTUDY_ALLOW_CLIENT_ADDRESS")]
    allow_client_address: bool,
    /// Restart the workloads an HaCluster's `spec.redirect.restart` lists after a role
    /// change (needs patch rights on them). Off by default: it lets whoever may edit an
    /// HaCluster have any workload of its namespace restarted.
    #[arg(long, env = "UNDERSTUDY_ALLOW_WORKLOAD_RESTARTS")]
    allow_workload_restarts: bool,
    /// Serve Sentinel-compatible discovery of redis HaClusters on this address (for example
    /// 0.0.0.0:26379). Needs --sentinel-namespaces and one of --sentinel-password-file or
    /// --sentinel-no-auth.
    #[arg(long, env = "UNDERSTUDY_SENTINEL_LISTEN")]
    sentinel_listen: Option<SocketAddr>,
    /// File holding the password discovery clients must AUTH with (mount it from a Secret).
    #[arg(long, env = "UNDERSTUDY_SENTINEL_PASSWORD_FILE")]
    sentinel_password_file: Option<PathBuf>,
    /// Serve discovery without a password: whoever reaches the port learns every served
    /// cluster's primary and replica addresses.
    #[arg(long, env = "UNDERSTUDY_SENTINEL_NO_AUTH")]
    sentinel_no_auth: bool,
    /// Namespaces whose redis HaClusters discovery serves (comma-separated), or `*` for every
    /// namespace the operator watches.
    #[arg(long, value_delimiter = ',', env = "UNDERSTUDY_SENTINEL_NAMESPACES")]
    sentinel_namespaces: Vec<String>,
    /// The IP the other operator replicas reach this replica's discovery endpoint on
    /// (default: $POD_IP, set from the downward API). While this replica leads it is written
    /// to the Lease, and the others relay its promotions to their clients at once instead of
    /// after the status write.
    #[arg(long, env = "POD_IP")]
    sentinel_advertise_ip: Option<std::net::IpAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo narrates on stdout; its logs stay quiet unless RUST_LOG asks.
    #[cfg(feature = "testbed")]
    let quiet = matches!(cli.command, Command::Demo(_));
    #[cfg(not(feature = "testbed"))]
    let quiet = false;
    let default_filter = if quiet { "error" } else { "info,kube=warn,tower=warn,hyper=warn" };
    init_tracing(cli.log_format, default_filter);
    match cli.command {
        Command::Crds { dir } => print_crds(dir),
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(run(args)),
        Command::Agent(args) => tokio::runtime::Runtime::new()?.block_on(understudy::agent::run(args)),
        Command::AgentConformance(args) => {
            tokio::runtime::Runtime::new()?.block_on(understudy::agent_conformance::run(args))
        }
        #[cfg(feature = "testbed")]
        Command::Demo(args) => tokio::runtime::Runtime::new()?.block_on(understudy::demo::run(args)),
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colour only on a terminal: a pod's or a test's log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("loading kubeconfig or in-cluster config")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "understudy".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let sentinel = sentinel_config(&args, &identity)?;
    let leader_elect = args.leader_elect.then(|| {
        LeaseConfig::new(
            args.leader_election_namespace.unwrap_or_else(|| "default".into()),
            args.leader_election_name,
            identity.clone(),
        )
    });
    let cfg = RunConfig {
        sentinel,
        leader_elect,
        listen: args.listen,
        namespaces: args.namespaces,
        allow_client_address: args.allow_client_address,
        allow_workload_restarts: args.allow_workload_restarts,
    };
    understudy::operator::run(client, cfg, shutdown_signal()).await
}

/// The discovery endpoint's settings, refusing a half-configured one before anything runs.
fn sentinel_config(
    args: &RunArgs,
    identity: &str,
) -> anyhow::Result<Option<understudy::sentinel::SentinelConfig>> {
    let Some(listen) = args.sentinel_listen else {
        anyhow::ensure!(
            args.sentinel_password_file.is_none()
                && !args.sentinel_no_auth
                && args.sentinel_namespaces.is_empty(),
            "--sentinel-password-file, --sentinel-no-auth and --sentinel-namespaces need --sentinel-listen"
        );
        return Ok(None);
    };
    let password = match (&args.sentinel_password_file, args.sentinel_no_auth) {
        (Some(_), true) => {
            anyhow::bail!("--sentinel-password-file and --sentinel-no-auth exclude each other")
        }
        (None, false) => anyhow::bail!(
            "--sentinel-listen needs --sentinel-password-file (clients AUTH with it) or, to serve anyone who can connect, --sentinel-no-auth"
        ),
        (None, true) => None,
        (Some(path), false) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the discovery password from {}", path.display()))?;
            let password = text.trim_end_matches(['\r', '\n']).to_owned();
            anyhow::ensure!(!password.is_empty(), "the discovery password file {} is empty", path.display());
            Some(password)
        }
    };
    let namespaces = match args.sentinel_namespaces.as_slice() {
        [] => anyhow::bail!(
            "--sentinel-listen needs --sentinel-namespaces: the namespaces whose clusters clients may discover, or `*` for every watched one"
        ),
        [all] if all == "*" => args.namespaces.clone(),
        list => {
            if let Some(outside) =
                list.iter().find(|n| !args.namespaces.is_empty() && !args.namespaces.contains(n))
            {
                anyhow::bail!(
                    "--sentinel-namespaces names {outside}, which the operator does not watch (--namespaces)"
                );
            }
            anyhow::ensure!(!list.iter().any(|n| n == "*"), "--sentinel-namespaces: `*` stands alone");
            list.to_vec()
        }
    };
    Ok(Some(understudy::sentinel::SentinelConfig {
        listen,
        password,
        namespaces,
        allow_client_address: args.allow_client_address,
        identity: identity.to_owned(),
        advertise_ip: args.sentinel_advertise_ip,
        bound: None,
    }))
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn print_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in understudy::resources::crds() {
        let yaml = understudy::resources::crd_yaml(&crd)?;
        match &dir {
            Some(dir) => {
                let path = dir.join(understudy::resources::crd_file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
