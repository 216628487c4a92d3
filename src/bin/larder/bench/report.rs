//! What `larder bench` reports: the per-task HDR histograms merged into one, the figures of
//! one run (one system, one op) as a JSON line, the Larder/Redis ratio, and the human table.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::ops::Op;

/// The histogram's range, in nanoseconds: 1 ns to 60 s at 3 significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// An empty latency histogram (nanoseconds).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts (1 ≤ low, high ≥ 2·low, 3
    // significant figures ≤ 5).
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// The histograms of every task as one.
pub fn merge<'a>(
    parts: impl IntoIterator<Item = &'a Histogram<u64>>,
) -> Result<Histogram<u64>, hdrhistogram::AdditionError> {
    let mut total = new_histogram();
    for part in parts {
        total.add(part)?;
    }
    Ok(total)
}

/// `numerator / denominator`, or `None` when the denominator is not a positive rate (a
/// system that did nothing has no meaningful ratio).
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0 && numerator.is_finite() && denominator.is_finite())
        .then(|| numerator / denominator)
}

/// `v` rounded to `decimals` places, so that the JSON carries no false precision.
fn round(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

/// The figures of one run: one system, one op.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// "larder", "redis", or the label given with `--system`.
    pub system: String,
    /// The op's name ([`Op::name`]).
    pub op: &'static str,
    /// Callers issuing calls back to back.
    pub concurrency: usize,
    /// HTTP/2 connections of the gRPC side (Redis: one per caller).
    pub connections: usize,
    /// Successful calls measured.
    pub ops: u64,
    /// Successful calls per second of the measured window.
    pub ops_per_sec: f64,
    /// Keys read per second (`getmany`: 16 per call; otherwise equal to `ops_per_sec`).
    pub keys_per_sec: f64,
    /// Latency quantiles of the successful calls, in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Failed calls (any error status).
    pub errors: u64,
    /// Successful calls that found nothing (reads of the preloaded key space), did not store
    /// (Set), or were denied (rate limits).
    pub misses: u64,
    /// The server's CPU per successful call, in microseconds (with its pid).
    pub server_cpu_us_per_op: Option<f64>,
    /// CPU used in the measured window by the server, this client, and everything else.
    pub server_cores: Option<f64>,
    pub client_cores: Option<f64>,
    pub other_cores: Option<f64>,
    /// Rate limits: the share of checks allowed.
    pub allowed_fraction: Option<f64>,
    /// Open loop (`--rate`): the calls a second asked for; `null` for a closed loop.
    pub target_rate: Option<f64>,
    /// Redis pipelining (`--redis-pipeline N`): commands per round trip; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_depth: Option<usize>,
}

/// What one run measured, before it is turned into figures.
pub struct Measured<'a> {
    pub system: String,
    pub op: Op,
    pub concurrency: usize,
    pub connections: usize,
    pub hist: &'a Histogram<u64>,
    pub ops: u64,
    pub errors: u64,
    pub misses: u64,
    /// The measured window, in seconds.
    pub window_secs: f64,
    /// CPU nanoseconds in the window: the server (if its pid was given), this process, and
    /// every CPU of the machine.
    pub server_ns: Option<u64>,
    pub client_ns: Option<u64>,
    pub machine_ns: Option<u64>,
    /// Open loop: the calls a second asked for.
    pub target_rate: Option<f64>,
    /// Redis pipelining: commands per round trip.
    pub pipeline_depth: Option<usize>,
}

impl RunReport {
    /// The figures of `m`.
    pub fn new(m: &Measured<'_>) -> Self {
        let ops_per_sec = if m.window_secs > 0.0 {
            m.ops as f64 / m.window_secs
        } else {
            0.0
        };
        let us = |q: f64| round(m.hist.value_at_quantile(q) as f64 / 1000.0, 1);
        let window_ns = m.window_secs * 1e9;
        let cores = |ns: Option<u64>| {
            ns.filter(|_| window_ns > 0.0)
                .map(|ns| round(ns as f64 / window_ns, 2))
        };
        // What neither side of the benchmark used: other processes, the kernel's own threads
        // and time the hypervisor took. Without a server pid it includes the server.
        let other_ns = m.machine_ns.map(|all| {
            let ours = m.server_ns.unwrap_or(0) + m.client_ns.unwrap_or(0);
            all.saturating_sub(ours)
        });
        Self {
            system: m.system.clone(),
            op: m.op.name(),
            concurrency: m.concurrency,
            connections: m.connections,
            ops: m.ops,
            ops_per_sec: round(ops_per_sec, 1),
            keys_per_sec: round(ops_per_sec * m.op.keys_per_call() as f64, 1),
            p50_us: us(0.50),
            p99_us: us(0.99),
            p999_us: us(0.999),
            errors: m.errors,
            misses: m.misses,
            server_cpu_us_per_op: m
                .server_ns
                .filter(|_| m.ops > 0)
                .map(|ns| round(ns as f64 / m.ops as f64 / 1000.0, 1)),
            server_cores: cores(m.server_ns),
            client_cores: cores(m.client_ns),
            other_cores: cores(other_ns),
            allowed_fraction: (m.op.is_rate_limit() && m.ops > 0)
                .then(|| round((m.ops - m.misses) as f64 / m.ops as f64, 4)),
            target_rate: m.target_rate,
            pipeline_depth: m.pipeline_depth,
        }
    }

    /// The report as one line of JSON.
    pub fn json_line(&self) -> String {
        // Plain data with string keys: serialising it cannot fail.
        serde_json::to_string(self).expect("a RunReport serialises")
    }
}

/// The human table of `runs`: one row per system and op, and for each op that ran on both
/// the first system and a second one, the second column's ratio (first / second ops/s).
pub fn table(runs: &[RunReport]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{:<15} {:<18} {:>11} {:>11} {:>9} {:>9} {:>9} {:>7} {:>8}",
        "system", "op", "ops/s", "keys/s", "p50 µs", "p99 µs", "p99.9 µs", "errors", "ratio"
    );
    let first_system = runs.first().map(|r| r.system.as_str());
    for run in runs {
        let keys = if run.op == Op::GetMany.name() {
            format!("{:.0}", run.keys_per_sec)
        } else {
            "-".to_owned()
        };
        // The ratio sits on the second system's row: first system's rate over this one's.
        let ratio_cell = if Some(run.system.as_str()) == first_system {
            "-".to_owned()
        } else {
            runs.iter()
                .find(|r| Some(r.system.as_str()) == first_system && r.op == run.op)
                .and_then(|first| ratio(first.ops_per_sec, run.ops_per_sec))
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"))
        };
        let _ = writeln!(
            out,
            "{:<15} {:<18} {:>11.0} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>8}",
            run.system,
            run.op,
            run.ops_per_sec,
            keys,
            run.p50_us,
            run.p99_us,
            run.p999_us,
            run.errors,
            ratio_cell
        );
    }
    if runs.iter().any(|r| Some(r.system.as_str()) != first_system) {
        let _ = writeln!(
            out,
            "ratio: {} ops/s over the row's ops/s, same op, same run",
            first_system.unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = new_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    fn measured<'a>(hist: &'a Histogram<u64>, system: &str, op: Op, ops: u64) -> Measured<'a> {
        Measured {
            system: system.to_owned(),
            op,
            concurrency: 4,
            connections: 2,
            hist,
            ops,
            errors: 1,
            misses: 0,
            window_secs: 2.0,
            server_ns: Some(1_000_000_000),
            client_ns: Some(500_000_000),
            machine_ns: Some(2_000_000_000),
            target_rate: None,
            pipeline_depth: None,
        }
    }

    #[test]
    fn merged_histograms_count_every_value_and_give_its_percentiles() {
        // Four tasks of 250 calls each: 1..=1000 µs in all, spread round-robin.
        let parts: Vec<_> = (0..4u64)
            .map(|t| histogram_of((1..=1000u64).filter(|v| v % 4 == t).map(|v| v * 1000)))
            .collect();
        let total = merge(&parts).unwrap();
        assert_eq!(total.len(), 1000);
        // Three significant digits: within 0.1% of the exact quantile.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(total.value_at_quantile(0.5), 500_000), "p50");
        assert!(near(total.value_at_quantile(0.99), 990_000), "p99");
        assert!(near(total.value_at_quantile(0.999), 999_000), "p99.9");
        assert!(near(total.max(), 1_000_000), "max");
        assert_eq!(merge(std::iter::empty()).unwrap().len(), 0);
    }

    #[test]
    fn ratios_need_a_positive_denominator() {
        assert_eq!(ratio(150.0, 100.0), Some(1.5));
        assert_eq!(ratio(0.0, 100.0), Some(0.0));
        assert_eq!(ratio(100.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
        assert_eq!(ratio(100.0, -1.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn a_json_line_has_every_required_key() {
        let hist = histogram_of([100_000, 200_000, 300_000]);
        let report = RunReport::new(&measured(&hist, "larder", Op::GetMany, 3000));
        let line = report.json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["system"], "larder");
        assert_eq!(v["op"], "getmany");
        assert_eq!(v["concurrency"], 4);
        for key in ["ops_per_sec", "p50_us", "p99_us", "p999_us"] {
            assert!(v[key].is_number(), "{key} in {line}");
        }
        assert_eq!(v["errors"], 1);
        assert_eq!(v["ops_per_sec"], 1500.0);
        assert_eq!(v["keys_per_sec"], 1500.0 * 16.0);
        assert_eq!(v["server_cores"], 0.5);
        assert_eq!(v["client_cores"], 0.25);
        assert_eq!(v["other_cores"], 0.25);
        assert_eq!(v["server_cpu_us_per_op"], 333.3);
        // Not a rate limit: no share allowed; a closed loop: no target rate.
        assert!(v["allowed_fraction"].is_null());
        assert!(v["target_rate"].is_null());
        assert!(
            v.get("pipeline_depth").is_none(),
            "only Redis pipelining has a depth"
        );
        let p50 = v["p50_us"].as_f64().unwrap();
        assert!((199.0..=201.0).contains(&p50), "{p50}");
    }

    #[test]
    fn a_redis_pipeline_row_carries_its_depth() {
        let hist = histogram_of([100_000]);
        let mut m = measured(&hist, "redis-pipeline", Op::Get, 3000);
        m.pipeline_depth = Some(16);
        let v: serde_json::Value = serde_json::from_str(&RunReport::new(&m).json_line()).unwrap();
        assert_eq!(v["system"], "redis-pipeline");
        assert_eq!(v["pipeline_depth"], 16);
    }

    #[test]
    fn a_run_with_no_window_has_no_rate() {
        let hist = new_histogram();
        let mut m = measured(&hist, "redis", Op::RatelimitGcra, 0);
        m.window_secs = 0.0;
        let report = RunReport::new(&m);
        assert_eq!(report.ops_per_sec, 0.0);
        assert_eq!(report.server_cores, None);
        assert_eq!(report.allowed_fraction, None);
        assert_eq!(report.server_cpu_us_per_op, None);
    }

    #[test]
    fn the_table_puts_the_ratio_on_the_second_systems_row() {
        let hist = histogram_of([1000]);
        let larder = RunReport::new(&measured(&hist, "larder", Op::Get, 300));
        let redis = RunReport::new(&measured(&hist, "redis", Op::Get, 200));
        let idle = RunReport::new(&measured(&hist, "redis", Op::Set, 0));
        let set = RunReport::new(&measured(&hist, "larder", Op::Set, 10));
        let text = table(&[larder, redis, set, idle]);
        let rows: Vec<&str> = text.lines().collect();
        assert!(
            rows[2].starts_with("redis") && rows[2].ends_with("1.50"),
            "{text}"
        );
        assert!(
            rows[4].starts_with("redis") && rows[4].ends_with("n/a"),
            "{text}"
        );
        assert!(rows[1].ends_with('-'), "{text}");
    }
}
