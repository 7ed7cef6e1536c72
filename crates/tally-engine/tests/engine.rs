//! The engine against the reference state machine, under concurrency and overload.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tally_engine::{Backpressure, EventResult};
use tally_engine::{Config, Ledger, SubmitError};
use tally_log::{LogOptions, Wal};
use tally_state::StateMachine;
use tally_testkit::{SeededRng as Rng, TEST_LEDGER};
use tally_types::{Account, AccountFlags, Batch, ResultCode, Transfer, TransferFlags};

const ACCOUNTS: u128 = 12;

fn accounts() -> Batch {
    Batch::CreateAccounts(
        (1..=ACCOUNTS)
            .map(|id| Account {
                id,
                ledger: 156,
                code: 1,
                flags: match id % 3 {
                    0 => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    1 => AccountFlags::empty(),
                    _ => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                },
                ..Account::default()
            })
            .collect(),
    )
}

/// A random batch over a small id space: collisions, chains, second phases, refunds and
/// failures are common. `tag` makes every batch's content unique. One batch in ten is
/// long, so that groups too large for the log thread to apply itself go to the apply
/// thread between small ones that it does apply.
fn random_batch(rng: &mut Rng, tag: u64) -> Batch {
    let len = if rng.below(10) == 0 {
        129 + rng.below(200) as usize
    } else {
        1 + rng.below(12) as usize
    };
    let events = (0..len)
        .map(|_| {
            let id = 1 + u128::from(rng.below(400));
            let target = 1 + u128::from(rng.below(400));
            let mut t = Transfer {
                id,
                debit_account_id: 1 + u128::from(rng.below(ACCOUNTS as u64)),
                credit_account_id: 1 + u128::from(rng.below(ACCOUNTS as u64)),
                amount: u128::from(rng.below(300)),
                ledger: 156,
                code: 1,
                user_data_64: tag,
                ..Transfer::default()
            };
            match rng.below(10) {
                0..=4 => {}
                5 => {
                    t.flags = TransferFlags::PENDING;
                    t.timeout = rng.below(2) as u32;
                }
                6 => {
                    t = Transfer {
                        pending_id: target,
                        flags: TransferFlags::POST_PENDING_TRANSFER,
                        amount: 0,
                        ..blank(id, tag)
                    }
                }
                7 => {
                    t = Transfer {
                        pending_id: target,
                        flags: TransferFlags::VOID_PENDING_TRANSFER,
                        ..blank(id, tag)
                    }
                }
                _ => {
                    t = Transfer {
                        pending_id: target,
                        flags: TransferFlags::REFUND,
                        amount: u128::from(rng.below(50)),
                        ..blank(id, tag)
                    }
                }
            }
            if rng.below(4) == 0 {
                t.flags = t.flags.with(TransferFlags::LINKED);
            }
            t
        })
        .collect();
    Batch::CreateTransfers(events)
}

fn blank(id: u128, tag: u64) -> Transfer {
    Transfer {
        id,
        user_data_64: tag,
        ..Transfer::default()
    }
}

/// Replays the directory's log into the reference machine, returning the results of
/// every logged batch and the final reference state.
fn replay_reference(dir: &std::path::Path) -> (Vec<(Batch, Vec<ResultCode>)>, StateMachine) {
    let (_wal, recovered) = Wal::open(dir, LogOptions::default()).unwrap();
    assert!(recovered.snapshot.is_none());
    let mut reference = StateMachine::new();
    let mut logged = Vec::new();
    for record in recovered.records {
        let results = reference.apply(record.timestamp, &record.batch);
        logged.push((record.batch, results));
    }
    (logged, reference)
}

/// A configuration without the idle expiry pulse, for tests that compare the state
/// read before a shutdown with the log: a pulse in between would be logged after it.
fn quiet(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir);
    config.expire_when_idle = false;
    config
}

#[test]
fn concurrent_submitters_get_exactly_the_reference_results_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(quiet(dir.path())).unwrap();
    assert!(
        ledger
            .submit(accounts())
            .unwrap()
            .iter()
            .all(|r| r.code == ResultCode::Ok)
    );
    // Fund the no-overdraft accounts so that limits pass and fail both.
    let funding: Vec<Transfer> = (1..=ACCOUNTS)
        .filter(|id| id % 3 == 0)
        .map(|id| Transfer {
            id: 10_000 + id,
            debit_account_id: 1,
            credit_account_id: id,
            amount: 500,
            ledger: 156,
            code: 1,
            ..Transfer::default()
        })
        .collect();
    ledger.submit(Batch::CreateTransfers(funding)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (ledger, done) = (ledger.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                for (ledger_id, totals) in ledger.ledger_totals() {
                    assert!(
                        totals.balanced(),
                        "ledger {ledger_id} unbalanced at a read: {totals:?}"
                    );
                }
                reads += 1;
            }
            reads
        })
    };
    let submitters: Vec<_> = (0..4u64)
        .map(|thread| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x5eed + thread);
                (0..60)
                    .map(|n| {
                        let batch = random_batch(&mut rng, (thread << 32) | n);
                        let results = ledger.submit(batch.clone()).unwrap();
                        (batch, results)
                    })
                    .collect::<Vec<(Batch, Vec<EventResult>)>>()
            })
        })
        .collect();
    let answered: Vec<(Batch, Vec<EventResult>)> = submitters
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let engine_image = ledger.with_state(StateMachine::image);
    ledger.shutdown().unwrap();

    let (logged, reference) = replay_reference(dir.path());
    assert_eq!(
        logged.len(),
        2 + answered.len(),
        "every answered batch is in the log once"
    );
    let by_content: HashMap<String, &Vec<ResultCode>> = logged
        .iter()
        .map(|(batch, results)| (format!("{batch:?}"), results))
        .collect();
    let mut ok = 0;
    for (batch, results) in &answered {
        let expected = by_content[&format!("{batch:?}")];
        let got: Vec<ResultCode> = results.iter().map(|r| r.code).collect();
        assert_eq!(&got, expected, "engine and reference disagree on {batch:?}");
        ok += got.iter().filter(|c| c.is_ok()).count();
    }
    assert!(
        ok > 50,
        "the workload should apply a fair share of events, applied {ok}"
    );
    assert_eq!(engine_image, reference.image(), "final states differ");
    assert!(reference.check_invariants().is_empty());
}

/// Submits `batches` all at once, each from a tokio task of its own on a runtime of two
/// threads; answers each batch's outcome, in order.
fn submit_all_at_once(
    ledger: &Ledger,
    batches: Vec<Batch>,
) -> Vec<Result<Vec<EventResult>, SubmitError>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.submit_async(batch).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    })
}

#[test]
fn async_submitters_far_past_capacity_get_busy_and_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.queue_batches_max = 8;
    config.backpressure = Backpressure::Busy;
    let ledger = Ledger::open(config).unwrap();
    ledger.submit(accounts()).unwrap();
    let ids: Vec<u128> = (50_000..52_000).collect();
    let batches = ids
        .iter()
        .map(|&id| Batch::CreateTransfers(vec![tally_testkit::transfer(id, 1, 4, 1)]))
        .collect();
    let outcomes: Vec<(u128, Result<Vec<EventResult>, SubmitError>)> = ids
        .into_iter()
        .zip(submit_all_at_once(&ledger, batches))
        .collect();
    let busy = outcomes
        .iter()
        .filter(|(_, r)| matches!(r, Err(SubmitError::Busy(_))))
        .count();
    let acknowledged: Vec<u128> = outcomes
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        busy + acknowledged.len(),
        outcomes.len(),
        "only busy or durable answers"
    );
    assert!(
        busy > 0,
        "2,000 concurrent submissions must overflow a queue of 8"
    );
    assert!(!acknowledged.is_empty());
    assert_eq!(ledger.metrics().busy_rejections as usize, busy);
    ledger.shutdown().unwrap();
    let reopened = Ledger::open(Config::new(dir.path())).unwrap();
    assert_eq!(
        reopened.lookup_transfers(&acknowledged).len(),
        acknowledged.len()
    );
    let all: Vec<u128> = outcomes.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        reopened.lookup_transfers(&all).len(),
        acknowledged.len(),
        "busy batches were never applied"
    );
}

#[test]
fn oversized_batches_and_engine_owned_fields_are_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    let too_many = vec![Transfer::default(); tally_types::BATCH_EVENTS_MAX + 1];
    assert_eq!(
        ledger.submit(Batch::CreateTransfers(too_many)),
        Err(SubmitError::BatchTooLarge {
            events: 8_191,
            max: 8_190
        })
    );
    let with_balance = Account {
        id: 1,
        ledger: 156,
        code: 1,
        credits_posted: 5,
        ..Account::default()
    };
    assert!(matches!(
        ledger.submit(Batch::CreateAccounts(vec![with_balance])),
        Err(SubmitError::InvalidEvent { index: 0, .. })
    ));
    assert_eq!(
        ledger.submit_at(Batch::CreateAccounts(vec![]), Some(5)),
        Err(SubmitError::ManualClockDisabled)
    );
    let mut manual = Config::new(dir.path().join("manual"));
    manual.manual_clock = true;
    let manual = Ledger::open(manual).unwrap();
    assert_eq!(
        manual.submit_at(
            Batch::CreateAccounts(vec![]),
            Some(tally_types::NOW_NS_MAX + 1)
        ),
        Err(SubmitError::TimeOutOfRange {
            now: tally_types::NOW_NS_MAX + 1
        })
    );
    let at_most = manual.submit_at(Batch::CreateAccounts(vec![]), Some(tally_types::NOW_NS_MAX));
    assert_eq!(at_most, Ok(vec![]), "the latest accepted time");
    manual.shutdown().unwrap();
    assert!(ledger.lookup_accounts(&[1]).is_empty());
    assert_eq!(
        ledger.metrics().batches_committed,
        0,
        "nothing reached the log"
    );
    ledger.shutdown().unwrap();
    assert_eq!(
        ledger.submit(Batch::CreateAccounts(vec![])),
        Err(SubmitError::Stopped)
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ledger::open(Config::new(dir.path())).unwrap();
    let second = Ledger::open(Config::new(dir.path())).unwrap_err();
    assert!(
        second
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{second}"
    );
    first.shutdown().unwrap();
    drop(first);
    Ledger::open(Config::new(dir.path()))
        .unwrap()
        .shutdown()
        .unwrap();
}

#[test]
fn snapshots_bound_replay_and_reproduce_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quiet(dir.path());
    config.snapshot_events_interval = 50;
    let ledger = Ledger::open(config.clone()).unwrap();
    ledger.submit(accounts()).unwrap();
    let mut events_per_batch = vec![ACCOUNTS as u64];
    let mut rng = Rng::new(99);
    for n in 0..40 {
        let batch = random_batch(&mut rng, n);
        events_per_batch.push(batch.len() as u64);
        ledger.submit(batch).unwrap();
    }
    let image = ledger.with_state(StateMachine::image);
    ledger.shutdown().unwrap();
    let metrics = ledger.metrics();
    assert!(metrics.snapshots_written >= 1, "{metrics:?}");
    assert_eq!(metrics.snapshots_failed, 0);
    drop(ledger);
    let snapshots = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("snap")
        })
        .count();
    assert!(snapshots >= 1, "a snapshot was written");
    let reopened = Ledger::open(config.clone()).unwrap();
    assert_eq!(reopened.with_state(StateMachine::image), image);
    // Recovery loaded a snapshot and replayed only the batches after it.
    let recovery = reopened.recovery();
    let base = recovery
        .snapshot_sequence
        .expect("recovery started from a snapshot");
    assert!((1..=41).contains(&base), "snapshot at {base}");
    assert_eq!(recovery.sequence_last, 41);
    assert_eq!(recovery.batches, 41 - base);
    assert_eq!(
        recovery.events,
        events_per_batch[base as usize..].iter().sum::<u64>()
    );
    assert_eq!(recovery.torn_tail_bytes_cut, 0);
    let room = |state: &StateMachine| (state.account_room(), state.transfer_room());
    let (accounts_fit, transfers_fit) = reopened.with_state(room);
    assert!(accounts_fit < 5_000 && transfers_fit < 50_000);
    reopened.shutdown().unwrap();
    drop(reopened);
    // Reopened with a capacity, the snapshot loads into that room.
    let roomy = Ledger::open(Config {
        accounts_capacity: 5_000,
        transfers_capacity: 50_000,
        ..config
    })
    .unwrap();
    assert_eq!(roomy.with_state(StateMachine::image), image);
    assert!(roomy.recovery().snapshot_sequence.is_some());
    let (accounts_fit, transfers_fit) = roomy.with_state(room);
    assert!(accounts_fit >= 5_000 && transfers_fit >= 50_000);
}

/// Submits the accounts and 20 random batches (from `seed`); the state's image after
/// them.
fn twenty_one_batches(ledger: &Ledger, seed: u64) -> tally_types::StateImage {
    ledger.submit(accounts()).unwrap();
    let mut rng = Rng::new(seed);
    for n in 0..20 {
        ledger.submit(random_batch(&mut rng, n)).unwrap();
    }
    ledger.with_state(StateMachine::image)
}

/// Shutdown writes the final state as a snapshot once enough events were applied since
/// the last one, and the next open replays nothing; below that count, or with it at 0,
/// it writes none and the log replays. A ledger reopened from it and shut down again
/// with nothing new writes no other.
#[test]
fn shutdown_snapshots_the_final_state_once_enough_events_came() {
    for (due_after, written) in [(0, false), (1_000_000, false), (10, true)] {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            snapshot_at_shutdown_events: due_after,
            ..quiet(dir.path())
        };
        let ledger = Ledger::open(config.clone()).unwrap();
        let image = twenty_one_batches(&ledger, 7);
        let events = ledger.get_change_events(0, 8_190).unwrap();
        ledger.shutdown().unwrap();
        assert_eq!(ledger.metrics().snapshots_written, u64::from(written));
        drop(ledger);
        let reopened = Ledger::open(config).unwrap();
        assert_eq!(reopened.with_state(StateMachine::image), image);
        assert_eq!(reopened.get_change_events(0, 8_190).unwrap(), events);
        let recovery = reopened.recovery();
        assert_eq!(recovery.sequence_last, 21);
        let (snapshot, replayed) = if written { (Some(21), 0) } else { (None, 21) };
        assert_eq!(
            recovery.snapshot_sequence, snapshot,
            "threshold {due_after}"
        );
        assert_eq!(recovery.batches, replayed);
        reopened.shutdown().unwrap();
        assert_eq!(reopened.metrics().snapshots_written, 0);
    }
}

/// The events a restart replayed count toward the snapshot at shutdown: a ledger that
/// replayed enough of them and then shuts down with nothing new writes one, and the
/// open after that replays nothing.
#[test]
fn replayed_events_count_toward_the_snapshot_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let never = Config {
        snapshot_at_shutdown_events: 0,
        ..quiet(dir.path())
    };
    let ledger = Ledger::open(never.clone()).unwrap();
    let image = twenty_one_batches(&ledger, 8);
    ledger.shutdown().unwrap();
    drop(ledger);
    let soon = Config {
        snapshot_at_shutdown_events: 10,
        ..never
    };
    let replaying = Ledger::open(soon.clone()).unwrap();
    assert_eq!(replaying.recovery().batches, 21);
    replaying.shutdown().unwrap();
    assert_eq!(replaying.metrics().snapshots_written, 1);
    drop(replaying);
    let reopened = Ledger::open(soon).unwrap();
    assert_eq!(reopened.recovery().snapshot_sequence, Some(21));
    assert_eq!(reopened.recovery().batches, 0);
    assert_eq!(reopened.with_state(StateMachine::image), image);
    reopened.shutdown().unwrap();
}

/// Shutdown waits for the snapshot being written and writes the newest image still
/// waiting, on their threads: once it returns, nothing writes into the directory.
#[test]
fn no_snapshot_is_written_after_shutdown_returns() {
    const THREADS: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut config = quiet(dir.path());
    // An image after every group, of a state large enough that writing one takes a
    // while: at shutdown one is being written, and often another waits.
    config.snapshot_events_interval = 1;
    let ledger = Ledger::open(config.clone()).unwrap();
    ledger.submit(accounts()).unwrap();
    let filler = (1..=8_000u128)
        .map(|id| tally_testkit::account(1_000 + id, 156, AccountFlags::empty()))
        .collect();
    ledger.submit(Batch::CreateAccounts(filler)).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let ledger = &ledger;
            scope.spawn(move || {
                // Pays until the ledger refuses for shutting down.
                for round in 0.. {
                    let id = u128::from(100_000 + thread * 1_000_000 + round);
                    if ledger
                        .submit(Batch::CreateTransfers(vec![payment(id)]))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        ledger.shutdown().unwrap();
    });
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let at_shutdown = listing();
    assert!(at_shutdown.iter().any(|name| name.contains("snap")));
    assert!(
        at_shutdown.iter().all(|name| !name.ends_with(".tmp")),
        "{at_shutdown:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(listing(), at_shutdown);
    assert_eq!(ledger.metrics().snapshots_failed, 0);
    drop(ledger);
    let reopened = Ledger::open(config).unwrap();
    assert!(reopened.recovery().snapshot_sequence.is_some());
    reopened.shutdown().unwrap();
}

/// A log several times longer than one replay group (recovery reads it on one thread
/// and replays it on another, a group at a time) comes back whole, and the counts say so.
#[test]
fn a_log_of_many_replay_groups_recovers_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(dir.path());
    let ledger = Ledger::open(config.clone()).unwrap();
    let batches = 24u64;
    for batch in 0..batches {
        let first = 1 + u128::from(batch) * 8_190;
        let accounts = (first..first + 8_190)
            .map(|id| Account {
                id,
                ledger: 840,
                code: 1,
                ..Account::default()
            })
            .collect();
        assert!(
            ledger
                .submit(Batch::CreateAccounts(accounts))
                .unwrap()
                .iter()
                .all(|result| result.code == ResultCode::Ok)
        );
    }
    let image = ledger.with_state(StateMachine::image);
    ledger.shutdown().unwrap();
    drop(ledger);
    let reopened = Ledger::open(config).unwrap();
    assert_eq!(reopened.with_state(StateMachine::image), image);
    let recovery = reopened.recovery();
    assert_eq!(recovery.snapshot_sequence, None);
    assert_eq!(recovery.batches, batches);
    assert_eq!(recovery.events, batches * 8_190);
    assert_eq!(recovery.sequence_last, batches);
}

#[test]
fn a_failed_sync_stops_writes_with_a_clear_error_and_loses_nothing_acknowledged() {
    use tally_log::faulty::{Fault, FaultyStorage};
    let disk = FaultyStorage::new();
    let config = Config::new("unused-with-injected-storage");
    let ledger = Ledger::open_with_storage(config.clone(), Box::new(disk.clone())).unwrap();
    ledger.submit(accounts()).unwrap();
    let pay = |id: u128| Batch::CreateTransfers(vec![tally_testkit::transfer(id, 1, 4, 1)]);
    assert_eq!(ledger.submit(pay(1)).unwrap()[0].code, ResultCode::Ok);
    disk.fail_sync(1, Fault::Eio);
    assert!(
        matches!(ledger.submit(pay(2)), Err(SubmitError::Failed(_))),
        "the failed group is not acknowledged"
    );
    // Never retried as if nothing happened: every later write is refused too.
    assert!(matches!(ledger.submit(pay(3)), Err(SubmitError::Failed(_))));
    assert_eq!(
        ledger.lookup_transfers(&[2, 3]),
        vec![],
        "nothing unsynced is visible"
    );
    assert!(
        ledger.shutdown().is_err(),
        "shutdown reports the log failure"
    );
    disk.crash();
    let reopened = Ledger::open_with_storage(config, Box::new(disk)).unwrap();
    assert_eq!(
        reopened.lookup_transfers(&[1]).len(),
        1,
        "the acknowledged transfer survived"
    );
    assert_eq!(reopened.lookup_transfers(&[2, 3]).len(), 0);
    reopened.shutdown().unwrap();
}

/// Submits one payment of 1 from account 2 to account 4 alone, and checks it is `ok`.
/// `threads` submitters, started together, each paying `rounds` payments one at a
/// time, waiting for each answer (ids from `first_id` on).
fn pay_together(ledger: &Ledger, threads: u64, rounds: u64, first_id: u64) {
    let start_together = std::sync::Barrier::new(threads as usize);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let start_together = &start_together;
            scope.spawn(move || {
                start_together.wait();
                for round in 0..rounds {
                    pay_one(ledger, u128::from(first_id + thread * rounds + round));
                }
            });
        }
    });
}

/// A payment of 1 from account 2 to account 4 (both created by `accounts`).
fn payment(id: u128) -> Transfer {
    Transfer {
        amount: 1,
        debit_account_id: 2,
        credit_account_id: 4,
        ledger: 156,
        code: 1,
        ..blank(id, 0)
    }
}

fn pay_one(ledger: &Ledger, id: u128) {
    let answer = ledger
        .submit(Batch::CreateTransfers(vec![payment(id)]))
        .unwrap();
    assert_eq!(answer[0].code, ResultCode::Ok);
}

#[test]
fn group_commits_start_at_most_once_per_commit_interval_and_share_the_sync() {
    const INTERVAL_MS: u128 = 20;
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.commit_interval_min = std::time::Duration::from_millis(INTERVAL_MS as u64);
    config.commit_interval_max = config.commit_interval_min;
    let ledger = Ledger::open(config).unwrap();
    ledger.submit(accounts()).unwrap();
    let before = ledger.metrics().groups_committed;
    let started = std::time::Instant::now();
    pay_together(&ledger, THREADS, ROUNDS, 1_000);
    let elapsed_ms = started.elapsed().as_millis();
    let metrics = ledger.metrics();
    let groups = u128::from(metrics.groups_committed - before);
    // A commit that several submissions shared is followed by a pause until INTERVAL
    // after it began, so paced commits come at most once per INTERVAL. (A commit that
    // carries one submission alone lets the next come at once: that happens while the
    // threads start up, and again whenever the host stops a thread for a while, so
    // their number is not bounded here.)
    let pauses = u128::from(metrics.commit_pauses);
    assert!(
        pauses <= elapsed_ms / INTERVAL_MS + 1,
        "{pauses} paced commits in {elapsed_ms} ms"
    );
    // So submitters waiting together shared syncs.
    assert!(
        groups < u128::from(THREADS * ROUNDS),
        "{groups} group commits"
    );
    // Each pause follows a commit that several submissions shared.
    assert!(metrics.commit_pauses > 0 && metrics.commit_pauses <= metrics.groups_committed);
    assert!(metrics.commit_pause_us > 0);
    assert!(metrics.to_prometheus().contains(&format!(
        "tally_commit_pauses_total {}",
        metrics.commit_pauses
    )));
    ledger.shutdown().unwrap();
}

/// The queue is bounded in events as well as batches: large batches past the events'
/// bound get `Busy` although few batches wait, and only the acknowledged are applied.
#[test]
fn the_queue_is_bounded_in_events() {
    const BATCH: u128 = 4_000;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.queue_events_max = tally_types::BATCH_EVENTS_MAX;
    config.backpressure = Backpressure::Busy;
    let ledger = Ledger::open(config).unwrap();
    ledger.submit(accounts()).unwrap();
    let firsts: Vec<u128> = (0..64u128).map(|n| 1_000_000 + n * BATCH).collect();
    let batches = firsts
        .iter()
        .map(|&first| {
            let batch = (first..first + BATCH)
                .map(|id| tally_testkit::transfer(id, 1, 4, 1))
                .collect();
            Batch::CreateTransfers(batch)
        })
        .collect();
    let outcomes: Vec<(u128, bool)> = firsts
        .into_iter()
        .zip(submit_all_at_once(&ledger, batches))
        .map(|(first, outcome)| {
            assert!(
                matches!(outcome, Ok(_) | Err(SubmitError::Busy(_))),
                "only busy or durable answers"
            );
            (first, outcome.is_ok())
        })
        .collect();
    let busy = outcomes.iter().filter(|(_, ok)| !ok).count();
    assert!(
        busy > 0,
        "64 batches of 4,000 at once must pass 8,190 queued events"
    );
    assert!(busy < outcomes.len());
    for (first, acknowledged) in outcomes {
        let stored = ledger.lookup_transfers(&[first, first + BATCH - 1]).len();
        assert_eq!(
            stored,
            if acknowledged { 2 } else { 0 },
            "batch from {first}"
        );
    }
    ledger.shutdown().unwrap();
    let mut config = Config::new(dir.path().join("small"));
    config.queue_events_max = tally_types::BATCH_EVENTS_MAX - 1;
    let error = Ledger::open(config).unwrap_err();
    assert!(error.to_string().contains("queue_events_max"), "{error}");
}

#[test]
fn a_commit_interval_past_the_maximum_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.commit_interval_max = tally_engine::COMMIT_INTERVAL_MAX * 2;
    let error = Ledger::open(config).unwrap_err();
    assert!(error.to_string().contains("commit_interval_max"), "{error}");
    // A floor above the ceiling is refused too, and nothing is created.
    let mut config = Config::new(dir.path().join("floor"));
    config.commit_interval_min = config.commit_interval_max * 2;
    let error = Ledger::open(config).unwrap_err();
    assert!(error.to_string().contains("commit_interval_min"), "{error}");
    assert!(!dir.path().join("floor").exists());
}

#[test]
fn concurrent_commits_are_not_paced_while_the_machine_runs_freely() {
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    assert_eq!(
        ledger.config().commit_interval_min,
        std::time::Duration::ZERO
    );
    ledger.submit(accounts()).unwrap();
    let before = ledger.metrics().groups_committed;
    pay_together(&ledger, THREADS, ROUNDS, 3_000);
    // Commits several submissions shared came back to back (a group is whatever arrived
    // during the sync before it): no pause, unless the machine stood still meanwhile.
    let metrics = ledger.metrics();
    assert!(metrics.groups_committed - before <= THREADS * ROUNDS);
    assert!(
        metrics.commit_stalls > 0
            || (metrics.commit_pauses == 0 && metrics.commit_interval_us == 0),
        "{} pauses, {} stalls",
        metrics.commit_pauses,
        metrics.commit_stalls
    );
    let prometheus = metrics.to_prometheus();
    assert!(prometheus.contains(&format!(
        "tally_commit_stalls_total {}",
        metrics.commit_stalls
    )));
    assert_prometheus_types(&prometheus);
    ledger.shutdown().unwrap();
}

/// Every sample of `text` belongs to a family whose `# TYPE` line comes first, and a
/// family named `..._total` is a counter.
fn assert_prometheus_types(text: &str) {
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (family, kind) = declared.split_once(' ').expect("# TYPE name kind");
            assert!(
                types.insert(family, kind).is_none(),
                "{family} declared twice"
            );
            continue;
        }
        let family = line
            .split(['{', ' '])
            .next()
            .expect("a sample names its family");
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{family} has no # TYPE"));
        if family.ends_with("_total") {
            assert_eq!(*kind, "counter", "{family}");
        }
    }
    assert!(types.contains_key("tally_results_total"), "{text}");
}

#[test]
fn a_segment_size_recovery_could_not_read_back_is_refused_at_open() {
    let file_max = tally_log::SEGMENT_FILE_BYTES_MAX;
    for (bytes, accepted) in [
        (file_max + 1, false),
        (0, false),
        (tally_log::SEGMENT_BYTES_MIN - 1, false),
        (tally_log::SEGMENT_BYTES_MIN, true),
        (file_max, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.segment_bytes_max = bytes;
        match Ledger::open(config) {
            Ok(ledger) => {
                assert!(accepted, "{bytes} was accepted");
                ledger.shutdown().unwrap();
            }
            Err(error) => {
                assert!(!accepted, "{bytes} was refused: {error}");
                assert!(error.to_string().contains("segment_bytes_max"), "{error}");
                assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
            }
        }
    }
}

#[test]
fn a_lone_sequential_caller_is_not_held_back_by_commit_pacing() {
    const SUBMITS: u32 = 30;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.commit_interval_min = tally_engine::COMMIT_INTERVAL_MAX;
    config.commit_interval_max = tally_engine::COMMIT_INTERVAL_MAX;
    let ledger = Ledger::open(config).unwrap();
    ledger.submit(accounts()).unwrap();
    let started = std::time::Instant::now();
    for round in 0..SUBMITS {
        pay_one(&ledger, u128::from(5_000 + round));
    }
    // Paced, each submit would wait out the interval: at least 3 s in all. Each carried
    // its commit alone, so none waited.
    let paced = tally_engine::COMMIT_INTERVAL_MAX * (SUBMITS - 1);
    assert!(
        started.elapsed() < paced / 2,
        "{SUBMITS} sequential submits took {:?}",
        started.elapsed()
    );
    let metrics = ledger.metrics();
    assert_eq!(
        metrics.events_committed,
        ACCOUNTS as u64 + u64::from(SUBMITS)
    );
    assert_eq!(
        metrics.commit_pauses, 0,
        "a lone caller's commits never pause"
    );
    ledger.shutdown().unwrap();
}

#[test]
fn small_groups_are_applied_by_the_log_thread_and_large_ones_are_not() {
    const SUBMITS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(quiet(dir.path())).unwrap();
    ledger.submit(accounts()).unwrap();
    let before = ledger.metrics();
    for round in 0..SUBMITS {
        pay_one(&ledger, u128::from(7_000 + round));
    }
    let small = ledger.metrics();
    // Each lone payment is its own group, found with the apply thread idle (its answer
    // came before the next was sent); only a thread preempted just then could miss it.
    let here = small.groups_applied_by_log_thread - before.groups_applied_by_log_thread;
    assert!(
        here > SUBMITS / 2,
        "{here} of {SUBMITS} lone payments applied by the log thread"
    );
    let long: Vec<Transfer> = (0..500u128).map(|n| payment(8_000 + n)).collect();
    let answer = ledger.submit(Batch::CreateTransfers(long)).unwrap();
    assert!(answer.iter().all(|r| r.code == ResultCode::Ok));
    let large = ledger.metrics();
    assert_eq!(large.groups_committed, small.groups_committed + 1);
    assert_eq!(
        large.groups_applied_by_log_thread, small.groups_applied_by_log_thread,
        "a group of 500 events goes to the apply thread"
    );
    assert_eq!(large.events_committed, small.events_committed + 500);
    ledger.shutdown().unwrap();
}

#[test]
fn readers_get_in_between_the_steps_of_a_long_group() {
    const EVENTS: u128 = tally_types::BATCH_EVENTS_MAX as u128;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(quiet(dir.path())).unwrap();
    ledger.submit(accounts()).unwrap();
    // A reader looping on a batch's first and last transfer finds the first alone only
    // if it got in while the batch was being applied. Holding the state for whole
    // groups, it never would; letting readers in, it does within a few batches.
    let mut seen_between = false;
    for round in 0..20u128 {
        let first = 1_000_000 * (round + 1);
        let last = first + EVENTS - 1;
        let payments = (first..=last)
            .map(|id| tally_testkit::transfer(id, 1, 4, 1))
            .collect();
        let applied = AtomicBool::new(false);
        seen_between = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                while !applied.load(Ordering::Acquire) {
                    if ledger.lookup_transfers(&[first, last]).len() == 1 {
                        return true;
                    }
                }
                false
            });
            let results = ledger.create_transfers(payments).unwrap();
            assert!(results.iter().all(|r| r.code == ResultCode::Ok));
            applied.store(true, Ordering::Release);
            reader.join().unwrap()
        });
        if seen_between {
            break;
        }
    }
    assert!(seen_between, "no read got in while a batch was applied");
    ledger.shutdown().unwrap();
}

/// A user-data index that starts mid-run (here at the first transfer with an order id)
/// begins small; the table its reserved room calls for is made on the table maker's
/// thread and adopted between groups, and every record stays found.
#[test]
fn a_user_data_index_started_mid_run_grows_into_a_prepared_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.shards = 1;
    config.accounts_capacity = 100;
    config.transfers_capacity = 400_000;
    let ledger = Ledger::open(config).unwrap();
    let unlimited = (1..=ACCOUNTS)
        .map(|id| tally_testkit::account(id, TEST_LEDGER, AccountFlags::empty()))
        .collect();
    ledger.submit(Batch::CreateAccounts(unlimited)).unwrap();
    let order = |id: u128| id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = 1u128;
    let mut batch = || {
        let transfers = (0..500)
            .map(|_| {
                next += 1;
                let (debit, credit) = (1 + next % ACCOUNTS, 1 + (next + 1) % ACCOUNTS);
                Transfer {
                    user_data_128: order(next),
                    ..tally_testkit::transfer(next, debit, credit, 1)
                }
            })
            .collect();
        Batch::CreateTransfers(transfers)
    };
    let index_bytes = || ledger.with_state(StateMachine::query_index_bytes);
    ledger.submit(batch()).unwrap();
    // Started with room for 65,536 records (a 1 MiB table); the prepared one holds
    // 400,000 (4 MiB), and only adoption brings it this early.
    let started = index_bytes();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while index_bytes() < started + (3 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "no table adopted: {} bytes",
            index_bytes()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        let results = ledger.submit(batch()).unwrap();
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    }
    assert!(next < 60_000, "adopted before the first table filled");
    for id in (2..=next).step_by(97) {
        let filter = tally_types::QueryFilter {
            user_data_128: order(id),
            ..tally_types::QueryFilter::default()
        };
        let found = ledger.query_transfers(&filter);
        assert_eq!(found.len(), 1, "transfer {id}");
        assert_eq!(found[0].id, id);
    }
    ledger.shutdown().unwrap();
}

/// With the manual clock, a batch at `T + t·10⁹ − 1` finds a pending transfer stamped
/// at `T` with timeout `t` still pending, even when another pending transfer that
/// would have expired at that instant was voided; and the answer is the same whether
/// the ledger restarted in between or not (a restart keeps only the instants that
/// still wait).
#[test]
fn a_voided_transfer_no_longer_moves_a_batch_restarted_or_not() {
    const NS: u64 = tally_types::NS_PER_S;
    let pending = |id| Transfer {
        flags: TransferFlags::PENDING,
        timeout: 1,
        ..tally_testkit::transfer(id, 1, 2, 5)
    };
    let settle = |id, pending_id, flags| Transfer {
        id,
        pending_id,
        flags,
        ..Transfer::default()
    };
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.manual_clock = true;
        let mut ledger = Ledger::open(config.clone()).unwrap();
        let two = (1..=2)
            .map(|id| tally_testkit::account(id, TEST_LEDGER, AccountFlags::empty()))
            .collect();
        ledger
            .submit_at(Batch::CreateAccounts(two), Some(1_000))
            .unwrap();
        let both = Batch::CreateTransfers(vec![pending(10), pending(11)]);
        let stamps: Vec<u64> = ledger
            .submit_at(both, Some(2_000))
            .unwrap()
            .iter()
            .map(|result| result.timestamp)
            .collect();
        assert_eq!(stamps, [2_000, 2_001]);
        let void = settle(12, 10, TransferFlags::VOID_PENDING_TRANSFER);
        let voided = ledger
            .submit_at(Batch::CreateTransfers(vec![void]), Some(3_000))
            .unwrap();
        assert_eq!(voided[0].code, ResultCode::Ok);
        if restart {
            ledger.shutdown().unwrap();
            ledger = Ledger::open(config).unwrap();
        }
        // One nanosecond before transfer 11 expires, where transfer 10 would have.
        let post = settle(13, 11, TransferFlags::POST_PENDING_TRANSFER);
        let posted = ledger
            .submit_at(Batch::CreateTransfers(vec![post]), Some(2_000 + NS))
            .unwrap();
        assert_eq!(
            (posted[0].code, posted[0].timestamp),
            (ResultCode::Ok, 2_000 + NS),
            "restarted: {restart}"
        );
        ledger.shutdown().unwrap();
    }
}
