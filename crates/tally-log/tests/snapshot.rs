//! Snapshots: round trip, atomic writing, fallback past a damaged one, retirement.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proptest::prelude::*;
use tally_log::faulty::FaultyStorage;
use tally_log::layout::{self, snapshot_name};
use tally_log::{LogError, Wal, read_log_storage, verify_storage};
use tally_types::{Account, AccountFlags, PendingStatus, StateImage, Transfer, TransferFlags};

fn image(accounts: usize, transfers: usize) -> StateImage {
    StateImage {
        last_timestamp: 123_456_789,
        accounts: (0..accounts)
            .map(|i| Account {
                id: i as u128 + 1,
                credits_posted: i as u128 * 3,
                debits_pending: u128::MAX - i as u128,
                ledger: 156,
                code: 1,
                flags: AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                timestamp: i as u64,
                ..Account::default()
            })
            .collect(),
        transfers: (0..transfers)
            .map(|i| Transfer {
                id: (i as u128) << 64 | 9,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: i as u128,
                timeout: 60,
                ledger: 156,
                code: 3,
                flags: TransferFlags::PENDING,
                timestamp: i as u64 + 1,
                ..Transfer::default()
            })
            .collect(),
        pending_statuses: (0..transfers)
            .map(|i| {
                let status = PendingStatus::from_u8((i % 4) as u8).unwrap();
                ((i as u128) << 64 | 9, status)
            })
            .collect(),
        refunded: (0..transfers / 3)
            .map(|i| (i as u128, u128::MAX / (i as u128 + 1)))
            .collect(),
        failed_ids: (0..transfers / 2).map(|i| i as u128 * 5 + 1).collect(),
    }
}

#[test]
fn a_large_snapshot_round_trips_on_real_files() {
    // 20,000 accounts and transfers cross several 8,192-item chunks per section.
    let dir = tempfile::tempdir().unwrap();
    let state = image(20_000, 20_000);
    {
        let (mut wal, _) = Wal::open(dir.path(), options(1 << 20)).unwrap();
        wal.append(&records(1, 10)).unwrap();
        wal.write_snapshot(10, &state).unwrap();
        wal.append(&records(11, 3)).unwrap();
    }
    let (wal, recovered) = Wal::open(dir.path(), options(1 << 20)).unwrap();
    let (sequence, loaded) = recovered.snapshot.unwrap();
    assert_eq!(sequence, 10);
    assert_eq!(loaded, state);
    assert_eq!(recovered.records, records(11, 3));
    assert_eq!(wal.next_sequence(), 14);
    let report = tally_log::verify(dir.path()).unwrap();
    assert_eq!(report.snapshot_sequence, Some(10));
    assert!(report.is_clean());
}

#[test]
fn an_empty_image_round_trips() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 1)).unwrap();
    wal.write_snapshot(1, &StateImage::default()).unwrap();
    drop(wal);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.snapshot, Some((1, StateImage::default())));
    assert!(recovered.records.is_empty());
}

/// Appends 1..=30 in 600-byte segments with snapshots at 10, 20 and 30, then 31..=35.
fn log_with_three_snapshots() -> FaultyStorage {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(600)).unwrap();
    for sequence in (1..=30).step_by(10) {
        wal.append(&records(sequence, 10)).unwrap();
        let state = image(sequence as usize, 2);
        wal.write_snapshot(sequence + 9, &state).unwrap();
    }
    wal.append(&records(31, 5)).unwrap();
    storage
}

#[test]
fn snapshots_retire_the_oldest_snapshot_and_the_segments_the_previous_one_covers() {
    let storage = log_with_three_snapshots();
    let names = storage.file_names();
    assert!(!names.contains(&snapshot_name(10)), "{names:?}");
    assert!(names.contains(&snapshot_name(20)) && names.contains(&snapshot_name(30)));
    let segments = segment_names(&storage);
    let first = layout::parse_segment_name(&segments[0]).unwrap();
    assert!(
        first > 1 && first <= 21,
        "kept segments start at {first}: {segments:?}"
    );

    let (_, recovered) = open(&storage, options(600)).unwrap();
    assert_eq!(recovered.snapshot.as_ref().map(|s| s.0), Some(30));
    assert_eq!(recovered.snapshot.unwrap().1, image(21, 2));
    assert_eq!(recovered.records, records(31, 5));
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let storage = log_with_three_snapshots();
    let newest = snapshot_name(30);
    let len = storage.read_file(&newest).unwrap().len();
    storage.flip_bit(&newest, len / 2, 4);
    let (wal, recovered) = open(&storage, options(600)).unwrap();
    assert_eq!(recovered.snapshot.as_ref().map(|s| s.0), Some(20));
    assert_eq!(recovered.records, records(21, 15));
    assert_eq!(wal.snapshots_damaged().len(), 1);
    assert!(wal.snapshots_damaged()[0].ends_with(&newest));
    let report = verify_storage(&mut storage.clone()).unwrap();
    assert_eq!(report.snapshot_sequence, Some(20));
    assert_eq!(report.snapshots, 1, "20 checks (10 was retired)");
    assert_eq!(report.snapshots_damaged.len(), 1);
    assert!(report.snapshots_damaged[0].contains(&newest));
    // Reading without recovering falls back the same way.
    let read = read_log_storage(&mut storage.clone()).unwrap();
    assert_eq!(read.snapshot, recovered.snapshot);
    assert_eq!(read.records, recovered.records);
    assert_eq!(read.report, report);
}

#[test]
fn a_bit_flip_anywhere_in_a_snapshot_is_caught() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 2)).unwrap();
    wal.write_snapshot(1, &image(3, 3)).unwrap();
    wal.write_snapshot(2, &image(4, 4)).unwrap();
    drop(wal);
    let newest = snapshot_name(2);
    let bytes = storage.read_file(&newest).unwrap();
    for offset in 0..bytes.len() {
        let damaged = copy_storage(&storage);
        damaged.flip_bit(&newest, offset, (offset % 8) as u8);
        let (_, recovered) = open(&damaged, options(1 << 20)).unwrap();
        assert_eq!(
            recovered.snapshot.map(|s| s.0),
            Some(1),
            "flip at byte {offset}"
        );
        assert_eq!(recovered.records, records(2, 1));
    }
}

#[test]
fn the_only_snapshot_damaged_replays_the_whole_log() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(600)).unwrap();
    wal.append(&records(1, 20)).unwrap();
    wal.write_snapshot(20, &image(5, 5)).unwrap();
    drop(wal);
    storage.flip_bit(&snapshot_name(20), 70, 0);
    let (_, recovered) = open(&storage, options(600)).unwrap();
    assert!(recovered.snapshot.is_none());
    assert_eq!(recovered.records, records(1, 20));
}

#[test]
fn every_snapshot_damaged_without_the_log_to_replace_them_is_a_clear_error() {
    let storage = log_with_three_snapshots();
    storage.flip_bit(&snapshot_name(30), 100, 1);
    storage.flip_bit(&snapshot_name(20), 100, 1);
    match open(&storage, options(600)) {
        Err(error @ LogError::Snapshot { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&snapshot_name(30)), "{message}");
        }
        other => panic!("expected a Snapshot error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_crash_while_writing_a_snapshot_leaves_no_trace_after_open() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 3)).unwrap();
    // The temp file exists durably but holds half a snapshot.
    let temp = format!("{}.tmp", snapshot_name(3));
    storage.write_file_durable(&temp, b"TALLYSNP half written");
    drop(wal);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert!(recovered.snapshot.is_none());
    assert_eq!(recovered.records, records(1, 3));
    assert!(!storage.file_names().contains(&temp));
}

#[test]
fn a_written_snapshot_survives_a_crash_because_its_rename_was_synced() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 3)).unwrap();
    wal.write_snapshot(3, &image(2, 2)).unwrap();
    storage.crash();
    drop(wal);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(
        recovered.snapshot.map(|s| s.0),
        Some(3),
        "write_snapshot synced the rename"
    );
}

#[test]
fn a_hostile_section_count_is_refused_before_allocating() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 1)).unwrap();
    wal.write_snapshot(1, &StateImage::default()).unwrap();
    drop(wal);
    let name = snapshot_name(1);
    let mut bytes = storage.read_file(&name).unwrap();
    // The accounts section header sits right after the 64-byte file header.
    bytes[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[64..64 + 28]);
    bytes[64 + 28..64 + 32].copy_from_slice(&crc.to_le_bytes());
    storage.write_file_durable(&name, &bytes);
    let report = verify_storage(&mut storage.clone()).unwrap();
    assert!(
        report.snapshots_damaged[0].contains("exceeds the file"),
        "{report:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn garbage_snapshot_or_segment_files_never_panic_open(
        garbage in proptest::collection::vec(any::<u8>(), 0..400),
        prefix_keep in 0usize..200,
        as_snapshot in any::<bool>(),
    ) {
        let storage = FaultyStorage::new();
        let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
        wal.append(&records(1, 2)).unwrap();
        wal.write_snapshot(2, &image(1, 1)).unwrap();
        drop(wal);
        let name = if as_snapshot { snapshot_name(2) } else { layout::segment_name(1) };
        let mut bytes = storage.read_file(&name).unwrap();
        bytes.truncate(prefix_keep.min(bytes.len()));
        bytes.extend_from_slice(&garbage);
        storage.write_file_durable(&name, &bytes);
        let _ = open(&storage, options(1 << 20));
        let _ = verify_storage(&mut storage.clone());
    }
}

/// A snapshot job runs on its own thread and storage handle while the log keeps
/// appending (and rotating); once recorded, recovery loads it and replays only the tail.
#[test]
fn a_snapshot_written_on_another_thread_while_appends_go_on_recovers_exactly() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(600)).unwrap();
    wal.append(&records(1, 10)).unwrap();
    let job = wal.snapshot_job(10).unwrap();
    let state = image(10, 3);
    let writer = {
        let state = state.clone();
        std::thread::spawn(move || job.write(&state))
    };
    for first in (11..=40).step_by(5) {
        wal.append(&records(first, 5)).unwrap();
    }
    let written = writer.join().unwrap().unwrap();
    assert_eq!(written, 10);
    assert!(
        wal.snapshot_written(written).unwrap().is_none(),
        "the first snapshot retires nothing"
    );
    wal.append(&records(41, 2)).unwrap();
    drop(wal);
    storage.crash();
    let (_, recovered) = open(&storage, options(600)).unwrap();
    assert_eq!(recovered.snapshot, Some((10, state)));
    assert_eq!(recovered.records, records(11, 32));
}

#[test]
fn snapshot_format_is_pinned() {
    // Pins the snapshot bytes, as `recovery.rs` pins the log's: if this changes,
    // SNAPSHOT_FORMAT_VERSION must change too. FNV-1a, because every unit ends in its
    // own CRC.
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 1)).unwrap();
    wal.write_snapshot(1, &image(3, 4)).unwrap();
    let bytes = storage.read_file(&snapshot_name(1)).unwrap();
    assert_eq!(&bytes[0..8], b"TALLYSNP");
    assert_eq!(
        &bytes[8..10],
        &tally_log::SNAPSHOT_FORMAT_VERSION.to_le_bytes()
    );
    let fnv1a = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    assert_eq!(
        (bytes.len(), fnv1a),
        (939, 8_307_663_993_239_503_372),
        "snapshot format changed"
    );
}

/// A format-2 snapshot (transfers in the fixed 128-byte layout), written by the last
/// build before format 3, is still read: `image(3, 4)` at sequence 1.
#[test]
fn a_format_2_snapshot_is_still_read() {
    let fixture = include_bytes!("data/snapshot-v2.snap");
    assert_eq!(&fixture[8..10], &2u16.to_le_bytes());
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 2)).unwrap();
    drop(wal);
    storage.write_file_durable(&snapshot_name(1), fixture);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.snapshot, Some((1, image(3, 4))));
    assert_eq!(recovered.records, records(2, 1));
    let report = verify_storage(&mut storage.clone()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// The snapshot of `image(3, transfers)` at sequence 1, and the offset of its packed
/// transfers section header (after the file header, the accounts section header and
/// its one chunk of three accounts).
fn packed_snapshot(transfers: usize) -> (FaultyStorage, Vec<u8>, usize) {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 1)).unwrap();
    wal.write_snapshot(1, &image(3, transfers)).unwrap();
    drop(wal);
    let bytes = storage.read_file(&snapshot_name(1)).unwrap();
    let section = 64 + 32 + 3 * 128 + 4;
    assert_eq!(&bytes[section..section + 4], b"SECT");
    assert_eq!(&bytes[section + 4..section + 6], &2u16.to_le_bytes());
    (storage, bytes, section)
}

/// Rewrites the first packed chunk (at `chunk`, `length` bytes of records) with a CRC
/// that matches, so that only the record checks can catch what `damage` did.
fn reseal_first_chunk(bytes: &mut [u8], chunk: usize, length: usize) {
    let length_field: [u8; 4] = (length as u32).to_le_bytes();
    bytes[chunk..chunk + 4].copy_from_slice(&length_field);
    let mut seed = [0u8; 20];
    seed[0..8].copy_from_slice(&2u64.to_le_bytes());
    seed[16..20].copy_from_slice(&length_field);
    let records = &bytes[chunk + 4..chunk + 4 + length];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seed), records);
    bytes[chunk + 4 + length..chunk + 8 + length].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn packed_transfers_are_checked_record_by_record_behind_their_crc() {
    let (storage, good, section) = packed_snapshot(5);
    let chunk = section + 32;
    let length = u32::from_le_bytes(good[chunk..chunk + 4].try_into().unwrap()) as usize;
    assert_eq!(
        good.len(),
        chunk + 4 + length + 4 + (32 + 5 * 32 + 4) + (32 + 32 + 4) + (32 + 2 * 16 + 4) + 16
    );
    let verdict = |damage: &dyn Fn(&mut Vec<u8>)| -> String {
        let mut bytes = good.clone();
        damage(&mut bytes);
        let damaged = copy_storage(&storage);
        damaged.write_file_durable(&snapshot_name(1), &bytes);
        let report = verify_storage(&mut damaged.clone()).unwrap();
        assert_eq!(report.snapshots_damaged.len(), 1, "{report:?}");
        // The log reaches back to the start, so open falls back to replaying it.
        let (_, recovered) = open(&damaged, options(1 << 20)).unwrap();
        assert_eq!(recovered.snapshot, None);
        report.snapshots_damaged[0].clone()
    };
    // A record's reserved presence bit, sealed with a good CRC.
    let why = verdict(&|b| {
        b[chunk + 4] |= 0x80;
        reseal_first_chunk(b, chunk, length);
    });
    assert!(why.contains("transfers item 0: reserved"), "{why}");
    // A stray byte after the last record, counted in the length and sealed.
    let why = verdict(&|b| {
        b.insert(chunk + 4 + length, 0);
        reseal_first_chunk(b, chunk, length + 1);
    });
    assert!(why.contains("bytes after its 5 records"), "{why}");
    // A length too short for the records it must hold.
    let why = verdict(&|b| b[chunk..chunk + 4].copy_from_slice(&10u32.to_le_bytes()));
    assert!(why.contains("does not fit 5 records"), "{why}");
    // A length the bound allows but the CRC does not.
    let why =
        verdict(&|b| b[chunk..chunk + 4].copy_from_slice(&((length + 1) as u32).to_le_bytes()));
    assert!(why.contains("CRC32C"), "{why}");
    // A count the file cannot hold, with a good header CRC.
    let why = verdict(&|b| {
        b[section + 8..section + 16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let crc = crc32c::crc32c(&b[section..section + 28]);
        b[section + 28..section + 32].copy_from_slice(&crc.to_le_bytes());
    });
    assert!(why.contains("exceeds the file"), "{why}");
}

#[test]
fn packed_transfer_chunks_split_at_the_run_size() {
    // One more transfer than a run: two chunks, the second of one record.
    let run = tally_types::packed::PACKED_RUN_RECORDS;
    let (storage, bytes, section) = packed_snapshot(run + 1);
    assert_eq!(
        u32::from_le_bytes(bytes[section + 16..section + 20].try_into().unwrap()) as usize,
        run
    );
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.snapshot, Some((1, image(3, run + 1))));
}

/// A retirement is only file removal: one that never runs (a crash right after the
/// snapshot) changes nothing recovery finds, and a later snapshot's retirement, after
/// the restart, removes what it left.
#[test]
fn a_retirement_left_undone_loses_nothing_and_a_later_one_cleans_up() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(600)).unwrap();
    for sequence in [1, 11] {
        wal.append(&records(sequence, 10)).unwrap();
        let job = wal.snapshot_job(sequence + 9).unwrap();
        let written = job.write(&image(sequence as usize, 2)).unwrap();
        // Never run.
        let retirement = wal.snapshot_written(written).unwrap();
        assert_eq!(retirement.is_some(), sequence == 11);
    }
    wal.append(&records(21, 5)).unwrap();
    drop(wal);
    storage.crash();
    let first_segment =
        |storage: &FaultyStorage| layout::parse_segment_name(&segment_names(storage)[0]).unwrap();
    assert_eq!(first_segment(&storage), 1, "nothing was removed");
    let (mut wal, recovered) = open(&storage, options(600)).unwrap();
    assert_eq!(recovered.snapshot, Some((20, image(11, 2))));
    assert_eq!(recovered.records, records(21, 5));
    wal.append(&records(26, 5)).unwrap();
    wal.write_snapshot(30, &image(26, 2)).unwrap();
    let names = storage.file_names();
    assert!(!names.contains(&snapshot_name(10)), "{names:?}");
    assert!(first_segment(&storage) > 1, "{names:?}");
    drop(wal);
    let (_, recovered) = open(&storage, options(600)).unwrap();
    assert_eq!(recovered.snapshot, Some((30, image(26, 2))));
    assert!(recovered.records.is_empty());
}

#[test]
fn a_snapshot_lets_go_of_its_synced_pages_as_it_writes() {
    // 300,000 accounts of 128 bytes: past the 32 MiB written between two syncs.
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 1)).unwrap();
    let state = image(300_000, 0);
    wal.write_snapshot(1, &state).unwrap();
    let drops: Vec<(u64, u64)> = storage
        .cache_drops()
        .into_iter()
        .filter(|(name, _, _)| tally_log::layout::parse_segment_name(name).is_none())
        .map(|(_, offset, len)| (offset, len))
        .collect();
    assert_eq!(drops.len(), 1, "one sync before the last: {drops:?}");
    assert_eq!(drops[0].0, 0);
    assert!(drops[0].1 >= 32 << 20 && drops[0].1.is_multiple_of(4096));
    drop(wal);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.snapshot, Some((1, state)));
}
