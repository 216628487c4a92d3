//! Background WAL checkpoints on a connection of their own, so the writer thread never pays
//! for copying the WAL into the database file (and its fsyncs) on the path of a write.
//!
//! The writer hints after each commit; the checkpointer runs a PASSIVE checkpoint (which never
//! blocks the writer or readers) at most once per 200 ms, and once per
//! 5 s without hints. It stops when the writer drops its end of the channel.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::store::schema::BUSY_TIMEOUT;

/// Shortest time between two checkpoints under load.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Longest time between two checkpoints.
const IDLE_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the checkpointer thread on `db_path`; returns the hint sender for the writer and the
/// thread's handle.
pub(crate) fn spawn(db_path: &Path) -> Result<(SyncSender<()>, JoinHandle<()>)> {
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(Error::storage("opening the checkpoint connection"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(Error::storage("setting busy_timeout"))?;
    let (hint, hints) = sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("larder-checkpoint".into())
        .spawn(move || run(conn, hints))
        .map_err(|e| Error::Internal(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((hint, thread))
}

fn run(conn: Connection, hints: Receiver<()>) {
    loop {
        match hints.recv_timeout(IDLE_INTERVAL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let started = Instant::now();
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match result {
            // Its length (the fsyncs, mostly) is the figure to look at when write latency
            // has a tail: a PASSIVE checkpoint holds no lock the writer or readers wait for,
            // but a long one leaves more of the WAL for the writer's own backstop.
            Ok((_, wal_frames, copied)) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::debug!(wal_frames, copied, micros, "checkpoint");
            }
            Err(e) => tracing::warn!(error = %e, "background checkpoint failed"),
        }
        std::thread::sleep(MIN_INTERVAL);
    }
}
