//! Command-line interface: one module per subcommand, each with its `Args` and `run`.

mod collect;
mod run;
mod status;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use outpost_collector::agent::RunError;
use outpost_collector::config::{ConfigError, DEFAULT_CONFIG_PATH};
use outpost_collector::status::StatusError;
use tracing_subscriber::EnvFilter;

/// Environment variable holding the log filter (`tracing` `EnvFilter` syntax).
pub const LOG_ENV: &str = "OUTPOST_LOG";

/// Exit code: runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad configuration or input file.
pub const EXIT_CONFIG: u8 = 3;

/// Outpost collector: enrols this appliance, collects host data and forwards it to the
/// gateway over mutual TLS on port 5723.
#[derive(Debug, Parser)]
#[command(name = "outpost-collector", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrol if needed, then collect and forward until SIGTERM/SIGINT.
    Run(run::RunArgs),
    /// Collect once and print the result.
    Collect(collect::CollectArgs),
    /// Show enrolment and uplink state from the state directory.
    Status(status::StatusArgs),
}

/// Where the config file is, for subcommands that read one.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The collector config file.
    #[arg(
        long,
        value_name = "FILE",
        env = "OUTPOST_COLLECTOR_CONFIG",
        default_value = DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,
}

/// A failed subcommand.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `run` failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// `status` failed.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The async runtime or signal handlers could not be set up.
    #[error("failed to start the runtime: {0}")]
    StartRuntime(std::io::Error),
    /// Writing the result failed.
    #[error("failed to write to stdout: {0}")]
    WriteStdout(std::io::Error),
    /// Encoding the result failed.
    #[error("failed to encode the result as JSON: {0}")]
    EncodeJson(serde_json::Error),
}

impl CliError {
    /// The process exit code for this error.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Status(StatusError::Config(_)) => EXIT_CONFIG,
            Self::Run(e) if e.is_config_error() => EXIT_CONFIG,
            _ => EXIT_FAILURE,
        }
    }
}

/// Sets up `tracing` on stderr with the filter from `OUTPOST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the chosen subcommand.
///
/// # Errors
/// [`CliError`], which knows its exit code.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Collect(args) => collect::run(&args),
        Command::Status(args) => status::run(&args),
    }
}
