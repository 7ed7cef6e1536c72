//! What the load generator drives: the [`Target`] trait and its adapters, so the runner
//! is wired to the real engine by one adapter ([`engine::EngineTarget`]), to a server
//! over the network by another ([`server::ServerTarget`]), to a replicated cluster by a
//! third ([`cluster::ClusterTarget`], with its processes in [`replicas`] and what happens
//! to them during a run in [`chaos`]), and tested
//! against fakes ([`memory::MemoryTarget`], the in-memory reference ledger, and
//! [`memory::StallingTarget`], which freezes another target for a while).

pub mod chaos;
pub mod cluster;
pub mod engine;
pub mod memory;
pub mod replicas;
pub mod server;

use std::future::Future;
use tally_types::{Account, AccountBalance, AccountFilter, Batch, ResultCode, Transfer};

/// One event's answer, as the load generator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The event's result.
    pub code: ResultCode,
    /// Engine timestamp of the event (ns); meaningful for `ok` events.
    pub timestamp: u64,
}

/// Why a whole submission got no per-event results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitFailure {
    /// The engine's queue was full: back-pressure. Counted as the result "busy",
    /// never retried blindly.
    Busy,
    /// Anything else (shut down, I/O failure, rejected batch): counted as "failed".
    Other(String),
}

impl SubmitFailure {
    /// The name the report counts this failure under.
    pub fn report_name(&self) -> &'static str {
        match self {
            SubmitFailure::Busy => "busy",
            SubmitFailure::Other(_) => "submit_failed",
        }
    }
}

/// A ledger the load generator can drive. `submit` returns once the batch is durable.
pub trait Target: Send + Sync + 'static {
    /// Submits one batch from an async caller (festival mode: one task per payment).
    fn submit(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Outcome>, SubmitFailure>> + Send;

    /// Submits one batch from a plain thread (setup, max mode).
    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure>;

    /// The accounts that exist among `ids` (unknown ids skipped).
    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account>;

    /// The transfers that exist among `ids` (unknown ids skipped).
    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer>;

    /// Drains and syncs.
    fn shutdown(&self) -> Result<(), String>;

    /// The balance history `filter` selects (`None`: the target cannot read it).
    fn account_balances(&self, filter: &AccountFilter) -> Option<Vec<AccountBalance>> {
        let _ = filter;
        None
    }

    /// Shards in use, for the report (0 when not applicable).
    fn shards(&self) -> usize {
        0
    }

    /// How much of the work spanned shards, for the report (`None`: not applicable).
    fn shard_stats(&self) -> Option<ShardStats> {
        None
    }

    /// Reads the ledger's change events back from disk and checks them against the
    /// ledger (`None`: the target keeps none, or they are off).
    fn check_events(&self) -> Option<crate::events_check::EventsCheck> {
        None
    }

    /// What the lookups by order id measured during the run (`None`: none were asked
    /// for, or the target cannot query).
    fn order_lookups(&self) -> Option<Result<crate::order_lookups::OrderLookupStats, String>> {
        None
    }

    /// The run's load starts now (setup is done).
    fn run_started(&self) {}

    /// The run's load is over (the sweep and the verification follow).
    fn run_finished(&self) {}

    /// What the cluster went through, after the verification: failovers, the longest
    /// gap between acknowledgements, whether the replicas converged (`None`: not a
    /// cluster).
    fn cluster_stats(&self) -> Option<ClusterStats> {
        None
    }
}

/// A cluster's run, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterStats {
    /// Replicas the load was spread over (their client addresses).
    pub replicas: usize,
    /// The chaos during the run (`none`, or what was killed when).
    pub chaos: String,
    /// Leaders the chaos killed.
    pub leader_kills: u64,
    /// What went wrong in the chaos (a leader not found, a restart that failed).
    pub chaos_errors: Vec<String>,
    /// Leader changes seen during the run by asking every replica for its status every
    /// 50 ms (`None`: the replicas' peer addresses are not known).
    pub failovers: Option<u64>,
    /// The longest time between two consecutive acknowledgements during the run.
    pub ack_gap_us_max: u64,
    /// Submissions sent again because a failure left open whether they were applied.
    pub resubmissions: u64,
    /// Events a lost answer had applied: answered `exists` (a chain's later events,
    /// `linked_event_failed`) when sent again, found stored, counted `ok`.
    pub events_recovered: u64,
    /// Each replica's applied index and digest at the end.
    pub replicas_end: Vec<ReplicaEnd>,
    /// Every replica reached the same applied index and digest after the run
    /// (`None`: not checked, the peer addresses are not known).
    pub converged: Option<bool>,
}

/// One replica at the end of the run; `None` where it did not answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplicaEnd {
    /// The replica.
    pub replica_id: u64,
    /// The last index applied to its state.
    pub applied_index: Option<u64>,
    /// Its state digest at that index.
    pub digest: Option<u64>,
}

/// The engine's own counters at the end of the run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShardStats {
    /// Units (events, chains, expiries) the shard threads ran by plan; 0 with 1 shard.
    pub units: u64,
    /// Of those, units that spanned two or more shards.
    pub units_spanning: u64,
    /// Of those, units whose executing shard had to wait for a part to arrive.
    pub units_waited: u64,
    /// Groups applied serially although shards exist (an expiry inside the group).
    pub groups_serial: u64,
    /// Group commits.
    pub groups: u64,
    /// Of those, groups the log thread applied itself (small ones, the apply thread idle).
    pub groups_applied_by_log_thread: u64,
    /// Mean events per group commit.
    pub group_events_mean: f64,
    /// Median of the engine's own commit latency per group (oldest submission enqueued
    /// to the group applied): separates the engine's time from the generator's.
    pub group_latency_us_p50: u64,
    /// 99th percentile of the engine's commit latency per group.
    pub group_latency_us_p99: u64,
    /// Largest commit latency of a group.
    pub group_latency_us_max: u64,
    /// Pauses the engine's log thread made to pace its syncs.
    pub commit_pauses: u64,
    /// Mean length of a pacing pause, microseconds.
    pub commit_pause_us_mean: f64,
    /// Stops of the machine the log thread saw (each doubles the pacing interval).
    pub commit_stalls: u64,
    /// Steps the log thread took to write spare (preallocated) segments.
    pub spare_steps: u64,
    /// Mean length of a spare-segment step, microseconds.
    pub spare_step_us_mean: f64,
    /// Zero bytes the spare-segment steps wrote.
    pub spare_bytes: u64,
    /// Snapshots written.
    pub snapshots_written: u64,
    /// Snapshots that failed.
    pub snapshots_failed: u64,
    /// Longest freeze of the state for a snapshot (the apply thread waits for it).
    pub snapshot_freeze_us_max: u64,
    /// Longest snapshot write (on the snapshot thread).
    pub snapshot_write_ms_max: u64,
}
