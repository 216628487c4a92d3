//! Backpressure: clients that ask for large answers and never read them. The daemon holds at
//! most its in-flight byte budget (`server.max_inflight_bytes`) for them, answers the calls
//! past it `UNAVAILABLE`, goes on serving a client that reads, and once the write deadline
//! (`server.write_timeout`) has closed the stuck connections, holds nothing.
//!
//! The stuck clients speak HTTP/2 (with windows large enough that the daemon may send whole
//! answers at once) over a Unix socket, then stop reading it: the daemon's writes fill the
//! socket's buffers and wait. Memory is the daemon's resident set, read from `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::binary::{POLL_PAUSE, POLLS, larder, read_log};
use crate::common::{set, unix_channel};

/// Each value, and how many one GetMany asks for: a 16 MiB answer.
const VALUE: usize = 1 << 20;
const ENTRIES: usize = 16;
/// The daemon's budget: room for two such answers, not three.
const BUDGET_MIB: u64 = 40;
/// Clients that never read, and the GetMany calls each sends: 384 MiB of answers in all.
const STUCK_CLIENTS: usize = 6;
const CALLS_EACH: usize = 4;
/// The daemon's write deadline: long enough to look at it while the clients are stuck.
const WRITE_TIMEOUT: &str = "5s";
/// What the resident set may grow by past the budget: one maximal message encoded and dropped
/// at a time (one worker thread), about 17 MiB, and as much again for the allocator's slack
/// (freed pages it keeps, the buffers a 16 MiB answer is grown through). Without the budget
/// the daemon would hold every answer, 384 MiB.
const OVERHEAD_MIB: u64 = 48;

/// The daemon under test, killed if the test ends while it runs.
struct Larder {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Larder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Larder {
    /// Its resident set, in MiB.
    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading the daemon's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status");
        kib >> 10
    }
}

/// A free TCP port on loopback, for the metrics listener (the daemon cannot report one it
/// picked before it serves).
async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// The value of an unlabelled sample, or of the first with `labels` in it, in a scrape of
/// `addr`'s `/metrics`.
async fn metric(addr: SocketAddr, name: &str, labels: &str) -> Option<f64> {
    let mut io = TcpStream::connect(addr).await.ok()?;
    io.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    io.read_to_string(&mut text).await.ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let matches =
            series == name || (series.starts_with(&format!("{name}{{")) && series.contains(labels));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Polls `metric` (bounded) until `done` holds for it; its last value.
async fn wait_for(addr: SocketAddr, name: &str, labels: &str, done: impl Fn(f64) -> bool) -> f64 {
    let mut last = None;
    for _ in 0..POLLS {
        last = metric(addr, name, labels).await;
        if last.is_some_and(&done) {
            break;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    last.unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// A Unix socket that reads nothing while `paused`: the daemon's writes to it fill its
/// buffers and then wait.
struct Paused {
    io: UnixStream,
    paused: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl AsyncRead for Paused {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.paused.load(Ordering::SeqCst) {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            // Checked again, in case it was resumed before the waker was stored.
            if self.paused.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Paused {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client that sends [`CALLS_EACH`] GetMany calls for the large values and reads nothing
/// until [`Stuck::resume`].
struct Stuck {
    paused: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
    answers: Vec<h2::client::ResponseFuture>,
}

impl Stuck {
    async fn start(socket: &Path, body: Bytes) -> Self {
        let paused = Arc::new(AtomicBool::new(true));
        let waker = Arc::new(Mutex::new(None));
        let io = Paused {
            io: UnixStream::connect(socket).await.unwrap(),
            paused: paused.clone(),
            waker: waker.clone(),
        };
        // Windows large enough for every answer: only the socket holds the daemon back.
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(i32::MAX as u32)
            .initial_connection_window_size(i32::MAX as u32)
            .handshake::<_, Bytes>(io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut answers = Vec::new();
        for _ in 0..CALLS_EACH {
            let mut ready = client.clone().ready().await.expect("a stream");
            let request = http::Request::builder()
                .method("POST")
                .uri("http://localhost/larder.v1.CacheService/GetMany")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (answer, mut stream) = ready.send_request(request, false).unwrap();
            stream.send_data(body.clone(), true).unwrap();
            answers.push(answer);
        }
        Self {
            paused,
            waker,
            answers,
        }
    }

    /// Reads again: what the daemon wrote, then the end of a connection it closed. How many
    /// of its calls were refused, and how many were cut off (the connection closed before or
    /// while their answers were written); none may have been answered in full.
    async fn resume(self) -> (usize, usize) {
        self.paused.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
        let (mut refused, mut cut) = (0, 0);
        for answer in self.answers {
            let read = async {
                let Ok(response) = answer.await else {
                    return None;
                };
                if let Some(code) = response.headers().get("grpc-status") {
                    return Some(code.to_str().unwrap().to_owned());
                }
                let mut body = response.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.ok()?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let trailers = body.trailers().await.ok()??;
                Some(trailers.get("grpc-status")?.to_str().unwrap().to_owned())
            };
            match tokio::time::timeout(Duration::from_secs(30), read)
                .await
                .expect("a stuck client's call neither answered nor cut off")
            {
                Some(code) if code == "14" => refused += 1,
                Some(code) => panic!("a call nobody read was answered with status {code}"),
                None => cut += 1,
            }
        }
        (refused, cut)
    }
}

/// A GetMany request for every large value, as a gRPC frame.
fn get_many_frame() -> Bytes {
    let request = pb::GetManyRequest {
        keys: (0..ENTRIES).map(|i| format!("big{i}")).collect(),
        ..Default::default()
    };
    let payload = request.encode_to_vec();
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(&payload);
    b.freeze()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_read_large_answers_hold_at_most_the_byte_budget_until_the_write_deadline()
 {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let log = tmp.path().join("larder.log");
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port().await).into();
    let child = larder(
        &[
            "serve".as_ref(),
            "--data-dir".as_ref(),
            tmp.path().join("data").as_os_str(),
            "--listen".as_ref(),
            "none".as_ref(),
            "--unix-socket".as_ref(),
            socket.as_os_str(),
            "--metrics-listen".as_ref(),
            metrics.to_string().as_ref(),
            "--max-inflight-bytes".as_ref(),
            format!("{BUDGET_MIB}MiB").as_ref(),
            "--write-timeout".as_ref(),
            WRITE_TIMEOUT.as_ref(),
        ],
        &log,
    )
    .spawn()
    .expect("starting larder");
    let daemon = Larder {
        child,
        log: log.clone(),
    };
    for _ in 0..POLLS {
        if UnixStream::connect(&socket).await.is_ok() && TcpStream::connect(metrics).await.is_ok() {
            break;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    let mut reader =
        CacheServiceClient::new(unix_channel(&socket).await).max_decoding_message_size(64 << 20);
    for i in 0..ENTRIES {
        set(&mut reader, "", &format!("big{i}"), "v".repeat(VALUE), 0).await;
    }
    // One whole answer read, so the figure below includes what serving one costs.
    let keys: Vec<String> = (0..ENTRIES).map(|i| format!("big{i}")).collect();
    let answer = reader
        .get_many(pb::GetManyRequest {
            keys: keys.clone(),
            ..Default::default()
        })
        .await
        .expect("a GetMany that is read")
        .into_inner();
    assert_eq!(answer.entries.len(), ENTRIES);
    assert!(answer.entries.iter().all(|e| e.value.len() == VALUE));
    let before = daemon.rss_mib();

    let body = get_many_frame();
    let mut stuck = Vec::new();
    for _ in 0..STUCK_CLIENTS {
        stuck.push(Stuck::start(&socket, body.clone()).await);
    }
    // Every call is answered one way or the other: two are held, the others refused.
    let refused = STUCK_CLIENTS * CALLS_EACH - 2;
    wait_for(
        metrics,
        "larder_inflight_refused_total",
        "stage=\"response\"",
        |n| n >= refused as f64,
    )
    .await;
    let held = metric(metrics, "larder_inflight_bytes", "").await.unwrap();
    assert!(
        held <= (BUDGET_MIB << 20) as f64,
        "{held} bytes held, over the budget"
    );

    // A client that reads is served meanwhile, small answers and large ones alike.
    set(&mut reader, "", "small", "v", 0).await;
    let small = reader
        .get(pb::GetRequest {
            key: "small".into(),
            ..Default::default()
        })
        .await
        .expect("a Get while others are stuck")
        .into_inner();
    assert_eq!(&small.value[..], b"v");

    let mut peak = daemon.rss_mib();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(daemon.rss_mib());
    }
    let bound = before + BUDGET_MIB + OVERHEAD_MIB;
    assert!(
        peak <= bound,
        "resident set {peak} MiB while clients do not read, over {bound} MiB ({before} MiB \
         before, a {BUDGET_MIB} MiB budget, {OVERHEAD_MIB} MiB overhead)"
    );

    // The write deadline closes the stuck connections, and with them what they held.
    let held = wait_for(metrics, "larder_inflight_bytes", "", |n| n == 0.0).await;
    assert_eq!(held, 0.0, "bytes still held after the write deadline");
    let (mut refused_seen, mut cut) = (0, 0);
    for s in stuck {
        let (r, c) = s.resume().await;
        refused_seen += r;
        cut += c;
    }
    assert_eq!(refused_seen + cut, STUCK_CLIENTS * CALLS_EACH);
    assert!(
        cut >= 2,
        "the two answers held were not cut off with their connections ({refused_seen} refused)"
    );
    let after = reader
        .get_many(pb::GetManyRequest {
            keys,
            ..Default::default()
        })
        .await
        .expect("a large answer after the stuck clients are gone")
        .into_inner();
    assert_eq!(after.entries.len(), ENTRIES);
    let text = read_log(&daemon.log);
    assert!(!text.contains("panicked"), "the daemon panicked:\n{text}");
}
