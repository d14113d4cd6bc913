//! `inspect`: the partition table of a raw image (our GPT reader), each partition's file system
//! (by its magic number), and the boot entries on the ESP read with mtools, with tries left.

use crate::entries::EntryName;
use crate::error::LayoutError;
use crate::gpt::{self, GptEntry};
use crate::guid::Guid;
use crate::plan::type_alias;
use crate::tools::{self, MDIR, MTYPE};
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Most boot entries read from an ESP.
pub const MAX_ENTRIES: usize = 64;
/// Largest entry or loader.conf read.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The image file.
    pub image: PathBuf,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Partitions.
    pub partitions: Vec<PartitionInfo>,
    /// `loader/loader.conf` from the ESP, if there is one.
    pub loader_conf: Option<String>,
    /// Outpost boot entries from the ESP.
    pub entries: Vec<EntryInfo>,
}

/// One partition as found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    /// 1-based number.
    pub number: u32,
    /// GPT partition name.
    pub label: String,
    /// Type GUID.
    pub type_guid: Guid,
    /// Known alias of the type, if any.
    pub type_name: Option<&'static str>,
    /// Unique GUID.
    pub part_guid: Guid,
    /// First LBA.
    pub start_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Size in bytes.
    pub size: u64,
    /// Detected file system: ext4, vfat, erofs or none.
    pub fs: &'static str,
}

/// One boot entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// File name under `loader/entries/`.
    pub file: String,
    /// Parsed name (slot, tries).
    #[serde(flatten)]
    pub name: EntryName,
    /// good, bad or indeterminate.
    pub state: &'static str,
    /// `title` line.
    pub title: Option<String>,
    /// `options` line.
    pub options: Option<String>,
}

/// Detects the file system from the first 2 KiB of a partition.
#[must_use]
pub fn detect_fs(head: &[u8]) -> &'static str {
    if head.len() >= 1084 && head[1080..1082] == [0x53, 0xEF] {
        return "ext4";
    }
    if head.len() >= 1028 && head[1024..1028] == [0xE2, 0xE1, 0xF5, 0xE0] {
        return "erofs";
    }
    if head.len() >= 512
        && head[510..512] == [0x55, 0xAA]
        && (&head[82..87] == b"FAT32" || &head[54..57] == b"FAT")
    {
        return "vfat";
    }
    "none"
}

/// Inspects a raw image.
///
/// # Errors
/// Unreadable image, no valid GPT (a qcow2/vhdx/vmdk image is named as such), mtools failures.
pub fn inspect(image: &Path) -> Result<Inspection, LayoutError> {
    let mut f = File::open(image).map_err(LayoutError::io("open", image))?;
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)
        .map_err(LayoutError::io("read", image))?;
    let kind = match &magic {
        [b'Q', b'F', b'I', 0xfb, ..] => Some("qcow2"),
        b"vhdxfile" => Some("vhdx"),
        [b'K', b'D', b'M', b'V', ..] => Some("vmdk"),
        _ => None,
    };
    if let Some(k) = kind {
        return Err(LayoutError::Usage {
            flag: "IMAGE".into(),
            message: format!(
                "{} is a {k} image; inspect reads raw images (qemu-img convert -O raw)",
                image.display()
            ),
        });
    }
    let table = gpt::read_gpt(image)?;
    let mut partitions = Vec::new();
    let mut esp_offset = None;
    for e in &table.entries {
        let fs = read_fs(&mut f, image, e)?;
        if type_alias(e.type_guid) == Some("esp") && fs == "vfat" && esp_offset.is_none() {
            esp_offset = Some(e.first_lba * 512);
        }
        partitions.push(PartitionInfo {
            number: e.number,
            label: e.name.clone(),
            type_guid: e.type_guid,
            type_name: type_alias(e.type_guid),
            part_guid: e.part_guid,
            start_lba: e.first_lba,
            last_lba: e.last_lba,
            size: (e.last_lba + 1).saturating_sub(e.first_lba) * 512,
            fs,
        });
    }
    let (loader_conf, entries) = match esp_offset {
        Some(off) => read_esp(image, off)?,
        None => (None, Vec::new()),
    };
    Ok(Inspection {
        image: image.to_path_buf(),
        disk_guid: table.disk_guid,
        partitions,
        loader_conf,
        entries,
    })
}

fn read_fs(f: &mut File, image: &Path, e: &GptEntry) -> Result<&'static str, LayoutError> {
    let mut head = vec![0u8; 2048];
    f.seek(SeekFrom::Start(e.first_lba * 512))
        .map_err(LayoutError::io("seek", image))?;
    let mut n = 0;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .map_err(LayoutError::io("read", image))?
        {
            0 => break,
            r => n += r,
        }
    }
    Ok(detect_fs(&head[..n]))
}

fn mtools_target(image: &Path, offset: u64) -> std::ffi::OsString {
    let mut s = image.as_os_str().to_owned();
    s.push(format!("@@{offset}"));
    s
}

fn read_esp(image: &Path, offset: u64) -> Result<(Option<String>, Vec<EntryInfo>), LayoutError> {
    tools::require(&[MDIR, MTYPE])?;
    let target = mtools_target(image, offset);
    let mtools = |tool: tools::Tool, args: &[&str], doing: &str| -> Result<String, LayoutError> {
        let mut cmd = Command::new(tool.name);
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&target)
            .args(args);
        let out = tools::run(
            tool,
            &mut cmd,
            &format!("{doing} the ESP of {}", image.display()),
        )?;
        let n = out.len().min(MAX_ENTRY_BYTES);
        Ok(String::from_utf8_lossy(&out[..n]).into_owned())
    };
    let mtype = |path: &str| {
        mtools(
            MTYPE,
            &[&format!("::{path}")],
            &format!("reading {path} from"),
        )
    };
    // An ESP without /loader (not an Outpost image) has no entries to show.
    let Ok(listing) = mtools(MDIR, &["-b", "::/loader"], "listing") else {
        return Ok((None, Vec::new()));
    };
    let has_conf = listing
        .lines()
        .any(|l| l.trim_end().ends_with("/loader.conf"));
    let loader_conf = if has_conf {
        Some(mtype("/loader/loader.conf")?)
    } else {
        None
    };
    if !listing
        .lines()
        .any(|l| l.trim_end().trim_end_matches('/').ends_with("/entries"))
    {
        return Ok((loader_conf, Vec::new()));
    }
    let listing = mtools(
        MDIR,
        &["-b", "::/loader/entries"],
        "listing the boot entries in",
    )?;
    let mut files: Vec<String> = listing
        .lines()
        .filter_map(|l| l.trim_end().rsplit('/').next().map(String::from))
        .filter(|n| n.ends_with(".conf"))
        .collect();
    files.sort();
    files.truncate(MAX_ENTRIES);
    let mut entries = Vec::new();
    for file in files {
        let Some(name) = EntryName::parse(&file) else {
            continue;
        };
        let text = mtype(&format!("/loader/entries/{file}"))?;
        let field = |k: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(k)
                    .filter(|r| r.starts_with([' ', '\t']))
                    .map(|r| r.trim().to_string())
            })
        };
        entries.push(EntryInfo {
            state: name.state(),
            title: field("title"),
            options: field("options"),
            file,
            name,
        });
    }
    Ok((loader_conf, entries))
}

/// Renders an inspection as text.
#[must_use]
pub fn render_text(i: &Inspection) -> String {
    let mut s = format!("image {}\ndisk GUID {}\n\n", i.image.display(), i.disk_guid);
    s.push_str(&format!(
        "{:<3} {:<10} {:<18} {:>10} {:>10} {:<6} {}\n",
        "#", "LABEL", "TYPE", "START", "SIZE", "FS", "PARTUUID"
    ));
    for p in &i.partitions {
        let ty = p
            .type_name
            .map_or_else(|| p.type_guid.to_string(), String::from);
        s.push_str(&format!(
            "{:<3} {:<10} {:<18} {:>10} {:>10} {:<6} {}\n",
            p.number,
            p.label,
            ty,
            crate::config::format_size(p.start_lba * 512),
            crate::config::format_size(p.size),
            p.fs,
            p.part_guid
        ));
    }
    s.push_str("\nboot entries:\n");
    if i.entries.is_empty() {
        s.push_str("  (none)\n");
    }
    for e in &i.entries {
        let tries = match (e.name.tries_left, e.name.tries_done) {
            (None, _) => "not counted".to_string(),
            (Some(l), None) => format!("{l} tries left"),
            (Some(l), Some(d)) => format!("{l} tries left, {d} done"),
        };
        s.push_str(&format!(
            "  {:<24} slot {:<3} {:<13} ({tries})\n",
            e.file, e.name.slot, e.state
        ));
        if let Some(o) = &e.options {
            s.push_str(&format!("      options {o}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_file_systems_by_magic() {
        let mut b = vec![0u8; 2048];
        assert_eq!(detect_fs(&b), "none");
        b[1080] = 0x53;
        b[1081] = 0xEF;
        assert_eq!(detect_fs(&b), "ext4");
        let mut v = vec![0u8; 2048];
        v[510] = 0x55;
        v[511] = 0xAA;
        v[82..87].copy_from_slice(b"FAT32");
        assert_eq!(detect_fs(&v), "vfat");
    }
}
