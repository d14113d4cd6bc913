//! Stage 3, finalise: streams the tree into `rootfs.tar.zst` and describes it in a manifest.
//!
//! Deterministic by construction: entries in byte order of their paths (parents first), numeric
//! owners without names, every mtime clamped to `SOURCE_DATE_EPOCH`, GNU headers with fixed
//! fields, one zstd level ([`ZSTD_LEVEL`]) on one thread, no xattrs.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::BuildError;
use crate::tree::{Kind, Tree};

/// zstd level of `rootfs.tar.zst` (fixed, so the output does not depend on defaults).
pub const ZSTD_LEVEL: i32 = 3;

/// One path of the image as recorded in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path without a leading `/`.
    pub path: String,
    /// `file`, `dir`, `symlink`, `char`, `block` or `fifo`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Octal permission bits, e.g. `"0644"`.
    pub mode: String,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Size in bytes (files only; 0 otherwise).
    pub size: u64,
    /// Modification time after clamping.
    pub mtime: u64,
    /// sha256 of the content (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target (symlinks) or `major:minor` (devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `manifest.json`: the image identity and every path in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// The clamp applied to every time stamp.
    pub source_date_epoch: u64,
    /// `[image].seed` (or `name-version`): what the disk layout derives its UUIDs from.
    #[serde(default)]
    pub seed: String,
    /// Key of the customise stage (identifies all inputs).
    pub inputs_sha256: String,
    /// Every path, sorted.
    pub files: Vec<ManifestEntry>,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Identity of the image written into the manifest.
#[derive(Debug, Clone)]
pub struct ImageId {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Clamp for time stamps.
    pub source_date_epoch: u64,
    /// Seed for derived identifiers.
    pub seed: String,
    /// Stage key of the inputs.
    pub inputs_sha256: String,
}

/// Writes the tree as a zstd-compressed tar to `out` and returns its manifest.
pub fn write_rootfs(tree: &Tree, out: &Path, id: &ImageId) -> Result<Manifest, BuildError> {
    let io_err = |source| BuildError::Io {
        what: "write",
        path: out.to_owned(),
        source,
    };
    // The archive holds /etc/shadow and the bootstrap token: owner-only.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(io_err)?;
    let mut enc = zstd::Encoder::new(BufWriter::new(file), ZSTD_LEVEL).map_err(io_err)?;
    enc.include_checksum(true).map_err(io_err)?;
    let mut builder = tar::Builder::new(enc);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut files = Vec::with_capacity(tree.nodes.len());
    for (path, node) in &tree.nodes {
        let mtime = node.mtime.min(id.source_date_epoch);
        let mut h = tar::Header::new_gnu();
        h.set_mode(node.mode & 0o7777);
        h.set_uid(u64::from(node.uid));
        h.set_gid(u64::from(node.gid));
        h.set_mtime(mtime);
        h.set_size(0);
        let mut entry = ManifestEntry {
            path: path.clone(),
            kind: node.kind.type_name().into(),
            mode: format!("{:04o}", node.mode & 0o7777),
            uid: node.uid,
            gid: node.gid,
            size: 0,
            mtime,
            sha256: None,
            target: None,
        };
        let entry_err = |source: io::Error| BuildError::Io {
            what: "archive",
            path: Path::new("/").join(path),
            source,
        };
        match &node.kind {
            Kind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len());
                let mut r = HashingReader {
                    inner: tree.open(data).map_err(entry_err)?,
                    hasher: Sha256::new(),
                    count: 0,
                };
                builder
                    .append_data(&mut h, path, &mut r)
                    .map_err(entry_err)?;
                if r.count != data.len() {
                    return Err(entry_err(io::Error::other(format!(
                        "changed size while archiving ({} != {})",
                        r.count,
                        data.len()
                    ))));
                }
                entry.size = r.count;
                entry.sha256 = Some(hex::encode(r.hasher.finalize()));
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                builder
                    .append_data(&mut h, format!("{path}/"), io::empty())
                    .map_err(entry_err)?;
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                builder
                    .append_link(&mut h, path, target)
                    .map_err(entry_err)?;
                entry.target = Some(target.clone());
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                let ty = if matches!(node.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                h.set_entry_type(ty);
                h.set_device_major(*major).map_err(entry_err)?;
                h.set_device_minor(*minor).map_err(entry_err)?;
                builder
                    .append_data(&mut h, path, io::empty())
                    .map_err(entry_err)?;
                entry.target = Some(format!("{major}:{minor}"));
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                builder
                    .append_data(&mut h, path, io::empty())
                    .map_err(entry_err)?;
            }
        }
        files.push(entry);
    }
    let enc = builder.into_inner().map_err(io_err)?;
    let mut w = enc.finish().map_err(io_err)?;
    w.flush().map_err(io_err)?;
    let file = w.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(Manifest {
        name: id.name.clone(),
        version: id.version.clone(),
        source_date_epoch: id.source_date_epoch,
        seed: id.seed.clone(),
        inputs_sha256: id.inputs_sha256.clone(),
        files,
    })
}

/// Writes `value` as pretty JSON (with a final newline) to `path` and fsyncs it.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BuildError> {
    let io_err = |source| BuildError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| io_err(io::Error::other(e)))?;
    bytes.push(b'\n');
    let mut f = File::create(path).map_err(io_err)?;
    f.write_all(&bytes).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

/// Reads a `rootfs.tar.zst` back into a manifest (used by `diff` on bare archives).
pub fn manifest_of_archive(path: &Path) -> Result<Vec<ManifestEntry>, BuildError> {
    let io_err = |source| BuildError::Io {
        what: "read archive",
        path: path.to_owned(),
        source,
    };
    let dec = zstd::Decoder::new(File::open(path).map_err(io_err)?).map_err(io_err)?;
    let mut archive = tar::Archive::new(dec);
    let mut out = Vec::new();
    for e in archive.entries().map_err(io_err)? {
        let mut e = e.map_err(io_err)?;
        let p = String::from_utf8_lossy(&e.path_bytes())
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        let h = e.header().clone();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let (kind, target) = match h.entry_type() {
            tar::EntryType::Directory => ("dir", None),
            tar::EntryType::Symlink => ("symlink", link),
            tar::EntryType::Char | tar::EntryType::Block => (
                if h.entry_type() == tar::EntryType::Char {
                    "char"
                } else {
                    "block"
                },
                Some(format!(
                    "{}:{}",
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0)
                )),
            ),
            tar::EntryType::Fifo => ("fifo", None),
            _ => ("file", None),
        };
        let mut sha = None;
        let mut size = 0;
        if kind == "file" {
            let mut hasher = Sha256::new();
            size = io::copy(&mut e, &mut HasherWriter(&mut hasher)).map_err(io_err)?;
            sha = Some(hex::encode(hasher.finalize()));
        }
        out.push(ManifestEntry {
            path: p,
            kind: kind.into(),
            mode: format!("{:04o}", h.mode().unwrap_or(0) & 0o7777),
            uid: u32::try_from(h.uid().unwrap_or(0)).unwrap_or(u32::MAX),
            gid: u32::try_from(h.gid().unwrap_or(0)).unwrap_or(u32::MAX),
            size,
            mtime: h.mtime().unwrap_or(0),
            sha256: sha,
            target,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

struct HasherWriter<'a>(&'a mut Sha256);

impl Write for HasherWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
