//! Pinning the identifiers `qemu-img convert` generates at random, so vmdk and vhdx outputs are
//! reproducible too: the vmdk descriptor's `CID`, and vhdx's header sequence numbers and
//! file/data write GUIDs (both headers, CRC-32C recomputed), its page-83 id, and its log area (stale once the header's log
//! GUID is zero, which is what `qemu-img convert` leaves).

use crate::error::LayoutError;
use crate::guid::Guid;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// VHDX metadata region GUID.
const VHDX_METADATA_REGION: &str = "8b7ca206-4790-4b9a-b8fe-575f050f886e";
/// VHDX "Page 83 Data" metadata item GUID.
const VHDX_PAGE83: &str = "beca12ab-b2e6-4523-93ef-c309e000c746";

fn open(path: &Path) -> Result<File, LayoutError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(LayoutError::io("open", path))
}

fn read_at(f: &mut File, path: &Path, off: u64, len: usize) -> Result<Vec<u8>, LayoutError> {
    let mut b = vec![0u8; len];
    f.seek(SeekFrom::Start(off))
        .map_err(LayoutError::io("seek", path))?;
    f.read_exact(&mut b)
        .map_err(LayoutError::io("read", path))?;
    Ok(b)
}

fn write_at(f: &mut File, path: &Path, off: u64, bytes: &[u8]) -> Result<(), LayoutError> {
    f.seek(SeekFrom::Start(off))
        .map_err(LayoutError::io("seek", path))?;
    f.write_all(bytes).map_err(LayoutError::io("write", path))
}

fn unexpected(path: &Path, what: &str) -> LayoutError {
    LayoutError::Rootfs {
        path: path.to_path_buf(),
        message: format!("unexpected qemu-img output: {what}"),
    }
}

/// Replaces the `CID=xxxxxxxx` of a monolithic sparse vmdk with `cid` (same length, in place).
///
/// # Errors
/// The file is not a vmdk with an embedded descriptor.
pub fn pin_vmdk(path: &Path, cid: u32) -> Result<(), LayoutError> {
    let mut f = open(path)?;
    let head = read_at(&mut f, path, 0, 512)?;
    if &head[0..4] != b"KDMV" {
        return Err(unexpected(path, "no KDMV signature"));
    }
    let desc_sector = u64::from_le_bytes(head[28..36].try_into().expect("8 bytes"));
    let desc_len = u64::from_le_bytes(head[36..44].try_into().expect("8 bytes"));
    if desc_sector == 0 || desc_len == 0 || desc_len > 128 {
        return Err(unexpected(path, "no embedded descriptor"));
    }
    let off = desc_sector * 512;
    let area = read_at(
        &mut f,
        path,
        off,
        usize::try_from(desc_len * 512).expect("small"),
    )?;
    let text_len = area.iter().position(|b| *b == 0).unwrap_or(area.len());
    let text = std::str::from_utf8(&area[..text_len])
        .map_err(|_| unexpected(path, "descriptor is not text"))?;
    // qemu-img prints the CID without zero padding, so the line's length varies: rewrite the
    // whole descriptor rather than patch bytes in place.
    let mut found = false;
    let mut new_text = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        if line.starts_with("CID=") {
            found = true;
            new_text.push_str(&format!("CID={cid:08x}\n"));
        } else {
            new_text.push_str(line);
        }
    }
    if !found || new_text.len() > area.len() {
        return Err(unexpected(path, "no CID line in the descriptor"));
    }
    let mut new_area = new_text.into_bytes();
    new_area.resize(area.len(), 0);
    write_at(&mut f, path, off, &new_area)?;
    f.sync_all().map_err(LayoutError::io("sync", path))
}

/// Sets a vhdx's write GUIDs and page-83 id from `seed` and zeroes its unused log area.
///
/// # Errors
/// The file is not a vhdx as `qemu-img convert` writes it (log in use, missing regions).
pub fn pin_vhdx(path: &Path, seed: &str) -> Result<(), LayoutError> {
    let mut f = open(path)?;
    if read_at(&mut f, path, 0, 8)? != b"vhdxfile" {
        return Err(unexpected(path, "no vhdxfile signature"));
    }
    let mut log = None;
    let offsets = [64u64 * 1024, 128 * 1024];
    let mut seqs = [0u64; 2];
    for (i, off) in offsets.into_iter().enumerate() {
        let h = read_at(&mut f, path, off, 16)?;
        seqs[i] = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    }
    // qemu-img starts the sequence numbers at a random value; keep their order, pin the values.
    let current = usize::from(seqs[1] > seqs[0]);
    for (i, off) in offsets.into_iter().enumerate() {
        let mut h = read_at(&mut f, path, off, 4096)?;
        if &h[0..4] != b"head" {
            return Err(unexpected(path, "no vhdx header"));
        }
        let seq: u64 = if i == current { 2 } else { 1 };
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        if h[48..64].iter().any(|b| *b != 0) {
            return Err(unexpected(path, "the vhdx log is in use"));
        }
        h[16..32].copy_from_slice(&Guid::derive(seed, "vhdx:file-write").to_gpt_bytes());
        h[32..48].copy_from_slice(&Guid::derive(seed, "vhdx:data-write").to_gpt_bytes());
        h[4..8].fill(0);
        let crc = CRC32C.checksum(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        write_at(&mut f, path, off, &h)?;
        let len = u64::from(u32::from_le_bytes(h[68..72].try_into().expect("4 bytes")));
        let at = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
        if i == current {
            log = Some((at, len));
        }
    }
    if let Some((at, len)) = log.filter(|(a, l)| *a >= 1 << 20 && *l > 0 && *l <= 64 << 20) {
        write_at(
            &mut f,
            path,
            at,
            &vec![0u8; usize::try_from(len).expect("at most 64 MiB")],
        )?;
    }
    let regions = read_at(&mut f, path, 192 * 1024, 64 * 1024)?;
    let count = u32::from_le_bytes(regions[8..12].try_into().expect("4 bytes")) as usize;
    let meta: Guid = VHDX_METADATA_REGION.parse().expect("constant GUID");
    let meta_off = (0..count.min(2047))
        .map(|i| &regions[16 + i * 32..48 + i * 32])
        .find(|e| Guid::from_gpt_bytes(e[0..16].try_into().expect("16 bytes")) == meta)
        .map(|e| u64::from_le_bytes(e[16..24].try_into().expect("8 bytes")))
        .ok_or_else(|| unexpected(path, "no vhdx metadata region"))?;
    let table = read_at(&mut f, path, meta_off, 64 * 1024)?;
    if &table[0..8] != b"metadata" {
        return Err(unexpected(path, "no vhdx metadata table"));
    }
    let entries = usize::from(u16::from_le_bytes([table[10], table[11]]));
    let page83: Guid = VHDX_PAGE83.parse().expect("constant GUID");
    for i in 0..entries.min(2047) {
        let e = &table[32 + i * 32..64 + i * 32];
        if Guid::from_gpt_bytes(e[0..16].try_into().expect("16 bytes")) == page83 {
            let item = u64::from(u32::from_le_bytes(e[16..20].try_into().expect("4 bytes")));
            write_at(
                &mut f,
                path,
                meta_off + item,
                &Guid::derive(seed, "vhdx:page83").to_gpt_bytes(),
            )?;
        }
    }
    f.sync_all().map_err(LayoutError::io("sync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmdk_cid_of_any_width_is_replaced_and_lines_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.vmdk");
        let mut bytes = vec![0u8; 3 * 512];
        bytes[0..4].copy_from_slice(b"KDMV");
        bytes[28..36].copy_from_slice(&1u64.to_le_bytes());
        bytes[36..44].copy_from_slice(&2u64.to_le_bytes());
        let desc = b"# Disk DescriptorFile\nversion=1\nCID=a909032\nparentCID=ffffffff\n";
        bytes[512..512 + desc.len()].copy_from_slice(desc);
        std::fs::write(&path, &bytes).unwrap();
        pin_vmdk(&path, 0x0123_abcd).unwrap();
        let out = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&out[512..])
            .trim_end_matches('\0')
            .to_string();
        assert_eq!(
            text,
            "# Disk DescriptorFile\nversion=1\nCID=0123abcd\nparentCID=ffffffff\n"
        );
        assert_eq!(out.len(), bytes.len());
    }
}
