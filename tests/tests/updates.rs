//! Staged updates end to end on loopback, through the real binaries: `outpost-feed` publishes
//! and promotes, the real gateway serves the feed and the VAR's window, the real collector
//! provides the box's identity (and its liveness for the health check), `outpost-updater run`
//! mirrors, installs into a file-backed slot B and restarts (a recorded request) only inside the
//! window; `simulate-reboot` plays systemd-boot and `boot-check` commits or rolls back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outpost_tests::bins;
use outpost_tests::fixtures::{wait_show, COLLECTOR_TIMEOUT, ENROLL_TIMEOUT, POLL};
use outpost_tests::proc::{run_bounded, Output, Proc, CLI_TIMEOUT};
use outpost_tests::{wait_for, Collector, Gateway, Workdir};
use serde_json::Value;

/// How long the agent gets to mirror and install a small bundle.
const STAGE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a restart that must not happen is watched for.
const NO_RESTART_WATCH: Duration = Duration::from_secs(6);
/// The factory version in slot A.
const OLD: &str = "1.0.0";
/// The version published.
const NEW: &str = "1.1.0";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn feed_cli(args: &[&str]) -> anyhow::Result<String> {
    bins::run_ok(bins::FEED, args)
}

/// The box: slots, ESP, updater config and state, and the updater process when running.
struct Appliance {
    dir: PathBuf,
    config: PathBuf,
    state: PathBuf,
    esp: PathBuf,
    image: Vec<u8>,
    agent: Option<Proc>,
}

impl Appliance {
    fn updater(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(bins::binary(bins::UPDATER)?);
        cmd.args(args).arg("--config").arg(&self.config);
        run_bounded(cmd, CLI_TIMEOUT)
    }

    fn updater_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.updater(args)?;
        anyhow::ensure!(
            out.status.success(),
            "outpost-updater {args:?} failed ({}): {}",
            out.status,
            out.stderr
        );
        Ok(out.stdout)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bins::binary(bins::UPDATER)?);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,outpost_updater=debug");
        self.agent = Some(Proc::spawn(
            "outpost-updater",
            cmd,
            &self.dir.join("updater.log"),
        )?);
        Ok(())
    }

    /// Stops the agent as a reboot would.
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.agent.take() {
            p.terminate()?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        outpost_tests::proc::log_tail(&self.dir.join("updater.log"), 40)
    }

    fn restart_requests(&self) -> usize {
        std::fs::read_to_string(self.state.join("restart-requests"))
            .map_or(0, |t| t.lines().count())
    }

    fn entries(&self) -> anyhow::Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(self.esp.join("loader/entries"))?
            .map(|d| d.map(|d| d.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.retain(|n| n.ends_with(".conf"));
        v.sort();
        Ok(v)
    }
}

/// Gateway with the feed, a collector enrolled for acme-corp, the box with slot A at 1.0.0.
struct Setup {
    _wd: Workdir,
    gw: Gateway,
    _col: Collector,
    id: String,
    app: Appliance,
}

fn setup(label: &str) -> anyhow::Result<Setup> {
    let wd = Workdir::new(label)?;
    // Vendor: feed, bundle, testing, then stable.
    let feed = wd.join("feed");
    feed_cli(&["init", s(&feed)])?;
    let image: Vec<u8> = (0..1_500_000u32)
        .map(|i| u8::try_from((i * 7 + i / 1000) % 251).unwrap_or(0))
        .collect();
    let img = wd.join("root-new.img");
    std::fs::write(&img, &image)?;
    let bundle = wd.join("bundle.tar.zst");
    feed_cli(&[
        "bundle",
        "--out",
        s(&bundle),
        "--version",
        NEW,
        "--root-image",
        s(&img),
    ])?;
    feed_cli(&[
        "add",
        s(&feed),
        s(&bundle),
        "--version",
        NEW,
        "--channel",
        "testing",
    ])?;
    feed_cli(&["promote", s(&feed), NEW, "--to", "stable"])?;

    let mut gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_feed_dir(&feed.join("repo"))?;
    gw.start()?;
    let token = gw.token_create("acme-corp", true, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    let cert = col.state_dir().join("cert.pem");
    wait_for("the collector's certificate", ENROLL_TIMEOUT, POLL, || {
        Ok(cert.exists().then_some(()))
    })?;

    // The box as the factory image leaves it (docs/layout.md): both slots hold 1.0.0, both
    // entries count tries, slot a has the higher generation.
    let dir = wd.subdir("box")?;
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("loader/entries"))?;
    for (slot, generation) in [("a", 2), ("b", 1)] {
        std::fs::write(
            esp.join(format!("loader/entries/outpost-{slot}+3.conf")),
            format!("title Outpost {OLD} (slot {slot})\nsort-key outpost\nversion {generation}\nlinux /outpost/{slot}/vmlinuz\ninitrd /outpost/{slot}/initrd.img\noptions root=PARTLABEL=root-{slot} rw\n"),
        )?;
    }
    std::fs::write(dir.join("slot-b.img"), b"factory root file system 1.0.0")?;
    std::fs::write(dir.join("slot-a.img"), b"factory root file system 1.0.0")?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    let config = dir.join("updater.toml");
    let toml = format!(
        r#"gateways = ["{gw_addr}"]
ca_cert = "{ca}"
collector_state_dir = "{col_state}"
state_dir = "state"
box_tz = "UTC"
initial_version = "{OLD}"

[feed]
channel = "stable"
trusted_root = "{root}"
interval = "2s"

[mirror]
listen = "127.0.0.1:0"

[slots]
a = "slot-a.img"
b = "slot-b.img"
esp = "esp"
cmdline = "no-cmdline"

[install_window]
start = "00:00"
end = "00:00"

[restart]
command = ["sh", "-c", "date +%s >> restart-requests"]
spread_max = "3s"

[health]
collector_within = "1m"
commands = [["sh", "-c", "test ! -e fail-health"]]
timeout = "6s"
"#,
        gw_addr = gw.addr(),
        ca = s(&gw.ca_cert_path()),
        col_state = s(col.state_dir()),
        root = s(&feed.join("root.json")),
    );
    std::fs::write(&config, toml)?;
    let app = Appliance {
        dir,
        config,
        state,
        esp,
        image,
        agent: None,
    };
    // First power-on: systemd-boot picks slot A; its first boot check commits it.
    let out = app.updater_ok(&["simulate-reboot"])?;
    anyhow::ensure!(out.contains("booted slot a"), "{out}");
    let out = app.updater_ok(&["boot-check"])?;
    anyhow::ensure!(out.contains("slot a committed"), "{out}");
    anyhow::ensure!(app.entries()? == ["outpost-a.conf", "outpost-b+3.conf"]);
    Ok(Setup {
        _wd: wd,
        gw,
        _col: col,
        id,
        app,
    })
}

/// Runs curl (bounded) and returns the body of `url`; fails on an HTTP error.
fn curl_get(url: &str) -> anyhow::Result<Vec<u8>> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sSf", "--max-time", "30", url]);
    let out = run_bounded(cmd, CLI_TIMEOUT)?;
    anyhow::ensure!(out.status.success(), "curl {url}: {}", out.stderr);
    Ok(out.stdout.into_bytes())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What a VM does with the box's local mirror: walks timestamp → snapshot → targets,
/// downloads the bundle of `version` and checks its length and sha256 against targets.json.
/// Returns the bundle's size.
fn vm_fetches_and_verifies(base: &str, version: &str) -> anyhow::Result<u64> {
    use anyhow::Context;
    use sha2::Digest;
    let json =
        |url: String| -> anyhow::Result<Value> { Ok(serde_json::from_slice(&curl_get(&url)?)?) };
    let ts = json(format!("{base}/metadata/timestamp.json"))?;
    let sv = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .context("snapshot version in timestamp.json")?;
    let sn = json(format!("{base}/metadata/{sv}.snapshot.json"))?;
    let tv = sn["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .context("targets version in snapshot.json")?;
    let tg = json(format!("{base}/metadata/{tv}.targets.json"))?;
    let (name, t) = tg["signed"]["targets"]
        .as_object()
        .context("targets in targets.json")?
        .iter()
        .find(|(n, _)| n.contains(version))
        .with_context(|| format!("no target for {version} in {tg}"))?;
    let want = t["hashes"]["sha256"].as_str().context("sha256")?;
    let len = t["length"].as_u64().context("length")?;
    // A text body would not survive `String`: fetch into a file instead.
    let body = {
        let mut cmd = Command::new("curl");
        let tmp = tempfile::NamedTempFile::new()?;
        cmd.args(["-sSf", "--max-time", "30", "-o"])
            .arg(tmp.path())
            .arg(format!("{base}/targets/{name}"));
        let out = run_bounded(cmd, CLI_TIMEOUT)?;
        anyhow::ensure!(out.status.success(), "curl {name}: {}", out.stderr);
        std::fs::read(tmp.path())?
    };
    anyhow::ensure!(
        body.len() as u64 == len,
        "{name}: {} bytes, targets.json says {len}",
        body.len()
    );
    let got = hex::encode(sha2::Sha256::digest(&body));
    anyhow::ensure!(
        got == want,
        "{name}: sha256 {got}, targets.json says {want}"
    );
    Ok(len)
}

/// `HH:MM` UTC `mins` minutes from now (may be negative).
fn hhmm_from_now(mins: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(mins);
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%H:%M")
        .to_string()
}

fn set_window(gw: &Gateway, id: &str, from_mins: i64, to_mins: i64) -> anyhow::Result<()> {
    let range = format!(
        "mon,tue,wed,thu,fri,sat,sun {}-{}",
        hhmm_from_now(from_mins),
        hhmm_from_now(to_mins)
    );
    gw.cli_ok(&[
        "windows",
        "set",
        "--appliance",
        id,
        "--tz",
        "UTC",
        "--range",
        &range,
    ])?;
    Ok(())
}

/// Waits for the gateway to show an update state for which `pred` holds.
fn wait_update(
    st: &Setup,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let v = wait_show(&st.gw, &st.id, what, timeout, |v| pred(&v["update"]));
    v.map(|v| v["update"].clone())
        .map_err(|e| e.context(format!("updater log tail:\n{}", st.app.log_tail())))
}

/// Publish → promote → mirror → install into B; a closed window holds the restart back; an
/// open window lets it through; the simulated reboot boots B and the health check commits it.
#[test]
fn update_installs_into_slot_b_restarts_in_the_window_and_commits() -> anyhow::Result<()> {
    let mut st = setup("updates-commit")?;
    // The VAR's window opens in three hours: no restart before then.
    set_window(&st.gw, &st.id, 180, 240)?;
    st.app.start()?;
    let u = wait_update(&st, "1.1.0 staged", STAGE_TIMEOUT, |u| {
        u["staged_version"] == NEW && u["window"].is_object()
    })?;
    assert_eq!(u["current_version"], OLD, "{u}");
    assert_eq!(u["current_slot"], "a", "{u}");
    assert_eq!(u["mirrored_version"], NEW, "{u}");
    assert_eq!(u["pending_restart"], true, "{u}");
    assert_eq!(std::fs::read(st.app.dir.join("slot-b.img"))?, st.app.image);
    assert_eq!(st.app.entries()?, ["outpost-a.conf", "outpost-b+3.conf"]);

    // Outside the window: nothing restarts.
    std::thread::sleep(NO_RESTART_WATCH);
    assert_eq!(
        st.app.restart_requests(),
        0,
        "restarted outside the window; log:\n{}",
        st.app.log_tail()
    );

    // The VAR opens the window now (it started an hour ago): the restart follows.
    set_window(&st.gw, &st.id, -60, 120)?;
    wait_for("the restart request", STAGE_TIMEOUT, POLL, || {
        Ok((st.app.restart_requests() > 0).then_some(()))
    })
    .map_err(|e| e.context(format!("updater log:\n{}", st.app.log_tail())))?;

    // The reboot: the agent goes down, systemd-boot picks B and counts a try.
    st.app.stop()?;
    let out = st.app.updater_ok(&["simulate-reboot"])?;
    assert!(out.contains("booted slot b"), "{out}");
    assert_eq!(st.app.entries()?, ["outpost-a.conf", "outpost-b+2-1.conf"]);
    let out = st.app.updater_ok(&["boot-check"])?;
    assert!(out.contains("slot b committed"), "{out}");
    assert_eq!(st.app.entries()?, ["outpost-a.conf", "outpost-b.conf"]);

    let u = wait_update(&st, "1.1.0 running in slot b", COLLECTOR_TIMEOUT, |u| {
        u["current_version"] == NEW && u["current_slot"] == "b"
    })?;
    assert!(u["staged_version"].is_null(), "{u}");
    assert!(u["last_error"].is_null(), "{u}");

    // The agent comes back after the reboot and resumes from its state: nothing to do.
    st.app.start()?;
    let status: Value = serde_json::from_str(&st.app.updater_ok(&["status", "--json"])?)?;
    assert_eq!(status["booted_slot"], "b", "{status}");
    assert_eq!(status["state"]["current_version"], NEW, "{status}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(st.app.entries()?, ["outpost-a.conf", "outpost-b.conf"]);
    st.app.stop()?;
    Ok(())
}

/// A forced restart (`appliances restart`) outside the window; the health check fails on B;
/// B is marked bad, the next boot falls back to A, and the gateway shows the error.
#[test]
fn failing_health_check_rolls_back_to_slot_a() -> anyhow::Result<()> {
    let mut st = setup("updates-rollback")?;
    set_window(&st.gw, &st.id, 180, 240)?;
    st.app.start()?;
    wait_update(&st, "1.1.0 staged", STAGE_TIMEOUT, |u| {
        u["staged_version"] == NEW && u["window"].is_object()
    })?;
    std::thread::sleep(NO_RESTART_WATCH);
    assert_eq!(st.app.restart_requests(), 0, "{}", st.app.log_tail());

    // The operator forces the restart outside the window.
    st.gw.cli_ok(&["appliances", "restart", &st.id])?;
    wait_for("the forced restart request", STAGE_TIMEOUT, POLL, || {
        Ok((st.app.restart_requests() > 0).then_some(()))
    })
    .map_err(|e| e.context(format!("updater log:\n{}", st.app.log_tail())))?;
    st.app.stop()?;

    // B boots but is unhealthy.
    std::fs::write(st.app.state.join("fail-health"), b"")?;
    let out = st.app.updater_ok(&["simulate-reboot"])?;
    assert!(out.contains("booted slot b"), "{out}");
    let out = st.app.updater(&["boot-check"])?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("health"), "{}", out.stderr);
    assert_eq!(st.app.entries()?, ["outpost-a.conf", "outpost-b+0-3.conf"]);
    let u = wait_update(&st, "the health failure", COLLECTOR_TIMEOUT, |u| {
        u["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("health check failed on slot b"))
    })?;
    assert_eq!(u["current_slot"], "b", "{u}");

    // The next boot falls back to A by itself.
    let out = st.app.updater_ok(&["simulate-reboot"])?;
    assert!(out.contains("booted slot a"), "{out}");
    let out = st.app.updater_ok(&["boot-check"])?;
    assert!(out.contains("slot a running"), "{out}");
    let u = wait_update(&st, "1.0.0 running in slot a", COLLECTOR_TIMEOUT, |u| {
        u["current_slot"] == "a" && u["current_version"] == OLD
    })?;
    assert!(
        u["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("health check failed")),
        "{u}"
    );

    // The agent does not install the rejected version again.
    std::fs::remove_file(st.app.state.join("fail-health"))?;
    st.app.start()?;
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(st.app.entries()?, ["outpost-a.conf", "outpost-b+0-3.conf"]);
    st.app.stop()?;
    Ok(())
}

/// Regression: with no VAR window the agent restarted in its install window. Now it stages,
/// reports `pending restart` with no restart time, and waits; the operator's explicit
/// restart still goes through. Meanwhile the running agent serves its verified mirror on
/// `[mirror] listen` and a VM-side curl fetches and verifies the bundle from it.
#[test]
fn without_a_var_window_it_waits_for_an_explicit_restart_and_serves_the_vms() -> anyhow::Result<()>
{
    let mut st = setup("updates-no-window")?;
    st.app.start()?;
    let u = wait_update(&st, "1.1.0 staged", STAGE_TIMEOUT, |u| {
        u["staged_version"] == NEW
    })?;
    assert_eq!(u["pending_restart"], true, "{u}");
    assert!(u["restart_at_ms"].is_null(), "{u}");
    assert!(u["window"].is_null(), "{u}");

    // The local mirror of the running agent, on the port it picked.
    let addr_file = st.app.state.join("mirror.addr");
    let addr = wait_for("the local mirror's address", STAGE_TIMEOUT, POLL, || {
        Ok(std::fs::read_to_string(&addr_file)
            .ok()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty()))
    })?;
    if have("curl") {
        let len = vm_fetches_and_verifies(&format!("http://{addr}"), NEW)
            .map_err(|e| e.context(format!("updater log:\n{}", st.app.log_tail())))?;
        assert!(len > 0);
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: the VM-side curl part: curl is not installed (make deps installs it)"
        );
    }

    // The install window is the whole day here: the old fallback restarted within seconds.
    std::thread::sleep(NO_RESTART_WATCH);
    assert_eq!(
        st.app.restart_requests(),
        0,
        "restarted without a VAR window; log:\n{}",
        st.app.log_tail()
    );
    st.gw.cli_ok(&["appliances", "restart", &st.id])?;
    wait_for("the explicit restart request", STAGE_TIMEOUT, POLL, || {
        Ok((st.app.restart_requests() > 0).then_some(()))
    })
    .map_err(|e| e.context(format!("updater log:\n{}", st.app.log_tail())))?;
    st.app.stop()?;
    Ok(())
}
