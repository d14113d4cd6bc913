//! `outpost-updater`: the on-box staged update agent.
//!
//! Exit codes: 0 success; 1 error (message on stderr); 2 usage; 3 `boot-check` found the booted
//! slot unhealthy and marked it bad (the next boot falls back).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_updater::agent::{self, BootCheck};
use outpost_updater::bootcount;
use outpost_updater::config::Config;

/// Default config file.
const DEFAULT_CONFIG: &str = "/etc/outpost/updater.toml";

/// The Outpost update agent: mirrors the vendor's feed through the gateway, serves it to the
/// VMs on the box, installs into the inactive A/B slot and restarts inside the VAR's window.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Config file (see examples/updater.toml).
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent: sync, serve the local mirror, follow commands, install at night,
    /// restart in the window, report state.
    Run,
    /// Sync the mirror once from the gateway and print the newest verified version.
    Sync,
    /// Install a bundle (default: the newest mirrored one) into the inactive slot now,
    /// ignoring the install window, and mark it to boot next.
    Install {
        /// Bundle file (.tar.zst); default: the newest mirrored bundle.
        bundle: Option<PathBuf>,
    },
    /// Show the slots, boot entries and the agent's state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// After boot (from a unit ordered Before=boot-complete.target): if the booted slot is on
    /// trial with a version this agent staged, run the health check and commit it, or mark it
    /// bad so the next boot falls back; an entry on trial it did not stage (the factory's) is
    /// committed without the check. Exits 3 when the check failed.
    BootCheck,
    /// TEST AID for file-backed ESPs only: do what systemd-boot does at a boot (pick the
    /// entry, count down its tries) and record the chosen entry. Never use on a real ESP.
    SimulateReboot,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] outpost_updater::config::ConfigError),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error(transparent)]
    Boot(#[from] bootcount::BootError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("health check failed; slot marked bad")]
    Unhealthy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Unhealthy) => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

fn run(cli: Cli) -> Result<(), CliError> {
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Cmd::Run => runtime()?.block_on(async move {
            agent::run(cfg, shutdown_signal()).await?;
            Ok(())
        }),
        Cmd::Sync => runtime()?.block_on(async move {
            let mut state = agent::load_state(&cfg.state_dir)?;
            let r = agent::sync_mirror(&cfg).await;
            match &r {
                Ok(Some((v, b))) => println!("{v} {}", b.display()),
                Ok(None) => println!("no version in channel {}", cfg.channel),
                Err(_) => {}
            }
            state.record_sync(&r);
            agent::save_state(&cfg.state_dir, &state)?;
            r.map_err(agent::AgentError::Sync)?;
            Ok(())
        }),
        Cmd::Install { bundle } => {
            let mut state = agent::load_state(&cfg.state_dir)?;
            let bundle = bundle
                .or_else(|| state.mirrored_bundle.clone())
                .ok_or(agent::AgentError::NothingMirrored)?;
            let r = agent::install_bundle(&cfg, &mut state, &bundle);
            agent::save_state(&cfg.state_dir, &state)?;
            match r? {
                Some(i) => println!(
                    "installed {} into slot {} ({} bytes, sha256 {}); boot entry {}",
                    bundle.display(),
                    i.slot,
                    i.bytes,
                    i.sha256,
                    i.entry
                ),
                None => println!("already running or staged; nothing to do"),
            }
            Ok(())
        }
        Cmd::Status { json } => status(&cfg, json),
        Cmd::BootCheck => runtime()?.block_on(async move {
            let mut state = agent::load_state(&cfg.state_dir)?;
            // Only a version this agent staged, booted on trial, is judged by the checks;
            // anything else is decided without waiting for them.
            let health = if agent::needs_health_check(&cfg, &state).unwrap_or(false) {
                agent::health_check(&cfg).await
            } else {
                Ok(())
            };
            let outcome = agent::boot_check(&cfg, &mut state, move || health);
            agent::save_state(&cfg.state_dir, &state)?;
            agent::report_once(&cfg, &state).await;
            match outcome? {
                BootCheck::Committed { slot } => println!("slot {slot} committed"),
                BootCheck::Nothing { slot } => println!("slot {slot} running; nothing on trial"),
                BootCheck::FellBack { slot, version } => {
                    println!("version {version} did not boot; running slot {slot}");
                }
                BootCheck::Failed { slot, reason } => {
                    eprintln!("slot {slot} failed its health check: {reason}");
                    return Err(CliError::Unhealthy);
                }
            }
            Ok(())
        }),
        Cmd::SimulateReboot => {
            let slot = bootcount::simulate_boot(&cfg.slots.esp)?;
            println!("booted slot {slot}");
            Ok(())
        }
    }
}

fn status(cfg: &Config, json: bool) -> Result<(), CliError> {
    let state = agent::load_state(&cfg.state_dir)?;
    let booted = agent::booted_slot(cfg).ok();
    let id = agent::appliance_id(cfg);
    let report = state.report(cfg, booted, &id, jiff::Timestamp::now());
    let mut entries = bootcount::list_entries(&cfg.slots.esp)?;
    bootcount::sort_entries(&mut entries);
    let names: Vec<String> = entries.iter().map(|e| e.name.file_name()).collect();
    if json {
        let v = serde_json::json!({
            "appliance": id,
            "state": report,
            "booted_slot": booted.map(|s| s.as_str()),
            "version_a": state.version_a,
            "version_b": state.version_b,
            "entries": names,
            "esp": path_str(&cfg.slots.esp),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
    println!("appliance:        {id}");
    println!("booted slot:      {}", dash(booted.map(|s| s.as_str())));
    println!(
        "current version:  {}",
        dash(report.current_version.as_deref())
    );
    println!(
        "slot a / b:       {} / {}",
        dash(state.version_a.as_deref()),
        dash(state.version_b.as_deref())
    );
    println!(
        "mirrored:         {}",
        dash(report.mirrored_version.as_deref())
    );
    println!(
        "staged:           {}",
        dash(report.staged_version.as_deref())
    );
    println!("pending restart:  {}", report.pending_restart);
    if let Some(ms) = report.restart_at_ms {
        if let Ok(t) = jiff::Timestamp::from_millisecond(ms) {
            println!("restart at:       {t}");
        }
    }
    println!(
        "window:           {}",
        report.window.as_ref().map_or_else(
            || "(none: no restart until one is set or asked for)".to_string(),
            |w| serde_json::to_string(w).unwrap_or_default()
        )
    );
    println!("boot entries:     {}", names.join(", "));
    println!("last error:       {}", dash(report.last_error.as_deref()));
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
