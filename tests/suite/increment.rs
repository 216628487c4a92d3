//! Increment: creation at 0 + delta with the request's TTL, existing counters keeping their
//! TTL, the ASCII decimal representation seen by Get, restarting an expired counter, and
//! FAILED_PRECONDITION (with nothing changed) on overflow and on values that are not integers.

use tonic::Code;

use crate::common::{TestServer, assert_code, get, increment, set, stats};

#[tokio::test(flavor = "multi_thread")]
async fn increment_creates_the_counter_at_delta_with_the_ttl() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let r = increment(&mut c, "hits", 42, 5_000).await.unwrap();
    assert_eq!(r.value, 42);
    let g = get(&mut c, "", "hits").await;
    assert_eq!(
        (g.found, &g.value[..], g.version, g.ttl_ms),
        (true, &b"42"[..], r.version, 5_000),
        "stored as ASCII decimal"
    );

    let negative = increment(&mut c, "below", -7, 0).await.unwrap();
    assert_eq!(negative.value, -7);
    assert_eq!(get(&mut c, "", "below").await.value, "-7");

    let zero = increment(&mut c, "zero", 0, 0).await.unwrap();
    assert_eq!(zero.value, 0, "delta 0 reads the counter, creating it at 0");
    assert_eq!(get(&mut c, "", "zero").await.value, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_counter_keeps_its_ttl() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let first = increment(&mut c, "rate", 1, 5_000).await.unwrap();
    server.clock().advance_ms(2_000);
    let second = increment(&mut c, "rate", 41, 99_000).await.unwrap();
    assert_eq!(second.value, 42);
    assert!(second.version > first.version);
    let g = get(&mut c, "", "rate").await;
    assert_eq!((&g.value[..], g.ttl_ms), (&b"42"[..], 3_000));

    set(&mut c, "", "forever", "10", 0).await;
    assert_eq!(
        increment(&mut c, "forever", 5, 1_000).await.unwrap().value,
        15
    );
    assert_eq!(get(&mut c, "", "forever").await.ttl_ms, 0, "no TTL added");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_counter_starts_over() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    increment(&mut c, "window", 100, 1_000).await.unwrap();
    server.clock().advance_ms(1_000);
    let r = increment(&mut c, "window", 1, 2_000).await.unwrap();
    assert_eq!(r.value, 1, "the expired value is gone");
    assert_eq!(
        get(&mut c, "", "window").await.ttl_ms,
        2_000,
        "with the new TTL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overflow_is_failed_precondition_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let max = increment(&mut c, "max", i64::MAX, 0).await.unwrap();
    assert_eq!(max.value, i64::MAX);
    assert_code(
        increment(&mut c, "max", 1, 0).await,
        Code::FailedPrecondition,
    );
    let g = get(&mut c, "", "max").await;
    assert_eq!(
        (g.value, g.version),
        (i64::MAX.to_string().into(), max.version),
        "value and version unchanged"
    );

    let min = set(&mut c, "", "min", i64::MIN.to_string(), 0).await;
    assert_code(
        increment(&mut c, "min", -1, 0).await,
        Code::FailedPrecondition,
    );
    let g = get(&mut c, "", "min").await;
    assert_eq!(
        (g.value, g.version),
        (i64::MIN.to_string().into(), min.version)
    );

    assert_eq!(
        increment(&mut c, "max", -1, 0).await.unwrap().value,
        i64::MAX - 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_that_is_not_an_integer_is_failed_precondition() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let bad: [&'static str; 6] = ["abc", "1.5", " 1", "", "+1", "99999999999999999999"];
    let mut versions = Vec::new();
    for (i, v) in bad.iter().enumerate() {
        versions.push(set(&mut c, "", &format!("bad-{i}"), *v, 0).await.version);
    }
    let sets_before = stats(&mut c, "").await.sets;
    for (i, v) in bad.iter().enumerate() {
        let key = format!("bad-{i}");
        assert_code(
            increment(&mut c, &key, 1, 0).await,
            Code::FailedPrecondition,
        );
        let g = get(&mut c, "", &key).await;
        assert_eq!(
            (&g.value[..], g.version),
            (v.as_bytes(), versions[i]),
            "{key}"
        );
    }
    assert_eq!(stats(&mut c, "").await.sets, sets_before, "nothing written");

    set(&mut c, "", "from-set", "17", 0).await;
    assert_eq!(increment(&mut c, "from-set", 1, 0).await.unwrap().value, 18);
}
