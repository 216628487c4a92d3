//! Connections nobody can hog: a connection that has made no real call (one that passed auth
//! and is not health) loses its place at the auth deadline, Watch-only ones included; one
//! peer address holds at most its share of the places (Unix socket clients are not counted);
//! health Watch streams are bounded over all connections; a connection past its maximum age
//! gets GOAWAY and is closed after the grace, and its client reconnects; and health requests
//! are capped at about 1 KiB, so a flood of oversized ones is refused at once and does not
//! pin the daemon's memory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use larder::ServerSettings;
use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::binary::{POLL_PAUSE, POLLS, read_log, serve};
use crate::common::{TestServer, get, set, unix_channel};

/// The HTTP/2 client preface, then an empty SETTINGS frame: what a client sends before its
/// first call. A connection that sent it has passed the handshake deadline.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A generous bound on each wait below (for a close, an answer, a reconnect): a bound that
/// keeps a failing test from hanging, never a measurement.
const WAIT: Duration = Duration::from_secs(15);

/// Raises this process's soft limit on open files to `want` (or the hard limit, if lower),
/// and fails, saying why, if that stays under `need`: the flood below holds both ends of its
/// connections in this one process.
fn raise_fd_limit(want: u64, need: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            // What is in force now, whether or not the raise was allowed.
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    assert!(
        limit.rlim_cur >= need,
        "this test holds about {need} files open, over the hard limit of {} (ulimit -Hn)",
        limit.rlim_cur
    );
}

/// A TCP connection to `addr` from the loopback address `from` (any of 127.0.0.0/8 reaches
/// the loopback interface on Linux: one process plays several peers) that has sent the
/// preface and SETTINGS and then stays silent. The server may have closed it at accept
/// already, in which case the write fails, which is ignored: [`answered`] tells.
async fn idle_connection(addr: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("binding a loopback source address");
    let mut io = socket.connect(addr).await.expect("connecting over TCP");
    let _ = io.write_all(PREFACE_AND_SETTINGS).await;
    io
}

/// Whether the server answered the preface (with its own SETTINGS) rather than closing the
/// connection without a byte, as it does to a connection it refuses at accept.
async fn answered(io: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, io.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Reads until the server closes `io`; false if it is still open after [`WAIT`].
async fn closed_by_server(io: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(WAIT, async {
        while let Ok(n) = io.read(&mut buf).await
            && n > 0
        {}
    })
    .await
    .is_ok()
}

/// Waits (bounded) until `watch` ends, by an error or its end; false if it still runs.
async fn ended(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> bool {
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await
    .is_ok()
}

/// A health Watch of the whole server on `channel`, after its first status.
async fn watch(
    channel: Channel,
) -> Result<tonic::Streaming<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let first = stream.message().await?;
    assert!(first.is_some(), "a Watch starts with the current status");
    Ok(stream)
}

/// A Set over a new connection to `addr`, retried (bounded) while the server refuses it.
async fn served_eventually(addr: SocketAddr) {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let started = Instant::now();
    loop {
        let mut c = CacheServiceClient::new(endpoint.connect_lazy());
        let r = c
            .set(pb::SetRequest {
                key: "late".into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                assert!(r.into_inner().stored);
                return;
            }
            Err(e) if started.elapsed() > WAIT => panic!("never served: {e:?}"),
            Err(_) => tokio::time::sleep(POLL_PAUSE).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_and_health_watches_lose_their_places_at_the_auth_deadline() {
    const IDLE: usize = 600;
    const WATCH_CONNECTIONS: usize = 2;
    const WATCHES_EACH: usize = 20;
    // Five source addresses, each under the default per-peer share (128): this flood is
    // what the per-peer bound cannot stop, and the auth deadline must.
    const PEERS: usize = 5;
    // Both ends of the flood, the server's places and the rest of the suite's files.
    raise_fd_limit(8192, (IDLE + 512 + 512) as u64);
    // Short, so that the test takes seconds; long enough to open the Watch streams first.
    let server = TestServer::with_settings(ServerSettings {
        auth_timeout: Duration::from_secs(2),
        ..ServerSettings::default()
    })
    .await;
    let defaults = ServerSettings::default();
    assert!(IDLE > defaults.max_connections, "the flood fills the table");
    assert!(IDLE / PEERS < defaults.max_connections_per_peer);
    assert!(WATCH_CONNECTIONS * WATCHES_EACH < defaults.max_health_watches);

    // A client that has made a real call keeps its place throughout.
    let mut early = server.client().await;
    set(&mut early, "", "early", "v", 0).await;

    // Connections that only watch health (no token needed), then the idle flood.
    let mut watches = Vec::new();
    for _ in 0..WATCH_CONNECTIONS {
        let channel = server.channel().await;
        for _ in 0..WATCHES_EACH {
            watches.push(
                watch(channel.clone())
                    .await
                    .expect("a Watch under the bound"),
            );
        }
    }
    let mut idle = Vec::new();
    for i in 0..IDLE {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (i % PEERS) as u8);
        idle.push(idle_connection(server.tcp_addr(), from).await);
    }
    assert_eq!(get(&mut early, "", "early").await.value, "v");

    // A new client is served once the deadline has emptied the table, at the latest.
    served_eventually(server.tcp_addr()).await;
    for (i, io) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(io).await,
            "idle connection {i} is still open after the auth deadline"
        );
    }
    for (i, w) in watches.iter_mut().enumerate() {
        assert!(ended(w).await, "Watch {i} outlived the auth deadline");
    }
    assert_eq!(get(&mut early, "", "late").await.value, "v");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_at_most_its_share_of_the_connections_and_unix_clients_are_not_counted() {
    const SHARE: usize = 3;
    let server = TestServer::with_settings(ServerSettings {
        max_connections_per_peer: SHARE,
        ..ServerSettings::default()
    })
    .await;
    let addr = server.tcp_addr();
    let here = Ipv4Addr::LOCALHOST;
    let mut held = Vec::new();
    for i in 0..SHARE {
        let mut io = idle_connection(addr, here).await;
        assert!(
            answered(&mut io).await,
            "connection {i} is within the share"
        );
        held.push(io);
    }
    let mut over = idle_connection(addr, here).await;
    assert!(
        !answered(&mut over).await,
        "one past the share is closed at accept"
    );

    // Another address has a share of its own.
    let mut other = idle_connection(addr, Ipv4Addr::new(127, 0, 0, 2)).await;
    assert!(answered(&mut other).await, "another peer is let in");
    // Unix socket clients are not counted per peer.
    let mut unix = Vec::new();
    for i in 0..SHARE + 2 {
        let mut io = UnixStream::connect(server.socket_path()).await.unwrap();
        io.write_all(PREFACE_AND_SETTINGS).await.unwrap();
        assert!(answered(&mut io).await, "unix connection {i} is let in");
        unix.push(io);
    }
    let mut c = CacheServiceClient::new(unix_channel(&server.socket_path()).await);
    set(&mut c, "", "k", "v", 0).await;

    // A closed connection gives its place back (once the server has seen it close).
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut io = idle_connection(addr, here).await;
        if answered(&mut io).await {
            break;
        }
        assert!(started.elapsed() < WAIT, "the freed place was never reused");
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_watches_past_the_bound_are_refused_and_an_ended_one_frees_its_place() {
    const WATCHES: usize = 2;
    let server = TestServer::with_settings(ServerSettings {
        max_health_watches: WATCHES,
        ..ServerSettings::default()
    })
    .await;
    let channel = server.channel().await;
    let mut open = Vec::new();
    for _ in 0..WATCHES {
        open.push(
            watch(channel.clone())
                .await
                .expect("a Watch under the bound"),
        );
    }
    // A new connection does not get around it: the bound is over all connections.
    let status = watch(server.channel().await)
        .await
        .expect_err("a Watch past the bound");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("server.max_health_watches"),
        "{status:?}"
    );
    // Check still answers, and so do the Larder services.
    assert_eq!(crate::common::health(channel.clone(), "").await.unwrap(), 1);
    let mut c = server.client().await;
    set(&mut c, "", "k", "v", 0).await;

    drop(open.pop());
    let started = Instant::now();
    loop {
        match watch(channel.clone()).await {
            Ok(w) => {
                open.push(w);
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted && started.elapsed() < WAIT => {
                tokio::time::sleep(POLL_PAUSE).await;
            }
            Err(s) => panic!("the ended Watch's place was never given back: {s:?}"),
        }
    }
}

/// Reads HTTP/2 frames from `io` until the server closes it; the types of the frames read.
async fn frame_types_until_closed(io: &mut TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    let read = async {
        loop {
            let mut header = [0u8; 9];
            if io.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            types.push(header[3]);
            let mut payload = vec![0u8; len];
            if io.read_exact(&mut payload).await.is_err() {
                return;
            }
        }
    };
    let closed = tokio::time::timeout(WAIT, read).await.is_ok();
    assert!(closed, "still open after the age and its grace: {types:?}");
    types
}

/// HTTP/2's GOAWAY frame type.
const GOAWAY: u8 = 0x7;

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_past_its_age_gets_goaway_then_is_closed_after_the_grace_and_clients_reconnect()
 {
    let server = TestServer::with_settings(ServerSettings {
        max_connection_age: Duration::from_secs(1),
        max_connection_age_grace: Duration::from_secs(1),
        // Far past the test, so that only the age closes these connections.
        auth_timeout: Duration::from_secs(600),
        ..ServerSettings::default()
    })
    .await;
    let mut c = server.client().await;
    set(&mut c, "", "k", "v", 0).await;
    // A stream that never ends by itself: GOAWAY lets it run, the end of the grace does not.
    let mut endless = watch(server.channel().await).await.unwrap();
    // A peer that never answers the GOAWAY's ping, so that only the hard close ends it.
    let mut raw = idle_connection(server.tcp_addr(), Ipv4Addr::LOCALHOST).await;

    let frames = frame_types_until_closed(&mut raw).await;
    assert!(
        frames.contains(&GOAWAY),
        "closed without a GOAWAY first: {frames:?}"
    );
    assert!(ended(&mut endless).await, "the Watch outlived the grace");
    // The client's connection got the same GOAWAY; it reconnects for its next call.
    assert_eq!(get(&mut c, "", "k").await.value, "v");
}

#[test]
fn the_locked_tonic_sends_goaway_at_the_age_without_panicking() {
    // tonic 0.14.5 and 0.14.6 panic ("`async fn` resumed after completion",
    // hyperium/tonic#2522) when a connection reaches max_connection_age without
    // max_connection_age_grace, which is how routes.rs sets it (tonic's grace would replace
    // the GOAWAY by a hard close); 0.14.9 fuses the timer. A lock file moved to an older
    // tonic must not pass unnoticed.
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .expect("reading Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"tonic\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("tonic in Cargo.lock");
    let parts: Vec<u64> = version.split('.').map(|n| n.parse().unwrap()).collect();
    assert!(
        parts >= vec![0, 14, 9],
        "tonic {version} is locked; before 0.14.9 its max_connection_age may panic"
    );
}

/// The daemon's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}

/// The built daemon, killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The grpc-status of a response, from its headers (trailers-only) or its trailers; `None`
/// if the stream was reset or closed without one.
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<i32> {
    let status = |h: &http::HeaderMap| h.get("grpc-status")?.to_str().ok()?.parse().ok();
    let response = response.await.ok()?;
    if let Some(code) = status(response.headers()) {
        return Some(code);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.ok()?.len());
    }
    status(&body.trailers().await.ok()??)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_oversized_health_requests_is_refused_at_once_and_memory_stays_bounded() {
    const CONNECTIONS: usize = 4;
    const CALLS_EACH: usize = 50;
    // Each call claims this much and sends all of it but the last byte, which is what a
    // server without a small health limit buffers while it waits for the rest.
    const CLAIMED: usize = 1 << 20;
    // The stated bound on the daemon's growth: a tenth of what the flood would pin.
    const BOUND: u64 = (CONNECTIONS * CALLS_EACH * CLAIMED / 10) as u64;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let log = tmp.path().join("larder.log");
    let daemon = Killed(
        serve(&tmp.path().join("data"), &socket, &log)
            .spawn()
            .expect("starting larder"),
    );
    let pid = daemon.0.id();
    for _ in 0..POLLS {
        if UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    let mut c = CacheServiceClient::new(unix_channel(&socket).await);
    set(&mut c, "", "before", "v", 0).await;
    let before = rss(pid);

    let mut body = BytesMut::with_capacity(5 + CLAIMED - 1);
    body.put_u8(0);
    body.put_u32(CLAIMED as u32);
    body.put_bytes(b'x', CLAIMED - 1);
    // One buffer shared by every stream: the test itself does not hold 200 MiB.
    let body: Bytes = body.freeze();
    let mut answers = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let io = UnixStream::connect(&socket).await.unwrap();
        let (client, connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        for _ in 0..CALLS_EACH {
            let mut ready = client.clone().ready().await.unwrap();
            let request = http::Request::builder()
                .method("POST")
                .uri("http://localhost/grpc.health.v1.Health/Check")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (response, mut stream) = ready.send_request(request, false).unwrap();
            let _ = stream.send_data(body.clone(), false);
            answers.push(tokio::spawn(grpc_status(response)));
            // Kept open: the last byte never comes.
            streams.push(stream);
        }
    }
    let mut peak = rss(pid);
    for (i, answer) in answers.into_iter().enumerate() {
        let code = tokio::time::timeout(WAIT, answer)
            .await
            .unwrap_or_else(|_| panic!("call {i} was never answered"))
            .unwrap();
        peak = peak.max(rss(pid));
        assert_eq!(
            code,
            Some(Code::OutOfRange as i32),
            "call {i}: refused from its claimed length"
        );
    }
    // Memory is measured while every stream is still open, and a real client is served.
    assert_eq!(get(&mut c, "", "before").await.value, "v");
    assert_eq!(
        crate::common::health(unix_channel(&socket).await, "")
            .await
            .unwrap(),
        1
    );
    peak = peak.max(rss(pid));
    let grown = peak.saturating_sub(before);
    println!("daemon RSS {before} bytes before the flood, {peak} at its peak (bound: +{BOUND})");
    assert!(
        grown < BOUND,
        "the daemon grew by {grown} bytes under the flood (bound {BOUND})"
    );
    drop(streams);
    let log = read_log(&log);
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}
