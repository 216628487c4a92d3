//! What the server answers, and the layers every call passes through: gRPC health (one status
//! per Larder service and one for the server as a whole), reflection v1 and v1alpha, and the
//! four services (the pipeline multiplexing calls of the first three), behind one layer stack per listener (metrics → auth → the call bound → the
//! in-flight byte budget) with the same deadline, HTTP/2 bounds, keepalive and maximum
//! connection age whichever way a client comes in.
//!
//! Health needs no token and is never refused by the call bound, so its messages are capped
//! at [`HEALTH_MAX_MESSAGE`]: an unauthenticated client cannot make the server buffer a large
//! body per call.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::ServerSettings;
use super::admission::{ConnectionInfo, RequestLimitLayer, SplitInfoLayer};
use super::auth::{AuthLayer, Authenticator, Transport};
use super::budget::{BudgetLayer, ByteBudget};
use crate::error::{Error, Result};
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::pb;
use crate::pb::cache_service_server::CacheServiceServer;
use crate::pb::pipeline_service_server::PipelineServiceServer;
use crate::pb::queue_service_server::QueueServiceServer;
use crate::pb::rate_limit_service_server::RateLimitServiceServer;
use crate::pb::session_service_server::SessionServiceServer;
use crate::service::cache::CacheApi;
use crate::service::pipeline::PipelineApi;
use crate::service::queue::QueueApi;
use crate::service::ratelimit::RateLimitApi;
use crate::service::scope::Scoped;
use crate::service::session::SessionApi;
use crate::store::Store;

/// Most calls in progress on one HTTP/2 connection (hyper's own default, which tonic turns
/// off unless it is set): bounds what one client can open, including health Watch streams,
/// which the call limit does not count.
const MAX_STREAMS_PER_CONNECTION: u32 = 200;

/// HTTP/2 keepalive: a connection whose peer stops answering pings is closed, so dead clients
/// give their place back.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest health request decoded. A `HealthCheckRequest` holds one service name (the longest
/// Larder answers for is 26 bytes); tonic's default of 4 MiB would let every unauthenticated
/// call hold that much while its body arrives.
pub(crate) const HEALTH_MAX_MESSAGE: usize = 1024;

/// Every route the server answers, with the layers its calls pass through.
pub(crate) struct Router {
    routes: Routes,
    observe: GrpcMetricsLayer,
    auth: Option<Authenticator>,
    calls: RequestLimitLayer,
    budget: BudgetLayer,
    request_timeout: Duration,
    max_connection_age: Duration,
}

impl Router {
    /// Health, reflection, the three services over `store` and the pipeline; calls are
    /// counted by `observe`, checked against `auth` (when on) and bounded by `calls`; pipeline
    /// streams wind down when `stopping` is cancelled. Also returns the health reporter, whose
    /// statuses start as SERVING.
    pub(crate) async fn new(
        store: &Store,
        settings: &ServerSettings,
        observe: GrpcMetricsLayer,
        auth: Option<Authenticator>,
        calls: RequestLimitLayer,
        stopping: CancellationToken,
    ) -> Result<(Self, HealthReporter)> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_service = health_service.max_decoding_message_size(HEALTH_MAX_MESSAGE);
        set_health(&health, ServingStatus::Serving).await;

        // Both reflection versions describe every service, including each other, so that
        // `grpcurl list` shows the same set whichever version the client speaks.
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            pb::DESCRIPTOR_SETS.iter().fold(
                b.include_reflection_service(false),
                |b, set: &&'static [u8]| b.register_encoded_file_descriptor_set(set),
            )
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
            .build_v1()
            .map_err(|e| Error::Internal(format!("building reflection v1: {e}")))?;
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
            .build_v1alpha()
            .map_err(|e| Error::Internal(format!("building reflection v1alpha: {e}")))?;

        let max_message = settings.limits.max_message_bytes();
        // Scoped: a token limited to a namespace prefix is checked once the request is decoded.
        let cache = Scoped(CacheApi::new(store.clone(), settings.limits.clone()));
        let session_api = SessionApi::new(store.clone(), settings.sessions.clone(), max_message);
        let ratelimit_api = RateLimitApi::new(
            store.clone(),
            settings.ratelimit.clone(),
            settings.limits.max_key_bytes,
        );
        // The pipeline hands each call to the same services; a call's message is its twin's
        // plus its id and tag, within the slack `max_message_bytes` already has.
        let pipeline = PipelineServiceServer::new(
            PipelineApi::new(
                cache.clone(),
                session_api.clone(),
                ratelimit_api.clone(),
                settings.max_pipeline_inflight,
                stopping.clone(),
            )
            .with_observer(observe.calls()),
        )
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let cache = CacheServiceServer::new(cache)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let sessions = SessionServiceServer::new(session_api)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let ratelimit = RateLimitServiceServer::new(ratelimit_api);
        let queue = QueueServiceServer::new(QueueApi::new(
            store.clone(),
            settings.limits.clone(),
            settings.request_timeout,
            stopping,
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let observe_budget = observe.budget();
        let routes = Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(cache)
            .add_service(sessions)
            .add_service(ratelimit)
            .add_service(queue)
            .add_service(pipeline);
        let router = Self {
            routes,
            observe,
            auth,
            calls,
            budget: BudgetLayer::new(ByteBudget::new(settings.max_inflight_bytes, observe_budget)),
            request_timeout: settings.request_timeout,
            max_connection_age: settings.max_connection_age,
        };
        Ok((router, health))
    }

    /// Serves every route on the connections `incoming` yields, which came in over
    /// `transport`, until `stop` completes.
    ///
    /// tonic takes the shorter of `request_timeout` and the client's grpc-timeout. Metrics
    /// are the outer layer, so calls refused (no token, over the limit) are counted too; a
    /// call without a valid token never takes a place among the calls in progress. TLS, when
    /// on, is Larder's own (see `tls::ServerTls::accept`), so the builder is always a
    /// plaintext one. The connections are admission's, whose information each call carries
    /// (`ConnectionInfo`): the outermost layer splits it for the layers below.
    ///
    /// tonic sends GOAWAY at the maximum connection age; admission closes the connection
    /// once the grace period after that has passed too. tonic's own grace
    /// (`max_connection_age_grace`) is deliberately not set: in tonic 0.14.9 a grace replaces
    /// the GOAWAY with a hard close at age + grace, and without one tonic 0.14.5 to 0.14.6
    /// panicked at the age (hyperium/tonic#2522, fixed by 0.14.9, the version locked;
    /// `connections::the_locked_tonic_sends_goaway_at_the_age_without_panicking` checks it).
    pub(crate) fn serve<I, IO, IE, C>(
        &self,
        transport: Transport,
        incoming: I,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead
            + AsyncWrite
            + Connected<ConnectInfo = ConnectionInfo<C>>
            + Unpin
            + Send
            + 'static,
        C: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        tonic::transport::Server::builder()
            .timeout(self.request_timeout)
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_connection_age(self.max_connection_age)
            .layer(SplitInfoLayer::<C>::new())
            .layer(self.observe.clone())
            .layer(AuthLayer::new(self.auth.as_ref(), transport))
            .layer(self.calls.clone())
            .layer(self.budget.clone())
            .add_routes(self.routes.clone())
            .serve_with_incoming_shutdown(incoming, stop)
    }
}

/// Sets the health of every Larder service, and of the server as a whole (`""`).
pub(crate) async fn set_health(health: &HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService;
    for name in [
        "",
        <CacheServiceServer<CacheApi> as NamedService>::NAME,
        <SessionServiceServer<SessionApi> as NamedService>::NAME,
        <RateLimitServiceServer<RateLimitApi> as NamedService>::NAME,
        <PipelineServiceServer<PipelineApi> as NamedService>::NAME,
        <QueueServiceServer<QueueApi> as NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}
