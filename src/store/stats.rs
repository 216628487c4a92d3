//! Per-namespace cache counters (hits, misses, writes, expirations, evictions) since the daemon
//! started. Counters are atomics behind a read-mostly map, so the read path only takes a shared
//! lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Namespaces tracked one by one; counters of namespaces beyond this share one bucket, so a
/// client inventing namespaces cannot grow memory without bound.
const MAX_TRACKED_NAMESPACES: usize = 10_000;

/// The counters of one namespace.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Reads that found a live entry.
    pub(crate) hits: AtomicU64,
    /// Reads that found nothing.
    pub(crate) misses: AtomicU64,
    /// Hits answered from memory.
    pub(crate) memory_hits: AtomicU64,
    /// Entries written.
    pub(crate) sets: AtomicU64,
    /// Entries removed by a client.
    pub(crate) deletes: AtomicU64,
    /// Expired entries removed by the sweeper.
    pub(crate) expirations: AtomicU64,
    /// Entries evicted by the disk bound.
    pub(crate) evictions: AtomicU64,
}

/// A plain copy of counters, for reporting and for batching updates in the writer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterValues {
    /// See `Counters::hits`.
    pub hits: u64,
    /// See `Counters::misses`.
    pub misses: u64,
    /// See `Counters::memory_hits`.
    pub memory_hits: u64,
    /// See `Counters::sets`.
    pub sets: u64,
    /// See `Counters::deletes`.
    pub deletes: u64,
    /// See `Counters::expirations`.
    pub expirations: u64,
    /// See `Counters::evictions`.
    pub evictions: u64,
}

impl Counters {
    /// Counts one read.
    pub(crate) fn read(&self, found: bool, from_memory: bool) {
        if found {
            self.hits.fetch_add(1, Ordering::Relaxed);
            if from_memory {
                self.memory_hits.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a batch of writer-side counts.
    pub(crate) fn add(&self, v: &CounterValues) {
        let pairs = [
            (&self.hits, v.hits),
            (&self.misses, v.misses),
            (&self.memory_hits, v.memory_hits),
            (&self.sets, v.sets),
            (&self.deletes, v.deletes),
            (&self.expirations, v.expirations),
            (&self.evictions, v.evictions),
        ];
        for (counter, n) in pairs {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn values(&self) -> CounterValues {
        CounterValues {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            sets: self.sets.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            expirations: self.expirations.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::AddAssign for CounterValues {
    fn add_assign(&mut self, o: Self) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.memory_hits += o.memory_hits;
        self.sets += o.sets;
        self.deletes += o.deletes;
        self.expirations += o.expirations;
        self.evictions += o.evictions;
    }
}

/// Counters for every namespace seen since start.
#[derive(Debug, Default)]
pub(crate) struct StatsRegistry {
    by_namespace: RwLock<HashMap<String, Arc<Counters>>>,
    /// Shared by namespaces past [`MAX_TRACKED_NAMESPACES`].
    overflow: Arc<Counters>,
}

impl StatsRegistry {
    /// The counters of `namespace`, created on first use.
    pub(crate) fn counters(&self, namespace: &str) -> Arc<Counters> {
        // Poisoning cannot leave the map half-updated (one insert), so keep using it.
        if let Some(c) = self
            .by_namespace
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace)
        {
            return c.clone();
        }
        let mut map = self.by_namespace.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED_NAMESPACES && !map.contains_key(namespace) {
            return self.overflow.clone();
        }
        map.entry(namespace.to_owned()).or_default().clone()
    }

    /// Counters of one namespace, or of all of them added together when `None`.
    pub(crate) fn snapshot(&self, namespace: Option<&str>) -> CounterValues {
        let map = self.by_namespace.read().unwrap_or_else(|p| p.into_inner());
        match namespace {
            Some(ns) => map.get(ns).map(|c| c.values()).unwrap_or_default(),
            None => {
                let mut total = self.overflow.values();
                for c in map.values() {
                    total += c.values();
                }
                total
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_count_separately_and_add_up() {
        let r = StatsRegistry::default();
        r.counters("a").read(true, true);
        r.counters("a").read(false, false);
        r.counters("b").read(true, false);
        r.counters("b").add(&CounterValues {
            sets: 3,
            ..Default::default()
        });
        let a = r.snapshot(Some("a"));
        assert_eq!((a.hits, a.misses, a.memory_hits), (1, 1, 1));
        let all = r.snapshot(None);
        assert_eq!((all.hits, all.misses, all.sets), (2, 1, 3));
        assert_eq!(r.snapshot(Some("c")), CounterValues::default());
    }
}
