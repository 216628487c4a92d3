//! `larder.v1.RateLimitService` through the real server with a manual clock: a worked example
//! of each algorithm (GCRA, sliding window, fixed window) checking every response field, cost
//! units, Peek and denied Checks consuming nothing, and retry/reset times that are exact to the
//! millisecond; a key's identity (policy, key) and its fresh start under another algorithm or
//! period; exactness under many concurrent Checks over several connections (one key, many
//! keys, keys being loaded from disk); named policies; validation (every bad field is
//! INVALID_ARGUMENT naming it, and changes nothing); Reset (committed before it answers);
//! persistence (written behind, written at a graceful shutdown, loaded lazily after a restart,
//! the rows on disk, keys stored byte for byte, the sweeper); and the memory budget, with
//! evicted keys reloaded intact.
//!
//! The algorithms' arithmetic on its own is tested in `src/limiter/tests.rs`; these tests
//! are about what the service and the store make of it. Where a property is about disk, the
//! `rate_limits` table is read with a read-only SQLite connection, which sees committed rows
//! and never memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use larder::Clock;
use larder::RateLimitSettings;
use larder::ServerSettings;
use larder::limiter::{Algorithm, Rule};
use larder::pb::{Algorithm as Alg, CheckRequest, PeekRequest, ResetRequest};
use larder::store::DB_FILE;
use larder::store::SLOT_OVERHEAD;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tonic::Status;

use crate::common::{RateLimits, START_MS, TestServer, assert_invalid};

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const MAX_PERIOD_MS: u64 = 365 * DAY;
const MAX_LIMIT: u32 = 1_000_000_000;

/// Bound on every wait for concurrent work or for a background write.
const BOUND: Duration = Duration::from_secs(30);

/// Connections the concurrent tests spread their calls over.
const CONNECTIONS: usize = 8;

/// Every algorithm a request can name.
const ALGORITHMS: [Alg; 3] = [Alg::Gcra, Alg::SlidingWindow, Alg::FixedWindow];

// ---------------------------------------------------------------------------------------------
// Requests and answers
// ---------------------------------------------------------------------------------------------

/// An inline request: `limit` per `period_ms` under `algorithm`, cost 1, no burst.
fn inline(key: &str, algorithm: Alg, limit: u32, period_ms: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        limit,
        period_ms,
        algorithm: algorithm as i32,
        ..Default::default()
    }
}

/// An inline GCRA request with a bucket of `burst`.
fn gcra(key: &str, limit: u32, period_ms: u64, burst: u32) -> CheckRequest {
    CheckRequest {
        burst,
        ..inline(key, Alg::Gcra, limit, period_ms)
    }
}

/// A request under a named policy, with no inline field.
fn under(policy: &str, key: &str) -> CheckRequest {
    CheckRequest {
        policy: policy.into(),
        key: key.into(),
        ..Default::default()
    }
}

/// `req` with another cost.
fn costing(req: &CheckRequest, cost: u32) -> CheckRequest {
    CheckRequest {
        cost,
        ..req.clone()
    }
}

/// The Peek asking what `req` would get.
fn peek_of(req: &CheckRequest) -> PeekRequest {
    PeekRequest {
        policy: req.policy.clone(),
        key: req.key.clone(),
        cost: req.cost,
        limit: req.limit,
        period_ms: req.period_ms,
        burst: req.burst,
        algorithm: req.algorithm,
    }
}

/// A Check's or Peek's answer (the two responses have the same fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    allowed: bool,
    limit: u32,
    remaining: u32,
    reset_after_ms: u64,
    retry_after_ms: u64,
}

/// An admitted request's answer.
fn allowed(limit: u32, remaining: u32, reset_after_ms: u64) -> Answer {
    Answer {
        allowed: true,
        limit,
        remaining,
        reset_after_ms,
        retry_after_ms: 0,
    }
}

/// A denied request's answer.
fn denied(limit: u32, remaining: u32, reset_after_ms: u64, retry_after_ms: u64) -> Answer {
    Answer {
        allowed: false,
        limit,
        remaining,
        reset_after_ms,
        retry_after_ms,
    }
}

/// Asserts what holds for every answer to a request of `cost`: it is denied exactly when it
/// has a retry time, and then fewer than `cost` units remain; an admitted Peek (which consumed
/// nothing) had at least `cost` units remaining.
#[track_caller]
fn assert_consistent(req: &CheckRequest, a: &Answer, consumed: bool) {
    let cost = req.cost.max(1);
    assert_eq!(
        a.allowed,
        a.retry_after_ms == 0,
        "{req:?}: retry_after_ms is 0 exactly when allowed: {a:?}"
    );
    if !a.allowed {
        assert!(a.remaining < cost, "{req:?}: denied with units left: {a:?}");
    } else if !consumed {
        assert!(
            a.remaining >= cost,
            "{req:?}: admitted without units: {a:?}"
        );
    }
}

async fn try_check(c: &mut RateLimits, req: &CheckRequest) -> Result<Answer, Status> {
    let r = c.check(req.clone()).await?.into_inner();
    let a = Answer {
        allowed: r.allowed,
        limit: r.limit,
        remaining: r.remaining,
        reset_after_ms: r.reset_after_ms,
        retry_after_ms: r.retry_after_ms,
    };
    assert_consistent(req, &a, a.allowed);
    Ok(a)
}

async fn try_peek(c: &mut RateLimits, req: &CheckRequest) -> Result<Answer, Status> {
    let r = c.peek(peek_of(req)).await?.into_inner();
    let a = Answer {
        allowed: r.allowed,
        limit: r.limit,
        remaining: r.remaining,
        reset_after_ms: r.reset_after_ms,
        retry_after_ms: r.retry_after_ms,
    };
    assert_consistent(req, &a, false);
    Ok(a)
}

/// A Check that must succeed.
async fn check(c: &mut RateLimits, req: &CheckRequest) -> Answer {
    try_check(c, req)
        .await
        .unwrap_or_else(|s| panic!("Check {req:?}: {s:?}"))
}

/// A Peek (of what `req` would get) that must succeed.
async fn peek(c: &mut RateLimits, req: &CheckRequest) -> Answer {
    try_peek(c, req)
        .await
        .unwrap_or_else(|s| panic!("Peek {req:?}: {s:?}"))
}

async fn try_reset(c: &mut RateLimits, policy: &str, key: &str) -> Result<bool, Status> {
    Ok(c.reset(ResetRequest {
        policy: policy.into(),
        key: key.into(),
    })
    .await?
    .into_inner()
    .existed)
}

/// A Reset that must succeed; returns `existed`.
async fn reset(c: &mut RateLimits, policy: &str, key: &str) -> bool {
    try_reset(c, policy, key)
        .await
        .unwrap_or_else(|s| panic!("Reset {policy:?}/{key:?}: {s:?}"))
}

/// Checks `req` until it is denied; returns how many were admitted (bounded by `most`).
async fn exhaust(c: &mut RateLimits, req: &CheckRequest, most: u32) -> u32 {
    for admitted in 0..=most {
        if !check(c, req).await.allowed {
            return admitted;
        }
    }
    panic!("{req:?} was admitted more than {most} times");
}

/// Asserts that the denied `req`'s retry time is exact: a Peek one millisecond before it is
/// still denied, a Peek at it is admitted. Leaves the clock where it was.
async fn assert_retry_is_exact(server: &TestServer, c: &mut RateLimits, req: &CheckRequest) {
    let now = server.clock().now_ms();
    let first = peek(c, req).await;
    assert!(!first.allowed, "{req:?} is not denied: {first:?}");
    let retry = first.retry_after_ms;
    server.clock().set_ms(now + retry - 1);
    let before = peek(c, req).await;
    assert!(
        !before.allowed,
        "{req:?} admitted 1 ms before its retry time {retry}: {before:?}"
    );
    server.clock().set_ms(now + retry);
    let at = peek(c, req).await;
    assert!(
        at.allowed,
        "{req:?} denied at its retry time {retry}: {at:?}"
    );
    server.clock().set_ms(now);
}

/// Asserts that `req`'s reset time is exact: one millisecond before it fewer than `full` units
/// remain, at it `full` do. Leaves the clock where it was.
async fn assert_reset_is_exact(
    server: &TestServer,
    c: &mut RateLimits,
    req: &CheckRequest,
    full: u32,
) {
    let now = server.clock().now_ms();
    let reset = peek(c, req).await.reset_after_ms;
    assert!(reset > 0, "{req:?} has nothing to reset");
    server.clock().set_ms(now + reset - 1);
    let before = peek(c, req).await;
    assert!(
        before.remaining < full,
        "{req:?} full 1 ms before its reset time {reset}: {before:?}"
    );
    server.clock().set_ms(now + reset);
    let at = peek(c, req).await;
    assert_eq!(
        (at.remaining, at.reset_after_ms),
        (full, 0),
        "{req:?} at its reset time {reset}: {at:?}"
    );
    server.clock().set_ms(now);
}

/// Start of the window of `period_ms` holding `now_ms`.
fn window_start(now_ms: u64, period_ms: u64) -> u64 {
    now_ms - now_ms % period_ms
}

// ---------------------------------------------------------------------------------------------
// The rows on disk
// ---------------------------------------------------------------------------------------------

/// A read-only connection to the server's database.
fn open_db(dir: &Path) -> Connection {
    Connection::open_with_flags(dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the database read-only")
}

/// The committed state text and expiry of (policy, key).
fn disk_row(dir: &Path, policy: &str, key: &str) -> Option<(String, u64)> {
    open_db(dir)
        .query_row(
            "SELECT state, expires_at FROM rate_limits WHERE policy = ?1 AND key = ?2",
            [policy, key],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
        )
        .optional()
        .expect("reading a rate-limit row")
}

/// Committed rate-limit rows.
fn disk_rows(dir: &Path) -> u64 {
    open_db(dir)
        .query_row("SELECT COUNT(*) FROM rate_limits", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("counting rate-limit rows") as u64
}

/// Has the server write its rate-limit state now.
async fn flush(server: &TestServer) {
    server
        .store()
        .flush_rate_limits()
        .await
        .expect("writing the rate-limit state");
}

// ---------------------------------------------------------------------------------------------
// Each algorithm, worked through
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn gcra_admits_a_burst_then_one_unit_per_interval() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    // 60 per minute: one unit every second, 60 at once from a full bucket.
    let req = inline("user:1", Alg::Gcra, 60, MINUTE);

    assert_eq!(peek(&mut c, &req).await, allowed(60, 60, 0), "a new key");
    for n in 1..=60 {
        assert_eq!(
            check(&mut c, &req).await,
            allowed(60, 60 - n, u64::from(n) * SECOND),
            "check {n}"
        );
    }
    assert_eq!(check(&mut c, &req).await, denied(60, 0, MINUTE, SECOND));
    assert_eq!(
        check(&mut c, &req).await,
        denied(60, 0, MINUTE, SECOND),
        "a denied Check consumed nothing"
    );
    assert_retry_is_exact(&server, &mut c, &req).await;
    assert_reset_is_exact(&server, &mut c, &req, 60).await;

    server.clock().advance_ms(SECOND - 1);
    assert_eq!(check(&mut c, &req).await, denied(60, 0, MINUTE - 999, 1));
    server.clock().advance_ms(1);
    assert_eq!(check(&mut c, &req).await, allowed(60, 0, MINUTE));
    assert_eq!(check(&mut c, &req).await, denied(60, 0, MINUTE, SECOND));

    // An unspecified algorithm is GCRA: the same state.
    let unspecified = inline("user:1", Alg::Unspecified, 60, MINUTE);
    assert_eq!(
        check(&mut c, &unspecified).await,
        denied(60, 0, MINUTE, SECOND)
    );

    // Ten seconds refill ten units; a cost of 11 must wait one more second.
    server.clock().advance_ms(10 * SECOND);
    assert_eq!(
        peek(&mut c, &costing(&req, 11)).await,
        denied(60, 10, 50 * SECOND, SECOND)
    );
    assert_eq!(
        check(&mut c, &costing(&req, 11)).await,
        denied(60, 10, 50 * SECOND, SECOND)
    );
    assert_eq!(
        check(&mut c, &costing(&req, 10)).await,
        allowed(60, 0, MINUTE),
        "the denied cost of 11 consumed nothing"
    );

    // A whole period without a request refills the bucket.
    server.clock().advance_ms(MINUTE);
    assert_eq!(peek(&mut c, &req).await, allowed(60, 60, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn gcra_burst_bounds_what_is_admitted_at_once() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    // 10 per 10 s (one per second), but at most 3 at once.
    let req = gcra("api:1", 10, 10 * SECOND, 3);
    assert_eq!(peek(&mut c, &req).await, allowed(10, 3, 0));
    assert_eq!(check(&mut c, &req).await, allowed(10, 2, SECOND));
    assert_eq!(check(&mut c, &req).await, allowed(10, 1, 2 * SECOND));
    assert_eq!(check(&mut c, &req).await, allowed(10, 0, 3 * SECOND));
    assert_eq!(check(&mut c, &req).await, denied(10, 0, 3 * SECOND, SECOND));
    assert_retry_is_exact(&server, &mut c, &req).await;
    assert_reset_is_exact(&server, &mut c, &req, 3).await;
    server.clock().advance_ms(SECOND);
    assert_eq!(check(&mut c, &req).await, allowed(10, 0, 3 * SECOND));

    // Costs: 8 of a bucket of 10, then 5 is denied (3 s short) and consumes nothing, so 2 fit.
    let big = gcra("api:2", 10, 10 * SECOND, 0);
    assert_eq!(
        check(&mut c, &costing(&big, 8)).await,
        allowed(10, 2, 8 * SECOND)
    );
    assert_eq!(
        check(&mut c, &costing(&big, 5)).await,
        denied(10, 2, 8 * SECOND, 3 * SECOND)
    );
    assert_retry_is_exact(&server, &mut c, &costing(&big, 5)).await;
    assert_eq!(
        check(&mut c, &costing(&big, 2)).await,
        allowed(10, 0, 10 * SECOND)
    );

    // A cost of 0 is a cost of 1.
    let zero = costing(&gcra("api:3", 10, 10 * SECOND, 0), 0);
    assert_eq!(check(&mut c, &zero).await, allowed(10, 9, SECOND));

    // The interval is rounded up, never admitting above the rate: 3 per second is one unit per
    // 333.333334 ms, which a response shows as 334 ms.
    let thirds = inline("api:4", Alg::Gcra, 3, SECOND);
    assert_eq!(check(&mut c, &thirds).await, allowed(3, 2, 334));
}

#[tokio::test(flavor = "multi_thread")]
async fn fixed_window_counts_per_aligned_window() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let req = inline("ip:1", Alg::FixedWindow, 5, MINUTE);
    let now = server.clock().now_ms();
    let end = window_start(now, MINUTE) + MINUTE;
    let to_end = end - now;
    assert!(to_end < MINUTE, "the clock starts inside a window");

    assert_eq!(peek(&mut c, &req).await, allowed(5, 5, 0), "a new key");
    for n in 1..=5 {
        assert_eq!(
            check(&mut c, &req).await,
            allowed(5, 5 - n, to_end),
            "check {n}"
        );
    }
    assert_eq!(check(&mut c, &req).await, denied(5, 0, to_end, to_end));
    assert_eq!(
        peek(&mut c, &req).await,
        denied(5, 0, to_end, to_end),
        "a denied Check consumed nothing"
    );
    assert_retry_is_exact(&server, &mut c, &req).await;
    assert_reset_is_exact(&server, &mut c, &req, 5).await;

    server.clock().set_ms(end - 1);
    assert_eq!(check(&mut c, &req).await, denied(5, 0, 1, 1));
    server.clock().set_ms(end);
    assert_eq!(
        check(&mut c, &req).await,
        allowed(5, 4, MINUTE),
        "a new window"
    );

    // Costs: 3 more leave 1; a cost of 2 is denied until the window ends and consumes
    // nothing, so a cost of 1 still fits.
    assert_eq!(
        check(&mut c, &costing(&req, 3)).await,
        allowed(5, 1, MINUTE)
    );
    assert_eq!(
        check(&mut c, &costing(&req, 2)).await,
        denied(5, 1, MINUTE, MINUTE)
    );
    assert_eq!(
        check(&mut c, &costing(&req, 0)).await,
        allowed(5, 0, MINUTE)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sliding_window_weights_the_previous_window() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let req = inline("chat:1", Alg::SlidingWindow, 10, MINUTE);
    let w = window_start(START_MS, MINUTE) + MINUTE;
    server.clock().set_ms(w + 30 * SECOND);

    // Halfway through window w: ten admitted, each counting until two windows from w.
    assert_eq!(peek(&mut c, &req).await, allowed(10, 10, 0), "a new key");
    for n in 1..=10 {
        assert_eq!(
            check(&mut c, &req).await,
            allowed(10, 10 - n, 90 * SECOND),
            "check {n}"
        );
    }
    // Denied until the previous window's ten, weighted by their overlap, leave room for one:
    // 10 x (60 - e)/60 + 1 <= 10 first at e = 6 s into the next window.
    assert_eq!(
        check(&mut c, &req).await,
        denied(10, 0, 90 * SECOND, 36 * SECOND)
    );
    assert_eq!(
        peek(&mut c, &req).await,
        denied(10, 0, 90 * SECOND, 36 * SECOND),
        "a denied Check consumed nothing"
    );
    assert_retry_is_exact(&server, &mut c, &req).await;
    assert_reset_is_exact(&server, &mut c, &req, 10).await;

    server.clock().set_ms(w + MINUTE + 6 * SECOND - 1);
    assert_eq!(check(&mut c, &req).await, denied(10, 0, 54 * SECOND + 1, 1));
    server.clock().set_ms(w + MINUTE + 6 * SECOND);
    assert_eq!(check(&mut c, &req).await, allowed(10, 0, 114 * SECOND));

    // Halfway through the next window: 10 x 1/2 + 1 counted, 4 left; a cost of 5 waits until
    // 10 x (60 - e)/60 + 1 + 5 <= 10, at e = 36 s.
    server.clock().set_ms(w + MINUTE + 30 * SECOND);
    assert_eq!(peek(&mut c, &req).await, allowed(10, 4, 90 * SECOND));
    assert_eq!(
        peek(&mut c, &costing(&req, 4)).await,
        allowed(10, 4, 90 * SECOND)
    );
    assert_eq!(
        check(&mut c, &costing(&req, 5)).await,
        denied(10, 4, 90 * SECOND, 6 * SECOND)
    );
    assert_retry_is_exact(&server, &mut c, &costing(&req, 5)).await;
    assert_eq!(
        check(&mut c, &costing(&req, 4)).await,
        allowed(10, 0, 90 * SECOND),
        "the denied cost of 5 consumed nothing"
    );

    // Two whole windows without a request forget everything.
    server.clock().set_ms(w + 3 * MINUTE);
    assert_eq!(peek(&mut c, &req).await, allowed(10, 10, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_never_consumes() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    for algorithm in ALGORITHMS {
        let req = inline(&format!("peeked:{algorithm:?}"), algorithm, 3, HOUR);
        for _ in 0..20 {
            assert!(peek(&mut c, &req).await.allowed);
        }
        assert_eq!(check(&mut c, &req).await.remaining, 2, "{algorithm:?}");
        for _ in 0..20 {
            assert_eq!(peek(&mut c, &req).await.remaining, 2, "{algorithm:?}");
        }
        assert_eq!(exhaust(&mut c, &req, 3).await, 2, "{algorithm:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_and_the_unix_socket_share_each_keys_state() {
    let server = TestServer::start().await;
    let mut tcp = server.rate_limits().await;
    let mut unix = server.unix_rate_limits().await;
    let req = inline("shared", Alg::FixedWindow, 4, HOUR);
    assert_eq!(check(&mut tcp, &req).await.remaining, 3);
    assert_eq!(check(&mut unix, &req).await.remaining, 2);
    assert_eq!(check(&mut tcp, &req).await.remaining, 1);
    assert_eq!(check(&mut unix, &req).await.remaining, 0);
    assert!(!check(&mut tcp, &req).await.allowed);
}

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn each_key_has_its_own_state() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let a = inline("a", Alg::FixedWindow, 2, HOUR);
    let b = inline("b", Alg::FixedWindow, 2, HOUR);
    assert_eq!(exhaust(&mut c, &a, 2).await, 2);
    assert_eq!(check(&mut c, &b).await.remaining, 1, "b is untouched by a");
    // Keys are compared as bytes: no case folding, no trimming.
    for other in ["A", "a ", " a", "a\0"] {
        let req = inline(other, Alg::FixedWindow, 2, HOUR);
        assert_eq!(check(&mut c, &req).await.remaining, 1, "{other:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_algorithm_or_window_period_starts_the_key_afresh() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let fixed = inline("k", Alg::FixedWindow, 5, HOUR);
    assert_eq!(exhaust(&mut c, &fixed, 5).await, 5);

    // Another period for a window algorithm: afresh.
    let longer = inline("k", Alg::FixedWindow, 5, 2 * HOUR);
    assert_eq!(check(&mut c, &longer).await.remaining, 4);
    // ...and the state it wrote is now the key's: the old period starts afresh too.
    assert_eq!(check(&mut c, &fixed).await.remaining, 4);

    // Another algorithm: afresh, each time.
    let gcra_req = inline("k", Alg::Gcra, 5, HOUR);
    assert_eq!(check(&mut c, &gcra_req).await.remaining, 4);
    let sliding = inline("k", Alg::SlidingWindow, 5, HOUR);
    assert_eq!(check(&mut c, &sliding).await.remaining, 4);
    let sliding_shorter = inline("k", Alg::SlidingWindow, 5, MINUTE);
    assert_eq!(check(&mut c, &sliding_shorter).await.remaining, 4);
    assert_eq!(check(&mut c, &fixed).await.remaining, 4);

    // Another limit keeps the state and reads it with the new number: 5 of 5 used is 5 of 10.
    assert_eq!(exhaust(&mut c, &fixed, 4).await, 4);
    let more = inline("k", Alg::FixedWindow, 10, HOUR);
    assert_eq!(check(&mut c, &more).await.remaining, 4);
    let fewer = inline("k", Alg::FixedWindow, 3, HOUR);
    assert!(!check(&mut c, &fewer).await.allowed);

    // GCRA keeps its state under another limit or burst: a spent bucket of 60 per minute
    // owes a minute, which a bucket of 120 per minute (half a second a unit) also owes.
    let spent = inline("g", Alg::Gcra, 60, MINUTE);
    assert_eq!(exhaust(&mut c, &spent, 60).await, 60);
    let faster = inline("g", Alg::Gcra, 120, MINUTE);
    assert_eq!(check(&mut c, &faster).await, denied(120, 0, MINUTE, 500));
    let wider = gcra("g", 60, MINUTE, 61);
    assert_eq!(check(&mut c, &wider).await, allowed(60, 0, 61 * SECOND));
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// Sends every request at once from its own task, over [`CONNECTIONS`] connections; returns
/// the answers in the order of the requests.
async fn concurrently(server: &TestServer, requests: Vec<CheckRequest>) -> Vec<Answer> {
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.rate_limits().await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, req)| {
            let mut c = clients[i % CONNECTIONS].clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                check(&mut c, &req).await
            })
        })
        .collect();
    tokio::time::timeout(BOUND, async {
        let mut answers = Vec::with_capacity(tasks.len());
        for task in tasks {
            answers.push(task.await.expect("a Check task panicked"));
        }
        answers
    })
    .await
    .expect("the concurrent Checks did not finish in time")
}

/// Asserts that exactly `expected` of these answers were admitted, each seeing its own
/// `remaining` (expected - 1 down to 0): every admission was decided on the one before it.
#[track_caller]
fn assert_exactly_admitted(what: &str, answers: &[Answer], expected: u32) {
    let mut remaining: Vec<u32> = answers
        .iter()
        .filter(|a| a.allowed)
        .map(|a| a.remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..expected).collect::<Vec<_>>(),
        "{what}: the admitted answers' remaining units"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_thousand_concurrent_checks_of_one_key_admit_exactly_the_limit() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    for algorithm in ALGORITHMS {
        let req = inline(&format!("hot:{algorithm:?}"), algorithm, 100, HOUR);
        let answers = concurrently(&server, vec![req.clone(); 1000]).await;
        assert_exactly_admitted(&format!("{algorithm:?}"), &answers, 100);
        assert!(!peek(&mut c, &req).await.allowed, "{algorithm:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_checks_of_many_keys_are_each_exact() {
    let server = TestServer::start().await;
    let keys: Vec<CheckRequest> = (0..40)
        .map(|i| {
            let algorithm = ALGORITHMS[i % 3];
            inline(&format!("many:{i}"), algorithm, 5 + i as u32 % 7, HOUR)
        })
        .collect();
    // 25 requests per key, interleaved.
    let requests: Vec<CheckRequest> = (0..25).flat_map(|_| keys.iter().cloned()).collect();
    let answers = concurrently(&server, requests).await;
    for (i, req) in keys.iter().enumerate() {
        let mine: Vec<Answer> = answers
            .iter()
            .skip(i)
            .step_by(keys.len())
            .copied()
            .collect();
        assert_eq!(mine.len(), 25);
        assert_exactly_admitted(&req.key, &mine, req.limit);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_first_checks_of_keys_still_on_disk_are_exact() {
    let mut server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let keys: Vec<CheckRequest> = ALGORITHMS
        .iter()
        .map(|&a| inline(&format!("loaded:{a:?}"), a, 100, HOUR))
        .collect();
    for req in &keys {
        for _ in 0..60 {
            assert!(check(&mut c, req).await.allowed);
        }
    }
    server.restart().await;
    assert_eq!(
        server.store().rate_limit_memory().0,
        0,
        "nothing is loaded yet"
    );

    let requests: Vec<CheckRequest> = (0..400).flat_map(|_| keys.iter().cloned()).collect();
    let answers = concurrently(&server, requests).await;
    for (i, req) in keys.iter().enumerate() {
        let mine: Vec<Answer> = answers
            .iter()
            .skip(i)
            .step_by(keys.len())
            .copied()
            .collect();
        assert_exactly_admitted(&req.key, &mine, 40);
    }
}

// ---------------------------------------------------------------------------------------------
// Named policies
// ---------------------------------------------------------------------------------------------

/// A server with three policies: `login` (fixed window, 3 per 15 minutes), `chat` (sliding
/// window, 5 per minute) and `api` (GCRA, 10 per 10 s in bursts of 2).
async fn with_policies() -> TestServer {
    let policies = BTreeMap::from([
        (
            "login".to_string(),
            Rule::new(Algorithm::FixedWindow, 3, 15 * MINUTE, 0).unwrap(),
        ),
        (
            "chat".to_string(),
            Rule::new(Algorithm::SlidingWindow, 5, MINUTE, 0).unwrap(),
        ),
        (
            "api".to_string(),
            Rule::new(Algorithm::Gcra, 10, 10 * SECOND, 2).unwrap(),
        ),
    ]);
    TestServer::start_with(
        |_| {},
        ServerSettings {
            ratelimit: RateLimitSettings {
                policies: Arc::new(policies),
            },
            ..ServerSettings::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn named_policies_apply_their_rules() {
    let server = with_policies().await;
    let mut c = server.rate_limits().await;
    let now = server.clock().now_ms();
    let to_end = window_start(now, 15 * MINUTE) + 15 * MINUTE - now;

    let login = under("login", "ip:1");
    assert_eq!(check(&mut c, &login).await, allowed(3, 2, to_end));
    assert_eq!(check(&mut c, &login).await, allowed(3, 1, to_end));
    assert_eq!(check(&mut c, &login).await, allowed(3, 0, to_end));
    assert_eq!(check(&mut c, &login).await, denied(3, 0, to_end, to_end));

    let api = under("api", "ip:1");
    assert_eq!(check(&mut c, &api).await, allowed(10, 1, SECOND));
    assert_eq!(check(&mut c, &api).await, allowed(10, 0, 2 * SECOND));
    assert_eq!(check(&mut c, &api).await, denied(10, 0, 2 * SECOND, SECOND));
    assert_eq!(
        check(&mut c, &costing(&api, 2)).await,
        denied(10, 0, 2 * SECOND, 2 * SECOND)
    );

    let chat = under("chat", "ip:1");
    assert_eq!(exhaust(&mut c, &chat, 5).await, 5);

    // The same key is another state under each policy and inline.
    let inline_login = inline("ip:1", Alg::FixedWindow, 3, 15 * MINUTE);
    assert_eq!(check(&mut c, &inline_login).await, allowed(3, 2, to_end));
    assert!(!check(&mut c, &login).await.allowed);
    assert_eq!(check(&mut c, &under("login", "ip:2")).await.remaining, 2);

    // Reset forgets the key under its policy only.
    assert!(reset(&mut c, "login", "ip:1").await);
    assert_eq!(check(&mut c, &login).await, allowed(3, 2, to_end));
    assert_eq!(check(&mut c, &inline_login).await.remaining, 1);
    assert!(!check(&mut c, &chat).await.allowed);
    assert!(reset(&mut c, "", "ip:1").await);
    assert_eq!(check(&mut c, &inline_login).await.remaining, 2);
    assert_eq!(peek(&mut c, &login).await.remaining, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_request_rejects_unknown_names_inline_fields_and_excess_cost() {
    let server = with_policies().await;
    let mut c = server.rate_limits().await;
    let login = under("login", "ip:1");
    check(&mut c, &login).await;
    let before = peek(&mut c, &login).await;
    let keys = server.store().rate_limit_memory().0;

    let bad: Vec<(CheckRequest, &str)> = vec![
        (under("nope", "ip:1"), "policy"),
        (under("Login", "ip:1"), "policy"),
        (
            CheckRequest {
                limit: 3,
                ..login.clone()
            },
            "limit",
        ),
        (
            CheckRequest {
                period_ms: 15 * MINUTE,
                ..login.clone()
            },
            "period_ms",
        ),
        (
            CheckRequest {
                burst: 1,
                ..login.clone()
            },
            "burst",
        ),
        (
            CheckRequest {
                algorithm: Alg::FixedWindow as i32,
                ..login.clone()
            },
            "algorithm",
        ),
        (costing(&login, 4), "cost"),
        (costing(&under("api", "ip:1"), 3), "cost"),
        (costing(&under("chat", "ip:1"), 6), "cost"),
    ];
    for (req, field) in &bad {
        assert_invalid(try_check(&mut c, req).await, field);
        assert_invalid(try_peek(&mut c, req).await, field);
    }
    assert_invalid(try_reset(&mut c, "nope", "ip:1").await, "policy");
    assert_eq!(peek(&mut c, &login).await, before, "the key is unchanged");
    assert_eq!(
        server.store().rate_limit_memory().0,
        keys,
        "no rejected request reached the store"
    );

    // The largest cost a policy can admit is accepted.
    assert!(
        check(&mut c, &costing(&under("api", "ip:1"), 2))
            .await
            .allowed
    );
    assert!(check(&mut c, &costing(&login, 2)).await.allowed);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_field_is_rejected_by_name_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let good = inline("k", Alg::FixedWindow, 5, HOUR);
    check(&mut c, &good).await;
    check(&mut c, &good).await;
    let before = peek(&mut c, &good).await;
    assert_eq!(before.remaining, 3);
    let keys = server.store().rate_limit_memory().0;

    let with = |f: &dyn Fn(&mut CheckRequest)| {
        let mut req = good.clone();
        f(&mut req);
        req
    };
    let bad: Vec<(CheckRequest, &str)> = vec![
        (with(&|r| r.key = String::new()), "key"),
        (with(&|r| r.key = "k".repeat(1025)), "key"),
        (with(&|r| r.limit = 0), "limit"),
        (with(&|r| r.limit = MAX_LIMIT + 1), "limit"),
        (with(&|r| r.limit = u32::MAX), "limit"),
        (with(&|r| r.period_ms = 0), "period_ms"),
        (with(&|r| r.period_ms = MAX_PERIOD_MS + 1), "period_ms"),
        (with(&|r| r.period_ms = u64::MAX), "period_ms"),
        (with(&|r| r.burst = 1), "burst"),
        (
            with(&|r| {
                r.algorithm = Alg::SlidingWindow as i32;
                r.burst = 5;
            }),
            "burst",
        ),
        (with(&|r| r.algorithm = 99), "algorithm"),
        (with(&|r| r.algorithm = -1), "algorithm"),
        (with(&|r| r.cost = 6), "cost"),
        (with(&|r| r.cost = u32::MAX), "cost"),
        (
            with(&|r| {
                r.algorithm = Alg::SlidingWindow as i32;
                r.cost = 6;
            }),
            "cost",
        ),
        (
            with(&|r| {
                r.algorithm = Alg::Gcra as i32;
                r.cost = 6;
            }),
            "cost",
        ),
        (
            with(&|r| {
                r.algorithm = Alg::Gcra as i32;
                r.limit = 10;
                r.burst = 3;
                r.cost = 4;
            }),
            "cost",
        ),
        (
            with(&|r| {
                r.algorithm = Alg::Gcra as i32;
                r.burst = MAX_LIMIT + 1;
            }),
            "burst",
        ),
        // A bucket of 2 refilled at 1 per 365 days would take two years to refill.
        (
            with(&|r| {
                r.algorithm = Alg::Gcra as i32;
                r.limit = 1;
                r.period_ms = MAX_PERIOD_MS;
                r.burst = 2;
            }),
            "burst",
        ),
        // No policy and no inline limit.
        (
            with(&|r| {
                r.limit = 0;
                r.period_ms = 0;
                r.algorithm = 0;
            }),
            "limit",
        ),
        (with(&|r| r.policy = "nope".into()), "limit"),
        (
            with(&|r| {
                r.policy = "nope".into();
                r.limit = 0;
                r.period_ms = 0;
                r.algorithm = 0;
            }),
            "policy",
        ),
    ];
    for (req, field) in &bad {
        assert_invalid(try_check(&mut c, req).await, field);
        assert_invalid(try_peek(&mut c, req).await, field);
        assert_eq!(
            peek(&mut c, &good).await,
            before,
            "{req:?} changed the key's state"
        );
    }
    for (key, field) in [(String::new(), "key"), ("k".repeat(1025), "key")] {
        assert_invalid(try_reset(&mut c, "", &key).await, field);
    }
    assert_invalid(try_reset(&mut c, "nope", "k").await, "policy");
    assert_eq!(peek(&mut c, &good).await, before);
    assert_eq!(
        server.store().rate_limit_memory().0,
        keys,
        "no rejected request reached the store"
    );

    // Every bound itself is accepted.
    let edge = |f: &dyn Fn(&mut CheckRequest)| {
        let mut req = inline("edge", Alg::Gcra, 5, HOUR);
        f(&mut req);
        req
    };
    for req in [
        edge(&|r| r.key = "k".repeat(1024)),
        edge(&|r| r.limit = MAX_LIMIT),
        edge(&|r| r.period_ms = 1),
        edge(&|r| r.period_ms = MAX_PERIOD_MS),
        edge(&|r| r.cost = 5),
        edge(&|r| {
            r.limit = MAX_LIMIT;
            r.burst = MAX_LIMIT;
            r.cost = MAX_LIMIT;
        }),
        edge(&|r| {
            r.limit = 1;
            r.period_ms = MAX_PERIOD_MS;
            r.burst = 1;
        }),
        edge(&|r| {
            r.algorithm = Alg::FixedWindow as i32;
            r.period_ms = MAX_PERIOD_MS;
            r.cost = 5;
        }),
        edge(&|r| {
            r.algorithm = Alg::SlidingWindow as i32;
            r.limit = MAX_LIMIT;
            r.cost = MAX_LIMIT;
        }),
    ] {
        reset(&mut c, "", "edge").await;
        assert!(check(&mut c, &req).await.allowed, "{req:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Reset
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn reset_forgets_a_key_and_says_whether_it_counted() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    assert!(!reset(&mut c, "", "never").await, "a key never checked");

    for algorithm in ALGORITHMS {
        let req = inline(&format!("r:{algorithm:?}"), algorithm, 3, MINUTE);
        assert_eq!(exhaust(&mut c, &req, 3).await, 3);
        assert!(reset(&mut c, "", &req.key).await, "{algorithm:?}");
        assert_eq!(peek(&mut c, &req).await, allowed(3, 3, 0), "{algorithm:?}");
        assert!(!reset(&mut c, "", &req.key).await, "{algorithm:?} again");
        assert_eq!(exhaust(&mut c, &req, 3).await, 3, "{algorithm:?}");
    }

    // State that no longer counts is not reported as existing.
    let req = inline("stale", Alg::FixedWindow, 3, MINUTE);
    check(&mut c, &req).await;
    server.clock().advance_ms(MINUTE);
    assert!(!reset(&mut c, "", "stale").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_is_on_disk_before_it_answers() {
    let mut server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let req = inline("gone", Alg::FixedWindow, 3, HOUR);
    assert_eq!(exhaust(&mut c, &req, 3).await, 3);
    flush(&server).await;
    assert!(disk_row(server.data_dir(), "", "gone").is_some());

    assert!(reset(&mut c, "", "gone").await);
    assert_eq!(
        disk_row(server.data_dir(), "", "gone"),
        None,
        "the row is deleted before Reset answers"
    );
    server.restart().await;
    let mut c = server.rate_limits().await;
    assert_eq!(peek(&mut c, &req).await, allowed(3, 3, 0));
    assert!(!reset(&mut c, "", "gone").await);
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn denied_keys_stay_denied_across_a_restart() {
    let mut server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let gcra_req = inline("p:gcra", Alg::Gcra, 10, MINUTE);
    let fixed = inline("p:fixed", Alg::FixedWindow, 10, HOUR);
    let sliding = inline("p:sliding", Alg::SlidingWindow, 10, MINUTE);
    let partial = inline("p:partial", Alg::FixedWindow, 10, HOUR);
    // The sliding key has counts in two windows: 6 in the previous one, then 5 more.
    for _ in 0..6 {
        assert!(check(&mut c, &sliding).await.allowed);
    }
    server
        .clock()
        .set_ms(window_start(START_MS, MINUTE) + MINUTE + 10 * SECOND);
    assert_eq!(exhaust(&mut c, &sliding, 10).await, 5);
    assert_eq!(exhaust(&mut c, &gcra_req, 10).await, 10);
    assert_eq!(exhaust(&mut c, &fixed, 10).await, 10);
    for _ in 0..4 {
        assert!(check(&mut c, &partial).await.allowed);
    }
    let all = [&gcra_req, &fixed, &sliding, &partial];
    let mut before = Vec::new();
    for req in all {
        before.push(peek(&mut c, req).await);
    }

    server.restart().await;
    let mut c = server.rate_limits().await;
    for (req, was) in all.iter().zip(&before) {
        assert_eq!(peek(&mut c, req).await, *was, "{}", req.key);
    }
    for req in [&gcra_req, &fixed, &sliding] {
        let a = check(&mut c, req).await;
        assert!(!a.allowed, "{} got a fresh budget: {a:?}", req.key);
    }
    assert_eq!(check(&mut c, &partial).await.remaining, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn flushed_rows_hold_each_keys_state() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let dir = server.data_dir();
    let now = START_MS;
    // One unit a minute: 3 units owe three minutes.
    check(&mut c, &costing(&inline("g", Alg::Gcra, 60, HOUR), 3)).await;
    check(&mut c, &costing(&inline("f", Alg::FixedWindow, 5, HOUR), 2)).await;
    check(&mut c, &inline("s", Alg::SlidingWindow, 10, MINUTE)).await;
    let sliding_start = window_start(now, MINUTE);
    server.clock().set_ms(sliding_start + MINUTE + 5 * SECOND);
    check(
        &mut c,
        &costing(&inline("s", Alg::SlidingWindow, 10, MINUTE), 4),
    )
    .await;
    assert_eq!(
        disk_rows(dir),
        0,
        "nothing is written before the write-behind"
    );

    flush(&server).await;
    let tat_ms = now + 3 * MINUTE;
    assert_eq!(
        disk_row(dir, "", "g"),
        Some((format!("gcra {}", tat_ms * 1_000_000), tat_ms))
    );
    let f_start = window_start(now, HOUR);
    assert_eq!(
        disk_row(dir, "", "f"),
        Some((format!("fixed_window {HOUR} {f_start} 2"), f_start + HOUR))
    );
    let s_start = sliding_start + MINUTE;
    assert_eq!(
        disk_row(dir, "", "s"),
        Some((
            format!("sliding_window {MINUTE} {s_start} 1 4"),
            s_start + 2 * MINUTE
        ))
    );
    assert_eq!(disk_rows(dir), 3);

    // A Peek or a denied Check changes nothing to write.
    assert_eq!(flush_count(&server).await, 0);
    peek(&mut c, &inline("f", Alg::FixedWindow, 5, HOUR)).await;
    check(&mut c, &costing(&inline("f", Alg::FixedWindow, 5, HOUR), 4)).await;
    assert_eq!(flush_count(&server).await, 0);
}

/// Flushes and returns how many keys were written.
async fn flush_count(server: &TestServer) -> usize {
    server.store().flush_rate_limits().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn state_is_written_behind_in_the_background() {
    let server = TestServer::start_with(
        |c| c.write_behind = Duration::from_millis(100),
        ServerSettings::default(),
    )
    .await;
    let mut c = server.rate_limits().await;
    let req = inline("behind", Alg::FixedWindow, 5, HOUR);
    assert_eq!(exhaust(&mut c, &req, 5).await, 5);
    let start = window_start(START_MS, HOUR);
    let expected = Some((format!("fixed_window {HOUR} {start} 5"), start + HOUR));
    tokio::time::timeout(BOUND, async {
        while disk_row(server.data_dir(), "", "behind") != expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the state was not written behind within {BOUND:?}: {:?}",
            disk_row(server.data_dir(), "", "behind")
        )
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_deletes_rows_that_count_for_nothing() {
    let server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let dir = server.data_dir();
    let minute = inline("minute", Alg::FixedWindow, 5, MINUTE);
    let hour = inline("hour", Alg::FixedWindow, 5, HOUR);
    check(&mut c, &minute).await;
    check(&mut c, &hour).await;
    flush(&server).await;
    let minute_end = window_start(START_MS, MINUTE) + MINUTE;
    assert_eq!(disk_row(dir, "", "minute").map(|r| r.1), Some(minute_end));
    assert_eq!(disk_rows(dir), 2);

    server.clock().set_ms(minute_end - 1);
    assert_eq!(server.store().maintain().await.unwrap(), 0);
    assert_eq!(disk_rows(dir), 2);

    server.clock().set_ms(minute_end);
    assert_eq!(server.store().maintain().await.unwrap(), 1);
    assert_eq!(disk_row(dir, "", "minute"), None);
    assert!(disk_row(dir, "", "hour").is_some(), "the live row stays");
    assert_eq!(check(&mut c, &minute).await.remaining, 4, "a new window");
    assert_eq!(check(&mut c, &hour).await.remaining, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn state_expired_on_disk_loads_as_a_fresh_key() {
    let mut server = TestServer::start().await;
    let mut c = server.rate_limits().await;
    let req = inline("old", Alg::Gcra, 5, MINUTE);
    assert_eq!(exhaust(&mut c, &req, 5).await, 5);
    server.restart().await;
    server.clock().advance_ms(MINUTE);
    let mut c = server.rate_limits().await;
    assert_eq!(peek(&mut c, &req).await, allowed(5, 5, 0));
    assert!(!reset(&mut c, "", "old").await);
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn evicted_keys_are_reloaded_with_their_state() {
    // No budget at all: every key is evicted as soon as it is clean.
    let server =
        TestServer::start_with(|c| c.limit_memory_bytes = 0, ServerSettings::default()).await;
    let mut c = server.rate_limits().await;
    let keys: Vec<CheckRequest> = ALGORITHMS
        .iter()
        .map(|&a| inline(&format!("evicted:{a:?}"), a, 5, HOUR))
        .collect();
    for req in &keys {
        assert_eq!(exhaust(&mut c, req, 5).await, 5);
    }
    // Dirty keys stay however many others come and go.
    for i in 0..200 {
        check(&mut c, &inline(&format!("other:{i}"), Alg::Gcra, 5, HOUR)).await;
    }
    for req in &keys {
        assert!(!check(&mut c, req).await.allowed, "{} was lost", req.key);
    }

    flush(&server).await;
    assert_eq!(
        server.store().rate_limit_memory(),
        (0, 0),
        "every clean key is evicted"
    );
    for req in &keys {
        assert!(!check(&mut c, req).await.allowed, "{} reloaded", req.key);
    }
    assert!(
        check(&mut c, &inline("other:0", Alg::Gcra, 5, HOUR))
            .await
            .remaining
            == 3,
        "a partly used key is reloaded with its count"
    );

    // Reset of an evicted key finds its state on disk.
    flush(&server).await;
    assert_eq!(server.store().rate_limit_memory().0, 0);
    assert!(reset(&mut c, "", &keys[0].key).await);
    assert_eq!(check(&mut c, &keys[0]).await.remaining, 4);

    // Many concurrent first Checks of an evicted, partly used key admit exactly what is left.
    let half = inline("evicted:half", Alg::SlidingWindow, 100, HOUR);
    for _ in 0..30 {
        check(&mut c, &half).await;
    }
    flush(&server).await;
    let answers = concurrently(&server, vec![half.clone(); 500]).await;
    assert_exactly_admitted("evicted:half", &answers, 70);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_stored_byte_for_byte() {
    // No budget: each key is evicted once written, so every later Check reads it back.
    let mut server =
        TestServer::start_with(|c| c.limit_memory_bytes = 0, ServerSettings::default()).await;
    let mut c = server.rate_limits().await;
    let keys = [
        "a\0b",
        "a\0c",
        "a\nb",
        "é",
        "\u{10FFFF}",
        "a%",
        "a_",
        "A",
        "a",
        "'; DROP TABLE rate_limits; --",
    ];
    let req = |key: &str| inline(key, Alg::FixedWindow, 2, HOUR);
    for key in keys {
        assert_eq!(exhaust(&mut c, &req(key), 2).await, 2, "{key:?}");
    }
    flush(&server).await;
    assert_eq!(server.store().rate_limit_memory().0, 0);
    assert_eq!(disk_rows(server.data_dir()), keys.len() as u64);
    for key in keys {
        assert!(!check(&mut c, &req(key)).await.allowed, "{key:?} reloaded");
    }
    server.restart().await;
    let mut c = server.rate_limits().await;
    for key in keys {
        assert!(!check(&mut c, &req(key)).await.allowed, "{key:?} restarted");
    }
    assert_eq!(check(&mut c, &req("a\0d")).await.remaining, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_near_its_budget() {
    let budget = 64 * 1024;
    let server = TestServer::start_with(
        |c| c.limit_memory_bytes = budget as u64,
        ServerSettings::default(),
    )
    .await;
    let mut c = server.rate_limits().await;
    let key = |i: usize| format!("budget:{i:05}");
    let charge = key(0).len() + SLOT_OVERHEAD;
    let first = inline(&key(0), Alg::FixedWindow, 3, HOUR);
    assert_eq!(exhaust(&mut c, &first, 3).await, 3);

    // Write-behind rounds of 100 new keys each.
    let total = 2000;
    for round in 0..total / 100 {
        for i in round * 100 + 1..=(round + 1) * 100 {
            check(&mut c, &inline(&key(i), Alg::FixedWindow, 3, HOUR)).await;
        }
        flush(&server).await;
        let (keys, bytes) = server.store().rate_limit_memory();
        assert_eq!(bytes, keys * charge);
        assert!(
            bytes <= budget + 64 * charge,
            "round {round}: {bytes} bytes ({keys} keys) in memory for a budget of {budget}"
        );
    }
    let (keys, _) = server.store().rate_limit_memory();
    assert!(keys < total / 2, "{keys} of {total} keys still in memory");

    // The first key, long evicted, is still spent; a later one still has its count.
    assert!(!check(&mut c, &first).await.allowed);
    assert_eq!(
        check(&mut c, &inline(&key(7), Alg::FixedWindow, 3, HOUR))
            .await
            .remaining,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_is_back_within_its_budget_after_the_flush_following_a_burst() {
    let budget = 64 * 1024;
    let server = TestServer::start_with(
        |c| {
            c.limit_memory_bytes = budget as u64;
            // Only this test's flush writes.
            c.write_behind = Duration::from_secs(600);
        },
        ServerSettings::default(),
    )
    .await;
    let mut c = server.rate_limits().await;
    let key = |i: usize| format!("burst:{i:05}");
    let charge = key(0).len() + SLOT_OVERHEAD;
    for i in 0..3000 {
        check(&mut c, &inline(&key(i), Alg::FixedWindow, 3, HOUR)).await;
    }
    let (keys, _) = server.store().rate_limit_memory();
    assert_eq!(keys, 3000, "dirty keys are never evicted");
    flush(&server).await;
    let (keys, bytes) = server.store().rate_limit_memory();
    assert!(
        bytes <= budget + 64 * charge,
        "{bytes} bytes ({keys} keys) in memory after the flush, for a budget of {budget}"
    );
}
