//! `outpost-layout` CLI: `build`, `inspect`, `plan`, `boot`. Thin: parsing here, logic in the lib.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Turns a firmware layout and a root file system into a reproducible GPT disk image with
/// systemd-boot and A/B root slots; inspects and boots such images.
#[derive(Parser)]
#[command(name = "outpost-layout", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Build OUTDIR/<name>.raw (+ qcow2/vhdx/vmdk) and OUTDIR/layout.json from a layout and rootfs.
    Build(cmd::build::BuildArgs),
    /// Validate a layout and print where every partition goes (no tools, no I/O but the file).
    Plan(cmd::plan::PlanArgs),
    /// Print a raw image's partition table and boot entries (with tries left).
    Inspect(cmd::inspect::InspectArgs),
    /// Boot an image in qemu-system-x86_64 with OVMF, headless, serial console to stdout or a file.
    Boot(cmd::boot::BootArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Build(a) => cmd::build::run(a),
        Commands::Plan(a) => cmd::plan::run(a),
        Commands::Inspect(a) => cmd::inspect::run(a),
        Commands::Boot(a) => cmd::boot::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
