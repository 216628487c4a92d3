//! The one writer thread and its group commit.
//!
//! Every mutation of the database goes through here. The thread takes every command queued
//! since its last commit, runs them in order inside one `BEGIN IMMEDIATE` transaction (each
//! multi-row command inside its own savepoint, so a failing command leaves the others intact),
//! commits once, and only then updates memory and answers the callers. Under load, hundreds of
//! writes share one commit; a write is never acknowledged before it is committed.
//!
//! This folder holds only the engine: the queue and its typed replies ([`command`]), the batch
//! loop, savepoints, the version lease, and the effects applied to memory after COMMIT
//! ([`effects`]). What each command does to its tables is its domain's `write.rs`
//! (`cache`, `session`, `ratelimit`, `queue`), and upkeep is `upkeep.rs`.

pub(crate) mod command;
pub(crate) mod effects;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::cache::EntryCache;
use crate::store::files::OpenFiles;
use crate::store::observe::WriterMetrics;
use crate::store::queue::{QueueSettings, Signals};
use crate::store::schema::WRITER_CHECKPOINT_PAGES;
use crate::store::session::SessionCache;
use crate::store::session::revoke::Revocations;
use crate::store::stats::StatsRegistry;
pub(crate) use command::{Command, Op, Pending, Reply, WriteQueue};
pub(crate) use effects::{Effects, MemEffect};

/// Most commands folded into one transaction.
const MAX_BATCH: usize = 1024;

/// A batch stops taking commands once their values add up to this, so one transaction (and
/// the WAL it writes) stays bounded even when every queued write carries a large value.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// Tries of the final checkpoint at shutdown, 20 ms apart.
const FINAL_CHECKPOINT_TRIES: usize = 50;

/// Versions reserved per write of the lease row.
const VERSION_LEASE: u64 = 10_000;

/// Settings of the writer.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    /// Bound on the sum of `size` over cache rows; past it, least recently used rows go.
    pub(crate) max_disk_bytes: u64,
    /// Expired rows deleted per upkeep pass.
    pub(crate) sweep_batch: usize,
    /// Where each batch's size and commit time are recorded.
    pub(crate) metrics: Arc<WriterMetrics>,
    /// The queues' defaults and bounds.
    pub(crate) queue: QueueSettings,
}

/// What the writer shares with the rest of the store.
#[derive(Debug)]
pub(crate) struct WriterParts {
    /// The memory of cache entries, changed only after COMMIT.
    pub(crate) memory: Arc<EntryCache>,
    /// The memory of sessions, changed only after COMMIT.
    pub(crate) sessions: Arc<SessionCache>,
    /// User revocations in progress, added and removed after COMMIT.
    pub(crate) revocations: Arc<Revocations>,
    /// Per-namespace counters, added to after COMMIT.
    pub(crate) stats: Arc<StatsRegistry>,
    /// Where "now" comes from.
    pub(crate) clock: Arc<dyn Clock>,
    /// Tells the checkpointer a commit happened (never blocks: a pending hint is enough).
    pub(crate) checkpoint_hint: SyncSender<()>,
    /// The Dequeues waiting for jobs, woken after COMMIT.
    pub(crate) queue_signals: Arc<Signals>,
}

/// The writer's state; lives on its own thread.
pub(crate) struct Writer {
    pub(in crate::store) conn: Connection,
    pub(in crate::store) memory: Arc<EntryCache>,
    pub(in crate::store) sessions: Arc<SessionCache>,
    pub(in crate::store) revocations: Arc<Revocations>,
    stats: Arc<StatsRegistry>,
    pub(in crate::store) clock: Arc<dyn Clock>,
    pub(in crate::store) settings: WriterSettings,
    /// The next version to hand out; versions are unique across the store, never reused.
    next_version: u64,
    /// End of the committed version lease: every version handed out is below it, so after a
    /// restart numbering resumes from here. Extending it costs one row write per
    /// [`VERSION_LEASE`] versions instead of one per commit.
    lease_end: u64,
    /// Sum of `size` over all cache rows, as committed. Kept by the engine rather than the
    /// cache's commands: the disk bound is enforced, and the total saved, once per batch,
    /// inside its transaction.
    pub(in crate::store) cache_bytes: u64,
    /// Tells the checkpointer a commit happened (never blocks: a pending hint is enough).
    checkpoint_hint: SyncSender<()>,
    /// The Dequeues waiting for jobs, woken after COMMIT.
    queue_signals: Arc<Signals>,
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
    /// Loads the writer's counters from the database open on `conn` at `db_path`.
    pub(crate) fn new(
        conn: Connection,
        db_path: &std::path::Path,
        parts: WriterParts,
        settings: WriterSettings,
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
        let version_floor = parts.clock.now_ms().saturating_mul(1000);
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
            memory: parts.memory,
            sessions: parts.sessions,
            revocations: parts.revocations,
            stats: parts.stats,
            clock: parts.clock,
            settings,
            next_version: (lease_end.max(1) as u64).max(version_floor),
            lease_end: lease_end.max(1) as u64,
            cache_bytes: cache_bytes.max(0) as u64,
            checkpoint_hint: parts.checkpoint_hint,
            queue_signals: parts.queue_signals,
            savepoint_failed: false,
            files: OpenFiles::record(db_path),
        })
        .inspect(|w| {
            w.memory.set_access_tracking(w.eviction_in_sight());
            w.settings.metrics.set_cache_bytes(w.cache_bytes);
        })
    }

    /// Serves commands until shutdown or until every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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
                    Command::Write(op) => {
                        batch_bytes += op.payload_bytes();
                        batch.push(op);
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
                Command::Write(mut op) => {
                    op.pending()
                        .fail(Error::Unavailable("larder is shutting down".into()));
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

    /// Truncates the WAL into the database file. The background checkpointer may be in the
    /// middle of a pass of its own (it stops only once the writer has gone), which makes this
    /// one answer busy at once: it is tried again for up to a second.
    fn checkpoint(&self) -> Result<()> {
        let mut busy = 1;
        for attempt in 0..FINAL_CHECKPOINT_TRIES {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            busy = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(Error::storage("checkpointing the WAL"))?;
            if busy == 0 {
                break;
            }
        }
        if busy != 0 {
            // Readers still open (calls cut at the drain deadline): the WAL keeps its
            // committed frames and SQLite replays them at the next open; nothing is lost.
            tracing::warn!("final WAL checkpoint incomplete: readers were still active");
        }
        Ok(())
    }

    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        let now = self.clock.now_ms();
        let started = Instant::now();
        if let Err(moved) = self.files.check() {
            // Committing into a file no longer at its path would acknowledge writes that the
            // next start cannot see.
            self.settings.metrics.failed_batches.inc();
            let message = moved.to_string();
            for mut op in batch.drain(..) {
                op.pending().fail(Error::Unavailable(message.clone()));
            }
            return;
        }
        // Prepared once and kept, as every statement of the writer: `execute_batch` would
        // parse BEGIN and COMMIT again for every batch.
        if let Err(e) = self
            .conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
        {
            self.settings.metrics.failed_batches.inc();
            fail_all(batch, "starting a write transaction", &e);
            return;
        }
        let mut effects = Effects::default();
        self.savepoint_failed = false;
        for i in 0..batch.len() {
            let mut fx = Effects::default();
            let op = &mut batch[i];
            let result = if op.needs_savepoint() {
                self.in_savepoint(|w| w.apply(op, now, &mut fx))
            } else {
                self.apply(op, now, &mut fx)
            };
            if let Some(lost) = self.transaction_lost(&result) {
                self.abandon_batch(batch, lost);
                return;
            }
            match result {
                Ok(()) => effects.append(fx),
                // The command's own failure: its answer; the rest of the batch goes on.
                Err(e) => batch[i].pending().hold_err(e),
            }
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
                    .prepare_cached("COMMIT")
                    .and_then(|mut s| s.execute([]))
                    .map(|_| ())
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
        // In the same synchronous step as the COMMIT: no caller's cancellation can come
        // between the database and memory, nor between a job and its waiting workers.
        for (queue, jobs) in std::mem::take(&mut effects.ready_jobs) {
            self.queue_signals.wake(&queue, jobs);
        }
        effects.publish(
            &self.memory,
            &self.sessions,
            &self.revocations,
            &self.stats,
            commit_number,
        );
        for mut op in batch.drain(..) {
            // The caller may have gone (cancelled request); the write stands regardless.
            op.pending().answer();
        }
        if WAL_FRAMES.get() >= WRITER_CHECKPOINT_PAGES {
            self.backstop_checkpoint();
        }
    }

    /// Runs one command inside the batch's transaction: its domain records its changes of
    /// memory in `fx` and holds its typed answer in the command's reply; an error is the
    /// command's failure (and, when the transaction is lost with it, the batch's).
    fn apply(&mut self, op: &mut Op, now: u64, fx: &mut Effects) -> Result<()> {
        match op {
            Op::Cache(op) => self.apply_cache(op, now, fx),
            Op::Session(op) => self.apply_session(op, now, fx),
            Op::RateLimit(op) => self.apply_rate_limit(op),
            Op::Queue(op) => self.apply_queue(op, now, fx),
            Op::Upkeep(reply) => {
                let done = self.upkeep(now, fx)?;
                reply.hold(done);
                Ok(())
            }
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
    fn abandon_batch(&mut self, batch: &mut Vec<Op>, err: Error) {
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

    /// Runs `f` inside a savepoint: released when it succeeds, rolled back when it fails, so
    /// that a failing command leaves nothing of itself in the batch's transaction.
    pub(in crate::store) fn in_savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
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

    /// Every version handed out so far is below this one (and every later one is not).
    pub(in crate::store) fn version_floor(&self) -> u64 {
        self.next_version
    }

    /// The next version: unique across the store, never reused (a failed batch skips its).
    pub(in crate::store) fn take_version(&mut self) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        v
    }
}

/// Answers every command of a failed batch with the same storage error.
fn fail_all(batch: &mut Vec<Op>, context: &'static str, err: &rusqlite::Error) {
    tracing::warn!(error = %err, writes = batch.len(), "{context} failed");
    for mut op in batch.drain(..) {
        op.pending().fail(Error::Storage {
            context,
            source: replicate(err),
        });
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
