//! `larder.v1.CacheService`: validates each request against the limits, then turns it into one
//! store call. No SQL and no locks here.
//!
//! Scan answers a page at a time: at most `page_size` entries (and at most `max_batch`), keys
//! adding up to at most that many maximal keys and values to at most one maximal value, so
//! that a page always fits the message limit. The page token is the last key listed (base64, opaque to clients), and the next
//! page starts after it in key order.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::pb;
use crate::pb::cache_service_server::CacheService;
use crate::service::{KEY_BYTES_CEILING, RequestLimits, at_most, not_empty};
use crate::store::{Found, NewEntry, PageBounds, SetCondition, Store};

/// The namespace used when a request leaves it empty.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// Entries a Scan page holds at most when the request leaves `page_size` 0.
const DEFAULT_PAGE_SIZE: u32 = 100;

/// The largest `page_size` a Scan may ask for.
const MAX_PAGE_SIZE: u32 = 1000;

/// The CacheService implementation.
#[derive(Debug, Clone)]
pub(crate) struct CacheApi {
    store: Store,
    limits: RequestLimits,
}

impl CacheApi {
    /// A service over `store`, enforcing `limits`.
    pub(crate) fn new(store: Store, limits: RequestLimits) -> Self {
        Self { store, limits }
    }

    fn namespace<'a>(&self, ns: &'a str) -> Result<&'a str, Error> {
        if ns.is_empty() {
            return Ok(DEFAULT_NAMESPACE);
        }
        at_most(
            "namespace",
            ns.len(),
            self.limits.max_namespace_bytes,
            "bytes",
        )?;
        Ok(ns)
    }

    fn key(&self, field: &str, key: &str) -> Result<(), Error> {
        not_empty(field, key.len())?;
        at_most(field, key.len(), self.limits.max_key_bytes, "bytes")
    }

    fn value(&self, field: &str, len: usize) -> Result<(), Error> {
        at_most(field, len, self.limits.max_value_bytes, "bytes")
    }

    fn ttl(&self, field: &str, ttl_ms: u64) -> Result<(), Error> {
        at_most(field, ttl_ms, self.limits.max_ttl_ms, "ms")
    }

    fn batch(&self, field: &str, len: usize) -> Result<(), Error> {
        not_empty(field, len)?;
        at_most(field, len, self.limits.max_batch, "items")
    }

    /// The key a Scan page token stands for: URL-safe base64 (unpadded) of the last key the
    /// page before returned, so that the next page starts after it. Empty for the first page.
    /// Bounded by [`KEY_BYTES_CEILING`], not the current key limit: a key stored under a
    /// larger `cache.max_key` can end a page, and its token must still lead to the next.
    fn page_token(&self, token: &str) -> Result<String, Error> {
        let not_a_token = || {
            Error::invalid(
                "page_token",
                "is not a next_page_token of Scan (leave it empty for the first page)",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_a_token())?;
        if bytes.len() > KEY_BYTES_CEILING {
            return Err(not_a_token());
        }
        String::from_utf8(bytes).map_err(|_| not_a_token())
    }

    fn keys(&self, field: &str, keys: &[String]) -> Result<(), Error> {
        self.batch(field, keys.len())?;
        for (i, key) in keys.iter().enumerate() {
            self.key(&format!("{field}[{i}]"), key)?;
        }
        Ok(())
    }
}

fn condition(req: &pb::SetRequest) -> Result<SetCondition, Error> {
    let condition = pb::Condition::try_from(req.condition)
        .map_err(|_| Error::invalid("condition", format!("unknown value {}", req.condition)))?;
    Ok(match condition {
        pb::Condition::Unspecified | pb::Condition::Always => SetCondition::Always,
        pb::Condition::IfAbsent => SetCondition::IfAbsent,
        pb::Condition::IfPresent => SetCondition::IfPresent,
        pb::Condition::IfVersion => {
            if req.expected_version == 0 {
                return Err(Error::invalid(
                    "expected_version",
                    "is required with CONDITION_IF_VERSION (versions start at 1)",
                ));
            }
            SetCondition::IfVersion(req.expected_version)
        }
    })
}

fn get_response(found: Option<Found>) -> pb::GetResponse {
    match found {
        Some(f) => pb::GetResponse {
            found: true,
            value: f.value,
            version: f.version,
            ttl_ms: f.ttl_ms,
        },
        None => pb::GetResponse::default(),
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.key("key", &req.key)?;
        let found = self.store.get(ns, &req.key).await?;
        Ok(Response::new(get_response(found)))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.key("key", &req.key)?;
        self.value("value", req.value.len())?;
        self.ttl("ttl_ms", req.ttl_ms)?;
        let condition = condition(&req)?;
        let (stored, version) = self
            .store
            .set(ns, &req.key, req.value, req.ttl_ms, condition)
            .await?;
        Ok(Response::new(pb::SetResponse { stored, version }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.key("key", &req.key)?;
        let deleted = match req.expected_version {
            0 => self.store.delete(ns, vec![req.key]).await? > 0,
            version => self.store.delete_if_version(ns, &req.key, version).await?,
        };
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn get_many(
        &self,
        req: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.keys("keys", &req.keys)?;
        let found = self
            .store
            .get_many(ns, &req.keys, self.limits.max_response_value_bytes())
            .await?;
        let entries = req
            .keys
            .into_iter()
            .zip(found)
            .map(|(key, found)| {
                let r = get_response(found);
                pb::Entry {
                    key,
                    found: r.found,
                    value: r.value,
                    version: r.version,
                    ttl_ms: r.ttl_ms,
                }
            })
            .collect();
        Ok(Response::new(pb::GetManyResponse { entries }))
    }

    async fn set_many(
        &self,
        req: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.batch("entries", req.entries.len())?;
        for (i, e) in req.entries.iter().enumerate() {
            self.key(&format!("entries[{i}].key"), &e.key)?;
            self.value(&format!("entries[{i}].value"), e.value.len())?;
            self.ttl(&format!("entries[{i}].ttl_ms"), e.ttl_ms)?;
        }
        let entries = req
            .entries
            .into_iter()
            .map(|e| NewEntry {
                key: e.key,
                value: e.value,
                ttl_ms: e.ttl_ms,
            })
            .collect();
        let versions = self.store.set_many(ns, entries).await?;
        Ok(Response::new(pb::SetManyResponse { versions }))
    }

    async fn delete_many(
        &self,
        req: Request<pb::DeleteManyRequest>,
    ) -> Result<Response<pb::DeleteManyResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.keys("keys", &req.keys)?;
        let deleted = self.store.delete(ns, req.keys).await?;
        Ok(Response::new(pb::DeleteManyResponse { deleted }))
    }

    async fn delete_prefix(
        &self,
        req: Request<pb::DeletePrefixRequest>,
    ) -> Result<Response<pb::DeletePrefixResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.key("prefix", &req.prefix)?;
        let deleted = self.store.delete_prefix(ns, &req.prefix).await?;
        Ok(Response::new(pb::DeletePrefixResponse { deleted }))
    }

    async fn touch(
        &self,
        req: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.key("key", &req.key)?;
        self.ttl("ttl_ms", req.ttl_ms)?;
        let found = self.store.touch(ns, &req.key, req.ttl_ms).await?;
        Ok(Response::new(pb::TouchResponse { found }))
    }

    async fn increment(
        &self,
        req: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        self.key("key", &req.key)?;
        self.ttl("ttl_ms", req.ttl_ms)?;
        let counter = self
            .store
            .add_to_counter(ns, &req.key, req.delta, req.ttl_ms, req.if_present)
            .await?;
        Ok(Response::new(pb::IncrementResponse {
            value: counter.value,
            version: counter.version,
            found: counter.existed,
        }))
    }

    async fn clear(
        &self,
        req: Request<pb::ClearRequest>,
    ) -> Result<Response<pb::ClearResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        let deleted = self.store.clear(ns).await?;
        Ok(Response::new(pb::ClearResponse { deleted }))
    }

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        at_most(
            "prefix",
            req.prefix.len(),
            self.limits.max_key_bytes,
            "bytes",
        )?;
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => {
                at_most("page_size", n, MAX_PAGE_SIZE, "entries")?;
                n
            }
        };
        let after = self.page_token(&req.page_token)?;
        // A page fits the message bound as a GetMany's answer does: at most one batch of
        // keys of at most the key limit each (a smaller `max_batch` lowers the page size;
        // keys stored under a larger `cache.max_key` end a page early), and at most one
        // maximal value's worth of values.
        let rows = (page_size as usize).min(self.limits.max_batch.max(1));
        let bounds = PageBounds {
            rows,
            value_bytes: self.limits.max_response_value_bytes(),
            key_bytes: rows.saturating_mul(self.limits.max_key_bytes),
        };
        let page = self
            .store
            .scan_page(ns, &req.prefix, &after, bounds)
            .await?;
        let next_page_token = match page.entries.last() {
            Some((last, _)) if page.more => URL_SAFE_NO_PAD.encode(last),
            _ => String::new(),
        };
        let entries = page
            .entries
            .into_iter()
            .map(|(key, f)| pb::Entry {
                key,
                found: true,
                value: f.value,
                version: f.version,
                ttl_ms: f.ttl_ms,
            })
            .collect();
        Ok(Response::new(pb::ScanResponse {
            entries,
            next_page_token,
        }))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let req = req.into_inner();
        let ns = if req.namespace.is_empty() {
            None
        } else {
            Some(self.namespace(&req.namespace)?)
        };
        let s = self.store.stats(ns).await?;
        Ok(Response::new(pb::StatsResponse {
            entries: s.entries,
            bytes: s.bytes,
            hits: s.counters.hits,
            misses: s.counters.misses,
            memory_hits: s.counters.memory_hits,
            sets: s.counters.sets,
            deletes: s.counters.deletes,
            expirations: s.counters.expirations,
            evictions: s.counters.evictions,
        }))
    }
}
