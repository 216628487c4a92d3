//! QueueService's guarantees, checked against the real server through its gRPC API, from the
//! contract in `proto/larder/v1/queue.proto`:
//!
//! - Enqueue and EnqueueMany: ids, all-or-nothing batches, dedup keys (a duplicate answers the
//!   first job's id while that job exists in any state, and a new job once it was acked),
//!   `delay_ms` against `run_at_ms`.
//! - Dequeue: priority first, then ready time, then id, across queues; `max_jobs`, `auto_ack`
//!   and `due_by_ms`.
//! - Time, under the manual clock, to the millisecond: delays, lease expiry (the job returns
//!   with its attempt counted and "lease expired" as its error; the old lease is refused and
//!   the job stays), Extend, Nack with and without `retry_after_ms` (backoff inside its
//!   bounds), dead letters after `max_attempts`, Stats' oldest ready age.
//! - Listing and management: ListJobs and ListDead order and paging, RetryDead, PurgeDead,
//!   Purge.
//! - Long-poll: a waiting Dequeue gets a job enqueued by another client; a wait with nothing
//!   ends empty.
//! - Validation: INVALID_ARGUMENT naming the field; a full queue is RESOURCE_EXHAUSTED and
//!   adds nothing.
//! - Persistence across a restart, and 8 consumers draining 10,000 jobs each exactly once.
//!
//! The manual clock never moves by itself, so a lease only runs out when a test advances it;
//! long-polls wait in real time, bounded by generous deadlines that are never asserted short.
//! Crash safety (kill -9 with enqueuers and consumers running) is in `crash.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use larder::Clock;
use larder::pb;
use tonic::{Code, Status};

use crate::common::{Queues, START_MS, TestServer, assert_code, assert_invalid};

/// Bound on anything that waits in real time (a long-poll, a drain): generous, never asserted.
const BOUND: Duration = Duration::from_secs(60);

/// The longest delay, lease or retry the server accepts: 365 days.
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

/// The server's default `queue.retry_min` and `queue.retry_max`.
const RETRY_MIN_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 3_600_000;

/// A job for `queue` with `payload` and every other field at its default.
fn job(queue: &str, payload: &str) -> pb::NewJob {
    pb::NewJob {
        queue: queue.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

/// An Enqueue that must succeed.
async fn enqueue(q: &mut Queues, job: pb::NewJob) -> pb::EnqueueResponse {
    let what = format!("Enqueue to {:?}", job.queue);
    q.enqueue(pb::EnqueueRequest { job: Some(job) })
        .await
        .unwrap_or_else(|s| panic!("{what}: {s:?}"))
        .into_inner()
}

/// An Enqueue of a plain job; returns its id.
async fn put(q: &mut Queues, queue: &str, payload: &str) -> u64 {
    let r = enqueue(q, job(queue, payload)).await;
    assert!(
        !r.duplicate,
        "a job without a dedup key is never a duplicate"
    );
    r.id
}

/// An EnqueueMany that must succeed; returns the ids in request order.
async fn put_many(q: &mut Queues, jobs: Vec<pb::NewJob>) -> Vec<u64> {
    let n = jobs.len();
    let results = q
        .enqueue_many(pb::EnqueueManyRequest { jobs })
        .await
        .unwrap_or_else(|s| panic!("EnqueueMany of {n} jobs: {s:?}"))
        .into_inner()
        .results;
    assert_eq!(results.len(), n, "one answer per job");
    results.into_iter().map(|r| r.id).collect()
}

/// A Dequeue request leasing up to `max_jobs` from `queues` for `lease_ms`, without waiting.
fn take(queues: &[&str], max_jobs: u32, lease_ms: u64) -> pb::DequeueRequest {
    pb::DequeueRequest {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        max_jobs,
        lease_ms,
        ..Default::default()
    }
}

/// A Dequeue that must succeed.
async fn dequeue(q: &mut Queues, req: pb::DequeueRequest) -> Vec<pb::Job> {
    let what = format!("Dequeue from {:?}", req.queues);
    q.dequeue(req)
        .await
        .unwrap_or_else(|s| panic!("{what}: {s:?}"))
        .into_inner()
        .jobs
}

/// Leases at most one job of `queue` for `lease_ms`, without waiting.
async fn take_one(q: &mut Queues, queue: &str, lease_ms: u64) -> Option<pb::Job> {
    let mut jobs = dequeue(q, take(&[queue], 1, lease_ms)).await;
    assert!(jobs.len() <= 1, "max_jobs 1 answered {} jobs", jobs.len());
    jobs.pop()
}

/// Ids of jobs, in order.
fn ids(jobs: &[pb::Job]) -> Vec<u64> {
    jobs.iter().map(|j| j.id).collect()
}

async fn ack(q: &mut Queues, lease: &str) -> Result<pb::AckResponse, Status> {
    q.ack(pb::AckRequest {
        lease: lease.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn nack(
    q: &mut Queues,
    lease: &str,
    retry_after_ms: Option<u64>,
    error: &str,
) -> Result<pb::NackResponse, Status> {
    q.nack(pb::NackRequest {
        lease: lease.into(),
        retry_after_ms,
        error: error.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn extend(q: &mut Queues, lease: &str, lease_ms: u64) -> Result<pb::ExtendResponse, Status> {
    q.extend(pb::ExtendRequest {
        lease: lease.into(),
        lease_ms,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Stats of `queue`, as (ready, delayed, leased, dead).
async fn counts(q: &mut Queues, queue: &str) -> (u64, u64, u64, u64) {
    let s = queue_stats(q, queue).await;
    (s.ready, s.delayed, s.leased, s.dead)
}

async fn queue_stats(q: &mut Queues, queue: &str) -> pb::QueueServiceStatsResponse {
    q.stats(pb::QueueServiceStatsRequest {
        queue: queue.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("Stats of {queue:?}: {s:?}"))
    .into_inner()
}

/// Every waiting job of `queue`, read through ListJobs `page_size` at a time; also returns
/// the number of pages.
async fn list_jobs(q: &mut Queues, queue: &str, page_size: u32) -> (Vec<pb::Job>, usize) {
    every_page(q, queue, page_size, false).await
}

/// Every dead job of `queue`, read through ListDead `page_size` at a time; also returns the
/// number of pages.
async fn list_dead(q: &mut Queues, queue: &str, page_size: u32) -> (Vec<pb::Job>, usize) {
    every_page(q, queue, page_size, true).await
}

/// Every page of ListDead (`dead`) or ListJobs, checking each holds at most `page_size`.
async fn every_page(
    q: &mut Queues,
    queue: &str,
    page_size: u32,
    dead: bool,
) -> (Vec<pb::Job>, usize) {
    let (mut jobs, mut pages, mut token) = (Vec::new(), 0, String::new());
    let rpc = if dead { "ListDead" } else { "ListJobs" };
    loop {
        let (page, next) = if dead {
            q.list_dead(pb::ListDeadRequest {
                queue: queue.into(),
                page_size,
                page_token: token,
            })
            .await
            .map(|r| r.into_inner())
            .map(|p| (p.jobs, p.next_page_token))
        } else {
            q.list_jobs(pb::ListJobsRequest {
                queue: queue.into(),
                page_size,
                page_token: token,
            })
            .await
            .map(|r| r.into_inner())
            .map(|p| (p.jobs, p.next_page_token))
        }
        .unwrap_or_else(|s| panic!("{rpc} of {queue:?}: {s:?}"));
        pages += 1;
        assert!(
            page_size == 0 || page.len() <= page_size as usize,
            "a page holds at most page_size jobs"
        );
        jobs.extend(page);
        if next.is_empty() {
            return (jobs, pages);
        }
        token = next;
        assert!(pages < 10_000, "{rpc} never ends");
    }
}

/// The manual clock's reading, in milliseconds since the epoch.
fn clock_now(server: &TestServer) -> i64 {
    server.clock().now_ms() as i64
}

/// Asserts INVALID_ARGUMENT naming one of `fields` (a nested field may be named by its path,
/// `job.queue`, or by its own name, `queue`).
#[track_caller]
fn assert_invalid_any<T: std::fmt::Debug>(result: Result<T, Status>, fields: &[&str]) {
    let status = assert_code(result, Code::InvalidArgument);
    let is_field_char = |c: char| c.is_ascii_alphanumeric() || "_[].".contains(c);
    let names_one = status
        .message()
        .split(|c: char| !is_field_char(c))
        .any(|word| fields.contains(&word));
    assert!(
        names_one,
        "the message {:?} names none of {fields:?}",
        status.message()
    );
}

// ---------------------------------------------------------------------------------------
// Enqueue and EnqueueMany
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_answers_distinct_ids_and_the_job_comes_back_whole() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let payload = Bytes::from_static(&[0, 255, 1, 2, 0]);
    let a = enqueue(
        &mut q,
        pb::NewJob {
            queue: "mail".into(),
            payload: payload.clone(),
            priority: -3,
            max_attempts: 7,
            ..Default::default()
        },
    )
    .await;
    let b = put(&mut q, "mail", "second").await;
    let c = put(&mut q, "other", "third").await;
    assert!(!a.duplicate);
    assert_eq!(
        BTreeSet::from([a.id, b, c]).len(),
        3,
        "ids are unique across queues"
    );
    assert_eq!(counts(&mut q, "mail").await, (2, 0, 0, 0));
    assert_eq!(counts(&mut q, "other").await, (1, 0, 0, 0));
    assert_eq!(counts(&mut q, "never-used").await, (0, 0, 0, 0));

    let got = dequeue(&mut q, take(&["mail"], 10, 60_000)).await;
    assert_eq!(ids(&got), [b, a.id], "priority 0 before priority -3");
    let first = &got[1];
    assert_eq!(
        (
            first.queue.as_str(),
            &first.payload,
            first.attempt,
            first.max_attempts,
            first.priority,
            first.enqueued_at_ms,
            first.ready_at_ms,
            first.lease_expires_at_ms,
            first.last_error.as_str(),
        ),
        (
            "mail",
            &payload,
            1,
            7,
            -3,
            START_MS as i64,
            START_MS as i64,
            START_MS as i64 + 60_000,
            ""
        )
    );
    assert!(!first.lease.is_empty(), "a leased job carries its lease");
    assert_ne!(got[0].lease, got[1].lease, "each lease is its own");
    assert_eq!(
        got[0].max_attempts, 5,
        "max_attempts 0 is the server's default"
    );
    assert_eq!(counts(&mut q, "mail").await, (0, 0, 2, 0));
    for j in &got {
        ack(&mut q, &j.lease).await.expect("Ack of a held lease");
    }
    assert_eq!(counts(&mut q, "mail").await, (0, 0, 0, 0));
    assert!(take_one(&mut q, "mail", 0).await.is_none());

    // Ids are never reused, even once the jobs are gone.
    let d = put(&mut q, "mail", "fourth").await;
    assert!(
        d > a.id.max(b).max(c),
        "a new id ({d}) after {a:?}, {b}, {c}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_many_adds_every_job_or_none() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let added = put_many(&mut q, vec![job("a", "1"), job("b", "2"), job("a", "3")]).await;
    assert_eq!(BTreeSet::from_iter(added.iter()).len(), 3);
    assert_eq!(counts(&mut q, "a").await, (2, 0, 0, 0));
    assert_eq!(counts(&mut q, "b").await, (1, 0, 0, 0));

    // One bad job anywhere in the batch: nothing of the batch is added.
    let bad_cases: Vec<(usize, pb::NewJob, &str)> = vec![
        (2, job("", "x"), "jobs[2].queue"),
        (1, job(&"q".repeat(129), "x"), "jobs[1].queue"),
        (
            3,
            pb::NewJob {
                delay_ms: 5,
                run_at_ms: START_MS as i64 + 5,
                ..job("a", "x")
            },
            "jobs[3]",
        ),
        (
            0,
            pb::NewJob {
                delay_ms: YEAR_MS + 1,
                ..job("a", "x")
            },
            "jobs[0].delay_ms",
        ),
    ];
    for (at, bad, field) in bad_cases {
        let mut jobs = vec![
            job("a", "ok"),
            job("b", "ok"),
            job("c", "ok"),
            job("a", "ok"),
        ];
        jobs[at] = bad;
        let result = q.enqueue_many(pb::EnqueueManyRequest { jobs }).await;
        if field == "jobs[3]" {
            // Both delay_ms and run_at_ms: either may be the one named.
            assert_invalid_any(result, &["jobs[3].delay_ms", "jobs[3].run_at_ms"]);
        } else {
            assert_invalid(result, field);
        }
        assert_eq!(counts(&mut q, "a").await, (2, 0, 0, 0), "after {field}");
        assert_eq!(counts(&mut q, "b").await, (1, 0, 0, 0), "after {field}");
        assert_eq!(counts(&mut q, "c").await, (0, 0, 0, 0), "after {field}");
    }

    assert_invalid(
        q.enqueue_many(pb::EnqueueManyRequest { jobs: vec![] })
            .await,
        "jobs",
    );
    let too_many = (0..1001).map(|i| job("c", &i.to_string())).collect();
    assert_invalid(
        q.enqueue_many(pb::EnqueueManyRequest { jobs: too_many })
            .await,
        "jobs",
    );
    assert_eq!(counts(&mut q, "c").await, (0, 0, 0, 0));
    let most = (0..1000).map(|i| job("c", &i.to_string())).collect();
    assert_eq!(put_many(&mut q, most).await.len(), 1000, "1000 jobs fit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dedup_key_answers_the_first_job_while_it_exists_in_any_state() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let keyed = |payload: &str| pb::NewJob {
        dedup_key: "report-42".into(),
        max_attempts: 1,
        ..job("reports", payload)
    };

    // Ready.
    let first = enqueue(&mut q, keyed("first")).await;
    assert!(!first.duplicate);
    let again = enqueue(&mut q, keyed("second")).await;
    assert_eq!((again.id, again.duplicate), (first.id, true));
    // The same key in another queue, or no key, is another job.
    let elsewhere = enqueue(
        &mut q,
        pb::NewJob {
            dedup_key: "report-42".into(),
            ..job("other", "x")
        },
    )
    .await;
    assert!(!elsewhere.duplicate);
    assert_ne!(elsewhere.id, first.id);
    assert_eq!(counts(&mut q, "reports").await, (1, 0, 0, 0));

    // Leased.
    let leased = take_one(&mut q, "reports", 10_000).await.expect("the job");
    assert_eq!((leased.id, &leased.payload[..]), (first.id, &b"first"[..]));
    let again = enqueue(&mut q, keyed("third")).await;
    assert_eq!((again.id, again.duplicate), (first.id, true));

    // Dead (max_attempts 1: one Nack kills it).
    let n = nack(&mut q, &leased.lease, Some(0), "boom").await.unwrap();
    assert!(n.dead);
    assert_eq!(counts(&mut q, "reports").await, (0, 0, 0, 1));
    let again = enqueue(&mut q, keyed("fourth")).await;
    assert_eq!((again.id, again.duplicate), (first.id, true));
    // A batch with a duplicate: that one answers the first id, the others are added.
    let batch = q
        .enqueue_many(pb::EnqueueManyRequest {
            jobs: vec![job("reports", "plain"), keyed("fifth")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(!batch[0].duplicate);
    assert_eq!((batch[1].id, batch[1].duplicate), (first.id, true));
    assert_eq!(counts(&mut q, "reports").await, (1, 0, 0, 1));

    // Retried from the dead-letter list and acked: the key is free again.
    let retried = q
        .retry_dead(pb::RetryDeadRequest {
            queue: "reports".into(),
            ids: vec![first.id],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.retried, 1);
    let again = enqueue(&mut q, keyed("sixth")).await;
    assert_eq!((again.id, again.duplicate), (first.id, true), "ready again");
    let jobs = dequeue(&mut q, take(&["reports"], 10, 10_000)).await;
    let first_job = jobs.iter().find(|j| j.id == first.id).expect("retried");
    ack(&mut q, &first_job.lease).await.unwrap();
    let fresh = enqueue(&mut q, keyed("seventh")).await;
    assert!(!fresh.duplicate, "the first job was acked: a new job");
    assert_ne!(fresh.id, first.id);

    // Within one batch, the second job with a key is a duplicate of the first.
    let batch = q
        .enqueue_many(pb::EnqueueManyRequest {
            jobs: vec![
                pb::NewJob {
                    dedup_key: "k".into(),
                    ..job("batch", "1")
                },
                pb::NewJob {
                    dedup_key: "k".into(),
                    ..job("batch", "2")
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(!batch[0].duplicate);
    assert_eq!((batch[1].id, batch[1].duplicate), (batch[0].id, true));
    assert_eq!(counts(&mut q, "batch").await, (1, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purged_job_frees_its_dedup_key() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let keyed = pb::NewJob {
        dedup_key: "once".into(),
        ..job("p", "x")
    };
    let first = enqueue(&mut q, keyed.clone()).await;
    let purged = q
        .purge(pb::PurgeRequest { queue: "p".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.deleted, 1);
    let second = enqueue(&mut q, keyed).await;
    assert!(!second.duplicate, "the first job no longer exists");
    assert_ne!(second.id, first.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_at_and_delay_are_exact_and_exclusive() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();

    assert_invalid_any(
        q.enqueue(pb::EnqueueRequest {
            job: Some(pb::NewJob {
                delay_ms: 1_000,
                run_at_ms: START_MS as i64 + 1_000,
                ..job("t", "both")
            }),
        })
        .await,
        &["job.delay_ms", "job.run_at_ms", "delay_ms", "run_at_ms"],
    );
    assert_eq!(counts(&mut q, "t").await, (0, 0, 0, 0), "nothing added");

    let delayed = enqueue(
        &mut q,
        pb::NewJob {
            delay_ms: 5_000,
            ..job("t", "delayed")
        },
    )
    .await
    .id;
    let at = enqueue(
        &mut q,
        pb::NewJob {
            run_at_ms: START_MS as i64 + 8_000,
            ..job("t", "at")
        },
    )
    .await
    .id;
    assert_eq!(counts(&mut q, "t").await, (0, 2, 0, 0));
    let (listed, _) = list_jobs(&mut q, "t", 0).await;
    assert_eq!(
        listed
            .iter()
            .map(|j| (j.id, j.ready_at_ms))
            .collect::<Vec<_>>(),
        [
            (delayed, START_MS as i64 + 5_000),
            (at, START_MS as i64 + 8_000)
        ]
    );

    clock.advance_ms(4_999);
    assert!(take_one(&mut q, "t", 0).await.is_none(), "1 ms early");
    clock.advance_ms(1);
    let j = take_one(&mut q, "t", 0).await.expect("due now");
    assert_eq!(
        (j.id, j.ready_at_ms, j.enqueued_at_ms),
        (delayed, START_MS as i64 + 5_000, START_MS as i64)
    );
    assert_eq!(counts(&mut q, "t").await, (0, 1, 1, 0));

    clock.set_ms(START_MS + 7_999);
    assert!(take_one(&mut q, "t", 0).await.is_none(), "1 ms early");
    clock.advance_ms(1);
    let j = take_one(&mut q, "t", 0).await.expect("due now");
    assert_eq!(j.id, at);

    // A run_at_ms in the past is ready at once, and keeps its place by that time.
    let now_job = put(&mut q, "past", "now").await;
    let past = enqueue(
        &mut q,
        pb::NewJob {
            run_at_ms: START_MS as i64,
            ..job("past", "earlier")
        },
    )
    .await
    .id;
    let got = dequeue(&mut q, take(&["past"], 2, 0)).await;
    assert_eq!(ids(&got), [past, now_job], "the earlier ready time first");
    assert_eq!(got[0].ready_at_ms, START_MS as i64);
}

// ---------------------------------------------------------------------------------------
// Dequeue order and options
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn dequeue_takes_priority_then_ready_time_then_id() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let base = START_MS as i64;
    let with = |payload: &str, priority: i32, run_at_ms: i64| pb::NewJob {
        priority,
        run_at_ms,
        ..job("o", payload)
    };
    // Enqueued in an order that matches none of the three keys.
    let ids_in_order = put_many(
        &mut q,
        vec![
            with("p0-late", 0, base - 10),   // 0
            with("p5-late", 5, base - 10),   // 1
            with("p0-early", 0, base - 500), // 2
            with("p-2", -2, base - 900),     // 3
            with("p5-early", 5, base - 20),  // 4
            with("p0-late-b", 0, base - 10), // 5
            with("p5-late-b", 5, base - 10), // 6
        ],
    )
    .await;
    let expected: Vec<u64> = [4, 1, 6, 2, 0, 5, 3]
        .iter()
        .map(|&i| ids_in_order[i])
        .collect();
    let (listed, _) = list_jobs(&mut q, "o", 0).await;
    assert_eq!(ids(&listed), expected, "ListJobs shows Dequeue's order");
    assert!(listed.iter().all(|j| j.lease.is_empty()));
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(take_one(&mut q, "o", 0).await.expect("a job").id);
    }
    assert_eq!(got, expected);
    assert!(take_one(&mut q, "o", 0).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn dequeue_orders_jobs_across_queues() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    let a1 = put(&mut q, "a", "a1").await;
    clock.advance_ms(1);
    let b1 = put(&mut q, "b", "b1").await;
    clock.advance_ms(1);
    let a2 = put(&mut q, "a", "a2").await;
    clock.advance_ms(1);
    let c1 = put(&mut q, "c", "c1").await;
    let b_high = enqueue(
        &mut q,
        pb::NewJob {
            priority: 1,
            ..job("b", "b-high")
        },
    )
    .await
    .id;
    let got = dequeue(&mut q, take(&["a", "b"], 10, 0)).await;
    assert_eq!(
        ids(&got),
        [b_high, a1, b1, a2],
        "priority across queues, then ready time; queue c not asked for"
    );
    assert_eq!(
        got.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>(),
        ["b", "a", "b", "a"]
    );
    assert_eq!(counts(&mut q, "c").await, (1, 0, 0, 0));
    assert_eq!(ids(&dequeue(&mut q, take(&["c", "a"], 10, 0)).await), [c1]);

    // A queue named twice is still one queue: each job is handed out once.
    let twice = put_many(&mut q, vec![job("t", "1"), job("t", "2")]).await;
    match q.dequeue(take(&["t", "t"], 10, 0)).await {
        Ok(r) => assert_eq!(ids(&r.into_inner().jobs), twice),
        Err(status) => assert_invalid_any(Err::<(), _>(status), &["queues", "queues[1]"]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_jobs_bounds_a_dequeue() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let all = put_many(&mut q, (0..5).map(|i| job("m", &i.to_string())).collect()).await;
    let first = dequeue(&mut q, take(&["m"], 0, 0)).await;
    assert_eq!(ids(&first), all[..1], "max_jobs 0 is 1");
    assert_eq!(
        first[0].lease_expires_at_ms,
        START_MS as i64 + 30_000,
        "lease_ms 0 is the server's 30 s"
    );
    let next = dequeue(&mut q, take(&["m"], 3, 0)).await;
    assert_eq!(ids(&next), all[1..4]);
    let rest = dequeue(&mut q, take(&["m"], 1000, 0)).await;
    assert_eq!(ids(&rest), all[4..]);
    assert_eq!(counts(&mut q, "m").await, (0, 0, 5, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_ack_removes_the_jobs_it_hands_out() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let all = put_many(&mut q, (0..3).map(|i| job("aa", &i.to_string())).collect()).await;
    let got = dequeue(
        &mut q,
        pb::DequeueRequest {
            auto_ack: true,
            ..take(&["aa"], 2, 0)
        },
    )
    .await;
    assert_eq!(ids(&got), all[..2]);
    for j in &got {
        assert!(j.lease.is_empty(), "an auto-acked job has no lease: {j:?}");
        assert_eq!(j.attempt, 1, "it counts one attempt");
    }
    assert_eq!(
        counts(&mut q, "aa").await,
        (1, 0, 0, 0),
        "removed, not leased"
    );
    let (listed, _) = list_jobs(&mut q, "aa", 0).await;
    assert_eq!(ids(&listed), all[2..]);
    server.clock().advance_ms(10 * 3_600_000);
    let rest = dequeue(&mut q, take(&["aa"], 10, 0)).await;
    assert_eq!(ids(&rest), all[2..], "never handed out again");
}

#[tokio::test(flavor = "multi_thread")]
async fn due_by_takes_the_jobs_due_by_that_time() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let base = START_MS as i64;
    let at = |payload: &str, run_at_ms: i64| pb::NewJob {
        run_at_ms,
        ..job("s", payload)
    };
    let ids_ = put_many(
        &mut q,
        vec![
            at("past", base - 1_000),
            at("soon", base + 10_000),
            at("later", base + 60_000),
        ],
    )
    .await;
    let due_by = |due_by_ms: i64| pb::DequeueRequest {
        due_by_ms,
        ..take(&["s"], 10, 5_000)
    };
    // In the past: only what was due by then.
    assert!(dequeue(&mut q, due_by(base - 1_001)).await.is_empty());
    let got = dequeue(&mut q, due_by(base - 1_000)).await;
    assert_eq!(ids(&got), [ids_[0]]);
    assert_eq!(
        got[0].lease_expires_at_ms,
        base + 5_000,
        "the lease starts now"
    );
    // In the future: what is due by then, and not beyond.
    assert!(dequeue(&mut q, due_by(base + 9_999)).await.is_empty());
    let got = dequeue(&mut q, due_by(base + 10_000)).await;
    assert_eq!(ids(&got), [ids_[1]]);
    assert_eq!(got[0].lease_expires_at_ms, base + 5_000);
    assert_eq!(counts(&mut q, "s").await, (0, 1, 2, 0));
    assert!(take_one(&mut q, "s", 0).await.is_none(), "now, nothing");
}

// ---------------------------------------------------------------------------------------
// Leases, Nack, dead letters
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_returns_the_job_and_refuses_the_old_lease() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    let id = put(&mut q, "l", "work").await;
    let first = take_one(&mut q, "l", 1_000).await.expect("the job");
    assert_eq!(
        (first.id, first.attempt, first.lease_expires_at_ms),
        (id, 1, START_MS as i64 + 1_000)
    );

    clock.advance_ms(999);
    assert!(take_one(&mut q, "l", 1_000).await.is_none(), "1 ms left");
    assert_eq!(counts(&mut q, "l").await, (0, 0, 1, 0));
    clock.advance_ms(1);
    assert_eq!(
        counts(&mut q, "l").await,
        (1, 0, 0, 0),
        "ready again at the instant the lease ends"
    );
    let (waiting, _) = list_jobs(&mut q, "l", 0).await;
    assert_eq!(
        ids(&waiting),
        [id],
        "ListJobs shows it waiting as Stats does"
    );

    // Refused while nobody holds the job: it stays ready.
    assert_code(ack(&mut q, &first.lease).await, Code::FailedPrecondition);
    assert_code(
        nack(&mut q, &first.lease, Some(0), "late").await,
        Code::FailedPrecondition,
    );
    assert_code(
        extend(&mut q, &first.lease, 10_000).await,
        Code::FailedPrecondition,
    );
    assert_eq!(counts(&mut q, "l").await, (1, 0, 0, 0));

    let second = take_one(&mut q, "l", 1_000)
        .await
        .expect("handed out again");
    assert_eq!(
        (
            second.id,
            second.attempt,
            second.last_error.as_str(),
            &second.payload[..]
        ),
        (id, 2, "lease expired", &b"work"[..])
    );
    assert_ne!(second.lease, first.lease, "a new lease per delivery");
    assert_eq!(second.lease_expires_at_ms, clock_now(&server) + 1_000);

    // Refused while another worker holds it: that worker's lease is untouched.
    assert_code(ack(&mut q, &first.lease).await, Code::FailedPrecondition);
    assert_code(
        nack(&mut q, &first.lease, Some(0), "late").await,
        Code::FailedPrecondition,
    );
    assert_code(
        extend(&mut q, &first.lease, 10_000).await,
        Code::FailedPrecondition,
    );
    assert_eq!(counts(&mut q, "l").await, (0, 0, 1, 0));
    ack(&mut q, &second.lease)
        .await
        .expect("the current lease acks");
    assert_eq!(counts(&mut q, "l").await, (0, 0, 0, 0));

    // Once acked, every lease of the job is refused.
    assert_code(ack(&mut q, &second.lease).await, Code::FailedPrecondition);
    assert_code(
        extend(&mut q, &second.lease, 1_000).await,
        Code::FailedPrecondition,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_that_ran_out_counts_for_purge_and_the_dead_letter_calls_at_once() {
    // No Dequeue runs between the expiry and the calls: each must see the job as Stats does.
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    put(&mut q, "x", "ready again").await;
    take_one(&mut q, "x", 1_000).await.unwrap();
    clock.advance_ms(1_000);
    assert_eq!(counts(&mut q, "x").await, (1, 0, 0, 0));
    let purged = q
        .purge(pb::PurgeRequest { queue: "x".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.deleted, 1, "a job ready again is purged");
    assert_eq!(counts(&mut q, "x").await, (0, 0, 0, 0));

    let single = |payload: &str| pb::NewJob {
        max_attempts: 1,
        ..job("y", payload)
    };
    let first = enqueue(&mut q, single("dies")).await.id;
    take_one(&mut q, "y", 1_000).await.unwrap();
    clock.advance_ms(1_000);
    assert_eq!(counts(&mut q, "y").await, (0, 0, 0, 1));
    let retried = q
        .retry_dead(pb::RetryDeadRequest {
            queue: "y".into(),
            ids: vec![first],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.retried, 1, "a job dead by its lease is retried");
    let j = take_one(&mut q, "y", 1_000).await.expect("retried");
    assert_eq!((j.id, j.attempt), (first, 1));
    clock.advance_ms(1_000);
    let purged = q
        .purge_dead(pb::PurgeDeadRequest {
            queue: "y".into(),
            ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.deleted, 1, "a job dead by its lease is purged");
    assert_eq!(counts(&mut q, "y").await, (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn extend_moves_the_expiry() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    put(&mut q, "e", "long job").await;
    let j = take_one(&mut q, "e", 1_000).await.expect("the job");
    clock.advance_ms(900);
    let e = extend(&mut q, &j.lease, 5_000).await.expect("Extend");
    let until = START_MS as i64 + 900 + 5_000;
    assert_eq!(e.lease_expires_at_ms, until);

    clock.set_ms(until as u64 - 1);
    assert!(take_one(&mut q, "e", 1_000).await.is_none(), "still held");
    assert_eq!(counts(&mut q, "e").await, (0, 0, 1, 0));
    // Extend can also shorten: now + lease_ms.
    let e = extend(&mut q, &j.lease, 10).await.expect("Extend");
    assert_eq!(e.lease_expires_at_ms, until - 1 + 10);
    clock.advance_ms(9);
    assert!(take_one(&mut q, "e", 1_000).await.is_none());
    clock.advance_ms(1);
    let again = take_one(&mut q, "e", 1_000).await.expect("expired");
    assert_eq!(again.attempt, 2);
    assert_code(
        extend(&mut q, &j.lease, 5_000).await,
        Code::FailedPrecondition,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_with_retry_after_is_exact() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    let id = put(&mut q, "n", "x").await;
    let j = take_one(&mut q, "n", 60_000).await.unwrap();
    clock.advance_ms(100);
    let r = nack(&mut q, &j.lease, Some(2_500), "smtp 451")
        .await
        .expect("Nack");
    let ready_at = START_MS as i64 + 100 + 2_500;
    assert_eq!((r.dead, r.ready_at_ms), (false, ready_at));
    assert_eq!(counts(&mut q, "n").await, (0, 1, 0, 0));
    assert_code(ack(&mut q, &j.lease).await, Code::FailedPrecondition);

    clock.set_ms(ready_at as u64 - 1);
    assert!(take_one(&mut q, "n", 0).await.is_none(), "1 ms early");
    clock.advance_ms(1);
    let again = take_one(&mut q, "n", 0).await.expect("ready");
    assert_eq!(
        (
            again.id,
            again.attempt,
            again.last_error.as_str(),
            again.ready_at_ms
        ),
        (id, 2, "smtp 451", ready_at)
    );

    // retry_after_ms 0 (set, unlike unset) is ready at once.
    let r = nack(&mut q, &again.lease, Some(0), "again").await.unwrap();
    assert_eq!(r.ready_at_ms, ready_at);
    let third = take_one(&mut q, "n", 0).await.expect("ready at once");
    assert_eq!((third.attempt, third.last_error.as_str()), (3, "again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_without_retry_after_backs_off_within_the_bounds() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    let id = enqueue(
        &mut q,
        pb::NewJob {
            max_attempts: 40,
            ..job("b", "x")
        },
    )
    .await
    .id;
    let mut delays = Vec::new();
    for attempt in 1..=30u32 {
        let now_ms = clock_now(&server);
        // Delays can reach an hour: every attempt is taken by `due_by_ms`, without moving
        // the clock, or by moving it to the ready time.
        let j = dequeue(
            &mut q,
            pb::DequeueRequest {
                due_by_ms: now_ms,
                ..take(&["b"], 1, 60_000)
            },
        )
        .await
        .pop()
        .unwrap_or_else(|| panic!("attempt {attempt} is ready"));
        assert_eq!((j.id, j.attempt), (id, attempt));
        let r = nack(&mut q, &j.lease, None, "transient").await.unwrap();
        assert!(!r.dead);
        let delay = (r.ready_at_ms - now_ms) as u64;
        // Doubling from retry_min, capped at retry_max, with jitter: never below retry_min,
        // never above retry_max, and never above twice the attempt's doubled base.
        let base = RETRY_MIN_MS.saturating_mul(1 << (attempt - 1).min(40));
        assert!(
            (RETRY_MIN_MS..=RETRY_MAX_MS).contains(&delay) && delay <= base.saturating_mul(2),
            "attempt {attempt}: a backoff of {delay} ms (base {base} ms)"
        );
        delays.push(delay);
        // Exact: not ready 1 ms early, ready at the instant.
        clock.set_ms(r.ready_at_ms as u64 - 1);
        assert!(
            take_one(&mut q, "b", 0).await.is_none(),
            "attempt {attempt}"
        );
        assert_eq!(counts(&mut q, "b").await, (0, 1, 0, 0));
        clock.set_ms(r.ready_at_ms as u64);
    }
    // The backoff grows: the late attempts, capped at retry_max, wait far longer on average
    // than the first ones (at most 8 s each), whatever the jitter.
    let early = *delays[..3].iter().max().unwrap();
    let late_mean = delays[20..].iter().sum::<u64>() / 10;
    assert!(
        late_mean > 10 * early,
        "backoffs do not grow with the attempts: {delays:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_dies_after_max_attempts_with_its_last_error() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    let id = enqueue(
        &mut q,
        pb::NewJob {
            max_attempts: 3,
            ..job("d", "doomed")
        },
    )
    .await
    .id;
    // Attempt 1 ends in a Nack, attempt 2 in an expired lease, attempt 3 in a Nack.
    let j = take_one(&mut q, "d", 1_000).await.unwrap();
    let r = nack(&mut q, &j.lease, Some(0), "first failure")
        .await
        .unwrap();
    assert!(!r.dead);
    let j = take_one(&mut q, "d", 1_000).await.unwrap();
    assert_eq!((j.attempt, j.last_error.as_str()), (2, "first failure"));
    clock.advance_ms(1_000);
    let j = take_one(&mut q, "d", 1_000).await.unwrap();
    assert_eq!((j.attempt, j.last_error.as_str()), (3, "lease expired"));
    let r = nack(&mut q, &j.lease, None, "final failure").await.unwrap();
    assert_eq!((r.dead, r.ready_at_ms), (true, 0));
    assert_eq!(counts(&mut q, "d").await, (0, 0, 0, 1));
    clock.advance_ms(10 * 3_600_000);
    assert!(
        take_one(&mut q, "d", 0).await.is_none(),
        "a dead job is never handed out"
    );
    let (dead, _) = list_dead(&mut q, "d", 0).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].id,
            dead[0].attempt,
            dead[0].max_attempts,
            dead[0].last_error.as_str(),
            &dead[0].payload[..],
            dead[0].lease.as_str()
        ),
        (id, 3, 3, "final failure", &b"doomed"[..], "")
    );
    assert_code(ack(&mut q, &j.lease).await, Code::FailedPrecondition);

    // A job whose last lease expires dies with "lease expired".
    let id = enqueue(
        &mut q,
        pb::NewJob {
            max_attempts: 1,
            ..job("d2", "abandoned")
        },
    )
    .await
    .id;
    take_one(&mut q, "d2", 500).await.unwrap();
    clock.advance_ms(500);
    assert_eq!(counts(&mut q, "d2").await, (0, 0, 0, 1));
    let (dead, _) = list_dead(&mut q, "d2", 0).await;
    assert_eq!(dead.len(), 1, "ListDead shows the dead job as Stats does");
    assert_eq!(
        (dead[0].id, dead[0].attempt, dead[0].last_error.as_str()),
        (id, 1, "lease expired")
    );
    assert!(take_one(&mut q, "d2", 0).await.is_none());
}

/// Kills `n` jobs of `queue`, which holds no other ready job (max_attempts 1, one Nack each, the clock moving 1 ms between
/// deaths so that their order is known); returns their ids in order of death.
async fn kill_jobs(server: &TestServer, q: &mut Queues, queue: &str, n: usize) -> Vec<u64> {
    let mut dead = Vec::new();
    let jobs = (0..n)
        .map(|i| pb::NewJob {
            max_attempts: 1,
            ..job(queue, &format!("dead-{i}"))
        })
        .collect();
    put_many(q, jobs).await;
    for i in 0..n {
        let j = take_one(q, queue, 60_000).await.expect("a job to kill");
        let r = nack(q, &j.lease, None, &format!("error {i}"))
            .await
            .unwrap();
        assert!(r.dead);
        dead.push(j.id);
        server.clock().advance_ms(1);
    }
    dead
}

#[tokio::test(flavor = "multi_thread")]
async fn list_dead_pages_oldest_death_first() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let mut deaths = kill_jobs(&server, &mut q, "ld", 7).await;
    // Killed in the reverse order of their ids, so that id order is not death order.
    deaths.reverse();
    let ordered_by_death = kill_again_in_reverse(&server, &mut q, "ld", &deaths).await;

    let (all, pages) = list_dead(&mut q, "ld", 3).await;
    assert_eq!(ids(&all), ordered_by_death);
    assert_eq!(pages, 3, "7 jobs in pages of 3");
    let (all, pages) = list_dead(&mut q, "ld", 7).await;
    assert_eq!((ids(&all), pages), (ordered_by_death.clone(), 1));
    let (all, _) = list_dead(&mut q, "ld", 1).await;
    assert_eq!(ids(&all), ordered_by_death);
    assert!(list_dead(&mut q, "elsewhere", 0).await.0.is_empty());
}

/// Retries every dead job of `queue`, then kills them again in the order `order`; returns
/// that order.
async fn kill_again_in_reverse(
    server: &TestServer,
    q: &mut Queues,
    queue: &str,
    order: &[u64],
) -> Vec<u64> {
    let retried = q
        .retry_dead(pb::RetryDeadRequest {
            queue: queue.into(),
            ids: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .retried;
    assert_eq!(retried, order.len() as u64);
    let mut leases = BTreeMap::new();
    for j in dequeue(q, take(&[queue], 1000, 60_000)).await {
        assert_eq!(j.attempt, 1, "RetryDead resets the attempts");
        leases.insert(j.id, j.lease);
    }
    for id in order {
        let lease = leases.remove(id).expect("every retried job is handed out");
        assert!(nack(q, &lease, None, "again").await.unwrap().dead);
        server.clock().advance_ms(1);
    }
    order.to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_dead_and_purge_dead_take_ids_or_all() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let dead = kill_jobs(&server, &mut q, "rd", 5).await;
    let other = kill_jobs(&server, &mut q, "rd-other", 1).await;

    // By id; ids of other queues, or not dead, are not touched.
    let live = put(&mut q, "rd", "alive").await;
    let r = q
        .retry_dead(pb::RetryDeadRequest {
            queue: "rd".into(),
            ids: vec![dead[1], dead[3], other[0], live],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.retried, 2);
    assert_eq!(counts(&mut q, "rd").await, (3, 0, 0, 3));
    assert_eq!(counts(&mut q, "rd-other").await, (0, 0, 0, 1));
    let got = dequeue(&mut q, take(&["rd"], 10, 60_000)).await;
    let retried: BTreeMap<u64, &pb::Job> = got.iter().map(|j| (j.id, j)).collect();
    for id in [dead[1], dead[3]] {
        let j = retried[&id];
        assert_eq!(j.attempt, 1, "attempts reset");
        assert_eq!(j.max_attempts, 1);
    }
    assert!(retried.contains_key(&live));

    let p = q
        .purge_dead(pb::PurgeDeadRequest {
            queue: "rd".into(),
            ids: vec![dead[0], other[0]],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.deleted, 1);
    let (listed, _) = list_dead(&mut q, "rd", 0).await;
    assert_eq!(ids(&listed), [dead[2], dead[4]]);

    assert_eq!(counts(&mut q, "rd").await, (0, 0, 3, 2));
    kill_again_in_reverse(&server, &mut q, "rd", &[dead[4], dead[2]]).await;
    let (listed, _) = list_dead(&mut q, "rd", 0).await;
    assert_eq!(
        ids(&listed),
        [dead[4], dead[2]],
        "in their new order of death"
    );
    let p = q
        .purge_dead(pb::PurgeDeadRequest {
            queue: "rd".into(),
            ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.deleted, 2);
    assert_eq!(counts(&mut q, "rd").await, (0, 0, 3, 0));
    assert_eq!(
        counts(&mut q, "rd-other").await,
        (0, 0, 0, 1),
        "another queue's dead jobs stay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_removes_ready_and_delayed_jobs_only() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    kill_jobs(&server, &mut q, "pg", 1).await;
    put_many(&mut q, vec![job("pg", "1"), job("pg", "2"), job("pg", "3")]).await;
    let leased = take_one(&mut q, "pg", 60_000).await.unwrap();
    enqueue(
        &mut q,
        pb::NewJob {
            delay_ms: 1_000,
            ..job("pg", "later")
        },
    )
    .await;
    put(&mut q, "pg-other", "stays").await;
    assert_eq!(counts(&mut q, "pg").await, (2, 1, 1, 1));

    let r = q
        .purge(pb::PurgeRequest { queue: "pg".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 3);
    assert_eq!(counts(&mut q, "pg").await, (0, 0, 1, 1));
    assert_eq!(counts(&mut q, "pg-other").await, (1, 0, 0, 0));
    ack(&mut q, &leased.lease)
        .await
        .expect("a leased job survives a Purge");
    assert_eq!(list_dead(&mut q, "pg", 0).await.0.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_count_by_state_and_age_the_oldest_ready_job() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let clock = server.clock();
    assert_eq!(
        queue_stats(&mut q, "st").await,
        pb::QueueServiceStatsResponse::default()
    );
    put(&mut q, "st", "old").await;
    clock.advance_ms(1_234);
    put(&mut q, "st", "new").await;
    let s = queue_stats(&mut q, "st").await;
    assert_eq!((s.ready, s.oldest_ready_age_ms), (2, 1_234));

    // Leasing the oldest leaves the younger as the oldest ready one.
    let j = take_one(&mut q, "st", 60_000).await.unwrap();
    clock.advance_ms(100);
    let s = queue_stats(&mut q, "st").await;
    assert_eq!((s.ready, s.leased, s.oldest_ready_age_ms), (1, 1, 100));

    // A delayed job ages from when it became ready, not from its enqueue.
    enqueue(
        &mut q,
        pb::NewJob {
            delay_ms: 500,
            ..job("st", "delayed")
        },
    )
    .await;
    take_one(&mut q, "st", 60_000).await.unwrap();
    let s = queue_stats(&mut q, "st").await;
    assert_eq!(
        (s.ready, s.delayed, s.leased, s.oldest_ready_age_ms),
        (0, 1, 2, 0),
        "nothing ready: age 0"
    );
    clock.advance_ms(700);
    let s = queue_stats(&mut q, "st").await;
    assert_eq!(
        (s.ready, s.delayed, s.oldest_ready_age_ms),
        (1, 0, 200),
        "ready since 200 ms"
    );
    nack(&mut q, &j.lease, Some(0), "x").await.unwrap();
    let s = queue_stats(&mut q, "st").await;
    assert_eq!((s.ready, s.leased, s.oldest_ready_age_ms), (2, 1, 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_jobs_pages_in_dequeue_order_without_leasing() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let base = START_MS as i64;
    let mut jobs = Vec::new();
    for i in 0..25i64 {
        jobs.push(pb::NewJob {
            priority: (i % 3) as i32,
            run_at_ms: base + (i * 7919) % 1_000 - 500,
            ..job("lj", &i.to_string())
        });
    }
    let added = put_many(&mut q, jobs.clone()).await;
    let mut expected: Vec<(i32, i64, u64)> = jobs
        .iter()
        .zip(&added)
        .map(|(j, &id)| (-j.priority, j.run_at_ms, id))
        .collect();
    expected.sort();
    let expected: Vec<u64> = expected.into_iter().map(|(_, _, id)| id).collect();

    let mut wrong = Vec::new();
    for page_size in [1, 4, 25, 1000, 0] {
        let (listed, pages) = list_jobs(&mut q, "lj", page_size).await;
        if ids(&listed) != expected || (page_size == 4 && pages != 7) {
            wrong.push((page_size, pages, ids(&listed)));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected {expected:?}; (page size, pages, listed): {wrong:?}"
    );
    assert_eq!(counts(&mut q, "lj").await.2, 0, "listing leases nothing");
    // Once all are due, Dequeue hands them out in the listed order.
    server.clock().advance_ms(500);
    let got = dequeue(&mut q, take(&["lj"], 1000, 0)).await;
    assert_eq!(ids(&got), expected);
    assert!(
        list_jobs(&mut q, "lj", 0).await.0.is_empty(),
        "leased: not listed"
    );
}

// ---------------------------------------------------------------------------------------
// Long-poll
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_dequeue_gets_a_job_enqueued_by_another_client() {
    let server = TestServer::start().await;
    let mut waiter = server.queue().await;
    let mut producer = server.queue().await;
    // The waiter waits up to 30 s; the answer must come from the Enqueue, which the test's
    // bound (shorter than the wait) tells apart from the wait running out.
    let waiting = tokio::spawn(async move {
        dequeue(
            &mut waiter,
            pb::DequeueRequest {
                wait_ms: 30_000,
                ..take(&["idle", "lp"], 1, 10_000)
            },
        )
        .await
    });
    // Give the Dequeue a moment to start waiting (the test passes either way: a Dequeue that
    // arrives after the Enqueue finds the job at once).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = put(&mut producer, "lp", "wake up").await;
    let got = tokio::time::timeout(Duration::from_secs(25), waiting)
        .await
        .expect("the waiting Dequeue was not woken by the Enqueue")
        .expect("the waiting task");
    assert_eq!(ids(&got), [id]);
    assert_eq!(counts(&mut producer, "lp").await, (0, 0, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn several_waiters_each_get_a_job() {
    let server = TestServer::start().await;
    let mut producer = server.queue().await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut waiter = server.queue().await;
        tasks.push(tokio::spawn(async move {
            dequeue(
                &mut waiter,
                pb::DequeueRequest {
                    wait_ms: 30_000,
                    ..take(&["many"], 1, 10_000)
                },
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One EnqueueMany wakes them all.
    let expected: BTreeSet<u64> = put_many(
        &mut producer,
        (0..3).map(|i| job("many", &i.to_string())).collect(),
    )
    .await
    .into_iter()
    .collect();
    let mut got = BTreeSet::new();
    for t in tasks {
        let jobs = tokio::time::timeout(Duration::from_secs(25), t)
            .await
            .expect("a waiter was not woken")
            .expect("the waiting task");
        assert_eq!(jobs.len(), 1);
        assert!(got.insert(jobs[0].id), "one job to two waiters");
    }
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_with_nothing_ready_ends_empty() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let got = tokio::time::timeout(
        BOUND,
        dequeue(
            &mut q,
            pb::DequeueRequest {
                wait_ms: 200,
                ..take(&["empty"], 5, 0)
            },
        ),
    )
    .await
    .expect("the wait ended");
    assert!(got.is_empty());
    assert_invalid(
        q.dequeue(pb::DequeueRequest {
            wait_ms: 30_001,
            ..take(&["empty"], 1, 0)
        })
        .await,
        "wait_ms",
    );
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = TestServer::with_limits(larder::RequestLimits {
        max_value_bytes: 1024,
        ..Default::default()
    })
    .await;
    let mut q = server.queue().await;
    let one = |job: pb::NewJob| pb::EnqueueRequest { job: Some(job) };

    // Enqueue.
    assert_invalid_any(q.enqueue(one(job("", "x"))).await, &["job.queue", "queue"]);
    assert_invalid_any(
        q.enqueue(one(job(&"q".repeat(129), "x"))).await,
        &["job.queue", "queue"],
    );
    assert_invalid_any(q.enqueue(pb::EnqueueRequest { job: None }).await, &["job"]);
    let big = pb::NewJob {
        payload: vec![b'x'; 1025].into(),
        ..job("v", "")
    };
    assert_invalid_any(q.enqueue(one(big)).await, &["job.payload", "payload"]);
    assert_invalid_any(
        q.enqueue(one(pb::NewJob {
            delay_ms: YEAR_MS + 1,
            ..job("v", "x")
        }))
        .await,
        &["job.delay_ms", "delay_ms"],
    );
    assert_eq!(counts(&mut q, "v").await, (0, 0, 0, 0), "nothing added");
    // The bounds themselves are accepted.
    put(&mut q, &"q".repeat(128), "x").await;
    put(&mut q, "é", "x").await;
    enqueue(
        &mut q,
        pb::NewJob {
            payload: vec![b'x'; 1024].into(),
            delay_ms: YEAR_MS,
            ..job("v", "")
        },
    )
    .await;
    assert_eq!(counts(&mut q, "v").await, (0, 1, 0, 0));
    assert_invalid_any(
        q.enqueue_many(pb::EnqueueManyRequest {
            jobs: vec![
                job("v", "x"),
                pb::NewJob {
                    payload: vec![b'x'; 1025].into(),
                    ..job("v", "")
                },
            ],
        })
        .await,
        &["jobs[1].payload"],
    );

    // Dequeue.
    assert_invalid(q.dequeue(take(&[], 1, 0)).await, "queues");
    let seventeen: Vec<String> = (0..17).map(|i| format!("q{i}")).collect();
    let names: Vec<&str> = seventeen.iter().map(String::as_str).collect();
    assert_invalid(q.dequeue(take(&names, 1, 0)).await, "queues");
    assert_invalid_any(
        q.dequeue(take(&["v", ""], 1, 0)).await,
        &["queues[1]", "queues"],
    );
    assert_invalid(q.dequeue(take(&["v"], 1001, 0)).await, "max_jobs");
    assert_invalid(q.dequeue(take(&["v"], 1, YEAR_MS + 1)).await, "lease_ms");
    assert_invalid(
        q.dequeue(pb::DequeueRequest {
            wait_ms: 30_001,
            ..take(&["v"], 1, 0)
        })
        .await,
        "wait_ms",
    );

    // Leases.
    for bad in ["", "not-a-lease", "\u{0}\u{1}", &"z".repeat(5000)] {
        assert_invalid(ack(&mut q, bad).await, "lease");
        assert_invalid(nack(&mut q, bad, None, "").await, "lease");
        assert_invalid(extend(&mut q, bad, 1_000).await, "lease");
    }
    put(&mut q, "lease", "x").await;
    let j = take_one(&mut q, "lease", 60_000).await.unwrap();
    assert_invalid(extend(&mut q, &j.lease, 0).await, "lease_ms");
    assert_invalid(extend(&mut q, &j.lease, YEAR_MS + 1).await, "lease_ms");
    assert_invalid(
        nack(&mut q, &j.lease, Some(0), &"e".repeat(4097)).await,
        "error",
    );
    assert_invalid(
        nack(&mut q, &j.lease, Some(YEAR_MS + 1), "").await,
        "retry_after_ms",
    );
    assert_eq!(counts(&mut q, "lease").await, (0, 0, 1, 0), "still leased");
    ack(&mut q, &j.lease).await.expect("the lease still holds");

    // Listing and management.
    let list = |queue: &str, page_size: u32, page_token: &str| pb::ListJobsRequest {
        queue: queue.into(),
        page_size,
        page_token: page_token.into(),
    };
    assert_invalid(q.list_jobs(list("v", 1001, "")).await, "page_size");
    assert_invalid(q.list_jobs(list("", 10, "")).await, "queue");
    assert_invalid(q.list_jobs(list("v", 10, "garbage!")).await, "page_token");
    assert_invalid(
        q.list_dead(pb::ListDeadRequest {
            queue: "v".into(),
            page_size: 1001,
            page_token: String::new(),
        })
        .await,
        "page_size",
    );
    assert_invalid(
        q.list_dead(pb::ListDeadRequest {
            queue: "v".into(),
            page_size: 10,
            page_token: "garbage!".into(),
        })
        .await,
        "page_token",
    );
    assert_invalid(
        q.stats(pb::QueueServiceStatsRequest { queue: "".into() })
            .await,
        "queue",
    );
    assert_invalid(
        q.purge(pb::PurgeRequest {
            queue: "q".repeat(129),
        })
        .await,
        "queue",
    );
    assert_invalid(
        q.retry_dead(pb::RetryDeadRequest {
            queue: "v".into(),
            ids: (0..1001).collect(),
        })
        .await,
        "ids",
    );
    assert_invalid(
        q.purge_dead(pb::PurgeDeadRequest {
            queue: "v".into(),
            ids: (0..1001).collect(),
        })
        .await,
        "ids",
    );
    assert_invalid(
        q.purge_dead(pb::PurgeDeadRequest {
            queue: "".into(),
            ids: vec![],
        })
        .await,
        "queue",
    );
    assert_eq!(counts(&mut q, "v").await, (0, 1, 0, 0), "nothing changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_resource_exhausted_and_adds_nothing() {
    let server = TestServer::start_with(
        |c| {
            c.queue.max_jobs = 3;
            c.queue.max_bytes = 1_000;
        },
        larder::ServerSettings::default(),
    )
    .await;
    let mut q = server.queue().await;
    // Dead, leased and delayed jobs count as much as ready ones.
    kill_jobs(&server, &mut q, "full", 1).await;
    put(&mut q, "full", "leased").await;
    take_one(&mut q, "full", 60_000).await.unwrap();
    enqueue(
        &mut q,
        pb::NewJob {
            delay_ms: 1_000,
            ..job("full", "delayed")
        },
    )
    .await;
    assert_eq!(counts(&mut q, "full").await, (0, 1, 1, 1));
    assert_code(
        q.enqueue(pb::EnqueueRequest {
            job: Some(job("full", "one too many")),
        })
        .await,
        Code::ResourceExhausted,
    );
    // A batch that would overflow one of its queues adds nothing, to any queue.
    assert_code(
        q.enqueue_many(pb::EnqueueManyRequest {
            jobs: vec![job("roomy", "1"), job("full", "2")],
        })
        .await,
        Code::ResourceExhausted,
    );
    assert_eq!(counts(&mut q, "full").await, (0, 1, 1, 1));
    assert_eq!(counts(&mut q, "roomy").await, (0, 0, 0, 0));
    // Other queues have their own bound.
    put_many(
        &mut q,
        vec![job("roomy", "1"), job("roomy", "2"), job("roomy", "3")],
    )
    .await;
    assert_code(
        q.enqueue_many(pb::EnqueueManyRequest {
            jobs: vec![
                job("empty", "1"),
                job("empty", "2"),
                job("empty", "3"),
                job("empty", "4"),
            ],
        })
        .await,
        Code::ResourceExhausted,
    );
    assert_eq!(counts(&mut q, "empty").await, (0, 0, 0, 0));

    // Removing a job makes room again.
    q.purge_dead(pb::PurgeDeadRequest {
        queue: "full".into(),
        ids: vec![],
    })
    .await
    .unwrap();
    put(&mut q, "full", "fits again").await;
    assert_eq!(counts(&mut q, "full").await, (1, 1, 1, 0));

    // The byte bound: payloads of one queue in every state.
    let payload = |n: usize| pb::NewJob {
        payload: vec![b'b'; n].into(),
        ..job("bytes", "")
    };
    enqueue(&mut q, payload(600)).await;
    assert_code(
        q.enqueue(pb::EnqueueRequest {
            job: Some(payload(401)),
        })
        .await,
        Code::ResourceExhausted,
    );
    assert_eq!(counts(&mut q, "bytes").await, (1, 0, 0, 0));
    enqueue(&mut q, payload(400)).await;
    assert_eq!(counts(&mut q, "bytes").await, (2, 0, 0, 0));
}

// ---------------------------------------------------------------------------------------
// Persistence and concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn jobs_leases_and_dead_letters_survive_a_restart() {
    let mut server = TestServer::start().await;
    let mut q = server.queue().await;
    let dead = kill_jobs(&server, &mut q, "ps", 1).await[0];
    let ready = enqueue(
        &mut q,
        pb::NewJob {
            priority: 2,
            dedup_key: "d".into(),
            ..job("ps", "ready")
        },
    )
    .await
    .id;
    let delayed = enqueue(
        &mut q,
        pb::NewJob {
            run_at_ms: START_MS as i64 + 10_000,
            ..job("ps", "delayed")
        },
    )
    .await
    .id;
    put(&mut q, "ps", "to lease").await;
    let leased = dequeue(&mut q, take(&["ps"], 2, 5_000)).await;
    assert_eq!(leased[0].id, ready);
    let held = leased[1].clone();
    let lease_start = clock_now(&server);
    // Give the ready job back with an error, so that its attempt and error must survive too.
    nack(&mut q, &leased[0].lease, Some(0), "before restart")
        .await
        .unwrap();
    assert_eq!(counts(&mut q, "ps").await, (1, 1, 1, 1));

    server.restart().await;
    let mut q = server.queue().await;
    assert_eq!(counts(&mut q, "ps").await, (1, 1, 1, 1));
    let again = enqueue(
        &mut q,
        pb::NewJob {
            dedup_key: "d".into(),
            ..job("ps", "dup")
        },
    )
    .await;
    assert_eq!((again.id, again.duplicate), (ready, true), "dedup survives");
    let (dead_jobs, _) = list_dead(&mut q, "ps", 0).await;
    assert_eq!(
        (ids(&dead_jobs), dead_jobs[0].last_error.as_str()),
        (vec![dead], "error 0")
    );
    let j = take_one(&mut q, "ps", 60_000).await.unwrap();
    assert_eq!(
        (j.id, j.attempt, j.last_error.as_str(), j.priority),
        (ready, 2, "before restart", 2)
    );
    ack(&mut q, &j.lease).await.unwrap();

    // The lease held across the restart still works, and still ends on time.
    let e = extend(&mut q, &held.lease, 1_000)
        .await
        .expect("held lease");
    assert_eq!(e.lease_expires_at_ms, lease_start + 1_000);
    server.clock().advance_ms(1_000);
    let back = take_one(&mut q, "ps", 60_000).await.expect("expired");
    assert_eq!((back.id, back.attempt), (held.id, 2));
    assert_code(ack(&mut q, &held.lease).await, Code::FailedPrecondition);

    server.clock().set_ms(START_MS + 10_000);
    let d = take_one(&mut q, "ps", 60_000)
        .await
        .expect("the delayed job");
    assert_eq!(d.id, delayed);

    // Ids keep increasing after a restart.
    let newer = put(&mut q, "ps", "after").await;
    assert!(newer > [ready, delayed, held.id, dead].into_iter().max().unwrap());
}

/// Jobs drained by [`eight_consumers_see_each_of_10000_jobs_once`], and its consumers.
const DRAIN_JOBS: usize = 10_000;
const CONSUMERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_consumers_see_each_of_10000_jobs_once() {
    let server = TestServer::start().await;
    let mut q = server.queue().await;
    let mut enqueued = BTreeSet::new();
    for batch in 0..DRAIN_JOBS / 1000 {
        let jobs = (0..1000)
            .map(|i| job("drain", &format!("{}", batch * 1000 + i)))
            .collect();
        enqueued.extend(put_many(&mut q, jobs).await);
    }
    assert_eq!(enqueued.len(), DRAIN_JOBS);

    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CONSUMERS));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let mut c = server.queue().await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut seen = Vec::new();
            loop {
                // The manual clock stands still: no lease ever runs out, so an empty answer
                // means every job is leased (and its consumer acks it).
                let jobs = dequeue(&mut c, take(&["drain"], 16, 60_000)).await;
                if jobs.is_empty() {
                    return seen;
                }
                for j in jobs {
                    ack(&mut c, &j.lease).await.expect("Ack of a held lease");
                    seen.push((j.id, j.attempt, j.payload));
                }
            }
        }));
    }
    let mut seen = BTreeMap::new();
    tokio::time::timeout(BOUND, async {
        for t in tasks {
            for (id, attempt, payload) in t.await.expect("a consumer panicked") {
                assert_eq!(attempt, 1, "job {id} delivered before");
                assert!(seen.insert(id, payload).is_none(), "job {id} seen twice");
            }
        }
    })
    .await
    .expect("the consumers drained the queue in time");
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        enqueued,
        "every job seen"
    );
    assert_eq!(counts(&mut q, "drain").await, (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dequeue_answer_fits_one_message_whatever_its_jobs_carry_besides_payloads() {
    // 64 KiB values: a message may be about 1.2 MB. 400 jobs of 40 bytes, each given back
    // with a 4 KiB error, are 1.7 MB as an answer: the payloads alone would fit, the jobs do
    // not. Counting payloads only, the Dequeue below leased every job and then failed to
    // send them (OUT_OF_RANGE), leaving them leased to nobody.
    let server = TestServer::with_limits(larder::RequestLimits {
        max_value_bytes: 64 << 10,
        ..Default::default()
    })
    .await;
    let mut q = server.queue().await;
    let n = 400;
    put_many(
        &mut q,
        (0..n).map(|i| job("big", &format!("{i:040}"))).collect(),
    )
    .await;
    let error = "e".repeat(4096);
    let mut given_back = 0;
    while given_back < n {
        for j in dequeue(&mut q, take(&["big"], 100, 60_000)).await {
            // Not ready again until the clock moves, so that each job is given back once.
            nack(&mut q, &j.lease, Some(1_000), &error).await.unwrap();
            given_back += 1;
        }
    }
    server.clock().advance_ms(1_000);
    let jobs = dequeue(&mut q, take(&["big"], 1000, 60_000)).await;
    assert!(
        !jobs.is_empty() && jobs.len() < n,
        "{} jobs in one answer",
        jobs.len()
    );
    assert!(jobs.iter().all(|j| j.last_error == error && j.attempt == 2));
    let (ready, _, leased, _) = counts(&mut q, "big").await;
    assert_eq!(
        (ready, leased),
        ((n - jobs.len()) as u64, jobs.len() as u64),
        "exactly the jobs answered are leased"
    );
}
