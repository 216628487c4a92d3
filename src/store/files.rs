//! The database's files staying put under the running daemon. SQLite keeps writing to the
//! files it opened even after they are deleted or replaced at their paths (`rm larder.db`, or
//! a restore moved into place with `mv` over a live store): such writes would commit, be
//! acknowledged, and be gone at the next start. The writer therefore checks, before each
//! batch, that `larder.db` and its WAL at their paths are still the files it has open (device
//! and inode), and refuses writes with `UNAVAILABLE` while they are not. Reads go on from the
//! files still open. A file overwritten in place (`cp backup.db larder.db`) keeps its inode and
//! is not caught here: the restore steps in docs/operations.md stop the daemon first.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
                    self.moved = Some(msg.clone());
                }
                Err(Error::Unavailable(msg))
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

        std::fs::rename(&db, dir.path().join("kept.db")).unwrap();
        let err = files.check().unwrap_err().to_string();
        assert!(err.contains("x.db was deleted"), "{err}");

        std::fs::write(&db, "another").unwrap();
        let err = files.check().unwrap_err().to_string();
        assert!(err.contains("replaced"), "{err}");

        std::fs::rename(dir.path().join("kept.db"), &db).unwrap();
        files.check().expect("the original file is back");

        std::fs::remove_file(&wal).unwrap();
        let err = files.check().unwrap_err().to_string();
        assert!(err.contains("x.db-wal was deleted"), "{err}");
    }
}
