//! The per-shard operation lock: at most one role-changing operation per shard. Taking it is
//! a resourceVersion-guarded status write on the HaCluster (done by the controllers); these
//! functions only decide.

use k8s_openapi::jiff::Timestamp;

use crate::resources::hacluster::OperationLock;

/// Who may act on a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds it (or the holder's lease expired, or the holder object is gone).
    Free,
    /// The caller holds it.
    Mine,
    /// Someone else holds it until `until`.
    Held { holder: String, until: Timestamp },
}

/// Judge `lock` for the operation whose object uid is `me`. `holder_exists` says whether the
/// holding object still exists (a lock whose holder is gone is released).
pub fn lock_state(lock: Option<&OperationLock>, me: &str, now: Timestamp, holder_exists: bool) -> LockState {
    match lock {
        None => LockState::Free,
        Some(l) if l.uid.as_deref() == Some(me) => LockState::Mine,
        Some(l) if l.expires_at.0 <= now || !holder_exists => LockState::Free,
        Some(l) => LockState::Held { holder: format!("{} {}", l.kind, l.name), until: l.expires_at.0 },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn lock(uid: &str, expires_in_s: i64) -> OperationLock {
        let now = Timestamp::now();
        OperationLock {
            kind: "ShardFailover".into(),
            name: "sfo".into(),
            namespace: None,
            uid: Some(uid.into()),
            acquired_at: Time(now),
            expires_at: Time(
                now + std::time::Duration::from_secs(expires_in_s.unsigned_abs())
                    * if expires_in_s < 0 { 0 } else { 1 },
            ),
            force: false,
        }
    }

    #[test]
    fn free_mine_held_expired_and_orphaned() {
        let now = Timestamp::now();
        assert_eq!(lock_state(None, "me", now, true), LockState::Free);
        assert_eq!(lock_state(Some(&lock("me", 60)), "me", now, true), LockState::Mine);
        assert!(matches!(lock_state(Some(&lock("other", 60)), "me", now, true), LockState::Held { .. }));
        let later = now + std::time::Duration::from_secs(120);
        assert_eq!(lock_state(Some(&lock("other", 60)), "me", later, true), LockState::Free, "expired");
        assert_eq!(lock_state(Some(&lock("other", 60)), "me", now, false), LockState::Free, "holder gone");
    }
}
