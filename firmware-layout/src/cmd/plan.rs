//! `outpost-layout plan`.

use clap::Args;
use outpost_layout::config::format_size;
use outpost_layout::image::{load_and_plan, needed_tools, Format};
use outpost_layout::tools;
use outpost_layout::LayoutError;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// Layout file.
    layout: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    /// Also check that `build` can run here: every external tool it needs for this layout and
    /// the formats in --format is installed, and this process is root. Run before a long
    /// rootfs build (`make image` does).
    #[arg(long)]
    check_tools: bool,
    /// Formats `build` will make (with --check-tools): raw always, qcow2, vhdx, vmdk.
    #[arg(long, default_value = "raw")]
    format: String,
}

/// Runs `plan`.
pub fn run(a: PlanArgs) -> Result<ExitCode, LayoutError> {
    let (_, plan) = load_and_plan(&a.layout)?;
    if a.check_tools {
        let formats = Format::parse_list(&a.format)?;
        tools::require(&needed_tools(&plan, &formats))?;
        tools::require_root(
            "build a disk image (the root file system is unpacked with its owners)",
        )?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).expect("serializes")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "disk {} ({} sectors), GUID {}",
        format_size(plan.total_sectors * plan.sector_size),
        plan.total_sectors,
        plan.disk_guid
    );
    println!(
        "{:<3} {:<10} {:>12} {:>12} {:>10} {:<6} {:<7} PARTUUID",
        "#", "LABEL", "START LBA", "END LBA", "SIZE", "FS", "CONTENTS"
    );
    for p in &plan.partitions {
        println!(
            "{:<3} {:<10} {:>12} {:>12} {:>10} {:<6} {:<7} {}",
            p.number,
            p.label,
            p.start_lba,
            p.last_lba(),
            format_size(p.size_bytes(plan.sector_size)),
            p.fs.as_str(),
            format!("{:?}", p.contents).to_lowercase(),
            p.part_guid
        );
    }
    Ok(ExitCode::SUCCESS)
}
