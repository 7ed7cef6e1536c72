//! Closed-loop submit benchmark: CALLERS tokio tasks each submit batches of BATCH
//! transfers back to back for SECONDS, durable (fdatasync), on SHARDS shards (0 =
//! fitted to the machine), between ACCOUNTS accounts (default 1,000: cache-resident;
//! more, and each transfer picks its accounts scattered over them). Prints transfers/s
//! and how much work spanned shards.
//!
//! `cargo run --release -p tally-engine --example submit_bench -- [CALLERS] [SECONDS] [BATCH] [SHARDS] [ACCOUNTS]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_engine::{Config, Ledger};
use tally_types::{Account, Batch, Transfer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let callers: u64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(5), |a| a.parse())?;
    let batch_events: u64 = args.next().map_or(Ok(1), |a| a.parse())?;
    let shards: usize = args.next().map_or(Ok(0), |a| a.parse())?;
    let account_count: u128 = args.next().map_or(Ok(1_000), |a| a.parse())?;
    if account_count < 2 {
        return Err("ACCOUNTS must be at least 2".into());
    }
    let dir = std::env::current_dir()?.join("target/submit-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::new(&dir);
    config.shards = shards;
    let ledger = Ledger::open(config)?;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let (ledger, done) = (ledger.clone(), Arc::clone(&done));
                tokio::spawn(async move {
                    let mut id = u128::from(caller) << 64;
                    while Instant::now() < deadline {
                        let transfers: Vec<Transfer> = (0..batch_events)
                            .map(|_| {
                                id += 1;
                                // Scattered (splitmix64's finaliser over the id, then
                                // scaled to the range) so that consecutive transfers
                                // touch unrelated accounts.
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
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = ledger.metrics();
    println!(
        "{} transfers in {elapsed:.2} s = {:.0} transfers/s; {} groups, mean {:.1} events/group, commit p50 {} us p99 {} us",
        done.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed) as f64 / elapsed,
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
    ledger.shutdown()?;
    Ok(())
}
