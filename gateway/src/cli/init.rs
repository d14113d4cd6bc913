//! `outpost-gateway init`.

use std::path::PathBuf;

use super::CliError;

/// Create a CA, a server certificate and gateway.toml in a directory.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create the files in (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Name or IP address appliances use to reach this gateway; repeat for several.
    #[arg(long = "san", value_name = "NAME", required = true)]
    pub sans: Vec<String>,
    /// Replace an existing CA (every appliance must then enrol again).
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: &InitArgs) -> Result<(), CliError> {
    let config = outpost_gateway::init_dir(&a.dir, &a.sans, a.force)?;
    println!(
        "created the Outpost CA and server certificate in {}",
        a.dir.display()
    );
    println!(
        "  CA certificate (give to appliances): {}",
        a.dir.join("ca.pem").display()
    );
    println!(
        "  CA key (mode 0600, keep secret):     {}",
        a.dir.join("ca-key.pem").display()
    );
    println!(
        "  config:                              {}",
        config.display()
    );
    println!("next: outpost-gateway serve --config {}", config.display());
    Ok(())
}
