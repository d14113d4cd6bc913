//! Benchmark aid for `bench/updates.sh`: times outpost-updater's blob verification
//! (`mirror::verify_file`, the check every mirrored blob passes before use) on one file.
//!
//! Usage: `verify_bench FILE SHA256_HEX` — prints `seconds=S bytes=N MiB/s=R` and exits 1 when
//! the file does not verify.

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, sha] = args.as_slice() else {
        eprintln!("usage: verify_bench FILE SHA256_HEX");
        return ExitCode::from(2);
    };
    let path = std::path::Path::new(file);
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => {
            eprintln!("error: cannot stat {file}: {e}");
            return ExitCode::from(1);
        }
    };
    let started = Instant::now();
    if let Err(e) = outpost_updater::mirror::verify_file(path, sha, len) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // a throughput figure, not an exact count
    let mib = len as f64 / (1024.0 * 1024.0);
    println!("seconds={secs:.3} bytes={len} MiB/s={:.0}", mib / secs);
    ExitCode::SUCCESS
}
