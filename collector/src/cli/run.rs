//! `outpost-collector run --config FILE`.

use std::time::Duration;

use outpost_collector::config::Config;
use outpost_collector::{agent, shutdown};
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use super::{CliError, ConfigArg};

/// Most threads the blocking pool may run at once. Collecting, the spool's file I/O (from
/// the collecting and the sending task), keeping a new config and name lookups can overlap;
/// more than that only waits in the queue.
const MAX_BLOCKING_THREADS: usize = 4;

/// How long an idle blocking thread waits for more work before it exits. Work comes in
/// bursts once per interval (10 s and more), so threads need not outlive a burst; each
/// one that stays holds its stack and its malloc arena's free pages.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
}

/// Loads the config, then runs the collector until SIGTERM or SIGINT.
pub fn run(args: &RunArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config.config)?;
    let runtime = build_runtime().map_err(CliError::StartRuntime)?;
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

/// The collector's runtime: a single thread runs the async tasks (they only wait on
/// timers, sockets and the blocking pool), while sampling and spool I/O go to a small
/// blocking pool whose threads exit when idle. Fewer long-lived threads mean fewer stacks
/// and malloc arenas held between collections.
fn build_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
}
