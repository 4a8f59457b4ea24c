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
                        let info = Shared { kubeconfig: cp.kubeconfig_path(), version };
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

/// A client for the shared control plane, bound to the calling test's runtime.
pub async fn client() -> Client {
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
    name
}

/// Run kubectl against the shared control plane; returns stdout, panics with stderr on failure.
pub fn kubectl(args: &[&str]) -> String {
    let (ok, out, err) = kubectl_result(args);
    assert!(ok, "kubectl {args:?} failed:\n{err}");
    out
}

/// Run kubectl; returns (success, stdout, stderr).
pub fn kubectl_result(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("kubectl")
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
