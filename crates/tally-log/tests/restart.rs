//! Restarts without a machine crash (a failed sync, a killed process, a supervisor that
//! reopens at once): what recovery reads back may come from the page cache and not be
//! durable yet. Recovery, close markers and snapshots must never rely on it; each test
//! ends with a power loss and checks that the directory still opens with everything
//! acknowledged. (Found in review; each failed before `Wal::open` synced what it read.)
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use tally_log::faulty::{Fault, FaultyStorage};
use tally_log::{LogOptions, SyncMode};

/// An fdatasync of the newest group fails (the log is poisoned, the batch was never
/// acknowledged). The process restarts without a machine crash: recovery reads the
/// frame from the page cache and hands it back, and a clean close names it in its
/// marker. Open must have made it durable first, or a later power loss would leave a
/// valid directory (every acknowledged batch there) that open refuses as Corrupt.
#[test]
fn a_close_marker_never_names_a_frame_whose_sync_failed() {
    let storage = build_log(&records(1, 4), 1, 1 << 20);
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    storage.fail_sync(1, Fault::Eio);
    assert!(wal.append(&records(5, 1)).is_err(), "not acknowledged");
    drop(wal); // the engine stops; a restart (no machine crash) reopens
    let (mut wal, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(
        recovered.records.len(),
        5,
        "frame 5 read back from the page cache"
    );
    wal.close().unwrap();
    storage.crash(); // power loss: frame 5 was never synced
    let opened = open(&storage, options(1 << 20));
    assert!(
        opened.is_ok(),
        "every acknowledged batch (1..=4) is on disk, yet open fails: {:?}",
        opened.err()
    );
}

/// A fresh log on `storage` in `SyncMode::UnsafeNoSync` (benchmarks: appends are never
/// synced) holding records 1..=3.
fn no_sync_log_of_three(storage: &FaultyStorage) -> tally_log::Wal {
    let no_sync = LogOptions {
        segment_bytes_max: 1 << 20,
        sync: SyncMode::UnsafeNoSync,
    };
    let (mut wal, _) = open(storage, no_sync).unwrap();
    wal.append(&records(1, 3)).unwrap();
    wal
}

/// With appends never synced, a clean close must still name only durable frames: it
/// syncs before writing its marker, so a crash after it leaves a directory that opens
/// (before, the marker named frames the crash then took, and open refused).
#[test]
fn a_close_without_syncing_appends_leaves_a_directory_that_opens() {
    let storage = FaultyStorage::new();
    let mut wal = no_sync_log_of_three(&storage);
    wal.close().unwrap();
    storage.crash();
    let opened = open(&storage, options(1 << 20));
    assert!(opened.is_ok(), "open fails: {:?}", opened.err());
}

/// A rotation whose directory fsync fails poisons the log; the restart (no machine
/// crash) finds the new segment, whose name was never made durable, and appends into
/// it, acknowledging batches. Open must sync the directory first, or a power loss
/// would remove the segment and every acknowledged batch in it.
#[test]
fn a_segment_whose_name_was_not_durable_is_made_so_before_appending() {
    // Small segments so that the next group rotates.
    let segment = tally_log::SEGMENT_BYTES_MIN;
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(segment)).unwrap();
    let mut sequence = 1;
    // Fill the first segment until the next group rotates.
    let big = |s: u64| record(s, 100);
    loop {
        let before = segment_names(&storage).len();
        storage.fail_sync_dir(1, Fault::Eio);
        let result = wal.append(&[big(sequence)]);
        if result.is_err() {
            assert_eq!(segment_names(&storage).len(), before + 1, "rotation failed");
            break;
        }
        // No rotation yet: the armed fault waits for the next directory sync, which is
        // the rotation's.
        sequence += 1;
    }
    let acked_before = sequence - 1;
    drop(wal);
    let (mut wal, recovered) = open(&storage, options(segment)).unwrap();
    assert_eq!(recovered.records.len() as u64, acked_before);
    wal.append(&[big(sequence)]).unwrap(); // acknowledged
    let acked = sequence;
    drop(wal);
    storage.crash();
    let (_, recovered) = open(&storage, options(segment)).unwrap();
    assert_eq!(
        recovered.records.len() as u64,
        acked,
        "an acknowledged batch was lost"
    );
}

/// Open clears a torn tail (zeroes it in place, or truncates) but its fdatasync fails:
/// open returns the error. A second open without a machine crash (a supervisor
/// restart) reads the cleared tail from the page cache and finds it clean, and the next
/// group rotates away from the segment. That open must sync the segment, or after a
/// power loss the torn bytes would be back in a segment that is no longer the last,
/// and open would refuse the directory though nothing acknowledged is lost.
#[test]
fn a_torn_tail_cleared_but_not_synced_is_synced_by_the_next_open() {
    for in_place in [true, false] {
        let segment = 8192;
        let storage = FaultyStorage::new();
        let (mut wal, _) = open(&storage, options(segment)).unwrap();
        if in_place {
            // A spare, so the segment after the tear is written in place.
            while wal.spare_ready().is_none() {
                for s in wal.next_sequence()..wal.next_sequence() + 1 {
                    wal.append(&[record(s, 1)]).unwrap();
                }
                let _ = wal.write_spare_step(1 << 20);
            }
        }
        let mut s = wal.next_sequence();
        for _ in 0..3 {
            wal.append(&[record(s, 5)]).unwrap();
            s += 1;
        }
        // Torn group: 3 frames, keep 1000 bytes of the write.
        let group: Vec<_> = (s..s + 3).map(|q| record(q, 5)).collect();
        storage.fail_sync(1, Fault::Eio);
        assert!(wal.append(&group).is_err());
        drop(wal);
        storage.crash_keeping_unsynced_bytes(1000);
        // The first frame of the group (688 bytes) is whole; the rest is torn.
        let acked = s; // 1..s-1 acknowledged, s recovered whole from the tear
        // The first sync keeps the torn bytes in their own file; the second is the
        // clear's.
        storage.fail_sync(2, Fault::Eio);
        let first = open(&storage, options(segment));
        assert!(first.is_err(), "the clear's fdatasync failed");
        // Restart without a machine crash.
        let (mut wal, recovered) = open(&storage, options(segment)).unwrap();
        let base = recovered.snapshot.as_ref().map_or(0, |(q, _)| *q);
        assert_eq!(base + recovered.records.len() as u64, acked);
        assert_eq!(recovered.torn_tail_bytes_cut, 0, "looks clean now");
        // A group that does not fit: the log rotates to a new segment.
        let next = wal.next_sequence();
        let segments_before = segment_names(&storage).len();
        wal.append(&[record(next, 60)]).unwrap();
        assert_eq!(
            segment_names(&storage).len(),
            segments_before + 1,
            "rotated"
        );
        drop(wal);
        storage.crash();
        let opened = open(&storage, options(segment));
        assert!(
            opened.is_ok(),
            "in_place {in_place}: every acknowledged batch is on disk, yet: {:?}",
            opened.err()
        );
    }
}

/// With appends never synced, a snapshot (which is synced) must not outlive the frames
/// it covers: the log syncs first, so a crash after it leaves a directory that opens
/// (before, the log ended before its snapshot and open refused).
#[test]
fn a_snapshot_without_syncing_appends_leaves_a_directory_that_opens() {
    let storage = FaultyStorage::new();
    let mut wal = no_sync_log_of_three(&storage);
    let image = tally_types::StateImage {
        last_timestamp: 3,
        ..Default::default()
    };
    wal.write_snapshot(3, &image).unwrap();
    drop(wal);
    storage.crash();
    let opened = open(&storage, options(1 << 20));
    assert!(opened.is_ok(), "open fails: {:?}", opened.err());
}
