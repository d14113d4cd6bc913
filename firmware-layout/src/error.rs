//! The crate's error type: every variant names what failed and where (file, key, tool).

use std::path::PathBuf;

/// Everything `outpost-layout` can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// Reading the layout file failed.
    #[error("cannot read layout {path}: {source}")]
    Read {
        /// The layout file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The layout file is larger than any sane layout.
    #[error("layout {path} is larger than {limit} bytes")]
    TooLarge {
        /// The layout file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// The layout is not valid TOML for the format (unknown key, wrong type, bad size).
    #[error("layout {path}: {message}")]
    Parse {
        /// The layout file.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// The layout parsed but is inconsistent (overlap, misalignment, bad label, ...).
    #[error("layout {path}: {key}: {message}")]
    Invalid {
        /// The layout file.
        path: PathBuf,
        /// The offending key, e.g. `partition[1].start`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A partition is too small for what goes in it (checked before any file system is made).
    #[error(
        "layout {path}: {key}: {what} needs about {needed} bytes but the partition has {available}"
    )]
    TooSmall {
        /// The layout file.
        path: PathBuf,
        /// The partition's size key.
        key: String,
        /// What goes in (e.g. "the root file system from rootfs.tar.zst").
        what: String,
        /// Estimated bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// An external tool is not installed.
    #[error("{tool} not found on PATH (needed to {purpose}; Debian package {package})")]
    MissingTool {
        /// The command.
        tool: String,
        /// The Debian package providing it.
        package: String,
        /// What it is needed for.
        purpose: String,
    },
    /// A required file (OVMF firmware, systemd-boot) is missing.
    #[error("{path} not found (needed to {purpose}; Debian package {package})")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// The Debian package providing it.
        package: String,
        /// What it is needed for.
        purpose: String,
    },
    /// An external tool ran and failed.
    #[error("{tool} failed ({status}) while {doing}: {stderr}")]
    ToolFailed {
        /// The command.
        tool: String,
        /// What it was doing, with the file it worked on.
        doing: String,
        /// Exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The operation ("create", "write", "rename", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The root file system archive is unusable (bad entry, missing kernel, too big).
    #[error("rootfs {path}: {message}")]
    Rootfs {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading a partition table failed.
    #[error(transparent)]
    Gpt(#[from] crate::gpt::GptError),
    /// The process is not root where root is needed.
    #[error("must run as root to {why} (running as uid {uid}); use sudo")]
    NotRoot {
        /// The effective uid.
        uid: u32,
        /// What needs root.
        why: String,
    },
    /// A command-line value is invalid.
    #[error("{flag}: {message}")]
    Usage {
        /// The flag, e.g. `--format`.
        flag: String,
        /// What is wrong.
        message: String,
    },
}

impl LayoutError {
    /// Shorthand for [`LayoutError::Io`].
    pub fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LayoutError {
        let path = path.into();
        move |source| LayoutError::Io { op, path, source }
    }
}
