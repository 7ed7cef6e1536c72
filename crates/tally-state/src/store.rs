//! The transfer store: transfers in timestamp order, packed, in fixed-size chunks that
//! never move.
//!
//! * **Packed.** A transfer is 128 bytes in the log, but most of it is zeros or small
//!   numbers. In memory each record is in the packed layout of [`tally_types::packed`]
//!   (a presence byte, varints, the 8-byte timestamp): about 30–40 bytes for a payment.
//!   Snapshots store the same layout, so a chunk's bytes are written out as they are,
//!   and a full run read back on one part becomes a chunk as it is.
//! * **Chunked.** Full chunks are frozen (immutable, shared by `Arc`), so a snapshot
//!   keeps them without copying, and growing never copies the store.

use crate::value_index::UserData;
use std::sync::Arc;
use tally_types::packed::{
    decode_transfer_trusted as decode, encode_transfer, transfer_id_trusted,
    transfer_user_data_trusted,
};
use tally_types::{Account, Transfer};

/// Bytes a payment takes packed (about 30); a chunk's bytes are reserved for this many
/// per record.
const TYPICAL_RECORD_BYTES: usize = 32;

/// Transfers per chunk: a snapshot's run of packed transfers, so that it writes full
/// chunks as they are.
pub(crate) const CHUNK: usize = tally_types::packed::PACKED_RUN_RECORDS;

/// Packed records and where each starts.
#[derive(Debug, Clone, Default)]
struct Chunk {
    bytes: Vec<u8>,
    starts: Vec<u32>,
}

impl Chunk {
    fn get(&self, index: usize) -> Transfer {
        let start = self.starts[index] as usize;
        decode(&self.bytes[start..]).0
    }

    /// The id of record `index`, without unpacking the rest.
    fn id_at(&self, index: usize) -> u128 {
        let start = self.starts[index] as usize;
        transfer_id_trusted(&self.bytes[start..])
    }

    /// The user data of record `index`, without unpacking the rest.
    fn user_data_at(&self, index: usize) -> UserData {
        let start = self.starts[index] as usize;
        transfer_user_data_trusted(&self.bytes[start..])
    }

    fn iter(&self) -> impl Iterator<Item = Transfer> + '_ {
        let mut rest = self.bytes.as_slice();
        (0..self.starts.len()).map(move |_| {
            let (transfer, used) = decode(rest);
            rest = &rest[used..];
            transfer
        })
    }
}

/// Every record of full chunks then a tail, unpacked, oldest first.
fn records<'a>(full: &'a [Arc<Chunk>], tail: &'a Chunk) -> impl Iterator<Item = Transfer> + 'a {
    full.iter()
        .flat_map(|chunk| chunk.iter())
        .chain(tail.iter())
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TransferStore {
    /// Full chunks, each exactly [`CHUNK`] records.
    frozen: Vec<Arc<Chunk>>,
    /// The chunk being filled (fewer than [`CHUNK`] records).
    tail: Chunk,
    /// The newest record's timestamp (0 when empty), so appends check order cheaply.
    last_timestamp: u64,
}

impl TransferStore {
    pub fn len(&self) -> usize {
        self.frozen.len() * CHUNK + self.tail.starts.len()
    }

    /// The chunk holding `position`, and the record's index in it.
    #[inline]
    fn locate(&self, position: usize) -> (&Chunk, usize) {
        match self.frozen.get(position / CHUNK) {
            Some(frozen) => (frozen, position % CHUNK),
            None => (&self.tail, position - self.frozen.len() * CHUNK),
        }
    }

    #[inline]
    pub fn get(&self, position: usize) -> Transfer {
        let (chunk, index) = self.locate(position);
        chunk.get(index)
    }

    /// The id of the transfer at `position`, without unpacking the rest.
    #[inline]
    pub fn id_at(&self, position: usize) -> u128 {
        let (chunk, index) = self.locate(position);
        chunk.id_at(index)
    }

    /// The user data of the transfer at `position` (as
    /// [`crate::value_index::transfer_user_data`] gives it), without unpacking the rest.
    #[inline]
    pub fn user_data(&self, position: usize) -> UserData {
        let (chunk, index) = self.locate(position);
        chunk.user_data_at(index)
    }

    /// Where the start offset of the record at `position` is kept (for prefetching),
    /// `None` past the end.
    #[inline]
    pub fn start_address(&self, position: usize) -> Option<*const u32> {
        let (chunk, index) = self.locate(position);
        chunk.starts.get(index).map(std::ptr::from_ref)
    }

    /// Where the packed record at `position` begins (for prefetching), `None` past the
    /// end. Reads its start offset.
    #[inline]
    pub fn record_address(&self, position: usize) -> Option<*const u8> {
        let (chunk, index) = self.locate(position);
        let start = *chunk.starts.get(index)? as usize;
        chunk.bytes.get(start).map(std::ptr::from_ref)
    }

    /// Timestamp of the newest record, 0 when empty.
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// Whether the next record starts a chunk, so that a full run can be adopted.
    pub fn at_chunk_start(&self) -> bool {
        self.tail.starts.is_empty()
    }

    /// Appends a whole chunk of packed records as they are: `bytes` holds exactly
    /// [`CHUNK`] valid records starting at `starts`, stamped after every record stored,
    /// the newest stamped `last_timestamp` (a snapshot's run, checked when read).
    /// Loading a snapshot this way neither packs its records again nor faults in the
    /// pages of a second copy.
    pub fn adopt_chunk(&mut self, bytes: Vec<u8>, starts: Vec<u32>, last_timestamp: u64) {
        assert!(
            self.at_chunk_start(),
            "a chunk is adopted at a chunk boundary"
        );
        assert_eq!(starts.len(), CHUNK, "an adopted chunk is full");
        assert!(
            self.len() == 0 || self.last_timestamp < last_timestamp,
            "transfers are stored in timestamp order"
        );
        debug_assert!(starts.windows(2).all(|pair| pair[0] < pair[1]));
        debug_assert!(
            starts
                .last()
                .is_none_or(|&last| (last as usize) < bytes.len())
        );
        self.frozen.push(Arc::new(Chunk { bytes, starts }));
        self.last_timestamp = last_timestamp;
    }

    pub fn push(&mut self, transfer: &Transfer) {
        if self.tail.starts.is_empty() {
            // Room up front for as many bytes as the chunk before took and an eighth
            // more (typical records for the first), so that the tail neither copies
            // itself as it doubles nor faults in pages it will not use; it is shrunk
            // to fit when frozen.
            let bytes = self
                .frozen
                .last()
                .map_or(CHUNK * TYPICAL_RECORD_BYTES, |last| {
                    last.bytes.len() + last.bytes.len() / 8
                });
            self.tail.starts.reserve_exact(CHUNK);
            self.tail.bytes.reserve_exact(bytes);
        }
        let start = u32::try_from(self.tail.bytes.len()).expect("a chunk stays under 4 GiB");
        self.tail.starts.push(start);
        encode_transfer(transfer, &mut self.tail.bytes);
        self.last_timestamp = transfer.timestamp;
        if self.tail.starts.len() == CHUNK {
            let mut full = std::mem::take(&mut self.tail);
            full.bytes.shrink_to_fit();
            self.frozen.push(Arc::new(full));
        }
        debug_assert!(self.tail.starts.len() < CHUNK);
    }

    /// Removes the newest transfer (chain rollback).
    pub fn pop(&mut self) -> Option<Transfer> {
        if self.tail.starts.is_empty() {
            // Undo across a chunk boundary: thaw the last chunk (a copy only if a
            // snapshot still holds it).
            let last = self.frozen.pop()?;
            self.tail = Arc::try_unwrap(last).unwrap_or_else(|shared| shared.as_ref().clone());
        }
        let start = self.tail.starts.pop()? as usize;
        let (transfer, _) = decode(&self.tail.bytes[start..]);
        self.tail.bytes.truncate(start);
        self.last_timestamp = match self.len() {
            0 => 0,
            len => self.get(len - 1).timestamp,
        };
        Some(transfer)
    }

    /// Every transfer, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Transfer> + '_ {
        records(&self.frozen, &self.tail)
    }

    /// Records in full chunks: every one before this position.
    pub fn full_len(&self) -> usize {
        self.frozen.len() * CHUNK
    }

    /// A copy of the records in full chunks ([`TransferStore::full_len`]) only, sharing
    /// them: it copies no record.
    pub fn freeze_full_chunks(&self) -> FrozenTransfers {
        FrozenTransfers {
            chunks: self.frozen.clone(),
            tail: Chunk::default(),
        }
    }

    /// A copy that shares the full chunks and copies only the tail.
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
    chunks: Vec<Arc<Chunk>>,
    tail: Chunk,
}

impl FrozenTransfers {
    pub fn iter(&self) -> impl Iterator<Item = Transfer> + '_ {
        records(&self.chunks, &self.tail)
    }

    /// The user data of the transfer at `position`, as [`TransferStore::user_data`].
    pub fn user_data(&self, position: usize) -> UserData {
        match self.chunks.get(position / CHUNK) {
            Some(chunk) => chunk.user_data_at(position % CHUNK),
            None => self.tail.user_data_at(position - self.chunks.len() * CHUNK),
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.len() * CHUNK + self.tail.starts.len()
    }

    /// The packed bytes of every chunk in order, with its record count: full chunks of
    /// [`CHUNK`] records, then the tail (skipped when empty).
    pub fn packed_chunks(&self) -> impl Iterator<Item = (usize, &[u8])> + '_ {
        self.chunks
            .iter()
            .map(|chunk| chunk.as_ref())
            .chain(std::iter::once(&self.tail))
            .filter(|chunk| !chunk.starts.is_empty())
            .map(|chunk| {
                debug_assert_eq!(chunk.starts.first(), Some(&0));
                (chunk.starts.len(), chunk.bytes.as_slice())
            })
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
            store.push(&transfer(n));
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
        assert_eq!(store.last_timestamp(), (CHUNK - 6) as u64);
        // The snapshot still sees what it froze.
        assert_eq!(frozen.len(), CHUNK + 10);
        assert!(frozen.iter().enumerate().all(|(n, t)| t.id == n as u128));
        store.push(&transfer(CHUNK + 100));
        assert_eq!(store.iter().count(), CHUNK - 4);
        while store.pop().is_some() {}
        assert_eq!((store.len(), store.last_timestamp()), (0, 0));
    }
}

/// Accounts per chunk of the account store: 4,096 × 128 bytes = 512 KiB.
pub(crate) const ACCOUNT_CHUNK: usize = 1 << 12;

/// Accounts in creation order, in chunks shared copy-on-write: freezing the store for
/// a snapshot clones only the chunk pointers, and the first write to a chunk that a
/// frozen copy still holds copies that one chunk (512 KiB) instead of the whole store
/// (1.28 GB at 10 M accounts) up front.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccountStore {
    /// Every chunk full but the last.
    chunks: Vec<Arc<Vec<Account>>>,
    len: usize,
}

impl AccountStore {
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn get_mut(&mut self, index: usize) -> &mut Account {
        assert!(index < self.len, "account {index} of {}", self.len);
        let chunk = &mut self.chunks[index / ACCOUNT_CHUNK];
        &mut Arc::make_mut(chunk)[index % ACCOUNT_CHUNK]
    }

    pub fn last(&self) -> Option<&Account> {
        self.chunks.last().and_then(|chunk| chunk.last())
    }

    pub fn push(&mut self, account: Account) {
        if self.len.is_multiple_of(ACCOUNT_CHUNK) {
            self.chunks
                .push(Arc::new(Vec::with_capacity(ACCOUNT_CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk with room");
        Arc::make_mut(last).push(account);
        self.len += 1;
    }

    pub fn pop(&mut self) -> Option<Account> {
        let last = self.chunks.last_mut()?;
        let account = Arc::make_mut(last).pop();
        if last.is_empty() {
            self.chunks.pop();
        }
        self.len -= usize::from(account.is_some());
        account
    }

    pub fn iter(&self) -> impl Iterator<Item = &Account> + '_ {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// A point-in-time copy sharing every chunk.
    pub fn freeze(&self) -> FrozenAccounts {
        FrozenAccounts {
            chunks: self.chunks.clone(),
        }
    }
}

impl std::ops::Index<usize> for AccountStore {
    type Output = Account;

    #[inline]
    fn index(&self, index: usize) -> &Account {
        &self.chunks[index / ACCOUNT_CHUNK][index % ACCOUNT_CHUNK]
    }
}

/// A point-in-time copy of an [`AccountStore`] ([`AccountStore::freeze`]).
#[derive(Debug, Clone)]
pub(crate) struct FrozenAccounts {
    chunks: Vec<Arc<Vec<Account>>>,
}

impl FrozenAccounts {
    pub fn iter(&self) -> impl Iterator<Item = &Account> + '_ {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.len()).sum()
    }
}

#[cfg(test)]
mod account_tests {
    use super::*;

    #[test]
    fn a_frozen_copy_keeps_its_balances_while_the_store_changes() {
        let mut store = AccountStore::default();
        for id in 0..(ACCOUNT_CHUNK + 3) as u128 {
            store.push(Account {
                id,
                ..Account::default()
            });
        }
        let frozen = store.freeze();
        store.get_mut(5).credits_posted = 99;
        store.get_mut(ACCOUNT_CHUNK + 1).debits_posted = 7;
        store.push(Account {
            id: 10_000,
            ..Account::default()
        });
        assert_eq!(store[5].credits_posted, 99);
        assert_eq!(store[ACCOUNT_CHUNK + 1].debits_posted, 7);
        assert!(
            frozen
                .iter()
                .all(|a| a.credits_posted == 0 && a.debits_posted == 0)
        );
        assert_eq!(frozen.iter().count(), ACCOUNT_CHUNK + 3);
        assert_eq!(store.len(), ACCOUNT_CHUNK + 4);
        for _ in 0..4 {
            store.pop();
        }
        assert_eq!(store.len(), ACCOUNT_CHUNK);
        assert_eq!(store.last().map(|a| a.id), Some(ACCOUNT_CHUNK as u128 - 1));
        assert_eq!(store.iter().count(), ACCOUNT_CHUNK);
    }
}
