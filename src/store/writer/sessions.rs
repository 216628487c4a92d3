//! The writer's session commands: create, update (an atomic merge), rotate, revoke, the
//! background last-seen writes and the sweep of expired sessions. Each runs inside the
//! writer's batch transaction; memory changes are queued as effects and applied after COMMIT.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::{Effects, MemEffect, WriteOutcome, Writer};
use crate::error::{Error, Result};
use crate::store::sessions::{
    CachedSession, DataLimits, NewSession, RECORD_COLUMNS, SWEEP_GRACE_MS, SessionRecord,
    SessionTarget, TokenHash, encode_data, idle_expiry, latest_use, record_from_row,
};

impl Writer {
    pub(super) fn create_session(
        &mut self,
        new: &NewSession,
        now: u64,
        fx: &mut Effects,
    ) -> Result<WriteOutcome> {
        let record = SessionRecord {
            session_id: new.session_id.clone(),
            user_id: new.user_id.clone(),
            data: Arc::new(new.data.clone()),
            device_info: new.device_info.clone(),
            ip: new.ip.clone(),
            created_at_ms: now,
            last_seen_at_ms: now,
            idle_ttl_ms: new.idle_ttl_ms,
            absolute_expires_at_ms: now.saturating_add(new.absolute_ttl_ms),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (token_hash, session_id, user_id, data, device_info, ip, \
                 created_at, last_seen_at, idle_ttl, idle_expires_at, absolute_expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &new.token_hash[..],
                    record.session_id,
                    record.user_id,
                    encode_data(&record.data),
                    record.device_info,
                    record.ip,
                    now as i64,
                    record.idle_ttl_ms as i64,
                    record.idle_expires_at_ms() as i64,
                    record.absolute_expires_at_ms as i64,
                ])
            })
            .map_err(Error::storage("creating a session"))?;
        fx.memory.push(MemEffect::PutSession(
            new.token_hash,
            Arc::new(CachedSession::new(record.clone())),
        ));
        Ok(WriteOutcome::Session(Some(record)))
    }

    /// The live session with this token hash, with its latest use as memory knows it, and
    /// its row id.
    fn live_session(&self, hash: &TokenHash, now: u64) -> Result<Option<(i64, SessionRecord)>> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "SELECT id, {RECORD_COLUMNS} FROM sessions WHERE token_hash = ?1"
            ))
            .and_then(|mut s| {
                s.query_row([&hash[..]], |r| Ok((r.get(0)?, record_from_row(r, 1)?)))
                    .optional()
            })
            .map_err(Error::storage("reading a session"))?;
        Ok(row
            .map(|(id, mut record)| {
                record.last_seen_at_ms = latest_use(&self.sessions, hash, record.last_seen_at_ms);
                (id, record)
            })
            .filter(|(_, record)| record.live(now)))
    }

    /// Rewrites a session's row from `record` (a use at `now`), under `hash`.
    fn rewrite_session(
        &mut self,
        id: i64,
        hash: &TokenHash,
        mut record: SessionRecord,
        now: u64,
        fx: &mut Effects,
    ) -> Result<SessionRecord> {
        record.last_seen_at_ms = record.last_seen_at_ms.max(now);
        self.conn
            .prepare_cached(
                "UPDATE sessions SET token_hash = ?2, data = ?3, last_seen_at = ?4, \
                 idle_expires_at = ?5 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    &hash[..],
                    encode_data(&record.data),
                    record.last_seen_at_ms as i64,
                    record.idle_expires_at_ms() as i64,
                ])
            })
            .map_err(Error::storage("writing a session"))?;
        fx.memory.push(MemEffect::PutSession(
            *hash,
            Arc::new(CachedSession::new(record.clone())),
        ));
        Ok(record)
    }

    pub(super) fn update_session(
        &mut self,
        hash: &TokenHash,
        set: &BTreeMap<String, String>,
        remove: &[String],
        limits: DataLimits,
        now: u64,
        fx: &mut Effects,
    ) -> Result<WriteOutcome> {
        let Some((id, mut record)) = self.live_session(hash, now)? else {
            return Ok(WriteOutcome::Session(None));
        };
        let data = Arc::make_mut(&mut record.data);
        for key in remove {
            data.remove(key);
        }
        data.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        limits.check("set", data)?;
        let record = self.rewrite_session(id, hash, record, now, fx)?;
        Ok(WriteOutcome::Session(Some(record)))
    }

    pub(super) fn rotate_session(
        &mut self,
        hash: &TokenHash,
        new_hash: &TokenHash,
        now: u64,
        fx: &mut Effects,
    ) -> Result<WriteOutcome> {
        let Some((id, record)) = self.live_session(hash, now)? else {
            return Ok(WriteOutcome::Session(None));
        };
        fx.memory.push(MemEffect::RemoveSession(*hash));
        let record = self.rewrite_session(id, new_hash, record, now, fx)?;
        Ok(WriteOutcome::Session(Some(record)))
    }

    /// Runs a `DELETE … RETURNING token_hash, last_seen_at, idle_ttl, absolute_expires_at`
    /// on sessions; drops them from memory and returns how many were live.
    fn delete_sessions(
        &mut self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        now: u64,
        fx: &mut Effects,
    ) -> Result<u64> {
        let rows = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_map(params, |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, i64>(3)? as u64,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(Error::storage("revoking sessions"))?;
        let mut live = 0;
        for (hash, last_seen, idle_ttl, absolute) in rows {
            let Ok(hash) = TokenHash::try_from(hash) else {
                continue;
            };
            let last_seen = latest_use(&self.sessions, &hash, last_seen);
            if now < idle_expiry(last_seen, idle_ttl, absolute) {
                live += 1;
            }
            fx.memory.push(MemEffect::RemoveSession(hash));
        }
        Ok(live)
    }

    pub(super) fn revoke_session(
        &mut self,
        target: &SessionTarget,
        now: u64,
        fx: &mut Effects,
    ) -> Result<WriteOutcome> {
        let live = match target {
            SessionTarget::Token(hash) => self.delete_sessions(
                "DELETE FROM sessions WHERE token_hash = ?1 \
                 RETURNING token_hash, last_seen_at, idle_ttl, absolute_expires_at",
                params![&hash[..]],
                now,
                fx,
            )?,
            SessionTarget::Id(id) => self.delete_sessions(
                "DELETE FROM sessions WHERE session_id = ?1 \
                 RETURNING token_hash, last_seen_at, idle_ttl, absolute_expires_at",
                params![id],
                now,
                fx,
            )?,
        };
        Ok(WriteOutcome::Found(live > 0))
    }

    pub(super) fn revoke_user_sessions(
        &mut self,
        user_id: &str,
        except: Option<&str>,
        now: u64,
        fx: &mut Effects,
    ) -> Result<WriteOutcome> {
        let live = self.delete_sessions(
            "DELETE FROM sessions WHERE user_id = ?1 AND session_id IS NOT ?2 \
             RETURNING token_hash, last_seen_at, idle_ttl, absolute_expires_at",
            params![user_id, except],
            now,
            fx,
        )?;
        Ok(WriteOutcome::Count(live))
    }

    /// Records a use seen by a read (the background, coalesced write of GetSession). Never
    /// moves last-seen backwards, and does nothing to a session revoked meanwhile.
    pub(super) fn touch_session(&mut self, hash: &TokenHash, last_seen: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?2), \
                 idle_expires_at = MIN(MAX(last_seen_at, ?2) + idle_ttl, absolute_expires_at) \
                 WHERE token_hash = ?1",
            )
            .and_then(|mut s| s.execute(params![&hash[..], last_seen as i64]))
            .map_err(Error::storage("recording a session's last use"))?;
        Ok(())
    }

    /// Deletes up to `limit` expired sessions: past their absolute expiry, or past their idle
    /// expiry on disk by more than [`SWEEP_GRACE_MS`] (memory may know a later use).
    pub(super) fn sweep_sessions(
        &mut self,
        now: u64,
        limit: usize,
        fx: &mut Effects,
    ) -> Result<u64> {
        let hashes = self
            .conn
            .prepare_cached(
                "DELETE FROM sessions WHERE id IN ( \
                   SELECT id FROM sessions WHERE idle_expires_at <= ?1 \
                   AND (absolute_expires_at <= ?1 OR idle_expires_at <= ?2) LIMIT ?3) \
                 RETURNING token_hash",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![
                        now as i64,
                        now.saturating_sub(SWEEP_GRACE_MS) as i64,
                        limit as i64
                    ],
                    |r| r.get::<_, Vec<u8>>(0),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(Error::storage("sweeping expired sessions"))?;
        let n = hashes.len() as u64;
        for hash in hashes {
            if let Ok(hash) = TokenHash::try_from(hash) {
                fx.memory.push(MemEffect::RemoveSession(hash));
            }
        }
        Ok(n)
    }
}
