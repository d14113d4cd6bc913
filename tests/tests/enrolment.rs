//! Enrolment end to end: a collector (or a test appliance) posts a CSR with a bootstrap
//! token, waits in `pending` until approved (or is approved by an auto-approve token), gets
//! its certificate, and its data appears at the gateway. Token rules: expiry, uses, unknown,
//! and idempotent re-posting.

use std::time::Duration;

use outpost_proto::ApplianceState;
use outpost_tests::fixtures::{wait_show, COLLECTOR_TIMEOUT, ENROLL_TIMEOUT};
use outpost_tests::gateway::count;
use outpost_tests::pki::new_key;
use outpost_tests::{ApplianceClient, Collector, Gateway, Workdir};
use rcgen::PublicKeyData;

#[test]
fn collector_waits_pending_until_approved_then_delivers_inventory_and_metrics() -> anyhow::Result<()>
{
    let wd = Workdir::new("enrol-approve")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", false, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    assert!(
        id.starts_with("ap-"),
        "appliance id {id:?} should start with ap-"
    );

    let list = gw.list_json()?;
    let arr = list.as_array().expect("appliances list --json is an array");
    assert_eq!(arr.len(), 1, "exactly one appliance enrolled: {list}");
    assert_eq!(arr[0]["id"], id.as_str());
    assert_eq!(arr[0]["state"], "pending");
    assert_eq!(arr[0]["customer"], "acme-corp");

    // While pending the collector gets no certificate and nothing is stored.
    std::thread::sleep(Duration::from_secs(3));
    let show = gw.show_json(&id)?;
    assert_eq!(show["state"], "pending", "{show}");
    assert_eq!(
        count(&show, "batches"),
        0,
        "a pending appliance stored data: {show}"
    );
    assert!(
        !col.state_dir().join("cert.pem").exists(),
        "the collector holds a certificate before approval"
    );

    gw.approve(&id)?;
    let show = wait_show(
        &gw,
        &id,
        "inventory, latest metrics and at least 2 batches after approval",
        COLLECTOR_TIMEOUT,
        |v| !v["inventory"].is_null() && !v["latest_metrics"].is_null() && count(v, "batches") >= 2,
    )?;
    assert_eq!(show["state"], "approved");
    let hostname = show["inventory"]["hostname"].as_str().unwrap_or_default();
    assert!(!hostname.is_empty(), "inventory.hostname is empty: {show}");
    assert!(show["last_seen"].is_string(), "last_seen not set: {show}");
    assert!(
        show["approved_at"].is_string(),
        "approved_at not set: {show}"
    );
    assert!(
        show["cert_serial"].as_str().is_some_and(|s| !s.is_empty()),
        "cert_serial not set: {show}"
    );
    assert!(
        show["last_seq"].as_u64().unwrap_or(0) >= 2,
        "last_seq: {show}"
    );
    assert!(
        col.state_dir().join("cert.pem").is_file(),
        "cert.pem missing after approval"
    );
    Ok(())
}

#[test]
fn auto_approve_token_enrols_without_an_operator() -> anyhow::Result<()> {
    let wd = Workdir::new("enrol-auto")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("auto-customer", true, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    let show = wait_show(
        &gw,
        &id,
        "the auto-approved collector to store a batch",
        COLLECTOR_TIMEOUT,
        |v| count(v, "batches") >= 1,
    )?;
    assert_eq!(show["state"], "approved", "{show}");
    assert_eq!(show["customer"], "auto-customer", "{show}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_enrolment_gets_no_certificate_until_approved() -> anyhow::Result<()> {
    let wd = Workdir::new("enrol-pending")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", false, None, None)?;
    let mut app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;

    let resp = app.enroll_ok(&token).await?;
    assert_eq!(resp.state, ApplianceState::Pending);
    assert!(
        resp.certificate_pem.is_none(),
        "pending enrolment came with a certificate"
    );

    let r = app.enrollment_status(&resp.id, &token).await?;
    // The contract leaves the success status open; 202 Accepted fits a pending enrolment.
    assert!(r.status == 200 || r.status == 202, "{}", r.describe());
    let body = r.json();
    assert_eq!(body["id"], resp.id.as_str());
    assert_eq!(body["state"], "pending", "{body}");
    assert!(
        body.get("certificate_pem")
            .is_none_or(serde_json::Value::is_null),
        "pending status carries a certificate: {body}"
    );

    gw.approve(&resp.id)?;
    let r = app.enrollment_status(&resp.id, &token).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    let body = r.json();
    assert_eq!(body["state"], "approved", "{body}");
    let cert_pem = body["certificate_pem"]
        .as_str()
        .expect("approved status carries certificate_pem");
    assert_eq!(
        body["ca_pem"].as_str().map(str::trim),
        Some(gw.ca_pem()?.trim()),
        "ca_pem is not the gateway's CA"
    );
    let der = pem::parse(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents())?;
    assert_eq!(
        cert.public_key().raw,
        app.key().subject_public_key_info().as_slice(),
        "the certificate is not for the key that made the CSR"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reposting_the_same_key_with_the_same_token_returns_the_same_id_and_uses_nothing(
) -> anyhow::Result<()> {
    let wd = Workdir::new("enrol-idem")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let ca = gw.ca_pem()?;
    let token = gw.token_create("acme-corp", false, None, Some(2))?;

    let mut a = ApplianceClient::new(gw.addr(), &ca)?;
    let first = a.enroll_ok(&token).await?;
    let again = a.enroll_ok(&token).await?;
    assert_eq!(
        first.id, again.id,
        "re-posting the same key made a second appliance"
    );

    // Two uses: the re-post consumed none, so a second key still enrols, and a third does not.
    let mut b = ApplianceClient::new(gw.addr(), &ca)?;
    let second = b.enroll_ok(&token).await?;
    assert_ne!(second.id, first.id);
    let c = ApplianceClient::new(gw.addr(), &ca)?;
    let r = c.enroll(&token).await?;
    assert_eq!(
        r.status,
        403,
        "third key with a 2-use token: {}",
        r.describe()
    );
    assert_eq!(
        r.error_code().as_deref(),
        Some("token_used_up"),
        "{}",
        r.describe()
    );

    let list = gw.list_json()?;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() -> anyhow::Result<()> {
    let wd = Workdir::new("enrol-expired")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", true, Some("1s"), None)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    let r = app.enroll(&token).await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("token_expired"),
        "{}",
        r.describe()
    );
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_up_token_is_refused_for_a_second_key() -> anyhow::Result<()> {
    let wd = Workdir::new("enrol-usedup")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let ca = gw.ca_pem()?;
    let token = gw.token_create("acme-corp", false, None, Some(1))?;
    let mut first = ApplianceClient::new(gw.addr(), &ca)?;
    first.enroll_ok(&token).await?;
    let second = ApplianceClient::with_key(
        gw.addr(),
        &ca,
        new_key()?,
        outpost_tests::client::TLS13_ONLY,
    )?;
    let r = second.enroll(&token).await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("token_used_up"),
        "{}",
        r.describe()
    );
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_is_refused() -> anyhow::Result<()> {
    let wd = Workdir::new("enrol-unknown")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    let r = app.enroll("not-a-token-the-gateway-made").await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("token_unknown"),
        "{}",
        r.describe()
    );
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_without_a_token_is_refused() -> anyhow::Result<()> {
    let wd = Workdir::new("enrol-notoken")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    let r = app.enroll_with_csr(None, &app.csr_pem()?).await?;
    assert!(
        r.status == 401 || r.status == 403,
        "enrolment without a token should be 401/403: {}",
        r.describe()
    );
    assert!(
        r.error_code().is_some(),
        "error body without a code: {}",
        r.describe()
    );
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(0));
    Ok(())
}
