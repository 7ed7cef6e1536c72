//! Recovery: round trips across rotations, torn tails, and one test per corruption shape.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use tally_log::faulty::FaultyStorage;
use tally_log::layout::{self, FRAME_HEADER_SIZE};
use tally_log::{LogError, Wal, verify_storage};
use tally_types::codec::RECORD_SIZE;

fn expect_corrupt(
    result: Result<(Wal, tally_log::Recovered), LogError>,
    file_name: &str,
    offset_expected: u64,
) -> String {
    match result {
        Err(LogError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file.file_name().unwrap(), file_name, "{reason}");
            assert_eq!(offset, offset_expected, "{reason}");
            let message = LogError::Corrupt {
                file,
                offset,
                reason,
            }
            .to_string();
            assert!(message.contains(file_name) && message.contains(&offset_expected.to_string()));
            message
        }
        Err(other) => panic!("expected Corrupt in {file_name} at {offset_expected}, got {other}"),
        Ok(_) => panic!("expected Corrupt in {file_name} at {offset_expected}, open succeeded"),
    }
}

#[test]
fn many_batches_round_trip_across_segment_rotations() {
    let written = records(1, 300);
    let storage = build_log(&written, 7, 4096);
    assert!(
        segment_names(&storage).len() >= 10,
        "small segments rotate often"
    );
    let (wal, recovered) = open(&storage, options(4096)).unwrap();
    assert_eq!(recovered.records, written);
    assert_eq!(recovered.torn_tail_bytes_cut, 0);
    assert!(recovered.snapshot.is_none());
    assert_eq!(wal.next_sequence(), 301);

    let report = verify_storage(&mut storage.clone()).unwrap();
    assert_eq!(report.records, 300);
    assert_eq!(report.segments as usize, segment_names(&storage).len());
    assert_eq!(
        report.events,
        written.iter().map(|r| r.batch.len() as u64).sum::<u64>()
    );
    assert_eq!((report.sequence_first, report.sequence_last), (1, 300));
    assert!(report.is_clean());
}

#[test]
fn appends_continue_after_reopen_and_a_group_never_spans_segments() {
    let storage = build_log(&records(1, 40), 40, 1024);
    let (mut wal, recovered) = open(&storage, options(1024)).unwrap();
    assert_eq!(recovered.records.len(), 40);
    wal.append(&records(41, 10)).unwrap();
    drop(wal);
    let (_, recovered) = open(&storage, options(1024)).unwrap();
    assert_eq!(recovered.records, records(1, 50));
    // The first group (40 records, far past 1 KiB) sits whole in segment 1.
    assert_eq!(segment_names(&storage)[1], layout::segment_name(41));
}

#[test]
fn real_files_round_trip_with_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let written = records(1, 120);
    {
        let (mut wal, recovered) = Wal::open(dir.path(), options(8 * 1024)).unwrap();
        assert!(recovered.records.is_empty());
        for chunk in written.chunks(5) {
            wal.append(chunk).unwrap();
        }
    }
    let (wal, recovered) = Wal::open(dir.path(), options(8 * 1024)).unwrap();
    assert_eq!(recovered.records, written);
    assert_eq!(wal.next_sequence(), 121);
    let report = tally_log::verify(dir.path()).unwrap();
    assert!(report.segments > 3);
    assert_eq!(report.records, 120);
}

/// Bytes up to and including the last non-zero one: what recovery counts as torn
/// (zeros after a torn write are space the write did not reach).
fn torn_extent(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last as u64 + 1)
}

/// The last record has 3 events, so its frame is 48 + 384 bytes.
fn log_with_known_last_frame() -> (Vec<tally_log::LogRecord>, usize) {
    let mut written = records(1, 20);
    written.push(record(21, 3));
    (written, FRAME_HEADER_SIZE + 3 * RECORD_SIZE)
}

#[test]
fn torn_tail_at_every_byte_of_the_last_frame_recovers_exactly_the_prior_records() {
    let (written, frame_len) = log_with_known_last_frame();
    let original = build_log(&written, 1, 2048);
    let last = segment_names(&original).pop().unwrap();
    let full = original.read_file(&last).unwrap();
    for kept in 0..frame_len {
        let storage = copy_storage(&original);
        let frame_start = full.len() - frame_len;
        storage.write_file_durable(&last, &full[..frame_start + kept]);
        let (mut wal, recovered) = open(&storage, options(2048)).unwrap();
        assert_eq!(
            recovered.records,
            written[..20],
            "kept {kept} bytes of the last frame"
        );
        assert_eq!(
            recovered.torn_tail_bytes_cut,
            torn_extent(&full[frame_start..frame_start + kept])
        );
        assert_eq!(wal.next_sequence(), 21);
        // The cut is durable and the log continues cleanly from it.
        wal.append(&written[20..]).unwrap();
        storage.crash();
        let (_, recovered) = open(&storage, options(2048)).unwrap();
        assert_eq!(recovered.records, written);
        assert_eq!(recovered.torn_tail_bytes_cut, 0);
    }
}

#[test]
fn torn_tail_at_every_byte_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let (written, frame_len) = log_with_known_last_frame();
    {
        let (mut wal, _) = Wal::open(dir.path(), options(1 << 20)).unwrap();
        wal.append(&written).unwrap();
    }
    let segment = dir.path().join(layout::segment_name(1));
    let full = std::fs::read(&segment).unwrap();
    let full_len = full.len() as u64;
    let frame_start = full.len() - frame_len;
    for kept in 0..frame_len as u64 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.set_len(full_len - frame_len as u64 + kept).unwrap();
        drop(file);
        let (mut wal, recovered) = Wal::open(dir.path(), options(1 << 20)).unwrap();
        assert_eq!(recovered.records, written[..20], "kept {kept}");
        let extent = torn_extent(&full[frame_start..frame_start + kept as usize]);
        assert_eq!(recovered.torn_tail_bytes_cut, extent);
        // The cut bytes are kept in their own file, never dropped.
        let copy = dir.path().join(tally_log::torn_tail_name(
            &layout::segment_name(1),
            frame_start as u64,
        ));
        if extent > 0 {
            assert_eq!(recovered.torn_tail_kept.as_deref(), Some(copy.as_path()));
            let end = frame_start + extent as usize;
            assert_eq!(std::fs::read(&copy).unwrap(), full[frame_start..end]);
        } else {
            assert_eq!(recovered.torn_tail_kept, None, "kept {kept}");
        }
        wal.append(&written[20..]).unwrap();
        drop(wal);
        assert_eq!(std::fs::read(&segment).unwrap(), full, "kept {kept}");
    }
}

#[test]
fn garbage_tail_is_cut() {
    let written = records(1, 10);
    for tail in [
        vec![0xA5; 100],
        b"TLFR garbage".to_vec(),
        [&[0u8; 64][..], b"x"].concat(),
    ] {
        let storage = build_log(&written, 3, 1 << 20);
        let name = layout::segment_name(1);
        let mut bytes = storage.read_file(&name).unwrap();
        bytes.extend_from_slice(&tail);
        storage.write_file_durable(&name, &bytes);
        let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
        assert_eq!(recovered.records, written);
        assert_eq!(recovered.torn_tail_bytes_cut, tail.len() as u64);
        let copy = tally_log::torn_tail_name(&name, (bytes.len() - tail.len()) as u64);
        assert_eq!(storage.read_file(&copy).unwrap(), tail, "kept, not dropped");
    }
}

/// A flipped bit in the last frame after a crash reads as a torn write: the frame is
/// cut, but its bytes are kept, next to the segments.
#[test]
fn a_damaged_last_frame_is_cut_but_its_bytes_are_kept() {
    let (written, frame_len) = log_with_known_last_frame();
    let storage = build_log(&written, 1, 1 << 20);
    let name = layout::segment_name(1);
    let mut bytes = storage.read_file(&name).unwrap();
    let end = bytes.len();
    let frame_start = end - frame_len;
    bytes[frame_start + 100] ^= 0x10;
    storage.write_file_durable(&name, &bytes);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records, written[..20]);
    // Up to its last non-zero byte: zeros after it read as space never written.
    let kept = frame_start + torn_extent(&bytes[frame_start..end]) as usize;
    let copy = tally_log::torn_tail_name(&name, frame_start as u64);
    assert_eq!(storage.read_file(&copy).unwrap(), bytes[frame_start..kept]);
    assert!(recovered.torn_tail_kept.is_some());
}

#[test]
fn zeroed_tail_is_preallocated_space_that_the_next_frames_overwrite() {
    let written = records(1, 10);
    let storage = build_log(&written, 3, 1 << 20);
    let name = layout::segment_name(1);
    let mut bytes = storage.read_file(&name).unwrap();
    let frames_end = bytes.len();
    bytes.resize(frames_end + 4096, 0);
    storage.write_file_durable(&name, &bytes);

    let report = verify_storage(&mut storage.clone()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.preallocated_bytes, 4096);
    let (mut wal, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records, written);
    assert_eq!(
        recovered.torn_tail_bytes_cut, 0,
        "zeros are not a torn tail"
    );
    assert_eq!(wal.preallocated_bytes_left(), 4096);

    let more = records(11, 3);
    wal.append(&more).unwrap();
    let after = storage.read_file(&name).unwrap();
    assert_eq!(
        after.len(),
        frames_end + 4096,
        "written in place, not appended"
    );
    assert!(wal.preallocated_bytes_left() < 4096);
    drop(wal);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records, records(1, 13));
}

#[test]
fn bad_crc_in_the_final_frame_with_nothing_after_is_a_torn_tail() {
    let written = records(1, 10);
    let storage = build_log(&written, 1, 1 << 20);
    let name = layout::segment_name(1);
    let bytes = storage.read_file(&name).unwrap();
    let last = *frame_offsets(&bytes).last().unwrap();
    storage.flip_bit(&name, bytes.len() - 1, 0);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records, written[..9]);
    assert_eq!(recovered.torn_tail_bytes_cut, (bytes.len() - last) as u64);
}

#[test]
fn bit_flip_in_a_middle_frame_body_stops_open_naming_file_and_offset() {
    let storage = build_log(&records(1, 10), 1, 1 << 20);
    let name = layout::segment_name(1);
    let offsets = frame_offsets(&storage.read_file(&name).unwrap());
    // Record 4 has 28 % 13 = 2 events; flip a bit inside its body.
    storage.flip_bit(&name, offsets[3] + FRAME_HEADER_SIZE + 5, 3);
    let message = expect_corrupt(open(&storage, options(1 << 20)), &name, offsets[3] as u64);
    assert!(message.contains("valid frame follows"), "{message}");
    assert!(verify_storage(&mut storage.clone()).is_err());
}

#[test]
fn bit_flip_in_a_middle_frame_header_stops_open() {
    let storage = build_log(&records(1, 10), 1, 1 << 20);
    let name = layout::segment_name(1);
    let offsets = frame_offsets(&storage.read_file(&name).unwrap());
    // The size field: without the header CRC this would look like a short tail.
    storage.flip_bit(&name, offsets[5] + 6, 1);
    expect_corrupt(open(&storage, options(1 << 20)), &name, offsets[5] as u64);
}

#[test]
fn bad_frame_in_a_segment_that_is_not_the_last_stops_open() {
    let storage = build_log(&records(1, 60), 1, 1024);
    let first = layout::segment_name(1);
    let bytes = storage.read_file(&first).unwrap();
    let last_frame = *frame_offsets(&bytes).last().unwrap();
    storage.flip_bit(&first, bytes.len() - 1, 7);
    let message = expect_corrupt(open(&storage, options(1024)), &first, last_frame as u64);
    assert!(message.contains("not the last"), "{message}");
}

#[test]
fn bit_flip_in_a_segment_header_stops_open() {
    let storage = build_log(&records(1, 60), 1, 1024);
    let names = segment_names(&storage);
    assert!(names.len() >= 3);
    for name in [&names[1], names.last().unwrap()] {
        let damaged = copy_storage(&storage);
        damaged.flip_bit(name, 20, 0); // first sequence
        expect_corrupt(open(&damaged, options(1024)), name, 0);
        let damaged = copy_storage(&storage);
        damaged.flip_bit(name, 0, 0); // magic
        expect_corrupt(open(&damaged, options(1024)), name, 0);
    }
}

#[test]
fn header_and_name_that_disagree_stop_open() {
    let storage = build_log(&records(1, 5), 5, 1 << 20);
    // A segment named for sequence 6 whose header claims 7.
    let mut bytes = layout::encode_segment_header(7).to_vec();
    layout::encode_frame(&record(7, 1), &mut bytes);
    storage.write_file_durable(&layout::segment_name(6), &bytes);
    expect_corrupt(
        open(&storage, options(1 << 20)),
        &layout::segment_name(6),
        16,
    );
}

#[test]
fn torn_header_of_a_fresh_last_segment_is_removed_and_recreated() {
    let written = records(1, 30);
    let storage = build_log(&written, 1, 1024);
    // A crash during rotation: the new segment exists but its header is cut short.
    let next = layout::segment_name(31);
    storage.write_file_durable(&next, &layout::encode_segment_header(31)[..30]);
    let (mut wal, recovered) = open(&storage, options(1024)).unwrap();
    assert_eq!(recovered.records, written);
    let header = layout::encode_segment_header(31);
    assert_eq!(recovered.torn_tail_bytes_cut, torn_extent(&header[..30]));
    assert!(recovered.torn_segment_removed);
    wal.append(&records(31, 1)).unwrap();
    let (_, recovered) = open(&storage, options(1024)).unwrap();
    assert_eq!(recovered.records, records(1, 31));
}

#[test]
fn a_sequence_gap_inside_a_segment_stops_open() {
    let storage = build_log(&records(1, 5), 5, 1 << 20);
    let name = layout::segment_name(1);
    let mut bytes = storage.read_file(&name).unwrap();
    let gap_at = bytes.len();
    layout::encode_frame(&record(7, 1), &mut bytes);
    storage.write_file_durable(&name, &bytes);
    let message = expect_corrupt(open(&storage, options(1 << 20)), &name, gap_at as u64);
    assert!(message.contains("expected 6"), "{message}");
}

#[test]
fn a_missing_middle_segment_stops_open_naming_it() {
    let storage = build_log(&records(1, 60), 1, 1024);
    let names = segment_names(&storage);
    let missing = names[2].clone();
    storage.remove_file_durable(&missing);
    match open(&storage, options(1024)) {
        Err(LogError::MissingSegment {
            file,
            first_sequence,
            reason,
        }) => {
            assert_eq!(file.file_name().unwrap(), missing.as_str(), "{reason}");
            assert_eq!(layout::segment_name(first_sequence), missing);
        }
        other => panic!("expected MissingSegment, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        verify_storage(&mut storage.clone()),
        Err(LogError::MissingSegment { .. })
    ));
}

#[test]
fn a_missing_first_segment_stops_open() {
    let storage = build_log(&records(1, 60), 1, 1024);
    storage.remove_file_durable(&layout::segment_name(1));
    let error = open(&storage, options(1024)).err().unwrap();
    assert!(
        matches!(
            error,
            LogError::MissingSegment {
                first_sequence: 1,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains(&layout::segment_name(1)));
}

#[test]
fn overlapping_segments_stop_open() {
    let storage = build_log(&records(1, 10), 10, 1 << 20);
    let mut bytes = layout::encode_segment_header(5).to_vec();
    layout::encode_frame(&record(5, 1), &mut bytes);
    storage.write_file_durable(&layout::segment_name(5), &bytes);
    expect_corrupt(
        open(&storage, options(1 << 20)),
        &layout::segment_name(5),
        16,
    );
}

#[test]
fn a_segment_named_for_sequence_0_stops_open_naming_it() {
    for bytes in [Vec::new(), layout::encode_segment_header(0).to_vec()] {
        let storage = build_log(&records(1, 3), 3, 1 << 20);
        storage.write_file_durable(&layout::segment_name(0), &bytes);
        let message = expect_corrupt(
            open(&storage, options(1 << 20)),
            &layout::segment_name(0),
            0,
        );
        assert!(message.contains("sequences start at 1"), "{message}");
        assert!(matches!(
            verify_storage(&mut storage.clone()),
            Err(LogError::Corrupt { .. })
        ));
    }
}

#[test]
fn files_that_are_not_ours_are_left_alone() {
    let storage = build_log(&records(1, 3), 3, 1 << 20);
    storage.write_file_durable("LOCK", b"");
    storage.write_file_durable("notes.txt", b"hello");
    storage.write_file_durable("wal-1.log", b"not a 20-digit name");
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records.len(), 3);
    assert!(storage.file_names().contains(&"notes.txt".to_string()));
}

#[test]
fn verify_reports_a_torn_tail_without_repairing_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), options(1 << 20)).unwrap();
        wal.append(&records(1, 4)).unwrap();
    }
    let segment = dir.path().join(layout::segment_name(1));
    let len = std::fs::metadata(&segment).unwrap().len();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&segment, &bytes).unwrap();
    let report = tally_log::verify(dir.path()).unwrap();
    assert_eq!(report.torn_tail_bytes, 3);
    assert!(!report.is_clean());
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        len + 3,
        "verify changed nothing"
    );
    assert!(tally_log::verify(Path::new("/nonexistent/tally")).is_err());
}

#[test]
fn format_is_pinned() {
    // Pins the on-disk bytes: if this changes, FORMAT_VERSION must change too. Hashed
    // with FNV-1a, not CRC32C: a CRC over bytes that end in their own CRC is the same
    // constant whatever they hold, so a CRC pin would miss every header change.
    let mut bytes = layout::encode_segment_header(1).to_vec();
    layout::encode_frame(&record(1, 2), &mut bytes);
    layout::encode_frame(&record(2, 1), &mut bytes);
    assert_eq!(bytes.len(), 64 + 48 + 256 + 48 + 128);
    assert_eq!(&bytes[8..10], &[2, 0], "format version 2");
    assert_eq!(fnv1a(&bytes), PINNED_FNV1A, "on-disk format changed");
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

const PINNED_FNV1A: u64 = 497_543_969_302_867_074;

#[test]
fn a_version_1_segment_still_reads() {
    let written = records(1, 6);
    let storage = build_log(&written, 2, 1 << 20);
    let name = layout::segment_name(1);
    let mut bytes = storage.read_file(&name).unwrap();
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    storage.write_file_durable(&name, &bytes);
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records, written);

    bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    storage.write_file_durable(&name, &bytes);
    let error = open(&storage, options(1 << 20)).unwrap_err().to_string();
    assert!(error.contains("format version 3"), "{error}");
}

/// After a clean close, a flipped bit anywhere in the newest frame is damage, not a
/// torn write: open and verify stop, naming the segment and the frame's offset. Without
/// the close (a crash), the same bytes are a torn tail and are cut, as before.
#[test]
fn after_a_clean_close_damage_to_the_newest_frame_stops_open() {
    let written = records(1, 8);
    let storage = build_log(&written, 2, 1 << 20);
    let crashed = copy_storage(&storage);
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.close().unwrap();
    assert!(
        storage
            .file_names()
            .contains(&layout::CLOSE_MARKER_NAME.to_string())
    );
    let name = layout::segment_name(1);
    let clean = storage.read_file(&name).unwrap();
    let last = *frame_offsets(&clean).last().unwrap();
    for flip in [
        last,
        last + 20,
        last + FRAME_HEADER_SIZE + 3,
        clean.len() - 1,
    ] {
        for (store, closed) in [
            (copy_storage(&storage), true),
            (copy_storage(&crashed), false),
        ] {
            store.flip_bit(&name, flip, 2);
            if closed {
                let reason = expect_corrupt(open(&store, options(1 << 20)), &name, last as u64);
                assert!(reason.contains("closed cleanly at sequence 8"), "{reason}");
                assert!(
                    verify_storage(&mut store.clone()).is_err(),
                    "flip at {flip}"
                );
            } else {
                let (_, recovered) = open(&store, options(1 << 20)).unwrap();
                assert_eq!(recovered.records, written[..7], "flip at {flip}");
            }
        }
    }
}

/// The marker of an earlier clean close stays true while the log grows: a later crash
/// that tears the tail is cut as usual; a close writes a newer marker; a marker that
/// is itself damaged is an error naming it; a marker whose rename never reached the
/// disk is a temp file, removed.
#[test]
fn close_markers_stay_true_and_are_checked() {
    let storage = build_log(&records(1, 4), 1, 1 << 20);
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.close().unwrap();
    let (mut wal, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records.len(), 4);
    wal.append(&records(5, 2)).unwrap();
    storage.fail_sync(1, tally_log::faulty::Fault::Eio);
    assert!(wal.append(&records(7, 1)).is_err());
    drop(wal);
    storage.crash_keeping_unsynced_bytes(100);
    let (mut wal, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(
        recovered.records,
        records(1, 6),
        "a stale marker stays true"
    );
    wal.close().unwrap();
    let marker = storage.read_file(layout::CLOSE_MARKER_NAME).unwrap();
    assert_eq!(layout::decode_close_marker(&marker), Ok(6));

    let damaged = copy_storage(&storage);
    damaged.flip_bit(layout::CLOSE_MARKER_NAME, 17, 0);
    expect_corrupt(
        open(&damaged, options(1 << 20)),
        layout::CLOSE_MARKER_NAME,
        0,
    );

    // A close whose directory sync failed: the rename may not be durable, and the
    // temp file (if that is what the crash left) is removed at open.
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    storage.fail_sync_dir(1, tally_log::faulty::Fault::Eio);
    assert!(wal.close().is_err());
    storage.crash();
    let (_, recovered) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recovered.records, records(1, 6));
    assert!(
        !storage
            .file_names()
            .contains(&layout::CLOSE_MARKER_TEMP_NAME.to_string())
    );
}

/// Fourteen frames of about 1 MiB in one segment: recovery reads a segment a few MiB at
/// a time, letting go of what it has checked, so these cross several of its steps.
fn log_of_large_frames() -> (Vec<tally_log::LogRecord>, FaultyStorage, String) {
    let written: Vec<_> = (1..=14).map(|sequence| record(sequence, 8_000)).collect();
    let storage = build_log(&written, 1, 64 << 20);
    (written, storage, layout::segment_name(1))
}

#[test]
fn a_long_zero_tail_after_large_frames_is_preallocated_space() {
    let (written, storage, name) = log_of_large_frames();
    let mut bytes = storage.read_file(&name).unwrap();
    assert!(bytes.len() > 12 << 20);
    bytes.resize(bytes.len() + (9 << 20) + 5, 0);
    storage.write_file_durable(&name, &bytes);
    let (wal, recovered) = open(&storage, options(64 << 20)).unwrap();
    assert_eq!(recovered.records, written);
    assert_eq!(recovered.torn_tail_bytes_cut, 0);
    assert_eq!(wal.preallocated_bytes_left(), (9 << 20) + 5);
    let report = verify_storage(&mut storage.clone()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_byte_far_into_a_zero_tail_is_a_torn_tail_judged_on_the_rest() {
    let (written, storage, name) = log_of_large_frames();
    let mut bytes = storage.read_file(&name).unwrap();
    let frames_end = bytes.len();
    // Zeros for more than one read step, a stray byte, zeros again.
    bytes.resize(frames_end + (6 << 20), 0);
    bytes.push(0x5A);
    bytes.resize(bytes.len() + (1 << 20), 0);
    storage.write_file_durable(&name, &bytes);
    let (_, recovered) = open(&storage, options(64 << 20)).unwrap();
    assert_eq!(recovered.records, written);
    assert_eq!(recovered.torn_tail_bytes_cut, (6 << 20) + 1);
    let copy = tally_log::torn_tail_name(&name, frames_end as u64);
    let kept = storage.read_file(&copy).unwrap();
    assert_eq!(kept.len(), (6 << 20) + 1);
    assert_eq!(kept.last(), Some(&0x5A));
}

#[test]
fn damage_past_the_first_read_steps_names_the_frame_and_a_later_one() {
    let (_, storage, name) = log_of_large_frames();
    let offsets = frame_offsets(&storage.read_file(&name).unwrap());
    assert!(offsets[10] > 8 << 20);
    storage.flip_bit(&name, offsets[10] + FRAME_HEADER_SIZE + 50_000, 1);
    let message = expect_corrupt(open(&storage, options(64 << 20)), &name, offsets[10] as u64);
    assert!(
        message.contains(&format!("valid frame follows at byte {}", offsets[11])),
        "{message}"
    );
}
