//! Preallocated log segments through the whole engine: a busy ledger moves onto
//! zero-filled spares written by its own thread, and a process killed with SIGKILL while
//! doing so loses no acknowledged transfer.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tally_engine::{Config, Ledger};
use tally_testkit::SeededRng as Rng;
use tally_types::{Account, Batch, ResultCode, Transfer};

/// Small segments, so that spares (an eighth of a segment logged, then one segment of
/// zeros) and rotations come every few hundred transfers.
const SEGMENT_BYTES: u64 = 64 * 1024;
const CHILD_DIR_VAR: &str = "TALLY_PREALLOCATION_CHILD_DIR";
const CHILD_FIRST_ID_VAR: &str = "TALLY_PREALLOCATION_CHILD_FIRST_ID";
const BATCH: u64 = 10;

fn config(dir: &Path, preallocate: bool) -> Config {
    let mut config = Config::new(dir);
    config.segment_bytes_max = SEGMENT_BYTES;
    config.preallocate_segments = preallocate;
    config.snapshot_events_interval = 0;
    config
}

fn accounts() -> Batch {
    Batch::CreateAccounts(
        (1..=4)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Account::default()
            })
            .collect(),
    )
}

/// `BATCH` transfers with ids `first..first + BATCH`, all of which succeed.
fn payments(first: u64) -> Batch {
    Batch::CreateTransfers(
        (first..first + BATCH)
            .map(|id| Transfer {
                id: u128::from(id),
                debit_account_id: 1 + u128::from(id % 4),
                credit_account_id: 1 + u128::from((id + 1) % 4),
                amount: 1 + u128::from(id % 97),
                ledger: 1,
                code: 1,
                ..Transfer::default()
            })
            .collect(),
    )
}

/// Lengths of the segment files, in sequence order.
fn segment_lengths(dir: &Path) -> Vec<u64> {
    let mut segments: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().unwrap();
            let first = tally_log::layout::parse_segment_name(&name)?;
            Some((first, entry.metadata().unwrap().len()))
        })
        .collect();
    segments.sort_unstable();
    segments.into_iter().map(|(_, len)| len).collect()
}

fn spare_exists(dir: &Path) -> bool {
    dir.join(tally_log::layout::SPARE_SEGMENT_NAME).exists()
}

/// Submits `batches` batches from 4 threads at once (so groups are shared).
fn submit_concurrently(ledger: &Ledger, first: u64, batches: u64) {
    std::thread::scope(|scope| {
        for thread in 0..4 {
            scope.spawn(move || {
                for batch in (thread..batches).step_by(4) {
                    let answer = ledger.submit(payments(first + batch * BATCH)).unwrap();
                    assert!(answer.iter().all(|r| r.code == ResultCode::Ok));
                }
            });
        }
    });
}

/// Opens a ledger on `dir`, submits 6,000 transfers (about 770 KB of frames, a dozen
/// 64 KiB segments) from 4 threads, closes it, and returns its metrics.
fn run_busy_ledger(dir: &Path, preallocate: bool) -> tally_engine::MetricsSnapshot {
    let ledger = Ledger::open(config(dir, preallocate)).unwrap();
    ledger.submit(accounts()).unwrap();
    submit_concurrently(&ledger, 1_000, 600);
    let metrics = ledger.metrics();
    ledger.shutdown().unwrap();
    metrics
}

#[test]
fn a_busy_ledger_writes_its_frames_into_preallocated_segments() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = run_busy_ledger(dir.path(), true);
    // Each spare is 64 KiB, in steps of at most 256 KiB: at least one step per spare.
    assert!(metrics.spare_steps >= 9, "{metrics:?}");
    assert!(metrics.spare_step_bytes >= 9 * SEGMENT_BYTES, "{metrics:?}");

    let lengths = segment_lengths(dir.path());
    assert!(lengths.len() >= 10, "{lengths:?}");
    // The log thread writes spares in its pauses, so a segment or two may start as a
    // plain file; most must have been spares, whole from the start and never extended.
    let preallocated = lengths.iter().filter(|&&len| len == SEGMENT_BYTES).count();
    assert!(preallocated * 2 > lengths.len(), "{lengths:?}");
    let report = tally_log::verify(dir.path()).unwrap();
    assert!(report.is_clean());
    assert!(report.preallocated_bytes > 0);

    let ledger = Ledger::open(config(dir.path(), true)).unwrap();
    let ids: Vec<u128> = (1_000..1_000 + 600 * BATCH).map(u128::from).collect();
    assert_eq!(ledger.lookup_transfers(&ids).len(), ids.len());
    ledger.shutdown().unwrap();
}

#[test]
fn with_preallocation_off_no_spare_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = run_busy_ledger(dir.path(), false);
    assert_eq!(metrics.spare_steps, 0);
    assert!(!spare_exists(dir.path()));
    let lengths = segment_lengths(dir.path());
    assert!(lengths.len() >= 10, "{lengths:?}");
    assert!(
        lengths.iter().all(|&len| len < SEGMENT_BYTES),
        "{lengths:?}"
    );
    assert_eq!(tally_log::verify(dir.path()).unwrap().preallocated_bytes, 0);
}

/// Real crashes: a child process submits batches from 3 threads into 64 KiB segments
/// and prints each batch's first id once it is acknowledged; the parent SIGKILLs it at a
/// random moment (while it writes in place, writes a spare, or rotates onto one), then
/// reopens the directory and checks every acknowledged transfer is there.
#[test]
fn sigkill_while_preallocating_never_loses_an_acknowledged_transfer() {
    const KILLS: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0x5ba3e);
    let mut first_id = 1_000u64;
    let mut acknowledged = 0usize;
    for kill in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_submits_until_killed", "--ignored"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD_DIR_VAR, dir.path())
            .env(CHILD_FIRST_ID_VAR, first_id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("acked ") {
                    acked.push(id.parse::<u64>().unwrap());
                }
            }
            acked
        });
        let delay = Duration::from_millis(150 + rng.below(400));
        let started = Instant::now();
        while started.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        acknowledged += acked.len();

        let ledger = Ledger::open(config(dir.path(), true)).unwrap();
        let ids: Vec<u128> = acked
            .iter()
            .flat_map(|&first| (first..first + BATCH).map(u128::from))
            .collect();
        let found = ledger.lookup_transfers(&ids);
        assert_eq!(
            found.len(),
            ids.len(),
            "kill {kill}: acknowledged transfers lost"
        );
        ledger.shutdown().unwrap();
        drop(ledger);
        first_id += 1_000_000;
    }
    let report = tally_log::verify(dir.path()).unwrap();
    assert!(report.segments > 5, "{report:?}");
    assert!(
        acknowledged as u64 > KILLS * 50,
        "the kills came too early to test anything: {acknowledged}"
    );
}

/// Helper for the test above; does nothing when run on its own.
#[test]
#[ignore = "run by sigkill_while_preallocating_never_loses_an_acknowledged_transfer"]
fn child_submits_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let first: u64 = std::env::var(CHILD_FIRST_ID_VAR).unwrap().parse().unwrap();
    let ledger = Ledger::open(config(Path::new(&dir), true)).unwrap();
    ledger.submit(accounts()).unwrap();
    let stdout = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|scope| {
        for thread in 0..3 {
            let (ledger, stdout) = (&ledger, &stdout);
            scope.spawn(move || {
                // Each thread takes every third batch, until the parent kills the process.
                for batch in (thread..100_000u64).step_by(3) {
                    let id = first + batch * BATCH;
                    let answer = ledger.submit(payments(id)).unwrap();
                    assert!(answer.iter().all(|r| r.code == ResultCode::Ok));
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "acked {id}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}
