//! Restarts: a collector keeps its identity and does not resend unchanged inventory across a
//! restart or a SIGKILL; a gateway keeps approvals and data across a restart.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use outpost_tests::client::sample_batch;
use outpost_tests::collector::collector_cli;
use outpost_tests::fixtures::{approved_appliance, wait_show, COLLECTOR_TIMEOUT, ENROLL_TIMEOUT};
use outpost_tests::gateway::count;
use outpost_tests::{Collector, Gateway, Workdir};
use serde_json::Value;

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

fn read_id(state_dir: &Path) -> anyhow::Result<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(state_dir.join("enrollment.json"))?)?;
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

/// Ids in `appliances list --json`.
fn listed_ids(gw: &Gateway) -> anyhow::Result<Vec<String>> {
    let list = gw.list_json()?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn collector_restart_keeps_its_identity_and_does_not_resend_unchanged_inventory(
) -> anyhow::Result<()> {
    let wd = Workdir::new("col-restart")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", true, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    let first = wait_show(
        &gw,
        &id,
        "inventory and 2 batches",
        COLLECTOR_TIMEOUT,
        |v| !v["inventory"].is_null() && count(v, "batches") >= 2,
    )?;
    let inventory_at = first["inventory_at"].clone();
    assert!(inventory_at.is_string(), "{first}");

    let state = col.state_dir().to_path_buf();
    for f in ["key.pem", "cert.pem"] {
        assert_eq!(mode(&state.join(f))?, 0o600, "{f} must be mode 0600");
    }
    let key_before = std::fs::read(state.join("key.pem"))?;
    let cert_before = std::fs::read(state.join("cert.pem"))?;

    let st = col.stop()?;
    assert!(
        st.success(),
        "collector exited with {st} on SIGTERM (a normal stop)"
    );
    let stopped = gw.show_json(&id)?;
    col.start()?;
    let after = wait_show(
        &gw,
        &id,
        "3 more batches after the collector restart",
        COLLECTOR_TIMEOUT,
        |v| count(v, "batches") >= count(&stopped, "batches") + 3,
    )?;

    assert_eq!(
        listed_ids(&gw)?,
        vec![id.clone()],
        "the restart enrolled a second appliance"
    );
    assert_eq!(read_id(&state)?, id, "enrollment.json changed");
    assert_eq!(
        std::fs::read(state.join("key.pem"))?,
        key_before,
        "key.pem was replaced"
    );
    assert_eq!(
        std::fs::read(state.join("cert.pem"))?,
        cert_before,
        "cert.pem was replaced"
    );
    assert_eq!(
        after["inventory_at"],
        inventory_at,
        "unchanged inventory was sent again (inventory_at moved) over {} batches",
        count(&after, "batches")
    );
    assert_eq!(after["state"], "approved");
    assert_eq!(
        count(&after, "last_seq"),
        count(&after, "batches"),
        "{after}"
    );
    Ok(())
}

#[test]
fn collector_killed_with_sigkill_resumes_sending() -> anyhow::Result<()> {
    let wd = Workdir::new("col-kill9")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", true, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    wait_show(&gw, &id, "2 batches", COLLECTOR_TIMEOUT, |v| {
        count(v, "batches") >= 2
    })?;

    col.kill9()?;
    let killed = gw.show_json(&id)?;
    col.start()?;
    let after = wait_show(
        &gw,
        &id,
        "3 more batches after SIGKILL and restart",
        COLLECTOR_TIMEOUT,
        |v| count(v, "batches") >= count(&killed, "batches") + 3,
    )?;
    assert!(col.is_running()?, "the collector exited after restarting");
    assert_eq!(
        listed_ids(&gw)?,
        vec![id],
        "the restart enrolled a second appliance"
    );
    // Every sequence number stored once and none skipped.
    assert_eq!(
        count(&after, "last_seq"),
        count(&after, "batches"),
        "{after}"
    );
    assert_eq!(
        after["inventory_at"], killed["inventory_at"],
        "unchanged inventory was resent after SIGKILL"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_keeps_approvals_and_data() -> anyhow::Result<()> {
    let wd = Workdir::new("gw-restart")?;
    let mut gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", true, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let col_id = col.enrollment_id(ENROLL_TIMEOUT)?;
    wait_show(&gw, &col_id, "2 batches", COLLECTOR_TIMEOUT, |v| {
        count(v, "batches") >= 2
    })?;
    let mut app = approved_appliance(&gw, "other-customer").await?;
    let app_id = app.id().expect("enrolled").to_string();
    assert_eq!(
        app.ingest(&sample_batch(1, true, app.hostname()))
            .await?
            .ack()?
            .acked_seq,
        1
    );

    col.stop()?;
    let before = gw.show_json(&col_id)?;
    let st = gw.stop()?;
    assert!(
        st.success(),
        "gateway exited with {st} on SIGTERM; the contract says 0"
    );

    // The store answers the CLI while the server is down.
    let offline = gw.show_json(&col_id)?;
    assert_eq!(
        count(&offline, "batches"),
        count(&before, "batches"),
        "{offline}"
    );

    let new_addr = gw.start()?;

    // The approved certificate still works and the sequence carries on.
    app.set_addr(new_addr)?;
    let ack = app
        .ingest(&sample_batch(2, false, app.hostname()))
        .await?
        .ack()?;
    assert_eq!(ack.acked_seq, 2);
    assert!(!ack.duplicate);
    let dup = app
        .ingest(&sample_batch(1, true, app.hostname()))
        .await?
        .ack()?;
    assert!(
        dup.duplicate,
        "seq 1 stored before the restart was not recognised as a duplicate"
    );

    // The collector, pointed at the new port, carries on without re-enrolling.
    col.set_gateways(&[new_addr])?;
    col.start()?;
    let after = wait_show(
        &gw,
        &col_id,
        "2 more batches after the gateway restart",
        COLLECTOR_TIMEOUT,
        |v| count(v, "batches") >= count(&before, "batches") + 2,
    )?;
    assert_eq!(after["state"], "approved");
    let mut ids = listed_ids(&gw)?;
    ids.sort();
    let mut expected = vec![col_id.clone(), app_id.clone()];
    expected.sort();
    assert_eq!(ids, expected, "appliances changed across the restart");
    assert_eq!(gw.show_json(&app_id)?["state"], "approved");
    Ok(())
}

#[test]
fn collector_status_reports_its_id_and_acked_sequence() -> anyhow::Result<()> {
    let wd = Workdir::new("col-status")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", true, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    wait_show(&gw, &id, "2 batches", COLLECTOR_TIMEOUT, |v| {
        count(v, "batches") >= 2
    })?;
    col.stop()?;
    let at_gateway = count(&gw.show_json(&id)?, "last_seq");

    let config = col.config_path();
    let out = collector_cli(&["status", "--json", "--config", &config.to_string_lossy()])?;
    assert!(out.success(), "status failed: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(v["id"], id.as_str(), "{v}");
    let acked = v["last_acked_seq"].as_u64().unwrap_or(0);
    assert!(
        acked >= 2 && acked <= at_gateway,
        "last_acked_seq {acked} should be in 2..={at_gateway}: {v}"
    );
    Ok(())
}
