//! The gRPC services: each turns protobuf requests into validated store calls.
//!
//! - [`cache`] serves `larder.v1.CacheService`.
//! - [`session`] serves `larder.v1.SessionService`; [`token`] makes and checks its tokens.
//! - [`ratelimit`] serves `larder.v1.RateLimitService`.
//! - [`queue`] serves `larder.v1.QueueService`.
//! - [`pipeline`] serves `larder.v1.PipelineService`: calls of the three above, multiplexed on
//!   one stream.
//! - [`scope`]: what one bearer token may call, and the cache namespace check.
//! - [`status`] turns an error into the gRPC status the client gets.

pub(crate) mod cache;
pub(crate) mod pipeline;
pub(crate) mod queue;
pub(crate) mod ratelimit;
pub(crate) mod scope;
pub(crate) mod session;
pub(crate) mod status;
pub(crate) mod token;

use crate::error::Error;

/// The longest key any configuration accepts: the top of `cache.max_key`'s range. Keys
/// written under a larger `cache.max_key` are still listed by Scan after it is lowered, so a
/// Scan page token is bounded by this rather than by the current key limit.
pub(crate) const KEY_BYTES_CEILING: usize = 64 << 10;

/// Bounds every request is checked against before anything is written.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Longest key (and DeletePrefix prefix), in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most items in one GetMany, SetMany or DeleteMany.
    pub max_batch: usize,
    /// Longest namespace, in bytes.
    pub max_namespace_bytes: usize,
    /// Longest TTL, in milliseconds.
    pub max_ttl_ms: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: 16 << 20,
            max_batch: 1000,
            max_namespace_bytes: 128,
            // 100 years: far beyond any cache use, far below where Unix-ms arithmetic overflows.
            max_ttl_ms: 100 * 365 * 24 * 3600 * 1000,
        }
    }
}

impl RequestLimits {
    /// The largest gRPC message the server accepts or sends: one maximal value, plus a full
    /// batch of maximal keys with their framing, plus 64 KiB. An oversized value therefore
    /// reaches validation (and is answered `INVALID_ARGUMENT: value …`) as long as it is less
    /// than about a megabyte too big; far bigger messages are refused by gRPC itself.
    pub fn max_message_bytes(&self) -> usize {
        self.max_value_bytes
            + self.max_batch * (self.max_key_bytes + 64)
            + self.max_namespace_bytes
            + 64 * 1024
    }

    /// The most value bytes one GetMany answers with: one maximal value, so that every
    /// response fits [`RequestLimits::max_message_bytes`] like requests do.
    pub fn max_response_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
}

/// Fails with `INVALID_ARGUMENT` on `field` when `len` is 0.
pub(crate) fn not_empty(field: &str, len: usize) -> Result<(), Error> {
    if len == 0 {
        return Err(Error::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// Fails with `INVALID_ARGUMENT` on `field` when `n` is over `limit` (counted in `unit`).
pub(crate) fn at_most<N: PartialOrd + std::fmt::Display>(
    field: &str,
    n: N,
    limit: N,
    unit: &str,
) -> Result<(), Error> {
    if n > limit {
        return Err(Error::invalid(
            field,
            format!("{n} {unit} is more than the limit of {limit} {unit}"),
        ));
    }
    Ok(())
}
