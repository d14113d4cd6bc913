//! Stage 2, customise: lays the assets, overlays, Outpost agents, users, files and enabled
//! services over the base tree, then pins everything that would make two builds differ
//! (machine id, host name, logs, caches, random seeds, shadow dates).
//!
//! Pure with respect to the build host: it reads only the [`Inputs`] gathered beforehand and
//! the tree; it writes nothing to disk.

use std::collections::{BTreeMap, BTreeSet};

use crate::assets::{render_assets, ASSET_MODES, ROOTFS_ASSETS};
use crate::error::BuildError;
use crate::inputs::{Inputs, OverlayKind};
use crate::recipe::{parse_mode, Recipe};
use crate::tree::{Data, Kind, Node, Tree};

/// Largest system text file (passwd, group, shadow, unit file) read from the tree.
const MAX_TEXT: u64 = 4 * 1024 * 1024;

/// Directories searched for unit files, in systemd's order of precedence.
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// The asset that configures DHCP on every wired interface: installed only with
/// `[firstboot] network = "dhcp"`.
pub const DHCP_NETWORK_ASSET: &str = "etc/systemd/network/80-outpost-dhcp.network";

/// The assets of the update agent: installed only when the recipe sets
/// `outpost.updater_bin`.
pub const UPDATER_ASSETS: &[&str] = &[
    UPDATER_CONFIG_ASSET,
    "etc/systemd/system/outpost-updater.service",
    "etc/systemd/system/outpost-boot-check.service",
];

/// The updater's configuration, rendered from `[outpost]` and `[outpost.updater]`.
pub const UPDATER_CONFIG_ASSET: &str = "etc/outpost/updater.toml";

/// The units enabled whenever the updater is installed (as if listed in `[services] enable`).
pub const UPDATER_UNITS: &[&str] = &["outpost-boot-check.service", "outpost-updater.service"];

/// Where `/etc/fstab` (an asset) mounts the ESP: made as an empty directory in every image,
/// so systemd-bless-boot can bless the booted entry (boot counting) and the updater can write
/// entries there.
pub const ESP_MOUNT_POINT: &str = "boot/efi";

/// The `{{placeholder}}` values available to assets.
pub fn template_values(recipe: &Recipe, inputs: &Inputs) -> BTreeMap<&'static str, String> {
    let gateways = recipe
        .outpost
        .as_ref()
        .map_or_else(Vec::new, |o| o.gateways.clone());
    let gateways_toml = format!(
        "[{}]",
        gateways
            .iter()
            .map(|g| format!("\"{g}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut values = BTreeMap::from([
        (
            "hostname_pattern",
            recipe.firstboot.hostname_pattern.clone(),
        ),
        ("network", recipe.firstboot.network.clone()),
        ("gateways", gateways_toml.clone()),
        ("gateways_toml", gateways_toml),
        (
            "collector_interval",
            recipe
                .outpost
                .as_ref()
                .map_or_else(|| "30s".into(), |o| o.collector_interval.clone()),
        ),
        ("bootstrap_token", inputs.token.clone().unwrap_or_default()),
        ("ca_pem", inputs.ca_pem.clone().unwrap_or_default()),
        ("image_name", recipe.image.name.clone()),
        ("image_version", recipe.image.version.clone()),
    ]);
    values.extend(updater_values(recipe));
    values
}

/// A TOML string literal (quoted and escaped).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `key = "value"`, or a comment saying what applies when the recipe leaves `value` out.
fn toml_line(key: &str, value: Option<&str>, otherwise: &str) -> String {
    value.map_or_else(
        || format!("# {key}: not set; {otherwise}"),
        |v| format!("{key} = {}", toml_string(v)),
    )
}

/// The `{{updater_*}}` placeholders: TOML literals from `[outpost.updater]` (or its defaults).
fn updater_values(recipe: &Recipe) -> Vec<(&'static str, String)> {
    let u = recipe
        .outpost
        .as_ref()
        .and_then(|o| o.updater.clone())
        .unwrap_or_default();
    let (start, end) = u.install_window_times().unwrap_or(("01:00", "05:00"));
    let services = format!(
        "[{}]",
        u.health_services
            .iter()
            .map(|s| toml_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    vec![
        (
            "updater_initial_version",
            toml_string(&recipe.image.version),
        ),
        (
            "updater_box_tz",
            toml_line(
                "box_tz",
                u.box_tz.as_deref(),
                "the box's time zone (UTC as the image sets it on first boot)",
            ),
        ),
        ("updater_channel", toml_string(&u.channel)),
        ("updater_feed_interval", toml_string(&u.feed_interval)),
        (
            "updater_mirror_listen",
            toml_line(
                "listen",
                u.mirror_listen.as_deref(),
                "the local mirror is not served",
            ),
        ),
        ("updater_slot_a", toml_string(&u.slot_a)),
        ("updater_slot_b", toml_string(&u.slot_b)),
        ("updater_esp", toml_string(&u.esp)),
        ("updater_esp_path", u.esp.clone()),
        ("updater_tries", u.tries.to_string()),
        ("updater_install_start", toml_string(start)),
        ("updater_install_end", toml_string(end)),
        (
            "updater_restart_spread_max",
            toml_line(
                "spread_max",
                u.restart_spread_max.as_deref(),
                "restarts are spread over the whole VAR window",
            ),
        ),
        ("updater_collector_within", toml_string(&u.collector_within)),
        ("updater_health_services", services),
        ("updater_health_timeout", toml_string(&u.health_timeout)),
        (
            "updater_boot_check_timeout",
            format!(
                "{}s",
                duration_secs(&u.health_timeout) + BOOT_CHECK_MARGIN_SECS
            ),
        ),
    ]
}

/// What `outpost-boot-check.service` may take beyond the health check's own timeout: the
/// report to the gateway (15 s per gateway) and reading the ESP.
const BOOT_CHECK_MARGIN_SECS: u64 = 300;

/// Seconds of a validated recipe duration (`30s`, `15m`, `2h`); 0 if it is not one.
fn duration_secs(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().unwrap_or(0);
    match unit {
        "h" => n * 3600,
        "m" => n * 60,
        _ => n,
    }
}

/// Applies the whole customise stage with the embedded assets.
pub fn customize(tree: &mut Tree, recipe: &Recipe, inputs: &Inputs) -> Result<(), BuildError> {
    customize_with_assets(tree, recipe, inputs, ROOTFS_ASSETS, ASSET_MODES)
}

/// Applies the customise stage with the given raw assets (tests pass their own).
pub fn customize_with_assets(
    tree: &mut Tree,
    recipe: &Recipe,
    inputs: &Inputs,
    raw_assets: &[(&str, &[u8], bool)],
    modes: &str,
) -> Result<(), BuildError> {
    let t = recipe.image.source_date_epoch;
    let with_updater = recipe
        .outpost
        .as_ref()
        .is_some_and(|o| o.updater_bin.is_some());
    for a in render_assets(raw_assets, modes, &template_values(recipe, inputs))? {
        if a.path == DHCP_NETWORK_ASSET && recipe.firstboot.network != "dhcp" {
            continue;
        }
        if UPDATER_ASSETS.contains(&a.path.as_str()) && !with_updater {
            continue;
        }
        tree.put(&a.path, Node::bytes(a.content, a.mode, t));
    }
    tree.put(ESP_MOUNT_POINT, Node::dir(0o755, t));
    for overlay in &inputs.overlays {
        for e in overlay {
            let node = match &e.kind {
                OverlayKind::Dir => Node::dir(0o755, t),
                OverlayKind::File {
                    path,
                    len,
                    executable,
                    ..
                } => Node {
                    kind: Kind::File(Data::Host {
                        path: path.clone(),
                        len: *len,
                    }),
                    mode: if *executable { 0o755 } else { 0o644 },
                    uid: 0,
                    gid: 0,
                    mtime: t,
                },
                OverlayKind::Symlink(target) => Node {
                    kind: Kind::Symlink(target.clone()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                    mtime: t,
                },
            };
            tree.put(&e.rel, node);
        }
    }
    install_agents(tree, inputs, t);
    for i in 0..recipe.user.len() {
        add_user(tree, recipe, inputs, i, t)?;
    }
    for (i, f) in recipe.file.iter().enumerate() {
        let mode = f.mode.as_deref().and_then(parse_mode).unwrap_or(0o644);
        let uid = owner_id(tree, inputs, i, "owner", f.owner.as_deref())?;
        let gid = owner_id(tree, inputs, i, "group", f.group.as_deref())?;
        let data = inputs.files.get(i).cloned().unwrap_or_default();
        tree.put(
            &f.path,
            Node {
                uid,
                gid,
                ..Node::bytes(data, mode, t)
            },
        );
    }
    let mut done = BTreeSet::new();
    let auto = if with_updater { UPDATER_UNITS } else { &[] };
    for unit in auto
        .iter()
        .copied()
        .chain(recipe.services.enable.iter().map(String::as_str))
    {
        enable_unit(tree, inputs, unit, t, &mut done)?;
    }
    pin_reproducible(tree, t);
    Ok(())
}

fn custom_err(inputs: &Inputs, key: &str, value: &str, problem: impl Into<String>) -> BuildError {
    BuildError::Customize {
        recipe: inputs.recipe_path.clone(),
        key: key.into(),
        value: value.into(),
        problem: problem.into(),
    }
}

fn install_agents(tree: &mut Tree, inputs: &Inputs, t: u64) {
    for (dest, file) in [
        ("usr/bin/outpost-collector", &inputs.collector),
        ("usr/bin/outpost-updater", &inputs.updater),
    ] {
        if let Some(f) = file {
            let node = Node {
                kind: Kind::File(Data::Host {
                    path: f.path.clone(),
                    len: f.len,
                }),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: t,
            };
            tree.put(dest, node);
        }
    }
    if let Some(root) = &inputs.feed_root {
        tree.put(
            "etc/outpost/feed-root.json",
            Node::bytes(root.clone(), 0o644, t),
        );
    }
}

fn read_text(tree: &Tree, path: &str) -> String {
    tree.read(path, MAX_TEXT)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Replaces a text file's content, keeping its mode and owner (or root 0644 if new).
fn write_text(tree: &mut Tree, path: &str, text: String, t: u64) {
    let key = tree.resolve(path);
    let (mode, uid, gid) = tree
        .nodes
        .get(&key)
        .map_or((0o644, 0, 0), |n| (n.mode, n.uid, n.gid));
    tree.put(
        &key,
        Node {
            uid,
            gid,
            ..Node::bytes(text.into_bytes(), mode, t)
        },
    );
}

/// The numeric id of `[[file]]` number `i`'s `owner` or `group` (default `root`).
fn owner_id(
    tree: &Tree,
    inputs: &Inputs,
    i: usize,
    which: &str,
    name: Option<&str>,
) -> Result<u32, BuildError> {
    let name = name.unwrap_or("root");
    let (file, what) = if which == "owner" {
        ("etc/passwd", "user")
    } else {
        ("etc/group", "group")
    };
    lookup_id(tree, file, name).ok_or_else(|| {
        custom_err(
            inputs,
            &format!("file[{i}].{which}"),
            name,
            format!("no such {what} in the image's /{file}"),
        )
    })
}

/// Numeric id of `name` (or the number itself) in a passwd/group style file of the tree.
fn lookup_id(tree: &Tree, file: &str, name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    read_text(tree, file).lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name))
            .then(|| f.nth(1).and_then(|id| id.parse().ok()))
            .flatten()
    })
}

fn add_user(
    tree: &mut Tree,
    recipe: &Recipe,
    inputs: &Inputs,
    i: usize,
    t: u64,
) -> Result<(), BuildError> {
    let u = &recipe.user[i];
    let passwd = read_text(tree, "etc/passwd");
    if passwd
        .lines()
        .any(|l| l.split(':').next() == Some(u.name.as_str()))
    {
        return Err(custom_err(
            inputs,
            &format!("user[{i}].name"),
            &u.name,
            "already exists in the image's /etc/passwd",
        ));
    }
    if passwd
        .lines()
        .any(|l| l.split(':').nth(2) == Some(u.uid.to_string().as_str()))
    {
        return Err(custom_err(
            inputs,
            &format!("user[{i}].uid"),
            &u.uid.to_string(),
            "is already used in the image's /etc/passwd",
        ));
    }
    let mut group = read_text(tree, "etc/group");
    let mut lines: Vec<String> = group.lines().map(String::from).collect();
    for g in &u.groups {
        let Some(line) = lines
            .iter_mut()
            .find(|l| l.split(':').next() == Some(g.as_str()))
        else {
            return Err(custom_err(
                inputs,
                &format!("user[{i}].groups"),
                g,
                "no such group in the image's /etc/group",
            ));
        };
        if !line.ends_with(':') {
            line.push(',');
        }
        line.push_str(&u.name);
    }
    lines.push(format!("{}:x:{}:", u.name, u.uid));
    group = lines.join("\n") + "\n";
    write_text(tree, "etc/group", group, t);
    let shell = u.shell.clone().unwrap_or_else(|| "/bin/bash".into());
    let home = format!("/home/{}", u.name);
    write_text(
        tree,
        "etc/passwd",
        format!("{passwd}{}:x:{}:{}::{home}:{shell}\n", u.name, u.uid, u.uid),
        t,
    );
    let days = t / 86_400;
    let shadow = read_text(tree, "etc/shadow");
    write_text(
        tree,
        "etc/shadow",
        format!("{shadow}{}:*:{days}:0:99999:7:::\n", u.name),
        t,
    );
    let gshadow = read_text(tree, "etc/gshadow");
    write_text(tree, "etc/gshadow", format!("{gshadow}{}:!::\n", u.name), t);
    let own = |n: Node| Node {
        uid: u.uid,
        gid: u.uid,
        ..n
    };
    tree.put(&home, own(Node::dir(0o700, t)));
    if !u.ssh_authorized_keys.is_empty() {
        tree.put(&format!("{home}/.ssh"), own(Node::dir(0o700, t)));
        let keys = u
            .ssh_authorized_keys
            .iter()
            .map(|k| format!("{}\n", k.trim()))
            .collect::<String>();
        tree.put(
            &format!("{home}/.ssh/authorized_keys"),
            own(Node::bytes(keys.into_bytes(), 0o600, t)),
        );
    }
    Ok(())
}

/// The `[Install]` section of a unit file: (WantedBy, RequiredBy, Alias, Also).
#[derive(Debug, Default, PartialEq)]
pub struct InstallSection {
    /// `WantedBy=` targets.
    pub wanted_by: Vec<String>,
    /// `RequiredBy=` targets.
    pub required_by: Vec<String>,
    /// `Alias=` names.
    pub alias: Vec<String>,
    /// `Also=` units.
    pub also: Vec<String>,
}

/// Parses the `[Install]` section of a unit file; `None` if it has none.
pub fn parse_install(text: &str) -> Option<InstallSection> {
    let mut in_install = false;
    let mut found = false;
    let mut s = InstallSection::default();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            found |= in_install;
            continue;
        }
        if !in_install || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let vals = v.split_whitespace().map(String::from);
        match k.trim() {
            "WantedBy" => s.wanted_by.extend(vals),
            "RequiredBy" => s.required_by.extend(vals),
            "Alias" => s.alias.extend(vals),
            "Also" => s.also.extend(vals),
            _ => {}
        }
    }
    found.then_some(s)
}

fn find_unit(tree: &Tree, unit: &str) -> Option<String> {
    let template = match unit.split_once('@') {
        Some((prefix, rest)) if !rest.starts_with('.') => rest
            .rsplit_once('.')
            .map(|(_, suffix)| format!("{prefix}@.{suffix}")),
        _ => None,
    };
    for name in std::iter::once(unit.to_string()).chain(template) {
        for dir in UNIT_DIRS {
            let key = tree.resolve(&format!("{dir}/{name}"));
            if matches!(
                tree.nodes.get(&key),
                Some(Node {
                    kind: Kind::File(_),
                    ..
                })
            ) {
                return Some(key);
            }
        }
    }
    None
}

fn enable_unit(
    tree: &mut Tree,
    inputs: &Inputs,
    unit: &str,
    t: u64,
    done: &mut BTreeSet<String>,
) -> Result<(), BuildError> {
    if !done.insert(unit.to_string()) {
        return Ok(());
    }
    let key = find_unit(tree, unit).ok_or_else(|| {
        custom_err(
            inputs,
            "services.enable",
            unit,
            format!("no unit file in /{} of the image", UNIT_DIRS.join(", /")),
        )
    })?;
    let text = read_text(tree, &key);
    let install = parse_install(&text).ok_or_else(|| {
        custom_err(
            inputs,
            "services.enable",
            unit,
            format!("/{key} has no [Install] section, so it cannot be enabled"),
        )
    })?;
    let target = format!("/{key}");
    let link = |to: &str| Node {
        kind: Kind::Symlink(to.to_string()),
        mode: 0o777,
        uid: 0,
        gid: 0,
        mtime: t,
    };
    for (wants, suffix) in [
        (&install.wanted_by, "wants"),
        (&install.required_by, "requires"),
    ] {
        for w in wants {
            tree.put(
                &format!("etc/systemd/system/{w}.{suffix}/{unit}"),
                link(&target),
            );
        }
    }
    for a in &install.alias {
        tree.put(&format!("etc/systemd/system/{a}"), link(&target));
    }
    for also in &install.also {
        enable_unit(tree, inputs, also, t, done)?;
    }
    Ok(())
}

/// Files and directories whose content depends on when or where the build ran.
fn is_volatile(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "var/log/",
        "var/cache/man/",
        "var/lib/apt/lists/",
        "tmp/",
        "var/tmp/",
    ];
    const EXACT: &[&str] = &[
        "var/cache/ldconfig/aux-cache",
        "var/lib/systemd/random-seed",
        "var/lib/systemd/catalog/database",
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/subuid-",
        "etc/subgid-",
    ];
    EXACT.contains(&key)
        || PREFIXES.iter().any(|p| key.starts_with(p))
        || key.starts_with("etc/ssh/ssh_host_")
        || key.ends_with(".pyc")
        || (key.starts_with("var/cache/apt/") && (key.ends_with(".bin") || key.ends_with(".deb")))
        || ((key.starts_with("var/cache/debconf/") || key.starts_with("var/lib/dpkg/"))
            && key.ends_with("-old"))
}

/// Pins what would make builds differ; see the module documentation and docs/recipe.md.
pub fn pin_reproducible(tree: &mut Tree, t: u64) {
    let volatile: Vec<String> = tree
        .nodes
        .iter()
        .filter(|(k, n)| n.kind != Kind::Dir && is_volatile(k))
        .map(|(k, _)| k.clone())
        .collect();
    for k in volatile {
        tree.nodes.remove(&k);
    }
    let pycache: Vec<String> = tree
        .nodes
        .keys()
        .filter(|k| k.ends_with("/__pycache__"))
        .cloned()
        .collect();
    for k in pycache {
        tree.remove_tree(&k);
    }
    if matches!(
        tree.nodes.get("var/lib/dbus/machine-id"),
        Some(Node {
            kind: Kind::File(_),
            ..
        })
    ) {
        tree.nodes.remove("var/lib/dbus/machine-id");
    }
    if matches!(
        tree.nodes.get("etc/resolv.conf"),
        Some(Node {
            kind: Kind::File(_),
            ..
        })
    ) {
        tree.nodes.remove("etc/resolv.conf");
    }
    tree.put(
        "etc/machine-id",
        Node::bytes(b"uninitialized\n".to_vec(), 0o444, t),
    );
    tree.nodes.remove("etc/hostname");
    let days = (t / 86_400).to_string();
    for file in ["etc/shadow"] {
        let text = read_text(tree, file);
        if text.is_empty() {
            continue;
        }
        let pinned: String = text
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.len() > 2 && !f[2].is_empty() {
                    f[2] = &days;
                }
                f.join(":") + "\n"
            })
            .collect();
        write_text(tree, file, pinned, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_install_sections() {
        let text = "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nAlias=dbus-org.x.service\nAlso=x.socket y.service\n";
        let s = parse_install(text).unwrap_or_default();
        assert_eq!(s.wanted_by, vec!["multi-user.target"]);
        assert_eq!(s.alias, vec!["dbus-org.x.service"]);
        assert_eq!(s.also, vec!["x.socket", "y.service"]);
        assert!(parse_install("[Unit]\n").is_none());
    }

    #[test]
    fn volatile_paths() {
        assert!(is_volatile("var/log/apt/history.log"));
        assert!(is_volatile("etc/ssh/ssh_host_ed25519_key"));
        assert!(is_volatile("var/cache/ldconfig/aux-cache"));
        assert!(!is_volatile("etc/passwd"));
    }
}
