//! Indexes by user data, for `query_accounts`, `query_transfers` and the filters of
//! `get_account_transfers` (docs/spec.md §2, "Queries").
//!
//! One [`ValueIndex`] per field and record kind, in each part: every record with that
//! field non-zero is on a chain of the records sharing its value, newest first. The head
//! of each chain sits in an [`IdIndex`] keyed by the value (8 bytes a slot, the value
//! read back from the record only when 32 hash bits match); each record's link to the
//! previous one of its value is 4 bytes in a dense array by position.
//!
//! Cost is paid only for fields in use: the link array starts at the first record with a
//! non-zero value, so a ledger that never sets `user_data_64` pays nothing for it but a
//! test of the field per record. Records are only ever added at the end and removed from
//! the end (a chain's rollback), so a chain never has a hole: the newest record of a
//! value is its head, and undoing it restores the head before it.
//!
//! `ledger` and `code` have few values, each shared by many records: their chains also
//! keep marks to enter them by time ([`crate::ledger_code_index`]).

use crate::index::{IdIndex, IndexTable, KnownEntry, slots_for};
use tally_types::{Account, Transfer};

/// Records with the same non-zero value of one field, newest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct ValueIndex {
    /// Value → the newest record's position.
    heads: IdIndex,
    /// The position `links[0]` describes: the first record indexed.
    base: u32,
    /// Per position from `base`: the previous record of the same value, as
    /// `position + 1`; 0 at the oldest of its value, and for records with value 0.
    links: Vec<u32>,
    /// Records to make room for when the first record sets this field (the part's
    /// reserved capacity), so a run never stops to grow a large index.
    reserved: usize,
    /// Take that room from a table prepared elsewhere instead ([`ValueIndex::take_wanted`]):
    /// start small, and ask for it.
    prepared_elsewhere: bool,
    /// Slots of the table asked for and not yet taken by [`ValueIndex::take_wanted`].
    wanted_slots: usize,
}

/// Records a value index starts with when its room is prepared elsewhere: a table of
/// 1 MiB, which faults in page by page as it fills.
const FIRST_USE_RECORDS: usize = 1 << 16;

impl ValueIndex {
    /// Adds the newest record, at `position`, with `value` (0: not indexed).
    #[inline]
    pub fn add(&mut self, value: u128, position: u32, value_at: impl Fn(u32) -> u128) {
        if value == 0 {
            return;
        }
        if self.links.is_empty() {
            self.start(position);
        }
        let slot = (position - self.base) as usize;
        // Entries past the newest indexed record are zeros of records since removed
        // (a rollback): cut them, then fill the records of value 0 up to this one.
        self.links.truncate(slot);
        self.links.resize(slot + 1, 0);
        let link = match self.heads.get(value, &value_at) {
            Some(previous) => {
                let replaced = self.heads.replace(value, position, &value_at);
                debug_assert!(replaced);
                previous + 1
            }
            None => {
                let inserted = self.heads.insert(value, position, &value_at);
                debug_assert!(inserted);
                0
            }
        };
        self.links[slot] = link;
    }

    /// The first record indexed, at `position`: takes the reserved room.
    fn start(&mut self, position: u32) {
        self.base = position;
        if self.reserved > 0 {
            if self.prepared_elsewhere && self.reserved > FIRST_USE_RECORDS {
                self.heads.reserve(FIRST_USE_RECORDS);
                self.wanted_slots = slots_for(self.reserved);
            } else {
                self.heads.reserve(self.reserved);
            }
            self.links.reserve(self.reserved);
            // Once: a field cleared by rollbacks keeps what it took.
            self.reserved = 0;
        }
    }

    /// The entry that [`ValueIndex::add_gathered`] adds for a record with `value`
    /// (not 0) at `position`, the value beside it: adding it reads no record for it.
    #[inline]
    pub fn gather(&self, value: u128, position: u32) -> KnownEntry {
        debug_assert_ne!(value, 0);
        self.heads.gather_known(value, position)
    }

    /// Adds many records at once, newer than every record indexed, as
    /// [`ValueIndex::add`] would one at a time: `entries` from
    /// [`ValueIndex::gather`], in the order of their positions. The heads are
    /// inserted in table order ([`IdIndex::insert_gathered`]).
    pub fn add_gathered(
        &mut self,
        entries: &[KnownEntry],
        scratch: &mut Vec<KnownEntry>,
        value_at: impl Fn(u32) -> u128,
    ) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let (first, last) = (first.position(), last.position());
        if self.links.is_empty() {
            self.start(first);
        }
        assert!(
            first >= self.base + self.links.len() as u32 && last >= first,
            "records are added newest last"
        );
        // Records of value 0 between the newest indexed and these have links of 0.
        self.links.resize((last - self.base) as usize + 1, 0);
        let (links, base) = (&mut self.links, self.base);
        let added = self
            .heads
            .insert_gathered(entries, scratch, value_at, |older, newer| {
                links[(newer - base) as usize] = older + 1;
                Ok::<(), std::convert::Infallible>(())
            });
        let Ok(()) = added;
    }

    /// Removes the newest record, at `position`, with `value`; `value_at` must still
    /// read it.
    pub fn remove_newest(&mut self, value: u128, position: u32, value_at: impl Fn(u32) -> u128) {
        if value == 0 {
            return;
        }
        let slot = (position - self.base) as usize;
        // Entries past it can only be zeros of records of value 0 removed before it.
        assert!(slot < self.links.len(), "only the newest record is removed");
        match self.links[slot] {
            0 => self.heads.remove(value, &value_at),
            previous => {
                let replaced = self.heads.replace(value, previous - 1, &value_at);
                assert!(replaced, "a chain's head is indexed");
            }
        }
        self.links.truncate(slot);
    }

    /// Prefetches the slot looking `value` up probes first.
    #[inline]
    pub fn prefetch_home(&self, value: u128) {
        if value != 0 && !self.links.is_empty() {
            self.heads.prefetch_home(value);
        }
    }

    /// The newest record with `value`.
    pub fn newest(&self, value: u128, value_at: impl Fn(u32) -> u128) -> Option<u32> {
        if value == 0 || self.links.is_empty() {
            return None;
        }
        self.heads.get(value, value_at)
    }

    /// The record before `position` with the same value (`position` must be indexed).
    pub fn older(&self, position: u32) -> Option<u32> {
        let link = self.links[(position - self.base) as usize];
        link.checked_sub(1)
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        self.heads.bytes() + self.links.capacity() * std::mem::size_of::<u32>()
    }

    /// The slots of a table to prepare for this index, once per size: asked for at its
    /// first record when its room is prepared elsewhere, while it is still larger than
    /// the table in use; later, the table a large index grows into
    /// ([`IdIndex::growth_wanted`]).
    pub fn take_wanted(&mut self) -> Option<usize> {
        let wanted = std::mem::take(&mut self.wanted_slots);
        if wanted > self.heads.slots() {
            return Some(wanted);
        }
        self.heads.growth_wanted()
    }

    /// Faults in the table its first record will reserve, before that record comes:
    /// loading a snapshot does it on the thread that fills the index, once the field
    /// is seen in use, so that the first entries go into pages already touched. A
    /// small room is left to the first record.
    pub fn prepare_room(&mut self) {
        let unused = self.links.is_empty() && self.heads.slots() == 0;
        if unused && self.reserved > FIRST_USE_RECORDS {
            self.heads
                .adopt(IndexTable::prefaulted(slots_for(self.reserved)));
        }
    }

    /// Grows into `table`, prepared as [`ValueIndex::take_wanted`] asked; false (and
    /// the table dropped) when the index has outgrown it meanwhile.
    pub fn adopt(&mut self, table: IndexTable) -> bool {
        self.heads.adopt(table)
    }
}

/// The three user-data indexes of one record kind in one part: `user_data_128`,
/// `user_data_64`, `user_data_32`, in that order.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserDataIndexes {
    pub by_field: [ValueIndex; 3],
}

/// A record's user data as the three indexed values.
pub(crate) type UserData = [u128; 3];

/// The user data of an account, as [`UserDataIndexes`] orders it.
pub(crate) fn account_user_data(account: &Account) -> UserData {
    [
        account.user_data_128,
        u128::from(account.user_data_64),
        u128::from(account.user_data_32),
    ]
}

/// The user data of a transfer, as [`UserDataIndexes`] orders it.
pub(crate) fn transfer_user_data(transfer: &Transfer) -> UserData {
    [
        transfer.user_data_128,
        u128::from(transfer.user_data_64),
        u128::from(transfer.user_data_32),
    ]
}

impl UserDataIndexes {
    /// Room for `records` in each index, taken when a record first sets its field.
    pub fn reserve_on_first_use(&mut self, records: usize) {
        for index in &mut self.by_field {
            index.reserved = records;
        }
    }

    /// Whether a field's first record takes its reserved room at once (false, the
    /// default) or starts small and asks for a table prepared elsewhere (true).
    pub fn prepare_elsewhere(&mut self, on: bool) {
        for index in &mut self.by_field {
            index.prepared_elsewhere = on;
            index.heads.grow_elsewhere(on);
        }
    }

    /// Prefetches the slots adding a record with `values` probes first.
    #[inline]
    pub fn prefetch_homes(&self, values: UserData) {
        for (index, value) in self.by_field.iter().zip(values) {
            index.prefetch_home(value);
        }
    }

    /// Adds the newest record (see [`ValueIndex::add`]).
    #[inline]
    pub fn add(&mut self, values: UserData, position: u32, values_at: impl Fn(u32) -> UserData) {
        for (field, index) in self.by_field.iter_mut().enumerate() {
            if values[field] != 0 {
                index.add(values[field], position, |p| values_at(p)[field]);
            }
        }
    }

    /// Gathers the entries of a record with `values` at `position` into `out`, one
    /// list per field, for [`UserDataIndexes::add_gathered`].
    #[inline]
    pub fn gather(&self, values: UserData, position: u32, out: &mut [Vec<KnownEntry>; 3]) {
        for ((index, value), out) in self.by_field.iter().zip(values).zip(out) {
            if value != 0 {
                out.push(index.gather(value, position));
            }
        }
    }

    /// Adds the records gathered by [`UserDataIndexes::gather`], newer than every
    /// record indexed (see [`ValueIndex::add_gathered`]).
    pub fn add_gathered(
        &mut self,
        gathered: &[Vec<KnownEntry>; 3],
        scratch: &mut Vec<KnownEntry>,
        values_at: impl Fn(u32) -> UserData,
    ) {
        for (field, (index, entries)) in self.by_field.iter_mut().zip(gathered).enumerate() {
            index.add_gathered(entries, scratch, |p| values_at(p)[field]);
        }
    }

    /// Removes the newest record (see [`ValueIndex::remove_newest`]).
    pub fn remove_newest(
        &mut self,
        values: UserData,
        position: u32,
        values_at: impl Fn(u32) -> UserData,
    ) {
        for (field, index) in self.by_field.iter_mut().enumerate() {
            index.remove_newest(values[field], position, |p| values_at(p)[field]);
        }
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        self.by_field.iter().map(ValueIndex::bytes).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::SeededRng;

    /// The chain of `value`, newest first.
    fn chain(index: &ValueIndex, value: u128, values: &[u128]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = index.newest(value, |p| values[p as usize]);
        while let Some(position) = at {
            out.push(position);
            at = index.older(position);
        }
        out
    }

    #[test]
    fn chains_match_a_scan_through_adds_and_removals() {
        let mut rng = SeededRng::new(11);
        let mut values: Vec<u128> = Vec::new();
        let mut index = ValueIndex::default();
        for _ in 0..5_000 {
            if !values.is_empty() && rng.below(4) == 0 {
                let position = (values.len() - 1) as u32;
                let value = *values.last().unwrap();
                index.remove_newest(value, position, |p| values[p as usize]);
                values.pop();
            } else {
                // Mostly zero at first, so the link array starts late; few values.
                let value = if rng.below(3) == 0 {
                    0
                } else {
                    u128::from(rng.below(20)) << 70
                };
                values.push(value);
                let position = (values.len() - 1) as u32;
                index.add(value, position, |p| values[p as usize]);
            }
            for value in (1..20u128).map(|v| v << 70) {
                let scanned: Vec<u32> = (0..values.len() as u32)
                    .rev()
                    .filter(|&p| values[p as usize] == value)
                    .collect();
                assert_eq!(chain(&index, value, &values), scanned);
            }
        }
        assert_eq!(index.newest(0, |p| values[p as usize]), None);
    }

    #[test]
    fn records_added_gathered_chain_as_added_one_at_a_time() {
        let mut rng = SeededRng::new(12);
        // Zeros first (the links start late), then few values and many: long chains
        // and chains of one; gathered in flushes of every size, one added alone.
        let values: Vec<u128> = (0..40_000u32)
            .map(|p| match (p < 300, rng.below(3)) {
                (true, _) | (false, 0) => 0,
                (false, 1) => u128::from(rng.below(30)) << 70,
                _ => u128::from(rng.below(1 << 30)) + 1,
            })
            .collect();
        let value_at = |p: u32| values[p as usize];
        let mut one_at_a_time = ValueIndex::default();
        for (position, &value) in values.iter().enumerate() {
            one_at_a_time.add(value, position as u32, value_at);
        }
        let mut gathered = ValueIndex {
            reserved: 1_000,
            ..ValueIndex::default()
        };
        let (mut scratch, mut entries, mut position) = (Vec::new(), Vec::new(), 0usize);
        let mut added_alone = false;
        for flush in [1usize, 0, 7, 492, 5_000, 1, 20_000, usize::MAX] {
            let end = position.saturating_add(flush).min(values.len());
            for (at, &value) in values.iter().enumerate().take(end).skip(position) {
                if value != 0 {
                    entries.push(gathered.gather(value, at as u32));
                }
            }
            gathered.add_gathered(&entries, &mut scratch, value_at);
            entries.clear();
            position = end;
            if position == 500 {
                gathered.add(values[500], 500, value_at);
                position += 1;
                added_alone = true;
            }
        }
        assert!(added_alone);
        assert_eq!(position, values.len());
        assert_eq!(gathered.links, one_at_a_time.links);
        assert_eq!(gathered.base, one_at_a_time.base);
        let mut distinct = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        for &value in &distinct {
            assert_eq!(
                chain(&gathered, value, &values),
                chain(&one_at_a_time, value, &values),
                "{value}"
            );
        }
    }
}
