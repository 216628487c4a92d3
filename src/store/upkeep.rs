//! Upkeep: once per interval, the writer records the reads memory collected (for eviction
//! order, once eviction is in sight), deletes a bounded batch of expired rows of every table,
//! and evicts if the cache table is over its disk bound. A backlog drains in bounded
//! transactions, one after another, so no single commit stalls the writes queued behind it.

use crate::store::queue::write::RELEASE_BATCH;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::store::Store;
use crate::store::writer::{Effects, Op, WriteQueue, Writer};

/// What one upkeep pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Upkept {
    /// Expired rows deleted (cache entries, sessions and rate-limit states).
    pub(crate) expired: u64,
    /// Whether a full batch of some table was deleted, so that more may wait.
    pub(crate) more: bool,
}

impl Writer {
    /// One upkeep pass, inside the batch's transaction (and its own savepoint).
    pub(in crate::store) fn upkeep(&mut self, now: u64, fx: &mut Effects) -> Result<Upkept> {
        // Read times only matter once eviction is in sight; until then they stay in memory
        // (bounded), so a read-heavy workload does not turn into a stream of disk writes.
        if self.eviction_in_sight() {
            self.record_accesses()?;
        }
        let batch = self.settings.sweep_batch;
        let expired = self.sweep_expired(now, batch, fx)?;
        let sessions = self.sweep_sessions(now, batch, fx)?;
        let limits = self.sweep_limits(now, batch)?;
        // Not rows deleted, but counted as work: a backlog of them is worked through at once.
        let leases = self.release_expired_leases(now)?;
        Ok(Upkept {
            expired: expired + sessions + limits,
            more: [expired, sessions, limits]
                .iter()
                .any(|&n| n as usize >= batch)
                || leases >= RELEASE_BATCH as u64,
        })
    }
}

impl Store {
    /// Runs one upkeep pass now (what the maintenance task does every interval); returns how
    /// many expired rows were deleted.
    pub async fn maintain(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let done = upkeep_pass(&self.inner.writer).await?;
            total += done.expired;
            if !done.more {
                return Ok(total);
            }
        }
    }
}

/// Asks the writer for an upkeep pass every `interval` until cancelled; repeats at once while
/// full batches of expired rows are found, so a backlog drains in bounded transactions.
pub(crate) async fn run(writer: WriteQueue, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        while !stop.is_cancelled() {
            match upkeep_pass(&writer).await {
                Ok(done) => {
                    if done.expired > 0 {
                        tracing::debug!(expired = done.expired, "swept expired entries");
                    }
                    if !done.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "maintenance pass failed");
                    break;
                }
            }
        }
    }
}

/// One upkeep pass by the writer.
async fn upkeep_pass(writer: &WriteQueue) -> Result<Upkept> {
    writer.submit(Op::Upkeep).await
}
