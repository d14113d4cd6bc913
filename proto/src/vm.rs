//! KVM/QEMU guests as they travel: what a guest is ([`VmInventory`]), how it is doing
//! ([`VmMetrics`]) and how the guest list changed ([`VmDelta`]).
//!
//! The collector discovers guests (`collector/src/sources/vm.rs`) and sends the inventory
//! as deltas: [`diff_vms`] of two discoveries of an unchanged box is empty, so nothing
//! travels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who describes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmOrigin {
    /// A bare QEMU process, read from its command line.
    Qemu,
    /// A libvirt domain, read from libvirt's status XML.
    Libvirt,
}

impl VmOrigin {
    /// `qemu` or `libvirt`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Libvirt => "libvirt",
        }
    }
}

/// What a guest is. Equal inventories serialize to equal bytes (vectors are sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInventory {
    /// Guest name (`-name guest=…`, libvirt `<name>`); `qemu-PID` when QEMU was given none.
    pub name: String,
    /// Guest UUID, lower case; empty when QEMU was given none.
    pub uuid: String,
    /// Who describes the guest.
    pub source: VmOrigin,
    /// Virtual CPUs present at start.
    pub vcpus: u32,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Disks, sorted by id.
    pub disks: Vec<VmDisk>,
    /// Network interfaces, sorted by id.
    pub nics: Vec<VmNic>,
}

impl VmInventory {
    /// The identity used to match a guest between discoveries: the UUID when there is one,
    /// otherwise `name:NAME`.
    #[must_use]
    pub fn key(&self) -> String {
        if self.uuid.is_empty() {
            format!("name:{}", self.name)
        } else {
            self.uuid.clone()
        }
    }
}

/// A guest disk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmDisk {
    /// Guest-side identity: libvirt target (`vda`), QEMU drive id or block node name.
    pub id: String,
    /// Host-side backing: a file, a block device, or a network volume name.
    pub path: String,
    /// Image format (`qcow2`, `raw`) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A guest network interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmNic {
    /// Device id (libvirt alias such as `net0`, QEMU `id=`, or `nicN`).
    pub id: String,
    /// Device model, e.g. `virtio-net-pci`, `virtio`, `e1000`.
    pub model: String,
    /// MAC address, lower case; empty when QEMU picks one itself.
    pub mac: String,
    /// Host side tap device, when the guest uses one (`vnet0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dev: Option<String>,
}

/// What a running guest is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Executing guest code (or, without QMP or libvirt, simply: the process is alive).
    Running,
    /// Paused: QMP/libvirt say so, not yet started (`-S`, `prelaunch`), or the process is
    /// stopped by a signal.
    Paused,
    /// Shutting down or shut off.
    Shutdown,
    /// Crashed or panicked.
    Crashed,
    /// No source could tell.
    Unknown,
}

impl VmState {
    /// The lower-case name used in samples, packs and on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::Crashed => "crashed",
            Self::Unknown => "unknown",
        }
    }
}

/// How a guest is doing, sampled every interval. Counters are totals since the guest started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMetrics {
    /// [`VmInventory::key`] of the guest these metrics belong to.
    pub key: String,
    /// Guest state.
    pub state: VmState,
    /// Where the state came from and its raw value: `qmp:prelaunch`, `libvirt:running/booted`,
    /// `proc:S`.
    pub state_detail: String,
    /// The QEMU process, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// CPU time of the QEMU process (user + system, all threads), milliseconds.
    pub cpu_time_ms: u64,
    /// Resident memory of the QEMU process, bytes.
    pub rss_bytes: u64,
    /// Bytes the QEMU process made storage read (`/proc/PID/io`), when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_read_bytes: Option<u64>,
    /// Bytes the QEMU process made storage write, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_write_bytes: Option<u64>,
    /// Bytes the guest received over its tap devices, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    /// Bytes the guest sent over its tap devices, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    /// Statistics of the guest's own cgroup (v2), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupStats>,
}

/// Statistics of a guest's own cgroup (v2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// The cgroup, relative to the hierarchy's root.
    pub path: String,
    /// `cpu.stat` `usage_usec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_usec: Option<u64>,
    /// `memory.current`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_current_bytes: Option<u64>,
    /// `io.stat` `rbytes` over all devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_read_bytes: Option<u64>,
    /// `io.stat` `wbytes` over all devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_write_bytes: Option<u64>,
}

/// One guest found by a discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredVm {
    /// What it is.
    pub inventory: VmInventory,
    /// How it is doing.
    pub metrics: VmMetrics,
}

/// How the guest list changed between two discoveries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDelta {
    /// Guests that are new, sorted by key.
    pub added: Vec<VmInventory>,
    /// Guests that are gone (as they were last seen), sorted by key.
    pub removed: Vec<VmInventory>,
    /// Guests whose inventory changed (as they are now), sorted by key.
    pub changed: Vec<VmInventory>,
}

impl VmDelta {
    /// Nothing changed, so nothing needs to travel.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares two discoveries by [`VmInventory::key`]. An unchanged discovery yields an
/// empty delta, whatever the order of the inputs.
#[must_use]
pub fn diff_vms(prev: &[VmInventory], now: &[VmInventory]) -> VmDelta {
    let before: BTreeMap<String, &VmInventory> = prev.iter().map(|v| (v.key(), v)).collect();
    let after: BTreeMap<String, &VmInventory> = now.iter().map(|v| (v.key(), v)).collect();
    let mut delta = VmDelta::default();
    for (key, vm) in &after {
        match before.get(key) {
            None => delta.added.push((*vm).clone()),
            Some(old) if old != vm => delta.changed.push((*vm).clone()),
            Some(_) => {}
        }
    }
    for (key, vm) in &before {
        if !after.contains_key(key) {
            delta.removed.push((*vm).clone());
        }
    }
    delta
}
