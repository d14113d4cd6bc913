//! Embeds every file under `assets/rootfs/` into the binary (see `src/assets.rs`).

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String, bool)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            walk(root, &p, out);
        } else if meta.is_file() {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push((
                rel,
                p.to_string_lossy().into_owned(),
                meta.permissions().mode() & 0o111 != 0,
            ));
        }
    }
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let root = Path::new(&manifest).join("assets").join("rootfs");
    println!("cargo:rerun-if-changed=assets");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    let mut code = String::from("/// Embedded rootfs assets: (path, bytes, executable).\npub static ROOTFS_ASSETS: &[(&str, &[u8], bool)] = &[\n");
    for (rel, abs, exec) in &files {
        println!("cargo:rerun-if-changed={abs}");
        let _ = writeln!(code, "    ({rel:?}, include_bytes!({abs:?}), {exec}),");
    }
    code.push_str("];\n");
    let modes = Path::new(&manifest).join("assets").join("modes.txt");
    println!("cargo:rerun-if-changed={}", modes.display());
    if modes.is_file() {
        let _ = writeln!(
            code,
            "/// Embedded `assets/modes.txt`.\npub static ASSET_MODES: &str = include_str!({:?});",
            modes.to_string_lossy()
        );
    } else {
        code.push_str(
            "/// Embedded `assets/modes.txt` (absent).\npub static ASSET_MODES: &str = \"\";\n",
        );
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("assets.rs");
    std::fs::write(out, code).unwrap_or_else(|e| panic!("cannot write assets.rs: {e}"));
}
