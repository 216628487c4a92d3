//! Tests of merging flags over the file over the defaults, and of every rejection.
//! (Environment variables are exercised through the binary in `tests/suite/ops.rs`, since
//! changing this process's environment would race with the other tests.)

use std::path::Path;
use std::time::Duration;

use super::*;

/// `--config`, as the binary declares it.
fn config_flag() -> clap::Arg {
    clap::Arg::new("config")
        .long("config")
        .value_parser(clap::value_parser!(PathBuf))
}

/// The settings' flags as `larder serve` takes them (without their variables: the
/// environment is the binary's tests' to set).
fn parse(args: &[&str]) -> anyhow::Result<ServeConfig> {
    let mut all = vec!["larder"];
    all.extend_from_slice(args);
    let m = clap::Command::new("larder")
        .arg(config_flag())
        .args(args_without_env())
        .try_get_matches_from(all)?;
    ServeConfig::load(
        m.get_one::<PathBuf>("config").map(PathBuf::as_path),
        &Given::from_matches(&m),
    )
}

/// [`args`], not reading the environment, so that a `LARDER_*` variable of whoever runs the
/// tests changes nothing.
fn args_without_env() -> Vec<clap::Arg> {
    args().into_iter().map(|a| a.env(None)).collect()
}

fn error(args: &[&str]) -> String {
    format!("{:#}", parse(args).unwrap_err())
}

/// A config file in a temp dir, and `--config PATH`.
struct File {
    _dir: tempfile::TempDir,
    path: String,
}

impl File {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("larder.toml");
        std::fs::write(&path, text).unwrap();
        Self {
            path: path.to_str().unwrap().to_owned(),
            _dir: dir,
        }
    }

    fn with(&self, args: &[&str]) -> anyhow::Result<ServeConfig> {
        let mut all = vec!["--config", self.path.as_str()];
        all.extend_from_slice(args);
        parse(&all)
    }
}

#[test]
fn defaults_need_no_flags() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.listen.as_deref(), Some("127.0.0.1:7379"));
    assert_eq!(c.unix_socket, None);
    assert_eq!(c.unix_socket_mode, 0o660);
    assert_eq!(c.worker_threads, 1);
    assert_eq!(c.store.data_dir, PathBuf::from("larder-data"));
    assert_eq!(c.store.synchronous, Synchronous::Normal);
    assert_eq!(c.server.limits.max_value_bytes, 16 << 20);
    assert_eq!(c.server.limits.max_key_bytes, 1024);
    assert_eq!(c.server.limits.max_batch, 1000);
    assert_eq!(c.store.max_memory_bytes, 256 << 20);
    assert_eq!(c.store.max_disk_bytes, 4 << 30);
    assert_eq!(c.store.write_behind, Duration::from_secs(1));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(10));
    assert_eq!(c.server.request_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_concurrent_requests, 1024);
    assert_eq!(c.server.max_connections, 512);
    assert_eq!(c.server.auth, None);
    assert_eq!(c.server.tls, None);
    assert_eq!(c.metrics_listen, None);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, "info");
}

#[test]
fn the_defaults_agree_with_the_types_they_fill() {
    let c = parse(&[]).unwrap();
    let l = Limits::default();
    assert_eq!(c.server.limits.max_key_bytes, l.max_key_bytes);
    assert_eq!(c.server.limits.max_batch, l.max_batch);
    assert_eq!(c.server.limits.max_value_bytes, l.max_value_bytes);
    let s = StoreConfig::new("x");
    assert_eq!(c.store.max_memory_bytes, s.max_memory_bytes);
    assert_eq!(c.store.max_disk_bytes, s.max_disk_bytes);
    assert_eq!(c.store.session_memory_bytes, s.session_memory_bytes);
    assert_eq!(c.store.limit_memory_bytes, s.limit_memory_bytes);
    assert_eq!(c.store.write_behind, s.write_behind);
    let d = ServerSettings::default();
    assert_eq!(c.server.drain_timeout, d.drain_timeout);
    assert_eq!(c.server.request_timeout, d.request_timeout);
    assert_eq!(c.server.max_concurrent_requests, d.max_concurrent_requests);
    assert_eq!(c.server.max_connections, d.max_connections);
    let sess = SessionSettings::default();
    assert_eq!(c.server.sessions.default_idle_ttl, sess.default_idle_ttl);
    assert_eq!(
        c.server.sessions.default_absolute_ttl,
        sess.default_absolute_ttl
    );
    assert_eq!(c.server.sessions.max_ttl, sess.max_ttl);
}

#[test]
fn listen_none_needs_a_socket() {
    assert!(error(&["--listen", "none"]).contains("nothing would be served"));
    let c = parse(&["--listen", "none", "--unix-socket", "/tmp/l.sock"]).unwrap();
    assert!(c.listen.is_none());
}

#[test]
fn the_writer_cache_is_sized_by_flag_and_refused_below_a_mebibyte() {
    assert_eq!(parse(&[]).unwrap().store.writer_cache_bytes, 2 << 20);
    let c = parse(&["--writer-cache", "4MiB"]).unwrap();
    assert_eq!(c.store.writer_cache_bytes, 4 << 20);
    assert!(error(&["--writer-cache", "64KiB"]).contains("writer_cache"));
}

#[test]
fn sizes_and_durations_are_human() {
    let c = parse(&["--max-memory", "1MiB", "--drain-timeout", "1500ms"]).unwrap();
    assert_eq!(c.store.max_memory_bytes, 1 << 20);
    assert_eq!(c.server.drain_timeout, Duration::from_millis(1500));
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
    let c = parse(&["--ratelimit-write-behind", "250ms"]).unwrap();
    assert_eq!(c.store.write_behind, Duration::from_millis(250));
    assert!(error(&["--max-memory", "lots"]).contains("not a size"));
}

#[test]
fn every_impossible_value_is_refused_by_name() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--worker-threads", "0"],
            "worker_threads (--worker-threads, ",
        ),
        (
            &["--worker-threads", "1000"],
            "worker_threads (--worker-threads, ",
        ),
        (&["--listen", "localhost"], "listen (--listen, "),
        (&["--listen", ":7379"], "listen (--listen, "),
        (&["--listen", "127.0.0.1:99999"], "listen (--listen, "),
        (&["--unix-socket-mode", "rw"], "unix_socket_mode"),
        (&["--unix-socket-mode", "1777"], "unix_socket_mode"),
        (&["--unix-socket-mode", "0060"], "unix_socket_mode"),
        (
            &["--synchronous", "extra"],
            "storage.synchronous (--synchronous, ",
        ),
        (&["--max-value", "0"], "cache.max_value (--max-value, "),
        (&["--max-value", "2GiB"], "cache.max_value (--max-value, "),
        (&["--max-key", "0"], "cache.max_key (--max-key, "),
        (&["--max-batch", "0"], "cache.max_batch (--max-batch, "),
        (&["--max-disk", "1MiB"], "cache.max_disk (--max-disk, "),
        (
            &["--session-idle-ttl", "0s"],
            "session.idle_ttl (--session-idle-ttl, ",
        ),
        (
            &["--session-absolute-ttl", "400days"],
            "session.absolute_ttl (--session-absolute-ttl, ",
        ),
        (
            &["--session-max-ttl", "0s"],
            "session.max_ttl (--session-max-ttl, ",
        ),
        (
            &["--ratelimit-write-behind", "1ms"],
            "ratelimit.write_behind (--ratelimit-write-behind, ",
        ),
        (
            &["--ratelimit-write-behind", "1h"],
            "ratelimit.write_behind (--ratelimit-write-behind, ",
        ),
        (
            &["--drain-timeout", "2h"],
            "server.drain_timeout (--drain-timeout, ",
        ),
        (
            &["--request-timeout", "0s"],
            "server.request_timeout (--request-timeout, ",
        ),
        (
            &["--max-concurrent-requests", "0"],
            "server.max_concurrent_requests (--max-concurrent-requests, ",
        ),
        (
            &["--max-connections", "0"],
            "server.max_connections (--max-connections, ",
        ),
        // Less than one maximal message, whether the budget is lowered or the value raised.
        (
            &["--max-inflight-bytes", "16MiB"],
            "server.max_inflight_bytes (--max-inflight-bytes, ",
        ),
        (
            &["--max-value", "300MiB"],
            "server.max_inflight_bytes (--max-inflight-bytes, ",
        ),
        (
            &["--write-timeout", "0s"],
            "server.write_timeout (--write-timeout, ",
        ),
        (
            &["--auth-unix-socket", "false"],
            "auth.unix_socket (--auth-unix-socket, ",
        ),
        (&["--tls-cert", "/c.pem"], "tls.key (--tls-key, "),
        (&["--tls-key", "/k.pem"], "tls.cert (--tls-cert, "),
        (
            &[
                "--tls-cert",
                "/c.pem",
                "--tls-key",
                "/k.pem",
                "--listen",
                "none",
                "--unix-socket",
                "/tmp/s",
            ],
            "TCP listener",
        ),
        (
            &["--metrics-listen", "9379"],
            "metrics.listen (--metrics-listen, ",
        ),
        (
            &["--metrics-listen", "127.0.0.1:7379"],
            "must differ from listen",
        ),
        (&["--log-format", "xml"], "log.format (--log-format, "),
        (&["--log-level", "loud=="], "log.level (--log-level, "),
    ];
    for (args, named) in cases {
        let e = error(args);
        assert!(e.contains(named), "{args:?} gave {e:?}");
    }
}

#[test]
fn the_file_sets_everything_and_flags_win_over_it() {
    let file = File::new(file::EVERY_SETTING);
    let c = file.with(&[]).unwrap();
    assert_eq!(c.store.data_dir, PathBuf::from("/srv/larder"));
    assert_eq!(c.listen.as_deref(), Some("127.0.0.1:17379"));
    assert_eq!(
        c.unix_socket.as_deref(),
        Some(Path::new("/run/larder/larder.sock"))
    );
    assert_eq!(c.unix_socket_mode, 0o600);
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.store.synchronous, Synchronous::Full);
    assert_eq!(c.store.max_memory_bytes, 64 << 20);
    assert_eq!(c.store.max_disk_bytes, 1 << 30);
    assert_eq!(c.server.limits.max_value_bytes, 1 << 20);
    assert_eq!(c.server.limits.max_key_bytes, 512);
    assert_eq!(c.server.limits.max_batch, 100);
    assert_eq!(c.server.sessions.default_idle_ttl, Duration::from_secs(900));
    assert_eq!(c.server.sessions.max_ttl, Duration::from_secs(30 * 86400));
    assert_eq!(c.store.session_memory_bytes, 16 << 20);
    assert_eq!(c.store.write_behind, Duration::from_millis(300));
    assert_eq!(c.store.limit_memory_bytes, 4 << 20);
    let chat = c.server.ratelimit.policies["ai_chat"];
    assert_eq!((chat.limit(), chat.period_ms()), (60, 60_000));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(5));
    assert_eq!(c.server.request_timeout, Duration::from_secs(2));
    assert_eq!(c.server.max_concurrent_requests, 64);
    assert_eq!(c.server.max_connections, 32);
    assert_eq!(
        c.server.auth,
        Some(AuthSettings {
            token_file: "/etc/larder/tokens".into(),
            unix_socket: false
        })
    );
    assert_eq!(
        c.server.tls.as_ref().map(|t| t.cert.clone()),
        Some(PathBuf::from("/etc/larder/cert.pem"))
    );
    assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9379"));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_level, "warn");

    let c = file
        .with(&[
            "--data-dir",
            "/tmp/other",
            "--worker-threads",
            "3",
            "--synchronous",
            "normal",
            "--max-key",
            "2KiB",
            "--ratelimit-write-behind",
            "2s",
            "--auth-unix-socket",
            "true",
            "--metrics-listen",
            "none",
            "--log-format",
            "text",
        ])
        .unwrap();
    assert_eq!(c.store.data_dir, PathBuf::from("/tmp/other"));
    assert_eq!(c.worker_threads, 3);
    assert_eq!(c.store.synchronous, Synchronous::Normal);
    assert_eq!(c.server.limits.max_key_bytes, 2048);
    assert_eq!(c.store.write_behind, Duration::from_secs(2));
    assert!(c.server.auth.unwrap().unix_socket);
    assert_eq!(c.metrics_listen, None);
    assert_eq!(c.log_format, LogFormat::Text);
    // What the flags did not touch still comes from the file.
    assert_eq!(c.store.max_memory_bytes, 64 << 20);
    assert_eq!(c.server.limits.max_batch, 100);
}

#[test]
fn a_bad_file_is_named_with_its_key() {
    let file = File::new("[ratelimit.policies.chat]\nlimit = 0\nperiod = \"1m\"\n");
    let e = format!("{:#}", file.with(&[]).unwrap_err());
    assert!(e.contains("ratelimit.policies.chat.limit"), "{e}");
    let file = File::new("[cache]\nmax_value = \"0B\"\n");
    let e = format!("{:#}", file.with(&[]).unwrap_err());
    assert!(e.contains("cache.max_value"), "{e}");
    let file = File::new("[cache]\nmax_valu = \"1MiB\"\n");
    let e = format!("{:#}", file.with(&[]).unwrap_err());
    assert!(e.contains("max_valu") && e.contains(&file.path), "{e}");
    let e = error(&["--config", "/nonexistent/larder.toml"]);
    assert!(e.contains("/nonexistent/larder.toml"), "{e}");
}

#[test]
fn the_effective_config_reads_back_to_the_same_settings() {
    let file = File::new(
        "listen = \"127.0.0.1:17379\"\n[ratelimit.policies.contact]\nlimit = 10\n\
         period = \"1m\"\nalgorithm = \"fixed_window\"\n",
    );
    let c = file
        .with(&["--max-memory", "3MiB", "--session-idle-ttl", "90s"])
        .unwrap();
    let printed = c.to_toml().unwrap();
    for line in [
        "listen = \"127.0.0.1:17379\"",
        "max_memory = \"3MiB\"",
        "idle_ttl = \"90s\"",
        "data_dir = \"larder-data\"",
        "[ratelimit.policies.contact]",
    ] {
        assert!(printed.contains(line), "{line:?} missing from\n{printed}");
    }
    let again = File::new(&printed).with(&[]).unwrap();
    assert_eq!(again.effective, c.effective);
    assert_eq!(again.store.max_memory_bytes, 3 << 20);
    assert_eq!(
        again.server.sessions.default_idle_ttl,
        Duration::from_secs(90)
    );
}

/// `larder backup`'s data directory from `args` (after `larder backup`), with its flags as
/// the binary declares them.
fn backup_data_dir(args: &[&str]) -> anyhow::Result<PathBuf> {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let m = clap::Command::new("backup")
        .arg(config_flag())
        .arg(settings::DATA_DIR.arg(&Components::defaults()).env(None))
        .arg(clap::Arg::new("dest").required(true))
        .try_get_matches_from(all)?;
    let mut given = Given::default();
    if let Some(dir) = m.get_one::<OsString>("data-dir") {
        given.set(&settings::DATA_DIR, dir.clone());
    }
    data_dir(m.get_one::<PathBuf>("config").map(PathBuf::as_path), &given)
}

#[test]
fn backup_finds_the_data_dir_as_serve_does() {
    assert_eq!(
        backup_data_dir(&["out.db"]).unwrap(),
        PathBuf::from(filled(settings::DATA_DIR.default_value(&Components::defaults())).show())
    );
    let file = File::new("data_dir = \"/var/lib/larder\"\nlisten = \"none\"\n");
    assert_eq!(
        backup_data_dir(&["--config", &file.path, "out.db"]).unwrap(),
        PathBuf::from("/var/lib/larder"),
        "the file's data_dir, and nothing else of the file is checked against the flags"
    );
    assert_eq!(
        backup_data_dir(&["--config", &file.path, "--data-dir", "/srv/l", "out.db"]).unwrap(),
        PathBuf::from("/srv/l"),
        "the flag wins over the file"
    );
    let bad = File::new("data_dirr = \"/var/lib/larder\"\n");
    let e = format!(
        "{:#}",
        backup_data_dir(&["--config", &bad.path, "out.db"]).unwrap_err()
    );
    assert!(e.contains("data_dirr") && e.contains(&bad.path), "{e}");
    assert!(
        backup_data_dir(&[]).is_err(),
        "DEST is required, not defaulted"
    );
}

#[test]
fn a_log_level_that_is_not_one_is_refused_by_name() {
    for ok in [
        "info",
        "WARN",
        "off",
        "warn,larder=debug",
        "larder::store=trace",
        "3",
        "",
    ] {
        assert!(parse(&["--log-level", ok]).is_ok(), "{ok:?} was refused");
    }
    for (bad, says) in [
        ("verbose", "\"verbose\" is not a log level"),
        ("info,chatty", "\"chatty\" is not a log level"),
        (
            "larder=loud",
            "\"loud\" in \"larder=loud\" is not a log level",
        ),
        ("loud==", "is not a log level"),
    ] {
        let e = error(&["--log-level", bad]);
        assert!(
            e.contains("log.level (--log-level, LARDER_LOG_LEVEL)") && e.contains(says),
            "{bad:?} gave {e:?}"
        );
        assert!(
            e.contains("expected trace, debug, info, warn, error or off"),
            "{e}"
        );
    }
    let file = File::new("[log]\nlevel = \"verbose\"\n");
    let e = format!("{:#}", file.with(&[]).unwrap_err());
    assert!(
        e.contains("log.level (--log-level, LARDER_LOG_LEVEL)"),
        "{e}"
    );
}

#[test]
fn a_port_out_of_range_is_called_that() {
    let e = error(&["--listen", "0.0.0.0:99999"]);
    assert!(
        e.contains(
            "listen (--listen, LARDER_LISTEN): \"0.0.0.0:99999\": port 99999 is out of range"
        ) && e.contains("between 0 and 65535"),
        "{e}"
    );
    let e = error(&["--metrics-listen", "127.0.0.1:65536"]);
    assert!(
        e.contains("metrics.listen (--metrics-listen, LARDER_METRICS_LISTEN)")
            && e.contains("port 65536 is out of range"),
        "{e}"
    );
    // Not a number at all is still not HOST:PORT; port 0 (any free port) stays allowed.
    assert!(error(&["--listen", "127.0.0.1:http"]).contains("is not HOST:PORT"));
    assert!(parse(&["--listen", "127.0.0.1:0"]).is_ok());
}

#[test]
fn a_size_that_is_not_one_says_what_is_expected() {
    let e = error(&["--max-memory", "lots"]);
    assert_eq!(
        e,
        "cache.max_memory (--max-memory, LARDER_MAX_MEMORY): \"lots\" is not a size; \
         expected a size such as 256MiB, 1GB or 1048576"
    );
    let file = File::new("[session]\nmax_memory = \"plenty\"\n");
    let e = format!("{:#}", file.with(&[]).unwrap_err());
    assert!(
        e.contains("session.max_memory: \"plenty\" is not a size; expected a size such as"),
        "{e}"
    );
}

#[test]
fn every_setting_is_a_flag_a_variable_and_a_file_key() {
    // Each flag is accepted, and its value lands in the effective config under its key.
    let components = Components::defaults();
    for setting in SETTINGS {
        let Some(v) = setting.default_value(&components) else {
            continue;
        };
        let mut flags = vec![format!("--{}", setting.flag), v.show()];
        // A setting that qualifies another is only accepted with it.
        if let settings::DefaultFrom::With(other, _) = setting.default {
            flags.extend([format!("--{}", other.flag), "/etc/larder/tokens".into()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let c = parse(&flags).unwrap_or_else(|e| panic!("{flags:?}: {e:#}"));
        assert_eq!(c.effective.get(setting), Some(&v), "{}", setting.key);
        let printed = c.to_toml().unwrap();
        let reread = FileConfig::parse(&printed).unwrap();
        assert_eq!(reread.get(setting), Some(&v), "{}", setting.key);
    }
}

#[test]
fn an_empty_path_is_refused_by_name() {
    for flag in ["--data-dir", "--unix-socket", "--auth-token-file"] {
        let e = error(&[flag, ""]);
        assert!(e.contains(flag), "{flag}: {e}");
        assert!(e.contains("empty"), "{flag}: {e}");
    }
}
