//! `outpost-gateway token`.

use outpost_gateway::store::now_ms;

use super::{open, runtime, CliError, ConfigArg};

/// Bootstrap token commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a bootstrap token; prints the token alone on stdout (it is stored hashed and
    /// cannot be shown again).
    Create(CreateArgs),
}

/// Arguments of `token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Customer the enrolled appliances belong to.
    #[arg(long)]
    pub customer: String,
    /// How long the token can be used, e.g. 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    /// How many appliances may enrol with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub uses: u32,
    /// Approve enrolments made with this token at once, without an operator.
    #[arg(long)]
    pub auto_approve: bool,
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    outpost_proto::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(c: TokenCmd) -> Result<(), CliError> {
    match c {
        TokenCmd::Create(a) => {
            let customer = a.customer.trim();
            if customer.is_empty() || customer.len() > 200 {
                return Err(CliError::Input(
                    "--customer must be 1 to 200 characters".into(),
                ));
            }
            runtime()?.block_on(async {
                let (_, store) = open(&a.config.config).await?;
                let (id, token) = store
                    .create_token(customer, a.ttl, a.uses, a.auto_approve, now_ms())
                    .await?;
                store.close().await;
                tracing::info!(token_id = %id, customer, uses = a.uses, auto_approve = a.auto_approve, "bootstrap token created");
                println!("{token}");
                Ok(())
            })
        }
    }
}
