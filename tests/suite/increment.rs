//! Increment: creation at 0 + delta with the request's TTL, existing counters keeping their
//! TTL, the ASCII decimal representation seen by Get, restarting an expired counter, and
//! FAILED_PRECONDITION (with nothing changed) on overflow and on values that are not integers;
//! `if_present`, which changes only a live counter, and `found`.

use tonic::Code;

use larder::pb;

use crate::common::{Client, TestServer, assert_code, get, increment, set, stats};

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

/// An Increment with `if_present`.
async fn increment_present(c: &mut Client, key: &str, delta: i64) -> pb::IncrementResponse {
    c.increment(pb::IncrementRequest {
        namespace: String::new(),
        key: key.into(),
        delta,
        ttl_ms: 60_000,
        if_present: true,
    })
    .await
    .unwrap_or_else(|s| panic!("Increment if_present {key:?}: {s:?}"))
    .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn if_present_changes_only_a_live_counter_and_found_says_whether_it_was_there() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    assert_eq!(
        increment_present(&mut c, "absent", 5).await,
        pb::IncrementResponse {
            value: 0,
            version: 0,
            found: false
        },
        "nothing to change"
    );
    assert!(
        !get(&mut c, "", "absent").await.found,
        "and nothing created"
    );

    let created = increment(&mut c, "n", 10, 1_000).await.unwrap();
    assert!(!created.found, "created by this call");
    let added = increment_present(&mut c, "n", 5).await;
    assert_eq!((added.value, added.found), (15, true));
    assert!(added.version > created.version);
    assert_eq!(
        get(&mut c, "", "n").await.ttl_ms,
        1_000,
        "the counter keeps its TTL"
    );
    assert!(increment(&mut c, "n", 1, 0).await.unwrap().found);

    server.clock().advance_ms(1_000);
    assert!(
        !increment_present(&mut c, "n", 1).await.found,
        "expired counts as absent"
    );
    assert!(!get(&mut c, "", "n").await.found);

    set(&mut c, "", "text", "abc", 0).await;
    let err = c
        .increment(pb::IncrementRequest {
            key: "text".into(),
            delta: 1,
            if_present: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}
