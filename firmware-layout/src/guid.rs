//! GUIDs: parsing, formatting, the GPT mixed-endian encoding, and derivation from the layout seed.
//!
//! Every identifier in an image (disk GUID, partition GUIDs, ext4 UUIDs and hash seeds, the vfat
//! volume id) is derived from the layout's seed and a purpose string, so two builds of the same
//! layout produce the same bytes. A derived GUID is an RFC 9562 version 8 ("custom") UUID whose
//! 122 free bits are the first bytes of `sha256("outpost-layout\0" || seed || "\0" || purpose)`.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A GUID / UUID in canonical (RFC, big-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

/// The GUID string was not 32 hex digits in the 8-4-4-4-12 form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid GUID {0:?}: expected the form 01234567-89ab-cdef-0123-456789abcdef")]
pub struct ParseGuidError(pub String);

impl Guid {
    /// The all-zero GUID (an unused GPT entry).
    pub const ZERO: Guid = Guid([0; 16]);

    /// Derives a version 8 GUID from `seed` and `purpose` (see the module docs).
    #[must_use]
    pub fn derive(seed: &str, purpose: &str) -> Guid {
        let digest = derive_bytes(seed, purpose);
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0f) | 0x80; // version 8
        b[8] = (b[8] & 0x3f) | 0x80; // RFC variant
        Guid(b)
    }

    /// The 16 bytes as stored in a GPT header or entry: the first three fields little-endian.
    #[must_use]
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    /// The inverse of [`Guid::to_gpt_bytes`].
    #[must_use]
    pub fn from_gpt_bytes(raw: &[u8; 16]) -> Guid {
        let mut b = *raw;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Guid(b)
    }
}

/// sha256 over the domain-separated seed and purpose; the source of every derived identifier.
#[must_use]
pub fn derive_bytes(seed: &str, purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"outpost-layout\0");
    h.update(seed.as_bytes());
    h.update(b"\0");
    h.update(purpose.as_bytes());
    h.finalize().into()
}

/// A 32-bit vfat volume id derived from `seed` and `purpose`.
#[must_use]
pub fn derive_volume_id(seed: &str, purpose: &str) -> u32 {
    let d = derive_bytes(seed, purpose);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = ParseGuidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(ParseGuidError(s.to_string()));
        }
        let mut b = [0u8; 16];
        hex::decode_to_slice(parts.concat(), &mut b).map_err(|_| ParseGuidError(s.to_string()))?;
        Ok(Guid(b))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_canonical_form() {
        let g: Guid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap();
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert!("c12a7328f81f11d2ba4b00a0c93ec93b".parse::<Guid>().is_err());
        assert!("x12a7328-f81f-11d2-ba4b-00a0c93ec93b"
            .parse::<Guid>()
            .is_err());
    }

    #[test]
    fn gpt_encoding_is_mixed_endian() {
        let g: Guid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap();
        let raw = g.to_gpt_bytes();
        assert_eq!(&raw[..8], &[0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11]);
        assert_eq!(&raw[8..], &g.0[8..]);
        assert_eq!(Guid::from_gpt_bytes(&raw), g);
    }

    #[test]
    fn derived_guids_are_stable_v8_and_distinct() {
        let a = Guid::derive("seed", "part:root-a");
        assert_eq!(a, Guid::derive("seed", "part:root-a"));
        assert_ne!(a, Guid::derive("seed", "part:root-b"));
        assert_ne!(a, Guid::derive("seed2", "part:root-a"));
        assert_eq!(a.0[6] >> 4, 8);
        assert_eq!(a.0[8] >> 6, 2);
    }
}
