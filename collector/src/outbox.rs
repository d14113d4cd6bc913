//! The outbox: batches written to disk before they are sent, removed once acknowledged.
//!
//! One file per batch, `outbox/{seq:020}.json.zst`: the zstd-compressed JSON of an
//! [`IngestBatch`], exactly the body of `POST /v1/ingest`. Files are written with
//! [`crate::files::write_atomic`], so a crash leaves whole batches only. The in-memory index
//! (sequence → inventory hash carried) is rebuilt from the files on open.
//!
//! This is the interim store; a spool with per-record checksums and priority-aware
//! eviction replaces it later (see the crate's limitations).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use outpost_proto::{IngestBatch, Record};
use tracing::warn;

use crate::files::{self, FileError};

/// Extension of batch files.
pub const BATCH_SUFFIX: &str = ".json.zst";
/// zstd level for batches: cheap on the box, still small on the wire.
const ZSTD_LEVEL: i32 = 3;
/// Mode of batch files.
const MODE_BATCH: u32 = files::MODE_PRIVATE;

/// An outbox operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The outbox directory could not be created.
    #[error(transparent)]
    CreateDir(FileError),
    /// The outbox directory could not be listed.
    #[error("failed to list outbox {}: {source}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A batch could not be encoded.
    #[error("failed to encode batch {seq}: {problem}")]
    Encode {
        /// Sequence of the batch.
        seq: u64,
        /// What went wrong.
        problem: String,
    },
    /// A batch file could not be written.
    #[error(transparent)]
    Write(FileError),
    /// A batch file could not be read.
    #[error("failed to read batch {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A batch file does not hold a batch.
    #[error("batch file {} is unreadable: {problem}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A batch file could not be renamed to its new sequence.
    #[error("failed to rename batch {} to {}: {source}", from.display(), to.display())]
    Rename {
        /// The file.
        from: PathBuf,
        /// Its new name.
        to: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A batch file could not be removed.
    #[error("failed to remove batch {}: {source}", path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// What the index remembers about one batch on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchMeta {
    /// `content_hash` of the inventory the batch carries, if any.
    pub inventory_hash: Option<String>,
}

impl BatchMeta {
    /// The index entry for `batch`: the hash of its last inventory record.
    #[must_use]
    pub fn of(batch: &IngestBatch) -> Self {
        let inventory_hash = batch.records.iter().rev().find_map(|r| match r {
            Record::Inventory { hash, .. } => Some(hash.clone()),
            Record::Metrics { .. } => None,
        });
        Self { inventory_hash }
    }
}

/// The batch files of one state directory and their index.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    entries: BTreeMap<u64, BatchMeta>,
}

/// `{seq:020}.json.zst`.
#[must_use]
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}{BATCH_SUFFIX}")
}

/// The sequence a batch file name stands for; `None` for anything else (temp files,
/// strangers).
#[must_use]
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(BATCH_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// zstd-compressed JSON of `batch`: the request body.
///
/// # Errors
/// [`OutboxError::Encode`].
pub fn encode_batch(batch: &IngestBatch) -> Result<Vec<u8>, OutboxError> {
    let json = serde_json::to_vec(batch).map_err(|e| OutboxError::Encode {
        seq: batch.seq,
        problem: e.to_string(),
    })?;
    zstd::encode_all(json.as_slice(), ZSTD_LEVEL).map_err(|e| OutboxError::Encode {
        seq: batch.seq,
        problem: e.to_string(),
    })
}

/// Reads a batch back from its file bytes; `path` names it in errors.
///
/// # Errors
/// [`OutboxError::Decode`].
pub fn decode_batch(bytes: &[u8], path: &Path) -> Result<IngestBatch, OutboxError> {
    let err = |problem: String| OutboxError::Decode {
        path: path.to_path_buf(),
        problem,
    };
    let json = zstd::decode_all(bytes).map_err(|e| err(format!("not zstd: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| err(format!("not a batch: {e}")))
}

/// Counts batch files in `dir` without reading them (for `status`); 0 when absent.
///
/// # Errors
/// [`OutboxError::List`] when the directory exists but cannot be listed.
pub fn count_batches(dir: &Path) -> Result<usize, OutboxError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .filter_map(Result::ok)
            .filter(|e| parse_file_name(&e.file_name().to_string_lossy()).is_some())
            .count()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(OutboxError::List {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and indexes its batches. A file that cannot be
    /// decoded can never be sent; it is removed with a warning.
    ///
    /// # Errors
    /// [`OutboxError`] when the directory cannot be created or listed.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        files::ensure_dir(dir).map_err(OutboxError::CreateDir)?;
        let list_err = |source| OutboxError::List {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(seq) = parse_file_name(&name) else {
                continue;
            };
            let path = entry.path();
            let batch = std::fs::read(&path)
                .map_err(|source| OutboxError::Read {
                    path: path.clone(),
                    source,
                })
                .and_then(|bytes| decode_batch(&bytes, &path));
            match batch {
                Ok(mut b) => {
                    if b.seq != seq {
                        // A renumbering was cut short between rename and rewrite.
                        warn!(file = %path.display(), inside = b.seq, "batch renumbered to {seq}; rewriting");
                        b.seq = seq;
                        let bytes = encode_batch(&b)?;
                        files::write_atomic(&path, &bytes, MODE_BATCH)
                            .map_err(OutboxError::Write)?;
                    }
                    entries.insert(seq, BatchMeta::of(&b));
                }
                Err(e) => {
                    warn!("{e}; removing it (1 batch lost)");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of batch `seq`.
    #[must_use]
    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(file_name(seq))
    }

    /// Batches waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Oldest waiting sequence.
    #[must_use]
    pub fn first_seq(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Newest waiting sequence.
    #[must_use]
    pub fn last_seq(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// Waiting sequences, oldest first.
    #[must_use]
    pub fn seqs(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }

    /// The index entry of batch `seq`.
    #[must_use]
    pub fn meta(&self, seq: u64) -> Option<&BatchMeta> {
        self.entries.get(&seq)
    }

    /// Hash of the newest inventory still waiting, if any.
    #[must_use]
    pub fn latest_inventory_hash(&self) -> Option<&str> {
        self.entries
            .values()
            .rev()
            .find_map(|m| m.inventory_hash.as_deref())
    }

    /// Writes `batch` as `{seq}.json.zst` (atomic, fsynced) and indexes it. An existing
    /// file of the same sequence is replaced.
    ///
    /// # Errors
    /// [`OutboxError::Encode`] or [`OutboxError::Write`].
    pub fn write(&mut self, batch: &IngestBatch) -> Result<(), OutboxError> {
        let bytes = encode_batch(batch)?;
        files::write_atomic(&self.path(batch.seq), &bytes, MODE_BATCH)
            .map_err(OutboxError::Write)?;
        self.entries.insert(batch.seq, BatchMeta::of(batch));
        Ok(())
    }

    /// The stored bytes of batch `seq` (the request body).
    ///
    /// # Errors
    /// [`OutboxError::Read`].
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, OutboxError> {
        let path = self.path(seq);
        std::fs::read(&path).map_err(|source| OutboxError::Read { path, source })
    }

    /// Removes one batch (file and index entry); a file already gone is fine.
    fn remove(&mut self, seq: u64) -> Result<Option<BatchMeta>, OutboxError> {
        let path = self.path(seq);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(OutboxError::Remove { path, source }),
        }
        Ok(self.entries.remove(&seq))
    }

    /// Removes every batch with sequence `<= acked`, oldest first; returns what they
    /// carried, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Remove`]; batches removed before the failure stay removed.
    pub fn remove_through(&mut self, acked: u64) -> Result<Vec<(u64, BatchMeta)>, OutboxError> {
        let seqs: Vec<u64> = self.entries.range(..=acked).map(|(s, _)| *s).collect();
        let mut removed = Vec::with_capacity(seqs.len());
        for s in seqs {
            if let Some(m) = self.remove(s)? {
                removed.push((s, m));
            }
        }
        if !removed.is_empty() {
            files::sync_parent(&self.path(0)).map_err(|source| OutboxError::Remove {
                path: self.dir.clone(),
                source,
            })?;
        }
        Ok(removed)
    }

    /// Drops the oldest batches until at most `max` remain; returns how many were dropped.
    ///
    /// # Errors
    /// [`OutboxError::Remove`].
    pub fn trim_to(&mut self, max: usize) -> Result<usize, OutboxError> {
        let excess = self.entries.len().saturating_sub(max);
        let victims: Vec<u64> = self.entries.keys().take(excess).copied().collect();
        for s in &victims {
            self.remove(*s)?;
        }
        Ok(victims.len())
    }

    /// Renumbers the waiting batches to `first, first + 1, …` in their order, rewriting
    /// each file (the sequence is inside). Ordered so that no new name collides with a
    /// batch not yet moved.
    ///
    /// # Errors
    /// [`OutboxError`] on any read, decode, write or remove failure; the outbox is then
    /// partially renumbered but every batch is still on disk under some name.
    pub fn renumber_from(&mut self, first: u64) -> Result<(), OutboxError> {
        let old: Vec<u64> = self.entries.keys().copied().collect();
        let Some(&old_first) = old.first() else {
            return Ok(());
        };
        let mut plan: Vec<(u64, u64)> = old
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, first.saturating_add(i as u64)))
            .collect();
        match first.cmp(&old_first) {
            std::cmp::Ordering::Equal if old.last().copied() == plan.last().map(|p| p.1) => {
                return Ok(());
            }
            // Moving down: the lowest first; moving up: the highest first.
            std::cmp::Ordering::Greater => plan.reverse(),
            _ => {}
        }
        for (from, to) in plan {
            if from == to {
                continue;
            }
            // Rename first: a batch is under one name at every instant, so a crash here
            // can never make it be sent (and stored) twice. The sequence inside the file
            // is then rewritten; `open` repairs a file whose inside lags its name.
            let (from_path, to_path) = (self.path(from), self.path(to));
            std::fs::rename(&from_path, &to_path).map_err(|source| OutboxError::Rename {
                from: from_path,
                to: to_path.clone(),
                source,
            })?;
            self.entries.remove(&from);
            let bytes = self.read(to)?;
            let mut batch = decode_batch(&bytes, &to_path)?;
            batch.seq = to;
            self.write(&batch)?;
        }
        files::sync_parent(&self.path(0)).map_err(|source| OutboxError::Remove {
            path: self.dir.clone(),
            source,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::{HostInventory, HostMetrics};

    fn batch(seq: u64, inventory: Option<&str>) -> IngestBatch {
        let mut records = Vec::new();
        if let Some(h) = inventory {
            records.push(Record::Inventory {
                collected_at_ms: 1,
                hash: h.to_string(),
                inventory: HostInventory::default(),
            });
        }
        records.push(Record::Metrics {
            collected_at_ms: 1,
            metrics: HostMetrics::default(),
        });
        IngestBatch { seq, records }
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.json.zst");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name(".00000000000000000042.json.zst.tmp"), None);
        assert_eq!(parse_file_name("42.json.zst"), None);
        assert_eq!(parse_file_name("0000000000000000004x.json.zst"), None);
    }

    #[test]
    fn write_then_read_back_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&dir.path().join("outbox")).unwrap();
        ob.write(&batch(1, Some("h1"))).unwrap();
        ob.write(&batch(2, None)).unwrap();
        let bytes = ob.read(1).unwrap();
        let back = decode_batch(&bytes, &ob.path(1)).unwrap();
        assert_eq!(back, batch(1, Some("h1")));
        // Stray files are ignored; a corrupt batch is removed.
        std::fs::write(ob.dir().join("notes.txt"), "x").unwrap();
        std::fs::write(ob.path(9), "garbage").unwrap();
        let ob = Outbox::open(ob.dir()).unwrap();
        assert_eq!(ob.seqs(), vec![1, 2]);
        assert_eq!(ob.meta(1).unwrap().inventory_hash.as_deref(), Some("h1"));
        assert_eq!(ob.latest_inventory_hash(), Some("h1"));
        assert!(!ob.path(9).exists());
        assert_eq!(count_batches(ob.dir()).unwrap(), 2);
    }

    #[test]
    fn remove_through_trims_acked_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        for s in 1..=5 {
            ob.write(&batch(s, (s == 2).then_some("h2"))).unwrap();
        }
        let removed = ob.remove_through(3).unwrap();
        assert_eq!(
            removed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(removed[1].1.inventory_hash.as_deref(), Some("h2"));
        assert_eq!(ob.seqs(), vec![4, 5]);
        assert!(!ob.path(3).exists());
        assert!(ob.path(4).exists());
        assert!(ob.remove_through(3).unwrap().is_empty());
    }

    #[test]
    fn trim_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        for s in 10..15 {
            ob.write(&batch(s, None)).unwrap();
        }
        assert_eq!(ob.trim_to(3).unwrap(), 2);
        assert_eq!(ob.seqs(), vec![12, 13, 14]);
        assert_eq!(ob.trim_to(3).unwrap(), 0);
        assert_eq!(count_batches(dir.path()).unwrap(), 3);
    }

    #[test]
    fn open_repairs_a_renumbering_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.write(&batch(9, Some("a"))).unwrap();
        // The crash window: renamed to 4, content still says 9.
        std::fs::rename(ob.path(9), ob.path(4)).unwrap();
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.seqs(), vec![4]);
        let b = decode_batch(&ob.read(4).unwrap(), &ob.path(4)).unwrap();
        assert_eq!(b.seq, 4);
        assert_eq!(count_batches(dir.path()).unwrap(), 1);
    }

    #[test]
    fn renumber_down_and_up_keeps_order_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.write(&batch(5, Some("a"))).unwrap();
        ob.write(&batch(6, None)).unwrap();
        ob.write(&batch(8, Some("b"))).unwrap();
        ob.renumber_from(3).unwrap();
        assert_eq!(ob.seqs(), vec![3, 4, 5]);
        for s in [3, 4, 5] {
            let b = decode_batch(&ob.read(s).unwrap(), &ob.path(s)).unwrap();
            assert_eq!(b.seq, s);
        }
        assert_eq!(ob.meta(3).unwrap().inventory_hash.as_deref(), Some("a"));
        assert_eq!(ob.meta(5).unwrap().inventory_hash.as_deref(), Some("b"));
        ob.renumber_from(4).unwrap();
        assert_eq!(ob.seqs(), vec![4, 5, 6]);
        assert_eq!(ob.meta(6).unwrap().inventory_hash.as_deref(), Some("b"));
        assert_eq!(count_batches(dir.path()).unwrap(), 3);
        let reopened = Outbox::open(dir.path()).unwrap();
        assert_eq!(reopened.seqs(), vec![4, 5, 6]);
        // Closing a hole at the same start renumbers the tail only.
        let mut ob = reopened;
        ob.trim_to(2).unwrap();
        ob.write(&batch(9, None)).unwrap();
        ob.renumber_from(5).unwrap();
        assert_eq!(ob.seqs(), vec![5, 6, 7]);
    }
}
