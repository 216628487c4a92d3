//! The command line: `serve`, `check-config`, `backup` and `bench`. The flags of the
//! settings are not written here: they come from the library's declaration
//! (`larder::config::args`), and what was given goes back to it as `Given`, so that a value
//! is read and checked, and named in errors, the same way from a flag, a variable or the file.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgMatches, Args, Command as ClapCommand, FromArgMatches, Parser, Subcommand};
use larder::config::{self, Given, ServeConfig, settings};

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
    CheckConfig(CheckConfigArgs),
    /// Copy the store to a new file, consistently, while the daemon keeps running (or not).
    Backup(BackupArgs),
    /// Measure a running daemon (and, with --redis, Redis doing the same jobs): ops/s and
    /// latency per op.
    #[cfg(feature = "bench")]
    Bench(Box<crate::bench::BenchArgs>),
    /// Measure a running daemon: not in this build (see `larder bench` for how to get it).
    #[cfg(not(feature = "bench"))]
    Bench(NoBenchArgs),
}

/// The id of `--config`.
const CONFIG: &str = "config";

/// `--config FILE`, read from `LARDER_CONFIG` too.
fn config_arg() -> clap::Arg {
    clap::Arg::new(CONFIG)
        .long(CONFIG)
        .env("LARDER_CONFIG")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help("TOML config file; variables and flags win over it.")
}

/// Flags of `larder serve`: `--config` and every setting's flag. Each is optional: what is
/// not given comes from its `LARDER_*` variable, then the config file, then the default.
#[derive(Debug, Default)]
pub struct ServeArgs {
    /// The config file.
    pub config: Option<PathBuf>,
    /// The settings given as flags or variables.
    pub given: Given,
}

impl ServeArgs {
    /// Merges the given values over the config file and checks the result.
    pub fn into_config(self) -> anyhow::Result<ServeConfig> {
        ServeConfig::load(self.config.as_deref(), &self.given)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            config: m.get_one::<PathBuf>(CONFIG).cloned(),
            given: Given::from_matches(m),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: ClapCommand) -> ClapCommand {
        cmd.arg(config_arg()).args(config::args())
    }

    fn augment_args_for_update(cmd: ClapCommand) -> ClapCommand {
        Self::augment_args(cmd)
    }
}

/// Flags of `larder check-config`: those of `serve`, and `--settings-table`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Print the markdown table of every setting (file key, flag, variable, default, range),
    /// as docs/configuration.md holds it, instead of checking a configuration.
    #[arg(long)]
    pub settings_table: bool,
    /// The configuration to check.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `larder backup`. The data directory is found as `serve` finds it: the flag, then
/// `LARDER_DATA_DIR`, then the config file's `data_dir`, then the default.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// `--config` and `--data-dir`.
    #[command(flatten)]
    pub source: DataDirArgs,
    /// Replace DEST if it exists.
    #[arg(long)]
    pub force: bool,
    /// The file to write: a standalone SQLite database, what `larder.db` is replaced with to
    /// restore.
    pub dest: PathBuf,
}

/// `--config` and the data_dir setting's flag, for `backup`.
#[derive(Debug, Default)]
pub struct DataDirArgs {
    /// The config file to read data_dir from: the daemon's own.
    pub config: Option<PathBuf>,
    /// `--data-dir` or `LARDER_DATA_DIR`, if given.
    pub given: Given,
}

impl DataDirArgs {
    /// The data directory, with the precedence of `serve`. The config file must parse (an
    /// unknown key is an error, as for the daemon), but only `data_dir` is taken from it.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        config::data_dir(self.config.as_deref(), &self.given)
    }
}

impl FromArgMatches for DataDirArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Given::default();
        if let Some(dir) = m.get_one::<OsString>(settings::DATA_DIR.flag) {
            given.set(&settings::DATA_DIR, dir.clone());
        }
        Ok(Self {
            config: m.get_one::<PathBuf>(CONFIG).cloned(),
            given,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for DataDirArgs {
    fn augment_args(cmd: ClapCommand) -> ClapCommand {
        let components = settings::Components::defaults();
        cmd.arg(config_arg().help("TOML config file to read data_dir from: the daemon's own."))
            .arg(settings::DATA_DIR.arg(&components))
    }

    fn augment_args_for_update(cmd: ClapCommand) -> ClapCommand {
        Self::augment_args(cmd)
    }
}

/// What `larder bench` says in a build without the load generator.
#[cfg(not(feature = "bench"))]
pub const NO_BENCH: &str = "larder bench is not in this build: the load generator is the \
    cargo feature `bench`. Build it with `cargo build --release --features bench` (the binary \
    is then target/release/larder), or install it with `cargo install --path . --features \
    bench`";

/// `larder bench` in a build without it: whatever follows is taken, so that the answer is
/// how to get it rather than an unknown flag.
#[cfg(not(feature = "bench"))]
#[derive(Debug, Args)]
pub struct NoBenchArgs {
    /// The bench's flags, unread in this build.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<OsString>,
}
