//! The systemd service protocol (`Type=notify`): `READY=1` once every listener serves,
//! `STOPPING=1` when shutdown starts, `STATUS=` lines saying what the daemon is doing, and
//! `WATCHDOG=1` pings at half the `WatchdogSec=` interval while the store answers (a reader
//! reads and the writer gets through its queue).
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call here does nothing. A failure to notify
//! is logged, never fatal: the daemon serves either way, and systemd reports the missing
//! READY itself.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Every listener is bound and served: tells systemd start-up has finished.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has started.
pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process), if any.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings the watchdog every half `interval` until `stop` is cancelled, each time after the
/// store has answered a read: a daemon whose runtime or storage hangs stops pinging, and
/// systemd restarts it.
pub(crate) async fn watchdog(store: Store, interval: Duration, stop: CancellationToken) {
    let every = interval / 2;
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match tokio::time::timeout(every, store.ping()).await {
            Ok(Ok(())) => send(&[NotifyState::Watchdog]),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "store check failed; not pinging the watchdog")
            }
            Err(_) => tracing::error!("store check timed out; not pinging the watchdog"),
        }
    }
}
