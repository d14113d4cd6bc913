//! Crash-safe file writes for the state directory.
//!
//! Every file the collector keeps is written the same way: a temporary file next to the
//! target, created with its final mode, filled, `fsync`ed, renamed over the target, and the
//! directory `fsync`ed. A power cut leaves either the old or the new content, never a mix.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of files holding secrets or identity (key, certificate).
pub const MODE_PRIVATE: u32 = 0o600;
/// Mode of the state directory and its sub-directories.
pub const MODE_DIR: u32 = 0o700;

/// A file operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Creating a directory failed.
    #[error("failed to create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Writing (or syncing, or renaming into place) a file failed.
    #[error("failed to write {}: {source}", path.display())]
    Write {
        /// The target file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// Creates `dir` (and parents) with mode 0700 when missing.
///
/// # Errors
/// [`FileError::CreateDir`] naming the directory.
pub fn ensure_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE_DIR)
        .create(dir)
        .map_err(|source| FileError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` atomically with file mode `mode` (temp file, fsync, rename,
/// fsync of the directory).
///
/// # Errors
/// [`FileError::Write`] naming the target when any step fails; the target is then unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    // A temp file left by a crash would keep its old mode; start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode further; never widened, but make it exact.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The temporary name used while writing `path`: `.NAME.tmp` in the same directory, so the
/// rename stays on one file system. Outbox listings skip names starting with a dot.
#[must_use]
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// `fsync`s the directory holding `path`, so a rename or delete in it is durable.
///
/// # Errors
/// The I/O error of opening or syncing the directory.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

/// Reads a file, mapping "not found" to `None`.
///
/// # Errors
/// Any other I/O error.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_sets_mode_and_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.pem");
        write_atomic(&p, b"one", MODE_PRIVATE).unwrap();
        write_atomic(&p, b"two", MODE_PRIVATE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temp_path(&p).exists());
    }

    #[test]
    fn write_atomic_names_the_target_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("x.json");
        let e = write_atomic(&p, b"{}", 0o644).unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
    }

    #[test]
    fn read_optional_maps_not_found() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_optional(&dir.path().join("nope")).unwrap().is_none());
    }
}
