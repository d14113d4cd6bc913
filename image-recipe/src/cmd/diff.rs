//! `outpost-image diff`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use outpost_image::diff::{diff_outputs, load_side, render_text};
use outpost_image::BuildError;

/// Arguments of `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// First output: a build directory, its manifest.json, or a rootfs.tar.zst.
    pub a: PathBuf,
    /// Second output, same forms.
    pub b: PathBuf,
    /// Print the differences as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `diff`: exit 0 when identical (archives' bytes included), 1 when different.
pub fn run(args: &DiffArgs) -> Result<ExitCode, BuildError> {
    let a = load_side(&args.a)?;
    let b = load_side(&args.b)?;
    let r = diff_outputs(&a, &b)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "identical": r.is_identical(), "differences": r })
        );
    } else {
        print!("{}", render_text(&r));
    }
    Ok(if r.is_identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
