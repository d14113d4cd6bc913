//! A/B root slots: which one is booted, and installing an image into the other one.
//!
//! A slot is a block device found by partition label (`/dev/disk/by-partlabel/root-a`) or, in
//! tests, a plain file. [`install`] streams an image into the **inactive** slot, fsyncs it,
//! reads back what it wrote and compares its SHA-256 with the one the bundle's manifest names;
//! only then is the slot's boot entry written with a try counter ([`bootcount::mark_try`]).
//! Before the first byte is written, the target slot's own entry (blessed by an earlier
//! commit, or staged) is marked bad (no tries left), so a failed write, a short write, a full
//! disk or a mismatch returns an error with the target unbootable and the booted slot's entry
//! as it was: nothing half-installed is ever marked bootable.
//!
//! The booted slot is read from the simulated boot's record on a file-backed ESP
//! ([`bootcount::SIMULATED_SELECTED`]) or else from the kernel command line
//! (`root=PARTLABEL=root-a|root-b`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::bootcount::{self, BootError, EntryTemplate};
use crate::bundle::HashingWriter;

/// Buffer size for slot writes and read-back.
const IO_BUF: usize = 1 << 20;

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Slot A (`root-a`).
    A,
    /// Slot B (`root-b`).
    B,
}

impl Slot {
    /// `a` or `b`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// Parses `a` / `b` (either case).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// The other slot.
    #[must_use]
    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the two slots and the ESP are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    /// Device or file of slot A.
    pub a: PathBuf,
    /// Device or file of slot B.
    pub b: PathBuf,
    /// The EFI system partition's mount point (a directory in tests).
    pub esp: PathBuf,
    /// What goes into the boot entries.
    pub template: EntryTemplate,
    /// Tries a staged slot gets.
    pub tries: u32,
}

impl SlotTable {
    /// Path of a slot.
    #[must_use]
    pub fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// An install that failed; the booted slot's entry is as it was, the target's is marked bad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// The booted slot is not committed yet: installing now could remove the fallback.
    #[error("slot {booted} is booted but not committed yet (run boot-check first); not installing into slot {target}")]
    BootedNotCommitted {
        /// Booted slot.
        booted: Slot,
        /// Slot that would have been written.
        target: Slot,
    },
    /// Opening the slot failed.
    #[error("failed to open slot {slot} at {}: {source}", path.display())]
    Open {
        /// The slot.
        slot: Slot,
        /// Its device or file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Writing the image failed (a full disk shows here as "No space left on device").
    #[error("failed to write the image into slot {slot} at {}: {reason}", path.display())]
    Write {
        /// The slot.
        slot: Slot,
        /// Its device or file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Reading back failed.
    #[error("failed to read back slot {slot} at {}: {source}", path.display())]
    ReadBack {
        /// The slot.
        slot: Slot,
        /// Its device or file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// What was read back differs from what should be there.
    #[error("slot {slot} at {} does not hold the image after writing: sha256 {actual} ({actual_len} bytes), expected {expected} ({expected_len} bytes)", path.display())]
    Mismatch {
        /// The slot.
        slot: Slot,
        /// Its device or file.
        path: PathBuf,
        /// Expected hex digest.
        expected: String,
        /// Expected length.
        expected_len: u64,
        /// Digest read back.
        actual: String,
        /// Bytes read back.
        actual_len: u64,
    },
    /// Writing the boot entry failed.
    #[error(transparent)]
    Boot(#[from] BootError),
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Slot written.
    pub slot: Slot,
    /// Bytes of the image.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The entry file now on the ESP.
    pub entry: String,
}

/// The booted slot: the simulated boot's record on the ESP if present, else the kernel
/// command line at `cmdline` (normally `/proc/cmdline`).
#[must_use]
pub fn booted_slot(esp: &Path, cmdline: &Path) -> Option<Slot> {
    if let Some(s) = bootcount::simulated_selected(esp) {
        return Some(s);
    }
    let text = std::fs::read_to_string(cmdline).ok()?;
    slot_from_cmdline(&text)
}

/// Finds `root=PARTLABEL=root-a|root-b` in a kernel command line.
#[must_use]
pub fn slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("root=PARTLABEL=root-"))
        .and_then(Slot::parse)
}

/// Installs an image into the slot that is not `booted` and marks it to boot next.
///
/// `stream` writes the image into the writer it is given and returns (bytes, sha256 hex) as
/// the source vouches for them (for a bundle: checked against its manifest); its error text
/// is reported as a write failure. `version` goes into the entry's title.
///
/// # Errors
/// A [`SlotError`] naming the slot and path; the booted slot's entry is untouched and the
/// target's entry, if it had one, is left marked bad.
pub fn install(
    table: &SlotTable,
    booted: Slot,
    version: &str,
    stream: impl FnOnce(&mut dyn Write) -> Result<(u64, String), String>,
) -> Result<Installed, SlotError> {
    let target = booted.other();
    let esp = &table.esp;
    if let Some(e) = bootcount::find_entry(esp, booted)? {
        if e.name.counter.is_some_and(|c| c.left > 0) {
            return Err(SlotError::BootedNotCommitted { booted, target });
        }
    }
    // Whatever entry the target has (blessed by an earlier commit, or staged and not booted
    // yet) points at the slot about to be overwritten: it goes to "no tries left" before the
    // first byte is written, so a failed or partial write never leaves it bootable. Only the
    // verified image gets a fresh counter below.
    if let Some(e) = bootcount::find_entry(esp, target)? {
        if !e.name.is_bad() {
            bootcount::mark_bad(esp, target)?;
        }
    }
    let path = table.path(target).to_path_buf();
    let (bytes, sha256) = write_slot(target, &path, stream)?;
    verify_slot(target, &path, bytes, &sha256)?;
    let name = bootcount::mark_try(esp, target, table.tries, &table.template, version)?;
    Ok(Installed {
        slot: target,
        bytes,
        sha256,
        entry: name.file_name(),
    })
}

fn write_slot(
    slot: Slot,
    path: &Path,
    stream: impl FnOnce(&mut dyn Write) -> Result<(u64, String), String>,
) -> Result<(u64, String), SlotError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| SlotError::Open {
            slot,
            path: path.to_path_buf(),
            source,
        })?;
    let werr = |reason: String| SlotError::Write {
        slot,
        path: path.to_path_buf(),
        reason,
    };
    // Not hashed here: the source vouches for (bytes, sha256) and the read-back below
    // checks exactly that against what the slot holds after fsync.
    let mut w = BufWriter::with_capacity(IO_BUF, &file);
    let (bytes, sha256) = stream(&mut w).map_err(werr)?;
    w.flush().map_err(|e| werr(e.to_string()))?;
    drop(w);
    // A file slot is cut to the image; a block device keeps its size.
    let meta = file.metadata().map_err(|e| werr(e.to_string()))?;
    if meta.is_file() {
        file.set_len(bytes).map_err(|e| werr(e.to_string()))?;
    }
    file.sync_all().map_err(|e| werr(format!("fsync: {e}")))?;
    Ok((bytes, sha256))
}

/// Reads back the first `bytes` bytes of the slot and compares their SHA-256.
///
/// # Errors
/// [`SlotError::ReadBack`] or [`SlotError::Mismatch`].
pub fn verify_slot(slot: Slot, path: &Path, bytes: u64, sha256: &str) -> Result<(), SlotError> {
    let rerr = |source| SlotError::ReadBack {
        slot,
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(rerr)?;
    let mut r = io::BufReader::with_capacity(IO_BUF, f.take(bytes));
    let mut h = HashingWriter::new(io::sink());
    io::copy(&mut r, &mut h).map_err(rerr)?;
    let (n_total, actual) = h.finish();
    if n_total != bytes || actual != sha256 {
        return Err(SlotError::Mismatch {
            slot,
            path: path.to_path_buf(),
            expected: sha256.to_string(),
            expected_len: bytes,
            actual,
            actual_len: n_total,
        });
    }
    Ok(())
}

/// Streams a whole reader, hashing as it goes; for sources that are plain images.
///
/// # Errors
/// The I/O error's text.
pub fn stream_reader(mut r: impl Read, w: &mut dyn Write) -> Result<(u64, String), String> {
    let mut h = HashingWriter::new(w);
    io::copy(&mut r, &mut h).map_err(|e| e.to_string())?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_names_the_slot() {
        assert_eq!(
            slot_from_cmdline("BOOT_IMAGE=/vmlinuz root=PARTLABEL=root-b ro quiet"),
            Some(Slot::B)
        );
        assert_eq!(slot_from_cmdline("root=/dev/sda2 ro"), None);
    }
}
