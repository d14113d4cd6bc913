//! `outpost-layout inspect`.

use clap::Args;
use outpost_layout::inspect::{inspect, render_text};
use outpost_layout::LayoutError;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// Raw disk image.
    image: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `inspect`.
pub fn run(a: InspectArgs) -> Result<ExitCode, LayoutError> {
    let i = inspect(&a.image)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i).expect("serializes"));
    } else {
        print!("{}", render_text(&i));
    }
    Ok(ExitCode::SUCCESS)
}
