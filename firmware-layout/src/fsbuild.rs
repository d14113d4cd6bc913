//! Making file systems from directories without mounting, with every identifier and time pinned:
//! ext4 (`mkfs.ext4 -d`, then `debugfs -w` to pin atime/ctime/crtime, which mkfs copies from the
//! source tree), vfat (`mkfs.vfat --invariant`, volume id patched in, files added with `mcopy -m`)
//! and erofs (`mkfs.erofs -T -U`). Each writes a standalone file the size of its partition.

use crate::error::LayoutError;
use crate::guid::Guid;
use crate::tools::{self, DEBUGFS, MCOPY, MKFS_EROFS, MKFS_EXT4, MKFS_VFAT, TUNE2FS};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to put in an ext4 file system.
#[derive(Debug)]
pub struct Ext4Spec<'a> {
    /// Volume label.
    pub label: &'a str,
    /// File-system UUID.
    pub uuid: Guid,
    /// Directory-hash seed.
    pub hash_seed: Guid,
    /// Source tree (`None`: empty file system).
    pub source: Option<&'a Path>,
    /// Inode count to reserve (`None`: mkfs's default ratio).
    pub inodes: Option<u64>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
}

fn create_sized(path: &Path, size: u64) -> Result<(), LayoutError> {
    let f = File::create(path).map_err(LayoutError::io("create", path))?;
    f.set_len(size).map_err(LayoutError::io("size", path))
}

fn time_env(cmd: &mut Command, epoch: u64) -> &mut Command {
    cmd.env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
}

/// The mke2fs configuration used instead of the build host's `/etc/mke2fs.conf`, so the file
/// system's features do not depend on the host (Debian 12's defaults, without the size-based
/// usage types: block size, inode size and ratio are the same for every partition size).
pub const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,metadata_csum_seed,64bit,dir_nlink,extra_isize
\t}
";

/// Makes an ext4 file system of `size` bytes in the file `out` and pins every inode time.
///
/// # Errors
/// The tools are missing or fail; a file name cannot be expressed to debugfs.
pub fn make_ext4(out: &Path, size: u64, spec: &Ext4Spec<'_>) -> Result<(), LayoutError> {
    create_sized(out, size)?;
    let conf = out.with_extension("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(LayoutError::io("write", &conf))?;
    let mut cmd = Command::new(MKFS_EXT4.name);
    cmd.env("MKE2FS_CONFIG", &conf);
    time_env(&mut cmd, spec.epoch).args([
        "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-L", spec.label,
    ]);
    cmd.arg("-U").arg(spec.uuid.to_string());
    cmd.arg("-E").arg(format!(
        "hash_seed={},nodiscard,lazy_itable_init=0,lazy_journal_init=0",
        spec.hash_seed
    ));
    if let Some(n) = spec.inodes {
        cmd.arg("-N").arg(n.to_string());
    }
    if let Some(src) = spec.source {
        cmd.arg("-d").arg(src);
    }
    cmd.arg(out);
    let made = tools::run(
        MKFS_EXT4,
        &mut cmd,
        &format!("making ext4 {:?} in {}", spec.label, out.display()),
    );
    let _ = std::fs::remove_file(&conf);
    made?;
    pin_ext4_times(out, spec)
}

/// Gives the ext4 file system at byte `offset` of `image` (a copy of another slot's) its own
/// `label` and `uuid` with `tune2fs`, in place. Cheap: the `metadata_csum_seed` feature keeps
/// every checksum valid, so only the superblock changes; every other byte, the hash seed
/// included, stays the copied file system's.
///
/// # Errors
/// tune2fs is missing or fails.
pub fn relabel_ext4_at(
    image: &Path,
    offset: u64,
    label: &str,
    uuid: Guid,
    epoch: u64,
) -> Result<(), LayoutError> {
    let mut target = image.as_os_str().to_owned();
    target.push(format!("?offset={offset}"));
    let mut cmd = Command::new(TUNE2FS.name);
    time_env(&mut cmd, epoch)
        .arg("-L")
        .arg(label)
        .arg("-U")
        .arg(uuid.to_string())
        .arg(&target);
    tools::run(
        TUNE2FS,
        &mut cmd,
        &format!(
            "giving the copied slot at byte {offset} of {} its label and UUID",
            image.display()
        ),
    )
    .map(|_| ())
}

/// Quotes a path for debugfs's command parser.
fn debugfs_quote(rel: &Path) -> Option<String> {
    let s = rel.to_str()?;
    if s.contains(['"', '\n', '\r']) {
        return None;
    }
    Some(format!("\"/{s}\""))
}

/// Lists every path under `root` (relative; each directory's entries in name order, the same
/// order for the same tree), the root itself first as "".
///
/// # Errors
/// A directory cannot be listed or an entry cannot be stat'ed.
pub fn walk(root: &Path) -> Result<Vec<PathBuf>, LayoutError> {
    let mut out = vec![PathBuf::new()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(LayoutError::io("list", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(LayoutError::io("list", &dir))?;
        names.sort();
        for n in names {
            let child = rel.join(n);
            let meta = std::fs::symlink_metadata(root.join(&child))
                .map_err(LayoutError::io("stat", root.join(&child)))?;
            if meta.is_dir() {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    Ok(out)
}

/// Pins the inode times mkfs.ext4 does not take from [`Ext4Spec::epoch`] or the source tree,
/// through `debugfs -w` with one command file: every inode's ctime (which mkfs copies from the
/// source tree, where it is the unpacking time) and atime (which reading a file may have moved),
/// and all times of the root directory and lost+found (which mkfs makes itself). mtime comes
/// from the tree, where [`crate::rootfs::unpack_rootfs`] set it (clamped); crtime is mkfs's
/// `E2FSPROGS_FAKE_TIME`, the epoch.
fn pin_ext4_times(image: &Path, spec: &Ext4Spec<'_>) -> Result<(), LayoutError> {
    let mut paths = match spec.source {
        Some(src) => walk(src)?,
        None => vec![PathBuf::new()],
    };
    paths.push(PathBuf::from("lost+found"));
    let mut script = String::new();
    for rel in &paths {
        let q = debugfs_quote(rel).ok_or_else(|| LayoutError::Rootfs {
            path: spec.source.unwrap_or(Path::new("")).join(rel),
            message: "file names with '\"' or line breaks are not supported".into(),
        })?;
        let made_by_mkfs = rel.as_os_str().is_empty() || rel == Path::new("lost+found");
        let fields: &[(&str, u64)] = if made_by_mkfs {
            &[
                ("atime", spec.epoch),
                ("ctime", spec.epoch),
                ("crtime", spec.epoch),
                ("mtime", spec.epoch),
            ]
        } else {
            // atime too: reading a file after unpacking (the ESP's kernel copy, mkfs itself)
            // moves it, as the file's ctime is newer.
            &[("atime", spec.epoch), ("ctime", spec.epoch)]
        };
        for (field, value) in fields {
            script.push_str(&format!(
                "sif {q} {field} @{value}\nsif {q} {field}_extra 0\n"
            ));
        }
    }
    let script_path = image.with_extension("debugfs");
    std::fs::write(&script_path, script).map_err(LayoutError::io("write", &script_path))?;
    let mut cmd = Command::new(DEBUGFS.name);
    time_env(&mut cmd, spec.epoch)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image);
    let out = tools::run(
        DEBUGFS,
        &mut cmd,
        &format!("pinning inode times in {}", image.display()),
    );
    let _ = std::fs::remove_file(&script_path);
    out.map(|_| ())
}

/// Makes a FAT file system of `size` bytes in `out` holding `source`'s files. FAT32 from 64 MiB.
///
/// # Errors
/// The tools are missing or fail.
pub fn make_vfat(
    out: &Path,
    size: u64,
    label: &str,
    volume_id: u32,
    source: &Path,
    epoch: u64,
) -> Result<(), LayoutError> {
    create_sized(out, size)?;
    let fat_label: String = label.to_ascii_uppercase().chars().take(11).collect();
    let mut cmd = Command::new(MKFS_VFAT.name);
    time_env(&mut cmd, epoch).args(["--invariant", "-n", &fat_label]);
    if size >= 64 << 20 {
        cmd.args(["-F", "32"]);
    }
    cmd.arg(out);
    tools::run(
        MKFS_VFAT,
        &mut cmd,
        &format!("making vfat {label:?} in {}", out.display()),
    )?;
    set_fat_volume_id(out, volume_id)?;
    // mcopy -m keeps the source mtimes: pin them first.
    for rel in walk(source)? {
        let p = source.join(&rel);
        filetime::set_symlink_file_times(&p, ft(epoch), ft(epoch))
            .map_err(LayoutError::io("set times on", &p))?;
    }
    let mut names: Vec<_> = std::fs::read_dir(source)
        .map_err(LayoutError::io("list", source))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    if names.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(MCOPY.name);
    time_env(&mut cmd, epoch)
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(out)
        .args(["-s", "-m", "-Q"]);
    cmd.args(&names).arg("::/");
    tools::run(
        MCOPY,
        &mut cmd,
        &format!(
            "copying {} into the ESP {}",
            source.display(),
            out.display()
        ),
    )?;
    Ok(())
}

fn ft(epoch: u64) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(i64::try_from(epoch).unwrap_or(i64::MAX), 0)
}

/// Writes `id` into the boot sector (and FAT32's backup boot sector): `mkfs.vfat --invariant`
/// pins every time but also fixes the id to 0x1234ABCD, so we put the derived one back.
fn set_fat_volume_id(path: &Path, id: u32) -> Result<(), LayoutError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(LayoutError::io("open", path))?;
    let mut bs = [0u8; 512];
    f.read_exact(&mut bs)
        .map_err(LayoutError::io("read", path))?;
    let fat32 = &bs[82..90] == b"FAT32   ";
    let at: u64 = if fat32 { 67 } else { 39 };
    let mut sectors = vec![0u64];
    if fat32 {
        let backup = u64::from(u16::from_le_bytes([bs[50], bs[51]]));
        if backup != 0 && backup != 0xffff {
            sectors.push(backup);
        }
    }
    for s in sectors {
        f.seek(SeekFrom::Start(s * 512 + at))
            .map_err(LayoutError::io("seek", path))?;
        f.write_all(&id.to_le_bytes())
            .map_err(LayoutError::io("write", path))?;
    }
    Ok(())
}

/// Makes an EROFS image of `source` in `out`; returns its size (it must fit the partition).
///
/// # Errors
/// The tool is missing or fails.
pub fn make_erofs(
    out: &Path,
    label: &str,
    uuid: Guid,
    source: &Path,
    epoch: u64,
) -> Result<u64, LayoutError> {
    let mut cmd = Command::new(MKFS_EROFS.name);
    time_env(&mut cmd, epoch)
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{uuid}"))
        .arg(format!("-L{label}"));
    cmd.arg(out).arg(source);
    tools::run(
        MKFS_EROFS,
        &mut cmd,
        &format!("making erofs {label:?} in {}", out.display()),
    )?;
    Ok(std::fs::metadata(out)
        .map_err(LayoutError::io("stat", out))?
        .len())
}

/// Estimated bytes an ext4 file system needs for a tree: data, inode table, journal, and ~7%
/// for reserved blocks, bitmaps and group descriptors of a partition of `size` bytes.
#[must_use]
pub fn ext4_needed_bytes(data_bytes: u64, inodes: u64, size: u64) -> u64 {
    let journal = match size {
        s if s < 128 << 20 => 4 << 20,
        s if s < 1 << 30 => 16 << 20,
        s if s < 2 << 30 => 32 << 20,
        s if s < 16 << 30 => 64 << 20,
        _ => 128 << 20,
    };
    data_bytes + inodes * 256 + journal + size / 100 * 7
}

/// Inodes to reserve for a tree of `entries` entries: 25% more plus 1024, so the root can grow.
#[must_use]
pub fn ext4_inode_count(entries: u64) -> u64 {
    entries + entries / 4 + 1024
}
