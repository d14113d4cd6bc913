//! The spool: every collected record is on disk here before anything is sent, and stays
//! until a gateway has acknowledged the batch that carried it. See `docs/spool.md`.
//!
//! # Design
//!
//! ```text
//! state_dir/state.json            the ledger: acked seq and rid, in-flight batch, counters
//! state_dir/spool/samples/*.seg   metrics, VM metrics and self-metrics     (evicted first)
//! state_dir/spool/changes/*.seg   inventory, VM deltas, health, alerts     (evicted last)
//! ```
//!
//! * Two append-only logs of checksummed frames ([`frame`]) in segment files ([`segment`])
//!   of at most `spool_max_bytes / 8` (4 KiB ..= 8 MiB). Which log a record goes to is its
//!   eviction class ([`Class`]); the size cap then drops whole segments, oldest metric
//!   samples first, inventory last, and counts every unsent record it drops.
//! * Every record gets a record id (`rid`), +1 per record across both logs and across
//!   restarts. Batches take records in rid order, merging the two logs.
//! * [`Spool::append`] writes the frames and syncs them per [`FsyncPolicy`]; it never
//!   writes the ledger (unless the cap forces an eviction).
//! * [`Spool::next_batch`] forms a batch (at most [`BatchLimits`]) and writes it down in
//!   the ledger (`in_flight`: seq and rid range) *before* it can be sent; after a crash
//!   the same seq is resent with the same records. [`Spool::acknowledge`] writes the
//!   acknowledgement, then deletes segments that hold only acknowledged records.
//! * [`Spool::open`] replays the logs: it indexes every good frame, skips damaged regions
//!   (counting the records they held in `spool_corrupt_records`, once, with a warning),
//!   cuts a torn tail off the segment it will append to, and never fails on damaged data.
//!
//! # Limits
//!
//! * The index keeps 12 bytes per waiting record in memory (about 4 MB for a full default
//!   spool of small records).
//! * The in-flight batch is never evicted, so the spool may exceed its cap by up to one
//!   batch while the gateway is away.
//! * Damage at the very end of the newest segment counts as one record (a torn append); a
//!   larger tail lost at once (e.g. a zeroed range after a power cut) is undercounted.

pub mod frame;
pub mod ledger;
pub mod segment;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_proto::{Envelope, IngestAck, IngestBatch, Record};
use tracing::{error, info, warn};

pub use ledger::{InFlight, Ledger, LsnFloors};

use crate::files::{self, FileError};
use crate::state::{StateError, SPOOL_DIR, STATE_FILE};
use segment::{FrameIndex, ReadFrame};

/// Default cap on the spool's disk use (256 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest cap accepted.
pub const MIN_MAX_BYTES: u64 = 4096;
/// Largest segment file.
pub const MAX_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Smallest segment file (a frame larger than a segment gets one of its own).
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Default cap on records per batch.
pub const DEFAULT_BATCH_RECORDS: usize = 500;
/// Default cap on the record bytes (uncompressed JSON) per batch.
pub const DEFAULT_BATCH_BYTES: usize = 1024 * 1024;

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Once per append (one collection), before anything of it can be sent. The default.
    #[default]
    Batch,
    /// After every record.
    Always,
    /// Never (the OS writes back when it likes): a power cut may lose recent records; a
    /// crash of the collector alone loses nothing.
    Never,
}

impl FsyncPolicy {
    /// Parses the config value.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "batch" => Some(Self::Batch),
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }

    /// The config value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

/// Settings of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Cap on the bytes of all segment files.
    pub max_bytes: u64,
    /// When to fsync.
    pub fsync: FsyncPolicy,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            fsync: FsyncPolicy::Batch,
        }
    }
}

impl SpoolConfig {
    /// Size at which a segment is closed and the next one started.
    #[must_use]
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
    }
}

/// Caps on one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most records.
    pub max_records: usize,
    /// Most record bytes (uncompressed JSON); a single larger record still goes alone.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_BATCH_RECORDS,
            max_bytes: DEFAULT_BATCH_BYTES,
        }
    }
}

/// Eviction class of a record: which log it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Metrics, self-metrics and collect rules' values: the next sample replaces them;
    /// dropped first.
    Samples,
    /// Inventory, VM inventory deltas, health changes and alerts: dropped last.
    Changes,
}

impl Class {
    /// Both classes, in eviction order.
    pub const ALL: [Self; 2] = [Self::Samples, Self::Changes];

    /// The class of a record.
    #[must_use]
    pub fn of(record: &Record) -> Self {
        match record {
            Record::Inventory { .. }
            | Record::VmInventory { .. }
            | Record::Health { .. }
            | Record::Alert { .. }
            | Record::PackStatus { .. } => Self::Changes,
            Record::Metrics { .. }
            | Record::Agent { .. }
            | Record::VmMetrics { .. }
            | Record::Collected { .. } => Self::Samples,
        }
    }

    /// Directory of its log inside `spool/`.
    #[must_use]
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Samples => "samples",
            Self::Changes => "changes",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Samples => 0,
            Self::Changes => 1,
        }
    }
}

/// A spool operation that failed. Damaged data is never an error; these are the OS
/// refusing to read or write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A spool directory could not be created.
    #[error(transparent)]
    CreateDir(FileError),
    /// A spool directory could not be listed.
    #[error("failed to list spool directory {}: {source}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A segment could not be read.
    #[error("failed to read spool segment {}: {source}", path.display())]
    Read {
        /// The segment.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A segment could not be created, written, cut or synced.
    #[error("failed to write spool segment {}: {source}", path.display())]
    Write {
        /// The segment.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A segment could not be deleted.
    #[error("failed to delete spool segment {}: {source}", path.display())]
    Remove {
        /// The segment.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A record could not be encoded.
    #[error("failed to encode record {rid} for the spool: {problem}")]
    Encode {
        /// Its record id.
        rid: u64,
        /// What went wrong.
        problem: String,
    },
    /// The ledger (`state.json`) could not be read or written.
    #[error(transparent)]
    Ledger(#[from] StateError),
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Record id of the first record appended.
    pub first_rid: u64,
    /// Record id of the last record appended.
    pub last_rid: u64,
    /// Unsent records dropped to respect the cap.
    pub dropped: u64,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The in-flight batch is stored: its records are trimmed.
    Completed {
        /// Its sequence number.
        seq: u64,
        /// Records it carried.
        records: u64,
        /// Segment files deleted.
        trimmed_segments: usize,
    },
    /// The gateway acknowledged less than the in-flight batch: nothing changes.
    Behind,
    /// The gateway holds this sequence number from another batch (it never stored ours,
    /// its highest record id is below ours): the in-flight batch moves to `to`.
    Renumbered {
        /// The old sequence number.
        from: u64,
        /// The new one.
        to: u64,
    },
    /// No batch is in flight.
    NoBatch,
}

/// Counters and sizes, for self-metrics and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Records waiting (not acknowledged).
    pub records: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Records dropped by the cap (cumulative).
    pub dropped_records: u64,
    /// Records lost to damage (cumulative).
    pub spool_corrupt_records: u64,
    /// Record id the next record gets.
    pub next_rid: u64,
    /// Every record up to here is acknowledged.
    pub acked_rid: u64,
    /// Highest sequence acknowledged.
    pub last_acked_seq: u64,
    /// The batch in flight.
    pub in_flight: Option<InFlight>,
}

/// One segment file as indexed.
#[derive(Debug)]
struct Segment {
    base: u64,
    bytes: u64,
    frames: FrameIndex,
    /// The `lsn` the next frame appended here would have: a segment is appended to only
    /// while this is the log's next `lsn`, so `lsn`s in a segment have no gaps.
    end_lsn: u64,
}

/// One append-only log: the segments of a class, oldest first; appends go to the last.
#[derive(Debug)]
struct Log {
    class: Class,
    dir: PathBuf,
    segments: Vec<Segment>,
    next_lsn: u64,
    writer: Option<File>,
    /// The last segment must not be appended to (a write to it failed).
    roll_next: bool,
    /// Files written since the last sync.
    unsynced: bool,
    /// A segment was created since the directory was last synced.
    dir_unsynced: bool,
}

/// A damaged region found at open.
#[derive(Debug)]
struct Found {
    key: String,
    lost: u64,
    torn: bool,
    /// `(segment index, cut here)` when it is the tail of the segment appended to.
    cut: Option<(usize, u64)>,
    /// For such a tail: the record id the lost frame had (read from its header when that
    /// is plausible, else the one after the log's last good record). It is never given
    /// again, so a record counted as lost cannot reappear under its id.
    lost_rid: Option<u64>,
}

impl Log {
    fn path(&self, base: u64) -> PathBuf {
        self.dir.join(segment::file_name(base))
    }

    fn key(&self, base: u64) -> String {
        format!("{}/{}", self.class.dir_name(), segment::file_name(base))
    }

    fn damage_key(&self, base: u64, offset: u64) -> String {
        format!("{}@{offset}", self.key(base))
    }

    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Lists and scans the segments of `class` under `spool_dir`.
    fn load(spool_dir: &Path, class: Class, floor: u64) -> Result<(Self, Vec<Found>), SpoolError> {
        let dir = spool_dir.join(class.dir_name());
        files::ensure_dir(&dir).map_err(SpoolError::CreateDir)?;
        let list_err = |source| SpoolError::List {
            path: dir.clone(),
            source,
        };
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(list_err)? {
            let name = entry.map_err(list_err)?.file_name();
            if let Some(base) = segment::parse_file_name(&name.to_string_lossy()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut log = Self {
            class,
            dir,
            segments: Vec::with_capacity(bases.len()),
            next_lsn: floor.max(1),
            writer: None,
            roll_next: false,
            unsynced: false,
            dir_unsynced: false,
        };
        let mut found = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = log.path(base);
            let bytes = std::fs::read(&path).map_err(|source| SpoolError::Read {
                path: path.clone(),
                source,
            })?;
            let scan = segment::scan(&bytes, base);
            let is_last = i + 1 == bases.len();
            let next_base = bases.get(i + 1).copied();
            let last_good_rid = scan
                .frames
                .last_rid()
                .or_else(|| log.segments.iter().rev().find_map(|s| s.frames.last_rid()))
                .unwrap_or(0);
            for d in &scan.damage {
                let cut = is_last && d.lsn_after.is_none();
                found.push(Found {
                    key: log.damage_key(base, d.offset),
                    lost: d.lost_frames(next_base),
                    torn: d.torn,
                    cut: cut.then_some((i, scan.valid_end)),
                    lost_rid: cut.then(|| {
                        let start = usize::try_from(d.offset).unwrap_or(usize::MAX);
                        let header_rid = bytes
                            .get(start..start.saturating_add(frame::HEADER_LEN))
                            .filter(|h| h[0..4] == frame::MAGIC)
                            .map(|h| {
                                let mut b = [0u8; 8];
                                b.copy_from_slice(&h[20..28]);
                                u64::from_le_bytes(b)
                            })
                            .filter(|r| *r > last_good_rid && *r - last_good_rid <= 1 << 16);
                        header_rid.unwrap_or(last_good_rid + 1)
                    }),
                });
            }
            let end_lsn = scan.last_lsn.map_or(base, |l| l.saturating_add(1));
            log.next_lsn = log.next_lsn.max(end_lsn);
            log.segments.push(Segment {
                base,
                bytes: bytes.len() as u64,
                frames: scan.frames,
                end_lsn,
            });
        }
        Ok((log, found))
    }

    /// Appends one frame to the last segment, starting a new one when it is full.
    fn write_frame(
        &mut self,
        rid: u64,
        payload: &[u8],
        segment_bytes: u64,
        fsync: FsyncPolicy,
    ) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        frame::encode(self.next_lsn, rid, payload, &mut buf);
        let len = buf.len() as u64;
        let full = match self.segments.last() {
            None => true,
            Some(s) => {
                self.roll_next
                    || s.end_lsn != self.next_lsn
                    || (s.bytes > 0 && s.bytes + len > segment_bytes)
            }
        };
        if full {
            self.start_segment(fsync)?;
        } else if self.writer.is_none() {
            let base = self.segments.last().map_or(0, |s| s.base);
            let path = self.path(base);
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|source| SpoolError::Write { path, source })?;
            self.writer = Some(f);
        }
        let (Some(seg), Some(writer)) = (self.segments.last_mut(), self.writer.as_mut()) else {
            return Ok(());
        };
        let offset = seg.bytes;
        if let Err(source) = writer.write_all(&buf) {
            // Cut the partial frame off so later frames are not written after garbage,
            // and never append to this segment again.
            let _ = writer.set_len(offset);
            self.writer = None;
            self.roll_next = true;
            return Err(SpoolError::Write {
                path: self.dir.join(segment::file_name(seg.base)),
                source,
            });
        }
        seg.bytes += len;
        seg.frames
            .push(rid, u32::try_from(offset).unwrap_or(u32::MAX));
        self.next_lsn += 1;
        seg.end_lsn = self.next_lsn;
        self.unsynced = true;
        if fsync == FsyncPolicy::Always {
            self.sync()?;
        }
        Ok(())
    }

    /// Closes the last segment (synced unless the policy is `never`) and creates the next,
    /// named after the next `lsn`.
    fn start_segment(&mut self, fsync: FsyncPolicy) -> Result<(), SpoolError> {
        if self.writer.is_some() && fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        self.writer = None;
        let base = self.next_lsn;
        let path = self.path(base);
        let f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(files::MODE_PRIVATE)
            .open(&path)
            .map_err(|source| SpoolError::Write { path, source })?;
        self.segments.push(Segment {
            base,
            bytes: 0,
            frames: FrameIndex::default(),
            end_lsn: base,
        });
        self.writer = Some(f);
        self.roll_next = false;
        self.dir_unsynced = true;
        Ok(())
    }

    /// Forces written frames (and new segment names) to disk.
    fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced {
            if let (Some(w), Some(seg)) = (self.writer.as_ref(), self.segments.last()) {
                w.sync_data().map_err(|source| SpoolError::Write {
                    path: self.dir.join(segment::file_name(seg.base)),
                    source,
                })?;
            }
            self.unsynced = false;
        }
        if self.dir_unsynced {
            files::sync_parent(&self.path(0)).map_err(|source| SpoolError::Write {
                path: self.dir.clone(),
                source,
            })?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Deletes segment `i`.
    fn delete(&mut self, i: usize) -> Result<Segment, SpoolError> {
        let path = self.path(self.segments[i].base);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SpoolError::Remove { path, source }),
        }
        if i + 1 == self.segments.len() {
            self.writer = None;
            self.unsynced = false;
            self.roll_next = true;
        }
        Ok(self.segments.remove(i))
    }
}

/// Where one picked record lives.
#[derive(Debug, Clone, Copy)]
struct Pick {
    class: Class,
    base: u64,
    rid: u64,
    offset: u64,
}

/// The spool of one state directory.
#[derive(Debug)]
pub struct Spool {
    state_dir: PathBuf,
    cfg: SpoolConfig,
    ledger: Ledger,
    logs: [Log; 2],
    next_rid: u64,
    /// The newest unacknowledged inventory in the spool: its rid and hash.
    pending_inventory: Option<(u64, String)>,
    /// The in-flight batch as last read.
    batch: Option<Arc<IngestBatch>>,
}

impl Spool {
    /// Opens (creating) the spool of `state_dir` and replays it: damaged regions are
    /// skipped and counted once, a torn tail is cut off, segments holding only
    /// acknowledged records are deleted, and the cap is enforced.
    ///
    /// An unreadable `state.json` is moved aside (`state.json.corrupt-MILLIS`) with an
    /// error message and a fresh ledger is started: the gateway's acknowledgements put the
    /// sequence right again.
    ///
    /// # Errors
    /// [`SpoolError`] when the OS refuses to read or write the spool or its ledger.
    pub fn open(state_dir: &Path, cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let spool_dir = state_dir.join(SPOOL_DIR);
        files::ensure_dir(&spool_dir).map_err(SpoolError::CreateDir)?;
        let mut ledger = load_or_set_aside(state_dir)?;
        let mut dirty = false;

        // Finish evictions a crash cut short: they are counted already.
        for name in std::mem::take(&mut ledger.evicting) {
            dirty = true;
            let path = spool_dir.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(SpoolError::Remove { path, source }),
            }
        }

        let floors = ledger.next_lsn;
        let (samples, found_s) = Log::load(&spool_dir, Class::Samples, floors.samples)?;
        let (changes, found_c) = Log::load(&spool_dir, Class::Changes, floors.changes)?;
        let logs = [samples, changes];

        // Count damage not counted before; forget entries whose damage is gone.
        let mut still = Vec::new();
        let mut cuts: Vec<(usize, usize, u64, String)> = Vec::new();
        let mut lost_rid = 0u64;
        for (li, found) in [found_s, found_c].into_iter().enumerate() {
            for f in found {
                if ledger.counted_damage.contains(&f.key) {
                    still.push(f.key.clone());
                } else {
                    warn!(
                        region = %f.key,
                        lost = f.lost,
                        "spool: {} at {}; skipping it ({} record(s) lost)",
                        if f.torn { "torn write" } else { "damaged data" },
                        f.key,
                        f.lost
                    );
                    ledger.spool_corrupt_records += f.lost;
                    still.push(f.key.clone());
                    dirty = true;
                }
                if let Some(r) = f.lost_rid {
                    lost_rid = lost_rid.max(r);
                }
                if let Some((si, at)) = f.cut {
                    cuts.push((li, si, at, f.key));
                }
            }
        }
        if still.len() != ledger.counted_damage.len() {
            dirty = true;
        }
        ledger.counted_damage = still;

        let max_rid = logs
            .iter()
            .flat_map(|l| l.segments.iter().filter_map(|s| s.frames.last_rid()))
            .max()
            .unwrap_or(0);
        let in_flight_last = ledger.in_flight.as_ref().map_or(0, |f| f.last_rid);
        let next_rid = [
            ledger.next_rid,
            max_rid + 1,
            lost_rid + 1,
            ledger.acked_rid + 1,
            in_flight_last + 1,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        if let Some(f) = &ledger.in_flight {
            if f.last_rid <= ledger.acked_rid {
                warn!(
                    seq = f.seq,
                    "spool: the in-flight batch was acknowledged already; dropping its descriptor"
                );
                ledger.in_flight = None;
                dirty = true;
            }
        }

        let mut spool = Self {
            state_dir: state_dir.to_path_buf(),
            cfg,
            ledger,
            logs,
            next_rid,
            pending_inventory: None,
            batch: None,
        };
        if dirty {
            spool.write_ledger()?;
        }
        // Cut torn tails off the segments appends go to; the damage is counted already.
        for (li, si, at, key) in cuts {
            let log = &mut spool.logs[li];
            let path = log.path(log.segments[si].base);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| SpoolError::Write {
                    path: path.clone(),
                    source,
                })?;
            f.set_len(at)
                .and_then(|()| f.sync_all())
                .map_err(|source| SpoolError::Write { path, source })?;
            log.segments[si].bytes = at;
            spool.ledger.counted_damage.retain(|k| *k != key);
        }
        if let Some(f) = &spool.ledger.in_flight {
            let present = spool.count_in(spool.ledger.acked_rid + 1, f.last_rid);
            if present < f.records {
                warn!(
                    seq = f.seq,
                    "spool: the in-flight batch held {} record(s); {present} are left to resend",
                    f.records
                );
            }
        }
        spool.trim_acked()?;
        spool.refresh_pending_inventory();
        let dropped = spool.enforce_cap()?;
        if dropped > 0 {
            warn!(
                dropped,
                "spool: over its cap at start; dropped {dropped} unsent record(s)"
            );
        }
        Ok(spool)
    }

    /// Reads the spool of `state_dir` without changing anything (for `status`, next to a
    /// running collector).
    ///
    /// # Errors
    /// [`SpoolError`] when the ledger or a segment cannot be read.
    pub fn inspect(state_dir: &Path) -> Result<SpoolStats, SpoolError> {
        let ledger = Ledger::load(state_dir)?;
        let mut stats = SpoolStats {
            dropped_records: ledger.dropped_records,
            spool_corrupt_records: ledger.spool_corrupt_records,
            acked_rid: ledger.acked_rid,
            last_acked_seq: ledger.last_acked_seq,
            next_rid: ledger.next_rid.max(ledger.acked_rid + 1),
            in_flight: ledger.in_flight.clone(),
            ..SpoolStats::default()
        };
        for class in Class::ALL {
            let dir = state_dir.join(SPOOL_DIR).join(class.dir_name());
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(SpoolError::List { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| SpoolError::List {
                    path: dir.clone(),
                    source,
                })?;
                let Some(base) = segment::parse_file_name(&entry.file_name().to_string_lossy())
                else {
                    continue;
                };
                let path = entry.path();
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    // Deleted by the running collector meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(SpoolError::Read { path, source }),
                };
                let scan = segment::scan(&bytes, base);
                stats.bytes += bytes.len() as u64;
                stats.records += scan.frames.count_after(ledger.acked_rid) as u64;
                if let Some(r) = scan.frames.last_rid() {
                    stats.next_rid = stats.next_rid.max(r + 1);
                }
            }
        }
        Ok(stats)
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> SpoolConfig {
        self.cfg
    }

    /// The ledger as it stands.
    #[must_use]
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Counters and sizes.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.count_after(self.ledger.acked_rid),
            bytes: self.logs.iter().map(Log::bytes).sum(),
            dropped_records: self.ledger.dropped_records,
            spool_corrupt_records: self.ledger.spool_corrupt_records,
            next_rid: self.next_rid,
            acked_rid: self.ledger.acked_rid,
            last_acked_seq: self.ledger.last_acked_seq,
            in_flight: self.ledger.in_flight.clone(),
        }
    }

    /// Hash of the newest inventory the gateway has or will get from the spool.
    #[must_use]
    pub fn known_inventory_hash(&self) -> Option<&str> {
        self.pending_inventory
            .as_ref()
            .map(|(_, h)| h.as_str())
            .or(self.ledger.acked_inventory_hash.as_deref())
    }

    /// Writes `records` (numbering them) to their logs, syncs per policy, then enforces
    /// the cap.
    ///
    /// # Errors
    /// [`SpoolError`] when a record cannot be encoded or written; the records before it
    /// stay spooled.
    pub fn append(&mut self, records: Vec<Record>) -> Result<Appended, SpoolError> {
        let mut out = Appended {
            first_rid: self.next_rid,
            last_rid: self.next_rid.saturating_sub(1),
            dropped: 0,
        };
        if records.is_empty() {
            return Ok(out);
        }
        let segment_bytes = self.cfg.segment_bytes();
        let result = (|| {
            for record in &records {
                let rid = self.next_rid;
                let payload = serde_json::to_vec(record).map_err(|e| SpoolError::Encode {
                    rid,
                    problem: e.to_string(),
                })?;
                if payload.len() > frame::MAX_PAYLOAD {
                    return Err(SpoolError::Encode {
                        rid,
                        problem: format!(
                            "{} bytes is more than the {} a frame holds",
                            payload.len(),
                            frame::MAX_PAYLOAD
                        ),
                    });
                }
                self.logs[Class::of(record).index()].write_frame(
                    rid,
                    &payload,
                    segment_bytes,
                    self.cfg.fsync,
                )?;
                self.next_rid += 1;
                out.last_rid = rid;
                if let Record::Inventory { hash, .. } = record {
                    self.pending_inventory = Some((rid, hash.clone()));
                }
            }
            Ok(())
        })();
        if self.cfg.fsync != FsyncPolicy::Never {
            for log in &mut self.logs {
                log.sync()?;
            }
        }
        result?;
        out.dropped = self.enforce_cap()?;
        Ok(out)
    }

    /// The batch to send: the in-flight one if there is one (read back from disk after a
    /// restart), else a new one of the oldest waiting records, written down in the ledger
    /// before it is returned. `None` when nothing waits.
    ///
    /// # Errors
    /// [`SpoolError`] when a segment cannot be read or the ledger cannot be written.
    pub fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> Result<Option<Arc<IngestBatch>>, SpoolError> {
        if let Some(b) = &self.batch {
            return Ok(Some(Arc::clone(b)));
        }
        if let Some(f) = self.ledger.in_flight.clone() {
            let picks = self.pick(self.ledger.acked_rid, Some(f.last_rid), limits);
            let (records, damaged) = self.read_picks(&picks)?;
            if damaged > 0 {
                self.write_ledger()?;
            }
            info!(
                seq = f.seq,
                first_rid = f.first_rid,
                last_rid = f.last_rid,
                records = records.len(),
                "spool: resending batch {} left in flight",
                f.seq
            );
            let batch = Arc::new(IngestBatch {
                seq: f.seq,
                records,
            });
            self.batch = Some(Arc::clone(&batch));
            return Ok(Some(batch));
        }
        loop {
            let picks = self.pick(self.ledger.acked_rid, None, limits);
            if picks.is_empty() {
                return Ok(None);
            }
            let (records, _) = self.read_picks(&picks)?;
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                // Everything picked was damaged (and is now counted); pick again.
                self.write_ledger()?;
                continue;
            };
            let inventory_hash = records.iter().rev().find_map(|e| match &e.record {
                Record::Inventory { hash, .. } => Some(hash.clone()),
                _ => None,
            });
            let seq = self.ledger.last_acked_seq + 1;
            let mut next = self.ledger.clone();
            next.in_flight = Some(InFlight {
                seq,
                first_rid: first.rid,
                last_rid: last.rid,
                records: records.len() as u64,
                inventory_hash,
            });
            self.commit(next)?;
            let batch = Arc::new(IngestBatch { seq, records });
            self.batch = Some(Arc::clone(&batch));
            return Ok(Some(batch));
        }
    }

    /// Applies a gateway's acknowledgement to the in-flight batch: writes it down, then
    /// deletes segments that hold only acknowledged records.
    ///
    /// # Errors
    /// [`SpoolError`] when the ledger cannot be written or a segment deleted.
    pub fn acknowledge(&mut self, ack: &IngestAck) -> Result<AckOutcome, SpoolError> {
        if ack.last_rid >= self.next_rid {
            warn!(
                gateway_last_rid = ack.last_rid,
                next_rid = self.next_rid,
                "the gateway holds records up to id {} but this box would number the next {}: \
                 the state directory is older than the gateway's data; new records continue \
                 from {}",
                ack.last_rid,
                self.next_rid,
                ack.last_rid + 1
            );
            self.next_rid = ack.last_rid + 1;
        }
        let Some(f) = self.ledger.in_flight.clone() else {
            return Ok(AckOutcome::NoBatch);
        };
        if ack.acked_seq < f.seq {
            return Ok(AckOutcome::Behind);
        }
        if ack.duplicate && ack.last_rid < f.last_rid {
            let to = ack.acked_seq + 1;
            let mut next = self.ledger.clone();
            next.last_acked_seq = ack.acked_seq;
            self.renumber(next, to)?;
            return Ok(AckOutcome::Renumbered { from: f.seq, to });
        }
        let mut next = self.ledger.clone();
        next.last_acked_seq = ack.acked_seq;
        next.acked_rid = next.acked_rid.max(f.last_rid);
        if let Some(h) = &f.inventory_hash {
            next.acked_inventory_hash = Some(h.clone());
        }
        next.in_flight = None;
        self.commit(next)?;
        self.batch = None;
        if self
            .pending_inventory
            .as_ref()
            .is_some_and(|(rid, _)| *rid <= self.ledger.acked_rid)
        {
            self.pending_inventory = None;
        }
        let trimmed_segments = self.trim_acked()?;
        Ok(AckOutcome::Completed {
            seq: f.seq,
            records: f.records,
            trimmed_segments,
        })
    }

    /// Applies a `409 sequence_gap`: the gateway holds every sequence below `expected`
    /// and none from it on, so the in-flight batch is renumbered to `expected`. When the
    /// gateway is behind what was acknowledged (it lost data), the acknowledged inventory
    /// is forgotten so the next collection sends it again. Returns `(from, to)` when it
    /// renumbered.
    ///
    /// # Errors
    /// [`SpoolError::Ledger`] when the ledger cannot be written.
    pub fn resequence(&mut self, expected: u64) -> Result<Option<(u64, u64)>, SpoolError> {
        let expected = expected.max(1);
        let Some(f) = self.ledger.in_flight.clone() else {
            return Ok(None);
        };
        if f.seq == expected {
            return Ok(None);
        }
        let gateway_last = expected - 1;
        let mut next = self.ledger.clone();
        if gateway_last < next.last_acked_seq {
            next.acked_inventory_hash = None;
        }
        next.last_acked_seq = gateway_last;
        self.renumber(next, expected)?;
        Ok(Some((f.seq, expected)))
    }

    /// Commits `next` with the in-flight batch moved to `seq`.
    fn renumber(&mut self, mut next: Ledger, seq: u64) -> Result<(), SpoolError> {
        if let Some(f) = next.in_flight.as_mut() {
            f.seq = seq;
        }
        self.commit(next)?;
        if let Some(b) = self.batch.take() {
            let mut b = Arc::unwrap_or_clone(b);
            b.seq = seq;
            self.batch = Some(Arc::new(b));
        }
        Ok(())
    }

    /// Writes the ledger as it stands (with the current counters' floors).
    fn write_ledger(&mut self) -> Result<(), SpoolError> {
        self.commit(self.ledger.clone())
    }

    /// Writes `next` (with the current counters' floors) and makes it the ledger only once
    /// it is on disk: a failed write leaves the spool as it was.
    fn commit(&mut self, mut next: Ledger) -> Result<(), SpoolError> {
        next.next_rid = self.next_rid;
        next.next_lsn = LsnFloors {
            samples: self.logs[0].next_lsn,
            changes: self.logs[1].next_lsn,
        };
        next.write(&self.state_dir)?;
        self.ledger = next;
        Ok(())
    }

    fn count_after(&self, rid: u64) -> u64 {
        self.logs
            .iter()
            .flat_map(|l| &l.segments)
            .map(|s| s.frames.count_after(rid) as u64)
            .sum()
    }

    fn count_in(&self, lo: u64, hi: u64) -> u64 {
        self.logs
            .iter()
            .flat_map(|l| &l.segments)
            .map(|s| s.frames.count_in(lo, hi) as u64)
            .sum()
    }

    /// The waiting records after `after` in rid order across both logs: all up to
    /// `through`, or as many as `limits` allow.
    fn pick(&self, after: u64, through: Option<u64>, limits: BatchLimits) -> Vec<Pick> {
        // A cursor per log: (segment, frame).
        let mut cursors: Vec<(usize, usize)> = self
            .logs
            .iter()
            .map(|l| {
                let si = l
                    .segments
                    .iter()
                    .position(|s| s.frames.last_rid().is_some_and(|r| r > after))
                    .unwrap_or(l.segments.len());
                let fi = l
                    .segments
                    .get(si)
                    .map_or(0, |s| s.frames.first_after(after));
                (si, fi)
            })
            .collect();
        let mut picks = Vec::new();
        let mut bytes = 0usize;
        loop {
            let mut best: Option<(usize, u64)> = None;
            for (li, &(si, fi)) in cursors.iter().enumerate() {
                if let Some(seg) = self.logs[li].segments.get(si) {
                    let rid = seg.frames.rid(fi);
                    if best.is_none_or(|(_, r)| rid < r) {
                        best = Some((li, rid));
                    }
                }
            }
            let Some((li, rid)) = best else { break };
            if through.is_some_and(|t| rid > t) {
                break;
            }
            let log = &self.logs[li];
            let (si, fi) = cursors[li];
            let seg = &log.segments[si];
            let offset = seg.frames.offset(fi);
            let end = if fi + 1 < seg.frames.len() {
                seg.frames.offset(fi + 1)
            } else {
                seg.bytes
            };
            let size = usize::try_from(end.saturating_sub(offset)).unwrap_or(usize::MAX);
            if through.is_none()
                && !picks.is_empty()
                && (picks.len() >= limits.max_records
                    || bytes.saturating_add(size) > limits.max_bytes)
            {
                break;
            }
            bytes = bytes.saturating_add(size);
            picks.push(Pick {
                class: log.class,
                base: seg.base,
                rid,
                offset,
            });
            // Advance, skipping empty segments.
            let (mut nsi, mut nfi) = (si, fi + 1);
            while nsi < log.segments.len() && nfi >= log.segments[nsi].frames.len() {
                nsi += 1;
                nfi = 0;
            }
            cursors[li] = (nsi, nfi);
        }
        picks
    }

    /// Reads picked frames back, checking each again. A frame damaged since the scan is
    /// counted in `spool_corrupt_records`, remembered as counted, and dropped from the
    /// index. Returns the records and how many were damaged.
    fn read_picks(&mut self, picks: &[Pick]) -> Result<(Vec<Envelope>, u64), SpoolError> {
        let mut out = Vec::with_capacity(picks.len());
        let mut damaged = 0u64;
        let mut open: Option<(Class, u64, File)> = None;
        for p in picks {
            let log = &self.logs[p.class.index()];
            let path = log.path(p.base);
            if !matches!(&open, Some((c, b, _)) if *c == p.class && *b == p.base) {
                let f = File::open(&path).map_err(|source| SpoolError::Read {
                    path: path.clone(),
                    source,
                })?;
                open = Some((p.class, p.base, f));
            }
            let Some((_, _, file)) = &open else { continue };
            let record = match segment::read_frame(file, p.offset) {
                Ok((h, payload)) if h.rid == p.rid => serde_json::from_slice::<Record>(&payload)
                    .map_err(|e| format!("not a record: {e}")),
                Ok(_) => Err("another record id than indexed".to_string()),
                Err(ReadFrame::Damaged) => Err("checksum or framing no longer matches".into()),
                Err(ReadFrame::Io(source)) => return Err(SpoolError::Read { path, source }),
            };
            match record {
                Ok(record) => out.push(Envelope { rid: p.rid, record }),
                Err(why) => {
                    let key = log.damage_key(p.base, p.offset);
                    error!(
                        region = %key,
                        rid = p.rid,
                        "spool: record {} at {key} is unreadable ({why}); skipping it (1 record lost)",
                        p.rid
                    );
                    damaged += 1;
                    self.ledger.spool_corrupt_records += 1;
                    if !self.ledger.counted_damage.contains(&key) {
                        self.ledger.counted_damage.push(key);
                    }
                    let log = &mut self.logs[p.class.index()];
                    if let Some(seg) = log.segments.iter_mut().find(|s| s.base == p.base) {
                        if let Some(i) = seg.frames.position(p.rid) {
                            seg.frames.remove(i);
                        }
                    }
                    if self
                        .pending_inventory
                        .as_ref()
                        .is_some_and(|(rid, _)| *rid == p.rid)
                    {
                        self.refresh_pending_inventory();
                    }
                }
            }
        }
        Ok((out, damaged))
    }

    /// Deletes every segment but the last of each log whose records are all acknowledged.
    fn trim_acked(&mut self) -> Result<usize, SpoolError> {
        let acked = self.ledger.acked_rid;
        let mut n = 0;
        for li in 0..self.logs.len() {
            let mut i = 0;
            while i + 1 < self.logs[li].segments.len() {
                if self.logs[li].segments[i].frames.count_after(acked) == 0 {
                    let seg = self.logs[li].delete(i)?;
                    let key = self.logs[li].key(seg.base);
                    self.ledger
                        .counted_damage
                        .retain(|k| !k.starts_with(&format!("{key}@")));
                    n += 1;
                } else {
                    i += 1;
                }
            }
        }
        Ok(n)
    }

    /// Drops whole segments until the spool fits its cap: first segments holding only
    /// acknowledged records, then the oldest metric samples, then the oldest changes.
    /// Segments holding in-flight records are kept. Unsent records dropped are counted in
    /// the ledger (written before any file goes). Returns how many.
    fn enforce_cap(&mut self) -> Result<u64, SpoolError> {
        let max = self.cfg.max_bytes;
        let mut total: u64 = self.logs.iter().map(Log::bytes).sum();
        if total <= max {
            return Ok(0);
        }
        let acked = self.ledger.acked_rid;
        let pinned = self
            .ledger
            .in_flight
            .as_ref()
            .map(|f| (acked + 1, f.last_rid));
        // (log, base, unsent records)
        let mut victims: Vec<(usize, u64, u64)> = Vec::new();
        let garbage = self.logs.iter().enumerate().flat_map(|(li, l)| {
            l.segments
                .iter()
                .filter(|s| s.frames.count_after(acked) == 0)
                .map(move |s| (li, s.base, 0, s.bytes))
        });
        let by_class = Class::ALL.into_iter().flat_map(|c| {
            let li = c.index();
            self.logs[li]
                .segments
                .iter()
                .filter(|s| s.frames.count_after(acked) > 0)
                .filter(|s| pinned.is_none_or(|(lo, hi)| s.frames.count_in(lo, hi) == 0))
                .map(move |s| (li, s.base, s.frames.count_after(acked) as u64, s.bytes))
        });
        for (li, base, unsent, bytes) in garbage.chain(by_class) {
            if total <= max {
                break;
            }
            victims.push((li, base, unsent));
            total -= bytes;
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let dropped: u64 = victims.iter().map(|v| v.2).sum();
        if dropped > 0 {
            let mut next = self.ledger.clone();
            next.dropped_records += dropped;
            next.evicting = victims
                .iter()
                .filter(|v| v.2 > 0)
                .map(|(li, base, _)| self.logs[*li].key(*base))
                .collect();
            self.commit(next)?;
        }
        let mut changes_touched = false;
        for (li, base, _) in &victims {
            let log = &mut self.logs[*li];
            if let Some(i) = log.segments.iter().position(|s| s.base == *base) {
                log.delete(i)?;
            }
            let key = log.key(*base);
            self.ledger
                .counted_damage
                .retain(|k| !k.starts_with(&format!("{key}@")));
            changes_touched |= *li == Class::Changes.index();
        }
        self.ledger.evicting.clear();
        if changes_touched {
            self.refresh_pending_inventory();
        }
        if dropped > 0 {
            warn!(
                dropped,
                cap = max,
                "spool: reached its cap of {max} bytes; dropped the {dropped} oldest unsent \
                 record(s) ({} total dropped)",
                self.ledger.dropped_records
            );
        }
        Ok(dropped)
    }

    /// Finds the newest unacknowledged inventory in the changes log.
    fn refresh_pending_inventory(&mut self) {
        self.pending_inventory = None;
        let acked = self.ledger.acked_rid;
        let log = &self.logs[Class::Changes.index()];
        for seg in log.segments.iter().rev() {
            let first = seg.frames.first_after(acked);
            if first >= seg.frames.len() {
                continue;
            }
            let Ok(file) = File::open(log.path(seg.base)) else {
                continue;
            };
            for i in (first..seg.frames.len()).rev() {
                let Ok((_, payload)) = segment::read_frame(&file, seg.frames.offset(i)) else {
                    continue;
                };
                if let Ok(Record::Inventory { hash, .. }) = serde_json::from_slice(&payload) {
                    self.pending_inventory = Some((seg.frames.rid(i), hash));
                    return;
                }
            }
        }
    }
}

/// Loads the ledger; an unparsable one is moved aside and a fresh one started.
fn load_or_set_aside(state_dir: &Path) -> Result<Ledger, SpoolError> {
    match Ledger::load(state_dir) {
        Ok(l) => Ok(l),
        Err(StateError::Corrupt { path, source }) => {
            let aside = state_dir.join(format!(
                "{STATE_FILE}.corrupt-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            ));
            error!(
                file = %path.display(),
                "{} is unreadable ({source}); moving it to {} and starting a fresh ledger: \
                 sequence numbers are put right by the gateway's answers, the dropped and \
                 corrupt counters start again from 0",
                path.display(),
                aside.display()
            );
            std::fs::rename(&path, &aside).map_err(|source| {
                SpoolError::Ledger(StateError::Write(FileError::Write {
                    path: path.clone(),
                    source,
                }))
            })?;
            Ok(Ledger::default())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod class_tests {
    use super::*;

    #[test]
    fn collected_values_are_samples_and_dropped_first() {
        let r = Record::Collected {
            collected_at_ms: 1,
            values: Vec::new(),
        };
        assert_eq!(Class::of(&r), Class::Samples);
        assert_eq!(Class::ALL[0], Class::Samples, "samples are evicted first");
    }
}
