//! Counters and latency histograms of a run.
//!
//! Latency histograms are per thread (each caller thread records into its own, behind an
//! uncontended mutex) and merged for the progress line and the report. Per-second
//! histograms are indexed by the request's *scheduled* second, so a stall shows up in
//! the seconds whose requests it delayed.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tally_types::ResultCode;

/// Largest latency the histograms hold: one hour in microseconds (saturating above).
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Result slot of submissions answered `busy` (counted per transfer); the slots before
/// it are the result codes.
pub const RESULT_BUSY: usize = ResultCode::ALL.len();
/// Result slot of submissions that failed otherwise (counted per transfer).
pub const RESULT_SUBMIT_FAILED: usize = ResultCode::ALL.len() + 1;
/// Result slots: every result code, then `busy` and `submit_failed`.
pub const RESULT_SLOTS: usize = ResultCode::ALL.len() + 2;

/// One thread's latencies.
#[derive(Debug)]
pub struct Recorder {
    /// Every latency the thread recorded.
    pub overall: Histogram<u64>,
    /// Latencies by scheduled second; `None` for seconds without any.
    pub per_second: Vec<Option<Histogram<u64>>>,
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    match Histogram::new_with_bounds(1, LATENCY_US_MAX, sigfig) {
        Ok(histogram) => histogram,
        Err(error) => panic!("static histogram bounds are valid: {error}"),
    }
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            overall: histogram(3),
            per_second: Vec::new(),
        }
    }

    /// Records `latency_us` (at least 1) overall and in `second`.
    pub fn record(&mut self, second: usize, latency_us: u64) {
        let value = latency_us.max(1);
        self.overall.saturating_record(value);
        if self.per_second.len() <= second {
            self.per_second.resize_with(second + 1, || None);
        }
        self.per_second[second]
            .get_or_insert_with(|| histogram(2))
            .saturating_record(value);
    }
}

/// Shared counters of a run.
#[derive(Debug)]
pub struct Stats {
    run_id: u64,
    recorders: Mutex<Vec<Arc<Mutex<Recorder>>>>,
    /// Submissions made.
    pub submitted_requests: AtomicU64,
    /// Transfers in those submissions.
    pub submitted_transfers: AtomicU64,
    /// Submissions answered (durable result, `busy` or failure).
    pub completed_requests: AtomicU64,
    /// Transfers with a durable result.
    pub acknowledged_transfers: AtomicU64,
    /// Transfers counted under any result but `ok`.
    pub errors: AtomicU64,
    /// Transfers per result slot (see [`RESULT_SLOTS`]).
    pub results: Vec<AtomicU64>,
    /// Transfers offered (scheduled) per second.
    pub offered_per_second: Vec<AtomicU64>,
    /// Transfers acknowledged per second of completion.
    pub acknowledged_per_second: Vec<AtomicU64>,
}

static RUN_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static LOCAL: RefCell<Option<(u64, Arc<Mutex<Recorder>>)>> = const { RefCell::new(None) };
}

impl Stats {
    /// Zeroed counters for a run of `seconds` seconds (later events count in the last).
    pub fn new(seconds: usize) -> Stats {
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Stats {
            run_id: RUN_IDS.fetch_add(1, Ordering::Relaxed),
            recorders: Mutex::new(Vec::new()),
            submitted_requests: AtomicU64::new(0),
            submitted_transfers: AtomicU64::new(0),
            completed_requests: AtomicU64::new(0),
            acknowledged_transfers: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            results: counters(RESULT_SLOTS),
            offered_per_second: counters(seconds),
            acknowledged_per_second: counters(seconds),
        }
    }

    /// Records a latency into the calling thread's own histogram.
    pub fn record_latency(&self, second: usize, latency_us: u64) {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let fresh = !matches!(&*local, Some((id, _)) if *id == self.run_id);
            if fresh {
                let recorder = Arc::new(Mutex::new(Recorder::new()));
                if let Ok(mut all) = self.recorders.lock() {
                    all.push(recorder.clone());
                }
                *local = Some((self.run_id, recorder));
            }
            if let Some((_, recorder)) = &*local
                && let Ok(mut recorder) = recorder.lock()
            {
                recorder.record(second, latency_us);
            }
        });
    }

    /// Counts `n` transfers under result `slot`.
    pub fn count_result(&self, slot: usize, n: u64) {
        self.results[slot].fetch_add(n, Ordering::Relaxed);
        if slot != ResultCode::Ok as usize {
            self.errors.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds `n` to `counters[second]`, or to the last counter past the end.
    pub fn bump(counters: &[AtomicU64], second: usize, n: u64) {
        if let Some(counter) = counters.get(second).or(counters.last()) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Every thread's histograms merged: (overall, per second).
    pub fn merged(&self) -> (Histogram<u64>, Vec<Histogram<u64>>) {
        let mut overall = histogram(3);
        let mut per_second: Vec<Histogram<u64>> = Vec::new();
        let recorders = self.recorders.lock().map(|r| r.clone()).unwrap_or_default();
        for recorder in recorders {
            let Ok(recorder) = recorder.lock() else {
                continue;
            };
            let _ = overall.add(&recorder.overall);
            for (second, histogram_at) in recorder.per_second.iter().enumerate() {
                if per_second.len() <= second {
                    per_second.resize_with(second + 1, || histogram(2));
                }
                if let Some(h) = histogram_at {
                    let _ = per_second[second].add(h);
                }
            }
        }
        (overall, per_second)
    }

    /// p99 (us) of the requests scheduled in `second`, merged over threads.
    pub fn p99_us_of(&self, second: usize) -> Option<u64> {
        let mut merged = histogram(2);
        let recorders = self.recorders.lock().map(|r| r.clone()).unwrap_or_default();
        for recorder in recorders {
            let Ok(recorder) = recorder.lock() else {
                continue;
            };
            if let Some(Some(h)) = recorder.per_second.get(second) {
                let _ = merged.add(h);
            }
        }
        (!merged.is_empty()).then(|| merged.value_at_quantile(0.99))
    }

    /// Reads a counter.
    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Nanoseconds since the Unix epoch on the wall clock, the scale of the ledger's
/// timestamps (0 for a clock set before 1970).
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}
