//! The server: every gRPC service of one [`Store`] on the listeners the caller bound, until
//! the caller's shutdown future completes, then an ordered stop that closes the store.
//!
//! [`Server::run`] is the one entry point. The caller binds ([`Listeners`]) and owns the
//! signals ([`signals`]), so the daemon binds before it opens the store and tests run the real
//! server on port 0 and stop it without signals.
//!
//! - [`settings`]: [`ServerSettings`] and its defaults.
//! - [`listen`]: binding TCP and Unix listeners (stale-socket handling), the accept loops.
//! - [`routes`]: health, reflection, the three services and the layers around them.
//! - [`admission`]: the bounds on connections (in all, per peer, unused, by age), on calls
//!   in progress and on health Watch streams.
//! - [`budget`]: the bound on bytes of requests and answers held in memory.
//! - [`teardown`]: the ordered stop.
//! - [`files`]: the token and TLS files, read at start and on each reload.
//! - [`auth`]: bearer tokens (and their scopes) checked on each listener.
//! - [`throttle`]: warnings logged at most once per few seconds per kind.
//! - [`tls`]: TLS on the TCP listener.
//! - [`notify`]: systemd's READY/STOPPING/WATCHDOG protocol.
//! - [`signals`]: SIGTERM/SIGINT as a future, SIGHUP as a stream of reloads.

pub(crate) mod admission;
pub(crate) mod auth;
mod budget;
mod files;
mod listen;
pub(crate) mod notify;
mod routes;
mod settings;
pub mod signals;
mod teardown;
mod throttle;
pub(crate) mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

pub use self::files::ServerFiles;
pub use self::listen::{Listeners, Reservation, bind_metrics, bind_unix};
pub use self::settings::ServerSettings;

use self::admission::{ConnectionLimit, RequestLimitLayer};
use self::routes::Router;
use self::teardown::Running;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::metrics::MetricsServer;
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::store::Store;

/// Requests to read the token and TLS files again (SIGHUP, in the daemon).
type Reloads = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// A server over one store, built with [`Server::new`] and run with [`Server::run`].
pub struct Server {
    store: Store,
    settings: ServerSettings,
    files: Option<ServerFiles>,
    reloads: Reloads,
}

impl Server {
    /// A server of every service over `store`, behaving as `settings` say. Its token and TLS
    /// files are read when it runs, unless [`Server::with_files`] gives them.
    pub fn new(store: Store, settings: ServerSettings) -> Self {
        Self {
            store,
            settings,
            files: None,
            reloads: Box::pin(tokio_stream::pending()),
        }
    }

    /// The token and TLS files, already read by [`ServerFiles::load`] from the same settings
    /// (the daemon reads them before it opens the store, so that a bad one touches nothing).
    pub fn with_files(mut self, files: ServerFiles) -> Self {
        self.files = Some(files);
        self
    }

    /// Reads the auth token file and the TLS certificate and key again each time `reloads`
    /// yields (the daemon passes SIGHUP, from [`signals::on_reload`]), in one task: new TLS
    /// connections get the new certificate, and a file that cannot be used keeps what was
    /// loaded from it before.
    pub fn with_reload(mut self, reloads: impl Stream<Item = ()> + Send + 'static) -> Self {
        self.reloads = Box::pin(reloads);
        self
    }

    /// Serves every service on `listeners` until `shutdown` completes (or a listener fails),
    /// then stops in order: health NOT_SERVING, stop accepting, drain the calls in progress
    /// (for at most the drain timeout), stop the background tasks, close the store, remove
    /// the socket file.
    ///
    /// When the token or TLS files are read here and one cannot be used, nothing is served:
    /// the store is closed, the socket file removed, and the error names the file.
    pub async fn run(
        self,
        mut listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let Server {
            store,
            settings,
            files,
            reloads,
        } = self;
        let files = match files {
            Some(files) => files,
            None => match ServerFiles::load(&settings) {
                Ok(files) => files,
                Err(e) => {
                    teardown::abandon(store, listeners).await;
                    return Err(e);
                }
            },
        };
        let ServerFiles { auth, tls } = files;
        warn_if_exposed(listeners.tcp_addrs(), tls.is_some(), auth.is_some());
        if let Some(auth) = &auth {
            tracing::info!(
                path = %auth.token_file().display(),
                tokens = auth.token_count(),
                unix_socket = auth.unix_socket(),
                "bearer tokens required"
            );
        }

        // Everything that can fail is built before anything starts, so that a failure here
        // still closes the store and removes the socket file, in that order.
        let metrics = match listeners.take_metrics() {
            Some(listener) => {
                let policies = settings.ratelimit.policies.keys().cloned();
                match Metrics::new(store.clone(), policies) {
                    Ok(metrics) => {
                        let metrics = metrics.with_auth(auth.as_ref().map(|a| a.refusals()));
                        Some((listener, Arc::new(metrics)))
                    }
                    Err(e) => {
                        teardown::abandon(store, listeners).await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let observe = match &metrics {
            Some((_, metrics)) => metrics.grpc_layer(),
            None => GrpcMetricsLayer::off(),
        };
        let calls = RequestLimitLayer::new(settings.max_concurrent_requests)
            .with_watch_limit(settings.max_health_watches);
        // Cancelled when shutdown begins: the accept loops stop, and pipeline streams answer
        // what they have read and end.
        let stop_accepting = CancellationToken::new();
        let (router, health) = match Router::new(
            &store,
            &settings,
            observe,
            auth.clone(),
            calls,
            stop_accepting.clone(),
        )
        .await
        {
            Ok(routes) => routes,
            Err(e) => {
                teardown::abandon(store, listeners).await;
                return Err(e);
            }
        };
        let metrics = metrics.map(|(listener, metrics)| MetricsServer::start(listener, metrics));

        let connections =
            ConnectionLimit::new(settings.max_connections, settings.handshake_timeout)
                .with_write_timeout(settings.write_timeout)
                .with_auth_timeout(settings.auth_timeout)
                .with_max_age(
                    settings.max_connection_age,
                    settings.max_connection_age_grace,
                )
                .with_per_peer_limit(settings.max_connections_per_peer);
        let mut accepting = listeners.serve(&router, &connections, tls.as_ref(), &stop_accepting);
        let stop_watchdog = CancellationToken::new();
        let watchdog = notify::watchdog_interval().map(|interval| {
            tokio::spawn(notify::watchdog(
                store.clone(),
                interval,
                stop_watchdog.clone(),
            ))
        });
        notify::ready(&format!("serving on {}", accepting.serving.join(" and ")));

        let reloader = tokio::spawn(files::reload_on(auth, tls, reloads, stop_accepting.clone()));

        let mut failure = None;
        tokio::select! {
            _ = shutdown => {}
            Some(ended) = accepting.servers.join_next() => {
                let msg = match ended {
                    Ok((name, Ok(()))) => format!("{name} server stopped unexpectedly"),
                    Ok((name, Err(e))) => format!("{name} server failed: {e}"),
                    Err(e) => format!("server task failed: {e}"),
                };
                tracing::error!("{msg}");
                failure = Some(Error::Internal(msg));
            }
        }

        Running {
            health,
            stop_accepting,
            accepting,
            connections,
            reloader,
            metrics,
            stop_watchdog,
            watchdog,
            store,
        }
        .stop(settings.drain_timeout, failure)
        .await
    }
}

/// One warning at start for each way the daemon is reachable beyond loopback without a
/// protection: gRPC over TCP without TLS (tokens and data in clear text) or without auth
/// (anyone who reaches the port reads and writes everything), and the metrics endpoint
/// (which never asks for a token). Each names the setting to change.
fn warn_if_exposed([tcp, metrics]: [Option<std::net::SocketAddr>; 2], tls: bool, auth: bool) {
    if let Some(addr) = tcp.filter(|a| !a.ip().is_loopback()) {
        if !tls {
            tracing::warn!(
                %addr,
                "listening beyond loopback without TLS: tokens and data cross the network in \
                 clear text; set tls.cert and tls.key, or listen on 127.0.0.1"
            );
        }
        if !auth {
            tracing::warn!(
                %addr,
                "listening beyond loopback without auth: anyone who reaches the port can read \
                 and change every entry, session and limit; set auth.token_file, or listen on \
                 127.0.0.1"
            );
        }
    }
    if let Some(addr) = metrics.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            %addr,
            "metrics listening beyond loopback: anyone who reaches the port can read them, \
             without a token; set metrics.listen to a 127.0.0.1 address, or firewall the port"
        );
    }
}
