//! The TOML config file (`--config FILE`): what it may hold and how its values are written.
//! Its schema is the declaration ([`super::settings`]): a key no setting declares, or a value
//! not of the setting's kind, is an error naming the key; nothing is ignored. The same type
//! prints the effective config (`larder check-config`), so that output is itself a valid
//! config file.
//!
//! Every value is optional here: what the file leaves out comes from the environment, the
//! flags or the defaults ([`super`] merges them and checks ranges).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Unexpected, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::settings::{Kind, SETTINGS, Setting, Value, sections};
use crate::limiter::{Algorithm, Rule};

/// Longest policy name, in bytes.
pub(crate) const MAX_POLICY_NAME: usize = 128;

/// The file as written: each setting the file gives, and the rate-limit policies. Its keys
/// are those of [`SETTINGS`] (`listen`, `[cache] max_value`, ...) and
/// `[ratelimit.policies.NAME]`; any other key is an error.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileConfig {
    /// By file key.
    values: BTreeMap<&'static str, Value>,
    /// `[ratelimit.policies.NAME]`.
    pub policies: Policies,
}

/// `[ratelimit.policies]`: the named rate-limit policies.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Policies(pub BTreeMap<String, PolicySection>);

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

impl FileConfig {
    /// The value given for `setting`, if any.
    pub fn get(&self, setting: &Setting) -> Option<&Value> {
        self.values.get(setting.key)
    }

    /// Gives `setting` a value (of its kind), replacing any earlier one.
    pub fn set(&mut self, setting: &'static Setting, value: Value) {
        self.values.insert(setting.key, value);
    }

    /// A size setting's value in bytes, if given.
    pub fn bytes(&self, setting: &Setting) -> Option<u64> {
        match self.get(setting)? {
            Value::Bytes(n) => Some(*n),
            other => unreachable!("{} holds {other:?}, not a size", setting.key),
        }
    }

    /// A count setting's value, if given.
    pub fn count(&self, setting: &Setting) -> Option<u64> {
        match self.get(setting)? {
            Value::Count(n) => Some(*n),
            other => unreachable!("{} holds {other:?}, not a count", setting.key),
        }
    }

    /// A duration setting's value, if given.
    pub fn duration(&self, setting: &Setting) -> Option<Duration> {
        match self.get(setting)? {
            Value::Time(d) => Some(*d),
            other => unreachable!("{} holds {other:?}, not a duration", setting.key),
        }
    }

    /// A boolean setting's value, if given.
    pub fn flag(&self, setting: &Setting) -> Option<bool> {
        match self.get(setting)? {
            Value::Flag(b) => Some(*b),
            other => unreachable!("{} holds {other:?}, not a boolean", setting.key),
        }
    }

    /// A path setting's value, if given.
    pub fn path(&self, setting: &Setting) -> Option<PathBuf> {
        match self.get(setting)? {
            Value::Path(p) => Some(p.clone()),
            other => unreachable!("{} holds {other:?}, not a path", setting.key),
        }
    }

    /// A text setting's value (address, choice, mode, filter) as written, if given.
    pub fn text(&self, setting: &Setting) -> Option<String> {
        match self.get(setting)? {
            Value::Text(t) => Some(t.clone()),
            other => unreachable!("{} holds {other:?}, not text", setting.key),
        }
    }
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

impl Policies {
    /// The policies, each checked; the error names the policy and its key.
    pub fn rules(&self) -> anyhow::Result<BTreeMap<String, Rule>> {
        let mut rules = BTreeMap::new();
        for (name, p) in &self.0 {
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
/// "1 KB"). Units follow `bytesize`: KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000. The
/// error says what is expected rather than passing on the parser's own words.
pub(crate) fn parse_size(s: &str) -> anyhow::Result<u64> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| {
            anyhow::anyhow!("{s:?} is not a size; expected a size such as 256MiB, 1GB or 1048576")
        })
}

/// Writes a byte size exactly, in the largest binary unit that divides it.
pub(crate) fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Parses a human duration ("1m", "1h 30m", "250ms", "30days").
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("{s:?} is not a duration (e.g. \"30s\"): {e}"))
}

/// Writes a duration exactly, in the largest unit that divides it ("30m", "365days",
/// "1500ms"), the way [`parse_duration`] reads it back.
pub(crate) fn format_duration(d: Duration) -> String {
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

/// Reads the file against the declaration: each `[section]` and key must be a declared
/// setting's (or `ratelimit.policies`), each value must be of the setting's kind. Errors
/// go through serde, so that toml places them (line, column, the key at fault).
impl<'de> Deserialize<'de> for FileConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut config = FileConfig::default();
        d.deserialize_map(TableVisitor {
            section: None,
            config: &mut config,
        })?;
        Ok(config)
    }
}

/// The keys a table may hold: its settings' fields, its sections (at the top) and
/// `policies` (in `[ratelimit]`), for the "unknown field" message.
fn expected(section: Option<&str>) -> String {
    let mut keys: Vec<&str> = SETTINGS
        .iter()
        .filter(|s| s.section() == section)
        .map(|s| s.field())
        .collect();
    match section {
        None => keys.extend(sections()),
        Some("ratelimit") => keys.push("policies"),
        Some(_) => {}
    }
    let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    keys.join(", ")
}

/// The top of the file, or one `[section]` of it.
struct TableVisitor<'a> {
    section: Option<&'static str>,
    config: &'a mut FileConfig,
}

impl<'de> Visitor<'de> for TableVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.section))? {
            match key {
                Key::Section(section) => map.next_value_seed(TableSeed {
                    section: Some(section),
                    config: &mut *self.config,
                })?,
                Key::Policies => self.config.policies = map.next_value()?,
                Key::Setting(setting) => {
                    let value = map.next_value_seed(ValueSeed(setting.kind))?;
                    self.config.set(setting, value);
                }
            }
        }
        Ok(())
    }
}

/// What a key of a table names.
enum Key {
    /// A `[section]` (at the top of the file).
    Section(&'static str),
    /// `policies` in `[ratelimit]`.
    Policies,
    /// A setting.
    Setting(&'static Setting),
}

/// A key of the top table or of `[section]`, checked as it is read: an unknown key is an
/// error there, which toml places at the key itself.
struct KeySeed(Option<&'static str>);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        let section = self.0;
        if section.is_none()
            && let Some(found) = sections().into_iter().find(|s| *s == key)
        {
            return Ok(Key::Section(found));
        }
        if section == Some("ratelimit") && key == "policies" {
            return Ok(Key::Policies);
        }
        match SETTINGS
            .iter()
            .find(|s| s.section() == section && s.field() == key)
        {
            Some(setting) => Ok(Key::Setting(setting)),
            None => Err(E::custom(format!(
                "unknown field `{key}`, expected one of {}",
                expected(section)
            ))),
        }
    }
}

/// A `[section]` as the value of its key.
struct TableSeed<'a> {
    section: Option<&'static str>,
    config: &'a mut FileConfig,
}

impl<'de> DeserializeSeed<'de> for TableSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(TableVisitor {
            section: self.section,
            config: self.config,
        })
    }
}

/// One setting's value, read as its kind.
struct ValueSeed(Kind);

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Size => "a size such as \"256MiB\" or a number of bytes",
            Kind::Duration => "a duration such as \"30s\"",
            Kind::Count => "a whole number",
            Kind::Bool => "true or false",
            Kind::Path => "a path string",
            Kind::Address => "an address string, HOST:PORT or \"none\"",
            Kind::Choice(_) | Kind::FileMode | Kind::LogFilter => "a string",
        })
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
        }
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        match self.0 {
            Kind::Size => Ok(Value::Bytes(n)),
            Kind::Count => Ok(Value::Count(n)),
            _ => Err(E::invalid_type(Unexpected::Unsigned(n), &self)),
        }
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        match self.0 {
            Kind::Bool => Ok(Value::Flag(b)),
            _ => Err(E::invalid_type(Unexpected::Bool(b), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        match self.0 {
            Kind::Size => parse_size(s)
                .map(Value::Bytes)
                .map_err(|e| E::custom(format!("{e:#}"))),
            Kind::Duration => parse_duration(s)
                .map(Value::Time)
                .map_err(|e| E::custom(format!("{e:#}"))),
            Kind::Path => Ok(Value::Path(s.into())),
            Kind::Address | Kind::Choice(_) | Kind::FileMode | Kind::LogFilter => {
                Ok(Value::Text(s.to_owned()))
            }
            Kind::Count | Kind::Bool => Err(E::invalid_type(Unexpected::Str(s), &self)),
        }
    }
}

/// Writes the file back: the top-level settings, then each section holding any, in the
/// declaration's order.
impl Serialize for FileConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for setting in SETTINGS.iter().filter(|s| s.section().is_none()) {
            if let Some(v) = self.get(setting) {
                map.serialize_entry(setting.key, &Written(v))?;
            }
        }
        for section in sections() {
            let table = Section {
                config: self,
                section,
            };
            if !table.is_empty() {
                map.serialize_entry(section, &table)?;
            }
        }
        map.end()
    }
}

/// A `[section]` of a [`FileConfig`], to write.
struct Section<'a> {
    config: &'a FileConfig,
    section: &'static str,
}

impl Section<'_> {
    fn settings(&self) -> impl Iterator<Item = (&'static Setting, &Value)> {
        SETTINGS
            .iter()
            .copied()
            .filter(|s| s.section() == Some(self.section))
            .filter_map(|s| self.config.get(s).map(|v| (s, v)))
    }

    fn has_policies(&self) -> bool {
        self.section == "ratelimit" && !self.config.policies.0.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.settings().next().is_none() && !self.has_policies()
    }
}

impl Serialize for Section<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (setting, v) in self.settings() {
            map.serialize_entry(setting.field(), &Written(v))?;
        }
        if self.has_policies() {
            map.serialize_entry("policies", &self.config.policies)?;
        }
        map.end()
    }
}

/// A value as the file writes it: sizes and durations as exact human text.
struct Written<'a>(&'a Value);

impl Serialize for Written<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Bytes(n) => s.serialize_str(&format_size(*n)),
            Value::Time(d) => s.serialize_str(&format_duration(*d)),
            Value::Count(n) => s.serialize_u64(*n),
            Value::Flag(b) => s.serialize_bool(*b),
            Value::Path(p) => s.serialize_str(&p.to_string_lossy()),
            Value::Text(t) => s.serialize_str(t),
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
    use crate::config::settings::{
        AUTH_UNIX_SOCKET, MAX_DISK, MAX_KEY, RATELIMIT_MAX_MEMORY, RATELIMIT_WRITE_BEHIND,
    };

    fn rules(text: &str) -> anyhow::Result<BTreeMap<String, Rule>> {
        FileConfig::parse(text)?.policies.rules()
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
        assert_eq!(
            f.duration(&RATELIMIT_WRITE_BEHIND),
            Some(Duration::from_millis(250))
        );
        assert_eq!(f.bytes(&RATELIMIT_MAX_MEMORY), Some(8 << 20));
        assert_eq!(f.bytes(&MAX_KEY), Some(2048));
        assert_eq!(f.bytes(&MAX_DISK), Some(1_000_000_000));
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
        assert_eq!(f.bytes(&MAX_KEY), Some(512));
        assert_eq!(f.flag(&AUTH_UNIX_SOCKET), Some(false));
        let printed = f.to_toml().unwrap();
        assert_eq!(FileConfig::parse(&printed).unwrap(), f, "{printed}");
    }
}
