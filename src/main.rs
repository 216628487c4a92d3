//! The `larder` binary: parses the command line, sets up logging and the runtime, runs the
//! chosen command, and is the one place where errors become messages and exit codes.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use larder::clock::SystemClock;
use larder::config::{Cli, Command, ServeConfig};
use larder::server::{Listeners, serve};
use larder::store::Store;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.into_config().and_then(run_serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larder: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", config.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .thread_name("larder-worker")
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let shutdown = larder::shutdown::on_signal()
            .map_err(|e| anyhow::anyhow!("cannot install SIGTERM/SIGINT handlers: {e}"))?;
        let store = Store::open(config.store.clone(), Arc::new(SystemClock))?;
        let listeners =
            match Listeners::bind(config.listen.as_deref(), config.unix_socket.as_deref()).await {
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
