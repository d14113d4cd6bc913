//! # outpost-gateway
//!
//! The central side of Outpost: a TLS 1.3 listener on TCP 5723 that appliances reach
//! outbound-only, the Outpost certificate authority, enrolment, and the store.
//!
//! # Background
//!
//! A customer opens one outbound port and nothing inbound. Everything an appliance does —
//! enrol, send telemetry, receive commands, fetch its config — rides its own connection to
//! this gateway, authenticated by a certificate whose key was made on the box.
//!
//! # Design
//!
//! * [`config`]: `gateway.toml`, read in two steps (validate, then resolve paths).
//! * [`ca`]: creates the CA and server certificate; checks CSRs; issues appliance
//!   certificates whose content the CA decides.
//! * [`tls`]: rustls server config (TLS 1.3 only, ALPN h2 + http/1.1, optional client
//!   certificates verified against the CA).
//! * [`server`]: accept loop; the TLS handshake is done here so the verified peer
//!   certificate can be attached to each request; graceful drain on shutdown.
//! * [`api`]: the routes; every mTLS route checks the certificate against the store, or
//!   against [`cert_cache`], which a revocation empties within a bound.
//! * [`wakeups`], [`last_seen`]: a queued command wakes only its appliance's long-poll;
//!   long-polls' contacts are written in bulk.
//! * [`store`]: SQLite or PostgreSQL through one schema; exactly-once ingest, with group
//!   commit on SQLite.
//! * [`feed`]: the vendor's update feed, served read-only (Range requests).
//!
//! # Current limitations
//!
//! Certificate renewal (`POST /v1/renew`) arrives with its issue. One process holds at most
//! as many connections as its open-file limit allows (`serve` raises the soft limit to the
//! hard one); `docs/scale.md` has the measured bounds.

pub mod api;
pub mod ca;
pub mod cert_cache;
pub mod config;
pub mod error;
pub mod feed;
pub mod last_seen;
pub mod server;
pub mod store;
pub mod tls;
pub mod wakeups;

use std::path::Path;
use std::time::SystemTime;

pub use config::{GatewayConfig, RawConfig};
pub use error::{CaError, ConfigError, StoreError};

/// Creates `DIR` with a new CA, a server certificate for `sans` and `gateway.toml`.
/// Refuses to replace an existing CA key or config unless `force`.
///
/// # Errors
/// [`CaError`] naming the file or SAN at fault.
pub fn init_dir(dir: &Path, sans: &[String], force: bool) -> Result<std::path::PathBuf, CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::WriteFile {
        path: dir.to_path_buf(),
        source,
    })?;
    let raw = RawConfig::for_init();
    let config_path = dir.join("gateway.toml");
    if !force {
        for p in [dir.join(&raw.ca_key), config_path.clone()] {
            if p.exists() {
                return Err(CaError::Exists { path: p });
            }
        }
    }
    let bundle = ca::create_ca(sans, SystemTime::now())?;
    ca::write_file(&dir.join(&raw.ca_key), bundle.ca_key_pem.as_bytes(), true)?;
    ca::write_file(
        &dir.join(&raw.ca_cert),
        bundle.ca_cert_pem.as_bytes(),
        false,
    )?;
    ca::write_file(
        &dir.join(&raw.server_key),
        bundle.server_key_pem.as_bytes(),
        true,
    )?;
    ca::write_file(
        &dir.join(&raw.server_cert),
        bundle.server_cert_pem.as_bytes(),
        false,
    )?;
    let text = format!(
        "# Outpost gateway configuration, written by `outpost-gateway init`.\n\
         # Paths are relative to this file's directory. See docs/operations.md.\n{}",
        raw.to_toml()
    );
    ca::write_file(&config_path, text.as_bytes(), false)?;
    Ok(config_path)
}
