//! CacheService/Scan through the real server: pages cover every live key of a namespace
//! exactly once, in byte order of the keys, and the last page has no next token; a key present
//! throughout is listed once while other keys come and go between pages; a prefix
//! lists exactly the keys starting with it (an indexed range, like DeletePrefix); expired
//! entries are skipped from the millisecond they expire (ManualClock); namespaces are
//! separate; a page stops at one maximal value's worth of values and at one batch of keys;
//! keys stored under a larger key limit are still listed, with tokens that lead on;
//! bad requests are INVALID_ARGUMENT naming the field; a token confined to a namespace
//! prefix cannot scan another namespace; and a restart changes nothing, page tokens included.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::store::SetCondition;
use larder::{AuthSettings, RequestLimits, ServerSettings, pb};
use tonic::{Code, Request, Status};

use crate::common::{Client, TestServer, assert_code, assert_invalid, set};

/// One Scan call.
async fn scan_once(
    c: &mut Client,
    namespace: &str,
    prefix: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ScanResponse, Status> {
    c.scan(pb::ScanRequest {
        namespace: namespace.into(),
        prefix: prefix.into(),
        page_size,
        page_token: page_token.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Every page of a Scan, following the tokens until one is empty.
async fn all_pages(
    c: &mut Client,
    namespace: &str,
    prefix: &str,
    page_size: u32,
) -> Vec<pb::ScanResponse> {
    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = scan_once(c, namespace, prefix, page_size, &token)
            .await
            .unwrap_or_else(|s| panic!("Scan {namespace:?} {prefix:?}: {s:?}"));
        token = page.next_page_token.clone();
        pages.push(page);
        if token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 10_000, "the pages never end");
    }
}

/// The keys of every page, in the order they came.
async fn scanned_keys(
    c: &mut Client,
    namespace: &str,
    prefix: &str,
    page_size: u32,
) -> Vec<String> {
    all_pages(c, namespace, prefix, page_size)
        .await
        .into_iter()
        .flat_map(|p| p.entries)
        .map(|e| e.key)
        .collect()
}

/// Writes `keys` to `namespace` in one SetMany, each key's value being the key itself.
async fn fill(c: &mut Client, namespace: &str, keys: &[String]) -> Vec<u64> {
    c.set_many(pb::SetManyRequest {
        namespace: namespace.into(),
        entries: keys
            .iter()
            .map(|k| pb::SetEntry {
                key: k.clone(),
                value: k.clone().into_bytes().into(),
                ttl_ms: 0,
            })
            .collect(),
    })
    .await
    .expect("SetMany")
    .into_inner()
    .versions
}

/// Keys in no particular order, some sharing prefixes, some beyond ASCII, and some that
/// differ only after a NUL (the least character, which the page bound steps over).
fn mixed_keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..240)
        .map(|i| format!("k{:03}", (i * 97) % 240))
        .collect();
    keys.extend(
        [
            "a",
            "a\0",
            "a\0b",
            "b",
            "é",
            "\u{FFFF}",
            "\u{10FFFF}",
            "z:1",
            "z",
        ]
        .map(String::from),
    );
    keys
}

/// The keys sorted as the daemon lists them: by their UTF-8 bytes.
fn byte_order(keys: &[String]) -> Vec<String> {
    let mut sorted = keys.to_vec();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    sorted
}

#[tokio::test]
async fn pages_cover_every_key_once_in_key_order() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let keys = mixed_keys();
    let versions: BTreeMap<String, u64> = keys
        .iter()
        .cloned()
        .zip(fill(&mut c, "app", &keys).await)
        .collect();
    let expected = byte_order(&keys);

    for page_size in [1, 7, 50, 249, 1000] {
        let pages = all_pages(&mut c, "app", "", page_size).await;
        let mut listed = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            assert!(
                page.entries.len() <= page_size as usize,
                "page {i} of size {page_size}"
            );
            // Only the last page may be short, and it is never empty while keys remain.
            if i + 1 < pages.len() {
                assert_eq!(page.entries.len(), page_size as usize, "page {i}");
            } else {
                assert!(!page.entries.is_empty(), "an empty last page");
            }
            for e in &page.entries {
                assert!(e.found, "{e:?}");
                assert_eq!(e.value, e.key.as_bytes(), "{e:?}");
                assert_eq!(e.version, versions[&e.key], "{e:?}");
                assert_eq!(e.ttl_ms, 0, "{e:?}");
                listed.push(e.key.clone());
            }
        }
        assert_eq!(listed, expected, "page_size {page_size}");
        assert_eq!(
            pages.len(),
            expected.len().div_ceil(page_size as usize),
            "page_size {page_size}: no page beyond the last key"
        );
    }

    // page_size 0 is 100.
    let first = scan_once(&mut c, "app", "", 0, "").await.unwrap();
    assert_eq!(first.entries.len(), 100);
    assert!(!first.next_page_token.is_empty());

    // An empty namespace lists nothing, in one page without a token.
    let none = scan_once(&mut c, "empty", "", 0, "").await.unwrap();
    assert!(none.entries.is_empty() && none.next_page_token.is_empty());
}

#[tokio::test]
async fn a_key_present_throughout_a_scan_is_listed_once_whatever_else_changes() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let kept: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
    fill(&mut c, "app", &kept).await;
    let doomed: Vec<String> = (0..100).map(|i| format!("k{i:03}x")).collect();
    fill(&mut c, "app", &doomed).await;

    let mut token = String::new();
    let mut listed: Vec<String> = Vec::new();
    let mut round = 0;
    loop {
        let page = scan_once(&mut c, "app", "", 9, &token).await.unwrap();
        listed.extend(page.entries.into_iter().map(|e| e.key));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        // Between pages: new keys before and after the cursor, deleted ones on both sides,
        // and rewrites of kept keys.
        let added = vec![format!("a{round:03}"), format!("k{:03}y", 99 - round)];
        fill(&mut c, "app", &added).await;
        c.delete_many(pb::DeleteManyRequest {
            namespace: "app".into(),
            keys: vec![doomed[round].clone(), doomed[99 - round].clone()],
        })
        .await
        .unwrap();
        fill(&mut c, "app", &kept[round..round + 1]).await;
        round += 1;
    }
    assert!(
        listed.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()),
        "not strictly in key order: {listed:?}"
    );
    for key in &kept {
        assert_eq!(listed.iter().filter(|k| *k == key).count(), 1, "{key}");
    }
}

#[tokio::test]
async fn a_prefix_lists_exactly_the_keys_starting_with_it() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let keys: Vec<String> = [
        "user:4",
        "user:42",
        "user:42:a",
        "user:42:b",
        "user:420",
        "user:43",
        "user;",
        "users",
        "\u{10FFFF}",
        "\u{10FFFF}a",
        "\u{10FFFF}\u{10FFFF}",
    ]
    .map(String::from)
    .to_vec();
    fill(&mut c, "app", &keys).await;

    for (prefix, expected) in [
        (
            "user:42",
            // Byte order: '0' sorts before ':'.
            &["user:42", "user:420", "user:42:a", "user:42:b"][..],
        ),
        ("user:42:", &["user:42:a", "user:42:b"]),
        (
            "user:",
            &[
                "user:4",
                "user:42",
                "user:420",
                "user:42:a",
                "user:42:b",
                "user:43",
            ],
        ),
        ("user:5", &[]),
        ("nobody", &[]),
        // No string is above this prefix: the range has no upper bound.
        (
            "\u{10FFFF}",
            &["\u{10FFFF}", "\u{10FFFF}a", "\u{10FFFF}\u{10FFFF}"],
        ),
    ] {
        for page_size in [1, 2, 100] {
            assert_eq!(
                scanned_keys(&mut c, "app", prefix, page_size).await,
                expected,
                "prefix {prefix:?}, page_size {page_size}"
            );
        }
    }
}

#[tokio::test]
async fn expired_entries_are_skipped_from_the_millisecond_they_expire() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "a", "1", 1000).await;
    set(&mut c, "", "b", "2", 0).await;
    set(&mut c, "", "c", "3", 5000).await;
    set(&mut c, "", "d", "4", 1001).await;

    server.clock().advance_ms(999);
    let page = scan_once(&mut c, "", "", 0, "").await.unwrap();
    let listed: Vec<(&str, u64)> = page
        .entries
        .iter()
        .map(|e| (&e.key[..], e.ttl_ms))
        .collect();
    assert_eq!(listed, [("a", 1), ("b", 0), ("c", 4001), ("d", 2)]);

    server.clock().advance_ms(1);
    assert_eq!(scanned_keys(&mut c, "", "", 1).await, ["b", "c", "d"]);
    server.clock().advance_ms(1);
    assert_eq!(scanned_keys(&mut c, "", "", 1).await, ["b", "c"]);

    // The expired rows are still on disk until the sweeper runs: Scan skips them itself.
    // A page of one that ends on a live key still finds the next live key past expired ones.
    set(&mut c, "", "bb", "x", 10).await;
    set(&mut c, "", "bc", "x", 10).await;
    server.clock().advance_ms(10);
    assert_eq!(scanned_keys(&mut c, "", "", 1).await, ["b", "c"]);
    server.store().maintain().await.unwrap();
    assert_eq!(scanned_keys(&mut c, "", "", 1).await, ["b", "c"]);
}

#[tokio::test]
async fn namespaces_are_listed_apart() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "one", "k1", "a", 0).await;
    set(&mut c, "one", "k2", "a", 0).await;
    set(&mut c, "two", "k1", "b", 0).await;
    set(&mut c, "", "k3", "c", 0).await;
    set(&mut c, "one:x", "k4", "d", 0).await;

    assert_eq!(scanned_keys(&mut c, "one", "", 1).await, ["k1", "k2"]);
    assert_eq!(scanned_keys(&mut c, "two", "", 1).await, ["k1"]);
    assert_eq!(scanned_keys(&mut c, "one:x", "", 1).await, ["k4"]);
    // An empty namespace is "default".
    assert_eq!(scanned_keys(&mut c, "", "", 1).await, ["k3"]);
    assert_eq!(scanned_keys(&mut c, "default", "", 1).await, ["k3"]);
    let two = scan_once(&mut c, "two", "", 0, "").await.unwrap();
    assert_eq!(two.entries[0].value, &b"b"[..]);
}

#[tokio::test]
async fn a_page_stops_at_one_maximal_value_and_at_one_batch() {
    let limits = RequestLimits {
        max_value_bytes: 1000,
        max_batch: 5,
        ..RequestLimits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut c = server.client().await;
    // 400-byte values: two make 800 bytes, a third would make 1200.
    for i in 0..7 {
        set(&mut c, "big", &format!("k{i}"), vec![b'x'; 400], 0).await;
    }
    let big = all_pages(&mut c, "big", "", 100).await;
    let sizes: Vec<usize> = big.iter().map(|p| p.entries.len()).collect();
    assert_eq!(sizes, [2, 2, 2, 1]);
    let keys: Vec<String> = big
        .into_iter()
        .flat_map(|p| p.entries)
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "k5", "k6"]);

    // One maximal value fills a page alone; a page always holds at least one entry.
    set(&mut c, "max", "a", vec![b'y'; 1000], 0).await;
    set(&mut c, "max", "b", vec![b'y'; 1], 0).await;
    let sizes: Vec<usize> = all_pages(&mut c, "max", "", 100)
        .await
        .iter()
        .map(|p| p.entries.len())
        .collect();
    assert_eq!(sizes, [1, 1]);

    // Small values: a page holds at most one batch (max_batch) of keys.
    let keys: Vec<String> = (0..12).map(|i| format!("s{i:02}")).collect();
    fill(&mut c, "small", &keys[..5]).await;
    fill(&mut c, "small", &keys[5..10]).await;
    fill(&mut c, "small", &keys[10..]).await;
    let sizes: Vec<usize> = all_pages(&mut c, "small", "", 1000)
        .await
        .iter()
        .map(|p| p.entries.len())
        .collect();
    assert_eq!(sizes, [5, 5, 2]);
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "k", "v", 0).await;

    assert_invalid(scan_once(&mut c, "", "", 1001, "").await, "page_size");
    assert_invalid(scan_once(&mut c, "", "", u32::MAX, "").await, "page_size");
    assert_invalid(
        scan_once(&mut c, &"n".repeat(129), "", 0, "").await,
        "namespace",
    );
    assert_invalid(
        scan_once(&mut c, "", &"p".repeat(1025), 0, "").await,
        "prefix",
    );
    for token in [
        "not base64!".to_owned(),
        "a".to_owned(),
        "aGVsbG8=".to_owned(), // padded: not what Scan answers
        URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        // Longer than any key limit a configuration can set.
        URL_SAFE_NO_PAD.encode("k".repeat((64 << 10) + 1)),
    ] {
        assert_invalid(scan_once(&mut c, "", "", 0, &token).await, "page_token");
    }

    // The bounds themselves are accepted.
    scan_once(&mut c, "", &"p".repeat(1024), 1000, "")
        .await
        .unwrap();
    scan_once(&mut c, &"n".repeat(128), "", 1, "")
        .await
        .unwrap();
    for len in [1024, 64 << 10] {
        let after_long = URL_SAFE_NO_PAD.encode("k".repeat(len));
        let page = scan_once(&mut c, "", "", 0, &after_long).await.unwrap();
        assert!(page.entries.is_empty(), "{page:?}");
    }
}

#[tokio::test]
async fn keys_longer_than_a_lowered_key_limit_are_still_listed_page_by_page() {
    // As after `cache.max_key` was lowered: keys longer than the limit are on disk.
    let limits = RequestLimits {
        max_key_bytes: 8,
        max_batch: 5,
        ..RequestLimits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let store = server.store();
    let long: Vec<String> = (0..7)
        .map(|i| format!("long-key-{i}-{}", "x".repeat(7)))
        .collect();
    for key in &long {
        store
            .set("app", key, b"v".to_vec().into(), 0, SetCondition::Always)
            .await
            .unwrap();
    }
    drop(store);
    let mut c = server.client().await;
    // Five keys of 8 bytes is the key budget of a page: 40 bytes, two of these 18-byte keys.
    let sizes: Vec<usize> = all_pages(&mut c, "app", "", 5)
        .await
        .iter()
        .map(|p| p.entries.len())
        .collect();
    assert_eq!(sizes, [2, 2, 2, 1]);
    assert_eq!(scanned_keys(&mut c, "app", "", 1).await, long);
}

const FULL: &str = "full-0123456789abcdefghijklmnop";
const SHOP: &str = "shop-0123456789abcdefghijklmnop";
const READER: &str = "reader-0123456789abcdefghijklmn";

fn call<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn scan_request(namespace: &str) -> pb::ScanRequest {
    pb::ScanRequest {
        namespace: namespace.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_token_confined_to_a_namespace_prefix_cannot_scan_another() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("tokens");
    std::fs::write(
        &path,
        format!("{FULL}\n{SHOP} services=cache namespace=shop:\n{READER} read_only\n"),
    )
    .unwrap();
    let server = TestServer::with_settings(ServerSettings {
        auth: Some(AuthSettings {
            token_file: path,
            unix_socket: true,
        }),
        ..ServerSettings::default()
    })
    .await;
    let mut c = CacheServiceClient::new(server.channel().await);
    for ns in ["shop:carts", "blog", "default"] {
        c.set(call(
            pb::SetRequest {
                namespace: ns.into(),
                key: "secret".into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            },
            FULL,
        ))
        .await
        .unwrap();
    }

    let inside = c
        .scan(call(scan_request("shop:carts"), SHOP))
        .await
        .unwrap();
    assert_eq!(inside.into_inner().entries.len(), 1);
    for ns in ["blog", "", "default", "sho"] {
        let refused = assert_code(
            c.scan(call(scan_request(ns), SHOP)).await,
            Code::PermissionDenied,
        );
        assert!(refused.message().contains("namespace="), "{refused:?}");
        assert!(!refused.message().contains(SHOP), "{refused:?}");
    }
    // Scan is a read: a read_only token may list any namespace.
    let read = c.scan(call(scan_request("blog"), READER)).await.unwrap();
    assert_eq!(read.into_inner().entries.len(), 1);
    // And without a token, nothing.
    assert_code(c.scan(scan_request("blog")).await, Code::Unauthenticated);
}

#[tokio::test]
async fn a_restart_keeps_every_entry_and_every_page_token() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    let keys = mixed_keys();
    fill(&mut c, "app", &keys).await;
    set(&mut c, "app", "short", "lived", 60_000).await;
    let before = all_pages(&mut c, "app", "", 40).await;
    let tokens: Vec<String> = before.iter().map(|p| p.next_page_token.clone()).collect();

    server.restart().await;
    let mut c = server.client().await;
    let after = all_pages(&mut c, "app", "", 40).await;
    assert_eq!(after, before);
    // A token from before the restart still lists the same next page.
    let page = scan_once(&mut c, "app", "", 40, &tokens[2]).await.unwrap();
    assert_eq!(page, before[3]);
}
