//! The writer's rate-limit commands: the write-behind of states from memory, and the sweep of
//! states that count for nothing any more. Memory is the truth for these keys, so neither
//! changes memory.

use rusqlite::params;

use super::{LimitRow, sql};
use crate::error::{Error, Result};
use crate::store::writer::{Pending, Reply, Writer};

/// A command on the rate-limit table, with its reply.
#[derive(Debug)]
pub(crate) enum RateLimitOp {
    /// Write rate-limit states behind (upsert, or delete where the state is `None`); answers
    /// how many rows.
    Persist {
        rows: Vec<LimitRow>,
        reply: Reply<u64>,
    },
}

impl RateLimitOp {
    /// Whether the command may write several rows.
    pub(crate) fn needs_savepoint(&self) -> bool {
        match self {
            RateLimitOp::Persist { rows, .. } => rows.len() > 1,
        }
    }

    /// The command's reply.
    pub(crate) fn pending(&mut self) -> &mut dyn Pending {
        match self {
            RateLimitOp::Persist { reply, .. } => reply,
        }
    }
}

/// Unix ms as stored (SQLite integers are signed).
fn stored_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl Writer {
    pub(in crate::store) fn apply_rate_limit(&mut self, op: &mut RateLimitOp) -> Result<()> {
        match op {
            RateLimitOp::Persist { rows, reply } => {
                let written = self.persist_limits(rows)?;
                reply.hold(written);
            }
        }
        Ok(())
    }

    fn persist_limits(&mut self, rows: &[LimitRow]) -> Result<u64> {
        let mut upsert = self
            .conn
            .prepare_cached(sql::UPSERT)
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
            .prepare_cached(sql::DELETE)
            .map_err(Error::storage("preparing rate-limit deletes"))?;
        for row in rows.iter().filter(|r| r.state.is_none()) {
            delete
                .execute(params![row.policy, row.key])
                .map_err(Error::storage("deleting rate-limit state"))?;
        }
        Ok(rows.len() as u64)
    }

    /// Deletes up to `limit` states that expired by `now`.
    pub(in crate::store) fn sweep_limits(&mut self, now: u64, limit: usize) -> Result<u64> {
        let n = self
            .conn
            .prepare_cached(sql::SWEEP)
            .and_then(|mut s| s.execute(params![stored_ms(now), limit as i64]))
            .map_err(Error::storage("sweeping rate-limit state"))?;
        Ok(n as u64)
    }
}
