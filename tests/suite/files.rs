//! The modes of the files the daemon makes: under umask 000, the data directory comes out
//! 0700, the database, its WAL and shared-memory index and the lock file 0600, and the Unix
//! socket has the configured mode (0660 by default). Files an older Larder left looser are
//! made private at the next start (with a warning); a data directory that already existed
//! keeps its mode and is warned about.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use larder::store::DB_FILE;

use crate::common::{get, set};
use crate::suite::binary::{Daemon, read_log, serve};

/// The permission bits of `path` (not following a symlink).
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file of the store in `data`, with the mode it must have.
fn store_files(data: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let db = data.join(DB_FILE);
    vec![
        (data.to_owned(), 0o700),
        (db.clone(), 0o600),
        (larder::store::wal_path(&db), 0o600),
        (data.join(format!("{DB_FILE}-shm")), 0o600),
        (data.join("larder.lock"), 0o600),
    ]
}

/// `larder serve` started under umask 000, the loosest a service manager could give it.
fn spawn_under_umask_000(data: &Path, socket: &Path, log: &Path) -> Daemon {
    let mut cmd = serve(data, socket, log);
    // SAFETY: umask is async-signal-safe and touches only the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    Daemon::start(cmd, log.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn store_files_and_the_socket_are_private_under_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("run").join("larder.sock");
    let log = dir.path().join("larder.log");

    let mut daemon = spawn_under_umask_000(&data, &socket, &log);
    let mut c = daemon.client(&socket).await;
    set(&mut c, "", "k", "v", 0).await;
    for (path, want) in store_files(&data) {
        assert_eq!(
            mode(&path),
            want,
            "{} is {:04o}, not {want:04o}",
            path.display(),
            mode(&path)
        );
    }
    assert_eq!(mode(&socket), 0o660, "the socket has unix_socket_mode");
    drop(c);
    daemon.terminate().await;

    // Files an older Larder (or an operator) left open to others are made private at the next
    // start; the existing data directory keeps its mode, with a warning in the log.
    let db = data.join(DB_FILE);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(
        data.join("larder.lock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("again.log");
    let mut daemon = spawn_under_umask_000(&data, &socket, &log);
    let mut c = daemon.client(&socket).await;
    assert_eq!(get(&mut c, "", "k").await.value, "v");
    for (path, want) in store_files(&data).into_iter().skip(1) {
        assert_eq!(mode(&path), want, "{}", path.display());
    }
    assert_eq!(
        mode(&data),
        0o755,
        "an existing data directory keeps its mode"
    );
    let logged = read_log(&log);
    assert!(logged.contains("made a store file private"), "{logged}");
    assert!(
        logged.contains("data directory is open to other users"),
        "{logged}"
    );
    drop(c);
    daemon.terminate().await;
}
