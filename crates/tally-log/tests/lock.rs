//! One writer per data directory (docs/spec.md §3.7).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use tally_log::{DirLock, LogError};

const CHILD_DIR_VAR: &str = "TALLY_LOG_TEST_LOCK_DIR";

#[test]
fn a_second_lock_in_the_same_process_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data"); // created by acquire
    let first = DirLock::acquire(&data).unwrap();
    match DirLock::acquire(&data) {
        Err(error @ LogError::Locked { .. }) => {
            assert!(
                error.to_string().contains(data.to_str().unwrap()),
                "{error}"
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    // flock belongs to the open file description: a child forked by the test running
    // beside this one shares it until its exec closes it (close-on-exec). So the lock
    // is free again at the latest a moment later; wait for that, boundedly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let again = loop {
        match DirLock::acquire(&data) {
            Err(LogError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other,
        }
    };
    assert!(again.is_ok(), "the lock was not released: {again:?}");
}

#[test]
fn another_process_is_refused_while_the_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let _held = DirLock::acquire(dir.path()).unwrap();
    // Re-run this test binary as the child: it only runs the ignored helper below.
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_expects_locked", "--ignored"])
        .env(CHILD_DIR_VAR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the child got the lock or failed: {stdout}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test: {stdout}"
    );
}

/// Helper for the test above; does nothing when run on its own.
#[test]
#[ignore = "run by another_process_is_refused_while_the_lock_is_held as a child process"]
fn child_expects_locked() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let result = DirLock::acquire(std::path::Path::new(&dir));
    assert!(matches!(result, Err(LogError::Locked { .. })), "{result:?}");
}
