//! Drives a [`Target`]: setup before midnight, then the festival (open loop) or max
//! (closed loop) run, then the sweep and the verification.
//!
//! Festival mode: one scheduler thread walks the request stream and, at each request's
//! scheduled instant, spawns one tokio task that submits that payment alone and awaits
//! its durable result. The scheduler never waits for completions. Latency is measured
//! from the *scheduled* instant, so a late scheduler or a stalled engine shows up in
//! the figures (no coordinated omission).
//!
//! Max mode: a producer thread packs requests (chains kept whole) into pre-built batches;
//! `callers` threads submit them back to back (closed loop) for the duration. Latency is
//! then per batch, from submit to result.

use crate::mix::{Request, RequestStream};
use crate::model::Model;
use crate::population::{
    Population, System, TRANSFER_TAG_SWEEP, cny_transfer, transfer_code, transfer_id,
};
use crate::stats::wall_ns;
use crate::stats::{RESULT_BUSY, RESULT_SUBMIT_FAILED, Stats};
use crate::target::{Outcome, SubmitFailure, Target};
use crate::trace::{TraceError, TraceWriter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tally_types::{BATCH_EVENTS_MAX, Batch, ResultCode, Transfer};

/// Threads submitting setup batches concurrently (lets the engine group-commit them).
const SETUP_THREADS: usize = 4;
/// How long the festival waits for in-flight requests after the last one is scheduled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for short-timeout authorisations to expire before the sweep.
const EXPIRY_WAIT_MAX: Duration = Duration::from_secs(20);
/// Virtual arrival rate used to space max mode's follow-ups (posts, refunds).
pub const MAX_MODE_VIRTUAL_RATE_PER_S: u64 = 200_000;

/// Max mode's endless request stream: the generator (the festival's or the transfers
/// workload's) on a virtual clock.
pub fn virtual_stream(
    mut generator: impl RequestStream + Send,
) -> impl Iterator<Item = Result<Request, TraceError>> + Send {
    let step_ns = 1_000_000_000 / MAX_MODE_VIRTUAL_RATE_PER_S;
    (1u64..).map(move |i| Ok(generator.next_at(i * step_ns)))
}

/// What setup did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SetupReport {
    /// Accounts created (or found, with `--keep`).
    pub accounts: u64,
    /// Funding transfers submitted.
    pub funding_transfers: u64,
    /// Wall-clock time of setup.
    pub seconds: f64,
}

/// Submits batches from a few threads; returns every (batch, outcomes) in order of
/// completion, or the first failure.
fn submit_all<T: Target>(
    target: &T,
    batches: Vec<Batch>,
) -> Result<Vec<(Batch, Vec<Outcome>)>, String> {
    let queue = Mutex::new(batches.into_iter());
    let done = Mutex::new(Vec::new());
    let failure = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..SETUP_THREADS {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(batch) = next else { break };
                    match target.submit_blocking(batch.clone()) {
                        Ok(outcomes) => {
                            if let Ok(mut done) = done.lock() {
                                done.push((batch, outcomes));
                            }
                        }
                        Err(error) => {
                            if let Ok(mut failure) = failure.lock() {
                                *failure = Some(format!("setup batch failed: {error:?}"));
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().ok().flatten() {
        return Err(error);
    }
    done.into_inner()
        .map_err(|_| "setup lock poisoned".to_string())
}

/// Creates the population and funds it before midnight, at full speed in big batches.
/// With `keep`, existing accounts (and earlier funding) are accepted and become the
/// model's baseline.
pub fn setup<T: Target>(
    target: &T,
    population: &Population,
    model: &mut Model,
    keep: bool,
) -> Result<SetupReport, String> {
    let started = Instant::now();
    let batches: Vec<Batch> = population.account_batches().collect();
    let mut accounts = 0;
    for (_, outcomes) in submit_all(target, batches)? {
        for outcome in outcomes {
            let fine = outcome.code.is_ok() || (keep && outcome.code == ResultCode::Exists);
            if !fine {
                return Err(format!(
                    "creating accounts: {} (use an empty --data or --keep)",
                    outcome.code
                ));
            }
            accounts += 1;
        }
    }
    if keep {
        baseline_from_ledger(target, population, model);
    }
    let funding = population.funding_transfers();
    let batches: Vec<Batch> = funding
        .chunks(BATCH_EVENTS_MAX)
        .map(|c| Batch::CreateTransfers(c.to_vec()))
        .collect();
    let mut funding_transfers = 0;
    for (batch, outcomes) in submit_all(target, batches)? {
        let Batch::CreateTransfers(transfers) = batch else {
            continue;
        };
        for outcome in &outcomes {
            // On a kept directory the users were funded by an earlier run (perhaps with
            // another seed, hence other amounts): any `exists*` answer means exactly that.
            let fine = outcome.code.is_ok() || (keep && outcome.code.name().starts_with("exists"));
            if !fine {
                return Err(format!("funding users: {}", outcome.code));
            }
        }
        funding_transfers += outcomes.len() as u64;
        model.apply(&transfers, &outcomes);
    }
    Ok(SetupReport {
        accounts,
        funding_transfers,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn baseline_from_ledger<T: Target>(target: &T, population: &Population, model: &mut Model) {
    let count = population.account_count();
    for start in (0..count).step_by(BATCH_EVENTS_MAX) {
        let end = (start + BATCH_EVENTS_MAX).min(count);
        let ids: Vec<u128> = (start..end).map(|s| population.account_at(s).id).collect();
        for account in target.lookup_accounts(&ids) {
            if let Some(slot) = population.slot(account.id) {
                let balances = [
                    account.debits_pending,
                    account.debits_posted,
                    account.credits_pending,
                    account.credits_posted,
                ];
                model.set_baseline(slot, balances);
            }
        }
    }
}

/// What a run measured (the report adds the verification and the machine).
#[derive(Debug)]
pub struct RunResult {
    /// Counters and latency histograms.
    pub stats: Arc<Stats>,
    /// Wall-clock length of the run, seconds.
    pub elapsed_s: f64,
    /// Requests still without a result at the end (festival mode).
    pub unfinished: u64,
    /// Worst lateness of the scheduler, microseconds (festival mode).
    pub scheduler_late_us_max: u64,
}

/// Live progress on stderr (hidden when stderr is not a terminal).
struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(stats: Arc<Stats>, started: Instant, total_s: u64) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let draw = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total_s.max(1)), draw);
        let style = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let second = started.elapsed().as_secs() as usize;
                let previous = second.saturating_sub(1);
                let offered = stats
                    .offered_per_second
                    .get(previous)
                    .map_or(0, Stats::load);
                let achieved = stats
                    .acknowledged_per_second
                    .get(previous)
                    .map_or(0, Stats::load);
                let p99 = stats
                    .p99_us_of(previous)
                    .map_or("-".into(), |v| format!("{:.2}ms", v as f64 / 1e3));
                let in_flight = Stats::load(&stats.submitted_requests)
                    .saturating_sub(Stats::load(&stats.completed_requests));
                bar.set_position(second as u64);
                bar.set_message(format!(
                    "offered {offered}/s achieved {achieved}/s p99 {p99} errors {} in-flight {in_flight}",
                    Stats::load(&stats.errors)
                ));
            }
            bar.finish_and_clear();
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn count_outcomes(stats: &Stats, outcomes: &Result<Vec<Outcome>, SubmitFailure>, events: u64) {
    match outcomes {
        Ok(outcomes) => {
            for outcome in outcomes {
                stats.count_result(outcome.code as usize, 1);
            }
            stats
                .acknowledged_transfers
                .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        }
        Err(SubmitFailure::Busy) => stats.count_result(RESULT_BUSY, events),
        Err(SubmitFailure::Other(_)) => stats.count_result(RESULT_SUBMIT_FAILED, events),
    }
}

/// Counts one submission of `events` transfers offered in `second`.
fn count_submission(stats: &Stats, second: usize, events: u64) {
    stats.submitted_requests.fetch_add(1, Ordering::Relaxed);
    stats
        .submitted_transfers
        .fetch_add(events, Ordering::Relaxed);
    Stats::bump(&stats.offered_per_second, second, events);
}

/// Counts one answered submission. A durable answer also gives a latency sample (in
/// the submission's `second`), acknowledged transfers (in `completed_second`) and its
/// effect on the model; `busy` and failures are counted as results only, never as fast
/// successes.
fn count_completion(
    stats: &Stats,
    model: &Mutex<Model>,
    transfers: &[Transfer],
    outcomes: &Result<Vec<Outcome>, SubmitFailure>,
    second: usize,
    latency_us: u64,
    completed_second: usize,
) {
    let events = transfers.len() as u64;
    count_outcomes(stats, outcomes, events);
    if let Ok(outcomes) = outcomes {
        stats.record_latency(second, latency_us);
        Stats::bump(&stats.acknowledged_per_second, completed_second, events);
        if let Ok(mut model) = model.lock() {
            model.apply(transfers, outcomes);
        }
    }
    stats.completed_requests.fetch_add(1, Ordering::Relaxed);
}

/// Waits until `due` by sleeping, never spinning. The kernel wakes the thread a little
/// late (timer slack); the requests due by then go out together, and the lateness is
/// not hidden: latency counts from `due`, and the report shows the scheduler's worst
/// lag. A spinning scheduler would take CPU time from the engine it measures on a
/// machine with few cores, which costs far more latency than the slack (figures in
/// docs/performance.md).
fn wait_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// The festival: open loop, one submission per payment at its scheduled instant.
pub fn run_festival<T: Target>(
    target: Arc<T>,
    source: impl Iterator<Item = Result<Request, TraceError>>,
    seconds: usize,
    model: Arc<Mutex<Model>>,
    mut trace: Option<TraceWriter>,
    worker_threads: usize,
) -> Result<(RunResult, Option<TraceWriter>), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .enable_time()
        .build()
        .map_err(|error| format!("starting tokio: {error}"))?;
    let stats = Arc::new(Stats::new(seconds + 2));
    let in_flight = Arc::new(AtomicI64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let progress = Progress::start(stats.clone(), start, seconds as u64);
    let mut late_us_max = 0u64;
    for request in source {
        let request = request.map_err(|error| error.to_string())?;
        let due = start + Duration::from_nanos(request.offset_ns);
        wait_until(due);
        late_us_max =
            late_us_max.max(Instant::now().saturating_duration_since(due).as_micros() as u64);
        if let Some(writer) = trace.as_mut() {
            writer.push(&request).map_err(|error| error.to_string())?;
        }
        let second = (request.offset_ns / 1_000_000_000) as usize;
        count_submission(&stats, second, request.transfers.len() as u64);
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (target, stats, model, in_flight) = (
            target.clone(),
            stats.clone(),
            model.clone(),
            in_flight.clone(),
        );
        runtime.spawn(async move {
            let transfers = request.transfers;
            let outcomes = target
                .submit(Batch::CreateTransfers(transfers.clone()))
                .await;
            let now = Instant::now();
            let latency_us = now.saturating_duration_since(due).as_micros() as u64;
            let completed_second = now.saturating_duration_since(start).as_secs() as usize;
            count_completion(
                &stats,
                &model,
                &transfers,
                &outcomes,
                second,
                latency_us,
                completed_second,
            );
            in_flight.fetch_sub(1, Ordering::Release);
        });
    }
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let unfinished = in_flight.load(Ordering::Acquire).max(0) as u64;
    progress.finish();
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok((
        RunResult {
            stats,
            elapsed_s,
            unfinished,
            scheduler_late_us_max: late_us_max,
        },
        trace,
    ))
}

/// Max mode: closed loop, pre-built batches, `callers` threads, for `duration`.
pub fn run_max<T: Target>(
    target: Arc<T>,
    source: impl Iterator<Item = Result<Request, TraceError>> + Send + 'static,
    duration: Duration,
    callers: usize,
    batch_events: usize,
    model: Arc<Mutex<Model>>,
    trace: Option<TraceWriter>,
) -> Result<(RunResult, Option<TraceWriter>), String> {
    let seconds = duration.as_secs() as usize + 2;
    let stats = Arc::new(Stats::new(seconds + 30));
    let stop = Arc::new(AtomicBool::new(false));
    let batch_events = batch_events.clamp(2, BATCH_EVENTS_MAX);
    let (sender, receiver) = mpsc::sync_channel::<Vec<Transfer>>(callers * 2);
    let receiver = Arc::new(Mutex::new(receiver));
    let producer_stop = stop.clone();
    let producer = std::thread::spawn(move || {
        produce_batches(source, batch_events, &sender, &producer_stop, trace)
    });
    let start = Instant::now();
    let deadline = start + duration;
    let progress = Progress::start(stats.clone(), start, duration.as_secs());
    std::thread::scope(|scope| {
        for _ in 0..callers.max(1) {
            let (target, stats, model, receiver) = (
                target.clone(),
                stats.clone(),
                model.clone(),
                receiver.clone(),
            );
            scope.spawn(move || {
                submit_back_to_back(&*target, &stats, &model, &receiver, start, deadline);
            });
        }
    });
    let elapsed_s = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Unblock the producer: batches still queued were never submitted.
    if let Ok(receiver) = receiver.lock() {
        while receiver.try_recv().is_ok() {}
    }
    drop(receiver);
    progress.finish();
    let trace = producer
        .join()
        .map_err(|_| "producer thread panicked".to_string())??;
    Ok((
        RunResult {
            stats,
            elapsed_s,
            unfinished: 0,
            scheduler_late_us_max: 0,
        },
        trace,
    ))
}

/// Max mode's producer: packs the stream into batches of at most `batch_events` and
/// sends them until the stream ends, `stop` is set or the callers hang up. Returns the
/// trace writer, which has recorded every request packed.
fn produce_batches(
    mut source: impl Iterator<Item = Result<Request, TraceError>>,
    batch_events: usize,
    sender: &mpsc::SyncSender<Vec<Transfer>>,
    stop: &AtomicBool,
    mut trace: Option<TraceWriter>,
) -> Result<Option<TraceWriter>, String> {
    let mut pending: Option<Request> = None;
    let mut exhausted = false;
    while !stop.load(Ordering::Relaxed) && !exhausted {
        let mut batch = Vec::with_capacity(batch_events);
        loop {
            let request = match pending.take() {
                Some(request) => request,
                None => match source.next() {
                    Some(request) => request.map_err(|error| error.to_string())?,
                    None => {
                        exhausted = true;
                        break;
                    }
                },
            };
            if batch.len() + request.transfers.len() > batch_events {
                pending = Some(request);
                break;
            }
            if let Some(writer) = trace.as_mut() {
                writer.push(&request).map_err(|error| error.to_string())?;
            }
            batch.extend_from_slice(&request.transfers);
        }
        if batch.is_empty() {
            break;
        }
        if sender.send(batch).is_err() {
            break;
        }
    }
    Ok(trace)
}

/// One max-mode caller: takes batches from the producer and submits them one after the
/// other until `deadline`. Latency is per batch, from submit to result.
fn submit_back_to_back<T: Target>(
    target: &T,
    stats: &Stats,
    model: &Mutex<Model>,
    receiver: &Mutex<mpsc::Receiver<Vec<Transfer>>>,
    start: Instant,
    deadline: Instant,
) {
    while Instant::now() < deadline {
        let batch = match receiver.lock().map(|r| r.recv()) {
            Ok(Ok(batch)) => batch,
            _ => break,
        };
        let submitted = Instant::now();
        let second = submitted.saturating_duration_since(start).as_secs() as usize;
        count_submission(stats, second, batch.len() as u64);
        let outcomes = target.submit_blocking(Batch::CreateTransfers(batch.clone()));
        let now = Instant::now();
        let latency_us = (now - submitted).as_micros() as u64;
        let completed_second = now.saturating_duration_since(start).as_secs() as usize;
        count_completion(
            stats,
            model,
            &batch,
            &outcomes,
            second,
            latency_us,
            completed_second,
        );
    }
}

/// After the run: let short-timeout authorisations expire, submit the sweep transfer
/// (its timestamp decides, per the spec, which pending transfers have expired), and
/// release those in the model. Returns (expired, still pending).
pub fn sweep<T: Target>(
    target: &T,
    population: &Population,
    model: &mut Model,
    expiring_timeout_s: u32,
    nonce: u64,
) -> Result<(u64, u64), String> {
    if let Some(expiry_ns) = model.expiry_ns_max(expiring_timeout_s) {
        let wait_until_ns = expiry_ns + 20_000_000;
        let now = wall_ns();
        if wait_until_ns > now {
            std::thread::sleep(Duration::from_nanos(wait_until_ns - now).min(EXPIRY_WAIT_MAX));
        }
    }
    let sweep = cny_transfer(
        transfer_id(TRANSFER_TAG_SWEEP, nonce, population.system(System::Bank)),
        population.system(System::Bank),
        population.system(System::LoanBook),
        1,
        transfer_code::SWEEP,
    );
    let outcomes = target
        .submit_blocking(Batch::CreateTransfers(vec![sweep]))
        .map_err(|error| format!("sweep transfer: {error:?}"))?;
    let Some(outcome) = outcomes.first().copied() else {
        return Err("sweep transfer got no result".into());
    };
    if !outcome.code.is_ok() {
        return Err(format!("sweep transfer failed: {}", outcome.code));
    }
    model.apply(&[sweep], &outcomes);
    Ok(model.expire(outcome.timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::Curve;
    use crate::mix::{Generator, MixSpec};
    use crate::population::PopulationSpec;
    use crate::target::Outcome;
    use crate::target::memory::{MemoryTarget, StallingTarget};
    use tally_types::{Account, Batch};

    fn population() -> Population {
        Population::new(PopulationSpec {
            users: 2_000,
            merchants: 50,
            foreign_merchants: 5,
            ..PopulationSpec::default()
        })
    }

    /// Setup, a festival at `rate_per_s` for `seconds`, sweep, verification.
    fn festival<T: Target>(
        target: Arc<T>,
        rate_per_s: f64,
        seconds: f64,
    ) -> (RunResult, crate::model::Verification) {
        let population = population();
        let mut model = Model::new(population.clone());
        setup(&*target, &population, &mut model, false).expect("setup");
        let model = Arc::new(Mutex::new(model));
        let curve = Curve::constant(seconds, rate_per_s);
        let mix = MixSpec {
            expiring_timeout_s: 1,
            ..MixSpec::default()
        };
        let mut generator = Generator::new(population.clone(), mix, 7);
        let source = curve.arrivals(7).map(|t| Ok(generator.next_at(t)));
        let (run, _) = run_festival(
            target.clone(),
            source,
            seconds as usize + 1,
            model.clone(),
            None,
            2,
        )
        .expect("festival");
        let mut model = model.lock().expect("model");
        let (expired, left) = sweep(&*target, &population, &mut model, 1, 1).expect("sweep");
        let verification = model.verify(&*target, expired, left);
        (run, verification)
    }

    #[test]
    fn a_stalled_target_shows_the_stall_in_open_loop_latencies() {
        // The target freezes from 1.0 s to 1.5 s. Every request *scheduled* in that
        // window must be charged its wait, not just the few in flight when it began.
        let stalled = StallingTarget::new(
            MemoryTarget::new(),
            Duration::from_millis(1_000),
            Duration::from_millis(500),
        );
        let (run, verification) = festival(Arc::new(stalled), 2_000.0, 3.0);
        assert!(verification.verified_ok, "{verification:?}");
        let (overall, per_second) = run.stats.merged();
        assert!(overall.max() >= 400_000, "max {} us", overall.max());
        // About 2,000/s x 0.5 s requests waited, on average ~250 ms: far more than the
        // handful a closed-loop caller would have noticed.
        let slow = overall.count_between(100_000, u64::MAX);
        assert!(slow >= 500, "{slow} requests over 100 ms");
        // Half of second 1 was stalled, waiting 0-500 ms: its p75 is about 250 ms.
        assert!(
            per_second[1].value_at_quantile(0.75) >= 100_000,
            "the stalled second"
        );
        assert!(
            per_second[0].value_at_quantile(0.5) < 100_000,
            "the second before"
        );
    }

    #[test]
    fn an_honest_target_verifies() {
        let (run, verification) = festival(Arc::new(MemoryTarget::new()), 3_000.0, 2.0);
        assert!(verification.verified_ok, "{verification:?}");
        assert!(verification.conservation_ok);
        assert_eq!(run.unfinished, 0);
        let ok = Stats::load(&run.stats.results[ResultCode::Ok as usize]);
        assert!(ok > 4_000, "{ok} ok");
        assert!(
            verification.transfers_checked > ok,
            "funding and run transfers checked"
        );
    }

    #[test]
    fn the_real_engine_verifies_against_the_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = crate::target::engine::EngineOptions {
            shards: 2,
            // Each payer's transfers on its shard, as the festival's ids are issued.
            placement: tally_engine::Placement::low_bits(32).expect("in range"),
            // Every group decided with deltas where its units only add to a part.
            shard_deltas_from: Some(0),
            shards_always_by_plan: true,
            busy_immediately: true,
            unsafe_no_sync: false,
            commit_interval: None,
            preallocate_segments: true,
            change_events: true,
            follow_events: true,
            order_lookups_per_s: 200,
            accounts_capacity: 0,
            transfers_capacity: 0,
            // Snapshots written while the festival runs.
            snapshot_events: Some(2_000),
        };
        let engine = crate::target::engine::EngineTarget::open(dir.path(), options).expect("open");
        let engine = Arc::new(engine);
        engine.run_started();
        let (run, verification) = festival(engine.clone(), 2_000.0, 1.5);
        assert!(verification.verified_ok, "{verification:?}");
        assert_eq!(run.unfinished, 0);
        let events = engine.check_events().expect("change events are on");
        assert!(events.ok, "{events:?}");
        assert!(
            events.followed_live > 0 && events.lag_ms.is_some(),
            "{events:?}"
        );
        // The festival mix sets no order ids: the prober picks transfers, queries none.
        engine.run_finished();
        let lookups = engine.order_lookups().expect("asked for").expect("ran");
        assert!(
            lookups.without_order_id > 0 && lookups.queries == 0,
            "{lookups:?}"
        );
        let stats = engine.shard_stats().expect("the engine reports");
        assert!(
            stats.snapshots_written > 0 && stats.snapshots_failed == 0,
            "{stats:?}"
        );
        engine.shutdown().expect("shutdown");
    }

    /// Says `ok` to every 100th transfer submission without applying it.
    #[derive(Debug, Default)]
    struct Liar {
        inner: MemoryTarget,
        count: std::sync::atomic::AtomicU64,
    }

    impl Target for Liar {
        async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
            let n = self.count.fetch_add(1, Ordering::Relaxed);
            if n % 100 == 99 {
                return Ok(vec![
                    Outcome {
                        code: ResultCode::Ok,
                        timestamp: 1
                    };
                    batch.len()
                ]);
            }
            self.inner.submit(batch).await
        }
        fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
            self.inner.submit_blocking(batch)
        }
        fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
            self.inner.lookup_accounts(ids)
        }
        fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
            self.inner.lookup_transfers(ids)
        }
        fn shutdown(&self) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_target_that_acknowledges_without_applying_fails_verification() {
        let (_, verification) = festival(Arc::new(Liar::default()), 3_000.0, 1.0);
        assert!(!verification.verified_ok);
        assert!(verification.transfers_missing > 0);
        assert!(verification.accounts_mismatched > 0);
    }

    #[test]
    fn max_mode_submits_whole_chains_in_batches_and_verifies() {
        let population = population();
        let target = Arc::new(MemoryTarget::new());
        let mut model = Model::new(population.clone());
        setup(&*target, &population, &mut model, false).expect("setup");
        let model = Arc::new(Mutex::new(model));
        let generator = Generator::new(population.clone(), MixSpec::default(), 3);
        let (run, _) = run_max(
            target.clone(),
            virtual_stream(generator),
            Duration::from_millis(500),
            2,
            1_000,
            model.clone(),
            None,
        )
        .expect("max");
        let mut model = model.lock().expect("model");
        let (expired, left) = sweep(&*target, &population, &mut model, 0, 1).expect("sweep");
        let verification = model.verify(&*target, expired, left);
        assert!(verification.verified_ok, "{verification:?}");
        assert!(Stats::load(&run.stats.submitted_transfers) > 10_000);
        let chains_open =
            Stats::load(&run.stats.results[ResultCode::LinkedEventChainOpen as usize]);
        assert_eq!(chains_open, 0, "batches never split a chain");
    }
}
