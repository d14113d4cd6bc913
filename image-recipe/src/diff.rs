//! `outpost-image diff A B`: where two build outputs differ.
//!
//! A side is an output directory (its `manifest.json` and, if present, `sbom.spdx.json`), a
//! `manifest.json`, or a bare `rootfs.tar.zst` (read and hashed). Files are compared by path:
//! only in A, only in B, content differs (type, size, sha256, link target), metadata differs
//! (mode, owner, mtime). Packages are compared by name and architecture from the SBOMs.
//! The manifests' own fields (`name`, `version`, `source_date_epoch`, `seed`, `inputs_sha256`)
//! are compared too.
//!
//! When both sides have a `rootfs.tar.zst`, their sha256 is compared first: two archives can
//! differ in bytes while their manifests agree (a tar header field the manifest does not
//! record, entry order, or the compression). Then the report says where: the same tar stream
//! compressed differently, or the first entries whose order or header fields (mtime, uid, gid,
//! mode, user/group names, type, size, link, device, raw header bytes) or data differ.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::BuildError;
use crate::finalize::{manifest_of_archive, Manifest, ManifestEntry};

/// Largest manifest or SBOM read.
const MAX_JSON: u64 = 512 * 1024 * 1024;

/// Most archive differences listed (the rest are counted).
pub const MAX_ARCHIVE_DIFFERENCES: usize = 20;

/// One side of a diff, loaded.
#[derive(Debug, Clone, Default)]
pub struct Side {
    /// Entries by path.
    pub files: BTreeMap<String, ManifestEntry>,
    /// Packages `name:arch` → version, when an SBOM was found.
    pub packages: Option<BTreeMap<String, String>>,
    /// The manifest's own fields (`name`, `version`, `source_date_epoch`, `seed`,
    /// `inputs_sha256`), when a manifest was read.
    pub manifest_fields: Option<BTreeMap<&'static str, String>>,
    /// The `rootfs.tar.zst`, when the side has one.
    pub archive: Option<PathBuf>,
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
    /// Manifest fields that differ, e.g. `source_date_epoch 1 -> 2`, `seed a -> b`.
    pub manifest_differs: Vec<String>,
    /// Where the two `rootfs.tar.zst` differ in bytes (empty when their sha256 agree or a
    /// side has no archive).
    pub archive_differs: Vec<String>,
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
    let mut manifest_fields = None;
    let mut archive = None;
    let (files, sbom): (Vec<ManifestEntry>, Option<PathBuf>) = if path.is_dir() {
        let m = path.join(crate::pipeline::MANIFEST);
        let a = path.join(crate::pipeline::ROOTFS);
        archive = a.is_file().then(|| a.clone());
        let files = if m.is_file() {
            let (fields, files) = read_manifest(&m)?;
            manifest_fields = Some(fields);
            files
        } else if a.is_file() {
            manifest_of_archive(&a)?
        } else {
            return Err(bad(path, "holds neither manifest.json nor rootfs.tar.zst"));
        };
        let s = path.join(crate::pipeline::SBOM);
        (files, s.is_file().then_some(s))
    } else if path.to_string_lossy().ends_with(".tar.zst") {
        archive = Some(path.to_path_buf());
        (manifest_of_archive(path)?, None)
    } else if path.is_file() {
        let sbom = path
            .parent()
            .map(|d| d.join(crate::pipeline::SBOM))
            .filter(|s| s.is_file());
        let (fields, files) = read_manifest(path)?;
        manifest_fields = Some(fields);
        (files, sbom)
    } else {
        return Err(bad(path, "does not exist"));
    };
    let packages = sbom.map(|s| packages_of_sbom(&s)).transpose()?;
    Ok(Side {
        files: files.into_iter().map(|e| (e.path.clone(), e)).collect(),
        packages,
        manifest_fields,
        archive,
    })
}

/// The manifest's own fields and its files.
type ManifestParts = (BTreeMap<&'static str, String>, Vec<ManifestEntry>);

fn read_manifest(path: &Path) -> Result<ManifestParts, BuildError> {
    let v = read_json(path)?;
    let m: Manifest = serde_json::from_value(v)
        .map_err(|e| bad(path, format!("not an outpost-image manifest: {e}")))?;
    let fields = BTreeMap::from([
        ("name", m.name),
        ("version", m.version),
        ("source_date_epoch", m.source_date_epoch.to_string()),
        ("seed", m.seed),
        ("inputs_sha256", m.inputs_sha256),
    ]);
    Ok((fields, m.files))
}

/// Compares two loaded sides, their archives included (see the module documentation).
///
/// # Errors
/// An archive that cannot be read.
pub fn diff_outputs(a: &Side, b: &Side) -> Result<DiffReport, BuildError> {
    let mut r = diff_sides(a, b);
    if let (Some(x), Some(y)) = (&a.archive, &b.archive) {
        r.archive_differs = diff_archives(x, y)?;
    }
    Ok(r)
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        what: "read archive",
        path: path.to_owned(),
        source,
    }
}

fn sha256_of(mut r: impl Read, path: &Path) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    std::io::copy(&mut r, &mut h).map_err(io_error(path))?;
    Ok(hex::encode(h.finalize()))
}

/// One tar entry, as far as a reproducibility diff cares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TarEntry {
    path: String,
    header: [u8; 512],
    data_sha256: String,
}

/// Every entry of a zstd-compressed tar, in archive order (no limit beyond the caller's:
/// the archives compared are ones `outpost-image` wrote).
fn tar_entries(path: &Path) -> Result<Vec<TarEntry>, BuildError> {
    let dec =
        zstd::Decoder::new(File::open(path).map_err(io_error(path))?).map_err(io_error(path))?;
    let mut ar = tar::Archive::new(dec);
    let mut out = Vec::new();
    for e in ar.entries().map_err(io_error(path))? {
        let mut e = e.map_err(io_error(path))?;
        let mut header = [0u8; 512];
        header.copy_from_slice(e.header().as_bytes());
        let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let data_sha256 = sha256_of(&mut e, path)?;
        out.push(TarEntry {
            path: p,
            header,
            data_sha256,
        });
    }
    Ok(out)
}

/// Where two tar headers of the same path differ: named fields, else the raw bytes.
fn header_fields_differ(a: &tar::Header, b: &tar::Header) -> Vec<String> {
    fn show<T: std::fmt::Debug>(v: std::io::Result<T>) -> String {
        v.map_or_else(|e| format!("<{e}>"), |v| format!("{v:?}"))
    }
    let mut out = Vec::new();
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name} {x} -> {y}"));
        }
    };
    field("mtime", show(a.mtime()), show(b.mtime()));
    field("uid", show(a.uid()), show(b.uid()));
    field("gid", show(a.gid()), show(b.gid()));
    field(
        "mode",
        a.mode()
            .map_or_else(|e| format!("<{e}>"), |m| format!("{m:04o}")),
        b.mode()
            .map_or_else(|e| format!("<{e}>"), |m| format!("{m:04o}")),
    );
    field(
        "type",
        format!("{:?}", a.entry_type()),
        format!("{:?}", b.entry_type()),
    );
    field("size", show(a.size()), show(b.size()));
    field(
        "uname",
        format!("{:?}", a.username_bytes().map(String::from_utf8_lossy)),
        format!("{:?}", b.username_bytes().map(String::from_utf8_lossy)),
    );
    field(
        "gname",
        format!("{:?}", a.groupname_bytes().map(String::from_utf8_lossy)),
        format!("{:?}", b.groupname_bytes().map(String::from_utf8_lossy)),
    );
    field(
        "link",
        format!(
            "{:?}",
            a.link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
        ),
        format!(
            "{:?}",
            b.link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
        ),
    );
    field(
        "device",
        format!("{}:{}", show(a.device_major()), show(a.device_minor())),
        format!("{}:{}", show(b.device_major()), show(b.device_minor())),
    );
    if out.is_empty() && a.as_bytes() != b.as_bytes() {
        let at: Vec<String> = a
            .as_bytes()
            .iter()
            .zip(b.as_bytes())
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, _)| i.to_string())
            .take(8)
            .collect();
        out.push(format!(
            "raw header bytes at offsets {} (format, checksum or padding)",
            at.join(",")
        ));
    }
    out
}

/// Where two `rootfs.tar.zst` differ; empty when their bytes are the same.
///
/// # Errors
/// An archive that cannot be read or decompressed.
pub fn diff_archives(a: &Path, b: &Path) -> Result<Vec<String>, BuildError> {
    let open = |p: &Path| File::open(p).map_err(io_error(p));
    let (sa, sb) = (sha256_of(open(a)?, a)?, sha256_of(open(b)?, b)?);
    if sa == sb {
        return Ok(Vec::new());
    }
    let mut out = vec![format!("rootfs.tar.zst sha256 {sa} -> {sb}")];
    let tar_sha = |p: &Path| -> Result<String, BuildError> {
        sha256_of(zstd::Decoder::new(open(p)?).map_err(io_error(p))?, p)
    };
    let (ta, tb) = (tar_sha(a)?, tar_sha(b)?);
    if ta == tb {
        out.push(format!(
            "compression only: the tar streams are identical (sha256 {ta}); the zstd frames differ (level, threads, checksum or zstd version)"
        ));
        return Ok(out);
    }
    let (ea, eb) = (tar_entries(a)?, tar_entries(b)?);
    let (mut shown, mut more) = (0usize, 0usize);
    let mut note = |line: String, out: &mut Vec<String>| {
        if shown < MAX_ARCHIVE_DIFFERENCES {
            out.push(line);
            shown += 1;
        } else {
            more += 1;
        }
    };
    let pa: Vec<&str> = ea.iter().map(|e| e.path.as_str()).collect();
    let pb: Vec<&str> = eb.iter().map(|e| e.path.as_str()).collect();
    if pa != pb {
        let mut sa = pa.clone();
        let mut sb = pb.clone();
        sa.sort_unstable();
        sb.sort_unstable();
        if let Some(i) = pa.iter().zip(&pb).position(|(x, y)| x != y) {
            let what = if sa == sb { "entry order" } else { "entries" };
            note(
                format!("{what} differ from entry #{i}: {} vs {}", pa[i], pb[i]),
                &mut out,
            );
        } else {
            note(
                format!("entry count {} -> {}", pa.len(), pb.len()),
                &mut out,
            );
        }
    }
    let by_path_b: BTreeMap<&str, &TarEntry> = eb.iter().map(|e| (e.path.as_str(), e)).collect();
    for x in &ea {
        let Some(y) = by_path_b.get(x.path.as_str()) else {
            continue;
        };
        if x.header == y.header && x.data_sha256 == y.data_sha256 {
            continue;
        }
        let (ha, hb) = (
            tar::Header::from_byte_slice(&x.header),
            tar::Header::from_byte_slice(&y.header),
        );
        let mut fields = header_fields_differ(ha, hb);
        if x.data_sha256 != y.data_sha256 {
            fields.push("data".into());
        }
        note(
            format!("tar header of {}: {}", x.path, fields.join(", ")),
            &mut out,
        );
    }
    if more > 0 {
        out.push(format!("… and {more} more"));
    }
    if out.len() == 1 {
        out.push("same entries, headers and data: the difference is in tar padding or end-of-archive blocks".into());
    }
    Ok(out)
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
    if let (Some(fa), Some(fb)) = (&a.manifest_fields, &b.manifest_fields) {
        for (k, va) in fa {
            let vb = fb.get(k).map_or("-", String::as_str);
            if va != vb {
                r.manifest_differs.push(format!("{k} {va} -> {vb}"));
            }
        }
    }
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
    for m in &r.manifest_differs {
        let _ = writeln!(s, "manifest differs: {m}");
    }
    for m in &r.archive_differs {
        let _ = writeln!(s, "archive differs: {m}");
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
        "summary: {} manifest fields, archive {}, {} only in A, {} only in B, {} content, {} metadata, {} package changes",
        r.manifest_differs.len(),
        if r.archive_differs.is_empty() { "same or not compared" } else { "differs" },
        r.only_in_a.len(),
        r.only_in_b.len(),
        r.content_differs.len(),
        r.metadata_differs.len(),
        r.packages_only_in_a.len() + r.packages_only_in_b.len() + r.packages_changed.len()
    );
    s
}
