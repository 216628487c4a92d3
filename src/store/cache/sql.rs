//! Every statement on the `cache_entries` table (schema in `schema.rs`), in one place.
//!
//! The one row lookup, by namespace and key, is written once (`entry_lookup!`) and read in
//! two shapes: with the value, for reads and Increment, and without it, for the conditions of
//! a Set, so that overwriting a large value never reads it first (`value` is the last column,
//! so the others are read without walking its overflow pages).

/// `SELECT <columns>` of the entry at `namespace = ?1 AND key = ?2`.
macro_rules! entry_lookup {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM cache_entries WHERE namespace = ?1 AND key = ?2"
        )
    };
}

/// An entry with its value: `value, version, expires_at, size`.
pub(super) const ENTRY: &str = entry_lookup!("value, version, expires_at, size");

/// An entry without its value: `version, expires_at, size`.
pub(super) const ENTRY_HEAD: &str = entry_lookup!("version, expires_at, size");

/// Writes an entry whole: `?1` namespace … `?7` size.
pub(super) const UPSERT: &str = "INSERT INTO cache_entries \
     (namespace, key, value, version, expires_at, accessed_at, size) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (namespace, key) DO UPDATE SET \
     value = excluded.value, version = excluded.version, \
     expires_at = excluded.expires_at, accessed_at = excluded.accessed_at, \
     size = excluded.size";

/// A live key's new expiry (`?3`), as a use at `?4`.
pub(super) const TOUCH: &str = "UPDATE cache_entries SET expires_at = ?3, accessed_at = ?4 \
     WHERE namespace = ?1 AND key = ?2";

/// Deletes one key.
pub(super) const DELETE_KEY: &str = "DELETE FROM cache_entries WHERE namespace = ?1 AND key = ?2 \
     RETURNING expires_at, size";

/// Deletes one key only at version `?3`.
pub(super) const DELETE_IF_VERSION: &str = "DELETE FROM cache_entries \
     WHERE namespace = ?1 AND key = ?2 AND version = ?3 \
     RETURNING key, expires_at, size";

/// One chunk of a DeletePrefix or Clear: deletes up to `?5` rows with `?2 <= key < ?3` and a
/// version below `?4` (written before the call began), the first ones in key order, so that
/// the next chunk goes on from the greatest key returned.
pub(super) const DELETE_RANGE_CHUNK: &str = "DELETE FROM cache_entries WHERE id IN ( \
       SELECT id FROM cache_entries \
       WHERE namespace = ?1 AND key >= ?2 AND key < ?3 AND version < ?4 \
       ORDER BY key LIMIT ?5) \
     RETURNING key, expires_at, size";

/// [`DELETE_RANGE_CHUNK`] without an upper bound: up to `?4` rows with `key >= ?2` and a
/// version below `?3` (a Clear, or a prefix no string is above).
pub(super) const DELETE_FROM_CHUNK: &str = "DELETE FROM cache_entries WHERE id IN ( \
       SELECT id FROM cache_entries \
       WHERE namespace = ?1 AND key >= ?2 AND version < ?3 \
       ORDER BY key LIMIT ?4) \
     RETURNING key, expires_at, size";

/// One page of a Scan: up to `?5` entries of namespace `?1` live at `?4` with
/// `?2 <= key < ?3`, in key order. `length(value)` comes before `value`, so that the page can
/// stop at its byte bound without reading the value that would cross it.
pub(super) const SCAN_RANGE: &str = "SELECT key, version, expires_at, length(value), value \
     FROM cache_entries \
     WHERE namespace = ?1 AND key >= ?2 AND key < ?3 AND (expires_at = 0 OR expires_at > ?4) \
     ORDER BY key LIMIT ?5";

/// [`SCAN_RANGE`] without an upper bound: up to `?4` entries live at `?3` with `key >= ?2`
/// (no prefix, or a prefix no string is above).
pub(super) const SCAN_FROM: &str = "SELECT key, version, expires_at, length(value), value \
     FROM cache_entries \
     WHERE namespace = ?1 AND key >= ?2 AND (expires_at = 0 OR expires_at > ?3) \
     ORDER BY key LIMIT ?4";

/// Records read times collected in memory (never moving one back).
pub(super) const RECORD_ACCESS: &str = "UPDATE cache_entries SET accessed_at = ?3 \
     WHERE namespace = ?1 AND key = ?2 AND accessed_at < ?3";

/// Deletes up to `?2` rows expired by `?1`.
pub(super) const SWEEP_EXPIRED: &str = "DELETE FROM cache_entries WHERE id IN ( \
       SELECT id FROM cache_entries \
       WHERE expires_at > 0 AND expires_at <= ?1 LIMIT ?2) \
     RETURNING namespace, key, size";

/// The range of row ids eviction samples from.
pub(super) const ID_RANGE: &str = "SELECT MIN(id), MAX(id) FROM cache_entries";

/// Up to `?3` rows with `?1 <= id < ?2`, in row-id order, as eviction candidates.
pub(super) const SAMPLE: &str = "SELECT id, accessed_at, namespace, key, size FROM cache_entries \
     WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3";

/// Deletes one row by id (an eviction).
pub(super) const EVICT: &str = "DELETE FROM cache_entries WHERE id = ?1";

/// `SUM` of the key and value bytes of the rows selected: `size` is the row's charge against
/// the disk bound (see `disk_charge`), from which namespace, second key and overhead are
/// taken back out.
macro_rules! key_value_bytes {
    () => {
        concat!(
            "COALESCE(SUM(size - 2 * length(CAST(namespace AS BLOB)) \
             - length(CAST(key AS BLOB)) - ",
            super::row_overhead!(),
            "), 0)"
        )
    };
}

/// Live entries and their key and value bytes in namespace `?1` at `?2`.
pub(super) const COUNT_NAMESPACE: &str = concat!(
    "SELECT COUNT(*), ",
    key_value_bytes!(),
    " FROM cache_entries WHERE namespace = ?1 AND (expires_at = 0 OR expires_at > ?2)"
);

/// Live entries and their key and value bytes at `?1`.
pub(super) const COUNT_ALL: &str = concat!(
    "SELECT COUNT(*), ",
    key_value_bytes!(),
    " FROM cache_entries WHERE expires_at = 0 OR expires_at > ?1"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::{Synchronous, open_writer};

    /// The detail column of each step of `statement`'s query plan.
    fn plan(conn: &rusqlite::Connection, statement: &str, args: usize) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
            .unwrap();
        let nulls = vec![rusqlite::types::Null; args];
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_scan_page_seeks_the_key_index_and_sorts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open_writer(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        for (statement, args, range) in
            [(SCAN_RANGE, 5, "key>? AND key<?"), (SCAN_FROM, 4, "key>?")]
        {
            let steps = plan(&conn, statement, args);
            assert_eq!(steps.len(), 1, "{steps:?}");
            // An index search on namespace and the key range, in the index's order.
            assert!(
                steps[0].starts_with("SEARCH cache_entries USING INDEX"),
                "{steps:?}"
            );
            assert!(
                steps[0].contains(&format!("(namespace=? AND {range})")),
                "{steps:?}"
            );
        }
    }
}
