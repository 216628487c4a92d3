//! Every statement on the `rate_limits` table (schema in `schema.rs`), in one place.
//!
//! The one row lookup, by policy and key, is [`STATE`].

/// The state text and expiry of policy `?1`'s key `?2`.
pub(crate) const STATE: &str =
    "SELECT state, expires_at FROM rate_limits WHERE policy = ?1 AND key = ?2";

/// Writes a key's state (`?3`) and its expiry (`?4`).
pub(crate) const UPSERT: &str = "INSERT INTO rate_limits (policy, key, state, expires_at) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (policy, key) DO UPDATE \
     SET state = excluded.state, expires_at = excluded.expires_at";

/// Deletes a key's state.
pub(crate) const DELETE: &str = "DELETE FROM rate_limits WHERE policy = ?1 AND key = ?2";

/// Deletes up to `?2` states that expired by `?1`.
pub(crate) const SWEEP: &str = "DELETE FROM rate_limits WHERE id IN ( \
       SELECT id FROM rate_limits WHERE expires_at <= ?1 LIMIT ?2)";
