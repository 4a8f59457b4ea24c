//! What `/readyz` answers: ready only once this replica knows its role (leader or standby,
//! from the Lease) and, when it leads, every controller's cache has its initial list. A pod
//! that merely started is not ready: a rollout must not count it before it could act.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
};

use kube::runtime::reflector::Store;

/// This replica's role as far as readiness is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The Lease has not been read yet.
    Undecided = 0,
    /// Holding the Lease (or running without leader election).
    Leader = 1,
    /// Another replica holds a valid Lease; this one waits to take over.
    Standby = 2,
}

#[derive(Default)]
struct Inner {
    role: AtomicU8,
    /// Caches that must sync before a leader is ready; set when the controllers start.
    expected: AtomicUsize,
    synced: AtomicUsize,
    started: AtomicBool,
    /// The discovery endpoint is configured and has not listed its clusters yet.
    discovery_pending: AtomicBool,
}

/// Shared readiness state (cheap to clone).
#[derive(Clone, Default)]
pub struct Readiness(Arc<Inner>);

impl Readiness {
    pub fn set_role(&self, role: Role) {
        self.0.role.store(role as u8, Ordering::SeqCst);
        if role != Role::Leader {
            // A new term starts from empty caches.
            self.0.started.store(false, Ordering::SeqCst);
        }
    }

    pub fn role(&self) -> Role {
        match self.0.role.load(Ordering::SeqCst) {
            1 => Role::Leader,
            2 => Role::Standby,
            _ => Role::Undecided,
        }
    }

    /// The controllers are starting with `n` caches to fill.
    pub fn expect_caches(&self, n: usize) {
        self.0.synced.store(0, Ordering::SeqCst);
        self.0.expected.store(n, Ordering::SeqCst);
        self.0.started.store(true, Ordering::SeqCst);
    }

    /// Count `store` as synced once its first full list has arrived.
    pub fn track<K>(&self, store: Store<K>)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let inner = self.0.clone();
        tokio::spawn(async move {
            // Polled again every 200 ms: kube-runtime's `DelayedInit` keeps the waker of only
            // one waiter, and the controller waits on the same store, so a single
            // `wait_until_ready` here may never be woken (observed: "caches not synced" for ever).
            loop {
                match tokio::time::timeout(std::time::Duration::from_millis(200), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        inner.synced.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(Err(_)) => return, // the writer is gone: the controller stopped
                    Err(_) => continue,
                }
            }
        });
    }

    /// This replica serves the discovery endpoint: not ready until it does (every replica
    /// serves it, leader or standby).
    pub fn require_discovery(&self) {
        self.0.discovery_pending.store(true, Ordering::SeqCst);
    }

    /// The discovery endpoint listed its clusters and listens.
    pub fn set_discovery_synced(&self) {
        self.0.discovery_pending.store(false, Ordering::SeqCst);
    }

    /// Why this replica is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.role() != Role::Undecided && self.0.discovery_pending.load(Ordering::SeqCst) {
            return Some("discovery endpoint not serving yet");
        }
        match self.role() {
            Role::Undecided => Some("leadership not decided yet"),
            Role::Standby => None,
            Role::Leader => {
                let i = &self.0;
                if !i.started.load(Ordering::SeqCst) {
                    Some("controllers not started")
                } else if i.synced.load(Ordering::SeqCst) < i.expected.load(Ordering::SeqCst) {
                    Some("caches not synced")
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_role_decided_and_caches_synced() {
        let r = Readiness::default();
        assert_eq!(r.not_ready_reason(), Some("leadership not decided yet"));
        r.set_role(Role::Standby);
        assert_eq!(r.not_ready_reason(), None);
        r.set_role(Role::Leader);
        assert_eq!(r.not_ready_reason(), Some("controllers not started"));
        r.expect_caches(2);
        assert_eq!(r.not_ready_reason(), Some("caches not synced"));
        r.0.synced.fetch_add(2, Ordering::SeqCst);
        assert_eq!(r.not_ready_reason(), None);
        r.require_discovery();
        assert_eq!(r.not_ready_reason(), Some("discovery endpoint not serving yet"));
        r.set_role(Role::Standby);
        assert_eq!(r.not_ready_reason(), Some("discovery endpoint not serving yet"));
        r.set_discovery_synced();
        assert_eq!(r.not_ready_reason(), None);
        r.set_role(Role::Standby);
        r.set_role(Role::Leader);
        assert_eq!(r.not_ready_reason(), Some("controllers not started"));
    }
}
