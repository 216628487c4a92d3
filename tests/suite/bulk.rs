//! Bulk deletes and rate-limit memory under hostile load, against the built daemon (its own
//! process, so that its memory is measured alone, and so that it can be killed mid-way).
//!
//! - A Clear of many keys deletes in bounded chunks: the daemon's peak memory (VmHWM) hardly
//!   moves during it, and writes sent meanwhile are answered before it ends.
//! - A daemon killed with SIGKILL during a large Clear restarts with the documented state: the
//!   keys deleted are the first ones in key order, the others are intact, and repeating the
//!   Clear finishes it.
//! - RevokeUserSessions of a user with more sessions than one chunk is atomic for readers.
//! - With writes failing (a full disk) and a flood of new rate-limit keys, memory stays under
//!   `ratelimit.max_keys` and new keys are denied, while a key already in memory is checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use larder::pb;
use larder::pb::rate_limit_service_client::RateLimitServiceClient;
use tempfile::TempDir;

use crate::common::{Client, TestServer, create_session, get_session};
use crate::suite::binary::{Daemon, read_log};

/// Keys the Clear tests write: as many as a debug build fills and clears in a few seconds.
const MANY: usize = 200_000;
/// Keys per SetMany (the default batch bound).
const BATCH: usize = 1000;
/// Rows one chunk of a Clear deletes (`DELETE_CHUNK` in the store).
const CHUNK: usize = 1000;

/// A daemon on a fresh directory, with its socket and log.
struct Running {
    daemon: Daemon,
    dir: TempDir,
    /// Its data directory (in `dir` unless placed elsewhere).
    data: PathBuf,
}

impl Running {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = data_dir(&dir);
        Self::start_in(dir, data, extra)
    }

    /// A daemon on `data`, with its socket and log in `dir`.
    fn start_in(dir: TempDir, data: PathBuf, extra: &[&str]) -> Self {
        let extra: Vec<&std::ffi::OsStr> = extra.iter().map(|a| a.as_ref()).collect();
        let daemon = Daemon::spawn_with(&data, &socket(&dir), log(&dir), &extra);
        Self { daemon, dir, data }
    }

    fn socket(&self) -> PathBuf {
        socket(&self.dir)
    }

    /// The daemon's pid, found by the data directory its command line names.
    fn pid(&self) -> u32 {
        let data = self.data.to_string_lossy();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"larder"))
                && args.iter().any(|a| *a == data.as_bytes())
            {
                return pid;
            }
        }
        panic!("no larder process serves {data}");
    }

    /// A field of `/proc/PID/status`, in bytes (the kernel writes kB).
    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

fn data_dir(dir: &TempDir) -> PathBuf {
    dir.path().join("data")
}

fn socket(dir: &TempDir) -> PathBuf {
    dir.path().join("larder.sock")
}

fn log(dir: &TempDir) -> PathBuf {
    dir.path().join("larder.log")
}

fn key(i: usize) -> String {
    format!("k{i:07}")
}

/// Writes keys `0..n` of `namespace`, `BATCH` per SetMany, value = key.
async fn fill(c: &mut Client, namespace: &str, n: usize) {
    for start in (0..n).step_by(BATCH) {
        let entries = (start..(start + BATCH).min(n))
            .map(|i| pb::SetEntry {
                key: key(i),
                value: key(i).into_bytes().into(),
                ttl_ms: 0,
            })
            .collect();
        c.set_many(pb::SetManyRequest {
            namespace: namespace.into(),
            entries,
        })
        .await
        .expect("SetMany");
    }
}

async fn entries(c: &mut Client, namespace: &str) -> u64 {
    c.stats(pb::StatsRequest {
        namespace: namespace.into(),
    })
    .await
    .expect("Stats")
    .into_inner()
    .entries
}

async fn clear(c: &mut Client, namespace: &str) -> u64 {
    c.clear(pb::ClearRequest {
        namespace: namespace.into(),
    })
    .await
    .expect("Clear")
    .into_inner()
    .deleted
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clear_of_many_keys_keeps_memory_bounded_while_other_writes_are_answered() {
    let mut d = Running::start(&[]);
    let socket = d.socket();
    let mut c = d.daemon.client(&socket).await;
    fill(&mut c, "big", MANY).await;
    assert_eq!(entries(&mut c, "big").await, MANY as u64);
    let peak_before = d.status_bytes("VmHWM:");
    let rss_before = d.status_bytes("VmRSS:");

    // Writes of another namespace, one after another, for as long as the Clear runs.
    let clearing = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicU64::new(0));
    let mut w = d.daemon.client(&socket).await;
    let writer = tokio::spawn({
        let clearing = clearing.clone();
        let answered = answered.clone();
        async move {
            let mut i = 0u64;
            while clearing.load(Ordering::SeqCst) {
                w.set(pb::SetRequest {
                    namespace: "other".into(),
                    key: format!("w{i}"),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                })
                .await
                .expect("a Set during the Clear");
                answered.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }
    });
    let deleted = clear(&mut c, "big").await;
    let during = answered.load(Ordering::SeqCst);
    clearing.store(false, Ordering::SeqCst);
    writer.await.unwrap();

    assert_eq!(deleted, MANY as u64);
    assert_eq!(entries(&mut c, "big").await, 0);
    assert!(
        during > 0,
        "no other write was answered while the Clear of {MANY} keys ran"
    );
    let peak_after = d.status_bytes("VmHWM:");
    let rss_after = d.status_bytes("VmRSS:");
    let grown = peak_after.saturating_sub(peak_before);
    eprintln!(
        "Clear of {MANY} keys: peak RSS {} -> {} MiB (+{} KiB), RSS {} -> {} MiB, {during} \
         other writes answered meanwhile",
        peak_before >> 20,
        peak_after >> 20,
        grown >> 10,
        rss_before >> 20,
        rss_after >> 20
    );
    // Collecting every deleted row in one transaction raised the peak by 61 MiB for these keys
    // (measured); one chunk at a time, by a quarter of a MiB. 8 MiB leaves room for noise.
    assert!(
        grown <= 8 << 20,
        "the peak RSS grew by {grown} bytes during the Clear of {MANY} keys"
    );
    d.daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_during_a_large_clear_restarts_with_a_prefix_of_the_keys_deleted() {
    let d = Running::start(&[]);
    let socket = d.socket();
    let Running {
        mut daemon,
        dir,
        data,
    } = d;
    let mut c = daemon.client(&socket).await;
    fill(&mut c, "big", MANY).await;
    fill(&mut c, "kept", 10).await;

    let mut clearer = daemon.client(&socket).await;
    let clearing = tokio::spawn(async move {
        let _ = clearer
            .clear(pb::ClearRequest {
                namespace: "big".into(),
            })
            .await;
    });
    // Kill once some chunks are committed and many remain.
    let mut left = MANY as u64;
    for _ in 0..2000 {
        left = entries(&mut c, "big").await;
        if left <= (MANY - 3 * CHUNK) as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = daemon.signal("-KILL").await;
    assert!(!status.success());
    let _ = clearing.await;
    assert!(left < MANY as u64, "no chunk was committed before the kill");

    let mut d = Running::start_in(dir, data, &[]);
    let socket = d.socket();
    let mut c = d.daemon.client(&socket).await;
    let remaining = entries(&mut c, "big").await;
    assert!(
        remaining > 0,
        "the Clear ended before the kill; nothing mid-way was tested"
    );
    // The keys deleted are the first ones in key order, whole chunks of them; the others
    // are all there with their values.
    let gone = MANY - remaining as usize;
    assert_eq!(gone % CHUNK, 0, "{gone} keys deleted: not whole chunks");
    for start in (0..MANY).step_by(BATCH) {
        let keys: Vec<String> = (start..start + BATCH).map(key).collect();
        let found = c
            .get_many(pb::GetManyRequest {
                namespace: "big".into(),
                keys: keys.clone(),
            })
            .await
            .expect("GetMany")
            .into_inner()
            .entries;
        for (i, e) in (start..).zip(found) {
            assert_eq!(e.found, i >= gone, "key {i} of {MANY}, {gone} deleted");
            if e.found {
                assert_eq!(e.value, key(i).as_bytes());
            }
        }
    }
    assert_eq!(entries(&mut c, "kept").await, 10);
    // Repeating the call finishes the delete.
    assert_eq!(clear(&mut c, "big").await, remaining);
    assert_eq!(entries(&mut c, "big").await, 0);
    assert_eq!(entries(&mut c, "kept").await, 10);
    d.daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_prefix_across_chunks_deletes_its_keys_and_no_other() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let n = 3 * CHUNK + 10;
    let batch = |prefix: &str, range: std::ops::Range<usize>| pb::SetManyRequest {
        namespace: String::new(),
        entries: range
            .map(|i| pb::SetEntry {
                key: format!("{prefix}{i:05}"),
                value: b"v".to_vec().into(),
                ttl_ms: 0,
            })
            .collect(),
    };
    for start in (0..n).step_by(BATCH) {
        c.set_many(batch("user:1:", start..(start + BATCH).min(n)))
            .await
            .unwrap();
    }
    c.set_many(batch("user:10", 0..5)).await.unwrap();
    c.set_many(batch("user:2:", 0..5)).await.unwrap();
    let deleted = c
        .delete_prefix(pb::DeletePrefixRequest {
            namespace: String::new(),
            prefix: "user:1:".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, n as u64);
    assert_eq!(entries(&mut c, "").await, 10, "other prefixes are kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_more_sessions_than_a_chunk_is_atomic_for_readers() {
    // One user with more sessions than a chunk: above `session.max_per_user`'s default.
    let settings = larder::ServerSettings {
        sessions: larder::SessionSettings {
            max_per_user: 10_000,
            ..larder::SessionSettings::default()
        },
        ..larder::ServerSettings::default()
    };
    let server = TestServer::start_with(|_| {}, settings).await;
    let mut s = server.session_client().await;
    let n = 2 * CHUNK + 100;
    let mut tokens = Vec::with_capacity(n);
    let mut kept = None;
    for i in 0..n {
        let created = create_session(
            &mut s,
            pb::CreateSessionRequest {
                user_id: "many".into(),
                ..Default::default()
            },
        )
        .await;
        if i == n / 2 {
            kept = Some(created);
        } else {
            tokens.push(created.token);
        }
    }
    let kept = kept.unwrap();
    let other = create_session(
        &mut s,
        pb::CreateSessionRequest {
            user_id: "other".into(),
            ..Default::default()
        },
    )
    .await;

    // A reader going round the user's tokens while the revocation runs: once one is gone,
    // none may be found again.
    let revoking = Arc::new(AtomicBool::new(true));
    let mut r = server.session_client().await;
    let reader = tokio::spawn({
        let revoking = revoking.clone();
        let tokens = tokens.clone();
        async move {
            let mut first_gone = None;
            let mut reads = 0usize;
            for token in tokens.iter().cycle() {
                if !revoking.load(Ordering::SeqCst) {
                    break;
                }
                let found = get_session(&mut r, token).await.found;
                reads += 1;
                match (found, first_gone) {
                    (false, None) => first_gone = Some(reads),
                    (true, Some(at)) => {
                        panic!("a session was found at read {reads}, after one was gone at {at}")
                    }
                    _ => {}
                }
            }
            reads
        }
    });
    let revoked = s
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: "many".into(),
            except_session_id: kept.session.as_ref().unwrap().session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .revoked;
    revoking.store(false, Ordering::SeqCst);
    let reads = reader.await.unwrap();
    assert_eq!(revoked, (n - 1) as u64);
    eprintln!("{reads} reads while {revoked} sessions were revoked");
    for token in tokens.iter().step_by(97) {
        assert!(!get_session(&mut s, token).await.found);
    }
    assert!(get_session(&mut s, &kept.token).await.found);
    assert!(get_session(&mut s, &other.token).await.found);
    let listed = s
        .list_sessions(pb::ListSessionsRequest {
            user_id: "many".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1);
}

/// A tmpfs of `size` mounted on a new temporary directory, unmounted on drop; `None` (after
/// saying why) where this machine cannot mount.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "larder-test"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Self(dir)),
            Ok(out) => {
                crate::common::skipped(format!(
                    "cannot mount a tmpfs here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                crate::common::skipped(format!("cannot run mount: {e}"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills the file system holding `path` until it refuses a page.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [64 << 10, 4 << 10, 512] {
        let buf = vec![0u8; chunk];
        while file.write_all(&buf).is_ok() {}
    }
}

fn check_request(key: String) -> pb::CheckRequest {
    pb::CheckRequest {
        key,
        limit: 5,
        period_ms: 3_600_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_writes_failing_a_flood_of_new_rate_limit_keys_stays_under_the_key_cap() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    const CAP: usize = 2000;
    const FLOOD: usize = 12_000;
    let dir = tempfile::tempdir().unwrap();
    let cap = CAP.to_string();
    let d = Running::start_in(
        dir,
        fs.0.path().join("data"),
        &[
            "--ratelimit-max-keys",
            &cap,
            "--ratelimit-write-behind",
            "100ms",
        ],
    );
    let socket = d.socket();
    let Running {
        mut daemon,
        dir,
        data,
    } = d;
    let channel = daemon.channel(&socket).await;
    let d = Running { daemon, dir, data };
    let mut rl = RateLimitServiceClient::new(channel.clone());
    let known = check_request("known".into());
    assert!(rl.check(known.clone()).await.unwrap().into_inner().allowed);
    fill_disk(&fs.0.path().join("filler"));
    let rss_before = d.status_bytes("VmRSS:");

    // Keys of 950 bytes: every one kept would cost the daemon well over a kilobyte.
    let long = "x".repeat(942);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut rl = RateLimitServiceClient::new(channel.clone());
        let long = long.clone();
        tasks.push(tokio::spawn(async move {
            let mut denied = HashMap::new();
            for i in (t..FLOOD).step_by(8) {
                let answer = rl
                    .check(check_request(format!("{long}{i:08}")))
                    .await
                    .expect("a Check with the disk full")
                    .into_inner();
                if !answer.allowed {
                    assert!(answer.retry_after_ms > 0, "{answer:?}");
                    *denied.entry(answer.retry_after_ms).or_insert(0usize) += 1;
                }
            }
            denied.values().sum::<usize>()
        }));
    }
    let mut denied = 0;
    for t in tasks {
        denied += t.await.unwrap();
    }
    // The key in memory before the flood is still counted.
    let again = rl.check(known).await.unwrap().into_inner();
    assert!(again.allowed);
    assert_eq!(again.remaining, 3, "{again:?}");

    let rss_after = d.status_bytes("VmRSS:");
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "{FLOOD} new keys with the disk full: {denied} denied, RSS {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        denied >= FLOOD - CAP - 64,
        "{denied} of {FLOOD} new keys denied past a cap of {CAP}"
    );
    // Kept, the flood would hold some 60 MiB (measured: the keys, and the rows each failing
    // write-behind copies); the cap holds about 2 MiB of keys, and the connection buffers and
    // the allocator slack (about 12 MiB measured) come on top.
    assert!(
        grown <= 16 << 20,
        "RSS grew by {grown} bytes under the flood:\n{}",
        read_log(&log(&d.dir))
    );
    let logged = read_log(&log(&d.dir));
    assert!(
        logged.contains("rate-limit memory is full"),
        "no warning logged:\n{logged}"
    );
    drop(d);
}
