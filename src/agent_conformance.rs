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
    "optional step `drain` (when X-HA-Capabilities lists it): GET carries X-HA-Position, a non-negative integer, and POST ?change=DRAIN on a BACKUP answers 409 and changes nothing",
    "POST ?change=MAIN answers 200 MAIN, and GET then answers MAIN",
    "POST ?change=MAIN on a MAIN answers 200 MAIN",
    "optional step `drain`: POST ?change=DRAIN on a MAIN answers 200 MAIN, again 200 MAIN (idempotent); the node then answers MAIN with a position that does not move, and POST ?change=RESUME answers 200 MAIN",
    "POST ?change=BACKUP on a MAIN answers 200 BACKUP, and the node answers nothing but BACKUP afterwards",
    "optional step `lease` (when X-HA-Capabilities lists it): back as BACKUP after its demotion, a node made MAIN by a request carrying X-HA-Lease: 1000 stays MAIN while such requests come every 200 ms (2 s), and once they stop it stops answering MAIN within the lease plus 1 s and never says MAIN again",
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

    /// An authorised request carrying the lease header.
    async fn with_lease(
        &self,
        req: reqwest::RequestBuilder,
        ms: u64,
    ) -> Result<(StatusCode, String), String> {
        answer(
            req.header("Authorization", format!("token {}", self.token))
                .header(crate::agent::LEASE_HEADER, ms.to_string()),
        )
        .await
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

    /// Whether the agent lists `capability` in X-HA-Capabilities.
    async fn advertises(&self, capability: &str) -> Result<bool, String> {
        let caps = self.header(crate::agent::CAPABILITIES_HEADER).await?.unwrap_or_default();
        Ok(crate::engines::agent::capabilities(&caps).any(|c| c == capability))
    }

    /// X-HA-Position of an authorised GET, which must be a non-negative integer.
    async fn position(&self) -> Result<u64, String> {
        match self.header(crate::agent::POSITION_HEADER).await? {
            Some(p) => p.parse().map_err(|_| format!("X-HA-Position is {p:?}, not a non-negative integer")),
            None => Err("GET carries no X-HA-Position".into()),
        }
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
    let mut leases = false;
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
            6 => match agent.advertises(crate::agent::FOLLOW_CAPABILITY).await {
                Ok(true) => follow_and_clear(&agent).await,
                other => other.map(|_| ()),
            },
            7 => match agent.advertises(crate::agent::FOLLOW_CAPABILITY).await {
                Ok(true) => match agent.follow("no port here").await {
                    Ok((code, _)) if code.is_client_error() => {
                        expect_role(agent.role().await, "BACKUP", "after the refused FOLLOW")
                    }
                    Ok((code, body)) => Err(format!("expected a 4xx, got {code} {body:?}")),
                    Err(e) => Err(e),
                },
                other => other.map(|_| ()),
            },
            8 => match agent.advertises(crate::agent::DRAIN_CAPABILITY).await {
                Ok(true) => drain_refused_on_a_backup(&agent).await,
                other => other.map(|_| ()),
            },
            9 => match agent
                .post("MAIN", Some(token))
                .await
                .and_then(|a| expect(a, StatusCode::OK, Some("MAIN")))
            {
                Ok(()) => expect_role(agent.role().await, "MAIN", "after the promotion"),
                e => e,
            },
            10 => agent.post("MAIN", Some(token)).await.and_then(|a| expect(a, StatusCode::OK, Some("MAIN"))),
            11 => match agent.advertises(crate::agent::DRAIN_CAPABILITY).await {
                Ok(true) => drain_and_resume(&agent).await,
                other => other.map(|_| ()),
            },
            12 => match async {
                // Asked while the node surely answers: it may not come back by itself.
                leases = agent.advertises(crate::agent::LEASE_CAPABILITY).await?;
                agent.post("BACKUP", Some(token)).await
            }
            .await
            .and_then(|a| expect(a, StatusCode::OK, Some("BACKUP")))
            {
                // The node may exit to be restarted: until the deadline it may not answer,
                // but it must never say MAIN again.
                Ok(()) => never_main_again(&agent, timeout).await,
                e => e,
            },
            _ if !leases => Ok(()),
            _ => lease_runs_out(&agent, timeout).await,
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

/// A BACKUP says its position and refuses to drain (409), staying BACKUP.
async fn drain_refused_on_a_backup(agent: &Agent<'_>) -> Result<(), String> {
    agent.position().await?;
    let got = agent.post("DRAIN", Some(agent.token)).await?;
    if got.0 != StatusCode::CONFLICT {
        return Err(format!("DRAIN on a BACKUP: expected 409, got {} {:?}", got.0, got.1));
    }
    expect_role(agent.role().await, "BACKUP", "after the refused DRAIN")
}

/// DRAIN a MAIN twice, see its position hold still over half a second while it stays MAIN,
/// then RESUME it.
async fn drain_and_resume(agent: &Agent<'_>) -> Result<(), String> {
    for _ in 0..2 {
        expect(agent.post("DRAIN", Some(agent.token)).await?, StatusCode::OK, Some("MAIN"))?;
    }
    let first = agent.position().await?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        expect_role(agent.role().await, "MAIN", "drained")?;
        let now = agent.position().await?;
        if now != first {
            return Err(format!("drained, its position moved from {first} to {now}"));
        }
    }
    expect(agent.post("RESUME", Some(agent.token)).await?, StatusCode::OK, Some("MAIN"))
}

/// The lease this check grants, and how long past it the node may still answer MAIN (its
/// on-demote hook runs before it stops saying so).
const LEASE_MS: u64 = 1000;
const LEASE_GRACE: Duration = Duration::from_secs(1);

/// For an agent that advertises `lease`: after its demotion the node comes back as BACKUP
/// (restarted by its supervisor, or still serving); made MAIN with a lease it holds the role while the lease is renewed, and gives
/// it up by itself once the renewals stop.
async fn lease_runs_out(agent: &Agent<'_>, timeout: Duration) -> Result<(), String> {
    let back = Instant::now() + timeout;
    loop {
        match agent.role().await {
            Ok(role) if role == "BACKUP" => break,
            Ok(role) => return Err(format!("after the demotion GET answered {role:?}")),
            _ if Instant::now() > back => {
                return Err(format!(
                    "the node did not answer BACKUP within {timeout:?} of its demotion (run it under its supervisor, as in production, or give a longer --timeout)"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let post = agent.http.post(&agent.status_url).query(&[("change", "MAIN")]);
    expect(agent.with_lease(post, LEASE_MS).await?, StatusCode::OK, Some("MAIN"))?;
    let renewing = Instant::now() + Duration::from_secs(2);
    while Instant::now() < renewing {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let renewed = agent.with_lease(agent.http.get(&agent.status_url), LEASE_MS).await?;
        expect(renewed, StatusCode::OK, Some("MAIN")).map_err(|e| format!("with its lease renewed: {e}"))?;
    }
    let last = Instant::now();
    let limit = Duration::from_millis(LEASE_MS) + LEASE_GRACE;
    loop {
        match agent.role().await {
            Ok(role) if role == "MAIN" && last.elapsed() > limit => {
                return Err(format!(
                    "still MAIN {:?} after the last renewal of a {LEASE_MS} ms lease",
                    last.elapsed()
                ));
            }
            Ok(role) if role == "MAIN" => tokio::time::sleep(Duration::from_millis(20)).await,
            // BACKUP, or no answer (exiting to be restarted): it gave the role up.
            _ => break,
        }
    }
    never_main_again(agent, timeout).await
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
