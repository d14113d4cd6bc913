//! Segment files: `{base_lsn:020}.seg`, a run of frames appended one after another.
//!
//! A segment is named after the `lsn` of its first frame, so the names of one log sort in
//! write order. [`scan`] reads a segment's bytes into an index of its good frames and a list
//! of damaged regions; it never fails: whatever is not a checked frame is damage, and the
//! frames after damage are found again by their magic.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::frame::{self, Decoded, Header, HEADER_LEN, MAX_PAYLOAD};

/// Extension of segment files.
pub const SUFFIX: &str = ".seg";

/// `{base_lsn:020}.seg`.
#[must_use]
pub fn file_name(base_lsn: u64) -> String {
    format!("{base_lsn:020}{SUFFIX}")
}

/// The base `lsn` a segment file name stands for; `None` for other names.
#[must_use]
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The good frames of a segment: record ids (increasing) and where each frame starts.
/// Two parallel vectors keep it at 12 bytes per record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameIndex {
    rids: Vec<u64>,
    offsets: Vec<u32>,
}

impl FrameIndex {
    /// Frames indexed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rids.len()
    }

    /// Whether no frame is indexed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rids.is_empty()
    }

    /// Adds a frame; rids must increase.
    pub fn push(&mut self, rid: u64, offset: u32) {
        debug_assert!(self.rids.last().is_none_or(|last| *last < rid));
        self.rids.push(rid);
        self.offsets.push(offset);
    }

    /// Record id of frame `i`.
    #[must_use]
    pub fn rid(&self, i: usize) -> u64 {
        self.rids[i]
    }

    /// Offset of frame `i`.
    #[must_use]
    pub fn offset(&self, i: usize) -> u64 {
        u64::from(self.offsets[i])
    }

    /// Smallest record id, if any.
    #[must_use]
    pub fn first_rid(&self) -> Option<u64> {
        self.rids.first().copied()
    }

    /// Largest record id, if any.
    #[must_use]
    pub fn last_rid(&self) -> Option<u64> {
        self.rids.last().copied()
    }

    /// Index of the first frame with a record id above `rid`.
    #[must_use]
    pub fn first_after(&self, rid: u64) -> usize {
        self.rids.partition_point(|r| *r <= rid)
    }

    /// Frames with a record id above `rid`.
    #[must_use]
    pub fn count_after(&self, rid: u64) -> usize {
        self.len() - self.first_after(rid)
    }

    /// Frames with a record id in `lo..=hi`.
    #[must_use]
    pub fn count_in(&self, lo: u64, hi: u64) -> usize {
        if lo > hi {
            return 0;
        }
        self.rids.partition_point(|r| *r <= hi) - self.rids.partition_point(|r| *r < lo)
    }

    /// Forgets frame `i` (found damaged when read back).
    pub fn remove(&mut self, i: usize) {
        self.rids.remove(i);
        self.offsets.remove(i);
    }

    /// Position of the frame with record id `rid`.
    #[must_use]
    pub fn position(&self, rid: u64) -> Option<usize> {
        self.rids.binary_search(&rid).ok()
    }
}

/// A region of a segment that holds no checked frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts.
    pub offset: u64,
    /// How long it is.
    pub len: u64,
    /// `lsn` of the good frame before it (`base - 1` at the start of the file).
    pub lsn_before: u64,
    /// `lsn` of the good frame after it in this file; `None` when it runs to the end.
    pub lsn_after: Option<u64>,
    /// It starts with the beginning of a frame whose end is missing (a torn write).
    pub torn: bool,
}

impl Damage {
    /// Frames lost in this region. Between two good frames, exactly the `lsn`s missing;
    /// at the end of a file, the `lsn`s up to `next_base` (the next segment's first), or
    /// one when there is no next segment (a torn append).
    #[must_use]
    pub fn lost_frames(&self, next_base: Option<u64>) -> u64 {
        let gap = |after: u64| after.saturating_sub(self.lsn_before).saturating_sub(1);
        match (self.lsn_after, next_base) {
            (Some(after), _) | (None, Some(after)) => gap(after),
            (None, None) => 1,
        }
    }
}

/// What a scan of a segment found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Good frames.
    pub frames: FrameIndex,
    /// `lsn` of the last good frame.
    pub last_lsn: Option<u64>,
    /// End of the last good frame: where the next append goes once damage is cut off.
    pub valid_end: u64,
    /// Damaged regions, in file order.
    pub damage: Vec<Damage>,
}

impl Scan {
    /// The damaged region running to the end of the file, if any.
    #[must_use]
    pub fn tail_damage(&self) -> Option<&Damage> {
        self.damage.last().filter(|d| d.lsn_after.is_none())
    }
}

/// Indexes the frames of a segment whose first frame has `lsn` `base`.
#[must_use]
pub fn scan(bytes: &[u8], base: u64) -> Scan {
    let mut out = Scan::default();
    let mut prev_lsn = base.saturating_sub(1);
    let mut prev_rid = 0u64;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let decoded = frame::decode(&bytes[pos..]);
        if let Decoded::Frame { header, .. } = decoded {
            // A checked frame out of order can only be a stale copy; treat it as damage.
            if header.rid > prev_rid && header.lsn > prev_lsn {
                out.frames
                    .push(header.rid, u32::try_from(pos).unwrap_or(u32::MAX));
                prev_rid = header.rid;
                prev_lsn = header.lsn;
                out.last_lsn = Some(header.lsn);
                pos += header.frame_len();
                out.valid_end = pos as u64;
                continue;
            }
        }
        let torn = matches!(decoded, Decoded::Truncated);
        match frame::resync(bytes, pos + 1) {
            Some(next) => {
                let lsn_after = match frame::decode(&bytes[next..]) {
                    Decoded::Frame { header, .. } => Some(header.lsn),
                    _ => None,
                };
                out.damage.push(Damage {
                    offset: pos as u64,
                    len: (next - pos) as u64,
                    lsn_before: prev_lsn,
                    lsn_after,
                    torn: false,
                });
                pos = next;
            }
            None => {
                out.damage.push(Damage {
                    offset: pos as u64,
                    len: (bytes.len() - pos) as u64,
                    lsn_before: prev_lsn,
                    lsn_after: None,
                    torn,
                });
                break;
            }
        }
    }
    out
}

/// Why a frame could not be read back.
#[derive(Debug)]
pub enum ReadFrame {
    /// The OS failed to read.
    Io(io::Error),
    /// The bytes are no longer a good frame (changed on disk since the scan).
    Damaged,
}

/// Reads and checks the frame at `offset` of `file`; returns its header and payload.
///
/// # Errors
/// [`ReadFrame::Io`] when reading fails, [`ReadFrame::Damaged`] when the bytes are not the
/// checked frame they were.
pub fn read_frame(file: &File, offset: u64) -> Result<(Header, Vec<u8>), ReadFrame> {
    let mut head = [0u8; HEADER_LEN];
    match file.read_exact_at(&mut head, offset) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ReadFrame::Damaged),
        Err(e) => return Err(ReadFrame::Io(e)),
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if head[0..4] != frame::MAGIC || len > MAX_PAYLOAD {
        return Err(ReadFrame::Damaged);
    }
    let mut buf = vec![0u8; HEADER_LEN + len];
    buf[..HEADER_LEN].copy_from_slice(&head);
    match file.read_exact_at(&mut buf[HEADER_LEN..], offset + HEADER_LEN as u64) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ReadFrame::Damaged),
        Err(e) => return Err(ReadFrame::Io(e)),
    }
    match frame::decode(&buf) {
        Decoded::Frame { header, .. } => {
            buf.drain(..HEADER_LEN);
            Ok((header, buf))
        }
        _ => Err(ReadFrame::Damaged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(frames: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (lsn, rid, p) in frames {
            frame::encode(*lsn, *rid, p, &mut v);
        }
        v
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "42.seg",
            ".00000000000000000042.seg.tmp",
            "0000000000000000004x.seg",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn clean_segment_indexes_every_frame() {
        let bytes = log(&[(5, 10, b"a"), (6, 12, b"bb"), (7, 13, b"ccc")]);
        let s = scan(&bytes, 5);
        assert_eq!(s.frames.len(), 3);
        assert_eq!(
            (s.frames.first_rid(), s.frames.last_rid()),
            (Some(10), Some(13))
        );
        assert_eq!(s.frames.offset(1), (HEADER_LEN + 1) as u64);
        assert_eq!(s.last_lsn, Some(7));
        assert_eq!(s.valid_end, bytes.len() as u64);
        assert!(s.damage.is_empty());
        assert_eq!(s.frames.count_after(10), 2);
        assert_eq!(s.frames.count_in(11, 13), 2);
        assert_eq!(s.frames.count_in(14, 20), 0);
        assert_eq!(s.frames.position(12), Some(1));
    }

    #[test]
    fn torn_tail_is_one_lost_frame() {
        let bytes = log(&[(1, 1, b"one"), (2, 2, b"two"), (3, 3, b"three")]);
        let cut = bytes.len() - 2;
        let s = scan(&bytes[..cut], 1);
        assert_eq!(s.frames.len(), 2);
        let d = s.tail_damage().copied().unwrap();
        assert!(d.torn);
        assert_eq!(d.offset, s.valid_end);
        assert_eq!(d.lost_frames(None), 1);
    }

    #[test]
    fn flipped_byte_in_the_middle_loses_exactly_that_frame() {
        let bytes = log(&[
            (1, 1, b"one"),
            (2, 2, b"two"),
            (3, 3, b"three"),
            (4, 4, b"four"),
        ]);
        // Flip one byte in every position of frame 2 in turn: always one frame lost, the
        // others found.
        let start = HEADER_LEN + 3;
        let end = start + HEADER_LEN + 3;
        for i in start..end {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let s = scan(&b, 1);
            assert_eq!(s.frames.len(), 3, "flip at {i}");
            assert_eq!(s.damage.len(), 1, "flip at {i}");
            assert_eq!(s.damage[0].lost_frames(None), 1, "flip at {i}");
            assert_eq!(s.frames.position(2), None);
        }
    }

    #[test]
    fn damage_at_the_end_of_a_full_segment_counts_up_to_the_next_one() {
        let bytes = log(&[(1, 1, b"one"), (2, 2, b"two"), (3, 3, b"three")]);
        let mut b = bytes.clone();
        // Destroy the last two frames completely.
        for x in &mut b[HEADER_LEN + 3..] {
            *x = 0;
        }
        let s = scan(&b, 1);
        let d = s.tail_damage().copied().unwrap();
        assert_eq!(d.lsn_before, 1);
        assert_eq!(d.lost_frames(Some(4)), 2);
        assert_eq!(d.lost_frames(None), 1);
    }

    #[test]
    fn garbage_file_is_all_damage() {
        let s = scan(b"this is not a spool segment at all, just text", 9);
        assert!(s.frames.is_empty());
        assert_eq!(s.valid_end, 0);
        assert_eq!(s.damage.len(), 1);
        assert!(!s.damage[0].torn);
        assert_eq!(s.damage[0].lsn_before, 8);
        assert_eq!(s.damage[0].lost_frames(Some(12)), 3);
        assert!(scan(b"", 1).damage.is_empty());
    }

    #[test]
    fn read_frame_checks_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(file_name(1));
        let bytes = log(&[(1, 1, b"one"), (2, 2, b"two")]);
        std::fs::write(&p, &bytes).unwrap();
        let f = File::open(&p).unwrap();
        let (h, payload) = read_frame(&f, (HEADER_LEN + 3) as u64).unwrap();
        assert_eq!((h.lsn, h.rid, payload.as_slice()), (2, 2, &b"two"[..]));
        assert!(matches!(read_frame(&f, 3), Err(ReadFrame::Damaged)));
        assert!(matches!(read_frame(&f, 1000), Err(ReadFrame::Damaged)));
        let mut b = bytes;
        b[HEADER_LEN + 3 + HEADER_LEN] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let f = File::open(&p).unwrap();
        assert!(matches!(
            read_frame(&f, (HEADER_LEN + 3) as u64),
            Err(ReadFrame::Damaged)
        ));
    }
}
