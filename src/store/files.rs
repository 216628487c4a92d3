//! The store's files: private, and staying put under the running daemon.
//!
//! **Private.** The data directory is created 0700 and every file the store creates or opens
//! for writing (`larder.db`, its `-wal` and `-shm`, `larder.lock`) is 0600, whatever the
//! umask: the modes are set explicitly after creation ([`create_data_dir`],
//! [`open_private`], [`private_database`]). SQLite gives the `-wal` and `-shm` it creates the mode
//! of the database file (and sets it with `fchmod`, past the umask), so a private `larder.db`
//! made before SQLite opens it is what keeps them private. Files left looser by an older
//! Larder are tightened at open, with a warning. A data directory that already exists keeps
//! its mode (it may be a directory the operator shares, or one systemd manages with
//! `StateDirectoryMode=`): looser than 0700 is a warning, not a `chmod`, since the files in it
//! are 0600 anyway and only their names would show.
//!
//! **Staying put.** SQLite keeps writing to the
//! files it opened even after they are deleted or replaced at their paths (`rm larder.db`, or
//! a restore moved into place with `mv` over a live store): such writes would commit, be
//! acknowledged, and be gone at the next start. The writer therefore checks, before each
//! batch, that `larder.db` and its WAL at their paths are still the files it has open (device
//! and inode), and refuses writes with `UNAVAILABLE` while they are not. Reads go on from the
//! files still open. A file overwritten in place (`cp backup.db larder.db`) keeps its inode and
//! is not caught here: the restore steps in docs/operations.md stop the daemon first.
//!
//! Clients are told only that writes are refused until a restart ([`MOVED`]); which file, its
//! path and the advice (which names `/proc/<pid>/`) go to the log, for the operator: a client
//! has no use for the server's paths.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The data directory's mode: only the daemon's user may list, enter or change it.
pub(crate) const DIR_MODE: u32 = 0o700;

/// The mode of every file the store writes: readable and writable by the daemon's user only.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates the data directory `dir` (and missing parents) with mode 0700, set explicitly so
/// that no umask loosens or (0277, say) breaks it. A directory that already exists is left as
/// it is, with a warning when others may enter it (see the module docs).
pub(crate) fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format!("{mode:04o}"),
                    "the data directory is open to other users; its files are private (0600), \
                     but `chmod 700` it unless it is shared on purpose"
                );
            }
            Ok(())
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        )),
        Err(_) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)?;
            std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        }
    }
}

/// Opens `path` for reading and writing: created 0600 when missing, tightened (see
/// [`tighten`]) when it exists.
pub(crate) fn open_private(path: &Path) -> std::io::Result<File> {
    let rw = || {
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(FILE_MODE);
        options
    };
    match rw().create_new(true).open(path) {
        Ok(file) => {
            // Exactly 0600 whatever the umask took away (0277 would leave it unwritable).
            file.set_permissions(Permissions::from_mode(FILE_MODE))?;
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let file = rw().open(path)?;
            tighten(&file, path);
            Ok(file)
        }
        Err(e) => Err(e),
    }
}

/// Makes the database at `db` and its `-wal` and `-shm` private before SQLite opens them: a
/// missing database is created empty and 0600 (SQLite takes an empty file for a new
/// database), existing files are tightened. Best effort: a file that cannot be created or
/// changed here is left to SQLite's open, which says what is wrong with it.
pub(crate) fn private_database(db: &Path) {
    match open_private(db) {
        Ok(_) => {}
        Err(e) => tracing::debug!(path = %db.display(), "cannot create the database first: {e}"),
    }
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    for path in [crate::store::wal_path(db), PathBuf::from(shm)] {
        if let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            tighten(&file, &path);
        }
    }
}

/// Takes every permission of the group and of others (and set-id bits) off an existing file;
/// the owner's are kept, so a database made read-only on purpose stays read-only (and is
/// refused as such). Logged, since the operator may have relied on the old mode; a file that
/// cannot be changed (another user's) is left to the open that follows.
fn tighten(file: &File, path: &Path) {
    let Ok(meta) = file.metadata() else { return };
    let mode = meta.mode() & 0o7777;
    let private = mode & 0o700;
    if mode == private {
        return;
    }
    match file.set_permissions(Permissions::from_mode(private)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            was = format!("{mode:04o}"),
            now = format!("{private:04o}"),
            "made a store file private"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "a store file is open to other users and its mode cannot be changed: {e}"
        ),
    }
}

/// What a client is told while a file is missing or replaced.
pub(crate) const MOVED: &str = "a database file was deleted or replaced while larder was running; \
     writes are refused until larder is restarted (the server log says which file and what to do)";

/// One file the writer has open, and the identity (device, inode) it had when it was opened.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    /// `None` until the file is first seen (SQLite creates the WAL with the first transaction).
    id: Option<(u64, u64)>,
    /// What to do when this file is gone, for the message.
    advice: &'static str,
}

/// The database file and its WAL as the writer opened them.
#[derive(Debug)]
pub(crate) struct OpenFiles {
    watched: Vec<Watched>,
    /// The message of the last failed check, so that it is logged once, not per batch.
    moved: Option<String>,
}

fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

impl OpenFiles {
    /// Records the identity of the database at `db_path` and of its WAL, right after the
    /// writer opened them.
    pub(crate) fn record(db_path: &Path) -> Self {
        let watched = [
            (
                db_path.to_owned(),
                "restart larder to serve the file now at that path; until it exits, the old \
                 data can still be copied from /proc/<pid>/fd/ (the link ending in \"(deleted)\")",
            ),
            (
                crate::store::wal_path(db_path),
                "restart larder: a clean stop copies what the old WAL holds into the database",
            ),
        ]
        .into_iter()
        .map(|(path, advice)| Watched {
            id: identity(&path).ok(),
            path,
            advice,
        })
        .collect();
        Self {
            watched,
            moved: None,
        }
    }

    /// Fails with `UNAVAILABLE` when a file was deleted or replaced since it was opened. Costs
    /// one `stat` per file.
    pub(crate) fn check(&mut self) -> Result<()> {
        let mut problem = None;
        for w in &mut self.watched {
            let now = identity(&w.path);
            let what = match (&w.id, now) {
                (None, Ok(id)) => {
                    w.id = Some(id);
                    continue;
                }
                (None, Err(_)) => continue,
                (Some(then), Ok(now)) if *then == now => continue,
                (Some(_), Ok(_)) => "replaced by another file",
                (Some(_), Err(_)) => "deleted",
            };
            problem = Some(format!(
                "{} was {what} while larder was running; writes are refused, since a restart \
                 would not find them (reads still see the old file): {}",
                w.path.display(),
                w.advice
            ));
            break;
        }
        match problem {
            None => {
                if self.moved.take().is_some() {
                    tracing::info!("the database files are back in place; writes are accepted");
                }
                Ok(())
            }
            Some(msg) => {
                if self.moved.as_deref() != Some(msg.as_str()) {
                    tracing::error!("{msg}");
                    self.moved = Some(msg);
                }
                Err(Error::Unavailable(MOVED.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_file_fails_the_check_until_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let wal = dir.path().join("x.db-wal");
        std::fs::write(&db, "db").unwrap();
        let mut files = OpenFiles::record(&db);
        files
            .check()
            .expect("nothing moved; the WAL does not exist yet");
        std::fs::write(&wal, "wal").unwrap();
        files.check().expect("a WAL appearing is recorded");

        // The client's message names no path; the logged one says which file.
        let refused = |files: &mut OpenFiles, logged: &str| {
            let err = files.check().unwrap_err().to_string();
            assert_eq!(err, MOVED);
            let log = files.moved.clone().unwrap_or_default();
            assert!(log.contains(logged), "{log}");
        };
        std::fs::rename(&db, dir.path().join("kept.db")).unwrap();
        refused(&mut files, "x.db was deleted");

        std::fs::write(&db, "another").unwrap();
        refused(&mut files, "replaced");

        std::fs::rename(dir.path().join("kept.db"), &db).unwrap();
        files.check().expect("the original file is back");

        std::fs::remove_file(&wal).unwrap();
        refused(&mut files, "x.db-wal was deleted");
    }
}
