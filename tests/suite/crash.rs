//! Crash safety of the built daemon: many concurrent clients write (Set, SetMany, Increment,
//! CreateSession, UpdateSession, RevokeSession) and record every acknowledged answer, the
//! daemon is killed with SIGKILL at a random moment, restarted on the same data directory,
//! and every acknowledged write must read back with its acknowledged value and version. A
//! write in flight at the kill may or may not have been applied, but only whole: a SetMany
//! shows all of its entries or none, an UpdateSession all of its changes or none.
//!
//! Each client owns its keys and its user's sessions and sends one call at a time, so what it
//! may find after a restart is exactly one of two states: what was acknowledged, or that plus
//! its one call in flight. A counter shared by every client is incremented too: after a
//! restart it lies between what was acknowledged and that plus the calls in flight.
//!
//! Job queues run through the same kills: enqueuers add jobs (Enqueue and EnqueueMany, each
//! payload unique) and consumers lease them (long-polling), ack most and nack a few back. Every
//! delivery is checked as it arrives: its payload was sent, its id is the one Enqueue
//! answered, it was not delivered again after its Ack was acknowledged, and no other worker
//! holds an unexpired lease on it (leases taken before a kill included). After each restart
//! every acknowledged job that was not acked must still be waiting or leased, and at the end
//! the queue is drained: every acknowledged job is delivered and acked, none is lost. An Ack
//! in flight at a kill may or may not have been applied, so its job may come again
//! (at-least-once); a job whose lease ran out while its worker was slow is refused at its
//! Ack (FAILED_PRECONDITION) and delivered again, which is the contract too.
//!
//! The daemon runs with `--synchronous normal` (the default), and every fourth time with
//! `full`: both must keep every acknowledged write through a process crash. (What `full` adds,
//! surviving a power loss or an OS crash, cannot be tested by killing a process.)
//!
//! The randomness (which calls, which keys, when the kill comes) is seeded; the seed is
//! printed, and `LARDER_CRASH_SEED` replays it. `LARDER_CRASH_CYCLES` sets the number of
//! kill-and-restart cycles (20 by default, a few seconds each at most).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::queue_service_client::QueueServiceClient;
use larder::pb::revoke_session_request::Target;
use larder::pb::session_service_client::SessionServiceClient;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::binary::Daemon;
use crate::common::{get_session, unix_channel};

/// Concurrent writers.
const CLIENTS: usize = 12;
/// Kill-and-restart cycles unless `LARDER_CRASH_CYCLES` says otherwise.
const DEFAULT_CYCLES: usize = 20;
/// Keys each client writes with Set.
const SET_KEYS: usize = 6;
/// Keys each client writes with SetMany (every batch takes at least two of them).
const BATCH_KEYS: usize = 6;
/// Counters each client increments on its own.
const OWN_COUNTERS: usize = 2;
/// The counter every client increments.
const SHARED_COUNTER: &str = "shared-counter";
/// Live sessions (with a known token) a client keeps at most; past it, it updates or revokes.
const LIVE_SESSIONS: usize = 8;
/// Sessions a client creates at most over the whole test.
const MAX_SESSIONS: usize = 120;
/// Data keys an UpdateSession cycles through (besides `seq`), keeping sessions small.
const DATA_KEYS: u64 = 16;
/// The kill comes this long after the clients started writing (a random point in between).
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 30..=700;
/// Calls one client sends in one cycle at most (a bound; the kill normally ends it first).
const MAX_CALLS_PER_CYCLE: usize = 200_000;
/// Bound on the clients noticing the kill, and on one verification.
const BOUND: Duration = Duration::from_secs(60);
/// Clients adding jobs, and clients leasing and acking them.
const ENQUEUERS: usize = 3;
const CONSUMERS: usize = 3;
/// The queue they share.
const JOB_QUEUE: &str = "crash-jobs";
/// The consumers' lease: long enough that a lease runs out only under a stall, short enough
/// that jobs leased at a kill come back within the run (and within the final drain).
const JOB_LEASE_MS: u64 = 3_000;
/// Attempts a job has before it dies: never reached (each kill while leased costs one).
const JOB_MAX_ATTEMPTS: u32 = 10_000;
/// How long a consumer's Dequeue waits for a job (the long-poll runs through the kills too).
const JOB_WAIT_MS: u64 = 100;

/// What a cache key must hold: the value, and the version when the write was acknowledged
/// (an in-flight write found applied has no known version).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    value: Vec<u8>,
    version: Option<u64>,
}

/// One session of a client's user, as acknowledged.
#[derive(Debug, Clone)]
struct SessionModel {
    /// `None` for a session whose CreateSession was in flight at a kill and found applied
    /// afterwards: its token was never received.
    token: Option<String>,
    session_id: String,
    data: BTreeMap<String, String>,
    revoked: bool,
}

/// The call a client had in flight when the daemon died, with what it would have changed.
#[derive(Debug, Clone)]
enum Pending {
    /// Set, SetMany or an own counter's Increment: these keys get these values.
    Cache {
        what: &'static str,
        writes: Vec<(String, Vec<u8>)>,
    },
    /// An Increment of the shared counter by 1.
    Shared,
    /// A CreateSession with this data.
    Create(BTreeMap<String, String>),
    /// An UpdateSession of `sessions[index]` setting these keys.
    Update {
        index: usize,
        set: BTreeMap<String, String>,
    },
    /// A RevokeSession of `sessions[index]` by token.
    Revoke { index: usize },
}

/// Everything one client knows was acknowledged, kept across cycles.
#[derive(Debug)]
struct ClientModel {
    id: usize,
    user: String,
    /// Acknowledged contents of every key the client wrote (absent = never written).
    cache: BTreeMap<String, Expected>,
    sessions: Vec<SessionModel>,
    /// Numbers every write's value, across cycles, so that every value is unique.
    seq: u64,
    pending: Option<Pending>,
    /// Acknowledged shared-counter increments in this cycle, and the largest value answered.
    shared_acked: u64,
    shared_max: i64,
    /// Counts over the whole test, for the summary.
    acked_calls: u64,
    pending_applied: u64,
    pending_lost: u64,
}

impl ClientModel {
    fn new(id: usize) -> Self {
        Self {
            id,
            user: format!("crash-user-{id}"),
            cache: BTreeMap::new(),
            sessions: Vec::new(),
            seq: 0,
            pending: None,
            shared_acked: 0,
            shared_max: i64::MIN,
            acked_calls: 0,
            pending_applied: 0,
            pending_lost: 0,
        }
    }

    fn set_key(&self, i: usize) -> String {
        format!("c{}:set:{i}", self.id)
    }

    fn batch_key(&self, i: usize) -> String {
        format!("c{}:batch:{i}", self.id)
    }

    fn counter_key(&self, i: usize) -> String {
        format!("c{}:counter:{i}", self.id)
    }

    /// Indexes of sessions that are live and whose token the client holds.
    fn usable_sessions(&self) -> Vec<usize> {
        (0..self.sessions.len())
            .filter(|&i| !self.sessions[i].revoked && self.sessions[i].token.is_some())
            .collect()
    }

    fn counter_value(&self, key: &str) -> i64 {
        self.cache.get(key).map_or(0, |e| {
            std::str::from_utf8(&e.value)
                .expect("a counter is ASCII")
                .parse()
                .expect("a counter is decimal")
        })
    }
}

/// The seed for this run: `LARDER_CRASH_SEED`, or a fresh one.
fn seed() -> u64 {
    match std::env::var("LARDER_CRASH_SEED") {
        Ok(s) => s.parse().expect("LARDER_CRASH_SEED must be a u64"),
        Err(_) => rand::rng().random(),
    }
}

fn cycles() -> usize {
    match std::env::var("LARDER_CRASH_CYCLES") {
        Ok(s) => s.parse().expect("LARDER_CRASH_CYCLES must be a number"),
        Err(_) => DEFAULT_CYCLES,
    }
}

/// A client's own random stream for one cycle, derived from the run's seed.
fn rng_for(seed: u64, cycle: usize, client: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ (cycle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (client as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_at_random_points() {
    let seed = seed();
    let cycles = cycles();
    eprintln!(
        "crash test: seed {seed}, {cycles} cycles, {CLIENTS} clients \
         (replay with LARDER_CRASH_SEED={seed})"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let mut models: Vec<ClientModel> = (0..CLIENTS).map(ClientModel::new).collect();
    let mut shared_base: i64 = 0;
    let (mut shared_applied, mut shared_lost) = (0, 0);
    let jobs = Arc::new(Mutex::new(JobsModel::default()));

    for cycle in 0..=cycles {
        let log = tmp.path().join(format!("cycle-{cycle}.log"));
        // Every fourth incarnation commits with fsync (`full`); the others as by default.
        let synchronous = if cycle % 4 == 3 { "full" } else { "normal" };
        let mut daemon = Daemon::spawn_with(
            &data_dir,
            &socket,
            log,
            &["--synchronous".as_ref(), synchronous.as_ref()],
        );
        let channel = daemon.channel(&socket).await;

        // What the previous cycle left must be there before anything new is written.
        let (value, applied, lost) =
            verify_all(&socket, &mut models, shared_base, seed, cycle).await;
        shared_base = value;
        shared_applied += applied;
        shared_lost += lost;
        verify_jobs(&socket, &jobs, seed, cycle).await;
        drop(channel);
        if cycle == cycles {
            drain_jobs(&socket, &jobs, seed).await;
            daemon.terminate().await;
            break;
        }

        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for model in models.drain(..) {
            let channel = unix_channel(&socket).await;
            let rng = rng_for(seed, cycle, model.id);
            tasks.push(tokio::spawn(write_until_killed(
                model,
                channel,
                rng,
                killed.clone(),
                seed,
            )));
        }
        let mut queue_tasks = Vec::new();
        for e in 0..ENQUEUERS {
            let channel = unix_channel(&socket).await;
            let rng = rng_for(seed, cycle, CLIENTS + 1 + e);
            let (jobs, killed) = (jobs.clone(), killed.clone());
            queue_tasks.push(tokio::spawn(enqueue_until_killed(
                e, cycle, channel, rng, jobs, killed, seed,
            )));
        }
        for c in 0..CONSUMERS {
            let channel = unix_channel(&socket).await;
            let rng = rng_for(seed, cycle, CLIENTS + 1 + ENQUEUERS + c);
            let (jobs, killed) = (jobs.clone(), killed.clone());
            queue_tasks.push(tokio::spawn(consume_until_killed(
                channel, rng, jobs, killed, seed,
            )));
        }
        let kill_after = rng_for(seed, cycle, CLIENTS).random_range(KILL_AFTER_MS);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        killed.store(true, Ordering::SeqCst);
        let status = daemon.signal("-KILL").await;
        assert!(!status.success(), "seed {seed}: larder survived SIGKILL");
        models = join_clients(tasks, "noticing the kill").await;
        join_clients(queue_tasks, "noticing the kill").await;
    }

    let acked: u64 = models.iter().map(|m| m.acked_calls).sum();
    let applied: u64 = models.iter().map(|m| m.pending_applied).sum::<u64>() + shared_applied;
    let lost: u64 = models.iter().map(|m| m.pending_lost).sum::<u64>() + shared_lost;
    let sessions: usize = models.iter().map(|m| m.sessions.len()).sum();
    eprintln!(
        "crash test: {cycles} kills, {acked} acknowledged writes all found; of the calls in \
         flight at a kill, {applied} were applied whole and {lost} not at all; {sessions} \
         sessions; shared counter at {shared_base}"
    );
    assert!(
        acked >= cycles as u64,
        "seed {seed}: too few writes were acknowledged ({acked}) for the test to mean much"
    );
    let jobs = jobs.lock().unwrap();
    eprintln!(
        "crash test: {} jobs enqueued and acknowledged, {} more in flight at a kill; {} \
         deliveries, {} acks acknowledged, {} acks in flight at a kill, {} acks refused after \
         a lease ran out, {} nacks",
        jobs.acknowledged.len(),
        jobs.sent.len() - jobs.acknowledged.len(),
        jobs.deliveries,
        jobs.acked.len(),
        jobs.ack_in_flight_at_kill,
        jobs.refused_acks,
        jobs.nacks
    );
    assert!(
        jobs.acked.len() >= cycles,
        "seed {seed}: too few jobs were acked ({}) for the test to mean much",
        jobs.acked.len()
    );
}

/// Waits (at most [`BOUND`]) for every client task, which is `doing` something, and returns
/// their results (models) in order.
async fn join_clients<T>(tasks: Vec<tokio::task::JoinHandle<T>>, doing: &str) -> Vec<T> {
    tokio::time::timeout(BOUND, async {
        let mut models = Vec::with_capacity(tasks.len());
        for t in tasks {
            models.push(
                t.await
                    .unwrap_or_else(|e| panic!("a client {doing} panicked: {e}")),
            );
        }
        models
    })
    .await
    .unwrap_or_else(|_| panic!("the clients did not finish {doing} in time"))
}

/// Sends random writes one at a time until a call fails, which must only happen once `killed`
/// is set; returns the model with the failed call as pending.
async fn write_until_killed(
    mut m: ClientModel,
    channel: Channel,
    mut rng: StdRng,
    killed: Arc<AtomicBool>,
    seed: u64,
) -> ClientModel {
    let mut cache = CacheServiceClient::new(channel.clone());
    let mut sessions = SessionServiceClient::new(channel);
    m.shared_acked = 0;
    m.shared_max = i64::MIN;
    for _ in 0..MAX_CALLS_PER_CYCLE {
        m.seq += 1;
        let n = m.seq;
        let tag = format!("c{}-n{n}", m.id);
        let usable = m.usable_sessions();
        let roll = rng.random_range(0..100u32);
        let result: Result<(), Status> = match roll {
            0..=24 => {
                let key = m.set_key(rng.random_range(0..SET_KEYS));
                let value = tag.into_bytes();
                m.pending = Some(Pending::Cache {
                    what: "Set",
                    writes: vec![(key.clone(), value.clone())],
                });
                cache
                    .set(pb::SetRequest {
                        key: key.clone(),
                        value: value.clone().into(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        assert!(r.stored, "seed {seed}: Set {key} not stored");
                        m.cache.insert(
                            key,
                            Expected {
                                value,
                                version: Some(r.version),
                            },
                        );
                    })
            }
            25..=44 => {
                let mut keys = BTreeSet::new();
                let size = rng.random_range(2..=BATCH_KEYS);
                while keys.len() < size {
                    keys.insert(m.batch_key(rng.random_range(0..BATCH_KEYS)));
                }
                let value = format!("batch-{tag}").into_bytes();
                let writes: Vec<(String, Vec<u8>)> =
                    keys.into_iter().map(|k| (k, value.clone())).collect();
                m.pending = Some(Pending::Cache {
                    what: "SetMany",
                    writes: writes.clone(),
                });
                cache
                    .set_many(pb::SetManyRequest {
                        namespace: String::new(),
                        entries: writes
                            .iter()
                            .map(|(k, v)| pb::SetEntry {
                                key: k.clone(),
                                value: v.clone().into(),
                                ttl_ms: 0,
                            })
                            .collect(),
                    })
                    .await
                    .map(|r| {
                        let versions = r.into_inner().versions;
                        assert_eq!(versions.len(), writes.len(), "seed {seed}: SetMany");
                        for ((k, v), version) in writes.into_iter().zip(versions) {
                            m.cache.insert(
                                k,
                                Expected {
                                    value: v,
                                    version: Some(version),
                                },
                            );
                        }
                    })
            }
            45..=54 => {
                let key = m.counter_key(rng.random_range(0..OWN_COUNTERS));
                let delta = rng.random_range(-5..=20i64);
                let next = m.counter_value(&key) + delta;
                m.pending = Some(Pending::Cache {
                    what: "Increment",
                    writes: vec![(key.clone(), next.to_string().into_bytes())],
                });
                cache
                    .increment(pb::IncrementRequest {
                        namespace: String::new(),
                        key: key.clone(),
                        delta,
                        ttl_ms: 0,
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        assert_eq!(r.value, next, "seed {seed}: Increment {key}");
                        m.cache.insert(
                            key,
                            Expected {
                                value: next.to_string().into_bytes(),
                                version: Some(r.version),
                            },
                        );
                    })
            }
            55..=64 => {
                m.pending = Some(Pending::Shared);
                cache
                    .increment(pb::IncrementRequest {
                        namespace: String::new(),
                        key: SHARED_COUNTER.into(),
                        delta: 1,
                        ttl_ms: 0,
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        m.shared_acked += 1;
                        m.shared_max = m.shared_max.max(r.into_inner().value);
                    })
            }
            65..=74 if usable.len() < LIVE_SESSIONS && m.sessions.len() < MAX_SESSIONS => {
                let data = BTreeMap::from([("seq".to_owned(), n.to_string())]);
                m.pending = Some(Pending::Create(data.clone()));
                sessions
                    .create_session(pb::CreateSessionRequest {
                        user_id: m.user.clone(),
                        data: data.clone().into_iter().collect(),
                        device_info: tag,
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        let session = r.session.expect("CreateSession answers the session");
                        m.sessions.push(SessionModel {
                            token: Some(r.token),
                            session_id: session.session_id,
                            data,
                            revoked: false,
                        });
                    })
            }
            _ if usable.is_empty() => {
                // Nothing to update or revoke (and no room to create): draw again.
                m.seq -= 1;
                continue;
            }
            // 65..=74 lands here when there is no room to create.
            65..=91 => {
                let index = usable[rng.random_range(0..usable.len())];
                let set = BTreeMap::from([
                    ("seq".to_owned(), n.to_string()),
                    (format!("k{}", n % DATA_KEYS), tag),
                ]);
                m.pending = Some(Pending::Update {
                    index,
                    set: set.clone(),
                });
                let token = m.sessions[index].token.clone().expect("a usable session");
                sessions
                    .update_session(pb::UpdateSessionRequest {
                        token,
                        set: set.clone().into_iter().collect(),
                        remove: Vec::new(),
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        assert!(r.found, "seed {seed}: UpdateSession of a live session");
                        m.sessions[index].data.extend(set);
                        let answered: BTreeMap<String, String> = r
                            .session
                            .expect("a found session")
                            .data
                            .into_iter()
                            .collect();
                        assert_eq!(
                            answered, m.sessions[index].data,
                            "seed {seed}: UpdateSession answers the merged data"
                        );
                    })
            }
            _ => {
                let index = usable[rng.random_range(0..usable.len())];
                m.pending = Some(Pending::Revoke { index });
                let token = m.sessions[index].token.clone().expect("a usable session");
                sessions
                    .revoke_session(pb::RevokeSessionRequest {
                        target: Some(Target::Token(token)),
                    })
                    .await
                    .map(|r| {
                        assert!(r.into_inner().revoked, "seed {seed}: RevokeSession");
                        m.sessions[index].revoked = true;
                    })
            }
        };
        match result {
            Ok(()) => {
                m.pending = None;
                m.acked_calls += 1;
            }
            Err(status) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "seed {seed}: client {} failed before the kill: {status:?}",
                    m.id
                );
                return m;
            }
        }
    }
    panic!(
        "seed {seed}: client {} sent {MAX_CALLS_PER_CYCLE} calls without the daemon dying",
        m.id
    );
}

/// Checks every client's keys and sessions against what it was acknowledged, with its call in
/// flight applied whole or not at all, and the shared counter; settles each pending call into
/// the model. Returns the shared counter's value and how many of the increments in flight
/// were applied and lost.
async fn verify_all(
    socket: &Path,
    models: &mut Vec<ClientModel>,
    shared_base: i64,
    seed: u64,
    cycle: usize,
) -> (i64, u64, u64) {
    let mut tasks = Vec::new();
    for model in models.drain(..) {
        let channel = unix_channel(socket).await;
        tasks.push(tokio::spawn(verify_client(model, channel, seed, cycle)));
    }
    *models = join_clients(tasks, "verifying").await;

    let mut c = CacheServiceClient::new(unix_channel(socket).await);
    let found = c
        .get(pb::GetRequest {
            namespace: String::new(),
            key: SHARED_COUNTER.into(),
        })
        .await
        .expect("Get of the shared counter")
        .into_inner();
    let value: i64 = if found.found {
        std::str::from_utf8(&found.value).unwrap().parse().unwrap()
    } else {
        0
    };
    let acked: i64 = models.iter().map(|m| m.shared_acked as i64).sum();
    let in_flight = models
        .iter()
        .filter(|m| matches!(m.pending, Some(Pending::Shared)))
        .count() as i64;
    let max_answered = models
        .iter()
        .map(|m| m.shared_max)
        .max()
        .unwrap_or(i64::MIN);
    assert!(
        value >= shared_base + acked && value <= shared_base + acked + in_flight,
        "seed {seed}, cycle {cycle}: the shared counter is {value}, expected {} acknowledged \
         increments over {shared_base} plus at most {in_flight} in flight",
        acked
    );
    assert!(
        value >= max_answered,
        "seed {seed}, cycle {cycle}: the shared counter is {value}, but {max_answered} was \
         acknowledged"
    );
    for m in models.iter_mut() {
        if matches!(m.pending, Some(Pending::Shared)) {
            m.pending = None;
        }
        m.shared_acked = 0;
        m.shared_max = i64::MIN;
    }
    let applied = value - shared_base - acked;
    (value, applied as u64, (in_flight - applied) as u64)
}

/// One client's part of [`verify_all`] (everything but the shared counter).
async fn verify_client(
    mut m: ClientModel,
    channel: Channel,
    seed: u64,
    cycle: usize,
) -> ClientModel {
    let mut cache = CacheServiceClient::new(channel.clone());
    let mut sessions = SessionServiceClient::new(channel);
    let pending = m.pending.take();
    let at = format!("seed {seed}, cycle {cycle}, client {}", m.id);

    // The cache: every key acknowledged or in flight, read in one GetMany.
    let mut keys: BTreeSet<String> = m.cache.keys().cloned().collect();
    let mut with_pending = m.cache.clone();
    let mut cache_pending = None;
    if let Some(Pending::Cache { what, writes }) = &pending {
        for (k, v) in writes {
            keys.insert(k.clone());
            with_pending.insert(
                k.clone(),
                Expected {
                    value: v.clone(),
                    version: None,
                },
            );
        }
        cache_pending = Some(*what);
    }
    let keys: Vec<String> = keys.into_iter().collect();
    let mut observed = BTreeMap::new();
    if !keys.is_empty() {
        let entries = cache
            .get_many(pb::GetManyRequest {
                namespace: String::new(),
                keys: keys.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("{at}: GetMany: {s:?}"))
            .into_inner()
            .entries;
        assert_eq!(entries.len(), keys.len(), "{at}: GetMany answers every key");
        for e in entries {
            if e.found {
                observed.insert(e.key, (e.value.to_vec(), e.version));
            }
        }
    }
    let matches = |expected: &BTreeMap<String, Expected>| {
        keys.iter()
            .all(|k| match (expected.get(k), observed.get(k)) {
                (None, None) => true,
                (Some(e), Some((value, version))) => {
                    &e.value == value && e.version.is_none_or(|v| v == *version)
                }
                _ => false,
            })
    };
    if matches(&m.cache) {
        if cache_pending.is_some() {
            m.pending_lost += 1;
        }
    } else if cache_pending.is_some() && matches(&with_pending) {
        m.pending_applied += 1;
        // The applied write's versions are whatever the daemon gave it.
        for (k, e) in with_pending.iter_mut() {
            if e.version.is_none() {
                e.version = observed.get(k).map(|(_, v)| *v);
            }
        }
        m.cache = with_pending;
    } else {
        let diff: Vec<String> = keys
            .iter()
            .filter(|k| {
                let e = m.cache.get(*k);
                let o = observed.get(*k);
                match (e, o) {
                    (None, None) => false,
                    (Some(e), Some((value, version))) => {
                        &e.value != value || e.version.is_some_and(|v| v != *version)
                    }
                    _ => true,
                }
            })
            .map(|k| {
                format!(
                    "{k}: acknowledged {:?}, found {:?}",
                    m.cache
                        .get(k)
                        .map(|e| (String::from_utf8_lossy(&e.value), e.version)),
                    observed
                        .get(k)
                        .map(|(v, n)| (String::from_utf8_lossy(v), *n))
                )
            })
            .collect();
        panic!(
            "{at}: the cache after the restart is neither what was acknowledged nor that plus \
             the {cache_pending:?} in flight ({pending:?}):\n{}",
            diff.join("\n")
        );
    }

    // Sessions: the user's live sessions, as ListSessions reports them.
    let listed = sessions
        .list_sessions(pb::ListSessionsRequest {
            user_id: m.user.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("{at}: ListSessions: {s:?}"))
        .into_inner();
    assert!(!listed.truncated, "{at}: ListSessions truncated");
    let live: BTreeMap<String, BTreeMap<String, String>> = listed
        .sessions
        .into_iter()
        .map(|s| (s.session_id, s.data.into_iter().collect()))
        .collect();
    let acked: BTreeMap<String, BTreeMap<String, String>> = m
        .sessions
        .iter()
        .filter(|s| !s.revoked)
        .map(|s| (s.session_id.clone(), s.data.clone()))
        .collect();
    match &pending {
        _ if live == acked => {
            if matches!(
                pending,
                Some(Pending::Create(_) | Pending::Update { .. } | Pending::Revoke { .. })
            ) {
                m.pending_lost += 1;
            }
        }
        Some(Pending::Create(data)) => {
            let extra: Vec<_> = live.keys().filter(|id| !acked.contains_key(*id)).collect();
            let mut without = live.clone();
            assert_eq!(
                extra.len(),
                1,
                "{at}: sessions {live:?}, acknowledged {acked:?}"
            );
            let id = extra[0].clone();
            let found = without.remove(&id).expect("the extra session");
            assert_eq!(
                (&without, &found),
                (&acked, data),
                "{at}: the CreateSession in flight was applied, but not whole, or other \
                 sessions changed"
            );
            m.pending_applied += 1;
            m.sessions.push(SessionModel {
                token: None,
                session_id: id,
                data: data.clone(),
                revoked: false,
            });
        }
        Some(Pending::Update { index, set }) => {
            let mut expected = acked.clone();
            let session = &mut m.sessions[*index];
            let mut merged = session.data.clone();
            merged.extend(set.clone());
            expected.insert(session.session_id.clone(), merged.clone());
            assert_eq!(
                live, expected,
                "{at}: sessions are neither as acknowledged nor with the UpdateSession in \
                 flight applied whole"
            );
            session.data = merged;
            m.pending_applied += 1;
        }
        Some(Pending::Revoke { index }) => {
            let mut expected = acked.clone();
            expected.remove(&m.sessions[*index].session_id);
            assert_eq!(
                live, expected,
                "{at}: sessions are neither as acknowledged nor with the RevokeSession in \
                 flight applied"
            );
            m.sessions[*index].revoked = true;
            m.pending_applied += 1;
        }
        _ => panic!("{at}: sessions {live:?}, acknowledged {acked:?}, nothing in flight"),
    }
    if matches!(pending, Some(Pending::Shared)) {
        // Settled by `verify_all`, which sees every client's.
        m.pending = pending;
    }

    // Tokens: every live one still opens its session, every revoked one does not.
    for s in &m.sessions {
        let Some(token) = &s.token else { continue };
        let r = get_session(&mut sessions, token).await;
        if s.revoked {
            assert!(!r.found, "{at}: revoked session {} is found", s.session_id);
        } else {
            let found = r
                .session
                .unwrap_or_else(|| panic!("{at}: session {} is lost", s.session_id));
            assert_eq!(found.session_id, s.session_id, "{at}");
            let data: BTreeMap<String, String> = found.data.into_iter().collect();
            assert_eq!(data, s.data, "{at}: session {}", s.session_id);
        }
    }
    m
}

/// What the enqueuers and consumers know, shared by all of them (a std mutex: it is never held
/// across an `.await`). Jobs are known by their payload, unique over the whole run.
#[derive(Debug, Default)]
struct JobsModel {
    /// Every payload an Enqueue or EnqueueMany carried, answered or not.
    sent: BTreeSet<String>,
    /// Payloads whose Enqueue was acknowledged: each must be delivered until it is acked.
    acknowledged: BTreeSet<String>,
    /// A job's id, from its Enqueue's answer or from its first delivery; the two must agree.
    ids: BTreeMap<String, u64>,
    /// Payloads whose Ack was acknowledged: never to be delivered again.
    acked: BTreeSet<String>,
    /// Payloads whose Ack was in flight at a kill: applied or not, so they may come again, or
    /// may be gone.
    maybe_acked: BTreeSet<String>,
    /// Leases a consumer received and has not ended: payload → (lease, expiry in Unix ms).
    held: BTreeMap<String, (String, i64)>,
    /// Counts, for the summary.
    deliveries: u64,
    ack_in_flight_at_kill: u64,
    refused_acks: u64,
    nacks: u64,
}

impl JobsModel {
    /// Records a job's id, which must agree with what was known of it.
    fn learn_id(&mut self, payload: &str, id: u64, seed: u64) {
        if let Some(known) = self.ids.insert(payload.to_owned(), id) {
            assert_eq!(known, id, "seed {seed}: job {payload:?} has two ids");
        }
    }

    /// Checks a delivered job against everything known, and records its lease.
    fn delivered(&mut self, job: &pb::Job, seed: u64) {
        let payload = String::from_utf8(job.payload.to_vec()).expect("payloads are UTF-8");
        assert!(
            self.sent.contains(&payload),
            "seed {seed}: delivered job {} has a payload never sent: {payload:?}",
            job.id
        );
        self.learn_id(&payload, job.id, seed);
        assert!(
            !self.acked.contains(&payload),
            "seed {seed}: job {} ({payload}) delivered again after its Ack was acknowledged",
            job.id
        );
        let now = wall_ms();
        if let Some((_, expires)) = self.held.get(&payload) {
            assert!(
                now >= *expires,
                "seed {seed}: job {} ({payload}) leased to a second worker while another's \
                 lease runs until {expires} (now {now})",
                job.id
            );
        }
        assert!(
            !job.lease.is_empty(),
            "seed {seed}: a leased job without a lease"
        );
        assert!(
            job.attempt >= 1 && job.attempt < JOB_MAX_ATTEMPTS,
            "seed {seed}: job {} at attempt {}",
            job.id,
            job.attempt
        );
        self.held
            .insert(payload, (job.lease.clone(), job.lease_expires_at_ms));
        self.deliveries += 1;
    }

    /// Forgets the lease `lease` of `payload` when it is still the one recorded.
    fn release(&mut self, payload: &str, lease: &str) {
        if self.held.get(payload).is_some_and(|(l, _)| l == lease) {
            self.held.remove(payload);
        }
    }

    /// Jobs that must still be in the queue: acknowledged, and neither acked nor possibly
    /// acked.
    fn required(&self) -> BTreeSet<String> {
        self.acknowledged
            .iter()
            .filter(|p| !self.acked.contains(*p) && !self.maybe_acked.contains(*p))
            .cloned()
            .collect()
    }
}

/// The wall clock in Unix milliseconds: the daemon's clock, on the same machine.
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

/// A job with a unique payload.
fn crash_job(payload: &str, priority: i32) -> pb::NewJob {
    pb::NewJob {
        queue: JOB_QUEUE.into(),
        payload: payload.as_bytes().to_vec().into(),
        priority,
        max_attempts: JOB_MAX_ATTEMPTS,
        ..Default::default()
    }
}

/// Adds jobs one call at a time (an Enqueue, or an EnqueueMany of 2..=5) until a call fails,
/// which must only happen once `killed` is set.
async fn enqueue_until_killed(
    enqueuer: usize,
    cycle: usize,
    channel: Channel,
    mut rng: StdRng,
    jobs: Arc<Mutex<JobsModel>>,
    killed: Arc<AtomicBool>,
    seed: u64,
) {
    let mut queue = QueueServiceClient::new(channel);
    for n in 0..MAX_CALLS_PER_CYCLE {
        let size = if rng.random_range(0..4u32) == 0 {
            rng.random_range(2..=5usize)
        } else {
            1
        };
        let payloads: Vec<String> = (0..size)
            .map(|i| format!("e{enqueuer}-c{cycle}-n{n}-{i}"))
            .collect();
        // Known as sent before it is sent: a consumer may lease it before the answer arrives.
        jobs.lock().unwrap().sent.extend(payloads.iter().cloned());
        let priority = rng.random_range(0..3);
        let result = if size == 1 {
            queue
                .enqueue(pb::EnqueueRequest {
                    job: Some(crash_job(&payloads[0], priority)),
                })
                .await
                .map(|r| vec![r.into_inner()])
        } else {
            queue
                .enqueue_many(pb::EnqueueManyRequest {
                    jobs: payloads.iter().map(|p| crash_job(p, priority)).collect(),
                })
                .await
                .map(|r| r.into_inner().results)
        };
        match result {
            Ok(answers) => {
                assert_eq!(answers.len(), size, "seed {seed}: one answer per job");
                let mut m = jobs.lock().unwrap();
                for (payload, answer) in payloads.into_iter().zip(answers) {
                    assert!(!answer.duplicate, "seed {seed}: {payload} is no duplicate");
                    m.learn_id(&payload, answer.id, seed);
                    m.acknowledged.insert(payload);
                }
            }
            Err(status) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "seed {seed}: enqueuer {enqueuer} failed before the kill: {status:?}"
                );
                return;
            }
        }
    }
    panic!("seed {seed}: enqueuer {enqueuer} sent {MAX_CALLS_PER_CYCLE} calls without a kill");
}

/// Leases jobs (a long-polling Dequeue of 1..=4) and acks each, or nacks one in ten back, one
/// call at a time until a call fails, which must only happen once `killed` is set.
async fn consume_until_killed(
    channel: Channel,
    mut rng: StdRng,
    jobs: Arc<Mutex<JobsModel>>,
    killed: Arc<AtomicBool>,
    seed: u64,
) {
    let mut queue = QueueServiceClient::new(channel);
    for _ in 0..MAX_CALLS_PER_CYCLE {
        let max_jobs = rng.random_range(1..=4);
        let leased = match lease_jobs(&mut queue, max_jobs, JOB_WAIT_MS).await {
            Ok(leased) => leased,
            Err(status) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "seed {seed}: a Dequeue failed before the kill: {status:?}"
                );
                return;
            }
        };
        {
            let mut m = jobs.lock().unwrap();
            for job in &leased {
                m.delivered(job, seed);
            }
        }
        for job in leased {
            let nack = rng.random_range(0..10u32) == 0;
            if let Err(status) = end_lease(&mut queue, &jobs, &job, nack, seed).await {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "seed {seed}: an Ack or Nack failed before the kill: {status:?}"
                );
                return;
            }
        }
    }
    panic!("seed {seed}: a consumer sent {MAX_CALLS_PER_CYCLE} calls without a kill");
}

/// A Dequeue of up to `max_jobs` from the crash queue.
async fn lease_jobs(
    queue: &mut QueueServiceClient<Channel>,
    max_jobs: u32,
    wait_ms: u64,
) -> Result<Vec<pb::Job>, Status> {
    queue
        .dequeue(pb::DequeueRequest {
            queues: vec![JOB_QUEUE.into()],
            max_jobs,
            lease_ms: JOB_LEASE_MS,
            wait_ms,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().jobs)
}

/// Acks `job` (or nacks it back, ready at once) and records the outcome. A refusal
/// (FAILED_PRECONDITION) is an outcome too, allowed only once the lease has run out; any other
/// error is returned, with an Ack recorded as possibly applied.
async fn end_lease(
    queue: &mut QueueServiceClient<Channel>,
    jobs: &Mutex<JobsModel>,
    job: &pb::Job,
    nack: bool,
    seed: u64,
) -> Result<(), Status> {
    let payload = String::from_utf8(job.payload.to_vec()).expect("payloads are UTF-8");
    if nack {
        // Once the Nack is applied another consumer may lease the job before this one hears
        // the answer: the lease is given up as the Nack is sent.
        jobs.lock().unwrap().release(&payload, &job.lease);
    }
    let result = if nack {
        queue
            .nack(pb::NackRequest {
                lease: job.lease.clone(),
                retry_after_ms: Some(0),
                error: "nacked by the crash test".into(),
            })
            .await
            .map(|r| assert!(!r.into_inner().dead, "seed {seed}: {payload} died"))
    } else {
        queue
            .ack(pb::AckRequest {
                lease: job.lease.clone(),
            })
            .await
            .map(|_| ())
    };
    let mut m = jobs.lock().unwrap();
    match result {
        Ok(()) => {
            m.release(&payload, &job.lease);
            if nack {
                m.nacks += 1;
            } else {
                assert!(
                    m.acked.insert(payload.clone()),
                    "seed {seed}: job {} ({payload}) acked twice",
                    job.id
                );
                m.maybe_acked.remove(&payload);
            }
            Ok(())
        }
        Err(status) if status.code() == Code::FailedPrecondition => {
            let now = wall_ms();
            assert!(
                now >= job.lease_expires_at_ms,
                "seed {seed}: job {} ({payload}): the lease until {} was refused at {now}: \
                 {status:?}",
                job.id,
                job.lease_expires_at_ms
            );
            m.release(&payload, &job.lease);
            m.refused_acks += 1;
            Ok(())
        }
        Err(status) => {
            if !nack {
                m.maybe_acked.insert(payload);
                m.ack_in_flight_at_kill += 1;
            }
            Err(status)
        }
    }
}

/// After a restart: every waiting job (ListJobs) was sent and not acked, every job that must
/// still exist is waiting or leased (the leased ones only counted by Stats, read first: a job
/// leased then may be waiting by the listing, never the other way round), and none is dead.
async fn verify_jobs(socket: &Path, jobs: &Mutex<JobsModel>, seed: u64, cycle: usize) {
    let at = format!("seed {seed}, cycle {cycle}");
    let mut queue = QueueServiceClient::new(unix_channel(socket).await);
    let stats = queue
        .stats(pb::QueueServiceStatsRequest {
            queue: JOB_QUEUE.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("{at}: Stats: {s:?}"))
        .into_inner();
    let mut waiting = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = queue
            .list_jobs(pb::ListJobsRequest {
                queue: JOB_QUEUE.into(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .unwrap_or_else(|s| panic!("{at}: ListJobs: {s:?}"))
            .into_inner();
        for job in page.jobs {
            let payload = String::from_utf8(job.payload.to_vec()).expect("payloads are UTF-8");
            assert!(
                waiting.insert(payload, job.id).is_none(),
                "{at}: job {} listed twice",
                job.id
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut m = jobs.lock().unwrap();
    for (payload, id) in &waiting {
        assert!(
            m.sent.contains(payload),
            "{at}: waiting job {id} has a payload never sent: {payload:?}"
        );
        assert!(
            !m.acked.contains(payload),
            "{at}: job {id} ({payload}) waits again after its Ack was acknowledged"
        );
        m.learn_id(payload, *id, seed);
    }
    let required = m.required();
    let missing: Vec<&String> = required
        .iter()
        .filter(|p| !waiting.contains_key(*p))
        .collect();
    assert_eq!(stats.dead, 0, "{at}: no job can have used its attempts");
    // Stats came first: since then, leases may have run out (leased → waiting), and nothing
    // else moved.
    let listed = waiting.len() as u64;
    assert!(
        stats.ready + stats.delayed <= listed
            && listed <= stats.ready + stats.delayed + stats.leased,
        "{at}: {listed} jobs listed, but Stats said {stats:?}"
    );
    assert!(
        missing.len() as u64 <= stats.leased,
        "{at}: {} acknowledged jobs are neither waiting nor among the {} leased: lost \
         (e.g. {:?})",
        missing.len(),
        stats.leased,
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let possible = m.sent.iter().filter(|p| !m.acked.contains(*p)).count() as u64;
    assert!(
        stats.ready + stats.delayed + stats.leased <= possible,
        "{at}: more jobs in the queue than were sent and not acked ({possible}): {stats:?}"
    );
}

/// After the last restart: leases every job until the queue is empty (those leased at the
/// last kill come back when their leases run out) and acks each, then checks that every
/// acknowledged job was acked: none was lost.
async fn drain_jobs(socket: &Path, jobs: &Mutex<JobsModel>, seed: u64) {
    let mut queue = QueueServiceClient::new(unix_channel(socket).await);
    tokio::time::timeout(BOUND, async {
        loop {
            let stats = queue
                .stats(pb::QueueServiceStatsRequest {
                    queue: JOB_QUEUE.into(),
                })
                .await
                .expect("Stats")
                .into_inner();
            if stats.ready + stats.delayed + stats.leased + stats.dead == 0 {
                return;
            }
            let leased = lease_jobs(&mut queue, 1000, 1_000).await.expect("Dequeue");
            {
                let mut m = jobs.lock().unwrap();
                for job in &leased {
                    m.delivered(job, seed);
                }
            }
            for job in leased {
                end_lease(&mut queue, jobs, &job, false, seed)
                    .await
                    .expect("Ack");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("seed {seed}: the job queue was not drained in time"));
    let m = jobs.lock().unwrap();
    let lost: Vec<&String> = m
        .acknowledged
        .iter()
        .filter(|p| !m.acked.contains(*p) && !m.maybe_acked.contains(*p))
        .collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} acknowledged jobs were never acked, the queue being empty: lost \
         (e.g. {:?})",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
}
