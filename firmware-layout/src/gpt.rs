//! GPT encoding and decoding, written here rather than with the `gpt` crate so every byte is
//! ours to pin (see docs/layout.md, "Why our own GPT writer"): protective MBR, primary header
//! and entries, backup entries and header, CRC32s. Encoding is pure; [`write_gpt`] and
//! [`read_gpt`] do the file I/O.

use crate::guid::Guid;
use crate::plan::{entry_array_sectors, DiskPlan, GPT_ENTRIES, GPT_ENTRY_SIZE};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const SIGNATURE: &[u8; 8] = b"EFI PART";
const HEADER_SIZE: usize = 92;

/// The encoded table: bytes for the start of the disk and for its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedGpt {
    /// Protective MBR, primary header and entries, written at byte 0.
    pub head: Vec<u8>,
    /// Backup entries and header, written at `tail_offset`.
    pub tail: Vec<u8>,
    /// Byte offset of `tail`.
    pub tail_offset: u64,
}

/// A partition entry read back from a disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptEntry {
    /// 1-based entry number.
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub part_guid: Guid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Partition name.
    pub name: String,
}

/// A GPT read back from a disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptTable {
    /// Disk GUID.
    pub disk_guid: Guid,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA.
    pub last_usable_lba: u64,
    /// Used entries, in table order.
    pub entries: Vec<GptEntry>,
}

/// Why a GPT could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// Reading the image failed.
    #[error("cannot read the partition table of {path}: {source}")]
    Io {
        /// The image.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a valid GPT.
    #[error("{path}: no valid GPT: {reason}")]
    Invalid {
        /// The image.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn encode_entries(plan: &DiskPlan) -> Vec<u8> {
    let mut out = vec![0u8; usize::try_from(GPT_ENTRIES * GPT_ENTRY_SIZE).expect("16 KiB")];
    for (i, p) in plan.partitions.iter().enumerate() {
        let e = &mut out[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(&p.type_guid.to_gpt_bytes());
        e[16..32].copy_from_slice(&p.part_guid.to_gpt_bytes());
        e[32..40].copy_from_slice(&p.start_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba().to_le_bytes());
        // Attributes stay 0; the name is UTF-16LE, at most 36 code units (labels are ASCII <= 16).
        for (j, unit) in p.label.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    out
}

fn encode_header(
    plan: &DiskPlan,
    my_lba: u64,
    alt_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; usize::try_from(plan.sector_size).expect("sector size fits usize")];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
    h[40..48].copy_from_slice(&plan.first_usable_lba.to_le_bytes());
    h[48..56].copy_from_slice(&plan.last_usable_lba.to_le_bytes());
    h[56..72].copy_from_slice(&plan.disk_guid.to_gpt_bytes());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = CRC32.checksum(&h[..HEADER_SIZE]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn protective_mbr(plan: &DiskPlan) -> Vec<u8> {
    let mut m = vec![0u8; usize::try_from(plan.sector_size).expect("sector size fits usize")];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(plan.total_sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Encodes the protective MBR and both GPT copies for `plan`. Pure and deterministic.
#[must_use]
pub fn encode_gpt(plan: &DiskPlan) -> EncodedGpt {
    let entries = encode_entries(plan);
    let crc = CRC32.checksum(&entries);
    let last = plan.total_sectors - 1;
    let n = entry_array_sectors(plan.sector_size);
    let mut head = protective_mbr(plan);
    head.extend(encode_header(plan, 1, last, 2, crc));
    head.extend(&entries);
    let backup_entries_lba = last - n;
    let mut tail = entries;
    tail.extend(encode_header(plan, last, 1, backup_entries_lba, crc));
    EncodedGpt {
        head,
        tail,
        tail_offset: backup_entries_lba * plan.sector_size,
    }
}

/// Writes the encoded GPT into an open image file (which must already have its full length).
///
/// # Errors
/// Seeking or writing fails.
pub fn write_gpt(file: &mut File, plan: &DiskPlan) -> std::io::Result<()> {
    let g = encode_gpt(plan);
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&g.head)?;
    file.seek(SeekFrom::Start(g.tail_offset))?;
    file.write_all(&g.tail)?;
    Ok(())
}

/// Reads and checks the primary GPT of an image (signature, header and entry CRCs).
///
/// # Errors
/// I/O failures, or a table that is not a valid GPT with 512-byte sectors.
pub fn read_gpt(path: &Path) -> Result<GptTable, GptError> {
    let io = |source| GptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |reason: String| GptError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut head = vec![0u8; 1024];
    f.read_exact(&mut head).map_err(io)?;
    let h = &head[512..];
    if &h[0..8] != SIGNATURE {
        return Err(invalid(
            "no \"EFI PART\" signature at LBA 1 (512-byte sectors)".into(),
        ));
    }
    let hsize = le32(h, 12) as usize;
    if !(HEADER_SIZE..=512).contains(&hsize) {
        return Err(invalid(format!("header size {hsize}")));
    }
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if CRC32.checksum(&hc) != le32(h, 16) {
        return Err(invalid("header CRC32 mismatch".into()));
    }
    let count = u64::from(le32(h, 80));
    let esize = u64::from(le32(h, 84));
    if count == 0 || count > 1024 || !(128..=4096).contains(&esize) || esize % 8 != 0 {
        return Err(invalid(format!("entry array of {count} x {esize} bytes")));
    }
    let mut raw = vec![0u8; usize::try_from(count * esize).expect("at most 4 MiB")];
    let last_usable = le64(h, 48);
    if le64(h, 40) > last_usable || last_usable >= u64::MAX / 512 {
        return Err(invalid(format!(
            "usable area {}..={last_usable}",
            le64(h, 40)
        )));
    }
    let entries_at = le64(h, 72)
        .checked_mul(512)
        .ok_or_else(|| invalid(format!("entry array at LBA {}", le64(h, 72))))?;
    f.seek(SeekFrom::Start(entries_at)).map_err(io)?;
    f.read_exact(&mut raw).map_err(io)?;
    if CRC32.checksum(&raw) != le32(h, 88) {
        return Err(invalid("partition entry array CRC32 mismatch".into()));
    }
    let mut entries = Vec::new();
    for (i, e) in raw
        .chunks(usize::try_from(esize).expect("small"))
        .enumerate()
    {
        let type_guid = Guid::from_gpt_bytes(e[0..16].try_into().expect("16 bytes"));
        if type_guid == Guid::ZERO {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        let (first, last) = (le64(e, 32), le64(e, 40));
        if first > last || last > last_usable {
            return Err(invalid(format!(
                "entry {}: LBAs {first}..={last} are outside the usable area (last LBA {last_usable})",
                i + 1
            )));
        }
        entries.push(GptEntry {
            number: u32::try_from(i + 1).expect("at most 1024"),
            type_guid,
            part_guid: Guid::from_gpt_bytes(e[16..32].try_into().expect("16 bytes")),
            first_lba: first,
            last_lba: last,
            attributes: le64(e, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(GptTable {
        disk_guid: Guid::from_gpt_bytes(h[56..72].try_into().expect("16 bytes")),
        first_usable_lba: le64(h, 40),
        last_usable_lba: last_usable,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Layout;
    use crate::plan::plan_layout;

    fn plan() -> DiskPlan {
        let l = Layout::parse(
            r#"
name = "t"
disk_size = "64MiB"
[[partition]]
label = "esp"
type = "esp"
size = "8MiB"
fs = "vfat"
contents = "esp"
[[partition]]
label = "root-a"
type = "linux-root-x86-64"
size = "rest"
fs = "ext4"
contents = "rootfs"
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        plan_layout(&l).unwrap()
    }

    #[test]
    fn encoding_is_deterministic_and_sized() {
        let p = plan();
        let a = encode_gpt(&p);
        assert_eq!(a, encode_gpt(&p));
        assert_eq!(a.head.len(), 34 * 512);
        assert_eq!(a.tail.len(), 33 * 512);
        assert_eq!(a.tail_offset + a.tail.len() as u64, 64 << 20);
    }

    /// Writes `p`'s table into a fresh 64 MiB file; returns the open file.
    fn write_disk(dir: &Path, p: &DiskPlan) -> (std::path::PathBuf, File) {
        let path = dir.join("disk.raw");
        let mut f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        write_gpt(&mut f, p).unwrap();
        (path, f)
    }

    #[test]
    fn written_table_reads_back() {
        let p = plan();
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_disk(dir.path(), &p);
        let t = read_gpt(&path).unwrap();
        assert_eq!(t.disk_guid, p.disk_guid);
        assert_eq!(t.entries.len(), 2);
        for (e, q) in t.entries.iter().zip(&p.partitions) {
            assert_eq!(e.name, q.label);
            assert_eq!(e.type_guid, q.type_guid);
            assert_eq!(e.part_guid, q.part_guid);
            assert_eq!(e.first_lba, q.start_lba);
            assert_eq!(e.last_lba, q.last_lba());
        }
    }

    #[test]
    fn corrupted_header_is_rejected() {
        let p = plan();
        let dir = tempfile::tempdir().unwrap();
        let (path, mut f) = write_disk(dir.path(), &p);
        f.seek(SeekFrom::Start(512 + 40)).unwrap();
        f.write_all(&[0xff]).unwrap();
        drop(f);
        let e = read_gpt(&path).unwrap_err().to_string();
        assert!(e.contains("header CRC32"), "{e}");
    }

    proptest::proptest! {
        /// Whatever a (CRC-valid) header or entry says, reading never panics.
        #[test]
        fn reading_hostile_tables_never_panics(
            field in 0usize..92,
            value in proptest::prelude::any::<u64>(),
            entry_byte in 0usize..256,
            entry_value in proptest::prelude::any::<u8>(),
        ) {
            let p = plan();
            let dir = tempfile::tempdir().unwrap();
            let (path, mut f) = write_disk(dir.path(), &p);
            let mut head = encode_gpt(&p).head;
            // Corrupt an entry byte, then a header field, and make both CRCs right again.
            head[1024 + entry_byte] = entry_value;
            let crc = CRC32.checksum(&head[1024..1024 + 16384]);
            head[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
            let at = 512 + (field & !7).min(84);
            let bytes = value.to_le_bytes();
            let n = (92 - (at - 512)).min(8);
            head[at..at + n].copy_from_slice(&bytes[..n]);
            head[512 + 16..512 + 20].fill(0);
            let crc = CRC32.checksum(&head[512..512 + 92]);
            head[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(&head).unwrap();
            drop(f);
            let _ = read_gpt(&path);
        }
    }
}
