//! Update bundles: one `tar` stream compressed with zstd holding `manifest.json` first and
//! then the files it lists (at least the root file-system image, `root.img`).
//!
//! The bundle is deterministic: entries in a fixed order, owner 0:0, mode 0644 and the
//! mtime of the manifest's `created` (from `SOURCE_DATE_EPOCH` when set). The same inputs
//! give the same bytes, so the bundle's sha256 in the TUF targets is reproducible.
//!
//! Readers never trust the tar headers alone: the manifest is size-capped, every path must
//! be relative without `..`, and the root image is hashed while it streams out and compared
//! with the manifest.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use aws_lc_rs::digest::{Context as Sha256, SHA256};
use serde::{Deserialize, Serialize};

/// Name of the manifest entry, always the first in the archive.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Name of the root file-system image inside the bundle.
pub const ROOT_IMAGE_NAME: &str = "root.img";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Bundle format version written into the manifest.
pub const FORMAT: u32 = 1;
/// zstd level used for new bundles.
const ZSTD_LEVEL: i32 = 3;

/// What a bundle contains, stored as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format version ([`FORMAT`]).
    pub format: u32,
    /// Semantic version of the software in the bundle.
    pub version: String,
    /// When the bundle was built, unix seconds (`SOURCE_DATE_EPOCH` when set).
    pub created: u64,
    /// Path (inside the bundle) of the root file-system image.
    pub root_image: String,
    /// Every file of the bundle except the manifest itself.
    pub files: Vec<ManifestFile>,
}

/// One file listed in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Relative path inside the bundle.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}

impl Manifest {
    /// The entry of the root image.
    ///
    /// # Errors
    /// [`BundleError::InvalidManifest`] when `root_image` is not listed in `files`.
    pub fn root_entry(&self) -> Result<&ManifestFile, BundleError> {
        self.files
            .iter()
            .find(|f| f.path == self.root_image)
            .ok_or_else(|| BundleError::InvalidManifest {
                reason: format!("root_image {:?} is not listed in files", self.root_image),
            })
    }

    /// Checks the manifest without touching the disk: format, semver version, safe paths,
    /// sha256 shape, root image listed.
    ///
    /// # Errors
    /// [`BundleError::InvalidManifest`] or [`BundleError::UnsafePath`].
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(BundleError::InvalidManifest {
                reason: format!(
                    "format {} is not supported (expected {FORMAT})",
                    self.format
                ),
            });
        }
        semver::Version::parse(&self.version).map_err(|e| BundleError::InvalidManifest {
            reason: format!("version {:?} is not semver: {e}", self.version),
        })?;
        for f in &self.files {
            check_entry_path(Path::new(&f.path))?;
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BundleError::InvalidManifest {
                    reason: format!("sha256 of {:?} is not 64 hex digits", f.path),
                });
            }
        }
        self.root_entry().map(|_| ())
    }
}

/// Creating or reading a bundle failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file could not be read, written or renamed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`read root image`, `write bundle`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The version given to [`create`] is not semver.
    #[error("version {version:?} is not a semantic version: {reason}")]
    BadVersion {
        /// The rejected version.
        version: String,
        /// Why.
        reason: String,
    },
    /// The archive does not start with a readable manifest.
    #[error("bundle {}: {reason}", path.display())]
    BadArchive {
        /// The bundle.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest is well-formed JSON but says something impossible.
    #[error("invalid bundle manifest: {reason}")]
    InvalidManifest {
        /// What is wrong.
        reason: String,
    },
    /// A path in the archive or manifest is absolute or climbs with `..`.
    #[error("unsafe path {path:?} in bundle (absolute or with ..)")]
    UnsafePath {
        /// The path as found.
        path: String,
    },
    /// The root image streamed out differs from the manifest.
    #[error("root image {path:?} differs from the manifest: expected {expected_size} bytes sha256 {expected_sha256}, got {size} bytes sha256 {sha256}")]
    RootImageMismatch {
        /// Path inside the bundle.
        path: String,
        /// Size in the manifest.
        expected_size: u64,
        /// sha256 in the manifest.
        expected_sha256: String,
        /// Size streamed.
        size: u64,
        /// sha256 streamed.
        sha256: String,
    },
    /// Writing the root image to the caller's writer failed.
    #[error("writing the root image out of {}: {source}", bundle.display())]
    WriteOut {
        /// The bundle.
        bundle: PathBuf,
        /// The error of the writer.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses absolute paths, `..`, and anything but plain names.
///
/// # Errors
/// [`BundleError::UnsafePath`].
pub fn check_entry_path(p: &Path) -> Result<(), BundleError> {
    let ok = !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(BundleError::UnsafePath {
            path: p.display().to_string(),
        })
    }
}

/// The `created` time of a new bundle: `SOURCE_DATE_EPOCH` when set and valid, else now.
#[must_use]
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

/// Hashes a file: (size, lowercase hex sha256).
///
/// # Errors
/// [`BundleError::Io`].
pub fn hash_file(path: &Path) -> Result<(u64, String), BundleError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = HashingWriter::new(io::sink());
    io::copy(&mut BufReader::with_capacity(1 << 20, f), &mut hasher)
        .map_err(io_err("read", path))?;
    Ok(hasher.finish())
}

/// Builds a bundle at `out` holding `root_image` as `root.img`, stamped with `version` and
/// `SOURCE_DATE_EPOCH` (or now). Written to a temporary name next to `out`, fsynced, then
/// renamed, so `out` is never half-written.
///
/// # Errors
/// [`BundleError`] naming the file that failed, or a non-semver version.
pub fn create(out: &Path, version: &str, root_image: &Path) -> Result<Manifest, BundleError> {
    create_at(out, version, root_image, source_date_epoch())
}

/// [`create`] with an explicit `created` time (unix seconds).
///
/// # Errors
/// As [`create`].
pub fn create_at(
    out: &Path,
    version: &str,
    root_image: &Path,
    created: u64,
) -> Result<Manifest, BundleError> {
    semver::Version::parse(version).map_err(|e| BundleError::BadVersion {
        version: version.to_owned(),
        reason: e.to_string(),
    })?;
    let (size, sha256) = hash_file(root_image)?;
    let manifest = Manifest {
        format: FORMAT,
        version: version.to_owned(),
        created,
        root_image: ROOT_IMAGE_NAME.to_owned(),
        files: vec![ManifestFile {
            path: ROOT_IMAGE_NAME.to_owned(),
            size,
            sha256,
        }],
    };
    let manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::InvalidManifest {
            reason: e.to_string(),
        })?;
    let tmp = temp_name(out);
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let enc = zstd::Encoder::new(BufWriter::with_capacity(1 << 20, file), ZSTD_LEVEL)
            .map_err(io_err("start zstd for", &tmp))?;
        let mut tar = tar::Builder::new(enc);
        tar.mode(tar::HeaderMode::Deterministic);
        append(
            &mut tar,
            MANIFEST_NAME,
            manifest_json.len() as u64,
            created,
            &manifest_json[..],
        )
        .map_err(io_err("write", &tmp))?;
        let img = File::open(root_image).map_err(io_err("open", root_image))?;
        append(
            &mut tar,
            ROOT_IMAGE_NAME,
            size,
            created,
            BufReader::with_capacity(1 << 20, img),
        )
        .map_err(io_err("write", &tmp))?;
        let enc = tar.into_inner().map_err(io_err("finish tar", &tmp))?;
        let buf = enc.finish().map_err(io_err("finish zstd", &tmp))?;
        let file = buf.into_inner().map_err(|e| BundleError::Io {
            op: "flush",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        std::fs::rename(&tmp, out).map_err(io_err("rename into place", out))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| manifest)
}

fn append<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    mtime: u64,
    data: R,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.append(&h, data)
}

/// A temporary name in the same directory as `out`: `.NAME.tmp.PID`.
#[must_use]
pub fn temp_name(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

type Entries = tar::Archive<zstd::Decoder<'static, BufReader<File>>>;

fn open_archive(bundle: &Path) -> Result<Entries, BundleError> {
    let f = File::open(bundle).map_err(io_err("open", bundle))?;
    let dec = zstd::Decoder::new(f).map_err(|e| BundleError::BadArchive {
        path: bundle.to_path_buf(),
        reason: format!("not zstd: {e}"),
    })?;
    Ok(tar::Archive::new(dec))
}

fn bad(bundle: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::BadArchive {
        path: bundle.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_manifest_entry<R: Read>(
    bundle: &Path,
    entry: Option<io::Result<tar::Entry<'_, R>>>,
) -> Result<Manifest, BundleError> {
    let mut entry = entry
        .ok_or_else(|| bad(bundle, "empty archive"))?
        .map_err(|e| bad(bundle, format!("unreadable tar header: {e}")))?;
    let path = entry
        .path()
        .map_err(|e| bad(bundle, format!("unreadable entry path: {e}")))?
        .into_owned();
    if path != Path::new(MANIFEST_NAME) {
        return Err(bad(
            bundle,
            format!(
                "first entry is {:?}, expected {MANIFEST_NAME}",
                path.display()
            ),
        ));
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(bad(
            bundle,
            format!(
                "{MANIFEST_NAME} is {} bytes, more than the cap of {MAX_MANIFEST_BYTES}",
                entry.size()
            ),
        ));
    }
    let mut buf = Vec::new();
    (&mut entry)
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(bundle, format!("reading {MANIFEST_NAME}: {e}")))?;
    let m: Manifest = serde_json::from_slice(&buf).map_err(|e| {
        bad(
            bundle,
            format!("{MANIFEST_NAME} is not a valid manifest: {e}"),
        )
    })?;
    m.validate()?;
    Ok(m)
}

/// Reads and validates the manifest of a bundle (the first entry; capped at
/// [`MAX_MANIFEST_BYTES`]).
///
/// # Errors
/// [`BundleError`] when the file is not a bundle or the manifest is invalid.
pub fn read_manifest(bundle: &Path) -> Result<Manifest, BundleError> {
    let mut ar = open_archive(bundle)?;
    let mut entries = ar
        .entries()
        .map_err(|e| bad(bundle, format!("not a tar archive: {e}")))?;
    read_manifest_entry(bundle, entries.next())
}

/// Streams the root image out of `bundle` into `out`, hashing as it goes; returns
/// `(bytes, sha256 hex)`.
///
/// # Errors
/// [`BundleError::RootImageMismatch`] when size or sha256 differ from the manifest (the
/// caller must then discard what it wrote), [`BundleError::UnsafePath`] for a path with `..`
/// or absolute, [`BundleError::WriteOut`] when `out` fails.
pub fn stream_root_image(bundle: &Path, out: &mut dyn Write) -> Result<(u64, String), BundleError> {
    let mut ar = open_archive(bundle)?;
    let mut entries = ar
        .entries()
        .map_err(|e| bad(bundle, format!("not a tar archive: {e}")))?;
    let manifest = read_manifest_entry(bundle, entries.next())?;
    let want = manifest.root_entry()?.clone();
    for entry in entries {
        let entry = entry.map_err(|e| bad(bundle, format!("unreadable tar header: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(bundle, format!("unreadable entry path: {e}")))?
            .into_owned();
        check_entry_path(&path)?;
        if path != Path::new(&want.path) {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(bad(bundle, format!("{} is not a regular file", want.path)));
        }
        let mut w = HashingWriter::new(&mut *out);
        // Read at most one byte more than the manifest says, so a lying header cannot
        // make us write an unbounded amount.
        let copied = io::copy(&mut entry.take(want.size + 1), &mut w);
        if let Err(e) = copied {
            return Err(if w.write_failed {
                BundleError::WriteOut {
                    bundle: bundle.to_path_buf(),
                    source: e,
                }
            } else {
                bad(bundle, format!("reading {}: {e}", want.path))
            });
        }
        let (size, sha256) = w.finish();
        if size != want.size || sha256 != want.sha256 {
            return Err(BundleError::RootImageMismatch {
                path: want.path,
                expected_size: want.size,
                expected_sha256: want.sha256,
                size,
                sha256,
            });
        }
        return Ok((size, sha256));
    }
    Err(bad(
        bundle,
        format!("{} is missing from the archive", want.path),
    ))
}

/// A writer that hashes what passes through and counts it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
    write_failed: bool,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(&SHA256),
            count: 0,
            write_failed: false,
        }
    }

    /// Bytes written and their lowercase hex sha256.
    pub fn finish(self) -> (u64, String) {
        (self.count, hex::encode(self.hasher.finish()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .inner
            .write(buf)
            .inspect_err(|_| self.write_failed = true)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsafe_paths() {
        assert!(check_entry_path(Path::new("root.img")).is_ok());
        assert!(check_entry_path(Path::new("a/b.img")).is_ok());
        assert!(check_entry_path(Path::new("../x")).is_err());
        assert!(check_entry_path(Path::new("/etc/passwd")).is_err());
        assert!(check_entry_path(Path::new("a/../../x")).is_err());
        assert!(check_entry_path(Path::new("./x")).is_err());
        assert!(check_entry_path(Path::new("")).is_err());
    }
}
