//! Ids burned by a transient failure (`id_already_failed` for any later use).
//!
//! A set answers lookups; the same ids are also kept in burn order, in chunks that
//! never change once full, so that freezing the state for a snapshot shares the chunks
//! instead of copying the ids on the apply thread. A max-mode run burns millions (users
//! who run dry burn their payments' ids): copying 9.5 M of them stalled the apply thread
//! for 447 ms a snapshot. Burned ids are never un-burned, not even by a chain's
//! rollback, so the list only grows.

use crate::part::IdHasher;
use std::collections::HashSet;
use std::sync::Arc;

/// Ids per chunk: 1 MiB.
const CHUNK: usize = 1 << 16;

#[derive(Debug, Clone, Default)]
pub(crate) struct BurnedIds {
    set: HashSet<u128, IdHasher>,
    /// Full chunks, each exactly [`CHUNK`] ids, in burn order.
    full: Vec<Arc<Vec<u128>>>,
    /// The chunk being filled (fewer than [`CHUNK`] ids).
    tail: Vec<u128>,
}

impl BurnedIds {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn contains(&self, id: &u128) -> bool {
        self.set.contains(id)
    }

    pub fn reserve(&mut self, additional: usize) {
        self.set.reserve(additional);
    }

    /// Burns `id`; false if it was burned already.
    pub fn insert(&mut self, id: u128) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        if self.tail.is_empty() {
            self.tail.reserve_exact(CHUNK);
        }
        self.tail.push(id);
        if self.tail.len() == CHUNK {
            self.full.push(Arc::new(std::mem::take(&mut self.tail)));
        }
        debug_assert_eq!(self.full.len() * CHUNK + self.tail.len(), self.set.len());
        true
    }

    /// A copy that shares the full chunks and copies only the tail (1 MiB at most).
    pub fn freeze(&self) -> FrozenBurnedIds {
        let frozen = FrozenBurnedIds {
            full: self.full.clone(),
            tail: self.tail.clone(),
        };
        // Paired with the set: every burned id is in the list once.
        assert_eq!(frozen.len(), self.len(), "burned ids and their list agree");
        frozen
    }
}

/// A point-in-time copy of [`BurnedIds`]: its ids in burn order.
#[derive(Debug, Clone)]
pub(crate) struct FrozenBurnedIds {
    full: Vec<Arc<Vec<u128>>>,
    tail: Vec<u128>,
}

impl FrozenBurnedIds {
    pub fn len(&self) -> usize {
        self.full.len() * CHUNK + self.tail.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.full
            .iter()
            .flat_map(|chunk| chunk.iter())
            .chain(&self.tail)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_copy_keeps_its_ids_across_chunk_boundaries_while_burning_goes_on() {
        let mut burned = BurnedIds::default();
        let ids = |range: std::ops::Range<usize>| range.map(|n| n as u128 * 7 + 1);
        for id in ids(0..CHUNK + 5) {
            assert!(burned.insert(id));
        }
        assert!(!burned.insert(1), "burning twice is refused");
        let frozen = burned.freeze();
        for id in ids(CHUNK + 5..2 * CHUNK + 9) {
            assert!(burned.insert(id));
        }
        assert_eq!(frozen.len(), CHUNK + 5);
        assert!(frozen.iter().eq(ids(0..CHUNK + 5)));
        let later = burned.freeze();
        assert_eq!(later.len(), burned.len());
        assert!(later.iter().eq(ids(0..2 * CHUNK + 9)));
        assert!(burned.contains(&(7 * (2 * CHUNK as u128 + 8) + 1)));
        assert!(!burned.contains(&2));
    }
}
