//! Repeated Warnings are aggregated, not published once per attempt: the same warning about
//! the same object (same reason, same note) within [`Series::WINDOW`] updates the first
//! Event's `series` (count, last observed time), as `events.k8s.io/v1` intends, and at most
//! once per [`Series::PATCH_EVERY`]. A different note, or the same one after the window, is a
//! new Event. Normal events (role changes) are never folded.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// What to do with one warning.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// A new Event.
    Create,
    /// Update the Event `name` (in the object's namespace): seen `count` times so far.
    Patch { name: String, count: i32 },
    /// Counted; the Event is brought up to date later.
    Skip,
}

struct Entry {
    name: Option<String>,
    count: i32,
    first: Instant,
    written: Instant,
}

/// Warnings seen, by (object uid, reason, note).
#[derive(Default)]
pub struct Series {
    seen: HashMap<(String, String, String), Entry>,
}

impl Series {
    /// A repeat later than this starts a new Event.
    pub const WINDOW: Duration = Duration::from_secs(3600);
    /// The series of an Event is written at most this often.
    pub const PATCH_EVERY: Duration = Duration::from_secs(30);

    pub fn observe(&mut self, uid: &str, reason: &str, note: &str, now: Instant) -> Publish {
        self.seen.retain(|_, e| now.duration_since(e.first) < Self::WINDOW);
        let key = (uid.to_owned(), reason.to_owned(), note.to_owned());
        match self.seen.get_mut(&key) {
            Some(e) => {
                e.count += 1;
                match &e.name {
                    Some(name) if now.duration_since(e.written) >= Self::PATCH_EVERY => {
                        e.written = now;
                        Publish::Patch { name: name.clone(), count: e.count }
                    }
                    // Not created yet (the first create failed or is in flight): counted only.
                    _ => Publish::Skip,
                }
            }
            None => {
                self.seen.insert(key, Entry { name: None, count: 1, first: now, written: now });
                Publish::Create
            }
        }
    }

    /// The Event created for (uid, reason, note); a failed create forgets the warning so
    /// that the next one tries again.
    pub fn created(&mut self, uid: &str, reason: &str, note: &str, name: Option<String>) {
        let key = (uid.to_owned(), reason.to_owned(), note.to_owned());
        match name {
            Some(n) => {
                if let Some(e) = self.seen.get_mut(&key) {
                    e.name = Some(n);
                }
            }
            None => {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::vocabulary::Reason;

    #[test]
    fn the_same_warning_is_one_event_with_a_count() {
        let mut s = Series::default();
        let t0 = Instant::now();
        let (failed, other) = (Reason::PromotionFailed.as_str(), Reason::PromotionAbandoned.as_str());
        assert_eq!(s.observe("u", failed, "x", t0), Publish::Create);
        s.created("u", failed, "x", Some("ev-1".into()));
        // Every 500 ms for 29 s: counted, not published.
        for i in 1..59 {
            assert_eq!(s.observe("u", failed, "x", t0 + Duration::from_millis(500 * i)), Publish::Skip);
        }
        assert_eq!(
            s.observe("u", failed, "x", t0 + Duration::from_secs(30)),
            Publish::Patch { name: "ev-1".into(), count: 60 }
        );
        // Another note, reason or object is its own Event.
        assert_eq!(s.observe("u", failed, "y", t0 + Duration::from_secs(31)), Publish::Create);
        assert_eq!(s.observe("u", other, "x", t0 + Duration::from_secs(31)), Publish::Create);
        assert_eq!(s.observe("v", failed, "x", t0 + Duration::from_secs(31)), Publish::Create);
        // After the window, a new Event.
        assert_eq!(s.observe("u", failed, "x", t0 + Series::WINDOW), Publish::Create);
    }

    #[test]
    fn a_failed_create_is_tried_again() {
        let mut s = Series::default();
        let t0 = Instant::now();
        assert_eq!(s.observe("u", "r", "n", t0), Publish::Create);
        s.created("u", "r", "n", None);
        assert_eq!(s.observe("u", "r", "n", t0 + Duration::from_secs(1)), Publish::Create);
        // While the create is in flight, repeats are only counted.
        assert_eq!(s.observe("u", "r", "n", t0 + Duration::from_secs(40)), Publish::Skip);
    }
}
