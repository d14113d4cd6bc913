//! The update agent in the image: with `outpost.updater_bin` the customised tree holds the
//! binary, `/etc/outpost/updater.toml` rendered from `[outpost]` and `[outpost.updater]` (and
//! accepted by the updater's own config parser), `outpost-updater.service` and
//! `outpost-boot-check.service` with their ordering, and the enable links; without it, none
//! of these. Bad `[outpost.updater]` values name the recipe file and the key.

mod common;

use std::path::Path;

use common::{Fixture, RECIPE};
use outpost_image::assets::{ASSET_MODES, ROOTFS_ASSETS};
use outpost_image::customize::{customize_with_assets, ESP_MOUNT_POINT};
use outpost_image::inputs::Inputs;
use outpost_image::tree::{Kind, Tree};
use outpost_image::Recipe;

const UPDATER_BIN: &str = "strip = false\nupdater_bin = \"bin/outpost-updater\"\n";

const UPDATER_TABLE: &str = r#"
[outpost.updater]
channel = "testing"
feed_interval = "5m"
box_tz = "Europe/Berlin"
install_window = "02:30-04:00"
mirror_listen = "192.168.122.1:8080"
tries = 2
restart_spread_max = "1h"
collector_within = "15m"
health_services = ["libvirtd.service"]
health_timeout = "3m"
"#;

/// The fixture's recipe with `edit` applied, customised with the real assets over the fake
/// base.
fn customized(edit: impl Fn(&str) -> String) -> Tree {
    let fx = Fixture::new();
    std::fs::write(
        fx.dir.path().join("bin/outpost-updater"),
        b"\x7fELF updater",
    )
    .expect("write");
    std::fs::write(fx.recipe_path(), edit(RECIPE)).expect("write recipe");
    let recipe = Recipe::load(&fx.recipe_path()).expect("recipe");
    let inputs = Inputs::gather(&recipe, &fx.recipe_path()).expect("inputs");
    let mut tree = Tree::from_tar(&fx.dir.path().join("base.tar")).expect("base");
    customize_with_assets(&mut tree, &recipe, &inputs, ROOTFS_ASSETS, ASSET_MODES)
        .expect("customize");
    tree
}

fn text(tree: &Tree, path: &str) -> String {
    String::from_utf8(
        tree.read(path, 1 << 20)
            .unwrap_or_else(|| panic!("{path} missing")),
    )
    .expect("UTF-8")
}

fn mode(tree: &Tree, path: &str) -> u32 {
    tree.nodes
        .get(path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .mode
}

fn link_target(tree: &Tree, path: &str) -> Option<String> {
    match &tree.nodes.get(path)?.kind {
        Kind::Symlink(t) => Some(t.clone()),
        _ => None,
    }
}

/// Parses and resolves the rendered `updater.toml` the way `outpost-updater` does at start.
fn updater_config(tree: &Tree) -> outpost_updater::config::Config {
    let path = Path::new("/etc/outpost/updater.toml");
    let raw =
        outpost_updater::config::RawConfig::parse(path, &text(tree, "etc/outpost/updater.toml"))
            .unwrap_or_else(|e| panic!("the updater refuses the rendered config: {e}"));
    raw.resolve(path, Path::new("/etc/outpost"))
        .unwrap_or_else(|e| panic!("the updater refuses the rendered config: {e}"))
}

#[test]
fn updater_is_installed_with_its_config_units_and_links() {
    let tree = customized(|r| r.replace("strip = false\n", UPDATER_BIN) + UPDATER_TABLE);

    let bin = tree
        .nodes
        .get("usr/bin/outpost-updater")
        .expect("the updater binary");
    assert!(matches!(bin.kind, Kind::File(_)));
    assert_eq!((bin.mode, bin.uid, bin.gid), (0o755, 0, 0));

    assert_eq!(mode(&tree, "etc/outpost/updater.toml"), 0o644);
    let c = updater_config(&tree);
    assert_eq!(c.gateways, ["10.0.2.2:5723"]);
    assert_eq!(c.ca_cert, Path::new("/etc/outpost/ca.pem"));
    // The collector's identity, where the image's collector.toml keeps it (data partition).
    assert_eq!(
        c.collector_state_dir,
        Path::new("/var/lib/outpost/collector")
    );
    assert_eq!(
        c.client_cert,
        Path::new("/var/lib/outpost/collector/cert.pem")
    );
    assert!(
        text(&tree, "etc/outpost/collector.toml").contains("/var/lib/outpost/collector"),
        "the collector's state_dir moved; the updater's collector_state_dir must follow"
    );
    assert_eq!(c.state_dir, Path::new("/var/lib/outpost/updater"));
    assert_eq!(c.initial_version, "1.0");
    assert_eq!(c.channel, "testing");
    assert_eq!(c.trusted_root, Path::new("/etc/outpost/feed-root.json"));
    assert_eq!(c.sync_interval.as_secs(), 300);
    assert_eq!(c.box_tz, "Europe/Berlin");
    assert_eq!(c.mirror_listen, Some("192.168.122.1:8080".parse().unwrap()));
    assert_eq!(c.slots.a, Path::new("/dev/disk/by-partlabel/root-a"));
    assert_eq!(c.slots.b, Path::new("/dev/disk/by-partlabel/root-b"));
    assert_eq!(c.slots.esp, Path::new("/boot/efi"));
    assert_eq!(c.slots.tries, 2);
    assert_eq!(c.spread_max.map(|d| d.as_secs()), Some(3600));
    assert_eq!(c.health.collector_within.map(|d| d.as_secs()), Some(900));
    assert_eq!(c.health.services, ["libvirtd.service"]);
    assert_eq!(c.health.timeout.as_secs(), 180);
    let berlin_02_30 = "2026-01-15T01:30:00Z".parse().unwrap();
    let berlin_04_00 = "2026-01-15T03:00:00Z".parse().unwrap();
    assert!(c.install_window.is_open(berlin_02_30));
    assert!(!c.install_window.is_open(berlin_04_00));

    let boot_check = text(&tree, "etc/systemd/system/outpost-boot-check.service");
    for line in [
        "Type=oneshot\n",
        "ExecStart=/usr/bin/outpost-updater --config /etc/outpost/updater.toml boot-check\n",
        "Before=boot-complete.target\n",
        "After=network-online.target outpost-collector.service\n",
        "RequiresMountsFor=/var/lib/outpost /boot/efi\n",
        // health_timeout = "3m", plus 5 minutes for the report.
        "TimeoutStartSec=480s\n",
        "RequiredBy=boot-complete.target\n",
        "WantedBy=multi-user.target\n",
    ] {
        assert!(
            boot_check.contains(line),
            "boot-check unit lacks {line:?}:\n{boot_check}"
        );
    }
    // Only the unhealthy verdict (exit 3) reboots; other failures must not loop.
    assert!(!boot_check.contains("FailureAction"), "{boot_check}");
    assert!(boot_check.contains("\"$$EXIT_STATUS\" = 3"), "{boot_check}");

    let agent = text(&tree, "etc/systemd/system/outpost-updater.service");
    for line in [
        "ExecStart=/usr/bin/outpost-updater --config /etc/outpost/updater.toml run\n",
        "After=network-online.target outpost-collector.service outpost-boot-check.service\n",
        "RequiresMountsFor=/var/lib/outpost /boot/efi\n",
        "ConditionPathExists=/etc/outpost/feed-root.json\n",
        "Restart=on-failure\n",
        "RestartSec=30s\n",
        "WantedBy=multi-user.target\n",
    ] {
        assert!(
            agent.contains(line),
            "updater unit lacks {line:?}:\n{agent}"
        );
    }
    // The ESP the units wait for is the one the image mounts.
    assert_eq!(
        format!("/{ESP_MOUNT_POINT}"),
        c.slots.esp.display().to_string()
    );

    // Enabled without being listed in [services] enable.
    for (link, unit) in [
        (
            "boot-complete.target.requires",
            "outpost-boot-check.service",
        ),
        ("multi-user.target.wants", "outpost-boot-check.service"),
        ("multi-user.target.wants", "outpost-updater.service"),
    ] {
        assert_eq!(
            link_target(&tree, &format!("etc/systemd/system/{link}/{unit}")).as_deref(),
            Some(format!("/etc/systemd/system/{unit}").as_str()),
            "{link}/{unit}"
        );
    }
}

#[test]
fn updater_defaults_render_a_config_the_updater_accepts() {
    // Listing the units in [services] enable as well is allowed.
    let tree = customized(|r| {
        r.replace("strip = false\n", UPDATER_BIN).replace(
            "enable = [\"systemd-networkd.service\", \"outpost-collector.service\"]",
            "enable = [\"systemd-networkd.service\", \"outpost-collector.service\", \"outpost-updater.service\", \"outpost-boot-check.service\"]",
        )
    });
    let c = updater_config(&tree);
    assert_eq!(c.channel, "stable");
    assert_eq!(c.mirror_listen, None);
    assert_eq!(c.slots.tries, 3);
    assert_eq!(c.sync_interval.as_secs(), 900);
    assert_eq!(c.spread_max, None);
    assert_eq!(c.health.collector_within.map(|d| d.as_secs()), Some(600));
    assert_eq!(c.health.timeout.as_secs(), 120);
    assert!(c.health.services.is_empty());
    let toml = text(&tree, "etc/outpost/updater.toml");
    assert!(toml.contains("# box_tz: not set"), "{toml}");
    assert!(toml.contains("# listen: not set"), "{toml}");
    assert!(
        text(&tree, "etc/systemd/system/outpost-boot-check.service")
            .contains("TimeoutStartSec=420s\n"),
        "default health_timeout 2m plus 5 minutes"
    );
    assert!(tree.nodes.contains_key(
        "etc/systemd/system/boot-complete.target.requires/outpost-boot-check.service"
    ));
}

#[test]
fn without_updater_bin_nothing_of_the_updater_is_installed() {
    let tree = customized(str::to_string);
    for path in [
        "usr/bin/outpost-updater",
        "etc/outpost/updater.toml",
        "etc/systemd/system/outpost-updater.service",
        "etc/systemd/system/outpost-boot-check.service",
        "etc/systemd/system/boot-complete.target.requires/outpost-boot-check.service",
        "etc/systemd/system/multi-user.target.wants/outpost-boot-check.service",
        "etc/systemd/system/multi-user.target.wants/outpost-updater.service",
    ] {
        assert!(
            !tree.nodes.contains_key(path),
            "{path} installed without updater_bin"
        );
    }
    assert!(tree.nodes.contains_key("etc/outpost/collector.toml"));
}

fn parse_err(text: &str) -> String {
    match Recipe::parse(Path::new("dir/recipe.toml"), text) {
        Ok(_) => panic!("recipe was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn updater_settings_without_updater_bin_name_the_file_and_key() {
    let e = parse_err(&format!("{RECIPE}{UPDATER_TABLE}"));
    let line = RECIPE.lines().count() + 2;
    assert!(
        e.starts_with(&format!("dir/recipe.toml:{line}: key `outpost.updater`")),
        "{e}"
    );
    assert!(e.contains("outpost.updater_bin"), "{e}");
}

#[test]
fn bad_updater_values_name_the_file_key_and_value() {
    let with_bin = RECIPE.replace("strip = false\n", UPDATER_BIN);
    for (key, value, expect) in [
        ("channel", "\"Not A Channel\"", "Not A Channel"),
        ("feed_interval", "\"soon\"", "soon"),
        ("box_tz", "\"Mars/Olympus_Mons\"", "Mars/Olympus_Mons"),
        ("install_window", "\"25:00-05:00\"", "25:00-05:00"),
        ("install_window", "\"01:00\"", "01:00"),
        ("mirror_listen", "\"localhost\"", "localhost"),
        ("slot_a", "\"dev/sda2\"", "dev/sda2"),
        ("slot_b", "\"/dev/disk/by-partlabel/root-a\"", "root-a"),
        ("esp", "\"/boot/../efi\"", "/boot/../efi"),
        ("tries", "0", "0"),
        ("restart_spread_max", "\"0s\"", "0s"),
        ("health_timeout", "\"2 minutes\"", "2 minutes"),
        ("health_services", "[\"libvirtd\"]", "libvirtd"),
    ] {
        let text = format!("{with_bin}\n[outpost.updater]\n{key} = {value}\n");
        let e = parse_err(&text);
        let line = text.lines().count();
        assert!(
            e.starts_with(&format!(
                "dir/recipe.toml:{line}: key `outpost.updater.{key}`"
            )),
            "{key}: {e}"
        );
        assert!(e.contains(expect), "{key}: {e}");
    }
    let e = parse_err(&format!(
        "{with_bin}\n[outpost.updater]\nchanel = \"stable\"\n"
    ));
    assert!(
        e.starts_with("dir/recipe.toml:") && e.contains("chanel"),
        "{e}"
    );
    // `0s` turns the collector check off, as in updater.toml.
    Recipe::parse(
        Path::new("r.toml"),
        &format!("{with_bin}\n[outpost.updater]\ncollector_within = \"0s\"\n"),
    )
    .expect("collector_within = \"0s\" is allowed");
}
