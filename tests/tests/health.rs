//! Health end to end: packs imported at the gateway reach a real collector through
//! `GET /v1/config`, the collector judges its box with them, and state changes, alerts and
//! the guest list come back to `appliances show`.
//!
//! * A threshold on the host's uptime (which only grows) set below the current value
//!   raises an alert; the same pack re-imported with the threshold far above resolves it —
//!   deterministic, without loading the machine.
//! * A real QEMU guest started by the test appears in `vms`, and disappears once killed
//!   (SKIP without `qemu-system-x86_64`).
//! * Bad packs are refused at import with file, line and reason (exit 3); a set the
//!   collector cannot apply together is refused there, logged, and the last good set kept.
//! * `GET /v1/config`'s ETag changes only when the appliance's packs do.
//! * With the gateway down, a new guest is still discovered and judged; the changes wait in
//!   the spool and arrive after the gateway is back.

use std::io::Write;
use std::path::Path;

use outpost_tests::fixtures::{approved_appliance, wait_show, COLLECTOR_TIMEOUT, ENROLL_TIMEOUT};
use outpost_tests::qemu::{self, Guest};
use outpost_tests::{Collector, Gateway, Workdir};
use serde_json::Value;

/// A pack with one host monitor on `uptime_secs` and an alert on it.
fn uptime_pack(version: &str, warning: u64, critical: u64) -> String {
    format!(
        r#"[pack]
name = "e2e.uptime"
version = "{version}"

[[monitor]]
id = "e2e.uptime"
class = "host"
type = "threshold"
metric = "uptime_secs"
direction = "above"
warning = {warning}
critical = {critical}
samples = 1

[[rule]]
id = "e2e.alert.uptime"
type = "alert"
monitor = "e2e.uptime"
severity = "warning"
message = "host {{id}} has been up too long ({{state}})"
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p.to_string_lossy().into_owned())
}

fn open_alerts(v: &Value) -> Vec<Value> {
    v["open_alerts"].as_array().cloned().unwrap_or_default()
}

/// The state of `monitor` on the first object of the health tree that `which` picks.
fn monitor_where(v: &Value, which: impl Fn(&Value) -> bool, monitor: &str) -> Option<String> {
    v["health"]
        .as_array()?
        .iter()
        .find(|o| which(o))
        .and_then(|o| {
            o["monitors"]
                .as_array()?
                .iter()
                .find(|m| m["monitor"] == monitor)
                .and_then(|m| m["state"].as_str().map(str::to_string))
        })
}

/// The state of `monitor` on the host object of the health tree.
fn host_monitor(v: &Value, monitor: &str) -> Option<String> {
    monitor_where(v, |o| o["class"] == "host", monitor)
}

/// The state of `monitor` on `object` (`CLASS/ID`) in the health tree.
fn object_monitor(v: &Value, object: &str, monitor: &str) -> Option<String> {
    monitor_where(v, |o| o["object"] == object, monitor)
}

fn start_collector(
    wd: &Workdir,
    gw: &Gateway,
    customer: &str,
) -> anyhow::Result<(Collector, String)> {
    let token = gw.token_create(customer, true, None, None)?;
    let mut col = Collector::configure(&wd.join("col"), gw, &token, "1s")?;
    col.set_config("config_poll", "1s")?;
    col.start()?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    Ok((col, id))
}

#[test]
fn a_threshold_crossed_raises_an_alert_at_the_gateway_and_it_resolves() -> anyhow::Result<()> {
    let wd = Workdir::new("health-alert")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let packs = wd.subdir("packs")?;
    // Below any real uptime: critical at once.
    let low = write(&packs, "uptime-low.toml", &uptime_pack("1", 1, 2))?;
    let out = gw.cli_ok(&["packs", "import", &low])?;
    assert!(
        out.contains("imported pack e2e.uptime (version 1)"),
        "{out}"
    );
    gw.cli_ok(&["packs", "assign", "e2e.uptime", "--customer", "acme-health"])?;
    let listed: Value = serde_json::from_str(&gw.cli_ok(&["packs", "list", "--json"])?)?;
    assert_eq!(listed[0]["name"], "e2e.uptime", "{listed}");
    assert_eq!(
        listed[0]["assigned"][0]["target"], "acme-health",
        "{listed}"
    );

    let (_col, id) = start_collector(&wd, &gw, "acme-health")?;
    wait_show(&gw, &id, "the packs applied", COLLECTOR_TIMEOUT, |v| {
        v["packs"]["applied"] == true && v["packs"]["packs"][0] == "e2e.uptime"
    })?;
    let raised = wait_show(
        &gw,
        &id,
        "the uptime alert open at the gateway",
        COLLECTOR_TIMEOUT,
        |v| {
            open_alerts(v)
                .iter()
                .any(|a| a["rule"] == "e2e.alert.uptime")
        },
    )?;
    let alert = open_alerts(&raised)
        .into_iter()
        .find(|a| a["rule"] == "e2e.alert.uptime")
        .expect("found above");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["monitor"], "e2e.uptime", "{alert}");
    assert!(
        alert["object"].as_str().unwrap_or("").starts_with("host/"),
        "{alert}"
    );
    assert!(alert["raised_at"].is_string(), "{alert}");
    assert_eq!(
        host_monitor(&raised, "e2e.uptime").as_deref(),
        Some("critical"),
        "{raised}"
    );
    // The text form shows the same.
    let text = gw.cli_ok(&["appliances", "show", &id])?;
    assert!(text.contains("open alerts"), "{text}");
    assert!(text.contains("has been up too long (critical)"), "{text}");
    assert!(text.contains("- e2e.uptime"), "{text}");
    // The built-in pack is judged too: the host has its rolled-up health.
    let host = raised["health"][0].clone();
    assert_eq!(host["class"], "host", "{raised}");
    assert!(host["state"].is_string(), "{raised}");

    // The value "returns": the same pack with the threshold far above any uptime.
    let high = write(
        &packs,
        "uptime-high.toml",
        &uptime_pack("2", 1 << 40, 1 << 41),
    )?;
    let out = gw.cli_ok(&["packs", "import", &high])?;
    assert!(out.contains("version 2"), "{out}");
    let resolved = wait_show(
        &gw,
        &id,
        "the uptime alert resolved",
        COLLECTOR_TIMEOUT,
        |v| {
            !open_alerts(v)
                .iter()
                .any(|a| a["rule"] == "e2e.alert.uptime")
                && host_monitor(v, "e2e.uptime").as_deref() == Some("healthy")
        },
    )?;
    assert!(open_alerts(&resolved)
        .iter()
        .all(|a| a["rule"] != "e2e.alert.uptime"));
    // Both the raise and the resolution travelled as alert records.
    let records: Value = serde_json::from_str(&gw.cli_ok(&[
        "appliances",
        "records",
        &id,
        "--kind",
        "alert",
        "--json",
    ])?)?;
    assert!(records.as_array().map_or(0, Vec::len) >= 2, "{records}");
    // History: `alerts` lists only open ones, `--all` the resolved one with both times;
    // `health-history` has the monitor's changes with timestamps.
    let open: Value =
        serde_json::from_str(&gw.cli_ok(&["appliances", "alerts", &id, "--json"])?)?;
    assert!(
        open.as_array()
            .is_some_and(|a| a.iter().all(|a| a["rule"] != "e2e.alert.uptime")),
        "{open}"
    );
    let all: Value =
        serde_json::from_str(&gw.cli_ok(&["appliances", "alerts", &id, "--all", "--json"])?)?;
    let gone = all
        .as_array()
        .and_then(|a| a.iter().find(|a| a["rule"] == "e2e.alert.uptime"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(gone["raised_at"].is_string(), "{all}");
    assert!(gone["resolved_at"].is_string(), "{all}");
    assert_eq!(gone["resolve_reason"], "healthy", "{all}");
    let text = gw.cli_ok(&["appliances", "alerts", &id, "--all"])?;
    assert!(text.contains("has been up too long"), "{text}");
    let history: Value =
        serde_json::from_str(&gw.cli_ok(&["appliances", "health-history", &id, "--json"])?)?;
    let uptime: Vec<(String, String)> = history
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|c| c["monitor"] == "e2e.uptime")
                .map(|c| {
                    assert!(c["at"].is_string(), "{c}");
                    (c["from"].to_string(), c["to"].to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        uptime.contains(&("\"critical\"".into(), "\"healthy\"".into())),
        "{history}"
    );
    Ok(())
}

#[test]
fn an_invalid_pack_is_refused_at_import_with_file_line_and_reason() -> anyhow::Result<()> {
    let wd = Workdir::new("health-bad-packs")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let dir = wd.subdir("packs")?;
    let head = "[pack]\nname = \"e2e.bad\"\nversion = \"1\"\n\n";
    let cases = [
        (
            "unknown-monitor-type.toml",
            format!("{head}[[monitor]]\nid = \"m\"\nclass = \"host\"\ntype = \"vibe_check\"\n"),
            ":8: unknown monitor type \"vibe_check\"",
        ),
        (
            "rollup-cycle.toml",
            format!(
                "{head}[[aggregate]]\nid = \"a\"\nclass = \"vm\"\nalgorithm = \"worst_of\"\nmembers = [\"b\"]\n\n\
                 [[aggregate]]\nid = \"b\"\nclass = \"vm\"\nalgorithm = \"worst_of\"\nmembers = [\"a\"]\n"
            ),
            "cycle in rollups",
        ),
        (
            "override-unknown-target.toml",
            format!(
                "{head}[[override]]\nid = \"o\"\nmonitor = \"host.cpuu\"\nclass = \"host\"\nset = {{ warning = 1 }}\n"
            ),
            ":5: override \"o\" names unknown monitor \"host.cpuu\"",
        ),
        (
            "threshold-not-a-number.toml",
            format!(
                "{head}[[monitor]]\nid = \"m\"\nclass = \"host\"\ntype = \"threshold\"\nmetric = \"load1\"\nwarning = \"high\"\n"
            ),
            ":10: threshold `warning` is not a number",
        ),
    ];
    for (name, text, reason) in &cases {
        let path = write(&dir, name, text)?;
        let out = gw.cli(&["packs", "import", &path])?;
        assert_eq!(out.code(), Some(3), "{name}: {out:?}");
        let expected = format!("{path}{reason}");
        let found = out.stderr.contains(&expected)
            || (!reason.starts_with(':')
                && out.stderr.contains(&format!("{path}:"))
                && out.stderr.contains(reason));
        assert!(found, "{name}: expected {expected:?} in {:?}", out.stderr);
    }
    let listed = gw.cli_ok(&["packs", "list", "--json"])?;
    assert_eq!(listed.trim(), "[]", "a refused pack is not stored");
    // Assigning what does not exist is "not found".
    let out = gw.cli(&["packs", "assign", "e2e.bad", "--customer", "c"])?;
    assert_eq!(out.code(), Some(4), "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_etag_changes_only_when_the_assigned_packs_do() -> anyhow::Result<()> {
    let wd = Workdir::new("health-etag")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-etag").await?;
    let path = outpost_proto::paths::CONFIG;
    let tag = |r: &outpost_tests::HttpReply| r.etag.clone().expect("ETag");
    let empty = app.get(path).await?;
    let packs = wd.subdir("packs")?;
    let p1 = write(&packs, "p1.toml", &uptime_pack("1", 1, 2))?;
    gw.cli_ok(&["packs", "import", &p1])?;
    // Imported but not assigned: nothing changes for this appliance.
    assert_eq!(app.get_if_none_match(path, &tag(&empty)).await?.status, 304);
    gw.cli_ok(&[
        "packs",
        "assign",
        "e2e.uptime",
        "--appliance",
        app.id().expect("id"),
    ])?;
    let assigned = app.get_if_none_match(path, &tag(&empty)).await?;
    assert_eq!(assigned.status, 200, "{}", assigned.describe());
    let doc: outpost_proto::CollectorConfigDoc = serde_json::from_slice(&assigned.body)?;
    assert_eq!(doc.packs.len(), 1);
    assert_eq!(doc.packs[0].name, "e2e.uptime");
    // The same content again: same ETag.
    gw.cli_ok(&["packs", "import", &p1])?;
    assert_eq!(
        app.get_if_none_match(path, &tag(&assigned)).await?.status,
        304
    );
    let p2 = write(&packs, "p2.toml", &uptime_pack("2", 1, 3))?;
    gw.cli_ok(&["packs", "import", &p2])?;
    let changed = app.get_if_none_match(path, &tag(&assigned)).await?;
    assert_eq!(changed.status, 200, "{}", changed.describe());
    assert_ne!(tag(&changed), tag(&assigned));
    Ok(())
}

#[test]
fn a_real_qemu_guest_shows_up_in_vms_and_goes_when_killed() -> anyhow::Result<()> {
    if let Some(reason) = qemu::unavailable() {
        let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
        return Ok(());
    }
    let wd = Workdir::new("health-vms")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let (_col, id) = start_collector(&wd, &gw, "acme-vms")?;
    let guests = wd.subdir("guests")?;
    let name = format!("outpost-e2e-{}", &qemu::fresh_uuid()[..8]);
    let mut guest = Guest::start(&guests, &name, 2, 64)?;
    let uuid = guest.uuid.clone();
    let ours = |v: &Value| -> Option<Value> {
        v["vms"]
            .as_array()?
            .iter()
            .find(|vm| vm["uuid"] == uuid.as_str())
            .cloned()
    };
    let seen = wait_show(&gw, &id, "the guest in `vms`", COLLECTOR_TIMEOUT, |v| {
        ours(v).is_some_and(|vm| !vm["metrics"].is_null())
    })
    .map_err(|e| e.context(format!("qemu log: {}", guest.log())))?;
    let vm = ours(&seen).expect("found above");
    assert_eq!(vm["name"], name.as_str(), "{vm}");
    assert_eq!(vm["vcpus"], 2, "{vm}");
    assert_eq!(vm["memory_bytes"], 64u64 << 20, "{vm}");
    assert_eq!(vm["source"], "qemu", "{vm}");
    assert!(vm["state"].is_string(), "{vm}");
    // Judged too: the guest is an object of the health tree.
    let vm_object = format!("vm/{name}");
    wait_show(
        &gw,
        &id,
        "the guest in the health tree",
        COLLECTOR_TIMEOUT,
        |v| {
            v["health"]
                .as_array()
                .is_some_and(|objs| objs.iter().any(|o| o["object"] == vm_object.as_str()))
        },
    )?;

    guest.stop();
    wait_show(
        &gw,
        &id,
        "the guest gone from `vms` and the health tree",
        COLLECTOR_TIMEOUT,
        |v| {
            ours(v).is_none()
                && !v["health"]
                    .as_array()
                    .is_some_and(|objs| objs.iter().any(|o| o["object"] == vm_object.as_str()))
        },
    )?;
    Ok(())
}

#[test]
fn health_is_judged_on_the_box_while_the_gateway_is_down() -> anyhow::Result<()> {
    if let Some(reason) = qemu::unavailable() {
        let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
        return Ok(());
    }
    let wd = Workdir::new("health-offline")?;
    let mut gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let (col, id) = start_collector(&wd, &gw, "acme-offline")?;
    wait_show(
        &gw,
        &id,
        "the first health records",
        COLLECTOR_TIMEOUT,
        |v| v["health"].as_array().is_some_and(|o| !o.is_empty()),
    )?;
    gw.stop()?;

    // A guest starts while no gateway answers: the box discovers and judges it, and the
    // changes wait in the spool's changes log.
    let guests = wd.subdir("guests")?;
    let name = format!("outpost-off-{}", &qemu::fresh_uuid()[..8]);
    let guest = Guest::start(&guests, &name, 1, 64)?;
    outpost_tests::wait_for(
        "vm_inventory and health records spooled while offline",
        COLLECTOR_TIMEOUT,
        std::time::Duration::from_millis(200),
        || {
            let unsent = outpost_tests::spool::unsent_frames(col.state_dir())?;
            let kinds: Vec<&str> = unsent.iter().map(|f| f.kind.as_str()).collect();
            Ok((kinds.contains(&"vm_inventory") && kinds.contains(&"health")).then_some(()))
        },
    )
    .map_err(|e| e.context(format!("qemu log: {}", guest.log())))?;

    gw.restart()?;
    let vm_object = format!("vm/{name}");
    let back = wait_show(
        &gw,
        &id,
        "the offline changes delivered",
        COLLECTOR_TIMEOUT,
        |v| {
            v["vms"]
                .as_array()
                .is_some_and(|vms| vms.iter().any(|vm| vm["uuid"] == guest.uuid.as_str()))
                && v["health"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o["object"] == vm_object.as_str()))
        },
    )?;
    assert!(back["vms"].is_array(), "{back}");
    Ok(())
}

#[test]
fn a_pack_set_the_collector_cannot_apply_is_refused_and_the_last_good_one_kept(
) -> anyhow::Result<()> {
    let wd = Workdir::new("health-keep-good")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let packs = wd.subdir("packs")?;
    let good = write(&packs, "good.toml", &uptime_pack("1", 1, 2))?;
    gw.cli_ok(&["packs", "import", &good])?;
    gw.cli_ok(&["packs", "assign", "e2e.uptime", "--customer", "acme-keep"])?;
    let (col, id) = start_collector(&wd, &gw, "acme-keep")?;
    wait_show(&gw, &id, "the uptime alert open", COLLECTOR_TIMEOUT, |v| {
        open_alerts(v)
            .iter()
            .any(|a| a["rule"] == "e2e.alert.uptime")
    })?;

    // Valid on its own (so the import takes it), but it defines the same monitor id as the
    // pack in force: together they cannot be applied.
    let clash =
        uptime_pack("1", 1 << 40, 1 << 41).replace("name = \"e2e.uptime\"", "name = \"e2e.clash\"");
    let clash = clash.replace("id = \"e2e.alert.uptime\"", "id = \"e2e.alert.clash\"");
    let clash = write(&packs, "clash.toml", &clash)?;
    gw.cli_ok(&["packs", "import", &clash])?;
    gw.cli_ok(&["packs", "assign", "e2e.clash", "--customer", "acme-keep"])?;
    let log = col.log_path();
    outpost_tests::wait_for(
        "the collector to log why it refused the packs",
        COLLECTOR_TIMEOUT,
        std::time::Duration::from_millis(200),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok((text.contains("health packs from the gateway refused")
                && text.contains("gateway:e2e.clash:"))
            .then_some(()))
        },
    )?;
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains("monitor id \"e2e.uptime\" is already defined"),
        "{text}"
    );
    // The good pack stays in force: its alert stays open, the clashing rule never fires.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let v = gw.show_json(&id)?;
    assert!(
        open_alerts(&v)
            .iter()
            .any(|a| a["rule"] == "e2e.alert.uptime"),
        "{v}"
    );
    assert_eq!(
        host_monitor(&v, "e2e.uptime").as_deref(),
        Some("critical"),
        "{v}"
    );
    // The refusal and its reason reach the gateway as the appliance's pack status.
    let v = wait_show(
        &gw,
        &id,
        "the refusal at the gateway",
        COLLECTOR_TIMEOUT,
        |v| v["packs"]["applied"] == false,
    )?;
    let why = v["packs"]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("gateway:e2e.clash:") && why.contains("is already defined"),
        "{v}"
    );
    let packs = &v["packs"]["packs"];
    assert!(
        packs.as_array().is_some_and(|p| p.len() == 2),
        "both delivered packs named: {v}"
    );
    let text = gw.cli_ok(&["appliances", "show", &id])?;
    assert!(
        text.contains("Packs: refused: gateway:e2e.") && text.contains("is already defined"),
        "{text}"
    );
    Ok(())
}

/// A self-signed certificate for `cn` that expires `days` from now.
fn short_lived_cert(cn: &str, days: u64) -> anyhow::Result<String> {
    let mut params = rcgen::CertificateParams::new(vec![cn.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after =
        (std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400)).into();
    let key = rcgen::KeyPair::generate()?;
    Ok(params.self_signed(&key)?.pem())
}

#[test]
fn a_certificate_about_to_expire_and_a_listed_service_are_judged_on_the_box() -> anyhow::Result<()>
{
    let wd = Workdir::new("health-sources")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let certs = wd.subdir("certs")?;
    let short = write(&certs, "short.pem", &short_lived_cert("short.example", 2)?)?;
    let garbage = write(&certs, "garbage.pem", "not a certificate\n")?;
    let pack = format!(
        r#"[pack]
name = "e2e.sources"
version = "1"

[[discovery]]
id = "e2e.certificates"
class = "certificate"
paths = [{short:?}, {garbage:?}]

[[discovery]]
id = "e2e.services"
class = "service"
units = ["outpost-e2e-absent.service"]
"#
    );
    let packs = wd.subdir("packs")?;
    let file = write(&packs, "sources.toml", &pack)?;
    gw.cli_ok(&["packs", "import", &file])?;
    gw.cli_ok(&[
        "packs",
        "assign",
        "e2e.sources",
        "--customer",
        "acme-sources",
    ])?;
    let (col, id) = start_collector(&wd, &gw, "acme-sources")?;

    // Two days left: critical, and the built-in pack's expiry alert reaches the gateway.
    let short_object = format!("certificate/{short}");
    let v = wait_show(
        &gw,
        &id,
        "the certificate expiry alert",
        COLLECTOR_TIMEOUT,
        |v| {
            open_alerts(v).iter().any(|a| {
                a["rule"] == "alert.certificate.expiry" && a["object"] == short_object.as_str()
            })
        },
    )?;
    let alert = open_alerts(&v)
        .into_iter()
        .find(|a| a["object"] == short_object.as_str())
        .unwrap_or(Value::Null);
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(
        object_monitor(&v, &short_object, "certificate.expiry").as_deref(),
        Some("critical"),
        "{v}"
    );
    // A file that is no certificate is an object in Unknown, not a crash.
    let garbage_object = format!("certificate/{garbage}");
    let v = wait_show(
        &gw,
        &id,
        "the unreadable certificate unknown",
        COLLECTOR_TIMEOUT,
        |v| {
            object_monitor(v, &garbage_object, "certificate.expiry").as_deref() == Some("unknown")
                && object_monitor(v, "certificate/outpost-collector", "certificate.expiry")
                    .is_some()
        },
    )?;
    // The collector's own certificate is watched too (the built-in pack).
    let own = object_monitor(&v, "certificate/outpost-collector", "certificate.expiry");
    assert!(
        matches!(own.as_deref(), Some("healthy" | "warning" | "critical")),
        "{v}"
    );

    // The listed unit: judged from systemd where it runs, Unknown with the reason otherwise.
    let unit = "service/outpost-e2e-absent.service";
    if Path::new("/run/systemd/system").is_dir() {
        let v = wait_show(&gw, &id, "the absent unit judged", COLLECTOR_TIMEOUT, |v| {
            object_monitor(v, unit, "service.active").as_deref() == Some("critical")
        })?;
        assert!(
            open_alerts(&v)
                .iter()
                .any(|a| a["rule"] == "alert.service.active" && a["object"] == unit),
            "{v}"
        );
    } else {
        wait_show(
            &gw,
            &id,
            "the unit unknown without systemd",
            COLLECTOR_TIMEOUT,
            |v| object_monitor(v, unit, "service.active").as_deref() == Some("unknown"),
        )?;
        let log = std::fs::read_to_string(col.log_path())?;
        assert_eq!(
            log.matches("service states unknown: systemd is not the running init")
                .count(),
            1,
            "logged once, not every interval:\n{log}"
        );
        eprintln!(
            "SKIP: systemd is not the running init here (/run/systemd/system is missing): \
             checked that the unit is Unknown with the reason logged once; real unit states \
             are checked only where systemd runs"
        );
    }
    Ok(())
}
