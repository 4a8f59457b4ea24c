//! Real Sentinel-aware client libraries for tests and benchmarks: redis-py's `Sentinel` (from
//! PyPI) and go-redis's failover client (from the Go module proxy), installed by
//! tools/clients/setup.sh, each in a process of its own writing `RPUSH key n` and reporting
//! what was acknowledged (tools/clients/sentinel_writer.py, tools/clients/go).

use std::{path::PathBuf, sync::OnceLock};

/// Interpreter with redis-py, and the go-redis writer.
pub struct Clients {
    /// Python with redis-py.
    pub python: PathBuf,
    /// The go-redis writer (tools/clients/go).
    pub go: PathBuf,
}

/// Install or build them once (tools/clients/setup.sh; cached outside the work tree).
pub fn clients() -> &'static Clients {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    CLIENTS.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/clients/setup.sh");
        let out = std::process::Command::new(script).output().expect("run tools/clients/setup.sh");
        assert!(out.status.success(), "tools/clients/setup.sh: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("{k} in {text}"))
        };
        Clients { python: get("py="), go: get("go=") }
    })
}

/// Where a writer writes.
pub enum Target<'a> {
    /// The primary found through these sentinels.
    Sentinel { addrs: &'a [&'a str], master: &'a str, password: Option<&'a str> },
    /// One address (a Service's ClusterIP), go-redis' plain client.
    Plain(&'a str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    RedisPy,
    GoRedis,
}

/// A client library writing `RPUSH key n` through the discovery endpoint (its own process).
pub struct Writer {
    pub lib: Lib,
    pub key: String,
    child: std::process::Child,
    stop: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(serde::Deserialize, Debug)]
pub struct Report {
    pub attempts: i64,
    /// The n of every acknowledged `RPUSH key n`.
    pub acked: Vec<i64>,
    /// Pauses longer than the writer's `--gap-ms` (20 ms unless asked) between two
    /// acknowledged writes.
    pub gaps: Vec<Gap>,
    /// Each primary written to, with the time (ms since the epoch) of its first write.
    pub addrs: Vec<(String, f64)>,
    /// Failed writes by error.
    pub errors: std::collections::BTreeMap<String, i64>,
}

#[derive(serde::Deserialize, Debug)]
pub struct Gap {
    /// When the pause ended (the first write after it), ms since the epoch.
    pub to_ms: f64,
    /// When the pause began (the last write before it), ms since the epoch.
    pub from_ms: f64,
    pub ms: f64,
    pub before: String,
    pub after: String,
    /// What happened during the pause: failed writes (and, for go-redis, dials), each with
    /// its time in ms since the epoch; at most 20.
    #[serde(default)]
    pub events: Vec<(f64, String)>,
}

impl Writer {
    /// Start `lib` writing to `key` of `master`, found through the sentinel at `sentinel`.
    pub fn start(lib: Lib, sentinel: &str, master: &str, key: &str, password: Option<&str>) -> Self {
        Self::start_with(lib, &Target::Sentinel { addrs: &[sentinel], master, password }, key, 20.0)
    }

    /// Start `lib` writing to `key` at `target`, reporting pauses longer than `gap_ms`.
    pub fn start_with(lib: Lib, target: &Target<'_>, key: &str, gap_ms: f64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (stop, out) = (dir.path().join("stop"), dir.path().join("report.json"));
        let c = clients();
        let mut cmd = match lib {
            Lib::RedisPy => {
                let mut cmd = std::process::Command::new(&c.python);
                cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/clients/sentinel_writer.py"));
                cmd
            }
            Lib::GoRedis => std::process::Command::new(&c.go),
        };
        match target {
            Target::Sentinel { addrs, master, password } => {
                for a in *addrs {
                    cmd.args(["--sentinel", a]);
                }
                cmd.args(["--master", master]);
                if let Some(p) = password {
                    cmd.args(["--sentinel-password", p]);
                }
            }
            Target::Plain(addr) => {
                assert_eq!(lib, Lib::GoRedis, "only the go-redis writer writes to a plain address");
                cmd.args(["--addr", addr]);
            }
        }
        cmd.args(["--key", key, "--seconds", "600", "--gap-ms", &gap_ms.to_string()]);
        cmd.arg("--stop-file").arg(&stop).arg("--out").arg(&out);
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let child = cmd.spawn().expect("start the writer");
        Self { lib, key: key.to_owned(), child, stop, out, _dir: dir }
    }

    /// Stop it and read what it acknowledged.
    pub fn finish(mut self) -> Report {
        std::fs::write(&self.stop, b"").unwrap();
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default();
        assert!(status.success(), "{:?} writer exited with {status}: {log}", self.lib);
        serde_json::from_slice(&std::fs::read(&self.out).unwrap()).unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Report {
    /// The longest pause between two acknowledged writes that began at or after `from_ms`.
    pub fn longest_gap_after(&self, from_ms: f64) -> Option<&Gap> {
        self.gaps.iter().filter(|g| g.from_ms >= from_ms).max_by(|a, b| a.ms.total_cmp(&b.ms))
    }

    /// Acknowledged writes `held` does not contain.
    pub fn missing(&self, held: &[i64]) -> Vec<i64> {
        let held: std::collections::HashSet<i64> = held.iter().copied().collect();
        self.acked.iter().copied().filter(|n| !held.contains(n)).collect()
    }
}

/// Milliseconds since the epoch, as the writers report times.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
