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
//!   Every record travels in an [`Envelope`] carrying its record id (`rid`): numbered on
//!   the box when the record is spooled, increasing per appliance, stored once per
//!   appliance whatever batch carries it.
//! * Commands (`GET /v1/commands?wait=30s`) are a long-poll: commands from the centre ride
//!   the appliance's own outbound connection. Results go to
//!   `POST /v1/commands/{id}/result`.
//! * Config (`GET /v1/config`) returns a [`CollectorConfigDoc`] with an `ETag`.
//!
//! # Current limitations
//!
//! Records are JSON; there is no schema negotiation beyond [`PROTOCOL_VERSION`].

pub mod agent;
pub mod duration;
pub mod health;
pub mod host;
pub mod update;
pub mod vm;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use agent::AgentMetrics;
pub use duration::{format_duration, parse_duration, DurationError};
pub use health::{AlertEvent, AlertStatus, CollectedSample, HealthChange};
pub use host::{HostInventory, HostMetrics};
pub use vm::{VmDelta, VmInventory, VmMetrics};

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
    /// `GET /v1/feed/{path}`: the vendor's update feed, read-only, Range requests.
    pub const FEED: &str = "/v1/feed";
    /// `POST`: the updater's state ([`crate::update::UpdateState`]).
    pub const UPDATE_STATE: &str = "/v1/update-state";

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
    /// The collector's own health, sent with the data every interval.
    Agent {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// The self-metrics.
        agent: AgentMetrics,
    },
    /// How the guest list changed; sent only when it did. With `full`, `delta.added` is
    /// the whole list (the collector's first discovery after it started) and replaces
    /// what the gateway had.
    VmInventory {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// `delta.added` is the complete list.
        #[serde(default)]
        full: bool,
        /// Added, removed and changed guests.
        delta: VmDelta,
    },
    /// One sample of every running guest; sent every interval while there are guests.
    VmMetrics {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// One entry per guest, by [`vm::VmInventory::key`].
        vms: Vec<VmMetrics>,
    },
    /// Health state changes of one evaluation round; sent only when something changed.
    Health {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// Monitors (and overall health) that changed.
        #[serde(default)]
        changes: Vec<HealthChange>,
        /// Objects no longer discovered (`CLASS/ID`): their states are forgotten.
        #[serde(default)]
        removed: Vec<String>,
    },
    /// An alert raised, escalated or resolved.
    Alert {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// The event.
        alert: AlertEvent,
    },
    /// Whether the delivered health packs are in force, and the override conflicts; sent
    /// when it changes.
    PackStatus {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// The status.
        status: health::PackStatus,
    },
    /// Values the packs' collect rules picked (sampled data, not changes: the spool drops
    /// them first when full).
    Collected {
        /// Collection time, unix milliseconds.
        collected_at_ms: i64,
        /// The values, by rule, object and metric.
        values: Vec<health::CollectedSample>,
    },
}

impl Record {
    /// Stable name of the record kind, as stored.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Inventory { .. } => "inventory",
            Self::Metrics { .. } => "metrics",
            Self::Agent { .. } => "agent",
            Self::VmInventory { .. } => "vm_inventory",
            Self::VmMetrics { .. } => "vm_metrics",
            Self::Health { .. } => "health",
            Self::Alert { .. } => "alert",
            Self::PackStatus { .. } => "pack_status",
            Self::Collected { .. } => "collected",
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
            }
            | Self::Agent {
                collected_at_ms, ..
            }
            | Self::VmInventory {
                collected_at_ms, ..
            }
            | Self::VmMetrics {
                collected_at_ms, ..
            }
            | Self::Health {
                collected_at_ms, ..
            }
            | Self::Alert {
                collected_at_ms, ..
            }
            | Self::PackStatus {
                collected_at_ms, ..
            }
            | Self::Collected {
                collected_at_ms, ..
            } => *collected_at_ms,
        }
    }
}

/// A record as it travels: its record id and the record itself, flattened into one JSON
/// object (`{"rid": 7, "kind": "metrics", …}`).
///
/// The record id is given on the box when the record is written to the spool: it starts
/// at 1 and increases by one per record and appliance, across restarts. The gateway keeps
/// `(appliance, rid)` unique, so a record is stored once whichever batch carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Record id, per appliance, from 1.
    pub rid: u64,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

/// Body of `POST /v1/ingest` (before zstd compression).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBatch {
    /// Per-appliance batch number, starting at 1, increasing by one.
    pub seq: u64,
    /// Records in increasing `rid` order, oldest first. At most [`MAX_RECORDS_PER_BATCH`].
    pub records: Vec<Envelope>,
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
    /// Highest record id stored for this appliance (0 when none). A duplicate answer
    /// whose `last_rid` is below the batch's last record id means the gateway holds that
    /// sequence from another batch: the collector renumbers its batch after `acked_seq`.
    #[serde(default)]
    pub last_rid: u64,
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
    fn envelope_flattens_rid_next_to_kind() {
        let e = Envelope {
            rid: 42,
            record: Record::Agent {
                collected_at_ms: 9,
                agent: AgentMetrics {
                    current_gateway: "gw:5723".into(),
                    reconnects: 2,
                    spool_depth: 3,
                    spool_bytes: 4096,
                    dropped_records: 5,
                    spool_corrupt_records: 1,
                    send_latency_ms: Some(12),
                },
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["rid"], 42);
        assert_eq!(v["kind"], "agent");
        assert_eq!(v["agent"]["spool_corrupt_records"], 1);
        assert_eq!(e.record.kind(), "agent");
        assert_eq!(e.record.collected_at_ms(), 9);
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        // Inside a batch, with the other kinds.
        let batch = IngestBatch {
            seq: 3,
            records: vec![
                Envelope {
                    rid: 1,
                    record: Record::Metrics {
                        collected_at_ms: 1,
                        metrics: HostMetrics {
                            load_avg: [0.5, 0.25, 0.125],
                            ..HostMetrics::default()
                        },
                    },
                },
                Envelope {
                    rid: 2,
                    record: Record::Inventory {
                        collected_at_ms: 1,
                        hash: "h".into(),
                        inventory: HostInventory::default(),
                    },
                },
                e,
            ],
        };
        let text = serde_json::to_string(&batch).unwrap();
        assert!(
            text.starts_with(r#"{"seq":3,"records":[{"rid":1,"kind":"metrics""#),
            "{text}"
        );
        let back: IngestBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn envelope_without_rid_or_kind_is_refused() {
        let e = serde_json::from_str::<Envelope>(
            r#"{"kind":"metrics","collected_at_ms":1,"metrics":{}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("rid"), "{e}");
        let e = serde_json::from_str::<Envelope>(r#"{"rid":1,"collected_at_ms":1}"#).unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        let e = serde_json::from_str::<Envelope>(
            r#"{"rid":-1,"kind":"agent","collected_at_ms":1,"agent":{}}"#,
        )
        .unwrap_err();
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn vm_and_health_records_are_tagged_by_kind() {
        let records = [
            Record::VmInventory {
                collected_at_ms: 1,
                full: true,
                delta: VmDelta::default(),
            },
            Record::VmMetrics {
                collected_at_ms: 1,
                vms: Vec::new(),
            },
            Record::Health {
                collected_at_ms: 1,
                changes: vec![HealthChange {
                    object: "host/a".into(),
                    monitor: health::OVERALL.into(),
                    from: None,
                    to: "healthy".into(),
                    at_ms: 1,
                }],
                removed: vec!["vm/b".into()],
            },
            Record::Alert {
                collected_at_ms: 1,
                alert: AlertEvent {
                    id: health::alert_id("cpu", "host/a", 1),
                    status: AlertStatus::Raised,
                    severity: "critical".into(),
                    object: "host/a".into(),
                    monitor: "cpu".into(),
                    rule: "cpu".into(),
                    message: "busy".into(),
                    raised_at_ms: 1,
                    at_ms: 1,
                    reason: None,
                },
            },
            Record::Collected {
                collected_at_ms: 1,
                values: vec![CollectedSample {
                    rule: "collect.host".into(),
                    object: "host/a".into(),
                    metric: "load1".into(),
                    value: 0.5,
                    at_ms: 1,
                }],
            },
        ];
        for (r, kind) in
            records
                .iter()
                .zip(["vm_inventory", "vm_metrics", "health", "alert", "collected"])
        {
            let v = serde_json::to_value(r).unwrap();
            assert_eq!(v["kind"], kind);
            assert_eq!(r.kind(), kind);
            assert_eq!(r.collected_at_ms(), 1);
            let back: Record = serde_json::from_value(v).unwrap();
            assert_eq!(&back, r);
        }
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
