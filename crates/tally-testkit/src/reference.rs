//! An independent model of `create_accounts` and `create_transfers` (docs/spec.md §2),
//! for differential tests of the state machine. It is written from the specification
//! alone and shares no code with `tally-state`: ordered maps instead of indexes and
//! parts, a whole copy of the state taken at the start of each chain instead of an undo
//! log, and the checks one after another in the specification's order. It is slow and
//! meant to be obviously right.

use std::collections::{BTreeMap, BTreeSet};
use tally_types::{
    Account, AccountBalance, AccountBalances, AccountFilter, AccountFlags as AF, Batch, NS_PER_S,
    ResultCode as R, Transfer, TransferFlags as TF,
};

/// Where a pending transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// Reserved, waiting for its post, void or expiry.
    Waiting,
    /// Posted (in whole or in part).
    Posted,
    /// Voided.
    Voided,
    /// Released by its timeout.
    Expired,
}

/// The model's state: every account and transfer, each pending transfer's state, the
/// amount refunded of each refunded transfer, the burned ids, and the balance rows of
/// accounts with `history`.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    accounts: BTreeMap<u128, Account>,
    /// Each change of an account with `history` in the order applied: its stamp, what
    /// it added to the four balances (wrapping), and its transfer (the pending one, for
    /// an expiry).
    history: BTreeMap<u128, Vec<(u64, [u128; 4], Transfer)>>,
    transfers: BTreeMap<u128, Transfer>,
    pending: BTreeMap<u128, PendingState>,
    refunded: BTreeMap<u128, u128>,
    burned: BTreeSet<u128>,
    last_timestamp: u64,
}

/// What the model needs of an event: whether it chains to the next, whether it is
/// imported, and the timestamp it carries (0: none).
trait Event {
    fn linked(&self) -> bool;
    fn imported(&self) -> bool;
    fn given_timestamp(&self) -> u64;
}

impl Event for Account {
    fn linked(&self) -> bool {
        self.flags.contains(AF::LINKED)
    }
    fn imported(&self) -> bool {
        self.flags.contains(AF::IMPORTED)
    }
    fn given_timestamp(&self) -> u64 {
        self.timestamp
    }
}

impl Event for Transfer {
    fn linked(&self) -> bool {
        self.flags.contains(TF::LINKED)
    }
    fn imported(&self) -> bool {
        self.flags.contains(TF::IMPORTED)
    }
    fn given_timestamp(&self) -> u64 {
        self.timestamp
    }
}

/// Imported timestamps lie below 2^63.
const IMPORTED_TIMESTAMP_LIMIT: u64 = 1 << 63;

/// The batch-level checks of imports, before every other: the batch's first event
/// decides whether it is imported; an imported event's own timestamp is non-zero,
/// below 2^63 and before the batch's stamp; any other event carries none.
fn import_failure<E: Event>(first: &E, event: &E, batch_stamp: u64) -> Option<R> {
    let given = event.given_timestamp();
    match (first.imported(), event.imported()) {
        (false, false) if given != 0 => Some(R::TimestampMustBeZero),
        (false, false) => None,
        (false, true) => Some(R::ImportedEventNotExpected),
        (true, false) => Some(R::ImportedEventExpected),
        _ if given == 0 || given >= IMPORTED_TIMESTAMP_LIMIT => {
            Some(R::ImportedEventTimestampOutOfRange)
        }
        _ if given >= batch_stamp => Some(R::ImportedEventTimestampMustNotAdvance),
        _ => None,
    }
}

impl Reference {
    /// An empty ledger.
    pub fn new() -> Reference {
        Reference::default()
    }

    /// The account `id`, if created.
    pub fn account(&self, id: u128) -> Option<&Account> {
        self.accounts.get(&id)
    }

    /// The transfer `id`, if stored.
    pub fn transfer(&self, id: u128) -> Option<&Transfer> {
        self.transfers.get(&id)
    }

    /// Every account, by id.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// Every stored transfer, by id.
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    /// Where pending transfer `id` stands (`None` for any other id).
    pub fn pending_state(&self, id: u128) -> Option<PendingState> {
        self.pending.get(&id).copied()
    }

    /// The amount refunded so far of transfer `id`.
    pub fn refunded(&self, id: u128) -> u128 {
        self.refunded.get(&id).copied().unwrap_or(0)
    }

    /// Whether `id` was burned by a transient failure.
    pub fn burned(&self, id: u128) -> bool {
        self.burned.contains(&id)
    }

    /// `get_account_transfers`: the account's transfers that pass the filter, oldest
    /// first (newest first when `reversed`), at most `limit` of them (0: the largest
    /// page, 8,190).
    pub fn account_transfers(&self, filter: &AccountFilter) -> Vec<Transfer> {
        let mut found: Vec<Transfer> = self
            .transfers
            .values()
            .filter(|t| passes(filter, t, t.timestamp))
            .copied()
            .collect();
        found.sort_by_key(|t| t.timestamp);
        page(found, filter)
    }

    /// `get_account_balances`: an account with `history` has a row for every transfer
    /// that moves money on it and every expiry that releases a reservation of it,
    /// stamped at the transfer's timestamp or the expiry's instant. Rows are in
    /// timestamp order, each with the balances at its instant: an expiry whose instant
    /// fell inside a batch is released after that batch, yet its row comes before the
    /// rows of the batch's later events, and theirs include its release. The rows whose
    /// transfer (for an expiry, the pending one) and stamp pass the filter are answered,
    /// paged as [`Reference::account_transfers`] pages them.
    pub fn account_balances(&self, filter: &AccountFilter) -> Vec<AccountBalance> {
        let mut changes = self
            .history
            .get(&filter.account_id)
            .cloned()
            .unwrap_or_default();
        changes.sort_by_key(|(timestamp, _, _)| *timestamp);
        let mut balances = [0u128; 4];
        let mut found = Vec::new();
        for (timestamp, delta, t) in changes {
            for (balance, delta) in balances.iter_mut().zip(delta) {
                *balance = balance.wrapping_add(delta);
            }
            if passes(filter, &t, timestamp) {
                let [
                    debits_pending,
                    debits_posted,
                    credits_pending,
                    credits_posted,
                ] = balances;
                found.push(AccountBalance {
                    timestamp,
                    balances: AccountBalances {
                        debits_pending,
                        debits_posted,
                        credits_pending,
                        credits_posted,
                    },
                });
            }
        }
        page(found, filter)
    }

    /// The stamp of the last event applied (of the last batch when it was empty).
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// Applies `batch` stamped `timestamp` (event `i` at `timestamp + i`) after
    /// releasing every pending transfer due by `timestamp`; one result per event.
    ///
    /// # Panics
    /// If `timestamp` does not move time forward.
    pub fn apply(&mut self, timestamp: u64, batch: &Batch) -> Vec<R> {
        assert!(timestamp > self.last_timestamp, "time moves forward");
        self.expire(timestamp);
        let results = match batch {
            Batch::CreateAccounts(events) => self.run(events, timestamp, Reference::create_account),
            Batch::CreateTransfers(events) => {
                self.run(events, timestamp, Reference::create_transfer)
            }
        };
        self.last_timestamp = timestamp + results.len().saturating_sub(1) as u64;
        results
    }

    /// Runs the events, a lone event or a whole chain at a time.
    fn run<E: Event>(
        &mut self,
        events: &[E],
        timestamp: u64,
        execute: fn(&mut Reference, &E, u64) -> R,
    ) -> Vec<R> {
        let mut results = vec![R::Ok; events.len()];
        let mut start = 0;
        while start < events.len() {
            let mut end = start;
            while end < events.len() && events[end].linked() {
                end += 1;
            }
            let end = (end + 1).min(events.len());
            if !events[start].linked() {
                results[start] = self.event(events, start, timestamp, execute);
            } else {
                self.run_chain(events, start, end, timestamp, execute, &mut results);
            }
            start = end;
        }
        results
    }

    /// Event `index` of a batch stamped `timestamp`: the batch-level import checks, then
    /// `execute` at the event's own stamp.
    fn event<E: Event>(
        &mut self,
        events: &[E],
        index: usize,
        timestamp: u64,
        execute: fn(&mut Reference, &E, u64) -> R,
    ) -> R {
        match import_failure(&events[0], &events[index], timestamp) {
            Some(code) => code,
            None => execute(self, &events[index], timestamp + index as u64),
        }
    }

    /// Runs the chain `events[start..end]`: all of it, or nothing but its burned ids.
    fn run_chain<E: Event>(
        &mut self,
        events: &[E],
        start: usize,
        end: usize,
        timestamp: u64,
        execute: fn(&mut Reference, &E, u64) -> R,
        results: &mut [R],
    ) {
        let before = self.clone();
        let mut failed = false;
        for index in start..end {
            results[index] = if events[index].linked() && index == events.len() - 1 {
                failed = true;
                R::LinkedEventChainOpen
            } else if failed {
                R::LinkedEventFailed
            } else {
                let result = self.event(events, index, timestamp, execute);
                failed = result != R::Ok;
                result
            };
        }
        if failed {
            let burned = std::mem::take(&mut self.burned);
            *self = before;
            self.burned = burned;
            for result in &mut results[start..end] {
                if *result == R::Ok {
                    *result = R::LinkedEventFailed;
                }
            }
        }
    }

    /// The instants at which waiting pending transfers expire, with their ids.
    fn expiries(&self) -> impl Iterator<Item = (u64, u128)> + '_ {
        self.pending
            .iter()
            .filter(|(_, state)| **state == PendingState::Waiting)
            .map(|(id, _)| &self.transfers[id])
            .filter(|p| p.timeout > 0)
            .map(|p| (p.timestamp + u64::from(p.timeout) * NS_PER_S, p.id))
    }

    /// The earliest instant at which a waiting pending transfer expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries().map(|(instant, _)| instant).min()
    }

    /// Releases, in (instant, id) order, every waiting pending transfer whose timeout
    /// has run out by `now`.
    fn expire(&mut self, now: u64) {
        let mut due: Vec<(u64, u128)> = self
            .expiries()
            .filter(|(instant, _)| *instant <= now)
            .collect();
        due.sort_unstable();
        for (instant, id) in due {
            let p = self.transfers[&id];
            self.release(&p);
            self.record_history(&p, instant);
            self.pending.insert(id, PendingState::Expired);
        }
    }

    /// Takes pending transfer `p`'s reservation off its accounts, and reopens what it
    /// closed.
    fn release(&mut self, p: &Transfer) {
        let dr = self
            .accounts
            .get_mut(&p.debit_account_id)
            .expect("debit account");
        dr.debits_pending -= p.amount;
        if p.flags.contains(TF::CLOSING_DEBIT) {
            dr.flags = dr.flags.without(AF::CLOSED);
        }
        let cr = self
            .accounts
            .get_mut(&p.credit_account_id)
            .expect("credit account");
        cr.credits_pending -= p.amount;
        if p.flags.contains(TF::CLOSING_CREDIT) {
            cr.flags = cr.flags.without(AF::CLOSED);
        }
    }

    fn create_account(&mut self, a: &Account, timestamp: u64) -> R {
        if a.id == 0 {
            return R::IdMustNotBeZero;
        }
        if a.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        let limits = AF::DEBITS_MUST_NOT_EXCEED_CREDITS.with(AF::CREDITS_MUST_NOT_EXCEED_DEBITS);
        if a.flags.contains(limits) {
            return R::FlagsAreMutuallyExclusive;
        }
        if a.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if a.code == 0 {
            return R::CodeMustNotBeZero;
        }
        if let Some(e) = self.accounts.get(&a.id) {
            return first_difference([
                (
                    e.flags.without(AF::LINKED) != a.flags.without(AF::LINKED),
                    R::ExistsWithDifferentFlags,
                ),
                (e.ledger != a.ledger, R::ExistsWithDifferentLedger),
                (e.code != a.code, R::ExistsWithDifferentCode),
                (
                    e.user_data_128 != a.user_data_128,
                    R::ExistsWithDifferentUserData128,
                ),
                (
                    e.user_data_64 != a.user_data_64,
                    R::ExistsWithDifferentUserData64,
                ),
                (
                    e.user_data_32 != a.user_data_32,
                    R::ExistsWithDifferentUserData32,
                ),
            ]);
        }
        let imported = a.flags.contains(AF::IMPORTED);
        if imported
            && (self.accounts.values().any(|e| e.timestamp >= a.timestamp)
                || self.transfers.values().any(|t| t.timestamp == a.timestamp))
        {
            return R::ImportedEventTimestampMustNotRegress;
        }
        let stored = Account {
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
            timestamp: if imported { a.timestamp } else { timestamp },
            ..*a
        };
        self.accounts.insert(a.id, stored);
        R::Ok
    }

    fn create_transfer(&mut self, t: &Transfer, timestamp: u64) -> R {
        if t.id == 0 {
            return R::IdMustNotBeZero;
        }
        if t.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        let kinds = [
            TF::PENDING,
            TF::POST_PENDING_TRANSFER,
            TF::VOID_PENDING_TRANSFER,
            TF::REFUND,
        ];
        let second_phase = is_post(t) || is_void(t);
        if kinds.iter().filter(|kind| t.flags.contains(**kind)).count() > 1
            || (second_phase || is_refund(t)) && (t.flags.is_balancing() || t.flags.is_closing())
        {
            return R::FlagsAreMutuallyExclusive;
        }
        if let Some(stored) = self.transfers.get(&t.id) {
            return self.compare_with_stored(t, stored);
        }
        if self.burned.contains(&t.id) {
            return R::IdAlreadyFailed;
        }
        // An imported transfer is stored at its own timestamp.
        let at = match t.flags.contains(TF::IMPORTED) {
            true => t.timestamp,
            false => timestamp,
        };
        let result = if second_phase {
            self.post_or_void(t, at)
        } else if is_refund(t) {
            self.refund(t, at)
        } else {
            self.single_or_pending(t, at)
        };
        if TRANSIENT.contains(&result) {
            self.burned.insert(t.id);
        }
        result
    }

    /// Common step 3: the event against the transfer stored under its id.
    fn compare_with_stored(&self, t: &Transfer, s: &Transfer) -> R {
        let filled = is_post(t) || is_void(t) || is_refund(t);
        // Given as 0 on a post, void or refund: filled in by the engine, not compared.
        let differs = |given: u128, stored: u128| !(filled && given == 0) && given != stored;
        let amount_differs = if is_post(t) || is_void(t) {
            t.amount != 0 && t.amount != s.amount
        } else if t.flags.is_balancing() {
            t.amount < s.amount
        } else {
            t.amount != s.amount
        };
        // A post or void giving user data as 0 took the pending transfer's.
        // (`s` may be of another kind: then the flags differ first.)
        let pending = (is_post(t) || is_void(t))
            .then(|| self.transfers.get(&s.pending_id).copied())
            .flatten();
        let user_data = |given: u128, of: fn(&Transfer) -> u128| match pending {
            Some(p) if given == 0 => of(&p),
            _ => given,
        };
        let pending_id_code = if is_refund(t) {
            R::ExistsWithDifferentRefundOf
        } else {
            R::ExistsWithDifferentPendingId
        };
        first_difference([
            (
                t.flags.without(TF::LINKED) != s.flags.without(TF::LINKED),
                R::ExistsWithDifferentFlags,
            ),
            (
                differs(t.debit_account_id, s.debit_account_id),
                R::ExistsWithDifferentDebitAccountId,
            ),
            (
                differs(t.credit_account_id, s.credit_account_id),
                R::ExistsWithDifferentCreditAccountId,
            ),
            (amount_differs, R::ExistsWithDifferentAmount),
            (t.pending_id != s.pending_id, pending_id_code),
            (
                differs(t.ledger.into(), s.ledger.into()),
                R::ExistsWithDifferentLedger,
            ),
            (
                differs(t.code.into(), s.code.into()),
                R::ExistsWithDifferentCode,
            ),
            (t.timeout != s.timeout, R::ExistsWithDifferentTimeout),
            (
                user_data(t.user_data_128, |p| p.user_data_128) != s.user_data_128,
                R::ExistsWithDifferentUserData128,
            ),
            (
                user_data(t.user_data_64.into(), |p| p.user_data_64.into())
                    != u128::from(s.user_data_64),
                R::ExistsWithDifferentUserData64,
            ),
            (
                user_data(t.user_data_32.into(), |p| p.user_data_32.into())
                    != u128::from(s.user_data_32),
                R::ExistsWithDifferentUserData32,
            ),
        ])
    }

    /// Steps 5 to 14 of a single-phase or pending transfer, and its effect.
    fn single_or_pending(&mut self, t: &Transfer, timestamp: u64) -> R {
        let pending = t.flags.contains(TF::PENDING);
        let checks = [
            (t.debit_account_id == 0, R::DebitAccountIdMustNotBeZero),
            (
                t.debit_account_id == u128::MAX,
                R::DebitAccountIdMustNotBeIntMax,
            ),
            (t.credit_account_id == 0, R::CreditAccountIdMustNotBeZero),
            (
                t.credit_account_id == u128::MAX,
                R::CreditAccountIdMustNotBeIntMax,
            ),
            (
                t.debit_account_id == t.credit_account_id,
                R::AccountsMustBeDifferent,
            ),
            (t.pending_id != 0, R::PendingIdMustBeZero),
            (
                t.timeout != 0 && !pending,
                R::TimeoutReservedForPendingTransfer,
            ),
            (
                t.flags.is_closing() && !pending,
                R::ClosingTransferMustBePending,
            ),
            (t.ledger == 0, R::LedgerMustNotBeZero),
            (t.code == 0, R::CodeMustNotBeZero),
            (
                t.amount == 0 && !t.flags.is_closing(),
                R::AmountMustNotBeZero,
            ),
        ];
        if let Some(result) = first_failure(checks) {
            return result;
        }
        let Some(dr) = self.accounts.get(&t.debit_account_id).copied() else {
            return R::DebitAccountNotFound;
        };
        let Some(cr) = self.accounts.get(&t.credit_account_id).copied() else {
            return R::CreditAccountNotFound;
        };
        let checks = [
            (dr.ledger != cr.ledger, R::AccountsMustHaveTheSameLedger),
            (
                t.ledger != dr.ledger,
                R::TransferMustHaveTheSameLedgerAsAccounts,
            ),
        ];
        let closed = closed_failure(&dr, &cr);
        if let Some(result) = first_failure(checks)
            .or_else(|| self.imported_failure(t, Some((&dr, &cr))))
            .or(closed)
        {
            return result;
        }
        let amount = balancing_clamp(t, &dr, &cr);
        let timeout_overflows = pending
            && t.timeout != 0
            && timestamp
                .checked_add(u64::from(t.timeout) * NS_PER_S)
                .is_none_or(|expires| expires > i64::MAX as u64);
        if let Some(result) = overflow_failure(&dr, &cr, amount, pending)
            .or((timeout_overflows).then_some(R::OverflowsTimeout))
            .or_else(|| limit_failure(&dr, &cr, amount))
        {
            return result;
        }
        let stored = Transfer {
            amount,
            timestamp,
            ..*t
        };
        self.move_money(&stored, pending);
        self.record_history(&stored, timestamp);
        if pending {
            self.pending.insert(t.id, PendingState::Waiting);
            self.close(t.debit_account_id, t.flags.contains(TF::CLOSING_DEBIT));
            self.close(t.credit_account_id, t.flags.contains(TF::CLOSING_CREDIT));
        }
        self.transfers.insert(t.id, stored);
        R::Ok
    }

    /// Steps 5 to 11 of a post or a void, and its effect.
    fn post_or_void(&mut self, t: &Transfer, timestamp: u64) -> R {
        let checks = [
            (t.pending_id == 0, R::PendingIdMustNotBeZero),
            (t.pending_id == u128::MAX, R::PendingIdMustNotBeIntMax),
            (t.pending_id == t.id, R::PendingIdMustBeDifferent),
            (t.timeout != 0, R::TimeoutReservedForPendingTransfer),
        ];
        if let Some(result) = first_failure(checks) {
            return result;
        }
        let Some(p) = self.transfers.get(&t.pending_id).copied() else {
            return R::PendingTransferNotFound;
        };
        if !p.flags.contains(TF::PENDING) {
            return R::PendingTransferNotPending;
        }
        let post = is_post(t);
        let dr = self.accounts[&p.debit_account_id];
        let cr = self.accounts[&p.credit_account_id];
        let state = self.pending[&p.id];
        let checks = [
            (
                given_and_differs(t.debit_account_id, p.debit_account_id),
                R::PendingTransferHasDifferentDebitAccountId,
            ),
            (
                given_and_differs(t.credit_account_id, p.credit_account_id),
                R::PendingTransferHasDifferentCreditAccountId,
            ),
            (
                given_and_differs(t.ledger.into(), p.ledger.into()),
                R::PendingTransferHasDifferentLedger,
            ),
            (
                given_and_differs(t.code.into(), p.code.into()),
                R::PendingTransferHasDifferentCode,
            ),
            (post && t.amount > p.amount, R::ExceedsPendingTransferAmount),
            (
                !post && t.amount != 0 && t.amount != p.amount,
                R::PendingTransferHasDifferentAmount,
            ),
            (
                state == PendingState::Posted,
                R::PendingTransferAlreadyPosted,
            ),
            (
                state == PendingState::Voided,
                R::PendingTransferAlreadyVoided,
            ),
            (state == PendingState::Expired, R::PendingTransferExpired),
        ];
        let closed = closed_failure(&dr, &cr).filter(|_| post);
        if let Some(result) = first_failure(checks)
            .or_else(|| self.imported_failure(t, None))
            .or(closed)
        {
            return result;
        }
        let amount = if post && t.amount != 0 {
            t.amount
        } else {
            p.amount
        };
        let checks = [
            (
                post && overflows(dr.debits_posted, amount),
                R::OverflowsDebitsPosted,
            ),
            (
                post && overflows(cr.credits_posted, amount),
                R::OverflowsCreditsPosted,
            ),
        ];
        if let Some(result) = first_failure(checks) {
            return result;
        }
        self.release(&p);
        let stored = settlement(t, &p, amount, timestamp);
        if post {
            self.move_money(&stored, false);
        }
        self.record_history(&stored, timestamp);
        let settled = [PendingState::Voided, PendingState::Posted][usize::from(post)];
        self.pending.insert(p.id, settled);
        self.transfers.insert(t.id, stored);
        R::Ok
    }

    /// Steps 5 to 10 of a refund, and its effect.
    fn refund(&mut self, t: &Transfer, timestamp: u64) -> R {
        let refund_of = t.pending_id;
        let checks = [
            (refund_of == 0, R::RefundOfMustNotBeZero),
            (refund_of == u128::MAX, R::RefundOfMustNotBeIntMax),
            (t.timeout != 0, R::TimeoutReservedForPendingTransfer),
        ];
        if let Some(result) = first_failure(checks) {
            return result;
        }
        let Some(o) = self.transfers.get(&refund_of).copied() else {
            return R::OriginalTransferNotFound;
        };
        let refundable = !o.flags.contains(TF::PENDING)
            && !o.flags.contains(TF::VOID_PENDING_TRANSFER)
            && !o.flags.contains(TF::REFUND);
        // Money goes back: from O's credit account to its debit account.
        let dr = self.accounts[&o.credit_account_id];
        let cr = self.accounts[&o.debit_account_id];
        let refunded = self.refunded(o.id);
        let checks = [
            (!refundable, R::OriginalTransferNotRefundable),
            (
                given_and_differs(t.debit_account_id, dr.id),
                R::RefundHasDifferentDebitAccountId,
            ),
            (
                given_and_differs(t.credit_account_id, cr.id),
                R::RefundHasDifferentCreditAccountId,
            ),
            (
                given_and_differs(t.ledger.into(), o.ledger.into()),
                R::RefundHasDifferentLedger,
            ),
            (t.amount == 0, R::AmountMustNotBeZero),
            (
                refunded
                    .checked_add(t.amount)
                    .is_none_or(|total| total > o.amount),
                R::ExceedsRefundableAmount,
            ),
        ];
        let closed = closed_failure(&dr, &cr);
        if let Some(result) = first_failure(checks)
            .or_else(|| self.imported_failure(t, Some((&dr, &cr))))
            .or(closed)
            .or_else(|| overflow_failure(&dr, &cr, t.amount, false))
            .or_else(|| limit_failure(&dr, &cr, t.amount))
        {
            return result;
        }
        let stored = Transfer {
            debit_account_id: dr.id,
            credit_account_id: cr.id,
            ledger: o.ledger,
            code: if t.code == 0 { o.code } else { t.code },
            timestamp,
            ..*t
        };
        self.move_money(&stored, false);
        self.record_history(&stored, timestamp);
        self.refunded.insert(o.id, refunded + t.amount);
        self.transfers.insert(t.id, stored);
        R::Ok
    }

    /// The checks of an imported transfer's own timestamp: after every transfer's and
    /// equal to no account's, then (with its accounts: not for a post or void) after
    /// both accounts', then no timeout. `None` for a transfer that is not imported.
    fn imported_failure(&self, t: &Transfer, accounts: Option<(&Account, &Account)>) -> Option<R> {
        if !t.flags.contains(TF::IMPORTED) {
            return None;
        }
        let regresses = self.transfers.values().any(|e| e.timestamp >= t.timestamp)
            || self.accounts.values().any(|a| a.timestamp == t.timestamp);
        if regresses {
            return Some(R::ImportedEventTimestampMustNotRegress);
        }
        let (dr, cr) = accounts?;
        first_failure([
            (
                t.timestamp <= dr.timestamp,
                R::ImportedEventTimestampMustPostdateDebitAccount,
            ),
            (
                t.timestamp <= cr.timestamp,
                R::ImportedEventTimestampMustPostdateCreditAccount,
            ),
            (t.timeout != 0, R::ImportedEventTimeoutMustBeZero),
        ])
    }

    /// Adds `t.amount` to its accounts' pending or posted balances.
    fn move_money(&mut self, t: &Transfer, pending: bool) {
        let dr = self
            .accounts
            .get_mut(&t.debit_account_id)
            .expect("debit account");
        if pending {
            dr.debits_pending += t.amount;
        } else {
            dr.debits_posted += t.amount;
        }
        let cr = self
            .accounts
            .get_mut(&t.credit_account_id)
            .expect("credit account");
        if pending {
            cr.credits_pending += t.amount;
        } else {
            cr.credits_posted += t.amount;
        }
    }

    /// A change at `timestamp` for each of `t`'s accounts that keeps a history: what
    /// moved since its changes so far.
    fn record_history(&mut self, t: &Transfer, timestamp: u64) {
        for id in [t.debit_account_id, t.credit_account_id] {
            let account = &self.accounts[&id];
            if !account.flags.contains(AF::HISTORY) {
                continue;
            }
            let now = [
                account.debits_pending,
                account.debits_posted,
                account.credits_pending,
                account.credits_posted,
            ];
            let changes = self.history.entry(id).or_default();
            let mut recorded = [0u128; 4];
            for (_, delta, _) in changes.iter() {
                for (sum, delta) in recorded.iter_mut().zip(delta) {
                    *sum = sum.wrapping_add(*delta);
                }
            }
            let mut delta = [0u128; 4];
            for ((delta, now), recorded) in delta.iter_mut().zip(now).zip(recorded) {
                *delta = now.wrapping_sub(recorded);
            }
            changes.push((timestamp, delta, *t));
        }
    }

    /// Marks account `id` closed when `closing`.
    fn close(&mut self, id: u128, closing: bool) {
        if closing {
            let account = self.accounts.get_mut(&id).expect("account");
            account.flags = account.flags.with(AF::CLOSED);
        }
    }
}

/// The failures that might pass later as the state changes: they burn the id.
const TRANSIENT: [R; 8] = [
    R::DebitAccountNotFound,
    R::CreditAccountNotFound,
    R::PendingTransferNotFound,
    R::OriginalTransferNotFound,
    R::ExceedsCredits,
    R::ExceedsDebits,
    R::DebitAccountAlreadyClosed,
    R::CreditAccountAlreadyClosed,
];

fn is_post(t: &Transfer) -> bool {
    t.flags.contains(TF::POST_PENDING_TRANSFER)
}

fn is_void(t: &Transfer) -> bool {
    t.flags.contains(TF::VOID_PENDING_TRANSFER)
}

fn is_refund(t: &Transfer) -> bool {
    t.flags.contains(TF::REFUND)
}

/// A field the event gives (non-zero) that is not `expected`; 0 leaves it to the engine.
fn given_and_differs(given: u128, expected: u128) -> bool {
    given != 0 && given != expected
}

fn overflows(balance: u128, amount: u128) -> bool {
    balance.checked_add(amount).is_none()
}

fn overflows3(a: u128, b: u128, amount: u128) -> bool {
    a.checked_add(b)
        .and_then(|sum| sum.checked_add(amount))
        .is_none()
}

/// Whether transfer `t`, or a balance row of it stamped `timestamp`, passes the
/// filter: a direction it asks for (neither: nothing passes, as in TigerBeetle), its
/// time range (a bound of 0 is none), and each field given non-zero.
fn passes(filter: &AccountFilter, t: &Transfer, timestamp: u64) -> bool {
    let id = filter.account_id;
    let any_or = |wanted: u128, value: u128| wanted == 0 || wanted == value;
    ((filter.debits && t.debit_account_id == id) || (filter.credits && t.credit_account_id == id))
        && (filter.timestamp_min == 0 || timestamp >= filter.timestamp_min)
        && (filter.timestamp_max == 0 || timestamp <= filter.timestamp_max)
        && any_or(filter.user_data_128, t.user_data_128)
        && any_or(filter.user_data_64.into(), t.user_data_64.into())
        && any_or(filter.user_data_32.into(), t.user_data_32.into())
        && any_or(filter.ledger.into(), t.ledger.into())
        && any_or(filter.code.into(), t.code.into())
}

/// Records in time order, turned newest first when `reversed`, cut to the page.
fn page<T>(mut found: Vec<T>, filter: &AccountFilter) -> Vec<T> {
    if filter.reversed {
        found.reverse();
    }
    let limit = match filter.limit {
        0 => tally_types::ACCOUNT_FILTER_LIMIT_MAX,
        limit => limit.min(tally_types::ACCOUNT_FILTER_LIMIT_MAX),
    };
    found.truncate(limit as usize);
    found
}

/// What a post or void of `p` stores: its accounts, ledger and code, its user data
/// where `t` gives 0, the amount posted (or `p`'s, for a void).
fn settlement(t: &Transfer, p: &Transfer, amount: u128, timestamp: u64) -> Transfer {
    let taken = |given: u128, pending: u128| if given == 0 { pending } else { given };
    Transfer {
        debit_account_id: p.debit_account_id,
        credit_account_id: p.credit_account_id,
        amount,
        ledger: p.ledger,
        code: p.code,
        user_data_128: taken(t.user_data_128, p.user_data_128),
        user_data_64: taken(t.user_data_64.into(), p.user_data_64.into()) as u64,
        user_data_32: taken(t.user_data_32.into(), p.user_data_32.into()) as u32,
        timestamp,
        ..*t
    }
}

/// The closed checks: a closed debit account, then a closed credit account.
fn closed_failure(dr: &Account, cr: &Account) -> Option<R> {
    first_failure([
        (dr.flags.contains(AF::CLOSED), R::DebitAccountAlreadyClosed),
        (cr.flags.contains(AF::CLOSED), R::CreditAccountAlreadyClosed),
    ])
}

/// The amount a transfer moves: at most its own, and for a balancing one no more than
/// keeps the debit account's debits within its posted credits (`balancing_debit`)
/// and the credit account's credits within its posted debits (`balancing_credit`).
fn balancing_clamp(t: &Transfer, dr: &Account, cr: &Account) -> u128 {
    let mut amount = t.amount;
    if t.flags.contains(TF::BALANCING_DEBIT) {
        let debits = dr.debits_pending + dr.debits_posted;
        amount = amount.min(dr.credits_posted.saturating_sub(debits));
    }
    if t.flags.contains(TF::BALANCING_CREDIT) {
        let credits = cr.credits_pending + cr.credits_posted;
        amount = amount.min(cr.debits_posted.saturating_sub(credits));
    }
    amount
}

/// Step 12 but the timeout: the balances `amount` would overflow, the pending ones
/// only for a pending transfer.
fn overflow_failure(dr: &Account, cr: &Account, amount: u128, pending: bool) -> Option<R> {
    first_failure([
        (
            pending && overflows(dr.debits_pending, amount),
            R::OverflowsDebitsPending,
        ),
        (
            pending && overflows(cr.credits_pending, amount),
            R::OverflowsCreditsPending,
        ),
        (
            overflows(dr.debits_posted, amount),
            R::OverflowsDebitsPosted,
        ),
        (
            overflows(cr.credits_posted, amount),
            R::OverflowsCreditsPosted,
        ),
        (
            overflows3(dr.debits_pending, dr.debits_posted, amount),
            R::OverflowsDebits,
        ),
        (
            overflows3(cr.credits_pending, cr.credits_posted, amount),
            R::OverflowsCredits,
        ),
    ])
}

/// Steps 13 and 14: the accounts' balance limits.
fn limit_failure(dr: &Account, cr: &Account, amount: u128) -> Option<R> {
    let debits = dr.debits_pending + dr.debits_posted + amount;
    let credits = cr.credits_pending + cr.credits_posted + amount;
    first_failure([
        (
            dr.flags.contains(AF::DEBITS_MUST_NOT_EXCEED_CREDITS) && debits > dr.credits_posted,
            R::ExceedsCredits,
        ),
        (
            cr.flags.contains(AF::CREDITS_MUST_NOT_EXCEED_DEBITS) && credits > cr.debits_posted,
            R::ExceedsDebits,
        ),
    ])
}

/// The code of the first check that fails, in order.
fn first_failure<const N: usize>(checks: [(bool, R); N]) -> Option<R> {
    checks
        .into_iter()
        .find(|(failed, _)| *failed)
        .map(|(_, code)| code)
}

/// An existing record's answer: the first field that differs, else `exists`.
fn first_difference<const N: usize>(differences: [(bool, R); N]) -> R {
    first_failure(differences).unwrap_or(R::Exists)
}
