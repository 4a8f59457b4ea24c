//! A real one-node Kubernetes cluster (tools/node/node.sh: kubelet, containerd, runc, CNI
//! bridge, kube-proxy, control plane, all in a private network namespace) with the images
//! this checkout builds (tools/image.sh). Used by the node tier of the tests and by
//! `bench node`. Test machinery: compiled only with the `testbed` feature.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use kube::Client;

/// A running node. [`NodeCluster::down`] (or the node's watchdog, when the owning process
/// exits) removes every trace of it.
pub struct NodeCluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// containerd's socket (for `ctr`).
    pub containerd: PathBuf,
    pub helm: PathBuf,
    pub bin_dir: PathBuf,
    /// The operator image as the chart names it by default (repository:appVersion).
    pub operator_image: String,
    pub redis_image: String,
    /// MariaDB members (tools/image.sh mariadb).
    pub mariadb_image: String,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run a script that prints a path on its last stdout line; its stderr goes to ours.
fn script_path(cmd: &mut Command) -> anyhow::Result<PathBuf> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed (its output is above)");
    }
    let stdout = String::from_utf8(out.stdout)?;
    Ok(PathBuf::from(stdout.lines().last().context("the script printed no path")?.trim()))
}

impl NodeCluster {
    /// Build what is missing (node binaries, helm, the four images), then start the node with
    /// the images imported. Its watchdog tears it down when this process exits.
    pub fn up() -> anyhow::Result<Self> {
        let cp = crate::controlplane::binaries()?;
        let bin_dir =
            script_path(Command::new("bash").arg(repo().join("tools/controlplane/build.sh")).arg("node"))?;
        if cp != bin_dir {
            bail!("control-plane binaries in {} but node binaries in {}", cp.display(), bin_dir.display());
        }
        let helm = script_path(&mut Command::new(repo().join("tools/helm/build.sh")))?;
        let image = |what: &str| script_path(Command::new(repo().join("tools/image.sh")).arg(what));
        let operator_tar = image("understudy")?;
        let redis_tar = image("redis")?;
        let mariadb_tar = image("mariadb")?;
        let pause_tar = image("pause")?;
        let dir = std::env::temp_dir().join(format!("understudy-node-{}", std::process::id()));
        let out = Command::new(repo().join("tools/node/node.sh"))
            .arg("up")
            .arg(&dir)
            .arg(std::process::id().to_string())
            .env("BIN_DIR", &bin_dir)
            .env(
                "NODE_IMAGES",
                format!(
                    "{} {} {} {}",
                    pause_tar.display(),
                    redis_tar.display(),
                    mariadb_tar.display(),
                    operator_tar.display()
                ),
            )
            .stderr(Stdio::inherit())
            .output()
            .context("running tools/node/node.sh")?;
        if !out.status.success() {
            bail!("the node did not start (see the [node] lines above)");
        }
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let var = |k: &str| vars.get(k).cloned().with_context(|| format!("node.sh printed no {k}"));
        let version = |tar: &Path, name: &str| -> anyhow::Result<String> {
            tar.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix(&format!("{name}-")))
                .map(str::to_owned)
                .with_context(|| format!("{name}-<version>.tar"))
        };
        let redis_version = version(&redis_tar, "redis")?;
        let mariadb_version = version(&mariadb_tar, "mariadb")?;
        let node = Self {
            dir,
            kubeconfig: var("KUBECONFIG")?.into(),
            kubectl: var("KUBECTL")?.into(),
            containerd: var("CONTAINERD")?.into(),
            helm,
            bin_dir,
            operator_image: format!("ghcr.io/understudy-dev/understudy:{}", env!("CARGO_PKG_VERSION")),
            redis_image: format!("docker.io/local/redis:{redis_version}"),
            mariadb_image: format!("docker.io/local/mariadb:{mariadb_version}"),
        };
        // The CRDs once, before anything installs the chart (concurrent installs would race).
        node.kubectl(&["apply", "--server-side", "-f", &repo().join("crds").to_string_lossy()])?;
        node.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
        Ok(node)
    }

    /// Stop and remove everything (idempotent).
    pub fn down(&self) {
        let _ = Command::new(repo().join("tools/node/node.sh"))
            .arg("down")
            .arg(&self.dir)
            .env("BIN_DIR", &self.bin_dir)
            .status();
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        crate::controlplane::client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Run kubectl or helm against the node; returns (success, stdout, stderr).
    pub fn run(&self, program: &Path, args: &[&str]) -> (bool, String, String) {
        match Command::new(program).arg("--kubeconfig").arg(&self.kubeconfig).args(args).output() {
            Ok(out) => (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
            Err(e) => (false, String::new(), format!("running {}: {e}", program.display())),
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let (ok, out, err) = self.run(&self.kubectl, args);
        if !ok {
            bail!("kubectl {args:?} failed:\n{err}");
        }
        Ok(out)
    }

    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let (ok, out, err) = self.run(&self.helm, args);
        if !ok {
            bail!("helm {args:?} failed:\n{err}\n{out}");
        }
        Ok(out)
    }

    /// kubectl apply of a manifest given as a string.
    pub fn apply(&self, ns: &str, yaml: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", ns, "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("kubectl apply failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `helm install` of charts/understudy into `ns`, watching only `ns`, with the image built
    /// from this checkout (the chart's default name; `Never` pull: it is on the node already).
    /// The aggregated ClusterRoles are left out: they are cluster-wide, one set per cluster.
    pub fn install_operator(&self, ns: &str, extra: &[&str]) -> anyhow::Result<()> {
        self.operator_release("install", ns, extra)
    }

    /// `helm install` or `helm upgrade` of the operator release with the settings above plus
    /// `extra`, waiting until it is rolled out.
    pub fn operator_release(&self, verb: &str, ns: &str, extra: &[&str]) -> anyhow::Result<()> {
        let chart = repo().join("charts/understudy");
        let watch = format!("watchNamespaces=[\"{ns}\"]");
        let mut args = vec![
            verb,
            "understudy",
            chart.to_str().context("chart path")?,
            "-n",
            ns,
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "aggregatedRoles.create=false",
            "--set-json",
            &watch,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--wait", "--timeout", "120s"]);
        self.helm(&args).map(|_| ())
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILL a container's process through the runtime (never by process name: another
    /// cluster's processes are visible to pgrep).
    pub fn kill_container(&self, container_id: &str) -> anyhow::Result<()> {
        let id = container_id.trim_start_matches("containerd://");
        self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]).map(|_| ())
    }

    /// The host PID of a container's main process.
    pub fn container_pid(&self, container_id: &str) -> anyhow::Result<u32> {
        let id = container_id.trim_start_matches("containerd://");
        let tasks = self.ctr(&["tasks", "ls"])?;
        tasks
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no task {id} in:\n{tasks}"))
    }

    /// Give an imported image a second name (`ctr images tag`).
    pub fn tag_image(&self, from: &str, to: &str) -> anyhow::Result<()> {
        self.ctr(&["images", "tag", "--force", from, to]).map(|_| ())
    }

    /// `node.sh kubelet stop|start`, or `node.sh proxy [FLAGS…]` (restart kube-proxy).
    pub fn node_sh(&self, command: &str, args: &[&str]) -> anyhow::Result<()> {
        let ok = Command::new(repo().join("tools/node/node.sh"))
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .env("BIN_DIR", &self.bin_dir)
            .status()?
            .success();
        if !ok {
            bail!("node.sh {command} {args:?} failed");
        }
        Ok(())
    }
}
