//! The one sharded, byte-accounted LRU that every in-memory table of the store is built on:
//! cache entries and sessions (through [`MemoryCache`](super::memory::MemoryCache)) and
//! rate-limit state (`ratelimit::LimitTable`).
//!
//! Keys are spread over independently locked shards by hash, so callers of different keys
//! rarely wait for one another. Each shard keeps its entries in recency order and the sum of
//! their charges; the charge of every entry is counted in when it goes in and out when it
//! leaves, by this file alone, so the count always equals the sum of the charges held (the
//! property test below). What goes when a shard is over budget is the table's policy, not this
//! file's: the cache evicts from the cold end, the rate-limit table only clean keys.
//!
//! Each shard also carries `X`, state of the table's own that must be changed under the same
//! lock as the entries (the cache's write epoch and read times, the rate-limit dirty list).

use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

/// Bytes charged for a value under its key, overheads included. Must not change while the
/// entry is held (see [`LruShard::peek_mut`]).
pub(crate) type Charge<K, V> = fn(&K, &V) -> usize;

/// One shard: entries in recency order, their byte count, and the table's own state `X`.
#[derive(Debug)]
pub(crate) struct LruShard<K: Hash + Eq, V, X> {
    /// Entries, most recently used first.
    lru: LruCache<K, V>,
    /// Sum of the charges of `lru`.
    bytes: usize,
    charge: Charge<K, V>,
    /// The table's state kept under this shard's lock.
    pub(crate) extra: X,
}

impl<K: Hash + Eq, V, X> LruShard<K, V, X> {
    /// The entry for `key`, marked most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&mut V> {
        self.lru.get_mut(key)
    }

    /// The entry for `key`, leaving the recency order alone.
    pub(crate) fn peek(&self, key: &K) -> Option<&V> {
        self.lru.peek(key)
    }

    /// The entry for `key` to change in place, leaving the recency order alone. The change
    /// must keep its charge (the count is not redone).
    pub(crate) fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        self.lru.peek_mut(key)
    }

    /// Puts `value` under `key` as the most recently used entry, replacing (and returning) an
    /// entry already there. Evicts nothing: the caller makes room first.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.remove(&key);
        self.bytes += (self.charge)(&key, &value);
        self.lru.put(key, value);
        old
    }

    /// Takes the entry for `key` out.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.lru.pop(key)?;
        self.bytes -= (self.charge)(key, &old);
        Some(old)
    }

    /// Takes the least recently used entry out.
    pub(crate) fn pop_coldest(&mut self) -> Option<(K, V)> {
        let (key, old) = self.lru.pop_lru()?;
        self.bytes -= (self.charge)(&key, &old);
        Some((key, old))
    }

    /// Entries from the least recently used on.
    pub(crate) fn coldest(&self) -> impl Iterator<Item = (&K, &V)> {
        self.lru.iter().rev()
    }

    /// Every entry, most recently used first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.lru.iter()
    }

    /// Takes every entry out.
    pub(crate) fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    /// Bytes charged for the entries held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.lru.len()
    }
}

/// What to do with a shard whose lock was poisoned (a panic while it was held).
pub(crate) type Recover<K, V, X> = fn(&mut LruShard<K, V, X>);

/// The sharded, byte-bounded LRU: `budget / shards` bytes per shard.
#[derive(Debug)]
pub(crate) struct ShardedLru<K: Hash + Eq, V, X = ()> {
    shards: Box<[Mutex<LruShard<K, V, X>>]>,
    /// Byte budget of each shard (the total divided by the shard count).
    shard_budget: usize,
    hasher: std::collections::hash_map::RandomState,
    recover: Recover<K, V, X>,
}

impl<K: Hash + Eq, V, X> ShardedLru<K, V, X> {
    /// `shards` (a power of two) shards sharing `budget_bytes`, each with the state `extra()`;
    /// entries cost `charge`; `recover` repairs a shard found poisoned before it is used again.
    pub(crate) fn new(
        budget_bytes: usize,
        shards: usize,
        charge: Charge<K, V>,
        extra: impl Fn() -> X,
        recover: Recover<K, V, X>,
    ) -> Self {
        debug_assert!(shards.is_power_of_two());
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(LruShard {
                        lru: LruCache::unbounded(),
                        bytes: 0,
                        charge,
                        extra: extra(),
                    })
                })
                .collect(),
            shard_budget: budget_bytes / shards,
            hasher: Default::default(),
            recover,
        }
    }

    /// The shard `key` lives in.
    pub(crate) fn shard_of(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)
    }

    /// Locks shard `i`. The locks are std mutexes held for a few hash-map operations: no
    /// `.await` and no I/O happens under them.
    pub(crate) fn lock(&self, i: usize) -> MutexGuard<'_, LruShard<K, V, X>> {
        self.shards[i].lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            (self.recover)(&mut guard);
            guard
        })
    }

    /// Locks the shard `key` lives in.
    pub(crate) fn lock_key(&self, key: &K) -> MutexGuard<'_, LruShard<K, V, X>> {
        self.lock(self.shard_of(key))
    }

    /// How many shards there are.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Byte budget of one shard.
    pub(crate) fn shard_budget(&self) -> usize {
        self.shard_budget
    }

    /// Bytes charged, over all shards.
    pub(crate) fn bytes(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).bytes).sum()
    }

    /// Entries held, over all shards.
    pub(crate) fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).len()).sum()
    }

    /// The charges of what is held, added up again entry by entry (for tests of the count).
    #[cfg(test)]
    pub(crate) fn recount(&self) -> usize {
        (0..self.shards.len())
            .map(|i| {
                let s = self.lock(i);
                s.iter().map(|(k, v)| (s.charge)(k, v)).sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> ShardedLru<u8, Vec<u8>> {
        ShardedLru::new(1 << 20, 4, |_, v| 1 + v.len(), || (), LruShard::clear)
    }

    #[test]
    fn the_coldest_entry_is_the_least_recently_used() {
        let t = table();
        let mut s = t.lock(0);
        s.insert(1, vec![1]);
        s.insert(2, vec![2]);
        let _ = s.get(&1);
        assert_eq!(s.coldest().next().map(|(k, _)| *k), Some(2));
        assert_eq!(s.pop_coldest(), Some((2, vec![2])));
        assert_eq!(s.bytes(), 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, usize),
        Remove(u8),
        Get(u8),
        PopColdest(u8),
        Clear(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0usize..300).prop_map(|(k, n)| Op::Insert(k, n)),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Get),
            any::<u8>().prop_map(Op::PopColdest),
            (0u8..64).prop_map(Op::Clear),
        ]
    }

    proptest! {
        /// The running byte count always equals the sum of the charges of what is held.
        #[test]
        fn the_byte_count_is_the_sum_of_the_charges(ops in prop::collection::vec(op(), 1..300)) {
            let t = table();
            for op in ops {
                match op {
                    Op::Insert(k, n) => { t.lock_key(&k).insert(k, vec![k; n]); }
                    Op::Remove(k) => { t.lock_key(&k).remove(&k); }
                    Op::Get(k) => { let _ = t.lock_key(&k).get(&k); }
                    Op::PopColdest(k) => { t.lock_key(&k).pop_coldest(); }
                    // Rarely: most runs keep their entries.
                    Op::Clear(k) => if k == 0 { t.lock_key(&k).clear(); },
                }
                prop_assert_eq!(t.bytes(), t.recount());
            }
        }
    }
}
