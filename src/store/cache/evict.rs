//! Keeping the cache table within its bounds: the sweep of expired rows, read times recorded
//! for eviction order, and eviction of the least recently used rows past the disk bound. All
//! of it runs on the writer, inside a batch's transaction; rows leave memory after COMMIT.

use rusqlite::params;

use super::sql;
use crate::error::{Error, Result};
use crate::store::writer::{Effects, MemEffect, Writer};

/// Eviction rounds per transaction; what is left is evicted by the next writes or upkeep
/// passes, so a large backlog (e.g. a lowered bound at restart) never stalls one commit.
const MAX_EVICT_ROUNDS: usize = 64;

/// Rows looked at per eviction round: [`EVICT_RUNS`] runs of consecutive rows, each from a
/// random rowid, of which the least recently used quarter is evicted (approximate LRU by
/// sampling, as Redis does; exact when all rowids fit one sample).
const EVICT_SAMPLE: usize = 64;

/// Random starting points per eviction sample, so one sample is not all rows written together.
const EVICT_RUNS: usize = 4;

/// Expired rows deleted per statement when making room for the disk bound.
const EXPIRED_CHUNK: usize = 256;

/// A row considered for eviction.
struct Candidate {
    id: i64,
    accessed_at: i64,
    namespace: String,
    key: String,
    size: i64,
}

impl Writer {
    /// Whether the cache table is past half its disk bound, where read times start to matter.
    pub(in crate::store) fn eviction_in_sight(&self) -> bool {
        self.cache_bytes.saturating_mul(2) >= self.settings.max_disk_bytes
    }

    /// Writes the read times collected by the memory LRU, so eviction sees them.
    pub(in crate::store) fn record_accesses(&mut self) -> Result<()> {
        let accessed = self.memory.take_accessed();
        if accessed.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached(sql::RECORD_ACCESS)
            .map_err(Error::storage("preparing access-time updates"))?;
        for ((ns, key), at) in accessed {
            stmt.execute(params![ns, key, at as i64])
                .map_err(Error::storage("recording access times"))?;
        }
        Ok(())
    }

    /// Deletes up to `limit` expired rows.
    pub(in crate::store) fn sweep_expired(
        &mut self,
        now: u64,
        limit: usize,
        fx: &mut Effects,
    ) -> Result<u64> {
        let rows = self
            .conn
            .prepare_cached(sql::SWEEP_EXPIRED)
            .and_then(|mut s| {
                s.query_map(params![now as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(Error::storage("sweeping expired keys"))?;
        let n = rows.len() as u64;
        for (ns, key, size) in rows {
            fx.bytes_delta -= size;
            fx.count(&ns).expirations += 1;
            fx.memory.push(MemEffect::Remove(ns, key));
        }
        Ok(n)
    }

    /// Evicts least recently used rows until the batch leaves the cache table under its bound.
    pub(in crate::store) fn enforce_disk_bound(&mut self, fx: &mut Effects) -> Result<()> {
        let bound = self.settings.max_disk_bytes as i64;
        if self.cache_bytes as i64 + fx.bytes_delta <= bound {
            return Ok(());
        }
        let now = self.clock.now_ms();
        self.in_savepoint(|w| {
            let mut evict = Effects::default();
            w.record_accesses()?;
            // Expired rows go first: they are garbage, not evictions.
            loop {
                if w.cache_bytes as i64 + fx.bytes_delta + evict.bytes_delta <= bound {
                    break;
                }
                if w.sweep_expired(now, EXPIRED_CHUNK, &mut evict)? == 0 {
                    break;
                }
            }
            for _ in 0..MAX_EVICT_ROUNDS {
                if w.cache_bytes as i64 + fx.bytes_delta + evict.bytes_delta <= bound {
                    break;
                }
                if w.evict_sample(&mut evict)? == 0 {
                    break;
                }
            }
            fx.append(evict);
            Ok(())
        })
    }

    /// One eviction round: reads a sample of rows starting at a random rowid (wrapping
    /// around), and deletes the least recently used quarter of it. Returns rows evicted.
    fn evict_sample(&mut self, fx: &mut Effects) -> Result<usize> {
        let bounds: (Option<i64>, Option<i64>) = self
            .conn
            .query_row(sql::ID_RANGE, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(Error::storage("sampling rows to evict"))?;
        let (Some(min), Some(max)) = bounds else {
            return Ok(0);
        };
        let mut sample = if max - min < EVICT_SAMPLE as i64 {
            // Every row fits one sample: exact LRU.
            self.sample_from(min, i64::MAX, EVICT_SAMPLE)?
        } else {
            let run = EVICT_SAMPLE / EVICT_RUNS;
            let mut sample = Vec::with_capacity(EVICT_SAMPLE);
            for _ in 0..EVICT_RUNS {
                let start = rand::random_range(min..=max);
                let mut rows = self.sample_from(start, i64::MAX, run)?;
                if rows.len() < run {
                    rows.extend(self.sample_from(min, start, run - rows.len())?);
                }
                sample.extend(rows);
            }
            sample
        };
        // Runs may overlap on a small table.
        sample.sort_by_key(|s| (s.accessed_at, s.id));
        sample.dedup_by_key(|s| s.id);
        let n = (sample.len() / 4).max(1).min(sample.len());
        for victim in sample.into_iter().take(n) {
            self.conn
                .prepare_cached(sql::EVICT)
                .and_then(|mut s| s.execute([victim.id]))
                .map_err(Error::storage("evicting for the disk bound"))?;
            fx.bytes_delta -= victim.size;
            fx.count(&victim.namespace).evictions += 1;
            fx.memory
                .push(MemEffect::Remove(victim.namespace, victim.key));
        }
        Ok(n)
    }

    /// Up to `limit` rows with `from <= id < until`, in rowid order.
    fn sample_from(&self, from: i64, until: i64, limit: usize) -> Result<Vec<Candidate>> {
        self.conn
            .prepare_cached(sql::SAMPLE)
            .and_then(|mut s| {
                s.query_map(params![from, until, limit as i64], |r| {
                    Ok(Candidate {
                        id: r.get(0)?,
                        accessed_at: r.get(1)?,
                        namespace: r.get(2)?,
                        key: r.get(3)?,
                        size: r.get(4)?,
                    })
                })?
                .collect()
            })
            .map_err(Error::storage("sampling rows to evict"))
    }
}
