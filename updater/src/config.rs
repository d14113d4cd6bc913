//! `updater.toml`: what the agent reads at start (see `examples/updater.toml` and
//! `docs/updates.md`).
//!
//! Two steps: [`RawConfig`] deserializes (unknown keys refused) and [`RawConfig::resolve`]
//! validates values, makes paths absolute (relative to the file's directory) and looks up the
//! time zone. Every error names the file, the key and what is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::SignedDuration;
use serde::Deserialize;

use crate::bootcount::{EntryTemplate, DEFAULT_TRIES};
use crate::slots::SlotTable;
use crate::windows::{self, Window, DEFAULT_INSTALL_END, DEFAULT_INSTALL_START};

/// Default state directory of the updater.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/outpost-updater";
/// Default state directory of the collector, whose identity the updater shares.
pub const DEFAULT_COLLECTOR_STATE_DIR: &str = "/var/lib/outpost-collector";
/// Default Outpost CA certificate.
pub const DEFAULT_CA_CERT: &str = "/etc/outpost/ca.pem";
/// Default slot devices and ESP.
pub const DEFAULT_SLOT_A: &str = "/dev/disk/by-partlabel/root-a";
/// See [`DEFAULT_SLOT_A`].
pub const DEFAULT_SLOT_B: &str = "/dev/disk/by-partlabel/root-b";
/// See [`DEFAULT_SLOT_A`].
pub const DEFAULT_ESP: &str = "/boot/efi";
/// Kernel command line read to find the booted slot.
pub const DEFAULT_CMDLINE: &str = "/proc/cmdline";
/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Reading the file failed.
    #[error("failed to read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("config {} is larger than {MAX_CONFIG_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not valid TOML for this schema (unknown key, wrong type).
    #[error("config {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and key.
        message: String,
    },
    /// A value is wrong.
    #[error("config {}: {key} = {value:?}: {reason}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `[feed]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    /// Channel followed (default `stable`).
    pub channel: Option<String>,
    /// The vendor's trusted `root.json` (TUF), shipped in the image.
    pub trusted_root: Option<PathBuf>,
    /// Versions kept in the mirror (default 2).
    pub keep: Option<usize>,
    /// Download cap, bytes per second (absent: no cap).
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// How often to sync (default `15m`).
    pub interval: Option<String>,
}

/// `[mirror]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// Address the local mirror is served on for the VMs (absent: not served).
    pub listen: Option<String>,
}

/// `[slots]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlots {
    /// Slot A device or file.
    pub a: Option<PathBuf>,
    /// Slot B device or file.
    pub b: Option<PathBuf>,
    /// ESP mount point.
    pub esp: Option<PathBuf>,
    /// Tries a staged slot gets (default 3).
    pub tries: Option<u32>,
    /// Entry `linux` path, `{slot}` replaced.
    pub linux: Option<String>,
    /// Entry `initrd` path.
    pub initrd: Option<String>,
    /// Entry `options`.
    pub options: Option<String>,
    /// Kernel command line file (default `/proc/cmdline`).
    pub cmdline: Option<PathBuf>,
}

/// `[install_window]`: when bundles are written into the inactive slot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstallWindow {
    /// `HH:MM`, box-local (default 01:00).
    pub start: Option<String>,
    /// `HH:MM`, box-local (default 05:00).
    pub end: Option<String>,
}

/// `[restart]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    /// Program and arguments run to restart (default `systemctl reboot`).
    pub command: Option<Vec<String>>,
    /// Cap on the spread offset inside a window (default: the whole window).
    pub spread_max: Option<String>,
}

/// `[health]`: what `boot-check` requires before committing a slot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// The collector's `state.json` must have been written within this (default `10m`;
    /// `"0s"` turns the check off).
    pub collector_within: Option<String>,
    /// systemd units that must be active (`systemctl is-active`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Commands that must exit 0 (program and arguments).
    #[serde(default)]
    pub commands: Vec<Vec<String>>,
    /// How long `boot-check` waits for the checks to pass (default `2m`).
    pub timeout: Option<String>,
}

/// `updater.toml` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Gateways, `host:port`, primary first.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// The Outpost CA certificate.
    pub ca_cert: Option<PathBuf>,
    /// The collector's state directory (its `key.pem`, `cert.pem`, `enrollment.json`).
    pub collector_state_dir: Option<PathBuf>,
    /// Client certificate (default: `cert.pem` in the collector's state dir).
    pub client_cert: Option<PathBuf>,
    /// Client key (default: `key.pem` in the collector's state dir).
    pub client_key: Option<PathBuf>,
    /// The updater's own state directory.
    pub state_dir: Option<PathBuf>,
    /// The box's IANA time zone (default: the system's).
    pub box_tz: Option<String>,
    /// Version running in the slots at first start (default `unknown`).
    pub initial_version: Option<String>,
    /// `[feed]`.
    #[serde(default)]
    pub feed: RawFeed,
    /// `[mirror]`.
    #[serde(default)]
    pub mirror: RawMirror,
    /// `[slots]`.
    #[serde(default)]
    pub slots: RawSlots,
    /// `[install_window]`.
    #[serde(default)]
    pub install_window: RawInstallWindow,
    /// `[restart]`.
    #[serde(default)]
    pub restart: RawRestart,
    /// `[health]`.
    #[serde(default)]
    pub health: RawHealth,
}

/// Health check settings, resolved.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Collector freshness; `None` = not checked.
    pub collector_within: Option<Duration>,
    /// Units that must be active.
    pub services: Vec<String>,
    /// Commands that must exit 0.
    pub commands: Vec<Vec<String>>,
    /// How long to wait for the checks to pass.
    pub timeout: Duration,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Gateways, `host:port`.
    pub gateways: Vec<String>,
    /// CA certificate.
    pub ca_cert: PathBuf,
    /// Collector state dir.
    pub collector_state_dir: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    /// Updater state dir.
    pub state_dir: PathBuf,
    /// Box time zone name.
    pub box_tz: String,
    /// Version assumed in the booted slot before any install.
    pub initial_version: String,
    /// Channel.
    pub channel: String,
    /// Trusted root.json.
    pub trusted_root: PathBuf,
    /// Versions kept.
    pub keep: usize,
    /// Bandwidth cap.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Sync interval.
    pub sync_interval: Duration,
    /// Local mirror address.
    pub mirror_listen: Option<SocketAddr>,
    /// The slots.
    pub slots: SlotTable,
    /// Kernel command line file.
    pub cmdline: PathBuf,
    /// Install window (box-local).
    pub install_window: Window,
    /// Restart command.
    pub restart_command: Vec<String>,
    /// Spread cap.
    pub spread_max: Option<SignedDuration>,
    /// Health checks.
    pub health: HealthConfig,
}

impl Config {
    /// Reads and resolves `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut text = String::new();
        f.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let raw = RawConfig::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.resolve(path, base)
    }
}

fn parse_duration(path: &Path, key: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|e| ConfigError::Value {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: v.to_string(),
        reason: format!("not a duration ({e}); write e.g. \"30s\", \"15m\""),
    })
}

impl RawConfig {
    /// Deserializes the text (no I/O).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Validates and fills defaults; relative paths are taken from `base`.
    ///
    /// # Errors
    /// [`ConfigError::Value`] naming the key.
    #[allow(clippy::too_many_lines)] // reason: one flat list of keys reads best
    pub fn resolve(self, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let bad = |key: &str, value: &str, reason: &str| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        for g in &self.gateways {
            if g.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(bad("gateways", g, "expected host:port"));
            }
        }
        let collector_state_dir = abs(self
            .collector_state_dir
            .unwrap_or_else(|| DEFAULT_COLLECTOR_STATE_DIR.into()));
        let box_tz = match self.box_tz {
            Some(tz) => {
                windows::time_zone(&tz).map_err(|e| bad("box_tz", &tz, &e.to_string()))?;
                tz
            }
            None => jiff::tz::TimeZone::system()
                .iana_name()
                .unwrap_or("UTC")
                .to_string(),
        };
        let iw_start = self
            .install_window
            .start
            .unwrap_or_else(|| DEFAULT_INSTALL_START.into());
        let iw_end = self
            .install_window
            .end
            .unwrap_or_else(|| DEFAULT_INSTALL_END.into());
        let install_window = Window::daily(&box_tz, &iw_start, &iw_end).map_err(|e| {
            bad(
                "install_window",
                &format!("{iw_start}-{iw_end}"),
                &e.to_string(),
            )
        })?;
        let restart_command = self
            .restart
            .command
            .unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]);
        if restart_command.is_empty() {
            return Err(bad("restart.command", "[]", "needs at least the program"));
        }
        let spread_max = match &self.restart.spread_max {
            None => None,
            Some(v) => Some(
                SignedDuration::try_from(parse_duration(path, "restart.spread_max", v)?)
                    .map_err(|e| bad("restart.spread_max", v, &e.to_string()))?,
            ),
        };
        let keep = self.feed.keep.unwrap_or(2);
        if keep == 0 {
            return Err(bad("feed.keep", "0", "keep at least 1 version"));
        }
        let mirror_listen = match &self.mirror.listen {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| {
                bad(
                    "mirror.listen",
                    v,
                    "expected an address ip:port, e.g. 127.0.0.1:8080",
                )
            })?),
        };
        let tries = self.slots.tries.unwrap_or(DEFAULT_TRIES);
        if !(1..=9).contains(&tries) {
            return Err(bad("slots.tries", &tries.to_string(), "expected 1 to 9"));
        }
        let d = EntryTemplate::default();
        let options = self.slots.options.unwrap_or(d.options);
        if !options.contains("{slot}") {
            return Err(bad(
                "slots.options",
                &options,
                "must name the root by slot, e.g. root=PARTLABEL=root-{slot}",
            ));
        }
        let collector_within = Some(parse_duration(
            path,
            "health.collector_within",
            self.health.collector_within.as_deref().unwrap_or("10m"),
        )?)
        .filter(|d| !d.is_zero());
        let timeout = parse_duration(
            path,
            "health.timeout",
            self.health.timeout.as_deref().unwrap_or("2m"),
        )?;
        for c in &self.health.commands {
            if c.is_empty() {
                return Err(bad("health.commands", "[]", "a command needs its program"));
            }
        }
        let sync_interval = parse_duration(
            path,
            "feed.interval",
            self.feed.interval.as_deref().unwrap_or("15m"),
        )?;
        Ok(Config {
            path: path.to_path_buf(),
            gateways: self.gateways,
            ca_cert: abs(self.ca_cert.unwrap_or_else(|| DEFAULT_CA_CERT.into())),
            client_cert: abs(self
                .client_cert
                .unwrap_or_else(|| collector_state_dir.join("cert.pem"))),
            client_key: abs(self
                .client_key
                .unwrap_or_else(|| collector_state_dir.join("key.pem"))),
            collector_state_dir,
            state_dir: abs(self.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into())),
            box_tz,
            initial_version: self.initial_version.unwrap_or_else(|| "unknown".into()),
            channel: self.feed.channel.unwrap_or_else(|| "stable".into()),
            trusted_root: abs(self
                .feed
                .trusted_root
                .unwrap_or_else(|| "/etc/outpost/root.json".into())),
            keep,
            bandwidth_bytes_per_sec: self.feed.bandwidth_bytes_per_sec.filter(|b| *b > 0),
            sync_interval,
            mirror_listen,
            slots: SlotTable {
                a: abs(self.slots.a.unwrap_or_else(|| DEFAULT_SLOT_A.into())),
                b: abs(self.slots.b.unwrap_or_else(|| DEFAULT_SLOT_B.into())),
                esp: abs(self.slots.esp.unwrap_or_else(|| DEFAULT_ESP.into())),
                template: EntryTemplate {
                    linux: self.slots.linux.unwrap_or(d.linux),
                    initrd: self.slots.initrd.unwrap_or(d.initrd),
                    options,
                },
                tries,
            },
            cmdline: abs(self.slots.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.into())),
            install_window,
            restart_command,
            spread_max,
            health: HealthConfig {
                collector_within,
                services: self.health.services,
                commands: self.health.commands,
                timeout,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Config, ConfigError> {
        let p = Path::new("/etc/outpost/updater.toml");
        RawConfig::parse(p, text)?.resolve(p, Path::new("/etc/outpost"))
    }

    #[test]
    fn defaults_follow_the_collector() {
        let c = resolve("gateways = [\"gw:5723\"]\nbox_tz = \"Europe/Berlin\"\n").unwrap();
        assert_eq!(
            c.client_key,
            Path::new("/var/lib/outpost-collector/key.pem")
        );
        assert_eq!(c.slots.esp, Path::new(DEFAULT_ESP));
        assert_eq!(c.restart_command, ["systemctl", "reboot"]);
        assert_eq!(c.channel, "stable");
        assert_eq!(c.health.collector_within, Some(Duration::from_secs(600)));
    }

    #[test]
    fn relative_paths_are_from_the_file() {
        let c = resolve("box_tz = \"UTC\"\n[slots]\na = \"slot-a.img\"\n").unwrap();
        assert_eq!(c.slots.a, Path::new("/etc/outpost/slot-a.img"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = resolve("box_tz = \"UTC\"\n[feed]\nchanel = \"x\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("updater.toml") && s.contains("chanel"), "{s}");
        let e = resolve("box_tz = \"Nowhere/Land\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("box_tz") && e.contains("Nowhere/Land"), "{e}");
        let e = resolve("box_tz = \"UTC\"\n[install_window]\nstart = \"25:00\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("install_window") && e.contains("25:00"), "{e}");
        let e = resolve("box_tz = \"UTC\"\ngateways = [\"nohost\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateways") && e.contains("host:port"), "{e}");
        let e = resolve("box_tz = \"UTC\"\n[restart]\nspread_max = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("restart.spread_max"), "{e}");
    }
}
