//! The `larder` binary: parses the command line ([`cli`]), sets up logging and the runtime,
//! runs the chosen command, and is the one place where errors become messages and exit codes.
//! With the cargo feature `bench`, it also carries `larder bench`, the load generator
//! ([`bench`]), so that the library does not depend on it.

#[cfg(feature = "bench")]
mod bench;
mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use larder::config::{LogFormat, ServeConfig};
use larder::{Listeners, Reservation, Server, ServerFiles, Store, SystemClock, signals};
use tracing_subscriber::EnvFilter;

use crate::cli::{BackupArgs, CheckConfigArgs, Cli, Command};

fn main() -> ExitCode {
    bound_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.into_config().and_then(run_serve),
        Command::CheckConfig(args) => check_config(args),
        Command::Backup(args) => backup(args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(*args),
        #[cfg(not(feature = "bench"))]
        Command::Bench(_) => Err(anyhow::anyhow!(cli::NO_BENCH)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larder: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Caps glibc's malloc at two arenas before any thread starts. By default it makes up to eight
/// per core, and memory freed by one thread (a SetMany's decode buffer, a commit's rows) stays
/// in its arena's free lists instead of serving the next allocation elsewhere: with 2M
/// entries written through a 64 MiB LRU that was 45 MiB of RSS holding nothing, in
/// `scripts/bench-footprint.sh`. An explicit `MALLOC_ARENA_MAX` in the environment wins.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; it runs before any other thread
        // exists. It returns 0 when the value is refused, and the default then stays.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Free heap past which the trimmer hands memory back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_FREE_BYTES: usize = 8 << 20;

/// Every 10 s, once glibc's malloc holds more than [`TRIM_FREE_BYTES`] free, hands the free
/// pages back to the kernel (`malloc_trim`). Free memory inside an arena is otherwise kept for
/// the process: 12 s after a bulk load of 500k × 1 KiB through the LRU (decode buffers,
/// evicted values), RSS was 151 MiB with this and 165 MiB without.
fn spawn_heap_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Off the workers: both calls walk malloc's free lists under its arena locks.
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: mallinfo2 and malloc_trim only read and release the allocator's
                // own free memory; they are safe to call from any thread at any time.
                unsafe {
                    if libc::mallinfo2().fordblks > TRIM_FREE_BYTES {
                        libc::malloc_trim(0);
                    }
                }
            })
            .await;
        }
    });
}

/// `larder check-config`: the configuration is valid, and so are the token and TLS files it
/// names; print it as the daemon would run with it. With `--settings-table`, print the docs'
/// table of every setting instead.
fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    if args.settings_table {
        print!("{}", larder::config::settings_table());
        return Ok(());
    }
    let config = args.serve.into_config()?;
    let files = ServerFiles::load(&config.server)?;
    let text = config.to_toml()?;
    println!("# effective configuration: defaults < config file < LARDER_* variables < flags");
    for line in files.describe() {
        println!("{line}");
    }
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
    let data_dir = args.source.resolve()?;
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

/// Binds the metrics listener when on, then TCP, and checks the Unix socket path: every
/// address is known to be usable before anything is created. The Unix socket itself is bound
/// by [`Reservation::bind`] once the store is open, since a client that sees it accept takes
/// the daemon as ready.
async fn reserve_listeners(config: &ServeConfig) -> larder::Result<Reservation> {
    let metrics = match config.metrics_listen.as_deref() {
        Some(addr) => Some(larder::bind_metrics(addr).await?),
        None => None,
    };
    let reservation = Listeners::reserve(
        config.listen.as_deref(),
        config.unix_socket.as_deref(),
        config.unix_socket_mode,
    )
    .await?;
    Ok(match metrics {
        Some(listener) => reservation.with_metrics(listener),
        None => reservation,
    })
}

/// The runtime that serves gRPC. With one worker thread (the default) it is tokio's
/// current-thread scheduler, run on the thread that calls `block_on`: the same single thread
/// of gRPC work, without the multi-thread scheduler's work-stealing queues, its hand-off
/// between the blocked main thread and the worker, or its idle/searching bookkeeping on each
/// park. Per one-caller Get that was fewer instructions in the daemon (callgrind) and fewer
/// thread wake-ups. SQLite still runs on its own threads (the writer, the checkpointer and
/// the readers), which wake tasks here as any other thread would.
fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder.thread_name("larder-worker").enable_all().build()
}

fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    init_logging(&config)?;
    // Read once, before the data directory is touched: a bad file stops the start there.
    let files = ServerFiles::load(&config.server)?;
    let runtime = build_runtime(config.worker_threads)?;
    let result = runtime.block_on(async move {
        let shutdown = signals::on_signal()
            .map_err(|e| anyhow::anyhow!("cannot install SIGTERM/SIGINT handlers: {e}"))?;
        let reload = signals::on_reload()
            .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
        // Every listener is bound or checked before the store is opened: a start that cannot
        // listen creates no data directory and no database.
        let reservation = reserve_listeners(&config).await?;
        let store = Store::open(config.store.clone(), Arc::new(SystemClock))?;
        let listeners = match reservation.bind() {
            Ok(listeners) => listeners,
            Err(e) => {
                store.close().await?;
                return Err(e.into());
            }
        };
        spawn_heap_trimmer();
        Server::new(store, config.server.clone())
            .with_files(files)
            .with_reload(reload)
            .run(listeners, shutdown)
            .await?;
        Ok(())
    });
    // Reads still on blocking threads (their callers are gone) get a moment to end; the
    // connections are closed, the store is closed and every acknowledged write committed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
