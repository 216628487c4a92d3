//! The in-memory LRU in front of SQLite: sharded, byte-accounted, and kept coherent with the
//! database by the writer.
//!
//! Only the writer thread puts acknowledged values here (after its transaction committed), so a
//! client always reads its own writes. Readers that missed may *fill* an entry they read from
//! SQLite, but only if no write touched the shard since they looked (the shard's epoch), so a
//! slow reader can never put back a value that a newer commit replaced.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use lru::LruCache;

use crate::clock::remaining_ms;

/// Bytes charged per entry on top of its namespace, key and value: the hash table slot, list
/// links and the two string headers. An estimate, so the budget errs on the side of less.
pub const ENTRY_OVERHEAD: usize = 128;

/// Number of independently locked shards (a power of two).
const SHARDS: usize = 16;

/// Most keys remembered as read per shard between two collections; reads past it are not
/// remembered, which only makes eviction order a little less exact until the next collection.
const MAX_ACCESSED_PER_SHARD: usize = 16 * 1024;

/// One cached value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEntry {
    /// The stored bytes.
    pub value: Bytes,
    /// The entry's version.
    pub version: u64,
    /// Absolute expiry in Unix ms; 0 = never.
    pub expires_at_ms: u64,
}

/// What a memory lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A live entry.
    Hit(CachedEntry),
    /// The entry is cached but expired: the database holds the same expired row, so the key is
    /// absent without asking SQLite.
    Expired,
    /// Not cached; ask SQLite, then fill with the returned ticket.
    Miss(FillTicket),
}

/// Proof of when a reader missed; a fill is accepted only if the shard saw no write since.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket {
    shard: usize,
    epoch: u64,
}

type Key = (String, String);

#[derive(Debug)]
struct Shard {
    /// Entries in recency order.
    lru: LruCache<Key, CachedEntry>,
    /// Sum of `charge` over `lru`.
    bytes: usize,
    /// Incremented by every write (put, remove, expiry change) to this shard.
    epoch: u64,
    /// Keys read since the writer last collected them, with the time of the latest read: the
    /// disk-bound eviction order is kept from these, so a read never costs a disk write.
    accessed: HashMap<Key, u64>,
}

/// The sharded, byte-bounded LRU.
#[derive(Debug)]
pub struct MemoryCache {
    shards: Box<[Mutex<Shard>]>,
    /// Byte budget of each shard (the configured total divided by the shard count).
    shard_budget: usize,
    hasher: std::collections::hash_map::RandomState,
    /// Whether reads are remembered for eviction order; the writer turns it on only when the
    /// disk bound is in sight, so that far from it a hit costs no bookkeeping.
    track_access: AtomicBool,
}

/// Bytes an entry is charged against the budget.
pub fn charge(namespace: &str, key: &str, value_len: usize) -> usize {
    namespace.len() + key.len() + value_len + ENTRY_OVERHEAD
}

impl MemoryCache {
    /// A cache that holds at most `budget_bytes` (as counted by [`charge`]).
    pub fn new(budget_bytes: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    epoch: 0,
                    accessed: HashMap::new(),
                })
            })
            .collect();
        Self {
            shards,
            shard_budget: budget_bytes / SHARDS,
            hasher: Default::default(),
            track_access: AtomicBool::new(true),
        }
    }

    fn shard_of(&self, namespace: &str, key: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        namespace.hash(&mut h);
        key.hash(&mut h);
        (h.finish() as usize) & (SHARDS - 1)
    }

    // The locks below are std mutexes held for a few hash-map operations; no `.await` and no
    // I/O happens under them. A poisoned lock means a panic mid-update of a cache, which is
    // safe to keep using after dropping its content.
    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            guard.lru.clear();
            guard.bytes = 0;
            guard.epoch += 1;
            guard.accessed.clear();
            guard
        })
    }

    /// Looks a key up, marking it recently used on a hit.
    pub fn get(&self, namespace: &str, key: &str, now_ms: u64) -> Lookup {
        let shard = self.shard_of(namespace, key);
        let mut s = self.lock(shard);
        let k = (namespace.to_owned(), key.to_owned());
        match s.lru.get(&k) {
            Some(e) if remaining_ms(e.expires_at_ms, now_ms).is_some() => {
                let hit = e.clone();
                if self.track_access.load(Ordering::Relaxed) {
                    note_access(&mut s.accessed, k, now_ms);
                }
                Lookup::Hit(hit)
            }
            Some(_) => {
                if let Some(old) = s.lru.pop(&k) {
                    s.bytes -= charge(namespace, key, old.value.len());
                }
                Lookup::Expired
            }
            None => Lookup::Miss(FillTicket {
                shard,
                epoch: s.epoch,
            }),
        }
    }

    /// Remembers that a key was read at `now_ms` (for reads answered from SQLite; memory hits
    /// are remembered by [`MemoryCache::get`]).
    pub fn record_access(&self, namespace: &str, key: &str, now_ms: u64) {
        if !self.track_access.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.lock(self.shard_of(namespace, key));
        note_access(
            &mut s.accessed,
            (namespace.to_owned(), key.to_owned()),
            now_ms,
        );
    }

    /// Writer only: turns remembering reads on or off.
    pub fn set_access_tracking(&self, on: bool) {
        self.track_access.store(on, Ordering::Relaxed);
    }

    /// Writer only: takes the keys read since the last call, with their latest read time.
    pub fn take_accessed(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let taken = std::mem::take(&mut self.lock(i).accessed);
            out.extend(taken.into_iter().map(|((ns, k), t)| (ns, k, t)));
        }
        out
    }

    /// Caches a value a reader found in SQLite, unless a write reached the shard since the
    /// reader's miss.
    pub fn fill(&self, ticket: FillTicket, namespace: &str, key: &str, entry: CachedEntry) {
        let mut s = self.lock(ticket.shard);
        if s.epoch == ticket.epoch {
            self.insert_locked(&mut s, namespace, key, entry);
        }
    }

    /// Writer only: the committed value of a key.
    pub fn put(&self, namespace: &str, key: &str, entry: CachedEntry) {
        let mut s = self.lock(self.shard_of(namespace, key));
        s.epoch += 1;
        self.insert_locked(&mut s, namespace, key, entry);
    }

    /// Writer only: a key was deleted (or evicted, or swept).
    pub fn remove(&self, namespace: &str, key: &str) {
        let mut s = self.lock(self.shard_of(namespace, key));
        s.epoch += 1;
        if let Some(old) = s.lru.pop(&(namespace.to_owned(), key.to_owned())) {
            s.bytes -= charge(namespace, key, old.value.len());
        }
    }

    /// Writer only: a key got a new expiry without a new value.
    pub fn set_expiry(&self, namespace: &str, key: &str, expires_at_ms: u64) {
        let mut s = self.lock(self.shard_of(namespace, key));
        s.epoch += 1;
        if let Some(e) = s.lru.peek_mut(&(namespace.to_owned(), key.to_owned())) {
            e.expires_at_ms = expires_at_ms;
        }
    }

    fn insert_locked(&self, s: &mut Shard, namespace: &str, key: &str, entry: CachedEntry) {
        let k = (namespace.to_owned(), key.to_owned());
        if let Some(old) = s.lru.pop(&k) {
            s.bytes -= charge(namespace, key, old.value.len());
        }
        let cost = charge(namespace, key, entry.value.len());
        // An entry bigger than half a shard would flush most of it for one key: keep it on
        // disk only.
        if cost > self.shard_budget / 2 {
            return;
        }
        while s.bytes + cost > self.shard_budget {
            match s.lru.pop_lru() {
                Some(((ns, k), old)) => s.bytes -= charge(&ns, &k, old.value.len()),
                None => break,
            }
        }
        s.bytes += cost;
        s.lru.put(k, entry);
    }

    /// Bytes currently charged, over all shards.
    pub fn bytes(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).bytes).sum()
    }

    /// The configured total budget (rounded down to a multiple of the shard count).
    pub fn budget(&self) -> usize {
        self.shard_budget * SHARDS
    }

    #[cfg(test)]
    fn recount(&self) -> usize {
        (0..SHARDS)
            .map(|i| {
                let s = self.lock(i);
                s.lru
                    .iter()
                    .map(|((ns, k), e)| charge(ns, k, e.value.len()))
                    .sum::<usize>()
            })
            .sum()
    }
}

fn note_access(accessed: &mut HashMap<Key, u64>, key: Key, now_ms: u64) {
    if let Some(t) = accessed.get_mut(&key) {
        *t = (*t).max(now_ms);
    } else if accessed.len() < MAX_ACCESSED_PER_SHARD {
        accessed.insert(key, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(value: &[u8], expires_at_ms: u64) -> CachedEntry {
        CachedEntry {
            value: Bytes::copy_from_slice(value),
            version: 1,
            expires_at_ms,
        }
    }

    #[test]
    fn a_put_is_read_back_until_it_expires() {
        let m = MemoryCache::new(1 << 20);
        m.put("ns", "k", entry(b"v", 100));
        assert!(matches!(m.get("ns", "k", 99), Lookup::Hit(e) if e.value == "v"));
        assert!(matches!(m.get("ns", "k", 100), Lookup::Expired));
        assert!(matches!(m.get("ns", "k", 0), Lookup::Miss(_)));
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn reads_are_remembered_until_collected() {
        let m = MemoryCache::new(1 << 20);
        m.put("ns", "a", entry(b"v", 0));
        let _ = m.get("ns", "a", 10);
        let _ = m.get("ns", "a", 30);
        m.record_access("ns", "b", 20);
        let mut seen = m.take_accessed();
        seen.sort();
        assert_eq!(
            seen,
            vec![("ns".into(), "a".into(), 30), ("ns".into(), "b".into(), 20)]
        );
        assert!(m.take_accessed().is_empty());
    }

    #[test]
    fn namespaces_are_separate() {
        let m = MemoryCache::new(1 << 20);
        m.put("a", "k", entry(b"1", 0));
        assert!(matches!(m.get("b", "k", 0), Lookup::Miss(_)));
    }

    #[test]
    fn a_fill_after_a_write_is_refused() {
        let m = MemoryCache::new(1 << 20);
        let Lookup::Miss(ticket) = m.get("ns", "k", 0) else {
            panic!("expected a miss")
        };
        // The writer commits a newer value (or a delete) while the reader was in SQLite.
        m.remove("ns", "k");
        m.fill(ticket, "ns", "k", entry(b"stale", 0));
        assert!(matches!(m.get("ns", "k", 0), Lookup::Miss(_)));
    }

    #[test]
    fn a_fill_without_a_write_is_kept() {
        let m = MemoryCache::new(1 << 20);
        let Lookup::Miss(ticket) = m.get("ns", "k", 0) else {
            panic!("expected a miss")
        };
        m.fill(ticket, "ns", "k", entry(b"v", 0));
        assert!(matches!(m.get("ns", "k", 0), Lookup::Hit(_)));
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        // One shard's worth of budget per key: force everything into a tiny budget and use
        // keys of one shard by checking behaviour through the whole cache.
        let m = MemoryCache::new(SHARDS * (3 * charge("n", "k0", 10)));
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for k in &keys {
            m.put("n", k, entry(&[0; 10], 0));
        }
        assert!(m.bytes() <= m.budget());
        // The newest key of all is always kept.
        assert!(matches!(
            m.get("n", keys.last().unwrap(), 0),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn huge_values_are_not_cached() {
        let m = MemoryCache::new(SHARDS * 1000);
        m.put("n", "big", entry(&[0; 600], 0));
        assert!(matches!(m.get("n", "big", 0), Lookup::Miss(_)));
        assert_eq!(m.bytes(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, usize),
        Fill(u8, usize),
        Remove(u8),
        Get(u8),
        Expire(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0usize..3000).prop_map(|(k, n)| Op::Put(k, n)),
            (any::<u8>(), 0usize..3000).prop_map(|(k, n)| Op::Fill(k, n)),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Get),
            any::<u8>().prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// The byte budget holds after every operation, and the running byte count always
        /// equals the sum of the charges of what is cached.
        #[test]
        fn never_exceeds_its_byte_budget(budget in 0usize..200_000, ops in prop::collection::vec(op(), 1..300)) {
            let m = MemoryCache::new(budget);
            for op in ops {
                match op {
                    Op::Put(k, n) => m.put("ns", &k.to_string(), entry(&vec![7; n], 0)),
                    Op::Fill(k, n) => {
                        if let Lookup::Miss(t) = m.get("ns", &k.to_string(), 0) {
                            m.fill(t, "ns", &k.to_string(), entry(&vec![1; n], 0));
                        }
                    }
                    Op::Remove(k) => m.remove("ns", &k.to_string()),
                    Op::Get(k) => { let _ = m.get("ns", &k.to_string(), 5); }
                    Op::Expire(k) => m.set_expiry("ns", &k.to_string(), 1),
                }
                prop_assert!(m.bytes() <= m.budget());
                prop_assert_eq!(m.bytes(), m.recount());
            }
        }

        /// What was last put for a key is what a hit returns (the cache never serves an older
        /// value than the writer's latest).
        #[test]
        fn a_hit_is_the_latest_put(ops in prop::collection::vec((0u8..8, 0usize..64), 1..200)) {
            let m = MemoryCache::new(1 << 20);
            let mut model = std::collections::HashMap::new();
            for (k, n) in ops {
                let value = vec![n as u8; n];
                m.put("ns", &k.to_string(), entry(&value, 0));
                model.insert(k, value);
                for (mk, mv) in &model {
                    if let Lookup::Hit(e) = m.get("ns", &mk.to_string(), 0) {
                        prop_assert_eq!(&e.value[..], &mv[..]);
                    }
                }
            }
        }
    }
}
