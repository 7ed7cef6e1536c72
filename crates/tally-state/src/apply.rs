//! Applying batches: expiry, linked chains, and every check of docs/spec.md §2 in order.
//!
//! The checks are written once, over [`Parts`]: the whole state on one thread (the
//! reference, and replay), or only the parts a shard thread holds for one unit of a plan
//! (`crate::plan`). Every access routes by id with [`Layout::part_of`]; a unit that touches a
//! part it was not planned to hold panics instead of reading the wrong data.

use crate::balance_history::BalanceRow;
use crate::layout::Layout;
use crate::part::{Balances, Part, TransferEntry, TransferRef, expires_at};
use crate::state::StateMachine;
use tally_types::{
    Account, AccountFlags, Batch, ChangeEvent, ChangeKind, NS_PER_S, PendingStatus, ResultCode,
    Transfer, TransferFlags, TransferKind,
};

use ResultCode as R;

/// The parts an apply step can reach. Accounts are reached through the methods below,
/// so that a step deciding a unit without some of its parts (`crate::decide`) can
/// answer for their accounts and turn what it does to them into deltas.
pub(crate) trait Parts {
    /// How the state is cut into parts (held or not).
    fn layout(&self) -> Layout;
    /// The number of parts the state has (held or not).
    #[inline]
    fn count(&self) -> usize {
        self.layout().count()
    }
    /// Part `part`, which must be held.
    fn get(&self, part: usize) -> &Part;
    /// Part `part`, which must be held, for writing.
    fn get_mut(&mut self, part: usize) -> &mut Part;
    /// Runs `visit` on every part held.
    fn each_held(&mut self, visit: impl FnMut(&mut Part));

    /// Where account `id` is, if it exists.
    #[inline]
    fn find_account(&self, id: u128) -> Option<Slot> {
        let part = self.layout().part_of(id);
        let index = self.get(part).account_position(id)?;
        Some(Slot { part, index })
    }
    /// The account at `slot`.
    #[inline]
    fn account(&self, slot: Slot) -> Account {
        self.get(slot.part).accounts[slot.index as usize]
    }
    /// Sets the balances of the account at `slot`.
    #[inline]
    fn set_balances(&mut self, slot: Slot, balances: Balances) {
        self.get_mut(slot.part).set_balances(slot.index, balances);
    }
    /// Appends stored transfer `transfer_ref` to the account's transfer list.
    #[inline]
    fn append_history(&mut self, slot: Slot, transfer_ref: TransferRef) {
        self.get_mut(slot.part)
            .append_history(slot.index, transfer_ref);
    }
    /// Appends the account's balances as they are now to its balance history, when it
    /// keeps one (`history` flag).
    #[inline]
    fn record_balances(&mut self, slot: Slot, timestamp: u64, transfer_ref: TransferRef) {
        record_balances_in(self.get_mut(slot.part), slot.index, timestamp, transfer_ref);
    }
    /// The change event recorded as `key` (its timestamp and transfer id) names the
    /// account at `slot` on its credit side (`credit`) or debit side: the account as it
    /// was recorded, unless the step does not hold its part.
    #[inline]
    fn complete_change(&mut self, _slot: Slot, _key: (u64, u128), _credit: bool) {}
    /// The part whose list keeps a change event of an id whose part is `home`.
    #[inline]
    fn change_list(&self, home: usize) -> usize {
        home
    }
    /// Starts a chain: every held part records how to undo what follows.
    fn begin_chain(&mut self) {
        self.each_held(Part::begin_chain);
    }
    /// Undoes everything since the chain began.
    fn roll_back_chain(&mut self) {
        self.each_held(|part| part.rollback_to(0));
    }
    /// Ends a chain: what it did stands.
    fn end_chain(&mut self) {
        self.each_held(Part::end_chain);
    }
}

/// Appends account `index`'s balances as they are now to its balance history, when it
/// keeps one.
#[inline]
pub(crate) fn record_balances_in(
    part: &mut Part,
    index: u32,
    timestamp: u64,
    transfer_ref: TransferRef,
) {
    let account = &part.accounts[index as usize];
    if account.flags.contains(AccountFlags::HISTORY) {
        let row = BalanceRow {
            timestamp,
            transfer_ref,
            balances: Balances::of(account),
        };
        part.append_balance_row(index, row);
    }
}

impl Parts for [Box<Part>] {
    #[inline]
    fn layout(&self) -> Layout {
        self[0].layout
    }

    #[inline]
    fn get(&self, part: usize) -> &Part {
        &self[part]
    }

    #[inline]
    fn get_mut(&mut self, part: usize) -> &mut Part {
        &mut self[part]
    }

    fn each_held(&mut self, visit: impl FnMut(&mut Part)) {
        self.iter_mut().map(|part| &mut **part).for_each(visit);
    }

    /// Every part is at hand, so one list keeps every event in commit order and
    /// taking them needs no merge.
    #[inline]
    fn change_list(&self, _home: usize) -> usize {
        0
    }
}

/// The parts one shard thread holds while it runs a unit: its own, plus the ones other
/// shards lent it for a unit that spans several parts.
#[derive(Debug)]
pub struct Held {
    layout: Layout,
    slots: Vec<Option<Box<Part>>>,
}

impl Held {
    /// Holding nothing yet, of a state cut as `layout` says.
    pub fn new(layout: Layout) -> Held {
        Held {
            layout,
            slots: (0..layout.count()).map(|_| None).collect(),
        }
    }

    /// Takes `part` in; its slot must be free and it must be of this layout.
    pub fn insert(&mut self, part: Box<Part>) {
        assert_eq!(part.layout, self.layout, "a part of another layout");
        let slot = &mut self.slots[part.index()];
        assert!(slot.is_none(), "part {} held twice", part.index());
        *slot = Some(part);
    }

    /// Gives part `index` up; it must be held.
    pub fn take(&mut self, index: usize) -> Box<Part> {
        self.slots[index]
            .take()
            .unwrap_or_else(|| panic!("part {index} is not held"))
    }

    /// True when part `index` is held.
    pub fn holds(&self, index: usize) -> bool {
        self.slots[index].is_some()
    }
}

impl Parts for Held {
    #[inline]
    fn layout(&self) -> Layout {
        self.layout
    }

    #[inline]
    fn get(&self, part: usize) -> &Part {
        match &self.slots[part] {
            Some(held) => held,
            None => panic!("a unit reached part {part}, which its plan did not give it"),
        }
    }

    #[inline]
    fn get_mut(&mut self, part: usize) -> &mut Part {
        match &mut self.slots[part] {
            Some(held) => held,
            None => panic!("a unit reached part {part}, which its plan did not give it"),
        }
    }

    fn each_held(&mut self, visit: impl FnMut(&mut Part)) {
        self.slots
            .iter_mut()
            .flatten()
            .map(|p| &mut **p)
            .for_each(visit);
    }
}

/// Something with `linked` and `imported` flags and a timestamp, so chains and imports
/// work the same for both batch kinds.
pub(crate) trait Event {
    fn linked(&self) -> bool;
    fn imported(&self) -> bool;
    /// The timestamp the event carries (an imported event's own; 0 otherwise).
    fn given_timestamp(&self) -> u64;
}

impl Event for Account {
    fn linked(&self) -> bool {
        self.flags.contains(AccountFlags::LINKED)
    }

    fn imported(&self) -> bool {
        self.flags.contains(AccountFlags::IMPORTED)
    }

    fn given_timestamp(&self) -> u64 {
        self.timestamp
    }
}

impl Event for Transfer {
    fn linked(&self) -> bool {
        self.flags.contains(TransferFlags::LINKED)
    }

    fn imported(&self) -> bool {
        self.flags.contains(TransferFlags::IMPORTED)
    }

    fn given_timestamp(&self) -> u64 {
        self.timestamp
    }
}

/// Imported timestamps are below 2^63, as TigerBeetle bounds them.
const IMPORTED_TIMESTAMP_MAX: u64 = (1 << 63) - 1;

/// The batch-level checks of imported events, before every other check (docs/spec.md
/// §2): the batch's first event decides whether the batch is imported; an imported
/// event's own timestamp must be in range and before the batch's stamp; any other event
/// must carry none.
#[inline]
fn import_check<E: Event>(batch_imported: bool, event: &E, batch_stamp: u64) -> Option<ResultCode> {
    let given = event.given_timestamp();
    match (batch_imported, event.imported()) {
        (false, false) => (given != 0).then_some(R::TimestampMustBeZero),
        (false, true) => Some(R::ImportedEventNotExpected),
        (true, false) => Some(R::ImportedEventExpected),
        (true, true) if given == 0 || given > IMPORTED_TIMESTAMP_MAX => {
            Some(R::ImportedEventTimestampOutOfRange)
        }
        (true, true) if given >= batch_stamp => Some(R::ImportedEventTimestampMustNotAdvance),
        (true, true) => None,
    }
}

/// Runs event `index` of a batch stamped `stamp`: the import checks, then `execute`.
#[inline]
fn run_event<P: Parts + ?Sized, E: Event>(
    parts: &mut P,
    events: &[E],
    index: usize,
    stamp: u64,
    execute: fn(&mut P, &E, u64) -> ResultCode,
) -> ResultCode {
    let event = &events[index];
    match import_check(events[0].imported(), event, stamp) {
        Some(code) => code,
        None => execute(parts, event, stamp + index as u64),
    }
}

/// The units of a batch from event `from` (the first of a unit), as event ranges: an
/// event that is not linked alone, or a whole linked chain (its linked events and the
/// first unlinked one that closes it; an open chain runs to the end of the batch).
/// Units are what runs all or nothing.
pub(crate) fn unit_ranges<E: Event>(
    events: &[E],
    from: usize,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = from;
    std::iter::from_fn(move || {
        if start >= events.len() {
            return None;
        }
        let mut end = start;
        while end < events.len() && events[end].linked() {
            end += 1;
        }
        let end = (end + 1).min(events.len());
        let range = (start, end);
        start = end;
        Some(range)
    })
}

impl StateMachine {
    /// Applies one batch stamped `timestamp`: first releases every pending transfer that
    /// has expired by then, then applies the events in order, event `i` stamped
    /// `timestamp + i`. Returns one result per event. Afterwards `last_timestamp` is the
    /// last event's stamp (`timestamp` itself for an empty batch).
    ///
    /// Panics if `timestamp` does not move time forward or the batch is larger than
    /// [`tally_types::BATCH_EVENTS_MAX`]: the engine rejects those before they reach
    /// the log.
    pub fn apply(&mut self, timestamp: u64, batch: &Batch) -> Vec<ResultCode> {
        let mut results = self.apply_run(&[(timestamp, batch)]);
        results.pop().expect("one result list per batch")
    }

    /// Applies `batches` in order, each stamped with its timestamp, exactly as
    /// [`StateMachine::apply`] on each in turn would, and returns each batch's results.
    /// The prefetching runs across batch boundaries, so a group of one-payment
    /// submissions applies with as many cache misses in flight as one full batch.
    pub fn apply_run(&mut self, batches: &[(u64, &Batch)]) -> Vec<Vec<ResultCode>> {
        let mut run = self.start_run(batches, true);
        self.run_step(&mut run, usize::MAX);
        run.into_results()
    }

    /// [`StateMachine::apply_run`] without the results: replay of a log, whose results
    /// were answered when it was written.
    pub fn replay(&mut self, batches: &[(u64, &Batch)]) {
        let mut run = self.start_run(batches, false);
        self.run_step(&mut run, usize::MAX);
    }
}

/// Releases, in (instant, id) order, every pending transfer of any part whose expiry
/// instant is at or before `now`. The reference runs this before each batch; a plan
/// turns each such expiry into a unit of its own ([`expire_one`]).
pub(crate) fn expire_due<P: Parts + ?Sized>(parts: &mut P, now: u64) {
    loop {
        let mut next: Option<(u64, u128)> = None;
        for index in 0..parts.count() {
            if let Some(&key) = parts.get(index).expiries.first()
                && key.0 <= now
                && next.is_none_or(|best| key < best)
            {
                next = Some(key);
            }
        }
        let Some(key) = next else {
            break;
        };
        let expired = expire_one(parts, key);
        assert!(expired, "a due expiry is still listed");
    }
}

/// Expires pending transfer `key.1` if it is still waiting on expiry instant `key.0`
/// (a post or void earlier in the group may have settled it). Returns whether it did.
pub(crate) fn expire_one<P: Parts + ?Sized>(parts: &mut P, key: (u64, u128)) -> bool {
    let (_, id) = key;
    let home = parts.get_mut(parts.layout().part_of(id));
    if !home.expiries.remove(&key) {
        return false;
    }
    let pending = home.lookup_transfer(id).expect("expiring transfer exists");
    assert_eq!(home.pending_status.get(&id), Some(&PendingStatus::Pending));
    home.pending_status.insert(id, PendingStatus::Expired);
    let dr_slot = account_slot(parts, pending.debit_account_id).expect("debit account");
    let cr_slot = account_slot(parts, pending.credit_account_id).expect("credit account");
    // An expired closing transfer reopens what it closed.
    set_closed_by(parts, &pending, dr_slot, cr_slot, false);
    release_pending(parts, &pending, 0, dr_slot, cr_slot);
    // Stamped at its instant, which the engine's batch stamping keeps free of events.
    let (instant, _) = key;
    let change = Change {
        timestamp: instant,
        kind: ChangeKind::TwoPhaseExpired,
        transfer_ref: stored_ref(parts, id),
    };
    record_transfer_change(parts, change, pending, dr_slot, cr_slot);
    true
}

/// Runs one unit of `events` (see [`unit_ranges`]): event `i` stamped `timestamp + i`,
/// writing its result to `results[i - start]`. A chain is all or nothing: on the first
/// failure every part it held rolls back.
pub(crate) fn apply_unit<P: Parts + ?Sized, E: Event>(
    parts: &mut P,
    timestamp: u64,
    events: &[E],
    start: usize,
    end: usize,
    execute: fn(&mut P, &E, u64) -> ResultCode,
    results: &mut [ResultCode],
) {
    debug_assert_eq!(results.len(), end - start);
    let last_index = events.len() - 1;
    if !events[start].linked() {
        debug_assert_eq!(end, start + 1);
        results[0] = run_event(parts, events, start, timestamp, execute);
        return;
    }
    parts.begin_chain();
    let mut broken = false;
    for index in start..end {
        let event = &events[index];
        let result = if event.linked() && index == last_index {
            R::LinkedEventChainOpen
        } else if broken {
            R::LinkedEventFailed
        } else {
            run_event(parts, events, index, timestamp, execute)
        };
        results[index - start] = result;
        if result != R::Ok && !broken {
            broken = true;
            parts.roll_back_chain();
            for earlier in &mut results[..index - start] {
                *earlier = R::LinkedEventFailed;
            }
        }
    }
    parts.end_chain();
}

/// An account's part and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Slot {
    pub part: usize,
    pub index: u32,
}

#[inline]
pub(crate) fn account_slot<P: Parts + ?Sized>(parts: &P, id: u128) -> Option<Slot> {
    parts.find_account(id)
}

#[inline]
fn account_at<P: Parts + ?Sized>(parts: &P, slot: Slot) -> Account {
    parts.account(slot)
}

#[inline]
fn set_balances<P: Parts + ?Sized>(parts: &mut P, slot: Slot, balances: Balances) {
    parts.set_balances(slot, balances);
}

/// The reference of stored transfer `id`.
fn stored_ref<P: Parts + ?Sized>(parts: &P, id: u128) -> TransferRef {
    let layout = parts.layout();
    let (count, part) = (layout.count(), layout.part_of(id));
    match parts.get(part).transfer_entry(id) {
        Some(TransferEntry::Stored(position)) => {
            let transfer_ref = position as usize * count + part;
            u32::try_from(transfer_ref).expect("references fit in u32")
        }
        _ => unreachable!("transfer {id} is stored"),
    }
}

fn lookup_transfer<P: Parts + ?Sized>(parts: &P, id: u128) -> Option<Transfer> {
    parts.get(parts.layout().part_of(id)).lookup_transfer(id)
}

fn home_mut<P: Parts + ?Sized>(parts: &mut P, id: u128) -> &mut Part {
    let part = parts.layout().part_of(id);
    parts.get_mut(part)
}

/// Stores a transfer in its id's part and appends it to both accounts' histories.
fn insert_transfer<P: Parts + ?Sized>(
    parts: &mut P,
    transfer: Transfer,
    debit: Slot,
    credit: Slot,
    committed: u64,
) {
    debug_assert_eq!(account_at(parts, debit).id, transfer.debit_account_id);
    debug_assert_eq!(account_at(parts, credit).id, transfer.credit_account_id);
    let transfer_ref = home_mut(parts, transfer.id).store_transfer(transfer);
    for slot in [debit, credit] {
        parts.append_history(slot, transfer_ref);
    }
    let kind = match transfer.kind() {
        Some(TransferKind::SinglePhase) => ChangeKind::SinglePhase,
        Some(TransferKind::Pending) => ChangeKind::TwoPhasePending,
        Some(TransferKind::PostPending) => ChangeKind::TwoPhasePosted,
        Some(TransferKind::VoidPending) => ChangeKind::TwoPhaseVoided,
        Some(TransferKind::Refund) => ChangeKind::Refund,
        None => unreachable!("a stored transfer has a kind"),
    };
    let change = Change {
        timestamp: committed,
        kind,
        transfer_ref,
    };
    record_transfer_change(parts, change, transfer, debit, credit);
}

/// A change to two accounts' balances: when it committed (an expiry's instant), what,
/// and by which stored transfer.
#[derive(Clone, Copy)]
struct Change {
    timestamp: u64,
    kind: ChangeKind,
    transfer_ref: TransferRef,
}

/// Records a transfer's change, with both accounts as they are now, right after it: a
/// balance row for each account with `history`, and the change event in its id's
/// part's list, or the one list of a serial group (when capture is on).
fn record_transfer_change<P: Parts + ?Sized>(
    parts: &mut P,
    change: Change,
    transfer: Transfer,
    debit: Slot,
    credit: Slot,
) {
    let Change {
        timestamp,
        kind,
        transfer_ref,
    } = change;
    // The transfer's own timestamp (an imported one's is in the past).
    let row_timestamp = if kind == ChangeKind::TwoPhaseExpired {
        timestamp
    } else {
        transfer.timestamp
    };
    for slot in [debit, credit] {
        parts.record_balances(slot, row_timestamp, transfer_ref);
    }
    let list = parts.change_list(parts.layout().part_of(transfer.id));
    if !parts.get(list).capturing {
        return;
    }
    let debit_account = account_at(parts, debit);
    let credit_account = account_at(parts, credit);
    parts.get_mut(list).record_change(|| ChangeEvent {
        timestamp,
        kind,
        transfer,
        debit_account,
        credit_account,
    });
    parts.complete_change(debit, (timestamp, transfer.id), false);
    parts.complete_change(credit, (timestamp, transfer.id), true);
}

pub(crate) fn create_account<P: Parts + ?Sized>(
    parts: &mut P,
    a: &Account,
    timestamp: u64,
) -> ResultCode {
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
    if let Some(existing) = home_mut(parts, a.id).lookup_account(a.id) {
        return account_exists_result(a, existing);
    }
    let imported = a.flags.contains(AccountFlags::IMPORTED);
    if imported
        && (a.timestamp <= accounts_timestamp_max(parts) || transfer_stamped(parts, a.timestamp))
    {
        return R::ImportedEventTimestampMustNotRegress;
    }
    // The engine owns balances and timestamps (but an imported account's own).
    let account = Account {
        debits_pending: 0,
        debits_posted: 0,
        credits_pending: 0,
        credits_posted: 0,
        timestamp: if imported { a.timestamp } else { timestamp },
        ..*a
    };
    home_mut(parts, a.id).insert_account(account);
    // The event is stamped when it committed, which keeps events in commit order.
    let list = parts.change_list(parts.layout().part_of(a.id));
    parts.get_mut(list).record_change(|| ChangeEvent {
        timestamp,
        ..ChangeEvent::account_created(account)
    });
    R::Ok
}

/// The latest timestamp of any account (0 without accounts). Reads every part: imported
/// batches run serially, never by plan.
fn accounts_timestamp_max<P: Parts + ?Sized>(parts: &P) -> u64 {
    (0..parts.count())
        .filter_map(|part| parts.get(part).last_account_timestamp())
        .max()
        .unwrap_or(0)
}

/// The latest timestamp of any stored transfer (0 without transfers).
fn transfers_timestamp_max<P: Parts + ?Sized>(parts: &P) -> u64 {
    (0..parts.count())
        .filter_map(|part| parts.get(part).last_transfer_timestamp())
        .max()
        .unwrap_or(0)
}

/// True when a stored transfer has timestamp `timestamp`.
fn transfer_stamped<P: Parts + ?Sized>(parts: &P, timestamp: u64) -> bool {
    (0..parts.count()).any(|part| parts.get(part).transfer_stamped(timestamp))
}

/// True when an account has timestamp `timestamp`.
fn account_stamped<P: Parts + ?Sized>(parts: &P, timestamp: u64) -> bool {
    (0..parts.count()).any(|part| parts.get(part).account_stamped(timestamp))
}

/// The checks of an imported transfer's own timestamp against the ledger (docs/spec.md
/// §2): after every transfer's and equal to no account's, then (with its accounts) after
/// both accounts', then no timeout. `accounts` is `None` for a post or void.
fn imported_checks<P: Parts + ?Sized>(
    parts: &P,
    t: &Transfer,
    accounts: Option<(&Account, &Account)>,
) -> Result<(), ResultCode> {
    if t.timestamp <= transfers_timestamp_max(parts) || account_stamped(parts, t.timestamp) {
        return Err(R::ImportedEventTimestampMustNotRegress);
    }
    if let Some((dr, cr)) = accounts {
        if t.timestamp <= dr.timestamp {
            return Err(R::ImportedEventTimestampMustPostdateDebitAccount);
        }
        if t.timestamp <= cr.timestamp {
            return Err(R::ImportedEventTimestampMustPostdateCreditAccount);
        }
        if t.timeout != 0 {
            return Err(R::ImportedEventTimeoutMustBeZero);
        }
    }
    Ok(())
}

/// When a transfer is stamped: `at` is what it stores (an imported transfer's own
/// timestamp), `committed` the stamp of its place in the log (its change event's).
#[derive(Debug, Clone, Copy)]
struct Stamp {
    at: u64,
    committed: u64,
}

pub(crate) fn create_transfer<P: Parts + ?Sized>(
    parts: &mut P,
    t: &Transfer,
    timestamp: u64,
) -> ResultCode {
    if t.id == 0 {
        return R::IdMustNotBeZero;
    }
    if t.id == u128::MAX {
        return R::IdMustNotBeIntMax;
    }
    let Some(kind) = t.kind() else {
        return R::FlagsAreMutuallyExclusive;
    };
    let home = home_mut(parts, t.id);
    match home.transfer_entry(t.id) {
        Some(TransferEntry::Stored(position)) => {
            let existing = home.transfers.get(position as usize);
            // A post or void giving user data 0 took the pending transfer's. (Looked up
            // only when named alike: a plan holds the part of the id the event names.)
            let settles = matches!(kind, TransferKind::PostPending | TransferKind::VoidPending);
            let pending = match settles && t.pending_id == existing.pending_id {
                true => lookup_transfer(parts, t.pending_id),
                false => None,
            };
            return transfer_exists_result(t, kind, &existing, pending.as_ref());
        }
        Some(TransferEntry::Burned) => return R::IdAlreadyFailed,
        None => {}
    }
    let stamp = Stamp {
        at: if t.flags.contains(TransferFlags::IMPORTED) {
            t.timestamp
        } else {
            timestamp
        },
        committed: timestamp,
    };
    let result = match kind {
        TransferKind::SinglePhase | TransferKind::Pending => {
            create_single_or_pending(parts, t, kind, stamp)
        }
        TransferKind::PostPending | TransferKind::VoidPending => {
            post_or_void(parts, t, kind, stamp)
        }
        TransferKind::Refund => refund(parts, t, stamp),
    };
    if result.is_transient() {
        // Burned for good, even inside a chain that rolls back: a retry must always
        // get the first outcome's meaning.
        let burned = home_mut(parts, t.id).burn(t.id);
        assert!(
            burned,
            "a failed transfer's id was neither stored nor burned"
        );
    }
    result
}

fn create_single_or_pending<P: Parts + ?Sized>(
    parts: &mut P,
    t: &Transfer,
    kind: TransferKind,
    stamp: Stamp,
) -> ResultCode {
    let timestamp = stamp.at;
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
    if t.flags.is_closing() && !pending {
        return R::ClosingTransferMustBePending;
    }
    if t.ledger == 0 {
        return R::LedgerMustNotBeZero;
    }
    if t.code == 0 {
        return R::CodeMustNotBeZero;
    }
    // TigerBeetle's recipe closes an account with a pending transfer of 0.
    if t.amount == 0 && !t.flags.is_closing() {
        return R::AmountMustNotBeZero;
    }
    let Some(dr_slot) = account_slot(parts, t.debit_account_id) else {
        return R::DebitAccountNotFound;
    };
    let Some(cr_slot) = account_slot(parts, t.credit_account_id) else {
        return R::CreditAccountNotFound;
    };
    let dr = account_at(parts, dr_slot);
    let cr = account_at(parts, cr_slot);
    if dr.ledger != cr.ledger {
        return R::AccountsMustHaveTheSameLedger;
    }
    if t.ledger != dr.ledger {
        return R::TransferMustHaveTheSameLedgerAsAccounts;
    }
    if t.flags.contains(TransferFlags::IMPORTED)
        && let Err(code) = imported_checks(parts, t, Some((&dr, &cr)))
    {
        return code;
    }
    if let Err(code) = closed_checks(&dr, &cr) {
        return code;
    }
    let amount = balancing_clamp(t, &dr, &cr);
    let (dr_after, cr_after) = match movement_checks(&dr, &cr, amount, pending) {
        Ok(after) => after,
        Err(code) => return code,
    };
    // Instants are TigerBeetle's u63 nanoseconds: an expiry past i64::MAX overflows.
    if pending
        && t.timeout != 0
        && timestamp
            .checked_add(u64::from(t.timeout) * NS_PER_S)
            .is_none_or(|at| at > tally_types::NOW_NS_MAX)
    {
        return R::OverflowsTimeout;
    }
    if let Err(code) = limit_checks(&dr, &cr, amount) {
        return code;
    }
    set_balances(parts, dr_slot, dr_after);
    set_balances(parts, cr_slot, cr_after);
    set_closed_by(parts, t, dr_slot, cr_slot, true);
    let stored = Transfer {
        amount,
        timestamp,
        ..*t
    };
    insert_transfer(parts, stored, dr_slot, cr_slot, stamp.committed);
    if pending {
        let home = home_mut(parts, t.id);
        home.set_pending_status(t.id, PendingStatus::Pending);
        if t.timeout != 0 {
            home.insert_expiry((expires_at(&stored), t.id));
        }
    }
    R::Ok
}

fn post_or_void<P: Parts + ?Sized>(
    parts: &mut P,
    t: &Transfer,
    kind: TransferKind,
    stamp: Stamp,
) -> ResultCode {
    let timestamp = stamp.at;
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
    let Some(p) = lookup_transfer(parts, t.pending_id) else {
        return R::PendingTransferNotFound;
    };
    if !p.flags.contains(TransferFlags::PENDING) {
        return R::PendingTransferNotPending;
    }
    if let Err(code) = pending_match_checks(t, &p, post) {
        return code;
    }
    match home_mut(parts, p.id).pending_status.get(&p.id) {
        Some(PendingStatus::Pending) => {}
        Some(PendingStatus::Posted) => return R::PendingTransferAlreadyPosted,
        Some(PendingStatus::Voided) => return R::PendingTransferAlreadyVoided,
        Some(PendingStatus::Expired) => return R::PendingTransferExpired,
        None => unreachable!("every pending transfer has a status"),
    }
    if t.flags.contains(TransferFlags::IMPORTED)
        && let Err(code) = imported_checks(parts, t, None)
    {
        return code;
    }
    let amount_posted = if !post {
        0
    } else if t.amount == 0 {
        p.amount
    } else {
        t.amount
    };
    let dr_slot = account_slot(parts, p.debit_account_id).expect("pending's debit account");
    let cr_slot = account_slot(parts, p.credit_account_id).expect("pending's credit account");
    if post {
        let dr = account_at(parts, dr_slot);
        let cr = account_at(parts, cr_slot);
        if let Err(code) = closed_checks(&dr, &cr) {
            return code;
        }
        if dr.debits_posted.checked_add(amount_posted).is_none() {
            return R::OverflowsDebitsPosted;
        }
        if cr.credits_posted.checked_add(amount_posted).is_none() {
            return R::OverflowsCreditsPosted;
        }
    } else {
        // A void of a closing transfer reopens what it closed.
        set_closed_by(parts, &p, dr_slot, cr_slot, false);
    }
    release_pending(parts, &p, amount_posted, dr_slot, cr_slot);
    let home = home_mut(parts, p.id);
    home.set_pending_status(
        p.id,
        if post {
            PendingStatus::Posted
        } else {
            PendingStatus::Voided
        },
    );
    if p.timeout != 0 {
        home.remove_expiry((expires_at(&p), p.id));
    }
    insert_transfer(
        parts,
        Transfer {
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            ledger: p.ledger,
            code: p.code,
            amount: if post { amount_posted } else { p.amount },
            // As TigerBeetle: the pending transfer's user data where the event gives 0,
            // so a lookup by an order id finds the authorisation and its capture.
            user_data_128: or_else(t.user_data_128, p.user_data_128),
            user_data_64: or_else(t.user_data_64, p.user_data_64),
            user_data_32: or_else(t.user_data_32, p.user_data_32),
            timestamp,
            ..*t
        },
        dr_slot,
        cr_slot,
        stamp.committed,
    );
    R::Ok
}

/// Steps 8 and 9 of a post or void: the fields it gives must match pending transfer `p`.
fn pending_match_checks(t: &Transfer, p: &Transfer, post: bool) -> Result<(), ResultCode> {
    if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
        return Err(R::PendingTransferHasDifferentDebitAccountId);
    }
    if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
        return Err(R::PendingTransferHasDifferentCreditAccountId);
    }
    if t.ledger != 0 && t.ledger != p.ledger {
        return Err(R::PendingTransferHasDifferentLedger);
    }
    if t.code != 0 && t.code != p.code {
        return Err(R::PendingTransferHasDifferentCode);
    }
    if post && t.amount > p.amount {
        return Err(R::ExceedsPendingTransferAmount);
    }
    if !post && t.amount != 0 && t.amount != p.amount {
        return Err(R::PendingTransferHasDifferentAmount);
    }
    Ok(())
}

/// `given`, or `filled` when `given` is 0.
fn or_else<T: Default + PartialEq>(given: T, filled: T) -> T {
    if given == T::default() { filled } else { given }
}

/// `debit_account_already_closed`, `credit_account_already_closed`.
#[inline]
fn closed_checks(dr: &Account, cr: &Account) -> Result<(), ResultCode> {
    if dr.flags.contains(AccountFlags::CLOSED) {
        return Err(R::DebitAccountAlreadyClosed);
    }
    if cr.flags.contains(AccountFlags::CLOSED) {
        return Err(R::CreditAccountAlreadyClosed);
    }
    Ok(())
}

/// Closes (`closed`) or reopens the accounts that closing transfer `t` names with its
/// `closing_debit` and `closing_credit` flags; nothing for any other transfer.
#[inline]
fn set_closed_by<P: Parts + ?Sized>(
    parts: &mut P,
    t: &Transfer,
    dr_slot: Slot,
    cr_slot: Slot,
    closed: bool,
) {
    // Out of the payment path: a closing transfer is rare.
    if t.flags.is_closing() {
        close_or_reopen(parts, t, dr_slot, cr_slot, closed);
    }
}

#[cold]
#[inline(never)]
fn close_or_reopen<P: Parts + ?Sized>(
    parts: &mut P,
    t: &Transfer,
    dr_slot: Slot,
    cr_slot: Slot,
    closed: bool,
) {
    for (flag, slot) in [
        (TransferFlags::CLOSING_DEBIT, dr_slot),
        (TransferFlags::CLOSING_CREDIT, cr_slot),
    ] {
        if t.flags.contains(flag) {
            parts.get_mut(slot.part).set_closed(slot.index, closed);
        }
    }
}

/// The amount a single-phase or pending transfer moves: `t.amount`, or for a balancing
/// transfer at most what keeps the debit account's debits (pending and posted) within
/// its posted credits (`balancing_debit`) and the credit account's credits within its
/// posted debits (`balancing_credit`), whatever their limit flags; possibly 0.
#[inline]
fn balancing_clamp(t: &Transfer, dr: &Account, cr: &Account) -> u128 {
    let mut amount = t.amount;
    if !t.flags.is_balancing() {
        return amount;
    }
    if t.flags.contains(TransferFlags::BALANCING_DEBIT) {
        // `overflows_debits` keeps the sum within u128; saturating all the same.
        let debits = dr.debits_pending.saturating_add(dr.debits_posted);
        amount = amount.min(dr.credits_posted.saturating_sub(debits));
    }
    if t.flags.contains(TransferFlags::BALANCING_CREDIT) {
        let credits = cr.credits_pending.saturating_add(cr.credits_posted);
        amount = amount.min(cr.debits_posted.saturating_sub(credits));
    }
    amount
}

/// Takes pending transfer `p`'s whole reservation out of the pending balances and posts
/// `amount_posted` of it (0 for a void or an expiry). `dr_slot` and `cr_slot` are its
/// accounts, which the caller has already found.
fn release_pending<P: Parts + ?Sized>(
    parts: &mut P,
    p: &Transfer,
    amount_posted: u128,
    dr_slot: Slot,
    cr_slot: Slot,
) {
    assert!(amount_posted <= p.amount);
    debug_assert_eq!(account_at(parts, dr_slot).id, p.debit_account_id);
    debug_assert_eq!(account_at(parts, cr_slot).id, p.credit_account_id);
    let mut dr = Balances::of(&account_at(parts, dr_slot));
    let mut cr = Balances::of(&account_at(parts, cr_slot));
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
    set_balances(parts, dr_slot, dr);
    set_balances(parts, cr_slot, cr);
}

fn refund<P: Parts + ?Sized>(parts: &mut P, t: &Transfer, stamp: Stamp) -> ResultCode {
    let timestamp = stamp.at;
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
    let Some(o) = lookup_transfer(parts, refund_of) else {
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
    let refunded_before = home_mut(parts, o.id)
        .refunded
        .get(&o.id)
        .copied()
        .unwrap_or(0);
    let refunded_total = match refunded_before.checked_add(t.amount) {
        Some(total) if total <= o.amount => total,
        _ => return R::ExceedsRefundableAmount,
    };
    let dr_slot = account_slot(parts, o.credit_account_id).expect("original's credit");
    let cr_slot = account_slot(parts, o.debit_account_id).expect("original's debit");
    let dr = account_at(parts, dr_slot);
    let cr = account_at(parts, cr_slot);
    if t.flags.contains(TransferFlags::IMPORTED)
        && let Err(code) = imported_checks(parts, t, Some((&dr, &cr)))
    {
        return code;
    }
    if let Err(code) = closed_checks(&dr, &cr) {
        return code;
    }
    let (dr_after, cr_after) = match movement_checks(&dr, &cr, t.amount, false) {
        Ok(after) => after,
        Err(code) => return code,
    };
    if let Err(code) = limit_checks(&dr, &cr, t.amount) {
        return code;
    }
    set_balances(parts, dr_slot, dr_after);
    set_balances(parts, cr_slot, cr_after);
    home_mut(parts, o.id).set_refunded(o.id, refunded_total);
    insert_transfer(
        parts,
        Transfer {
            debit_account_id: o.credit_account_id,
            credit_account_id: o.debit_account_id,
            ledger: o.ledger,
            code: if t.code == 0 { o.code } else { t.code },
            timestamp,
            ..*t
        },
        dr_slot,
        cr_slot,
        stamp.committed,
    );
    R::Ok
}

/// The overflow checks of a money movement, in the order of docs/spec.md §2; on success, the
/// balances after the movement (pending or posted). A pending movement must also fit the
/// posted balances, which its post would add it to.
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
    }
    let debits_posted = dr
        .debits_posted
        .checked_add(amount)
        .ok_or(R::OverflowsDebitsPosted)?;
    let credits_posted = cr
        .credits_posted
        .checked_add(amount)
        .ok_or(R::OverflowsCreditsPosted)?;
    if !pending {
        dr_after.debits_posted = debits_posted;
        cr_after.credits_posted = credits_posted;
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

/// The answer to a transfer whose id is stored as `e`; `pending`, for a post or void,
/// is the pending transfer it settled.
fn transfer_exists_result(
    t: &Transfer,
    kind: TransferKind,
    e: &Transfer,
    pending: Option<&Transfer>,
) -> ResultCode {
    // Fields the engine fills in when given as 0 are not compared in that case.
    let fills_accounts_ledger_code = matches!(
        kind,
        TransferKind::PostPending | TransferKind::VoidPending | TransferKind::Refund
    );
    let fills_amount = matches!(kind, TransferKind::PostPending | TransferKind::VoidPending);
    let differs =
        |given: u128, stored: u128, filled: bool| !(filled && given == 0) && given != stored;
    // A post or void takes the pending transfer's user data where it gives 0: given as
    // 0 again, the stored value must be the pending transfer's (as TigerBeetle checks).
    let user_data_differs =
        |given: u128, stored: u128, of_pending: fn(&Transfer) -> u128| match pending {
            Some(p) if given == 0 => stored != of_pending(p),
            _ => given != stored,
        };
    // A balancing transfer stored what it moved; a bound at least that is the same request.
    let amount_differs = if t.flags.is_balancing() {
        t.amount < e.amount
    } else {
        differs(t.amount, e.amount, fills_amount)
    };
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
    } else if amount_differs {
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
    } else if user_data_differs(t.user_data_128, e.user_data_128, |p| p.user_data_128) {
        R::ExistsWithDifferentUserData128
    } else if user_data_differs(t.user_data_64.into(), e.user_data_64.into(), |p| {
        p.user_data_64.into()
    }) {
        R::ExistsWithDifferentUserData64
    } else if user_data_differs(t.user_data_32.into(), e.user_data_32.into(), |p| {
        p.user_data_32.into()
    }) {
        R::ExistsWithDifferentUserData32
    } else {
        R::Exists
    }
}
