//! `make demo`: a gateway and a collector on loopback, end to end, in under two minutes.
//!
//! Creates a CA and a gateway in a temporary directory, serves on `127.0.0.1:0`, makes an
//! auto-approve token for `demo-customer`, starts one collector every 2 s, waits until the
//! gateway holds its inventory and three metric batches, prints the appliance table and a
//! summary, then stops both with SIGTERM. On a timeout it prints the log tails and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use outpost_tests::fixtures::{wait_show, ENROLL_TIMEOUT};
use outpost_tests::gateway::count;
use outpost_tests::{Collector, Gateway, Workdir};
use serde_json::Value;

/// Bound on the whole wait for data.
const DATA_TIMEOUT: Duration = Duration::from_secs(90);

fn step(msg: &str) {
    println!("==> {msg}");
}

fn main() -> ExitCode {
    // Declared before the processes so that it is removed after they are killed.
    let wd = match Workdir::new("demo") {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut gw_slot: Option<Gateway> = None;
    let mut col_slot: Option<Collector> = None;
    match run(&wd, &mut gw_slot, &mut col_slot) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            if let Some(gw) = &gw_slot {
                gw.dump_log(30);
            }
            if let Some(col) = &col_slot {
                col.dump_log(30);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(
    wd: &Workdir,
    gw_slot: &mut Option<Gateway>,
    col_slot: &mut Option<Collector>,
) -> anyhow::Result<()> {
    step(&format!("working in {}", wd.path().display()));

    step("outpost-gateway init: a new Outpost CA and server certificate for 127.0.0.1, localhost");
    let gw = gw_slot.insert(Gateway::init_loopback(&wd.subdir("gateway")?)?);

    step("outpost-gateway serve on 127.0.0.1:0 (TLS 1.3, mutual TLS for appliances)");
    let addr = gw.start()?;
    println!("    listening on {addr}");

    step("outpost-gateway token create --customer demo-customer --auto-approve");
    let token = gw.token_create("demo-customer", true, None, None)?;
    println!("    token {}…", token.chars().take(8).collect::<String>());

    step("outpost-collector run (interval 2s): makes its key and CSR, enrols, sends telemetry");
    let col = col_slot.insert(Collector::start_new(
        &wd.join("collector"),
        gw,
        &token,
        "2s",
    )?);
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    println!("    enrolled as {id} (auto-approved)");

    step("waiting for inventory and 3 metric batches at the gateway (at most 90 s)");
    let mut seen = 0;
    let show = wait_show(
        gw,
        &id,
        "inventory and 3 metric batches",
        DATA_TIMEOUT,
        |v| {
            let b = count(v, "batches");
            if b > seen {
                seen = b;
                println!("    {b} batch(es) stored");
            }
            !v["inventory"].is_null() && !v["latest_metrics"].is_null() && b >= 3
        },
    )?;

    step("outpost-gateway appliances list");
    let table = gw.cli_ok(&["appliances", "list"])?;
    println!("{}", table.trim_end());

    step("summary");
    print_summary(&show);

    step("stopping the collector and the gateway (SIGTERM)");
    let st = col.stop().context("stopping the collector")?;
    println!("    collector exited: {st}");
    let st = gw.stop().context("stopping the gateway")?;
    println!("    gateway exited: {st}");
    step("done; the temporary directory is removed");
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_summary(show: &Value) {
    let inv = &show["inventory"];
    let m = &show["latest_metrics"];
    let mib = inv["memory_total_bytes"].as_u64().unwrap_or(0) / (1024 * 1024);
    let load: Vec<String> = m["load_avg"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{:.2}", x.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "    appliance   {} ({})",
        text(&show["id"]),
        text(&show["state"])
    );
    println!("    customer    {}", text(&show["customer"]));
    println!("    hostname    {}", text(&inv["hostname"]));
    println!(
        "    os          {} {}",
        text(&inv["os_name"]),
        text(&inv["os_version"])
    );
    println!("    kernel      {}", text(&inv["kernel_version"]));
    println!("    cpus        {}", text(&inv["cpu_count"]));
    println!("    memory      {mib} MiB");
    println!(
        "    stored      {} batches, {} records (last seq {})",
        count(show, "batches"),
        count(show, "records"),
        count(show, "last_seq")
    );
    println!("    load        {}", load.join(" "));
    println!("    uptime      {} s", text(&m["uptime_secs"]));
    println!("    last seen   {}", text(&show["last_seen"]));
}
