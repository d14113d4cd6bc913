//! The command lines of both binaries (`docs/contract.md`): `init` files and modes, config
//! errors (exit 3, naming file and key), `collect --json`, `appliances list/show --json`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use outpost_tests::collector::{collector_cli, CollectorSettings};
use outpost_tests::gateway::LOOPBACK_SANS;
use outpost_tests::proc::{run_bounded, CLI_TIMEOUT};
use outpost_tests::{ApplianceClient, Gateway, Workdir};

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

fn gateway_init(dir: &Path, extra: &[&str]) -> anyhow::Result<outpost_tests::CliOutput> {
    let mut cmd = std::process::Command::new(outpost_tests::bins::gateway()?);
    cmd.arg("init").arg("--dir").arg(dir);
    for s in LOOPBACK_SANS {
        cmd.args(["--san", s]);
    }
    cmd.args(extra);
    Ok(run_bounded(cmd, CLI_TIMEOUT)?.into())
}

#[test]
fn gateway_init_writes_private_keys_0600_and_refuses_to_overwrite_without_force(
) -> anyhow::Result<()> {
    let wd = Workdir::new("cli-init")?;
    let dir = wd.join("gw");
    let out = gateway_init(&dir, &[])?;
    assert!(out.success(), "init failed: {}", out.stderr);
    for f in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "gateway.toml",
    ] {
        assert!(dir.join(f).is_file(), "init did not write {f}");
    }
    assert_eq!(mode(&dir.join("ca-key.pem"))?, 0o600, "ca-key.pem mode");
    assert_eq!(
        mode(&dir.join("server-key.pem"))?,
        0o600,
        "server-key.pem mode"
    );

    let ca_before = std::fs::read(dir.join("ca.pem"))?;
    let key_before = std::fs::read(dir.join("ca-key.pem"))?;
    let again = gateway_init(&dir, &[])?;
    assert!(
        !again.success(),
        "a second init overwrote the CA without --force"
    );
    assert_eq!(
        std::fs::read(dir.join("ca.pem"))?,
        ca_before,
        "ca.pem changed"
    );
    assert_eq!(
        std::fs::read(dir.join("ca-key.pem"))?,
        key_before,
        "ca-key.pem changed"
    );

    let forced = gateway_init(&dir, &["--force"])?;
    assert!(forced.success(), "init --force failed: {}", forced.stderr);
    assert_ne!(
        std::fs::read(dir.join("ca.pem"))?,
        ca_before,
        "--force did not replace the CA"
    );
    assert_eq!(
        mode(&dir.join("ca-key.pem"))?,
        0o600,
        "ca-key.pem mode after --force"
    );
    Ok(())
}

#[test]
fn unknown_key_in_gateway_toml_exits_3_naming_file_and_key() -> anyhow::Result<()> {
    let wd = Workdir::new("cli-gwkey")?;
    let gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_config("listen_adress", "127.0.0.1:1")?;
    for args in [
        &["appliances", "list"][..],
        &["serve", "--listen", "127.0.0.1:0"][..],
    ] {
        let out = gw.cli(args)?;
        assert_eq!(out.code(), Some(3), "{args:?}: stderr {}", out.stderr);
        assert!(
            out.stderr.contains("gateway.toml"),
            "{args:?}: stderr does not name the file: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("listen_adress"),
            "{args:?}: stderr does not name the key: {}",
            out.stderr
        );
    }
    Ok(())
}

#[test]
fn bad_duration_in_gateway_toml_names_the_key() -> anyhow::Result<()> {
    let wd = Workdir::new("cli-gwdur")?;
    let gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    gw.set_config("cert_lifetime", "ninety days")?;
    let out = gw.cli(&["appliances", "list"])?;
    assert_eq!(out.code(), Some(3), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("cert_lifetime"),
        "stderr does not name the key: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("gateway.toml"),
        "stderr does not name the file: {}",
        out.stderr
    );
    Ok(())
}

fn collector_settings(wd: &Workdir, gw: &Gateway) -> CollectorSettings {
    CollectorSettings {
        gateways: vec!["127.0.0.1:9".to_string()],
        ca_cert: gw.ca_cert_path(),
        state_dir: wd.join("state"),
        bootstrap_token: "unused".to_string(),
        interval: "1s".to_string(),
    }
}

#[test]
fn unknown_key_in_collector_toml_exits_3_naming_file_and_key() -> anyhow::Result<()> {
    let wd = Workdir::new("cli-colkey")?;
    let gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    let file = wd.join("collector.toml");
    let text = collector_settings(&wd, &gw).to_toml() + "intervall = \"5s\"\n";
    std::fs::write(&file, text)?;
    let out = collector_cli(&["run", "--config", file.to_str().unwrap_or_default()])?;
    assert_eq!(out.code(), Some(3), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("collector.toml"),
        "stderr does not name the file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("intervall"),
        "stderr does not name the key: {}",
        out.stderr
    );
    Ok(())
}

#[test]
fn bad_duration_in_collector_toml_names_the_key() -> anyhow::Result<()> {
    let wd = Workdir::new("cli-coldur")?;
    let gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    let file = wd.join("collector.toml");
    let mut s = collector_settings(&wd, &gw);
    s.interval = "every so often".to_string();
    std::fs::write(&file, s.to_toml())?;
    let out = collector_cli(&["run", "--config", file.to_str().unwrap_or_default()])?;
    assert_eq!(out.code(), Some(3), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("interval"),
        "stderr does not name the key: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("collector.toml"),
        "stderr does not name the file: {}",
        out.stderr
    );
    Ok(())
}

#[test]
fn collector_collect_json_reports_inventory_and_metrics_of_this_host() -> anyhow::Result<()> {
    let out = collector_cli(&["collect", "--json"])?;
    assert!(out.success(), "collect --json failed: {}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let inv = &v["inventory"];
    for key in ["hostname", "os_name", "kernel_version"] {
        assert!(
            inv[key].as_str().is_some_and(|s| !s.is_empty()),
            "inventory.{key} is empty: {inv}"
        );
    }
    assert!(
        inv["cpu_count"].as_u64().unwrap_or(0) > 0,
        "cpu_count: {inv}"
    );
    assert!(
        inv["memory_total_bytes"].as_u64().unwrap_or(0) > 0,
        "memory_total_bytes: {inv}"
    );
    for key in ["disks", "filesystems", "nics"] {
        assert!(
            inv[key].is_array(),
            "inventory.{key} is not an array: {inv}"
        );
    }
    assert!(
        inv["nics"].as_array().is_some_and(|a| !a.is_empty()),
        "no NICs (not even lo): {inv}"
    );
    let m = &v["metrics"];
    assert!(
        m["uptime_secs"].as_u64().unwrap_or(0) > 0,
        "uptime_secs: {m}"
    );
    assert_eq!(
        m["load_avg"].as_array().map(Vec::len),
        Some(3),
        "load_avg: {m}"
    );
    // And it parses as the wire types.
    let _: outpost_proto::HostInventory = serde_json::from_value(inv.clone())?;
    let _: outpost_proto::HostMetrics = serde_json::from_value(m.clone())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliances_list_json_is_an_array_of_id_state_customer_last_seen() -> anyhow::Result<()> {
    let wd = Workdir::new("cli-list")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    assert_eq!(
        gw.list_json()?,
        serde_json::json!([]),
        "a fresh gateway lists appliances"
    );
    let token = gw.token_create("list-customer", false, None, None)?;
    let mut app = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    let id = app.enroll_ok(&token).await?.id;

    let list = gw.list_json()?;
    let arr = list.as_array().expect("appliances list --json is an array");
    assert_eq!(arr.len(), 1, "{list}");
    let a = &arr[0];
    for key in [
        "id",
        "state",
        "customer",
        "last_seen",
        "hostname",
        "enrolled_at",
    ] {
        assert!(a.get(key).is_some(), "entry lacks {key}: {a}");
    }
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["state"], "pending");
    assert_eq!(a["customer"], "list-customer");
    assert!(
        a["last_seen"].is_null() || a["last_seen"].is_string(),
        "last_seen: {a}"
    );
    assert!(a["enrolled_at"].is_string(), "enrolled_at: {a}");

    // The table form names the appliance too.
    let table = gw.cli_ok(&["appliances", "list"])?;
    assert!(table.contains(&id), "table does not list {id}: {table}");
    Ok(())
}

#[test]
fn unknown_appliance_id_exits_4() -> anyhow::Result<()> {
    let wd = Workdir::new("cli-notfound")?;
    let gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    for args in [
        &["appliances", "show", "ap-does-not-exist", "--json"][..],
        &["appliances", "approve", "ap-does-not-exist"][..],
        &["appliances", "revoke", "ap-does-not-exist"][..],
    ] {
        let out = gw.cli(args)?;
        assert_eq!(out.code(), Some(4), "{args:?}: stderr {}", out.stderr);
    }
    Ok(())
}

#[test]
fn token_create_prints_the_token_alone() -> anyhow::Result<()> {
    let wd = Workdir::new("cli-token")?;
    let gw = Gateway::init_loopback(&wd.subdir("gw")?)?;
    let out = gw.cli_ok(&["token", "create", "--customer", "acme-corp"])?;
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout should hold the token alone: {out:?}"
    );
    assert!(!lines[0].contains(' '), "token contains a space: {out:?}");
    let other = gw.token_create("acme-corp", false, None, None)?;
    assert_ne!(lines[0].trim(), other, "two tokens are equal");
    Ok(())
}
