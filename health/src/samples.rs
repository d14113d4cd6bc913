//! What the engine judges: objects of a class, each with numeric values and text labels.
//!
//! [`Samples`] is a plain bag of [`ObjectSample`]s, so the engine never reads the world. The
//! builders here turn the collector's sources into samples with the metric and label names
//! packs use ([`metric_names`], [`label_names`]); packs are validated against those lists so
//! a typo is an error at load, not a monitor that stays Unknown forever.

use std::collections::BTreeMap;
use std::fmt;

use outpost_proto::{HostInventory, HostMetrics};
use serde::{Deserialize, Serialize};

use outpost_proto::vm::DiscoveredVm;

/// The kinds of object a pack can talk about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The appliance itself (one per collector, id = host name).
    Host,
    /// A KVM/QEMU guest (id = guest name).
    Vm,
    /// A whole disk (id = kernel name, `vda`).
    Disk,
    /// A mounted file system (id = mount point).
    Filesystem,
    /// A network interface (id = interface name).
    Nic,
    /// A systemd unit (id = unit name, `ssh.service`).
    Service,
    /// An X.509 certificate (id = a name the source gives, e.g. `outpost-collector`).
    Certificate,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 7] = [
        Self::Host,
        Self::Vm,
        Self::Disk,
        Self::Filesystem,
        Self::Nic,
        Self::Service,
        Self::Certificate,
    ];

    /// The name used in packs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Vm => "vm",
            Self::Disk => "disk",
            Self::Filesystem => "filesystem",
            Self::Nic => "nic",
            Self::Service => "service",
            Self::Certificate => "certificate",
        }
    }

    /// Parses [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metric (numeric value) names a class's samples carry.
#[must_use]
pub fn metric_names(class: Class) -> &'static [&'static str] {
    match class {
        Class::Host => &[
            "cpu_percent",
            "memory_used_percent",
            "memory_available_bytes",
            "swap_used_bytes",
            "load1",
            "load5",
            "load15",
            "process_count",
            "uptime_secs",
        ],
        Class::Vm => &[
            "vcpus",
            "memory_bytes",
            "cpu_time_ms",
            "rss_bytes",
            "io_read_bytes",
            "io_write_bytes",
            "net_rx_bytes",
            "net_tx_bytes",
        ],
        Class::Disk => &["size_bytes"],
        Class::Filesystem => &["free_percent", "available_bytes", "total_bytes"],
        Class::Nic => &[
            "rx_bytes",
            "tx_bytes",
            "rx_packets",
            "tx_packets",
            "rx_errors",
            "tx_errors",
        ],
        Class::Service => &[],
        Class::Certificate => &["expires_at_ms"],
    }
}

/// Label (text) names a class's samples carry; usable in `where` selectors.
#[must_use]
pub fn label_names(class: Class) -> &'static [&'static str] {
    match class {
        Class::Host => &["os", "kernel", "arch"],
        Class::Vm => &["uuid", "source", "state", "state_detail"],
        Class::Disk => &["kind", "removable"],
        Class::Filesystem => &["fs_type", "device", "read_only"],
        Class::Nic => &["mac"],
        Class::Service => &["load_state", "active_state", "sub_state", "error"],
        Class::Certificate => &["path", "subject", "error"],
    }
}

/// An object: its class and its id within the class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The class.
    pub class: Class,
    /// The id within the class (mount point, interface name, guest name, …).
    pub id: String,
}

impl ObjectKey {
    /// Builds a key.
    #[must_use]
    pub fn new(class: Class, id: impl Into<String>) -> Self {
        Self {
            class,
            id: id.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.class, self.id)
    }
}

/// One object as seen this round.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ObjectSample {
    /// Which object.
    pub key: ObjectKey,
    /// The object it belongs to (the host for everything else); `None` for the host, and
    /// for other objects means "the host in the same [`Samples`]".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ObjectKey>,
    /// Numeric values by [`metric_names`].
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    /// Text values by [`label_names`].
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Default for ObjectKey {
    fn default() -> Self {
        Self::new(Class::Host, "")
    }
}

impl ObjectSample {
    /// An object with no values yet.
    #[must_use]
    pub fn new(key: ObjectKey) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }

    /// Sets a numeric value.
    #[must_use]
    pub fn value(mut self, name: &str, v: f64) -> Self {
        self.values.insert(name.to_string(), v);
        self
    }

    /// Sets a label.
    #[must_use]
    pub fn label(mut self, name: &str, v: impl Into<String>) -> Self {
        self.labels.insert(name.to_string(), v.into());
        self
    }

    /// Sets the parent.
    #[must_use]
    pub fn parent(mut self, parent: ObjectKey) -> Self {
        self.parent = Some(parent);
        self
    }
}

/// The state of a systemd unit, as `systemctl show -p LoadState,ActiveState,SubState` says.
///
/// When the state could not be read (no systemd, `systemctl` failed), `load_state` is
/// `unknown`, `active_state` and `sub_state` are empty (not sampled, so the unit's monitors
/// are Unknown) and `error` says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Unit name, `ssh.service`.
    pub unit: String,
    /// `loaded`, `not-found`, `masked`, … (`unknown` when it could not be read)
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, … (empty: not known)
    pub active_state: String,
    /// `running`, `exited`, `dead`, … (empty: not known)
    pub sub_state: String,
    /// Why the state is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ServiceStatus {
    /// A unit whose state could not be read, and why.
    #[must_use]
    pub fn unknown(unit: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            unit: unit.into(),
            load_state: "unknown".into(),
            active_state: String::new(),
            sub_state: String::new(),
            error: Some(error.into()),
        }
    }
}

/// A certificate the box holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The object id (`outpost-collector` for the collector's own certificate).
    pub id: String,
    /// Where it lives.
    pub path: String,
    /// Subject, for display (empty when the file could not be read).
    pub subject: String,
    /// `notAfter`, unix milliseconds; `None` when the file could not be read or parsed (its
    /// monitors are then Unknown).
    pub not_after_ms: Option<i64>,
    /// Why the certificate could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything observed in one round.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Samples {
    /// The objects, in any order.
    pub objects: Vec<ObjectSample>,
}

#[allow(clippy::cast_precision_loss)] // byte counts far below 2^53 are exact in f64
fn f(v: u64) -> f64 {
    v as f64
}

impl Samples {
    /// No objects.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an object.
    pub fn push(&mut self, sample: ObjectSample) {
        self.objects.push(sample);
    }

    /// The host object, if one was added.
    #[must_use]
    pub fn host_key(&self) -> Option<ObjectKey> {
        self.objects
            .iter()
            .find(|o| o.key.class == Class::Host)
            .map(|o| o.key.clone())
    }

    fn child(&self, key: ObjectKey) -> ObjectSample {
        let sample = ObjectSample::new(key);
        match self.host_key() {
            Some(host) => sample.parent(host),
            None => sample,
        }
    }

    /// The host, its file systems, disks and NICs from the host source.
    #[must_use]
    pub fn from_host(inventory: &HostInventory, metrics: &HostMetrics) -> Self {
        let mut samples = Self::new();
        let memory_used_percent = if inventory.memory_total_bytes == 0 {
            0.0
        } else {
            f(metrics.memory_used_bytes) * 100.0 / f(inventory.memory_total_bytes)
        };
        samples.push(
            ObjectSample::new(ObjectKey::new(Class::Host, &inventory.hostname))
                .value("cpu_percent", f64::from(metrics.cpu_usage_percent))
                .value("memory_used_percent", memory_used_percent)
                .value("memory_available_bytes", f(metrics.memory_available_bytes))
                .value("swap_used_bytes", f(metrics.swap_used_bytes))
                .value("load1", metrics.load_avg[0])
                .value("load5", metrics.load_avg[1])
                .value("load15", metrics.load_avg[2])
                .value("process_count", f(metrics.process_count))
                .value("uptime_secs", f(metrics.uptime_secs))
                .label(
                    "os",
                    format!("{} {}", inventory.os_name, inventory.os_version),
                )
                .label("kernel", &inventory.kernel_version)
                .label("arch", &inventory.arch),
        );
        for fs in &inventory.filesystems {
            let mut s = samples
                .child(ObjectKey::new(Class::Filesystem, &fs.mount_point))
                .label("fs_type", &fs.fs_type)
                .label("device", &fs.device)
                .label("read_only", fs.read_only.to_string())
                .value("total_bytes", f(fs.total_bytes));
            if let Some(u) = metrics
                .filesystems
                .iter()
                .find(|u| u.mount_point == fs.mount_point)
            {
                s = s
                    .value("free_percent", u.free_percent)
                    .value("available_bytes", f(u.available_bytes));
            }
            samples.push(s);
        }
        for disk in &inventory.disks {
            let s = samples
                .child(ObjectKey::new(Class::Disk, &disk.name))
                .label("kind", &disk.kind)
                .label("removable", disk.removable.to_string())
                .value("size_bytes", f(disk.size_bytes));
            samples.push(s);
        }
        for nic in &inventory.nics {
            let mut s = samples
                .child(ObjectKey::new(Class::Nic, &nic.name))
                .label("mac", &nic.mac);
            if let Some(c) = metrics.nics.iter().find(|c| c.name == nic.name) {
                s = s
                    .value("rx_bytes", f(c.rx_bytes))
                    .value("tx_bytes", f(c.tx_bytes))
                    .value("rx_packets", f(c.rx_packets))
                    .value("tx_packets", f(c.tx_packets))
                    .value("rx_errors", f(c.rx_errors))
                    .value("tx_errors", f(c.tx_errors));
            }
            samples.push(s);
        }
        samples
    }

    /// Adds the guests of a VM discovery (children of the host).
    pub fn add_vms(&mut self, vms: &[DiscoveredVm]) {
        for vm in vms {
            let (inv, m) = (&vm.inventory, &vm.metrics);
            let mut s = self
                .child(ObjectKey::new(Class::Vm, &inv.name))
                .label("uuid", &inv.uuid)
                .label("source", inv.source.as_str())
                .label("state", m.state.as_str())
                .label("state_detail", &m.state_detail)
                .value("vcpus", f64::from(inv.vcpus))
                .value("memory_bytes", f(inv.memory_bytes))
                .value("cpu_time_ms", f(m.cpu_time_ms))
                .value("rss_bytes", f(m.rss_bytes));
            for (name, v) in [
                ("io_read_bytes", m.io_read_bytes),
                ("io_write_bytes", m.io_write_bytes),
                ("net_rx_bytes", m.net_rx_bytes),
                ("net_tx_bytes", m.net_tx_bytes),
            ] {
                if let Some(v) = v {
                    s = s.value(name, f(v));
                }
            }
            self.push(s);
        }
    }

    /// Adds systemd units (children of the host).
    pub fn add_services(&mut self, services: &[ServiceStatus]) {
        for svc in services {
            let mut s = self
                .child(ObjectKey::new(Class::Service, &svc.unit))
                .label("load_state", &svc.load_state);
            for (name, v) in [
                ("active_state", &svc.active_state),
                ("sub_state", &svc.sub_state),
            ] {
                if !v.is_empty() {
                    s = s.label(name, v);
                }
            }
            if let Some(e) = &svc.error {
                s = s.label("error", e);
            }
            self.push(s);
        }
    }

    /// Adds certificates (children of the host).
    pub fn add_certificates(&mut self, certificates: &[CertificateStatus]) {
        for cert in certificates {
            let mut s = self
                .child(ObjectKey::new(Class::Certificate, &cert.id))
                .label("path", &cert.path)
                .label("subject", &cert.subject);
            if let Some(at) = cert.not_after_ms {
                #[allow(clippy::cast_precision_loss)] // milliseconds until year 287,000 are exact
                let at = at as f64;
                s = s.value("expires_at_ms", at);
            }
            if let Some(e) = &cert.error {
                s = s.label("error", e);
            }
            self.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::host::{FilesystemInfo, FilesystemUsage, NicCounters, NicInfo};
    use outpost_proto::vm::{VmInventory, VmMetrics, VmOrigin, VmState};

    #[test]
    fn host_source_becomes_objects_with_known_names() {
        let inv = HostInventory {
            hostname: "box1".into(),
            memory_total_bytes: 1000,
            filesystems: vec![FilesystemInfo {
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                ..FilesystemInfo::default()
            }],
            nics: vec![NicInfo {
                name: "eth0".into(),
                ..NicInfo::default()
            }],
            ..HostInventory::default()
        };
        let metrics = HostMetrics {
            memory_used_bytes: 250,
            cpu_usage_percent: 12.5,
            filesystems: vec![FilesystemUsage {
                mount_point: "/".into(),
                free_percent: 42.0,
                ..FilesystemUsage::default()
            }],
            nics: vec![NicCounters {
                name: "eth0".into(),
                rx_errors: 3,
                ..NicCounters::default()
            }],
            ..HostMetrics::default()
        };
        let mut samples = Samples::from_host(&inv, &metrics);
        samples.add_vms(&[DiscoveredVm {
            inventory: VmInventory {
                name: "db1".into(),
                uuid: "u".into(),
                source: VmOrigin::Qemu,
                vcpus: 2,
                memory_bytes: 64,
                disks: vec![],
                nics: vec![],
            },
            metrics: VmMetrics {
                key: "u".into(),
                state: VmState::Paused,
                state_detail: "qmp:paused".into(),
                pid: Some(1),
                cpu_time_ms: 5,
                rss_bytes: 6,
                io_read_bytes: None,
                io_write_bytes: Some(7),
                net_rx_bytes: None,
                net_tx_bytes: None,
                cgroup: None,
            },
        }]);
        let host = ObjectKey::new(Class::Host, "box1");
        assert_eq!(samples.host_key(), Some(host.clone()));
        for o in &samples.objects {
            for name in o.values.keys() {
                assert!(metric_names(o.key.class).contains(&name.as_str()), "{name}");
            }
            for name in o.labels.keys() {
                assert!(label_names(o.key.class).contains(&name.as_str()), "{name}");
            }
            if o.key.class != Class::Host {
                assert_eq!(o.parent.as_ref(), Some(&host));
            }
        }
        let h = &samples.objects[0];
        assert_eq!(h.values["memory_used_percent"], 25.0);
        let vm = samples
            .objects
            .iter()
            .find(|o| o.key.class == Class::Vm)
            .unwrap();
        assert_eq!(vm.labels["state"], "paused");
        assert!(!vm.values.contains_key("io_read_bytes"));
        assert_eq!(vm.values["io_write_bytes"], 7.0);
    }

    #[test]
    fn class_names_round_trip() {
        for c in Class::ALL {
            assert_eq!(Class::parse(c.as_str()), Some(c));
        }
        assert_eq!(Class::parse("VM"), None);
    }
}
