//! The tower layer that counts and times every gRPC call by service, method and status code.
//!
//! A call ends when its status is known: in the response headers for a trailers-only answer
//! (how tonic sends most errors), else in the trailers at the end of the response body. A
//! call whose response future or body is dropped first (the client cancelled, or the drain
//! deadline cut it) is counted as `Canceled`, the code the client sees. Label values are
//! bounded: the method table comes from the descriptor sets the server also gives to
//! reflection, and any other path is counted as service and method `unknown`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prost::Message;

use super::budget::BudgetMetrics;
use crate::error::{Error, Result};
use crate::service::pipeline::CallObserver;
use crate::store::observe::COMMIT_SECONDS_BUCKETS;

/// Upper bounds of the call-duration buckets, in seconds: 50 µs to 1 s, the range from a
/// memory hit to a slow commit.
const DURATION_BUCKETS: [f64; 14] = COMMIT_SECONDS_BUCKETS;

/// The names of gRPC status codes by number, spelled as grpc-go spells them (so that
/// dashboards made for other gRPC servers read these labels too).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const CANCELED: &str = CODE_NAMES[1];
const UNKNOWN: &str = CODE_NAMES[2];

/// The name of the code in a `grpc-status` header or trailer; `Unknown` if it is not one.
fn code_name(status: Option<&HeaderValue>) -> &'static str {
    status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .and_then(|n| CODE_NAMES.get(n).copied())
        .unwrap_or(UNKNOWN)
}

/// Which method a call is, as labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    /// The fully qualified service, e.g. `larder.v1.CacheService`.
    service: Arc<str>,
    /// The method, e.g. `Get`.
    method: Arc<str>,
}

/// A finished call, as labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    service: Arc<str>,
    method: Arc<str>,
    /// The status code's name, e.g. `InvalidArgument`.
    code: &'static str,
}

/// The gRPC call metrics, shared by every connection of every listener.
#[derive(Debug)]
pub(crate) struct GrpcMetrics {
    /// Finished calls by method and code.
    pub(crate) requests: Family<CallLabels, Counter>,
    /// Call durations by method.
    pub(crate) durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Every method the server serves, by request path (`/larder.v1.CacheService/Get`).
    methods: HashMap<Box<str>, MethodLabels>,
    /// The labels of a path that is none of them.
    unknown: MethodLabels,
    /// The in-flight byte budget's figures, kept by the server's budget layer.
    pub(crate) budget: BudgetMetrics,
}

impl GrpcMetrics {
    /// Metrics for the methods described in `descriptor_sets` (encoded `FileDescriptorSet`s).
    pub(crate) fn new(descriptor_sets: &[&[u8]]) -> Result<Self> {
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*set).map_err(|e| {
                Error::Internal(format!("reading a descriptor set for metrics: {e}"))
            })?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let full: Arc<str> = if package.is_empty() {
                        service.name().into()
                    } else {
                        format!("{package}.{}", service.name()).into()
                    };
                    for method in &service.method {
                        let path = format!("/{full}/{}", method.name());
                        let labels = MethodLabels {
                            service: full.clone(),
                            method: method.name().into(),
                        };
                        methods.insert(path.into_boxed_str(), labels);
                    }
                }
            }
        }
        let unknown: Arc<str> = "unknown".into();
        Ok(Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            methods,
            unknown: MethodLabels {
                service: unknown.clone(),
                method: unknown,
            },
            budget: BudgetMetrics::default(),
        })
    }

    /// A call to `path` starts now.
    fn start(self: &Arc<Self>, path: &str) -> Call {
        Call {
            labels: self.methods.get(path).unwrap_or(&self.unknown).clone(),
            metrics: self.clone(),
            started: Instant::now(),
            code: CANCELED,
        }
    }
}

impl CallObserver for GrpcMetrics {
    fn finished(&self, path: &str, code: tonic::Code, elapsed: std::time::Duration) {
        let labels = self.methods.get(path).unwrap_or(&self.unknown);
        let code = CODE_NAMES.get(code as usize).copied().unwrap_or(UNKNOWN);
        self.requests
            .get_or_create(&CallLabels {
                service: labels.service.clone(),
                method: labels.method.clone(),
                code,
            })
            .inc();
        self.durations
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// A call in progress. Dropping it records it, with the code set by [`Call::finish`] or, if
/// the call never got that far, `Canceled`.
#[derive(Debug)]
struct Call {
    metrics: Arc<GrpcMetrics>,
    labels: MethodLabels,
    started: Instant,
    code: &'static str,
}

impl Call {
    fn finish(mut self, code: &'static str) {
        self.code = code;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .requests
            .get_or_create(&CallLabels {
                service: self.labels.service.clone(),
                method: self.labels.method.clone(),
                code: self.code,
            })
            .inc();
        self.metrics
            .durations
            .get_or_create(&self.labels)
            .observe(seconds);
    }
}

/// Wraps a service so that its calls are counted and timed; [`GrpcMetricsLayer::off`]
/// passes calls through untouched.
#[derive(Debug, Clone, Default)]
pub(crate) struct GrpcMetricsLayer {
    metrics: Option<Arc<GrpcMetrics>>,
}

impl GrpcMetricsLayer {
    /// Records into `metrics`.
    pub(crate) fn new(metrics: Arc<GrpcMetrics>) -> Self {
        Self {
            metrics: Some(metrics),
        }
    }

    /// Records nothing (metrics are off).
    pub(crate) fn off() -> Self {
        Self::default()
    }

    /// Where pipelined calls are reported, each under its unary twin's method (none when
    /// metrics are off).
    pub(crate) fn calls(&self) -> Option<Arc<dyn CallObserver>> {
        self.metrics
            .as_ref()
            .map(|m| m.clone() as Arc<dyn CallObserver>)
    }

    /// The handles the byte budget keeps its figures in: those a scrape reads, or
    /// unregistered ones when metrics are off.
    pub(crate) fn budget(&self) -> BudgetMetrics {
        self.metrics
            .as_ref()
            .map_or_else(BudgetMetrics::default, |m| m.budget.clone())
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetricsService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = self.metrics.as_ref().map(|m| m.start(request.uri().path()));
        ObservedFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of an observed call.
    pub(crate) struct ObservedFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ObservedFuture<F>
where
    F: Future<Output = std::result::Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = std::result::Result<http::Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match result {
            // Metrics off: the headers are not even looked at.
            Ok(response) if call.is_none() => {
                Ok(response.map(|inner| ObservedBody { inner, call: None }))
            }
            Ok(response) => {
                let call = match (call, response.headers().get("grpc-status")) {
                    (Some(call), Some(status)) => {
                        call.finish(code_name(Some(status)));
                        None
                    }
                    // No status and nothing to follow: the client sees no status either.
                    (Some(call), None) if response.body().is_end_stream() => {
                        call.finish(UNKNOWN);
                        None
                    }
                    (call, _) => call,
                };
                Ok(response.map(|inner| ObservedBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = call {
                    call.finish(UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body of an observed call: watches for the trailers that carry its status.
    pub(crate) struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if this.call.is_none() {
            return Poll::Ready(frame);
        }
        let code = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| code_name(t.get("grpc-status"))),
            // The body ended or failed without trailers: no status reached the client.
            Some(Err(_)) | None => Some(UNKNOWN),
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(frame)
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
    use super::*;

    #[test]
    fn status_codes_are_named_like_grpc_go() {
        let name = |s: &'static str| code_name(Some(&HeaderValue::from_static(s)));
        assert_eq!(name("0"), "OK");
        assert_eq!(name("1"), "Canceled");
        assert_eq!(name("3"), "InvalidArgument");
        assert_eq!(name("16"), "Unauthenticated");
        assert_eq!(name("17"), "Unknown");
        assert_eq!(name("x"), "Unknown");
        assert_eq!(code_name(None), "Unknown");
    }

    use std::convert::Infallible;

    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::{BodyExt, Empty, Full};

    const GET: &str = "/larder.v1.CacheService/Get";

    fn metrics() -> Arc<GrpcMetrics> {
        Arc::new(GrpcMetrics::new(&[crate::pb::FILE_DESCRIPTOR_SET]).expect("decoding"))
    }

    /// Calls of `service`/`method` counted under `code`.
    fn counted(m: &GrpcMetrics, service: &str, method: &str, code: &'static str) -> u64 {
        m.requests
            .get(&CallLabels {
                service: service.into(),
                method: method.into(),
                code,
            })
            .map_or(0, |c| c.get())
    }

    /// The observed response of a call to `path` that answers `response` at once.
    async fn answer<B: Body>(
        m: &Arc<GrpcMetrics>,
        path: &str,
        response: http::Response<B>,
    ) -> http::Response<ObservedBody<B>> {
        let future = ObservedFuture {
            inner: std::future::ready(Ok::<_, Infallible>(response)),
            call: Some(m.start(path)),
        };
        future.await.expect("infallible")
    }

    fn with_status<B>(body: B, status: &'static str) -> http::Response<B> {
        let mut response = http::Response::new(body);
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static(status));
        response
    }

    #[tokio::test]
    async fn a_status_in_the_trailers_counts_once_the_body_ends() {
        let m = metrics();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = Full::new(Bytes::from_static(b"answer"))
            .with_trailers(std::future::ready(Some(Ok(trailers))));
        let response = answer(&m, GET, http::Response::new(body)).await;
        assert_eq!(counted(&m, "larder.v1.CacheService", "Get", "OK"), 0);
        response.into_body().collect().await.expect("the body");
        assert_eq!(counted(&m, "larder.v1.CacheService", "Get", "OK"), 1);
    }

    #[tokio::test]
    async fn a_status_in_the_headers_counts_at_once() {
        let m = metrics();
        let response = answer(&m, GET, with_status(Empty::<Bytes>::new(), "3")).await;
        assert_eq!(
            counted(&m, "larder.v1.CacheService", "Get", "InvalidArgument"),
            1
        );
        response.into_body().collect().await.expect("the body");
        assert_eq!(
            counted(&m, "larder.v1.CacheService", "Get", "InvalidArgument"),
            1,
            "counted once"
        );
    }

    #[tokio::test]
    async fn no_status_at_all_is_unknown() {
        let m = metrics();
        drop(answer(&m, GET, http::Response::new(Empty::<Bytes>::new())).await);
        let body = Full::new(Bytes::from_static(b"no trailers"));
        let response = answer(&m, GET, http::Response::new(body)).await;
        response.into_body().collect().await.expect("the body");
        assert_eq!(counted(&m, "larder.v1.CacheService", "Get", "Unknown"), 2);
        assert_eq!(counted(&m, "larder.v1.CacheService", "Get", "Canceled"), 0);
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_status_is_canceled() {
        let m = metrics();
        let pending = ObservedFuture {
            inner: std::future::pending::<
                std::result::Result<http::Response<Empty<Bytes>>, Infallible>,
            >(),
            call: Some(m.start(GET)),
        };
        drop(pending);
        let body = Full::new(Bytes::from_static(b"data, then the client leaves"));
        drop(answer(&m, GET, http::Response::new(body)).await);
        assert_eq!(counted(&m, "larder.v1.CacheService", "Get", "Canceled"), 2);
        let durations = m
            .durations
            .get(&m.methods[GET])
            .map(|h| {
                let mut text = String::new();
                let mut registry = prometheus_client::registry::Registry::default();
                registry.register("d", "", h.clone());
                prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");
                text
            })
            .expect("a duration histogram");
        assert!(durations.contains("d_count 2\n"), "{durations}");
    }

    #[tokio::test]
    async fn other_paths_are_counted_as_unknown() {
        let m = metrics();
        drop(
            answer(
                &m,
                "/no.Such/Thing",
                with_status(Empty::<Bytes>::new(), "12"),
            )
            .await,
        );
        assert_eq!(counted(&m, "unknown", "unknown", "Unimplemented"), 1);
    }

    #[test]
    fn methods_come_from_the_descriptor_sets() {
        let m = GrpcMetrics::new(&[crate::pb::FILE_DESCRIPTOR_SET]).expect("decoding");
        let get = &m.methods["/larder.v1.CacheService/Get"];
        assert_eq!(
            (&*get.service, &*get.method),
            ("larder.v1.CacheService", "Get")
        );
        assert!(m.methods.contains_key("/larder.v1.RateLimitService/Check"));
        assert!(!m.methods.contains_key("/larder.v1.CacheService/Nope"));
    }
}
