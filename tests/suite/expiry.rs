//! Expiry driven by the injected manual clock (no sleeping): TTLs count down and end exactly at
//! their deadline, Set replaces a TTL, Touch extends or removes one without a new version, and
//! the sweeper (`Store::maintain`) removes expired rows and counts them in Stats.

use larder::pb;

use crate::common::{TestServer, delete, found, get, set, set_if, stats, touch};

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_expires_exactly_at_its_deadline() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let version = set(&mut c, "", "k", "v", 10_000).await.version;

    let g = get(&mut c, "", "k").await;
    assert_eq!((g.found, g.ttl_ms, g.version), (true, 10_000, version));
    server.clock().advance_ms(4_000);
    assert_eq!(get(&mut c, "", "k").await.ttl_ms, 6_000);
    server.clock().advance_ms(5_999);
    let g = get(&mut c, "", "k").await;
    assert_eq!((g.found, g.ttl_ms), (true, 1));

    server.clock().advance_ms(1);
    assert_eq!(get(&mut c, "", "k").await, pb::GetResponse::default());
    assert_eq!(found(&mut c, "", &["k"]).await, [false]);
    assert_eq!(stats(&mut c, "").await.entries, 0);
    assert!(
        !delete(&mut c, "", "k").await,
        "an expired entry is not deleted live"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_entry_read_from_disk_is_a_miss() {
    // After a restart the entry is only on disk, so the expiry check of the SQLite path runs.
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "short", "v", 100).await;
    set(&mut c, "", "long", "v", 1_000).await;
    server.restart().await;
    let mut c = server.client().await;

    server.clock().advance_ms(100);
    assert_eq!(found(&mut c, "", &["short", "long"]).await, [false, true]);
    assert_eq!(get(&mut c, "", "long").await.ttl_ms, 900);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_replaces_the_previous_ttl() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "k", "v", 1_000).await;
    set(&mut c, "", "k", "v", 0).await;
    server.clock().advance_ms(1_000_000);
    let g = get(&mut c, "", "k").await;
    assert_eq!((g.found, g.ttl_ms), (true, 0), "TTL 0 means never");

    set(&mut c, "", "k", "v", 500).await;
    assert_eq!(get(&mut c, "", "k").await.ttl_ms, 500);
    server.clock().advance_ms(500);
    assert!(!get(&mut c, "", "k").await.found);
}

#[tokio::test(flavor = "multi_thread")]
async fn touch_extends_a_ttl_without_a_new_version() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let version = set(&mut c, "", "session", "data", 1_000).await.version;

    server.clock().advance_ms(900);
    assert!(touch(&mut c, "session", 1_000).await);
    let g = get(&mut c, "", "session").await;
    assert_eq!(
        (g.found, g.ttl_ms, g.version, g.value),
        (true, 1_000, version, "data".into()),
        "sliding expiry: the TTL restarts, the version and value stay"
    );
    server.clock().advance_ms(999);
    assert!(
        get(&mut c, "", "session").await.found,
        "still alive past the first deadline"
    );

    assert!(
        touch(&mut c, "session", 0).await,
        "ttl 0 removes the expiry"
    );
    assert_eq!(get(&mut c, "", "session").await.ttl_ms, 0);
    server.clock().advance_ms(10 * 365 * 24 * 3600 * 1000);
    let g = get(&mut c, "", "session").await;
    assert_eq!((g.found, g.version), (true, version));
}

#[tokio::test(flavor = "multi_thread")]
async fn touch_can_shorten_and_add_a_ttl() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "forever", "v", 0).await;
    assert!(touch(&mut c, "forever", 2_000).await);
    assert_eq!(get(&mut c, "", "forever").await.ttl_ms, 2_000);
    server.clock().advance_ms(2_000);
    assert!(!get(&mut c, "", "forever").await.found);
}

#[tokio::test(flavor = "multi_thread")]
async fn touch_finds_neither_missing_nor_expired_entries() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    assert!(!touch(&mut c, "missing", 1_000).await);
    assert!(
        !get(&mut c, "", "missing").await.found,
        "Touch does not create"
    );

    set(&mut c, "", "expired", "v", 5).await;
    server.clock().advance_ms(5);
    assert!(
        !touch(&mut c, "expired", 60_000).await,
        "an expired entry is not revived"
    );
    assert!(!get(&mut c, "", "expired").await.found);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_removes_expired_entries_and_counts_them() {
    // Sweep batches of 2 so that one `maintain()` call has to run several passes.
    let server = TestServer::start_with(|c| c.sweep_batch = 2, Default::default()).await;
    let mut c = server.client().await;
    for i in 0..5 {
        set(&mut c, "sweep", &format!("short-{i}"), "v", 1_000).await;
    }
    for i in 0..3 {
        set(&mut c, "sweep", &format!("long-{i}"), "v", 0).await;
    }
    set(&mut c, "other", "short", "v", 1_000).await;
    assert_eq!(stats(&mut c, "sweep").await.entries, 8);
    assert_eq!(
        server.store().maintain().await.unwrap(),
        0,
        "nothing expired yet"
    );

    server.clock().advance_ms(1_000);
    assert_eq!(server.store().maintain().await.unwrap(), 6);
    let s = stats(&mut c, "sweep").await;
    assert_eq!((s.entries, s.expirations, s.deletes), (3, 5, 0));
    assert_eq!(stats(&mut c, "other").await.expirations, 1);
    assert_eq!(stats(&mut c, "").await.expirations, 6);

    assert_eq!(server.store().maintain().await.unwrap(), 0);
    assert_eq!(
        stats(&mut c, "").await.expirations,
        6,
        "each entry expires once"
    );
    assert_eq!(
        found(&mut c, "sweep", &["short-0", "short-4", "long-0", "long-2"]).await,
        [false, false, true, true]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swept_key_can_be_written_again() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let old = set(&mut c, "", "lock", "a", 30_000).await.version;
    server.clock().advance_ms(30_000);
    assert_eq!(server.store().maintain().await.unwrap(), 1);

    let again = set_if(&mut c, "lock", "b", pb::Condition::IfAbsent, 0).await;
    assert!(again.stored);
    assert!(again.version > old);
    assert_eq!(get(&mut c, "", "lock").await.value, "b");
}
