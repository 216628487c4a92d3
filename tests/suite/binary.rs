//! The built `larder` binary as an operator runs it: `larder serve` on a data directory with a
//! Unix socket, SIGTERM ends it with exit status 0 and removes the socket, a restart on the
//! same directory serves what was written, a second daemon on a directory or socket in use
//! exits non-zero with a message naming it, after SIGKILL a restart replaces the stale socket
//! and still has every acknowledged write, and a SIGTERM sent as soon as the socket accepts
//! connections is already a graceful shutdown.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use larder::pb::cache_service_client::CacheServiceClient;

use crate::common::{Client, get, set, unix_channel};

/// Polls while waiting for the daemon to accept connections (or to exit), and the pause
/// between two: a bounded wait, not a measurement.
const POLLS: usize = 1_000;
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// `larder` with `args`, its stderr going to `log`, and no `LARDER_*` setting inherited from
/// the environment running the tests.
fn larder(args: &[&std::ffi::OsStr], log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("creating the log file"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LARDER_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `larder serve` on a data directory, TCP on a free port and a Unix socket.
fn serve(data_dir: &Path, socket: &Path, log: &Path) -> Command {
    larder(
        &[
            "serve".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--unix-socket".as_ref(),
            socket.as_os_str(),
        ],
        log,
    )
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A `larder serve` child process, killed if the test ends while it still runs.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(data_dir: &Path, socket: &Path, log: PathBuf) -> Self {
        let child = serve(data_dir, socket, &log)
            .spawn()
            .expect("starting larder");
        Self {
            child: Some(child),
            log,
        }
    }

    /// Waits until the daemon accepts connections on `socket`, then returns a client.
    async fn client(&mut self, socket: &Path) -> Client {
        for _ in 0..POLLS {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "larder exited early with {status}:\n{}",
                    read_log(&self.log)
                );
            }
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return CacheServiceClient::new(unix_channel(socket).await);
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
        panic!(
            "larder never accepted connections:\n{}",
            read_log(&self.log)
        );
    }

    /// Sends SIGTERM, waits for the process to end and asserts that it exited with status 0.
    async fn terminate(self) {
        let log = self.log.clone();
        let status = self.signal("-TERM").await;
        assert!(
            status.success(),
            "SIGTERM ended larder with {status}:\n{}",
            read_log(&log)
        );
    }

    /// Sends `signal` (as `kill` spells it) and waits for the process to end.
    async fn signal(mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let kill = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill {signal} failed");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .expect("waiting for larder")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a larder that is expected to refuse to start; returns its exit status and stderr.
/// It gets the same bounded wait as a start-up: if it still runs after that, it is killed and
/// the test fails instead of hanging.
async fn refused(mut cmd: Command, log: &Path) -> (ExitStatus, String) {
    let mut child = cmd.spawn().expect("starting larder");
    for _ in 0..POLLS {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, read_log(log));
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "larder kept running instead of refusing:\n{}",
        read_log(log)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_stops_on_sigterm_and_restarts_with_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");

    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("first.log"));
    let mut c = daemon.client(&socket).await;
    let written = set(&mut c, "", "greeting", "hello", 0).await;
    assert!(written.stored);

    // A second daemon on the same data directory refuses to start, naming the directory.
    let log = tmp.path().join("refused.log");
    let (status, stderr) =
        refused(serve(&data_dir, &tmp.path().join("other.sock"), &log), &log).await;
    assert!(!status.success(), "the second daemon succeeded: {stderr}");
    assert!(
        stderr.contains(&data_dir.display().to_string()),
        "the message does not name the data directory: {stderr}"
    );
    assert_eq!(
        get(&mut c, "", "greeting").await.value,
        "hello",
        "the first daemon is unharmed"
    );
    drop(c);

    daemon.terminate().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");

    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("second.log"));
    let mut c = daemon.client(&socket).await;
    let g = get(&mut c, "", "greeting").await;
    assert_eq!(
        (g.found, g.value, g.version),
        (true, "hello".into(), written.version)
    );
    let again = set(&mut c, "", "greeting", "hello again", 0).await;
    assert!(again.version > written.version);
    drop(c);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_refuses_a_socket_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let mut daemon = Daemon::spawn(&tmp.path().join("data"), &socket, tmp.path().join("log"));
    let mut c = daemon.client(&socket).await;
    set(&mut c, "", "k", "v", 0).await;

    let log = tmp.path().join("refused.log");
    let (status, stderr) =
        refused(serve(&tmp.path().join("other-data"), &socket, &log), &log).await;
    assert!(!status.success(), "the second daemon succeeded: {stderr}");
    assert!(
        stderr.contains(&socket.display().to_string()),
        "the message does not name the socket: {stderr}"
    );
    assert_eq!(
        get(&mut c, "", "k").await.value,
        "v",
        "the socket still reaches the first daemon"
    );
    drop(c);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_a_restart_replaces_the_stale_socket_and_keeps_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("first.log"));
    let mut c = daemon.client(&socket).await;
    let mut versions = Vec::new();
    for i in 0..20 {
        versions.push(
            set(&mut c, "", &format!("k{i}"), format!("v{i}"), 0)
                .await
                .version,
        );
    }
    drop(c);
    let status = daemon.signal("-KILL").await;
    assert!(!status.success());
    assert!(
        socket.exists(),
        "a killed daemon leaves its socket file behind"
    );

    let mut daemon = Daemon::spawn(&data_dir, &socket, tmp.path().join("second.log"));
    let mut c = daemon.client(&socket).await;
    for (i, v) in versions.iter().enumerate() {
        let g = get(&mut c, "", &format!("k{i}")).await;
        assert_eq!((g.value, g.version), (format!("v{i}").into(), *v), "k{i}");
    }
    let next = set(&mut c, "", "k0", "after", 0).await.version;
    assert!(next > *versions.last().unwrap());
    drop(c);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_as_soon_as_the_socket_accepts_is_a_graceful_shutdown() {
    // A supervisor may stop the daemon the moment it looks ready. Once the socket accepts
    // connections, SIGTERM must already be handled: exit status 0 and the socket removed,
    // not death by the signal. Several rounds, since the daemon's start-up races the signal.
    for round in 0..50 {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("l.sock");
        let log = tmp.path().join("log");
        let mut daemon = Daemon::spawn(&tmp.path().join("data"), &socket, log.clone());
        // Polled more often than elsewhere, to signal as early as a supervisor could; the same
        // overall bound.
        let mut accepting = false;
        for _ in 0..POLLS * 20 {
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("larder exited early with {status}:\n{}", read_log(&log));
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                accepting = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            accepting,
            "larder never accepted connections:\n{}",
            read_log(&log)
        );
        let status = daemon.signal("-TERM").await;
        assert!(
            status.success(),
            "round {round}: SIGTERM right after start-up ended larder with {status} \
             (socket file left behind: {}):\n{}",
            socket.exists(),
            read_log(&log)
        );
        assert!(
            !socket.exists(),
            "round {round}: the socket file is left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_refuses_flags_that_serve_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("refused.log");
    let cmd = larder(
        &[
            "serve".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--listen".as_ref(),
            "none".as_ref(),
        ],
        &log,
    );
    let (status, stderr) = refused(cmd, &log).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--unix-socket"), "{stderr}");
}
