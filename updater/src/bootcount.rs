//! systemd-boot boot counting on the ESP: entry names, the real entry operations, and a pure
//! model of what systemd-boot does at each boot.
//!
//! # Entries
//! One Boot Loader Specification entry per slot in `ESP/loader/entries/`:
//!
//! | file | meaning |
//! |---|---|
//! | `outpost-a.conf` | slot A, blessed (good) |
//! | `outpost-b+3.conf` | slot B, staged, 3 tries left |
//! | `outpost-b+2-1.conf` | 2 tries left, 1 done (renamed by systemd-boot at a boot) |
//! | `outpost-b+0-3.conf` | no tries left: "bad", sorted last |
//!
//! Each file holds `title`, `version`, `sort-key`, `linux`, `initrd` and `options`
//! (`root=PARTLABEL=root-a|root-b`). `version` is a generation number: the slot marked last gets
//! the highest one, so among good entries it sorts first and is the default.
//!
//! # What systemd-boot does ([`simulate_boot`] models it)
//! Entries with no tries left sort after all others; then higher `version` first; then id.
//! The first entry boots; if it carries a counter with tries left, it is renamed first
//! (`+3` → `+2-1`, `+2-1` → `+1-2`, …). After a good boot, `systemd-bless-boot.service` (after
//! `boot-complete.target`) drops the counter; the updater's `boot-check` runs in a unit ordered
//! `Before=boot-complete.target` and does the same blessing itself ([`bless`]) or marks the
//! entry bad ([`mark_bad`]) so the next boot falls back.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::slots::Slot;

/// Tries a freshly staged entry gets.
pub const DEFAULT_TRIES: u32 = 3;
/// Entry id prefix.
pub const ENTRY_PREFIX: &str = "outpost-";
/// Where entries live below the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// File the simulated boot writes with the chosen entry's id (stands in for the
/// `LoaderEntrySelected` EFI variable on a file-backed ESP).
pub const SIMULATED_SELECTED: &str = "loader/simulated-entry-selected";
/// Largest entry file read (input cap).
pub const MAX_ENTRY_BYTES: u64 = 64 * 1024;

/// A boot-entry operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// Listing or reading the entries directory failed.
    #[error("failed to read boot entries in {}: {source}", path.display())]
    ReadEntries {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Writing or renaming an entry failed.
    #[error("failed to write boot entry {}: {source}", path.display())]
    WriteEntry {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No entry for this slot exists.
    #[error("no boot entry for slot {slot} in {}", dir.display())]
    NoEntry {
        /// The slot.
        slot: Slot,
        /// The entries directory.
        dir: PathBuf,
    },
    /// The ESP holds no Outpost entry at all.
    #[error("no outpost-*.conf boot entry in {}", dir.display())]
    NoEntries {
        /// The entries directory.
        dir: PathBuf,
    },
}

/// A boot counter: tries left and tries done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries done.
    pub done: u32,
}

/// The parts of an entry file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// The slot.
    pub slot: Slot,
    /// The counter; `None` when blessed.
    pub counter: Option<Counter>,
}

impl EntryName {
    /// Parses `outpost-b+2-1.conf`; `None` for files that are not Outpost entries.
    #[must_use]
    pub fn parse(file: &str) -> Option<Self> {
        let stem = file.strip_suffix(".conf")?.strip_prefix(ENTRY_PREFIX)?;
        let (slot, counter) = match stem.split_once('+') {
            None => (stem, None),
            Some((s, c)) => {
                let (left, done) = match c.split_once('-') {
                    None => (c.parse().ok()?, 0),
                    Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                };
                (s, Some(Counter { left, done }))
            }
        };
        Some(Self {
            slot: Slot::parse(slot)?,
            counter,
        })
    }

    /// The file name, as systemd-boot writes it.
    #[must_use]
    pub fn file_name(&self) -> String {
        let slot = self.slot.as_str();
        match self.counter {
            None => format!("{ENTRY_PREFIX}{slot}.conf"),
            Some(Counter { left, done: 0 }) => format!("{ENTRY_PREFIX}{slot}+{left}.conf"),
            Some(Counter { left, done }) => format!("{ENTRY_PREFIX}{slot}+{left}-{done}.conf"),
        }
    }

    /// The entry id without the counter (`outpost-b.conf`), as systemd-boot reports it.
    #[must_use]
    pub fn id(&self) -> String {
        format!("{ENTRY_PREFIX}{}.conf", self.slot.as_str())
    }

    /// True when no tries are left.
    #[must_use]
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }
}

/// An entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Parsed file name.
    pub name: EntryName,
    /// Generation (`version` line), 0 when missing.
    pub generation: u64,
    /// `title` line.
    pub title: String,
}

/// What goes into an entry file; `{slot}` in the paths is replaced by `a` or `b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryTemplate {
    /// `linux` path on the ESP.
    pub linux: String,
    /// `initrd` path on the ESP.
    pub initrd: String,
    /// Kernel command line; must name the root, e.g. `root=PARTLABEL=root-{slot} ro`.
    pub options: String,
}

impl Default for EntryTemplate {
    fn default() -> Self {
        Self {
            linux: "/outpost/{slot}/vmlinuz".into(),
            initrd: "/outpost/{slot}/initrd.img".into(),
            options: "root=PARTLABEL=root-{slot} rw".into(),
        }
    }
}

/// Text of an entry file.
#[must_use]
pub fn render_entry(t: &EntryTemplate, slot: Slot, generation: u64, version: &str) -> String {
    let s = slot.as_str();
    format!(
        "title Outpost {version} (slot {s})\nversion {generation}\nsort-key outpost\nlinux {}\ninitrd {}\noptions {}\n",
        t.linux.replace("{slot}", s),
        t.initrd.replace("{slot}", s),
        t.options.replace("{slot}", s),
    )
}

/// The entries directory of an ESP.
#[must_use]
pub fn entries_dir(esp: &Path) -> PathBuf {
    esp.join(ENTRIES_DIR)
}

/// Lists the Outpost entries on the ESP (unsorted).
///
/// # Errors
/// [`BootError::ReadEntries`] when the directory or a file cannot be read.
pub fn list_entries(esp: &Path) -> Result<Vec<Entry>, BootError> {
    let dir = entries_dir(esp);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(BootError::ReadEntries { path: dir, source }),
    };
    let mut out = Vec::new();
    for de in rd {
        let de = de.map_err(|source| BootError::ReadEntries {
            path: dir.clone(),
            source,
        })?;
        let file = de.file_name().to_string_lossy().into_owned();
        let Some(name) = EntryName::parse(&file) else {
            continue;
        };
        let path = de.path();
        let text = read_capped(&path)?;
        let mut generation = 0;
        let mut title = String::new();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("version ") {
                generation = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("title ") {
                title = v.trim().to_string();
            }
        }
        out.push(Entry {
            name,
            generation,
            title,
        });
    }
    Ok(out)
}

fn read_capped(path: &Path) -> Result<String, BootError> {
    use std::io::Read;
    let f = fs::File::open(path).map_err(|source| BootError::ReadEntries {
        path: path.to_path_buf(),
        source,
    })?;
    let mut s = String::new();
    f.take(MAX_ENTRY_BYTES)
        .read_to_string(&mut s)
        .map_err(|source| BootError::ReadEntries {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(s)
}

/// systemd-boot's order: good entries before bad, higher generation first, then id.
pub fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by(|x, y| {
        x.name
            .is_bad()
            .cmp(&y.name.is_bad())
            .then(y.generation.cmp(&x.generation))
            .then(y.name.id().cmp(&x.name.id()))
    });
}

/// The entry systemd-boot boots first (pure): the first after [`sort_entries`].
#[must_use]
pub fn choose(entries: &[Entry]) -> Option<Entry> {
    let mut v = entries.to_vec();
    sort_entries(&mut v);
    v.into_iter().next()
}

/// The counter after one more boot attempt: one try moves from left to done.
#[must_use]
pub fn decrement(c: Counter) -> Counter {
    if c.left == 0 {
        c
    } else {
        Counter {
            left: c.left - 1,
            done: c.done + 1,
        }
    }
}

/// The entry for `slot`, if any.
///
/// # Errors
/// As [`list_entries`].
pub fn find_entry(esp: &Path, slot: Slot) -> Result<Option<Entry>, BootError> {
    Ok(list_entries(esp)?.into_iter().find(|e| e.name.slot == slot))
}

fn require_entry(esp: &Path, slot: Slot) -> Result<Entry, BootError> {
    find_entry(esp, slot)?.ok_or_else(|| BootError::NoEntry {
        slot,
        dir: entries_dir(esp),
    })
}

fn rename_entry(esp: &Path, from: &EntryName, to: &EntryName) -> Result<(), BootError> {
    let dir = entries_dir(esp);
    let (a, b) = (dir.join(from.file_name()), dir.join(to.file_name()));
    if a == b {
        return Ok(());
    }
    fs::rename(&a, &b).map_err(|source| BootError::WriteEntry {
        path: b.clone(),
        source,
    })?;
    sync_dir(&dir)
}

fn sync_dir(dir: &Path) -> Result<(), BootError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| BootError::WriteEntry {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes the entry for `slot` with a fresh counter of `tries` and the next generation, then
/// removes the slot's older entry files. Written to a temporary name, fsynced and renamed, so
/// a crash leaves either the old or the new entry.
///
/// # Errors
/// [`BootError`] naming the file.
pub fn mark_try(
    esp: &Path,
    slot: Slot,
    tries: u32,
    template: &EntryTemplate,
    version: &str,
) -> Result<EntryName, BootError> {
    let dir = entries_dir(esp);
    fs::create_dir_all(&dir).map_err(|source| BootError::WriteEntry {
        path: dir.clone(),
        source,
    })?;
    let existing = list_entries(esp)?;
    let generation = existing.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
    let name = EntryName {
        slot,
        counter: Some(Counter {
            left: tries,
            done: 0,
        }),
    };
    let final_path = dir.join(name.file_name());
    let tmp = dir.join(format!(".{}.tmp", name.file_name()));
    let text = render_entry(template, slot, generation, version);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &final_path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        BootError::WriteEntry {
            path: final_path.clone(),
            source,
        }
    })?;
    for e in existing.iter().filter(|e| e.name.slot == slot) {
        let old = dir.join(e.name.file_name());
        if old != final_path {
            fs::remove_file(&old).map_err(|source| BootError::WriteEntry { path: old, source })?;
        }
    }
    sync_dir(&dir)?;
    Ok(name)
}

/// Blesses the slot's entry: drops its counter (what `systemd-bless-boot good` does).
///
/// # Errors
/// [`BootError::NoEntry`] when the slot has no entry; I/O errors naming the file.
pub fn bless(esp: &Path, slot: Slot) -> Result<EntryName, BootError> {
    let e = require_entry(esp, slot)?;
    let to = EntryName {
        slot,
        counter: None,
    };
    rename_entry(esp, &e.name, &to)?;
    Ok(to)
}

/// Marks the slot's entry bad: no tries left (what `systemd-bless-boot bad` does), so the
/// next boot picks the other slot.
///
/// # Errors
/// As [`bless`].
pub fn mark_bad(esp: &Path, slot: Slot) -> Result<EntryName, BootError> {
    let e = require_entry(esp, slot)?;
    let done = e.name.counter.map_or(0, |c| c.left + c.done);
    let to = EntryName {
        slot,
        counter: Some(Counter { left: 0, done }),
    };
    rename_entry(esp, &e.name, &to)?;
    Ok(to)
}

/// **Test aid** for file-backed ESPs: does what systemd-boot does at a boot — picks the
/// entry ([`choose`]), decrements its counter by renaming the file, and records the chosen id in
/// [`SIMULATED_SELECTED`]. Returns the slot that "boots".
///
/// # Errors
/// [`BootError::NoEntries`] when there is nothing to boot; I/O errors naming the file.
pub fn simulate_boot(esp: &Path) -> Result<Slot, BootError> {
    let entries = list_entries(esp)?;
    let chosen = choose(&entries).ok_or_else(|| BootError::NoEntries {
        dir: entries_dir(esp),
    })?;
    if let Some(c) = chosen.name.counter {
        let to = EntryName {
            slot: chosen.name.slot,
            counter: Some(decrement(c)),
        };
        rename_entry(esp, &chosen.name, &to)?;
    }
    let sel = esp.join(SIMULATED_SELECTED);
    fs::write(&sel, chosen.name.id())
        .map_err(|source| BootError::WriteEntry { path: sel, source })?;
    Ok(chosen.name.slot)
}

/// The slot the simulated boot selected last, when [`SIMULATED_SELECTED`] exists.
#[must_use]
pub fn simulated_selected(esp: &Path) -> Option<Slot> {
    let text = fs::read_to_string(esp.join(SIMULATED_SELECTED)).ok()?;
    EntryName::parse(text.trim()).map(|n| n.slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(esp: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(entries_dir(esp))
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn names_round_trip() {
        for n in [
            "outpost-a.conf",
            "outpost-b+3.conf",
            "outpost-b+2-1.conf",
            "outpost-a+0-3.conf",
        ] {
            assert_eq!(EntryName::parse(n).unwrap().file_name(), n);
        }
        assert_eq!(EntryName::parse("other.conf"), None);
        assert_eq!(EntryName::parse("outpost-c.conf"), None);
        assert_eq!(EntryName::parse("outpost-b+x.conf"), None);
        assert!(EntryName::parse("outpost-b+0-3.conf").unwrap().is_bad());
    }

    #[test]
    fn staged_entry_boots_counts_down_and_falls_back() {
        let esp = tempfile::tempdir().unwrap();
        let t = EntryTemplate::default();
        mark_try(esp.path(), Slot::A, 3, &t, "1.0.0").unwrap();
        bless(esp.path(), Slot::A).unwrap();
        mark_try(esp.path(), Slot::B, 3, &t, "1.1.0").unwrap();
        assert_eq!(names(esp.path()), ["outpost-a.conf", "outpost-b+3.conf"]);
        let text = fs::read_to_string(entries_dir(esp.path()).join("outpost-b+3.conf")).unwrap();
        assert!(text.contains("options root=PARTLABEL=root-b rw"), "{text}");
        assert!(text.contains("version 2"), "{text}");

        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::B);
        assert_eq!(names(esp.path()), ["outpost-a.conf", "outpost-b+2-1.conf"]);
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::B);
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::B);
        assert_eq!(names(esp.path()), ["outpost-a.conf", "outpost-b+0-3.conf"]);
        // No tries left: bad, sorted last; A boots.
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::A);
        assert_eq!(simulated_selected(esp.path()), Some(Slot::A));
    }

    #[test]
    fn bless_and_mark_bad() {
        let esp = tempfile::tempdir().unwrap();
        let t = EntryTemplate::default();
        mark_try(esp.path(), Slot::A, 3, &t, "1").unwrap();
        bless(esp.path(), Slot::A).unwrap();
        mark_try(esp.path(), Slot::B, 3, &t, "2").unwrap();
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::B);
        bless(esp.path(), Slot::B).unwrap();
        assert_eq!(names(esp.path()), ["outpost-a.conf", "outpost-b.conf"]);
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::B);

        // Next update into A, then the health check fails: marked bad, B boots again.
        mark_try(esp.path(), Slot::A, 3, &t, "3").unwrap();
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::A);
        mark_bad(esp.path(), Slot::A).unwrap();
        assert_eq!(names(esp.path()), ["outpost-a+0-3.conf", "outpost-b.conf"]);
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::B);
    }

    #[test]
    fn remarking_a_slot_replaces_its_old_entry() {
        let esp = tempfile::tempdir().unwrap();
        let t = EntryTemplate::default();
        mark_try(esp.path(), Slot::B, 3, &t, "1").unwrap();
        mark_bad(esp.path(), Slot::B).unwrap();
        mark_try(esp.path(), Slot::B, 3, &t, "2").unwrap();
        assert_eq!(names(esp.path()), ["outpost-b+3.conf"]);
    }

    #[test]
    fn all_bad_still_boots_something() {
        let esp = tempfile::tempdir().unwrap();
        let t = EntryTemplate::default();
        mark_try(esp.path(), Slot::A, 0, &t, "1").unwrap();
        assert_eq!(simulate_boot(esp.path()).unwrap(), Slot::A);
        assert!(matches!(
            simulate_boot(tempfile::tempdir().unwrap().path()),
            Err(BootError::NoEntries { .. })
        ));
    }

    proptest::proptest! {
        /// A staged slot that is never blessed boots exactly `tries` times, then the old
        /// slot boots for good.
        #[test]
        fn an_unblessed_slot_gets_exactly_its_tries(tries in 1_u32..6, extra in 1_usize..5) {
            let esp = tempfile::tempdir().unwrap();
            let t = EntryTemplate::default();
            mark_try(esp.path(), Slot::A, 3, &t, "1").unwrap();
            bless(esp.path(), Slot::A).unwrap();
            mark_try(esp.path(), Slot::B, tries, &t, "2").unwrap();
            let boots: Vec<Slot> = (0..tries as usize + extra)
                .map(|_| simulate_boot(esp.path()).unwrap())
                .collect();
            let b = boots.iter().filter(|s| **s == Slot::B).count();
            proptest::prop_assert_eq!(b, tries as usize);
            proptest::prop_assert!(boots[..tries as usize].iter().all(|s| *s == Slot::B));
        }
    }
}
