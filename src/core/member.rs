//! What a member says about itself, as plain data. Engines produce it; the core decides on it.

/// The role a member reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ObservedRole {
    Primary,
    /// Also what a member is taken to be until it says otherwise: never assumed writable.
    #[default]
    Replica,
}

/// One successful probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    pub role: ObservedRole,
    /// Replication offset: for a primary how much it has written, for a replica how much it
    /// has applied. `None` when the engine has no offsets (agent).
    pub offset: Option<i64>,
    /// For a replica: the `host:port` it follows, if any.
    pub following: Option<String>,
    /// For a replica: whether its link to the upstream is up.
    pub link_up: bool,
    /// The member refuses writes by itself when too few replicas acknowledge it (redis
    /// `min-replicas-to-write`): as a primary cut off from its replicas it stops taking
    /// writes without being told.
    pub self_fencing: bool,
    /// For a self-fencing primary: how many replicas acknowledged it recently enough to count
    /// (redis `min_slaves_good_slaves`).
    pub good_replicas: Option<i64>,
    /// For a replica: why its replication stopped, in the member's words (MySQL: the I/O or
    /// SQL thread's last error), when it did.
    pub link_error: Option<String>,
    /// Transactions the member has that its source never had (MySQL family: errant GTIDs),
    /// when its replication stopped on them.
    pub errant: Vec<String>,
    /// The member can be drained for a switchover through its engine's optional step (an HA
    /// agent advertising `drain`); engines whose pause is built in (redis) say false here
    /// and [`Engine::follows_directly`](crate::engines::Engine::follows_directly) instead.
    pub drains: bool,
}

/// Why an action on a member did not happen, as far as decisions care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing listens at the member's address (connection refused): it is not running, so
    /// it takes no writes.
    Refused,
    /// No answer in time, or the connection broke (frozen, partitioned, node gone): it may
    /// still be taking writes from clients that can reach it.
    Silent,
    /// The member answered and refused or failed the action: it is alive.
    Answered,
}

/// Whether a replica's command stream is held back: its link is up and it follows the
/// primary, yet between two probes it received nothing although the primary already had more
/// at the first of them. Redis does this after a diskless full sync until the replica's first
/// acknowledgement gets through (up to a second, while the primary counts the replica as good);
/// asking the replica to acknowledge starts the stream.
pub fn stream_stalled(
    replica: &Probe,
    replica_offset_before: Option<i64>,
    primary_endpoint: &str,
    primary_offset_before: Option<i64>,
) -> bool {
    replica.role == ObservedRole::Replica
        && replica.link_up
        && replica.following.as_deref() == Some(primary_endpoint)
        && match (replica_offset_before, replica.offset, primary_offset_before) {
            (Some(before), Some(now), Some(primary)) => before == now && primary > now,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(offset: i64) -> Probe {
        Probe {
            role: ObservedRole::Replica,
            offset: Some(offset),
            following: Some("p:6379".into()),
            link_up: true,
            ..Probe::default()
        }
    }

    #[test]
    fn a_replica_that_received_nothing_while_behind_is_stalled() {
        assert!(stream_stalled(&replica(100), Some(100), "p:6379", Some(250)));
    }

    #[test]
    fn a_replica_that_moved_caught_up_or_had_nothing_to_get_is_not() {
        // It received something since the last probe.
        assert!(!stream_stalled(&replica(180), Some(100), "p:6379", Some(250)));
        // Nothing was written: nothing to receive.
        assert!(!stream_stalled(&replica(100), Some(100), "p:6379", Some(100)));
        // First probe: nothing to compare with.
        assert!(!stream_stalled(&replica(100), None, "p:6379", Some(250)));
        assert!(!stream_stalled(&replica(100), Some(100), "p:6379", None));
    }

    #[test]
    fn only_linked_replicas_of_this_primary_count() {
        let down = Probe { link_up: false, ..replica(100) };
        assert!(!stream_stalled(&down, Some(100), "p:6379", Some(250)));
        assert!(!stream_stalled(&replica(100), Some(100), "other:6379", Some(250)));
        let primary = Probe { role: ObservedRole::Primary, ..replica(100) };
        assert!(!stream_stalled(&primary, Some(100), "p:6379", Some(250)));
    }
}
