//! Overload: TASKS tokio tasks submit batches of BATCH transfers (default 1) as fast as
//! they can for SECONDS into a queue of QUEUE batches, never waiting for room
//! (`Backpressure::Busy`: a full queue answers at once, and the task retries at once),
//! so with more tasks than queue room the offered load is far past what the engine can
//! take. Prints, per second, the transfers offered, the transfers acknowledged
//! (durable), the `busy` answers and the resident memory; then reopens the directory
//! and checks that every acknowledged transfer is there and no busy one is.
//!
//! With BATCH above 1 a rejected offer costs the generator little per transfer, so two
//! cores can offer ten times what the engine commits.
//!
//! `cargo run --release -p tally-engine --example overload -- [TASKS] [SECONDS] [QUEUE] [SHARDS] [BATCH]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_engine::{Backpressure, Config, Ledger, SubmitError};
use tally_types::{Account, Batch, Transfer};

const ACCOUNTS: u128 = 10_000;

#[derive(Default)]
struct Counts {
    offered: AtomicU64,
    acknowledged: AtomicU64,
    busy: AtomicU64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = args.next().map_or(Ok(4_096), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    let queue: usize = args.next().map_or(Ok(1_024), |a| a.parse())?;
    let shards: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let batch: u64 = args.next().map_or(Ok(1), |a| a.parse())?;
    if !(1..=tally_types::BATCH_EVENTS_MAX as u64).contains(&batch) {
        return Err(format!("BATCH must be 1 to {}", tally_types::BATCH_EVENTS_MAX).into());
    }
    let dir = std::env::current_dir()?.join("target/overload");
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::new(&dir);
    config.backpressure = Backpressure::Busy;
    config.shards = shards;
    config.queue_batches_max = queue;
    let queue_capacity = config.queue_batches_max;
    let ledger = Ledger::open(config.clone())?;
    let accounts: Vec<Account> = (1..=ACCOUNTS)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Account::default()
        })
        .collect();
    for chunk in accounts.chunks(8_000) {
        ledger.submit(Batch::CreateAccounts(chunk.to_vec()))?;
    }
    let counts = Arc::new(Counts::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    println!(
        "{tasks} tasks, batches of {batch} transfers, queue of {queue_capacity} batches, busy answered at once, {} shard(s)",
        ledger.shards()
    );
    println!("second  offered transfers/s  acknowledged transfers/s  busy batches/s  resident MiB");
    let acknowledged_ids: Vec<Vec<u128>> = runtime.block_on(async {
        let sampler = {
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let mut last = (0, 0, 0);
                let mut second = 0;
                while Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    second += 1;
                    let now = (
                        counts.offered.load(Ordering::Relaxed),
                        counts.acknowledged.load(Ordering::Relaxed),
                        counts.busy.load(Ordering::Relaxed),
                    );
                    println!(
                        "{second:>6}  {:>19}  {:>24}  {:>14}  {:>12.0}",
                        now.0 - last.0,
                        now.1 - last.1,
                        now.2 - last.2,
                        resident_bytes() as f64 / (1 << 20) as f64
                    );
                    last = now;
                }
            })
        };
        let submitters: Vec<_> = (0..tasks)
            .map(|task| {
                let (ledger, counts) = (ledger.clone(), Arc::clone(&counts));
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    let mut n: u128 = 0;
                    while Instant::now() < deadline {
                        let first = n + 1;
                        let transfers: Vec<Transfer> = (first..first + u128::from(batch))
                            .map(|n| {
                                let id = (u128::from(task) << 64) | n;
                                let debit = 1 + id % ACCOUNTS;
                                Transfer {
                                    id,
                                    debit_account_id: debit,
                                    credit_account_id: 1 + (debit % ACCOUNTS),
                                    amount: 1,
                                    ledger: 1,
                                    code: 1,
                                    ..Transfer::default()
                                }
                            })
                            .collect();
                        n += u128::from(batch);
                        counts.offered.fetch_add(batch, Ordering::Relaxed);
                        match ledger.submit_async(Batch::CreateTransfers(transfers)).await {
                            Ok(_) => {
                                counts.acknowledged.fetch_add(batch, Ordering::Relaxed);
                                acknowledged.push((u128::from(task) << 64) | first);
                            }
                            Err(SubmitError::Busy(_)) => {
                                counts.busy.fetch_add(1, Ordering::Relaxed);
                                // Let other tasks run; retry at once with new ids.
                                tokio::task::yield_now().await;
                            }
                            Err(error) => panic!("unexpected answer: {error}"),
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        let mut all = Vec::new();
        for submitter in submitters {
            all.push(submitter.await.unwrap_or_default());
        }
        let _ = sampler.await;
        all
    });
    let metrics = ledger.metrics();
    ledger.shutdown()?;
    // Each acknowledged batch is kept as its first id; its transfers follow it.
    let acknowledged: Vec<u128> = acknowledged_ids
        .into_iter()
        .flatten()
        .flat_map(|first| first..first + u128::from(batch))
        .collect();
    let reopened = Ledger::open(config)?;
    let found = acknowledged
        .chunks(8_000)
        .map(|ids| reopened.lookup_transfers(ids).len())
        .sum::<usize>();
    let stored = reopened.with_state(|state| state.transfer_count());
    reopened.shutdown()?;
    println!(
        "total: {} transfers offered, {} acknowledged, {} busy batches; commit p50 {} us, p99 {} us",
        counts.offered.load(Ordering::Relaxed),
        acknowledged.len(),
        counts.busy.load(Ordering::Relaxed),
        metrics.commit_latency_us_p50,
        metrics.commit_latency_us_p99,
    );
    println!(
        "after reopening: {found} of {} acknowledged transfers found; {stored} stored in all (busy ones never applied: {})",
        acknowledged.len(),
        if stored == acknowledged.len() {
            "yes"
        } else {
            "NO"
        }
    );
    if found != acknowledged.len() || stored != acknowledged.len() {
        return Err("acknowledged transfers lost, or busy ones applied".into());
    }
    Ok(())
}

/// Resident set size of this process, from /proc/self/statm (0 where unavailable).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
