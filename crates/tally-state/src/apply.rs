//! Applying batches: expiry, linked chains, and every check of SPEC.md §2 in order.

use crate::state::{Balances, StateMachine, expires_at};
use tally_types::{
    Account, AccountFlags, BATCH_EVENTS_MAX, Batch, NS_PER_S, PendingStatus, ResultCode, Transfer,
    TransferFlags, TransferKind,
};

use ResultCode as R;

/// Something with a `linked` flag, so chains work the same for both batch kinds.
trait Event {
    fn linked(&self) -> bool;
}

impl Event for Account {
    fn linked(&self) -> bool {
        self.flags.contains(AccountFlags::LINKED)
    }
}

impl Event for Transfer {
    fn linked(&self) -> bool {
        self.flags.contains(TransferFlags::LINKED)
    }
}

impl StateMachine {
    /// Applies one batch stamped `timestamp`: first releases every pending transfer that
    /// has expired by then, then applies the events in order, event `i` stamped
    /// `timestamp + i`. Returns one result per event. Afterwards `last_timestamp` is the
    /// last event's stamp (`timestamp` itself for an empty batch).
    ///
    /// Panics if `timestamp` does not move time forward or the batch is larger than
    /// [`BATCH_EVENTS_MAX`]: the engine rejects those before they reach the log.
    pub fn apply(&mut self, timestamp: u64, batch: &Batch) -> Vec<ResultCode> {
        assert!(
            batch.len() <= BATCH_EVENTS_MAX,
            "batch larger than the maximum"
        );
        assert!(timestamp > self.last_timestamp, "time must move forward");
        let last = timestamp
            .checked_add(batch.len().saturating_sub(1) as u64)
            .expect("timestamps fit in u64");
        self.expire_pending(timestamp);
        let results = match batch {
            Batch::CreateAccounts(events) => {
                self.apply_chained(timestamp, events, Self::create_account)
            }
            Batch::CreateTransfers(events) => {
                self.apply_chained(timestamp, events, Self::create_transfer)
            }
        };
        // An empty batch still takes its stamp: every batch moves time forward.
        self.last_timestamp = last;
        debug_assert!(self.undo_log.is_empty());
        results
    }

    /// Releases every pending transfer whose expiry instant is at or before `now`.
    /// Returns how many expired. Called by [`StateMachine::apply`] before each batch.
    fn expire_pending(&mut self, now: u64) -> usize {
        let mut expired = 0;
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let pending = *self.lookup_transfer(id).expect("expiring transfer exists");
            assert_eq!(self.pending_status.get(&id), Some(&PendingStatus::Pending));
            self.release_pending(&pending, 0);
            self.pending_status.insert(id, PendingStatus::Expired);
            expired += 1;
        }
        self.undo_log.clear();
        expired
    }

    fn apply_chained<E: Event>(
        &mut self,
        timestamp: u64,
        events: &[E],
        execute: fn(&mut Self, &E, u64) -> ResultCode,
    ) -> Vec<ResultCode> {
        let mut results = Vec::with_capacity(events.len());
        let mut chain_start: Option<usize> = None;
        let mut chain_broken = false;
        for (index, event) in events.iter().enumerate() {
            if event.linked() && chain_start.is_none() {
                chain_start = Some(index);
                chain_broken = false;
                assert!(self.undo_log.is_empty());
            }
            let result = if event.linked() && index == events.len() - 1 {
                R::LinkedEventChainOpen
            } else if chain_broken {
                R::LinkedEventFailed
            } else {
                execute(self, event, timestamp + index as u64)
            };
            results.push(result);
            if let Some(start) = chain_start.filter(|_| result != R::Ok && !chain_broken) {
                chain_broken = true;
                self.rollback_to(0);
                for earlier in &mut results[start..index] {
                    *earlier = R::LinkedEventFailed;
                }
            }
            if !event.linked() || index == events.len() - 1 {
                chain_start = None;
                chain_broken = false;
                self.undo_log.clear();
            }
        }
        results
    }

    fn create_account(&mut self, a: &Account, timestamp: u64) -> ResultCode {
        if a.id == 0 {
            return R::IdMustNotBeZero;
        }
        if a.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        if a.flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && a.flags
                .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
        {
            return R::FlagsAreMutuallyExclusive;
        }
        if a.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if a.code == 0 {
            return R::CodeMustNotBeZero;
        }
        if let Some(existing) = self.lookup_account(a.id) {
            return account_exists_result(a, existing);
        }
        // The engine owns balances and timestamps; whatever the input carried is ignored.
        let account = Account {
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
            timestamp,
            ..*a
        };
        self.insert_account(account);
        R::Ok
    }

    fn create_transfer(&mut self, t: &Transfer, timestamp: u64) -> ResultCode {
        if t.id == 0 {
            return R::IdMustNotBeZero;
        }
        if t.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        let Some(kind) = t.kind() else {
            return R::FlagsAreMutuallyExclusive;
        };
        if let Some(existing) = self.lookup_transfer(t.id) {
            return transfer_exists_result(t, kind, existing);
        }
        if self.failed_ids.contains(&t.id) {
            return R::IdAlreadyFailed;
        }
        let result = match kind {
            TransferKind::SinglePhase | TransferKind::Pending => {
                self.create_single_or_pending(t, kind, timestamp)
            }
            TransferKind::PostPending | TransferKind::VoidPending => {
                self.post_or_void(t, kind, timestamp)
            }
            TransferKind::Refund => self.refund(t, timestamp),
        };
        if result.is_transient() {
            // Burned for good, even inside a chain that rolls back: a retry must always
            // get the first outcome's meaning.
            self.failed_ids.insert(t.id);
        }
        result
    }

    fn create_single_or_pending(
        &mut self,
        t: &Transfer,
        kind: TransferKind,
        timestamp: u64,
    ) -> ResultCode {
        if t.debit_account_id == 0 {
            return R::DebitAccountIdMustNotBeZero;
        }
        if t.debit_account_id == u128::MAX {
            return R::DebitAccountIdMustNotBeIntMax;
        }
        if t.credit_account_id == 0 {
            return R::CreditAccountIdMustNotBeZero;
        }
        if t.credit_account_id == u128::MAX {
            return R::CreditAccountIdMustNotBeIntMax;
        }
        if t.debit_account_id == t.credit_account_id {
            return R::AccountsMustBeDifferent;
        }
        if t.pending_id != 0 {
            return R::PendingIdMustBeZero;
        }
        let pending = kind == TransferKind::Pending;
        if t.timeout != 0 && !pending {
            return R::TimeoutReservedForPendingTransfer;
        }
        if t.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if t.code == 0 {
            return R::CodeMustNotBeZero;
        }
        if t.amount == 0 {
            return R::AmountMustNotBeZero;
        }
        let Some(dr_index) = self.account_position(t.debit_account_id) else {
            return R::DebitAccountNotFound;
        };
        let Some(cr_index) = self.account_position(t.credit_account_id) else {
            return R::CreditAccountNotFound;
        };
        let dr = self.accounts[dr_index as usize];
        let cr = self.accounts[cr_index as usize];
        if dr.ledger != cr.ledger {
            return R::AccountsMustHaveTheSameLedger;
        }
        if t.ledger != dr.ledger {
            return R::TransferMustHaveTheSameLedgerAsAccounts;
        }
        let (dr_after, cr_after) = match movement_checks(&dr, &cr, t.amount, pending) {
            Ok(after) => after,
            Err(code) => return code,
        };
        if pending
            && t.timeout != 0
            && timestamp
                .checked_add(u64::from(t.timeout) * NS_PER_S)
                .is_none()
        {
            return R::OverflowsTimeout;
        }
        if let Err(code) = limit_checks(&dr, &cr, t.amount) {
            return code;
        }
        self.set_balances(dr_index, dr_after);
        self.set_balances(cr_index, cr_after);
        let stored = Transfer { timestamp, ..*t };
        self.insert_transfer(stored, dr_index, cr_index);
        if pending {
            self.set_pending_status(t.id, PendingStatus::Pending);
            if t.timeout != 0 {
                self.insert_expiry((expires_at(&stored), t.id));
            }
        }
        R::Ok
    }

    fn post_or_void(&mut self, t: &Transfer, kind: TransferKind, timestamp: u64) -> ResultCode {
        let post = kind == TransferKind::PostPending;
        if t.pending_id == 0 {
            return R::PendingIdMustNotBeZero;
        }
        if t.pending_id == u128::MAX {
            return R::PendingIdMustNotBeIntMax;
        }
        if t.pending_id == t.id {
            return R::PendingIdMustBeDifferent;
        }
        if t.timeout != 0 {
            return R::TimeoutReservedForPendingTransfer;
        }
        let Some(p) = self.lookup_transfer(t.pending_id).copied() else {
            return R::PendingTransferNotFound;
        };
        if !p.flags.contains(TransferFlags::PENDING) {
            return R::PendingTransferNotPending;
        }
        if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
            return R::PendingTransferHasDifferentDebitAccountId;
        }
        if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
            return R::PendingTransferHasDifferentCreditAccountId;
        }
        if t.ledger != 0 && t.ledger != p.ledger {
            return R::PendingTransferHasDifferentLedger;
        }
        if t.code != 0 && t.code != p.code {
            return R::PendingTransferHasDifferentCode;
        }
        if post && t.amount > p.amount {
            return R::ExceedsPendingTransferAmount;
        }
        if !post && t.amount != 0 && t.amount != p.amount {
            return R::PendingTransferHasDifferentAmount;
        }
        match self.pending_status.get(&p.id) {
            Some(PendingStatus::Pending) => {}
            Some(PendingStatus::Posted) => return R::PendingTransferAlreadyPosted,
            Some(PendingStatus::Voided) => return R::PendingTransferAlreadyVoided,
            Some(PendingStatus::Expired) => return R::PendingTransferExpired,
            None => unreachable!("every pending transfer has a status"),
        }
        let amount_posted = if !post {
            0
        } else if t.amount == 0 {
            p.amount
        } else {
            t.amount
        };
        if post {
            let dr = self
                .lookup_account(p.debit_account_id)
                .expect("pending's debit account");
            if dr.debits_posted.checked_add(amount_posted).is_none() {
                return R::OverflowsDebitsPosted;
            }
            let cr = self
                .lookup_account(p.credit_account_id)
                .expect("pending's credit account");
            if cr.credits_posted.checked_add(amount_posted).is_none() {
                return R::OverflowsCreditsPosted;
            }
        }
        let (dr_index, cr_index) = self.release_pending(&p, amount_posted);
        self.set_pending_status(
            p.id,
            if post {
                PendingStatus::Posted
            } else {
                PendingStatus::Voided
            },
        );
        if p.timeout != 0 {
            self.remove_expiry((expires_at(&p), p.id));
        }
        self.insert_transfer(
            Transfer {
                debit_account_id: p.debit_account_id,
                credit_account_id: p.credit_account_id,
                ledger: p.ledger,
                code: p.code,
                amount: if post { amount_posted } else { p.amount },
                timestamp,
                ..*t
            },
            dr_index,
            cr_index,
        );
        R::Ok
    }

    /// Takes pending transfer `p`'s whole reservation out of the pending balances and
    /// posts `amount_posted` of it (0 for a void or an expiry). Returns the positions of
    /// its debit and credit accounts.
    fn release_pending(&mut self, p: &Transfer, amount_posted: u128) -> (u32, u32) {
        assert!(amount_posted <= p.amount);
        let dr_index = self
            .account_position(p.debit_account_id)
            .expect("debit account");
        let cr_index = self
            .account_position(p.credit_account_id)
            .expect("credit account");
        let mut dr = Balances::of(&self.accounts[dr_index as usize]);
        let mut cr = Balances::of(&self.accounts[cr_index as usize]);
        dr.debits_pending = dr.debits_pending.checked_sub(p.amount).expect("reserved");
        cr.credits_pending = cr.credits_pending.checked_sub(p.amount).expect("reserved");
        dr.debits_posted = dr
            .debits_posted
            .checked_add(amount_posted)
            .expect("checked");
        cr.credits_posted = cr
            .credits_posted
            .checked_add(amount_posted)
            .expect("checked");
        self.set_balances(dr_index, dr);
        self.set_balances(cr_index, cr);
        (dr_index, cr_index)
    }

    fn refund(&mut self, t: &Transfer, timestamp: u64) -> ResultCode {
        let refund_of = t.refund_of();
        if refund_of == 0 {
            return R::RefundOfMustNotBeZero;
        }
        if refund_of == u128::MAX {
            return R::RefundOfMustNotBeIntMax;
        }
        if t.timeout != 0 {
            return R::TimeoutReservedForPendingTransfer;
        }
        let Some(o) = self.lookup_transfer(refund_of).copied() else {
            return R::OriginalTransferNotFound;
        };
        let refundable = matches!(
            o.kind(),
            Some(TransferKind::SinglePhase) | Some(TransferKind::PostPending)
        );
        if !refundable {
            return R::OriginalTransferNotRefundable;
        }
        if t.debit_account_id != 0 && t.debit_account_id != o.credit_account_id {
            return R::RefundHasDifferentDebitAccountId;
        }
        if t.credit_account_id != 0 && t.credit_account_id != o.debit_account_id {
            return R::RefundHasDifferentCreditAccountId;
        }
        if t.ledger != 0 && t.ledger != o.ledger {
            return R::RefundHasDifferentLedger;
        }
        if t.amount == 0 {
            return R::AmountMustNotBeZero;
        }
        let refunded_total = match self.refunded_amount(o.id).checked_add(t.amount) {
            Some(total) if total <= o.amount => total,
            _ => return R::ExceedsRefundableAmount,
        };
        let dr_index = self
            .account_position(o.credit_account_id)
            .expect("original's credit");
        let cr_index = self
            .account_position(o.debit_account_id)
            .expect("original's debit");
        let dr = self.accounts[dr_index as usize];
        let cr = self.accounts[cr_index as usize];
        let (dr_after, cr_after) = match movement_checks(&dr, &cr, t.amount, false) {
            Ok(after) => after,
            Err(code) => return code,
        };
        if let Err(code) = limit_checks(&dr, &cr, t.amount) {
            return code;
        }
        self.set_balances(dr_index, dr_after);
        self.set_balances(cr_index, cr_after);
        self.set_refunded(o.id, refunded_total);
        self.insert_transfer(
            Transfer {
                debit_account_id: o.credit_account_id,
                credit_account_id: o.debit_account_id,
                ledger: o.ledger,
                code: if t.code == 0 { o.code } else { t.code },
                timestamp,
                ..*t
            },
            dr_index,
            cr_index,
        );
        R::Ok
    }
}

/// The overflow checks of a money movement, in SPEC order; on success, the balances
/// after the movement (pending or posted).
fn movement_checks(
    dr: &Account,
    cr: &Account,
    amount: u128,
    pending: bool,
) -> Result<(Balances, Balances), ResultCode> {
    let mut dr_after = Balances::of(dr);
    let mut cr_after = Balances::of(cr);
    if pending {
        dr_after.debits_pending = dr
            .debits_pending
            .checked_add(amount)
            .ok_or(R::OverflowsDebitsPending)?;
        cr_after.credits_pending = cr
            .credits_pending
            .checked_add(amount)
            .ok_or(R::OverflowsCreditsPending)?;
    } else {
        dr_after.debits_posted = dr
            .debits_posted
            .checked_add(amount)
            .ok_or(R::OverflowsDebitsPosted)?;
        cr_after.credits_posted = cr
            .credits_posted
            .checked_add(amount)
            .ok_or(R::OverflowsCreditsPosted)?;
    }
    dr_after
        .debits_pending
        .checked_add(dr_after.debits_posted)
        .ok_or(R::OverflowsDebits)?;
    cr_after
        .credits_pending
        .checked_add(cr_after.credits_posted)
        .ok_or(R::OverflowsCredits)?;
    Ok((dr_after, cr_after))
}

/// The balance-limit checks (`exceeds_credits`, `exceeds_debits`) on the balances
/// before the movement. Overflow was ruled out by [`movement_checks`].
fn limit_checks(dr: &Account, cr: &Account, amount: u128) -> Result<(), ResultCode> {
    if dr
        .flags
        .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
        && dr.debits_pending + dr.debits_posted + amount > dr.credits_posted
    {
        return Err(R::ExceedsCredits);
    }
    if cr
        .flags
        .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
        && cr.credits_pending + cr.credits_posted + amount > cr.debits_posted
    {
        return Err(R::ExceedsDebits);
    }
    Ok(())
}

fn account_exists_result(a: &Account, e: &Account) -> ResultCode {
    if a.flags.without(AccountFlags::LINKED) != e.flags.without(AccountFlags::LINKED) {
        R::ExistsWithDifferentFlags
    } else if a.ledger != e.ledger {
        R::ExistsWithDifferentLedger
    } else if a.code != e.code {
        R::ExistsWithDifferentCode
    } else if a.user_data_128 != e.user_data_128 {
        R::ExistsWithDifferentUserData128
    } else if a.user_data_64 != e.user_data_64 {
        R::ExistsWithDifferentUserData64
    } else if a.user_data_32 != e.user_data_32 {
        R::ExistsWithDifferentUserData32
    } else {
        R::Exists
    }
}

fn transfer_exists_result(t: &Transfer, kind: TransferKind, e: &Transfer) -> ResultCode {
    // Fields the engine fills in when given as 0 are not compared in that case.
    let fills_accounts_ledger_code = matches!(
        kind,
        TransferKind::PostPending | TransferKind::VoidPending | TransferKind::Refund
    );
    let fills_amount = matches!(kind, TransferKind::PostPending | TransferKind::VoidPending);
    let differs =
        |given: u128, stored: u128, filled: bool| !(filled && given == 0) && given != stored;
    if t.flags.without(TransferFlags::LINKED) != e.flags.without(TransferFlags::LINKED) {
        R::ExistsWithDifferentFlags
    } else if differs(
        t.debit_account_id,
        e.debit_account_id,
        fills_accounts_ledger_code,
    ) {
        R::ExistsWithDifferentDebitAccountId
    } else if differs(
        t.credit_account_id,
        e.credit_account_id,
        fills_accounts_ledger_code,
    ) {
        R::ExistsWithDifferentCreditAccountId
    } else if differs(t.amount, e.amount, fills_amount) {
        R::ExistsWithDifferentAmount
    } else if t.pending_id != e.pending_id {
        if kind == TransferKind::Refund {
            R::ExistsWithDifferentRefundOf
        } else {
            R::ExistsWithDifferentPendingId
        }
    } else if differs(t.ledger.into(), e.ledger.into(), fills_accounts_ledger_code) {
        R::ExistsWithDifferentLedger
    } else if differs(t.code.into(), e.code.into(), fills_accounts_ledger_code) {
        R::ExistsWithDifferentCode
    } else if t.timeout != e.timeout {
        R::ExistsWithDifferentTimeout
    } else if t.user_data_128 != e.user_data_128 {
        R::ExistsWithDifferentUserData128
    } else if t.user_data_64 != e.user_data_64 {
        R::ExistsWithDifferentUserData64
    } else if t.user_data_32 != e.user_data_32 {
        R::ExistsWithDifferentUserData32
    } else {
        R::Exists
    }
}
