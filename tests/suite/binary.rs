//! The built `larder` binary as an operator runs it: `larder serve` on a data directory with a
//! Unix socket, SIGTERM ends it with exit status 0 and removes the socket, a restart on the
//! same directory serves what was written, a second daemon on a directory or socket in use
//! exits non-zero with a message naming it, after SIGKILL a restart replaces the stale socket
//! and still has every acknowledged write, and a SIGTERM sent as soon as the socket accepts
//! connections is already a graceful shutdown. For rate limiting: `--config FILE` serves the
//! file's policies (and a bad policy is refused, naming it), a SIGKILL loses at most the
//! write-behind window, a SIGTERM writes what memory knows, and a Reset is committed before it
//! answers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::common::{Client, RateLimits, assert_invalid, get, set, unix_channel};

/// Polls while waiting for the daemon to accept connections (or to exit), and the pause
/// between two: a bounded wait, not a measurement.
pub(crate) const POLLS: usize = 1_000;
pub(crate) const POLL_PAUSE: Duration = Duration::from_millis(20);

/// `larder` with `args`, its stderr going to `log`, and no `LARDER_*` setting inherited from
/// the environment running the tests.
pub(crate) fn larder(args: &[&std::ffi::OsStr], log: &Path) -> Command {
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
pub(crate) fn serve(data_dir: &Path, socket: &Path, log: &Path) -> Command {
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

pub(crate) fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A `larder serve` child process, killed if the test ends while it still runs.
pub(crate) struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn spawn(data_dir: &Path, socket: &Path, log: PathBuf) -> Self {
        Self::spawn_with(data_dir, socket, log, &[])
    }

    /// [`Daemon::spawn`] with `extra` flags.
    pub(crate) fn spawn_with(
        data_dir: &Path,
        socket: &Path,
        log: PathBuf,
        extra: &[&std::ffi::OsStr],
    ) -> Self {
        let mut cmd = serve(data_dir, socket, &log);
        cmd.args(extra);
        Self::start(cmd, log)
    }

    /// Starts `cmd` (a [`serve`] command, adjusted) whose stderr goes to `log`.
    pub(crate) fn start(mut cmd: Command, log: PathBuf) -> Self {
        let child = cmd.spawn().expect("starting larder");
        Self {
            child: Some(child),
            log,
        }
    }

    /// Waits until the daemon accepts connections on `socket`, then returns a channel to it.
    pub(crate) async fn channel(&mut self, socket: &Path) -> Channel {
        for _ in 0..POLLS {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "larder exited early with {status}:\n{}",
                    read_log(&self.log)
                );
            }
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return unix_channel(socket).await;
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
        panic!(
            "larder never accepted connections:\n{}",
            read_log(&self.log)
        );
    }

    /// Waits until the daemon accepts connections on `socket`, then returns a client.
    pub(crate) async fn client(&mut self, socket: &Path) -> Client {
        CacheServiceClient::new(self.channel(socket).await)
    }

    /// Waits until the daemon accepts connections on `socket`, then returns a RateLimitService
    /// client.
    async fn rate_limits(&mut self, socket: &Path) -> RateLimits {
        RateLimitServiceClient::new(self.channel(socket).await)
    }

    /// A RateLimitService client over TCP, at the address the daemon logged (call once it
    /// accepts connections on its socket: it is bound to TCP before that, but the socket
    /// accepts as soon as it is bound, which may be before the line is logged).
    async fn tcp_rate_limits(&self) -> RateLimits {
        let addr = self.tcp_addr().await;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("connecting over TCP");
        RateLimitServiceClient::new(channel)
    }

    /// The TCP address the daemon logged, waiting a bounded time for the line (call once it
    /// accepts connections on its socket; see [`Daemon::tcp_rate_limits`]).
    pub(crate) async fn tcp_addr(&self) -> String {
        let logged_addr = |log: &str| {
            log.lines()
                .filter(|l| l.contains("listening on tcp"))
                .find_map(|l| l.split("addr=").nth(1))
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        };
        let mut addr = None;
        for _ in 0..POLLS {
            addr = logged_addr(&read_log(&self.log));
            if addr.is_some() {
                break;
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
        addr.unwrap_or_else(|| panic!("no TCP address in the log:\n{}", read_log(&self.log)))
    }

    /// Sends SIGTERM, waits for the process to end and asserts that it exited with status 0.
    pub(crate) async fn terminate(self) {
        let log = self.log.clone();
        let status = self.signal("-TERM").await;
        assert!(
            status.success(),
            "SIGTERM ended larder with {status}:\n{}",
            read_log(&log)
        );
    }

    /// Sends `signal` (as `kill` spells it) to the running daemon, and does not wait.
    pub(crate) fn send(&self, signal: &str) {
        let child = self.child.as_ref().unwrap();
        let kill = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill {signal} failed");
    }

    /// Sends `signal` (as `kill` spells it) and waits for the process to end.
    pub(crate) async fn signal(mut self, signal: &str) -> ExitStatus {
        self.send(signal);
        let mut child = self.child.take().unwrap();
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
pub(crate) async fn refused(mut cmd: Command, log: &Path) -> (ExitStatus, String) {
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

// ---------------------------------------------------------------------------------------------
// Rate limiting
// ---------------------------------------------------------------------------------------------

/// A Check that must succeed.
async fn rl_check(c: &mut RateLimits, req: &pb::CheckRequest) -> pb::CheckResponse {
    c.check(req.clone())
        .await
        .unwrap_or_else(|s| panic!("Check {req:?}: {s:?}"))
        .into_inner()
}

/// An inline GCRA request of 5 per hour: a spent key stays denied for 12 minutes, far longer
/// than any of these tests runs (a window algorithm could see its window end mid-test).
fn five_per_hour(key: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        key: key.into(),
        limit: 5,
        period_ms: 3_600_000,
        algorithm: pb::Algorithm::Gcra as i32,
        ..Default::default()
    }
}

/// Checks `req` five times (each admitted), then once more (denied).
async fn spend_five(c: &mut RateLimits, req: &pb::CheckRequest) {
    for n in 1..=5 {
        let r = rl_check(c, req).await;
        assert!(r.allowed, "check {n} of {req:?}: {r:?}");
    }
    let r = rl_check(c, req).await;
    assert!(!r.allowed, "a sixth check of {req:?}: {r:?}");
}

/// Waits until the write-behind has put the state of a [`five_per_hour`] key spent by
/// [`spend_five`] in the database of `data_dir`: a GCRA state whose theoretical arrival time
/// is more than four and a half emission intervals (of 12 minutes) ahead, which only five
/// admitted checks reach. A bounded wait for the background write, not a measurement.
async fn wait_for_spent_gcra_on_disk(data_dir: &Path, key: &str) {
    const AHEAD_MS: u128 = 9 * 720_000 / 2;
    let db = data_dir.join(larder::store::DB_FILE);
    for _ in 0..POLLS {
        let stored: Option<String> =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|conn| {
                    conn.query_row(
                        "SELECT state FROM rate_limits WHERE policy = '' AND key = ?1",
                        [key],
                        |r| r.get(0),
                    )
                })
                .ok();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let tat_ms = stored
            .as_deref()
            .and_then(|s| s.strip_prefix("gcra "))
            .and_then(|ns| ns.parse::<u128>().ok())
            .map(|ns| ns / 1_000_000);
        if tat_ms.is_some_and(|tat| tat > now_ms + AHEAD_MS) {
            return;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    panic!("the write-behind never wrote the spent state of {key}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_the_rate_limit_policies_of_its_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let config = tmp.path().join("larder.toml");
    // The write-behind is long, so only the graceful shutdown can write the state.
    std::fs::write(
        &config,
        "[ratelimit]\nwrite_behind = \"10m\"\n\n\
         [ratelimit.policies.login]\nlimit = 3\nperiod = \"1h\"\nalgorithm = \"gcra\"\n",
    )
    .unwrap();
    let flags = ["--config".as_ref(), config.as_os_str()];
    let login = pb::CheckRequest {
        policy: "login".into(),
        key: "ip:203.0.113.9".into(),
        ..Default::default()
    };

    let mut daemon = Daemon::spawn_with(&data_dir, &socket, tmp.path().join("first.log"), &flags);
    let mut unix = daemon.rate_limits(&socket).await;
    let mut tcp = daemon.tcp_rate_limits().await;
    let first = rl_check(&mut unix, &login).await;
    assert!(
        first.allowed && first.limit == 3 && first.remaining == 2,
        "{first:?}"
    );
    assert_eq!(
        rl_check(&mut tcp, &login).await.remaining,
        1,
        "TCP shares the key"
    );
    assert!(rl_check(&mut unix, &login).await.allowed);
    let spent = rl_check(&mut tcp, &login).await;
    assert!(!spent.allowed && spent.retry_after_ms > 0, "{spent:?}");
    let unknown = pb::CheckRequest {
        policy: "logon".into(),
        ..login.clone()
    };
    assert_invalid(unix.check(unknown).await, "policy");
    drop((unix, tcp));

    // A SIGTERM right after the Checks keeps them.
    daemon.terminate().await;
    let mut daemon = Daemon::spawn_with(&data_dir, &socket, tmp.path().join("second.log"), &flags);
    let mut c = daemon.rate_limits(&socket).await;
    let after = rl_check(&mut c, &login).await;
    assert!(!after.allowed, "the restart gave a fresh budget: {after:?}");
    drop(c);
    daemon.terminate().await;

    // A bad policy is refused at start-up, naming it.
    std::fs::write(
        &config,
        "[ratelimit.policies.chat]\nlimit = 0\nperiod = \"1m\"\n",
    )
    .unwrap();
    let log = tmp.path().join("refused.log");
    let mut cmd = serve(&data_dir, &socket, &log);
    cmd.args(flags);
    let (status, stderr) = refused(cmd, &log).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("ratelimit.policies.chat.limit"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_rate_limits_lose_at_most_the_write_behind_window() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let flags = ["--ratelimit-write-behind".as_ref(), "200ms".as_ref()];
    let req = five_per_hour("user:42");

    let mut daemon = Daemon::spawn_with(&data_dir, &socket, tmp.path().join("first.log"), &flags);
    let mut c = daemon.rate_limits(&socket).await;
    spend_five(&mut c, &req).await;
    wait_for_spent_gcra_on_disk(&data_dir, "user:42").await;
    drop(c);
    let status = daemon.signal("-KILL").await;
    assert!(!status.success());

    let mut daemon = Daemon::spawn_with(&data_dir, &socket, tmp.path().join("second.log"), &flags);
    let mut c = daemon.rate_limits(&socket).await;
    let after = rl_check(&mut c, &req).await;
    assert!(
        !after.allowed,
        "the SIGKILL lost the spent budget: {after:?}"
    );
    drop(c);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_rate_limits_and_a_reset_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    // The write-behind is long, so only a graceful shutdown or a Reset writes.
    let flags = ["--ratelimit-write-behind".as_ref(), "10m".as_ref()];
    let req = five_per_hour("user:7");
    let log = |n: &str| tmp.path().join(format!("{n}.log"));

    let mut daemon = Daemon::spawn_with(&data_dir, &socket, log("first"), &flags);
    let mut c = daemon.rate_limits(&socket).await;
    spend_five(&mut c, &req).await;
    drop(c);
    daemon.terminate().await;

    let mut daemon = Daemon::spawn_with(&data_dir, &socket, log("second"), &flags);
    let mut c = daemon.rate_limits(&socket).await;
    let after = rl_check(&mut c, &req).await;
    assert!(
        !after.allowed,
        "the SIGTERM lost the spent budget: {after:?}"
    );
    let reset = c
        .reset(pb::ResetRequest {
            policy: String::new(),
            key: req.key.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reset.existed);
    drop(c);
    let status = daemon.signal("-KILL").await;
    assert!(!status.success());

    let mut daemon = Daemon::spawn_with(&data_dir, &socket, log("third"), &flags);
    let mut c = daemon.rate_limits(&socket).await;
    let fresh = rl_check(&mut c, &req).await;
    assert!(
        fresh.allowed && fresh.remaining == 4,
        "the Reset did not survive the SIGKILL: {fresh:?}"
    );
    drop(c);
    daemon.terminate().await;
}
