//! The node tier's fixture: one real node (tools/node/node.sh) per test binary, started on
//! first use and torn down when the binary exits — also when it is killed, by the node's
//! watchdog. The operator image is built from this checkout (tools/image.sh), so every test
//! here runs the code under test as a pod.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
};
use understudy::controlplane::client_from_kubeconfig;

/// The opt-out for machines where the node cannot run (no root): the tier's tests pass
/// without doing anything and say so; tools/test.sh repeats it in its summary.
pub const OPT_OUT: &str = "UNDERSTUDY_NODE_TIER";

pub struct Node {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub containerd: PathBuf,
    pub helm: PathBuf,
    pub bin_dir: PathBuf,
    /// The operator image as the chart names it by default (repository:appVersion).
    pub operator_image: String,
    pub redis_image: String,
}

static NODE: OnceLock<Option<Node>> = OnceLock::new();

/// Tests that use the node take it shared; a test that stops the kubelet takes it alone.
pub static SHARED_NODE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

extern "C" fn teardown_node() {
    if let Some(Some(node)) = NODE.get() {
        let _ = Command::new(repo().join("tools/node/node.sh"))
            .args(["down"])
            .arg(&node.dir)
            .env("BIN_DIR", &node.bin_dir)
            .status();
    }
}

/// Run a script that prints a path on its last stdout line; its stderr goes to ours.
fn script_path(cmd: &mut Command) -> PathBuf {
    let out = cmd.stderr(std::process::Stdio::inherit()).output().expect("running a build script");
    assert!(out.status.success(), "{cmd:?} failed (its output is above)");
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(stdout.lines().last().expect("a path").trim())
}

/// The shared node, started on first use; `None` when the tier is opted out.
pub fn node() -> Option<&'static Node> {
    NODE.get_or_init(|| {
        if std::env::var(OPT_OUT).is_ok_and(|v| v == "skip") {
            eprintln!("[node] SKIPPED: {OPT_OUT}=skip — the node tier's tests do nothing on this machine");
            return None;
        }
        let t = Instant::now();
        let cp = understudy::controlplane::binaries().expect("control-plane binaries");
        let bin_dir =
            script_path(Command::new("bash").arg(repo().join("tools/controlplane/build.sh")).arg("node"));
        assert_eq!(cp, bin_dir, "control plane and node binaries in one directory");
        let helm = script_path(&mut Command::new(repo().join("tools/helm/build.sh")));
        let image = |what: &str| script_path(Command::new(repo().join("tools/image.sh")).arg(what));
        let operator_tar = image("understudy");
        let redis_tar = image("redis");
        let pause_tar = image("pause");
        let dir = std::env::temp_dir().join(format!("understudy-node-{}", std::process::id()));
        let out = Command::new(repo().join("tools/node/node.sh"))
            .arg("up")
            .arg(&dir)
            .arg(std::process::id().to_string())
            .env("BIN_DIR", &bin_dir)
            .env(
                "NODE_IMAGES",
                format!("{} {} {}", pause_tar.display(), redis_tar.display(), operator_tar.display()),
            )
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running tools/node/node.sh");
        assert!(
            out.status.success(),
            "the node did not start (see [node] lines above); a machine without root can set {OPT_OUT}=skip"
        );
        // SAFETY: registering a plain extern "C" fn with atexit.
        unsafe { libc::atexit(teardown_node) };
        let vars: std::collections::HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let version = env!("CARGO_PKG_VERSION");
        let redis_version = redis_tar
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("redis-"))
            .expect("redis-<version>.tar")
            .to_owned();
        let node = Node {
            dir,
            kubeconfig: vars["KUBECONFIG"].clone().into(),
            kubectl: vars["KUBECTL"].clone().into(),
            containerd: vars["CONTAINERD"].clone().into(),
            helm,
            bin_dir,
            operator_image: format!("ghcr.io/understudy-dev/understudy:{version}"),

            redis_image: format!("docker.io/local/redis:{redis_version}"),
        };
        // CRDs once, before tests install the chart concurrently.
        let (ok, _, err) =
            node.kubectl_result(&["apply", "--server-side", "-f", &repo().join("crds").to_string_lossy()]);
        assert!(ok, "installing CRDs: {err}");
        node.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
        eprintln!(
            "[node] node tier ready in {:.1}s (data: {})",
            t.elapsed().as_secs_f64(),
            node.dir.display()
        );
        Some(node)
    })
    .as_ref()
}

impl Node {
    pub async fn client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig).await.expect("client")
    }

    pub fn kubectl_result(&self, args: &[&str]) -> (bool, String, String) {
        self.run(&self.kubectl, args)
    }

    /// Run kubectl or helm against the node; returns (success, stdout, stderr).
    fn run(&self, program: &Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(program)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl_result(args);
        assert!(ok, "kubectl {args:?} failed:\n{err}");
        out
    }

    /// kubectl apply of a manifest given as a string.
    pub fn apply(&self, ns: &str, yaml: &str) {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", ns, "apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn helm_result(&self, args: &[&str]) -> (bool, String, String) {
        self.run(&self.helm, args)
    }

    pub fn helm(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.helm_result(args);
        assert!(ok, "helm {args:?} failed:\n{err}\n{out}");
        out
    }

    /// `helm install` of charts/understudy into `ns`, watching only `ns`, with the image built
    /// from this checkout (the chart's default name; `Never` pull: it is already on the node).
    pub fn install_operator(&self, ns: &str, extra: &[&str]) {
        let chart = repo().join("charts/understudy");
        let mut args = vec![
            "install",
            "understudy",
            chart.to_str().unwrap(),
            "-n",
            ns,
            "--set",
            "image.pullPolicy=Never",
            // Cluster-wide and shared by every release: the CRD-level tests own them.
            "--set",
            "aggregatedRoles.create=false",
            "--set-json",
        ];
        let watch = format!("watchNamespaces=[\"{ns}\"]");
        args.push(&watch);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--wait", "--timeout", "120s"]);
        self.helm(&args);
    }

    /// Kill a container's process through the runtime (never by process name: another
    /// cluster's processes are visible to pgrep).
    pub fn kill_container(&self, container_id: &str) {
        let id = container_id.trim_start_matches("containerd://");
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd)
            .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id])
            .output()
            .expect("ctr");
        assert!(out.status.success(), "ctr tasks kill {id}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The host PID of a container's main process.
    pub fn container_pid(&self, container_id: &str) -> u32 {
        let id = container_id.trim_start_matches("containerd://");
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd)
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output()
            .expect("ctr");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no task {id} in:\n{text}"))
    }

    /// Stop or start the kubelet (node NotReady tests).
    pub fn kubelet(&self, action: &str) {
        let ok = Command::new(repo().join("tools/node/node.sh"))
            .args(["kubelet"])
            .arg(&self.dir)
            .arg(action)
            .env("BIN_DIR", &self.bin_dir)
            .status()
            .expect("node.sh")
            .success();
        assert!(ok, "node.sh kubelet {action}");
    }
}

/// A test's namespace: deleted when the test passes; on failure its pods, events, operator
/// logs and custom resources are printed first.
pub struct TestNs {
    pub name: String,
    node: &'static Node,
}

impl TestNs {
    pub async fn new(node: &'static Node, client: &Client, prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed));
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace");
        Self { name, node }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let ns = self.name.as_str();
        if std::thread::panicking() {
            let n = self.node;
            eprintln!("==== dump of namespace {ns} ====");
            for args in [
                vec![
                    "get",
                    "pods,svc,endpointslices,statefulsets,deployments,leases",
                    "-o",
                    "wide",
                    "-n",
                    ns,
                ],
                vec!["get", "hac,sfo,fr", "-o", "yaml", "-n", ns],
                vec!["get", "events", "--sort-by=.lastTimestamp", "-n", ns],
                vec!["logs", "-l", "app.kubernetes.io/name=understudy", "--tail=200", "--prefix", "-n", ns],
            ] {
                let (_, out, err) = n.kubectl_result(&args);
                eprintln!("$ kubectl {}\n{out}{err}", args.join(" "));
            }
        } else {
            let _ = self.node.helm_result(&["uninstall", "understudy", "-n", ns, "--wait=false"]);
            let _ = self.node.kubectl_result(&["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

/// Poll `f` every 50 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pods matching `selector`, by name.
pub async fn pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pods = api.list(&ListParams::default().labels(selector)).await.expect("list pods").items;
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods
}

pub fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

pub fn container_id(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()?.container_id.clone()
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
