//! Test fixture: one real control plane per test binary, one namespace per test.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use understudy::controlplane::{ControlPlane, Options, client_from_kubeconfig};

pub struct Shared {
    pub kubeconfig: PathBuf,
    /// kubectl of the control plane's version.
    pub kubectl: PathBuf,
    pub version: String,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_data_dir() {
    if let Some(dir) = DATA_DIR.get()
        && std::env::var_os("UNDERSTUDY_KEEP_CONTROLPLANE").is_none()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// The control plane shared by every test in this binary, started on first use with the
/// committed CRDs installed. Its processes live on a dedicated thread, so they die with the
/// test process (PR_SET_PDEATHSIG) and never outlive it.
pub fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let started = rt.block_on(async {
                    let t = std::time::Instant::now();
                    let cp = ControlPlane::start(Options::default()).await?;
                    let _ = DATA_DIR.set(cp.dir().to_owned());
                    // SAFETY: registering a plain extern "C" fn with atexit.
                    unsafe { libc::atexit(remove_data_dir) };
                    cp.install_crds(&crds_dir()).await?;
                    let version = cp.client().await?.apiserver_version().await?.git_version;
                    // Written straight to stderr so it shows even when test output is captured.
                    let _ = writeln!(
                        std::io::stderr(),
                        "[fixture] real kube-apiserver {version} + etcd at {} ready with CRDs in {:.1}s (data: {})",
                        cp.server_url(),
                        t.elapsed().as_secs_f64(),
                        cp.dir().display()
                    );
                    anyhow::Ok((cp, version))
                });
                match started {
                    Ok((cp, version)) => {
                        let info = Shared { kubeconfig: cp.kubeconfig_path(), kubectl: cp.kubectl(), version };
                        tx.send(Ok(info)).unwrap();
                        // Keep the processes' parent thread alive for the life of the test binary.
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => tx.send(Err(format!("{e:#}"))).unwrap(),
                }
            })
            .unwrap();
        rx.recv().unwrap().unwrap_or_else(|e| panic!("starting the test control plane: {e}"))
    })
}

/// Operator logs go to the test's captured output (shown when a test fails).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,understudy=debug,kube=warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

thread_local! {
    /// Namespaces the test on this thread created: dumped if it fails.
    static NAMESPACES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// When a test fails, print what its namespaces held (custom resources, Services,
/// EndpointSlices, pods) and their Events after the panic message. (The control plane and
/// with it every namespace is torn down when the test binary ends.)
fn dump_namespaces_on_failure() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let namespaces = NAMESPACES.with(|n| n.borrow().clone());
            for ns in namespaces {
                let kinds = "haclusters,failoverrequests,shardfailovers,protectiongroups,services,endpointslices,pods";
                let (_, objects, _) = kubectl_result(&["get", kinds, "-n", &ns, "-o", "yaml"]);
                let (_, events, _) = kubectl_result(&["get", "events", "-n", &ns, "--sort-by=.metadata.creationTimestamp"]);
                eprintln!("--- objects in namespace {ns} when the test failed:\n{objects}\n--- events in {ns}:\n{events}");
            }
            // Once more after the dump: a log that keeps only its head and tail (CI's) still
            // says why the test failed.
            eprintln!("--- the test failed: {info}");
        }));
    });
}

/// A client for the shared control plane, bound to the calling test's runtime.
pub async fn client() -> Client {
    init_logging();
    dump_namespaces_on_failure();
    NAMESPACES.with(|n| n.borrow_mut().clear());
    client_from_kubeconfig(&shared().kubeconfig).await.expect("client")
}

/// A fresh namespace for one test: `<prefix>-<n>-<pid>`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}-{}", N.fetch_add(1, Ordering::Relaxed), std::process::id());
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    NAMESPACES.with(|n| n.borrow_mut().push(name.clone()));
    name
}

/// Run the control plane's kubectl against it; returns stdout, panics with stderr on failure.
pub fn kubectl(args: &[&str]) -> String {
    let (ok, out, err) = kubectl_result(args);
    assert!(ok, "kubectl {args:?} failed:\n{err}");
    out
}

/// Run kubectl; returns (success, stdout, stderr).
pub fn kubectl_result(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(&shared().kubectl)
        .arg("--kubeconfig")
        .arg(&shared().kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.0 GET on loopback; returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}

/// An `understudy` process started by a test, killed on drop.
pub struct Process {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Process {
    /// Start the `understudy` binary with `args` against the shared control plane.
    pub fn understudy(args: &[&str], log_name: &str) -> Self {
        Self::understudy_with_env(args, log_name, &[])
    }

    /// Like [`Process::understudy`], with extra environment variables.
    pub fn understudy_with_env(args: &[&str], log_name: &str, env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{log_name}-{}.log", std::process::id()));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"));
        cmd.args(args).env("KUBECONFIG", &shared().kubeconfig).env("RUST_LOG", "info,understudy=debug");
        // The tests' members listen on loopback; their clientAddress stands for a routable one.
        cmd.env("UNDERSTUDY_ALLOW_CLIENT_ADDRESS", "true");
        cmd.env("UNDERSTUDY_ALLOW_WORKLOAD_RESTARTS", "true");
        cmd.envs(env.iter().copied());
        let child = understudy::controlplane::spawn(cmd, &log).expect("start understudy");
        Self { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (at most `within`) until the process crashed at the fault point `point` (exit 137,
    /// `UNDERSTUDY_CRASH_AT`).
    pub async fn crashed_at(&mut self, point: &str, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the operator never reached {point}: {}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(status.code(), Some(137), "crashed at {point}: {}", self.log());
    }

    /// SIGTERM and wait.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` every 100 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub use understudy::localredis::{LocalRedis as RedisServer, redis_conn};

/// Samples the role of every server every 20 ms and remembers the most primaries ever seen
/// at once (each sample queries all servers back to back).
pub struct RoleSampler {
    pub max_primaries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub samples: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RoleSampler {
    /// Sample servers given as (ip, port, password).
    pub fn start(ports: Vec<(String, u16, Option<String>)>) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let max_primaries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let samples = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (m, n) = (max_primaries.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let servers: Vec<RedisProbe> =
                ports.into_iter().map(|(ip, port, password)| RedisProbe { ip, port, password }).collect();
            loop {
                let roles = futures::future::join_all(servers.iter().map(RedisProbe::role)).await;
                let mut primaries = roles.iter().filter(|r| r.as_deref() == Some("master")).count();
                if primaries > 1 {
                    // The servers answer one after the other, not at one instant: a switchover
                    // demoting one and promoting the other between two answers (milliseconds
                    // apart on a loaded machine) reads as two masters. Count two only when
                    // asking those servers again at once still says so.
                    let masters: Vec<&RedisProbe> = servers
                        .iter()
                        .zip(&roles)
                        .filter(|(_, r)| r.as_deref() == Some("master"))
                        .map(|(s, _)| s)
                        .collect();
                    let again = futures::future::join_all(masters.iter().map(|s| s.role())).await;
                    primaries = again.iter().filter(|r| r.as_deref() == Some("master")).count().max(1);
                }
                m.fetch_max(primaries, SeqCst);
                n.fetch_add(1, SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        Self { max_primaries, samples, task }
    }

    pub fn max(&self) -> usize {
        self.max_primaries.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.samples.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RoleSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct RedisProbe {
    ip: String,
    port: u16,
    password: Option<String>,
}

impl RedisProbe {
    async fn role(&self) -> Option<String> {
        let mut c = redis_conn(&self.ip, self.port, self.password.as_deref(), 200).await.ok()?;
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()?;
        info.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix("role:").map(str::to_owned))
    }
}

pub use understudy::operator::InProcess as Operator;

/// A reference agent (`understudy agent`) under a supervisor that restarts it whenever it
/// exits, as systemd or a kubelet would (a demoted agent exits by design).
pub struct SupervisedAgent {
    pub addr: std::net::SocketAddr,
    pub restarts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    child: std::sync::Arc<std::sync::Mutex<Option<std::process::Child>>>,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SupervisedAgent {
    /// Start on `ip` (any 127.x.y.z) with `token`.
    pub fn start(ip: &str, token: &str) -> Self {
        Self::start_with(ip, token, Vec::new())
    }

    /// Start on `ip` with `token` and further `understudy agent` arguments (hooks).
    pub fn start_with(ip: &str, token: &str, args: Vec<String>) -> Self {
        use std::sync::{Arc, Mutex, atomic::*};
        let addr: std::net::SocketAddr =
            format!("{ip}:{}", understudy::controlplane::free_port().unwrap()).parse().unwrap();
        let log = Self::log_path(addr);
        let token = token.to_owned();
        let spawn = move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"));
            cmd.args(["agent", "--listen", &addr.to_string()])
                .args(&args)
                .env("UNDERSTUDY_AGENT_TOKEN", &token);
            understudy::controlplane::spawn(cmd, &log).expect("start agent")
        };
        let child = Arc::new(Mutex::new(Some(spawn())));
        let restarts = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let (c, r, s) = (child.clone(), restarts.clone(), stopped.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if s.load(Ordering::SeqCst) {
                    continue;
                }
                let mut guard = c.lock().unwrap();
                let exited = match guard.as_mut() {
                    Some(ch) => ch.try_wait().ok().flatten().is_some(),
                    None => true,
                };
                if exited {
                    *guard = Some(spawn());
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self { addr, restarts, child, stopped, task }
    }

    fn log_path(addr: std::net::SocketAddr) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("understudy-agent-{}-{}.log", addr.port(), std::process::id()))
    }

    /// What the agent logged (its latest run: a restart starts the file again).
    pub fn log(&self) -> String {
        std::fs::read_to_string(Self::log_path(self.addr)).unwrap_or_default()
    }

    /// Crash it (SIGKILL) and keep it down until [`SupervisedAgent::resume`].
    pub fn kill_and_hold(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `signal` to the running agent process (SIGSTOP freezes it: it neither answers
    /// nor exits, so the supervisor leaves it be; SIGCONT thaws it).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = self.child.lock().unwrap().as_ref() {
            // SAFETY: kill(2) on a child process this supervisor started and has not reaped.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Let the supervisor start it again (it comes back as BACKUP).
    pub fn resume(&self) {
        self.stopped.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The agent's answer to `GET /rest/ha/status` with `token`, if it answers.
    pub async fn status(&self, token: &str) -> Option<(u16, String)> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/rest/ha/status", self.addr))
            .header("Authorization", format!("token {token}"))
            .timeout(std::time::Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        Some((resp.status().as_u16(), resp.text().await.ok()?.trim().to_owned()))
    }
}

impl Drop for SupervisedAgent {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut g) = self.child.lock()
            && let Some(mut c) = g.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
