//! An id → position index that keeps, per entry, the 4-byte position and 32 bits of
//! the id's hash: 8 bytes instead of the 32 of a `HashMap<u128, u32>` slot (the u128
//! key pads the entry to 32 bytes). The id itself is read back from the record the
//! position names, only when the stored hash bits match; a resize rehashes from the
//! stored bits without touching any record.

use hashbrown::HashTable;
use std::hash::BuildHasher;

/// (position, the upper 32 bits of the id's 64-bit hash).
type Entry = (u32, u32);

/// Seeded per index at random (foldhash), which keeps hash flooding by chosen ids
/// impractical.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdIndex {
    table: HashTable<Entry>,
    hasher: foldhash::fast::RandomState,
}

/// The table's 64-bit hash from the 32 stored bits: hashbrown takes the bucket from the
/// low bits and the 7-bit tag from the top ones. The top half is an odd multiple of the
/// bits (a bijection whose top bits depend on all 32), so the tag stays informative
/// even when the bucket index uses many of the low bits.
#[inline]
fn spread(bits: u32) -> u64 {
    (u64::from(bits.wrapping_mul(0x9e37_79b1)) << 32) | u64::from(bits)
}

impl IdIndex {
    #[inline]
    fn bits(&self, id: u128) -> u32 {
        (self.hasher.hash_one(id) >> 32) as u32
    }

    /// The position of `id`; `id_at` reads the id of the record at a position.
    #[inline]
    pub fn get(&self, id: u128, id_at: impl Fn(u32) -> u128) -> Option<u32> {
        let bits = self.bits(id);
        self.table
            .find(spread(bits), |&(position, b)| {
                b == bits && id_at(position) == id
            })
            .map(|&(position, _)| position)
    }

    /// Adds `id` at `position`, in one probe; false (and nothing changed) when `id` is
    /// already indexed. The record at `position` must already carry `id`.
    pub fn insert(&mut self, id: u128, position: u32, id_at: impl Fn(u32) -> u128) -> bool {
        debug_assert_eq!(id_at(position), id);
        let bits = self.bits(id);
        let entry = self.table.entry(
            spread(bits),
            |&(p, b)| b == bits && id_at(p) == id,
            |&(_, b)| spread(b),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert((position, bits));
                true
            }
        }
    }

    /// Removes `id` (its record must still be readable through `id_at`).
    pub fn remove(&mut self, id: u128, id_at: impl Fn(u32) -> u128) {
        let bits = self.bits(id);
        let found = self.table.find_entry(spread(bits), |&(position, b)| {
            b == bits && id_at(position) == id
        });
        if let Ok(entry) = found {
            entry.remove();
        }
    }

    /// Room for `additional` more ids without a resize.
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |&(_, b)| spread(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
