//! A pool of two gateways sharing one PostgreSQL database: a collector fails over from the
//! primary to the second and back, and loses or repeats nothing; tokens, approvals,
//! sequence numbers, revocation and commands are pool-wide.
//!
//! Needs `OUTPOST_TEST_POSTGRES` (`.ci/run` sets it); without it each test prints
//! `SKIP: <test>: OUTPOST_TEST_POSTGRES is not set` to stderr and returns.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use outpost_tests::faults::{
    check_batches, drain_collector, metrics_batch, stored_records, Ledger, RecordSet, SpoolWitness,
    StoredRecord,
};
use outpost_tests::fixtures::{wait_show, ENROLL_TIMEOUT, POLL};
use outpost_tests::gateway::count;
use outpost_tests::pool::{init_pool, pool_addrs, pool_port, POOL_IPS};
use outpost_tests::{now_ms, wait_for, ApplianceClient, Collector, TestDatabase, Workdir};
use serde_json::Value;

/// Bound on a failover, a fail-back, or records showing up.
const POOL_TIMEOUT: Duration = Duration::from_secs(60);

/// `current_gateway` of `appliances show --json`.
fn current_gateway(show: &Value) -> &str {
    show["current_gateway"].as_str().unwrap_or("")
}

#[test]
fn collector_fails_over_to_the_second_gateway_and_back_and_counts_match_exactly(
) -> anyhow::Result<()> {
    const TEST: &str =
        "collector_fails_over_to_the_second_gateway_and_back_and_counts_match_exactly";
    let Some(db) = TestDatabase::create_or_skip(TEST)? else {
        return Ok(());
    };
    let wd = Workdir::new("pool-failover")?;
    let port = pool_port()?;
    let [a1, a2] = pool_addrs(port);
    let (mut gw1, mut gw2) = init_pool(wd.path(), &db)?;
    gw1.start_on(a1)?;
    gw2.start_on(a2)?;
    let (p1, p2) = (a1.to_string(), a2.to_string());

    let token = gw1.token_create("acme-corp", true, None, None)?;
    let mut col = Collector::configure(&wd.join("collector"), &gw1, &token, "500ms")?;
    col.set_gateways(&[a1, a2])?;
    col.set_config("failback_probe", "2s")?;
    col.set_config("backoff_max", "1s")?;
    col.start()?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    let mut ledger = Ledger::new();
    let mut witness = SpoolWitness::new();

    // Through the primary.
    wait_show(
        &gw2,
        &id,
        "records through the primary",
        POOL_TIMEOUT,
        |v| count(v, "records") >= 2 && current_gateway(v) == p1,
    )?;
    ledger.look(&gw2, &id)?;

    // The primary stops: data flows through the second. Records collected after the stop
    // are stored, and the collector says where it is connected.
    let st = gw1.stop()?;
    assert!(st.success(), "gateway 1 exited with {st} on SIGTERM");
    let stopped_at = now_ms();
    let via_second = wait_show(
        &gw2,
        &id,
        "records collected after the primary stopped, through the second gateway",
        POOL_TIMEOUT,
        |v| current_gateway(v) == p2 && newest_collected_at(v).is_some_and(|t| t > stopped_at),
    )?;
    ledger.look(&gw2, &id)?;
    witness.look(col.state_dir())?;
    let grown_to = count(&via_second, "records");
    wait_show(
        &gw2,
        &id,
        "more records through the second",
        POOL_TIMEOUT,
        |v| count(v, "records") > grown_to + 2 && current_gateway(v) == p2,
    )?;
    eprintln!("failover to {p2}: {grown_to} records stored by then");

    // The primary is back: the collector probes it (every 2 s) and fails back.
    gw1.restart()?;
    let back = wait_show(
        &gw1,
        &id,
        "the collector to fail back to the primary",
        POOL_TIMEOUT,
        |v| current_gateway(v) == p1,
    )?;
    // Counted by the running collector since its start: the failover and the fail-back.
    assert!(
        count(&back, "reconnects") >= 2,
        "the collector reports fewer than 2 reconnects after a failover and a fail-back: {back}"
    );
    let at_failback = count(&back, "records");
    wait_show(
        &gw1,
        &id,
        "records through the primary again",
        POOL_TIMEOUT,
        |v| count(v, "records") > at_failback + 2 && current_gateway(v) == p1,
    )?;
    ledger.look(&gw1, &id)?;
    witness.look(col.state_dir())?;

    // Counts: every rid exactly once, batches contiguous, whichever gateway stored them.
    let recs = drain_collector(&mut col, &gw1, &id, &mut ledger)?;
    let set = RecordSet::check(&recs)?;
    set.require_gapless()?;
    witness.require_stored(&set)?;
    let show = check_batches(&gw2, &id, &set)?;
    assert_eq!(count(&show, "dropped_records"), 0, "{show}");
    eprintln!(
        "{} records (rids 1..={}) in {} batches, stored once across the pool",
        set.len(),
        set.max_rid,
        count(&show, "last_seq")
    );
    Ok(())
}

/// `latest_metrics_at` of a show answer in unix milliseconds.
fn newest_collected_at(show: &Value) -> Option<i64> {
    outpost_tests::faults::collected_at_ms(&show["latest_metrics_at"])
}

/// The pool's two gateways on `127.0.0.2:0` and `127.0.0.3:0` (tests that need no fixed
/// port run next to the failover test).
fn any_port_pool(
    wd: &Workdir,
    db: &TestDatabase,
) -> anyhow::Result<(outpost_tests::Gateway, outpost_tests::Gateway)> {
    let (mut gw1, mut gw2) = init_pool(wd.path(), db)?;
    gw1.start_on(SocketAddr::new(IpAddr::V4(POOL_IPS[0]), 0))?;
    gw2.start_on(SocketAddr::new(IpAddr::V4(POOL_IPS[1]), 0))?;
    Ok((gw1, gw2))
}

#[test]
fn command_queued_through_one_gateway_reaches_the_collector_on_the_other() -> anyhow::Result<()> {
    const TEST: &str = "command_queued_through_one_gateway_reaches_the_collector_on_the_other";
    let Some(db) = TestDatabase::create_or_skip(TEST)? else {
        return Ok(());
    };
    let wd = Workdir::new("pool-command")?;
    let (gw1, gw2) = any_port_pool(&wd, &db)?;
    let token = gw2.token_create("acme-corp", true, None, None)?;
    // The collector knows only the second gateway.
    let mut col = Collector::start_new(&wd.join("collector"), &gw2, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    wait_show(
        &gw1,
        &id,
        "a batch stored through gateway 2",
        POOL_TIMEOUT,
        |v| count(v, "batches") >= 1,
    )?;

    let cmd = gw1.command_send(&id, "ping")?;
    let mut last = Value::Null;
    let done = wait_for(
        "the ping queued through gateway 1 to be answered through gateway 2",
        POOL_TIMEOUT,
        POLL,
        || {
            let list = gw1.commands_json(&id)?;
            last = list.clone();
            Ok(list
                .as_array()
                .and_then(|a| a.iter().find(|c| c["id"] == cmd.as_str()))
                .filter(|c| c["state"] == "done")
                .cloned())
        },
    )
    .map_err(|e| e.context(format!("last `commands list --json` on gateway 1: {last}")))?;
    assert_eq!(done["output"], "pong", "{done}");
    // Gateway 2's view is the same.
    let seen_by_2 = gw2.commands_json(&id)?;
    assert!(
        seen_by_2.as_array().is_some_and(|a| a
            .iter()
            .any(|c| c["id"] == cmd.as_str() && c["state"] == "done")),
        "gateway 2 does not see the command done: {seen_by_2}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_approval_sequence_and_revocation_are_pool_wide() -> anyhow::Result<()> {
    const TEST: &str = "token_approval_sequence_and_revocation_are_pool_wide";
    let Some(db) = TestDatabase::create_or_skip(TEST)? else {
        return Ok(());
    };
    let wd = Workdir::new("pool-enrol")?;
    let (gw1, gw2) = tokio::task::block_in_place(|| any_port_pool(&wd, &db))?;

    // Token made through gateway 1 (no auto-approve), enrolment through gateway 2.
    let token = gw1.token_create("acme-corp", false, None, None)?;
    let mut app = ApplianceClient::new(gw2.addr(), &gw2.ca_pem()?)?;
    let r = app.enroll(&token).await?;
    assert_eq!(
        r.status,
        202,
        "enrolment through gateway 2: {}",
        r.describe()
    );
    let id = r.json()["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no id in {}", r.describe()))?;
    app.enroll_ok(&token).await?; // the retry returns the same enrolment

    // Approved through gateway 2's CLI; the certificate is fetched through gateway 1.
    gw2.approve(&id)?;
    app.set_addr(gw1.addr())?;
    app.wait_certificate(&token, ENROLL_TIMEOUT).await?;

    // Batch 1 through gateway 1, batch 2 through gateway 2, batch 1 again through 2.
    let ack = app.ingest(&metrics_batch(1, 1, 3)).await?.ack()?;
    assert_eq!(
        (ack.acked_seq, ack.duplicate),
        (1, false),
        "batch 1 via gateway 1"
    );
    app.set_addr(gw2.addr())?;
    let ack = app.ingest(&metrics_batch(2, 4, 3)).await?.ack()?;
    assert_eq!(
        (ack.acked_seq, ack.duplicate),
        (2, false),
        "batch 2 via gateway 2"
    );
    let ack = app.ingest(&metrics_batch(1, 1, 3)).await?.ack()?;
    assert_eq!(
        (ack.acked_seq, ack.duplicate),
        (2, true),
        "batch 1 resent via gateway 2 must be a duplicate"
    );
    // A gap is a gap whichever gateway sees it.
    app.set_addr(gw1.addr())?;
    let r = app.ingest(&metrics_batch(4, 10, 1)).await?;
    assert_eq!(r.status, 409, "{}", r.describe());
    assert_eq!(r.json()["expected_seq"], 3, "{}", r.describe());

    let recs: Vec<StoredRecord> = tokio::task::block_in_place(|| stored_records(&gw2, &id))?;
    let set = RecordSet::check(&recs)?;
    set.require_gapless()?;
    assert_eq!(set.len(), 6, "records stored across the pool: {recs:?}");
    tokio::task::block_in_place(|| check_batches(&gw1, &id, &set))?;

    // Revoked through gateway 1: gateway 2 refuses the very next request.
    gw1.revoke(&id)?;
    app.set_addr(gw2.addr())?;
    let r = app.ingest(&metrics_batch(3, 7, 1)).await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("appliance_revoked"),
        "{}",
        r.describe()
    );
    Ok(())
}

/// Batches the race test sends through both gateways at once.
const RACED_BATCHES: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_batch_sent_through_both_gateways_at_once_is_stored_once_and_acked_once(
) -> anyhow::Result<()> {
    const TEST: &str =
        "same_batch_sent_through_both_gateways_at_once_is_stored_once_and_acked_once";
    let Some(db) = TestDatabase::create_or_skip(TEST)? else {
        return Ok(());
    };
    let wd = Workdir::new("pool-race")?;
    let (gw1, gw2) = tokio::task::block_in_place(|| any_port_pool(&wd, &db))?;
    let ca = gw1.ca_pem()?;
    let app1 = outpost_tests::fixtures::approved_appliance(&gw1, "acme-corp").await?;
    let id = app1.id().expect("enrolled").to_string();
    // The same appliance (key and certificate) on a connection to the other gateway.
    let key = rcgen::KeyPair::from_pem(&app1.key().serialize_pem())?;
    let cert = app1.cert_pem().expect("certificate").to_string();
    let app2 = ApplianceClient::with_identity(
        gw2.addr(),
        &ca,
        key,
        &cert,
        outpost_tests::client::TLS13_ONLY,
    )?;

    // A collector that retries on the second gateway while the first is still storing:
    // the same batch arrives through both at the same moment, every time.
    let mut problems = Vec::new();
    for seq in 1..=RACED_BATCHES {
        let batch = metrics_batch(seq, (seq - 1) * 10 + 1, 10);
        let (r1, r2) = tokio::join!(app1.ingest(&batch), app2.ingest(&batch));
        let mut fresh = 0;
        for (via, r) in [("gateway 1", r1?), ("gateway 2", r2?)] {
            match r.ack() {
                Ok(ack) if ack.acked_seq == seq => fresh += usize::from(!ack.duplicate),
                Ok(ack) => {
                    problems.push(format!("seq {seq} via {via}: acked_seq {}", ack.acked_seq))
                }
                Err(e) => problems.push(format!("seq {seq} via {via}: {e:#}")),
            }
        }
        if fresh != 1 {
            problems.push(format!(
                "seq {seq}: {fresh} answers said \"stored\" (exactly one must, the other \"duplicate\")"
            ));
        }
    }
    let recs = tokio::task::block_in_place(|| stored_records(&gw1, &id))?;
    let set = RecordSet::check(&recs)?;
    set.require_gapless()?;
    assert_eq!(set.len() as u64, RACED_BATCHES * 10, "records stored");
    tokio::task::block_in_place(|| check_batches(&gw2, &id, &set))?;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
