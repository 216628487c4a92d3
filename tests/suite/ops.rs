//! What an operator sees: the systemd protocol on a `NOTIFY_SOCKET` the test opens (READY
//! once serving, STATUS, WATCHDOG pings, STOPPING at SIGTERM), `larder check-config` and the
//! precedence of its sources (defaults < file < `LARDER_*` variables < flags), its
//! rejections, the bounds on connections (silent ones closed, all cut after the drain
//! deadline) and on calls in progress, and the request timeout. A call is kept in progress by
//! holding SQLite's write lock from outside, so that the daemon's writer waits.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use larder::ServerSettings;
use tonic::Code;
use tonic::transport::Endpoint;

use super::binary::{Daemon, POLL_PAUSE, POLLS, larder, read_log, serve};
use crate::common::{Client, TestServer, get, set};

/// A Get whose failure the test inspects.
async fn try_get(c: &mut Client, key: &str) -> Result<larder::pb::GetResponse, tonic::Status> {
    c.get(larder::pb::GetRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// Whether a call failed because the server closed the connection.
fn closed_under_us(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) && std::error::Error::source(e).is_some()
}

/// Waits (bounded) for a datagram on `socket` that contains `wanted`; returns it.
fn notification(socket: &UnixDatagram, wanted: &str) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {wanted:?} notification: {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == wanted) {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_is_told_ready_once_serving_pinged_while_alive_and_told_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = tmp.path().join("larder.log");
    let mut cmd = serve(&data_dir, &socket, &log);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    let daemon = Daemon::start(cmd, log.clone());

    let ready = tokio::task::spawn_blocking({
        let notify = notify.try_clone().unwrap();
        move || notification(&notify, "READY=1")
    })
    .await
    .unwrap();
    assert!(
        ready.contains("STATUS=serving on 127.0.0.1:") && ready.contains("unix:"),
        "{ready}"
    );
    // READY comes only once the listeners serve: a call succeeds at once, without retrying.
    let mut client = Client::new(crate::common::unix_channel(&socket).await);
    set(&mut client, "", "k", &b"v"[..], 0).await;
    assert_eq!(get(&mut client, "", "k").await.value, b"v".to_vec());

    let notify_wd = notify.try_clone().unwrap();
    tokio::task::spawn_blocking(move || notification(&notify_wd, "WATCHDOG=1"))
        .await
        .unwrap();
    let log_text = read_log(&log);
    assert!(log_text.contains("systemd watchdog enabled"), "{log_text}");

    let stopping = tokio::task::spawn_blocking(move || notification(&notify, "STOPPING=1"));
    daemon.terminate().await;
    let stopping = stopping.await.unwrap();
    assert!(stopping.contains("STATUS=shutting down"), "{stopping}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_notify_socket_the_daemon_serves_as_usual() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let log = tmp.path().join("larder.log");
    let mut cmd = serve(&tmp.path().join("data"), &socket, &log);
    cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC");
    let mut daemon = Daemon::start(cmd, log.clone());
    let mut client = daemon.client(&socket).await;
    set(&mut client, "", "k", &b"v"[..], 0).await;
    daemon.terminate().await;
    let log_text = read_log(&log);
    assert!(!log_text.contains("NOTIFY_SOCKET"), "{log_text}");
}

/// Runs `larder ARGS` to completion with `env` set; returns its output.
fn run(args: &[&str], env: &[(&str, &str)], log: &Path) -> Output {
    let os: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let mut cmd: Command = larder(&os, log);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running larder")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_merges_file_then_variables_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let file = tmp.path().join("larder.toml");
    std::fs::write(
        &file,
        "worker_threads = 2\n[cache]\nmax_memory = \"1MiB\"\nmax_disk = \"1GiB\"\n\
         [ratelimit.policies.ai_chat]\nlimit = 60\nperiod = \"1m\"\nalgorithm = \"sliding_window\"\n",
    )
    .unwrap();
    let out = run(
        &[
            "check-config",
            "--config",
            file.to_str().unwrap(),
            "--max-disk",
            "3GiB",
        ],
        &[("LARDER_MAX_MEMORY", "2MiB"), ("LARDER_MAX_DISK", "2GiB")],
        &log,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "worker_threads = 2",    // file
        "max_memory = \"2MiB\"", // variable over file
        "max_disk = \"3GiB\"",   // flag over variable
        "max_value = \"16MiB\"", // default
        "[ratelimit.policies.ai_chat]",
        "algorithm = \"sliding_window\"",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }

    // The printed config is itself a config file giving the same result.
    let printed = tmp.path().join("printed.toml");
    std::fs::write(&printed, &text).unwrap();
    let again = run(
        &["check-config", "--config", printed.to_str().unwrap()],
        &[],
        &log,
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), text);
}

#[test]
fn check_config_refuses_bad_settings_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let file = tmp.path().join("larder.toml");
    // (config file, flags, variables, what the error must name)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[cache]\nmax_memroy = \"1MiB\"\n",
            &[],
            &[],
            "unknown field `max_memroy`",
        ),
        ("worker_threads = \"two\"\n", &[], &[], "worker_threads"),
        (
            "",
            &[],
            &[("LARDER_WORKER_THREADS", "0")],
            "worker_threads (--worker-threads, LARDER_WORKER_THREADS)",
        ),
        (
            "",
            &[],
            &[("LARDER_WORKER_THREADS", "two")],
            "worker_threads (--worker-threads, LARDER_WORKER_THREADS): \"two\" is not a whole number",
        ),
        (
            "",
            &[],
            &[("LARDER_MAX_MEMORY", "lots")],
            "cache.max_memory (--max-memory, LARDER_MAX_MEMORY): \"lots\" is not a size",
        ),
        (
            "",
            &["--drain-timeout", "soon"],
            &[],
            "server.drain_timeout (--drain-timeout, LARDER_DRAIN_TIMEOUT)",
        ),
        (
            "[auth]\ntoken_file = \"/nonexistent\"\n",
            &[],
            &[("LARDER_AUTH_UNIX_SOCKET", "yes")],
            "auth.unix_socket (--auth-unix-socket, LARDER_AUTH_UNIX_SOCKET)",
        ),
        (
            "",
            &["--log-format", "xml"],
            &[],
            "log.format (--log-format, LARDER_LOG_FORMAT)",
        ),
        (
            "[ratelimit.policies.contact]\nlimit = 10\nperiod = \"0s\"\n",
            &[],
            &[],
            "ratelimit.policies.contact.period",
        ),
        (
            "[session]\nidle_ttl = \"40days\"\nmax_ttl = \"30days\"\n",
            &[],
            &[],
            "session.idle_ttl",
        ),
    ];
    for (text, flags, env, named) in cases {
        std::fs::write(&file, text).unwrap();
        let mut args = vec!["check-config", "--config", file.to_str().unwrap()];
        args.extend_from_slice(flags);
        let out = run(&args, env, &log);
        assert!(
            !out.status.success(),
            "{text:?} {flags:?} {env:?} was accepted"
        );
        let err = stderr(&out);
        assert!(err.contains(named), "{text:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        // serve refuses the same way, before touching the data directory.
        let data_dir = tmp.path().join("never");
        let mut serve_args = vec![
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        serve_args.extend_from_slice(flags);
        let out = run(&serve_args, env, &log);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(named), "{}", stderr(&out));
        assert!(!data_dir.exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_with_settings_from_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let log = tmp.path().join("larder.log");
    let mut cmd = serve(&tmp.path().join("data"), &socket, &log);
    cmd.env("LARDER_MAX_KEY", "8")
        .env("LARDER_LOG_FORMAT", "json");
    let mut daemon = Daemon::start(cmd, log.clone());
    let mut client = daemon.client(&socket).await;
    set(&mut client, "", "12345678", &b"v"[..], 0).await;
    let err = client
        .set(larder::pb::SetRequest {
            key: "123456789".into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("key"), "{}", err.message());
    daemon.terminate().await;
    let log_text = read_log(&log);
    let first = log_text.lines().next().unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {first}"));
    assert!(
        parsed.get("level").is_some() && parsed.get("message").is_some(),
        "{first}"
    );
    assert!(
        !log_text.contains('\u{1b}'),
        "no ANSI escapes when not a terminal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_limit_are_refused_until_one_closes() {
    let server = TestServer::start_with(
        |_| {},
        ServerSettings {
            max_connections: 1,
            ..ServerSettings::default()
        },
    )
    .await;
    let mut first = server.client().await;
    set(&mut first, "", "k", &b"v"[..], 0).await;

    let endpoint = Endpoint::from_shared(format!("http://{}", server.tcp_addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let mut second = Client::new(endpoint.connect_lazy());
    // The server closes the extra connection as it accepts it; a client sees the
    // transport fail (tonic says UNAVAILABLE, UNKNOWN or CANCELLED, by when it noticed).
    let refused = try_get(&mut second, "k").await.unwrap_err();
    assert!(closed_under_us(&refused), "{refused:?}");

    drop(first);
    // The closed connection's place is freed once the server sees it close.
    for attempt in 0..POLLS {
        let mut client = Client::new(endpoint.connect_lazy());
        match try_get(&mut client, "k").await {
            Ok(found) => {
                assert_eq!(found.value, b"v".to_vec());
                return;
            }
            Err(e) if closed_under_us(&e) && attempt + 1 < POLLS => {
                tokio::time::sleep(POLL_PAUSE).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sends_nothing_is_closed_and_frees_its_place() {
    let server = TestServer::start_with(
        |_| {},
        ServerSettings {
            max_connections: 1,
            handshake_timeout: Duration::from_millis(200),
            ..ServerSettings::default()
        },
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(server.tcp_addr())
        .await
        .unwrap();
    // The server speaks first (its HTTP/2 SETTINGS), then closes the connection. Bounded so
    // that a connection left open fails the test instead of hanging it.
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut silent, &mut buf).await
            && n > 0
        {}
    })
    .await
    .expect("the silent connection was never closed");
    // Its place is free again: a real client is served.
    let mut client = server.client().await;
    set(&mut client, "", "k", &b"v"[..], 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_drain_deadline_open_streams_are_closed_before_serve_returns() {
    let mut server = TestServer::start_with(
        |_| {},
        ServerSettings {
            drain_timeout: Duration::from_millis(100),
            ..ServerSettings::default()
        },
    )
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some(), "a first status");
    server.stop().await;
    // Server::run has returned: the stream must already be ended, not merely waiting on a
    // connection task that outlived the store. Read what is left (NOT_SERVING, maybe), bounded.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch stream outlived the server");
}

/// Takes SQLite's write lock on the server's database from outside, so that the daemon's
/// writer waits (up to its busy timeout, 5 s) and every write call stays in progress until
/// the returned connection commits.
fn hold_the_write_lock(server: &TestServer) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(server.data_dir().join(larder::store::DB_FILE)).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

/// A Set of `key` whose failure the test inspects.
async fn try_set(c: &mut Client, key: &str) -> Result<larder::pb::SetResponse, tonic::Status> {
    c.set(larder::pb::SetRequest {
        key: key.into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_past_the_concurrency_limit_are_unavailable_while_health_answers() {
    let server = TestServer::start_with(
        |_| {},
        ServerSettings {
            max_concurrent_requests: 1,
            ..ServerSettings::default()
        },
    )
    .await;
    let lock = hold_the_write_lock(&server);
    let spawn_stuck = |mut c: Client| tokio::spawn(async move { try_set(&mut c, "stuck").await });
    let mut stuck = spawn_stuck(server.client().await);
    // Once the stuck Set holds the one place, a probe is refused at once. Polled, bounded:
    // the Set may take a moment to arrive, and if a probe took the place first the Set itself
    // was refused and is sent again.
    let mut client = server.client().await;
    let mut refused = None;
    for _ in 0..POLLS {
        if stuck.is_finished() {
            let early = stuck.await.unwrap();
            assert!(
                matches!(&early, Err(e) if e.code() == Code::Unavailable),
                "the Set ended while the write lock was held: {early:?}"
            );
            stuck = spawn_stuck(server.client().await);
        }
        match try_get(&mut client, "stuck").await {
            Err(e) if e.code() == Code::Unavailable => {
                refused = Some(e);
                break;
            }
            _ => tokio::time::sleep(POLL_PAUSE).await,
        }
    }
    let refused = refused.expect("a call past the limit was never refused");
    assert!(refused.message().contains("busy"), "{refused:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health checks are never refused");
    assert_eq!(serving.into_inner().status, 1, "SERVING");

    lock.execute_batch("COMMIT").unwrap();
    assert!(stuck.await.unwrap().unwrap().stored);
    assert!(
        try_get(&mut client, "stuck").await.unwrap().found,
        "the place is free again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_running_past_the_request_timeout_is_cut() {
    let server = TestServer::start_with(
        |_| {},
        ServerSettings {
            request_timeout: Duration::from_millis(200),
            ..ServerSettings::default()
        },
    )
    .await;
    let lock = hold_the_write_lock(&server);
    let mut client = server.client().await;
    let cut = try_set(&mut client, "slow").await.unwrap_err();
    assert_eq!(cut.code(), Code::Cancelled, "{cut:?}");
    lock.execute_batch("COMMIT").unwrap();
    // The server is fine afterwards; reads never waited for the writer.
    assert!(try_set(&mut client, "quick").await.unwrap().stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_liveness_check_stops_answering_while_the_writer_is_stuck() {
    let server = TestServer::start().await;
    let store = server.store();
    store.ping().await.expect("a live store answers");
    let lock = hold_the_write_lock(&server);
    let mut client = server.client().await;
    let stuck = tokio::spawn(async move { try_set(&mut client, "stuck").await });
    // Once the Set holds the writer, a ping waits behind it (polled, bounded: before the Set
    // reaches the writer a ping still answers).
    let mut unanswered = false;
    for _ in 0..POLLS {
        match tokio::time::timeout(Duration::from_millis(500), store.ping()).await {
            Err(_) => {
                unanswered = true;
                break;
            }
            Ok(answer) => answer.unwrap(),
        }
    }
    assert!(
        unanswered,
        "the ping kept answering while the writer was stuck"
    );
    lock.execute_batch("COMMIT").unwrap();
    tokio::time::timeout(Duration::from_secs(10), store.ping())
        .await
        .expect("the writer answers again once free")
        .unwrap();
    assert!(stuck.await.unwrap().unwrap().stored);
}
