//! What `kubectl understudy` shows, as pure functions from the custom resources to views (the
//! `-o json|yaml` shape) and from views to text. No client and no clock: `now` is passed in,
//! so every line a user reads at 3 a.m. is a unit test here.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use k8s_openapi::{
    api::events::v1::Event,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::{
    core::vocabulary::{ConditionType, Reason},
    resources::{
        FailoverRequest, HaCluster, ProtectionGroup, ShardFailover,
        failover_request::{RequestPhase, TaskStatus},
        hacluster::{Engine, LossAccounting, MemberStatus, Role},
        protection_group::{ProtectionPhase, SiteRole},
        shard_failover::ShardFailoverPhase,
    },
};

/// Annotation on objects the plugin creates or changes: who asked (the Kubernetes user).
pub const REQUESTED_BY: &str = "understudy.dev/requested-by";
/// Annotation: the `--reason` given.
pub const REQUEST_REASON: &str = "understudy.dev/reason";

// ---------------------------------------------------------------------------------------------
// Durations, sizes, conditions.

/// A duration the way kubectl prints ages: `45s`, `3m12s`, `25m`, `2h5m`, `30h`, `3d4h`, `20d`,
/// `2y30d`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h) = (s / 60, s / 3600);
    let days = h / 24;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s.is_multiple_of(60) { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m.is_multiple_of(60) { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h.is_multiple_of(24) { format!("{days}d") } else { format!("{days}d{}h", h % 24) }
    } else if h < 24 * 365 * 2 {
        format!("{days}d")
    } else {
        let years = days / 365;
        if days.is_multiple_of(365) { format!("{years}y") } else { format!("{years}y{}d", days % 365) }
    }
}

/// `3m ago`; a time in the future (clock skew) reads `0s ago`.
pub fn ago(then: Timestamp, now: Timestamp) -> String {
    let d = Duration::try_from(now.duration_since(then)).unwrap_or_default();
    format!("{} ago", human_duration(d))
}

/// A measured duration in milliseconds: `230ms`, `1.07s`, `2m5s`.
pub fn millis(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        human_duration(Duration::from_millis(ms as u64))
    }
}

/// A byte count: `512 B`, `12.0 KiB`, `3.5 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n.abs() < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// How far behind its primary a member is, in the engine's unit: bytes of replication offset
/// for Redis, transactions for Mysql. `-` for a primary or an engine without offsets, `?`
/// for a replica that did not report one.
pub fn lag(engine: Engine, role: Role, lag: Option<i64>) -> String {
    match (engine, role, lag) {
        (_, Role::Primary, _) | (Engine::Agent, ..) => "-".into(),
        (_, _, None) => "?".into(),
        (Engine::Redis, _, Some(n)) => bytes(n),
        (Engine::Mysql, _, Some(n)) => format!("{n} trx"),
    }
}

/// Whether a condition says what it says when all is well. Types the operator writes are
/// judged by their meaning (Ready=True is fine, Degraded=True is not, Progressing is fine only
/// when False with UpToDate); a type it does not write is fine unless its status is Unknown.
pub fn condition_ok(c: &Condition) -> bool {
    let Some(t) = ConditionType::ALL.iter().find(|t| t.as_str() == c.type_) else {
        return c.status != "Unknown";
    };
    let is_true = c.status == "True";
    match t {
        ConditionType::Ready
        | ConditionType::Routed
        | ConditionType::LastPromotion
        | ConditionType::SpecValid
        | ConditionType::Complete
        | ConditionType::FailoverAllowed => is_true,
        ConditionType::Degraded
        | ConditionType::FailingOver
        | ConditionType::Paused
        | ConditionType::DatabaseBusy
        | ConditionType::RestartRequired => c.status == "False",
        ConditionType::Progressing => c.status == "False" && c.reason == Reason::UpToDate.as_str(),
    }
}

/// Text on one line: newlines and runs of spaces become one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Columns separated by two spaces, each as wide as its widest cell; trailing spaces trimmed.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            out.push_str(cell);
            out.push_str(&" ".repeat(pad + 2));
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// RFC 3339 to the second, UTC.
pub fn rfc3339(t: &Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn word<T: Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Status: the view (`-o json|yaml`) and its text.

/// `kubectl understudy status -o json|yaml` prints `{"clusters": [ClusterView, …]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusList {
    pub clusters: Vec<ClusterView>,
}

/// One HaCluster as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub namespace: String,
    pub name: String,
    /// `Redis`, `Mysql` or `Agent`.
    pub engine: String,
    /// `status.phase`; absent until the operator has reported on the cluster.
    pub phase: Option<String>,
    /// `spec.paused`: the operator observes and changes no role.
    pub paused: bool,
    /// `spec.failover.mode`: `Automatic` or `Manual`.
    pub failover_mode: String,
    /// `healthy/total`.
    pub healthy_members: Option<String>,
    pub shards: Vec<ShardView>,
    pub last_failover: Option<FailoverView>,
    /// Operations not finished yet that concern the cluster, and the holders of its shards'
    /// operation locks.
    pub operations: Vec<OperationView>,
    /// Conditions that do not say "all is well" (see [`condition_ok`]).
    pub conditions_not_ok: Vec<ConditionView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardView {
    pub name: String,
    pub primary: Option<String>,
    /// Set while a promotion to it is under way.
    pub target_primary: Option<String>,
    pub epoch: i64,
    pub members: Vec<MemberView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub name: String,
    /// `Primary`, `Replica`, `Fenced` or `Unknown`.
    pub role: String,
    pub healthy: bool,
    /// Behind the primary, in the engine's unit (bytes for Redis, transactions for Mysql).
    pub lag: Option<i64>,
    pub endpoint: Option<String>,
    /// RFC 3339.
    pub last_heartbeat: Option<String>,
    /// The last probe error, a leaving pod, errant transactions.
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverView {
    pub shard: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    /// RFC 3339.
    pub started_at: String,
    pub duration_ms: Option<i64>,
    /// What the new primary lacked of the old one (engine units); 0 for a clean switchover.
    pub lost_offset: Option<i64>,
    /// Drained, AtLeast or Measured (see the HaCluster's `lastFailover.lossAccounting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_accounting: Option<LossAccounting>,
    pub epoch: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationView {
    /// `ShardFailover`, `FailoverRequest`, `ProtectionGroup`, or `HaCluster` (an automatic
    /// failover).
    pub kind: String,
    pub name: String,
    pub phase: Option<String>,
    /// Shards whose operation lock it holds.
    pub locks: Vec<String>,
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// Whether a ShardFailover is about `cluster`: it says so in status, carries its label, or
/// names one of its members.
pub fn shard_failover_concerns(sfo: &ShardFailover, cluster: &HaCluster) -> bool {
    let name = cluster.name_any();
    if let Some(c) = sfo.status.as_ref().and_then(|s| s.cluster.as_ref()) {
        return *c == name;
    }
    if sfo.labels().get(crate::resources::instances::CLUSTER_LABEL) == Some(&name) {
        return true;
    }
    let members = member_names(cluster);
    sfo.spec.shard_uids.iter().any(|u| members.contains(&u.as_str()))
}

/// Whether a FailoverRequest names `cluster` in one of its items.
pub fn request_concerns(fr: &FailoverRequest, cluster: &str) -> bool {
    fr.spec.items.iter().any(|i| i.cluster == cluster)
}

fn member_names(cluster: &HaCluster) -> Vec<&str> {
    let mut names: Vec<&str> = cluster
        .status
        .iter()
        .flat_map(|s| &s.shards)
        .flat_map(|s| &s.members)
        .map(|m| m.name.as_str())
        .collect();
    names.extend(cluster.spec.shards.iter().flatten().flat_map(|s| &s.members).map(|m| m.name.as_str()));
    names
}

fn shard_failover_done(sfo: &ShardFailover) -> bool {
    matches!(
        sfo.status.as_ref().and_then(|s| s.phase),
        Some(ShardFailoverPhase::Succeeded | ShardFailoverPhase::Failed)
    )
}

fn request_done(fr: &FailoverRequest) -> bool {
    fr.status.as_ref().and_then(|s| s.phase).is_some_and(RequestPhase::is_terminal)
}

fn shard_failover_summary(sfo: &ShardFailover) -> String {
    let st = sfo.status.clone().unwrap_or_default();
    if st.shards.is_empty() {
        let what = format!("switch over {}", sfo.spec.shard_uids.join(", "));
        return match st.message {
            Some(m) => format!("{what}: {}", one_line(&m)),
            None => what,
        };
    }
    st.shards
        .iter()
        .map(|p| {
            format!(
                "{}: {} → {} {}",
                p.shard.as_deref().unwrap_or("?"),
                p.from,
                p.to.as_deref().unwrap_or("?"),
                word(&p.phase)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a FailoverRequest asks: `Switchover of orders/main → b`.
fn request_what(fr: &FailoverRequest) -> String {
    let items = fr
        .spec
        .items
        .iter()
        .map(|i| {
            let mut s = i.cluster.clone();
            if let Some(shard) = &i.shard {
                s = format!("{s}/{shard}");
            }
            if let Some(c) = &i.candidate {
                s = format!("{s} → {c}");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{} of {items}", word(&fr.spec.type_))
}

/// What it asks and how far it got.
fn request_summary(fr: &FailoverRequest) -> String {
    match fr.status.as_ref().and_then(|s| s.progress.as_ref()) {
        Some(p) => format!("{}, {p} steps done", request_what(fr)),
        None => request_what(fr),
    }
}

/// The cluster as `status` shows it; `sfos` and `frs` are the operations of its namespace.
pub fn cluster_view(cluster: &HaCluster, sfos: &[ShardFailover], frs: &[FailoverRequest]) -> ClusterView {
    let st = cluster.status.clone().unwrap_or_default();
    let engine = cluster.spec.engine;
    let shards = st
        .shards
        .iter()
        .map(|s| ShardView {
            name: s.name.clone(),
            primary: s.current_primary.clone(),
            target_primary: s.target_primary.clone(),
            epoch: s.epoch,
            members: s.members.iter().map(|m| member_view(engine, m)).collect(),
        })
        .collect();
    let last_failover = st.last_failover.as_ref().map(|f| FailoverView {
        shard: f.shard.clone(),
        from: f.from.clone(),
        to: f.to.clone(),
        reason: f.reason.clone(),
        started_at: rfc3339(&f.started_at),
        duration_ms: f.duration_ms,
        lost_offset: f.lost_offset,
        loss_accounting: f.loss_accounting,
        epoch: f.epoch,
    });
    let mut operations: Vec<OperationView> = Vec::new();
    for sfo in sfos.iter().filter(|s| !shard_failover_done(s) && shard_failover_concerns(s, cluster)) {
        operations.push(OperationView {
            kind: "ShardFailover".into(),
            name: sfo.name_any(),
            phase: Some(sfo.status.as_ref().and_then(|s| s.phase).map_or("Pending".into(), |p| word(&p))),
            locks: Vec::new(),
            summary: shard_failover_summary(sfo),
        });
    }
    for fr in frs.iter().filter(|f| !request_done(f) && request_concerns(f, &cluster.name_any())) {
        operations.push(OperationView {
            kind: "FailoverRequest".into(),
            name: fr.name_any(),
            phase: Some(fr.status.as_ref().and_then(|s| s.phase).map_or("Pending".into(), |p| word(&p))),
            locks: Vec::new(),
            summary: request_summary(fr),
        });
    }
    for s in &st.shards {
        let Some(lock) = &s.operation else { continue };
        match operations.iter_mut().find(|o| o.kind == lock.kind && o.name == lock.name) {
            Some(o) => o.locks.push(s.name.clone()),
            None => operations.push(OperationView {
                kind: lock.kind.clone(),
                name: lock.name.clone(),
                phase: None,
                locks: vec![s.name.clone()],
                summary: if lock.kind == "HaCluster" {
                    format!("automatic failover of shard {}", s.name)
                } else {
                    format!("holds the operation lock of shard {}", s.name)
                },
            }),
        }
    }
    ClusterView {
        namespace: cluster.namespace().unwrap_or_default(),
        name: cluster.name_any(),
        engine: word(&engine),
        phase: st.phase.map(|p| word(&p)),
        paused: cluster.spec.paused,
        failover_mode: word(&cluster.spec.failover.mode),
        healthy_members: st.healthy_members.clone(),
        shards,
        last_failover,
        operations,
        conditions_not_ok: st
            .conditions
            .iter()
            .filter(|c| !condition_ok(c))
            .map(|c| ConditionView {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition_time: rfc3339(&c.last_transition_time),
            })
            .collect(),
    }
}

fn member_view(engine: Engine, m: &MemberStatus) -> MemberView {
    let mut notes = Vec::new();
    if m.leaving {
        notes.push("leaving (its pod is being deleted)".to_owned());
    }
    if !m.errant_transactions.is_empty() {
        notes.push(format!("errant transactions {}", m.errant_transactions.join(",")));
    }
    if let Some(msg) = &m.message {
        notes.push(one_line(msg));
    }
    MemberView {
        name: m.name.clone(),
        role: word(&m.role),
        healthy: m.healthy,
        lag: if m.role == Role::Primary || engine == Engine::Agent { None } else { m.lag },
        endpoint: m.endpoint.clone(),
        last_heartbeat: m.last_heartbeat.as_ref().map(rfc3339),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

fn engine_of(view: &ClusterView) -> Engine {
    match view.engine.as_str() {
        "Mysql" => Engine::Mysql,
        "Agent" => Engine::Agent,
        _ => Engine::Redis,
    }
}

fn role_of(role: &str) -> Role {
    match role {
        "Primary" => Role::Primary,
        "Replica" => Role::Replica,
        "Fenced" => Role::Fenced,
        _ => Role::Unknown,
    }
}

fn lost(engine: Engine, n: Option<i64>, accounting: Option<LossAccounting>) -> String {
    let amount = match (engine, n) {
        (_, None) => return "unknown".into(),
        (Engine::Mysql, Some(n)) => format!("{n} trx"),
        (_, Some(n)) => bytes(n),
    };
    match accounting {
        // Writes after the old primary's last probe are not known: the figure is a floor.
        Some(LossAccounting::AtLeast) => format!("≥{amount}"),
        _ => amount,
    }
}

/// `main: redis-a → redis-b 3m ago (PrimaryDown, took 1.07s, lost 0 B)`.
pub fn last_failover_line(view: &ClusterView, now: Timestamp) -> String {
    let Some(f) = &view.last_failover else { return "none recorded".into() };
    let when = parse_time(&f.started_at).map_or_else(|| f.started_at.clone(), |t| ago(t, now));
    let mut details = vec![f.reason.clone()];
    if let Some(ms) = f.duration_ms {
        details.push(format!("took {}", millis(ms)));
    }
    if f.from.is_some() {
        details.push(format!("lost {}", lost(engine_of(view), f.lost_offset, f.loss_accounting)));
    }
    format!(
        "{}: {} → {} {when} ({})",
        f.shard,
        f.from.as_deref().unwrap_or("(none)"),
        f.to.as_deref().unwrap_or("(nobody)"),
        details.join(", ")
    )
}

/// The one-screen status of a cluster: who is primary, every member, what is under way and
/// what is not OK.
pub fn cluster_text(view: &ClusterView, now: Timestamp) -> String {
    let engine = engine_of(view);
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{:<15} {v}", format!("{k}:"));
    };
    field(&mut out, "Cluster", &format!("{}/{} ({})", view.namespace, view.name, view.engine));
    let phase = match (&view.phase, &view.healthy_members) {
        (None, _) => "- (the operator has not reported on this cluster yet: is it running and watching this namespace?)".to_owned(),
        (Some(p), Some(h)) => format!("{p}, {h} members healthy"),
        (Some(p), None) => p.clone(),
    };
    field(&mut out, "Phase", &phase);
    match view.shards.as_slice() {
        [] => {}
        [s] => field(&mut out, "Primary", &shard_line(s)),
        shards => field(&mut out, "Shards", &shards.iter().map(shard_line).collect::<Vec<_>>().join("; ")),
    }
    let failover = if view.paused {
        format!(
            "PAUSED (spec.paused): the operator observes and changes no role; `kubectl understudy resume {}` ends it",
            view.name
        )
    } else if view.failover_mode == "Manual" {
        "Manual: only FailoverRequests and ShardFailovers change roles".into()
    } else {
        view.failover_mode.clone()
    };
    field(&mut out, "Failover", &failover);
    field(&mut out, "Last failover", &last_failover_line(view, now));
    if view.operations.is_empty() {
        field(&mut out, "In flight", "none");
    }
    for (i, o) in view.operations.iter().enumerate() {
        let mut line = format!("{}/{}", o.kind, o.name);
        if let Some(p) = &o.phase {
            line = format!("{line} {p}");
        }
        line = format!("{line}: {}", o.summary);
        if !o.locks.is_empty() && o.kind != "HaCluster" {
            line = format!("{line} (holds the lock of {})", o.locks.join(", "));
        }
        field(&mut out, if i == 0 { "In flight" } else { "" }, &line);
    }
    out.push('\n');
    let several = view.shards.len() > 1;
    let mut headers = vec!["MEMBER", "ROLE", "HEALTHY", "LAG", "LAST SEEN", "ENDPOINT", "NOTE"];
    if several {
        headers.insert(0, "SHARD");
    }
    let rows: Vec<Vec<String>> = view
        .shards
        .iter()
        .flat_map(|s| s.members.iter().map(move |m| (s, m)))
        .map(|(s, m)| {
            let mut row = vec![
                m.name.clone(),
                m.role.clone(),
                if m.healthy { "yes".into() } else { "NO".into() },
                lag(engine, role_of(&m.role), m.lag),
                m.last_heartbeat
                    .as_deref()
                    .and_then(parse_time)
                    .map_or_else(|| "never".into(), |t| ago(t, now)),
                m.endpoint.clone().unwrap_or_else(|| "-".into()),
                m.note.as_deref().map(|n| truncate(n, 80)).unwrap_or_default(),
            ];
            if several {
                row.insert(0, s.name.clone());
            }
            row
        })
        .collect();
    if rows.is_empty() {
        out.push_str("No members reported yet.\n");
    } else {
        out.push_str(&table(&headers, &rows));
    }
    out.push('\n');
    if view.conditions_not_ok.is_empty() {
        field(&mut out, "Conditions", "all OK");
    } else {
        out.push_str("Conditions not OK:\n");
        for c in &view.conditions_not_ok {
            let since = parse_time(&c.last_transition_time).map(|t| ago(t, now)).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}={} {} (since {since}): {}",
                c.type_,
                c.status,
                c.reason,
                one_line(&c.message)
            );
        }
    }
    out
}

fn shard_line(s: &ShardView) -> String {
    let mut line =
        format!("{} (shard {}, epoch {})", s.primary.as_deref().unwrap_or("none"), s.name, s.epoch);
    if let Some(t) = s.target_primary.as_ref().filter(|t| Some(*t) != s.primary.as_ref()) {
        line = format!("{line}, promoting {t}");
    }
    line
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// One line per cluster, for `status` without a name.
pub fn clusters_table(views: &[ClusterView], with_namespace: bool, now: Timestamp) -> String {
    let mut headers = vec![
        "NAME",
        "ENGINE",
        "PHASE",
        "PRIMARY",
        "HEALTHY",
        "EPOCH",
        "LAST FAILOVER",
        "IN FLIGHT",
        "NOT OK",
    ];
    if with_namespace {
        headers.insert(0, "NAMESPACE");
    }
    let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let mut phase = v.phase.clone().unwrap_or_else(|| "-".into());
            if v.paused && phase != "Paused" {
                phase = format!("{phase} (paused)");
            }
            let last = v.last_failover.as_ref().map_or("-".into(), |f| {
                let when = parse_time(&f.started_at).map(|t| ago(t, now)).unwrap_or_default();
                format!(
                    "{} → {} {when}",
                    f.from.as_deref().unwrap_or("(none)"),
                    f.to.as_deref().unwrap_or("(nobody)")
                )
            });
            let mut row = vec![
                v.name.clone(),
                v.engine.clone(),
                phase,
                dash(v.shards.iter().filter_map(|s| s.primary.clone()).collect::<Vec<_>>().join(",")),
                v.healthy_members.clone().unwrap_or_else(|| "-".into()),
                dash(v.shards.iter().map(|s| s.epoch.to_string()).collect::<Vec<_>>().join(",")),
                last,
                dash(
                    v.operations
                        .iter()
                        .map(|o| format!("{}/{}", o.kind, o.name))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                dash(v.conditions_not_ok.iter().map(|c| c.type_.clone()).collect::<Vec<_>>().join(",")),
            ];
            if with_namespace {
                row.insert(0, v.namespace.clone());
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

// ---------------------------------------------------------------------------------------------
// Following an operation.

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded(String),
    /// Failed, refused or rolled back: the reason, on one line.
    Failed(String),
}

/// Remembers what was last printed for each part of an operation, so that following it prints
/// a line only when something changed.
#[derive(Default)]
pub struct ProgressLog {
    shown: BTreeMap<String, String>,
}

impl ProgressLog {
    /// The lines of `entries` (key, text) whose text differs from what was shown for the key.
    pub fn changes(&mut self, entries: Vec<(String, String)>) -> Vec<String> {
        let mut lines = Vec::new();
        for (key, text) in entries {
            if self.shown.get(&key) != Some(&text) {
                self.shown.insert(key, text.clone());
                lines.push(text);
            }
        }
        lines
    }
}

/// `[  1.25s]`: the time since following started, as the prefix of a progress line.
pub fn elapsed(d: Duration) -> String {
    let text =
        if d < Duration::from_secs(60) { format!("{:.2}s", d.as_secs_f64()) } else { human_duration(d) };
    format!("[{text:>7}]")
}

/// What a ShardFailover shows as it runs: its phase and message, each shard's step.
pub fn shard_failover_progress(sfo: &ShardFailover) -> Vec<(String, String)> {
    let st = sfo.status.clone().unwrap_or_default();
    let mut entries = vec![(
        "phase".to_owned(),
        match (st.phase, &st.message) {
            (None, _) => "accepted; waiting for the operator to pick it up".to_owned(),
            (Some(p), Some(m)) => format!("{}: {}", word(&p), one_line(m)),
            (Some(p), None) => word(&p),
        },
    )];
    for p in &st.shards {
        let mut text = format!(
            "shard {}: {} → {} {}",
            p.shard.as_deref().unwrap_or("?"),
            p.from,
            p.to.as_deref().unwrap_or("?"),
            word(&p.phase)
        );
        if let Some(m) = &p.message {
            text = format!("{text} ({})", one_line(m));
        }
        entries.push((format!("shard/{}", p.uid), text));
    }
    if let Some(busy) = st.conditions.iter().find(|c| c.type_ == ConditionType::DatabaseBusy.as_str()) {
        entries.push(("busy".into(), one_line(&busy.message)));
    }
    entries
}

/// A ShardFailover's end: the seed's error code and the message when it failed.
pub fn shard_failover_outcome(sfo: &ShardFailover) -> Option<Outcome> {
    let st = sfo.status.as_ref()?;
    let message = one_line(st.message.as_deref().unwrap_or_default());
    match st.phase? {
        ShardFailoverPhase::Succeeded => Some(Outcome::Succeeded(message)),
        ShardFailoverPhase::Failed => {
            let reason = match st.error_code.map(|c| word(&c)) {
                Some(code) if !message.starts_with(&code) => format!("{code}: {message}"),
                _ => message,
            };
            Some(Outcome::Failed(reason))
        }
        _ => None,
    }
}

/// What a FailoverRequest shows as it runs: its phase and each subtask that started.
pub fn request_progress(fr: &FailoverRequest) -> Vec<(String, String)> {
    let st = fr.status.clone().unwrap_or_default();
    // The phase alone: each step that starts or ends has a line of its own.
    let phase = match st.phase {
        None => "accepted; waiting for the operator to pick it up".to_owned(),
        Some(p) => word(&p),
    };
    let mut entries = vec![("phase".to_owned(), phase)];
    for t in st.task.iter().flat_map(|t| &t.subtasks) {
        if matches!(t.status, TaskStatus::Ready | TaskStatus::Pending) {
            continue;
        }
        let cluster = fr.spec.items.get(t.item as usize).map_or("?", |i| i.cluster.as_str());
        let mut text = format!("{cluster} {}: {}", t.name, word(&t.status));
        if let Some(m) = &t.message {
            text = format!("{text} ({})", one_line(m));
        }
        entries.push((format!("task/{}", t.id), text));
    }
    entries
}

/// A FailoverRequest's end: its message, which names the failed step and why.
pub fn request_outcome(fr: &FailoverRequest) -> Option<Outcome> {
    let st = fr.status.as_ref()?;
    let message = one_line(st.message.as_deref().unwrap_or_default());
    match st.phase? {
        RequestPhase::Succeeded => Some(Outcome::Succeeded(message)),
        RequestPhase::Failed => Some(Outcome::Failed(message)),
        RequestPhase::RolledBack => Some(Outcome::Failed(format!("rolled back: {message}"))),
        RequestPhase::Pending | RequestPhase::Running => None,
    }
}

/// What a ProtectionGroup shows during a planned failover.
pub fn site_failover_progress(pg: &ProtectionGroup) -> Vec<(String, String)> {
    let st = pg.status.clone().unwrap_or_default();
    let mut phase = st.phase.map_or("-".into(), |p| word(&p));
    if let Some(site) = st.production_site {
        phase = format!("{phase}, production site {}", site.as_str());
    }
    if let Some(step) = &st.step {
        phase = format!("{phase}, step {step}");
    }
    let mut entries = vec![("phase".to_owned(), phase)];
    if let Some(c) = st.conditions.iter().find(|c| c.type_ == ConditionType::FailoverAllowed.as_str()) {
        entries.push(("allowed".into(), format!("not started: {}", one_line(&c.message))));
    }
    if let Some(m) = &st.message {
        entries.push(("message".into(), one_line(m)));
    }
    entries
}

/// The end of the planned failover to `want` that started after job `before` (the job id
/// before the request): Protected at `want` is success, ErrorReversing or Error a failure.
pub fn site_failover_outcome(pg: &ProtectionGroup, want: SiteRole, before: Option<&str>) -> Option<Outcome> {
    let st = pg.status.as_ref()?;
    if st.job_id.as_deref() == before {
        return None;
    }
    let message = one_line(st.message.as_deref().unwrap_or_default());
    match st.phase? {
        ProtectionPhase::Protected | ProtectionPhase::FailedOver if st.production_site == Some(want) => {
            Some(Outcome::Succeeded(message))
        }
        ProtectionPhase::ErrorReversing | ProtectionPhase::Error => {
            let ready = st.conditions.iter().find(|c| c.type_ == ConditionType::Ready.as_str());
            Some(Outcome::Failed(if message.is_empty() {
                ready.map(|c| one_line(&c.message)).unwrap_or_else(|| "the planned failover failed".into())
            } else {
                message
            }))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// History.

/// `kubectl understudy history -o json|yaml` prints this.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub namespace: String,
    pub cluster: String,
    /// Oldest first.
    pub entries: Vec<HistoryEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// RFC 3339.
    pub time: String,
    /// `Kind/name` of the object the entry is about.
    pub object: String,
    /// `Created` and `Finished` (an operation), `RoleChange` (the cluster's last recorded
    /// failover), `Normal` and `Warning` (an Event).
    pub kind: String,
    pub reason: Option<String>,
    pub message: String,
}

/// The cluster's past, oldest first: the operations that concern it (created, finished), its
/// last recorded role change, its protecting group's last move, and the Events about any of
/// them that the API server still keeps.
pub fn history(
    cluster: &HaCluster,
    sfos: &[ShardFailover],
    frs: &[FailoverRequest],
    group: Option<&ProtectionGroup>,
    events: &[Event],
) -> HistoryView {
    // Object times (creation, completion, a failover's start) are whole seconds, Event times
    // microseconds: an object time is placed at the end of its second, so that it follows
    // the Events of that second it came after (an operation's own entries are put back
    // after its creation below).
    let mut entries: Vec<(Timestamp, HistoryEntry)> = Vec::new();
    let mut push = |t: &Time,
                    precise: bool,
                    object: String,
                    kind: &str,
                    reason: Option<String>,
                    message: String| {
        let key = if precise { t.0 } else { t.0 + std::time::Duration::from_micros(999_999) };
        entries.push((
            key,
            HistoryEntry { time: rfc3339(t), object, kind: kind.into(), reason, message: one_line(&message) },
        ));
    };
    let mut uids: Vec<String> = cluster.uid().into_iter().collect();
    let requested = |meta: &kube::api::ObjectMeta| {
        let a = meta.annotations.clone().unwrap_or_default();
        let mut s = String::new();
        if let Some(by) = a.get(REQUESTED_BY) {
            s = format!(" by {by}");
        }
        if let Some(why) = a.get(REQUEST_REASON) {
            s = format!("{s} (reason: {why})");
        }
        s
    };
    let noted = |uid: Option<String>, message: &str| {
        events.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.uid.clone()) == uid
                && e.note.as_deref().map(one_line).as_deref() == Some(one_line(message).as_str())
        })
    };
    for sfo in sfos.iter().filter(|s| shard_failover_concerns(s, cluster)) {
        let object = format!("ShardFailover/{}", sfo.name_any());
        uids.extend(sfo.uid());
        if let Some(t) = &sfo.metadata.creation_timestamp {
            let dry = if sfo.spec.dry_run { " (dry run)" } else { "" };
            let what =
                format!("switch over {}{dry}{}", sfo.spec.shard_uids.join(", "), requested(&sfo.metadata));
            push(t, false, object.clone(), "Created", None, what);
        }
        let st = sfo.status.clone().unwrap_or_default();
        if let (Some(t), Some(p)) = (&st.completion_time, st.phase) {
            let message = st.message.clone().unwrap_or_default();
            if !noted(sfo.uid(), &message) {
                let reason = st.error_code.map(|c| word(&c)).or_else(|| Some(word(&p)));
                push(t, false, object, "Finished", reason, message);
            }
        }
    }
    for fr in frs.iter().filter(|f| request_concerns(f, &cluster.name_any())) {
        let object = format!("FailoverRequest/{}", fr.name_any());
        uids.extend(fr.uid());
        if let Some(t) = &fr.metadata.creation_timestamp {
            let dry = if fr.spec.dry_run { " (dry run)" } else { "" };
            push(
                t,
                false,
                object.clone(),
                "Created",
                None,
                format!("{}{dry}{}", request_what(fr), requested(&fr.metadata)),
            );
        }
        let st = fr.status.clone().unwrap_or_default();
        let end = st.task.as_ref().and_then(|t| t.end_time.clone());
        if let (Some(t), Some(p)) = (end, st.phase.filter(|p| p.is_terminal())) {
            let message = st.message.clone().unwrap_or_default();
            if !noted(fr.uid(), &message) {
                push(&t, false, object, "Finished", Some(word(&p)), message);
            }
        }
    }
    let view = cluster_view(cluster, &[], &[]);
    // The last role change, unless an Event of the cluster tells it already (with a precise
    // time): the operator's promotion Events name the shard and the epoch.
    let told = |shard: &str, epoch: i64| {
        events.iter().any(|e| {
            let about = e
                .regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some("HaCluster") && r.name == cluster.metadata.name);
            let note = e.note.as_deref().unwrap_or_default();
            about && note.starts_with(&format!("shard {shard}:")) && note.contains(&format!("(epoch {epoch}"))
        })
    };
    if let (Some(f), Some(raw)) =
        (&view.last_failover, cluster.status.as_ref().and_then(|s| s.last_failover.as_ref()))
        && !told(&f.shard, f.epoch)
    {
        let mut what = format!(
            "shard {}: {} → {} (epoch {})",
            f.shard,
            f.from.as_deref().unwrap_or("(none)"),
            f.to.as_deref().unwrap_or("(nobody)"),
            f.epoch
        );
        if let Some(ms) = f.duration_ms {
            what = format!("{what}, took {}", millis(ms));
        }
        if f.from.is_some() {
            what = format!("{what}, lost {}", lost(cluster.spec.engine, f.lost_offset, f.loss_accounting));
        }
        push(
            &raw.started_at,
            false,
            format!("HaCluster/{}", cluster.name_any()),
            "RoleChange",
            Some(f.reason.clone()),
            what,
        );
    }
    if let Some(pg) = group {
        uids.extend(pg.uid());
        let st = pg.status.clone().unwrap_or_default();
        let object = format!("ProtectionGroup/{}", pg.name_any());
        if let (Some(t), Some(job)) = (&st.job_started_at, &st.job_id) {
            push(
                t,
                false,
                object.clone(),
                "Created",
                None,
                format!("planned failover job {job}{}", requested(&pg.metadata)),
            );
        }
        let ended = matches!(st.phase, Some(ProtectionPhase::Protected | ProtectionPhase::ErrorReversing));
        if let (true, Some(t), Some(m)) =
            (ended && st.job_id.is_some(), &st.last_transition_time, &st.message)
            && !noted(pg.uid(), m)
        {
            push(t, false, object, "Finished", st.phase.map(|p| word(&p)), m.clone());
        }
    }
    for e in events {
        let Some(r) = &e.regarding else { continue };
        let about_cluster = r.kind.as_deref() == Some("HaCluster") && r.name == cluster.metadata.name;
        if !about_cluster && !r.uid.as_ref().is_some_and(|u| uids.contains(u)) {
            continue;
        }
        let Some((t, precise)) = event_time(e) else { continue };
        let mut message = e.note.clone().unwrap_or_default();
        if let Some(n) = e.series.as_ref().map(|s| s.count).filter(|n| *n > 1) {
            message = format!("{message} (seen {n} times)");
        }
        push(
            &t,
            precise,
            format!("{}/{}", r.kind.clone().unwrap_or_default(), r.name.clone().unwrap_or_default()),
            e.type_.as_deref().unwrap_or("Normal"),
            e.reason.clone(),
            message,
        );
    }
    entries.sort_by_key(|e| e.0);
    // An operation's creation comes before anything about it, also within one second: its own
    // entries, and those that name it (`requested by ShardFailover <name>`).
    let mut i = 0;
    while i < entries.len() {
        let object = entries[i].1.object.clone();
        let mention = object.replacen('/', " ", 1);
        let about = |e: &HistoryEntry| {
            e.object == object
                || e.message.contains(&mention)
                || e.reason.as_deref().is_some_and(|r| r.contains(&mention))
        };
        let first_about = entries[..i].iter().position(|(_, e)| about(e));
        match first_about {
            Some(j) if entries[i].1.kind == "Created" => {
                let created = entries.remove(i);
                entries.insert(j, created);
            }
            _ => {}
        }
        i += 1;
    }
    HistoryView {
        namespace: cluster.namespace().unwrap_or_default(),
        cluster: cluster.name_any(),
        entries: entries.into_iter().map(|(_, e)| e).collect(),
    }
}

/// When an Event happened, and whether to the microsecond: its eventTime, else the
/// deprecated timestamps, else its creation (whole seconds).
fn event_time(e: &Event) -> Option<(Time, bool)> {
    if let Some(t) = &e.event_time {
        return Some((Time(t.0), true));
    }
    e.deprecated_last_timestamp
        .clone()
        .or_else(|| e.deprecated_first_timestamp.clone())
        .or_else(|| e.metadata.creation_timestamp.clone())
        .map(|t| (t, false))
}

/// The history as a table, oldest first.
pub fn history_text(view: &HistoryView, now: Timestamp) -> String {
    if view.entries.is_empty() {
        return format!(
            "Nothing recorded for HaCluster {}/{} yet.\n{HISTORY_FOOTNOTE}\n",
            view.namespace, view.cluster
        );
    }
    let rows: Vec<Vec<String>> = view
        .entries
        .iter()
        .map(|e| {
            let age = parse_time(&e.time).map(|t| ago(t, now)).unwrap_or_default();
            let what = match &e.reason {
                Some(r) => format!("{} {r}: {}", e.kind, e.message),
                None => format!("{}: {}", e.kind, e.message),
            };
            vec![e.time.clone(), age, e.object.clone(), what]
        })
        .collect();
    format!("{}\n{HISTORY_FOOTNOTE}\n", table(&["TIME", "AGE", "OBJECT", "WHAT"], &rows))
}

const HISTORY_FOOTNOTE: &str = "Events are kept for the API server's --event-ttl (1h by default); operation objects stay until deleted, and a cluster records only its last role change.";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources::hacluster::FailoverMode;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cluster(status: serde_json::Value) -> HaCluster {
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u-orders"},
            "spec": {"engine": "Redis", "shards": [{"name": "main", "members": [
                {"name": "a", "endpoint": "10.0.0.1:6379"},
                {"name": "b", "endpoint": "10.0.0.2:6379"},
                {"name": "c", "endpoint": "10.0.0.3:6379", "priority": 0}]}]},
            "status": status
        }))
        .unwrap()
    }

    fn healthy_status() -> serde_json::Value {
        json!({
            "phase": "Healthy", "healthyMembers": "2/3", "primary": "b",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "PrimaryHealthy", "message": "ok",
                 "lastTransitionTime": "2026-12-05T03:00:00Z"},
                {"type": "Degraded", "status": "True", "reason": "MembersUnhealthy",
                 "message": "1 of 3 members\nunhealthy", "lastTransitionTime": "2026-12-05T03:10:00Z"},
                {"type": "Paused", "status": "False", "reason": "Active", "message": "acting",
                 "lastTransitionTime": "2026-12-05T03:00:00Z"},
                {"type": "Progressing", "status": "False", "reason": "UpToDate", "message": "",
                 "lastTransitionTime": "2026-12-05T03:00:00Z"}],
            "shards": [{"name": "main", "currentPrimary": "b", "epoch": 4, "members": [
                {"name": "a", "role": "Replica", "healthy": true, "lag": 0, "endpoint": "10.0.0.1:6379",
                 "lastHeartbeat": "2026-12-05T03:14:59Z"},
                {"name": "b", "role": "Primary", "healthy": true, "lag": 0, "endpoint": "10.0.0.2:6379",
                 "lastHeartbeat": "2026-12-05T03:15:00Z"},
                {"name": "c", "role": "Unknown", "healthy": false, "endpoint": "10.0.0.3:6379",
                 "message": "connection refused"}]}],
            "lastFailover": {"shard": "main", "from": "a", "to": "b", "reason": "PrimaryDown",
                "startedAt": "2026-12-05T03:12:00Z", "durationMs": 1070, "lostOffset": 0, "epoch": 4}
        })
    }

    const NOW: &str = "2026-12-05T03:15:00Z";

    #[test]
    fn durations_read_like_kubectl_ages() {
        let s = Duration::from_secs;
        assert_eq!(human_duration(s(0)), "0s");
        assert_eq!(human_duration(s(119)), "119s");
        assert_eq!(human_duration(s(120)), "2m");
        assert_eq!(human_duration(s(192)), "3m12s");
        assert_eq!(human_duration(s(25 * 60 + 7)), "25m");
        assert_eq!(human_duration(s(3 * 3600 + 5 * 60)), "3h5m");
        assert_eq!(human_duration(s(30 * 3600)), "30h");
        assert_eq!(human_duration(s(76 * 3600)), "3d4h");
        assert_eq!(human_duration(s(20 * 86400)), "20d");
        assert_eq!(human_duration(s(800 * 86400)), "2y70d");
        assert_eq!(ago(ts("2026-12-05T03:12:00Z"), ts(NOW)), "3m ago");
        assert_eq!(ago(ts("2026-12-05T03:16:00Z"), ts(NOW)), "0s ago", "clock skew is not negative");
        assert_eq!(millis(23), "23ms");
        assert_eq!(millis(1070), "1.07s");
        assert_eq!(millis(125_000), "2m5s");
        assert_eq!(elapsed(Duration::from_millis(1250)), "[  1.25s]");
    }

    #[test]
    fn lag_is_shown_in_the_engines_unit() {
        assert_eq!(lag(Engine::Redis, Role::Replica, Some(0)), "0 B");
        assert_eq!(lag(Engine::Redis, Role::Replica, Some(12 * 1024 + 512)), "12.5 KiB");
        assert_eq!(lag(Engine::Redis, Role::Replica, Some(3 * 1024 * 1024)), "3.0 MiB");
        assert_eq!(lag(Engine::Redis, Role::Replica, None), "?");
        assert_eq!(lag(Engine::Redis, Role::Primary, Some(5)), "-");
        assert_eq!(lag(Engine::Mysql, Role::Replica, Some(7)), "7 trx");
        assert_eq!(lag(Engine::Agent, Role::Replica, Some(7)), "-");
    }

    #[test]
    fn conditions_are_judged_by_their_meaning() {
        let c = |t: &str, s: &str, r: &str| Condition {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(ts(NOW)),
        };
        assert!(condition_ok(&c("Ready", "True", "PrimaryHealthy")));
        assert!(!condition_ok(&c("Ready", "False", "NoPrimary")));
        assert!(condition_ok(&c("Degraded", "False", "AllMembersHealthy")));
        assert!(!condition_ok(&c("Degraded", "True", "MembersUnhealthy")));
        assert!(!condition_ok(&c("Paused", "True", "Paused")));
        assert!(condition_ok(&c("Progressing", "False", "UpToDate")));
        assert!(!condition_ok(&c("Progressing", "False", "MemberNotReady")));
        assert!(!condition_ok(&c("Progressing", "True", "Restarting")), "a roll under way is shown");
        assert!(!condition_ok(&c("Routed", "False", "NameConflict")));
        assert!(condition_ok(&c("SomethingElse", "False", "X")));
        assert!(!condition_ok(&c("SomethingElse", "Unknown", "X")));
    }

    #[test]
    fn tables_align_columns_and_trim_trailing_spaces() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), String::new()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq\n");
    }

    #[test]
    fn the_status_of_a_cluster_fits_one_screen_and_says_what_is_not_ok() {
        let view = cluster_view(&cluster(healthy_status()), &[], &[]);
        assert_eq!(view.shards[0].members[1].lag, None, "a primary has no lag");
        assert_eq!(view.conditions_not_ok.len(), 1, "{:?}", view.conditions_not_ok);
        let text = cluster_text(&view, ts(NOW));
        let expected = "\
Cluster:        shop/orders (Redis)
Phase:          Healthy, 2/3 members healthy
Primary:        b (shard main, epoch 4)
Failover:       Automatic
Last failover:  main: a → b 3m ago (PrimaryDown, took 1.07s, lost 0 B)
In flight:      none

MEMBER  ROLE     HEALTHY  LAG  LAST SEEN  ENDPOINT       NOTE
a       Replica  yes      0 B  1s ago     10.0.0.1:6379
b       Primary  yes      -    0s ago     10.0.0.2:6379
c       Unknown  NO       ?    never      10.0.0.3:6379  connection refused

Conditions not OK:
  Degraded=True MembersUnhealthy (since 5m ago): 1 of 3 members unhealthy
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_paused_cluster_says_so_and_how_to_resume() {
        let mut c = cluster(healthy_status());
        c.spec.paused = true;
        let text = cluster_text(&cluster_view(&c, &[], &[]), ts(NOW));
        assert!(text.contains("PAUSED (spec.paused)"), "{text}");
        assert!(text.contains("kubectl understudy resume orders"), "{text}");
        c.spec.paused = false;
        c.spec.failover.mode = FailoverMode::Manual;
        let text = cluster_text(&cluster_view(&c, &[], &[]), ts(NOW));
        assert!(text.contains("Failover:       Manual: only"), "{text}");
    }

    #[test]
    fn a_cluster_without_status_says_the_operator_has_not_reported() {
        let mut c = cluster(json!({}));
        c.status = None;
        let text = cluster_text(&cluster_view(&c, &[], &[]), ts(NOW));
        assert!(text.contains("the operator has not reported on this cluster yet"), "{text}");
        assert!(text.contains("No members reported yet."), "{text}");
    }

    fn sfo(name: &str, spec: serde_json::Value, status: serde_json::Value) -> ShardFailover {
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "ShardFailover",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("u-{name}"),
                         "creationTimestamp": "2026-12-05T03:14:00Z",
                         "annotations": {REQUESTED_BY: "alice", REQUEST_REASON: "kernel upgrade"}},
            "spec": spec, "status": status
        }))
        .unwrap()
    }

    fn fr(name: &str, spec: serde_json::Value, status: serde_json::Value) -> FailoverRequest {
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "FailoverRequest",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("u-{name}"),
                         "creationTimestamp": "2026-12-05T03:13:00Z"},
            "spec": spec, "status": status
        }))
        .unwrap()
    }

    #[test]
    fn operations_in_flight_and_lock_holders_are_listed_once() {
        let mut status = healthy_status();
        status["shards"][0]["operation"] = json!({"kind": "ShardFailover", "name": "move",
            "acquiredAt": "2026-12-05T03:14:00Z", "expiresAt": "2026-12-05T03:19:00Z"});
        let c = cluster(status);
        let running = sfo(
            "move",
            json!({"shardUids": ["b"]}),
            json!({"phase": "Running", "cluster": "orders",
                   "shards": [{"uid": "b", "shard": "main", "from": "b", "to": "a", "phase": "Promoting"}]}),
        );
        let done =
            sfo("old", json!({"shardUids": ["a"]}), json!({"phase": "Succeeded", "cluster": "orders"}));
        let elsewhere =
            sfo("other", json!({"shardUids": ["x"]}), json!({"phase": "Running", "cluster": "else"}));
        let pending = fr(
            "req",
            json!({"type": "Failover", "items": [{"cluster": "orders", "candidate": "a"}]}),
            json!({}),
        );
        let view = cluster_view(&c, &[running, done, elsewhere], &[pending]);
        let ops: Vec<(&str, &str, Vec<String>)> =
            view.operations.iter().map(|o| (o.kind.as_str(), o.name.as_str(), o.locks.clone())).collect();
        assert_eq!(
            ops,
            vec![("ShardFailover", "move", vec!["main".to_owned()]), ("FailoverRequest", "req", vec![])]
        );
        let text = cluster_text(&view, ts(NOW));
        assert!(
            text.contains(
                "In flight:      ShardFailover/move Running: main: b → a Promoting (holds the lock of main)"
            ),
            "{text}"
        );
        assert!(
            text.contains("               FailoverRequest/req Pending: Failover of orders → a"),
            "{text}"
        );
        let all = clusters_table(&[view], true, ts(NOW));
        assert!(
            all.starts_with("NAMESPACE  NAME    ENGINE  PHASE    PRIMARY  HEALTHY  EPOCH  LAST FAILOVER"),
            "{all}"
        );
        assert!(
            all.contains("shop       orders  Redis   Healthy  b        2/3      4      a → b 3m ago"),
            "{all}"
        );
        assert!(all.contains("ShardFailover/move,FailoverRequest/req  Degraded"), "{all}");
    }

    #[test]
    fn the_json_shape_round_trips() {
        let view = cluster_view(&cluster(healthy_status()), &[], &[]);
        let list = StatusList { clusters: vec![view] };
        let text = serde_json::to_string(&list).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["clusters"][0]["shards"][0]["primary"], "b");
        assert_eq!(v["clusters"][0]["shards"][0]["members"][2]["note"], "connection refused");
        assert_eq!(v["clusters"][0]["conditionsNotOk"][0]["type"], "Degraded");
        assert_eq!(v["clusters"][0]["lastFailover"]["durationMs"], 1070);
        let back: StatusList = serde_json::from_str(&text).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn progress_prints_a_line_only_when_something_changed() {
        let mut log = ProgressLog::default();
        let s = |phase: &str, step: &str| {
            sfo(
                "move",
                json!({"shardUids": ["b"]}),
                json!({"phase": phase, "message": "main: b → a",
                       "shards": [{"uid": "b", "shard": "main", "from": "b", "to": "a", "phase": step}]}),
            )
        };
        assert_eq!(
            log.changes(shard_failover_progress(&s("Running", "Planned"))),
            vec!["Running: main: b → a", "shard main: b → a Planned"]
        );
        assert!(log.changes(shard_failover_progress(&s("Running", "Planned"))).is_empty());
        assert_eq!(
            log.changes(shard_failover_progress(&s("Running", "Promoting"))),
            vec!["shard main: b → a Promoting"]
        );
        assert_eq!(shard_failover_outcome(&s("Running", "Promoting")), None);
        let failed = sfo(
            "x",
            json!({"shardUids": ["a"]}),
            json!({"phase": "Failed", "errorCode": "shard_is_slave",
                   "message": "shard_is_slave: a is a replica of shard main (its primary is b)"}),
        );
        assert_eq!(
            shard_failover_outcome(&failed),
            Some(Outcome::Failed("shard_is_slave: a is a replica of shard main (its primary is b)".into()))
        );
        let busy = sfo(
            "y",
            json!({"shardUids": ["b"]}),
            json!({"phase": "Failed", "errorCode": "db_busy", "message": "shards main stayed locked"}),
        );
        assert_eq!(
            shard_failover_outcome(&busy),
            Some(Outcome::Failed("db_busy: shards main stayed locked".into()))
        );
    }

    #[test]
    fn a_request_shows_the_steps_that_started_and_why_it_failed() {
        let r = fr(
            "req",
            json!({"type": "Switchover", "items": [{"cluster": "orders", "candidate": "c"}]}),
            json!({"phase": "Failed", "progress": "0/7",
                   "message": "orders check: candidate c has priority 0: never promoted",
                   "task": {"id": "t", "name": "switchover", "status": "FAILED", "subtasks": [
                       {"id": 0, "name": "check", "description": "d", "status": "FAILED", "item": 0,
                        "timeoutSeconds": 1800, "message": "candidate c has priority 0: never promoted"},
                       {"id": 1, "name": "lock", "description": "d", "status": "PENDING", "item": 0,
                        "timeoutSeconds": 1800}]}}),
        );
        assert_eq!(
            request_progress(&r).into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
            vec![
                "Failed".to_owned(),
                "orders check: FAILED (candidate c has priority 0: never promoted)".to_owned()
            ]
        );
        assert_eq!(
            request_outcome(&r),
            Some(Outcome::Failed("orders check: candidate c has priority 0: never promoted".into()))
        );
    }

    fn group(status: serde_json::Value) -> ProtectionGroup {
        serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "ProtectionGroup",
            "metadata": {"name": "dr", "namespace": "shop", "uid": "u-dr"},
            "spec": {"sites": {"source": {"namespace": "shop"}, "target": {"namespace": "shop-dr"}},
                     "pairs": [{"source": "orders", "target": "orders-dr"}], "prioritySite": "Target"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_site_failover_ends_with_the_job_it_started() {
        let old = group(json!({"phase": "Protected", "productionSite": "Source", "jobId": "j1"}));
        assert_eq!(site_failover_outcome(&old, SiteRole::Target, Some("j1")), None);
        let moving =
            group(json!({"phase": "FailingOver", "productionSite": "Source", "jobId": "j2", "step": "sync"}));
        assert_eq!(site_failover_outcome(&moving, SiteRole::Target, Some("j1")), None);
        assert_eq!(site_failover_progress(&moving)[0].1, "FailingOver, production site Source, step sync");
        let done = group(json!({"phase": "Protected", "productionSite": "Target", "jobId": "j2",
                                "message": "job j2: the Target site is production"}));
        assert_eq!(
            site_failover_outcome(&done, SiteRole::Target, Some("j1")),
            Some(Outcome::Succeeded("job j2: the Target site is production".into()))
        );
        let failed = group(json!({"phase": "ErrorReversing", "productionSite": "Source", "jobId": "j2",
                                  "message": "job j2: the DR site did not catch up"}));
        assert_eq!(
            site_failover_outcome(&failed, SiteRole::Target, None),
            Some(Outcome::Failed("job j2: the DR site did not catch up".into()))
        );
    }

    #[test]
    fn history_orders_operations_role_changes_and_events_in_time() {
        let c = cluster(healthy_status());
        let done = sfo(
            "move",
            json!({"shardUids": ["b"]}),
            json!({"phase": "Succeeded", "cluster": "orders", "message": "done: main: b → a",
                   "completionTime": "2026-12-05T03:14:01Z"}),
        );
        let unrelated =
            sfo("other", json!({"shardUids": ["x"]}), json!({"phase": "Running", "cluster": "else"}));
        let ev =
            |name: &str, kind: &str, obj: &str, uid: &str, at: &str, reason: &str, note: &str| -> Event {
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "shop"},
                    "eventTime": at, "type": "Normal", "reason": reason, "action": "Promote",
                    "reportingController": "understudy.dev/operator", "reportingInstance": "x",
                    "regarding": {"kind": kind, "name": obj, "uid": uid}, "note": note
                }))
                .unwrap()
            };
        let events = vec![
            ev("e1", "HaCluster", "orders", "u-orders", "2026-12-05T03:12:01.500000Z", "FailedOver", "a → b"),
            ev(
                "e2",
                "ShardFailover",
                "move",
                "u-move",
                "2026-12-05T03:14:01.000000Z",
                "Succeeded",
                "done: main: b → a",
            ),
            ev("e3", "HaCluster", "someone-else", "u-x", "2026-12-05T03:13:00.000000Z", "FailedOver", "no"),
        ];
        let h = history(&c, &[done, unrelated], &[], None, &events);
        let lines: Vec<String> =
            h.entries.iter().map(|e| format!("{} {} {} {}", e.time, e.object, e.kind, e.message)).collect();
        assert_eq!(
            lines,
            vec![
                "2026-12-05T03:12:00Z HaCluster/orders RoleChange shard main: a → b (epoch 4), took 1.07s, lost 0 B",
                "2026-12-05T03:12:01Z HaCluster/orders Normal a → b",
                "2026-12-05T03:14:00Z ShardFailover/move Created switch over b by alice (reason: kernel upgrade)",
                "2026-12-05T03:14:01Z ShardFailover/move Normal done: main: b → a",
            ],
            "the finished entry is the Event's, not repeated from status"
        );
        let text = history_text(&h, ts(NOW));
        assert!(text.starts_with("TIME                  AGE        OBJECT              WHAT\n"), "{text}");
        assert!(text.contains("3m ago     HaCluster/orders    RoleChange PrimaryDown: shard main"), "{text}");
        assert!(text.contains("--event-ttl"), "{text}");
    }

    #[test]
    fn within_one_second_history_keeps_cause_before_effect() {
        let c = cluster(healthy_status());
        let fast = sfo(
            "fast",
            json!({"shardUids": ["b"]}),
            json!({"phase": "Failed", "cluster": "orders", "errorCode": "db_busy", "message": "busy",
                   "completionTime": "2026-12-05T03:14:00Z"}),
        );
        let ev = |name: &str, kind: &str, obj: &str, uid: &str, at: &str, note: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "shop"}, "eventTime": at, "type": "Normal",
                "reason": "R", "action": "A", "reportingController": "c", "reportingInstance": "i",
                "regarding": {"kind": kind, "name": obj, "uid": uid}, "note": note
            }))
            .unwrap()
        };
        let events = vec![
            // The promotion that status.lastFailover records, told by its Event.
            ev(
                "e0",
                "HaCluster",
                "orders",
                "u-orders",
                "2026-12-05T03:12:00.400000Z",
                "shard main: b promoted, replacing a (epoch 4, 20 ms; primary a stopped answering)",
            ),
            // In the second the operation was created: one Event before it, one about it.
            ev("e1", "HaCluster", "orders", "u-orders", "2026-12-05T03:14:00.100000Z", "before"),
            ev("e2", "ShardFailover", "fast", "u-fast", "2026-12-05T03:14:00.200000Z", "busy"),
            ev(
                "e3",
                "HaCluster",
                "orders",
                "u-orders",
                "2026-12-05T03:14:00.150000Z",
                "requested by ShardFailover fast",
            ),
        ];
        let h = history(&c, &[fast], &[], None, &events);
        let order: Vec<(&str, &str)> =
            h.entries.iter().map(|e| (e.object.as_str(), e.message.as_str())).collect();
        assert_eq!(
            order,
            vec![
                (
                    "HaCluster/orders",
                    "shard main: b promoted, replacing a (epoch 4, 20 ms; primary a stopped answering)"
                ),
                ("HaCluster/orders", "before"),
                ("ShardFailover/fast", "switch over b by alice (reason: kernel upgrade)"),
                ("HaCluster/orders", "requested by ShardFailover fast"),
                ("ShardFailover/fast", "busy"),
            ],
            "no RoleChange line beside the Event that tells it; created before its own Event, after the other"
        );
    }

    #[test]
    fn one_line_collapses_newlines() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
