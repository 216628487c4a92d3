//! The cache table: its in-memory LRU of entries, its reads, and the [`Store`] methods
//! behind CacheService. Its writer commands are [`write`](mod@write), its upkeep (sweep, eviction)
//! [`evict`], and every statement on it [`sql`].
//!
//! Each row is charged [`disk_charge`] against `cache.max_disk`: what it costs in the file,
//! namespace and index entry included, not only the bytes the client sent.
//!
//! Reads try memory, then a reader thread's read-only connection (see [`Store::get_many`] for how a
//! read of several keys answers from one commit). Writes go through the writer and answer
//! once committed.

pub(crate) mod evict;
pub(crate) mod sql;
pub(crate) mod write;

use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use self::write::CacheOp;
use crate::clock::remaining_ms;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::memory::{Cached, FillTicket, Lookup, MemoryCache};
use crate::store::readers::in_one_snapshot;
use crate::store::stats::CounterValues;
use crate::store::writer::Op;

/// Bytes every cache row is charged against `cache.max_disk` beyond its namespace, key and
/// value (see [`disk_charge`]); a macro too, so that the schema migration that recomputes old
/// rows' charges and the Stats query that takes it back out use the same number.
///
/// Measured: 20,000 rows of 1-byte keys and values written into a fresh store with this
/// schema, checkpointed, no `VACUUM`, then `larder.db` compared with the charged total. A row
/// took 60.8 bytes of file under 8-byte namespaces, 113.5 under 32-byte ones, 184.3 under
/// 64-byte ones and 322.8 under 128-byte ones (in key order or shuffled alike): about
/// 2.2 bytes per byte of namespace and key (they are stored twice, in the row and in the
/// `UNIQUE (namespace, key)` index, on pages not quite full) plus about 43 bytes (the other
/// columns, the cell headers and the index entry's rowid). Charging namespace and key twice
/// plus 64 bytes covers every one of those shapes (83 charged for 60.8 on disk, 323 for
/// 322.8); `tests/suite/disk_bounds.rs` checks the whole file against the bound.
macro_rules! row_overhead {
    () => {
        64
    };
}
pub(crate) use row_overhead;

/// See [`row_overhead!`].
pub(crate) const ROW_OVERHEAD: usize = row_overhead!();

/// What a row of `namespace`, `key` and a value of `value_len` bytes is charged against
/// `cache.max_disk`: namespace and key twice (row and index), the value once, and
/// [`ROW_OVERHEAD`]. Migration 4 → 5 in `schema.rs` computes the same in SQL.
pub(crate) fn disk_charge(namespace: &str, key: &str, value_len: usize) -> i64 {
    (2 * (namespace.len() + key.len()) + value_len + ROW_OVERHEAD) as i64
}

/// Tries of a multi-key read to find memory between two commits' publications before it
/// reads every key from SQLite instead.
const MEMORY_PASSES: usize = 4;

/// A cache entry's key: namespace and key.
pub(crate) type CacheKey = (String, String);

/// One cached value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedEntry {
    /// The stored bytes.
    pub(crate) value: Bytes,
    /// The entry's version.
    pub(crate) version: u64,
    /// Absolute expiry in Unix ms; 0 = never.
    pub(crate) expires_at_ms: u64,
}

impl Cached for CachedEntry {
    type Key = CacheKey;

    fn size((namespace, key): &CacheKey, value: &Self) -> usize {
        namespace.len() + key.len() + value.value.len()
    }

    fn live(&self, now_ms: u64) -> bool {
        remaining_ms(self.expires_at_ms, now_ms).is_some()
    }
}

/// The LRU of cache entries.
pub(crate) type EntryCache = MemoryCache<CachedEntry>;

/// When a Set writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    /// Always.
    Always,
    /// Only if the key is absent or expired (NX).
    IfAbsent,
    /// Only if the key is live (XX).
    IfPresent,
    /// Only if the live entry has this version (compare-and-set).
    IfVersion(u64),
}

/// One entry of a SetMany.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Key.
    pub key: String,
    /// Value.
    pub value: Bytes,
    /// Time to live in ms; 0 = never expires.
    pub ttl_ms: u64,
}

/// A live entry as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The stored bytes.
    pub value: Bytes,
    /// The entry's version.
    pub version: u64,
    /// Milliseconds until expiry; 0 = never.
    pub ttl_ms: u64,
}

/// A counter after an Increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The counter's value after the call.
    pub value: i64,
    /// The entry's version after the call.
    pub version: u64,
    /// Whether a live counter was there before the call.
    pub existed: bool,
}

/// Entry and byte counts plus counters, for Stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Live entries on disk.
    pub entries: u64,
    /// Bytes of keys and values of those entries (not their charge against the disk bound,
    /// which also counts namespaces and row overhead).
    pub bytes: u64,
    /// Counters since start.
    pub counters: CounterValues,
}

/// How much one Scan page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBounds {
    /// Most entries.
    pub rows: usize,
    /// Most bytes of values, added up.
    pub value_bytes: usize,
    /// Most bytes of keys, added up.
    pub key_bytes: usize,
}

/// One page of a Scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Live entries with their keys, in key order.
    pub entries: Vec<(String, Found)>,
    /// Whether the page ended before the last key of the range: when false, a next page
    /// would be empty.
    pub more: bool,
}

impl Store {
    /// Reads one key.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Found>> {
        let mut found = self
            .get_many(namespace, &[key.to_owned()], usize::MAX)
            .await?;
        Ok(found.pop().flatten())
    }

    /// Reads many keys of one namespace; answers in order. Fails with `INVALID_ARGUMENT` on
    /// `keys` once the values found add up to more than `max_bytes`, so that one request
    /// cannot make the daemon build an unbounded response.
    ///
    /// The answer is one committed state: all from memory between two commits' publications,
    /// or, when a key is not in memory, all from one SQLite read transaction. So a concurrent
    /// SetMany is seen whole or not at all.
    pub async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Found>>> {
        let too_large = move || {
            Error::invalid(
                "keys",
                format!(
                    "the values found add up to more than the response limit of {max_bytes} \
                     bytes; ask for fewer keys at a time"
                ),
            )
        };
        let now = self.inner.clock.now_ms();
        let counters = self.counters(namespace);
        let memory = &self.inner.memory;
        // Built once: every memory pass and the fill from SQLite use the same keys.
        let cache_keys: Vec<CacheKey> = keys
            .iter()
            .map(|key| (namespace.to_owned(), key.clone()))
            .collect();
        let lookup = |key: &CacheKey| memory.get(key, now);
        let lookups = if keys.len() > 1 {
            let mut lookups = None;
            for _ in 0..MEMORY_PASSES {
                let before = memory.publication();
                if before % 2 == 1 {
                    tokio::task::yield_now().await;
                    continue;
                }
                let pass: Vec<Lookup<CachedEntry>> = cache_keys.iter().map(lookup).collect();
                if memory.publication() == before {
                    lookups = Some(pass);
                    break;
                }
            }
            lookups
        } else {
            // One key is one commit's state by itself: no publication count to check.
            Some(cache_keys.iter().map(lookup).collect())
        };
        // Tickets of the keys to read from SQLite (`None`: read, but do not fill memory).
        let tickets: Vec<Option<FillTicket>> = match lookups {
            Some(pass) if pass.iter().all(|l| !matches!(l, Lookup::Miss(_))) => {
                let mut total = 0usize;
                let mut answers = Vec::with_capacity(keys.len());
                for lookup in pass {
                    match lookup {
                        Lookup::Hit(e) => {
                            counters.read(true, true);
                            total = total.saturating_add(e.value.len());
                            if total > max_bytes {
                                return Err(too_large());
                            }
                            answers.push(Some(found(e, now)));
                        }
                        _ => {
                            counters.read(false, false);
                            answers.push(None);
                        }
                    }
                }
                return Ok(answers);
            }
            // A key is not in memory: every key is read from SQLite, in one snapshot.
            Some(pass) => pass
                .into_iter()
                .map(|l| match l {
                    Lookup::Miss(ticket) => Some(ticket),
                    _ => None,
                })
                .collect(),
            // Commits kept being applied while the keys were looked up: SQLite answers.
            None => (0..keys.len()).map(|_| None).collect(),
        };
        // The keys go to the blocking thread and come back with their rows, copied nowhere.
        let (cache_keys, rows) = self
            .read(move |conn| {
                if cache_keys.len() == 1 {
                    let rows = read_rows(conn, &cache_keys, max_bytes, too_large)?;
                    return Ok((cache_keys, rows));
                }
                // One read transaction, so that every key is read from the same commit.
                let rows = in_one_snapshot(conn, |conn| {
                    read_rows(conn, &cache_keys, max_bytes, too_large)
                })?;
                Ok((cache_keys, rows))
            })
            .await?;
        let mut answers = Vec::with_capacity(keys.len());
        for ((key, ticket), row) in cache_keys.into_iter().zip(tickets).zip(rows) {
            match row.filter(|e| remaining_ms(e.expires_at_ms, now).is_some()) {
                Some(entry) => {
                    counters.read(true, false);
                    answers.push(Some(found(entry.clone(), now)));
                    memory.record_access(&key, now);
                    // `read` returned once memory showed every commit the snapshot held, so
                    // the fill cannot show part of one early.
                    if let Some(ticket) = ticket {
                        memory.fill(ticket, key, entry);
                    }
                }
                None => {
                    counters.read(false, false);
                    answers.push(None);
                }
            }
        }
        Ok(answers)
    }

    /// Writes one key under a condition.
    pub async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Bytes,
        ttl_ms: u64,
        condition: SetCondition,
    ) -> Result<(bool, u64)> {
        let done = self
            .write(|reply| {
                Op::Cache(CacheOp::Set {
                    namespace: namespace.to_owned(),
                    key: key.to_owned(),
                    value,
                    ttl_ms,
                    condition,
                    reply,
                })
            })
            .await?;
        Ok((done.stored, done.version))
    }

    /// Writes many keys in one transaction; returns their new versions in order.
    pub async fn set_many(&self, namespace: &str, entries: Vec<NewEntry>) -> Result<Vec<u64>> {
        self.write(|reply| {
            Op::Cache(CacheOp::SetMany {
                namespace: namespace.to_owned(),
                entries,
                reply,
            })
        })
        .await
    }

    /// Deletes keys; returns how many live ones existed.
    pub async fn delete(&self, namespace: &str, keys: Vec<String>) -> Result<u64> {
        self.write(|reply| {
            Op::Cache(CacheOp::Delete {
                namespace: namespace.to_owned(),
                keys,
                reply,
            })
        })
        .await
    }

    /// Deletes `key` only while its version is `version`; returns whether a live entry was
    /// deleted. Any other version (or none) is left as it is.
    pub async fn delete_if_version(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
    ) -> Result<bool> {
        let deleted = self
            .write(|reply| {
                Op::Cache(CacheOp::DeleteIfVersion {
                    namespace: namespace.to_owned(),
                    key: key.to_owned(),
                    version,
                    reply,
                })
            })
            .await?;
        Ok(deleted > 0)
    }

    /// Deletes every key starting with `prefix` that was written before the call; returns how
    /// many live ones there were. Deletes in chunks of `DELETE_CHUNK` keys, one
    /// transaction each, so that other writes go on between two (see `Store::delete_range`).
    pub async fn delete_prefix(&self, namespace: &str, prefix: &str) -> Result<u64> {
        self.delete_range(namespace, prefix).await
    }

    /// Deletes every key of a namespace written before the call, in chunks like
    /// [`Store::delete_prefix`].
    pub async fn clear(&self, namespace: &str) -> Result<u64> {
        self.delete_range(namespace, "").await
    }

    /// Deletes the keys of `namespace` starting with `prefix` and written before this call,
    /// one chunk per writer command, in key order, and answers when the last chunk committed.
    ///
    /// A reader meanwhile sees each chunk's keys go at its commit: some keys of the range
    /// gone and the rest still there, never a deleted key back. A key written after the call
    /// began is never deleted by it. The chunks run on a task of their own, so that a caller
    /// who goes away does not leave the delete half done; a crash (or a failed chunk) does,
    /// and repeating the call finishes it.
    async fn delete_range(&self, namespace: &str, prefix: &str) -> Result<u64> {
        let store = self.clone();
        let namespace = namespace.to_owned();
        let prefix = prefix.to_owned();
        let chunks = async move {
            let mut live = 0;
            let mut from = None;
            let mut before_version = None;
            loop {
                let chunk = store
                    .write(|reply| {
                        Op::Cache(CacheOp::DeleteRange {
                            namespace: namespace.clone(),
                            prefix: prefix.clone(),
                            from: from.take(),
                            before_version,
                            reply,
                        })
                    })
                    .await?;
                live += chunk.live;
                before_version = Some(chunk.before_version);
                match chunk.next {
                    Some(next) => from = Some(next),
                    None => return Ok(live),
                }
            }
        };
        tokio::spawn(chunks)
            .await
            .map_err(|e| Error::Internal(format!("a bulk delete failed: {e}")))?
    }

    /// Gives a live key a new TTL; returns whether it was found.
    pub async fn touch(&self, namespace: &str, key: &str, ttl_ms: u64) -> Result<bool> {
        self.write(|reply| {
            Op::Cache(CacheOp::Touch {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                ttl_ms,
                reply,
            })
        })
        .await
    }

    /// Adds `delta` to a counter; returns its new value and version.
    pub async fn increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<(i64, u64)> {
        let counter = self
            .add_to_counter(namespace, key, delta, ttl_ms, false)
            .await?;
        Ok((counter.value, counter.version))
    }

    /// Adds `delta` to the counter at `key`: creates it at `delta` (with `ttl_ms`) when it is
    /// absent, unless `if_present`, which leaves an absent counter absent (`existed` false,
    /// value and version 0, nothing written).
    pub async fn add_to_counter(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl_ms: u64,
        if_present: bool,
    ) -> Result<Counter> {
        self.write(|reply| {
            Op::Cache(CacheOp::Increment {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                delta,
                ttl_ms,
                if_present,
                reply,
            })
        })
        .await
    }

    /// Lists the entries of `namespace` live now whose keys start with `prefix` and sort
    /// after `after` (empty: from the first), in key order (bytewise, as SQLite compares
    /// TEXT): at most `bounds.rows`, and fewer when their values or their keys would add up
    /// to more than the bounds allow (always at least one, so a page never comes back empty
    /// while entries remain).
    ///
    /// One read transaction per page, on the scanner thread, so that a page is one commit's
    /// state and point reads never queue behind it. SQLite is read directly, not memory:
    /// every acknowledged write has committed, so the table holds everything a client was
    /// told. A Scan neither counts as a hit or miss nor moves an entry in the LRU, as a Redis
    /// SCAN does not.
    pub async fn scan_page(
        &self,
        namespace: &str,
        prefix: &str,
        after: &str,
        bounds: PageBounds,
    ) -> Result<ScanPage> {
        let now = self.inner.clock.now_ms();
        let namespace = namespace.to_owned();
        // `after` is exclusive; `after` followed by NUL is the least string above it, which
        // turns both bounds into one inclusive lower bound the index can seek to.
        let lower = if after.is_empty() {
            prefix.to_owned()
        } else {
            let past_after = format!("{after}\0");
            if past_after.as_bytes() > prefix.as_bytes() {
                past_after
            } else {
                prefix.to_owned()
            }
        };
        let upper = write::prefix_upper_bound(prefix);
        let rows = bounds.rows.max(1);
        // One row past the page tells whether another page follows.
        let limit = (rows + 1) as i64;
        let (entries, more) = self
            .scan(move |conn| {
                in_one_snapshot(conn, |conn| {
                    let statement = if upper.is_some() {
                        sql::SCAN_RANGE
                    } else {
                        sql::SCAN_FROM
                    };
                    let mut stmt = conn
                        .prepare_cached(statement)
                        .map_err(Error::storage("preparing a scan"))?;
                    let mut cursor = match &upper {
                        Some(upper) => {
                            stmt.query(params![namespace, lower, upper, now as i64, limit])
                        }
                        None => stmt.query(params![namespace, lower, now as i64, limit]),
                    }
                    .map_err(Error::storage("scanning keys"))?;
                    let mut entries = Vec::new();
                    let (mut values, mut keys) = (0usize, 0usize);
                    while let Some(row) = cursor.next().map_err(Error::storage("scanning keys"))? {
                        let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
                            let key = row.get::<_, String>(0)?;
                            let len = row.get::<_, i64>(3)? as usize;
                            Ok((key, len))
                        };
                        let (key, len) = read(row).map_err(Error::storage("scanning keys"))?;
                        values = values.saturating_add(len);
                        keys = keys.saturating_add(key.len());
                        if entries.len() == rows
                            || (!entries.is_empty()
                                && (values > bounds.value_bytes || keys > bounds.key_bytes))
                        {
                            return Ok((entries, true));
                        }
                        // Read only now: a value past the bound is never copied.
                        let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
                            Ok(CachedEntry {
                                version: row.get::<_, i64>(1)? as u64,
                                expires_at_ms: row.get::<_, i64>(2)? as u64,
                                value: Bytes::from(row.get::<_, Vec<u8>>(4)?),
                            })
                        };
                        entries.push((key, read(row).map_err(Error::storage("scanning keys"))?));
                    }
                    Ok((entries, false))
                })
            })
            .await?;
        let entries = entries
            .into_iter()
            .map(|(key, entry)| (key, found(entry, now)))
            .collect();
        Ok(ScanPage { entries, more })
    }

    /// Entry and byte counts (live entries only) and counters, for one namespace or all.
    pub async fn stats(&self, namespace: Option<&str>) -> Result<CacheStats> {
        let now = self.inner.clock.now_ms() as i64;
        let ns = namespace.map(str::to_owned);
        let (entries, bytes) = self
            .scan(move |conn| {
                let counts = match &ns {
                    Some(ns) => conn.query_row(sql::COUNT_NAMESPACE, params![ns, now], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    }),
                    None => conn.query_row(sql::COUNT_ALL, params![now], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    }),
                };
                counts.map_err(Error::storage("counting entries"))
            })
            .await?;
        Ok(CacheStats {
            entries: entries as u64,
            bytes: bytes as u64,
            counters: self.inner.stats.snapshot(namespace),
        })
    }

    /// Bytes held by the memory LRU (for tests and metrics).
    pub fn memory_bytes(&self) -> usize {
        self.inner.memory.bytes()
    }
}

/// Reads `keys` of `namespace` on `conn`; fails with `too_large()` once the values add up to
/// more than `max_bytes`.
fn read_rows(
    conn: &rusqlite::Connection,
    keys: &[CacheKey],
    max_bytes: usize,
    too_large: impl Fn() -> Error,
) -> Result<Vec<Option<CachedEntry>>> {
    let mut stmt = conn
        .prepare_cached(sql::ENTRY)
        .map_err(Error::storage("preparing a read"))?;
    let mut total = 0usize;
    let mut rows = Vec::with_capacity(keys.len());
    for (namespace, key) in keys {
        let row = stmt
            .query_row(params![namespace, key], |r| {
                Ok(CachedEntry {
                    value: Bytes::from(r.get::<_, Vec<u8>>(0)?),
                    version: r.get::<_, i64>(1)? as u64,
                    expires_at_ms: r.get::<_, i64>(2)? as u64,
                })
            })
            .optional()
            .map_err(Error::storage("reading a key"))?;
        if let Some(e) = &row {
            total = total.saturating_add(e.value.len());
            if total > max_bytes {
                return Err(too_large());
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn found(e: CachedEntry, now: u64) -> Found {
    Found {
        ttl_ms: remaining_ms(e.expires_at_ms, now).unwrap_or(0),
        value: e.value,
        version: e.version,
    }
}
