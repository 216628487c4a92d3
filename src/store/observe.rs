//! What the store tells monitoring: the group-commit writer's histograms, rate-limit checks
//! per policy, and the cheap readings the metrics endpoint takes at scrape time (counters
//! already kept for Stats, byte totals the writer tracks anyway, the live-session count).
//!
//! Everything here is atomics or a short read lock, except [`Store::live_sessions`], which
//! runs one indexed COUNT on the scan connection on a blocking thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rusqlite::params;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::stats::CounterValues;

/// Upper bounds of the commit-latency buckets, in seconds: 50 µs to 1 s (a commit with
/// `synchronous = NORMAL` takes tens of microseconds; `FULL` waits for an fsync).
pub const COMMIT_SECONDS_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Policies counted one by one. The service only passes policies named in the config (or ''
/// for inline limits), so this is a backstop against a caller inventing names, not a limit
/// anyone should reach.
const MAX_TRACKED_POLICIES: usize = 1024;

/// What the writer thread records per transaction. One observation per batch, not per
/// command; the histograms' own short mutex is the only lock taken.
#[derive(Debug)]
pub struct WriterMetrics {
    /// Commands per committed transaction (1, 2, 4 … 1024: the writer's batch cap).
    pub batch_commands: Histogram,
    /// Seconds from `BEGIN IMMEDIATE` to the end of `COMMIT` of one batch.
    pub commit_seconds: Histogram,
    /// Batches whose writes all failed: the transaction could not start, or was rolled back.
    pub failed_batches: Counter,
    /// Bytes of keys and values of every cache row as last committed (expired rows not yet
    /// swept included): the quantity `cache.max_disk` bounds.
    cache_bytes: AtomicU64,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit_seconds: Histogram::new(COMMIT_SECONDS_BUCKETS),
            failed_batches: Counter::default(),
            cache_bytes: AtomicU64::new(0),
        }
    }
}

impl WriterMetrics {
    /// Records one committed batch.
    pub(crate) fn committed(&self, commands: usize, took: Duration, cache_bytes: u64) {
        self.batch_commands.observe(commands as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        self.set_cache_bytes(cache_bytes);
    }

    /// Records the writer's byte total (at start and after each commit).
    pub(crate) fn set_cache_bytes(&self, bytes: u64) {
        self.cache_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// Admitted and refused Checks of one policy.
#[derive(Debug, Default)]
struct CheckCounts {
    allowed: AtomicU64,
    denied: AtomicU64,
}

/// Rate-limit Checks (consuming decisions; Peek is not counted) per policy since start.
#[derive(Debug, Default)]
pub(crate) struct LimitChecks {
    by_policy: RwLock<HashMap<String, CheckCounts>>,
}

/// The Check counts of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChecks {
    /// The policy's name; '' for limits given inline in the request.
    pub policy: String,
    /// Checks that were admitted.
    pub allowed: u64,
    /// Checks that were refused.
    pub denied: u64,
}

impl LimitChecks {
    /// Counts one Check under `policy` (under the map's read lock once the policy is known).
    pub(crate) fn count(&self, policy: &str, allowed: bool) {
        let bump = |counts: &CheckCounts| {
            let slot = if allowed {
                &counts.allowed
            } else {
                &counts.denied
            };
            slot.fetch_add(1, Ordering::Relaxed);
        };
        // Poisoning cannot leave the map half-updated (one insert), so keep using it.
        if let Some(counts) = self
            .by_policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(policy)
        {
            bump(counts);
            return;
        }
        let mut map = self.by_policy.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED_POLICIES && !map.contains_key(policy) {
            return;
        }
        bump(map.entry(policy.to_owned()).or_default());
    }

    fn snapshot(&self) -> Vec<PolicyChecks> {
        let map = self.by_policy.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<PolicyChecks> = map
            .iter()
            .map(|(policy, c)| PolicyChecks {
                policy: policy.clone(),
                allowed: c.allowed.load(Ordering::Relaxed),
                denied: c.denied.load(Ordering::Relaxed),
            })
            .collect();
        all.sort_by(|a, b| a.policy.cmp(&b.policy));
        all
    }
}

/// The store's monitoring state, one per store.
#[derive(Debug)]
pub(crate) struct Monitor {
    /// Shared with the writer thread.
    pub(crate) writer: Arc<WriterMetrics>,
    /// Counted by [`Store::rate_limit`].
    pub(crate) checks: LimitChecks,
    /// The database file; its WAL is beside it.
    pub(crate) db_path: PathBuf,
}

impl Monitor {
    pub(crate) fn new(db_path: PathBuf) -> Self {
        Self {
            writer: Arc::new(WriterMetrics::default()),
            checks: LimitChecks::default(),
            db_path,
        }
    }
}

impl Store {
    /// Cache counters since start, added up over every namespace (no table scan).
    pub fn cache_counters(&self) -> CounterValues {
        self.inner.stats.snapshot(None)
    }

    /// Bytes of keys and values in the cache table as the writer last committed them,
    /// expired rows not yet swept included (no table scan).
    pub fn cache_disk_bytes(&self) -> u64 {
        self.inner
            .monitor
            .writer
            .cache_bytes
            .load(Ordering::Relaxed)
    }

    /// Bytes held by the memory LRU of sessions.
    pub fn session_memory_bytes(&self) -> usize {
        self.inner.sessions.bytes()
    }

    /// The writer's batch and commit histograms.
    pub fn writer_metrics(&self) -> &WriterMetrics {
        &self.inner.monitor.writer
    }

    /// Rate-limit Checks per policy since start, sorted by policy.
    pub fn rate_limit_checks(&self) -> Vec<PolicyChecks> {
        self.inner.monitor.checks.snapshot()
    }

    /// The database file (its WAL is the same path with `-wal` appended).
    pub fn database_path(&self) -> &Path {
        &self.inner.monitor.db_path
    }

    /// Sessions on disk whose idle and absolute expiries are both ahead. One COUNT over the
    /// expiry index, on the scan connection on a blocking thread. A session's last use
    /// reaches disk coalesced, up to a minute late, so a session in the last minute of its
    /// idle time may already count as gone.
    pub async fn live_sessions(&self) -> Result<u64> {
        // idle_expires_at is never later than absolute_expires_at, so it alone decides.
        let now = self.inner.clock.now_ms() as i64;
        let n: i64 = self
            .scan(move |conn| {
                conn.prepare_cached(crate::store::session::sql::COUNT_LIVE)
                    .and_then(|mut s| s.query_row(params![now], |r| r.get(0)))
                    .map_err(Error::storage("counting sessions"))
            })
            .await?;
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_count_per_policy_and_sort() {
        let c = LimitChecks::default();
        c.count("login", true);
        c.count("login", false);
        c.count("login", false);
        c.count("", true);
        assert_eq!(
            c.snapshot(),
            vec![
                PolicyChecks {
                    policy: String::new(),
                    allowed: 1,
                    denied: 0
                },
                PolicyChecks {
                    policy: "login".into(),
                    allowed: 1,
                    denied: 2
                },
            ]
        );
    }

    #[test]
    fn policies_past_the_bound_are_not_tracked() {
        let c = LimitChecks::default();
        for i in 0..MAX_TRACKED_POLICIES {
            c.count(&format!("p{i}"), true);
        }
        c.count("one-too-many", true);
        c.count("p0", false);
        let all = c.snapshot();
        assert_eq!(all.len(), MAX_TRACKED_POLICIES);
        assert!(all.iter().all(|p| p.policy != "one-too-many"));
        let p0 = all
            .iter()
            .find(|p| p.policy == "p0")
            .expect("p0 is tracked");
        assert_eq!((p0.allowed, p0.denied), (1, 1));
    }
}
