//! Binding the listeners and running the gRPC server over a store, with the ordered teardown:
//! health NOT_SERVING → stop accepting → drain in-flight calls (bounded) → close the store
//! (writer commits what was queued, WAL checkpoint) → remove the socket file. The metrics
//! endpoint, when on, serves until the calls have drained and is stopped before the store.
//!
//! The caller opens the store and passes the shutdown future, so tests run the real server on
//! port 0 and stop it without signals.
//!
//! - [`limits`]: the bounds on connections and calls in progress.
//! - [`notify`]: systemd's READY/STOPPING/WATCHDOG protocol.
//! - [`auth`]: bearer tokens checked on each listener.
//! - [`tls`]: TLS on the TCP listener.

pub mod auth;
pub mod limits;
pub mod notify;
pub mod tls;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use self::auth::AuthSettings;
use self::auth::{AuthLayer, Authenticator, Transport};
use self::limits::{ConnectionLimit, RequestLimitLayer};
use self::tls::ServerTls;
use self::tls::TlsSettings;
use crate::error::{Error, Result};
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::metrics::{Metrics, MetricsServer};
use crate::pb;
use crate::pb::cache_service_server::CacheServiceServer;
use crate::pb::rate_limit_service_server::RateLimitServiceServer;
use crate::pb::session_service_server::SessionServiceServer;
use crate::service::Limits;
use crate::service::cache::CacheApi;
use crate::service::ratelimit::{RateLimitApi, RateLimitSettings};
use crate::service::session::{SessionApi, SessionSettings};
use crate::store::Store;

/// The sockets the server accepts on: TCP, a Unix socket or both for gRPC, and optionally
/// a TCP listener for the metrics endpoint.
#[derive(Debug)]
pub struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds TCP at `tcp` (`None` = no TCP) and a Unix socket at `unix` with file mode
    /// `socket_mode`.
    ///
    /// A Unix socket path that is already a socket with a live server behind it is an error
    /// (never stolen); a stale socket file left by a dead process is replaced; any other file
    /// at the path is left alone and reported.
    pub async fn bind(tcp: Option<&str>, unix: Option<&Path>, socket_mode: u32) -> Result<Self> {
        if tcp.is_none() && unix.is_none() {
            return Err(Error::invalid(
                "listen",
                "TCP is off and no Unix socket is set: nothing to listen on",
            ));
        }
        let tcp = match tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| listen_error(addr, e))?,
            ),
            None => None,
        };
        let unix = match unix {
            Some(path) => Some((bind_unix(path, socket_mode)?, path.to_owned())),
            None => None,
        };
        Ok(Self {
            tcp,
            unix,
            metrics: None,
        })
    }

    /// Listeners already bound by the caller (tests bind `127.0.0.1:0`).
    pub fn from_bound(tcp: Option<TcpListener>, unix: Option<(UnixListener, PathBuf)>) -> Self {
        Self {
            tcp,
            unix,
            metrics: None,
        }
    }

    /// Also serves Prometheus metrics at `GET /metrics` on `listener` (see
    /// [`crate::metrics::bind`]).
    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    /// The Unix socket path, if any.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }
}

/// Why the TCP address cannot be listened on, and what to do about it.
fn listen_error(addr: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let hint = match e.kind() {
        K::AddrInUse => {
            "the address is already in use (another larder, or another program); \
             stop it or choose another --listen"
        }
        K::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE); \
             choose another --listen"
        }
        K::AddrNotAvailable => {
            "no interface of this machine has that address; choose another \
             --listen"
        }
        _ => "",
    };
    if hint.is_empty() {
        Error::Setup(format!("cannot listen on {addr}: {e}"))
    } else {
        Error::Setup(format!("cannot listen on {addr}: {hint} ({e})"))
    }
}

/// Binds a Unix socket at `path` with file mode `mode` (0660 lets the daemon's user and
/// group connect, nobody else), replacing a stale socket file but never a live one.
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::Unavailable(format!(
                    "unix socket {} is in use by a running server; stop it or choose another path",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                Error::Setup(format!(
                    "cannot remove stale socket {}: {e}",
                    path.display()
                ))
            })?;
            tracing::info!(path = %path.display(), "replaced a stale unix socket");
        }
        Ok(_) => {
            return Err(Error::Setup(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        Err(_) => {}
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Setup(format!("cannot create {}: {e}", parent.display())))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::Setup(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::Setup(format!("cannot set the mode of {}: {e}", path.display())))?;
    Ok(listener)
}

/// How long connections cut at shutdown get to close before the store closes anyway.
const CONNECTIONS_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most calls in progress on one HTTP/2 connection (hyper's own default, which tonic turns
/// off unless it is set): bounds what one client can open, including health Watch streams,
/// which the call limit does not count.
const MAX_STREAMS_PER_CONNECTION: u32 = 200;

/// HTTP/2 keepalive: a connection whose peer stops answering pings is closed, so dead clients
/// give their place back.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the server behaves, beyond the store.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Request limits.
    pub limits: Limits,
    /// Session defaults and bounds.
    pub sessions: SessionSettings,
    /// Named rate-limit policies.
    pub ratelimit: RateLimitSettings,
    /// How long in-flight calls may run after shutdown starts before they are cut.
    pub drain_timeout: Duration,
    /// Longest a call may run (a client's shorter `grpc-timeout` wins); past it the handler
    /// is dropped and the call answers `CANCELLED` (tonic's code for a server-side timeout).
    pub request_timeout: Duration,
    /// Most calls in progress at once over all connections; more answer `UNAVAILABLE` at
    /// once instead of queueing.
    pub max_concurrent_requests: usize,
    /// Most open client connections over all listeners; more are closed on accept.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface before it is closed
    /// (over TLS, to finish the TLS handshake and then send it).
    pub handshake_timeout: Duration,
    /// Bearer-token authentication, if on.
    pub auth: Option<AuthSettings>,
    /// TLS on the TCP listener, if on.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            sessions: SessionSettings::default(),
            ratelimit: RateLimitSettings::default(),
            drain_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            max_connections: 512,
            handshake_timeout: limits::HANDSHAKE_TIMEOUT,
            auth: None,
            tls: None,
        }
    }
}

/// The bearer tokens and the TLS certificate the settings name, once read and checked by
/// [`load_files`].
pub type LoadedFiles = (Option<Authenticator>, Option<ServerTls>);

/// Reads the auth token file and the TLS files `settings` name.
pub fn load_files(settings: &ServerSettings) -> Result<LoadedFiles> {
    let auth = settings
        .auth
        .as_ref()
        .map(Authenticator::load)
        .transpose()
        .map_err(|e| Error::Setup(e.to_string()))?;
    let tls = settings
        .tls
        .as_ref()
        .map(ServerTls::load)
        .transpose()
        .map_err(|e| Error::Setup(e.to_string()))?;
    Ok((auth, tls))
}

/// The one task that answers `reloads` (SIGHUP, in the daemon), until `stop` is cancelled or
/// `reloads` ends: each time, the auth token file ([`auth::reload`]) and the TLS certificate
/// and key ([`tls::reload`]) are read again, side by side. A file that cannot be used keeps
/// what was loaded from it before, and says why in the log.
async fn reload_on(
    auth: Option<Authenticator>,
    tls: Option<ServerTls>,
    mut reloads: impl Stream<Item = ()> + Unpin,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = reloads.next() => next,
        };
        if next.is_none() {
            return;
        }
        let tokens = async {
            match &auth {
                Some(auth) => auth::reload(auth).await,
                None => {
                    tracing::info!("reload requested, but there is no auth.token_file to read")
                }
            }
        };
        let certificate = async {
            if let Some(tls) = &tls {
                tls::reload(tls).await;
            }
        };
        tokio::join!(tokens, certificate);
    }
}

/// Serves every service on the listeners until `shutdown` completes (or a listener fails),
/// then tears down in order and closes the store.
pub async fn serve(
    store: Store,
    listeners: Listeners,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_with_reload(
        store,
        listeners,
        settings,
        shutdown,
        tokio_stream::pending(),
    )
    .await
}

/// [`serve`], reading the auth token file and the TLS certificate and key again each time
/// `reload` yields (the daemon passes SIGHUP, from [`crate::shutdown::on_reload`]), in one
/// task: new TLS connections get the new certificate, and a file that cannot be used keeps
/// what was loaded from it before.
///
/// The token file and the TLS files are read first; if one cannot be used, nothing is served,
/// the store is closed and the error names the file.
pub async fn serve_with_reload(
    store: Store,
    listeners: Listeners,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
    reload: impl Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<()> {
    let files = match load_files(&settings) {
        Ok(loaded) => loaded,
        Err(e) => {
            // Nothing was served: let go of the store and the socket as a stop would.
            let socket = listeners.unix_path().map(Path::to_owned);
            drop(listeners);
            if let Err(closing) = store.close().await {
                tracing::warn!(error = %closing, "closing the store after a failed start");
            }
            if let Some(path) = socket {
                let _ = std::fs::remove_file(&path);
            }
            return Err(e);
        }
    };
    serve_loaded(store, listeners, settings, files, shutdown, reload).await
}

/// [`serve_with_reload`] with the token and TLS files already read by [`load_files`] (the
/// daemon reads them before it opens the store, so that a bad one touches nothing).
pub async fn serve_loaded(
    store: Store,
    mut listeners: Listeners,
    settings: ServerSettings,
    (auth, tls): LoadedFiles,
    shutdown: impl Future<Output = ()>,
    reload: impl Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<()> {
    if let Some(auth) = &auth {
        tracing::info!(
            path = %auth.token_file().display(),
            tokens = auth.token_count(),
            unix_socket = auth.unix_socket(),
            "bearer tokens required"
        );
    }

    let (health, health_service) = tonic_health::server::health_reporter();
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

    let (observe, metrics_server) = match listeners.metrics.take() {
        Some(listener) => {
            let policies = settings.ratelimit.policies.keys().cloned();
            let metrics = Arc::new(Metrics::new(store.clone(), policies)?);
            let layer = metrics.grpc_layer();
            (layer, Some(MetricsServer::start(listener, metrics)))
        }
        None => (GrpcMetricsLayer::off(), None),
    };

    let max_message = settings.limits.max_message_bytes();
    let cache = CacheServiceServer::new(CacheApi::new(store.clone(), settings.limits.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let sessions =
        SessionServiceServer::new(SessionApi::new(store.clone(), settings.sessions.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
    let ratelimit = RateLimitServiceServer::new(RateLimitApi::new(
        store.clone(),
        settings.ratelimit.clone(),
        settings.limits.max_key_bytes,
    ));
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cache)
        .add_service(sessions)
        .add_service(ratelimit);

    let stop_accepting = CancellationToken::new();
    let mut servers = JoinSet::new();
    let socket_path = listeners.unix_path().map(Path::to_owned);
    let connections = ConnectionLimit::new(settings.max_connections, settings.handshake_timeout);
    let calls = RequestLimitLayer::new(settings.max_concurrent_requests);
    // One builder for every listener: the same deadline and bounds whichever way a client
    // comes in. tonic takes the shorter of `request_timeout` and the client's grpc-timeout.
    // Metrics are the outer layer, so calls refused (no token, over the limit) are counted
    // too; a call without a valid token never takes a place among the calls in progress.
    // TLS, when on, is Larder's own (see `tls::ServerTls::accept`), so the builder is always a
    // plaintext one.
    let builder = |transport: Transport| {
        Server::builder()
            .timeout(settings.request_timeout)
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .layer(observe.clone())
            .layer(AuthLayer::new(auth.as_ref(), transport))
            .layer(calls.clone())
    };
    let mut serving = Vec::new();
    if let Some(tcp) = listeners.tcp {
        let addr = tcp.local_addr().ok();
        let accepted = TcpIncoming::from(tcp).with_nodelay(Some(true));
        let stopped = stop_accepting.clone().cancelled_owned();
        let server = builder(Transport::Tcp).add_routes(routes.clone());
        // Over TLS the preface deadline counts the decrypted bytes: the TLS accept runs here,
        // between the connection limit and the HTTP/2 server.
        let server = match &tls {
            Some(tls) => Box::pin(
                server.serve_with_incoming_shutdown(tls.accept(&connections, accepted), stopped),
            ) as Pin<Box<dyn Future<Output = _> + Send>>,
            None => {
                Box::pin(server.serve_with_incoming_shutdown(connections.limit(accepted), stopped))
            }
        };
        servers.spawn(async move { (format!("tcp {addr:?}"), server.await) });
        if let Some(addr) = addr {
            tracing::info!(%addr, "listening on tcp");
            serving.push(addr.to_string());
        }
        if let Some(tls) = &tls {
            let cert = tls.cert().display();
            tracing::info!(%cert, chain = tls.chain_len(), "tcp serves TLS");
        }
    }
    if let Some((unix, path)) = listeners.unix {
        let incoming = connections.limit(UnixListenerStream::new(unix));
        let server = builder(Transport::Unix)
            .add_routes(routes.clone())
            .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
        tracing::info!(path = %path.display(), "listening on unix socket");
        serving.push(format!("unix:{}", path.display()));
        servers.spawn(async move { (format!("unix {}", path.display()), server.await) });
    }
    let stop_watchdog = CancellationToken::new();
    let watchdog = notify::watchdog_interval().map(|interval| {
        tokio::spawn(notify::watchdog(
            store.clone(),
            interval,
            stop_watchdog.clone(),
        ))
    });
    notify::ready(&format!("serving on {}", serving.join(" and ")));

    let reloader = tokio::spawn(reload_on(auth, tls, reload, stop_accepting.clone()));

    let mut failure = None;
    tokio::select! {
        _ = shutdown => {}
        Some(ended) = servers.join_next() => {
            let msg = match ended {
                Ok((name, Ok(()))) => format!("{name} server stopped unexpectedly"),
                Ok((name, Err(e))) => format!("{name} server failed: {e}"),
                Err(e) => format!("server task failed: {e}"),
            };
            tracing::error!("{msg}");
            failure = Some(Error::Internal(msg));
        }
    }

    notify::stopping("shutting down: draining calls in progress");
    set_health(&health, ServingStatus::NotServing).await;
    stop_accepting.cancel();
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        while let Some(ended) = servers.join_next().await {
            match ended {
                Ok((name, Err(e))) => {
                    tracing::warn!(error = %e, "{name} server ended with an error")
                }
                Err(e) => tracing::warn!(error = %e, "server task failed"),
                Ok(_) => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout = ?settings.drain_timeout,
            "calls in progress did not finish in time; closing their connections"
        );
        servers.shutdown().await;
    }
    // tonic runs each connection as a task of its own, which ending the accept loops does not
    // end: close whatever is still open (after a full drain, only idle or streaming
    // connections such as a health Watch) and wait for them, so that no call runs on after the
    // store closes.
    connections.cut();
    if !connections.closed(CONNECTIONS_CLOSE_TIMEOUT).await {
        tracing::warn!("some connections did not close in time");
    }
    if let Err(e) = reloader.await {
        tracing::warn!(error = %e, "the reload task failed");
    }
    if let Some(server) = metrics_server {
        server.stop().await;
    }

    stop_watchdog.cancel();
    if let Some(watchdog) = watchdog
        && let Err(e) = watchdog.await
    {
        tracing::warn!(error = %e, "the watchdog task failed");
    }
    notify::stopping("shutting down: writing what is queued, checkpointing the WAL");
    let closed = store.close().await;
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(&path);
    }
    closed?;
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sets the health of every Larder service, and of the server as a whole (`""`).
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService;
    for name in [
        "",
        <CacheServiceServer<CacheApi> as NamedService>::NAME,
        <SessionServiceServer<SessionApi> as NamedService>::NAME,
        <RateLimitServiceServer<RateLimitApi> as NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}
