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
//! The daemon runs with `--synchronous normal` (the default), and every fourth time with
//! `full`: both must keep every acknowledged write through a process crash. (What `full` adds,
//! surviving a power loss or an OS crash, cannot be tested by killing a process.)
//!
//! The randomness (which calls, which keys, when the kill comes) is seeded; the seed is
//! printed, and `LARDER_CRASH_SEED` replays it. `LARDER_CRASH_CYCLES` sets the number of
//! kill-and-restart cycles (20 by default, a few seconds each at most).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::revoke_session_request::Target;
use larder::pb::session_service_client::SessionServiceClient;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tonic::Status;
use tonic::transport::Channel;

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
        drop(channel);
        if cycle == cycles {
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
        let kill_after = rng_for(seed, cycle, CLIENTS).random_range(KILL_AFTER_MS);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        killed.store(true, Ordering::SeqCst);
        let status = daemon.signal("-KILL").await;
        assert!(!status.success(), "seed {seed}: larder survived SIGKILL");
        models = join_clients(tasks, "noticing the kill").await;
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
}

/// Waits (at most [`BOUND`]) for every client task, which is `doing` something, and returns
/// their models in order.
async fn join_clients(
    tasks: Vec<tokio::task::JoinHandle<ClientModel>>,
    doing: &str,
) -> Vec<ClientModel> {
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
