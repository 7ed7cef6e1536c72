//! The transfer store: transfers in timestamp order, in fixed-size chunks that never
//! move. Full chunks are frozen (immutable, shared by `Arc`), so a snapshot keeps them
//! without copying, and growing never copies the store (a `Vec` of 20 M transfers would
//! copy 2.5 GB on its next doubling).

use std::sync::Arc;
use tally_types::Transfer;

/// Transfers per chunk: 65,536 × 128 bytes = 8 MiB.
pub(crate) const CHUNK: usize = 1 << 16;

#[derive(Debug, Clone, Default)]
pub(crate) struct TransferStore {
    /// Full chunks, each exactly [`CHUNK`] long.
    frozen: Vec<Arc<Vec<Transfer>>>,
    /// The chunk being filled (shorter than [`CHUNK`]).
    tail: Vec<Transfer>,
}

impl TransferStore {
    pub fn len(&self) -> usize {
        self.frozen.len() * CHUNK + self.tail.len()
    }

    #[inline]
    pub fn get(&self, position: usize) -> &Transfer {
        let chunk = position / CHUNK;
        match self.frozen.get(chunk) {
            Some(frozen) => &frozen[position % CHUNK],
            None => &self.tail[position - self.frozen.len() * CHUNK],
        }
    }

    pub fn last(&self) -> Option<&Transfer> {
        self.tail
            .last()
            .or_else(|| self.frozen.last().and_then(|chunk| chunk.last()))
    }

    pub fn push(&mut self, transfer: Transfer) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(CHUNK);
        }
        self.tail.push(transfer);
        if self.tail.len() == CHUNK {
            let full = std::mem::take(&mut self.tail);
            self.frozen.push(Arc::new(full));
        }
        debug_assert!(self.tail.len() < CHUNK);
    }

    /// Removes the newest transfer (chain rollback).
    pub fn pop(&mut self) -> Option<Transfer> {
        if self.tail.is_empty() {
            // Undo across a chunk boundary: thaw the last chunk (a copy only if a
            // snapshot still holds it).
            let last = self.frozen.pop()?;
            self.tail = Arc::try_unwrap(last).unwrap_or_else(|shared| shared.as_ref().clone());
        }
        self.tail.pop()
    }

    /// Every transfer, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Transfer> + '_ {
        self.frozen
            .iter()
            .flat_map(|chunk| chunk.iter())
            .chain(self.tail.iter())
    }

    /// A copy that shares the full chunks and copies only the tail (at most 8 MiB).
    pub fn freeze(&self) -> FrozenTransfers {
        FrozenTransfers {
            chunks: self.frozen.clone(),
            tail: self.tail.clone(),
        }
    }
}

/// A point-in-time copy of a [`TransferStore`], cheap to take.
#[derive(Debug, Clone)]
pub(crate) struct FrozenTransfers {
    chunks: Vec<Arc<Vec<Transfer>>>,
    tail: Vec<Transfer>,
}

impl FrozenTransfers {
    pub fn iter(&self) -> impl Iterator<Item = &Transfer> + '_ {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .chain(self.tail.iter())
    }

    pub fn len(&self) -> usize {
        self.chunks.len() * CHUNK + self.tail.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(n: usize) -> Transfer {
        Transfer {
            id: n as u128,
            timestamp: n as u64,
            ..Transfer::default()
        }
    }

    #[test]
    fn positions_survive_chunk_boundaries_pops_and_freezes() {
        let mut store = TransferStore::default();
        for n in 0..CHUNK + 10 {
            store.push(transfer(n));
        }
        assert_eq!(store.len(), CHUNK + 10);
        assert_eq!(store.get(CHUNK - 1).id, (CHUNK - 1) as u128);
        assert_eq!(store.get(CHUNK + 3).id, (CHUNK + 3) as u128);
        let frozen = store.freeze();
        // Pop back across the boundary while the snapshot holds the full chunk.
        for n in (CHUNK - 5..CHUNK + 10).rev() {
            assert_eq!(store.pop().map(|t| t.id), Some(n as u128));
        }
        assert_eq!(store.len(), CHUNK - 5);
        assert_eq!(store.last().map(|t| t.id), Some((CHUNK - 6) as u128));
        // The snapshot still sees what it froze.
        assert_eq!(frozen.len(), CHUNK + 10);
        assert!(frozen.iter().enumerate().all(|(n, t)| t.id == n as u128));
        store.push(transfer(7));
        assert_eq!(store.iter().count(), CHUNK - 4);
    }
}
