//! `outpost-collector status --config FILE [--json]`.

use std::io::Write;

use outpost_collector::status;

use super::{CliError, ConfigArg};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Reads the state directory and prints what it says.
pub fn run(args: &StatusArgs) -> Result<(), CliError> {
    let report = status::gather(&args.config.config)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report).map_err(CliError::EncodeJson)?;
        s.push('\n');
        s
    } else {
        status::render_text(&report)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(CliError::WriteStdout)
}
