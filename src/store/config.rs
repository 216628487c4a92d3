//! How a store is set up: [`StoreConfig`], and the only place the store's defaults are
//! written.

use std::path::PathBuf;
use std::time::Duration;

use super::queue::QueueSettings;
use super::ratelimit::WhenFull;
use super::schema::Synchronous;

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding the database, its WAL and the lock file.
    pub data_dir: PathBuf,
    /// Durability of each commit.
    pub synchronous: Synchronous,
    /// SQLite page cache of the writer connection, in bytes.
    pub writer_cache_bytes: u64,
    /// Byte budget of the memory LRU.
    pub max_memory_bytes: u64,
    /// Bound on keys + values stored in the cache table.
    pub max_disk_bytes: u64,
    /// Byte budget of the memory LRU of sessions (sessions themselves are never evicted from
    /// disk).
    pub session_memory_bytes: u64,
    /// Byte budget of rate-limit state in memory (idle keys past it are evicted; disk keeps
    /// them).
    pub limit_memory_bytes: u64,
    /// Hard cap on rate-limit keys in memory, dirty or clean: while write-behinds fail no key
    /// becomes evictable, and this is what bounds memory then.
    pub limit_max_keys: u64,
    /// What a new rate-limit key is answered past `limit_max_keys`.
    pub limit_when_full: WhenFull,
    /// Longest time a rate-limit change stays in memory only: what a crash can lose.
    pub write_behind: Duration,
    /// Reader threads, each with its own read-only connection, for reads that miss memory.
    pub reader_connections: u32,
    /// How often expired rows are swept and read times recorded.
    pub sweep_interval: Duration,
    /// Expired rows deleted per transaction by the sweeper.
    pub sweep_batch: usize,
    /// The job queues' defaults and bounds.
    pub queue: QueueSettings,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            synchronous: Synchronous::Normal,
            // SQLite's own default. It is full after a bulk load and stays in RSS: after 2M ×
            // 1 KiB through a 64 MiB LRU, RSS was 163 MiB with 32 MiB here, 132 with 8 and 125
            // with 2. The pages it would keep are in the OS page cache anyway: the writer's
            // preads per random-key Set on that store, and the fill's duration, showed no
            // consistent cost at 2 MiB (measured under shared load).
            writer_cache_bytes: 2 << 20,
            max_memory_bytes: 256 << 20,
            max_disk_bytes: 4 << 30,
            session_memory_bytes: 64 << 20,
            limit_memory_bytes: 32 << 20,
            // A quarter of a million keys: about 50 MiB charged at typical key lengths, and
            // about five times what the fastest Check rate can add in one write-behind
            // interval, so only failing write-behinds ever reach it.
            limit_max_keys: 1 << 18,
            limit_when_full: WhenFull::Deny,
            write_behind: Duration::from_secs(1),
            reader_connections: 4,
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 1000,
            queue: QueueSettings::default(),
        }
    }
}
