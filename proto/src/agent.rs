//! The collector's self-metrics ([`AgentMetrics`]), sent as a `Record::Agent` with the data
//! every interval so the centre sees how the box's uplink is doing: where it is connected,
//! how often it had to reconnect, how much is waiting in its spool, and what was lost.

use serde::{Deserialize, Serialize};

/// How the collector itself is doing. Counters marked cumulative survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentMetrics {
    /// The gateway (`host:port`) the uplink uses now; empty before the first send.
    pub current_gateway: String,
    /// Times the uplink had to connect anew since the collector started: after a failed
    /// send (to the same or the next gateway) and on fail-back to the primary.
    pub reconnects: u64,
    /// Records waiting in the spool (not yet acknowledged by a gateway).
    pub spool_depth: u64,
    /// Bytes the spool holds on disk.
    pub spool_bytes: u64,
    /// Records dropped unsent because the spool reached its size cap (cumulative).
    pub dropped_records: u64,
    /// Records lost to a torn or corrupt spool file (cumulative).
    pub spool_corrupt_records: u64,
    /// Round trip of the last acknowledged ingest request, milliseconds.
    pub send_latency_ms: Option<u64>,
}
