//! `loadgen --target cluster` against a real three-replica cluster of `tally serve`
//! processes on loopback, with the leader killed (SIGKILL) mid-run and restarted.
//!
//! The replicas run the `tally` binary of the same target directory. `cargo test
//! --workspace` builds it (the tally-cli package's tests need it); when it is missing
//! (`cargo test -p tally-loadgen` alone on a fresh checkout) the test says so and
//! passes without running: build it first with `cargo build -p tally-cli`.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/tally`, next to the load generator.
fn tally_binary() -> Option<PathBuf> {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let tally = loadgen.with_file_name(format!("tally{}", std::env::consts::EXE_SUFFIX));
    tally.is_file().then_some(tally)
}

#[test]
fn a_killed_leader_fails_over_and_loses_no_acknowledged_transfer() {
    let Some(tally) = tally_binary() else {
        eprintln!(
            "SKIPPED: no tally binary next to {}; build it with `cargo build -p tally-cli`",
            env!("CARGO_BIN_EXE_loadgen")
        );
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", "cluster", "--replicas", "3"])
        .args(["--chaos", "kill-leader", "--chaos-down-s", "0.5"])
        .args(["--workload", "transfers", "--accounts", "200"])
        .args(["--duration", "6", "--peak", "200", "--workers", "2"])
        .arg("--tally-bin")
        .arg(&tally)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--report")
        .arg(&report)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let json = std::fs::read_to_string(&report).expect("the report");
    let report: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
    assert_eq!(report["verified_ok"], true, "{stdout}");
    assert_eq!(report["verification"]["transfers_missing"], 0, "{stdout}");
    assert!(report["transfers_ok"].as_u64() > Some(100), "{stdout}");
    let cluster = &report["cluster"];
    assert_eq!(cluster["leader_kills"], 1, "{stdout}\n{stderr}");
    assert!(
        cluster["failovers"].as_u64() >= Some(1),
        "{stdout}\n{stderr}"
    );
    assert_eq!(cluster["converged"], true, "{stdout}");
    assert!(cluster["ack_gap_us_max"].as_u64() > Some(0), "{stdout}");
}
