//! From the centre to the box over the appliance's own connection: commands through the
//! long-poll (answered by the real collector, and by a test appliance), and the collector
//! config with its ETag.

use std::time::{Duration, Instant};

use outpost_proto::{paths, CommandList};
use outpost_tests::fixtures::{
    approved_appliance, wait_show, COLLECTOR_TIMEOUT, ENROLL_TIMEOUT, POLL,
};
use outpost_tests::gateway::count;
use outpost_tests::proc::{run_bounded, CLI_TIMEOUT};
use outpost_tests::{wait_for, Collector, Gateway, Workdir};
use serde_json::{json, Value};

/// The entry of `commands list --json` with id `cmd`, once `pred` holds for it.
fn wait_command(
    gw: &Gateway,
    appliance: &str,
    cmd: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    wait_for(what, COLLECTOR_TIMEOUT, POLL, || {
        let list = gw.commands_json(appliance)?;
        last = list.clone();
        Ok(list
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == cmd))
            .filter(|c| pred(c))
            .cloned())
    })
    .map_err(|e| e.context(format!("last `commands list {appliance} --json`: {last}")))
}

#[test]
fn ping_reaches_the_collector_through_the_long_poll_and_returns_pong() -> anyhow::Result<()> {
    let wd = Workdir::new("cmd-ping")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", true, None, None)?;
    let mut col = Collector::start_new(&wd.join("col"), &gw, &token, "1s")?;
    let id = col.enrollment_id(ENROLL_TIMEOUT)?;
    wait_show(
        &gw,
        &id,
        "the collector to store a batch",
        COLLECTOR_TIMEOUT,
        |v| count(v, "batches") >= 1,
    )?;

    let cmd = gw.command_send(&id, "ping")?;
    assert!(!cmd.is_empty(), "commands send printed no id");
    let done = wait_command(&gw, &id, &cmd, "the ping command to be done", |c| {
        c["state"] == "done"
    })?;
    assert_eq!(done["kind"], "ping", "{done}");
    assert_eq!(done["output"], "pong", "{done}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_for_a_command_queued_while_waiting() -> anyhow::Result<()> {
    let wd = Workdir::new("cmd-longpoll")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let id = app.id().expect("enrolled").to_string();

    // Nothing queued: a short poll answers with an empty list.
    let r = app.get(&format!("{}?wait=1s", paths::COMMANDS)).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    let empty: CommandList = serde_json::from_slice(&r.body)?;
    assert!(empty.commands.is_empty(), "{}", r.describe());

    // Queue a command one second into a 25 s poll; the poll must return with it early.
    let started = Instant::now();
    let config = gw.config_path();
    let bin = outpost_tests::bins::gateway()?;
    let id2 = id.clone();
    let queue = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        std::thread::sleep(Duration::from_secs(1));
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["commands", "send", &id2, "ping", "--config"])
            .arg(config);
        let out = run_bounded(cmd, CLI_TIMEOUT)?;
        anyhow::ensure!(out.status.success(), "commands send: {}", out.stderr);
        Ok(out.stdout.trim().to_string())
    });
    let r = app.get(&format!("{}?wait=25s", paths::COMMANDS)).await?;
    let elapsed = started.elapsed();
    let cmd_id = queue.await??;
    assert_eq!(r.status, 200, "{}", r.describe());
    let list: CommandList = serde_json::from_slice(&r.body)?;
    assert_eq!(list.commands.len(), 1, "{}", r.describe());
    assert_eq!(list.commands[0].id, cmd_id);
    assert_eq!(list.commands[0].kind, "ping");
    assert!(
        elapsed < Duration::from_secs(20),
        "the long-poll did not wake for the new command ({elapsed:?})"
    );

    let r = app
        .post_json(
            &paths::command_result(&cmd_id),
            &json!({"ok": true, "output": "pong"}),
        )
        .await?;
    assert!((200..300).contains(&r.status), "{}", r.describe());
    let done = wait_command(&gw, &id, &cmd_id, "the result to be stored", |c| {
        c["state"] == "done"
    })?;
    assert_eq!(done["output"], "pong", "{done}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_carries_an_etag_and_an_unchanged_config_answers_304() -> anyhow::Result<()> {
    let wd = Workdir::new("config-etag")?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let app = approved_appliance(&gw, "acme-corp").await?;
    let r = app.get(paths::CONFIG).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    let _: outpost_proto::CollectorConfigDoc = serde_json::from_slice(&r.body)?;
    let etag = r.etag.clone().expect("GET /v1/config carries an ETag");
    let again = app.get_if_none_match(paths::CONFIG, &etag).await?;
    assert_eq!(again.status, 304, "{}", again.describe());
    let other = app
        .get_if_none_match(paths::CONFIG, "\"something-else\"")
        .await?;
    assert_eq!(other.status, 200, "{}", other.describe());
    Ok(())
}
