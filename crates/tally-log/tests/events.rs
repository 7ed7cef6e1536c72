//! The change-event journal: round trips, torn tails, damage, rolls, retention, and
//! readers running next to a writer.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use tally_log::LogError;
use tally_log::events::{
    EventJournal, EventReader, FRAME_HEADER_SIZE, JournalOptions, SEGMENT_HEADER_SIZE,
    journal_segment_name,
};
use tally_types::{Account, ChangeEvent, ChangeKind, Transfer};

/// A deterministic event at `timestamp`: an account creation at every timestamp ending
/// in 5, a single-phase transfer otherwise, every field derived from the timestamp and,
/// for timestamps below 4,096, encoded in the same number of bytes.
fn event(timestamp: u64) -> ChangeEvent {
    let account = |id: u128| Account {
        id,
        ledger: 840,
        code: 1,
        credits_posted: u128::from(timestamp) * 3 + 100_000,
        timestamp: timestamp + 100_000,
        ..Account::default()
    };
    if timestamp % 10 == 5 {
        return ChangeEvent::account_created(Account {
            id: u128::from(timestamp),
            ledger: 840,
            code: 1,
            timestamp,
            ..Account::default()
        });
    }
    ChangeEvent {
        timestamp,
        kind: ChangeKind::SinglePhase,
        transfer: Transfer {
            id: (u128::from(timestamp) | 1 << 12) << 64,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: u128::from(timestamp) + 100_000,
            ledger: 840,
            code: 1,
            timestamp,
            ..Transfer::default()
        },
        debit_account: account(1),
        credit_account: account(2),
    }
}

/// Events `first..first + count`, timestamps 10 apart (gaps like expiries leave).
fn events(first: u64, count: u64) -> Vec<ChangeEvent> {
    (0..count).map(|i| event(first + 10 * i)).collect()
}

/// The bytes of one frame holding `events`.
fn frame_bytes(events: &[ChangeEvent]) -> u64 {
    let mut body = Vec::new();
    let mut previous = events[0].timestamp;
    for event in events {
        tally_types::encode_change(event, previous, &mut body);
        previous = event.timestamp;
    }
    (FRAME_HEADER_SIZE + body.len()) as u64
}

fn options(segment_bytes_max: u64, retention_bytes: u64) -> JournalOptions {
    JournalOptions {
        segment_bytes_max,
        retention_bytes,
    }
}

fn read_all(dir: &Path, timestamp_min: u64) -> Vec<ChangeEvent> {
    EventReader::open(dir)
        .unwrap()
        .read(timestamp_min, usize::MAX)
        .unwrap()
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// FNV-1a 64 of `bytes`: a pin that, unlike a CRC over bytes ending in their own CRC,
/// changes with them.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn journal_format_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = SEGMENT_HEADER_SIZE as u64 + frame_bytes(&events(5, 2));
    let mut journal = EventJournal::open(dir.path(), options(segment_bytes_max, u64::MAX)).unwrap();
    journal.append(&events(5, 2)).unwrap();
    journal.append(&events(70, 3)).unwrap();
    let first = std::fs::read(dir.path().join(journal_segment_name(5))).unwrap();
    let second = std::fs::read(dir.path().join(journal_segment_name(70))).unwrap();
    assert_eq!(
        first.len() as u64,
        SEGMENT_HEADER_SIZE as u64 + frame_bytes(&events(5, 2))
    );
    assert_eq!(&first[..8], b"TALLYEVJ");
    assert_eq!(
        &second[24..32],
        &15u64.to_le_bytes(),
        "previous segment's last"
    );
    let frame = &second[SEGMENT_HEADER_SIZE..];
    assert_eq!(&frame[..4], b"TEVF");
    assert_eq!(&frame[8..16], &70u64.to_le_bytes());
    assert_eq!(&frame[16..24], &90u64.to_le_bytes());
    assert_eq!(&frame[24..28], &3u32.to_le_bytes());
    // Changing these bytes needs a new JOURNAL_FORMAT_VERSION.
    assert_eq!(
        (fnv1a(&first), fnv1a(&second)),
        (809238519812282477, 10991357154238464223)
    );
}

#[test]
fn events_round_trip_through_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let written: Vec<ChangeEvent> = [events(10, 3), events(100, 1), events(200, 50)].concat();
    {
        let mut journal = EventJournal::open(&path, JournalOptions::default()).unwrap();
        assert_eq!(journal.last_timestamp(), None);
        journal.append(&written[..3]).unwrap();
        journal.append(&[]).unwrap();
        journal.append(&written[3..4]).unwrap();
        assert!(journal.bytes_not_written_back() > 0);
        // Starting the write-back makes nothing durable, but the bytes are on their way.
        journal.start_writeback();
        assert_eq!(journal.bytes_not_written_back(), 0);
        journal.append(&written[4..]).unwrap();
        assert_eq!(journal.bytes_not_written_back(), frame_bytes(&written[4..]));
        journal.sync().unwrap();
        assert_eq!(journal.bytes_not_written_back(), 0);
    }
    let journal = EventJournal::open(&path, JournalOptions::default()).unwrap();
    assert_eq!(journal.bytes_not_written_back(), 0);
    assert_eq!(journal.first_timestamp(), Some(10));
    assert_eq!(
        journal.last_timestamp(),
        Some(written.last().unwrap().timestamp)
    );
    assert_eq!(read_all(&path, 0), written);
    assert_eq!(read_all(&path, 101), written[4..]);
    assert_eq!(
        read_all(&path, written.last().unwrap().timestamp + 1),
        vec![]
    );
    assert_eq!(read_all(&dir.path().join("missing"), 0), vec![]);
}

#[test]
#[should_panic]
fn an_append_that_goes_back_in_time_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = EventJournal::open(dir.path(), JournalOptions::default()).unwrap();
    journal.append(&events(100, 2)).unwrap();
    journal.append(&events(110, 1)).unwrap();
}

#[test]
fn a_torn_or_damaged_last_frame_is_cut_at_every_byte() {
    let source = tempfile::tempdir().unwrap();
    {
        let mut journal = EventJournal::open(source.path(), JournalOptions::default()).unwrap();
        journal.append(&events(10, 2)).unwrap();
        journal.append(&events(1000, 1)).unwrap();
    }
    let segment = source.path().join(journal_segment_name(10));
    let whole = std::fs::read(&segment).unwrap();
    let last_frame_start = SEGMENT_HEADER_SIZE as u64 + frame_bytes(&events(10, 2));
    assert_eq!(
        whole.len() as u64,
        last_frame_start + frame_bytes(&events(1000, 1))
    );
    for end in last_frame_start..whole.len() as u64 {
        for damage in [Damage::Torn, Damage::Flipped] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(journal_segment_name(10));
            match damage {
                Damage::Torn => std::fs::write(&path, &whole[..end as usize]).unwrap(),
                Damage::Flipped => {
                    std::fs::write(&path, &whole).unwrap();
                    flip_bit(&path, end);
                }
            }
            let mut journal = EventJournal::open(dir.path(), JournalOptions::default()).unwrap();
            assert_eq!(journal.last_timestamp(), Some(20), "{damage:?} at {end}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_frame_start);
            journal.append(&events(1000, 1)).unwrap();
            assert_eq!(
                read_all(dir.path(), 0),
                [events(10, 2), events(1000, 1)].concat()
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Torn,
    Flipped,
}

#[test]
fn a_newest_segment_with_a_torn_header_and_nothing_else_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut journal = EventJournal::open(dir.path(), options(1, u64::MAX)).unwrap();
        journal.append(&events(10, 1)).unwrap();
        journal.append(&events(20, 1)).unwrap();
    }
    let newest = dir.path().join(journal_segment_name(20));
    let header = std::fs::read(&newest).unwrap()[..SEGMENT_HEADER_SIZE - 5].to_vec();
    std::fs::write(&newest, header).unwrap();
    let mut journal = EventJournal::open(dir.path(), options(1, u64::MAX)).unwrap();
    assert!(!newest.exists());
    assert_eq!(journal.last_timestamp(), Some(10));
    journal.append(&events(30, 1)).unwrap();
    assert_eq!(
        read_all(dir.path(), 0),
        [events(10, 1), events(30, 1)].concat()
    );
}

#[test]
fn damage_in_an_older_segment_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut journal = EventJournal::open(dir.path(), options(1, u64::MAX)).unwrap();
        for first in [10, 100, 200] {
            journal.append(&events(first, 2)).unwrap();
        }
    }
    let older = dir.path().join(journal_segment_name(100));
    // A flipped bit in the body of an older frame: the reader refuses it.
    let body_offset = SEGMENT_HEADER_SIZE as u64 + FRAME_HEADER_SIZE as u64 + 3;
    flip_bit(&older, body_offset);
    let error = EventReader::open(dir.path())
        .unwrap()
        .read(0, usize::MAX)
        .unwrap_err();
    let LogError::Corrupt { file, offset, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!((file, *offset), (&older, SEGMENT_HEADER_SIZE as u64));
    assert_eq!(
        read_all(dir.path(), 200),
        events(200, 2),
        "later segments still read"
    );
    // A flipped bit in an older segment's header: opening the journal refuses it.
    flip_bit(&older, body_offset);
    flip_bit(&older, 20);
    let error = EventJournal::open(dir.path(), options(1, u64::MAX)).unwrap_err();
    let LogError::Corrupt { file, offset, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!((file, *offset), (&older, 0));
    assert!(
        error
            .to_string()
            .contains("events-00000000000000000100.log")
    );
}

#[test]
fn segments_roll_and_retention_deletes_the_oldest_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Every one-event frame here has the same size (see `event`).
    let segment_bytes_max = SEGMENT_HEADER_SIZE as u64 + 3 * frame_bytes(&events(100, 1));
    let retention_bytes = 3 * segment_bytes_max;
    let mut journal =
        EventJournal::open(dir.path(), options(segment_bytes_max, retention_bytes)).unwrap();
    for i in 0..30 {
        journal.append(&events(100 + 10 * i, 1)).unwrap();
        let segments = segment_paths(dir.path());
        let bytes: u64 = segments
            .iter()
            .map(|path| std::fs::metadata(path).unwrap().len())
            .sum();
        assert!(bytes <= retention_bytes, "after {i}: {bytes}");
        assert!(segments.len() <= 3);
    }
    journal.sync().unwrap();
    // 30 events, 3 a segment, 3 segments kept: events 21..30 are left.
    let first = journal.first_timestamp().unwrap();
    assert_eq!(first, 100 + 10 * 21);
    assert_eq!(read_all(dir.path(), first), events(first, 9));
    // The last deleted event is `first - 10`: from there on, events may be gone.
    assert_eq!(read_all(dir.path(), first - 9), events(first, 9));
    let error = EventReader::open(dir.path())
        .unwrap()
        .read(first - 10, 10)
        .unwrap_err();
    assert!(
        matches!(error, LogError::EventsRetired { timestamp_min, next_timestamp_kept, .. }
            if timestamp_min == first - 10 && next_timestamp_kept == first),
        "{error}"
    );
    let reopened = EventJournal::open(dir.path(), options(segment_bytes_max, retention_bytes));
    assert_eq!(reopened.unwrap().first_timestamp(), Some(first));
}

/// A journal of frames of 1 to 4 events (timestamps 100, 110, ...), over segments of
/// about three frames, cut at every timestamp in and around it: every event after the
/// cut is gone (its frames' bytes kept aside), every one at or before it is still read
/// in order, and the journal appends after the cut.
#[test]
fn a_journal_cut_after_a_timestamp_keeps_exactly_the_events_before() {
    let frames: Vec<Vec<ChangeEvent>> = [3, 1, 4, 2, 1, 3, 2, 4]
        .iter()
        .scan(100, |next, &count| {
            let frame = events(*next, count);
            *next += 10 * count;
            Some(frame)
        })
        .collect();
    let all: Vec<ChangeEvent> = frames.concat();
    let segment_bytes_max = SEGMENT_HEADER_SIZE as u64 + 3 * frame_bytes(&events(100, 3));
    let last = all.last().unwrap().timestamp;
    for cut_at in (90..=last + 10).step_by(5) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("events");
        let mut journal = EventJournal::open(&dir, options(segment_bytes_max, u64::MAX)).unwrap();
        for frame in &frames {
            journal.append(frame).unwrap();
        }
        journal.sync().unwrap();
        let (mut journal, cut) = journal.cut_after(cut_at, data.path()).unwrap();
        let before: Vec<ChangeEvent> = all
            .iter()
            .filter(|e| e.timestamp <= cut_at)
            .cloned()
            .collect();
        let after = (all.len() - before.len()) as u64;
        assert_eq!(journal.last_timestamp(), before.last().map(|e| e.timestamp));
        assert_eq!(read_all(&dir, 0), before, "cut at {cut_at}");
        match cut {
            None => assert_eq!(after, 0, "cut at {cut_at}"),
            Some(cut) => {
                assert_eq!(
                    (cut.events, cut.last_before),
                    (after, last),
                    "cut at {cut_at}"
                );
                assert!(
                    std::fs::metadata(&cut.kept).unwrap().len()
                        >= frame_bytes(&all[all.len() - 1..])
                );
            }
        }
        // Reopened, the journal holds the same and appends after the cut.
        drop(journal);
        journal = EventJournal::open(&dir, options(segment_bytes_max, u64::MAX)).unwrap();
        assert_eq!(journal.last_timestamp(), before.last().map(|e| e.timestamp));
        journal.append(&events(last + 20, 2)).unwrap();
        journal.sync().unwrap();
        let mut expected = before.clone();
        expected.extend(events(last + 20, 2));
        assert_eq!(read_all(&dir, 0), expected, "cut at {cut_at}");
    }
}

/// A newest segment left without a frame (its only frame cut at open) does not stop the
/// cut short: the older segment's events past the timestamp go too, and the kept
/// file's name records the journal's last event, for the next open's stamps.
#[test]
fn a_cut_passes_a_newest_segment_without_frames() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("events");
    let segment_bytes_max = SEGMENT_HEADER_SIZE as u64 + 2 * frame_bytes(&events(100, 2));
    let opts = options(segment_bytes_max, u64::MAX);
    let mut journal = EventJournal::open(&dir, opts).unwrap();
    for first in [100, 120, 140] {
        journal.append(&events(first, 2)).unwrap();
    }
    journal.sync().unwrap();
    drop(journal);
    let segments = segment_paths(&dir);
    assert_eq!(segments.len(), 2, "{segments:?}");
    // Damage the newest segment's only frame: the open cuts it.
    flip_bit(
        &segments[1],
        SEGMENT_HEADER_SIZE as u64 + FRAME_HEADER_SIZE as u64 + 3,
    );
    let journal = EventJournal::open(&dir, opts).unwrap();
    assert_eq!(journal.last_timestamp(), Some(130));
    assert_eq!(
        tally_log::events::torn_events_floor(data.path()).unwrap(),
        0
    );
    let (mut journal, cut) = journal.cut_after(115, data.path()).unwrap();
    let cut = cut.expect("a cut");
    assert_eq!((cut.events, cut.last_before), (2, 130));
    assert_eq!(read_all(&dir, 0), events(100, 2));
    assert_eq!(
        tally_log::events::torn_events_floor(data.path()).unwrap(),
        130
    );
    journal.append(&events(140, 1)).unwrap();
    journal.sync().unwrap();
    drop(journal);
    let mut expected = events(100, 2);
    expected.extend(events(140, 1));
    assert_eq!(read_all(&dir, 0), expected);
    assert_eq!(
        EventJournal::open(&dir, opts).unwrap().last_timestamp(),
        Some(140)
    );
}

#[test]
fn a_frame_larger_than_a_segment_gets_one_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = SEGMENT_HEADER_SIZE as u64 + frame_bytes(&events(10, 1)) + 10;
    let mut journal = EventJournal::open(dir.path(), options(segment_bytes_max, u64::MAX)).unwrap();
    journal.append(&events(10, 1)).unwrap();
    journal.append(&events(20, 5)).unwrap();
    journal.append(&events(100, 1)).unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 3);
    assert_eq!(
        read_all(dir.path(), 0),
        [events(10, 6), events(100, 1)].concat()
    );
}

#[test]
fn a_reader_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = EventJournal::open(dir.path(), options(2000, u64::MAX)).unwrap();
    let mut written = Vec::new();
    let mut reader = EventReader::open(dir.path()).unwrap();
    let mut read = Vec::new();
    let mut next = 0;
    for round in 0..20u64 {
        let group = events(10 + 1000 * round, 1 + round % 4);
        journal.append(&group).unwrap();
        written.extend(group);
        loop {
            let got = reader.read(next, 3).unwrap();
            let Some(last) = got.last() else { break };
            next = last.timestamp + 1;
            read.extend(got);
        }
        assert_eq!(read, written);
    }
}

#[test]
fn a_reader_left_behind_by_retention_gets_its_events_then_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = SEGMENT_HEADER_SIZE as u64 + 2 * frame_bytes(&events(10, 1));
    let mut journal = EventJournal::open(
        dir.path(),
        options(segment_bytes_max, 2 * segment_bytes_max),
    )
    .unwrap();
    journal.append(&events(10, 1)).unwrap();
    journal.append(&events(20, 1)).unwrap();
    let mut reader = EventReader::open(dir.path()).unwrap();
    assert_eq!(reader.read(0, 1).unwrap(), events(10, 1));
    for i in 0..10 {
        journal.append(&events(100 + 10 * i, 1)).unwrap();
    }
    assert!(!dir.path().join(journal_segment_name(10)).exists());
    // The open segment still reads; what was deleted after it is a gap.
    assert_eq!(reader.read(11, 10).unwrap(), events(20, 1));
    let error = reader.read(21, 10).unwrap_err();
    assert!(matches!(error, LogError::EventsRetired { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("the next event it holds has timestamp 160"),
        "{error}"
    );
}

/// The gap a reader finds at `timestamp_min`: where the journal goes on.
fn gap_at(reader: &mut EventReader, timestamp_min: u64) -> u64 {
    match reader.read(timestamp_min, usize::MAX) {
        Err(LogError::EventsRetired {
            next_timestamp_kept,
            ..
        }) => next_timestamp_kept,
        other => panic!("no gap at {timestamp_min}: {other:?}"),
    }
}

#[test]
fn a_skip_is_a_gap_readers_find_mid_journal_and_at_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = EventJournal::open(dir.path(), JournalOptions::default()).unwrap();
    journal.append(&events(10, 2)).unwrap();
    journal.skip_to(15); // Before the last event: nothing.
    journal.skip_to(50);
    assert_eq!(journal.last_timestamp(), Some(50));
    journal.append(&events(60, 2)).unwrap();
    journal.sync().unwrap();
    drop(journal);

    let mut reader = EventReader::open(dir.path()).unwrap();
    assert_eq!(reader.read(0, usize::MAX).unwrap(), events(10, 2));
    assert_eq!(gap_at(&mut reader, 21), 60);
    assert_eq!(gap_at(&mut reader, 50), 60);
    assert_eq!(read_all(dir.path(), 51), events(60, 2));
    let journal = EventJournal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(journal.last_timestamp(), Some(70));

    // A journal that starts with a skip has a gap before its first event.
    let fresh = tempfile::tempdir().unwrap();
    let mut journal = EventJournal::open(fresh.path(), JournalOptions::default()).unwrap();
    journal.skip_to(50);
    journal.append(&events(60, 1)).unwrap();
    let mut reader = EventReader::open(fresh.path()).unwrap();
    assert_eq!(gap_at(&mut reader, 0), 60);
    assert_eq!(read_all(fresh.path(), 51), events(60, 1));
}

#[test]
fn a_skip_after_a_cut_tail_leaves_no_empty_segment_behind() {
    let dir = tempfile::tempdir().unwrap();
    let one_frame = SEGMENT_HEADER_SIZE as u64 + frame_bytes(&events(10, 1));
    {
        let mut journal = EventJournal::open(dir.path(), options(one_frame, u64::MAX)).unwrap();
        journal.append(&events(10, 1)).unwrap();
        journal.append(&events(20, 1)).unwrap();
        journal.sync().unwrap();
    }
    // The second segment's only frame is torn: opening cuts it, leaving a header alone.
    let newest = segment_paths(dir.path()).pop().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    file.set_len(SEGMENT_HEADER_SIZE as u64 + 3).unwrap();
    let mut journal = EventJournal::open(dir.path(), options(one_frame, u64::MAX)).unwrap();
    assert_eq!(journal.last_timestamp(), Some(10));
    journal.skip_to(40);
    journal.append(&events(50, 1)).unwrap();
    journal.sync().unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 2, "the empty segment went");
    let mut reader = EventReader::open(dir.path()).unwrap();
    assert_eq!(reader.read(0, usize::MAX).unwrap(), events(10, 1));
    assert_eq!(gap_at(&mut reader, 11), 50);
    assert_eq!(read_all(dir.path(), 41), events(50, 1));
}

/// A reader at the end of the newest segment when another file takes that segment's
/// name (the directory restored from a copy, say) reads the events of the new file.
#[test]
fn a_reader_whose_segment_is_replaced_under_its_name_reads_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut journal = EventJournal::open(dir.path(), JournalOptions::default()).unwrap();
        journal.append(&events(10, 2)).unwrap();
    }
    let mut reader = EventReader::open(dir.path()).unwrap();
    // One of the frame's two events: the other is still to read from the old file.
    assert_eq!(reader.read(0, 1).unwrap(), events(10, 1));
    // The same segment with two more events, built elsewhere and renamed over it.
    let elsewhere = tempfile::tempdir().unwrap();
    {
        let mut journal = EventJournal::open(elsewhere.path(), JournalOptions::default()).unwrap();
        journal.append(&events(10, 2)).unwrap();
        journal.append(&events(100, 2)).unwrap();
    }
    let name = journal_segment_name(10);
    let staged = dir.path().join("staged");
    std::fs::copy(elsewhere.path().join(&name), &staged).unwrap();
    std::fs::rename(&staged, dir.path().join(&name)).unwrap();
    // The rest of the old file, then the new file's events after it, each once.
    let expected = [events(20, 1), events(100, 2)].concat();
    assert_eq!(reader.read(11, usize::MAX).unwrap(), expected);
    assert_eq!(reader.read(111, usize::MAX).unwrap(), []);
}

#[test]
fn a_reader_next_to_a_writer_sees_every_event_once_in_order() {
    reader_next_to_a_writer(false);
}

#[test]
fn a_reader_told_the_newest_segment_sees_every_event_once_in_order() {
    reader_next_to_a_writer(true);
}

/// A writer appending 1,500 groups over small segments and a reader reading beside it
/// until it has them all; `told`: the reader is given the newest segment as the writer
/// publishes it after each append (`EventReader::read_beside_writer`).
fn reader_next_to_a_writer(told: bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let groups: u64 = 1500;
    let newest = std::sync::Arc::new(AtomicU64::new(0));
    let published = std::sync::Arc::clone(&newest);
    let writer = std::thread::spawn(move || {
        let mut journal = EventJournal::open(&path, options(16 * 1024, u64::MAX)).unwrap();
        for group in 0..groups {
            journal
                .append(&events(1 + 100 * group, 1 + group % 9))
                .unwrap();
            published.store(journal.newest_segment().unwrap(), Ordering::Release);
        }
    });
    let expected: Vec<ChangeEvent> = (0..groups)
        .flat_map(|group| events(1 + 100 * group, 1 + group % 9))
        .collect();
    let last = expected.last().unwrap().timestamp;
    let mut reader = EventReader::open(dir.path()).unwrap();
    let mut read = Vec::new();
    let mut next = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while next <= last {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader stalled at {next}"
        );
        let got = match told {
            true => {
                let newest = Some(newest.load(Ordering::Acquire)).filter(|&first| first > 0);
                reader.read_beside_writer(next, 50, newest).unwrap()
            }
            false => reader.read(next, 50).unwrap(),
        };
        if let Some(event) = got.last() {
            next = event.timestamp + 1;
        }
        read.extend(got);
    }
    writer.join().unwrap();
    assert_eq!(read, expected);
}

#[test]
fn a_reader_told_the_newest_segment_looks_past_it_only_when_told_of_a_newer() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = EventJournal::open(dir.path(), options(2000, u64::MAX)).unwrap();
    let mut reader = EventReader::open(dir.path()).unwrap();
    assert_eq!(journal.newest_segment(), None);
    let first = events(10, 3);
    journal.append(&first).unwrap();
    let told = journal.newest_segment();
    assert_eq!(told, Some(10));
    assert_eq!(reader.read_beside_writer(0, 100, told).unwrap(), first);
    // Appends until the journal starts a second segment.
    let mut later = Vec::new();
    let mut timestamp = 1000;
    while journal.newest_segment() == told {
        let group = events(timestamp, 4);
        journal.append(&group).unwrap();
        later.extend(group);
        timestamp += 1000;
    }
    let next = first.last().unwrap().timestamp + 1;
    // Told of the old segment only, the reader reads it to its end and stops there.
    let in_first: Vec<ChangeEvent> = later
        .iter()
        .filter(|event| event.timestamp < journal.newest_segment().unwrap())
        .cloned()
        .collect();
    assert!(in_first.len() < later.len());
    assert_eq!(
        reader.read_beside_writer(next, 1000, told).unwrap(),
        in_first
    );
    let after = in_first.last().map_or(next, |event| event.timestamp + 1);
    assert_eq!(reader.read_beside_writer(after, 1000, told).unwrap(), []);
    // Told of the new one, it finds the rest.
    let rest = reader
        .read_beside_writer(after, 1000, journal.newest_segment())
        .unwrap();
    assert_eq!(rest, later[in_first.len()..]);
}

#[test]
fn a_reader_behind_a_writer_that_deletes_segments_never_skips_silently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let groups: u64 = 3000;
    let segment_bytes_max = 8 * 1024;
    let writer = std::thread::spawn(move || {
        let mut journal =
            EventJournal::open(&path, options(segment_bytes_max, 3 * segment_bytes_max)).unwrap();
        for group in 0..groups {
            journal
                .append(&events(1 + 100 * group, 1 + group % 5))
                .unwrap();
        }
    });
    let expected: Vec<ChangeEvent> = (0..groups)
        .flat_map(|group| events(1 + 100 * group, 1 + group % 5))
        .collect();
    let last = expected.last().unwrap().timestamp;
    let mut reader = EventReader::open(dir.path()).unwrap();
    let mut read = Vec::new();
    let mut gaps = Vec::new();
    let mut next = 1;
    while next <= last {
        match reader.read(next, 7) {
            Ok(got) => {
                if let Some(event) = got.last() {
                    next = event.timestamp + 1;
                }
                read.extend(got);
            }
            Err(LogError::EventsRetired {
                next_timestamp_kept,
                ..
            }) => {
                assert!(next_timestamp_kept >= next);
                gaps.push(next..next_timestamp_kept);
                next = next_timestamp_kept;
            }
            Err(error) => panic!("{error}"),
        }
    }
    writer.join().unwrap();
    // Every event is read once, in order, unless it lies in a gap that was reported.
    let kept: Vec<ChangeEvent> = expected
        .into_iter()
        .filter(|event| !gaps.iter().any(|gap| gap.contains(&event.timestamp)))
        .collect();
    assert_eq!(read, kept);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any frame sizes and segment size: reopened and read in any pieces, the journal
    /// gives back exactly what was appended.
    #[test]
    fn any_frames_read_back_in_any_pieces(
        group_sizes in proptest::collection::vec(1u64..40, 1..30),
        segment_bytes_max in 500u64..40_000,
        limit in 1usize..60,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut written = Vec::new();
        {
            let mut journal =
                EventJournal::open(dir.path(), options(segment_bytes_max, u64::MAX)).unwrap();
            let mut timestamp = 1;
            for size in group_sizes {
                let group = events(timestamp, size);
                timestamp = group.last().unwrap().timestamp + 3;
                journal.append(&group).unwrap();
                written.extend(group);
            }
        }
        let journal = EventJournal::open(dir.path(), options(segment_bytes_max, u64::MAX)).unwrap();
        prop_assert_eq!(journal.last_timestamp(), Some(written.last().unwrap().timestamp));
        let mut reader = EventReader::open(dir.path()).unwrap();
        let mut read = Vec::new();
        let mut next = 0;
        loop {
            let got = reader.read(next, limit).unwrap();
            prop_assert!(got.len() <= limit);
            let Some(last) = got.last() else { break };
            next = last.timestamp + 1;
            read.extend(got);
        }
        prop_assert_eq!(read, written);
    }
}

#[test]
fn events_with_every_field_at_its_widest_round_trip() {
    let widest = |timestamp: u64| {
        let account = |id| Account {
            id,
            debits_pending: u128::MAX,
            debits_posted: u128::MAX,
            credits_pending: u128::MAX,
            credits_posted: u128::MAX,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            timestamp: 1,
            ..Account::default()
        };
        ChangeEvent {
            timestamp,
            kind: ChangeKind::SinglePhase,
            transfer: Transfer {
                id: u128::MAX - u128::from(timestamp),
                debit_account_id: u128::MAX - 1,
                credit_account_id: u128::MAX - 2,
                amount: u128::MAX,
                pending_id: u128::MAX,
                user_data_128: u128::MAX,
                user_data_64: u64::MAX,
                user_data_32: u32::MAX,
                timeout: u32::MAX,
                ledger: u32::MAX,
                code: u16::MAX,
                timestamp: 1,
                ..Transfer::default()
            },
            debit_account: account(u128::MAX - 1),
            credit_account: account(u128::MAX - 2),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    // One event alone in a frame, then a frame of several.
    let written = vec![
        widest(u64::MAX - 100),
        widest(u64::MAX - 50),
        widest(u64::MAX - 49),
    ];
    {
        let mut journal = EventJournal::open(dir.path(), options(1 << 20, u64::MAX)).unwrap();
        journal.append(&written[..1]).unwrap();
        journal.append(&written[1..]).unwrap();
    }
    assert_eq!(read_all(dir.path(), 0), written);
}
