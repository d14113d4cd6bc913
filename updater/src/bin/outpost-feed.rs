//! `outpost-feed`: the vendor's feed publisher. Builds bundles and keeps a TUF repository
//! (root, targets, snapshot, timestamp) whose `repo/` directory the gateway serves under
//! `/v1/feed/`. See docs/feed.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outpost_updater::{bundle, feed};

/// Publish Outpost update bundles as a signed TUF feed.
///
/// A feed directory DIR holds the private keys (DIR/keys, mode 0600), the root to ship in
/// images (DIR/root.json) and the repository to serve (DIR/repo: point the gateway's
/// `[feed] dir` at it). Bundles are TUF targets; their channels ("testing", "stable") are
/// the target's custom metadata, re-signed on promote.
#[derive(Debug, Parser)]
#[command(
    name = "outpost-feed",
    version,
    after_help = "Exit codes: 0 done; 2 refused input (duplicate or unknown version, bad \
                  channel, bundle/version mismatch, feed already there); 1 any other failure."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a feed: generate the keys of the four roles and sign the root and an empty
    /// targets/snapshot/timestamp set.
    Init(InitArgs),
    /// Add a bundle as a new version on a channel (a version can be added only once).
    Add {
        /// Feed directory.
        dir: PathBuf,
        /// Bundle file (made with `outpost-feed bundle`).
        bundle: PathBuf,
        /// Semantic version; must match the bundle's manifest.
        #[arg(long)]
        version: String,
        /// First channel of the bundle.
        #[arg(long, default_value = "testing")]
        channel: String,
    },
    /// Put an existing version on another channel too (e.g. --to stable).
    Promote {
        /// Feed directory.
        dir: PathBuf,
        /// Version to promote.
        version: String,
        /// Channel to add.
        #[arg(long)]
        to: String,
    },
    /// Re-sign the short-lived timestamp (run it more often than its expiry, e.g. hourly).
    Refresh {
        /// Feed directory.
        dir: PathBuf,
    },
    /// List the bundles in the feed, oldest version first.
    List {
        /// Feed directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Build a bundle (tar + zstd with manifest.json) from a root file-system image.
    /// Deterministic: SOURCE_DATE_EPOCH sets the creation time when set.
    Bundle {
        /// Output file (written to a temporary name, then renamed).
        #[arg(long)]
        out: PathBuf,
        /// Semantic version of the bundle.
        #[arg(long)]
        version: String,
        /// Root file-system image to include as root.img.
        #[arg(long)]
        root_image: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Feed directory to create.
    dir: PathBuf,
    /// Signatures required per role; that many keys are generated per role.
    #[arg(long, default_value_t = 1)]
    threshold: u64,
    /// How long root metadata stays valid (humantime: "365days", "1y").
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    root_expiry: Duration,
    /// How long targets metadata stays valid.
    #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
    targets_expiry: Duration,
    /// How long snapshot metadata stays valid.
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    snapshot_expiry: Duration,
    /// How long timestamp metadata stays valid (`refresh` renews it).
    #[arg(long, default_value = "1day", value_parser = humantime::parse_duration)]
    timestamp_expiry: Duration,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Feed(#[from] feed::FeedError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                CliError::Feed(
                    feed::FeedError::DuplicateVersion { .. }
                    | feed::FeedError::UnknownVersion { .. }
                    | feed::FeedError::Invalid { .. }
                    | feed::FeedError::VersionMismatch { .. }
                    | feed::FeedError::AlreadyInitialised { .. },
                ) => 2,
                _ => 1,
            })
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let now = jiff::Timestamp::now();
    match cli.cmd {
        Cmd::Init(a) => {
            let opts = feed::InitOptions {
                config: feed::FeedConfig {
                    threshold: a.threshold,
                    expiries: feed::Expiries {
                        root: a.root_expiry,
                        targets: a.targets_expiry,
                        snapshot: a.snapshot_expiry,
                        timestamp: a.timestamp_expiry,
                    },
                },
            };
            rt.block_on(feed::init(&a.dir, &opts, now))?;
            println!(
                "feed created in {}; ship {} in images, serve {}",
                a.dir.display(),
                feed::FeedPaths::new(&a.dir).root().display(),
                feed::FeedPaths::new(&a.dir).repo().display()
            );
        }
        Cmd::Add {
            dir,
            bundle,
            version,
            channel,
        } => {
            let e = rt.block_on(feed::add(&dir, &bundle, &version, &channel, now))?;
            println!(
                "added {} ({} bytes, sha256 {}) on {}",
                e.name, e.length, e.sha256, channel
            );
        }
        Cmd::Promote { dir, version, to } => {
            let e = rt.block_on(feed::promote(&dir, &version, &to, now))?;
            println!("{} is on {}", e.version, e.channels.join(", "));
        }
        Cmd::Refresh { dir } => {
            let v = rt.block_on(feed::refresh(&dir, now))?;
            println!("timestamp version {v} signed");
        }
        Cmd::List { dir, json } => {
            let entries = feed::list(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".into())
                );
            } else {
                println!(
                    "{:<12} {:<20} {:>12}  SHA256",
                    "VERSION", "CHANNELS", "BYTES"
                );
                for e in entries {
                    println!(
                        "{:<12} {:<20} {:>12}  {}",
                        e.version,
                        e.channels.join(","),
                        e.length,
                        e.sha256
                    );
                }
            }
        }
        Cmd::Bundle {
            out,
            version,
            root_image,
        } => {
            let m = bundle::create(&out, &version, &root_image)?;
            let root = m.root_entry()?;
            println!(
                "wrote {} (version {}, root image {} bytes sha256 {})",
                out.display(),
                m.version,
                root.size,
                root.sha256
            );
        }
    }
    Ok(())
}
