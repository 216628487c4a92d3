//! Every statement on the `sessions` table (schema in `schema.rs`), in one place.
//!
//! The one row lookup, by token hash, is [`SESSION`]: readers and the writer both use it.

/// Columns read into a `SessionRecord` by `record_from_row`, after any leading columns.
macro_rules! record_columns {
    () => {
        "session_id, user_id, data, device_info, ip, created_at, last_seen_at, idle_ttl, \
         absolute_expires_at"
    };
}

/// The session with token hash `?1`: its row id (column 0), then its record.
pub(crate) const SESSION: &str = concat!(
    "SELECT id, ",
    record_columns!(),
    " FROM sessions WHERE token_hash = ?1"
);

/// Where the record starts in a row of [`SESSION`].
pub(crate) const RECORD_AT: usize = 1;

/// A user's (`?1`) sessions not past their absolute expiry (`?2`) nor past their idle expiry
/// on disk by more than the sweeper's grace (`?3`), newest first (ties by session id,
/// descending) and after the cursor (creation time `?4`, session id `?5`: `?4` = i64::MAX for
/// the first page): token hash, then record. The `created_at <= ?4` term lets the
/// `sessions_by_user` index start at the cursor.
pub(crate) const LIST_USER: &str = concat!(
    "SELECT token_hash, ",
    record_columns!(),
    " FROM sessions \
     WHERE user_id = ?1 AND absolute_expires_at > ?2 AND idle_expires_at > ?3 \
     AND created_at <= ?4 AND (created_at < ?4 OR session_id < ?5) \
     ORDER BY created_at DESC, session_id DESC"
);

/// Where the token hash is in a row of [`LIST_USER`].
pub(crate) const LIST_HASH_AT: usize = 0;

/// Where the record starts in a row of [`LIST_USER`].
pub(crate) const LIST_RECORD_AT: usize = 1;

/// Sessions whose idle expiry on disk is after `?1`.
pub(crate) const COUNT_LIVE: &str = "SELECT COUNT(*) FROM sessions WHERE idle_expires_at > ?1";

/// Creates a session (`?7` is both its creation and its last use).
pub(crate) const INSERT: &str = "INSERT INTO sessions (token_hash, session_id, user_id, data, \
     device_info, ip, created_at, last_seen_at, idle_ttl, idle_expires_at, absolute_expires_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10)";

/// Rewrites row `?1` after a use: token hash, data, last use and idle expiry.
pub(crate) const REWRITE: &str = "UPDATE sessions SET token_hash = ?2, data = ?3, \
     last_seen_at = ?4, idle_expires_at = ?5 WHERE id = ?1";

/// What every delete of sessions returns, so that memory and the live count follow.
macro_rules! deleted_columns {
    () => {
        " RETURNING token_hash, last_seen_at, idle_ttl, absolute_expires_at"
    };
}

/// Deletes the session with token hash `?1`.
pub(crate) const DELETE_BY_TOKEN: &str = concat!(
    "DELETE FROM sessions WHERE token_hash = ?1",
    deleted_columns!()
);

/// Deletes the session with public id `?1`.
pub(crate) const DELETE_BY_ID: &str = concat!(
    "DELETE FROM sessions WHERE session_id = ?1",
    deleted_columns!()
);

/// Deletes up to `?4` of user `?1`'s sessions created by `?3`, but the one with id `?2` (if
/// any): one chunk of a RevokeUserSessions.
pub(crate) const DELETE_USER_CHUNK: &str = concat!(
    "DELETE FROM sessions WHERE id IN ( \
       SELECT id FROM sessions \
       WHERE user_id = ?1 AND session_id IS NOT ?2 AND created_at <= ?3 LIMIT ?4)",
    deleted_columns!()
);

/// Records a use at `?2` seen by a read: never moves last-seen back.
pub(crate) const RECORD_USE: &str = "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?2), \
     idle_expires_at = MIN(MAX(last_seen_at, ?2) + idle_ttl, absolute_expires_at) \
     WHERE token_hash = ?1";

/// Deletes up to `?3` sessions past their absolute expiry, or past their idle expiry by more
/// than the grace (idle expiry before `?2`), at `?1`.
pub(crate) const SWEEP: &str = "DELETE FROM sessions WHERE id IN ( \
       SELECT id FROM sessions WHERE idle_expires_at <= ?1 \
       AND (absolute_expires_at <= ?1 OR idle_expires_at <= ?2) LIMIT ?3) \
     RETURNING token_hash";

/// How many sessions user `?1` has on disk, expired ones not yet swept included.
pub(crate) const COUNT_USER: &str = "SELECT COUNT(*) FROM sessions WHERE user_id = ?1";

/// Deletes user `?1`'s sessions that the sweeper would delete at `?2` with grace `?3` (see
/// [`SWEEP`]), before any live one is revoked to make room.
pub(crate) const DELETE_USER_EXPIRED: &str = concat!(
    "DELETE FROM sessions WHERE user_id = ?1 AND idle_expires_at <= ?2 \
     AND (absolute_expires_at <= ?2 OR idle_expires_at <= ?3)",
    deleted_columns!()
);

/// Deletes user `?1`'s `?2` oldest sessions (by creation), from the `(user_id, created_at)`
/// index.
pub(crate) const DELETE_USER_OLDEST: &str = concat!(
    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE user_id = ?1 \
     ORDER BY created_at, id LIMIT ?2)",
    deleted_columns!()
);

/// The sum of the sessions' charges against `session.max_disk`, kept by triggers.
pub(crate) const TABLE_BYTES: &str = "SELECT value FROM meta WHERE name = 'session_bytes'";
