//! Crash points for tests: with `UNDERSTUDY_CRASH_AT=<name>` in the environment the process
//! exits abruptly (as if SIGKILLed: no cleanup, no status writes) when it reaches that point.
//! Lets the integration tests kill a real `understudy run` at a precise instant and check that
//! a fresh process resumes from what was written to status.

/// Exit at once if `UNDERSTUDY_CRASH_AT` names this point. Compiled only with the `testbed`
/// feature: the operator image's binary has no crash points.
#[cfg(feature = "testbed")]
pub fn crash_point(name: &str) {
    if std::env::var("UNDERSTUDY_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("UNDERSTUDY_CRASH_AT={name}: exiting abruptly");
        // SAFETY: _exit(2) ends the process without running destructors, like a kill.
        unsafe { libc::_exit(137) };
    }
}

/// Without the `testbed` feature a crash point is nothing at all.
#[cfg(not(feature = "testbed"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}
