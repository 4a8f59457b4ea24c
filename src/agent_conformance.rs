//! `understudy agent-conformance`: check that an HA agent speaks the protocol the `Agent`
//! engine relies on (README, "The HA agent protocol"), against a live agent.
//!
//! The run changes the node's role (BACKUP → MAIN → BACKUP), so point it at a freshly started
//! node that nothing else drives. Each check is named after the rule it tests; the first
//! failure stops the run (later checks build on earlier ones).

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};

/// `understudy agent-conformance`: the agent to check.
#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Base URL of a freshly started agent, e.g. `http://10.0.0.5:8080`.
    #[arg(long)]
    pub url: String,
    /// File holding the agent's access token.
    #[arg(long)]
    pub token_file: std::path::PathBuf,
    /// How long the node may take to answer (and to come back after a demotion).
    #[arg(long, default_value = "10s", value_parser = crate::agent::parse_duration)]
    pub timeout: Duration,
}

/// One rule of the protocol and how the agent did.
#[derive(Debug)]
pub struct Check {
    pub rule: &'static str,
    pub outcome: Result<(), String>,
}

/// The rules, in the order they are checked.
pub const RULES: &[&str] = &[
    "GET /rest/ha/status without a token is refused with 401",
    "GET /rest/ha/status with a wrong token is refused with 401",
    "POST ?change=MAIN without a token is refused with 401 and changes nothing",
    "a fresh node answers GET /rest/ha/status with 200 BACKUP",
    "POST ?change=<not MAIN or BACKUP> is refused with a 4xx and changes nothing",
    "POST ?change=BACKUP on a BACKUP answers 200 BACKUP",
    "optional step `follow` (when X-HA-Capabilities lists it): POST ?change=FOLLOW&upstream=<host:port> on a BACKUP answers 200 BACKUP and GET then names the upstream in X-HA-Following; `upstream=` (nothing) clears it",
    "optional step `follow`: POST ?change=FOLLOW with a malformed upstream is refused with a 4xx and changes nothing",
    "POST ?change=MAIN answers 200 MAIN, and GET then answers MAIN",
    "POST ?change=MAIN on a MAIN answers 200 MAIN",
    "POST ?change=BACKUP on a MAIN answers 200 BACKUP, and the node answers nothing but BACKUP afterwards",
];

struct Agent<'a> {
    http: &'a Client,
    status_url: String,
    token: &'a str,
}

impl Agent<'_> {
    async fn get(&self, token: Option<&str>) -> Result<(StatusCode, String), String> {
        let mut req = self.http.get(&self.status_url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("token {t}"));
        }
        answer(req).await
    }

    async fn post(&self, change: &str, token: Option<&str>) -> Result<(StatusCode, String), String> {
        let mut req = self.http.post(&self.status_url).query(&[("change", change)]);
        if let Some(t) = token {
            req = req.header("Authorization", format!("token {t}"));
        }
        answer(req).await
    }

    async fn follow(&self, upstream: &str) -> Result<(StatusCode, String), String> {
        let req = self
            .http
            .post(&self.status_url)
            .query(&[("change", "FOLLOW"), ("upstream", upstream)])
            .header("Authorization", format!("token {}", self.token));
        answer(req).await
    }

    /// A header of the answer to an authorised GET.
    async fn header(&self, name: &str) -> Result<Option<String>, String> {
        let resp = self
            .http
            .get(&self.status_url)
            .header("Authorization", format!("token {}", self.token))
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        Ok(resp.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned()))
    }

    async fn follows(&self) -> Result<bool, String> {
        let caps = self.header(crate::agent::CAPABILITIES_HEADER).await?.unwrap_or_default();
        Ok(crate::engines::agent::capabilities(&caps).any(|c| c == crate::agent::FOLLOW_CAPABILITY))
    }

    async fn role(&self) -> Result<String, String> {
        match self.get(Some(self.token)).await? {
            (StatusCode::OK, body) => Ok(body),
            (code, body) => Err(format!("GET answered {code}: {body}")),
        }
    }
}

async fn answer(req: reqwest::RequestBuilder) -> Result<(StatusCode, String), String> {
    let resp = req.send().await.map_err(|e| format!("no answer: {e}"))?;
    let code = resp.status();
    let body = resp.text().await.map_err(|e| format!("reading the body: {e}"))?;
    Ok((code, body.trim().to_owned()))
}

fn expect(got: (StatusCode, String), code: StatusCode, body: Option<&str>) -> Result<(), String> {
    if got.0 != code || body.is_some_and(|b| b != got.1) {
        let want = body.map_or(code.to_string(), |b| format!("{code} {b}"));
        return Err(format!("expected {want}, got {} {:?}", got.0, got.1));
    }
    Ok(())
}

fn expect_role(got: Result<String, String>, want: &str, after: &str) -> Result<(), String> {
    match got {
        Ok(role) if role == want => Ok(()),
        Ok(role) => Err(format!("{after}, GET answers {role:?}, not {want}")),
        Err(e) => Err(format!("{after}: {e}")),
    }
}

/// Run every rule against the agent at `base` (`scheme://host:port`) with `token`; stops at the
/// first failure. `timeout` bounds each request and the wait after the demotion.
pub async fn check(base: &str, token: &str, timeout: Duration) -> Vec<Check> {
    let http = match Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return vec![Check { rule: RULES[0], outcome: Err(format!("no HTTP client: {e}")) }],
    };
    let agent =
        Agent { http: &http, status_url: format!("{}/rest/ha/status", base.trim_end_matches('/')), token };
    let wrong = format!("{token}-wrong");
    let mut checks = Vec::new();
    for (i, rule) in RULES.iter().enumerate() {
        let outcome = match i {
            0 => agent.get(None).await.and_then(|a| expect(a, StatusCode::UNAUTHORIZED, None)),
            1 => agent.get(Some(&wrong)).await.and_then(|a| expect(a, StatusCode::UNAUTHORIZED, None)),
            2 => match agent.post("MAIN", None).await.and_then(|a| expect(a, StatusCode::UNAUTHORIZED, None))
            {
                Ok(()) => expect_role(agent.role().await, "BACKUP", "after the refused POST"),
                e => e,
            },
            3 => expect_role(agent.role().await, "BACKUP", "at start"),
            4 => match agent.post("PRIMARY", Some(token)).await {
                Ok((code, _)) if code.is_client_error() => {
                    expect_role(agent.role().await, "BACKUP", "after the refused change")
                }
                Ok((code, body)) => Err(format!("expected a 4xx, got {code} {body:?}")),
                Err(e) => Err(e),
            },
            5 => agent
                .post("BACKUP", Some(token))
                .await
                .and_then(|a| expect(a, StatusCode::OK, Some("BACKUP"))),
            6 => match agent.follows().await {
                Ok(true) => follow_and_clear(&agent).await,
                other => other.map(|_| ()),
            },
            7 => match agent.follows().await {
                Ok(true) => match agent.follow("no port here").await {
                    Ok((code, _)) if code.is_client_error() => {
                        expect_role(agent.role().await, "BACKUP", "after the refused FOLLOW")
                    }
                    Ok((code, body)) => Err(format!("expected a 4xx, got {code} {body:?}")),
                    Err(e) => Err(e),
                },
                other => other.map(|_| ()),
            },
            8 => match agent
                .post("MAIN", Some(token))
                .await
                .and_then(|a| expect(a, StatusCode::OK, Some("MAIN")))
            {
                Ok(()) => expect_role(agent.role().await, "MAIN", "after the promotion"),
                e => e,
            },
            9 => agent.post("MAIN", Some(token)).await.and_then(|a| expect(a, StatusCode::OK, Some("MAIN"))),
            _ => match agent
                .post("BACKUP", Some(token))
                .await
                .and_then(|a| expect(a, StatusCode::OK, Some("BACKUP")))
            {
                // The node may exit to be restarted: until the deadline it may not answer,
                // but it must never say MAIN again.
                Ok(()) => never_main_again(&agent, timeout).await,
                e => e,
            },
        };
        let failed = outcome.is_err();
        checks.push(Check { rule, outcome });
        if failed {
            break;
        }
    }
    checks
}

/// FOLLOW an upstream where nothing runs (TEST-NET-1, RFC 5737), check it is reported, then
/// follow nothing and check that is too.
async fn follow_and_clear(agent: &Agent<'_>) -> Result<(), String> {
    const UPSTREAM: &str = "192.0.2.1:8080";
    expect(agent.follow(UPSTREAM).await?, StatusCode::OK, Some("BACKUP"))?;
    match agent.header(crate::agent::FOLLOWING_HEADER).await? {
        Some(up) if up == UPSTREAM => {}
        other => return Err(format!("after FOLLOW, X-HA-Following is {other:?}, not {UPSTREAM:?}")),
    }
    expect(agent.follow("").await?, StatusCode::OK, Some("BACKUP"))?;
    match agent.header(crate::agent::FOLLOWING_HEADER).await? {
        None => expect_role(agent.role().await, "BACKUP", "after following nothing"),
        Some(up) => Err(format!("after `upstream=`, X-HA-Following still says {up:?}")),
    }
}

/// Poll for `within`: every answer must be BACKUP (no answer is fine: the node exits to be
/// restarted, and a restarted node is BACKUP).
async fn never_main_again(agent: &Agent<'_>, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(role) = agent.role().await
            && role != "BACKUP"
        {
            return Err(format!("after the demotion GET answered {role:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `understudy agent-conformance`: print each rule's outcome; fail if one failed.
pub async fn run(args: ConformanceArgs) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.token_file)?;
    let checks = check(&args.url, token.trim(), args.timeout).await;
    for c in &checks {
        match &c.outcome {
            Ok(()) => println!("PASS  {}", c.rule),
            Err(e) => println!("FAIL  {}: {e}", c.rule),
        }
    }
    let passed = checks.iter().filter(|c| c.outcome.is_ok()).count();
    println!("{passed} of {} rules passed", RULES.len());
    anyhow::ensure!(passed == RULES.len(), "the agent does not conform");
    Ok(())
}
