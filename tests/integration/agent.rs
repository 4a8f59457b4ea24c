//! `understudy agent`: the real binary speaking seed 004's HA-status protocol on loopback.
//! No control plane involved.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use reqwest::{Client, StatusCode};
use understudy::controlplane::{free_port, spawn, tail};

const TOKEN: &str = "s3cret-token";
const READY: Duration = Duration::from_secs(30);

/// An `understudy agent` process, killed on drop.
struct AgentProcess {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
    scheme: &'static str,
}

impl AgentProcess {
    /// Start an agent on a free loopback port, the token in the environment unless `args`
    /// passes `--token-file`.
    fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap()).parse().unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
        cmd.args(["agent", "--name", name, "--listen", &addr.to_string()]).args(args);
        cmd.env("RUST_LOG", "info");
        if args.contains(&"--token-file") {
            cmd.env_remove("UNDERSTUDY_AGENT_TOKEN");
        } else {
            cmd.env("UNDERSTUDY_AGENT_TOKEN", TOKEN);
        }
        let scheme = if args.contains(&"--tls-cert") { "https" } else { "http" };
        let child = spawn(cmd, &log).expect("start understudy agent");
        Self { child, log, addr, scheme }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    fn log(&self) -> String {
        tail(&self.log)
    }

    /// Poll /healthz until it answers `ok`; fail at once if the process exits.
    async fn ready(&mut self, http: &Client) {
        let deadline = Instant::now() + READY;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("agent exited early with {status}:\n{}", self.log());
            }
            if let Ok(resp) = http.get(self.url("/healthz")).send().await
                && resp.status() == StatusCode::OK
                && resp.text().await.is_ok_and(|b| b == "ok")
            {
                return;
            }
            assert!(Instant::now() < deadline, "agent not ready after {READY:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait for the process to exit on its own.
    async fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "agent still running after {within:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn get_status(&self, http: &Client, token: Option<&str>) -> (StatusCode, String) {
        send(http.get(self.url("/rest/ha/status")), token).await
    }

    async fn change(&self, http: &Client, token: Option<&str>, change: Option<&str>) -> (StatusCode, String) {
        let mut req = http.post(self.url("/rest/ha/status"));
        if let Some(change) = change {
            req = req.query(&[("change", change)]);
        }
        send(req, token).await
    }

    /// GET the status with the right token, expecting 200.
    async fn role(&self, http: &Client) -> String {
        let (code, body) = self.get_status(http, Some(TOKEN)).await;
        assert_eq!(code, StatusCode::OK, "GET status: {body}\n{}", self.log());
        body
    }

    /// POST a change with the right token.
    async fn switch(&self, http: &Client, to: &str) -> (StatusCode, String) {
        self.change(http, Some(TOKEN), Some(to)).await
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(req: reqwest::RequestBuilder, token: Option<&str>) -> (StatusCode, String) {
    let req = match token {
        Some(t) => req.header("Authorization", format!("token {t}")),
        None => req,
    };
    let resp = req.send().await.expect("request");
    let code = resp.status();
    (code, resp.text().await.expect("body"))
}

fn http() -> Client {
    Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// A hook appending `<role>:<token variable or unset>` to `file`.
fn recording_hook(file: &Path) -> String {
    format!(
        r#"printf '%s:%s\n' "$UNDERSTUDY_ROLE" "${{UNDERSTUDY_AGENT_TOKEN:-unset}}" >> '{}'"#,
        file.display()
    )
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn agent_authenticates_promotes_with_hook_and_exits_zero_on_demote() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (promoted, demoted) = (dir.path().join("promoted"), dir.path().join("demoted"));
    let (on_promote, on_demote) = (recording_hook(&promoted), recording_hook(&demoted));
    let mut agent = AgentProcess::start(
        dir.path(),
        "agent-a",
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--on-promote",
            &on_promote,
            "--on-demote",
            &on_demote,
        ],
    );
    let http = http();
    agent.ready(&http).await;

    // Every node starts as BACKUP; the body is the bare status as text/plain.
    let resp = http.get(agent.url("/rest/ha/status")).header("Authorization", format!("token {TOKEN}"));
    let resp = resp.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(resp.text().await.unwrap(), "BACKUP");

    // Authentication on both verbs: missing, wrong, a prefix of the right token, wrong scheme.
    for token in [None, Some("wrong-token!"), Some("s3cret"), Some("s3cret-token-and-more")] {
        assert_eq!(
            agent.get_status(&http, token).await,
            (StatusCode::UNAUTHORIZED, "invalid or missing token".into()),
            "GET with {token:?}"
        );
        assert_eq!(
            agent.change(&http, token, Some("MAIN")).await,
            (StatusCode::UNAUTHORIZED, "invalid or missing token".into()),
            "POST with {token:?}"
        );
    }
    let bearer = http.get(agent.url("/rest/ha/status")).header("Authorization", format!("Bearer {TOKEN}"));
    assert_eq!(bearer.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(agent.role(&http).await, "BACKUP", "rejected POSTs changed nothing");
    assert!(lines(&promoted).is_empty(), "no hook ran for rejected requests");

    // Health needs no token.
    let health = http.get(agent.url("/healthz")).send().await.unwrap();
    assert_eq!((health.status(), health.text().await.unwrap()), (StatusCode::OK, "ok".into()));

    // Bad or missing `change`: 400 naming the allowed values.
    for change in [Some("bogus"), Some("main"), None] {
        let (code, body) = agent.change(&http, Some(TOKEN), change).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "change={change:?}: {body}");
        assert!(body.contains("MAIN") && body.contains("BACKUP"), "change={change:?}: {body}");
    }

    // BACKUP → BACKUP is a no-op: no hook, no exit.
    assert_eq!(agent.switch(&http, "BACKUP").await, (StatusCode::OK, "BACKUP".into()));
    assert!(agent.running());
    assert!(lines(&demoted).is_empty());

    // Promote: the hook runs with UNDERSTUDY_ROLE=MAIN and without the token in its environment.
    assert_eq!(agent.switch(&http, "MAIN").await, (StatusCode::OK, "MAIN".into()));
    assert_eq!(agent.role(&http).await, "MAIN");
    assert_eq!(lines(&promoted), ["MAIN:unset"]);
    // MAIN → MAIN is a no-op: the hook does not run again.
    assert_eq!(agent.switch(&http, "MAIN").await, (StatusCode::OK, "MAIN".into()));
    assert_eq!(lines(&promoted), ["MAIN:unset"]);

    // Demote: answered BACKUP, the on-demote hook runs, then the process exits with code 0.
    assert_eq!(agent.switch(&http, "BACKUP").await, (StatusCode::OK, "BACKUP".into()));
    let status = agent.exited(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{}", agent.log());
    assert_eq!(lines(&demoted), ["BACKUP:unset"]);
    let log = agent.log();
    assert!(log.contains("promoted") && log.contains("demoted"), "transitions are logged:\n{log}");
    assert!(!log.contains(TOKEN), "the token must never be logged:\n{log}");
}

#[tokio::test]
async fn failing_or_slow_promote_hook_answers_500_and_stays_backup() {
    let dir = tempfile::tempdir().unwrap();
    let http = http();

    let mut failing = AgentProcess::start(
        dir.path(),
        "agent-failing",
        &["--on-promote", "echo disk not mounted >&2; exit 3"],
    );
    failing.ready(&http).await;
    let (code, body) = failing.switch(&http, "MAIN").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("exit status: 3") && body.contains("disk not mounted"), "{body}");
    assert_eq!(failing.role(&http).await, "BACKUP");
    assert!(failing.running());

    let mut slow = AgentProcess::start(
        dir.path(),
        "agent-slow",
        &["--on-promote", "sleep 60", "--hook-timeout", "500ms"],
    );
    slow.ready(&http).await;
    let started = Instant::now();
    let (code, body) = slow.switch(&http, "MAIN").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(15), "the hook timeout bounds the request");
    assert_eq!(slow.role(&http).await, "BACKUP");
}

#[tokio::test]
async fn exit_on_demote_false_keeps_serving_and_transitions_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let (promoted, demoted) = (dir.path().join("promoted"), dir.path().join("demoted"));
    // A slow promote hook: concurrent promotions must wait for it, not run it again.
    let on_promote = format!("sleep 0.5; {}", recording_hook(&promoted));
    let on_demote = format!("sleep 0.5; {}", recording_hook(&demoted));
    let mut agent = AgentProcess::start(
        dir.path(),
        "agent-stays",
        &["--exit-on-demote=false", "--on-promote", &on_promote, "--on-demote", &on_demote],
    );
    let http = http();
    agent.ready(&http).await;

    let answers = futures::future::join_all((0..5).map(|_| agent.switch(&http, "MAIN"))).await;
    for answer in &answers {
        assert_eq!(answer, &(StatusCode::OK, "MAIN".into()));
    }
    assert_eq!(lines(&promoted), ["MAIN:unset"], "the hook ran once for five concurrent promotions");

    assert_eq!(agent.switch(&http, "BACKUP").await, (StatusCode::OK, "BACKUP".into()));
    assert_eq!(agent.role(&http).await, "BACKUP");
    // Promoting again waits for the demotion (and its hook) to finish first.
    assert_eq!(agent.switch(&http, "MAIN").await, (StatusCode::OK, "MAIN".into()));
    assert_eq!(lines(&demoted), ["BACKUP:unset"]);
    assert_eq!(lines(&promoted), ["MAIN:unset", "MAIN:unset"]);
    assert!(agent.running(), "--exit-on-demote=false keeps the agent up:\n{}", agent.log());
}

#[tokio::test]
async fn agent_refuses_to_start_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("no-token.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
    cmd.args(["agent", "--listen", &format!("127.0.0.1:{}", free_port().unwrap())]);
    cmd.env_remove("UNDERSTUDY_AGENT_TOKEN");
    let mut agent = AgentProcess {
        child: spawn(cmd, &log).unwrap(),
        log,
        addr: ([127, 0, 0, 1], 0).into(),
        scheme: "http",
    };
    let status = agent.exited(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(log.contains("--token-file") && log.contains("UNDERSTUDY_AGENT_TOKEN"), "{log}");
}

#[tokio::test]
async fn agent_serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut agent = AgentProcess::start(
        dir.path(),
        "agent-tls",
        &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()],
    );
    let https = Client::builder()
        .timeout(Duration::from_secs(20))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    agent.ready(&https).await;

    assert_eq!(agent.role(&https).await, "BACKUP");
    assert_eq!(agent.get_status(&https, Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(agent.switch(&https, "MAIN").await, (StatusCode::OK, "MAIN".into()));
    assert_eq!(agent.role(&https).await, "MAIN");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = http().get(format!("http://{}/healthz", agent.addr)).send().await;
    assert!(plain.is_err(), "plain HTTP to the TLS port must fail: {plain:?}");
    // A client that does not trust the certificate is refused too.
    let untrusting = Client::builder().tls_built_in_root_certs(false).build().unwrap();
    assert!(untrusting.get(agent.url("/healthz")).send().await.is_err());
    assert!(agent.running());
}

/// The conformance checks a third-party agent can run (`understudy agent-conformance`), run
/// against the reference agent: every rule passes, and the binary says so.
#[tokio::test]
async fn the_reference_agent_passes_the_conformance_checks() {
    let dir = tempfile::tempdir().unwrap();
    let http = http();
    // Every optional step (hooks that do nothing, a position that does not move), under a
    // supervisor: demoted twice (told to, then by its lapsed lease), it exits and is restarted
    // each time. The CLI run below checks an agent with no optional step but the lease.
    let hooks = ["--on-follow", "true", "--on-drain", "true", "--position", "echo 42"];
    let agent = crate::support::SupervisedAgent::start_with(
        "127.0.0.1",
        TOKEN,
        hooks.iter().map(|h| h.to_string()).collect(),
    );
    let url = format!("http://{}", agent.addr);
    crate::support::eventually(Duration::from_secs(30), "the agent answers", || async {
        http.get(format!("{url}/healthz")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let checks = understudy::agent_conformance::check(&url, TOKEN, Duration::from_secs(5)).await;
    let failed: Vec<_> = checks.iter().filter(|c| c.outcome.is_err()).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", agent.log());
    assert_eq!(checks.len(), understudy::agent_conformance::RULES.len());
    assert!(agent.restarts.load(std::sync::atomic::Ordering::SeqCst) >= 2, "it exited on each demotion");

    // The same through the command line, against a fresh node; and an address where nothing
    // listens fails.
    let mut fresh = AgentProcess::start(dir.path(), "conformance-cli", &["--exit-on-demote=false"]);
    fresh.ready(&http).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let cli = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_understudy"))
            .args(["agent-conformance", "--url", &url, "--token-file", token_file.to_str().unwrap()])
            .args(["--timeout", "3s"])
            .output()
            .unwrap()
    };
    let out = cli(fresh.url(""));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("14 of 14 rules passed"), "{stdout}");
    let not_an_agent = cli(format!("http://127.0.0.1:{}", free_port().unwrap()));
    let stdout = String::from_utf8_lossy(&not_an_agent.stdout);
    assert!(!not_an_agent.status.success() && stdout.contains("FAIL"), "{stdout}");
}
