//! The state directory: file names, `state.json` and `enrollment.json`.
//!
//! | file | content |
//! |---|---|
//! | `key.pem` | the appliance's private key (0600) |
//! | `enrollment.json` | `{"id": "ap-…"}` once the gateway accepted the CSR |
//! | `cert.pem` | the issued certificate (0600) once approved |
//! | `state.json` | the spool's ledger ([`crate::spool::Ledger`]): acknowledged sequence and record id, the batch in flight, counters |
//! | `spool/` | records written before sending ([`crate::spool`]) |
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
/// `spool/`.
pub const SPOOL_DIR: &str = "spool";
/// `outbox/`, where the foundation's collector kept batches; no longer written.
pub const LEGACY_OUTBOX_DIR: &str = "outbox";

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
    fn enrollment_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(EnrollmentRecord::load(dir.path()).unwrap(), None);
        let r = EnrollmentRecord { id: "ap-1".into() };
        r.write(dir.path()).unwrap();
        assert_eq!(EnrollmentRecord::load(dir.path()).unwrap(), Some(r));
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ENROLLMENT_FILE), "{nope").unwrap();
        let e = EnrollmentRecord::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(ENROLLMENT_FILE), "{e}");
    }
}
