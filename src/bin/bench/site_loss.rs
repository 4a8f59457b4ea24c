//! `bench site-failover --forced`: the production site's members are lost (frozen, as a site
//! cut off by a power or network failure), a forced failover is requested at once, and the
//! figures are what an operator cares about at that moment: how long until the DR site takes
//! writes, how much the client lost, and what the group reported it lost. Then the lost site
//! returns and is fenced and re-protected, and the next run loses the other site.
//!
//! With `--behind-ms N` the DR side misses N ms of acknowledged writes on purpose first (its
//! members frozen, the production primary's replica links cut), so the client loses writes,
//! and the bytes those writes take in the replication stream are set against the
//! `lostOffset` the group recorded: it may say more (writes applied but not yet acknowledged
//! when the site froze, replication pings) but never less.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::{Api, api::Patch};
use serde_json::json;
use understudy::resources::{HaCluster, protection_group::ProtectionPhase, protection_group::SiteRole};

use super::{Args, SITE_NAMESPACES, Stats, Writer, set_command_bytes, two_sites};

pub async fn site_loss(args: &Args) -> anyhow::Result<(String, Vec<Stats>, Vec<String>)> {
    let sites = two_sites(args).await?;
    let (pgs, resolve) = (sites.pgs.clone(), sites.resolve.clone());
    let mut writable = Stats { name: "forced request → DR primary takes writes".into(), values_ms: vec![] };
    let mut recorded =
        Stats { name: "forced request → status FailedOver at the DR site".into(), values_ms: vec![] };
    let mut gap = Stats {
        name: "client write gap (site lost → first write at the DR site)".into(),
        values_ms: vec![],
    };
    let mut back = Stats { name: "lost site back → fenced and Protected again".into(), values_ms: vec![] };
    let mut notes = Vec::new();
    let (mut lost_total, mut acked_total, mut unrecorded) = (0usize, 0usize, 0usize);
    let (mut under_reported, mut lost_bytes_total, mut recorded_total) = (0usize, 0usize, 0i64);
    let mut production = SiteRole::Source;
    for run in 0..args.runs {
        let to = production.other();
        let (lost_members, dr_members) = match production {
            SiteRole::Source => (&sites.redis[0..2], &sites.redis[2..4]),
            SiteRole::Target => (&sites.redis[2..4], &sites.redis[0..2]),
        };
        let prefix = format!("l{run}");
        let writer = Writer::start(prefix.clone(), resolve.clone()).await;
        // The site is lost at an instant the writer does not expect.
        tokio::time::sleep(Duration::from_millis(200 + (run as u64 * 137) % 500)).await;
        if args.behind_ms > 0 {
            // The DR side stops receiving: frozen, and its links cut at the production primary
            // (bytes already on their way would otherwise reach it when it thaws).
            for r in dr_members {
                r.signal(libc::SIGSTOP);
            }
            let (host, port) = resolve().await.context("no production primary to cut")?;
            let mut c = understudy::localredis::redis_conn(&host, port, None, 1000).await?;
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("replica")
                .query_async::<redis::Value>(&mut c)
                .await?;
            tokio::time::sleep(Duration::from_millis(args.behind_ms)).await;
        }
        for r in lost_members {
            r.signal(libc::SIGSTOP);
        }
        if args.behind_ms > 0 {
            for r in dr_members {
                r.signal(libc::SIGCONT);
            }
        }
        let t0 = Instant::now();
        pgs.patch(
            "pg",
            &kube::api::PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "prioritySite": to.as_str(),
                "forcedFailover": {"to": to.as_str(), "reason": format!("bench run {run}: the {} site is lost", production.as_str())}
            }})),
        )
        .await?;
        // Whichever DR member takes a write first (the DR leader, once promoted).
        let took = loop {
            let mut ok = false;
            for r in dr_members {
                if let Ok(mut c) = understudy::localredis::redis_conn("127.0.0.1", r.port, None, 100).await {
                    ok |= redis::cmd("SET")
                        .arg("forced-probe")
                        .arg(run)
                        .query_async::<()>(&mut c)
                        .await
                        .is_ok();
                }
            }
            if ok {
                break t0.elapsed();
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "run {run}: the DR site never took writes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        writable.values_ms.push(took.as_secs_f64() * 1000.0);
        let failed_over = loop {
            let st = pgs.get("pg").await?.status.unwrap_or_default();
            if st.phase == Some(ProtectionPhase::FailedOver) && st.production_site == Some(to) {
                break t0.elapsed();
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "run {run}: the group never said FailedOver"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        recorded.values_ms.push(failed_over.as_secs_f64() * 1000.0);
        let (host, port) = resolve().await.context("no production primary at the DR site")?;
        let (g, _, missing, acked) = writer.finish_detailed(t0, 300, (&host, port)).await?;
        let lost_bytes: usize =
            missing.iter().map(|s| set_command_bytes(&format!("{prefix}:{s}"), &s.to_string())).sum();
        let missing = missing.len();
        gap.values_ms.push(g);
        // The lost site returns; the group fences it (measuring what its old primary held
        // beyond the promotion) and re-protects it.
        let returned = Instant::now();
        for r in lost_members {
            r.signal(libc::SIGCONT);
        }
        let st = sites.wait_protected(to).await?;
        back.values_ms.push(returned.elapsed().as_secs_f64() * 1000.0);
        let fp = st.last_forced_failover.as_ref().and_then(|f| f.pairs.first()).cloned().unwrap_or_default();
        let said = format!(
            "possibleLoss {} B, lostOffset {} B",
            fp.possible_loss.map_or("-".into(), |b| b.to_string()),
            fp.lost_offset.map_or("unmeasured".into(), |b| b.to_string())
        );
        if missing > 0 && fp.lost_offset.unwrap_or(0) == 0 && fp.possible_loss.unwrap_or(0) == 0 {
            unrecorded += 1;
        }
        let recorded_bytes = fp.lost_offset.unwrap_or(0);
        if (recorded_bytes as usize) < lost_bytes {
            under_reported += 1;
        }
        lost_bytes_total += lost_bytes;
        recorded_total += recorded_bytes;
        eprintln!(
            "run {run}: {production:?} lost → {to:?}: writable after {:.1} ms, FailedOver after {:.1} ms, client gap {g:.1} ms, {missing} of {acked} acknowledged writes lost; {said}; back and Protected {:.0} ms after the return",
            took.as_secs_f64() * 1000.0,
            failed_over.as_secs_f64() * 1000.0,
            back.values_ms.last().copied().unwrap_or_default()
        );
        notes.push(format!(
            "run {run}: {missing} writes lost by the client ({lost_bytes} B in the replication stream); the group recorded {said}"
        ));
        lost_total += missing;
        acked_total += acked;
        production = to;
    }
    // The clusters of both sites end with one primary each way: nothing left writable twice.
    let (src_ns, dr_ns) = SITE_NAMESPACES;
    for (ns, name) in [(src_ns, "db"), (dr_ns, "db-dr")] {
        let c = Api::<HaCluster>::namespaced(sites.client.clone(), ns).get(name).await?;
        let standby = c.standby().is_some();
        notes.push(format!("{ns}/{name} at the end: {}", if standby { "standby" } else { "production" }));
    }
    sites.op.stop().await;
    notes.insert(
        0,
        format!(
            "acknowledged writes: {acked_total}; lost: {lost_total} ({lost_bytes_total} B as replicated), recorded lostOffset in total {recorded_total} B; runs whose client lost writes the group recorded as 0: {unrecorded}; runs whose recorded lostOffset is below the bytes of the client's lost writes: {under_reported}"
        ),
    );
    let behind = if args.behind_ms > 0 {
        format!("; the DR side {} ms behind on purpose first", args.behind_ms)
    } else {
        String::new()
    };
    let title = format!(
        "Understudy forced site failover (ProtectionGroup, 1 pair, 2 members per site; the production site's members frozen, the forced request made at once{behind}), heartbeat {} ms",
        args.heartbeat()
    );
    Ok((title, vec![writable, recorded, gap, back], notes))
}
