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
