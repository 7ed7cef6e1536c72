//! A snapshot streamed to a sink as it is read (`RecoverySink::snapshot_stream`): the
//! calls come in the order the contract gives, the state is the one a whole read gives,
//! and damage found part way abandons it for an older snapshot or the log.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tally_log::faulty::FaultyStorage;
use tally_log::layout::snapshot_name;
use tally_log::{LogRecord, RecoverySink, SnapshotStream, Wal};
use tally_types::packed::{PACKED_RUN_RECORDS, UnpackedRun};
use tally_types::{Account, LoadedImage, PendingStatus, StateImage, Transfer, TransferFlags};

/// What the stream was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Start(Option<u64>),
    Head { sequence: u64, transfers: u64 },
    Run(usize),
    End,
    Abandoned,
}

/// The head call of snapshot `sequence` storing `transfers` transfers.
fn head(sequence: u64, transfers: usize) -> Call {
    Call::Head {
        sequence,
        transfers: transfers as u64,
    }
}

/// Records the calls and rebuilds the image the stream hands over.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    image: Option<(u64, StateImage)>,
    records: Vec<LogRecord>,
    spares_asked: usize,
}

impl RecoverySink for Recorder {
    fn start(&mut self, snapshot: Option<(u64, LoadedImage)>) {
        self.calls
            .push(Call::Start(snapshot.as_ref().map(|(s, _)| *s)));
        assert!(
            snapshot.is_none(),
            "a streaming sink starts whole only from none"
        );
    }

    fn record(&mut self, record: LogRecord) {
        self.records.push(record);
    }

    fn snapshot_stream(&mut self) -> Option<&mut dyn SnapshotStream> {
        Some(self)
    }
}

impl SnapshotStream for Recorder {
    fn head(&mut self, sequence: u64, head: StateImage, transfers: u64) {
        assert!(head.pending_statuses.is_empty() && head.failed_ids.is_empty());
        self.calls.push(Call::Head {
            sequence,
            transfers,
        });
        self.image = Some((sequence, head));
    }

    fn run(&mut self, run: UnpackedRun) {
        self.calls.push(Call::Run(run.records()));
        assert_eq!(run.starts.len(), run.records());
        // Every start points at its record, and the records fill the bytes.
        for (transfer, start) in run.transfers.iter().zip(&run.starts) {
            let (decoded, _) =
                tally_types::packed::decode_transfer(&run.bytes[*start as usize..]).unwrap();
            assert_eq!(&decoded, transfer);
        }
        let (_, image) = self.image.as_mut().unwrap();
        image.transfers.extend_from_slice(&run.transfers);
    }

    fn spare_run(&mut self) -> UnpackedRun {
        self.spares_asked += 1;
        UnpackedRun::default()
    }

    fn end(&mut self, rest: StateImage) {
        self.calls.push(Call::End);
        let (_, image) = self.image.as_mut().unwrap();
        image.pending_statuses = rest.pending_statuses;
        image.refunded = rest.refunded;
        image.failed_ids = rest.failed_ids;
    }

    fn abandoned(&mut self) {
        self.calls.push(Call::Abandoned);
        self.image = None;
    }
}

fn image(accounts: usize, transfers: usize) -> StateImage {
    StateImage {
        last_timestamp: 10_000_000,
        accounts: (0..accounts)
            .map(|i| Account {
                id: i as u128 + 1,
                ledger: 7,
                code: 1,
                timestamp: i as u64 + 1,
                ..Account::default()
            })
            .collect(),
        transfers: (0..transfers)
            .map(|i| Transfer {
                id: (i as u128) << 70 | 3,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: i as u128 * 1_000,
                timeout: if i % 5 == 0 { 30 } else { 0 },
                ledger: 7,
                code: 2,
                flags: if i % 5 == 0 {
                    TransferFlags::PENDING
                } else {
                    TransferFlags::empty()
                },
                timestamp: 1_000 + i as u64,
                ..Transfer::default()
            })
            .collect(),
        pending_statuses: (0..transfers)
            .step_by(5)
            .map(|i| ((i as u128) << 70 | 3, PendingStatus::Posted))
            .collect(),
        refunded: vec![(3, 9)],
        failed_ids: vec![11, 12],
    }
}

/// A log of records 1..=20 with snapshots at 10 (`older`) and 20 (`newer`).
fn two_snapshots(older: &StateImage, newer: &StateImage) -> FaultyStorage {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 10)).unwrap();
    wal.write_snapshot(10, older).unwrap();
    wal.append(&records(11, 10)).unwrap();
    wal.write_snapshot(20, newer).unwrap();
    wal.append(&records(21, 3)).unwrap();
    storage
}

fn streamed(storage: &FaultyStorage) -> Recorder {
    let mut recorder = Recorder::default();
    Wal::open_with_sink(Box::new(storage.clone()), options(1 << 20), &mut recorder).unwrap();
    recorder
}

/// Where the second chunk of snapshot `name`'s packed transfers starts.
fn second_chunk(storage: &FaultyStorage, name: &str, accounts: usize) -> usize {
    let bytes = storage.read_file(name).unwrap();
    let chunk = 64 + 32 + accounts * 128 + 4 + 32;
    let length = u32::from_le_bytes(bytes[chunk..chunk + 4].try_into().unwrap()) as usize;
    chunk + 4 + length + 4
}

#[test]
fn a_whole_snapshot_streams_head_runs_then_end_and_matches_a_whole_read() {
    let newer = image(3, PACKED_RUN_RECORDS * 2 + 5);
    let storage = two_snapshots(&image(2, 4), &newer);
    let recorder = streamed(&storage);
    assert_eq!(
        recorder.calls,
        vec![
            head(20, newer.transfers.len()),
            Call::Run(PACKED_RUN_RECORDS),
            Call::Run(PACKED_RUN_RECORDS),
            Call::Run(5),
            Call::End,
        ]
    );
    assert_eq!(recorder.spares_asked, 3);
    assert_eq!(recorder.image, Some((20, newer)));
    let (_, whole) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recorder.image, whole.snapshot);
    assert_eq!(recorder.records, whole.records);
    assert_eq!(recorder.records, records(21, 3));
}

#[test]
fn damage_after_the_first_run_abandons_it_for_the_older_snapshot() {
    let older = image(2, PACKED_RUN_RECORDS + 1);
    let newer = image(3, PACKED_RUN_RECORDS * 2);
    let storage = two_snapshots(&older, &newer);
    let at = second_chunk(&storage, &snapshot_name(20), 3);
    storage.flip_bit(&snapshot_name(20), at + 100, 2);
    let recorder = streamed(&storage);
    assert_eq!(
        recorder.calls,
        vec![
            head(20, newer.transfers.len()),
            Call::Run(PACKED_RUN_RECORDS),
            Call::Abandoned,
            head(10, older.transfers.len()),
            Call::Run(PACKED_RUN_RECORDS),
            Call::Run(1),
            Call::End,
        ]
    );
    assert_eq!(recorder.image, Some((10, older)));
    let (wal, whole) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recorder.image, whole.snapshot);
    assert_eq!(recorder.records, whole.records);
    assert_eq!(wal.snapshots_damaged().len(), 1);
}

#[test]
fn damage_after_every_run_abandons_it_too() {
    let newer = image(3, 10);
    let storage = two_snapshots(&image(2, 4), &newer);
    // The failed ids' chunk, just before the footer: every run has gone out.
    let len = storage.read_file(&snapshot_name(20)).unwrap().len();
    storage.flip_bit(&snapshot_name(20), len - 16 - 8, 0);
    let recorder = streamed(&storage);
    assert_eq!(
        recorder.calls[..3],
        [head(20, 10), Call::Run(10), Call::Abandoned]
    );
    assert_eq!(recorder.image, Some((10, image(2, 4))));
}

#[test]
fn the_only_snapshot_abandoned_starts_from_nothing_and_replays_the_log() {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 20)).unwrap();
    wal.write_snapshot(20, &image(3, PACKED_RUN_RECORDS + 3))
        .unwrap();
    drop(wal);
    let at = second_chunk(&storage, &snapshot_name(20), 3);
    storage.flip_bit(&snapshot_name(20), at + 2, 7);
    let recorder = streamed(&storage);
    assert_eq!(
        recorder.calls,
        vec![
            head(20, PACKED_RUN_RECORDS + 3),
            Call::Run(PACKED_RUN_RECORDS),
            Call::Abandoned,
            Call::Start(None),
        ]
    );
    assert_eq!(recorder.records, records(1, 20));
}

#[test]
fn damage_before_the_head_moves_on_without_a_call() {
    let storage = two_snapshots(&image(2, 4), &image(3, 4));
    // Inside the accounts' chunk.
    storage.flip_bit(&snapshot_name(20), 64 + 32 + 10, 1);
    let recorder = streamed(&storage);
    assert_eq!(recorder.calls[0], head(10, 4));
    assert_eq!(recorder.calls.last(), Some(&Call::End));
}

#[test]
fn a_format_2_snapshot_streams_its_transfers_in_the_head() {
    let fixture = include_bytes!("data/snapshot-v2.snap");
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage, options(1 << 20)).unwrap();
    wal.append(&records(1, 2)).unwrap();
    drop(wal);
    storage.write_file_durable(&snapshot_name(1), fixture);
    let recorder = streamed(&storage);
    assert_eq!(recorder.calls, vec![head(1, 4), Call::End]);
    let (_, whole) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recorder.image, whole.snapshot);
}

/// Whether `calls` keep the contract: each head is followed by runs, then its end or
/// its abandonment; at most one end, and then nothing; a start (from none) only when
/// nothing streamed whole, and last.
fn well_formed(calls: &[Call]) -> bool {
    let mut open = false;
    let mut ended = false;
    for (at, call) in calls.iter().enumerate() {
        let fits = match call {
            Call::Head { .. } => !open && !ended,
            Call::Run(_) => open,
            Call::End | Call::Abandoned => open,
            Call::Start(None) => !open && !ended && at + 1 == calls.len(),
            Call::Start(Some(_)) => false,
        };
        if !fits {
            return false;
        }
        match call {
            Call::Head { .. } => open = true,
            Call::End => (open, ended) = (false, true),
            Call::Abandoned => open = false,
            _ => {}
        }
    }
    !open && (ended || calls.last() == Some(&Call::Start(None)))
}

/// A bit flipped across the newer of two snapshots (of two runs): streamed or read
/// whole, recovery starts from the same snapshot with the same state and hands over
/// the same records, and the stream keeps its contract.
#[test]
fn a_bit_flip_anywhere_streams_to_what_a_whole_read_chooses() {
    let storage = two_snapshots(&image(2, 4), &image(3, PACKED_RUN_RECORDS + 3));
    let name = snapshot_name(20);
    let len = storage.read_file(&name).unwrap().len();
    // Through the file header and the accounts, then about 100 places spread over the
    // runs and the sections after them, then through the footer.
    let offsets = (0..600)
        .step_by(7)
        .chain((600..len).step_by(len / 100))
        .chain(len - 40..len);
    for offset in offsets {
        let damaged = copy_storage(&storage);
        damaged.flip_bit(&name, offset, (offset % 8) as u8);
        let recorder = streamed(&damaged);
        let (_, whole) = open(&damaged, options(1 << 20)).unwrap();
        assert!(
            well_formed(&recorder.calls),
            "flip at {offset}: {:?}",
            recorder.calls
        );
        assert!(recorder.image == whole.snapshot, "flip at {offset}");
        assert!(recorder.records == whole.records, "flip at {offset}");
        assert_eq!(whole.snapshot.map(|s| s.0), Some(10), "flip at {offset}");
    }
}
