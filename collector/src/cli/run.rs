//! `outpost-collector run --config FILE`.

use outpost_collector::config::Config;
use outpost_collector::{agent, shutdown};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use super::{CliError, ConfigArg};

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
}

/// Loads the config, then runs the collector until SIGTERM or SIGINT.
pub fn run(args: &RunArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::StartRuntime)?;
    runtime.block_on(async {
        let (trigger, stop) = shutdown::channel();
        let mut term = signal(SignalKind::terminate()).map_err(CliError::StartRuntime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(CliError::StartRuntime)?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received; stopping"),
                _ = int.recv() => info!("SIGINT received; stopping"),
            }
            trigger.trigger();
        });
        agent::run(config, stop).await.map_err(CliError::from)
    })
}
