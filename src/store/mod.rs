//! The storage engine behind every service: one cheap-to-clone [`Store`] handle.
//!
//! # Layout
//! - [`config`](StoreConfig): how a store is set up, and its defaults.
//! - `cache/`, `session/`, `ratelimit/`, `queue/`: one folder per domain, each with its in-memory
//!   table and reads (`mod.rs`), its writer commands with typed replies (`write.rs`) and
//!   every statement on its table (`sql.rs`).
//! - `writer/`: the single writer thread with group commit, savepoints, the version lease and
//!   the effects applied to memory after COMMIT; every mutation goes through it.
//! - `readers.rs`: the reader threads that answer reads memory cannot.
//! - `lru.rs`: the one sharded, byte-accounted LRU under every in-memory table; `memory.rs`:
//!   the read-through cache on it that the writer keeps coherent with SQLite.
//! - `upkeep.rs`: the periodic sweep of expired rows and eviction for the disk bound.
//! - `schema.rs`: the SQLite file, its PRAGMAs and migrations.
//! - `stats.rs`: per-namespace counters; `observe.rs`: what monitoring reads.
//! - `checkpoint.rs`: background WAL checkpoints, off the writer's path.
//! - `lock.rs`: one daemon per data directory; `files.rs`: writes refused once the database
//!   file or its WAL is deleted or replaced.
//! - [`backup`]: `larder backup`, a consistent copy of a live store into a new file.
//!
//! Reads try memory, then a few reader threads with a read-only connection each (`readers.rs`,
//! which batches concurrent misses into one read transaction; WAL readers see the last commit
//! and never take a lock the writer holds). A read answered from SQLite waits
//! only for a commit in progress to reach memory, so that memory never shows less than a read
//! already answered (see `MemoryCache::catch_up`). A read of several keys answers from one
//! commit: from memory when no commit was being applied to it meanwhile, else from one SQLite
//! read transaction. Writes are queued to the writer and acknowledged after their transaction
//! committed. A maintenance task asks the writer, once per interval, to sweep expired rows in
//! bounded batches and record read times for eviction. SQL stays behind this module, so
//! another backend can sit behind the same API later.

pub mod backup;
pub(crate) mod cache;
pub(crate) mod checkpoint;
mod config;
pub(crate) mod files;
pub(crate) mod lock;
pub(crate) mod lru;
pub(crate) mod memory;
pub(crate) mod observe;
pub(crate) mod queue;
pub(crate) mod ratelimit;
pub(crate) mod readers;
pub(crate) mod schema;
pub(crate) mod session;
pub(crate) mod stats;
pub(crate) mod upkeep;
pub(crate) mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::{Error, Result};
use cache::EntryCache;
use lock::DataDirLock;
use readers::Readers;
use stats::StatsRegistry;
use writer::{Op, Reply, WriteQueue, Writer, WriterParts, WriterSettings};

pub use cache::{CacheStats, Counter, Found, NewEntry, PageBounds, ScanPage, SetCondition};
pub use config::StoreConfig;
pub use observe::{COMMIT_SECONDS_BUCKETS, PolicyChecks, WriterMetrics};
pub use queue::{
    DeadPosition, DequeueAsk, Enqueued, JobPage, JobRecord, Lease, MAX_QUEUE_DURATION_MS, Nacked,
    NewJob, QueueSettings, QueueStats, ReadyAt, WaitingPosition,
};
pub use ratelimit::{SLOT_OVERHEAD, WhenFull};
pub use schema::{SCHEMA_VERSION, Synchronous};
pub use session::{
    DataLimits, MAX_PERSIST_WINDOW_MS, NewSession, SWEEP_GRACE_MS, SessionBounds, SessionList,
    SessionRecord, SessionTarget, TokenHash, persist_window,
};
pub use stats::CounterValues;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "larder.db";

/// The WAL beside the database at `db`: SQLite names it `<db>-wal`.
pub fn wal_path(db: &std::path::Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Commands that may wait for the writer before senders feel back-pressure.
const WRITE_QUEUE: usize = 4096;

/// The store handle. Clones share one store.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where "now" comes from (injected so tests move time by hand).
    clock: Arc<dyn Clock>,
    /// The LRU in front of SQLite; written by the writer, filled by readers.
    memory: Arc<EntryCache>,
    /// The LRU of sessions by token hash; written by the writer, filled by readers.
    sessions: Arc<session::SessionCache>,
    /// User revocations in progress, which readers honour; changed by the writer.
    revocations: Arc<session::revoke::Revocations>,
    /// Rate-limit state; the truth for every key it holds.
    limits: Arc<ratelimit::LimitTable>,
    /// Writes rate-limit state behind.
    write_behind: Arc<ratelimit::WriteBehind>,
    /// Counters for Stats.
    stats: Arc<StatsRegistry>,
    /// The reader threads, each with its read-only connection, for reads that miss memory.
    readers: Readers,
    /// One reader thread for table scans (Stats, Scan pages), apart from the point readers.
    scanners: Readers,
    /// Queue to the writer thread.
    writer: WriteQueue,
    /// The Dequeues waiting for jobs, by queue.
    queue_signals: Arc<queue::Signals>,
    /// The writer thread and the maintenance task, taken by [`Store::close`].
    background: Mutex<Option<Background>>,
    /// Writer histograms, rate-limit check counts and the file paths, for metrics.
    monitor: observe::Monitor,
    /// Held until [`Store::close`] has stopped the writer (or, without a close, for as long as
    /// the store lives). Released by close itself, not by the last handle: a handle that
    /// outlives the server by a moment (a request task finishing) must not keep the next
    /// daemon on the directory out once nothing here can write any more.
    lock: Mutex<Option<DataDirLock>>,
}

#[derive(Debug)]
struct Background {
    writer: std::thread::JoinHandle<()>,
    checkpointer: std::thread::JoinHandle<()>,
    maintenance: JoinHandle<()>,
    write_behind: JoinHandle<()>,
    stop_maintenance: CancellationToken,
}

impl Store {
    /// Opens the store in `config.data_dir` (created if missing): takes the directory lock,
    /// opens and migrates the database, starts the writer thread and the maintenance task.
    /// Must be called inside a Tokio runtime.
    pub fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        files::create_data_dir(&config.data_dir).map_err(|e| {
            let dir = config.data_dir.display();
            match std::fs::metadata(&config.data_dir) {
                Ok(meta) if !meta.is_dir() => Error::Setup(format!(
                    "data directory {dir} exists and is not a directory"
                )),
                _ => Error::Setup(format!("cannot create data directory {dir}: {e}")),
            }
        })?;
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let db_path = config.data_dir.join(DB_FILE);
        let (conn, found_version) = schema::open_writer(&db_path, config.synchronous)?;
        // After the schema's own settings, which this one overrides.
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -{}",
            (config.writer_cache_bytes >> 10).max(1)
        ))
        .map_err(Error::storage("sizing the writer's page cache"))?;

        let readers = Readers::start(
            &db_path,
            config.reader_connections.max(1) as usize,
            "reader",
            schema::prepare_reader,
        )?;
        // Scans (Stats, Scan pages) get a thread of their own, so that however many of them clients
        // send, point reads never wait behind one.
        let scanners = Readers::start(&db_path, 1, "scanner", schema::prepare_reader)?;

        let memory = Arc::new(EntryCache::new(config.max_memory_bytes as usize));
        let session_memory = Arc::new(session::SessionCache::new(
            config.session_memory_bytes as usize,
        ));
        let stats = Arc::new(StatsRegistry::default());
        let revocations = Arc::new(session::revoke::Revocations::default());
        let monitor = observe::Monitor::new(db_path.clone());
        let (checkpoint_hint, checkpointer) = checkpoint::spawn(&db_path)?;
        let queue_signals = Arc::new(queue::Signals::default());
        let writer = Writer::new(
            conn,
            &db_path,
            WriterParts {
                memory: memory.clone(),
                sessions: session_memory.clone(),
                revocations: revocations.clone(),
                stats: stats.clone(),
                clock: clock.clone(),
                checkpoint_hint,
                queue_signals: queue_signals.clone(),
            },
            WriterSettings {
                max_disk_bytes: config.max_disk_bytes,
                sweep_batch: config.sweep_batch.max(1),
                metrics: monitor.writer.clone(),
                queue: config.queue,
            },
        )?;
        let (tx, rx) = WriteQueue::new(WRITE_QUEUE);
        let writer_thread = std::thread::Builder::new()
            .name("larder-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Internal(format!("cannot start the writer thread: {e}")))?;

        let stop_maintenance = CancellationToken::new();
        let maintenance = tokio::spawn(upkeep::run(
            tx.clone(),
            config.sweep_interval,
            stop_maintenance.clone(),
        ));
        let limits = Arc::new(ratelimit::LimitTable::new(
            config.limit_memory_bytes as usize,
            ratelimit::KeyCap {
                max_keys: usize::try_from(config.limit_max_keys).unwrap_or(usize::MAX),
                when_full: config.limit_when_full,
                retry_after_ms: config
                    .write_behind
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            },
        ));
        let write_behind = Arc::new(ratelimit::WriteBehind::new(
            limits.clone(),
            tx.clone(),
            clock.clone(),
        ));
        // Flushing every half window keeps each change's time in memory under the window.
        let write_behind_task = tokio::spawn(write_behind.clone().run(
            (config.write_behind / 2).max(Duration::from_millis(1)),
            stop_maintenance.clone(),
        ));
        if found_version == 0 {
            tracing::info!(
                path = %db_path.display(),
                schema_version = schema::SCHEMA_VERSION,
                "created a new store"
            );
        } else {
            tracing::info!(path = %db_path.display(), "store open");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                clock,
                memory,
                sessions: session_memory,
                revocations,
                limits,
                write_behind,
                stats,
                readers,
                scanners,
                writer: tx,
                queue_signals,
                background: Mutex::new(Some(Background {
                    writer: writer_thread,
                    checkpointer,
                    maintenance,
                    write_behind: write_behind_task,
                    stop_maintenance,
                })),
                monitor,
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// Stops the background tasks, writes the sessions' last uses and the rate-limit state that
    /// only memory knows, lets the writer commit everything queued, checkpoints the WAL and
    /// joins the writer thread. Writes after this answer `UNAVAILABLE`. Idempotent.
    pub async fn close(&self) -> Result<()> {
        let background = self
            .inner
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(bg) = background else {
            return Ok(());
        };
        bg.stop_maintenance.cancel();
        for (name, task) in [
            ("maintenance", bg.maintenance),
            ("write-behind", bg.write_behind),
        ] {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "{name} task ended abnormally");
            }
        }
        match self.inner.write_behind.flush().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "wrote rate-limit state"),
            Err(e) => tracing::warn!(error = %e, "writing rate-limit state failed"),
        }
        match self.persist_session_uses().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sessions = n, "wrote the last uses of sessions"),
            Err(e) => tracing::warn!(error = %e, "writing the last uses of sessions failed"),
        }
        let result = self.inner.writer.shutdown().await;
        // The writer drops the checkpointer's hint channel as it ends, which ends that thread.
        tokio::task::spawn_blocking(move || (bg.writer.join(), bg.checkpointer.join()))
            .await
            .map_err(|e| Error::Internal(format!("joining the storage threads: {e}")))
            .and_then(|joined| match joined {
                (Ok(()), Ok(())) => Ok(()),
                _ => Err(Error::Internal("a storage thread panicked".into())),
            })?;
        // The writer and the checkpointer are gone: nothing of this store writes any more.
        drop(
            self.inner
                .lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        result
    }

    fn counters(&self, namespace: &str) -> Arc<stats::Counters> {
        self.inner.stats.counters(namespace)
    }

    /// Runs `f` on a reader thread's read-only connection (see [`readers`]); answers once
    /// memory shows every commit `f` could have seen (see [`memory::MemoryCache::catch_up`]).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        let read = self.inner.readers.run(f).await?;
        self.inner.memory.catch_up().await;
        Ok(read)
    }

    /// Like [`Store::read`], on the thread kept for scans.
    async fn scan<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        let read = self.inner.scanners.run(f).await?;
        self.inner.memory.catch_up().await;
        Ok(read)
    }

    /// Queues the command `make` builds around its reply and waits for its answer, given once
    /// its transaction committed.
    pub(crate) async fn write<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
        self.inner.writer.submit(make).await
    }

    /// Answers once a reader thread has read the database and the writer has taken a ping
    /// from its queue (so it has got through every batch queued before): a liveness check for
    /// the systemd watchdog that costs one tiny query and no write. A writer stuck in a batch
    /// never answers; one that fails its batches (a full disk) still does, since reads go on.
    pub async fn ping(&self) -> Result<()> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                .map_err(Error::storage("checking the database answers"))
        })
        .await?;
        self.inner.writer.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::clock::SystemClock;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The INFO lines (and above) logged on this thread while `config`'s store opens.
    async fn opening_logs(config: StoreConfig) -> Vec<String> {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let store = {
            let _logging = tracing::subscriber::set_default(subscriber);
            Store::open(config, Arc::new(SystemClock)).unwrap()
        };
        store.close().await.unwrap();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn a_new_store_logs_its_creation_in_one_line_and_a_reopened_one_its_opening() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("data"));
        let created = opening_logs(config.clone()).await;
        assert_eq!(created.len(), 1, "{created:#?}");
        assert!(created[0].contains("created a new store"), "{created:#?}");
        let reopened = opening_logs(config).await;
        assert_eq!(reopened.len(), 1, "{reopened:#?}");
        assert!(reopened[0].contains("store open"), "{reopened:#?}");
    }
}
