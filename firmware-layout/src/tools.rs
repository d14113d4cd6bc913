//! External tools: finding them on PATH before any long work, and running them with errors that
//! say which tool failed on which file.

use crate::error::LayoutError;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An external command, the Debian package that provides it, and why it is needed.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Command name.
    pub name: &'static str,
    /// Debian package.
    pub package: &'static str,
    /// What it is used for (for the error message).
    pub purpose: &'static str,
}

/// `mkfs.ext4`.
pub const MKFS_EXT4: Tool = Tool {
    name: "mkfs.ext4",
    package: "e2fsprogs",
    purpose: "make ext4 file systems",
};
/// `debugfs`, to pin inode times.
pub const DEBUGFS: Tool = Tool {
    name: "debugfs",
    package: "e2fsprogs",
    purpose: "pin ext4 inode times",
};
/// `tune2fs`, to give the second root slot its own label and UUID.
pub const TUNE2FS: Tool = Tool {
    name: "tune2fs",
    package: "e2fsprogs",
    purpose: "relabel the copy of the first root slot",
};
/// `mkfs.vfat`.
pub const MKFS_VFAT: Tool = Tool {
    name: "mkfs.vfat",
    package: "dosfstools",
    purpose: "make the ESP",
};
/// `mkfs.erofs`.
pub const MKFS_EROFS: Tool = Tool {
    name: "mkfs.erofs",
    package: "erofs-utils",
    purpose: "make erofs file systems",
};
/// `mcopy`.
pub const MCOPY: Tool = Tool {
    name: "mcopy",
    package: "mtools",
    purpose: "copy files into the ESP",
};
/// `mmd`.
pub const MMD: Tool = Tool {
    name: "mmd",
    package: "mtools",
    purpose: "make directories in the ESP",
};
/// `mdir`.
pub const MDIR: Tool = Tool {
    name: "mdir",
    package: "mtools",
    purpose: "list boot entries in the ESP",
};
/// `mtype`.
pub const MTYPE: Tool = Tool {
    name: "mtype",
    package: "mtools",
    purpose: "read boot entries from the ESP",
};
/// `qemu-img`.
pub const QEMU_IMG: Tool = Tool {
    name: "qemu-img",
    package: "qemu-utils",
    purpose: "convert the raw image to qcow2/vhdx/vmdk",
};
/// `qemu-system-x86_64`.
pub const QEMU_SYSTEM: Tool = Tool {
    name: "qemu-system-x86_64",
    package: "qemu-system-x86",
    purpose: "boot the image",
};

/// What identifies the installed `tools`, one line each, for cache keys (the same bytes need
/// the same tools): the sha256 of the executable and the first line its version flag prints
/// (e2fsprogs' shared library version shows there).
#[must_use]
pub fn versions(tools: &[Tool]) -> String {
    use sha2::{Digest, Sha256};
    let mut out = String::new();
    for t in tools {
        let binary = find_on_path(t.name)
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| hex::encode(Sha256::digest(b)))
            .unwrap_or_else(|| "missing".into());
        let flag = if t.name == QEMU_IMG.name {
            "--version"
        } else {
            "-V"
        };
        let version = Command::new(t.name)
            .arg(flag)
            .stdin(std::process::Stdio::null())
            .output()
            .map(|o| {
                let mut all = String::from_utf8_lossy(&o.stdout).into_owned();
                all.push_str(&String::from_utf8_lossy(&o.stderr));
                all.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        out.push_str(&format!("{} {binary} {version}\n", t.name));
    }
    out
}

/// Finds an executable named `name` on PATH.
#[must_use]
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks that every tool is installed; the error names the first missing one and its package.
///
/// # Errors
/// [`LayoutError::MissingTool`].
pub fn require(tools: &[Tool]) -> Result<(), LayoutError> {
    for t in tools {
        if find_on_path(t.name).is_none() {
            return Err(LayoutError::MissingTool {
                tool: t.name.into(),
                package: t.package.into(),
                purpose: t.purpose.into(),
            });
        }
    }
    Ok(())
}

/// The effective user id of this process (from `/proc/self/status`), if it can be read.
#[must_use]
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective_uid(&status)
}

/// The effective uid from the `Uid:` line of a `/proc/PID/status` text (real, effective,
/// saved, file system).
#[must_use]
pub fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
}

/// Checks that this process runs as root (`why` says what needs it).
///
/// # Errors
/// [`LayoutError::NotRoot`] when the effective uid is known and not 0.
pub fn require_root(why: &str) -> Result<(), LayoutError> {
    match effective_uid() {
        Some(uid) if uid != 0 => Err(LayoutError::NotRoot {
            uid,
            why: why.into(),
        }),
        _ => Ok(()),
    }
}

/// Runs `cmd` to completion; on failure the error names the tool, `doing` and stderr's tail.
/// Returns stdout.
///
/// # Errors
/// [`LayoutError::MissingTool`] if it cannot start, [`LayoutError::ToolFailed`] on a non-zero exit.
pub fn run(tool: Tool, cmd: &mut Command, doing: &str) -> Result<Vec<u8>, LayoutError> {
    tracing::debug!(tool = tool.name, args = ?cmd.get_args().map(OsStr::to_string_lossy).collect::<Vec<_>>(), "running");
    let out = cmd.output().map_err(|_| LayoutError::MissingTool {
        tool: tool.name.into(),
        package: tool.package.into(),
        purpose: tool.purpose.into(),
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .trim()
        .lines()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    Err(LayoutError::ToolFailed {
        tool: tool.name.into(),
        doing: doing.into(),
        status: out.status.to_string(),
        stderr: tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
        assert!(
            effective_uid().is_some(),
            "/proc/self/status has a Uid line"
        );
    }
}
