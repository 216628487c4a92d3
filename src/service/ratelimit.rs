//! `larder.v1.RateLimitService`: resolves each request to a validated rule (a named policy
//! from the config, or the inline limit) and makes one store call.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::{Error, echo};
use crate::limiter::{Algorithm, Decision, Rule};
use crate::pb;
use crate::pb::rate_limit_service_server::RateLimitService;
use crate::service::{at_most, not_empty};
use crate::store::Store;

/// Rate-limit settings the service needs: the named policies.
#[derive(Debug, Clone, Default)]
pub struct RateLimitSettings {
    /// Policies by name, from the config file.
    pub policies: Arc<BTreeMap<String, Rule>>,
}

/// The RateLimitService implementation.
#[derive(Debug, Clone)]
pub(crate) struct RateLimitApi {
    store: Store,
    settings: RateLimitSettings,
    max_key_bytes: usize,
}

/// A Check or Peek request's fields.
struct Query<'a> {
    policy: &'a str,
    key: &'a str,
    cost: u32,
    limit: u32,
    period_ms: u64,
    burst: u32,
    algorithm: i32,
}

impl RateLimitApi {
    /// Serves `store` with these policies; keys are bounded by `max_key_bytes`.
    pub(crate) fn new(store: Store, settings: RateLimitSettings, max_key_bytes: usize) -> Self {
        Self {
            store,
            settings,
            max_key_bytes,
        }
    }

    fn check_key(&self, key: &str) -> Result<(), Error> {
        not_empty("key", key.len())?;
        at_most("key", key.len(), self.max_key_bytes, "bytes")
    }

    /// The rule and cost of a request, or `INVALID_ARGUMENT` naming the field at fault.
    fn resolve(&self, q: &Query<'_>) -> Result<(Rule, u32), Error> {
        self.check_key(q.key)?;
        let rule = if q.policy.is_empty() {
            let algorithm = match pb::Algorithm::try_from(q.algorithm) {
                Ok(pb::Algorithm::Unspecified | pb::Algorithm::Gcra) => Algorithm::Gcra,
                Ok(pb::Algorithm::SlidingWindow) => Algorithm::SlidingWindow,
                Ok(pb::Algorithm::FixedWindow) => Algorithm::FixedWindow,
                Err(_) => {
                    return Err(Error::invalid(
                        "algorithm",
                        format!("{} is not a known algorithm", q.algorithm),
                    ));
                }
            };
            Rule::new(
                algorithm,
                u64::from(q.limit),
                q.period_ms,
                u64::from(q.burst),
            )
            .map_err(|e| {
                let hint = if (e.field == "limit" && q.limit == 0)
                    || (e.field == "period_ms" && q.period_ms == 0)
                {
                    " (name a policy, or give limit and period_ms)"
                } else {
                    ""
                };
                Error::invalid(e.field, format!("{}{hint}", e.message))
            })?
        } else {
            let inline = [
                ("limit", q.limit != 0),
                ("period_ms", q.period_ms != 0),
                ("burst", q.burst != 0),
                ("algorithm", q.algorithm != 0),
            ];
            if let Some((field, _)) = inline.iter().find(|(_, set)| *set) {
                return Err(Error::invalid(
                    *field,
                    format!(
                        "policy {} sets its own limits; leave limit, period_ms, burst and \
                         algorithm unset",
                        echo(q.policy)
                    ),
                ));
            }
            *self.policy(q.policy)?
        };
        let cost = q.cost.max(1);
        if cost > rule.capacity() {
            return Err(Error::invalid(
                "cost",
                format!(
                    "{cost} is more than the {} units this limit can ever admit at once",
                    rule.capacity()
                ),
            ));
        }
        Ok((rule, cost))
    }

    fn policy(&self, name: &str) -> Result<&Rule, Error> {
        self.settings.policies.get(name).ok_or_else(|| {
            Error::invalid(
                "policy",
                format!("no policy named {} in the server's config", echo(name)),
            )
        })
    }

    async fn decide(&self, q: Query<'_>, consume: bool) -> Result<Decision, Status> {
        let (rule, cost) = self.resolve(&q)?;
        Ok(self
            .store
            .rate_limit(q.policy, q.key, &rule, cost, consume)
            .await?)
    }
}

/// The [`Query`] of a Check or Peek request (the two messages have the same fields).
macro_rules! query {
    ($r:expr) => {
        Query {
            policy: &$r.policy,
            key: &$r.key,
            cost: $r.cost,
            limit: $r.limit,
            period_ms: $r.period_ms,
            burst: $r.burst,
            algorithm: $r.algorithm,
        }
    };
}

/// A Check or Peek response (the two messages have the same fields) from a [`Decision`].
macro_rules! answer {
    ($response:ident, $d:expr) => {
        Response::new(pb::$response {
            allowed: $d.allowed,
            limit: $d.limit,
            remaining: $d.remaining,
            reset_after_ms: $d.reset_after_ms,
            retry_after_ms: $d.retry_after_ms,
        })
    };
}

#[tonic::async_trait]
impl RateLimitService for RateLimitApi {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let r = request.into_inner();
        let d = self.decide(query!(r), true).await?;
        Ok(answer!(CheckResponse, d))
    }

    async fn peek(
        &self,
        request: Request<pb::PeekRequest>,
    ) -> Result<Response<pb::PeekResponse>, Status> {
        let r = request.into_inner();
        let d = self.decide(query!(r), false).await?;
        Ok(answer!(PeekResponse, d))
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        let r = request.into_inner();
        self.check_key(&r.key)?;
        if !r.policy.is_empty() {
            self.policy(&r.policy)?;
        }
        let existed = self.store.reset_rate_limit(&r.policy, &r.key).await?;
        Ok(Response::new(pb::ResetResponse { existed }))
    }
}
