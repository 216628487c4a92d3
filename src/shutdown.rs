//! Turns SIGTERM and SIGINT into one future that completes on the first of them.

use tokio::signal::unix::{SignalKind, signal};

/// Completes on SIGTERM or SIGINT. If a handler cannot be installed (which only happens when
/// the process is out of resources), it is logged and that signal is not waited for.
pub async fn signal_received() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        (Ok(mut only), Err(e)) | (Err(e), Ok(mut only)) => {
            tracing::warn!(error = %e, "cannot listen for one of SIGTERM/SIGINT");
            only.recv().await;
            tracing::info!("signal received, shutting down");
        }
        (Err(e), Err(_)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
            std::future::pending::<()>().await;
        }
    }
}
