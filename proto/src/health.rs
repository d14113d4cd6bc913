//! Health as it travels: state changes and alerts judged on the box.
//!
//! The health engine (`health/`, run by the collector) runs every interval and reports
//! only differences, so an unchanged box sends nothing here. Objects are named
//! `CLASS/ID` (`host/web1`, `vm/db`, `filesystem//var`); states are the lower-case names
//! `healthy`, `warning`, `critical`, `unknown`, `not_monitored`.

use serde::{Deserialize, Serialize};

/// The monitor id an object's overall (rolled-up) health is reported under.
pub const OVERALL: &str = "health";

/// One monitor (or an object's overall health) that changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChange {
    /// The object, `CLASS/ID`.
    pub object: String,
    /// Monitor id, or [`OVERALL`] for the object's rolled-up health.
    pub monitor: String,
    /// The previous state; `None` when the object or monitor is new.
    #[serde(default)]
    pub from: Option<String>,
    /// The new state.
    pub to: String,
    /// When, unix milliseconds.
    pub at_ms: i64,
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Newly raised.
    Raised,
    /// Still open, now worse (warning → critical).
    Escalated,
    /// Resolved by itself (its monitor is healthy again, or its object is gone).
    Resolved,
}

impl AlertStatus {
    /// The lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raised => "raised",
            Self::Escalated => "escalated",
            Self::Resolved => "resolved",
        }
    }
}

/// An alert raised, escalated or resolved on the box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEvent {
    /// Identity of this occurrence: `RULE@OBJECT@RAISED_AT_MS`; the same for its raise,
    /// escalations and resolution.
    pub id: String,
    /// What happened.
    pub status: AlertStatus,
    /// `warning` or `critical`: the worst state seen while open.
    pub severity: String,
    /// The object, `CLASS/ID`.
    pub object: String,
    /// The monitor the alert rule watches.
    pub monitor: String,
    /// The alert rule.
    pub rule: String,
    /// The rule's message with its placeholders filled in.
    pub message: String,
    /// When it was raised, unix milliseconds.
    pub raised_at_ms: i64,
    /// When this event happened, unix milliseconds.
    pub at_ms: i64,
    /// Why it resolved (`healthy`, `object_gone`, …), for `resolved` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Alert id of one occurrence.
#[must_use]
pub fn alert_id(rule: &str, object: &str, raised_at_ms: i64) -> String {
    format!("{rule}@{object}@{raised_at_ms}")
}

/// Whether the collector applied the health packs the gateway delivered, and the override
/// conflicts its engine reported; sent when either changes (and once after every start).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackStatus {
    /// The ETag of the config document the packs came with; `None` before any delivery
    /// (the built-in pack alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Names of the delivered packs (the built-in one is always there besides them).
    #[serde(default)]
    pub packs: Vec<String>,
    /// Whether they are in force. When `false` the last good set stays in force.
    pub applied: bool,
    /// Why they were refused: every problem as `FILE:LINE: reason`, one per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Override ties broken deterministically, one line each
    /// (`TARGET on OBJECT: PARAM = VALUE from PACK/OVERRIDE over PACK/OVERRIDE=VALUE`).
    #[serde(default)]
    pub conflicts: Vec<String>,
}

/// One value a collect rule of a health pack picked on the box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectedSample {
    /// The collect rule.
    pub rule: String,
    /// The object, `CLASS/ID`.
    pub object: String,
    /// The metric, as packs name it (`load1`, `rss_bytes`, …).
    pub metric: String,
    /// The value.
    pub value: f64,
    /// When it was sampled, unix milliseconds.
    pub at_ms: i64,
}
