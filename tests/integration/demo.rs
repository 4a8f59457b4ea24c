//! The README's first command, run non-interactively: `understudy demo` must finish and its
//! summary must report a failover and a lossless switchover.

#[test]
fn the_demo_runs_to_its_summary() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["demo", "--heartbeat", "300ms"])
        .output()
        .expect("run understudy demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary = stdout.split("=== SUMMARY ===").nth(1).unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    for want in
        ["bootstrap", "automatic failover", "1000/1000 keys", "returned as a replica", "Succeeded", "0 lost"]
    {
        assert!(summary.contains(want), "summary lacks {want:?}:\n{summary}");
    }
    eprintln!("{summary}");
}
