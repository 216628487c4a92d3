//! The database file: connection settings (PRAGMAs) and the schema, versioned with
//! `PRAGMA user_version` and moved forward by migrations; and the checks, made before anything
//! is written, that a file is a Larder database this build can use (not damaged, not another
//! program's, not from a newer Larder), each failure one message saying what to do.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// The schema version this build writes. A file with a higher version was written by a newer
/// Larder and is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 6;

/// WAL pages after which the writer checkpoints itself, after a commit (the background
/// checkpointer normally keeps the WAL far below this).
pub(crate) const WRITER_CHECKPOINT_PAGES: i32 = 8192;

/// Prepared statements the writer connection keeps.
const WRITER_STATEMENTS: usize = 64;

/// How long a connection waits for a lock before answering busy.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Forward migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: cache entries and the store's counters.
    "
    CREATE TABLE cache_entries (
        id          INTEGER PRIMARY KEY,
        namespace   TEXT    NOT NULL,
        key         TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,  -- Unix ms; 0 = never
        accessed_at INTEGER NOT NULL,  -- Unix ms of the last read or write known to the writer;
                                       -- not indexed: eviction samples (see writer.rs)
        size        INTEGER NOT NULL,  -- bytes of key + value, counted against the disk bound
        -- Last, so that reading the small columns never walks a large value's overflow pages.
        value       BLOB    NOT NULL,
        UNIQUE (namespace, key)
    );
    CREATE INDEX cache_entries_by_expiry ON cache_entries (expires_at) WHERE expires_at > 0;
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Versions are handed out from leases: this is the end of the current lease.
    INSERT INTO meta (name, value) VALUES ('version_lease', 1);
    ",
    // 1 → 2: login sessions. Never evicted: they leave by expiry (swept) or revocation.
    "
    CREATE TABLE sessions (
        id                  INTEGER PRIMARY KEY,
        token_hash          BLOB    NOT NULL UNIQUE,  -- SHA-256 of the token; never the token
        session_id          TEXT    NOT NULL UNIQUE,  -- public id, for listing and revoking
        user_id             TEXT    NOT NULL,
        device_info         TEXT    NOT NULL,
        ip                  TEXT    NOT NULL,
        created_at          INTEGER NOT NULL,  -- Unix ms
        last_seen_at        INTEGER NOT NULL,  -- Unix ms; written coalesced by reads
        idle_ttl            INTEGER NOT NULL,  -- ms
        idle_expires_at     INTEGER NOT NULL,  -- MIN(last_seen_at + idle_ttl, absolute_expires_at)
        absolute_expires_at INTEGER NOT NULL,  -- Unix ms
        data                TEXT    NOT NULL   -- JSON object of strings
    );
    CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
    CREATE INDEX sessions_by_expiry ON sessions (idle_expires_at);
    ",
    // 2 → 3: rate-limit state, written behind from memory. A row counts for nothing once
    // expires_at has passed, and the sweeper deletes it.
    "
    CREATE TABLE rate_limits (
        id         INTEGER PRIMARY KEY,
        policy     TEXT    NOT NULL,  -- '' for limits given inline in the request
        key        TEXT    NOT NULL,
        state      TEXT    NOT NULL,  -- the algorithm's name and numbers, e.g. 'gcra <tat ns>'
        expires_at INTEGER NOT NULL,  -- Unix ms
        UNIQUE (policy, key)
    );
    CREATE INDEX rate_limits_by_expiry ON rate_limits (expires_at);
    ",
    // 3 → 4: the bytes the cache table holds against the disk bound, kept by the writer in the
    // transaction of every change, so that opening a big store need not add up every row.
    "
    INSERT INTO meta (name, value) SELECT 'cache_bytes', COALESCE(SUM(size), 0) FROM cache_entries;
    ",
    // 4 → 5: a cache row's `size` becomes its charge against the disk bound (namespace and key
    // twice, value, row overhead: see `cache::disk_charge`), recomputed for the rows there
    // are; and the sessions table gets a total of its own charges (`session::disk_charge`),
    // kept by triggers, so that every statement that adds, changes or deletes sessions keeps
    // it exact without the writer adding anything up.
    concat!(
        "UPDATE cache_entries SET size = 2 * (length(CAST(namespace AS BLOB)) \
         + length(CAST(key AS BLOB))) + length(value) + ",
        crate::store::cache::row_overhead!(),
        ";
        UPDATE meta SET value = (SELECT COALESCE(SUM(size), 0) FROM cache_entries)
            WHERE name = 'cache_bytes';
        INSERT INTO meta (name, value) SELECT 'session_bytes', COALESCE(SUM(",
        crate::store::session::session_charge!("sessions"),
        "), 0) FROM sessions;
        CREATE TRIGGER sessions_charge_insert AFTER INSERT ON sessions BEGIN
            UPDATE meta SET value = value + ",
        crate::store::session::session_charge!("NEW"),
        " WHERE name = 'session_bytes';
        END;
        CREATE TRIGGER sessions_charge_delete AFTER DELETE ON sessions BEGIN
            UPDATE meta SET value = value - ",
        crate::store::session::session_charge!("OLD"),
        " WHERE name = 'session_bytes';
        END;
        CREATE TRIGGER sessions_charge_update
            AFTER UPDATE OF token_hash, session_id, user_id, device_info, ip, data ON sessions
        BEGIN
            UPDATE meta SET value = value + ",
        crate::store::session::session_charge!("NEW"),
        " - ",
        crate::store::session::session_charge!("OLD"),
        " WHERE name = 'session_bytes';
        END;
        "
    ),
    // 5 → 6: job queues (see `queue/sql.rs` for the states). `queue_sizes` holds each queue's
    // jobs and payload bytes, kept by triggers, so that the bound on a queue is checked
    // without counting its rows; a queue's row goes with its last job.
    "
    CREATE TABLE queue_jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
        queue            TEXT    NOT NULL,
        state            INTEGER NOT NULL,  -- 0 waiting, 1 leased, 2 dead
        priority         INTEGER NOT NULL,
        ready_at         INTEGER NOT NULL,  -- Unix ms a waiting job is ready from
        attempt          INTEGER NOT NULL,  -- deliveries so far
        max_attempts     INTEGER NOT NULL,
        lease            INTEGER NOT NULL DEFAULT 0,  -- the lease's random number; 0 = none
        lease_expires_at INTEGER NOT NULL DEFAULT 0,  -- Unix ms
        enqueued_at      INTEGER NOT NULL,  -- Unix ms
        dead_at          INTEGER NOT NULL DEFAULT 0,  -- Unix ms
        dedup_key        TEXT,
        last_error       TEXT    NOT NULL DEFAULT '',
        payload          BLOB    NOT NULL
    );
    CREATE INDEX queue_jobs_waiting ON queue_jobs (queue, priority DESC, ready_at, id)
        WHERE state = 0;
    CREATE INDEX queue_jobs_by_ready_time ON queue_jobs (queue, ready_at) WHERE state = 0;
    CREATE INDEX queue_jobs_leased ON queue_jobs (lease_expires_at) WHERE state = 1;
    CREATE INDEX queue_jobs_dead ON queue_jobs (queue, dead_at, id) WHERE state = 2;
    CREATE UNIQUE INDEX queue_jobs_dedup ON queue_jobs (queue, dedup_key)
        WHERE dedup_key IS NOT NULL;
    CREATE TABLE queue_sizes (
        queue TEXT PRIMARY KEY,
        jobs  INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER queue_jobs_size_insert AFTER INSERT ON queue_jobs BEGIN
        INSERT INTO queue_sizes (queue, jobs, bytes) VALUES (NEW.queue, 1, length(NEW.payload))
            ON CONFLICT (queue) DO UPDATE SET jobs = jobs + 1, bytes = bytes + excluded.bytes;
    END;
    CREATE TRIGGER queue_jobs_size_delete AFTER DELETE ON queue_jobs BEGIN
        UPDATE queue_sizes SET jobs = jobs - 1, bytes = bytes - length(OLD.payload)
            WHERE queue = OLD.queue;
        DELETE FROM queue_sizes WHERE queue = OLD.queue AND jobs <= 0;
    END;
    ",
];

/// How strongly a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Durable against a process crash; the last commits may be lost on power loss.
    #[default]
    Normal,
    /// Durable against power loss: every commit waits for fsync.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Tables every Larder schema since version 1 has: a file with a schema version but without
/// them was written by another program.
const LARDER_TABLES: &[&str] = &["cache_entries", "meta"];

/// Opens (creating if needed) the database for the writer, checks that it is a Larder
/// database this build understands ([`identify`], before anything is written to it), sets WAL
/// mode and migrates the schema to [`SCHEMA_VERSION`]. Returns the connection and the schema
/// version the file had: 0 for a store created here.
pub(crate) fn open_writer(path: &Path, synchronous: Synchronous) -> Result<(Connection, i64)> {
    // 0600 before SQLite opens it: the -wal and -shm it creates take the database file's mode.
    crate::store::files::private_database(path);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| file_error(path, "opening the database", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(Error::storage("setting busy_timeout"))?;
    // Every statement of the writer stays prepared (rusqlite keeps 16 by default, fewer than
    // the cache, session, rate-limit and upkeep statements together).
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    // SQLite falls back to read-only when the file is not writable, and would only say so at
    // the first write.
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(Error::storage("opening the database"))?
    {
        return Err(Error::Setup(format!(
            "{} is read-only; larder writes its database, so the file and its directory must \
             be writable by the user running it",
            path.display()
        )));
    }
    // Reading the header is the first thing that fails on a file that is not a database.
    let version = identify(&conn, path)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| file_error(path, "switching to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Internal(format!(
            "{}: SQLite refused WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    // Routine checkpoints run on their own connection (see checkpoint.rs). SQLite's automatic
    // checkpoint is off: it would run inside COMMIT, while readers of SQLite wait for memory
    // to show the commit. The writer checkpoints as a backstop after the commit instead (see
    // `WRITER_CHECKPOINT_PAGES`), which lets the WAL wrap around under a continuous write
    // load. The WAL file is truncated back to 64 MiB after it wraps.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; \
         PRAGMA journal_size_limit = {}; PRAGMA cache_size = -32768;",
        synchronous.pragma(),
        64 << 20,
    ))
    .map_err(Error::storage("setting PRAGMAs"))?;
    migrate(&conn, path, version)?;
    Ok((conn, version))
}

/// Checks, reading only, that the file open on `conn` is a Larder database this build can
/// use, and returns its schema version: 0 for a new, empty file. A damaged file, a file of
/// another program and a schema newer than [`SCHEMA_VERSION`] are each an [`Error::Setup`]
/// naming `path` and saying what to do.
pub(crate) fn identify(conn: &Connection, path: &Path) -> Result<i64> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| file_error(path, "reading the schema version", e))?;
    let tables = table_names(conn).map_err(|e| file_error(path, "reading the schema", e))?;
    let foreign = |why: String| {
        Error::Setup(format!(
            "{} is not a larder database: {why}; move it away or choose another data directory",
            path.display()
        ))
    };
    if version == 0 {
        if tables.is_empty() {
            return Ok(0);
        }
        return Err(foreign(format!(
            "it holds tables of another program ({}) and no larder schema version",
            list_some(&tables)
        )));
    }
    if version < 0 || !LARDER_TABLES.iter().all(|t| tables.iter().any(|n| n == t)) {
        return Err(foreign(format!(
            "it has schema version {version} but not larder's tables (it holds {})",
            if tables.is_empty() {
                "none".to_owned()
            } else {
                list_some(&tables)
            }
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::Setup(format!(
            "{} has schema version {version}, newer than this larder understands \
             ({SCHEMA_VERSION}); run the newer larder that wrote it, or restore a backup made \
             for this version",
            path.display()
        )));
    }
    Ok(version)
}

/// Names of the tables, indexes, views and triggers in the file, SQLite's own left out.
fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name",
    )?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// The first few names, for a message.
fn list_some(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// The error for a SQLite failure on the database file at `path`: a damaged file, a file
/// larder may not write and a full disk each get a message saying what to do; anything else
/// stays a storage error with `context`.
pub(crate) fn file_error(path: &Path, context: &'static str, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as E;
    let p = path.display();
    match e.sqlite_error_code() {
        Some(E::NotADatabase) => Error::Setup(format!(
            "{p} is not a SQLite database (it is damaged, or a file of another kind); restore \
             it from a backup (see `larder backup`), or move it away to start with an empty store"
        )),
        Some(E::DatabaseCorrupt) => Error::Setup(format!(
            "{p} is corrupt ({}); restore it from a backup (see `larder backup`), or move it \
             away to start with an empty store",
            sqlite_message(&e)
        )),
        Some(E::ReadOnly | E::PermissionDenied | E::CannotOpen) => Error::Setup(format!(
            "cannot open {p} ({}); the data directory and its files must be readable and \
             writable by the user running larder",
            sqlite_message(&e)
        )),
        Some(E::DiskFull) => no_space(path),
        // SQLite says only "disk I/O error" when it cannot grow its shared-memory index
        // (`-shm`) on a full disk: ask the file system.
        Some(E::SystemIoFailure) if out_of_space(path) => no_space(path),
        Some(E::SystemIoFailure) => Error::Setup(format!(
            "the disk failed under {p} while {context} ({}); check the disk and the kernel \
             log (`dmesg`)",
            io_failure(&e)
        )),
        _ => Error::storage(context)(e),
    }
}

/// What an SQLite I/O error was, in words (its extended code says which system call failed).
fn io_failure(e: &rusqlite::Error) -> String {
    use rusqlite::ffi;
    let code = match e {
        rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
        _ => return e.to_string(),
    };
    match code {
        ffi::SQLITE_IOERR_FSYNC | ffi::SQLITE_IOERR_DIR_FSYNC => "fsync failed".into(),
        ffi::SQLITE_IOERR_WRITE => "a write failed".into(),
        ffi::SQLITE_IOERR_READ | ffi::SQLITE_IOERR_SHORT_READ => "a read failed".into(),
        ffi::SQLITE_IOERR_SHMSIZE | ffi::SQLITE_IOERR_SHMOPEN | ffi::SQLITE_IOERR_SHMMAP => {
            "SQLite's shared-memory index (-shm) could not be made".into()
        }
        other => format!("SQLite I/O error code {other}"),
    }
}

fn no_space(path: &Path) -> Error {
    Error::Setup(format!(
        "no space left on the file system of {}; free some space and try again",
        path.display()
    ))
}

/// Whether the directory of `path` has no room for 64 KiB (what SQLite needs to open a
/// database in WAL mode: its `-shm` index and the first WAL frames). Writes and removes a
/// probe file.
fn out_of_space(path: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let probe = dir.join(format!(".larder-space-check.{}", std::process::id()));
    // A new file only (never one a symlink points to), readable by no one else.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(&[0u8; 64 << 10])?;
            f.sync_all()
        });
    let _ = std::fs::remove_file(&probe);
    matches!(
        written,
        Err(e) if matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    )
}

/// SQLite's own words for an error, without rusqlite's repetitions.
fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) if !msg.is_empty() => msg.clone(),
        rusqlite::Error::SqliteFailure(code, _) => code.to_string(),
        other => other.to_string(),
    }
}

fn migrate(conn: &Connection, path: &Path, version: i64) -> Result<()> {
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {to}; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            file_error(path, "migrating the schema", e)
        })?;
        // A new file goes through every step: the store says once that it created it, so
        // only a store that existed before reports its steps.
        if version > 0 {
            tracing::info!(from, to, "migrated database schema");
        } else {
            tracing::debug!(from, to, "created database schema");
        }
    }
    Ok(())
}

/// Settings for each read-only connection of the reader threads.
pub(crate) fn prepare_reader(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA query_only = ON;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_the_current_schema_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (conn, _) = open_writer(&path, Synchronous::Normal).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        // Opening again is a no-op migration.
        open_writer(&path, Synchronous::Full).unwrap();
    }

    #[test]
    fn a_version_1_file_is_migrated_and_keeps_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!("{}; PRAGMA user_version = 1;", MIGRATIONS[0]))
            .unwrap();
        conn.execute(
            "INSERT INTO cache_entries (namespace, key, version, expires_at, accessed_at, size, value) \
             VALUES ('default', 'k', 7, 0, 0, 2, x'7676')",
            [],
        )
        .unwrap();
        drop(conn);
        let (conn, _) = open_writer(&path, Synchronous::Normal).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let version: i64 = conn
            .query_row(
                "SELECT version FROM cache_entries WHERE key = 'k'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 7);
        let bytes: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'cache_bytes'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            bytes,
            crate::store::cache::disk_charge("default", "k", 2),
            "the migrations add up the rows there were, at their charge"
        );
        let sessions: i64 = conn
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sessions, 0);
        let limits: i64 = conn
            .query_row("SELECT COUNT(*) FROM rate_limits", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limits, 0);
    }

    /// A store written before rows were charged their namespace and overhead: migration 5
    /// recharges its rows, and the session total it starts is kept exact by its triggers.
    #[test]
    fn a_version_4_file_gets_its_rows_recharged_and_a_session_total() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "{}; {}; {}; {}; PRAGMA user_version = 4;",
            MIGRATIONS[0], MIGRATIONS[1], MIGRATIONS[2], MIGRATIONS[3]
        ))
        .unwrap();
        let ns = "n".repeat(128);
        conn.execute(
            "INSERT INTO cache_entries (namespace, key, version, expires_at, accessed_at, size, value) \
             VALUES (?1, 'k', 7, 0, 0, 2, x'76')",
            [&ns],
        )
        .unwrap();
        conn.execute_batch(
            "UPDATE meta SET value = 2 WHERE name = 'cache_bytes';
             INSERT INTO sessions (token_hash, session_id, user_id, device_info, ip, created_at,
                 last_seen_at, idle_ttl, idle_expires_at, absolute_expires_at, data)
             VALUES (zeroblob(32), 'ses_a', 'u', 'phone', '::1', 0, 0, 1, 1, 1, '{\"k\":\"v\"}');",
        )
        .unwrap();
        drop(conn);
        let (conn, _) = open_writer(&path, Synchronous::Normal).unwrap();
        let meta = |name: &str| -> i64 {
            conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .unwrap()
        };
        let charge = crate::store::cache::disk_charge(&ns, "k", 1);
        assert_eq!(charge, 2 * 129 + 1 + 64);
        let size: i64 = conn
            .query_row("SELECT size FROM cache_entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!((size, meta("cache_bytes")), (charge, charge));
        let record = crate::store::session::SessionRecord {
            session_id: "ses_a".into(),
            user_id: "u".into(),
            data: std::sync::Arc::new([("k".to_owned(), "v".to_owned())].into()),
            device_info: "phone".into(),
            ip: "::1".into(),
            created_at_ms: 0,
            last_seen_at_ms: 0,
            idle_ttl_ms: 1,
            absolute_expires_at_ms: 1,
        };
        let one = crate::store::session::disk_charge(&record) as i64;
        assert_eq!(
            meta("session_bytes"),
            one,
            "SQL and Rust charge a session alike"
        );
        conn.execute_batch(
            "INSERT INTO sessions (token_hash, session_id, user_id, device_info, ip, created_at,
                 last_seen_at, idle_ttl, idle_expires_at, absolute_expires_at, data)
             SELECT randomblob(32), 'ses_b', user_id, device_info, ip, 0, 0, 1, 1, 1, data
             FROM sessions;
             UPDATE sessions SET data = '{}' WHERE session_id = 'ses_b';",
        )
        .unwrap();
        let shrunk = one - 2 * ("{\"k\":\"v\"}".len() - "{}".len()) as i64;
        assert_eq!(
            meta("session_bytes"),
            one + shrunk,
            "inserts and updates are charged"
        );
        conn.execute_batch("DELETE FROM sessions WHERE session_id = 'ses_a'")
            .unwrap();
        assert_eq!(
            meta("session_bytes"),
            shrunk,
            "deletes give their charge back"
        );
        conn.execute_batch("DELETE FROM sessions").unwrap();
        assert_eq!(meta("session_bytes"), 0);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(open_writer(&path, Synchronous::Normal).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = open_writer(&path, Synchronous::Normal).unwrap_err();
        assert!(matches!(err, Error::Setup(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("newer") && msg.contains("99"), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = open_writer(&path, Synchronous::Normal).unwrap_err();
        assert!(matches!(err, Error::Setup(_)), "{err:?}");
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
    }

    /// A database of another program, with or without a schema version of its own.
    fn foreign_file(user_version: i64) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); \
             INSERT INTO users (name) VALUES ('ada'); PRAGMA user_version = {user_version};"
        ))
        .unwrap();
        drop(conn);
        let bytes = std::fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn a_database_of_another_program_is_refused_and_left_as_it_was() {
        for user_version in [0, 2, 99] {
            let (_dir, path, before) = foreign_file(user_version);
            let err = open_writer(&path, Synchronous::Normal).unwrap_err();
            assert!(matches!(err, Error::Setup(_)), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("not a larder database") && msg.contains("users"),
                "user_version {user_version}: {msg}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                before,
                "user_version {user_version}: the file was changed"
            );
        }
    }

    #[test]
    fn an_empty_file_is_a_new_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, b"").unwrap();
        let (conn, _) = open_writer(&path, Synchronous::Normal).unwrap();
        assert_eq!(identify(&conn, &path).unwrap(), SCHEMA_VERSION);
    }
}
