//! Real QEMU guests for tests: `qemu-system-x86_64` with software emulation, tiny memory,
//! no disk, paused with `-S` so it burns no CPU, wrapped in `timeout` so that even a killed
//! test run leaves nothing behind for long. The same way `collector/tests/qemu_discovery.rs`
//! starts its guests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The emulator.
pub const QEMU: &str = "qemu-system-x86_64";
/// The longest a test guest may live, whatever happens to the test.
pub const GUEST_LIFETIME_SECS: u32 = 180;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Why real guests cannot run here, if they cannot (for a `SKIP:` line).
#[must_use]
pub fn unavailable() -> Option<&'static str> {
    if !on_path(QEMU) {
        return Some("qemu-system-x86_64 not found (make deps installs qemu-system-x86)");
    }
    if !on_path("timeout") {
        return Some("coreutils `timeout` not found; test guests need a bounded lifetime");
    }
    None
}

/// A UUID that differs between calls and runs (time, process id and a counter).
#[must_use]
pub fn fresh_uuid() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0);
    let b = (u64::from(std::process::id()) << 32) | u64::from(n);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | (b >> 48 & 0x3fff),
        b & 0xffff_ffff_ffff,
    )
}

/// A running test guest. Dropping it stops QEMU and reaps it.
#[derive(Debug)]
pub struct Guest {
    /// `-name guest=…`.
    pub name: String,
    /// `-uuid`.
    pub uuid: String,
    /// `-smp`.
    pub vcpus: u32,
    /// `-m`, MiB.
    pub memory_mib: u64,
    child: Child,
    log: PathBuf,
}

impl Guest {
    /// Starts a guest; its standard error goes to `DIR/NAME.log`.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start(dir: &Path, name: &str, vcpus: u32, memory_mib: u64) -> anyhow::Result<Self> {
        let uuid = fresh_uuid();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("timeout")
            .args(["--kill-after=5", &GUEST_LIFETIME_SECS.to_string(), QEMU])
            .args(["-name", &format!("guest={name}")])
            .args(["-uuid", &uuid])
            .args(["-smp", &vcpus.to_string()])
            .args(["-m", &memory_mib.to_string()])
            .args(["-nodefaults", "-display", "none", "-S"])
            .args(["-machine", "q35", "-accel", "tcg,tb-size=16"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("create guest log")?)
            .spawn()
            .context("spawn timeout + qemu-system-x86_64")?;
        Ok(Self {
            name: name.to_string(),
            uuid,
            vcpus,
            memory_mib,
            child,
            log,
        })
    }

    /// QEMU's standard error so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stops it (SIGTERM to `timeout`, passed on to QEMU; SIGKILL after 10 s) and reaps it.
    pub fn stop(&mut self) {
        if self.exited() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}
