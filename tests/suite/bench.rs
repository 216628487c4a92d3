//! `larder bench` as a user runs it: the built binary against a test server's Unix socket
//! runs every op and prints one well-formed JSON line per op with no errors, and a Redis it
//! cannot reach, an op it does not know, a queue that runs dry during `dequeue_ack`, or a
//! queue op asked to be pipelined, is a clear error rather than a panic or a figure. A smoke run
//! of a few hundred calls: nothing here asserts how fast they were. The load generator is the
//! cargo feature `bench` (`cargo test --features bench`); without it, `larder bench` says how to
//! get it (`tests/suite/startup.rs`).
#![cfg(feature = "bench")]

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use larder::AuthSettings;
use larder::ServerSettings;

use crate::common::TestServer;
use crate::suite::binary::{POLL_PAUSE, read_log};

/// Polls while waiting for `larder bench` to end: a bounded wait (a minute), not a
/// measurement.
const BENCH_POLLS: usize = 3_000;

/// Runs `larder bench` with `args` until it exits (killed, and the test failed, if it runs
/// for more than a minute); returns its status, standard output and standard error.
async fn bench(args: &[&str], dir: &Path) -> (ExitStatus, String, String) {
    let (out, err) = (dir.join("bench.out"), dir.join("bench.err"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("creating the output file"))
        .stderr(File::create(&err).expect("creating the error file"));
    let mut child = cmd.spawn().expect("starting larder bench");
    for _ in 0..BENCH_POLLS {
        if let Some(status) = child.try_wait().expect("waiting for larder bench") {
            return (status, read_log(&out), read_log(&err));
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "larder bench did not end within a minute:\n{}\n{}",
        read_log(&out),
        read_log(&err)
    );
}

const ALL_OPS: [&str; 9] = [
    "get",
    "set",
    "incr",
    "getmany",
    "session_get",
    "ratelimit_sliding",
    "ratelimit_gcra",
    "enqueue",
    "dequeue_ack",
];

/// The ops PipelineService carries: all but the queue's.
const PIPELINED_OPS: [&str; 7] = [
    "get",
    "set",
    "incr",
    "getmany",
    "session_get",
    "ratelimit_sliding",
    "ratelimit_gcra",
];

/// Runs `larder bench` over `ops` (200 calls each, 100 keys, JSON lines) against a fresh
/// daemon's Unix socket, with `extra` arguments; checks it succeeded with one line per op and
/// answers its stdout and stderr.
async fn bench_every_op(ops: &[&str], extra: &[&str]) -> (String, String) {
    let server = TestServer::start().await;
    let target = format!("unix:{}", server.socket_path().display());
    let ops_arg = ops.join(",");
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--target",
        &target,
        "--ops",
        &ops_arg,
        "--requests",
        "200",
        "--keys",
        "100",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = bench(&args, dir.path()).await;
    assert!(status.success(), "larder bench failed: {status}\n{stderr}");
    assert_eq!(
        stdout.lines().count(),
        ops.len(),
        "one line per op:\n{stdout}"
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_runs_every_op_against_the_unix_socket_and_prints_a_json_line_each() {
    let (stdout, stderr) = bench_every_op(&ALL_OPS, &["--concurrency", "4"]).await;
    let lines: Vec<&str> = stdout.lines().collect();
    for (line, op) in lines.iter().zip(ALL_OPS) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["system"], "larder", "{line}");
        assert_eq!(v["op"], op, "{line}");
        assert_eq!(v["concurrency"], 4, "{line}");
        assert_eq!(v["errors"], 0, "{line}\n{stderr}");
        assert_eq!(v["ops"], 200, "{line}");
        assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{line}");
        for key in ["p50_us", "p99_us", "p999_us"] {
            assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {line}");
        }
        // Every read hit the preloaded key space, and every Set stored.
        if !op.starts_with("ratelimit") {
            assert_eq!(v["misses"], 0, "{line}");
        }
    }
    let getmany: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    let (calls, keys) = (
        getmany["ops_per_sec"].as_f64().unwrap(),
        getmany["keys_per_sec"].as_f64().unwrap(),
    );
    assert!((keys - calls * 16.0).abs() <= 16.0, "{}", lines[3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_pipeline_runs_every_op_on_run_streams() {
    let (stdout, stderr) = bench_every_op(
        &PIPELINED_OPS,
        &["--pipeline", "--concurrency", "8", "--connections", "2"],
    )
    .await;
    let lines: Vec<&str> = stdout.lines().collect();
    for (line, op) in lines.iter().zip(PIPELINED_OPS) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["system"], "larder-pipeline", "{line}");
        assert_eq!(v["op"], op, "{line}");
        assert_eq!(
            (&v["errors"], &v["ops"]),
            (&0.into(), &200.into()),
            "{line}\n{stderr}"
        );
        assert!(v.get("pipeline_depth").is_none(), "{line}");
        if !op.starts_with("ratelimit") {
            assert_eq!(v["misses"], 0, "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_that_runs_dry_fails_the_run_and_queue_ops_are_not_pipelined() {
    let server = TestServer::start().await;
    let target = format!("unix:{}", server.socket_path().display());
    let dir = tempfile::tempdir().unwrap();
    // 50 jobs for 200 pairs: the run fails, at once, rather than report the empty answers.
    let (status, stdout, stderr) = bench(
        &[
            "--target",
            &target,
            "--ops",
            "dequeue_ack",
            "--requests",
            "200",
            "--queue-jobs",
            "50",
            "--concurrency",
            "4",
            "--json",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the queue ran dry"), "{stderr}");
    assert!(stderr.contains("50 were enqueued"), "{stderr}");
    assert!(stdout.is_empty(), "nothing is reported:\n{stdout}");

    for (flags, message) in [
        (&["--pipeline"][..], "--pipeline cannot run enqueue"),
        (
            &["--redis-pipeline", "4"][..],
            "--redis-pipeline cannot run dequeue_ack",
        ),
    ] {
        let mut args = vec!["--target", &target, "--ops", "enqueue,dequeue_ack"];
        args.extend_from_slice(flags);
        let (status, _, stderr) = bench(&args, dir.path()).await;
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_or_an_unknown_op_is_a_clear_error() {
    let server = TestServer::start().await;
    let target = format!("unix:{}", server.socket_path().display());
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of the loopback interface.
    let (status, stdout, stderr) = bench(
        &[
            "--target",
            &target,
            "--redis",
            "redis://127.0.0.1:1",
            "--ops",
            "get",
            "--requests",
            "10",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to Redis at redis://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.is_empty(), "nothing was measured:\n{stdout}");

    let (status, _, stderr) = bench(&["--target", &target, "--ops", "get,hget"], dir.path()).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown op \"hget\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_loop_run_with_a_token_reports_its_target_rate_and_a_missing_token_fails() {
    const TOKEN: &str = "bench-0123456789abcdefghijklmnopq";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let settings = ServerSettings {
        auth: Some(AuthSettings {
            token_file: tokens.clone(),
            unix_socket: true,
        }),
        ..ServerSettings::default()
    };
    let server = TestServer::start_with(|_| {}, settings).await;
    let target = format!("unix:{}", server.socket_path().display());
    let token_file = dir.path().join("client-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_arg = token_file.to_str().unwrap();
    let args = [
        "--target",
        &target,
        "--token-file",
        token_arg,
        "--ops",
        "get,ratelimit_gcra",
        "--rate",
        "2000",
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--keys",
        "100",
        "--json",
    ];
    let (status, stdout, stderr) = bench(&args, dir.path()).await;
    assert!(status.success(), "larder bench failed: {status}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per op:\n{stdout}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["errors"], 0, "{line}\n{stderr}");
        assert_eq!(v["ops"], 200, "{line}");
        assert_eq!(v["target_rate"], 2000.0, "{line}");
    }

    // Without the token the preload is refused, and that is the error, not a panic.
    let (status, _, stderr) = bench(
        &["--target", &target, "--ops", "get", "--requests", "10"],
        dir.path(),
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing bearer token"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (status, _, stderr) = bench(&["--target", &target, "--rate", "0"], dir.path()).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--rate must be more than 0"), "{stderr}");
}
