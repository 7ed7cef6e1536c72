//! The whole state: one or more [`Part`]s, and the reads that route by id or merge the
//! parts back into one view. With one part this is the plain reference state machine;
//! with more, the engine's shard threads each take one part (see `crate::plan`).

use crate::account_read::{AccountBalancesRead, AccountTransfersRead};
use crate::apply::{Slot, account_slot};
use crate::balance_history::{BalanceHistories, BalanceRow};
use crate::burned::FrozenBurnedIds;
use crate::cow_map::FrozenIdMap;
use crate::history::Histories;
use crate::history_watch::{Change, HistoryWatch};
use crate::image_source::{ImageSource, ImageStart, LoadedSource};
use crate::index::{GROW_ELSEWHERE_SLOTS_MIN, IndexTable};
use crate::layout::Layout;
use crate::load_values::ValuesFill;
use crate::part::{
    Balances, ChangeFill, GatheredEntries, Part, TransferEntry, TransferRef, expires_at,
};
use crate::prefetch::LoadPrefetcher;
use crate::store::{FrozenAccounts, FrozenTransfers};
use std::fmt;
use tally_types::{
    Account, AccountBalance, AccountFilter, ChangeEvent, LoadedImage, PendingStatus, StateImage,
    Transfer, TransferFlags, TransferKind,
};

/// The ledger state: accounts, transfers and the side tables the rules need, split into
/// parts by id. Results and state never depend on the number of parts.
#[derive(Debug, Clone)]
pub struct StateMachine {
    /// Boxed: parts travel to shard threads and back by pointer, once per group.
    #[allow(clippy::vec_box)]
    pub(crate) parts: Vec<Box<Part>>,
    /// How ids map to parts (kept here too: the parts may be out on shard threads).
    pub(crate) layout: Layout,
    pub(crate) last_timestamp: u64,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::with_parts(1)
    }
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
    /// An empty ledger in one part.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty ledger cut as `layout` says: a number of parts (1 to
    /// [`crate::PARTS_MAX`], placed by the whole id) or a [`Layout`].
    pub fn with_parts(layout: impl Into<Layout>) -> Self {
        let layout = layout.into();
        StateMachine {
            parts: (0..layout.count())
                .map(|i| Box::new(Part::new(i, layout)))
                .collect(),
            layout,
            last_timestamp: 0,
        }
    }

    /// An empty ledger with room for `accounts` accounts and `transfers` transfers
    /// reserved up front, so that growing to that size never pauses to rehash an index
    /// or copy the transfer store (seconds at tens of millions of entries). Reserved,
    /// untouched memory is not resident.
    pub fn with_capacity(accounts: usize, transfers: usize) -> Self {
        Self::with_capacity_in_parts(accounts, transfers, 1)
    }

    /// [`StateMachine::with_capacity`] cut as `layout` says.
    pub fn with_capacity_in_parts(
        accounts: usize,
        transfers: usize,
        layout: impl Into<Layout>,
    ) -> Self {
        let mut machine = Self::with_parts(layout);
        let parts = machine.layout.count();
        for part in &mut machine.parts {
            // Ids spread evenly over parts; a little slack absorbs the unevenness.
            part.reserve(
                accounts / parts + accounts / 64,
                transfers / parts + transfers / 64,
            );
        }
        machine
    }

    /// The number of parts.
    pub fn part_count(&self) -> usize {
        self.layout.count()
    }

    /// How ids map to parts.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Takes every part out, for shard threads to own while they apply one group. The
    /// state must get them back ([`StateMachine::restore_parts`]) before any other use.
    pub fn take_parts(&mut self) -> Vec<Box<Part>> {
        std::mem::take(&mut self.parts)
    }

    /// Puts back the parts [`StateMachine::take_parts`] took, in any order, and moves
    /// time to `last_timestamp` (the last stamp of the group they applied).
    pub fn restore_parts(&mut self, mut parts: Vec<Box<Part>>, last_timestamp: u64) {
        assert!(self.parts.is_empty(), "parts restored twice");
        parts.sort_unstable_by_key(|part| part.index());
        assert!(
            parts.iter().enumerate().all(|(i, part)| part.index() == i
                && part.layout == self.layout
                && parts.len() == self.layout.count()
                && part.undo_log.is_empty()
                && !part.recording),
            "every part back exactly once, with no pending undo"
        );
        assert!(last_timestamp >= self.last_timestamp, "time moves forward");
        self.parts = parts;
        self.last_timestamp = last_timestamp;
    }

    /// The parts, in order (all held: not out on shard threads).
    pub(crate) fn parts(&self) -> &[Box<Part>] {
        assert!(!self.parts.is_empty(), "the parts are out on shard threads");
        &self.parts
    }

    /// The part that holds id `id`.
    pub(crate) fn part(&self, id: u128) -> &Part {
        &self.parts[self.layout.part_of(id)]
    }

    /// The latest instant in `from..=to` at which a pending transfer still waiting will
    /// expire, if any.
    pub fn expiry_instant_in(&self, from: u64, to: u64) -> Option<u64> {
        if from > to {
            return None;
        }
        self.parts
            .iter()
            .filter_map(|part| {
                let mut keys = part.expiries.range((from, 0)..=(to, u128::MAX));
                keys.next_back().map(|&(at, _)| at)
            })
            .max()
    }

    /// The earliest instant at which a pending transfer still waiting will expire.
    pub fn next_expiry_instant(&self) -> Option<u64> {
        self.parts
            .iter()
            .filter_map(|part| part.expiries.first().map(|&(at, _)| at))
            .min()
    }

    /// Whether a pending transfer still waiting will expire at `instant`.
    pub fn expires_at(&self, instant: u64) -> bool {
        self.parts.iter().any(|part| {
            part.expiries
                .range((instant, 0)..=(instant, u128::MAX))
                .next()
                .is_some()
        })
    }

    /// The instants at which the pending transfers still waiting will expire.
    pub fn expiry_instants(&self) -> Vec<u64> {
        self.parts
            .iter()
            .flat_map(|part| part.expiries.iter().map(|&(at, _)| at))
            .collect()
    }

    /// Turns capturing change events on or off (off by default). While on, every
    /// committed change leaves a [`ChangeEvent`] for [`StateMachine::take_changes`].
    pub fn set_change_capture(&mut self, on: bool) {
        assert!(!self.parts.is_empty(), "the parts are out on shard threads");
        for part in &mut self.parts {
            part.capturing = on;
            if !on {
                part.changes = Vec::new();
                part.change_fills = Vec::new();
            }
        }
    }

    /// The change events captured since the last call, in commit order (by
    /// timestamp). Each part holds its own in the order it applied them (a group
    /// applied serially leaves them all in the first part); where several parts hold
    /// some, or escrow left accounts to fill in, they are merged.
    pub fn take_changes(&mut self) -> Vec<ChangeEvent> {
        self.take_changes_into(Vec::new())
    }

    /// [`StateMachine::take_changes`] into `spare` (cleared first), whose room the
    /// next captures reuse: a busy ledger then captures into memory it already has.
    pub fn take_changes_into(&mut self, mut spare: Vec<ChangeEvent>) -> Vec<ChangeEvent> {
        assert!(!self.parts.is_empty(), "the parts are out on shard threads");
        spare.clear();
        let mut holding = (0..self.parts.len()).filter(|&i| !self.parts[i].changes.is_empty());
        let first = holding.next();
        let fills = self.parts.iter().any(|part| !part.change_fills.is_empty());
        if holding.next().is_none() && !fills {
            // One part, or a group applied serially: one list holds every event, in
            // commit order, and the spare takes its place.
            return std::mem::replace(&mut self.parts[first.unwrap_or(0)].changes, spare);
        }
        let mut changes = spare;
        for part in &mut self.parts {
            changes.append(&mut part.changes);
        }
        // Stable: events of one part keep the order that part applied them in.
        changes.sort_by_key(|event| event.timestamp);
        for part in &mut self.parts {
            for fill in part.change_fills.drain(..) {
                fill_change(&mut changes, fill);
            }
        }
        changes
    }

    /// Timestamp of the last event applied; 0 for an empty ledger.
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// The latest timestamp of any account or stored transfer (0 for an empty ledger):
    /// every change event up to it must exist. Batches that changed nothing since, and
    /// expiries, leave `last_timestamp` ahead of it.
    pub fn last_record_timestamp(&self) -> u64 {
        self.parts
            .iter()
            .flat_map(|part| {
                [
                    part.last_account_timestamp(),
                    part.last_transfer_timestamp(),
                ]
            })
            .flatten()
            .max()
            .unwrap_or(0)
    }

    /// How many accounts exist.
    pub fn account_count(&self) -> usize {
        self.parts.iter().map(|part| part.accounts.len()).sum()
    }

    /// How many transfers are stored.
    pub fn transfer_count(&self) -> usize {
        self.parts.iter().map(|part| part.transfers.len()).sum()
    }

    /// Accounts the state takes before its id index must grow: the room reserved
    /// ([`StateMachine::with_capacity`]; a ledger's configured capacity) or grown into.
    pub fn account_room(&self) -> usize {
        self.parts
            .iter()
            .map(|part| part.account_index.room())
            .sum()
    }

    /// Transfers the state takes before its id index must grow (as
    /// [`StateMachine::account_room`]).
    pub fn transfer_room(&self) -> usize {
        self.parts
            .iter()
            .map(|part| part.transfer_index.room())
            .sum()
    }

    /// The account with this id, if it exists.
    pub fn lookup_account(&self, id: u128) -> Option<&Account> {
        self.part(id).lookup_account(id)
    }

    /// The stored transfer with this id, if any.
    pub fn lookup_transfer(&self, id: u128) -> Option<Transfer> {
        self.part(id).lookup_transfer(id)
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
            .collect()
    }

    /// Where a pending transfer stands; `None` for ids that are not pending transfers.
    pub fn pending_status(&self, id: u128) -> Option<PendingStatus> {
        self.part(id).pending_status.get(&id).copied()
    }

    /// Total refunded so far of transfer `id`.
    pub fn refunded_amount(&self, id: u128) -> u128 {
        self.part(id).refunded.get(&id).copied().unwrap_or(0)
    }

    /// True when `id` was burned by a transient failure.
    pub fn id_failed(&self, id: u128) -> bool {
        self.part(id).transfer_entry(id) == Some(TransferEntry::Burned)
    }

    /// Every account, in creation order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> + '_ {
        MergeByTimestamp::new(
            self.parts.iter().map(|part| part.accounts.iter()),
            |account: &&Account| account.timestamp,
        )
    }

    /// Every stored transfer, in timestamp order (unpacked as it goes).
    pub fn transfers(&self) -> impl Iterator<Item = Transfer> + '_ {
        MergeByTimestamp::new(
            self.parts.iter().map(|part| part.transfers.iter()),
            |transfer: &Transfer| transfer.timestamp,
        )
    }

    pub(crate) fn transfer_by_ref(&self, transfer_ref: TransferRef) -> Transfer {
        let (part, position) = Part::decode_ref(transfer_ref, self.parts.len());
        self.parts[part].transfers.get(position)
    }

    /// `get_account_transfers`: the account's transfers in timestamp order (or newest
    /// first when `reversed`), filtered by direction, time range, user data and code,
    /// at most the limit; in one go ([`AccountTransfersRead`] reads it step by step).
    pub fn account_transfers(&self, filter: &AccountFilter) -> Vec<Transfer> {
        let mut read = AccountTransfersRead::new(self, filter);
        while !read.step(self) {}
        read.transfers()
    }

    /// `get_account_balances`: the balance history of an account created with
    /// `history`, in timestamp order (or newest first when `reversed`): one row per
    /// transfer and expiry that changed it, filtered as `get_account_transfers` filters
    /// (an expiry row by its pending transfer's fields and its own instant), at most the
    /// limit; in one go ([`AccountBalancesRead`] reads it step by step). Empty for an
    /// account without `history`.
    pub fn account_balances(&self, filter: &AccountFilter) -> Vec<AccountBalance> {
        let mut read = AccountBalancesRead::new(self, filter);
        while !read.step(self) {}
        read.balances()
    }

    // ---- whole-state images, for snapshots ----

    /// A full copy of the state as plain data (what a snapshot stores). The same for
    /// any number of parts.
    pub fn image(&self) -> StateImage {
        self.freeze().image()
    }

    /// A point-in-time copy for a snapshot, cheap enough to take on the apply thread:
    /// stored transfers and burned ids are shared, not copied (their full chunks are
    /// immutable); accounts are shared copy-on-write by chunk, and the pending statuses
    /// and refund totals by shard (`cow_map`): nothing is copied that grows with
    /// the ledger but the lists of chunk pointers. [`FrozenState::image`] then builds the
    /// [`StateImage`], on whichever thread writes the snapshot.
    pub fn freeze(&self) -> FrozenState {
        FrozenState {
            last_timestamp: self.last_timestamp,
            parts: self
                .parts
                .iter()
                .map(|part| FrozenPart {
                    accounts: part.accounts.freeze(),
                    transfers: part.transfers.freeze(),
                    pending_statuses: part.pending_status.freeze(),
                    refunded: part.refunded.freeze(),
                    failed_ids: part.failed_ids.freeze(),
                })
                .collect(),
        }
    }

    /// Rebuilds the state from an image, checking that it is self-consistent.
    pub fn from_image(image: StateImage) -> Result<Self, ImageError> {
        Self::from_image_in_parts(image, 1)
    }

    /// [`StateMachine::from_image`] cut as `parts` says (a number or a [`Layout`]).
    pub fn from_image_in_parts(
        image: StateImage,
        parts: impl Into<Layout>,
    ) -> Result<Self, ImageError> {
        Self::from_loaded_image_in_parts(LoadedImage::from(image), parts)
    }

    /// Rebuilds the state from a snapshot as read ([`LoadedImage`]: its transfers may
    /// still be packed) cut as `parts` says, checking that it is self-consistent. Packed
    /// transfers are unpacked one run at a time, so loading never holds them all
    /// unpacked: a hundred million would be 12.8 GB.
    pub fn from_loaded_image_in_parts(
        loaded: LoadedImage,
        parts: impl Into<Layout>,
    ) -> Result<Self, ImageError> {
        Self::from_loaded_image_with_room(loaded, parts, 0, 0)
    }

    /// [`StateMachine::from_loaded_image_in_parts`] with room for at least `accounts`
    /// accounts and `transfers` transfers (as [`StateMachine::with_capacity_in_parts`]):
    /// a ledger reopened from a snapshot keeps the capacity it was configured with,
    /// and its indexes' tables are prepared once, while the snapshot loads, instead of
    /// grown as the log after it replays.
    pub fn from_loaded_image_with_room(
        loaded: LoadedImage,
        parts: impl Into<Layout>,
        accounts: usize,
        transfers: usize,
    ) -> Result<Self, ImageError> {
        let (start, mut source) = LoadedSource::split(loaded);
        Self::from_image_source(start, &mut source, parts, (accounts, transfers))
    }

    /// Rebuilds the state from a snapshot handed over as it is read ([`ImageSource`]):
    /// `start` says its last timestamp and how many accounts it holds, `source` hands
    /// over the accounts a chunk at a time, then any plain (older format) transfers,
    /// the packed runs of transfers after them, then the rest. `room` is (accounts,
    /// transfers) to reserve, as in [`StateMachine::from_loaded_image_with_room`]
    /// (the snapshot's own counts, at least). Checks that the state is
    /// self-consistent; an error of the source's is returned as it is.
    pub fn from_image_source(
        start: ImageStart,
        source: &mut dyn ImageSource,
        parts: impl Into<Layout>,
        room: (usize, usize),
    ) -> Result<Self, ImageError> {
        let mut machine =
            StateMachine::with_capacity_in_parts(start.accounts.max(room.0), 0, parts);
        machine.last_timestamp = start.last_timestamp;
        let mut accounts = AccountLoad::default();
        while let Some(chunk) = source.next_accounts()? {
            machine.load_accounts(&chunk, &mut accounts)?;
        }
        if accounts.loaded != start.accounts {
            return Err(ImageError(format!(
                "{} accounts came where the snapshot holds {}",
                accounts.loaded, start.accounts
            )));
        }
        let (transfers, stored) = source.transfers_head()?;
        machine.reserve_transfers(stored.max(room.1));
        // The transfers' user-data indexes fill on their own thread: nothing else
        // loading does reads them.
        let detached = machine
            .parts
            .iter_mut()
            .map(|part| std::mem::take(&mut part.transfer_values))
            .collect();
        let filled = std::thread::scope(|scope| {
            let mut values = ValuesFill::start(scope, detached);
            let (pending_count, history) =
                machine.load_transfers(transfers, source, accounts.history, &mut values)?;
            let rest = source.rest()?;
            machine.load_pending_statuses(rest.pending_statuses)?;
            let status_count: usize = machine.parts.iter().map(|p| p.pending_status.len()).sum();
            if pending_count != status_count {
                return Err(ImageError("a pending transfer has no status".to_string()));
            }
            machine.load_refunded(rest.refunded)?;
            machine.load_failed_ids(rest.failed_ids)?;
            machine.derive_balance_histories(history)?;
            Ok(values.finish())
        })?;
        for (part, values) in machine.parts.iter_mut().zip(filled) {
            part.transfer_values = values;
        }
        debug_assert!(machine.parts.iter().all(|part| part.undo_log.is_empty()));
        Ok(machine)
    }

    /// Room for `transfers` transfers over all parts, as
    /// [`StateMachine::with_capacity_in_parts`] reserves it.
    fn reserve_transfers(&mut self, transfers: usize) {
        let parts = self.layout.count();
        for part in &mut self.parts {
            part.reserve_transfers(transfers / parts + transfers / 64);
        }
    }

    /// Loads the next of an image's accounts, which must come in creation order, none
    /// after the image's last timestamp, each id once.
    fn load_accounts(
        &mut self,
        accounts: &[Account],
        loading: &mut AccountLoad,
    ) -> Result<(), ImageError> {
        for (at, &account) in accounts.iter().enumerate() {
            // The id index's home slots lie at random: fetched a few accounts ahead, so
            // that the misses overlap.
            if let Some(ahead) = accounts.get(at + ACCOUNTS_PREFETCHED_AHEAD) {
                self.parts[self.layout.part_of(ahead.id)].prefetch_account_slot(ahead.id);
            }
            if account.timestamp > self.last_timestamp || account.timestamp <= loading.last {
                return Err(ImageError(format!(
                    "account {} is out of order",
                    account.id
                )));
            }
            loading.last = account.timestamp;
            let part_index = self.layout.part_of(account.id);
            let part = &mut self.parts[part_index];
            if !part.try_insert_account(account) {
                return Err(ImageError(format!("account {} appears twice", account.id)));
            }
            let index = u32::try_from(part.accounts.len() - 1).expect("fewer than 2^32 accounts");
            let slot = Slot {
                part: part_index,
                index,
            };
            loading.history.account_loaded(slot, &account);
        }
        loading.loaded += accounts.len();
        Ok(())
    }

    /// Loads an image's transfers (the plain ones, then the source's runs, all in
    /// timestamp order) while a second thread builds the account histories, and hands
    /// them to `values` to index their user data. Returns how many are pending (each
    /// must get a status) and `history` with the changes made to the accounts it
    /// watches.
    fn load_transfers(
        &mut self,
        image_transfers: Vec<Transfer>,
        source: &mut dyn ImageSource,
        history: HistoryWatch,
        values: &mut ValuesFill<'_>,
    ) -> Result<(usize, HistoryWatch), ImageError> {
        let histories = self
            .parts
            .iter_mut()
            .map(|part| std::mem::take(&mut part.account_history))
            .collect();
        let ids_tables = LoadTable::ids_wanted(self);
        let (loaded, histories, (pending_count, history)) = std::thread::scope(|scope| {
            // Made here, so that its end of the tables thread's channel closes before
            // the scope waits for that thread, even when loading panics.
            let mut loading = TransferLoad {
                last_timestamp: self.last_timestamp,
                last_transfer: 0,
                pending_count: 0,
                gathered: vec![GatheredEntries::default(); self.parts.len()],
                scratch: Vec::new(),
                tables: LoadTables::new(scope, ids_tables),
                values_from: vec![0; self.parts.len()],
                fields_seen: vec![0; self.parts.len()],
                fields_said: vec![0; self.parts.len()],
                history,
            };
            let (loaded, histories) = self.load_with_histories(
                histories,
                &mut loading,
                (image_transfers, source),
                values,
            );
            let counted = (loading.pending_count, loading.history);
            (loaded, histories, counted)
        });
        loaded?;
        for (part, history) in self.parts.iter_mut().zip(histories) {
            part.account_history = history;
        }
        Ok((pending_count, history))
    }

    /// The body of [`StateMachine::load_transfers`], the histories built beside it.
    fn load_with_histories(
        &mut self,
        histories: Vec<Histories>,
        loading: &mut TransferLoad<'_, '_>,
        (image_transfers, source): (Vec<Transfer>, &mut dyn ImageSource),
        values: &mut ValuesFill<'_>,
    ) -> (Result<(), ImageError>, Vec<Histories>) {
        with_history_builder(histories, |histories_out| {
            let mut appends = Vec::new();
            // In slices the size of a packed run, so the history thread starts on the
            // first while this thread goes on with the next.
            for slice in image_transfers.chunks(tally_types::packed::PACKED_RUN_RECORDS) {
                loading.load(self, slice, None, &mut appends)?;
                histories_out(std::mem::take(&mut appends));
                loading.hand_values(self, values, false);
            }
            drop(image_transfers);
            while let Some(mut run) = source.next_run()? {
                let chunk = self.adopts_run(run.records()).then(|| {
                    (
                        std::mem::take(&mut run.bytes),
                        std::mem::take(&mut run.starts),
                    )
                });
                loading.load(self, &run.transfers, chunk, &mut appends)?;
                histories_out(std::mem::take(&mut appends));
                loading.hand_values(self, values, false);
                source.spent(run);
            }
            loading.hand_values(self, values, true);
            loading.index(self, 0)
        })
    }

    /// Whether loading keeps `run`'s bytes as the next chunk of the store: on one part
    /// (on several, a run's records go to the parts of their ids), a full run, landing
    /// on a chunk boundary (a snapshot of one part's store is its chunks as they were).
    fn adopts_run(&self, records: usize) -> bool {
        self.parts.len() == 1
            && records == crate::store::CHUNK
            && self.parts[0].takes_loaded_chunk()
    }

    /// Derives the balance rows of every account `history` watched from the changes
    /// loading kept and the expiries of its pending transfers, as apply recorded
    /// them; the last row must equal the account's balances.
    fn derive_balance_histories(&mut self, history: HistoryWatch) -> Result<(), ImageError> {
        for (slot, changes) in history.into_accounts() {
            let account = self.parts[slot.part].accounts[slot.index as usize];
            let mut rows = std::mem::take(&mut self.parts[slot.part].balance_history);
            let derived = self.derive_rows(&account, &changes, (&mut rows, slot.index));
            self.parts[slot.part].balance_history = rows;
            derived?;
        }
        Ok(())
    }

    /// Appends to `rows` the balance rows of one history account (at position `index`
    /// of its part), from its `changes` in timestamp order and the expiries among them,
    /// room for all of them reserved first.
    fn derive_rows(
        &self,
        account: &Account,
        changes: &[Change],
        (rows, index): (&mut BalanceHistories, u32),
    ) -> Result<(), ImageError> {
        let broken = || {
            ImageError(format!(
                "the history of account {} does not add up",
                account.id
            ))
        };
        let expiries = self.expired_changes(changes).ok_or_else(broken)?;
        rows.reserve(index, changes.len() + expiries.len());
        let mut balances = Balances::of(&Account::default());
        let mut next = |timestamp: u64, change: &Change, expiry: bool| {
            self.change_balances(&mut balances, change, expiry)
                .ok_or_else(broken)?;
            rows.append(
                index,
                BalanceRow {
                    timestamp,
                    transfer_ref: change.transfer_ref,
                    balances,
                },
            );
            Ok::<(), ImageError>(())
        };
        // The changes are in timestamp order; an expiry goes before them from its
        // instant on (at one instant it runs before the batch stamped then).
        let mut expiries = expiries.into_iter().peekable();
        for change in changes {
            while let Some((instant, _, expired)) =
                expiries.next_if(|&(instant, _, _)| instant <= change.timestamp)
            {
                next(instant, &changes[expired], true)?;
            }
            next(change.timestamp, change, false)?;
        }
        for (instant, _, expired) in expiries {
            next(instant, &changes[expired], true)?;
        }
        if balances != Balances::of(account) {
            return Err(broken());
        }
        Ok(())
    }

    /// The expiries among an account's `changes`: (instant, the expired transfer's
    /// id, the index of its change), in the order apply released them (by instant,
    /// then id); `None` if an expired transfer has no timeout.
    fn expired_changes(&self, changes: &[Change]) -> Option<Vec<(u64, u128, usize)>> {
        let mut expiries = Vec::new();
        for (at, change) in changes.iter().enumerate() {
            if !change.pending {
                continue;
            }
            let pending = self.transfer_by_ref(change.transfer_ref);
            if self.pending_status(pending.id) == Some(PendingStatus::Expired) {
                if pending.timeout == 0 {
                    return None;
                }
                expiries.push((expires_at(&pending), pending.id, at));
            }
        }
        expiries.sort_unstable();
        Some(expiries)
    }

    /// Applies one change (or, with `expiry`, the expiry of the pending transfer it
    /// made) to an account's running balances; `None` if they do not add up.
    fn change_balances(
        &self,
        balances: &mut Balances,
        change: &Change,
        expiry: bool,
    ) -> Option<()> {
        let (pending, posted) = if change.debit {
            (&mut balances.debits_pending, &mut balances.debits_posted)
        } else {
            (&mut balances.credits_pending, &mut balances.credits_posted)
        };
        // What a post or void releases: the amount its pending transfer held.
        let held = || {
            let pending_id = self.transfer_by_ref(change.transfer_ref).pending_id;
            self.lookup_transfer(pending_id).map(|p| p.amount)
        };
        match (expiry, change.kind) {
            (true, _) => *pending = pending.checked_sub(change.amount())?,
            (false, Some(TransferKind::Pending)) => {
                *pending = pending.checked_add(change.amount())?;
            }
            (false, Some(TransferKind::PostPending)) => {
                *pending = pending.checked_sub(held()?)?;
                *posted = posted.checked_add(change.amount())?;
            }
            (false, Some(TransferKind::VoidPending)) => *pending = pending.checked_sub(held()?)?,
            (false, Some(TransferKind::SinglePhase | TransferKind::Refund)) => {
                *posted = posted.checked_add(change.amount())?;
            }
            (false, None) => return None,
        }
        Some(())
    }

    /// Loads the statuses of pending transfers (each of a stored pending transfer) and
    /// schedules the expiry of those still pending with a timeout.
    fn load_pending_statuses(
        &mut self,
        statuses: Vec<(u128, PendingStatus)>,
    ) -> Result<(), ImageError> {
        for (at, &(id, status)) in statuses.iter().enumerate() {
            self.prefetch_lookups_ahead(at, |ahead| statuses.get(ahead).map(|&(id, _)| id));
            let pending = self
                .lookup_transfer(id)
                .filter(|transfer| transfer.flags.contains(TransferFlags::PENDING))
                .ok_or_else(|| ImageError(format!("status for {id}, not a pending transfer")))?;
            if status == PendingStatus::Pending && pending.timeout > 0 {
                let part = &mut self.parts[self.layout.part_of(id)];
                part.expiries.insert((expires_at(&pending), id));
            }
        }
        let layout = self.layout;
        for (at, part) in self.parts.iter_mut().enumerate() {
            part.pending_status
                .insert_all(&statuses, |id| layout.part_of(id) == at);
        }
        Ok(())
    }

    /// Prefetches for lookups of transfers by id, in order, what the lookup `at` will
    /// need a few lookups ahead (`id_at` gives the id of a later one): the index slot,
    /// then the record's start, then the record, each step once the one before has
    /// arrived, so that a lookup's two dependent misses overlap with the others'.
    fn prefetch_lookups_ahead(&self, at: usize, id_at: impl Fn(usize) -> Option<u128>) {
        if let Some(id) = id_at(at + LOOKUPS_AHEAD_SLOT) {
            self.part(id).prefetch_transfer_slot(id);
        }
        if let Some(id) = id_at(at + LOOKUPS_AHEAD_START) {
            self.part(id).prefetch_transfer_start(id);
        }
        if let Some(id) = id_at(at + LOOKUPS_AHEAD_RECORD) {
            self.part(id).prefetch_transfer_record(id);
        }
    }

    /// Loads the refund totals, each of a stored transfer.
    fn load_refunded(&mut self, refunded: Vec<(u128, u128)>) -> Result<(), ImageError> {
        for (at, &(id, _)) in refunded.iter().enumerate() {
            self.prefetch_lookups_ahead(at, |ahead| refunded.get(ahead).map(|&(id, _)| id));
            if self.part(id).transfer_position(id).is_none() {
                return Err(ImageError(format!(
                    "refund total for unknown transfer {id}"
                )));
            }
        }
        let layout = self.layout;
        for (at, part) in self.parts.iter_mut().enumerate() {
            part.refunded
                .insert_all(&refunded, |id| layout.part_of(id) == at);
        }
        Ok(())
    }

    /// Loads the burned ids, each once and none a stored transfer's.
    fn load_failed_ids(&mut self, failed_ids: Vec<u128>) -> Result<(), ImageError> {
        let count = self.parts.len();
        for part in &mut self.parts {
            part.transfer_index.reserve(failed_ids.len() / count + 1);
        }
        for id in failed_ids {
            if !self.parts[self.layout.part_of(id)].burn(id) {
                return Err(ImageError(format!(
                    "burned id {id} appears twice, or is a stored transfer's"
                )));
            }
        }
        Ok(())
    }
}

/// One entry of an account's history, to append while loading an image: the account's
/// part and position there, and the transfer.
type HistoryAppend = (u32, u32, TransferRef);

/// Runs `load` on this thread while a helper thread appends, to `histories`, the
/// entries `load` hands over (a run's worth at a time), and returns both once all are
/// in. The checks never read a history, so building them beside the index and the
/// store changes only the time a load takes. Where no thread can be started, the
/// entries are appended here as they come.
fn with_history_builder<T>(
    mut histories: Vec<Histories>,
    load: impl FnOnce(&mut dyn FnMut(Vec<HistoryAppend>)) -> T,
) -> (T, Vec<Histories>) {
    std::thread::scope(|scope| {
        // The histories go to the helper only once it runs, so that they are still
        // here if it cannot be started.
        let (give, take) = std::sync::mpsc::sync_channel::<Vec<Histories>>(1);
        // Two runs in flight at most: about 3 MB of entries.
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<HistoryAppend>>(2);
        let spawned = std::thread::Builder::new()
            .name("tally-history".into())
            .spawn_scoped(scope, move || {
                let mut histories = take.recv().ok()?;
                for appends in receiver {
                    append_all(&mut histories, &appends);
                }
                Some(histories)
            });
        let Ok(builder) = spawned else {
            let result = load(&mut |appends| append_all(&mut histories, &appends));
            return (result, histories);
        };
        give.send(histories)
            .expect("the helper waits for the histories before anything else");
        let result = load(&mut |appends| {
            // Fails only if the helper panicked: the join below reports that.
            let _ = sender.send(appends);
        });
        drop(sender);
        match builder.join() {
            Ok(Some(histories)) => (result, histories),
            Ok(None) => unreachable!("the histories were given before the helper could stop"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Appends `appends` in order, prefetching each account's head, then its tail block,
/// a few entries ahead (the tails of a million accounts are far from the cache).
fn append_all(histories: &mut [Histories], appends: &[HistoryAppend]) {
    const HEADS_AHEAD: usize = 16;
    const TAILS_AHEAD: usize = 8;
    for (at, &(part, account, transfer_ref)) in appends.iter().enumerate() {
        if let Some(&(part, account, _)) = appends.get(at + HEADS_AHEAD) {
            histories[part as usize].prefetch_head(account as usize);
        }
        if let Some(&(part, account, _)) = appends.get(at + TAILS_AHEAD) {
            histories[part as usize].prefetch_tail(account as usize);
        }
        histories[part as usize].append(account, transfer_ref);
    }
}

/// Loading an image's stored transfers, slice after slice (the image's own, then each
/// packed run unpacked): the order checks and the pending count run across slices.
struct TransferLoad<'scope, 'env> {
    last_timestamp: u64,
    last_transfer: u64,
    /// Counted as they go by: every one must get a status.
    pending_count: usize,
    /// Per part, the id index entries of transfers stored but not yet indexed: they
    /// are indexed many at a time, in table order ([`Part::index_loaded_ids`]).
    gathered: Vec<GatheredEntries>,
    /// Working room for indexing them.
    scratch: Vec<u64>,
    /// The tables of the id indexes, prepared on another thread.
    tables: LoadTables<'scope, 'env>,
    /// Per part, the first stored transfer not yet handed over to index its user data.
    values_from: Vec<u32>,
    /// Per part, the user-data fields seen in use (bit 0: `user_data_128`, 1: `_64`,
    /// 2: `_32`), and those already said to be.
    fields_seen: Vec<u8>,
    fields_said: Vec<u8>,
    /// The changes to accounts with `history`, for their balance rows.
    history: HistoryWatch,
}

/// How far ahead of a lookup by id its index slot, record start and record are
/// prefetched ([`StateMachine::prefetch_lookups_ahead`]).
const LOOKUPS_AHEAD_SLOT: usize = 24;
const LOOKUPS_AHEAD_START: usize = 12;
const LOOKUPS_AHEAD_RECORD: usize = 6;

/// Loading an image's accounts, chunk after chunk: the order check runs across chunks.
#[derive(Debug, Default)]
struct AccountLoad {
    /// The timestamp of the last account loaded (0 before the first).
    last: u64,
    loaded: usize,
    /// The accounts with `history`, for the changes loading makes to them.
    history: HistoryWatch,
}

/// How far ahead of the account being loaded its id index slot is prefetched.
const ACCOUNTS_PREFETCHED_AHEAD: usize = 16;

/// A table that loading a snapshot's transfers fills first, prepared on another thread
/// ([`IndexTable::prefaulted`]) while the transfers are read and stored: a part's
/// transfer id index, reserved for them and not yet faulted in.
#[derive(Debug, Clone, Copy)]
struct LoadTable {
    part: usize,
    slots: usize,
}

impl LoadTable {
    /// The transfer id tables loading into `machine` fills: those reserved and large.
    fn ids_wanted(machine: &StateMachine) -> Vec<LoadTable> {
        let mut wanted = Vec::new();
        for (part, state) in machine.parts.iter().enumerate() {
            let slots = state.transfer_index.slots();
            if slots >= GROW_ELSEWHERE_SLOTS_MIN {
                wanted.push(LoadTable { part, slots });
            }
        }
        wanted
    }

    /// Gives the index its table (dropped if the index has outgrown it: no effect on
    /// what it holds).
    fn adopt(self, machine: &mut StateMachine, table: IndexTable) {
        machine.parts[self.part].transfer_index.adopt(table);
    }
}

/// The `tally-tables` thread of a load: it faults in each table asked for while the
/// loading thread reads and stores transfers, so that the first entries gathered
/// for an index go into a table already touched (clearing fresh pages runs at
/// 0.4–1.3 GB/s on a virtual machine). The thread starts with the first table asked
/// for: a small load asks for none.
struct LoadTables<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    /// The thread's ends once a table was asked for; `Some(None)` where it could not
    /// be started (the indexes then fault theirs in as they fill).
    thread: Option<Option<TablesThread>>,
    /// Asked for and not yet adopted.
    outstanding: usize,
}

/// The loading thread's ends of the `tally-tables` thread's channels.
struct TablesThread {
    requests: std::sync::mpsc::Sender<LoadTable>,
    made: std::sync::mpsc::Receiver<(LoadTable, IndexTable)>,
}

impl TablesThread {
    /// Starts the thread on `scope`; `None` when it cannot be started.
    fn start<'scope>(scope: &'scope std::thread::Scope<'scope, '_>) -> Option<TablesThread> {
        let (requests, asked) = std::sync::mpsc::channel::<LoadTable>();
        let (made_sender, made) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tally-tables".into())
            .spawn_scoped(scope, move || {
                // Ends when the load drops its end, or stops listening (it failed).
                for request in asked {
                    let table = IndexTable::prefaulted(request.slots);
                    if made_sender.send((request, table)).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(TablesThread { requests, made })
    }
}

impl<'scope, 'env> LoadTables<'scope, 'env> {
    /// Tables for a load on `scope`, asking for `first`.
    fn new(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        first: Vec<LoadTable>,
    ) -> LoadTables<'scope, 'env> {
        let mut tables = LoadTables {
            scope,
            thread: None,
            outstanding: 0,
        };
        for request in first {
            tables.ask(request);
        }
        tables
    }

    fn ask(&mut self, request: LoadTable) {
        let scope = self.scope;
        let thread = self
            .thread
            .get_or_insert_with(|| TablesThread::start(scope));
        // The thread listens until this end is dropped.
        if let Some(thread) = thread
            && thread.requests.send(request).is_ok()
        {
            self.outstanding += 1;
        }
    }

    /// Gives each index the table asked for it, waiting for those still being made:
    /// inserting into the ones reserved would fault them in on the loading thread.
    fn adopt_all(&mut self, machine: &mut StateMachine) {
        let Some(Some(thread)) = &self.thread else {
            return;
        };
        while self.outstanding > 0 {
            let Ok((request, table)) = thread.made.recv() else {
                break;
            };
            request.adopt(machine, table);
            self.outstanding -= 1;
        }
    }
}

/// Transfers gathered over all parts before their ids are indexed: 32 MiB of entries,
/// and as much again to sort them.
const GATHERED_MAX: usize = 1 << 22;

/// Stored transfers of a part handed over at once to index their user data: 64
/// chunks, about 1.5 s of loading on the loading thread. One chunk in tests, so that
/// a test's snapshot is handed over in several batches.
const VALUES_BATCH: usize = if cfg!(test) {
    crate::store::CHUNK
} else {
    1 << 22
};

impl TransferLoad<'_, '_> {
    /// Stores `transfers`, their id index entries gathered and inserted many at a time;
    /// their history entries go to `appends`, for [`with_history_builder`]. With
    /// `chunk`, the transfers packed (the bytes, where each record starts), the one
    /// part keeps those bytes as its next chunk instead of packing them again
    /// ([`StateMachine::adopts_run`]).
    fn load(
        &mut self,
        machine: &mut StateMachine,
        transfers: &[Transfer],
        chunk: Option<(Vec<u8>, Vec<u32>)>,
        appends: &mut Vec<HistoryAppend>,
    ) -> Result<(), ImageError> {
        let adopting_from = chunk.as_ref().map(|(_, starts)| {
            debug_assert_eq!(starts.len(), transfers.len());
            machine.parts[0].transfers.len()
        });
        // Loading looks up both accounts of every transfer: prefetched ahead, so that
        // the misses overlap.
        let mut prefetcher = LoadPrefetcher::new(&machine.parts, transfers.iter());
        for (offset, &transfer) in transfers.iter().enumerate() {
            prefetcher.advance(&machine.parts, 1);
            if transfer.timestamp <= self.last_transfer || transfer.timestamp > self.last_timestamp
            {
                return Err(ImageError(format!(
                    "transfer {} is out of order",
                    transfer.id
                )));
            }
            self.last_transfer = transfer.timestamp;
            if transfer.kind() == Some(TransferKind::Pending) {
                self.pending_count += 1;
            }
            let debit = account_slot(machine.parts.as_slice(), transfer.debit_account_id);
            let credit = account_slot(machine.parts.as_slice(), transfer.credit_account_id);
            let (Some(debit), Some(credit)) = (debit, credit) else {
                return Err(ImageError(format!(
                    "transfer {} names an unknown account",
                    transfer.id
                )));
            };
            let part = machine.layout.part_of(transfer.id);
            self.fields_seen[part] |= fields_in_use(&transfer);
            let transfer_ref = match adopting_from {
                Some(first) => {
                    let position =
                        u32::try_from(first + offset).expect("fewer than 2^32 transfers per part");
                    machine.parts[part].gather_loaded_transfer(
                        &transfer,
                        position,
                        &mut self.gathered[part],
                    )
                }
                None => {
                    machine.parts[part].store_loaded_transfer(&transfer, &mut self.gathered[part])
                }
            };
            for slot in [debit, credit] {
                appends.push((slot.part as u32, slot.index, transfer_ref));
            }
            let history = &mut self.history;
            history.transfer_loaded(debit, transfer.debit_account_id, &transfer, transfer_ref);
            history.transfer_loaded(credit, transfer.credit_account_id, &transfer, transfer_ref);
        }
        if let Some((bytes, starts)) = chunk {
            machine.parts[0].adopt_loaded_chunk(bytes, starts, self.last_transfer);
        }
        self.index(machine, GATHERED_MAX / machine.parts.len())
    }

    /// Indexes the ids of the transfers stored in each part that has more than
    /// `more_than` of them gathered (0 at the end: every one).
    fn index(&mut self, machine: &mut StateMachine, more_than: usize) -> Result<(), ImageError> {
        if !self
            .gathered
            .iter()
            .any(|gathered| gathered.len() > more_than)
        {
            return Ok(());
        }
        self.tables.adopt_all(machine);
        for (part, gathered) in machine.parts.iter_mut().zip(&mut self.gathered) {
            if gathered.len() > more_than {
                part.index_loaded_ids(gathered, &mut self.scratch)
                    .map_err(appears_twice)?;
            }
        }
        Ok(())
    }

    /// Hands `values` the transfers stored since the last call, to index their user
    /// data: with `all`, every one; without, a part's full chunks, once there are
    /// [`VALUES_BATCH`] of them.
    fn hand_values(&mut self, machine: &StateMachine, values: &mut ValuesFill<'_>, all: bool) {
        for (part, (seen, said)) in self
            .fields_seen
            .iter()
            .zip(&mut self.fields_said)
            .enumerate()
        {
            for field in (0..3).filter(|field| (seen & !*said) & (1 << field) != 0) {
                values.field_in_use(part, field);
            }
            *said = *seen;
        }
        for (part, from) in self.values_from.iter_mut().enumerate() {
            if let Some(batch) = machine.parts[part].values_batch(part, *from, all, VALUES_BATCH) {
                *from = batch.to;
                values.add(batch);
            }
        }
    }
}

/// The user-data fields `transfer` sets, as bits: 0 `user_data_128`, 1 `_64`, 2 `_32`.
fn fields_in_use(transfer: &Transfer) -> u8 {
    u8::from(transfer.user_data_128 != 0)
        | u8::from(transfer.user_data_64 != 0) << 1
        | u8::from(transfer.user_data_32 != 0) << 2
}

fn appears_twice(id: u128) -> ImageError {
    ImageError(format!("transfer {id} appears twice"))
}

/// A point-in-time copy of a [`StateMachine`] ([`StateMachine::freeze`]).
#[derive(Debug, Clone)]
pub struct FrozenState {
    last_timestamp: u64,
    parts: Vec<FrozenPart>,
}

#[derive(Debug, Clone)]
struct FrozenPart {
    accounts: FrozenAccounts,
    transfers: FrozenTransfers,
    pending_statuses: FrozenIdMap<PendingStatus>,
    refunded: FrozenIdMap<u128>,
    failed_ids: FrozenBurnedIds,
}

/// The side tables of a [`FrozenState`], each sorted by id, as a snapshot stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideTables {
    /// The status of every transfer flagged `pending`, by id.
    pub pending_statuses: Vec<(u128, PendingStatus)>,
    /// For every refunded transfer: the total refunded so far, by id.
    pub refunded: Vec<(u128, u128)>,
    /// Transfer ids burned by a transient failure.
    pub failed_ids: Vec<u128>,
}

impl FrozenState {
    /// The plain-data image of the frozen state: accounts in creation order, transfers
    /// in timestamp order, side tables sorted by id. Equal to `image()` of the state at
    /// the moment it was frozen, for any number of parts. A snapshot need not build it:
    /// the accessors below give the same items in the same order, read in place.
    pub fn image(&self) -> StateImage {
        let SideTables {
            pending_statuses,
            refunded,
            failed_ids,
        } = self.side_tables();
        let mut transfers = Vec::with_capacity(self.transfers_len());
        transfers.extend(self.transfers());
        StateImage {
            last_timestamp: self.last_timestamp,
            accounts: self.accounts().collect(),
            transfers,
            pending_statuses,
            refunded,
            failed_ids,
        }
    }

    /// Timestamp of the last event applied when frozen.
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// How many accounts [`FrozenState::accounts`] yields.
    pub fn accounts_len(&self) -> usize {
        self.parts.iter().map(|part| part.accounts.len()).sum()
    }

    /// Every account, in creation order (merged across parts).
    pub fn accounts(&self) -> impl Iterator<Item = Account> + '_ {
        MergeByTimestamp::new(
            self.parts.iter().map(|part| part.accounts.iter()),
            |account: &&Account| account.timestamp,
        )
        .copied()
    }

    /// How many transfers [`FrozenState::transfers`] yields.
    pub fn transfers_len(&self) -> usize {
        self.parts.iter().map(|part| part.transfers.len()).sum()
    }

    /// Every stored transfer, in timestamp order (merged across parts), unpacked one
    /// at a time.
    pub fn transfers(&self) -> impl Iterator<Item = Transfer> + '_ {
        MergeByTimestamp::new(
            self.parts.iter().map(|part| part.transfers.iter()),
            |transfer: &Transfer| transfer.timestamp,
        )
    }

    /// Every stored transfer in timestamp order, in the packed layout
    /// ([`tally_types::packed`]), handed to `run` in runs of
    /// [`tally_types::packed::PACKED_RUN_RECORDS`] records (the last one shorter, none
    /// when empty) as `(records, bytes)`. With one part these are the store's own chunk
    /// bytes, uncopied; with several, the parts are merged and packed again.
    pub fn for_each_packed_run<E>(
        &self,
        mut run: impl FnMut(usize, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if let [part] = self.parts.as_slice() {
            for (records, bytes) in part.transfers.packed_chunks() {
                run(records, bytes)?;
            }
            return Ok(());
        }
        tally_types::packed::pack_in_runs(self.transfers(), run)
    }

    /// The side tables, gathered from every part and sorted by id.
    pub fn side_tables(&self) -> SideTables {
        let mut pending_statuses: Vec<(u128, PendingStatus)> = self
            .parts
            .iter()
            .flat_map(|part| {
                part.pending_statuses
                    .iter()
                    .map(|(id, status)| (*id, *status))
            })
            .collect();
        pending_statuses.sort_unstable_by_key(|(id, _)| *id);
        let mut refunded: Vec<(u128, u128)> = self
            .parts
            .iter()
            .flat_map(|part| part.refunded.iter().map(|(id, total)| (*id, *total)))
            .collect();
        refunded.sort_unstable_by_key(|(id, _)| *id);
        let mut failed_ids =
            Vec::with_capacity(self.parts.iter().map(|part| part.failed_ids.len()).sum());
        for part in &self.parts {
            failed_ids.extend(part.failed_ids.iter());
        }
        failed_ids.sort_unstable();
        SideTables {
            pending_statuses,
            refunded,
            failed_ids,
        }
    }
}

/// Merges per-part streams that are each sorted by timestamp into one sorted stream.
/// Timestamps are unique across parts (one per event), so the order is total.
struct MergeByTimestamp<I: Iterator, K: Fn(&I::Item) -> u64> {
    heads: Vec<std::iter::Peekable<I>>,
    key: K,
}

impl<I: Iterator, K: Fn(&I::Item) -> u64> MergeByTimestamp<I, K> {
    fn new(streams: impl Iterator<Item = I>, key: K) -> Self {
        MergeByTimestamp {
            heads: streams.map(Iterator::peekable).collect(),
            key,
        }
    }
}

impl<I: Iterator, K: Fn(&I::Item) -> u64> Iterator for MergeByTimestamp<I, K> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        if self.heads.len() == 1 {
            return self.heads[0].next();
        }
        let key = &self.key;
        let mut best: Option<(usize, u64)> = None;
        for (index, head) in self.heads.iter_mut().enumerate() {
            if let Some(item) = head.peek() {
                let at = key(item);
                if best.is_none_or(|(_, best_at)| at < best_at) {
                    best = Some((index, at));
                }
            }
        }
        let (index, _) = best?;
        self.heads[index].next()
    }
}

/// Names `fill`'s account on its side of the change event it belongs to, among
/// `changes` (sorted by timestamp): an account of one part, in an event recorded in
/// another after the event was decided there ([`crate::Deltas`]).
fn fill_change(changes: &mut [ChangeEvent], fill: ChangeFill) {
    let (timestamp, transfer_id) = fill.key;
    let from = changes.partition_point(|event| event.timestamp < timestamp);
    let event = changes[from..]
        .iter_mut()
        .take_while(|event| event.timestamp == timestamp)
        .find(|event| event.transfer.id == transfer_id)
        .expect("a change event filled in elsewhere was recorded");
    if fill.credit {
        event.credit_account = fill.account;
    } else {
        event.debit_account = fill.account;
    }
}
