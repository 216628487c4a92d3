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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
}

impl ConnectionLimit {
    /// At most `limit` connections open at once, each closed if it sends nothing within
    /// `handshake_timeout` of being accepted.
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
        }
    }

    /// Closes a connection whose writes have made no progress for `timeout`.
    pub(crate) fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = Some(timeout);
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
            cut: Box::pin(self.cut.cancelled_owned()),
            silent: Some(self.deadline),
            received: 0,
            writes: WriteDeadline {
                timeout: self.write_timeout,
                stalled: None,
            },
        }
    }
}

/// A connection counted against [`ConnectionLimit`]; its place is freed when it is dropped.
#[derive(Debug)]
pub(crate) struct Limited<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    /// Ready once the server cuts every connection.
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Until [`PREFACE_BYTES`] have arrived: the deadline for them.
    silent: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, counted up to [`PREFACE_BYTES`].
    received: usize,
    writes: WriteDeadline,
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
    /// An error once the connection must end (cut at shutdown, or silent too long); polling
    /// here also registers the task to be woken when that happens.
    fn ended(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.cut.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server is shutting down",
            ));
        }
        if let Some(silent) = self.silent.as_mut()
            && silent.as_mut().poll(cx).is_ready()
        {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not send the HTTP/2 preface in time",
            ));
        }
        None
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.ended(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
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
        if self.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.writes.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
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

/// The bound on calls in progress, as a tower layer over the routes; one value is shared by
/// every listener's server.
#[derive(Debug, Clone)]
pub(crate) struct RequestLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    warn: Arc<Throttled>,
}

impl RequestLimitLayer {
    /// At most `limit` calls in progress at once.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            warn: Arc::new(Throttled::new(
                "too many calls in progress (server.max_concurrent_requests); answering UNAVAILABLE",
            )),
        }
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
        let permit = if request.uri().path().starts_with(HEALTH_PREFIX) {
            None
        } else {
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await;
            drop(permit);
            response
        })
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
}
