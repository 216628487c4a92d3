//! Every CacheService RPC over gRPC, hits and misses alike: Get/Set/Delete, GetMany (request
//! order, duplicates, mixed hits and misses), SetMany, DeleteMany, DeletePrefix (neighbouring
//! keys untouched), Clear, namespaces (empty means "default", namespaces are isolated) and every
//! Stats field.

use larder::pb;

use crate::common::{
    Client, TestServer, delete, found, get, get_many, increment, set, stats, touch,
};

#[tokio::test(flavor = "multi_thread")]
async fn get_set_delete_round_trip() {
    let server = TestServer::start().await;
    let mut c = server.client().await;

    assert_eq!(
        get(&mut c, "", "k").await,
        pb::GetResponse::default(),
        "a miss is found=false with every other field zero"
    );

    let first = set(&mut c, "", "k", "v1", 0).await;
    assert!(first.stored);
    assert!(first.version > 0);
    assert_eq!(
        get(&mut c, "", "k").await,
        pb::GetResponse {
            found: true,
            value: "v1".into(),
            version: first.version,
            ttl_ms: 0,
        }
    );

    let second = set(&mut c, "", "k", "v2", 0).await;
    assert!(second.stored);
    assert!(second.version > first.version);
    let g = get(&mut c, "", "k").await;
    assert_eq!((g.value, g.version), ("v2".into(), second.version));

    let empty = set(&mut c, "", "empty", "", 0).await;
    let g = get(&mut c, "", "empty").await;
    assert!(g.found, "an empty value is a value");
    assert!(g.value.is_empty());
    assert_eq!(g.version, empty.version);

    assert!(delete(&mut c, "", "k").await);
    assert!(
        !delete(&mut c, "", "k").await,
        "a second delete finds nothing"
    );
    assert!(!delete(&mut c, "", "never-written").await);
    assert!(!get(&mut c, "", "k").await.found);
    assert!(
        get(&mut c, "", "empty").await.found,
        "only the deleted key went"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_many_answers_in_request_order_with_duplicates_and_misses() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let a = set(&mut c, "", "a", "1", 0).await.version;
    let b = set(&mut c, "", "b", "22", 5_000).await.version;
    let cc = set(&mut c, "", "c", "333", 0).await.version;
    set(&mut c, "", "gone", "x", 10).await;
    server.clock().advance_ms(10);

    let entries = get_many(&mut c, "", &["c", "missing", "a", "gone", "c", "b", "a"]).await;
    let got: Vec<(&str, bool, &[u8], u64, u64)> = entries
        .iter()
        .map(|e| (e.key.as_str(), e.found, &e.value[..], e.version, e.ttl_ms))
        .collect();
    assert_eq!(
        got,
        vec![
            ("c", true, &b"333"[..], cc, 0),
            ("missing", false, &b""[..], 0, 0),
            ("a", true, &b"1"[..], a, 0),
            ("gone", false, &b""[..], 0, 0),
            ("c", true, &b"333"[..], cc, 0),
            ("b", true, &b"22"[..], b, 4_990),
            ("a", true, &b"1"[..], a, 0),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_many_reads_entries_that_are_only_on_disk() {
    // A restart empties the memory LRU, so every hit below is answered from SQLite first.
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    let keys: Vec<String> = (0..50).map(|i| format!("key-{i:02}")).collect();
    let mut versions = Vec::new();
    for k in &keys {
        versions.push(set(&mut c, "", k, format!("value of {k}"), 0).await.version);
    }
    server.restart().await;
    let mut c = server.client().await;

    let mut asked: Vec<&str> = keys.iter().rev().map(String::as_str).collect();
    asked.insert(10, "absent");
    let entries = get_many(&mut c, "", &asked).await;
    assert_eq!(entries.len(), asked.len());
    for (entry, key) in entries.iter().zip(&asked) {
        assert_eq!(entry.key, *key);
        if *key == "absent" {
            assert!(!entry.found);
            continue;
        }
        let i: usize = key["key-".len()..].parse().unwrap();
        assert!(entry.found, "{key}");
        assert_eq!(entry.value, format!("value of {key}").as_bytes());
        assert_eq!(entry.version, versions[i]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn set_many_writes_every_entry_and_answers_versions_in_order() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let before = set(&mut c, "ns", "x", "old", 0).await.version;

    let versions = c
        .set_many(pb::SetManyRequest {
            namespace: "ns".into(),
            entries: vec![
                entry("x", "first", 0),
                entry("y", "why", 7_000),
                entry("x", "second", 0),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 3);
    assert!(before < versions[0] && versions[0] < versions[1] && versions[1] < versions[2]);

    let x = get(&mut c, "ns", "x").await;
    assert_eq!(
        (x.value, x.version),
        ("second".into(), versions[2]),
        "the later of two entries for one key wins"
    );
    let y = get(&mut c, "ns", "y").await;
    assert_eq!(
        (y.value, y.version, y.ttl_ms),
        ("why".into(), versions[1], 7_000)
    );
    assert!(
        !get(&mut c, "", "y").await.found,
        "written to its namespace only"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_many_counts_live_entries_once() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for k in ["a", "b", "keep"] {
        set(&mut c, "", k, "v", 0).await;
    }
    set(&mut c, "", "expired", "v", 10).await;
    server.clock().advance_ms(10);

    let deleted = c
        .delete_many(pb::DeleteManyRequest {
            namespace: String::new(),
            keys: ["a", "missing", "expired", "a", "b"]
                .map(String::from)
                .to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(
        deleted, 2,
        "a and b; the miss, the expired key and the repeat do not count"
    );
    assert_eq!(
        found(&mut c, "", &["a", "b", "keep", "expired"]).await,
        [false, false, true, false]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_prefix_removes_exactly_the_keys_under_the_prefix() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let keys = [
        "user:4",
        "user:42:a",
        "user:42:b",
        "user:420",
        "user:43:x",
        "user:42",
    ];
    for k in keys {
        set(&mut c, "", k, "v", 0).await;
        set(&mut c, "other", k, "v", 0).await;
    }

    let deleted = delete_prefix(&mut c, "", "user:42:").await;
    assert_eq!(deleted, 2);
    assert_eq!(
        found(&mut c, "", &keys).await,
        [true, false, false, true, true, true]
    );
    assert_eq!(
        found(&mut c, "other", &keys).await,
        [true; 6],
        "another namespace's keys with the same prefix stay"
    );

    let again = delete_prefix(&mut c, "", "user:42:").await;
    assert_eq!(again, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_prefix_handles_multibyte_prefixes() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let keys = ["café:1", "café:2", "cafe:1", "caféx", "cafè:1"];
    for k in keys {
        set(&mut c, "", k, "v", 0).await;
    }
    let deleted = delete_prefix(&mut c, "", "café:").await;
    assert_eq!(deleted, 2);
    assert_eq!(
        found(&mut c, "", &keys).await,
        [false, false, true, true, true]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_empties_one_namespace_only() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for k in ["1", "2", "3"] {
        set(&mut c, "a", k, "v", 0).await;
    }
    set(&mut c, "a", "expired", "v", 5).await;
    for k in ["1", "2"] {
        set(&mut c, "b", k, "v", 0).await;
    }
    set(&mut c, "", "1", "v", 0).await;
    server.clock().advance_ms(5);

    let deleted = c
        .clear(pb::ClearRequest {
            namespace: "a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 3, "live entries only");
    assert_eq!(stats(&mut c, "a").await.entries, 0);
    assert_eq!(found(&mut c, "a", &["1", "2", "3"]).await, [false; 3]);
    assert_eq!(stats(&mut c, "b").await.entries, 2);
    assert_eq!(found(&mut c, "b", &["1", "2"]).await, [true; 2]);
    assert!(get(&mut c, "", "1").await.found);

    let empty = c
        .clear(pb::ClearRequest {
            namespace: "nothing-here".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(empty, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_namespace_is_default_and_namespaces_are_isolated() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let v0 = set(&mut c, "", "k", "zero", 0).await.version;
    let va = set(&mut c, "tenant-a", "k", "a", 0).await.version;

    let d = get(&mut c, "default", "k").await;
    assert_eq!((d.found, d.value, d.version), (true, "zero".into(), v0));
    let a = get(&mut c, "tenant-a", "k").await;
    assert_eq!((a.value, a.version), ("a".into(), va));
    assert!(!get(&mut c, "tenant-b", "k").await.found);

    // Writing "default" explicitly is the same entry as writing "".
    let v1 = set(&mut c, "default", "k", "one", 0).await.version;
    let d = get(&mut c, "", "k").await;
    assert_eq!((d.value, d.version), ("one".into(), v1));

    assert!(delete(&mut c, "tenant-a", "k").await);
    assert!(
        get(&mut c, "", "k").await.found,
        "deleting in one namespace leaves the other"
    );
    assert!(!get(&mut c, "tenant-a", "k").await.found);

    assert_eq!(increment(&mut c, "n", 5, 0).await.unwrap().value, 5);
    assert!(get(&mut c, "default", "n").await.found);
    assert!(touch(&mut c, "n", 0).await);

    assert_eq!(stats(&mut c, "default").await.entries, 2);
    assert_eq!(stats(&mut c, "tenant-a").await.entries, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_counts_every_kind_of_operation() {
    let server = TestServer::start().await;
    let mut c = server.client().await;

    set(&mut c, "s", "a", "12345", 0).await; // sets 1
    set(&mut c, "s", "b", "xy", 1_000).await; // sets 2
    assert!(get(&mut c, "s", "a").await.found); // hits 1 (from memory: writes go through it)
    assert!(!get(&mut c, "s", "nope").await.found); // misses 1
    assert_eq!(
        found(&mut c, "s", &["a", "nope", "b"]).await,
        [true, false, true]
    ); // hits 3, misses 2; a GetMany with a key not in memory reads every key from one
    // SQLite snapshot, so its two hits are not memory hits
    c.set_many(pb::SetManyRequest {
        namespace: "s".into(),
        entries: vec![entry("c", "1", 0), entry("d", "22", 0)],
    })
    .await
    .unwrap(); // sets 4
    c.increment(pb::IncrementRequest {
        namespace: "s".into(),
        key: "n".into(),
        delta: 5,
        ttl_ms: 0,
        ..Default::default()
    })
    .await
    .unwrap(); // sets 5
    assert!(delete(&mut c, "s", "c").await); // deletes 1
    let deleted = c
        .delete_many(pb::DeleteManyRequest {
            namespace: "s".into(),
            keys: vec!["d".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .deleted; // deletes 2
    assert_eq!(deleted, 1);

    // Live: a (1 + 5 bytes), b (1 + 2), n (1 + 1).
    assert_eq!(
        stats(&mut c, "s").await,
        pb::StatsResponse {
            entries: 3,
            bytes: 11,
            hits: 3,
            misses: 2,
            memory_hits: 1,
            sets: 5,
            deletes: 2,
            expirations: 0,
            evictions: 0,
        }
    );

    server.clock().advance_ms(1_000);
    let s = stats(&mut c, "s").await;
    assert_eq!(
        (s.entries, s.bytes),
        (2, 8),
        "an expired entry is not counted"
    );
    assert_eq!(server.store().maintain().await.unwrap(), 1);
    let s = stats(&mut c, "s").await;
    assert_eq!((s.entries, s.bytes, s.expirations), (2, 8, 1));

    let by_prefix = delete_prefix(&mut c, "s", "a").await; // deletes 3
    assert_eq!(by_prefix, 1);
    let cleared = c
        .clear(pb::ClearRequest {
            namespace: "s".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted; // deletes 4
    assert_eq!(cleared, 1);
    assert_eq!(
        stats(&mut c, "s").await,
        pb::StatsResponse {
            entries: 0,
            bytes: 0,
            hits: 3,
            misses: 2,
            memory_hits: 1,
            sets: 5,
            deletes: 4,
            expirations: 1,
            evictions: 0,
        }
    );

    // Another namespace counts on its own; the empty namespace adds every namespace up.
    set(&mut c, "t", "x", "123", 0).await;
    assert!(!get(&mut c, "t", "y").await.found);
    assert_eq!(
        stats(&mut c, "t").await,
        pb::StatsResponse {
            entries: 1,
            bytes: 4,
            misses: 1,
            sets: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        stats(&mut c, "").await,
        pb::StatsResponse {
            entries: 1,
            bytes: 4,
            hits: 3,
            misses: 3,
            memory_hits: 1,
            sets: 6,
            deletes: 4,
            expirations: 1,
            evictions: 0,
        }
    );
    assert_eq!(
        stats(&mut c, "never-used").await,
        pb::StatsResponse::default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_answered_from_disk_is_not_a_memory_hit() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "k", "v", 0).await;
    server.restart().await;
    let mut c = server.client().await;

    assert!(get(&mut c, "", "k").await.found); // from SQLite, then cached
    assert!(get(&mut c, "", "k").await.found); // from memory
    let s = stats(&mut c, "").await;
    assert_eq!(
        (s.entries, s.hits, s.memory_hits, s.misses, s.sets),
        (1, 2, 1, 0, 0),
        "counters restart with the daemon; entries do not"
    );
}

fn entry(key: &str, value: &'static str, ttl_ms: u64) -> pb::SetEntry {
    pb::SetEntry {
        key: key.into(),
        value: value.into(),
        ttl_ms,
    }
}

/// Deletes every key of `namespace` under `prefix`; returns how many went.
async fn delete_prefix(c: &mut Client, namespace: &str, prefix: &str) -> u64 {
    c.delete_prefix(pb::DeletePrefixRequest {
        namespace: namespace.into(),
        prefix: prefix.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .deleted
}
