//! The command line (flags, each also readable from a `LARDER_*` environment variable), the
//! config file ([`mod@file`]), and the one validated [`ServeConfig`] they become. A flag or its
//! variable wins over the file.

pub mod file;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::server::ServerSettings;
use crate::service::Limits;
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
}

/// Durability of each commit, as given on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SynchronousArg {
    /// Durable against a crash of the process (SQLite synchronous=NORMAL in WAL mode).
    Normal,
    /// Durable against power loss (fsync on every commit).
    Full,
}

/// Flags of `larder serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (rate-limit policies and settings); flags and variables win over it.
    #[arg(long, env = "LARDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the database file, its WAL and the lock file.
    #[arg(long, env = "LARDER_DATA_DIR", default_value = "larder-data")]
    pub data_dir: PathBuf,
    /// TCP address to listen on, HOST:PORT, or "none" to turn TCP off.
    #[arg(long, env = "LARDER_LISTEN", default_value = "127.0.0.1:7379")]
    pub listen: String,
    /// Also listen on this Unix socket (mode 0660; a stale socket file is replaced).
    #[arg(long, env = "LARDER_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,
    /// Threads running gRPC (SQLite runs on its own threads besides these). One is fastest
    /// when the app shares the machine: measured 1.1x the throughput of two, at less CPU per
    /// call, with the client on the same two cores.
    #[arg(long, env = "LARDER_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// Durability of each commit.
    #[arg(long, env = "LARDER_SYNCHRONOUS", value_enum, default_value = "normal")]
    pub synchronous: SynchronousArg,
    /// Memory for the LRU in front of SQLite (e.g. 256MiB).
    #[arg(long, env = "LARDER_MAX_MEMORY", default_value = "256MiB")]
    pub max_memory: ByteSize,
    /// Bound on the cache's keys and values on disk; least recently used entries are evicted
    /// past it (e.g. 4GiB).
    #[arg(long, env = "LARDER_MAX_DISK", default_value = "4GiB")]
    pub max_disk: ByteSize,
    /// Memory for the LRU of sessions in front of SQLite (sessions on disk are never evicted).
    #[arg(long, env = "LARDER_SESSION_MAX_MEMORY", default_value = "64MiB")]
    pub session_max_memory: ByteSize,
    /// Idle TTL of a session created without one (e.g. 30m): it ends after this long unused.
    #[arg(long, env = "LARDER_SESSION_IDLE_TTL", default_value = "30m", value_parser = humantime::parse_duration)]
    pub session_idle_ttl: Duration,
    /// Absolute TTL of a session created without one (e.g. 30d): it ends after this long
    /// however much it is used.
    #[arg(long, env = "LARDER_SESSION_ABSOLUTE_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub session_absolute_ttl: Duration,
    /// Longest idle or absolute TTL a client may ask for.
    #[arg(long, env = "LARDER_SESSION_MAX_TTL", default_value = "365days", value_parser = humantime::parse_duration)]
    pub session_max_ttl: Duration,
    /// Longest a rate-limit change stays in memory only, i.e. what a crash can lose (e.g. 1s;
    /// default 1s, or `ratelimit.write_behind` in the config file).
    #[arg(long, env = "LARDER_RATELIMIT_WRITE_BEHIND", value_parser = humantime::parse_duration)]
    pub ratelimit_write_behind: Option<Duration>,
    /// Memory for rate-limit state; idle keys past it are evicted to disk (e.g. 32MiB;
    /// default 32MiB, or `ratelimit.max_memory` in the config file).
    #[arg(long, env = "LARDER_RATELIMIT_MAX_MEMORY")]
    pub ratelimit_max_memory: Option<ByteSize>,
    /// Largest value accepted (the gRPC message limit follows it).
    #[arg(long, env = "LARDER_MAX_VALUE", default_value = "16MiB")]
    pub max_value: ByteSize,
    /// How long in-flight calls may finish after SIGTERM/SIGINT (e.g. 10s).
    #[arg(long, env = "LARDER_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Log filter (error, warn, info, debug, trace, or tracing's directive syntax).
    #[arg(long, env = "LARDER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// TCP address, `None` when TCP is off.
    pub listen: Option<String>,
    /// Unix socket path.
    pub unix_socket: Option<PathBuf>,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Store settings.
    pub store: StoreConfig,
    /// Server settings.
    pub server: ServerSettings,
    /// Log filter.
    pub log_level: String,
}

impl ServeArgs {
    /// Checks the flags and builds the config; the error names the flag at fault.
    pub fn into_config(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => file::FileConfig::load(path)?,
            None => file::FileConfig::default(),
        };
        let policies = file.ratelimit.rules()?;
        let write_behind = match self.ratelimit_write_behind {
            Some(d) => d,
            None => file
                .ratelimit
                .write_behind()?
                .unwrap_or(Duration::from_secs(1)),
        };
        if write_behind < Duration::from_millis(10) || write_behind > Duration::from_secs(600) {
            anyhow::bail!(
                "--ratelimit-write-behind (ratelimit.write_behind) must be between 10ms and 10m"
            );
        }
        let limit_memory = match self.ratelimit_max_memory {
            Some(b) => b,
            None => file.ratelimit.max_memory()?.unwrap_or(ByteSize::mib(32)),
        };
        let listen = match self.listen.trim() {
            "none" | "" => None,
            addr => Some(addr.to_owned()),
        };
        if listen.is_none() && self.unix_socket.is_none() {
            anyhow::bail!("--listen none needs --unix-socket: otherwise nothing would be served");
        }
        if self.worker_threads == 0 || self.worker_threads > 256 {
            anyhow::bail!("--worker-threads must be between 1 and 256");
        }
        let max_value = self.max_value.as_u64();
        if max_value == 0 || max_value > 1 << 30 {
            anyhow::bail!("--max-value must be between 1 byte and 1GiB");
        }
        if self.max_disk.as_u64() < max_value {
            anyhow::bail!("--max-disk must be at least --max-value");
        }
        let ms = |d: Duration| d.as_millis();
        if ms(self.session_max_ttl) == 0
            || self.session_max_ttl > Duration::from_secs(100 * 365 * 24 * 3600)
        {
            anyhow::bail!("--session-max-ttl must be between 1ms and 100 years");
        }
        for (flag, ttl) in [
            ("--session-idle-ttl", self.session_idle_ttl),
            ("--session-absolute-ttl", self.session_absolute_ttl),
        ] {
            if ms(ttl) == 0 || ttl > self.session_max_ttl {
                anyhow::bail!("{flag} must be at least 1ms and at most --session-max-ttl");
            }
        }
        let mut store = StoreConfig::new(self.data_dir);
        store.synchronous = match self.synchronous {
            SynchronousArg::Normal => Synchronous::Normal,
            SynchronousArg::Full => Synchronous::Full,
        };
        store.max_memory_bytes = self.max_memory.as_u64();
        store.max_disk_bytes = self.max_disk.as_u64();
        store.session_memory_bytes = self.session_max_memory.as_u64();
        store.limit_memory_bytes = limit_memory.as_u64();
        store.write_behind = write_behind;
        let server = ServerSettings {
            limits: Limits {
                max_value_bytes: max_value as usize,
                ..Limits::default()
            },
            sessions: SessionSettings {
                default_idle_ttl: self.session_idle_ttl,
                default_absolute_ttl: self.session_absolute_ttl,
                max_ttl: self.session_max_ttl,
                ..SessionSettings::default()
            },
            ratelimit: RateLimitSettings {
                policies: Arc::new(policies),
            },
            drain_timeout: self.drain_timeout,
        };
        Ok(ServeConfig {
            listen,
            unix_socket: self.unix_socket,
            worker_threads: self.worker_threads,
            store,
            server,
            log_level: self.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<ServeConfig> {
        let mut all = vec!["larder", "serve"];
        all.extend_from_slice(args);
        let Command::Serve(args) = Cli::try_parse_from(all)?.command;
        args.into_config()
    }

    #[test]
    fn defaults_need_no_flags() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.as_deref(), Some("127.0.0.1:7379"));
        assert_eq!(c.store.data_dir, PathBuf::from("larder-data"));
        assert_eq!(c.server.limits.max_value_bytes, 16 << 20);
        assert_eq!(c.store.max_memory_bytes, 256 << 20);
    }

    #[test]
    fn listen_none_needs_a_socket() {
        assert!(parse(&["--listen", "none"]).is_err());
        let c = parse(&["--listen", "none", "--unix-socket", "/tmp/l.sock"]).unwrap();
        assert!(c.listen.is_none());
    }

    #[test]
    fn sizes_and_durations_are_human() {
        let c = parse(&["--max-memory", "1MiB", "--drain-timeout", "1500ms"]).unwrap();
        assert_eq!(c.store.max_memory_bytes, 1 << 20);
        assert_eq!(c.server.drain_timeout, Duration::from_millis(1500));
        assert!(parse(&["--max-memory", "lots"]).is_err());
        assert!(parse(&["--worker-threads", "0"]).is_err());
        let c = parse(&[
            "--session-idle-ttl",
            "15m",
            "--session-absolute-ttl",
            "7days",
        ])
        .unwrap();
        assert_eq!(c.server.sessions.default_idle_ttl, Duration::from_secs(900));
        assert_eq!(
            c.server.sessions.default_absolute_ttl,
            Duration::from_secs(7 * 86400)
        );
        assert!(parse(&["--session-idle-ttl", "0s"]).is_err());
        assert!(parse(&["--ratelimit-write-behind", "1ms"]).is_err());
        let c = parse(&["--ratelimit-write-behind", "250ms"]).unwrap();
        assert_eq!(c.store.write_behind, Duration::from_millis(250));
        assert!(parse(&["--session-absolute-ttl", "400days"]).is_err());
    }

    #[test]
    fn the_config_file_gives_policies_and_flags_win_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("larder.toml");
        std::fs::write(
            &path,
            "[ratelimit]\nwrite_behind = \"300ms\"\nmax_memory = \"4MiB\"\n\n\
             [ratelimit.policies.ai_chat]\nlimit = 60\nperiod = \"1m\"\n\
             algorithm = \"sliding_window\"\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let c = parse(&["--config", file]).unwrap();
        assert_eq!(c.store.write_behind, Duration::from_millis(300));
        assert_eq!(c.store.limit_memory_bytes, 4 << 20);
        let chat = c.server.ratelimit.policies["ai_chat"];
        assert_eq!((chat.limit(), chat.period_ms()), (60, 60_000));
        let c = parse(&["--config", file, "--ratelimit-write-behind", "2s"]).unwrap();
        assert_eq!(c.store.write_behind, Duration::from_secs(2));
        assert_eq!(
            parse(&[]).unwrap().store.write_behind,
            Duration::from_secs(1)
        );

        std::fs::write(
            &path,
            "[ratelimit.policies.chat]\nlimit = 0\nperiod = \"1m\"\n",
        )
        .unwrap();
        let e = format!("{:#}", parse(&["--config", file]).unwrap_err());
        assert!(e.contains("ratelimit.policies.chat.limit"), "{e}");
        let e = format!(
            "{:#}",
            parse(&["--config", "/nonexistent/larder.toml"]).unwrap_err()
        );
        assert!(e.contains("/nonexistent/larder.toml"), "{e}");
    }
}
