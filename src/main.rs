//! The `larder` binary: parses the command line, sets up logging and the runtime, runs the
//! chosen command, and is the one place where errors become messages and exit codes.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use larder::clock::SystemClock;
use larder::config::{BackupArgs, Cli, Command, LogFormat, ServeConfig};
use larder::server::{Listeners, serve};
use larder::store::Store;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.into_config().and_then(run_serve),
        Command::CheckConfig(args) => args.into_config().and_then(check_config),
        Command::Backup(args) => backup(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larder: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `larder check-config`: the configuration is valid (or `into_config` already said why
/// not); print it as the daemon would run with it.
fn check_config(config: ServeConfig) -> anyhow::Result<()> {
    let text = config.to_toml()?;
    println!("# effective configuration: defaults < config file < LARDER_* variables < flags");
    print!("{text}");
    Ok(())
}

/// `larder backup`: copy the store, then print one line saying what was written. Warnings
/// (none on a normal run) go to standard error.
fn backup(args: BackupArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let data_dir = args.resolve_data_dir()?;
    let report = larder::store::backup::backup(&data_dir, &args.dest, args.force)?;
    println!("{report}");
    Ok(())
}

/// Logs to standard error: human lines (ANSI colours only on a terminal) or JSON objects,
/// one per line, which journald and log shippers take as they are.
fn init_logging(config: &ServeConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

/// Binds the metrics listener when on (first, so that its failure leaves no socket file
/// behind), then the gRPC listeners.
async fn bind_listeners(config: &ServeConfig) -> larder::error::Result<Listeners> {
    let metrics = match config.metrics_listen.as_deref() {
        Some(addr) => Some(larder::metrics::bind(addr).await?),
        None => None,
    };
    let listeners = Listeners::bind(
        config.listen.as_deref(),
        config.unix_socket.as_deref(),
        config.unix_socket_mode,
    )
    .await?;
    Ok(match metrics {
        Some(listener) => listeners.with_metrics(listener),
        None => listeners,
    })
}

fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .thread_name("larder-worker")
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let shutdown = larder::shutdown::on_signal()
            .map_err(|e| anyhow::anyhow!("cannot install SIGTERM/SIGINT handlers: {e}"))?;
        let store = Store::open(config.store.clone(), Arc::new(SystemClock))?;
        let listeners = match bind_listeners(&config).await {
            Ok(l) => l,
            Err(e) => {
                store.close().await?;
                return Err(e.into());
            }
        };
        serve(store, listeners, config.server.clone(), shutdown).await?;
        Ok(())
    });
    // Connections still open after the drain deadline, and reads still on blocking threads,
    // get a moment to end; the store is already closed and every write committed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
