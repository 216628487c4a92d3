//! Request validation over gRPC: every bad input is INVALID_ARGUMENT naming the field at fault
//! (keys, values, batches, conditions, TTLs, namespaces, prefixes), the largest good input is
//! accepted, and a rejected request writes nothing, including a SetMany whose one bad item is
//! in the middle of good ones.

use bytes::Bytes;
use larder::RequestLimits;
use larder::pb;
use larder::pb::Condition;
use tonic::Code;

use crate::common::{Client, TestServer, assert_code, assert_invalid, get, set, stats};

fn req(key: &str) -> pb::SetRequest {
    pb::SetRequest {
        key: key.into(),
        value: "v".into(),
        ..Default::default()
    }
}

fn entries(n: usize) -> Vec<pb::SetEntry> {
    (0..n)
        .map(|i| pb::SetEntry {
            key: format!("k{i}"),
            value: "v".into(),
            ttl_ms: 0,
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// Asserts that no write at all reached the store.
async fn assert_nothing_written(c: &mut Client) {
    let s = stats(c, "").await;
    assert_eq!((s.entries, s.sets, s.deletes), (0, 0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_must_be_1_to_1024_bytes() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let long = "k".repeat(1025);

    assert_invalid(c.get(pb::GetRequest::default()).await, "key");
    assert_invalid(c.set(req("")).await, "key");
    assert_invalid(c.set(req(&long)).await, "key");
    assert_invalid(
        c.get(pb::GetRequest {
            key: long.clone(),
            ..Default::default()
        })
        .await,
        "key",
    );
    assert_invalid(c.delete(pb::DeleteRequest::default()).await, "key");
    assert_invalid(c.touch(pb::TouchRequest::default()).await, "key");
    assert_invalid(
        c.increment(pb::IncrementRequest {
            key: long.clone(),
            delta: 1,
            ..Default::default()
        })
        .await,
        "key",
    );
    assert_invalid(
        c.get_many(pb::GetManyRequest {
            keys: vec!["a".into(), "b".into(), String::new()],
            ..Default::default()
        })
        .await,
        "keys[2]",
    );
    assert_invalid(
        c.delete_many(pb::DeleteManyRequest {
            keys: vec!["a".into(), long.clone()],
            ..Default::default()
        })
        .await,
        "keys[1]",
    );
    assert_nothing_written(&mut c).await;

    let max = "k".repeat(1024);
    assert!(
        c.set(req(&max)).await.unwrap().into_inner().stored,
        "1024 bytes is allowed"
    );
    assert!(get(&mut c, "", &max).await.found);
    // A key over the limit is not the 1024-byte key it starts with.
    assert_invalid(
        c.get(pb::GetRequest {
            key: long,
            ..Default::default()
        })
        .await,
        "key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn values_over_the_limit_are_refused() {
    let server = TestServer::with_limits(RequestLimits {
        max_value_bytes: 1024,
        ..RequestLimits::default()
    })
    .await;
    let mut c = server.client().await;

    let over = pb::SetRequest {
        value: vec![b'x'; 1025].into(),
        ..req("big")
    };
    assert_invalid(c.set(over).await, "value");
    let mut items = entries(3);
    items[1].value = vec![b'x'; 1025].into();
    assert_invalid(
        c.set_many(pb::SetManyRequest {
            namespace: String::new(),
            entries: items,
        })
        .await,
        "entries[1].value",
    );
    assert_nothing_written(&mut c).await;

    let at_limit = pb::SetRequest {
        value: vec![b'x'; 1024].into(),
        ..req("big")
    };
    assert!(c.set(at_limit).await.unwrap().into_inner().stored);
    assert_eq!(get(&mut c, "", "big").await.value.len(), 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_far_over_the_message_limit_is_refused_before_decoding() {
    let server = TestServer::with_limits(RequestLimits {
        max_value_bytes: 1024,
        ..RequestLimits::default()
    })
    .await;
    let mut c = server.client().await;
    // The message limit is one value plus a batch of maximal keys (about 1.1 MiB here).
    let huge = pb::SetRequest {
        value: vec![b'x'; 4 << 20].into(),
        ..req("huge")
    };
    let status = c
        .set(huge)
        .await
        .expect_err("a 4 MiB message over a 1 KiB value limit");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert_nothing_written(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_many_over_the_message_limit_is_refused_whole() {
    let limits = RequestLimits {
        max_value_bytes: 64 << 10,
        ..RequestLimits::default()
    };
    let message_limit = limits.max_message_bytes();
    let server = TestServer::with_limits(limits).await;
    let mut c = server.client().await;
    // Every value is within its limit; together they are not.
    let items: Vec<pb::SetEntry> = (0..message_limit / (64 << 10) + 2)
        .map(|i| pb::SetEntry {
            key: format!("k{i}"),
            value: vec![b'x'; 64 << 10].into(),
            ttl_ms: 0,
        })
        .collect();
    let status = c
        .set_many(pb::SetManyRequest {
            namespace: String::new(),
            entries: items,
        })
        .await
        .expect_err("a SetMany larger than the message limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_nothing_written(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_many_whose_values_exceed_the_response_limit_is_refused() {
    let server = TestServer::with_limits(RequestLimits {
        max_value_bytes: 1024,
        ..RequestLimits::default()
    })
    .await;
    let mut c = server.client().await;
    for key in ["a", "b"] {
        let at_limit = pb::SetRequest {
            value: vec![b'x'; 700].into(),
            ..req(key)
        };
        assert!(c.set(at_limit).await.unwrap().into_inner().stored);
    }
    // One value fits; two add up past the limit of one maximal value.
    let one = c
        .get_many(pb::GetManyRequest {
            namespace: String::new(),
            keys: vec!["a".into(), "missing".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.entries[0].value.len(), 700);
    assert_invalid(
        c.get_many(pb::GetManyRequest {
            namespace: String::new(),
            keys: vec!["a".into(), "b".into()],
        })
        .await,
        "keys",
    );
    // The same from disk, after a restart empties the memory cache.
    let mut server = server;
    server.restart().await;
    let mut c = server.client().await;
    assert_invalid(
        c.get_many(pb::GetManyRequest {
            namespace: String::new(),
            keys: vec!["b".into(), "a".into()],
        })
        .await,
        "keys",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_value_limit_is_16_mib() {
    let server = TestServer::start().await;
    let mut c = server.client().await.max_encoding_message_size(64 << 20);
    let over = pb::SetRequest {
        value: Bytes::from(vec![0u8; (16 << 20) + 1]),
        ..req("big")
    };
    assert_invalid(c.set(over).await, "value");
    assert_nothing_written(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_must_hold_1_to_1000_items() {
    let server = TestServer::start().await;
    let mut c = server.client().await;

    assert_invalid(
        c.get_many(pb::GetManyRequest {
            namespace: String::new(),
            keys: keys(1001),
        })
        .await,
        "keys",
    );
    assert_invalid(
        c.delete_many(pb::DeleteManyRequest {
            namespace: String::new(),
            keys: keys(1001),
        })
        .await,
        "keys",
    );
    assert_invalid(
        c.set_many(pb::SetManyRequest {
            namespace: String::new(),
            entries: entries(1001),
        })
        .await,
        "entries",
    );
    assert_invalid(c.get_many(pb::GetManyRequest::default()).await, "keys");
    assert_invalid(
        c.delete_many(pb::DeleteManyRequest::default()).await,
        "keys",
    );
    assert_invalid(c.set_many(pb::SetManyRequest::default()).await, "entries");
    assert_nothing_written(&mut c).await;

    let versions = c
        .set_many(pb::SetManyRequest {
            namespace: String::new(),
            entries: entries(1000),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 1000);
    let got = c
        .get_many(pb::GetManyRequest {
            namespace: String::new(),
            keys: keys(1000),
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(got.iter().filter(|e| e.found).count(), 1000);
    let deleted = c
        .delete_many(pb::DeleteManyRequest {
            namespace: String::new(),
            keys: keys(1000),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_many_with_one_bad_item_writes_none_of_them() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "k0", "before", 0).await;
    let before = stats(&mut c, "").await;

    let mut items = entries(6);
    items[3].key = String::new();
    let status = assert_code(
        c.set_many(pb::SetManyRequest {
            namespace: String::new(),
            entries: items,
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("entries[3].key"), "{status:?}");

    let mut items = entries(6);
    items[4].ttl_ms = u64::MAX;
    assert_invalid(
        c.set_many(pb::SetManyRequest {
            namespace: String::new(),
            entries: items,
        })
        .await,
        "entries[4].ttl_ms",
    );

    let g = get(&mut c, "", "k0").await;
    assert_eq!(
        g.value, "before",
        "the good item before the bad one was not written"
    );
    let found = c
        .get_many(pb::GetManyRequest {
            namespace: String::new(),
            keys: keys(6),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .map(|e| e.found)
        .collect::<Vec<_>>();
    assert_eq!(found, [true, false, false, false, false, false]);
    let after = stats(&mut c, "").await;
    assert_eq!((after.entries, after.sets), (before.entries, before.sets));
}

#[tokio::test(flavor = "multi_thread")]
async fn conditions_must_be_known_and_complete() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    assert_invalid(
        c.set(pb::SetRequest {
            condition: 99,
            ..req("k")
        })
        .await,
        "condition",
    );
    assert_invalid(
        c.set(pb::SetRequest {
            condition: -1,
            ..req("k")
        })
        .await,
        "condition",
    );
    assert_invalid(
        c.set(pb::SetRequest {
            condition: Condition::IfVersion as i32,
            expected_version: 0,
            ..req("k")
        })
        .await,
        "expected_version",
    );
    assert_nothing_written(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ttls_over_100_years_are_refused() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let hundred_years = 100 * 365 * 24 * 3600 * 1000;
    set(&mut c, "", "counter", "1", 0).await;
    let before = stats(&mut c, "").await;

    assert_invalid(
        c.set(pb::SetRequest {
            ttl_ms: u64::MAX,
            ..req("k")
        })
        .await,
        "ttl_ms",
    );
    assert_invalid(
        c.set(pb::SetRequest {
            ttl_ms: hundred_years + 1,
            ..req("k")
        })
        .await,
        "ttl_ms",
    );
    assert_invalid(
        c.touch(pb::TouchRequest {
            key: "counter".into(),
            ttl_ms: u64::MAX,
            ..Default::default()
        })
        .await,
        "ttl_ms",
    );
    assert_invalid(
        c.increment(pb::IncrementRequest {
            key: "counter".into(),
            delta: 1,
            ttl_ms: u64::MAX,
            ..Default::default()
        })
        .await,
        "ttl_ms",
    );
    let g = get(&mut c, "", "counter").await;
    assert_eq!(
        (&g.value[..], g.ttl_ms),
        (&b"1"[..], 0),
        "neither touched nor incremented"
    );
    assert!(!get(&mut c, "", "k").await.found);
    assert_eq!(stats(&mut c, "").await.sets, before.sets);

    let r = c
        .set(pb::SetRequest {
            ttl_ms: hundred_years,
            ..req("k")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.stored, "exactly 100 years is allowed");
    assert_eq!(get(&mut c, "", "k").await.ttl_ms, hundred_years);
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_longer_than_128_bytes_are_refused() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let long = "n".repeat(129);

    assert_invalid(
        c.set(pb::SetRequest {
            namespace: long.clone(),
            ..req("k")
        })
        .await,
        "namespace",
    );
    assert_invalid(
        c.get(pb::GetRequest {
            namespace: long.clone(),
            key: "k".into(),
        })
        .await,
        "namespace",
    );
    assert_invalid(
        c.set_many(pb::SetManyRequest {
            namespace: long.clone(),
            entries: entries(1),
        })
        .await,
        "namespace",
    );
    assert_invalid(
        c.clear(pb::ClearRequest {
            namespace: long.clone(),
        })
        .await,
        "namespace",
    );
    assert_invalid(
        c.stats(pb::StatsRequest { namespace: long }).await,
        "namespace",
    );
    assert_nothing_written(&mut c).await;

    let max = "n".repeat(128);
    set(&mut c, &max, "k", "v", 0).await;
    assert!(get(&mut c, &max, "k").await.found);
    assert_eq!(stats(&mut c, &max).await.entries, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_prefix_needs_a_prefix() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "a", "v", 0).await;
    assert_invalid(
        c.delete_prefix(pb::DeletePrefixRequest::default()).await,
        "prefix",
    );
    assert_invalid(
        c.delete_prefix(pb::DeletePrefixRequest {
            namespace: String::new(),
            prefix: "p".repeat(1025),
        })
        .await,
        "prefix",
    );
    assert!(
        get(&mut c, "", "a").await.found,
        "an empty prefix does not clear the namespace"
    );
    assert_eq!(stats(&mut c, "").await.deletes, 0);
}

/// Asserts an INVALID_ARGUMENT whose message starts with `field` and stays short, whatever
/// the size of the input at fault.
#[track_caller]
fn assert_short_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    let status = assert_code(result, Code::InvalidArgument);
    let message = status.message();
    assert!(message.starts_with(field), "{field}: {message:?}");
    // The quoted part is at most 128 bytes; the field, the length and the reason add less
    // than as much again.
    assert!(message.len() <= 512, "{} bytes: {message:?}", message.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_input_is_not_echoed_in_errors() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut sessions = server.session_client().await;
    let mut limits = server.rate_limits().await;
    // 10 MiB of a character that `{:?}` escapes as six bytes (`\u{1}`): echoed whole, it
    // would be a 60 MiB grpc-message.
    let huge = "\u{1}".repeat(10 << 20);

    assert_short_invalid(c.set(req(&huge)).await, "key");
    assert_short_invalid(
        c.set(pb::SetRequest {
            namespace: huge.clone(),
            ..req("k")
        })
        .await,
        "namespace",
    );
    assert_nothing_written(&mut c).await;

    let mut data = std::collections::HashMap::new();
    data.insert(huge.clone(), "v".to_owned());
    let status = assert_code(
        sessions
            .create_session(pb::CreateSessionRequest {
                user_id: "u".into(),
                data,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    let message = status.message();
    assert!(message.starts_with("data[\"\\u{1}"), "{message:?}");
    assert!(
        message.contains(&format!("({} bytes)", huge.len())),
        "the full length is stated: {message:?}"
    );
    assert!(message.len() <= 512, "{} bytes", message.len());

    // RateLimitService takes messages of up to 4 MiB.
    assert_short_invalid(
        limits
            .check(pb::CheckRequest {
                policy: "\u{1}".repeat(3 << 20),
                key: "k".into(),
                ..Default::default()
            })
            .await,
        "policy",
    );
}
