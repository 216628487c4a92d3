//! Set conditions (ALWAYS, UNSPECIFIED, IF_ABSENT, IF_PRESENT, IF_VERSION) on absent, present
//! and expired keys; versions that strictly increase on every write and are never reused; and
//! races: concurrent IF_ABSENT sets, increments and compare-and-set loops from separate tasks
//! and connections; Delete with an expected version (compare-and-delete), which a lock's
//! holder uses to release only its own lock.

use std::collections::BTreeSet;

use larder::pb;
use larder::pb::Condition;

use crate::common::{Client, TestServer, delete, get, increment, set, set_if, touch};

#[tokio::test(flavor = "multi_thread")]
async fn always_and_unspecified_always_write() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let a = set_if(&mut c, "k", "a", Condition::Always, 0).await;
    let b = set_if(&mut c, "k", "b", Condition::Always, 0).await;
    let u = set_if(&mut c, "k", "u", Condition::Unspecified, 0).await;
    assert!(a.stored && b.stored && u.stored);
    assert!(a.version < b.version && b.version < u.version);
    let g = get(&mut c, "", "k").await;
    assert_eq!((g.value, g.version), ("u".into(), u.version));

    // expected_version is ignored by the other conditions.
    let ignored = set_if(&mut c, "k", "w", Condition::Always, 12_345).await;
    assert!(ignored.stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_absent_writes_only_when_the_key_is_absent_or_expired() {
    let server = TestServer::start().await;
    let mut c = server.client().await;

    let first = set_if(&mut c, "lock", "owner-1", Condition::IfAbsent, 0).await;
    assert!(first.stored);

    let second = set_if(&mut c, "lock", "owner-2", Condition::IfAbsent, 0).await;
    assert_eq!(
        second,
        pb::SetResponse {
            stored: false,
            version: first.version
        },
        "a present key answers its current version"
    );
    let g = get(&mut c, "", "lock").await;
    assert_eq!((g.value, g.version), ("owner-1".into(), first.version));

    set(&mut c, "", "lease", "old", 100).await;
    server.clock().advance_ms(100);
    let over_expired = set_if(&mut c, "lease", "new", Condition::IfAbsent, 0).await;
    assert!(over_expired.stored, "an expired key counts as absent");
    let g = get(&mut c, "", "lease").await;
    assert_eq!(
        (g.value, g.version, g.ttl_ms),
        ("new".into(), over_expired.version, 0)
    );

    assert!(delete(&mut c, "", "lock").await);
    let after_delete = set_if(&mut c, "lock", "owner-3", Condition::IfAbsent, 0).await;
    assert!(after_delete.stored);
    assert!(after_delete.version > over_expired.version);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_present_writes_only_over_a_live_key() {
    let server = TestServer::start().await;
    let mut c = server.client().await;

    let absent = set_if(&mut c, "k", "v", Condition::IfPresent, 0).await;
    assert_eq!(
        absent,
        pb::SetResponse {
            stored: false,
            version: 0
        }
    );
    assert!(
        !get(&mut c, "", "k").await.found,
        "IF_PRESENT never creates"
    );

    let v1 = set(&mut c, "", "k", "one", 0).await.version;
    let replaced = set_if(&mut c, "k", "two", Condition::IfPresent, 0).await;
    assert!(replaced.stored);
    assert!(replaced.version > v1);
    assert_eq!(get(&mut c, "", "k").await.value, "two");

    set(&mut c, "", "e", "v", 50).await;
    server.clock().advance_ms(50);
    let expired = set_if(&mut c, "e", "again", Condition::IfPresent, 0).await;
    assert_eq!(
        expired,
        pb::SetResponse {
            stored: false,
            version: 0
        },
        "an expired key is not present"
    );
    assert!(!get(&mut c, "", "e").await.found);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_version_is_compare_and_set() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let v1 = set(&mut c, "", "k", "one", 0).await.version;

    let swapped = set_if(&mut c, "k", "two", Condition::IfVersion, v1).await;
    assert!(swapped.stored);
    assert!(swapped.version > v1);

    let stale = set_if(&mut c, "k", "three", Condition::IfVersion, v1).await;
    assert_eq!(
        stale,
        pb::SetResponse {
            stored: false,
            version: swapped.version
        },
        "a mismatch answers the current version"
    );
    let g = get(&mut c, "", "k").await;
    assert_eq!((g.value, g.version), ("two".into(), swapped.version));

    let absent = set_if(&mut c, "nobody", "v", Condition::IfVersion, v1).await;
    assert_eq!(
        absent,
        pb::SetResponse {
            stored: false,
            version: 0
        }
    );
    assert!(!get(&mut c, "", "nobody").await.found);

    let ve = set(&mut c, "", "expiring", "v", 10).await.version;
    server.clock().advance_ms(10);
    let expired = set_if(&mut c, "expiring", "w", Condition::IfVersion, ve).await;
    assert_eq!(
        expired,
        pb::SetResponse {
            stored: false,
            version: 0
        },
        "the version of an expired entry no longer matches"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_strictly_increase_and_are_never_reused() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut versions = Vec::new();

    versions.push(set(&mut c, "", "a", "1", 0).await.version);
    versions.push(set(&mut c, "", "b", "1", 0).await.version);
    versions.push(set(&mut c, "", "a", "2", 0).await.version);
    assert!(delete(&mut c, "", "a").await);
    versions.push(set(&mut c, "", "a", "3", 0).await.version);
    versions.push(increment(&mut c, "n", 1, 0).await.unwrap().version);
    versions.push(increment(&mut c, "n", 1, 0).await.unwrap().version);
    versions.extend(
        c.set_many(pb::SetManyRequest {
            namespace: String::new(),
            entries: ["a", "b"]
                .map(|k| pb::SetEntry {
                    key: k.into(),
                    value: "4".into(),
                    ttl_ms: 0,
                })
                .to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions,
    );
    c.clear(pb::ClearRequest::default()).await.unwrap();
    versions.push(set(&mut c, "", "a", "5", 0).await.version);
    versions.push(set(&mut c, "elsewhere", "a", "5", 0).await.version);

    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {versions:?}"
    );

    // Touch changes the TTL only; the next write still gets a fresh version.
    let before = get(&mut c, "", "a").await.version;
    assert!(touch(&mut c, "a", 60_000).await);
    assert_eq!(get(&mut c, "", "a").await.version, before);
    let next = set(&mut c, "", "a", "6", 0).await.version;
    assert!(next > *versions.last().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_if_absent_sets_elect_exactly_one_winner() {
    const CONTENDERS: usize = 32;
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..CONTENDERS {
        // Each contender on its own connection, half over TCP, half over the Unix socket.
        let mut c = if i % 2 == 0 {
            server.client().await
        } else {
            server.unix_client().await
        };
        tasks.push(tokio::spawn(async move {
            let r = set_if(&mut c, "lock", format!("owner-{i}"), Condition::IfAbsent, 0).await;
            (i, r)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }

    let winners: Vec<_> = results.iter().filter(|(_, r)| r.stored).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (winner, won) = winners[0];
    for (_, r) in &results {
        assert_eq!(r.version, won.version, "losers see the winner's version");
    }
    let mut c = server.client().await;
    let g = get(&mut c, "", "lock").await;
    assert_eq!(
        (g.value, g.version),
        (format!("owner-{winner}").into(), won.version)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_add_up() {
    const TASKS: i64 = 64;
    let server = TestServer::start().await;
    let shared = server.client().await;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let mut c = shared.clone();
        tasks.push(tokio::spawn(async move {
            increment(&mut c, "counter", 1, 0).await.unwrap()
        }));
    }
    let mut values = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        values.insert(r.value);
        versions.insert(r.version);
    }
    assert_eq!(
        values,
        (1..=TASKS).collect::<BTreeSet<_>>(),
        "every increment saw a distinct count"
    );
    assert_eq!(
        versions.len(),
        TASKS as usize,
        "every increment got its own version"
    );
    let mut c = shared.clone();
    assert_eq!(get(&mut c, "", "counter").await.value, TASKS.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_set_loops_lose_no_update() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    let server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "cas", "0", 0).await;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let c = server.client().await;
        tasks.push(tokio::spawn(cas_add_one(c, ROUNDS)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        get(&mut c, "", "cas").await.value,
        (TASKS * ROUNDS).to_string()
    );
}

/// Adds 1 to the decimal in "cas" `rounds` times with a read / IF_VERSION write loop.
async fn cas_add_one(mut c: Client, rounds: usize) {
    for _ in 0..rounds {
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 10_000, "compare-and-set never succeeded");
            let g = get(&mut c, "", "cas").await;
            let n: u64 = std::str::from_utf8(&g.value).unwrap().parse().unwrap();
            let r = set_if(
                &mut c,
                "cas",
                (n + 1).to_string(),
                Condition::IfVersion,
                g.version,
            )
            .await;
            if r.stored {
                break;
            }
            assert_ne!(
                r.version, g.version,
                "a refused CAS reports a newer version"
            );
        }
    }
}

/// A Delete that names the version it expects.
async fn delete_version(c: &mut Client, key: &str, expected_version: u64) -> bool {
    c.delete(pb::DeleteRequest {
        namespace: String::new(),
        key: key.into(),
        expected_version,
    })
    .await
    .unwrap_or_else(|s| panic!("Delete {key:?} at {expected_version}: {s:?}"))
    .into_inner()
    .deleted
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_with_an_expected_version_is_compare_and_delete() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let v1 = set(&mut c, "", "k", "one", 0).await.version;
    let v2 = set(&mut c, "", "k", "two", 0).await.version;
    assert!(
        !delete_version(&mut c, "k", v1).await,
        "a stale version deletes nothing"
    );
    let g = get(&mut c, "", "k").await;
    assert_eq!((g.found, g.value, g.version), (true, "two".into(), v2));
    assert!(delete_version(&mut c, "k", v2).await);
    assert!(!get(&mut c, "", "k").await.found);
    assert!(
        !delete_version(&mut c, "k", v2).await,
        "gone: nothing to delete"
    );
    assert!(!delete_version(&mut c, "nobody", 1).await);

    let ve = set(&mut c, "", "expiring", "v", 10).await.version;
    server.clock().advance_ms(10);
    assert!(
        !delete_version(&mut c, "expiring", ve).await,
        "an expired entry was not live, so it was not deleted"
    );
}

/// A lock: Set IF_ABSENT with a TTL; returns the version when taken.
async fn take_lock(c: &mut Client, holder: &str, ttl_ms: u64) -> Option<u64> {
    let r = c
        .set(pb::SetRequest {
            key: "lock:report".into(),
            value: holder.to_owned().into(),
            ttl_ms,
            condition: Condition::IfAbsent as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("lock for {holder}: {s:?}"))
        .into_inner();
    r.stored.then_some(r.version)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_holder_whose_lock_expired_cannot_release_the_next_holders_lock() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let first = take_lock(&mut c, "worker-1", 10_000).await.expect("free");
    assert_eq!(take_lock(&mut c, "worker-2", 10_000).await, None, "held");
    server.clock().advance_ms(10_000);
    let second = take_lock(&mut c, "worker-2", 10_000)
        .await
        .expect("expired, so free");
    assert!(
        !delete_version(&mut c, "lock:report", first).await,
        "the first holder's release must not remove the second holder's lock"
    );
    let g = get(&mut c, "", "lock:report").await;
    assert_eq!((g.value, g.version), ("worker-2".into(), second));
    assert!(delete_version(&mut c, "lock:report", second).await);
    assert!(!get(&mut c, "", "lock:report").await.found);
    assert!(take_lock(&mut c, "worker-3", 10_000).await.is_some());
}
