//! Real redis-server processes on loopback, started the way Understudy expects Redis members
//! to start: as a replica of nothing (`--replicaof 127.0.0.1 1`), so that a restarted member
//! is never a second primary; the operator elects the primary. Used by the demo, the
//! integration tests and the benchmarks.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A redis-server child process; killed on drop.
pub struct LocalRedis {
    pub ip: String,
    pub port: u16,
    pub password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl LocalRedis {
    /// On 127.0.0.1 and a free port; panics if it cannot start (for tests). A port that
    /// another process takes between the probe for a free one and redis binding it is
    /// detected (the server answering is not ours) and another port is tried.
    pub fn start(password: Option<&str>) -> Self {
        let mut last = None;
        for _ in 0..5 {
            let port = crate::controlplane::free_port().expect("free port");
            match Self::try_start_on("127.0.0.1", port, password) {
                Ok(s) => return s,
                Err(e) => last = Some(e),
            }
        }
        panic!("{:#}", last.expect("tried"))
    }

    /// On a given loopback address (any 127.x.y.z) and port; panics if it cannot start.
    pub fn start_on(ip: &str, port: u16, password: Option<&str>) -> Self {
        Self::try_start_on(ip, port, password).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_start_on(ip: &str, port: u16, password: Option<&str>) -> anyhow::Result<Self> {
        let mut s = Self {
            ip: ip.to_owned(),
            port,
            password: password.map(str::to_owned),
            dir: tempfile::Builder::new().prefix("understudy-redis-").tempdir()?,
            child: None,
        };
        s.try_spawn()?;
        Ok(s)
    }

    /// Start the process again (same address, empty data), as a supervisor would.
    pub fn try_spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", &self.ip, "--save", "", "--appendonly", "no"])
            .args([
                "--replicaof",
                "127.0.0.1",
                "1",
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        let log = self.dir.path().join(format!("redis-{}.log", self.port));
        self.child =
            Some(crate::controlplane::spawn(cmd, &log).context("starting redis-server (is it installed?)")?);
        // Wait until *this* process answers on the port: a server of another test that got
        // the same port would answer too, and must not be mistaken for ours.
        let pid = self.child.as_ref().map(std::process::Child::id).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "redis-server on {}:{} exited ({status}):\n{}",
                    self.ip,
                    self.port,
                    crate::controlplane::tail(&log)
                );
            }
            match self.server_pid() {
                Some(p) if p == pid => return Ok(()),
                Some(other) => bail!(
                    "{}:{} is answered by another redis-server (pid {other}), not ours ({pid})",
                    self.ip,
                    self.port
                ),
                None => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on {}:{} did not start:\n{}",
                    self.ip,
                    self.port,
                    crate::controlplane::tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the redis-server answering on our address (`INFO server`), if one does.
    fn server_pid(&self) -> Option<u32> {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@{}:{}/", self.ip, self.port),
            None => format!("redis://{}:{}/", self.ip, self.port),
        };
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
        info.lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix("process_id:"))
            .and_then(|v| v.parse().ok())
    }

    /// `<ip>:<port>`, where the operator probes it.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The running server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send `signal` (e.g. `libc::SIGSTOP` to freeze, `libc::SIGCONT` to thaw).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child process.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

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

    /// A connection (500 ms timeouts).
    pub async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis_conn(&self.ip, self.port, self.password.as_deref(), 500).await
    }

    /// `INFO replication` as a map, straight from the server.
    pub async fn replication(&self) -> Option<std::collections::HashMap<String, String>> {
        let mut c = self.connect().await.ok()?;
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()?;
        Some(
            info.lines()
                .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    pub async fn role(&self) -> Option<String> {
        self.replication().await.and_then(|m| m.get("role").cloned())
    }

    /// (ip, port, password) for a [`RoleSampler`].
    pub fn sample_target(&self) -> (String, u16, Option<String>) {
        (self.ip.clone(), self.port, self.password.clone())
    }

    pub async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut c = self.connect().await?;
        cmd.query_async(&mut c).await
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection to the redis-server on loopback `port`, both timeouts `timeout_ms`.
pub async fn redis_conn(
    ip: &str,
    port: u16,
    password: Option<&str>,
    timeout_ms: u64,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let url = match password {
        Some(p) => format!("redis://:{p}@{ip}:{port}/"),
        None => format!("redis://{ip}:{port}/"),
    };
    let t = Some(std::time::Duration::from_millis(timeout_ms));
    let cfg = redis::AsyncConnectionConfig::new().set_connection_timeout(t).set_response_timeout(t);
    redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&cfg).await
}
