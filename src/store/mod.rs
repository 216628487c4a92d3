//! The storage engine behind every service: one cheap-to-clone [`Store`] handle.
//!
//! # Layout
//! - [`schema`]: the SQLite file, its PRAGMAs and migrations.
//! - [`writer`]: the single writer thread with group commit; every mutation goes through it.
//! - [`memory`]: the byte-bounded, sharded LRU in front of SQLite.
//! - [`sessions`]: login sessions: records, sliding expiry, and the session methods.
//! - [`ratelimits`]: rate-limit state in memory, written behind to SQLite, loaded lazily.
//! - [`stats`]: per-namespace counters.
//! - [`checkpoint`]: background WAL checkpoints, off the writer's path.
//! - [`observe`]: what monitoring reads: writer histograms, rate-limit checks, cheap totals.
//! - [`lock`]: one daemon per data directory.
//! - [`files`]: writes refused once the database file or its WAL is deleted or replaced.
//! - [`backup`]: `larder backup`, a consistent copy of a live store into a new file.
//!
//! Reads try memory, then a pool of read-only connections on blocking threads (WAL readers see
//! the last commit and never take a lock the writer holds). A read answered from SQLite waits
//! only for a commit in progress to reach memory, so that memory never shows less than a read
//! already answered (see [`EntryCache::catch_up`]). A read of several keys answers from one
//! commit: from memory when no commit was being applied to it meanwhile, else from one SQLite
//! read transaction. Writes are queued to the writer and
//! acknowledged after their transaction committed. A maintenance task asks the writer, once per
//! interval, to sweep expired rows in bounded batches and record read times for eviction.
//! SQL stays behind this module, so another backend can sit behind the same API later.

pub mod backup;
pub mod checkpoint;
pub mod files;
pub mod lock;
pub mod memory;
pub mod observe;
pub mod ratelimits;
pub mod schema;
pub mod sessions;
pub mod stats;
pub mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, remaining_ms};
use crate::error::{Error, Result};
use lock::DataDirLock;
use memory::{CacheKey, CachedEntry, EntryCache, FillTicket, Lookup};
use schema::Synchronous;
use stats::StatsRegistry;
use writer::{Command, WriteOp, WriteOutcome, Writer, WriterSettings};
pub use writer::{NewEntry, SetCondition};

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

/// Tries of a multi-key read to find memory between two commits' publications before it
/// reads every key from SQLite instead.
const MEMORY_PASSES: usize = 4;

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding the database, its WAL and the lock file.
    pub data_dir: PathBuf,
    /// Durability of each commit.
    pub synchronous: Synchronous,
    /// Byte budget of the memory LRU.
    pub max_memory_bytes: u64,
    /// Bound on keys + values stored in the cache table.
    pub max_disk_bytes: u64,
    /// Byte budget of the memory LRU of sessions (sessions themselves are never evicted from
    /// disk).
    pub session_memory_bytes: u64,
    /// Byte budget of rate-limit state in memory (idle keys past it are evicted; disk keeps
    /// them).
    pub limit_memory_bytes: u64,
    /// Longest time a rate-limit change stays in memory only: what a crash can lose.
    pub write_behind: Duration,
    /// Read-only connections in the reader pool.
    pub reader_connections: u32,
    /// How often expired rows are swept and read times recorded.
    pub sweep_interval: Duration,
    /// Expired rows deleted per transaction by the sweeper.
    pub sweep_batch: usize,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            synchronous: Synchronous::Normal,
            max_memory_bytes: 256 << 20,
            max_disk_bytes: 4 << 30,
            session_memory_bytes: 64 << 20,
            limit_memory_bytes: 32 << 20,
            write_behind: Duration::from_secs(1),
            reader_connections: 4,
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 1000,
        }
    }
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
    /// Bytes of keys and values of those entries.
    pub bytes: u64,
    /// Counters since start.
    pub counters: stats::CounterValues,
}

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
    sessions: Arc<sessions::SessionCache>,
    /// Rate-limit state; the truth for every key it holds.
    limits: Arc<ratelimits::LimitTable>,
    /// Writes rate-limit state behind.
    write_behind: Arc<ratelimits::WriteBehind>,
    /// Counters for Stats.
    stats: Arc<StatsRegistry>,
    /// Read-only connections, used on blocking threads only.
    readers: r2d2::Pool<SqliteConnectionManager>,
    /// One read-only connection for table scans, apart from the point-read pool.
    scanners: r2d2::Pool<SqliteConnectionManager>,
    /// Queue to the writer thread.
    writer: mpsc::Sender<Command>,
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
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
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

        let pool = |size: u32| {
            r2d2::Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(Duration::from_secs(5))
                .build(
                    SqliteConnectionManager::file(&db_path)
                        .with_flags(
                            OpenFlags::SQLITE_OPEN_READ_ONLY
                                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                                | OpenFlags::SQLITE_OPEN_URI,
                        )
                        .with_init(schema::prepare_reader),
                )
                .map_err(|e| Error::Internal(format!("cannot open reader connections: {e}")))
        };
        let readers = pool(config.reader_connections.max(1))?;
        // Scans (Stats) get a connection of their own, so that however many of them clients
        // send, point reads never wait behind one.
        let scanners = pool(1)?;

        let memory = Arc::new(EntryCache::new(config.max_memory_bytes as usize));
        let session_memory = Arc::new(sessions::SessionCache::new(
            config.session_memory_bytes as usize,
        ));
        let stats = Arc::new(StatsRegistry::default());
        let monitor = observe::Monitor::new(db_path.clone());
        let (checkpoint_hint, checkpointer) = checkpoint::spawn(&db_path)?;
        let writer = Writer::new(
            conn,
            &db_path,
            memory.clone(),
            session_memory.clone(),
            stats.clone(),
            clock.clone(),
            WriterSettings {
                max_disk_bytes: config.max_disk_bytes,
                sweep_batch: config.sweep_batch.max(1),
                metrics: monitor.writer.clone(),
            },
            checkpoint_hint,
        )?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer_thread = std::thread::Builder::new()
            .name("larder-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Internal(format!("cannot start the writer thread: {e}")))?;

        let stop_maintenance = CancellationToken::new();
        let maintenance = tokio::spawn(maintain(
            tx.clone(),
            config.sweep_interval,
            stop_maintenance.clone(),
        ));
        let limits = Arc::new(ratelimits::LimitTable::new(
            config.limit_memory_bytes as usize,
        ));
        let write_behind = Arc::new(ratelimits::WriteBehind::new(
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
                limits,
                write_behind,
                stats,
                readers,
                scanners,
                writer: tx,
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
        let (reply, done) = oneshot::channel();
        let result = match self.inner.writer.send(Command::Shutdown { reply }).await {
            Ok(()) => done
                .await
                .unwrap_or_else(|_| Err(Error::Internal("writer thread died".into()))),
            Err(_) => Err(Error::Internal("writer thread already stopped".into())),
        };
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

    /// Runs `f` with a pooled read-only connection on a blocking thread; answers once memory
    /// shows every commit `f` could have seen (see [`EntryCache::catch_up`]).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        let read = run_on(self.inner.readers.clone(), f).await?;
        self.inner.memory.catch_up().await;
        Ok(read)
    }

    /// Like [`Store::read`], on the connection kept for scans.
    async fn scan<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        let read = run_on(self.inner.scanners.clone(), f).await?;
        self.inner.memory.catch_up().await;
        Ok(read)
    }

    pub(crate) async fn write(&self, op: WriteOp) -> Result<WriteOutcome> {
        submit(&self.inner.writer, op).await
    }

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
                // One read transaction, so that every key is read from the same commit. It
                // rolls back when dropped, so that a failed read never returns the pooled
                // connection still holding an old snapshot.
                let snapshot = conn
                    .unchecked_transaction()
                    .map_err(Error::storage("starting a read"))?;
                let rows = read_rows(&snapshot, &cache_keys, max_bytes, too_large)?;
                snapshot.commit().map_err(Error::storage("ending a read"))?;
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
        match self
            .write(WriteOp::Set {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                value,
                ttl_ms,
                condition,
            })
            .await?
        {
            WriteOutcome::Set { stored, version } => Ok((stored, version)),
            other => Err(unexpected(other)),
        }
    }

    /// Writes many keys in one transaction; returns their new versions in order.
    pub async fn set_many(&self, namespace: &str, entries: Vec<NewEntry>) -> Result<Vec<u64>> {
        match self
            .write(WriteOp::SetMany {
                namespace: namespace.to_owned(),
                entries,
            })
            .await?
        {
            WriteOutcome::Versions(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes keys; returns how many live ones existed.
    pub async fn delete(&self, namespace: &str, keys: Vec<String>) -> Result<u64> {
        self.count(WriteOp::Delete {
            namespace: namespace.to_owned(),
            keys,
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
            .count(WriteOp::DeleteIfVersion {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                version,
            })
            .await?;
        Ok(deleted > 0)
    }

    /// Deletes every key starting with `prefix`.
    pub async fn delete_prefix(&self, namespace: &str, prefix: &str) -> Result<u64> {
        self.count(WriteOp::DeletePrefix {
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
        })
        .await
    }

    /// Deletes every key of a namespace.
    pub async fn clear(&self, namespace: &str) -> Result<u64> {
        self.count(WriteOp::Clear {
            namespace: namespace.to_owned(),
        })
        .await
    }

    async fn count(&self, op: WriteOp) -> Result<u64> {
        match self.write(op).await? {
            WriteOutcome::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Gives a live key a new TTL; returns whether it was found.
    pub async fn touch(&self, namespace: &str, key: &str, ttl_ms: u64) -> Result<bool> {
        match self
            .write(WriteOp::Touch {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                ttl_ms,
            })
            .await?
        {
            WriteOutcome::Found(f) => Ok(f),
            other => Err(unexpected(other)),
        }
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
        match self
            .write(WriteOp::Increment {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                delta,
                ttl_ms,
                if_present,
            })
            .await?
        {
            WriteOutcome::Incremented {
                value,
                version,
                existed,
            } => Ok(Counter {
                value,
                version,
                existed,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs one upkeep pass now (what the maintenance task does every interval); returns how
    /// many expired rows were deleted.
    pub async fn maintain(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let (expired, more) = maintenance_pass(&self.inner.writer).await?;
            total += expired;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Answers once a pooled reader has read the database and the writer has taken a ping
    /// from its queue (so it has got through every batch queued before): a liveness check for
    /// the systemd watchdog that costs one tiny query and no write. A writer stuck in a batch
    /// never answers; one that fails its batches (a full disk) still does, since reads go on.
    pub async fn ping(&self) -> Result<()> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                .map_err(Error::storage("checking the database answers"))
        })
        .await?;
        let (reply, answer) = oneshot::channel();
        let gone = || Error::Unavailable("the writer has stopped".into());
        self.inner
            .writer
            .send(Command::Ping { reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// Entry and byte counts (live entries only) and counters, for one namespace or all.
    pub async fn stats(&self, namespace: Option<&str>) -> Result<CacheStats> {
        let now = self.inner.clock.now_ms() as i64;
        let ns = namespace.map(str::to_owned);
        let (entries, bytes) = self
            .scan(move |conn| {
                let counts = match &ns {
                    Some(ns) => conn.query_row(
                        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache_entries \
                         WHERE namespace = ?1 AND (expires_at = 0 OR expires_at > ?2)",
                        params![ns, now],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                    ),
                    None => conn.query_row(
                        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache_entries \
                         WHERE expires_at = 0 OR expires_at > ?1",
                        params![now],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                    ),
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

/// Runs `f` on a connection of `pool`, on a blocking thread (never on the async runtime).
async fn run_on<T, F>(pool: r2d2::Pool<SqliteConnectionManager>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let conn = pool
            .get()
            .map_err(|e| Error::Unavailable(format!("no database connection free: {e}")))?;
        f(&conn)
    })
    .await
    .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
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
        .prepare_cached(
            "SELECT value, version, expires_at FROM cache_entries \
             WHERE namespace = ?1 AND key = ?2",
        )
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

pub(crate) fn unexpected(outcome: WriteOutcome) -> Error {
    Error::Internal(format!("writer answered with {outcome:?}"))
}

/// Asks the writer for an upkeep pass every `interval` until cancelled; repeats at once while
/// full batches of expired rows are found, so a backlog drains in bounded transactions.
async fn maintain(writer: mpsc::Sender<Command>, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        while !stop.is_cancelled() {
            match maintenance_pass(&writer).await {
                Ok((expired, more)) => {
                    if expired > 0 {
                        tracing::debug!(expired, "swept expired entries");
                    }
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "maintenance pass failed");
                    break;
                }
            }
        }
    }
}

/// One upkeep pass by the writer: how many expired rows it deleted, and whether more wait.
async fn maintenance_pass(writer: &mpsc::Sender<Command>) -> Result<(u64, bool)> {
    match submit(writer, WriteOp::Maintain).await? {
        WriteOutcome::Maintained { expired, more } => Ok((expired, more)),
        other => Err(unexpected(other)),
    }
}

/// Queues a write without waiting for room or for its commit; returns false when the queue
/// is full or the writer has stopped (the write is then not made).
pub(crate) fn submit_nowait(writer: &mpsc::Sender<Command>, op: WriteOp) -> bool {
    let (reply, _) = oneshot::channel();
    writer.try_send(Command::Write { op, reply }).is_ok()
}

/// Queues a write and waits until the writer answers (after its transaction committed).
pub(crate) async fn submit(writer: &mpsc::Sender<Command>, op: WriteOp) -> Result<WriteOutcome> {
    let (reply, answer) = oneshot::channel();
    writer
        .send(Command::Write { op, reply })
        .await
        .map_err(|_| Error::Unavailable("larder is shutting down".into()))?;
    answer
        .await
        .map_err(|_| Error::Unavailable("larder is shutting down".into()))?
}
