//! The ordered stop of a running server: health NOT_SERVING → stop accepting → drain the
//! calls in progress (bounded by the drain timeout) → cut the connections still open → stop
//! the background tasks (reload, metrics endpoint, watchdog) and await them → close the store
//! (the writer commits what was queued, the WAL is checkpointed) → remove the socket file.
//!
//! The invariant is that nothing runs on the store once it closes: every connection task and
//! every background task has ended (or been awaited after its cancellation) before
//! [`Store::close`] is called.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::admission::ConnectionLimit;
use super::listen::{Accepting, Listeners};
use super::notify;
use super::routes::set_health;
use crate::error::{Error, Result};
use crate::metrics::MetricsServer;
use crate::store::Store;

/// How long connections cut at shutdown get to close before the store closes anyway.
const CONNECTIONS_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a serving server holds that its stop must end, in the order it is ended.
pub(crate) struct Running {
    pub(crate) health: HealthReporter,
    /// Cancelled to end the accept loops and the reload task.
    pub(crate) stop_accepting: CancellationToken,
    pub(crate) accepting: Accepting,
    pub(crate) connections: ConnectionLimit,
    pub(crate) reloader: JoinHandle<()>,
    pub(crate) metrics: Option<MetricsServer>,
    /// Cancelled to end the watchdog.
    pub(crate) stop_watchdog: CancellationToken,
    pub(crate) watchdog: Option<JoinHandle<()>>,
    pub(crate) store: Store,
}

impl Running {
    /// Stops in order (see the module doc), giving calls in progress `drain_timeout` to
    /// finish. Returns `failure` (why serving ended early), or the error closing the store.
    pub(crate) async fn stop(self, drain_timeout: Duration, failure: Option<Error>) -> Result<()> {
        let Running {
            health,
            stop_accepting,
            accepting,
            connections,
            reloader,
            metrics,
            stop_watchdog,
            watchdog,
            store,
        } = self;
        let Accepting {
            mut servers,
            socket,
            ..
        } = accepting;

        notify::stopping("shutting down: draining calls in progress");
        set_health(&health, ServingStatus::NotServing).await;
        stop_accepting.cancel();
        let drained = tokio::time::timeout(drain_timeout, async {
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
                timeout = ?drain_timeout,
                "calls in progress did not finish in time; closing their connections"
            );
            servers.shutdown().await;
        }
        // tonic runs each connection as a task of its own, which ending the accept loops does
        // not end: close whatever is still open (after a full drain, only idle or streaming
        // connections such as a health Watch) and wait for them, so that no call runs on after
        // the store closes.
        connections.cut();
        if !connections.closed(CONNECTIONS_CLOSE_TIMEOUT).await {
            tracing::warn!("some connections did not close in time");
        }
        if let Err(e) = reloader.await {
            tracing::warn!(error = %e, "the reload task failed");
        }
        if let Some(server) = metrics {
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
        drop(socket);
        closed?;
        tracing::info!("stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Lets go of a server that never served (its files could not be read): the listeners close,
/// the store closes and the socket file goes, as after a stop.
pub(crate) async fn abandon(store: Store, listeners: Listeners) {
    // The sockets close first, so that no client is accepted by a daemon that will not serve;
    // the socket file goes last, after the store is closed, as in an ordinary stop.
    let socket_file = listeners.close();
    if let Err(closing) = store.close().await {
        tracing::warn!(error = %closing, "closing the store after a failed start");
    }
    drop(socket_file);
}
