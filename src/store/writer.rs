//! The one writer thread and its group commit.
//!
//! Every mutation of the database goes through here. The thread takes every command queued
//! since its last commit, runs them in order inside one `BEGIN IMMEDIATE` transaction (each
//! multi-row command inside its own savepoint, so a failing command leaves the others intact),
//! commits once, and only then updates the memory LRU and answers the callers. Under load,
//! hundreds of writes share one commit; a write is never acknowledged before it is committed.

mod ratelimits;
mod sessions;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use bytes::Bytes;
use rusqlite::hooks::Wal;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, deadline_ms, remaining_ms};
use crate::error::{Error, Result};
use crate::store::files::OpenFiles;
use crate::store::memory::{CachedEntry, EntryCache};
use crate::store::observe::WriterMetrics;
use crate::store::ratelimits::LimitRow;
use crate::store::schema::WRITER_CHECKPOINT_PAGES;
use crate::store::sessions::{
    CachedSession, DataLimits, NewSession, SessionCache, SessionRecord, SessionTarget, TokenHash,
    data_bytes,
};
use crate::store::stats::{CounterValues, StatsRegistry};

/// Most commands folded into one transaction.
const MAX_BATCH: usize = 1024;

/// A batch stops taking commands once their values add up to this, so one transaction (and
/// the WAL it writes) stays bounded even when every queued write carries a large value.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// Eviction rounds per transaction; what is left is evicted by the next writes or upkeep
/// passes, so a large backlog (e.g. a lowered bound at restart) never stalls one commit.
const MAX_EVICT_ROUNDS: usize = 64;

/// Rows looked at per eviction round: [`EVICT_RUNS`] runs of consecutive rows, each from a
/// random rowid, of which the least recently used quarter is evicted (approximate LRU by
/// sampling, as Redis does; exact when all rowids fit one sample).
const EVICT_SAMPLE: usize = 64;

/// Random starting points per eviction sample, so one sample is not all rows written together.
const EVICT_RUNS: usize = 4;

/// Expired rows deleted per statement when making room for the disk bound.
const EXPIRED_CHUNK: usize = 256;

/// Versions reserved per write of the lease row.
const VERSION_LEASE: u64 = 10_000;

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

/// A mutation, as queued for the writer.
#[derive(Debug)]
pub enum WriteOp {
    /// Set one key under a condition.
    Set {
        namespace: String,
        key: String,
        value: Bytes,
        ttl_ms: u64,
        condition: SetCondition,
    },
    /// Set many keys, all or none.
    SetMany {
        namespace: String,
        entries: Vec<NewEntry>,
    },
    /// Delete keys.
    Delete {
        namespace: String,
        keys: Vec<String>,
    },
    /// Delete one key only while its version is `version` (compare-and-delete).
    DeleteIfVersion {
        namespace: String,
        key: String,
        version: u64,
    },
    /// Delete every key starting with a prefix.
    DeletePrefix { namespace: String, prefix: String },
    /// Delete every key of a namespace.
    Clear { namespace: String },
    /// Give a live key a new TTL.
    Touch {
        namespace: String,
        key: String,
        ttl_ms: u64,
    },
    /// Add to an integer counter.
    Increment {
        namespace: String,
        key: String,
        delta: i64,
        ttl_ms: u64,
        /// Only a live counter: an absent one is left absent.
        if_present: bool,
    },
    /// Create a session.
    CreateSession(Box<NewSession>),
    /// Merge changes into a live session's data.
    UpdateSession {
        token_hash: TokenHash,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        limits: DataLimits,
    },
    /// Give a live session a new token hash.
    RotateSession {
        token_hash: TokenHash,
        new_hash: TokenHash,
    },
    /// End one session.
    RevokeSession(SessionTarget),
    /// End a user's sessions, but one.
    RevokeUserSessions {
        user_id: String,
        except: Option<String>,
    },
    /// Record sessions' last uses seen by reads (coalesced, in the background, and at close).
    TouchSessions(Vec<(TokenHash, u64)>),
    /// Write rate-limit states behind (upsert, or delete where the state is `None`).
    PersistLimits(Vec<LimitRow>),
    /// Background upkeep: record reads for eviction order, delete a batch of expired rows and
    /// sessions, and evict if over the disk bound.
    Maintain,
}

impl WriteOp {
    /// Bytes of values this command writes.
    fn payload_bytes(&self) -> usize {
        match self {
            WriteOp::Set { value, .. } => value.len(),
            WriteOp::SetMany { entries, .. } => entries.iter().map(|e| e.value.len()).sum(),
            WriteOp::CreateSession(new) => data_bytes(&new.data),
            WriteOp::UpdateSession { set, .. } => data_bytes(set),
            _ => 0,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Result of a Set.
    Set {
        /// Whether the value was written.
        stored: bool,
        /// Version after the call (current version when not stored, 0 if absent).
        version: u64,
    },
    /// Versions of a SetMany, in order.
    Versions(Vec<u64>),
    /// Rows affected (deletes).
    Count(u64),
    /// Whether the key was found (Touch).
    Found(bool),
    /// Counter value and version after an Increment, and whether the counter was live
    /// before it (when not, and the Increment was `if_present`, nothing was written and both
    /// numbers are 0).
    Incremented {
        value: i64,
        version: u64,
        existed: bool,
    },
    /// A session after a write; `None` when it was not live (nothing was written).
    Session(Option<SessionRecord>),
    /// Upkeep done; `more` when a full batch of expired rows was deleted and more may wait.
    Maintained { expired: u64, more: bool },
}

/// A message to the writer thread.
#[derive(Debug)]
pub enum Command {
    /// Run a write and answer when it committed (or failed).
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<WriteOutcome>>,
    },
    /// Finish what was queued before, checkpoint the WAL and stop.
    Shutdown { reply: oneshot::Sender<Result<()>> },
    /// Answer as soon as the writer takes this from its queue: it is alive and has got
    /// through every batch before it (the watchdog's check).
    Ping { reply: oneshot::Sender<()> },
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Bound on the sum of `size` over cache rows; past it, least recently used rows go.
    pub max_disk_bytes: u64,
    /// Expired rows deleted per upkeep pass.
    pub sweep_batch: usize,
    /// Where each batch's size and commit time are recorded.
    pub metrics: Arc<WriterMetrics>,
}

/// A change to apply to memory once the transaction holding it has committed.
#[derive(Debug)]
enum MemEffect {
    Put(String, String, CachedEntry),
    Remove(String, String),
    Expiry(String, String, u64),
    PutSession(TokenHash, Arc<CachedSession>),
    RemoveSession(TokenHash),
}

/// Everything a command changes besides the database, held back until commit.
#[derive(Debug, Default)]
struct Effects {
    memory: Vec<MemEffect>,
    /// Change of the total `size` of cache rows.
    bytes_delta: i64,
    counts: Vec<(String, CounterValues)>,
}

impl Effects {
    fn count(&mut self, namespace: &str) -> &mut CounterValues {
        if self.counts.last().is_none_or(|(ns, _)| ns != namespace) {
            self.counts
                .push((namespace.to_owned(), CounterValues::default()));
        }
        // Just pushed or matched above.
        &mut self.counts.last_mut().expect("a counts entry").1
    }

    fn append(&mut self, other: Effects) {
        self.memory.extend(other.memory);
        self.bytes_delta += other.bytes_delta;
        self.counts.extend(other.counts);
    }
}

/// The current row of a key.
struct Current {
    version: u64,
    expires_at_ms: u64,
    size: i64,
}

/// The writer's state; lives on its own thread.
pub struct Writer {
    conn: Connection,
    memory: Arc<EntryCache>,
    sessions: Arc<SessionCache>,
    stats: Arc<StatsRegistry>,
    clock: Arc<dyn Clock>,
    settings: WriterSettings,
    /// The next version to hand out; versions are unique across the store, never reused.
    next_version: u64,
    /// End of the committed version lease: every version handed out is below it, so after a
    /// restart numbering resumes from here. Extending it costs one row write per
    /// [`VERSION_LEASE`] versions instead of one per commit.
    lease_end: u64,
    /// Sum of `size` over all cache rows, as committed.
    cache_bytes: u64,
    /// Tells the checkpointer a commit happened (never blocks: a pending hint is enough).
    checkpoint_hint: SyncSender<()>,
    /// Set when a savepoint could not be closed: the batch's transaction is then abandoned.
    savepoint_failed: bool,
    /// The database file and WAL this connection has open; checked before every batch.
    files: OpenFiles,
}

thread_local! {
    /// Frames in the WAL after the last commit of this thread's writer connection, as SQLite's
    /// WAL hook reports them (each store's writer has a thread of its own).
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// The writer connection's WAL hook: called by SQLite at the end of every commit.
fn record_wal_frames(_: &Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

impl Drop for Writer {
    fn drop(&mut self) {
        // However the writer stops (even by a panic mid-commit), no reader may wait for it to
        // show a commit in memory any more.
        self.memory.commit_shown(u64::MAX);
    }
}

impl Writer {
    /// Loads the writer's counters from the database opened at `db_path`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conn: Connection,
        db_path: &std::path::Path,
        memory: Arc<EntryCache>,
        sessions: Arc<SessionCache>,
        stats: Arc<StatsRegistry>,
        clock: Arc<dyn Clock>,
        settings: WriterSettings,
        checkpoint_hint: SyncSender<()>,
    ) -> Result<Self> {
        let lease_end: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'version_lease'",
                [],
                |r| r.get(0),
            )
            .map_err(Error::storage("reading the version counter"))?;
        // With synchronous=NORMAL a power loss can take the last lease extension with it, and
        // versions already handed out would be handed out again (an ABA for compare-and-set).
        // Starting above a thousand versions per millisecond of wall-clock time since the epoch
        // rules that out for any sustainable write rate, without an fsync per lease.
        let version_floor = clock.now_ms().saturating_mul(1000);
        // Kept in the same transaction as every change of the table (see `commit_batch`):
        // reading it costs nothing however big the store, where SUM(size) reads every row.
        let cache_bytes: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'cache_bytes'",
                [],
                |r| r.get(0),
            )
            .map_err(Error::storage("reading the cache table's size"))?;
        conn.wal_hook(Some(record_wal_frames));
        Ok(Self {
            conn,
            memory,
            sessions,
            stats,
            clock,
            settings,
            next_version: (lease_end.max(1) as u64).max(version_floor),
            lease_end: lease_end.max(1) as u64,
            cache_bytes: cache_bytes.max(0) as u64,
            checkpoint_hint,
            savepoint_failed: false,
            files: OpenFiles::record(db_path),
        })
        .inspect(|w| {
            w.memory.set_access_tracking(w.eviction_in_sight());
            w.settings.metrics.set_cache_bytes(w.cache_bytes);
        })
    }

    /// Serves commands until shutdown or until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut shutdown = None;
        while shutdown.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut next = Some(first);
            let mut batch_bytes = 0;
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Write { op, reply } => {
                        batch_bytes += op.payload_bytes();
                        batch.push((op, reply));
                    }
                    Command::Shutdown { reply } => {
                        shutdown = Some(reply);
                        break;
                    }
                    Command::Ping { reply } => {
                        let _ = reply.send(());
                    }
                }
                if batch.len() < MAX_BATCH && batch_bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
        }
        // Nothing queued after the shutdown request is run: answer it as unavailable.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Write { reply, .. } => {
                    let _ = reply.send(Err(Error::Unavailable("larder is shutting down".into())));
                }
                Command::Shutdown { reply } => {
                    let _ = reply.send(Ok(()));
                }
                Command::Ping { reply } => {
                    let _ = reply.send(());
                }
            }
        }
        let result = self.checkpoint();
        if let Err(e) = &result {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        if let Some(reply) = shutdown {
            let _ = reply.send(result);
        }
    }

    /// Truncates the WAL into the database file.
    fn checkpoint(&self) -> Result<()> {
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(Error::storage("checkpointing the WAL"))?;
        if busy != 0 {
            // Readers still open (calls cut at the drain deadline): the WAL keeps its
            // committed frames and SQLite replays them at the next open; nothing is lost.
            tracing::warn!("final WAL checkpoint incomplete: readers were still active");
        }
        Ok(())
    }

    fn commit_batch(&mut self, batch: &mut Vec<(WriteOp, oneshot::Sender<Result<WriteOutcome>>)>) {
        let now = self.clock.now_ms();
        let started = Instant::now();
        if let Err(moved) = self.files.check() {
            // Committing into a file no longer at its path would acknowledge writes that the
            // next start cannot see.
            self.settings.metrics.failed_batches.inc();
            let message = moved.to_string();
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(Error::Unavailable(message.clone())));
            }
            return;
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            self.settings.metrics.failed_batches.inc();
            fail_all(batch, "starting a write transaction", &e);
            return;
        }
        let mut effects = Effects::default();
        let mut results = Vec::with_capacity(batch.len());
        self.savepoint_failed = false;
        for (op, _) in batch.iter() {
            let mut fx = Effects::default();
            let result = if needs_savepoint(op) {
                self.in_savepoint(|w| w.apply(op, now, &mut fx))
            } else {
                self.apply(op, now, &mut fx)
            };
            if let Some(lost) = self.transaction_lost(&result) {
                self.abandon_batch(batch, lost);
                return;
            }
            if result.is_ok() {
                effects.append(fx);
            }
            results.push(result);
        }
        let evicted = self.enforce_disk_bound(&mut effects);
        if let Some(lost) = self.transaction_lost(&evicted) {
            self.abandon_batch(batch, lost);
            return;
        }
        if let Err(e) = evicted {
            // The batch itself is fine; the bound is enforced again on the next write.
            tracing::warn!(error = %e, "evicting for the disk bound failed");
        }
        let cache_bytes = (self.cache_bytes as i64 + effects.bytes_delta).max(0) as u64;
        let mut commit_number = None;
        let commit = self
            .save_cache_bytes(cache_bytes)
            .and_then(|()| self.extend_version_lease())
            .and_then(|new_lease| {
                // From here readers of SQLite may see the commit before memory shows it.
                // Counted before COMMIT, and SQLite publishes a commit to readers through the
                // WAL index behind full memory barriers, so a reader that saw the commit then
                // loads a count that includes it.
                commit_number = Some(self.memory.begin_commit());
                self.conn
                    .execute_batch("COMMIT")
                    .map_err(Error::storage("committing a write batch"))
                    .map(|()| new_lease)
            });
        let new_lease = match commit {
            Ok(lease) => lease,
            Err(e) => {
                if let Some(n) = commit_number {
                    self.memory.commit_shown(n);
                }
                self.abandon_batch(batch, e);
                return;
            }
        };
        if let Some(lease) = new_lease {
            self.lease_end = lease;
        }
        let _ = self.checkpoint_hint.try_send(());
        self.cache_bytes = cache_bytes;
        self.settings
            .metrics
            .committed(batch.len(), started.elapsed(), self.cache_bytes);
        self.memory.set_access_tracking(self.eviction_in_sight());
        // Readers of several keys see all of this commit in memory or none of it.
        self.memory.begin_publish();
        for effect in effects.memory {
            match effect {
                MemEffect::Put(ns, key, entry) => self.memory.put((ns, key), entry),
                MemEffect::Remove(ns, key) => self.memory.remove(&(ns, key)),
                MemEffect::Expiry(ns, key, at) => {
                    self.memory.update(&(ns, key), |e| e.expires_at_ms = at)
                }
                MemEffect::PutSession(hash, session) => self.sessions.put(hash, session),
                MemEffect::RemoveSession(hash) => self.sessions.remove(&hash),
            }
        }
        self.memory.end_publish();
        if let Some(n) = commit_number {
            self.memory.commit_shown(n);
        }
        for (ns, counts) in effects.counts {
            self.stats.counters(&ns).add(&counts);
        }
        for ((_, reply), result) in batch.drain(..).zip(results) {
            // The caller may have gone (cancelled request); the write stands regardless.
            let _ = reply.send(result);
        }
        if WAL_FRAMES.get() >= WRITER_CHECKPOINT_PAGES {
            self.backstop_checkpoint();
        }
    }

    /// Checkpoints on the writer's own connection, once the background checkpointer has let
    /// the WAL grow past [`WRITER_CHECKPOINT_PAGES`] (readers held it back, or it fell
    /// behind): after the commit is answered and shown in memory, so that neither its writes
    /// nor the readers waiting for memory wait for it.
    fn backstop_checkpoint(&mut self) {
        WAL_FRAMES.set(0);
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            }) {
            Ok((wal_frames, copied)) => {
                tracing::debug!(wal_frames, copied, "writer checkpoint");
            }
            Err(e) => tracing::warn!(error = %e, "writer checkpoint failed"),
        }
    }

    /// Whether the batch's transaction can no longer be trusted after a step that returned
    /// `result`: SQLite rolls a whole transaction back by itself on some errors (disk full,
    /// I/O error, out of memory), after which statements would run in autocommit mode, and a
    /// savepoint that could not be closed leaves an op half-undone. Either way the batch must
    /// not go on. Returns the error to fail the batch with.
    fn transaction_lost<T>(&self, result: &Result<T>) -> Option<Error> {
        if !self.conn.is_autocommit() && !self.savepoint_failed {
            return None;
        }
        Some(match result {
            Err(Error::Storage { context, source }) => Error::Storage {
                context,
                source: replicate(source),
            },
            _ => Error::Internal("the write transaction was rolled back by SQLite".into()),
        })
    }

    /// Rolls back whatever is left of the batch's transaction and fails every write in it.
    /// Nothing of the batch reaches memory, so memory keeps matching the database.
    fn abandon_batch(
        &mut self,
        batch: &mut Vec<(WriteOp, oneshot::Sender<Result<WriteOutcome>>)>,
        err: Error,
    ) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back a failed write batch failed");
        }
        self.savepoint_failed = false;
        self.settings.metrics.failed_batches.inc();
        // Versions handed out in the failed batch are skipped, never reused.
        tracing::warn!(error = %err, writes = batch.len(), "write batch rolled back");
        let source = match &err {
            Error::Storage { source, .. } => replicate(source),
            other => rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(other.to_string()),
            ),
        };
        fail_all(batch, "committing a write batch", &source);
    }

    fn in_savepoint<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.conn
            .execute_batch("SAVEPOINT op")
            .map_err(Error::storage("opening a savepoint"))?;
        let result = f(self);
        let end = if result.is_ok() {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        };
        if let Err(e) = self.conn.execute_batch(end) {
            self.savepoint_failed = true;
            return Err(Error::storage("closing a savepoint")(e));
        }
        result
    }

    /// Inside the batch's transaction: records the cache table's new byte total, when the
    /// batch changed it.
    fn save_cache_bytes(&mut self, bytes: u64) -> Result<()> {
        if bytes == self.cache_bytes {
            return Ok(());
        }
        self.conn
            .prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'cache_bytes'")
            .and_then(|mut s| s.execute([bytes as i64]))
            .map_err(Error::storage("saving the cache table's size"))?;
        Ok(())
    }

    /// Inside the batch's transaction: when the batch handed out versions past the lease,
    /// writes a new lease end and returns it (it takes effect once committed).
    fn extend_version_lease(&mut self) -> Result<Option<u64>> {
        if self.next_version <= self.lease_end {
            return Ok(None);
        }
        let lease = self.next_version + VERSION_LEASE;
        self.conn
            .prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'version_lease'")
            .and_then(|mut s| s.execute([lease as i64]))
            .map_err(Error::storage("saving the version lease"))?;
        Ok(Some(lease))
    }

    fn take_version(&mut self) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        v
    }

    fn apply(&mut self, op: &WriteOp, now: u64, fx: &mut Effects) -> Result<WriteOutcome> {
        match op {
            WriteOp::Set {
                namespace,
                key,
                value,
                ttl_ms,
                condition,
            } => {
                let (stored, version) =
                    self.set(namespace, key, value, *ttl_ms, *condition, now, fx)?;
                Ok(WriteOutcome::Set { stored, version })
            }
            WriteOp::SetMany { namespace, entries } => {
                let mut versions = Vec::with_capacity(entries.len());
                for e in entries {
                    let (_, version) = self.set(
                        namespace,
                        &e.key,
                        &e.value,
                        e.ttl_ms,
                        SetCondition::Always,
                        now,
                        fx,
                    )?;
                    versions.push(version);
                }
                Ok(WriteOutcome::Versions(versions))
            }
            WriteOp::Delete { namespace, keys } => {
                let mut deleted = 0;
                for key in keys {
                    let row: Option<(i64, i64)> = self
                        .conn
                        .prepare_cached(
                            "DELETE FROM cache_entries WHERE namespace = ?1 AND key = ?2 \
                             RETURNING expires_at, size",
                        )
                        .and_then(|mut s| {
                            s.query_row(params![namespace, key], |r| Ok((r.get(0)?, r.get(1)?)))
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
                Ok(WriteOutcome::Count(deleted))
            }
            WriteOp::DeleteIfVersion {
                namespace,
                key,
                version,
            } => {
                // Another version (or none) stays, and so does its copy in memory: only a row
                // deleted here is removed from memory.
                let deleted = self.delete_rows(
                    "DELETE FROM cache_entries \
                     WHERE namespace = ?1 AND key = ?2 AND version = ?3 \
                     RETURNING key, expires_at, size",
                    params![namespace, key, *version as i64],
                    namespace,
                    now,
                    fx,
                )?;
                fx.count(namespace).deletes += deleted;
                Ok(WriteOutcome::Count(deleted))
            }
            WriteOp::DeletePrefix { namespace, prefix } => {
                let deleted = match prefix_upper_bound(prefix) {
                    Some(upper) => self.delete_rows(
                        "DELETE FROM cache_entries \
                         WHERE namespace = ?1 AND key >= ?2 AND key < ?3 \
                         RETURNING key, expires_at, size",
                        params![namespace, prefix, upper],
                        namespace,
                        now,
                        fx,
                    )?,
                    None => self.delete_rows(
                        "DELETE FROM cache_entries WHERE namespace = ?1 AND key >= ?2 \
                         RETURNING key, expires_at, size",
                        params![namespace, prefix],
                        namespace,
                        now,
                        fx,
                    )?,
                };
                fx.count(namespace).deletes += deleted;
                Ok(WriteOutcome::Count(deleted))
            }
            WriteOp::Clear { namespace } => {
                let deleted = self.delete_rows(
                    "DELETE FROM cache_entries WHERE namespace = ?1 \
                     RETURNING key, expires_at, size",
                    params![namespace],
                    namespace,
                    now,
                    fx,
                )?;
                fx.count(namespace).deletes += deleted;
                Ok(WriteOutcome::Count(deleted))
            }
            WriteOp::Touch {
                namespace,
                key,
                ttl_ms,
            } => {
                let live = self
                    .current(namespace, key)?
                    .filter(|c| remaining_ms(c.expires_at_ms, now).is_some());
                if live.is_none() {
                    return Ok(WriteOutcome::Found(false));
                }
                let expires_at = deadline_ms(*ttl_ms, now);
                self.conn
                    .prepare_cached(
                        "UPDATE cache_entries SET expires_at = ?3, accessed_at = ?4 \
                         WHERE namespace = ?1 AND key = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![namespace, key, expires_at as i64, now as i64])
                    })
                    .map_err(Error::storage("touching a key"))?;
                fx.memory.push(MemEffect::Expiry(
                    namespace.clone(),
                    key.clone(),
                    expires_at,
                ));
                Ok(WriteOutcome::Found(true))
            }
            WriteOp::Increment {
                namespace,
                key,
                delta,
                ttl_ms,
                if_present,
            } => self.increment(namespace, key, *delta, *ttl_ms, *if_present, now, fx),
            WriteOp::CreateSession(new) => self.create_session(new, now, fx),
            WriteOp::UpdateSession {
                token_hash,
                set,
                remove,
                limits,
            } => self.update_session(token_hash, set, remove, *limits, now, fx),
            WriteOp::RotateSession {
                token_hash,
                new_hash,
            } => self.rotate_session(token_hash, new_hash, now, fx),
            WriteOp::RevokeSession(target) => self.revoke_session(target, now, fx),
            WriteOp::RevokeUserSessions { user_id, except } => {
                self.revoke_user_sessions(user_id, except.as_deref(), now, fx)
            }
            WriteOp::TouchSessions(uses) => {
                for (hash, last_seen_ms) in uses {
                    self.touch_session(hash, *last_seen_ms)?;
                }
                Ok(WriteOutcome::Count(uses.len() as u64))
            }
            WriteOp::PersistLimits(rows) => self.persist_limits(rows),
            WriteOp::Maintain => self.maintain(now, fx),
        }
    }

    fn current(&self, namespace: &str, key: &str) -> Result<Option<Current>> {
        self.conn
            .prepare_cached(
                "SELECT version, expires_at, size FROM cache_entries \
                 WHERE namespace = ?1 AND key = ?2",
            )
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

    /// Writes a key if `condition` holds; returns whether it was stored, and the version
    /// after the call (the current one, 0 if absent, when not stored).
    #[allow(clippy::too_many_arguments)]
    fn set(
        &mut self,
        namespace: &str,
        key: &str,
        value: &Bytes,
        ttl_ms: u64,
        condition: SetCondition,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(bool, u64)> {
        let current = self.current(namespace, key)?;
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
            return Ok((false, live_version.unwrap_or(0)));
        }
        let version = self.take_version();
        let expires_at = deadline_ms(ttl_ms, now);
        self.upsert(
            namespace, key, value, version, expires_at, now, old_size, fx,
        )?;
        Ok((true, version))
    }

    #[allow(clippy::too_many_arguments)]
    fn upsert(
        &mut self,
        namespace: &str,
        key: &str,
        value: &Bytes,
        version: u64,
        expires_at: u64,
        now: u64,
        old_size: i64,
        fx: &mut Effects,
    ) -> Result<()> {
        let size = (key.len() + value.len()) as i64;
        self.conn
            .prepare_cached(
                "INSERT INTO cache_entries \
                 (namespace, key, value, version, expires_at, accessed_at, size) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (namespace, key) DO UPDATE SET \
                 value = excluded.value, version = excluded.version, \
                 expires_at = excluded.expires_at, accessed_at = excluded.accessed_at, \
                 size = excluded.size",
            )
            .and_then(|mut s| {
                s.execute(params![
                    namespace,
                    key,
                    &value[..],
                    version as i64,
                    expires_at as i64,
                    now as i64,
                    size
                ])
            })
            .map_err(Error::storage("writing a key"))?;
        fx.bytes_delta += size - old_size;
        fx.memory.push(MemEffect::Put(
            namespace.to_owned(),
            key.to_owned(),
            CachedEntry {
                // A copy of its own: the request's value is a slice of the buffer the whole
                // message was decoded from (a SetMany's, up to megabytes), which the LRU would
                // otherwise keep alive, unaccounted, for as long as it keeps this entry.
                value: Bytes::copy_from_slice(value),
                version,
                expires_at_ms: expires_at,
            },
        ));
        fx.count(namespace).sets += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn increment(
        &mut self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl_ms: u64,
        if_present: bool,
        now: u64,
        fx: &mut Effects,
    ) -> Result<WriteOutcome> {
        let row: Option<(Vec<u8>, i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT value, expires_at, size FROM cache_entries \
                 WHERE namespace = ?1 AND key = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![namespace, key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(Error::storage("reading a counter"))?;
        let old_size = row.as_ref().map_or(0, |r| r.2);
        let live = row.filter(|r| remaining_ms(r.1 as u64, now).is_some());
        let existed = live.is_some();
        if if_present && !existed {
            return Ok(WriteOutcome::Incremented {
                value: 0,
                version: 0,
                existed,
            });
        }
        let (value, expires_at) = match live {
            Some((bytes, expires_at, _)) => {
                let current = parse_counter(&bytes).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "key {key:?} does not hold a base-10 64-bit signed integer"
                    ))
                })?;
                let value = current.checked_add(delta).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "incrementing key {key:?} ({current}) by {delta} would overflow a \
                         64-bit signed integer"
                    ))
                })?;
                (value, expires_at as u64)
            }
            None => (delta, deadline_ms(ttl_ms, now)),
        };
        let version = self.take_version();
        let bytes = Bytes::from(value.to_string());
        self.upsert(
            namespace, key, &bytes, version, expires_at, now, old_size, fx,
        )?;
        Ok(WriteOutcome::Incremented {
            value,
            version,
            existed,
        })
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

    fn maintain(&mut self, now: u64, fx: &mut Effects) -> Result<WriteOutcome> {
        // Read times only matter once eviction is in sight; until then they stay in memory
        // (bounded), so a read-heavy workload does not turn into a stream of disk writes.
        if self.eviction_in_sight() {
            self.record_accesses()?;
        }
        let batch = self.settings.sweep_batch;
        let expired = self.sweep_expired(now, batch, fx)?;
        let sessions = self.sweep_sessions(now, batch, fx)?;
        let limits = self.sweep_limits(now, batch)?;
        Ok(WriteOutcome::Maintained {
            expired: expired + sessions + limits,
            more: [expired, sessions, limits]
                .iter()
                .any(|&n| n as usize >= batch),
        })
    }

    /// Whether the cache table is past half its disk bound, where read times start to matter.
    fn eviction_in_sight(&self) -> bool {
        self.cache_bytes.saturating_mul(2) >= self.settings.max_disk_bytes
    }

    /// Writes the read times collected by the memory LRU, so eviction sees them.
    fn record_accesses(&mut self) -> Result<()> {
        let accessed = self.memory.take_accessed();
        if accessed.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE cache_entries SET accessed_at = ?3 \
                 WHERE namespace = ?1 AND key = ?2 AND accessed_at < ?3",
            )
            .map_err(Error::storage("preparing access-time updates"))?;
        for ((ns, key), at) in accessed {
            stmt.execute(params![ns, key, at as i64])
                .map_err(Error::storage("recording access times"))?;
        }
        Ok(())
    }

    /// Deletes up to `limit` expired rows.
    fn sweep_expired(&mut self, now: u64, limit: usize, fx: &mut Effects) -> Result<u64> {
        let rows = self
            .conn
            .prepare_cached(
                "DELETE FROM cache_entries WHERE id IN ( \
                   SELECT id FROM cache_entries \
                   WHERE expires_at > 0 AND expires_at <= ?1 LIMIT ?2) \
                 RETURNING namespace, key, size",
            )
            .and_then(|mut s| {
                s.query_map(params![now as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(Error::storage("sweeping expired keys"))?;
        let n = rows.len() as u64;
        for (ns, key, size) in rows {
            fx.bytes_delta -= size;
            fx.count(&ns).expirations += 1;
            fx.memory.push(MemEffect::Remove(ns, key));
        }
        Ok(n)
    }

    /// Evicts least recently used rows until the batch leaves the cache table under its bound.
    fn enforce_disk_bound(&mut self, fx: &mut Effects) -> Result<()> {
        let bound = self.settings.max_disk_bytes as i64;
        if self.cache_bytes as i64 + fx.bytes_delta <= bound {
            return Ok(());
        }
        let now = self.clock.now_ms();
        self.in_savepoint(|w| {
            let mut evict = Effects::default();
            w.record_accesses()?;
            // Expired rows go first: they are garbage, not evictions.
            loop {
                if w.cache_bytes as i64 + fx.bytes_delta + evict.bytes_delta <= bound {
                    break;
                }
                if w.sweep_expired(now, EXPIRED_CHUNK, &mut evict)? == 0 {
                    break;
                }
            }
            for _ in 0..MAX_EVICT_ROUNDS {
                if w.cache_bytes as i64 + fx.bytes_delta + evict.bytes_delta <= bound {
                    break;
                }
                if w.evict_sample(&mut evict)? == 0 {
                    break;
                }
            }
            fx.append(evict);
            Ok(())
        })
    }
}

impl Writer {
    /// One eviction round: reads a sample of rows starting at a random rowid (wrapping
    /// around), and deletes the least recently used quarter of it. Returns rows evicted.
    fn evict_sample(&mut self, fx: &mut Effects) -> Result<usize> {
        let bounds: (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT MIN(id), MAX(id) FROM cache_entries", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(Error::storage("sampling rows to evict"))?;
        let (Some(min), Some(max)) = bounds else {
            return Ok(0);
        };
        let mut sample = if max - min < EVICT_SAMPLE as i64 {
            // Every row fits one sample: exact LRU.
            self.sample_from(min, i64::MAX, EVICT_SAMPLE)?
        } else {
            let run = EVICT_SAMPLE / EVICT_RUNS;
            let mut sample = Vec::with_capacity(EVICT_SAMPLE);
            for _ in 0..EVICT_RUNS {
                let start = rand::random_range(min..=max);
                let mut rows = self.sample_from(start, i64::MAX, run)?;
                if rows.len() < run {
                    rows.extend(self.sample_from(min, start, run - rows.len())?);
                }
                sample.extend(rows);
            }
            sample
        };
        // Runs may overlap on a small table.
        sample.sort_by_key(|s| (s.accessed_at, s.id));
        sample.dedup_by_key(|s| s.id);
        let n = (sample.len() / 4).max(1).min(sample.len());
        for victim in sample.into_iter().take(n) {
            self.conn
                .prepare_cached("DELETE FROM cache_entries WHERE id = ?1")
                .and_then(|mut s| s.execute([victim.id]))
                .map_err(Error::storage("evicting for the disk bound"))?;
            fx.bytes_delta -= victim.size;
            fx.count(&victim.namespace).evictions += 1;
            fx.memory
                .push(MemEffect::Remove(victim.namespace, victim.key));
        }
        Ok(n)
    }

    /// Up to `limit` rows with `from <= id < until`, in rowid order.
    fn sample_from(&self, from: i64, until: i64, limit: usize) -> Result<Vec<Candidate>> {
        self.conn
            .prepare_cached(
                "SELECT id, accessed_at, namespace, key, size FROM cache_entries \
                 WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![from, until, limit as i64], |r| {
                    Ok(Candidate {
                        id: r.get(0)?,
                        accessed_at: r.get(1)?,
                        namespace: r.get(2)?,
                        key: r.get(3)?,
                        size: r.get(4)?,
                    })
                })?
                .collect()
            })
            .map_err(Error::storage("sampling rows to evict"))
    }
}

/// A row considered for eviction.
struct Candidate {
    id: i64,
    accessed_at: i64,
    namespace: String,
    key: String,
    size: i64,
}

fn needs_savepoint(op: &WriteOp) -> bool {
    match op {
        WriteOp::SetMany { entries, .. } => entries.len() > 1,
        WriteOp::Delete { keys, .. } => keys.len() > 1,
        WriteOp::TouchSessions(uses) => uses.len() > 1,
        WriteOp::PersistLimits(rows) => rows.len() > 1,
        WriteOp::Maintain => true,
        // One DELETE … RETURNING: SQLite deletes every row on its first step, so a failure
        // while the later rows are collected must undo the deletes with them.
        WriteOp::DeletePrefix { .. } | WriteOp::Clear { .. } => true,
        _ => false,
    }
}

/// Answers every command of a failed batch with the same storage error.
fn fail_all(
    batch: &mut Vec<(WriteOp, oneshot::Sender<Result<WriteOutcome>>)>,
    context: &'static str,
    err: &rusqlite::Error,
) {
    tracing::warn!(error = %err, writes = batch.len(), "{context} failed");
    for (_, reply) in batch.drain(..) {
        let _ = reply.send(Err(Error::Storage {
            context,
            source: replicate(err),
        }));
    }
}

/// A copy of a SQLite error (rusqlite errors are not `Clone`), keeping its code.
fn replicate(err: &rusqlite::Error) -> rusqlite::Error {
    match err {
        rusqlite::Error::SqliteFailure(e, msg) => rusqlite::Error::SqliteFailure(*e, msg.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Parses a stored counter: optional `-`, then ASCII digits, as Redis INCR accepts.
pub fn parse_counter(bytes: &[u8]) -> Option<i64> {
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
///
/// ```
/// use larder::store::writer::prefix_upper_bound;
/// assert_eq!(prefix_upper_bound("user:42:").as_deref(), Some("user:42;"));
/// assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
/// ```
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
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
