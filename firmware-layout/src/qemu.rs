//! `boot`: runs an image under `qemu-system-x86_64` with OVMF (UEFI), software emulation, the
//! image as a persistent virtio disk, user networking and a serial console. The QEMU command
//! line is built by a pure function so it can be tested and copied by other tests.

use crate::error::LayoutError;
use crate::tools::{self, QEMU_SYSTEM};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Default OVMF firmware code (read-only pflash).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// Default OVMF variable store template (copied to a temp file per boot).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Disk image (raw or qcow2; written to: first-boot state persists).
    pub image: PathBuf,
    /// OVMF code.
    pub ovmf_code: PathBuf,
    /// OVMF variables template.
    pub ovmf_vars: PathBuf,
    /// Serial console file; `None` means standard output.
    pub serial: Option<PathBuf>,
    /// Extra `hostfwd=` rules for user networking, e.g. `tcp:127.0.0.1:2222-:22`.
    pub hostfwd: Vec<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
}

/// Escapes a value for QEMU's comma-separated option syntax.
fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Guesses the image format from its first bytes.
#[must_use]
pub fn image_format(head: &[u8]) -> &'static str {
    if head.starts_with(b"QFI\xfb") {
        "qcow2"
    } else {
        "raw"
    }
}

/// Checks a `hostfwd` rule: `tcp|udp:[127.x.y.z]:HOSTPORT-[GUESTADDR]:GUESTPORT`, no commas.
///
/// # Errors
/// [`LayoutError::Usage`] naming the rule.
pub fn check_hostfwd(rule: &str) -> Result<(), LayoutError> {
    let bad = |m: &str| LayoutError::Usage {
        flag: "--hostfwd".into(),
        message: format!("{rule:?}: {m}"),
    };
    if rule.contains(',') || rule.contains(char::is_whitespace) {
        return Err(bad("must not contain commas or spaces"));
    }
    let rest = rule
        .strip_prefix("tcp:")
        .or_else(|| rule.strip_prefix("udp:"))
        .ok_or_else(|| bad("must start with tcp: or udp:"))?;
    let (host, _guest) = rest
        .split_once('-')
        .ok_or_else(|| bad("expected HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT"))?;
    let addr = host.rsplit_once(':').map_or("", |(a, _)| a);
    if !addr.starts_with("127.") {
        return Err(bad(
            "the host address must be on 127.0.0.0/8 (loopback only)",
        ));
    }
    Ok(())
}

/// The QEMU arguments for `opts`, with `vars` the writable copy of the OVMF variables and
/// `format` the image format.
#[must_use]
pub fn qemu_args(opts: &BootOptions, vars: &Path, format: &str) -> Vec<OsString> {
    let mut netdev = "user,id=n0".to_string();
    for rule in &opts.hostfwd {
        netdev.push_str(",hostfwd=");
        netdev.push_str(rule);
    }
    let mut a: Vec<String> = vec![
        "-machine".into(),
        "q35".into(),
        "-accel".into(),
        "tcg".into(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-nographic".into(),
        "-no-user-config".into(),
        "-nodefaults".into(),
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            qemu_escape(&opts.ovmf_code)
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", qemu_escape(vars)),
        "-drive".into(),
        format!(
            "if=virtio,format={format},cache=writeback,file={}",
            qemu_escape(&opts.image)
        ),
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
    ];
    a.push(match &opts.serial {
        Some(p) => format!("file:{}", p.to_string_lossy()),
        None => "stdio".into(),
    });
    a.into_iter().map(OsString::from).collect()
}

/// How a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOutcome {
    /// QEMU exited (the guest powered off) with this status.
    Exited(ExitStatus),
    /// The timeout passed and QEMU was stopped.
    TimedOut,
}

/// Boots the image and waits for QEMU to exit or the timeout.
///
/// # Errors
/// Missing QEMU or firmware, unreadable image, or QEMU failing to start.
pub fn boot(opts: &BootOptions) -> Result<BootOutcome, LayoutError> {
    tools::require(&[QEMU_SYSTEM])?;
    for (p, what) in [
        (&opts.ovmf_code, "OVMF firmware code"),
        (&opts.ovmf_vars, "OVMF variable store"),
    ] {
        if !p.is_file() {
            return Err(LayoutError::MissingFile {
                path: p.clone(),
                package: "ovmf".into(),
                purpose: format!("boot under UEFI ({what})"),
            });
        }
    }
    for rule in &opts.hostfwd {
        check_hostfwd(rule)?;
    }
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f =
            std::fs::File::open(&opts.image).map_err(LayoutError::io("open", &opts.image))?;
        f.read_exact(&mut head)
            .map_err(LayoutError::io("read", &opts.image))?;
    }
    let vars_dir =
        tempfile::tempdir().map_err(LayoutError::io("create a temp dir for", &opts.ovmf_vars))?;
    let vars = vars_dir.path().join("OVMF_VARS.fd");
    std::fs::copy(&opts.ovmf_vars, &vars).map_err(LayoutError::io("copy", &opts.ovmf_vars))?;
    let args = qemu_args(opts, &vars, image_format(&head));
    tracing::info!(image = %opts.image.display(), "booting under qemu-system-x86_64 (TCG, OVMF)");
    let mut child = Command::new(QEMU_SYSTEM.name)
        .args(&args)
        .spawn()
        .map_err(|_| LayoutError::MissingTool {
            tool: QEMU_SYSTEM.name.into(),
            package: QEMU_SYSTEM.package.into(),
            purpose: QEMU_SYSTEM.purpose.into(),
        })?;
    let started = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(LayoutError::io("wait for", QEMU_SYSTEM.name))?
        {
            return Ok(BootOutcome::Exited(status));
        }
        if opts.timeout.is_some_and(|t| started.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(BootOutcome::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BootOptions {
        BootOptions {
            image: "disk,1.raw".into(),
            ovmf_code: OVMF_CODE.into(),
            ovmf_vars: OVMF_VARS.into(),
            serial: Some("serial.log".into()),
            hostfwd: vec!["tcp:127.0.0.1:2222-:22".into()],
            memory_mib: 1024,
            timeout: None,
        }
    }

    #[test]
    fn command_line_has_uefi_persistent_virtio_disk_and_user_net() {
        let a: Vec<String> = qemu_args(&opts(), Path::new("vars.fd"), "raw")
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let j = a.join(" ");
        assert!(
            j.contains("-machine q35 -accel tcg -m 1024 -nographic"),
            "{j}"
        );
        assert!(
            j.contains("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
        );
        assert!(j.contains("if=pflash,format=raw,unit=1,file=vars.fd"));
        assert!(j.contains("if=virtio,format=raw,cache=writeback,file=disk,,1.raw"));
        assert!(!j.contains("snapshot"));
        assert!(j.contains(
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22 -device virtio-net-pci,netdev=n0"
        ));
        assert!(j.ends_with("-serial file:serial.log"));
    }

    #[test]
    fn hostfwd_is_loopback_only_and_cannot_inject_options() {
        assert!(check_hostfwd("tcp:127.0.0.1:2222-:22").is_ok());
        assert!(check_hostfwd("tcp::2222-:22").is_err());
        assert!(check_hostfwd("tcp:0.0.0.0:2222-:22").is_err());
        assert!(check_hostfwd("tcp:127.0.0.1:2222-:22,smb=/").is_err());
        assert!(check_hostfwd("2222-:22").is_err());
    }
}
