//! Shared fixtures: a small fake Debian base archive and a recipe around it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use outpost_image::customize::customize_with_assets;
use outpost_image::inputs::Inputs;
use outpost_image::pipeline::finalize_tree;
use outpost_image::tree::Tree;
use outpost_image::Recipe;

/// Time stamps far after the recipe's epoch, so clamping is visible.
pub const LATE: u64 = 1_900_000_000;
/// The recipe's SOURCE_DATE_EPOCH.
pub const EPOCH: u64 = 1_735_689_600;

fn add(
    b: &mut tar::Builder<std::fs::File>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(LATE);
    h.set_size(data.len() as u64);
    match link {
        Some(l) => b.append_link(&mut h, path, l).expect("append link"),
        None => b.append_data(&mut h, path, data).expect("append"),
    }
}

const STATUS: &str = "Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u11\n\nPackage: libfoo1\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:2.0-1\n\nPackage: removed\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n";

/// Writes a fake mmdebstrap-like base archive (merged /usr, dpkg status, units, volatile files).
pub fn write_fake_base(path: &Path) {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    let f = std::fs::File::create(path).expect("create base");
    let mut b = tar::Builder::new(f);
    for d in [
        "./",
        "./etc/",
        "./etc/ssh/",
        "./usr/",
        "./usr/lib/",
        "./usr/lib/systemd/",
        "./usr/lib/systemd/system/",
        "./usr/share/",
        "./usr/share/doc/",
        "./usr/share/doc/base-files/",
        "./usr/share/doc/libfoo1/",
        "./var/",
        "./var/log/",
        "./var/lib/",
        "./var/lib/dpkg/",
        "./home/",
        "./var/cache/",
        "./var/cache/ldconfig/",
        "./usr/bin/",
    ] {
        add(&mut b, d, D, 0o755, b"", None);
    }
    add(&mut b, "./lib", L, 0o777, b"", Some("usr/lib"));
    add(
        &mut b,
        "./etc/passwd",
        F,
        0o644,
        b"root:x:0:0:root:/root:/bin/bash\n",
        None,
    );
    add(
        &mut b,
        "./etc/group",
        F,
        0o644,
        b"root:x:0:\nsudo:x:27:\nadm:x:4:\n",
        None,
    );
    add(
        &mut b,
        "./etc/shadow",
        F,
        0o640,
        b"root:*:20000:0:99999:7:::\n",
        None,
    );
    add(&mut b, "./etc/gshadow", F, 0o640, b"root:*::\n", None);
    add(&mut b, "./etc/machine-id", F, 0o444, b"", None);
    add(&mut b, "./etc/hostname", F, 0o644, b"buildhost\n", None);
    add(
        &mut b,
        "./etc/resolv.conf",
        F,
        0o644,
        b"nameserver 192.0.2.1\n",
        None,
    );
    add(
        &mut b,
        "./etc/ssh/ssh_host_ed25519_key",
        F,
        0o600,
        b"secret",
        None,
    );
    add(&mut b, "./var/log/dpkg.log", F, 0o644, b"log", None);
    add(
        &mut b,
        "./var/cache/ldconfig/aux-cache",
        F,
        0o600,
        b"aux",
        None,
    );
    add(
        &mut b,
        "./var/lib/dpkg/status",
        F,
        0o644,
        STATUS.as_bytes(),
        None,
    );
    add(&mut b, "./usr/share/doc/libfoo1/copyright", F, 0o644, b"Format: (machine-readable copyright format 1.0)\n\nFiles: *\nCopyright: someone\nLicense: GPL-2+\n", None);
    add(&mut b, "./usr/bin/true", F, 0o755, b"\x7fELF fake", None);
    add(
        &mut b,
        "./usr/bin/true-hardlink",
        tar::EntryType::Link,
        0o755,
        b"",
        Some("./usr/bin/true"),
    );
    add(&mut b, "./usr/lib/systemd/system/systemd-networkd.service", F, 0o644, b"[Unit]\nDescription=net\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nAlias=dbus-org.freedesktop.network1.service\nAlso=systemd-networkd.socket\n", None);
    add(
        &mut b,
        "./usr/lib/systemd/system/systemd-networkd.socket",
        F,
        0o644,
        b"[Socket]\nListenNetlink=route 1361\n[Install]\nWantedBy=sockets.target\n",
        None,
    );
    add(
        &mut b,
        "./usr/lib/systemd/system/static.service",
        F,
        0o644,
        b"[Service]\nExecStart=/bin/true\n",
        None,
    );
    b.finish().expect("finish base");
}

/// A recipe directory: recipe.toml, overlay/, a fake collector binary, a CA and a token.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

pub const RECIPE: &str = r#"
[image]
name = "test-appliance"
version = "1.0"
source_date_epoch = 1735689600

[base]
suite = "bookworm"
variant = "apt"
packages = ["systemd"]
mirror = "http://mirror.invalid/debian"

[[overlay]]
dir = "overlay"

[[file]]
path = "/etc/outpost/extra.conf"
content = "x = 1\n"
mode = "0640"
owner = "root"
group = "adm"

[[user]]
name = "admin"
uid = 1000
groups = ["sudo"]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests admin@test"]

[services]
enable = ["systemd-networkd.service", "outpost-collector.service"]

[outpost]
collector_bin = "bin/outpost-collector"
gateways = ["10.0.2.2:5723"]
ca_cert = "ca.pem"
bootstrap_token_file = "token"
strip = false

[firstboot]
hostname_pattern = "box-{machine_id:6}"
"#;

/// Test assets like B3's: a unit and a templated config.
pub const ASSETS: &[(&str, &[u8], bool)] = &[
    (
        "etc/systemd/system/outpost-collector.service",
        b"[Service]\nExecStart=/usr/bin/outpost-collector\n[Install]\nWantedBy=multi-user.target\n",
        false,
    ),
    (
        "etc/outpost/collector.toml",
        b"gateways = {{gateways}}\ntoken = \"{{bootstrap_token}}\"\n",
        false,
    ),
    (
        "usr/lib/outpost/firstboot",
        b"#!/bin/sh\nhostnamectl hostname '{{hostname_pattern}}'\n",
        true,
    ),
];
/// Test `modes.txt`.
pub const MODES: &str = "# comment\n0600 etc/outpost/collector.toml\n";

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::create_dir_all(p.join("overlay/etc/outpost")).expect("mkdir");
        std::fs::create_dir_all(p.join("bin")).expect("mkdir");
        std::fs::write(p.join("overlay/etc/motd"), "hello\n").expect("write");
        std::fs::write(p.join("overlay/etc/outpost/site.conf"), "site = 1\n").expect("write");
        std::fs::write(p.join("bin/outpost-collector"), b"\x7fELF collector").expect("write");
        std::fs::write(
            p.join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        std::fs::write(p.join("token"), "tok-123\n").expect("write");
        std::fs::write(p.join("recipe.toml"), RECIPE).expect("write");
        write_fake_base(&p.join("base.tar"));
        Fixture { dir }
    }

    pub fn recipe_path(&self) -> PathBuf {
        self.dir.path().join("recipe.toml")
    }

    /// Runs stages 2 and 3 on the fake base into `out` (created).
    pub fn build_into(&self, out: &Path) {
        let recipe = Recipe::load(&self.recipe_path()).expect("recipe");
        let inputs = Inputs::gather(&recipe, &self.recipe_path()).expect("inputs");
        let mut tree = Tree::from_tar(&self.dir.path().join("base.tar")).expect("index base");
        customize_with_assets(&mut tree, &recipe, &inputs, ASSETS, MODES).expect("customize");
        std::fs::create_dir_all(out).expect("mkdir out");
        finalize_tree(
            &tree,
            &recipe,
            "test-key",
            &out.join("rootfs.tar.zst"),
            &out.join("manifest.json"),
            &out.join("sbom.spdx.json"),
        )
        .expect("finalize");
    }
}
