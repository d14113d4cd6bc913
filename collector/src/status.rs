//! `outpost-collector status`: what the state directory says, without talking to anyone.
//!
//! Reads the config (without the CA file), `enrollment.json`, `cert.pem`, the spool's ledger
//! (`state.json`) and its segments. Safe to run next to a running collector: it only reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{self, ConfigError};
use crate::identity::{self, IdentityError};
use crate::spool::{Spool, SpoolError};
use crate::state::{EnrollmentRecord, StateError};

/// Reading the status failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The config is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A state file is unreadable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The certificate is unreadable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The spool cannot be read.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Enrolment as seen from the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentState {
    /// No CSR accepted yet.
    NotEnrolled,
    /// The gateway has our CSR; waiting for approval.
    Pending,
    /// `cert.pem` is in place.
    Approved,
}

impl EnrollmentState {
    /// The name printed.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotEnrolled => "not_enrolled",
            Self::Pending => "pending",
            Self::Approved => "approved",
        }
    }
}

/// The `status --json` object.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Appliance id (`enrollment.json`, else the certificate's common name).
    pub id: Option<String>,
    /// Enrolment state.
    pub state: EnrollmentState,
    /// Certificate expiry, RFC 3339.
    pub cert_not_after: Option<String>,
    /// Certificate serial, hex.
    pub cert_serial: Option<String>,
    /// Highest sequence the gateway acknowledged.
    pub last_acked_seq: u64,
    /// Hash of the acknowledged inventory.
    pub acked_inventory_hash: Option<String>,
    /// Records waiting in the spool.
    pub spool_depth: u64,
    /// Bytes the spool holds on disk.
    pub spool_bytes: u64,
    /// Highest record id acknowledged.
    pub acked_rid: u64,
    /// Record id the next record gets.
    pub next_rid: u64,
    /// Sequence of the batch in flight, if any.
    pub in_flight_seq: Option<u64>,
    /// Records dropped unsent at the spool's cap (cumulative).
    pub dropped_records: u64,
    /// Records lost to torn or corrupt spool files (cumulative).
    pub spool_corrupt_records: u64,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The gateways, in order.
    pub gateways: Vec<String>,
}

/// RFC 3339 (seconds) of a unix timestamp; the epoch for negative values.
#[must_use]
pub fn rfc3339(unix_secs: i64) -> String {
    let secs = u64::try_from(unix_secs).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The appliance id: `enrollment.json`, else the certificate's common name.
///
/// # Errors
/// [`StatusError`] when a file exists but is unreadable.
pub fn appliance_id(state_dir: &Path) -> Result<Option<String>, StatusError> {
    if let Some(r) = EnrollmentRecord::load(state_dir)? {
        return Ok(Some(r.id));
    }
    Ok(identity::read_certificate_info(state_dir)?.and_then(|c| c.common_name))
}

/// Gathers the status of the collector configured by `config_path`.
///
/// # Errors
/// [`StatusError`]; a bad config is [`StatusError::Config`].
pub fn gather(config_path: &Path) -> Result<StatusReport, StatusError> {
    let (valid, dir) = config::load_valid(config_path)?;
    let state_dir = config::resolve_path(&dir, &valid.state_dir);
    let record = EnrollmentRecord::load(&state_dir)?;
    let cert = identity::read_certificate_info(&state_dir)?;
    let spool = Spool::inspect(&state_dir)?;
    let state = match (&cert, &record) {
        (Some(_), _) => EnrollmentState::Approved,
        (None, Some(_)) => EnrollmentState::Pending,
        (None, None) => EnrollmentState::NotEnrolled,
    };
    let id = record
        .map(|r| r.id)
        .or_else(|| cert.as_ref().and_then(|c| c.common_name.clone()));
    Ok(StatusReport {
        id,
        state,
        cert_not_after: cert.as_ref().map(|c| rfc3339(c.not_after)),
        cert_serial: cert.map(|c| c.serial_hex),
        last_acked_seq: spool.last_acked_seq,
        acked_inventory_hash: crate::spool::Ledger::load(&state_dir)?.acked_inventory_hash,
        spool_depth: spool.records,
        spool_bytes: spool.bytes,
        acked_rid: spool.acked_rid,
        next_rid: spool.next_rid,
        in_flight_seq: spool.in_flight.as_ref().map(|f| f.seq),
        dropped_records: spool.dropped_records,
        spool_corrupt_records: spool.spool_corrupt_records,
        state_dir,
        gateways: valid.gateways,
    })
}

/// The human form of a report.
#[must_use]
pub fn render_text(r: &StatusReport) -> String {
    let dash = || "-".to_string();
    format!(
        "appliance id:      {}\n\
         enrolment:         {}\n\
         certificate until: {}\n\
         last acked seq:    {}\n\
         spool:             {} record(s), {} byte(s)\n\
         dropped (cap):     {}\n\
         corrupt (spool):   {}\n\
         state dir:         {}\n\
         gateways:          {}\n",
        r.id.clone().unwrap_or_else(dash),
        r.state.as_str(),
        r.cert_not_after.clone().unwrap_or_else(dash),
        r.last_acked_seq,
        r.spool_depth,
        r.spool_bytes,
        r.dropped_records,
        r.spool_corrupt_records,
        r.state_dir.display(),
        r.gateways.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("collector.toml");
        std::fs::write(&cfg, "gateways = [\"gw:5723\"]\nstate_dir = \"state\"\n").unwrap();
        (dir, cfg)
    }

    #[test]
    fn fresh_box_is_not_enrolled() {
        let (dir, cfg) = setup();
        let r = gather(&cfg).unwrap();
        assert_eq!(r.state, EnrollmentState::NotEnrolled);
        assert_eq!(r.id, None);
        assert_eq!(r.spool_depth, 0);
        assert_eq!(r.state_dir, dir.path().join("state"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["state"], "not_enrolled");
        assert!(render_text(&r).contains("not_enrolled"));
    }

    #[test]
    fn pending_box_reports_its_id_and_progress() {
        let (dir, cfg) = setup();
        let sd = dir.path().join("state");
        std::fs::create_dir_all(&sd).unwrap();
        EnrollmentRecord { id: "ap-9".into() }.write(&sd).unwrap();
        let mut spool =
            crate::spool::Spool::open(&sd, crate::spool::SpoolConfig::default()).unwrap();
        let m = |n| outpost_proto::Record::Metrics {
            collected_at_ms: n,
            metrics: outpost_proto::HostMetrics::default(),
        };
        spool.append(vec![m(1), m(2), m(3)]).unwrap();
        spool
            .next_batch(crate::spool::BatchLimits {
                max_records: 1,
                max_bytes: 1 << 20,
            })
            .unwrap();
        spool
            .acknowledge(&outpost_proto::IngestAck {
                acked_seq: 1,
                duplicate: false,
                last_rid: 1,
            })
            .unwrap();
        spool
            .next_batch(crate::spool::BatchLimits::default())
            .unwrap();
        let r = gather(&cfg).unwrap();
        assert_eq!(r.state, EnrollmentState::Pending);
        assert_eq!(r.id.as_deref(), Some("ap-9"));
        assert_eq!(r.last_acked_seq, 1);
        assert_eq!((r.spool_depth, r.acked_rid, r.next_rid), (2, 1, 4));
        assert_eq!(r.in_flight_seq, Some(2));
        assert!(r.spool_bytes > 0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["spool_depth"], 2);
        assert_eq!(v["dropped_records"], 0);
        assert_eq!(appliance_id(&sd).unwrap().as_deref(), Some("ap-9"));
    }

    #[test]
    fn bad_config_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("collector.toml");
        std::fs::write(&cfg, "gateways = []\n").unwrap();
        assert!(matches!(gather(&cfg), Err(StatusError::Config(_))));
    }

    #[test]
    fn rfc3339_formats_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }
}
