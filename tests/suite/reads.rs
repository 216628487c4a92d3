//! Reads that miss memory, many at once: the reader threads take concurrent misses in batches,
//! one read transaction each, and every read still answers its own keys, sees every write
//! acknowledged before it began (a deleted key never comes back), and a multi-key read still
//! sees one commit; after a restart the same reads come from the file.

use std::collections::HashMap;

use larder::ServerSettings;

use crate::common::{TestServer, delete, get, get_many, set};

/// Memory small enough that nearly every read of these tests goes to SQLite.
const TINY_MEMORY: u64 = 4096;

/// Values distinct per key and round, so that an answer mixed up with another read's shows.
fn value(key: usize, round: usize) -> String {
    format!("value of key {key} in round {round}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_each_get_their_own_keys_and_never_a_deleted_one() {
    let server = TestServer::start_with(
        |c| c.max_memory_bytes = TINY_MEMORY,
        ServerSettings::default(),
    )
    .await;
    const KEYS: usize = 64;
    const CALLERS: usize = 16;
    let mut c = server.client().await;
    for k in 0..KEYS {
        set(&mut c, "", &format!("k{k}"), value(k, 0), 0).await;
    }
    for round in 1..=3 {
        // Each caller reads every key once, in its own order, while this task deletes the
        // odd keys and rewrites the even ones.
        let mut readers = Vec::new();
        for caller in 0..CALLERS {
            let mut c = server.client().await;
            readers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..KEYS {
                    let k = (i * 7 + caller) % KEYS;
                    let r = get(&mut c, "", &format!("k{k}")).await;
                    seen.push((k, r.found.then_some(r.value)));
                }
                seen
            }));
        }
        for k in 0..KEYS {
            if k % 2 == 1 {
                delete(&mut c, "", &format!("k{k}")).await;
            } else {
                set(&mut c, "", &format!("k{k}"), value(k, round), 0).await;
            }
        }
        for reader in readers {
            for (k, answer) in reader.await.unwrap() {
                if let Some(v) = answer {
                    let v = String::from_utf8(v.to_vec()).unwrap();
                    assert!(
                        v == value(k, round - 1) || v == value(k, round),
                        "key {k} answered {v:?} in round {round}"
                    );
                }
            }
        }
        // Every write above is acknowledged: concurrent reads now all see it.
        let mut after = Vec::new();
        for caller in 0..CALLERS {
            let mut c = server.client().await;
            after.push(tokio::spawn(async move {
                let mut seen = HashMap::new();
                for i in 0..KEYS {
                    let k = (i * 5 + caller) % KEYS;
                    let r = get(&mut c, "", &format!("k{k}")).await;
                    seen.insert(k, r.found.then_some(r.value));
                }
                seen
            }));
        }
        for reader in after {
            for (k, answer) in reader.await.unwrap() {
                if k % 2 == 1 {
                    assert_eq!(answer, None, "deleted key {k} came back in round {round}");
                } else {
                    assert_eq!(
                        answer.as_deref(),
                        Some(value(k, round).as_bytes()),
                        "key {k} in round {round}"
                    );
                }
            }
        }
        // The odd keys come back for the next round.
        for k in (1..KEYS).step_by(2) {
            set(&mut c, "", &format!("k{k}"), value(k, round), 0).await;
        }
    }
    let s = crate::common::stats(&mut c, "").await;
    assert!(
        s.hits > 10 * s.memory_hits,
        "reads did not mostly go to SQLite, so this tested little of it: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_multi_key_misses_each_see_one_commit_and_survive_a_restart() {
    let mut server = TestServer::start_with(
        |c| c.max_memory_bytes = TINY_MEMORY,
        ServerSettings::default(),
    )
    .await;
    const GROUPS: usize = 8;
    const PER_GROUP: usize = 8;
    let keys = |g: usize| -> Vec<String> { (0..PER_GROUP).map(|i| format!("g{g}:{i}")).collect() };
    let mut c = server.client().await;
    let set_group = |g: usize, round: usize| {
        let entries = keys(g)
            .into_iter()
            .map(|key| larder::pb::SetEntry {
                key,
                value: format!("round {round}").into(),
                ttl_ms: 0,
            })
            .collect();
        larder::pb::SetManyRequest {
            namespace: String::new(),
            entries,
        }
    };
    for g in 0..GROUPS {
        c.set_many(set_group(g, 0)).await.unwrap();
    }
    for round in 1..=5 {
        // Readers of every group at once, while each group is rewritten whole.
        let mut readers = Vec::new();
        for r in 0..2 * GROUPS {
            let mut c = server.client().await;
            let group = keys(r % GROUPS);
            readers.push(tokio::spawn(async move {
                let refs: Vec<&str> = group.iter().map(String::as_str).collect();
                get_many(&mut c, "", &refs).await
            }));
        }
        for g in 0..GROUPS {
            c.set_many(set_group(g, round)).await.unwrap();
        }
        for reader in readers {
            let entries = reader.await.unwrap();
            assert!(entries.iter().all(|e| e.found), "{entries:?}");
            let first = &entries[0].value;
            assert!(
                entries.iter().all(|e| e.value == *first),
                "a GetMany saw parts of two SetManys in round {round}: {entries:?}"
            );
        }
    }
    server.restart().await;
    let mut c = server.client().await;
    for g in 0..GROUPS {
        let group = keys(g);
        let refs: Vec<&str> = group.iter().map(String::as_str).collect();
        for e in get_many(&mut c, "", &refs).await {
            assert!(e.found && e.value == "round 5", "{e:?}");
        }
    }
}
