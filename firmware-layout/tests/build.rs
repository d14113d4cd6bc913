//! End-to-end tests of `outpost-layout` on a small layout and a small rootfs archive: real
//! mkfs.ext4, mkfs.vfat, mtools, debugfs, sfdisk and qemu-img, no mounts.

use anyhow::{ensure, Context, Result};
use outpost_layout::tools::find_on_path;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EPOCH: u64 = 1_700_000_000;
const BIN: &str = env!("CARGO_BIN_EXE_outpost-layout");

const SMALL_LAYOUT: &str = r#"
name = "small"
seed = "test-seed"
disk_size = "96MiB"

[boot]
options = "quiet"

[[partition]]
label = "esp"
type = "esp"
size = "16MiB"
fs = "vfat"
contents = "esp"

[[partition]]
label = "root-a"
type = "linux-root-x86-64"
size = "32MiB"
fs = "ext4"
contents = "rootfs"

[[partition]]
label = "root-b"
type = "linux-root-x86-64"
size = "32MiB"
fs = "ext4"
contents = "rootfs"

[[partition]]
label = "data"
type = "linux-generic"
size = "rest"
fs = "ext4"
contents = "empty"
"#;

/// Returns false (after printing SKIP) when a tool the build needs is missing.
fn have_tools(extra: &[&str]) -> bool {
    // Unpacking a root file system keeps its owners, which needs root (as the image build does).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1));
    if euid != Some("0") {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: building an image needs root (file owners in the root file system)"
        );
        return false;
    }
    for t in [
        "mkfs.ext4",
        "debugfs",
        "mkfs.vfat",
        "mcopy",
        "mdir",
        "mtype",
        "qemu-img",
    ]
    .iter()
    .chain(extra)
    {
        if find_on_path(t).is_none() {
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: {t} is not installed (make deps installs it)"
            );
            return false;
        }
    }
    if !Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").is_file() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: systemd-boot-efi is not installed (make deps installs it)"
        );
        return false;
    }
    true
}

/// A small root file system: a kernel and initrd pair, an older kernel, a symlink, an owned
/// directory, a file newer than the epoch (its mtime must be clamped).
fn write_rootfs(path: &Path) -> Result<()> {
    write_rootfs_with(path, b"x")
}

/// [`write_rootfs`] with another content of `var/lib/app/state` (an "overlay" change).
fn write_rootfs_with(path: &Path, state: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let enc = zstd::stream::write::Encoder::new(file, 3)?.auto_finish();
    let mut b = tar::Builder::new(enc);
    let mut add = |name: &str,
                   kind: tar::EntryType,
                   mode: u32,
                   uid: u64,
                   mtime: u64,
                   data: &[u8],
                   link: Option<&str>|
     -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l)?;
        }
        b.append_data(&mut h, name, data)?;
        Ok(())
    };
    let dir = tar::EntryType::Directory;
    let reg = tar::EntryType::Regular;
    for d in ["boot", "etc", "usr", "usr/bin", "var", "var/lib"] {
        add(d, dir, 0o755, 0, EPOCH - 100, b"", None)?;
    }
    add("var/lib/app", dir, 0o750, 1000, EPOCH - 50, b"", None)?;
    let kernel: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    add(
        "boot/vmlinuz-6.1.0-9-amd64",
        reg,
        0o644,
        0,
        EPOCH - 10,
        &kernel[..200_000],
        None,
    )?;
    add(
        "boot/initrd.img-6.1.0-9-amd64",
        reg,
        0o644,
        0,
        EPOCH - 10,
        &kernel[..100_000],
        None,
    )?;
    add(
        "boot/vmlinuz-6.1.0-28-amd64",
        reg,
        0o644,
        0,
        EPOCH - 10,
        &kernel,
        None,
    )?;
    add(
        "boot/initrd.img-6.1.0-28-amd64",
        reg,
        0o644,
        0,
        EPOCH - 10,
        &kernel[..150_000],
        None,
    )?;
    add(
        "etc/machine-id",
        reg,
        0o444,
        0,
        EPOCH - 10,
        b"uninitialized\n",
        None,
    )?;
    add(
        "etc/newer",
        reg,
        0o600,
        0,
        EPOCH + 1_000_000,
        b"from the future\n",
        None,
    )?;
    add(
        "var/lib/app/state",
        reg,
        0o640,
        1000,
        EPOCH - 5,
        state,
        None,
    )?;
    add(
        "usr/bin/sh",
        tar::EntryType::Symlink,
        0o777,
        0,
        EPOCH - 10,
        b"",
        Some("dash"),
    )?;
    b.into_inner()?;
    Ok(())
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("layout.toml"), SMALL_LAYOUT)?;
        write_rootfs(&dir.path().join("rootfs.tar.zst"))?;
        // What outpost-image writes beside the archive: a build without an epoch takes its
        // source_date_epoch.
        std::fs::write(
            dir.path().join("manifest.json"),
            format!("{{\"source_date_epoch\": {EPOCH}, \"files\": []}}"),
        )?;
        Ok(Fixture { dir })
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn build(&self, layout: &str, out: &str, extra: &[&str]) -> Result<Output> {
        Ok(self
            .build_cmd(layout, "rootfs.tar.zst", out)
            .arg("--source-date-epoch")
            .arg(EPOCH.to_string())
            .args(extra)
            .output()?)
    }
    /// `outpost-layout build` of fixture files, without an epoch (the manifest's is used).
    fn build_cmd(&self, layout: &str, rootfs: &str, out: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg("build")
            .arg(self.path(layout))
            .arg("--rootfs")
            .arg(self.path(rootfs))
            .arg("--out")
            .arg(self.path(out))
            .env("OUTPOST_LOG", "warn")
            // The default partition cache goes under the fixture, not the user's home.
            .env("XDG_CACHE_HOME", self.path("cache-home"));
        c
    }
}

fn ok(out: Output) -> Result<Output> {
    ensure!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Checks that a run failed with `code` and that stderr names every one of `needles`.
fn failed_naming(out: &Output, code: i32, needles: &[&str]) -> Result<()> {
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code),
        "exit {:?}, want {code}: {err}",
        out.status.code()
    );
    for n in needles {
        ensure!(err.contains(n), "error does not name {n:?}: {err}");
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn no_leftovers(out: &Path) -> Result<()> {
    if out.exists() {
        for e in std::fs::read_dir(out)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            ensure!(
                !name.ends_with(".raw") && !name.starts_with(".outpost-layout-"),
                "left behind: {name}"
            );
        }
    }
    Ok(())
}

#[test]
fn two_builds_are_bit_identical_in_every_format() -> Result<()> {
    if !have_tools(&[]) {
        return Ok(());
    }
    let fx = Fixture::new()?;
    ok(fx.build(
        "layout.toml",
        "one",
        &["--format", "qcow2,vhdx,vmdk", "--no-cache"],
    )?)?;
    // A second build, later, from a separately unpacked tree: nothing may leak from the clock.
    // It fills a cache, and a third build takes every file system from that cache: all three
    // are the same bytes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cache = fx.path("cache").to_string_lossy().into_owned();
    ok(fx.build(
        "layout.toml",
        "two",
        &["--format", "qcow2,vhdx,vmdk", "--cache", &cache],
    )?)?;
    let three = fx
        .build_cmd("layout.toml", "rootfs.tar.zst", "three")
        .env("OUTPOST_LOG", "info")
        .args(["--format", "qcow2,vhdx,vmdk", "--cache", &cache])
        .output()?;
    let log = String::from_utf8_lossy(&three.stderr).into_owned();
    ok(three)?;
    for label in ["esp", "root-a", "data"] {
        ensure!(
            log.lines()
                .any(|l| l.contains("cached") && l.contains(&format!("partition={label}"))),
            "the third build did not take {label} from the cache:\n{log}"
        );
    }
    ensure!(
        log.lines()
            .any(|l| l.contains("copy of the first slot") && l.contains("partition=root-b")),
        "root-b was not made as a relabelled copy of root-a:\n{log}"
    );
    for f in [
        "small.raw",
        "small.qcow2",
        "small.vhdx",
        "small.vmdk",
        "layout.json",
    ] {
        let a = sha256(&fx.path(&format!("one/{f}")))?;
        for other in ["two", "three"] {
            let b = sha256(&fx.path(&format!("{other}/{f}")))?;
            ensure!(
                a == b,
                "{f} differs between builds one and {other}: {a} vs {b}"
            );
        }
    }
    // The converted images still hold the same disk (the pinned vhdx/vmdk identifiers too).
    for fmt in ["qcow2", "vhdx", "vmdk"] {
        let img = fx.path(&format!("one/small.{fmt}"));
        ok(Command::new("qemu-img")
            .args(["check", "-f", fmt])
            .arg(&img)
            .output()?)?;
        ok(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", fmt])
            .arg(fx.path("one/small.raw"))
            .arg(&img)
            .output()?)?;
    }
    // The raw image is sparse: far fewer blocks than its length.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(fx.path("one/small.raw"))?;
    ensure!(m.len() == 96 << 20, "raw size {}", m.len());
    ensure!(
        m.blocks() * 512 < m.len() / 2,
        "raw image is not sparse: {} blocks",
        m.blocks()
    );
    // A different epoch gives a different image (the epoch really is in the bytes).
    // With the cache of the same layout and archive too: the epoch is part of every key.
    let out = fx
        .build_cmd("layout.toml", "rootfs.tar.zst", "four")
        .env("SOURCE_DATE_EPOCH", (EPOCH + 86_400).to_string())
        .args(["--cache", &cache])
        .output()?;
    ok(out)?;
    ensure!(
        sha256(&fx.path("four/small.raw"))? != sha256(&fx.path("one/small.raw"))?,
        "SOURCE_DATE_EPOCH had no effect"
    );
    Ok(())
}

#[test]
fn changed_root_rebuilds_only_the_root_slots_and_matches_a_build_without_cache() -> Result<()> {
    if !have_tools(&[]) {
        return Ok(());
    }
    let fx = Fixture::new()?;
    let cache = fx.path("cache").to_string_lossy().into_owned();
    ok(fx.build("layout.toml", "first", &["--cache", &cache])?)?;
    // One file of the root file system changes (as an overlay file would).
    write_rootfs_with(&fx.path("rootfs2.tar.zst"), b"changed")?;
    let cached = fx
        .build_cmd("layout.toml", "rootfs2.tar.zst", "cached")
        .arg("--source-date-epoch")
        .arg(EPOCH.to_string())
        .args(["--cache", &cache])
        .env("OUTPOST_LOG", "info")
        .output()?;
    let log = String::from_utf8_lossy(&cached.stderr).into_owned();
    ok(cached)?;
    let took = |label: &str| {
        log.lines()
            .any(|l| l.contains("cached") && l.contains(&format!("partition={label}")))
    };
    ensure!(
        took("esp") && took("data"),
        "the ESP and data partitions did not come from the cache:\n{log}"
    );
    ensure!(
        !took("root-a") && !took("root-b"),
        "a root slot came from the cache although the archive changed:\n{log}"
    );
    ensure!(
        log.contains("copy of the first slot"),
        "root-b was not made as a copy of root-a:\n{log}"
    );
    let fresh = fx
        .build_cmd("layout.toml", "rootfs2.tar.zst", "fresh")
        .arg("--source-date-epoch")
        .arg(EPOCH.to_string())
        .arg("--no-cache")
        .output()?;
    ok(fresh)?;
    let (a, b) = (
        sha256(&fx.path("cached/small.raw"))?,
        sha256(&fx.path("fresh/small.raw"))?,
    );
    ensure!(
        a == b,
        "a cached rebuild differs from a fresh one: {a} vs {b}"
    );
    ensure!(
        a != sha256(&fx.path("first/small.raw"))?,
        "the changed file did not change the image"
    );
    // The cache keeps one generation per partition, and no copy of a copied slot.
    let n = std::fs::read_dir(fx.path("cache/parts/root-a"))?.count();
    ensure!(n == 1, "root-a: {n} cache entries, expected 1");
    ensure!(
        !fx.path("cache/parts/root-b").exists(),
        "root-b, a relabelled copy of root-a, was cached"
    );
    // Both slots are valid file systems with their own label and UUID.
    let desc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.path("fresh/layout.json"))?)?;
    for (n, label) in [(2usize, "root-a"), (3, "root-b")] {
        let part = fx.path(&format!("{label}.img"));
        extract_partition(&fx.path("fresh/small.raw"), &desc, n, &part)?;
        ok(Command::new("e2fsck").arg("-fn").arg(&part).output()?)?;
        let info = Command::new("dumpe2fs").arg("-h").arg(&part).output()?;
        let text = String::from_utf8_lossy(&info.stdout).into_owned();
        let uuid = desc["partitions"][n - 1]["fs_id"].as_str().unwrap_or("?");
        ensure!(
            text.contains(&format!("Filesystem volume name:   {label}")) && text.contains(uuid),
            "{label} has not its own label and UUID {uuid}:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn image_table_matches_sfdisk_and_inspect() -> Result<()> {
    if !have_tools(&["sfdisk"]) {
        return Ok(());
    }
    let fx = Fixture::new()?;
    ok(fx.build("layout.toml", "out", &[])?)?;
    let raw = fx.path("out/small.raw");
    let desc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.path("out/layout.json"))?)?;

    let sf: serde_json::Value = serde_json::from_slice(
        &ok(Command::new("sfdisk").arg("--json").arg(&raw).output()?)?.stdout,
    )?;
    let table = &sf["partitiontable"];
    ensure!(table["label"] == "gpt", "{table}");
    ensure!(table["id"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case(desc["disk_guid"].as_str().unwrap()));
    let parts = table["partitions"].as_array().unwrap();
    let want = desc["partitions"].as_array().unwrap();
    ensure!(parts.len() == 4 && want.len() == 4);
    for (p, w) in parts.iter().zip(want) {
        ensure!(p["name"] == w["label"], "{p} vs {w}");
        ensure!(
            p["start"] == w["start_lba"] && p["size"] == w["size_sectors"],
            "{p} vs {w}"
        );
        ensure!(p["type"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(w["type_guid"].as_str().unwrap()));
        ensure!(p["uuid"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(w["part_guid"].as_str().unwrap()));
    }
    ensure!(
        parts[0]["start"] == 2048 && parts[0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    );

    let out = ok(Command::new(BIN)
        .arg("inspect")
        .arg("--json")
        .arg(&raw)
        .output()?)?;
    let i: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let fs: Vec<&str> = i["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["fs"].as_str().unwrap())
        .collect();
    ensure!(fs == ["vfat", "ext4", "ext4", "ext4"], "{fs:?}");
    let entries = i["entries"].as_array().unwrap();
    ensure!(entries.len() == 2, "{i}");
    ensure!(
        entries[0]["file"] == "outpost-a+3.conf"
            && entries[0]["slot"] == "a"
            && entries[0]["tries_left"] == 3
    );
    ensure!(entries[1]["file"] == "outpost-b+3.conf" && entries[1]["state"] == "indeterminate");
    ensure!(
        entries[1]["options"] == "root=PARTLABEL=root-b rw console=ttyS0,115200 quiet",
        "{}",
        entries[1]
    );
    ensure!(!i["loader_conf"].as_str().unwrap().contains("default"));
    // The newest kernel went to the ESP, and systemd-boot sits at the removable-media path.
    let target = format!("{}@@{}", raw.display(), 2048 * 512);
    let listing = ok(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &target, "-b", "-s", "::/"])
        .output()?)?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    ensure!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
    ensure!(listing.contains("::/outpost/b/initrd.img"), "{listing}");
    ensure!(
        desc["kernel_version"] == "6.1.0-28-amd64",
        "{}",
        desc["kernel_version"]
    );
    let text =
        String::from_utf8_lossy(&ok(Command::new(BIN).arg("inspect").arg(&raw).output()?)?.stdout)
            .into_owned();
    ensure!(
        text.contains("outpost-a+3.conf")
            && text.contains("3 tries left")
            && text.contains("root-b"),
        "{text}"
    );
    Ok(())
}

/// Copies partition `n` (1-based, from layout.json) out of the raw image.
fn extract_partition(raw: &Path, desc: &serde_json::Value, n: usize, to: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let p = &desc["partitions"][n - 1];
    let (off, size) = (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap());
    let mut f = std::fs::File::open(raw)?;
    f.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; usize::try_from(size)?];
    f.read_exact(&mut buf)?;
    std::fs::write(to, buf)?;
    Ok(())
}

#[test]
fn root_file_system_keeps_owners_and_pins_every_time() -> Result<()> {
    if !have_tools(&["e2fsck", "fsck.vfat"]) {
        return Ok(());
    }
    let fx = Fixture::new()?;
    ok(fx.build("layout.toml", "out", &[])?)?;
    let desc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.path("out/layout.json"))?)?;
    let root = fx.path("root-a.img");
    extract_partition(&fx.path("out/small.raw"), &desc, 2, &root)?;
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(&root).output()?;
    ensure!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let stat = |p: &str| -> Result<String> {
        let o = ok(Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {p}"))
            .arg(&root)
            .output()?)?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let epoch_hex = format!("0x{EPOCH:08x}:00000000");
    for p in [
        "/",
        "/etc/machine-id",
        "/var/lib/app",
        "/var/lib/app/state",
        "/usr/bin/sh",
        "/lost+found",
        "/etc/newer",
    ] {
        let s = stat(p)?;
        for field in ["ctime", "atime", "crtime"] {
            let line = s
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{field}:")))
                .unwrap_or("");
            ensure!(line.contains(&epoch_hex), "{p} {field} not pinned: {line}");
        }
    }
    // mtimes keep the archive's value, clamped to the epoch.
    let m = stat("/var/lib/app/state")?;
    ensure!(m.contains(&format!("mtime: 0x{:08x}", EPOCH - 5)), "{m}");
    let n = stat("/etc/newer")?;
    ensure!(n.contains(&format!("mtime: 0x{EPOCH:08x}")), "{n}");
    ensure!(
        m.contains("User:  1000") && m.contains("Mode:  0640"),
        "{m}"
    );
    // The file-system UUID is the derived one.
    let dump = String::from_utf8_lossy(
        &ok(Command::new("dumpe2fs").arg("-h").arg(&root).output()?)?.stdout,
    )
    .into_owned();
    let uuid = desc["partitions"][1]["fs_id"].as_str().unwrap();
    ensure!(dump.contains(uuid), "{uuid} not in {dump}");
    ensure!(dump.contains("Filesystem volume name:   root-a"), "{dump}");
    // And the ESP is a clean FAT with the derived volume id.
    let esp = fx.path("esp.img");
    extract_partition(&fx.path("out/small.raw"), &desc, 1, &esp)?;
    let v = Command::new("fsck.vfat").arg("-n").arg(&esp).output()?;
    ensure!(
        v.status.success(),
        "fsck.vfat: {}",
        String::from_utf8_lossy(&v.stdout)
    );
    let id = desc["partitions"][0]["fs_id"]
        .as_str()
        .unwrap()
        .to_uppercase();
    let info = String::from_utf8_lossy(
        &ok(Command::new("minfo")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .output()?)?
        .stdout,
    )
    .into_owned();
    ensure!(
        info.to_uppercase()
            .contains(&format!("SERIAL NUMBER: {id}")),
        "{id} not in {info}"
    );
    Ok(())
}

#[test]
fn bad_layouts_fail_before_any_work_naming_file_and_key() -> Result<()> {
    let fx = Fixture::new()?;
    let cases = [
        (
            SMALL_LAYOUT.replace("seed = \"test-seed\"", "seed = \"s\"\ncolour = \"red\""),
            "colour",
        ),
        (
            SMALL_LAYOUT.replacen("size = \"32MiB\"", "size = \"32MiB\"\nstart = \"8MiB\"", 1),
            "partition[1].start",
        ),
        (
            SMALL_LAYOUT.replacen(
                "size = \"32MiB\"",
                "size = \"32MiB\"\nstart = \"17000KiB\"",
                1,
            ),
            "partition[1].start",
        ),
        (
            SMALL_LAYOUT.replace("disk_size = \"96MiB\"", "disk_size = \"64MiB\""),
            "partition[2].size",
        ),
        (
            SMALL_LAYOUT.replace("fs = \"vfat\"", "fs = \"ext4\""),
            "partition[0].fs",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        std::fs::write(fx.path(&name), text)?;
        let out = fx.build(&name, &format!("out{i}"), &[])?;
        failed_naming(&out, 2, &[&name, key]).with_context(|| format!("case {i}"))?;
        no_leftovers(&fx.path(&format!("out{i}")))?;
    }
    Ok(())
}

#[test]
fn too_small_root_is_refused_before_mkfs_and_leaves_nothing() -> Result<()> {
    if !have_tools(&[]) {
        return Ok(());
    }
    let fx = Fixture::new()?;
    // A rootfs with a 30 MiB file does not fit a 32 MiB ext4 with its journal and metadata.
    let big = fx.path("big.tar.zst");
    {
        let enc = zstd::stream::write::Encoder::new(std::fs::File::create(&big)?, 3)?.auto_finish();
        let mut b = tar::Builder::new(enc);
        let mut h = tar::Header::new_gnu();
        h.set_size(30 << 20);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(EPOCH);
        b.append_data(&mut h, "big", std::io::repeat(7).take(30 << 20))?;
        b.into_inner()?;
    }
    let out = fx.build_cmd("layout.toml", "big.tar.zst", "out").output()?;
    failed_naming(&out, 2, &["partition[1].size", "root file system"])?;
    no_leftovers(&fx.path("out"))?;
    Ok(())
}

#[test]
fn missing_tool_is_named_with_its_package() -> Result<()> {
    let fx = Fixture::new()?;
    let empty = fx.path("empty-path");
    std::fs::create_dir(&empty)?;
    let out = fx
        .build_cmd("layout.toml", "rootfs.tar.zst", "out")
        .env("PATH", &empty)
        .output()?;
    failed_naming(&out, 3, &["mkfs.vfat not found on PATH", "dosfstools"])?;
    no_leftovers(&fx.path("out"))?;
    Ok(())
}

#[test]
fn plan_check_tools_names_a_missing_tool_before_any_build() -> Result<()> {
    let fx = Fixture::new()?;
    let empty = fx.path("empty-path");
    std::fs::create_dir(&empty)?;
    let out = Command::new(BIN)
        .arg("plan")
        .arg(fx.path("layout.toml"))
        .args(["--check-tools", "--format", "raw,qcow2"])
        .env("PATH", &empty)
        .output()?;
    failed_naming(&out, 3, &["mkfs.vfat not found on PATH", "dosfstools"])?;
    // Without --check-tools, plan needs no tool.
    let out = Command::new(BIN)
        .arg("plan")
        .arg(fx.path("layout.toml"))
        .env("PATH", &empty)
        .output()?;
    ok(out)?;
    if have_tools(&["qemu-img"]) {
        ok(Command::new(BIN)
            .arg("plan")
            .arg(fx.path("layout.toml"))
            .args(["--check-tools", "--format", "raw,qcow2"])
            .output()?)?;
    }
    Ok(())
}

#[test]
fn build_without_an_epoch_or_manifest_is_refused_naming_both() -> Result<()> {
    if !have_tools(&[]) {
        return Ok(());
    }
    let fx = Fixture::new()?;
    std::fs::remove_file(fx.path("manifest.json"))?;
    let out = fx
        .build_cmd("layout.toml", "rootfs.tar.zst", "out")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()?;
    failed_naming(&out, 1, &["SOURCE_DATE_EPOCH", "manifest.json"])?;
    no_leftovers(&fx.path("out"))?;
    Ok(())
}

#[test]
fn boot_refuses_missing_firmware_and_non_loopback_forwards() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("disk.raw");
    std::fs::write(&img, vec![0u8; 4096])?;
    let missing = dir.path().join("no-such-OVMF_CODE.fd");
    let out = Command::new(BIN)
        .arg("boot")
        .arg(&img)
        .arg("--ovmf-code")
        .arg(&missing)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if find_on_path("qemu-system-x86_64").is_none() {
        ensure!(err.contains("qemu-system-x86"), "{err}");
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: qemu-system-x86_64 is not installed (make deps installs it)"
        );
        return Ok(());
    }
    failed_naming(&out, 3, &["no-such-OVMF_CODE.fd", "ovmf"])?;
    let out = Command::new(BIN)
        .arg("boot")
        .arg(&img)
        .args(["--hostfwd", "tcp:0.0.0.0:2222-:22"])
        .output()?;
    failed_naming(&out, 2, &["--hostfwd", "127.0.0.0/8"])?;
    Ok(())
}

/// Kills and reaps the child when dropped, so a failing test leaves no QEMU behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the small image (its "kernel" is not a real one) under OVMF with `boot`'s own QEMU
/// command line: the firmware must find systemd-boot at the removable-media path on our FAT,
/// and systemd-boot must read our entries and choose slot a.
#[test]
fn firmware_starts_systemd_boot_which_picks_slot_a() -> Result<()> {
    use outpost_layout::qemu::{qemu_args, BootOptions, OVMF_CODE, OVMF_VARS};
    if !have_tools(&["qemu-system-x86_64"]) {
        return Ok(());
    }
    if !Path::new(OVMF_CODE).is_file() || !Path::new(OVMF_VARS).is_file() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: OVMF is not installed (make deps installs package ovmf)"
        );
        return Ok(());
    }
    let fx = Fixture::new()?;
    ok(fx.build("layout.toml", "out", &[])?)?;
    let vars = fx.path("vars.fd");
    std::fs::copy(OVMF_VARS, &vars)?;
    let serial = fx.path("serial.log");
    let opts = BootOptions {
        image: fx.path("out/small.raw"),
        ovmf_code: OVMF_CODE.into(),
        ovmf_vars: OVMF_VARS.into(),
        serial: Some(serial.clone()),
        hostfwd: Vec::new(),
        memory_mib: 256,
        timeout: None,
    };
    let child = Command::new("qemu-system-x86_64")
        .args(qemu_args(&opts, &vars, "raw"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut qemu = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut log = String::new();
    while std::time::Instant::now() < deadline {
        log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
        if log.contains("Error loading \\outpost\\") {
            break;
        }
        if let Some(status) = qemu.0.try_wait()? {
            anyhow::bail!("qemu exited early ({status}): {log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(qemu);
    ensure!(
        log.contains("Error loading \\outpost\\a\\vmlinuz"),
        "systemd-boot did not try slot a's kernel: {log}"
    );
    Ok(())
}
