//! systemd-boot configuration: `loader.conf` and one Boot Loader Specification entry per A/B
//! slot, named `outpost-<slot>+<tries>.conf` so systemd-boot counts boot attempts. Pure text
//! generation and the parser for entry file names.

use crate::config::BootConfig;

/// Kernel options every entry starts with; the slot's root is chosen by partition label.
#[must_use]
pub fn base_options(slot: &str) -> String {
    format!("root=PARTLABEL=root-{slot} rw console=ttyS0,115200")
}

/// ESP path of a slot's kernel.
#[must_use]
pub fn kernel_path(slot: &str) -> String {
    format!("/outpost/{slot}/vmlinuz")
}

/// ESP path of a slot's initrd.
#[must_use]
pub fn initrd_path(slot: &str) -> String {
    format!("/outpost/{slot}/initrd.img")
}

/// File name of a slot's entry at the factory: `outpost-a+3.conf`, or `outpost-a.conf` when
/// boot counting is off (`tries = 0`).
#[must_use]
pub fn entry_file_name(slot: &str, tries: u32) -> String {
    if tries == 0 {
        format!("outpost-{slot}.conf")
    } else {
        format!("outpost-{slot}+{tries}.conf")
    }
}

/// Sort key every Outpost entry carries, so systemd-boot orders them by `version`.
pub const SORT_KEY: &str = "outpost";

/// The text of `loader/loader.conf`. No `default` line: systemd-boot (252) then boots the first
/// entry in its order, which puts entries with no tries left last, then (same sort key) the
/// highest `version` first. See [`entry_text`].
#[must_use]
pub fn loader_conf(boot: &BootConfig) -> String {
    format!(
        "timeout {}\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n",
        boot.timeout
    )
}

/// The text of a slot's entry. `generation` is the entry's `version`: systemd-boot boots the
/// highest generation that still has tries left, so the factory gives the first slot the
/// highest one and the updater writes (current highest + 1) for the slot it installs.
#[must_use]
pub fn entry_text(slot: &str, generation: u32, kernel_version: &str, boot: &BootConfig) -> String {
    let mut options = base_options(slot);
    let extra = boot.options.trim();
    if !extra.is_empty() {
        options.push(' ');
        options.push_str(extra);
    }
    format!(
        "title Outpost (slot {slot}, kernel {kernel_version})\nsort-key {SORT_KEY}\nversion {generation}\nlinux {}\ninitrd {}\noptions {options}\n",
        kernel_path(slot),
        initrd_path(slot)
    )
}

/// A parsed entry file name `outpost-<slot>[+left[-done]].conf`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryName {
    /// Slot name (`a`, `b`).
    pub slot: String,
    /// Tries left; `None` when the entry is not counted (blessed or counting off).
    pub tries_left: Option<u32>,
    /// Tries done; `None` when absent.
    pub tries_done: Option<u32>,
}

impl EntryName {
    /// Parses a file name; `None` if it is not an Outpost entry.
    #[must_use]
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_suffix(".conf")?.strip_prefix("outpost-")?;
        let (slot, counter) = match stem.split_once('+') {
            Some((s, c)) => (s, Some(c)),
            None => (stem, None),
        };
        if slot.is_empty()
            || !slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return None;
        }
        let (left, done) = match counter {
            None => (None, None),
            Some(c) => match c.split_once('-') {
                Some((l, d)) => (Some(l.parse().ok()?), Some(d.parse().ok()?)),
                None => (Some(c.parse().ok()?), None),
            },
        };
        Some(EntryName {
            slot: slot.into(),
            tries_left: left,
            tries_done: done,
        })
    }

    /// Human-readable boot-counting state.
    #[must_use]
    pub fn state(&self) -> &'static str {
        match self.tries_left {
            None => "good",
            Some(0) => "bad",
            Some(_) => "indeterminate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_round_trip_and_parse_counters() {
        assert_eq!(entry_file_name("a", 3), "outpost-a+3.conf");
        assert_eq!(entry_file_name("b", 0), "outpost-b.conf");
        let e = EntryName::parse("outpost-a+3.conf").unwrap();
        assert_eq!(
            (e.slot.as_str(), e.tries_left, e.tries_done, e.state()),
            ("a", Some(3), None, "indeterminate")
        );
        let e = EntryName::parse("outpost-b+0-3.conf").unwrap();
        assert_eq!(
            (e.tries_left, e.tries_done, e.state()),
            (Some(0), Some(3), "bad")
        );
        assert_eq!(EntryName::parse("outpost-a.conf").unwrap().state(), "good");
        assert!(EntryName::parse("debian.conf").is_none());
        assert!(EntryName::parse("outpost-a+x.conf").is_none());
        assert!(EntryName::parse("outpost-A.conf").is_none());
    }

    #[test]
    fn entry_selects_root_by_partition_label_and_appends_options() {
        let boot = BootConfig {
            options: "quiet".into(),
            ..BootConfig::default()
        };
        let t = entry_text("b", 1, "6.1.0-28-amd64", &boot);
        assert!(t.contains("sort-key outpost\nversion 1\n"), "{t}");
        assert!(
            t.contains("options root=PARTLABEL=root-b rw console=ttyS0,115200 quiet\n"),
            "{t}"
        );
        assert!(t.contains("linux /outpost/b/vmlinuz\n"));
        assert!(t.contains("initrd /outpost/b/initrd.img\n"));
        assert!(!loader_conf(&boot).contains("default"));
    }
}
