//! The real `outpost-updater` binary on a file-backed box without a gateway: config errors,
//! `install BUNDLE`, `simulate-reboot`, `boot-check` and `status --json`, with their exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use outpost_updater::bundle;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-updater");

struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("esp/loader/entries")).unwrap();
        std::fs::write(
            p.join("esp/loader/entries/outpost-a.conf"),
            "title Outpost 1.0.0 (slot a)\nsort-key outpost\nversion 2\nlinux /outpost/a/vmlinuz\ninitrd /outpost/a/initrd.img\noptions root=PARTLABEL=root-a rw\n",
        )
        .unwrap();
        std::fs::write(p.join("slot-a.img"), b"factory").unwrap();
        // The "kernel command line" says slot a until a simulated boot records otherwise.
        std::fs::write(p.join("cmdline"), "root=PARTLABEL=root-a rw\n").unwrap();
        std::fs::write(
            p.join("updater.toml"),
            format!(
                "box_tz = \"UTC\"\nstate_dir = \"state\"\ninitial_version = \"1.0.0\"\ncollector_state_dir = \"no-collector\"\n\
                 [slots]\na = \"slot-a.img\"\nb = \"slot-b.img\"\nesp = \"esp\"\ncmdline = \"cmdline\"\n\
                 [health]\ncollector_within = \"0s\"\ntimeout = \"1s\"\ncommands = [[\"sh\", \"-c\", \"test ! -e fail-health\"]]\n{extra}"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(p.join("state")).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.path().join("updater.toml"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn bundle(&self, version: &str, image: &[u8]) -> PathBuf {
        let img = self.path().join(format!("{version}.img"));
        std::fs::write(&img, image).unwrap();
        let out = self.path().join(format!("{version}.tar.zst"));
        bundle::create(&out, version, &img).unwrap();
        out
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn install_reboot_and_commit_through_the_cli() {
    let b = Bench::new("");
    let bundle = b.bundle("1.1.0", b"new root");
    let out = b.run(&["install", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("into slot b"),
        "{}",
        text(&out.stdout)
    );

    let st: serde_json::Value =
        serde_json::from_slice(&b.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["booted_slot"], "a", "{st}");
    assert_eq!(st["state"]["staged_version"], "1.1.0", "{st}");
    assert_eq!(
        st["entries"],
        serde_json::json!(["outpost-b+3.conf", "outpost-a.conf"]),
        "{st}"
    );

    let out = b.run(&["simulate-reboot"]);
    assert_eq!(text(&out.stdout).trim(), "booted slot b");
    let out = b.run(&["boot-check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("slot b committed"));

    let st: serde_json::Value =
        serde_json::from_slice(&b.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["state"]["current_version"], "1.1.0", "{st}");
    assert_eq!(st["state"]["current_slot"], "b", "{st}");
    assert!(st["state"]["staged_version"].is_null(), "{st}");
}

#[test]
fn unhealthy_boot_exits_3_and_the_next_boot_falls_back() {
    let b = Bench::new("");
    let bundle = b.bundle("1.1.0", b"broken root");
    assert!(b
        .run(&["install", bundle.to_str().unwrap()])
        .status
        .success());
    std::fs::write(b.path().join("state/fail-health"), "").unwrap();
    assert_eq!(
        text(&b.run(&["simulate-reboot"]).stdout).trim(),
        "booted slot b"
    );
    let out = b.run(&["boot-check"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&b.run(&["simulate-reboot"]).stdout).trim(),
        "booted slot a"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&b.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["state"]["current_version"], "1.0.0", "{st}");
    assert!(
        st["state"]["last_error"]
            .as_str()
            .unwrap()
            .contains("health check failed on slot b"),
        "{st}"
    );
}

#[test]
fn a_bad_config_names_the_file_and_key() {
    let b = Bench::new("[restart]\ncommand = []\n");
    let out = b.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("updater.toml") && e.contains("restart.command"),
        "{e}"
    );

    let b = Bench::new("[feed]\nspare = \"x\"\n");
    let e = text(&b.run(&["status"]).stderr);
    assert!(e.contains("updater.toml") && e.contains("spare"), "{e}");
}

#[test]
fn install_without_a_mirrored_bundle_says_what_to_do() {
    let b = Bench::new("");
    let out = b.run(&["install"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("outpost-updater sync"),
        "{}",
        text(&out.stderr)
    );
}
