//! Persistence across graceful restarts on the same data directory: values, TTLs, counters and
//! deletions survive, versions keep increasing (never reused after a restart), and the
//! single-instance lock refuses a second store on a data directory in use; a closed store
//! refuses further writes.

use std::sync::Arc;

use larder::ManualClock;
use larder::pb;
use larder::store::{SetCondition, Store, StoreConfig};

use crate::common::{START_MS, TestServer, delete, found, get, increment, set, stats};

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_a_graceful_restart() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    let a = set(&mut c, "", "a", "alpha", 0).await.version;
    let b = set(&mut c, "ns", "b", "beta", 60_000).await.version;
    set(&mut c, "", "short", "x", 1_000).await;
    let n = increment(&mut c, "n", 7, 0).await.unwrap().version;
    let many = c
        .set_many(pb::SetManyRequest {
            namespace: "ns".into(),
            entries: vec![pb::SetEntry {
                key: "m".into(),
                value: vec![0u8, 255, 1].into(),
                ttl_ms: 0,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .versions[0];
    let newest = [a, b, n, many].into_iter().max().unwrap();
    server.clock().advance_ms(1_000);

    server.restart().await;
    let mut c = server.client().await;

    let g = get(&mut c, "", "a").await;
    assert_eq!((g.found, g.value, g.version), (true, "alpha".into(), a));
    let g = get(&mut c, "ns", "b").await;
    assert_eq!(
        (g.value, g.version, g.ttl_ms),
        ("beta".into(), b, 59_000),
        "the deadline is absolute and survives"
    );
    assert!(
        !get(&mut c, "", "short").await.found,
        "expired before the restart"
    );
    assert_eq!(get(&mut c, "", "n").await.value, "7");
    assert_eq!(&get(&mut c, "ns", "m").await.value[..], &[0u8, 255, 1][..]);

    let s = stats(&mut c, "").await;
    assert_eq!(
        (s.entries, s.sets),
        (4, 0),
        "entries persist, counters restart"
    );

    let after = set(&mut c, "", "a", "again", 0).await.version;
    assert!(after > newest, "{after} reuses a version at most {newest}");
    let incremented = increment(&mut c, "n", 1, 0).await.unwrap();
    assert_eq!(incremented.value, 8);
    assert!(incremented.version > after);
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_keep_increasing_over_many_restarts() {
    let mut server = TestServer::start().await;
    let mut last = 0;
    for round in 0..4 {
        let mut c = server.client().await;
        for key in ["x", "y"] {
            let v = set(&mut c, "", key, format!("round {round}"), 0)
                .await
                .version;
            assert!(v > last, "round {round}: {v} after {last}");
            last = v;
        }
        // Deleting the newest key must not let its version be handed out again.
        assert!(delete(&mut c, "", "y").await);
        server.restart().await;
    }
    let mut c = server.client().await;
    assert_eq!(get(&mut c, "", "x").await.value, "round 3");
}

#[tokio::test(flavor = "multi_thread")]
async fn deletions_survive_a_restart() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    for k in ["d", "p:1", "p:2", "keep"] {
        set(&mut c, "", k, "v", 0).await;
    }
    set(&mut c, "gone", "k", "v", 0).await;
    assert!(delete(&mut c, "", "d").await);
    c.delete_prefix(pb::DeletePrefixRequest {
        namespace: String::new(),
        prefix: "p:".into(),
    })
    .await
    .unwrap();
    c.clear(pb::ClearRequest {
        namespace: "gone".into(),
    })
    .await
    .unwrap();

    server.restart().await;
    let mut c = server.client().await;
    assert_eq!(
        found(&mut c, "", &["d", "p:1", "p:2", "keep"]).await,
        [false, false, false, true]
    );
    assert!(!get(&mut c, "gone", "k").await.found);
    assert_eq!(stats(&mut c, "").await.entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_concurrent_write_survives_a_restart() {
    let mut server = TestServer::start().await;
    let c = server.client().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            set(&mut c, "", &format!("k{i}"), format!("v{i}"), 0)
                .await
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    server.restart().await;
    let mut c = server.client().await;
    for (i, v) in versions.iter().enumerate() {
        let g = get(&mut c, "", &format!("k{i}")).await;
        assert_eq!((g.value, g.version), (format!("v{i}").into(), *v));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_store_on_a_data_dir_in_use_is_refused() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "k", "v", 0).await;
    let data_dir = server.data_dir().to_owned();

    let err = Store::open(
        StoreConfig::new(&data_dir),
        Arc::new(ManualClock::new(START_MS)),
    )
    .expect_err("the data directory is in use");
    let msg = err.to_string();
    assert!(
        msg.contains(&data_dir.display().to_string()),
        "the error names the data directory: {msg}"
    );
    assert!(
        get(&mut c, "", "k").await.found,
        "the first server is unharmed"
    );
    set(&mut c, "", "k2", "v", 0).await;

    server.stop().await;
    let store = Store::open(
        StoreConfig::new(&data_dir),
        Arc::new(ManualClock::new(START_MS)),
    )
    .expect("the lock is free once the server stopped");
    assert_eq!(
        store.get("default", "k2").await.unwrap().map(|f| f.value),
        Some("v".into())
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_store_refuses_writes_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        StoreConfig::new(dir.path()),
        Arc::new(ManualClock::new(START_MS)),
    )
    .unwrap();
    store
        .set("ns", "k", "v".into(), 0, SetCondition::Always)
        .await
        .unwrap();
    store.close().await.unwrap();
    store.close().await.expect("closing twice is harmless");

    let err = store
        .set("ns", "k", "w".into(), 0, SetCondition::Always)
        .await
        .expect_err("the writer is gone");
    assert_eq!(larder::status_code(&err), tonic::Code::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_store_frees_its_directory_even_while_a_handle_lingers() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Store::open(
            StoreConfig::new(dir.path()),
            Arc::new(ManualClock::new(START_MS)),
        )
    };
    let store = open().unwrap();
    // A handle still held elsewhere, as a request task finishing after the server stopped.
    let lingering = store.clone();
    assert!(open().is_err(), "a second store on a directory in use");
    store.close().await.unwrap();
    let again = crate::common::open_store(
        &StoreConfig::new(dir.path()),
        Arc::new(ManualClock::new(START_MS)),
    )
    .await
    .expect("the directory is free once the store is closed");
    again.close().await.unwrap();
    drop(lingering);
}
