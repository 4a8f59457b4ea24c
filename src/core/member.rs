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
