//! `outpost-image`: build a reproducible appliance root file system from a recipe, or compare
//! two builds.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build a bit-for-bit reproducible appliance root file system from a recipe (see
/// docs/recipe.md), or explain where two builds differ.
#[derive(Debug, Parser)]
#[command(name = "outpost-image", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build RECIPE into DIR: rootfs.tar.zst, manifest.json, sbom.spdx.json.
    Build(cmd::build::BuildArgs),
    /// Compare two outputs (directories, manifest.json files or rootfs.tar.zst archives).
    /// Exit status: 0 identical, 1 different, 2 error.
    Diff(cmd::diff::DiffArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => cmd::build::run(&a),
        Command::Diff(a) => cmd::diff::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
