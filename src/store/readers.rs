//! The reader threads: reads that memory cannot answer run here, on a few threads of their own,
//! each holding one read-only connection, all fed by one queue.
//!
//! Why not `spawn_blocking` and a connection pool: a miss then paid for a blocking task, a pool
//! checkout (and its liveness query) and a thread wake-up each, which together cost more than
//! the SQLite point read itself when the file sits in the OS page cache. Here a job is a boxed
//! closure pushed on a queue; a reader that wakes takes every job queued (up to
//! [`MAX_BATCH`]) and runs them in one read transaction, so that under concurrent misses one
//! wake-up and one WAL read lock serve many reads.
//!
//! What a batch guarantees: its read transaction starts after every job in it was queued, so
//! each job sees at least every commit acknowledged before its caller queued it (a deleted key
//! never comes back); and the whole batch reads one commit, so a job that reads several rows
//! reads them from one snapshot. A job that finds no transaction open (it runs alone) opens
//! its own when it needs one snapshot for several rows (see [`in_one_snapshot`]). A connection
//! never keeps a read transaction open between batches: that would pin the WAL and stop
//! checkpoints.
//!
//! Wake-ups: a job wakes a parked reader only when no reader is running, or when the queue is
//! deeper than [`WAKE_DEPTH`] jobs per running reader (so that reads waiting on the disk do
//! not queue behind one thread); otherwise the running readers take it at their next batch.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// Most jobs one reader takes into one read transaction.
const MAX_BATCH: usize = 32;

/// Queued jobs per running reader past which a parked reader is woken as well.
const WAKE_DEPTH: usize = 4;

/// One read, boxed; it answers its caller itself.
type Job = Box<dyn FnOnce(&Connection) + Send>;

/// The reader threads and their queue. Dropping it lets the threads end once the queue is
/// empty.
#[derive(Debug)]
pub(crate) struct Readers {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The queue and the readers' states.
    state: Mutex<State>,
    /// Signalled to wake a parked reader (one per job that needs one), or all at the end.
    work: Condvar,
}

#[derive(Default)]
struct State {
    /// Jobs not taken by a reader yet, oldest first.
    jobs: VecDeque<Job>,
    /// Reader threads started.
    threads: usize,
    /// Readers parked on `work` (woken ones included until they run).
    parked: usize,
    /// Wake-ups signalled that no parked reader has taken yet.
    waking: usize,
    /// No more jobs come: readers end once the queue is empty.
    closed: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("jobs", &self.jobs.len())
            .field("threads", &self.threads)
            .field("parked", &self.parked)
            .field("waking", &self.waking)
            .field("closed", &self.closed)
            .finish()
    }
}

impl State {
    /// Readers running or about to run jobs.
    fn running(&self) -> usize {
        self.threads - self.parked + self.waking
    }
}

impl Readers {
    /// Starts `threads` readers (at least one), named `larder-<name>-<i>`, each with its own
    /// read-only connection to the database at `path`, set up by `prepare`.
    pub(crate) fn start(
        path: &Path,
        threads: usize,
        name: &str,
        prepare: fn(&mut Connection) -> rusqlite::Result<()>,
    ) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let readers = Self {
            shared: shared.clone(),
        };
        for i in 0..threads.max(1) {
            let mut conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .and_then(|mut conn| prepare(&mut conn).map(|()| conn))
            .map_err(|e| Error::Internal(format!("cannot open a reader connection: {e}")))?;
            conn.set_prepared_statement_cache_capacity(32);

            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("larder-{name}-{i}"))
                .spawn(move || run(&shared, &mut conn))
                .map_err(|e| Error::Internal(format!("cannot start a reader thread: {e}")))?;
            readers.lock().threads += 1;
        }
        Ok(readers)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A job runs outside the lock, so a panic can only poison it between two plain field
        // updates: the state is still whole.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a reader's connection and returns its result. `f` may share a read
    /// transaction with other jobs; it must not end it (see [`in_one_snapshot`]).
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone (a cancelled request, a client that went away): then
            // nobody wants the read, so it is not made. Should the caller go while it runs,
            // the answer is dropped.
            if !tx.is_closed() {
                let _ = tx.send(f(conn));
            }
        });
        {
            let mut state = self.lock();
            state.jobs.push_back(job);
            let running = state.running();
            if state.parked > state.waking
                && (running == 0 || state.jobs.len() > running * WAKE_DEPTH)
            {
                state.waking += 1;
                self.shared.work.notify_one();
            }
        }
        rx.await
            .map_err(|_| Error::Internal("a read failed on its reader thread".into()))?
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.shared.work.notify_all();
    }
}

/// A reader thread: takes batches of jobs until the queue is closed and empty.
fn run(shared: &Shared, conn: &mut Connection) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while state.jobs.is_empty() {
                if state.closed {
                    return;
                }
                state.parked += 1;
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
                state.parked -= 1;
                state.waking = state.waking.saturating_sub(1);
            }
            let take = state.jobs.len().min(MAX_BATCH);
            batch.extend(state.jobs.drain(..take));
        }
        run_batch(conn, &mut batch);
    }
}

/// Runs the jobs of `batch` (emptying it), in one read transaction when there are several.
fn run_batch(conn: &Connection, batch: &mut Vec<Job>) {
    // A failed BEGIN leaves each job to read on its own: slower, still correct.
    let shared = batch.len() > 1 && conn.execute_batch("BEGIN").is_ok();
    for job in batch.drain(..) {
        // A panicking job drops its answer channel, and its caller gets an error; the thread
        // and its connection go on serving the others.
        if catch_unwind(AssertUnwindSafe(|| job(conn))).is_err() {
            tracing::error!("a read panicked on its reader thread");
        }
    }
    if shared || !conn.is_autocommit() {
        end_read(conn);
    }
}

/// Ends the read transaction open on `conn`, so that it never holds an old snapshot (and the
/// WAL with it) while it waits for work.
fn end_read(conn: &Connection) {
    if conn.execute_batch("COMMIT").is_err()
        && !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "a reader could not end its read transaction");
    }
}

/// Runs `f` so that every row it reads comes from one commit: inside the batch's read
/// transaction when there is one, else inside a transaction of its own.
pub(crate) fn in_one_snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    if !conn.is_autocommit() {
        return f(conn);
    }
    // Rolls back when dropped, so that a failed read never leaves a snapshot open.
    let snapshot = conn
        .unchecked_transaction()
        .map_err(Error::storage("starting a read"))?;
    let read = f(&snapshot)?;
    snapshot.commit().map_err(Error::storage("ending a read"))?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_rows(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER); \
             INSERT INTO t VALUES (1, 10), (2, 20);",
        )
        .unwrap();
        path
    }

    fn no_setup(_: &mut Connection) -> rusqlite::Result<()> {
        Ok(())
    }

    fn value(conn: &Connection, k: i64) -> Result<i64> {
        conn.query_row("SELECT v FROM t WHERE k = ?1", [k], |r| r.get(0))
            .map_err(Error::storage("reading"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_reads_are_all_answered_and_no_snapshot_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_with_rows(dir.path());
        let readers = Arc::new(Readers::start(&path, 2, "test", no_setup).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let readers = readers.clone();
                tokio::spawn(async move { readers.run(move |c| value(c, 1 + i % 2)).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), 10 * (1 + i as i64 % 2));
        }
        // A write after the reads is seen by the next read: no reader kept an old snapshot.
        let writer = Connection::open(&path).unwrap();
        writer
            .execute("UPDATE t SET v = 11 WHERE k = 1", [])
            .unwrap();
        for _ in 0..4 {
            assert_eq!(readers.run(|c| value(c, 1)).await.unwrap(), 11);
        }
        // And a checkpoint can take the whole WAL back: no reader holds any of it.
        let (busy, _, _): (i64, i64, i64) = writer
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0, "a reader held a snapshot");
    }

    #[tokio::test]
    async fn a_failing_or_panicking_read_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_with_rows(dir.path());
        let readers = Readers::start(&path, 1, "test", no_setup).unwrap();
        let failed = readers.run(|c| value(c, 3)).await;
        assert!(failed.is_err(), "no row 3");
        let panicked = readers
            .run(|_| -> Result<i64> { panic!("a read that panics") })
            .await;
        assert!(panicked.is_err());
        assert_eq!(readers.run(|c| value(c, 2)).await.unwrap(), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_caller_has_gone_is_not_made() {
        use futures_util::FutureExt;
        use std::sync::atomic::{AtomicBool, Ordering};

        let dir = tempfile::tempdir().unwrap();
        let path = store_with_rows(dir.path());
        let readers = Arc::new(Readers::start(&path, 1, "test", no_setup).unwrap());
        // Hold the only reader so that the next read waits in the queue.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let holding = {
            let readers = readers.clone();
            tokio::spawn(async move {
                readers
                    .run(move |_| {
                        let _ = gate.recv();
                        Ok(())
                    })
                    .await
            })
        };
        let made = Arc::new(AtomicBool::new(false));
        let flag = made.clone();
        // Queued by its first poll, then dropped: its caller is gone.
        let gone = readers
            .run(move |_| {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            })
            .now_or_never();
        assert!(gone.is_none());
        open.send(()).unwrap();
        holding.await.unwrap().unwrap();
        // Jobs are taken in order: once this one is answered, the dropped one was passed.
        assert_eq!(readers.run(|c| value(c, 1)).await.unwrap(), 10);
        assert!(!made.load(Ordering::SeqCst), "the abandoned read was made");
    }

    #[tokio::test]
    async fn a_read_of_several_rows_alone_gets_a_snapshot_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_with_rows(dir.path());
        let readers = Readers::start(&path, 1, "test", no_setup).unwrap();
        let in_transaction = readers
            .run(|c| in_one_snapshot(c, |c| Ok(!c.is_autocommit())))
            .await
            .unwrap();
        assert!(in_transaction);
        assert!(readers.run(|c| Ok(c.is_autocommit())).await.unwrap());
    }
}
