//! `larder backup` through the built binary: a copy of a live daemon's store taken while
//! writers keep committing holds every write acknowledged before it started (a SetMany whole or
//! not at all), passes SQLite's integrity check, is one file, and restores into a daemon that
//! serves the data; a stopped store backs up the same way, finding its data directory by flag,
//! variable or config file as `serve` does; an existing DEST is refused and left as it was; a
//! missing data directory or database, a foreign file, a missing DEST directory and a full
//! disk are each one clear line and a non-zero exit.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::session_service_client::SessionServiceClient;
use larder::store::SCHEMA_VERSION;
use larder::store::backup::PAGES_PER_STEP;
use rusqlite::Connection;
use tonic::transport::Channel;

use crate::common::{Client, Sessions, get, get_many, get_session, set};
use crate::suite::binary::{Daemon, larder, read_log};

/// The longest a `larder backup` may run before the test gives up on it: a guard against a
/// hang (a copy that restarts for ever), not a measurement.
const BACKUP_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `larder backup` with `args` (and `env`); returns its exit status, stdout and stderr.
async fn run_backup(
    args: &[&OsStr],
    env: &[(&str, &OsStr)],
    logs: &Path,
) -> (ExitStatus, String, String) {
    let out = logs.with_extension("out");
    let err = logs.with_extension("err");
    let mut full: Vec<&OsStr> = vec!["backup".as_ref()];
    full.extend_from_slice(args);
    let mut cmd = larder(&full, &err);
    cmd.stdout(File::create(&out).expect("creating the stdout file"));
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().expect("starting larder backup");
    let waited = tokio::time::timeout(
        BACKUP_DEADLINE,
        tokio::task::spawn_blocking(move || {
            let status = child.wait();
            (status, child)
        }),
    )
    .await;
    let status = match waited {
        Ok(joined) => joined.unwrap().0.expect("waiting for larder backup"),
        Err(_) => panic!(
            "larder backup still runs after {BACKUP_DEADLINE:?}:\n{}",
            read_log(&err)
        ),
    };
    (status, read_log(&out), read_log(&err))
}

/// `--data-dir DIR DEST`.
fn dir_and_dest<'a>(data_dir: &'a Path, dest: &'a Path) -> [&'a OsStr; 3] {
    [
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        dest.as_os_str(),
    ]
}

/// The restore procedure of docs/operations.md: the daemon of `data_dir` is stopped; its database is
/// replaced by the backup and any `-wal`/`-shm` beside it deleted.
fn restore(backup: &Path, data_dir: &Path) {
    std::fs::create_dir_all(data_dir).unwrap();
    for side in ["larder.db-wal", "larder.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(side));
    }
    std::fs::copy(backup, data_dir.join("larder.db")).unwrap();
}

/// Asserts that `path` is a standalone, sound Larder database of this build's schema.
fn assert_sound_copy(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the copy holds every session: owner-only, got {mode:o}"
    );
    let header = std::fs::read(path).unwrap();
    assert_eq!(
        (header[18], header[19]),
        (1, 1),
        "the copy is not in rollback-journal mode, so it needs a -wal beside it"
    );
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(
        !Path::new(&wal).exists(),
        "a -wal file was left beside the copy"
    );
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the copy");
    let check: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(check, ["ok"]);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts a failed backup: non-zero exit, nothing on stdout, one line of stderr holding each
/// of `mentions`, no panic.
#[track_caller]
fn assert_refused(result: &(ExitStatus, String, String), mentions: &[&str]) {
    let (status, stdout, stderr) = result;
    assert!(!status.success(), "the backup succeeded: {stdout}{stderr}");
    assert_eq!(stdout, "", "a failed backup printed a summary");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("larder: error: "), "{stderr:?}");
    for m in mentions {
        assert!(stderr.contains(m), "{stderr:?} does not mention {m:?}");
    }
}

/// Bulk values written before the live backup: more than two steps of the copy, so that the
/// writers commit between its steps.
const BULK_BATCHES: usize = 3 * PAGES_PER_STEP as usize * 4096 / (BULK_PER_BATCH * BULK_VALUE);
const BULK_PER_BATCH: usize = 100;
const BULK_VALUE: usize = 2048;
/// Entries of each SetMany a writer sends during the backup.
const BATCH: usize = 20;
/// Acknowledged writes each writer makes before the backup is started.
const BEFORE: usize = 25;

/// What the writers recorded: each acknowledged write, and whether it was acknowledged before
/// the backup was started (then it must be in the copy).
#[derive(Default)]
struct Acked {
    /// (key, version) of each Set.
    sets: Vec<(String, u64, bool)>,
    /// Index of each SetMany sent, acknowledged or not (the last may be in flight at the end).
    batches: Vec<(usize, Option<bool>)>,
    /// (token, user_id, n) of each session.
    sessions: Vec<(String, String, usize, bool)>,
}

async fn set_writer(
    mut c: Client,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> Acked {
    let mut out = Acked::default();
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let key = format!("set:{i}");
        let r = set(&mut c, "live", &key, format!("value {i}"), 0).await;
        assert!(r.stored);
        out.sets
            .push((key, r.version, !started.load(Ordering::SeqCst)));
        acks.fetch_add(1, Ordering::SeqCst);
    }
    out
}

async fn batch_writer(
    mut c: Client,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> Acked {
    let mut out = Acked::default();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let entries = (0..BATCH)
            .map(|j| pb::SetEntry {
                key: format!("b{n}:{j}"),
                value: format!("batch {n}").into(),
                ttl_ms: 0,
            })
            .collect();
        out.batches.push((n, None));
        c.set_many(pb::SetManyRequest {
            namespace: "batches".into(),
            entries,
        })
        .await
        .unwrap_or_else(|s| panic!("SetMany {n}: {s:?}"));
        out.batches[n].1 = Some(!started.load(Ordering::SeqCst));
        acks.fetch_add(1, Ordering::SeqCst);
    }
    out
}

async fn session_writer(
    mut c: Sessions,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> Acked {
    let mut out = Acked::default();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let user = format!("user-{n}");
        let r = crate::common::create_session(
            &mut c,
            pb::CreateSessionRequest {
                user_id: user.clone(),
                data: HashMap::from([("n".to_owned(), n.to_string())]),
                ..Default::default()
            },
        )
        .await;
        out.sessions
            .push((r.token, user, n, !started.load(Ordering::SeqCst)));
        acks.fetch_add(1, Ordering::SeqCst);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_concurrent_writes_holds_every_write_acknowledged_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let backups = tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let dest = backups.join("larder-backup.db");

    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("live.log"));
    let channel: Channel = daemon.channel(&socket).await;
    let mut c = CacheServiceClient::new(channel.clone());
    let bulk = vec![b'x'; BULK_VALUE];
    for b in 0..BULK_BATCHES {
        let entries = (0..BULK_PER_BATCH)
            .map(|j| pb::SetEntry {
                key: format!("bulk:{b}:{j}"),
                value: bulk.clone().into(),
                ttl_ms: 0,
            })
            .collect();
        c.set_many(pb::SetManyRequest {
            namespace: "bulk".into(),
            entries,
        })
        .await
        .unwrap();
    }

    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let flags = |i: usize| (started.clone(), stop.clone(), counters[i].clone());
    let (s, x, n) = flags(0);
    let sets = tokio::spawn(set_writer(
        CacheServiceClient::new(channel.clone()),
        s,
        x,
        n,
    ));
    let (s, x, n) = flags(1);
    let batches = tokio::spawn(batch_writer(
        CacheServiceClient::new(channel.clone()),
        s,
        x,
        n,
    ));
    let (s, x, n) = flags(2);
    let sessions = tokio::spawn(session_writer(
        SessionServiceClient::new(channel.clone()),
        s,
        x,
        n,
    ));
    // Every writer has writes acknowledged before the backup starts; waiting on counts, not
    // on time.
    while counters.iter().any(|n| n.load(Ordering::SeqCst) < BEFORE) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.store(true, Ordering::SeqCst);
    let result = run_backup(&dir_and_dest(&data_dir, &dest), &[], &tmp.path().join("b")).await;
    stop.store(true, Ordering::SeqCst);
    let sets = sets.await.unwrap().sets;
    let batches = batches.await.unwrap().batches;
    let sessions = sessions.await.unwrap().sessions;

    let (status, stdout, stderr) = result;
    assert!(status.success(), "larder backup failed: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(
        stdout.contains(&dest.display().to_string()) && stdout.contains("pages"),
        "{stdout:?}"
    );
    println!(
        "{stdout}writes acknowledged while the backup ran: {} sets, {} batches, {} sessions",
        sets.iter().filter(|s| !s.2).count(),
        batches.iter().filter(|b| b.1 == Some(false)).count(),
        sessions.iter().filter(|s| !s.3).count()
    );
    assert_eq!(
        names_in(&backups),
        ["larder-backup.db"],
        "temporary files left"
    );
    assert_sound_copy(&dest);

    // The live daemon was not disturbed: it still serves, and stops cleanly.
    assert_eq!(get(&mut c, "live", "set:0").await.value, "value 0");
    drop((c, channel));
    daemon.terminate().await;

    let restored = tmp.path().join("restored");
    restore(&dest, &restored);
    let socket = tmp.path().join("r.sock");
    let mut daemon = Daemon::spawn(&restored, &socket, tmp.path().join("restored.log"));
    let channel = daemon.channel(&socket).await;
    let mut c = CacheServiceClient::new(channel.clone());
    let mut s = SessionServiceClient::new(channel);

    for b in 0..BULK_BATCHES {
        let keys: Vec<String> = (0..BULK_PER_BATCH)
            .map(|j| format!("bulk:{b}:{j}"))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for e in get_many(&mut c, "bulk", &keys).await {
            assert!(e.found && e.value.len() == BULK_VALUE, "{}", e.key);
        }
    }
    for (key, version, before) in &sets {
        let g = get(&mut c, "live", key).await;
        if *before {
            assert!(g.found, "{key}, acknowledged before the backup, is missing");
        }
        if g.found {
            let i = &key["set:".len()..];
            assert_eq!(
                (g.value, g.version),
                (format!("value {i}").into(), *version),
                "{key}"
            );
        }
    }
    for (n, acked) in &batches {
        let keys: Vec<String> = (0..BATCH).map(|j| format!("b{n}:{j}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let entries = get_many(&mut c, "batches", &keys).await;
        let found = entries.iter().filter(|e| e.found).count();
        assert!(
            found == 0 || found == BATCH,
            "SetMany {n} is in the backup in part: {found} of {BATCH} entries"
        );
        if *acked == Some(true) {
            assert_eq!(found, BATCH, "SetMany {n}, acknowledged before, is missing");
        }
        if found == BATCH {
            assert!(entries.iter().all(|e| e.value == format!("batch {n}")));
        }
    }
    for (token, user, n, before) in &sessions {
        let g = get_session(&mut s, token).await;
        if *before {
            assert!(
                g.found,
                "session {n}, created before the backup, is missing"
            );
        }
        if g.found {
            let session = g.session.unwrap();
            assert_eq!(session.user_id, *user);
            assert_eq!(session.data.get("n"), Some(&n.to_string()));
        }
    }
    drop((c, s));
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_store_backs_up_and_finds_its_data_dir_as_serve_does() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("first.log"));
    let mut c = daemon.client(&socket).await;
    let written = set(&mut c, "", "greeting", "hello", 0).await;
    drop(c);
    daemon.terminate().await;

    // LARDER_DATA_DIR wins over the config file's data_dir.
    let config = tmp.path().join("larder.toml");
    std::fs::write(&config, "data_dir = \"/nonexistent/larder-data\"\n").unwrap();
    let dest = tmp.path().join("by-env.db");
    let (status, stdout, stderr) = run_backup(
        &["--config".as_ref(), config.as_os_str(), dest.as_os_str()],
        &[("LARDER_DATA_DIR", data_dir.as_os_str())],
        &tmp.path().join("env"),
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("by-env.db"), "{stdout}");
    assert_sound_copy(&dest);
    // The config file alone would name a directory that does not exist.
    let result = run_backup(
        &["--config".as_ref(), config.as_os_str(), dest.as_os_str()],
        &[],
        &tmp.path().join("file"),
    )
    .await;
    assert_refused(&result, &["/nonexistent/larder-data", "does not exist"]);
    // The flag wins over the variable.
    let by_flag = tmp.path().join("by-flag.db");
    let (status, _, stderr) = run_backup(
        &dir_and_dest(&data_dir, &by_flag),
        &[("LARDER_DATA_DIR", "/nonexistent/larder-data".as_ref())],
        &tmp.path().join("flag"),
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert_sound_copy(&by_flag);

    let restored = tmp.path().join("restored");
    restore(&dest, &restored);
    let mut daemon = Daemon::spawn(&restored, &socket, tmp.path().join("restored.log"));
    let mut c = daemon.client(&socket).await;
    let g = get(&mut c, "", "greeting").await;
    assert_eq!(
        (g.found, g.value, g.version),
        (true, "hello".into(), written.version)
    );
    let next = set(&mut c, "", "greeting", "again", 0).await;
    assert!(
        next.version > written.version,
        "versions go on from the copy"
    );
    drop(c);
    daemon.terminate().await;

    // The source still starts as it was.
    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("source.log"));
    let mut c = daemon.client(&socket).await;
    assert_eq!(get(&mut c, "", "greeting").await.value, "hello");
    drop(c);
    daemon.terminate().await;
}

/// A data directory with a few entries, its daemon stopped.
async fn stopped_store(tmp: &Path) -> PathBuf {
    let data_dir = tmp.join("data");
    let socket = tmp.join("l.sock");
    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.join("store.log"));
    let mut c = daemon.client(&socket).await;
    for i in 0..10 {
        set(&mut c, "", &format!("k{i}"), format!("v{i}"), 0).await;
    }
    drop(c);
    daemon.terminate().await;
    data_dir
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_dest_is_refused_and_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = stopped_store(tmp.path()).await;
    let backups = tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let dest = backups.join("monday.db");
    std::fs::write(&dest, b"last week's backup").unwrap();

    let result = run_backup(&dir_and_dest(&data_dir, &dest), &[], &tmp.path().join("a")).await;
    assert_refused(
        &result,
        &[&dest.display().to_string(), "already exists", "--force"],
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"last week's backup");
    assert_eq!(names_in(&backups), ["monday.db"], "temporary files left");

    // --force replaces it.
    let mut args = dir_and_dest(&data_dir, &dest).to_vec();
    args.insert(0, "--force".as_ref());
    let (status, _, stderr) = run_backup(&args, &[], &tmp.path().join("b")).await;
    assert!(status.success(), "{stderr}");
    assert_sound_copy(&dest);
    assert_eq!(names_in(&backups), ["monday.db"]);

    // Even with --force, never onto the store's own database.
    let own = data_dir.join("larder.db");
    let before = std::fs::read(&own).unwrap();
    let mut args = dir_and_dest(&data_dir, &own).to_vec();
    args.insert(0, "--force".as_ref());
    let result = run_backup(&args, &[], &tmp.path().join("c")).await;
    assert_refused(&result, &["a file of the store"]);
    assert_eq!(std::fs::read(&own).unwrap(), before);

    // A DEST whose directory does not exist.
    let nowhere = tmp.path().join("no-such-dir").join("x.db");
    let result = run_backup(
        &dir_and_dest(&data_dir, &nowhere),
        &[],
        &tmp.path().join("d"),
    )
    .await;
    assert_refused(&result, &["no-such-dir", "does not exist"]);
    // A DEST that is a directory.
    let result = run_backup(
        &dir_and_dest(&data_dir, &backups),
        &[],
        &tmp.path().join("e"),
    )
    .await;
    assert_refused(&result, &["is a directory"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_without_a_larder_database_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out.db");

    let missing = tmp.path().join("no-such-data");
    let result = run_backup(&dir_and_dest(&missing, &dest), &[], &tmp.path().join("a")).await;
    assert_refused(&result, &[&missing.display().to_string(), "does not exist"]);

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let result = run_backup(&dir_and_dest(&empty, &dest), &[], &tmp.path().join("b")).await;
    assert_refused(
        &result,
        &[
            &empty.join("larder.db").display().to_string(),
            "no larder database",
        ],
    );

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    Connection::open(foreign.join("larder.db"))
        .unwrap()
        .execute_batch(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY); INSERT INTO orders DEFAULT VALUES;",
        )
        .unwrap();
    let result = run_backup(&dir_and_dest(&foreign, &dest), &[], &tmp.path().join("c")).await;
    assert_refused(&result, &["not a larder database", "orders"]);

    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("larder.db"), vec![0x5a; 16 << 10]).unwrap();
    let result = run_backup(&dir_and_dest(&garbage, &dest), &[], &tmp.path().join("d")).await;
    assert_refused(&result, &["not a SQLite database"]);

    assert!(!dest.exists());
    assert!(
        !names_in(tmp.path()).iter().any(|n| n.contains("tmp")),
        "temporary files left: {:?}",
        names_in(tmp.path())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_at_dest_is_a_clear_error_and_writes_nothing() {
    // A file system smaller than the store: a 256 KiB tmpfs, mounted in a mount namespace of
    // the backup's own (unshare -m), so nothing outside the test ever sees it.
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = stopped_store(tmp.path()).await;
    let socket = tmp.path().join("l.sock");
    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("fill.log"));
    let mut c = daemon.client(&socket).await;
    set(&mut c, "", "big", vec![b'x'; 1 << 20], 0).await;
    drop(c);
    daemon.terminate().await;

    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let err = tmp.path().join("full.err");
    let script = "mount -t tmpfs -o size=256k larder-test \"$1\" || exit 111; \
                  shift; exec \"$@\"";
    let status = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&small)
        .arg(env!("CARGO_BIN_EXE_larder"))
        .args(["backup", "--data-dir"])
        .arg(&data_dir)
        .arg(small.join("out.db"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(File::create(&err).unwrap())
        .status();
    let stderr = read_log(&err);
    match status {
        Ok(s) if s.code() == Some(111) || (s.code() == Some(1) && stderr.contains("unshare")) => {
            crate::common::skipped(format!(
                "cannot mount a small tmpfs in a private mount namespace: {stderr}"
            ));
            return;
        }
        Err(e) => {
            crate::common::skipped(format!("cannot run unshare: {e}"));
            return;
        }
        Ok(s) => {
            assert!(!s.success(), "the backup fit in 256 KiB: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
            assert!(stderr.contains("no space left"), "{stderr:?}");
        }
    }
    // The tmpfs went with the namespace; the directory underneath never saw a file.
    assert_eq!(names_in(&small), Vec::<String>::new());
}
