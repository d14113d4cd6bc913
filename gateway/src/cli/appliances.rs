//! `outpost-gateway appliances`.

use outpost_gateway::api::approve_with;
use outpost_gateway::ca::Ca;
use outpost_gateway::store::{
    now_ms, AlertRow, ApplianceDetail, HealthChangeRow, HealthStateRow, StoredRecord, VmRow,
};
use outpost_proto::ApplianceState;
use serde_json::{json, Value};

use super::{open, rfc3339, rfc3339_json, runtime, CliError, ConfigArg};

/// Appliance commands.
#[derive(Debug, clap::Subcommand)]
pub enum AppliancesCmd {
    /// List every appliance.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one appliance: state, certificate, last contact, inventory, latest metrics,
    /// guests, the health tree, open alerts and the latest values of the packs' collect
    /// rules.
    Show {
        /// Appliance id (ap-…).
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the records stored for an appliance in record id order: rid, seq, kind,
    /// collection time.
    Records {
        /// Appliance id (ap-…).
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Only records of this kind.
        #[arg(long, value_name = "KIND", value_parser = ["inventory", "metrics", "agent", "vm_inventory", "vm_metrics", "health", "alert", "pack_status", "collected"])]
        kind: Option<String>,
        /// At most this many (the lowest record ids).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// List an appliance's alerts: the open ones (newest raise first), or with `--all` also
    /// the resolved ones, with when each was raised and resolved and why.
    Alerts {
        /// Appliance id (ap-…).
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Include resolved alerts.
        #[arg(long)]
        all: bool,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List an appliance's health state changes as the box judged them, oldest first:
    /// time, object, monitor (`health` = the object's rolled-up state), from → to.
    HealthHistory {
        /// Appliance id (ap-…).
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// At most this many (the newest).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: i64,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending appliance: the CA signs its certificate.
    Approve {
        /// Appliance id (ap-…).
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke an appliance: its certificate is refused from the next request on (the command
    /// returns after the gateways' certificate caches have dropped it, about 2 s).
    Revoke {
        /// Appliance id (ap-…).
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask an appliance's updater to restart now (into its staged slot, if any), outside
    /// the maintenance window; delivered through its long-poll. Prints the command id.
    Restart {
        /// Appliance id (ap-…); must be approved.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(c: AppliancesCmd) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        match c {
            AppliancesCmd::List { config, json } => {
                let (_, store) = open(&config.config).await?;
                let list = store.list_appliances().await?;
                store.close().await;
                if json {
                    let arr: Vec<Value> = list
                        .iter()
                        .map(|a| {
                            json!({
                                "id": a.id, "state": a.state, "customer": a.customer,
                                "hostname": a.hostname, "enrolled_at": rfc3339(a.enrolled_at),
                                "last_seen": rfc3339_json(a.last_seen),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
                } else {
                    println!(
                        "{:<16} {:<9} {:<20} {:<24} LAST SEEN",
                        "ID", "STATE", "CUSTOMER", "HOSTNAME"
                    );
                    for a in &list {
                        let seen = a.last_seen.map_or_else(|| "never".to_string(), rfc3339);
                        println!(
                            "{:<16} {:<9} {:<20} {:<24} {seen}",
                            a.id,
                            a.state.as_str(),
                            a.customer,
                            a.hostname
                        );
                    }
                    if list.is_empty() {
                        println!("(no appliances yet)");
                    }
                }
                Ok(())
            }
            AppliancesCmd::Show { id, config, json } => {
                let (_, store) = open(&config.config).await?;
                let d = store.appliance(&id).await?;
                let vms = store.vms(&id).await?;
                let states = store.health_states(&id).await?;
                let alerts = store.alerts(&id, true).await?;
                let packs = store.pack_status(&id).await?;
                let update = store.update_state(&id).await?;
                let window = store.effective_window(&id).await?;
                let collected = store.collected(&id, COLLECTED_SHOWN).await?;
                store.close().await;
                let mut v = detail_json(&d);
                v["vms"] = Value::Array(vms.iter().map(vm_json).collect());
                v["health"] = health_tree_json(&states);
                v["open_alerts"] = Value::Array(alerts.iter().map(alert_json).collect());
                v["packs"] = super::packs::pack_status_json(packs.as_ref());
                v["update"] = super::windows::update_json(update.as_ref(), window.as_ref());
                v["collected"] = latest_collected_json(
                    collected
                        .iter()
                        .map(|c| (&c.rule, &c.object, &c.metric, c.value, c.at)),
                );
                if json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    print_detail(&v);
                }
                Ok(())
            }
            AppliancesCmd::Records {
                id,
                config,
                json,
                kind,
                limit,
            } => {
                let (_, store) = open(&config.config).await?;
                let rows = store.list_records(&id, kind.as_deref(), limit).await;
                store.close().await;
                let rows = rows?;
                if json {
                    let arr: Vec<Value> = rows.iter().map(record_json).collect();
                    println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
                } else {
                    println!("{:>12} {:>10} {:<10} COLLECTED AT", "RID", "SEQ", "KIND");
                    for r in &rows {
                        let rid = r.rid.map_or_else(|| "-".to_string(), |x| x.to_string());
                        println!(
                            "{rid:>12} {:>10} {:<10} {}",
                            r.seq,
                            r.kind,
                            rfc3339(r.collected_at)
                        );
                    }
                    if rows.is_empty() {
                        println!("(no records stored)");
                    }
                }
                Ok(())
            }
            AppliancesCmd::Alerts {
                id,
                config,
                all,
                json,
            } => {
                let (_, store) = open(&config.config).await?;
                let found = store.appliance(&id).await.map(|_| ());
                let rows = store.alerts(&id, !all).await;
                store.close().await;
                found?;
                print_alerts(&rows?, all, json);
                Ok(())
            }
            AppliancesCmd::HealthHistory {
                id,
                config,
                limit,
                json,
            } => {
                let (_, store) = open(&config.config).await?;
                let found = store.appliance(&id).await.map(|_| ());
                let rows = store.health_changes(&id, limit.max(0)).await;
                store.close().await;
                found?;
                print_health_history(&rows?, json);
                Ok(())
            }
            AppliancesCmd::Approve { id, config } => {
                let (cfg, store) = open(&config.config).await?;
                let d = store.appliance(&id).await?;
                if d.summary.state == ApplianceState::Approved {
                    println!("{id} is already approved");
                    return Ok(());
                }
                let ca = Ca::load(&cfg.ca_cert, &cfg.ca_key)?;
                approve_with(&store, &ca, &cfg, &id, &d.csr_pem)
                    .await
                    .map_err(|e| match e {
                        outpost_gateway::api::ApproveError::Store(s) => CliError::Store(s),
                        other => CliError::Runtime(other.to_string()),
                    })?;
                store.close().await;
                tracing::info!(appliance = %id, "approved");
                println!("approved {id}; it receives its certificate on its next poll");
                Ok(())
            }
            AppliancesCmd::Revoke { id, config } => {
                let (_, store) = open(&config.config).await?;
                store.revoke(&id, now_ms()).await?;
                store.close().await;
                // Running gateways may accept the certificate from their cache for up to
                // this long; once it has passed, every one of them refuses it.
                tokio::time::sleep(outpost_gateway::cert_cache::REVOCATION_BOUND).await;
                tracing::info!(appliance = %id, "revoked");
                println!("revoked {id}; its certificate is refused from its next request");
                Ok(())
            }
            AppliancesCmd::Restart { id, config } => {
                let (_, store) = open(&config.config).await?;
                let cmd = store.queue_restart(&id, now_ms()).await;
                store.close().await;
                let cmd = cmd?;
                tracing::info!(appliance = %id, command = %cmd, "restart queued");
                println!("{cmd}");
                Ok(())
            }
        }
    })
}

/// How many of the newest collected values `show` looks at.
const COLLECTED_SHOWN: i64 = 1000;

/// The newest value per rule, object and metric, sorted by object, metric and rule.
fn latest_collected_json<'a>(
    rows: impl Iterator<Item = (&'a String, &'a String, &'a String, f64, i64)>,
) -> Value {
    let mut latest: std::collections::BTreeMap<(&str, &str, &str), (f64, i64)> =
        std::collections::BTreeMap::new();
    for (rule, object, metric, value, at) in rows {
        let slot = latest
            .entry((object.as_str(), metric.as_str(), rule.as_str()))
            .or_insert((value, at));
        if at >= slot.1 {
            *slot = (value, at);
        }
    }
    Value::Array(
        latest
            .into_iter()
            .map(|((object, metric, rule), (value, at))| {
                json!({
                    "object": object, "metric": metric, "rule": rule,
                    "value": value, "at": rfc3339(at),
                })
            })
            .collect(),
    )
}

fn parse_or_null(s: Option<&String>) -> Value {
    s.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

fn record_json(r: &StoredRecord) -> Value {
    json!({
        "rid": r.rid,
        "seq": r.seq,
        "kind": r.kind,
        "collected_at": rfc3339(r.collected_at),
        "collected_at_ms": r.collected_at,
    })
}

fn detail_json(d: &ApplianceDetail) -> Value {
    let s = &d.summary;
    let agent = parse_or_null(d.agent_json.as_ref());
    json!({
        "id": s.id,
        "state": s.state,
        "customer": s.customer,
        "hostname": s.hostname,
        "enrolled_at": rfc3339(s.enrolled_at),
        "approved_at": rfc3339_json(d.approved_at),
        "revoked_at": rfc3339_json(d.revoked_at),
        "last_seen": rfc3339_json(s.last_seen),
        "cert_serial": d.certificate.as_ref().map(|c| c.0.clone()),
        "cert_not_after": rfc3339_json(d.certificate.as_ref().map(|c| c.1)),
        "last_seq": d.last_seq,
        "batches": d.batches,
        "records": d.records,
        "inventory": parse_or_null(d.inventory_json.as_ref()),
        "inventory_at": rfc3339_json(d.inventory_at),
        "latest_metrics": parse_or_null(d.metrics_json.as_ref()),
        "latest_metrics_at": rfc3339_json(d.metrics_at),
        "last_rid": d.last_rid,
        "dropped_records": d.dropped_records,
        "spool_corrupt_records": d.spool_corrupt_records,
        "current_gateway": agent["current_gateway"].clone(),
        "reconnects": agent["reconnects"].clone(),
        "spool_depth": agent["spool_depth"].clone(),
        "spool_bytes": agent["spool_bytes"].clone(),
        "send_latency_ms": agent["send_latency_ms"].clone(),
        "agent_at": rfc3339_json(d.agent_at),
    })
}

fn vm_json(r: &VmRow) -> Value {
    let inv: Value = serde_json::from_str(&r.inventory_json).unwrap_or(Value::Null);
    let metrics = parse_or_null(r.metrics_json.as_ref());
    json!({
        "key": r.key,
        "name": r.name,
        "uuid": inv["uuid"],
        "source": inv["source"],
        "vcpus": inv["vcpus"],
        "memory_bytes": inv["memory_bytes"],
        "disks": inv["disks"],
        "nics": inv["nics"],
        "state": metrics["state"],
        "added_at": rfc3339(r.added_at),
        "changed_at": rfc3339(r.changed_at),
        "metrics": metrics,
        "metrics_at": rfc3339_json(r.metrics_at),
    })
}

/// The rolled-up state per object (monitor `health`) with its monitors, host first.
fn health_tree_json(states: &[HealthStateRow]) -> Value {
    let mut objects: std::collections::BTreeMap<(bool, &str), Value> =
        std::collections::BTreeMap::new();
    for r in states {
        let (class, id) = r.object.split_once('/').unwrap_or((r.object.as_str(), ""));
        let o = objects
            .entry((class != "host", r.object.as_str()))
            .or_insert_with(|| {
                json!({"object": r.object, "class": class, "id": id, "state": "unknown",
                   "since": Value::Null, "monitors": []})
            });
        if r.monitor == outpost_proto::health::OVERALL {
            o["state"] = json!(r.state);
            o["since"] = json!(rfc3339(r.since));
        } else if let Some(m) = o["monitors"].as_array_mut() {
            m.push(json!({"monitor": r.monitor, "state": r.state, "since": rfc3339(r.since)}));
        }
    }
    Value::Array(objects.into_values().collect())
}

fn alert_json(a: &AlertRow) -> Value {
    json!({
        "id": a.id,
        "severity": a.severity,
        "object": a.object,
        "monitor": a.monitor,
        "rule": a.rule,
        "message": a.message,
        "raised_at": rfc3339(a.raised_at),
        "resolved_at": rfc3339_json(a.resolved_at),
    })
}

fn print_alerts(rows: &[AlertRow], all: bool, json: bool) {
    if json {
        let arr: Vec<Value> = rows
            .iter()
            .map(|a| {
                let mut v = alert_json(a);
                v["resolve_reason"] = json!(a.resolve_reason);
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
        return;
    }
    println!(
        "{:<8} {:<28} {:<20} {:<20} {:<12} MESSAGE",
        "SEVERITY", "OBJECT", "RAISED", "RESOLVED", "WHY"
    );
    for a in rows {
        println!(
            "{:<8} {:<28} {:<20} {:<20} {:<12} {}",
            a.severity,
            a.object,
            rfc3339(a.raised_at),
            a.resolved_at.map_or_else(|| "open".to_string(), rfc3339),
            a.resolve_reason.as_deref().unwrap_or("-"),
            a.message
        );
    }
    if rows.is_empty() {
        println!(
            "{}",
            if all {
                "(no alerts)"
            } else {
                "(no open alerts)"
            }
        );
    }
}

fn print_health_history(rows: &[HealthChangeRow], json: bool) {
    if json {
        let arr: Vec<Value> = rows
            .iter()
            .map(|c| {
                json!({"at": rfc3339(c.at), "at_ms": c.at, "object": c.object,
                       "monitor": c.monitor, "from": c.from, "to": c.to})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
        return;
    }
    println!("{:<20} {:<32} {:<24} CHANGE", "AT", "OBJECT", "MONITOR");
    for c in rows {
        println!(
            "{:<20} {:<32} {:<24} {} -> {}",
            rfc3339(c.at),
            c.object,
            c.monitor,
            c.from.as_deref().unwrap_or("(new)"),
            c.to
        );
    }
    if rows.is_empty() {
        println!("(no health changes stored)");
    }
}

fn print_box_health(v: &Value) {
    let text = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    let vms = v["vms"].as_array().map_or(&[][..], Vec::as_slice);
    if vms.is_empty() {
        println!("vms             (none reported)");
    } else {
        println!("vms             {}", vms.len());
        for vm in vms {
            println!(
                "  {:<20} {:<9} {} vcpu  {} MiB  {}  {}",
                text(&vm["name"]),
                text(&vm["state"]),
                text(&vm["vcpus"]),
                vm["memory_bytes"].as_u64().unwrap_or(0) / (1024 * 1024),
                text(&vm["source"]),
                text(&vm["uuid"]),
            );
        }
    }
    let objects = v["health"].as_array().map_or(&[][..], Vec::as_slice);
    if objects.is_empty() {
        println!("health          (none reported)");
    } else {
        println!("health");
        for o in objects {
            let indent = if o["class"] == "host" { "  " } else { "    " };
            println!(
                "{indent}{:<28} {:<13} since {}",
                text(&o["object"]),
                text(&o["state"]),
                text(&o["since"])
            );
            for m in o["monitors"].as_array().map_or(&[][..], Vec::as_slice) {
                println!(
                    "{indent}  - {:<24} {}",
                    text(&m["monitor"]),
                    text(&m["state"])
                );
            }
        }
    }
    for line in super::packs::pack_status_lines(&v["packs"]) {
        println!("{line}");
    }
    let collected = v["collected"].as_array().map_or(&[][..], Vec::as_slice);
    if !collected.is_empty() {
        println!("collected       {} value(s), latest each", collected.len());
        for c in collected {
            println!(
                "  {:<28} {:<20} {}  ({}, {})",
                text(&c["object"]),
                text(&c["metric"]),
                text(&c["value"]),
                text(&c["rule"]),
                text(&c["at"])
            );
        }
    }
    let alerts = v["open_alerts"].as_array().map_or(&[][..], Vec::as_slice);
    if alerts.is_empty() {
        println!("open alerts     (none)");
    } else {
        println!("open alerts     {}", alerts.len());
        for a in alerts {
            println!(
                "  {:<8} {:<28} {}  (raised {})",
                text(&a["severity"]),
                text(&a["object"]),
                text(&a["message"]),
                text(&a["raised_at"])
            );
        }
    }
}

fn print_detail(v: &Value) {
    let s = |k: &str| match &v[k] {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    for k in [
        "id",
        "state",
        "customer",
        "hostname",
        "enrolled_at",
        "approved_at",
        "revoked_at",
        "last_seen",
        "cert_serial",
        "cert_not_after",
        "last_seq",
        "batches",
        "records",
        "last_rid",
    ] {
        println!("{k:<15} {}", s(k));
    }
    // The collector's self-metrics, under the same names as in --json.
    if v["agent_at"].is_null() {
        println!("self-metrics    (none received yet)");
    } else {
        println!("self-metrics    (reported {})", s("agent_at"));
    }
    for k in [
        "current_gateway",
        "reconnects",
        "spool_depth",
        "spool_bytes",
        "send_latency_ms",
        "dropped_records",
        "spool_corrupt_records",
    ] {
        println!("  {k:<21} {}", s(k));
    }
    let inv = &v["inventory"];
    if inv.is_null() {
        println!("inventory       (none received yet)");
    } else {
        println!("inventory       (collected {})", s("inventory_at"));
        println!(
            "  os            {} {}",
            inv["os_name"].as_str().unwrap_or("?"),
            inv["os_version"].as_str().unwrap_or("")
        );
        println!(
            "  kernel        {}",
            inv["kernel_version"].as_str().unwrap_or("?")
        );
        println!(
            "  cpus          {} x {}",
            inv["cpu_count"],
            inv["cpu_brand"].as_str().unwrap_or("?")
        );
        println!(
            "  memory        {} MiB",
            inv["memory_total_bytes"].as_u64().unwrap_or(0) / (1024 * 1024)
        );
        println!(
            "  disks         {}",
            inv["disks"].as_array().map_or(0, Vec::len)
        );
        println!(
            "  filesystems   {}",
            inv["filesystems"].as_array().map_or(0, Vec::len)
        );
        println!(
            "  nics          {}",
            inv["nics"].as_array().map_or(0, Vec::len)
        );
    }
    let m = &v["latest_metrics"];
    if m.is_null() {
        println!("metrics         (none received yet)");
    } else {
        println!("metrics         (collected {})", s("latest_metrics_at"));
        println!("  uptime        {} s", m["uptime_secs"]);
        println!("  load          {}", m["load_avg"]);
        println!(
            "  cpu           {:.1} %",
            m["cpu_usage_percent"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  memory used   {} MiB",
            m["memory_used_bytes"].as_u64().unwrap_or(0) / (1024 * 1024)
        );
        println!("  processes     {}", m["process_count"]);
    }
    print_box_health(v);
    super::windows::print_update(&v["update"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(object: &str, monitor: &str, state: &str) -> HealthStateRow {
        HealthStateRow {
            object: object.into(),
            monitor: monitor.into(),
            state: state.into(),
            since: 0,
        }
    }

    #[test]
    fn health_tree_puts_the_host_first_with_its_monitors() {
        let tree = health_tree_json(&[
            row("filesystem//", "fs-free", "warning"),
            row("filesystem//", "health", "warning"),
            row("vm/a", "health", "healthy"),
            row("host/box", "cpu", "healthy"),
            row("host/box", "health", "warning"),
        ]);
        let objects = tree.as_array().unwrap();
        let names: Vec<_> = objects
            .iter()
            .map(|o| o["object"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["host/box", "filesystem//", "vm/a"]);
        assert_eq!(objects[0]["state"], "warning");
        assert_eq!(objects[0]["monitors"][0]["monitor"], "cpu");
        assert_eq!(objects[1]["class"], "filesystem");
        assert_eq!(objects[1]["id"], "/");
        assert_eq!(objects[2]["monitors"].as_array().unwrap().len(), 0);
    }
}
