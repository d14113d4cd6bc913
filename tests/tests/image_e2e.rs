//! The appliance image end to end (issue 6): build `examples/appliance` with the real
//! `outpost-image` and `outpost-layout` (mmdebstrap, mkfs, mtools, qemu-img), boot it under
//! UEFI in QEMU (OVMF, software emulation, serial console to a file), and watch it enrol
//! with a real gateway on the host, reached through QEMU user networking at 10.0.2.2.
//!
//! Stages, each printed with the elapsed time so a CI log shows where the time goes:
//! 1. a gateway on `127.0.0.1:<port>` whose certificate names `10.0.2.2`, and an
//!    auto-approve bootstrap token;
//! 2. build A with an empty cache, with that gateway's CA, port and token;
//! 3. first boot: the appliance names itself from the recipe's pattern
//!    (`outpost-{machine_id:8}`), enrols, is approved and reports; the update agent's boot
//!    check commits slot a; clean power-off; then
//!    the booted disk's ESP shows slot a's entry blessed
//!    (`outpost-a+3.conf` renamed to `outpost-a.conf`) and slot b's untouched;
//! 4. second boot of the same disk: first-boot work does not run again, the host name is
//!    the same, and the same appliance (same id, no second enrolment) reports again; the
//!    update agent's boot check finds slot a committed and reports slot and version;
//! 5. build B of the same inputs with another empty cache: the raw and qcow2 images have
//!    the same sha256 as build A's (the reproducibility acceptance test).
//!
//! Slow (about 26 minutes on two busy cores: two cold builds, two emulated boots), so it is
//! `#[ignore]`d in `make test` and run by `make test-e2e` (also in CI). Every stage is bounded, and the whole test has a
//! deadline; QEMU runs under `timeout` and is stopped on every path. Set
//! `OUTPOST_TEST_KEEP=1` to keep the work directory (images, serial logs, gateway log).

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use outpost_tests::fixtures::wait_show;
use outpost_tests::gateway::count;
use outpost_tests::proc::{log_tail, run_bounded, Proc};
use outpost_tests::{bins, wait_for, Gateway, Workdir};
use serde_json::Value;

/// The whole test, whatever happens.
const TOTAL_BUDGET: Duration = Duration::from_secs(40 * 60);
/// One `outpost-image build` (mmdebstrap with an empty cache).
const IMAGE_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// One `outpost-layout build`.
const LAYOUT_BUILD_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// From power-on to an approved appliance that reported (software emulation).
const BOOT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// From `system_powerdown` to QEMU exiting.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// The longest a guest may live, even if this test process is killed.
const GUEST_LIFETIME: Duration = Duration::from_secs(20 * 60);
/// The example recipe, relative to the workspace root.
const EXAMPLE_RECIPE: &str = "examples/appliance/recipe.toml";
/// Where the host is, seen from QEMU user networking.
const HOST_FROM_GUEST: &str = "10.0.2.2";
/// The line the first-boot script prints when it is done (usr/lib/outpost/firstboot).
const FIRSTBOOT_DONE: &str = "outpost-firstboot: first boot done";
/// What `outpost-updater boot-check` (outpost-boot-check.service, output on the console)
/// prints on the first boot: the factory's counted entry for slot a is committed.
const BOOT_CHECK_FIRST: &str = "slot a committed";
/// ... and on the second boot, when slot a is already committed.
const BOOT_CHECK_SECOND: &str = "slot a running; nothing on trial";
/// How long after the appliance reported the boot check's line or report may still take.
const BOOT_CHECK_TIMEOUT: Duration = Duration::from_secs(3 * 60);
/// OVMF firmware (code, read-only) and the variable store template (copied per test).
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// Elapsed-time bookkeeping and progress lines.
struct Clock {
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    fn stage(&self, what: &str) {
        let _ = writeln!(
            std::io::stderr(),
            "[image-e2e {:>7.1}s] {what}",
            self.start.elapsed().as_secs_f64()
        );
    }

    /// `cap`, or less when the whole test's budget runs out sooner.
    fn bound(&self, cap: Duration) -> anyhow::Result<Duration> {
        let left = TOTAL_BUDGET
            .checked_sub(self.start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("the test's overall budget of {TOTAL_BUDGET:?} is used up"))?;
        Ok(cap.min(left))
    }
}

/// Why this test cannot run here, if it cannot.
fn missing_tool() -> Option<String> {
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
    };
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
        ("timeout", "coreutils"),
    ] {
        if !on_path(tool) && !Path::new("/usr/sbin").join(tool).is_file() {
            return Some(format!("{tool} not found (make deps installs {package})"));
        }
    }
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).is_file() {
            return Some(format!("{f} not found (make deps installs ovmf)"));
        }
    }
    None
}

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// Runs a long build step with its output going to the test's output (so its per-stage
/// progress shows in the CI log); kills it if it overruns `timeout`.
fn run_step(what: &str, mut cmd: Command, timeout: Duration) -> anyhow::Result<()> {
    cmd.stdin(Stdio::null());
    let described = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{what}: failed to start {described}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            if st.success() {
                return Ok(());
            }
            bail!("{what} failed with {st}: {described}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?} and was killed: {described}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The inputs every build of this test shares (so two builds must be identical).
struct BuildInputs {
    ca_cert: PathBuf,
    token_file: PathBuf,
    gateway_port: u16,
    /// The recipe's `[image] source_date_epoch`, given to `outpost-layout` as
    /// `SOURCE_DATE_EPOCH` for the file-system times it writes.
    source_date_epoch: i64,
    /// Copies of `outpost-collector` and `outpost-updater` (installed in the image),
    /// `outpost-image` and `outpost-layout` taken when the test starts, so a rebuild of the workspace while the
    /// test runs cannot make build A and build B differ.
    bin_dir: PathBuf,
}

impl BuildInputs {
    fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Copies the built binaries the image build uses into `dir`.
fn snapshot_binaries(dir: &Path) -> anyhow::Result<()> {
    for name in [
        bins::COLLECTOR,
        bins::UPDATER,
        "outpost-image",
        "outpost-layout",
    ] {
        let from = bins::binary(name)?;
        std::fs::copy(&from, dir.join(name))
            .with_context(|| format!("failed to copy {} into {}", from.display(), dir.display()))?;
    }
    Ok(())
}

/// The images one build produced, with their sha256.
struct Built {
    raw: PathBuf,
    rootfs_dir: PathBuf,
    raw_sha256: String,
    qcow2_sha256: String,
}

/// The only file in `dir` ending in `.ext`.
fn only_file_with_ext(dir: &Path, ext: &str) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == ext) {
            found.push(p);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one *.{ext} in {}, found {found:?}", dir.display()),
    }
}

/// `outpost-image build` then `outpost-layout build` of the example appliance, with the
/// stage cache in `WORKDIR/cache-LABEL` (a new, empty one: a cold build), the output in
/// `WORKDIR/build-LABEL`.
fn build_image(
    clock: &Clock,
    label: &str,
    inputs: &BuildInputs,
    wd: &Workdir,
) -> anyhow::Result<Built> {
    let out = wd.subdir(&format!("build-{label}"))?;
    let cache = wd.subdir(&format!("cache-{label}"))?;
    let root = workspace_root();
    let recipe = root.join(EXAMPLE_RECIPE);
    let layout = recipe.with_file_name("layout.toml");
    let rootfs_dir = out.join("rootfs");
    clock.stage(&format!(
        "build {label}: outpost-image build (cache {})",
        cache.display()
    ));
    let mut cmd = Command::new(inputs.tool("outpost-image"));
    cmd.arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(&rootfs_dir)
        .arg("--cache")
        .arg(&cache)
        .env("OUTPOST_BIN_DIR", &inputs.bin_dir)
        .env("OUTPOST_CA_CERT", &inputs.ca_cert)
        .env("OUTPOST_BOOTSTRAP_TOKEN_FILE", &inputs.token_file)
        .env("OUTPOST_GATEWAY_PORT", inputs.gateway_port.to_string());
    run_step(
        &format!("outpost-image build ({label})"),
        cmd,
        clock.bound(IMAGE_BUILD_TIMEOUT)?,
    )?;

    clock.stage(&format!("build {label}: outpost-layout build"));
    let mut cmd = Command::new(inputs.tool("outpost-layout"));
    cmd.env("SOURCE_DATE_EPOCH", inputs.source_date_epoch.to_string())
        .arg("build")
        .arg(&layout)
        .arg("--rootfs")
        .arg(rootfs_dir.join("rootfs.tar.zst"))
        .arg("--out")
        .arg(&out)
        .arg("--format")
        .arg("raw,qcow2")
        // This build's own (empty) cache: both builds are cold, and the user's is untouched.
        .arg("--cache")
        .arg(cache.join("layout"));
    run_step(
        &format!("outpost-layout build ({label})"),
        cmd,
        clock.bound(LAYOUT_BUILD_TIMEOUT)?,
    )?;
    let raw = only_file_with_ext(&out, "raw")?;
    let qcow2 = only_file_with_ext(&out, "qcow2")?;
    clock.stage(&format!(
        "build {label}: {} ({} MiB allocated); hashing",
        raw.display(),
        allocated_mib(&raw)
    ));
    let built = Built {
        raw_sha256: sha256(&raw)?,
        qcow2_sha256: sha256(&qcow2)?,
        raw,
        rootfs_dir,
    };
    clock.stage(&format!(
        "build {label}: raw sha256 {}, qcow2 sha256 {}",
        built.raw_sha256, built.qcow2_sha256
    ));
    Ok(built)
}

/// Disk space a (sparse) file really takes, MiB.
fn allocated_mib(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map_or(0, |m| m.blocks() * 512 / (1024 * 1024))
}

/// `sha256sum FILE` (streams multi-GiB sparse images without holding them in memory).
fn sha256(p: &Path) -> anyhow::Result<String> {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(p);
    let out = run_bounded(cmd, Duration::from_secs(10 * 60))?;
    if !out.status.success() {
        bail!("sha256sum {} failed: {}", p.display(), out.stderr.trim());
    }
    out.stdout
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("sha256sum {} printed nothing", p.display()))
}

/// A booted appliance: QEMU with OVMF, the disk, user networking, the serial console in a
/// file and the monitor on a Unix socket (for an ACPI power-off). Stopped on drop.
struct Appliance {
    qemu: Proc,
    serial: PathBuf,
    monitor: PathBuf,
}

impl Appliance {
    /// Boots `disk` (qcow2) with the OVMF variable store `vars`; `name` names the files.
    fn boot(dir: &Path, name: &str, disk: &Path, vars: &Path) -> anyhow::Result<Self> {
        let serial = dir.join(format!("{name}-serial.log"));
        let monitor = dir.join(format!("{name}-monitor.sock"));
        let _ = std::fs::remove_file(&monitor);
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=10")
            .arg(GUEST_LIFETIME.as_secs().to_string())
            .arg("qemu-system-x86_64")
            .args([
                "-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "1",
            ])
            .args(["-display", "none", "-no-reboot"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},format=qcow2,if=virtio", disk.display()))
            .args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()));
        let qemu = Proc::spawn(
            &format!("qemu ({name})"),
            cmd,
            &dir.join(format!("{name}-qemu.log")),
        )?;
        Ok(Self {
            qemu,
            serial,
            monitor,
        })
    }

    /// The serial console so far.
    fn console(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    /// The last lines of the serial console, and QEMU's own output.
    fn console_tail(&self) -> String {
        format!(
            "----- serial console ({}) -----\n{}\n----- qemu -----\n{}",
            self.serial.display(),
            log_tail(&self.serial, 60).replace('\r', ""),
            self.qemu.log_tail(10)
        )
    }

    /// Fails at once (for a wait) when QEMU has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.qemu.exit_status()? {
            return Err(outpost_tests::wait::abort(format!("QEMU exited with {st}")));
        }
        Ok(())
    }

    /// ACPI power button through the monitor, then waits for QEMU to exit; kills it when
    /// the guest does not power off in time (a hard stop is also a fair test of the
    /// identity kept on disk). Prints which it was, naming the boot `what`.
    fn power_off(&mut self, clock: &Clock, what: &str) -> anyhow::Result<()> {
        let sent = UnixStream::connect(&self.monitor)
            .and_then(|mut s| {
                s.write_all(b"system_powerdown\n")?;
                // Let the monitor read the command before the connection closes.
                std::thread::sleep(Duration::from_secs(1));
                Ok(())
            })
            .is_ok();
        let clean = sent
            && wait_for(
                "QEMU to exit after system_powerdown",
                clock.bound(POWER_OFF_TIMEOUT)?,
                Duration::from_millis(500),
                || Ok(self.qemu.exit_status()?.map(|_| ())),
            )
            .is_ok();
        if clean {
            clock.stage(&format!("{what}: powered off cleanly"));
        } else {
            clock.stage(&format!(
                "{what}: the guest did not power off in time: killing QEMU"
            ));
            let _ = self.qemu.terminate();
        }
        self.qemu.kill()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.console_tail());
        }
        // SIGTERM reaches QEMU through `timeout`; SIGKILL after the stop bound.
        let _ = self.qemu.terminate();
    }
}

/// The one appliance the gateway knows, waiting until it is approved and has reported
/// (inventory stored, at least one batch).
fn wait_enrolled_and_reporting(
    clock: &Clock,
    gw: &Gateway,
    vm: &mut Appliance,
) -> anyhow::Result<(String, Value)> {
    let id = wait_for(
        "the appliance to enrol (appliances list --json)",
        clock.bound(BOOT_TIMEOUT)?,
        Duration::from_secs(2),
        || {
            vm.check_running()?;
            let list = gw.list_json()?;
            Ok(list
                .as_array()
                .and_then(|a| a.first())
                .and_then(|a| a["id"].as_str())
                .map(str::to_string))
        },
    )
    .with_context(|| vm.console_tail())?;
    clock.stage(&format!("enrolled as {id}; waiting for its first report"));
    let show = wait_show(
        gw,
        &id,
        "an approved appliance with inventory and a stored batch",
        clock.bound(BOOT_TIMEOUT)?,
        |v| v["state"] == "approved" && !v["inventory"].is_null() && count(v, "batches") >= 1,
    )
    .with_context(|| vm.console_tail())?;
    Ok((id, show))
}

/// Waits until the guest's console shows `line`.
fn wait_console(clock: &Clock, vm: &mut Appliance, what: &str, line: &str) -> anyhow::Result<()> {
    wait_for(
        what,
        clock.bound(BOOT_CHECK_TIMEOUT)?,
        Duration::from_secs(2),
        || {
            vm.check_running()?;
            Ok(vm.console().contains(line).then_some(()))
        },
    )
    .with_context(|| vm.console_tail())
}

/// `[image] version` of a recipe's text.
fn recipe_image_version(recipe: &str) -> anyhow::Result<String> {
    let table: toml::Table = recipe
        .parse()
        .with_context(|| format!("{EXAMPLE_RECIPE} is not TOML"))?;
    table
        .get("image")
        .and_then(|i| i.get("version"))
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{EXAMPLE_RECIPE}: [image] version is not a string"))
}

/// `[image] source_date_epoch` of a recipe's text.
fn recipe_source_date_epoch(recipe: &str) -> anyhow::Result<i64> {
    let table: toml::Table = recipe
        .parse()
        .with_context(|| format!("{EXAMPLE_RECIPE} is not TOML"))?;
    table
        .get("image")
        .and_then(|i| i.get("source_date_epoch"))
        .and_then(toml::Value::as_integer)
        .ok_or_else(|| anyhow!("{EXAMPLE_RECIPE}: [image] source_date_epoch is not an integer"))
}

/// The boot entries on the ESP of a (qcow2) disk after a boot, as `(file, state)`: the disk is
/// converted to a sparse raw file in `dir` and read with `outpost-layout inspect --json`.
fn boot_entries_of(
    clock: &Clock,
    inputs: &BuildInputs,
    disk: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let raw = dir.join("after-boot.raw");
    let _ = std::fs::remove_file(&raw);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-q", "-O", "raw"]).arg(disk).arg(&raw);
    let out = run_bounded(cmd, clock.bound(Duration::from_secs(5 * 60))?)?;
    if !out.status.success() {
        bail!(
            "qemu-img convert {} to raw failed: {}",
            disk.display(),
            out.stderr.trim()
        );
    }
    let mut cmd = Command::new(inputs.tool("outpost-layout"));
    cmd.arg("inspect").arg("--json").arg(&raw);
    let out = run_bounded(cmd, clock.bound(Duration::from_secs(2 * 60))?)?;
    let _ = std::fs::remove_file(&raw);
    if !out.status.success() {
        bail!(
            "outpost-layout inspect --json failed: {}",
            out.stderr.trim()
        );
    }
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("outpost-layout inspect --json: not JSON: {}", out.stdout))?;
    Ok(v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["file"].as_str().unwrap_or_default().to_string(),
                        e["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether `name` matches the example's pattern `outpost-{machine_id:8}`.
fn matches_example_pattern(name: &str) -> bool {
    name.strip_prefix("outpost-").is_some_and(|suffix| {
        suffix.len() == 8
            && suffix
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[test]
#[ignore = "builds and boots a whole Debian image under QEMU (minutes): run by `make test-e2e`"]
fn appliance_image_enrols_on_first_boot_keeps_identity_on_reboot_and_is_reproducible(
) -> anyhow::Result<()> {
    if let Some(reason) = missing_tool() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: appliance_image_enrols_on_first_boot_keeps_identity_on_reboot_and_is_reproducible: {reason}"
        );
        return Ok(());
    }
    let clock = Clock::new();
    let wd = Workdir::new("image-e2e")?;

    clock.stage("1/5 gateway on 127.0.0.1 with SAN 10.0.2.2, auto-approve token");
    let mut gw = Gateway::init(
        &wd.subdir("gw")?,
        &["127.0.0.1", "localhost", HOST_FROM_GUEST],
    )?;
    // The appliance reaches the gateway at 10.0.2.2:PORT, which QEMU maps to the host's
    // 127.0.0.1:PORT. A recipe that takes the port from OUTPOST_GATEWAY_PORT gets a free one;
    // otherwise the gateway must be on its default port.
    let recipe = std::fs::read_to_string(workspace_root().join(EXAMPLE_RECIPE))
        .with_context(|| format!("failed to read {EXAMPLE_RECIPE}"))?;
    let listen = if recipe.contains("OUTPOST_GATEWAY_PORT") {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:5723"
    };
    let addr = gw.start_on(listen.parse()?)?;
    let token = gw.token_create("image-e2e", true, None, None)?;
    let token_file = wd.join("bootstrap-token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let bin_dir = wd.subdir("bin")?;
    snapshot_binaries(&bin_dir)?;
    let inputs = BuildInputs {
        ca_cert: gw.ca_cert_path(),
        token_file,
        gateway_port: addr.port(),
        source_date_epoch: recipe_source_date_epoch(&recipe)?,
        bin_dir,
    };
    clock.stage(&format!(
        "gateway listens on {addr}; the appliance will use {HOST_FROM_GUEST}:{}",
        addr.port()
    ));

    clock.stage("2/5 build A (empty cache)");
    let a = build_image(&clock, "a", &inputs, &wd)?;

    // Boot a copy-on-write overlay so build A's images stay as built.
    let vm_dir = wd.subdir("vm")?;
    let disk = vm_dir.join("disk.qcow2");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&a.raw)
        .arg(&disk);
    let out = run_bounded(cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!("qemu-img create overlay failed: {}", out.stderr.trim());
    }
    let vars = vm_dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("failed to copy {OVMF_VARS}"))?;

    clock.stage("3/5 first boot");
    let mut vm = Appliance::boot(&vm_dir, "boot1", &disk, &vars)?;
    let (id, show1) = wait_enrolled_and_reporting(&clock, &gw, &mut vm)?;
    let hostname = show1["inventory"]["hostname"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    clock.stage(&format!(
        "first boot: {id} approved and reporting as {hostname}"
    ));
    assert!(
        matches_example_pattern(&hostname),
        "hostname {hostname:?} does not follow the recipe's pattern outpost-{{machine_id:8}}"
    );
    assert_eq!(
        show1["hostname"],
        hostname.as_str(),
        "enrolment hostname: {show1}"
    );
    let console1 = vm.console();
    assert!(
        console1.contains(FIRSTBOOT_DONE),
        "the first boot did not run the first-boot work:\n{}",
        vm.console_tail()
    );
    assert!(
        console1.contains(&format!("hostname set to {hostname}")),
        "first boot set another hostname than the one reported:\n{}",
        vm.console_tail()
    );
    // The update agent's boot check ran (outpost-boot-check.service): the factory's counted
    // entry is committed without the health check.
    wait_console(
        &clock,
        &mut vm,
        "the boot check to commit slot a (console)",
        BOOT_CHECK_FIRST,
    )?;
    let boot_time1 = show1["inventory"]["boot_time"].clone();
    let batches1 = count(&show1, "batches");
    vm.power_off(&clock, "first boot")?;
    drop(vm);

    // Boot counting: systemd-boot renamed outpost-a+3.conf to outpost-a+2-1.conf when it
    // booted it; before boot-complete.target the boot check renamed it to outpost-a.conf, and
    // systemd-bless-boot (the ESP mounted on /boot/efi) found it done. Unblessed, slot a would
    // be marked bad after 3 boots.
    clock.stage("first boot: reading the boot entries on the booted disk's ESP");
    let entries = boot_entries_of(&clock, &inputs, &disk, &vm_dir)?;
    clock.stage(&format!("first boot: ESP entries {entries:?}"));
    assert!(
        entries
            .iter()
            .any(|(f, st)| f == "outpost-a.conf" && st == "good"),
        "slot a's entry was not blessed after a complete boot (systemd-bless-boot): {entries:?}"
    );
    assert!(
        !entries.iter().any(|(f, _)| f.starts_with("outpost-a+")),
        "slot a still has a counted entry beside the blessed one: {entries:?}"
    );
    assert!(
        entries.iter().any(|(f, _)| f == "outpost-b+3.conf"),
        "slot b's entry changed although slot b was not booted: {entries:?}"
    );

    clock.stage("4/5 second boot of the same disk");
    let mut vm = Appliance::boot(&vm_dir, "boot2", &disk, &vars)?;
    let show2 = wait_show(
        &gw,
        &id,
        "a report from the second boot (a new inventory.boot_time and more batches)",
        clock.bound(BOOT_TIMEOUT)?,
        |v| {
            !v["inventory"]["boot_time"].is_null()
                && v["inventory"]["boot_time"] != boot_time1
                && count(v, "batches") > batches1
        },
    )
    .with_context(|| vm.console_tail())?;
    clock.stage("second boot: the same appliance reports again");
    let list = gw.list_json()?;
    let all = list
        .as_array()
        .context("appliances list --json is not an array")?;
    assert_eq!(all.len(), 1, "a second enrolment happened: {list}");
    assert_eq!(all[0]["id"], id.as_str(), "{list}");
    assert_eq!(show2["state"], "approved", "{show2}");
    assert_eq!(
        show2["inventory"]["hostname"],
        hostname.as_str(),
        "the hostname changed on the second boot: {show2}"
    );
    // The boot check reports to the gateway once the collector's identity exists (from the
    // second boot on; the image has no feed root, so the agent loop does not run).
    wait_console(
        &clock,
        &mut vm,
        "the second boot's boot check (console)",
        BOOT_CHECK_SECOND,
    )?;
    let update = wait_show(
        &gw,
        &id,
        "the boot check's update report (appliances show: update.reported)",
        clock.bound(BOOT_CHECK_TIMEOUT)?,
        |v| v["update"]["reported"] == true,
    )
    .with_context(|| vm.console_tail())?["update"]
        .clone();
    assert_eq!(update["current_slot"], "a", "{update}");
    assert_eq!(
        update["current_version"],
        recipe_image_version(&recipe)?.as_str(),
        "{update}"
    );
    assert!(update["staged_version"].is_null(), "{update}");
    let console2 = vm.console();
    assert!(
        !console2.contains(FIRSTBOOT_DONE),
        "first-boot work ran again on the second boot:\n{}",
        vm.console_tail()
    );
    assert!(
        console2.contains(&format!("appliance={id}")),
        "the collector did not run as {id} on the second boot:\n{}",
        vm.console_tail()
    );
    vm.power_off(&clock, "second boot")?;
    drop(vm);
    gw.stop()?;

    clock.stage("5/5 build B of the same inputs (another empty cache)");
    let b = build_image(&clock, "b", &inputs, &wd)?;
    if a.raw_sha256 != b.raw_sha256 || a.qcow2_sha256 != b.qcow2_sha256 {
        let mut cmd = Command::new(inputs.tool("outpost-image"));
        cmd.arg("diff").arg(&a.rootfs_dir).arg(&b.rootfs_dir);
        let diff = run_bounded(cmd, Duration::from_secs(5 * 60))
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .unwrap_or_else(|e| format!("outpost-image diff failed: {e:#}"));
        panic!(
            "two builds of the same recipe differ:\n raw   {} vs {}\n qcow2 {} vs {}\n\
             outpost-image diff of the root file systems:\n{diff}",
            a.raw_sha256, b.raw_sha256, a.qcow2_sha256, b.qcow2_sha256
        );
    }
    clock.stage("done: enrolled once, identity kept across reboot, images bit-identical");
    Ok(())
}

#[test]
fn example_hostname_pattern_check_accepts_only_eight_hex_digits() {
    assert!(matches_example_pattern("outpost-a10c55d1"));
    assert!(!matches_example_pattern("outpost-a10c55d"));
    assert!(!matches_example_pattern("outpost-A10C55D1"));
    assert!(!matches_example_pattern("localhost"));
}
