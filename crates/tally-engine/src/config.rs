//! How a ledger is opened.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_log::SyncMode;
use tally_state::Placement;

/// What a submitter gets when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Fail at once with [`crate::SubmitError::Busy`].
    Busy,
    /// Wait up to this long for room, then fail with `Busy`. The wait parks a blocking
    /// submitter and suspends an async one ([`crate::Ledger::submit_async`]).
    Wait(Duration),
}

/// When a group runs on the shard threads instead of on the apply thread alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardExecution {
    /// By plan when the plan's estimated time, the hand-offs of parts and deltas between
    /// threads counted, is at most three quarters of applying the group serially;
    /// serially otherwise, and the next 15 groups unplanned (the default). Groups whose
    /// units nearly all span shards then cost about what they cost on one shard.
    WhenFaster,
    /// Always by plan: for tests and measurements of the executor itself.
    Always,
}

/// The largest [`Config::commit_interval_max`]: a pacing longer than this would only
/// add latency.
pub const COMMIT_INTERVAL_MAX: Duration = Duration::from_millis(100);

/// Ledger configuration. [`Config::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory (created if missing). Only one process may open it.
    pub data_dir: PathBuf,
    /// Shard threads, each owning one part of the state (1 to [`crate::SHARDS_MAX`]);
    /// 0 = fitted to the machine ([`Config::shards_effective`]). Results and state
    /// never depend on it; a ledger may reopen with another count.
    pub shards: usize,
    /// Which bits of an id place it on a shard: by default the whole id (hashed).
    /// `Placement::low_bits(n)` puts ids that share their lowest `n` bits on one shard,
    /// so a service that issues a customer's ids (wallets, payments, authorisations and
    /// their posts) with the customer's key in those bits keeps the customer's events
    /// on one shard. Like the shard count, results and state never depend on it, and a
    /// ledger may reopen with another placement (docs/sharding.md, "Placement").
    pub placement: Placement,
    /// With several shards, the fewest events a group must hold for its units to be
    /// decided without the parts they only add to, which then take deltas instead of
    /// being lent (escrow, docs/sharding.md). 0: every group; `usize::MAX` (the
    /// default): none, every unit holds all its parts. On two cores escrow gained up
    /// to 1.3 × in max mode but lost in the festival (docs/performance.md, "Shards"),
    /// so it is off until it wins both. Results and state never depend on it.
    pub shard_deltas_from: usize,
    /// With several shards, when a group runs by plan on the shard threads
    /// ([`ShardExecution::WhenFaster`] by default). Results and state never depend on it.
    pub shard_execution: ShardExecution,
    /// `Fdatasync` (the default) or the unsafe no-sync mode for benchmarks only.
    pub sync: SyncMode,
    /// Most batches waiting in the submission queue.
    pub queue_batches_max: usize,
    /// Most events waiting in the submission queue, all batches together (at least
    /// [`tally_types::BATCH_EVENTS_MAX`], so that any batch fits an empty queue): with
    /// `queue_batches_max` alone, full batches could queue gigabytes and minutes of work.
    pub queue_events_max: usize,
    /// Most events the log thread takes into one group commit.
    pub group_events_max: usize,
    /// The floor of group commit pacing: the least time between the starts of two group
    /// commits while submitters are concurrent (zero, the default: commit as soon as
    /// anything waits, so a group is whatever arrived during the sync before it). After
    /// a commit that several submissions shared, the next waits out the pacing interval,
    /// which starts here, doubles each time the log thread sees the machine stand still
    /// (a commit or a pause overrunning by milliseconds: a host capping the machine's
    /// CPU time, which each `fdatasync` also spends) and shrinks back in calm spells
    /// (`crate::pacing`; measured in docs/performance.md). After a commit that carried
    /// one submission alone (nothing would share its sync) the next starts at once.
    /// Ignored in the unsafe no-sync mode.
    pub commit_interval_min: Duration,
    /// The ceiling of group commit pacing (at least [`Config::commit_interval_min`], at
    /// most [`COMMIT_INTERVAL_MAX`]): how long the interval may grow while the machine
    /// keeps standing still. Equal bounds pace at a fixed interval.
    pub commit_interval_max: Duration,
    /// What a submitter gets when the queue is full.
    pub backpressure: Backpressure,
    /// Stamp batches from the time each request gives (tests and replay tools) instead
    /// of the wall clock.
    pub manual_clock: bool,
    /// Write a snapshot after this many events since the last one; 0 = never.
    pub snapshot_events_interval: u64,
    /// At shutdown, write a snapshot of the final state when at least this many events
    /// were applied (or replayed at open) since the last one (0 = never), and wait for
    /// it: the next open loads it instead of replaying them, in well under half the
    /// time on the festival ledger (docs/performance.md, "Recovery"). Shutdown takes
    /// that much longer (0.6 s for that ledger's 357 MB).
    pub snapshot_at_shutdown_events: u64,
    /// Rotate log segments past this size.
    pub segment_bytes_max: u64,
    /// Write frames in place into zero-filled segments that the log thread prepares in
    /// small steps while it would otherwise sleep (pacing pauses, quiet spells), once
    /// the ledger has logged a few MB since open (`tally_log::Wal::write_spare_step`).
    /// A sync then need not make a new file length durable, which makes it cheaper
    /// (measured in docs/performance.md). Costs one extra segment of disk (a spare
    /// waiting for the next rotation) and writing each segment twice.
    pub preallocate_segments: bool,
    /// Accounts to reserve room for at start-up (0 = grow as needed), a restart from a
    /// snapshot included (the snapshot loads into at least this room). Growing past
    /// the reservation works, but pauses to rehash the id index.
    pub accounts_capacity: usize,
    /// Transfers to reserve room for at start-up (0 = grow as needed), a restart from
    /// a snapshot included: the snapshot loads into at least this room, its index
    /// tables prepared on a helper thread while it loads, so that replaying the log
    /// after it grows none. At tens of millions, growing pauses the apply thread while
    /// the id index re-places every entry, into a table a helper thread prepared ahead
    /// (the transfer store itself grows by chunks and never copies).
    pub transfers_capacity: usize,
    /// Keep change events (docs/spec.md §2) in the event journal, `data_dir/events`,
    /// for [`crate::Ledger::get_change_events`], [`crate::Ledger::subscribe`] and
    /// `tally events`. Costs about 90 bytes of writing (not synced) per committed change.
    pub change_events: bool,
    /// Bytes of change events kept on disk: past it, the oldest journal segments are
    /// deleted (a reader asking for events older than those kept gets an error naming
    /// the oldest kept). Independent of the log, which snapshots retire.
    pub events_retention_bytes: u64,
    /// On the wall clock, when a pending transfer's expiry instant passes while no
    /// batch arrives, log an empty batch then, so the expiry (and its change event)
    /// happens at its instant instead of with the next batch. Either way the log fixes
    /// when it happened, so replay reproduces it.
    pub expire_when_idle: bool,
}

impl Config {
    /// Production defaults for a ledger in `data_dir`: shards fitted to the machine,
    /// `fdatasync`, commit pacing from 0 up to 1 ms, a 100 ms wait for room in a full queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tally_engine::{Backpressure, Config};
    ///
    /// let mut config = Config::new("/var/lib/payments/ledger");
    /// config.backpressure = Backpressure::Wait(Duration::from_millis(20));
    /// assert_eq!(config.shards, 0);
    /// ```
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        Config {
            data_dir: data_dir.as_ref().to_path_buf(),
            shards: 0,
            placement: Placement::WHOLE_ID,
            shard_deltas_from: usize::MAX,
            shard_execution: ShardExecution::WhenFaster,
            sync: SyncMode::Fdatasync,
            queue_batches_max: 65_536,
            queue_events_max: 1 << 20,
            group_events_max: 65_536,
            commit_interval_min: Duration::ZERO,
            commit_interval_max: Duration::from_millis(1),
            backpressure: Backpressure::Wait(Duration::from_millis(100)),
            manual_clock: false,
            snapshot_events_interval: 20_000_000,
            snapshot_at_shutdown_events: 1_000_000,
            segment_bytes_max: 256 * 1024 * 1024,
            preallocate_segments: true,
            accounts_capacity: 0,
            transfers_capacity: 0,
            change_events: true,
            events_retention_bytes: 4 * 1024 * 1024 * 1024,
            expire_when_idle: true,
        }
    }

    /// The shard count in force: the requested one, or fitted to the machine: one
    /// shard per four hardware threads, at most 8, so that the log thread, the planning
    /// apply thread and the callers keep cores of their own. That is 1 below 8 hardware
    /// threads, where an extra shard costs more in hand-offs than it gains (measured in
    /// docs/performance.md).
    pub fn shards_effective(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        (threads / 4).clamp(1, 8)
    }
}
