//! Deterministic simulation: both commit phases on the caller's thread, no threads, no
//! clock of its own. A simulation test drives a [`Committer`] over a fault-injecting
//! storage and checks, after every simulated crash, that recovery kept exactly what was
//! acknowledged. The engine's [`crate::Ledger`] runs the same phases pipelined on two
//! threads; its results are the same.

use crate::commit::{Applier, Logger};
pub use crate::commit::{Clock, Submission};
use crate::error::{EngineError, SubmitError};
use crate::recovery::{Capacity, recover};
use crate::request::EventResult;
use tally_log::{LogOptions, Storage};
use tally_state::StateMachine;

/// Both phases on the caller's thread: log a group, then apply it. Deterministic given
/// its inputs, so a simulation can drive it over a fault-injecting storage.
#[derive(Debug)]
pub struct Committer {
    logger: Logger,
    applier: Applier,
    state: StateMachine,
    snapshot_events_interval: u64,
}

impl Committer {
    /// Opens (recovers) a ledger over `storage`. No directory lock: the caller owns the
    /// storage exclusively.
    pub fn open(
        storage: Box<dyn Storage>,
        options: LogOptions,
        snapshot_events_interval: u64,
    ) -> Result<Committer, EngineError> {
        let (logger, applier, state, ..) =
            recover(storage, options, Capacity::default(), None, None)?;
        Ok(Committer {
            logger,
            applier,
            state,
            snapshot_events_interval,
        })
    }

    /// Commits a group: one result per submission, in order. `Ok` results are durable.
    pub fn commit(
        &mut self,
        submissions: Vec<Submission>,
        clock: Clock,
    ) -> Vec<Result<Vec<EventResult>, SubmitError>> {
        let state = &self.state;
        let settled = |at, added| state.last_timestamp() >= added && !state.expires_at(at);
        let (group, outcomes) = self.logger.log(submissions, clock, &settled);
        let mut applied = self.applier.apply(&mut self.state, group).into_iter();
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Some(error) => Err(error),
                None => Ok(applied.next().expect("one result list per logged record")),
            })
            .collect();
        assert!(applied.next().is_none());
        if self.applier.snapshot_due(self.snapshot_events_interval) {
            let image = self.state.image();
            // A failed snapshot is not a lost batch; a poisoned log shows in `failure`.
            let _ = self
                .logger
                .write_snapshot(self.applier.sequence_applied, &image);
        }
        // The spare, when the log wants one, is written here at once: deterministic.
        while self.logger.spare_wanted() {
            self.logger
                .write_spare_step(tally_log::SPARE_STEP_BYTES_MAX);
        }
        results
    }

    /// The state, holding exactly the committed batches.
    pub fn state(&self) -> &StateMachine {
        &self.state
    }

    /// The log failure that stopped writes, if any.
    pub fn failure(&self) -> Option<&str> {
        self.logger.failure()
    }

    /// Closes the log cleanly (see `tally_log::Wal::close`); no commits after it.
    pub fn close(&mut self) -> Result<(), tally_log::LogError> {
        self.logger.close()
    }

    /// Closes the log cleanly as the engine does at shutdown with
    /// `Config::snapshot_at_shutdown_events` at 1: first a snapshot of the final state,
    /// when an event was applied since the last one and the log has not failed, so
    /// that the next open replays nothing. Returns whether that snapshot was written;
    /// one that fails loses nothing (the log still holds every batch).
    pub fn close_with_snapshot(&mut self) -> Result<bool, tally_log::LogError> {
        let due = self.logger.failure().is_none() && self.applier.events_since_snapshot > 0;
        let written = due
            && self
                .logger
                .write_snapshot(self.applier.sequence_applied, &self.state.image())
                .is_ok();
        if written {
            self.applier.events_since_snapshot = 0;
        }
        self.logger.close().map(|()| written)
    }
}
