//! The writer's rate-limit commands: the write-behind of states from memory, and the sweep of
//! states that count for nothing any more. Memory is the truth for these keys, so neither
//! changes memory.

use rusqlite::params;

use super::{WriteOutcome, Writer};
use crate::error::{Error, Result};
use crate::store::ratelimits::LimitRow;

/// Unix ms as stored (SQLite integers are signed).
fn stored_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl Writer {
    pub(super) fn persist_limits(&mut self, rows: &[LimitRow]) -> Result<WriteOutcome> {
        let mut upsert = self
            .conn
            .prepare_cached(
                "INSERT INTO rate_limits (policy, key, state, expires_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (policy, key) DO UPDATE \
                 SET state = excluded.state, expires_at = excluded.expires_at",
            )
            .map_err(Error::storage("preparing rate-limit writes"))?;
        for row in rows {
            if let Some((state, expires_at)) = &row.state {
                upsert
                    .execute(params![row.policy, row.key, state, stored_ms(*expires_at)])
                    .map_err(Error::storage("writing rate-limit state"))?;
            }
        }
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM rate_limits WHERE policy = ?1 AND key = ?2")
            .map_err(Error::storage("preparing rate-limit deletes"))?;
        for row in rows.iter().filter(|r| r.state.is_none()) {
            delete
                .execute(params![row.policy, row.key])
                .map_err(Error::storage("deleting rate-limit state"))?;
        }
        Ok(WriteOutcome::Count(rows.len() as u64))
    }

    /// Deletes up to `limit` states that expired by `now`.
    pub(super) fn sweep_limits(&mut self, now: u64, limit: usize) -> Result<u64> {
        let n = self
            .conn
            .prepare_cached(
                "DELETE FROM rate_limits WHERE id IN ( \
                   SELECT id FROM rate_limits WHERE expires_at <= ?1 LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![stored_ms(now), limit as i64]))
            .map_err(Error::storage("sweeping rate-limit state"))?;
        Ok(n as u64)
    }
}
