//! Staged updates: what travels between `outpost-updater` on the box and the gateway.
//!
//! * The gateway serves the vendor's TUF feed read-only under [`crate::paths::FEED`]
//!   (`GET /v1/feed/{path}`, mTLS, Range requests). It cannot forge it: the signatures are
//!   the vendor's.
//! * The updater long-polls its own command queue: `GET /v1/commands?wait=30s&agent=updater`
//!   ([`AGENT_UPDATER`]). Commands of kind [`CMD_SET_WINDOW`] carry a [`WindowSpec`] as their
//!   `args`; [`CMD_RESTART`] asks for an explicit restart (args `{}`, or `{"at_ms": ..}`).
//! * The updater reports its state with `POST /v1/update-state` ([`UpdateState`]); the
//!   gateway keeps the latest per appliance and `appliances show` prints it.

use serde::{Deserialize, Serialize};

/// `agent=` value of the collector's command long-poll (the default when absent).
pub const AGENT_COLLECTOR: &str = "collector";
/// `agent=` value of the updater's command long-poll.
pub const AGENT_UPDATER: &str = "updater";
/// Command kind: the VAR's maintenance window changed; `args` is a [`WindowSpec`].
pub const CMD_SET_WINDOW: &str = "set_window";
/// Command kind: restart into the staged slot now (operator's explicit request).
pub const CMD_RESTART: &str = "restart";

/// A maintenance window as set by the VAR: weekly time ranges in an IANA time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub tz: String,
    /// Weekly ranges; a range may cross midnight (`22:00`-`02:00`).
    pub ranges: Vec<WindowRange>,
}

/// One weekly range of a [`WindowSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRange {
    /// Weekdays the range starts on, lowercase three-letter names (`mon` .. `sun`).
    pub days: Vec<String>,
    /// Local start time, `HH:MM`.
    pub start: String,
    /// Local end time, `HH:MM`; earlier than `start` means it ends the next day.
    pub end: String,
}

/// What the updater reports to the gateway (`POST /v1/update-state`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    /// Version running in the booted slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Slot booted now (`a` or `b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_slot: Option<String>,
    /// Newest version mirrored and verified on the box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirrored_version: Option<String>,
    /// Version installed into the inactive slot and marked to boot next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_version: Option<String>,
    /// True when a staged slot waits for a restart.
    #[serde(default)]
    pub pending_restart: bool,
    /// When the restart is planned, unix milliseconds (inside the VAR window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at_ms: Option<i64>,
    /// The window in force, as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Last error, with what failed; `None` after a clean run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Channel followed (`stable`, `testing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// When the box wrote this report, unix milliseconds.
    #[serde(default)]
    pub reported_at_ms: i64,
}
