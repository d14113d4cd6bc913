//! `outpost-layout plan`.

use clap::Args;
use outpost_layout::config::format_size;
use outpost_layout::image::load_and_plan;
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
}

/// Runs `plan`.
pub fn run(a: PlanArgs) -> Result<ExitCode, LayoutError> {
    let (_, plan) = load_and_plan(&a.layout)?;
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
