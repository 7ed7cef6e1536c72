//! The two records of the ledger, the batch a client submits, and the history filter.

use crate::flags::{AccountFlags, TransferFlags};

/// An account: a balance in one ledger (currency), changed only by transfers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Account {
    /// Chosen by the client; unique among accounts; neither 0 nor `u128::MAX`.
    pub id: u128,
    /// Minor units reserved by pending transfers that debit this account.
    pub debits_pending: u128,
    /// Minor units debited by posted transfers.
    pub debits_posted: u128,
    /// Minor units reserved by pending transfers that credit this account.
    pub credits_pending: u128,
    /// Minor units credited by posted transfers.
    pub credits_posted: u128,
    /// Opaque to the ledger: for the client's own references.
    pub user_data_128: u128,
    /// Opaque to the ledger: for the client's own references.
    pub user_data_64: u64,
    /// Opaque to the ledger: for the client's own references.
    pub user_data_32: u32,
    /// The ledger (currency) the account holds; transfers stay within one ledger.
    pub ledger: u32,
    /// The client's account type (chart-of-accounts code); not 0.
    pub code: u16,
    /// Balance limits and history; see [`AccountFlags`].
    pub flags: AccountFlags,
    /// Nanoseconds; assigned by the engine at creation.
    pub timestamp: u64,
}

impl Account {
    /// Available balance of a no-overdraft wallet: what it may still spend.
    /// Saturates at zero for accounts without that flag whose debits exceed credits.
    pub fn available_credits(&self) -> u128 {
        self.credits_posted
            .saturating_sub(self.debits_posted)
            .saturating_sub(self.debits_pending)
    }
}

/// The kind of a transfer, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferKind {
    /// Moves money now.
    SinglePhase,
    /// Reserves money until posted, voided or expired.
    Pending,
    /// Posts (part of) a pending transfer.
    PostPending,
    /// Releases a pending transfer.
    VoidPending,
    /// Sends (part of) an earlier transfer's money back.
    Refund,
}

/// A transfer: moves `amount` minor units from `debit_account_id` to `credit_account_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Transfer {
    /// Chosen by the client; the idempotency key.
    pub id: u128,
    /// The account debited.
    pub debit_account_id: u128,
    /// The account credited.
    pub credit_account_id: u128,
    /// Minor units moved (or reserved, for a pending transfer).
    pub amount: u128,
    /// For post/void: the pending transfer acted on. For a refund this same field holds
    /// `refund_of`, the transfer refunded (see [`Transfer::refund_of`]).
    pub pending_id: u128,
    /// Opaque to the ledger: for the client's own references.
    pub user_data_128: u128,
    /// Opaque to the ledger: for the client's own references.
    pub user_data_64: u64,
    /// Opaque to the ledger: for the client's own references.
    pub user_data_32: u32,
    /// Seconds; only on pending transfers; 0 = never expires.
    pub timeout: u32,
    /// The ledger (currency); both accounts must hold it.
    pub ledger: u32,
    /// The client's reason for the transfer; not 0.
    pub code: u16,
    /// Kind, chain link and balancing options; see [`TransferFlags`].
    pub flags: TransferFlags,
    /// Nanoseconds; assigned by the engine when applied.
    pub timestamp: u64,
}

impl Transfer {
    /// The transfer refunded, for a refund (shares storage with `pending_id`).
    pub fn refund_of(&self) -> u128 {
        self.pending_id
    }

    /// The kind picked by the flags, or `None` when the flags are mutually exclusive:
    /// more than one kind flag, or a balancing or closing flag on a post, a void or a
    /// refund.
    pub fn kind(&self) -> Option<TransferKind> {
        let kind_flags = self.flags.bits() & TransferFlags::KIND_MASK.bits();
        if kind_flags.count_ones() > 1 {
            return None;
        }
        let second_phase_or_refund = TransferFlags::POST_PENDING_TRANSFER
            .with(TransferFlags::VOID_PENDING_TRANSFER)
            .with(TransferFlags::REFUND);
        let bound_or_closing = self.flags.is_balancing() || self.flags.is_closing();
        if bound_or_closing && kind_flags & second_phase_or_refund.bits() != 0 {
            return None;
        }
        Some(if self.flags.contains(TransferFlags::PENDING) {
            TransferKind::Pending
        } else if self.flags.contains(TransferFlags::POST_PENDING_TRANSFER) {
            TransferKind::PostPending
        } else if self.flags.contains(TransferFlags::VOID_PENDING_TRANSFER) {
            TransferKind::VoidPending
        } else if self.flags.contains(TransferFlags::REFUND) {
            TransferKind::Refund
        } else {
            TransferKind::SinglePhase
        })
    }
}

/// Which operation a batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    /// `create_accounts`.
    CreateAccounts,
    /// `create_transfers`.
    CreateTransfers,
}

/// One client submission: up to [`crate::BATCH_EVENTS_MAX`] events of one kind,
/// applied in order as one unit of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Accounts to create, in order.
    CreateAccounts(Vec<Account>),
    /// Transfers to apply, in order.
    CreateTransfers(Vec<Transfer>),
}

impl Batch {
    /// Which operation the batch carries.
    pub fn kind(&self) -> BatchKind {
        match self {
            Batch::CreateAccounts(_) => BatchKind::CreateAccounts,
            Batch::CreateTransfers(_) => BatchKind::CreateTransfers,
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        match self {
            Batch::CreateAccounts(events) => events.len(),
            Batch::CreateTransfers(events) => events.len(),
        }
    }

    /// True when the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the batch is imported: its first event carries the `imported` flag
    /// (docs/spec.md §2, imported events).
    pub fn is_imported(&self) -> bool {
        match self {
            Batch::CreateAccounts(events) => events
                .first()
                .is_some_and(|a| a.flags.contains(AccountFlags::IMPORTED)),
            Batch::CreateTransfers(events) => events
                .first()
                .is_some_and(|t| t.flags.contains(TransferFlags::IMPORTED)),
        }
    }
}

/// The four balances of an account at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountBalances {
    /// Reserved by pending debits.
    pub debits_pending: u128,
    /// Posted debits.
    pub debits_posted: u128,
    /// Reserved by pending credits.
    pub credits_pending: u128,
    /// Posted credits.
    pub credits_posted: u128,
}

impl AccountBalances {
    /// The balances `account` holds.
    pub fn of(account: &Account) -> AccountBalances {
        AccountBalances {
            debits_pending: account.debits_pending,
            debits_posted: account.debits_posted,
            credits_pending: account.credits_pending,
            credits_posted: account.credits_posted,
        }
    }
}

/// An account's balances right after a change (`get_account_balances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountBalance {
    /// The transfer's timestamp, or the instant an expiry released a reservation.
    pub timestamp: u64,
    /// The four balances right after it.
    pub balances: AccountBalances,
}

/// The balances of a transfer's two accounts right after it applied (docs/spec.md §2,
/// "Balances with results").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferBalances {
    /// The debit account's.
    pub debit_account: AccountBalances,
    /// The credit account's.
    pub credit_account: AccountBalances,
}

/// Most transfers one `get_account_transfers` call returns.
pub const ACCOUNT_FILTER_LIMIT_MAX: u32 = crate::BATCH_EVENTS_MAX as u32;

/// Filter of `get_account_transfers`: an account's history, in timestamp order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountFilter {
    /// The account whose transfers (debits and credits) are listed.
    pub account_id: u128,
    /// Inclusive lower bound on the transfer timestamp; 0 = unbounded.
    pub timestamp_min: u64,
    /// Inclusive upper bound on the transfer timestamp; 0 = unbounded.
    pub timestamp_max: u64,
    /// Most transfers to return; 0 means [`ACCOUNT_FILTER_LIMIT_MAX`], larger values
    /// are capped to it.
    pub limit: u32,
    /// Include transfers that debit the account.
    pub debits: bool,
    /// Include transfers that credit the account.
    pub credits: bool,
    /// Newest first.
    pub reversed: bool,
    /// Only transfers with this `user_data_128`; 0 = any.
    pub user_data_128: u128,
    /// Only transfers with this `user_data_64`; 0 = any.
    pub user_data_64: u64,
    /// Only transfers with this `user_data_32`; 0 = any.
    pub user_data_32: u32,
    /// Only transfers of this ledger; 0 = any. An account's transfers are all of its
    /// own ledger, so any other gives none.
    pub ledger: u32,
    /// Only transfers with this `code`; 0 = any.
    pub code: u16,
}

impl AccountFilter {
    /// Both directions, whole history, oldest first, the largest page.
    pub fn new(account_id: u128) -> Self {
        AccountFilter {
            account_id,
            timestamp_min: 0,
            timestamp_max: 0,
            limit: 0,
            debits: true,
            credits: true,
            reversed: false,
            user_data_128: 0,
            user_data_64: 0,
            user_data_32: 0,
            ledger: 0,
            code: 0,
        }
    }

    /// The page size this filter asks for, within bounds.
    pub fn limit_effective(&self) -> usize {
        if self.limit == 0 {
            ACCOUNT_FILTER_LIMIT_MAX as usize
        } else {
            self.limit.min(ACCOUNT_FILTER_LIMIT_MAX) as usize
        }
    }

    /// True when `transfer` (which touches this account) passes the filter's
    /// direction, time range, user data, ledger and code.
    pub fn matches(&self, transfer: &Transfer) -> bool {
        self.matches_at(transfer, transfer.timestamp)
    }

    /// [`AccountFilter::matches`] with the time range applied to `timestamp` (a balance
    /// row's: the instant an expiry of `transfer` released it).
    pub fn matches_at(&self, transfer: &Transfer, timestamp: u64) -> bool {
        let direction = (self.debits && transfer.debit_account_id == self.account_id)
            || (self.credits && transfer.credit_account_id == self.account_id);
        direction && self.in_time_range(timestamp) && self.fields_match(transfer)
    }

    /// True when `timestamp` is within the filter's inclusive range.
    pub fn in_time_range(&self, timestamp: u64) -> bool {
        timestamp >= self.timestamp_min
            && (self.timestamp_max == 0 || timestamp <= self.timestamp_max)
    }

    /// True when the transfer's user data, ledger and code match those the filter
    /// gives.
    fn fields_match(&self, transfer: &Transfer) -> bool {
        (self.user_data_128 == 0 || transfer.user_data_128 == self.user_data_128)
            && (self.user_data_64 == 0 || transfer.user_data_64 == self.user_data_64)
            && (self.user_data_32 == 0 || transfer.user_data_32 == self.user_data_32)
            && (self.ledger == 0 || transfer.ledger == self.ledger)
            && (self.code == 0 || transfer.code == self.code)
    }
}

/// Filter of `query_accounts` and `query_transfers` (TigerBeetle's `QueryFilter`): the
/// intersection of the fields given (0 = any), in timestamp order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryFilter {
    /// Only records with this `user_data_128`; 0 = any.
    pub user_data_128: u128,
    /// Only records with this `user_data_64`; 0 = any.
    pub user_data_64: u64,
    /// Only records with this `user_data_32`; 0 = any.
    pub user_data_32: u32,
    /// Only records of this ledger; 0 = any.
    pub ledger: u32,
    /// Only records with this code; 0 = any.
    pub code: u16,
    /// Inclusive lower bound on the timestamp; 0 = unbounded.
    pub timestamp_min: u64,
    /// Inclusive upper bound on the timestamp; 0 = unbounded.
    pub timestamp_max: u64,
    /// Most records to return; 0 means [`ACCOUNT_FILTER_LIMIT_MAX`], larger values are
    /// capped to it.
    pub limit: u32,
    /// Newest first.
    pub reversed: bool,
}

impl QueryFilter {
    /// The page size this filter asks for, within bounds.
    pub fn limit_effective(&self) -> usize {
        if self.limit == 0 {
            ACCOUNT_FILTER_LIMIT_MAX as usize
        } else {
            self.limit.min(ACCOUNT_FILTER_LIMIT_MAX) as usize
        }
    }

    /// True when `timestamp` is within the filter's inclusive range.
    pub fn in_time_range(&self, timestamp: u64) -> bool {
        timestamp >= self.timestamp_min
            && (self.timestamp_max == 0 || timestamp <= self.timestamp_max)
    }

    /// True when the fields given (and the time range) match these.
    pub fn matches_fields(
        &self,
        user_data: (u128, u64, u32),
        ledger: u32,
        code: u16,
        timestamp: u64,
    ) -> bool {
        (self.user_data_128 == 0 || user_data.0 == self.user_data_128)
            && (self.user_data_64 == 0 || user_data.1 == self.user_data_64)
            && (self.user_data_32 == 0 || user_data.2 == self.user_data_32)
            && (self.ledger == 0 || ledger == self.ledger)
            && (self.code == 0 || code == self.code)
            && self.in_time_range(timestamp)
    }

    /// True when `account` passes the filter.
    pub fn matches_account(&self, account: &Account) -> bool {
        self.matches_fields(
            (
                account.user_data_128,
                account.user_data_64,
                account.user_data_32,
            ),
            account.ledger,
            account.code,
            account.timestamp,
        )
    }

    /// True when `transfer` passes the filter.
    pub fn matches_transfer(&self, transfer: &Transfer) -> bool {
        self.matches_fields(
            (
                transfer.user_data_128,
                transfer.user_data_64,
                transfer.user_data_32,
            ),
            transfer.ledger,
            transfer.code,
            transfer.timestamp,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_follows_flags_and_rejects_two_kinds() {
        let mut t = Transfer::default();
        assert_eq!(t.kind(), Some(TransferKind::SinglePhase));
        t.flags = TransferFlags::LINKED.with(TransferFlags::REFUND);
        assert_eq!(t.kind(), Some(TransferKind::Refund));
        t.flags = TransferFlags::PENDING.with(TransferFlags::VOID_PENDING_TRANSFER);
        assert_eq!(t.kind(), None);
    }

    #[test]
    fn balancing_and_closing_go_with_single_phase_and_pending_only() {
        let mut t = Transfer::default();
        for balancing in [
            TransferFlags::BALANCING_DEBIT,
            TransferFlags::BALANCING_CREDIT,
            TransferFlags::BALANCING_MASK,
            TransferFlags::CLOSING_DEBIT,
            TransferFlags::CLOSING_MASK,
        ] {
            t.flags = balancing;
            assert_eq!(t.kind(), Some(TransferKind::SinglePhase));
            t.flags = balancing.with(TransferFlags::PENDING);
            assert_eq!(t.kind(), Some(TransferKind::Pending));
            for other in [
                TransferFlags::POST_PENDING_TRANSFER,
                TransferFlags::VOID_PENDING_TRANSFER,
                TransferFlags::REFUND,
            ] {
                t.flags = balancing.with(other);
                assert_eq!(t.kind(), None, "{:?}", t.flags);
            }
        }
    }

    #[test]
    fn filter_limit_is_bounded() {
        let mut f = AccountFilter::new(7);
        assert_eq!(f.limit_effective(), 8_190);
        f.limit = 10;
        assert_eq!(f.limit_effective(), 10);
        f.limit = u32::MAX;
        assert_eq!(f.limit_effective(), 8_190);
    }
}
