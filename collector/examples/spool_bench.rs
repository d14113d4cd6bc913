//! `spool_bench`: the collector's spool under load, through its real API
//! (`outpost_collector::spool`). Run by `make bench` (through `outpost-bench`), or alone:
//!
//! ```sh
//! cargo build --release -p outpost-collector --example spool_bench
//! target/release/examples/spool_bench append --fsync batch --secs 3
//! target/release/examples/spool_bench replay --bytes 1073741824
//! target/release/examples/spool_bench fill --state-dir DIR --records 40000
//! ```
//!
//! * `append`: appends collections as the collector makes them (a real `Metrics` record of
//!   this machine and an `Agent` record per `Spool::append`, so one sync per collection
//!   under `batch`) to a spool in a temporary directory, for `--secs` or until `--max-bytes`
//!   are on disk; prints records/s and MB/s of segment bytes.
//! * `replay`: fills a spool in a temporary directory to `--bytes` (sync policy `never`,
//!   then every segment file is synced), then times `Spool::open` — the replay and index
//!   step the collector does at start — once with the files in the page cache and once
//!   after the files were dropped from it (`posix_fadvise(DONTNEED)`).
//! * `fill`: appends `--records` records (collections of metrics and self-metrics) to the
//!   spool of a collector's state directory, to give a real collector a backlog; prints the
//!   last record id.
//!
//! Each measurement is printed as one JSON object per line on stdout (for `outpost-bench`)
//! and as a sentence on stderr. Temporary directories are removed at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use outpost_collector::collect::agent_record;
use outpost_collector::sources::HostSource;
use outpost_collector::spool::{FsyncPolicy, Spool, SpoolConfig, DEFAULT_MAX_BYTES};
use outpost_collector::uplink::UplinkSnapshot;
use outpost_proto::{HostMetrics, Record};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Spool append throughput, replay time and backlog fill, on the real spool API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append throughput under one sync policy.
    Append {
        /// `batch`, `always` or `never`.
        #[arg(long, default_value = "batch")]
        fsync: String,
        /// How long to append.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Stop earlier once this many segment bytes are written.
        #[arg(long, default_value_t = 1 << 30)]
        max_bytes: u64,
        /// Parent of the temporary spool (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Time to reopen (replay and index) a spool of this many bytes.
    Replay {
        /// Segment bytes to fill before reopening.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// Parent of the temporary spool (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Give a collector's state directory a backlog of records.
    Fill {
        /// The collector's state directory (the collector must be stopped).
        #[arg(long)]
        state_dir: PathBuf,
        /// Records to add (rounded up to whole collections of two).
        #[arg(long)]
        records: u64,
        /// The collector's `spool_max_bytes`.
        #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
        max_bytes: u64,
    },
}

/// One real sample of this machine: a second `collect` after the minimum CPU interval, so
/// CPU use is filled in as in the collector's records.
fn real_metrics() -> HostMetrics {
    let mut src = HostSource::new();
    std::thread::sleep(sysinfo_min_interval());
    src.collect().1
}

fn sysinfo_min_interval() -> Duration {
    Duration::from_millis(250)
}

/// The records of one collection after the first: metrics, then self-metrics from the
/// spool's counters (as `collect_loop` builds them).
fn collection(spool: &Spool, metrics: &HostMetrics) -> Vec<Record> {
    let at = now_ms();
    // No inventory: a steady collector's inventory is unchanged and not spooled again.
    let mut records = vec![Record::Metrics {
        collected_at_ms: at,
        metrics: metrics.clone(),
    }];
    records.push(agent_record(
        &spool.stats(),
        &UplinkSnapshot {
            current_gateway: "127.0.0.1:5723".into(),
            reconnects: 3,
            send_latency_ms: Some(12),
        },
        at,
    ));
    records
}

/// A failure, with what was being done.
type Result<T> = std::result::Result<T, String>;

/// `context` for results and options, as `anyhow` would (the collector has no `anyhow`).
trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: &str) -> Result<T> {
        self.ok_or_else(|| what.to_string())
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(what)
    }
}

macro_rules! bail {
    ($($t:tt)*) => { return Err(format!($($t)*)) };
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn temp_in(dir: Option<&Path>, prefix: &str) -> Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    match dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .context("failed to create a temporary directory")
}

#[allow(clippy::cast_precision_loss)]
fn append(fsync: &str, secs: f64, max_bytes: u64, dir: Option<&Path>) -> Result<()> {
    let policy = FsyncPolicy::parse(fsync)
        .with_context(|| format!("--fsync {fsync}: expected batch, always or never"))?;
    let metrics = real_metrics();
    let tmp = temp_in(dir, "outpost-spool-append-")?;
    let cfg = SpoolConfig {
        // No eviction during the run: the cap is far above what is written.
        max_bytes: max_bytes.saturating_mul(4).max(DEFAULT_MAX_BYTES),
        fsync: policy,
    };
    let mut spool = Spool::open(tmp.path(), cfg).context("open spool")?;
    let limit = Duration::from_secs_f64(secs);
    let (mut records, mut appends, mut payload) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < limit && spool.stats().bytes < max_bytes {
        let batch = collection(&spool, &metrics);
        for r in &batch {
            payload += serde_json::to_vec(r).map_or(0, |v| v.len() as u64);
        }
        let n = batch.len() as u64;
        spool.append(batch).context("append")?;
        records += n;
        appends += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    let bytes = spool.stats().bytes;
    let metrics_bytes = serde_json::to_vec(&Record::Metrics {
        collected_at_ms: now_ms(),
        metrics: metrics.clone(),
    })
    .context("encode a metrics record")?
    .len();
    drop(spool);
    tmp.close().context("remove the temporary spool")?;
    let out = json!({
        "what": "append",
        "fsync": policy.as_str(),
        "records": records,
        "appends": appends,
        "secs": wall,
        "bytes": bytes,
        "payload_bytes": payload,
        "metrics_record_bytes": metrics_bytes,
        "records_per_sec": records as f64 / wall,
        "appends_per_sec": appends as f64 / wall,
        "mb_per_sec": bytes as f64 / wall / 1e6,
    });
    eprintln!(
        "append, fsync {}: {records} records ({appends} collections) in {wall:.2} s = {:.0} records/s, {:.2} MB/s",
        policy.as_str(),
        records as f64 / wall,
        bytes as f64 / wall / 1e6
    );
    println!("{out}");
    Ok(())
}

/// Appends collections to `spool` until its segments hold `bytes`; returns records added
/// and the last record id.
fn fill_to(spool: &mut Spool, metrics: &HostMetrics, bytes: u64) -> Result<(u64, u64)> {
    let (mut records, mut last_rid) = (0u64, 0u64);
    while spool.stats().bytes < bytes {
        // 100 collections per call: fewer cap checks, the same frames.
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(collection(spool, metrics));
        }
        records += batch.len() as u64;
        last_rid = spool.append(batch).context("append")?.last_rid;
    }
    Ok((records, last_rid))
}

fn segment_files(spool_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for class in ["samples", "changes"] {
        let d = spool_dir.join(class);
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            out.push(e.with_context(|| format!("read {}", d.display()))?.path());
        }
    }
    Ok(out)
}

/// Writes every segment back to disk, then drops it from the page cache.
fn evict_from_page_cache(files: &[PathBuf]) -> Result<()> {
    for f in files {
        let file = std::fs::File::open(f).with_context(|| format!("open {}", f.display()))?;
        file.sync_all()
            .with_context(|| format!("sync {}", f.display()))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .with_context(|| format!("fadvise {}", f.display()))?;
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)]
fn replay(bytes: u64, dir: Option<&Path>) -> Result<()> {
    let metrics = real_metrics();
    let tmp = temp_in(dir, "outpost-spool-replay-")?;
    let cfg = SpoolConfig {
        max_bytes: bytes.saturating_mul(2),
        fsync: FsyncPolicy::Never,
    };
    let started = Instant::now();
    let mut spool = Spool::open(tmp.path(), cfg).context("open spool")?;
    let (records, _) = fill_to(&mut spool, &metrics, bytes)?;
    drop(spool);
    let files = segment_files(&tmp.path().join("spool"))?;
    for f in &files {
        std::fs::File::open(f)
            .and_then(|h| h.sync_all())
            .with_context(|| format!("sync {}", f.display()))?;
    }
    let fill_secs = started.elapsed().as_secs_f64();

    let t = Instant::now();
    let spool = Spool::open(tmp.path(), cfg).context("reopen spool (warm)")?;
    let warm = t.elapsed().as_secs_f64();
    let stats = spool.stats();
    drop(spool);
    if stats.records != records {
        bail!(
            "replay indexed {} records, {records} were written",
            stats.records
        );
    }

    evict_from_page_cache(&files)?;
    let t = Instant::now();
    let spool = Spool::open(tmp.path(), cfg).context("reopen spool (cold)")?;
    let cold = t.elapsed().as_secs_f64();
    let cold_records = spool.stats().records;
    drop(spool);
    let hwm_kib = peak_rss_kib();
    tmp.close().context("remove the temporary spool")?;
    if cold_records != records {
        bail!("cold replay indexed {cold_records} records, {records} were written");
    }
    let gib = stats.bytes as f64 / f64::from(1u32 << 30);
    let out = json!({
        "what": "replay",
        "bytes": stats.bytes,
        "records": records,
        "segments": files.len(),
        "fill_secs": fill_secs,
        "warm_secs": warm,
        "cold_secs": cold,
        "warm_gib_per_sec": gib / warm,
        "cold_gib_per_sec": gib / cold,
        "peak_rss_kib": hwm_kib,
    });
    eprintln!(
        "replay of {gib:.2} GiB ({records} records, {} segments): page cache {warm:.2} s = {:.2} GiB/s, from disk {cold:.2} s = {:.2} GiB/s",
        files.len(),
        gib / warm,
        gib / cold
    );
    println!("{out}");
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fill(state_dir: &Path, records: u64, max_bytes: u64) -> Result<()> {
    let metrics = real_metrics();
    let cfg = SpoolConfig {
        max_bytes,
        fsync: FsyncPolicy::Batch,
    };
    let mut spool = Spool::open(state_dir, cfg)
        .with_context(|| format!("open the spool of {}", state_dir.display()))?;
    let first_rid = spool.stats().next_rid;
    let mut added = 0u64;
    let mut last_rid = 0u64;
    while added < records {
        let mut batch = Vec::new();
        while added + (batch.len() as u64) < records && batch.len() < 200 {
            batch.extend(collection(&spool, &metrics));
        }
        added += batch.len() as u64;
        let a = spool.append(batch).context("append")?;
        if a.dropped > 0 {
            bail!(
                "the spool cap dropped {} records; raise --max-bytes",
                a.dropped
            );
        }
        last_rid = a.last_rid;
    }
    let stats = spool.stats();
    let out = json!({
        "what": "fill",
        "first_rid": first_rid,
        "last_rid": last_rid,
        "records": added,
        "spool_records": stats.records,
        "spool_bytes": stats.bytes,
    });
    eprintln!(
        "filled {}: rids {first_rid}..={last_rid}, spool holds {} records, {} bytes",
        state_dir.display(),
        stats.records,
        stats.bytes
    );
    println!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Append {
            fsync,
            secs,
            max_bytes,
            dir,
        } => append(&fsync, secs, max_bytes, dir.as_deref()),
        Command::Replay { bytes, dir } => replay(bytes, dir.as_deref()),
        Command::Fill {
            state_dir,
            records,
            max_bytes,
        } => fill(&state_dir, records, max_bytes),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
