//! `outpost-image diff A B`: where two build outputs differ.
//!
//! A side is an output directory (its `manifest.json` and, if present, `sbom.spdx.json`), a
//! `manifest.json`, or a bare `rootfs.tar.zst` (read and hashed). Files are compared by path:
//! only in A, only in B, content differs (type, size, sha256, link target), metadata differs
//! (mode, owner, mtime). Packages are compared by name and architecture from the SBOMs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::BuildError;
use crate::finalize::{manifest_of_archive, Manifest, ManifestEntry};

/// Largest manifest or SBOM read.
const MAX_JSON: u64 = 512 * 1024 * 1024;

/// One side of a diff, loaded.
#[derive(Debug, Clone, Default)]
pub struct Side {
    /// Entries by path.
    pub files: BTreeMap<String, ManifestEntry>,
    /// Packages `name:arch` → version, when an SBOM was found.
    pub packages: Option<BTreeMap<String, String>>,
}

/// A path whose content or metadata differs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Changed {
    /// Path.
    pub path: String,
    /// What differs, e.g. `sha256`, `mode 0644 -> 0755`.
    pub fields: Vec<String>,
}

/// A package whose version differs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PackageChange {
    /// `name:arch`.
    pub package: String,
    /// Version in A.
    pub a: String,
    /// Version in B.
    pub b: String,
}

/// The differences between two outputs.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// Paths only in A.
    pub only_in_a: Vec<String>,
    /// Paths only in B.
    pub only_in_b: Vec<String>,
    /// Paths whose content differs.
    pub content_differs: Vec<Changed>,
    /// Paths whose metadata (mode, owner, mtime) differs.
    pub metadata_differs: Vec<Changed>,
    /// Packages only in A (`name:arch=version`).
    pub packages_only_in_a: Vec<String>,
    /// Packages only in B.
    pub packages_only_in_b: Vec<String>,
    /// Packages with different versions.
    pub packages_changed: Vec<PackageChange>,
}

impl DiffReport {
    /// Whether A and B are the same.
    pub fn is_identical(&self) -> bool {
        *self == DiffReport::default()
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> BuildError {
    BuildError::BadOutput {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, BuildError> {
    let meta = std::fs::metadata(path).map_err(|e| bad(path, e.to_string()))?;
    if meta.len() > MAX_JSON {
        return Err(bad(path, format!("larger than {MAX_JSON} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(path, format!("not valid JSON: {e}")))
}

fn packages_of_sbom(path: &Path) -> Result<BTreeMap<String, String>, BuildError> {
    let v = read_json(path)?;
    let pkgs = v
        .get("packages")
        .and_then(|p| p.as_array())
        .ok_or_else(|| bad(path, "no `packages` array (not an SPDX JSON document)"))?;
    let mut out = BTreeMap::new();
    for p in pkgs {
        let purl = p
            .get("externalRefs")
            .and_then(|r| r.as_array())
            .and_then(|r| {
                r.iter().find_map(|x| {
                    x.get("referenceLocator")
                        .and_then(|l| l.as_str())
                        .filter(|l| l.starts_with("pkg:deb/"))
                })
            });
        let Some(purl) = purl else { continue };
        let arch = purl.split("arch=").nth(1).unwrap_or("");
        let name = p.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let version = p.get("versionInfo").and_then(|n| n.as_str()).unwrap_or("");
        out.insert(format!("{name}:{arch}"), version.to_string());
    }
    Ok(out)
}

/// Loads one side (see the module documentation).
pub fn load_side(path: &Path) -> Result<Side, BuildError> {
    let (files, sbom): (Vec<ManifestEntry>, Option<PathBuf>) = if path.is_dir() {
        let m = path.join(crate::pipeline::MANIFEST);
        let files = if m.is_file() {
            manifest_files(&m)?
        } else if path.join(crate::pipeline::ROOTFS).is_file() {
            manifest_of_archive(&path.join(crate::pipeline::ROOTFS))?
        } else {
            return Err(bad(path, "holds neither manifest.json nor rootfs.tar.zst"));
        };
        let s = path.join(crate::pipeline::SBOM);
        (files, s.is_file().then_some(s))
    } else if path.to_string_lossy().ends_with(".tar.zst") {
        (manifest_of_archive(path)?, None)
    } else if path.is_file() {
        let sbom = path
            .parent()
            .map(|d| d.join(crate::pipeline::SBOM))
            .filter(|s| s.is_file());
        (manifest_files(path)?, sbom)
    } else {
        return Err(bad(path, "does not exist"));
    };
    let packages = sbom.map(|s| packages_of_sbom(&s)).transpose()?;
    Ok(Side {
        files: files.into_iter().map(|e| (e.path.clone(), e)).collect(),
        packages,
    })
}

fn manifest_files(path: &Path) -> Result<Vec<ManifestEntry>, BuildError> {
    let v = read_json(path)?;
    let m: Manifest = serde_json::from_value(v)
        .map_err(|e| bad(path, format!("not an outpost-image manifest: {e}")))?;
    Ok(m.files)
}

/// Compares two loaded sides.
pub fn diff_sides(a: &Side, b: &Side) -> DiffReport {
    let mut r = DiffReport::default();
    for (p, ea) in &a.files {
        let Some(eb) = b.files.get(p) else {
            r.only_in_a.push(p.clone());
            continue;
        };
        let mut content = Vec::new();
        if ea.kind != eb.kind {
            content.push(format!("type {} -> {}", ea.kind, eb.kind));
        }
        if ea.size != eb.size {
            content.push(format!("size {} -> {}", ea.size, eb.size));
        }
        if ea.sha256 != eb.sha256 {
            content.push("sha256".to_string());
        }
        if ea.target != eb.target {
            content.push(format!(
                "target {} -> {}",
                ea.target.as_deref().unwrap_or("-"),
                eb.target.as_deref().unwrap_or("-")
            ));
        }
        if !content.is_empty() {
            r.content_differs.push(Changed {
                path: p.clone(),
                fields: content,
            });
        }
        let mut meta = Vec::new();
        if ea.mode != eb.mode {
            meta.push(format!("mode {} -> {}", ea.mode, eb.mode));
        }
        if (ea.uid, ea.gid) != (eb.uid, eb.gid) {
            meta.push(format!(
                "owner {}:{} -> {}:{}",
                ea.uid, ea.gid, eb.uid, eb.gid
            ));
        }
        if ea.mtime != eb.mtime {
            meta.push(format!("mtime {} -> {}", ea.mtime, eb.mtime));
        }
        if !meta.is_empty() {
            r.metadata_differs.push(Changed {
                path: p.clone(),
                fields: meta,
            });
        }
    }
    r.only_in_b = b
        .files
        .keys()
        .filter(|p| !a.files.contains_key(*p))
        .cloned()
        .collect();
    if let (Some(pa), Some(pb)) = (&a.packages, &b.packages) {
        for (k, va) in pa {
            match pb.get(k) {
                None => r.packages_only_in_a.push(format!("{k}={va}")),
                Some(vb) if vb != va => r.packages_changed.push(PackageChange {
                    package: k.clone(),
                    a: va.clone(),
                    b: vb.clone(),
                }),
                Some(_) => {}
            }
        }
        r.packages_only_in_b = pb
            .iter()
            .filter(|(k, _)| !pa.contains_key(*k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
    }
    r
}

/// Renders a report for people.
pub fn render_text(r: &DiffReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if r.is_identical() {
        return "identical\n".into();
    }
    for p in &r.only_in_a {
        let _ = writeln!(s, "only in A: /{p}");
    }
    for p in &r.only_in_b {
        let _ = writeln!(s, "only in B: /{p}");
    }
    for c in &r.content_differs {
        let _ = writeln!(s, "content differs: /{} ({})", c.path, c.fields.join(", "));
    }
    for c in &r.metadata_differs {
        let _ = writeln!(s, "metadata differs: /{} ({})", c.path, c.fields.join(", "));
    }
    for p in &r.packages_only_in_a {
        let _ = writeln!(s, "package only in A: {p}");
    }
    for p in &r.packages_only_in_b {
        let _ = writeln!(s, "package only in B: {p}");
    }
    for c in &r.packages_changed {
        let _ = writeln!(
            s,
            "package version differs: {} {} -> {}",
            c.package, c.a, c.b
        );
    }
    let _ = writeln!(
        s,
        "summary: {} only in A, {} only in B, {} content, {} metadata, {} package changes",
        r.only_in_a.len(),
        r.only_in_b.len(),
        r.content_differs.len(),
        r.metadata_differs.len(),
        r.packages_only_in_a.len() + r.packages_only_in_b.len() + r.packages_changed.len()
    );
    s
}
