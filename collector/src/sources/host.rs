//! Host inventory and metrics from sysinfo, `/sys/block` and `/proc`.
//!
//! [`HostSource`] keeps sysinfo's state between samples, so CPU use is measured over the
//! time since the previous collection. It asks sysinfo only for what the inventory and
//! metrics use: CPU use, memory, file systems and NICs. The process count comes from
//! listing `/proc` ([`count_processes`]) rather than from sysinfo's process table, which
//! would read, keep and hold open every process's `stat` each interval to give one number.
//! Every vector is sorted, so that equal inventories serialize to equal bytes and hash
//! equally.

use std::path::Path;

use outpost_proto::host::{DiskInfo, FilesystemInfo, FilesystemUsage, NicCounters, NicInfo};
use outpost_proto::{HostInventory, HostMetrics};
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System,
};

/// Where whole block devices are listed.
pub const SYS_BLOCK: &str = "/sys/block";

/// Where processes are listed, one directory per PID.
pub const PROC: &str = "/proc";

/// Block device name prefixes that are not disks (loop devices, RAM disks).
const SKIPPED_BLOCK_PREFIXES: &[&str] = &["loop", "ram", "zram"];

/// Collects host inventory and metrics, keeping sysinfo's state between samples.
pub struct HostSource {
    system: System,
    disks: Disks,
    networks: Networks,
}

impl Default for HostSource {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSource {
    /// Takes a first sample of everything. CPU use becomes meaningful from the next
    /// [`Self::collect`] on, once [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] has passed.
    #[must_use]
    pub fn new() -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::everything()),
        );
        let disks =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
        let networks = Networks::new_with_refreshed_list();
        Self {
            system,
            disks,
            networks,
        }
    }

    /// Samples the host. Blocking (reads `/proc` and `/sys`); call it off the async runtime.
    pub fn collect(&mut self) -> (HostInventory, HostMetrics) {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        self.networks.refresh(true);

        let cpus = self.system.cpus();
        let mut filesystems: Vec<FilesystemInfo> = self
            .disks
            .list()
            .iter()
            .map(|d| FilesystemInfo {
                mount_point: d.mount_point().to_string_lossy().into_owned(),
                device: d.name().to_string_lossy().into_owned(),
                fs_type: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                read_only: d.is_read_only(),
            })
            .collect();
        sort_filesystems(&mut filesystems);
        let mut nics: Vec<NicInfo> = self
            .networks
            .list()
            .iter()
            .map(|(name, n)| {
                let mut addresses: Vec<String> =
                    n.ip_networks().iter().map(ToString::to_string).collect();
                addresses.sort();
                addresses.dedup();
                NicInfo {
                    name: name.clone(),
                    mac: n.mac_address().to_string(),
                    addresses,
                    mtu: n.mtu(),
                }
            })
            .collect();
        nics.sort_by(|a, b| a.name.cmp(&b.name));

        let inventory = HostInventory {
            hostname: System::host_name().unwrap_or_default(),
            os_name: System::name().unwrap_or_default(),
            os_version: System::os_version().unwrap_or_default(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            arch: System::cpu_arch(),
            cpu_brand: cpus
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            cpu_count: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
            physical_cores: System::physical_core_count().and_then(|n| u32::try_from(n).ok()),
            memory_total_bytes: self.system.total_memory(),
            swap_total_bytes: self.system.total_swap(),
            disks: read_block_devices(Path::new(SYS_BLOCK)),
            filesystems,
            nics,
            boot_time: System::boot_time(),
        };

        let mut fs_usage: Vec<FilesystemUsage> = self
            .disks
            .list()
            .iter()
            .map(|d| FilesystemUsage {
                mount_point: d.mount_point().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
                free_percent: free_percent(d.available_space(), d.total_space()),
            })
            .collect();
        fs_usage.sort_by(|a, b| {
            a.mount_point
                .cmp(&b.mount_point)
                .then(a.total_bytes.cmp(&b.total_bytes))
        });
        let mut counters: Vec<NicCounters> = self
            .networks
            .list()
            .iter()
            .map(|(name, n)| NicCounters {
                name: name.clone(),
                rx_bytes: n.total_received(),
                tx_bytes: n.total_transmitted(),
                rx_packets: n.total_packets_received(),
                tx_packets: n.total_packets_transmitted(),
                rx_errors: n.total_errors_on_received(),
                tx_errors: n.total_errors_on_transmitted(),
            })
            .collect();
        counters.sort_by(|a, b| a.name.cmp(&b.name));
        let load = System::load_average();
        let metrics = HostMetrics {
            uptime_secs: System::uptime(),
            load_avg: [load.one, load.five, load.fifteen],
            cpu_usage_percent: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_available_bytes: self.system.available_memory(),
            swap_used_bytes: self.system.used_swap(),
            process_count: count_processes(Path::new(PROC)),
            filesystems: fs_usage,
            nics: counters,
        };
        (inventory, metrics)
    }
}

/// Sorts file systems by mount point, then device and type (a mount point can be stacked).
fn sort_filesystems(v: &mut [FilesystemInfo]) {
    v.sort_by(|a, b| {
        a.mount_point
            .cmp(&b.mount_point)
            .then_with(|| a.device.cmp(&b.device))
            .then_with(|| a.fs_type.cmp(&b.fs_type))
    });
}

/// Free space in percent of `total`; 0 for an empty file system.
#[must_use]
pub fn free_percent(available: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        #[allow(clippy::cast_precision_loss)] // percent needs no 64-bit precision
        let p = available as f64 / total as f64 * 100.0;
        p.clamp(0.0, 100.0)
    }
}

/// Lists whole block devices under `sys_block` (normally `/sys/block`), skipping loop and
/// RAM devices, sorted by name. Size is `size` (512-byte sectors) × 512; `queue/rotational`
/// gives `hdd` or `ssd`; `removable` gives removable media. Unreadable entries are skipped.
#[must_use]
pub fn read_block_devices(sys_block: &Path) -> Vec<DiskInfo> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut disks: Vec<DiskInfo> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if SKIPPED_BLOCK_PREFIXES.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let dir = sys_block.join(&name);
            let sectors: u64 = read_trimmed(&dir.join("size"))?.parse().ok()?;
            let kind = match read_trimmed(&dir.join("queue").join("rotational")).as_deref() {
                Some("1") => "hdd",
                Some("0") => "ssd",
                _ => "unknown",
            };
            let removable = read_trimmed(&dir.join("removable")).as_deref() == Some("1");
            Some(DiskInfo {
                name,
                size_bytes: sectors.saturating_mul(512),
                kind: kind.to_string(),
                removable,
            })
        })
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

/// Counts processes (not threads) as the PID directories in `proc_root` (normally
/// `/proc`); 0 when it cannot be listed.
#[must_use]
pub fn count_processes(proc_root: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return 0;
    };
    let pids = entries.filter_map(Result::ok).filter(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            && e.file_type().is_ok_and(|t| t.is_dir())
    });
    pids.count() as u64
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_sorted_by_key<T, K: Ord>(v: &[T], f: impl Fn(&T) -> K) -> bool {
        v.windows(2).all(|w| f(&w[0]) <= f(&w[1]))
    }

    #[test]
    fn collect_fills_the_basics_and_sorts() {
        let mut src = HostSource::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let (inv, met) = src.collect();
        assert!(!inv.hostname.is_empty());
        assert!(inv.cpu_count > 0);
        assert!(inv.memory_total_bytes > 0);
        assert!(!inv.nics.is_empty(), "no NIC at all (not even lo)");
        assert!(!inv.arch.is_empty());
        assert!(inv.boot_time > 0);
        assert!(is_sorted_by_key(&inv.nics, |n| n.name.clone()));
        assert!(is_sorted_by_key(&inv.disks, |d| d.name.clone()));
        assert!(is_sorted_by_key(&inv.filesystems, |f| f
            .mount_point
            .clone()));
        for n in &inv.nics {
            assert!(is_sorted_by_key(&n.addresses, Clone::clone));
        }
        assert!(is_sorted_by_key(&met.nics, |n| n.name.clone()));
        assert!(is_sorted_by_key(&met.filesystems, |f| f
            .mount_point
            .clone()));
        assert!(met.process_count > 0);
        assert!(met.memory_used_bytes > 0);
        assert!((0.0..=100.0).contains(&met.cpu_usage_percent));
    }

    #[test]
    fn inventory_is_stable_between_samples() {
        let mut src = HostSource::new();
        let (a, _) = src.collect();
        let (b, _) = src.collect();
        // Only facts that do not move second to second belong in inventory.
        assert_eq!(a.hostname, b.hostname);
        assert_eq!(a.boot_time, b.boot_time);
        assert_eq!(a.nics.len(), b.nics.len());
        assert_eq!(a.disks, b.disks);
    }

    #[test]
    fn block_devices_from_a_fake_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, size: &str, rot: Option<&str>, removable: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(d.join("queue")).unwrap();
            std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
            if let Some(r) = rot {
                std::fs::write(d.join("queue").join("rotational"), r).unwrap();
            }
            std::fs::write(d.join("removable"), removable).unwrap();
        };
        mk("vdb", "2048", Some("1"), "0");
        mk("sda", "4", Some("0"), "1");
        mk("nvme0n1", "8", None, "0");
        mk("loop0", "100", Some("0"), "0");
        mk("ram1", "100", Some("0"), "0");
        std::fs::create_dir_all(dir.path().join("broken")).unwrap();
        let disks = read_block_devices(dir.path());
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "vdb"]);
        assert_eq!(disks[0].kind, "unknown");
        assert_eq!(disks[1].kind, "ssd");
        assert!(disks[1].removable);
        assert_eq!(disks[2].kind, "hdd");
        assert_eq!(disks[2].size_bytes, 2048 * 512);
        assert!(read_block_devices(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn processes_are_the_pid_directories() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["1", "42", "4242", "self", "sys", "1a"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("7"), "").unwrap();
        std::fs::write(dir.path().join("uptime"), "").unwrap();
        assert_eq!(count_processes(dir.path()), 3);
        assert_eq!(count_processes(&dir.path().join("missing")), 0);
    }

    #[test]
    fn free_percent_handles_edges() {
        assert!((free_percent(0, 0)).abs() < f64::EPSILON);
        assert!((free_percent(50, 200) - 25.0).abs() < 1e-9);
        assert!((free_percent(300, 200) - 100.0).abs() < 1e-9);
    }
}
