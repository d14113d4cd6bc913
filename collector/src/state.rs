//! The state directory: file names, `state.json` and `enrollment.json`.
//!
//! | file | content |
//! |---|---|
//! | `key.pem` | the appliance's private key (0600) |
//! | `enrollment.json` | `{"id": "ap-…"}` once the gateway accepted the CSR |
//! | `cert.pem` | the issued certificate (0600) once approved |
//! | `state.json` | `{"last_acked_seq": N, "acked_inventory_hash": "…"}` |
//! | `outbox/` | batches written before sending, removed once acknowledged |
//!
//! Loading and writing are separate steps; the values are plain data in between.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{self, FileError};

/// `key.pem`.
pub const KEY_FILE: &str = "key.pem";
/// `cert.pem`.
pub const CERT_FILE: &str = "cert.pem";
/// `enrollment.json`.
pub const ENROLLMENT_FILE: &str = "enrollment.json";
/// `state.json`.
pub const STATE_FILE: &str = "state.json";
/// `outbox/`.
pub const OUTBOX_DIR: &str = "outbox";

/// Mode of `state.json` and `enrollment.json` (not secret, but nobody else's business).
const MODE_STATE: u32 = files::MODE_PRIVATE;

/// A state file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading a state file failed.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A state file holds something that is not what we wrote.
    #[error("{} is corrupt: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] FileError),
}

/// Uplink progress: what the gateway has acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkState {
    /// Highest sequence the gateway acknowledged.
    #[serde(default)]
    pub last_acked_seq: u64,
    /// `content_hash` of the last inventory the gateway acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_inventory_hash: Option<String>,
}

impl UplinkState {
    /// Loads `state.json` from `state_dir`; a missing file is the default state.
    ///
    /// # Errors
    /// [`StateError`] naming the file when it cannot be read or parsed.
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        load_json(&state_dir.join(STATE_FILE)).map(Option::unwrap_or_default)
    }

    /// Writes `state.json` atomically.
    ///
    /// # Errors
    /// [`StateError::Write`] naming the file.
    pub fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        write_json(&state_dir.join(STATE_FILE), self)
    }
}

/// `enrollment.json`: the id the gateway gave our CSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    /// Appliance id, `ap-…`.
    pub id: String,
}

impl EnrollmentRecord {
    /// Loads `enrollment.json`; `None` when absent.
    ///
    /// # Errors
    /// [`StateError`] naming the file when it cannot be read or parsed.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, StateError> {
        load_json(&state_dir.join(ENROLLMENT_FILE))
    }

    /// Writes `enrollment.json` atomically.
    ///
    /// # Errors
    /// [`StateError::Write`] naming the file.
    pub fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        write_json(&state_dir.join(ENROLLMENT_FILE), self)
    }
}

fn load_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    let Some(bytes) = files::read_optional(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    files::write_atomic(path, &bytes, MODE_STATE)?;
    Ok(())
}

/// Whether `cert.pem` exists in `state_dir`.
#[must_use]
pub fn has_certificate(state_dir: &Path) -> bool {
    state_dir.join(CERT_FILE).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_defaults_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            UplinkState::load(dir.path()).unwrap(),
            UplinkState::default()
        );
        let s = UplinkState {
            last_acked_seq: 7,
            acked_inventory_hash: Some("abc".into()),
        };
        s.write(dir.path()).unwrap();
        assert_eq!(UplinkState::load(dir.path()).unwrap(), s);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(v["last_acked_seq"], 7);
        assert_eq!(v["acked_inventory_hash"], "abc");
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ENROLLMENT_FILE), "{nope").unwrap();
        let e = EnrollmentRecord::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(ENROLLMENT_FILE), "{e}");
    }
}
