//! # outpost-proto
//!
//! Wire types and API paths shared by the Outpost collector, gateway and tools.
//!
//! # Design
//!
//! Everything that crosses TCP 5723 is described here and nowhere else, so the two sides
//! cannot drift apart. The crate does no I/O: it holds `serde` types, route constants, the
//! canonical content hash used to decide whether inventory changed, and the duration syntax
//! used in every config file (`"10s"`, `"90d"`).
//!
//! * Enrolment (`POST /v1/enroll`, `GET /v1/enroll/{id}`) carries a CSR made on the box and a
//!   bootstrap token in the `Authorization: Bearer` header. No client certificate is needed.
//! * Ingest (`POST /v1/ingest`) carries one [`IngestBatch`] as zstd-compressed JSON
//!   (`Content-Encoding: zstd`). Batches are numbered per appliance; the gateway stores a
//!   batch and its sequence in one transaction and answers with the highest stored
//!   sequence ([`IngestAck`]). A resent batch is acknowledged again and stored once.
//! * Commands (`GET /v1/commands?wait=30s`) are a long-poll: commands from the centre ride
//!   the appliance's own outbound connection. Results go to
//!   `POST /v1/commands/{id}/result`.
//! * Config (`GET /v1/config`) returns a [`CollectorConfigDoc`] with an `ETag`.
//!
//! # Current limitations
//!
//! Records are JSON; there is no schema negotiation beyond [`PROTOCOL_VERSION`].

pub mod duration;
pub mod host;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use duration::{format_duration, parse_duration, DurationError};
pub use host::{HostInventory, HostMetrics};

/// Version of the wire protocol spoken on 5723.
pub const PROTOCOL_VERSION: u32 = 1;
/// The one port: outbound from the appliance, inbound at the gateway.
pub const DEFAULT_PORT: u16 = 5723;
/// Default cap on a request body, compressed, in bytes (8 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// Longest long-poll the gateway honours, in seconds.
pub const MAX_LONG_POLL_SECS: u64 = 60;

/// API routes, one constant each so both sides use the same strings.
pub mod paths {
    /// `POST`: submit a CSR with a bootstrap token.
    pub const ENROLL: &str = "/v1/enroll";
    /// `GET /v1/enroll/{id}`: poll the state of an enrolment.
    pub const ENROLL_STATUS: &str = "/v1/enroll/{id}";
    /// `POST`: a batch of telemetry.
    pub const INGEST: &str = "/v1/ingest";
    /// `GET ?wait=DUR`: long-poll for commands.
    pub const COMMANDS: &str = "/v1/commands";
    /// `POST /v1/commands/{id}/result`: outcome of a command.
    pub const COMMAND_RESULT: &str = "/v1/commands/{id}/result";
    /// `GET`: collector config and health packs, with ETag.
    pub const CONFIG: &str = "/v1/config";
    /// `GET`: liveness; answers without a client certificate.
    pub const HEALTH: &str = "/v1/health";

    /// `GET /v1/enroll/{id}` for one id.
    #[must_use]
    pub fn enroll_status(id: &str) -> String {
        format!("/v1/enroll/{id}")
    }

    /// `POST /v1/commands/{id}/result` for one command id.
    #[must_use]
    pub fn command_result(id: &str) -> String {
        format!("/v1/commands/{id}/result")
    }
}

/// Lifecycle of an appliance at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplianceState {
    /// Enrolled, waiting for an operator (or never approved).
    Pending,
    /// Holds a certificate and may use the mTLS routes.
    Approved,
    /// Its certificates are refused on every request.
    Revoked,
}

impl ApplianceState {
    /// The lowercase name stored and printed.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Revoked => "revoked",
        }
    }

    /// Parses the lowercase name; `None` for anything else.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApplianceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `POST /v1/enroll`. The bootstrap token travels in `Authorization: Bearer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// PEM CSR made on the box with its own key.
    pub csr_pem: String,
    /// Host name the box reports; informational only.
    pub hostname: String,
}

/// Answer of both enrolment routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// Appliance id chosen by the gateway (`ap-…`).
    pub id: String,
    /// Current state; `approved` comes with a certificate.
    pub state: ApplianceState,
    /// Issued certificate (PEM), once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// The Outpost CA certificate (PEM), once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Suggested seconds before polling again while pending.
    #[serde(default)]
    pub retry_after_secs: u64,
}

/// Error body returned with every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Short machine-readable code, e.g. `token_expired`.
    pub error: String,
    /// Human-readable explanation naming what was wrong.
    pub message: String,
}

/// One telemetry record inside a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Full host inventory; sent only when its [`content_hash`] changed.
    Inventory {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// `content_hash` of `inventory`.
        hash: String,
        /// The inventory itself.
        inventory: HostInventory,
    },
    /// One sample of host metrics.
    Metrics {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// The sample.
        metrics: HostMetrics,
    },
}

impl Record {
    /// Stable name of the record kind, as stored.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Inventory { .. } => "inventory",
            Self::Metrics { .. } => "metrics",
        }
    }

    /// Collection time in unix milliseconds.
    #[must_use]
    pub fn collected_at_ms(&self) -> i64 {
        match self {
            Self::Inventory {
                collected_at_ms, ..
            }
            | Self::Metrics {
                collected_at_ms, ..
            } => *collected_at_ms,
        }
    }
}

/// Body of `POST /v1/ingest` (before zstd compression).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBatch {
    /// Per-appliance batch number, starting at 1, increasing by one.
    pub seq: u64,
    /// Records, oldest first. At most [`MAX_RECORDS_PER_BATCH`].
    pub records: Vec<Record>,
}

/// Most records one batch may carry.
pub const MAX_RECORDS_PER_BATCH: usize = 10_000;

/// Answer of `POST /v1/ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    /// Highest sequence stored for this appliance; the collector may trim up to here.
    pub acked_seq: u64,
    /// True when the batch had been stored before and was not stored again.
    pub duplicate: bool,
}

/// A command from the centre, delivered through the long-poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Command id, used to post the result.
    pub id: String,
    /// What to do, e.g. `ping`.
    pub kind: String,
    /// Arguments, by kind.
    #[serde(default)]
    pub args: serde_json::Value,
    /// When it was queued, unix milliseconds.
    pub created_at_ms: i64,
}

/// Answer of `GET /v1/commands`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandList {
    /// Commands not yet answered, oldest first.
    pub commands: Vec<Command>,
}

/// Body of `POST /v1/commands/{id}/result`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Output or error text, capped by the gateway.
    #[serde(default)]
    pub output: String,
}

/// Body of `GET /v1/config`: what the centre wants the collector to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectorConfigDoc {
    /// Collection interval the centre asks for, e.g. `"30s"`; `None` keeps the local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Health packs (TOML text), by name. Empty until packs exist.
    #[serde(default)]
    pub packs: Vec<PackDoc>,
}

/// One health pack as delivered to the collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackDoc {
    /// Pack name.
    pub name: String,
    /// Pack source (TOML).
    pub toml: String,
}

/// Canonical sha256 (hex) of a value's JSON form. Used to tell whether inventory changed.
///
/// `serde_json` keeps struct field order and our maps are `BTreeMap`s, so equal values
/// always serialize to equal bytes.
#[must_use]
pub fn content_hash<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in [
            ApplianceState::Pending,
            ApplianceState::Approved,
            ApplianceState::Revoked,
        ] {
            assert_eq!(ApplianceState::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(ApplianceState::parse("Approved"), None);
    }

    #[test]
    fn record_is_tagged_by_kind() {
        let r = Record::Metrics {
            collected_at_ms: 5,
            metrics: HostMetrics::default(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "metrics");
        assert_eq!(r.kind(), "metrics");
        assert_eq!(r.collected_at_ms(), 5);
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn batch_rejects_unknown_fields() {
        let err =
            serde_json::from_str::<IngestBatch>(r#"{"seq":1,"records":[],"extra":1}"#).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn content_hash_changes_with_content() {
        let mut a = HostInventory {
            hostname: "a".into(),
            ..HostInventory::default()
        };
        let h1 = content_hash(&a);
        assert_eq!(h1, content_hash(&a.clone()));
        a.hostname = "b".into();
        assert_ne!(h1, content_hash(&a));
        assert_eq!(h1.len(), 64);
    }
}
