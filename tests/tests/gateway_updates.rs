//! Issue 5 at the gateway, against the real `outpost-gateway` on loopback with real
//! certificates: the feed route (full, Range, HEAD, refusals), maintenance windows and the
//! explicit restart reaching the updater's own command queue (and not the collector's), and
//! the updater's state shown by `appliances show`.
//!
//! The windows test runs on SQLite, and on PostgreSQL when `OUTPOST_TEST_POSTGRES` is set
//! (otherwise it prints `SKIP: <test>: OUTPOST_TEST_POSTGRES is not set`).

use std::path::Path;

use outpost_proto::update::{UpdateState, WindowSpec};
use outpost_proto::{paths, CommandList};
use outpost_tests::client::{http_client, TLS13_ONLY};
use outpost_tests::fixtures::{approved_appliance, ENROLL_TIMEOUT};
use outpost_tests::pki::sign_with_gateway_ca;
use outpost_tests::{tls_config, ApplianceClient, Gateway, TestDatabase, Workdir};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use serde_json::{json, Value};

/// A status, the headers that matter here, and the body.
struct Reply {
    status: u16,
    content_range: Option<String>,
    content_length: Option<u64>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn describe(&self) -> String {
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(400)])
        )
    }
}

/// A raw mTLS client with the appliance's certificate, for requests the shared client
/// does not make (Range, HEAD, unnormalised paths).
fn raw_client(gw: &Gateway, app: &ApplianceClient) -> anyhow::Result<reqwest::Client> {
    let key = app.key().serialize_pem();
    let cert = app.cert_pem().expect("appliance holds a certificate");
    http_client(tls_config(&gw.ca_pem()?, Some((cert, &key)), TLS13_ONLY)?)
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    range: Option<&str>,
) -> anyhow::Result<Reply> {
    let mut req = client.request(method, url);
    if let Some(r) = range {
        req = req.header(RANGE, r);
    }
    let resp = req.send().await?;
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let content_range = header(CONTENT_RANGE);
    let content_length = header(CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let status = resp.status().as_u16();
    let body = resp.bytes().await?.to_vec();
    Ok(Reply {
        status,
        content_range,
        content_length,
        body,
    })
}

/// A feed as `outpost-feed` publishes it (content does not matter to the gateway), a
/// secret next to it, and a symlink from inside pointing at the secret.
fn make_feed(root: &Path) -> anyhow::Result<Vec<u8>> {
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("metadata"))?;
    std::fs::create_dir_all(repo.join("targets"))?;
    std::fs::write(repo.join("metadata/timestamp.json"), br#"{"signed":{}}"#)?;
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(repo.join("targets/blob.tar.zst"), &blob)?;
    std::fs::write(root.join("secret.txt"), b"TOP-SECRET-OUTSIDE-THE-FEED")?;
    std::os::unix::fs::symlink(root.join("secret.txt"), repo.join("targets/escape"))?;
    Ok(blob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_serves_files_and_ranges_to_approved_appliances_only() -> anyhow::Result<()> {
    let wd = Workdir::new("feed-route")?;
    let feed = wd.subdir("feed")?;
    let blob = make_feed(&feed)?;
    let mut gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_feed_dir(&feed.join("repo"))?;
    gw.start()?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let c = raw_client(&gw, &app)?;
    let url = |p: &str| gw.url(&format!("{}/{p}", paths::FEED));
    let get = reqwest::Method::GET;

    // Full GET and HEAD.
    let r = send(&c, get.clone(), &url("targets/blob.tar.zst"), None).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.body == blob, "full GET returned other bytes");
    let r = send(
        &c,
        reqwest::Method::HEAD,
        &url("targets/blob.tar.zst"),
        None,
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length, Some(blob.len() as u64));
    assert!(r.body.is_empty());
    let r = send(&c, get.clone(), &url("metadata/timestamp.json"), None).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["signed"], json!({}));

    // Range: 206 with Content-Range and exactly the slice; an open range (resume).
    let r = send(
        &c,
        get.clone(),
        &url("targets/blob.tar.zst"),
        Some("bytes=1000-1999"),
    )
    .await?;
    assert_eq!(r.status, 206, "{}", r.describe());
    assert_eq!(
        r.content_range.as_deref(),
        Some(format!("bytes 1000-1999/{}", blob.len()).as_str())
    );
    assert!(r.body == blob[1000..2000], "Range GET returned other bytes");
    let r = send(
        &c,
        get.clone(),
        &url("targets/blob.tar.zst"),
        Some("bytes=299000-"),
    )
    .await?;
    assert_eq!(r.status, 206, "{}", r.describe());
    assert!(
        r.body == blob[299_000..],
        "open Range GET returned other bytes"
    );

    // Unsatisfiable and multi-range: 416.
    let past = format!("bytes={}-", blob.len() + 10);
    let r = send(&c, get.clone(), &url("targets/blob.tar.zst"), Some(&past)).await?;
    assert_eq!(r.status, 416, "{}", r.describe());
    let r = send(
        &c,
        get.clone(),
        &url("targets/blob.tar.zst"),
        Some("bytes=0-1,5-9"),
    )
    .await?;
    assert_eq!(r.status, 416, "{}", r.describe());

    // Traversal: encoded `..` and `/`, absolute, hidden, and a symlink out of the feed.
    for (p, status) in [
        ("..%2fsecret.txt", 400),
        ("targets%2f..%2f..%2fsecret.txt", 400),
        ("%2fetc%2fpasswd", 400),
        ("targets/.hidden", 400),
        ("targets/escape", 403),
        ("targets/nothing-here", 404),
    ] {
        let r = send(&c, get.clone(), &url(p), None).await?;
        assert_eq!(r.status, status, "{p}: {}", r.describe());
        assert!(
            !String::from_utf8_lossy(&r.body).contains("TOP-SECRET"),
            "{p} leaked the secret"
        );
    }

    // No client certificate: refused before anything is served.
    let r = app
        .get_without_cert(&format!("{}/metadata/timestamp.json", paths::FEED))
        .await?;
    assert_eq!(r.status, 401, "{}", r.describe());

    // A pending appliance holding a certificate made behind the gateway's back: 403.
    let token = gw.token_create("acme-corp", false, None, None)?;
    let mut pending = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    pending.enroll_ok(&token).await?;
    let forged = sign_with_gateway_ca(gw.dir(), pending.key(), pending.hostname())?;
    pending.use_certificate(&forged)?;
    let r = pending
        .get(&format!("{}/metadata/timestamp.json", paths::FEED))
        .await?;
    assert_eq!(r.status, 403, "{}", r.describe());

    // A revoked appliance: 403 from its next request.
    let revoked = approved_appliance(&gw, "acme-corp").await?;
    gw.revoke(revoked.id().expect("enrolled"))?;
    let r = revoked
        .get(&format!("{}/metadata/timestamp.json", paths::FEED))
        .await?;
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(r.error_code().as_deref(), Some("appliance_revoked"));

    // The feed directory disappears: 404 naming the cause, not a crash.
    std::fs::rename(feed.join("repo"), feed.join("repo.gone"))?;
    let r = send(&c, get, &url("metadata/timestamp.json"), None).await?;
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(r.json()["error"], "feed_missing", "{}", r.describe());
    Ok(())
}

/// `GET /v1/commands?wait=0&agent=AGENT` (no `agent=` when `None`): the commands.
async fn poll(app: &ApplianceClient, agent: Option<&str>) -> anyhow::Result<CommandList> {
    let path = match agent {
        Some(a) => format!("{}?wait=0&agent={a}", paths::COMMANDS),
        None => format!("{}?wait=0", paths::COMMANDS),
    };
    let r = app.get(&path).await?;
    anyhow::ensure!(r.status == 200, "{path}: {}", r.describe());
    Ok(serde_json::from_slice(&r.body)?)
}

fn window_of(list: &CommandList) -> anyhow::Result<WindowSpec> {
    anyhow::ensure!(
        list.commands.len() == 1 && list.commands[0].kind == "set_window",
        "expected one set_window: {list:?}"
    );
    Ok(serde_json::from_value(list.commands[0].args.clone())?)
}

async fn windows_restart_and_update_state(gw: &Gateway) -> anyhow::Result<()> {
    let app1 = approved_appliance(gw, "acme").await?;
    let app2 = approved_appliance(gw, "acme").await?;
    let other = approved_appliance(gw, "globex").await?;
    let id1 = app1.id().expect("enrolled").to_string();

    // No feed configured here: the feed route says so.
    let r = app1
        .get(&format!("{}/metadata/timestamp.json", paths::FEED))
        .await?;
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(r.error_code().as_deref(), Some("feed_not_configured"));

    // Bad input is refused naming the value, and nothing is stored.
    for (tz, range, needle) in [
        ("Europe/Berln", "sat,sun 01:00-05:00", "Europe/Berln"),
        ("Europe/Berlin", "sa,sun 01:00-05:00", "\"sa\""),
        ("Europe/Berlin", "sat,sun 1:00-05:00", "\"1:00\""),
        ("Europe/Berlin", "sat,sun 01:00-25:00", "\"25:00\""),
    ] {
        let out = gw.cli(&[
            "windows",
            "set",
            "--customer",
            "acme",
            "--tz",
            tz,
            "--range",
            range,
        ])?;
        assert_eq!(out.code(), Some(3), "{tz} {range}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{tz} {range}: {}", out.stderr);
    }
    let list: Value = serde_json::from_str(&gw.cli_ok(&["windows", "list", "--json"])?)?;
    assert_eq!(list, json!([]), "a refused window was stored");

    // A customer window, one range across midnight.
    let out = gw.cli_ok(&[
        "windows",
        "set",
        "--customer",
        "acme",
        "--tz",
        "Europe/Berlin",
        "--range",
        "sat,sun 01:00-05:00",
        "--range",
        "wed 22:00-02:00",
    ])?;
    assert!(out.contains("2 appliance(s)"), "{out}");
    let expected: WindowSpec = serde_json::from_value(json!({
        "tz": "Europe/Berlin",
        "ranges": [
            {"days": ["sat", "sun"], "start": "01:00", "end": "05:00"},
            {"days": ["wed"], "start": "22:00", "end": "02:00"},
        ],
    }))?;
    let list: Value = serde_json::from_str(&gw.cli_ok(&["windows", "list", "--json"])?)?;
    assert_eq!(list[0]["scope"], "customer", "{list}");
    assert_eq!(list[0]["target"], "acme", "{list}");
    assert_eq!(list[0]["tz"], "Europe/Berlin", "{list}");

    // The collector's poll does not see it (asked first, so a missing filter would show);
    // the updater's does; another customer's appliance gets nothing.
    assert!(poll(&app2, None).await?.commands.is_empty());
    assert!(poll(&app2, Some("collector")).await?.commands.is_empty());
    assert_eq!(window_of(&poll(&app2, Some("updater")).await?)?, expected);
    let got = poll(&app1, Some("updater")).await?;
    assert_eq!(window_of(&got)?, expected);
    assert!(poll(&other, Some("updater")).await?.commands.is_empty());
    let r = app1
        .get(&format!("{}?wait=0&agent=bogus", paths::COMMANDS))
        .await?;
    assert_eq!(r.status, 400, "{}", r.describe());

    // The updater answers like the collector does.
    let r = app1
        .post_json(
            &paths::command_result(&got.commands[0].id),
            &json!({"ok": true, "output": "window applied"}),
        )
        .await?;
    assert!((200..300).contains(&r.status), "{}", r.describe());
    let cmds = gw.commands_json(&id1)?;
    assert!(
        cmds.as_array().is_some_and(|a| a
            .iter()
            .any(|c| c["kind"] == "set_window" && c["state"] == "done")),
        "{cmds}"
    );

    // An appliance approved later under the customer gets the window on approval.
    let token = gw.token_create("acme", false, None, None)?;
    let mut late = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    let enrolled = late.enroll_ok(&token).await?;
    gw.approve(&enrolled.id)?;
    late.wait_certificate(&token, ENROLL_TIMEOUT).await?;
    assert_eq!(window_of(&poll(&late, Some("updater")).await?)?, expected);

    // Explicit restart: to the updater only; refused for unknown and revoked appliances.
    let cmd = gw
        .cli_ok(&["appliances", "restart", &id1])?
        .trim()
        .to_string();
    assert!(poll(&app1, None).await?.commands.is_empty());
    let got = poll(&app1, Some("updater")).await?;
    assert_eq!(got.commands.len(), 1, "{got:?}");
    assert_eq!(
        (got.commands[0].id.as_str(), got.commands[0].kind.as_str()),
        (cmd.as_str(), "restart")
    );
    let out = gw.cli(&["appliances", "restart", "ap-000000000000"])?;
    assert_eq!(out.code(), Some(4), "{}", out.stderr);
    assert!(out.stderr.contains("ap-000000000000"), "{}", out.stderr);
    let id_other = other.id().expect("enrolled").to_string();
    gw.revoke(&id_other)?;
    let out = gw.cli(&["appliances", "restart", &id_other])?;
    assert!(!out.success(), "restart of a revoked appliance was queued");
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);

    // The updater reports its state; `appliances show` carries it.
    let show = gw.show_json(&id1)?;
    assert_eq!(show["update"]["reported"], false, "{}", show["update"]);
    let state = UpdateState {
        current_version: Some("1.0.0".into()),
        current_slot: Some("a".into()),
        mirrored_version: Some("1.1.0".into()),
        staged_version: Some("1.1.0".into()),
        pending_restart: true,
        restart_at_ms: Some(1_800_000_000_000),
        window: Some(expected.clone()),
        last_error: Some("disk full while mirroring 1.2.0".into()),
        channel: Some("stable".into()),
        reported_at_ms: 1_799_999_000_000,
    };
    let r = app1
        .post_json(paths::UPDATE_STATE, &serde_json::to_value(&state)?)
        .await?;
    assert_eq!(r.status, 204, "{}", r.describe());
    let r = app1
        .post_json(paths::UPDATE_STATE, &json!({"pending_restart": "yes"}))
        .await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    let big = json!({"last_error": "x".repeat(100 * 1024)});
    let r = app1.post_json(paths::UPDATE_STATE, &big).await?;
    assert_eq!(r.status, 413, "{}", r.describe());
    let u = gw.show_json(&id1)?["update"].clone();
    assert_eq!(u["reported"], true, "{u}");
    assert_eq!(u["current_version"], "1.0.0", "{u}");
    assert_eq!(u["current_slot"], "a", "{u}");
    assert_eq!(u["staged_version"], "1.1.0", "{u}");
    assert_eq!(u["mirrored_version"], "1.1.0", "{u}");
    assert_eq!(u["pending_restart"], true, "{u}");
    assert_eq!(u["restart_at_ms"], 1_800_000_000_000_i64, "{u}");
    assert_eq!(u["last_error"], "disk full while mirroring 1.2.0", "{u}");
    assert_eq!(u["window"]["tz"], "Europe/Berlin", "{u}");
    assert_eq!(u["gateway_window"]["target"], "acme", "{u}");
    let text = gw.cli_ok(&["appliances", "show", &id1])?;
    assert!(text.contains("update") && text.contains("1.1.0"), "{text}");
    assert!(text.contains("disk full while mirroring"), "{text}");

    // An appliance window overrides the customer's; clearing the customer's sends "none"
    // to the appliances it applied to.
    let id2 = app2.id().expect("enrolled").to_string();
    gw.cli_ok(&[
        "windows",
        "set",
        "--appliance",
        &id2,
        "--tz",
        "UTC",
        "--range",
        "mon-fri 03:00-04:00",
    ])?;
    assert_eq!(window_of(&poll(&app2, Some("updater")).await?)?.tz, "UTC");
    gw.cli_ok(&["windows", "clear", "--customer", "acme"])?;
    assert!(window_of(&poll(&app1, Some("updater")).await?)?
        .ranges
        .is_empty());
    assert!(poll(&app2, Some("updater")).await?.commands.is_empty());
    let out = gw.cli(&["windows", "clear", "--customer", "acme"])?;
    assert_eq!(out.code(), Some(4), "{}", out.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_and_restart_reach_the_updater_queue_and_state_is_shown_on_sqlite(
) -> anyhow::Result<()> {
    let wd = Workdir::new("updates-sqlite")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    windows_restart_and_update_state(&gw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_and_restart_reach_the_updater_queue_and_state_is_shown_on_postgres(
) -> anyhow::Result<()> {
    const TEST: &str = "windows_and_restart_reach_the_updater_queue_and_state_is_shown_on_postgres";
    let Some(db) = TestDatabase::create_or_skip(TEST)? else {
        return Ok(());
    };
    let wd = Workdir::new("updates-pg")?;
    let mut gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_config("store", db.url())?;
    gw.start()?;
    windows_restart_and_update_state(&gw).await
}
