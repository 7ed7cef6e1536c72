//! Account histories: per account, the transfers touching it, oldest first, as
//! [`TransferRef`]s in a chain of 64-byte blocks drawn from one pool.
//!
//! A `Vec` per account grew by doubling: millions of small reallocations, each a copy
//! and a trip through the allocator (`realloc`, `malloc_consolidate` and friends were
//! 11 % of `apply` at 25 M transfers over 1 M accounts). Here an append writes one
//! slot of the account's newest block, one cache line, and opens a new block every
//! [`REFS_PER_BLOCK`] entries. Blocks come from chunks of the pool that never move, and
//! in the order they are opened, so a new block is usually still in cache. A history
//! reads newest first by following each block's link to the one before; oldest first
//! collects the links, then reads forward (reads are the cold path).
//!
//! Histories are not part of snapshots (loading an image rebuilds them), so this
//! layout is free to change.

use crate::hints::prefetch;
use crate::part::TransferRef;
use std::fmt;

/// Entries per block: 15 four-byte references and the link fill 64 bytes.
pub(crate) const REFS_PER_BLOCK: usize = 15;

/// The link of the oldest block, and the head of an empty history.
const NO_BLOCK: u32 = u32::MAX;

/// Blocks per chunk of the pool: 256 KiB.
const BLOCKS_PER_CHUNK: usize = 4_096;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block {
    refs: [TransferRef; REFS_PER_BLOCK],
    /// The block of the 15 entries before these, [`NO_BLOCK`] for the oldest.
    previous: u32,
}

const _: () = assert!(std::mem::size_of::<Block>() == 64);

const EMPTY_BLOCK: Block = Block {
    refs: [0; REFS_PER_BLOCK],
    previous: NO_BLOCK,
};

/// An account's history: its newest block and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    block: u32,
    len: u32,
}

const EMPTY_HEAD: Head = Head {
    block: NO_BLOCK,
    len: 0,
};

#[derive(Clone, Default)]
pub(crate) struct Histories {
    /// One per account, in account order.
    heads: Vec<Head>,
    /// The pool: chunks of [`BLOCKS_PER_CHUNK`] blocks that never move.
    chunks: Vec<Box<[Block]>>,
    /// Blocks ever opened; the next new one is this index.
    blocks_opened: u32,
    /// Blocks a rollback emptied, reused before new ones.
    free: Vec<u32>,
}

impl fmt::Debug for Histories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histories")
            .field("accounts", &self.heads.len())
            .field("blocks_opened", &self.blocks_opened)
            .field("blocks_free", &self.free.len())
            .finish()
    }
}

impl Histories {
    pub fn reserve_accounts(&mut self, accounts: usize) {
        self.heads.reserve(accounts);
    }

    /// Adds an empty history for a new account (the next account position).
    pub fn push_account(&mut self) {
        self.heads.push(EMPTY_HEAD);
    }

    /// Removes the newest account's history, which must be empty (a created account
    /// rolled back before anything touched it).
    pub fn pop_account(&mut self) {
        let head = self.heads.pop();
        assert_eq!(head, Some(EMPTY_HEAD), "a new account has no history");
    }

    #[cfg(test)]
    pub fn len(&self, account: u32) -> usize {
        self.heads[account as usize].len as usize
    }

    #[inline]
    fn block(&self, block: u32) -> &Block {
        let block = block as usize;
        &self.chunks[block / BLOCKS_PER_CHUNK][block % BLOCKS_PER_CHUNK]
    }

    #[inline]
    fn block_mut(&mut self, block: u32) -> &mut Block {
        let block = block as usize;
        &mut self.chunks[block / BLOCKS_PER_CHUNK][block % BLOCKS_PER_CHUNK]
    }

    /// A block to write, reusing one a rollback freed, else the next never used.
    fn open_block(&mut self, previous: u32) -> u32 {
        let block = match self.free.pop() {
            Some(block) => block,
            None => {
                let block = self.blocks_opened;
                if block as usize == self.chunks.len() * BLOCKS_PER_CHUNK {
                    self.chunks
                        .push(vec![EMPTY_BLOCK; BLOCKS_PER_CHUNK].into_boxed_slice());
                }
                self.blocks_opened = block.checked_add(1).expect("fewer than 2^32 blocks");
                block
            }
        };
        self.block_mut(block).previous = previous;
        block
    }

    /// Adds `transfer_ref` to the end of `account`'s history.
    #[inline]
    pub fn append(&mut self, account: u32, transfer_ref: TransferRef) {
        let Head { block, len } = self.heads[account as usize];
        let slot = len as usize % REFS_PER_BLOCK;
        let block = if slot == 0 {
            self.open_block(block)
        } else {
            block
        };
        self.block_mut(block).refs[slot] = transfer_ref;
        self.heads[account as usize] = Head {
            block,
            len: len.checked_add(1).expect("fewer than 2^32 entries"),
        };
    }

    /// Removes the newest entry of `account`'s history (a chain's rollback).
    pub fn pop(&mut self, account: u32) -> Option<TransferRef> {
        let Head { block, len } = self.heads[account as usize];
        let len = len.checked_sub(1)?;
        let slot = len as usize % REFS_PER_BLOCK;
        let popped = self.block(block).refs[slot];
        let block = if slot == 0 {
            // The block is empty now: back to the one before, and keep this one for
            // the next block opened.
            self.free.push(block);
            self.block(block).previous
        } else {
            block
        };
        self.heads[account as usize] = Head { block, len };
        Some(popped)
    }

    /// Where `account`'s head is kept (prefetch, records step). Nothing for a position
    /// past the heads (histories taken out while an image loads, or a stale candidate).
    #[inline]
    pub fn prefetch_head(&self, account: usize) {
        if account < self.heads.len() {
            prefetch(self.heads.as_ptr().wrapping_add(account));
        }
    }

    /// The cache line the next entry of `account` goes to, once its head has arrived
    /// (prefetch, tails step). Nothing when the next entry opens a new block: that one
    /// is the pool's newest, likely in cache already.
    #[inline]
    pub fn prefetch_tail(&self, account: usize) {
        if let Some(&Head { block, len }) = self.heads.get(account)
            && !(len as usize).is_multiple_of(REFS_PER_BLOCK)
        {
            prefetch(std::ptr::from_ref(self.block(block)));
        }
    }

    /// `account`'s entries, newest first.
    #[cfg(test)]
    pub fn newest_first(&self, account: u32) -> impl Iterator<Item = TransferRef> + '_ {
        let mut walk = self.walk(account, true);
        std::iter::from_fn(move || walk.next(self))
    }

    /// `account`'s entries, oldest first (its blocks gathered at once).
    #[cfg(test)]
    pub fn oldest_first(&self, account: u32) -> impl Iterator<Item = TransferRef> + '_ {
        let mut walk = self.walk(account, false);
        let mut unbounded = usize::MAX;
        let gathered = walk.gather(self, &mut unbounded);
        assert!(gathered, "an unbounded budget gathers every block");
        std::iter::from_fn(move || walk.next(self))
    }

    /// A walk over `account`'s entries as they stand now, newest or oldest first.
    pub fn walk(&self, account: u32, newest_first: bool) -> HistoryWalk {
        let Head { block, len } = self.heads[account as usize];
        let len = len as usize;
        let blocks_wanted = if newest_first {
            0
        } else {
            len.div_ceil(REFS_PER_BLOCK)
        };
        HistoryWalk {
            newest_first,
            left: len,
            block,
            in_block: match (newest_first, len) {
                (false, _) | (true, 0) => 0,
                (true, len) => (len - 1) % REFS_PER_BLOCK + 1,
            },
            blocks: Vec::with_capacity(blocks_wanted),
            blocks_wanted,
        }
    }
}

/// A read of one account's history taken in bounded steps ([`HistoryWalk::step`]),
/// over the entries it held when the walk began. Those never move or change between
/// steps: blocks never move, a full block never changes, and a rollback pops only
/// entries appended after them.
#[derive(Debug, Clone)]
pub(crate) struct HistoryWalk {
    newest_first: bool,
    /// Entries still to read.
    left: usize,
    /// The block being read: newest first, its unread entries are `..in_block`;
    /// oldest first, the next block whose link is to be followed.
    block: u32,
    in_block: usize,
    /// Oldest first: the blocks gathered so far, newest first; read from the back,
    /// once all `blocks_wanted` are there (then 0), from entry `in_block` of the last.
    blocks: Vec<u32>,
    blocks_wanted: usize,
}

impl HistoryWalk {
    /// Reads up to about `budget` entries (oldest first, following a block's link
    /// counts as one), handing each to `visit` in order until it returns false; true
    /// once the walk is over.
    pub fn step(
        &mut self,
        histories: &Histories,
        budget: usize,
        mut visit: impl FnMut(TransferRef) -> bool,
    ) -> bool {
        let mut budget = budget;
        if !self.gather(histories, &mut budget) {
            return false;
        }
        while budget > 0 {
            let Some(entry) = self.next(histories) else {
                return true;
            };
            budget -= 1;
            if !visit(entry) {
                return true;
            }
        }
        self.left == 0
    }

    /// Oldest first, follows the links of up to `budget` blocks (taking them off it)
    /// towards the oldest; true once every block is gathered (always, newest first).
    fn gather(&mut self, histories: &Histories, budget: &mut usize) -> bool {
        while self.blocks.len() < self.blocks_wanted {
            if *budget == 0 {
                return false;
            }
            self.blocks.push(self.block);
            self.block = histories.block(self.block).previous;
            *budget -= 1;
        }
        if self.blocks_wanted > 0 {
            assert_eq!(
                self.block, NO_BLOCK,
                "a history's oldest block links nowhere"
            );
            self.blocks_wanted = 0;
        }
        true
    }

    /// The next entry in the walk's order; oldest first, once every block is gathered.
    fn next(&mut self, histories: &Histories) -> Option<TransferRef> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if self.newest_first {
            if self.in_block == 0 {
                self.block = histories.block(self.block).previous;
                self.in_block = REFS_PER_BLOCK;
            }
            self.in_block -= 1;
            return Some(histories.block(self.block).refs[self.in_block]);
        }
        let block = *self.blocks.last().expect("entries left, so blocks left");
        let entry = histories.block(block).refs[self.in_block];
        self.in_block += 1;
        if self.in_block == REFS_PER_BLOCK {
            self.blocks.pop();
            self.in_block = 0;
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Differential: the block lists against a `Vec` per account, through appends and
    /// pops that cross block boundaries (the pops as a chain's rollback makes them),
    /// with freed blocks reused.
    #[test]
    fn histories_match_a_vec_per_account() {
        let mut rng = crate::test_support::SeededRng::new(17);
        let mut histories = Histories::default();
        let mut model: Vec<Vec<TransferRef>> = Vec::new();
        let mut next_ref = 0;
        for step in 0..200_000u32 {
            match rng.below(100) {
                0 if model.last().is_some_and(Vec::is_empty) => {
                    histories.pop_account();
                    model.pop();
                }
                0..=1 => {
                    histories.push_account();
                    model.push(Vec::new());
                }
                _ if model.is_empty() => {}
                2..=30 => {
                    let account = rng.below(model.len() as u64) as u32;
                    assert_eq!(
                        histories.pop(account),
                        model[account as usize].pop(),
                        "step {step}"
                    );
                }
                _ => {
                    // Skewed towards few accounts, so histories run many blocks long.
                    let account = (rng.below(model.len() as u64) as u32).min(rng.below(8) as u32);
                    next_ref += 1;
                    histories.append(account, next_ref);
                    model[account as usize].push(next_ref);
                }
            }
        }
        assert!(
            model
                .iter()
                .any(|history| history.len() > 10 * REFS_PER_BLOCK)
        );
        for (account, expected) in model.iter().enumerate() {
            let account = account as u32;
            assert_eq!(histories.len(account), expected.len());
            assert!(histories.oldest_first(account).eq(expected.iter().copied()));
            assert!(
                histories
                    .newest_first(account)
                    .eq(expected.iter().rev().copied())
            );
            for (newest_first, budget) in [(true, 1), (true, 7), (false, 1), (false, 40)] {
                let mut walk = histories.walk(account, newest_first);
                let mut walked = Vec::new();
                while !walk.step(&histories, budget, |entry| {
                    walked.push(entry);
                    true
                }) {}
                if newest_first {
                    walked.reverse();
                }
                assert_eq!(&walked, expected, "account {account}, budget {budget}");
            }
        }
        // Every block opened is either in a history or free: none leaked.
        let in_use: usize = model.iter().map(|h| h.len().div_ceil(REFS_PER_BLOCK)).sum();
        assert_eq!(
            in_use + histories.free.len(),
            histories.blocks_opened as usize
        );
    }
}
