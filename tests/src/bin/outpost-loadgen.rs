//! `outpost-loadgen`: simulates N appliances against a running gateway (or a pool), each
//! with its own enrolled certificate and TLS connection, and reports what it measured.
//! The logic is `outpost_tests::loadgen`; this is the command line.

use std::net::SocketAddr;
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

fn parse() -> anyhow::Result<(LoadSettings, bool)> {
    let mut gateways: Vec<SocketAddr> = Vec::new();
    let mut ca: Option<PathBuf> = None;
    let mut token: Option<String> = None;
    let mut json = false;
    let mut payload = "real".to_string();
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
            other => bail!("unknown option {other} (see --help)"),
        }
    }
    if gateways.is_empty() {
        bail!("--gateway is required (see --help)");
    }
    if let Some(g) = gateways.iter().find(|g| !g.ip().is_loopback()) {
        bail!("--gateway {g}: only loopback addresses are allowed");
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
    Ok((s, json))
}

fn main() -> ExitCode {
    let (settings, json) = match parse() {
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
    match rt.block_on(loadgen::run(settings)) {
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
