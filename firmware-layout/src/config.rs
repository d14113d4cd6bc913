//! The layout file (`layout.toml`): serde types that deserialize with unknown keys denied, and the
//! size notation (`"256MiB"`, `"4GiB"`, plain byte counts). No I/O beyond reading the one file;
//! the arithmetic and validation live in [`crate::plan`].

use crate::error::LayoutError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest layout file accepted (the format is a handful of lines).
pub const MAX_LAYOUT_BYTES: u64 = 1024 * 1024;

/// A firmware layout: the disk, its partitions and the boot entries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Image name: the output is `<name>.raw`, `<name>.qcow2`, ...
    pub name: String,
    /// Seed every GUID, UUID and volume id is derived from; defaults to `name`.
    #[serde(default)]
    pub seed: Option<String>,
    /// Whole disk size, e.g. `"4GiB"`.
    pub disk_size: Size,
    /// Logical sector size in bytes; only 512 is supported.
    #[serde(default = "default_sector_size")]
    pub sector_size: u64,
    /// Partition start alignment, e.g. `"1MiB"` (the default).
    #[serde(default = "default_alignment")]
    pub alignment: Size,
    /// Boot loader settings.
    #[serde(default)]
    pub boot: BootConfig,
    /// Partitions in table order.
    #[serde(rename = "partition", default)]
    pub partitions: Vec<PartitionConfig>,
}

/// The `[boot]` table: systemd-boot settings and the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Extra kernel options appended after `root=PARTLABEL=root-<slot> rw console=ttyS0,115200`.
    #[serde(default)]
    pub options: String,
    /// Boot-counting tries each entry starts with (`outpost-a+3.conf`); 0 disables counting.
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// systemd-boot menu timeout in seconds (0: boot the default at once).
    #[serde(default)]
    pub timeout: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            options: String::new(),
            tries: default_tries(),
            timeout: 0,
        }
    }
}

/// One `[[partition]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// GPT partition name, also the file-system label (`esp`, `root-a`, `root-b`, `data`).
    pub label: String,
    /// Type GUID or alias: `esp`, `linux-root-x86-64`, `linux-generic`, `linux-var`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Size, or `"rest"` for the last partition to fill the disk.
    pub size: PartSize,
    /// Optional explicit start offset; by default the previous end rounded up to the alignment.
    #[serde(default)]
    pub start: Option<Size>,
    /// File system made in the partition.
    #[serde(default)]
    pub fs: FsKind,
    /// What goes in the file system.
    #[serde(default)]
    pub contents: Contents,
}

/// File system of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext4 made with `mkfs.ext4 -d`.
    Ext4,
    /// FAT made with `mkfs.vfat` and filled with mtools.
    Vfat,
    /// Read-only EROFS made with `mkfs.erofs`.
    Erofs,
    /// No file system: the partition stays zero.
    #[default]
    None,
}

impl FsKind {
    /// The lower-case name used in the layout file.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Vfat => "vfat",
            FsKind::Erofs => "erofs",
            FsKind::None => "none",
        }
    }
}

/// What a partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Contents {
    /// The EFI system partition: systemd-boot, loader.conf, entries, kernels and initrds.
    Esp,
    /// The root file system from `--rootfs`.
    Rootfs,
    /// An empty file system (or zeros with `fs = "none"`).
    #[default]
    Empty,
}

/// A byte count written as an integer or a string with a binary unit (`KiB`, `MiB`, `GiB`, `TiB`;
/// `K`/`M`/`G`/`T` mean the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct Size(pub u64);

impl From<Size> for u64 {
    fn from(s: Size) -> u64 {
        s.0
    }
}

/// A partition size: bytes, or the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PartSize {
    /// Exactly this many bytes.
    Bytes(u64),
    /// Up to the last aligned boundary before the backup GPT.
    Rest,
}

fn default_sector_size() -> u64 {
    512
}
fn default_alignment() -> Size {
    Size(1024 * 1024)
}
fn default_tries() -> u32 {
    3
}

/// Parses `"256MiB"`, `"4G"`, `"1048576"`; `None` when it is not a size.
#[must_use]
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Formats bytes with the largest binary unit that divides them exactly.
#[must_use]
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawSize::deserialize(d)? {
            RawSize::Int(n) => Ok(Size(n)),
            RawSize::Text(t) => parse_size(&t).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {t:?}: expected bytes or a number with KiB, MiB, GiB or TiB"
                ))
            }),
        }
    }
}

impl<'de> Deserialize<'de> for PartSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawSize::deserialize(d)? {
            RawSize::Int(n) => Ok(PartSize::Bytes(n)),
            RawSize::Text(t) if t.trim() == "rest" => Ok(PartSize::Rest),
            RawSize::Text(t) => parse_size(&t).map(PartSize::Bytes).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {t:?}: expected \"rest\", bytes, or a number with KiB, MiB, GiB or TiB"
                ))
            }),
        }
    }
}

impl Layout {
    /// Parses layout TOML; `origin` names the file in errors.
    ///
    /// # Errors
    /// [`LayoutError::Parse`] with the file and toml's message (which names the key).
    pub fn parse(text: &str, origin: &Path) -> Result<Layout, LayoutError> {
        toml::from_str(text).map_err(|e| LayoutError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a layout file (at most [`MAX_LAYOUT_BYTES`]).
    ///
    /// # Errors
    /// [`LayoutError::Read`], [`LayoutError::TooLarge`] or [`LayoutError::Parse`].
    pub fn load(path: &Path) -> Result<Layout, LayoutError> {
        let read = |source| LayoutError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_LAYOUT_BYTES {
            return Err(LayoutError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_LAYOUT_BYTES,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Layout::parse(&text, path)
    }

    /// The seed GUIDs are derived from.
    #[must_use]
    pub fn seed(&self) -> &str {
        self.seed.as_deref().unwrap_or(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_binary_units() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1.5GiB"), None);
        assert_eq!(parse_size("10MB"), None);
        assert_eq!(parse_size("99999999999999TiB"), None);
        assert_eq!(format_size(256 << 20), "256MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn rejects_unknown_keys_naming_file_and_key() {
        let text = "name = \"x\"\ndisk_size = \"1GiB\"\n[[partition]]\nlabel = \"esp\"\ntype = \"esp\"\nsize = \"64MiB\"\ncolour = \"red\"\n";
        let err = Layout::parse(text, Path::new("layout.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("layout.toml"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn rejects_bad_size_naming_value() {
        let text = "name = \"x\"\ndisk_size = \"lots\"\n";
        let err = Layout::parse(text, Path::new("l.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lots") && err.contains("disk_size"), "{err}");
    }
}
