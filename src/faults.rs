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

/// Wait here if `UNDERSTUDY_DELAY_AT=<name>:<milliseconds>` names this point: widens a race
/// window (a slow API server, a descheduled task) so a test can land in it every time.
#[cfg(feature = "testbed")]
pub async fn delay_point(name: &str) {
    let Ok(v) = std::env::var("UNDERSTUDY_DELAY_AT") else { return };
    if let Some((point, ms)) = v.split_once(':')
        && point == name
        && let Ok(ms) = ms.parse::<u64>()
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// Without the `testbed` feature a delay point is nothing at all.
#[cfg(not(feature = "testbed"))]
#[inline(always)]
pub async fn delay_point(_name: &str) {}

/// Panic, once per process, if `UNDERSTUDY_PANIC_AT` names this point: a stand-in for a bug,
/// to test that one panicking task neither stops the operator nor leaves its work undone.
#[cfg(feature = "testbed")]
pub fn panic_point(name: &str) {
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("UNDERSTUDY_PANIC_AT").is_ok_and(|v| v == name)
        && !FIRED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        panic!("UNDERSTUDY_PANIC_AT={name}");
    }
}

/// Without the `testbed` feature a panic point is nothing at all.
#[cfg(not(feature = "testbed"))]
#[inline(always)]
pub fn panic_point(_name: &str) {}
