//! An id → position index: open addressing with linear probing over one array of 8-byte
//! slots, each holding a record's 4-byte position and 32 bits of the id's hash (the
//! 32 bytes of a `HashMap<u128, u32>` slot would be mostly padding). The id itself is
//! read back from the record the position names, only when the stored hash bits match;
//! a resize re-places entries from the stored bits without touching any record.
//!
//! One array and no separate control bytes: a lookup's first probe and its neighbours
//! share one cache line, so at a million accounts a lookup costs one index miss where
//! hashbrown's split control bytes and slots cost two (apply is memory-bound).
//!
//! A large index grows a step at a time ([`Move`]): the entries of the table it
//! outgrew move into the new one a few slots per insert, so that no insert waits for
//! all of them (re-placing 46 M entries takes 0.36 s on a quiet 2-core machine).

use crate::hints::{advise_huge_pages, prefetch};
use std::hash::BuildHasher;

/// An empty slot. Occupied slots store `position + 1` in the low half, never 0.
const EMPTY: u64 = 0;

/// The table grows once more than LOAD_NUM / LOAD_DEN of its slots are used: linear
/// probing stays short below three quarters.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;

/// Slots in the first table allocated.
const SLOTS_MIN: usize = 16;

/// [`IdIndex::insert_gathered`] sorts entries by home slot into buckets of 2^this
/// slots, and at most 2^`GATHER_BUCKETS_BITS_MAX` buckets.
const GATHER_BUCKET_SLOTS_BITS: u32 = 13;
const GATHER_BUCKETS_BITS_MAX: u32 = 16;

/// Slots whose ids one call of [`IdIndex::insert_gathered`] remembers, for entries that
/// carry their ids ([`RecentSlots`]): twice a bucket, 512 KiB.
const RECENT_SLOTS: usize = 1 << (GATHER_BUCKET_SLOTS_BITS + 1);

/// What [`IdIndex::insert_gathered`] inserts: an entry made by [`IdIndex::gather`],
/// alone (its id read from its record when its hash bits match a slot's) or with its
/// id beside it ([`KnownEntry`]).
pub(crate) trait Gathered: Copy {
    /// Whether the entry carries its id: then a call also remembers the ids of the
    /// slots it writes, so that an entry matching one of them reads no record.
    const CARRIES_ID: bool;
    fn entry(self) -> u64;
    fn id(self, id_at: &impl Fn(u32) -> u128) -> u128;
}

impl Gathered for u64 {
    const CARRIES_ID: bool = false;

    #[inline]
    fn entry(self) -> u64 {
        self
    }

    #[inline]
    fn id(self, id_at: &impl Fn(u32) -> u128) -> u128 {
        id_at(position_of(self))
    }
}

/// An entry made by [`IdIndex::gather`] with its id beside it: filling the user-data
/// indexes reads each value once, in record order, and the inserts that follow, in
/// table order, would otherwise read the records again at random wherever a value
/// repeats (a post carries its pending transfer's order id, and its entry lands on the
/// pending transfer's slot).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KnownEntry {
    entry: u64,
    /// The id, as two words: 24 bytes an entry, not 32.
    id: [u64; 2],
}

impl KnownEntry {
    #[inline]
    pub fn position(self) -> u32 {
        position_of(self.entry)
    }
}

impl Gathered for KnownEntry {
    const CARRIES_ID: bool = true;

    #[inline]
    fn entry(self) -> u64 {
        self.entry
    }

    #[inline]
    fn id(self, _: &impl Fn(u32) -> u128) -> u128 {
        u128::from(self.id[0]) | u128::from(self.id[1]) << 64
    }
}

/// The ids of the slots one call of [`IdIndex::insert_gathered`] has written, by slot,
/// direct-mapped: the inserts walk the table in order, so a slot whose hash bits an
/// entry matches was mostly written moments before (the id's earlier record in the
/// same call). Empty for entries that do not carry their ids.
struct RecentSlots {
    /// `(slot, id)`; `usize::MAX` where none was written.
    ids: Vec<(usize, u128)>,
}

impl RecentSlots {
    fn new(wanted: bool, slots: usize) -> RecentSlots {
        let len = if wanted { RECENT_SLOTS.min(slots) } else { 0 };
        RecentSlots {
            ids: vec![(usize::MAX, 0); len],
        }
    }

    #[inline]
    fn put(&mut self, at: usize, id: u128) {
        let mask = self.ids.len() - 1;
        self.ids[at & mask] = (at, id);
    }

    #[inline]
    fn get(&self, at: usize) -> Option<u128> {
        let (written, id) = self.ids[at & (self.ids.len() - 1)];
        (written == at).then_some(id)
    }
}

/// From this many slots (8 MiB) on, an index that grows into tables prepared elsewhere
/// ([`IdIndex::grow_elsewhere`]) asks for its next one; a smaller table grows in a blink.
pub(crate) const GROW_ELSEWHERE_SLOTS_MIN: usize = 1 << 20;

/// An index asks for its next table once this share of its slots is used (it grows at
/// [`LOAD_NUM`] / [`LOAD_DEN`]): an eighth of the table's inserts later, time enough for
/// the table to be prepared (at a million inserts a second, 8 s for a table of 64 M
/// slots, which takes 1–3 s to fault in on a virtual machine).
const ASK_NUM: usize = 5;
const ASK_DEN: usize = 8;

/// From this many slots (1 MiB) on, a table that is outgrown moves into the next one a
/// step at a time ([`Move`]); a smaller one moves at once, in well under a millisecond.
const MOVE_FROM_SLOTS: usize = 1 << 17;

/// Slots of the outgrown table moved per entry inserted, at least: with a table twice
/// the size, the move ends after an eighth of the old table's slots in inserts (2 M at
/// 67 M slots), long before the new table fills (a quarter of the new table's slots).
const MOVE_SLOTS_PER_INSERT: usize = 32;

/// Seeded per index at random (foldhash), which keeps hash flooding by chosen ids
/// impractical. foldhash's quality hash, not its fast one: with the fast one, ids that
/// differ only in a few bits (`n << 100`, say) bunched their homes for some seeds, and
/// linear probing then walked runs of thousands of slots.
#[derive(Debug, Clone)]
pub(crate) struct IdIndex {
    /// `bits << 32 | (position + 1)`, or [`EMPTY`]; the length is 0 or a power of two.
    slots: Vec<u64>,
    /// Ids indexed, in `slots` and in the table still moving into it.
    len: usize,
    /// Entries the table holds before it must grow (LOAD_NUM / LOAD_DEN of the slots):
    /// one compare per insert instead of the load arithmetic.
    len_max: usize,
    hasher: foldhash::quality::RandomState,
    /// From how many slots on the next table is asked for ([`IdIndex::growth_wanted`]);
    /// 0: never, the index grows by itself.
    grow_elsewhere_from: usize,
    /// The largest table asked for so far: each is asked for once.
    asked_slots: usize,
    /// The outgrown table whose entries are moving into `slots`.
    moving: Move,
    /// Tables from this many slots on move a step at a time ([`MOVE_FROM_SLOTS`]).
    move_from_slots: usize,
    /// Slots moved per entry inserted ([`MOVE_SLOTS_PER_INSERT`]).
    move_slots_per_insert: usize,
}

impl Default for IdIndex {
    fn default() -> IdIndex {
        IdIndex {
            slots: Vec::new(),
            len: 0,
            len_max: 0,
            hasher: foldhash::quality::RandomState::default(),
            grow_elsewhere_from: 0,
            asked_slots: 0,
            moving: Move::default(),
            move_from_slots: MOVE_FROM_SLOTS,
            move_slots_per_insert: MOVE_SLOTS_PER_INSERT,
        }
    }
}

/// An outgrown table moving into the next one a step at a time, from an empty slot
/// (`start`) onwards, whole runs of occupied slots per step. Since both ends of the
/// moved stretch are empty slots, an entry whose home slot lies in the moved stretch
/// lies in it too (linear probing fills every slot from its home to it), and an entry
/// homed outside it lies outside it. So an id homed in the moved stretch is looked up
/// in the new table only; one homed outside it may be in either: in the old table if
/// it was there before the move, in the new one if inserted since (an insert checks
/// the old table first, so never both). The old table is only read from, except
/// that removals and replacements of entries not yet moved happen in it; its moved
/// stretch keeps stale copies that nothing reads.
#[derive(Debug, Clone, Default)]
struct Move {
    /// The outgrown table, or empty when no move is under way.
    slots: Vec<u64>,
    /// An empty slot of `slots`, where the move began.
    start: usize,
    /// Slots moved from `start` onwards (cyclically); the next one is empty.
    moved: usize,
}

impl Move {
    /// Whether an entry with hash `bits` lies in the moved stretch (true when no move
    /// is under way: every entry is in the new table).
    #[inline]
    fn has_moved(&self, bits: u32) -> bool {
        let slots = self.slots.len();
        slots == 0 || ((bits as usize).wrapping_sub(self.start) & (slots - 1)) < self.moved
    }
}

/// Slots of a table with room for `entries` (a power of two; see [`LOAD_NUM`]).
pub(crate) fn slots_for(entries: usize) -> usize {
    (entries * LOAD_DEN / LOAD_NUM + 1)
        .next_power_of_two()
        .max(SLOTS_MIN)
}

/// `slots` empty slots, advised into huge pages before the first write faults them in:
/// lookups land at random.
fn fresh_table(slots: usize) -> Vec<u64> {
    let table = vec![EMPTY; slots];
    advise_huge_pages(&table);
    table
}

/// An empty table for a user-data index, its memory already faulted in: made on another
/// thread ([`IndexTable::prefaulted`]), then adopted between groups, so that the apply
/// thread never stops to clear fresh pages. On a virtual machine clearing a fresh 2 MiB
/// page took about 4 ms, and the first few hundred random inserts into a fresh table
/// reach all its pages: 0.3 s for a table with room for 6.5 M entries.
#[derive(Debug)]
pub struct IndexTable {
    slots: Vec<u64>,
}

impl IndexTable {
    /// An empty table of `slots` slots (a power of two), in huge pages where the system
    /// gives them, with every page written once.
    pub fn prefaulted(slots: usize) -> IndexTable {
        assert!(slots.is_power_of_two(), "a power of two, not {slots}");
        let mut table = fresh_table(slots);
        const SLOTS_PER_PAGE: usize = 4096 / std::mem::size_of::<u64>();
        for at in (0..slots).step_by(SLOTS_PER_PAGE) {
            // An opaque zero: the store must happen, for its page fault.
            table[at] = std::hint::black_box(EMPTY);
        }
        IndexTable { slots: table }
    }

    /// Slots in the table.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[inline]
fn pack(bits: u32, position: u32) -> u64 {
    assert!(position < u32::MAX, "positions fit below u32::MAX");
    (u64::from(bits) << 32) | u64::from(position + 1)
}

#[inline]
fn bits_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

#[inline]
fn position_of(slot: u64) -> u32 {
    (slot as u32) - 1
}

/// The slot of `slots` (a power of two long, not empty) holding the id whose hash is
/// `bits`, if any; `matches(slot)` checks an occupied slot whose hash bits match.
#[inline]
fn find_in(slots: &[u64], bits: u32, matches: impl Fn(u64) -> bool) -> Option<usize> {
    let mask = slots.len() - 1;
    let mut at = bits as usize & mask;
    loop {
        let slot = slots[at];
        if slot == EMPTY {
            return None;
        }
        if bits_of(slot) == bits && matches(slot) {
            return Some(at);
        }
        at = (at + 1) & mask;
    }
}

/// Puts `entry`, whose id is in no slot, into the first empty slot from its home.
#[inline]
fn place(slots: &mut [u64], entry: u64) {
    let mask = slots.len() - 1;
    let mut at = bits_of(entry) as usize & mask;
    while slots[at] != EMPTY {
        at = (at + 1) & mask;
    }
    slots[at] = entry;
}

/// Empties slot `hole`. The entries after it in its run move back to close the gap,
/// so that every entry stays reachable from its home slot without tombstones (and the
/// run's empty ends stay where they were, or nearer).
fn remove_at(slots: &mut [u64], mut hole: usize) {
    let mask = slots.len() - 1;
    let mut next = (hole + 1) & mask;
    loop {
        let slot = slots[next];
        if slot == EMPTY {
            break;
        }
        let home = bits_of(slot) as usize & mask;
        // The entry at `next` may fill the hole unless its home lies cyclically
        // after the hole, up to `next` (then the hole is not on its probe path).
        let home_after_hole = (next.wrapping_sub(home) & mask) < (next.wrapping_sub(hole) & mask);
        if !home_after_hole {
            slots[hole] = slot;
            hole = next;
        }
        next = (next + 1) & mask;
    }
    slots[hole] = EMPTY;
}

/// Where an id's entry is: which table, and the slot.
#[derive(Debug, Clone, Copy)]
enum Found {
    New(usize),
    Old(usize),
}

impl IdIndex {
    #[inline]
    fn bits(&self, id: u128) -> u32 {
        (self.hasher.hash_one(id) >> 32) as u32
    }

    /// The entry of the id whose hash is `bits`, if any: in the table in use, or in the
    /// one moving into it when the id is homed where the move has not reached.
    #[inline]
    fn find(&self, bits: u32, matches: impl Fn(u64) -> bool) -> Option<Found> {
        if self.slots.is_empty() {
            return None;
        }
        if let Some(at) = find_in(&self.slots, bits, &matches) {
            return Some(Found::New(at));
        }
        if self.moving.has_moved(bits) {
            return None;
        }
        find_in(&self.moving.slots, bits, matches).map(Found::Old)
    }

    /// Overwrites a [`Found`] entry with `entry`, an entry of the same id.
    fn set(&mut self, found: Found, entry: u64) {
        match found {
            Found::New(at) => self.slots[at] = entry,
            Found::Old(at) => self.moving.slots[at] = entry,
        }
    }

    /// The entry of `id`; `id_at` reads the id of the record at a position.
    #[inline]
    fn find_id(&self, id: u128, bits: u32, id_at: impl Fn(u32) -> u128) -> Option<Found> {
        self.find(bits, |slot| id_at(position_of(slot)) == id)
    }

    /// The position of `id`; `id_at` reads the id of the record at a position.
    #[inline]
    pub fn get(&self, id: u128, id_at: impl Fn(u32) -> u128) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let bits = self.bits(id);
        let matches = |slot: u64| id_at(position_of(slot)) == id;
        match find_in(&self.slots, bits, matches) {
            Some(at) => Some(position_of(self.slots[at])),
            None if self.moving.slots.is_empty() => None,
            None => self.not_moved(bits, matches),
        }
    }

    /// The position in the table still moving of the entry with hash `bits` that
    /// `matches`, where the move has not reached it.
    #[cold]
    #[inline(never)]
    fn not_moved(&self, bits: u32, matches: impl Fn(u64) -> bool) -> Option<u32> {
        self.find_not_moved(bits, matches)
            .map(|at| position_of(self.moving.slots[at]))
    }

    /// Starts loading the cache line of `id`'s home slot (see [`crate::prefetch`]), and
    /// of its home in a table still moving, where the move has not reached it.
    #[inline]
    pub fn prefetch_home(&self, id: u128) {
        if !self.slots.is_empty() {
            let bits = self.bits(id);
            let at = bits as usize & (self.slots.len() - 1);
            prefetch(self.slots.as_ptr().wrapping_add(at));
            if !self.moving.slots.is_empty() && !self.moving.has_moved(bits) {
                let old = &self.moving.slots;
                prefetch(old.as_ptr().wrapping_add(bits as usize & (old.len() - 1)));
            }
        }
    }

    /// The position of the first entry on `id`'s probe path whose hash bits match,
    /// found without reading any record, so that the record can be prefetched before
    /// the lookup that checks its id: `id`'s position whenever `id` is indexed, unless
    /// another id with the same 32 hash bits comes first on the path (rare: the bits
    /// come from a hash seeded per index); another id's position (or `None`) when `id`
    /// is not indexed. Only a hint: lookups check the id.
    #[inline]
    pub fn candidate(&self, id: u128) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let bits = self.bits(id);
        match find_in(&self.slots, bits, |_| true) {
            Some(at) => Some(position_of(self.slots[at])),
            None if self.moving.slots.is_empty() => None,
            None => self.not_moved(bits, |_| true),
        }
    }

    /// Adds `id` at `position`, in one probe sequence; false (and nothing changed) when
    /// `id` is already indexed. The record at `position` must already carry `id`.
    #[inline]
    pub fn insert(&mut self, id: u128, position: u32, id_at: impl Fn(u32) -> u128) -> bool {
        debug_assert_eq!(id_at(position), id);
        if self.len >= self.len_max {
            self.reserve(1);
        }
        debug_assert!(self.len < self.len_max);
        if !self.moving.slots.is_empty() {
            return self.insert_moving(id, position, id_at);
        }
        let bits = self.bits(id);
        let mask = self.slots.len() - 1;
        let mut at = bits as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == EMPTY {
                self.slots[at] = pack(bits, position);
                self.len += 1;
                return true;
            }
            if bits_of(slot) == bits && id_at(position_of(slot)) == id {
                return false;
            }
            at = (at + 1) & mask;
        }
    }

    /// [`IdIndex::insert`] while a table moves: the id must be in neither table, and
    /// the move takes its step.
    #[cold]
    #[inline(never)]
    fn insert_moving(&mut self, id: u128, position: u32, id_at: impl Fn(u32) -> u128) -> bool {
        let bits = self.bits(id);
        let matches = |slot: u64| id_at(position_of(slot)) == id;
        if find_in(&self.slots, bits, matches).is_some() || self.not_moved(bits, matches).is_some()
        {
            return false;
        }
        place(&mut self.slots, pack(bits, position));
        self.len += 1;
        self.move_step(self.move_slots_per_insert);
        true
    }

    /// Points `id`'s entry at `position`, a record with the same id (a value index's
    /// newest record of a value); false when `id` has no entry.
    pub fn replace(&mut self, id: u128, position: u32, id_at: impl Fn(u32) -> u128) -> bool {
        let bits = self.bits(id);
        match self.find_id(id, bits, id_at) {
            Some(found) => {
                self.set(found, pack(bits, position));
                true
            }
            None => false,
        }
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        (self.slots.capacity() + self.moving.slots.capacity()) * std::mem::size_of::<u64>()
    }

    /// Removes `id` (its record must still be readable through `id_at`).
    pub fn remove(&mut self, id: u128, id_at: impl Fn(u32) -> u128) {
        let bits = self.bits(id);
        match self.find_id(id, bits, id_at) {
            None => return,
            Some(Found::New(at)) => remove_at(&mut self.slots, at),
            // Within a run the move has not reached: its empty ends stay empty.
            Some(Found::Old(at)) => remove_at(&mut self.moving.slots, at),
        }
        self.len -= 1;
    }

    /// Room for `additional` more ids without a resize.
    #[inline(never)]
    pub fn reserve(&mut self, additional: usize) {
        let wanted = self
            .len
            .checked_add(additional)
            .expect("index size overflows");
        if wanted * LOAD_DEN <= self.slots.len() * LOAD_NUM {
            return;
        }
        self.grow_into(fresh_table(slots_for(wanted)));
    }

    /// Slots in the table now.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Entries the table now takes before the index must grow.
    pub fn room(&self) -> usize {
        self.slots.len() * LOAD_NUM / LOAD_DEN
    }

    /// Whether a large index asks for its next table to be prepared elsewhere
    /// ([`IdIndex::growth_wanted`]) before it must grow; either way it grows by itself
    /// when full.
    pub fn grow_elsewhere(&mut self, on: bool) {
        self.grow_elsewhere_from = if on { GROW_ELSEWHERE_SLOTS_MIN } else { 0 };
    }

    /// The slots of the table this index will grow into, once per size: asked for when
    /// it grows elsewhere, has at least [`GROW_ELSEWHERE_SLOTS_MIN`] slots and is
    /// [`ASK_NUM`] / [`ASK_DEN`] full. The table goes to [`IdIndex::adopt`].
    pub fn growth_wanted(&mut self) -> Option<usize> {
        let slots = self.slots.len();
        let next = slots * 2;
        let asks = self.grow_elsewhere_from > 0 && slots >= self.grow_elsewhere_from;
        if !asks || self.asked_slots >= next || self.len * ASK_DEN < slots * ASK_NUM {
            return None;
        }
        self.asked_slots = next;
        Some(next)
    }

    /// Grows into `table` when it is larger than the table in use, or as large and
    /// this index empty (else drops it and returns false): growth into memory prepared
    /// elsewhere.
    pub fn adopt(&mut self, table: IndexTable) -> bool {
        // An empty index also swaps a table as large, for one faulted in.
        let larger = table.slots.len() > self.slots.len();
        if !(larger || (self.len == 0 && table.slots.len() == self.slots.len())) {
            return false;
        }
        self.grow_into(table.slots);
        true
    }

    /// Makes `table` (empty, a power of two large enough for every entry) the table in
    /// use, and moves the entries into it: all at once from a small table, else a step
    /// at a time ([`Move`]). A move still under way ends first.
    fn grow_into(&mut self, table: Vec<u64>) {
        let slots = table.len();
        assert!(slots.is_power_of_two() && slots * LOAD_NUM >= self.len * LOAD_DEN);
        self.finish_move();
        self.len_max = slots * LOAD_NUM / LOAD_DEN;
        let old = std::mem::replace(&mut self.slots, table);
        if self.len == 0 {
            return;
        }
        if old.len() < self.move_from_slots {
            for slot in old.into_iter().filter(|&slot| slot != EMPTY) {
                place(&mut self.slots, slot);
            }
            return;
        }
        // Not full (it grows at three quarters), so an empty slot to start from.
        let start = old.iter().position(|&slot| slot == EMPTY);
        let start = start.expect("an outgrown table has empty slots");
        self.moving = Move {
            slots: old,
            start,
            moved: 0,
        };
    }

    /// Moves at least `budget` slots of the outgrown table (fewer at its end), up to
    /// the next empty slot; drops the table once every slot has moved. Out of line:
    /// the inserts that call it stay small.
    #[cold]
    #[inline(never)]
    fn move_step(&mut self, budget: usize) {
        let old = &self.moving.slots;
        let (slots, mask) = (old.len(), old.len().wrapping_sub(1));
        let mut moved = self.moving.moved;
        let end = (moved + budget).min(slots);
        while moved < slots && (moved < end || old[(self.moving.start + moved) & mask] != EMPTY) {
            let slot = old[(self.moving.start + moved) & mask];
            if slot != EMPTY {
                place(&mut self.slots, slot);
            }
            moved += 1;
        }
        self.moving.moved = moved;
        if moved == slots {
            self.moving = Move::default();
        }
    }

    /// Ends a move under way at once.
    fn finish_move(&mut self) {
        if !self.moving.slots.is_empty() {
            self.move_step(self.moving.slots.len());
        }
        debug_assert!(self.moving.slots.is_empty());
    }

    /// The entry that [`IdIndex::insert_gathered`] inserts for `id` at `position`:
    /// the hash is taken now, so that the entries can be put in table order.
    #[inline]
    pub fn gather(&self, id: u128, position: u32) -> u64 {
        pack(self.bits(id), position)
    }

    /// [`IdIndex::gather`], the id kept beside the entry.
    #[inline]
    pub fn gather_known(&self, id: u128, position: u32) -> KnownEntry {
        KnownEntry {
            entry: self.gather(id, position),
            id: [id as u64, (id >> 64) as u64],
        }
    }

    /// Inserts many entries made by [`IdIndex::gather`] at once, in the order of their
    /// home slots, so that the inserts walk the table front to back; one at a time,
    /// each would land at random in a table far larger than the cache (loading a
    /// snapshot of 20 M transfers spent most of its time there). Entries of one id
    /// keep their order. When an entry's id is already indexed, at `old`, `found(old,
    /// new)` decides: `Ok` points the id at the new position, `Err` stops (the index
    /// then holds an unspecified part of the rest). `scratch` is working room, kept for
    /// the next call.
    pub fn insert_gathered<G: Gathered, E>(
        &mut self,
        entries: &[G],
        scratch: &mut Vec<G>,
        id_at: impl Fn(u32) -> u128,
        mut found: impl FnMut(u32, u32) -> Result<(), E>,
    ) -> Result<(), E> {
        if entries.is_empty() {
            return Ok(());
        }
        self.reserve(entries.len());
        if !self.moving.slots.is_empty() {
            self.move_step(entries.len().saturating_mul(self.move_slots_per_insert));
        }
        self.sort_gathered(entries, scratch);
        let mask = self.slots.len() - 1;
        let mut recent = RecentSlots::new(G::CARRIES_ID, self.slots.len());
        for &item in scratch.iter() {
            let entry = item.entry();
            let bits = bits_of(entry);
            let id = || item.id(&id_at);
            // Ids are read only when the hash bits match: the records lie at random.
            if let Some(old) = self.find_not_moved(bits, |slot| id_at(position_of(slot)) == id()) {
                found(position_of(self.moving.slots[old]), position_of(entry))?;
                self.moving.slots[old] = entry;
                continue;
            }
            let mut at = bits as usize & mask;
            loop {
                let slot = self.slots[at];
                if slot == EMPTY {
                    self.slots[at] = entry;
                    self.len += 1;
                    break;
                }
                if bits_of(slot) == bits {
                    let known = if G::CARRIES_ID { recent.get(at) } else { None };
                    if known.unwrap_or_else(|| id_at(position_of(slot))) == id() {
                        found(position_of(slot), position_of(entry))?;
                        self.slots[at] = entry;
                        break;
                    }
                }
                at = (at + 1) & mask;
            }
            if G::CARRIES_ID {
                recent.put(at, id());
            }
        }
        debug_assert!(self.len <= self.len_max);
        Ok(())
    }

    /// The slot of the outgrown table holding the id whose hash is `bits`, when a move
    /// is under way and has not reached it.
    #[inline]
    fn find_not_moved(&self, bits: u32, matches: impl Fn(u64) -> bool) -> Option<usize> {
        if self.moving.has_moved(bits) {
            return None;
        }
        find_in(&self.moving.slots, bits, matches)
    }

    /// Puts `entries` into `scratch` in the order of their home slots: a counting sort
    /// by the top bits of the home slot, into buckets of 8,192 slots (64 KiB) or, past
    /// 2^29 slots, up to 2^16 buckets.
    fn sort_gathered<G: Gathered>(&self, entries: &[G], scratch: &mut Vec<G>) {
        let mask = self.slots.len() - 1;
        let table_bits = self.slots.len().trailing_zeros();
        let bucket_bits = table_bits
            .saturating_sub(GATHER_BUCKET_SLOTS_BITS)
            .min(GATHER_BUCKETS_BITS_MAX);
        let shift = table_bits - bucket_bits;
        let bucket = |entry: u64| (bits_of(entry) as usize & mask) >> shift;
        let mut starts = vec![0usize; (1 << bucket_bits) + 1];
        for &item in entries {
            starts[bucket(item.entry()) + 1] += 1;
        }
        for at in 1..starts.len() {
            starts[at] += starts[at - 1];
        }
        scratch.clear();
        if let Some(&first) = entries.first() {
            scratch.resize(entries.len(), first);
        }
        for &item in entries {
            let to = &mut starts[bucket(item.entry())];
            scratch[*to] = item;
            *to += 1;
        }
    }

    /// Ids indexed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Moves tables from `from_slots` slots on, `per_insert` slots per insert.
    #[cfg(test)]
    fn move_in_steps(&mut self, from_slots: usize, per_insert: usize) {
        self.move_from_slots = from_slots;
        self.move_slots_per_insert = per_insert;
    }

    /// Whether a move is under way.
    #[cfg(test)]
    fn is_moving(&self) -> bool {
        !self.moving.slots.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn ids_that_differ_in_a_few_bits_anywhere_spread_over_the_table() {
        // Families of ids `n << shift`: with foldhash's fast hash, about one family in
        // nine bunched its homes for a given seed, up to hundreds of slots from home on
        // average (a lookup then walks them all).
        const IDS: u32 = 12_287; // three quarters of 16,384 slots, less one
        for _ in 0..4 {
            for shift in 0..=112 {
                let mut index = IdIndex::default();
                let id_at = |position: u32| u128::from(position + 1) << shift;
                for position in 0..IDS {
                    assert!(index.insert(id_at(position), position, id_at));
                }
                let mask = index.slots.len() - 1;
                assert_eq!(mask, (1 << 14) - 1);
                let from_home: usize = (index.slots.iter().enumerate())
                    .filter(|&(_, &slot)| slot != EMPTY)
                    .map(|(at, &slot)| at.wrapping_sub(bits_of(slot) as usize) & mask)
                    .sum();
                let mean = from_home as f64 / f64::from(IDS);
                assert!(mean < 4.0, "ids << {shift}: {mean:.1} slots from home");
            }
        }
    }

    #[test]
    fn entries_carrying_their_ids_tell_apart_ids_whose_hash_bits_match() {
        // Two ids of the same 32 hash bits, found by search: the ids carried and the
        // ids remembered for the slots written must be compared whole.
        let mut index = IdIndex::default();
        let mut seen = HashMap::new();
        let (a, b) = (1u128..)
            .find_map(|id| seen.insert(index.bits(id), id).map(|other| (other, id)))
            .unwrap();
        let ids = [a, b, a, b, a];
        let id_at = |position: u32| ids[position as usize];
        let entries: Vec<KnownEntry> = (ids.iter().enumerate())
            .map(|(position, &id)| index.gather_known(id, position as u32))
            .collect();
        let mut found = Vec::new();
        let all_found = index.insert_gathered(&entries, &mut Vec::new(), id_at, |old, new| {
            found.push((old, new));
            Ok::<(), ()>(())
        });
        assert_eq!(all_found, Ok(()));
        assert_eq!(found, [(0, 2), (1, 3), (2, 4)]);
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(a, id_at), Some(4));
        assert_eq!(index.get(b, id_at), Some(3));
    }

    #[test]
    fn ids_inserted_gathered_are_found_and_a_second_of_one_id_is_refused() {
        let ids: Vec<u128> = (0..50_000u128).map(|i| i * 0x9e37_79b9 + 3).collect();
        let id_at = |position: u32| ids[position as usize];
        let mut index = IdIndex::default();
        let mut scratch = Vec::new();
        // Flushes of every size into a table that grows between them.
        for range in [0..1, 1..1, 1..100, 100..30_000, 30_000..50_000] {
            let entries: Vec<u64> = range.map(|p| index.gather(ids[p], p as u32)).collect();
            index
                .insert_gathered(&entries, &mut scratch, id_at, |_, twice| Err(twice))
                .unwrap();
        }
        assert_eq!(index.len(), ids.len());
        for (position, &id) in ids.iter().enumerate() {
            assert_eq!(index.get(id, id_at), Some(position as u32));
        }
        assert_eq!(index.get(7, id_at), None);
        // An id already indexed, and one twice in the same flush: the later refused.
        let mut twice = ids.clone();
        twice.extend([ids[10], 99, 99]);
        let twice_at = |position: u32| twice[position as usize];
        let entries = vec![index.gather(ids[10], 50_000)];
        let refused = index.insert_gathered(&entries, &mut scratch, twice_at, |_, at| Err(at));
        assert_eq!(refused, Err(50_000));
        let entries = vec![index.gather(99, 50_001), index.gather(99, 50_002)];
        let refused =
            index.insert_gathered(&entries, &mut scratch, twice_at, |old, at| Err((old, at)));
        assert_eq!(refused, Err((50_001, 50_002)));
        // Or points the id at the later position.
        let entries = vec![index.gather(ids[10], 50_000)];
        index
            .insert_gathered(&entries, &mut scratch, twice_at, |_, _| Ok::<(), ()>(()))
            .unwrap();
        assert_eq!(index.get(ids[10], twice_at), Some(50_000));
    }

    #[test]
    fn a_large_index_asks_once_for_its_next_table_and_grows_into_it() {
        let ids: Vec<u128> = (0..200u128).map(|i| i * 7 + 1).collect();
        let id_at = |position: u32| ids[position as usize];
        let mut index = IdIndex::default();
        index.grow_elsewhere(true);
        index.grow_elsewhere_from = 64;
        let mut asked = Vec::new();
        for (position, &id) in ids.iter().enumerate().take(90) {
            assert!(index.insert(id, position as u32, id_at));
            asked.extend(index.growth_wanted());
        }
        // Asks for 128 at 40 ids (5/8 of 64), grows by itself to 128 at 48, asks for
        // 256 at 80 (5/8 of 128).
        assert_eq!(index.slots(), 128, "grew by itself at 48 ids");
        assert_eq!(
            asked,
            [128, 256],
            "each size asked for once, the first at 5/8"
        );
        assert!(
            !index.adopt(IndexTable::prefaulted(128)),
            "a table it outgrew"
        );
        assert!(index.adopt(IndexTable::prefaulted(256)));
        assert_eq!(index.slots(), 256);
        for (position, &id) in ids.iter().enumerate().take(90) {
            assert_eq!(index.get(id, id_at), Some(position as u32));
        }
        index.grow_elsewhere(false);
        for (position, &id) in ids.iter().enumerate().skip(90) {
            assert!(index.insert(id, position as u32, id_at));
            assert_eq!(index.growth_wanted(), None, "off: it only grows by itself");
        }
    }

    #[test]
    fn finds_inserts_and_removes_through_the_records() {
        let ids: Vec<u128> = (0..50_000u128).map(|n| n * 7_919 + (n << 70)).collect();
        let mut index = IdIndex::default();
        for (position, id) in ids.iter().enumerate() {
            assert!(index.insert(*id, position as u32, |p| ids[p as usize]));
        }
        assert!(
            !index.insert(ids[5], 5, |p| ids[p as usize]),
            "a second insert is refused"
        );
        for (position, id) in ids.iter().enumerate() {
            assert_eq!(index.get(*id, |p| ids[p as usize]), Some(position as u32));
        }
        assert_eq!(index.get(3, |p| ids[p as usize]), None);
        index.remove(ids[10], |p| ids[p as usize]);
        assert_eq!(index.get(ids[10], |p| ids[p as usize]), None);
        assert_eq!(index.get(ids[11], |p| ids[p as usize]), Some(11));
        assert_eq!(index.len(), ids.len() - 1);
    }

    /// Random inserts and removes, compared with a `HashMap` after every step, on a
    /// table kept small and crowded: removal must keep every other entry reachable
    /// even where runs wrap around the end of the table.
    #[test]
    fn matches_a_hash_map_through_random_inserts_and_removes() {
        let mut rng = crate::test_support::SeededRng::new(7);
        // Few distinct ids, so inserts collide with present ones and removes hit.
        let ids: Vec<u128> = (0..300u128).map(|n| (n << 64) | (n * 31)).collect();
        let mut index = IdIndex::default();
        let mut model: HashMap<u128, u32> = HashMap::new();
        for step in 0..200_000u32 {
            let position = rng.below(ids.len() as u64) as u32;
            let id = ids[position as usize];
            if rng.below(3) == 0 {
                index.remove(id, |p| ids[p as usize]);
                model.remove(&id);
            } else {
                let inserted = index.insert(id, position, |p| ids[p as usize]);
                assert_eq!(
                    inserted,
                    model.insert(id, position).is_none(),
                    "step {step}"
                );
            }
            assert_eq!(index.len(), model.len(), "step {step}");
            if step % 997 == 0 {
                for &probe in &ids {
                    assert_eq!(
                        index.get(probe, |p| ids[p as usize]),
                        model.get(&probe).copied(),
                        "step {step}"
                    );
                }
            }
        }
        for &probe in &ids {
            assert_eq!(
                index.get(probe, |p| ids[p as usize]),
                model.get(&probe).copied()
            );
        }
        // Load stays at or under three quarters.
        assert!(index.len() * LOAD_DEN <= index.slots.len() * LOAD_NUM);
    }

    /// Random inserts, removes, replacements and gathered inserts on an index whose
    /// tables move a slot per insert, grown both by itself and into larger tables
    /// adopted mid-move, compared with a `HashMap` after every step: whatever the
    /// move has reached, every id is found once, where it was last put.
    #[test]
    fn matches_a_hash_map_while_tables_move_a_step_at_a_time() {
        let mut rng = crate::test_support::SeededRng::new(11);
        // Positions name ids: position p is id `ids[p % ids.len()]`, so the records
        // of one id are many (a replacement points it at another of them).
        let ids: Vec<u128> = (0..3_000u128).map(|n| (n << 80) | (n * 97 + 5)).collect();
        let id_at = |position: u32| ids[position as usize % ids.len()];
        let mut index = IdIndex::default();
        index.move_in_steps(16, 1);
        let mut model: HashMap<u128, u32> = HashMap::new();
        let (mut moves_seen, mut scratch) = (0, Vec::new());
        for step in 0..120_000u32 {
            let position = rng.below(ids.len() as u64 * 4) as u32;
            let id = id_at(position);
            match rng.below(10) {
                0..=1 => {
                    index.remove(id, id_at);
                    model.remove(&id);
                }
                2 => {
                    let replaced = index.replace(id, position, id_at);
                    assert_eq!(replaced, model.contains_key(&id), "step {step}");
                    if replaced {
                        model.insert(id, position);
                    }
                }
                3 if step % 7 == 0 => {
                    // A gathered flush of a few entries, later ones of an id winning.
                    let positions: Vec<u32> = (0..rng.below(40))
                        .map(|_| rng.below(ids.len() as u64 * 4) as u32)
                        .collect();
                    let entries: Vec<u64> = positions
                        .iter()
                        .map(|&p| index.gather(id_at(p), p))
                        .collect();
                    index
                        .insert_gathered(&entries, &mut scratch, id_at, |old, new| {
                            assert_eq!(id_at(old), id_at(new));
                            Ok::<(), ()>(())
                        })
                        .unwrap();
                    for p in positions {
                        model.insert(id_at(p), p);
                    }
                }
                4 if step % 1_001 == 0 && index.slots() > 0 => {
                    // A prepared table, twice or four times larger, adopted mid-move.
                    let slots = index.slots() << (1 + rng.below(2));
                    assert!(index.adopt(IndexTable::prefaulted(slots)));
                }
                _ => {
                    let inserted = index.insert(id, position, id_at);
                    assert_eq!(inserted, !model.contains_key(&id), "step {step}");
                    if inserted {
                        model.insert(id, position);
                    }
                }
            }
            moves_seen += usize::from(index.is_moving());
            assert_eq!(index.len(), model.len(), "step {step}");
            if step % 113 == 0 {
                for &probe in &ids {
                    let want = model.get(&probe).copied();
                    assert_eq!(index.get(probe, id_at), want, "step {step}");
                    if let Some(position) = want {
                        // `probe`'s own position, unless an id whose 32 hash bits are
                        // the same (the hash is seeded per index) comes first.
                        let candidate = index.candidate(probe);
                        let collides = |at: u32| {
                            id_at(at) != probe && index.bits(id_at(at)) == index.bits(probe)
                        };
                        assert!(
                            candidate == Some(position) || candidate.is_some_and(collides),
                            "step {step}: {candidate:?} for {position}"
                        );
                    }
                }
            }
        }
        assert!(
            moves_seen > 10_000,
            "moves were under way: {moves_seen} steps"
        );
        index.finish_move();
        for &probe in &ids {
            assert_eq!(index.get(probe, id_at), model.get(&probe).copied());
        }
    }

    /// A large table moves a step at a time: the move is under way after growth, ends
    /// after an eighth of its slots in inserts, and the outgrown table is freed then.
    #[test]
    fn a_large_table_moves_in_steps_and_is_freed_when_moved() {
        let ids: Vec<u128> = (0..400_000u128).map(|n| n * 0x9e37_79b9 + 1).collect();
        let id_at = |position: u32| ids[position as usize];
        let mut index = IdIndex::default();
        let mut grew_at = None;
        for (position, &id) in ids.iter().enumerate() {
            let slots = index.slots();
            assert!(index.insert(id, position as u32, id_at));
            if index.slots() > slots && slots >= MOVE_FROM_SLOTS {
                assert!(index.is_moving(), "{slots} slots move in steps");
                assert_eq!(index.bytes(), (slots + index.slots()) * 8);
                grew_at = Some(position);
            }
            if let Some(grew) = grew_at
                && !index.is_moving()
            {
                let inserts = position - grew;
                assert!(inserts <= slots / MOVE_SLOTS_PER_INSERT + 1, "{inserts}");
                assert_eq!(index.bytes(), index.slots() * 8, "the old table freed");
                grew_at = None;
            }
        }
        assert!(
            index.slots() >= 2 * MOVE_FROM_SLOTS,
            "grew past the threshold"
        );
        for (position, &id) in ids.iter().enumerate() {
            assert_eq!(index.get(id, id_at), Some(position as u32));
        }
    }
}
