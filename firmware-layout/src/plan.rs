//! Layout arithmetic: turns a [`Layout`] into a [`DiskPlan`] of sector ranges. Pure: no I/O, so
//! it is property-tested (aligned, non-overlapping, inside the usable area, `rest` exact).
//!
//! The disk holds a protective MBR (LBA 0), the primary GPT header (LBA 1) and 128 entries of
//! 128 bytes (LBA 2..=33); the backup entries and header take the last 33 sectors. Partitions
//! start on `alignment` boundaries and must end before the backup area.

use crate::config::{Contents, FsKind, Layout, PartSize};
use crate::guid::Guid;
use serde::Serialize;

/// Number of GPT partition entries written (the usual 128).
pub const GPT_ENTRIES: u64 = 128;
/// Bytes per GPT partition entry.
pub const GPT_ENTRY_SIZE: u64 = 128;
/// Largest disk accepted (16 TiB), so every byte offset fits comfortably in `u64`.
pub const MAX_DISK_BYTES: u64 = 16 << 40;

/// A validation failure: the layout key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PlanError {
    /// The key, e.g. `partition[2].size`.
    pub key: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError {
        key: key.into(),
        message: message.into(),
    }
}

/// Known partition type aliases and their GUIDs (Discoverable Partitions Specification).
pub const TYPE_ALIASES: &[(&str, &str)] = &[
    ("esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
    ("linux-root-x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
    ("linux-generic", "0fc63daf-8483-4772-8e79-3d69d8477de4"),
    ("linux-var", "4d21b016-b534-45c2-a9fb-5c16e091fd2d"),
];

/// Resolves a type alias or a literal GUID.
///
/// # Errors
/// The text is neither a known alias nor a GUID.
pub fn resolve_type(text: &str) -> Result<Guid, String> {
    if let Some((_, g)) = TYPE_ALIASES.iter().find(|(a, _)| *a == text) {
        return Ok(g.parse().expect("alias table holds valid GUIDs"));
    }
    text.parse().map_err(|_| {
        let names: Vec<&str> = TYPE_ALIASES.iter().map(|(a, _)| *a).collect();
        format!(
            "unknown partition type {text:?}: expected a GUID or one of {}",
            names.join(", ")
        )
    })
}

/// The alias for a type GUID, if it has one.
#[must_use]
pub fn type_alias(guid: Guid) -> Option<&'static str> {
    TYPE_ALIASES
        .iter()
        .find(|(_, g)| g.parse::<Guid>().ok() == Some(guid))
        .map(|(a, _)| *a)
}

/// The computed disk: geometry, GPT areas and partitions in sectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskPlan {
    /// Bytes per sector (512).
    pub sector_size: u64,
    /// Total sectors on the disk.
    pub total_sectors: u64,
    /// Alignment in sectors.
    pub alignment_sectors: u64,
    /// First LBA a partition may use (after the primary entries).
    pub first_usable_lba: u64,
    /// Last LBA a partition may use (before the backup entries).
    pub last_usable_lba: u64,
    /// Disk GUID derived from the seed.
    pub disk_guid: Guid,
    /// Partitions in table order.
    pub partitions: Vec<PlannedPartition>,
}

/// One partition of a [`DiskPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPartition {
    /// 1-based partition number.
    pub number: u32,
    /// GPT name and file-system label.
    pub label: String,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID derived from the seed and the label.
    pub part_guid: Guid,
    /// First sector.
    pub start_lba: u64,
    /// Length in sectors.
    pub size_sectors: u64,
    /// File system.
    pub fs: FsKind,
    /// Contents.
    pub contents: Contents,
}

impl PlannedPartition {
    /// Last sector (inclusive), as GPT stores it.
    #[must_use]
    pub fn last_lba(&self) -> u64 {
        self.start_lba + self.size_sectors - 1
    }
    /// Byte offset of the partition in the image.
    #[must_use]
    pub fn offset_bytes(&self, sector_size: u64) -> u64 {
        self.start_lba * sector_size
    }
    /// Length in bytes.
    #[must_use]
    pub fn size_bytes(&self, sector_size: u64) -> u64 {
        self.size_sectors * sector_size
    }
    /// The A/B slot name for a `root-<slot>` partition holding the root file system.
    #[must_use]
    pub fn slot(&self) -> Option<&str> {
        (self.contents == Contents::Rootfs)
            .then(|| self.label.strip_prefix("root-"))
            .flatten()
    }
}

/// Sectors taken by one copy of the partition entry array.
#[must_use]
pub fn entry_array_sectors(sector_size: u64) -> u64 {
    (GPT_ENTRIES * GPT_ENTRY_SIZE).div_ceil(sector_size)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Validates `layout` and computes where every partition goes.
///
/// # Errors
/// A [`PlanError`] naming the key: bad geometry, unknown type, duplicate or invalid label,
/// misaligned or overlapping start, a size that is not a sector multiple, a partition past the
/// end of the disk, `rest` not on the last partition, or contents on the wrong file system.
pub fn plan_layout(layout: &Layout) -> Result<DiskPlan, PlanError> {
    let ss = layout.sector_size;
    if ss != 512 {
        return Err(err(
            "sector_size",
            format!("{ss} is not supported: only 512"),
        ));
    }
    let disk = layout.disk_size.0;
    if !disk.is_multiple_of(ss) || disk > MAX_DISK_BYTES {
        return Err(err(
            "disk_size",
            format!("{disk} bytes: must be a multiple of {ss} and at most 16 TiB"),
        ));
    }
    let align = layout.alignment.0;
    if align == 0 || !align.is_multiple_of(ss) {
        return Err(err(
            "alignment",
            format!("{align} bytes: must be a non-zero multiple of {ss}"),
        ));
    }
    if layout.name.is_empty()
        || !layout
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || layout.name.starts_with('.')
    {
        return Err(err(
            "name",
            format!("{:?}: use letters, digits, '-', '_' and '.'", layout.name),
        ));
    }
    let align_s = align / ss;
    let total = disk / ss;
    let entries = entry_array_sectors(ss);
    let first_usable = 2 + entries;
    if total < 2 * (1 + entries) + 2 + align_s {
        return Err(err(
            "disk_size",
            format!("{disk} bytes is too small for a GPT and one partition"),
        ));
    }
    let last_usable = total - 1 - entries - 1;
    let seed = layout.seed();
    if layout.partitions.is_empty() {
        return Err(err("partition", "the layout has no partitions"));
    }
    if layout.partitions.len() as u64 > GPT_ENTRIES {
        return Err(err(
            "partition",
            format!("at most {GPT_ENTRIES} partitions"),
        ));
    }
    let mut out: Vec<PlannedPartition> = Vec::new();
    let mut next_free = first_usable;
    let count = layout.partitions.len();
    for (i, p) in layout.partitions.iter().enumerate() {
        let key = |k: &str| format!("partition[{i}].{k}");
        let label_ok = !p.label.is_empty()
            && p.label.len() <= 16
            && p.label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !label_ok {
            return Err(err(
                key("label"),
                format!("{:?}: 1-16 ASCII letters, digits, '-' or '_' (it is also the file-system label)", p.label),
            ));
        }
        if out.iter().any(|q| q.label == p.label) {
            return Err(err(
                key("label"),
                format!("{:?} is used by two partitions", p.label),
            ));
        }
        let type_guid = resolve_type(&p.type_).map_err(|m| err(key("type"), m))?;
        match (p.contents, p.fs) {
            (Contents::Esp, FsKind::Vfat)
            | (Contents::Rootfs, FsKind::Ext4 | FsKind::Erofs)
            | (Contents::Empty, FsKind::Ext4 | FsKind::Vfat | FsKind::None) => {}
            (c, f) => {
                return Err(err(
                    key("fs"),
                    format!("{:?} cannot hold contents {c:?} (esp needs vfat, rootfs ext4 or erofs, empty ext4/vfat/none)", f.as_str()),
                ))
            }
        }
        if p.contents == Contents::Rootfs {
            let slot = p.label.strip_prefix("root-").unwrap_or("");
            if slot.is_empty()
                || !slot
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Err(err(
                    key("label"),
                    format!("{:?}: a rootfs partition is a slot and must be labelled root-<slot> (lower-case letters/digits)", p.label),
                ));
            }
        }
        let start = match p.start {
            None => align_up(next_free, align_s),
            Some(s) => {
                if s.0 % align != 0 {
                    return Err(err(
                        key("start"),
                        format!("{} bytes is not a multiple of the alignment {align}", s.0),
                    ));
                }
                let lba = s.0 / ss;
                if lba < next_free {
                    let what = if i == 0 {
                        "the primary GPT".to_string()
                    } else {
                        format!("partition[{}] ({})", i - 1, layout.partitions[i - 1].label)
                    };
                    return Err(err(
                        key("start"),
                        format!(
                            "{} bytes overlaps {what}, which ends at byte {}",
                            s.0,
                            next_free * ss
                        ),
                    ));
                }
                lba
            }
        };
        let size_sectors = match p.size {
            PartSize::Bytes(b) => {
                if b == 0 || b % ss != 0 {
                    return Err(err(
                        key("size"),
                        format!("{b} bytes: must be a non-zero multiple of {ss}"),
                    ));
                }
                b / ss
            }
            PartSize::Rest => {
                if i + 1 != count {
                    return Err(err(
                        key("size"),
                        "\"rest\" is only allowed on the last partition",
                    ));
                }
                let end = ((last_usable + 1) / align_s) * align_s;
                if end <= start {
                    return Err(err(
                        key("size"),
                        format!(
                            "no room left: the partition would start at byte {}",
                            start * ss
                        ),
                    ));
                }
                end - start
            }
        };
        let last = start.checked_add(size_sectors).map(|e| e - 1);
        if start > last_usable || last.is_none_or(|l| l > last_usable) {
            return Err(err(
                key("size"),
                format!(
                    "the partition (bytes {}..{}) does not fit: the disk's usable area ends at byte {}",
                    start * ss,
                    (start + size_sectors) * ss,
                    (last_usable + 1) * ss
                ),
            ));
        }
        out.push(PlannedPartition {
            number: u32::try_from(i + 1).expect("at most 128 partitions"),
            label: p.label.clone(),
            type_guid,
            part_guid: Guid::derive(seed, &format!("partition:{}", p.label)),
            start_lba: start,
            size_sectors,
            fs: p.fs,
            contents: p.contents,
        });
        next_free = start + size_sectors;
    }
    let esps = out.iter().filter(|p| p.contents == Contents::Esp).count();
    if esps != 1 {
        return Err(err(
            "partition",
            format!("exactly one partition must have contents = \"esp\" (found {esps})"),
        ));
    }
    if !out.iter().any(|p| p.contents == Contents::Rootfs) {
        return Err(err(
            "partition",
            "no partition has contents = \"rootfs\" (label it root-a)",
        ));
    }
    Ok(DiskPlan {
        sector_size: ss,
        total_sectors: total,
        alignment_sectors: align_s,
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        disk_guid: Guid::derive(seed, "disk"),
        partitions: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootConfig, PartitionConfig, Size};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn part(label: &str, size: PartSize, fs: FsKind, contents: Contents) -> PartitionConfig {
        PartitionConfig {
            label: label.into(),
            type_: "linux-generic".into(),
            size,
            start: None,
            fs,
            contents,
        }
    }

    fn layout(disk: u64, parts: Vec<PartitionConfig>) -> Layout {
        Layout {
            name: "t".into(),
            seed: None,
            disk_size: Size(disk),
            sector_size: 512,
            alignment: Size(MIB),
            boot: BootConfig::default(),
            partitions: parts,
        }
    }

    fn standard(disk: u64) -> Layout {
        layout(
            disk,
            vec![
                part(
                    "esp",
                    PartSize::Bytes(64 * MIB),
                    FsKind::Vfat,
                    Contents::Esp,
                ),
                part(
                    "root-a",
                    PartSize::Bytes(100 * MIB),
                    FsKind::Ext4,
                    Contents::Rootfs,
                ),
                part(
                    "root-b",
                    PartSize::Bytes(100 * MIB),
                    FsKind::Ext4,
                    Contents::Rootfs,
                ),
                part("data", PartSize::Rest, FsKind::None, Contents::Empty),
            ],
        )
    }

    #[test]
    fn plans_the_standard_layout() {
        let p = plan_layout(&standard(1024 * MIB)).unwrap();
        assert_eq!(p.partitions[0].start_lba, 2048);
        assert_eq!(p.partitions[1].start_lba, 2048 + 64 * 2048);
        assert_eq!(p.partitions[3].last_lba(), 1024 * 2048 - 2048 - 1);
        assert_eq!(p.first_usable_lba, 34);
        assert_eq!(p.last_usable_lba, 1024 * 2048 - 34);
        assert_eq!(p.partitions[1].slot(), Some("a"));
        assert_eq!(p.partitions[3].slot(), None);
    }

    #[test]
    fn rejects_overlap_misalignment_and_overflow() {
        let mut l = standard(1024 * MIB);
        l.partitions[1].start = Some(Size(32 * MIB));
        let e = plan_layout(&l).unwrap_err();
        assert_eq!(e.key, "partition[1].start");
        assert!(e.message.contains("overlaps partition[0] (esp)"), "{e}");

        let mut l = standard(1024 * MIB);
        l.partitions[1].start = Some(Size(MIB * 100 + 4096));
        assert_eq!(plan_layout(&l).unwrap_err().key, "partition[1].start");

        let mut l = standard(200 * MIB);
        l.partitions[3].size = PartSize::Bytes(MIB);
        let e = plan_layout(&l).unwrap_err();
        assert_eq!(e.key, "partition[2].size");
        assert!(e.message.contains("does not fit"), "{e}");

        let mut l = standard(1024 * MIB);
        l.partitions[1].size = PartSize::Rest;
        assert_eq!(plan_layout(&l).unwrap_err().key, "partition[1].size");
    }

    #[test]
    fn rejects_wrong_contents_types_and_labels() {
        let mut l = standard(1024 * MIB);
        l.partitions[0].fs = FsKind::Ext4;
        assert_eq!(plan_layout(&l).unwrap_err().key, "partition[0].fs");
        let mut l = standard(1024 * MIB);
        l.partitions[1].label = "rootA".into();
        assert_eq!(plan_layout(&l).unwrap_err().key, "partition[1].label");
        let mut l = standard(1024 * MIB);
        l.partitions[2].label = "root-a".into();
        assert!(plan_layout(&l)
            .unwrap_err()
            .message
            .contains("two partitions"));
        let mut l = standard(1024 * MIB);
        l.partitions[2].type_ = "linux-swap".into();
        assert_eq!(plan_layout(&l).unwrap_err().key, "partition[2].type");
        let mut l = standard(1024 * MIB);
        l.sector_size = 4096;
        assert_eq!(plan_layout(&l).unwrap_err().key, "sector_size");
    }

    proptest! {
        #[test]
        fn planned_partitions_are_aligned_disjoint_and_inside(
            disk_mib in 64u64..8192,
            align_kib in prop::sample::select(vec![4u64, 64, 512, 1024, 4096]),
            sizes in prop::collection::vec((1u64..4096, any::<bool>()), 1..8),
            rest in any::<bool>(),
        ) {
            let parts: Vec<PartitionConfig> = std::iter::once(part("esp", PartSize::Bytes(align_kib * 1024), FsKind::Vfat, Contents::Esp))
                .chain(std::iter::once(part("root-a", PartSize::Bytes(align_kib * 1024), FsKind::Ext4, Contents::Rootfs)))
                .chain(sizes.iter().enumerate().map(|(i, (s, _))| part(&format!("p{i}"), PartSize::Bytes(s * 512 * 17), FsKind::None, Contents::Empty)))
                .collect();
            let mut l = layout(disk_mib * MIB, parts);
            l.alignment = Size(align_kib * 1024);
            if rest { l.partitions.last_mut().unwrap().size = PartSize::Rest; }
            let Ok(plan) = plan_layout(&l) else { return Ok(()); };
            let a = plan.alignment_sectors;
            let mut prev_end = plan.first_usable_lba;
            for p in &plan.partitions {
                prop_assert_eq!(p.start_lba % a, 0);
                prop_assert!(p.start_lba >= prev_end);
                prop_assert!(p.size_sectors > 0);
                prop_assert!(p.last_lba() <= plan.last_usable_lba);
                prev_end = p.start_lba + p.size_sectors;
            }
            // The backup GPT (entries + header) fits after the last usable LBA.
            prop_assert_eq!(plan.total_sectors - 1 - plan.last_usable_lba, entry_array_sectors(512) + 1);
            prop_assert_eq!(plan.first_usable_lba, 2 + entry_array_sectors(512));
            if rest {
                let last = plan.partitions.last().unwrap();
                let end = last.start_lba + last.size_sectors;
                prop_assert_eq!(end % a, 0);
                prop_assert!(end <= plan.last_usable_lba + 1);
                prop_assert!(plan.last_usable_lba + 1 - end < a, "rest leaves a whole alignment unit unused");
            }
        }

        #[test]
        fn planning_never_panics(disk in 0u64..(1 << 36), align in 0u64..(1 << 22), sizes in prop::collection::vec(0u64..(1 << 34), 0..6)) {
            let parts = sizes.iter().enumerate().map(|(i, s)| part(if i == 0 { "esp" } else { "root-a" }, PartSize::Bytes(*s), FsKind::Vfat, Contents::Esp)).collect();
            let mut l = layout(disk, parts);
            l.alignment = Size(align);
            let _ = plan_layout(&l);
        }
    }
}
