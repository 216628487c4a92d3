//! GCRA, the generic cell rate algorithm: a token bucket of `burst` units refilled smoothly
//! at `limit` units per `period`, kept as one timestamp per key.
//!
//! Each unit costs an emission interval `T = ceil(period / limit)` (in nanoseconds, rounded up
//! so that the rate is never above the limit). The state is the theoretical arrival time
//! `TAT`: the moment the bucket would be full again. At `now` the bucket owes
//! `debt = max(TAT, now) - now`; a request of `n` units is admitted when
//! `debt + n·T <= burst·T`, and then moves `TAT` to `max(TAT, now) + n·T`.
//!
//! Guarantees: `burst` units are admitted at once from a full bucket; in any span of time
//! `W`, fewer than `burst + W/T` units are admitted, so fewer than `burst + limit` in any
//! span of one period (at most `burst + limit - 1`).

use super::{Decision, NS_PER_MS, Rule, State, clamp_u32};

/// Nanoseconds one unit costs: the period divided by the limit, rounded up.
pub fn interval_ns(rule: &Rule) -> u128 {
    (u128::from(rule.period_ms()) * u128::from(NS_PER_MS)).div_ceil(u128::from(rule.limit()))
}

/// Decides `cost` units at `now_ms`; see [`super::decide`]. Returns the state the key has if
/// the request is consumed.
pub(super) fn decide(
    rule: &Rule,
    state: Option<&State>,
    now_ms: u64,
    cost: u32,
    consume: bool,
) -> (Decision, State) {
    let now = u128::from(now_ms) * u128::from(NS_PER_MS);
    let t = interval_ns(rule);
    let capacity = t * u128::from(rule.burst());
    let tat = match state {
        Some(State::Gcra { tat_ns }) => u128::from(*tat_ns),
        _ => now,
    };
    let base = tat.max(now);
    let debt = base - now;
    let needed = t * u128::from(cost);
    let allowed = debt + needed <= capacity;
    let debt_after = if allowed && consume {
        debt + needed
    } else {
        debt
    };
    let decision = Decision {
        allowed,
        limit: rule.limit(),
        remaining: clamp_u32(capacity.saturating_sub(debt_after) / t),
        reset_after_ms: ms_ceil(debt_after),
        retry_after_ms: if allowed {
            0
        } else {
            ms_ceil(debt + needed - capacity)
        },
    };
    // The rule bounds the bucket to 365 days, so this stays far below u64::MAX until 2500.
    let tat_ns = u64::try_from(base + needed).unwrap_or(u64::MAX);
    (decision, State::Gcra { tat_ns })
}

/// Nanoseconds to milliseconds, rounded up.
fn ms_ceil(ns: u128) -> u64 {
    u64::try_from(ns.div_ceil(u128::from(NS_PER_MS))).unwrap_or(u64::MAX)
}
