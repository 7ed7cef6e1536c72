//! Whole-state checks: conservation per ledger and the balance-limit flags. Used by
//! `tally verify`, the load generator's final check, and the tests.

use crate::state::StateMachine;
use std::collections::BTreeMap;
use std::fmt;
use tally_types::{AccountFlags, PendingStatus, TransferKind};

/// A 256-bit sum, so that adding up many u128 balances can never overflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sum256 {
    /// Multiples of 2^128.
    pub high: u128,
    /// The rest.
    pub low: u128,
}

impl Sum256 {
    /// Adds `value`, carrying into `high`.
    pub fn add(&mut self, value: u128) {
        let (low, carry) = self.low.overflowing_add(value);
        self.low = low;
        self.high += u128::from(carry);
    }
}

impl fmt::Display for Sum256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.high == 0 {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}*2^128+{}", self.high, self.low)
        }
    }
}

/// Per-ledger sums of the four balances over every account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Sum of every account's `debits_pending`.
    pub debits_pending: Sum256,
    /// Sum of every account's `debits_posted`.
    pub debits_posted: Sum256,
    /// Sum of every account's `credits_pending`.
    pub credits_pending: Sum256,
    /// Sum of every account's `credits_posted`.
    pub credits_posted: Sum256,
}

impl LedgerTotals {
    /// Double entry: debits equal credits, pending and posted.
    pub fn balanced(&self) -> bool {
        self.debits_pending == self.credits_pending && self.debits_posted == self.credits_posted
    }
}

/// A broken guarantee, found by [`StateMachine::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantViolation(pub String);

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvariantViolation {}

impl StateMachine {
    /// Per ledger, the sums of every account's balances.
    pub fn ledger_totals(&self) -> BTreeMap<u32, LedgerTotals> {
        let mut totals: BTreeMap<u32, LedgerTotals> = BTreeMap::new();
        for account in self.accounts() {
            let t = totals.entry(account.ledger).or_default();
            t.debits_pending.add(account.debits_pending);
            t.debits_posted.add(account.debits_posted);
            t.credits_pending.add(account.credits_pending);
            t.credits_posted.add(account.credits_posted);
        }
        totals
    }

    /// Checks conservation per ledger, every balance-limit flag, that the pending
    /// balances equal the still-pending transfers, and that refunds stay within their
    /// originals. Returns every violation found (empty when all hold).
    pub fn check_invariants(&self) -> Vec<InvariantViolation> {
        let mut violations = Vec::new();
        for (ledger, totals) in self.ledger_totals() {
            if !totals.balanced() {
                violations.push(InvariantViolation(format!(
                    "ledger {ledger}: debits pending {} posted {} != credits pending {} posted {}",
                    totals.debits_pending,
                    totals.debits_posted,
                    totals.credits_pending,
                    totals.credits_posted
                )));
            }
        }
        for account in self.accounts() {
            let debits = account.debits_pending.checked_add(account.debits_posted);
            let credits = account.credits_pending.checked_add(account.credits_posted);
            let (Some(debits), Some(credits)) = (debits, credits) else {
                violations.push(InvariantViolation(format!(
                    "account {} overflows",
                    account.id
                )));
                continue;
            };
            if account
                .flags
                .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
                && debits > account.credits_posted
            {
                violations.push(InvariantViolation(format!(
                    "account {} debits exceed credits",
                    account.id
                )));
            }
            if account
                .flags
                .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
                && credits > account.debits_posted
            {
                violations.push(InvariantViolation(format!(
                    "account {} credits exceed debits",
                    account.id
                )));
            }
        }
        let mut reserved: BTreeMap<u128, (u128, u128)> = BTreeMap::new();
        for transfer in self.transfers() {
            if transfer.kind() == Some(TransferKind::Pending)
                && self.pending_status(transfer.id) == Some(PendingStatus::Pending)
            {
                reserved.entry(transfer.debit_account_id).or_default().0 += transfer.amount;
                reserved.entry(transfer.credit_account_id).or_default().1 += transfer.amount;
            }
        }
        for account in self.accounts() {
            let (debits, credits) = reserved.get(&account.id).copied().unwrap_or_default();
            if (debits, credits) != (account.debits_pending, account.credits_pending) {
                violations.push(InvariantViolation(format!(
                    "account {} pending balances differ from its open pending transfers",
                    account.id
                )));
            }
        }
        for (id, total) in self.parts.iter().flat_map(|part| part.refunded.iter()) {
            match self.lookup_transfer(*id) {
                Some(original) if *total <= original.amount => {}
                _ => violations.push(InvariantViolation(format!(
                    "transfer {id} refunded beyond its amount"
                ))),
            }
        }
        violations
    }
}
