//! Host-side inputs of a recipe: overlay directories, `[[file]]` sources, the Outpost binaries,
//! the CA certificate and the bootstrap token. Gathered (and size-capped) once, before any long
//! work, so a missing file is reported at once; their content hashes feed the stage keys.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::BuildError;
use crate::recipe::{expand_path, Recipe};

/// Largest single input file (binaries included).
pub const MAX_INPUT_FILE: u64 = 512 * 1024 * 1024;
/// Largest small text input (certificate, token, feed root, `[[file]]` content).
pub const MAX_SMALL_FILE: u64 = 16 * 1024 * 1024;
/// Most entries accepted in one overlay directory tree.
pub const MAX_OVERLAY_ENTRIES: usize = 100_000;

/// One entry of an overlay directory.
#[derive(Debug, Clone)]
pub struct OverlayEntry {
    /// Path relative to the overlay root (no leading `/`).
    pub rel: String,
    /// What it is.
    pub kind: OverlayKind,
}

/// Kind of an overlay entry.
#[derive(Debug, Clone)]
pub enum OverlayKind {
    /// A directory.
    Dir,
    /// A regular file on the host.
    File {
        /// Host path.
        path: PathBuf,
        /// Size.
        len: u64,
        /// Whether any execute bit is set (then mode 0755, else 0644).
        executable: bool,
        /// sha256 of the content.
        sha256: String,
    },
    /// A symbolic link (target kept as is).
    Symlink(String),
}

/// A host file the image receives.
#[derive(Debug, Clone)]
pub struct HostFile {
    /// Host path.
    pub path: PathBuf,
    /// Size.
    pub len: u64,
    /// sha256 of the content.
    pub sha256: String,
}

/// Everything the customise stage reads from the build host.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Recipe file (for error messages).
    pub recipe_path: PathBuf,
    /// One list per `[[overlay]]`, sorted by path.
    pub overlays: Vec<Vec<OverlayEntry>>,
    /// Content of each `[[file]]`.
    pub files: Vec<Vec<u8>>,
    /// `outpost.collector_bin`.
    pub collector: Option<HostFile>,
    /// `outpost.updater_bin`.
    pub updater: Option<HostFile>,
    /// `outpost.ca_cert` (PEM text).
    pub ca_pem: Option<String>,
    /// Bootstrap token (never logged).
    pub token: Option<String>,
    /// `outpost.feed_root` content.
    pub feed_root: Option<Vec<u8>>,
    /// Holds stripped copies of the binaries until the build is done.
    pub scratch: Option<std::sync::Arc<tempfile::TempDir>>,
}

fn input_err(recipe: &Path, key: &str, value: &Path, problem: impl Into<String>) -> BuildError {
    BuildError::Input {
        recipe: recipe.to_owned(),
        key: key.into(),
        value: value.display().to_string(),
        problem: problem.into(),
    }
}

/// Hashes a host file (streaming).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl Inputs {
    /// Resolves and reads every host input named by the recipe.
    pub fn gather(recipe: &Recipe, recipe_path: &Path) -> Result<Inputs, BuildError> {
        let base = recipe_path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let rp = recipe_path;
        let resolve =
            |key: &str, raw: &Path| expand_path(raw, base).map_err(|p| input_err(rp, key, raw, p));
        let mut inputs = Inputs {
            recipe_path: rp.to_owned(),
            ..Inputs::default()
        };
        for (i, o) in recipe.overlay.iter().enumerate() {
            let key = format!("overlay[{i}].dir");
            let dir = resolve(&key, &o.dir)?;
            if !dir.is_dir() {
                return Err(input_err(
                    rp,
                    &key,
                    &o.dir,
                    format!("directory {} does not exist", dir.display()),
                ));
            }
            let mut entries = Vec::new();
            walk_overlay(&dir, "", &mut entries)
                .map_err(|(p, e)| input_err(rp, &key, &o.dir, format!("{}: {e}", p.display())))?;
            entries.sort_by(|a, b| a.rel.cmp(&b.rel));
            inputs.overlays.push(entries);
        }
        for (i, f) in recipe.file.iter().enumerate() {
            let bytes = match (&f.source, &f.content) {
                (Some(src), _) => {
                    let key = format!("file[{i}].source");
                    let p = resolve(&key, src)?;
                    read_small(&p).map_err(|e| input_err(rp, &key, src, e))?
                }
                (None, Some(c)) => c.clone().into_bytes(),
                (None, None) => Vec::new(),
            };
            inputs.files.push(bytes);
        }
        if let Some(o) = &recipe.outpost {
            let host_file = |key: &str, raw: &Path| -> Result<HostFile, BuildError> {
                let p = resolve(key, raw)?;
                let meta = fs::metadata(&p)
                    .map_err(|e| input_err(rp, key, raw, format!("{}: {e}", p.display())))?;
                if !meta.is_file() || meta.len() > MAX_INPUT_FILE {
                    return Err(input_err(
                        rp,
                        key,
                        raw,
                        format!(
                            "{} is not a regular file of at most {MAX_INPUT_FILE} bytes",
                            p.display()
                        ),
                    ));
                }
                let sha256 = sha256_file(&p).map_err(|e| input_err(rp, key, raw, e.to_string()))?;
                Ok(HostFile {
                    path: p,
                    len: meta.len(),
                    sha256,
                })
            };
            inputs.collector = Some(host_file("outpost.collector_bin", &o.collector_bin)?);
            if let Some(u) = &o.updater_bin {
                inputs.updater = Some(host_file("outpost.updater_bin", u)?);
            }
            if o.strip {
                let dir = tempfile::Builder::new()
                    .prefix("outpost-image-strip-")
                    .tempdir()
                    .map_err(|source| BuildError::Io {
                        what: "create a temporary directory in",
                        path: std::env::temp_dir(),
                        source,
                    })?;
                for (name, f) in [
                    ("outpost-collector", &mut inputs.collector),
                    ("outpost-updater", &mut inputs.updater),
                ] {
                    if let Some(f) = f {
                        *f = strip_binary(f, &dir.path().join(name))?;
                    }
                }
                inputs.scratch = Some(std::sync::Arc::new(dir));
            }
            let ca_path = resolve("outpost.ca_cert", &o.ca_cert)?;
            let ca = read_small(&ca_path)
                .map_err(|e| input_err(rp, "outpost.ca_cert", &o.ca_cert, e))?;
            let ca = String::from_utf8(ca)
                .ok()
                .filter(|s| s.contains("-----BEGIN CERTIFICATE-----"))
                .ok_or_else(|| {
                    input_err(
                        rp,
                        "outpost.ca_cert",
                        &o.ca_cert,
                        "is not a PEM certificate (no BEGIN CERTIFICATE line)",
                    )
                })?;
            inputs.ca_pem = Some(ca);
            inputs.token = match (&o.bootstrap_token, &o.bootstrap_token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => {
                    let p = resolve("outpost.bootstrap_token_file", f)?;
                    let t = read_small(&p)
                        .map_err(|e| input_err(rp, "outpost.bootstrap_token_file", f, e))?;
                    let t = String::from_utf8(t).unwrap_or_default().trim().to_string();
                    if t.is_empty()
                        || !t
                            .chars()
                            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
                    {
                        return Err(input_err(
                            rp,
                            "outpost.bootstrap_token_file",
                            f,
                            "must hold one printable token without spaces or quotes",
                        ));
                    }
                    Some(t)
                }
                (None, None) => None,
            };
            if let Some(f) = &o.feed_root {
                let p = resolve("outpost.feed_root", f)?;
                inputs.feed_root =
                    Some(read_small(&p).map_err(|e| input_err(rp, "outpost.feed_root", f, e))?);
            }
        }
        Ok(inputs)
    }

    /// Feeds the content identity of every input into a stage-key hasher (never the token
    /// itself: its hash).
    pub fn hash_into(&self, h: &mut Sha256) {
        for (i, o) in self.overlays.iter().enumerate() {
            h.update(format!("overlay {i}\n"));
            for e in o {
                let line = match &e.kind {
                    OverlayKind::Dir => format!("d {}\n", e.rel),
                    OverlayKind::File {
                        executable, sha256, ..
                    } => format!("f {} {executable} {sha256}\n", e.rel),
                    OverlayKind::Symlink(t) => format!("l {} {t}\n", e.rel),
                };
                h.update(line);
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            h.update(format!("file {i} {}\n", hex::encode(Sha256::digest(f))));
        }
        for (name, f) in [("collector", &self.collector), ("updater", &self.updater)] {
            if let Some(f) = f {
                h.update(format!("{name} {}\n", f.sha256));
            }
        }
        for (name, v) in [
            ("ca", self.ca_pem.as_deref().map(str::as_bytes)),
            ("token", self.token.as_deref().map(str::as_bytes)),
            ("feed_root", self.feed_root.as_deref()),
        ] {
            if let Some(v) = v {
                h.update(format!("{name} {}\n", hex::encode(Sha256::digest(v))));
            }
        }
    }
}

/// Writes a copy of an ELF binary without debug information (`strip --strip-debug`), which is
/// deterministic for a given input; other files are used as they are.
fn strip_binary(f: &HostFile, out: &Path) -> Result<HostFile, BuildError> {
    let mut magic = [0u8; 4];
    let is_elf = fs::File::open(&f.path)
        .and_then(|mut h| h.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF";
    if !is_elf {
        return Ok(f.clone());
    }
    let output = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(out)
        .arg(&f.path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BuildError::MissingTool {
                tool: "strip",
                package: "binutils",
            },
            _ => BuildError::Io {
                what: "run strip on",
                path: f.path.clone(),
                source: e,
            },
        })?;
    if !output.status.success() {
        return Err(BuildError::ToolFailed {
            tool: "strip",
            status: output.status.to_string(),
            detail: format!(
                "{}: {}",
                f.path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let io = |source| BuildError::Io {
        what: "read stripped binary",
        path: out.to_owned(),
        source,
    };
    let len = fs::metadata(out).map_err(io)?.len();
    let sha256 = sha256_file(out).map_err(io)?;
    Ok(HostFile {
        path: out.to_owned(),
        len,
        sha256,
    })
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > MAX_SMALL_FILE {
        return Err(format!(
            "{} is {} bytes, more than {MAX_SMALL_FILE}",
            path.display(),
            meta.len()
        ));
    }
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn walk_overlay(
    dir: &Path,
    rel: &str,
    out: &mut Vec<OverlayEntry>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| (dir.to_owned(), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| (dir.to_owned(), e))?;
    names.sort_by_key(fs::DirEntry::file_name);
    for d in names {
        let path = d.path();
        let name = d.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if out.len() >= MAX_OVERLAY_ENTRIES {
            return Err((
                path,
                std::io::Error::other(format!("more than {MAX_OVERLAY_ENTRIES} entries")),
            ));
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| (path.clone(), e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let t = fs::read_link(&path).map_err(|e| (path.clone(), e))?;
            out.push(OverlayEntry {
                rel,
                kind: OverlayKind::Symlink(t.to_string_lossy().into_owned()),
            });
        } else if ft.is_dir() {
            out.push(OverlayEntry {
                rel: rel.clone(),
                kind: OverlayKind::Dir,
            });
            walk_overlay(&path, &rel, out)?;
        } else if ft.is_file() {
            if meta.len() > MAX_INPUT_FILE {
                return Err((path, std::io::Error::other("file too large")));
            }
            let sha256 = sha256_file(&path).map_err(|e| (path.clone(), e))?;
            out.push(OverlayEntry {
                rel,
                kind: OverlayKind::File {
                    path,
                    len: meta.len(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                    sha256,
                },
            });
        } else {
            return Err((
                path,
                std::io::Error::other("is neither a file, a directory nor a symlink"),
            ));
        }
    }
    Ok(())
}
