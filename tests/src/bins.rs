//! Where the built `outpost-gateway` and `outpost-collector` binaries are.
//!
//! Search order: `$OUTPOST_BIN_DIR`; the directory of the running executable (for a test
//! under `target/debug/deps`, its parent `target/debug`); `$CARGO_TARGET_DIR/debug`; the
//! workspace's `target/debug`.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// File name of the gateway binary.
pub const GATEWAY: &str = "outpost-gateway";
/// File name of the collector binary.
pub const COLLECTOR: &str = "outpost-collector";
/// File name of the on-box update agent.
pub const UPDATER: &str = "outpost-updater";
/// File name of the feed publisher.
pub const FEED: &str = "outpost-feed";

/// Directories searched for the binaries, in order.
#[must_use]
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("OUTPOST_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(parent) = exe.parent() {
            if parent.file_name().is_some_and(|n| n == "deps") {
                if let Some(up) = parent.parent() {
                    dirs.push(up.to_path_buf());
                }
            } else {
                dirs.push(parent.to_path_buf());
            }
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(Path::new(&t).join("debug"));
    }
    // The workspace root is the parent of this crate's manifest directory.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(root) = manifest.parent() {
        dirs.push(root.join("target").join("debug"));
    }
    dirs
}

/// Path of a built binary of the workspace.
///
/// # Errors
/// When it is in none of the [`candidate_dirs`], with the hint to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dirs = candidate_dirs();
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "{name} not found (searched {}): run `cargo build --workspace --bins` first",
        searched.join(", ")
    )
}

/// Path of `outpost-gateway`.
///
/// # Errors
/// See [`binary`].
pub fn gateway() -> anyhow::Result<PathBuf> {
    binary(GATEWAY)
}

/// Path of `outpost-collector`.
///
/// # Errors
/// See [`binary`].
pub fn collector() -> anyhow::Result<PathBuf> {
    binary(COLLECTOR)
}

/// Runs the built binary `name` with `args` to completion (bounded by
/// [`crate::proc::CLI_TIMEOUT`]) and returns its standard output.
///
/// # Errors
/// When it is missing, overruns, or exits unsuccessfully (with its standard error).
pub fn run_ok(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new(binary(name)?);
    cmd.args(args);
    let out = crate::proc::run_bounded(cmd, crate::proc::CLI_TIMEOUT)?;
    if !out.status.success() {
        bail!("{name} {args:?} failed ({}): {}", out.status, out.stderr);
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_says_how_to_build_it() {
        let e = binary("outpost-no-such-binary").unwrap_err().to_string();
        assert!(e.contains("outpost-no-such-binary not found"), "{e}");
        assert!(e.contains("cargo build --workspace --bins"), "{e}");
    }
}
