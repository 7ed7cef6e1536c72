//! Indexes by `ledger` and by `code`, for `query_accounts` and `query_transfers` with
//! neither user-data field given (docs/spec.md §2, "Queries").
//!
//! Per field and record kind, in each part: every record is on the chain of the
//! records sharing its value, newest first (a 4-byte link per record, in chunks that
//! never move), and a table maps each value to its chain's head. Ledgers are usually
//! few and codes at most 65,535, so the table stays small, and it holds the value
//! itself: no record is read back from the store to confirm a match. The table's hash
//! is seeded at random, as the id indexes' are, so chosen values cannot flood it.
//!
//! A chain alone runs newest first from its head, so a time range long past, or the
//! oldest records first, would mean walking every newer record of the value. So the
//! first record of each value and every [`MARK_EVERY`]th after it is also a **mark**:
//! each value keeps its marks' positions, ascending. A range's end is then a binary
//! search among the marks and a walk down from the mark after it (fewer than
//! [`MARK_EVERY`] records out of range), and the oldest records come first by walking
//! the stretches between marks, [`MARK_EVERY`] records each, one at a time. The marks
//! also count a value's records in a range to within [`MARK_EVERY`], so a query with
//! both fields walks the shorter chain.
//!
//! Records are only added at the end and removed from the end (a chain's rollback), so
//! a chain never has a hole: removing its newest record restores the head before it.

use crate::hints::prefetch;
use std::hash::BuildHasher;

/// Links per chunk: 256 KiB.
const LINK_CHUNK: usize = 1 << 16;

/// Records of a value per mark: a stretch between two marks. Smaller in unit tests, so
/// that their small ledgers have many stretches.
pub(crate) const MARK_EVERY: u32 = if cfg!(test) { 4 } else { 64 };

/// From this many slots (64 KiB) on, adding a record prefetches its value's slot:
/// a smaller table stays in the nearest caches.
const PREFETCH_FROM_SLOTS: usize = 1 << 12;

/// Which field a chain is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Ledger,
    Code,
}

/// Per position: the previous record of the same value, as `position + 1` (0 at the
/// oldest of its value).
#[derive(Debug, Clone, Default)]
struct Links {
    /// Full chunks, each exactly [`LINK_CHUNK`] links.
    full: Vec<Box<[u32]>>,
    /// The chunk being filled.
    tail: Vec<u32>,
}

impl Links {
    fn len(&self) -> usize {
        self.full.len() * LINK_CHUNK + self.tail.len()
    }

    #[inline]
    fn get(&self, position: usize) -> u32 {
        match self.full.get(position / LINK_CHUNK) {
            Some(chunk) => chunk[position % LINK_CHUNK],
            None => self.tail[position - self.full.len() * LINK_CHUNK],
        }
    }

    #[inline]
    fn push(&mut self, link: u32) {
        // The first chunk grows as a vector does, so that a small ledger holds little.
        if self.tail.len() == LINK_CHUNK {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(LINK_CHUNK));
            self.full.push(full.into_boxed_slice());
        }
        self.tail.push(link);
    }

    fn pop(&mut self) -> Option<u32> {
        if self.tail.is_empty() {
            self.tail = self.full.pop()?.into_vec();
        }
        self.tail.pop()
    }

    fn bytes(&self) -> usize {
        (self.full.len() * LINK_CHUNK + self.tail.capacity()) * std::mem::size_of::<u32>()
    }
}

/// A value's entry in the table: 0 in `value` marks a free slot. A record's ledger or
/// code is never 0; one that is (from a damaged image) is left off every chain.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    value: u32,
    /// The newest record's position + 1; 0 once every record of it is rolled back.
    head: u32,
    /// Its records: the next one is a mark when this is a multiple of [`MARK_EVERY`].
    count: u32,
    /// Its marks: an index into [`FieldChains::marks`] + 1; 0 before its first mark.
    marks: u32,
}

/// The chains of one field of one record kind in one part.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldChains {
    /// Open addressing by value, linear probing, at most half full; values are never
    /// removed (a rolled-back value keeps its slot, with no head).
    slots: Vec<Slot>,
    used: usize,
    /// The slot of the value added last: most records repeat their predecessor's
    /// ledger, so most adds skip the hash (checked against the slot, so never stale).
    last_at: usize,
    /// The quality hasher: with the fast one, values that share their low bits (codes
    /// in steps of 2^16) made a probe run of 99 for about one seed in 300.
    hasher: foldhash::quality::RandomState,
    links: Links,
    /// Per value: its marks' positions, ascending.
    marks: Vec<Vec<u32>>,
}

impl FieldChains {
    /// Where `value`'s probe starts (the table is not empty).
    #[inline]
    fn home(&self, value: u32) -> usize {
        ((self.hasher.hash_one(value) >> 32) as usize) & (self.slots.len() - 1)
    }

    /// The slot of `value` (not 0), or the free slot where it would go.
    #[inline]
    fn find(&self, value: u32) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.home(value);
        loop {
            let slot = self.slots[at];
            if slot.value == value || slot.value == 0 {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    fn slot(&self, value: u32) -> Option<&Slot> {
        if self.slots.is_empty() || value == 0 {
            return None;
        }
        let slot = &self.slots[self.find(value)];
        (slot.value == value).then_some(slot)
    }

    /// The slot of `value` (not 0), taken if it has none.
    #[inline]
    fn slot_taken(&mut self, value: u32) -> usize {
        if self
            .slots
            .get(self.last_at)
            .is_some_and(|slot| slot.value == value)
        {
            return self.last_at;
        }
        let at = self.slot_taken_by_hash(value);
        self.last_at = at;
        at
    }

    fn slot_taken_by_hash(&mut self, value: u32) -> usize {
        if let Some(at) = (!self.slots.is_empty()).then(|| self.find(value))
            && self.slots[at].value == value
        {
            return at;
        }
        // Doubles the table (or starts it) when one more value would fill it past half.
        if (self.used + 1) * 2 > self.slots.len() {
            let slots = self.slots.len().max(8) * 2;
            let old = std::mem::replace(&mut self.slots, vec![Slot::default(); slots]);
            for slot in old.into_iter().filter(|slot| slot.value != 0) {
                let at = self.find(slot.value);
                self.slots[at] = slot;
            }
        }
        let at = self.find(value);
        self.slots[at].value = value;
        self.used += 1;
        at
    }

    /// Prefetches the slot that adding a record with `value` reads first: with many
    /// codes, the table is larger than the nearest caches.
    #[inline]
    pub fn prefetch_home(&self, value: u32) {
        if self.slots.len() >= PREFETCH_FROM_SLOTS {
            prefetch(self.slots.as_ptr().wrapping_add(self.home(value)));
        }
    }

    /// Adds the newest record, at `position`, with `value` (0: on no chain).
    #[inline]
    pub fn add(&mut self, value: u32, position: u32) {
        let added = position as usize == self.links.len();
        assert!(added, "records are added newest last");
        if value == 0 {
            self.links.push(0);
            return;
        }
        let at = self.slot_taken(value);
        let slot = &mut self.slots[at];
        self.links.push(slot.head);
        slot.head = position + 1;
        let mark = slot.count.is_multiple_of(MARK_EVERY);
        slot.count += 1;
        if mark {
            if slot.marks == 0 {
                self.marks.push(Vec::new());
                slot.marks = u32::try_from(self.marks.len()).expect("fewer than 2^32 values");
            }
            self.marks[slot.marks as usize - 1].push(position);
        }
    }

    /// Removes the newest record, at `position`, added with `value`.
    pub fn remove_newest(&mut self, value: u32, position: u32) {
        let newest = position as usize + 1 == self.links.len();
        assert!(newest, "only the newest record is removed");
        let link = self.links.pop().expect("a link per record");
        if value == 0 {
            return;
        }
        let at = self.find(value);
        let slot = &mut self.slots[at];
        let on_chain = slot.value == value && slot.head == position + 1;
        assert!(on_chain, "the newest record heads its value's chain");
        slot.head = link;
        slot.count -= 1;
        if slot.count.is_multiple_of(MARK_EVERY) {
            let marks = &mut self.marks[slot.marks as usize - 1];
            assert_eq!(marks.pop(), Some(position), "a mark is its value's newest");
        }
    }

    /// The newest record with `value`.
    pub fn newest(&self, value: u32) -> Option<u32> {
        self.slot(value)?.head.checked_sub(1)
    }

    /// The record before `position` with the same value.
    #[inline]
    pub fn older(&self, position: u32) -> Option<u32> {
        self.links.get(position as usize).checked_sub(1)
    }

    /// The positions of `value`'s marks, ascending.
    pub fn marks(&self, value: u32) -> &[u32] {
        match self.slot(value) {
            Some(slot) if slot.marks > 0 => &self.marks[slot.marks as usize - 1],
            _ => &[],
        }
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        let marks: usize = self.marks.iter().map(|marks| marks.capacity() * 4).sum();
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.links.bytes()
            + self.marks.capacity() * std::mem::size_of::<Vec<u32>>()
            + marks
    }
}

/// The `ledger` and `code` chains of one record kind in one part.
#[derive(Debug, Clone, Default)]
pub(crate) struct LedgerCodeIndex {
    ledgers: FieldChains,
    codes: FieldChains,
}

impl LedgerCodeIndex {
    /// Adds the newest record, at `position`.
    #[inline]
    pub fn add(&mut self, ledger: u32, code: u16, position: u32) {
        self.ledgers.add(ledger, position);
        self.codes.add(u32::from(code), position);
    }

    /// Prefetches the slots that adding a record with these values reads first.
    #[inline]
    pub fn prefetch_homes(&self, ledger: u32, code: u16) {
        self.ledgers.prefetch_home(ledger);
        self.codes.prefetch_home(u32::from(code));
    }

    /// Removes the newest record, at `position`, added with these values.
    pub fn remove_newest(&mut self, ledger: u32, code: u16, position: u32) {
        self.ledgers.remove_newest(ledger, position);
        self.codes.remove_newest(u32::from(code), position);
    }

    /// The chains of one field.
    pub fn field(&self, field: Field) -> &FieldChains {
        match field {
            Field::Ledger => &self.ledgers,
            Field::Code => &self.codes,
        }
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        self.ledgers.bytes() + self.codes.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain of `value` and its marks, from the index and from a scan of `model`.
    fn chain_and_marks(
        index: &LedgerCodeIndex,
        model: &[(u32, u16)],
        field: Field,
        value: u32,
    ) -> [(Vec<u32>, Vec<u32>); 2] {
        let chains = index.field(field);
        let mut chain = Vec::new();
        let mut next = chains.newest(value);
        while let Some(position) = next {
            chain.push(position);
            next = chains.older(position);
        }
        let of = |r: &(u32, u16)| match field {
            Field::Ledger => r.0,
            Field::Code => u32::from(r.1),
        };
        let scanned: Vec<u32> = (0..model.len() as u32)
            .rev()
            .filter(|&p| value != 0 && of(&model[p as usize]) == value)
            .collect();
        // The oldest record and every MARK_EVERY-th after it.
        let every = MARK_EVERY as usize;
        let marks = scanned.iter().rev().step_by(every).copied().collect();
        [(chain, chains.marks(value).to_vec()), (scanned, marks)]
    }

    #[test]
    fn chains_and_marks_stay_whole_across_chunks_and_rollbacks() {
        let mut index = LedgerCodeIndex::default();
        let mut model: Vec<(u32, u16)> = Vec::new();
        // Three ledgers (and 0, from a damaged image) and many codes over more than two
        // chunks' worth of records.
        for n in 0..2 * LINK_CHUNK as u32 + 900 {
            let (ledger, code) = (n % 4, (n % 1_000) as u16 + 1);
            let position = model.len() as u32;
            index.add(ledger, code, position);
            model.push((ledger, code));
            // Every seventh record rolls back at once, across chunk boundaries too.
            if n % 7 == 0 {
                index.remove_newest(ledger, code, position);
                model.pop();
            }
        }
        let values = [
            (Field::Ledger, 1),
            (Field::Ledger, 3),
            (Field::Ledger, 0),
            (Field::Code, 1),
            (Field::Code, 999),
            (Field::Code, 5_000),
        ];
        for (field, value) in values {
            let [indexed, scanned] = chain_and_marks(&index, &model, field, value);
            assert_eq!(indexed, scanned, "{field:?} {value}");
        }
        // Removing every record empties every chain.
        while let Some(&(ledger, code)) = model.last() {
            index.remove_newest(ledger, code, model.len() as u32 - 1);
            model.pop();
        }
        for (field, value) in values {
            let [indexed, scanned] = chain_and_marks(&index, &model, field, value);
            assert_eq!(indexed, scanned, "{field:?} {value}");
            assert!(indexed.0.is_empty() && indexed.1.is_empty());
        }
    }

    #[test]
    fn many_values_that_share_low_bits_stay_cheap() {
        // Multiples of 2^16: a hash keeping only the value's low bits would probe on.
        let mut chains = FieldChains::default();
        for position in 0..50_000u32 {
            chains.add((position % 5_000 + 1) << 16, position);
        }
        assert_eq!(chains.used, 5_000);
        assert_eq!(chains.newest(7 << 16), Some(45_006));
        let longest = (1..=5_000u32)
            .map(|value| {
                let mut at = chains.home(value << 16);
                let mut probes = 1;
                while chains.slots[at].value != value << 16 {
                    at = (at + 1) & (chains.slots.len() - 1);
                    probes += 1;
                }
                probes
            })
            .max();
        assert!(longest < Some(64), "{longest:?} probes");
    }
}
