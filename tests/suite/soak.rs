//! Soak: every kind of call at once (cache reads and writes, counters, sessions, rate-limit
//! Checks) from many clients, with short TTLs so that expiry and the sweeper are busy, and
//! small memory and disk bounds so that eviction is busy. Throughout, the store's own
//! accounting stays within every configured bound; the database file stops growing once the
//! working set is stable (its size at the midpoint against the end); no call fails except
//! with RESOURCE_EXHAUSTED; and no read returns another key's value.
//!
//! The clock is the test's manual clock, moved forward by a background task (about ten times
//! faster than real time), so TTLs of a few hundred milliseconds expire in a run of seconds.
//! A few seconds by default; `LARDER_SOAK_SECS` runs it longer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use larder::ServerSettings;
use larder::pb;
use larder::pb::revoke_session_request::Target;
use larder::store::DB_FILE;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tonic::{Code, Status};

use crate::common::{Client, RateLimits, Sessions, TestServer, stats};

const MEMORY: u64 = 128 << 10;
const DISK: u64 = 256 << 10;
const SESSION_MEMORY: u64 = 32 << 10;
const LIMIT_MEMORY: u64 = 32 << 10;
/// Clients calling at once.
const CLIENTS: usize = 8;
/// Cache keys (with values of 100–600 bytes, several times what the disk bound holds).
const KEYS: u64 = 1500;
/// Counters.
const COUNTERS: u64 = 50;
/// Rate-limit keys (more than the rate-limit memory budget holds).
const LIMIT_KEYS: u64 = 3000;
/// Sessions a client keeps tokens of.
const TOKENS: usize = 20;
/// Default run time.
const DEFAULT_SECS: u64 = 6;
/// Bound on waits for the disk bound to be reached, and for background work at the end.
const POLLS: usize = 500;
const POLL_PAUSE: Duration = Duration::from_millis(20);

fn run_time() -> Duration {
    Duration::from_secs(
        std::env::var("LARDER_SOAK_SECS")
            .map(|s| s.parse().expect("LARDER_SOAK_SECS must be a number"))
            .unwrap_or(DEFAULT_SECS),
    )
}

/// The value stored under `key`: starts with the key, so a read can tell whose it is.
fn value_for(key: &str, n: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{key}|{n}|").into_bytes();
    v.resize(len.max(v.len()), b'.');
    v
}

/// Calls that failed with the one expected error, and those that failed otherwise.
#[derive(Default)]
struct Outcomes {
    calls: AtomicU64,
    exhausted: AtomicU64,
    unexpected: std::sync::Mutex<Vec<String>>,
}

impl Outcomes {
    fn record<T>(&self, what: &str, r: Result<T, Status>) -> Option<T> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(v) => Some(v),
            Err(s) if s.code() == Code::ResourceExhausted => {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(s) => {
                self.unexpected
                    .lock()
                    .unwrap()
                    .push(format!("{what}: {s:?}"));
                None
            }
        }
    }

    fn wrong(&self, what: String) {
        self.unexpected.lock().unwrap().push(what);
    }
}

/// Sizes of the database file and of its WAL.
fn file_sizes(data_dir: &Path) -> (u64, u64) {
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let db = data_dir.join(DB_FILE);
    (size(&db), size(&larder::store::wal_path(&db)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_load_with_expiry_and_eviction_stays_within_its_bounds() {
    let run = run_time();
    let seed: u64 = rand::rng().random();
    eprintln!("soak: {} s, seed {seed}", run.as_secs());
    let server = TestServer::start_with(
        |c| {
            c.max_memory_bytes = MEMORY;
            c.max_disk_bytes = DISK;
            c.session_memory_bytes = SESSION_MEMORY;
            c.limit_memory_bytes = LIMIT_MEMORY;
            c.sweep_interval = Duration::from_millis(20);
            c.write_behind = Duration::from_millis(50);
        },
        ServerSettings::default(),
    )
    .await;
    let store = server.store();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Outcomes::default());

    // Time runs about ten times faster than real time.
    let clock = server.clock().clone();
    let ticking = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                clock.advance_ms(20);
            }
        })
    };

    // The bounds, sampled all along.
    let sampler = {
        let stop = stop.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let mut worst = (0usize, 0u64, 0usize, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let memory = store.memory_bytes();
                let disk = store.cache_disk_bytes();
                let sessions = store.session_memory_bytes();
                assert!(memory as u64 <= MEMORY, "memory LRU at {memory} bytes");
                assert!(disk <= DISK, "cache table at {disk} bytes");
                assert!(
                    sessions as u64 <= SESSION_MEMORY,
                    "session memory at {sessions} bytes"
                );
                worst = (
                    worst.0.max(memory),
                    worst.1.max(disk),
                    worst.2.max(sessions),
                    worst.3 + 1,
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            worst
        })
    };

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let cache = server.client().await;
        let sessions = server.session_client().await;
        let limits = server.rate_limits().await;
        let rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        clients.push(tokio::spawn(client(
            cache,
            sessions,
            limits,
            rng,
            stop.clone(),
            outcomes.clone(),
        )));
    }

    // The working set is stable once the cache table has reached its disk bound (the first
    // evictions), however long that takes on a busy machine.
    tokio::time::sleep(run / 2).await;
    let mut probe = server.client().await;
    let mut full = false;
    for _ in 0..POLLS {
        if stats(&mut probe, "").await.evictions > 0 {
            full = true;
            break;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    assert!(full, "the cache table never reached its disk bound");
    let mid = file_sizes(server.data_dir());
    tokio::time::sleep(run - run / 2).await;
    let end = file_sizes(server.data_dir());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a soak client panicked");
    }
    ticking.await.unwrap();
    let (memory, disk, session_memory, samples) = sampler.await.expect("a bound was exceeded");
    assert!(samples > 0, "the bounds were never sampled");

    let unexpected = outcomes.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "{} unexpected failures, the first: {:#?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );

    // Expiry and eviction were both at work, so the bounds above were tested.
    store.maintain().await.unwrap();
    let mut c = server.client().await;
    let s = stats(&mut c, "").await;
    assert!(s.expirations > 0, "nothing expired: {s:?}");
    assert!(s.evictions > 0, "nothing was evicted: {s:?}");
    assert!(s.bytes <= DISK, "{s:?}");

    // Rate-limit memory may run over by what one write-behind interval changes; once the
    // changes are written it is back within its budget.
    let mut limit_memory = store.rate_limit_memory().1;
    for _ in 0..POLLS {
        if limit_memory as u64 <= LIMIT_MEMORY {
            break;
        }
        tokio::time::sleep(POLL_PAUSE).await;
        limit_memory = store.rate_limit_memory().1;
    }
    assert!(
        limit_memory as u64 <= LIMIT_MEMORY,
        "rate-limit memory stays at {limit_memory} bytes"
    );

    // The database file stops growing once the working set is stable: in the second half it
    // grows by at most a quarter (free pages are reused). The WAL is reused once it wraps,
    // so past its limit it grows no more.
    let (db_mid, wal_mid) = mid;
    let (db_end, wal_end) = end;
    eprintln!(
        "soak: {} calls, {} RESOURCE_EXHAUSTED; {} bound samples, at most {memory} bytes in \
         the memory LRU, {disk} on disk, {session_memory} of sessions; {} expirations, {} \
         evictions; database {db_mid} then {db_end} bytes, WAL {wal_mid} then {wal_end}",
        outcomes.calls.load(Ordering::Relaxed),
        outcomes.exhausted.load(Ordering::Relaxed),
        samples,
        s.expirations,
        s.evictions,
    );
    assert!(
        db_end <= db_mid + db_mid / 4,
        "the database grew from {db_mid} to {db_end} bytes over a stable working set"
    );
    assert!(
        wal_end <= wal_mid.max(WAL_LIMIT),
        "the WAL grew from {wal_mid} to {wal_end} bytes, past the {WAL_LIMIT} it is cut back to"
    );
}

/// What the writer's `journal_size_limit` truncates the WAL back to after it wraps: under a
/// continuous load the WAL may grow to about this much (checkpoints copy it into the database
/// while readers still use it), and is reused from there.
const WAL_LIMIT: u64 = 64 << 20;

/// One client: random calls until `stop`.
async fn client(
    mut cache: Client,
    mut sessions: Sessions,
    mut limits: RateLimits,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
    out: Arc<Outcomes>,
) {
    let mut tokens: Vec<String> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("k{}", rng.random_range(0..KEYS));
        let ttl_ms = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(100..3000)
        };
        match rng.random_range(0..100u32) {
            0..=19 => {
                let value = value_for(&key, n, rng.random_range(100..600));
                out.record(
                    "Set",
                    cache
                        .set(pb::SetRequest {
                            key,
                            value: value.into(),
                            ttl_ms,
                            ..Default::default()
                        })
                        .await,
                );
            }
            20..=39 => {
                if let Some(r) = out.record(
                    "Get",
                    cache
                        .get(pb::GetRequest {
                            namespace: String::new(),
                            key: key.clone(),
                        })
                        .await,
                ) {
                    let r = r.into_inner();
                    if r.found && !r.value.starts_with(format!("{key}|").as_bytes()) {
                        out.wrong(format!("Get {key} returned {:?}", r.value));
                    }
                }
            }
            40..=46 => {
                let entries = (0..rng.random_range(1..10))
                    .map(|_| {
                        let key = format!("k{}", rng.random_range(0..KEYS));
                        pb::SetEntry {
                            value: value_for(&key, n, rng.random_range(100..600)).into(),
                            key,
                            ttl_ms,
                        }
                    })
                    .collect();
                out.record(
                    "SetMany",
                    cache
                        .set_many(pb::SetManyRequest {
                            namespace: String::new(),
                            entries,
                        })
                        .await,
                );
            }
            47..=53 => {
                let keys: Vec<String> = (0..rng.random_range(1..16))
                    .map(|_| format!("k{}", rng.random_range(0..KEYS)))
                    .collect();
                if let Some(r) = out.record(
                    "GetMany",
                    cache
                        .get_many(pb::GetManyRequest {
                            namespace: String::new(),
                            keys: keys.clone(),
                        })
                        .await,
                ) {
                    for (k, e) in keys.iter().zip(r.into_inner().entries) {
                        if e.key != *k
                            || (e.found && !e.value.starts_with(format!("{k}|").as_bytes()))
                        {
                            out.wrong(format!("GetMany {k} answered {e:?}"));
                        }
                    }
                }
            }
            54..=57 => {
                out.record(
                    "Delete",
                    cache
                        .delete(pb::DeleteRequest {
                            namespace: String::new(),
                            key,
                            ..Default::default()
                        })
                        .await,
                );
            }
            58..=60 => {
                out.record(
                    "Touch",
                    cache
                        .touch(pb::TouchRequest {
                            namespace: String::new(),
                            key,
                            ttl_ms,
                        })
                        .await,
                );
            }
            61..=67 => {
                out.record(
                    "Increment",
                    cache
                        .increment(pb::IncrementRequest {
                            namespace: "counters".into(),
                            key: format!("n{}", rng.random_range(0..COUNTERS)),
                            delta: 1,
                            ttl_ms: rng.random_range(200..2000),
                            ..Default::default()
                        })
                        .await,
                );
            }
            68..=72 => {
                let created = out.record(
                    "CreateSession",
                    sessions
                        .create_session(pb::CreateSessionRequest {
                            user_id: format!("user-{}", rng.random_range(0..100)),
                            data: HashMap::from([("n".to_owned(), n.to_string())]),
                            idle_ttl_ms: rng.random_range(300..2000),
                            absolute_ttl_ms: rng.random_range(1000..5000),
                            ..Default::default()
                        })
                        .await,
                );
                if let Some(r) = created {
                    if tokens.len() >= TOKENS {
                        tokens.swap_remove(rng.random_range(0..tokens.len()));
                    }
                    tokens.push(r.into_inner().token);
                }
            }
            73..=80 if !tokens.is_empty() => {
                let token = tokens[rng.random_range(0..tokens.len())].clone();
                out.record(
                    "GetSession",
                    sessions.get_session(pb::GetSessionRequest { token }).await,
                );
            }
            81..=85 if !tokens.is_empty() => {
                let token = tokens[rng.random_range(0..tokens.len())].clone();
                out.record(
                    "UpdateSession",
                    sessions
                        .update_session(pb::UpdateSessionRequest {
                            token,
                            set: HashMap::from([(format!("d{}", n % 8), "x".repeat(64))]),
                            remove: vec![format!("d{}", (n + 4) % 8)],
                        })
                        .await,
                );
            }
            86..=87 if !tokens.is_empty() => {
                let token = tokens.swap_remove(rng.random_range(0..tokens.len()));
                out.record(
                    "RevokeSession",
                    sessions
                        .revoke_session(pb::RevokeSessionRequest {
                            target: Some(Target::Token(token)),
                        })
                        .await,
                );
            }
            _ => {
                let algorithm = [
                    pb::Algorithm::Gcra,
                    pb::Algorithm::SlidingWindow,
                    pb::Algorithm::FixedWindow,
                ][rng.random_range(0..3)];
                out.record(
                    "Check",
                    limits
                        .check(pb::CheckRequest {
                            key: format!("rl:{:?}:{}", algorithm, rng.random_range(0..LIMIT_KEYS)),
                            limit: 10,
                            period_ms: 1000,
                            algorithm: algorithm as i32,
                            ..Default::default()
                        })
                        .await,
                );
            }
        }
    }
}
