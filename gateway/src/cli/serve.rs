//! `outpost-gateway serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use outpost_gateway::ca::Ca;
use outpost_gateway::server::{serve, ServeOptions};

use super::{open, runtime, CliError, ConfigArg};

/// Serve appliances on the one port.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Listen address, overriding `listen` in the config (default 0.0.0.0:5723).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Write the bound address here once listening (useful with port 0).
    #[arg(long, value_name = "PATH")]
    pub addr_file: Option<PathBuf>,
}

pub fn run(a: ServeArgs) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        let (cfg, store) = open(&a.config.config).await?;
        let ca = Ca::load(&cfg.ca_cert, &cfg.ca_key)?;
        let opts = ServeOptions {
            listen: a.listen,
            addr_file: a.addr_file,
        };
        serve(cfg, store, ca, opts, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
