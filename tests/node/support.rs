//! The node tier's fixture: one real node (tools/node/node.sh) per test binary, started on
//! first use and torn down when the binary exits — also when it is killed, by the node's
//! watchdog. The operator image is built from this checkout (tools/image.sh), so every test
//! here runs the code under test as a pod.

use std::{
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
use understudy::nodecluster::NodeCluster;

/// The opt-out for machines where the node cannot run (no root): the tier's tests pass
/// without doing anything and say so; tools/test.sh repeats it in its summary.
pub const OPT_OUT: &str = "UNDERSTUDY_NODE_TIER";

/// The shared node; tests call these through it.
pub type Node = NodeCluster;

static NODE: OnceLock<Option<Node>> = OnceLock::new();

/// Tests that use the node take it shared; a test that stops the kubelet takes it alone.
pub static SHARED_NODE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

extern "C" fn teardown_node() {
    if let Some(Some(node)) = NODE.get() {
        node.down();
    }
}

/// The shared node, started on first use; `None` when the tier is opted out.
pub fn node() -> Option<&'static Node> {
    NODE.get_or_init(|| {
        if std::env::var(OPT_OUT).is_ok_and(|v| v == "skip") {
            eprintln!("[node] SKIPPED: {OPT_OUT}=skip — the node tier's tests do nothing on this machine");
            return None;
        }
        let t = Instant::now();
        let node = NodeCluster::up().unwrap_or_else(|e| {
            panic!("{e:#}\nthe node tier needs root and the packages tools/test.sh installs; a machine without root can set {OPT_OUT}=skip")
        });
        // SAFETY: registering a plain extern "C" fn with atexit.
        unsafe { libc::atexit(teardown_node) };
        eprintln!("[node] node tier ready in {:.1}s (data: {})", t.elapsed().as_secs_f64(), node.dir.display());
        Some(node)
    })
    .as_ref()
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
                let (_, out, err) = n.run(&n.kubectl, &args);
                eprintln!("$ kubectl {}\n{out}{err}", args.join(" "));
            }
        } else {
            let _ = self.node.run(&self.node.helm, &["uninstall", "understudy", "-n", ns, "--wait=false"]);
            let _ = self.node.run(&self.node.kubectl, &["delete", "namespace", ns, "--wait=false"]);
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

/// The operator pod holding the leader Lease in `ns`, and its container's host PID.
pub async fn leader(node: &Node, client: &Client, ns: &str) -> (String, u32) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), ns);
    let leader = leases.get("understudy-leader").await.unwrap().spec.unwrap().holder_identity.unwrap();
    let leader_pod = pods(client, ns, "app.kubernetes.io/name=understudy")
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(&leader))
        .expect("the leader is one of the pods");
    let pid = node.container_pid(&container_id(&leader_pod).unwrap()).unwrap();
    (leader, pid)
}
