//! Host data as it travels: [`HostInventory`] (what the box is, sent when it changes) and
//! [`HostMetrics`] (how it is doing, sent every interval).
//!
//! The split matters: inventory holds only slowly changing facts so that its hash is stable
//! between collections; anything that moves every second (free space, counters, uptime)
//! belongs in metrics.

use serde::{Deserialize, Serialize};

/// What the box is. Equal inventories serialize to equal bytes (vectors are sorted by the
/// collector), so [`crate::content_hash`] tells whether anything changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    /// Host name.
    pub hostname: String,
    /// OS name, e.g. `Debian GNU/Linux`.
    pub os_name: String,
    /// OS version, e.g. `12`.
    pub os_version: String,
    /// Kernel version, e.g. `6.1.0-18-amd64`.
    pub kernel_version: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// CPU brand string of the first CPU.
    pub cpu_brand: String,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Physical cores, where known.
    pub physical_cores: Option<u32>,
    /// Total memory, bytes.
    pub memory_total_bytes: u64,
    /// Total swap, bytes.
    pub swap_total_bytes: u64,
    /// Block devices (whole disks), sorted by name.
    pub disks: Vec<DiskInfo>,
    /// Mounted file systems, sorted by mount point.
    pub filesystems: Vec<FilesystemInfo>,
    /// Network interfaces, sorted by name.
    pub nics: Vec<NicInfo>,
    /// Boot time, unix seconds (changes only on reboot).
    pub boot_time: u64,
}

/// A whole disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// `ssd`, `hdd` or `unknown`.
    pub kind: String,
    /// Removable media.
    pub removable: bool,
}

/// A mounted file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemInfo {
    /// Mount point.
    pub mount_point: String,
    /// Device or source, e.g. `/dev/vda1`.
    pub device: String,
    /// File system type, e.g. `ext4`.
    pub fs_type: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:…`.
    pub mac: String,
    /// Addresses with prefix length, e.g. `10.0.0.2/24`, sorted.
    pub addresses: Vec<String>,
    /// MTU in bytes.
    pub mtu: u64,
}

/// How the box is doing, sampled every interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// Load average over 1, 5 and 15 minutes.
    pub load_avg: [f64; 3],
    /// CPU use over all CPUs since the previous sample, percent.
    pub cpu_usage_percent: f32,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory available, bytes.
    pub memory_available_bytes: u64,
    /// Swap in use, bytes.
    pub swap_used_bytes: u64,
    /// Running processes.
    pub process_count: u64,
    /// Per file system use, sorted by mount point.
    pub filesystems: Vec<FilesystemUsage>,
    /// Per interface counters, sorted by name (totals since boot).
    pub nics: Vec<NicCounters>,
}

/// Use of one file system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesystemUsage {
    /// Mount point.
    pub mount_point: String,
    /// Size, bytes.
    pub total_bytes: u64,
    /// Available to unprivileged users, bytes.
    pub available_bytes: u64,
    /// Free space, percent of size.
    pub free_percent: f64,
}

/// Counters of one interface since boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicCounters {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Send errors.
    pub tx_errors: u64,
}
