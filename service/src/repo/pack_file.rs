//! A pack's ciphertext (or a large snapshot's) written to a staged file as
//! it is made, and hashed on the way, so that it is named without reading
//! it again.

use std::io::{self, Write};

use crate::storage::Staged;

use super::crypt;

/// The ciphertext kept from a pack's start to find where its payload
/// starts: the age header (about 200 bytes a recipient) and the nonce.
const HEAD_BYTES: usize = 16 * 1024;

/// Where an age writer puts a pack's ciphertext: its staged file.
#[derive(Debug)]
pub(crate) struct PackFile {
    staged: Staged,
    hasher: blake3::Hasher,
    len: u64,
    head: Vec<u8>,
}

/// A pack's ciphertext, written whole.
#[derive(Debug)]
pub(crate) struct WrittenPack {
    /// The file holding it.
    pub staged: Staged,
    /// The BLAKE3 of its bytes: its name.
    pub hash: [u8; 32],
    /// Its length in bytes.
    pub size: u64,
    /// Where its payload starts (after the age header and nonce).
    pub payload_offset: Option<u64>,
}

impl PackFile {
    /// Writes to `staged`, which must be empty.
    pub(crate) fn new(staged: Staged) -> Self {
        Self {
            staged,
            hasher: blake3::Hasher::new(),
            len: 0,
            head: Vec::new(),
        }
    }

    /// Ends the writing: returns the file and what is known of its bytes.
    pub(crate) fn finish(self) -> WrittenPack {
        WrittenPack {
            payload_offset: crypt::payload_offset(&self.head),
            hash: *self.hasher.finalize().as_bytes(),
            size: self.len,
            staged: self.staged,
        }
    }
}

impl Write for PackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.staged.write(buf)?;
        let buf = &buf[..written];
        self.hasher.update(buf);
        self.len += written as u64;
        let room = HEAD_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&buf[..room.min(buf.len())]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.staged.flush()
    }
}
