//! Job queues: durable jobs in the `queue_jobs` table, leased to one worker at a time.
//!
//! Every change of a job (enqueue, lease, ack, nack, extend, expiry, dead letters) is a writer
//! command ([`write`]), so it is committed before it is answered and commands on one job are
//! applied one after another: a job is never leased twice at once. Listing and counting read
//! SQLite on the scanner thread. Nothing of a queue lives in memory except the waiters of
//! long-polling Dequeues ([`Signals`]), woken after an Enqueue committed: there is no polling
//! loop. A waiter also wakes at the next time one of its queues has a job becoming ready (a
//! delay ending, a lease running out), which the Dequeue that found nothing reports.
//!
//! A lease is the job's id and a random number drawn at each delivery ([`Lease`]): an old
//! worker's lease never matches a later delivery of the same job.

pub(crate) mod sql;
pub(crate) mod write;

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Row, params};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::Store;
use write::QueueOp;

/// Bytes a job adds to an answer besides its payload, error and queue name: its numbers, its
/// lease and their field tags, with room to spare. A job is counted at least this plus those
/// three against an answer's bound.
pub(crate) const ANSWER_OVERHEAD: usize = 128;

/// Longest delay, lease or retry, in milliseconds: 365 days.
pub const MAX_QUEUE_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;

/// How queues behave: the defaults a request leaves to the server, and each queue's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Lease length of a Dequeue that names none, in milliseconds.
    pub lease_ms: u64,
    /// Deliveries a job gets when its Enqueue names no `max_attempts`.
    pub max_attempts: u32,
    /// Retry delay after the first failed delivery (doubled per further attempt), in ms.
    pub retry_min_ms: u64,
    /// Longest retry delay, in ms.
    pub retry_max_ms: u64,
    /// Most jobs one queue holds, in every state.
    pub max_jobs: u64,
    /// Most payload bytes one queue holds, in every state.
    pub max_bytes: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            max_attempts: 5,
            retry_min_ms: 1_000,
            retry_max_ms: 3_600_000,
            max_jobs: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

impl QueueSettings {
    /// The delay before attempt `attempt + 1` after `attempt` failed deliveries: `retry_min`
    /// doubled per attempt after the first, at most `retry_max`, then drawn uniformly from its
    /// upper half but never below `retry_min` (`unit` in `[0, 1)`), so that jobs failing
    /// together do not retry together.
    pub fn backoff_ms(&self, attempt: u32, unit: f64) -> u64 {
        let doublings = attempt.saturating_sub(1).min(63);
        let full = self
            .retry_min_ms
            .saturating_mul(1u64 << doublings)
            .min(self.retry_max_ms);
        let low = (full / 2).max(self.retry_min_ms).min(full);
        low + ((full - low) as f64 * unit.clamp(0.0, 1.0)) as u64
    }
}

/// One job to add, as validated by the service.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its queue.
    pub queue: String,
    /// Its data.
    pub payload: Bytes,
    /// When it is ready: after a delay, or at a time.
    pub ready: ReadyAt,
    /// Higher goes first.
    pub priority: i32,
    /// Deliveries before it is dead; 0 = the server's default.
    pub max_attempts: u32,
    /// While a job of the queue holds this key, another Enqueue with it adds nothing.
    pub dedup_key: Option<String>,
}

/// When a new job is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyAt {
    /// This many milliseconds after the commit's time (0 = at once).
    Delay(u64),
    /// At this Unix time in milliseconds (possibly past).
    At(u64),
}

/// Where an Enqueue's job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: u64,
    /// True when a job with the same dedup key existed: `id` is that job's.
    pub duplicate: bool,
}

/// What a Dequeue asks for.
#[derive(Debug, Clone)]
pub struct DequeueAsk {
    /// Queues to take from (1..=16, validated).
    pub queues: Vec<String>,
    /// Most jobs.
    pub max_jobs: usize,
    /// Lease length; 0 = the server's default.
    pub lease_ms: u64,
    /// Remove the jobs as they are handed out instead of leasing them.
    pub auto_ack: bool,
    /// Take jobs ready by this Unix ms instead of by now.
    pub due_by_ms: Option<u64>,
    /// Most bytes of jobs in one answer, each counted whole (payload, error, queue name and
    /// 128 bytes of fields); an answer holds at least one job whatever its size.
    pub max_bytes: usize,
}

/// A job as stored, as Dequeue and the listings answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// The job's id.
    pub id: u64,
    /// Its queue.
    pub queue: String,
    /// Its data.
    pub payload: Bytes,
    /// Deliveries so far (this one included, for a leased job).
    pub attempt: u32,
    /// Deliveries allowed.
    pub max_attempts: u32,
    /// Its priority.
    pub priority: i32,
    /// The lease, while leased.
    pub lease: Option<Lease>,
    /// When the lease ends (Unix ms); 0 when not leased.
    pub lease_expires_at_ms: i64,
    /// When it was enqueued (Unix ms).
    pub enqueued_at_ms: i64,
    /// The error of the last failed delivery.
    pub last_error: String,
    /// When it became (or becomes) ready (Unix ms).
    pub ready_at_ms: i64,
}

impl JobRecord {
    /// Reads the columns of `sql::job_columns!` from `row`.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        let id: i64 = row.get(0)?;
        let lease: i64 = row.get(6)?;
        Ok(Self {
            id: id as u64,
            queue: row.get(1)?,
            payload: Bytes::from(row.get::<_, Vec<u8>>(2)?),
            attempt: row.get::<_, i64>(3)?.clamp(0, u32::MAX as i64) as u32,
            max_attempts: row.get::<_, i64>(4)?.clamp(0, u32::MAX as i64) as u32,
            priority: row.get(5)?,
            lease: (lease != 0).then_some(Lease {
                id: id as u64,
                number: lease as u64,
            }),
            lease_expires_at_ms: row.get(7)?,
            enqueued_at_ms: row.get(8)?,
            last_error: row.get(9)?,
            ready_at_ms: row.get(10)?,
        })
    }
}

/// A lease: the job's id and the random number of this delivery. Written `<id>.<number>`
/// (both decimal); clients treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The leased job.
    pub id: u64,
    /// This delivery's number, never 0.
    pub number: u64,
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.number)
    }
}

impl FromStr for Lease {
    type Err = ();

    /// Parses what [`Lease`]'s `Display` wrote; anything else is `Err`.
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (id, number) = s.split_once('.').ok_or(())?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(id) || !digits(number) {
            return Err(());
        }
        let id: u64 = id.parse().map_err(|_| ())?;
        let number: u64 = number.parse().map_err(|_| ())?;
        // Stored as SQLite integers: both fit an i64, and a lease number is never 0.
        if id == 0 || id > i64::MAX as u64 || number == 0 || number > i64::MAX as u64 {
            return Err(());
        }
        Ok(Self { id, number })
    }
}

/// What a Nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nacked {
    /// The job used its attempts and is dead.
    pub dead: bool,
    /// When it is ready again (Unix ms); 0 when dead.
    pub ready_at_ms: u64,
}

/// A queue's jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready now.
    pub ready: u64,
    /// Waiting for a delay or retry.
    pub delayed: u64,
    /// Leased, lease not run out.
    pub leased: u64,
    /// Dead.
    pub dead: u64,
    /// Milliseconds since the oldest ready job became ready; 0 when none.
    pub oldest_ready_age_ms: u64,
}

/// Where a page of waiting jobs ended: the last job's place in hand-out order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingPosition {
    /// Its priority.
    pub priority: i32,
    /// Its ready time.
    pub ready_at_ms: i64,
    /// Its id.
    pub id: u64,
}

/// Where a page of dead jobs ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadPosition {
    /// The last job's time of death.
    pub dead_at_ms: i64,
    /// Its id.
    pub id: u64,
}

/// A page of a listing, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone)]
pub struct JobPage<P> {
    /// The jobs.
    pub jobs: Vec<JobRecord>,
    /// The position to pass for the next page.
    pub next: Option<P>,
}

/// Most waiters one commit wakes per queue.
const MAX_WAKES: usize = 1024;

/// The waiters of long-polling Dequeues, by queue. A queue has an entry only while someone
/// waits on it.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Signals {
    /// Wakes up to `jobs` Dequeues waiting on `queue` (one per job, not every waiter: a herd
    /// of idle workers would each cost the writer an empty Dequeue). A waiter woken while it
    /// waits on several queues passes the other queues' wake-ups on as it stops waiting
    /// (tokio's `Notified` does so when dropped).
    pub(crate) fn wake(&self, queue: &str, jobs: usize) {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = waiting.get(queue) {
            for _ in 0..jobs.clamp(1, MAX_WAKES) {
                notify.notify_one();
            }
        }
    }

    /// The signals of `queues`, registered until the returned guard is dropped.
    fn watch(self: &Arc<Self>, queues: &[String]) -> Watch {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let notifies = queues
            .iter()
            .map(|q| waiting.entry(q.clone()).or_default().clone())
            .collect();
        Watch {
            signals: self.clone(),
            queues: queues.to_vec(),
            notifies,
        }
    }
}

/// A waiter's hold on the signals of its queues; the last one out removes a queue's entry.
struct Watch {
    signals: Arc<Signals>,
    queues: Vec<String>,
    notifies: Vec<Arc<Notify>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.notifies.clear();
        let mut waiting = self
            .signals
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for q in &self.queues {
            if waiting.get(q).is_some_and(|n| Arc::strong_count(n) == 1) {
                waiting.remove(q);
            }
        }
    }
}

/// What one Dequeue command found: the jobs, and when one of its queues next has a job
/// becoming ready (a delay ending, a lease running out), if it found none.
#[derive(Debug, Default)]
pub(crate) struct Dequeued {
    pub(crate) jobs: Vec<JobRecord>,
    pub(crate) next_at: Option<u64>,
}

/// Unix ms as stored (SQLite integers are signed).
fn stored(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl Store {
    /// The store clock's time, in Unix ms (what delays and leases are measured from).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Adds jobs in one transaction (all or none); the writer wakes the Dequeues waiting on
    /// their queues as it commits.
    pub async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.write(|reply| QueueOp::Enqueue { jobs, reply }.into())
            .await
    }

    /// Leases (or, with `auto_ack`, takes) up to `ask.max_jobs` ready jobs; when none is ready,
    /// waits up to `wait` for one: woken by an Enqueue on one of the queues, or at the time a
    /// delayed job or an expired lease makes one ready. Answers an empty list when the wait
    /// ends with nothing, or at once when `stop` is cancelled (the server is shutting down:
    /// a waiting worker must not hold up the drain).
    pub async fn dequeue(
        &self,
        ask: DequeueAsk,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Vec<JobRecord>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let watch = (!wait.is_zero()).then(|| self.inner.queue_signals.watch(&ask.queues));
            // Registered before the attempt, so that an Enqueue committed after the attempt
            // looked is not missed.
            let mut woken: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = watch
                .iter()
                .flat_map(|w| w.notifies.iter())
                .map(|n| Box::pin(n.notified()))
                .collect();
            for w in &mut woken {
                w.as_mut().enable();
            }
            let ask_now = ask.clone();
            let found = self
                .write(|reply| {
                    QueueOp::Dequeue {
                        ask: ask_now,
                        reply,
                    }
                    .into()
                })
                .await?;
            let now = tokio::time::Instant::now();
            if !found.jobs.is_empty() || now >= deadline || stop.is_cancelled() {
                return Ok(found.jobs);
            }
            let mut until = deadline;
            if let Some(at) = found.next_at {
                let after = Duration::from_millis(at.saturating_sub(self.inner.clock.now_ms()));
                until = until.min(now + after);
            }
            let enqueued = async {
                if woken.is_empty() {
                    std::future::pending::<()>().await;
                } else {
                    futures_util::future::select_all(woken).await;
                }
            };
            tokio::select! {
                _ = enqueued => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = stop.cancelled() => {}
            }
            drop(watch);
        }
    }

    /// Acknowledges a leased job: removes it. `FAILED_PRECONDITION` when the lease is no
    /// longer held.
    pub async fn ack(&self, lease: Lease) -> Result<()> {
        self.write(|reply| QueueOp::Ack { lease, reply }.into())
            .await
    }

    /// Gives a leased job back, to be retried after `retry_after_ms` (or the backoff), or to
    /// the dead letters when it used its attempts.
    pub async fn nack(
        &self,
        lease: Lease,
        retry_after_ms: Option<u64>,
        error: String,
    ) -> Result<Nacked> {
        self.write(|reply| {
            QueueOp::Nack {
                lease,
                retry_after_ms,
                error,
                reply,
            }
            .into()
        })
        .await
    }

    /// Moves a lease's end to now + `lease_ms`; answers the new end (Unix ms).
    pub async fn extend(&self, lease: Lease, lease_ms: u64) -> Result<u64> {
        self.write(|reply| {
            QueueOp::Extend {
                lease,
                lease_ms,
                reply,
            }
            .into()
        })
        .await
    }

    /// Removes a queue's waiting jobs; answers how many.
    pub async fn purge_queue(&self, queue: String) -> Result<u64> {
        self.write(|reply| QueueOp::Purge { queue, reply }.into())
            .await
    }

    /// Makes dead jobs of `queue` ready again, attempts reset: those of `ids`, or all.
    pub async fn retry_dead(&self, queue: String, ids: Vec<u64>) -> Result<u64> {
        self.write(|reply| QueueOp::RetryDead { queue, ids, reply }.into())
            .await
    }

    /// Removes dead jobs of `queue`: those of `ids`, or all.
    pub async fn purge_dead(&self, queue: String, ids: Vec<u64>) -> Result<u64> {
        self.write(|reply| QueueOp::PurgeDead { queue, ids, reply }.into())
            .await
    }

    /// Has the writer release the leases that ran out, so that a listing shows their jobs
    /// where they are as of now (waiting, or dead) rather than where the last write left
    /// them. Costs an index probe when there are none.
    async fn release_expired_leases(&self) -> Result<u64> {
        self.write(|reply| QueueOp::Release { reply }.into()).await
    }

    /// Counts a queue's jobs by state, as of now.
    pub async fn queue_stats(&self, queue: String) -> Result<QueueStats> {
        let now = stored(self.inner.clock.now_ms());
        self.scan(move |conn| {
            conn.prepare_cached(sql::STATS)
                .and_then(|mut s| {
                    s.query_row(params![queue, now], |r| {
                        let count = |i| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
                        let oldest: Option<i64> = r.get(4)?;
                        Ok(QueueStats {
                            ready: count(0)?,
                            delayed: count(1)?,
                            leased: count(2)?,
                            dead: count(3)?,
                            oldest_ready_age_ms: oldest.map_or(0, |t| (now - t).max(0) as u64),
                        })
                    })
                })
                .map_err(Error::storage("counting a queue's jobs"))
        })
        .await
    }

    /// A page of a queue's waiting jobs in hand-out order, after `after`.
    pub async fn list_jobs(
        &self,
        queue: String,
        after: Option<WaitingPosition>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<JobPage<WaitingPosition>> {
        self.release_expired_leases().await?;
        let (p, r, id) = match after {
            Some(a) => (i64::from(a.priority), a.ready_at_ms, stored(a.id)),
            // Before every job: above the highest priority.
            None => (i64::from(i32::MAX) + 1, i64::MIN, 0),
        };
        self.scan(move |conn| {
            let mut stmt = conn
                .prepare_cached(sql::LIST_WAITING)
                .map_err(Error::storage("listing a queue's jobs"))?;
            let jobs = stmt
                .query_map(
                    params![queue, p, r, id, limit as i64 + 1],
                    JobRecord::from_row,
                )
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(Error::storage("listing a queue's jobs"))?;
            Ok(page(jobs, limit, max_bytes, |j| WaitingPosition {
                priority: j.priority,
                ready_at_ms: j.ready_at_ms,
                id: j.id,
            }))
        })
        .await
    }

    /// A page of a queue's dead jobs, oldest death first, after `after`.
    pub async fn list_dead(
        &self,
        queue: String,
        after: Option<DeadPosition>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<JobPage<DeadPosition>> {
        self.release_expired_leases().await?;
        let (d, id) = after.map_or((i64::MIN, 0), |a| (a.dead_at_ms, stored(a.id)));
        self.scan(move |conn| {
            let mut stmt = conn
                .prepare_cached(sql::LIST_DEAD)
                .map_err(Error::storage("listing a queue's dead jobs"))?;
            let rows = stmt
                .query_map(params![queue, d, id, limit as i64 + 1], |row| {
                    Ok((JobRecord::from_row(row)?, row.get::<_, i64>(11)?))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(Error::storage("listing a queue's dead jobs"))?;
            let deaths: HashMap<u64, i64> = rows.iter().map(|(j, d)| (j.id, *d)).collect();
            let jobs = rows.into_iter().map(|(j, _)| j).collect::<Vec<_>>();
            Ok(page(jobs, limit, max_bytes, |j| DeadPosition {
                dead_at_ms: deaths.get(&j.id).copied().unwrap_or(0),
                id: j.id,
            }))
        })
        .await
    }
}

/// What `job` is counted against an answer's bound.
fn answer_bytes(job: &JobRecord) -> usize {
    job.payload.len() + job.last_error.len() + job.queue.len() + ANSWER_OVERHEAD
}

/// Cuts `jobs` (read one past `limit`) to a page, with the position of its last job when
/// there is more.
fn page<P>(
    mut jobs: Vec<JobRecord>,
    limit: usize,
    max_bytes: usize,
    position: impl Fn(&JobRecord) -> P,
) -> JobPage<P> {
    let mut more = jobs.len() > limit;
    jobs.truncate(limit);
    // At most `max_bytes` of jobs counted whole (and always one job), so that a page fits
    // one message.
    let mut bytes = 0usize;
    let fits = jobs
        .iter()
        .take_while(|j| {
            bytes = bytes.saturating_add(answer_bytes(j));
            bytes <= max_bytes
        })
        .count()
        .max(1);
    if fits < jobs.len() {
        jobs.truncate(fits);
        more = true;
    }
    let next = if more {
        jobs.last().map(position)
    } else {
        None
    };
    JobPage { jobs, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_reads_back_what_it_wrote() {
        let lease = Lease {
            id: 42,
            number: 9_007_199_254_740_993,
        };
        assert_eq!(lease.to_string().parse::<Lease>(), Ok(lease));
    }

    #[test]
    fn malformed_leases_are_refused() {
        for bad in [
            "",
            ".",
            "1",
            "1.",
            ".1",
            "0.1",
            "1.0",
            "a.1",
            "1.b",
            "1.2.3",
            " 1.2",
            "+1.2",
            "-1.2",
            "1.-2",
            "99999999999999999999.1",
            "9223372036854775808.1",
        ] {
            assert_eq!(bad.parse::<Lease>(), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum_within_its_upper_half() {
        let s = QueueSettings {
            retry_min_ms: 1_000,
            retry_max_ms: 10_000,
            ..QueueSettings::default()
        };
        // The first retry waits exactly retry_min: its upper half would go below it.
        assert_eq!(s.backoff_ms(1, 0.0), 1_000);
        assert_eq!(s.backoff_ms(1, 0.999_999), 1_000);
        assert_eq!(s.backoff_ms(2, 0.0), 1_000);
        assert_eq!(s.backoff_ms(2, 0.999_999), 1_999);
        assert_eq!(s.backoff_ms(3, 0.5), 3_000);
        assert_eq!(s.backoff_ms(4, 0.0), 4_000);
        assert_eq!(s.backoff_ms(5, 0.0), 5_000);
        assert_eq!(s.backoff_ms(40, 1.0), 10_000);
        assert_eq!(s.backoff_ms(u32::MAX, 0.0), 5_000);
        // Attempt 0 (never delivered) is treated as the first.
        assert_eq!(s.backoff_ms(0, 0.0), 1_000);
        // However the settings and the draw, the delay stays within [retry_min, retry_max].
        for (min, max) in [(1, 1), (1, 3), (7, 7), (1_000, 1_500), (5, 3_600_000)] {
            let s = QueueSettings {
                retry_min_ms: min,
                retry_max_ms: max,
                ..QueueSettings::default()
            };
            for attempt in [0, 1, 2, 3, 10, 64, u32::MAX] {
                for unit in [0.0, 0.25, 0.5, 0.999_999, 1.0] {
                    let d = s.backoff_ms(attempt, unit);
                    assert!(
                        (min..=max).contains(&d),
                        "{min} {max} {attempt} {unit}: {d}"
                    );
                }
            }
        }
    }

    /// A waiting job of queue "q" with a payload of `len` bytes.
    fn record(id: u64, len: usize) -> JobRecord {
        JobRecord {
            id,
            queue: "q".into(),
            payload: Bytes::from(vec![0u8; len]),
            attempt: 0,
            max_attempts: 5,
            priority: 0,
            lease: None,
            lease_expires_at_ms: 0,
            enqueued_at_ms: 0,
            last_error: String::new(),
            ready_at_ms: 0,
        }
    }

    #[test]
    fn a_page_points_past_its_last_job_only_when_there_is_more() {
        let job = |id| record(id, 0);
        let full = page(vec![job(1), job(2), job(3)], 2, usize::MAX, |j| j.id);
        assert_eq!(full.jobs.len(), 2);
        assert_eq!(full.next, Some(2));
        let last = page(vec![job(1), job(2)], 2, usize::MAX, |j| j.id);
        assert_eq!(last.next, None);
    }

    #[test]
    fn a_page_ends_early_at_its_byte_bound_but_holds_at_least_one_job() {
        let job = record;
        let each = 6 + 1 + ANSWER_OVERHEAD;
        let cut = page(vec![job(1, 6), job(2, 6), job(3, 6)], 10, 2 * each, |j| {
            j.id
        });
        assert_eq!((cut.jobs.len(), cut.next), (2, Some(2)));
        let one = page(vec![job(1, 2 * each), job(2, 1)], 10, 2 * each, |j| j.id);
        assert_eq!((one.jobs.len(), one.next), (1, Some(1)));
    }
}
