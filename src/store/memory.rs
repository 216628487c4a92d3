//! The read-through memory in front of SQLite tables that the writer changes: one generic
//! [`MemoryCache`] on the store's one sharded LRU ([`super::lru`]), serving cache entries
//! (`cache::EntryCache`) and sessions (`session::SessionCache`, keyed by token hash).
//!
//! Only the writer thread puts acknowledged values here (after its transaction committed), so a
//! client always reads its own writes. Readers that missed may *fill* an entry they read from
//! SQLite, but only if no write touched the shard since they looked (the shard's epoch), so a
//! slow reader can never put back a value that a newer commit replaced. The writer applies each
//! commit's changes between two steps of a publication count, so that a reader of several keys
//! can tell that it saw no commit half applied. And it counts commits made visible in SQLite
//! apart from commits shown in memory, so that a reader answered by SQLite waits for memory to
//! show what it read ([`MemoryCache::catch_up`]) before it answers or fills: else the next
//! reader, answered by memory, could see an older state than a read that ended before it
//! started, and a fill could show part of a commit before the writer applied all of it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::lru::{LruShard, ShardedLru};

/// Bytes charged per entry on top of its key and value: the hash table slot, list links and
/// the string headers. An estimate, so the budget errs on the side of less.
pub(crate) const ENTRY_OVERHEAD: usize = 128;

/// Number of independently locked shards (a power of two).
const SHARDS: usize = 16;

/// Most keys remembered as read per shard between two collections; reads past it are not
/// remembered, which only makes eviction order a little less exact until the next collection.
const MAX_ACCESSED_PER_SHARD: usize = 16 * 1024;

/// A value the memory LRU can hold: it knows its size and when it stops being live.
pub(crate) trait Cached: Clone {
    /// What the value is looked up by.
    type Key: Hash + Eq + Clone + std::fmt::Debug;
    /// Bytes of key and value charged against the budget (without [`ENTRY_OVERHEAD`]).
    fn size(key: &Self::Key, value: &Self) -> usize;
    /// Whether the value is still live at `now_ms`.
    fn live(&self, now_ms: u64) -> bool;
}

/// What a memory lookup found.
#[derive(Debug)]
pub(crate) enum Lookup<V> {
    /// A live entry.
    Hit(V),
    /// The entry is cached but expired: the database holds the same expired row, so the key is
    /// absent without asking SQLite.
    Expired,
    /// Not cached; ask SQLite, then fill with the returned ticket.
    Miss(FillTicket),
}

/// Proof of when a reader missed; a fill is accepted only if the shard saw no write since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillTicket {
    shard: usize,
    epoch: u64,
}

/// What a shard of a [`MemoryCache`] keeps besides its entries, under the same lock.
#[derive(Debug)]
struct Coherence<K> {
    /// Incremented by every write (put, remove, update) to this shard.
    epoch: u64,
    /// Keys read since the writer last collected them, with the time of the latest read: the
    /// disk-bound eviction order is kept from these, so a read never costs a disk write.
    accessed: HashMap<K, u64>,
}

type Shard<V> = LruShard<<V as Cached>::Key, V, Coherence<<V as Cached>::Key>>;

/// The sharded, byte-bounded LRU in front of one table, kept coherent with it by the writer.
#[derive(Debug)]
pub(crate) struct MemoryCache<V: Cached> {
    table: ShardedLru<V::Key, V, Coherence<V::Key>>,
    /// Whether reads are remembered for eviction order; the writer turns it on only when the
    /// disk bound is in sight, so that far from it a hit costs no bookkeeping.
    track_access: AtomicBool,
    /// The writer's marks, on a cache line of their own: the writer moves them at every
    /// commit, and they must not make every reader's line of the shards go stale.
    marks: CachePadded<Marks>,
}

/// What the writer publishes of its progress through memory.
#[derive(Debug, Default)]
struct Marks {
    /// Odd while the writer applies one commit's changes, even between commits (a sequence
    /// lock without the lock): a reader of several keys that sees the same even value before
    /// and after its lookups saw no commit half applied.
    publication: AtomicU64,
    /// Commits the writer has started to make visible in SQLite (counted before each COMMIT).
    committing: AtomicU64,
    /// Of those, the newest whose changes memory shows (or that failed, changing nothing): it
    /// trails `committing` only while a commit is between SQLite and memory.
    shown: AtomicU64,
    /// Woken whenever `shown` moves.
    shown_moved: tokio::sync::Notify,
}

/// Bytes an entry is charged against the budget.
pub(crate) fn charge<V: Cached>(key: &V::Key, value: &V) -> usize {
    V::size(key, value) + ENTRY_OVERHEAD
}

/// A poisoned shard (a panic mid-update) is safe to keep using once emptied; the new epoch
/// refuses fills of lookups made before.
fn recover<V: Cached>(shard: &mut Shard<V>) {
    shard.clear();
    shard.extra.epoch += 1;
    shard.extra.accessed.clear();
}

impl<V: Cached> MemoryCache<V> {
    /// A cache that holds at most `budget_bytes` (as counted by [`charge`]).
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            table: ShardedLru::new(
                budget_bytes,
                SHARDS,
                charge::<V>,
                || Coherence {
                    epoch: 0,
                    accessed: HashMap::new(),
                },
                recover::<V>,
            ),
            track_access: AtomicBool::new(false),
            marks: CachePadded::new(Marks::default()),
        }
    }

    /// The writer's publication count (see [`MemoryCache::begin_publish`]); odd while a
    /// commit is being applied.
    pub(crate) fn publication(&self) -> u64 {
        self.marks.publication.load(Ordering::SeqCst)
    }

    /// Writer only: the changes of one commit are about to be applied.
    pub(crate) fn begin_publish(&self) {
        self.marks.publication.fetch_add(1, Ordering::SeqCst);
    }

    /// Writer only: every change of the commit is applied.
    pub(crate) fn end_publish(&self) {
        self.marks.publication.fetch_add(1, Ordering::SeqCst);
    }

    /// Writer only: a commit is about to be made visible in SQLite; returns its number, to
    /// pass to [`MemoryCache::commit_shown`] once memory shows it or it failed.
    pub(crate) fn begin_commit(&self) -> u64 {
        self.marks.committing.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Writer only: memory shows every commit up to `commit` (or the writer is gone, with
    /// `u64::MAX`, and nothing will change memory any more).
    pub(crate) fn commit_shown(&self, commit: u64) {
        self.marks.shown.store(commit, Ordering::SeqCst);
        self.marks.shown_moved.notify_waiters();
    }

    /// Returns once memory shows every commit that SQLite could show when it was called. A
    /// read answered from SQLite calls it before answering, so that no later read answered
    /// from memory sees less than it did. It waits only while a commit is in progress: from
    /// just before its COMMIT (writing the WAL, and its fsync with `synchronous = full`) until
    /// the writer has applied it to memory.
    pub(crate) async fn catch_up(&self) {
        let marks = &*self.marks;
        let target = marks.committing.load(Ordering::SeqCst);
        while marks.shown.load(Ordering::SeqCst) < target {
            // A `Notified` receives every `notify_waiters` from its creation on, so a move
            // between creating it and the check below is not missed.
            let moved = marks.shown_moved.notified();
            if marks.shown.load(Ordering::SeqCst) >= target {
                break;
            }
            moved.await;
        }
    }

    /// Looks a key up, marking it recently used on a hit.
    pub(crate) fn get(&self, key: &V::Key, now_ms: u64) -> Lookup<V> {
        let shard = self.table.shard_of(key);
        let mut s = self.table.lock(shard);
        match s.get(key) {
            Some(e) if e.live(now_ms) => {
                let hit = e.clone();
                if self.track_access.load(Ordering::Relaxed) {
                    note_access(&mut s.extra.accessed, key, now_ms);
                }
                Lookup::Hit(hit)
            }
            Some(_) => {
                s.remove(key);
                Lookup::Expired
            }
            None => Lookup::Miss(FillTicket {
                shard,
                epoch: s.extra.epoch,
            }),
        }
    }

    /// The cached value of a key, live or not, without marking it used.
    pub(crate) fn peek(&self, key: &V::Key) -> Option<V> {
        self.table.lock_key(key).peek(key).cloned()
    }

    /// A copy of every cached key and value, shard by shard (not one atomic snapshot).
    pub(crate) fn entries(&self) -> Vec<(V::Key, V)> {
        let mut out = Vec::new();
        for i in 0..self.table.shard_count() {
            let s = self.table.lock(i);
            out.extend(s.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// Remembers that a key was read at `now_ms` (for reads answered from SQLite; memory hits
    /// are remembered by [`MemoryCache::get`]).
    pub(crate) fn record_access(&self, key: &V::Key, now_ms: u64) {
        if !self.track_access.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.table.lock_key(key);
        note_access(&mut s.extra.accessed, key, now_ms);
    }

    /// Writer only: turns remembering reads on or off (off when created).
    pub(crate) fn set_access_tracking(&self, on: bool) {
        self.track_access.store(on, Ordering::Relaxed);
    }

    /// Writer only: takes the keys read since the last call, with their latest read time.
    pub(crate) fn take_accessed(&self) -> Vec<(V::Key, u64)> {
        let mut out = Vec::new();
        for i in 0..self.table.shard_count() {
            out.extend(std::mem::take(&mut self.table.lock(i).extra.accessed));
        }
        out
    }

    /// Caches a value a reader found in SQLite, unless a write reached the shard since the
    /// reader's miss; returns the value now cached for the key, if any. When another reader
    /// filled the key first, its copy is kept (it holds the same commit and may have been
    /// changed in place since).
    pub(crate) fn fill(&self, ticket: FillTicket, key: V::Key, value: V) -> Option<V> {
        let mut s = self.table.lock(ticket.shard);
        if s.extra.epoch != ticket.epoch {
            return None;
        }
        if let Some(existing) = s.get(&key) {
            return Some(existing.clone());
        }
        self.insert_locked(&mut s, key, value.clone())
            .then_some(value)
    }

    /// Writer only: the committed value of a key.
    pub(crate) fn put(&self, key: V::Key, value: V) {
        let mut s = self.table.lock_key(&key);
        s.extra.epoch += 1;
        self.insert_locked(&mut s, key, value);
    }

    /// Writer only: a key was deleted (or evicted, or swept).
    pub(crate) fn remove(&self, key: &V::Key) {
        let mut s = self.table.lock_key(key);
        s.extra.epoch += 1;
        s.remove(key);
    }

    /// Writer only: changes a cached value in place (its size must not change).
    pub(crate) fn update(&self, key: &V::Key, change: impl FnOnce(&mut V)) {
        let mut s = self.table.lock_key(key);
        s.extra.epoch += 1;
        if let Some(v) = s.peek_mut(key) {
            change(v);
        }
    }

    /// Returns whether the value was cached.
    fn insert_locked(&self, s: &mut Shard<V>, key: V::Key, value: V) -> bool {
        s.remove(&key);
        let cost = charge(&key, &value);
        let budget = self.table.shard_budget();
        // An entry bigger than half a shard would flush most of it for one key: keep it on
        // disk only.
        if cost > budget / 2 {
            return false;
        }
        while s.bytes() + cost > budget {
            if s.pop_coldest().is_none() {
                break;
            }
        }
        s.insert(key, value);
        true
    }

    /// Bytes currently charged, over all shards.
    pub(crate) fn bytes(&self) -> usize {
        self.table.bytes()
    }

    /// The configured total budget (rounded down to a multiple of the shard count).
    #[cfg(test)]
    fn budget(&self) -> usize {
        self.table.shard_budget() * SHARDS
    }

    #[cfg(test)]
    fn recount(&self) -> usize {
        self.table.recount()
    }
}

fn note_access<K: Hash + Eq + Clone>(accessed: &mut HashMap<K, u64>, key: &K, now_ms: u64) {
    if let Some(t) = accessed.get_mut(key) {
        *t = (*t).max(now_ms);
    } else if accessed.len() < MAX_ACCESSED_PER_SHARD {
        accessed.insert(key.clone(), now_ms);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::cache::{CacheKey, CachedEntry, EntryCache};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn ck(ns: &str, key: &str) -> CacheKey {
        (ns.to_owned(), key.to_owned())
    }

    fn entry(value: &[u8], expires_at_ms: u64) -> CachedEntry {
        CachedEntry {
            value: Bytes::copy_from_slice(value),
            version: 1,
            expires_at_ms,
        }
    }

    #[test]
    fn a_put_is_read_back_until_it_expires() {
        let m = EntryCache::new(1 << 20);
        m.put(ck("ns", "k"), entry(b"v", 100));
        assert!(matches!(m.get(&ck("ns", "k"), 99), Lookup::Hit(e) if e.value == "v"));
        assert!(matches!(m.get(&ck("ns", "k"), 100), Lookup::Expired));
        assert!(matches!(m.get(&ck("ns", "k"), 0), Lookup::Miss(_)));
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn the_publication_count_is_odd_only_while_a_commit_is_applied() {
        let m = EntryCache::new(1 << 20);
        assert_eq!(m.publication(), 0);
        m.begin_publish();
        assert_eq!(m.publication() % 2, 1, "a commit is being applied");
        m.put(ck("ns", "a"), entry(b"v", 0));
        m.end_publish();
        assert_eq!(m.publication(), 2);
    }

    /// Starts a task that catches up with `m`; returns once the task is waiting.
    async fn catching_up(m: &Arc<EntryCache>) -> tokio::task::JoinHandle<()> {
        let (waiting, waited) = tokio::sync::oneshot::channel();
        let m = m.clone();
        let task = tokio::spawn(async move {
            let _ = waiting.send(());
            m.catch_up().await
        });
        waited.await.unwrap();
        // The task's only await left is the one in `catch_up`; let it reach it.
        tokio::task::yield_now().await;
        task
    }

    async fn finishes(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("catch_up never returned")
            .unwrap();
    }

    #[tokio::test]
    async fn catching_up_waits_for_a_commit_between_sqlite_and_memory() {
        let m = Arc::new(EntryCache::new(1 << 20));
        finishes(tokio::spawn({
            let m = m.clone();
            async move { m.catch_up().await }
        }))
        .await;
        let first = m.begin_commit();
        let waiter = catching_up(&m).await;
        assert!(!waiter.is_finished(), "commit {first} is not shown yet");
        // A commit started after the waiter began is not waited for.
        let second = m.begin_commit();
        m.commit_shown(first);
        finishes(waiter).await;
        let waiter = catching_up(&m).await;
        assert!(!waiter.is_finished(), "commit {second} is not shown yet");
        m.commit_shown(u64::MAX);
        finishes(waiter).await;
    }

    #[test]
    fn reads_are_remembered_until_collected() {
        let m = EntryCache::new(1 << 20);
        m.set_access_tracking(true);
        m.put(ck("ns", "a"), entry(b"v", 0));
        let _ = m.get(&ck("ns", "a"), 10);
        let _ = m.get(&ck("ns", "a"), 30);
        m.record_access(&ck("ns", "b"), 20);
        let mut seen = m.take_accessed();
        seen.sort();
        assert_eq!(seen, vec![(ck("ns", "a"), 30), (ck("ns", "b"), 20)]);
        assert!(m.take_accessed().is_empty());
    }

    #[test]
    fn namespaces_are_separate() {
        let m = EntryCache::new(1 << 20);
        m.put(ck("a", "k"), entry(b"1", 0));
        assert!(matches!(m.get(&ck("b", "k"), 0), Lookup::Miss(_)));
    }

    #[test]
    fn a_fill_after_a_write_is_refused() {
        let m = EntryCache::new(1 << 20);
        let Lookup::Miss(ticket) = m.get(&ck("ns", "k"), 0) else {
            panic!("expected a miss")
        };
        // The writer commits a newer value (or a delete) while the reader was in SQLite.
        m.remove(&ck("ns", "k"));
        m.fill(ticket, ck("ns", "k"), entry(b"stale", 0));
        assert!(matches!(m.get(&ck("ns", "k"), 0), Lookup::Miss(_)));
    }

    #[test]
    fn a_second_fill_keeps_the_first_readers_copy() {
        let m = EntryCache::new(1 << 20);
        let (Lookup::Miss(first), Lookup::Miss(second)) =
            (m.get(&ck("ns", "k"), 0), m.get(&ck("ns", "k"), 0))
        else {
            panic!("expected two misses")
        };
        assert_eq!(
            m.fill(first, ck("ns", "k"), entry(b"a", 0)).unwrap().value,
            "a"
        );
        assert_eq!(
            m.fill(second, ck("ns", "k"), entry(b"b", 0)).unwrap().value,
            "a"
        );
        assert!(matches!(m.get(&ck("ns", "k"), 0), Lookup::Hit(e) if e.value == "a"));
    }

    #[test]
    fn a_fill_without_a_write_is_kept() {
        let m = EntryCache::new(1 << 20);
        let Lookup::Miss(ticket) = m.get(&ck("ns", "k"), 0) else {
            panic!("expected a miss")
        };
        m.fill(ticket, ck("ns", "k"), entry(b"v", 0));
        assert!(matches!(m.get(&ck("ns", "k"), 0), Lookup::Hit(_)));
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        // One shard's worth of budget per key: force everything into a tiny budget and use
        // keys of one shard by checking behaviour through the whole cache.
        let m = EntryCache::new(SHARDS * (3 * charge(&ck("n", "k0"), &entry(&[0; 10], 0))));
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for k in &keys {
            m.put(ck("n", k), entry(&[0; 10], 0));
        }
        assert!(m.bytes() <= m.budget());
        // The newest key of all is always kept.
        assert!(matches!(
            m.get(&ck("n", keys.last().unwrap()), 0),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn huge_values_are_not_cached() {
        let m = EntryCache::new(SHARDS * 1000);
        m.put(ck("n", "big"), entry(&[0; 600], 0));
        assert!(matches!(m.get(&ck("n", "big"), 0), Lookup::Miss(_)));
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
            let m = EntryCache::new(budget);
            for op in ops {
                match op {
                    Op::Put(k, n) => m.put(ck("ns", &k.to_string()), entry(&vec![7; n], 0)),
                    Op::Fill(k, n) => {
                        if let Lookup::Miss(t) = m.get(&ck("ns", &k.to_string()), 0) {
                            m.fill(t, ck("ns", &k.to_string()), entry(&vec![1; n], 0));
                        }
                    }
                    Op::Remove(k) => m.remove(&ck("ns", &k.to_string())),
                    Op::Get(k) => { let _ = m.get(&ck("ns", &k.to_string()), 5); }
                    Op::Expire(k) => m.update(&ck("ns", &k.to_string()), |e| e.expires_at_ms = 1),
                }
                prop_assert!(m.bytes() <= m.budget());
                prop_assert_eq!(m.bytes(), m.recount());
            }
        }

        /// What was last put for a key is what a hit returns (the cache never serves an older
        /// value than the writer's latest).
        #[test]
        fn a_hit_is_the_latest_put(ops in prop::collection::vec((0u8..8, 0usize..64), 1..200)) {
            let m = EntryCache::new(1 << 20);
            let mut model = std::collections::HashMap::new();
            for (k, n) in ops {
                let value = vec![n as u8; n];
                m.put(ck("ns", &k.to_string()), entry(&value, 0));
                model.insert(k, value);
                for (mk, mv) in &model {
                    if let Lookup::Hit(e) = m.get(&ck("ns", &mk.to_string()), 0) {
                        prop_assert_eq!(&e.value[..], &mv[..]);
                    }
                }
            }
        }
    }
}
