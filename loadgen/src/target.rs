//! What the load generator drives: a small trait, so the runner can be tested against
//! fakes (the in-memory reference ledger, a stalling target) and wired to the real engine by one
//! adapter ([`EngineTarget`], behind the `engine` module).

use std::future::Future;
use tally_types::{Account, Batch, ResultCode, Transfer};

/// One event's answer, as the load generator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
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

    /// Shards in use, for the report (0 when not applicable).
    fn shards(&self) -> usize {
        0
    }

    /// How much of the work spanned shards, for the report (`None`: not applicable).
    fn shard_stats(&self) -> Option<crate::report::ShardStats> {
        None
    }
}
