//! Packs: many blobs in one age file.
//!
//! A pack's plaintext is the stored blobs back to back, then a blob table,
//! then a 16-byte trailer:
//!
//! ```text
//! blob 0 | blob 1 | … | entry 0 | entry 1 | … | u32 count | u32 version | "LBPACK\0\0"
//! entry = id (32) | kind u8 | compressed u8 | offset u64 | length u32 | raw_length u32   (50 bytes, little-endian)
//! ```
//!
//! The whole plaintext is encrypted to the restore recipients only, so the
//! blob boundaries stay hidden, and the table lets the index be rebuilt from
//! the packs alone with the restore key.

use std::io::{self, Write};

use super::blob::BlobKind;
use super::id::BlobId;

const MAGIC: &[u8; 8] = b"LBPACK\0\0";
const VERSION: u32 = 1;
const ENTRY_LEN: usize = 50;
const TRAILER_LEN: usize = 16;

/// One blob's place in a pack's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    /// The blob.
    pub id: BlobId,
    /// What it holds.
    pub kind: BlobKind,
    /// Whether it is stored as a zstd frame.
    pub compressed: bool,
    /// Where its stored bytes start in the pack's plaintext.
    pub offset: u64,
    /// How many stored bytes it has.
    pub length: u32,
    /// Its plaintext length.
    pub raw_length: u32,
}

impl PackedBlob {
    /// The plaintext byte range of the stored blob within its pack (its end
    /// saturates; [`PackedBlob::check`] refuses an entry where it would).
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset.saturating_add(u64::from(self.length))
    }

    /// Checks an entry read from a pack table or an index object: it lies
    /// within the first `area` bytes of the pack's plaintext, its plaintext
    /// is at most its kind's largest, and it is stored no larger than its
    /// plaintext (the writer keeps a blob raw unless compression shrinks it).
    ///
    /// Fails with the rule it breaks.
    pub fn check(&self, area: u64) -> Result<(), BadPack> {
        let end = self
            .offset
            .checked_add(u64::from(self.length))
            .ok_or(BadPack("blob offset overflows"))?;
        if end > area {
            return Err(BadPack("blob outside the blob area"));
        }
        if self.raw_length > self.kind.max_raw_length() {
            return Err(BadPack("blob larger than its kind's largest"));
        }
        if self.length > self.raw_length || (!self.compressed && self.length != self.raw_length) {
            return Err(BadPack("stored length does not fit its plaintext length"));
        }
        Ok(())
    }
}

/// Why a pack's plaintext could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the pack's blob table is damaged: {0}")]
pub struct BadPack(&'static str);

impl BadPack {
    /// The rule the entry breaks, without naming the table.
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

/// A pack being filled, its plaintext written to `body` as it grows: a
/// `Vec` for the plaintext itself, or an age stream writer into the pack's
/// staged file, so that a pack being filled is not held in memory.
#[derive(Debug)]
pub(crate) struct PackBuilder<W> {
    body: W,
    written: u64,
    blobs: Vec<PackedBlob>,
}

impl<W: Write> PackBuilder<W> {
    /// Starts a pack written to `body`.
    pub(crate) fn new(body: W) -> Self {
        Self {
            body,
            written: 0,
            blobs: Vec::new(),
        }
    }

    /// Appends a stored blob (blobs are at most a few MiB, far below 4 GiB).
    ///
    /// Fails when `body` does.
    pub(crate) fn add(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        stored: &[u8],
        compressed: bool,
        raw_length: usize,
    ) -> io::Result<()> {
        self.body.write_all(stored)?;
        self.blobs.push(PackedBlob {
            id,
            kind,
            compressed,
            offset: self.written,
            length: u32::try_from(stored.len()).unwrap_or(u32::MAX),
            raw_length: u32::try_from(raw_length).unwrap_or(u32::MAX),
        });
        self.written += stored.len() as u64;
        Ok(())
    }

    /// Bytes of blobs written so far.
    pub(crate) fn len(&self) -> u64 {
        self.written
    }

    /// The plaintext's length once a blob of `stored` bytes is added and
    /// the table written.
    pub(crate) fn plain_len_with(&self, stored: usize) -> u64 {
        let entries = (self.blobs.len() + 1) * ENTRY_LEN + TRAILER_LEN;
        self.written + (stored + entries) as u64
    }

    /// Writes the blob table and trailer, and returns the body and the blobs
    /// it holds.
    ///
    /// Fails when `body` does.
    pub(crate) fn finish(mut self) -> io::Result<(W, Vec<PackedBlob>)> {
        let mut table = Vec::with_capacity(self.blobs.len() * ENTRY_LEN + TRAILER_LEN);
        for blob in &self.blobs {
            table.extend_from_slice(blob.id.as_bytes());
            table.push(blob.kind.code());
            table.push(u8::from(blob.compressed));
            table.extend_from_slice(&blob.offset.to_le_bytes());
            table.extend_from_slice(&blob.length.to_le_bytes());
            table.extend_from_slice(&blob.raw_length.to_le_bytes());
        }
        let count = u32::try_from(self.blobs.len()).unwrap_or(u32::MAX);
        table.extend_from_slice(&count.to_le_bytes());
        table.extend_from_slice(&VERSION.to_le_bytes());
        table.extend_from_slice(MAGIC);
        self.body.write_all(&table)?;
        Ok((self.body, self.blobs))
    }
}

/// Reads the blob table of a pack's plaintext.
///
/// Fails when the trailer or a table entry is malformed or points outside
/// the blob area.
pub fn read_table(plain: &[u8]) -> Result<Vec<PackedBlob>, BadPack> {
    let trailer_at = plain
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or(BadPack("too short"))?;
    let trailer = &plain[trailer_at..];
    if &trailer[8..] != MAGIC {
        return Err(BadPack("no LBPACK trailer"));
    }
    if le_u32(&trailer[4..8]) != VERSION {
        return Err(BadPack("unknown pack version"));
    }
    let count = le_u32(&trailer[..4]) as usize;
    let table_at = count
        .checked_mul(ENTRY_LEN)
        .and_then(|len| trailer_at.checked_sub(len))
        .ok_or(BadPack("table longer than the pack"))?;
    plain[table_at..trailer_at]
        .chunks_exact(ENTRY_LEN)
        .map(|entry| {
            let mut id = [0; 32];
            id.copy_from_slice(&entry[..32]);
            let blob = PackedBlob {
                id: BlobId::from_bytes(id),
                kind: BlobKind::from_code(entry[32]).ok_or(BadPack("unknown blob kind"))?,
                compressed: match entry[33] {
                    0 => false,
                    1 => true,
                    _ => return Err(BadPack("unknown compression flag")),
                },
                offset: u64::from_le_bytes(entry[34..42].try_into().map_err(|_| BadPack("entry"))?),
                length: le_u32(&entry[42..46]),
                raw_length: le_u32(&entry[46..50]),
            };
            blob.check(table_at as u64)?;
            Ok(blob)
        })
        .collect()
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_and_rejects_damage() -> anyhow::Result<()> {
        let mut pack = PackBuilder::new(Vec::new());
        let a = BlobId::from_bytes([1; 32]);
        let b = BlobId::from_bytes([2; 32]);
        pack.add(a, BlobKind::Data, b"hello", false, 5)?;
        pack.add(b, BlobKind::Tree, b"zz", true, 40)?;
        let (plain, blobs) = pack.finish()?;
        let table = read_table(&plain)?;
        assert_eq!(table, blobs);
        assert_eq!(&plain[table[1].range().start as usize..][..2], b"zz");

        let mut damaged = plain.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(read_table(&damaged).is_err());
        assert!(read_table(b"short").is_err());
        Ok(())
    }

    /// The table with one entry whose offset and lengths are given.
    fn forged(offset: u64, length: u32, raw_length: u32, compressed: bool) -> io::Result<Vec<u8>> {
        let mut pack = PackBuilder::new(Vec::new());
        pack.add(
            BlobId::from_bytes([1; 32]),
            BlobKind::Data,
            b"hello",
            false,
            5,
        )?;
        let (mut plain, _) = pack.finish()?;
        let entry = plain.len() - TRAILER_LEN - ENTRY_LEN;
        plain[entry + 33] = u8::from(compressed);
        plain[entry + 34..entry + 42].copy_from_slice(&offset.to_le_bytes());
        plain[entry + 42..entry + 46].copy_from_slice(&length.to_le_bytes());
        plain[entry + 46..entry + 50].copy_from_slice(&raw_length.to_le_bytes());
        Ok(plain)
    }

    #[test]
    fn out_of_range_entries_are_refused() -> io::Result<()> {
        assert!(read_table(&forged(0, 5, 5, false)?).is_ok());
        assert!(read_table(&forged(0, 3, 5, true)?).is_ok());
        let message = |plain: &[u8]| read_table(plain).err().map(|e| e.to_string());
        assert_eq!(
            message(&forged(u64::MAX - 1, 5, 5, false)?),
            Some("the pack's blob table is damaged: blob offset overflows".into())
        );
        assert_eq!(
            message(&forged(1, 5, 5, false)?),
            Some("the pack's blob table is damaged: blob outside the blob area".into())
        );
        assert!(message(&forged(0, 5, u32::MAX, true)?).is_some_and(|m| m.contains("largest")));
        assert!(message(&forged(0, 5, 4, true)?).is_some_and(|m| m.contains("stored length")));
        assert!(message(&forged(0, 4, 5, false)?).is_some_and(|m| m.contains("stored length")));
        let huge_count = {
            let mut plain = forged(0, 5, 5, false)?;
            let at = plain.len() - TRAILER_LEN;
            plain[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            plain
        };
        assert!(message(&huge_count).is_some_and(|m| m.contains("longer than the pack")));
        Ok(())
    }
}
