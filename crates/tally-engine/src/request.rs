//! What a submission carries through the engine: the queued request and the answer per
//! event. A leaf: every other module may use it.

use crate::error::SubmitError;
use std::time::Instant;
use tally_types::{
    AccountBalances, AccountFlags, Batch, ChangeEvent, ChangeKind, ResultCode, TransferBalances,
    TransferFlags,
};
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
    /// applied at `stamp + i`, a refused event with timestamp 0. An imported batch
    /// (`imported`, given only for one) answers with its events' own timestamps.
    pub fn for_batch(
        stamp: u64,
        codes: &[ResultCode],
        imported: Option<&Batch>,
    ) -> Vec<EventResult> {
        codes
            .iter()
            .enumerate()
            .map(|(index, &code)| EventResult {
                code,
                timestamp: if !code.is_ok() {
                    0
                } else {
                    imported
                        .and_then(|batch| imported_timestamp(batch, index))
                        .unwrap_or(stamp + index as u64)
                },
            })
            .collect()
    }
}

/// The own timestamp of event `index` when it is imported.
fn imported_timestamp(batch: &Batch, index: usize) -> Option<u64> {
    match batch {
        Batch::CreateAccounts(accounts) => accounts
            .get(index)
            .filter(|a| a.flags.contains(AccountFlags::IMPORTED))
            .map(|a| a.timestamp),
        Batch::CreateTransfers(transfers) => transfers
            .get(index)
            .filter(|t| t.flags.contains(TransferFlags::IMPORTED))
            .map(|t| t.timestamp),
    }
}

/// The result of one transfer of a batch submitted with balances asked for
/// ([`crate::Ledger::create_transfers_with_balances`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferResult {
    /// What happened to the transfer.
    pub code: ResultCode,
    /// The transfer's engine timestamp; 0 unless `code` is `Ok`.
    pub timestamp: u64,
    /// Both accounts' balances right after the transfer; `Some` exactly when `code`
    /// is `Ok`.
    pub balances: Option<TransferBalances>,
}

/// The balances after an applied transfer, from its change event among `events` (the
/// group's, in timestamp order); `None` for an event that was not applied. A cluster
/// replica answers balances with results the same way.
pub fn transfer_balances(events: &[ChangeEvent], result: &EventResult) -> Option<TransferBalances> {
    if !result.code.is_ok() {
        return None;
    }
    let of_the_transfer = |event: &&ChangeEvent| {
        event.transfer.timestamp == result.timestamp
            && !matches!(
                event.kind,
                ChangeKind::TwoPhaseExpired | ChangeKind::AccountCreated
            )
    };
    let first = events.partition_point(|event| event.timestamp < result.timestamp);
    // An expiry may share the instant; the transfer's own event is the one stamped with
    // the transfer's timestamp.
    let found = events[first..]
        .iter()
        .take_while(|event| event.timestamp == result.timestamp)
        .find(of_the_transfer)
        // An imported transfer's event is stamped when it committed, after its own
        // timestamp (which no other transfer has).
        .or_else(|| events.iter().find(of_the_transfer));
    debug_assert!(found.is_some(), "an applied transfer has its change event");
    found.map(|event| TransferBalances {
        debit_account: AccountBalances::of(&event.debit_account),
        credit_account: AccountBalances::of(&event.credit_account),
    })
}

/// What the apply thread sends back: the results, and when the submission asked for
/// them, each event's balances (one entry per event, `Some` for applied transfers).
#[derive(Debug, Default)]
pub(crate) struct Answered {
    pub results: Vec<EventResult>,
    pub balances: Vec<Option<TransferBalances>>,
}

/// The answer channel of one submission.
pub(crate) type Reply = oneshot::Sender<Result<Answered, SubmitError>>;

/// One submission waiting in the queue.
#[derive(Debug)]
pub(crate) struct Request {
    pub batch: Batch,
    /// Requested stamp (manual clock only).
    pub now: Option<u64>,
    pub reply: Reply,
    /// Whether the answer carries each applied transfer's balances.
    pub balances: bool,
    /// When the submitter enqueued it, for the commit-latency histogram.
    pub enqueued: Instant,
}
