//! KVM/QEMU guests: inventory and metrics, without linking a C library.
//!
//! # Design
//!
//! Discovery is progressive, so a box without VMs pays almost nothing:
//!
//! 1. [`probe`] — the cheap check: is `/run/libvirt/qemu` there, and is any process's
//!    `comm` a QEMU system emulator (`qemu-system-*`, `qemu-kvm`, `kvm`)? One short read per
//!    process, no command lines, no XML.
//! 2. Only where the probe found something, [`discover_vms_with`] goes deeper:
//!    * **libvirt** ([`libvirt`]): the status XML libvirt keeps for every *running* domain in
//!      `/run/libvirt/qemu/NAME.xml` (`<domstatus state=… pid=…><domain>…`) gives name,
//!      UUID, state, vCPUs, memory, disks and NICs (with their host tap device). No
//!      connection to libvirtd is made, so a hung libvirtd cannot hang the collector.
//!    * **bare QEMU** ([`cmdline`]): `/proc/PID/cmdline` gives what the guest was started with
//!      (`-name`, `-uuid`, `-smp`, `-m`, `-drive`/`-blockdev`/`-hda`, `-netdev`/`-device`/
//!      `-nic`/`-net`, `-qmp`/`-chardev`+`-mon`). QEMU processes that belong to a libvirt
//!      domain (same PID or same UUID) are reported once, as libvirt's.
//!    * **metrics** ([`procfs`]) for both: `/proc/PID/stat` (process state, CPU time),
//!      `/proc/PID/status` (RSS), `/proc/PID/io` (storage bytes, when readable), the
//!      guest's cgroup v2 (`cpu.stat`, `memory.current`, `io.stat`) when it has one of its
//!      own, and the host side of tap devices in `/sys/class/net` for network bytes.
//!    * **QMP** ([`qmp`]), only for bare QEMU that was given a QMP socket: `query-status`
//!      with a short overall timeout, which tells a running guest from a paused one.
//!
//! The roots (`/proc`, `/run/libvirt`, the cgroup and sysfs roots) are arguments, so the
//! tests run the same code against fixture trees.
//!
//! Inventory (what a guest *is*) and metrics (how it is doing) are split as for the host:
//! [`VmInventory`] holds only facts that change when the guest is redefined or restarted,
//! so [`diff_vms`] on two discoveries of an unchanged box yields an empty [`VmDelta`] and
//! nothing needs to travel.
//!
//! # Current limitations
//!
//! * Only running guests are seen: libvirt writes status XML for active domains only, and
//!   a bare QEMU guest exists only as a process. Defined-but-shut-off libvirt domains
//!   (`/etc/libvirt/qemu`) are not reported.
//! * A QEMU process renamed with `-name …,process=NAME` is not found by the cheap check
//!   unless libvirt reports it.
//! * CPU time assumes `USER_HZ` = 100 (true on x86 and arm Linux); `sysconf` would need
//!   `unsafe` FFI, which the workspace forbids.
//! * Network block devices (`rbd`, `nbd`, `iscsi` nodes of `-blockdev`) are listed only
//!   when libvirt describes them; from a bare command line only file-backed nodes are.
//! * QMP monitors accept one client at a time; when another client holds the socket the
//!   query times out and the state falls back to what `/proc` says.
//! * Guests without `-uuid` are keyed by name; guests without either by `qemu-PID`, so
//!   such a guest restarting shows as removed plus added.

pub mod cmdline;
pub mod libvirt;
pub mod procfs;
pub mod qmp;

pub use outpost_proto::vm::{
    diff_vms, CgroupStats, DiscoveredVm, VmDelta, VmDisk, VmInventory, VmMetrics, VmNic, VmOrigin,
    VmState,
};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the kernel's process tree is mounted.
pub const PROC_ROOT: &str = "/proc";
/// libvirt's runtime directory; running QEMU domains have status XML in `qemu/` below it.
pub const LIBVIRT_RUN: &str = "/run/libvirt";
/// Where the unified (v2) cgroup hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where network interfaces (and their counters) are listed.
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// Default overall time a QMP `query-status` may take.
pub const DEFAULT_QMP_TIMEOUT: Duration = Duration::from_millis(250);

/// What the cheap check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// libvirt's QEMU runtime directory exists.
    pub libvirt: bool,
    /// Processes whose `comm` is a QEMU system emulator, ascending.
    pub qemu_pids: Vec<u32>,
}

impl Probe {
    /// Nothing to look at more closely.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.libvirt && self.qemu_pids.is_empty()
    }
}

/// The cheap check: libvirt's runtime directory and QEMU process names, nothing more.
#[must_use]
pub fn probe(proc_root: &Path, libvirt_run: &Path) -> Probe {
    Probe {
        libvirt: libvirt_run.join("qemu").is_dir(),
        qemu_pids: procfs::find_qemu_pids(proc_root),
    }
}

/// Where the deeper discovery reads besides `/proc` and `/run/libvirt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Root of the cgroup v2 hierarchy ([`CGROUP_ROOT`]).
    pub cgroup_root: PathBuf,
    /// Network interfaces ([`SYS_CLASS_NET`]).
    pub sys_class_net: PathBuf,
    /// Overall time for one QMP `query-status`; `None` never talks QMP.
    pub qmp_timeout: Option<Duration>,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        Self {
            cgroup_root: PathBuf::from(CGROUP_ROOT),
            sys_class_net: PathBuf::from(SYS_CLASS_NET),
            qmp_timeout: Some(DEFAULT_QMP_TIMEOUT),
        }
    }
}

/// Discovers the running guests with the default [`DiscoverOptions`]. Blocking (reads
/// `/proc`, may wait up to the QMP timeout per bare QEMU guest with a QMP socket); call it
/// off the async runtime.
#[must_use]
pub fn discover_vms(proc_root: &Path, libvirt_run: &Path) -> Vec<DiscoveredVm> {
    discover_vms_with(proc_root, libvirt_run, &DiscoverOptions::default())
}

/// Discovers the running guests: [`probe`] first, deeper only where it found something.
/// The result is sorted by [`VmInventory::key`]; unreadable pieces are left out rather
/// than failing the whole discovery.
#[must_use]
pub fn discover_vms_with(
    proc_root: &Path,
    libvirt_run: &Path,
    options: &DiscoverOptions,
) -> Vec<DiscoveredVm> {
    let found = probe(proc_root, libvirt_run);
    if found.is_empty() {
        return Vec::new();
    }
    let mut vms: BTreeMap<String, DiscoveredVm> = BTreeMap::new();
    let mut libvirt_pids = BTreeSet::new();
    let mut libvirt_uuids = BTreeSet::new();

    if found.libvirt {
        for domain in libvirt::read_domains(libvirt_run) {
            let metrics_pid = domain.pid.filter(|pid| procfs::is_alive(proc_root, *pid));
            if let Some(pid) = domain.pid {
                libvirt_pids.insert(pid);
            }
            libvirt_uuids.insert(domain.inventory.uuid.clone());
            let metrics = collect_metrics(
                proc_root,
                options,
                &domain.inventory,
                metrics_pid,
                (domain.state, domain.state_detail.clone()),
            );
            vms.insert(
                domain.inventory.key(),
                DiscoveredVm {
                    inventory: domain.inventory,
                    metrics,
                },
            );
        }
    }

    for pid in found.qemu_pids {
        if libvirt_pids.contains(&pid) {
            continue;
        }
        let Some(raw) = procfs::read_cmdline(proc_root, pid) else {
            continue;
        };
        let Some(cmd) = cmdline::parse_cmdline(&raw) else {
            continue;
        };
        if cmd.uuid.as_ref().is_some_and(|u| libvirt_uuids.contains(u)) {
            continue;
        }
        let Some(stat) = procfs::read_stat(proc_root, pid) else {
            continue;
        };
        if stat.is_dead() {
            continue;
        }
        let inventory = cmd.inventory(pid);
        let mut state = stat.vm_state();
        if let (Some(socket), Some(timeout)) = (&cmd.qmp_socket, options.qmp_timeout) {
            let socket = procfs::resolve_in_cwd(proc_root, pid, socket);
            if let Ok(status) = qmp::query_status(&socket, timeout) {
                state = (status.vm_state(), format!("qmp:{}", status.status));
            }
        }
        let metrics = collect_metrics(proc_root, options, &inventory, Some(pid), state);
        vms.entry(inventory.key())
            .or_insert(DiscoveredVm { inventory, metrics });
    }
    vms.into_values().collect()
}

fn collect_metrics(
    proc_root: &Path,
    options: &DiscoverOptions,
    inventory: &VmInventory,
    pid: Option<u32>,
    (state, state_detail): (VmState, String),
) -> VmMetrics {
    let mut metrics = VmMetrics {
        key: inventory.key(),
        state,
        state_detail,
        pid,
        cpu_time_ms: 0,
        rss_bytes: 0,
        io_read_bytes: None,
        io_write_bytes: None,
        net_rx_bytes: None,
        net_tx_bytes: None,
        cgroup: None,
    };
    if let Some(pid) = pid {
        if let Some(stat) = procfs::read_stat(proc_root, pid) {
            metrics.cpu_time_ms = stat.cpu_time_ms();
        }
        metrics.rss_bytes = procfs::read_rss_bytes(proc_root, pid).unwrap_or(0);
        if let Some(io) = procfs::read_io(proc_root, pid) {
            metrics.io_read_bytes = Some(io.read_bytes);
            metrics.io_write_bytes = Some(io.write_bytes);
        }
        metrics.cgroup = procfs::read_cgroup_stats(proc_root, &options.cgroup_root, pid);
    }
    let taps: Vec<&str> = inventory
        .nics
        .iter()
        .filter_map(|n| n.host_dev.as_deref())
        .collect();
    if !taps.is_empty() {
        let mut rx = None;
        let mut tx = None;
        for tap in taps {
            // The host side of a tap sends what the guest receives, and the other way round.
            let dir = options.sys_class_net.join(tap).join("statistics");
            if let Some(v) = procfs::read_u64(&dir.join("tx_bytes")) {
                *rx.get_or_insert(0) += v;
            }
            if let Some(v) = procfs::read_u64(&dir.join("rx_bytes")) {
                *tx.get_or_insert(0) += v;
            }
        }
        metrics.net_rx_bytes = rx;
        metrics.net_tx_bytes = tx;
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn inv(name: &str, uuid: &str, vcpus: u32) -> VmInventory {
        VmInventory {
            name: name.into(),
            uuid: uuid.into(),
            source: VmOrigin::Qemu,
            vcpus,
            memory_bytes: 64 << 20,
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }

    #[test]
    fn unchanged_discovery_yields_an_empty_delta() {
        let a = vec![inv("a", "u1", 1), inv("b", "u2", 2)];
        let b = vec![inv("b", "u2", 2), inv("a", "u1", 1)];
        assert!(diff_vms(&a, &b).is_empty());
        assert!(diff_vms(&[], &[]).is_empty());
    }

    #[test]
    fn delta_names_added_removed_and_changed() {
        let before = vec![inv("a", "u1", 1), inv("b", "u2", 2), inv("c", "", 1)];
        let after = vec![inv("a", "u1", 4), inv("c", "", 1), inv("d", "u4", 1)];
        let d = diff_vms(&before, &after);
        assert_eq!(d.added, vec![inv("d", "u4", 1)]);
        assert_eq!(d.removed, vec![inv("b", "u2", 2)]);
        assert_eq!(d.changed, vec![inv("a", "u1", 4)]);
    }

    #[test]
    fn key_falls_back_to_the_name() {
        assert_eq!(inv("x", "", 1).key(), "name:x");
        assert_eq!(inv("x", "abc", 1).key(), "abc");
    }

    #[test]
    fn nothing_found_means_no_deeper_look() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        fs::create_dir_all(proc_root.join("1")).unwrap();
        fs::write(proc_root.join("1/comm"), "systemd\n").unwrap();
        // A command line that would be a guest if anyone read it: the probe must not.
        fs::write(
            proc_root.join("1/cmdline"),
            b"qemu-system-x86_64\0-name\0x\0",
        )
        .unwrap();
        let p = probe(&proc_root, &dir.path().join("libvirt"));
        assert!(p.is_empty());
        assert!(discover_vms(&proc_root, &dir.path().join("libvirt")).is_empty());
    }

    /// A fake `/proc` with one bare QEMU guest and one libvirt-managed QEMU process, plus
    /// libvirt's status XML for the latter: each guest is reported once.
    #[test]
    fn fixture_tree_reports_bare_and_libvirt_guests_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let proc_root = root.join("proc");
        let run = root.join("run-libvirt");
        let cgroup = root.join("cgroup");
        let net = root.join("net");

        let bare = proc_root.join("4242");
        fs::create_dir_all(&bare).unwrap();
        fs::write(bare.join("comm"), "qemu-system-x86\n").unwrap();
        fs::write(
            bare.join("cmdline"),
            b"qemu-system-x86_64\0-name\0guest=bare1,debug-threads=on\0-uuid\0\
              6F1B2C3D-0000-4000-8000-00000000AAAA\0-smp\0cpus=2,sockets=1\0-m\0size=64M\0\
              -netdev\0tap,id=n0,ifname=tap7\0-device\0virtio-net-pci,netdev=n0,mac=52:54:00:AA:BB:01\0",
        )
        .unwrap();
        fs::write(
            bare.join("stat"),
            "4242 (qemu-system-x86) S 1 4242 4242 0 -1 0 0 0 0 0 150 50 0 0 20 0 3 0 100 0 0",
        )
        .unwrap();
        fs::write(bare.join("status"), "Name:\tqemu\nVmRSS:\t  2048 kB\n").unwrap();
        fs::write(
            bare.join("io"),
            "rchar: 1\nwchar: 2\nread_bytes: 4096\nwrite_bytes: 8192\n",
        )
        .unwrap();
        fs::write(bare.join("cgroup"), "0::/machine.slice/bare1.scope\n").unwrap();
        let cg = cgroup.join("machine.slice/bare1.scope");
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("cgroup.procs"), "4242\n").unwrap();
        fs::write(
            cg.join("cpu.stat"),
            "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\n",
        )
        .unwrap();
        fs::write(cg.join("memory.current"), "1048576\n").unwrap();
        fs::create_dir_all(net.join("tap7/statistics")).unwrap();
        fs::write(net.join("tap7/statistics/tx_bytes"), "100\n").unwrap();
        fs::write(net.join("tap7/statistics/rx_bytes"), "200\n").unwrap();

        let managed = proc_root.join("5151");
        fs::create_dir_all(&managed).unwrap();
        fs::write(managed.join("comm"), "qemu-system-x86\n").unwrap();
        fs::write(
            managed.join("cmdline"),
            b"/usr/bin/qemu-system-x86_64\0-name\0guest=web1\0-uuid\0\
              11111111-2222-3333-4444-555555555555\0",
        )
        .unwrap();
        fs::write(
            managed.join("stat"),
            "5151 (qemu-system-x86) S 1 5151 5151 0 -1 0 0 0 0 0 10 10 0 0 20 0 3 0 100 0 0",
        )
        .unwrap();
        fs::create_dir_all(run.join("qemu")).unwrap();
        fs::write(
            run.join("qemu/web1.xml"),
            include_str!("../../tests/data/libvirt-status-running.xml")
                .replace("pid='1234'", "pid='5151'"),
        )
        .unwrap();

        let options = DiscoverOptions {
            cgroup_root: cgroup,
            sys_class_net: net,
            qmp_timeout: None,
        };
        let vms = discover_vms_with(&proc_root, &run, &options);
        assert_eq!(vms.len(), 2, "{vms:#?}");
        let web = &vms[0];
        assert_eq!(web.inventory.name, "web1");
        assert_eq!(web.inventory.source, VmOrigin::Libvirt);
        assert_eq!(web.metrics.pid, Some(5151));
        assert_eq!(web.metrics.cpu_time_ms, 200);
        assert_eq!(web.metrics.state, VmState::Running);

        let bare = &vms[1];
        assert_eq!(bare.inventory.name, "bare1");
        assert_eq!(bare.inventory.uuid, "6f1b2c3d-0000-4000-8000-00000000aaaa");
        assert_eq!(bare.inventory.source, VmOrigin::Qemu);
        assert_eq!(bare.inventory.vcpus, 2);
        assert_eq!(bare.inventory.memory_bytes, 64 << 20);
        assert_eq!(bare.inventory.nics[0].mac, "52:54:00:aa:bb:01");
        assert_eq!(bare.inventory.nics[0].host_dev.as_deref(), Some("tap7"));
        let m = &bare.metrics;
        assert_eq!(m.state, VmState::Running);
        assert_eq!(m.state_detail, "proc:S");
        assert_eq!(m.cpu_time_ms, 2000);
        assert_eq!(m.rss_bytes, 2048 * 1024);
        assert_eq!(m.io_read_bytes, Some(4096));
        assert_eq!(m.io_write_bytes, Some(8192));
        assert_eq!(m.net_rx_bytes, Some(100));
        assert_eq!(m.net_tx_bytes, Some(200));
        let cg = m.cgroup.as_ref().unwrap();
        assert_eq!(cg.cpu_usage_usec, Some(5000));
        assert_eq!(cg.memory_current_bytes, Some(1_048_576));

        // The same tree again: nothing to send.
        let again = discover_vms_with(&proc_root, &run, &options);
        let inv = |v: &[DiscoveredVm]| v.iter().map(|d| d.inventory.clone()).collect::<Vec<_>>();
        assert!(diff_vms(&inv(&vms), &inv(&again)).is_empty());
    }
}
