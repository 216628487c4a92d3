//! The writer's session commands: create, update (an atomic merge), rotate, revoke, the
//! background last-seen writes and the sweep of expired sessions. Each runs inside the
//! writer's batch transaction and holds its typed answer in its reply; memory changes are
//! queued as effects and applied after COMMIT.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::revoke::{REVOKE_CHUNK, Revocation};
use super::sql;
use super::{
    CachedSession, DataLimits, NewSession, SWEEP_GRACE_MS, SessionBounds, SessionRecord,
    SessionTarget, TokenHash, data_bytes, disk_charge, encode_data, idle_expiry, latest_use,
    record_from_row,
};
use crate::error::{Error, Result};
use crate::store::writer::{Effects, MemEffect, Pending, Reply, Writer};

/// A command on the sessions table, with its reply.
#[derive(Debug)]
pub(crate) enum SessionOp {
    /// Create a session (revoking the user's oldest past the per-user bound); answers its
    /// record.
    Create {
        new: NewSession,
        bounds: SessionBounds,
        reply: Reply<SessionRecord>,
    },
    /// Merge changes into a live session's data; `None` when it was not live.
    Update {
        token_hash: TokenHash,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        limits: DataLimits,
        bounds: SessionBounds,
        reply: Reply<Option<SessionRecord>>,
    },
    /// Give a live session a new token hash; `None` when it was not live.
    Rotate {
        token_hash: TokenHash,
        new_hash: TokenHash,
        reply: Reply<Option<SessionRecord>>,
    },
    /// End one session; answers whether it was live.
    Revoke {
        target: SessionTarget,
        reply: Reply<bool>,
    },
    /// One chunk of ending a user's sessions, but one: deletes up to [`REVOKE_CHUNK`] of
    /// those `mark` covers (`None`: the first chunk, which covers the sessions created so far,
    /// and marks them revoked if it cannot delete them all).
    RevokeUser {
        user_id: String,
        except: Option<String>,
        mark: Option<Arc<Revocation>>,
        reply: Reply<RevokeChunk>,
    },
    /// Record sessions' last uses seen by reads (coalesced, in the background, and at close);
    /// answers how many.
    RecordUses {
        uses: Vec<(TokenHash, u64)>,
        reply: Reply<u64>,
    },
}

/// What one chunk of a RevokeUserSessions did.
#[derive(Debug)]
pub(crate) struct RevokeChunk {
    /// Live sessions it deleted.
    pub(crate) live: u64,
    /// The revocation to go on with, or `None` when every covered session is deleted.
    pub(crate) more: Option<Arc<Revocation>>,
}

impl SessionOp {
    /// Bytes of values this command writes.
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            SessionOp::Create { new, .. } => data_bytes(&new.data),
            SessionOp::Update { set, .. } => data_bytes(set),
            _ => 0,
        }
    }

    /// Whether the command may write several rows.
    pub(crate) fn needs_savepoint(&self) -> bool {
        match self {
            // The revocations that make room for the user are undone with a creation refused
            // for the table's bound.
            SessionOp::Create { .. } => true,
            SessionOp::RecordUses { uses, .. } => uses.len() > 1,
            // One DELETE … RETURNING of many rows: a failure while they are collected must
            // undo the deletes with them.
            SessionOp::RevokeUser { .. } => true,
            _ => false,
        }
    }

    /// The command's reply.
    pub(crate) fn pending(&mut self) -> &mut dyn Pending {
        match self {
            SessionOp::Create { reply, .. } => reply,
            SessionOp::Update { reply, .. } | SessionOp::Rotate { reply, .. } => reply,
            SessionOp::Revoke { reply, .. } => reply,
            SessionOp::RevokeUser { reply, .. } => reply,
            SessionOp::RecordUses { reply, .. } => reply,
        }
    }
}

/// What an UpdateSession changes in a session's data, and the bounds it must stay within.
struct DataChange<'a> {
    set: &'a BTreeMap<String, String>,
    remove: &'a [String],
    limits: DataLimits,
    bounds: SessionBounds,
}

impl Writer {
    pub(in crate::store) fn apply_session(
        &mut self,
        op: &mut SessionOp,
        now: u64,
        fx: &mut Effects,
    ) -> Result<()> {
        match op {
            SessionOp::Create { new, bounds, reply } => {
                let record = self.create_session(new, *bounds, now, fx)?;
                reply.hold(record);
            }
            SessionOp::Update {
                token_hash,
                set,
                remove,
                limits,
                bounds,
                reply,
            } => {
                let change = DataChange {
                    set,
                    remove,
                    limits: *limits,
                    bounds: *bounds,
                };
                let record = self.update_session(token_hash, change, now, fx)?;
                reply.hold(record);
            }
            SessionOp::Rotate {
                token_hash,
                new_hash,
                reply,
            } => {
                let record = self.rotate_session(token_hash, new_hash, now, fx)?;
                reply.hold(record);
            }
            SessionOp::Revoke { target, reply } => {
                let live = self.revoke_session(target, now, fx)?;
                reply.hold(live);
            }
            SessionOp::RevokeUser {
                user_id,
                except,
                mark,
                reply,
            } => {
                let chunk = self.revoke_user_chunk(user_id, except, mark.take(), now, fx)?;
                reply.hold(chunk);
            }
            SessionOp::RecordUses { uses, reply } => {
                for (hash, last_seen_ms) in uses.iter() {
                    self.record_session_use(hash, *last_seen_ms)?;
                }
                reply.hold(uses.len() as u64);
            }
        }
        Ok(())
    }

    /// Creates a session: first revokes the user's oldest sessions past
    /// `bounds.max_per_user` (expired ones first), then refuses if the table would pass
    /// `bounds.max_disk_bytes` (the caller's savepoint then undoes the revocations).
    fn create_session(
        &mut self,
        new: &NewSession,
        bounds: SessionBounds,
        now: u64,
        fx: &mut Effects,
    ) -> Result<SessionRecord> {
        // Created after any revocation of the user in progress, which must not cover it.
        let now = self.revocations.created_after(&new.user_id, now);
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
        self.make_room_for_user(&record.user_id, bounds.max_per_user, now, fx)?;
        self.check_session_room(disk_charge(&record), bounds.max_disk_bytes)?;
        self.conn
            .prepare_cached(sql::INSERT)
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
        Ok(record)
    }

    /// The live session with this token hash, with its latest use as memory knows it, and
    /// its row id.
    fn live_session(&self, hash: &TokenHash, now: u64) -> Result<Option<(i64, SessionRecord)>> {
        let row = self
            .conn
            .prepare_cached(sql::SESSION)
            .and_then(|mut s| {
                s.query_row([&hash[..]], |r| {
                    Ok((r.get(0)?, record_from_row(r, sql::RECORD_AT)?))
                })
                .optional()
            })
            .map_err(Error::storage("reading a session"))?;
        Ok(row
            .map(|(id, mut record)| {
                record.last_seen_at_ms = latest_use(&self.sessions, hash, record.last_seen_at_ms);
                (id, record)
            })
            .filter(|(_, record)| record.live(now) && !self.revocations.covers(record)))
    }

    /// Deletes up to [`REVOKE_CHUNK`] of the sessions `mark` covers (the first chunk, with no
    /// mark: user `user_id`'s sessions created by `now`, but `except`). When sessions are
    /// left, the answer carries the mark, shown to readers from this chunk's commit on (see
    /// `revoke.rs`); the chunk that deletes the last ones removes it.
    fn revoke_user_chunk(
        &mut self,
        user_id: &str,
        except: &Option<String>,
        mark: Option<Arc<Revocation>>,
        now: u64,
        fx: &mut Effects,
    ) -> Result<RevokeChunk> {
        let first = mark.is_none();
        let mark = mark.unwrap_or_else(|| {
            Arc::new(Revocation {
                user_id: user_id.to_owned(),
                except: except.clone(),
                created_by: now,
            })
        });
        let before = fx.memory.len();
        let live = self.delete_sessions(
            sql::DELETE_USER_CHUNK,
            params![
                mark.user_id.as_str(),
                mark.except.as_deref(),
                i64::try_from(mark.created_by).unwrap_or(i64::MAX),
                REVOKE_CHUNK as i64
            ],
            now,
            fx,
        )?;
        let complete = fx.memory.len() - before < REVOKE_CHUNK;
        Ok(match (first, complete) {
            // All in one transaction: nothing to mark.
            (true, true) => RevokeChunk { live, more: None },
            (true, false) => {
                fx.memory.push(MemEffect::MarkRevoked(mark.clone()));
                RevokeChunk {
                    live,
                    more: Some(mark),
                }
            }
            (false, true) => {
                fx.memory.push(MemEffect::UnmarkRevoked(mark));
                RevokeChunk { live, more: None }
            }
            (false, false) => RevokeChunk {
                live,
                more: Some(mark),
            },
        })
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
            .prepare_cached(sql::REWRITE)
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

    fn update_session(
        &mut self,
        hash: &TokenHash,
        change: DataChange<'_>,
        now: u64,
        fx: &mut Effects,
    ) -> Result<Option<SessionRecord>> {
        let Some((id, mut record)) = self.live_session(hash, now)? else {
            return Ok(None);
        };
        let before = disk_charge(&record);
        let data = Arc::make_mut(&mut record.data);
        for key in change.remove {
            data.remove(key);
        }
        data.extend(change.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        change.limits.check("set", data)?;
        // Checked before the row is written: a session that grows must fit the table's bound
        // as a new one must, or sessions created small and grown later would pass it.
        let after = disk_charge(&record);
        if after > before {
            self.check_session_room(after - before, change.bounds.max_disk_bytes)?;
        }
        let record = self.rewrite_session(id, hash, record, now, fx)?;
        Ok(Some(record))
    }

    fn rotate_session(
        &mut self,
        hash: &TokenHash,
        new_hash: &TokenHash,
        now: u64,
        fx: &mut Effects,
    ) -> Result<Option<SessionRecord>> {
        let Some((id, record)) = self.live_session(hash, now)? else {
            return Ok(None);
        };
        fx.memory.push(MemEffect::RemoveSession(*hash));
        let record = self.rewrite_session(id, new_hash, record, now, fx)?;
        Ok(Some(record))
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

    fn revoke_session(
        &mut self,
        target: &SessionTarget,
        now: u64,
        fx: &mut Effects,
    ) -> Result<bool> {
        let live = match target {
            SessionTarget::Token(hash) => {
                self.delete_sessions(sql::DELETE_BY_TOKEN, params![&hash[..]], now, fx)?
            }
            SessionTarget::Id(id) => {
                self.delete_sessions(sql::DELETE_BY_ID, params![id], now, fx)?
            }
        };
        Ok(live > 0)
    }

    /// Revokes `user_id`'s sessions until one more fits under `max_per_user`: those the
    /// sweeper would delete first, then the oldest by creation (the device logged in longest
    /// ago is the one logged out).
    fn make_room_for_user(
        &mut self,
        user_id: &str,
        max_per_user: usize,
        now: u64,
        fx: &mut Effects,
    ) -> Result<()> {
        let count = |w: &Self| -> Result<usize> {
            w.conn
                .prepare_cached(sql::COUNT_USER)
                .and_then(|mut s| s.query_row([user_id], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as usize)
                .map_err(Error::storage("counting a user's sessions"))
        };
        let mut held = count(self)?;
        if held < max_per_user {
            return Ok(());
        }
        self.delete_sessions(
            sql::DELETE_USER_EXPIRED,
            params![
                user_id,
                now as i64,
                now.saturating_sub(SWEEP_GRACE_MS) as i64
            ],
            now,
            fx,
        )?;
        held = count(self)?;
        if held >= max_per_user {
            let over = held + 1 - max_per_user.max(1);
            self.delete_sessions(
                sql::DELETE_USER_OLDEST,
                params![user_id, over as i64],
                now,
                fx,
            )?;
        }
        Ok(())
    }

    /// Fails with `RESOURCE_EXHAUSTED` when `charge` more bytes would take the sessions
    /// table past `max_disk_bytes`.
    fn check_session_room(&self, charge: u64, max_disk_bytes: u64) -> Result<()> {
        let held: i64 = self
            .conn
            .prepare_cached(sql::TABLE_BYTES)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(Error::storage("reading the sessions table's size"))?;
        if (held.max(0) as u64).saturating_add(charge) > max_disk_bytes {
            return Err(Error::ResourceExhausted(format!(
                "the sessions table is full (session.max_disk is {max_disk_bytes} bytes); \
                 sessions leave it only by expiry or revocation"
            )));
        }
        Ok(())
    }

    /// Records a use seen by a read (the background, coalesced write of GetSession). Never
    /// moves last-seen backwards, and does nothing to a session revoked meanwhile.
    fn record_session_use(&mut self, hash: &TokenHash, last_seen: u64) -> Result<()> {
        self.conn
            .prepare_cached(sql::RECORD_USE)
            .and_then(|mut s| s.execute(params![&hash[..], last_seen as i64]))
            .map_err(Error::storage("recording a session's last use"))?;
        Ok(())
    }

    /// Deletes up to `limit` expired sessions: past their absolute expiry, or past their idle
    /// expiry on disk by more than [`SWEEP_GRACE_MS`] (memory may know a later use).
    pub(in crate::store) fn sweep_sessions(
        &mut self,
        now: u64,
        limit: usize,
        fx: &mut Effects,
    ) -> Result<u64> {
        let hashes = self
            .conn
            .prepare_cached(sql::SWEEP)
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
