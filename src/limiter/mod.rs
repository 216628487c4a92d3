//! Rate-limit algorithms as pure functions of (rule, state, now, cost): no clock, no locks,
//! no storage. The store keeps one [`State`] per (policy, key) and calls [`decide`] under the
//! key's lock; everything here is tested with made-up times.
//!
//! - [`Rule`]: a validated limit (algorithm, limit per period, GCRA burst).
//! - [`State`]: what is remembered per key, and its text form on disk.
//! - [`Decision`]: the answer, with everything the HTTP headers need.
//! - [`gcra`] and [`window`]: the algorithms.

pub mod gcra;
pub mod window;

use std::fmt;

/// Largest `limit`, `burst` and `cost`.
pub const MAX_LIMIT: u64 = 1_000_000_000;

/// Longest period: one year of 365 days.
pub const MAX_PERIOD_MS: u64 = 365 * 24 * 3600 * 1000;

/// How requests are counted against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic cell rate algorithm: a smoothly refilled token bucket.
    Gcra,
    /// Two-window weighted counter.
    SlidingWindow,
    /// One counter per period-aligned window.
    FixedWindow,
}

impl Algorithm {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }

    /// Parses a config-file name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Algorithm::Gcra,
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule that failed validation: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The field at fault (`limit`, `period_ms`, `burst`).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl RuleError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A validated limit: `limit` units per `period_ms`, counted by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    algorithm: Algorithm,
    limit: u32,
    period_ms: u64,
    /// GCRA's bucket size; equal to `limit` for the window algorithms.
    burst: u32,
}

impl Rule {
    /// Checks a limit. `burst` 0 means `limit`; only GCRA accepts another burst.
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        period_ms: u64,
        burst: u64,
    ) -> Result<Self, RuleError> {
        if limit == 0 {
            return Err(RuleError::new("limit", "must be at least 1"));
        }
        if limit > MAX_LIMIT {
            return Err(RuleError::new(
                "limit",
                format!("{limit} is more than the maximum of {MAX_LIMIT}"),
            ));
        }
        if period_ms == 0 {
            return Err(RuleError::new("period_ms", "must be at least 1 ms"));
        }
        if period_ms > MAX_PERIOD_MS {
            return Err(RuleError::new(
                "period_ms",
                format!("{period_ms} ms is longer than the maximum of 365 days"),
            ));
        }
        let burst = match (algorithm, burst) {
            (_, 0) => limit,
            (Algorithm::Gcra, b) if b > MAX_LIMIT => {
                return Err(RuleError::new(
                    "burst",
                    format!("{b} is more than the maximum of {MAX_LIMIT}"),
                ));
            }
            // A full bucket must drain within the longest period, so that every time stays
            // far inside u64 nanoseconds.
            (Algorithm::Gcra, b)
                if u128::from(b) * u128::from(period_ms)
                    > u128::from(limit) * u128::from(MAX_PERIOD_MS) =>
            {
                return Err(RuleError::new(
                    "burst",
                    format!(
                        "a bucket of {b} refilled at {limit} per {period_ms} ms takes more than \
                         365 days to refill; lower the burst"
                    ),
                ));
            }
            (Algorithm::Gcra, b) => b,
            (other, _) => {
                return Err(RuleError::new(
                    "burst",
                    format!("only GCRA takes a burst, not {other}; leave it 0"),
                ));
            }
        };
        // Both are at most MAX_LIMIT, which fits u32.
        Ok(Self {
            algorithm,
            limit: limit as u32,
            period_ms,
            burst: burst as u32,
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Units admitted per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period in milliseconds.
    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// GCRA's bucket size (the limit for the window algorithms).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The most units one request can ever be admitted with: the bucket for GCRA, the limit
    /// for the windows. A costlier request could never pass.
    pub fn capacity(&self) -> u32 {
        match self.algorithm {
            Algorithm::Gcra => self.burst,
            Algorithm::SlidingWindow | Algorithm::FixedWindow => self.limit,
        }
    }

    /// Whether `state` was written under this rule's algorithm and (for the windows) period,
    /// so that it can be read with this rule's numbers.
    fn reads(&self, state: &State) -> bool {
        match (self.algorithm, state) {
            (Algorithm::Gcra, State::Gcra { .. }) => true,
            (Algorithm::SlidingWindow, State::Sliding { period_ms, .. })
            | (Algorithm::FixedWindow, State::Fixed { period_ms, .. }) => {
                *period_ms == self.period_ms
            }
            _ => false,
        }
    }
}

/// What is remembered about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// GCRA: the theoretical arrival time, in Unix nanoseconds: when the bucket is full again.
    Gcra {
        /// Theoretical arrival time (ns).
        tat_ns: u64,
    },
    /// Sliding window: the counts of the current and previous aligned windows.
    Sliding {
        /// The period the windows were cut with.
        period_ms: u64,
        /// Start of the current window (Unix ms, a multiple of the period).
        window_start_ms: u64,
        /// Units admitted in the window before it.
        previous: u64,
        /// Units admitted in the current window.
        current: u64,
    },
    /// Fixed window: the count of the current aligned window.
    Fixed {
        /// The period the windows were cut with.
        period_ms: u64,
        /// Start of the window (Unix ms, a multiple of the period).
        window_start_ms: u64,
        /// Units admitted in it.
        count: u64,
    },
}

/// Nanoseconds per millisecond.
pub(crate) const NS_PER_MS: u64 = 1_000_000;

impl State {
    /// From when on this state counts for nothing (it is then the same as no state), in Unix
    /// ms: the sweeper deletes it after that.
    pub fn expires_at_ms(&self) -> u64 {
        match *self {
            State::Gcra { tat_ns } => tat_ns.div_ceil(NS_PER_MS),
            State::Sliding {
                period_ms,
                window_start_ms,
                previous,
                current,
            } => {
                if current > 0 {
                    window_start_ms.saturating_add(2 * period_ms)
                } else if previous > 0 {
                    window_start_ms.saturating_add(period_ms)
                } else {
                    0
                }
            }
            State::Fixed {
                period_ms,
                window_start_ms,
                count,
            } => {
                if count > 0 {
                    window_start_ms.saturating_add(period_ms)
                } else {
                    0
                }
            }
        }
    }

    /// The text stored in the database: the algorithm's name and its numbers.
    pub fn encode(&self) -> String {
        match *self {
            State::Gcra { tat_ns } => format!("gcra {tat_ns}"),
            State::Sliding {
                period_ms,
                window_start_ms,
                previous,
                current,
            } => format!("sliding_window {period_ms} {window_start_ms} {previous} {current}"),
            State::Fixed {
                period_ms,
                window_start_ms,
                count,
            } => format!("fixed_window {period_ms} {window_start_ms} {count}"),
        }
    }

    /// Reads [`State::encode`]'s text; `None` if it is not one.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let name = parts.next()?;
        let numbers: Vec<u64> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
        let state = match (Algorithm::from_name(name)?, numbers.as_slice()) {
            (Algorithm::Gcra, &[tat_ns]) => State::Gcra { tat_ns },
            (Algorithm::SlidingWindow, &[period_ms, window_start_ms, previous, current]) => {
                State::Sliding {
                    period_ms,
                    window_start_ms,
                    previous,
                    current,
                }
            }
            (Algorithm::FixedWindow, &[period_ms, window_start_ms, count]) => State::Fixed {
                period_ms,
                window_start_ms,
                count,
            },
            _ => return None,
        };
        let period_ok = match state {
            State::Gcra { .. } => true,
            State::Sliding { period_ms, .. } | State::Fixed { period_ms, .. } => {
                (1..=MAX_PERIOD_MS).contains(&period_ms)
            }
        };
        period_ok.then_some(state)
    }
}

/// The answer to a Check or Peek.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is (or would be) admitted.
    pub allowed: bool,
    /// Units per period.
    pub limit: u32,
    /// Units that can still be consumed right now (after this request, if it was admitted).
    pub remaining: u32,
    /// Milliseconds until the key is back to its full limit if nothing more is consumed.
    pub reset_after_ms: u64,
    /// When denied, milliseconds until the same request would be admitted; 0 when allowed.
    pub retry_after_ms: u64,
}

/// Decides a request of `cost` units (at least 1, at most [`Rule::capacity`]) at `now_ms`
/// against the key's `state`, and consumes it when `consume` is set and it is admitted.
/// Returns the decision and the key's state afterwards (unchanged unless consumed; `None` when
/// the key has no state). A state written under another algorithm or period is ignored, as
/// if the key were new.
pub fn decide(
    rule: &Rule,
    state: Option<&State>,
    now_ms: u64,
    cost: u32,
    consume: bool,
) -> (Decision, Option<State>) {
    debug_assert!(cost >= 1 && cost <= rule.capacity());
    let current = state.filter(|s| rule.reads(s));
    let (decision, next) = match rule.algorithm {
        Algorithm::Gcra => gcra::decide(rule, current, now_ms, cost, consume),
        Algorithm::SlidingWindow => window::decide_sliding(rule, current, now_ms, cost, consume),
        Algorithm::FixedWindow => window::decide_fixed(rule, current, now_ms, cost, consume),
    };
    if decision.allowed && consume {
        (decision, Some(next))
    } else {
        (decision, state.copied())
    }
}

/// `n` as u32, capped.
fn clamp_u32(n: u128) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
