//! `POST /v1/ingest` with a real approved appliance key: batches are acknowledged in
//! sequence and stored once; bad input (malformed JSON, bad zstd, oversized bodies,
//! sequence gaps) is refused with the contract's status, stores nothing, and the gateway
//! keeps serving valid batches afterwards.

use outpost_proto::IngestBatch;
use outpost_tests::client::sample_batch;
use outpost_tests::fixtures::approved_appliance;
use outpost_tests::gateway::count;
use outpost_tests::{ApplianceClient, Gateway, Workdir};

/// `(batches, records, last_seq)` from `appliances show`.
fn stored(gw: &Gateway, id: &str) -> anyhow::Result<(u64, u64, u64)> {
    let v = gw.show_json(id)?;
    Ok((
        count(&v, "batches"),
        count(&v, "records"),
        count(&v, "last_seq"),
    ))
}

fn id_of(app: &ApplianceClient) -> String {
    app.id().expect("enrolled").to_string()
}

/// Sends `batch` and expects a fresh (non-duplicate) ack of its seq.
async fn send_ok(app: &ApplianceClient, batch: &IngestBatch) -> anyhow::Result<()> {
    let ack = app.ingest(batch).await?.ack()?;
    assert_eq!(ack.acked_seq, batch.seq, "ack of seq {}", batch.seq);
    assert!(!ack.duplicate, "seq {} acked as a duplicate", batch.seq);
    Ok(())
}

/// Bytes that zstd cannot shrink (xorshift), so the compressed size is what is sent.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_batches_are_acked_in_sequence_and_counted() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-ok")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);
    assert_eq!(stored(&gw, &id)?, (0, 0, 0));

    send_ok(&app, &sample_batch(1, true, app.hostname())).await?;
    send_ok(&app, &sample_batch(2, false, app.hostname())).await?;

    let v = gw.show_json(&id)?;
    assert_eq!(count(&v, "batches"), 2, "{v}");
    assert_eq!(count(&v, "records"), 3, "{v}");
    assert_eq!(count(&v, "last_seq"), 2, "{v}");
    assert_eq!(v["inventory"]["hostname"], app.hostname(), "{v}");
    assert_eq!(
        v["latest_metrics"]["uptime_secs"], 1002,
        "latest metrics are not seq 2's: {v}"
    );
    assert!(v["inventory_at"].is_string(), "{v}");
    assert!(v["last_seen"].is_string(), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_batch_is_acked_as_duplicate_and_stored_once() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-dup")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    let first = sample_batch(1, true, app.hostname());
    send_ok(&app, &first).await?;
    let ack = app.ingest(&first).await?.ack()?;
    assert_eq!(ack.acked_seq, 1);
    assert!(ack.duplicate, "a resent seq 1 was not flagged duplicate");
    assert_eq!(
        stored(&gw, &id)?,
        (1, 2, 1),
        "the duplicate was stored again"
    );

    send_ok(&app, &sample_batch(2, false, app.hostname())).await?;
    // An older seq is a duplicate too; the ack carries the highest stored seq.
    let ack = app.ingest(&first).await?.ack()?;
    assert!(ack.duplicate);
    assert_eq!(ack.acked_seq, 2, "ack should carry the highest stored seq");
    assert_eq!(stored(&gw, &id)?, (2, 3, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_from_the_future_is_refused_with_the_expected_seq() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-gap")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    send_ok(&app, &sample_batch(1, true, app.hostname())).await?;
    let r = app.ingest(&sample_batch(3, false, app.hostname())).await?;
    assert_eq!(r.status, 409, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("sequence_gap"),
        "{}",
        r.describe()
    );
    assert_eq!(r.json()["expected_seq"], 2, "{}", r.describe());
    assert_eq!(
        stored(&gw, &id)?,
        (1, 2, 1),
        "the out-of-sequence batch was stored"
    );

    send_ok(&app, &sample_batch(2, false, app.hostname())).await?;
    assert_eq!(stored(&gw, &id)?, (2, 3, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_refused_and_stores_nothing() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-badjson")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    let body = zstd::encode_all(&b"{not json"[..], 3)?;
    let r = app.ingest_raw(body, Some("zstd")).await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("bad_json"),
        "{}",
        r.describe()
    );

    // Well-formed JSON that is not a batch (unknown field) is refused too.
    let body = zstd::encode_all(&br#"{"seq":1,"records":[],"extra":true}"#[..], 3)?;
    let r = app.ingest_raw(body, Some("zstd")).await?;
    assert_eq!(
        r.status,
        400,
        "batch with an unknown field: {}",
        r.describe()
    );

    assert_eq!(stored(&gw, &id)?, (0, 0, 0));
    send_ok(&app, &sample_batch(1, true, app.hostname())).await?;
    assert_eq!(stored(&gw, &id)?, (1, 2, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_zstd_is_refused_and_stores_nothing() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-badzstd")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    let r = app
        .ingest_raw(b"this is not a zstd frame at all".to_vec(), Some("zstd"))
        .await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("bad_encoding"),
        "{}",
        r.describe()
    );

    assert_eq!(stored(&gw, &id)?, (0, 0, 0));
    send_ok(&app, &sample_batch(1, true, app.hostname())).await?;
    assert_eq!(stored(&gw, &id)?, (1, 2, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_is_refused_with_413() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-cap")?;
    let mut gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_config("max_body_bytes", 65_536)?;
    gw.start()?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    let r = app
        .ingest_raw(incompressible(100 * 1024), Some("zstd"))
        .await?;
    assert_eq!(r.status, 413, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("body_too_large"),
        "{}",
        r.describe()
    );

    assert_eq!(stored(&gw, &id)?, (0, 0, 0));
    send_ok(&app, &sample_batch(1, true, app.hostname())).await?;
    assert_eq!(stored(&gw, &id)?, (1, 2, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bomb_over_max_decompressed_bytes_is_refused() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-bomb")?;
    let mut gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    // The gateway requires max_decompressed_bytes >= max_body_bytes.
    gw.set_config("max_body_bytes", 65_536)?;
    gw.set_config("max_decompressed_bytes", 1_048_576)?;
    gw.start()?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    // 8 MiB of spaces compress to a few hundred bytes: small on the wire, big inside.
    let bomb = zstd::encode_all(&vec![b' '; 8 * 1024 * 1024][..], 3)?;
    assert!(bomb.len() < 65_536);
    let r = app.ingest_raw(bomb, Some("zstd")).await?;
    assert_eq!(r.status, 413, "{}", r.describe());
    assert!(
        r.error_code().is_some(),
        "error body without a code: {}",
        r.describe()
    );

    assert_eq!(stored(&gw, &id)?, (0, 0, 0));
    send_ok(&app, &sample_batch(1, true, app.hostname())).await?;
    assert_eq!(stored(&gw, &id)?, (1, 2, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_inventory_record_replaces_inventory_and_moves_inventory_at() -> anyhow::Result<()> {
    // Guards the lifecycle tests, which read "inventory_at did not move" as "not resent".
    let wd = Workdir::new("ingest-inventory")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    send_ok(&app, &sample_batch(1, true, "first-name")).await?;
    let first = gw.show_json(&id)?;
    send_ok(&app, &sample_batch(2, false, "ignored")).await?;
    let metrics_only = gw.show_json(&id)?;
    assert_eq!(
        metrics_only["inventory_at"], first["inventory_at"],
        "a metrics-only batch moved inventory_at"
    );

    // inventory_at is RFC 3339 to the second: let a second pass.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    send_ok(&app, &sample_batch(3, true, "second-name")).await?;
    let second = gw.show_json(&id)?;
    assert_eq!(second["inventory"]["hostname"], "second-name", "{second}");
    assert_ne!(
        second["inventory_at"], first["inventory_at"],
        "a new inventory record did not move inventory_at"
    );
    Ok(())
}

/// `appliances records --json` as `(rid, seq, kind)`.
fn records(gw: &Gateway, id: &str, extra: &[&str]) -> anyhow::Result<Vec<(u64, u64, String)>> {
    let mut args = vec!["appliances", "records", id, "--json"];
    args.extend_from_slice(extra);
    let out = gw.cli_ok(&args)?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["rid"].as_u64().unwrap_or(0),
                        r["seq"].as_u64().unwrap_or(0),
                        r["kind"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_listed_by_record_id_and_a_known_id_is_stored_once() -> anyhow::Result<()> {
    let wd = Workdir::new("ingest-rids")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    send_ok(&app, &sample_batch(1, true, app.hostname())).await?; // rids 11, 12
    send_ok(&app, &sample_batch(2, false, app.hostname())).await?; // rid 21
    assert_eq!(
        records(&gw, &id, &[])?,
        vec![
            (11, 1, "inventory".to_string()),
            (12, 1, "metrics".to_string()),
            (21, 2, "metrics".to_string()),
        ]
    );
    assert_eq!(
        records(&gw, &id, &["--kind", "metrics", "--limit", "1"])?,
        vec![(12, 1, "metrics".to_string())]
    );

    // Batch 3 carries record 21 again (a resend under a new sequence) and record 31: the
    // known id is skipped, the rest stored, and the ack names the highest record id.
    let mut third = sample_batch(3, false, app.hostname());
    let mut again = sample_batch(2, false, app.hostname()).records;
    again.extend(third.records.drain(..).map(|mut e| {
        e.rid = 31;
        e
    }));
    third.records = again;
    let ack = app.ingest(&third).await?.ack()?;
    assert_eq!((ack.acked_seq, ack.duplicate, ack.last_rid), (3, false, 31));
    let rids: Vec<u64> = records(&gw, &id, &[])?.iter().map(|r| r.0).collect();
    assert_eq!(rids, [11, 12, 21, 31], "record 21 stored twice or 31 lost");
    assert_eq!(stored(&gw, &id)?, (3, 4, 3));

    // Record ids that do not increase are refused and store nothing.
    let mut bad = sample_batch(4, true, app.hostname());
    bad.records[1].rid = 40; // after 41
    let r = app.ingest(&bad).await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("bad_rid"),
        "{}",
        r.describe()
    );
    assert_eq!(stored(&gw, &id)?, (3, 4, 3));

    let unknown = gw.cli(&["appliances", "records", "ap-does-not-exist", "--json"])?;
    assert_eq!(unknown.code(), Some(4), "{}", unknown.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_reports_the_collectors_self_metrics() -> anyhow::Result<()> {
    use outpost_proto::{AgentMetrics, Envelope, Record};
    let wd = Workdir::new("ingest-agent")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = id_of(&app);

    let before = gw.show_json(&id)?;
    assert_eq!(count(&before, "dropped_records"), 0, "{before}");
    assert_eq!(count(&before, "spool_corrupt_records"), 0, "{before}");
    assert!(before["current_gateway"].is_null(), "{before}");

    let mut batch = sample_batch(1, false, app.hostname());
    batch.records.push(Envelope {
        rid: 19,
        record: Record::Agent {
            collected_at_ms: outpost_tests::now_ms(),
            agent: AgentMetrics {
                current_gateway: "127.0.0.2:5723".into(),
                reconnects: 3,
                spool_depth: 4,
                spool_bytes: 8192,
                dropped_records: 17,
                spool_corrupt_records: 2,
                send_latency_ms: Some(12),
            },
        },
    });
    send_ok(&app, &batch).await?;
    let v = gw.show_json(&id)?;
    assert_eq!(v["current_gateway"], "127.0.0.2:5723", "{v}");
    for (key, want) in [
        ("reconnects", 3),
        ("spool_depth", 4),
        ("spool_bytes", 8192),
        ("send_latency_ms", 12),
        ("dropped_records", 17),
        ("spool_corrupt_records", 2),
        ("last_rid", 19),
    ] {
        assert_eq!(count(&v, key), want, "{key}: {v}");
    }
    let text = gw.cli_ok(&["appliances", "show", &id])?;
    for key in [
        "dropped_records",
        "spool_corrupt_records",
        "current_gateway",
        "send_latency_ms",
    ] {
        assert!(
            text.contains(key),
            "{key} missing from the text form:\n{text}"
        );
    }
    Ok(())
}
