//! libvirt domains, read from the status XML libvirt keeps for every running QEMU domain
//! (`/run/libvirt/qemu/NAME.xml`).
//!
//! The file is `<domstatus state='running' reason='booted' pid='…'>` wrapping the live
//! `<domain>` definition (with runtime details such as tap device names and aliases). A
//! plain `<domain>` root is accepted too. Reading files instead of calling libvirt's API
//! means no C library, no connection to libvirtd, and no way for a hung libvirtd to hang
//! the collector; the price is that only running domains are seen.

use std::fs;
use std::path::Path;

use roxmltree::{Document, Node};

use super::{VmDisk, VmInventory, VmNic, VmOrigin, VmState};

/// One running domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtDomain {
    /// What it is.
    pub inventory: VmInventory,
    /// Its state from `<domstatus state=…>`.
    pub state: VmState,
    /// `libvirt:STATE/REASON`.
    pub state_detail: String,
    /// The QEMU process, from `<domstatus pid=…>` or `NAME.pid`.
    pub pid: Option<u32>,
}

/// Why a status file could not be read as a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainXmlError {
    /// Not well-formed XML.
    #[error("not well-formed XML: {0}")]
    Xml(String),
    /// Well-formed, but no `<domain>` element.
    #[error("no <domain> element")]
    NoDomain,
    /// The domain has no `<name>`.
    #[error("domain has no <name>")]
    NoName,
}

/// Maps libvirt's domain state names to [`VmState`].
#[must_use]
pub fn state_from_libvirt(state: &str) -> VmState {
    match state {
        "running" | "blocked" => VmState::Running,
        "paused" | "pmsuspended" => VmState::Paused,
        "shutdown" | "shutoff" => VmState::Shutdown,
        "crashed" => VmState::Crashed,
        _ => VmState::Unknown,
    }
}

/// Parses one status (or plain domain) XML document.
///
/// # Errors
///
/// When the text is not XML, holds no `<domain>`, or the domain has no name.
pub fn parse_status_xml(text: &str) -> Result<LibvirtDomain, DomainXmlError> {
    let doc = Document::parse(text).map_err(|e| DomainXmlError::Xml(e.to_string()))?;
    let root = doc.root_element();
    let (status, domain) = if root.has_tag_name("domstatus") {
        let domain = child(root, "domain").ok_or(DomainXmlError::NoDomain)?;
        (Some(root), domain)
    } else if root.has_tag_name("domain") {
        (None, root)
    } else {
        return Err(DomainXmlError::NoDomain);
    };

    let name = child_text(domain, "name").ok_or(DomainXmlError::NoName)?;
    let uuid = child_text(domain, "uuid")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let vcpus = child(domain, "vcpu")
        .and_then(|v| {
            v.attribute("current")
                .or_else(|| v.text())
                .and_then(|t| t.trim().parse::<u32>().ok())
        })
        .unwrap_or(1);
    let memory_bytes = child(domain, "memory")
        .and_then(|m| {
            let value: u64 = m.text()?.trim().parse().ok()?;
            value.checked_mul(unit_bytes(m.attribute("unit").unwrap_or("KiB"))?)
        })
        .unwrap_or(0);

    let mut disks = Vec::new();
    let mut nics = Vec::new();
    if let Some(devices) = child(domain, "devices") {
        for disk in devices.children().filter(|n| n.has_tag_name("disk")) {
            disks.push(parse_disk(disk, disks.len()));
        }
        for (i, iface) in devices
            .children()
            .filter(|n| n.has_tag_name("interface"))
            .enumerate()
        {
            nics.push(parse_interface(iface, i));
        }
    }
    disks.sort();
    nics.sort();

    let (state, state_detail, pid) = match status {
        Some(s) => {
            let raw = s.attribute("state").unwrap_or("unknown");
            let reason = s.attribute("reason").unwrap_or("");
            (
                state_from_libvirt(raw),
                format!("libvirt:{raw}/{reason}"),
                s.attribute("pid").and_then(|p| p.parse().ok()),
            )
        }
        None => (VmState::Unknown, "libvirt:unknown/".to_string(), None),
    };

    Ok(LibvirtDomain {
        inventory: VmInventory {
            name: name.to_string(),
            uuid,
            source: VmOrigin::Libvirt,
            vcpus,
            memory_bytes,
            disks,
            nics,
        },
        state,
        state_detail,
        pid,
    })
}

fn parse_disk(disk: Node<'_, '_>, index: usize) -> VmDisk {
    let id = child(disk, "target")
        .and_then(|t| t.attribute("dev"))
        .map_or_else(|| format!("disk{index}"), str::to_string);
    let path = child(disk, "source")
        .and_then(|s| {
            s.attribute("file")
                .or_else(|| s.attribute("dev"))
                .or_else(|| s.attribute("name"))
                .or_else(|| s.attribute("dir"))
                .map(str::to_string)
                .or_else(|| {
                    let pool = s.attribute("pool")?;
                    let volume = s.attribute("volume")?;
                    Some(format!("{pool}/{volume}"))
                })
        })
        .unwrap_or_default();
    let format = child(disk, "driver")
        .and_then(|d| d.attribute("type"))
        .map(str::to_string);
    VmDisk { id, path, format }
}

fn parse_interface(iface: Node<'_, '_>, index: usize) -> VmNic {
    VmNic {
        id: child(iface, "alias")
            .and_then(|a| a.attribute("name"))
            .map_or_else(|| format!("net{index}"), str::to_string),
        model: child(iface, "model")
            .and_then(|m| m.attribute("type"))
            .unwrap_or_default()
            .to_string(),
        mac: child(iface, "mac")
            .and_then(|m| m.attribute("address"))
            .unwrap_or_default()
            .to_ascii_lowercase(),
        host_dev: child(iface, "target")
            .and_then(|t| t.attribute("dev"))
            .map(str::to_string),
    }
}

/// Bytes per libvirt memory unit (`b`, `KB` = 1000, `k`/`KiB` = 1024, …).
#[must_use]
pub fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    })
}

fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name)
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Reads every `*.xml` in `LIBVIRT_RUN/qemu`, sorted by file name. Files that cannot be
/// read or parsed are skipped (libvirt may be rewriting one at this moment). A domain
/// without a `pid` attribute gets the one in `NAME.pid`.
#[must_use]
pub fn read_domains(libvirt_run: &Path) -> Vec<LibvirtDomain> {
    let dir = libvirt_run.join("qemu");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml") && p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let text = fs::read_to_string(&path).ok()?;
            let mut domain = parse_status_xml(&text).ok()?;
            if domain.pid.is_none() {
                domain.pid = fs::read_to_string(path.with_extension("pid"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
            }
            Some(domain)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = include_str!("../../../tests/data/libvirt-status-running.xml");
    const PAUSED: &str = include_str!("../../../tests/data/libvirt-status-paused.xml");
    const GARBAGE: &str = include_str!("../../../tests/data/libvirt-status-garbage.xml");

    #[test]
    fn running_domain_status() {
        let d = parse_status_xml(RUNNING).unwrap();
        assert_eq!(d.pid, Some(1234));
        assert_eq!(d.state, VmState::Running);
        assert_eq!(d.state_detail, "libvirt:running/booted");
        let inv = &d.inventory;
        assert_eq!(inv.name, "web1");
        assert_eq!(inv.uuid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(inv.source, VmOrigin::Libvirt);
        assert_eq!(inv.vcpus, 2, "current vCPUs, not the maximum");
        assert_eq!(inv.memory_bytes, 1 << 30);
        let ids: Vec<_> = inv.disks.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["sda", "vda", "vdb", "vdc"]);
        assert_eq!(inv.disks[1].path, "/var/lib/libvirt/images/web1.qcow2");
        assert_eq!(inv.disks[1].format.as_deref(), Some("qcow2"));
        assert_eq!(inv.disks[2].path, "/dev/vg0/web1-data");
        assert_eq!(inv.disks[3].path, "pool/web1-logs");
        assert_eq!(inv.disks[0].path, "", "an empty CD-ROM drive");
        assert_eq!(
            inv.nics,
            vec![
                VmNic {
                    id: "net0".into(),
                    model: "virtio".into(),
                    mac: "52:54:00:ab:cd:01".into(),
                    host_dev: Some("vnet2".into()),
                },
                VmNic {
                    id: "net1".into(),
                    model: "e1000e".into(),
                    mac: "52:54:00:ab:cd:02".into(),
                    host_dev: Some("vnet3".into()),
                },
            ]
        );
    }

    #[test]
    fn paused_domain_with_other_units() {
        let d = parse_status_xml(PAUSED).unwrap();
        assert_eq!(d.state, VmState::Paused);
        assert_eq!(d.inventory.name, "db1");
        assert_eq!(d.inventory.uuid, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        assert_eq!(d.inventory.memory_bytes, 2 << 30);
        assert_eq!(d.inventory.vcpus, 1);
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        assert!(matches!(
            parse_status_xml(GARBAGE),
            Err(DomainXmlError::Xml(_))
        ));
        assert_eq!(
            parse_status_xml("<domstatus state='running'/>"),
            Err(DomainXmlError::NoDomain)
        );
        assert_eq!(
            parse_status_xml("<domain><uuid>x</uuid></domain>"),
            Err(DomainXmlError::NoName)
        );
        assert_eq!(
            parse_status_xml("<network><name>default</name></network>"),
            Err(DomainXmlError::NoDomain)
        );
    }

    #[test]
    fn states_map() {
        assert_eq!(state_from_libvirt("blocked"), VmState::Running);
        assert_eq!(state_from_libvirt("pmsuspended"), VmState::Paused);
        assert_eq!(state_from_libvirt("crashed"), VmState::Crashed);
        assert_eq!(state_from_libvirt("shutoff"), VmState::Shutdown);
        assert_eq!(state_from_libvirt("nostate"), VmState::Unknown);
    }

    #[test]
    fn directory_read_skips_bad_files_and_uses_pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = dir.path().join("qemu");
        fs::create_dir_all(&qemu).unwrap();
        fs::write(qemu.join("web1.xml"), RUNNING).unwrap();
        fs::write(qemu.join("db1.xml"), PAUSED.replace(" pid='2222'", "")).unwrap();
        fs::write(qemu.join("db1.pid"), "3333\n").unwrap();
        fs::write(qemu.join("junk.xml"), GARBAGE).unwrap();
        fs::create_dir_all(qemu.join("dbus")).unwrap();
        let domains = read_domains(dir.path());
        let names: Vec<_> = domains.iter().map(|d| d.inventory.name.as_str()).collect();
        assert_eq!(names, ["db1", "web1"]);
        assert_eq!(domains[0].pid, Some(3333));
        assert!(read_domains(&dir.path().join("absent")).is_empty());
    }

    proptest::proptest! {
        /// Status files are outside input: any text is a domain or an error, never a panic.
        #[test]
        fn any_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_status_xml(&text);
        }

        /// Damaged copies of a real status file never panic either.
        #[test]
        fn truncated_status_never_panics(cut in 0usize..RUNNING.len()) {
            let end = (0..=cut).rev().find(|i| RUNNING.is_char_boundary(*i)).unwrap_or(0);
            let _ = parse_status_xml(&RUNNING[..end]);
        }
    }
}
