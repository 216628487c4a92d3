//! Turns SIGTERM and SIGINT into one future that completes on the first of them, and SIGHUP
//! into a stream of requests to reload the auth token file and the TLS certificate and key.
//!
//! The handlers are installed when [`on_signal`] and [`on_reload`] are called, not when the
//! future or stream is first polled: call them before binding any listener, so that a
//! supervisor that signals the moment the socket accepts gets a graceful shutdown (or a
//! reload), never death by the default disposition.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_stream::Stream;

/// Installs the SIGTERM and SIGINT handlers now; the returned future completes on the first of
/// them. Must be called inside a Tokio runtime.
pub fn on_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    })
}

/// Installs the SIGHUP handler now; the returned stream yields once per SIGHUP (several that
/// arrive before it is polled again count as one). Must be called inside a Tokio runtime.
pub fn on_reload() -> std::io::Result<Hangups> {
    Ok(Hangups(signal(SignalKind::hangup())?))
}

/// SIGHUPs, as a stream; see [`on_reload`].
#[derive(Debug)]
pub struct Hangups(Signal);

impl Stream for Hangups {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let polled = self.0.poll_recv(cx);
        if let Poll::Ready(Some(())) = polled {
            tracing::info!("SIGHUP received, reloading");
        }
        polled
    }
}
