//! Every statement on the `queue_jobs` and `queue_sizes` tables (the schema is in
//! `schema.rs`). A job is in one of three states: waiting (`0`: ready once `ready_at` has
//! passed), leased (`1`: until `lease_expires_at`) or dead (`2`).

/// The columns a [`super::JobRecord`] is read from, in `JobRecord::from_row`'s order.
macro_rules! job_columns {
    () => {
        "id, queue, payload, attempt, max_attempts, priority, lease, lease_expires_at, \
         enqueued_at, last_error, ready_at"
    };
}

/// A queue's jobs and payload bytes: `?1` queue.
pub(crate) const SIZE: &str = "SELECT jobs, bytes FROM queue_sizes WHERE queue = ?1";

/// The job holding a dedup key: `?1` queue, `?2` key.
pub(crate) const FIND_DEDUP: &str = "SELECT id FROM queue_jobs WHERE queue = ?1 AND dedup_key = ?2";

/// Adds a waiting job: `?1` queue, `?2` priority, `?3` ready_at, `?4` max_attempts,
/// `?5` enqueued_at, `?6` dedup_key (NULL for none), `?7` payload.
pub(crate) const INSERT: &str = "INSERT INTO queue_jobs \
     (queue, state, priority, ready_at, attempt, max_attempts, enqueued_at, dedup_key, payload) \
     VALUES (?1, 0, ?2, ?3, 0, ?4, ?5, ?6, ?7)";

/// Leases whose time ran out by `?1`, at most `?2` of them (the index on expiry finds them).
pub(crate) const EXPIRED_LEASES: &str = "SELECT id, attempt, max_attempts, lease_expires_at \
     FROM queue_jobs WHERE state = 1 AND lease_expires_at <= ?1 \
     ORDER BY lease_expires_at LIMIT ?2";

/// A job whose lease expired goes back to waiting, ready from the moment it expired:
/// `?1` id, `?2` ready_at.
pub(crate) const RELEASE: &str = "UPDATE queue_jobs SET state = 0, ready_at = ?2, lease = 0, \
     lease_expires_at = 0, last_error = 'lease expired' WHERE id = ?1";

/// A job moves to the dead-letter list: `?1` id, `?2` dead_at, `?3` last_error.
pub(crate) const BURY: &str = "UPDATE queue_jobs SET state = 2, dead_at = ?2, lease = 0, \
     lease_expires_at = 0, last_error = ?3 WHERE id = ?1";

/// Whether queue `?1` has a waiting job ready by `?2` (a range of the ready-time index, so
/// that a queue of delayed jobs is not walked to find none ready).
pub(crate) const ANY_READY: &str = "SELECT EXISTS (SELECT 1 FROM queue_jobs \
     WHERE queue = ?1 AND state = 0 AND ready_at <= ?2)";

/// The first `?3` waiting jobs of queue `?1` ready by `?2`, in hand-out order, with the bytes
/// each adds to an answer (see `super::ANSWER_OVERHEAD`). The hand-out order's index, named:
/// the planner would otherwise take the ready-time index's range and sort all of it.
pub(crate) const READY: &str = "SELECT id, priority, ready_at, \
     length(payload) + length(last_error) + length(queue) \
     FROM queue_jobs INDEXED BY queue_jobs_waiting WHERE queue = ?1 AND state = 0 AND ready_at <= ?2 \
     ORDER BY priority DESC, ready_at, id LIMIT ?3";

/// Leases job `?1`: `?2` lease number, `?3` expiry.
pub(crate) const LEASE: &str = concat!(
    "UPDATE queue_jobs SET state = 1, attempt = attempt + 1, lease = ?2, \
     lease_expires_at = ?3 WHERE id = ?1 RETURNING ",
    job_columns!()
);

/// Removes job `?1` as it is handed out without a lease.
pub(crate) const TAKE: &str = concat!(
    "DELETE FROM queue_jobs WHERE id = ?1 RETURNING ",
    job_columns!()
);

/// The earliest time one of queue `?1`'s waiting jobs becomes ready after `?2`, if any (the
/// ready-time index: one seek).
pub(crate) const NEXT_READY: &str = "SELECT ready_at FROM queue_jobs \
     WHERE queue = ?1 AND state = 0 AND ready_at > ?2 ORDER BY ready_at LIMIT 1";

/// The earliest lease expiry of any queue, if any (the lease index: one seek). Any queue's:
/// a waiter woken by another queue's expiry looks again and waits again.
pub(crate) const NEXT_EXPIRY: &str = "SELECT lease_expires_at FROM queue_jobs \
     WHERE state = 1 ORDER BY lease_expires_at LIMIT 1";

/// The leased job `?1` if it still holds lease `?2` unexpired at `?3`.
pub(crate) const HELD: &str = "SELECT queue, attempt, max_attempts FROM queue_jobs \
     WHERE id = ?1 AND state = 1 AND lease = ?2 AND lease_expires_at > ?3";

/// Ack: removes job `?1` while it holds lease `?2` unexpired at `?3`.
pub(crate) const ACK: &str = "DELETE FROM queue_jobs \
     WHERE id = ?1 AND state = 1 AND lease = ?2 AND lease_expires_at > ?3";

/// Nack: job `?1` waits again from `?2`, with error `?3`.
pub(crate) const RETRY: &str = "UPDATE queue_jobs SET state = 0, ready_at = ?2, lease = 0, \
     lease_expires_at = 0, last_error = ?3 WHERE id = ?1";

/// Extend: job `?1` holding lease `?2` unexpired at `?3` gets expiry `?4`.
pub(crate) const EXTEND: &str = "UPDATE queue_jobs SET lease_expires_at = ?4 \
     WHERE id = ?1 AND state = 1 AND lease = ?2 AND lease_expires_at > ?3";

/// Purge: removes the waiting jobs of queue `?1`.
pub(crate) const PURGE: &str = "DELETE FROM queue_jobs WHERE queue = ?1 AND state = 0";

/// RetryDead of every dead job of queue `?1`, ready at `?2`.
pub(crate) const RETRY_DEAD_ALL: &str = "UPDATE queue_jobs SET state = 0, attempt = 0, \
     ready_at = ?2, dead_at = 0 WHERE queue = ?1 AND state = 2";

/// RetryDead of dead job `?3` of queue `?1`, ready at `?2`.
pub(crate) const RETRY_DEAD_ONE: &str = "UPDATE queue_jobs SET state = 0, attempt = 0, \
     ready_at = ?2, dead_at = 0 WHERE queue = ?1 AND state = 2 AND id = ?3";

/// PurgeDead of every dead job of queue `?1`.
pub(crate) const PURGE_DEAD_ALL: &str = "DELETE FROM queue_jobs WHERE queue = ?1 AND state = 2";

/// PurgeDead of dead job `?2` of queue `?1`.
pub(crate) const PURGE_DEAD_ONE: &str =
    "DELETE FROM queue_jobs WHERE queue = ?1 AND state = 2 AND id = ?2";

/// Stats of queue `?1` as of `?2`: a leased job whose lease ran out counts as ready (or dead,
/// when it had used its attempts), as the next Dequeue will find it.
pub(crate) const STATS: &str = "SELECT \
     count(*) FILTER (WHERE (state = 0 AND ready_at <= ?2) \
         OR (state = 1 AND lease_expires_at <= ?2 AND attempt < max_attempts)), \
     count(*) FILTER (WHERE state = 0 AND ready_at > ?2), \
     count(*) FILTER (WHERE state = 1 AND lease_expires_at > ?2), \
     count(*) FILTER (WHERE state = 2 \
         OR (state = 1 AND lease_expires_at <= ?2 AND attempt >= max_attempts)), \
     min(CASE WHEN state = 0 AND ready_at <= ?2 THEN ready_at \
              WHEN state = 1 AND lease_expires_at <= ?2 AND attempt < max_attempts \
                  THEN lease_expires_at END) \
     FROM queue_jobs WHERE queue = ?1";

/// A page of queue `?1`'s waiting jobs after position (`?2` priority, `?3` ready_at, `?4` id),
/// `?5` of them, in hand-out order.
pub(crate) const LIST_WAITING: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM queue_jobs INDEXED BY queue_jobs_waiting WHERE queue = ?1 AND state = 0 \
     AND (priority < ?2 OR (priority = ?2 AND (ready_at > ?3 OR (ready_at = ?3 AND id > ?4)))) \
     ORDER BY priority DESC, ready_at, id LIMIT ?5"
);

/// A page of queue `?1`'s dead jobs after position (`?2` dead_at, `?3` id), `?4` of them,
/// oldest death first; the last column is `dead_at`.
pub(crate) const LIST_DEAD: &str = concat!(
    "SELECT ",
    job_columns!(),
    ", dead_at FROM queue_jobs WHERE queue = ?1 AND state = 2 \
     AND (dead_at > ?2 OR (dead_at = ?2 AND id > ?3)) \
     ORDER BY dead_at, id LIMIT ?4"
);
