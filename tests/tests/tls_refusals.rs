//! Who may talk on the one port, proved with real TLS clients: no client certificate on an
//! mTLS route is 401; a certificate from another CA or TLS 1.2 fails the connection; a
//! certificate signed by the real CA for a key the store does not hold, a pending appliance,
//! or a revoked one get 403 and nothing is stored.

use outpost_proto::paths;
use outpost_tests::client::{sample_batch, TLS12_ONLY, TLS13_ONLY};
use outpost_tests::fixtures::approved_appliance;
use outpost_tests::gateway::count;
use outpost_tests::pki::{new_key, sign_with_gateway_ca, ThrowawayCa};
use outpost_tests::{ApplianceClient, Gateway, HttpReply, Workdir};

/// The request must fail below HTTP (handshake refused), not get any status.
fn assert_connection_refused(what: &str, r: anyhow::Result<HttpReply>) {
    match r {
        Err(e) => eprintln!("{what}: refused as expected: {e:#}"),
        Ok(reply) => panic!("{what}: got an HTTP answer: {}", reply.describe()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_a_tls13_client_without_a_certificate() -> anyhow::Result<()> {
    let wd = Workdir::new("tls-health")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    let r = app.get_without_cert(paths::HEALTH).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_routes_without_a_client_certificate_get_401() -> anyhow::Result<()> {
    let wd = Workdir::new("tls-nocert")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;

    let batch = serde_json::to_vec(&sample_batch(1, true, "nocert"))?;
    let replies = [
        (
            "POST /v1/ingest",
            app.post_without_cert(
                paths::INGEST,
                zstd::encode_all(&batch[..], 3)?,
                Some("zstd"),
            )
            .await?,
        ),
        (
            "GET /v1/commands",
            app.get_without_cert(&format!("{}?wait=1s", paths::COMMANDS))
                .await?,
        ),
        ("GET /v1/config", app.get_without_cert(paths::CONFIG).await?),
        (
            "POST /v1/commands/{id}/result",
            app.post_without_cert(
                &paths::command_result("cmd-x"),
                br#"{"ok":true,"output":"pong"}"#.to_vec(),
                None,
            )
            .await?,
        ),
    ];
    for (route, r) in replies {
        assert_eq!(r.status, 401, "{route}: {}", r.describe());
        assert_eq!(
            r.error_code().as_deref(),
            Some("client_certificate_required"),
            "{route}: {}",
            r.describe()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_fails_the_connection() -> anyhow::Result<()> {
    let wd = Workdir::new("tls-otherca")?;
    let mut gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let other = ThrowawayCa::new("Some Other CA")?;
    let key = new_key()?;
    let cert = other.sign(&key, "impostor")?;
    let app = ApplianceClient::with_identity(gw.addr(), &gw.ca_pem()?, key, &cert, TLS13_ONLY)?;

    let r = app.ingest(&sample_batch(1, true, "impostor")).await;
    assert_connection_refused("ingest with another CA's certificate", r);
    let r = app.get(paths::CONFIG).await;
    assert_connection_refused("config with another CA's certificate", r);
    assert_eq!(gw.list_json()?.as_array().map(Vec::len), Some(0));
    assert!(
        gw.is_running()?,
        "the gateway died on a bad client certificate"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_client_cannot_connect() -> anyhow::Result<()> {
    let wd = Workdir::new("tls-12")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let ca = gw.ca_pem()?;
    let old = ApplianceClient::with_key(gw.addr(), &ca, new_key()?, TLS12_ONLY)?;
    let r = old.get_without_cert(paths::HEALTH).await;
    assert_connection_refused("a TLS 1.2-only client", r);
    // Same route, same CA, TLS 1.3: answered (so the refusal above is the version's doing).
    let new = ApplianceClient::new(gw.addr(), &ca)?;
    assert_eq!(new.get_without_cert(paths::HEALTH).await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_the_real_ca_for_an_unknown_key_gets_403() -> anyhow::Result<()> {
    let wd = Workdir::new("tls-unknown")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let key = new_key()?;
    let cert = sign_with_gateway_ca(gw.dir(), &key, "forged-appliance")?;
    let app = ApplianceClient::with_identity(gw.addr(), &gw.ca_pem()?, key, &cert, TLS13_ONLY)?;

    let r = app.ingest(&sample_batch(1, true, "forged")).await?;
    assert_eq!(r.status, 403, "ingest: {}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("appliance_unknown"),
        "ingest: {}",
        r.describe()
    );
    let r = app.get(paths::CONFIG).await?;
    assert_eq!(r.status, 403, "config: {}", r.describe());
    let r = app.get(&format!("{}?wait=1s", paths::COMMANDS)).await?;
    assert_eq!(r.status, 403, "commands: {}", r.describe());
    assert_eq!(
        gw.list_json()?.as_array().map(Vec::len),
        Some(0),
        "an unknown certificate created an appliance"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_appliance_key_with_a_forged_certificate_gets_403() -> anyhow::Result<()> {
    let wd = Workdir::new("tls-pending")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let ca = gw.ca_pem()?;
    let token = gw.token_create("acme-corp", false, None, None)?;
    let mut pending = ApplianceClient::new(gw.addr(), &ca)?;
    let resp = pending.enroll_ok(&token).await?;

    // Same key, a certificate made with the CA key behind the gateway's back.
    let cert = sign_with_gateway_ca(gw.dir(), pending.key(), pending.hostname())?;
    pending.use_certificate(&cert)?;
    let r = pending.ingest(&sample_batch(1, true, "pending")).await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    let code = r.error_code().unwrap_or_default();
    assert!(
        code == "appliance_pending" || code == "appliance_unknown",
        "expected appliance_pending or appliance_unknown: {}",
        r.describe()
    );
    let v = gw.show_json(&resp.id)?;
    assert_eq!(v["state"], "pending");
    assert_eq!(
        count(&v, "batches"),
        0,
        "a pending appliance's batch was stored: {v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_appliance_gets_403_on_its_next_request_and_nothing_is_stored() -> anyhow::Result<()>
{
    let wd = Workdir::new("tls-revoked")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = app.id().expect("enrolled").to_string();
    let ack = app
        .ingest(&sample_batch(1, true, app.hostname()))
        .await?
        .ack()?;
    assert_eq!(ack.acked_seq, 1);

    gw.revoke(&id)?;
    // Same client, possibly the same pooled TLS connection: refused from the next request.
    let r = app.ingest(&sample_batch(2, false, app.hostname())).await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(
        r.error_code().as_deref(),
        Some("appliance_revoked"),
        "{}",
        r.describe()
    );
    let r = app.get(paths::CONFIG).await?;
    assert_eq!(r.status, 403, "config after revocation: {}", r.describe());

    let v = gw.show_json(&id)?;
    assert_eq!(v["state"], "revoked", "{v}");
    assert_eq!(
        count(&v, "batches"),
        1,
        "a revoked appliance's batch was stored: {v}"
    );
    assert_eq!(count(&v, "last_seq"), 1, "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_the_gateway_did_not_issue_gets_403_even_for_an_approved_key(
) -> anyhow::Result<()> {
    let wd = Workdir::new("tls-notissued")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let mut app = approved_appliance(&gw, "acme-corp").await?;
    let id = app.id().expect("enrolled").to_string();
    let issued = app.cert_pem().expect("certificate fetched").to_string();

    // The approved key, but a certificate minted with the CA key outside the gateway.
    let forged = sign_with_gateway_ca(gw.dir(), app.key(), app.hostname())?;
    app.use_certificate(&forged)?;
    let r = app.ingest(&sample_batch(1, true, app.hostname())).await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(count(&gw.show_json(&id)?, "batches"), 0);

    // The issued certificate still works.
    app.use_certificate(&issued)?;
    let ack = app
        .ingest(&sample_batch(1, true, app.hostname()))
        .await?
        .ack()?;
    assert_eq!(ack.acked_seq, 1);
    Ok(())
}
