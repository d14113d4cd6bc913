//! Recipe parsing and every bad-input error: each names the file, the key (with line) and the
//! value, and fails before any long work.

use std::io::Write as _;
mod common;

use std::path::Path;
use std::process::Command;

use common::{Fixture, RECIPE};
use outpost_image::inputs::Inputs;
use outpost_image::pipeline::stage_keys;
use outpost_image::sources::{SourceOrigin, Sources};
use outpost_image::Recipe;

fn parse_err(text: &str) -> String {
    match Recipe::parse(Path::new("dir/recipe.toml"), text) {
        Ok(_) => panic!("recipe was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn example_recipe_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/appliance/recipe.toml");
    let r = Recipe::load(&path).expect("examples/appliance/recipe.toml must parse");
    for p in [
        "linux-image-amd64",
        "systemd-sysv",
        "systemd-boot-efi",
        "udev",
        "ca-certificates",
        "initramfs-tools",
    ] {
        assert!(r.base.packages.iter().any(|x| x == p), "example lacks {p}");
    }
    assert!(
        r.base.mirror.is_none() && r.base.sources.is_none(),
        "the example must use the host's sources"
    );
    let o = r.outpost.as_ref().expect("the example installs the agents");
    assert!(
        o.updater_bin
            .as_ref()
            .is_some_and(|p| p.ends_with("outpost-updater")),
        "the example installs the update agent: {:?}",
        o.updater_bin
    );
    for unit in ["outpost-boot-check.service", "outpost-updater.service"] {
        assert!(r.services.enable.iter().any(|u| u == unit), "{unit}");
    }
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains("://"), "no mirror host in the example");
}

#[test]
fn fixture_recipe_parses_with_defaults() {
    let r = Recipe::parse(Path::new("r.toml"), RECIPE).expect("parse");
    assert_eq!(r.base.architecture, "amd64");
    assert_eq!(r.firstboot.network, "dhcp");
    assert_eq!(r.seed(), "test-appliance-1.0");
}

#[test]
fn gateways_expand_environment_variables() {
    let text = RECIPE.replace(
        "10.0.2.2:5723",
        "10.0.2.2:${OUTPOST_TEST_SURELY_UNSET_PORT:-6000}",
    );
    let r = Recipe::parse(Path::new("r.toml"), &text).expect("parse");
    assert_eq!(
        r.outpost.map(|o| o.gateways),
        Some(vec!["10.0.2.2:6000".to_string()])
    );
    let e = parse_err(&RECIPE.replace(
        "10.0.2.2:5723",
        "10.0.2.2:${OUTPOST_TEST_SURELY_UNSET_PORT}",
    ));
    assert!(
        e.contains("outpost.gateways")
            && e.contains("OUTPOST_TEST_SURELY_UNSET_PORT")
            && e.contains("not set"),
        "{e}"
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = RECIPE.replace("variant = \"apt\"", "variant = \"apt\"\nflavour = \"x\"");
    let e = parse_err(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("flavour"))
        .map_or(0, |n| n + 1);
    assert!(e.starts_with(&format!("dir/recipe.toml:{line}:")), "{e}");
    assert!(e.contains("unknown field `flavour`"), "{e}");
}

#[test]
fn invalid_values_name_key_line_and_value() {
    let cases = [
        (
            "variant = \"apt\"",
            "variant = \"tiny\"",
            "base.variant",
            "\"tiny\"",
        ),
        (
            "packages = [\"systemd\"]",
            "packages = [\"Bad Name\"]",
            "base.packages",
            "\"Bad Name\"",
        ),
        (
            "mode = \"0640\"",
            "mode = \"rwx\"",
            "file[0].mode",
            "\"rwx\"",
        ),
        ("uid = 1000", "uid = 0", "user[0].uid", "0"),
        (
            "groups = [\"sudo\"]",
            "groups = [\"Sudo!\"]",
            "user[0].groups",
            "\"Sudo!\"",
        ),
        (
            "\"outpost-collector.service\"]",
            "\"outpost-collector\"]",
            "services.enable",
            "\"outpost-collector\"",
        ),
        (
            "gateways = [\"10.0.2.2:5723\"]",
            "gateways = [\"10.0.2.2\"]",
            "outpost.gateways",
            "\"10.0.2.2\"",
        ),
        (
            "hostname_pattern = \"box-{machine_id:6}\"",
            "hostname_pattern = \"box-{serial}\"",
            "firstboot.hostname_pattern",
            "\"box-{serial}\"",
        ),
        (
            "hostname_pattern = \"box-{machine_id:6}\"",
            "hostname_pattern = \"Box\"",
            "firstboot.hostname_pattern",
            "\"Box\"",
        ),
        (
            "name = \"test-appliance\"",
            "name = \"Test Appliance\"",
            "image.name",
            "\"Test Appliance\"",
        ),
    ];
    for (from, to, key, value) in cases {
        let text = RECIPE.replacen(from, to, 1);
        assert_ne!(text, RECIPE, "case {key} did not apply");
        let e = parse_err(&text);
        assert!(e.contains(&format!("key `{key}` = {value}")), "{key}: {e}");
        let line = text
            .lines()
            .position(|l| l.contains(to.split('=').next().unwrap_or(to).trim()))
            .map(|n| n + 1);
        if let Some(line) = line {
            assert!(
                e.starts_with(&format!("dir/recipe.toml:{line}:")),
                "{key}: expected line {line}: {e}"
            );
        }
    }
}

#[test]
fn conflicting_and_missing_keys_are_errors() {
    let e = parse_err(&RECIPE.replace(
        "bootstrap_token_file = \"token\"",
        "bootstrap_token_file = \"token\"\nbootstrap_token = \"abc\"",
    ));
    assert!(e.contains("not both"), "{e}");
    assert!(
        !e.contains("abc"),
        "the token value must not be echoed: {e}"
    );
    let e = parse_err(&RECIPE.replace("bootstrap_token_file = \"token\"", ""));
    assert!(e.contains("needs bootstrap_token"), "{e}");
    let e = parse_err(&RECIPE.replace("content = \"x = 1\\n\"", ""));
    assert!(
        e.contains("file[0].content") && e.contains("give `source` or `content`"),
        "{e}"
    );
    let e = parse_err(&RECIPE.replace("[base]\nsuite = \"bookworm\"", "[base]"));
    assert!(e.contains("missing field `suite`"), "{e}");
}

#[test]
fn missing_files_name_the_key_and_path() {
    let fx = Fixture::new();
    let p = fx.recipe_path();
    let gather = |text: String| {
        std::fs::write(&p, text).expect("write");
        let r = Recipe::load(&p).expect("parse");
        Inputs::gather(&r, &p)
            .expect_err("missing input accepted")
            .to_string()
    };
    let e = gather(RECIPE.replace("dir = \"overlay\"", "dir = \"no-such-overlay\""));
    assert!(
        e.contains("overlay[0].dir")
            && e.contains("no-such-overlay")
            && e.contains("does not exist"),
        "{e}"
    );
    let e = gather(RECIPE.replace("content = \"x = 1\\n\"", "source = \"files/missing.conf\""));
    assert!(
        e.contains("file[0].source") && e.contains("missing.conf"),
        "{e}"
    );
    let e = gather(RECIPE.replace(
        "\"bin/outpost-collector\"",
        "\"${OUTPOST_TEST_SURELY_UNSET_VAR}/outpost-collector\"",
    ));
    assert!(
        e.contains("outpost.collector_bin")
            && e.contains("OUTPOST_TEST_SURELY_UNSET_VAR")
            && e.contains("not set"),
        "{e}"
    );
    std::fs::write(fx.dir.path().join("bad.pem"), "not a cert").expect("write");
    let e = gather(RECIPE.replace("ca_cert = \"ca.pem\"", "ca_cert = \"bad.pem\""));
    assert!(
        e.contains("outpost.ca_cert") && e.contains("not a PEM certificate"),
        "{e}"
    );
    let e = gather(RECIPE.replace(
        "\"bin/outpost-collector\"",
        "\"${OUTPOST_TEST_SURELY_UNSET_VAR:-nobin}/outpost-collector\"",
    ));
    assert!(e.contains("nobin/outpost-collector"), "{e}");
}

fn keys_for(fx: &Fixture) -> outpost_image::pipeline::StageKeys {
    let p = fx.recipe_path();
    let r = Recipe::load(&p).expect("parse");
    let inputs = Inputs::gather(&r, &p).expect("inputs");
    let sources = Sources {
        lines: vec!["deb http://mirror.invalid/debian bookworm main".into()],
        origin: SourceOrigin::Recipe,
    };
    stage_keys(&r, &sources, &inputs, common::ASSETS, "mmdebstrap 1.3.5")
}

#[test]
fn changing_an_overlay_file_changes_only_dependent_stage_keys() {
    let fx = Fixture::new();
    let k1 = keys_for(&fx);
    assert_eq!(k1, keys_for(&fx), "keys are stable");
    std::fs::write(fx.dir.path().join("overlay/etc/motd"), "changed\n").expect("write");
    let k2 = keys_for(&fx);
    assert_eq!(k1.base, k2.base, "the base stage must stay a cache hit");
    assert_ne!(k1.customize, k2.customize);
    assert_ne!(k1.finalize, k2.finalize);
    // A package change invalidates everything.
    std::fs::write(
        fx.recipe_path(),
        RECIPE.replace("[\"systemd\"]", "[\"systemd\", \"udev\"]"),
    )
    .expect("write");
    let k3 = keys_for(&fx);
    assert_ne!(k2.base, k3.base);
    assert_ne!(k2.customize, k3.customize);
}

fn run_build(recipe: &Path, out: &Path, path_env: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-image"));
    cmd.arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(out.join("cache"));
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let o = cmd.output().expect("run outpost-image");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_rejects_a_bad_recipe_with_exit_2() {
    let fx = Fixture::new();
    std::fs::write(
        fx.recipe_path(),
        RECIPE.replace("[firstboot]", "[firstboot]\ncolour = \"red\""),
    )
    .expect("write");
    let out = fx.dir.path().join("out");
    let (code, err) = run_build(&fx.recipe_path(), &out, None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("recipe.toml:") && err.contains("unknown field `colour`"),
        "{err}"
    );
    assert!(!out.join("rootfs.tar.zst").exists());
}

#[test]
fn cli_names_a_missing_mmdebstrap() {
    let fx = Fixture::new();
    let empty = tempfile::tempdir().expect("tempdir");
    let out = fx.dir.path().join("out");
    // A temporary left by an interrupted build (its pid no longer runs) is cleaned up.
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join(".rootfs.tar.zst.tmp-4294967294-1"), "half").expect("write");
    let (code, err) = run_build(&fx.recipe_path(), &out, Some(empty.path()));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`mmdebstrap`") && err.contains("not found"),
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("out exists")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "cache")
        .collect();
    assert!(
        leftovers.is_empty(),
        "nothing may be left in the output: {leftovers:?}"
    );
}

#[test]
fn cli_names_an_unknown_package_before_running_mmdebstrap() {
    let has = |t: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
    };
    if !has("mmdebstrap") || !has("apt-cache") {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: mmdebstrap or apt-cache not installed (make deps installs mmdebstrap)"
        );
        return;
    }
    let lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    let codename = outpost_image::sources::host_codename(Path::new("/etc"));
    if !lists || codename.is_none() {
        let _ =
            writeln!(std::io::stderr(),
            "SKIP: no apt package lists or no VERSION_CODENAME on this host (run apt-get update)"
        );
        return;
    }
    let fx = Fixture::new();
    let codename = codename.unwrap_or_default();
    let text = RECIPE
        .replace("mirror = \"http://mirror.invalid/debian\"", "")
        .replace("suite = \"bookworm\"", &format!("suite = \"{codename}\""))
        .replace(
            "[\"systemd\"]",
            "[\"systemd\", \"outpost-no-such-package\"]",
        );
    std::fs::write(fx.recipe_path(), text).expect("write");
    let (code, err) = run_build(&fx.recipe_path(), &fx.dir.path().join("out"), None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("base.packages")
            && err.contains("outpost-no-such-package")
            && !err.contains("systemd,"),
        "{err}"
    );
}
