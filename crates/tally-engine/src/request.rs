//! What a submission carries through the engine: the queued request and the answer per
//! event. A leaf: every other module may use it.

use crate::error::SubmitError;
use std::time::Instant;
use tally_types::{Batch, ResultCode};
use tokio::sync::oneshot;

/// The result of one event: its code, and its timestamp when it was applied (`Ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventResult {
    /// What happened to the event.
    pub code: ResultCode,
    /// The event's engine timestamp; 0 unless `code` is `Ok`.
    pub timestamp: u64,
}

impl EventResult {
    /// The results of a batch stamped from `stamp`, given its codes in order: event `i`
    /// applied at `stamp + i`, a refused event with timestamp 0.
    pub fn for_batch(stamp: u64, codes: &[ResultCode]) -> Vec<EventResult> {
        codes
            .iter()
            .enumerate()
            .map(|(index, &code)| EventResult {
                code,
                timestamp: if code.is_ok() {
                    stamp + index as u64
                } else {
                    0
                },
            })
            .collect()
    }
}

/// What a submitter waits for: one result per event, or why the batch got none.
pub(crate) type Answer = Result<Vec<EventResult>, SubmitError>;

/// The answer channel of one submission.
pub(crate) type Reply = oneshot::Sender<Answer>;

/// One submission waiting in the queue.
#[derive(Debug)]
pub(crate) struct Request {
    pub batch: Batch,
    /// Requested stamp (manual clock only).
    pub now: Option<u64>,
    pub reply: Reply,
    /// When the submitter enqueued it, for the commit-latency histogram.
    pub enqueued: Instant,
}
