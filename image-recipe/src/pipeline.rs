//! The build: three cached stages and the atomic output step.
//!
//! 1. `base`: mmdebstrap → `base.tar`, keyed by `[image].source_date_epoch`, `[base]`, the
//!    resolved sources and the mmdebstrap version. Cached as `CACHE/base/KEY.tar`.
//! 2. `customize`: overlays, files, users, services, agents, first-boot assets and the
//!    reproducibility pins, applied to the indexed base in memory; keyed by the base key, every
//!    other recipe section and the content hash of every host file it reads.
//! 3. `finalize`: `rootfs.tar.zst`, `manifest.json`, `sbom.spdx.json`; keyed by the customise key
//!    and the archive format. Cached as `CACHE/final/KEY/`.
//!
//! Outputs are written under temporary names in the output directory, fsynced, then renamed;
//! an interrupted build leaves only `.tmp-*` files behind, never a half-written final name.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::customize::customize;
use crate::error::BuildError;
use crate::finalize::{write_json, write_rootfs, ImageId, ZSTD_LEVEL};
use crate::inputs::{sha256_file, Inputs};
use crate::recipe::Recipe;
use crate::sbom::{packages_of_tree, spdx_document, SbomId};
use crate::sources::{precheck_packages, sources_for, unknown_packages_in_log, Sources};
use crate::tree::Tree;

/// Output file names.
pub const ROOTFS: &str = "rootfs.tar.zst";
/// Manifest file name.
pub const MANIFEST: &str = "manifest.json";
/// SBOM file name.
pub const SBOM: &str = "sbom.spdx.json";
/// Bump when the customise logic changes what it produces.
const CUSTOMIZE_VERSION: &str = "customize-v1";
/// Bump when the archive format changes.
const FINALIZE_VERSION: &str = "finalize-v2";

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Recipe file.
    pub recipe: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Cache directory; `None` disables the cache.
    pub cache: Option<PathBuf>,
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: &'static str,
    /// Its input key.
    pub key: String,
    /// `built`, `cached` or `skipped`.
    pub status: &'static str,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Result of a build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// Per stage.
    pub stages: Vec<StageReport>,
    /// sha256 of `rootfs.tar.zst`.
    pub rootfs_sha256: String,
    /// Output directory.
    pub out: PathBuf,
}

/// The default cache directory: `$XDG_CACHE_HOME/outpost-image` or `~/.cache/outpost-image`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("outpost-image"))
}

/// The three stage keys of a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageKeys {
    /// Stage 1.
    pub base: String,
    /// Stage 2.
    pub customize: String,
    /// Stage 3.
    pub finalize: String,
}

fn json_line<T: Serialize>(h: &mut Sha256, label: &str, v: &T) {
    h.update(label);
    h.update(serde_json::to_vec(v).unwrap_or_default());
    h.update("\n");
}

/// Computes the stage keys from the recipe, its sources, host inputs, assets and tool version.
pub fn stage_keys(
    recipe: &Recipe,
    sources: &Sources,
    inputs: &Inputs,
    assets: &[(&str, &[u8], bool)],
    mmdebstrap_version: &str,
) -> StageKeys {
    let mut h = Sha256::new();
    json_line(&mut h, "epoch", &recipe.image.source_date_epoch);
    json_line(&mut h, "base", &recipe.base);
    json_line(&mut h, "sources", &sources.lines);
    json_line(&mut h, "mmdebstrap", &mmdebstrap_version);
    let base = hex::encode(h.finalize());

    let mut h = Sha256::new();
    h.update(&base);
    h.update(CUSTOMIZE_VERSION);
    json_line(&mut h, "image", &recipe.image);
    json_line(&mut h, "overlay", &recipe.overlay);
    json_line(&mut h, "file", &recipe.file);
    json_line(&mut h, "user", &recipe.user);
    json_line(&mut h, "services", &recipe.services);
    json_line(&mut h, "outpost", &recipe.outpost);
    json_line(&mut h, "firstboot", &recipe.firstboot);
    for (p, bytes, exec) in assets {
        h.update(format!(
            "asset {p} {exec} {}\n",
            hex::encode(Sha256::digest(bytes))
        ));
    }
    h.update(crate::assets::ASSET_MODES);
    inputs.hash_into(&mut h);
    let customize = hex::encode(h.finalize());

    let mut h = Sha256::new();
    h.update(&customize);
    h.update(format!("{FINALIZE_VERSION} zstd-{ZSTD_LEVEL}"));
    let finalize = hex::encode(h.finalize());
    StageKeys {
        base,
        customize,
        finalize,
    }
}

/// Prints a stage's progress line on stderr and records it.
fn record(
    stages: &mut Vec<StageReport>,
    stage: &'static str,
    key: &str,
    status: &'static str,
    seconds: f64,
) {
    let r = StageReport {
        stage,
        key: key.to_string(),
        status,
        seconds,
    };
    progress(&r);
    stages.push(r);
}

fn progress(r: &StageReport) {
    eprintln!(
        "outpost-image: stage {:<9} {:<7} {:>7.1}s  key {}",
        r.stage,
        r.status,
        r.seconds,
        &r.key[..12.min(r.key.len())]
    );
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io { what, path, source }
}

fn mmdebstrap_version() -> Option<String> {
    let out = Command::new("mmdebstrap")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Runs mmdebstrap into `out` (a `.tar`).
fn run_mmdebstrap(
    recipe: &Recipe,
    recipe_path: &Path,
    sources: &Sources,
    out: &Path,
    debs: Option<&Path>,
) -> Result<(), BuildError> {
    let b = &recipe.base;
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(if running_as_root() {
        "--mode=root"
    } else {
        "--mode=unshare"
    })
    .arg("--format=tar")
    .arg(format!("--variant={}", b.variant))
    .arg(format!("--architectures={}", b.architecture))
    .arg("--aptopt=Acquire::Retries \"3\"")
    .arg(
        "--customize-hook=rm -f \"$1/var/cache/ldconfig/aux-cache\" \"$1/var/lib/dbus/machine-id\"",
    );
    if !b.packages.is_empty() {
        cmd.arg(format!("--include={}", b.packages.join(",")));
    }
    // Package cache: the downloaded .deb files are synced in before and out after the build, so
    // a base rebuild downloads only what changed. mmdebstrap's cleanup still empties the
    // image's /var/cache/apt/archives, so the output does not depend on it.
    if let Some(d) = debs
        .and_then(Path::to_str)
        .filter(|d| !d.contains(char::is_whitespace))
    {
        cmd.arg("--skip=download/empty")
            .arg("--skip=essential/unlink")
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
            .arg(format!("--setup-hook=sync-in {d} /var/cache/apt/archives/"))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {d}"
            ))
            .arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb");
    }
    cmd.arg(&b.suite).arg(out).args(&sources.lines);
    cmd.env(
        "SOURCE_DATE_EPOCH",
        recipe.image.source_date_epoch.to_string(),
    )
    .env("LC_ALL", "C.UTF-8")
    .stdin(Stdio::null());
    let output = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BuildError::MissingTool {
                tool: "mmdebstrap",
                package: "mmdebstrap",
            }
        } else {
            BuildError::Io {
                what: "run mmdebstrap for",
                path: out.to_owned(),
                source: e,
            }
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let unknown = unknown_packages_in_log(&log);
    if !unknown.is_empty() {
        return Err(BuildError::UnknownPackages {
            recipe: recipe_path.to_owned(),
            packages: unknown,
        });
    }
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    Err(BuildError::ToolFailed {
        tool: "mmdebstrap",
        status: output.status.to_string(),
        detail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Builds a recipe (see the module documentation).
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let recipe = Recipe::load(&opts.recipe)?;
    let inputs = Inputs::gather(&recipe, &opts.recipe)?;
    let sources = sources_for(&recipe.base)?;
    let version = mmdebstrap_version();
    let keys = stage_keys(
        &recipe,
        &sources,
        &inputs,
        crate::assets::ROOTFS_ASSETS,
        version.as_deref().unwrap_or("missing"),
    );
    fs::create_dir_all(&opts.out).map_err(io_err("create output directory", &opts.out))?;
    remove_stale_temporaries(&opts.out);
    let suffix = unique_suffix();
    let tmp = |name: &str| opts.out.join(format!(".{name}.tmp-{suffix}"));
    let names = [ROOTFS, MANIFEST, SBOM];
    let mut stages = Vec::new();

    // Stage 3 cached: copy the outputs and stop.
    let final_dir = opts
        .cache
        .as_ref()
        .map(|c| c.join("final").join(&keys.finalize));
    if let Some(dir) = final_dir
        .as_ref()
        .filter(|d| names.iter().all(|n| d.join(n).is_file()))
    {
        let start = Instant::now();
        for n in names {
            fs::copy(dir.join(n), tmp(n)).map_err(io_err("copy cached output", &dir.join(n)))?;
        }
        for (stage, key) in [("base", &keys.base), ("customize", &keys.customize)] {
            record(&mut stages, stage, key, "skipped", 0.0);
        }
        record(
            &mut stages,
            "finalize",
            &keys.finalize,
            "cached",
            start.elapsed().as_secs_f64(),
        );
        return publish(opts, &names, &tmp, stages);
    }

    // Stage 1.
    let start = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".scratch.tmp-{suffix}-"))
        .tempdir_in(&opts.out)
        .map_err(io_err("create scratch directory in", &opts.out))?;
    let base_path = match &opts.cache {
        Some(c) => c.join("base").join(format!("{}.tar", keys.base)),
        None => scratch.path().join("base.tar"),
    };
    let base_status = if base_path.is_file() {
        "cached"
    } else {
        if version.is_none() {
            return Err(BuildError::MissingTool {
                tool: "mmdebstrap",
                package: "mmdebstrap",
            });
        }
        let missing = precheck_packages(&recipe.base, &sources);
        if !missing.is_empty() {
            return Err(BuildError::UnknownPackages {
                recipe: opts.recipe.clone(),
                packages: missing,
            });
        }
        let dir = base_path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let part = dir.join(format!(".{}.tmp-{suffix}.tar", keys.base));
        eprintln!(
            "outpost-image: stage base      running mmdebstrap ({} {}, {} packages, {} sources)",
            recipe.base.suite,
            recipe.base.variant,
            recipe.base.packages.len(),
            sources.lines.len()
        );
        let debs = opts
            .cache
            .as_ref()
            .map(|c| c.join("debs").join(&recipe.base.architecture));
        if let Some(d) = &debs {
            create_private_dir(d)?;
        }
        let result = run_mmdebstrap(&recipe, &opts.recipe, &sources, &part, debs.as_deref());
        if let Err(e) = result {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        fs::rename(&part, &base_path).map_err(io_err("store base archive", &base_path))?;
        "built"
    };
    record(
        &mut stages,
        "base",
        &keys.base,
        base_status,
        start.elapsed().as_secs_f64(),
    );

    // Stage 2.
    let start = Instant::now();
    let mut tree = Tree::from_tar(&base_path)?;
    customize(&mut tree, &recipe, &inputs)?;
    record(
        &mut stages,
        "customize",
        &keys.customize,
        "built",
        start.elapsed().as_secs_f64(),
    );

    // Stage 3.
    let start = Instant::now();
    finalize_tree(
        &tree,
        &recipe,
        &keys.customize,
        &tmp(ROOTFS),
        &tmp(MANIFEST),
        &tmp(SBOM),
    )?;
    if let Some(dir) = &final_dir {
        store_final(dir, &names, &tmp, &suffix)?;
    }
    record(
        &mut stages,
        "finalize",
        &keys.finalize,
        "built",
        start.elapsed().as_secs_f64(),
    );
    drop(scratch);
    publish(opts, &names, &tmp, stages)
}

/// Removes temporary outputs left by an interrupted build whose process is gone (the pid is
/// part of every temporary name).
fn remove_stale_temporaries(out: &Path) {
    let Ok(rd) = fs::read_dir(out) else { return };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.split(".tmp-").nth(1).filter(|_| name.starts_with('.')) else {
            continue;
        };
        let pid = rest.split(['-', '.']).next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = if e.path().is_dir() {
                fs::remove_dir_all(e.path())
            } else {
                fs::remove_file(e.path())
            };
        }
    }
}

/// Writes the three outputs of a customised tree to the given paths.
pub fn finalize_tree(
    tree: &Tree,
    recipe: &Recipe,
    inputs_key: &str,
    rootfs: &Path,
    manifest: &Path,
    sbom: &Path,
) -> Result<(), BuildError> {
    let id = ImageId {
        name: recipe.image.name.clone(),
        version: recipe.image.version.clone(),
        source_date_epoch: recipe.image.source_date_epoch,
        seed: recipe.seed(),
        inputs_sha256: inputs_key.to_string(),
    };
    let m = write_rootfs(tree, rootfs, &id)?;
    write_json(manifest, &m)?;
    let sid = SbomId {
        name: id.name,
        version: id.version,
        created: id.source_date_epoch,
        inputs_sha256: id.inputs_sha256,
    };
    write_json(sbom, &spdx_document(&sid, &packages_of_tree(tree)))
}

/// Creates a cache directory (and its parents) readable by the owner only: cached trees hold
/// /etc/shadow and the bootstrap token.
fn create_private_dir(dir: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create cache directory", dir))
}

fn store_final(
    dir: &Path,
    names: &[&str],
    tmp: &dyn Fn(&str) -> PathBuf,
    suffix: &str,
) -> Result<(), BuildError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    create_private_dir(parent)?;
    let part = parent.join(format!(".tmp-{suffix}"));
    fs::create_dir_all(&part).map_err(io_err("create cache directory", &part))?;
    for n in names {
        let dst = part.join(n);
        fs::copy(tmp(n), &dst).map_err(io_err("store output in cache", &dst))?;
    }
    if dir.exists() {
        let _ = fs::remove_dir_all(dir);
    }
    fs::rename(&part, dir).map_err(io_err("store output in cache", dir))
}

fn publish(
    opts: &BuildOptions,
    names: &[&str],
    tmp: &dyn Fn(&str) -> PathBuf,
    stages: Vec<StageReport>,
) -> Result<BuildReport, BuildError> {
    let rootfs_sha256 = sha256_file(&tmp(ROOTFS)).map_err(io_err("hash", &tmp(ROOTFS)))?;
    for n in names {
        let dst = opts.out.join(n);
        fs::rename(tmp(n), &dst).map_err(io_err("rename output to", &dst))?;
    }
    if let Ok(d) = fs::File::open(&opts.out) {
        let _ = d.sync_all();
    }
    Ok(BuildReport {
        stages,
        rootfs_sha256,
        out: opts.out.clone(),
    })
}
