//! Rate-limit state: held in memory, written behind to SQLite, loaded back lazily.
//!
//! Memory is the truth for every key it holds. [`LimitTable`] is sharded (one mutex per shard,
//! none across shards), and a Check decides under its key's shard lock, so it is atomic per key
//! and never waits for disk. A change marks the key dirty; the write-behind task
//! ([`Store::flush_rate_limits`], every half `write_behind`) sends the dirty keys' states to the
//! writer and, once they are committed, marks them clean. A key missing from memory is loaded
//! from SQLite by its first caller while later callers wait for that load (a placeholder slot
//! holds the key meanwhile), so a restart or an eviction never hands out a fresh budget.
//!
//! Why loads need no epoch check: a key leaves memory only when it is clean (disk holds its
//! latest state) and no write for it is in flight, so while it is absent nothing but the
//! sweeper touches its row, and the sweeper deletes only rows that count for nothing anyway.
//!
//! Memory is bounded: past the byte budget, the least recently used clean keys are evicted.
//! Dirty keys are never evicted; they become clean at the next write-behind, so the budget can
//! be overrun by at most what one write-behind interval dirties. The table is the store's one
//! sharded LRU ([`super::lru`]), with each shard's dirty list under the shard's lock.
//!
//! While writes fail (a full disk), no key becomes clean and that overrun would grow without
//! end, so the number of keys in memory also has a hard cap ([`KeyCap`], `ratelimit.max_keys`,
//! enforced per shard). A key already in memory is always checked; a key that would need a new
//! slot past the cap, once no clean key can make room, is answered by the cap's policy
//! ([`WhenFull`]): denied with a retry-after of one write-behind interval (fail closed, the
//! default), or admitted against a fresh budget that is not remembered (fail open). Each such
//! key is counted ([`LimitTable::refused`]) and a warning is logged at most every
//! [`REFUSAL_LOG_EVERY`].
//!
//! The writer's command is [`write`](mod@write), every statement on the table [`sql`].

pub(crate) mod sql;
pub(crate) mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::write::RateLimitOp;
use super::Store;
use super::lru::{LruShard, ShardedLru};
use super::writer::{Op, WriteQueue};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::limiter::{self, Decision, Rule, State};

/// A key's identity: the policy's name ('' for inline limits) and the key.
pub(crate) type LimitKey = (String, String);

/// Independently locked shards (a power of two).
const SHARDS: usize = 64;

/// Bytes charged per key besides its policy and key strings: the slot, the LRU links and the
/// string headers. An estimate that errs on the side of more.
pub const SLOT_OVERHEAD: usize = 160;

/// Slots looked at from the cold end by one eviction scan. A Check that adds a key makes one
/// scan; a write-behind scans again and again while scans keep evicting.
const EVICTION_SCAN: usize = 32;

/// Rows per command sent to the writer by one write-behind.
const FLUSH_CHUNK: usize = 1000;

/// Shortest time between two warnings that keys were refused for the key cap.
pub(crate) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a Check of a key that has no room in memory (past `ratelimit.max_keys`) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Not allowed, retry after one write-behind interval (fail closed).
    #[default]
    Deny,
    /// Allowed against a fresh budget that is not remembered (fail open).
    Allow,
}

/// The hard cap on rate-limit keys in memory, and what new keys get past it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyCap {
    /// Most keys in memory, dirty or clean (at least one per shard).
    pub(crate) max_keys: usize,
    /// The answer for a key that finds no room.
    pub(crate) when_full: WhenFull,
    /// The retry-after of a denied key: when the next write-behind may have made room.
    pub(crate) retry_after_ms: u64,
}

/// One row for the writer: a key and its state, or `None` to delete the row.
#[derive(Debug, Clone)]
pub(crate) struct LimitRow {
    /// Policy name.
    pub(crate) policy: String,
    /// Key.
    pub(crate) key: String,
    /// The state's text and its expiry (Unix ms), or `None` when the key has no state.
    pub(crate) state: Option<(String, u64)>,
}

#[derive(Debug)]
pub(crate) enum Slot {
    /// The first caller is loading the key from SQLite; the others wait until the sender
    /// (held by that caller's [`Load`]) is dropped.
    Loading(watch::Receiver<()>),
    Ready(Entry),
}

#[derive(Debug)]
pub(crate) struct Entry {
    state: Option<State>,
    /// Changes since the key entered memory.
    version: u64,
    /// The version disk holds.
    persisted: u64,
    /// Whether the key is in its shard's dirty list.
    queued: bool,
}

impl Entry {
    fn clean(&self) -> bool {
        !self.queued && self.persisted == self.version
    }

    /// Whether the key counts for nothing at `now_ms`.
    fn dead(&self, now_ms: u64) -> bool {
        self.state.is_none_or(|s| s.expires_at_ms() <= now_ms)
    }
}

/// A shard of the table; its state besides the slots is its dirty list: keys changed since
/// the last write-behind took them.
type Shard = LruShard<LimitKey, Slot, Vec<LimitKey>>;

/// What [`LimitTable::with`] found.
#[derive(Debug)]
pub(crate) enum Access<T> {
    /// The key was in memory; here is the closure's answer.
    Done(T),
    /// Another caller is loading the key: wait for `changed()` to end, then try again.
    Wait(watch::Receiver<()>),
    /// The key is not in memory and the key cap leaves no room for it.
    Full,
    /// The key was not in memory: load it from disk and [`Load::fill`] it, then try again.
    Load(Load),
}

/// The duty of loading one key; dropping it without filling frees the key for another try.
#[derive(Debug)]
pub(crate) struct Load {
    table: Arc<LimitTable>,
    key: LimitKey,
    _loading: watch::Sender<()>,
}

impl Load {
    /// Puts the state read from disk in memory (clean) and wakes the waiting callers.
    pub(crate) fn fill(self, state: Option<State>) {
        let mut shard = self.table.shard(&self.key);
        if let Some(slot @ Slot::Loading(_)) = shard.peek_mut(&self.key) {
            *slot = Slot::Ready(Entry {
                state,
                version: 0,
                persisted: 0,
                queued: false,
            });
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let mut shard = self.table.shard(&self.key);
        if matches!(shard.peek(&self.key), Some(Slot::Loading(_))) {
            shard.remove(&self.key);
        }
    }
}

/// The sharded, byte-bounded table of rate-limit state.
#[derive(Debug)]
pub(crate) struct LimitTable {
    table: ShardedLru<LimitKey, Slot, Vec<LimitKey>>,
    /// The hard cap on keys, and its policy.
    cap: KeyCap,
    /// Most keys in one shard: the cap divided among the shards, rounded up.
    shard_max_keys: usize,
    /// Keys refused a slot for the key cap since start.
    refused: AtomicU64,
    /// When refusals were last logged, and how many came since.
    refusal_log: Mutex<(Option<Instant>, u64)>,
}

/// Bytes charged for a key, whatever its slot holds (a state is a few fixed-size numbers).
fn charge((policy, key): &LimitKey) -> usize {
    policy.len() + key.len() + SLOT_OVERHEAD
}

impl LimitTable {
    /// A table holding at most about `budget_bytes` of clean keys, and never more keys than
    /// `cap` allows.
    pub(crate) fn new(budget_bytes: usize, cap: KeyCap) -> Self {
        Self {
            // The shard's invariants hold between statements that cannot panic: a poisoned
            // shard is used as it is.
            table: ShardedLru::new(budget_bytes, SHARDS, |k, _| charge(k), Vec::new, |_| {}),
            cap,
            shard_max_keys: cap.max_keys.div_ceil(SHARDS).max(1),
            refused: AtomicU64::new(0),
            refusal_log: Mutex::new((None, 0)),
        }
    }

    /// The key cap and its policy.
    pub(crate) fn cap(&self) -> KeyCap {
        self.cap
    }

    /// Keys refused a slot for the key cap since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a key refused for the cap, and warns, at most once per [`REFUSAL_LOG_EVERY`],
    /// with how many were refused since the last warning.
    fn refuse(&self, key: &LimitKey) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut log = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += 1;
        if log.0.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) {
            return;
        }
        let refused = std::mem::take(&mut log.1);
        log.0 = Some(Instant::now());
        drop(log);
        tracing::warn!(
            refused,
            max_keys = self.cap.max_keys,
            policy = %key.0,
            when_full = ?self.cap.when_full,
            "rate-limit memory is full (ratelimit.max_keys): new keys are answered by \
             ratelimit.when_full until write-behinds succeed again"
        );
    }

    /// Frees a slot in a shard at its key cap by evicting clean keys from the cold end
    /// (looking at no more than [`EVICTION_SCAN`] slots); returns whether there is room.
    fn make_room(&self, shard: &mut Shard) -> bool {
        let need = (shard.len() + 1).saturating_sub(self.shard_max_keys);
        if need == 0 {
            return true;
        }
        let gone: Vec<LimitKey> = shard
            .coldest()
            .take(EVICTION_SCAN)
            .filter(|(_, slot)| matches!(slot, Slot::Ready(e) if e.clean()))
            .map(|(k, _)| k.clone())
            .take(need)
            .collect();
        let room = gone.len() == need;
        for key in gone {
            shard.remove(&key);
        }
        room
    }

    fn shard(&self, key: &LimitKey) -> std::sync::MutexGuard<'_, Shard> {
        self.table.lock_key(key)
    }

    /// Runs `f` on the key's state under its shard lock; `f` returns its answer and the state
    /// the key has afterwards. A changed state marks the key dirty.
    pub(crate) fn with<T>(
        self: &Arc<Self>,
        key: &LimitKey,
        f: impl FnOnce(Option<&State>) -> (T, Option<State>),
    ) -> Access<T> {
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        if shard.peek(key).is_none() && !self.make_room(shard) {
            self.refuse(key);
            return Access::Full;
        }
        match shard.get(key) {
            Some(Slot::Ready(entry)) => {
                let (answer, next) = f(entry.state.as_ref());
                if next != entry.state {
                    entry.state = next;
                    entry.version += 1;
                    if !entry.queued {
                        entry.queued = true;
                        shard.extra.push(key.clone());
                    }
                }
                Access::Done(answer)
            }
            Some(Slot::Loading(rx)) => Access::Wait(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(());
                shard.insert(key.clone(), Slot::Loading(rx));
                // On the Check's path: one bounded scan; the write-behind evicts the rest.
                self.evict(shard, None);
                Access::Load(Load {
                    table: self.clone(),
                    key: key.clone(),
                    _loading: tx,
                })
            }
        }
    }

    /// Evicts clean keys from the cold end while the shard is over budget, and (with `now_ms`)
    /// clean keys at the cold end that count for nothing any more; looks at no more than
    /// [`EVICTION_SCAN`] slots. Returns whether it evicted something and stopped only at that
    /// limit, so that another call may evict more.
    fn evict(&self, shard: &mut Shard, now_ms: Option<u64>) -> bool {
        let mut gone = Vec::new();
        let mut over = shard.bytes().saturating_sub(self.table.shard_budget());
        let mut scanned = 0;
        let mut stopped = false;
        for (key, slot) in shard.coldest().take(EVICTION_SCAN) {
            scanned += 1;
            let Slot::Ready(entry) = slot else { continue };
            if !entry.clean() {
                continue;
            }
            if over > 0 {
                over = over.saturating_sub(charge(key));
                gone.push(key.clone());
            } else if now_ms.is_some_and(|now| entry.dead(now)) {
                gone.push(key.clone());
            } else {
                stopped = true;
                break;
            }
        }
        let more = !stopped && scanned == EVICTION_SCAN && !gone.is_empty();
        for key in gone {
            shard.remove(&key);
        }
        more
    }

    /// Takes every dirty key's state as of now, with its version.
    fn take_dirty(&self) -> Vec<(LimitKey, u64, Option<State>)> {
        let mut out = Vec::new();
        for i in 0..self.table.shard_count() {
            let mut shard = self.table.lock(i);
            let shard = &mut *shard;
            for key in std::mem::take(&mut shard.extra) {
                if let Some(Slot::Ready(entry)) = shard.peek_mut(&key) {
                    entry.queued = false;
                    out.push((key, entry.version, entry.state));
                }
            }
        }
        out
    }

    /// Records that disk now holds these versions; then evicts what the budget and time allow.
    fn persisted(&self, done: &[(LimitKey, u64)], now_ms: u64) {
        for (key, version) in done {
            let mut shard = self.shard(key);
            if let Some(Slot::Ready(entry)) = shard.peek_mut(key) {
                entry.persisted = entry.persisted.max(*version);
            }
        }
        // One scan at a time, the shard's lock released between two, so that every key this
        // write-behind made clean can go now (after a burst of new keys, far more than one
        // scan's worth) without holding up the shard's Checks for the whole of it.
        for i in 0..self.table.shard_count() {
            while self.evict(&mut self.table.lock(i), Some(now_ms)) {}
        }
    }

    /// Puts keys whose write failed back on the dirty lists.
    fn requeue(&self, keys: impl IntoIterator<Item = LimitKey>) {
        for key in keys {
            let mut shard = self.shard(&key);
            let shard = &mut *shard;
            if let Some(Slot::Ready(entry)) = shard.peek_mut(&key)
                && !entry.queued
                && entry.persisted < entry.version
            {
                entry.queued = true;
                shard.extra.push(key);
            }
        }
    }

    /// Keys in memory (including ones being loaded).
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes charged for the keys in memory.
    pub(crate) fn bytes(&self) -> usize {
        self.table.bytes()
    }
}

/// The write-behind: takes the dirty keys, has the writer commit them, marks them clean.
/// Shared by the periodic task, Reset (which waits for its change to be on disk) and close.
#[derive(Debug)]
pub(crate) struct WriteBehind {
    table: Arc<LimitTable>,
    writer: WriteQueue,
    clock: Arc<dyn Clock>,
    /// One write-behind at a time, so that states reach the writer in the order they were
    /// taken.
    serial: tokio::sync::Mutex<()>,
}

impl WriteBehind {
    /// A write-behind for `table` through `writer`.
    pub(crate) fn new(table: Arc<LimitTable>, writer: WriteQueue, clock: Arc<dyn Clock>) -> Self {
        Self {
            table,
            writer,
            clock,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes every dirty key's state (a key that counts for nothing is deleted) and waits for
    /// the commits; returns how many keys were written. Keys whose write failed stay dirty.
    pub(crate) async fn flush(&self) -> Result<usize> {
        let _serial = self.serial.lock().await;
        let dirty = self.table.take_dirty();
        let now = self.clock.now_ms();
        let mut sent = Vec::new();
        let mut failure = None;
        let mut chunks = dirty.chunks(FLUSH_CHUNK);
        for chunk in chunks.by_ref() {
            let rows = chunk
                .iter()
                .map(|((policy, key), _, state)| LimitRow {
                    policy: policy.clone(),
                    key: key.clone(),
                    state: state
                        .filter(|s| s.expires_at_ms() > now)
                        .map(|s| (s.encode(), s.expires_at_ms())),
                })
                .collect();
            // Every chunk is queued before any is waited for, so that they share commits.
            let queued = self
                .writer
                .queue(|reply| Op::RateLimit(RateLimitOp::Persist { rows, reply }))
                .await;
            match queued {
                Ok(answer) => sent.push((chunk, answer)),
                Err(e) => {
                    failure = Some(e);
                    self.table.requeue(chunk.iter().map(|(k, _, _)| k.clone()));
                    break;
                }
            }
        }
        for chunk in chunks {
            self.table.requeue(chunk.iter().map(|(k, _, _)| k.clone()));
        }
        let mut done = Vec::with_capacity(dirty.len());
        for (chunk, answer) in sent {
            let result = answer
                .await
                .unwrap_or_else(|_| Err(Error::Unavailable("larder is shutting down".into())));
            match result {
                Ok(_) => {
                    done.extend(chunk.iter().map(|(k, v, _)| (k.clone(), *v)));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    self.table.requeue(chunk.iter().map(|(k, _, _)| k.clone()));
                }
            }
        }
        self.table.persisted(&done, now);
        match failure {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }

    /// Flushes every `interval` until `stop` is cancelled.
    pub(crate) async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "writing rate-limit state failed; will retry");
            }
        }
    }
}

impl Store {
    /// Decides a request of `cost` units for `key` under `policy` ('' for inline) and `rule`,
    /// and consumes it when `consume` is set and it is admitted. `cost` must be in
    /// 1..=`rule.capacity()`. Waits for disk only when the key is not in memory (to load it).
    pub async fn rate_limit(
        &self,
        policy: &str,
        key: &str,
        rule: &Rule,
        cost: u32,
        consume: bool,
    ) -> Result<Decision> {
        let clock = &self.inner.clock;
        let decision = self
            .with_limit(policy, key, |state| {
                limiter::decide(rule, state, clock.now_ms(), cost, consume)
            })
            .await?;
        let decision = match decision {
            Some(decision) => decision,
            None => when_full(
                &self.inner.limits.cap(),
                rule,
                clock.now_ms(),
                cost,
                consume,
            ),
        };
        if consume {
            self.inner.monitor.checks.count(policy, decision.allowed);
        }
        Ok(decision)
    }

    /// Forgets a key's state and waits until that is on disk; returns whether the key had
    /// state that still counted. A key not in memory while the key cap leaves no room for it
    /// is `UNAVAILABLE` (its state cannot be read into memory to be forgotten).
    pub async fn reset_rate_limit(&self, policy: &str, key: &str) -> Result<bool> {
        let clock = &self.inner.clock;
        let existed = self
            .with_limit(policy, key, |state| {
                (
                    state.is_some_and(|s| s.expires_at_ms() > clock.now_ms()),
                    None,
                )
            })
            .await?
            .ok_or_else(|| {
                Error::Unavailable(
                    "rate-limit memory is full (ratelimit.max_keys); retry once state is written"
                        .into(),
                )
            })?;
        self.inner.write_behind.flush().await?;
        Ok(existed)
    }

    /// Writes the rate-limit state changed since the last write-behind now; returns how many
    /// keys were written.
    pub async fn flush_rate_limits(&self) -> Result<usize> {
        self.inner.write_behind.flush().await
    }

    /// Keys and bytes of rate-limit state in memory (for tests and metrics).
    pub fn rate_limit_memory(&self) -> (usize, usize) {
        (self.inner.limits.len(), self.inner.limits.bytes())
    }

    /// New rate-limit keys refused a slot in memory for `ratelimit.max_keys` since start
    /// (answered by `ratelimit.when_full`).
    pub fn rate_limit_keys_refused(&self) -> u64 {
        self.inner.limits.refused()
    }

    /// Runs `f` on the key's state in memory, loading it from disk first if needed; `None`
    /// when the key is not in memory and the key cap leaves no room for it.
    async fn with_limit<T>(
        &self,
        policy: &str,
        key: &str,
        f: impl Fn(Option<&State>) -> (T, Option<State>),
    ) -> Result<Option<T>> {
        let id: LimitKey = (policy.to_owned(), key.to_owned());
        loop {
            match self.inner.limits.with(&id, &f) {
                Access::Done(answer) => return Ok(Some(answer)),
                Access::Full => return Ok(None),
                Access::Wait(mut loading) => {
                    // Ends (with an error) when the loading caller is done, either way.
                    let _ = loading.changed().await;
                }
                Access::Load(load) => {
                    let (policy, key) = id.clone();
                    let now = self.inner.clock.now_ms();
                    // Straight from a reader, without waiting for memory to show the commits
                    // read (see `Store::read`): rate-limit state is never applied to memory
                    // by the writer, memory is its truth, and callers of this key wait here.
                    let state = self
                        .inner
                        .readers
                        .run(move |conn| load_state(conn, &policy, &key, now))
                        .await?;
                    load.fill(state);
                }
            }
        }
    }
}

/// The answer to a Check of a key that found no room in memory: under [`WhenFull::Deny`], not
/// allowed, nothing remaining, retry after one write-behind interval; under
/// [`WhenFull::Allow`], what a key with no state would be answered (nothing is remembered).
fn when_full(cap: &KeyCap, rule: &Rule, now_ms: u64, cost: u32, consume: bool) -> Decision {
    let (fresh, _) = limiter::decide(rule, None, now_ms, cost, consume);
    match cap.when_full {
        WhenFull::Allow => fresh,
        WhenFull::Deny => Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: cap.retry_after_ms.max(1),
            reset_after_ms: fresh.reset_after_ms.max(cap.retry_after_ms),
            ..fresh
        },
    }
}

/// Reads a key's state from disk; `None` if it has none that still counts. A row whose text
/// is not a state is logged and treated as absent (the next write replaces it).
fn load_state(
    conn: &rusqlite::Connection,
    policy: &str,
    key: &str,
    now_ms: u64,
) -> Result<Option<State>> {
    let row = conn
        .prepare_cached(sql::STATE)
        .and_then(|mut stmt| {
            stmt.query_row(params![policy, key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
        })
        .map_err(Error::storage("reading rate-limit state"))?;
    let Some((text, expires_at)) = row.filter(|(_, at)| *at > 0 && *at as u64 > now_ms) else {
        return Ok(None);
    };
    let state = State::decode(&text);
    if state.is_none() {
        tracing::warn!(policy, key, state = %text, expires_at, "ignoring unreadable rate-limit state");
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::limiter::Algorithm;

    fn key(i: usize) -> LimitKey {
        (String::new(), format!("k{i:06}"))
    }

    /// Brings `key` into memory (nothing on disk) and changes its state, so that it is dirty.
    fn change(table: &Arc<LimitTable>, key: &LimitKey, tat_ns: u64) {
        if let Access::Load(load) = table.with(key, |_| ((), None)) {
            load.fill(None);
        }
        let next = Some(State::Gcra { tat_ns });
        assert!(matches!(table.with(key, |_| ((), next)), Access::Done(())));
    }

    /// A cap that no test of the byte budget reaches.
    fn no_cap() -> KeyCap {
        KeyCap {
            max_keys: usize::MAX,
            when_full: WhenFull::Deny,
            retry_after_ms: 1000,
        }
    }

    #[test]
    fn a_write_behind_evicts_every_clean_key_over_the_budget_and_no_dirty_one() {
        let one = charge(&key(0));
        let budget = SHARDS * 2 * one;
        let table = Arc::new(LimitTable::new(budget, no_cap()));
        // Far more keys per shard than one eviction scan looks at.
        let keys: Vec<LimitKey> = (0..SHARDS * 100).map(key).collect();
        for k in &keys {
            change(&table, k, u64::MAX);
        }
        assert_eq!(table.len(), keys.len(), "dirty keys are never evicted");
        let taken: Vec<(LimitKey, u64)> = table
            .take_dirty()
            .into_iter()
            .map(|(k, version, _)| (k, version))
            .collect();
        // Changed again while its write was on the way: dirty, whatever the budget.
        change(&table, &keys[0], u64::MAX - 1);
        table.persisted(&taken, 0);
        assert!(
            table.bytes() <= budget + one,
            "{} bytes after the write-behind, for a budget of {budget}",
            table.bytes()
        );
        let kept = table.with(&keys[0], |s| (s.copied(), s.copied()));
        let latest = Some(State::Gcra {
            tat_ns: u64::MAX - 1,
        });
        assert!(
            matches!(kept, Access::Done(state) if state == latest),
            "the dirty key was evicted"
        );
    }

    /// A table of one key per shard, with `when_full`.
    fn capped(when_full: WhenFull) -> Arc<LimitTable> {
        let cap = KeyCap {
            max_keys: SHARDS,
            when_full,
            retry_after_ms: 1000,
        };
        // A byte budget far above the cap: only the cap is at work.
        Arc::new(LimitTable::new(1 << 30, cap))
    }

    /// Keys `0..n` of which none shares a shard with another.
    fn one_per_shard(table: &LimitTable) -> Vec<LimitKey> {
        let mut seen = std::collections::HashSet::new();
        (0..)
            .map(key)
            .filter(|k| seen.insert(table.table.shard_of(k)))
            .take(SHARDS)
            .collect()
    }

    #[test]
    fn past_the_key_cap_new_keys_are_refused_and_keys_in_memory_are_still_checked() {
        let table = capped(WhenFull::Deny);
        let keys = one_per_shard(&table);
        for k in &keys {
            change(&table, k, u64::MAX);
        }
        assert_eq!(table.len(), SHARDS);
        // Every shard holds one dirty key: a new key finds no room, wherever it falls.
        for i in 0..100 {
            let newcomer = (String::new(), format!("new{i}"));
            assert!(matches!(
                table.with(&newcomer, |_| ((), None)),
                Access::Full
            ));
        }
        assert_eq!(table.refused(), 100);
        assert_eq!(table.len(), SHARDS, "refused keys take no slot");
        // A key in memory keeps being checked and changed.
        let next = Some(State::Gcra {
            tat_ns: u64::MAX - 1,
        });
        assert!(matches!(
            table.with(&keys[0], |_| ((), next)),
            Access::Done(())
        ));

        // Once the keys are written (clean), a new key takes a clean key's slot.
        let taken: Vec<(LimitKey, u64)> = table
            .take_dirty()
            .into_iter()
            .map(|(k, version, _)| (k, version))
            .collect();
        table.persisted(&taken, 0);
        let newcomer = (String::new(), "after".to_owned());
        let access = table.with(&newcomer, |_| ((), None));
        assert!(matches!(access, Access::Load(_)), "{access:?}");
        assert_eq!(table.len(), SHARDS, "the cap still holds");
        assert_eq!(table.refused(), 100);
    }

    #[test]
    fn a_refused_key_is_denied_with_a_retry_after_or_allowed_unremembered() {
        let clock = ManualClock::new(1_000_000);
        let rule = Rule::new(Algorithm::Gcra, 10, 60_000, 0).unwrap();
        let deny = when_full(
            &capped(WhenFull::Deny).cap(),
            &rule,
            clock.now_ms(),
            1,
            true,
        );
        assert!(!deny.allowed);
        assert_eq!(deny.remaining, 0);
        assert_eq!(deny.retry_after_ms, 1000, "one write-behind interval");
        assert_eq!(deny.limit, 10);
        clock.advance_ms(5_000);
        let allow = when_full(
            &capped(WhenFull::Allow).cap(),
            &rule,
            clock.now_ms(),
            3,
            true,
        );
        let (fresh, _) = limiter::decide(&rule, None, clock.now_ms(), 3, true);
        assert_eq!(allow, fresh, "a fresh budget, as for a key with no state");
        assert!(allow.allowed);
    }
}
