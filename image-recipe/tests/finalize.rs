//! Stages 2 and 3 on a small fake base: reproducible output, pinned files, users, services,
//! assets, SBOM from the fake dpkg status.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::{Fixture, EPOCH};
use outpost_image::finalize::{manifest_of_archive, Manifest, ManifestEntry};

fn manifest(dir: &std::path::Path) -> BTreeMap<String, ManifestEntry> {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("read"))
            .expect("parse");
    m.files.into_iter().map(|e| (e.path.clone(), e)).collect()
}

fn file_content(dir: &std::path::Path, path: &str) -> String {
    let dec = zstd::Decoder::new(std::fs::File::open(dir.join("rootfs.tar.zst")).expect("open"))
        .expect("zstd");
    let mut a = tar::Archive::new(dec);
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.path().expect("path").to_string_lossy() == path {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).expect("read");
            return s;
        }
    }
    panic!("{path} not in archive");
}

#[test]
fn finalize_twice_gives_identical_archive_manifest_and_sbom() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    fx.build_into(&out.path().join("a"));
    // Touch an overlay file (new mtime, same content): the output must not change.
    let f = std::fs::File::options()
        .write(true)
        .open(fx.dir.path().join("overlay/etc/motd"))
        .expect("open");
    f.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .expect("set mtime");
    fx.build_into(&out.path().join("b"));
    for name in ["rootfs.tar.zst", "manifest.json", "sbom.spdx.json"] {
        let a = std::fs::read(out.path().join("a").join(name)).expect("read a");
        let b = std::fs::read(out.path().join("b").join(name)).expect("read b");
        assert!(a == b, "{name} differs between two builds");
    }
    // The manifest describes the archive exactly.
    let from_archive =
        manifest_of_archive(&out.path().join("a/rootfs.tar.zst")).expect("read archive");
    let listed: Vec<ManifestEntry> = manifest(&out.path().join("a")).into_values().collect();
    assert_eq!(from_archive, listed);
}

#[test]
fn output_is_pinned_sorted_and_clamped() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    fx.build_into(out.path());
    let m = manifest(out.path());
    let paths: Vec<&String> = m.keys().collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert!(
        m.values().all(|e| e.mtime <= EPOCH),
        "an mtime is after SOURCE_DATE_EPOCH"
    );
    assert_eq!(
        file_content(out.path(), "etc/machine-id"),
        "uninitialized\n"
    );
    for gone in [
        "etc/hostname",
        "etc/resolv.conf",
        "etc/ssh/ssh_host_ed25519_key",
        "var/log/dpkg.log",
        "var/cache/ldconfig/aux-cache",
    ] {
        assert!(!m.contains_key(gone), "{gone} should have been removed");
    }
    assert!(m.contains_key("var/log"), "/var/log itself stays");
    let days = EPOCH / 86_400;
    let shadow = file_content(out.path(), "etc/shadow");
    assert!(shadow.contains(&format!("root:*:{days}:")), "{shadow}");
    assert!(shadow.contains(&format!("admin:*:{days}:")), "{shadow}");
    // Hard links become regular files with the same content.
    assert_eq!(m["usr/bin/true-hardlink"].sha256, m["usr/bin/true"].sha256);
    assert_eq!(m["usr/bin/true-hardlink"].kind, "file");
}

#[test]
fn customisations_land_with_modes_and_owners() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    fx.build_into(out.path());
    let m = manifest(out.path());
    // Overlay, [[file]], agents, assets.
    assert_eq!(file_content(out.path(), "etc/motd"), "hello\n");
    assert_eq!(m["etc/motd"].mode, "0644");
    assert_eq!(
        (
            m["etc/outpost/extra.conf"].mode.as_str(),
            m["etc/outpost/extra.conf"].gid
        ),
        ("0640", 4)
    );
    assert_eq!(m["usr/bin/outpost-collector"].mode, "0755");
    assert_eq!(m["usr/lib/outpost/firstboot"].mode, "0755");
    assert_eq!(m["etc/outpost/collector.toml"].mode, "0600");
    assert_eq!(
        file_content(out.path(), "etc/outpost/collector.toml"),
        "gateways = [\"10.0.2.2:5723\"]\ntoken = \"tok-123\"\n"
    );
    assert!(file_content(out.path(), "usr/lib/outpost/firstboot").contains("box-{machine_id:6}"));
    // User with home, key and supplementary group.
    assert!(
        file_content(out.path(), "etc/passwd").contains("admin:x:1000:1000::/home/admin:/bin/bash")
    );
    assert!(file_content(out.path(), "etc/group").contains("sudo:x:27:admin"));
    let keys = &m["home/admin/.ssh/authorized_keys"];
    assert_eq!(
        (keys.mode.as_str(), keys.uid, keys.gid),
        ("0600", 1000, 1000)
    );
    // Services enabled like systemctl: wants links, alias, Also=, units found through /lib.
    let target = |p: &str| m.get(p).and_then(|e| e.target.clone());
    assert_eq!(
        target("etc/systemd/system/multi-user.target.wants/systemd-networkd.service").as_deref(),
        Some("/usr/lib/systemd/system/systemd-networkd.service")
    );
    assert_eq!(
        target("etc/systemd/system/dbus-org.freedesktop.network1.service").as_deref(),
        Some("/usr/lib/systemd/system/systemd-networkd.service")
    );
    assert!(m.contains_key("etc/systemd/system/sockets.target.wants/systemd-networkd.socket"));
    assert_eq!(
        target("etc/systemd/system/multi-user.target.wants/outpost-collector.service").as_deref(),
        Some("/etc/systemd/system/outpost-collector.service")
    );
}

#[test]
fn sbom_lists_installed_packages_from_dpkg_status() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    fx.build_into(out.path());
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("sbom.spdx.json")).expect("read"))
            .expect("json");
    assert_eq!(v["spdxVersion"], "SPDX-2.3");
    assert_eq!(v["creationInfo"]["created"], "2025-01-01T00:00:00Z");
    let pkgs = v["packages"].as_array().expect("packages");
    let names: Vec<&str> = pkgs.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        vec!["test-appliance", "base-files", "libfoo1"],
        "deinstalled packages are not listed"
    );
    let foo = &pkgs[2];
    assert_eq!(foo["versionInfo"], "1:2.0-1");
    assert_eq!(foo["licenseDeclared"], "GPL-2.0-or-later");
    assert_eq!(
        foo["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/libfoo1@1%3A2.0-1?arch=amd64"
    );
    assert_eq!(pkgs[1]["licenseDeclared"], "NOASSERTION");
}

/// Runs the customise stage of the fixture's recipe (with `edit` applied to its text) over the
/// fake base, with the fixture assets plus the real DHCP network asset.
fn customized_tree(edit: impl Fn(&str) -> String) -> outpost_image::tree::Tree {
    use outpost_image::customize::{customize_with_assets, DHCP_NETWORK_ASSET};
    let fx = Fixture::new();
    let text = edit(common::RECIPE);
    std::fs::write(fx.recipe_path(), &text).expect("write recipe");
    let recipe = outpost_image::Recipe::load(&fx.recipe_path()).expect("recipe");
    let inputs = outpost_image::inputs::Inputs::gather(&recipe, &fx.recipe_path()).expect("inputs");
    let mut tree =
        outpost_image::tree::Tree::from_tar(&fx.dir.path().join("base.tar")).expect("base");
    let mut assets = common::ASSETS.to_vec();
    assets.push((DHCP_NETWORK_ASSET, b"[Network]\nDHCP=yes\n", false));
    customize_with_assets(&mut tree, &recipe, &inputs, &assets, common::MODES).expect("customize");
    tree
}

#[test]
fn firstboot_network_none_installs_no_dhcp_configuration() {
    use outpost_image::customize::DHCP_NETWORK_ASSET;
    // Default (dhcp): the network file is there.
    let tree = customized_tree(str::to_string);
    assert!(
        tree.nodes.contains_key(DHCP_NETWORK_ASSET),
        "network = \"dhcp\" (default) must install {DHCP_NETWORK_ASSET}"
    );
    // network = "none": no DHCP configuration at all.
    let tree = customized_tree(|r| format!("{r}network = \"none\"\n"));
    assert!(
        !tree.nodes.contains_key(DHCP_NETWORK_ASSET),
        "network = \"none\" must not install {DHCP_NETWORK_ASSET}"
    );
    assert!(
        tree.nodes
            .keys()
            .all(|k| !k.starts_with("etc/systemd/network/")),
        "network = \"none\" installed a network file"
    );
}

#[test]
fn esp_mount_point_exists_for_fstab_and_boot_blessing() {
    use outpost_image::customize::ESP_MOUNT_POINT;
    let tree = customized_tree(str::to_string);
    let node = tree
        .nodes
        .get(ESP_MOUNT_POINT)
        .expect("the ESP mount point");
    assert_eq!(node.kind, outpost_image::tree::Kind::Dir);
    assert_eq!((node.mode, node.uid, node.gid), (0o755, 0, 0));
}

#[test]
fn fstab_asset_mounts_the_esp_where_systemd_bless_boot_finds_it() {
    use outpost_image::assets::ROOTFS_ASSETS;
    use outpost_image::customize::ESP_MOUNT_POINT;
    let fstab = ROOTFS_ASSETS
        .iter()
        .find(|(p, _, _)| *p == "etc/fstab")
        .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())
        .expect("etc/fstab asset");
    let esp: Vec<&str> = fstab
        .lines()
        .find(|l| l.starts_with("PARTLABEL=esp"))
        .expect("an fstab line for PARTLABEL=esp")
        .split_whitespace()
        .collect();
    // systemd 252 looks for the ESP at /efi, /boot and /boot/efi.
    assert_eq!(esp[1], format!("/{ESP_MOUNT_POINT}"));
    assert!(["/efi", "/boot", "/boot/efi"].contains(&esp[1]));
    assert_eq!(esp[2], "vfat");
    // The blessing waits for the mount (it is nofail, so not ordered before local-fs.target).
    let dropin = ROOTFS_ASSETS
        .iter()
        .find(|(p, _, _)| *p == "etc/systemd/system/systemd-bless-boot.service.d/outpost-esp.conf")
        .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())
        .expect("systemd-bless-boot drop-in asset");
    assert!(
        dropin.contains(&format!("RequiresMountsFor={}\n", esp[1])),
        "{dropin}"
    );
}
