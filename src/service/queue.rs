//! `larder.v1.QueueService`: validates each request against the limits (queue names as the
//! cache's namespaces, payloads as its values, batches as its batches, durations at most 365
//! days), then turns it into one store call. No SQL and no locks here.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::pb;
use crate::pb::queue_service_server::QueueService;
use crate::service::{RequestLimits, at_most, not_empty};
use crate::store::{
    DeadPosition, DequeueAsk, JobRecord, Lease, MAX_QUEUE_DURATION_MS, NewJob, ReadyAt, Store,
    WaitingPosition,
};

/// Longest a Dequeue waits for a job, in milliseconds.
pub const MAX_WAIT_MS: u64 = 30_000;

/// Most queues one Dequeue names.
const MAX_DEQUEUE_QUEUES: usize = 16;

/// Longest Nack error kept with a job, in bytes.
const MAX_ERROR_BYTES: usize = 4096;

/// Page size of a listing that names none.
const DEFAULT_PAGE: usize = 100;

/// The QueueService implementation.
#[derive(Debug, Clone)]
pub(crate) struct QueueApi {
    store: Store,
    limits: RequestLimits,
    /// The server's longest call (`server.request_timeout`): a Dequeue's wait ends before it.
    request_timeout: Duration,
    /// Cancelled when the server starts shutting down: waiting Dequeues answer at once.
    stopping: CancellationToken,
}

impl QueueApi {
    /// A service over `store`, enforcing `limits`, on a server whose calls last at most
    /// `request_timeout`; waiting Dequeues answer at once when `stopping` is cancelled.
    pub(crate) fn new(
        store: Store,
        limits: RequestLimits,
        request_timeout: Duration,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            store,
            limits,
            request_timeout,
            stopping,
        }
    }

    /// How long a Dequeue may wait: what it asked, ended early enough that its answer (with
    /// the jobs it leased) reaches the client before the call's deadline cuts it (the
    /// server's `request_timeout`, or the client's shorter `grpc-timeout`).
    fn wait<T>(&self, request: &Request<T>, wait_ms: u64) -> Duration {
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            .map_or(self.request_timeout, |t| t.min(self.request_timeout));
        let margin = (deadline / 5).min(Duration::from_secs(1));
        Duration::from_millis(wait_ms).min(deadline.saturating_sub(margin))
    }

    fn queue(&self, field: &str, name: &str) -> Result<(), Error> {
        not_empty(field, name.len())?;
        at_most(field, name.len(), self.limits.max_namespace_bytes, "bytes")
    }

    fn duration(field: &str, ms: u64) -> Result<(), Error> {
        at_most(field, ms, MAX_QUEUE_DURATION_MS, "ms")
    }

    fn new_job(&self, field: &str, job: pb::NewJob, now: u64) -> Result<NewJob, Error> {
        let at = |name: &str| format!("{field}{name}");
        self.queue(&at("queue"), &job.queue)?;
        at_most(
            &at("payload"),
            job.payload.len(),
            self.limits.max_value_bytes,
            "bytes",
        )?;
        Self::duration(&at("delay_ms"), job.delay_ms)?;
        let ready = match job.run_at_ms {
            0 => ReadyAt::Delay(job.delay_ms),
            t if t < 0 => {
                return Err(Error::invalid(
                    at("run_at_ms"),
                    "must be a time after the Unix epoch (or 0 for none)",
                ));
            }
            _ if job.delay_ms != 0 => {
                return Err(Error::invalid(
                    at("run_at_ms"),
                    "cannot be set together with delay_ms: set one of them",
                ));
            }
            t => {
                let t = t as u64;
                if t > now.saturating_add(MAX_QUEUE_DURATION_MS) {
                    return Err(Error::invalid(
                        at("run_at_ms"),
                        format!("is more than {MAX_QUEUE_DURATION_MS} ms (365 days) from now"),
                    ));
                }
                ReadyAt::At(t)
            }
        };
        let dedup_key = if job.dedup_key.is_empty() {
            None
        } else {
            at_most(
                &at("dedup_key"),
                job.dedup_key.len(),
                self.limits.max_key_bytes,
                "bytes",
            )?;
            Some(job.dedup_key)
        };
        Ok(NewJob {
            queue: job.queue,
            payload: job.payload,
            ready,
            priority: job.priority,
            max_attempts: job.max_attempts,
            dedup_key,
        })
    }

    fn page_size(&self, page_size: u32) -> Result<usize, Error> {
        at_most(
            "page_size",
            page_size as usize,
            self.limits.max_batch,
            "jobs",
        )?;
        Ok(match page_size {
            0 => DEFAULT_PAGE.min(self.limits.max_batch),
            n => n as usize,
        })
    }

    fn ids(&self, ids: &[u64]) -> Result<Vec<u64>, Error> {
        at_most("ids", ids.len(), self.limits.max_batch, "ids")?;
        Ok(ids.to_vec())
    }
}

/// Parses a `grpc-timeout` header: at most 8 digits and a unit (gRPC over HTTP/2).
fn grpc_timeout(v: &str) -> Option<Duration> {
    let cut = v.len().checked_sub(1)?;
    let (digits, unit) = (v.get(..cut)?, v.get(cut..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parses a lease a Dequeue answered.
fn lease(lease: &str) -> Result<Lease, Error> {
    not_empty("lease", lease.len())?;
    lease.parse().map_err(|()| {
        Error::invalid(
            "lease",
            "is not a lease a Dequeue answered (expected the `lease` of a Job)",
        )
    })
}

fn bad_token() -> Error {
    Error::invalid(
        "page_token",
        "is not a next_page_token this listing answered",
    )
}

/// Page tokens: `w<priority>.<ready_at>.<id>` for waiting jobs, `d<dead_at>.<id>` for dead.
fn waiting_token(p: WaitingPosition) -> String {
    format!("w{}.{}.{}", p.priority, p.ready_at_ms, p.id)
}

fn parse_waiting_token(token: &str) -> Result<Option<WaitingPosition>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let rest = token.strip_prefix('w').ok_or_else(bad_token)?;
    let mut parts = rest.split('.');
    let (Some(p), Some(r), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_token());
    };
    Ok(Some(WaitingPosition {
        priority: p.parse().map_err(|_| bad_token())?,
        ready_at_ms: r.parse().map_err(|_| bad_token())?,
        id: id.parse().map_err(|_| bad_token())?,
    }))
}

fn dead_token(p: DeadPosition) -> String {
    format!("d{}.{}", p.dead_at_ms, p.id)
}

fn parse_dead_token(token: &str) -> Result<Option<DeadPosition>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let rest = token.strip_prefix('d').ok_or_else(bad_token)?;
    let (d, id) = rest.split_once('.').ok_or_else(bad_token)?;
    Ok(Some(DeadPosition {
        dead_at_ms: d.parse().map_err(|_| bad_token())?,
        id: id.parse().map_err(|_| bad_token())?,
    }))
}

fn job(j: JobRecord) -> pb::Job {
    pb::Job {
        id: j.id,
        queue: j.queue,
        payload: j.payload,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        priority: j.priority,
        lease: j.lease.map(|l| l.to_string()).unwrap_or_default(),
        lease_expires_at_ms: j.lease_expires_at_ms,
        enqueued_at_ms: j.enqueued_at_ms,
        last_error: j.last_error,
        ready_at_ms: j.ready_at_ms,
    }
}

fn enqueued(e: crate::store::Enqueued) -> pb::EnqueueResponse {
    pb::EnqueueResponse {
        id: e.id,
        duplicate: e.duplicate,
    }
}

#[tonic::async_trait]
impl QueueService for QueueApi {
    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let req = request.into_inner();
        let job = req
            .job
            .ok_or_else(|| Error::invalid("job", "is required"))?;
        let new = self.new_job("job.", job, self.store.now_ms())?;
        let added = self.store.enqueue(vec![new]).await?;
        let first = added
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("an Enqueue answered no job".into()))?;
        Ok(Response::new(enqueued(first)))
    }

    async fn enqueue_many(
        &self,
        request: Request<pb::EnqueueManyRequest>,
    ) -> Result<Response<pb::EnqueueManyResponse>, Status> {
        let req = request.into_inner();
        not_empty("jobs", req.jobs.len())?;
        at_most("jobs", req.jobs.len(), self.limits.max_batch, "jobs")?;
        let now = self.store.now_ms();
        let jobs = req
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, j)| self.new_job(&format!("jobs[{i}]."), j, now))
            .collect::<Result<Vec<_>, _>>()?;
        let added = self.store.enqueue(jobs).await?;
        Ok(Response::new(pb::EnqueueManyResponse {
            results: added.into_iter().map(enqueued).collect(),
        }))
    }

    async fn dequeue(
        &self,
        request: Request<pb::DequeueRequest>,
    ) -> Result<Response<pb::DequeueResponse>, Status> {
        let req = request.get_ref();
        let wait = self.wait(&request, req.wait_ms);
        let req = request.into_inner();
        not_empty("queues", req.queues.len())?;
        at_most("queues", req.queues.len(), MAX_DEQUEUE_QUEUES, "queues")?;
        for (i, q) in req.queues.iter().enumerate() {
            self.queue(&format!("queues[{i}]"), q)?;
        }
        at_most(
            "max_jobs",
            req.max_jobs as usize,
            self.limits.max_batch,
            "jobs",
        )?;
        Self::duration("lease_ms", req.lease_ms)?;
        at_most("wait_ms", req.wait_ms, MAX_WAIT_MS, "ms")?;
        if req.due_by_ms < 0 {
            return Err(Error::invalid(
                "due_by_ms",
                "must be a time after the Unix epoch (or 0 for now)",
            )
            .into());
        }
        let mut queues = req.queues;
        queues.sort_unstable();
        queues.dedup();
        let ask = DequeueAsk {
            queues,
            max_jobs: (req.max_jobs as usize).max(1),
            lease_ms: req.lease_ms,
            auto_ack: req.auto_ack,
            due_by_ms: (req.due_by_ms > 0).then_some(req.due_by_ms as u64),
            max_bytes: self.limits.max_response_value_bytes(),
        };
        let jobs = self.store.dequeue(ask, wait, &self.stopping).await?;
        Ok(Response::new(pb::DequeueResponse {
            jobs: jobs.into_iter().map(job).collect(),
        }))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let lease = lease(&request.get_ref().lease)?;
        self.store.ack(lease).await?;
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let req = request.into_inner();
        let lease = lease(&req.lease)?;
        if let Some(ms) = req.retry_after_ms {
            Self::duration("retry_after_ms", ms)?;
        }
        at_most("error", req.error.len(), MAX_ERROR_BYTES, "bytes")?;
        let nacked = self
            .store
            .nack(lease, req.retry_after_ms, req.error)
            .await?;
        Ok(Response::new(pb::NackResponse {
            dead: nacked.dead,
            ready_at_ms: nacked.ready_at_ms as i64,
        }))
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let req = request.into_inner();
        let lease = lease(&req.lease)?;
        not_empty("lease_ms", req.lease_ms as usize)?;
        Self::duration("lease_ms", req.lease_ms)?;
        let until = self.store.extend(lease, req.lease_ms).await?;
        Ok(Response::new(pb::ExtendResponse {
            lease_expires_at_ms: until as i64,
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::QueueServiceStatsRequest>,
    ) -> Result<Response<pb::QueueServiceStatsResponse>, Status> {
        let req = request.into_inner();
        self.queue("queue", &req.queue)?;
        let s = self.store.queue_stats(req.queue).await?;
        Ok(Response::new(pb::QueueServiceStatsResponse {
            ready: s.ready,
            delayed: s.delayed,
            leased: s.leased,
            dead: s.dead,
            oldest_ready_age_ms: s.oldest_ready_age_ms,
        }))
    }

    async fn purge(
        &self,
        request: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeResponse>, Status> {
        let req = request.into_inner();
        self.queue("queue", &req.queue)?;
        let deleted = self.store.purge_queue(req.queue).await?;
        Ok(Response::new(pb::PurgeResponse { deleted }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        self.queue("queue", &req.queue)?;
        let limit = self.page_size(req.page_size)?;
        let after = parse_waiting_token(&req.page_token)?;
        let page = self
            .store
            .list_jobs(
                req.queue,
                after,
                limit,
                self.limits.max_response_value_bytes(),
            )
            .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.jobs.into_iter().map(job).collect(),
            next_page_token: page.next.map(waiting_token).unwrap_or_default(),
        }))
    }

    async fn list_dead(
        &self,
        request: Request<pb::ListDeadRequest>,
    ) -> Result<Response<pb::ListDeadResponse>, Status> {
        let req = request.into_inner();
        self.queue("queue", &req.queue)?;
        let limit = self.page_size(req.page_size)?;
        let after = parse_dead_token(&req.page_token)?;
        let page = self
            .store
            .list_dead(
                req.queue,
                after,
                limit,
                self.limits.max_response_value_bytes(),
            )
            .await?;
        Ok(Response::new(pb::ListDeadResponse {
            jobs: page.jobs.into_iter().map(job).collect(),
            next_page_token: page.next.map(dead_token).unwrap_or_default(),
        }))
    }

    async fn retry_dead(
        &self,
        request: Request<pb::RetryDeadRequest>,
    ) -> Result<Response<pb::RetryDeadResponse>, Status> {
        let req = request.into_inner();
        self.queue("queue", &req.queue)?;
        let ids = self.ids(&req.ids)?;
        let retried = self.store.retry_dead(req.queue, ids).await?;
        Ok(Response::new(pb::RetryDeadResponse { retried }))
    }

    async fn purge_dead(
        &self,
        request: Request<pb::PurgeDeadRequest>,
    ) -> Result<Response<pb::PurgeDeadResponse>, Status> {
        let req = request.into_inner();
        self.queue("queue", &req.queue)?;
        let ids = self.ids(&req.ids)?;
        let deleted = self.store.purge_dead(req.queue, ids).await?;
        Ok(Response::new(pb::PurgeDeadResponse { deleted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_nothing_else() {
        assert_eq!(grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", "1é"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn page_tokens_read_back_what_they_wrote() {
        let w = WaitingPosition {
            priority: -7,
            ready_at_ms: 1_700_000_000_000,
            id: 12,
        };
        assert_eq!(parse_waiting_token(&waiting_token(w)).unwrap(), Some(w));
        let d = DeadPosition {
            dead_at_ms: 1_700_000_000_001,
            id: 3,
        };
        assert_eq!(parse_dead_token(&dead_token(d)).unwrap(), Some(d));
        assert_eq!(parse_waiting_token("").unwrap(), None);
        assert_eq!(parse_dead_token("").unwrap(), None);
    }

    #[test]
    fn foreign_page_tokens_are_refused_naming_the_field() {
        for bad in ["x", "w1.2", "w1.2.3.4", "wa.b.c", "d1", "d1.x", "w1.2.3x"] {
            let refused = parse_waiting_token(bad)
                .err()
                .or_else(|| parse_dead_token(bad).err());
            assert!(
                matches!(&refused, Some(Error::InvalidArgument { field, .. }) if field == "page_token"),
                "{bad:?}: {refused:?}"
            );
        }
        assert!(parse_dead_token("w1.2.3").is_err());
        assert!(parse_waiting_token("d1.2").is_err());
    }
}
