//! The settings ([`settings`], each declared once), the config file ([`mod@file`]) and the
//! values given as flags or `LARDER_*` variables, merged into one validated [`ServeConfig`].
//! Precedence, lowest first: the components' defaults, the file, variables, flags. An error
//! names the setting in all three spellings (file key, flag, variable).
//!
//! Merging happens in two stages, as the user wrote it and then as the daemon uses it: the
//! given values are laid over the file (a [`FileConfig`] again, which is what
//! `larder check-config` prints, defaults filled in), then every value is checked against its
//! declaration and built into the typed settings the server and store take.
//!
//! The command line itself is the binary's: it builds its flags from [`args`] and hands the
//! values given back as [`Given`].

pub mod file;
pub mod settings;
mod table;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

pub use self::file::FileConfig;
use self::file::{parse_duration, parse_size};
use self::settings::{Bound, Components, DefaultFrom, Kind, SETTINGS, Setting, Value};
pub use self::table::{TABLE_BEGIN, TABLE_END, settings_table};
use crate::server::ServerSettings;
use crate::server::auth::AuthSettings;
use crate::server::tls::TlsSettings;
use crate::service::RequestLimits as Limits;
use crate::service::ratelimit::RateLimitSettings;
use crate::service::session::SessionSettings;
use crate::store::schema::Synchronous;
use crate::store::{QueueSettings, StoreConfig, WhenFull};

/// The flag of every setting, for `serve` and `check-config` (each also read from its
/// `LARDER_*` variable).
pub fn args() -> Vec<clap::Arg> {
    let components = Components::defaults();
    SETTINGS.iter().map(|s| s.arg(&components)).collect()
}

/// Values given as flags or variables, as written, by setting; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Given(Vec<(&'static Setting, OsString)>);

impl Given {
    /// Gives `setting` the text `value` (a later one for the same setting wins).
    pub fn set(&mut self, setting: &'static Setting, value: impl Into<OsString>) {
        self.0.push((setting, value.into()));
    }

    /// Reads every setting's flag from `matches` (built with [`args`]).
    pub fn from_matches(matches: &clap::ArgMatches) -> Self {
        let mut given = Self::default();
        for setting in SETTINGS {
            if let Some(v) = matches.get_one::<OsString>(setting.flag) {
                given.set(setting, v.clone());
            }
        }
        given
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (ANSI colours only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// TCP address, `None` when TCP is off.
    pub listen: Option<String>,
    /// Unix socket path.
    pub unix_socket: Option<PathBuf>,
    /// File mode of the Unix socket.
    pub unix_socket_mode: u32,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Store settings.
    pub store: StoreConfig,
    /// Server settings.
    pub server: ServerSettings,
    /// Metrics HTTP address, `None` when off.
    pub metrics_listen: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// The merged configuration with every default filled in, as `check-config` prints it.
    pub effective: FileConfig,
}

impl ServeConfig {
    /// Reads the config file (if any), lays the given values over it, fills in the defaults
    /// and checks the result; the error names the setting at fault.
    pub fn load(config_file: Option<&Path>, given: &Given) -> anyhow::Result<Self> {
        build(effective(config_file, given)?)
    }

    /// The effective config as TOML, for `larder check-config`. It holds no secret: tokens
    /// stay in their file, and only the file's path is shown.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        self.effective.to_toml()
    }
}

/// The data directory, found as `serve` finds it (for `larder backup`). The config file must
/// parse (an unknown key is an error, as for the daemon), but only `data_dir` is taken from
/// it.
pub fn data_dir(config_file: Option<&Path>, given: &Given) -> anyhow::Result<PathBuf> {
    let effective = effective(config_file, given)?;
    Ok(filled(effective.path(&settings::DATA_DIR)))
}

/// The file, the given values laid over it, and every default filled in.
fn effective(config_file: Option<&Path>, given: &Given) -> anyhow::Result<FileConfig> {
    let mut f = match config_file {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    for (setting, text) in &given.0 {
        let value =
            parse_given(setting, text).map_err(|e| anyhow::anyhow!("{}: {e}", setting.named()))?;
        f.set(setting, value);
    }
    fill_defaults(&mut f);
    Ok(f)
}

/// A value given as a flag or variable. A path is taken as it is (but never empty: that
/// would silently mean the working directory); anything else must be text.
fn parse_given(setting: &Setting, text: &OsString) -> Result<Value, String> {
    if setting.kind == Kind::Path {
        if text.is_empty() {
            return Err("a path is required, and this one is empty".to_owned());
        }
        return Ok(Value::Path(PathBuf::from(text)));
    }
    let text = text
        .to_str()
        .ok_or_else(|| format!("{text:?} is not valid UTF-8"))?;
    parse_text(setting, text)
}

/// Reads `text` as a value of `setting`'s kind: the syntax only; what the value means (an
/// address, a mode, a range) is checked once all values are merged.
pub(crate) fn parse_text(setting: &Setting, text: &str) -> Result<Value, String> {
    Ok(match setting.kind {
        Kind::Size => Value::Bytes(parse_size(text).map_err(|e| format!("{e:#}"))?),
        Kind::Duration => Value::Time(parse_duration(text).map_err(|e| format!("{e:#}"))?),
        Kind::Count => Value::Count(
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("{text:?} is not a whole number"))?,
        ),
        Kind::Bool => match text.trim() {
            "true" => Value::Flag(true),
            "false" => Value::Flag(false),
            other => {
                return Err(format!(
                    "{other:?} is not a boolean; expected true or false"
                ));
            }
        },
        Kind::Path => Value::Path(text.into()),
        Kind::Address | Kind::Choice(_) | Kind::FileMode | Kind::LogFilter => {
            Value::Text(text.to_owned())
        }
    })
}

/// Fills every setting still unset with its default, so the effective config shows all.
fn fill_defaults(f: &mut FileConfig) {
    let components = Components::defaults();
    for setting in SETTINGS {
        // A default that qualifies another setting stays unset without it.
        let applies = match setting.default {
            DefaultFrom::With(other, _) => f.get(other).is_some(),
            _ => true,
        };
        if applies
            && f.get(setting).is_none()
            && let Some(v) = setting.default_value(&components)
        {
            f.set(setting, v);
        }
    }
}

/// A value [`fill_defaults`] has set.
/// A duration setting in milliseconds (settings are bounded far below where this saturates).
fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn filled<T>(v: Option<T>) -> T {
    v.expect("fill_defaults sets every setting that has a default")
}

/// A bound as a value of `like`'s kind; `None` when it is another setting left unset.
fn bound_value(f: &FileConfig, bound: Bound, like: &Value) -> Option<Value> {
    Some(match (bound, like) {
        (Bound::At(n), Value::Bytes(_)) => Value::Bytes(n),
        (Bound::At(n), _) => Value::Count(n),
        (Bound::Time(d), _) => Value::Time(d),
        (Bound::Setting(other), _) => f.get(other)?.clone(),
    })
}

/// How a bound reads in the docs and in errors about another setting.
fn bound_text(bound: Bound, kind: Kind) -> String {
    match bound {
        Bound::At(n) if kind == Kind::Size => file::format_size(n),
        Bound::At(n) => n.to_string(),
        Bound::Time(d) => file::format_duration(d),
        Bound::Setting(other) => other.key.to_owned(),
    }
}

/// Orders two values of one kind.
fn order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Bytes(a) | Value::Count(a), Value::Bytes(b) | Value::Count(b)) => a.cmp(b),
        (Value::Time(a), Value::Time(b)) => a.cmp(b),
        _ => unreachable!("a range compares values of one kind: {a:?} and {b:?}"),
    }
}

/// Checks `setting`'s value lies in its declared range, naming the setting.
fn check_range(f: &FileConfig, setting: &Setting) -> anyhow::Result<()> {
    let (Some(v), Some((lo, hi))) = (f.get(setting), setting.range) else {
        return Ok(());
    };
    let (Some(lo_v), Some(hi_v)) = (bound_value(f, lo, v), bound_value(f, hi, v)) else {
        return Ok(());
    };
    if order(v, &lo_v).is_lt() || order(v, &hi_v).is_gt() {
        let message = anyhow::anyhow!(
            "{}: {} is out of range; it must be between {} and {}",
            setting.named(),
            v.show(),
            lo_v.show(),
            hi_v.show()
        );
        if matches!(lo, Bound::Setting(_)) || matches!(hi, Bound::Setting(_)) {
            return Err(message.context(format!(
                "{} must be between {} and {}",
                setting.key,
                bound_text(lo, setting.kind),
                bound_text(hi, setting.kind)
            )));
        }
        return Err(message);
    }
    Ok(())
}

/// Port bounds of an address: 0 asks the system for a free port.
const PORTS: &str = "between 0 and 65535 (0: any free port)";

/// `Some(addr)` for a HOST:PORT address (the host may be a name, an IPv4 address or a
/// bracketed IPv6 one), `None` for "none".
fn address(setting: &Setting, text: &str) -> anyhow::Result<Option<String>> {
    let addr = text.trim();
    if addr == "none" {
        return Ok(None);
    }
    let Some((_, port)) = addr.rsplit_once(':').filter(|(host, _)| !host.is_empty()) else {
        bail!(
            "{}: {addr:?} is not HOST:PORT (e.g. 127.0.0.1:7379), nor \"none\"",
            setting.named()
        );
    };
    if port.parse::<u16>().is_err() {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "{}: {addr:?}: port {port} is out of range; it must be {PORTS}",
                setting.named()
            );
        }
        bail!(
            "{}: {addr:?} is not HOST:PORT (e.g. 127.0.0.1:7379), nor \"none\": {port:?} is \
             not a port number",
            setting.named()
        );
    }
    Ok(Some(addr.to_owned()))
}

/// One of a choice setting's words.
fn choice(setting: &Setting, text: &str) -> anyhow::Result<String> {
    let Kind::Choice(words) = setting.kind else {
        unreachable!("{} is not a choice", setting.key)
    };
    if !words.contains(&text) {
        let words: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
        bail!(
            "{}: {text:?} is not one of its values; expected {}",
            setting.named(),
            words.join(" or ")
        );
    }
    Ok(text.to_owned())
}

/// An octal file mode the daemon's own user can use.
fn file_mode(setting: &Setting, text: &str) -> anyhow::Result<u32> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| {
            format!(
                "{}: {text:?} is not an octal file mode like \"0660\"",
                setting.named()
            )
        })?;
    if mode & 0o600 != 0o600 {
        bail!(
            "{}: {text:?} would keep the daemon's own user from using its socket; it needs at \
             least 0600",
            setting.named()
        );
    }
    Ok(mode)
}

/// The levels a log filter may name (tracing also reads 0 to 5 for them).
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn is_level(word: &str) -> bool {
    let word = word.trim().to_ascii_lowercase();
    LEVELS.contains(&word.as_str()) || matches!(word.as_str(), "0" | "1" | "2" | "3" | "4" | "5")
}

/// A log filter: a level, or a comma list of directives each a level or `TARGET=LEVEL`.
/// tracing would take a bare word as a target enabled at every level, so that a mistyped
/// level ("verbose") silently logs nothing of Larder's; a bare word must be a level here.
fn log_filter(setting: &Setting, text: &str) -> anyhow::Result<String> {
    let expected = "expected trace, debug, info, warn, error or off, or directives such as \
                    \"warn,larder=debug\"";
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // `target[span{field=value}]` with no level: tracing checks its syntax below.
        if directive.ends_with(']') {
            continue;
        }
        // The whole value is quoted once when it is this one directive.
        let within = if directive == text.trim() {
            String::new()
        } else {
            format!("{text:?}: ")
        };
        match directive.rsplit_once('=') {
            None if !is_level(directive) => bail!(
                "{}: {within}{directive:?} is not a log level; {expected}",
                setting.named()
            ),
            Some((_, level)) if !is_level(level) => bail!(
                "{}: {within}{level:?} in {directive:?} is not a log level; {expected}",
                setting.named()
            ),
            _ => {}
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(text) {
        bail!(
            "{}: {text:?} is not a log filter: {e}; {expected}",
            setting.named()
        );
    }
    Ok(text.to_owned())
}

/// Checks the merged settings and builds what the daemon runs with.
fn build(effective: FileConfig) -> anyhow::Result<ServeConfig> {
    use self::settings::*;
    let f = &effective;

    // What each text setting means, in the file's order.
    let listen = address(&LISTEN, &filled(f.text(&LISTEN)))?;
    if listen.is_none() && f.get(&UNIX_SOCKET).is_none() {
        bail!(
            "listen (--listen) is \"none\" and no unix_socket (--unix-socket) is set: nothing would be served"
        );
    }
    let unix_socket_mode = file_mode(&UNIX_SOCKET_MODE, &filled(f.text(&UNIX_SOCKET_MODE)))?;
    let synchronous = match choice(&SYNCHRONOUS, &filled(f.text(&SYNCHRONOUS)))?.as_str() {
        "full" => Synchronous::Full,
        _ => Synchronous::Normal,
    };
    let when_full =
        match choice(&RATELIMIT_WHEN_FULL, &filled(f.text(&RATELIMIT_WHEN_FULL)))?.as_str() {
            "allow" => WhenFull::Allow,
            _ => WhenFull::Deny,
        };
    let metrics_listen = address(&METRICS_LISTEN, &filled(f.text(&METRICS_LISTEN)))?;
    let log_format = match choice(&LOG_FORMAT, &filled(f.text(&LOG_FORMAT)))?.as_str() {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let log_level = log_filter(&LOG_LEVEL, &filled(f.text(&LOG_LEVEL)))?;

    // Ranges: fixed bounds first, so that a setting another one is bounded by is named
    // itself when it is out of range.
    let bounded_by_another = |s: &Setting| {
        matches!(
            s.range,
            Some((Bound::Setting(_), _) | (_, Bound::Setting(_)))
        )
    };
    for setting in SETTINGS.iter().filter(|s| !bounded_by_another(s)) {
        check_range(f, setting)?;
    }
    for setting in SETTINGS.iter().filter(|s| bounded_by_another(s)) {
        check_range(f, setting)?;
    }

    let policies = f.policies.rules()?;

    let auth = match f.path(&AUTH_TOKEN_FILE) {
        Some(token_file) => Some(AuthSettings {
            token_file,
            unix_socket: filled(f.flag(&AUTH_UNIX_SOCKET)),
        }),
        None if f.get(&AUTH_UNIX_SOCKET).is_some() => bail!(
            "{} is set but there is no auth.token_file (--auth-token-file): without tokens \
             there is no authentication to turn on or off",
            AUTH_UNIX_SOCKET.named()
        ),
        None => None,
    };
    let tls = match (f.path(&TLS_CERT), f.path(&TLS_KEY)) {
        (Some(cert), Some(key)) => Some(TlsSettings { cert, key }),
        (None, None) => None,
        (Some(_), None) => bail!("{} is set without {}", TLS_CERT.named(), TLS_KEY.named()),
        (None, Some(_)) => bail!("{} is set without {}", TLS_KEY.named(), TLS_CERT.named()),
    };
    if tls.is_some() && listen.is_none() {
        bail!("tls (--tls-cert, --tls-key) applies to the TCP listener, but listen is \"none\"");
    }
    if metrics_listen.is_some() && metrics_listen == listen {
        bail!(
            "{} must differ from {}",
            METRICS_LISTEN.named(),
            LISTEN.named()
        );
    }

    let mut store = StoreConfig::new(filled(f.path(&DATA_DIR)));
    store.synchronous = synchronous;
    store.writer_cache_bytes = filled(f.bytes(&WRITER_CACHE));
    store.max_memory_bytes = filled(f.bytes(&MAX_MEMORY));
    store.max_disk_bytes = filled(f.bytes(&MAX_DISK));
    store.session_memory_bytes = filled(f.bytes(&SESSION_MAX_MEMORY));
    store.limit_memory_bytes = filled(f.bytes(&RATELIMIT_MAX_MEMORY));
    store.write_behind = filled(f.duration(&RATELIMIT_WRITE_BEHIND));
    store.limit_max_keys = filled(f.count(&RATELIMIT_MAX_KEYS));
    store.limit_when_full = when_full;
    store.queue = QueueSettings {
        lease_ms: duration_ms(filled(f.duration(&QUEUE_LEASE))),
        max_attempts: u32::try_from(filled(f.count(&QUEUE_MAX_ATTEMPTS))).unwrap_or(u32::MAX),
        retry_min_ms: duration_ms(filled(f.duration(&QUEUE_RETRY_MIN))),
        retry_max_ms: duration_ms(filled(f.duration(&QUEUE_RETRY_MAX))),
        max_jobs: filled(f.count(&QUEUE_MAX_JOBS)),
        max_bytes: filled(f.bytes(&QUEUE_MAX_BYTES)),
    };
    let defaults = ServerSettings::default();
    let server = ServerSettings {
        limits: Limits {
            max_value_bytes: filled(f.bytes(&MAX_VALUE)) as usize,
            max_key_bytes: filled(f.bytes(&MAX_KEY)) as usize,
            max_batch: filled(f.count(&MAX_BATCH)) as usize,
            ..defaults.limits
        },
        sessions: SessionSettings {
            default_idle_ttl: filled(f.duration(&SESSION_IDLE_TTL)),
            default_absolute_ttl: filled(f.duration(&SESSION_ABSOLUTE_TTL)),
            max_ttl: filled(f.duration(&SESSION_MAX_TTL)),
            max_per_user: filled(f.count(&SESSION_MAX_PER_USER)) as usize,
            max_disk_bytes: filled(f.bytes(&SESSION_MAX_DISK)),
            ..defaults.sessions
        },
        ratelimit: RateLimitSettings {
            policies: Arc::new(policies),
        },
        drain_timeout: filled(f.duration(&DRAIN_TIMEOUT)),
        request_timeout: filled(f.duration(&REQUEST_TIMEOUT)),
        max_concurrent_requests: filled(f.count(&MAX_CONCURRENT_REQUESTS)) as usize,
        max_connections: filled(f.count(&MAX_CONNECTIONS)) as usize,
        max_inflight_bytes: filled(f.bytes(&MAX_INFLIGHT_BYTES)),
        write_timeout: filled(f.duration(&WRITE_TIMEOUT)),
        max_connections_per_peer: filled(f.count(&MAX_CONNECTIONS_PER_PEER)) as usize,
        auth_timeout: filled(f.duration(&AUTH_TIMEOUT)),
        max_connection_age: filled(f.duration(&MAX_CONNECTION_AGE)),
        max_connection_age_grace: filled(f.duration(&MAX_CONNECTION_AGE_GRACE)),
        max_health_watches: filled(f.count(&MAX_HEALTH_WATCHES)) as usize,
        max_pipeline_inflight: filled(f.count(&MAX_PIPELINE_INFLIGHT)) as usize,
        auth,
        tls,
        ..defaults
    };
    // One message of the largest size the limits allow must fit the budget on its own.
    let max_message = server.limits.max_message_bytes() as u64;
    if server.max_inflight_bytes < max_message {
        bail!(
            "{}: {} is less than one maximal message ({max_message} bytes, about {:.1}MiB, \
             from cache.max_value, cache.max_key and cache.max_batch); raise it, or lower those",
            MAX_INFLIGHT_BYTES.named(),
            file::format_size(server.max_inflight_bytes),
            max_message as f64 / f64::from(1 << 20)
        );
    }
    Ok(ServeConfig {
        listen,
        unix_socket: f.path(&UNIX_SOCKET),
        unix_socket_mode,
        worker_threads: filled(f.count(&WORKER_THREADS)) as usize,
        store,
        server,
        metrics_listen,
        log_format,
        log_level,
        effective,
    })
}

#[cfg(test)]
mod tests;
