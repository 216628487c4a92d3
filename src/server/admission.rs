//! Overload protection: a bound on open connections (over every listener) and on calls in
//! progress (over every connection). Past either bound the server answers at once rather
//! than queueing without limit: an extra connection is closed as it is accepted, an extra
//! call gets `UNAVAILABLE`, which gRPC clients and Envoy treat as "retry elsewhere or later"
//! (the same code a shutting-down server gives). Health checks are never refused, so a busy
//! daemon is not mistaken for a dead one.
//!
//! Every connection also holds its place only while it is used: one that has not sent the
//! 24 bytes of the HTTP/2 connection preface within the handshake timeout
//! ([`HANDSHAKE_TIMEOUT`] by default) of being accepted is closed (a client that connects and
//! stays silent, or stops part-way through the preface, cannot fill the table; once the
//! preface is in, HTTP/2 keepalive closes a peer that stops answering). Over TLS the same
//! deadline covers the TLS handshake and then the preface, counted on the decrypted bytes
//! ([`Admission`] is the place taken at accept, before the handshake). A connection whose
//! writes make no progress for the write timeout (`server.write_timeout`: the client stopped
//! reading, and the socket's buffers are full) is closed too, which drops the answers it
//! holds and returns their bytes to the in-flight budget ([`super::budget`]). At shutdown
//! [`ConnectionLimit::cut`] closes every connection still open after the drain deadline, so
//! that no call outlives the store.
//!
//! Past the preface a place is still earned, not kept for free (any HTTP/2 stack answers
//! keepalive pings, and health needs no token):
//!
//! - A connection that has not started a real call within the auth timeout
//!   ([`AUTH_TIMEOUT`] by default) of being accepted is closed. A real call is one that passed
//!   authentication and is not `grpc.health.v1.Health` (with auth off: any call but health).
//!   Starting one is enough, not finishing it: the token is decided on the headers, and a
//!   slow first call (or a stream) must not be cut. Health-only connections (load balancer
//!   probes, Watch streams) are therefore closed at the deadline and reconnect.
//! - A connection older than the maximum age gets an HTTP/2 GOAWAY from tonic, and is closed
//!   here once the grace period after that has passed too (calls still open then end).
//! - Over TCP, one peer address holds at most [`PeerTable`]'s share of the places, taken at
//!   accept like the global ones (IPv6 peers are counted by their /64). Unix socket
//!   connections are not counted per peer: the socket's file mode decides who connects.
//! - Health Watch streams, which never end by themselves and are not calls in progress, are
//!   bounded over all connections; one past the bound gets `RESOURCE_EXHAUSTED`.

use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::Connected;

use super::throttle::Throttled;

/// Path prefix of the health service, which is never refused.
pub(crate) const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The health service's streaming method, whose streams are bounded apart.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// The pipeline's streaming method: one call for `max_concurrent_requests` for as long as
/// its stream is open, so its place is held by the response body.
const PIPELINE_RUN: &str = "/larder.v1.PipelineService/Run";

/// How long an accepted connection may go without starting a real call (see the module
/// docs). Long enough for a client to connect, finish TLS and send its first call on a slow
/// link; short enough that idle connections cannot keep the table full.
pub(crate) const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an accepted connection may take to send [`PREFACE_BYTES`] (the HTTP/2 preface,
/// which a real client sends at once; over TLS, to finish the TLS handshake and then send it).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a connection must send within the handshake timeout: the length of the HTTP/2
/// client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`). hyper waits for the
/// whole preface without a deadline of its own, so counting only the first byte would let a
/// client hold its place forever by sending one. Over TLS they are counted after decryption:
/// the TLS handshake alone does not meet the deadline.
pub(crate) const PREFACE_BYTES: usize = 24;

/// The bound on open connections, shared by every listener.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    warn: Arc<Throttled>,
    /// Cancelled by [`ConnectionLimit::cut`]: every connection fails its next read or write.
    cut: CancellationToken,
    /// How long a new connection may stay silent.
    handshake_timeout: Duration,
    /// How long a connection's writes may make no progress; `None` for no bound.
    write_timeout: Option<Duration>,
    /// How long a connection may go without a real call, and how long it may live.
    lifetime: LifetimeBounds,
    /// The places each TCP peer holds.
    peers: Arc<PeerTable>,
}

impl ConnectionLimit {
    /// At most `limit` connections open at once, each closed if it sends nothing within
    /// `handshake_timeout` of being accepted. No per-peer bound, auth deadline nor age until
    /// the `with_` methods set them.
    pub(crate) fn new(limit: usize, handshake_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            warn: Arc::new(Throttled::new(
                "too many open connections (server.max_connections); closing new ones",
            )),
            cut: CancellationToken::new(),
            handshake_timeout,
            write_timeout: None,
            lifetime: LifetimeBounds::default(),
            peers: Arc::new(PeerTable::new(limit)),
        }
    }

    /// Closes a connection whose writes have made no progress for `timeout`.
    pub(crate) fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = Some(timeout);
        self
    }

    /// Each connection is closed if it has not started a real call within `timeout` of being
    /// accepted.
    pub(crate) fn with_auth_timeout(mut self, timeout: Duration) -> Self {
        self.lifetime.auth_timeout = Some(timeout);
        self
    }

    /// Each connection is closed `age + grace` after HTTP/2 starts on it (tonic sends the
    /// GOAWAY at `age`; see `routes::Router::serve`).
    pub(crate) fn with_max_age(mut self, age: Duration, grace: Duration) -> Self {
        self.lifetime.max_life = Some(age.saturating_add(grace));
        self
    }

    /// At most `per_peer` TCP connections from one peer address (see [`PeerTable`]).
    pub(crate) fn with_per_peer_limit(mut self, per_peer: usize) -> Self {
        self.peers = Arc::new(PeerTable::new(per_peer));
        self
    }

    /// Closes every connection still open: each fails its next read or write, which ends it
    /// and drops the calls it carries.
    pub(crate) fn cut(&self) {
        self.cut.cancel();
    }

    /// Waits, at most `within`, until every connection has closed; whether they all did.
    pub(crate) async fn closed(&self, within: Duration) -> bool {
        let all = u32::try_from(self.limit).unwrap_or(u32::MAX);
        tokio::time::timeout(within, self.permits.acquire_many(all))
            .await
            .is_ok_and(|acquired| acquired.is_ok())
    }

    /// The accepted connections of `incoming` that fit the bound, each holding its place
    /// until it closes; the others are closed at once. Accept errors pass through.
    pub(crate) fn limit<S, IO>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = io::Result<Limited<IO>>> + use<S, IO>
    where
        S: Stream<Item = io::Result<IO>>,
    {
        let this = self.clone();
        incoming.filter_map(move |accepted| match accepted {
            Err(e) => Some(Err(e)),
            Ok(io) => this.admit().map(|admission| Ok(admission.wrap(io))),
        })
    }

    /// The TCP connections of `incoming` whose peer address holds fewer than its share of
    /// places, each holding one until it closes; the others are closed at once (with a
    /// throttled warning naming the peer). Put before [`ConnectionLimit::limit`] (or the TLS
    /// accept), so that a peer over its share takes no place at all. Accept errors pass
    /// through.
    pub(crate) fn per_peer<S>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = io::Result<PerPeer<TcpStream>>> + use<S>
    where
        S: Stream<Item = io::Result<TcpStream>>,
    {
        let peers = self.peers.clone();
        incoming.filter_map(move |accepted| match accepted {
            Err(e) => Some(Err(e)),
            // A peer that is already gone has no address; its connection is dropped.
            Ok(io) => io.peer_addr().ok().and_then(|addr| {
                let slot = peers.take(addr.ip())?;
                Some(Ok(PerPeer { io, _slot: slot }))
            }),
        })
    }

    /// A place for a connection just accepted, its handshake deadline starting now; `None`
    /// (with a throttled warning) when every place is taken, and the connection is to be
    /// closed. For a connection with a handshake of its own (TLS) before HTTP/2 starts.
    pub(crate) fn admit(&self) -> Option<Admission> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(Admission {
                permit,
                cut: self.cut.clone(),
                deadline: Box::pin(tokio::time::sleep(self.handshake_timeout)),
                write_timeout: self.write_timeout,
                lifetime: Lifetime::accepted(self.lifetime),
            }),
            Err(_) => {
                self.warn.refused(self.limit);
                None
            }
        }
    }
}

/// A place taken by a connection that has not yet started HTTP/2, and the deadline it has to
/// send the preface by; [`Admission::wrap`] makes it the [`Limited`] connection.
#[derive(Debug)]
pub(crate) struct Admission {
    permit: OwnedSemaphorePermit,
    cut: CancellationToken,
    deadline: Pin<Box<Sleep>>,
    write_timeout: Option<Duration>,
    lifetime: Lifetime,
}

impl Admission {
    /// Runs `step` (a TLS handshake) unless the deadline passes or the server cuts every
    /// connection first; `None` then, and the step is dropped.
    pub(crate) async fn before_deadline<F: Future>(&mut self, step: F) -> Option<F::Output> {
        tokio::select! {
            done = step => Some(done),
            () = self.deadline.as_mut() => None,
            () = self.cut.cancelled() => None,
        }
    }

    /// `io` holding this place, with what is left of the deadline for the preface.
    pub(crate) fn wrap<IO>(self, io: IO) -> Limited<IO> {
        Limited {
            io,
            _permit: self.permit,
            cut_token: self.cut.clone(),
            registered: None,
            cut: Box::pin(self.cut.cancelled_owned()),
            silent: Some(self.deadline),
            received: 0,
            writes: WriteDeadline {
                timeout: self.write_timeout,
                stalled: None,
            },
            lifetime: self.lifetime.started(),
        }
    }
}

/// A connection counted against [`ConnectionLimit`]; its place is freed when it is dropped.
///
/// Its deadlines and the server's cut are registered with the connection's task only when a
/// read or write is about to wait (it returned `Pending`) with a waker they do not hold yet:
/// that is when the task needs them to wake it, and a connection's task keeps one waker. Every
/// other read or write checks them without registering (a clock read and a flag), so a busy
/// connection ends as promptly, and a call does not pay for re-registering two timers and a
/// cancellation waiter on each of its reads and writes.
#[derive(Debug)]
pub(crate) struct Limited<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    /// The server's cut, for the check that registers nothing.
    cut_token: CancellationToken,
    /// The waker the deadlines and the cut were last registered with.
    registered: Option<Waker>,
    /// Ready once the server cuts every connection.
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Until [`PREFACE_BYTES`] have arrived: the deadline for them.
    silent: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, counted up to [`PREFACE_BYTES`].
    received: usize,
    writes: WriteDeadline,
    /// The deadline for a real call, and the end of the connection's life.
    lifetime: Lifetime,
}

/// The write deadline of one connection: an error once its writes have been pending, with no
/// progress, for the timeout. A client that stops reading while answers are sent to it fills
/// the socket's buffers, and every write then waits on it; HTTP/2 keepalive does not notice,
/// since the pings wait behind the same writes (or are answered by a client that reads its
/// socket but grants no window, a case the write deadline cannot see: nothing is written).
#[derive(Debug)]
struct WriteDeadline {
    timeout: Option<Duration>,
    /// Since the first write that is still pending: the deadline.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    /// `polled` (the outcome of a write, flush or shutdown) as it is, or an error once writes
    /// have been pending for the timeout.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(timeout) = self.timeout else {
            return polled;
        };
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl<IO> Limited<IO> {
    /// An error once the connection must end (cut at shutdown, or silent too long), checked
    /// without registering the task for any of it: for a read or write that did not wait.
    fn ended_now(&mut self) -> Option<io::Error> {
        if self.cut_token.is_cancelled() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server is shutting down",
            ));
        }
        let now = tokio::time::Instant::now();
        passed_at(
            &self.silent,
            now,
            "the client did not send the HTTP/2 preface in time",
        )
        .or_else(|| self.lifetime.ended_at(now))
    }

    /// An error once the connection must end (cut at shutdown, or silent too long), for a
    /// read that is about to wait: the task is registered to be woken when that happens,
    /// unless it already is (the same waker).
    fn ended(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return self.ended_now();
        }
        let ended = self.register(cx);
        self.registered = Some(cx.waker().clone());
        ended
    }

    /// Polls the cut and every deadline, which registers the task with each.
    fn register(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.cut.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server is shutting down",
            ));
        }
        passed(
            &mut self.silent,
            cx,
            "the client did not send the HTTP/2 preface in time",
        )
        .or_else(|| self.lifetime.ended(cx))
    }
}

impl<IO> Limited<IO> {
    /// Whether the server has cut every connection; registers the task to be woken by the
    /// cut (and the deadlines) only when the write it follows is about to wait.
    fn cut_now(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        if waiting
            && !self
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            // The deadlines are left to the reads, which end the connection on them.
            let _ = self.register(cx);
            self.registered = Some(cx.waker().clone());
        }
        self.cut_token.is_cancelled()
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = ConnectionInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            transport: self.io.connect_info(),
            in_use: self.lifetime.in_use.clone(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        // Registered only when the task is about to wait; otherwise checked (see `Limited`).
        let ended = match polled {
            Poll::Pending => self.ended(cx),
            Poll::Ready(_) => self.ended_now(),
        };
        if let Some(e) = ended {
            return Poll::Ready(Err(e));
        }
        if self.silent.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            self.received += buf.filled().len() - before;
            if self.received >= PREFACE_BYTES {
                self.silent = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if self.cut_now(cx, polled.is_pending()) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        self.writes.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if self.cut_now(cx, polled.is_pending()) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        self.writes.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.writes.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.writes.check(cx, polled)
    }
}

/// How long a connection may go without a real call, and how long it may live at most.
#[derive(Debug, Clone, Copy, Default)]
struct LifetimeBounds {
    /// From accept to the first real call; `None`: no deadline.
    auth_timeout: Option<Duration>,
    /// From the start of HTTP/2 to the hard close (the maximum age and its grace);
    /// `None`: no end.
    max_life: Option<Duration>,
}

/// The deadlines of one connection past its preface: kept apart from the preface deadline so
/// that each bound reads on its own.
#[derive(Debug)]
struct Lifetime {
    bounds: LifetimeBounds,
    /// Set by the first real call (see [`ConnectionInUse`]).
    in_use: ConnectionInUse,
    /// Until a real call has started: the deadline for one.
    unproven: Option<Pin<Box<Sleep>>>,
    /// The hard close at the end of the maximum age and its grace.
    expires: Option<Pin<Box<Sleep>>>,
}

impl Lifetime {
    /// The deadlines of a connection accepted now (the auth deadline starts here).
    fn accepted(bounds: LifetimeBounds) -> Self {
        Self {
            bounds,
            in_use: ConnectionInUse::default(),
            unproven: bounds
                .auth_timeout
                .map(|timeout| Box::pin(tokio::time::sleep(timeout))),
            expires: None,
        }
    }

    /// Once HTTP/2 starts (after TLS, when on): its age is counted from here, as tonic
    /// counts the age it sends GOAWAY at.
    fn started(mut self) -> Self {
        self.expires = self
            .bounds
            .max_life
            .map(|life| Box::pin(tokio::time::sleep(life)));
        self
    }

    /// An error once the connection must end at `now`, registering nothing.
    fn ended_at(&mut self, now: tokio::time::Instant) -> Option<io::Error> {
        self.forget_proven();
        passed_at(
            &self.unproven,
            now,
            "no authenticated call within server.auth_timeout of connecting",
        )
        .or_else(|| {
            passed_at(
                &self.expires,
                now,
                "the connection outlived server.max_connection_age and its grace",
            )
        })
    }

    /// Drops the auth deadline once a real call has started.
    fn forget_proven(&mut self) {
        if self.unproven.is_some() && self.in_use.is_set() {
            self.unproven = None;
        }
    }

    /// An error once the connection must end; polling registers the task for the deadlines.
    fn ended(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.forget_proven();
        passed(
            &mut self.unproven,
            cx,
            "no authenticated call within server.auth_timeout of connecting",
        )
        .or_else(|| {
            passed(
                &mut self.expires,
                cx,
                "the connection outlived server.max_connection_age and its grace",
            )
        })
    }
}

/// A `TimedOut` error saying `why` once `deadline` (if any) has passed; polling registers
/// the task to be woken then.
fn passed(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
    why: &'static str,
) -> Option<io::Error> {
    let deadline = deadline.as_mut()?;
    deadline
        .as_mut()
        .poll(cx)
        .is_ready()
        .then(|| io::Error::new(io::ErrorKind::TimedOut, why))
}

/// A `TimedOut` error saying `why` if `deadline` (if any) is at or before `now`; registers
/// nothing.
fn passed_at(
    deadline: &Option<Pin<Box<Sleep>>>,
    now: tokio::time::Instant,
    why: &'static str,
) -> Option<io::Error> {
    let deadline = deadline.as_ref()?;
    // A deadline the timer has fired is passed whatever the clock says (it woke the task
    // once, and will not again).
    (deadline.is_elapsed() || deadline.deadline() <= now)
        .then(|| io::Error::new(io::ErrorKind::TimedOut, why))
}

/// Whether a connection has started a real call: shared by the connection and every call it
/// carries (through [`ConnectionInfo`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionInUse(Arc<AtomicBool>);

impl ConnectionInUse {
    /// Marks the connection as used by a real call: it keeps its place from now on.
    pub(crate) fn mark(&self) {
        // Relaxed: the flag guards nothing else; the connection's own task reads it.
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What tonic puts in each call's extensions for a [`Limited`] connection: the transport's
/// own information and the connection's [`ConnectionInUse`]. [`SplitInfoLayer`] takes it
/// apart again, so that the layers and handlers below see the transport's information under
/// its own type (`TcpConnectInfo`, as `Request::remote_addr` looks for it).
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo<T> {
    transport: T,
    in_use: ConnectionInUse,
}

/// The outermost layer of a listener's stack: replaces the [`ConnectionInfo`] of each call
/// by its two parts, each under its own type.
#[derive(Debug)]
pub(crate) struct SplitInfoLayer<T>(PhantomData<fn() -> T>);

impl<T> SplitInfoLayer<T> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Clone for SplitInfoLayer<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<S, T> tower_layer::Layer<S> for SplitInfoLayer<T> {
    type Service = SplitInfo<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        SplitInfo {
            inner,
            _info: PhantomData,
        }
    }
}

/// The service [`SplitInfoLayer`] makes.
#[derive(Debug)]
pub(crate) struct SplitInfo<S, T> {
    inner: S,
    _info: PhantomData<fn() -> T>,
}

impl<S: Clone, T> Clone for SplitInfo<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _info: PhantomData,
        }
    }
}

impl<S, T, B> tower_service::Service<http::Request<B>> for SplitInfo<S, T>
where
    S: tower_service::Service<http::Request<B>>,
    T: Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(info) = request.extensions_mut().remove::<ConnectionInfo<T>>() {
            request.extensions_mut().insert(info.transport);
            request.extensions_mut().insert(info.in_use);
        }
        self.inner.call(request)
    }
}

/// The places each TCP peer address holds, bounded per peer.
///
/// One address is one peer, loopback included: an app's workers on the same host each hold
/// one or a few connections, far below the default share. IPv6 addresses are counted by
/// their /64, which one host usually owns whole; IPv4-mapped IPv6 addresses as IPv4.
#[derive(Debug)]
pub(crate) struct PeerTable {
    limit: usize,
    /// Open connections per peer; a peer leaves the map with its last one. A std lock: held
    /// only to count, never across an `.await`.
    open: Mutex<HashMap<IpAddr, usize>>,
    warn: Throttled,
}

impl PeerTable {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Mutex::new(HashMap::new()),
            warn: Throttled::new(
                "too many connections from one address (server.max_connections_per_peer); \
                 closing new ones",
            ),
        }
    }

    /// A place for a connection from `ip`; `None` (with a throttled warning) when the peer
    /// holds its whole share.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let peer = peer_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let held = open.entry(peer).or_insert(0);
        if *held >= self.limit {
            drop(open);
            self.warn.refused_peer(self.limit, ip);
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            table: self.clone(),
            peer,
        })
    }
}

/// The address a peer is counted under: IPv4 as is (also when mapped into IPv6), IPv6 by
/// its /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// One place in [`PeerTable`], given back when dropped.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    table: Arc<PeerTable>,
    peer: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// A TCP connection holding its peer's place in [`PeerTable`] until it is dropped; reads,
/// writes and connection information are the stream's own.
#[derive(Debug)]
pub(crate) struct PerPeer<IO> {
    io: IO,
    _slot: PeerSlot,
}

impl<IO: Connected> Connected for PerPeer<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PerPeer<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PerPeer<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The bound on calls in progress, and on health Watch streams, as a tower layer over the
/// routes; one value is shared by every listener's server.
///
/// It sits below authentication, so every call it sees passed it: a call that is not health
/// marks its connection in use here (see [`ConnectionInUse`]).
#[derive(Debug, Clone)]
pub(crate) struct RequestLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    warn: Arc<Throttled>,
    /// Health Watch streams open over all connections, when bounded.
    watches: Option<WatchLimit>,
}

/// The bound on health Watch streams.
#[derive(Debug, Clone)]
struct WatchLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    warn: Arc<Throttled>,
}

impl RequestLimitLayer {
    /// At most `limit` calls in progress at once; Watch streams unbounded until
    /// [`RequestLimitLayer::with_watch_limit`].
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            warn: Arc::new(Throttled::new(
                "too many calls in progress (server.max_concurrent_requests); answering UNAVAILABLE",
            )),
            watches: None,
        }
    }

    /// At most `limit` health Watch streams open at once, over all connections.
    pub(crate) fn with_watch_limit(mut self, limit: usize) -> Self {
        self.watches = Some(WatchLimit {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            warn: Arc::new(Throttled::new(
                "too many health Watch streams (server.max_health_watches); answering \
                 RESOURCE_EXHAUSTED",
            )),
        });
        self
    }
}

impl<S> tower_layer::Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequestLimitLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct RequestLimit<S> {
    inner: S,
    layer: RequestLimitLayer,
}

impl<S> tower_service::Service<http::Request<Body>> for RequestLimit<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if path == HEALTH_WATCH
            && let Some(watches) = &self.layer.watches
        {
            return self.watch(request, watches.clone());
        }
        let permit = if path.starts_with(HEALTH_PREFIX) {
            None
        } else {
            if let Some(in_use) = request.extensions().get::<ConnectionInUse>() {
                in_use.mark();
            }
            match self.layer.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.layer.warn.refused(self.layer.limit);
                    let busy = Status::unavailable(format!(
                        "server busy: {} calls already in progress; retry shortly",
                        self.layer.limit
                    ));
                    return Box::pin(async move { Ok(busy.into_http()) });
                }
            }
        };
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let streams = path == PIPELINE_RUN;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await;
            match (permit, streams) {
                // A Run stream counts as one call until its stream ends or is reset, or its
                // connection closes.
                (Some(permit), true) => response.map(|r| {
                    r.map(|body| {
                        Body::new(Holding {
                            body,
                            _permit: permit,
                        })
                    })
                }),
                (permit, _) => {
                    drop(permit);
                    response
                }
            }
        })
    }
}

impl<S> RequestLimit<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// A health Watch: a place among `watches` for as long as its stream is open, or
    /// `RESOURCE_EXHAUSTED` at once. Not UNIMPLEMENTED, which gRPC's client-side health
    /// checking takes for "no health checking, assume healthy"; not UNAVAILABLE, which would
    /// say the server is down or stopping. Health clients retry any other code with backoff,
    /// and Check still answers.
    fn watch(
        &mut self,
        request: http::Request<Body>,
        watches: WatchLimit,
    ) -> <Self as tower_service::Service<http::Request<Body>>>::Future {
        let Ok(permit) = watches.permits.try_acquire_owned() else {
            watches.warn.refused(watches.limit);
            let full = Status::resource_exhausted(format!(
                "{} health Watch streams already open (server.max_health_watches); use Check, \
                 or retry later",
                watches.limit
            ));
            return Box::pin(async move { Ok(full.into_http()) });
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            // The place is held by the stream's body, so it is given back when the stream
            // ends or is reset, or its connection closes.
            Ok(response.map(|body| {
                Body::new(Holding {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body holding a place until it is dropped.
    struct Holding<B> {
        #[pin]
        body: B,
        _permit: OwnedSemaphorePermit,
    }
}

impl<B: http_body::Body> http_body::Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::oneshot;
    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    /// A service whose calls to `/slow` wait until the test lets them go.
    #[derive(Clone)]
    struct Gate {
        release: Arc<std::sync::Mutex<Vec<oneshot::Sender<()>>>>,
    }

    impl Service<http::Request<Body>> for Gate {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let (tx, rx) = oneshot::channel();
            let slow = request.uri().path().ends_with("/Slow");
            if slow {
                // No lock is held across an await: the sender is stored and the lock dropped.
                self.release.lock().unwrap().push(tx);
            }
            Box::pin(async move {
                if slow {
                    let _ = rx.await;
                }
                Ok(http::Response::new(Body::default()))
            })
        }
    }

    fn request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(path)
            .body(Body::default())
            .unwrap()
    }

    fn grpc_status(r: &http::Response<Body>) -> Option<String> {
        r.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn calls_past_the_limit_are_unavailable_at_once_and_health_always_passes() {
        let gate = Gate {
            release: Arc::default(),
        };
        let mut service = RequestLimitLayer::new(2).layer(gate.clone());
        let first = tokio::spawn(service.call(request("/larder.v1.CacheService/Slow")));
        let second = tokio::spawn(service.call(request("/larder.v1.CacheService/Slow")));
        while gate.release.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = service
            .call(request("/larder.v1.CacheService/Get"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&refused).as_deref(), Some("14"), "UNAVAILABLE");
        let health = service
            .call(request("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&health), None, "health is never refused");

        let senders: Vec<_> = gate.release.lock().unwrap().drain(..).collect();
        for tx in senders {
            tx.send(()).unwrap();
        }
        assert_eq!(grpc_status(&first.await.unwrap().unwrap()), None);
        assert_eq!(grpc_status(&second.await.unwrap().unwrap()), None);
        let after = service
            .call(request("/larder.v1.CacheService/Get"))
            .await
            .unwrap();
        assert_eq!(
            grpc_status(&after),
            None,
            "finished calls free their places"
        );
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_a_closed_one_frees_its_place() {
        use tokio::io::AsyncReadExt;
        use tokio_stream::wrappers::UnboundedReceiverStream;

        let limit = ConnectionLimit::new(1, HANDSHAKE_TIMEOUT);
        let accept = |conns: Vec<tokio::io::DuplexStream>| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            for c in conns {
                tx.send(Ok(c)).unwrap();
            }
            // Dropping the sender ends the stream once the queued connections are taken.
            Box::pin(limit.limit(UnboundedReceiverStream::new(rx)))
        };
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let mut accepted = accept(vec![a, b]);
        let first = accepted.next().await.unwrap().unwrap();
        assert!(
            accepted.next().await.is_none(),
            "the second is not handed on"
        );
        let mut buf = [0u8; 1];
        assert_eq!(b_peer.read(&mut buf).await.unwrap(), 0, "and is closed");

        let (c, _c_peer) = tokio::io::duplex(64);
        let mut accepted = accept(vec![c]);
        assert!(
            accepted.next().await.is_none(),
            "still full while the first is open"
        );
        drop(first);
        assert_eq!(a_peer.read(&mut buf).await.unwrap(), 0);
        let (d, _d_peer) = tokio::io::duplex(64);
        let mut accepted = accept(vec![d]);
        assert!(
            accepted.next().await.unwrap().is_ok(),
            "a freed place is reused"
        );
    }

    #[tokio::test]
    async fn a_connection_whose_writes_stall_for_the_write_timeout_fails_and_one_that_reads_does_not()
     {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const TIMEOUT: Duration = Duration::from_millis(100);
        let limit = ConnectionLimit::new(2, HANDSHAKE_TIMEOUT).with_write_timeout(TIMEOUT);
        // The peer of `stuck` never reads: once the 64-byte pipe is full, writes wait.
        let (io, _stuck_peer) = tokio::io::duplex(64);
        let mut stuck = limit.admit().unwrap().wrap(io);
        let err = stuck
            .write_all(&[0u8; 4096])
            .await
            .expect_err("a write that waits past the timeout fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // The peer of `read` reads as it goes: writes wait for it, but each read is progress.
        let (io, mut peer) = tokio::io::duplex(64);
        let mut read = limit.admit().unwrap().wrap(io);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 1024 {
                total += peer.read(&mut buf).await.unwrap();
            }
            peer
        });
        read.write_all(&[0u8; 1024]).await.unwrap();
        let _peer = reader.await.unwrap();
        // Nothing written for longer than the timeout is no stall: only a pending write is.
        tokio::time::sleep(TIMEOUT * 2).await;
        read.write_all(&[0u8; 8]).await.unwrap();
    }

    #[test]
    fn peers_are_counted_by_address_ipv6_by_its_64_and_a_dropped_slot_is_given_back() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(peer_key(mapped), v4, "IPv4-mapped IPv6 is the IPv4 peer");
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b), "one /64 is one peer");
        assert_ne!(peer_key(a), peer_key(c));

        let table = Arc::new(PeerTable::new(2));
        let first = table.take(a).unwrap();
        let _second = table.take(b).unwrap();
        assert!(table.take(a).is_none(), "the /64 holds its share");
        assert!(table.take(c).is_some(), "another /64 has its own");
        assert!(table.take(v4).is_some());
        drop(first);
        assert!(table.take(a).is_some(), "a dropped slot is given back");
    }

    #[tokio::test]
    async fn a_connection_without_a_real_call_is_closed_at_the_auth_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let deadline = Duration::from_millis(100);
        let limit = ConnectionLimit::new(2, HANDSHAKE_TIMEOUT).with_auth_timeout(deadline);
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let mut used = limit.admit().unwrap().wrap(a);
        let mut idle = limit.admit().unwrap().wrap(b);
        let mut buf = [0u8; PREFACE_BYTES];
        for (conn, peer) in [(&mut used, &mut a_peer), (&mut idle, &mut b_peer)] {
            peer.write_all(&[0; PREFACE_BYTES]).await.unwrap();
            conn.read_exact(&mut buf).await.unwrap();
        }
        // What a call that passed auth does, through the information tonic hands each call.
        used.connect_info().in_use.mark();

        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("server.auth_timeout"), "{err}");
        let still = tokio::time::timeout(deadline * 5, used.read(&mut buf)).await;
        assert!(
            still.is_err(),
            "a used connection keeps its place: {still:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_its_age_plus_grace() {
        use tokio::io::AsyncReadExt;

        let age = Duration::from_millis(100);
        let grace = Duration::from_millis(50);
        let limit = ConnectionLimit::new(1, HANDSHAKE_TIMEOUT).with_max_age(age, grace);
        let (a, _a_peer) = tokio::io::duplex(64);
        let mut conn = limit.admit().unwrap().wrap(a);
        // The preface deadline is not what ends it: past it as if the preface had come.
        conn.silent = None;
        let mut buf = [0u8; 1];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert!(
            err.to_string().contains("server.max_connection_age"),
            "{err}"
        );
    }

    /// Deadlines and the cut are registered only when a read or write waits; a connection
    /// whose reads and writes never wait (the peer keeps data coming and reads everything)
    /// still ends at its age, and at the cut.
    #[tokio::test]
    async fn a_connection_that_never_waits_still_ends_at_its_age_and_at_the_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let age = Duration::from_millis(50);
        let limit = ConnectionLimit::new(2, HANDSHAKE_TIMEOUT).with_max_age(age, Duration::ZERO);
        let (a, mut a_peer) = tokio::io::duplex(64);
        let mut aged = limit.admit().unwrap().wrap(a);
        aged.silent = None;
        let mut buf = [0u8; 1];
        a_peer.write_all(&[1]).await.unwrap();
        aged.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(age * 2).await;
        // Data is ready, so the read does not wait: the age is checked all the same.
        a_peer.write_all(&[2]).await.unwrap();
        let err = aged.read(&mut buf).await.unwrap_err();
        assert!(
            err.to_string().contains("server.max_connection_age"),
            "{err}"
        );

        let limit = ConnectionLimit::new(2, HANDSHAKE_TIMEOUT);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let mut cut = limit.admit().unwrap().wrap(b);
        cut.silent = None;
        cut.write_all(&[1]).await.unwrap();
        b_peer.write_all(&[1]).await.unwrap();
        limit.cut();
        let err = cut.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
        let err = cut.write(&[1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
    }
}
