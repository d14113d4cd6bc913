//! `outpost-image build`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use outpost_image::pipeline::{build, default_cache_dir, BuildOptions};
use outpost_image::BuildError;

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe (TOML); relative paths in it are relative to its directory.
    pub recipe: PathBuf,
    /// Output directory; receives rootfs.tar.zst, manifest.json and sbom.spdx.json, each
    /// renamed into place only when complete.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Stage cache directory [default: $XDG_CACHE_HOME/outpost-image or ~/.cache/outpost-image].
    #[arg(long, value_name = "DIR", env = "OUTPOST_IMAGE_CACHE")]
    pub cache: Option<PathBuf>,
    /// Build every stage from scratch without reading or writing the cache.
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Print the build report (stages, keys, rootfs sha256) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `build`; exit 0 on success.
pub fn run(args: &BuildArgs) -> Result<ExitCode, BuildError> {
    let cache = if args.no_cache {
        None
    } else {
        args.cache.clone().or_else(default_cache_dir)
    };
    let report = build(&BuildOptions {
        recipe: args.recipe.clone(),
        out: args.out.clone(),
        cache,
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("rootfs.tar.zst sha256 {}", report.rootfs_sha256);
        println!("output in {}", report.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
