//! The write-ahead log on a real file system, with `fdatasync`:
//!
//! * `append/N`: one `Wal::append` of one batch of N transfers, i.e. one write and one
//!   `fdatasync`, for N = 1, 100, 1,000 and 8,190. Small N measures the sync; large N
//!   the bytes (128 per transfer plus the frame).
//! * `group_commit/100x1`: one append of 100 one-transfer batches (what the commit thread
//!   does when 100 submitters wait): still one write and one `fdatasync`.
//! * `recovery_replay`: `Wal::open` of a log of 17 batches (8,190 accounts, then
//!   16 × 8,190 transfers), and the replay of every record into a fresh `StateMachine`.
//!   The segment is in the page cache after the first run: this measures decoding,
//!   checksums and execution, not the disk.
//!
//! Throughput is events per second. The directories live under Cargo's
//! `CARGO_TARGET_TMPDIR` (`target/tmp`), on the disk: `/tmp` may be a tmpfs where
//! `fdatasync` costs nothing. Appended segments are deleted (outside the clock) once
//! they pass [`LOG_BYTES_RESET`].
//!
//! Full run: `cargo bench --bench log`.

mod common;

use common::{ACCOUNTS, accounts, remove_dir, transfers};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tally::log::{LogOptions, LogRecord, SyncMode, Wal};
use tally::state::StateMachine;
use tally::types::{BATCH_EVENTS_MAX, Batch, ResultCode};

const RECOVERY_TRANSFER_BATCHES: u64 = 16;
/// Bounds the disk used by the append benches.
const LOG_BYTES_RESET: u64 = 256 * 1024 * 1024;
/// Bytes of one encoded transfer, ignoring the frame header.
const TRANSFER_BYTES: u64 = 128;

fn bench_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-log-{}", name.replace('/', "-")));
    remove_dir(&dir);
    dir
}

fn open_empty(dir: &Path) -> Wal {
    let (wal, recovered) = Wal::open(dir, LogOptions::default()).expect("open the bench log");
    assert!(recovered.records.is_empty() && recovered.snapshot.is_none());
    assert_eq!(LogOptions::default().sync, SyncMode::Fdatasync);
    wal
}

/// Times `append` of `batches` batches of `events` transfers each, one call per iteration.
fn bench_append(c: &mut Criterion, name: &str, batches: usize, events: usize) {
    let dir = bench_dir(name);
    let mut wal = open_empty(&dir);
    let mut bytes_appended: u64 = 0;
    let group_batches: Vec<Batch> = (0..batches)
        .map(|b| transfers(1 + (b * events) as u128, events))
        .collect();
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements((batches * events) as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                if bytes_appended >= LOG_BYTES_RESET {
                    remove_dir(&dir);
                    wal = open_empty(&dir);
                    bytes_appended = 0;
                }
                // The log does not check content, so the same batches are reused;
                // only the sequences must run on.
                let sequence = wal.next_sequence();
                let records: Vec<LogRecord> = group_batches
                    .iter()
                    .enumerate()
                    .map(|(i, batch)| LogRecord {
                        sequence: sequence + i as u64,
                        timestamp: 1 + (sequence + i as u64) * BATCH_EVENTS_MAX as u64,
                        batch: batch.clone(),
                    })
                    .collect();
                let start = Instant::now();
                wal.append(black_box(&records)).expect("durable append");
                elapsed += start.elapsed();
                assert_eq!(wal.next_sequence(), sequence + records.len() as u64);
                bytes_appended += (batches * events) as u64 * TRANSFER_BYTES;
            }
            elapsed
        });
    });
    group.finish();
    drop(wal);
    remove_dir(&dir);
}

/// Writes the recovery log: 8,190 accounts, then 16 full batches of transfers.
fn write_recovery_log(dir: &Path) -> u64 {
    let mut wal = open_empty(dir);
    let mut events = 0;
    let mut timestamp = 1;
    let mut batches = vec![accounts()];
    for b in 0..RECOVERY_TRANSFER_BATCHES {
        let first_id = 1 + u128::from(b) * BATCH_EVENTS_MAX as u128;
        batches.push(transfers(first_id, BATCH_EVENTS_MAX));
    }
    for batch in batches {
        events += batch.len() as u64;
        let record = LogRecord {
            sequence: wal.next_sequence(),
            timestamp,
            batch,
        };
        timestamp += record.batch.len() as u64;
        wal.append(&[record]).expect("write the recovery log");
    }
    events
}

/// Opens the log and replays it into an empty state machine, as the engine does at start.
fn recover(dir: &Path) -> StateMachine {
    let (wal, recovered) = Wal::open(dir, LogOptions::default()).expect("reopen the log");
    let mut state = StateMachine::new();
    for record in &recovered.records {
        let results = state.apply(record.timestamp, &record.batch);
        assert!(results.iter().all(|r| *r == ResultCode::Ok));
    }
    drop(wal);
    state
}

fn bench_recovery(c: &mut Criterion) {
    let dir = bench_dir("recovery");
    let events = write_recovery_log(&dir);
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("recovery_replay", |b| {
        b.iter(|| black_box(recover(&dir)));
    });
    group.finish();
    let state = recover(&dir);
    assert_eq!(state.account_count(), ACCOUNTS as usize);
    assert_eq!(
        state.transfer_count() as u64,
        RECOVERY_TRANSFER_BATCHES * BATCH_EVENTS_MAX as u64
    );
    remove_dir(&dir);
}

fn log(c: &mut Criterion) {
    for events in [1, 100, 1_000, BATCH_EVENTS_MAX] {
        bench_append(c, &format!("append/{events}"), 1, events);
    }
    bench_append(c, "group_commit/100x1", 100, 1);
    bench_recovery(c);
}

criterion_group!(benches, log);
criterion_main!(benches);
