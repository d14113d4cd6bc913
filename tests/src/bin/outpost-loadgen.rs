//! `outpost-loadgen`: simulates N appliances against a running gateway (or a pool), each
//! with its own enrolled certificate and TLS connection, and reports what it measured.
//! The logic is `outpost_tests::loadgen`; this is the command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use outpost_tests::loadgen::{self, LoadSettings, Payload};

const HELP: &str = "\
outpost-loadgen --gateway ADDR[,ADDR…] --ca CA.pem (--token T | --token-file F) [options]

Simulates N appliances: enrols each through the real routes with the (auto-approve)
token, opens one mTLS connection per appliance, keeps a command long-poll open on it and
sends a zstd JSON batch every interval (random offset per appliance; inventory in the first
batch and now and then), reconnecting with backoff after errors. Loopback addresses only.

  --appliances N         simulated appliances (default 100)
  --interval D           time between batches of one appliance (default 30s)
  --duration D           how long they run after enrolment (default 60s)
  --enrol-concurrency C  enrolments and first connections in flight (default 32)
  --poll-wait D          wait= of the command long-poll (default 25s)
  --inventory-every K    an inventory record in about 1 of K batches (default 20)
  --backoff-max D        reconnect backoff ceiling (default 10s)
  --gateway-pid PID[,…]  report RSS and CPU of these processes (/proc)
  --storm                once all are connected, measure from the first refused request
                         until every appliance is reconnected (restart the gateway from
                         outside), then stop
  --ready-file F         written when storm mode is armed
  --payload real|synthetic  a real collection of this machine (default) or a made-up one
  --seed S               seed of every random choice (default 1)
  --source IP[,IP…]      bind the appliances' connections to these local addresses, round
                         robin (127.0.0.0/8; one address has ~28,000 ephemeral ports)
  --sources K            the same as --source 127.0.0.2,…,127.0.0.(K+1)
  --workers K            split the fleet over K processes of this program (each has its
                         own open-file limit); the report adds theirs up (no --storm)
  --json                 print the report as JSON
";

fn parse_list<T: std::str::FromStr>(v: &str, what: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    v.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|e| anyhow::anyhow!("{what} {x:?}: {e}"))
        })
        .collect()
}

fn duration(v: &str, what: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(v).with_context(|| format!("{what} {v:?}"))
}

fn parse() -> anyhow::Result<(LoadSettings, bool, usize)> {
    let mut gateways: Vec<SocketAddr> = Vec::new();
    let mut ca: Option<PathBuf> = None;
    let mut token: Option<String> = None;
    let mut json = false;
    let mut payload = "real".to_string();
    let mut workers = 1usize;
    let mut s = LoadSettings {
        gateways: Vec::new(),
        ca_pem: String::new(),
        token: String::new(),
        appliances: 100,
        interval: Duration::from_secs(30),
        duration: Duration::from_secs(60),
        enrol_concurrency: 32,
        poll_wait: Duration::from_secs(25),
        inventory_every: 20,
        backoff_max: Duration::from_secs(10),
        gateway_pids: Vec::new(),
        storm: false,
        ready_file: None,
        seed: 1,
        payload: Payload::synthetic(),
        sources: Vec::new(),
        first_index: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--json" => {
                json = true;
                continue;
            }
            "--storm" => {
                s.storm = true;
                continue;
            }
            _ => {}
        }
        let v = args
            .next()
            .with_context(|| format!("{a} needs a value (see --help)"))?;
        match a.as_str() {
            "--gateway" => gateways = parse_list(&v, "--gateway")?,
            "--ca" => ca = Some(PathBuf::from(v)),
            "--token" => token = Some(v),
            "--token-file" => {
                token = Some(
                    std::fs::read_to_string(&v)
                        .with_context(|| format!("read {v}"))?
                        .trim()
                        .to_string(),
                );
            }
            "--appliances" => s.appliances = v.parse().context("--appliances")?,
            "--interval" => s.interval = duration(&v, "--interval")?,
            "--duration" => s.duration = duration(&v, "--duration")?,
            "--enrol-concurrency" => {
                s.enrol_concurrency = v.parse().context("--enrol-concurrency")?;
            }
            "--poll-wait" => s.poll_wait = duration(&v, "--poll-wait")?,
            "--inventory-every" => s.inventory_every = v.parse().context("--inventory-every")?,
            "--backoff-max" => s.backoff_max = duration(&v, "--backoff-max")?,
            "--gateway-pid" => s.gateway_pids = parse_list(&v, "--gateway-pid")?,
            "--ready-file" => s.ready_file = Some(PathBuf::from(v)),
            "--payload" => payload = v,
            "--seed" => s.seed = v.parse().context("--seed")?,
            "--source" => s.sources = parse_list(&v, "--source")?,
            "--sources" => {
                let k: u8 = v.parse().context("--sources (1 to 250)")?;
                if k == 0 || k > 250 {
                    bail!("--sources {k}: expected 1 to 250");
                }
                s.sources = (2..=k.saturating_add(1))
                    .map(|i| IpAddr::from([127, 0, 0, i]))
                    .collect();
            }
            "--workers" => workers = v.parse().context("--workers")?,
            other => bail!("unknown option {other} (see --help)"),
        }
    }
    if gateways.is_empty() {
        bail!("--gateway is required (see --help)");
    }
    if let Some(g) = gateways.iter().find(|g| !g.ip().is_loopback()) {
        bail!("--gateway {g}: only loopback addresses are allowed");
    }
    if let Some(ip) = s.sources.iter().find(|ip| !ip.is_loopback()) {
        bail!("--source {ip}: only loopback addresses are allowed");
    }
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    if workers > 1 && s.storm {
        bail!("--storm runs in one process; drop --workers");
    }
    if s.appliances == 0 || s.interval.is_zero() || s.duration.is_zero() {
        bail!("--appliances, --interval and --duration must be above zero");
    }
    let ca = ca.context("--ca is required (see --help)")?;
    s.ca_pem = std::fs::read_to_string(&ca).with_context(|| format!("read {}", ca.display()))?;
    s.token = token.context("--token or --token-file is required (see --help)")?;
    s.gateways = gateways;
    s.payload = match payload.as_str() {
        "real" => Payload::best_available(),
        "synthetic" => Payload::synthetic(),
        other => bail!("--payload {other}: expected real or synthetic"),
    };
    Ok((s, json, workers))
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--worker") {
        // One share of a fleet, driven by its parent through stdin and stdout.
        loadgen::raise_fd_limit();
        let result = tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(loadgen::run_worker()));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: worker: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let (settings, json, workers) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = if workers > 1 {
        match std::env::current_exe() {
            Ok(exe) => rt.block_on(loadgen::run_workers(settings, workers, &exe)),
            Err(e) => Err(anyhow::anyhow!(
                "cannot find this program to start workers: {e}"
            )),
        }
    } else {
        rt.block_on(loadgen::run(settings))
    };
    match result {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", report.human());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
