//! Preallocated segments: spares are written in steps between appends, renamed into
//! place at rotation, written in place, and every crash on the way recovers every
//! acknowledged record.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tally_log::faulty::{Fault, FaultyStorage};
use tally_log::layout::{self, SPARE_SEGMENT_NAME};
use tally_log::{LogRecord, SPARE_STEP_BYTES_MAX, Wal, verify_storage};

const SEGMENT: u64 = 4096;

/// Writes the whole spare the log wants, if it wants one; true if one was written.
fn write_spare(wal: &mut Wal) -> bool {
    let wanted = wal.spare_wanted();
    while wal.spare_wanted() {
        assert!(wal.write_spare_step(SPARE_STEP_BYTES_MAX).unwrap() > 0);
    }
    wanted && wal.spare_ready().is_some()
}

fn len(storage: &FaultyStorage, name: &str) -> usize {
    storage.read_file(name).unwrap().len()
}

#[test]
fn a_spare_is_wanted_once_the_log_is_busy_and_written_step_by_step() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    assert!(!wal.spare_wanted(), "nothing logged yet");
    // The trigger is an eighth of a segment here: 512 bytes.
    wal.append(&[record(1, 1)]).unwrap();
    assert!(!wal.spare_wanted(), "176 bytes logged");
    assert_eq!(
        wal.write_spare_step(1000).unwrap(),
        0,
        "a step does nothing"
    );
    assert_eq!(storage.file_names().len(), 1, "nothing written");
    wal.append(&[record(2, 4)]).unwrap();
    assert!(wal.spare_wanted(), "688 bytes logged");
    let temp = layout::SPARE_SEGMENT_TEMP_NAME.to_string();
    let (writes, syncs) = storage.counts();
    assert_eq!(wal.write_spare_step(1000).unwrap(), 1000);
    assert_eq!(
        storage.counts(),
        (writes + 1, syncs + 1),
        "one write, one sync"
    );
    assert_eq!(storage.read_file(&temp).unwrap(), vec![0; 1000]);
    assert!(wal.spare_wanted(), "a spare half written is still wanted");
    for _ in 0..3 {
        assert_eq!(wal.write_spare_step(1000).unwrap(), 1000);
        assert_eq!(wal.spare_ready(), None);
    }
    assert_eq!(wal.write_spare_step(1000).unwrap(), 96, "the last 96 bytes");
    assert_eq!(wal.spare_ready(), Some(SEGMENT));
    assert_eq!(
        storage.read_file(SPARE_SEGMENT_NAME).unwrap(),
        vec![0; 4096]
    );
    assert!(!storage.file_names().contains(&temp));
    assert!(!wal.spare_wanted(), "a spare is ready");
}

#[test]
fn the_log_moves_onto_a_spare_early_and_then_writes_in_place() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    wal.append(&records(1, 4)).unwrap();
    assert!(write_spare(&mut wal));
    // The first segment grows by extending its file; with a spare ready the next group
    // goes to a new segment made from the spare instead.
    wal.append(&records(5, 1)).unwrap();
    let names = segment_names(&storage);
    assert_eq!(names, [layout::segment_name(1), layout::segment_name(5)]);
    assert!(
        !storage
            .file_names()
            .contains(&SPARE_SEGMENT_NAME.to_string())
    );
    assert_eq!(
        len(&storage, &names[1]),
        SEGMENT as usize,
        "the spare's length"
    );
    assert_eq!(wal.spare_ready(), None);

    let before = wal.preallocated_bytes_left();
    wal.append(&records(6, 2)).unwrap();
    assert_eq!(
        len(&storage, &names[1]),
        SEGMENT as usize,
        "written in place"
    );
    assert!(wal.preallocated_bytes_left() < before);

    let report = verify_storage(&mut storage.clone()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.records, 7);
    assert_eq!(report.preallocated_bytes, wal.preallocated_bytes_left());
    drop(wal);
    let (_, recovered) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(recovered.records, records(1, 7));
}

#[test]
fn many_rotations_through_spares_round_trip() {
    let storage = FaultyStorage::new();
    let written = records(1, 400);
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    let mut spares = 0;
    // One record per group (at most 1.6 KB): a segment is half used before a group
    // can overflow it, so the spare asked for then is always ready in time.
    for chunk in written.chunks(1) {
        wal.append(chunk).unwrap();
        spares += usize::from(write_spare(&mut wal));
    }
    let names = segment_names(&storage);
    assert!(spares >= 10 && names.len() >= spares, "{spares} spares");
    // Every segment but the first began as a spare, and none grew past it.
    for name in &names[1..] {
        assert_eq!(len(&storage, name), SEGMENT as usize, "{name}");
    }
    drop(wal);
    let (_, recovered) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(recovered.records, written);
    let report = verify_storage(&mut storage.clone()).unwrap();
    assert!(report.is_clean() && report.preallocated_bytes > 0);
}

#[test]
fn a_spare_survives_a_restart_and_one_of_another_size_is_removed() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    wal.append(&records(1, 4)).unwrap();
    assert!(write_spare(&mut wal));
    drop(wal);
    let (wal, _) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(wal.spare_ready(), Some(SEGMENT));
    drop(wal);
    let (wal, recovered) = open(&storage, options(2 * SEGMENT)).unwrap();
    assert_eq!(wal.spare_ready(), None);
    assert_eq!(recovered.records, records(1, 4));
    assert!(
        !storage
            .file_names()
            .contains(&SPARE_SEGMENT_NAME.to_string())
    );
}

#[test]
fn an_unfinished_spare_is_removed_at_open() {
    let storage = build_log(&records(1, 3), 1, SEGMENT);
    let temp = layout::SPARE_SEGMENT_TEMP_NAME.to_string();
    storage.write_file_durable(&temp, &[0; 100]);
    let (wal, recovered) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(recovered.records, records(1, 3));
    assert_eq!(wal.spare_ready(), None);
    assert!(!storage.file_names().contains(&temp));
}

#[test]
fn a_spare_half_written_at_close_is_removed_and_started_again() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    wal.append(&records(1, 4)).unwrap();
    wal.write_spare_step(1000).unwrap();
    drop(wal);
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    assert!(storage.file_names().iter().all(|n| !n.contains("spare")));
    assert!(!wal.spare_wanted(), "nothing logged since open");
    wal.append(&records(5, 4)).unwrap();
    assert!(write_spare(&mut wal));
}

#[test]
fn a_failed_spare_step_does_not_poison_the_log_and_waits_for_the_next_rotation() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    wal.append(&records(1, 4)).unwrap();
    wal.write_spare_step(1000).unwrap();
    storage.fail_sync(1, Fault::Enospc);
    assert!(wal.write_spare_step(1000).is_err());
    assert!(!wal.is_poisoned());
    assert!(storage.file_names().iter().all(|n| !n.contains("spare")));
    assert!(!wal.spare_wanted(), "no retry before the next rotation");
    let mut sequence = 5;
    while segment_names(&storage).len() < 2 {
        wal.append(&[record(sequence, 3)]).unwrap();
        sequence += 1;
    }
    // After the rotation a spare is wanted again, once the new segment is half used.
    while !wal.spare_wanted() {
        wal.append(&[record(sequence, 3)]).unwrap();
        sequence += 1;
    }
    assert!(write_spare(&mut wal));
    drop(wal);
    let (_, recovered) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(recovered.records.len() as u64, sequence - 1);
}

#[test]
fn a_segment_of_zeros_is_a_spare_renamed_before_its_header_was_durable() {
    // On a real disk the rename may reach the disk before the header does.
    let written = records(1, 10);
    let storage = build_log(&written, 2, SEGMENT);
    let next = layout::segment_name(11);
    storage.write_file_durable(&next, &vec![0; SEGMENT as usize]);
    let (mut wal, recovered) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(recovered.records, written);
    assert!(recovered.torn_segment_removed);
    assert_eq!(recovered.torn_tail_bytes_cut, 0, "zeros are not torn bytes");
    wal.append(&records(11, 1)).unwrap();
    drop(wal);
    let (_, recovered) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(recovered.records, records(1, 11));
}

#[test]
fn zeros_after_the_frames_of_an_older_segment_are_clean_but_garbage_is_not() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    let mut sequence = 1;
    while segment_names(&storage).len() < 3 {
        wal.append(&[record(sequence, 3)]).unwrap();
        write_spare(&mut wal);
        sequence += 1;
    }
    drop(wal);
    let names = segment_names(&storage);
    assert_eq!(
        len(&storage, &names[1]),
        SEGMENT as usize,
        "began as a spare"
    );
    let (_, recovered) = open(&storage, options(SEGMENT)).unwrap();
    assert_eq!(recovered.records.len() as u64, sequence - 1);

    let older = &names[1];
    let bytes = storage.read_file(older).unwrap();
    assert_eq!(*bytes.last().unwrap(), 0, "the older segment ends in zeros");
    storage.flip_bit(older, bytes.len() - 1, 3);
    let error = open(&storage, options(SEGMENT)).unwrap_err().to_string();
    assert!(error.contains(older), "{error}");
}

/// A rotation onto the spare that wrote and synced the new segment's header, then
/// crashed before its rename reached the disk: `wal-spare.log` now starts with that
/// header. Returns the storage in that state and the sequence the header names (the
/// log holds every record before it).
fn spare_holding_a_stale_header() -> (FaultyStorage, u64) {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    let mut sequence = 1;
    // Until a spare is ready and the current segment has room for a 1-event record
    // (176 bytes) but not for a 12-event one (1,584).
    while !(segment_names(&storage).len() >= 2
        && wal.spare_ready().is_some()
        && (176..1584).contains(&wal.preallocated_bytes_left()))
    {
        wal.append(&[record(sequence, 3)]).unwrap();
        sequence += 1;
        write_spare(&mut wal);
    }
    // The rotation writes and syncs the header (write 1), then the group's write fails.
    storage.fail_append(2, Fault::Eio);
    assert!(wal.append(&[record(sequence, 12)]).is_err());
    drop(wal);
    storage.crash();
    // Move the crash one step earlier: the rename never reached the disk.
    let name = layout::segment_name(sequence);
    let bytes = storage.read_file(&name).unwrap();
    assert_eq!(layout::decode_segment_header(&bytes), Ok(sequence));
    storage.remove_file_durable(&name);
    storage.write_file_durable(SPARE_SEGMENT_NAME, &bytes);
    (storage, sequence)
}

#[test]
fn a_stale_header_in_a_kept_spare_is_zeroed_so_its_next_rename_recovers() {
    for early_rename in [false, true] {
        let (storage, next) = spare_holding_a_stale_header();
        let (mut wal, recovered) = open(&storage, options(SEGMENT)).unwrap();
        assert_eq!(recovered.records.len() as u64, next - 1);
        assert_eq!(wal.spare_ready(), Some(SEGMENT), "the spare is kept");
        assert_eq!(
            storage.read_file(SPARE_SEGMENT_NAME).unwrap(),
            vec![0; SEGMENT as usize],
            "and is all zeros again"
        );
        wal.append(&[record(next, 1)]).unwrap();
        // The next rotation renames the spare, then fails: either its header's sync
        // fails and the rename reaches the disk anyway (ext4 may make a rename durable
        // before the directory's fsync), or the header's write itself fails and the
        // process restarts without a crash.
        if early_rename {
            storage.fail_sync(1, Fault::Eio);
        } else {
            storage.fail_append(1, Fault::Eio);
        }
        assert!(wal.append(&[record(next + 1, 12)]).is_err());
        drop(wal);
        if early_rename {
            tally_log::Storage::sync_dir(&mut storage.clone()).unwrap();
            storage.crash();
        }
        let (_, recovered) = open(&storage, options(SEGMENT))
            .unwrap_or_else(|e| panic!("early rename {early_rename}: {e}"));
        assert_eq!(recovered.records, {
            let mut expected = Vec::new();
            for sequence in 1..next {
                expected.push(record(sequence, 3));
            }
            expected.push(record(next, 1));
            expected
        });
    }
}

/// Torn writes in place: a crash keeps any prefix of the group being written over the
/// zeros; recovery keeps the acknowledged frames, cuts the rest, and goes on.
#[test]
fn a_torn_write_in_place_recovers_at_every_tear() {
    for tear in (0..600).step_by(7) {
        let storage = FaultyStorage::new();
        let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
        wal.append(&records(1, 4)).unwrap();
        assert!(write_spare(&mut wal));
        wal.append(&records(5, 2)).unwrap();
        assert!(
            wal.preallocated_bytes_left() > 0,
            "in a preallocated segment"
        );
        storage.fail_sync(1, Fault::Eio);
        let in_flight = records(7, 3);
        assert!(wal.append(&in_flight).is_err());
        drop(wal);
        storage.crash_keeping_unsynced_bytes(tear);
        let (mut wal, recovered) = open(&storage, options(SEGMENT)).unwrap();
        assert_eq!(recovered.records[..6], records(1, 6)[..], "tear {tear}");
        let extra = &recovered.records[6..];
        assert_eq!(extra, &in_flight[..extra.len()], "tear {tear}");
        assert!(recovered.torn_tail_bytes_cut <= tear as u64, "tear {tear}");
        assert!(!recovered.torn_segment_removed);
        // The torn bytes were zeroed in place: the preallocation after them is kept.
        assert!(wal.preallocated_bytes_left() > 0, "tear {tear}");
        let next = wal.next_sequence();
        wal.append(&records(next, 2)).unwrap();
        drop(wal);
        let (_, recovered) = open(&storage, options(SEGMENT)).unwrap();
        assert_eq!(recovered.records.len() as u64, next + 1, "tear {tear}");
        assert_eq!(recovered.torn_tail_bytes_cut, 0, "tear {tear}");
    }
}

/// Recovery zeroes a torn write in place, which may itself be torn by a crash: the
/// next open finds a shorter torn tail and clears it the same way.
#[test]
fn a_crash_while_zeroing_a_torn_tail_is_recovered_at_the_next_open() {
    for zeroed in [0, 1, 10, 30, 60, 100, 149] {
        let storage = FaultyStorage::new();
        let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
        wal.append(&records(1, 4)).unwrap();
        assert!(write_spare(&mut wal));
        wal.append(&records(5, 2)).unwrap();
        drop(wal);
        // A torn write in place: 150 bytes of a frame that never finished, then zeros.
        let segment = storage
            .file_names()
            .into_iter()
            .filter(|name| layout::parse_segment_name(name).is_some())
            .max()
            .unwrap();
        let report = verify_storage(&mut storage.clone()).unwrap();
        let mut bytes = storage.read_file(&segment).unwrap();
        let torn = bytes.len();
        let frames_end = torn - report.preallocated_bytes as usize;
        let mut frame_next = Vec::new();
        layout::encode_frame(&records(7, 1)[0], &mut frame_next);
        assert!(frame_next.len() > 150);
        bytes[frames_end..frames_end + 150].copy_from_slice(&frame_next[..150]);
        storage.write_file_durable(&segment, &bytes);
        // The first write keeps the torn bytes in their own file; the second zeroes them.
        storage.fail_append_torn(2, Fault::Eio, zeroed);
        assert!(open(&storage, options(SEGMENT)).is_err(), "zeroed {zeroed}");
        storage.crash_keeping_unsynced_bytes(zeroed);
        let report = verify_storage(&mut storage.clone()).unwrap();
        // Torn bytes run to the last non-zero byte the zeroing did not reach.
        let torn_expected = match frame_next[..150].iter().rposition(|&byte| byte != 0) {
            Some(last) if last >= zeroed => last as u64 + 1,
            _ => 0,
        };
        assert_eq!(report.torn_tail_bytes, torn_expected, "zeroed {zeroed}");
        assert!(!report.torn_segment);
        let (mut wal, recovered) = open(&storage, options(SEGMENT)).unwrap();
        assert_eq!(recovered.records, records(1, 6), "zeroed {zeroed}");
        assert_eq!(
            len(&storage, &segment),
            torn,
            "the segment keeps its length"
        );
        wal.append(&records(7, 1)).unwrap();
        drop(wal);
        let report = verify_storage(&mut storage.clone()).unwrap();
        assert!(report.is_clean(), "zeroed {zeroed}: {report:?}");
        let (_, recovered) = open(&storage, options(SEGMENT)).unwrap();
        assert_eq!(recovered.records, records(1, 7), "zeroed {zeroed}");
    }
}

/// A fault at every write and every sync of a run that writes spares and rotates onto
/// them, then a crash (keeping a part of the last write): every acknowledged record
/// survives. The log then goes on (reusing whatever spare it kept) through more
/// rotations and a second crash, and still loses nothing. Run twice: with renames
/// durable at the next directory sync, and durable at once (as ext4 may make them).
#[test]
fn a_fault_at_any_write_or_sync_around_spares_loses_nothing_acknowledged() {
    let early_renames = std::cell::Cell::new(false);
    let run = |arm: &dyn Fn(&FaultyStorage), tear: usize| {
        let storage = FaultyStorage::new();
        storage.set_renames_durable_at_once(early_renames.get());
        let (mut wal, _) = open(&storage, options(1024)).unwrap();
        arm(&storage);
        let mut acked: Vec<LogRecord> = Vec::new();
        let mut in_flight = Vec::new();
        for step in 0..30u64 {
            let group = records(acked.len() as u64 + 1, 1 + step % 3);
            if wal.append(&group).is_err() {
                in_flight = group;
                break;
            }
            acked.extend_from_slice(&group);
            while wal.spare_wanted() && wal.write_spare_step(700).is_ok() {}
        }
        drop(wal);
        storage.crash_keeping_unsynced_bytes(tear);
        let (mut wal, recovered) = open(&storage, options(1024)).unwrap();
        assert_eq!(recovered.records[..acked.len()], acked[..]);
        let extra = &recovered.records[acked.len()..];
        assert_eq!(extra, &in_flight[..extra.len()]);
        acked.extend_from_slice(extra);
        for step in 0..20u64 {
            let group = records(acked.len() as u64 + 1, 1 + step % 3);
            wal.append(&group).unwrap();
            acked.extend_from_slice(&group);
            while wal.spare_wanted() && wal.write_spare_step(700).is_ok() {}
        }
        drop(wal);
        storage.crash();
        let (_, recovered) = open(&storage, options(1024)).unwrap();
        assert_eq!(recovered.records, acked, "after the second crash");
    };
    let (writes, syncs, dir_syncs) = {
        let storage = FaultyStorage::new();
        let (mut wal, _) = open(&storage, options(1024)).unwrap();
        for step in 0..30u64 {
            wal.append(&records(wal.next_sequence(), 1 + step % 3))
                .unwrap();
            write_spare(&mut wal);
        }
        assert!(
            segment_names(&storage).len() > 5,
            "the run rotates onto spares"
        );
        let (writes, syncs) = storage.counts();
        (writes, syncs, storage.dir_syncs())
    };
    for early in [false, true] {
        early_renames.set(early);
        for nth in 1..=writes + 1 {
            for tear in [0, 40, 5000] {
                run(&|s| s.fail_append_torn(nth, Fault::Eio, tear / 2), tear);
            }
        }
        for nth in 1..=syncs + 1 {
            run(&|s| s.fail_sync(nth, Fault::Eio), 100);
        }
        for nth in 1..=dir_syncs + 1 {
            run(&|s| s.fail_sync_dir(nth, Fault::Eio), 100);
        }
    }
}

#[test]
fn real_files_are_written_in_place_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let written = records(1, 300);
    {
        let (mut wal, _) = Wal::open(dir.path(), options(8 * 1024)).unwrap();
        for chunk in written.chunks(1) {
            wal.append(chunk).unwrap();
            write_spare(&mut wal);
        }
    }
    let mut lens = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if layout::parse_segment_name(&name).is_some_and(|first| first > 1) {
            lens.push(entry.metadata().unwrap().len());
        }
    }
    assert!(lens.len() > 3);
    assert!(lens.iter().all(|&len| len == 8 * 1024), "{lens:?}");
    let (wal, recovered) = Wal::open(dir.path(), options(8 * 1024)).unwrap();
    assert_eq!(recovered.records, written);
    assert!(wal.preallocated_bytes_left() > 0);
    let report = tally_log::verify(dir.path()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.records, 300);
    assert!(report.preallocated_bytes >= wal.preallocated_bytes_left());
}
