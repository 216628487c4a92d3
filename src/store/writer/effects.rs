//! What a command changes besides the database, held back until its transaction committed,
//! and the one step that applies it: memory is never ahead of the disk, and a failed command
//! or a rolled-back batch leaves memory as it was.

use std::sync::Arc;

use crate::store::cache::{CachedEntry, EntryCache};
use crate::store::session::revoke::{Revocation, Revocations};
use crate::store::session::{CachedSession, SessionCache, TokenHash};
use crate::store::stats::{CounterValues, StatsRegistry};

/// A change to apply to memory once the transaction holding it has committed.
#[derive(Debug)]
pub(crate) enum MemEffect {
    /// A cache entry's committed value.
    Put(String, String, CachedEntry),
    /// A cache entry deleted, swept or evicted.
    Remove(String, String),
    /// A cache entry's new expiry.
    Expiry(String, String, u64),
    /// A session's committed record.
    PutSession(TokenHash, Arc<CachedSession>),
    /// A session ended or moved to another token hash.
    RemoveSession(TokenHash),
    /// A user's sessions are being revoked in chunks: readers see them gone from now on.
    MarkRevoked(Arc<Revocation>),
    /// The last chunk of that revocation is committed.
    UnmarkRevoked(Arc<Revocation>),
}

/// Everything a command changes besides the database, held back until commit.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) memory: Vec<MemEffect>,
    /// Change of the total `size` of cache rows.
    pub(crate) bytes_delta: i64,
    counts: Vec<(String, CounterValues)>,
    /// Queues that got ready jobs, and how many: their waiting Dequeues are woken after
    /// COMMIT.
    pub(crate) ready_jobs: Vec<(String, usize)>,
}

impl Effects {
    /// The counters of `namespace` that this command adds to.
    pub(crate) fn count(&mut self, namespace: &str) -> &mut CounterValues {
        if self.counts.last().is_none_or(|(ns, _)| ns != namespace) {
            self.counts
                .push((namespace.to_owned(), CounterValues::default()));
        }
        // Just pushed or matched above.
        &mut self.counts.last_mut().expect("a counts entry").1
    }

    /// Adds another command's effects after these.
    pub(crate) fn append(&mut self, other: Effects) {
        self.memory.extend(other.memory);
        self.bytes_delta += other.bytes_delta;
        self.counts.extend(other.counts);
        self.ready_jobs.extend(other.ready_jobs);
    }

    /// Applies a committed batch's effects to memory and the counters, then marks commit
    /// `commit_number` shown. Readers of several keys see all of the commit in memory or none
    /// of it (the publication count is odd meanwhile).
    pub(crate) fn publish(
        self,
        memory: &EntryCache,
        sessions: &SessionCache,
        revocations: &Revocations,
        stats: &StatsRegistry,
        commit_number: Option<u64>,
    ) {
        memory.begin_publish();
        for effect in self.memory {
            match effect {
                MemEffect::Put(ns, key, entry) => memory.put((ns, key), entry),
                MemEffect::Remove(ns, key) => memory.remove(&(ns, key)),
                MemEffect::Expiry(ns, key, at) => {
                    memory.update(&(ns, key), |e| e.expires_at_ms = at)
                }
                MemEffect::PutSession(hash, session) => sessions.put(hash, session),
                MemEffect::RemoveSession(hash) => sessions.remove(&hash),
                MemEffect::MarkRevoked(mark) => revocations.add(mark),
                // After the chunk's own removals, which come before it in the list.
                MemEffect::UnmarkRevoked(mark) => revocations.remove(&mark),
            }
        }
        memory.end_publish();
        if let Some(n) = commit_number {
            memory.commit_shown(n);
        }
        for (ns, counts) in self.counts {
            stats.counters(&ns).add(&counts);
        }
    }
}
