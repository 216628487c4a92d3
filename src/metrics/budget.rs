//! The figures of the server's in-flight byte budget (`server.max_inflight_bytes`): bytes
//! held now, the budget itself, and calls refused for want of room.
//!
//! The budget lives in the server, above this module; it keeps its count in these handles so
//! that a scrape reads the very numbers the budget decides with, and nothing is counted
//! twice. When metrics are off the server keeps the same handles, unregistered.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Where a call was refused for want of room in the budget.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A new call, at admission.
    Call,
    /// A request body that arrived when its bytes did not fit.
    Request,
    /// A response that was ready but did not fit.
    Response,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    /// `call`, `request` or `response`.
    stage: &'static str,
}

/// The shared handles of the byte budget's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct BudgetMetrics {
    /// Bytes of requests and responses held now; the budget counts in this gauge itself.
    held: Gauge,
    /// The budget, in bytes.
    limit: Gauge,
    /// Calls refused, by stage.
    refused: Family<RefusalLabels, Counter>,
}

impl BudgetMetrics {
    /// The gauge of bytes held, which the budget charges and releases atomically.
    pub(crate) fn held(&self) -> &std::sync::atomic::AtomicI64 {
        self.held.inner()
    }

    /// Records the budget's size.
    pub(crate) fn set_limit(&self, bytes: u64) {
        self.limit.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts one refusal at `stage`.
    pub(crate) fn refused(&self, stage: Refusal) {
        let stage = match stage {
            Refusal::Call => "call",
            Refusal::Request => "request",
            Refusal::Response => "response",
        };
        self.refused.get_or_create(&RefusalLabels { stage }).inc();
    }

    /// Adds the figures to a scrape's registry.
    pub(crate) fn register(&self, reg: &mut Registry) {
        reg.register_with_unit(
            "larder_inflight",
            "Bytes of requests and responses held in memory and charged to \
             server.max_inflight_bytes (a response until it has been written to the socket)",
            Unit::Bytes,
            self.held.clone(),
        );
        reg.register_with_unit(
            "larder_inflight_limit",
            "The in-flight byte budget, server.max_inflight_bytes",
            Unit::Bytes,
            self.limit.clone(),
        );
        reg.register(
            "larder_inflight_refused",
            "Calls answered UNAVAILABLE because the in-flight byte budget had no room, by stage \
             (call: at admission, request: its body, response: its answer)",
            self.refused.clone(),
        );
    }
}
