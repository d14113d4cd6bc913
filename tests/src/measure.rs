//! What benchmarks and the load generator measure, shared: a process's memory and CPU from
//! `/proc`, latency percentiles, and a real collection of this machine as a payload.

use std::time::Duration;

use anyhow::{bail, Context};
use outpost_proto::{HostInventory, HostMetrics};

/// Resident memory and CPU time of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcUsage {
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS), KiB.
    pub hwm_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
///
/// # Errors
/// When the process is gone or the files are unreadable.
pub fn proc_usage(pid: u32) -> anyhow::Result<ProcUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let cpu_secs = (ticks(11) + ticks(12)) as f64 / clock_ticks();
    Ok(ProcUsage {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_secs,
    })
}

/// `getconf CLK_TCK` (100 when it cannot be asked).
#[must_use]
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// Latency samples in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    /// The samples, ms.
    pub samples: Vec<f64>,
}

impl Latency {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d.as_secs_f64() * 1000.0);
    }

    /// The `p` quantile (0.0..=1.0), nearest rank; 0 without samples.
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.sort_by(f64::total_cmp);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((self.samples.len() - 1) as f64 * p).round() as usize;
        self.samples[i]
    }
}

/// One real collection of this machine (`outpost-collector collect --json`), used as the
/// payload of simulated batches.
///
/// # Errors
/// When the collector binary is missing or its output is not what it should be.
pub fn real_sample() -> anyhow::Result<(HostInventory, HostMetrics)> {
    let bin = crate::bins::collector()?;
    let out = std::process::Command::new(&bin)
        .args(["collect", "--json"])
        .output()
        .with_context(|| format!("run {} collect --json", bin.display()))?;
    if !out.status.success() {
        bail!(
            "collect --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("collect output")?;
    Ok((
        serde_json::from_value(v["inventory"].clone()).context("inventory")?,
        serde_json::from_value(v["metrics"].clone()).context("metrics")?,
    ))
}
