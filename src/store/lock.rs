//! One daemon per data directory: an exclusive advisory lock on `<data_dir>/larder.lock`,
//! held for the life of the store. Two daemons over one file would each trust an LRU the other
//! makes stale, so the second one refuses to start. The lock file is 0600, like every file of
//! the store (see `files.rs`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// The lock file's name inside the data directory.
pub(crate) const LOCK_FILE: &str = "larder.lock";

/// The held lock; released when dropped (or when the process dies, which the kernel does).
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `data_dir` without waiting, after checking that the directory is
    /// writable (the lock file may already exist, so opening it proves nothing about the
    /// database's WAL, which SQLite would only fail to create later, less clearly).
    pub(crate) fn acquire(data_dir: &Path) -> Result<Self> {
        check_writable(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = super::files::open_private(&path)
            .map_err(|e| Error::Setup(format!("cannot open lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(Error::Unavailable(format!(
                    "data directory {} is already in use by another larder{by}; \
                     one daemon owns a data directory (lock: {})",
                    data_dir.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Internal(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
        // The pid is informational only; the kernel lock is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }
}

/// Creates and removes a file in `dir`: the one sure test that files can be created there
/// (permissions, a read-only mount, an immutable directory, ACLs, SELinux all say no alike).
fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".larder-write-check.{}", std::process::id()));
    let created = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::files::FILE_MODE)
        .open(&probe);
    match created {
        Ok(file) => {
            drop(file);
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Error::Setup(format!(
            "data directory {} is not writable ({e}); larder keeps its database, WAL and lock \
             file there: make it writable by the user running larder, or choose another \
             (--data-dir, LARDER_DATA_DIR, data_dir)",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("already in use"), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
