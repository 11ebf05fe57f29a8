//! The blob codec: each blob is stored zstd-compressed, or raw when
//! compression would not make it smaller.
//!
//! Decoding is bounded: a blob's plaintext is at most its recorded
//! `raw_length`, which is at most [`BlobKind::max_raw_length`]; a zstd
//! frame that would expand further is refused, never decompressed whole.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A chunk of file or stream data.
    Data,
    /// A tree: one directory's listing (JSON).
    Tree,
}

/// The largest data blob: the chunkers' largest chunk (16 MiB).
pub const MAX_DATA_BLOB: u32 = 16 << 20;
/// The largest tree blob: a directory of about half a million entries.
pub const MAX_TREE_BLOB: u32 = 128 << 20;

impl BlobKind {
    /// The largest plaintext a blob of this kind may have. Writers refuse
    /// to store more and readers refuse to decompress more.
    pub fn max_raw_length(self) -> u32 {
        match self {
            Self::Data => MAX_DATA_BLOB,
            Self::Tree => MAX_TREE_BLOB,
        }
    }

    /// The kind's code in a pack's blob table.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Tree => 1,
        }
    }

    /// The kind of a blob-table code.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Data),
            1 => Some(Self::Tree),
            _ => None,
        }
    }
}

/// Encodes `plain` at `level` — compressed unless that saves less than 1/32
/// of its size — and hands `store` the stored bytes and whether they are a
/// zstd frame. Raw bytes are `plain` itself, compressed ones live in a
/// buffer each thread reuses: storing a blob copies and allocates nothing.
pub(crate) fn encode_with<T>(plain: &[u8], level: i32, store: impl FnOnce(&[u8], bool) -> T) -> T {
    COMPRESSOR.with(|cell| {
        let mut compressor = cell.borrow_mut();
        let packed = (level > 0)
            .then(|| compressor.compress(plain, level))
            .and_then(Result::ok)
            .filter(|&n| n + plain.len() / 32 < plain.len());
        match packed {
            Some(n) => store(&compressor.buffer[..n], true),
            None => store(plain, false),
        }
    })
}

thread_local! {
    /// One zstd context and output buffer per thread: making them per blob
    /// costs more than compressing a small blob.
    static COMPRESSOR: RefCell<ThreadCompressor> =
        RefCell::new(ThreadCompressor::default());
}

/// A zstd context for one level and the buffer it compresses into.
#[derive(Default)]
struct ThreadCompressor {
    context: Option<(i32, zstd::bulk::Compressor<'static>)>,
    buffer: Vec<u8>,
}

impl ThreadCompressor {
    /// Compresses `plain` into the buffer; returns the frame's length.
    fn compress(&mut self, plain: &[u8], level: i32) -> std::io::Result<usize> {
        if self.context.as_ref().is_none_or(|(held, _)| *held != level) {
            self.context = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let Some((_, context)) = self.context.as_mut() else {
            return Err(std::io::Error::other("no zstd context"));
        };
        self.buffer.clear();
        self.buffer
            .reserve(zstd::zstd_safe::compress_bound(plain.len()));
        context.compress_to_buffer(plain, &mut self.buffer)
    }
}

/// Reverses [`encode_with`]; `raw_length` is the plaintext length recorded for
/// the blob. Returns `None` when the stored bytes do not decompress to it.
pub(crate) fn decode(stored: &[u8], compressed: bool, raw_length: usize) -> Option<Vec<u8>> {
    if !compressed {
        return (stored.len() == raw_length).then(|| stored.to_vec());
    }
    let mut plain = Vec::new();
    decompress_into(stored, raw_length, &mut plain).then_some(plain)
}

/// Like [`decode`], without a copy: an uncompressed blob is returned as
/// stored, a compressed one is decompressed into `buffer`, which is reused.
pub(crate) fn decode_in<'a>(
    stored: &'a [u8],
    compressed: bool,
    raw_length: usize,
    buffer: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    if !compressed {
        return (stored.len() == raw_length).then_some(stored);
    }
    decompress_into(stored, raw_length, buffer).then_some(buffer.as_slice())
}

thread_local! {
    /// Each thread's decompression context, made once: a new one per blob
    /// costs more than decompressing a small blob.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Decompresses `stored` into `out`, replacing its contents; whether it
/// gave exactly `raw_length` bytes. Output beyond `out`'s capacity is
/// refused, so the capacity reserved here bounds it.
fn decompress_into(stored: &[u8], raw_length: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    out.reserve(raw_length);
    DECOMPRESSOR
        .with_borrow_mut(|slot| {
            let decompressor = match slot {
                Some(decompressor) => decompressor,
                None => slot.insert(zstd::bulk::Decompressor::new().ok()?),
            };
            decompressor.decompress_to_buffer(stored, out).ok()
        })
        .is_some_and(|n| n == raw_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_data_is_compressed_and_random_data_is_not() {
        let owned = |bytes: &[u8], compressed: bool| (bytes.to_vec(), compressed);
        let text = b"lifeboat ".repeat(1000);
        let (packed, compressed) = encode_with(&text, 3, owned);
        assert!(compressed && packed.len() < text.len() / 10);
        assert_eq!(decode(&packed, true, text.len()), Some(text.clone()));
        // Level 0 stores it raw.
        assert_eq!(encode_with(&text, 0, owned), (text.clone(), false));

        let noise: Vec<u8> = (0..10_000).map(|_| rand::random()).collect();
        let (kept, compressed) = encode_with(&noise, 3, owned);
        assert!(!compressed);
        assert_eq!(decode(&kept, false, noise.len()), Some(noise));
        assert_eq!(decode(&packed, true, text.len() + 1), None);
        // The thread's buffer, reused, still gives the same frame.
        assert_eq!(encode_with(&text, 3, owned), (packed.clone(), true));

        let mut buffer = Vec::new();
        assert_eq!(
            decode_in(&packed, true, text.len(), &mut buffer),
            Some(&text[..])
        );
        assert_eq!(decode_in(&kept, false, kept.len() + 1, &mut buffer), None);
    }

    #[test]
    fn a_zstd_bomb_decompresses_no_further_than_its_declared_length() -> anyhow::Result<()> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
        let zeros = vec![0; 1 << 20];
        for _ in 0..256 {
            std::io::Write::write_all(&mut encoder, &zeros)?;
        }
        let bomb = encoder.finish()?;
        assert!(bomb.len() < 64 << 10);
        assert_eq!(decode(&bomb, true, 4096), None);
        let mut buffer = Vec::new();
        assert_eq!(decode_in(&bomb, true, 4096, &mut buffer), None);
        assert!(buffer.capacity() < 1 << 20, "{}", buffer.capacity());
        Ok(())
    }
}
