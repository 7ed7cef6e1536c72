//! Closed-loop submit benchmark: CALLERS tokio tasks each submit batches of BATCH
//! transfers back to back for SECONDS, durable (fdatasync), on SHARDS shards (0 =
//! fitted to the machine), between ACCOUNTS accounts (default 1,000: cache-resident;
//! more, and each transfer picks its accounts scattered over them). Prints transfers/s
//! and how much work spanned shards.
//!
//! `cargo bench -p tally-engine --bench submit_bench --`
//! `[CALLERS] [SECONDS] [BATCH] [SHARDS] [ACCOUNTS]`
//! (`-- --test`: a tiny run on a temporary directory, as a smoke test).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_engine::{Config, Ledger, SubmitError};
use tally_types::{Account, Batch, Transfer};

/// What to run.
struct Args {
    callers: u64,
    duration: Duration,
    batch_events: u64,
    shards: usize,
    account_count: u128,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (args, smoke) = tally_testkit::bench_arguments();
    let mut args = args.into_iter();
    let mut run = Args {
        callers: args.next().map_or(Ok(256), |a| a.parse())?,
        duration: Duration::from_secs(args.next().map_or(Ok(5), |a| a.parse())?),
        batch_events: args.next().map_or(Ok(1), |a| a.parse())?,
        shards: args.next().map_or(Ok(0), |a| a.parse())?,
        account_count: args.next().map_or(Ok(1_000), |a| a.parse())?,
    };
    if run.account_count < 2 {
        return Err("ACCOUNTS must be at least 2".into());
    }
    if smoke {
        run.callers = run.callers.min(8);
        run.duration = Duration::from_millis(200);
    }
    let (dir, _temp) = common::data_dir("submit-bench", smoke)?;
    let mut config = Config::new(&dir);
    config.shards = run.shards;
    let ledger = Ledger::open(config)?;
    create_accounts(&ledger, run.account_count)?;
    let started = Instant::now();
    let done = submit_for(&ledger, &run)?;
    report(&ledger, done, started.elapsed().as_secs_f64());
    ledger.shutdown()?;
    Ok(())
}

fn create_accounts(ledger: &Ledger, account_count: u128) -> Result<(), SubmitError> {
    let ids: Vec<u128> = (1..=account_count).collect();
    for chunk in ids.chunks(tally_types::BATCH_EVENTS_MAX) {
        let accounts: Vec<Account> = chunk
            .iter()
            .map(|&id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Account::default()
            })
            .collect();
        ledger.submit(Batch::CreateAccounts(accounts))?;
    }
    Ok(())
}

/// Runs the callers until the run's time is up; returns the transfers acknowledged.
fn submit_for(ledger: &Ledger, run: &Args) -> std::io::Result<u64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run.duration;
    let (batch_events, account_count) = (run.batch_events, run.account_count);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..run.callers)
            .map(|caller| {
                let (ledger, done) = (ledger.clone(), Arc::clone(&done));
                tokio::spawn(async move {
                    let mut id = u128::from(caller) << 64;
                    while Instant::now() < deadline {
                        let transfers: Vec<Transfer> = (0..batch_events)
                            .map(|_| {
                                id += 1;
                                scattered_transfer(id, account_count)
                            })
                            .collect();
                        if ledger
                            .submit_async(Batch::CreateTransfers(transfers))
                            .await
                            .is_ok()
                        {
                            done.fetch_add(batch_events, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    Ok(done.load(Ordering::Relaxed))
}

/// Transfer `id` between accounts picked scattered (splitmix64's finaliser over the id,
/// then scaled to the range) so that consecutive transfers touch unrelated accounts.
fn scattered_transfer(id: u128, account_count: u128) -> Transfer {
    let mut h = (id as u64) ^ ((id >> 64) as u64);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let debit = 1 + ((u128::from(h) * account_count) >> 64);
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: 1 + (debit % account_count),
        amount: 1,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

fn report(ledger: &Ledger, done: u64, elapsed: f64) {
    let metrics = ledger.metrics();
    println!(
        "{} transfers in {elapsed:.2} s = {:.0} transfers/s; {} groups, mean {:.1} events/group, commit p50 {} us p99 {} us",
        done,
        done as f64 / elapsed,
        metrics.groups_committed,
        metrics.group_events_mean,
        metrics.commit_latency_us_p50,
        metrics.commit_latency_us_p99
    );
    if ledger.shards() > 1 {
        let share = |n: u64| 100.0 * n as f64 / metrics.shard_units.max(1) as f64;
        println!(
            "{} shards: {} units, {:.1}% spanned shards, {:.1}% waited for a lent part",
            ledger.shards(),
            metrics.shard_units,
            share(metrics.shard_units_spanning),
            share(metrics.shard_units_waited),
        );
    }
}
