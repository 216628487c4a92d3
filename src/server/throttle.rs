//! [`Throttled`]: a warning logged at most once per [`WARN_EVERY`] for one kind of event,
//! with the count since the last line, so that a flood of refusals (connections over the
//! bound, calls without a good token) does not become a flood of log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one warning per this interval for each kind of refusal.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(5);

/// Counts one kind of event and says when a warning about it is due.
#[derive(Debug)]
pub(crate) struct Throttled {
    what: &'static str,
    started: Instant,
    /// Milliseconds since `started` of the last warning, plus one (0 = never warned).
    last_ms: AtomicU64,
    /// Events since the last warning.
    refused: AtomicU64,
}

impl Throttled {
    /// A counter whose [`Throttled::refused`] warnings say `what`.
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts one refusal against `limit`, and logs `what` with the count if a warning is due.
    pub(crate) fn refused(&self, limit: usize) {
        if let Some(refused) = self.tick() {
            tracing::warn!(limit, refused, "{}", self.what);
        }
    }

    /// [`Throttled::refused`], naming the peer refused last.
    pub(crate) fn refused_peer(&self, limit: usize, peer: std::net::IpAddr) {
        if let Some(refused) = self.tick() {
            tracing::warn!(limit, refused, %peer, "{}", self.what);
        }
    }

    /// Counts one event; when a warning is due (the first event, or [`WARN_EVERY`] after the
    /// last warning), returns how many events there were since the last one, this one
    /// included, for the caller to log with its own fields.
    pub(crate) fn tick(&self) -> Option<u64> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.refused.swap(0, Ordering::Relaxed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_due_then_one_line_per_interval_with_the_count() {
        let t = Throttled {
            // Started a minute ago, so that "the last warning" can be set that far back.
            started: Instant::now() - Duration::from_secs(60),
            ..Throttled::new("x")
        };
        assert_eq!(t.tick(), Some(1));
        assert_eq!(t.tick(), None);
        assert_eq!(t.tick(), None);
        t.last_ms.store(1, Ordering::Relaxed);
        assert_eq!(t.tick(), Some(3), "the two held back and this one");
        assert_eq!(t.tick(), None);
    }
}
