//! Linearizability of single keys under concurrent writers and readers, checked on recorded
//! histories: every call's start and end (a monotonic clock, used only to order calls) and the
//! version it wrote or read. Versions order a key's writes, so a history is linearizable when
//! it agrees with that order in real time: a read returns a write that started before the
//! read ended and that no write finishing before the read started had replaced; a read that
//! starts after another ended never sees an older version; a write that starts after another
//! ended gets a newer version. Run with the memory LRU large (reads are memory hits) and small
//! (every other write is too large for it, so reads alternate between memory and SQLite, and
//! race the writer's updates of memory).
//!
//! A session is checked the same way, per writer of its data: UpdateSessions by several
//! writers against GetSessions, the session alternately small enough for memory and not.
//!
//! The simpler races (IF_ABSENT winners, increments adding up, compare-and-set loops, session
//! merges, rate-limit Checks never admitting more than the limit) are in `conditions.rs`,
//! `sessions.rs` and `ratelimit.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use larder::ServerSettings;
use larder::pb;

use crate::common::{TestServer, get_many, set};

/// Writers and readers of the one key.
const WRITERS: usize = 6;
const READERS: usize = 6;
/// Calls per task.
const CALLS: usize = 150;
/// Bound on the whole run.
const BOUND: Duration = Duration::from_secs(60);

/// One call on the register, as recorded.
#[derive(Debug, Clone)]
struct Call {
    start: Instant,
    end: Instant,
    /// Writes: the version the Set answered. Reads: the version read (0 = not found).
    version: u64,
    /// Writes: the value written. Reads: the value read.
    value: Vec<u8>,
    write: bool,
}

/// Runs [`WRITERS`] and [`READERS`] on the key `register` and returns every call. With
/// `large_values`, every other write is too large for the memory LRU (more than half a shard
/// of an 8 KiB budget), so the key leaves memory and the next reads go to SQLite and fill
/// memory behind the writer.
async fn history(server: &TestServer, large_values: bool) -> Vec<Call> {
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS + READERS));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = server.client().await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut calls = Vec::with_capacity(CALLS);
            for i in 0..CALLS {
                let mut value = format!("w{w}-{i}|").into_bytes();
                if large_values && i % 2 == 1 {
                    value.resize(300, b'.');
                }
                let t0 = Instant::now();
                let r = set(&mut c, "", "register", value.clone(), 0).await;
                calls.push(Call {
                    start: t0,
                    end: Instant::now(),
                    version: r.version,
                    value,
                    write: true,
                });
            }
            calls
        }));
    }
    for _ in 0..READERS {
        let mut c = server.client().await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut calls = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let t0 = Instant::now();
                let r = crate::common::get(&mut c, "", "register").await;
                calls.push(Call {
                    start: t0,
                    end: Instant::now(),
                    version: if r.found { r.version } else { 0 },
                    value: r.value.to_vec(),
                    write: false,
                });
            }
            calls
        }));
    }
    tokio::time::timeout(BOUND, async {
        let mut calls = Vec::new();
        for t in tasks {
            calls.extend(t.await.expect("a register task panicked"));
        }
        calls
    })
    .await
    .expect("the register history did not finish in time")
}

/// The newest version among `calls` (sorted by end) that ended before `at`.
fn newest_ended_before(calls: &[&Call], at: Instant) -> Option<u64> {
    calls
        .iter()
        .take_while(|c| c.end < at)
        .map(|c| c.version)
        .max()
}

/// Asserts that the history is linearizable in the sense of the module documentation.
#[track_caller]
fn assert_linearizable(calls: &[Call]) {
    let writes: Vec<&Call> = calls.iter().filter(|c| c.write).collect();
    let reads: Vec<&Call> = calls.iter().filter(|c| !c.write).collect();
    let by_version: HashMap<u64, &Call> = writes.iter().map(|w| (w.version, *w)).collect();
    assert_eq!(by_version.len(), writes.len(), "two writes got one version");

    // Writes in real-time order get increasing versions.
    let mut by_end = writes.clone();
    by_end.sort_by_key(|w| w.end);
    for w in &writes {
        // The newest version of the writes that ended before `w` started is below its own.
        if let Some(before) = newest_ended_before(&by_end, w.start) {
            assert!(
                before < w.version,
                "a write that started after version {before} was acknowledged got {}",
                w.version
            );
        }
    }

    let mut checked_reads = 0;
    for r in &reads {
        // The newest write acknowledged before the read started must not have been replaced
        // by an older one.
        let floor = newest_ended_before(&by_end, r.start).unwrap_or(0);
        assert!(
            r.version >= floor,
            "a read returned version {} although {floor} was acknowledged before it started",
            r.version
        );
        if r.version == 0 {
            continue;
        }
        let w = by_version
            .get(&r.version)
            .unwrap_or_else(|| panic!("a read returned version {}, which no write got", r.version));
        assert_eq!(
            r.value, w.value,
            "version {} read with another value",
            r.version
        );
        assert!(
            w.start < r.end,
            "a read returned version {} before its write started",
            r.version
        );
        checked_reads += 1;
    }
    assert!(
        checked_reads > 0,
        "no read saw a write: the history tests nothing"
    );

    // Reads in real-time order never go back.
    let mut reads_by_end = reads.clone();
    reads_by_end.sort_by_key(|r| r.end);
    for r in &reads {
        if let Some(before) = newest_ended_before(&reads_by_end, r.start) {
            assert!(
                r.version >= before,
                "a read returned version {} after an earlier read had returned {before}",
                r.version
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_is_linearizable_when_reads_hit_memory() {
    let server = TestServer::start().await;
    let calls = history(&server, false).await;
    assert_linearizable(&calls);
    let s = crate::common::stats(&mut server.client().await, "").await;
    assert!(
        s.memory_hits > 0,
        "no read hit memory, so this history tests nothing of it: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_is_linearizable_when_reads_go_to_sqlite() {
    // 512 bytes per shard: the register fits with its small values, not with its large ones.
    let server =
        TestServer::start_with(|c| c.max_memory_bytes = 8192, ServerSettings::default()).await;
    let calls = history(&server, true).await;
    let mut c = server.client().await;
    assert_linearizable(&calls);
    let s = crate::common::stats(&mut c, "").await;
    assert!(
        s.hits > s.memory_hits && s.memory_hits > 0,
        "reads did not both hit memory and go to SQLite, so their race was not tested: {s:?}"
    );
}

/// One GetSession, as recorded: when it ran and, per writer, the last of its updates it saw
/// (absent: none yet).
#[derive(Debug)]
struct SessionRead {
    start: Instant,
    end: Instant,
    seen: HashMap<usize, usize>,
}

/// One writer's acknowledged UpdateSessions, in order: when each started and ended.
type SessionWrites = Vec<(Instant, Instant)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_session_is_read_linearizably_from_memory_and_from_sqlite() {
    // 512 bytes per shard of session memory: the session fits while its padding is empty,
    // not while it is 300 bytes, so reads alternate between memory and SQLite.
    let server =
        TestServer::start_with(|c| c.session_memory_bytes = 8192, ServerSettings::default()).await;
    let mut c = server.session_client().await;
    let token = crate::common::create_session(
        &mut c,
        pb::CreateSessionRequest {
            user_id: "u".into(),
            ..Default::default()
        },
    )
    .await
    .token;
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS + READERS));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = server.session_client().await;
        let (start, token) = (start.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            start.wait().await;
            let mut writes = SessionWrites::with_capacity(CALLS);
            for i in 0..CALLS {
                let pad = if i % 2 == 1 {
                    ".".repeat(300)
                } else {
                    String::new()
                };
                let set = HashMap::from([(format!("w{w}"), i.to_string()), ("pad".into(), pad)]);
                let t0 = Instant::now();
                let r = c
                    .update_session(pb::UpdateSessionRequest {
                        token: token.clone(),
                        set,
                        remove: Vec::new(),
                    })
                    .await
                    .expect("UpdateSession")
                    .into_inner();
                assert!(r.found, "the session went missing");
                writes.push((t0, Instant::now()));
            }
            writes
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut c = server.session_client().await;
        let (start, token) = (start.clone(), token.clone());
        readers.push(tokio::spawn(async move {
            start.wait().await;
            let mut reads = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let t0 = Instant::now();
                let r = crate::common::get_session(&mut c, &token).await;
                let end = Instant::now();
                let data = r.session.expect("the session went missing").data;
                let seen = (0..WRITERS)
                    .filter_map(|w| Some((w, data.get(&format!("w{w}"))?.parse().unwrap())))
                    .collect();
                reads.push(SessionRead {
                    start: t0,
                    end,
                    seen,
                });
            }
            reads
        }));
    }
    let (writes, mut reads) = tokio::time::timeout(BOUND, async {
        let mut writes = Vec::new();
        for t in writers {
            writes.push(t.await.expect("a session writer panicked"));
        }
        let mut reads = Vec::new();
        for t in readers {
            reads.extend(t.await.expect("a session reader panicked"));
        }
        (writes, reads)
    })
    .await
    .expect("the session history did not finish in time");

    reads.sort_by_key(|r| r.end);
    let mut saw_a_write = false;
    for r in &reads {
        for (w, writes) in writes.iter().enumerate() {
            let seen = r.seen.get(&w).copied();
            saw_a_write |= seen.is_some();
            // Not older than the writer's last update acknowledged before the read started.
            let floor = writes.iter().rposition(|(_, end)| *end < r.start);
            assert!(
                seen >= floor,
                "a read saw update {seen:?} of writer {w} although {floor:?} was acknowledged \
                 before it started"
            );
            // Not an update that had not started when the read ended.
            if let Some(i) = seen {
                assert!(
                    writes[i].0 < r.end,
                    "a read saw update {i} of writer {w} before it started"
                );
            }
            // Not older than what a read that ended before it started saw.
            let before = reads
                .iter()
                .take_while(|q| q.end < r.start)
                .filter_map(|q| q.seen.get(&w).copied())
                .max();
            assert!(
                seen >= before,
                "a read saw update {seen:?} of writer {w} after an earlier read had seen \
                 {before:?}"
            );
        }
    }
    assert!(
        saw_a_write,
        "no read saw an update: the history tests nothing"
    );
}

/// Reads `keys` with GetMany from 4 tasks while 300 SetMany write them all with one tag per
/// batch (the value up to its `|`); returns the answers (as tags) that mixed two batches.
async fn torn_reads(server: &TestServer, keys: &[String]) -> Vec<Vec<bytes::Bytes>> {
    let mut writer = server.client().await;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut c = server.client().await;
        let keys = keys.to_vec();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut torn = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let tags: Vec<bytes::Bytes> = get_many(&mut c, "", &keys)
                    .await
                    .into_iter()
                    .map(|e| {
                        e.value
                            .split(|&b| b == b'|')
                            .next()
                            .unwrap_or_default()
                            .to_vec()
                            .into()
                    })
                    .collect();
                if tags.windows(2).any(|w| w[0] != w[1]) {
                    torn.push(tags);
                }
            }
            torn
        }));
    }
    let entries = |n: usize| {
        keys.iter()
            .enumerate()
            .map(|(i, k)| pb::SetEntry {
                key: k.clone(),
                // Of growing sizes, so that a small memory LRU holds some keys and not others.
                value: format!("batch-{n}|{}", ".".repeat(i * 40)).into(),
                ttl_ms: 0,
            })
            .collect()
    };
    tokio::time::timeout(BOUND, async {
        for n in 0..300 {
            writer
                .set_many(pb::SetManyRequest {
                    namespace: String::new(),
                    entries: entries(n),
                })
                .await
                .expect("SetMany");
        }
        done.store(true, Ordering::Relaxed);
        let mut torn = Vec::new();
        for r in readers {
            torn.extend(r.await.expect("a reader panicked"));
        }
        torn
    })
    .await
    .expect("the SetMany and GetMany race did not finish in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_many_sees_a_concurrent_set_many_whole_or_not_at_all() {
    let keys: Vec<String> = (0..8).map(|i| format!("batch-key-{i}")).collect();
    // Every key in memory; none (each is over half a shard's budget); the smaller ones.
    for memory in [256 << 20, 2048, 8192] {
        let server =
            TestServer::start_with(|c| c.max_memory_bytes = memory, ServerSettings::default())
                .await;
        let torn = torn_reads(&server, &keys).await;
        assert!(
            torn.is_empty(),
            "memory of {memory} bytes: {} GetMany answers mixed two SetMany, e.g. {:?}",
            torn.len(),
            torn.first()
        );
        let mut c = server.client().await;
        let s = crate::common::stats(&mut c, "").await;
        assert!(
            s.hits > 0,
            "memory of {memory} bytes: no read found the keys: {s:?}"
        );
    }
}
