//! The real target: Tally's engine, embedded.

use super::{Outcome, ShardStats, SubmitFailure, Target};
use crate::events_check::{EventsCheck, LiveFollower};
use crate::order_lookups::{OrderLookupStats, OrderLookups};
use std::path::Path;
use tally_engine::{
    Backpressure, Config, EventResult, Ledger, Placement, ShardExecution, SubmitError, SyncMode,
};
use tally_types::{Account, AccountBalance, AccountFilter, Batch, Transfer};

/// A [`Ledger`] opened on the load generator's data directory.
#[derive(Debug)]
pub struct EngineTarget {
    ledger: Ledger,
    follow_events: bool,
    /// The change-event consumer following the run live.
    follower: parking_lot::Mutex<Option<LiveFollower>>,
    /// Lookups by order id a second during the run (0: none).
    order_lookups_per_s: u32,
    lookups: parking_lot::Mutex<Option<OrderLookups>>,
    lookup_stats: parking_lot::Mutex<Option<Result<OrderLookupStats, String>>>,
}

/// How the engine is opened.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Engine shards (0 = fitted to the machine).
    pub shards: usize,
    /// Which bits of an id place it on a shard.
    pub placement: Placement,
    /// The fewest events of a group whose units the shards decide with deltas
    /// (`Config::shard_deltas_from`); `None` keeps the engine's default.
    pub shard_deltas_from: Option<usize>,
    /// Every group by plan on the shard threads, not only where the plan is estimated
    /// faster (`Config::shard_execution`).
    pub shards_always_by_plan: bool,
    /// Festival callers must never block a tokio worker: `busy` at once on a full queue.
    /// Max mode's plain caller threads may wait briefly.
    pub busy_immediately: bool,
    /// Benchmarks only: no fdatasync. Reported as such.
    pub unsafe_no_sync: bool,
    /// The engine's group commit pacing; `None` keeps the engine's default.
    pub commit_interval: Option<std::time::Duration>,
    /// Write frames into preallocated segments (the engine's default).
    pub preallocate_segments: bool,
    /// Keep change events in the event journal (the engine's default).
    pub change_events: bool,
    /// Follow the change events live during the run, one consumer on its own thread.
    pub follow_events: bool,
    /// Lookups by order id a second while the load runs (0: none).
    pub order_lookups_per_s: u32,
    /// Room reserved at start-up, so the run never pauses to grow the ledger's indexes.
    pub accounts_capacity: usize,
    /// Transfers reserved at start-up.
    pub transfers_capacity: usize,
    /// Events between periodic snapshots (`Config::snapshot_events_interval`); `None`:
    /// the engine's default.
    pub snapshot_events: Option<u64>,
}

impl EngineTarget {
    /// Opens (or creates) the ledger in `data_dir`.
    pub fn open(data_dir: &Path, options: EngineOptions) -> Result<EngineTarget, String> {
        let mut config = Config::new(data_dir);
        config.shards = options.shards;
        config.placement = options.placement;
        if let Some(events) = options.shard_deltas_from {
            config.shard_deltas_from = events;
        }
        if options.shards_always_by_plan {
            config.shard_execution = ShardExecution::Always;
        }
        config.accounts_capacity = options.accounts_capacity;
        config.transfers_capacity = options.transfers_capacity;
        config.backpressure = if options.busy_immediately {
            Backpressure::Busy
        } else {
            Backpressure::Wait(std::time::Duration::from_millis(100))
        };
        if options.unsafe_no_sync {
            config.sync = SyncMode::UnsafeNoSync;
        }
        if let Some(interval) = options.commit_interval {
            // Fixed pacing, for comparisons with the engine's adaptive pacing.
            config.commit_interval_min = interval;
            config.commit_interval_max = interval;
        }
        if let Some(events) = options.snapshot_events {
            config.snapshot_events_interval = events;
        }
        config.preallocate_segments = options.preallocate_segments;
        config.change_events = options.change_events;
        // Room for every event of a long max-mode run, which the run reads back.
        config.events_retention_bytes = 16 * 1024 * 1024 * 1024;
        let ledger = Ledger::open(config)
            .map_err(|error| format!("opening the ledger in {}: {error}", data_dir.display()))?;
        Ok(EngineTarget {
            ledger,
            follow_events: options.follow_events,
            follower: parking_lot::Mutex::new(None),
            order_lookups_per_s: options.order_lookups_per_s,
            lookups: parking_lot::Mutex::new(None),
            lookup_stats: parking_lot::Mutex::new(None),
        })
    }

    /// The ledger, to serve it over the network instead of driving it directly.
    pub fn into_ledger(self) -> Ledger {
        self.ledger
    }

    /// The group commit pacing's bounds (floor, ceiling).
    pub fn commit_interval(&self) -> (std::time::Duration, std::time::Duration) {
        let config = self.ledger.config();
        (config.commit_interval_min, config.commit_interval_max)
    }

    /// Whether the log writes into preallocated segments.
    pub fn preallocates(&self) -> bool {
        self.ledger.config().preallocate_segments
    }
}

fn outcomes(result: Result<Vec<EventResult>, SubmitError>) -> Result<Vec<Outcome>, SubmitFailure> {
    match result {
        Ok(results) => Ok(results
            .into_iter()
            .map(|r| Outcome {
                code: r.code,
                timestamp: r.timestamp,
            })
            .collect()),
        Err(SubmitError::Busy(_)) => Err(SubmitFailure::Busy),
        Err(other) => Err(SubmitFailure::Other(other.to_string())),
    }
}

impl Target for EngineTarget {
    async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        outcomes(self.ledger.submit_async(batch).await)
    }

    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        outcomes(self.ledger.submit(batch))
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        self.ledger.lookup_accounts(ids)
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        self.ledger.lookup_transfers(ids)
    }

    fn shutdown(&self) -> Result<(), String> {
        self.ledger.shutdown().map_err(|error| error.to_string())
    }

    fn account_balances(&self, filter: &AccountFilter) -> Option<Vec<AccountBalance>> {
        Some(self.ledger.get_account_balances(filter))
    }

    fn shards(&self) -> usize {
        self.ledger.shards()
    }

    fn run_started(&self) {
        if self.order_lookups_per_s > 0 {
            let after = self.ledger.with_state(|state| state.last_timestamp());
            match OrderLookups::start(self.ledger.clone(), self.order_lookups_per_s, after) {
                Ok(lookups) => *self.lookups.lock() = Some(lookups),
                Err(error) => *self.lookup_stats.lock() = Some(Err(error)),
            }
        }
        if !self.follow_events || self.ledger.events_dir().is_none() {
            return;
        }
        // Without a follower the run still reads the stream back from disk at the end.
        let after = self.ledger.with_state(|state| state.last_timestamp());
        let follower = self
            .ledger
            .subscribe_batches(after)
            .map_err(|e| e.to_string());
        match follower.and_then(|stream| LiveFollower::start(stream, after)) {
            Ok(follower) => *self.follower.lock() = Some(follower),
            Err(error) => eprintln!("loadgen: no live change-event follower: {error}"),
        }
    }

    fn run_finished(&self) {
        if let Some(lookups) = self.lookups.lock().take() {
            *self.lookup_stats.lock() = Some(lookups.finish());
        }
    }

    fn order_lookups(&self) -> Option<Result<OrderLookupStats, String>> {
        self.lookup_stats.lock().take()
    }

    fn check_events(&self) -> Option<EventsCheck> {
        let dir = self.ledger.events_dir()?.to_path_buf();
        // Waits until the journal holds every change committed so far.
        if let Err(error) = self.ledger.get_change_events(u64::MAX, 1) {
            return Some(EventsCheck::failed(error.to_string()));
        }
        let followed = self.follower.lock().take().map(LiveFollower::finish);
        let counts = self
            .ledger
            .with_state(|state| (state.account_count() as u64, state.transfer_count() as u64));
        Some(crate::events_check::check(&dir, followed, counts, |ids| {
            self.ledger.lookup_accounts(ids)
        }))
    }

    fn shard_stats(&self) -> Option<ShardStats> {
        let metrics = self.ledger.metrics();
        Some(ShardStats {
            units: metrics.shard_units,
            units_spanning: metrics.shard_units_spanning,
            units_waited: metrics.shard_units_waited,
            groups_serial: metrics.groups_serial,
            groups: metrics.groups_committed,
            groups_applied_by_log_thread: metrics.groups_applied_by_log_thread,
            group_events_mean: metrics.group_events_mean,
            group_latency_us_p50: metrics.commit_latency_us_p50,
            group_latency_us_p99: metrics.commit_latency_us_p99,
            group_latency_us_max: metrics.commit_latency_us_max,
            commit_pauses: metrics.commit_pauses,
            commit_pause_us_mean: metrics.commit_pause_us as f64
                / metrics.commit_pauses.max(1) as f64,
            commit_stalls: metrics.commit_stalls,
            spare_steps: metrics.spare_steps,
            spare_step_us_mean: metrics.spare_step_us as f64 / metrics.spare_steps.max(1) as f64,
            spare_bytes: metrics.spare_step_bytes,
            snapshots_written: metrics.snapshots_written,
            snapshots_failed: metrics.snapshots_failed,
            snapshot_freeze_us_max: metrics.snapshot_freeze_us_max,
            snapshot_write_ms_max: metrics.snapshot_write_ms_max,
        })
    }
}
