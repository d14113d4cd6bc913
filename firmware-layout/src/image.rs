//! `build`: layout + rootfs archive → `OUTDIR/<name>.raw` (sparse), other formats through
//! `qemu-img convert`, and `OUTDIR/layout.json`. Every output is written under a temporary name
//! in a work directory inside OUTDIR, fsynced, and renamed into place only when all succeeded.

use crate::cache::{self, sha256_of_tree, Cache, KeyBuilder};
use crate::config::{Contents, FsKind, Layout};
use crate::entries;
use crate::error::LayoutError;
use crate::formats;
use crate::fsbuild::{self, Ext4Spec};
use crate::gpt;
use crate::guid::{derive_volume_id, Guid};
use crate::plan::{plan_layout, DiskPlan, PlannedPartition};
use crate::rootfs::{self, KernelPair, RootfsTree};
use crate::tools::{
    self, Tool, DEBUGFS, MCOPY, MKFS_EROFS, MKFS_EXT4, MKFS_VFAT, QEMU_IMG, TUNE2FS,
};
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Output disk image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Sparse raw disk.
    Raw,
    /// QEMU copy-on-write v3 (`compat=1.1`).
    Qcow2,
    /// Hyper-V (dynamic).
    Vhdx,
    /// VMware (monolithic sparse).
    Vmdk,
}

impl Format {
    /// File extension and qemu-img format name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhdx => "vhdx",
            Format::Vmdk => "vmdk",
        }
    }

    /// Parses a comma-separated list (`raw,qcow2`); raw is always included.
    ///
    /// # Errors
    /// [`LayoutError::Usage`] naming the unknown format.
    pub fn parse_list(text: &str) -> Result<Vec<Format>, LayoutError> {
        let mut out = vec![Format::Raw];
        for t in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let f = match t {
                "raw" => Format::Raw,
                "qcow2" => Format::Qcow2,
                "vhdx" => Format::Vhdx,
                "vmdk" => Format::Vmdk,
                other => {
                    return Err(LayoutError::Usage {
                        flag: "--format".into(),
                        message: format!(
                            "unknown format {other:?}: expected raw, qcow2, vhdx or vmdk"
                        ),
                    })
                }
            };
            if !out.contains(&f) {
                out.push(f);
            }
        }
        Ok(out)
    }

    fn qemu_options(self) -> &'static [&'static str] {
        match self {
            Format::Raw => &[],
            Format::Qcow2 => &["-o", "compat=1.1"],
            Format::Vhdx => &["-o", "subformat=dynamic"],
            Format::Vmdk => &["-o", "subformat=monolithicSparse"],
        }
    }
}

/// What `build` needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The layout file.
    pub layout: PathBuf,
    /// `rootfs.tar.zst`.
    pub rootfs: PathBuf,
    /// Output directory (created if missing).
    pub out_dir: PathBuf,
    /// Formats; raw is always made.
    pub formats: Vec<Format>,
    /// SOURCE_DATE_EPOCH for every time stamp; `None`: the `source_date_epoch` of the
    /// `manifest.json` next to `rootfs` (an error when there is none).
    pub epoch: Option<u64>,
    /// Partition image cache directory ([`crate::cache`]); `None`: every file system is made.
    pub cache: Option<PathBuf>,
}

/// `layout.json`: the built image described for tools and people.
#[derive(Debug, Clone, Serialize)]
pub struct BuildDescription {
    /// Image name.
    pub name: String,
    /// Seed used for every identifier.
    pub seed: String,
    /// SOURCE_DATE_EPOCH used.
    pub source_date_epoch: u64,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Sector size.
    pub sector_size: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Partitions.
    pub partitions: Vec<PartitionDescription>,
    /// Kernel version installed in every slot.
    pub kernel_version: String,
    /// `loader/loader.conf`.
    pub loader_conf: String,
    /// Boot entries on the ESP.
    pub entries: Vec<EntryDescription>,
    /// Image files written, relative to OUTDIR.
    pub images: Vec<ImageFile>,
}

/// One partition in `layout.json`: the planned partition plus where it is and what identifies
/// its file system.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionDescription {
    /// Number, label, GUIDs, sectors, fs and contents.
    #[serde(flatten)]
    pub plan: PlannedPartition,
    /// Byte offset.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// File-system UUID (ext4/erofs) or volume id (vfat, 8 hex digits).
    pub fs_id: Option<String>,
    /// A/B slot of a root partition.
    pub slot: Option<String>,
}

/// One boot entry in `layout.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EntryDescription {
    /// File name under `loader/entries/`.
    pub file: String,
    /// Slot.
    pub slot: String,
    /// File text.
    pub text: String,
}

/// One image file in `layout.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFile {
    /// Format.
    pub format: Format,
    /// File name in OUTDIR.
    pub file: String,
}

fn fs_id(seed: &str, p: &PlannedPartition) -> Option<String> {
    match p.fs {
        FsKind::Ext4 | FsKind::Erofs => {
            Some(Guid::derive(seed, &format!("fs:{}", p.label)).to_string())
        }
        FsKind::Vfat => Some(format!(
            "{:08x}",
            derive_volume_id(seed, &format!("vfat:{}", p.label))
        )),
        FsKind::None => None,
    }
}

/// The default partition cache directory ([`crate::cache::default_cache_dir`]).
#[must_use]
pub fn default_cache_dir() -> Option<PathBuf> {
    cache::default_cache_dir()
}

/// Tools a layout needs, for the check before any long work.
#[must_use]
pub fn needed_tools(plan: &DiskPlan, formats: &[Format]) -> Vec<Tool> {
    let mut t = vec![MKFS_VFAT, MCOPY];
    if plan.partitions.iter().any(|p| p.fs == FsKind::Ext4) {
        t.extend([MKFS_EXT4, DEBUGFS, TUNE2FS]);
    }
    if plan.partitions.iter().any(|p| p.fs == FsKind::Erofs) {
        t.push(MKFS_EROFS);
    }
    if formats.iter().any(|f| *f != Format::Raw) {
        t.push(QEMU_IMG);
    }
    t
}

fn invalid(path: &Path, e: crate::plan::PlanError) -> LayoutError {
    LayoutError::Invalid {
        path: path.to_path_buf(),
        key: e.key,
        message: e.message,
    }
}

/// Loads and validates a layout file.
///
/// # Errors
/// Parse or validation errors naming the file and key.
pub fn load_and_plan(path: &Path) -> Result<(Layout, DiskPlan), LayoutError> {
    let layout = Layout::load(path)?;
    let plan = plan_layout(&layout).map_err(|e| invalid(path, e))?;
    Ok((layout, plan))
}

/// Builds the image. See the module docs for the output.
///
/// # Errors
/// Any [`LayoutError`]; nothing is left under a final name on failure.
pub fn build(opts: &BuildOptions) -> Result<BuildDescription, LayoutError> {
    let (layout, plan) = load_and_plan(&opts.layout)?;
    tools::require(&needed_tools(&plan, &opts.formats))?;
    if !opts.rootfs.is_file() {
        return Err(LayoutError::Rootfs {
            path: opts.rootfs.clone(),
            message: "not found or not a file".into(),
        });
    }
    let epoch = match opts.epoch {
        Some(e) => e,
        None => rootfs::epoch_of_manifest_beside(&opts.rootfs)?,
    };
    std::fs::create_dir_all(&opts.out_dir).map_err(LayoutError::io("create", &opts.out_dir))?;
    let work = tempfile::Builder::new()
        .prefix(".outpost-layout-")
        .tempdir_in(&opts.out_dir)
        .map_err(LayoutError::io("create a work directory in", &opts.out_dir))?;
    let seed = layout.seed().to_string();
    let ss = plan.sector_size;
    let cache = opts.cache.as_deref().map(Cache::open).transpose()?;
    let archive_sha = cache::sha256_of_file(&opts.rootfs)?;

    tracing::info!(rootfs = %opts.rootfs.display(), "stage 1/5: unpacking the root file system");
    let scratch = scratch_dir(&opts.rootfs, work.path())?;
    let tree_dir = scratch.path().join("rootfs");
    std::fs::create_dir(&tree_dir).map_err(LayoutError::io("create", &tree_dir))?;
    let tree = rootfs::unpack_rootfs(&opts.rootfs, &tree_dir, epoch)?;
    check_root_sizes(&opts.layout, &layout, &plan, &tree, &opts.rootfs)?;
    let kernel = rootfs::find_kernel(&tree.dir, &opts.rootfs)?;
    let sd_boot = rootfs::find_systemd_boot(&tree.dir)?;

    tracing::info!(kernel = %kernel.version, "stage 2/5: staging the ESP");
    let esp_dir = scratch.path().join("esp");
    let slots: Vec<String> = plan
        .partitions
        .iter()
        .filter_map(|p| p.slot().map(String::from))
        .collect();
    let entry_list = stage_esp(&esp_dir, &layout, &slots, &kernel, &sd_boot)?;

    tracing::info!("stage 3/5: making file systems");
    let versions = tools::versions(&needed_tools(&plan, &opts.formats));
    let epoch_text = epoch.to_string();
    let base_key = KeyBuilder::new("partition")
        .with("tools", &versions)
        .with("seed", &seed)
        .with("epoch", &epoch_text)
        .with("sector-size", ss.to_string());
    let esp_sha = sha256_of_tree(&esp_dir)?;
    let mut parts = Vec::new();
    // Where each partition's file system image is (None: no file system), and the cache
    // files that are still being synced to disk.
    let mut sources: Vec<Option<PathBuf>> = Vec::new();
    let mut storing = Vec::new();
    // Second slots written as a copy of the first, to relabel in the raw image: (offset,
    // label, UUID).
    let mut relabel = Vec::new();
    for (i, p) in plan.partitions.iter().enumerate() {
        let file = scratch.path().join(format!("p{}.img", p.number));
        let size = p.size_bytes(ss);
        let key = format!("partition[{i}].size");
        let content_key = match p.contents {
            Contents::Esp => format!("esp {esp_sha}"),
            Contents::Rootfs => format!("rootfs {archive_sha}"),
            Contents::Empty => "empty".to_string(),
        };
        let part_key = base_key
            .clone()
            .with("partition", serde_json::to_vec(p).expect("plan serializes"))
            .with("contents", &content_key)
            .finish();
        let cached = cache.as_ref().and_then(|c| c.part(&p.label, &part_key));
        if let Some(hit) = cached {
            tracing::info!(partition = %p.label, "cached");
            sources.push(Some(hit));
        } else {
            // A relabelled copy of another partition is not cached: it is cheaper to copy again.
            let mut derived: Option<PathBuf> = None;
            let made = match (p.contents, p.fs) {
                (_, FsKind::None) => false,
                (Contents::Esp, FsKind::Vfat) => {
                    let needed = dir_bytes(&esp_dir)? + (2 << 20);
                    if needed > size {
                        return Err(too_small(
                            &opts.layout,
                            key,
                            "the ESP (kernels, initrds, systemd-boot)",
                            needed,
                            size,
                        ));
                    }
                    let id = derive_volume_id(&seed, &format!("vfat:{}", p.label));
                    tracing::info!(partition = %p.label, "mkfs.vfat + mcopy");
                    fsbuild::make_vfat(&file, size, &p.label, id, &esp_dir, epoch)?;
                    true
                }
                (Contents::Empty, FsKind::Vfat) => {
                    let empty = scratch.path().join(format!("empty{}", p.number));
                    std::fs::create_dir(&empty).map_err(LayoutError::io("create", &empty))?;
                    let id = derive_volume_id(&seed, &format!("vfat:{}", p.label));
                    fsbuild::make_vfat(&file, size, &p.label, id, &empty, epoch)?;
                    true
                }
                (contents, FsKind::Ext4) => {
                    let uuid = Guid::derive(&seed, &format!("fs:{}", p.label));
                    // A second slot with the same contents and size is the first one's file
                    // system with its own label and UUID (same bytes otherwise, so the same
                    // hash seed): a copy instead of a second mkfs.
                    let twin = (contents == Contents::Rootfs)
                        .then(|| {
                            plan.partitions[..i].iter().position(|q| {
                                q.contents == Contents::Rootfs
                                    && q.fs == FsKind::Ext4
                                    && q.size_bytes(ss) == size
                            })
                        })
                        .flatten()
                        .and_then(|j| sources[j].clone());
                    if let Some(first) = twin {
                        tracing::info!(partition = %p.label, "copy of the first slot, relabelled");
                        relabel.push((p.offset_bytes(ss), p.label.clone(), uuid));
                        derived = Some(first);
                    } else {
                        let rootfs = contents == Contents::Rootfs;
                        let hash_seed = if rootfs {
                            Guid::derive(&seed, "hash-seed:rootfs")
                        } else {
                            Guid::derive(&seed, &format!("hash-seed:{}", p.label))
                        };
                        let spec = Ext4Spec {
                            label: &p.label,
                            uuid,
                            hash_seed,
                            source: rootfs.then_some(tree.dir.as_path()),
                            inodes: rootfs.then(|| fsbuild::ext4_inode_count(tree.inodes)),
                            epoch,
                        };
                        tracing::info!(partition = %p.label, "mkfs.ext4 -d + debugfs");
                        fsbuild::make_ext4(&file, size, &spec)?;
                    }
                    true
                }
                (Contents::Rootfs, FsKind::Erofs) => {
                    let uuid = Guid::derive(&seed, &format!("fs:{}", p.label));
                    let len = fsbuild::make_erofs(&file, &p.label, uuid, &tree.dir, epoch)?;
                    if len > size {
                        return Err(too_small(
                            &opts.layout,
                            key,
                            "the erofs root file system",
                            len,
                            size,
                        ));
                    }
                    true
                }
                (c, f) => unreachable!("plan_layout rejects {c:?} on {f:?}"),
            };
            if made && derived.is_none() {
                if let Some(c) = &cache {
                    // Stored while the image is assembled from the scratch copy.
                    let (c, label, key, from) =
                        (c.clone(), p.label.clone(), part_key.clone(), file.clone());
                    storing.push(std::thread::spawn(move || {
                        c.store_part(&label, &key, &from).map(|_| ())
                    }));
                }
            }
            sources.push(if made { derived.or(Some(file)) } else { None });
        }
        parts.push(PartitionDescription {
            plan: p.clone(),
            offset: p.offset_bytes(ss),
            size,
            fs_id: fs_id(&seed, p),
            slot: p.slot().map(String::from),
        });
    }

    tracing::info!("stage 4/5: assembling the raw image");
    let raw_tmp = work.path().join(format!("{}.raw", layout.name));
    {
        let mut f = File::create(&raw_tmp).map_err(LayoutError::io("create", &raw_tmp))?;
        f.set_len(plan.total_sectors * ss)
            .map_err(LayoutError::io("size", &raw_tmp))?;
        gpt::write_gpt(&mut f, &plan).map_err(LayoutError::io("write the GPT to", &raw_tmp))?;
        for (p, src) in plan.partitions.iter().zip(&sources) {
            if let Some(src) = src {
                cache::copy_into(src, &mut f, &raw_tmp, p.offset_bytes(ss))?;
            }
        }
        for (offset, label, uuid) in &relabel {
            fsbuild::relabel_ext4_at(&raw_tmp, *offset, label, *uuid, epoch)?;
        }
        f.sync_all().map_err(LayoutError::io("sync", &raw_tmp))?;
    }
    for t in storing {
        t.join().expect("cache store does not panic")?;
    }

    tracing::info!("stage 5/5: converting formats");
    let mut images = vec![ImageFile {
        format: Format::Raw,
        file: format!("{}.raw", layout.name),
    }];
    for fmt in opts.formats.iter().filter(|f| **f != Format::Raw) {
        let name = format!("{}.{}", layout.name, fmt.name());
        let tmp = work.path().join(&name);
        let mut cmd = Command::new(QEMU_IMG.name);
        cmd.args(["convert", "-m", "1", "-f", "raw", "-O", fmt.name()])
            .args(fmt.qemu_options())
            .arg(&raw_tmp)
            .arg(&tmp);
        tools::run(
            QEMU_IMG,
            &mut cmd,
            &format!("converting {} to {}", raw_tmp.display(), fmt.name()),
        )?;
        match fmt {
            Format::Vmdk => formats::pin_vmdk(&tmp, derive_volume_id(&seed, "vmdk:cid"))?,
            Format::Vhdx => formats::pin_vhdx(&tmp, &seed)?,
            Format::Raw | Format::Qcow2 => {}
        }
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(LayoutError::io("sync", &tmp))?;
        images.push(ImageFile {
            format: *fmt,
            file: name,
        });
    }

    let desc = BuildDescription {
        name: layout.name.clone(),
        seed,
        source_date_epoch: epoch,
        disk_size: plan.total_sectors * ss,
        sector_size: ss,
        disk_guid: plan.disk_guid,
        partitions: parts,
        kernel_version: kernel.version.clone(),
        loader_conf: entries::loader_conf(&layout.boot),
        entries: entry_list,
        images,
    };
    let json_tmp = work.path().join("layout.json");
    let mut json = serde_json::to_vec_pretty(&desc).expect("description serializes");
    json.push(b'\n');
    write_synced(&json_tmp, &json)?;

    // Everything is complete: move into place (the raw image last, so its presence means done).
    for img in desc.images.iter().rev() {
        rename(&work.path().join(&img.file), &opts.out_dir.join(&img.file))?;
    }
    rename(&json_tmp, &opts.out_dir.join("layout.json"))?;
    File::open(&opts.out_dir)
        .and_then(|d| d.sync_all())
        .map_err(LayoutError::io("sync", &opts.out_dir))?;
    Ok(desc)
}

/// Environment variable naming the directory for the unpacked tree and the partition images.
pub const SCRATCH_ENV: &str = "OUTPOST_LAYOUT_SCRATCH";

/// Where the unpacked root file system and the partition images are made: `$OUTPOST_LAYOUT_SCRATCH`
/// if set, else `/dev/shm` when it is a tmpfs with room for ten times the archive (creating
/// tens of thousands of files there is several times faster than on a disk file system), else
/// the work directory beside the outputs. A private (0700) directory, removed when dropped.
fn scratch_dir(archive: &Path, work: &Path) -> Result<tempfile::TempDir, LayoutError> {
    let chosen = match std::env::var_os(SCRATCH_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let need = std::fs::metadata(archive)
                .map(|m| m.len())
                .unwrap_or(0)
                .saturating_mul(10)
                .saturating_add(256 << 20);
            let shm = Path::new("/dev/shm");
            let free = rustix::fs::statvfs(shm)
                .ok()
                .map(|v| v.f_bavail.saturating_mul(v.f_frsize));
            match free {
                Some(free) if free >= need && shm.is_dir() => shm.to_path_buf(),
                _ => work.to_path_buf(),
            }
        }
    };
    tracing::debug!(scratch = %chosen.display(), "scratch directory");
    tempfile::Builder::new()
        .prefix(".outpost-layout-scratch-")
        .tempdir_in(&chosen)
        .map_err(LayoutError::io("create a scratch directory in", &chosen))
}

fn rename(from: &Path, to: &Path) -> Result<(), LayoutError> {
    std::fs::rename(from, to).map_err(LayoutError::io("rename into place", to))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    use std::io::Write;
    let mut f = File::create(path).map_err(LayoutError::io("create", path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(LayoutError::io("write", path))
}

fn too_small(layout: &Path, key: String, what: &str, needed: u64, available: u64) -> LayoutError {
    LayoutError::TooSmall {
        path: layout.to_path_buf(),
        key,
        what: what.into(),
        needed,
        available,
    }
}

fn check_root_sizes(
    path: &Path,
    layout: &Layout,
    plan: &DiskPlan,
    tree: &RootfsTree,
    archive: &Path,
) -> Result<(), LayoutError> {
    for (i, p) in plan.partitions.iter().enumerate() {
        if p.contents != Contents::Rootfs {
            continue;
        }
        let size = p.size_bytes(layout.sector_size);
        let needed = match p.fs {
            FsKind::Ext4 => fsbuild::ext4_needed_bytes(
                tree.data_bytes,
                fsbuild::ext4_inode_count(tree.inodes),
                size,
            ),
            _ => tree.data_bytes / 2,
        };
        if needed > size {
            let what = format!("the root file system from {}", archive.display());
            return Err(too_small(
                path,
                format!("partition[{i}].size"),
                &what,
                needed,
                size,
            ));
        }
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<u64, LayoutError> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(LayoutError::io("list", dir))? {
        let e = e.map_err(LayoutError::io("list", dir))?;
        let m = e.metadata().map_err(LayoutError::io("stat", e.path()))?;
        total += if m.is_dir() {
            dir_bytes(&e.path())? + 4096
        } else {
            m.len().div_ceil(4096) * 4096
        };
    }
    Ok(total)
}

fn copy(from: &Path, to: &Path) -> Result<(), LayoutError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(LayoutError::io("create", parent))?;
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(LayoutError::io("copy", from))
}

/// Lays out the ESP tree: systemd-boot at the removable-media path, loader.conf, a kernel and
/// initrd per slot and one counted entry per slot.
fn stage_esp(
    dir: &Path,
    layout: &Layout,
    slots: &[String],
    kernel: &KernelPair,
    sd_boot: &Path,
) -> Result<Vec<EntryDescription>, LayoutError> {
    copy(sd_boot, &dir.join("EFI/BOOT/BOOTX64.EFI"))?;
    copy(sd_boot, &dir.join("EFI/systemd/systemd-bootx64.efi"))?;
    let loader = dir.join("loader");
    std::fs::create_dir_all(loader.join("entries")).map_err(LayoutError::io("create", &loader))?;
    std::fs::write(
        loader.join("loader.conf"),
        entries::loader_conf(&layout.boot),
    )
    .map_err(LayoutError::io("write", loader.join("loader.conf")))?;
    let mut out = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let base = dir.join("outpost").join(slot);
        copy(&kernel.kernel, &base.join("vmlinuz"))?;
        copy(&kernel.initrd, &base.join("initrd.img"))?;
        let file = entries::entry_file_name(slot, layout.boot.tries);
        let generation = u32::try_from(slots.len() - i).expect("at most 128 slots");
        let text = entries::entry_text(slot, generation, &kernel.version, &layout.boot);
        let path = loader.join("entries").join(&file);
        std::fs::write(&path, &text).map_err(LayoutError::io("write", &path))?;
        out.push(EntryDescription {
            file,
            slot: slot.clone(),
            text,
        });
    }
    Ok(out)
}
