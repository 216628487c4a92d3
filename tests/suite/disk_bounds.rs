//! What the disk bounds hold on disk: the database file stays within a stated factor of
//! `cache.max_disk` under the key shape that costs the most per charged byte (1-byte keys and
//! values under 128-byte namespaces), and the sessions table keeps to `session.max_per_user`
//! (the oldest session revoked, across a restart) and to `session.max_disk`
//! (`RESOURCE_EXHAUSTED`, nothing half done).

use std::collections::HashMap;
use std::path::Path;

use larder::pb;
use larder::store::DB_FILE;
use larder::{ServerSettings, SessionSettings};
use rusqlite::{Connection, OpenFlags};
use tonic::Code;

use crate::common::{TestServer, assert_code, create_session, get_session, stats};

/// The cache bound of the fill test: small, so that filling it ten times over takes seconds.
const MAX_DISK: u64 = 1 << 20;

/// How far over the bound the fill test writes, in bytes of the new charge: enough rows to
/// fill the bound ten times over.
const FILL_FACTOR: u64 = 10;

/// The stated bound: the whole file (database plus WAL, after the checkpoint a clean stop
/// makes) stays within this many times `cache.max_disk`. The charge covers what a row of
/// this shape costs in a full page; the rest is room for pages left part full by eviction,
/// which deletes sampled rows from all over the table (SQLite merges a page only once it is
/// mostly empty), and the schema's own pages.
const FILE_FACTOR: u64 = 2;

/// The most expensive key shape per charged byte: the longest namespace a request may name.
fn namespace(i: usize) -> String {
    format!("{i:0128}")
}

/// Bytes of the database's pages (the file's size once the WAL is checkpointed), read on a
/// connection of its own; and how many of them are free.
fn database_bytes(data_dir: &Path) -> (u64, u64) {
    let conn =
        Connection::open_with_flags(data_dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the database read-only");
    let pragma = |name: &str| -> u64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
            .unwrap_or_else(|e| panic!("PRAGMA {name}: {e}")) as u64
    };
    let page = pragma("page_size");
    (pragma("page_count") * page, pragma("freelist_count") * page)
}

/// Bytes of `larder.db` and its `-wal` as files.
fn file_bytes(data_dir: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|suffix| {
            std::fs::metadata(data_dir.join(format!("{DB_FILE}{suffix}"))).map_or(0, |m| m.len())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_file_stays_within_twice_max_disk_under_long_namespaces_and_tiny_entries() {
    let mut server =
        TestServer::start_with(|c| c.max_disk_bytes = MAX_DISK, Default::default()).await;
    let mut c = server.client().await;
    // Every 1-byte key of printable ASCII, under namespaces of 128 bytes.
    let keys: Vec<String> = (b'!'..=b'~').map(|b| char::from(b).to_string()).collect();
    // 2 × (128 + 1) + 1 + 64 bytes: what one row is charged.
    let charge = 2 * (128 + 1) + 1 + 64;
    let rows = (FILL_FACTOR * MAX_DISK / charge) as usize;
    let mut written = 0;
    for i in 0.. {
        if written >= rows {
            break;
        }
        let entries = keys
            .iter()
            .map(|k| pb::SetEntry {
                key: k.clone(),
                value: b"v".to_vec().into(),
                ttl_ms: 0,
            })
            .collect();
        c.set_many(pb::SetManyRequest {
            namespace: namespace(i),
            entries,
        })
        .await
        .expect("SetMany");
        written += keys.len();
    }

    let s = stats(&mut c, "").await;
    assert!(
        s.evictions as usize >= written / 2,
        "the bound evicted: {written} rows written, {s:?}"
    );
    assert_eq!(
        s.bytes,
        s.entries * 2,
        "Stats.bytes counts keys and values: {s:?}"
    );
    assert!(
        s.entries * charge <= MAX_DISK && s.entries * charge * 2 >= MAX_DISK,
        "the store holds what the bound allows, at least half of it: {s:?}"
    );
    let (pages, free) = database_bytes(server.data_dir());
    eprintln!(
        "{written} rows written, {} kept; database pages {pages} bytes ({free} free), \
         max_disk {MAX_DISK}",
        s.entries
    );
    assert!(
        pages <= FILE_FACTOR * MAX_DISK,
        "the database holds {pages} bytes of pages ({free} free) for a bound of {MAX_DISK}"
    );

    // A clean stop checkpoints the WAL into the file: what the disk really holds.
    server.stop().await;
    let on_disk = file_bytes(server.data_dir());
    eprintln!("larder.db + -wal after a clean stop: {on_disk} bytes");
    assert!(
        on_disk <= FILE_FACTOR * MAX_DISK,
        "larder.db and its WAL take {on_disk} bytes for a bound of {MAX_DISK}"
    );
}

/// Session settings with these bounds, the rest default.
fn session_bounds(max_per_user: usize, max_disk_bytes: u64) -> ServerSettings {
    ServerSettings {
        sessions: SessionSettings {
            max_per_user,
            max_disk_bytes,
            ..SessionSettings::default()
        },
        ..ServerSettings::default()
    }
}

fn login(user: &str, data: HashMap<String, String>) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        user_id: user.into(),
        data,
        device_info: "phone".into(),
        ..Default::default()
    }
}

async fn live_ids(c: &mut crate::common::Sessions, user: &str) -> Vec<String> {
    c.list_sessions(pb::ListSessionsRequest {
        user_id: user.into(),
        ..Default::default()
    })
    .await
    .expect("ListSessions")
    .into_inner()
    .sessions
    .into_iter()
    .map(|s| s.session_id)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_per_user_the_oldest_session_is_revoked_and_stays_revoked() {
    let mut server = TestServer::start_with(|_| {}, session_bounds(3, 1 << 30)).await;
    let mut c = server.session_client().await;
    let bob = create_session(&mut c, login("bob", HashMap::new())).await;
    let mut alice = Vec::new();
    for _ in 0..5 {
        alice.push(create_session(&mut c, login("alice", HashMap::new())).await);
        server.clock().advance_ms(1);
    }
    let check = |alice: &[pb::CreateSessionResponse]| {
        let expected: Vec<String> = alice[2..]
            .iter()
            .rev()
            .map(|s| s.session.as_ref().unwrap().session_id.clone())
            .collect();
        expected
    };
    for incarnation in ["before a restart", "after a restart"] {
        for (i, s) in alice.iter().enumerate() {
            assert_eq!(
                get_session(&mut c, &s.token).await.found,
                i >= 2,
                "alice's session {i} {incarnation}"
            );
        }
        assert_eq!(
            live_ids(&mut c, "alice").await,
            check(&alice),
            "alice keeps her three newest sessions {incarnation}"
        );
        assert!(
            get_session(&mut c, &bob.token).await.found,
            "another user's session is untouched {incarnation}"
        );
        if incarnation.starts_with("before") {
            server.restart().await;
            c = server.session_client().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_session_max_disk_creation_and_growth_are_refused() {
    // Sessions of about 2 KiB of charge each: 1 KiB of data, counted twice.
    let server = TestServer::start_with(|_| {}, session_bounds(1000, 64 << 10)).await;
    let mut c = server.session_client().await;
    let data = HashMap::from([("k".to_owned(), "x".repeat(1000))]);
    let created = fill_sessions(&mut c).await;
    let refused = c
        .create_session(login("someone", HashMap::new()))
        .await
        .expect_err("a full table refuses even a small session");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("session.max_disk"),
        "{refused:?}"
    );
    assert!(
        (20..=32).contains(&created.len()),
        "{} sessions of about 2 KiB each fit 64 KiB",
        created.len()
    );
    for s in &created {
        assert!(
            get_session(&mut c, &s.token).await.found,
            "existing sessions keep working"
        );
    }

    // Growing a session past the bound is refused too, and leaves its data as it was.
    let grown = c
        .update_session(pb::UpdateSessionRequest {
            token: created[0].token.clone(),
            set: HashMap::from([("more".to_owned(), "y".repeat(8000))]),
            remove: vec![],
        })
        .await;
    assert_code(grown, Code::ResourceExhausted);
    let s = get_session(&mut c, &created[0].token)
        .await
        .session
        .unwrap();
    assert_eq!(s.data, data, "a refused update changed nothing");
}

/// Fills the sessions table of `server` with one 1 KiB session per user (`u0`, `u1`, …) until
/// a creation is refused; returns the sessions created.
async fn fill_sessions(c: &mut crate::common::Sessions) -> Vec<pb::CreateSessionResponse> {
    let data = HashMap::from([("k".to_owned(), "x".repeat(1000))]);
    let mut created = Vec::new();
    loop {
        match c
            .create_session(login(&format!("u{}", created.len()), data.clone()))
            .await
        {
            Ok(r) => created.push(r.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                return created;
            }
        }
        assert!(created.len() < 1000, "the sessions table never filled up");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_creation_keeps_the_session_it_would_have_revoked() {
    let server = TestServer::start_with(|_| {}, session_bounds(1, 64 << 10)).await;
    let mut c = server.session_client().await;
    let created = fill_sessions(&mut c).await;
    let first = &created[0];

    // u0 is at its bound of one: a login revokes its session first, then the larger new
    // one does not fit the table, and the whole creation is undone.
    let larger = HashMap::from([("k".to_owned(), "x".repeat(8000))]);
    assert_code(
        c.create_session(login("u0", larger)).await,
        Code::ResourceExhausted,
    );
    assert!(
        get_session(&mut c, &first.token).await.found,
        "the refused login logged the user's other device out"
    );

    // One of the same size fits in the room the revocation makes.
    let same = HashMap::from([("k".to_owned(), "x".repeat(1000))]);
    let again = create_session(&mut c, login("u0", same)).await;
    assert!(get_session(&mut c, &again.token).await.found);
    assert!(
        !get_session(&mut c, &first.token).await.found,
        "the oldest was revoked"
    );
}
