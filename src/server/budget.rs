//! The in-flight byte budget (`server.max_inflight_bytes`): one bound, over every connection,
//! on the bytes of requests and responses the server holds in memory.
//!
//! The call limit ([`super::admission`]) frees a call's place when its handler returns, but
//! the encoded answer (up to a whole message, about 17 MiB by default) then waits for the
//! client to read it. Without this budget a client that asks and never reads could make the
//! daemon hold `max_concurrent_requests` such answers at once, and then as many again.
//!
//! What is charged, and for how long:
//! - **A response**, its encoded bytes from the moment the handler's answer is encoded (at
//!   once, before hyper even asks for it, so that a client that grants no flow-control window
//!   is charged too) until HTTP/2 has written the last of them to the socket, or dropped them
//!   with the stream or the connection. Each data frame handed to hyper owns its charge, and
//!   the charge is returned when the last reference to the frame's bytes is dropped, which is
//!   exactly when nothing in the server holds them any more.
//! - **A request body**, its bytes as they arrive, until the body has been read to its end
//!   (for a unary call, before the handler runs) or dropped.
//! - **A Run stream's calls** (`PipelineService/Run`): each frame's bytes only until the
//!   decoder has taken them (a long-lived stream would otherwise hold all it ever sent), then
//!   each decoded call, by its encoded size, until its answer has been taken
//!   (`service::pipeline`); a call that does not fit is answered `UNAVAILABLE` alone.
//!
//! Nothing is ever charged past the budget, except one frame when nothing else is held (so a
//! message as large as the budget always passes; the configuration keeps the budget at least
//! one maximal message). Past the budget the server answers `UNAVAILABLE`, the code the call
//! limit and a shutting-down server give, which gRPC clients and Envoy retry elsewhere or
//! later (`RESOURCE_EXHAUSTED` is what the daemon says of a full disk, which a retry does not
//! fix, while this budget frees itself as answers are written or the write deadline closes
//! the peers that do not read):
//! - a new call waits up to [`ADMISSION_WAIT`] while the budget is full, then is refused; the
//!   waiters hold their places among the calls in progress, so the queue is bounded by the
//!   call limit;
//! - a response that is ready but does not fit is dropped and the call answered
//!   `UNAVAILABLE` in its place (its bytes were allocated for a moment only: a response is
//!   encoded on a worker thread, so at most one per worker is over the budget at any time);
//! - a request frame that does not fit ends the call with `UNAVAILABLE`.
//!
//! Health checks are exempt, as from the call limit: their messages are small and a busy
//! daemon must not look like a dead one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;
use tonic::Status;
use tonic::body::Body;

use super::admission::HEALTH_PREFIX;
use super::throttle::Throttled;
use crate::metrics::budget::{BudgetMetrics, Refusal};
use crate::service::pipeline::CallBudget;

/// How long a new call waits for room in a full budget before it is refused: long enough to
/// ride over answers being written at the time (a 16 MiB answer takes milliseconds over
/// loopback), short enough that a client's own deadline rarely passes first.
pub(crate) const ADMISSION_WAIT: Duration = Duration::from_millis(250);

/// The pipeline's streaming method, whose request body is charged call by call.
const PIPELINE_RUN: &str = "/larder.v1.PipelineService/Run";

/// The message a refused call gets.
const EXHAUSTED: &str = "server busy: its in-flight byte budget (server.max_inflight_bytes) is \
                         full; retry shortly";

/// The byte budget, shared by every listener's server; a cheap handle.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The budget, in bytes.
    capacity: i64,
    /// The bytes held (in the metrics' gauge, so a scrape reads what the budget decides on).
    metrics: BudgetMetrics,
    /// New calls waiting for room; a release wakes them only when there are some, so that
    /// the common path takes no lock.
    waiting: AtomicUsize,
    /// Woken when bytes are released while calls wait.
    room: Notify,
    warn: Throttled,
}

impl ByteBudget {
    /// A budget of `capacity` bytes, counting in `metrics`.
    pub(crate) fn new(capacity: u64, metrics: BudgetMetrics) -> Self {
        metrics.set_limit(capacity);
        Self {
            shared: Arc::new(Shared {
                capacity: i64::try_from(capacity).unwrap_or(i64::MAX),
                metrics,
                waiting: AtomicUsize::new(0),
                room: Notify::new(),
                warn: Throttled::new(
                    "in-flight byte budget full (server.max_inflight_bytes); answering UNAVAILABLE",
                ),
            }),
        }
    }

    fn held_bytes(&self) -> &AtomicI64 {
        self.shared.metrics.held()
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> i64 {
        self.held_bytes().load(Ordering::SeqCst)
    }

    fn has_room(&self) -> bool {
        self.held_bytes().load(Ordering::SeqCst) < self.shared.capacity
    }

    /// Charges `n` bytes if they fit, or if nothing at all is held (so that one message as
    /// large as the whole budget can always pass).
    fn try_charge(&self, n: usize) -> Option<Charge> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.try_add(n).then(|| Charge {
            budget: self.clone(),
            bytes: n,
        })
    }

    /// Adds `n` to the bytes held if they fit (as [`Self::try_charge`]); the caller releases
    /// them.
    fn try_add(&self, n: i64) -> bool {
        let held = self.held_bytes();
        let mut now = held.load(Ordering::SeqCst);
        loop {
            if now > 0 && now.saturating_add(n) > self.shared.capacity {
                return false;
            }
            match held.compare_exchange_weak(now, now + n, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    fn release(&self, n: i64) {
        if n == 0 {
            return;
        }
        self.held_bytes().fetch_sub(n, Ordering::SeqCst);
        // Paired with the waiter's increment of `waiting` before it checks for room (both
        // SeqCst): either it sees these bytes gone, or this sees it waiting and wakes it.
        if self.shared.waiting.load(Ordering::SeqCst) > 0 {
            self.shared.room.notify_waiters();
        }
    }

    /// Whether a new call may start: at once while the budget has room, else once it has
    /// some within [`ADMISSION_WAIT`].
    async fn admit(&self) -> bool {
        if self.has_room() {
            return true;
        }
        let _waiting = Waiting::new(&self.shared.waiting);
        tokio::time::timeout(ADMISSION_WAIT, async {
            loop {
                let notified = self.shared.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.has_room() {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }

    /// Counts and logs (throttled) a refusal at `stage`; the status to answer with.
    fn refuse(&self, stage: Refusal) -> Status {
        self.shared.metrics.refused(stage);
        self.shared
            .warn
            .refused(usize::try_from(self.shared.capacity).unwrap_or(usize::MAX));
        Status::unavailable(EXHAUSTED)
    }

    /// The trailers that end a response whose next frame did not fit.
    fn refusal_trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from(tonic::Code::Unavailable as i32),
        );
        trailers.insert("grpc-message", HeaderValue::from_static("server%20busy"));
        trailers
    }
}

impl CallBudget for ByteBudget {
    fn charge(&self, bytes: usize) -> bool {
        self.try_add(i64::try_from(bytes).unwrap_or(i64::MAX))
    }

    fn release(&self, bytes: usize) {
        ByteBudget::release(self, i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn refused(&self) -> Status {
        self.refuse(Refusal::Request)
    }
}

/// One new call counted among the waiters while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes charged to the budget, returned when this is dropped.
#[derive(Debug)]
struct Charge {
    budget: ByteBudget,
    bytes: i64,
}

impl Charge {
    /// Adds `more` (taken by another charge) to this one.
    fn absorb(&mut self, mut more: Charge) {
        self.bytes += std::mem::take(&mut more.bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// The bytes of one response frame and their charge: the owner of the [`Bytes`] handed to
/// hyper, dropped (and the charge returned) with the last slice HTTP/2 keeps of them.
struct Charged {
    data: Bytes,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data` charged `charge` until its last slice is dropped.
/// `frame` with its data (if it is a data frame) charged to `budget`; `None` when the data
/// does not fit.
fn charge_frame(budget: &ByteBudget, frame: Frame<Bytes>) -> Option<Frame<Bytes>> {
    match frame.into_data() {
        Ok(data) => budget
            .try_charge(data.len())
            .map(|charge| Frame::data(charged(data, charge))),
        Err(frame) => Some(frame),
    }
}

fn charged(data: Bytes, charge: Charge) -> Bytes {
    Bytes::from_owner(Charged {
        data,
        _charge: charge,
    })
}

/// The budget as a tower layer over the routes, inside the call limit (a call refused there
/// or by auth is never charged).
#[derive(Debug, Clone)]
pub(crate) struct BudgetLayer {
    budget: ByteBudget,
}

impl BudgetLayer {
    pub(crate) fn new(budget: ByteBudget) -> Self {
        Self { budget }
    }
}

impl<S> tower_layer::Layer<S> for BudgetLayer {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Budgeted {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// The service [`BudgetLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct Budgeted<S> {
    inner: S,
    budget: ByteBudget,
}

impl<S> tower_service::Service<http::Request<Body>> for Budgeted<S>
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
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let budget = self.budget.clone();
        let streams = request.uri().path() == PIPELINE_RUN;
        Box::pin(async move {
            if !budget.admit().await {
                return Ok(budget.refuse(Refusal::Call).into_http());
            }
            let mut request = request.map(|body| {
                Body::new(RequestBody {
                    inner: body,
                    budget: budget.clone(),
                    charge: None,
                    streams,
                })
            });
            if streams {
                let calls: Arc<dyn CallBudget> = Arc::new(budget.clone());
                request.extensions_mut().insert(calls);
            }
            let response = inner.call(request).await?;
            Ok(encode_now(response, budget).await)
        })
    }
}

/// `response` with its first frame encoded and charged now, or `UNAVAILABLE` in its place
/// when that frame does not fit.
async fn encode_now(response: http::Response<Body>, budget: ByteBudget) -> http::Response<Body> {
    let (parts, mut body) = response.into_parts();
    if body.is_end_stream() {
        return http::Response::from_parts(parts, body);
    }
    // A stream with nothing to send yet is charged frame by frame as it sends.
    let first = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
        Poll::Pending => Poll::Ready(None),
        Poll::Ready(frame) => Poll::Ready(Some(frame)),
    })
    .await;
    let first = match first {
        None => None,
        Some(None) => return http::Response::from_parts(parts, Body::empty()),
        Some(Some(Ok(frame))) => match charge_frame(&budget, frame) {
            Some(frame) => Some(Ok(frame)),
            None => return budget.refuse(Refusal::Response).into_http(),
        },
        Some(Some(Err(e))) => Some(Err(e)),
    };
    http::Response::from_parts(
        parts,
        Body::new(ResponseBody {
            first,
            inner: body,
            budget,
            done: false,
        }),
    )
}

/// A response body whose data frames each carry their charge.
struct ResponseBody {
    /// The frame taken by [`encode_now`], to be sent first.
    first: Option<Result<Frame<Bytes>, Status>>,
    inner: Body,
    budget: ByteBudget,
    /// Ended early, with trailers saying the budget was full.
    done: bool,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        Poll::Ready(Some(Ok(match charge_frame(&self.budget, frame) {
            Some(frame) => frame,
            None => {
                self.done = true;
                let _ = self.budget.refuse(Refusal::Response);
                Frame::trailers(ByteBudget::refusal_trailers())
            }
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.first.is_none() && !self.done {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

/// A request body charged as it arrives, until it has been read to its end or is dropped;
/// a Run stream's frames each until the decoder has taken its bytes.
struct RequestBody {
    inner: Body,
    budget: ByteBudget,
    /// What its frames so far are charged.
    charge: Option<Charge>,
    /// A Run stream: each frame carries its own charge, and its calls are charged once
    /// decoded.
    streams: bool,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if self.streams {
            return match frame {
                Poll::Ready(Some(Ok(frame))) => match charge_frame(&self.budget, frame) {
                    Some(frame) => Poll::Ready(Some(Ok(frame))),
                    None => Poll::Ready(Some(Err(self.budget.refuse(Refusal::Request)))),
                },
                other => other,
            };
        }
        match &frame {
            Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(|d| !d.is_empty()) => {
                let n = f.data_ref().map_or(0, Bytes::len);
                match self.budget.try_charge(n) {
                    Some(more) => match self.charge.as_mut() {
                        Some(charge) => charge.absorb(more),
                        None => self.charge = Some(more),
                    },
                    None => {
                        self.charge = None;
                        return Poll::Ready(Some(Err(self.budget.refuse(Refusal::Request))));
                    }
                }
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
            // The end, or the client reset the stream: the bytes are no longer held here.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.charge = None,
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    /// A service that reads its request to the end, then answers `size` bytes in one frame.
    #[derive(Clone)]
    struct Answer {
        size: usize,
    }

    impl tower_service::Service<http::Request<Body>> for Answer {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let size = self.size;
            Box::pin(async move {
                match request.into_body().collect().await {
                    Ok(_) => Ok(http::Response::new(Body::new(Full::new(Bytes::from(
                        vec![0u8; size],
                    ))))),
                    Err(status) => Ok(status.into_http()),
                }
            })
        }
    }

    fn request(body: usize) -> http::Request<Body> {
        http::Request::builder()
            .uri("/larder.v1.CacheService/Get")
            .body(Body::new(Full::new(Bytes::from(vec![1u8; body]))))
            .unwrap()
    }

    fn grpc_status(r: &http::Response<Body>) -> Option<String> {
        r.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// The data of the next frame of `body`.
    async fn next_data(body: &mut Body) -> Bytes {
        body.frame()
            .await
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("data")
    }

    fn budget(capacity: u64) -> ByteBudget {
        ByteBudget::new(capacity, BudgetMetrics::default())
    }

    #[tokio::test]
    async fn an_answer_is_charged_until_its_last_bytes_are_dropped() {
        let budget = budget(1000);
        let mut service = BudgetLayer::new(budget.clone()).layer(Answer { size: 300 });
        let response = service.call(request(10)).await.unwrap();
        assert_eq!(grpc_status(&response), None);
        assert_eq!(
            budget.held(),
            300,
            "charged once encoded; the request is read"
        );
        let mut body = response.into_body();
        let data = next_data(&mut body).await;
        drop(body);
        assert_eq!(budget.held(), 300, "HTTP/2 still holds the frame");
        let tail = data.slice(200..);
        drop(data);
        assert_eq!(budget.held(), 300, "and a part of it");
        drop(tail);
        assert_eq!(budget.held(), 0, "written: returned");
    }

    #[tokio::test]
    async fn an_answer_that_does_not_fit_is_unavailable_and_one_alone_may_fill_the_budget() {
        let budget = budget(1000);
        let mut small = BudgetLayer::new(budget.clone()).layer(Answer { size: 600 });
        let held = small.call(request(0)).await.unwrap();
        assert_eq!(budget.held(), 600);
        let refused = small.call(request(0)).await.unwrap();
        assert_eq!(grpc_status(&refused).as_deref(), Some("14"), "UNAVAILABLE");
        assert_eq!(budget.held(), 600, "nothing charged for it");
        drop(held);
        assert_eq!(budget.held(), 0);
        // Larger than the whole budget, with nothing else held: it passes.
        let mut large = BudgetLayer::new(budget.clone()).layer(Answer { size: 1500 });
        let alone = large.call(request(0)).await.unwrap();
        assert_eq!(grpc_status(&alone), None);
        assert_eq!(budget.held(), 1500);
    }

    #[tokio::test]
    async fn a_new_call_waits_briefly_for_room_then_is_refused() {
        let budget = budget(1000);
        let mut service = BudgetLayer::new(budget.clone()).layer(Answer { size: 1000 });
        let full = service.call(request(0)).await.unwrap();
        assert_eq!(budget.held(), 1000);
        let refused = service.call(request(0)).await.unwrap();
        assert_eq!(
            grpc_status(&refused).as_deref(),
            Some("14"),
            "refused once the wait ends"
        );

        // Room made while a call waits lets it in.
        let waiting = tokio::spawn(service.call(request(0)));
        tokio::task::yield_now().await;
        drop(full);
        let admitted = waiting.await.unwrap().unwrap();
        assert_eq!(grpc_status(&admitted), None);
        assert_eq!(budget.held(), 1000);

        // Health is never held back.
        let health = service
            .call(
                http::Request::builder()
                    .uri("/grpc.health.v1.Health/Check")
                    .body(Body::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(grpc_status(&health), None);
    }

    #[tokio::test]
    async fn a_request_is_charged_as_it_arrives_and_refused_past_the_budget() {
        let budget = budget(1000);
        let other = budget.try_charge(600).unwrap();
        let mut service = BudgetLayer::new(budget.clone()).layer(Answer { size: 10 });
        let refused = service.call(request(500)).await.unwrap();
        assert_eq!(grpc_status(&refused).as_deref(), Some("14"), "UNAVAILABLE");
        assert_eq!(
            budget.held(),
            600,
            "the refused request's bytes are returned"
        );
        let fits = service.call(request(300)).await.unwrap();
        assert_eq!(grpc_status(&fits), None);
        assert_eq!(
            budget.held(),
            610,
            "read to its end: only the answer is held"
        );
        drop((fits, other));
        assert_eq!(budget.held(), 0);
    }
}
