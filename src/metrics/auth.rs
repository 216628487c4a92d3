//! [`AuthRefusals`]: the count of calls the auth layer refused, by reason, exported as
//! `larder_auth_refused_total{reason}`. The auth layer holds a handle and counts; a scrape
//! registers the same handle, so a count is never copied.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The label of one refusal count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// `missing`, `invalid`, `service`, `read_only` or `namespace`.
    reason: &'static str,
}

/// Refused calls by reason; a cheap `Clone` handle over one shared family of counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthRefusals {
    counts: Family<ReasonLabels, Counter>,
}

impl AuthRefusals {
    /// Counts one call refused for `reason`.
    pub(crate) fn count(&self, reason: &'static str) {
        self.counts.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How many calls were refused for `reason`.
    #[cfg(test)]
    pub(crate) fn get(&self, reason: &'static str) -> u64 {
        self.counts.get_or_create(&ReasonLabels { reason }).get()
    }

    /// Adds the counts to a scrape's registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "larder_auth_refused",
            "Calls refused by bearer-token auth, by reason: missing or invalid token \
             (UNAUTHENTICATED), or outside the token's scope (PERMISSION_DENIED: service, \
             read_only, namespace)",
            self.counts.clone(),
        );
    }
}
