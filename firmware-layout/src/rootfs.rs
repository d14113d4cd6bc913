//! The root file system archive: unpacking `rootfs.tar.zst` into a directory (owners, modes,
//! xattrs kept; paths checked by `tar`), recording each entry's clamped mtime for the time
//! pinning step, and finding the kernel, initrd and systemd-boot inside it.

use crate::error::LayoutError;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Largest unpacked root file system accepted (64 GiB).
pub const MAX_ROOTFS_BYTES: u64 = 64 << 30;
/// Most archive entries accepted.
pub const MAX_ROOTFS_ENTRIES: u64 = 4_000_000;
/// Where systemd-boot's EFI binary lives, in the rootfs and on the build host.
pub const SYSTEMD_BOOT_EFI: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The manifest `outpost-image` writes next to `rootfs.tar.zst`.
pub const ROOTFS_MANIFEST: &str = "manifest.json";
/// Largest manifest read for its epoch.
pub const MAX_MANIFEST_BYTES: u64 = 512 * 1024 * 1024;

/// The `source_date_epoch` of the `manifest.json` next to a rootfs archive: the epoch the
/// layout's file-system times take when `SOURCE_DATE_EPOCH` is not given, so the disk image
/// gets the recipe's times rather than 1970.
///
/// # Errors
/// [`LayoutError::Rootfs`] naming the manifest when it is missing, too big, not JSON or has no
/// integer `source_date_epoch` (the message says to pass `--source-date-epoch`).
pub fn epoch_of_manifest_beside(archive: &Path) -> Result<u64, LayoutError> {
    let manifest = archive
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(ROOTFS_MANIFEST);
    let bad = |why: String| {
        LayoutError::Rootfs {
        path: archive.to_path_buf(),
        message: format!(
            "no time stamp for the file systems: SOURCE_DATE_EPOCH / --source-date-epoch is not set and {}: {why}",
            manifest.display()
        ),
    }
    };
    let meta = std::fs::metadata(&manifest).map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!("larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    let bytes = std::fs::read(&manifest).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    v.get("source_date_epoch")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| bad("has no integer `source_date_epoch`".into()))
}

/// An unpacked root file system; every entry's atime is the epoch and its mtime the archive's,
/// clamped to the epoch.
#[derive(Debug)]
pub struct RootfsTree {
    /// Directory it was unpacked into.
    pub dir: PathBuf,
    /// mtime of every archive entry (relative path, no leading `/`), clamped to the epoch.
    pub mtimes: BTreeMap<PathBuf, u64>,
    /// Bytes the file system needs for data: regular files rounded up to 4 KiB, plus one block
    /// per directory and per long symlink.
    pub data_bytes: u64,
    /// Number of inodes (entries) in the tree.
    pub inodes: u64,
}

/// Unpacks a zstd-compressed tar into `dir` (which must exist and be empty).
///
/// # Errors
/// [`LayoutError::Rootfs`] for an unreadable or oversized archive or a bad entry.
pub fn unpack_rootfs(archive: &Path, dir: &Path, epoch: u64) -> Result<RootfsTree, LayoutError> {
    let bad = |message: String| LayoutError::Rootfs {
        path: archive.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(archive).map_err(LayoutError::io("open", archive))?;
    let decoder =
        zstd::stream::read::Decoder::new(file).map_err(|e| bad(format!("not zstd: {e}")))?;
    let mut ar = tar::Archive::new(decoder);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    let mut mtimes = BTreeMap::new();
    let (mut data_bytes, mut inodes) = (0u64, 0u64);
    for entry in ar.entries().map_err(|e| bad(format!("cannot read: {e}")))? {
        let mut entry = entry.map_err(|e| bad(format!("cannot read an entry: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad path: {e}")))?
            .into_owned();
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let header = entry.header();
        let kind = header.entry_type();
        let size = header.size().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0).min(epoch);
        if kind.is_file() || kind.is_contiguous() || kind.is_hard_link() {
            data_bytes = data_bytes.saturating_add(size.div_ceil(4096) * 4096);
        } else if kind.is_dir() || kind.is_symlink() {
            data_bytes = data_bytes.saturating_add(4096);
        }
        inodes += 1;
        if data_bytes > MAX_ROOTFS_BYTES || inodes > MAX_ROOTFS_ENTRIES {
            return Err(bad(format!(
                "larger than {MAX_ROOTFS_BYTES} bytes or {MAX_ROOTFS_ENTRIES} entries"
            )));
        }
        entry.unpack_in(dir).map_err(|e| {
            bad(format!(
                "cannot unpack {}: {}",
                path.display(),
                error_chain(&e)
            ))
        })?;
        mtimes.insert(rel, mtime);
    }
    // Times last: unpacking a child changes its directory's mtime. atime is the epoch and mtime
    // the clamped one; mkfs.ext4 -d copies both (ctime it cannot be given: see fsbuild).
    let at = filetime::FileTime::from_unix_time(i64::try_from(epoch).unwrap_or(i64::MAX), 0);
    for (rel, mtime) in &mtimes {
        let p = dir.join(rel);
        let m = filetime::FileTime::from_unix_time(i64::try_from(*mtime).unwrap_or(i64::MAX), 0);
        filetime::set_symlink_file_times(&p, at, m).map_err(LayoutError::io("set times on", &p))?;
    }
    Ok(RootfsTree {
        dir: dir.to_path_buf(),
        mtimes,
        data_bytes,
        inodes,
    })
}

/// An error and its sources, joined (tar's errors hide the cause in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A kernel and initrd pair found in the rootfs's `/boot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPair {
    /// Kernel version (`6.1.0-28-amd64`).
    pub version: String,
    /// `/boot/vmlinuz-<version>` on the unpacked tree.
    pub kernel: PathBuf,
    /// `/boot/initrd.img-<version>` on the unpacked tree.
    pub initrd: PathBuf,
}

/// Picks the kernel: the newest `vmlinuz-*` (by version-aware name order) with a matching initrd.
///
/// # Errors
/// [`LayoutError::Rootfs`] when `/boot` has no kernel with an initrd.
pub fn find_kernel(tree: &Path, archive: &Path) -> Result<KernelPair, LayoutError> {
    let boot = tree.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(String::from)
                })
                .filter(|v| boot.join(format!("initrd.img-{v}")).is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by(|a, b| compare_versions(a, b));
    let version = versions.pop().ok_or_else(|| LayoutError::Rootfs {
        path: archive.to_path_buf(),
        message: "no /boot/vmlinuz-<version> with a matching /boot/initrd.img-<version> (install linux-image-amd64 and initramfs-tools)".into(),
    })?;
    Ok(KernelPair {
        kernel: boot.join(format!("vmlinuz-{version}")),
        initrd: boot.join(format!("initrd.img-{version}")),
        version,
    })
}

/// Orders version strings by their runs of digits numerically and the rest as text.
#[must_use]
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (x, y) = (split(a), split(b));
    for (p, q) in x.iter().zip(&y) {
        let o = if p.0 && q.0 {
            let (m, n) = (p.1.trim_start_matches('0'), q.1.trim_start_matches('0'));
            m.len().cmp(&n.len()).then(m.cmp(n))
        } else {
            p.1.cmp(q.1)
        };
        if o.is_ne() {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

/// systemd-boot's EFI binary: from the rootfs, else from the build host.
///
/// # Errors
/// [`LayoutError::MissingFile`] when neither has it.
pub fn find_systemd_boot(tree: &Path) -> Result<PathBuf, LayoutError> {
    let inside = tree.join(SYSTEMD_BOOT_EFI);
    if inside.is_file() {
        return Ok(inside);
    }
    let host = Path::new("/").join(SYSTEMD_BOOT_EFI);
    if host.is_file() {
        return Ok(host);
    }
    Err(LayoutError::MissingFile {
        path: PathBuf::from("/").join(SYSTEMD_BOOT_EFI),
        package: "systemd-boot-efi".into(),
        purpose:
            "install the boot loader on the ESP (neither the rootfs nor the build host has it)"
                .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn epoch_comes_from_the_manifest_beside_the_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("rootfs.tar.zst");
        let err = epoch_of_manifest_beside(&archive).unwrap_err().to_string();
        assert!(
            err.contains("SOURCE_DATE_EPOCH") && err.contains("manifest.json"),
            "{err}"
        );
        std::fs::write(dir.path().join(ROOTFS_MANIFEST), "{\"name\": \"x\"}").expect("write");
        let err = epoch_of_manifest_beside(&archive).unwrap_err().to_string();
        assert!(err.contains("source_date_epoch"), "{err}");
        std::fs::write(
            dir.path().join(ROOTFS_MANIFEST),
            "{\"source_date_epoch\": 1735689600, \"files\": []}",
        )
        .expect("write");
        assert_eq!(
            epoch_of_manifest_beside(&archive).expect("epoch"),
            1_735_689_600
        );
    }

    #[test]
    fn kernel_versions_sort_numerically() {
        assert_eq!(
            compare_versions("6.1.0-9-amd64", "6.1.0-28-amd64"),
            Ordering::Less
        );
        assert_eq!(
            compare_versions("6.10.0-1-amd64", "6.9.0-1-amd64"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("6.1.0", "6.1.0"), Ordering::Equal);
    }
}
