//! Prometheus metrics: what is measured, and how one scrape is put together.
//!
//! - [`grpc`]: the tower layer that counts and times gRPC calls.
//! - [`auth`]: the count of calls refused by bearer-token auth.
//! - [`http`]: the HTTP endpoint serving `GET /metrics`.
//! - [`budget`]: the figures of the server's in-flight byte budget.
//!
//! Only the gRPC call metrics and the byte budget's figures live here; everything else is
//! read from the store when scraped (the cache counters Stats keeps, the writer's histograms,
//! rate-limit checks, byte totals), plus the file sizes and process figures, so nothing is
//! counted twice. Each scrape
//! builds a fresh registry around those readings; the blocking parts (an indexed COUNT of live
//! sessions, `stat` and `/proc` reads) run on blocking threads, each bounded by
//! [`SCRAPE_READ_TIMEOUT`], and a reading that fails or times out is left out of that scrape.

pub(crate) mod auth;
pub(crate) mod budget;
pub(crate) mod grpc;
pub(crate) mod http;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use self::auth::AuthRefusals;
use self::grpc::{GrpcMetrics, GrpcMetricsLayer};
use crate::error::{Error, Result};
use crate::store::Store;

pub(crate) use self::http::{MetricsServer, bind};

/// Longest a scrape waits for one blocking reading (the session count, the file sizes).
pub(crate) const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The text format a scrape is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4, what most tools expect.
    Prometheus,
    /// OpenMetrics 1.0 text, when the scraper asks for it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics if it names it, else Prometheus.
    pub(crate) fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The response's `Content-Type`.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Labels of one rate-limit counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    /// The policy's name; '' for limits given inline.
    policy: String,
    /// `allowed` or `denied`.
    result: &'static str,
}

/// The metrics of one server: the gRPC call metrics and what a scrape reads from the store.
#[derive(Debug)]
pub(crate) struct Metrics {
    store: Store,
    grpc: Arc<GrpcMetrics>,
    /// Configured policy names; checks are exported for these and for inline limits only.
    policies: BTreeSet<String>,
    /// The auth layer's refusal counts, when auth is on.
    auth: Option<AuthRefusals>,
}

/// The readings a scrape takes off the async runtime; `None` where one failed.
#[derive(Debug, Default)]
struct Readings {
    live_sessions: Option<u64>,
    database_bytes: Option<u64>,
    wal_bytes: Option<u64>,
    process: Option<Process>,
}

/// Figures about the daemon's process, from `/proc` (Linux only).
#[derive(Debug, Default, Clone, Copy)]
struct Process {
    resident_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
    cpu_seconds: Option<f64>,
}

impl Metrics {
    /// Metrics over `store`, with rate-limit checks exported for `policies` (and inline).
    pub(crate) fn new(store: Store, policies: impl IntoIterator<Item = String>) -> Result<Self> {
        launched_at();
        let grpc = GrpcMetrics::new(&crate::pb::DESCRIPTOR_SETS)?;
        Ok(Self {
            store,
            grpc: Arc::new(grpc),
            policies: policies.into_iter().collect(),
            auth: None,
        })
    }

    /// Exports `refusals`, the auth layer's counts (`None`: auth is off, nothing to export).
    pub(crate) fn with_auth(mut self, refusals: Option<AuthRefusals>) -> Self {
        self.auth = refusals;
        self
    }

    /// The layer recording the gRPC calls of every listener.
    pub(crate) fn grpc_layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer::new(self.grpc.clone())
    }

    /// Takes the readings and encodes every metric in `format`.
    pub(crate) async fn render(&self, format: Format) -> Result<String> {
        let readings = self.read().await;
        let registry = self.registry(readings);
        let mut text = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
        }
        .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
        Ok(text)
    }

    /// The readings that need SQLite or the file system, taken on blocking threads.
    async fn read(&self) -> Readings {
        let sessions = tokio::time::timeout(SCRAPE_READ_TIMEOUT, self.store.live_sessions());
        let db = self.store.database_path().to_owned();
        let files = tokio::time::timeout(
            SCRAPE_READ_TIMEOUT,
            tokio::task::spawn_blocking(move || (file_sizes(&db), read_process())),
        );
        let (sessions, files) = tokio::join!(sessions, files);
        let live_sessions = match sessions {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: counting sessions failed");
                None
            }
            Err(_) => {
                tracing::warn!(timeout = ?SCRAPE_READ_TIMEOUT, "metrics: counting sessions timed out");
                None
            }
        };
        let ((database_bytes, wal_bytes), process) = match files {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: reading file sizes failed");
                ((None, None), None)
            }
            Err(_) => {
                tracing::warn!(timeout = ?SCRAPE_READ_TIMEOUT, "metrics: reading file sizes timed out");
                ((None, None), None)
            }
        };
        Readings {
            live_sessions,
            database_bytes,
            wal_bytes,
            process,
        }
    }

    /// A registry holding this scrape: the live gRPC and writer metrics (shared handles) and
    /// constant metrics made from the readings.
    fn registry(&self, r: Readings) -> Registry {
        let mut reg = Registry::default();
        reg.register(
            "larder_grpc_requests",
            "gRPC calls finished, by service, method and status code",
            self.grpc.requests.clone(),
        );
        reg.register_with_unit(
            "larder_grpc_request_duration",
            "Time from a gRPC call's arrival to its status, by service and method",
            Unit::Seconds,
            self.grpc.durations.clone(),
        );
        if let Some(auth) = &self.auth {
            auth.register(&mut reg);
        }
        self.grpc.budget.register(&mut reg);

        let c = self.store.cache_counters();
        for (name, help, value) in [
            (
                "larder_cache_hits",
                "Cache reads that found a live entry",
                c.hits,
            ),
            (
                "larder_cache_misses",
                "Cache reads that found nothing",
                c.misses,
            ),
            (
                "larder_cache_memory_hits",
                "Cache hits answered from the memory LRU without SQLite",
                c.memory_hits,
            ),
            ("larder_cache_sets", "Cache entries written", c.sets),
            (
                "larder_cache_deletes",
                "Live cache entries removed by clients",
                c.deletes,
            ),
            (
                "larder_cache_expirations",
                "Expired cache entries removed by the sweeper",
                c.expirations,
            ),
            (
                "larder_cache_evictions",
                "Cache entries evicted to keep the table under cache.max_disk",
                c.evictions,
            ),
        ] {
            reg.register(name, help, ConstCounter::new(value));
        }
        reg.register_with_unit(
            "larder_cache_disk",
            "Charge of the cache table's rows, namespaces, keys, values and row overhead (the \
             figure cache.max_disk bounds), expired rows not yet swept included",
            Unit::Bytes,
            ConstGauge::new(self.store.cache_disk_bytes()),
        );
        reg.register_with_unit(
            "larder_cache_memory",
            "Bytes charged to the memory LRU of cache entries",
            Unit::Bytes,
            ConstGauge::new(self.store.memory_bytes() as u64),
        );
        reg.register_with_unit(
            "larder_session_memory",
            "Bytes charged to the memory LRU of sessions",
            Unit::Bytes,
            ConstGauge::new(self.store.session_memory_bytes() as u64),
        );
        if let Some(n) = r.live_sessions {
            reg.register(
                "larder_sessions_live",
                "Sessions whose idle and absolute expiries are ahead",
                ConstGauge::new(n),
            );
        }

        // Every configured policy shows, checked or not; names the config does not have
        // (there should be none) are left out, so the label set stays bounded.
        let mut counts: BTreeMap<&str, (u64, u64)> = std::iter::once("")
            .chain(self.policies.iter().map(String::as_str))
            .map(|p| (p, (0, 0)))
            .collect();
        let checked = self.store.rate_limit_checks();
        for p in &checked {
            if let Some(slot) = counts.get_mut(p.policy.as_str()) {
                *slot = (p.allowed, p.denied);
            }
        }
        let checks = Family::<CheckLabels, Counter>::default();
        for (policy, (allowed, denied)) in counts {
            for (result, n) in [("allowed", allowed), ("denied", denied)] {
                checks
                    .get_or_create(&CheckLabels {
                        policy: policy.to_owned(),
                        result,
                    })
                    .inc_by(n);
            }
        }
        reg.register(
            "larder_ratelimit_checks",
            "Rate-limit Checks by policy ('' for inline limits) and result",
            checks,
        );
        let (keys, bytes) = self.store.rate_limit_memory();
        reg.register(
            "larder_ratelimit_memory_keys",
            "Rate-limit keys held in memory",
            ConstGauge::new(keys as u64),
        );
        reg.register_with_unit(
            "larder_ratelimit_memory",
            "Bytes charged for rate-limit state in memory",
            Unit::Bytes,
            ConstGauge::new(bytes as u64),
        );
        reg.register(
            "larder_ratelimit_keys_refused",
            "New rate-limit keys answered by ratelimit.when_full because memory held \
             ratelimit.max_keys keys",
            ConstCounter::new(self.store.rate_limit_keys_refused()),
        );

        let w = self.store.writer_metrics();
        reg.register(
            "larder_writer_batch_commands",
            "Write commands committed per transaction by the group-commit writer",
            w.batch_commands.clone(),
        );
        reg.register_with_unit(
            "larder_writer_commit_duration",
            "Time from BEGIN to the end of COMMIT of one write batch",
            Unit::Seconds,
            w.commit_seconds.clone(),
        );
        reg.register(
            "larder_writer_failed_batches",
            "Write batches that failed as a whole (not started or rolled back)",
            w.failed_batches.clone(),
        );

        if let Some(n) = r.database_bytes {
            reg.register_with_unit(
                "larder_database_size",
                "Size of the database file",
                Unit::Bytes,
                ConstGauge::new(n),
            );
        }
        if let Some(n) = r.wal_bytes {
            reg.register_with_unit(
                "larder_wal_size",
                "Size of the database's write-ahead log file",
                Unit::Bytes,
                ConstGauge::new(n),
            );
        }

        if let Some(p) = r.process {
            if let Some(n) = p.resident_bytes {
                reg.register_with_unit(
                    "process_resident_memory",
                    "Resident memory size",
                    Unit::Bytes,
                    ConstGauge::new(n),
                );
            }
            // Under systemd's ProcSubset=pid, /proc/stat (the boot time) is hidden: fall back
            // to when metrics were set up, at start-up.
            reg.register_with_unit(
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Unit::Seconds,
                ConstGauge::new(p.start_time_seconds.unwrap_or_else(launched_at)),
            );
            if let Some(t) = p.cpu_seconds {
                reg.register_with_unit(
                    "process_cpu",
                    "User and system CPU time spent",
                    Unit::Seconds,
                    ConstCounter::new(t),
                );
            }
        }
        reg
    }
}

/// The sizes of the database file and of its WAL; `None` for a file that is not there.
fn file_sizes(db: &Path) -> (Option<u64>, Option<u64>) {
    let size = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
    (size(db), size(&crate::store::wal_path(db)))
}

/// When the daemon set up its metrics (at start-up), in seconds since the Unix epoch.
fn launched_at() -> f64 {
    static LAUNCHED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *LAUNCHED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// Clock ticks per second in `/proc/<pid>/stat`: fixed at 100 for user space on Linux (the
/// Prometheus Go client's procfs assumes the same).
const USER_HZ: f64 = 100.0;

/// The process figures from `/proc`; `None` off Linux.
fn read_process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let boot = std::fs::read_to_string("/proc/stat").ok();
    Some(parse_process(&stat, status.as_deref(), boot.as_deref()))
}

/// Parses `/proc/self/stat`, `/proc/self/status` and `/proc/stat`.
fn parse_process(stat: &str, status: Option<&str>, boot: Option<&str>) -> Process {
    // The command name (field 2) may hold spaces and parentheses; fields after its closing
    // parenthesis are plain numbers, from field 3 (the state) on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(user), Some(system)) => Some((user + system) as f64 / USER_HZ),
        _ => None,
    };
    let boot_time = boot.and_then(|b| {
        b.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot as f64 + ticks as f64 / USER_HZ),
        _ => None,
    };
    let resident_bytes = status.and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    Process {
        resident_bytes,
        start_time_seconds,
        cpu_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2")),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (lar der) (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 3 0 123456 100000000 2500 18446744073709551615";
        let status = "Name:\tlarder\nVmPeak:\t  9000 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 10\n";
        let p = parse_process(stat, Some(status), Some(boot));
        assert_eq!(p.resident_bytes, Some(10 * 1024 * 1024));
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.start_time_seconds, Some(1_700_000_000.0 + 1234.56));
    }

    #[test]
    fn a_garbled_stat_gives_nothing() {
        let p = parse_process("garbage", None, None);
        assert_eq!(
            (p.resident_bytes, p.start_time_seconds, p.cpu_seconds),
            (None, None, None)
        );
    }
}
