//! A real, local Kubernetes control plane: etcd + kube-apiserver (+ kube-controller-manager),
//! built from the Go module proxy by `tools/controlplane/build.sh` and started on loopback.
//!
//! Used by the integration tests and by `understudy demo`. Every process is started with
//! `PR_SET_PDEATHSIG`, so nothing outlives the thread that started it, and is killed when
//! the [`ControlPlane`] drops.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// How long kube-apiserver may take to report ready. Two loaded cores need up to a minute.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Options for [`ControlPlane::start`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Also run kube-controller-manager (namespace deletion, garbage collection, EndpointSlices).
    pub controller_manager: bool,
    /// Keep the data directory (etcd data, certificates, logs) after drop, for debugging.
    pub keep: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { controller_manager: true, keep: std::env::var_os("UNDERSTUDY_KEEP_CONTROLPLANE").is_some() }
    }
}

/// A running local control plane. Dropping it kills every process it started.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin: PathBuf,
    etcd_port: u16,
    api_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    keep: bool,
}

impl ControlPlane {
    /// Locate (building on first use) the binaries, start everything and wait until the
    /// API server is ready.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new().prefix("understudy-cp-").tempdir()?;
        let mut cp = Self {
            dir,
            bin,
            etcd_port: free_port()?,
            api_port: free_port()?,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            keep: opts.keep,
        };
        cp.write_credentials()?;
        cp.start_etcd()?;
        cp.start_apiserver().await?;
        if opts.controller_manager {
            cp.start_controller_manager()?;
        }
        Ok(cp)
    }

    /// The admin kubeconfig with the certificates inline (for a Secret another control
    /// plane's operator reads).
    pub fn kubeconfig_inline(&self) -> anyhow::Result<String> {
        use base64::Engine as _;
        let b64 = |name: &str| -> anyhow::Result<String> {
            Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(self.path(name))?))
        };
        Ok(kubeconfig_yaml(
            &self.server_url(),
            &b64("ca.crt")?,
            &b64("admin.crt")?,
            &b64("admin.key")?,
            "-data",
        ))
    }

    /// The admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The directory holding data, certificates and process logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The kubectl built with the control plane (same version as the API server).
    pub fn kubectl(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// A fresh admin client.
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.kubeconfig_path()).await
    }

    /// Apply every YAML file in `dir` with the real `kubectl apply --server-side` and wait
    /// until each CustomResourceDefinition is Established.
    pub async fn install_crds(&self, dir: &Path) -> anyhow::Result<()> {
        let out = Command::new(self.kubectl())
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(dir)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!("kubectl apply -f {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        }
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        for crd in crate::resources::crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            tokio::time::timeout(
                Duration::from_secs(60),
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} not Established within 60s"))??;
        }
        Ok(())
    }

    /// Install the CRDs this binary generates (not the files in `crds/`).
    pub async fn install_generated_crds(&self) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        for crd in crate::resources::crds() {
            std::fs::write(
                dir.path().join(crate::resources::crd_file_name(&crd)),
                crate::resources::crd_yaml(&crd)?,
            )?;
        }
        self.install_crds(dir.path()).await
    }

    /// Create a namespace.
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client().await?).create(&kube::api::PostParams::default(), &ns).await?;
        Ok(())
    }

    /// Stop the API server (SIGKILL), simulating an API-server outage. etcd keeps running.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the API server again on the same port and wait until it is ready.
    pub async fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_credentials(&self) -> anyhow::Result<()> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "understudy-test-ca");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let leaf = |sans: Vec<String>, cn: &str, org: Option<&str>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(org) = org {
                params.distinguished_name.push(DnType::OrganizationName, org);
            }
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (serving, serving_key) = leaf(sans, "kube-apiserver", None, ExtendedKeyUsagePurpose::ServerAuth)?;
        let (admin, admin_key) =
            leaf(vec![], "understudy-admin", Some("system:masters"), ExtendedKeyUsagePurpose::ClientAuth)?;
        let sa_key = KeyPair::generate()?;

        std::fs::write(self.path("ca.crt"), ca.pem())?;
        std::fs::write(self.path("apiserver.crt"), serving)?;
        std::fs::write(self.path("apiserver.key"), serving_key)?;
        std::fs::write(self.path("admin.crt"), admin)?;
        std::fs::write(self.path("admin.key"), admin_key)?;
        std::fs::write(self.path("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(self.path("sa.pub"), sa_key.public_key_pem())?;
        std::fs::write(
            self.kubeconfig_path(),
            kubeconfig_yaml(
                &self.server_url(),
                &self.path("ca.crt").display().to_string(),
                &self.path("admin.crt").display().to_string(),
                &self.path("admin.key").display().to_string(),
                "",
            ),
        )?;
        Ok(())
    }

    fn start_etcd(&mut self) -> anyhow::Result<()> {
        let peer = free_port()?;
        let client_url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(self.bin.join("etcd"));
        cmd.arg("--data-dir")
            .arg(self.path("etcd"))
            .args([
                "--name",
                "default",
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}"), "--unsafe-no-fsync"])
            .args(["--log-level", "warn"]);
        self.etcd = Some(spawn(cmd, &self.path("etcd.log"))?);
        Ok(())
    }

    async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let p = |name: &str| self.path(name).display().to_string();
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--secure-port={}", self.api_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=RBAC".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--service-account-issuer=https://understudy.test".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--allow-privileged=true".into(),
            // The built-in `kubernetes` Service would point at 127.0.0.1, which Endpoints reject.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=0".into(),
        ]);
        let log = self.path("kube-apiserver.log");
        self.apiserver = Some(spawn(cmd, &log)?);
        self.wait_ready(&log).await
    }

    fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.bin.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig_path().display())).args([
            "--leader-elect=false",
            "--secure-port=0",
            "--controllers=namespace-controller,garbage-collector-controller,endpointslice-controller,serviceaccount-controller",
            "--v=0",
        ]);
        self.controller_manager = Some(spawn(cmd, &self.path("kube-controller-manager.log"))?);
        Ok(())
    }

    async fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last_err = String::new();
        while started.elapsed() < READY_TIMEOUT {
            for (name, child) in [("etcd", &mut self.etcd), ("kube-apiserver", &mut self.apiserver)] {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let log = self.dir.path().join(format!("{name}.log"));
                    bail!("{name} exited with {status} during startup:\n{}", tail(&log));
                }
            }
            match self.readyz().await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("kube-apiserver not ready after {READY_TIMEOUT:?} (last error: {last_err}):\n{}", tail(log))
    }

    async fn readyz(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let body = client.request_text(req).await?;
        if body.trim() == "ok" { Ok(()) } else { bail!("readyz: {body}") }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.controller_manager, &mut self.apiserver, &mut self.etcd].into_iter().flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep {
            let path = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("tempdir")).keep();
            eprintln!("control plane data kept in {}", path.display());
        }
    }
}

/// Build a client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The directory holding etcd, kube-apiserver, kube-controller-manager and kubectl.
///
/// `UNDERSTUDY_CONTROLPLANE_BIN` overrides it; otherwise `tools/controlplane/build.sh` prints
/// it, building the binaries from the Go module proxy the first time (about 10 minutes on
/// two cores; later runs return at once).
pub fn binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("UNDERSTUDY_CONTROLPLANE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/controlplane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({}); is Go ≥ 1.25 installed?", script.display(), out.status);
    }
    let stdout = String::from_utf8(out.stdout)?;
    let dir = stdout.lines().last().context("build.sh printed no directory")?;
    Ok(PathBuf::from(dir.trim()))
}

/// A kubeconfig for the admin user; `data` is "" (file paths) or "-data" (inline base64).
fn kubeconfig_yaml(server: &str, ca: &str, cert: &str, key: &str, data: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: understudy
  cluster:
    server: {server}
    certificate-authority{data}: {ca}
users:
- name: admin
  user:
    client-certificate{data}: {cert}
    client-key{data}: {key}
contexts:
- name: understudy
  context:
    cluster: understudy
    user: admin
    namespace: default
current-context: understudy
"
    )
}

/// Spawn `cmd` with output to `log`, killed by the kernel if the spawning thread dies.
pub fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last 40 lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
