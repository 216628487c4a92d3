//! The disk bound (Stats.bytes never above `max_disk_bytes`, evictions counted, the newest and
//! the recently read entries kept, over gRPC and as a property of the store API) and the
//! memory bound (the LRU never holds more than `max_memory_bytes`).

use std::sync::Arc;

use bytes::Bytes;
use larder::ManualClock;
use larder::store::{SetCondition, Store, StoreConfig};
use proptest::prelude::*;

use crate::common::{START_MS, TestServer, get, set, stats};

const DISK_BOUND: u64 = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_bound_holds_and_keeps_the_newest_entry() {
    let server =
        TestServer::start_with(|c| c.max_disk_bytes = DISK_BOUND, Default::default()).await;
    let mut c = server.client().await;
    let value = vec![b'v'; 500];
    let mut last = 0;
    for i in 0..100 {
        let key = format!("k{i:03}");
        last = set(&mut c, "", &key, value.clone(), 0).await.version;
        let s = stats(&mut c, "").await;
        assert!(s.bytes <= DISK_BOUND, "after {key}: {s:?}");
    }

    let s = stats(&mut c, "").await;
    assert!(s.evictions > 0, "{s:?}");
    assert_eq!(
        s.entries + s.evictions,
        100,
        "every entry is either stored or counted as evicted: {s:?}"
    );
    assert_eq!(s.bytes, s.entries * 504, "{s:?}");
    let newest = get(&mut c, "", "k099").await;
    assert!(newest.found, "the entry written last was evicted ({s:?})");
    assert_eq!((newest.value.len(), newest.version), (500, last));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_bound_evicts_least_recently_used_entries_first() {
    let server =
        TestServer::start_with(|c| c.max_disk_bytes = DISK_BOUND, Default::default()).await;
    let mut c = server.client().await;
    let value = vec![b'v'; 500];
    // At most 21 rows, with rowids that fit one eviction sample, where the sampled LRU is exact.
    // Ten entries of 504 bytes, written at the same instant.
    for i in 0..10 {
        set(&mut c, "", &format!("old{i}"), value.clone(), 0).await;
    }
    server.clock().advance_ms(1_000);
    assert!(
        get(&mut c, "", "old0").await.found,
        "read: now the most recently used old entry"
    );
    server.clock().advance_ms(1_000);
    // Eleven more: 21 × 504 bytes is over the bound, so at least two entries must go.
    for i in 0..11 {
        set(&mut c, "", &format!("new{i}"), value.clone(), 0).await;
        server.clock().advance_ms(1);
    }

    let s = stats(&mut c, "").await;
    assert!(s.bytes <= DISK_BOUND, "{s:?}");
    assert!(s.evictions >= 2, "{s:?}");
    assert!(
        get(&mut c, "", "old0").await.found,
        "the entry read recently was evicted before unread older ones ({s:?})"
    );
    assert!(
        !get(&mut c, "", "old1").await.found,
        "the least recently used entry stayed"
    );
    for i in 0..11 {
        assert!(
            get(&mut c, "", &format!("new{i}")).await.found,
            "new{i} was evicted ({s:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_lru_stays_within_its_budget() {
    const BUDGET: u64 = 16 * 1024;
    let server = TestServer::start_with(|c| c.max_memory_bytes = BUDGET, Default::default()).await;
    let store = server.store();
    let mut c = server.client().await;
    for i in 0..300 {
        set(&mut c, "", &format!("k{i}"), vec![b'm'; 200], 0).await;
        assert!(
            store.memory_bytes() as u64 <= BUDGET,
            "{} after k{i}",
            store.memory_bytes()
        );
    }
    assert!(store.memory_bytes() > 0, "the LRU caches something");
    // Reading everything back fills the LRU from disk; it still stays within its budget, and
    // every value is still served (from SQLite when not cached).
    for i in 0..300 {
        let g = get(&mut c, "", &format!("k{i}")).await;
        assert_eq!(g.value.len(), 200, "k{i}");
        assert!(store.memory_bytes() as u64 <= BUDGET);
    }
    let s = stats(&mut c, "").await;
    assert_eq!(s.hits, 300);
    assert!(
        s.memory_hits < 300,
        "300 × 200 bytes cannot all be in 16 KiB: {s:?}"
    );
}

/// One write of the property test: key index, value size, TTL (0 or a few ms).
type Op = (u8, usize, u64);

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        (0u8..40, 0usize..4_000, prop_oneof![Just(0u64), 1u64..50]),
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// After any sequence of writes (new keys and overwrites of every size, some expiring),
    /// the live bytes never exceed the bound, and Stats agrees with what reads return.
    #[test]
    fn stats_bytes_never_exceed_the_disk_bound(ops in ops()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check_disk_bound(ops))?;
    }
}

async fn check_disk_bound(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.max_disk_bytes = DISK_BOUND;
    config.sweep_interval = std::time::Duration::from_secs(24 * 3600);
    let clock = ManualClock::new(START_MS);
    let store = Store::open(config, Arc::new(clock.clone())).unwrap();
    for (key, size, ttl_ms) in ops {
        let key = format!("key-{key}");
        let (stored, _) = store
            .set(
                "ns",
                &key,
                Bytes::from(vec![7u8; size]),
                ttl_ms,
                SetCondition::Always,
            )
            .await
            .unwrap();
        prop_assert!(stored);
        clock.advance_ms(3);
        let s = store.stats(None).await.unwrap();
        prop_assert!(s.bytes <= DISK_BOUND, "{s:?}");
    }

    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let found = store.get_many("ns", &keys, usize::MAX).await.unwrap();
    let live: Vec<u64> = keys
        .iter()
        .zip(&found)
        .filter_map(|(k, f)| f.as_ref().map(|f| (k.len() + f.value.len()) as u64))
        .collect();
    let s = store.stats(Some("ns")).await.unwrap();
    prop_assert_eq!(s.entries, live.len() as u64);
    prop_assert_eq!(s.bytes, live.iter().sum::<u64>());
    store.close().await.unwrap();
    Ok(())
}

/// One change of the byte-total property test.
#[derive(Debug, Clone)]
enum Change {
    Set(u8, usize, u64),
    Delete(u8),
    Increment(u8),
    Clear,
    Sweep(u64),
}

fn changes() -> impl Strategy<Value = Vec<Change>> {
    let change = prop_oneof![
        6 => (0u8..30, 0usize..3_000, prop_oneof![Just(0u64), 1u64..50])
            .prop_map(|(k, size, ttl)| Change::Set(k, size, ttl)),
        2 => (0u8..30).prop_map(Change::Delete),
        2 => (30u8..35).prop_map(Change::Increment),
        1 => Just(Change::Clear),
        1 => (0u64..100).prop_map(Change::Sweep),
    ];
    prop::collection::vec(change, 1..50)
}

/// The cache table's byte total as the writer saved it, and as its rows add up.
fn saved_and_summed(dir: &std::path::Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(dir.join("larder.db")).unwrap();
    let saved = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'cache_bytes'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let summed = conn
        .query_row(
            "SELECT COALESCE(SUM(size), 0) FROM cache_entries",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (saved, summed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Whatever changed the cache table (writes, deletes, counters, a clear, expiry sweeps,
    /// evictions past the disk bound), the byte total saved beside it, which the next start
    /// reads instead of adding up every row, equals the sum of its rows, before and after a
    /// reopen.
    #[test]
    fn the_saved_byte_total_is_the_sum_of_the_rows(changes in changes()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check_byte_total(changes))?;
    }
}

async fn check_byte_total(changes: Vec<Change>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let mut config = StoreConfig::new(dir.path());
    config.max_disk_bytes = DISK_BOUND;
    config.sweep_interval = std::time::Duration::from_secs(24 * 3600);
    let open = async || {
        crate::common::open_store(&config, Arc::new(clock.clone()))
            .await
            .unwrap()
    };
    let store = open().await;
    for change in &changes {
        let key = |k: &u8| format!("key-{k}");
        match change {
            Change::Set(k, size, ttl) => {
                let value = Bytes::from(vec![7u8; *size]);
                store
                    .set("ns", &key(k), value, *ttl, SetCondition::Always)
                    .await
                    .unwrap();
            }
            Change::Delete(k) => {
                store.delete("ns", vec![key(k)]).await.unwrap();
            }
            Change::Increment(k) => {
                store.increment("ns", &key(k), 5, 0).await.unwrap();
            }
            Change::Clear => {
                store.clear("ns").await.unwrap();
            }
            Change::Sweep(ms) => {
                clock.advance_ms(*ms);
                store.maintain().await.unwrap();
            }
        }
        clock.advance_ms(1);
    }
    let live = store.stats(None).await.unwrap().bytes;
    store.close().await.unwrap();
    drop(store);
    let (saved, summed) = saved_and_summed(dir.path());
    prop_assert_eq!(saved, summed);
    prop_assert!(live as i64 <= summed, "live {} of {}", live, summed);

    // A reopened store starts from the saved total and keeps it right.
    let store = open().await;
    store
        .set(
            "ns",
            "after",
            Bytes::from_static(b"v"),
            0,
            SetCondition::Always,
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let (saved, summed) = saved_and_summed(dir.path());
    prop_assert_eq!(saved, summed);
    Ok(())
}
