//! The write-ahead log on a real file system, with `fdatasync`:
//!
//! * `append/N`: one `Wal::append` of one batch of N transfers, i.e. one write and one
//!   `fdatasync`, for N = 1, 100, 1,000 and 8,190. Small N measures the sync; large N
//!   the bytes (128 per transfer plus the frame).
//! * `group_commit/100x1`: one append of 100 one-transfer batches (what the commit thread
//!   does when 100 submitters wait): still one write and one `fdatasync`.
//! * `append_in_place/N`, `group_commit_in_place/100x1`: the same into a preallocated
//!   segment (frames written over zeros already on disk, as the engine does once its
//!   spare segments are in use): the `fdatasync` need not make a new file size durable.
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
use tally::types::{BATCH_EVENTS_MAX, Batch};

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

/// Zeros after the header of a preallocated bench segment: more than the in-place
/// benches write before they start again.
const PREALLOCATED_BYTES: u64 = 64 * 1024 * 1024;

fn open_empty(dir: &Path) -> Wal {
    let (wal, recovered) = Wal::open(dir, LogOptions::default()).expect("open the bench log");
    assert!(recovered.records.is_empty() && recovered.snapshot.is_none());
    assert_eq!(LogOptions::default().sync, SyncMode::Fdatasync);
    wal
}

/// A log whose first segment is a header followed by [`PREALLOCATED_BYTES`] of zeros,
/// synced: what a spare segment looks like once renamed into place.
fn open_preallocated(dir: &Path) -> Wal {
    use std::io::Write;
    std::fs::create_dir_all(dir).expect("bench directory");
    let path = dir.join(tally::log::layout::segment_name(1));
    let mut file = std::fs::File::create(&path).expect("create the bench segment");
    file.write_all(&tally::log::layout::encode_segment_header(1))
        .expect("write the header");
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..PREALLOCATED_BYTES / zeros.len() as u64 {
        file.write_all(&zeros).expect("write zeros");
    }
    file.sync_all().expect("sync the bench segment");
    let wal = open_empty(dir);
    assert_eq!(wal.preallocated_bytes_left(), PREALLOCATED_BYTES);
    wal
}

/// Times `append` of `batches` batches of `events` transfers each, one call per
/// iteration, into a log that extends its file or (`in_place`) writes over zeros.
fn bench_append(c: &mut Criterion, name: &str, batches: usize, events: usize, in_place: bool) {
    let dir = bench_dir(name);
    let open = |dir: &Path| match in_place {
        true => open_preallocated(dir),
        false => open_empty(dir),
    };
    let reset_bytes = match in_place {
        true => PREALLOCATED_BYTES / 2,
        false => LOG_BYTES_RESET,
    };
    let mut wal = open(&dir);
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
                if bytes_appended >= reset_bytes {
                    remove_dir(&dir);
                    wal = open(&dir);
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

/// Opens the log and replays it into an empty state machine with `StateMachine::replay`,
/// as recovery does (here on one thread: reading, then replaying).
fn recover(dir: &Path) -> StateMachine {
    let (wal, recovered) = Wal::open(dir, LogOptions::default()).expect("reopen the log");
    let mut state = StateMachine::new();
    let batches: Vec<_> = recovered
        .records
        .iter()
        .map(|record| (record.timestamp, &record.batch))
        .collect();
    state.replay(&batches);
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
        bench_append(c, &format!("append/{events}"), 1, events, false);
    }
    bench_append(c, "group_commit/100x1", 100, 1, false);
    for events in [1, 100] {
        bench_append(c, &format!("append_in_place/{events}"), 1, events, true);
    }
    bench_append(c, "group_commit_in_place/100x1", 100, 1, true);
    bench_recovery(c);
}

criterion_group!(benches, log);
criterion_main!(benches);
