//! One record on disk: a frame with a fixed header and a CRC-32C over everything but the
//! magic, so a torn write, a flipped bit or a stray byte is told apart from a record.
//!
//! ```text
//! offset  size  field
//!      0     4  magic  b"OPS1" (Outpost spool, frame version 1)
//!      4     4  crc    CRC-32C (Castagnoli) of bytes 8..28+len, little-endian
//!      8     4  len    payload length, little-endian, at most MAX_PAYLOAD
//!     12     8  lsn    log sequence number: +1 per frame within one log, little-endian
//!     20     8  rid    record id, little-endian
//!     28   len  payload: the record's JSON
//! ```
//!
//! The magic lets a reader find the next frame after damage (resync); the CRC makes a
//! false match there as unlikely as a CRC collision. The `lsn` numbers the frames of a log
//! without gaps, so the number of frames a damaged region swallowed is the difference of
//! the `lsn`s around it.

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"OPS1";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 28;
/// Largest payload accepted; a length beyond it is damage, not a record.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC-32C of the frame bytes after the CRC field.
fn checksum(after_crc: &[u8], payload: &[u8]) -> u32 {
    let mut d = CASTAGNOLI.digest();
    d.update(after_crc);
    d.update(payload);
    d.finalize()
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub len: u32,
    /// Log sequence number.
    pub lsn: u64,
    /// Record id.
    pub rid: u64,
}

impl Header {
    /// Bytes of the whole frame.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// Appends the frame of `payload` to `out`. Callers keep `payload` within
/// [`MAX_PAYLOAD`], so its length fits the 32-bit field.
pub fn encode(lsn: u64, rid: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut after_crc = [0u8; HEADER_LEN - 8];
    after_crc[0..4].copy_from_slice(&len.to_le_bytes());
    after_crc[4..12].copy_from_slice(&lsn.to_le_bytes());
    after_crc[12..20].copy_from_slice(&rid.to_le_bytes());
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&checksum(&after_crc, payload).to_le_bytes());
    out.extend_from_slice(&after_crc);
    out.extend_from_slice(payload);
}

/// What the bytes at some position hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, checked frame.
    Frame {
        /// Its header.
        header: Header,
        /// Its payload.
        payload: &'a [u8],
    },
    /// The start of a frame whose end is missing: a torn write at the end of a file.
    Truncated,
    /// Not a frame.
    Corrupt,
}

/// Reads the frame at the start of `buf`.
#[must_use]
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        // Too short to check: a torn header if what is there agrees with the magic.
        let n = buf.len().min(MAGIC.len());
        return if buf[..n] == MAGIC[..n] {
            Decoded::Truncated
        } else {
            Decoded::Corrupt
        };
    }
    if buf[0..4] != MAGIC {
        return Decoded::Corrupt;
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&buf[r]);
        u64::from_le_bytes(b)
    };
    let crc = u32::try_from(word(4..8)).unwrap_or(0);
    let len = usize::try_from(word(8..12)).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt;
    }
    if buf.len() < HEADER_LEN + len {
        return Decoded::Truncated;
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    if checksum(&buf[8..HEADER_LEN], payload) != crc {
        return Decoded::Corrupt;
    }
    Decoded::Frame {
        header: Header {
            len: u32::try_from(len).unwrap_or(u32::MAX),
            lsn: word(12..20),
            rid: word(20..28),
        },
        payload,
    }
}

/// The next position after `from` where a checked frame starts, if any.
#[must_use]
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER_LEN <= buf.len() {
        let rest = &buf[at..];
        let hop = rest.windows(MAGIC.len()).position(|w| w == MAGIC)?;
        at += hop;
        if matches!(decode(&buf[at..]), Decoded::Frame { .. }) {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(lsn: u64, rid: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(lsn, rid, payload, &mut v);
        v
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C.
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn frames_round_trip() {
        let f = frame(7, 42, b"{\"kind\":\"metrics\"}");
        assert_eq!(f.len(), HEADER_LEN + 18);
        match decode(&f) {
            Decoded::Frame { header, payload } => {
                assert_eq!(
                    header,
                    Header {
                        len: 18,
                        lsn: 7,
                        rid: 42
                    }
                );
                assert_eq!(header.frame_len(), f.len());
                assert_eq!(payload, b"{\"kind\":\"metrics\"}");
            }
            other => panic!("{other:?}"),
        }
        // An empty payload is a frame too.
        assert!(matches!(decode(&frame(1, 1, b"")), Decoded::Frame { .. }));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let f = frame(3, 9, b"payload bytes");
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x20;
            assert!(
                !matches!(decode(&g), Decoded::Frame { .. }),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn every_cut_is_truncated_not_corrupt() {
        let f = frame(3, 9, b"payload bytes");
        for cut in 0..f.len() {
            assert_eq!(decode(&f[..cut]), Decoded::Truncated, "cut at {cut}");
        }
        assert_eq!(decode(b"XY"), Decoded::Corrupt);
    }

    #[test]
    fn absurd_length_is_corrupt() {
        let mut f = frame(1, 1, b"x");
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&f), Decoded::Corrupt);
    }

    #[test]
    fn resync_finds_the_next_good_frame() {
        let mut buf = frame(1, 1, b"first");
        let second_at = buf.len();
        buf.extend(frame(2, 2, b"second"));
        buf.extend(frame(3, 3, b"third"));
        // Damage the first frame's length: resync from inside it lands on the second.
        buf[9] ^= 0xff;
        assert!(!matches!(decode(&buf), Decoded::Frame { .. }));
        assert_eq!(resync(&buf, 1), Some(second_at));
        // A magic inside a payload that is no frame is skipped.
        let mut tricky = frame(1, 1, b"xxOPS1yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy");
        let good = tricky.len();
        tricky.extend(frame(2, 2, b"ok"));
        assert_eq!(resync(&tricky, 1), Some(good));
        assert_eq!(resync(&tricky, good + 1), None);
    }
}
