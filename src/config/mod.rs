//! The command line, the config file ([`mod@file`]) and the environment, merged into one
//! validated [`ServeConfig`]. Precedence, lowest first: built-in defaults, the file,
//! `LARDER_*` environment variables, flags. Every setting has a file key, a variable and a
//! flag; an error names the file key and the flag at fault.
//!
//! Merging happens in two stages, as the user wrote it and then as the daemon uses it: the
//! flags and variables are laid over the file (a [`FileConfig`] again, which is what
//! `larder check-config` prints, defaults filled in), then every value is range-checked into
//! the typed settings the server and store take.

pub mod file;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

pub use self::file::FileConfig;
use self::file::{format_duration, format_size, parse_duration, parse_size};
use crate::server::ServerSettings;
use crate::server::auth::AuthSettings;
use crate::server::tls::TlsSettings;
use crate::service::RequestLimits as Limits;
use crate::service::ratelimit::RateLimitSettings;
use crate::service::session::SessionSettings;
use crate::store::StoreConfig;
use crate::store::schema::Synchronous;

/// Larder: a shared cache, session store and rate limiter for small web apps, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Validate the configuration (file, environment, flags) and print the effective config
    /// as TOML; exits non-zero, naming the key, if anything is wrong.
    CheckConfig(ServeArgs),
    /// Copy the store to a new file, consistently, while the daemon keeps running (or not).
    Backup(BackupArgs),
    /// Measure a running daemon (and, with --redis, Redis doing the same jobs): ops/s and
    /// latency per op.
    Bench(crate::bench::BenchArgs),
}

/// Flags of `larder backup`. The data directory is found as `serve` finds it: the flag, then
/// `LARDER_DATA_DIR`, then the config file's `data_dir`, then the default.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// TOML config file to read data_dir from: the daemon's own.
    #[arg(long, env = "LARDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the store to copy [default: larder-data].
    #[arg(long, env = "LARDER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Replace DEST if it exists.
    #[arg(long)]
    pub force: bool,
    /// The file to write: a standalone SQLite database, what `larder.db` is replaced with to
    /// restore.
    pub dest: PathBuf,
}

impl BackupArgs {
    /// The data directory, with the precedence of `serve`. The config file must parse (an
    /// unknown key is an error, as for the daemon), but only `data_dir` is taken from it.
    pub fn resolve_data_dir(&self) -> anyhow::Result<PathBuf> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let args = ServeArgs {
            data_dir: self.data_dir.clone(),
            ..ServeArgs::default()
        };
        let mut effective = args.lay_over(file)?;
        fill_defaults(&mut effective);
        Ok(filled(&effective.data_dir))
    }
}

/// The built-in defaults, one place.
pub mod defaults {
    /// Data directory.
    pub const DATA_DIR: &str = "larder-data";
    /// TCP address.
    pub const LISTEN: &str = "127.0.0.1:7379";
    /// File mode of the Unix socket.
    pub const UNIX_SOCKET_MODE: u32 = 0o660;
    /// gRPC worker threads (one is fastest beside the app on a small VPS: see README).
    pub const WORKER_THREADS: u64 = 1;
    /// Memory LRU of the cache.
    pub const MAX_MEMORY: u64 = 256 << 20;
    /// Cache table bound on disk.
    pub const MAX_DISK: u64 = 4 << 30;
    /// Largest value.
    pub const MAX_VALUE: u64 = 16 << 20;
    /// Longest key.
    pub const MAX_KEY: u64 = 1024;
    /// Most items in a batch.
    pub const MAX_BATCH: u64 = 1000;
    /// Session idle TTL, seconds.
    pub const SESSION_IDLE_TTL_S: u64 = 30 * 60;
    /// Session absolute TTL, seconds.
    pub const SESSION_ABSOLUTE_TTL_S: u64 = 30 * 86_400;
    /// Longest session TTL, seconds.
    pub const SESSION_MAX_TTL_S: u64 = 365 * 86_400;
    /// Memory LRU of sessions.
    pub const SESSION_MAX_MEMORY: u64 = 64 << 20;
    /// Rate-limit write-behind delay, milliseconds.
    pub const WRITE_BEHIND_MS: u64 = 1000;
    /// Memory for rate-limit state.
    pub const RATELIMIT_MAX_MEMORY: u64 = 32 << 20;
    /// Drain deadline at shutdown, seconds.
    pub const DRAIN_TIMEOUT_S: u64 = 10;
    /// Longest a call may run, seconds.
    pub const REQUEST_TIMEOUT_S: u64 = 30;
    /// Calls in progress at once.
    pub const MAX_CONCURRENT_REQUESTS: u64 = 1024;
    /// Open client connections.
    pub const MAX_CONNECTIONS: u64 = 512;
    /// Log format.
    pub const LOG_FORMAT: &str = "text";
    /// Log filter.
    pub const LOG_LEVEL: &str = "info";
}

/// Flags of `larder serve` and `larder check-config`. Each is optional: what is not given
/// comes from its `LARDER_*` variable, then the config file, then the default.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file; variables and flags win over it.
    #[arg(long, env = "LARDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the database file, its WAL and the lock file [default: larder-data].
    #[arg(long, env = "LARDER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TCP address to listen on, HOST:PORT, or "none" to turn TCP off
    /// [default: 127.0.0.1:7379].
    #[arg(long, env = "LARDER_LISTEN")]
    pub listen: Option<String>,
    /// Also listen on this Unix socket (a stale socket file is replaced).
    #[arg(long, env = "LARDER_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,
    /// File mode of the Unix socket, octal [default: 0660].
    #[arg(long, env = "LARDER_UNIX_SOCKET_MODE")]
    pub unix_socket_mode: Option<String>,
    /// Threads running gRPC; SQLite runs on its own threads besides these [default: 1].
    #[arg(long, env = "LARDER_WORKER_THREADS")]
    pub worker_threads: Option<String>,
    /// Durability of each commit: normal (survives a crash of the process) or full (also a
    /// power loss) [default: normal].
    #[arg(long, env = "LARDER_SYNCHRONOUS")]
    pub synchronous: Option<String>,
    /// Memory for the LRU in front of SQLite [default: 256MiB].
    #[arg(long, env = "LARDER_MAX_MEMORY")]
    pub max_memory: Option<String>,
    /// Bound on the cache's keys and values on disk; least recently used entries are evicted
    /// past it [default: 4GiB].
    #[arg(long, env = "LARDER_MAX_DISK")]
    pub max_disk: Option<String>,
    /// Largest value accepted; the gRPC message limit follows it [default: 16MiB].
    #[arg(long, env = "LARDER_MAX_VALUE")]
    pub max_value: Option<String>,
    /// Longest key, also of rate-limit keys [default: 1KiB].
    #[arg(long, env = "LARDER_MAX_KEY")]
    pub max_key: Option<String>,
    /// Most items in one GetMany, SetMany or DeleteMany [default: 1000].
    #[arg(long, env = "LARDER_MAX_BATCH")]
    pub max_batch: Option<String>,
    /// Memory for the LRU of sessions (sessions on disk are never evicted) [default: 64MiB].
    #[arg(long, env = "LARDER_SESSION_MAX_MEMORY")]
    pub session_max_memory: Option<String>,
    /// Idle TTL of a session created without one [default: 30m].
    #[arg(long, env = "LARDER_SESSION_IDLE_TTL")]
    pub session_idle_ttl: Option<String>,
    /// Absolute TTL of a session created without one [default: 30days].
    #[arg(long, env = "LARDER_SESSION_ABSOLUTE_TTL")]
    pub session_absolute_ttl: Option<String>,
    /// Longest idle or absolute TTL a client may ask for [default: 365days].
    #[arg(long, env = "LARDER_SESSION_MAX_TTL")]
    pub session_max_ttl: Option<String>,
    /// Longest a rate-limit change stays in memory only, i.e. what a crash can lose
    /// [default: 1s].
    #[arg(long, env = "LARDER_RATELIMIT_WRITE_BEHIND")]
    pub ratelimit_write_behind: Option<String>,
    /// Memory for rate-limit state; idle keys past it are left on disk [default: 32MiB].
    #[arg(long, env = "LARDER_RATELIMIT_MAX_MEMORY")]
    pub ratelimit_max_memory: Option<String>,
    /// How long in-flight calls may finish after SIGTERM/SIGINT [default: 10s].
    #[arg(long, env = "LARDER_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Longest a call may run; a client's shorter deadline wins [default: 30s].
    #[arg(long, env = "LARDER_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Most calls in progress at once; more are refused with UNAVAILABLE [default: 1024].
    #[arg(long, env = "LARDER_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<String>,
    /// Most open client connections; more are closed at once [default: 512].
    #[arg(long, env = "LARDER_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// File of bearer tokens, one per line; calls without one of them are UNAUTHENTICATED.
    #[arg(long, env = "LARDER_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Whether calls over the Unix socket need a token too (false: the socket's file mode is
    /// the guard) [default: true].
    #[arg(long, env = "LARDER_AUTH_UNIX_SOCKET")]
    pub auth_unix_socket: Option<String>,
    /// TLS certificate chain (PEM) for the TCP listener; needs --tls-key.
    #[arg(long, env = "LARDER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, env = "LARDER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// HTTP address serving Prometheus metrics at /metrics, or "none" [default: none].
    #[arg(long, env = "LARDER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log format: text (human) or json (one object per line) [default: text].
    #[arg(long, env = "LARDER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or tracing's directive syntax
    /// [default: info].
    #[arg(long, env = "LARDER_LOG_LEVEL")]
    pub log_level: Option<String>,
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

/// Replaces `slot` with `value` when the flag or variable was given.
fn overlay<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

impl ServeArgs {
    /// Merges the flags and variables over the config file (if any) and checks the result;
    /// the error names the key and flag at fault.
    pub fn into_config(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut effective = self.lay_over(file)?;
        fill_defaults(&mut effective);
        build(effective)
    }

    /// The file with every flag or variable that was given laid over it. Flags and variables
    /// arrive as text and are parsed here, so that a bad one is named in all three spellings,
    /// like a bad value in the file.
    fn lay_over(self, mut f: FileConfig) -> anyhow::Result<FileConfig> {
        overlay(&mut f.data_dir, self.data_dir);
        overlay(&mut f.listen, self.listen);
        overlay(&mut f.unix_socket, self.unix_socket);
        overlay(&mut f.unix_socket_mode, self.unix_socket_mode);
        overlay(
            &mut f.worker_threads,
            number(self.worker_threads, "worker_threads", "worker-threads")?,
        );
        overlay(&mut f.storage.synchronous, self.synchronous);
        overlay(
            &mut f.cache.max_memory,
            size(self.max_memory, "cache.max_memory", "max-memory")?,
        );
        overlay(
            &mut f.cache.max_disk,
            size(self.max_disk, "cache.max_disk", "max-disk")?,
        );
        overlay(
            &mut f.cache.max_value,
            size(self.max_value, "cache.max_value", "max-value")?,
        );
        overlay(
            &mut f.cache.max_key,
            size(self.max_key, "cache.max_key", "max-key")?,
        );
        overlay(
            &mut f.cache.max_batch,
            number(self.max_batch, "cache.max_batch", "max-batch")?,
        );
        overlay(
            &mut f.session.max_memory,
            size(
                self.session_max_memory,
                "session.max_memory",
                "session-max-memory",
            )?,
        );
        overlay(
            &mut f.session.idle_ttl,
            duration(
                self.session_idle_ttl,
                "session.idle_ttl",
                "session-idle-ttl",
            )?,
        );
        overlay(
            &mut f.session.absolute_ttl,
            duration(
                self.session_absolute_ttl,
                "session.absolute_ttl",
                "session-absolute-ttl",
            )?,
        );
        overlay(
            &mut f.session.max_ttl,
            duration(self.session_max_ttl, "session.max_ttl", "session-max-ttl")?,
        );
        overlay(
            &mut f.ratelimit.write_behind,
            duration(
                self.ratelimit_write_behind,
                "ratelimit.write_behind",
                "ratelimit-write-behind",
            )?,
        );
        overlay(
            &mut f.ratelimit.max_memory,
            size(
                self.ratelimit_max_memory,
                "ratelimit.max_memory",
                "ratelimit-max-memory",
            )?,
        );
        overlay(
            &mut f.server.drain_timeout,
            duration(self.drain_timeout, "server.drain_timeout", "drain-timeout")?,
        );
        overlay(
            &mut f.server.request_timeout,
            duration(
                self.request_timeout,
                "server.request_timeout",
                "request-timeout",
            )?,
        );
        overlay(
            &mut f.server.max_concurrent_requests,
            number(
                self.max_concurrent_requests,
                "server.max_concurrent_requests",
                "max-concurrent-requests",
            )?,
        );
        overlay(
            &mut f.server.max_connections,
            number(
                self.max_connections,
                "server.max_connections",
                "max-connections",
            )?,
        );
        overlay(&mut f.auth.token_file, self.auth_token_file);
        overlay(
            &mut f.auth.unix_socket,
            boolean(
                self.auth_unix_socket,
                "auth.unix_socket",
                "auth-unix-socket",
            )?,
        );
        overlay(&mut f.tls.cert, self.tls_cert);
        overlay(&mut f.tls.key, self.tls_key);
        overlay(&mut f.metrics.listen, self.metrics_listen);
        overlay(&mut f.log.format, self.log_format);
        overlay(&mut f.log.level, self.log_level);
        Ok(f)
    }
}

/// A size given as a flag or variable.
fn size(v: Option<String>, key: &str, flag: &str) -> anyhow::Result<Option<u64>> {
    v.map(|t| parse_size(&t).map_err(|e| anyhow::anyhow!("{}: {e:#}", named(key, flag))))
        .transpose()
}

/// A duration given as a flag or variable.
fn duration(v: Option<String>, key: &str, flag: &str) -> anyhow::Result<Option<Duration>> {
    v.map(|t| parse_duration(&t).map_err(|e| anyhow::anyhow!("{}: {e:#}", named(key, flag))))
        .transpose()
}

/// A whole number given as a flag or variable.
fn number(v: Option<String>, key: &str, flag: &str) -> anyhow::Result<Option<u64>> {
    v.map(|t| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("{}: {t:?} is not a whole number", named(key, flag)))
    })
    .transpose()
}

/// A boolean given as a flag or variable: `true` or `false`.
fn boolean(v: Option<String>, key: &str, flag: &str) -> anyhow::Result<Option<bool>> {
    v.map(|t| match t.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(anyhow::anyhow!(
            "{}: {other:?} is not a boolean; expected true or false",
            named(key, flag)
        )),
    })
    .transpose()
}

/// Fills every setting still unset with its default, so the effective config shows all.
fn fill_defaults(f: &mut FileConfig) {
    use defaults::*;
    let secs = Duration::from_secs;
    f.data_dir.get_or_insert_with(|| DATA_DIR.into());
    f.listen.get_or_insert_with(|| LISTEN.into());
    f.unix_socket_mode
        .get_or_insert_with(|| format!("{UNIX_SOCKET_MODE:04o}"));
    f.worker_threads.get_or_insert(WORKER_THREADS);
    f.storage.synchronous.get_or_insert_with(|| "normal".into());
    f.cache.max_memory.get_or_insert(MAX_MEMORY);
    f.cache.max_disk.get_or_insert(MAX_DISK);
    f.cache.max_value.get_or_insert(MAX_VALUE);
    f.cache.max_key.get_or_insert(MAX_KEY);
    f.cache.max_batch.get_or_insert(MAX_BATCH);
    f.session.idle_ttl.get_or_insert(secs(SESSION_IDLE_TTL_S));
    f.session
        .absolute_ttl
        .get_or_insert(secs(SESSION_ABSOLUTE_TTL_S));
    f.session.max_ttl.get_or_insert(secs(SESSION_MAX_TTL_S));
    f.session.max_memory.get_or_insert(SESSION_MAX_MEMORY);
    f.ratelimit
        .write_behind
        .get_or_insert(Duration::from_millis(WRITE_BEHIND_MS));
    f.ratelimit.max_memory.get_or_insert(RATELIMIT_MAX_MEMORY);
    f.server.drain_timeout.get_or_insert(secs(DRAIN_TIMEOUT_S));
    f.server
        .request_timeout
        .get_or_insert(secs(REQUEST_TIMEOUT_S));
    f.server
        .max_concurrent_requests
        .get_or_insert(MAX_CONCURRENT_REQUESTS);
    f.server.max_connections.get_or_insert(MAX_CONNECTIONS);
    if f.auth.token_file.is_some() {
        f.auth.unix_socket.get_or_insert(true);
    }
    f.metrics.listen.get_or_insert_with(|| "none".into());
    f.log.format.get_or_insert_with(|| LOG_FORMAT.into());
    f.log.level.get_or_insert_with(|| LOG_LEVEL.into());
}

/// A value [`fill_defaults`] has set.
fn filled<T: Clone>(v: &Option<T>) -> T {
    v.clone()
        .expect("fill_defaults sets every value it is asked for")
}

/// "cache.max_value (--max-value, LARDER_MAX_VALUE)": how errors name a setting, in each of
/// the three places it can be given.
fn named(key: &str, flag: &str) -> String {
    let var = flag.to_uppercase().replace('-', "_");
    format!("{key} (--{flag}, LARDER_{var})")
}

/// Checks `lo <= n <= hi`, naming the setting.
fn in_range(
    n: u64,
    lo: u64,
    hi: u64,
    key: &str,
    flag: &str,
    show: fn(u64) -> String,
) -> anyhow::Result<u64> {
    if n < lo || n > hi {
        bail!(
            "{}: {} is out of range; it must be between {} and {}",
            named(key, flag),
            show(n),
            show(lo),
            show(hi)
        );
    }
    Ok(n)
}

/// Checks a duration is between `lo` and `hi`, naming the setting.
fn duration_in(
    d: Duration,
    lo: Duration,
    hi: Duration,
    key: &str,
    flag: &str,
) -> anyhow::Result<Duration> {
    if d < lo || d > hi {
        bail!(
            "{}: {} is out of range; it must be between {} and {}",
            named(key, flag),
            format_duration(d),
            format_duration(lo),
            format_duration(hi)
        );
    }
    Ok(d)
}

/// A HOST:PORT address (the host may be a name, an IPv4 address or a bracketed IPv6 one).
fn check_address(addr: &str, key: &str, flag: &str) -> anyhow::Result<()> {
    let port = addr.rsplit_once(':').and_then(|(host, port)| {
        (!host.is_empty())
            .then(|| port.parse::<u16>().ok())
            .flatten()
    });
    if port.is_none() {
        bail!(
            "{}: {addr:?} is not HOST:PORT (e.g. 127.0.0.1:7379), nor \"none\"",
            named(key, flag)
        );
    }
    Ok(())
}

/// `Some(addr)`, or `None` for "none".
fn address_or_none(addr: &str, key: &str, flag: &str) -> anyhow::Result<Option<String>> {
    match addr.trim() {
        "none" => Ok(None),
        a => {
            check_address(a, key, flag)?;
            Ok(Some(a.to_owned()))
        }
    }
}

/// Checks the merged settings and builds what the daemon runs with.
fn build(effective: FileConfig) -> anyhow::Result<ServeConfig> {
    let f = &effective;
    let bytes = |n: u64| format_size(n);
    let plain = |n: u64| n.to_string();

    let listen = address_or_none(&filled(&f.listen), "listen", "listen")?;
    if listen.is_none() && f.unix_socket.is_none() {
        bail!(
            "listen (--listen) is \"none\" and no unix_socket (--unix-socket) is set: nothing would be served"
        );
    }
    let mode_text = filled(&f.unix_socket_mode);
    let unix_socket_mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| {
            format!(
                "{}: {mode_text:?} is not an octal file mode like \"0660\"",
                named("unix_socket_mode", "unix-socket-mode")
            )
        })?;
    if unix_socket_mode & 0o600 != 0o600 {
        bail!(
            "{}: {mode_text:?} would keep the daemon's own user from using its socket; \
             it needs at least 0600",
            named("unix_socket_mode", "unix-socket-mode")
        );
    }
    let worker_threads = in_range(
        filled(&f.worker_threads),
        1,
        256,
        "worker_threads",
        "worker-threads",
        plain,
    )?;

    let synchronous = match filled(&f.storage.synchronous).as_str() {
        "normal" => Synchronous::Normal,
        "full" => Synchronous::Full,
        other => bail!(
            "{}: {other:?} is not a mode; expected \"normal\" or \"full\"",
            named("storage.synchronous", "synchronous")
        ),
    };

    let max_value = in_range(
        filled(&f.cache.max_value),
        1,
        1 << 30,
        "cache.max_value",
        "max-value",
        bytes,
    )?;
    let max_key = in_range(
        filled(&f.cache.max_key),
        1,
        64 << 10,
        "cache.max_key",
        "max-key",
        bytes,
    )?;
    let max_batch = in_range(
        filled(&f.cache.max_batch),
        1,
        100_000,
        "cache.max_batch",
        "max-batch",
        plain,
    )?;
    let max_memory = in_range(
        filled(&f.cache.max_memory),
        0,
        1 << 40,
        "cache.max_memory",
        "max-memory",
        bytes,
    )?;
    let max_disk = in_range(
        filled(&f.cache.max_disk),
        max_value,
        1 << 50,
        "cache.max_disk",
        "max-disk",
        bytes,
    )
    .context("the disk bound must hold at least one value of cache.max_value")?;

    let year = Duration::from_secs(365 * 86_400);
    let ms = Duration::from_millis(1);
    let max_ttl = duration_in(
        filled(&f.session.max_ttl),
        ms,
        100 * year,
        "session.max_ttl",
        "session-max-ttl",
    )?;
    let idle_ttl = duration_in(
        filled(&f.session.idle_ttl),
        ms,
        max_ttl,
        "session.idle_ttl",
        "session-idle-ttl",
    )
    .context("session TTLs must be at least 1ms and at most session.max_ttl")?;
    let absolute_ttl = duration_in(
        filled(&f.session.absolute_ttl),
        ms,
        max_ttl,
        "session.absolute_ttl",
        "session-absolute-ttl",
    )
    .context("session TTLs must be at least 1ms and at most session.max_ttl")?;
    let session_memory = in_range(
        filled(&f.session.max_memory),
        0,
        1 << 40,
        "session.max_memory",
        "session-max-memory",
        bytes,
    )?;

    let policies = f.ratelimit.rules()?;
    let write_behind = duration_in(
        filled(&f.ratelimit.write_behind),
        Duration::from_millis(10),
        Duration::from_secs(600),
        "ratelimit.write_behind",
        "ratelimit-write-behind",
    )?;
    let limit_memory = in_range(
        filled(&f.ratelimit.max_memory),
        0,
        1 << 40,
        "ratelimit.max_memory",
        "ratelimit-max-memory",
        bytes,
    )?;

    let drain_timeout = duration_in(
        filled(&f.server.drain_timeout),
        Duration::ZERO,
        Duration::from_secs(3600),
        "server.drain_timeout",
        "drain-timeout",
    )?;
    let request_timeout = duration_in(
        filled(&f.server.request_timeout),
        ms,
        Duration::from_secs(3600),
        "server.request_timeout",
        "request-timeout",
    )?;
    let max_concurrent_requests = in_range(
        filled(&f.server.max_concurrent_requests),
        1,
        1 << 20,
        "server.max_concurrent_requests",
        "max-concurrent-requests",
        plain,
    )?;
    let max_connections = in_range(
        filled(&f.server.max_connections),
        1,
        1 << 20,
        "server.max_connections",
        "max-connections",
        plain,
    )?;

    let auth = match &f.auth.token_file {
        Some(path) => Some(AuthSettings {
            token_file: path.clone(),
            unix_socket: f.auth.unix_socket.unwrap_or(true),
        }),
        None if f.auth.unix_socket.is_some() => bail!(
            "{} is set but there is no auth.token_file (--auth-token-file): without tokens \
             there is no authentication to turn on or off",
            named("auth.unix_socket", "auth-unix-socket")
        ),
        None => None,
    };
    let tls = match (&f.tls.cert, &f.tls.key) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        (Some(_), None) => bail!(
            "{} is set without {}",
            named("tls.cert", "tls-cert"),
            named("tls.key", "tls-key")
        ),
        (None, Some(_)) => bail!(
            "{} is set without {}",
            named("tls.key", "tls-key"),
            named("tls.cert", "tls-cert")
        ),
    };
    if tls.is_some() && listen.is_none() {
        bail!("tls (--tls-cert, --tls-key) applies to the TCP listener, but listen is \"none\"");
    }
    let metrics_listen = address_or_none(
        &filled(&f.metrics.listen),
        "metrics.listen",
        "metrics-listen",
    )?;
    if metrics_listen.is_some() && metrics_listen == listen {
        bail!(
            "{} must differ from {}",
            named("metrics.listen", "metrics-listen"),
            named("listen", "listen")
        );
    }

    let log_format = match filled(&f.log.format).as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => bail!(
            "{}: {other:?} is not a format; expected \"text\" or \"json\"",
            named("log.format", "log-format")
        ),
    };
    let log_level = filled(&f.log.level);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        bail!(
            "{}: {log_level:?} is not a log filter: {e}",
            named("log.level", "log-level")
        );
    }

    let mut store = StoreConfig::new(filled(&f.data_dir));
    store.synchronous = synchronous;
    store.max_memory_bytes = max_memory;
    store.max_disk_bytes = max_disk;
    store.session_memory_bytes = session_memory;
    store.limit_memory_bytes = limit_memory;
    store.write_behind = write_behind;
    let server = ServerSettings {
        limits: Limits {
            max_value_bytes: max_value as usize,
            max_key_bytes: max_key as usize,
            max_batch: max_batch as usize,
            ..Limits::default()
        },
        sessions: SessionSettings {
            default_idle_ttl: idle_ttl,
            default_absolute_ttl: absolute_ttl,
            max_ttl,
            ..SessionSettings::default()
        },
        ratelimit: RateLimitSettings {
            policies: Arc::new(policies),
        },
        drain_timeout,
        request_timeout,
        max_concurrent_requests: max_concurrent_requests as usize,
        max_connections: max_connections as usize,
        handshake_timeout: crate::server::admission::HANDSHAKE_TIMEOUT,
        auth,
        tls,
    };
    Ok(ServeConfig {
        listen,
        unix_socket: f.unix_socket.clone(),
        unix_socket_mode,
        worker_threads: worker_threads as usize,
        store,
        server,
        metrics_listen,
        log_format,
        log_level,
        effective,
    })
}

impl ServeConfig {
    /// The effective config as TOML, for `larder check-config`. It holds no secret: tokens
    /// stay in their file, and only the file's path is shown.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        self.effective.to_toml()
    }
}

#[cfg(test)]
mod tests;
