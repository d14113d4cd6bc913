//! `outpost-gateway commands`.

use outpost_gateway::store::now_ms;
use serde_json::{json, Value};

use super::{open, rfc3339, rfc3339_json, runtime, CliError, ConfigArg};

/// Command queue commands.
#[derive(Debug, clap::Subcommand)]
pub enum CommandsCmd {
    /// Queue a command; it reaches the appliance through its long-poll. Prints the id.
    Send {
        /// Appliance id (ap-…).
        id: String,
        /// Command kind, e.g. `ping`.
        kind: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
    },
    /// List an appliance's commands and their results.
    List {
        /// Appliance id (ap-…).
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: CommandsCmd) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        match c {
            CommandsCmd::Send {
                id,
                kind,
                config,
                args,
            } => {
                let args: Value = serde_json::from_str(&args)
                    .map_err(|e| CliError::Input(format!("--args is not JSON: {e}")))?;
                if !args.is_object() {
                    return Err(CliError::Input("--args must be a JSON object".into()));
                }
                if kind.is_empty()
                    || kind.len() > 64
                    || !kind
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(CliError::Input(format!(
                        "command kind {kind:?} must be 1-64 of [A-Za-z0-9_-]"
                    )));
                }
                let (_, store) = open(&config.config).await?;
                let cmd = store.queue_command(&id, &kind, &args, now_ms()).await?;
                store.close().await;
                println!("{cmd}");
                Ok(())
            }
            CommandsCmd::List { id, config, json } => {
                let (_, store) = open(&config.config).await?;
                let list = store.list_commands(&id).await?;
                store.close().await;
                if json {
                    let arr: Vec<Value> = list
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id, "kind": c.kind, "args": c.args, "state": c.state,
                                "output": c.output, "created_at": rfc3339(c.created_at),
                                "completed_at": rfc3339_json(c.completed_at),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
                } else {
                    println!("{:<17} {:<10} {:<9} OUTPUT", "ID", "KIND", "STATE");
                    for c in &list {
                        println!(
                            "{:<17} {:<10} {:<9} {}",
                            c.id,
                            c.kind,
                            c.state,
                            c.output.as_deref().unwrap_or("")
                        );
                    }
                }
                Ok(())
            }
        }
    })
}
