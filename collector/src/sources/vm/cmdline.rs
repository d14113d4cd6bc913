//! QEMU command lines: what a bare guest was started with.
//!
//! `/proc/PID/cmdline` is the argument vector, NUL-separated. QEMU options take one
//! argument except for a handful of flags ([`FLAG_OPTIONS`]); option arguments are either
//! QEMU's `key=value,key=value` syntax (where `,,` is a literal comma and the first bare
//! value stands for an implied key, as in `-name x` = `-name guest=x`) or, for `-device`,
//! `-blockdev`, `-object` and `-netdev`, a JSON object (which libvirt uses).
//!
//! The parser is lenient: options it does not know are skipped, and values it cannot read
//! fall back to QEMU's defaults (1 vCPU, 128 MiB on x86), so a new QEMU option never makes
//! a guest disappear.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{VmDisk, VmInventory, VmNic, VmOrigin};

/// QEMU's default guest memory on x86 when `-m` is absent.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;

/// Options that take no argument. Anything else that starts with `-` takes the next one
/// (unless that one itself starts with `-`).
pub const FLAG_OPTIONS: &[&str] = &[
    "S",
    "s",
    "nodefaults",
    "nographic",
    "daemonize",
    "no-reboot",
    "no-shutdown",
    "enable-kvm",
    "snapshot",
    "no-hpet",
    "no-acpi",
    "no-user-config",
    "nouserconfig",
    "full-screen",
    "no-fd-bootchk",
    "win2k-hack",
    "only-migratable",
    "preconfig",
    "no-quit",
    "alt-grab",
    "ctrl-grab",
    "no-frame",
    "sdl",
    "curses",
    "portrait",
    "rtc-td-hack",
    "usb",
    "enable-fips",
    "version",
    "help",
    "h",
    "qmp-pretty-off",
];

/// Device drivers that are network interfaces (besides every `virtio-net*`).
const NIC_DRIVERS: &[&str] = &[
    "e1000",
    "e1000e",
    "e1000-82544gc",
    "e1000-82545em",
    "igb",
    "rtl8139",
    "vmxnet3",
    "ne2k_pci",
    "ne2k_isa",
    "pcnet",
    "i82550",
    "i82551",
    "i82557a",
    "i82557b",
    "i82557c",
    "i82558a",
    "i82558b",
    "i82559a",
    "i82559b",
    "i82559c",
    "i82559er",
    "i82562",
    "i82801",
    "usb-net",
    "tulip",
];

/// What a QEMU command line says about its guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QemuCommandLine {
    /// `-name guest=…` (or `-name …`).
    pub name: Option<String>,
    /// `-uuid`, lower case.
    pub uuid: Option<String>,
    /// `-smp` (1 when absent).
    pub vcpus: u32,
    /// `-m` in bytes ([`DEFAULT_MEMORY_BYTES`] when absent).
    pub memory_bytes: u64,
    /// Disks, sorted.
    pub disks: Vec<VmDisk>,
    /// NICs, sorted.
    pub nics: Vec<VmNic>,
    /// The QMP socket (`-qmp unix:PATH` or a `-chardev socket` used by `-mon mode=control`).
    pub qmp_socket: Option<PathBuf>,
}

impl QemuCommandLine {
    /// The inventory of this guest; `pid` names a guest that was given no name.
    #[must_use]
    pub fn inventory(&self, pid: u32) -> VmInventory {
        VmInventory {
            name: self.name.clone().unwrap_or_else(|| format!("qemu-{pid}")),
            uuid: self.uuid.clone().unwrap_or_default(),
            source: VmOrigin::Qemu,
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
            disks: self.disks.clone(),
            nics: self.nics.clone(),
        }
    }
}

/// Parses a NUL-separated argument vector. `None` when it is empty (a zombie or a kernel
/// thread) or not valid UTF-8.
#[must_use]
pub fn parse_cmdline(raw: &[u8]) -> Option<QemuCommandLine> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut args: Vec<&str> = text.split('\0').collect();
    if args.last() == Some(&"") {
        args.pop();
    }
    if args.first().is_none_or(|program| program.is_empty()) {
        return None;
    }
    let options = split_options(&args[1..]);
    Some(interpret(&options))
}

/// Pairs each option (without its dashes) with its argument.
fn split_options<'a>(args: &[&'a str]) -> Vec<(&'a str, Option<&'a str>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        i += 1;
        let Some(name) = arg.strip_prefix('-') else {
            continue; // a stray positional argument (an old-style disk image): ignored
        };
        let name = name.strip_prefix('-').unwrap_or(name);
        if FLAG_OPTIONS.contains(&name) {
            out.push((name, None));
            continue;
        }
        match args.get(i) {
            Some(value) if !value.starts_with('-') || value.len() == 1 => {
                out.push((name, Some(*value)));
                i += 1;
            }
            _ => out.push((name, None)),
        }
    }
    out
}

/// Splits QEMU's `a=b,c=d` syntax; `,,` is a literal comma. A first part without `=` is
/// the value of `implied` (when given) or a flag set to `on`.
#[must_use]
pub fn parse_keyvals(value: &str, implied: Option<&str>) -> Vec<(String, String)> {
    if value.trim_start().starts_with('{') {
        return parse_json_object(value);
    }
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                parts.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(i, part)| match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match implied {
                Some(key) if i == 0 => (key.to_string(), part),
                _ => (part, "on".to_string()),
            },
        })
        .collect()
}

/// Flattens a JSON option object's scalar members into key/value pairs; a nested `file`
/// object (a `-blockdev` protocol node) contributes `file.driver` and `file.filename`.
fn parse_json_object(value: &str) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(value)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => out.push((k, s)),
            serde_json::Value::Number(n) => out.push((k, n.to_string())),
            serde_json::Value::Bool(b) => out.push((k, if b { "on" } else { "off" }.into())),
            serde_json::Value::Object(inner) => {
                for (ik, iv) in inner {
                    if let serde_json::Value::String(s) = iv {
                        out.push((format!("{k}.{ik}"), s));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `-smp`: `cpus=` when given, else the product of the topology given, else 1.
#[must_use]
pub fn parse_smp(value: &str) -> u32 {
    let kv = parse_keyvals(value, Some("cpus"));
    if let Some(n) = get(&kv, "cpus").and_then(|v| v.parse::<u32>().ok()) {
        if n > 0 {
            return n;
        }
    }
    let topology = ["sockets", "dies", "clusters", "cores", "threads"];
    let mut any = false;
    let mut product: u32 = 1;
    for key in topology {
        if let Some(n) = get(&kv, key).and_then(|v| v.parse::<u32>().ok()) {
            any = true;
            product = product.saturating_mul(n.max(1));
        }
    }
    if any {
        product
    } else {
        get(&kv, "maxcpus")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1)
    }
}

/// `-m`: `64` (MiB), `64M`, `1G`, `1.5G`, `size=512M,slots=…`. `None` when unreadable.
#[must_use]
pub fn parse_memory(value: &str) -> Option<u64> {
    let kv = parse_keyvals(value, Some("size"));
    parse_size(get(&kv, "size")?, 1 << 20)
}

/// A QEMU size: a number with an optional suffix (`B`, `K`, `M`, `G`, `T`, `P`, `E`, any
/// case, binary multiples); without one, `default_unit` applies.
#[must_use]
pub fn parse_size(text: &str, default_unit: u64) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let unit: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" => default_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        "e" | "eb" | "eib" => 1 << 60,
        _ => return None,
    };
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(unit);
    }
    let f: f64 = number.parse().ok()?;
    let bytes = f * unit as f64;
    if f.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64 {
        Some(bytes as u64)
    } else {
        None
    }
}

fn is_nic_driver(driver: &str) -> bool {
    driver.starts_with("virtio-net") || NIC_DRIVERS.contains(&driver)
}

#[derive(Default)]
struct BlockNode {
    driver: String,
    filename: Option<String>,
    file_ref: Option<String>,
}

fn interpret(options: &[(&str, Option<&str>)]) -> QemuCommandLine {
    let mut cmd = QemuCommandLine {
        vcpus: 1,
        memory_bytes: DEFAULT_MEMORY_BYTES,
        ..QemuCommandLine::default()
    };
    let mut netdevs: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut nic_devices: Vec<Vec<(String, String)>> = Vec::new();
    let mut blockdevs: BTreeMap<String, BlockNode> = BTreeMap::new();
    let mut chardev_paths: BTreeMap<String, String> = BTreeMap::new();
    let mut control_monitors: Vec<String> = Vec::new();

    for (name, value) in options {
        let Some(value) = value else { continue };
        match *name {
            "name" => {
                let kv = parse_keyvals(value, Some("guest"));
                cmd.name = get(&kv, "guest").map(str::to_string);
            }
            "uuid" => cmd.uuid = Some(value.trim().to_ascii_lowercase()),
            "smp" => cmd.vcpus = parse_smp(value),
            "m" => {
                if let Some(bytes) = parse_memory(value) {
                    cmd.memory_bytes = bytes;
                }
            }
            "drive" => {
                let kv = parse_keyvals(value, None);
                if let Some(file) = get(&kv, "file").filter(|f| !f.is_empty()) {
                    let id = get(&kv, "id")
                        .map_or_else(|| format!("drive{}", cmd.disks.len()), str::to_string);
                    cmd.disks.push(VmDisk {
                        id,
                        path: file.to_string(),
                        format: get(&kv, "format").map(str::to_string),
                    });
                }
            }
            "hda" | "hdb" | "hdc" | "hdd" | "cdrom" => cmd.disks.push(VmDisk {
                id: (*name).to_string(),
                path: (*value).to_string(),
                format: None,
            }),
            "blockdev" => {
                let kv = parse_keyvals(value, None);
                let Some(node) = get(&kv, "node-name") else {
                    continue;
                };
                let mut entry = BlockNode {
                    driver: get(&kv, "driver").unwrap_or_default().to_string(),
                    filename: get(&kv, "filename").map(str::to_string),
                    file_ref: get(&kv, "file").map(str::to_string),
                };
                if entry.filename.is_none() {
                    // JSON form with the protocol node nested: {"file": {"filename": …}}
                    entry.filename = get(&kv, "file.filename").map(str::to_string);
                }
                blockdevs.insert(node.to_string(), entry);
            }
            "netdev" => {
                let kv = parse_keyvals(value, Some("type"));
                if let Some(id) = get(&kv, "id") {
                    netdevs.insert(id.to_string(), kv.clone());
                }
            }
            "device" => {
                let kv = parse_keyvals(value, Some("driver"));
                if get(&kv, "driver").is_some_and(is_nic_driver) {
                    nic_devices.push(kv);
                }
            }
            "nic" => {
                let kv = parse_keyvals(value, Some("type"));
                let mut device = vec![(
                    "driver".to_string(),
                    get(&kv, "model").unwrap_or("default").to_string(),
                )];
                if let Some(mac) = get(&kv, "mac") {
                    device.push(("mac".into(), mac.into()));
                }
                if get(&kv, "type") == Some("tap") {
                    if let Some(ifname) = get(&kv, "ifname") {
                        device.push(("host_dev".into(), ifname.into()));
                    }
                }
                nic_devices.push(device);
            }
            "net" => {
                let kv = parse_keyvals(value, Some("type"));
                if get(&kv, "type") == Some("nic") {
                    let mut device = vec![(
                        "driver".to_string(),
                        get(&kv, "model").unwrap_or("default").to_string(),
                    )];
                    if let Some(mac) = get(&kv, "macaddr") {
                        device.push(("mac".into(), mac.into()));
                    }
                    if let Some(id) = get(&kv, "name") {
                        device.push(("id".into(), id.into()));
                    }
                    nic_devices.push(device);
                }
            }
            "qmp" => {
                let kv = parse_keyvals(value, None);
                if let Some((first, _)) = kv.first() {
                    if let Some(path) = first.strip_prefix("unix:") {
                        cmd.qmp_socket = Some(PathBuf::from(path));
                    }
                }
            }
            "chardev" => {
                let kv = parse_keyvals(value, Some("backend"));
                if get(&kv, "backend") == Some("socket") {
                    if let (Some(id), Some(path)) = (get(&kv, "id"), get(&kv, "path")) {
                        chardev_paths.insert(id.to_string(), path.to_string());
                    }
                }
            }
            "mon" => {
                let kv = parse_keyvals(value, Some("chardev"));
                if get(&kv, "mode") == Some("control") {
                    if let Some(chardev) = get(&kv, "chardev") {
                        control_monitors.push(chardev.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    if cmd.qmp_socket.is_none() {
        cmd.qmp_socket = control_monitors
            .iter()
            .find_map(|c| chardev_paths.get(c))
            .map(PathBuf::from);
    }

    // Block nodes: every file-backed node is a disk; a format node on top of it names it.
    for (node, entry) in &blockdevs {
        let Some(filename) = &entry.filename else {
            continue;
        };
        if entry.file_ref.is_none() && !matches!(entry.driver.as_str(), "file" | "host_device") {
            // A format node with its protocol node nested in JSON.
            cmd.disks.push(VmDisk {
                id: node.clone(),
                path: filename.clone(),
                format: Some(entry.driver.clone()).filter(|d| !d.is_empty()),
            });
            continue;
        }
        let parent = blockdevs
            .iter()
            .find(|(_, e)| e.file_ref.as_deref() == Some(node.as_str()));
        let (id, format) = match parent {
            Some((pnode, p)) => (pnode.clone(), Some(p.driver.clone())),
            None => (node.clone(), None),
        };
        cmd.disks.push(VmDisk {
            id,
            path: filename.clone(),
            format,
        });
    }

    for (i, device) in nic_devices.iter().enumerate() {
        let netdev = get(device, "netdev").and_then(|n| netdevs.get(n));
        let host_dev = get(device, "host_dev").map(str::to_string).or_else(|| {
            netdev
                .filter(|kv| get(kv, "type") == Some("tap"))
                .and_then(|kv| get(kv, "ifname"))
                .map(str::to_string)
        });
        let id = get(device, "id")
            .or_else(|| get(device, "netdev"))
            .map_or_else(|| format!("nic{i}"), str::to_string);
        cmd.nics.push(VmNic {
            id,
            model: get(device, "driver").unwrap_or_default().to_string(),
            mac: get(device, "mac").unwrap_or_default().to_ascii_lowercase(),
            host_dev,
        });
    }

    cmd.disks.sort();
    cmd.nics.sort();
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nul(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn minimal_guest_with_keyed_options() {
        let raw = nul(&[
            "qemu-system-x86_64",
            "-name",
            "guest=outpost-t1,debug-threads=on",
            "-uuid",
            "0E3F8A52-1C1B-4F7A-9D3E-2B6A9C4D5E6F",
            "-smp",
            "2",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-machine",
            "q35",
        ]);
        let cmd = parse_cmdline(&raw).unwrap();
        assert_eq!(cmd.name.as_deref(), Some("outpost-t1"));
        assert_eq!(
            cmd.uuid.as_deref(),
            Some("0e3f8a52-1c1b-4f7a-9d3e-2b6a9c4d5e6f")
        );
        assert_eq!(cmd.vcpus, 2);
        assert_eq!(cmd.memory_bytes, 64 << 20);
        assert!(cmd.disks.is_empty() && cmd.nics.is_empty());
        assert_eq!(cmd.qmp_socket, None);
        let inv = cmd.inventory(7);
        assert_eq!(inv.key(), "0e3f8a52-1c1b-4f7a-9d3e-2b6a9c4d5e6f");
    }

    #[test]
    fn bare_name_and_defaults() {
        let cmd = parse_cmdline(&nul(&["qemu-system-x86_64", "-name", "plain"])).unwrap();
        assert_eq!(cmd.name.as_deref(), Some("plain"));
        assert_eq!(cmd.vcpus, 1);
        assert_eq!(cmd.memory_bytes, DEFAULT_MEMORY_BYTES);
        let anon = parse_cmdline(&nul(&["qemu-system-x86_64", "-S"])).unwrap();
        assert_eq!(anon.inventory(99).name, "qemu-99");
        assert_eq!(anon.inventory(99).uuid, "");
    }

    #[test]
    fn empty_cmdline_is_not_a_guest() {
        assert_eq!(parse_cmdline(b""), None);
        assert_eq!(parse_cmdline(b"\0"), None);
        assert_eq!(parse_cmdline(&[0xff, 0xfe, 0]), None);
    }

    #[test]
    fn smp_forms() {
        assert_eq!(parse_smp("4"), 4);
        assert_eq!(parse_smp("cpus=3,sockets=1,cores=3"), 3);
        assert_eq!(parse_smp("4,maxcpus=8"), 4);
        assert_eq!(parse_smp("sockets=2,cores=2,threads=2"), 8);
        assert_eq!(parse_smp("maxcpus=6"), 6);
        assert_eq!(parse_smp("nonsense"), 1);
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory("64"), Some(64 << 20));
        assert_eq!(parse_memory("size=64M"), Some(64 << 20));
        assert_eq!(parse_memory("1G"), Some(1 << 30));
        assert_eq!(parse_memory("1g"), Some(1 << 30));
        assert_eq!(parse_memory("1.5G"), Some(3 << 29));
        assert_eq!(
            parse_memory("size=2048,slots=2,maxmem=4G"),
            Some(2048 << 20)
        );
        assert_eq!(parse_memory("512k"), Some(512 << 10));
        assert_eq!(parse_memory("12Q"), None);
        assert_eq!(parse_memory("slots=2"), None);
    }

    #[test]
    fn escaped_commas_stay_in_values() {
        let kv = parse_keyvals("guest=a,,b,debug-threads=on", Some("guest"));
        assert_eq!(kv[0], ("guest".into(), "a,b".into()));
        let cmd = parse_cmdline(&nul(&["qemu", "-name", "a,,b"])).unwrap();
        assert_eq!(cmd.name.as_deref(), Some("a,b"));
    }

    #[test]
    fn drives_netdevs_devices_and_qmp() {
        let raw = nul(&[
            "/usr/bin/qemu-system-x86_64",
            "--name",
            "guest=lab",
            "-enable-kvm",
            "-drive",
            "file=/srv/lab.qcow2,format=qcow2,if=virtio,id=root",
            "-drive",
            "if=none,id=emptycd",
            "-hdb",
            "/srv/scratch.img",
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,id=net0",
            "-netdev",
            "user,id=n1",
            "-device",
            "e1000,netdev=n1",
            "-device",
            "virtio-blk-pci,drive=root",
            "-nic",
            "user,model=rtl8139,mac=52:54:00:00:00:09",
            "-qmp",
            "unix:/run/lab/qmp.sock,server=on,wait=off",
        ]);
        let cmd = parse_cmdline(&raw).unwrap();
        assert_eq!(cmd.name.as_deref(), Some("lab"));
        assert_eq!(
            cmd.disks,
            vec![
                VmDisk {
                    id: "hdb".into(),
                    path: "/srv/scratch.img".into(),
                    format: None
                },
                VmDisk {
                    id: "root".into(),
                    path: "/srv/lab.qcow2".into(),
                    format: Some("qcow2".into())
                },
            ]
        );
        assert_eq!(cmd.nics.len(), 3, "{:?}", cmd.nics);
        let net0 = cmd.nics.iter().find(|n| n.id == "net0").unwrap();
        assert_eq!(net0.model, "virtio-net-pci");
        assert_eq!(net0.mac, "52:54:00:12:34:56");
        assert_eq!(net0.host_dev.as_deref(), Some("tap0"));
        let n1 = cmd.nics.iter().find(|n| n.id == "n1").unwrap();
        assert_eq!(n1.model, "e1000");
        assert_eq!(n1.mac, "");
        assert_eq!(n1.host_dev, None);
        assert!(cmd
            .nics
            .iter()
            .any(|n| n.model == "rtl8139" && n.mac == "52:54:00:00:00:09"));
        assert_eq!(cmd.qmp_socket, Some(PathBuf::from("/run/lab/qmp.sock")));
    }

    #[test]
    fn old_style_qmp_flags_and_monitor_chardev() {
        let raw = nul(&["qemu", "-qmp", "unix:/tmp/q.sock,server,nowait"]);
        assert_eq!(
            parse_cmdline(&raw).unwrap().qmp_socket,
            Some(PathBuf::from("/tmp/q.sock"))
        );
        let raw = nul(&[
            "qemu",
            "-chardev",
            "socket,id=charmonitor,path=/var/lib/x/monitor.sock,server=on,wait=off",
            "-mon",
            "chardev=charmonitor,id=monitor,mode=control",
        ]);
        assert_eq!(
            parse_cmdline(&raw).unwrap().qmp_socket,
            Some(PathBuf::from("/var/lib/x/monitor.sock"))
        );
        // An HMP monitor is not QMP.
        let raw = nul(&[
            "qemu",
            "-chardev",
            "socket,id=hmp,path=/tmp/hmp.sock,server=on",
            "-mon",
            "chardev=hmp,mode=readline",
        ]);
        assert_eq!(parse_cmdline(&raw).unwrap().qmp_socket, None);
    }

    #[test]
    fn libvirt_style_json_blockdevs_and_devices() {
        let raw = nul(&[
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "guest=web1,debug-threads=on",
            "-m",
            "size=1048576k",
            "-smp",
            "2,sockets=2,cores=1,threads=1",
            "-blockdev",
            r#"{"driver":"file","filename":"/var/lib/libvirt/images/web1.qcow2","node-name":"libvirt-1-storage","auto-read-only":true}"#,
            "-blockdev",
            r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage"}"#,
            "-blockdev",
            "driver=file,filename=/srv/data.raw,node-name=data-storage",
            "-netdev",
            r#"{"type":"tap","fd":"34","vhost":true,"vhostfd":"36","id":"hostnet0"}"#,
            "-device",
            r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:AB:CD:01","bus":"pci.1","addr":"0x0"}"#,
        ]);
        let cmd = parse_cmdline(&raw).unwrap();
        assert_eq!(cmd.memory_bytes, 1 << 30);
        assert_eq!(cmd.vcpus, 2);
        assert_eq!(
            cmd.disks,
            vec![
                VmDisk {
                    id: "data-storage".into(),
                    path: "/srv/data.raw".into(),
                    format: None
                },
                VmDisk {
                    id: "libvirt-1-format".into(),
                    path: "/var/lib/libvirt/images/web1.qcow2".into(),
                    format: Some("qcow2".into())
                },
            ]
        );
        assert_eq!(
            cmd.nics,
            vec![VmNic {
                id: "net0".into(),
                model: "virtio-net-pci".into(),
                mac: "52:54:00:ab:cd:01".into(),
                host_dev: None, // a tap passed as a file descriptor has no name here
            }]
        );
    }

    #[test]
    fn nested_json_blockdev() {
        let raw = nul(&[
            "qemu",
            "-blockdev",
            r#"{"driver":"qcow2","node-name":"disk0","file":{"driver":"file","filename":"/img/a.qcow2"}}"#,
        ]);
        let cmd = parse_cmdline(&raw).unwrap();
        assert_eq!(
            cmd.disks,
            vec![VmDisk {
                id: "disk0".into(),
                path: "/img/a.qcow2".into(),
                format: Some("qcow2".into())
            }]
        );
    }

    #[test]
    fn unknown_options_do_not_derail_the_parse() {
        let raw = nul(&[
            "qemu",
            "-some-new-flag",
            "-name",
            "x",
            "-future-option",
            "value",
            "-m",
            "256",
            "stray-positional",
            "-smp",
        ]);
        let cmd = parse_cmdline(&raw).unwrap();
        assert_eq!(cmd.name.as_deref(), Some("x"));
        assert_eq!(cmd.memory_bytes, 256 << 20);
        assert_eq!(cmd.vcpus, 1);
    }

    proptest::proptest! {
        /// Command lines are outside input: any bytes parse or are refused, never panic.
        #[test]
        fn any_bytes_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_cmdline(&raw);
        }

        /// QEMU-shaped noise reaches the option parsers.
        #[test]
        fn qemu_shaped_noise_never_panics(
            args in proptest::collection::vec(
                "(-name|-uuid|-smp|-m|-drive|-blockdev|-netdev|-device|-nic|-net|-qmp|-chardev|-mon|[-a-z=,{}\":0-9.kMGT]{0,16})",
                0..24,
            )
        ) {
            let mut raw = b"qemu-system-x86_64\0".to_vec();
            for a in args {
                raw.extend_from_slice(a.as_bytes());
                raw.push(0);
            }
            let _ = parse_cmdline(&raw);
        }
    }
}
