//! ProtectionGroup pairs of agent-engine clusters (issue 18): the agent's optional
//! `change=FOLLOW` step points a standby leader at the other site's main, with real data
//! behind the agents' hooks — each agent fronts a redis-server, its hooks turn the protocol's
//! steps into `REPLICAOF` / `CLIENT PAUSE`, its position is the server's replication offset.
//! A planned move and a forced failover of the lost production site, the old site fenced when
//! it returns and protected again, and stopping protection with `detachPolicy: ReadOnly`; a
//! standby agent cluster (`spec.standby`) failed over to primary by a FailoverRequest when its
//! upstream is lost, and the upstream fenced through the same step when it returns.

use std::time::{Duration, Instant};

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use understudy::resources::{
    HaCluster, ProtectionGroup,
    protection_group::{ProtectionPhase, SiteRole},
};

use crate::{
    protection_group::{
        SiteWriter, missing, missing_seqs, pg, replicated_bytes, set_priority, wait_protected,
    },
    support::{self, Operator, RedisServer, RoleSampler, SupervisedAgent, eventually},
};

const TOKEN: &str = "pair-agent-token";
const WAIT: Duration = Duration::from_secs(90);

/// One site's member: a redis-server on its own loopback address and an agent in front of
/// it. Every site's server listens on the same port, so a hook reaches an upstream's data at
/// `$UNDERSTUDY_UPSTREAM_HOST` and that port — as a deployment whose data port is fixed does.
struct Member {
    redis: RedisServer,
    agent: SupervisedAgent,
}

impl Member {
    fn start(ip: &str, data_port: u16) -> Self {
        let redis = RedisServer::start_on(ip, data_port, None);
        let me = format!("redis-cli -h {ip} -p {data_port}");
        let hooks = vec![
            "--on-promote".into(),
            format!("{me} REPLICAOF NO ONE | grep -q OK && {me} CLIENT UNPAUSE"),
            "--on-demote".into(),
            format!("{me} REPLICAOF 127.0.0.1 1 | grep -q OK && {me} CLIENT UNPAUSE"),
            "--on-follow".into(),
            format!(
                "if [ -n \"$UNDERSTUDY_UPSTREAM_HOST\" ]; then up=\"$UNDERSTUDY_UPSTREAM_HOST {data_port}\"; else up='127.0.0.1 1'; fi; \
                 {me} REPLICAOF $up | grep -q OK && {me} CLIENT UNPAUSE"
            ),
            "--on-drain".into(),
            format!("{me} CLIENT PAUSE 60000 WRITE | grep -q OK"),
            "--on-resume".into(),
            format!("{me} CLIENT UNPAUSE"),
            "--hook-timeout".into(),
            "2s".into(),
            "--position".into(),
            format!("{me} INFO replication | sed -n 's/^master_repl_offset:\\([0-9]*\\).*/\\1/p'"),
        ];
        Self { agent: SupervisedAgent::start_with(ip, TOKEN, hooks), redis }
    }

    /// The agent's answer: (role, the upstream it reports following).
    async fn answer(&self) -> Option<(String, Option<String>)> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/rest/ha/status", self.agent.addr))
            .header("Authorization", format!("token {TOKEN}"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        let following = resp.headers().get("x-ha-following").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Some((resp.text().await.ok()?.trim().to_owned(), following))
    }

    fn freeze(&self, signal: i32) {
        self.redis.signal(signal);
        self.agent.signal(signal);
    }
}

/// Wait until `m`'s server replicates from `from`'s with the link up.
async fn replicates(m: &Member, from: &Member) {
    eventually(WAIT, "the server replicates from the other site", || async {
        let info = m.redis.replication().await?;
        (info.get("master_host")? == &from.redis.ip && info.get("master_link_status")? == "up").then_some(())
    })
    .await;
}

/// A one-member agent cluster (no redirect ConfigMap: the pair has no consumers).
fn agent_cluster(name: &str, member: &str, m: &Member) -> HaCluster {
    let mut c = crate::hacluster_agent::agent_cluster(name, &[(member, &m.agent)]);
    c.spec.redirect = None;
    c
}

#[tokio::test]
async fn agent_pairs_replicate_move_fail_over_by_force_and_fence_the_returned_site() {
    let client = support::client().await;
    let src_ns = support::namespace(&client, "pg-agent").await;
    let dr_ns = support::namespace(&client, "pg-agent-dr").await;
    for ns in [&src_ns, &dr_ns] {
        crate::hacluster_agent::secret(&client, ns, TOKEN).await;
    }
    let data_port = understudy::controlplane::free_port().unwrap();
    let (p, d) = (Member::start("127.0.3.1", data_port), Member::start("127.0.3.2", data_port));
    let src: Api<HaCluster> = Api::namespaced(client.clone(), &src_ns);
    let dr: Api<HaCluster> = Api::namespaced(client.clone(), &dr_ns);
    src.create(&PostParams::default(), &agent_cluster("x", "p", &p)).await.unwrap();
    dr.create(&PostParams::default(), &agent_cluster("x-dr", "d", &d)).await.unwrap();
    let pgs: Api<ProtectionGroup> = Api::namespaced(client.clone(), &dr_ns);
    pgs.create(&PostParams::default(), &pg("pg", &src_ns, &dr_ns, &["x"], None)).await.unwrap();
    let operator = Operator::start_namespaces(client.clone(), &[&src_ns, &dr_ns]);

    // Protected: the DR agent was told to follow the production agent, its hook made its
    // server a replica of production's, and the pair's lag is measured from the positions.
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let (role, following) = d.answer().await.expect("the DR agent answers");
    assert_eq!((role.as_str(), following), ("BACKUP", Some(p.agent.addr.to_string())));
    replicates(&d, &p).await;
    let _: () = p.redis.cmd(redis::cmd("SET").arg("before").arg("protected")).await.unwrap();
    eventually(WAIT, "the write reaches the DR site", || async {
        d.redis.cmd::<Option<String>>(redis::cmd("GET").arg("before")).await.ok().flatten()
    })
    .await;
    let st = eventually(WAIT, "a measured pair lag", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        st.pairs.first()?.lag.is_some().then_some(st)
    })
    .await;
    eprintln!("protected: pair {:?}", st.pairs.first().map(|p| (&p.state, p.lag)));

    // A planned move under a writer: drained, the old production agent told to follow the
    // DR one, then the DR agent promoted. Nothing acknowledged is lost; never two mains.
    let sampler = RoleSampler::start(vec![p.redis.sample_target(), d.redis.sample_target()]);
    let addrs = vec![(p.redis.ip.clone(), data_port), (d.redis.ip.clone(), data_port)];
    let writer = SiteWriter::start("w", addrs.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_priority(&pgs, "pg", "Target").await;
    let g = wait_protected(&pgs, "pg", SiteRole::Target).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writer.stop().await;
    assert_eq!(d.redis.role().await.as_deref(), Some("master"), "the DR server is production");
    replicates(&p, &d).await;
    let lost = missing(&d.redis, "w", &acked).await;
    let pause = g.status.as_ref().and_then(|s| s.last_write_pause_ms);
    eprintln!("planned move: {} acknowledged, {lost} lost, writes paused {pause:?} ms", acked.len());
    assert!(acked.len() > 50, "the writer wrote through the move: {}", acked.len());
    assert_eq!(lost, 0, "every acknowledged write is on the new production site");
    assert_eq!(sampler.max(), 1, "never two writable servers");
    let (_, following) = p.answer().await.expect("the old production agent answers");
    assert_eq!(following, Some(d.agent.addr.to_string()), "it reports what it follows");

    // The production site (now the DR namespace's member) is lost: its agent and server
    // frozen. Writes it took that the other site never got are lost on purpose: the source
    // server is frozen and its link cut (bytes already on their way would otherwise reach
    // it when it thaws) while production takes them.
    let writer = SiteWriter::start("f", addrs);
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.redis.signal(libc::SIGSTOP);
    let _: redis::Value =
        d.redis.cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.freeze(libc::SIGSTOP);
    p.redis.signal(libc::SIGCONT);
    let asked = Instant::now();
    pgs.patch(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "prioritySite": "Source",
            "forcedFailover": {"to": "Source", "reason": "site B is gone"},
        }})),
    )
    .await
    .unwrap();
    eventually(WAIT, "the source server to take writes", || async {
        p.redis.cmd::<()>(redis::cmd("SET").arg("forced-probe").arg(1)).await.ok()
    })
    .await;
    let took = asked.elapsed();
    let st = eventually(WAIT, "phase FailedOver with production at the source site", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        (st.phase == Some(ProtectionPhase::FailedOver) && st.production_site == Some(SiteRole::Source))
            .then_some(st)
    })
    .await;
    eprintln!("forced failover: source server writable {} ms after the request", took.as_millis());
    assert_eq!(p.answer().await.map(|a| a.0).as_deref(), Some("MAIN"));
    assert_eq!(sampler.max(), 1, "one writable server while the lost site was away");
    let rec = st.last_forced_failover.expect("recorded");
    assert!(rec.pairs[0].promoted_at_offset.is_some_and(|o| o > 0), "{rec:?}");

    // The lost site returns still acting as MAIN: it is told to follow the new production
    // agent — its agent turns BACKUP, its server a replica — and what it held is measured.
    d.freeze(libc::SIGCONT);
    let fenced = eventually(WAIT, "the returned site to be fenced", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        st.last_forced_failover.and_then(|f| f.pairs.into_iter().next()).filter(|p| p.fenced_at.is_some())
    })
    .await;
    eprintln!("fenced: {:?} lostOffset {:?}", fenced.message, fenced.lost_offset);
    replicates(&d, &p).await;
    wait_protected(&pgs, "pg", SiteRole::Source).await;
    let acked = writer.stop().await;
    let lost = missing_seqs(&p.redis, "f", &acked).await;
    let lost_bytes = replicated_bytes("f", &lost);
    eprintln!(
        "across the forced failover: {} acknowledged, {} lost ({lost_bytes} B replicated): {lost:?}",
        acked.len(),
        lost.len()
    );
    assert!(!lost.is_empty(), "the writes the source site never received are lost");
    // Measured by the group when it fences, or read from where the returned leader stood
    // when its own monitor fenced it first (status.yielded, a reconcile later).
    let recorded = eventually(WAIT, "what was lost to be recorded", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        st.last_forced_failover?.pairs.into_iter().next()?.lost_offset
    })
    .await;
    eprintln!("recorded lostOffset {recorded} B");
    assert!(recorded >= lost_bytes, "what was lost is recorded, not less: {recorded} < {lost_bytes} B");

    // Stopping protection, ReadOnly: the DR agent follows nothing, its server keeps its data,
    // replicates from nothing and takes no write.
    pgs.patch(
        "pg",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"protection": "Stopped", "detachPolicy": "ReadOnly"}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "phase Stopped", || async {
        let st = pgs.get("pg").await.ok()?.status?;
        (st.phase == Some(ProtectionPhase::Stopped)).then_some(())
    })
    .await;
    let (role, following) = d.answer().await.expect("answers");
    assert_eq!((role.as_str(), following), ("BACKUP", None), "the detached DR agent follows nothing");
    let info = d.redis.replication().await.expect("replication info");
    assert_eq!(info.get("master_host").map(String::as_str), Some("127.0.0.1"), "replicates from nothing");
    let refused = d.redis.cmd::<()>(redis::cmd("SET").arg("after").arg(1)).await;
    assert!(refused.is_err(), "read-only");
    operator.stop().await;
}

#[tokio::test]
async fn an_agent_standby_follows_its_upstream_is_failed_over_to_primary_and_the_upstream_yields() {
    use understudy::resources::{FailoverRequest, failover_request::RequestPhase};

    use crate::failover_request::submit;
    let client = support::client().await;
    let ns = support::namespace(&client, "sb-agent").await;
    crate::hacluster_agent::secret(&client, &ns, TOKEN).await;
    let data_port = understudy::controlplane::free_port().unwrap();
    let (p, d) = (Member::start("127.0.3.3", data_port), Member::start("127.0.3.4", data_port));
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns);
    hacs.create(&PostParams::default(), &agent_cluster("src", "p", &p)).await.unwrap();
    let mut standby = agent_cluster("dr", "d", &d);
    standby.spec.standby = Some(serde_json::from_value(json!({"cluster": "src"})).unwrap());
    hacs.create(&PostParams::default(), &standby).await.unwrap();
    let operator = Operator::start(client.clone(), &ns);

    // The standby's leader is told to follow the upstream's main; the data follows.
    eventually(WAIT, "the standby's agent to follow the upstream's", || async {
        let (role, following) = d.answer().await?;
        (role == "BACKUP" && following? == p.agent.addr.to_string()).then_some(())
    })
    .await;
    replicates(&d, &p).await;
    let _: () = p.redis.cmd(redis::cmd("SET").arg("before").arg("1")).await.unwrap();
    eventually(WAIT, "the write reaches the standby", || async {
        d.redis.cmd::<Option<String>>(redis::cmd("GET").arg("before")).await.ok().flatten()
    })
    .await;

    // The upstream is lost (frozen); a FailoverRequest makes the standby's leader primary.
    p.freeze(libc::SIGSTOP);
    let frs: Api<FailoverRequest> = Api::namespaced(client.clone(), &ns);
    let st = submit(&frs, "promote", json!({"type": "Failover", "items": [{"cluster": "dr"}]})).await;
    assert_eq!(st.phase, Some(RequestPhase::Succeeded), "{:?}", st.message);
    assert_eq!(d.answer().await.map(|a| a.0).as_deref(), Some("MAIN"));
    let kept: Option<String> = d.redis.cmd(redis::cmd("GET").arg("before")).await.unwrap();
    assert_eq!(kept.as_deref(), Some("1"), "the standby kept what it replicated");
    let _: () = d.redis.cmd(redis::cmd("SET").arg("after").arg("1")).await.expect("writable");

    // The upstream returns still MAIN: superseded, it is told to follow the new primary.
    p.freeze(libc::SIGCONT);
    eventually(WAIT, "the returned upstream to follow the new primary", || async {
        let (role, following) = p.answer().await?;
        (role == "BACKUP" && following? == d.agent.addr.to_string()).then_some(())
    })
    .await;
    replicates(&p, &d).await;
    let src = hacs.get("src").await.unwrap().status.unwrap();
    let y = src.yielded.first().expect("where the yielding main stood is recorded");
    eprintln!("the returned upstream yielded at offset {}", y.offset);
    assert_eq!(y.member, "p");
    assert_eq!(d.answer().await.map(|a| a.0).as_deref(), Some("MAIN"), "the new primary stays");
    operator.stop().await;
}
