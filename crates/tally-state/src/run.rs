//! A run of batches applied in bounded steps, so that the engine can let readers in
//! between a group's units instead of holding its write lock for the whole group.
//!
//! A step stops only between units (a single event or a whole linked chain), never in
//! a chain and never in an imported batch, so a reader between two steps sees the state
//! after a prefix of the log: every unit before whole, none after. The results, the
//! expiries and the timestamps are those of applying the batches in one go.

use crate::apply::{Event, apply_unit, create_account, create_transfer, expire_due, unit_ranges};
use crate::part::Part;
use crate::prefetch::Prefetcher;
use crate::state::StateMachine;
use tally_types::{BATCH_EVENTS_MAX, Batch, ResultCode, Transfer};

/// The transfers of a run, in the order they will be applied: a slice iterator over
/// the current batch, refilled from the next batch when it runs out (leaner per item
/// than a `FlatMap`, which also keeps a back iterator; four of these walk every run).
#[derive(Debug, Clone)]
pub(crate) struct RunTransfers<'b> {
    batches: std::slice::Iter<'b, (u64, &'b Batch)>,
    current: std::slice::Iter<'b, Transfer>,
}

impl<'b> Iterator for RunTransfers<'b> {
    type Item = &'b Transfer;

    #[inline]
    fn next(&mut self) -> Option<&'b Transfer> {
        loop {
            if let Some(transfer) = self.current.next() {
                return Some(transfer);
            }
            self.current = transfers_in(self.batches.next()?).iter();
        }
    }
}

/// The transfers of one entry of a run; none for a batch of accounts.
fn transfers_in<'b>(entry: &'b (u64, &'b Batch)) -> &'b [Transfer] {
    match entry.1 {
        Batch::CreateTransfers(transfers) => transfers,
        Batch::CreateAccounts(_) => &[],
    }
}

/// Where a run of batches stands: the next unit to apply, the results so far and the
/// prefetch pipeline (one over the whole run, so that a group of one-payment batches
/// keeps as many cache misses in flight as one full batch).
#[derive(Debug)]
pub struct Run<'b> {
    batches: &'b [(u64, &'b Batch)],
    /// The batch being applied, and the first event of its next unit (0: not begun).
    batch: usize,
    event: usize,
    /// The current batch's results, and (when kept) every finished batch's.
    current: Vec<ResultCode>,
    finished: Vec<Vec<ResultCode>>,
    keep_results: bool,
    prefetcher: Prefetcher<RunTransfers<'b>>,
}

impl<'b> Run<'b> {
    /// True when every batch has been applied.
    pub fn is_done(&self) -> bool {
        self.batch == self.batches.len()
    }

    /// One result list per batch, in order. Panics before the run is done, or if the
    /// run was started without keeping results.
    pub fn into_results(self) -> Vec<Vec<ResultCode>> {
        assert!(self.is_done(), "the run has batches left");
        assert!(self.keep_results, "a replay keeps no results");
        self.finished
    }
}

impl StateMachine {
    /// Starts a run of `batches`, each stamped with its timestamp, keeping each batch's
    /// results when `keep_results` (a replay of the log needs none: they were answered
    /// when it was written). Nothing is applied until [`StateMachine::run_step`].
    pub fn start_run<'b>(&self, batches: &'b [(u64, &'b Batch)], keep_results: bool) -> Run<'b> {
        assert!(!self.parts.is_empty(), "the parts are out on shard threads");
        let transfers = RunTransfers {
            batches: batches.iter(),
            current: [].iter(),
        };
        Run {
            batches,
            batch: 0,
            event: 0,
            current: Vec::new(),
            finished: Vec::with_capacity(if keep_results { batches.len() } else { 0 }),
            keep_results,
            prefetcher: Prefetcher::new(&self.parts, transfers),
        }
    }

    /// Applies whole units of `run` until at least `events` events have run in this
    /// step (at least one unit) or the run is done; returns whether it is done. Between
    /// two steps the state holds every unit applied so far and nothing of the rest; an
    /// imported batch runs in one step.
    pub fn run_step(&mut self, run: &mut Run<'_>, events: usize) -> bool {
        assert!(!self.parts.is_empty(), "the parts are out on shard threads");
        let mut applied = 0;
        while let Some(&(timestamp, batch)) = run.batches.get(run.batch) {
            if run.event == 0 {
                if applied > 0 && applied >= events {
                    return false;
                }
                self.begin_batch(timestamp, batch, &mut run.current);
            }
            let budget = if batch.is_imported() {
                usize::MAX
            } else {
                events.saturating_sub(applied)
            };
            let parts = self.parts.as_mut_slice();
            let from = run.event;
            let results = &mut run.current;
            let (stop, ran) = match batch {
                Batch::CreateAccounts(events) => {
                    let step = Step::new(timestamp, events, from, budget);
                    step.apply(parts, create_account, results, None)
                }
                Batch::CreateTransfers(events) => {
                    let step = Step::new(timestamp, events, from, budget);
                    step.apply(parts, create_transfer, results, Some(&mut run.prefetcher))
                }
            };
            applied += ran;
            run.event = stop;
            if stop < batch.len() {
                return false;
            }
            self.end_batch(timestamp, batch);
            let results = std::mem::take(&mut run.current);
            if run.keep_results {
                run.finished.push(results);
            } else {
                run.current = results;
            }
            run.batch += 1;
            run.event = 0;
        }
        true
    }

    /// Before a batch's first unit: checks it may run, sizes its results and releases
    /// every pending transfer expired by its stamp.
    fn begin_batch(&mut self, timestamp: u64, batch: &Batch, results: &mut Vec<ResultCode>) {
        assert!(
            batch.len() <= BATCH_EVENTS_MAX,
            "batch larger than the maximum"
        );
        assert!(timestamp > self.last_timestamp, "time must move forward");
        results.clear();
        results.resize(batch.len(), ResultCode::Ok);
        expire_due(self.parts.as_mut_slice(), timestamp);
    }

    /// After a batch's last unit: time moves to its last event's stamp (the batch's own
    /// stamp when it is empty: every batch moves time forward).
    fn end_batch(&mut self, timestamp: u64, batch: &Batch) {
        self.last_timestamp = timestamp
            .checked_add(batch.len().saturating_sub(1) as u64)
            .expect("timestamps fit in u64");
    }
}

/// The units of one batch a step may run: from event `from`, until `budget` events
/// have run (at least one unit).
struct Step<'e, E> {
    timestamp: u64,
    events: &'e [E],
    from: usize,
    budget: usize,
}

impl<'e, E: Event> Step<'e, E> {
    fn new(timestamp: u64, events: &'e [E], from: usize, budget: usize) -> Self {
        Step {
            timestamp,
            events,
            from,
            budget,
        }
    }

    /// Runs the step's units into `results` (the whole batch's); returns the first event
    /// not run (the batch's length when it finished) and how many ran.
    fn apply(
        self,
        parts: &mut [Box<Part>],
        execute: fn(&mut [Box<Part>], &E, u64) -> ResultCode,
        results: &mut [ResultCode],
        mut prefetcher: Option<&mut Prefetcher<RunTransfers<'_>>>,
    ) -> (usize, usize) {
        let mut ran = 0;
        for (start, end) in unit_ranges(self.events, self.from) {
            if ran > 0 && ran >= self.budget {
                return (start, ran);
            }
            if let Some(prefetcher) = prefetcher.as_deref_mut() {
                prefetcher.advance(parts, end - start);
            }
            apply_unit(
                parts,
                self.timestamp,
                self.events,
                start,
                end,
                execute,
                &mut results[start..end],
            );
            ran += end - start;
        }
        (self.events.len(), ran)
    }
}
