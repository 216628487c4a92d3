//! The TOML config file (`--config FILE`): what it may hold, and its checks. An unknown key,
//! a wrong type or an impossible value is an error naming the key; nothing is ignored.
//!
//! Today the file holds the rate-limit section; every other setting is a flag (or its
//! `LARDER_*` variable). Flags and variables win over the file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use serde::Deserialize;

use crate::ratelimit::{Algorithm, Rule};

/// Longest policy name, in bytes.
pub const MAX_POLICY_NAME: usize = 128;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[ratelimit]`.
    #[serde(default)]
    pub ratelimit: RateLimitSection,
}

/// `[ratelimit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Longest a change stays in memory only (a human duration, e.g. "1s").
    pub write_behind: Option<String>,
    /// Memory for rate-limit state (e.g. "32MiB").
    pub max_memory: Option<String>,
    /// `[ratelimit.policies.NAME]`.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicySection>,
}

/// `[ratelimit.policies.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Units admitted per period.
    pub limit: u64,
    /// The period, a human duration ("1m", "1h", "500ms").
    pub period: String,
    /// "gcra" (default), "sliding_window" or "fixed_window".
    pub algorithm: Option<String>,
    /// GCRA's bucket size; default the limit.
    pub burst: Option<u64>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
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
            let period = parse_duration(&p.period).with_context(|| at("period"))?;
            let period_ms = whole_ms(period).with_context(|| at("period"))?;
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

    /// `write_behind`, if set.
    pub fn write_behind(&self) -> anyhow::Result<Option<Duration>> {
        self.write_behind
            .as_deref()
            .map(|s| parse_duration(s).context("ratelimit.write_behind"))
            .transpose()
    }

    /// `max_memory`, if set.
    pub fn max_memory(&self) -> anyhow::Result<Option<ByteSize>> {
        self.max_memory
            .as_deref()
            .map(|s| {
                s.parse::<ByteSize>()
                    .map_err(|e| anyhow::anyhow!("ratelimit.max_memory: {s:?} is not a size: {e}"))
            })
            .transpose()
    }
}

/// A human duration ("1m", "1h 30m", "250ms").
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s).map_err(|e| anyhow::anyhow!("{s:?} is not a duration: {e}"))
}

/// A duration in whole milliseconds.
fn whole_ms(d: Duration) -> anyhow::Result<u64> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        bail!("{d:?} is not a whole number of milliseconds");
    }
    u64::try_from(d.as_millis()).context("too long")
}

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
            (
                "limit = 5\nperiod = \"soon\"",
                "ratelimit.policies.chat.period",
            ),
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
        for (text, mentions) in [
            (
                "[ratelimit.policies.chat]\nlimit = 5\nperiod = \"1m\"\nlimt = 3",
                "limt",
            ),
            ("[ratelimit.policies.chat]\nperiod = \"1m\"", "limit"),
            (
                "[ratelimit.policies.chat]\nlimit = -5\nperiod = \"1m\"",
                "limit",
            ),
            (
                "[ratelimit.policies.chat]\nlimit = \"5\"\nperiod = \"1m\"",
                "limit",
            ),
            ("[ratelimits]\nwrite_behind = \"1s\"", "ratelimits"),
            ("[ratelimit]\nwrite_behnd = \"1s\"", "write_behnd"),
            ("data_dir = 5", "data_dir"),
        ] {
            let e = error(text);
            assert!(e.contains(mentions), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn write_behind_and_memory_parse() {
        let f = FileConfig::parse("[ratelimit]\nwrite_behind = \"250ms\"\nmax_memory = \"8MiB\"")
            .unwrap();
        assert_eq!(
            f.ratelimit.write_behind().unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(f.ratelimit.max_memory().unwrap(), Some(ByteSize::mib(8)));
        let f = FileConfig::parse("[ratelimit]\nmax_memory = \"lots\"").unwrap();
        assert!(format!("{:#}", f.ratelimit.max_memory().unwrap_err()).contains("max_memory"));
    }
}
