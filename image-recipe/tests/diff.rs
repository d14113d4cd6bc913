//! `outpost-image diff` on two small outputs, through the real binary.

mod common;

use std::process::Command;

use common::Fixture;

fn diff(a: &std::path::Path, b: &std::path::Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-image"));
    cmd.arg("diff").arg(a).arg(b);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run outpost-image diff");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn diff_reports_identical_and_changed_outputs() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        out.path().join("a"),
        out.path().join("b"),
        out.path().join("c"),
    );
    fx.build_into(&a);
    fx.build_into(&b);
    let (code, text) = diff(&a, &b, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("identical"));

    std::fs::write(fx.dir.path().join("overlay/etc/motd"), "changed\n").expect("write");
    std::fs::write(fx.dir.path().join("overlay/etc/new-file"), "new\n").expect("write");
    std::fs::remove_file(fx.dir.path().join("overlay/etc/outpost/site.conf")).expect("rm");
    fx.build_into(&c);
    let (code, text) = diff(&a, &c, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("content differs: /etc/motd"), "{text}");
    assert!(text.contains("only in B: /etc/new-file"), "{text}");
    assert!(text.contains("only in A: /etc/outpost/site.conf"), "{text}");

    let (code, text) = diff(&a, &c, true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["identical"], false);
    assert_eq!(v["differences"]["only_in_b"][0], "etc/new-file");

    // Bare archives compare too.
    let (code, text) = diff(&a.join("rootfs.tar.zst"), &c.join("rootfs.tar.zst"), false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("content differs: /etc/motd"), "{text}");
}

#[test]
fn diff_reports_metadata_and_package_changes() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (a, b) = (out.path().join("a"), out.path().join("b"));
    fx.build_into(&a);
    fx.build_into(&b);
    let edit = |file: &str, from: &str, to: &str| {
        let p = b.join(file);
        let t = std::fs::read_to_string(&p)
            .expect("read")
            .replacen(from, to, 1);
        std::fs::write(&p, t).expect("write");
    };
    edit("manifest.json", "\"mode\": \"0644\"", "\"mode\": \"0600\"");
    edit("sbom.spdx.json", "1:2.0-1", "1:2.0-2");
    let (code, text) = diff(&a, &b, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("metadata differs:") && text.contains("mode 0644 -> 0600"),
        "{text}"
    );
    assert!(
        text.contains("package version differs: libfoo1:amd64 1:2.0-1 -> 1:2.0-2"),
        "{text}"
    );
}

#[test]
fn diff_of_a_missing_output_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, text) = diff(&dir.path().join("nope"), dir.path(), false);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("nope") && text.contains("does not exist"),
        "{text}"
    );
}

/// The decompressed tar stream of `dir/rootfs.tar.zst`.
fn tar_bytes(dir: &std::path::Path) -> Vec<u8> {
    zstd::decode_all(std::fs::File::open(dir.join("rootfs.tar.zst")).expect("open")).expect("zstd")
}

/// Writes `tar` compressed at `level` as `dir/rootfs.tar.zst`.
fn write_archive(dir: &std::path::Path, tar: &[u8], level: i32) {
    let z = zstd::encode_all(tar, level).expect("compress");
    std::fs::write(dir.join("rootfs.tar.zst"), z).expect("write");
}

/// Copies a build output directory (flat: archive, manifest, SBOM).
fn copy_output(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[test]
fn diff_compares_archive_bytes_when_manifests_agree() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        out.path().join("a"),
        out.path().join("b"),
        out.path().join("c"),
    );
    fx.build_into(&a);

    // B: the same manifest and SBOM, an archive whose only change is one tar header field
    // (the mtime of etc/motd; the manifest still says the old one).
    copy_output(&a, &b);
    let mut tar = tar_bytes(&a);
    let pos = {
        let mut ar = tar::Archive::new(&tar[..]);
        let mut found = None;
        for e in ar.entries().expect("entries") {
            let e = e.expect("entry");
            if e.path().expect("path").to_string_lossy() == "etc/motd" {
                found = Some(usize::try_from(e.raw_header_position()).expect("fits"));
            }
        }
        found.expect("etc/motd in the archive")
    };
    let mut header = tar::Header::from_byte_slice(&tar[pos..pos + 512]).clone();
    let old = header.mtime().expect("mtime");
    header.set_mtime(old - 1);
    header.set_cksum();
    tar[pos..pos + 512].copy_from_slice(header.as_bytes());
    write_archive(&b, &tar, 3);
    let (code, text) = diff(&a, &b, false);
    assert_eq!(
        code, 1,
        "a header-only difference must not be reported identical: {text}"
    );
    assert!(
        text.contains("archive differs: rootfs.tar.zst sha256"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "archive differs: tar header of etc/motd: mtime {old} -> {}",
            old - 1
        )),
        "{text}"
    );
    assert!(!text.contains("content differs"), "{text}");
    let (code, json) = diff(&a, &b, true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["identical"], false);
    assert!(v["differences"]["archive_differs"]
        .as_array()
        .is_some_and(|d| d.len() >= 2));

    // C: the same tar stream compressed at another level: "compression only".
    copy_output(&a, &c);
    write_archive(&c, &tar_bytes(&a), 19);
    let (code, text) = diff(&a, &c, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("compression only"), "{text}");
}

#[test]
fn diff_reports_differing_manifest_fields() {
    let fx = Fixture::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (a, b) = (out.path().join("a"), out.path().join("b"));
    fx.build_into(&a);
    copy_output(&a, &b);
    let m = b.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&m).expect("read")).expect("json");
    v["source_date_epoch"] = serde_json::json!(1_700_000_000u64);
    v["seed"] = serde_json::json!("another-seed");
    v["inputs_sha256"] = serde_json::json!("00");
    std::fs::write(&m, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    let (code, text) = diff(&a, &b, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("manifest differs: source_date_epoch 1735689600 -> 1700000000"),
        "{text}"
    );
    assert!(text.contains("manifest differs: seed "), "{text}");
    assert!(text.contains("-> another-seed"), "{text}");
    assert!(text.contains("manifest differs: inputs_sha256 "), "{text}");
    // Same archive: no archive line.
    assert!(!text.contains("archive differs"), "{text}");
}
