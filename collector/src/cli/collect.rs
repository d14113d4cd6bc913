//! `outpost-collector collect [--json [--compact]]`: one collection, printed.

use std::fmt::Write as _;
use std::io::Write as _;

use outpost_collector::sources::HostSource;
use outpost_proto::{HostInventory, HostMetrics};
use serde::Serialize;

use super::CliError;

/// Arguments of `collect`.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// Print `{"inventory": …, "metrics": …}` as JSON instead of a summary.
    #[arg(long)]
    json: bool,
    /// With --json: one line instead of indented JSON.
    #[arg(long, requires = "json")]
    compact: bool,
}

#[derive(Serialize)]
struct Collection {
    inventory: HostInventory,
    metrics: HostMetrics,
}

/// Collects once (two samples apart, so CPU use means something) and prints it.
pub fn run(args: &CollectArgs) -> Result<(), CliError> {
    let mut source = HostSource::new();
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    let (inventory, metrics) = source.collect();
    let text = if args.json {
        let c = Collection { inventory, metrics };
        let mut s = if args.compact {
            serde_json::to_string(&c)
        } else {
            serde_json::to_string_pretty(&c)
        }
        .map_err(CliError::EncodeJson)?;
        s.push('\n');
        s
    } else {
        summary(&inventory, &metrics)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(CliError::WriteStdout)
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[allow(clippy::cast_precision_loss)] // display only
fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

fn summary(inv: &HostInventory, m: &HostMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "host:        {}", inv.hostname);
    let _ = writeln!(
        s,
        "os:          {} {} (kernel {}, {})",
        inv.os_name, inv.os_version, inv.kernel_version, inv.arch
    );
    let _ = writeln!(
        s,
        "cpu:         {} x {} ({} physical cores), {:.1}% used",
        inv.cpu_count,
        inv.cpu_brand,
        inv.physical_cores
            .map_or_else(|| "?".to_string(), |n| n.to_string()),
        m.cpu_usage_percent
    );
    let _ = writeln!(
        s,
        "memory:      {:.1} GiB used of {:.1} GiB; swap {:.1} of {:.1} GiB",
        gib(m.memory_used_bytes),
        gib(inv.memory_total_bytes),
        gib(m.swap_used_bytes),
        gib(inv.swap_total_bytes)
    );
    let _ = writeln!(
        s,
        "load:        {:.2} {:.2} {:.2}; {} processes; up {}",
        m.load_avg[0],
        m.load_avg[1],
        m.load_avg[2],
        m.process_count,
        outpost_proto::format_duration(std::time::Duration::from_secs(m.uptime_secs))
    );
    for d in &inv.disks {
        let _ = writeln!(
            s,
            "disk:        {} {:.1} GiB {}{}",
            d.name,
            gib(d.size_bytes),
            d.kind,
            if d.removable { " removable" } else { "" }
        );
    }
    for f in &m.filesystems {
        let _ = writeln!(
            s,
            "filesystem:  {} {:.1} GiB, {:.0}% free",
            f.mount_point,
            gib(f.total_bytes),
            f.free_percent
        );
    }
    for n in &inv.nics {
        let _ = writeln!(
            s,
            "nic:         {} {} mtu {} {}",
            n.name,
            n.mac,
            n.mtu,
            n.addresses.join(" ")
        );
    }
    s
}
