//! The state directory: file names, `state.json` and `enrollment.json`.
//!
//! | file | content |
//! |---|---|
//! | `key.pem` | the appliance's private key (0600) |
//! | `enrollment.json` | `{"id": "ap-…"}` once the gateway accepted the CSR |
//! | `cert.pem` | the issued certificate (0600) once approved |
//! | `state.json` | the spool's ledger ([`crate::spool::Ledger`]): acknowledged sequence and record id, the batch in flight, counters |
//! | `spool/` | records written before sending ([`crate::spool`]) |
//! | `delivered.json` | what the gateway's `GET /v1/config` last delivered and is in force ([`Delivered`]): the packs, the interval, the ETag; loaded at start so a restart without a gateway judges with the same packs |
//! | `health.json` | the health engine's judgement ([`EngineSnapshot`]): states, sample windows, open alerts; written after every round that changed something, loaded at start |
//!
//! Loading and writing are separate steps; the values are plain data in between. Every
//! file is written atomically (a temporary file, fsync, rename) with mode 0600.

use std::path::{Path, PathBuf};

use outpost_health::EngineSnapshot;
use outpost_proto::PackDoc;
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
/// `delivered.json`.
pub const DELIVERED_FILE: &str = "delivered.json";
/// `health.json`.
pub const HEALTH_FILE: &str = "health.json";
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

/// `delivered.json`: the part of the gateway's config document in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// The document's ETag, kept only while everything it says is in force (so after a
    /// refusal the next start fetches it in full and reports the refusal again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The interval it asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// The delivered packs in force (the last good set); empty: the built-in pack alone.
    #[serde(default)]
    pub packs: Vec<PackDoc>,
}

impl Delivered {
    /// Loads `delivered.json`; `None` when absent.
    ///
    /// # Errors
    /// [`StateError`] naming the file when it cannot be read or parsed.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, StateError> {
        load_json(&state_dir.join(DELIVERED_FILE))
    }

    /// Writes `delivered.json` atomically (0600).
    ///
    /// # Errors
    /// [`StateError::Write`] naming the file.
    pub fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        write_json(&state_dir.join(DELIVERED_FILE), self)
    }
}

/// Loads `health.json`; `None` when absent.
///
/// # Errors
/// [`StateError`] naming the file when it cannot be read or parsed.
pub fn load_health(state_dir: &Path) -> Result<Option<EngineSnapshot>, StateError> {
    load_json(&state_dir.join(HEALTH_FILE))
}

/// Writes `health.json` atomically (0600), compact.
///
/// # Errors
/// [`StateError`] naming the file.
pub fn write_health(state_dir: &Path, snapshot: &EngineSnapshot) -> Result<(), StateError> {
    let path = state_dir.join(HEALTH_FILE);
    let bytes = serde_json::to_vec(snapshot).map_err(|source| StateError::Corrupt {
        path: path.clone(),
        source,
    })?;
    files::write_atomic(&path, &bytes, MODE_STATE)?;
    Ok(())
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
    fn delivered_config_and_health_round_trip_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Delivered::load(dir.path()).unwrap(), None);
        assert_eq!(load_health(dir.path()).unwrap(), None);
        let d = Delivered {
            etag: Some("\"e1\"".into()),
            interval: Some("30s".into()),
            packs: vec![PackDoc {
                name: "p".into(),
                toml: "[pack]\nname = \"p\"\n".into(),
            }],
        };
        d.write(dir.path()).unwrap();
        assert_eq!(Delivered::load(dir.path()).unwrap(), Some(d));
        let snap = EngineSnapshot {
            version: 1,
            rounds: 3,
            ..EngineSnapshot::default()
        };
        write_health(dir.path(), &snap).unwrap();
        assert_eq!(load_health(dir.path()).unwrap(), Some(snap));
        for f in [DELIVERED_FILE, HEALTH_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // No temporary file left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ENROLLMENT_FILE), "{nope").unwrap();
        let e = EnrollmentRecord::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(ENROLLMENT_FILE), "{e}");
    }
}
