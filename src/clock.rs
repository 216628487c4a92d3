//! Time as a value: the wall clock the daemon runs on, and a manual clock that tests move by
//! hand so that expiry is tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch.
///
/// Expiry times are stored as absolute Unix milliseconds, so the clock must be the wall clock
/// (a monotonic clock would not survive a restart).
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken machine; treat it as the epoch rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `ms`.
    pub fn set_ms(&self, ms: u64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Milliseconds left until `expires_at_ms`, where 0 means "never expires".
///
/// Returns `None` when the deadline has passed (an entry whose deadline is exactly now is
/// already expired), `Some(0)` for entries that never expire.
pub(crate) fn remaining_ms(expires_at_ms: u64, now_ms: u64) -> Option<u64> {
    if expires_at_ms == 0 {
        Some(0)
    } else if expires_at_ms > now_ms {
        Some(expires_at_ms - now_ms)
    } else {
        None
    }
}

/// The absolute deadline for a TTL given now, where a TTL of 0 means "never" (deadline 0).
///
/// Saturates instead of overflowing; callers bound TTLs well below that.
pub(crate) fn deadline_ms(ttl_ms: u64, now_ms: u64) -> u64 {
    if ttl_ms == 0 {
        0
    } else {
        now_ms.saturating_add(ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        let shared = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        shared.advance_ms(500);
        assert_eq!(clock.now_ms(), 1_500);
        clock.set_ms(10);
        assert_eq!(shared.now_ms(), 10);
    }

    #[test]
    fn remaining_ms_examples() {
        assert_eq!(remaining_ms(1_500, 1_000), Some(500));
        assert_eq!(remaining_ms(1_500, 1_500), None); // expired at its deadline
        assert_eq!(remaining_ms(0, 1_000), Some(0)); // never expires
    }

    #[test]
    fn deadline_ms_examples() {
        assert_eq!(deadline_ms(60_000, 1_000), 61_000);
        assert_eq!(deadline_ms(0, 1_000), 0); // no TTL: never expires
    }

    #[test]
    fn an_entry_is_expired_at_its_deadline() {
        assert_eq!(remaining_ms(1_000, 999), Some(1));
        assert_eq!(remaining_ms(1_000, 1_000), None);
        assert_eq!(remaining_ms(1_000, 5_000), None);
        assert_eq!(remaining_ms(0, u64::MAX), Some(0));
    }

    #[test]
    fn ttl_zero_means_never() {
        assert_eq!(deadline_ms(0, 1_000), 0);
        assert_eq!(deadline_ms(1, 1_000), 1_001);
        assert_eq!(deadline_ms(u64::MAX, 1_000), u64::MAX);
    }

    proptest! {
        #[test]
        fn a_deadline_leaves_exactly_its_ttl(ttl in 1u64..1u64 << 50, now in 0u64..1u64 << 50, elapsed in 0u64..1u64 << 51) {
            let deadline = deadline_ms(ttl, now);
            let left = remaining_ms(deadline, now + elapsed);
            if elapsed < ttl {
                prop_assert_eq!(left, Some(ttl - elapsed));
            } else {
                prop_assert_eq!(left, None);
            }
        }
    }
}
