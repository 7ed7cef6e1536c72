//! The commit path without threads, in two phases that the engine pipelines:
//!
//! 1. [`Logger::log`]: stamp each batch, append the group to the log, one sync.
//! 2. [`Applier::apply`]: apply the logged group to the state machine, produce results.
//!
//! The engine runs phase 1 of group n+1 while phase 2 of group n runs on another thread
//! (`crate::threads`); `crate::simulation::Committer` runs both in turn on the caller's
//! thread: deterministic, for the simulation tests and for tools.
//!
//! Invariant: a group reaches the applier only after its sync succeeded, so the state
//! (and every read of it) holds only durable batches.

use crate::clock::{Settled, Stamper};
use crate::error::{EngineError, SubmitError};
use crate::request::EventResult;
use crate::shards::ShardPool;
use tally_log::{LogRecord, Wal};
use tally_state::StateMachine;
use tally_types::{Batch, ResultCode, StateImage};

/// How many events the applier runs between two chances for readers to take the
/// state (whole units: a chain runs in one step however long it is). At about a
/// microsecond an event, a query waits some 60 µs for a turn instead of a whole
/// group's tens of milliseconds; with no reader waiting a step costs one atomic load.
pub const APPLY_STEP_EVENTS: usize = 64;

/// The state as the applier holds it: under the engine's write lock, which readers
/// may take between two steps of a group; or outright (the simulation, tools).
pub(crate) trait HeldState {
    /// The state itself.
    fn state(&mut self) -> &mut StateMachine;
    /// Lets any reader waiting for the state take it, then takes it back.
    fn let_readers_in(&mut self);
}

impl HeldState for parking_lot::RwLockWriteGuard<'_, StateMachine> {
    fn state(&mut self) -> &mut StateMachine {
        self
    }

    fn let_readers_in(&mut self) {
        // Hands the lock to parked readers directly (a plain unlock would let this
        // thread take it back before they wake); only an atomic load when none wait.
        parking_lot::RwLockWriteGuard::bump(self);
    }
}

impl HeldState for StateMachine {
    fn state(&mut self) -> &mut StateMachine {
        self
    }

    fn let_readers_in(&mut self) {}
}

/// One batch to commit, with its requested stamp (manual clock only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The events.
    pub batch: Batch,
    /// The time to stamp it from, with [`Clock::Manual`]; ignored on the wall clock.
    pub now: Option<u64>,
}

/// How batches are stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Every batch of the group is stamped from this wall-clock reading (ns).
    Wall(u64),
    /// Each batch is stamped from its own `now` (missing = just after the last event).
    Manual,
}

/// A group that is durable in the log and not yet applied.
#[derive(Debug)]
pub(crate) struct LoggedGroup {
    pub records: Vec<LogRecord>,
}

/// Phase 1: owns the log, the sequence and the clock.
#[derive(Debug)]
pub(crate) struct Logger {
    wal: Wal,
    sequence_last: u64,
    stamper: Stamper,
    failure: Option<String>,
}

impl Logger {
    /// A logger appending to `wal`, after the recovered `sequence_last` and
    /// `timestamp_last`.
    /// `expiry_instants` are those of the recovered state's pending transfers.
    pub fn new(
        wal: Wal,
        sequence_last: u64,
        timestamp_last: u64,
        expiry_instants: impl IntoIterator<Item = u64>,
    ) -> Logger {
        Logger {
            wal,
            sequence_last,
            stamper: Stamper::new(timestamp_last, expiry_instants),
            failure: None,
        }
    }

    /// The earliest instant a logged pending transfer may expire at, if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.stamper.next_expiry()
    }

    /// Closes the log cleanly at shutdown ([`Wal::close`]), unless it failed.
    pub fn close(&mut self) -> Result<(), tally_log::LogError> {
        if self.failure.is_some() {
            return Ok(());
        }
        self.failure = Some("the log is closed".to_string());
        self.wal.close()
    }

    /// Stamps every submission and appends the group with one sync. Returns the logged
    /// group and, per submission, `None` if it was logged or the error it got.
    /// `settled` answers for the applied state (see [`Stamper`]).
    pub fn log(
        &mut self,
        submissions: Vec<Submission>,
        clock: Clock,
        settled: Settled<'_>,
    ) -> (LoggedGroup, Vec<Option<SubmitError>>) {
        let mut outcomes = Vec::with_capacity(submissions.len());
        let mut records = Vec::with_capacity(submissions.len());
        if let Some(message) = &self.failure {
            let failed = submissions
                .iter()
                .map(|_| Some(SubmitError::Failed(message.clone())));
            return (LoggedGroup { records }, failed.collect());
        }
        let sequence_before = self.sequence_last;
        for Submission { batch, now } in submissions {
            let requested = match clock {
                Clock::Wall(now_ns) => now_ns,
                Clock::Manual => now.unwrap_or(0),
            };
            let stamp = match requested {
                requested if requested > tally_types::NOW_NS_MAX => None,
                requested => self.stamper.stamp(requested, &batch, settled),
            };
            let Some(stamp) = stamp else {
                outcomes.push(Some(SubmitError::TimeOutOfRange { now: requested }));
                continue;
            };
            self.sequence_last += 1;
            records.push(LogRecord {
                sequence: self.sequence_last,
                timestamp: stamp,
                batch,
            });
            outcomes.push(None);
        }
        if records.is_empty() {
            return (LoggedGroup { records }, outcomes);
        }
        if let Err(error) = self.wal.append(&records) {
            // The page cache may have dropped the data: never retry, never answer ok.
            let message = error.to_string();
            self.failure = Some(message.clone());
            // No later batch is stamped: the log refuses everything from now on.
            self.sequence_last = sequence_before;
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = Some(SubmitError::Failed(message.clone()));
            }
            records.clear();
        }
        (LoggedGroup { records }, outcomes)
    }

    /// Refuses every later write with `message` (the engine can no longer apply).
    pub fn stop(&mut self, message: &str) {
        if self.failure.is_none() {
            self.failure = Some(message.to_string());
        }
    }

    /// The message of the log failure that stopped writes, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// True when the log wants a spare segment written (see
    /// [`tally_log::Wal::spare_wanted`]); never once the log has failed.
    pub fn spare_wanted(&self) -> bool {
        self.failure.is_none() && self.wal.spare_wanted()
    }

    /// True when the spare is wanted soon enough to be worth delaying commits for.
    pub fn spare_urgent(&self) -> bool {
        self.failure.is_none() && self.wal.spare_urgent()
    }

    /// Writes one step of the spare segment; returns the zeros written. A failed step
    /// only gives up on the spare.
    pub fn write_spare_step(&mut self, bytes_max: u64) -> u64 {
        match self.failure {
            None => self.wal.write_spare_step(bytes_max).unwrap_or(0),
            Some(_) => 0,
        }
    }

    /// Starts a snapshot at `sequence` to be written off this thread (see
    /// [`tally_log::SnapshotJob`]); `None` once the log has failed.
    pub fn snapshot_job(&mut self, sequence: u64) -> Option<tally_log::SnapshotJob> {
        if self.failure.is_some() {
            return None;
        }
        self.wal.snapshot_job(sequence).ok()
    }

    /// Records a snapshot a job wrote; returns the removal of the files it makes
    /// unnecessary, to run off the log thread ([`tally_log::Retirement`]).
    pub fn snapshot_written(
        &mut self,
        sequence: u64,
    ) -> Result<Option<tally_log::Retirement>, EngineError> {
        let retired = self.wal.snapshot_written(sequence);
        if self.wal.is_poisoned() && self.failure.is_none() {
            self.failure = Some("the log failed while retiring segments".to_string());
        }
        retired.map_err(EngineError::Log)
    }

    /// Writes a snapshot of the state as of `sequence` (already applied by the caller).
    /// A failed snapshot loses nothing (the log still holds every batch); only a
    /// poisoned log stops the ledger.
    pub fn write_snapshot(&mut self, sequence: u64, image: &StateImage) -> Result<(), EngineError> {
        let written = self.wal.write_snapshot(sequence, image);
        if self.wal.is_poisoned() && self.failure.is_none() {
            self.failure = Some("the log failed while writing a snapshot".to_string());
        }
        written.map_err(EngineError::Log)
    }
}

/// Phase 2: owns the shard threads (none with one shard) and the knowledge of where the
/// state stands; the state itself is passed in (the engine keeps it under its
/// read/write lock).
pub(crate) struct Applier {
    pub sequence_applied: u64,
    pub events_since_snapshot: u64,
    /// The shard threads, when the state has more than one part.
    pub shards: Option<ShardPool>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("sequence_applied", &self.sequence_applied)
            .field("shards", &self.shards.is_some())
            .finish()
    }
}

impl Applier {
    /// An applier whose state holds every record up to `sequence_applied`, with no
    /// shard threads yet.
    pub fn new(sequence_applied: u64) -> Applier {
        Applier {
            sequence_applied,
            events_since_snapshot: 0,
            shards: None,
        }
    }

    /// Whether a group of `events` events whose first record is `sequence` may be
    /// applied by a thread other than the apply thread: it comes right after the last
    /// group applied (a group ahead of one still in the channel would break the log
    /// order), and no snapshot falls due with it (every `snapshot_interval` events; 0:
    /// never), so that the freeze stays off the log thread.
    pub fn takes_next_without_snapshot(
        &self,
        sequence: u64,
        events: usize,
        snapshot_interval: u64,
    ) -> bool {
        let snapshot_due = snapshot_interval != 0
            && self.events_since_snapshot + events as u64 >= snapshot_interval;
        self.sequence_applied + 1 == sequence && !snapshot_due
    }

    /// Applies a logged group, with results as if in log order; one result list per
    /// record.
    /// On one part the group runs in steps of [`APPLY_STEP_EVENTS`], letting readers in
    /// between; with shards the apply thread holds the state for the whole group, the
    /// parts out on the shard threads or applied here serially.
    pub fn apply(
        &mut self,
        held: &mut impl HeldState,
        group: LoggedGroup,
    ) -> Vec<Vec<EventResult>> {
        for record in &group.records {
            assert_eq!(
                record.sequence,
                self.sequence_applied + 1,
                "groups apply in log order"
            );
            self.sequence_applied = record.sequence;
            self.events_since_snapshot += record.batch.len() as u64;
        }
        let records = group.records;
        // Imported batches answer with their events' own timestamps: kept aside (they
        // are rare; the records move to the shard threads).
        let stamps: Vec<(u64, Option<Batch>)> = records
            .iter()
            .map(|r| (r.timestamp, r.batch.is_imported().then(|| r.batch.clone())))
            .collect();
        let codes: Vec<Vec<ResultCode>> = match &self.shards {
            Some(pool) => pool.apply(held.state(), records),
            None => {
                // One run for the whole group: its prefetching spans the records, which
                // matters when each is a single payment.
                let batches: Vec<_> = records
                    .iter()
                    .map(|record| (record.timestamp, &record.batch))
                    .collect();
                let mut run = held.state().start_run(&batches, true);
                while !held.state().run_step(&mut run, APPLY_STEP_EVENTS) {
                    held.let_readers_in();
                }
                run.into_results()
            }
        };
        stamps
            .iter()
            .zip(codes)
            .map(|((stamp, imported), codes)| {
                EventResult::for_batch(*stamp, &codes, imported.as_ref())
            })
            .collect()
    }

    /// True when a snapshot is due after `interval` events (0 = never); resets the count.
    pub fn snapshot_due(&mut self, interval: u64) -> bool {
        if interval == 0 || self.events_since_snapshot < interval {
            return false;
        }
        self.events_since_snapshot = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Applier;

    #[test]
    fn only_the_next_group_may_be_applied_off_the_apply_thread() {
        let applier = Applier::new(41);
        assert!(applier.takes_next_without_snapshot(42, 10, 0));
        // One still in the channel, or one applied already: the apply thread's.
        assert!(!applier.takes_next_without_snapshot(43, 10, 0));
        assert!(!applier.takes_next_without_snapshot(41, 10, 0));
        assert!(!applier.takes_next_without_snapshot(0, 10, 0));
    }

    #[test]
    fn a_group_that_brings_a_snapshot_due_stays_with_the_apply_thread() {
        let mut applier = Applier::new(7);
        applier.events_since_snapshot = 90;
        assert!(applier.takes_next_without_snapshot(8, 9, 100));
        assert!(!applier.takes_next_without_snapshot(8, 10, 100));
        assert!(applier.takes_next_without_snapshot(8, 1_000, 0));
    }
}
