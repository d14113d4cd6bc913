//! Command line of `outpost-gateway`: one module per subcommand.

mod appliances;
mod commands;
mod init;
mod packs;
mod serve;
mod token;
mod windows;

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use outpost_gateway::error::{CaError, ConfigError, ServeError, StoreError};
use outpost_gateway::store::Store;
use outpost_gateway::GatewayConfig;

/// Outpost gateway: accepts appliances on TCP 5723 (mutual TLS 1.3), runs the Outpost CA,
/// stores enrolments and telemetry, and queues commands for appliances.
///
/// Exit codes: 0 success, 1 runtime failure, 2 usage, 3 bad config or input, 4 not found.
#[derive(Debug, Parser)]
#[command(name = "outpost-gateway", version, about, long_about)]
pub struct Cli {
    /// Log format on stderr (level from OUTPOST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a CA, a server certificate and gateway.toml in a directory.
    Init(init::InitArgs),
    /// Serve appliances on the one port (default 0.0.0.0:5723).
    Serve(serve::ServeArgs),
    /// Manage bootstrap tokens.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// List, show, approve and revoke appliances.
    #[command(subcommand)]
    Appliances(appliances::AppliancesCmd),
    /// Queue commands for appliances and read their results.
    #[command(subcommand)]
    Commands(commands::CommandsCmd),
    /// Import, list and assign health packs.
    #[command(subcommand)]
    Packs(packs::PacksCmd),
    /// Set, list and clear the maintenance windows in which updaters may restart appliances.
    #[command(subcommand)]
    Windows(windows::WindowsCmd),
}

/// What a subcommand can fail with; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// CA failure.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Serve failure.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Bad argument value.
    #[error("{0}")]
    Input(String),
    /// Anything else at run time.
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Input(_) => 3,
            Self::Ca(CaError::BadPem { .. } | CaError::BadSan { .. } | CaError::Exists { .. }) => 3,
            Self::Store(StoreError::NotFound { .. }) => 4,
            _ => 1,
        }
    }
}

/// Sets up tracing on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Cmd::Init(a) => init::run(&a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Token(c) => token::run(c),
        Cmd::Appliances(c) => appliances::run(c),
        Cmd::Commands(c) => commands::run(c),
        Cmd::Packs(c) => packs::run(c),
        Cmd::Windows(c) => windows::run(c),
    }
}

/// A multi-threaded runtime for a subcommand.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Loads the config and opens its store.
async fn open(config: &Path) -> Result<(GatewayConfig, Store), CliError> {
    let cfg = GatewayConfig::load(config)?;
    let store = Store::open(&cfg.store).await?;
    Ok((cfg, store))
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Optional unix milliseconds as RFC 3339 or JSON null.
pub fn rfc3339_json(ms: Option<i64>) -> serde_json::Value {
    ms.map_or(serde_json::Value::Null, |m| {
        serde_json::Value::String(rfc3339(m))
    })
}

/// The `--config` argument shared by every store command.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path of gateway.toml.
    #[arg(long, short = 'c', value_name = "FILE", env = "OUTPOST_GATEWAY_CONFIG")]
    pub config: PathBuf,
}
