//! The HA agent's self-fencing lease: how long a MAIN that hears nothing from the operator
//! keeps its role, and the timing rule that makes it safe.
//!
//! The operator sends the lease with every request; an agent MAIN that receives none for
//! longer than the lease demotes itself. The operator promotes another member only after
//! the main missed `failureThreshold` probes, counted at least [`MISS_SPACING`] ×
//! `heartbeatInterval` apart, plus `failoverDelay`. The first miss may come at once after the
//! last request the main received, so the earliest promotion is
//! `MISS_SPACING × interval × (threshold − 1) + delay` after it. The lease must end before
//! that, with one heartbeat interval of margin for the agent's demotion (its on-demote hook)
//! to take effect:
//!
//! `lease + interval ≤ MISS_SPACING × interval × (threshold − 1) + delay`
//!
//! and it must outlast two heartbeats, or one late heartbeat would demote a healthy main:
//!
//! `lease ≥ 2 × interval`

use std::time::Duration;

/// The shortest time between two counted misses of a member, as a fraction of the
/// heartbeat interval (heartbeats run a little early or late; the monitor counts a miss
/// only this long after the previous one).
pub const MISS_SPACING: f64 = 0.9;

/// Why `lease` breaks the timing rule for these failover settings; Ok when it keeps it.
pub fn check(lease: Duration, interval: Duration, threshold: u32, delay: Duration) -> Result<(), String> {
    let window = interval.mul_f64(MISS_SPACING) * threshold.max(1).saturating_sub(1) + delay;
    if lease + interval > window {
        return Err(format!(
            "failover.agentLease {lease:?} is too long: an unreachable main may be promoted past {window:?} (0.9 × heartbeatInterval × (failureThreshold − 1) + failoverDelay) after its last heartbeat, and its lease must end a heartbeatInterval before that, so at most {:?}",
            window.saturating_sub(interval)
        ));
    }
    if lease < interval * 2 {
        return Err(format!(
            "failover.agentLease {lease:?} is too short: it must outlast two heartbeats ({:?}), or one late heartbeat demotes a healthy main",
            interval * 2
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_lease_ends_a_heartbeat_before_another_member_may_be_promoted() {
        // 0.9 × 500 ms × (6 − 1) = 2.25 s window: at most 1.75 s.
        assert!(check(MS(1750), MS(500), 6, Duration::ZERO).is_ok());
        let err = check(MS(1751), MS(500), 6, Duration::ZERO).unwrap_err();
        assert!(err.contains("too long") && err.contains("1.75s"), "{err}");
        // failoverDelay widens the window.
        assert!(check(MS(2750), MS(500), 6, MS(1000)).is_ok());
    }

    #[test]
    fn the_lease_outlasts_two_heartbeats() {
        assert!(check(MS(1000), MS(500), 6, Duration::ZERO).is_ok());
        let err = check(MS(999), MS(500), 6, Duration::ZERO).unwrap_err();
        assert!(err.contains("too short"), "{err}");
        // threshold 3 leaves no lease that keeps both rules (window 0.9 s).
        for lease in [400, 500, 1000] {
            assert!(check(MS(lease), MS(500), 3, Duration::ZERO).is_err(), "{lease}");
        }
    }
}
