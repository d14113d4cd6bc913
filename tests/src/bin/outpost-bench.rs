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
use outpost_tests::measure::{proc_usage, real_sample, Latency};
use outpost_tests::{ApplianceClient, Collector, Gateway, Workdir};
use tokio::sync::Semaphore;

/// Settings, from the command line (`--name value`).
#[derive(Debug, Clone)]
struct Settings {
    appliances: usize,
    batches: u64,
    concurrency: usize,
    collector_secs: u64,
    spool_secs: f64,
    replay_bytes: u64,
    e2e_records: u64,
    postgres: String,
    only: Vec<Stage>,
    out: PathBuf,
}

/// The parts of the benchmark, run in this order; `--only` picks some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Enrolment and ingest of simulated appliances, the real collector's footprint.
    Ingest,
    /// Spool append throughput per sync policy and replay time.
    Spool,
    /// One real collector's backlog drained through one gateway into SQLite and PostgreSQL.
    E2e,
}

impl Stage {
    const ALL: [Self; 3] = [Self::Ingest, Self::Spool, Self::E2e];

    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "ingest" => Ok(Self::Ingest),
            "spool" => Ok(Self::Spool),
            "e2e" => Ok(Self::E2e),
            other => bail!("--only {other}: expected ingest, spool or e2e"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Spool => "spool",
            Self::E2e => "e2e",
        }
    }
}

/// Default server for the PostgreSQL figure when `OUTPOST_TEST_POSTGRES` is unset.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

impl Settings {
    fn parse() -> anyhow::Result<Self> {
        let mut s = Self {
            appliances: 200,
            batches: 20,
            concurrency: 32,
            collector_secs: 20,
            spool_secs: 3.0,
            replay_bytes: 1 << 30,
            e2e_records: 100_000,
            postgres: outpost_tests::pg::server_url().unwrap_or_else(|| DEFAULT_POSTGRES.into()),
            only: Stage::ALL.to_vec(),
            out: PathBuf::from("bench/REPORT.md"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if a == "--help" || a == "-h" {
                println!(
                    "outpost-bench [--appliances N] [--batches M] [--concurrency C] \
                     [--collector-secs S] [--spool-secs T] [--replay-bytes B] \
                     [--e2e-records R] [--postgres URL] [--only ingest,spool,e2e] [--out FILE]\n\n\
                     ingest: enrols N simulated appliances (own key, own TLS connection each) \
                     with the real gateway, sends M batches from each (all appliances at once), \
                     runs the real collector for S seconds.\n\
                     spool: appends to the collector's spool for T seconds per sync policy \
                     (batch, always, never) and times the replay of a spool of B bytes \
                     (examples/spool_bench).\n\
                     e2e: gives a real collector a backlog of R records and times its drain \
                     through one gateway into SQLite and into PostgreSQL (URL, default \
                     $OUTPOST_TEST_POSTGRES or {DEFAULT_POSTGRES}; a SKIP line when unreachable).\n\
                     Writes a Markdown report to FILE (default bench/REPORT.md). Uses the \
                     binaries next to this one."
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
                "--spool-secs" => s.spool_secs = v.parse().context("--spool-secs")?,
                "--replay-bytes" => s.replay_bytes = v.parse().context("--replay-bytes")?,
                "--e2e-records" => s.e2e_records = v.parse().context("--e2e-records")?,
                "--postgres" => s.postgres = v,
                "--only" => {
                    s.only = v
                        .split(',')
                        .map(Stage::parse)
                        .collect::<anyhow::Result<_>>()?;
                }
                "--out" => s.out = PathBuf::from(v),
                other => bail!("unknown option {other} (see --help)"),
            }
        }
        if s.appliances == 0 || s.batches == 0 || s.concurrency == 0 || s.e2e_records == 0 {
            bail!("--appliances, --batches, --concurrency and --e2e-records must be at least 1");
        }
        Ok(s)
    }
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

/// One measured figure and the command line that reproduces it.
#[derive(Debug, Clone)]
struct Figure {
    name: String,
    value: String,
    command: String,
}

/// Everything the report shows: figures, ratios between figures of the same run, and
/// parts that were skipped (with why).
#[derive(Debug, Default)]
struct Figures {
    lines: Vec<Figure>,
    ratios: Vec<Figure>,
    skips: Vec<String>,
    /// The command line of the figures added next.
    command: String,
}

impl Figures {
    fn add(&mut self, name: &str, value: String) {
        println!("  {name}: {value}");
        self.lines.push(Figure {
            name: name.to_string(),
            value,
            command: self.command.clone(),
        });
    }

    fn add_ratio(&mut self, name: &str, value: String, command: String) {
        println!("  ratio {name}: {value}");
        self.ratios.push(Figure {
            name: name.to_string(),
            value,
            command,
        });
    }

    fn skip(&mut self, line: String) {
        println!("  {line}");
        self.skips.push(line);
    }
}

/// `target/release/outpost-bench --only STAGE` with the options that stage reads.
fn stage_command(s: &Settings, stage: Stage) -> String {
    let opts = match stage {
        Stage::Ingest => format!(
            "--appliances {} --batches {} --concurrency {} --collector-secs {}",
            s.appliances, s.batches, s.concurrency, s.collector_secs
        ),
        Stage::Spool => format!(
            "--spool-secs {} --replay-bytes {}",
            s.spool_secs, s.replay_bytes
        ),
        Stage::E2e => format!(
            "--e2e-records {} --postgres {}",
            s.e2e_records,
            redact_password(&s.postgres)
        ),
    };
    format!(
        "target/release/outpost-bench --only {} {opts}",
        stage.as_str()
    )
}

/// `url` without a password, for the report.
fn redact_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) if user.contains(':') => {
                let name = user.split_once(':').map_or(user, |(u, _)| u);
                format!("{scheme}://{name}:***@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

async fn run(s: &Settings) -> anyhow::Result<Figures> {
    let mut fig = Figures::default();
    for stage in Stage::ALL {
        if !s.only.contains(&stage) {
            continue;
        }
        println!("stage {}", stage.as_str());
        fig.command = stage_command(s, stage);
        match stage {
            Stage::Ingest => run_ingest(s, &mut fig).await?,
            Stage::Spool => run_spool(s, &mut fig)?,
            Stage::E2e => run_e2e(s, &mut fig)?,
        }
    }
    Ok(fig)
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
async fn run_ingest(s: &Settings, fig: &mut Figures) -> anyhow::Result<()> {
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
    fig.command = "target/release/outpost-collector collect --json".into();
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
    Ok(())
}

/// The `spool_bench` example built next to this binary (`target/release/examples/`).
fn spool_bench_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("where is outpost-bench")?;
    let dir = exe.parent().context("outpost-bench has no directory")?;
    let bin = dir.join("examples").join("spool_bench");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p outpost-collector --example spool_bench`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `spool_bench ARGS…` and returns the JSON object it printed last.
fn spool_bench(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let bin = spool_bench_bin()?;
    let out = std::process::Command::new(&bin)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!("spool_bench {} failed ({})", args.join(" "), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rfind(|l| l.starts_with('{'))
        .with_context(|| format!("spool_bench {} printed no result", args.join(" ")))?;
    serde_json::from_str(last).with_context(|| format!("spool_bench output {last:?}"))
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// Spool append throughput per sync policy, then replay of a full spool.
fn run_spool(s: &Settings, fig: &mut Figures) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for policy in ["batch", "always", "never"] {
        let args: Vec<String> = vec![
            "append".into(),
            "--fsync".into(),
            policy.into(),
            "--secs".into(),
            s.spool_secs.to_string(),
        ];
        fig.command = format!("target/release/examples/spool_bench {}", args.join(" "));
        let v = spool_bench(&args)?;
        let records = num(&v, "records");
        let bytes = num(&v, "bytes");
        fig.add(
            &format!("spool append, `spool_fsync = \"{policy}\"`"),
            format!(
                "{:.0} records/s, {:.2} MB/s ({:.0} records in {:.0} collections, {:.2} s; \
                 {:.0} B per record on disk, metrics record {:.0} B JSON; {:.0} appends/s)",
                num(&v, "records_per_sec"),
                num(&v, "mb_per_sec"),
                records,
                num(&v, "appends"),
                num(&v, "secs"),
                bytes / records.max(1.0),
                num(&v, "metrics_record_bytes"),
                num(&v, "appends_per_sec"),
            ),
        );
        rates.push((policy, num(&v, "records_per_sec"), fig.command.clone()));
    }
    let rate = |p: &str| rates.iter().find(|r| r.0 == p).map_or(0.0, |r| r.1);
    let cmd = |p: &str| rates.iter().find(|r| r.0 == p).map_or("", |r| r.2.as_str());
    for (a, b) in [("never", "batch"), ("batch", "always"), ("never", "always")] {
        let cmds = format!("{}; {}", cmd(a), cmd(b));
        fig.add_ratio(
            &format!("spool append records/s, `{a}` / `{b}`"),
            format!(
                "{:.1}× ({:.0} / {:.0} records/s)",
                rate(a) / rate(b).max(f64::MIN_POSITIVE),
                rate(a),
                rate(b)
            ),
            cmds,
        );
    }

    let args: Vec<String> = vec![
        "replay".into(),
        "--bytes".into(),
        s.replay_bytes.to_string(),
    ];
    fig.command = format!("target/release/examples/spool_bench {}", args.join(" "));
    let v = spool_bench(&args)?;
    let gib = num(&v, "bytes") / f64::from(1u32 << 30);
    fig.add(
        "spool replay (`Spool::open`: read, check and index every frame), files from disk",
        format!(
            "{gib:.2} GiB ({:.0} records, {:.0} segments) in {:.2} s = {:.2} GiB/s",
            num(&v, "records"),
            num(&v, "segments"),
            num(&v, "cold_secs"),
            num(&v, "cold_gib_per_sec"),
        ),
    );
    fig.add(
        "spool replay, files in the page cache",
        format!(
            "{gib:.2} GiB in {:.2} s = {:.2} GiB/s; peak RSS of the process {:.0} KiB",
            num(&v, "warm_secs"),
            num(&v, "warm_gib_per_sec"),
            num(&v, "peak_rss_kib"),
        ),
    );
    fig.add(
        "spool fill for the replay (`spool_fsync = \"never\"`, then every segment synced)",
        format!(
            "{gib:.2} GiB in {:.1} s = {:.0} MB/s",
            num(&v, "fill_secs"),
            num(&v, "bytes") / num(&v, "fill_secs").max(f64::MIN_POSITIVE) / 1e6
        ),
    );
    fig.add_ratio(
        "spool replay, page cache / disk (GiB/s)",
        format!(
            "{:.1}×",
            num(&v, "warm_gib_per_sec") / num(&v, "cold_gib_per_sec").max(f64::MIN_POSITIVE)
        ),
        fig.command.clone(),
    );
    Ok(())
}

/// What one drain measured.
struct Drain {
    records: u64,
    secs: f64,
}

/// A real collector with a backlog of `s.e2e_records` records drained through `gw`
/// (already initialised, not started) into its store.
#[allow(clippy::cast_precision_loss)]
fn drain_backlog(
    s: &Settings,
    gw: &mut Gateway,
    dir: &Path,
    store: &str,
    fig: &mut Figures,
) -> anyhow::Result<Drain> {
    gw.start()?;
    let token = gw.token_create("bench", true, Some("1h"), Some(1))?;
    // A long interval: the collector adds only its first collection to the backlog.
    let mut col = Collector::configure(&dir.join("collector"), gw, &token, "1h")?;
    col.set_config("backoff_max", "1s")?;
    col.start()?;
    let id = col.enrollment_id(Duration::from_secs(30))?;
    outpost_tests::wait_for(
        "the collector's first collection to be stored",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || Ok((outpost_tests::gateway::count(&gw.show_json(&id)?, "last_rid") > 0).then_some(())),
    )?;
    col.stop()?;

    // The backlog, written through the collector's own spool API.
    let state = col.state_dir().display().to_string();
    let args: Vec<String> = vec![
        "fill".into(),
        "--state-dir".into(),
        state,
        "--records".into(),
        s.e2e_records.to_string(),
    ];
    let v = spool_bench(&args)?;
    let target = v["last_rid"].as_u64().context("fill printed no last_rid")?;
    let show0 = gw.show_json(&id)?;
    let before = outpost_tests::gateway::count(&show0, "records");
    let batches_before = outpost_tests::gateway::count(&show0, "batches");

    let started = Instant::now();
    col.start()?;
    let show = outpost_tests::wait_for(
        "the backlog to be stored",
        Duration::from_secs(600),
        Duration::from_millis(100),
        || {
            let show = gw.show_json(&id)?;
            Ok((outpost_tests::gateway::count(&show, "last_rid") >= target).then_some(show))
        },
    )?;
    let secs = started.elapsed().as_secs_f64();
    col.stop()?;
    gw.stop()?;
    let stored = outpost_tests::gateway::count(&show, "records").saturating_sub(before);
    if stored < s.e2e_records {
        bail!(
            "only {stored} of {} backlog records were stored (last rid {})",
            s.e2e_records,
            outpost_tests::gateway::count(&show, "last_rid")
        );
    }
    let records = s.e2e_records;
    fig.add(
        &format!("end to end, collector backlog → gateway → {store}"),
        format!(
            "{records} records in {secs:.2} s = {:.0} records/s ({} batches; from collector \
             start to the last rid stored per `appliances show`)",
            records as f64 / secs,
            outpost_tests::gateway::count(&show, "batches").saturating_sub(batches_before),
        ),
    );
    Ok(Drain { records, secs })
}

#[allow(clippy::cast_precision_loss)]
fn run_e2e(s: &Settings, fig: &mut Figures) -> anyhow::Result<()> {
    let work = Workdir::new("bench-e2e")?;
    let mut gw = Gateway::init_loopback(&work.subdir("sqlite/gw")?)?;
    let sqlite = drain_backlog(s, &mut gw, &work.join("sqlite"), "SQLite", fig)?;
    drop(gw);

    let db = match outpost_tests::TestDatabase::create(&s.postgres) {
        Ok(db) => db,
        Err(e) => {
            fig.skip(format!(
                "SKIP: end to end into PostgreSQL: {} is unreachable: {e:#}",
                redact_password(&s.postgres)
            ));
            return Ok(());
        }
    };
    let mut gw = Gateway::init_loopback(&work.subdir("pg/gw")?)?;
    gw.set_config("store", db.url())?;
    let pg = drain_backlog(s, &mut gw, &work.join("pg"), "PostgreSQL", fig)?;
    drop(gw);
    drop(db);
    let (a, b) = (
        sqlite.records as f64 / sqlite.secs,
        pg.records as f64 / pg.secs,
    );
    fig.add_ratio(
        "end to end records/s, SQLite / PostgreSQL",
        format!("{:.2}× ({a:.0} / {b:.0} records/s)", a / b),
        fig.command.clone(),
    );
    Ok(())
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
        "cargo build --release -p outpost-collector --example spool_bench"
    );
    let _ = writeln!(
        r,
        "target/release/outpost-bench --appliances {} --batches {} --concurrency {} \
         --collector-secs {} --spool-secs {} --replay-bytes {} --e2e-records {} \
         --postgres {} --only {} --out {}",
        s.appliances,
        s.batches,
        s.concurrency,
        s.collector_secs,
        s.spool_secs,
        s.replay_bytes,
        s.e2e_records,
        redact_password(&s.postgres),
        s.only
            .iter()
            .map(|st| st.as_str())
            .collect::<Vec<_>>()
            .join(","),
        s.out.display()
    );
    let _ = writeln!(r, "```\n");
    let _ = writeln!(
        r,
        "Each figure below names the command line that measures it alone (the same binaries, \
         after the builds above).\n"
    );
    let _ = writeln!(r, "## Method\n");
    let _ = writeln!(
        r,
        "* **ingest**: the benchmark starts `outpost-gateway serve` (release, SQLite store) \
         on 127.0.0.1, enrols simulated appliances through `POST /v1/enroll` with an \
         auto-approve token (each with its own P-256 key, certificate and TLS 1.3 \
         connection), then each sends its batches in sequence over mTLS while all appliances \
         run at once. The payload is a real `outpost-collector collect --json` of this \
         machine. Then it runs the real collector with a 1 s interval against the same \
         gateway. Memory and CPU come from /proc of the measured process."
    );
    let _ = writeln!(
        r,
        "* **spool**: `collector/examples/spool_bench.rs` drives the collector's spool \
         (`outpost_collector::spool::Spool`) in a temporary directory, removed afterwards. \
         Append: one `Spool::append` per collection as the collector makes them (a real \
         `Metrics` record of this machine and an `Agent` self-metrics record), so under \
         `batch` one `fdatasync` per collection, under `always` one per record, under \
         `never` none. MB/s counts segment bytes (frame header + record JSON). Replay: a \
         spool filled to {} bytes (with `never`, then every segment file synced, to fill \
         1 GiB in seconds; the replay does not depend on how the files were written) and \
         reopened with `Spool::open`, the step the collector does at start: every segment \
         read, every frame's CRC checked, every record indexed. Timed once with the files \
         still in the page cache, once after they were dropped from it \
         (`posix_fadvise(POSIX_FADV_DONTNEED)` per file), which is the restart after a power \
         cut.",
        s.replay_bytes
    );
    let _ = writeln!(
        r,
        "* **e2e**: a real collector (release, `interval = \"1h\"`) enrols with a real \
         gateway, its first collection is stored, and it is stopped. `spool_bench fill` then \
         appends {} records (collections of a metrics and a self-metrics record) to its \
         spool through the spool API. The gateway is running; the timer starts when the \
         collector is started again and stops when `appliances show --json` reports \
         `last_rid` at the backlog's last record id (polled every 100 ms; the stored \
         `records` count is checked too). The collector sends its batches of up to 500 \
         records one after the other, each acknowledged after the gateway's transaction. \
         Once into SQLite, once into PostgreSQL (a throwaway database, dropped afterwards).\n",
        s.e2e_records
    );
    let _ = writeln!(r, "## Figures\n");
    let _ = writeln!(r, "| what | measured | command line |");
    let _ = writeln!(r, "|---|---|---|");
    for f in &fig.lines {
        let _ = writeln!(r, "| {} | {} | `{}` |", f.name, f.value, f.command);
    }
    let _ = writeln!(r, "\n## Comparisons (same run)\n");
    if fig.ratios.is_empty() {
        let _ = writeln!(r, "None in this run.");
    } else {
        let _ = writeln!(r, "| ratio | value | command lines |");
        let _ = writeln!(r, "|---|---|---|");
        for f in &fig.ratios {
            let cmds = f
                .command
                .split("; ")
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join("<br>");
            let _ = writeln!(r, "| {} | {} | {cmds} |", f.name, f.value);
        }
    }
    if !fig.skips.is_empty() {
        let _ = writeln!(r, "\n## Skipped\n");
        for line in &fig.skips {
            let _ = writeln!(r, "* {line}");
        }
    }
    let _ = writeln!(
        r,
        "\nNo peer (Fluent Bit, Telegraf, Vector, the OpenTelemetry collector) is measured \
         here, so the ratios compare Outpost's own settings and stores; the scale issue adds \
         the load generator and its comparisons with peers."
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
