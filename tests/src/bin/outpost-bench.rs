//! `outpost-bench`: what `make bench` runs. Starts the real gateway (release build) on
//! loopback, enrols simulated appliances through the real routes (each with its own key,
//! certificate and TLS connection), has them send realistic batches, runs the real
//! collector for a while, and writes the figures with their command lines to a Markdown
//! report.
//!
//! Figures live here, never in timed tests: this machine is shared and noisy, so the report
//! states the machine and the exact command, and each run is a fresh measurement.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use outpost_proto::{HostInventory, HostMetrics, IngestBatch, Record};
use outpost_tests::{ApplianceClient, Collector, Gateway, Workdir};
use tokio::sync::Semaphore;

/// Settings, from the command line (`--name value`).
#[derive(Debug, Clone)]
struct Settings {
    appliances: usize,
    batches: u64,
    concurrency: usize,
    collector_secs: u64,
    out: PathBuf,
}

impl Settings {
    fn parse() -> anyhow::Result<Self> {
        let mut s = Self {
            appliances: 200,
            batches: 20,
            concurrency: 32,
            collector_secs: 20,
            out: PathBuf::from("bench/REPORT.md"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if a == "--help" || a == "-h" {
                println!(
                    "outpost-bench [--appliances N] [--batches M] [--concurrency C] \
                     [--collector-secs S] [--out FILE]\n\n\
                     Enrols N simulated appliances (own key, own TLS connection each) with the \
                     real gateway, sends M batches from each (all appliances at once), runs the \
                     real collector for S seconds, and writes a Markdown report to FILE \
                     (default bench/REPORT.md). Uses the binaries next to this one."
                );
                std::process::exit(0);
            }
            let v = args
                .next()
                .with_context(|| format!("{a} needs a value (see --help)"))?;
            match a.as_str() {
                "--appliances" => s.appliances = v.parse().context("--appliances")?,
                "--batches" => s.batches = v.parse().context("--batches")?,
                "--concurrency" => s.concurrency = v.parse().context("--concurrency")?,
                "--collector-secs" => s.collector_secs = v.parse().context("--collector-secs")?,
                "--out" => s.out = PathBuf::from(v),
                other => bail!("unknown option {other} (see --help)"),
            }
        }
        if s.appliances == 0 || s.batches == 0 || s.concurrency == 0 {
            bail!("--appliances, --batches and --concurrency must be at least 1");
        }
        Ok(s)
    }
}

/// Resident memory and CPU time of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcUsage {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_secs: f64,
}

fn proc_usage(pid: u32) -> anyhow::Result<ProcUsage> {
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
    let hz = clock_ticks();
    #[allow(clippy::cast_precision_loss)]
    let cpu_secs = (ticks(11) + ticks(12)) as f64 / hz;
    Ok(ProcUsage {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_secs,
    })
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// Latency summary in milliseconds.
#[derive(Debug, Default)]
struct Latency {
    samples: Vec<f64>,
}

impl Latency {
    fn push(&mut self, d: Duration) {
        self.samples.push(d.as_secs_f64() * 1000.0);
    }
    fn pct(&mut self, p: f64) -> f64 {
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

/// One real collection of this machine, used as the payload of simulated batches.
fn real_sample() -> anyhow::Result<(HostInventory, HostMetrics)> {
    let bin = outpost_tests::bins::collector()?;
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

fn batch(seq: u64, inv: &HostInventory, met: &HostMetrics, with_inventory: bool) -> IngestBatch {
    let now = outpost_tests::now_ms();
    let mut records = Vec::new();
    if with_inventory {
        records.push(Record::Inventory {
            collected_at_ms: now,
            hash: outpost_proto::content_hash(inv),
            inventory: inv.clone(),
        });
    }
    records.push(Record::Metrics {
        collected_at_ms: now,
        metrics: met.clone(),
    });
    // Record ids as a collector gives them: increasing, two per batch.
    let records = records
        .into_iter()
        .zip(1..)
        .map(|(record, i)| outpost_proto::Envelope {
            rid: seq * 2 + i,
            record,
        })
        .collect();
    IngestBatch { seq, records }
}

struct Figures {
    lines: Vec<(String, String)>,
}

impl Figures {
    fn add(&mut self, name: &str, value: String) {
        println!("  {name}: {value}");
        self.lines.push((name.to_string(), value));
    }
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
async fn run(s: &Settings) -> anyhow::Result<Figures> {
    let mut fig = Figures { lines: Vec::new() };
    let (inv, met) = real_sample()?;
    let plain = serde_json::to_vec(&batch(1, &inv, &met, true))?;
    let packed = zstd::encode_all(&plain[..], 3)?;
    let plain_m = serde_json::to_vec(&batch(2, &inv, &met, false))?;
    let packed_m = zstd::encode_all(&plain_m[..], 3)?;
    fig.add(
        "batch size, inventory + metrics (JSON / zstd)",
        format!("{} B / {} B", plain.len(), packed.len()),
    );
    fig.add(
        "batch size, metrics only (JSON / zstd)",
        format!("{} B / {} B", plain_m.len(), packed_m.len()),
    );

    let work = Workdir::new("bench")?;
    let mut gw = Gateway::init_loopback(&work.join("gw"))?;
    let addr = gw.start()?;
    let gpid = gw.pid().context("gateway pid")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = proc_usage(gpid)?;
    fig.add(
        "gateway RSS, idle after start",
        format!("{} KiB", idle.rss_kib),
    );
    let ca = gw.ca_pem()?;
    let uses = u32::try_from(s.appliances).context("--appliances too large")?;
    let token = gw.token_create("bench", true, Some("1h"), Some(uses))?;

    // Enrolment through the real routes, each appliance with its own key.
    let sem = Arc::new(Semaphore::new(s.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..s.appliances {
        let (sem, ca, token) = (sem.clone(), ca.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            let mut c = ApplianceClient::new(addr, &ca)?;
            let t = Instant::now();
            c.enroll_and_fetch(&token, Duration::from_secs(60)).await?;
            anyhow::Ok((c, t.elapsed()))
        }));
    }
    let mut clients = Vec::new();
    let mut enrol_lat = Latency::default();
    for t in tasks {
        let (c, d) = t.await??;
        enrol_lat.push(d);
        clients.push(c);
    }
    let enrol_wall = started.elapsed().as_secs_f64();
    fig.add(
        "enrolments (CSR check + sign + store), auto-approve",
        format!(
            "{} in {enrol_wall:.2} s = {:.0}/s; p50 {:.1} ms, p99 {:.1} ms (concurrency {})",
            s.appliances,
            s.appliances as f64 / enrol_wall,
            enrol_lat.pct(0.5),
            enrol_lat.pct(0.99),
            s.concurrency
        ),
    );

    // Ingest: every appliance sends its batches in order, all appliances at once.
    let before = proc_usage(gpid)?;
    let started = Instant::now();
    let inv = Arc::new(inv);
    let met = Arc::new(met);
    let mut tasks = Vec::new();
    for c in clients {
        let (inv, met, n) = (inv.clone(), met.clone(), s.batches);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            let mut errors = 0u64;
            for seq in 1..=n {
                let b = batch(seq, &inv, &met, seq == 1);
                let t = Instant::now();
                match c.ingest(&b).await {
                    Ok(r) if r.status == 200 => match r.ack() {
                        Ok(a) if a.acked_seq == seq && !a.duplicate => lat.push(t.elapsed()),
                        _ => errors += 1,
                    },
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut ingest_lat = Latency::default();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        for d in lat {
            ingest_lat.push(d);
        }
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    let after = proc_usage(gpid)?;
    let total = s.appliances as u64 * s.batches;
    let ok = ingest_lat.samples.len() as u64;
    fig.add(
        "ingest (mTLS, zstd JSON, one transaction per batch, SQLite)",
        format!(
            "{ok}/{total} batches acknowledged in {wall:.2} s = {:.0} batches/s; errors {errors}",
            ok as f64 / wall
        ),
    );
    fig.add(
        "ingest latency",
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} appliances in parallel)",
            ingest_lat.pct(0.5),
            ingest_lat.pct(0.99),
            ingest_lat.pct(1.0),
            s.appliances
        ),
    );
    let cpu = after.cpu_secs - before.cpu_secs;
    fig.add(
        "gateway CPU during ingest",
        format!(
            "{cpu:.2} s = {:.3} ms per batch ({:.0}% of one core)",
            cpu * 1000.0 / ok.max(1) as f64,
            cpu / wall * 100.0
        ),
    );
    fig.add(
        "gateway RSS after ingest / peak",
        format!(
            "{} KiB / {} KiB with {} open appliance connections",
            after.rss_kib, after.hwm_kib, s.appliances
        ),
    );
    if errors > 0 {
        bail!(
            "{errors} batches were not acknowledged; see {}",
            gw.log_path().display()
        );
    }

    // The real collector on this machine, every second.
    let token = gw.token_create("bench", true, Some("1h"), Some(1))?;
    let mut col = Collector::start_new(&work.join("collector"), &gw, &token, "1s")?;
    let cpid = col.pid().context("collector pid")?;
    let id = col.enrollment_id(Duration::from_secs(30))?;
    let c0 = proc_usage(cpid)?;
    let show0 = gw.show_json(&id)?;
    tokio::time::sleep(Duration::from_secs(s.collector_secs)).await;
    let c1 = proc_usage(cpid)?;
    let show1 = gw.show_json(&id)?;
    let sent = outpost_tests::gateway::count(&show1, "batches")
        .saturating_sub(outpost_tests::gateway::count(&show0, "batches"));
    let ccpu = c1.cpu_secs - c0.cpu_secs;
    fig.add(
        "collector (interval 1s): batches acknowledged",
        format!("{sent} in {} s", s.collector_secs),
    );
    fig.add(
        "collector CPU per collection + send",
        format!(
            "{:.2} ms ({ccpu:.2} s CPU over {} s = {:.2}% of one core)",
            ccpu * 1000.0 / sent.max(1) as f64,
            s.collector_secs,
            ccpu / s.collector_secs as f64 * 100.0
        ),
    );
    fig.add(
        "collector RSS / peak",
        format!("{} KiB / {} KiB", c1.rss_kib, c1.hwm_kib),
    );
    col.stop()?;

    // One-shot collection, as `outpost-collector collect --json`.
    let bin = outpost_tests::bins::collector()?;
    let mut one = Latency::default();
    for _ in 0..5 {
        let t = Instant::now();
        let st = std::process::Command::new(&bin)
            .args(["collect", "--json"])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !st.success() {
            bail!("collect --json failed");
        }
        one.push(t.elapsed());
    }
    fig.add(
        "`outpost-collector collect --json`, wall time (5 runs)",
        format!("median {:.0} ms, max {:.0} ms", one.pct(0.5), one.pct(1.0)),
    );
    gw.stop()?;
    Ok(fig)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{cpus} CPUs, kernel {}, {}",
        kernel.trim(),
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    )
}

fn write_report(path: &Path, s: &Settings, fig: &Figures) -> anyhow::Result<()> {
    let mut r = String::new();
    let when = humantime_now();
    let _ = writeln!(r, "# Outpost benchmark report\n");
    let _ = writeln!(
        r,
        "Written by `make bench` on {when}. Machine: {}. Figures are from one run on a \
         shared machine; compare runs of the same report, not across machines.\n",
        machine()
    );
    let _ = writeln!(r, "## Command lines\n");
    let _ = writeln!(r, "```sh");
    let _ = writeln!(r, "cargo build --release --workspace --bins");
    let _ = writeln!(
        r,
        "target/release/outpost-bench --appliances {} --batches {} --concurrency {} --collector-secs {} --out {}",
        s.appliances,
        s.batches,
        s.concurrency,
        s.collector_secs,
        s.out.display()
    );
    let _ = writeln!(r, "```\n");
    let _ = writeln!(
        r,
        "The benchmark starts `outpost-gateway serve` (release, SQLite store) on 127.0.0.1, \
         enrols simulated appliances through `POST /v1/enroll` with an auto-approve token \
         (each with its own P-256 key, certificate and TLS 1.3 connection), then each sends \
         its batches in sequence over mTLS while all appliances run at once. The payload is a \
         real `outpost-collector collect --json` of this machine. Then it runs the real \
         collector with a 1 s interval against the same gateway. Memory and CPU come from \
         /proc of the measured process.\n"
    );
    let _ = writeln!(r, "## Figures\n");
    let _ = writeln!(r, "| what | measured |");
    let _ = writeln!(r, "|---|---|");
    for (k, v) in &fig.lines {
        let _ = writeln!(r, "| {k} | {v} |");
    }
    let _ = writeln!(
        r,
        "\nNo peer is named by the issues delivered so far, so this report has no ratios yet; \
         the scale issue adds the load generator and its comparisons."
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, r).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn humantime_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn main() -> std::process::ExitCode {
    let s = match Settings::parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    println!("outpost-bench: {s:?}");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(&s)) {
        Ok(fig) => match write_report(&s.out, &s, &fig) {
            Ok(()) => {
                println!("report written to {}", s.out.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
