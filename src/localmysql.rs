//! Real MariaDB servers (`mariadbd`) on loopback, started the way Understudy expects MySQL-family
//! members to start: read-only and following nobody, so that a restarted member is never a
//! second primary (the operator elects the primary and points the others at it). Each has its
//! own data directory, binary log, `server_id` and GTID strict mode. Used by the integration
//! tests and the benchmarks.
//!
//! Accounts: [`OPERATOR_USER`] (everything; the operator's and replication's) and [`APP_USER`]
//! (reads and writes database `app`, nothing else — `read_only` stops it). Both are created
//! with the binary log off, on every server, so they are not replicated.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::engines::mysql::MEMBER_OPTIONS;
use anyhow::{Context as _, bail};

pub const OPERATOR_USER: &str = "understudy";
pub const OPERATOR_PASSWORD: &str = "understudy-secret";
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";

/// Options every server starts with (also the template's).
const COMMON: &[&str] = &["--no-defaults"];
/// Sizes for small test servers, after [`MEMBER_OPTIONS`] (how every member starts).
const SERVER: &[&str] = &[
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--performance-schema=OFF",
    "--max-connections=200",
];

/// A mariadbd child process; killed on drop.
pub struct LocalMysql {
    pub ip: String,
    pub port: u16,
    pub server_id: u32,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// Serves TLS and refuses clients without it (see [`LocalMysql::start_tls`]).
    tls: bool,
}

/// A certificate authority and a server certificate signed by it (PEM), for servers that
/// serve TLS.
pub struct TestTls {
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestTls {
    pub fn generate() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "understudy-test-mariadb-ca");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server.distinguished_name.push(DnType::CommonName, "mariadbd");
        let cert = server.signed_by(&key, &ca)?;
        Ok(Self { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// An initialised data directory with the accounts, made once per process and copied.
fn template() -> anyhow::Result<&'static Path> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn make_template() -> anyhow::Result<PathBuf> {
    let root = tempfile::Builder::new().prefix("understudy-mariadb-template-").tempdir()?.keep();
    let data = root.join("data");
    let out = Command::new("mariadb-install-db")
        .args(COMMON)
        .arg(format!("--datadir={}", data.display()))
        .args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg("--innodb-log-file-size=4M")
        .output()
        .context("running mariadb-install-db (is mariadb-server installed?)")?;
    if !out.status.success() {
        bail!("mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Start it once, create the accounts with the binary log off, stop it.
    let port = crate::controlplane::free_port()?;
    let sock = root.join("setup.sock");
    let log = root.join("setup.log");
    let mut cmd = Command::new("mariadbd");
    cmd.args(COMMON)
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("--pid-file={}", root.join("setup.pid").display()))
        .args(["--user=root", "--bind-address=127.0.0.1", "--skip-networking=OFF"])
        .arg(format!("--port={port}"))
        .arg("--innodb-log-file-size=4M");
    let mut child = crate::controlplane::spawn(cmd, &log)?;
    let setup = format!(
        "SET sql_log_bin = 0; \
         CREATE USER '{OPERATOR_USER}'@'%' IDENTIFIED BY '{OPERATOR_PASSWORD}'; \
         GRANT ALL PRIVILEGES ON *.* TO '{OPERATOR_USER}'@'%' WITH GRANT OPTION; \
         CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'; \
         GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX ON app.* TO '{APP_USER}'@'%'; \
         FLUSH PRIVILEGES;"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot"])
            .arg(format!("--socket={}", sock.display()))
            .args(["-e", &setup])
            .output()?;
        if out.status.success() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "could not set up the template server: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                crate::controlplane::tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child: SIGTERM for a clean shutdown.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    Ok(data)
}

impl LocalMysql {
    /// On 127.0.0.1 and a free port; panics if it cannot start (for tests).
    pub fn start() -> Self {
        let mut last = None;
        for _ in 0..5 {
            let port = crate::controlplane::free_port().expect("free port");
            match Self::try_start_on("127.0.0.1", port) {
                Ok(s) => return s,
                Err(e) => last = Some(e),
            }
        }
        panic!("{:#}", last.expect("tried"))
    }

    /// Serving TLS with `tls`'s server certificate, and refusing every client (replicas
    /// included) that does not use TLS (`require_secure_transport`).
    pub fn start_tls(tls: &TestTls) -> Self {
        let port = crate::controlplane::free_port().expect("free port");
        Self::try_start_with("127.0.0.1", port, Some(tls)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_start_on(ip: &str, port: u16) -> anyhow::Result<Self> {
        Self::try_start_with(ip, port, None)
    }

    fn try_start_with(ip: &str, port: u16, tls: Option<&TestTls>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("understudy-mariadb-").tempdir()?;
        let status = Command::new("cp").arg("-a").arg(template()?).arg(dir.path().join("data")).status()?;
        if !status.success() {
            bail!("copying the template data directory failed");
        }
        if let Some(t) = tls {
            for (name, pem) in
                [("ca.pem", &t.ca_pem), ("server.pem", &t.cert_pem), ("server-key.pem", &t.key_pem)]
            {
                std::fs::write(dir.path().join(name), pem)?;
            }
        }
        let mut s = Self {
            ip: ip.to_owned(),
            port,
            server_id: u32::from(port),
            dir,
            child: None,
            tls: tls.is_some(),
        };
        s.try_spawn()?;
        Ok(s)
    }

    /// The `mariadb` client's options for this server.
    fn client(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults");
        if self.tls {
            cmd.arg("--ssl");
        }
        cmd
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("mariadbd.log")
    }

    /// Start the process again on the same data (a restart after a crash keeps its data).
    pub fn try_spawn(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let mut cmd = Command::new("mariadbd");
        cmd.args(COMMON)
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("mariadbd.sock").display()))
            .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
            .arg("--user=root")
            .arg(format!("--bind-address={}", self.ip))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server-id={}", self.server_id))
            .args(MEMBER_OPTIONS)
            .args(SERVER);
        if self.tls {
            cmd.arg(format!("--ssl-ca={}", d.join("ca.pem").display()))
                .arg(format!("--ssl-cert={}", d.join("server.pem").display()))
                .arg(format!("--ssl-key={}", d.join("server-key.pem").display()))
                .arg("--require-secure-transport=ON");
        }
        let log = self.log();
        self.child = Some(crate::controlplane::spawn(cmd, &log).context("starting mariadbd")?);
        let pid = self.child.as_ref().map(std::process::Child::id).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "mariadbd on {} exited ({status}):\n{}",
                    self.endpoint(),
                    crate::controlplane::tail(&log)
                );
            }
            // Ours answers with our server_id on our port (another test's would not).
            if self.sql(&["SELECT @@server_id"]).ok().as_deref().map(str::trim)
                == Some(&self.server_id.to_string())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd on {} (pid {pid}) did not start:\n{}",
                    self.endpoint(),
                    crate::controlplane::tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `<ip>:<port>`, where the operator reaches it.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Run statements as the operator's account over TCP with the `mariadb` client; the
    /// output in batch form (tab-separated, no headers).
    pub fn sql(&self, statements: &[&str]) -> anyhow::Result<String> {
        let out = self
            .client()
            .args(["--batch", "--skip-column-names", "--connect-timeout=2"])
            .args(["-h", &self.ip, "-P", &self.port.to_string(), "-u", OPERATOR_USER])
            .arg(format!("-p{OPERATOR_PASSWORD}"))
            .args(["-e", &statements.join("; ")])
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One query's rows as column → value maps (the `mariadb` client's batch output: a
    /// header line, then tab-separated values).
    pub fn rows(&self, query: &str) -> anyhow::Result<Vec<std::collections::HashMap<String, String>>> {
        let out = self
            .client()
            .args(["--batch", "--connect-timeout=2"])
            .args(["-h", &self.ip, "-P", &self.port.to_string(), "-u", OPERATOR_USER])
            .arg(format!("-p{OPERATOR_PASSWORD}"))
            .args(["-e", query])
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().map(|h| h.split('\t').collect()).unwrap_or_default();
        Ok(lines
            .map(|l| header.iter().map(|h| (*h).to_owned()).zip(l.split('\t').map(str::to_owned)).collect())
            .collect())
    }

    /// Send `signal` (e.g. `libc::SIGSTOP` to freeze, `libc::SIGCONT` to thaw).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child process.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.try_spawn().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        crate::controlplane::tail(&self.log())
    }
}

impl Drop for LocalMysql {
    fn drop(&mut self) {
        self.kill();
    }
}
