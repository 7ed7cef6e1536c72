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
//! `cargo bench -p tally-engine --bench overload -- [TASKS] [SECONDS] [QUEUE] [SHARDS] [BATCH]`
//! (`-- --test`: a tiny run on a temporary directory, as a smoke test).

mod common;

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

/// What to run.
struct Run {
    tasks: u64,
    duration: Duration,
    batch: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (args, smoke) = tally_testkit::bench_arguments();
    let mut args = args.into_iter();
    let mut run = Run {
        tasks: args.next().map_or(Ok(4_096), |a| a.parse())?,
        duration: Duration::from_secs(args.next().map_or(Ok(20), |a| a.parse())?),
        batch: 1,
    };
    let queue: usize = args.next().map_or(Ok(1_024), |a| a.parse())?;
    let shards: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    run.batch = args.next().map_or(Ok(1), |a| a.parse())?;
    if !(1..=tally_types::BATCH_EVENTS_MAX as u64).contains(&run.batch) {
        return Err(format!("BATCH must be 1 to {}", tally_types::BATCH_EVENTS_MAX).into());
    }
    if smoke {
        run.tasks = run.tasks.min(16);
        run.duration = Duration::from_millis(300);
    }
    let (dir, _temp) = common::data_dir("overload", smoke)?;
    let mut config = Config::new(&dir);
    config.backpressure = Backpressure::Busy;
    config.shards = shards;
    config.queue_batches_max = queue;
    let ledger = Ledger::open(config.clone())?;
    create_accounts(&ledger)?;
    println!(
        "{} tasks, batches of {} transfers, queue of {} batches, busy answered at once, {} shard(s)",
        run.tasks,
        run.batch,
        config.queue_batches_max,
        ledger.shards()
    );
    let counts = Arc::new(Counts::default());
    let acknowledged_firsts = offer(&ledger, &run, &counts)?;
    let metrics = ledger.metrics();
    ledger.shutdown()?;
    // Each acknowledged batch is kept as its first id; its transfers follow it.
    let acknowledged: Vec<u128> = acknowledged_firsts
        .into_iter()
        .flatten()
        .flat_map(|first| first..first + u128::from(run.batch))
        .collect();
    println!(
        "total: {} transfers offered, {} acknowledged, {} busy batches; commit p50 {} us, p99 {} us",
        counts.offered.load(Ordering::Relaxed),
        acknowledged.len(),
        counts.busy.load(Ordering::Relaxed),
        metrics.commit_latency_us_p50,
        metrics.commit_latency_us_p99,
    );
    check_after_reopening(config, &acknowledged)
}

fn create_accounts(ledger: &Ledger) -> Result<(), SubmitError> {
    let accounts: Vec<Account> = (1..=ACCOUNTS)
        .map(|id| tally_testkit::account(id, 1, tally_types::AccountFlags::empty()))
        .collect();
    for chunk in accounts.chunks(8_000) {
        ledger.submit(Batch::CreateAccounts(chunk.to_vec()))?;
    }
    Ok(())
}

/// Runs the submitting tasks and the per-second sampler until the run's time is up;
/// returns, per task, the first id of each batch acknowledged.
fn offer(ledger: &Ledger, run: &Run, counts: &Arc<Counts>) -> std::io::Result<Vec<Vec<u128>>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let deadline = Instant::now() + run.duration;
    println!("second  offered transfers/s  acknowledged transfers/s  busy batches/s  resident MiB");
    Ok(runtime.block_on(async {
        let sampler = tokio::spawn(sample_every_second(Arc::clone(counts), deadline));
        let submitters: Vec<_> = (0..run.tasks)
            .map(|task| {
                let (ledger, counts) = (ledger.clone(), Arc::clone(counts));
                tokio::spawn(submit_until(ledger, counts, task, run.batch, deadline))
            })
            .collect();
        let mut all = Vec::new();
        for submitter in submitters {
            all.push(submitter.await.unwrap_or_default());
        }
        let _ = sampler.await;
        all
    }))
}

/// Prints, each second until `deadline`, what was offered, acknowledged and refused.
async fn sample_every_second(counts: Arc<Counts>, deadline: Instant) {
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
}

/// One task: submits batches of `batch` new transfers back to back until `deadline`,
/// retrying at once after `busy`; returns the first id of each batch acknowledged.
async fn submit_until(
    ledger: Ledger,
    counts: Arc<Counts>,
    task: u64,
    batch: u64,
    deadline: Instant,
) -> Vec<u128> {
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
}

/// Reopens the directory: every acknowledged transfer must be there, and no other.
fn check_after_reopening(
    config: Config,
    acknowledged: &[u128],
) -> Result<(), Box<dyn std::error::Error>> {
    let reopened = Ledger::open(config)?;
    let found = acknowledged
        .chunks(8_000)
        .map(|ids| reopened.lookup_transfers(ids).len())
        .sum::<usize>();
    let stored = reopened.with_state(|state| state.transfer_count());
    reopened.shutdown()?;
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
