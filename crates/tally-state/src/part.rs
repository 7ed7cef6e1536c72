//! One partition of the state and its storage primitives: every mutation goes through a
//! method here that also records how to undo it, so a failed linked chain can be rolled
//! back exactly. A [`crate::StateMachine`] is one or more parts; each id lives in the part
//! [`part_of`] names.

use crate::balance_history::{BalanceHistories, BalanceRow};
use crate::burned::BurnedIds;
use crate::cow_map::CowIdMap;
use crate::hints::prefetch;
use crate::history::Histories;
use crate::index::IdIndex;
use crate::layout::Layout;
use crate::ledger_code_index::LedgerCodeIndex;
use crate::load_values::ValuesBatch;
use crate::value_index::{UserDataIndexes, account_user_data, transfer_user_data};
use std::collections::BTreeSet;

/// Hash maps keyed by client-chosen ids. foldhash is several times cheaper than std's
/// SipHash on a u128 key and is seeded per map at random, which keeps hash flooding by
/// chosen ids impractical.
pub(crate) type IdHasher = foldhash::fast::RandomState;
use crate::store::{AccountStore, TransferStore};
use tally_types::{Account, AccountFlags, ChangeEvent, PendingStatus, Transfer};

/// One mutation, remembered so that a failing chain can undo it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Undo {
    AccountCreated,
    TransferStored,
    HistoryAppended {
        account_index: u32,
        transfer_ref: u32,
    },
    Balances {
        account_index: u32,
        before: Balances,
    },
    AccountFlags {
        account_index: u32,
        before: AccountFlags,
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
    ChangeRecorded,
    BalanceRowAppended {
        account_index: u32,
        timestamp: u64,
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

    /// As the API spells them.
    pub(crate) fn public(self) -> tally_types::AccountBalances {
        tally_types::AccountBalances {
            debits_pending: self.debits_pending,
            debits_posted: self.debits_posted,
            credits_pending: self.credits_pending,
            credits_posted: self.credits_posted,
        }
    }

    /// Field by field `self - before`, wrapping: added back to `before` with
    /// [`Balances::wrapping_add`] it gives `self`, in any order with other such
    /// differences of the same account.
    pub(crate) fn wrapping_sub(self, before: Balances) -> Balances {
        Balances {
            debits_pending: self.debits_pending.wrapping_sub(before.debits_pending),
            debits_posted: self.debits_posted.wrapping_sub(before.debits_posted),
            credits_pending: self.credits_pending.wrapping_sub(before.credits_pending),
            credits_posted: self.credits_posted.wrapping_sub(before.credits_posted),
        }
    }

    /// Field by field `self + delta`, wrapping.
    pub(crate) fn wrapping_add(self, delta: Balances) -> Balances {
        Balances {
            debits_pending: self.debits_pending.wrapping_add(delta.debits_pending),
            debits_posted: self.debits_posted.wrapping_add(delta.debits_posted),
            credits_pending: self.credits_pending.wrapping_add(delta.credits_pending),
            credits_posted: self.credits_posted.wrapping_add(delta.credits_posted),
        }
    }

    pub(crate) fn store(self, account: &mut Account) {
        account.debits_pending = self.debits_pending;
        account.debits_posted = self.debits_posted;
        account.credits_pending = self.credits_pending;
        account.credits_posted = self.credits_posted;
    }
}

/// One partition: the accounts and transfers whose ids [`Layout::part_of`] maps here, with the
/// side tables of those ids. Account history lists transfers of any part by reference
/// (`position × parts + part`).
#[derive(Debug, Clone)]
pub struct Part {
    /// This part's number, and the layout of the parts (for [`TransferRef`]s and
    /// routing by id).
    pub(crate) index: u32,
    pub(crate) layout: Layout,
    /// Accounts in creation order; `account_index` maps an id to its position.
    pub(crate) accounts: AccountStore,
    pub(crate) account_index: IdIndex,
    /// Transfers in timestamp order; `transfer_index` maps an id to its position.
    pub(crate) transfers: TransferStore,
    pub(crate) transfer_index: IdIndex,
    /// Per account (same position as in `accounts`), the transfers touching it, oldest
    /// first. By reference, not id: no hash lookup.
    pub(crate) account_history: Histories,
    /// Balances after each change, of the accounts with the `history` flag.
    pub(crate) balance_history: BalanceHistories,
    /// Accounts and transfers by user data, for queries.
    pub(crate) account_values: UserDataIndexes,
    pub(crate) transfer_values: UserDataIndexes,
    /// Accounts and transfers by ledger and by code, for queries on those alone.
    pub(crate) account_ledger_codes: LedgerCodeIndex,
    pub(crate) transfer_ledger_codes: LedgerCodeIndex,
    pub(crate) pending_status: CowIdMap<PendingStatus>,
    /// Pending transfers with a timeout, by (expiry instant in ns, id).
    pub(crate) expiries: BTreeSet<(u64, u128)>,
    /// Total refunded so far, by original transfer id.
    pub(crate) refunded: CowIdMap<u128>,
    /// Ids burned by a transient failure, in burn order; `transfer_index` maps each to
    /// its place here ([`Part::burn`]). Never rolled back.
    pub(crate) failed_ids: BurnedIds,
    /// Mutations since the current chain began, newest last; empty outside a chain.
    pub(crate) undo_log: Vec<Undo>,
    /// Whether mutations are recorded in `undo_log`: only while a linked chain runs
    /// ([`Part::begin_chain`]). Outside a chain every check comes before the first
    /// mutation, so nothing is ever undone and recording would be wasted work.
    pub(crate) recording: bool,
    /// Whether committed changes are captured into `changes` (change events).
    pub(crate) capturing: bool,
    /// Change events of the ids homed here (of every id, in the first part, for a
    /// group applied serially: `Parts::change_list`), in the order this part applied
    /// them, until the state hands them out ([`crate::StateMachine::take_changes`]).
    pub(crate) changes: Vec<ChangeEvent>,
    /// Accounts of this part as change events recorded in other parts must name them:
    /// deltas applied here after the event was decided elsewhere (`crate::decide`).
    pub(crate) change_fills: Vec<ChangeFill>,
}

/// A side of a change event recorded in another part, filled in where its account is:
/// the event's timestamp and transfer id, which side, and the account right after.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChangeFill {
    pub key: (u64, u128),
    pub credit: bool,
    pub account: Account,
}

/// A transfer index entry with this bit set names a burned id (its index in the part's
/// burned list), not a stored transfer's position.
const BURNED: u32 = 1 << 31;

/// What a part's transfer index holds for an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferEntry {
    /// A stored transfer, at this position of the part's store.
    Stored(u32),
    /// An id burned by a transient failure.
    Burned,
}

/// Index entries of transfers stored while loading a snapshot, not yet inserted
/// ([`Part::store_loaded_transfer`]): ids, and each user-data field's values.
#[derive(Debug, Clone, Default)]
pub(crate) struct GatheredEntries {
    ids: Vec<u64>,
}

impl GatheredEntries {
    /// Transfers gathered.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The id a transfer index entry names: a stored transfer's, or a burned id.
#[inline]
fn indexed_id(transfers: &TransferStore, burned: &BurnedIds, entry: u32) -> u128 {
    if entry & BURNED == 0 {
        transfers.id_at(entry as usize)
    } else {
        burned.id_at(entry & !BURNED)
    }
}

/// Where a stored transfer lives: `position * parts + part`, in one u32 so that history
/// costs 4 bytes per entry whatever the number of parts.
pub(crate) type TransferRef = u32;

impl Part {
    pub(crate) fn new(index: usize, layout: Layout) -> Part {
        assert!(index < layout.count(), "part {index} of {}", layout.count());
        Part {
            index: index as u32,
            layout,
            accounts: AccountStore::default(),
            account_index: IdIndex::default(),
            transfers: TransferStore::default(),
            transfer_index: IdIndex::default(),
            account_history: Histories::default(),
            balance_history: BalanceHistories::default(),
            account_values: UserDataIndexes::default(),
            transfer_values: UserDataIndexes::default(),
            account_ledger_codes: LedgerCodeIndex::default(),
            transfer_ledger_codes: LedgerCodeIndex::default(),
            pending_status: CowIdMap::default(),
            expiries: BTreeSet::new(),
            refunded: CowIdMap::default(),
            failed_ids: BurnedIds::default(),
            undo_log: Vec::new(),
            recording: false,
            capturing: false,
            changes: Vec::new(),
            change_fills: Vec::new(),
        }
    }

    /// This part's number.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub(crate) fn reserve(&mut self, accounts: usize, transfers: usize) {
        self.account_history.reserve_accounts(accounts);
        self.account_index.reserve(accounts);
        // The user-data indexes take this room when a record first sets their field.
        self.account_values.reserve_on_first_use(accounts);
        self.reserve_transfers(transfers);
    }

    /// Room for `transfers` more transfers, as [`Part::reserve`] makes it.
    pub(crate) fn reserve_transfers(&mut self, transfers: usize) {
        self.transfer_index.reserve(transfers);
        self.transfer_values.reserve_on_first_use(transfers);
    }

    /// The latest account's timestamp, if any (accounts are in timestamp order).
    pub(crate) fn last_account_timestamp(&self) -> Option<u64> {
        self.accounts.last().map(|account| account.timestamp)
    }

    /// The latest stored transfer's timestamp, if any.
    pub(crate) fn last_transfer_timestamp(&self) -> Option<u64> {
        (self.transfers.len() > 0).then(|| self.transfers.last_timestamp())
    }

    /// The position of the first account stamped at or after `timestamp`.
    pub(crate) fn first_account_at_or_after(&self, timestamp: u64) -> usize {
        first_at_or_after(self.accounts.len(), timestamp, |p| {
            self.accounts[p].timestamp
        })
    }

    /// The position of the first stored transfer stamped at or after `timestamp`.
    pub(crate) fn first_transfer_at_or_after(&self, timestamp: u64) -> usize {
        first_at_or_after(self.transfers.len(), timestamp, |p| {
            self.transfers.get(p).timestamp
        })
    }

    /// True when an account is stamped `timestamp`.
    pub(crate) fn account_stamped(&self, timestamp: u64) -> bool {
        let at = self.first_account_at_or_after(timestamp);
        at < self.accounts.len() && self.accounts[at].timestamp == timestamp
    }

    /// True when a stored transfer is stamped `timestamp`.
    pub(crate) fn transfer_stamped(&self, timestamp: u64) -> bool {
        let at = self.first_transfer_at_or_after(timestamp);
        at < self.transfers.len() && self.transfers.get(at).timestamp == timestamp
    }

    pub(crate) fn lookup_account(&self, id: u128) -> Option<&Account> {
        let index = self.account_position(id)?;
        Some(&self.accounts[index as usize])
    }

    /// A stored transfer, unpacked (the store keeps records packed).
    pub(crate) fn lookup_transfer(&self, id: u128) -> Option<Transfer> {
        let index = self.transfer_position(id)?;
        Some(self.transfers.get(index as usize))
    }

    /// Where transfer `id` is stored in this part, if it is (not if it is burned).
    pub(crate) fn transfer_position(&self, id: u128) -> Option<u32> {
        match self.transfer_entry(id)? {
            TransferEntry::Stored(position) => Some(position),
            TransferEntry::Burned => None,
        }
    }

    /// What the transfer index holds for `id`: a stored transfer, a burned id, or
    /// nothing. One probe answers both questions a new transfer's id raises.
    #[inline]
    pub(crate) fn transfer_entry(&self, id: u128) -> Option<TransferEntry> {
        let (transfers, burned) = (&self.transfers, &self.failed_ids);
        let entry = self
            .transfer_index
            .get(id, |p| indexed_id(transfers, burned, p))?;
        Some(if entry & BURNED == 0 {
            TransferEntry::Stored(entry)
        } else {
            TransferEntry::Burned
        })
    }

    /// Burns `id` for good (`id_already_failed` on any later use; never rolled back),
    /// unless the index already holds it (then false, nothing changed).
    pub(crate) fn burn(&mut self, id: u128) -> bool {
        if self.transfer_entry(id).is_some() {
            return false;
        }
        let index = self.failed_ids.push(id);
        // The index stores entries below u32::MAX.
        assert!(index < BURNED - 1, "fewer than 2^31 burned ids per part");
        let (transfers, burned) = (&self.transfers, &self.failed_ids);
        let inserted = self
            .transfer_index
            .insert(id, BURNED | index, |p| indexed_id(transfers, burned, p));
        assert!(inserted, "checked absent just above");
        true
    }

    /// Prefetch, slots step: the index slot that looking up transfer `id` reads first.
    #[inline]
    pub(crate) fn prefetch_transfer_slot(&self, id: u128) {
        self.transfer_index.prefetch_home(id);
    }

    /// Prefetch, slots step: the user-data, ledger and code index slots that storing
    /// `t` (whose id is homed here) will probe.
    #[inline]
    pub(crate) fn prefetch_value_slots(&self, t: &Transfer) {
        self.transfer_values.prefetch_homes(transfer_user_data(t));
        self.prefetch_ledger_code_slots(t);
    }

    /// Prefetch, slots step: the ledger and code index slots that storing `t` (whose id
    /// is homed here) will probe.
    #[inline]
    pub(crate) fn prefetch_ledger_code_slots(&self, t: &Transfer) {
        self.transfer_ledger_codes.prefetch_homes(t.ledger, t.code);
    }

    /// Prefetch, slots step: the index slot that looking up account `id` reads first.
    #[inline]
    pub(crate) fn prefetch_account_slot(&self, id: u128) {
        self.account_index.prefetch_home(id);
    }

    /// Prefetch, records step (once its index slot has arrived): where stored transfer
    /// `id`'s record starts.
    #[inline]
    pub(crate) fn prefetch_transfer_start(&self, id: u128) {
        if let Some(position) = self.transfer_index.candidate(id)
            && position & BURNED == 0
            && let Some(start) = self.transfers.start_address(position as usize)
        {
            prefetch(start);
        }
    }

    /// Prefetch, tails step (once its start has arrived): stored transfer `id`'s
    /// packed record (about 30–60 bytes).
    #[inline]
    pub(crate) fn prefetch_transfer_record(&self, id: u128) {
        if let Some(position) = self.transfer_index.candidate(id)
            && position & BURNED == 0
            && let Some(record) = self.transfers.record_address(position as usize)
        {
            prefetch(record);
            prefetch(record.wrapping_add(63));
        }
    }

    /// Prefetch, records step of loading (once its index slot has arrived): the first
    /// line of account `id`'s record, which holds the id a lookup checks.
    #[inline]
    pub(crate) fn prefetch_account_id(&self, id: u128) {
        if let Some(position) = self.account_index.candidate(id)
            && (position as usize) < self.accounts.len()
        {
            prefetch(&raw const self.accounts[position as usize].id);
        }
    }

    /// Prefetch, records step (once its index slot has arrived): account `id`'s record
    /// and the head of its history list.
    #[inline]
    pub(crate) fn prefetch_account(&self, id: u128) {
        let Some(position) = self.account_index.candidate(id) else {
            return;
        };
        let position = position as usize;
        if position < self.accounts.len() {
            // A record is 128 bytes on a 16-byte boundary: up to three cache lines.
            let record = std::ptr::from_ref(&self.accounts[position]).cast::<u8>();
            prefetch(record);
            prefetch(record.wrapping_add(64));
            prefetch(record.wrapping_add(127));
        }
        self.account_history.prefetch_head(position);
    }

    /// Prefetch, tails step (once the history list's head has arrived): where the next
    /// history entry of account `id` will be written.
    #[inline]
    pub(crate) fn prefetch_history_tail(&self, id: u128) {
        if let Some(position) = self.account_index.candidate(id) {
            self.account_history.prefetch_tail(position as usize);
        }
    }

    /// The part and position a [`TransferRef`] names.
    pub(crate) fn decode_ref(transfer_ref: TransferRef, count: usize) -> (usize, usize) {
        let transfer_ref = transfer_ref as usize;
        (transfer_ref % count, transfer_ref / count)
    }

    /// Starts recording mutations for a linked chain, which may have to roll back.
    pub(crate) fn begin_chain(&mut self) {
        assert!(
            !self.recording && self.undo_log.is_empty(),
            "a chain starts clean"
        );
        self.recording = true;
    }

    /// Ends a chain: what it did stands (or was rolled back), and recording stops.
    pub(crate) fn end_chain(&mut self) {
        self.undo_log.clear();
        self.recording = false;
    }

    #[inline]
    fn record(&mut self, undo: Undo) {
        if self.recording {
            self.undo_log.push(undo);
        }
    }

    // ---- mutations, each recording its undo inside a chain ----

    /// Captures `event` when change capture is on; a failing chain takes it back.
    #[inline]
    pub(crate) fn record_change(&mut self, event: impl FnOnce() -> ChangeEvent) {
        if self.capturing {
            self.changes.push(event());
            self.record(Undo::ChangeRecorded);
        }
    }

    pub(crate) fn insert_account(&mut self, account: Account) {
        let inserted = self.try_insert_account(account);
        assert!(inserted, "account id inserted twice");
    }

    /// Adds an account unless its id exists (then false, nothing changed): one index
    /// probe, for loading images.
    pub(crate) fn try_insert_account(&mut self, account: Account) -> bool {
        let index = u32::try_from(self.accounts.len()).expect("fewer than 2^32 accounts");
        self.accounts.push(account);
        let accounts = &self.accounts;
        if !self
            .account_index
            .insert(account.id, index, |p| accounts[p as usize].id)
        {
            self.accounts.pop();
            return false;
        }
        self.account_history.push_account();
        let accounts = &self.accounts;
        self.account_values
            .add(account_user_data(&account), index, |p| {
                account_user_data(&accounts[p as usize])
            });
        self.account_ledger_codes
            .add(account.ledger, account.code, index);
        self.record(Undo::AccountCreated);
        true
    }

    /// Stores a transfer whose id belongs to this part; returns its reference for the
    /// history of its accounts ([`Part::append_history`], in their parts).
    pub(crate) fn store_transfer(&mut self, transfer: Transfer) -> TransferRef {
        self.try_store_transfer(transfer)
            .expect("transfer id inserted twice")
    }

    /// [`Part::store_transfer`] unless the id exists (then `None`, nothing changed):
    /// one index probe, for loading images.
    pub(crate) fn try_store_transfer(&mut self, transfer: Transfer) -> Option<TransferRef> {
        let (position, transfer_ref) = self.push_transfer(&transfer);
        let (transfers, burned) = (&self.transfers, &self.failed_ids);
        if !self
            .transfer_index
            .insert(transfer.id, position, |p| indexed_id(transfers, burned, p))
        {
            self.transfers.pop();
            return None;
        }
        self.index_transfer_values(&transfer, position);
        self.record(Undo::TransferStored);
        Some(transfer_ref)
    }

    /// Stores a transfer read from a snapshot without indexing its id: the entry goes
    /// to `gathered`, for [`Part::index_loaded_ids`] to insert with many others in
    /// table order. Returns its reference.
    pub(crate) fn store_loaded_transfer(
        &mut self,
        transfer: &Transfer,
        gathered: &mut GatheredEntries,
    ) -> TransferRef {
        assert!(!self.recording, "a snapshot loads outside chains");
        let (position, _) = self.push_transfer(transfer);
        self.gather_loaded_transfer(transfer, position, gathered)
    }

    /// Whether a full run of a snapshot's transfers would be this part's next chunk
    /// as it is ([`Part::adopt_loaded_chunk`]).
    pub(crate) fn takes_loaded_chunk(&self) -> bool {
        self.transfers.at_chunk_start()
    }

    /// Gathers the id index entry of `transfer`, read from a snapshot, to be stored at
    /// `position` (by [`Part::adopt_loaded_chunk`] when not yet stored), and adds it to
    /// the ledger and code indexes; returns its reference. Its user data is indexed
    /// elsewhere ([`crate::load_values`]).
    pub(crate) fn gather_loaded_transfer(
        &mut self,
        transfer: &Transfer,
        position: u32,
        gathered: &mut GatheredEntries,
    ) -> TransferRef {
        gathered
            .ids
            .push(self.transfer_index.gather(transfer.id, position));
        self.transfer_ledger_codes
            .add(transfer.ledger, transfer.code, position);
        self.transfer_ref_at(position as usize)
    }

    /// Stores a full chunk of a snapshot's packed transfers as it is, each record
    /// starting at its byte in `starts`, the newest stamped `last_timestamp`; their
    /// index entries were gathered ([`Part::gather_loaded_transfer`]).
    pub(crate) fn adopt_loaded_chunk(
        &mut self,
        bytes: Vec<u8>,
        starts: Vec<u32>,
        last_timestamp: u64,
    ) {
        assert!(!self.recording, "a snapshot loads outside chains");
        // The newest record's reference must fit, as each pushed one's does.
        let _ = self.transfer_ref_at(self.transfers.len() + starts.len() - 1);
        self.transfers.adopt_chunk(bytes, starts, last_timestamp);
    }

    /// Indexes the ids of the transfers stored by [`Part::store_loaded_transfer`] since
    /// the last call, then empties `gathered`; `Err` with an id found twice. Their user
    /// data is indexed elsewhere ([`crate::load_values`]).
    pub(crate) fn index_loaded_ids(
        &mut self,
        gathered: &mut GatheredEntries,
        scratch: &mut Vec<u64>,
    ) -> Result<(), u128> {
        let (transfers, burned) = (&self.transfers, &self.failed_ids);
        self.transfer_index.insert_gathered(
            &gathered.ids,
            scratch,
            |p| indexed_id(transfers, burned, p),
            |_, twice| Err(transfers.id_at(twice as usize)),
        )?;
        gathered.ids.clear();
        Ok(())
    }

    /// The stored transfers from position `from` on whose user data is still to be
    /// indexed while loading: with `all`, every one; without, those in full chunks
    /// only, and only once there are `at_least` of them. `None` when there are none
    /// to hand over yet.
    pub(crate) fn values_batch(
        &self,
        part: usize,
        from: u32,
        all: bool,
        at_least: usize,
    ) -> Option<ValuesBatch> {
        let (transfers, to) = if all {
            (self.transfers.freeze(), self.transfers.len())
        } else {
            let to = self.transfers.full_len();
            if to < from as usize + at_least {
                return None;
            }
            (self.transfers.freeze_full_chunks(), to)
        };
        let to = u32::try_from(to).expect("fewer than 2^32 transfers per part");
        (to > from).then_some(ValuesBatch {
            part,
            transfers,
            from,
            to,
        })
    }

    /// Appends a transfer to the store; its position and reference.
    fn push_transfer(&mut self, transfer: &Transfer) -> (u32, TransferRef) {
        assert!(
            self.transfers.len() == 0 || self.transfers.last_timestamp() < transfer.timestamp,
            "transfers are stored in timestamp order"
        );
        let position = self.transfers.len();
        let transfer_ref = self.transfer_ref_at(position);
        self.transfers.push(transfer);
        (position as u32, transfer_ref)
    }

    /// The reference of the transfer stored (or to be stored) at `position`.
    fn transfer_ref_at(&self, position: usize) -> TransferRef {
        assert!(
            position < BURNED as usize,
            "fewer than 2^31 stored transfers per part"
        );
        position
            .checked_mul(self.layout.count())
            .and_then(|scaled| scaled.checked_add(self.index as usize))
            .and_then(|r| u32::try_from(r).ok())
            .expect("fewer than 2^32 transfers over all parts")
    }

    fn index_transfer_values(&mut self, transfer: &Transfer, position: u32) {
        let transfers = &self.transfers;
        self.transfer_values
            .add(transfer_user_data(transfer), position, |p| {
                transfers.user_data(p as usize)
            });
        self.transfer_ledger_codes
            .add(transfer.ledger, transfer.code, position);
    }

    /// Adds a transfer to the end of an account's history.
    pub(crate) fn append_history(&mut self, account_index: u32, transfer_ref: TransferRef) {
        self.account_history.append(account_index, transfer_ref);
        self.record(Undo::HistoryAppended {
            account_index,
            transfer_ref,
        });
    }

    /// Adds a row to the balance history of account `account_index`.
    pub(crate) fn append_balance_row(&mut self, account_index: u32, row: BalanceRow) {
        self.balance_history.append(account_index, row);
        self.record(Undo::BalanceRowAppended {
            account_index,
            timestamp: row.timestamp,
        });
    }

    pub(crate) fn account_position(&self, id: u128) -> Option<u32> {
        let accounts = &self.accounts;
        self.account_index.get(id, |p| accounts[p as usize].id)
    }

    pub(crate) fn set_balances(&mut self, account_index: u32, balances: Balances) {
        if self.recording {
            let before = Balances::of(&self.accounts[account_index as usize]);
            self.undo_log.push(Undo::Balances {
                account_index,
                before,
            });
        }
        balances.store(self.accounts.get_mut(account_index as usize));
    }

    /// Sets or clears an account's `closed` flag (the only flag that changes).
    pub(crate) fn set_closed(&mut self, account_index: u32, closed: bool) {
        let account = self.accounts.get_mut(account_index as usize);
        let before = account.flags;
        account.flags = if closed {
            before.with(AccountFlags::CLOSED)
        } else {
            before.without(AccountFlags::CLOSED)
        };
        self.record(Undo::AccountFlags {
            account_index,
            before,
        });
    }

    pub(crate) fn set_pending_status(&mut self, id: u128, status: PendingStatus) {
        let before = self.pending_status.insert(id, status);
        self.record(Undo::PendingStatus { id, before });
    }

    pub(crate) fn insert_expiry(&mut self, key: (u64, u128)) {
        let inserted = self.expiries.insert(key);
        assert!(inserted, "expiry inserted twice");
        self.record(Undo::ExpiryInserted { key });
    }

    pub(crate) fn remove_expiry(&mut self, key: (u64, u128)) {
        if self.expiries.remove(&key) {
            self.record(Undo::ExpiryRemoved { key });
        }
    }

    pub(crate) fn set_refunded(&mut self, id: u128, total: u128) {
        let before = self.refunded.insert(id, total);
        self.record(Undo::Refunded { id, before });
    }

    /// Undoes every mutation recorded after `mark`, newest first.
    pub(crate) fn rollback_to(&mut self, mark: usize) {
        while self.undo_log.len() > mark {
            let Some(undo) = self.undo_log.pop() else {
                break;
            };
            match undo {
                Undo::AccountCreated => {
                    let last = *self.accounts.last().expect("undo of a created account");
                    let position = (self.accounts.len() - 1) as u32;
                    let accounts = &self.accounts;
                    self.account_values
                        .remove_newest(account_user_data(&last), position, |p| {
                            account_user_data(&accounts[p as usize])
                        });
                    self.account_ledger_codes
                        .remove_newest(last.ledger, last.code, position);
                    let id = last.id;
                    self.account_index.remove(id, |p| accounts[p as usize].id);
                    self.accounts.pop();
                    self.account_history.pop_account();
                }
                Undo::TransferStored => {
                    let last = self.transfers.len().checked_sub(1);
                    let last = last.expect("undo of a stored transfer");
                    let id = self.transfers.id_at(last);
                    let transfers = &self.transfers;
                    let stored = transfers.get(last);
                    self.transfer_values.remove_newest(
                        transfer_user_data(&stored),
                        last as u32,
                        |p| transfers.user_data(p as usize),
                    );
                    self.transfer_ledger_codes.remove_newest(
                        stored.ledger,
                        stored.code,
                        last as u32,
                    );
                    let (transfers, burned) = (&self.transfers, &self.failed_ids);
                    self.transfer_index
                        .remove(id, |p| indexed_id(transfers, burned, p));
                    self.transfers.pop();
                }
                Undo::HistoryAppended {
                    account_index,
                    transfer_ref,
                } => {
                    let popped = self.account_history.pop(account_index);
                    assert_eq!(popped, Some(transfer_ref), "history undone in order");
                }
                Undo::Balances {
                    account_index,
                    before,
                } => {
                    before.store(self.accounts.get_mut(account_index as usize));
                }
                Undo::AccountFlags {
                    account_index,
                    before,
                } => {
                    self.accounts.get_mut(account_index as usize).flags = before;
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
                Undo::BalanceRowAppended {
                    account_index,
                    timestamp,
                } => {
                    self.balance_history.pop(account_index, timestamp);
                }
                Undo::ChangeRecorded => {
                    let popped = self.changes.pop();
                    assert!(popped.is_some(), "a change undone twice");
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
}

/// The first of `len` positions whose timestamp (`timestamp_at`, increasing with the
/// position) is at or after `timestamp`; `len` when none is.
fn first_at_or_after(len: usize, timestamp: u64, timestamp_at: impl Fn(usize) -> u64) -> usize {
    let (mut low, mut high) = (0, len);
    while low < high {
        let middle = low + (high - low) / 2;
        if timestamp_at(middle) < timestamp {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// Instant (ns) at which a pending transfer with a timeout expires. Creation checked
/// that this does not overflow (`overflows_timeout`).
pub(crate) fn expires_at(pending: &Transfer) -> u64 {
    debug_assert!(pending.timeout > 0);
    pending
        .timestamp
        .saturating_add(u64::from(pending.timeout) * tally_types::NS_PER_S)
}
