//! Ids burned by a transient failure (`id_already_failed` for any later use), in burn
//! order.
//!
//! Lookups do not come here: a burned id is an entry of its part's transfer index that
//! names its place in this list ([`crate::part`]), so that checking a new transfer's id
//! is one probe whether it is stored, burned or new. (A separate hash set cost every
//! transfer a second, unprefetched miss once any id was burned.) The list is kept in
//! chunks that never change once full, so that freezing the state for a snapshot shares
//! them instead of copying the ids on the apply thread: a ledger under full load burns
//! millions (users who run dry burn their payments' ids), and copying them all stalled
//! the apply thread for hundreds of milliseconds a snapshot (figures:
//! docs/performance.md). Burned ids are never un-burned, not even by a
//! chain's rollback, so the list only grows.

use std::sync::Arc;

/// Ids per chunk: 1 MiB.
const CHUNK: usize = 1 << 16;

#[derive(Debug, Clone, Default)]
pub(crate) struct BurnedIds {
    /// Full chunks, each exactly [`CHUNK`] ids, in burn order.
    full: Vec<Arc<Vec<u128>>>,
    /// The chunk being filled (fewer than [`CHUNK`] ids).
    tail: Vec<u128>,
}

impl BurnedIds {
    pub fn len(&self) -> usize {
        self.full.len() * CHUNK + self.tail.len()
    }

    /// The id burned `index`-th.
    #[inline]
    pub fn id_at(&self, index: u32) -> u128 {
        let index = index as usize;
        match self.full.get(index / CHUNK) {
            Some(chunk) => chunk[index % CHUNK],
            None => self.tail[index - self.full.len() * CHUNK],
        }
    }

    /// Appends `id`; returns its index. The caller indexes it (once only).
    pub fn push(&mut self, id: u128) -> u32 {
        let index = u32::try_from(self.len()).expect("fewer than 2^32 burned ids");
        if self.tail.is_empty() {
            self.tail.reserve_exact(CHUNK);
        }
        self.tail.push(id);
        if self.tail.len() == CHUNK {
            self.full.push(Arc::new(std::mem::take(&mut self.tail)));
        }
        debug_assert_eq!(self.id_at(index), id);
        index
    }

    /// A copy that shares the full chunks and copies only the tail (1 MiB at most).
    pub fn freeze(&self) -> FrozenBurnedIds {
        let frozen = FrozenBurnedIds {
            full: self.full.clone(),
            tail: self.tail.clone(),
        };
        assert_eq!(
            frozen.len(),
            self.len(),
            "a frozen copy holds every burned id"
        );
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
        for (index, id) in ids(0..CHUNK + 5).enumerate() {
            assert_eq!(burned.push(id), index as u32);
        }
        let frozen = burned.freeze();
        for id in ids(CHUNK + 5..2 * CHUNK + 9) {
            burned.push(id);
        }
        assert_eq!(frozen.len(), CHUNK + 5);
        assert!(frozen.iter().eq(ids(0..CHUNK + 5)));
        let later = burned.freeze();
        assert_eq!(later.len(), burned.len());
        assert!(later.iter().eq(ids(0..2 * CHUNK + 9)));
        for index in [0, CHUNK - 1, CHUNK, 2 * CHUNK, 2 * CHUNK + 8] {
            assert_eq!(burned.id_at(index as u32), index as u128 * 7 + 1);
        }
    }
}
