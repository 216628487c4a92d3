//! The Prometheus endpoint: a scrape over real HTTP after known cache, session and rate-limit
//! calls shows exactly those calls (by method and status code, trailers and trailers-only
//! alike), the store's counters, live sessions, rate-limit checks per configured policy, the
//! writer's histograms and the file sizes; a call the client abandons counts as `Canceled`;
//! only `GET /metrics` is served, in Prometheus text or OpenMetrics as asked; the endpoint
//! stops with the server. The binary serves metrics at `--metrics-listen` and refuses to
//! start, naming the address, when it is taken.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use larder::RateLimitSettings;
use larder::ServerSettings;
use larder::limiter::{Algorithm, Rule};
use larder::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Endpoint, Uri};

use super::binary::{POLL_PAUSE, POLLS, larder, read_log, refused};
use crate::common::{TestServer, assert_code, create_session, get, set};

const CACHE: &str = "larder.v1.CacheService";
const SESSIONS: &str = "larder.v1.SessionService";
const RATE_LIMITS: &str = "larder.v1.RateLimitService";

/// An HTTP response, as read off the socket.
struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends one HTTP/1.1 request on a fresh connection and reads the whole response.
async fn http(addr: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> HttpResponse {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connecting to the metrics endpoint");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .expect("reading the response");
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    if let Some(len) = headers.get("content-length").filter(|_| method != "HEAD") {
        assert_eq!(
            len.parse::<usize>().ok(),
            Some(body.len()),
            "content-length"
        );
    }
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (and the OpenMetrics text this endpoint writes): one
/// sample per line, `name{label="value",…} number`, comments skipped.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| parse_line(line).unwrap_or_else(|| panic!("a bad sample line {line:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let mut chars = line.chars().peekable();
    let mut name = String::new();
    while let Some(c) = chars.next_if(|c| *c != '{' && *c != ' ') {
        name.push(c);
    }
    let mut labels = BTreeMap::new();
    if chars.next_if_eq(&'{').is_some() {
        loop {
            match chars.next()? {
                '}' => break,
                ',' => continue,
                first => {
                    let mut key = String::from(first);
                    loop {
                        match chars.next()? {
                            '=' => break,
                            c => key.push(c),
                        }
                    }
                    if chars.next()? != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()? {
                            '"' => break,
                            '\\' => match chars.next()? {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(key, value);
                }
            }
        }
    }
    let rest: String = chars.collect();
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the sample named `name` with exactly the labels `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Like [`value`], failing the test when there is no such sample.
#[track_caller]
fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| {
        let same_name: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
        panic!("no sample {name}{labels:?}; samples of that name: {same_name:?}")
    })
}

/// Calls of one method that ended with `code`, per the scrape.
#[track_caller]
fn calls(samples: &[Sample], service: &str, method: &str, code: &str) -> f64 {
    must(
        samples,
        "larder_grpc_requests_total",
        &[("service", service), ("method", method), ("code", code)],
    )
}

/// Scrapes the server's metrics and parses them.
async fn scrape(server: &TestServer) -> Vec<Sample> {
    let r = http(server.metrics_addr(), "GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    parse(&r.body)
}

/// Server settings with one named policy, `login`: 2 Checks per minute.
fn with_login_policy() -> ServerSettings {
    let login = Rule::new(Algorithm::FixedWindow, 2, 60_000, 0).expect("a valid rule");
    ServerSettings {
        ratelimit: RateLimitSettings {
            policies: Arc::new(BTreeMap::from([("login".to_owned(), login)])),
        },
        ..ServerSettings::default()
    }
}

fn check(policy: &str, key: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        policy: policy.into(),
        key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_shows_exactly_the_calls_made() {
    let mut server = TestServer::start_with_metrics(with_login_policy()).await;
    let mut cache = server.client().await;
    let mut sessions = server.session_client().await;
    let mut limits = server.rate_limits().await;

    // Cache: one Set, a hit (from memory: the writer put it there), a miss, and a Get with
    // an empty key (INVALID_ARGUMENT, answered trailers-only).
    assert!(set(&mut cache, "", "a", "value", 0).await.stored);
    assert!(get(&mut cache, "", "a").await.found);
    assert!(!get(&mut cache, "", "b").await.found);
    assert_code(
        cache
            .get(pb::GetRequest {
                namespace: String::new(),
                key: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    // A Scan, counted under its own method like every method of the descriptor set.
    let listed = cache
        .scan(pb::ScanRequest::default())
        .await
        .expect("Scan")
        .into_inner();
    assert_eq!(listed.entries.len(), 1);

    // Sessions: two created, one revoked.
    let first = create_session(
        &mut sessions,
        pb::CreateSessionRequest {
            user_id: "u1".into(),
            ..Default::default()
        },
    )
    .await;
    create_session(
        &mut sessions,
        pb::CreateSessionRequest {
            user_id: "u1".into(),
            ..Default::default()
        },
    )
    .await;
    let revoked = sessions
        .revoke_session(pb::RevokeSessionRequest {
            target: Some(pb::revoke_session_request::Target::Token(first.token)),
        })
        .await
        .expect("RevokeSession")
        .into_inner()
        .revoked;
    assert!(revoked);

    // Rate limits: `login` admits 2 of 3, one inline Check, a Peek (not a check), and a
    // policy the config does not have (INVALID_ARGUMENT, not counted).
    let mut admitted = Vec::new();
    for _ in 0..3 {
        let r = limits.check(check("login", "alice")).await.expect("Check");
        admitted.push(r.into_inner().allowed);
    }
    assert_eq!(admitted, [true, true, false]);
    let inline = pb::CheckRequest {
        limit: 5,
        period_ms: 1000,
        ..check("", "bob")
    };
    assert!(
        limits
            .check(inline)
            .await
            .expect("inline Check")
            .into_inner()
            .allowed
    );
    limits
        .peek(pb::PeekRequest {
            policy: "login".into(),
            key: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("Peek");
    assert_code(
        limits.check(check("nope", "x")).await,
        Code::InvalidArgument,
    );

    let r = http(server.metrics_addr(), "GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers
    );
    assert!(
        r.body
            .contains("# TYPE larder_grpc_requests_total counter\n"),
        "{}",
        r.body
    );
    let m = parse(&r.body);

    assert_eq!(calls(&m, CACHE, "Get", "OK"), 2.0);
    assert_eq!(calls(&m, CACHE, "Get", "InvalidArgument"), 1.0);
    assert_eq!(calls(&m, CACHE, "Set", "OK"), 1.0);
    assert_eq!(calls(&m, CACHE, "Scan", "OK"), 1.0);
    assert_eq!(calls(&m, SESSIONS, "CreateSession", "OK"), 2.0);
    assert_eq!(calls(&m, SESSIONS, "RevokeSession", "OK"), 1.0);
    assert_eq!(calls(&m, RATE_LIMITS, "Check", "OK"), 4.0);
    assert_eq!(calls(&m, RATE_LIMITS, "Check", "InvalidArgument"), 1.0);
    assert_eq!(calls(&m, RATE_LIMITS, "Peek", "OK"), 1.0);
    let calls_total: f64 = m
        .iter()
        .filter(|s| s.name == "larder_grpc_requests_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(calls_total, 14.0, "no other call was counted");

    let get_labels = [("service", CACHE), ("method", "Get")];
    assert_eq!(
        must(
            &m,
            "larder_grpc_request_duration_seconds_count",
            &get_labels
        ),
        3.0
    );
    let inf = [("service", CACHE), ("method", "Get"), ("le", "+Inf")];
    assert_eq!(
        must(&m, "larder_grpc_request_duration_seconds_bucket", &inf),
        3.0
    );
    let smallest = [("service", CACHE), ("method", "Get"), ("le", "5e-05")];
    assert!(
        value(&m, "larder_grpc_request_duration_seconds_bucket", &smallest).is_some(),
        "the smallest bucket is 50 µs: {:?}",
        m.iter()
            .filter(|s| s.name == "larder_grpc_request_duration_seconds_bucket")
            .map(|s| &s.labels["le"])
            .collect::<Vec<_>>()
    );

    assert_eq!(must(&m, "larder_cache_hits_total", &[]), 1.0);
    assert_eq!(must(&m, "larder_cache_misses_total", &[]), 1.0);
    assert_eq!(must(&m, "larder_cache_memory_hits_total", &[]), 1.0);
    assert_eq!(must(&m, "larder_cache_sets_total", &[]), 1.0);
    assert_eq!(must(&m, "larder_cache_deletes_total", &[]), 0.0);
    assert_eq!(must(&m, "larder_cache_expirations_total", &[]), 0.0);
    assert_eq!(must(&m, "larder_cache_evictions_total", &[]), 0.0);
    assert_eq!(
        must(&m, "larder_cache_disk_bytes", &[]),
        // The row's charge: namespace ("default") and key twice, the value, 64 bytes.
        (2 * ("default".len() + "a".len()) + "value".len() + 64) as f64
    );
    assert!(must(&m, "larder_cache_memory_bytes", &[]) > 0.0);

    assert_eq!(must(&m, "larder_sessions_live", &[]), 1.0);

    let checks = |policy: &str, result: &str| {
        must(
            &m,
            "larder_ratelimit_checks_total",
            &[("policy", policy), ("result", result)],
        )
    };
    assert_eq!(checks("login", "allowed"), 2.0);
    assert_eq!(checks("login", "denied"), 1.0);
    assert_eq!(checks("", "allowed"), 1.0);
    assert_eq!(checks("", "denied"), 0.0);
    let policies: Vec<&str> = m
        .iter()
        .filter(|s| s.name == "larder_ratelimit_checks_total")
        .map(|s| s.labels["policy"].as_str())
        .collect();
    assert_eq!(policies.len(), 4, "only login and inline: {policies:?}");
    assert_eq!(must(&m, "larder_ratelimit_memory_keys", &[]), 2.0);

    // Set, two CreateSessions and a RevokeSession went through the writer (and maybe the
    // rate-limit write-behind too), in one or more batches.
    assert!(must(&m, "larder_writer_batch_commands_count", &[]) >= 1.0);
    assert!(must(&m, "larder_writer_batch_commands_sum", &[]) >= 4.0);
    assert!(must(&m, "larder_writer_commit_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(must(&m, "larder_writer_failed_batches_total", &[]), 0.0);

    assert!(must(&m, "larder_database_size_bytes", &[]) > 0.0);
    assert!(must(&m, "larder_wal_size_bytes", &[]) >= 0.0);
    if cfg!(target_os = "linux") {
        assert!(must(&m, "process_resident_memory_bytes", &[]) > 0.0);
        assert!(must(&m, "process_start_time_seconds", &[]) > 1.6e9);
    }

    // Scrapes are not gRPC calls: a second one sees the same counts.
    let again = scrape(&server).await;
    assert_eq!(calls(&again, CACHE, "Get", "OK"), 2.0);
    drop((cache, sessions, limits));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_the_client_abandons_counts_as_canceled() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let mut server = TestServer::start_with_metrics(ServerSettings::default()).await;
    // A connection over the Unix socket of which the test keeps a handle, to cut it as a
    // client that dies (or is killed) mid-call does.
    let path = server.socket_path();
    let kept: Arc<Mutex<Option<std::os::unix::net::UnixStream>>> = Arc::default();
    let keep = kept.clone();
    let channel = Endpoint::try_from("http://localhost")
        .expect("a valid endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (path, keep) = (path.clone(), keep.clone());
            async move {
                let std = UnixStream::connect(path).await?.into_std()?;
                *keep.lock().unwrap() = Some(std.try_clone()?);
                Ok::<_, std::io::Error>(TokioIo::new(UnixStream::from_std(std)?))
            }
        }))
        .await
        .expect("connecting over the Unix socket");
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // A request stream the client never closes: the call is still running when it leaves.
    let requests = tokio_stream::iter([ask]).chain(tokio_stream::pending());
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .expect("opening the reflection stream")
        .into_inner();
    answers
        .next()
        .await
        .expect("an answer")
        .expect("a good answer");
    let labels = |code| {
        [
            ("service", "grpc.reflection.v1.ServerReflection"),
            ("method", "ServerReflectionInfo"),
            ("code", code),
        ]
    };
    let m = scrape(&server).await;
    assert_eq!(
        value(&m, "larder_grpc_requests_total", &labels("Canceled")),
        None,
        "counted while still running"
    );

    kept.lock()
        .unwrap()
        .take()
        .expect("the connection")
        .shutdown(std::net::Shutdown::Both)
        .expect("cutting the connection");
    let mut counted = None;
    for _ in 0..POLLS {
        counted = value(
            &scrape(&server).await,
            "larder_grpc_requests_total",
            &labels("Canceled"),
        );
        if counted.is_some() {
            break;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    assert_eq!(counted, Some(1.0), "the abandoned call is counted once");
    let m = scrape(&server).await;
    assert_eq!(
        value(&m, "larder_grpc_requests_total", &labels("OK")),
        None,
        "and under no other code"
    );
    drop((answers, client));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_get_metrics_is_served_and_it_stops_with_the_server() {
    let mut server = TestServer::start_with_metrics(ServerSettings::default()).await;
    let addr = server.metrics_addr();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/metrics/"),
        ("GET", "/metricsx"),
        ("POST", "/metrics"),
        ("HEAD", "/metrics"),
    ] {
        let r = http(addr, method, path, None).await;
        assert_eq!(r.status, 404, "{method} {path}");
    }

    // A query string is still /metrics.
    assert_eq!(http(addr, "GET", "/metrics?x=1", None).await.status, 200);

    // A scraper asking for OpenMetrics gets it; the same numbers parse out of it.
    let mut cache = server.client().await;
    set(&mut cache, "", "k", "v", 0).await;
    let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
    let r = http(addr, "GET", "/metrics", Some(accept)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"].starts_with("application/openmetrics-text; version=1.0.0"),
        "{:?}",
        r.headers
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    let m = parse(&r.body);
    assert_eq!(calls(&m, CACHE, "Set", "OK"), 1.0);
    assert_eq!(must(&m, "larder_cache_sets_total", &[]), 1.0);
    drop(cache);

    server.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the metrics endpoint still accepts connections after the server stopped"
    );
}

/// A TCP port that was free a moment ago (the daemon is given it; see the retry below).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding port 0");
    l.local_addr().expect("the bound address").port()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_metrics_at_metrics_listen() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    // The daemon cannot report a port 0 it bound for metrics before it serves, so the test
    // picks a free port; if something else takes it in between, it tries another.
    for attempt in 0..3 {
        let port = free_port().await;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = tmp.path().join(format!("serve-{attempt}.log"));
        let mut child = larder(
            &[
                "serve".as_ref(),
                "--data-dir".as_ref(),
                tmp.path().join("data").as_os_str(),
                "--listen".as_ref(),
                "none".as_ref(),
                "--unix-socket".as_ref(),
                socket.as_os_str(),
                "--metrics-listen".as_ref(),
                addr.to_string().as_ref(),
            ],
            &log,
        )
        .spawn()
        .expect("starting larder");
        let mut exited = None;
        let mut scraped = None;
        for _ in 0..POLLS {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            if TcpStream::connect(addr).await.is_ok() {
                scraped = Some(http(addr, "GET", "/metrics", None).await);
                break;
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
        if let Some(status) = exited {
            let stderr = read_log(&log);
            assert!(
                stderr.contains(&format!("cannot serve metrics on {addr}")),
                "larder exited with {status}:\n{stderr}"
            );
            continue;
        }
        let Some(r) = scraped else {
            let _ = child.kill();
            panic!("no metrics at {addr}:\n{}", read_log(&log));
        };
        assert_eq!(r.status, 200);
        let m = parse(&r.body);
        assert!(must(&m, "larder_database_size_bytes", &[]) > 0.0);
        assert_eq!(must(&m, "larder_sessions_live", &[]), 0.0);

        let kill = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(kill.success());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .expect("waiting for larder");
        assert!(status.success(), "SIGTERM: {status}:\n{}", read_log(&log));
        let logged = read_log(&log);
        assert!(
            logged
                .lines()
                .any(|l| l.contains("serving metrics at /metrics") && l.contains(&addr.to_string())),
            "{logged}"
        );
        return;
    }
    panic!("three free ports in a row were taken before larder could bind them");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_refuses_a_metrics_address_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding port 0");
    let addr = taken.local_addr().unwrap().to_string();
    let log = tmp.path().join("refused.log");
    let socket = tmp.path().join("l.sock");
    let cmd = larder(
        &[
            "serve".as_ref(),
            "--data-dir".as_ref(),
            tmp.path().join("data").as_os_str(),
            "--listen".as_ref(),
            "none".as_ref(),
            "--unix-socket".as_ref(),
            socket.as_os_str(),
            "--metrics-listen".as_ref(),
            addr.as_ref(),
        ],
        &log,
    );
    let (status, stderr) = refused(cmd, &log).await;
    assert!(!status.success(), "larder started: {stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")),
        "the message does not name the address: {stderr}"
    );
    assert!(!socket.exists(), "no socket file is left behind");
    drop(taken);
}

#[test]
fn the_test_parser_reads_labels_with_escapes() {
    let s = parse_line(r#"m_total{a="x\"y",b="1\\2\n",c=""} 3.5"#).expect("a sample");
    assert_eq!(s.name, "m_total");
    assert_eq!(s.value, 3.5);
    assert_eq!(s.labels["a"], "x\"y");
    assert_eq!(s.labels["b"], "1\\2\n");
    assert_eq!(s.labels["c"], "");
    assert_eq!(parse_line("plain 7").map(|s| s.value), Some(7.0));
}
