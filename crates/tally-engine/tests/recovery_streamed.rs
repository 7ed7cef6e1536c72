//! Recovery reads the log on one thread and replays it on another, a group of about
//! 65,536 events at a time. A log of several groups (transfers, pendings, posts,
//! chains), opened on one and two shards: damage anywhere stops open with an error
//! naming the segment, whatever was replayed before it; a torn tail is cut and the rest
//! comes back exactly; a clean log reopens to the same state. A snapshot streams into
//! the load as it is read, accounts first: one found damaged in its accounts or after
//! some of its runs were loaded is dropped for the older one; one whose state does not
//! load stops open once the reader has drained.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use tally_engine::{Config, Ledger};
use tally_state::StateMachine;
use tally_types::{Account, Batch, ResultCode, StateImage, Transfer, TransferFlags};

const ACCOUNTS: u128 = 50;
const BATCHES: u64 = 30;

fn config(dir: &Path, shards: usize) -> Config {
    Config {
        shards,
        // Replayed groups decide with deltas wherever a unit only adds to a part.
        shard_deltas_from: 0,
        shard_execution: tally_engine::ShardExecution::Always,
        preallocate_segments: false,
        snapshot_events_interval: 0,
        // One record per submitted batch: expiries wait for the next batch.
        expire_when_idle: false,
        ..Config::new(dir)
    }
}

/// A full batch: payments, pendings (some expiring at once), posts of the previous
/// batch's pendings, and chains.
fn batch(n: u64) -> Batch {
    let base = 1_000 + u128::from(n) * 10_000;
    Batch::CreateTransfers(
        (0..8_190u128)
            .map(|i| {
                let id = base + i;
                let mut t = Transfer {
                    id,
                    debit_account_id: 1 + i % ACCOUNTS,
                    credit_account_id: 1 + (i + 1 + u128::from(n)) % ACCOUNTS,
                    amount: 1 + i % 7,
                    ledger: 156,
                    code: 1,
                    ..Transfer::default()
                };
                match i % 11 {
                    0 => {
                        t.flags = TransferFlags::PENDING;
                        t.timeout = (i % 2) as u32;
                    }
                    1 if n > 0 => {
                        t = Transfer {
                            id,
                            pending_id: base - 10_000 + i - 1,
                            flags: TransferFlags::POST_PENDING_TRANSFER,
                            ..Transfer::default()
                        }
                    }
                    2 => t.flags = TransferFlags::LINKED,
                    _ => {}
                }
                t
            })
            .collect(),
    )
}

/// The `ACCOUNTS` accounts, one batch.
fn accounts() -> Batch {
    Batch::CreateAccounts(
        (1..=ACCOUNTS)
            .map(|id| Account {
                id,
                ledger: 156,
                code: 1,
                ..Account::default()
            })
            .collect(),
    )
}

/// Writes the log (accounts, then `BATCHES` full batches) and returns the state after
/// each batch.
fn build(dir: &Path, shards: usize) -> Vec<StateImage> {
    let ledger = Ledger::open(config(dir, shards)).unwrap();
    let results = ledger.submit(accounts()).unwrap();
    assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    let mut images = vec![ledger.with_state(StateMachine::image)];
    for n in 0..BATCHES {
        ledger.submit(batch(n)).unwrap();
        images.push(ledger.with_state(StateMachine::image));
    }
    ledger.shutdown().unwrap();
    drop(ledger);
    images
}

fn segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("wal-0") && n.ends_with(".log")
        })
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.pop().unwrap()
}

fn nonzero_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1)
}

#[test]
fn damage_anywhere_in_a_log_of_many_groups_stops_open_on_one_and_two_shards() {
    for shards in [1, 2] {
        for fraction in [0.1f64, 0.5, 0.9] {
            let dir = tempfile::tempdir().unwrap();
            build(dir.path(), 1);
            let path = segment(dir.path());
            let mut bytes = std::fs::read(&path).unwrap();
            let at = (nonzero_len(&bytes) as f64 * fraction) as usize;
            bytes[at] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            let error = Ledger::open(config(dir.path(), shards))
                .expect_err("damage stops open")
                .to_string();
            assert!(error.contains("wal-"), "shards {shards}: {error}");
            assert!(Ledger::open(config(dir.path(), shards)).is_err());
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was repaired");
        }
    }
}

#[test]
fn damage_in_the_last_frame_after_a_clean_close_stops_open() {
    for shards in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), shards);
        let path = segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let len = nonzero_len(&bytes);
        bytes[len - 3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            Ledger::open(config(dir.path(), shards)).is_err(),
            "shards {shards}"
        );
    }
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_replays_on_one_and_two_shards() {
    for shards in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let images = build(dir.path(), 2);
        // A crash, not a clean close: no close marker, the last frame half written.
        std::fs::remove_file(dir.path().join("wal-closed")).unwrap();
        let path = segment(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..nonzero_len(&bytes) - 100]).unwrap();
        let ledger = Ledger::open(config(dir.path(), shards)).unwrap();
        let recovery = ledger.recovery();
        assert!(recovery.torn_tail_bytes_cut > 0, "{recovery:?}");
        assert_eq!(recovery.batches, BATCHES);
        assert_eq!(
            ledger.with_state(StateMachine::image),
            images[BATCHES as usize - 1],
            "shards {shards}"
        );
        ledger.shutdown().unwrap();
    }
}

#[test]
fn a_clean_log_of_many_groups_reopens_identically_on_one_and_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let images = build(dir.path(), 2);
    for shards in [1, 2, 1] {
        let ledger = Ledger::open(config(dir.path(), shards)).unwrap();
        assert_eq!(
            ledger.with_state(StateMachine::image),
            *images.last().unwrap()
        );
        assert_eq!(ledger.recovery().batches, BATCHES + 1);
        ledger.shutdown().unwrap();
    }
}

/// Snapshot files in `dir`, oldest first.
fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    snapshots.sort();
    snapshots
}

/// The log of [`build`] with a snapshot after about 100,000 events and one after about
/// 200,000 (each of more than one run of transfers); returns the final state.
fn build_with_snapshots(dir: &Path, shards: usize) -> StateImage {
    let config = Config {
        snapshot_events_interval: 100_000,
        ..config(dir, shards)
    };
    let ledger = Ledger::open(config).unwrap();
    ledger.submit(accounts()).unwrap();
    for n in 0..BATCHES {
        ledger.submit(batch(n)).unwrap();
        // Each snapshot written before the next one is due, so that both stay.
        let due = match n {
            15 => 1,
            29 => 2,
            _ => continue,
        };
        let started = std::time::Instant::now();
        while ledger.metrics().snapshots_written < due {
            assert!(
                started.elapsed().as_secs() < 120,
                "snapshot {due} is written"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let image = ledger.with_state(StateMachine::image);
    ledger.shutdown().unwrap();
    image
}

#[test]
fn a_snapshot_damaged_in_its_accounts_or_after_its_first_run_falls_back_to_the_older_one() {
    for (shards, in_accounts) in [(1, false), (2, false), (1, true)] {
        let dir = tempfile::tempdir().unwrap();
        let image = build_with_snapshots(dir.path(), shards);
        let files = snapshots(dir.path());
        assert_eq!(files.len(), 2, "{files:?}");
        let sequence = |path: &Path| -> u64 {
            let name = path.file_stem().unwrap().to_str().unwrap();
            name.trim_start_matches("snapshot-").parse().unwrap()
        };
        // Header, the accounts' section (one chunk), the transfers' section header,
        // then the first packed chunk: its length, records and CRC.
        let mut bytes = std::fs::read(&files[1]).unwrap();
        let first_chunk = 64 + 32 + ACCOUNTS as usize * 128 + 4 + 32;
        let length = u32::from_le_bytes(bytes[first_chunk..first_chunk + 4].try_into().unwrap());
        let second_chunk = first_chunk + 4 + length as usize + 4;
        assert!(second_chunk + 1_000 < bytes.len());
        // In the accounts, the load has begun when the damage is found.
        let at = if in_accounts {
            64 + 32 + 1_000
        } else {
            second_chunk + 1_000
        };
        bytes[at] ^= 0x04;
        std::fs::write(&files[1], &bytes).unwrap();
        let ledger = Ledger::open(config(dir.path(), shards)).unwrap();
        assert_eq!(
            ledger.recovery().snapshot_sequence,
            Some(sequence(&files[0])),
            "shards {shards}"
        );
        assert!(
            ledger.with_state(StateMachine::image) == image,
            "shards {shards}"
        );
        ledger.shutdown().unwrap();
    }
}

fn loaded_account(id: u128) -> Account {
    Account {
        id,
        ledger: 156,
        code: 1,
        timestamp: id as u64,
        ..Account::default()
    }
}

const LOG_OPTIONS: tally_log::LogOptions = tally_log::LogOptions {
    segment_bytes_max: 64 << 20,
    sync: tally_log::SyncMode::Fdatasync,
};

/// A log in `dir` of one record (sequence 1), open for a snapshot to be written.
fn log_of_one_record(dir: &Path) -> tally_log::Wal {
    let (mut wal, _) = tally_log::Wal::open(dir, LOG_OPTIONS).unwrap();
    let record = tally_log::LogRecord {
        sequence: 1,
        timestamp: 1,
        batch: Batch::CreateAccounts(vec![loaded_account(1), loaded_account(2)]),
    };
    wal.append(&[record]).unwrap();
    wal
}

/// The error opening a ledger whose only snapshot (at sequence 1) holds `image`
/// returns: it must return, whatever the reader was doing when the load stopped.
fn open_error_with_snapshot(image: &StateImage) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = log_of_one_record(dir.path());
    wal.write_snapshot(1, image).unwrap();
    drop(wal);
    let (sender, receiver) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let opened = Ledger::open(config(&path, 1)).map(drop);
        sender.send(opened.map_err(|e| e.to_string())).unwrap();
    });
    let opened = receiver
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("open returns");
    opened.expect_err("the snapshot does not load")
}

/// A snapshot whose checksums hold but whose state does not (its second run of
/// transfers names an account it lacks) stops open with an error naming the snapshot:
/// the load stops at once, and the runs the reader still streams are handed back as
/// they are drained, so that the reader, short of room, never waits for ever.
/// A snapshot image of `accounts` and `runs` full runs of transfers from account 1 to
/// the account `credit` names for each.
fn image_of_runs(
    accounts: Vec<Account>,
    runs: usize,
    credit: impl Fn(usize) -> u128,
) -> StateImage {
    let count = tally_types::packed::PACKED_RUN_RECORDS * runs;
    let transfers = (0..count)
        .map(|i| Transfer {
            id: 100_000 + i as u128,
            debit_account_id: 1,
            credit_account_id: credit(i),
            amount: 1,
            ledger: 156,
            code: 1,
            timestamp: 100_000 + i as u64,
            ..Transfer::default()
        })
        .collect();
    StateImage {
        last_timestamp: 100_000 + count as u64,
        accounts,
        transfers,
        ..StateImage::default()
    }
}

#[test]
fn a_snapshot_that_does_not_load_stops_open_after_the_reader_drains() {
    let run = tally_types::packed::PACKED_RUN_RECORDS;
    let accounts = vec![loaded_account(1), loaded_account(2)];
    let image = image_of_runs(accounts, 8, |i| if i == run + 5 { 99 } else { 2 });
    let error = open_error_with_snapshot(&image);
    assert!(error.contains("snapshot 1 does not load"), "{error}");
    assert!(error.contains("unknown account"), "{error}");
}

/// The accounts stream a chunk (8,192) at a time: a duplicate in the first chunk
/// stops the load while the reader still has chunks, runs and the rest to send.
#[test]
fn accounts_that_do_not_load_stop_open_after_the_reader_drains() {
    let mut accounts: Vec<Account> = (1..=40_000).map(loaded_account).collect();
    accounts[5_000].id = 7;
    let error = open_error_with_snapshot(&image_of_runs(accounts, 3, |_| 2));
    assert!(error.contains("snapshot 1 does not load"), "{error}");
    assert!(error.contains("account 7 appears twice"), "{error}");
}

/// A format-2 snapshot (transfers unpacked, handed over only after its side tables)
/// streams into the load as a newer one does, and the load decides as on a whole read
/// of it: the fixture's state does not load (its accounts postdate its last
/// timestamp), and open reports the same error once the stream has drained, head
/// included.
#[test]
fn a_format_2_snapshot_streams_to_what_a_whole_read_loads() {
    let fixture = include_bytes!("../../tally-log/tests/data/snapshot-v2.snap");
    assert_eq!(&fixture[8..10], &2u16.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    drop(log_of_one_record(dir.path()));
    let name = tally_log::layout::snapshot_name(1);
    std::fs::write(dir.path().join(name), fixture).unwrap();
    let (_, whole) = tally_log::Wal::open(dir.path(), LOG_OPTIONS).unwrap();
    let (sequence, image) = whole.snapshot.unwrap();
    assert_eq!(
        (sequence, image.accounts.len(), image.transfers.len()),
        (1, 3, 4)
    );
    let loaded = tally_types::LoadedImage {
        image,
        packed_transfers: Vec::new(),
    };
    let expected = StateMachine::from_loaded_image_in_parts(loaded, 1)
        .expect_err("the fixture's state does not load")
        .to_string();
    let error = Ledger::open(config(dir.path(), 1))
        .map(drop)
        .expect_err("the snapshot does not load")
        .to_string();
    assert!(error.contains("snapshot 1 does not load"), "{error}");
    assert!(error.contains(&expected), "{error} / {expected}");
}
