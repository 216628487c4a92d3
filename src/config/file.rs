//! The TOML config file (`--config FILE`): what it may hold and how its values are written.
//! An unknown key or a wrong type is an error naming the key; nothing is ignored. The same
//! types print the effective config (`larder check-config`), so that output is itself a
//! valid config file.
//!
//! Every value is optional here: what the file leaves out comes from the environment, the
//! flags or the defaults ([`super`] merges them and checks ranges).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::ratelimit::{Algorithm, Rule};

/// Longest policy name, in bytes.
pub const MAX_POLICY_NAME: usize = 128;

/// The file as written.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory of the database and lock file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// TCP address, or "none".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Unix socket path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    /// Octal file mode of the Unix socket, e.g. "0660".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_mode: Option<String>,
    /// Threads running gRPC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<u64>,
    /// `[storage]`.
    #[serde(default)]
    pub storage: StorageSection,
    /// `[cache]`.
    #[serde(default)]
    pub cache: CacheSection,
    /// `[session]`.
    #[serde(default)]
    pub session: SessionSection,
    /// `[ratelimit]`.
    #[serde(default)]
    pub ratelimit: RateLimitSection,
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[auth]`.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[tls]`.
    #[serde(default)]
    pub tls: TlsSection,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[log]`.
    #[serde(default)]
    pub log: LogSection,
}

/// `[storage]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// "normal" or "full".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<String>,
}

/// `[cache]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Byte budget of the memory LRU.
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// Bound on the cache table's keys and values.
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub max_disk: Option<u64>,
    /// Largest value.
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub max_value: Option<u64>,
    /// Longest key (also rate-limit keys).
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub max_key: Option<u64>,
    /// Most items in one batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u64>,
}

/// `[session]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// Idle TTL of a session created without one.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub idle_ttl: Option<Duration>,
    /// Absolute TTL of a session created without one.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub absolute_ttl: Option<Duration>,
    /// Longest TTL a client may ask for.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Duration>,
    /// Byte budget of the memory LRU of sessions.
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
}

/// `[ratelimit]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Longest a change stays in memory only.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub write_behind: Option<Duration>,
    /// Memory for rate-limit state.
    #[serde(default, with = "size", skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// `[ratelimit.policies.NAME]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, PolicySection>,
}

/// `[ratelimit.policies.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Units admitted per period.
    pub limit: u64,
    /// The period, a human duration ("1m", "1h", "500ms").
    #[serde(with = "duration_required")]
    pub period: Duration,
    /// "gcra" (default), "sliding_window" or "fixed_window".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// GCRA's bucket size; default the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// `[server]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// How long in-flight calls may finish after SIGTERM.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    /// Longest a call may run; a shorter client deadline wins.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// Most calls in progress at once, over all connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u64>,
    /// Most open client connections, over all listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
}

/// `[auth]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// File of bearer tokens, one per line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Whether calls over the Unix socket need a token too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<bool>,
}

/// `[tls]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// HTTP address serving Prometheus text at /metrics, or "none".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// "text" or "json".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A tracing filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses the file's text. An error is one line naming the dotted key at fault (when
    /// the text is valid TOML), its line and column, and what is wrong.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!(one_line(text, &e)))
    }

    /// The file's text: what [`FileConfig::parse`] reads back to the same value.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string(self)?)
    }
}

/// A TOML error as one line: toml's own message spans several lines with a drawing of the
/// text, and for a bad value does not say which key it belongs to.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    match key_at(text, span.end.saturating_sub(1).max(span.start)) {
        Some(key) => format!("{key}: {message} (line {line}, column {column})"),
        None => {
            let written = text.lines().nth(line - 1).unwrap_or_default().trim();
            format!("line {line}, column {column} ({written}): {message}")
        }
    }
}

/// The dotted path of the last key written at or before byte `at`, which is the key an error
/// at `at` is about: an unknown key's error points at the key itself, a bad value's at the
/// value after its key, a missing key's at the header of its table. `None` when the text is
/// not valid TOML.
fn key_at(text: &str, at: usize) -> Option<String> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &str,
        at: usize,
        best: &mut Option<(usize, String)>,
    ) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            let start = key.span().start;
            // `>=`: a table's keys are visited after the table, so the deeper key wins a tie.
            if start <= at && best.as_ref().is_none_or(|(s, _)| start >= *s) {
                *best = Some((start, path.clone()));
            }
            if let toml::de::DeValue::Table(inner) = value.get_ref() {
                walk(inner, &path, at, best);
            }
        }
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut best = None;
    walk(doc.get_ref(), "", at, &mut best);
    best.map(|(_, key)| key)
}

impl RateLimitSection {
    /// The policies, each checked; the error names the policy and its key.
    pub fn rules(&self) -> anyhow::Result<BTreeMap<String, Rule>> {
        let mut rules = BTreeMap::new();
        for (name, p) in &self.policies {
            let at = |key: &str| format!("ratelimit.policies.{name}.{key}");
            if name.is_empty() || name.len() > MAX_POLICY_NAME {
                bail!("ratelimit.policies: a policy name must be 1 to {MAX_POLICY_NAME} bytes");
            }
            let algorithm = match &p.algorithm {
                None => Algorithm::Gcra,
                Some(a) => Algorithm::from_name(a).with_context(|| {
                    format!(
                        "{}: unknown algorithm {a:?}; expected gcra, sliding_window or \
                         fixed_window",
                        at("algorithm")
                    )
                })?,
            };
            if p.burst == Some(0) {
                bail!(
                    "{}: must be at least 1 (leave it out for the limit)",
                    at("burst")
                );
            }
            let period_ms = whole_ms(p.period).with_context(|| at("period"))?;
            let rule =
                Rule::new(algorithm, p.limit, period_ms, p.burst.unwrap_or(0)).map_err(|e| {
                    let key = if e.field == "period_ms" {
                        "period"
                    } else {
                        e.field
                    };
                    anyhow::anyhow!("{}: {}", at(key), e.message)
                })?;
            rules.insert(name.clone(), rule);
        }
        Ok(rules)
    }
}

/// A duration in whole milliseconds.
fn whole_ms(d: Duration) -> anyhow::Result<u64> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        bail!("{d:?} is not a whole number of milliseconds");
    }
    u64::try_from(d.as_millis()).context("too long")
}

/// Parses a byte size: a number of bytes, or a number with a unit ("256MiB", "4GiB",
/// "1 KB"). Units follow `bytesize`: KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| anyhow::anyhow!("{s:?} is not a size (e.g. \"256MiB\"): {e}"))
}

/// Writes a byte size exactly, in the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Parses a human duration ("1m", "1h 30m", "250ms", "30days").
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("{s:?} is not a duration (e.g. \"30s\"): {e}"))
}

/// Writes a duration exactly, in the largest unit that divides it ("30m", "365days",
/// "1500ms"), the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    for (unit, size) in [
        ("days", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Serde for optional sizes: a string with a unit, or a bare integer of bytes.
mod size {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Bytes(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Written>::deserialize(d)? {
            None => Ok(None),
            Some(Written::Bytes(n)) => Ok(Some(n)),
            Some(Written::Text(s)) => super::parse_size(&s)
                .map(Some)
                .map_err(|e| D::Error::custom(format!("{e:#}"))),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&super::format_size(*n)),
            None => s.serialize_none(),
        }
    }
}

/// Serde for optional human durations.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_duration(&s).map_err(|e| D::Error::custom(format!("{e:#}"))))
            .transpose()
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// Serde for a required human duration.
mod duration_required {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_duration(&String::deserialize(d)?)
            .map_err(|e| D::Error::custom(format!("{e:#}")))
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*v))
    }
}

/// A file that sets every setting, for tests.
#[cfg(test)]
pub(crate) const EVERY_SETTING: &str = r#"
data_dir = "/srv/larder"
listen = "127.0.0.1:17379"
unix_socket = "/run/larder/larder.sock"
unix_socket_mode = "0600"
worker_threads = 2
[storage]
synchronous = "full"
[cache]
max_memory = "64MiB"
max_disk = "1GiB"
max_value = "1MiB"
max_key = 512
max_batch = 100
[session]
idle_ttl = "15m"
absolute_ttl = "7days"
max_ttl = "30days"
max_memory = "16MiB"
[ratelimit]
write_behind = "300ms"
max_memory = "4MiB"
[ratelimit.policies.ai_chat]
limit = 60
period = "1m"
algorithm = "sliding_window"
[server]
drain_timeout = "5s"
request_timeout = "2s"
max_concurrent_requests = 64
max_connections = 32
[auth]
token_file = "/etc/larder/tokens"
unix_socket = false
[tls]
cert = "/etc/larder/cert.pem"
key = "/etc/larder/key.pem"
[metrics]
listen = "127.0.0.1:9379"
[log]
format = "json"
level = "warn"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> anyhow::Result<BTreeMap<String, Rule>> {
        FileConfig::parse(text)?.ratelimit.rules()
    }

    fn error(text: &str) -> String {
        format!("{:#}", rules(text).unwrap_err())
    }

    #[test]
    fn policies_are_read_with_their_defaults() {
        let r = rules(
            r#"
            [ratelimit.policies.ai_chat]
            limit = 60
            period = "1m"
            algorithm = "sliding_window"

            [ratelimit.policies.default]
            limit = 100
            period = "1m"

            [ratelimit.policies.login]
            limit = 5
            period = "15m"
            algorithm = "gcra"
            burst = 2
            "#,
        )
        .unwrap();
        let chat = r["ai_chat"];
        assert_eq!(chat.algorithm(), Algorithm::SlidingWindow);
        assert_eq!((chat.limit(), chat.period_ms()), (60, 60_000));
        let default = r["default"];
        assert_eq!(default.algorithm(), Algorithm::Gcra);
        assert_eq!(default.burst(), 100);
        assert_eq!(r["login"].burst(), 2);
        assert_eq!(r["login"].period_ms(), 15 * 60_000);
    }

    #[test]
    fn an_empty_file_has_no_policies() {
        assert!(rules("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_policy_is_named() {
        let base = |extra: &str| format!("[ratelimit.policies.chat]\n{extra}\n");
        let cases = [
            (
                "limit = 0\nperiod = \"1m\"",
                "ratelimit.policies.chat.limit",
            ),
            (
                "limit = 5\nperiod = \"0s\"",
                "ratelimit.policies.chat.period",
            ),
            ("limit = 5\nperiod = \"soon\"", "period"),
            (
                "limit = 5\nperiod = \"400days\"",
                "ratelimit.policies.chat.period",
            ),
            (
                "limit = 5\nperiod = \"1500us\"",
                "ratelimit.policies.chat.period",
            ),
            (
                "limit = 5\nperiod = \"1m\"\nalgorithm = \"leaky\"",
                "ratelimit.policies.chat.algorithm",
            ),
            (
                "limit = 5\nperiod = \"1m\"\nalgorithm = \"fixed_window\"\nburst = 3",
                "ratelimit.policies.chat.burst",
            ),
            (
                "limit = 5\nperiod = \"1m\"\nburst = 0",
                "ratelimit.policies.chat.burst",
            ),
        ];
        for (body, named) in cases {
            let e = error(&base(body));
            assert!(e.contains(named), "{body:?} gave {e:?}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        // Each error is one line naming the key by its full dotted path.
        for (text, mentions) in [
            (
                "[ratelimit.policies.chat]\nlimit = 5\nperiod = \"1m\"\nlimt = 3",
                "ratelimit.policies.chat.limt: unknown field",
            ),
            (
                "[ratelimit.policies.chat]\nperiod = \"1m\"",
                "ratelimit.policies.chat: missing field `limit`",
            ),
            (
                "[ratelimit.policies.chat]\nlimit = -5\nperiod = \"1m\"",
                "ratelimit.policies.chat.limit:",
            ),
            (
                "[ratelimit.policies.chat]\nlimit = \"5\"\nperiod = \"1m\"",
                "ratelimit.policies.chat.limit:",
            ),
            (
                "[ratelimits]\nwrite_behind = \"1s\"",
                "ratelimits: unknown field",
            ),
            (
                "[ratelimit]\nwrite_behnd = \"1s\"",
                "ratelimit.write_behnd: unknown field",
            ),
            ("data_dir = 5", "data_dir:"),
            ("worker_threads = \"two\"", "worker_threads:"),
            (
                "[cache]\nmax_memory = \"lots\"",
                "cache.max_memory: \"lots\" is not a size",
            ),
            ("cache.max_memory = \"lots\"", "cache.max_memory:"),
            ("[cache]\nmax_memory = -1", "cache.max_memory:"),
            ("[session]\nidle_ttl = 30", "session.idle_ttl:"),
            ("[session]\nidle_ttl = \"soon\"", "session.idle_ttl:"),
            ("[auth]\nunix_socket = \"yes\"", "auth.unix_socket:"),
            (
                "[tls]\ncertificate = \"a.pem\"",
                "tls.certificate: unknown field",
            ),
            (
                "listen = \"a\"\nlisten = \"b\"",
                "line 2, column 1 (listen = \"b\"): duplicate key",
            ),
            ("[cache\nmax_key = 5", "line 1, column 7 ([cache)"),
        ] {
            let e = format!("{:#}", FileConfig::parse(text).unwrap_err());
            assert!(e.contains(mentions), "{text:?} gave {e:?}");
            assert!(!e.contains('\n'), "{text:?} gave more than one line: {e:?}");
        }
    }

    #[test]
    fn sizes_and_durations_read_as_written() {
        let f = FileConfig::parse(
            "[ratelimit]\nwrite_behind = \"250ms\"\nmax_memory = \"8MiB\"\n\
             [cache]\nmax_key = 2048\nmax_disk = \"1 GB\"",
        )
        .unwrap();
        assert_eq!(f.ratelimit.write_behind, Some(Duration::from_millis(250)));
        assert_eq!(f.ratelimit.max_memory, Some(8 << 20));
        assert_eq!(f.cache.max_key, Some(2048));
        assert_eq!(f.cache.max_disk, Some(1_000_000_000));
    }

    #[test]
    fn sizes_and_durations_print_exactly() {
        assert_eq!(format_size(256 << 20), "256MiB");
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(1024), "1KiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1_000_000_000), "1000000000B");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(
            format_duration(Duration::from_secs(365 * 86_400)),
            "365days"
        );
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for bytes in [0, 1, 999, 1024, 1536, 256 << 20, 5 << 40, u64::MAX / 2] {
            assert_eq!(parse_size(&format_size(bytes)).unwrap(), bytes, "{bytes}");
        }
        for ms in [1, 999, 1000, 60_000, 90_061_001, 365 * 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{ms}");
        }
    }

    #[test]
    fn a_full_file_prints_back_to_itself() {
        let text = EVERY_SETTING;
        let f = FileConfig::parse(text).unwrap();
        assert_eq!(f.cache.max_key, Some(512));
        assert_eq!(f.auth.unix_socket, Some(false));
        let printed = f.to_toml().unwrap();
        assert_eq!(FileConfig::parse(&printed).unwrap(), f, "{printed}");
    }
}
