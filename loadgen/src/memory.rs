//! Fake targets for tests and for trying the load generator without the engine:
//! [`MemoryTarget`], a small single-lock in-memory ledger that follows the SPEC rules the
//! generator exercises (balance limits, linked chains, pending/post/void/expiry, refunds),
//! and [`StallingTarget`], which freezes another target for a window of time.
//!
//! Not the reference state machine: it skips checks the generator never trips (most
//! `exists_with_different_*`, overflow, burned ids), and it is not durable.

use crate::target::{Outcome, SubmitFailure, Target};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tally_types::{
    Account, AccountFlags, BATCH_EVENTS_MAX, Batch, NS_PER_S, ResultCode, Transfer, TransferFlags,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Posted,
    Voided,
    Expired,
}

#[derive(Debug)]
enum Undo {
    Account(Account),
    Inserted(u128),
    Status(u128, Status),
    Refunded(u128, Option<u128>),
    Expiry(u64, u128),
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<u128, Account>,
    transfers: HashMap<u128, Transfer>,
    statuses: HashMap<u128, Status>,
    refunded: HashMap<u128, u128>,
    expiries: BTreeSet<(u64, u128)>,
    last_timestamp: u64,
    undo: Vec<Undo>,
}

/// An in-memory ledger behind one mutex.
#[derive(Debug, Default)]
pub struct MemoryTarget {
    state: Mutex<State>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl MemoryTarget {
    pub fn new() -> MemoryTarget {
        MemoryTarget::default()
    }

    /// Sized up front, so no rehash of millions of entries stalls the run.
    pub fn with_capacity(accounts: usize, transfers: usize) -> MemoryTarget {
        let state = State {
            accounts: HashMap::with_capacity(accounts),
            transfers: HashMap::with_capacity(transfers),
            statuses: HashMap::with_capacity(transfers / 10),
            ..State::default()
        };
        MemoryTarget {
            state: Mutex::new(state),
        }
    }

    fn apply(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        if batch.len() > BATCH_EVENTS_MAX {
            return Err(SubmitFailure::Other("batch too large".into()));
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| SubmitFailure::Other("poisoned".into()))?;
        let first = wall_ns().max(state.last_timestamp + 1);
        state.expire_until(first);
        Ok(match batch {
            Batch::CreateAccounts(accounts) => state.create_accounts(&accounts, first),
            Batch::CreateTransfers(transfers) => state.create_transfers(&transfers, first),
        })
    }
}

impl State {
    fn stamp(&mut self, at_least: u64) -> u64 {
        self.last_timestamp = at_least.max(self.last_timestamp + 1);
        self.last_timestamp
    }

    fn expire_until(&mut self, now: u64) {
        while let Some(&(expiry, id)) = self.expiries.first() {
            if expiry > now {
                break;
            }
            self.expiries.remove(&(expiry, id));
            let still_pending = self.statuses.get(&id) == Some(&Status::Pending);
            if let (true, Some(pending)) = (still_pending, self.transfers.get(&id).copied()) {
                self.release(&pending);
                self.statuses.insert(id, Status::Expired);
            }
        }
    }

    fn release(&mut self, pending: &Transfer) {
        if let Some(debit) = self.accounts.get_mut(&pending.debit_account_id) {
            debit.debits_pending -= pending.amount;
        }
        if let Some(credit) = self.accounts.get_mut(&pending.credit_account_id) {
            credit.credits_pending -= pending.amount;
        }
    }

    fn create_accounts(&mut self, accounts: &[Account], first: u64) -> Vec<Outcome> {
        accounts
            .iter()
            .map(|account| {
                let code = if account.id == 0 || account.id == u128::MAX {
                    ResultCode::IdMustNotBeZero
                } else if self.accounts.contains_key(&account.id) {
                    ResultCode::Exists
                } else {
                    ResultCode::Ok
                };
                let timestamp = if code.is_ok() { self.stamp(first) } else { 0 };
                if code.is_ok() {
                    let flags = account.flags.without(AccountFlags::LINKED);
                    self.accounts.insert(
                        account.id,
                        Account {
                            flags,
                            timestamp,
                            ..*account
                        },
                    );
                }
                Outcome { code, timestamp }
            })
            .collect()
    }

    fn create_transfers(&mut self, transfers: &[Transfer], first: u64) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(transfers.len());
        let mut start = 0;
        while start < transfers.len() {
            let end = transfers[start..]
                .iter()
                .position(|t| !t.flags.contains(TransferFlags::LINKED))
                .map_or(transfers.len() - 1, |p| start + p);
            let open = transfers[end].flags.contains(TransferFlags::LINKED);
            self.create_chain(&transfers[start..=end], open, first, &mut outcomes);
            start = end + 1;
        }
        outcomes
    }

    /// One chain (or one unlinked transfer): all or nothing.
    fn create_chain(
        &mut self,
        chain: &[Transfer],
        open: bool,
        first: u64,
        outcomes: &mut Vec<Outcome>,
    ) {
        self.undo.clear();
        let mut results = Vec::with_capacity(chain.len());
        let mut failure = None;
        for (index, transfer) in chain.iter().enumerate() {
            let timestamp = self.stamp(first);
            let code = self.create_transfer(transfer, timestamp);
            results.push(Outcome { code, timestamp });
            if !code.is_ok() {
                failure = Some((index, code));
                break;
            }
        }
        if failure.is_none() && open {
            failure = Some((chain.len() - 1, ResultCode::LinkedEventChainOpen));
        }
        match failure {
            None => outcomes.extend(results),
            Some((failed, code)) => {
                self.rollback();
                for index in 0..chain.len() {
                    let code = if index == failed {
                        code
                    } else {
                        ResultCode::LinkedEventFailed
                    };
                    outcomes.push(Outcome { code, timestamp: 0 });
                }
            }
        }
        self.undo.clear();
    }

    fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Account(account) => {
                    self.accounts.insert(account.id, account);
                }
                Undo::Inserted(id) => {
                    self.transfers.remove(&id);
                    self.statuses.remove(&id);
                }
                Undo::Status(id, status) => {
                    self.statuses.insert(id, status);
                }
                Undo::Refunded(id, previous) => match previous {
                    Some(amount) => {
                        self.refunded.insert(id, amount);
                    }
                    None => {
                        self.refunded.remove(&id);
                    }
                },
                Undo::Expiry(at, id) => {
                    self.expiries.remove(&(at, id));
                }
            }
        }
    }

    fn create_transfer(&mut self, t: &Transfer, timestamp: u64) -> ResultCode {
        if t.id == 0 {
            return ResultCode::IdMustNotBeZero;
        }
        if self.transfers.contains_key(&t.id) {
            return ResultCode::Exists;
        }
        if t.flags.contains(TransferFlags::POST_PENDING_TRANSFER)
            || t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER)
        {
            return self.settle(t, timestamp);
        }
        let mut stored = Transfer { timestamp, ..*t };
        if t.flags.contains(TransferFlags::REFUND) {
            let Some(original) = self.transfers.get(&t.pending_id).copied() else {
                return ResultCode::OriginalTransferNotFound;
            };
            let refundable = original.flags.bits() & TransferFlags::KIND_MASK.bits() == 0
                || original
                    .flags
                    .contains(TransferFlags::POST_PENDING_TRANSFER);
            if !refundable {
                return ResultCode::OriginalTransferNotRefundable;
            }
            let already = self.refunded.get(&original.id).copied();
            if already.unwrap_or(0) + t.amount > original.amount {
                return ResultCode::ExceedsRefundableAmount;
            }
            stored.debit_account_id = original.credit_account_id;
            stored.credit_account_id = original.debit_account_id;
            stored.ledger = original.ledger;
            let code = self.move_money(&stored, false);
            if code.is_ok() {
                self.undo.push(Undo::Refunded(original.id, already));
                self.refunded
                    .insert(original.id, already.unwrap_or(0) + t.amount);
                self.insert(stored);
            }
            return code;
        }
        let pending = t.flags.contains(TransferFlags::PENDING);
        let code = self.move_money(&stored, pending);
        if code.is_ok() {
            self.insert(stored);
            if pending {
                self.undo.push(Undo::Status(t.id, Status::Pending));
                self.statuses.insert(t.id, Status::Pending);
                if t.timeout > 0 {
                    let at = timestamp + u64::from(t.timeout) * NS_PER_S;
                    self.expiries.insert((at, t.id));
                    self.undo.push(Undo::Expiry(at, t.id));
                }
            }
        }
        code
    }

    fn insert(&mut self, transfer: Transfer) {
        self.undo.push(Undo::Inserted(transfer.id));
        self.transfers.insert(transfer.id, transfer);
    }

    fn move_money(&mut self, t: &Transfer, pending: bool) -> ResultCode {
        let Some(debit) = self.accounts.get(&t.debit_account_id).copied() else {
            return ResultCode::DebitAccountNotFound;
        };
        let Some(credit) = self.accounts.get(&t.credit_account_id).copied() else {
            return ResultCode::CreditAccountNotFound;
        };
        if debit.ledger != credit.ledger {
            return ResultCode::AccountsMustHaveTheSameLedger;
        }
        if t.ledger != debit.ledger {
            return ResultCode::TransferMustHaveTheSameLedgerAsAccounts;
        }
        if t.amount == 0 {
            return ResultCode::AmountMustNotBeZero;
        }
        let debit_limit = debit
            .flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS);
        if debit_limit
            && debit.debits_pending + debit.debits_posted + t.amount > debit.credits_posted
        {
            return ResultCode::ExceedsCredits;
        }
        let credit_limit = credit
            .flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS);
        if credit_limit
            && credit.credits_pending + credit.credits_posted + t.amount > credit.debits_posted
        {
            return ResultCode::ExceedsDebits;
        }
        self.undo.push(Undo::Account(debit));
        self.undo.push(Undo::Account(credit));
        let (mut debit, mut credit) = (debit, credit);
        if pending {
            debit.debits_pending += t.amount;
            credit.credits_pending += t.amount;
        } else {
            debit.debits_posted += t.amount;
            credit.credits_posted += t.amount;
        }
        self.accounts.insert(debit.id, debit);
        self.accounts.insert(credit.id, credit);
        ResultCode::Ok
    }

    fn settle(&mut self, t: &Transfer, timestamp: u64) -> ResultCode {
        let Some(pending) = self.transfers.get(&t.pending_id).copied() else {
            return ResultCode::PendingTransferNotFound;
        };
        let Some(status) = self.statuses.get(&pending.id).copied() else {
            return ResultCode::PendingTransferNotPending;
        };
        let post = t.flags.contains(TransferFlags::POST_PENDING_TRANSFER);
        if post && t.amount > pending.amount {
            return ResultCode::ExceedsPendingTransferAmount;
        }
        match status {
            Status::Posted => return ResultCode::PendingTransferAlreadyPosted,
            Status::Voided => return ResultCode::PendingTransferAlreadyVoided,
            Status::Expired => return ResultCode::PendingTransferExpired,
            Status::Pending => {}
        }
        let (Some(debit), Some(credit)) = (
            self.accounts.get(&pending.debit_account_id).copied(),
            self.accounts.get(&pending.credit_account_id).copied(),
        ) else {
            return ResultCode::PendingTransferNotFound;
        };
        self.undo.push(Undo::Account(debit));
        self.undo.push(Undo::Account(credit));
        self.undo.push(Undo::Status(pending.id, Status::Pending));
        let amount = if t.amount == 0 {
            pending.amount
        } else {
            t.amount
        };
        self.release(&pending);
        if post {
            if let Some(debit) = self.accounts.get_mut(&pending.debit_account_id) {
                debit.debits_posted += amount;
            }
            if let Some(credit) = self.accounts.get_mut(&pending.credit_account_id) {
                credit.credits_posted += amount;
            }
        }
        self.statuses.insert(
            pending.id,
            if post { Status::Posted } else { Status::Voided },
        );
        self.insert(Transfer {
            timestamp,
            debit_account_id: pending.debit_account_id,
            credit_account_id: pending.credit_account_id,
            ledger: pending.ledger,
            code: if t.code == 0 { pending.code } else { t.code },
            amount: if post { amount } else { pending.amount },
            ..*t
        });
        ResultCode::Ok
    }
}

impl Target for MemoryTarget {
    async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.apply(batch)
    }

    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.apply(batch)
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| state.accounts.get(id).copied())
            .collect()
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| state.transfers.get(id).copied())
            .collect()
    }

    fn shutdown(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Wraps a target and freezes it: every async submission arriving in
/// `[from, from + length)` (measured from the first async submission, so setup does not
/// count) waits until the window ends, as a stalled engine would (a long fsync, a pause).
#[derive(Debug)]
pub struct StallingTarget<T> {
    inner: T,
    from: Duration,
    length: Duration,
    first: std::sync::OnceLock<Instant>,
}

impl<T: Target> StallingTarget<T> {
    pub fn new(inner: T, from: Duration, length: Duration) -> StallingTarget<T> {
        StallingTarget {
            inner,
            from,
            length,
            first: std::sync::OnceLock::new(),
        }
    }
}

impl<T: Target> Target for StallingTarget<T> {
    async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        let now = Instant::now();
        let first = *self.first.get_or_init(|| now);
        let (stall_from, stall_until) = (first + self.from, first + self.from + self.length);
        if now >= stall_from && now < stall_until {
            tokio::time::sleep_until(stall_until.into()).await;
        }
        self.inner.submit(batch).await
    }

    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.inner.submit_blocking(batch)
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        self.inner.lookup_accounts(ids)
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        self.inner.lookup_transfers(ids)
    }

    fn shutdown(&self) -> Result<(), String> {
        self.inner.shutdown()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: u128, flags: AccountFlags) -> Account {
        Account {
            id,
            ledger: 156,
            code: 1,
            flags,
            ..Account::default()
        }
    }

    fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            ledger: 156,
            code: 1,
            ..Transfer::default()
        }
    }

    #[test]
    fn chains_are_all_or_nothing_and_limits_hold() {
        let target = MemoryTarget::new();
        let limited = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        let accounts = vec![
            account(1, AccountFlags::empty()),
            account(2, limited),
            account(3, AccountFlags::empty()),
        ];
        let codes = |o: Vec<Outcome>| o.into_iter().map(|o| o.code).collect::<Vec<_>>();
        let created = target
            .submit_blocking(Batch::CreateAccounts(accounts))
            .expect("accounts");
        assert!(created.iter().all(|o| o.code.is_ok()));
        let fund = transfer(10, 1, 2, 100);
        assert_eq!(
            codes(
                target
                    .submit_blocking(Batch::CreateTransfers(vec![fund]))
                    .expect("fund")
            ),
            vec![ResultCode::Ok]
        );
        let mut first = transfer(11, 2, 3, 60);
        first.flags = TransferFlags::LINKED;
        let second = transfer(12, 2, 3, 60);
        let after = transfer(13, 2, 3, 10);
        let results = target
            .submit_blocking(Batch::CreateTransfers(vec![first, second, after]))
            .expect("chain");
        assert_eq!(
            codes(results),
            vec![
                ResultCode::LinkedEventFailed,
                ResultCode::ExceedsCredits,
                ResultCode::Ok
            ]
        );
        let user = target.lookup_accounts(&[2])[0];
        assert_eq!((user.debits_posted, user.credits_posted), (10, 100));
        assert!(target.lookup_transfers(&[11, 12]).is_empty());
    }
}
