//! The sharded engine against the reference state machine (docs/spec.md §3.1): the same random
//! traffic on 1, 2, 3, 4 and 8 shards gives, batch for batch, the results the reference
//! gives when it applies the log in order, and the same final state.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tally_engine::EventResult;
use tally_engine::{Config, Ledger, Placement, ShardExecution};
use tally_log::{LogOptions, Wal};
use tally_state::StateMachine;
use tally_testkit::workload::{Accounts, Workload};
use tally_types::{Batch, NS_PER_S, ResultCode};

/// Marks every event of a batch with `tag`, so that each submitted batch is unique and
/// can be found in the log by content.
fn tagged(mut batch: Batch, tag: u64) -> Batch {
    match &mut batch {
        Batch::CreateAccounts(events) => events.iter_mut().for_each(|a| a.user_data_64 = tag),
        Batch::CreateTransfers(events) => events.iter_mut().for_each(|t| t.user_data_64 = tag),
    }
    batch
}

/// The log of `dir` replayed into a fresh reference: every record's batch and results.
fn replay(dir: &std::path::Path) -> (Vec<(Batch, Vec<ResultCode>)>, StateMachine) {
    let (_wal, recovered) = Wal::open(dir, LogOptions::default()).unwrap();
    let mut reference = StateMachine::new();
    // Empty batches are the engine's own (an idle ledger's expiry pulses): applied,
    // but nobody submitted them.
    let logged = recovered
        .records
        .into_iter()
        .filter_map(|record| {
            let results = reference.apply(record.timestamp, &record.batch);
            (!record.batch.is_empty()).then_some((record.batch, results))
        })
        .collect();
    (logged, reference)
}

fn codes(results: &[EventResult]) -> Vec<ResultCode> {
    results.iter().map(|r| r.code).collect()
}

/// Checks every answered batch against the reference's results for it, in log order,
/// and the final states. Returns how many events were applied.
fn check_against_log(
    dir: &std::path::Path,
    answered: &[(Batch, Vec<EventResult>)],
    engine_image: &tally_types::StateImage,
) -> usize {
    let (logged, reference) = replay(dir);
    assert_eq!(
        logged.len(),
        answered.len(),
        "every answered batch logged once"
    );
    let by_content: HashMap<String, &Vec<ResultCode>> = logged
        .iter()
        .map(|(batch, results)| (format!("{batch:?}"), results))
        .collect();
    let mut ok = 0;
    for (batch, results) in answered {
        let expected = by_content[&format!("{batch:?}")];
        assert_eq!(
            &codes(results),
            expected,
            "engine and reference disagree on {batch:?}"
        );
        ok += results.iter().filter(|r| r.code.is_ok()).count();
    }
    assert_eq!(engine_image, &reference.image(), "final states differ");
    assert!(reference.check_invariants().is_empty());
    ok
}

/// What the engine answers to reads beyond the image: the balance history of accounts
/// 1 to 40 and queries by order id, account reference and ledger.
#[derive(Debug, PartialEq)]
struct Reads {
    histories: Vec<Vec<tally_types::AccountBalance>>,
    transfers: Vec<Vec<tally_types::Transfer>>,
    accounts: Vec<Vec<tally_types::Account>>,
}

fn query_filters() -> Vec<tally_types::QueryFilter> {
    let mut filters: Vec<_> = (1..=12u128)
        .map(|order| tally_types::QueryFilter {
            user_data_128: order,
            limit: 20,
            reversed: order % 2 == 0,
            ..Default::default()
        })
        .collect();
    filters.push(tally_types::QueryFilter {
        ledger: 840,
        limit: 50,
        ..Default::default()
    });
    filters
}

fn engine_reads(ledger: &Ledger) -> Reads {
    Reads {
        histories: (1..=40)
            .map(|id| ledger.get_account_balances(&tally_types::AccountFilter::new(id)))
            .collect(),
        transfers: query_filters()
            .iter()
            .map(|f| ledger.query_transfers(f))
            .collect(),
        accounts: (1..=3u32)
            .map(|reference| {
                ledger.query_accounts(&tally_types::QueryFilter {
                    user_data_32: reference,
                    limit: 30,
                    ..Default::default()
                })
            })
            .collect(),
    }
}

fn reference_reads(reference: &StateMachine) -> Reads {
    Reads {
        histories: (1..=40)
            .map(|id| reference.account_balances(&tally_types::AccountFilter::new(id)))
            .collect(),
        transfers: query_filters()
            .iter()
            .map(|f| reference.query_transfers(f))
            .collect(),
        accounts: (1..=3u32)
            .map(|reference_value| {
                reference.query_accounts(&tally_types::QueryFilter {
                    user_data_32: reference_value,
                    limit: 30,
                    ..Default::default()
                })
            })
            .collect(),
    }
}

/// Concurrent traffic on `shards` shards, every group by plan on the shard threads;
/// groups of `deltas_from` events or more decide their units with deltas
/// (`Config::shard_deltas_from`).
fn concurrent_run(shards: usize, placement: Placement, skew: Accounts, deltas_from: usize) {
    let execution = ShardExecution::Always;
    concurrent_run_as(shards, placement, skew, deltas_from, execution);
}

/// [`concurrent_run`], each group run by plan as `execution` says.
fn concurrent_run_as(
    shards: usize,
    placement: Placement,
    skew: Accounts,
    deltas_from: usize,
    execution: ShardExecution,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.shards = shards;
    config.placement = placement;
    config.shard_deltas_from = deltas_from;
    config.shard_execution = execution;
    // No idle expiry pulse: one between the image and the shutdown would be logged
    // after the state compared.
    config.expire_when_idle = false;
    let ledger = Ledger::open(config).unwrap();
    assert_eq!(ledger.shards(), shards);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (ledger, done) = (ledger.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                for (id, totals) in ledger.ledger_totals() {
                    assert!(
                        totals.balanced(),
                        "ledger {id} unbalanced at a read: {totals:?}"
                    );
                }
                reads += 1;
            }
            reads
        })
    };
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut workload = Workload::new(100 + thread, skew);
                (0..80u64)
                    .map(|n| {
                        let batch = tagged(workload.batch(), (thread << 32) | n);
                        let results = ledger.submit(batch.clone()).unwrap();
                        (batch, results)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Tokio tasks submit at the same time as the threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let tasks: Vec<(Batch, Vec<EventResult>)> = runtime.block_on(async {
        let handles: Vec<_> = (0..4u64)
            .map(|task| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let mut workload = Workload::new(200 + task, skew);
                    let mut answered = Vec::new();
                    for n in 0..40u64 {
                        let batch = tagged(workload.batch(), ((task + 8) << 32) | n);
                        let results = ledger.submit_async(batch.clone()).await.unwrap();
                        answered.push((batch, results));
                    }
                    answered
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap());
        }
        all
    });
    let mut answered: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    answered.extend(tasks);
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let image = ledger.with_state(StateMachine::image);
    let reads = engine_reads(&ledger);
    let metrics = ledger.metrics();
    ledger.shutdown().unwrap();
    let ok = check_against_log(dir.path(), &answered, &image);
    let (_, reference) = replay(dir.path());
    let expected = reference_reads(&reference);
    assert_eq!(
        reads, expected,
        "{shards} shards: history or queries differ"
    );
    assert!(expected.histories.iter().any(|rows| rows.len() > 5));
    assert!(expected.transfers.iter().any(|found| found.len() > 2));
    assert!(ok > 500, "{shards} shards: only {ok} events applied");
    if execution == ShardExecution::WhenFaster {
        // Whole ids on two shards: most units span both, so their plans lose.
        if shards == 2 && placement == Placement::WHOLE_ID {
            assert!(metrics.groups_serial > 0, "{metrics:?}");
        }
    } else if shards > 1 {
        assert!(metrics.shard_units > 1_000, "{metrics:?}");
        assert!(metrics.shard_units_spanning > 0, "{metrics:?}");
        match deltas_from {
            0 => assert!(metrics.shard_units_with_deltas > 0, "{metrics:?}"),
            usize::MAX => assert_eq!(metrics.shard_units_with_deltas, 0, "{metrics:?}"),
            _ => {}
        }
    } else {
        assert_eq!(metrics.shard_units, 0);
    }
}

#[test]
fn concurrent_traffic_matches_the_reference_on_1_2_3_4_and_8_shards() {
    for shards in [1, 2, 3, 4, 8] {
        concurrent_run(shards, Placement::WHOLE_ID, Accounts::Uniform, 0);
        concurrent_run(shards, Placement::WHOLE_ID, Accounts::Hot, 0);
    }
    // Parts lent whole for every group (the default), and deltas for large groups only.
    concurrent_run(2, Placement::WHOLE_ID, Accounts::Hot, usize::MAX);
    concurrent_run(3, Placement::WHOLE_ID, Accounts::Hot, 1_024);
    // The default: groups whose plans would be slower run serially.
    let faster = ShardExecution::WhenFaster;
    concurrent_run_as(2, Placement::WHOLE_ID, Accounts::Hot, usize::MAX, faster);
    concurrent_run_as(4, Placement::WHOLE_ID, Accounts::Uniform, 0, faster);
}

/// Ids placed by their two lowest bits: the workload's small ids crowd onto few shards,
/// and the results must not notice.
#[test]
fn concurrent_traffic_placed_by_key_bits_matches_the_reference() {
    let placement = Placement::low_bits(2).unwrap();
    for shards in [2, 3] {
        concurrent_run(shards, placement, Accounts::Uniform, 0);
        concurrent_run(shards, placement, Accounts::Hot, 0);
    }
}

/// A manual clock moves time by seconds now and then, so pending transfers expire
/// between batches (expiry units in plans) and inside groups (the serial fallback).
#[test]
fn expiry_across_shards_matches_the_reference() {
    for shards in [2, 3, 8] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.shards = shards;
        config.shard_execution = ShardExecution::Always;
        config.manual_clock = true;
        config.shard_deltas_from = 0;
        let ledger = Ledger::open(config).unwrap();
        let mut workload = Workload::new(7 + shards as u64, Accounts::Hot);
        let mut rng = tally_testkit::SeededRng::new(shards as u64);
        let mut now = 1_000 * NS_PER_S;
        let mut answered = Vec::new();
        for n in 0..400u64 {
            let batch = tagged(workload.batch(), n);
            now += if rng.chance(20) { NS_PER_S } else { 100_000 };
            let results = ledger.submit_at(batch.clone(), Some(now)).unwrap();
            now = now.max(results.iter().map(|r| r.timestamp).max().unwrap_or(0));
            answered.push((batch, results));
        }
        let image = ledger.with_state(StateMachine::image);
        ledger.shutdown().unwrap();
        let expired = image
            .pending_statuses
            .iter()
            .filter(|(_, s)| *s == tally_types::PendingStatus::Expired)
            .count();
        assert!(expired > 5, "{shards} shards: only {expired} expiries");
        check_against_log(dir.path(), &answered, &image);
    }
}

/// A ledger written with one shard count and placement reopens with others: the log
/// and snapshots do not depend on them, and neither does anything read back.
#[test]
fn a_ledger_reopens_with_a_different_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut workload = Workload::new(3, Accounts::Uniform);
    let mut image = None;
    let key = |bits| Placement::low_bits(bits).unwrap();
    for (shards, placement) in [
        (1, Placement::WHOLE_ID),
        (4, key(2)),
        (2, Placement::WHOLE_ID),
        (8, key(3)),
        (3, Placement::WHOLE_ID),
        (1, key(1)),
    ] {
        let mut config = Config::new(dir.path());
        config.shards = shards;
        config.shard_execution = ShardExecution::Always;
        config.placement = placement;
        // A small interval, so that some reopenings start from a snapshot.
        config.snapshot_events_interval = 300;
        // Nothing may happen between the image and the shutdown.
        config.expire_when_idle = false;
        let ledger = Ledger::open(config).unwrap();
        let reopened = ledger.with_state(StateMachine::image);
        if let Some(before) = &image {
            assert_eq!(
                &reopened, before,
                "reopened on {shards} shards, {placement:?}"
            );
        }
        for _ in 0..50 {
            ledger.submit(workload.batch()).unwrap();
        }
        image = Some(ledger.with_state(StateMachine::image));
        ledger.shutdown().unwrap();
    }
}

/// A batch asked for 1 ns before a pending transfer's expiry instant would span it: the
/// engine stamps it just after the instant instead (no event may share an expiry's
/// timestamp, nor come after it with an earlier one), so the transfer is released
/// before that batch, on any number of shards, live and when the log is replayed on
/// reopening. (The planner's handling of an instant inside a batch's span, which only
/// logs from before this rule hold, is covered by tally-state's plan tests.)
#[test]
fn a_batch_spanning_an_expiry_instant_is_stamped_after_it_on_any_shard_count() {
    use tally_types::{AccountFlags, PendingStatus, Transfer, TransferFlags};
    let transfer = |id: u128, flags: TransferFlags, timeout: u32| Transfer {
        id,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 5,
        ledger: 1,
        code: 1,
        flags,
        timeout,
        ..Transfer::default()
    };
    let single = TransferFlags::default();
    let mut images = Vec::new();
    for shards in [1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.shards = shards;
        config.shard_execution = ShardExecution::Always;
        config.manual_clock = true;
        let mut ledger = Ledger::open(config.clone()).unwrap();
        let accounts = (1..=2)
            .map(|id| tally_testkit::account(id, 1, AccountFlags::empty()))
            .collect();
        let submit = |ledger: &Ledger, batch: Batch, now: u64| {
            let results = ledger.submit_at(batch, Some(now)).unwrap();
            assert!(
                results.iter().all(|r| r.code == ResultCode::Ok),
                "{shards} shards"
            );
            results
        };
        submit(&ledger, Batch::CreateAccounts(accounts), NS_PER_S);
        let pending = transfer(10, TransferFlags::PENDING, 1);
        let stamp =
            submit(&ledger, Batch::CreateTransfers(vec![pending]), 2 * NS_PER_S)[0].timestamp;
        let expires_at = stamp + NS_PER_S;
        let spanning = (11..=13).map(|id| transfer(id, single, 0)).collect();
        let results = submit(&ledger, Batch::CreateTransfers(spanning), expires_at - 1);
        assert_eq!(results[0].timestamp, expires_at + 1, "{shards} shards");
        let state = |ledger: &Ledger| {
            ledger.with_state(|s| {
                (
                    s.pending_status(10),
                    s.lookup_account(1)
                        .map(|a| (a.debits_pending, a.debits_posted)),
                )
            })
        };
        assert_eq!(
            state(&ledger),
            (Some(PendingStatus::Expired), Some((0, 15))),
            "{shards} shards: released before the batch stamped after the instant"
        );
        // Reopened, the log ends with that batch: replay must release it too.
        ledger.shutdown().unwrap();
        ledger = Ledger::open(config.clone()).unwrap();
        assert_eq!(
            state(&ledger),
            (Some(PendingStatus::Expired), Some((0, 15)))
        );
        let next = transfer(14, single, 0);
        submit(&ledger, Batch::CreateTransfers(vec![next]), expires_at + 10);
        assert_eq!(
            state(&ledger),
            (Some(PendingStatus::Expired), Some((0, 20))),
            "{shards} shards: the next batch"
        );
        let image = ledger.with_state(StateMachine::image);
        ledger.shutdown().unwrap();
        // Replayed as one group on reopening, with every shard count.
        for reopen_shards in [1, 2, 4] {
            config.shards = reopen_shards;
            config.shard_execution = ShardExecution::Always;
            let ledger = Ledger::open(config.clone()).unwrap();
            assert_eq!(ledger.with_state(StateMachine::image), image);
            ledger.shutdown().unwrap();
        }
        images.push(image);
    }
    assert!(images.windows(2).all(|pair| pair[0] == pair[1]));
}

/// Balances with results (docs/spec.md §2): on 1, 3 and 8 shards, with change events on
/// and off, each applied transfer's answer carries its accounts' balances exactly as the
/// reference has them right after that event, with expiries between batches.
#[test]
fn balances_with_results_are_the_reference_balances_right_after_each_event() {
    for (shards, change_events) in [(1, true), (3, false), (8, true), (1, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.shards = shards;
        config.shard_execution = ShardExecution::Always;
        config.manual_clock = true;
        config.change_events = change_events;
        config.shard_deltas_from = 0;
        let ledger = Ledger::open(config).unwrap();
        let mut workload = Workload::new(40 + shards as u64, Accounts::Hot);
        let mut rng = tally_testkit::SeededRng::new(9);
        let mut now = 1_000 * NS_PER_S;
        let mut answered = Vec::new();
        for n in 0..200u64 {
            now += if rng.chance(20) { NS_PER_S } else { 100_000 };
            let batch = tagged(workload.batch(), n);
            let results = match batch.clone() {
                Batch::CreateTransfers(transfers) => ledger
                    .create_transfers_with_balances(transfers, Some(now))
                    .unwrap(),
                accounts => {
                    let results = ledger.submit_at(accounts, Some(now)).unwrap();
                    results
                        .iter()
                        .map(|r| tally_engine::TransferResult {
                            code: r.code,
                            timestamp: r.timestamp,
                            balances: None,
                        })
                        .collect()
                }
            };
            now = now.max(results.iter().map(|r| r.timestamp).max().unwrap_or(0));
            answered.push((batch, results));
        }
        ledger.shutdown().unwrap();
        // The reference, replaying the log, captures each change with its balances.
        let (_wal, recovered) = Wal::open(dir.path(), LogOptions::default()).unwrap();
        let mut reference = StateMachine::new();
        reference.set_change_capture(true);
        let mut after: HashMap<u64, tally_types::TransferBalances> = HashMap::new();
        for record in recovered.records {
            reference.apply(record.timestamp, &record.batch);
            for event in reference.take_changes() {
                if event.kind != tally_types::ChangeKind::TwoPhaseExpired {
                    after.insert(
                        event.timestamp,
                        tally_types::TransferBalances {
                            debit_account: tally_types::AccountBalances::of(&event.debit_account),
                            credit_account: tally_types::AccountBalances::of(&event.credit_account),
                        },
                    );
                }
            }
        }
        let mut checked = 0;
        for (batch, results) in &answered {
            let transfers = matches!(batch, Batch::CreateTransfers(_));
            for result in results {
                if transfers && result.code.is_ok() {
                    assert_eq!(
                        result.balances.as_ref(),
                        after.get(&result.timestamp),
                        "{shards} shards"
                    );
                    checked += 1;
                } else {
                    assert_eq!(result.balances, None);
                }
            }
        }
        assert!(
            checked > 300,
            "{shards} shards: only {checked} transfers applied"
        );
    }
}
