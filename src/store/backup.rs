//! `larder backup`: a consistent copy of a store's database into a new, standalone file, made
//! with SQLite's online backup API while the daemon keeps serving (or while it is stopped).
//!
//! The copy never takes the daemon's lock file and never writes to the store: it reads
//! through a read-only connection of its own, which a WAL database lets run beside the daemon's
//! writer without blocking it.
//!
//! # One snapshot, in steps
//! The backup API copies a bounded number of pages per step, and the copy pauses between steps
//! so that its reads and writes do not crowd out the daemon's. Left to itself, a step opens and
//! closes a read transaction of its own, and when another connection commits between two steps
//! SQLite restarts the copy from the first page: against a daemon that commits every few
//! milliseconds, a copy of more than one step would start over for ever (which is what
//! rusqlite's `run_to_completion` does). So the copy opens one read transaction on the source
//! first and holds it through every step: each step then reads the same WAL snapshot, nothing
//! restarts, and the number of steps is bounded by the size of the file. The snapshot is the
//! committed state when the copy began: every write acknowledged before then is in it, and a
//! later one either whole or not at all. While it is held, checkpoints cannot move the WAL past
//! it, so the WAL grows for the length of the copy and shrinks at the next checkpoint after.
//!
//! # Never a half-written file at DEST
//! The copy is written to a temporary file next to DEST, reopened from disk, switched out of
//! WAL mode (so it is one file, with no `-wal` beside it), checked with
//! `PRAGMA integrity_check` and for the schema version it was copied at, synced, and only then
//! renamed onto DEST. Any failure removes the temporary file and leaves DEST as it was.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, TransactionState};

use crate::error::{Error, Result};
use crate::store::DB_FILE;
use crate::store::lock::LOCK_FILE;
use crate::store::schema::{self, BUSY_TIMEOUT};

/// Pages copied per step: 4 MiB at SQLite's default page size.
pub const PAGES_PER_STEP: i32 = 1024;

/// The pause between two steps, in which the daemon has the disk to itself.
pub const STEP_PAUSE: Duration = Duration::from_millis(10);

/// Restarts tolerated before giving up. The held snapshot means SQLite has no reason to
/// restart; this bound keeps the copy finite even if it did.
const MAX_RESTARTS: u32 = 3;

/// What a finished backup wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The database that was copied.
    pub source: PathBuf,
    /// The file written.
    pub dest: PathBuf,
    /// Size of the file written.
    pub bytes: u64,
    /// Database pages copied.
    pub pages: u64,
    /// The schema version of the copy (the source's at the snapshot).
    pub schema_version: i64,
    /// How long the whole backup took, checks included.
    pub elapsed: Duration,
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backed up {} to {}: {}, {} pages, schema version {}, in {:.2}s",
            self.source.display(),
            self.dest.display(),
            human_size(self.bytes),
            self.pages,
            self.schema_version,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Copies the store in `data_dir` to `dest`, which must not exist unless `force` is given.
/// Blocking; it takes as long as reading the database twice (the copy and its check).
pub fn backup(data_dir: &Path, dest: &Path, force: bool) -> Result<BackupReport> {
    let started = Instant::now();
    let source = source_path(data_dir)?;
    let dest_dir = check_dest(dest, force, data_dir)?;

    let src = Connection::open_with_flags(
        &source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| schema::file_error(&source, "opening the database", e))?;
    src.busy_timeout(BUSY_TIMEOUT)
        .map_err(Error::storage("setting busy_timeout"))?;
    // The snapshot every step reads (see the module doc). `identify` reads the schema, which
    // is what starts the read transaction.
    src.execute_batch("BEGIN DEFERRED")
        .map_err(Error::storage("starting the read transaction"))?;
    let version = schema::identify(&src, &source)?;
    if version == 0 {
        return Err(Error::Setup(format!(
            "{} is empty: there is no larder data to back up",
            source.display()
        )));
    }
    let state = src
        .transaction_state(Some(rusqlite::MAIN_DB))
        .map_err(Error::storage("reading the transaction state"))?;
    if state != TransactionState::Read {
        return Err(Error::Internal(format!(
            "the backup's read transaction is not open (state {state:?})"
        )));
    }

    let tmp = TempCopy::create(&dest_dir, dest)?;
    let pages = copy(&src, tmp.path(), &source)?;
    // Ends the snapshot; it only read, so there is nothing to commit and nothing can fail that
    // matters to the copy.
    let _ = src.execute_batch("COMMIT");
    drop(src);

    finish_copy(tmp.path(), version)?;
    sync_file(tmp.path())?;
    if !force && dest.exists() {
        return Err(exists(dest));
    }
    std::fs::rename(tmp.path(), dest).map_err(|e| {
        Error::Setup(format!(
            "cannot move the finished copy to {}: {e}",
            dest.display()
        ))
    })?;
    tmp.keep();
    // The rename is durable once the directory is synced; a failure here leaves a complete
    // copy that a crash could still unname, which is worth saying but not worth failing for.
    if let Err(e) = File::open(&dest_dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dest_dir.display(), error = %e, "cannot sync the directory");
    }
    let bytes = std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", dest.display())))?;
    Ok(BackupReport {
        source,
        dest: dest.to_owned(),
        bytes,
        pages,
        schema_version: version,
        elapsed: started.elapsed(),
    })
}

/// `<data_dir>/larder.db`, after checking that both exist.
fn source_path(data_dir: &Path) -> Result<PathBuf> {
    let dir = data_dir.display();
    match std::fs::metadata(data_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::Setup(format!(
                "data directory {dir} is not a directory"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Setup(format!(
                "data directory {dir} does not exist; point to the daemon's with --data-dir, \
                 LARDER_DATA_DIR or data_dir in --config"
            )));
        }
        Err(e) => {
            return Err(Error::Setup(format!(
                "cannot read data directory {dir}: {e}"
            )));
        }
    }
    let source = data_dir.join(DB_FILE);
    match std::fs::metadata(&source) {
        Ok(meta) if meta.is_file() => Ok(source),
        Ok(_) => Err(Error::Setup(format!("{} is not a file", source.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Setup(format!(
            "no larder database in {dir}: {} does not exist (is this the daemon's data \
             directory?)",
            source.display()
        ))),
        Err(e) => Err(Error::Setup(format!(
            "cannot read {}: {e}",
            source.display()
        ))),
    }
}

/// Checks that `dest` can be created (or, with `force`, replaced) and returns its directory.
fn check_dest(dest: &Path, force: bool, data_dir: &Path) -> Result<PathBuf> {
    if dest.is_dir() || dest.as_os_str().to_string_lossy().ends_with('/') {
        return Err(Error::Setup(format!(
            "{} is a directory; give the path of the file to write, e.g. {}",
            dest.display(),
            dest.join("larder-backup.db").display()
        )));
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::Setup(format!(
                "cannot write {}: {} is not a directory",
                dest.display(),
                dir.display()
            )));
        }
        Err(e) => {
            return Err(Error::Setup(format!(
                "cannot write {}: its directory {} {}",
                dest.display(),
                dir.display(),
                if e.kind() == std::io::ErrorKind::NotFound {
                    "does not exist; create it first".to_owned()
                } else {
                    format!("cannot be read: {e}")
                }
            )));
        }
    }
    if dest.exists() {
        if !force {
            return Err(exists(dest));
        }
        // Replacing the live database (or its WAL) with a copy of itself would corrupt it.
        let live = std::fs::canonicalize(data_dir).ok();
        let target = std::fs::canonicalize(dest).ok();
        if let (Some(live), Some(target)) = (live, target) {
            let own = [
                DB_FILE.to_owned(),
                format!("{DB_FILE}-wal"),
                format!("{DB_FILE}-shm"),
                format!("{DB_FILE}-journal"),
                LOCK_FILE.to_owned(),
            ];
            if own.iter().any(|name| live.join(name) == target) {
                return Err(Error::Setup(format!(
                    "{} is a file of the store being backed up; write the backup elsewhere",
                    dest.display()
                )));
            }
        }
    }
    Ok(dir)
}

fn exists(dest: &Path) -> Error {
    Error::Setup(format!(
        "{} already exists; remove it, choose another name, or pass --force to replace it",
        dest.display()
    ))
}

/// Runs the backup API from `src` (inside its read transaction) into a new database at `tmp`;
/// returns the number of pages copied.
fn copy(src: &Connection, tmp: &Path, source: &Path) -> Result<u64> {
    let mut dst = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| dest_error(tmp, source, e))?;
    let copy = Backup::new(src, &mut dst).map_err(|e| dest_error(tmp, source, e))?;
    let mut remaining = i32::MAX;
    let mut restarts = 0;
    let mut busy_since: Option<Instant> = None;
    loop {
        let step = copy
            .step(PAGES_PER_STEP)
            .map_err(|e| dest_error(tmp, source, e))?;
        let progress = copy.progress();
        if progress.remaining > remaining {
            restarts += 1;
            if restarts > MAX_RESTARTS {
                return Err(Error::Unavailable(format!(
                    "{} kept changing under the copy; try again",
                    source.display()
                )));
            }
        }
        remaining = progress.remaining;
        match step {
            StepResult::Done => return Ok(progress.pagecount.max(0) as u64),
            StepResult::More => busy_since = None,
            // Only while the daemon recovers its WAL at start-up, in practice.
            _ => {
                let since = *busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() > BUSY_TIMEOUT {
                    return Err(Error::Unavailable(format!(
                        "{} stayed locked for {}s; try again",
                        source.display(),
                        BUSY_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        std::thread::sleep(STEP_PAUSE);
    }
}

/// Reopens the copy from disk, makes it a single file (rollback journal instead of WAL: the
/// source's header said WAL, and the copy's does too until changed), and checks it: integrity,
/// and the schema version it was copied at.
fn finish_copy(tmp: &Path, version: i64) -> Result<()> {
    let conn = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(Error::storage("reopening the copy"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(Error::storage("taking the copy out of WAL mode"))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::Internal(format!(
            "the copy stayed in journal mode {mode}"
        )));
    }
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(Error::storage("checking the copy"))?;
    if problems != ["ok"] {
        return Err(Error::Setup(format!(
            "the copy failed its integrity check ({}), so the store itself may be damaged; \
             nothing was written to the destination",
            problems
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let copied = schema::identify(&conn, tmp)?;
    if copied != version {
        return Err(Error::Internal(format!(
            "the copy has schema version {copied}, the source had {version}"
        )));
    }
    conn.close()
        .map_err(|(_, e)| Error::storage("closing the copy")(e))?;
    Ok(())
}

/// A SQLite error of the copy: a full disk at the destination, a damaged source, or else a
/// storage error.
fn dest_error(tmp: &Path, source: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as E;
    match e.sqlite_error_code() {
        Some(E::DiskFull) => no_space(tmp),
        Some(E::DatabaseCorrupt | E::NotADatabase) => {
            schema::file_error(source, "copying the database", e)
        }
        _ => Error::storage("copying the database")(e),
    }
}

fn no_space(tmp: &Path) -> Error {
    let dir = tmp.parent().unwrap_or(Path::new("."));
    Error::Setup(format!(
        "no space left on the file system of {}; nothing was written to the destination",
        dir.display()
    ))
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::StorageFull {
            no_space(path)
        } else {
            Error::Setup(format!("cannot sync {}: {e}", path.display()))
        }
    })
}

/// The temporary file the copy is written to, next to DEST; removed (with any journal SQLite
/// left beside it) unless [`TempCopy::keep`] is called after it was renamed onto DEST.
struct TempCopy {
    path: PathBuf,
    keep: bool,
}

impl TempCopy {
    fn create(dir: &Path, dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "larder-backup".into());
        let path = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        // A file of that name is left over from a killed backup with this pid: ours to replace.
        let _ = std::fs::remove_file(&path);
        // Owner-only, whatever the umask: the copy holds every session and cached value.
        // SQLite keeps an existing file's mode, and gives its journals the same one.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::StorageFull {
                    no_space(&path)
                } else {
                    Error::Setup(format!("cannot create {}: {e}", path.display()))
                }
            })?;
        Ok(Self { path, keep: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        for suffix in ["-journal", "-wal", "-shm"] {
            let mut side = self.path.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// "3.1 MiB".
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
