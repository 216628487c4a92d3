//! Tests of the algorithms with made-up times: worked examples for each, then properties
//! checked against a log of what was admitted (bounds per window, exact retry times, and
//! `remaining` meaning what it says).

use proptest::prelude::*;

use super::*;

const T0: u64 = 1_700_000_000_000;
const MINUTE: u64 = 60_000;

fn rule(algorithm: Algorithm, limit: u64, period_ms: u64, burst: u64) -> Rule {
    Rule::new(algorithm, limit, period_ms, burst).expect("a valid rule")
}

/// A key's life: its state, and a helper to ask at a time.
struct Key {
    rule: Rule,
    state: Option<State>,
}

impl Key {
    fn new(rule: Rule) -> Self {
        Self { rule, state: None }
    }

    fn check(&mut self, now: u64, cost: u32) -> Decision {
        let (d, next) = decide(&self.rule, self.state.as_ref(), now, cost, true);
        self.state = next;
        d
    }

    fn peek(&self, now: u64, cost: u32) -> Decision {
        let (d, next) = decide(&self.rule, self.state.as_ref(), now, cost, false);
        assert_eq!(next, self.state, "a peek changed the state");
        d
    }
}

#[test]
fn gcra_admits_the_burst_then_one_per_interval() {
    // 60 per minute, bucket of 60: one unit per second.
    let mut k = Key::new(rule(Algorithm::Gcra, 60, MINUTE, 0));
    for i in 0..60 {
        let d = k.check(T0, 1);
        assert!(d.allowed, "request {i}");
        assert_eq!(d.remaining, 59 - i);
        assert_eq!(d.retry_after_ms, 0);
    }
    let d = k.check(T0, 1);
    assert_eq!(
        d,
        Decision {
            allowed: false,
            limit: 60,
            remaining: 0,
            reset_after_ms: MINUTE,
            retry_after_ms: 1000
        }
    );
    assert!(!k.check(T0 + 999, 1).allowed);
    let d = k.check(T0 + 1000, 1);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.reset_after_ms, MINUTE);
}

#[test]
fn gcra_with_a_small_burst_spaces_requests() {
    // 10 per second with a bucket of 2: two at once, then one every 100 ms.
    let mut k = Key::new(rule(Algorithm::Gcra, 10, 1000, 2));
    assert!(k.check(T0, 1).allowed);
    assert!(k.check(T0, 1).allowed);
    let d = k.check(T0, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, 100);
    assert_eq!(d.reset_after_ms, 200);
    assert!(k.check(T0 + 100, 1).allowed);
    assert!(!k.check(T0 + 150, 1).allowed);
}

#[test]
fn gcra_cost_counts_units() {
    let mut k = Key::new(rule(Algorithm::Gcra, 100, MINUTE, 0));
    let d = k.check(T0, 60);
    assert!(d.allowed);
    assert_eq!(d.remaining, 40);
    let d = k.check(T0, 41);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 40, "a denied request consumes nothing");
    assert_eq!(d.retry_after_ms, 600, "one unit refills every 600 ms");
}

#[test]
fn fixed_window_counts_per_aligned_window() {
    let mut k = Key::new(rule(Algorithm::FixedWindow, 3, MINUTE, 0));
    let start = T0 - T0 % MINUTE + 10_000;
    for left in [2, 1, 0] {
        assert_eq!(k.check(start, 1).remaining, left);
    }
    let d = k.check(start + 5_000, 1);
    assert!(!d.allowed);
    assert_eq!(
        d.retry_after_ms, 45_000,
        "the window ends 50 s after its 10th second"
    );
    assert_eq!(d.reset_after_ms, 45_000);
    let d = k.check(start + 50_000, 1);
    assert!(d.allowed, "a new window");
    assert_eq!(d.remaining, 2);
}

#[test]
fn sliding_window_weighs_the_previous_window() {
    let mut k = Key::new(rule(Algorithm::SlidingWindow, 10, MINUTE, 0));
    let start = T0 - T0 % MINUTE;
    for _ in 0..10 {
        assert!(k.check(start + 1_000, 1).allowed);
    }
    assert!(!k.check(start + 59_999, 1).allowed);
    // A quarter into the next window the previous 10 weigh 7.5: two more fit.
    let at = start + MINUTE + 15_000;
    let d = k.peek(at, 1);
    assert!(d.allowed);
    assert_eq!(d.remaining, 2);
    assert!(k.check(at, 1).allowed);
    assert!(k.check(at, 1).allowed);
    let d = k.check(at, 1);
    assert!(!d.allowed);
    // 10·(60000 - e)/60000 + 2 + 1 <= 10 once e >= 18000.
    assert_eq!(d.retry_after_ms, 3_000);
    assert!(k.check(at + 3_000, 1).allowed);
}

#[test]
fn a_state_of_another_algorithm_or_period_starts_afresh() {
    let mut k = Key::new(rule(Algorithm::FixedWindow, 1, MINUTE, 0));
    assert!(k.check(T0, 1).allowed);
    assert!(!k.check(T0, 1).allowed);
    k.rule = rule(Algorithm::FixedWindow, 1, 2 * MINUTE, 0);
    assert!(k.check(T0, 1).allowed, "another period");
    k.rule = rule(Algorithm::Gcra, 1, MINUTE, 0);
    assert!(k.check(T0, 1).allowed, "another algorithm");
    // The bucket is full again at T0 + 1 min; read with 2 per minute that owes two units, so
    // the key is not fresh: it gets its next unit 30 s on.
    k.rule = rule(Algorithm::Gcra, 2, MINUTE, 0);
    assert_eq!(
        k.check(T0, 1).retry_after_ms,
        30_000,
        "a new limit reads the same state"
    );
    assert!(k.check(T0 + 30_000, 1).allowed);
}

#[test]
fn rules_are_validated_by_field() {
    let bad = |a, l, p, b| Rule::new(a, l, p, b).unwrap_err().field;
    assert_eq!(bad(Algorithm::Gcra, 0, 1000, 0), "limit");
    assert_eq!(bad(Algorithm::Gcra, MAX_LIMIT + 1, 1000, 0), "limit");
    assert_eq!(bad(Algorithm::Gcra, 1, 0, 0), "period_ms");
    assert_eq!(bad(Algorithm::Gcra, 1, MAX_PERIOD_MS + 1, 0), "period_ms");
    assert_eq!(bad(Algorithm::SlidingWindow, 5, 1000, 5), "burst");
    assert_eq!(bad(Algorithm::FixedWindow, 5, 1000, 1), "burst");
    assert_eq!(bad(Algorithm::Gcra, 1, MAX_PERIOD_MS, 2), "burst");
    assert_eq!(bad(Algorithm::Gcra, 1, 1000, MAX_LIMIT + 1), "burst");
    let r = rule(Algorithm::Gcra, 7, 1000, 0);
    assert_eq!((r.burst(), r.capacity()), (7, 7));
    let r = rule(Algorithm::Gcra, 7, 1000, 3);
    assert_eq!(r.capacity(), 3);
    assert_eq!(rule(Algorithm::SlidingWindow, 9, 10, 0).capacity(), 9);
    assert!(Rule::new(Algorithm::Gcra, MAX_LIMIT, MAX_PERIOD_MS, MAX_LIMIT).is_ok());
}

#[test]
fn algorithm_names_round_trip() {
    for a in [
        Algorithm::Gcra,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ] {
        assert_eq!(Algorithm::from_name(a.name()), Some(a));
    }
    assert_eq!(Algorithm::from_name("leaky"), None);
}

#[test]
fn malformed_state_text_is_refused() {
    for text in [
        "",
        "gcra",
        "gcra x",
        "gcra 1 2",
        "fixed_window 0 1 1",
        "sliding_window 10 1 1",
        "token_bucket 5",
        "gcra -1",
    ] {
        assert_eq!(State::decode(text), None, "{text:?}");
    }
}

fn any_algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Gcra),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::FixedWindow),
    ]
}

/// A rule with small numbers, so that denials and window edges are common.
fn any_rule() -> impl Strategy<Value = Rule> {
    (any_algorithm(), 1u64..20, 1u64..5_000, 0u64..30).prop_map(|(a, limit, period, burst)| {
        let burst = if a == Algorithm::Gcra { burst } else { 0 };
        Rule::new(a, limit, period, burst).expect("in range")
    })
}

/// Requests as (ms since the previous one, cost as a fraction of the capacity).
fn any_requests() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec((0u64..400, 1u32..=100), 1..200)
}

/// Runs the requests; returns the admitted ones as (time, cost).
fn run(rule: Rule, requests: &[(u64, u32)]) -> Vec<(u64, u64)> {
    let mut key = Key::new(rule);
    let mut now = T0;
    let mut admitted = Vec::new();
    for &(dt, share) in requests {
        now += dt;
        let cost = (rule.capacity() * share).div_ceil(100).max(1);
        if key.check(now, cost).allowed {
            admitted.push((now, u64::from(cost)));
        }
    }
    admitted
}

/// Units admitted in `[from, from + span)`.
fn units_in(admitted: &[(u64, u64)], from: u64, span: u64) -> u64 {
    admitted
        .iter()
        .filter(|(t, _)| (from..from + span).contains(t))
        .map(|(_, c)| c)
        .sum()
}

proptest! {
    #[test]
    fn state_text_round_trips(
        tat in any::<u64>(), p in 1u64..=MAX_PERIOD_MS, s in any::<u64>(), a in any::<u64>(), b in any::<u64>()
    ) {
        for state in [
            State::Gcra { tat_ns: tat },
            State::Sliding { period_ms: p, window_start_ms: s, previous: a, current: b },
            State::Fixed { period_ms: p, window_start_ms: s, count: a },
        ] {
            prop_assert_eq!(State::decode(&state.encode()), Some(state));
        }
    }

    #[test]
    fn gcra_never_admits_more_than_burst_plus_limit_in_a_period(
        rule in any_rule().prop_filter("gcra", |r| r.algorithm() == Algorithm::Gcra),
        requests in any_requests(),
    ) {
        let admitted = run(rule, &requests);
        let bound = u64::from(rule.burst()) + u64::from(rule.limit()) - 1;
        for &(t, _) in &admitted {
            prop_assert!(units_in(&admitted, t, rule.period_ms()) <= bound);
        }
        // And over any longer span W, fewer than burst + W/T.
        let t_ns = gcra::interval_ns(&rule);
        for &(t, _) in &admitted {
            for span in [1, rule.period_ms() / 3 + 1, 3 * rule.period_ms()] {
                let units = u128::from(units_in(&admitted, t, span));
                let bound_ns = u128::from(rule.burst()) * t_ns + u128::from(span) * u128::from(NS_PER_MS);
                prop_assert!(units * t_ns < bound_ns + t_ns);
            }
        }
    }

    #[test]
    fn window_algorithms_never_admit_more_than_limit_per_aligned_window(
        rule in any_rule().prop_filter("windows", |r| r.algorithm() != Algorithm::Gcra),
        requests in any_requests(),
    ) {
        let admitted = run(rule, &requests);
        let p = rule.period_ms();
        let limit = u64::from(rule.limit());
        for &(t, _) in &admitted {
            prop_assert!(units_in(&admitted, t - t % p, p) <= limit);
            // Across a boundary: up to 2·limit for the fixed window, fewer for the sliding one.
            let across = units_in(&admitted, t, p);
            match rule.algorithm() {
                Algorithm::FixedWindow => prop_assert!(across <= 2 * limit),
                _ => prop_assert!(across < 2 * limit),
            }
        }
    }

    #[test]
    fn sliding_window_admits_exactly_by_the_weighted_count(
        limit in 1u64..20, p in 1u64..5_000, requests in any_requests(),
    ) {
        // Replays the decisions against counts taken from the log of admitted requests.
        let rule = Rule::new(Algorithm::SlidingWindow, limit, p, 0).unwrap();
        let mut key = Key::new(rule);
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let mut now = T0;
        for (dt, share) in requests {
            now += dt;
            let cost = u64::from((rule.capacity() * share).div_ceil(100).max(1));
            let start = now - now % p;
            let previous = units_in(&admitted, start - p, p);
            let current = units_in(&admitted, start, p);
            let e = now - start;
            let expect = previous * (p - e) + (current + cost) * p <= limit * p;
            let d = key.check(now, cost as u32);
            prop_assert_eq!(d.allowed, expect);
            if d.allowed {
                admitted.push((now, cost));
            }
        }
    }

    #[test]
    fn retry_after_is_exactly_when_the_request_passes(
        rule in any_rule(), requests in any_requests(), share in 1u32..=100,
    ) {
        let mut key = Key::new(rule);
        let mut now = T0;
        for (dt, s) in requests {
            now += dt;
            let cost = (rule.capacity() * s).div_ceil(100).max(1);
            key.check(now, cost);
        }
        let cost = (rule.capacity() * share).div_ceil(100).max(1);
        let d = key.peek(now, cost);
        if d.allowed {
            prop_assert_eq!(d.retry_after_ms, 0);
        } else {
            prop_assert!(d.retry_after_ms > 0);
            prop_assert!(!key.peek(now + d.retry_after_ms - 1, cost).allowed);
            prop_assert!(key.peek(now + d.retry_after_ms, cost).allowed);
        }
    }

    #[test]
    fn remaining_is_what_can_be_consumed_now(rule in any_rule(), requests in any_requests()) {
        let mut key = Key::new(rule);
        let mut now = T0;
        for (dt, s) in requests {
            now += dt;
            let cost = (rule.capacity() * s).div_ceil(100).max(1);
            let d = key.check(now, cost);
            prop_assert!(d.remaining <= rule.capacity());
            prop_assert_eq!(d.limit, rule.limit());
        }
        let remaining = key.peek(now, 1).remaining;
        for _ in 0..remaining {
            prop_assert!(key.check(now, 1).allowed);
        }
        prop_assert!(!key.check(now, 1).allowed);
    }

    #[test]
    fn after_reset_after_the_key_has_its_full_limit(rule in any_rule(), requests in any_requests()) {
        let mut key = Key::new(rule);
        let mut now = T0;
        let mut last = None;
        for (dt, s) in requests {
            now += dt;
            let cost = (rule.capacity() * s).div_ceil(100).max(1);
            last = Some(key.check(now, cost));
        }
        let reset = last.unwrap().reset_after_ms;
        let fresh = Key::new(rule).peek(now + reset, 1);
        prop_assert_eq!(key.peek(now + reset, 1), fresh);
        if let Some(state) = key.state {
            prop_assert!(state.expires_at_ms() <= now + reset);
            if reset > 0 {
                prop_assert!(key.peek(now + reset - 1, 1).remaining < rule.capacity());
            }
        }
    }
}
