//! A hash map keyed by ids, split into shards that a freeze shares copy-on-write.
//!
//! The pending-status and refund tables grow with every pending transfer and every
//! refunded one, to millions of entries. A snapshot's freeze copied each table whole on
//! the apply thread, a stall of hundreds of milliseconds at tens of millions of events
//! (figures: docs/performance.md), and a table that outgrew its
//! capacity rehashed all of it in one go. Split into [`SHARDS`] shards, each behind an
//! `Arc`, a freeze clones only the shard pointers; the first write to a shard that a
//! frozen copy still holds copies that shard alone (1/256 of the table), and growth
//! rehashes one shard at a time.

use crate::hints::prefetch;
use crate::part::IdHasher;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// Shards per map: a first write after a freeze copies at most 1/256 of the table.
const SHARDS: usize = 256;

type Shard<V> = HashMap<u128, V, IdHasher>;

/// A map from ids to `V`, shared copy-on-write shard by shard ([`CowIdMap::freeze`]).
#[derive(Debug, Clone)]
pub(crate) struct CowIdMap<V: Clone> {
    shards: Vec<Arc<Shard<V>>>,
    /// Picks an id's shard. Seeded per map, like each shard's own hasher, so ids chosen
    /// to crowd one shard (which would bring back whole-table copies after a freeze)
    /// cannot be computed from outside.
    shard_hasher: IdHasher,
    len: usize,
}

impl<V: Clone> Default for CowIdMap<V> {
    fn default() -> Self {
        CowIdMap {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            shard_hasher: IdHasher::default(),
            len: 0,
        }
    }
}

impl<V: Clone> CowIdMap<V> {
    /// The shard holding `id`: the top byte of its seeded hash.
    #[inline]
    fn shard_of(&self, id: u128) -> usize {
        (self.shard_hasher.hash_one(id) >> 56) as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn get(&self, id: &u128) -> Option<&V> {
        self.shards[self.shard_of(*id)].get(id)
    }

    /// Inserts or replaces; returns the value replaced.
    #[inline]
    pub fn insert(&mut self, id: u128, value: V) -> Option<V> {
        let at = self.shard_of(id);
        let before = Arc::make_mut(&mut self.shards[at]).insert(id, value);
        self.len += usize::from(before.is_none());
        before
    }

    /// Removes `id`; returns its value. A shard without it is not copied.
    pub fn remove(&mut self, id: &u128) -> Option<V> {
        let at = self.shard_of(*id);
        let shard = &mut self.shards[at];
        if !shard.contains_key(id) {
            return None;
        }
        let removed = Arc::make_mut(shard).remove(id);
        self.len -= usize::from(removed.is_some());
        removed
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u128, &V)> + '_ {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// Inserts the entries of `entries` whose id `keep` accepts, as [`CowIdMap::insert`]
    /// one by one would (a later entry replaces an earlier one of the same id), but
    /// shard by shard: a snapshot's millions of statuses, inserted in id order, each
    /// missed the cache twice in a table far larger than it; one shard's table is
    /// small enough to stay in cache while its share goes in.
    pub fn insert_all(&mut self, entries: &[(u128, V)], keep: impl Fn(u128) -> bool) {
        /// How far ahead of its insert an entry is fetched, read out of id order.
        const ENTRIES_AHEAD: usize = 8;
        let mut starts = vec![0u32; SHARDS + 1];
        let shards: Vec<Option<u8>> = entries
            .iter()
            .map(|(id, _)| {
                let shard = keep(*id).then(|| self.shard_of(*id) as u8)?;
                starts[usize::from(shard) + 1] += 1;
                Some(shard)
            })
            .collect();
        for shard in 0..SHARDS {
            starts[shard + 1] += starts[shard];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; starts[SHARDS] as usize];
        for (at, shard) in shards.iter().enumerate() {
            if let Some(shard) = shard {
                let slot = &mut next[usize::from(*shard)];
                order[*slot as usize] = u32::try_from(at).expect("fewer than 2^32 entries");
                *slot += 1;
            }
        }
        drop(shards);
        for (shard, range) in starts.windows(2).enumerate() {
            let share = &order[range[0] as usize..range[1] as usize];
            if share.is_empty() {
                continue;
            }
            let map = Arc::make_mut(&mut self.shards[shard]);
            map.reserve(share.len());
            for (k, &at) in share.iter().enumerate() {
                if let Some(&ahead) = share.get(k + ENTRIES_AHEAD) {
                    prefetch(&raw const entries[ahead as usize]);
                }
                let (id, value) = entries[at as usize].clone();
                self.len += usize::from(map.insert(id, value).is_none());
            }
        }
    }

    /// A point-in-time copy sharing every shard: cloning 256 pointers, whatever the size.
    pub fn freeze(&self) -> FrozenIdMap<V> {
        FrozenIdMap {
            shards: self.shards.clone(),
        }
    }
}

/// A point-in-time copy of a [`CowIdMap`].
#[derive(Debug, Clone)]
pub(crate) struct FrozenIdMap<V: Clone> {
    shards: Vec<Arc<Shard<V>>>,
}

impl<V: Clone> FrozenIdMap<V> {
    /// Every entry as it was when frozen, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u128, &V)> + '_ {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, u32),
        Remove(u128),
        Freeze,
    }

    /// Ids of a small set, so that inserts replace and removes hit, some past 64 bits.
    fn ids() -> impl Strategy<Value = u128> {
        prop_oneof![0u128..2_000, (0u128..2_000).prop_map(|n| (n << 64) | n)]
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (ids(), any::<u32>()).prop_map(|(id, v)| Op::Insert(id, v)),
            2 => ids().prop_map(Op::Remove),
            1 => Just(Op::Freeze),
        ]
    }

    fn sorted<'a>(entries: impl Iterator<Item = (&'a u128, &'a u32)>) -> Vec<(u128, u32)> {
        let mut entries: Vec<_> = entries.map(|(id, v)| (*id, *v)).collect();
        entries.sort_unstable();
        entries
    }

    /// How many of `map`'s shards are not shared with `frozen`.
    fn copied_shards<V: Clone>(map: &CowIdMap<V>, frozen: &FrozenIdMap<V>) -> usize {
        map.shards
            .iter()
            .zip(&frozen.shards)
            .filter(|(live, old)| !Arc::ptr_eq(live, old))
            .count()
    }

    proptest! {
        /// Against a plain `HashMap`: every answer and the length agree after each
        /// operation, and every frozen copy keeps exactly the entries it was frozen
        /// with, whatever is written after it.
        #[test]
        fn behaves_as_a_hash_map_and_freezes_keep_their_moment(
            ops in proptest::collection::vec(any_op(), 1..1_500)
        ) {
            let mut map = CowIdMap::<u32>::default();
            let mut model = std::collections::HashMap::new();
            let mut frozen = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(id, v) => prop_assert_eq!(map.insert(id, v), model.insert(id, v)),
                    Op::Remove(id) => prop_assert_eq!(map.remove(&id), model.remove(&id)),
                    Op::Freeze => frozen.push((map.freeze(), sorted(model.iter()))),
                }
                prop_assert_eq!(map.len(), model.len());
            }
            for (id, value) in &model {
                prop_assert_eq!(map.get(id), Some(value));
            }
            prop_assert_eq!(map.get(&2_001), None);
            prop_assert_eq!(sorted(map.iter()), sorted(model.iter()));
            for (copy, then) in &frozen {
                prop_assert_eq!(&sorted(copy.iter()), then);
            }
        }
    }

    #[test]
    fn a_write_after_a_freeze_copies_one_shard() {
        let mut map = CowIdMap::default();
        for id in 1..=10_000u128 {
            map.insert(id, 0u32);
        }
        let frozen = map.freeze();
        assert_eq!(copied_shards(&map, &frozen), 0);
        map.insert(5, 1);
        assert_eq!(copied_shards(&map, &frozen), 1);
        // Removing an id the map does not hold copies nothing.
        map.remove(&20_000);
        assert_eq!(copied_shards(&map, &frozen), 1);
        assert_eq!(frozen.iter().filter(|(_, v)| **v == 1).count(), 0);
    }

    #[test]
    fn ids_spread_over_every_shard() {
        let map = CowIdMap::<u32>::default();
        let mut counts = [0usize; SHARDS];
        for n in 1..=128_000u128 {
            // Sequential ids, and ids whose halves are equal (which cancel in an
            // unseeded fold of the halves).
            counts[map.shard_of(n)] += 1;
            counts[map.shard_of((n << 64) | n)] += 1;
        }
        // 1,000 expected per shard: none empty, none more than twice its share.
        assert!(counts.iter().all(|&n| n > 0 && n < 2_000), "{counts:?}");
    }

    proptest! {
        /// Inserting a batch at once leaves the map as inserting its kept entries one
        /// by one would (the later of two equal ids wins), and a frozen copy as it was.
        #[test]
        fn insert_all_is_inserting_one_by_one(
            before in proptest::collection::vec((ids(), any::<u32>()), 0..300),
            batch in proptest::collection::vec((ids(), any::<u32>()), 0..1_500),
            odd_only in any::<bool>(),
        ) {
            let keep = |id: u128| !odd_only || id % 2 == 1;
            let mut map = CowIdMap::default();
            let mut model = std::collections::HashMap::new();
            for &(id, v) in &before {
                map.insert(id, v);
                model.insert(id, v);
            }
            let frozen = map.freeze();
            let then = sorted(model.iter());
            map.insert_all(&batch, keep);
            for &(id, v) in batch.iter().filter(|(id, _)| keep(*id)) {
                model.insert(id, v);
            }
            prop_assert_eq!(map.len(), model.len());
            prop_assert_eq!(sorted(map.iter()), sorted(model.iter()));
            prop_assert_eq!(sorted(frozen.iter()), then);
        }
    }
}
