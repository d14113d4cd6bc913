//! `outpost-gateway packs`: import, list and assign health packs.
//!
//! Import checks a pack with `outpost-health`, the same parser and validator the collector
//! applies, on its own and together with the built-in pack: a pack the gateway accepts is a
//! pack a collector applies. A refused pack is reported with file, line and reason for
//! every problem (exit code 3) and nothing is stored.

use std::path::PathBuf;

use outpost_gateway::store::{now_ms, PackScope, PackStatusRow};
use serde_json::{json, Value};

use super::{open, rfc3339, runtime, CliError, ConfigArg};

/// Health pack commands.
#[derive(Debug, clap::Subcommand)]
pub enum PacksCmd {
    /// Validate a pack file and store it under its name (a re-import replaces it).
    Import {
        /// The pack (TOML).
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the stored packs with their versions and assignments.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Assign a stored pack to every appliance of a customer, or to one appliance.
    Assign {
        /// Pack name.
        name: String,
        /// Customer whose appliances get the pack.
        #[arg(
            long,
            conflicts_with = "appliance",
            required_unless_present = "appliance"
        )]
        customer: Option<String>,
        /// Appliance (ap-…) that gets the pack.
        #[arg(long)]
        appliance: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Reads and checks a pack file: its name and source, or every problem found.
fn check_pack_file(file: &std::path::Path) -> Result<(String, String), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("failed to read pack {}: {e}", file.display())))?;
    let shown = file.display().to_string();
    let invalid =
        |e: outpost_health::PackErrors| CliError::Input(format!("pack {shown} refused:\n{e}"));
    let pack = outpost_health::parse_pack(&shown, &text).map_err(invalid)?;
    outpost_health::pack_set_with_default(vec![pack.clone()]).map_err(invalid)?;
    Ok((pack.name, text))
}

pub fn run(c: PacksCmd) -> Result<(), CliError> {
    match c {
        PacksCmd::Import { file, config } => {
            let (name, text) = check_pack_file(&file)?;
            runtime()?.block_on(async {
                let (_, store) = open(&config.config).await?;
                let done = store.import_pack(&name, &text, now_ms()).await;
                store.close().await;
                let done = done?;
                tracing::info!(pack = %name, version = done.version, changed = done.changed, "pack imported");
                if done.changed {
                    println!("imported pack {name} (version {})", done.version);
                } else {
                    println!("pack {name} unchanged (version {})", done.version);
                }
                Ok(())
            })
        }
        PacksCmd::List { config, json } => runtime()?.block_on(async {
            let (_, store) = open(&config.config).await?;
            let packs = store.list_packs().await;
            store.close().await;
            let packs = packs?;
            if json {
                let arr: Vec<Value> = packs
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "version": p.version,
                            "sha256": p.sha256,
                            "imported_at": rfc3339(p.imported_at),
                            "assigned": p.assigned.iter().map(|(scope, target)| {
                                json!({"scope": scope, "target": target})
                            }).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
            } else if packs.is_empty() {
                println!("(no packs yet)");
            } else {
                println!(
                    "{:<32} {:>7}  {:<20}  ASSIGNED",
                    "NAME", "VERSION", "IMPORTED"
                );
                for p in &packs {
                    let assigned: Vec<String> = p
                        .assigned
                        .iter()
                        .map(|(scope, target)| format!("{scope}:{target}"))
                        .collect();
                    println!(
                        "{:<32} {:>7}  {:<20}  {}",
                        p.name,
                        p.version,
                        rfc3339(p.imported_at),
                        if assigned.is_empty() {
                            "-".to_string()
                        } else {
                            assigned.join(",")
                        }
                    );
                }
            }
            Ok(())
        }),
        PacksCmd::Assign {
            name,
            customer,
            appliance,
            config,
        } => {
            let (scope, target) = match (customer, appliance) {
                (Some(c), None) => (PackScope::Customer, c),
                (None, Some(a)) => (PackScope::Appliance, a),
                _ => {
                    return Err(CliError::Input(
                        "give exactly one of --customer and --appliance".into(),
                    ))
                }
            };
            runtime()?.block_on(async {
                let (_, store) = open(&config.config).await?;
                let done = store.assign_pack(&name, scope, &target, now_ms()).await;
                store.close().await;
                let new = done?;
                tracing::info!(pack = %name, scope = scope.as_str(), target = %target, new, "pack assigned");
                println!(
                    "pack {name} {} {}:{target}",
                    if new { "assigned to" } else { "was already assigned to" },
                    scope.as_str()
                );
                Ok(())
            })
        }
    }
}

/// The pack status an appliance reported, for `appliances show --json` (`null` before its
/// first report).
#[must_use]
pub fn pack_status_json(row: Option<&PackStatusRow>) -> Value {
    row.map_or(Value::Null, |r| {
        json!({
            "etag": r.status.etag,
            "packs": r.status.packs,
            "applied": r.status.applied,
            "error": r.status.error,
            "conflicts": r.status.conflicts,
            "reported_at": rfc3339(r.reported_at),
        })
    })
}

/// One line for `appliances show`: `applied ETAG` or `refused: REASON`, then one line per
/// override conflict.
#[must_use]
pub fn pack_status_lines(v: &Value) -> Vec<String> {
    if v.is_null() {
        return vec!["Packs: (no status reported yet)".to_string()];
    }
    let etag = v["etag"].as_str().unwrap_or("(built-in only)");
    let packs: Vec<&str> = v["packs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let names = if packs.is_empty() {
        String::new()
    } else {
        format!(" [{}]", packs.join(", "))
    };
    let mut out = Vec::new();
    if v["applied"].as_bool().unwrap_or(false) {
        out.push(format!("Packs: applied {etag}{names}"));
    } else {
        let why = v["error"].as_str().unwrap_or("(no reason given)");
        let mut lines = why.lines();
        out.push(format!(
            "Packs: refused: {} (delivered {etag}{names}; the last good packs stay in force)",
            lines.next().unwrap_or("")
        ));
        out.extend(lines.map(|l| format!("  {l}")));
    }
    let conflicts = v["conflicts"].as_array().map_or(&[][..], Vec::as_slice);
    if !conflicts.is_empty() {
        out.push(format!("Override conflicts: {}", conflicts.len()));
        out.extend(
            conflicts
                .iter()
                .map(|c| format!("  {}", c.as_str().unwrap_or(""))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::health::PackStatus;

    #[test]
    fn pack_status_prints_applied_refused_and_conflicts() {
        assert_eq!(
            pack_status_lines(&pack_status_json(None)),
            ["Packs: (no status reported yet)"]
        );
        let row = PackStatusRow {
            status: PackStatus {
                etag: Some("\"e1\"".into()),
                packs: vec!["acme.lab".into()],
                applied: true,
                error: None,
                conflicts: vec![
                    "fs.free on filesystem//data: warning = 30 from a/x over a/y=50".into(),
                ],
            },
            reported_at: 0,
        };
        let lines = pack_status_lines(&pack_status_json(Some(&row)));
        assert_eq!(
            lines,
            [
                "Packs: applied \"e1\" [acme.lab]",
                "Override conflicts: 1",
                "  fs.free on filesystem//data: warning = 30 from a/x over a/y=50",
            ]
        );
        let refused = PackStatusRow {
            status: PackStatus {
                applied: false,
                error: Some("gateway:b:3: first\ngateway:b:9: second".into()),
                conflicts: Vec::new(),
                ..row.status
            },
            reported_at: 0,
        };
        let lines = pack_status_lines(&pack_status_json(Some(&refused)));
        assert!(
            lines[0].starts_with("Packs: refused: gateway:b:3: first (delivered \"e1\""),
            "{lines:?}"
        );
        assert_eq!(lines[1], "  gateway:b:9: second");
        assert_eq!(lines.len(), 2);
    }
}
