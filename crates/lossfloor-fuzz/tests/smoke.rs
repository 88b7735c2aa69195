//! CI smoke run of every fuzz target: a few seconds each through the binary (each target in
//! its own worker process, so an abort fails the test with the target's name). Zero findings,
//! and every target must have run enough inputs that a pass means something.

use std::process::Command;

use lossfloor_fuzz::all_targets;
use lossfloor_fuzz::engine::Summary;

/// Seconds per target: 17 targets × 4 s keeps the test near 75 s on a shared 2-core machine.
const SECONDS_PER_TARGET: &str = "4";

/// The fewest inputs a target may run in its seconds; the slowest target manages ~150 per
/// second on a loaded 2-core machine, so this only fails when a target is stuck or broken.
const MIN_EXECS: u64 = 100;

#[test]
fn fuzz_smoke_every_target() {
    let findings = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lossfloor-fuzz"))
        .args(["all", "--seconds", SECONDS_PER_TARGET, "--seed", "1"])
        .arg("--findings")
        .arg(findings.path())
        .output()
        .expect("running lossfloor-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let finding_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("FINDING"))
        .collect();
    assert!(
        finding_lines.is_empty() && out.status.success(),
        "fuzz findings (status {}):\n{}\nstderr:\n{}",
        out.status,
        finding_lines.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let summaries: Vec<Summary> = stdout.lines().filter_map(Summary::from_line).collect();
    for target in all_targets() {
        let s = summaries
            .iter()
            .find(|s| s.target == target.name)
            .unwrap_or_else(|| panic!("no summary for target {}:\n{stdout}", target.name));
        assert_eq!(s.findings, 0, "{}", target.name);
        assert!(
            s.execs >= MIN_EXECS,
            "target {} ran only {} inputs in {SECONDS_PER_TARGET} s",
            target.name,
            s.execs
        );
        assert!(
            s.accepted > 0 && s.refused > 0,
            "target {}: {} accepted, {} refused; expected both (seeds accepted, mutants refused)",
            target.name,
            s.accepted,
            s.refused
        );
    }
}
