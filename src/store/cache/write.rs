//! The writer's cache commands: Set (under a condition), SetMany, the deletes, Touch and
//! Increment. Each runs inside the writer's batch transaction and holds its typed answer in
//! its reply; changes of memory and counters are queued as effects and applied after COMMIT.

use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use super::sql;
use super::{CachedEntry, Counter, NewEntry, SetCondition};
use crate::clock::{deadline_ms, remaining_ms};
use crate::error::{Error, Result, echo};
use crate::store::writer::{Effects, MemEffect, Pending, Reply, Writer};

/// What a Set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Whether the value was written.
    pub(crate) stored: bool,
    /// Version after the call (current version when not stored, 0 if absent).
    pub(crate) version: u64,
}

/// Rows a DeletePrefix or Clear deletes per transaction: the longest it holds up the writer,
/// and the most rows (key, expiry, size) it holds in memory at once.
pub(crate) const DELETE_CHUNK: usize = 1000;

/// What one chunk of a DeletePrefix or Clear did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeChunk {
    /// Live keys it deleted.
    pub(crate) live: u64,
    /// Versions from this one on were written after the delete began, and are kept.
    pub(crate) before_version: u64,
    /// Where the next chunk starts, or `None` when every key of the range is deleted.
    pub(crate) next: Option<String>,
}

/// A command on the cache table, with its reply.
#[derive(Debug)]
pub(crate) enum CacheOp {
    /// Set one key under a condition.
    Set {
        namespace: String,
        key: String,
        value: Bytes,
        ttl_ms: u64,
        condition: SetCondition,
        reply: Reply<Stored>,
    },
    /// Set many keys, all or none; answers their new versions in order.
    SetMany {
        namespace: String,
        entries: Vec<NewEntry>,
        reply: Reply<Vec<u64>>,
    },
    /// Delete keys; answers how many live ones existed.
    Delete {
        namespace: String,
        keys: Vec<String>,
        reply: Reply<u64>,
    },
    /// Delete one key only while its version is `version` (compare-and-delete).
    DeleteIfVersion {
        namespace: String,
        key: String,
        version: u64,
        reply: Reply<u64>,
    },
    /// One chunk of a DeletePrefix (or, with an empty prefix, a Clear): deletes up to
    /// [`DELETE_CHUNK`] keys starting with `prefix`, from `from` on in key order, that were
    /// written before `before_version` (`None`: before this first chunk).
    DeleteRange {
        namespace: String,
        prefix: String,
        from: Option<String>,
        before_version: Option<u64>,
        reply: Reply<RangeChunk>,
    },
    /// Give a live key a new TTL; answers whether it was live.
    Touch {
        namespace: String,
        key: String,
        ttl_ms: u64,
        reply: Reply<bool>,
    },
    /// Add to an integer counter.
    Increment {
        namespace: String,
        key: String,
        delta: i64,
        ttl_ms: u64,
        /// Only a live counter: an absent one is left absent.
        if_present: bool,
        reply: Reply<Counter>,
    },
}

impl CacheOp {
    /// Bytes of values this command writes.
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            CacheOp::Set { value, .. } => value.len(),
            CacheOp::SetMany { entries, .. } => entries.iter().map(|e| e.value.len()).sum(),
            _ => 0,
        }
    }

    /// Whether the command may write several rows.
    pub(crate) fn needs_savepoint(&self) -> bool {
        match self {
            CacheOp::SetMany { entries, .. } => entries.len() > 1,
            CacheOp::Delete { keys, .. } => keys.len() > 1,
            // One DELETE … RETURNING: SQLite deletes every row on its first step, so a failure
            // while the later rows are collected must undo the deletes with them.
            CacheOp::DeleteRange { .. } => true,
            _ => false,
        }
    }

    /// The command's reply.
    pub(crate) fn pending(&mut self) -> &mut dyn Pending {
        match self {
            CacheOp::Set { reply, .. } => reply,
            CacheOp::SetMany { reply, .. } => reply,
            CacheOp::Touch { reply, .. } => reply,
            CacheOp::Increment { reply, .. } => reply,
            CacheOp::Delete { reply, .. } | CacheOp::DeleteIfVersion { reply, .. } => reply,
            CacheOp::DeleteRange { reply, .. } => reply,
        }
    }
}

/// The head of a key's current row.
struct Current {
    version: u64,
    expires_at_ms: u64,
    size: i64,
}

/// What an Increment adds, and how it treats an absent counter.
struct AddTo {
    delta: i64,
    /// TTL of a counter created by this Increment.
    ttl_ms: u64,
    /// Leave an absent counter absent instead of creating it.
    if_present: bool,
}

/// One key to write and what to write there.
struct EntryWrite<'a> {
    namespace: &'a str,
    key: &'a str,
    value: &'a Bytes,
}

impl Writer {
    pub(in crate::store) fn apply_cache(
        &mut self,
        op: &mut CacheOp,
        now: u64,
        fx: &mut Effects,
    ) -> Result<()> {
        match op {
            CacheOp::Set {
                namespace,
                key,
                value,
                ttl_ms,
                condition,
                reply,
            } => {
                let entry = EntryWrite {
                    namespace,
                    key,
                    value,
                };
                let stored = self.set(entry, *ttl_ms, *condition, now, fx)?;
                reply.hold(stored);
            }
            CacheOp::SetMany {
                namespace,
                entries,
                reply,
            } => {
                let mut versions = Vec::with_capacity(entries.len());
                for e in entries.iter() {
                    let entry = EntryWrite {
                        namespace,
                        key: &e.key,
                        value: &e.value,
                    };
                    let stored = self.set(entry, e.ttl_ms, SetCondition::Always, now, fx)?;
                    versions.push(stored.version);
                }
                reply.hold(versions);
            }
            CacheOp::Delete {
                namespace,
                keys,
                reply,
            } => {
                let mut deleted = 0;
                for key in keys.iter() {
                    let row: Option<(i64, i64)> = self
                        .conn
                        .prepare_cached(sql::DELETE_KEY)
                        .and_then(|mut s| {
                            s.query_row(params![namespace.as_str(), key], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })
                            .optional()
                        })
                        .map_err(Error::storage("deleting a key"))?;
                    // Removed from memory even when no row existed: a delete must leave no
                    // cached copy behind, whatever happened before.
                    fx.memory
                        .push(MemEffect::Remove(namespace.clone(), key.clone()));
                    if let Some((expires_at, size)) = row {
                        fx.bytes_delta -= size;
                        if remaining_ms(expires_at as u64, now).is_some() {
                            deleted += 1;
                        }
                    }
                }
                fx.count(namespace).deletes += deleted;
                reply.hold(deleted);
            }
            CacheOp::DeleteIfVersion {
                namespace,
                key,
                version,
                reply,
            } => {
                // Another version (or none) stays, and so does its copy in memory: only a row
                // deleted here is removed from memory.
                let deleted = self.delete_rows(
                    sql::DELETE_IF_VERSION,
                    params![namespace.as_str(), key.as_str(), *version as i64],
                    namespace,
                    now,
                    fx,
                )?;
                fx.count(namespace).deletes += deleted;
                reply.hold(deleted);
            }
            CacheOp::DeleteRange {
                namespace,
                prefix,
                from,
                before_version,
                reply,
            } => {
                // The first chunk fixes the range's end in time: every version handed out
                // before it; what is written later, even mid-way, is kept.
                let before = before_version.unwrap_or_else(|| self.version_floor());
                let from = from.as_deref().unwrap_or(prefix);
                let chunk = self.delete_chunk(namespace, prefix, from, before, now, fx)?;
                fx.count(namespace).deletes += chunk.live;
                reply.hold(chunk);
            }
            CacheOp::Touch {
                namespace,
                key,
                ttl_ms,
                reply,
            } => {
                let live = self
                    .current(namespace, key)?
                    .filter(|c| remaining_ms(c.expires_at_ms, now).is_some());
                if live.is_some() {
                    let expires_at = deadline_ms(*ttl_ms, now);
                    self.conn
                        .prepare_cached(sql::TOUCH)
                        .and_then(|mut s| {
                            s.execute(params![
                                namespace.as_str(),
                                key.as_str(),
                                expires_at as i64,
                                now as i64
                            ])
                        })
                        .map_err(Error::storage("touching a key"))?;
                    fx.memory.push(MemEffect::Expiry(
                        namespace.clone(),
                        key.clone(),
                        expires_at,
                    ));
                }
                reply.hold(live.is_some());
            }
            CacheOp::Increment {
                namespace,
                key,
                delta,
                ttl_ms,
                if_present,
                reply,
            } => {
                let by = AddTo {
                    delta: *delta,
                    ttl_ms: *ttl_ms,
                    if_present: *if_present,
                };
                let counter = self.increment(namespace, key, by, now, fx)?;
                reply.hold(counter);
            }
        }
        Ok(())
    }

    /// The head of a key's row (without its value), live or not.
    fn current(&self, namespace: &str, key: &str) -> Result<Option<Current>> {
        self.conn
            .prepare_cached(sql::ENTRY_HEAD)
            .and_then(|mut s| {
                s.query_row(params![namespace, key], |r| {
                    Ok(Current {
                        version: r.get::<_, i64>(0)? as u64,
                        expires_at_ms: r.get::<_, i64>(1)? as u64,
                        size: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(Error::storage("reading a key to write"))
    }

    /// Writes a key if `condition` holds; answers whether it was stored, and the version
    /// after the call (the current one, 0 if absent, when not stored).
    fn set(
        &mut self,
        entry: EntryWrite<'_>,
        ttl_ms: u64,
        condition: SetCondition,
        now: u64,
        fx: &mut Effects,
    ) -> Result<Stored> {
        let current = self.current(entry.namespace, entry.key)?;
        let old_size = current.as_ref().map_or(0, |c| c.size);
        let live_version = current
            .filter(|c| remaining_ms(c.expires_at_ms, now).is_some())
            .map(|c| c.version);
        let allowed = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => live_version.is_none(),
            SetCondition::IfPresent => live_version.is_some(),
            SetCondition::IfVersion(expected) => live_version == Some(expected),
        };
        if !allowed {
            return Ok(Stored {
                stored: false,
                version: live_version.unwrap_or(0),
            });
        }
        let version = self.take_version();
        let expires_at = deadline_ms(ttl_ms, now);
        let row = CachedEntry {
            // A copy of its own: the request's value is a slice of the buffer the whole
            // message was decoded from (a SetMany's, up to megabytes), which the LRU would
            // otherwise keep alive, unaccounted, for as long as it keeps this entry.
            value: Bytes::copy_from_slice(entry.value),
            version,
            expires_at_ms: expires_at,
        };
        self.upsert(entry.namespace, entry.key, row, old_size, now, fx)?;
        Ok(Stored {
            stored: true,
            version,
        })
    }

    /// Writes `row` at the key (whose row had `old_size`, 0 if none) and queues it for memory.
    fn upsert(
        &mut self,
        namespace: &str,
        key: &str,
        row: CachedEntry,
        old_size: i64,
        now: u64,
        fx: &mut Effects,
    ) -> Result<()> {
        let size = super::disk_charge(namespace, key, row.value.len());
        self.conn
            .prepare_cached(sql::UPSERT)
            .and_then(|mut s| {
                s.execute(params![
                    namespace,
                    key,
                    &row.value[..],
                    row.version as i64,
                    row.expires_at_ms as i64,
                    now as i64,
                    size
                ])
            })
            .map_err(Error::storage("writing a key"))?;
        fx.bytes_delta += size - old_size;
        fx.memory
            .push(MemEffect::Put(namespace.to_owned(), key.to_owned(), row));
        fx.count(namespace).sets += 1;
        Ok(())
    }

    /// Adds to the counter at the key (see [`AddTo`]).
    fn increment(
        &mut self,
        namespace: &str,
        key: &str,
        by: AddTo,
        now: u64,
        fx: &mut Effects,
    ) -> Result<Counter> {
        let AddTo {
            delta,
            ttl_ms,
            if_present,
        } = by;
        let row: Option<(Vec<u8>, i64, i64)> = self
            .conn
            .prepare_cached(sql::ENTRY)
            .and_then(|mut s| {
                s.query_row(params![namespace, key], |r| {
                    Ok((r.get(0)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .map_err(Error::storage("reading a counter"))?;
        let old_size = row.as_ref().map_or(0, |r| r.2);
        let live = row.filter(|r| remaining_ms(r.1 as u64, now).is_some());
        let existed = live.is_some();
        if if_present && !existed {
            return Ok(Counter {
                value: 0,
                version: 0,
                existed,
            });
        }
        let (value, expires_at) = match live {
            Some((bytes, expires_at, _)) => {
                let current = parse_counter(&bytes).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "key {} does not hold a base-10 64-bit signed integer",
                        echo(key)
                    ))
                })?;
                let value = current.checked_add(delta).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "incrementing key {} ({current}) by {delta} would overflow a \
                         64-bit signed integer",
                        echo(key)
                    ))
                })?;
                (value, expires_at as u64)
            }
            None => (delta, deadline_ms(ttl_ms, now)),
        };
        let version = self.take_version();
        let row = CachedEntry {
            value: Bytes::from(value.to_string()),
            version,
            expires_at_ms: expires_at,
        };
        self.upsert(namespace, key, row, old_size, now, fx)?;
        Ok(Counter {
            value,
            version,
            existed,
        })
    }

    /// Deletes up to [`DELETE_CHUNK`] keys of `namespace` starting with `prefix`, from `from`
    /// on in key order, written before version `before`; records their effects.
    fn delete_chunk(
        &mut self,
        namespace: &str,
        prefix: &str,
        from: &str,
        before: u64,
        now: u64,
        fx: &mut Effects,
    ) -> Result<RangeChunk> {
        let limit = DELETE_CHUNK as i64;
        let before_sql = i64::try_from(before).unwrap_or(i64::MAX);
        let mut last = None;
        let (live, rows) = match prefix_upper_bound(prefix) {
            Some(upper) => self.delete_rows_noting_last(
                sql::DELETE_RANGE_CHUNK,
                params![namespace, from, upper, before_sql, limit],
                namespace,
                now,
                fx,
                &mut last,
            )?,
            None => self.delete_rows_noting_last(
                sql::DELETE_FROM_CHUNK,
                params![namespace, from, before_sql, limit],
                namespace,
                now,
                fx,
                &mut last,
            )?,
        };
        Ok(RangeChunk {
            live,
            before_version: before,
            // A short chunk found no more rows in the range: the delete is complete.
            next: last.filter(|_| rows >= DELETE_CHUNK),
        })
    }

    /// [`Writer::delete_rows`], noting the greatest key deleted in `last`; returns the live
    /// rows deleted and all rows deleted.
    fn delete_rows_noting_last(
        &mut self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        namespace: &str,
        now: u64,
        fx: &mut Effects,
        last: &mut Option<String>,
    ) -> Result<(u64, usize)> {
        let before = fx.memory.len();
        let live = self.delete_rows(sql, params, namespace, now, fx)?;
        let deleted = &fx.memory[before..];
        *last = deleted
            .iter()
            .filter_map(|e| match e {
                MemEffect::Remove(_, key) => Some(key),
                _ => None,
            })
            .max()
            .cloned();
        Ok((live, deleted.len()))
    }

    /// Runs a `DELETE … RETURNING key, expires_at, size` and records its effects; returns how
    /// many of the deleted rows were live.
    fn delete_rows(
        &mut self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        namespace: &str,
        now: u64,
        fx: &mut Effects,
    ) -> Result<u64> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(Error::storage("preparing a delete"))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(Error::storage("deleting keys"))?;
        let mut live = 0;
        for (key, expires_at, size) in rows {
            fx.bytes_delta -= size;
            if remaining_ms(expires_at as u64, now).is_some() {
                live += 1;
            }
            fx.memory.push(MemEffect::Remove(namespace.to_owned(), key));
        }
        Ok(live)
    }
}

/// Parses a stored counter: optional `-`, then ASCII digits, as Redis INCR accepts.
pub(crate) fn parse_counter(bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when
/// no such string exists (every character of the prefix is `char::MAX`).
///
/// UTF-8 orders like code points, and SQLite compares TEXT bytewise, so
/// `prefix <= key < upper` selects exactly the keys starting with `prefix` from the index.
/// For example, `user:42:` gives `user:42;`, and `"\u{10FFFF}"` gives `None`
/// (`upper_bounds_of_prefixes` below).
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counters_parse_like_redis() {
        assert_eq!(parse_counter(b"42"), Some(42));
        assert_eq!(parse_counter(b"-7"), Some(-7));
        assert_eq!(parse_counter(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_counter(b"9223372036854775808"), None);
        for bad in [&b""[..], b"-", b"+1", b" 1", b"1.0", b"abc", b"\xff"] {
            assert_eq!(parse_counter(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn upper_bounds_of_prefixes() {
        assert_eq!(prefix_upper_bound("user:42:").as_deref(), Some("user:42;"));
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(
            prefix_upper_bound("a\u{10FFFF}").as_deref(),
            Some("b"),
            "a maximal last char carries into the one before"
        );
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }

    proptest! {
        /// `prefix <= s < upper` (bytewise, as SQLite compares) holds exactly for the strings
        /// that start with the prefix.
        #[test]
        fn the_range_selects_exactly_the_prefixed_keys(prefix in "\\PC{1,4}", s in "\\PC{0,6}") {
            let in_range = match prefix_upper_bound(&prefix) {
                Some(upper) => prefix.as_bytes() <= s.as_bytes() && s.as_bytes() < upper.as_bytes(),
                None => prefix.as_bytes() <= s.as_bytes(),
            };
            prop_assert_eq!(in_range, s.starts_with(&prefix));
        }

        #[test]
        fn counters_round_trip(n in any::<i64>()) {
            prop_assert_eq!(parse_counter(n.to_string().as_bytes()), Some(n));
        }
    }
}
