//! The per-shard operation lock: at most one role-changing operation per shard. Taking it is
//! a resourceVersion-guarded status write on the HaCluster (done by the controllers); these
//! functions only decide.

use std::time::SystemTime;

/// A lock as recorded, in plain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// `Kind name` of the holder.
    pub holder: String,
    /// UID of the holder object.
    pub uid: Option<String>,
    pub expires_at: SystemTime,
}

/// Who may act on a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds it (or the holder's lease expired, or the holder object is gone).
    Free,
    /// The caller holds it.
    Mine,
    /// Someone else holds it until `until`.
    Held { holder: String, until: SystemTime },
}

/// Judge `lock` for the operation whose object uid is `me`. `holder_exists` says whether the
/// holding object still exists (a lock whose holder is gone is released).
pub fn lock_state(lock: Option<&Lock>, me: &str, now: SystemTime, holder_exists: bool) -> LockState {
    match lock {
        None => LockState::Free,
        Some(l) if l.uid.as_deref() == Some(me) => LockState::Mine,
        Some(l) if l.expires_at <= now || !holder_exists => LockState::Free,
        Some(l) => LockState::Held { holder: l.holder.clone(), until: l.expires_at },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lock(uid: &str, expires_in: Duration) -> Lock {
        Lock {
            holder: "ShardFailover sfo".into(),
            uid: Some(uid.into()),
            expires_at: SystemTime::now() + expires_in,
        }
    }

    #[test]
    fn free_mine_held_expired_and_orphaned() {
        let now = SystemTime::now();
        let minute = Duration::from_secs(60);
        assert_eq!(lock_state(None, "me", now, true), LockState::Free);
        assert_eq!(lock_state(Some(&lock("me", minute)), "me", now, true), LockState::Mine);
        assert!(matches!(lock_state(Some(&lock("other", minute)), "me", now, true), LockState::Held { .. }));
        let later = now + 2 * minute;
        assert_eq!(lock_state(Some(&lock("other", minute)), "me", later, true), LockState::Free, "expired");
        assert_eq!(
            lock_state(Some(&lock("other", minute)), "me", now, false),
            LockState::Free,
            "holder gone"
        );
    }
}
