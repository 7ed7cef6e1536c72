//! I/O faults and crashes: an acknowledged record survives every one of them, and a
//! failed append poisons the log instead of being retried.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tally_log::faulty::{Fault, FaultyStorage};
use tally_log::{LogError, LogRecord, Wal, read_log_storage};
use tally_testkit::SeededRng as Rng;
use tally_types::StateImage;

/// Arms a fault, makes one append fail with it, checks the poisoning, crashes (keeping
/// `tear` bytes of the unsynced write) and checks that recovery keeps every
/// acknowledged record and at most a whole-frame prefix of the failed group.
fn check_fault(arm: impl Fn(&FaultyStorage), tear: usize, segment_bytes_max: u64) {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(segment_bytes_max)).unwrap();
    let acked = records(1, 20);
    for chunk in acked.chunks(4) {
        wal.append(chunk).unwrap();
    }
    arm(&storage);
    let failed = records(21, 4);
    let error = wal.append(&failed).unwrap_err();
    assert!(matches!(error, LogError::Io { .. }), "{error}");
    assert!(wal.is_poisoned());
    assert!(matches!(wal.append(&failed), Err(LogError::Poisoned)));
    assert!(matches!(
        wal.write_snapshot(20, &StateImage::default()),
        Err(LogError::Poisoned)
    ));
    assert_eq!(wal.next_sequence(), 21, "a failed group is not counted");
    drop(wal);

    storage.crash_keeping_unsynced_bytes(tear);
    let (mut wal, recovered) = open(&storage, options(segment_bytes_max)).unwrap();
    assert_eq!(
        recovered.records[..20],
        acked[..],
        "every acknowledged record survives"
    );
    let extra = &recovered.records[20..];
    assert_eq!(
        extra,
        &failed[..extra.len()],
        "only whole frames of the failed group"
    );
    let next = wal.next_sequence();
    wal.append(&records(next, 2)).unwrap();
}

#[test]
fn eio_on_write_poisons_and_keeps_acknowledged_records() {
    for tear in [0, 30, 10_000] {
        check_fault(|s| s.fail_append(1, Fault::Eio), tear, 1 << 20);
    }
}

#[test]
fn enospc_on_write_after_a_partial_write_poisons_and_recovers() {
    for (written, tear) in [(0, 0), (100, 0), (100, 60), (700, 10_000)] {
        check_fault(
            |s| s.fail_append_torn(1, Fault::Enospc, written),
            tear,
            1 << 20,
        );
    }
}

#[test]
fn eio_on_fdatasync_poisons_and_the_unsynced_group_may_be_lost() {
    for tear in [0, 1, 47, 48, 500, 10_000] {
        check_fault(|s| s.fail_sync(1, Fault::Eio), tear, 1 << 20);
    }
}

#[test]
fn enospc_on_fdatasync_poisons() {
    check_fault(|s| s.fail_sync(1, Fault::Enospc), 0, 1 << 20);
}

#[test]
fn faults_while_rotating_to_a_new_segment_poison_and_recover() {
    // With 512-byte segments every group rotates first: the header write or sync fails.
    check_fault(|s| s.fail_append(1, Fault::Eio), 0, 512);
    check_fault(|s| s.fail_append_torn(1, Fault::Enospc, 20), 20, 512);
    check_fault(|s| s.fail_sync(1, Fault::Eio), 10, 512);
    // The header lands, the first group's sync fails.
    check_fault(|s| s.fail_sync(2, Fault::Eio), 10_000, 512);
}

#[test]
fn a_crash_without_a_fault_keeps_everything_acknowledged() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1024)).unwrap();
    let acked = records(1, 50);
    for chunk in acked.chunks(3) {
        wal.append(chunk).unwrap();
    }
    storage.crash();
    drop(wal);
    let (_, recovered) = open(&storage, options(1024)).unwrap();
    assert_eq!(recovered.records, acked);
    assert_eq!(recovered.torn_tail_bytes_cut, 0);
}

#[test]
fn unsafe_no_sync_loses_unsynced_records_on_a_crash() {
    // Documents why the mode carries "Unsafe" in its name.
    let storage = FaultyStorage::new();
    let mut options = options(1 << 20);
    options.sync = tally_log::SyncMode::UnsafeNoSync;
    let (mut wal, _) = open(&storage, options).unwrap();
    wal.append(&records(1, 5)).unwrap();
    storage.crash();
    drop(wal);
    let (_, recovered) = open(&storage, options).unwrap();
    assert!(recovered.records.is_empty());
}

#[test]
fn a_failed_snapshot_leaves_the_log_writable_and_recoverable() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 5)).unwrap();
    storage.fail_sync(1, Fault::Eio);
    assert!(matches!(
        wal.write_snapshot(5, &StateImage::default()),
        Err(LogError::Io { .. })
    ));
    assert!(!wal.is_poisoned());
    wal.append(&records(6, 1)).unwrap();
    storage.crash();
    drop(wal);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert!(recovered.snapshot.is_none());
    assert_eq!(recovered.records, records(1, 6));
}

/// Random appends, snapshots, faults and torn crashes; after every crash recovery must
/// hold every acknowledged record (directly or through the snapshot) and nothing else
/// but whole frames of the one group in flight.
#[test]
fn random_crashes_never_lose_an_acknowledged_record() {
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let storage = FaultyStorage::new();
        let segment_bytes_max = 600 + rng.below(3000);
        let (mut wal, _) = open(&storage, options(segment_bytes_max)).unwrap();
        let mut acked: Vec<LogRecord> = Vec::new();
        for _step in 0..40 {
            let next = acked.len() as u64 + 1;
            let group: Vec<LogRecord> = (next..next + 1 + rng.below(4))
                .map(|sequence| record(sequence, rng.below(6) as usize))
                .collect();
            let choice = rng.below(10);
            if rng.below(12) == 0 {
                // A clean close and reopen: the marker must agree with what is there.
                let closed = wal.close();
                let recovered;
                (wal, recovered) = open(&storage, options(segment_bytes_max))
                    .unwrap_or_else(|e| panic!("seed {seed}: reopen after close: {e}"));
                if closed.is_ok() {
                    assert_eq!(recovered.torn_tail_bytes_cut, 0, "seed {seed}");
                }
                let base = recovered.snapshot.as_ref().map_or(0, |(s, _)| *s as usize);
                assert_eq!(recovered.records[..], acked[base..], "seed {seed}");
            }
            // Spare steps come between appends, as on the engine's log thread.
            if rng.below(3) == 0 {
                let _ = wal.write_spare_step(1 + rng.below(2000));
            }
            if choice == 0 && !acked.is_empty() {
                let sequence = acked.len() as u64;
                let image = StateImage {
                    last_timestamp: sequence,
                    ..StateImage::default()
                };
                wal.write_snapshot(sequence, &image).unwrap();
                continue;
            }
            if choice <= 2 {
                match rng.below(3) {
                    0 => storage.fail_sync(1, Fault::Eio),
                    1 => storage.fail_append_torn(1, Fault::Enospc, rng.below(400) as usize),
                    _ => {}
                }
            }
            let result = wal.append(&group);
            let in_flight = match result {
                Ok(()) => {
                    acked.extend_from_slice(&group);
                    if choice > 2 {
                        continue;
                    }
                    Vec::new()
                }
                Err(_) => group,
            };
            storage.crash_keeping_unsynced_bytes(rng.below(1000) as usize);
            drop(wal);
            // Reading without recovering changes nothing, and finds what open recovers.
            let files = |storage: &FaultyStorage| {
                let names = storage.file_names();
                let bytes: Vec<_> = names.iter().map(|n| storage.read_file(n)).collect();
                (names, bytes)
            };
            let files_before = files(&storage);
            let read = read_log_storage(&mut storage.clone())
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(
                files(&storage) == files_before,
                "seed {seed}: read_log wrote"
            );
            let recovered;
            (wal, recovered) = open(&storage, options(segment_bytes_max))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(read.records, recovered.records, "seed {seed}");
            assert_eq!(read.snapshot, recovered.snapshot, "seed {seed}");
            assert_eq!(
                read.report.torn_tail_bytes, recovered.torn_tail_bytes_cut,
                "seed {seed}"
            );
            let base = match &recovered.snapshot {
                Some((sequence, image)) => {
                    assert_eq!(image.last_timestamp, *sequence, "seed {seed}");
                    *sequence as usize
                }
                None => 0,
            };
            assert!(base <= acked.len(), "seed {seed}");
            let durable = acked.len() - base;
            assert_eq!(recovered.records[..durable], acked[base..], "seed {seed}");
            let extra = &recovered.records[durable..];
            assert_eq!(extra, &in_flight[..extra.len()], "seed {seed}");
            acked.extend_from_slice(extra);
            assert_eq!(wal.next_sequence(), acked.len() as u64 + 1);
        }
    }
}

#[test]
fn sequences_must_run_on_from_next_sequence() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = wal.append(&records(2, 1));
    }));
    assert!(
        result.is_err(),
        "a sequence gap is an engine bug and must stop"
    );
}

#[test]
fn the_real_filesystem_wal_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Wal>();
}
