//! `outpost-layout boot`.

use clap::Args;
use outpost_layout::qemu::{self, BootOptions, BootOutcome};
use outpost_layout::LayoutError;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `boot`.
#[derive(Args)]
pub struct BootArgs {
    /// Disk image (raw or qcow2). It is written to: first-boot state persists across boots.
    image: PathBuf,
    /// OVMF firmware code (read-only pflash).
    #[arg(long, default_value = qemu::OVMF_CODE)]
    ovmf_code: PathBuf,
    /// OVMF variable store template; copied to a temporary file for each boot.
    #[arg(long, default_value = qemu::OVMF_VARS)]
    ovmf_vars: PathBuf,
    /// Write the serial console to this file instead of standard output.
    #[arg(long)]
    serial: Option<PathBuf>,
    /// Forward a host port to the guest, e.g. tcp:127.0.0.1:2222-:22 (repeatable; loopback only).
    /// The guest reaches the host's 127.0.0.1 as 10.0.2.2 without any forward.
    #[arg(long)]
    hostfwd: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Stop the guest after this long (e.g. 10m); exit code 124 when it does.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
}

/// Runs `boot`.
pub fn run(a: BootArgs) -> Result<ExitCode, LayoutError> {
    let opts = BootOptions {
        image: a.image,
        ovmf_code: a.ovmf_code,
        ovmf_vars: a.ovmf_vars,
        serial: a.serial,
        hostfwd: a.hostfwd,
        memory_mib: a.memory,
        timeout: a.timeout,
    };
    match qemu::boot(&opts)? {
        BootOutcome::Exited(s) if s.success() => Ok(ExitCode::SUCCESS),
        BootOutcome::Exited(s) => {
            eprintln!("qemu-system-x86_64 exited with {s}");
            Ok(ExitCode::from(1))
        }
        BootOutcome::TimedOut => {
            eprintln!("timeout reached; the guest was stopped");
            Ok(ExitCode::from(124))
        }
    }
}
