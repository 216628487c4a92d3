//! `larder.v1.SessionService` over gRPC: every RPC's round trip, sliding idle expiry capped by
//! the absolute one (manual clock), the configured TTL defaults and bounds, rotation and
//! revocation (by token, by id, by user), listing, concurrent merges of session data,
//! persistence across restarts (last uses written in the background once per coalescing window
//! and at a clean shutdown), tokens never reaching the data directory, the sweeper, and
//! validation: every bad field is INVALID_ARGUMENT naming it and changes nothing, while a
//! malformed token is answered like an unknown one.
//!
//! Where a property is about what is on disk (a rejected request wrote nothing, a sliding
//! expiry was persisted, the sweeper deleted a row), the sessions table is read directly with
//! a read-only SQLite connection, which sees committed rows and never the memory LRU.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use larder::ServerSettings;
use larder::SessionSettings;
use larder::pb;
use larder::pb::revoke_session_request::Target;
use larder::store::DB_FILE;
use larder::store::{SWEEP_GRACE_MS, persist_window};
use prost::Message;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use crate::common::{
    START_MS, Sessions, TestServer, assert_code, assert_invalid, create_session, get_session,
};

/// The user most tests log in.
const USER: &str = "alice";

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const DAY: u64 = 24 * 60 * MINUTE;

/// The server's default TTLs and bounds (see `SessionSettings::default`).
const DEFAULT_IDLE_MS: u64 = 30 * MINUTE;
const DEFAULT_ABSOLUTE_MS: u64 = 30 * DAY;
const MAX_TTL_MS: u64 = 365 * DAY;
const KIB: usize = 1024;

/// Bound on every wait for concurrent work or for a background write.
const BOUND: Duration = Duration::from_secs(30);

/// A data map from literal pairs.
fn data(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `n` entries `k0..` with values of `value_len` bytes.
fn entries(n: usize, value_len: usize) -> HashMap<String, String> {
    (0..n)
        .map(|i| (format!("k{i}"), "v".repeat(value_len)))
        .collect()
}

/// A login of `user` with these TTLs and nothing else.
fn login(user: &str, idle_ttl_ms: u64, absolute_ttl_ms: u64) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        user_id: user.into(),
        idle_ttl_ms,
        absolute_ttl_ms,
        ..Default::default()
    }
}

/// A login of [`USER`] with the default TTLs.
fn login_default() -> pb::CreateSessionRequest {
    login(USER, 0, 0)
}

/// Creates a session; returns its token and the session.
async fn create(c: &mut Sessions, req: pb::CreateSessionRequest) -> (String, pb::Session) {
    let created = create_session(c, req).await;
    let session = created
        .session
        .expect("CreateSession answers with the session");
    assert_token_shape(&created.token);
    assert_session_id_shape(&session.session_id);
    (created.token, session)
}

/// A GetSession: the session when found (and no session when not).
async fn get(c: &mut Sessions, token: &str) -> Option<pb::Session> {
    let r = get_session(c, token).await;
    assert_eq!(r.found, r.session.is_some(), "GetSession {token:?}: {r:?}");
    r.session
}

/// An UpdateSession: the session after the change when found.
async fn try_update(
    c: &mut Sessions,
    token: &str,
    set: HashMap<String, String>,
    remove: &[&str],
) -> Result<Option<pb::Session>, Status> {
    let r = c
        .update_session(pb::UpdateSessionRequest {
            token: token.into(),
            set,
            remove: remove.iter().map(|k| k.to_string()).collect(),
        })
        .await?
        .into_inner();
    assert_eq!(
        r.found,
        r.session.is_some(),
        "UpdateSession {token:?}: {r:?}"
    );
    Ok(r.session)
}

/// An UpdateSession that must not fail.
async fn update(
    c: &mut Sessions,
    token: &str,
    set: HashMap<String, String>,
    remove: &[&str],
) -> Option<pb::Session> {
    try_update(c, token, set, remove)
        .await
        .unwrap_or_else(|s| panic!("UpdateSession {token:?}: {s:?}"))
}

/// A RotateSession: the new token and the session when found.
async fn rotate(c: &mut Sessions, token: &str) -> Option<(String, pb::Session)> {
    let r = c
        .rotate_session(pb::RotateSessionRequest {
            token: token.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("RotateSession {token:?}: {s:?}"))
        .into_inner();
    if !r.found {
        assert_eq!(
            r,
            pb::RotateSessionResponse::default(),
            "not found: no token, no session"
        );
        return None;
    }
    assert_token_shape(&r.token);
    Some((r.token, r.session.expect("a found session")))
}

async fn try_revoke(c: &mut Sessions, target: Option<Target>) -> Result<bool, Status> {
    c.revoke_session(pb::RevokeSessionRequest { target })
        .await
        .map(|r| r.into_inner().revoked)
}

/// A RevokeSession by token; returns `revoked`.
async fn revoke_token(c: &mut Sessions, token: &str) -> bool {
    try_revoke(c, Some(Target::Token(token.into())))
        .await
        .unwrap_or_else(|s| panic!("RevokeSession by token {token:?}: {s:?}"))
}

/// A RevokeSession by session id; returns `revoked`.
async fn revoke_id(c: &mut Sessions, session_id: &str) -> bool {
    try_revoke(c, Some(Target::SessionId(session_id.into())))
        .await
        .unwrap_or_else(|s| panic!("RevokeSession by id {session_id:?}: {s:?}"))
}

async fn try_revoke_user(c: &mut Sessions, user: &str, except: &str) -> Result<u64, Status> {
    c.revoke_user_sessions(pb::RevokeUserSessionsRequest {
        user_id: user.into(),
        except_session_id: except.into(),
    })
    .await
    .map(|r| r.into_inner().revoked)
}

/// A RevokeUserSessions; returns how many were revoked.
async fn revoke_user(c: &mut Sessions, user: &str, except: &str) -> u64 {
    try_revoke_user(c, user, except)
        .await
        .unwrap_or_else(|s| panic!("RevokeUserSessions {user:?} except {except:?}: {s:?}"))
}

async fn try_list(c: &mut Sessions, user: &str) -> Result<pb::ListSessionsResponse, Status> {
    c.list_sessions(pb::ListSessionsRequest {
        user_id: user.into(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// A ListSessions that is not truncated; returns the sessions.
async fn list(c: &mut Sessions, user: &str) -> Vec<pb::Session> {
    let r = try_list(c, user)
        .await
        .unwrap_or_else(|s| panic!("ListSessions {user:?}: {s:?}"));
    assert!(!r.truncated, "{r:?}");
    r.sessions
}

fn ids(sessions: &[pb::Session]) -> Vec<&str> {
    sessions.iter().map(|s| s.session_id.as_str()).collect()
}

#[track_caller]
fn assert_url_safe(s: &str, what: &str) {
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{what} {s:?} is not url-safe base64"
    );
}

/// `lds_` + 43 url-safe base64 characters (256 bits).
#[track_caller]
fn assert_token_shape(token: &str) {
    let body = token
        .strip_prefix("lds_")
        .unwrap_or_else(|| panic!("the token {token:?} does not start with lds_"));
    assert_eq!(body.len(), 43, "{token:?}");
    assert_url_safe(body, "the token");
    assert_eq!(URL_SAFE_NO_PAD.decode(body).map(|b| b.len()), Ok(32));
}

/// `ses_` + 22 url-safe base64 characters.
#[track_caller]
fn assert_session_id_shape(id: &str) {
    let body = id
        .strip_prefix("ses_")
        .unwrap_or_else(|| panic!("the session id {id:?} does not start with ses_"));
    assert_eq!(body.len(), 22, "{id:?}");
    assert_url_safe(body, "the session id");
}

/// Asserts INVALID_ARGUMENT on one entry of a map field, named `map["key"]`.
#[track_caller]
fn assert_invalid_entry<T: Debug>(result: Result<T, Status>, map: &str, key: &str) {
    let status = assert_code(result, Code::InvalidArgument);
    // A key is quoted whole up to 128 bytes, cut there past that (these keys are ASCII).
    let quoted = match key.get(..128) {
        Some(start) if key.len() > 128 => format!("{start:?}… ({} bytes)", key.len()),
        _ => format!("{key:?}"),
    };
    let field = format!("{map}[{quoted}]: ");
    assert!(
        status.message().starts_with(&field),
        "the message {:?} does not name {field:?}",
        status.message()
    );
}

/// A row of the sessions table as committed (never what memory knows).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    token_hash: Vec<u8>,
    session_id: String,
    user_id: String,
    data: String,
    last_seen_at: u64,
    idle_expires_at: u64,
    absolute_expires_at: u64,
}

/// A read-only connection to the running server's database.
fn open_db(dir: &Path) -> Connection {
    Connection::open_with_flags(dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the database read-only")
}

/// Every committed session row, in insertion order.
fn disk_rows(dir: &Path) -> Vec<Row> {
    let conn = open_db(dir);
    let mut stmt = conn
        .prepare(
            "SELECT token_hash, session_id, user_id, data, last_seen_at, idle_expires_at, \
             absolute_expires_at FROM sessions ORDER BY id",
        )
        .expect("preparing the row scan");
    stmt.query_map([], |r| {
        Ok(Row {
            token_hash: r.get(0)?,
            session_id: r.get(1)?,
            user_id: r.get(2)?,
            data: r.get(3)?,
            last_seen_at: r.get::<_, i64>(4)? as u64,
            idle_expires_at: r.get::<_, i64>(5)? as u64,
            absolute_expires_at: r.get::<_, i64>(6)? as u64,
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .expect("reading the sessions table")
}

/// Session ids on disk, in insertion order.
fn disk_ids(dir: &Path) -> Vec<String> {
    disk_rows(dir).into_iter().map(|r| r.session_id).collect()
}

/// What a rejected request must leave as it was: the listing of `user` (which shows the
/// last-seen times memory knows) and every committed row.
#[derive(Debug, PartialEq)]
struct State {
    listed: Vec<pb::Session>,
    rows: Vec<Row>,
}

async fn state(server: &TestServer, c: &mut Sessions, user: &str) -> State {
    State {
        listed: list(c, user).await,
        rows: disk_rows(server.data_dir()),
    }
}

/// Waits (bounded, without sleeping) until the committed last-seen time of `session_id` is at
/// least `at_least`: the background write of a GetSession.
async fn wait_for_disk_last_seen(dir: &Path, session_id: &str, at_least: u64) {
    let conn = open_db(dir);
    let seen = || -> u64 {
        conn.query_row(
            "SELECT last_seen_at FROM sessions WHERE session_id = ?1",
            [session_id],
            |r| r.get::<_, i64>(0),
        )
        .expect("reading a session's last-seen time") as u64
    };
    tokio::time::timeout(BOUND, async {
        while seen() < at_least {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the last-seen time {at_least} of {session_id} was not written within {BOUND:?} \
             (on disk: {})",
            seen()
        )
    });
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_round_trips() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let idle = 10 * MINUTE;
    let absolute = DAY;
    let (token, created) = create(
        &mut c,
        pb::CreateSessionRequest {
            user_id: USER.into(),
            data: data(&[("csrf", "s3cret"), ("login", "password")]),
            idle_ttl_ms: idle,
            absolute_ttl_ms: absolute,
            device_info: "Mozilla/5.0 (X11; Linux x86_64)".into(),
            ip: "203.0.113.7".into(),
        },
    )
    .await;
    let expected = pb::Session {
        session_id: created.session_id.clone(),
        user_id: USER.into(),
        data: data(&[("csrf", "s3cret"), ("login", "password")]),
        device_info: "Mozilla/5.0 (X11; Linux x86_64)".into(),
        ip: "203.0.113.7".into(),
        created_at_ms: START_MS,
        last_seen_at_ms: START_MS,
        idle_expires_at_ms: START_MS + idle,
        absolute_expires_at_ms: START_MS + absolute,
        idle_ttl_ms: idle,
    };
    assert_eq!(created, expected);

    // GetSession is a use: the idle expiry slides, nothing else changes.
    server.clock().advance_ms(SECOND);
    let now = START_MS + SECOND;
    let got = get(&mut c, &token).await.expect("the new session is found");
    let used_at = |now: u64, s: &pb::Session| pb::Session {
        last_seen_at_ms: now,
        idle_expires_at_ms: now + idle,
        ..s.clone()
    };
    assert_eq!(got, used_at(now, &expected));

    // UpdateSession merges: set keys are written, removed ones go, others stay.
    server.clock().advance_ms(SECOND);
    let now = now + SECOND;
    let updated = update(
        &mut c,
        &token,
        data(&[("cart", "42"), ("login", "sso")]),
        &["csrf", "absent"],
    )
    .await
    .expect("found");
    let after_update = pb::Session {
        data: data(&[("cart", "42"), ("login", "sso")]),
        ..used_at(now, &expected)
    };
    assert_eq!(updated, after_update);
    assert_eq!(get(&mut c, &token).await, Some(after_update.clone()));

    // RotateSession: a new token for the same session; the old one is gone.
    server.clock().advance_ms(SECOND);
    let now = now + SECOND;
    let (new_token, rotated) = rotate(&mut c, &token).await.expect("found");
    assert_ne!(new_token, token);
    assert_eq!(rotated, used_at(now, &after_update));
    assert_eq!(get(&mut c, &token).await, None);
    assert_eq!(get(&mut c, &new_token).await, Some(rotated.clone()));

    // ListSessions: newest first; listing is not a use.
    server.clock().advance_ms(SECOND);
    let (second_token, second) = create(&mut c, login(USER, idle, absolute)).await;
    assert_eq!(second.created_at_ms, START_MS + 4 * SECOND);
    assert_eq!(
        list(&mut c, USER).await,
        vec![second.clone(), rotated.clone()]
    );
    assert!(list(&mut c, "bob").await.is_empty());

    // RevokeSession by token, then by id; RevokeUserSessions ends the rest.
    assert!(revoke_token(&mut c, &new_token).await);
    assert_eq!(get(&mut c, &new_token).await, None);
    assert_eq!(list(&mut c, USER).await, vec![second.clone()]);
    let (third_token, third) = create(&mut c, login_default()).await;
    assert!(revoke_id(&mut c, &third.session_id).await);
    assert_eq!(get(&mut c, &third_token).await, None);
    create(&mut c, login_default()).await;
    assert_eq!(revoke_user(&mut c, USER, "").await, 2);
    assert!(list(&mut c, USER).await.is_empty());
    assert_eq!(get(&mut c, &second_token).await, None);
    assert!(
        disk_rows(server.data_dir()).is_empty(),
        "revoked rows are deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_session_ids_are_unique() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let mut tokens = BTreeSet::new();
    let mut session_ids = BTreeSet::new();
    for _ in 0..100 {
        let (token, session) = create(&mut c, login_default()).await;
        assert!(tokens.insert(token));
        assert!(session_ids.insert(session.session_id));
    }
    for token in &tokens {
        assert!(get(&mut c, token).await.is_some());
    }
    assert_eq!(list(&mut c, USER).await.len(), 100);
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_idle_expiry_slides_with_each_get() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, s) = create(&mut c, login(USER, 10_000, 0)).await;
    assert_eq!(s.idle_expires_at_ms, START_MS + 10_000);

    server.clock().advance_ms(9_000);
    let s = get(&mut c, &token)
        .await
        .expect("found before the idle expiry");
    assert_eq!(
        (s.last_seen_at_ms, s.idle_expires_at_ms),
        (START_MS + 9_000, START_MS + 19_000)
    );
    server.clock().advance_ms(9_000);
    let s = get(&mut c, &token)
        .await
        .expect("found past the first idle expiry: it slid");
    assert_eq!(s.idle_expires_at_ms, START_MS + 28_000);

    // Unused from here on: listing is not a use, so the session ends exactly at its expiry.
    server.clock().advance_ms(9_999);
    assert_eq!(ids(&list(&mut c, USER).await), [s.session_id.as_str()]);
    server.clock().advance_ms(1);
    assert_eq!(get(&mut c, &token).await, None);
    assert_eq!(update(&mut c, &token, data(&[("k", "v")]), &[]).await, None);
    assert_eq!(rotate(&mut c, &token).await, None);
    assert!(!revoke_token(&mut c, &token).await);
    assert!(!revoke_id(&mut c, &s.session_id).await);
    assert!(list(&mut c, USER).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn update_and_rotate_count_as_uses() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, _) = create(&mut c, login(USER, 10_000, 0)).await;

    server.clock().advance_ms(9_000);
    let s = update(&mut c, &token, data(&[("k", "v")]), &[])
        .await
        .expect("found");
    assert_eq!(
        (s.last_seen_at_ms, s.idle_expires_at_ms),
        (START_MS + 9_000, START_MS + 19_000)
    );
    server.clock().advance_ms(9_000);
    let (token, s) = rotate(&mut c, &token).await.expect("found");
    assert_eq!(
        (s.last_seen_at_ms, s.idle_expires_at_ms),
        (START_MS + 18_000, START_MS + 28_000)
    );
    server.clock().advance_ms(9_000);
    assert!(get(&mut c, &token).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_absolute_expiry_caps_the_idle_one() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, s) = create(&mut c, login(USER, 10_000, 20_000)).await;
    let absolute = START_MS + 20_000;
    assert_eq!(s.absolute_expires_at_ms, absolute);

    for step in 1..=3 {
        server.clock().advance_ms(5_000);
        let now = START_MS + step * 5_000;
        let s = get(&mut c, &token)
            .await
            .unwrap_or_else(|| panic!("used every 5 s, found at {now}"));
        assert_eq!(s.idle_expires_at_ms, (now + 10_000).min(absolute));
        assert!(s.idle_expires_at_ms <= s.absolute_expires_at_ms, "{s:?}");
        assert_eq!(s.absolute_expires_at_ms, absolute, "never moves");
    }
    server.clock().advance_ms(4_999);
    let s = get(&mut c, &token).await.expect("1 ms before the end");
    assert_eq!(s.idle_expires_at_ms, absolute);
    server.clock().advance_ms(1);
    assert_eq!(get(&mut c, &token).await, None, "used, yet ended");
    assert!(list(&mut c, USER).await.is_empty());

    // An absolute TTL shorter than the idle one caps it from the start.
    let (_, s) = create(&mut c, login(USER, 10_000, 5_000)).await;
    assert_eq!(s.idle_expires_at_ms, s.absolute_expires_at_ms);
    assert_eq!(s.idle_ttl_ms, 10_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_ttls_take_the_server_defaults() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (_, s) = create(&mut c, login(USER, 0, 0)).await;
    assert_eq!(s.idle_ttl_ms, DEFAULT_IDLE_MS);
    assert_eq!(s.idle_expires_at_ms, START_MS + DEFAULT_IDLE_MS);
    assert_eq!(s.absolute_expires_at_ms, START_MS + DEFAULT_ABSOLUTE_MS);

    // Each default applies alone.
    let (_, s) = create(&mut c, login(USER, 5_000, 0)).await;
    assert_eq!(
        (s.idle_ttl_ms, s.absolute_expires_at_ms),
        (5_000, START_MS + DEFAULT_ABSOLUTE_MS)
    );
    let (_, s) = create(&mut c, login(USER, 0, 5_000)).await;
    assert_eq!(
        (s.idle_ttl_ms, s.absolute_expires_at_ms),
        (DEFAULT_IDLE_MS, START_MS + 5_000)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_defaults_and_maximum_apply() {
    let settings = ServerSettings {
        sessions: SessionSettings {
            default_idle_ttl: Duration::from_secs(5),
            default_absolute_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            ..SessionSettings::default()
        },
        ..ServerSettings::default()
    };
    let server = TestServer::start_with(|_| {}, settings).await;
    let mut c = server.session_client().await;
    let (token, s) = create(&mut c, login(USER, 0, 0)).await;
    assert_eq!(s.idle_ttl_ms, 5_000);
    assert_eq!(s.idle_expires_at_ms, START_MS + 5_000);
    assert_eq!(s.absolute_expires_at_ms, START_MS + 60_000);

    let (_, at_max) = create(&mut c, login(USER, 3_600_000, 3_600_000)).await;
    assert_eq!(at_max.idle_ttl_ms, 3_600_000);
    assert_eq!(at_max.absolute_expires_at_ms, START_MS + 3_600_000);

    let before = state(&server, &mut c, USER).await;
    assert_invalid(
        c.create_session(login(USER, 3_600_001, 0)).await,
        "idle_ttl_ms",
    );
    assert_invalid(
        c.create_session(login(USER, 0, 3_600_001)).await,
        "absolute_ttl_ms",
    );
    assert_eq!(state(&server, &mut c, USER).await, before);

    server.clock().advance_ms(4_999);
    assert_eq!(list(&mut c, USER).await.len(), 2);
    server.clock().advance_ms(1);
    assert_eq!(get(&mut c, &token).await, None, "the configured idle TTL");
    assert_eq!(ids(&list(&mut c, USER).await), [at_max.session_id.as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ttls_over_365_days_are_rejected() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (_, s) = create(&mut c, login(USER, MAX_TTL_MS, MAX_TTL_MS)).await;
    assert_eq!(s.absolute_expires_at_ms, START_MS + MAX_TTL_MS);

    let before = state(&server, &mut c, USER).await;
    assert_invalid(
        c.create_session(login(USER, MAX_TTL_MS + 1, 0)).await,
        "idle_ttl_ms",
    );
    assert_invalid(
        c.create_session(login(USER, 0, MAX_TTL_MS + 1)).await,
        "absolute_ttl_ms",
    );
    assert_invalid(
        c.create_session(login(USER, u64::MAX, u64::MAX)).await,
        "idle_ttl_ms",
    );
    assert_eq!(state(&server, &mut c, USER).await, before);
}

// ---------------------------------------------------------------------------------------------
// Rotation and revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rotation_retires_the_old_token_at_once() {
    let mut server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (old, s) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: data(&[("role", "user")]),
            ..login_default()
        },
    )
    .await;
    // The old token is in memory (cached at creation and by this read).
    assert!(get(&mut c, &old).await.is_some());

    server.clock().advance_ms(SECOND);
    let (new, rotated) = rotate(&mut c, &old).await.expect("found");
    assert_ne!(new, old);
    assert_eq!(rotated.session_id, s.session_id);
    assert_eq!(rotated.data, s.data);
    assert_eq!(rotated.created_at_ms, s.created_at_ms);
    assert_eq!(rotated.absolute_expires_at_ms, s.absolute_expires_at_ms);
    assert_eq!(rotated.last_seen_at_ms, START_MS + SECOND);

    assert_eq!(get(&mut c, &old).await, None);
    assert_eq!(
        update(&mut c, &old, data(&[("role", "admin")]), &[]).await,
        None
    );
    assert_eq!(rotate(&mut c, &old).await, None);
    assert!(!revoke_token(&mut c, &old).await);

    let got = get(&mut c, &new).await.expect("the new token works");
    assert_eq!(
        got, rotated,
        "nothing done with the old token changed the session"
    );
    assert_eq!(list(&mut c, USER).await, vec![rotated.clone()]);

    // Rotating again retires the second token too; after a restart only the last one works.
    let (newest, _) = rotate(&mut c, &new).await.expect("found");
    assert_eq!(get(&mut c, &new).await, None);
    server.restart().await;
    let mut c = server.session_client().await;
    assert_eq!(get(&mut c, &old).await, None);
    assert_eq!(get(&mut c, &new).await, None);
    let got = get(&mut c, &newest).await.expect("the newest token works");
    assert_eq!(
        (got.session_id, got.data),
        (s.session_id.clone(), s.data.clone())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_by_token_and_by_session_id() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (a_token, a) = create(&mut c, login_default()).await;
    let (b_token, b) = create(&mut c, login_default()).await;
    let (c_token, _) = create(&mut c, login_default()).await;
    assert!(get(&mut c, &a_token).await.is_some(), "cached in memory");

    assert!(revoke_token(&mut c, &a_token).await);
    assert!(!revoke_token(&mut c, &a_token).await, "already revoked");
    assert!(!revoke_id(&mut c, &a.session_id).await, "already revoked");
    assert_eq!(get(&mut c, &a_token).await, None);
    assert_eq!(
        update(&mut c, &a_token, data(&[("k", "v")]), &[]).await,
        None
    );
    assert_eq!(rotate(&mut c, &a_token).await, None);

    assert!(revoke_id(&mut c, &b.session_id).await);
    assert!(!revoke_id(&mut c, &b.session_id).await, "already revoked");
    assert!(!revoke_token(&mut c, &b_token).await, "already revoked");
    assert_eq!(get(&mut c, &b_token).await, None);
    assert_eq!(rotate(&mut c, &b_token).await, None);

    // Well-formed but unknown targets.
    assert!(!revoke_id(&mut c, "ses_AAAAAAAAAAAAAAAAAAAAAA").await);
    let unknown = format!("lds_{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
    assert!(!revoke_token(&mut c, &unknown).await);

    assert!(get(&mut c, &c_token).await.is_some(), "untouched");
    assert_eq!(list(&mut c, USER).await.len(), 1);
    assert_eq!(disk_rows(server.data_dir()).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_users_sessions_spares_the_excepted_one_and_other_users() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (a1, _) = create(&mut c, login_default()).await;
    let (a2, keep) = create(&mut c, login_default()).await;
    let (a3, _) = create(&mut c, login_default()).await;
    let (b1, bob) = create(&mut c, login("bob", 0, 0)).await;
    for t in [&a1, &a2, &a3, &b1] {
        assert!(get(&mut c, t).await.is_some());
    }

    assert_eq!(revoke_user(&mut c, USER, &keep.session_id).await, 2);
    assert_eq!(get(&mut c, &a1).await, None);
    assert_eq!(get(&mut c, &a3).await, None);
    assert!(get(&mut c, &a2).await.is_some(), "the excepted session");
    assert_eq!(ids(&list(&mut c, USER).await), [keep.session_id.as_str()]);
    assert_eq!(revoke_user(&mut c, USER, &keep.session_id).await, 0);

    // Another user's session as the exception protects nothing of this user's.
    assert_eq!(revoke_user(&mut c, USER, &bob.session_id).await, 1);
    assert_eq!(get(&mut c, &a2).await, None);
    assert_eq!(revoke_user(&mut c, USER, "").await, 0);
    assert!(list(&mut c, USER).await.is_empty());

    // Expired sessions are deleted but not counted.
    create(&mut c, login(USER, 1_000, 0)).await;
    let (live, _) = create(&mut c, login(USER, 0, 0)).await;
    server.clock().advance_ms(1_000);
    assert!(get(&mut c, &live).await.is_some());
    assert_eq!(revoke_user(&mut c, USER, "").await, 1);
    assert_eq!(get(&mut c, &live).await, None);

    assert!(get(&mut c, &b1).await.is_some(), "bob is untouched");
    assert_eq!(ids(&list(&mut c, "bob").await), [bob.session_id.as_str()]);
    assert_eq!(disk_ids(server.data_dir()), [bob.session_id.as_str()]);
    assert_eq!(revoke_user(&mut c, "nobody", "").await, 0);
}

// ---------------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_live_sessions_newest_first_without_tokens() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let mut tokens = Vec::new();
    let (t1, s1) = create(&mut c, login_default()).await;
    server.clock().advance_ms(SECOND);
    let (t2, _) = create(&mut c, login_default()).await;
    server.clock().advance_ms(SECOND);
    let (t3, _short) = create(&mut c, login(USER, 500, 0)).await;
    server.clock().advance_ms(SECOND);
    let (t4, s4) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: data(&[("csrf", "x")]),
            device_info: "curl/8".into(),
            ip: "::1".into(),
            ..login_default()
        },
    )
    .await;
    let (t5, _) = create(&mut c, login("bob", 0, 0)).await;
    tokens.extend([t1.clone(), t2.clone(), t3, t4.clone(), t5]);
    assert!(revoke_token(&mut c, &t2).await);

    // s3 expired (idle 500 ms, unused for 2 s), s2 revoked, bob's is not alice's.
    assert_eq!(list(&mut c, USER).await, vec![s4.clone(), s1.clone()]);

    // A use known only to memory shows in the listing.
    server.clock().advance_ms(SECOND);
    let used = get(&mut c, &t1).await.expect("found");
    assert_eq!(list(&mut c, USER).await, vec![s4.clone(), used]);

    // A rotated token is not listed either.
    let (t4_new, _) = rotate(&mut c, &t4).await.expect("found");
    tokens.push(t4_new);

    for user in [USER, "bob"] {
        let r = try_list(&mut c, user).await.expect("ListSessions");
        let debug = format!("{r:?}");
        let encoded = r.encode_to_vec();
        for token in &tokens {
            let body = &token["lds_".len()..];
            for needle in [token.as_str(), body] {
                assert!(
                    !debug.contains(needle),
                    "ListSessions shows a token: {debug}"
                );
                assert!(
                    !encoded
                        .windows(needle.len())
                        .any(|w| w == needle.as_bytes()),
                    "ListSessions' encoding holds a token"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_bounded_and_says_when_it_is_truncated() {
    for (settings, shown) in [
        (
            SessionSettings {
                max_list: 2,
                ..SessionSettings::default()
            },
            2,
        ),
        (
            SessionSettings {
                max_list_bytes: 1,
                ..SessionSettings::default()
            },
            1,
        ),
    ] {
        let server = TestServer::start_with(
            |_| {},
            ServerSettings {
                sessions: settings,
                ..ServerSettings::default()
            },
        )
        .await;
        let mut c = server.session_client().await;
        let mut created = Vec::new();
        for _ in 0..3 {
            created.push(create(&mut c, login_default()).await);
            server.clock().advance_ms(SECOND);
        }
        let r = try_list(&mut c, USER).await.expect("ListSessions");
        assert!(r.truncated, "{r:?}");
        let newest: Vec<_> = created
            .iter()
            .rev()
            .take(shown)
            .map(|(_, s)| s.clone())
            .collect();
        assert_eq!(r.sessions, newest, "the newest are kept");
        assert!(revoke_user(&mut c, USER, &created[0].1.session_id).await > 0);
        let r = try_list(&mut c, USER).await.expect("ListSessions");
        assert_eq!(
            (r.sessions, r.truncated),
            (vec![created[0].1.clone()], false)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_of_different_keys_all_survive() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, _) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: data(&[("keep", "me"), ("drop", "me")]),
            ..login_default()
        },
    )
    .await;

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut c = c.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let set = HashMap::from([(format!("k{i}"), format!("v{i}"))]);
                update(&mut c, &token, set, &[]).await.is_some()
            })
        })
        .collect();
    tokio::time::timeout(BOUND, async {
        for t in tasks {
            assert!(t.await.expect("an update task panicked"), "found");
        }
    })
    .await
    .expect("50 concurrent updates finish in time");

    let mut expected = data(&[("keep", "me"), ("drop", "me")]);
    expected.extend((0..50).map(|i| (format!("k{i}"), format!("v{i}"))));
    let s = get(&mut c, &token).await.expect("found");
    assert_eq!(s.data, expected);

    // One caller removes a key while another sets a different one: both changes stay.
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (t1, t2) = (token.clone(), token.clone());
    let remove = tokio::spawn(async move { update(&mut c1, &t1, HashMap::new(), &["drop"]).await });
    let set = tokio::spawn(async move { update(&mut c2, &t2, data(&[("new", "1")]), &[]).await });
    let (removed, set) = tokio::time::timeout(BOUND, async { (remove.await, set.await) })
        .await
        .expect("two concurrent updates finish in time");
    assert!(removed.expect("the remove task panicked").is_some());
    assert!(set.expect("the set task panicked").is_some());

    expected.remove("drop");
    expected.insert("new".into(), "1".into());
    assert_eq!(get(&mut c, &token).await.expect("found").data, expected);
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sessions_and_revocations_survive_a_restart() {
    let mut server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (a_token, _) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: data(&[("a", "1")]),
            device_info: "phone".into(),
            ip: "198.51.100.1".into(),
            ..login_default()
        },
    )
    .await;
    server.clock().advance_ms(SECOND);
    let (b_token, b) = create(&mut c, login_default()).await;
    server.clock().advance_ms(SECOND);
    let (r_old, _) = create(&mut c, login_default()).await;
    let (r_token, r) = rotate(&mut c, &r_old).await.expect("found");
    assert!(revoke_token(&mut c, &b_token).await);
    server.clock().advance_ms(SECOND);
    let a = update(&mut c, &a_token, data(&[("b", "2")]), &[])
        .await
        .expect("found");

    server.restart().await;
    let mut c = server.session_client().await;
    assert_eq!(list(&mut c, USER).await, vec![r.clone(), a.clone()]);
    assert_eq!(get(&mut c, &b_token).await, None, "still revoked");
    assert!(!revoke_id(&mut c, &b.session_id).await);
    assert_eq!(get(&mut c, &r_old).await, None, "still rotated away");
    assert!(get(&mut c, &r_token).await.is_some());
    let got = get(&mut c, &a_token)
        .await
        .expect("found after the restart");
    assert_eq!(got.data, data(&[("a", "1"), ("b", "2")]));
    assert_eq!(
        got,
        pb::Session {
            last_seen_at_ms: START_MS + 3 * SECOND,
            idle_expires_at_ms: START_MS + 3 * SECOND + DEFAULT_IDLE_MS,
            ..a
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn last_uses_are_written_in_the_background_and_at_a_clean_shutdown() {
    let idle = 100_000;
    let window = persist_window(idle);
    assert_eq!(window, 10_000);
    let mut server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, s) = create(&mut c, login(USER, idle, 0)).await;
    let on_disk = |server: &TestServer| {
        disk_rows(server.data_dir())
            .into_iter()
            .find(|r| r.session_id == s.session_id)
            .expect("the session's row")
    };

    // A use one window after the last written one is written in the background.
    server.clock().advance_ms(window);
    let t1 = START_MS + window;
    assert_eq!(
        get(&mut c, &token).await.expect("found").last_seen_at_ms,
        t1
    );
    wait_for_disk_last_seen(server.data_dir(), &s.session_id, t1).await;
    assert_eq!(on_disk(&server).idle_expires_at, t1 + idle);

    // A use within the window stays in memory only...
    server.clock().advance_ms(window / 2);
    let t2 = t1 + window / 2;
    assert_eq!(
        get(&mut c, &token).await.expect("found").last_seen_at_ms,
        t2
    );
    assert_eq!(
        on_disk(&server).last_seen_at,
        t1,
        "a use within the window is not written"
    );

    // ...until a clean shutdown writes it: the restarted server knows the last use.
    server.restart().await;
    let mut c = server.session_client().await;
    let listed = list(&mut c, USER).await;
    assert_eq!(ids(&listed), [s.session_id.as_str()]);
    assert_eq!(
        (listed[0].last_seen_at_ms, listed[0].idle_expires_at_ms),
        (t2, t2 + idle),
        "the use at {t2} survives a clean restart (the one at {t1} was already on disk)"
    );

    // The session lives until that idle expiry, and no longer.
    server.clock().set_ms(t2 + idle - 1);
    assert_eq!(list(&mut c, USER).await.len(), 1);
    server.clock().set_ms(t2 + idle);
    assert_eq!(get(&mut c, &token).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_sessions_read_from_disk_are_not_found() {
    // After a restart sessions are only on disk, so the expiry checks of the SQLite paths run
    // (the reader's for GetSession, the writer's for the others).
    let mut server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (idle_token, _) = create(&mut c, login(USER, 10_000, 0)).await;
    let (abs_token, _) = create(&mut c, login(USER, 60_000, 5_000)).await;
    let (_, idle_by_id) = create(&mut c, login(USER, 10_000, 0)).await;
    let (_, abs_by_id) = create(&mut c, login(USER, 60_000, 5_000)).await;
    let (live_token, live) = create(&mut c, login_default()).await;
    server.restart().await;
    let mut c = server.session_client().await;

    server.clock().advance_ms(10_000);
    for token in [&idle_token, &abs_token] {
        assert_eq!(get(&mut c, token).await, None);
        assert_eq!(update(&mut c, token, data(&[("k", "v")]), &[]).await, None);
        assert_eq!(rotate(&mut c, token).await, None);
        assert!(!revoke_token(&mut c, token).await);
    }
    for s in [&idle_by_id, &abs_by_id] {
        assert!(!revoke_id(&mut c, &s.session_id).await);
    }
    assert_eq!(list(&mut c, USER).await, vec![live]);
    assert!(get(&mut c, &live_token).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_memory_cannot_hold_has_each_use_written_at_once() {
    // With no memory for sessions, a use would be forgotten with the uncached copy; it goes to
    // disk instead, so the slid expiry GetSession reported holds.
    let server =
        TestServer::start_with(|c| c.session_memory_bytes = 0, ServerSettings::default()).await;
    let mut c = server.session_client().await;
    let (token, created) = create(&mut c, login(USER, 10_000, 0)).await;
    server.clock().advance_ms(500);
    let used = get(&mut c, &token).await.expect("a live session");
    assert_eq!(used.idle_expires_at_ms, START_MS + 10_500);
    wait_for_disk_last_seen(server.data_dir(), &created.session_id, START_MS + 500).await;
    server.clock().set_ms(START_MS + 10_200);
    assert!(get(&mut c, &token).await.is_some());
    server.clock().set_ms(START_MS + 20_200);
    assert_eq!(get(&mut c, &token).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_reach_the_data_directory() {
    let mut server = TestServer::start().await;
    let mut c = server.session_client().await;
    let mut tokens = Vec::new();
    let mut live = Vec::new();
    for i in 0..4 {
        let (token, s) = create(
            &mut c,
            pb::CreateSessionRequest {
                data: data(&[("n", &i.to_string())]),
                ..login(USER, MINUTE, 0)
            },
        )
        .await;
        tokens.push(token.clone());
        live.push((token, s.session_id));
    }
    // Every write path that involves a token hash: a rotation, an update, a revocation and
    // the background last-seen writes (one window after creation).
    let (rotated, _) = rotate(&mut c, &tokens[0]).await.expect("found");
    tokens.push(rotated.clone());
    live[0].0 = rotated;
    update(&mut c, &tokens[1], data(&[("k", "v")]), &[]).await;
    assert!(revoke_token(&mut c, &tokens[2]).await);
    live.remove(2);
    server.clock().advance_ms(persist_window(MINUTE));
    for (token, id) in &live {
        let seen = get(&mut c, token).await.expect("found").last_seen_at_ms;
        wait_for_disk_last_seen(server.data_dir(), id, seen).await;
    }

    let secrets: Vec<(String, Vec<Vec<u8>>)> = tokens
        .iter()
        .map(|t| {
            let body = &t["lds_".len()..];
            let raw = URL_SAFE_NO_PAD.decode(body).expect("a token body");
            (
                t.clone(),
                vec![t.as_bytes().to_vec(), body.as_bytes().to_vec(), raw],
            )
        })
        .collect();
    let assert_no_token = |dir: &Path, when: &str| {
        let files = files_under(dir);
        assert!(
            !files.is_empty(),
            "{when}: no files under {}",
            dir.display()
        );
        for (path, bytes) in &files {
            for (token, needles) in &secrets {
                for needle in needles {
                    assert!(
                        !contains(bytes, needle),
                        "{when}: {} holds (a form of) the token {token}",
                        path.display()
                    );
                }
            }
        }
    };
    assert_no_token(server.data_dir(), "while running");
    server.stop().await;
    assert_no_token(server.data_dir(), "after a graceful stop");

    // Control: the scan does see what is stored, the hash and the session id of live sessions.
    let files = files_under(server.data_dir());
    for (token, id) in &live {
        let hash = Sha256::digest(token.as_bytes());
        assert!(
            files.iter().any(|(_, b)| contains(b, &hash[..])),
            "the SHA-256 of a live token is stored"
        );
        assert!(files.iter().any(|(_, b)| contains(b, id.as_bytes())));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` (recursively), with its bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("listing the data directory") {
            let path = entry.expect("a directory entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("file metadata");
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).expect("reading a data file");
                out.push((path, bytes));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sweeper
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_deletes_expired_sessions_only() {
    // Batches of 2, so that one `maintain()` has to run several passes.
    let server = TestServer::start_with(|c| c.sweep_batch = 2, Default::default()).await;
    let mut c = server.session_client().await;
    let (idle_token, idle) = create(&mut c, login(USER, 1_000, 0)).await;
    let mut absolute = Vec::new();
    for _ in 0..4 {
        absolute.push(create(&mut c, login(USER, 100_000, 5_000)).await);
    }
    let (live_token, live) = create(&mut c, login_default()).await;
    let (bob_token, bob) = create(&mut c, login("bob", 0, 0)).await;
    let dir = server.data_dir();
    assert_eq!(server.store().maintain().await.unwrap(), 0);
    assert_eq!(disk_rows(dir).len(), 7);

    // Past the absolute expiry: swept at once. Idle-expired 4 s ago: left for the grace period
    // (memory may know a later use), though not found.
    server.clock().advance_ms(5_000);
    assert_eq!(server.store().maintain().await.unwrap(), 4);
    assert_eq!(
        disk_ids(dir),
        [
            idle.session_id.as_str(),
            live.session_id.as_str(),
            bob.session_id.as_str()
        ]
    );
    assert_eq!(get(&mut c, &idle_token).await, None);
    for (token, _) in &absolute {
        assert_eq!(get(&mut c, token).await, None);
    }

    // The idle-expired one goes once its on-disk expiry is the grace period old.
    server
        .clock()
        .set_ms(idle.idle_expires_at_ms + SWEEP_GRACE_MS - 1);
    assert_eq!(server.store().maintain().await.unwrap(), 0);
    server.clock().advance_ms(1);
    assert_eq!(server.store().maintain().await.unwrap(), 1);
    assert_eq!(
        disk_ids(dir),
        [live.session_id.as_str(), bob.session_id.as_str()]
    );
    assert_eq!(server.store().maintain().await.unwrap(), 0);

    assert!(get(&mut c, &live_token).await.is_some());
    assert!(get(&mut c, &bob_token).await.is_some());
    assert_eq!(ids(&list(&mut c, USER).await), [live.session_id.as_str()]);
    assert!(!revoke_token(&mut c, &idle_token).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_spares_a_session_used_since_its_last_persisted_use() {
    let idle = 10 * MINUTE;
    let window = persist_window(idle);
    assert_eq!(window, MINUTE);
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, s) = create(&mut c, login(USER, idle, 0)).await;

    // Used just inside the first window: memory knows it, the disk does not.
    server.clock().advance_ms(window - 1);
    let used = get(&mut c, &token).await.expect("found");
    assert_eq!(used.idle_expires_at_ms, START_MS + window - 1 + idle);
    // The disk's idle expiry has passed, by less than the grace period.
    server.clock().set_ms(used.idle_expires_at_ms - 1);
    assert_eq!(server.store().maintain().await.unwrap(), 0);
    assert_eq!(disk_ids(server.data_dir()), [s.session_id.as_str()]);
    assert_eq!(ids(&list(&mut c, USER).await), [s.session_id.as_str()]);
    assert!(
        get(&mut c, &token).await.is_some(),
        "a live session is not swept"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn create_rejects_every_bad_field_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let before = state(&server, &mut c, USER).await;
    let with = |f: &dyn Fn(&mut pb::CreateSessionRequest)| {
        let mut req = login_default();
        f(&mut req);
        req
    };
    let long_key = "k".repeat(257);

    let cases: Vec<(pb::CreateSessionRequest, &str, Option<&str>)> = vec![
        (with(&|r| r.user_id = String::new()), "user_id", None),
        (with(&|r| r.user_id = "u".repeat(257)), "user_id", None),
        (
            with(&|r| r.device_info = "d".repeat(513)),
            "device_info",
            None,
        ),
        (with(&|r| r.ip = "1".repeat(65)), "ip", None),
        (with(&|r| r.data = data(&[("", "v")])), "data", Some("")),
        (
            with(&|r| r.data = HashMap::from([(long_key.clone(), "v".into())])),
            "data",
            Some(long_key.as_str()),
        ),
        (
            with(&|r| r.data = HashMap::from([("k".into(), "v".repeat(64 * KIB + 1))])),
            "data",
            Some("k"),
        ),
        (with(&|r| r.data = entries(129, 1)), "data", None),
        (with(&|r| r.data = entries(5, 60 * KIB)), "data", None),
    ];
    for (req, field, key) in cases {
        let what = format!("{field} {key:?}");
        let result = c.create_session(req).await;
        match key {
            Some(key) => assert_invalid_entry(result, field, key),
            None => assert_invalid(result, field),
        }
        assert_eq!(state(&server, &mut c, USER).await, before, "{what}");
    }

    // The largest of each is accepted.
    let (token, s) = create(
        &mut c,
        pb::CreateSessionRequest {
            user_id: "u".repeat(256),
            device_info: "d".repeat(512),
            ip: "1".repeat(64),
            data: HashMap::from([("k".repeat(256), "v".repeat(64 * KIB))]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(s.user_id.len(), 256);
    assert!(get(&mut c, &token).await.is_some());
    let (_, s) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: entries(128, 1),
            ..login_default()
        },
    )
    .await;
    assert_eq!(s.data.len(), 128);
    // 4 × (2-byte key + 65,534-byte value) = exactly 256 KiB.
    let (_, s) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: entries(4, 64 * KIB - 2),
            ..login_default()
        },
    )
    .await;
    assert_eq!(s.data.len(), 4);
    assert_eq!(list(&mut c, USER).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_rejects_every_bad_field_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, _) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: data(&[("a", "1"), ("b", "2")]),
            ..login_default()
        },
    )
    .await;
    // Any use by a rejected request would now show as a new last-seen time.
    server.clock().advance_ms(SECOND);
    let before = state(&server, &mut c, USER).await;
    let long_key = "k".repeat(257);

    let entry_cases: Vec<(HashMap<String, String>, &str)> = vec![
        (data(&[("", "v")]), ""),
        (
            HashMap::from([(long_key.clone(), "v".into())]),
            long_key.as_str(),
        ),
        (HashMap::from([("k".into(), "v".repeat(64 * KIB + 1))]), "k"),
    ];
    for (set, key) in entry_cases {
        assert_invalid_entry(try_update(&mut c, &token, set, &[]).await, "set", key);
        assert_eq!(state(&server, &mut c, USER).await, before, "set[{key:?}]");
    }
    let too_many_removes: Vec<String> = (0..129).map(|i| format!("r{i}")).collect();
    let too_many_removes: Vec<&str> = too_many_removes.iter().map(String::as_str).collect();
    let cases: Vec<(HashMap<String, String>, Vec<&str>, &str)> = vec![
        (entries(129, 1), vec![], "set"),
        (HashMap::new(), vec![""], "remove[0]"),
        (HashMap::new(), vec!["a", long_key.as_str()], "remove[1]"),
        (HashMap::new(), too_many_removes, "remove"),
        (data(&[("a", "x")]), vec!["a"], "remove[0]"),
        // Over the whole-map limits once merged (checked by the writer).
        (entries(127, 1), vec![], "set"),
        (entries(5, 60 * KIB), vec![], "set"),
    ];
    for (set, remove, field) in cases {
        assert_invalid(try_update(&mut c, &token, set, &remove).await, field);
        assert_eq!(state(&server, &mut c, USER).await, before, "{field}");
    }
    assert_eq!(
        get(&mut c, &token).await.expect("found").data,
        data(&[("a", "1"), ("b", "2")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_checks_the_merged_data_against_the_limits() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;

    // 128 entries: a new key is one too many, a replacement or a swap is not.
    let (full, _) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: entries(128, 1),
            ..login_default()
        },
    )
    .await;
    server.clock().advance_ms(SECOND);
    let before = state(&server, &mut c, USER).await;
    assert_invalid(
        try_update(&mut c, &full, data(&[("new", "v")]), &[]).await,
        "set",
    );
    assert_eq!(state(&server, &mut c, USER).await, before);
    let s = update(&mut c, &full, data(&[("k0", "changed")]), &[])
        .await
        .expect("found");
    assert_eq!((s.data.len(), s.data["k0"].as_str()), (128, "changed"));
    let s = update(&mut c, &full, data(&[("new", "v")]), &["k1"])
        .await
        .expect("removes apply before the limit is checked");
    assert_eq!(s.data.len(), 128);
    assert!(s.data.contains_key("new") && !s.data.contains_key("k1"));

    // Exactly 256 KiB: one more byte is too many.
    let (big, _) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: entries(4, 64 * KIB - 2),
            ..login_default()
        },
    )
    .await;
    server.clock().advance_ms(SECOND);
    let before = state(&server, &mut c, USER).await;
    let one_more = HashMap::from([("k0".to_string(), "v".repeat(64 * KIB - 1))]);
    assert_invalid(try_update(&mut c, &big, one_more, &[]).await, "set");
    assert_eq!(state(&server, &mut c, USER).await, before);
    let one_less = HashMap::from([("k0".to_string(), "v".repeat(64 * KIB - 3))]);
    assert!(update(&mut c, &big, one_less, &[]).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_and_list_reject_bad_fields() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, s) = create(&mut c, login_default()).await;
    create(&mut c, login_default()).await;
    let before = state(&server, &mut c, USER).await;
    let id = s.session_id.clone();
    let malformed_ids = [
        String::new(),
        "ses_".into(),
        "ses_short".into(),
        format!("sex_{}", &id[4..]),
        format!("{id}A"),
        id[..id.len() - 1].to_owned(),
        format!("ses_{}", "+".repeat(22)),
        format!("ses_{}/", &id[4..25]),
        id[4..].to_owned(),
        token.clone(),
    ];

    assert_invalid(try_revoke(&mut c, None).await, "target");
    assert_eq!(state(&server, &mut c, USER).await, before);
    for bad in &malformed_ids {
        assert_invalid(
            try_revoke(&mut c, Some(Target::SessionId(bad.clone()))).await,
            "session_id",
        );
        assert_eq!(state(&server, &mut c, USER).await, before, "{bad:?}");
        if bad.is_empty() {
            continue; // Empty means "no exception".
        }
        assert_invalid(
            try_revoke_user(&mut c, USER, bad).await,
            "except_session_id",
        );
        assert_eq!(state(&server, &mut c, USER).await, before, "{bad:?}");
    }

    let long_user = "u".repeat(257);
    for user in ["", long_user.as_str()] {
        assert_invalid(try_list(&mut c, user).await, "user_id");
        assert_invalid(try_revoke_user(&mut c, user, "").await, "user_id");
        assert_invalid(try_revoke_user(&mut c, user, &id).await, "user_id");
        assert_eq!(state(&server, &mut c, USER).await, before);
    }
    assert!(list(&mut c, &"u".repeat(256)).await.is_empty());
    assert_eq!(revoke_user(&mut c, &"u".repeat(256), "").await, 0);
    assert_eq!(state(&server, &mut c, USER).await, before);
}

/// Strings that cannot be tokens Larder made, derived from a real one.
fn malformed_tokens(real: &str) -> Vec<String> {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let body = &real["lds_".len()..];
    // The last character of 43 carries 2 unused bits; setting one is a non-canonical encoding.
    let last = ALPHABET.find(&body[42..]).expect("a base64 character");
    let non_canonical = ALPHABET.as_bytes()[last ^ 1] as char;
    vec![
        String::new(),
        "lds_".into(),
        "lds".into(),
        body.to_owned(),
        format!("ldx_{body}"),
        format!("LDS_{body}"),
        format!("lds-{body}"),
        real[..real.len() - 1].to_owned(),
        format!("{real}A"),
        format!("{real}="),
        format!(" {real}"),
        format!("{real}\n"),
        format!("lds_{}", "+".repeat(43)),
        format!("lds_{}", "/".repeat(43)),
        format!("lds_{}+", &body[..42]),
        format!("lds_{}/", &body[..42]),
        format!("lds_{}x", "é".repeat(21)),
        format!("lds_{}{non_canonical}", &body[..42]),
        real.to_uppercase(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_tokens_are_not_found_and_never_an_error() {
    let server = TestServer::start().await;
    let mut c = server.session_client().await;
    let (token, s) = create(
        &mut c,
        pb::CreateSessionRequest {
            data: data(&[("k", "v")]),
            ..login_default()
        },
    )
    .await;
    server.clock().advance_ms(SECOND);
    let before = state(&server, &mut c, USER).await;

    for bad in malformed_tokens(&token) {
        if bad == token {
            continue;
        }
        assert_eq!(get(&mut c, &bad).await, None, "GetSession {bad:?}");
        assert_eq!(
            update(&mut c, &bad, data(&[("k", "changed")]), &["k2"]).await,
            None,
            "UpdateSession {bad:?}"
        );
        assert_eq!(rotate(&mut c, &bad).await, None, "RotateSession {bad:?}");
        assert!(!revoke_token(&mut c, &bad).await, "RevokeSession {bad:?}");
        assert_eq!(state(&server, &mut c, USER).await, before, "{bad:?}");
    }
    // The session's id is not its token either.
    assert_eq!(get(&mut c, &s.session_id).await, None);
    assert!(!revoke_token(&mut c, &s.session_id).await);

    let got = get(&mut c, &token)
        .await
        .expect("the real token still works");
    assert_eq!(got.data, data(&[("k", "v")]));
}

/// One ListSessions page of `user` after `page_token`, at most `page_size` sessions.
async fn list_page(
    c: &mut Sessions,
    user: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListSessionsResponse, Status> {
    c.list_sessions(pb::ListSessionsRequest {
        user_id: user.into(),
        page_size,
        page_token: page_token.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Every page of `user`'s sessions, following `next_page_token` from the first page; each
/// page is checked against `page_size` and the message limit.
async fn all_pages(
    c: &mut Sessions,
    user: &str,
    page_size: u32,
    max_message: usize,
) -> Vec<Vec<pb::Session>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(c, user, page_size, &token)
            .await
            .unwrap_or_else(|s| panic!("page {}: {s:?}", pages.len()));
        assert!(page.encoded_len() <= max_message, "page {}", pages.len());
        assert!(!page.sessions.is_empty() || pages.is_empty(), "empty page");
        if page_size > 0 {
            assert!(page.sessions.len() <= page_size as usize);
        }
        assert_eq!(page.truncated, !page.next_page_token.is_empty(), "{page:?}");
        pages.push(page.sessions);
        if page.next_page_token.is_empty() {
            return pages;
        }
        token = page.next_page_token;
        assert!(pages.len() < 1000, "the pages never end");
    }
}

/// Session ids, in order.
fn id_list(sessions: &[pb::Session]) -> Vec<String> {
    sessions.iter().map(|s| s.session_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn many_sessions_are_listed_over_pages_that_fit_a_small_message_limit() {
    // cache.max_value lowered to 1 KiB: messages of at most about 76 KiB.
    let limits = larder::RequestLimits {
        max_value_bytes: KIB,
        max_batch: 10,
        ..Default::default()
    };
    let max_message = limits.max_message_bytes();
    let server = TestServer::with_limits(limits).await;
    let mut c = server.session_client().await;
    // 60 sessions of 16 KiB of data each (about 1 MiB, thirteen times the message limit),
    // some created in the same millisecond (their order is by session id).
    let mut created = Vec::new();
    for i in 0..60 {
        let req = pb::CreateSessionRequest {
            data: data(&[("blob", &"x".repeat(16 * KIB))]),
            ..login_default()
        };
        created.push(create(&mut c, req).await.1);
        if i % 3 == 2 {
            server.clock().advance_ms(1);
        }
    }
    created.sort_by(|a, b| (b.created_at_ms, &b.session_id).cmp(&(a.created_at_ms, &a.session_id)));
    let newest_first = id_list(&created);

    // As many as fit a message, page after page: all of them, once each, newest first.
    let pages = all_pages(&mut c, USER, 0, max_message).await;
    assert!(pages.len() > 10, "{} pages", pages.len());
    assert_eq!(id_list(&pages.concat()), newest_first);
    assert_eq!(pages.concat(), created, "listed as created, data included");

    // A page size.
    let pages = all_pages(&mut c, USER, 2, max_message).await;
    assert_eq!(pages.len(), 30);
    assert_eq!(id_list(&pages.concat()), newest_first);

    // Between pages, a session revoked before its page is read is not listed, and one created
    // after the first page is not either; every other one is listed once.
    let first = list_page(&mut c, USER, 2, "").await.unwrap();
    assert_eq!(id_list(&first.sessions), newest_first[..2]);
    assert!(revoke_id(&mut c, &newest_first[40]).await);
    server.clock().advance_ms(1);
    let (_, late) = create(&mut c, login_default()).await;
    let mut listed = id_list(&first.sessions);
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = list_page(&mut c, USER, 2, &token).await.unwrap();
        listed.extend(id_list(&page.sessions));
        token = page.next_page_token;
    }
    let mut expected = newest_first.clone();
    expected.remove(40);
    assert_eq!(listed, expected);
    assert!(!listed.contains(&late.session_id));

    // A token that ListSessions did not make is refused, naming the field.
    for bad in ["x", "!!", &URL_SAFE_NO_PAD.encode("12.ses_short")] {
        assert_invalid(list_page(&mut c, USER, 0, bad).await, "page_token");
    }
}
