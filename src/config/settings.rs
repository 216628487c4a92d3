//! The declaration of every setting, each written once: its file key, flag, environment
//! variable, kind, range and help. The flags (`clap::Arg`s), the config file's schema, the
//! `LARDER_*` overlay, the range checks, `check-config`'s output and the docs table are all
//! read from [`SETTINGS`]; nothing else lists the settings.
//!
//! Defaults are not written here for what a component owns: they are read from
//! `StoreConfig::new`, `ServerSettings::default()` (with the request limits, session and
//! rate-limit settings it holds), so that the daemon and its library users agree. Only what
//! the binary itself owns (where to listen, threads, logging, the data directory) has its
//! default here.
//!
//! Invariants (checked by this module's tests): keys, flags and variables are unique; the
//! variable is `LARDER_` and the flag in upper case; every default parses as its kind and
//! lies in its range.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::ServerSettings;
use crate::service::KEY_BYTES_CEILING;
use crate::store::schema::Synchronous;
use crate::store::{StoreConfig, WhenFull};

use super::file::{format_duration, format_size};

/// What a setting's value is, which decides how it is written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bytes: a number, or a number with a unit ("256MiB", "1GB").
    Size,
    /// A human duration ("30s", "15m", "7days").
    Duration,
    /// A whole number.
    Count,
    /// `true` or `false`.
    Bool,
    /// A file or directory.
    Path,
    /// `HOST:PORT`, or `none` for off.
    Address,
    /// One of a few words.
    Choice(&'static [&'static str]),
    /// An octal file mode ("0660").
    FileMode,
    /// A log level or a `tracing` filter directive list.
    LogFilter,
}

impl Kind {
    /// The kind as the docs table names it.
    pub(crate) fn describe(self) -> String {
        match self {
            Kind::Size => "size".into(),
            Kind::Duration => "duration".into(),
            Kind::Count => "count".into(),
            Kind::Bool => "bool".into(),
            Kind::Path => "path".into(),
            Kind::Address => "address".into(),
            Kind::Choice(words) => words.join(" \\| "),
            Kind::FileMode => "octal mode".into(),
            Kind::LogFilter => "log filter".into(),
        }
    }

    /// What a value of this kind looks like, for `--help`.
    pub(crate) fn placeholder(self) -> &'static str {
        match self {
            Kind::Size => "SIZE",
            Kind::Duration => "DURATION",
            Kind::Count => "N",
            Kind::Bool => "BOOL",
            Kind::Path => "PATH",
            Kind::Address => "HOST:PORT",
            Kind::Choice(_) => "WORD",
            Kind::FileMode => "MODE",
            Kind::LogFilter => "FILTER",
        }
    }
}

/// A setting's value, as read and as printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// [`Kind::Size`], in bytes.
    Bytes(u64),
    /// [`Kind::Duration`].
    Time(Duration),
    /// [`Kind::Count`].
    Count(u64),
    /// [`Kind::Bool`].
    Flag(bool),
    /// [`Kind::Path`].
    Path(PathBuf),
    /// Every other kind, as written; checked when the config is built.
    Text(String),
}

impl Value {
    /// The value as `check-config` and the docs show it.
    pub fn show(&self) -> String {
        match self {
            Value::Bytes(n) => format_size(*n),
            Value::Time(d) => format_duration(*d),
            Value::Count(n) => n.to_string(),
            Value::Flag(b) => b.to_string(),
            Value::Path(p) => p.display().to_string(),
            Value::Text(t) => t.clone(),
        }
    }
}

/// One end of a setting's range.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// A number (of bytes, for a size).
    At(u64),
    /// A duration.
    Time(Duration),
    /// Another setting's value (of the same kind), e.g. the disk bound is at least one value.
    Setting(&'static Setting),
}

/// Where a setting's default comes from.
#[derive(Debug, Clone, Copy)]
pub enum DefaultFrom {
    /// None: the setting is off or absent unless given.
    Unset,
    /// Written here, as a user would write it (what the binary owns).
    Text(&'static str),
    /// Read from the owning component's own defaults.
    Component(fn(&Components) -> Value),
    /// Written here, and applying only once another setting is set (what it qualifies).
    With(&'static Setting, &'static str),
}

/// The components' own defaults, which the [`DefaultFrom::Component`] defaults read.
#[derive(Debug, Clone)]
pub struct Components {
    /// `StoreConfig::new(dir)` (the directory is the data_dir setting's).
    pub store: StoreConfig,
    /// `ServerSettings::default()`, holding the request limits and the session and
    /// rate-limit settings.
    pub server: ServerSettings,
}

impl Components {
    /// Every component's defaults.
    pub fn defaults() -> Self {
        Self {
            store: StoreConfig::new(""),
            server: ServerSettings::default(),
        }
    }
}

/// One setting, as declared.
#[derive(Debug)]
pub struct Setting {
    /// Dotted key in the config file: `cache.max_value`, or `listen` at the top.
    pub key: &'static str,
    /// Flag without its dashes: `max-value`.
    pub flag: &'static str,
    /// Environment variable: `LARDER_MAX_VALUE`.
    pub env: &'static str,
    /// What its value is.
    pub kind: Kind,
    /// Lowest and highest value allowed, both included; `None` for any.
    pub range: Option<(Bound, Bound)>,
    /// Where its default comes from.
    pub default: DefaultFrom,
    /// One or two sentences for `--help` and the docs.
    pub help: &'static str,
}

impl Setting {
    /// "cache.max_value (--max-value, LARDER_MAX_VALUE)": how an error names the setting,
    /// in each of the three places it can be given.
    pub fn named(&self) -> String {
        format!("{} (--{}, {})", self.key, self.flag, self.env)
    }

    /// The `[section]` of its file key, `None` at the top of the file.
    pub(crate) fn section(&self) -> Option<&'static str> {
        self.key.split_once('.').map(|(section, _)| section)
    }

    /// Its name inside its section (the whole key at the top).
    pub(crate) fn field(&self) -> &'static str {
        self.key
            .split_once('.')
            .map_or(self.key, |(_, field)| field)
    }

    /// Its default, parsed, if it has one (for [`DefaultFrom::With`], the value it takes
    /// once the other setting is set).
    pub fn default_value(&self, components: &Components) -> Option<Value> {
        let parsed = |text| {
            super::parse_text(self, text)
                .unwrap_or_else(|e| panic!("the default of {} does not parse: {e}", self.key))
        };
        match self.default {
            DefaultFrom::Unset => None,
            DefaultFrom::Text(text) | DefaultFrom::With(_, text) => Some(parsed(text)),
            DefaultFrom::Component(read) => Some(read(components)),
        }
    }

    /// The flag for `serve` and `check-config`, with its variable and help; its value is
    /// read as text and checked by the config, so that every error names the setting.
    pub fn arg(&self, components: &Components) -> clap::Arg {
        let mut help = self.help.to_owned();
        if let Some(v) = self.default_value(components) {
            let _ = write!(help, " [default: {}]", v.show());
        }
        clap::Arg::new(self.flag)
            .long(self.flag)
            .env(self.env)
            .value_name(self.kind.placeholder())
            .value_parser(clap::builder::ValueParser::os_string())
            .help(help)
    }
}

/// Shorthand for the declarations below: a number (of bytes, for a size).
const fn at(n: u64) -> Bound {
    Bound::At(n)
}

const fn secs(n: u64) -> Bound {
    Bound::Time(Duration::from_secs(n))
}

const fn millis(n: u64) -> Bound {
    Bound::Time(Duration::from_millis(n))
}

/// `data_dir`.
pub static DATA_DIR: Setting = Setting {
    key: "data_dir",
    flag: "data-dir",
    env: "LARDER_DATA_DIR",
    kind: Kind::Path,
    range: None,
    default: DefaultFrom::Text("larder-data"),
    help: "Directory for the database file, its WAL and the lock file.",
};

/// `listen`.
pub static LISTEN: Setting = Setting {
    key: "listen",
    flag: "listen",
    env: "LARDER_LISTEN",
    kind: Kind::Address,
    range: None,
    default: DefaultFrom::Text("127.0.0.1:7379"),
    help: "TCP address to listen on, HOST:PORT, or \"none\" to turn TCP off.",
};

/// `unix_socket`.
pub static UNIX_SOCKET: Setting = Setting {
    key: "unix_socket",
    flag: "unix-socket",
    env: "LARDER_UNIX_SOCKET",
    kind: Kind::Path,
    range: None,
    default: DefaultFrom::Unset,
    help: "Also listen on this Unix socket (a stale socket file is replaced).",
};

/// `unix_socket_mode`.
pub static UNIX_SOCKET_MODE: Setting = Setting {
    key: "unix_socket_mode",
    flag: "unix-socket-mode",
    env: "LARDER_UNIX_SOCKET_MODE",
    kind: Kind::FileMode,
    range: None,
    default: DefaultFrom::Text("0660"),
    help: "File mode of the Unix socket, octal; at least 0600.",
};

/// `worker_threads`.
pub static WORKER_THREADS: Setting = Setting {
    key: "worker_threads",
    flag: "worker-threads",
    env: "LARDER_WORKER_THREADS",
    kind: Kind::Count,
    range: Some((at(1), at(256))),
    // One is fastest beside the app on a small VPS: see docs/benchmarks.md.
    default: DefaultFrom::Text("1"),
    help: "Threads running gRPC; SQLite runs on its own threads besides these.",
};

/// `storage.synchronous`.
pub static SYNCHRONOUS: Setting = Setting {
    key: "storage.synchronous",
    flag: "synchronous",
    env: "LARDER_SYNCHRONOUS",
    kind: Kind::Choice(&["normal", "full"]),
    range: None,
    default: DefaultFrom::Component(|c| {
        Value::Text(
            match c.store.synchronous {
                Synchronous::Normal => "normal",
                Synchronous::Full => "full",
            }
            .into(),
        )
    }),
    help: "Durability of each commit: normal (survives a crash of the process) or full (also \
           a power loss).",
};

/// `storage.writer_cache`.
pub static WRITER_CACHE: Setting = Setting {
    key: "storage.writer_cache",
    flag: "writer-cache",
    env: "LARDER_WRITER_CACHE",
    kind: Kind::Size,
    range: Some((at(1 << 20), at(1 << 40))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.store.writer_cache_bytes)),
    help: "SQLite page cache of the writer connection. It stays full after a bulk load; the \
           pages it saves reads of are in the OS page cache anyway.",
};

/// `cache.max_memory`.
pub static MAX_MEMORY: Setting = Setting {
    key: "cache.max_memory",
    flag: "max-memory",
    env: "LARDER_MAX_MEMORY",
    kind: Kind::Size,
    range: Some((at(0), at(1 << 40))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.store.max_memory_bytes)),
    help: "Memory for the LRU in front of SQLite.",
};

/// `cache.max_disk`.
pub static MAX_DISK: Setting = Setting {
    key: "cache.max_disk",
    flag: "max-disk",
    env: "LARDER_MAX_DISK",
    kind: Kind::Size,
    range: Some((Bound::Setting(&MAX_VALUE), at(1 << 50))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.store.max_disk_bytes)),
    help: "Bound on the cache table on disk (each entry charged its namespace and key twice, \
           its value and 64 bytes); least recently used entries are evicted past it.",
};

/// `cache.max_value`.
pub static MAX_VALUE: Setting = Setting {
    key: "cache.max_value",
    flag: "max-value",
    env: "LARDER_MAX_VALUE",
    kind: Kind::Size,
    range: Some((at(1), at(1 << 30))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.server.limits.max_value_bytes as u64)),
    help: "Largest value accepted; the gRPC message limit follows it.",
};

/// `cache.max_key`.
pub static MAX_KEY: Setting = Setting {
    key: "cache.max_key",
    flag: "max-key",
    env: "LARDER_MAX_KEY",
    kind: Kind::Size,
    range: Some((at(1), at(KEY_BYTES_CEILING as u64))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.server.limits.max_key_bytes as u64)),
    help: "Longest key, also of rate-limit keys.",
};

/// `cache.max_batch`.
pub static MAX_BATCH: Setting = Setting {
    key: "cache.max_batch",
    flag: "max-batch",
    env: "LARDER_MAX_BATCH",
    kind: Kind::Count,
    range: Some((at(1), at(100_000))),
    default: DefaultFrom::Component(|c| Value::Count(c.server.limits.max_batch as u64)),
    help: "Most items in one GetMany, SetMany or DeleteMany.",
};

/// `session.idle_ttl`.
pub static SESSION_IDLE_TTL: Setting = Setting {
    key: "session.idle_ttl",
    flag: "session-idle-ttl",
    env: "LARDER_SESSION_IDLE_TTL",
    kind: Kind::Duration,
    range: Some((millis(1), Bound::Setting(&SESSION_MAX_TTL))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.sessions.default_idle_ttl)),
    help: "Idle TTL of a session created without one.",
};

/// `session.absolute_ttl`.
pub static SESSION_ABSOLUTE_TTL: Setting = Setting {
    key: "session.absolute_ttl",
    flag: "session-absolute-ttl",
    env: "LARDER_SESSION_ABSOLUTE_TTL",
    kind: Kind::Duration,
    range: Some((millis(1), Bound::Setting(&SESSION_MAX_TTL))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.sessions.default_absolute_ttl)),
    help: "Absolute TTL of a session created without one.",
};

/// `session.max_ttl`.
pub static SESSION_MAX_TTL: Setting = Setting {
    key: "session.max_ttl",
    flag: "session-max-ttl",
    env: "LARDER_SESSION_MAX_TTL",
    kind: Kind::Duration,
    range: Some((millis(1), secs(100 * 365 * 86_400))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.sessions.max_ttl)),
    help: "Longest idle or absolute TTL a client may ask for.",
};

/// `session.max_memory`.
pub static SESSION_MAX_MEMORY: Setting = Setting {
    key: "session.max_memory",
    flag: "session-max-memory",
    env: "LARDER_SESSION_MAX_MEMORY",
    kind: Kind::Size,
    range: Some((at(0), at(1 << 40))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.store.session_memory_bytes)),
    help: "Memory for the LRU of sessions (sessions on disk are never evicted).",
};

/// `session.max_per_user`.
pub static SESSION_MAX_PER_USER: Setting = Setting {
    key: "session.max_per_user",
    flag: "session-max-per-user",
    env: "LARDER_SESSION_MAX_PER_USER",
    kind: Kind::Count,
    range: Some((at(1), at(1_000_000))),
    default: DefaultFrom::Component(|c| Value::Count(c.server.sessions.max_per_user as u64)),
    help: "Most sessions of one user; creating one more revokes that user's oldest session.",
};

/// `session.max_disk`.
pub static SESSION_MAX_DISK: Setting = Setting {
    key: "session.max_disk",
    flag: "session-max-disk",
    env: "LARDER_SESSION_MAX_DISK",
    kind: Kind::Size,
    range: Some((at(64 << 10), at(1 << 50))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.server.sessions.max_disk_bytes)),
    help: "Bound on the sessions table on disk (each session charged twice its strings and \
           data plus 192 bytes); past it CreateSession answers RESOURCE_EXHAUSTED.",
};

/// `ratelimit.write_behind`.
pub static RATELIMIT_WRITE_BEHIND: Setting = Setting {
    key: "ratelimit.write_behind",
    flag: "ratelimit-write-behind",
    env: "LARDER_RATELIMIT_WRITE_BEHIND",
    kind: Kind::Duration,
    range: Some((millis(10), secs(600))),
    default: DefaultFrom::Component(|c| Value::Time(c.store.write_behind)),
    help: "Longest a rate-limit change stays in memory only, i.e. what a crash can lose.",
};

/// `ratelimit.max_memory`.
pub static RATELIMIT_MAX_MEMORY: Setting = Setting {
    key: "ratelimit.max_memory",
    flag: "ratelimit-max-memory",
    env: "LARDER_RATELIMIT_MAX_MEMORY",
    kind: Kind::Size,
    range: Some((at(0), at(1 << 40))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.store.limit_memory_bytes)),
    help: "Memory for rate-limit state; idle keys past it are left on disk.",
};

/// `ratelimit.max_keys`.
pub static RATELIMIT_MAX_KEYS: Setting = Setting {
    key: "ratelimit.max_keys",
    flag: "ratelimit-max-keys",
    env: "LARDER_RATELIMIT_MAX_KEYS",
    kind: Kind::Count,
    range: Some((at(1), at(1 << 32))),
    default: DefaultFrom::Component(|c| Value::Count(c.store.limit_max_keys)),
    help: "Hard cap on rate-limit keys in memory, changed or not (while state cannot be written, \
           nothing is evicted); new keys past it get ratelimit.when_full.",
};

/// `ratelimit.when_full`.
pub static RATELIMIT_WHEN_FULL: Setting = Setting {
    key: "ratelimit.when_full",
    flag: "ratelimit-when-full",
    env: "LARDER_RATELIMIT_WHEN_FULL",
    kind: Kind::Choice(&["deny", "allow"]),
    range: None,
    default: DefaultFrom::Component(|c| {
        Value::Text(
            match c.store.limit_when_full {
                WhenFull::Deny => "deny",
                WhenFull::Allow => "allow",
            }
            .into(),
        )
    }),
    help: "What a Check of a new key answers past ratelimit.max_keys: deny (not allowed, retry \
           after one write-behind interval) or allow (admitted, not remembered).",
};

/// `queue.lease`.
pub static QUEUE_LEASE: Setting = Setting {
    key: "queue.lease",
    flag: "queue-lease",
    env: "LARDER_QUEUE_LEASE",
    kind: Kind::Duration,
    range: Some((millis(1), secs(365 * 24 * 3600))),
    default: DefaultFrom::Component(|c| Value::Time(Duration::from_millis(c.store.queue.lease_ms))),
    help: "Lease of a dequeued job when the Dequeue names none; a job not acknowledged by its \
           end is handed out again.",
};

/// `queue.max_attempts`.
pub static QUEUE_MAX_ATTEMPTS: Setting = Setting {
    key: "queue.max_attempts",
    flag: "queue-max-attempts",
    env: "LARDER_QUEUE_MAX_ATTEMPTS",
    kind: Kind::Count,
    range: Some((at(1), at(u32::MAX as u64))),
    default: DefaultFrom::Component(|c| Value::Count(u64::from(c.store.queue.max_attempts))),
    help: "Deliveries of a job (when its Enqueue names none) before it moves to the dead letters.",
};

/// `queue.retry_min`.
pub static QUEUE_RETRY_MIN: Setting = Setting {
    key: "queue.retry_min",
    flag: "queue-retry-min",
    env: "LARDER_QUEUE_RETRY_MIN",
    kind: Kind::Duration,
    range: Some((millis(1), Bound::Setting(&QUEUE_RETRY_MAX))),
    default: DefaultFrom::Component(|c| {
        Value::Time(Duration::from_millis(c.store.queue.retry_min_ms))
    }),
    help: "Retry delay after a job's first failed delivery (a Nack without retry_after_ms); \
           doubled per attempt, with jitter.",
};

/// `queue.retry_max`.
pub static QUEUE_RETRY_MAX: Setting = Setting {
    key: "queue.retry_max",
    flag: "queue-retry-max",
    env: "LARDER_QUEUE_RETRY_MAX",
    kind: Kind::Duration,
    range: Some((millis(1), secs(365 * 24 * 3600))),
    default: DefaultFrom::Component(|c| {
        Value::Time(Duration::from_millis(c.store.queue.retry_max_ms))
    }),
    help: "Longest retry delay of the exponential backoff.",
};

/// `queue.max_jobs`.
pub static QUEUE_MAX_JOBS: Setting = Setting {
    key: "queue.max_jobs",
    flag: "queue-max-jobs",
    env: "LARDER_QUEUE_MAX_JOBS",
    kind: Kind::Count,
    range: Some((at(1), at(1 << 40))),
    default: DefaultFrom::Component(|c| Value::Count(c.store.queue.max_jobs)),
    help: "Most jobs one queue holds (ready, delayed, leased and dead); past it Enqueue \
           answers RESOURCE_EXHAUSTED.",
};

/// `queue.max_bytes`.
pub static QUEUE_MAX_BYTES: Setting = Setting {
    key: "queue.max_bytes",
    flag: "queue-max-bytes",
    env: "LARDER_QUEUE_MAX_BYTES",
    kind: Kind::Size,
    range: Some((Bound::Setting(&MAX_VALUE), at(1 << 50))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.store.queue.max_bytes)),
    help: "Most payload bytes one queue holds; past it Enqueue answers RESOURCE_EXHAUSTED.",
};

/// `server.drain_timeout`.
pub static DRAIN_TIMEOUT: Setting = Setting {
    key: "server.drain_timeout",
    flag: "drain-timeout",
    env: "LARDER_DRAIN_TIMEOUT",
    kind: Kind::Duration,
    range: Some((secs(0), secs(3600))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.drain_timeout)),
    help: "How long in-flight calls may finish after SIGTERM/SIGINT.",
};

/// `server.request_timeout`.
pub static REQUEST_TIMEOUT: Setting = Setting {
    key: "server.request_timeout",
    flag: "request-timeout",
    env: "LARDER_REQUEST_TIMEOUT",
    kind: Kind::Duration,
    range: Some((millis(1), secs(3600))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.request_timeout)),
    help: "Longest a call may run; a client's shorter deadline wins.",
};

/// `server.max_concurrent_requests`.
pub static MAX_CONCURRENT_REQUESTS: Setting = Setting {
    key: "server.max_concurrent_requests",
    flag: "max-concurrent-requests",
    env: "LARDER_MAX_CONCURRENT_REQUESTS",
    kind: Kind::Count,
    range: Some((at(1), at(1 << 20))),
    default: DefaultFrom::Component(|c| Value::Count(c.server.max_concurrent_requests as u64)),
    help: "Most calls in progress at once; more are refused with UNAVAILABLE.",
};

/// `server.max_connections`.
pub static MAX_CONNECTIONS: Setting = Setting {
    key: "server.max_connections",
    flag: "max-connections",
    env: "LARDER_MAX_CONNECTIONS",
    kind: Kind::Count,
    range: Some((at(1), at(1 << 20))),
    default: DefaultFrom::Component(|c| Value::Count(c.server.max_connections as u64)),
    help: "Most open client connections; more are closed at once.",
};

/// `server.max_inflight_bytes`. Its floor is one maximal message, which follows
/// `cache.max_value` (and the key and batch bounds); the config checks that beyond this range.
pub static MAX_INFLIGHT_BYTES: Setting = Setting {
    key: "server.max_inflight_bytes",
    flag: "max-inflight-bytes",
    env: "LARDER_MAX_INFLIGHT_BYTES",
    kind: Kind::Size,
    range: Some((Bound::Setting(&MAX_VALUE), at(1 << 40))),
    default: DefaultFrom::Component(|c| Value::Bytes(c.server.max_inflight_bytes)),
    help: "Most bytes of requests and answers held in memory at once (an answer until it is \
           written); past it calls are refused with UNAVAILABLE. At least one maximal message.",
};

/// `server.write_timeout`.
pub static WRITE_TIMEOUT: Setting = Setting {
    key: "server.write_timeout",
    flag: "write-timeout",
    env: "LARDER_WRITE_TIMEOUT",
    kind: Kind::Duration,
    range: Some((millis(10), secs(3600))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.write_timeout)),
    help: "How long a connection may read nothing of what is written to it before it is \
           closed, freeing the answers it holds.",
};

/// `server.max_connections_per_peer`.
pub static MAX_CONNECTIONS_PER_PEER: Setting = Setting {
    key: "server.max_connections_per_peer",
    flag: "max-connections-per-peer",
    env: "LARDER_MAX_CONNECTIONS_PER_PEER",
    kind: Kind::Count,
    range: Some((at(1), at(1 << 20))),
    default: DefaultFrom::Component(|c| Value::Count(c.server.max_connections_per_peer as u64)),
    help: "Most open TCP connections from one address (IPv6: one /64), loopback included; \
           more are closed at once. Unix socket connections are not counted.",
};

/// `server.auth_timeout`.
pub static AUTH_TIMEOUT: Setting = Setting {
    key: "server.auth_timeout",
    flag: "auth-timeout",
    env: "LARDER_AUTH_TIMEOUT",
    kind: Kind::Duration,
    range: Some((millis(1), secs(3600))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.auth_timeout)),
    help: "A connection that has not started a call other than health (past auth, when on) \
           this long after connecting is closed.",
};

/// `server.max_connection_age`.
pub static MAX_CONNECTION_AGE: Setting = Setting {
    key: "server.max_connection_age",
    flag: "max-connection-age",
    env: "LARDER_MAX_CONNECTION_AGE",
    kind: Kind::Duration,
    // Below a second every connection would spend its life reconnecting.
    range: Some((secs(1), secs(365 * 86_400))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.max_connection_age)),
    help: "Age at which a connection is sent GOAWAY; clients reconnect for their next calls.",
};

/// `server.max_connection_age_grace`.
pub static MAX_CONNECTION_AGE_GRACE: Setting = Setting {
    key: "server.max_connection_age_grace",
    flag: "max-connection-age-grace",
    env: "LARDER_MAX_CONNECTION_AGE_GRACE",
    kind: Kind::Duration,
    range: Some((secs(0), secs(86_400))),
    default: DefaultFrom::Component(|c| Value::Time(c.server.max_connection_age_grace)),
    help: "How long calls and streams may go on after the GOAWAY of server.max_connection_age \
           before the connection is closed.",
};

/// `server.max_health_watches`.
pub static MAX_HEALTH_WATCHES: Setting = Setting {
    key: "server.max_health_watches",
    flag: "max-health-watches",
    env: "LARDER_MAX_HEALTH_WATCHES",
    kind: Kind::Count,
    range: Some((at(0), at(1 << 20))),
    default: DefaultFrom::Component(|c| Value::Count(c.server.max_health_watches as u64)),
    help: "Most health Watch streams open at once over all connections; more are refused \
           with RESOURCE_EXHAUSTED.",
};

/// `server.max_pipeline_inflight`.
pub static MAX_PIPELINE_INFLIGHT: Setting = Setting {
    key: "server.max_pipeline_inflight",
    flag: "max-pipeline-inflight",
    env: "LARDER_MAX_PIPELINE_INFLIGHT",
    kind: Kind::Count,
    range: Some((at(1), at(1 << 16))),
    default: DefaultFrom::Component(|c| Value::Count(c.server.max_pipeline_inflight as u64)),
    help: "Most calls of one PipelineService/Run stream in flight at once; past it the server \
           stops reading the stream until an answer is sent (HTTP/2 flow control then slows \
           the client), and never refuses.",
};

/// `auth.token_file`.
pub static AUTH_TOKEN_FILE: Setting = Setting {
    key: "auth.token_file",
    flag: "auth-token-file",
    env: "LARDER_AUTH_TOKEN_FILE",
    kind: Kind::Path,
    range: None,
    default: DefaultFrom::Unset,
    help: "File of bearer tokens, one per line; calls without one of them are \
           UNAUTHENTICATED.",
};

/// `auth.unix_socket`. Without a token file there is nothing to turn on, so its default
/// applies only once `auth.token_file` is set.
pub static AUTH_UNIX_SOCKET: Setting = Setting {
    key: "auth.unix_socket",
    flag: "auth-unix-socket",
    env: "LARDER_AUTH_UNIX_SOCKET",
    kind: Kind::Bool,
    range: None,
    default: DefaultFrom::With(&AUTH_TOKEN_FILE, "true"),
    help: "Whether calls over the Unix socket need a token too (false: the socket's file \
           mode is the guard); only with auth.token_file.",
};

/// `tls.cert`.
pub static TLS_CERT: Setting = Setting {
    key: "tls.cert",
    flag: "tls-cert",
    env: "LARDER_TLS_CERT",
    kind: Kind::Path,
    range: None,
    default: DefaultFrom::Unset,
    help: "TLS certificate chain (PEM) for the TCP listener; needs tls.key.",
};

/// `tls.key`.
pub static TLS_KEY: Setting = Setting {
    key: "tls.key",
    flag: "tls-key",
    env: "LARDER_TLS_KEY",
    kind: Kind::Path,
    range: None,
    default: DefaultFrom::Unset,
    help: "TLS private key (PEM); needs tls.cert.",
};

/// `metrics.listen`.
pub static METRICS_LISTEN: Setting = Setting {
    key: "metrics.listen",
    flag: "metrics-listen",
    env: "LARDER_METRICS_LISTEN",
    kind: Kind::Address,
    range: None,
    default: DefaultFrom::Text("none"),
    help: "HTTP address serving Prometheus metrics at /metrics, or \"none\".",
};

/// `log.format`.
pub static LOG_FORMAT: Setting = Setting {
    key: "log.format",
    flag: "log-format",
    env: "LARDER_LOG_FORMAT",
    kind: Kind::Choice(&["text", "json"]),
    range: None,
    default: DefaultFrom::Text("text"),
    help: "Log format: text (human) or json (one object per line).",
};

/// `log.level`.
pub static LOG_LEVEL: Setting = Setting {
    key: "log.level",
    flag: "log-level",
    env: "LARDER_LOG_LEVEL",
    kind: Kind::LogFilter,
    range: None,
    default: DefaultFrom::Text("info"),
    help: "Log filter: trace, debug, info, warn, error or off, or a tracing directive list \
           such as \"warn,larder=debug\".",
};

/// Every setting, in the order of the config file, `check-config` and the docs table. The
/// sections of the file follow the first appearance of their keys here.
pub static SETTINGS: &[&Setting] = &[
    &DATA_DIR,
    &LISTEN,
    &UNIX_SOCKET,
    &UNIX_SOCKET_MODE,
    &WORKER_THREADS,
    &SYNCHRONOUS,
    &WRITER_CACHE,
    &MAX_MEMORY,
    &MAX_DISK,
    &MAX_VALUE,
    &MAX_KEY,
    &MAX_BATCH,
    &SESSION_IDLE_TTL,
    &SESSION_ABSOLUTE_TTL,
    &SESSION_MAX_TTL,
    &SESSION_MAX_MEMORY,
    &SESSION_MAX_PER_USER,
    &SESSION_MAX_DISK,
    &RATELIMIT_WRITE_BEHIND,
    &RATELIMIT_MAX_MEMORY,
    &RATELIMIT_MAX_KEYS,
    &RATELIMIT_WHEN_FULL,
    &QUEUE_LEASE,
    &QUEUE_MAX_ATTEMPTS,
    &QUEUE_RETRY_MIN,
    &QUEUE_RETRY_MAX,
    &QUEUE_MAX_JOBS,
    &QUEUE_MAX_BYTES,
    &DRAIN_TIMEOUT,
    &REQUEST_TIMEOUT,
    &MAX_CONCURRENT_REQUESTS,
    &MAX_CONNECTIONS,
    &MAX_INFLIGHT_BYTES,
    &WRITE_TIMEOUT,
    &MAX_CONNECTIONS_PER_PEER,
    &AUTH_TIMEOUT,
    &MAX_CONNECTION_AGE,
    &MAX_CONNECTION_AGE_GRACE,
    &MAX_HEALTH_WATCHES,
    &MAX_PIPELINE_INFLIGHT,
    &AUTH_TOKEN_FILE,
    &AUTH_UNIX_SOCKET,
    &TLS_CERT,
    &TLS_KEY,
    &METRICS_LISTEN,
    &LOG_FORMAT,
    &LOG_LEVEL,
];

/// Sections of the file, in order.
pub(crate) fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in SETTINGS.iter().filter_map(|s| s.section()) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn keys_flags_and_variables_are_unique_and_spelled_alike() {
        let (mut keys, mut flags, mut vars) = (HashSet::new(), HashSet::new(), HashSet::new());
        for s in SETTINGS {
            assert!(keys.insert(s.key), "{} twice", s.key);
            assert!(flags.insert(s.flag), "--{} twice", s.flag);
            assert!(vars.insert(s.env), "{} twice", s.env);
            let var = format!("LARDER_{}", s.flag.to_uppercase().replace('-', "_"));
            assert_eq!(s.env, var, "{}", s.key);
            assert!(!s.help.is_empty() && s.help.ends_with('.'), "{}", s.key);
            assert!(
                s.key.matches('.').count() <= 1,
                "{}: one level of sections",
                s.key
            );
        }
    }

    #[test]
    fn every_default_parses_and_lies_in_its_range() {
        let components = Components::defaults();
        let mut f = crate::config::FileConfig::default();
        for s in SETTINGS {
            if let Some(v) = s.default_value(&components) {
                f.set(s, v);
            }
        }
        for s in SETTINGS {
            crate::config::check_range(&f, s).unwrap();
        }
    }
}
