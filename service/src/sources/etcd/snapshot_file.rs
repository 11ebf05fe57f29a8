//! Checking an etcd snapshot's SHA-256 trailer while it streams past.
//!
//! etcd's `Maintenance.Snapshot` (and Talos' `EtcdSnapshot`, which relays
//! it) sends the bbolt database page for page, then 32 more bytes: the
//! SHA-256 of everything before them. A file carries the hash iff
//! `size % 512 == 32` (bbolt files are whole pages; this is the test
//! `etcdutl snapshot restore` applies). [`SnapshotVerifier`] checks that
//! incrementally, holding back only the last 32 bytes, so a snapshot of any
//! size is verified without being staged. [`VerifyingReader`] wraps any
//! [`AsyncRead`] with it: the stream passes through unchanged, and at its end
//! a missing or wrong trailer becomes a read error — so a byte-stream backup
//! fed from it fails before its snapshot is committed. [`verify_file`]
//! checks a snapshot file, e.g. one restored from the repository.
//!
//! The stored bytes keep the trailer, so `etcdctl snapshot restore` and
//! `talosctl bootstrap --recover-from` check it again on the way back.

use std::io::{self, Read};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Length of the SHA-256 trailer.
pub const TRAILER_LEN: usize = 32;

/// bbolt files are a whole number of pages; etcd's check uses this unit.
const PAGE_UNIT: u64 = 512;

/// Why a snapshot failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The size says there is no trailer: the stream was cut short or is
    /// not a snapshot as etcd sends it.
    #[error(
        "the etcd snapshot ({size} bytes) carries no SHA-256 trailer (size % 512 is {remainder}, \
         not 32): the stream was cut short or is not an etcd snapshot; take the backup again, \
         and check the etcd member's log if it repeats"
    )]
    MissingTrailer {
        /// Bytes received, trailer included.
        size: u64,
        /// `size % 512`.
        remainder: u64,
    },
    /// The trailer does not match the data: the snapshot is corrupt.
    #[error(
        "the etcd snapshot ({size} bytes) is corrupt: its SHA-256 trailer says {expected} but \
         the data hashes to {actual}; nothing was stored — take the backup again, and check the \
         etcd member's disk and the network path if it repeats"
    )]
    Mismatch {
        /// Bytes received, trailer included.
        size: u64,
        /// The trailer, hex.
        expected: String,
        /// The hash of the data, hex.
        actual: String,
    },
}

/// A snapshot whose trailer matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSnapshot {
    /// Bytes of the whole snapshot, trailer included.
    pub size: u64,
    /// The SHA-256 of the database (the trailer), 64 hex digits.
    pub sha256: String,
}

impl VerifiedSnapshot {
    /// Bytes of the bbolt database, without the trailer.
    pub fn db_size(&self) -> u64 {
        self.size - TRAILER_LEN as u64
    }
}

/// Incremental check of the trailer: feed every byte in order with
/// [`update`](Self::update), then call [`finish`](Self::finish).
#[derive(Clone)]
pub struct SnapshotVerifier {
    hasher: Sha256,
    /// The last bytes seen, not yet hashed: the trailer candidate.
    tail: [u8; TRAILER_LEN],
    tail_len: usize,
    size: u64,
}

impl Default for SnapshotVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SnapshotVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotVerifier")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl SnapshotVerifier {
    /// A verifier that has seen nothing yet.
    pub fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            tail: [0; TRAILER_LEN],
            tail_len: 0,
            size: 0,
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the next bytes of the snapshot.
    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        if data.len() >= TRAILER_LEN {
            // Everything held back, and all of `data` but its last 32
            // bytes, is certainly not the trailer.
            self.hasher.update(&self.tail[..self.tail_len]);
            let (body, tail) = data.split_at(data.len() - TRAILER_LEN);
            self.hasher.update(body);
            self.tail.copy_from_slice(tail);
            self.tail_len = TRAILER_LEN;
            return;
        }
        // A short piece: hash just enough of the held-back bytes to keep
        // the last 32 bytes in `tail`.
        let total = self.tail_len + data.len();
        let spill = total.saturating_sub(TRAILER_LEN);
        self.hasher.update(&self.tail[..spill]);
        self.tail.copy_within(spill..self.tail_len, 0);
        let kept = self.tail_len - spill;
        self.tail[kept..kept + data.len()].copy_from_slice(data);
        self.tail_len = kept + data.len();
    }

    /// Checks the trailer once every byte has been fed.
    ///
    /// Fails when the size says there is no trailer or the trailer does not
    /// match the data.
    pub fn finish(self) -> Result<VerifiedSnapshot, SnapshotError> {
        let remainder = self.size % PAGE_UNIT;
        if remainder != TRAILER_LEN as u64 {
            return Err(SnapshotError::MissingTrailer {
                size: self.size,
                remainder,
            });
        }
        let actual = self.hasher.finalize();
        let expected = &self.tail[..self.tail_len];
        if actual.as_slice() != expected {
            return Err(SnapshotError::Mismatch {
                size: self.size,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
        Ok(VerifiedSnapshot {
            size: self.size,
            sha256: hex::encode(actual),
        })
    }
}

/// Why a snapshot file could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFileError {
    /// The file cannot be read.
    #[error("cannot read etcd snapshot {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid snapshot.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: SnapshotError,
    },
}

/// Verifies the snapshot file at `path`.
///
/// Fails when it cannot be read, has no trailer, or the trailer does not
/// match.
pub fn verify_file(path: &Path) -> Result<VerifiedSnapshot, VerifyFileError> {
    let read_error = |source| VerifyFileError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut verifier = SnapshotVerifier::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => verifier.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    verifier
        .finish()
        .map_err(|source| VerifyFileError::Invalid {
            path: path.display().to_string(),
            source,
        })
}

/// The outcome of a [`VerifyingReader`], readable after the reader has
/// been handed away (e.g. to a backup).
#[derive(Debug, Clone, Default)]
pub struct Verification(Arc<Mutex<Option<Result<VerifiedSnapshot, SnapshotError>>>>);

impl Verification {
    /// The outcome once the reader reached the end of its input; `None`
    /// while it has not (the stream failed or was not read to the end).
    pub fn outcome(&self) -> Option<Result<VerifiedSnapshot, SnapshotError>> {
        self.0.lock().ok().and_then(|outcome| outcome.clone())
    }

    fn set(&self, outcome: Result<VerifiedSnapshot, SnapshotError>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(outcome);
        }
    }
}

/// An [`AsyncRead`] that passes a snapshot stream through unchanged and
/// verifies its trailer at the end: a bad snapshot ends in an
/// [`io::ErrorKind::InvalidData`] error (its inner error a
/// [`SnapshotError`], see [`snapshot_error`]) instead of end of file.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    verifier: Option<SnapshotVerifier>,
    verification: Verification,
}

impl<R: AsyncRead + Unpin> VerifyingReader<R> {
    /// Wraps `inner`; the [`Verification`] tells the outcome later.
    pub fn new(inner: R) -> (Self, Verification) {
        let verification = Verification::default();
        let reader = Self {
            inner,
            verifier: Some(SnapshotVerifier::new()),
            verification: verification.clone(),
        };
        (reader, verification)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if let Some(verifier) = &mut this.verifier {
                verifier.update(new);
            }
            return Poll::Ready(Ok(()));
        }
        if !wanted {
            return Poll::Ready(Ok(()));
        }
        // End of the input: the verdict, once; later reads repeat it.
        if let Some(verifier) = this.verifier.take() {
            this.verification.set(verifier.finish());
        }
        match this.verification.outcome() {
            Some(Err(e)) => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// The [`SnapshotError`] inside an I/O error from a [`VerifyingReader`].
pub fn snapshot_error(error: &io::Error) -> Option<&SnapshotError> {
    error.get_ref()?.downcast_ref::<SnapshotError>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A snapshot-shaped byte string: `pages` × 4 KiB of data and a trailer.
    fn snapshot(pages: usize) -> Vec<u8> {
        let mut data: Vec<u8> = (0..pages * 4096).map(|i| (i * 31 % 251) as u8).collect();
        let hash = Sha256::digest(&data);
        data.extend_from_slice(&hash);
        data
    }

    fn verify_in_pieces(data: &[u8], piece: usize) -> Result<VerifiedSnapshot, SnapshotError> {
        let mut verifier = SnapshotVerifier::new();
        for chunk in data.chunks(piece) {
            verifier.update(chunk);
        }
        verifier.finish()
    }

    #[test]
    fn a_good_snapshot_verifies_in_pieces_of_any_size() {
        let data = snapshot(5);
        let expected = hex::encode(&data[data.len() - 32..]);
        for piece in [1, 7, 31, 32, 33, 512, 4096, 32 * 1024, data.len()] {
            let verified = verify_in_pieces(&data, piece)
                .unwrap_or_else(|e| panic!("piece size {piece}: {e}"));
            assert_eq!(verified.size, data.len() as u64);
            assert_eq!(verified.db_size(), 5 * 4096);
            assert_eq!(verified.sha256, expected, "piece size {piece}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_a_mismatch() {
        let good = snapshot(3);
        for position in [0, 4095, 4096 * 2 + 17, good.len() - 33, good.len() - 1] {
            let mut bad = good.clone();
            bad[position] ^= 0x10;
            match verify_in_pieces(&bad, 1000) {
                Err(SnapshotError::Mismatch { size, .. }) => assert_eq!(size, good.len() as u64),
                other => panic!("byte {position} flipped: expected a mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_cut_stream_has_no_trailer() {
        let good = snapshot(3);
        for cut in [0, 1, 31, 33, 4096, good.len() - 1] {
            match verify_in_pieces(&good[..cut], 100) {
                Err(SnapshotError::MissingTrailer { size, remainder }) => {
                    assert_eq!(size, cut as u64);
                    assert_eq!(remainder, cut as u64 % 512);
                }
                other => panic!("cut at {cut}: expected a missing trailer, got {other:?}"),
            }
        }
        // A whole page cut off the front keeps the size rule but not the hash.
        assert!(matches!(
            verify_in_pieces(&good[4096..], 4096),
            Err(SnapshotError::Mismatch { .. })
        ));
    }

    #[tokio::test]
    async fn the_reader_passes_data_through_and_fails_at_the_end_of_a_bad_one() {
        let good = snapshot(4);
        let (mut reader, verification) = VerifyingReader::new(&good[..]);
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .await
            .expect("a good snapshot reads to the end");
        assert_eq!(out, good);
        let verified = verification
            .outcome()
            .expect("verdict after the end")
            .expect("good snapshot");
        assert_eq!(verified.size, good.len() as u64);

        let mut bad = good.clone();
        bad[100] ^= 1;
        let (mut reader, verification) = VerifyingReader::new(&bad[..]);
        let mut out = Vec::new();
        let error = reader
            .read_to_end(&mut out)
            .await
            .expect_err("a corrupt snapshot fails at its end");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(
            snapshot_error(&error),
            Some(SnapshotError::Mismatch { .. })
        ));
        assert!(matches!(
            verification.outcome(),
            Some(Err(SnapshotError::Mismatch { .. }))
        ));
        assert_eq!(out.len(), bad.len(), "the data itself passed through");
    }

    #[test]
    fn verify_file_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("etcd.db");
        let mut bad = snapshot(2);
        bad[10] ^= 4;
        std::fs::write(&path, &bad).expect("write");
        let error = verify_file(&path).expect_err("corrupt file");
        let message = error.to_string();
        assert!(message.contains("etcd.db"), "{message}");
        assert!(message.contains("corrupt"), "{message}");
        std::fs::write(&path, snapshot(2)).expect("write");
        assert_eq!(verify_file(&path).expect("good file").db_size(), 8192);
    }
}
