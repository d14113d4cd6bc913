//! The spool's ledger, `state.json` in the state directory: everything about the spool that
//! is not a record. It is small, rewritten whole and atomically (temp file, fsync, rename,
//! fsync of the directory) at the few moments that matter: a batch is formed, a batch is
//! acknowledged or renumbered, records are evicted, damage is counted. Appending records
//! never writes it.
//!
//! ```json
//! {"last_acked_seq": 56, "acked_inventory_hash": "…", "acked_rid": 1200,
//!  "next_rid": 1235, "next_lsn": {"samples": 900, "changes": 12},
//!  "in_flight": {"seq": 57, "first_rid": 1201, "last_rid": 1234, "records": 34},
//!  "dropped_records": 0, "spool_corrupt_records": 1,
//!  "counted_damage": ["samples/00000000000000000801.seg@4096"]}
//! ```
//!
//! A `state.json` written by an older collector (only `last_acked_seq` and
//! `acked_inventory_hash`) loads with the other fields at their defaults.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files;
use crate::state::{StateError, STATE_FILE};

/// The batch on its way: formed, written down, then sent until acknowledged. A resend after
/// a crash carries the same `seq` and the spooled records with ids in
/// `first_rid..=last_rid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Its sequence number.
    pub seq: u64,
    /// Record id of its first record.
    pub first_rid: u64,
    /// Record id of its last record.
    pub last_rid: u64,
    /// Records it held when formed.
    pub records: u64,
    /// `content_hash` of the last inventory it carries, if any: acknowledged with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_hash: Option<String>,
}

/// Next `lsn` of each log, so segment names are never reused even when a log empties.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsnFloors {
    /// The samples log (metrics, self-metrics).
    #[serde(default)]
    pub samples: u64,
    /// The changes log (inventory).
    #[serde(default)]
    pub changes: u64,
}

/// `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Highest sequence the gateway acknowledged.
    #[serde(default)]
    pub last_acked_seq: u64,
    /// `content_hash` of the last inventory the gateway acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_inventory_hash: Option<String>,
    /// Every record with an id up to here is acknowledged (or was dropped or lost).
    #[serde(default)]
    pub acked_rid: u64,
    /// The next record id is at least this (0: start at 1).
    #[serde(default)]
    pub next_rid: u64,
    /// Next `lsn` of each log.
    #[serde(default)]
    pub next_lsn: LsnFloors,
    /// The batch formed and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlight>,
    /// Records dropped unsent because the spool reached its cap (cumulative).
    #[serde(default)]
    pub dropped_records: u64,
    /// Records lost to torn or corrupt spool files (cumulative).
    #[serde(default)]
    pub spool_corrupt_records: u64,
    /// Damaged regions already counted (`LOG/SEGMENT@OFFSET`), so a restart does not count
    /// them again; an entry goes when its segment does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_damage: Vec<String>,
    /// Segments (`LOG/SEGMENT`) being evicted: counted as dropped, deleted next. Deletion
    /// is finished on open if a crash cut it short.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicting: Vec<String>,
}

impl Ledger {
    /// Loads `state.json` from `state_dir`; a missing file is a fresh ledger.
    ///
    /// # Errors
    /// [`StateError`] naming the file when it cannot be read or parsed.
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join(STATE_FILE);
        let Some(bytes) = files::read_optional(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?
        else {
            return Ok(Self::default());
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes `state.json` atomically.
    ///
    /// # Errors
    /// [`StateError`] naming the file.
    pub fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        let path = state_dir.join(STATE_FILE);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        files::write_atomic(&path, &bytes, files::MODE_PRIVATE)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Ledger::load(dir.path()).unwrap(), Ledger::default());
        let l = Ledger {
            last_acked_seq: 7,
            acked_inventory_hash: Some("abc".into()),
            acked_rid: 70,
            next_rid: 80,
            next_lsn: LsnFloors {
                samples: 5,
                changes: 2,
            },
            in_flight: Some(InFlight {
                seq: 8,
                first_rid: 71,
                last_rid: 79,
                records: 9,
                inventory_hash: None,
            }),
            dropped_records: 3,
            spool_corrupt_records: 1,
            counted_damage: vec!["samples/x@1".into()],
            evicting: Vec::new(),
        };
        l.write(dir.path()).unwrap();
        assert_eq!(Ledger::load(dir.path()).unwrap(), l);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(v["in_flight"]["seq"], 8);
        assert_eq!(v["last_acked_seq"], 7);
    }

    #[test]
    fn reads_the_foundation_state_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"last_acked_seq": 12, "acked_inventory_hash": "h"}"#,
        )
        .unwrap();
        let l = Ledger::load(dir.path()).unwrap();
        assert_eq!(l.last_acked_seq, 12);
        assert_eq!(l.acked_inventory_hash.as_deref(), Some("h"));
        assert_eq!((l.acked_rid, l.next_rid, l.in_flight), (0, 0, None));
    }

    #[test]
    fn corrupt_ledger_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{nope").unwrap();
        let e = Ledger::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(STATE_FILE), "{e}");
    }
}
