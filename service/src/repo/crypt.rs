//! age encryption of whole objects, and reading parts of a stored age file.
//!
//! Objects are age v1 files: a text header, a 16-byte nonce, then the
//! payload in STREAM segments of 64 KiB plaintext plus a 16-byte tag each.
//! [`SparseObject`] lets age's seekable reader decrypt only the segments that
//! hold a wanted byte range, from ranges fetched with ranged GETs.

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use bytes::Bytes;

/// Plaintext bytes per age STREAM segment.
pub const SEGMENT_PLAIN: u64 = 64 * 1024;
/// Ciphertext bytes per full age STREAM segment (plaintext plus tag).
pub const SEGMENT_CIPHER: u64 = SEGMENT_PLAIN + 16;

/// Why an object could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// None of the identities held opens the object.
    #[error("no key held opens it (it is encrypted to other recipients)")]
    NoMatchingKey,
    /// The object is damaged: not an age file, or its header does not
    /// open.
    #[error("it is damaged: {0}")]
    Damaged(#[source] Box<age::DecryptError>),
    /// The payload is damaged: a segment's tag does not verify, or it is cut
    /// short.
    #[error("it is damaged: {0}")]
    DamagedPayload(#[source] io::Error),
    /// No encryptor could be made for the recipients.
    #[error("encryption failed: {0}")]
    Encrypt(#[source] Box<age::EncryptError>),
    /// Writing the encrypted stream failed.
    #[error("encryption failed: {0}")]
    EncryptStream(#[source] io::Error),
    /// A metadata object could not be serialised.
    #[error("cannot serialise it: {0}")]
    Serialize(#[source] serde_json::Error),
    /// A metadata object could not be compressed.
    #[error("cannot compress it: {0}")]
    Compress(#[source] io::Error),
}

/// Encrypts `plain` to `recipients` as one age file.
pub(crate) fn encrypt<'a>(
    recipients: impl Iterator<Item = &'a dyn age::Recipient>,
    plain: &[u8],
) -> Result<Vec<u8>, CryptError> {
    let out = Vec::with_capacity(cipher_len(plain.len()));
    let mut writer = encrypt_to(recipients, out)?;
    writer
        .write_all(plain)
        .and_then(|()| writer.finish())
        .map_err(CryptError::EncryptStream)
}

/// Starts an age file to `recipients` written to `out`: plaintext written
/// to the returned writer is encrypted a segment at a time, and
/// `finish` writes the last segment and returns `out`.
pub(crate) fn encrypt_to<'a, W: Write>(
    recipients: impl Iterator<Item = &'a dyn age::Recipient>,
    out: W,
) -> Result<age::stream::StreamWriter<W>, CryptError> {
    age::Encryptor::with_recipients(recipients)
        .map_err(|e| CryptError::Encrypt(Box::new(e)))?
        .wrap_output(out)
        .map_err(CryptError::EncryptStream)
}

/// Room for the age file of `plain_len` plaintext bytes: the segments'
/// tags and a header for a couple of recipients.
pub(crate) fn cipher_len(plain_len: usize) -> usize {
    plain_len + plain_len / 4096 + 512
}

/// Decrypts a whole age file with any of `identities`.
pub(crate) fn decrypt<'a>(
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    cipher: &[u8],
) -> Result<Vec<u8>, CryptError> {
    let decryptor =
        age::Decryptor::new_buffered(cipher).map_err(|e| CryptError::Damaged(Box::new(e)))?;
    let mut reader = payload(decryptor, identities)?;
    let mut plain = Vec::with_capacity(cipher.len());
    reader
        .read_to_end(&mut plain)
        .map_err(CryptError::DamagedPayload)?;
    Ok(plain)
}

/// Opens an age file for reading with any of `identities`. The header is
/// parsed from a buffer: age's unbuffered parser re-reads it many times.
pub(crate) fn open<'a, R: Read>(
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    input: R,
) -> Result<age::stream::StreamReader<BufReader<R>>, CryptError> {
    let decryptor = age::Decryptor::new_buffered(BufReader::new(input))
        .map_err(|e| CryptError::Damaged(Box::new(e)))?;
    payload(decryptor, identities)
}

/// Opens an age file held whole in memory for reading and seeking with any
/// of `identities`. Segments are decrypted only as they are read.
pub(crate) fn open_slice<'a, 'c>(
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    cipher: &'c [u8],
) -> Result<age::stream::StreamReader<io::Cursor<&'c [u8]>>, CryptError> {
    let decryptor = age::Decryptor::new_buffered(io::Cursor::new(cipher))
        .map_err(|e| CryptError::Damaged(Box::new(e)))?;
    payload(decryptor, identities)
}

/// Unwraps the file key with any of `identities`.
fn payload<'a, R: io::BufRead>(
    decryptor: age::Decryptor<R>,
    identities: impl Iterator<Item = &'a dyn age::Identity>,
) -> Result<age::stream::StreamReader<R>, CryptError> {
    decryptor.decrypt(identities).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => CryptError::NoMatchingKey,
        other => CryptError::Damaged(Box::new(other)),
    })
}

/// The length of an age file's header and nonce: where its payload starts.
pub(crate) fn payload_offset(cipher: &[u8]) -> Option<u64> {
    let mac_line = cipher.windows(5).position(|w| w == b"\n--- ")? + 1;
    let end_of_line = mac_line + cipher[mac_line..].iter().position(|&b| b == b'\n')? + 1;
    u64::try_from(end_of_line + 16).ok()
}

/// The ciphertext bytes holding plaintext `range` of an age file whose
/// payload starts at `payload_offset` and whose size is `size`.
pub(crate) fn cipher_range(payload_offset: u64, size: u64, range: &Range<u64>) -> Range<u64> {
    let first = range.start / SEGMENT_PLAIN;
    let last = range.end.saturating_sub(1).max(range.start) / SEGMENT_PLAIN;
    let start = payload_offset + first * SEGMENT_CIPHER;
    let end = (payload_offset + (last + 1) * SEGMENT_CIPHER).min(size);
    start..end
}

/// A stored object of known size of which only some byte ranges are held in
/// memory; reading elsewhere is an error. age's seekable reader runs over it.
#[derive(Debug, Clone)]
pub(crate) struct SparseObject {
    size: u64,
    position: u64,
    pieces: Vec<(u64, Bytes)>,
}

impl SparseObject {
    /// An object of `size` bytes with nothing held yet.
    pub(crate) fn new(size: u64) -> Self {
        Self {
            size,
            position: 0,
            pieces: Vec::new(),
        }
    }

    /// Holds `bytes`, which start at offset `start` of the object.
    pub(crate) fn hold(&mut self, start: u64, bytes: Bytes) {
        self.pieces.push((start, bytes));
    }

    /// Whether every byte of `range` is held.
    pub(crate) fn holds(&self, range: &Range<u64>) -> bool {
        self.piece_at(range.start)
            .is_some_and(|(start, bytes)| start + bytes.len() as u64 >= range.end)
    }

    fn piece_at(&self, offset: u64) -> Option<(u64, &Bytes)> {
        self.pieces
            .iter()
            .filter(|(start, bytes)| *start <= offset && offset < start + bytes.len() as u64)
            .max_by_key(|(start, bytes)| start + bytes.len() as u64)
            .map(|(start, bytes)| (*start, bytes))
    }
}

impl Read for SparseObject {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let position = self.position;
        let (start, bytes) = self.piece_at(position).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("byte {position} was not fetched"),
            )
        })?;
        let from = usize::try_from(position - start).map_err(io::Error::other)?;
        let n = buf.len().min(bytes.len() - from);
        buf[..n].copy_from_slice(&bytes[from..from + n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for SparseObject {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_read_decrypts_only_fetched_segments() -> anyhow::Result<()> {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let cipher = encrypt(std::iter::once(&recipient as &dyn age::Recipient), &plain)?;
        let offset = payload_offset(&cipher).ok_or_else(|| anyhow::anyhow!("no header end"))?;
        let size = cipher.len() as u64;
        let wanted = 140_000..140_100u64;
        let segments = cipher_range(offset, size, &wanted);
        let last = cipher_range(offset, size, &(plain.len() as u64 - 1..plain.len() as u64));

        let mut sparse = SparseObject::new(size);
        let cipher = Bytes::from(cipher);
        sparse.hold(0, cipher.slice(..offset as usize));
        sparse.hold(
            segments.start,
            cipher.slice(segments.start as usize..segments.end as usize),
        );
        sparse.hold(last.start, cipher.slice(last.start as usize..));
        let mut reader = open(std::iter::once(&identity as &dyn age::Identity), sparse)?;
        reader.seek(SeekFrom::Start(wanted.start))?;
        let mut got = vec![0; 100];
        reader.read_exact(&mut got)?;
        assert_eq!(got, plain[140_000..140_100]);
        Ok(())
    }
}
