//! `outpost-layout build`.

use clap::Args;
use outpost_layout::image::{self, BuildOptions, Format};
use outpost_layout::LayoutError;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `build`.
#[derive(Args)]
pub struct BuildArgs {
    /// Layout file (see docs/layout.md).
    layout: PathBuf,
    /// Root file system archive made by `outpost-image build` (rootfs.tar.zst).
    #[arg(long)]
    rootfs: PathBuf,
    /// Output directory; gets <name>.raw, the other formats and layout.json.
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated formats besides the always-made raw: qcow2, vhdx, vmdk.
    #[arg(long, default_value = "raw")]
    format: String,
    /// Time stamp for every file-system time (seconds since 1970); default: the
    /// `source_date_epoch` of the manifest.json next to --rootfs.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<u64>,
    /// Partition image cache: a file system whose inputs (layout, root archive, epoch, tool
    /// versions) did not change is copied from here instead of made again. Default:
    /// $XDG_CACHE_HOME/outpost-layout (or ~/.cache/outpost-layout).
    #[arg(long, conflicts_with = "no_cache")]
    cache: Option<PathBuf>,
    /// Make every file system; read and write no cache (the output is the same bytes).
    #[arg(long)]
    no_cache: bool,
    /// Print layout.json to standard output when done.
    #[arg(long)]
    json: bool,
}

/// Runs `build`.
pub fn run(a: BuildArgs) -> Result<ExitCode, LayoutError> {
    let opts = BuildOptions {
        layout: a.layout,
        rootfs: a.rootfs,
        out_dir: a.out.clone(),
        formats: Format::parse_list(&a.format)?,
        epoch: a.source_date_epoch,
        cache: if a.no_cache {
            None
        } else {
            a.cache.or_else(image::default_cache_dir)
        },
    };
    let desc = image::build(&opts)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&desc).expect("serializes")
        );
    } else {
        for img in &desc.images {
            println!("{}", a.out.join(&img.file).display());
        }
        println!("{}", a.out.join("layout.json").display());
    }
    Ok(ExitCode::SUCCESS)
}
