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
