//! Turns SIGTERM and SIGINT into one future that completes on the first of them.
//!
//! The handlers are installed when [`on_signal`] is called, not when the future is first
//! polled: call it before binding any listener, so that a supervisor that signals the moment
//! the socket accepts gets a graceful shutdown, never death by the default disposition.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

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
