//! A reader of the collector's on-disk spool, written from its documented layout and
//! independent of the collector's code, so fault tests can see what the box holds, pick a
//! record to damage, and check that nothing is left unsent after a drain.
//!
//! ```text
//! state_dir/state.json              ledger: acked_rid, in_flight, dropped_records, …
//! state_dir/spool/samples/*.seg     metrics and self-metrics (evicted first)
//! state_dir/spool/changes/*.seg     inventory (evicted last)
//!
//! frame: magic "OPS1" | crc32c u32 | len u32 | lsn u64 | rid u64 | payload (record JSON)
//!        (little-endian; the CRC covers bytes 8.. of the frame)
//! ```
//!
//! The reader stops at the first byte that does not start a whole frame: it is for spools
//! the test itself has not damaged yet (or to look at what a damaged spool still holds in
//! front of the damage).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"OPS1";
/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 28;
/// The spool's directory inside the state directory.
pub const SPOOL_DIR: &str = "spool";
/// The log of metrics and self-metrics.
pub const SAMPLES: &str = "samples";
/// The log of inventory.
pub const CHANGES: &str = "changes";
/// Segment file suffix.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// One frame found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its segment file.
    pub path: PathBuf,
    /// Where the frame starts in it.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// Log sequence number.
    pub lsn: u64,
    /// Record id.
    pub rid: u64,
    /// The record's `kind` (from the payload JSON), or "" when it does not parse.
    pub kind: String,
    /// The record's `collected_at_ms` (from the payload JSON).
    pub collected_at_ms: Option<i64>,
}

impl Frame {
    /// Bytes of the whole frame.
    #[must_use]
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Offset of the payload's first byte.
    #[must_use]
    pub fn payload_offset(&self) -> u64 {
        self.offset + HEADER_LEN as u64
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The whole frames at the start of `bytes` (up to the first thing that is not one).
#[must_use]
pub fn parse_frames(path: &Path, bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while bytes.len() >= pos + HEADER_LEN && bytes[pos..pos + 4] == MAGIC {
        let len = le_u32(&bytes[pos + 8..]);
        let end = pos + HEADER_LEN + len as usize;
        if end > bytes.len() {
            break;
        }
        let payload = &bytes[pos + HEADER_LEN..end];
        let json = serde_json::from_slice::<Value>(payload).unwrap_or(Value::Null);
        let kind = json["kind"].as_str().unwrap_or_default().to_string();
        let collected_at_ms = json["collected_at_ms"].as_i64();
        out.push(Frame {
            path: path.to_path_buf(),
            offset: pos as u64,
            len,
            lsn: le_u64(&bytes[pos + 12..]),
            rid: le_u64(&bytes[pos + 20..]),
            kind,
            collected_at_ms,
        });
        pos = end;
    }
    out
}

/// The segment files of one log (`samples` or `changes`), oldest first.
///
/// # Errors
/// When the directory exists but cannot be listed.
pub fn segments(state_dir: &Path, log: &str) -> anyhow::Result<Vec<PathBuf>> {
    let dir = state_dir.join(SPOOL_DIR).join(log);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to list {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e?.path();
        if p.to_string_lossy().ends_with(SEGMENT_SUFFIX) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Every whole frame of one log, oldest first (files deleted meanwhile are skipped).
///
/// # Errors
/// When a directory or file cannot be read.
pub fn frames(state_dir: &Path, log: &str) -> anyhow::Result<Vec<Frame>> {
    let mut out = Vec::new();
    for p in segments(state_dir, log)? {
        match std::fs::read(&p) {
            Ok(bytes) => out.extend(parse_frames(&p, &bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", p.display())),
        }
    }
    Ok(out)
}

/// Every whole frame of both logs, by rid.
///
/// # Errors
/// As [`frames`].
pub fn all_frames(state_dir: &Path) -> anyhow::Result<Vec<Frame>> {
    let mut out = frames(state_dir, SAMPLES)?;
    out.extend(frames(state_dir, CHANGES)?);
    out.sort_by_key(|f| f.rid);
    Ok(out)
}

/// `state.json`, the spool's ledger (`Value::Null` when absent).
///
/// # Errors
/// When it exists but cannot be read or parsed.
pub fn ledger(state_dir: &Path) -> anyhow::Result<Value> {
    let p = state_dir.join("state.json");
    match std::fs::read_to_string(&p) {
        Ok(t) => {
            serde_json::from_str(&t).with_context(|| format!("{} is not JSON: {t}", p.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Null),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", p.display())),
    }
}

/// A numeric field of the ledger (0 when absent).
#[must_use]
pub fn ledger_count(ledger: &Value, key: &str) -> u64 {
    ledger[key].as_u64().unwrap_or(0)
}

/// The rids of the ledger's in-flight batch (formed, written down, not acknowledged).
#[must_use]
pub fn in_flight(ledger: &Value) -> Option<std::ops::RangeInclusive<u64>> {
    let f = &ledger["in_flight"];
    Some(f["first_rid"].as_u64()?..=f["last_rid"].as_u64()?)
}

/// Whether `rid` is in the in-flight batch `range`.
#[must_use]
pub fn is_in_flight(range: Option<&std::ops::RangeInclusive<u64>>, rid: u64) -> bool {
    range.is_some_and(|r| r.contains(&rid))
}

/// Frames on disk not yet acknowledged (rid above the ledger's `acked_rid`).
///
/// # Errors
/// As [`all_frames`] and [`ledger`].
pub fn unsent_frames(state_dir: &Path) -> anyhow::Result<Vec<Frame>> {
    let acked = ledger_count(&ledger(state_dir)?, "acked_rid");
    Ok(all_frames(state_dir)?
        .into_iter()
        .filter(|f| f.rid > acked)
        .collect())
}

/// XORs `len` bytes of `path` at `offset` with 0xFF.
///
/// # Errors
/// When the file cannot be read or written, or is too short.
pub fn flip_bytes(path: &Path, offset: u64, len: usize) -> anyhow::Result<()> {
    let mut bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let start = usize::try_from(offset)?;
    let end = start + len;
    anyhow::ensure!(
        end <= bytes.len(),
        "{} has {} bytes; cannot flip {start}..{end}",
        path.display(),
        bytes.len()
    );
    for b in &mut bytes[start..end] {
        *b ^= 0xFF;
    }
    std::fs::write(path, bytes).with_context(|| format!("failed to write {}", path.display()))
}

/// Cuts `path` to `len` bytes.
///
/// # Errors
/// When the file cannot be opened or truncated.
pub fn truncate(path: &Path, len: u64) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    f.set_len(len)
        .with_context(|| format!("failed to truncate {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(lsn: u64, rid: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&0u32.to_le_bytes()); // CRC is not checked by this reader
        v.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        v.extend_from_slice(&lsn.to_le_bytes());
        v.extend_from_slice(&rid.to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_whole_frames_and_stops_at_a_torn_one() {
        let mut bytes = frame(1, 7, br#"{"kind":"metrics","collected_at_ms":5}"#);
        bytes.extend(frame(2, 8, br#"{"kind":"agent"}"#));
        let whole = bytes.len();
        bytes.extend(&frame(3, 9, br#"{"kind":"metrics"}"#)[..HEADER_LEN + 3]);
        let fr = parse_frames(Path::new("x.seg"), &bytes);
        assert_eq!(fr.len(), 2);
        assert_eq!((fr[0].rid, fr[0].kind.as_str()), (7, "metrics"));
        assert_eq!(fr[0].collected_at_ms, Some(5));
        assert_eq!((fr[1].rid, fr[1].lsn, fr[1].kind.as_str()), (8, 2, "agent"));
        assert_eq!(fr[1].offset + fr[1].frame_len(), whole as u64);
    }
}
