//! Storage faults under a running daemon and at start-up: a full disk (a small tmpfs filled
//! by another file) fails writes with RESOURCE_EXHAUSTED, whole, while reads and health go on,
//! and writes succeed again once space returns; storage turning read-only under the daemon
//! (`chattr +i`) fails writes with UNAVAILABLE until it is writable again; a database file or
//! WAL deleted or replaced under the daemon refuses writes instead of acknowledging them into
//! a file the next start cannot see; and a data directory that cannot be created, or a
//! database file that cannot be written, is refused at start-up in one line.
//!
//! Mounting needs root: without it (or without `chattr`) a test prints why and passes without
//! checking, as the start-up tests do for unwritable directories.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use larder::pb;
use larder::store::DB_FILE;
use tempfile::TempDir;
use tonic::Code;

use crate::common::{Client, TestServer, assert_code, get, get_many, set, stats};
use crate::suite::binary::{Daemon, read_log, serve};
use crate::suite::startup::{assert_one_line_error, refuse, stopped_store};

/// A tmpfs mounted on a temporary directory, unmounted on drop (lazily if something still
/// holds it open, so a failed test never leaves it behind).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) with extra `options`; the
    /// reason when this machine does not let the tests mount.
    fn mount(size: &str, options: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let opts = format!("size={size}{options}");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "larder-test"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A tmpfs, or `None` after printing why the calling test checks nothing here.
fn tmpfs_or_skip(size: &str, options: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(size, options) {
        Ok(fs) => Some(fs),
        Err(reason) => {
            crate::common::skipped(format!("cannot mount a tmpfs here ({reason})"));
            None
        }
    }
}

/// Fills the file system holding `path` with a file there, until the disk refuses a single
/// page; bounded by `limit` bytes.
fn fill(path: &Path, limit: usize) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0;
    for chunk in [64 << 10, 4 << 10, 512] {
        let buf = vec![0u8; chunk];
        while written < limit {
            if file.write_all(&buf).is_err() {
                break;
            }
            written += chunk;
        }
    }
    assert!(written < limit, "the file system never filled up");
}

async fn health_status(server: &TestServer) -> i32 {
    crate::common::health(server.channel().await, "larder.v1.CacheService")
        .await
        .expect("health answers")
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

async fn try_set(
    c: &mut Client,
    key: &str,
    value: Vec<u8>,
) -> Result<pb::SetResponse, tonic::Status> {
    c.set(pb::SetRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

fn set_many_request(keys: &[&str], size: usize) -> pb::SetManyRequest {
    pb::SetManyRequest {
        namespace: String::new(),
        entries: keys
            .iter()
            .map(|k| pb::SetEntry {
                key: (*k).into(),
                value: vec![b'm'; size].into(),
                ttl_ms: 0,
            })
            .collect(),
    }
}

/// An inline rate limit of 3 per hour.
fn three_per_hour() -> pb::CheckRequest {
    pb::CheckRequest {
        key: "ip:192.0.2.1".into(),
        limit: 3,
        period_ms: 3_600_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_writes_whole_keeps_reads_and_recovers_without_a_restart() {
    let Some(fs) = tmpfs_or_skip("8m", "") else {
        return;
    };
    let data_dir = fs.path().join("data");
    let mut server =
        TestServer::start_with(|c| c.data_dir = data_dir.clone(), Default::default()).await;
    let mut c = server.client().await;
    let before = set(&mut c, "", "before", "kept", 0).await;
    let mut limits = server.rate_limits().await;

    let filler = fs.path().join("filler");
    fill(&filler, 16 << 20);

    // A write bigger than any room SQLite's files still have must fail, and say so.
    let full = assert_code(
        try_set(&mut c, "big", vec![b'b'; 512 << 10]).await,
        Code::ResourceExhausted,
    );
    assert!(!full.message().is_empty(), "{full:?}");
    let keys = ["m1", "m2", "m3"];
    assert_code(
        c.set_many(set_many_request(&keys, 256 << 10)).await,
        Code::ResourceExhausted,
    );
    let mut sessions = server.session_client().await;
    let big_data: std::collections::HashMap<String, String> = (0..3)
        .map(|i| (format!("d{i}"), "s".repeat(60 << 10)))
        .collect();
    let create = pb::CreateSessionRequest {
        user_id: "42".into(),
        data: big_data,
        ..Default::default()
    };
    assert_code(
        sessions.create_session(create.clone()).await,
        Code::ResourceExhausted,
    );
    let listed = sessions
        .list_sessions(pb::ListSessionsRequest {
            user_id: "42".into(),
            ..Default::default()
        })
        .await
        .expect("sessions are read while the disk is full");
    assert!(
        listed.into_inner().sessions.is_empty(),
        "a refused session was kept"
    );
    // Nothing half-applied: none of the batch, and the old entry as it was, from memory and
    // from disk (Stats counts rows).
    assert_eq!(
        crate::common::found(&mut c, "", &["big", "m1", "m2", "m3"]).await,
        [false; 4]
    );
    let g = get(&mut c, "", "before").await;
    assert_eq!((g.value, g.version), ("kept".into(), before.version));
    assert_eq!(stats(&mut c, "").await.entries, 1);
    // A full disk is not a dead daemon: health stays SERVING and the liveness check answers.
    assert_eq!(health_status(&server).await, SERVING);
    server
        .store()
        .ping()
        .await
        .expect("the liveness check answers");
    // Rate limits answer from memory meanwhile; their state reaches the disk later.
    for _ in 0..3 {
        assert!(
            limits
                .check(three_per_hour())
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
    }

    std::fs::remove_file(&filler).unwrap();
    let stored = try_set(&mut c, "big", vec![b'b'; 512 << 10])
        .await
        .expect("space is back");
    assert!(stored.stored);
    let versions = c
        .set_many(set_many_request(&keys, 256 << 10))
        .await
        .expect("space is back")
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 3);
    sessions
        .create_session(create)
        .await
        .expect("space is back");
    server
        .store()
        .flush_rate_limits()
        .await
        .expect("the rate-limit state is written once space is back");

    drop((c, limits, sessions));
    server.restart().await;
    let mut c = server.client().await;
    let entries = get_many(&mut c, "", &["before", "big", "m1", "m2", "m3"]).await;
    assert!(entries.iter().all(|e| e.found), "{entries:?}");
    assert_eq!(entries[1].version, stored.version);
    let mut limits = server.rate_limits().await;
    let after = limits.check(three_per_hour()).await.unwrap().into_inner();
    assert!(
        !after.allowed,
        "the budget spent while the disk was full was lost: {after:?}"
    );
    drop((c, limits));
    server.stop().await;
}

/// Makes files immutable (`chattr +i`) until dropped: the way to make a file unwritable for
/// root through the descriptors already open, as a file system remounted read-only after an
/// error does.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Makes `paths` immutable, after checking on a probe file beside the first that this
    /// file system stops writes through a descriptor already open (tmpfs, for one, does not).
    fn set(paths: &[PathBuf]) -> Result<Self, String> {
        let dir = paths[0].parent().expect("a file in a directory");
        let probe_path = dir.join(".immutable-probe");
        let mut probe = std::fs::File::create(&probe_path).map_err(|e| e.to_string())?;
        let guard = Self::make(std::slice::from_ref(&probe_path))?;
        let stopped = probe.write_all(b"x").is_err();
        drop(guard);
        let _ = std::fs::remove_file(&probe_path);
        if !stopped {
            return Err(format!(
                "the file system of {} lets open descriptors write to an immutable file",
                dir.display()
            ));
        }
        Self::make(paths)
    }

    fn make(paths: &[PathBuf]) -> Result<Self, String> {
        let mut done = Self(Vec::new());
        for path in paths {
            let out = Command::new("chattr")
                .arg("+i")
                .arg(path)
                .output()
                .map_err(|e| format!("cannot run chattr: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "chattr +i {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            done.0.push(path.clone());
        }
        Ok(done)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(path).status();
        }
    }
}

fn wal_of(data_dir: &Path) -> PathBuf {
    larder::store::wal_path(&data_dir.join(DB_FILE))
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_turning_read_only_under_the_daemon_fails_writes_unavailable_until_writable() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    let before = set(&mut c, "", "before", "kept", 0).await;
    let files = [server.data_dir().join(DB_FILE), wal_of(server.data_dir())];
    let frozen = match Immutable::set(&files) {
        Ok(frozen) => frozen,
        Err(reason) => {
            crate::common::skipped(format!("cannot make files immutable here ({reason})"));
            return;
        }
    };
    let refused = assert_code(
        try_set(&mut c, "during", vec![b'd'; 64 << 10]).await,
        Code::Unavailable,
    );
    assert!(!refused.message().is_empty(), "{refused:?}");
    let g = get(&mut c, "", "before").await;
    assert_eq!((g.value, g.version), ("kept".into(), before.version));
    assert_eq!(stats(&mut c, "").await.entries, 1, "reads from disk go on");
    assert_eq!(health_status(&server).await, SERVING);
    assert!(
        !get(&mut c, "", "during").await.found,
        "the refused write left nothing"
    );

    drop(frozen);
    assert!(
        try_set(&mut c, "after", b"a".to_vec())
            .await
            .unwrap()
            .stored
    );
    drop(c);
    server.restart().await;
    let mut c = server.client().await;
    assert_eq!(
        crate::common::found(&mut c, "", &["before", "during", "after"]).await,
        [true, false, true]
    );
    drop(c);
    server.stop().await;
}

/// A Set that must be refused because a database file moved. The client is told to restart,
/// and nothing of the server's paths or process (which file, where, `/proc/<pid>`: the log
/// has those).
async fn refused_because_moved(c: &mut Client, key: &str, data_dir: &Path) {
    let status = assert_code(try_set(c, key, b"v".to_vec()).await, Code::Unavailable);
    let message = status.message();
    assert!(message.contains("restart"), "{status:?}");
    for private in [
        &*data_dir.display().to_string(),
        DB_FILE,
        "/proc/",
        &std::process::id().to_string(),
    ] {
        assert!(!message.contains(private), "{private:?} sent: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_file_deleted_under_the_daemon_refuses_writes_and_keeps_reads() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "before", "kept", 0).await;
    std::fs::remove_file(server.data_dir().join(DB_FILE)).unwrap();

    refused_because_moved(&mut c, "after", server.data_dir()).await;
    assert_code(
        c.delete(pb::DeleteRequest {
            namespace: String::new(),
            key: "before".into(),
            ..Default::default()
        })
        .await,
        Code::Unavailable,
    );
    assert_eq!(get(&mut c, "", "before").await.value, "kept", "reads go on");
    assert_eq!(health_status(&server).await, SERVING);
    drop(c);
    // A clean stop still works; the next start makes a new, empty database at the path, and
    // no write was acknowledged that it lacks.
    server.restart().await;
    let mut c = server.client().await;
    assert_eq!(
        crate::common::found(&mut c, "", &["before", "after"]).await,
        [false, false]
    );
    assert!(try_set(&mut c, "new", b"v".to_vec()).await.unwrap().stored);
    drop(c);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_file_replaced_under_the_daemon_refuses_writes_and_a_restart_serves_it() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "old", "old file", 0).await;

    // Another store's database, moved over the live one (a restore done without stopping).
    let other = tempfile::tempdir().unwrap();
    let other_data = stopped_store(other.path(), 1).await;
    let db = server.data_dir().join(DB_FILE);
    std::fs::rename(other_data.join(DB_FILE), &db).unwrap();

    refused_because_moved(&mut c, "after", server.data_dir()).await;
    assert_eq!(get(&mut c, "", "old").await.value, "old file");
    drop(c);
    server.restart().await;
    let mut c = server.client().await;
    // The restart serves the file now at the path: the other store's entry (k0, written by
    // `stopped_store`), and nothing written to the old file after it was replaced.
    assert_eq!(
        crate::common::found(&mut c, "", &["k0", "old", "after"]).await,
        [true, false, false]
    );
    drop(c);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wal_deleted_under_the_daemon_refuses_writes_and_a_clean_stop_keeps_its_commits() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "before", "in the WAL", 0).await;
    std::fs::remove_file(wal_of(server.data_dir())).unwrap();

    // A reader connection opened after the deletion may have made a new, empty WAL at the
    // path: "deleted" or "replaced", the writer refuses either way.
    refused_because_moved(&mut c, "after", server.data_dir()).await;
    drop(c);
    // The clean stop checkpoints the old WAL's commits into the database file.
    server.restart().await;
    let mut c = server.client().await;
    assert_eq!(get(&mut c, "", "before").await.value, "in the WAL");
    assert!(
        try_set(&mut c, "after", b"v".to_vec())
            .await
            .unwrap()
            .stored
    );
    drop(c);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_that_cannot_be_created_is_refused_in_one_line() {
    let Some(fs) = tmpfs_or_skip("1m", ",ro") else {
        return;
    };
    let data_dir = fs.path().join("data");
    let logs = tempfile::tempdir().unwrap();
    let (status, stderr) = refuse(&data_dir, &[], &logs.path().join("refused.log")).await;
    assert_one_line_error(
        status,
        &stderr,
        &[
            "cannot create data directory",
            &data_dir.display().to_string(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_file_that_cannot_be_written_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = stopped_store(tmp.path(), 1).await;
    let db = data_dir.join(DB_FILE);
    let frozen = match Immutable::set(std::slice::from_ref(&db)) {
        Ok(frozen) => frozen,
        Err(reason) => {
            crate::common::skipped(format!("cannot make files immutable here ({reason})"));
            return;
        }
    };
    let (status, stderr) = refuse(&data_dir, &[], &tmp.path().join("ro.log")).await;
    drop(frozen);
    assert_one_line_error(status, &stderr, &[&db.display().to_string(), "read-only"]);
}

/// A shared library that, preloaded into larder, makes `fsync` and `fdatasync` fail with EIO
/// while the file named by `FAULT_FSYNC_FILE` exists: the failure a dying disk or a lost
/// network volume gives, without a device-mapper target. Built with the C compiler the bundled
/// SQLite needs anyway.
const FAILING_FSYNC_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *marker = getenv("FAULT_FSYNC_FILE");
    return marker && access(marker, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#;

/// Builds the failing-fsync library in `dir`; the reason when there is no C compiler.
fn failing_fsync_library(dir: &Path) -> Result<PathBuf, String> {
    let source = dir.join("failing_fsync.c");
    let library = dir.join("failing_fsync.so");
    std::fs::write(&source, FAILING_FSYNC_C).map_err(|e| e.to_string())?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(library)
}

/// A `larder serve` in a temporary directory whose fsync fails while `marker` exists.
struct FailingFsync {
    cmd: Command,
    data_dir: PathBuf,
    socket: PathBuf,
    marker: PathBuf,
    log: PathBuf,
}

/// [`FailingFsync`] in `dir`, or `None` after printing why the calling test checks nothing.
fn failing_fsync(dir: &Path) -> Option<FailingFsync> {
    let library = match failing_fsync_library(dir) {
        Ok(library) => library,
        Err(reason) => {
            crate::common::skipped(format!("cannot build the failing-fsync library ({reason})"));
            return None;
        }
    };
    let data_dir = dir.join("data");
    let socket = dir.join("l.sock");
    let marker = dir.join("fail-fsync");
    let log = dir.join("first.log");
    let mut cmd = serve(&data_dir, &socket, &log);
    cmd.env("LD_PRELOAD", &library)
        .env("FAULT_FSYNC_FILE", &marker);
    Some(FailingFsync {
        cmd,
        data_dir,
        socket,
        marker,
        log,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_fsync_error_fails_the_write_unavailable_and_it_is_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = failing_fsync(tmp.path()) else {
        return;
    };
    let mut cmd = f.cmd;
    cmd.args(["--synchronous", "full"]);
    let mut daemon = Daemon::start(cmd, f.log.clone());
    let channel = daemon.channel(&f.socket).await;
    let mut c = Client::new(channel.clone());
    let before = set(&mut c, "", "before", "synced", 0).await;

    std::fs::write(&f.marker, "").unwrap();
    let failed = assert_code(
        try_set(&mut c, "during", b"lost".to_vec()).await,
        Code::Unavailable,
    );
    assert!(!failed.message().is_empty(), "{failed:?}");
    assert!(
        !get(&mut c, "", "during").await.found,
        "a failed commit is not served"
    );
    let g = get(&mut c, "", "before").await;
    assert_eq!((g.value, g.version), ("synced".into(), before.version));
    assert_eq!(crate::common::health(channel, "").await.unwrap(), SERVING);

    std::fs::remove_file(&f.marker).unwrap();
    assert!(
        try_set(&mut c, "after", b"synced".to_vec())
            .await
            .unwrap()
            .stored
    );
    drop(c);
    daemon.terminate().await;
    let logged = read_log(&f.log);
    assert!(logged.contains("write batch rolled back"), "{logged}");

    let mut daemon = Daemon::spawn(&f.data_dir, &f.socket, tmp.path().join("second.log"));
    let mut c = daemon.client(&f.socket).await;
    assert_eq!(
        crate::common::found(&mut c, "", &["before", "during", "after"]).await,
        [true, false, true]
    );
    drop(c);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_started_on_a_full_disk_is_refused_in_one_line_saying_so() {
    let Some(fs) = tmpfs_or_skip("8m", "") else {
        return;
    };
    let data_dir = stopped_store(fs.path(), 1).await;
    let filler = fs.path().join("filler");
    fill(&filler, 16 << 20);
    let logs = tempfile::tempdir().unwrap();
    let (status, stderr) = refuse(&data_dir, &[], &logs.path().join("full.log")).await;
    assert_one_line_error(
        status,
        &stderr,
        &["no space left", &data_dir.display().to_string()],
    );

    std::fs::remove_file(&filler).unwrap();
    let socket = logs.path().join("l.sock");
    let mut daemon = Daemon::spawn(&data_dir, &socket, logs.path().join("second.log"));
    let mut c = daemon.client(&socket).await;
    assert!(get(&mut c, "", "k0").await.found, "the store is intact");
    drop(c);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_synchronous_normal_an_fsync_error_fails_only_the_checkpoint_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = failing_fsync(tmp.path()) else {
        return;
    };
    let mut daemon = Daemon::start(f.cmd, f.log.clone());
    let mut c = daemon.client(&f.socket).await;
    std::fs::write(&f.marker, "").unwrap();
    // Commits do not wait for fsync under `normal`: the write is acknowledged.
    let written = set(&mut c, "", "k", "in the WAL", 0).await;
    drop(c);
    // The final checkpoint cannot sync the database file: the stop is not clean.
    let status = daemon.signal("-TERM").await;
    let logged = read_log(&f.log);
    assert!(!status.success(), "{logged}");
    assert!(logged.contains("checkpoint"), "{logged}");

    std::fs::remove_file(&f.marker).unwrap();
    let mut daemon = Daemon::spawn(&f.data_dir, &f.socket, tmp.path().join("second.log"));
    let mut c = daemon.client(&f.socket).await;
    let g = get(&mut c, "", "k").await;
    assert_eq!((g.value, g.version), ("in the WAL".into(), written.version));
    drop(c);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_fsync_error_at_start_up_is_refused_in_one_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = failing_fsync(tmp.path()) else {
        return;
    };
    std::fs::write(&f.marker, "").unwrap();
    let (status, stderr) = crate::suite::binary::refused(f.cmd, &f.log).await;
    assert_one_line_error(
        status,
        &stderr,
        &[
            &f.data_dir.join(DB_FILE).display().to_string(),
            "fsync failed",
        ],
    );
}
