//! Installing into file-backed A/B slots with a file-backed ESP: real files, real bundles
//! (`bundle::create`), the systemd-boot model as the reboot.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use outpost_updater::bootcount::{self, EntryTemplate};
use outpost_updater::bundle;
use outpost_updater::slots::{self, Slot, SlotError, SlotTable};

struct TestBox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    table: SlotTable,
}

fn new_box() -> TestBox {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let esp = root.join("esp");
    fs::create_dir_all(&esp).unwrap();
    let table = SlotTable {
        a: root.join("slot-a.img"),
        b: root.join("slot-b.img"),
        esp,
        template: EntryTemplate::default(),
        tries: 3,
    };
    // The factory image: slot A holds 1.0.0 and its blessed entry.
    fs::write(&table.a, b"factory root 1.0.0").unwrap();
    bootcount::mark_try(&table.esp, Slot::A, 3, &table.template, "1.0.0").unwrap();
    bootcount::bless(&table.esp, Slot::A).unwrap();
    TestBox {
        _dir: dir,
        root,
        table,
    }
}

fn make_bundle(root: &Path, version: &str, image: &[u8]) -> PathBuf {
    let img = root.join(format!("root-{version}.img"));
    fs::write(&img, image).unwrap();
    let out = root.join(format!("outpost-{version}.tar.zst"));
    bundle::create(&out, version, &img).unwrap();
    out
}

fn entry_names(esp: &Path) -> Vec<String> {
    let mut v: Vec<String> = bootcount::list_entries(esp)
        .unwrap()
        .into_iter()
        .map(|e| e.name.file_name())
        .collect();
    v.sort();
    v
}

fn install_bundle(b: &TestBox, booted: Slot, bundle: &Path) -> Result<slots::Installed, SlotError> {
    let version = bundle::read_manifest(bundle).unwrap().version;
    slots::install(&b.table, booted, &version, |w| {
        bundle::stream_root_image(bundle, w).map_err(|e| e.to_string())
    })
}

#[test]
fn install_writes_the_inactive_slot_and_marks_it_to_boot_next() {
    let b = new_box();
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let bundle = make_bundle(&b.root, "1.1.0", &image);
    let i = install_bundle(&b, Slot::A, &bundle).unwrap();
    assert_eq!(i.slot, Slot::B);
    assert_eq!(fs::read(&b.table.b).unwrap(), image);
    assert_eq!(
        entry_names(&b.table.esp),
        ["outpost-a.conf", "outpost-b+3.conf"]
    );
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::B);
    assert_eq!(
        slots::booted_slot(&b.table.esp, Path::new("/nonexistent")),
        Some(Slot::B)
    );
}

#[test]
fn a_longer_old_image_in_a_file_slot_is_cut_to_the_new_one() {
    let b = new_box();
    fs::write(&b.table.b, vec![7u8; 10_000]).unwrap();
    let bundle = make_bundle(&b.root, "1.1.0", b"short");
    install_bundle(&b, Slot::A, &bundle).unwrap();
    assert_eq!(fs::read(&b.table.b).unwrap(), b"short");
}

#[test]
fn a_tampered_bundle_is_refused_and_nothing_is_marked() {
    let b = new_box();
    let image = vec![42u8; 200_000];
    let bundle = make_bundle(&b.root, "1.1.0", &image);
    // A bundle claiming 1.1.0 but carrying another image under the same manifest: rebuild
    // the archive with a different image and the first manifest.
    let other = make_bundle(&b.root, "1.1.0-other", &vec![43u8; 200_000]);
    let m = bundle::read_manifest(&bundle).unwrap();
    let e = slots::install(&b.table, Slot::A, &m.version, |w| {
        // The source streams the other bundle's image but vouches for the first one's hash.
        let root = m.root_entry().map_err(|e| e.to_string())?;
        bundle::stream_root_image(&other, w).map_err(|e| e.to_string())?;
        Ok((root.size, root.sha256.clone()))
    })
    .unwrap_err();
    assert!(
        matches!(e, SlotError::Mismatch { slot: Slot::B, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("does not hold the image"), "{e}");
    assert_eq!(entry_names(&b.table.esp), ["outpost-a.conf"]);
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::A);
}

#[test]
fn a_source_that_fails_midway_leaves_the_entries_untouched() {
    let b = new_box();
    let e = slots::install(&b.table, Slot::A, "9.9.9", |w| {
        w.write_all(&[1u8; 4096]).map_err(|e| e.to_string())?;
        Err("truncated download: unexpected end of archive".into())
    })
    .unwrap_err();
    assert!(e.to_string().contains("truncated download"), "{e}");
    assert_eq!(entry_names(&b.table.esp), ["outpost-a.conf"]);
}

#[test]
fn a_full_disk_is_refused_with_enospc() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: /dev/full is missing on this machine"
        );
        return;
    }
    let mut b = new_box();
    b.table.b = full.to_path_buf();
    let bundle = make_bundle(&b.root, "1.1.0", &vec![5u8; 2_000_000]);
    let e = install_bundle(&b, Slot::A, &bundle).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("No space left on device"), "{s}");
    assert!(s.contains("slot b") && s.contains("/dev/full"), "{s}");
    assert_eq!(entry_names(&b.table.esp), ["outpost-a.conf"]);
}

#[test]
fn a_slot_that_does_not_keep_what_was_written_fails_verification() {
    let b = new_box();
    fs::write(&b.table.b, b"something else").unwrap();
    let e = slots::verify_slot(Slot::B, &b.table.b, 5, &"0".repeat(64)).unwrap_err();
    assert!(matches!(e, SlotError::Mismatch { .. }), "{e}");
    assert!(e.to_string().contains("does not hold the image"), "{e}");
}

#[test]
fn installing_while_the_booted_slot_is_on_trial_is_refused() {
    let b = new_box();
    let bundle = make_bundle(&b.root, "1.1.0", b"v1.1");
    install_bundle(&b, Slot::A, &bundle).unwrap();
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::B);
    let next = make_bundle(&b.root, "1.2.0", b"v1.2");
    let e = install_bundle(&b, Slot::B, &next).unwrap_err();
    assert!(matches!(e, SlotError::BootedNotCommitted { .. }), "{e}");
    // After the commit the next version goes into A.
    bootcount::bless(&b.table.esp, Slot::B).unwrap();
    let i = install_bundle(&b, Slot::B, &next).unwrap();
    assert_eq!(i.slot, Slot::A);
    assert_eq!(
        entry_names(&b.table.esp),
        ["outpost-a+3.conf", "outpost-b.conf"]
    );
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::A);
}

#[test]
fn a_staged_but_unbooted_slot_is_disabled_before_it_is_overwritten() {
    let b = new_box();
    install_bundle(&b, Slot::A, &make_bundle(&b.root, "1.1.0", b"v1.1")).unwrap();
    // A newer version arrives before the restart: B is rewritten; if that fails, B must not
    // stay bootable with a half-written image.
    let e = slots::install(&b.table, Slot::A, "1.2.0", |_| Err("disk error".into())).unwrap_err();
    assert!(e.to_string().contains("disk error"), "{e}");
    assert_eq!(
        entry_names(&b.table.esp),
        ["outpost-a.conf", "outpost-b+0-3.conf"]
    );
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::A);
}

/// Commits 1.1.0 into B (A stays blessed with 1.0.0): the box where the next update rewrites
/// the blessed slot A.
fn box_with_b_committed() -> TestBox {
    let b = new_box();
    install_bundle(&b, Slot::A, &make_bundle(&b.root, "1.1.0", b"v1.1")).unwrap();
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::B);
    bootcount::bless(&b.table.esp, Slot::B).unwrap();
    assert_eq!(
        entry_names(&b.table.esp),
        ["outpost-a.conf", "outpost-b.conf"]
    );
    b
}

/// Regression: the target's blessed entry stayed bootable while its slot was overwritten.
#[test]
fn rewriting_a_blessed_slot_unmarks_it_before_writing() {
    let b = box_with_b_committed();
    let esp = b.table.esp.clone();
    let seen = std::cell::RefCell::new(Vec::new());
    let i = slots::install(&b.table, Slot::B, "1.2.0", |w| {
        // What the ESP says when the first byte goes into slot A.
        *seen.borrow_mut() = entry_names(&esp);
        let bad = bootcount::find_entry(&esp, Slot::A).unwrap().unwrap();
        assert!(bad.name.is_bad(), "{:?}", bad.name);
        slots::stream_reader(&b"v1.2"[..], w)
    })
    .unwrap();
    assert_eq!(seen.into_inner(), ["outpost-a+0.conf", "outpost-b.conf"]);
    assert_eq!(i.slot, Slot::A);
    assert_eq!(fs::read(&b.table.a).unwrap(), b"v1.2");
    assert_eq!(
        entry_names(&b.table.esp),
        ["outpost-a+3.conf", "outpost-b.conf"]
    );
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::A);
}

#[test]
fn a_write_into_a_blessed_slot_that_fails_midway_leaves_it_unbootable() {
    let b = box_with_b_committed();
    let e = slots::install(&b.table, Slot::B, "1.2.0", |w| {
        w.write_all(&[9u8; 100_000]).map_err(|e| e.to_string())?;
        Err("truncated download: unexpected end of archive".into())
    })
    .unwrap_err();
    assert!(e.to_string().contains("truncated download"), "{e}");
    assert_eq!(
        entry_names(&b.table.esp),
        ["outpost-a+0.conf", "outpost-b.conf"]
    );
    // Every boot from now on picks B; A is never tried.
    for _ in 0..4 {
        assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::B);
    }
}

#[test]
fn a_full_disk_while_rewriting_a_blessed_slot_leaves_it_unbootable() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: /dev/full is missing on this machine"
        );
        return;
    }
    let mut b = box_with_b_committed();
    b.table.a = full.to_path_buf();
    let bundle = make_bundle(&b.root, "1.2.0", &vec![5u8; 2_000_000]);
    let e = install_bundle(&b, Slot::B, &bundle).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("No space left on device"), "{s}");
    assert!(s.contains("slot a") && s.contains("/dev/full"), "{s}");
    let a = bootcount::find_entry(&b.table.esp, Slot::A)
        .unwrap()
        .unwrap();
    assert!(a.name.is_bad(), "{:?}", a.name);
    assert_eq!(bootcount::simulate_boot(&b.table.esp).unwrap(), Slot::B);
}
