//! RevokeUserSessions in bounded chunks, atomic as readers see it.
//!
//! A user may hold any number of sessions, and deleting them in one transaction would hold up
//! every other write (and collect every row in memory) for as long as that takes. So the writer
//! deletes them [`REVOKE_CHUNK`] at a time, one transaction each. When the first chunk does not
//! delete them all, it also marks the user revoked ([`Revocation`]): every session of the user
//! created up to that moment (bar the one excepted) counts as gone for every reader (GetSession,
//! ListSessions, and the writer's Update and Rotate) from the commit of that first chunk on,
//! while the later chunks delete the rows. The last chunk removes the mark in the same step
//! that shows its commit in memory, and the call answers after that. So a reader never sees
//! some of the user's sessions revoked and others not, and no revoked session is readable
//! once the call has answered.
//!
//! A session the user creates while the chunks run is not covered: its creation time is kept
//! after the mark's ([`Revocations::created_after`]). The mark lives in memory only: a crash
//! mid-way leaves the sessions not yet deleted live again after the restart (the call never
//! answered; repeating it finishes the revocation). A chunk that fails leaves the mark in
//! place, so the sessions stay revoked for readers until the daemon restarts.
//!
//! Readers check the mark after they found a session; one that found it before a mark was
//! removed (its rows read from an older snapshot, or from memory before the last chunk's
//! commit was shown) looks again: [`Revocations::generation`] tells it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::SessionRecord;

/// Sessions a RevokeUserSessions deletes per transaction.
pub(crate) const REVOKE_CHUNK: usize = 1000;

/// One user's sessions being revoked: those created at or before `created_by` (Unix ms),
/// except the session `except`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Revocation {
    /// The user whose sessions go.
    pub(crate) user_id: String,
    /// The session id that stays, if any.
    pub(crate) except: Option<String>,
    /// Sessions created after this time are not covered.
    pub(crate) created_by: u64,
}

impl Revocation {
    /// Whether `record` is one of the sessions this revocation ends.
    pub(crate) fn covers(&self, record: &SessionRecord) -> bool {
        record.user_id == self.user_id
            && record.created_at_ms <= self.created_by
            && self.except.as_deref() != Some(record.session_id.as_str())
    }
}

/// The revocations in progress, shared by the writer (which adds and removes them after
/// COMMIT) and the readers.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    /// Marks in progress; a handful at most, one per RevokeUserSessions running.
    active: Mutex<Vec<Arc<Revocation>>>,
    /// `active.len()`, read without the lock on every session read.
    count: AtomicUsize,
    /// Marks removed since start (see the module doc).
    removed: AtomicU64,
}

impl Revocations {
    /// Marks removed since start: a reader that sees it move while it reads looks again.
    pub(crate) fn generation(&self) -> u64 {
        self.removed.load(Ordering::SeqCst)
    }

    /// Whether a revocation in progress ends `record`.
    pub(crate) fn covers(&self, record: &SessionRecord) -> bool {
        if self.count.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.lock().iter().any(|r| r.covers(record))
    }

    /// The creation time for a session of `user_id` created at `now`: after every mark on the
    /// user, so that no revocation in progress covers it.
    pub(crate) fn created_after(&self, user_id: &str, now: u64) -> u64 {
        if self.count.load(Ordering::SeqCst) == 0 {
            return now;
        }
        self.lock()
            .iter()
            .filter(|r| r.user_id == user_id)
            .fold(now, |at, r| at.max(r.created_by.saturating_add(1)))
    }

    /// Writer only, after COMMIT: the revocation's first chunk is committed.
    pub(crate) fn add(&self, mark: Arc<Revocation>) {
        let mut active = self.lock();
        active.push(mark);
        self.count.store(active.len(), Ordering::SeqCst);
    }

    /// Writer only, after COMMIT: the revocation's last chunk is committed.
    pub(crate) fn remove(&self, mark: &Arc<Revocation>) {
        let mut active = self.lock();
        active.retain(|r| !Arc::ptr_eq(r, mark));
        self.count.store(active.len(), Ordering::SeqCst);
        self.removed.fetch_add(1, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Revocation>>> {
        // The list is whole between statements: a poisoned lock is used as it is.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, id: &str, created: u64) -> SessionRecord {
        SessionRecord {
            session_id: id.into(),
            user_id: user.into(),
            data: Arc::default(),
            device_info: String::new(),
            ip: String::new(),
            created_at_ms: created,
            last_seen_at_ms: created,
            idle_ttl_ms: 1000,
            absolute_expires_at_ms: created + 1000,
        }
    }

    #[test]
    fn a_mark_covers_the_users_older_sessions_but_the_excepted_one() {
        let marks = Revocations::default();
        let mark = Arc::new(Revocation {
            user_id: "u".into(),
            except: Some("keep".into()),
            created_by: 100,
        });
        assert!(!marks.covers(&session("u", "a", 50)));
        marks.add(mark.clone());
        assert!(marks.covers(&session("u", "a", 50)));
        assert!(marks.covers(&session("u", "b", 100)));
        assert!(!marks.covers(&session("u", "keep", 50)));
        assert!(!marks.covers(&session("v", "a", 50)));
        assert!(!marks.covers(&session("u", "c", 101)));
        assert_eq!(
            marks.created_after("u", 100),
            101,
            "a new session is not covered"
        );
        assert_eq!(marks.created_after("u", 200), 200);
        assert_eq!(marks.created_after("v", 100), 100);
        let before = marks.generation();
        marks.remove(&mark);
        assert_ne!(marks.generation(), before);
        assert!(!marks.covers(&session("u", "a", 50)));
    }
}
