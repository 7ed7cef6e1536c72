//! Helpers shared by the log's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use tally_log::faulty::FaultyStorage;
use tally_log::{LogError, LogOptions, LogRecord, Recovered, SyncMode, Wal};
use tally_types::{Account, AccountFlags, Batch, Transfer, TransferFlags};

/// A deterministic batch for `sequence`: transfers on even sequences, accounts on odd,
/// `events` events, every field derived from the sequence so mix-ups show.
pub fn record(sequence: u64, events: usize) -> LogRecord {
    let seed = u128::from(sequence) << 32;
    let batch = if sequence.is_multiple_of(2) {
        Batch::CreateTransfers(
            (0..events)
                .map(|i| Transfer {
                    id: seed + i as u128 + 1,
                    debit_account_id: seed + 7,
                    credit_account_id: seed + 8,
                    amount: (sequence as u128) * 100 + i as u128,
                    ledger: 156,
                    code: 1,
                    flags: if i + 1 < events {
                        TransferFlags::LINKED
                    } else {
                        TransferFlags::empty()
                    },
                    user_data_64: sequence,
                    ..Transfer::default()
                })
                .collect(),
        )
    } else {
        Batch::CreateAccounts(
            (0..events)
                .map(|i| Account {
                    id: seed + i as u128 + 1,
                    ledger: 840,
                    code: 2,
                    flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    user_data_32: sequence as u32,
                    ..Account::default()
                })
                .collect(),
        )
    };
    LogRecord {
        sequence,
        timestamp: 1_700_000_000_000_000_000 + sequence * 10_000,
        batch,
    }
}

/// Records `first..first + count` with a size pattern that varies from 0 to 12 events.
pub fn records(first: u64, count: u64) -> Vec<LogRecord> {
    (first..first + count)
        .map(|sequence| record(sequence, (sequence * 7 % 13) as usize))
        .collect()
}

pub fn options(segment_bytes_max: u64) -> LogOptions {
    LogOptions {
        segment_bytes_max,
        sync: SyncMode::Fdatasync,
    }
}

pub fn open(storage: &FaultyStorage, options: LogOptions) -> Result<(Wal, Recovered), LogError> {
    Wal::open_with_storage(Box::new(storage.clone()), options)
}

pub fn segment_names(storage: &FaultyStorage) -> Vec<String> {
    storage
        .file_names()
        .into_iter()
        .filter(|name| tally_log::layout::parse_segment_name(name).is_some())
        .collect()
}

/// Appends `records` in groups of `group` to a fresh log and returns the storage.
pub fn build_log(records: &[LogRecord], group: usize, segment_bytes_max: u64) -> FaultyStorage {
    let storage = FaultyStorage::new();
    let (mut wal, recovered) = open(&storage, options(segment_bytes_max)).unwrap();
    assert!(recovered.records.is_empty());
    for chunk in records.chunks(group) {
        wal.append(chunk).unwrap();
    }
    storage
}

/// A second, independent storage holding durable copies of every file of `source`.
pub fn copy_storage(source: &FaultyStorage) -> FaultyStorage {
    let copy = FaultyStorage::new();
    for name in source.file_names() {
        copy.write_file_durable(&name, &source.read_file(&name).unwrap());
    }
    copy
}

/// Byte offsets of every frame of a segment's bytes (which must be clean).
pub fn frame_offsets(segment: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut offset = tally_log::layout::SEGMENT_HEADER_SIZE;
    while offset < segment.len() {
        offsets.push(offset);
        let header = tally_log::layout::decode_frame_header(&segment[offset..]).unwrap();
        offset += header.frame_bytes as usize;
    }
    assert_eq!(offset, segment.len());
    offsets
}
