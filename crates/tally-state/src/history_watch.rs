//! The changes a snapshot's transfers make to accounts with `history`, kept as the
//! transfers load, so that deriving those accounts' balance rows afterwards decodes
//! no transfer a second time (a hot merchant can be in a sixth of a ledger's
//! transfers: walking its history and decoding each record again was a fifth of a
//! restart from a snapshot).

use crate::apply::Slot;
use crate::part::TransferRef;
use std::collections::HashMap;
use tally_types::{Account, AccountFlags, Transfer, TransferFlags, TransferKind};

/// What deriving a balance row needs of a transfer, from one account's side: 32
/// bytes (a hot account can be in millions of transfers). A pending transfer's id and
/// timeout, needed only if it expired, are read from the store then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub timestamp: u64,
    /// The amount's low and high halves: 8-byte alignment keeps a change at 32 bytes.
    amount: [u64; 2],
    pub transfer_ref: TransferRef,
    pub kind: Option<TransferKind>,
    /// Flagged `pending` (an expiry of it may follow).
    pub pending: bool,
    /// The account is the transfer's debit side.
    pub debit: bool,
}

impl Change {
    pub(crate) fn amount(&self) -> u128 {
        u128::from(self.amount[1]) << 64 | u128::from(self.amount[0])
    }
}

const _: () = assert!(std::mem::size_of::<Change>() == 32);

/// The accounts with `history` among those loaded, and the changes of each in load
/// (timestamp) order.
#[derive(Debug, Default)]
pub(crate) struct HistoryWatch {
    /// Per part, a bit per account position up to the last watched one (128 KiB at a
    /// million accounts), set for an account with `history`: the test each loaded
    /// transfer makes for both its accounts reads one bit, not the account.
    watched: Vec<Vec<u64>>,
    /// Where each watched account's entry is in `accounts`.
    entry_of: HashMap<Slot, usize>,
    /// Every watched account (with no changes, too: its balances must then be zero).
    accounts: Vec<(Slot, Vec<Change>)>,
}

impl HistoryWatch {
    /// Notes a loaded account: watched if it has `history`.
    pub(crate) fn account_loaded(&mut self, slot: Slot, account: &Account) {
        if !account.flags.contains(AccountFlags::HISTORY) {
            return;
        }
        if self.watched.len() <= slot.part {
            self.watched.resize_with(slot.part + 1, Vec::new);
        }
        let bits = &mut self.watched[slot.part];
        let word = slot.index as usize / 64;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        bits[word] |= 1 << (slot.index % 64);
        let previous = self.entry_of.insert(slot, self.accounts.len());
        assert!(previous.is_none(), "an account is loaded once");
        self.accounts.push((slot, Vec::new()));
    }

    /// Keeps the change `transfer` (stored as `transfer_ref`) makes to the account at
    /// `slot`, whose id is `account_id`, when that account is watched.
    #[inline]
    pub(crate) fn transfer_loaded(
        &mut self,
        slot: Slot,
        account_id: u128,
        transfer: &Transfer,
        transfer_ref: TransferRef,
    ) {
        let watched = self
            .watched
            .get(slot.part)
            .and_then(|bits| bits.get(slot.index as usize / 64))
            .is_some_and(|word| word & (1 << (slot.index % 64)) != 0);
        if watched {
            self.keep(slot, account_id, transfer, transfer_ref);
        }
    }

    fn keep(
        &mut self,
        slot: Slot,
        account_id: u128,
        transfer: &Transfer,
        transfer_ref: TransferRef,
    ) {
        let entry = self.entry_of[&slot];
        self.accounts[entry].1.push(Change {
            timestamp: transfer.timestamp,
            amount: [transfer.amount as u64, (transfer.amount >> 64) as u64],
            transfer_ref,
            kind: transfer.kind(),
            pending: transfer.flags.contains(TransferFlags::PENDING),
            // As the history's own walk decided it: by the id (an account on both
            // sides of one transfer counts as its debit side twice).
            debit: transfer.debit_account_id == account_id,
        });
    }

    /// Every watched account with its changes, in load order.
    pub(crate) fn into_accounts(self) -> Vec<(Slot, Vec<Change>)> {
        self.accounts
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn account(id: u128, history: bool) -> Account {
        Account {
            id,
            flags: if history {
                AccountFlags::HISTORY
            } else {
                AccountFlags::default()
            },
            ..Account::default()
        }
    }

    #[test]
    fn only_watched_accounts_keep_changes_from_either_side() {
        let mut watch = HistoryWatch::default();
        let watched = Slot { part: 1, index: 70 };
        let other = Slot { part: 1, index: 71 };
        watch.account_loaded(watched, &account(7, true));
        watch.account_loaded(other, &account(8, false));
        watch.account_loaded(Slot { part: 0, index: 0 }, &account(9, true));
        let transfer = Transfer {
            id: 1,
            debit_account_id: 8,
            credit_account_id: 7,
            amount: 7 << 64 | 5,
            timestamp: 10,
            ..Transfer::default()
        };
        watch.transfer_loaded(other, 8, &transfer, 3);
        watch.transfer_loaded(watched, 7, &transfer, 3);
        // A slot past any watched bit (a part or word never grown) is not watched.
        watch.transfer_loaded(
            Slot {
                part: 5,
                index: 1 << 20,
            },
            2,
            &transfer,
            3,
        );
        let accounts = watch.into_accounts();
        assert_eq!(
            accounts.len(),
            2,
            "both history accounts, one without changes"
        );
        assert_eq!(accounts[0].0, watched);
        assert_eq!(accounts[0].1.len(), 1);
        let change = accounts[0].1[0];
        assert!(!change.debit && change.amount() == 7 << 64 | 5 && change.transfer_ref == 3);
        assert_eq!(change.kind, Some(TransferKind::SinglePhase));
        assert!(accounts[1].1.is_empty());
    }
}
