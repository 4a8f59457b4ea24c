//! What every role-changing operation shares: reading member facts from an HaCluster's
//! status, and taking and releasing the per-shard operation lock (resourceVersion-guarded
//! writes on the HaCluster status). ShardFailover and FailoverRequest use these; the
//! HaCluster monitor carries recorded promotions out.

use std::time::{Duration, SystemTime};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt};

use crate::{
    core::{
        lock::{LockState, lock_state},
        shard::{MemberFacts, ShardFacts},
    },
    engines::{ObservedRole, Probe},
    resources::{
        HaCluster, ShardFailover,
        hacluster::{OperationLock, Role, Standby, StandbyRelease, Supersession},
    },
};

/// Member facts from an HaCluster's status (what its monitor last recorded).
pub fn facts_from_status(cluster: &HaCluster, shard: &str, dead_nodes: &[String]) -> ShardFacts {
    let st = cluster.status.clone().unwrap_or_default();
    let s = st.shards.iter().find(|s| s.name == shard).cloned().unwrap_or_default();
    let priority = |name: &str| {
        cluster
            .spec
            .shards
            .iter()
            .flatten()
            .flat_map(|s| s.members.iter())
            .find(|m| m.name == name)
            .map_or(100, |m| m.priority)
    };
    // Without it (a lost primary's own offset is no longer in status) every replica would
    // look caught up, and a forced failover would promote past maxLagOnFailover.
    let primary_offset = s.last_primary_offset();
    ShardFacts {
        members: s
            .members
            .iter()
            .map(|m| MemberFacts {
                name: m.name.clone(),
                endpoint: m.endpoint.clone().unwrap_or_default(),
                node: m.node.clone(),
                priority: priority(&m.name),
                probe: m.healthy.then(|| Probe {
                    role: if m.role == Role::Primary { ObservedRole::Primary } else { ObservedRole::Replica },
                    offset: m.offset.or(Some(0)),
                    following: None,
                    link_up: true,
                    ..Default::default()
                }),
                misses: u32::from(!m.healthy),
                unauthorized: false,
                ambiguous: None,
                leaving: m.leaving,
            })
            .collect(),
        current_primary: s.current_primary.clone(),
        target_primary: None,
        last_primary_offset: primary_offset,
        primary_lost_for: Duration::ZERO,
        avoid_nodes: dead_nodes.to_vec(),
        unfenced: None,
    }
}

/// The recorded lock in the core's terms.
fn plain_lock(l: &OperationLock) -> crate::core::lock::Lock {
    crate::core::lock::Lock {
        holder: format!("{} {}", l.kind, l.name),
        uid: l.uid.clone(),
        expires_at: SystemTime::from(l.expires_at.0),
    }
}

/// Who takes a lock.
pub struct Holder {
    /// Promotions recorded under the lock are forced (no drain of the old primary).
    pub force: bool,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub uid: String,
    /// Members and nodes the operation declared dead (recorded in the lock for the monitor).
    pub dead_members: Vec<String>,
    pub dead_nodes: Vec<String>,
}

impl Holder {
    fn lock(&self, now: Timestamp, deadline: Timestamp) -> OperationLock {
        OperationLock {
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: Some(self.uid.clone()),
            acquired_at: Time(now),
            expires_at: Time(deadline),
            force: self.force,
            dead_members: self.dead_members.clone(),
            dead_nodes: self.dead_nodes.clone(),
        }
    }
}

/// The resourceVersion-guarded status write that takes locks; a conflict means another
/// writer won and the caller retries.
async fn write_locks(clusters: &Api<HaCluster>, next: &HaCluster) -> Result<Result<(), String>, kube::Error> {
    match clusters.replace_status(&next.name_any(), &super::put_params(), next).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err("a concurrent status write (retrying)".into())),
        Err(e) => Err(e),
    }
}

/// Take the lock of every shard in `targets`, bump their epochs and record their target
/// primaries in one resourceVersion-guarded status write. `Ok(Err(holder))` if another
/// operation holds one of the locks (or a concurrent write won).
pub async fn acquire(
    clusters: &Api<HaCluster>,
    cluster: &HaCluster,
    holder: &Holder,
    targets: &[(String, String)],
    deadline: Timestamp,
) -> Result<Result<(), String>, kube::Error> {
    let now = Timestamp::now();
    let mut next = cluster.clone();
    let cstatus = next.status.get_or_insert_with(Default::default);
    let client = clusters.clone().into_client();
    for (shard, to) in targets {
        let Some(s) = cstatus.shards.iter_mut().find(|s| &s.name == shard) else { continue };
        let exists = holder_exists(&client, s.operation.as_ref()).await;
        match lock_state(
            s.operation.as_ref().map(plain_lock).as_ref(),
            &holder.uid,
            SystemTime::from(now),
            exists,
        ) {
            LockState::Held { holder, .. } => return Ok(Err(holder)),
            // Ours already: recorded (the promotion is under way) or carried out (the target
            // is the primary now). Taking it again would bump the epoch for nothing — what a
            // caller acting on a stale copy of its own object would otherwise do.
            LockState::Mine
                if (s.target_primary.as_ref() == Some(to)
                    || (s.target_primary.is_none() && s.current_primary.as_ref() == Some(to)))
                    && s.operation.as_ref().is_some_and(|l| l.force == holder.force) =>
            {
                continue;
            }
            LockState::Free | LockState::Mine => {}
        }
        s.operation = Some(holder.lock(now, deadline));
        s.epoch += 1;
        s.target_primary = Some(to.clone());
    }
    write_locks(clusters, &next).await
}

/// Take the lock of every shard of `cluster` without recording a promotion (the holder
/// changes roles itself: ProtectionGroup). `Ok(Err(holder))` while another operation holds
/// one of them (or a concurrent write won).
pub async fn lock_all(
    clusters: &Api<HaCluster>,
    cluster: &HaCluster,
    holder: &Holder,
    deadline: Timestamp,
) -> Result<Result<(), String>, kube::Error> {
    let now = Timestamp::now();
    let mut next = cluster.clone();
    let status = next.status.get_or_insert_with(Default::default);
    let mut changed = false;
    // Holders are looked up where the cluster lives.
    let client = clusters.clone().into_client();
    for s in &mut status.shards {
        let exists = holder_exists(&client, s.operation.as_ref()).await;
        match lock_state(
            s.operation.as_ref().map(plain_lock).as_ref(),
            &holder.uid,
            SystemTime::from(now),
            exists,
        ) {
            LockState::Held { holder, .. } => return Ok(Err(holder)),
            LockState::Mine => {}
            LockState::Free => {
                s.operation = Some(holder.lock(now, deadline));
                changed = true;
            }
        }
    }
    if status.shards.is_empty() {
        return Ok(Err(format!("{} has no shard status yet", cluster.name_any())));
    }
    if !changed {
        return Ok(Ok(()));
    }
    write_locks(clusters, &next).await
}

/// Whether the object holding `lock` still exists with the same uid. A lock whose holder was
/// deleted is released. Holders of kinds this controller cannot look up count as alive until
/// their lease expires; on API errors, too (never steal a lock on a guess).
pub async fn holder_exists(client: &kube::Client, lock: Option<&OperationLock>) -> bool {
    let Some(l) = lock else { return false };
    let ns = l.namespace.clone().unwrap_or_default();
    let found = match l.kind.as_str() {
        "ShardFailover" => Api::<ShardFailover>::namespaced(client.clone(), &ns)
            .get_opt(&l.name)
            .await
            .map(|o| o.and_then(|o| o.uid())),
        "FailoverRequest" => Api::<crate::resources::FailoverRequest>::namespaced(client.clone(), &ns)
            .get_opt(&l.name)
            .await
            .map(|o| o.and_then(|o| o.uid())),
        "ProtectionGroup" => Api::<crate::resources::ProtectionGroup>::namespaced(client.clone(), &ns)
            .get_opt(&l.name)
            .await
            .map(|o| o.and_then(|o| o.uid())),
        // A ProtectionGroup in another control plane cannot be looked up from here: its
        // lock is trusted until it expires.
        _ => return true,
    };
    match found {
        Ok(uid) => uid.is_some() && uid == l.uid,
        Err(_) => true,
    }
}

/// Release every lock `uid` holds on `cluster`, abandoning targets it recorded that were
/// not reached.
pub async fn release(clusters: &Api<HaCluster>, cluster: &str, uid: &str) -> Result<(), kube::Error> {
    // Still held after the retries: an error, and the caller retries (never reported as
    // released).
    update_status(clusters, cluster, |c| {
        let mut changed = false;
        for s in c.status.iter_mut().flat_map(|s| s.shards.iter_mut()) {
            if s.operation.as_ref().is_some_and(|l| l.uid.as_deref() == Some(uid)) {
                s.operation = None;
                // A promotion we recorded but that did not happen is abandoned with the lock.
                if s.target_primary.is_some() && s.target_primary != s.current_primary {
                    s.target_primary = None;
                }
                changed = true;
            }
        }
        if changed { Edit::Write(()) } else { Edit::Keep(()) }
    })
    .await?;
    Ok(())
}

/// What a change of [`update_status`] came to.
enum Edit<T> {
    /// Write the changed copy, then report `T`.
    Write(T),
    /// Nothing to write: report `T`.
    Keep(T),
}

/// Change `cluster`'s status on a fresh copy and write it with the resourceVersion read; on a
/// conflict (another writer won) read it again and redo the change, up to five times, then
/// the conflict is the error (the change is never reported as made). None: the cluster is
/// gone.
async fn update_status<T>(
    clusters: &Api<HaCluster>,
    cluster: &str,
    mut change: impl FnMut(&mut HaCluster) -> Edit<T>,
) -> Result<Option<T>, kube::Error> {
    let mut conflict = None;
    for _ in 0..5 {
        let Some(mut c) = clusters.get_opt(cluster).await? else { return Ok(None) };
        match change(&mut c) {
            Edit::Keep(out) => return Ok(Some(out)),
            Edit::Write(out) => match clusters.replace_status(cluster, &super::put_params(), &c).await {
                Ok(_) => return Ok(Some(out)),
                Err(kube::Error::Api(s)) if s.code == 409 => conflict = Some(kube::Error::Api(s)),
                Err(e) => return Err(e),
            },
        }
    }
    Err(conflict.expect("five conflicts"))
}

/// Whether `uid` holds the lock of every shard of `cluster` (and it has shards).
fn holds_every_lock(cluster: &HaCluster, uid: &str) -> bool {
    let shards = cluster.status.as_ref().map(|s| s.shards.as_slice()).unwrap_or_default();
    !shards.is_empty()
        && shards.iter().all(|s| s.operation.as_ref().is_some_and(|l| l.uid.as_deref() == Some(uid)))
}

/// End `cluster`'s standby relation `standby` (what its spec.standby says) in status, under
/// the locks `uid` took with [`lock_all`]: one resourceVersion-guarded write of
/// `status.standbyReleased` (see [`update_status`]). From then on its monitor no longer
/// re-attaches its leader to the upstream. `Ok(Ok(true))` when written now, `Ok(Ok(false))`
/// when `uid` had written it already; `Ok(Err(why))` when it may not (the locks are not all
/// ours, the spec or a ProtectionGroup says something else now).
pub async fn release_standby(
    clusters: &Api<HaCluster>,
    cluster: &str,
    uid: &str,
    by: &str,
    standby: &Standby,
) -> Result<Result<bool, String>, kube::Error> {
    let released = update_status(clusters, cluster, |c| {
        let refuse = |why: String| Edit::Keep(Err(why));
        let locked = holds_every_lock(c, uid);
        let spec_standby = c.spec.standby.clone();
        let status = c.status.get_or_insert_with(Default::default);
        if let Some(p) = &status.protection {
            return refuse(format!("{cluster} is now protected by ProtectionGroup {}", p.group));
        }
        if spec_standby.as_ref() != Some(standby) {
            return refuse(format!(
                "{cluster}'s spec.standby changed since the check; not ending the relation"
            ));
        }
        if !locked {
            return refuse(format!("the request does not hold {cluster}'s operation lock"));
        }
        match &status.standby_released {
            Some(r) if r.uid.as_deref() == Some(uid) && &r.standby == standby => {
                return Edit::Keep(Ok(false));
            }
            Some(r) if &r.standby == standby => {
                return refuse(format!("the relation was already ended by {}", r.by));
            }
            _ => {}
        }
        status.standby_released = Some(StandbyRelease {
            by: by.to_owned(),
            uid: Some(uid.to_owned()),
            at: Time(Timestamp::now()),
            standby: standby.clone(),
        });
        Edit::Write(Ok(true))
    })
    .await?;
    Ok(released.unwrap_or_else(|| Err(format!("HaCluster {cluster} was deleted"))))
}

/// Undo [`release_standby`] of `uid` (the record goes, the cluster is a standby again) and
/// clear a target `uid` recorded with [`record_target`] that was not carried out, so that
/// its monitor re-attaches the leader to the upstream once the lock is released. An error if
/// conflicts persist (never reported as undone).
pub async fn restore_standby(clusters: &Api<HaCluster>, cluster: &str, uid: &str) -> Result<(), kube::Error> {
    update_status(clusters, cluster, |c| {
        let Some(status) = c.status.as_mut() else { return Edit::Keep(()) };
        let mut changed = false;
        if status.standby_released.as_ref().is_some_and(|r| r.uid.as_deref() == Some(uid)) {
            status.standby_released = None;
            changed = true;
        }
        for s in &mut status.shards {
            if s.operation.as_ref().is_some_and(|l| l.uid.as_deref() == Some(uid))
                && s.target_primary.is_some()
            {
                s.target_primary = None;
                changed = true;
            }
        }
        if changed { Edit::Write(()) } else { Edit::Keep(()) }
    })
    .await?;
    Ok(())
}

/// Tell `upstream` (the HaCluster a released standby followed) that `made` — `namespace/name`
/// of that standby, whose members are `members` — is production in its place: one
/// resourceVersion-guarded write of `status.supersededBy` (see [`update_status`]). Should
/// one of those members act as a primary when the upstream's members return, its monitor
/// makes them follow it. `Ok(true)` when written now, `Ok(false)` when `uid` had written it
/// already; None when the upstream does not exist.
pub async fn supersede(
    upstreams: &Api<HaCluster>,
    upstream: &str,
    uid: &str,
    by: &str,
    made: &str,
    members: Vec<String>,
) -> Result<Option<bool>, kube::Error> {
    update_status(upstreams, upstream, |c| {
        let status = c.status.get_or_insert_with(Default::default);
        if status.superseded_by.as_ref().is_some_and(|r| r.uid.as_deref() == Some(uid)) {
            return Edit::Keep(false);
        }
        status.superseded_by = Some(Supersession {
            by: by.to_owned(),
            uid: Some(uid.to_owned()),
            at: Time(Timestamp::now()),
            cluster: made.to_owned(),
            members: members.clone(),
        });
        Edit::Write(true)
    })
    .await
}

/// Undo [`supersede`] of `uid` on `upstream` (a rolled-back failover to primary); nothing
/// when another operation wrote the record since, or the cluster is gone.
pub async fn unsupersede(upstreams: &Api<HaCluster>, upstream: &str, uid: &str) -> Result<(), kube::Error> {
    update_status(upstreams, upstream, |c| match c.status.as_mut() {
        Some(s) if s.superseded_by.as_ref().is_some_and(|r| r.uid.as_deref() == Some(uid)) => {
            s.superseded_by = None;
            Edit::Write(())
        }
        _ => Edit::Keep(()),
    })
    .await?;
    Ok(())
}

/// Record a promotion of `to` under a lock `uid` already holds (taken with [`lock_all`]):
/// epoch + 1 and the target, one resourceVersion-guarded write (see [`update_status`]),
/// whoever the current primary is — a standby's leader is its recorded primary before it is
/// made writable. Returns the new epoch; `Ok(Err(why))` if the lock is not ours or another
/// target is recorded.
pub async fn record_target(
    clusters: &Api<HaCluster>,
    cluster: &str,
    uid: &str,
    shard: &str,
    to: &str,
) -> Result<Result<i64, String>, kube::Error> {
    let recorded = update_status(clusters, cluster, |c| {
        let status = c.status.get_or_insert_with(Default::default);
        let Some(s) = status.shards.iter_mut().find(|s| s.name == shard) else {
            return Edit::Keep(Err(format!("{cluster} has no shard {shard} in status")));
        };
        if s.operation.as_ref().is_none_or(|l| l.uid.as_deref() != Some(uid)) {
            return Edit::Keep(Err(format!("the request does not hold the lock of {cluster}/{shard}")));
        }
        if let Some(other) = &s.target_primary {
            return Edit::Keep(Err(format!("a promotion of {other} is recorded already")));
        }
        s.epoch += 1;
        s.target_primary = Some(to.to_owned());
        Edit::Write(Ok(s.epoch))
    })
    .await?;
    Ok(recorded.unwrap_or_else(|| Err(format!("HaCluster {cluster} was deleted"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        core::shard::{Policy, elect_candidate},
        resources::hacluster::{HaClusterStatus, MemberStatus, ShardStatus},
    };

    fn member(name: &str, role: Role, offset: i64, leaving: bool) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            role,
            healthy: true,
            offset: Some(offset),
            leaving,
            ..Default::default()
        }
    }

    /// A cluster of one shard s0 whose recorded primary is a.
    fn primary_a(members: Vec<MemberStatus>) -> HaCluster {
        let mut cluster: HaCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster", "metadata": {"name": "c"},
            "spec": {"engine": "Redis", "selector": {"matchLabels": {"app": "c"}, "port": 6379}}
        }))
        .expect("a valid HaCluster");
        let shard = ShardStatus {
            name: "s0".into(),
            current_primary: Some("a".into()),
            members,
            ..Default::default()
        };
        cluster.status = Some(HaClusterStatus { shards: vec![shard], ..Default::default() });
        cluster
    }

    #[test]
    fn an_operation_never_elects_a_member_whose_pod_is_being_deleted() {
        let cluster = primary_a(vec![
            member("a", Role::Primary, 100, false),
            // Ahead of c and first by name: elected if its leaving were not read.
            member("b", Role::Replica, 100, true),
            member("c", Role::Replica, 90, false),
        ]);
        let facts = facts_from_status(&cluster, "s0", &[]);
        assert!(facts.members.iter().find(|m| m.name == "b").is_some_and(|m| m.leaving));
        let policy = Policy { max_lag: i64::MAX, ..Policy::default() };
        assert_eq!(elect_candidate(&facts, &policy, Some("a")).map(|m| m.name.as_str()), Ok("c"));
    }

    #[test]
    fn a_lost_primarys_offset_is_recovered_from_the_lag_status_recorded() {
        // The primary is down: status keeps no offset for it, only each replica's lag.
        let lost = MemberStatus { healthy: false, offset: None, ..member("a", Role::Primary, 0, false) };
        let behind = MemberStatus { lag: Some(863), ..member("b", Role::Replica, 100, false) };
        let cluster = primary_a(vec![lost, behind]);
        let facts = facts_from_status(&cluster, "s0", &[]);
        assert_eq!(facts.last_primary_offset, Some(963));
        // maxLagOnFailover 0 (the default): not caught up, not elected.
        let refused = elect_candidate(&facts, &Policy { max_lag: 0, ..Policy::default() }, Some("a"));
        assert!(refused.is_err_and(|why| why.contains("lags 863 bytes")));
    }
}
