//! The window algorithms. Windows are aligned to the period since the Unix epoch (for a
//! period of one minute, each UTC minute is a window).
//!
//! **Fixed window**: one counter per window; a request of `n` units is admitted when
//! `count + n <= limit`. At most `limit` per window, but up to `2·limit` in a span of one
//! period that straddles a window boundary.
//!
//! **Sliding window** (the two-window weighted counter): with `e` the time elapsed in the
//! current window, the estimate is `previous·(period - e)/period + current`, which assumes the
//! previous window's requests were spread evenly over it; a request of `n` is admitted when
//! `estimate + n <= limit` (computed exactly, in integers). At most `limit` per window; in a
//! span of one period, fewer than `limit + previous·e/period`, hence fewer than `2·limit`,
//! which is approached only when the previous window's whole quota came at its very end.
//!
//! A denied request consumes nothing in either algorithm.

use super::{Decision, Rule, State, clamp_u32};

/// Start of the window holding `now_ms`.
fn window_of(now_ms: u64, period_ms: u64) -> u64 {
    now_ms - now_ms % period_ms
}

/// Decides `cost` units at `now_ms` under the sliding window; see [`super::decide`].
pub(super) fn decide_sliding(
    rule: &Rule,
    state: Option<&State>,
    now_ms: u64,
    cost: u32,
    consume: bool,
) -> (Decision, State) {
    let p = rule.period_ms();
    let here = window_of(now_ms, p);
    let (start, previous, current) = match state {
        Some(&State::Sliding {
            window_start_ms,
            previous,
            current,
            ..
        }) => {
            if window_start_ms >= here {
                // The same window, or one ahead of this clock (time went back): keep it.
                (window_start_ms, previous, current)
            } else if window_start_ms + p == here {
                (here, current, 0)
            } else {
                (here, 0, 0)
            }
        }
        _ => (here, 0, 0),
    };
    let elapsed = now_ms.saturating_sub(start).min(p - 1);
    let (p128, limit, n) = (u128::from(p), u128::from(rule.limit()), u128::from(cost));
    // The estimate, times the period.
    let weighted = |previous: u64, current: u64, elapsed: u64| {
        u128::from(previous) * u128::from(p - elapsed) + u128::from(current) * p128
    };
    let before = weighted(previous, current, elapsed);
    let allowed = before + n * p128 <= limit * p128;
    let current_after = if allowed && consume {
        current + u64::from(cost)
    } else {
        current
    };
    let after = weighted(previous, current_after, elapsed);
    let remaining = clamp_u32((limit * p128).saturating_sub(after) / p128);
    let next = State::Sliding {
        period_ms: p,
        window_start_ms: start,
        previous,
        current: current_after,
    };
    let reset_after_ms = next.expires_at_ms().saturating_sub(now_ms);
    let retry_after_ms = if allowed {
        0
    } else {
        sliding_admits_at(start, p, previous, current, rule.limit(), cost) - now_ms
    };
    let decision = Decision {
        allowed,
        limit: rule.limit(),
        remaining,
        reset_after_ms,
        retry_after_ms,
    };
    (decision, next)
}

/// The first moment (Unix ms) a request of `cost` is admitted, if nothing else is consumed,
/// for a key whose window starting at `start` holds `current` and whose previous one held
/// `previous`. Needs `cost <= limit`.
fn sliding_admits_at(
    start: u64,
    p: u64,
    previous: u64,
    current: u64,
    limit: u32,
    cost: u32,
) -> u64 {
    let (p128, limit, n) = (u128::from(p), u128::from(limit), u128::from(cost));
    // Within this window, at elapsed e: previous·(p - e) <= (limit - current - n)·p.
    if let Some(room) = limit.checked_sub(u128::from(current) + n) {
        let first = if previous == 0 {
            0
        } else {
            p128.saturating_sub(room * p128 / u128::from(previous))
        };
        if first < p128 {
            return start + first as u64;
        }
    }
    // In the next window, `current` becomes the previous count: current·(p - e) <= (limit - n)·p.
    let room = limit - n;
    let first = if current == 0 {
        0
    } else {
        p128.saturating_sub(room * p128 / u128::from(current))
    };
    start + p + first as u64
}

/// Decides `cost` units at `now_ms` under the fixed window; see [`super::decide`].
pub(super) fn decide_fixed(
    rule: &Rule,
    state: Option<&State>,
    now_ms: u64,
    cost: u32,
    consume: bool,
) -> (Decision, State) {
    let p = rule.period_ms();
    let here = window_of(now_ms, p);
    let (start, count) = match state {
        Some(&State::Fixed {
            window_start_ms,
            count,
            ..
        }) if window_start_ms >= here => (window_start_ms, count),
        _ => (here, 0),
    };
    let limit = u64::from(rule.limit());
    let allowed = count + u64::from(cost) <= limit;
    let count_after = if allowed && consume {
        count + u64::from(cost)
    } else {
        count
    };
    let next = State::Fixed {
        period_ms: p,
        window_start_ms: start,
        count: count_after,
    };
    let decision = Decision {
        allowed,
        limit: rule.limit(),
        remaining: clamp_u32(u128::from(limit.saturating_sub(count_after))),
        reset_after_ms: next.expires_at_ms().saturating_sub(now_ms),
        retry_after_ms: if allowed {
            0
        } else {
            (start + p).saturating_sub(now_ms)
        },
    };
    (decision, next)
}
