//! The writer's queue commands: enqueue (with the queue's bounds and dedup keys), lease or
//! take ready jobs, ack, nack (retry with backoff, or the dead letters), extend, and the
//! dead-letter and purge commands; and the release of expired leases, run before every
//! Dequeue and by upkeep. A queue has nothing in memory, so no command has memory effects.

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params, params_from_iter};

use super::sql;
use super::{
    ANSWER_OVERHEAD, DequeueAsk, Dequeued, Enqueued, JobRecord, Lease, Nacked, NewJob,
    QueueSettings, ReadyAt, stored,
};
use crate::error::{Error, Result};
use crate::store::writer::{Effects, Op, Pending, Reply, Writer};

/// Expired leases released per pass (the rest go at the next Dequeue or upkeep).
pub(crate) const RELEASE_BATCH: i64 = 1000;

/// A command on the queue tables, with its reply.
#[derive(Debug)]
pub(crate) enum QueueOp {
    /// Add jobs, all or none.
    Enqueue {
        jobs: Vec<NewJob>,
        reply: Reply<Vec<Enqueued>>,
    },
    /// Lease (or take) ready jobs.
    Dequeue {
        ask: DequeueAsk,
        reply: Reply<Dequeued>,
    },
    /// Remove a leased job.
    Ack { lease: Lease, reply: Reply<()> },
    /// Give a leased job back.
    Nack {
        lease: Lease,
        retry_after_ms: Option<u64>,
        error: String,
        reply: Reply<Nacked>,
    },
    /// Move a lease's end; answers the new end.
    Extend {
        lease: Lease,
        lease_ms: u64,
        reply: Reply<u64>,
    },
    /// Remove a queue's waiting jobs.
    Purge { queue: String, reply: Reply<u64> },
    /// Make dead jobs ready again (`ids` empty: all of the queue's).
    RetryDead {
        queue: String,
        ids: Vec<u64>,
        reply: Reply<u64>,
    },
    /// Remove dead jobs (`ids` empty: all of the queue's).
    PurgeDead {
        queue: String,
        ids: Vec<u64>,
        reply: Reply<u64>,
    },
    /// Release the leases that ran out (before a listing); answers how many.
    Release { reply: Reply<u64> },
}

impl From<QueueOp> for Op {
    fn from(op: QueueOp) -> Self {
        Op::Queue(Box::new(op))
    }
}

impl QueueOp {
    /// Bytes of payloads this command writes.
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            QueueOp::Enqueue { jobs, .. } => jobs.iter().map(|j| j.payload.len()).sum(),
            _ => 0,
        }
    }

    /// Whether the command may write several rows (so a failure part way undoes them).
    pub(crate) fn needs_savepoint(&self) -> bool {
        match self {
            QueueOp::Enqueue { jobs, .. } => jobs.len() > 1,
            QueueOp::Ack { .. } | QueueOp::Nack { .. } | QueueOp::Extend { .. } => false,
            // Leasing one job is one statement; releasing expired leases before it stands on
            // its own (it is what any Dequeue or upkeep would do), so it needs no undoing.
            QueueOp::Dequeue { ask, .. } => ask.max_jobs > 1,
            QueueOp::Purge { .. }
            | QueueOp::RetryDead { .. }
            | QueueOp::PurgeDead { .. }
            | QueueOp::Release { .. } => true,
        }
    }

    /// The command's reply.
    pub(crate) fn pending(&mut self) -> &mut dyn Pending {
        match self {
            QueueOp::Enqueue { reply, .. } => reply,
            QueueOp::Dequeue { reply, .. } => reply,
            QueueOp::Ack { reply, .. } => reply,
            QueueOp::Nack { reply, .. } => reply,
            QueueOp::Extend { reply, .. } => reply,
            QueueOp::Purge { reply, .. }
            | QueueOp::RetryDead { reply, .. }
            | QueueOp::PurgeDead { reply, .. }
            | QueueOp::Release { reply } => reply,
        }
    }
}

/// The refusal of a lease that is no longer held.
fn not_held(lease: Lease) -> Error {
    Error::FailedPrecondition(format!(
        "lease {lease} is not held: it expired, or the job was acknowledged, given back or \
         removed (it may have been handed to another worker)"
    ))
}

impl Writer {
    /// Runs one queue command inside the batch's transaction. The queues it gives jobs to are
    /// recorded in `fx`, so that their waiting Dequeues are woken once it committed.
    pub(in crate::store) fn apply_queue(
        &mut self,
        op: &mut QueueOp,
        now: u64,
        fx: &mut Effects,
    ) -> Result<()> {
        match op {
            QueueOp::Enqueue { jobs, reply } => {
                let added = self.enqueue_jobs(jobs, now)?;
                // A delayed job wakes a waiter too, so that it learns the job's ready time.
                let mut woken: Vec<(String, usize)> = Vec::new();
                for (job, _) in jobs.iter().zip(&added).filter(|(_, a)| !a.duplicate) {
                    match woken.iter_mut().find(|(q, _)| *q == job.queue) {
                        Some((_, n)) => *n += 1,
                        None => woken.push((job.queue.clone(), 1)),
                    }
                }
                fx.ready_jobs.extend(woken);
                reply.hold(added);
            }
            QueueOp::Dequeue { ask, reply } => {
                // Its caller gave up while it was queued (a deadline, a client gone): leasing
                // jobs to nobody would hide them for a lease and spend an attempt of each.
                if reply.is_closed() {
                    reply.hold(Dequeued::default());
                    return Ok(());
                }
                let found = self.dequeue_jobs(ask, now)?;
                reply.hold(found);
            }
            QueueOp::Ack { lease, reply } => {
                let n = self.queue_exec(
                    sql::ACK,
                    params![lease.id as i64, lease.number as i64, stored(now)],
                    "acknowledging a job",
                )?;
                if n == 0 {
                    return Err(not_held(*lease));
                }
                reply.hold(());
            }
            QueueOp::Nack {
                lease,
                retry_after_ms,
                error,
                reply,
            } => {
                let (queue, nacked) = self.nack_job(*lease, *retry_after_ms, error, now)?;
                if !nacked.dead {
                    fx.ready_jobs.push((queue, 1));
                }
                reply.hold(nacked);
            }
            QueueOp::Extend {
                lease,
                lease_ms,
                reply,
            } => {
                let until = now.saturating_add(*lease_ms);
                let n = self.queue_exec(
                    sql::EXTEND,
                    params![
                        lease.id as i64,
                        lease.number as i64,
                        stored(now),
                        stored(until)
                    ],
                    "extending a lease",
                )?;
                if n == 0 {
                    return Err(not_held(*lease));
                }
                reply.hold(until);
            }
            QueueOp::Purge { queue, reply } => {
                // A job whose lease ran out is waiting (or dead) as of now, for every call.
                self.release_expired_leases(now)?;
                let n = self.queue_exec(sql::PURGE, params![queue.as_str()], "purging a queue")?;
                reply.hold(n);
            }
            QueueOp::RetryDead { queue, ids, reply } => {
                self.release_expired_leases(now)?;
                let n = self.on_dead_jobs(
                    (sql::RETRY_DEAD_ALL, sql::RETRY_DEAD_ONE),
                    &[queue.clone().into(), stored(now).into()],
                    ids,
                    "retrying dead jobs",
                )?;
                if n > 0 {
                    fx.ready_jobs.push((queue.clone(), n as usize));
                }
                reply.hold(n);
            }
            QueueOp::PurgeDead { queue, ids, reply } => {
                self.release_expired_leases(now)?;
                let n = self.on_dead_jobs(
                    (sql::PURGE_DEAD_ALL, sql::PURGE_DEAD_ONE),
                    &[queue.clone().into()],
                    ids,
                    "removing dead jobs",
                )?;
                reply.hold(n);
            }
            QueueOp::Release { reply } => {
                let n = self.release_expired_leases(now)?;
                reply.hold(n);
            }
        }
        Ok(())
    }

    /// Runs one cached statement; answers the rows it changed.
    fn queue_exec(
        &mut self,
        sql: &str,
        params: impl rusqlite::Params,
        context: &'static str,
    ) -> Result<u64> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map(|n| n as u64)
            .map_err(Error::storage(context))
    }

    /// Runs `all` once when `ids` is empty, else `one` for each id (bound after `fixed`);
    /// answers the rows changed.
    fn on_dead_jobs(
        &mut self,
        (all, one): (&str, &str),
        fixed: &[Value],
        ids: &[u64],
        context: &'static str,
    ) -> Result<u64> {
        if ids.is_empty() {
            return self.queue_exec(all, params_from_iter(fixed), context);
        }
        let mut n = 0;
        for &id in ids {
            let with_id = fixed.iter().cloned().chain([Value::Integer(stored(id))]);
            n += self.queue_exec(one, params_from_iter(with_id), context)?;
        }
        Ok(n)
    }

    fn queue_settings(&self) -> QueueSettings {
        self.settings.queue
    }

    fn enqueue_jobs(&mut self, jobs: &[NewJob], now: u64) -> Result<Vec<Enqueued>> {
        let settings = self.queue_settings();
        let mut added = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            if let Some(key) = &job.dedup_key {
                let existing: Option<i64> = self
                    .conn
                    .prepare_cached(sql::FIND_DEDUP)
                    .and_then(|mut s| {
                        s.query_row(params![job.queue, key], |r| r.get(0))
                            .optional()
                    })
                    .map_err(Error::storage("looking up a dedup key"))?;
                if let Some(id) = existing {
                    added.push(Enqueued {
                        id: id as u64,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let (held_jobs, held_bytes): (i64, i64) = self
                .conn
                .prepare_cached(sql::SIZE)
                .and_then(|mut s| {
                    s.query_row(params![job.queue], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(Error::storage("reading a queue's size"))?
                .unwrap_or((0, 0));
            let which = if jobs.len() > 1 {
                format!("jobs[{i}]: ")
            } else {
                String::new()
            };
            if held_jobs.max(0) as u64 >= settings.max_jobs {
                return Err(Error::ResourceExhausted(format!(
                    "{which}queue {:?} holds {held_jobs} jobs, its limit (queue.max_jobs); \
                     nothing was added",
                    job.queue
                )));
            }
            if held_bytes.max(0) as u64 + job.payload.len() as u64 > settings.max_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "{which}queue {:?} holds {held_bytes} bytes of payloads and this job's {} \
                     would pass its limit of {} (queue.max_bytes); nothing was added",
                    job.queue,
                    job.payload.len(),
                    settings.max_bytes
                )));
            }
            let ready_at = match job.ready {
                ReadyAt::Delay(ms) => now.saturating_add(ms),
                ReadyAt::At(at) => at,
            };
            let max_attempts = if job.max_attempts == 0 {
                settings.max_attempts
            } else {
                job.max_attempts
            };
            let id = self
                .conn
                .prepare_cached(sql::INSERT)
                .and_then(|mut s| {
                    s.insert(params![
                        job.queue,
                        job.priority,
                        stored(ready_at),
                        max_attempts,
                        stored(now),
                        job.dedup_key,
                        job.payload.as_ref(),
                    ])
                })
                .map_err(Error::storage("adding a job"))?;
            added.push(Enqueued {
                id: id as u64,
                duplicate: false,
            });
        }
        Ok(added)
    }

    /// Releases leases that ran out by `now` (at most a batch): each job waits again, ready
    /// from its lease's end, or goes dead when it used its attempts. Answers how many.
    pub(in crate::store) fn release_expired_leases(&mut self, now: u64) -> Result<u64> {
        let expired: Vec<(i64, i64, i64, i64)> = self
            .conn
            .prepare_cached(sql::EXPIRED_LEASES)
            .and_then(|mut s| {
                s.query_map(params![stored(now), RELEASE_BATCH], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(Error::storage("finding expired leases"))?;
        for &(id, attempt, max_attempts, expired_at) in &expired {
            if attempt >= max_attempts {
                self.queue_exec(
                    sql::BURY,
                    params![id, stored(now), "lease expired"],
                    "moving a job to the dead letters",
                )?;
            } else {
                self.queue_exec(sql::RELEASE, params![id, expired_at], "releasing a lease")?;
            }
        }
        Ok(expired.len() as u64)
    }

    fn dequeue_jobs(&mut self, ask: &DequeueAsk, now: u64) -> Result<Dequeued> {
        self.release_expired_leases(now)?;
        let due = ask.due_by_ms.unwrap_or(now);
        let limit = ask.max_jobs.max(1);
        // The first `limit` of each queue, then the first `limit` of them all in hand-out
        // order: priority, then ready time, then id.
        let mut candidates: Vec<(i32, i64, i64, usize)> = Vec::new();
        for queue in &ask.queues {
            let any: bool = self
                .conn
                .prepare_cached(sql::ANY_READY)
                .and_then(|mut s| s.query_row(params![queue, stored(due)], |r| r.get(0)))
                .map_err(Error::storage("finding ready jobs"))?;
            if !any {
                continue;
            }
            let mut stmt = self
                .conn
                .prepare_cached(sql::READY)
                .map_err(Error::storage("finding ready jobs"))?;
            let rows = stmt
                .query_map(params![queue, stored(due), limit as i64], |r| {
                    Ok((
                        r.get::<_, i32>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(0)?,
                        (r.get::<_, i64>(3)?.max(0) as usize).saturating_add(ANSWER_OVERHEAD),
                    ))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(Error::storage("finding ready jobs"))?;
            candidates.extend(rows);
        }
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        candidates.truncate(limit);
        // One answer holds at most `max_bytes` of jobs, counted whole (payload, error, queue
        // name and the fixed fields), and always one job, so that it fits one message.
        let mut bytes = 0usize;
        let fits = candidates
            .iter()
            .take_while(|c| {
                bytes = bytes.saturating_add(c.3);
                bytes <= ask.max_bytes
            })
            .count();
        candidates.truncate(fits.max(1));
        let lease_ms = if ask.lease_ms == 0 {
            self.queue_settings().lease_ms
        } else {
            ask.lease_ms
        };
        let expires = stored(now.saturating_add(lease_ms));
        let mut jobs = Vec::with_capacity(candidates.len());
        for &(_, _, id, _) in &candidates {
            let job = if ask.auto_ack {
                self.conn
                    .prepare_cached(sql::TAKE)
                    .and_then(|mut s| s.query_row([id], JobRecord::from_row))
                    .map(|mut j| {
                        // Handed out once, without a lease.
                        j.attempt += 1;
                        j
                    })
            } else {
                let number = rand::random_range(1..=i64::MAX);
                self.conn.prepare_cached(sql::LEASE).and_then(|mut s| {
                    s.query_row(params![id, number, expires], JobRecord::from_row)
                })
            }
            .map_err(Error::storage("leasing a job"))?;
            jobs.push(job);
        }
        let next_at = if jobs.is_empty() {
            self.next_ready(&ask.queues, now, ask.due_by_ms.is_none())?
        } else {
            None
        };
        Ok(Dequeued { jobs, next_at })
    }

    /// The earliest time after `now` at which a Dequeue of `queues` that found nothing could
    /// find a job: a delay ending (only when it takes jobs due by now: with a fixed
    /// `due_by_ms`, no waiting job ever becomes due later) or a lease running out.
    fn next_ready(&mut self, queues: &[String], now: u64, by_now: bool) -> Result<Option<u64>> {
        let optional = |r: rusqlite::Result<i64>| r.optional();
        let mut next: Option<i64> = self
            .conn
            .prepare_cached(sql::NEXT_EXPIRY)
            .and_then(|mut s| optional(s.query_row([], |r| r.get(0))))
            .map_err(Error::storage("finding the next lease to run out"))?;
        if by_now {
            for queue in queues {
                let at: Option<i64> = self
                    .conn
                    .prepare_cached(sql::NEXT_READY)
                    .and_then(|mut s| {
                        optional(s.query_row(params![queue, stored(now)], |r| r.get(0)))
                    })
                    .map_err(Error::storage("finding a queue's next ready job"))?;
                next = match (next, at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        // Only a time still ahead: one already past would have the waiter look again at once,
        // and again, for as long as it waits.
        Ok(next.map(|t| t.max(0) as u64).filter(|&t| t > now))
    }

    fn nack_job(
        &mut self,
        lease: Lease,
        retry_after_ms: Option<u64>,
        error: &str,
        now: u64,
    ) -> Result<(String, Nacked)> {
        let held: Option<(String, i64, i64)> = self
            .conn
            .prepare_cached(sql::HELD)
            .and_then(|mut s| {
                s.query_row(
                    params![lease.id as i64, lease.number as i64, stored(now)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })
            .map_err(Error::storage("reading a leased job"))?;
        let Some((queue, attempt, max_attempts)) = held else {
            return Err(not_held(lease));
        };
        if attempt >= max_attempts {
            self.queue_exec(
                sql::BURY,
                params![lease.id as i64, stored(now), error],
                "moving a job to the dead letters",
            )?;
            return Ok((
                queue,
                Nacked {
                    dead: true,
                    ready_at_ms: 0,
                },
            ));
        }
        let delay = retry_after_ms.unwrap_or_else(|| {
            self.queue_settings().backoff_ms(
                attempt.clamp(0, u32::MAX as i64) as u32,
                rand::random::<f64>(),
            )
        });
        let ready_at = now.saturating_add(delay);
        self.queue_exec(
            sql::RETRY,
            params![lease.id as i64, stored(ready_at), error],
            "giving a job back",
        )?;
        Ok((
            queue,
            Nacked {
                dead: false,
                ready_at_ms: ready_at,
            },
        ))
    }
}
