//! The log lets the page cache go of what it synced: whole pages behind the one being
//! written, a mebibyte or more at a time, and the rest of a segment once it is full.
//! `FaultyStorage` refuses (panics on) any range not yet durable.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tally_log::DROP_CACHED_BYTES;
use tally_log::faulty::FaultyStorage;

const PAGE: u64 = 4096;
const SEGMENT: u64 = 4 * 1024 * 1024;

/// The ranges dropped from `name`, in order.
fn drops_of(storage: &FaultyStorage, name: &str) -> Vec<(u64, u64)> {
    storage
        .cache_drops()
        .into_iter()
        .filter(|(dropped, _, _)| dropped == name)
        .map(|(_, offset, len)| (offset, len))
        .collect()
}

/// Asserts the ranges are consecutive from the segment's start and page-aligned, and
/// returns where they end.
fn consecutive_pages_from_zero(drops: &[(u64, u64)]) -> u64 {
    let mut end = 0;
    for &(offset, len) in drops {
        assert_eq!(offset, end, "ranges follow one another: {drops:?}");
        assert_eq!(offset % PAGE, 0, "whole pages: {drops:?}");
        end = offset + len;
    }
    end
}

#[test]
fn synced_pages_go_a_mebibyte_at_a_time_and_the_page_being_written_stays() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    let first = segment_names(&storage)[0].clone();
    let mut sequence = 1;
    let mut dropped_before = 0;
    let mut checked = 0;
    while segment_names(&storage).len() == 1 {
        wal.append(&[record(sequence, 40)]).unwrap();
        sequence += 1;
        let drops = drops_of(&storage, &first);
        if segment_names(&storage).len() > 1 {
            break;
        }
        let written = storage.read_file(&first).unwrap().len() as u64;
        let dropped = consecutive_pages_from_zero(&drops);
        for &(_, len) in &drops {
            assert!(len >= DROP_CACHED_BYTES, "too small a range: {drops:?}");
        }
        assert!(
            dropped <= written / PAGE * PAGE,
            "the page being written stays"
        );
        assert!(
            written / PAGE * PAGE - dropped < DROP_CACHED_BYTES,
            "{written} bytes written, only {dropped} dropped"
        );
        if dropped > dropped_before {
            checked += 1;
            dropped_before = dropped;
        }
    }
    assert!(checked >= 3, "only {checked} drops seen");
    // Rotated: the first segment is synced whole and let go to its end.
    let written = storage.read_file(&first).unwrap().len() as u64;
    assert_eq!(
        consecutive_pages_from_zero(&drops_of(&storage, &first)),
        written
    );
}

#[test]
fn an_unsynced_log_keeps_its_pages() {
    let storage = FaultyStorage::new();
    let mut unsynced = options(SEGMENT);
    unsynced.sync = tally_log::SyncMode::UnsafeNoSync;
    let (mut wal, _) = open(&storage, unsynced).unwrap();
    for sequence in 1..=2_000 {
        wal.append(&[record(sequence, 40)]).unwrap();
    }
    assert!(segment_names(&storage).len() > 2, "rotated");
    assert_eq!(storage.cache_drops(), Vec::new());
}

#[test]
fn a_segment_started_from_a_spare_is_let_go_to_its_end() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(SEGMENT)).unwrap();
    let mut sequence = 1;
    let mut spares = 0;
    while segment_names(&storage).len() < 4 {
        wal.append(&[record(sequence, 40)]).unwrap();
        sequence += 1;
        while wal.spare_wanted() {
            wal.write_spare_step(tally_log::SPARE_STEP_BYTES_MAX)
                .unwrap();
        }
        spares += usize::from(wal.spare_ready().is_some());
    }
    assert!(spares > 0, "no spare was written");
    let mut names = segment_names(&storage);
    names.sort();
    // Every segment rotated away from is let go to the end of its file, the zeros of a
    // spare it started from included.
    for name in &names[..names.len() - 1] {
        let len = storage.read_file(name).unwrap().len() as u64;
        assert_eq!(
            consecutive_pages_from_zero(&drops_of(&storage, name)),
            len,
            "{name}"
        );
    }
}
