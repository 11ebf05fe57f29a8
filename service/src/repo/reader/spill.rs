//! Tree packs kept on local disk while a reader lives.
//!
//! Walking a snapshot reads many trees out of a few packs. Each tree pack is
//! fetched whole once, decrypted as it arrives and written to a file without
//! a name in `TMPDIR`; a tree is then one positioned read. So memory holds no
//! pack, whatever the pack size or the number of trees.
//!
//! The file is sealed with ChaCha20 under a key that lives only in this
//! process, so what it leaves on disk cannot be read once the process is
//! gone. The seal needs no tag: every tree read back is checked against its
//! keyed id. One file holds at most [`SPILL_BYTES`]; past that a new file
//! starts, and readers of the old one keep it open until they are done.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use zeroize::Zeroizing;

use crate::repo::RepoError;
use crate::repo::id::PackId;

/// Bytes of tree packs one spill file holds before a new one starts:
/// twice the trees of ten million small files (a million took 52.5 MB),
/// the most one walk may read ([`super::MAX_TREE_ENTRIES`]).
const SPILL_BYTES: u64 = 1 << 30;

/// The tree packs a reader (and its clones) spilled to disk.
pub(super) struct TreeSpill {
    spilled: tokio::sync::Mutex<Spilled>,
    limit: u64,
}

#[derive(Default)]
struct Spilled {
    file: Option<Arc<SealedFile>>,
    /// Where the next pack goes in `file`.
    end: u64,
    packs: HashMap<PackId, SpilledPack>,
}

/// One pack's plaintext in a spill file.
#[derive(Clone)]
pub(super) struct SpilledPack {
    file: Arc<SealedFile>,
    start: u64,
    len: u64,
}

/// Writes one pack's plaintext into a spill file, as it is decrypted.
pub(super) struct SpillWriter {
    file: Arc<SealedFile>,
    start: u64,
    written: u64,
    bound: u64,
}

/// A file without a name, sealed with a key of its own.
struct SealedFile {
    file: File,
    key: Zeroizing<[u8; 32]>,
}

impl Default for TreeSpill {
    fn default() -> Self {
        Self::with_limit(SPILL_BYTES)
    }
}

impl TreeSpill {
    fn with_limit(limit: u64) -> Self {
        Self {
            spilled: tokio::sync::Mutex::default(),
            limit,
        }
    }

    /// Pack `id` as spilled, spilled first by `fill` (given a writer for at
    /// most `bound` bytes, and no more than one spill file holds, and
    /// handing it back once the pack is in) when it is not yet. One pack is
    /// filled at a time, and each only once.
    ///
    /// Fails when the spill file cannot be made, or as `fill` does.
    pub(super) async fn get_or_fill<F, Fut>(
        &self,
        id: PackId,
        bound: u64,
        fill: F,
    ) -> Result<SpilledPack, RepoError>
    where
        F: FnOnce(SpillWriter) -> Fut,
        Fut: Future<Output = Result<SpillWriter, RepoError>>,
    {
        let mut spilled = self.spilled.lock().await;
        if let Some(pack) = spilled.packs.get(&id) {
            return Ok(pack.clone());
        }
        let bound = bound.min(self.limit);
        let full = spilled.end.saturating_add(bound) > self.limit;
        let file = match &spilled.file {
            Some(file) if !full => file.clone(),
            _ => {
                let file = Arc::new(SealedFile::create()?);
                *spilled = Spilled {
                    file: Some(file.clone()),
                    ..Spilled::default()
                };
                file
            }
        };
        let writer = SpillWriter {
            file,
            start: spilled.end,
            written: 0,
            bound,
        };
        let writer = fill(writer).await?;
        let pack = SpilledPack {
            file: writer.file,
            start: writer.start,
            len: writer.written,
        };
        spilled.end = pack.start + pack.len;
        spilled.packs.insert(id, pack.clone());
        Ok(pack)
    }
}

impl SpilledPack {
    /// The bytes `range` of the pack's plaintext, or `None` when the range
    /// lies outside the pack.
    ///
    /// Fails when the spill file cannot be read.
    pub(super) fn read(&self, range: Range<u64>) -> Option<Result<Vec<u8>, RepoError>> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        let len = usize::try_from(range.end - range.start).ok()?;
        let at = self.start + range.start;
        let mut bytes = vec![0; len];
        Some(
            self.file
                .file
                .read_exact_at(&mut bytes, at)
                .map(|()| {
                    self.file.apply_seal(at, &mut bytes);
                    bytes
                })
                .map_err(spill_error("reading")),
        )
    }
}

impl SpillWriter {
    /// Appends the next bytes of the pack's plaintext (sealed in place).
    ///
    /// Fails when the pack grows past its bound (damaged), or the bytes
    /// cannot be written.
    pub(super) fn append(&mut self, key: &str, bytes: &mut [u8]) -> Result<(), RepoError> {
        let end = self.written + bytes.len() as u64;
        if end > self.bound {
            return Err(RepoError::Damaged {
                key: key.into(),
                reason: format!(
                    "its plaintext is longer than its {} bytes as stored (or a tree pack can be)",
                    self.bound
                ),
            });
        }
        let at = self.start + self.written;
        self.file.apply_seal(at, bytes);
        self.file
            .file
            .write_all_at(bytes, at)
            .map_err(spill_error("writing"))?;
        self.written = end;
        Ok(())
    }

    /// Drops what was appended, to fill the pack again from its start.
    pub(super) fn restart(&mut self) {
        self.written = 0;
    }
}

impl SealedFile {
    fn create() -> Result<Self, RepoError> {
        let file = crate::storage::anonymous_file(&std::env::temp_dir())
            .map_err(spill_error("creating a file for"))?;
        Ok(Self {
            file,
            key: Zeroizing::new(rand::random()),
        })
    }

    /// Seals or unseals `bytes`, which lie at `offset` in the file.
    fn apply_seal(&self, offset: u64, bytes: &mut [u8]) {
        let key: &[u8; 32] = &self.key;
        let mut cipher = ChaCha20::new(key.into(), &[0; 12].into());
        cipher.seek(offset);
        cipher.apply_keystream(bytes);
    }
}

fn spill_error(action: &'static str) -> impl Fn(io::Error) -> RepoError {
    move |source| RepoError::TreeSpill {
        action,
        dir: std::env::temp_dir(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8) -> PackId {
        PackId::from_bytes([n; 32])
    }

    async fn spill(spill: &TreeSpill, id: PackId, plain: &[u8]) -> Result<SpilledPack, RepoError> {
        let mut bytes = plain.to_vec();
        spill
            .get_or_fill(id, plain.len() as u64, |mut writer| async move {
                writer.append("test", &mut bytes)?;
                Ok(writer)
            })
            .await
    }

    #[tokio::test]
    async fn a_spilled_pack_reads_back_and_is_sealed_on_disk() -> anyhow::Result<()> {
        let spill_ = TreeSpill::default();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let first = spill(&spill_, pack(1), b"first pack").await?;
        let second = spill(&spill_, pack(2), &plain).await?;
        assert_eq!(first.read(0..10).transpose()?, Some(b"first pack".to_vec()));
        assert_eq!(
            second.read(70_000..70_100).transpose()?,
            Some(plain[70_000..70_100].to_vec())
        );
        assert!(
            second.read(199_990..200_001).is_none(),
            "a range past the pack's end"
        );
        let mut on_disk = vec![0; plain.len()];
        second.file.file.read_exact_at(&mut on_disk, second.start)?;
        let same = on_disk.iter().zip(&plain).filter(|(a, b)| a == b).count();
        assert!(
            same < plain.len() / 100,
            "{same} of the spilled bytes are the plaintext"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_pack_is_filled_once() -> anyhow::Result<()> {
        let spill_ = TreeSpill::default();
        spill(&spill_, pack(1), b"one").await?;
        let again = spill_
            .get_or_fill(pack(1), 3, |_| async { Err(RepoError::UploaderStopped) })
            .await?;
        assert_eq!(again.read(0..3).transpose()?, Some(b"one".to_vec()));
        Ok(())
    }

    #[tokio::test]
    async fn a_full_spill_starts_a_new_file_and_the_old_packs_still_read() -> anyhow::Result<()> {
        let spill_ = TreeSpill::with_limit(100);
        let old = spill(&spill_, pack(1), &[7; 60]).await?;
        let new = spill(&spill_, pack(2), &[9; 60]).await?;
        assert!(
            !Arc::ptr_eq(&old.file, &new.file),
            "the second pack did not fit"
        );
        assert_eq!(old.read(0..60).transpose()?, Some(vec![7; 60]));
        assert_eq!(new.read(0..60).transpose()?, Some(vec![9; 60]));
        let refilled = spill(&spill_, pack(1), &[8; 30]).await?;
        assert_eq!(
            refilled.read(0..30).transpose()?,
            Some(vec![8; 30]),
            "pack 1 was forgotten with its file"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_pack_is_bounded_by_what_one_file_holds() -> anyhow::Result<()> {
        let spill_ = TreeSpill::with_limit(100);
        let refused = spill_
            .get_or_fill(pack(1), u64::MAX, |mut writer| async move {
                writer.append("data/01", &mut [0; 101])?;
                Ok(writer)
            })
            .await;
        assert!(matches!(refused, Err(RepoError::Damaged { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn a_pack_longer_than_its_bound_is_refused() -> anyhow::Result<()> {
        let spill_ = TreeSpill::default();
        let refused = spill_
            .get_or_fill(pack(1), 4, |mut writer| async move {
                writer.append("data/01", &mut [0; 5])?;
                Ok(writer)
            })
            .await;
        assert!(
            matches!(&refused, Err(RepoError::Damaged { key, .. }) if key == "data/01"),
            "{:?}",
            refused.err()
        );
        Ok(())
    }
}
