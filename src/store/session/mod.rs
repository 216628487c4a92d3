//! Login sessions in the store: the record, its in-memory form with a sliding last-seen time,
//! the SQL row mapping shared by readers and the writer, and the [`Store`] methods behind
//! SessionService. Its writer commands are [`write`](mod@write), every statement on it [`sql`].
//!
//! Sessions are never evicted, so the table has bounds of its own ([`SessionBounds`]): a user
//! past `max_per_user` loses their oldest session to a new one, and past `max_disk_bytes`
//! (each row charged [`disk_charge`], the total kept by triggers of `schema.rs`) creation and
//! growth are refused.
//!
//! Sliding expiry without a write per read: a GetSession moves the session's last-seen time in
//! memory only, and queues a background write of it at most once per coalescing window
//! ([`persist_window`]: a tenth of the idle TTL, at most [`MAX_PERSIST_WINDOW_MS`]). A crash
//! therefore loses at most that window of last-seen time, so a session may end up to that much
//! earlier after a restart; creations, updates, rotations and revocations are committed before
//! they are acknowledged and are never lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{OptionalExtension, Row, params};

pub(crate) mod revoke;
pub(crate) mod sql;
pub(crate) mod write;

use self::write::SessionOp;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::memory::{Cached, Lookup, MemoryCache};
use crate::store::writer::Op;

/// SHA-256 of a session token: all the store ever sees of a token.
pub type TokenHash = [u8; 32];

/// The longest a session's last-seen time waits in memory before it is written.
pub const MAX_PERSIST_WINDOW_MS: u64 = 60_000;

/// How long the sweeper leaves a session whose idle expiry passed on disk: its last-seen time
/// in memory may be up to one coalescing window newer than on disk, or two when a queued
/// write was lost (a full queue, a batch rolled back).
pub const SWEEP_GRACE_MS: u64 = 2 * MAX_PERSIST_WINDOW_MS;

/// Sessions whose last use is written per command at close.
const PERSIST_CHUNK: usize = 1000;

/// How stale the on-disk last-seen time of a session with `idle_ttl_ms` may get before a read
/// writes it: a tenth of the idle TTL, at most [`MAX_PERSIST_WINDOW_MS`], at least 1 ms.
pub fn persist_window(idle_ttl_ms: u64) -> u64 {
    (idle_ttl_ms / 10).clamp(1, MAX_PERSIST_WINDOW_MS)
}

/// When a session last used at `last_seen_ms` ends: after its idle TTL, but never later than
/// its absolute expiry.
pub(crate) fn idle_expiry(last_seen_ms: u64, idle_ttl_ms: u64, absolute_expires_at_ms: u64) -> u64 {
    last_seen_ms
        .saturating_add(idle_ttl_ms)
        .min(absolute_expires_at_ms)
}

/// Bytes every session row is charged against `session.max_disk` beyond twice its strings
/// (see [`disk_charge`]); a macro too, so that the triggers keeping the table's total in SQL
/// (migration 4 → 5 in `schema.rs`) use the same number.
///
/// Measured: 20,000 sessions with random token hashes and session ids, written into a fresh
/// store with this schema, checkpointed, no `VACUUM`, `larder.db` compared with twice the
/// bytes of hash, session id, user id, device, address and data. A row took 106 bytes more
/// with 4-byte user ids and empty data, 122 more with 64-byte user ids, 170 more with 256-byte
/// ones: the hash, the session id and the user id are each stored again in an index, whose
/// pages fill only about two thirds under random keys. Twice the strings plus 192 covers
/// every shape measured, data of 1,000 bytes included (1,490 on disk, 2,314 charged).
macro_rules! session_row_overhead {
    () => {
        192
    };
}

/// The charge of the session row `$row` (`NEW`, `OLD` or the table) in SQL: the same sum as
/// [`disk_charge`].
macro_rules! session_charge {
    ($row:literal) => {
        concat!(
            "(2 * (length(",
            $row,
            ".token_hash) + length(CAST(",
            $row,
            ".session_id AS BLOB)) + length(CAST(",
            $row,
            ".user_id AS BLOB)) + length(CAST(",
            $row,
            ".device_info AS BLOB)) + length(CAST(",
            $row,
            ".ip AS BLOB)) + length(CAST(",
            $row,
            ".data AS BLOB))) + ",
            crate::store::session::session_row_overhead!(),
            ")"
        )
    };
}
pub(crate) use {session_charge, session_row_overhead};

/// What a session row is charged against `session.max_disk`: twice the bytes of its token
/// hash, ids, device, address and stored data (row plus indexes, pages part full), plus
/// [`session_row_overhead!`] bytes. The triggers of `schema.rs` compute the same in SQL.
pub(crate) fn disk_charge(record: &SessionRecord) -> u64 {
    let strings = std::mem::size_of::<TokenHash>()
        + record.session_id.len()
        + record.user_id.len()
        + record.device_info.len()
        + record.ip.len()
        + encode_data(&record.data).len();
    (2 * strings + session_row_overhead!()) as u64
}

/// Bounds on the sessions table, checked by the writer as a session is created or its data
/// grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    /// Most sessions one user may hold: creating one more revokes that user's oldest.
    pub max_per_user: usize,
    /// Bound on the sum of `disk_charge` over the table: past it, creating a session or
    /// growing one's data is refused with `RESOURCE_EXHAUSTED` (sessions are never evicted).
    pub max_disk_bytes: u64,
}

/// A session as stored (never its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Public identifier.
    pub session_id: String,
    /// Owner.
    pub user_id: String,
    /// App data.
    pub data: Arc<BTreeMap<String, String>>,
    /// Client description.
    pub device_info: String,
    /// Client address.
    pub ip: String,
    /// Unix ms of creation.
    pub created_at_ms: u64,
    /// Unix ms of the last use.
    pub last_seen_at_ms: u64,
    /// Sliding lifetime without use.
    pub idle_ttl_ms: u64,
    /// Unix ms after which the session ends regardless of use.
    pub absolute_expires_at_ms: u64,
}

impl SessionRecord {
    /// When the session ends unless used again.
    pub fn idle_expires_at_ms(&self) -> u64 {
        idle_expiry(
            self.last_seen_at_ms,
            self.idle_ttl_ms,
            self.absolute_expires_at_ms,
        )
    }

    /// Whether the session is live at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        now_ms < self.idle_expires_at_ms()
    }

    /// Bytes of the session's strings and data, for memory and response budgets.
    pub fn size(&self) -> usize {
        self.session_id.len()
            + self.user_id.len()
            + self.device_info.len()
            + self.ip.len()
            + data_bytes(&self.data)
    }
}

/// Bytes of all keys and values of a data map.
pub(crate) fn data_bytes(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Bounds on a session's data, checked again by the writer after an UpdateSession merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// Most entries in the map.
    pub max_entries: usize,
    /// Most bytes of keys and values together.
    pub max_bytes: usize,
}

impl DataLimits {
    /// Checks a whole map; the error names `field`.
    pub fn check(&self, field: &str, data: &BTreeMap<String, String>) -> Result<()> {
        if data.len() > self.max_entries {
            return Err(Error::invalid(
                field,
                format!(
                    "the session data would hold {} entries, more than the limit of {}",
                    data.len(),
                    self.max_entries
                ),
            ));
        }
        let bytes = data_bytes(data);
        if bytes > self.max_bytes {
            return Err(Error::invalid(
                field,
                format!(
                    "the session data would hold {bytes} bytes of keys and values, more than \
                     the limit of {}",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// A session to create.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// SHA-256 of the token handed to the client.
    pub token_hash: TokenHash,
    /// Public identifier.
    pub session_id: String,
    /// Owner.
    pub user_id: String,
    /// Initial data.
    pub data: BTreeMap<String, String>,
    /// Client description.
    pub device_info: String,
    /// Client address.
    pub ip: String,
    /// Sliding lifetime without use (> 0).
    pub idle_ttl_ms: u64,
    /// Lifetime regardless of use (> 0).
    pub absolute_ttl_ms: u64,
}

/// Which session a revocation is for.
#[derive(Debug, Clone)]
pub enum SessionTarget {
    /// By the hash of its token.
    Token(TokenHash),
    /// By its public id.
    Id(String),
}

/// A session in the memory LRU: the record as committed, plus its last-seen time as reads
/// move it (ahead of the disk by less than one coalescing window).
#[derive(Debug)]
pub(crate) struct CachedSession {
    record: SessionRecord,
    /// Latest use known to memory.
    last_seen: AtomicU64,
    /// Latest last-seen time written (or queued to be written) to disk.
    persisted: AtomicU64,
}

impl CachedSession {
    /// A record as committed (its last-seen time is the one on disk).
    pub(crate) fn new(record: SessionRecord) -> Self {
        let seen = record.last_seen_at_ms;
        Self {
            record,
            last_seen: AtomicU64::new(seen),
            persisted: AtomicU64::new(seen),
        }
    }

    /// The latest use known to memory.
    pub(crate) fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Acquire)
    }

    /// The record with the latest last-seen time.
    pub(crate) fn snapshot(&self) -> SessionRecord {
        SessionRecord {
            last_seen_at_ms: self.last_seen(),
            ..self.record.clone()
        }
    }
}

impl Cached for Arc<CachedSession> {
    type Key = TokenHash;

    fn size(key: &TokenHash, value: &Self) -> usize {
        key.len() + value.record.size()
    }

    fn live(&self, now_ms: u64) -> bool {
        now_ms
            < idle_expiry(
                self.last_seen(),
                self.record.idle_ttl_ms,
                self.record.absolute_expires_at_ms,
            )
    }
}

/// The LRU of sessions, by token hash.
pub(crate) type SessionCache = MemoryCache<Arc<CachedSession>>;

/// The latest use of a session as either the disk (`on_disk`) or memory knows it.
pub(crate) fn latest_use(memory: &SessionCache, hash: &TokenHash, on_disk: u64) -> u64 {
    memory
        .peek(hash)
        .map_or(on_disk, |c| c.last_seen().max(on_disk))
}

/// Reads a session's record from its columns starting at `at` (see [`sql::SESSION`]).
pub(crate) fn record_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<SessionRecord> {
    let data: String = r.get(at + 2)?;
    let data: BTreeMap<String, String> = serde_json::from_str(&data).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at + 2, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(SessionRecord {
        session_id: r.get(at)?,
        user_id: r.get(at + 1)?,
        data: Arc::new(data),
        device_info: r.get(at + 3)?,
        ip: r.get(at + 4)?,
        created_at_ms: r.get::<_, i64>(at + 5)? as u64,
        last_seen_at_ms: r.get::<_, i64>(at + 6)? as u64,
        idle_ttl_ms: r.get::<_, i64>(at + 7)? as u64,
        absolute_expires_at_ms: r.get::<_, i64>(at + 8)? as u64,
    })
}

/// A data map as stored: a JSON object (readable with `sqlite3`).
pub(crate) fn encode_data(data: &BTreeMap<String, String>) -> String {
    // A map of strings to strings always serializes.
    serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned())
}

/// Most bytes of protobuf framing one listed session adds to its strings and data: tags and
/// lengths of its fields, five 64-bit numbers at up to 11 bytes each, and its own tag and length
/// in the list (about 85; rounded up).
pub(crate) const LISTED_SESSION_FRAMING: usize = 96;

/// Most bytes of protobuf framing one data entry adds to its key and value (entry, key and
/// value tags, and lengths of up to 3 bytes each).
pub(crate) const LISTED_ENTRY_FRAMING: usize = 12;

/// One page of a user's sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionList {
    /// Live sessions, newest first.
    pub sessions: Vec<SessionRecord>,
    /// Whether live sessions were left out to respect the bounds (they follow the last one
    /// listed).
    pub truncated: bool,
}

impl Store {
    /// Writes the last uses that memory knows of and the disk does not yet (called at close,
    /// so that a clean shutdown loses no last-seen time); returns how many sessions it wrote.
    pub async fn persist_session_uses(&self) -> Result<u64> {
        let uses: Vec<(TokenHash, u64)> = self
            .inner
            .sessions
            .entries()
            .into_iter()
            .filter_map(|(hash, cached)| {
                let seen = cached.last_seen();
                (seen > cached.persisted.fetch_max(seen, Ordering::AcqRel)).then_some((hash, seen))
            })
            .collect();
        let mut written = 0;
        for chunk in uses.chunks(PERSIST_CHUNK) {
            let uses = chunk.to_vec();
            written += self
                .write(|reply| Op::Session(Box::new(SessionOp::RecordUses { uses, reply })))
                .await?;
        }
        Ok(written)
    }

    /// Queues a write of the session's last use `now` when the disk's copy is at least
    /// `window` ms older. Never waits: the command enters the writer's queue before this
    /// returns (so a later shutdown still commits it); when the queue is full, the write is
    /// left to a later read.
    fn queue_use(&self, hash: &TokenHash, cached: &CachedSession, now: u64, window: u64) {
        let persisted = cached.persisted.load(Ordering::Acquire);
        if now <= persisted
            || now - persisted < window
            || cached
                .persisted
                .compare_exchange(persisted, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let uses = vec![(*hash, now)];
        if !self
            .inner
            .writer
            .submit_nowait(|reply| Op::Session(Box::new(SessionOp::RecordUses { uses, reply })))
        {
            let _ = cached.persisted.compare_exchange(
                now,
                persisted,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Creates a session within `bounds`; answers once it is committed. Past
    /// `bounds.max_per_user` the user's oldest sessions are revoked in the same transaction;
    /// past `bounds.max_disk_bytes` it fails with [`Error::ResourceExhausted`].
    pub async fn create_session(
        &self,
        new: NewSession,
        bounds: SessionBounds,
    ) -> Result<SessionRecord> {
        self.write(|reply| Op::Session(Box::new(SessionOp::Create { new, bounds, reply })))
            .await
    }

    /// Looks a live session up and slides its idle expiry. The new last-seen time stays in
    /// memory and is written in the background once per coalescing window.
    pub async fn get_session(&self, hash: &TokenHash) -> Result<Option<SessionRecord>> {
        loop {
            // A revocation that ended while this read looked may have deleted, after the
            // snapshot read, a session it found: look again (see `revoke.rs`).
            let marks = self.inner.revocations.generation();
            let found = self.find_session(hash).await?;
            if self.inner.revocations.generation() == marks {
                return Ok(found);
            }
        }
    }

    /// [`Store::get_session`], once.
    async fn find_session(&self, hash: &TokenHash) -> Result<Option<SessionRecord>> {
        let revocations = &self.inner.revocations;
        let now = self.inner.clock.now_ms();
        // The session, and how stale its disk copy may get before this use is written.
        let (cached, window) = match self.inner.sessions.get(hash, now) {
            Lookup::Hit(cached) if revocations.covers(&cached.record) => return Ok(None),
            Lookup::Hit(cached) => {
                let window = persist_window(cached.record.idle_ttl_ms);
                (cached, window)
            }
            Lookup::Expired => return Ok(None),
            Lookup::Miss(ticket) => {
                let h = *hash;
                let row = self
                    .read(move |conn| {
                        conn.prepare_cached(sql::SESSION)
                            .and_then(|mut s| {
                                s.query_row([&h[..]], |r| record_from_row(r, sql::RECORD_AT))
                            })
                            .optional()
                            .map_err(Error::storage("reading a session"))
                    })
                    .await?;
                let Some(record) = row.filter(|r| r.live(now) && !revocations.covers(r)) else {
                    return Ok(None);
                };
                let read = Arc::new(CachedSession::new(record));
                match self.inner.sessions.fill(ticket, *hash, read.clone()) {
                    Some(cached) => {
                        let window = persist_window(cached.record.idle_ttl_ms);
                        (cached, window)
                    }
                    // Not kept in memory (too large for it, or raced by a write): this use
                    // would be forgotten with the copy, so it goes to disk now.
                    None => (read, 0),
                }
            }
        };
        cached.last_seen.fetch_max(now, Ordering::AcqRel);
        self.queue_use(hash, &cached, now, window);
        Ok(Some(cached.snapshot()))
    }

    /// Merges `set` and `remove` into a live session's data; `None` when it is not live. Data
    /// that grows past `bounds.max_disk_bytes` for the table fails with
    /// [`Error::ResourceExhausted`].
    pub async fn update_session(
        &self,
        hash: &TokenHash,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        limits: DataLimits,
        bounds: SessionBounds,
    ) -> Result<Option<SessionRecord>> {
        let token_hash = *hash;
        self.write(|reply| {
            Op::Session(Box::new(SessionOp::Update {
                token_hash,
                set,
                remove,
                limits,
                bounds,
                reply,
            }))
        })
        .await
    }

    /// Replaces a live session's token hash; `None` when it is not live.
    pub async fn rotate_session(
        &self,
        hash: &TokenHash,
        new_hash: TokenHash,
    ) -> Result<Option<SessionRecord>> {
        let token_hash = *hash;
        self.write(|reply| {
            Op::Session(Box::new(SessionOp::Rotate {
                token_hash,
                new_hash,
                reply,
            }))
        })
        .await
    }

    /// Ends one session; returns whether it was live.
    pub async fn revoke_session(&self, target: SessionTarget) -> Result<bool> {
        self.write(|reply| Op::Session(Box::new(SessionOp::Revoke { target, reply })))
            .await
    }

    /// Ends every session of a user except `except` (a session id); returns how many were
    /// live. Deletes in chunks of `revoke::REVOKE_CHUNK`, one transaction each, while
    /// readers see every covered session gone from the first chunk's commit on (see
    /// `revoke.rs`); answers once the last chunk is committed.
    pub async fn revoke_user_sessions(&self, user_id: &str, except: Option<String>) -> Result<u64> {
        let store = self.clone();
        let user_id = user_id.to_owned();
        let chunks = async move {
            let mut live = 0;
            let mut mark = None;
            loop {
                let chunk = store
                    .write(|reply| {
                        Op::Session(Box::new(SessionOp::RevokeUser {
                            user_id: user_id.clone(),
                            except: except.clone(),
                            mark: mark.take(),
                            reply,
                        }))
                    })
                    .await?;
                live += chunk.live;
                match chunk.more {
                    Some(more) => mark = Some(more),
                    None => return Ok(live),
                }
            }
        };
        // On a task of its own: a caller who goes away does not leave the mark up and the
        // sessions half deleted.
        tokio::spawn(chunks)
            .await
            .map_err(|e| Error::Internal(format!("revoking a user's sessions failed: {e}")))?
    }

    /// A user's live sessions, newest first (ties by session id, descending), after `after`
    /// (the creation time and session id of the last session of the previous page; `None` =
    /// from the newest): at most `max_sessions` of them, and at most `max_bytes` once answered
    /// (their strings and data plus `LISTED_SESSION_FRAMING` and `LISTED_ENTRY_FRAMING`;
    /// always at least one, if any is live).
    pub async fn list_sessions(
        &self,
        user_id: &str,
        after: Option<(u64, String)>,
        max_sessions: usize,
        max_bytes: usize,
    ) -> Result<SessionList> {
        let now = self.inner.clock.now_ms();
        let user = user_id.to_owned();
        let (after_created, after_id) = match after {
            Some((created, id)) => (created.min(i64::MAX as u64) as i64, id),
            None => (i64::MAX, String::new()),
        };
        let memory = self.inner.sessions.clone();
        let revocations = self.inner.revocations.clone();
        self.scan(move |conn| {
            let mut stmt = conn
                .prepare_cached(sql::LIST_USER)
                .map_err(Error::storage("preparing a session listing"))?;
            let mut rows = stmt
                .query(params![
                    user,
                    now as i64,
                    now.saturating_sub(SWEEP_GRACE_MS) as i64,
                    after_created,
                    after_id
                ])
                .map_err(Error::storage("listing sessions"))?;
            let mut list = SessionList::default();
            let mut bytes = 0usize;
            while let Some(row) = rows.next().map_err(Error::storage("listing sessions"))? {
                let hash: TokenHash = row
                    .get::<_, Vec<u8>>(sql::LIST_HASH_AT)
                    .ok()
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| Error::Internal("a session row has a malformed hash".into()))?;
                let mut record = record_from_row(row, sql::LIST_RECORD_AT)
                    .map_err(Error::storage("listing sessions"))?;
                record.last_seen_at_ms = latest_use(&memory, &hash, record.last_seen_at_ms);
                if !record.live(now) || revocations.covers(&record) {
                    continue;
                }
                bytes += record.size()
                    + LISTED_SESSION_FRAMING
                    + LISTED_ENTRY_FRAMING * record.data.len();
                if list.sessions.len() >= max_sessions
                    || (bytes > max_bytes && !list.sessions.is_empty())
                {
                    list.truncated = true;
                    break;
                }
                list.sessions.push(record);
            }
            Ok(list)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(last_seen: u64, idle: u64, absolute: u64) -> SessionRecord {
        SessionRecord {
            session_id: "ses_x".into(),
            user_id: "u".into(),
            data: Arc::default(),
            device_info: String::new(),
            ip: String::new(),
            created_at_ms: 0,
            last_seen_at_ms: last_seen,
            idle_ttl_ms: idle,
            absolute_expires_at_ms: absolute,
        }
    }

    #[test]
    fn idle_expiry_slides_but_never_past_the_absolute_one() {
        assert_eq!(idle_expiry(1_000, 500, 10_000), 1_500);
        assert_eq!(idle_expiry(9_800, 500, 10_000), 10_000);
        assert_eq!(idle_expiry(u64::MAX - 1, 500, u64::MAX), u64::MAX);
        let r = record(1_000, 500, 10_000);
        assert!(r.live(1_499));
        assert!(!r.live(1_500));
    }

    #[test]
    fn the_coalescing_window_is_a_tenth_of_the_idle_ttl_up_to_a_minute() {
        assert_eq!(persist_window(30 * 60_000), MAX_PERSIST_WINDOW_MS);
        assert_eq!(persist_window(100_000), 10_000);
        assert_eq!(persist_window(5), 1);
    }

    #[test]
    fn memory_knows_a_later_use_than_the_disk() {
        let memory = SessionCache::new(1 << 20);
        let hash = [7; 32];
        assert_eq!(latest_use(&memory, &hash, 100), 100);
        let cached = Arc::new(CachedSession::new(record(100, 1_000, 10_000)));
        memory.put(hash, cached.clone());
        cached.last_seen.fetch_max(400, Ordering::AcqRel);
        assert_eq!(latest_use(&memory, &hash, 100), 400);
        assert_eq!(latest_use(&memory, &hash, 500), 500);
        assert!(memory.peek(&hash).unwrap().live(1_399));
        assert!(!memory.peek(&hash).unwrap().live(1_400));
    }

    #[test]
    fn data_limits_count_entries_and_bytes() {
        let limits = DataLimits {
            max_entries: 2,
            max_bytes: 10,
        };
        let mut data = BTreeMap::new();
        data.insert("ab".to_owned(), "cdef".to_owned());
        assert!(limits.check("set", &data).is_ok());
        data.insert("x".to_owned(), "yyy".to_owned());
        assert!(limits.check("set", &data).is_ok(), "exactly 10 bytes");
        data.insert("z".to_owned(), String::new());
        let err = limits.check("set", &data).unwrap_err().to_string();
        assert!(err.starts_with("set: ") && err.contains("entries"), "{err}");
        data.remove("z");
        data.insert("x".to_owned(), "yyyy".to_owned());
        assert!(
            limits
                .check("set", &data)
                .unwrap_err()
                .to_string()
                .contains("bytes")
        );
    }

    proptest! {
        /// A session is live exactly before both of its expiries, whatever the numbers.
        #[test]
        fn live_means_before_both_expiries(last_seen in 0u64..1u64 << 50, idle in 1u64..1u64 << 40, absolute in 0u64..1u64 << 51, now in 0u64..1u64 << 51) {
            let r = record(last_seen, idle, absolute);
            prop_assert_eq!(r.live(now), now < last_seen + idle && now < absolute);
            prop_assert!(r.idle_expires_at_ms() <= absolute);
        }

        /// Data survives its stored form.
        #[test]
        fn data_round_trips_through_json(data in prop::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..8)) {
            let decoded: BTreeMap<String, String> = serde_json::from_str(&encode_data(&data)).unwrap();
            prop_assert_eq!(decoded, data);
        }
    }
}
