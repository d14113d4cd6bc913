//! The build cache: partition images, each stored under the sha256 of everything its bytes
//! depend on, so a rebuild with the same inputs copies instead of running mkfs, and a rebuild
//! with one changed input (a new root file system) rebuilds only the partitions that hold it.
//!
//! Layout of the cache directory (mode 0700: images hold /etc/shadow and the bootstrap token):
//!
//! ```text
//! parts/<label>/<key>.img       one partition's file system (the last one built only)
//! ```
//!
//! A cache hit gives the same bytes as a build without the cache: every key covers the tool
//! versions, the layout text, the root file system archive's sha256, the epoch and
//! [`CACHE_VERSION`], which is bumped whenever this crate changes what it writes. Entries are
//! written under a temporary name and renamed, so an interrupted build never leaves a partial
//! entry under a key; older entries of the same partition are removed once a new one is
//! stored, so the cache holds one generation (about the allocated size of one image).

use crate::error::LayoutError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bumped whenever the bytes this crate writes for the same inputs change.
pub const CACHE_VERSION: &str = "outpost-layout-cache-v2";

/// The default cache directory: `$XDG_CACHE_HOME/outpost-layout` or `~/.cache/outpost-layout`.
#[must_use]
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("outpost-layout"))
}

/// A key under construction: labelled lines hashed with sha256.
#[derive(Clone)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// Starts a key for `what` (`image`, `partition`), with [`CACHE_VERSION`].
    #[must_use]
    pub fn new(what: &str) -> Self {
        let mut h = Sha256::new();
        h.update(format!("{CACHE_VERSION} {what}\n"));
        KeyBuilder(h)
    }

    /// Adds a labelled value.
    #[must_use]
    pub fn with(mut self, label: &str, value: impl AsRef<[u8]>) -> Self {
        let v = value.as_ref();
        self.0.update(format!("{label} {}\n", v.len()));
        self.0.update(v);
        self.0.update(b"\n");
        self
    }

    /// The key, 64 hex digits.
    #[must_use]
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// sha256 of a file's bytes, hex.
///
/// # Errors
/// Reading fails.
pub fn sha256_of_file(path: &Path) -> Result<String, LayoutError> {
    let mut f = File::open(path).map_err(LayoutError::io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(LayoutError::io("read", path))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// sha256 over a directory tree: every path (in [`crate::fsbuild::walk`]'s order), its mode,
/// and a file's content or a symlink's target.
///
/// # Errors
/// Listing or reading fails.
pub fn sha256_of_tree(root: &Path) -> Result<String, LayoutError> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    for rel in crate::fsbuild::walk(root)? {
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).map_err(LayoutError::io("stat", &path))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update(format!(" {:o}\n", meta.permissions().mode()));
        if meta.is_file() {
            h.update(sha256_of_file(&path)?);
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(LayoutError::io("read", &path))?;
            h.update(target.to_string_lossy().as_bytes());
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// An open cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

fn create_private_dir(dir: &Path) -> Result<(), LayoutError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(LayoutError::io("create cache directory", dir))
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Removes every entry of `dir` but `keep` and temporaries of live processes.
fn prune(dir: &Path, keep: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == keep {
            continue;
        }
        if let Some(rest) = name.strip_prefix(".tmp-") {
            let pid = rest.split('-').next().unwrap_or("");
            if Path::new("/proc").join(pid).exists() {
                continue;
            }
        }
        let p = e.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

impl Cache {
    /// Opens (creating, mode 0700) the cache directory.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path) -> Result<Cache, LayoutError> {
        create_private_dir(dir)?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn part_path(&self, label: &str, key: &str) -> PathBuf {
        self.dir
            .join("parts")
            .join(label)
            .join(format!("{key}.img"))
    }

    /// A cached partition image, if there is one for `key`.
    #[must_use]
    pub fn part(&self, label: &str, key: &str) -> Option<PathBuf> {
        let p = self.part_path(label, key);
        p.is_file().then_some(p)
    }

    /// Stores a copy of a partition image under `key` (synced, then renamed), replacing older
    /// ones of the same label.
    ///
    /// # Errors
    /// Copying fails (nothing is left under the key then).
    pub fn store_part(&self, label: &str, key: &str, file: &Path) -> Result<PathBuf, LayoutError> {
        let parent = self.dir.join("parts").join(label);
        create_private_dir(&parent)?;
        let tmp = parent.join(format!(".tmp-{}", unique_suffix()));
        if let Err(e) = copy_file_sparse(file, &tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let dst = self.part_path(label, key);
        std::fs::rename(&tmp, &dst).map_err(LayoutError::io("store in cache", &dst))?;
        prune(&parent, &format!("{key}.img"));
        Ok(dst)
    }
}

/// Where the data of a sparse file is: `(offset, length)` runs, found with `SEEK_DATA` and
/// `SEEK_HOLE` (one run for the whole file where the file system does not report holes).
///
/// # Errors
/// Seeking fails for another reason than the end of the file.
pub fn data_runs(f: &File, path: &Path) -> Result<Vec<(u64, u64)>, LayoutError> {
    use rustix::fs::{seek, SeekFrom as Whence};
    use rustix::io::Errno;
    let len = f.metadata().map_err(LayoutError::io("stat", path))?.len();
    let mut runs = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let data = match seek(f, Whence::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // no data after pos
            Err(Errno::INVAL) => return Ok(vec![(0, len)]), // not supported: all data
            Err(e) => return Err(LayoutError::io("seek in", path)(e.into())),
        };
        let hole = seek(f, Whence::Hole(data))
            .map_err(|e| LayoutError::io("seek in", path)(e.into()))?
            .min(len);
        if hole > data {
            runs.push((data, hole - data));
        }
        pos = hole.max(data + 1);
    }
    Ok(runs)
}

const COPY_BLOCK: usize = 1 << 20;

/// Copies the data runs of `src` into `dst` at `offset` + their offset, skipping holes and
/// all-zero 64 KiB blocks, so `dst` stays sparse. `dst` must already be long enough or be
/// extended by the caller.
///
/// # Errors
/// Reading or writing fails.
pub fn copy_into(
    src: &Path,
    dst: &mut File,
    dst_path: &Path,
    offset: u64,
) -> Result<(), LayoutError> {
    static ZERO: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut f = File::open(src).map_err(LayoutError::io("open", src))?;
    let mut buf = vec![0u8; COPY_BLOCK];
    for (start, len) in data_runs(&f, src)? {
        f.seek(SeekFrom::Start(start))
            .map_err(LayoutError::io("seek in", src))?;
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from((len - done).min(COPY_BLOCK as u64)).unwrap_or(COPY_BLOCK);
            f.read_exact(&mut buf[..want])
                .map_err(LayoutError::io("read", src))?;
            for (i, chunk) in buf[..want].chunks(ZERO.len()).enumerate() {
                if chunk != &ZERO[..chunk.len()] {
                    let at = offset + start + done + (i * ZERO.len()) as u64;
                    dst.seek(SeekFrom::Start(at))
                        .map_err(LayoutError::io("seek in", dst_path))?;
                    dst.write_all(chunk)
                        .map_err(LayoutError::io("write", dst_path))?;
                }
            }
            done += want as u64;
        }
    }
    Ok(())
}

/// Copies a (sparse) file to a new file of the same length, keeping it sparse, and syncs it.
///
/// # Errors
/// Reading or writing fails.
pub fn copy_file_sparse(src: &Path, dst: &Path) -> Result<(), LayoutError> {
    let len = std::fs::metadata(src)
        .map_err(LayoutError::io("stat", src))?
        .len();
    let mut out = File::create(dst).map_err(LayoutError::io("create", dst))?;
    out.set_len(len).map_err(LayoutError::io("size", dst))?;
    copy_into(src, &mut out, dst, 0)?;
    out.sync_all().map_err(LayoutError::io("sync", dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_bytes_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        {
            let mut f = File::create(&src).expect("create");
            f.set_len(64 << 20).expect("len");
            f.seek(SeekFrom::Start(3 << 20)).expect("seek");
            f.write_all(&[7u8; 5000]).expect("write");
            f.seek(SeekFrom::Start((40 << 20) + 17)).expect("seek");
            f.write_all(b"tail").expect("write");
        }
        let dst = dir.path().join("dst");
        copy_file_sparse(&src, &dst).expect("copy");
        assert_eq!(
            std::fs::read(&src).expect("read"),
            std::fs::read(&dst).expect("read")
        );
        let f = File::open(&dst).expect("open");
        let data: u64 = data_runs(&f, &dst).expect("runs").iter().map(|r| r.1).sum();
        assert!(data < 4 << 20, "the copy is sparse ({data} bytes of data)");
    }

    #[test]
    fn keys_change_with_any_input_and_tree_hash_sees_content_and_modes() {
        let a = KeyBuilder::new("x").with("k", "v").finish();
        assert_eq!(a, KeyBuilder::new("x").with("k", "v").finish());
        assert_ne!(a, KeyBuilder::new("x").with("k", "w").finish());
        assert_ne!(a, KeyBuilder::new("y").with("k", "v").finish());
        // Label/value boundaries are not ambiguous.
        assert_ne!(
            KeyBuilder::new("x").with("ab", "c").finish(),
            KeyBuilder::new("x").with("a", "bc").finish()
        );

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("d/e")).expect("mkdir");
        std::fs::write(dir.path().join("d/e/f"), "one").expect("write");
        let h1 = sha256_of_tree(dir.path()).expect("hash");
        std::fs::write(dir.path().join("d/e/f"), "two").expect("write");
        let h2 = sha256_of_tree(dir.path()).expect("hash");
        assert_ne!(h1, h2);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("d/e/f"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        assert_ne!(h2, sha256_of_tree(dir.path()).expect("hash"));
    }

    #[test]
    fn stores_one_generation_per_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&dir.path().join("cache")).expect("open");
        let f1 = dir.path().join("p1");
        std::fs::write(&f1, "first").expect("write");
        let stored = cache.store_part("root-a", "k1", &f1).expect("store");
        assert_eq!(std::fs::read(&stored).expect("read"), b"first");
        assert_eq!(cache.part("root-a", "k1"), Some(stored));
        let f2 = dir.path().join("p2");
        std::fs::write(&f2, "second").expect("write");
        cache.store_part("root-a", "k2", &f2).expect("store");
        assert!(
            cache.part("root-a", "k1").is_none(),
            "old generation pruned"
        );
        assert!(cache.part("root-a", "k2").is_some());

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cache.dir())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
