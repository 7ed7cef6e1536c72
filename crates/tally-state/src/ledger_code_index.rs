//! Indexes by `ledger` and by `code`, for `query_accounts` and `query_transfers` with
//! neither user-data field given (docs/spec.md §2, "Queries").
//!
//! Per field and record kind, in each part: every record is on the chain of the
//! records sharing its value, newest first (a 4-byte link per record, in chunks that
//! never move), and a small table maps each value to its chain's head. A ledger has a
//! handful of values and codes up to 65,535, so the table stays small and no value is
//! read back from the store to confirm a match: the table holds the value itself.
//!
//! A chain alone runs newest first from its head, so a time range long past, or the
//! oldest records first, would mean walking every newer record of the value. So about
//! one record in 64, picked by its position alone ([`marked`]), is also a **mark** of
//! its value: each value keeps its marks' positions, ascending. A range's end is then
//! a binary search among the marks and a walk down from the mark after it (about 64
//! records out of range), and the oldest records come first by walking the stretches
//! between marks one at a time. The marks also estimate how many records of a value
//! fall in a range, so a query with both fields walks the shorter chain.
//!
//! Records are only added at the end and removed from the end (a chain's rollback), so
//! a chain never has a hole: removing its newest record restores the head before it.

use crate::hints::prefetch;

/// Links per chunk: 256 KiB.
const LINK_CHUNK: usize = 1 << 16;

/// One in how many records is a mark, on average.
pub(crate) const MARK_EVERY: u32 = 64;

/// Whether the record at `position` is a mark of its value: a fixed, well-spread pick
/// of one position in [`MARK_EVERY`], the same whenever the index is rebuilt.
#[inline]
pub(crate) fn marked(position: u32) -> bool {
    position.wrapping_mul(0x9E37_79B9) < u32::MAX / MARK_EVERY
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
        if self.tail.len() == LINK_CHUNK {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(LINK_CHUNK));
            self.full.push(full.into_boxed_slice());
        } else if self.tail.capacity() == 0 {
            self.tail.reserve_exact(LINK_CHUNK);
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

/// A value's entry in the table: 0 in `value` marks a free slot (stored records
/// never have a ledger or code of 0).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    value: u32,
    /// The newest record's position + 1; 0 once every record of it is rolled back.
    head: u32,
    /// Its marks: an index into [`FieldChains::marks`] + 1; 0 before its first mark.
    marks: u32,
}

/// The chains of one field (ledger or code) of one record kind in one part.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldChains {
    /// Open addressing by value, linear probing, at most half full; values are never
    /// removed (a rolled-back value keeps an empty slot).
    slots: Vec<Slot>,
    used: usize,
    links: Links,
    /// Per value with marks: their positions, ascending.
    marks: Vec<Vec<u32>>,
}

impl FieldChains {
    /// Where `value`'s probe starts in a table of `slots` slots.
    #[inline]
    fn home(value: u32, slots: usize) -> usize {
        (value.wrapping_mul(0x9E37_79B9) as usize) & (slots - 1)
    }

    /// The slot of `value`, or the free slot where it would go.
    #[inline]
    fn find(&self, value: u32) -> usize {
        debug_assert_ne!(value, 0, "stored records have a ledger and a code");
        let mask = self.slots.len() - 1;
        let mut at = Self::home(value, self.slots.len());
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

    /// Doubles the table (or starts it) when adding a value would fill it past half.
    fn make_room(&mut self) {
        if (self.used + 1) * 2 <= self.slots.len() {
            return;
        }
        let slots = self.slots.len().max(8) * 2;
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); slots]);
        for slot in old.into_iter().filter(|slot| slot.value != 0) {
            let at = self.find(slot.value);
            self.slots[at] = slot;
        }
    }

    /// Prefetches the slot that adding a record with `value` reads first: with many
    /// codes, the table is larger than the nearest caches.
    #[inline]
    pub fn prefetch_home(&self, value: u32) {
        if !self.slots.is_empty() {
            let at = Self::home(value, self.slots.len());
            prefetch(self.slots.as_ptr().wrapping_add(at));
        }
    }

    /// Adds the newest record, at `position`, with `value` (not 0).
    #[inline]
    pub fn add(&mut self, value: u32, position: u32) {
        assert_eq!(
            position as usize,
            self.links.len(),
            "records are added newest last"
        );
        let mut at = if self.slots.is_empty() {
            0
        } else {
            self.find(value)
        };
        if self.slots.get(at).is_none_or(|slot| slot.value != value) {
            self.make_room();
            at = self.find(value);
            self.slots[at].value = value;
            self.used += 1;
        }
        let slot = &mut self.slots[at];
        self.links.push(slot.head);
        slot.head = position + 1;
        if marked(position) {
            if slot.marks == 0 {
                self.marks.push(Vec::new());
                slot.marks = u32::try_from(self.marks.len()).expect("fewer than 2^32 values");
            }
            self.marks[slot.marks as usize - 1].push(position);
        }
    }

    /// Removes the newest record, at `position`, added with `value`.
    pub fn remove_newest(&mut self, value: u32, position: u32) {
        assert_eq!(
            position as usize + 1,
            self.links.len(),
            "only the newest is removed"
        );
        let at = self.find(value);
        let slot = &mut self.slots[at];
        assert!(
            slot.value == value && slot.head == position + 1,
            "the value's newest record"
        );
        slot.head = self.links.pop().expect("a link per record");
        if marked(position) {
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
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.links.bytes()
            + self
                .marks
                .iter()
                .map(|m| m.capacity() * 4 + 24)
                .sum::<usize>()
    }
}

/// The `ledger` and `code` chains of one record kind in one part.
#[derive(Debug, Clone, Default)]
pub(crate) struct LedgerCodeIndex {
    pub ledgers: FieldChains,
    pub codes: FieldChains,
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

    /// The chains of the ledger (`codes` false) or of the code.
    pub fn field(&self, codes: bool) -> &FieldChains {
        if codes { &self.codes } else { &self.ledgers }
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        self.ledgers.bytes() + self.codes.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_and_marks_stay_whole_across_chunks_and_rollbacks() {
        let mut index = LedgerCodeIndex::default();
        let mut model: Vec<(u32, u16)> = Vec::new();
        // Three ledgers and many codes over more than two chunks' worth of records.
        let records = 2 * LINK_CHUNK as u32 + 900;
        for n in 0..records {
            let (ledger, code) = (n % 3 + 1, (n % 1_000) as u16 + 1);
            let position = model.len() as u32;
            index.add(ledger, code, position);
            model.push((ledger, code));
            // Every seventh record rolls back at once, across chunk boundaries too.
            if n % 7 == 0 {
                index.remove_newest(ledger, code, position);
                model.pop();
            }
        }
        let check = |index: &LedgerCodeIndex, model: &[(u32, u16)]| {
            for (codes, value) in [(false, 1), (false, 3), (true, 1), (true, 999), (true, 5)] {
                let field = index.field(codes);
                let of = |r: &(u32, u16)| if codes { u32::from(r.1) } else { r.0 };
                let expected: Vec<u32> = (0..model.len() as u32)
                    .rev()
                    .filter(|&p| of(&model[p as usize]) == value)
                    .collect();
                let mut chain = Vec::new();
                let mut next = field.newest(value);
                while let Some(position) = next {
                    chain.push(position);
                    next = field.older(position);
                }
                assert_eq!(chain, expected, "value {value}");
                let marks: Vec<u32> = expected
                    .iter()
                    .rev()
                    .copied()
                    .filter(|&p| marked(p))
                    .collect();
                assert_eq!(field.marks(value), marks.as_slice());
            }
        };
        check(&index, &model);
        let marks = index.ledgers.marks(1).len();
        let expected = model.len() / 3 / MARK_EVERY as usize;
        assert!(
            marks > expected * 3 / 4 && marks < expected * 5 / 4,
            "{marks} marks"
        );
        // Removing every record empties every chain.
        while let Some(&(ledger, code)) = model.last() {
            index.remove_newest(ledger, code, model.len() as u32 - 1);
            model.pop();
        }
        check(&index, &model);
        assert_eq!(index.codes.newest(7), None);
        assert_eq!(index.ledgers.newest(9), None);
    }
}
