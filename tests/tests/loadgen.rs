//! The load generator is tested like the rest: against a real gateway on loopback, with a
//! small fleet, and what it says was acknowledged must be what the gateway stored. Figures
//! (rates, latencies) are never asserted here; they belong in `make bench`.

use std::time::Duration;

use outpost_tests::loadgen::{self, LoadReport, LoadSettings, Payload};
use outpost_tests::{Gateway, Workdir};

fn settings(gw: &Gateway, token: String, appliances: usize, secs: u64) -> LoadSettings {
    LoadSettings {
        gateways: vec![gw.addr()],
        ca_pem: gw.ca_pem().expect("CA PEM"),
        token,
        appliances,
        interval: Duration::from_secs(2),
        duration: Duration::from_secs(secs),
        enrol_concurrency: 8,
        poll_wait: Duration::from_secs(5),
        inventory_every: 3,
        backoff_max: Duration::from_secs(2),
        gateway_pids: gw.pid().into_iter().collect(),
        storm: false,
        ready_file: None,
        seed: 7,
        payload: Payload::best_available(),
        sources: Vec::new(),
        first_index: 0,
    }
}

/// Sums `batches` and `records` of every appliance per `appliances show --json`.
fn stored(gw: &Gateway) -> (u64, u64, usize) {
    let list = gw.list_json().expect("appliances list");
    let list = list.as_array().expect("list is an array");
    let (mut batches, mut records) = (0, 0);
    for a in list {
        let id = a["id"].as_str().expect("id");
        let show = gw.show_json(id).expect("appliances show");
        batches += outpost_tests::gateway::count(&show, "batches");
        records += outpost_tests::gateway::count(&show, "records");
    }
    (batches, records, list.len())
}

/// What the generator counted as acknowledged is exactly what the store holds; returns the
/// number of appliances enrolled.
fn assert_acknowledged_is_stored(gw: &Gateway, r: &LoadReport) -> usize {
    let (batches, records, enrolled) = stored(gw);
    assert_eq!(
        r.batches_acked, batches,
        "acknowledged batches = stored batches"
    );
    assert_eq!(
        r.records_acked, records,
        "acknowledged records = stored records"
    );
    enrolled
}

fn run(s: LoadSettings) -> LoadReport {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(loadgen::run(s)).expect("load generator");
    eprint!("{}", r.human());
    r
}

#[test]
fn loadgen_counts_match_what_the_gateway_stored() {
    let work = Workdir::new("loadgen").expect("workdir");
    let mut gw = Gateway::init_loopback(&work.join("gw")).expect("gateway init");
    gw.start().expect("gateway start");
    let token = gw
        .token_create("load", true, Some("1h"), Some(20))
        .expect("token");
    let r = run(settings(&gw, token, 20, 10));

    let enrolled = assert_acknowledged_is_stored(&gw, &r);
    assert_eq!(enrolled, 20, "every simulated appliance is enrolled");
    assert!(
        r.batches_acked >= 20,
        "each appliance sent at least one batch in 10 s at a 2 s interval: {r:?}"
    );
    assert_eq!(r.busy_answers, 0, "no overload at this size: {r:?}");
    assert!(r.errors.is_empty(), "no errors: {:?}", r.errors);
    assert!(r.polls_answered > 0, "long-polls came back: {r:?}");
    assert_eq!(r.gateway_usage.len(), 1);
    assert!(r.gateway_usage[0].rss_end_kib > 0);
}

#[test]
fn an_overloaded_gateway_sheds_with_503_and_loses_nothing_acknowledged() {
    let work = Workdir::new("loadgen-shed").expect("workdir");
    let mut gw = Gateway::init_loopback(&work.join("gw")).expect("gateway init");
    gw.set_config("max_ingest_in_flight", 1).expect("config");
    gw.set_config("overload_retry_after_secs", 1)
        .expect("config");
    gw.start().expect("gateway start");
    let token = gw
        .token_create("load", true, Some("1h"), Some(40))
        .expect("token");
    let mut s = settings(&gw, token, 40, 10);
    s.interval = Duration::from_millis(500);
    let r = run(s);

    assert!(
        r.busy_answers > 0,
        "with one ingest at a time and 40 appliances every 0.5 s some batches are shed: {r:?}"
    );
    assert!(
        !r.errors.contains_key("ingest_http_503_without_retry_after"),
        "every 503 carries Retry-After: {:?}",
        r.errors
    );
    let unexpected: Vec<&String> = r
        .errors
        .keys()
        .filter(|k| k.as_str() != "ingest_http_503")
        .collect();
    assert!(
        unexpected.is_empty(),
        "only overload refusals: {:?}",
        r.errors
    );
    assert_acknowledged_is_stored(&gw, &r);
    assert!(r.batches_acked > 0, "some batches got through: {r:?}");
}

/// Source addresses of established connections to `port` seen in `/proc/net/tcp` (the
/// client side's local address).
fn sources_connected_to(port: u16) -> std::collections::BTreeSet<std::net::Ipv4Addr> {
    let mut seen = std::collections::BTreeSet::new();
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return seen;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let rport = remote
            .split_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if *state != "01" || rport != Some(port) {
            continue;
        }
        if let Some(ip) = local
            .split_once(':')
            .and_then(|(ip, _)| u32::from_str_radix(ip, 16).ok())
        {
            // /proc/net/tcp prints the address in host (little-endian) order.
            seen.insert(std::net::Ipv4Addr::from(ip.swap_bytes()));
        }
    }
    seen
}

#[test]
fn workers_and_source_addresses_spread_the_fleet_and_counts_still_match() {
    let work = Workdir::new("loadgen-workers").expect("workdir");
    let mut gw = Gateway::init_loopback(&work.join("gw")).expect("gateway init");
    gw.start().expect("gateway start");
    let token = gw
        .token_create("load", true, Some("1h"), Some(12))
        .expect("token");
    let mut s = settings(&gw, token, 12, 8);
    let sources: Vec<std::net::IpAddr> = vec![[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
    s.sources.clone_from(&sources);

    // Watch which source addresses the gateway's connections come from while it runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = gw.addr().port();
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                seen.extend(sources_connected_to(port));
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_outpost-loadgen"));
    let r = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(180), loadgen::run_workers(s, 2, exe)).await
        })
        .expect("the workers finish in time")
        .expect("load generator with workers");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    eprint!("{}", r.human());

    assert_eq!(r.workers, 2, "{r:?}");
    assert_eq!(r.appliances, 12);
    let enrolled = assert_acknowledged_is_stored(&gw, &r);
    assert_eq!(enrolled, 12, "each worker enrolled its share, no more");
    assert!(r.errors.is_empty(), "no errors: {:?}", r.errors);
    assert!(r.batches_acked >= 12, "every appliance sent: {r:?}");
    assert!(
        r.ingest_latency.p50_ms > 0.0,
        "latency merged from the workers"
    );
    assert_eq!(r.gateway_usage.len(), 1, "the parent measures the gateway");
    assert!(r.gateway_usage[0].rss_connected_kib > 0);
    let want: std::collections::BTreeSet<std::net::Ipv4Addr> =
        [[127, 0, 0, 2].into(), [127, 0, 0, 3].into()].into();
    assert!(
        want.is_subset(&seen),
        "connections came from {seen:?}, expected both of {want:?}"
    );
}

/// Kills the gateway (SIGKILL) a few seconds into the run and starts it again on the same
/// address: every batch the generator saw acknowledged — some of them in one group commit
/// with others — is in the store after the crash, and nothing is stored twice.
struct KillOnceRunning {
    gw: std::sync::Arc<std::sync::Mutex<Gateway>>,
    after: Duration,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl loadgen::Phases for KillOnceRunning {
    async fn reached(&mut self, phase: loadgen::Phase) -> anyhow::Result<()> {
        if phase == loadgen::Phase::Connected {
            let (gw, after) = (self.gw.clone(), self.after);
            self.done = Some(tokio::spawn(async move {
                tokio::time::sleep(after).await;
                tokio::task::spawn_blocking(move || {
                    let mut g = gw.lock().expect("gateway lock");
                    g.kill9().expect("kill -9 the gateway");
                    g.restart().expect("restart the gateway on its address");
                })
                .await
                .expect("restart task");
            }));
        }
        Ok(())
    }
}

#[test]
fn acknowledged_batches_survive_a_gateway_kill_9_under_group_commit() {
    let work = Workdir::new("loadgen-kill9").expect("workdir");
    let mut gw = Gateway::init_loopback(&work.join("gw")).expect("gateway init");
    gw.start().expect("gateway start");
    let token = gw
        .token_create("load", true, Some("1h"), Some(30))
        .expect("token");
    let mut s = settings(&gw, token, 30, 14);
    // Many batches at once, so groups form; no gateway figures (its pid changes).
    s.interval = Duration::from_millis(300);
    s.backoff_max = Duration::from_secs(1);
    s.gateway_pids.clear();
    let gw = std::sync::Arc::new(std::sync::Mutex::new(gw));
    let mut phases = KillOnceRunning {
        gw: gw.clone(),
        after: Duration::from_secs(4),
        done: None,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt
        .block_on(async {
            let r = tokio::time::timeout(
                Duration::from_secs(120),
                loadgen::run_phased(s, &mut phases),
            )
            .await;
            if let Some(h) = phases.done.take() {
                h.await.expect("kill and restart");
            }
            r
        })
        .expect("the run ends in time")
        .expect("load generator");
    eprint!("{}", r.human());
    let gw = gw.lock().expect("gateway lock");
    assert!(gw.pid().is_some(), "the gateway runs again");
    assert!(r.reconnects > 0, "the appliances noticed the crash: {r:?}");
    assert_acknowledged_is_stored(&gw, &r);
    assert!(r.batches_acked > 100, "batches went through: {r:?}");
}
