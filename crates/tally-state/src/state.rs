//! The state and its storage primitives: every mutation goes through a method here that
//! also records how to undo it, so a failed linked chain can be rolled back exactly.

use std::collections::{BTreeSet, HashMap, HashSet};

/// Hash maps keyed by client-chosen ids. foldhash is several times cheaper than std's
/// SipHash on a u128 key and is seeded per map at random, which keeps hash flooding by
/// chosen ids impractical.
type IdHasher = foldhash::fast::RandomState;
use std::fmt;
use tally_types::{
    Account, AccountFilter, PendingStatus, StateImage, Transfer, TransferFlags, TransferKind,
};

/// One mutation, remembered so that a failing chain can undo it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Undo {
    AccountCreated,
    TransferCreated {
        debit_index: u32,
        credit_index: u32,
    },
    Balances {
        account_index: u32,
        before: Balances,
    },
    PendingStatus {
        id: u128,
        before: Option<PendingStatus>,
    },
    ExpiryInserted {
        key: (u64, u128),
    },
    ExpiryRemoved {
        key: (u64, u128),
    },
    Refunded {
        id: u128,
        before: Option<u128>,
    },
}

/// The four balances of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Balances {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

impl Balances {
    pub(crate) fn of(account: &Account) -> Self {
        Balances {
            debits_pending: account.debits_pending,
            debits_posted: account.debits_posted,
            credits_pending: account.credits_pending,
            credits_posted: account.credits_posted,
        }
    }

    pub(crate) fn store(self, account: &mut Account) {
        account.debits_pending = self.debits_pending;
        account.debits_posted = self.debits_posted;
        account.credits_pending = self.credits_pending;
        account.credits_posted = self.credits_posted;
    }
}

/// The reference ledger: accounts, transfers and the side tables the rules need.
#[derive(Debug, Default, Clone)]
pub struct StateMachine {
    /// Accounts in creation order; `account_index` maps an id to its position.
    pub(crate) accounts: Vec<Account>,
    pub(crate) account_index: HashMap<u128, u32, IdHasher>,
    /// Transfers in timestamp order; `transfer_index` maps an id to its position.
    pub(crate) transfers: Vec<Transfer>,
    pub(crate) transfer_index: HashMap<u128, u32, IdHasher>,
    /// Per account (same position as in `accounts`), positions in `transfers` of the
    /// transfers touching it, ascending. Indexed by position, not id: no hash lookup.
    pub(crate) account_history: Vec<Vec<u32>>,
    pub(crate) pending_status: HashMap<u128, PendingStatus, IdHasher>,
    /// Pending transfers with a timeout, by (expiry instant in ns, id).
    pub(crate) expiries: BTreeSet<(u64, u128)>,
    /// Total refunded so far, by original transfer id.
    pub(crate) refunded: HashMap<u128, u128, IdHasher>,
    /// Ids burned by a transient failure. Never rolled back.
    pub(crate) failed_ids: HashSet<u128, IdHasher>,
    pub(crate) last_timestamp: u64,
    pub(crate) undo_log: Vec<Undo>,
}

/// Why a [`StateImage`] cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError(pub String);

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid state image: {}", self.0)
    }
}

impl std::error::Error for ImageError {}

impl StateMachine {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty ledger with room for `accounts` accounts and `transfers` transfers
    /// reserved up front, so that growing to that size never pauses to rehash an index
    /// or copy the transfer store (seconds at tens of millions of entries). Reserved,
    /// untouched memory is not resident.
    pub fn with_capacity(accounts: usize, transfers: usize) -> Self {
        let mut machine = Self::default();
        machine.accounts.reserve(accounts);
        machine.account_history.reserve(accounts);
        machine.account_index.reserve(accounts);
        machine.transfers.reserve(transfers);
        machine.transfer_index.reserve(transfers);
        machine
    }

    /// Timestamp of the last event applied; 0 for an empty ledger.
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }

    pub fn lookup_account(&self, id: u128) -> Option<&Account> {
        let index = *self.account_index.get(&id)?;
        Some(&self.accounts[index as usize])
    }

    pub fn lookup_transfer(&self, id: u128) -> Option<&Transfer> {
        let index = *self.transfer_index.get(&id)?;
        Some(&self.transfers[index as usize])
    }

    /// `lookup_accounts`: the accounts that exist, in request order, unknown ids skipped.
    pub fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        ids.iter()
            .filter_map(|id| self.lookup_account(*id))
            .copied()
            .collect()
    }

    /// `lookup_transfers`: the transfers that exist, in request order, unknown ids skipped.
    pub fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        ids.iter()
            .filter_map(|id| self.lookup_transfer(*id))
            .copied()
            .collect()
    }

    /// Where a pending transfer stands; `None` for ids that are not pending transfers.
    pub fn pending_status(&self, id: u128) -> Option<PendingStatus> {
        self.pending_status.get(&id).copied()
    }

    /// Total refunded so far of transfer `id`.
    pub fn refunded_amount(&self, id: u128) -> u128 {
        self.refunded.get(&id).copied().unwrap_or(0)
    }

    /// True when `id` was burned by a transient failure.
    pub fn id_failed(&self, id: u128) -> bool {
        self.failed_ids.contains(&id)
    }

    /// Every account, in creation order.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// Every stored transfer, in timestamp order.
    pub fn transfers(&self) -> &[Transfer] {
        &self.transfers
    }

    /// `get_account_transfers`: the account's transfers in timestamp order (or newest
    /// first when `reversed`), filtered by direction and time range, at most the limit.
    pub fn account_transfers(&self, filter: &AccountFilter) -> Vec<Transfer> {
        let Some(account_index) = self.account_position(filter.account_id) else {
            return Vec::new();
        };
        let positions = &self.account_history[account_index as usize];
        let limit = filter.limit_effective();
        let matching = positions
            .iter()
            .map(|position| &self.transfers[*position as usize])
            .filter(|transfer| filter.matches(transfer));
        if filter.reversed {
            let mut newest_first: Vec<Transfer> = matching.copied().collect();
            newest_first.reverse();
            newest_first.truncate(limit);
            newest_first
        } else {
            matching.take(limit).copied().collect()
        }
    }

    // ---- mutations, each recording its undo ----

    pub(crate) fn insert_account(&mut self, account: Account) {
        let index = u32::try_from(self.accounts.len()).expect("fewer than 2^32 accounts");
        let previous = self.account_index.insert(account.id, index);
        assert!(previous.is_none(), "account id inserted twice");
        self.accounts.push(account);
        self.account_history.push(Vec::new());
        self.undo_log.push(Undo::AccountCreated);
    }

    /// Stores a transfer; `debit_index` and `credit_index` are its accounts' positions.
    pub(crate) fn insert_transfer(
        &mut self,
        transfer: Transfer,
        debit_index: u32,
        credit_index: u32,
    ) {
        debug_assert_eq!(
            self.accounts[debit_index as usize].id,
            transfer.debit_account_id
        );
        debug_assert_eq!(
            self.accounts[credit_index as usize].id,
            transfer.credit_account_id
        );
        assert!(
            self.transfers
                .last()
                .is_none_or(|last| last.timestamp < transfer.timestamp),
            "transfers are stored in timestamp order"
        );
        let index = u32::try_from(self.transfers.len()).expect("fewer than 2^32 transfers");
        let previous = self.transfer_index.insert(transfer.id, index);
        assert!(previous.is_none(), "transfer id inserted twice");
        self.transfers.push(transfer);
        for account_index in [debit_index, credit_index] {
            self.account_history[account_index as usize].push(index);
        }
        self.undo_log.push(Undo::TransferCreated {
            debit_index,
            credit_index,
        });
    }

    pub(crate) fn account_position(&self, id: u128) -> Option<u32> {
        self.account_index.get(&id).copied()
    }

    pub(crate) fn set_balances(&mut self, account_index: u32, balances: Balances) {
        let account = &mut self.accounts[account_index as usize];
        self.undo_log.push(Undo::Balances {
            account_index,
            before: Balances::of(account),
        });
        balances.store(account);
    }

    pub(crate) fn set_pending_status(&mut self, id: u128, status: PendingStatus) {
        let before = self.pending_status.insert(id, status);
        self.undo_log.push(Undo::PendingStatus { id, before });
    }

    pub(crate) fn insert_expiry(&mut self, key: (u64, u128)) {
        let inserted = self.expiries.insert(key);
        assert!(inserted, "expiry inserted twice");
        self.undo_log.push(Undo::ExpiryInserted { key });
    }

    pub(crate) fn remove_expiry(&mut self, key: (u64, u128)) {
        if self.expiries.remove(&key) {
            self.undo_log.push(Undo::ExpiryRemoved { key });
        }
    }

    pub(crate) fn set_refunded(&mut self, id: u128, total: u128) {
        let before = self.refunded.insert(id, total);
        self.undo_log.push(Undo::Refunded { id, before });
    }

    /// Undoes every mutation recorded after `mark`, newest first.
    pub(crate) fn rollback_to(&mut self, mark: usize) {
        while self.undo_log.len() > mark {
            let Some(undo) = self.undo_log.pop() else {
                break;
            };
            match undo {
                Undo::AccountCreated => {
                    let account = self.accounts.pop().expect("undo of a created account");
                    self.account_index.remove(&account.id);
                    let history = self.account_history.pop();
                    assert_eq!(history, Some(Vec::new()), "a new account has no history");
                }
                Undo::TransferCreated {
                    debit_index,
                    credit_index,
                } => {
                    let transfer = self.transfers.pop().expect("undo of a created transfer");
                    self.transfer_index.remove(&transfer.id);
                    for account_index in [debit_index, credit_index] {
                        let popped = self.account_history[account_index as usize].pop();
                        assert_eq!(popped, Some(self.transfers.len() as u32));
                    }
                }
                Undo::Balances {
                    account_index,
                    before,
                } => {
                    before.store(&mut self.accounts[account_index as usize]);
                }
                Undo::PendingStatus { id, before } => match before {
                    Some(status) => {
                        self.pending_status.insert(id, status);
                    }
                    None => {
                        self.pending_status.remove(&id);
                    }
                },
                Undo::ExpiryInserted { key } => {
                    self.expiries.remove(&key);
                }
                Undo::ExpiryRemoved { key } => {
                    self.expiries.insert(key);
                }
                Undo::Refunded { id, before } => match before {
                    Some(total) => {
                        self.refunded.insert(id, total);
                    }
                    None => {
                        self.refunded.remove(&id);
                    }
                },
            }
        }
    }

    // ---- whole-state images, for snapshots ----

    /// A full copy of the state as plain data (what a snapshot stores).
    pub fn image(&self) -> StateImage {
        let mut pending_statuses: Vec<(u128, PendingStatus)> = self
            .pending_status
            .iter()
            .map(|(id, status)| (*id, *status))
            .collect();
        pending_statuses.sort_unstable_by_key(|(id, _)| *id);
        let mut refunded: Vec<(u128, u128)> = self
            .refunded
            .iter()
            .map(|(id, total)| (*id, *total))
            .collect();
        refunded.sort_unstable_by_key(|(id, _)| *id);
        let mut failed_ids: Vec<u128> = self.failed_ids.iter().copied().collect();
        failed_ids.sort_unstable();
        StateImage {
            last_timestamp: self.last_timestamp,
            accounts: self.accounts.clone(),
            transfers: self.transfers.clone(),
            pending_statuses,
            refunded,
            failed_ids,
        }
    }

    /// Rebuilds the state from an image, checking that it is self-consistent.
    pub fn from_image(image: StateImage) -> Result<Self, ImageError> {
        let mut machine = StateMachine {
            last_timestamp: image.last_timestamp,
            ..Self::default()
        };
        for account in image.accounts {
            if machine.account_index.contains_key(&account.id) {
                return Err(ImageError(format!("account {} appears twice", account.id)));
            }
            if account.timestamp > image.last_timestamp {
                return Err(ImageError(format!(
                    "account {} is from the future",
                    account.id
                )));
            }
            machine.insert_account(account);
        }
        for transfer in image.transfers {
            if machine.transfer_index.contains_key(&transfer.id) {
                return Err(ImageError(format!(
                    "transfer {} appears twice",
                    transfer.id
                )));
            }
            if machine
                .transfers
                .last()
                .is_some_and(|last| last.timestamp >= transfer.timestamp)
                || transfer.timestamp > image.last_timestamp
            {
                return Err(ImageError(format!(
                    "transfer {} is out of order",
                    transfer.id
                )));
            }
            let (Some(debit_index), Some(credit_index)) = (
                machine.account_position(transfer.debit_account_id),
                machine.account_position(transfer.credit_account_id),
            ) else {
                return Err(ImageError(format!(
                    "transfer {} names an unknown account",
                    transfer.id
                )));
            };
            machine.insert_transfer(transfer, debit_index, credit_index);
        }
        for (id, status) in image.pending_statuses {
            let pending = machine
                .lookup_transfer(id)
                .filter(|transfer| transfer.flags.contains(TransferFlags::PENDING))
                .copied()
                .ok_or_else(|| ImageError(format!("status for {id}, not a pending transfer")))?;
            machine.pending_status.insert(id, status);
            if status == PendingStatus::Pending && pending.timeout > 0 {
                machine.expiries.insert((expires_at(&pending), id));
            }
        }
        let pending_count = machine
            .transfers
            .iter()
            .filter(|t| t.kind() == Some(TransferKind::Pending))
            .count();
        if pending_count != machine.pending_status.len() {
            return Err(ImageError("a pending transfer has no status".to_string()));
        }
        for (id, total) in image.refunded {
            if machine.lookup_transfer(id).is_none() {
                return Err(ImageError(format!(
                    "refund total for unknown transfer {id}"
                )));
            }
            machine.refunded.insert(id, total);
        }
        machine.failed_ids = image.failed_ids.into_iter().collect();
        machine.undo_log.clear();
        Ok(machine)
    }
}

/// Instant (ns) at which a pending transfer with a timeout expires. Creation checked
/// that this does not overflow (`overflows_timeout`).
pub(crate) fn expires_at(pending: &Transfer) -> u64 {
    debug_assert!(pending.timeout > 0);
    pending
        .timestamp
        .saturating_add(u64::from(pending.timeout) * tally_types::NS_PER_S)
}
