//! The metrics endpoint: plain HTTP/1.1 on its own TCP listener, `GET /metrics` and nothing
//! else (every other request is a 404). It has no authentication, so it belongs on loopback.
//!
//! Like the gRPC listeners, the caller binds it ([`bind`]; tests pass `127.0.0.1:0`) and the
//! server owns it from there: [`MetricsServer::stop`] stops accepting, lets scrapes in
//! progress finish (bounded), closes idle keep-alive connections and awaits every task.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Format, Metrics};
use crate::error::{Error, Result};

/// Most scrape connections open at once; more are closed on accept. Prometheus keeps one.
const MAX_CONNECTIONS: usize = 16;

/// Longest a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long scrapes in progress may run on after the server is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the metrics listener at `addr` (HOST:PORT); the error names the address.
pub(crate) async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Setup(format!("cannot serve metrics on {addr}: {e}")))
}

/// The running metrics endpoint. Dropping it without [`MetricsServer::stop`] still tells it
/// to stop, without waiting.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `metrics` on `listener` until [`MetricsServer::stop`].
    pub(crate) fn start(listener: TcpListener, metrics: Arc<Metrics>) -> Self {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving metrics at /metrics");
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, metrics, stop.clone()));
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops accepting, lets scrapes in progress finish (for at most a few seconds) and waits
    /// until every connection has ended.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the metrics server ended abnormally");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, "too many metrics connections; closing this one");
                        continue;
                    }
                    connections.spawn(serve_connection(stream, metrics.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("metrics scrapes still running at shutdown; cutting them");
        connections.shutdown().await;
    }
}

/// Serves one connection; on `stop`, finishes the request in progress and closes it.
async fn serve_connection(stream: TcpStream, metrics: Arc<Metrics>, stop: CancellationToken) {
    let service = service_fn(move |request| {
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(respond(&metrics, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

/// The answer to one request: the metrics for `GET /metrics`, 404 for anything else.
async fn respond(metrics: &Metrics, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at GET /metrics\n",
        );
    }
    let format = Format::from_accept(request.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
    match metrics.render(format).await {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering metrics failed\n",
            )
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
