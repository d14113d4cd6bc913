//! The real thing: build the example appliance twice with mmdebstrap and no cache and compare
//! the sha256 of the two `rootfs.tar.zst`. Minutes long and needs network access to the host's
//! apt sources, so it is `#[ignore]`d here and run by `make test-e2e`:
//!
//! ```text
//! cargo test -p outpost-image --test reproducible -- --ignored --nocapture
//! ```
//!
//! OUTPOST_BIN_DIR, OUTPOST_CA_CERT and OUTPOST_BOOTSTRAP_TOKEN_FILE are passed through when set;
//! otherwise stand-ins are made in a temporary directory (they do not affect reproducibility).

use std::path::{Path, PathBuf};
use std::process::Command;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn build(recipe: &Path, out: &Path, env: &[(&str, PathBuf)]) {
    let status = Command::new(env!("CARGO_BIN_EXE_outpost-image"))
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--no-cache")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .status()
        .expect("run outpost-image build");
    assert!(status.success(), "outpost-image build failed: {status}");
}

#[test]
#[ignore = "runs mmdebstrap twice (minutes, network); run by make test-e2e"]
fn example_recipe_builds_bit_identical_twice_without_cache() {
    if !on_path("mmdebstrap") {
        eprintln!("SKIP: mmdebstrap is not installed (make deps installs it)");
        return;
    }
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/appliance/recipe.toml");
    let work = tempfile::Builder::new()
        .prefix("outpost-image-repro-")
        .tempdir()
        .expect("tempdir");
    let mut env: Vec<(&str, PathBuf)> = Vec::new();
    let standin = |name: &str, content: &[u8]| {
        let p = work.path().join(name);
        std::fs::write(&p, content).expect("write stand-in");
        p
    };
    match std::env::var_os("OUTPOST_BIN_DIR") {
        Some(d) => env.push(("OUTPOST_BIN_DIR", d.into())),
        None => {
            std::fs::create_dir_all(work.path().join("bin")).expect("mkdir");
            std::fs::write(
                work.path().join("bin/outpost-collector"),
                b"#!/bin/sh\nexit 0\n",
            )
            .expect("write");
            env.push(("OUTPOST_BIN_DIR", work.path().join("bin")));
        }
    }
    let ca = std::env::var_os("OUTPOST_CA_CERT").map_or_else(
        || {
            standin(
                "ca.pem",
                b"-----BEGIN CERTIFICATE-----\nMIIBstandin\n-----END CERTIFICATE-----\n",
            )
        },
        PathBuf::from,
    );
    env.push(("OUTPOST_CA_CERT", ca));
    let token = std::env::var_os("OUTPOST_BOOTSTRAP_TOKEN_FILE")
        .map_or_else(|| standin("token", b"repro-token\n"), PathBuf::from);
    env.push(("OUTPOST_BOOTSTRAP_TOKEN_FILE", token));

    let (a, b) = (work.path().join("a"), work.path().join("b"));
    build(&recipe, &a, &env);
    build(&recipe, &b, &env);
    let sha =
        |d: &Path| outpost_image::inputs::sha256_file(&d.join("rootfs.tar.zst")).expect("hash");
    let (sa, sb) = (sha(&a), sha(&b));
    eprintln!("build A rootfs.tar.zst sha256 {sa}\nbuild B rootfs.tar.zst sha256 {sb}");
    if sa != sb {
        let diff = Command::new(env!("CARGO_BIN_EXE_outpost-image"))
            .arg("diff")
            .arg(&a)
            .arg(&b)
            .output()
            .expect("run diff");
        panic!(
            "two builds differ:\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    for f in ["manifest.json", "sbom.spdx.json"] {
        assert!(
            std::fs::read(a.join(f)).ok() == std::fs::read(b.join(f)).ok(),
            "{f} differs"
        );
    }
}
