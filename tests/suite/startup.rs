//! `larder serve` refusing to start, through the built binary: a corrupt database (random
//! bytes, a truncated file), a database of another program, a schema newer than this build, a
//! data directory it may not write, a TCP port in use (which creates no data directory), and a config file with an unknown key or
//! a bad value. Each is a non-zero exit and one line on stderr naming the file, directory, key
//! or address at fault; never a panic, never a change to the file it refused. Flags a new user
//! gets wrong first (a log level, a port, a size) are refused saying what is expected.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use larder::store::SCHEMA_VERSION;
use rusqlite::Connection;

use crate::common::set;
use crate::suite::binary::{Daemon, larder, refused};

/// `larder serve` on `data_dir`, TCP on a free port, plus `extra` flags.
fn serve_on(data_dir: &Path, extra: &[&OsStr], log: &Path) -> Command {
    let mut args: Vec<&OsStr> = vec![
        "serve".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&OsStr::new("--listen")) {
        args.extend([OsStr::new("--listen"), OsStr::new("127.0.0.1:0")]);
    }
    larder(&args, log)
}

/// Asserts that larder exited non-zero, and that its error is one line (the last of stderr,
/// after any log lines) holding each of `mentions`, with no panic.
#[track_caller]
pub(crate) fn assert_one_line_error(status: ExitStatus, stderr: &str, mentions: &[&str]) {
    assert!(!status.success(), "larder started: {stderr}");
    assert_eq!(status.code(), Some(1), "not a plain failure exit: {stderr}");
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("larder: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "not one error line: {stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(errors[0]),
        "the error is not the last line, so it spans several: {stderr}"
    );
    for m in mentions {
        assert!(
            errors[0].contains(m),
            "{:?} does not mention {m:?}",
            errors[0]
        );
    }
}

/// Runs `larder serve` on `data_dir` expecting a refusal; returns what it printed.
pub(crate) async fn refuse(data_dir: &Path, extra: &[&OsStr], log: &Path) -> (ExitStatus, String) {
    refused(serve_on(data_dir, extra, log), log).await
}

/// A data directory whose daemon wrote `entries` values of 8 KiB and stopped.
pub(crate) async fn stopped_store(tmp: &Path, entries: usize) -> PathBuf {
    let data_dir = tmp.join("data");
    let socket = tmp.join("store.sock");
    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.join("store.log"));
    let mut c = daemon.client(&socket).await;
    for i in 0..entries {
        set(&mut c, "", &format!("k{i}"), vec![b'v'; 8 << 10], 0).await;
    }
    drop(c);
    daemon.terminate().await;
    data_dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_database_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();

    // Random bytes where the database should be.
    let random = tmp.path().join("random");
    std::fs::create_dir(&random).unwrap();
    let db = random.join("larder.db");
    let mut bytes = Vec::new();
    File::open("/dev/urandom")
        .unwrap()
        .take(64 << 10)
        .read_to_end(&mut bytes)
        .unwrap();
    std::fs::write(&db, &bytes).unwrap();
    let (status, stderr) = refuse(&random, &[], &tmp.path().join("random.log")).await;
    assert_one_line_error(
        status,
        &stderr,
        &[&db.display().to_string(), "not a SQLite database", "backup"],
    );
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "the file was changed");

    // A real database cut in half.
    let data_dir = stopped_store(tmp.path(), 40).await;
    let db = data_dir.join("larder.db");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 64 << 10, "the store is too small to cut: {len}");
    File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (status, stderr) = refuse(&data_dir, &[], &tmp.path().join("cut.log")).await;
    assert_one_line_error(
        status,
        &stderr,
        &[&db.display().to_string(), "is corrupt", "backup"],
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), len / 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_of_another_program_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    // Without a schema version (most programs), and with one of its own: neither is taken for
    // a Larder schema, old or new.
    for user_version in [0, SCHEMA_VERSION + 1] {
        let data_dir = tmp.path().join(format!("app-{user_version}"));
        std::fs::create_dir(&data_dir).unwrap();
        let db = data_dir.join("larder.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch(&format!(
                "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER); \
                 INSERT INTO invoices (total) VALUES (42); PRAGMA user_version = {user_version};"
            ))
            .unwrap();
        let before = std::fs::read(&db).unwrap();
        let log = tmp.path().join(format!("app-{user_version}.log"));
        let (status, stderr) = refuse(&data_dir, &[], &log).await;
        assert_one_line_error(
            status,
            &stderr,
            &[
                &db.display().to_string(),
                "not a larder database",
                "invoices",
            ],
        );
        assert!(!stderr.contains("newer"), "{stderr}");
        assert_eq!(std::fs::read(&db).unwrap(), before, "the file was changed");
        assert!(
            !data_dir.join("larder.db-wal").exists(),
            "the file was switched to WAL mode"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_newer_than_this_build_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = stopped_store(tmp.path(), 1).await;
    let db = data_dir.join("larder.db");
    let newer = SCHEMA_VERSION + 1;
    Connection::open(&db)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {newer}"))
        .unwrap();
    let (status, stderr) = refuse(&data_dir, &[], &tmp.path().join("newer.log")).await;
    assert_one_line_error(
        status,
        &stderr,
        &[
            &db.display().to_string(),
            &format!("schema version {newer}, newer"),
            &format!("({SCHEMA_VERSION})"),
        ],
    );
    let version: i64 = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, newer, "the schema version was changed");
}

/// How a test makes a directory unwritable for larder. Root ignores file modes, so as root
/// the directory is bind-mounted read-only in a private mount namespace of larder's own
/// (nothing outside it sees the mount, and it goes when larder exits) or, failing that, made
/// immutable with `chattr +i` (undone on drop).
enum Unwritable {
    /// Mode 0555: enough for a user other than root.
    Mode(PathBuf),
    /// `unshare -m` + `mount -o remount,bind,ro`.
    ReadOnlyMount,
    /// `chattr +i`.
    Immutable(PathBuf),
}

impl Unwritable {
    fn describe(&self) -> &'static str {
        match self {
            Unwritable::Mode(_) => "file mode 0555 (not root)",
            Unwritable::ReadOnlyMount => "a read-only bind mount in a private mount namespace",
            Unwritable::Immutable(_) => "chattr +i",
        }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        match self {
            Unwritable::Mode(dir) => {
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
            }
            Unwritable::ReadOnlyMount => {}
            Unwritable::Immutable(dir) => {
                let _ = Command::new("chattr")
                    .arg("-i")
                    .arg(dir.as_os_str())
                    .status();
            }
        }
    }
}

/// Exit code of the wrapper script when the mount could not be made.
const NO_MOUNT: i32 = 111;

/// Runs `larder serve` on `data_dir` made unwritable by the first technique that works here;
/// `None` (with the reasons) when none does.
async fn serve_unwritable(
    data_dir: &Path,
    log: &Path,
) -> Result<(Unwritable, ExitStatus, String), String> {
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(true);
    if !is_root {
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let how = Unwritable::Mode(data_dir.to_owned());
        let (status, stderr) = refuse(data_dir, &[], log).await;
        return Ok((how, status, stderr));
    }
    let mut reasons = Vec::new();

    let script = format!(
        "d=$1; shift; mount --bind \"$d\" \"$d\" && mount -o remount,bind,ro \"$d\" || exit \
         {NO_MOUNT}; exec \"$@\""
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script, "sh"])
        .arg(data_dir)
        .arg(env!("CARGO_BIN_EXE_larder"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LARDER_") {
            cmd.env_remove(name);
        }
    }
    match Command::new("unshare").arg("--version").output() {
        Ok(_) => {
            let (status, stderr) = refused(cmd, log).await;
            let failed_to_mount = status.code() == Some(NO_MOUNT)
                || stderr.lines().any(|l| l.starts_with("unshare:"));
            if !failed_to_mount {
                return Ok((Unwritable::ReadOnlyMount, status, stderr));
            }
            reasons.push(format!("read-only bind mount: {}", stderr.trim()));
        }
        Err(e) => reasons.push(format!("read-only bind mount: cannot run unshare: {e}")),
    }

    match Command::new("chattr")
        .arg("+i")
        .arg(data_dir)
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => {
            let how = Unwritable::Immutable(data_dir.to_owned());
            let (status, stderr) = refuse(data_dir, &[], log).await;
            return Ok((how, status, stderr));
        }
        Ok(out) => reasons.push(format!(
            "chattr +i: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => reasons.push(format!("chattr +i: {e}")),
    }
    Err(reasons.join("; "))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_without_write_permission_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A store that worked, whose directory then became read-only: its lock file and database
    // exist, so only the directory itself says no.
    let data_dir = stopped_store(tmp.path(), 1).await;
    let before: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    match serve_unwritable(&data_dir, &tmp.path().join("ro.log")).await {
        Ok((how, status, stderr)) => {
            println!("unwritable data directory made with {}", how.describe());
            assert_one_line_error(
                status,
                &stderr,
                &[&data_dir.display().to_string(), "not writable"],
            );
            drop(how);
        }
        Err(reasons) => {
            crate::common::skipped(format!(
                "no way to make a directory unwritable for root here ({reasons})"
            ));
            return;
        }
    }
    let mut after: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(
        before, after,
        "files appeared or vanished in the data directory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_port_in_use_is_refused_and_releases_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data_dir = tmp.path().join("data");
    let (status, stderr) = refuse(
        &data_dir,
        &["--listen".as_ref(), addr.as_ref()],
        &tmp.path().join("port.log"),
    )
    .await;
    assert_one_line_error(status, &stderr, &[&addr, "already in use", "--listen"]);
    drop(taken);

    // The refused daemon closed its store: the next one gets the directory.
    let socket = tmp.path().join("l.sock");
    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("next.log"));
    let mut c = daemon.client(&socket).await;
    assert!(set(&mut c, "", "k", "v", 0).await.stored);
    drop(c);
    daemon.terminate().await;
}

/// A start that cannot listen leaves nothing behind: every listener is bound before the store
/// is opened, so a TCP port in use, a metrics port in use or a Unix socket a live server holds
/// is refused before the data directory (or a database in it) is created.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_that_cannot_listen_creates_no_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let live = tmp.path().join("live.sock");
    let _live = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let socket = tmp.path().join("l.sock");
    let cases: [(&str, Vec<&OsStr>, &str); 3] = [
        (
            "tcp",
            vec!["--listen".as_ref(), addr.as_ref()],
            "already in use",
        ),
        (
            "metrics",
            vec![
                "--unix-socket".as_ref(),
                socket.as_os_str(),
                "--metrics-listen".as_ref(),
                addr.as_ref(),
            ],
            &addr,
        ),
        (
            "unix",
            vec!["--unix-socket".as_ref(), live.as_os_str()],
            "in use by a running server",
        ),
    ];
    for (name, flags, mention) in cases {
        let data_dir = tmp.path().join(format!("{name}-data"));
        let (status, stderr) =
            refuse(&data_dir, &flags, &tmp.path().join(format!("{name}.log"))).await;
        assert_one_line_error(status, &stderr, &[mention]);
        assert!(
            !data_dir.exists(),
            "{name}: a refused start created {}: {stderr}",
            data_dir.display()
        );
        assert!(!socket.exists(), "{name}: the socket file is left behind");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let config = tmp.path().join("larder.toml");
    let path = config.display().to_string();
    for (n, (text, mentions)) in [
        (
            "[cache]\nmax_memory = \"64MiB\"\nmax_valu = \"1MiB\"\n",
            &["cache.max_valu", "unknown field", "line 3"][..],
        ),
        ("listn = \"127.0.0.1:7379\"\n", &["listn", "unknown field"]),
        (
            "[session]\nidle_ttl = \"soon\"\n",
            &["session.idle_ttl", "not a duration"],
        ),
        (
            "[cache]\nmax_batch = \"ten\"\n",
            &["cache.max_batch", "invalid type"],
        ),
        (
            "[server]\nmax_connections = 0\n",
            &["server.max_connections", "out of range"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&config, text).unwrap();
        let (status, stderr) = refuse(
            &data_dir,
            &["--config".as_ref(), config.as_os_str()],
            &tmp.path().join(format!("config-{n}.log")),
        )
        .await;
        assert_one_line_error(status, &stderr, mentions);
        if !text.contains("max_connections") {
            assert!(
                stderr.contains(&path),
                "{text:?}: the file is not named: {stderr}"
            );
        }
    }
    assert!(
        !data_dir.exists(),
        "a refused config still created the data directory"
    );
}

#[tokio::test]
async fn a_mistyped_flag_is_refused_saying_what_is_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    for (n, (flags, mentions)) in [
        (
            &["--log-level", "verbose"][..],
            &[
                "log.level (--log-level, LARDER_LOG_LEVEL)",
                "\"verbose\" is not a log level",
            ][..],
        ),
        (
            &["--log-level", "larder=loud"],
            &["log.level (--log-level, LARDER_LOG_LEVEL)", "\"loud\""],
        ),
        (
            &["--listen", "0.0.0.0:99999"],
            &[
                "listen (--listen, LARDER_LISTEN)",
                "port 99999 is out of range",
                "65535",
            ],
        ),
        (
            &["--max-memory", "lots"],
            &[
                "cache.max_memory (--max-memory, LARDER_MAX_MEMORY)",
                "expected a size such as 256MiB, 1GB or 1048576",
            ],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let flags: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        let (status, stderr) =
            refuse(&data_dir, &flags, &tmp.path().join(format!("flag-{n}.log"))).await;
        assert_one_line_error(status, &stderr, mentions);
    }
    assert!(
        !data_dir.exists(),
        "a refused flag still created the data directory"
    );
}

/// A build without the cargo feature `bench` keeps the command and says how to get it.
#[cfg(not(feature = "bench"))]
#[tokio::test]
async fn bench_without_the_feature_says_how_to_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("bench.log");
    let args: Vec<&OsStr> = ["bench", "--target", "unix:/nonexistent.sock", "--json"]
        .iter()
        .map(OsStr::new)
        .collect();
    let (status, stderr) = refused(larder(&args, &log), &log).await;
    assert_one_line_error(
        status,
        &stderr,
        &["larder bench is not in this build", "--features bench"],
    );
}
