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
    Begin { sequence: u64, accounts: u64 },
    Accounts(usize),
    Head { stored: u64 },
    Run(usize),
    End,
    Abandoned,
}

/// The calls that open snapshot `sequence` of `accounts` accounts (one chunk) storing
/// `transfers` transfers in runs.
fn opening(sequence: u64, accounts: usize, transfers: usize) -> Vec<Call> {
    vec![
        Call::Begin {
            sequence,
            accounts: accounts as u64,
        },
        Call::Accounts(accounts),
        Call::Head {
            stored: transfers as u64,
        },
    ]
}

/// `opening`, then `rest`.
fn calls(opening: Vec<Call>, rest: &[Call]) -> Vec<Call> {
    opening.into_iter().chain(rest.iter().cloned()).collect()
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
    fn begin(&mut self, sequence: u64, last_timestamp: u64, accounts: u64) {
        self.calls.push(Call::Begin { sequence, accounts });
        let image = StateImage {
            last_timestamp,
            ..StateImage::default()
        };
        self.image = Some((sequence, image));
    }

    fn accounts(&mut self, accounts: Vec<Account>) {
        self.calls.push(Call::Accounts(accounts.len()));
        let (_, image) = self.image.as_mut().unwrap();
        image.accounts.extend(accounts);
    }

    fn head(&mut self, transfers: Vec<Transfer>, stored: u64) {
        self.calls.push(Call::Head { stored });
        let (_, image) = self.image.as_mut().unwrap();
        image.transfers.extend(transfers);
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
fn a_whole_snapshot_streams_accounts_head_runs_then_end_as_read_whole() {
    let newer = image(3, PACKED_RUN_RECORDS * 2 + 5);
    let storage = two_snapshots(&image(2, 4), &newer);
    let recorder = streamed(&storage);
    assert_eq!(
        recorder.calls,
        calls(
            opening(20, 3, newer.transfers.len()),
            &[
                Call::Run(PACKED_RUN_RECORDS),
                Call::Run(PACKED_RUN_RECORDS),
                Call::Run(5),
                Call::End,
            ]
        )
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
    let older_calls = calls(
        opening(10, 2, older.transfers.len()),
        &[Call::Run(PACKED_RUN_RECORDS), Call::Run(1), Call::End],
    );
    assert_eq!(
        recorder.calls,
        calls(
            opening(20, 3, newer.transfers.len()),
            &[
                &[Call::Run(PACKED_RUN_RECORDS), Call::Abandoned],
                &older_calls[..]
            ]
            .concat()
        )
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
        recorder.calls[..5],
        calls(opening(20, 3, 10), &[Call::Run(10), Call::Abandoned])[..]
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
        calls(
            opening(20, 3, PACKED_RUN_RECORDS + 3),
            &[
                Call::Run(PACKED_RUN_RECORDS),
                Call::Abandoned,
                Call::Start(None),
            ]
        )
    );
    assert_eq!(recorder.records, records(1, 20));
}

#[test]
fn damage_before_the_begin_moves_on_without_a_call() {
    let storage = two_snapshots(&image(2, 4), &image(3, 4));
    // Inside the file header.
    storage.flip_bit(&snapshot_name(20), 20, 1);
    let recorder = streamed(&storage);
    assert_eq!(recorder.calls[..3], opening(10, 2, 4)[..]);
    assert_eq!(recorder.calls.last(), Some(&Call::End));
}

#[test]
fn damage_in_the_accounts_abandons_before_any_is_handed_over() {
    let storage = two_snapshots(&image(2, 4), &image(3, 4));
    // Inside the accounts' chunk.
    storage.flip_bit(&snapshot_name(20), 64 + 32 + 10, 1);
    let recorder = streamed(&storage);
    let begin = Call::Begin {
        sequence: 20,
        accounts: 3,
    };
    assert_eq!(recorder.calls[..2], [begin, Call::Abandoned]);
    assert_eq!(recorder.calls[2..5], opening(10, 2, 4)[..]);
    assert_eq!(recorder.image, Some((10, image(2, 4))));
}

#[test]
fn accounts_stream_a_chunk_at_a_time() {
    // The writer's chunk of fixed-size items.
    let chunk = 8_192;
    let accounts = chunk * 2 + 1;
    let newer = image(accounts, 4);
    let storage = two_snapshots(&image(2, 4), &newer);
    let recorder = streamed(&storage);
    assert_eq!(
        recorder.calls,
        vec![
            Call::Begin {
                sequence: 20,
                accounts: accounts as u64,
            },
            Call::Accounts(chunk),
            Call::Accounts(chunk),
            Call::Accounts(1),
            Call::Head { stored: 4 },
            Call::Run(4),
            Call::End,
        ]
    );
    assert_eq!(recorder.image, Some((20, newer)));
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
    assert_eq!(
        recorder.calls,
        vec![
            Call::Begin {
                sequence: 1,
                accounts: 3,
            },
            Call::Accounts(3),
            Call::Head { stored: 4 },
            Call::End,
        ]
    );
    let (_, whole) = open(&storage, options(1 << 20)).unwrap();
    assert_eq!(recorder.image, whole.snapshot);
}

/// Whether `calls` keep the contract: each begin is followed by its accounts, its
/// head, its runs, then its end (after the head) or its abandonment; at most one end,
/// and then nothing; a start (from none) only when nothing streamed whole, and last.
fn well_formed(calls: &[Call]) -> bool {
    // Where the snapshot open now is: none, begun (its accounts coming), or headed.
    #[derive(PartialEq)]
    enum At {
        None,
        Begun,
        Headed,
    }
    let mut at = At::None;
    let mut ended = false;
    for (index, call) in calls.iter().enumerate() {
        let fits = match call {
            Call::Begin { .. } => at == At::None && !ended,
            Call::Accounts(_) | Call::Head { .. } => at == At::Begun,
            Call::Run(_) | Call::End => at == At::Headed,
            Call::Abandoned => at != At::None,
            Call::Start(None) => at == At::None && !ended && index + 1 == calls.len(),
            Call::Start(Some(_)) => false,
        };
        if !fits {
            return false;
        }
        match call {
            Call::Begin { .. } => at = At::Begun,
            Call::Head { .. } => at = At::Headed,
            Call::End => (at, ended) = (At::None, true),
            Call::Abandoned => at = At::None,
            _ => {}
        }
    }
    at == At::None && (ended || calls.last() == Some(&Call::Start(None)))
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
