//! The JSON edge of `tally apply` (docs/spec.md §4): parses request lines and formats answers.
//!
//! * [`parse_line`] turns one JSON Lines request into a [`RequestLine`], or rejects the
//!   whole line with a [`LineError`] naming the field (`create_transfers[3].amount: …`).
//! * [`results_answer`], [`accounts_answer`], [`transfers_answer`] and [`error_answer`]
//!   write the answer lines; [`account_line`] / [`transfer_line`] the dump lines.
//!
//! Wire rules: ids and u128/u64 values are strings of decimal digits (JSON integers below
//! 2^53 are accepted too); u32/u16 values are JSON integers (decimal strings accepted);
//! amounts are decimal strings in currency units, converted exactly with the ledger's
//! scale; flags are arrays of names; missing fields are zero.
//!
//! Amount scale: a transfer that gives no ledger reads its amount in the scale of the
//! ledger it will take — its pending or original transfer's (post, void, refund), else
//! its debit account's — as the store stands ([`LedgerLookup`]) plus the transfers defined
//! earlier in the same line; where none is found, scale 0.
//!
//! Invariant: this crate does no I/O and knows nothing of the engine; the caller answers
//! [`LedgerLookup`] from whatever state it holds.
#![deny(missing_docs)]

mod answer;
mod fields;
mod request;
mod tree;

use std::fmt;
use tally_types::{Account, AccountFilter, QueryFilter, Transfer};

pub use answer::{
    AccountJson, BalancedOutcome, EventOutcome, TransferJson, account_balances_answer,
    account_json, account_line, accounts_answer, change_event_json, change_event_line,
    change_events_answer, error_answer, results_answer, results_with_balances_answer,
    transfer_json, transfer_line, transfers_answer,
};
pub use request::parse_line;

/// The ledgers of stored records, as they stand when a line is read: what gives a
/// ledger-less transfer's amount its scale.
pub trait LedgerLookup {
    /// The ledger of account `id`, if it exists.
    fn account_ledger(&self, id: u128) -> Option<u32>;
    /// The ledger of transfer `id`, if it exists.
    fn transfer_ledger(&self, id: u128) -> Option<u32>;
}

/// A store with nothing in it: every ledger-less amount is read at scale 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLedgers;

impl LedgerLookup for NoLedgers {
    fn account_ledger(&self, _id: u128) -> Option<u32> {
        None
    }

    fn transfer_ledger(&self, _id: u128) -> Option<u32> {
        None
    }
}

/// One request of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `create_accounts`: the accounts, in order.
    CreateAccounts(Vec<Account>),
    /// `create_transfers`: the transfers, in order.
    CreateTransfers(Vec<Transfer>),
    /// `lookup_accounts`: the ids.
    LookupAccounts(Vec<u128>),
    /// `lookup_transfers`: the ids.
    LookupTransfers(Vec<u128>),
    /// `get_account_transfers`: the filter.
    GetAccountTransfers(AccountFilter),
    /// `get_change_events`: events with timestamp at or after `timestamp_min`, at most
    /// `limit` (at most 8,190; 0 asks for the most).
    GetChangeEvents {
        /// The first timestamp wanted (0 = from the first; an error once retention
        /// deleted events it would answer).
        timestamp_min: u64,
        /// The most events answered.
        limit: u32,
    },
    /// `get_account_balances`: the filter (as `get_account_transfers`').
    GetAccountBalances(AccountFilter),
    /// `query_accounts`: the filter.
    QueryAccounts(QueryFilter),
    /// `query_transfers`: the filter.
    QueryTransfers(QueryFilter),
}

/// A parsed line: the request and its optional `"now"` (nanoseconds). The parser only
/// returns `now`; whether it is allowed (`--manual-clock`) is the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    /// What the line asks for.
    pub request: Request,
    /// The line's `"now"` in nanoseconds, if it gives one.
    pub now: Option<u64>,
    /// `"balances": true` (a `create_transfers` line only): answer each applied
    /// transfer with both accounts' balances.
    pub balances: bool,
}

/// Why a line was rejected whole. Display is the message for `{"error": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError(pub String);

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LineError {}
