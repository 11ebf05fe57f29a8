//! Reading blobs back, each verified against its id.
//!
//! One data blob is read with a ranged GET of the age segments that hold it
//! (the pack's header is fetched once and kept); several blobs of one pack
//! with one GET per run of nearby blobs; a restore that needs most of a pack
//! reads the whole pack as it arrives, decrypting each segment once and
//! holding one blob at a time. Trees live in packs
//! of their own, each read whole once and kept on local disk, sealed
//! (module `spill`), so walking a snapshot's trees costs a few GETs and holds no
//! pack in memory.
//!
//! Every tree returned is validated ([`Tree::validate`]), and one reader
//! returns at most [`MAX_TREE_ENTRIES`] tree entries in all, so a forged
//! snapshot whose trees repeat a subtree exponentially stops with an error
//! instead of walking (and restoring) without end.

mod many;
mod spill;

pub use many::{FetchedBlobs, ManyBlobs};
use spill::{SpillWriter, TreeSpill};

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::RepoError;
use super::blob;
use super::crypt::{self, SEGMENT_CIPHER, SEGMENT_PLAIN, SparseObject};
use super::id::{BlobId, PackId};
use super::index::{BlobLocation, Index, PackInfo};
use super::keys::{ChunkIdKey, RestoreIdentity};
use super::pack::PackedBlob;
use super::tree::Tree;
use crate::errors::WorkerError;
use crate::storage::{ObjectReader, ObjectStore};

/// Reads blobs with the restore key.
#[derive(Clone)]
pub struct BlobReader {
    store: Arc<dyn ObjectStore>,
    identity: RestoreIdentity,
    key: ChunkIdKey,
    index: Arc<Index>,
    headers: Arc<Mutex<HashMap<PackId, Bytes>>>,
    tree_packs: Arc<TreeSpill>,
    tree_entries: Arc<AtomicU64>,
    tree_entry_limit: u64,
}

/// How many tree entries one reader returns at most, over all its trees:
/// ten times the entries of a large volume (a million-file photo library),
/// and about 2 GiB of entries held at once by a walk that holds them all.
pub const MAX_TREE_ENTRIES: u64 = 10_000_000;
/// How deep walkers of trees (`check`, `ls`, the drill) descend at most.
pub const MAX_TREE_DEPTH: usize = 256;

/// A partly fetched pack opened for decryption.
type PackStream = age::stream::StreamReader<BufReader<SparseObject>>;

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader").finish_non_exhaustive()
    }
}

impl BlobReader {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        identity: RestoreIdentity,
        key: ChunkIdKey,
        index: Arc<Index>,
    ) -> Self {
        Self {
            store,
            identity,
            key,
            index,
            headers: Arc::default(),
            tree_packs: Arc::default(),
            tree_entries: Arc::default(),
            tree_entry_limit: MAX_TREE_ENTRIES,
        }
    }

    /// The same reader returning at most `limit` tree entries in all
    /// (instead of [`MAX_TREE_ENTRIES`]), counted afresh.
    pub fn with_tree_entry_limit(mut self, limit: u64) -> Self {
        self.tree_entries = Arc::default();
        self.tree_entry_limit = limit;
        self
    }

    /// How many tree entries a walk with this reader reads at most.
    pub fn tree_entry_limit(&self) -> u64 {
        self.tree_entry_limit
    }

    /// A reader sharing this one's caches, with its own count of tree
    /// entries: one for each walk of a snapshot (a drill of one job, the
    /// check of one snapshot).
    pub fn for_walk(&self) -> Self {
        self.clone().with_tree_entry_limit(self.tree_entry_limit)
    }

    /// The id a blob with plaintext `plain` has in this repository.
    pub fn blob_id(&self, plain: &[u8]) -> BlobId {
        BlobId::from_bytes(self.key.hash(plain))
    }

    /// The index this reader resolves blobs with.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    fn locate(&self, id: &BlobId) -> Result<(BlobLocation, PackInfo), RepoError> {
        let location = self
            .index
            .get(id)
            .ok_or(RepoError::MissingBlob { id: *id })?;
        let info = *self
            .index
            .pack(&location.pack)
            .ok_or(RepoError::MissingBlob { id: *id })?;
        Ok((location, info))
    }

    /// Reads one blob's plaintext.
    ///
    /// Fails when the blob is in no index, its pack is missing, or the bytes
    /// do not decrypt, decompress and hash to `id`.
    pub async fn read(&self, id: &BlobId) -> Result<Vec<u8>, RepoError> {
        let (location, info) = self.locate(id)?;
        if location.blob.kind == super::blob::BlobKind::Tree {
            return self
                .read_spilled(&location.pack, &info, &location.blob)
                .await;
        }
        let key = location.pack.key();
        let blob = location.blob;
        let wanted = crypt::cipher_range(info.payload_offset, info.size, &blob.range());
        let mut object = SparseObject::new(info.size);
        let from_start = blob.offset < SEGMENT_PLAIN;
        if from_start {
            object.hold(0, self.store.get_range(&key, 0..wanted.end).await?);
        } else {
            object.hold(0, self.header(&location.pack, &info).await?);
            object.hold(wanted.start, self.store.get_range(&key, wanted).await?);
            let last = last_segment(&info);
            if blob.offset % SEGMENT_PLAIN == 0 && !object.holds(&last) {
                object.hold(last.start, self.store.get_range(&key, last).await?);
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buffers = BlobBuffers::default();
            this.read_at(&key, &object, &mut None, &blob, &mut buffers)?;
            Ok(buffers.into_plain(&blob))
        })
        .await
        .map_err(WorkerError::stopped("decrypting a blob"))?
    }

    /// Reads a blob out of a tree pack, spilling the pack to disk first
    /// when this reader has not yet.
    async fn read_spilled(
        &self,
        pack: &PackId,
        info: &PackInfo,
        blob: &PackedBlob,
    ) -> Result<Vec<u8>, RepoError> {
        let spilled = self
            .tree_packs
            .get_or_fill(*pack, info.size, |writer| self.spill(*pack, writer))
            .await?;
        let (this, blob, key) = (self.clone(), *blob, pack.key());
        tokio::task::spawn_blocking(move || {
            let stored = spilled
                .read(blob.range())
                .ok_or_else(|| outside(&key, &blob))??;
            this.decode(&key, &stored, &blob)
        })
        .await
        .map_err(WorkerError::stopped("reading a tree"))?
    }

    /// Fetches a whole pack and writes its plaintext with `writer` as it
    /// arrives; a body cut off midway is fetched again whole, with the
    /// store's retries.
    async fn spill(&self, pack: PackId, mut writer: SpillWriter) -> Result<SpillWriter, RepoError> {
        let body = self.store.get_reader(&pack.key()).await?;
        let this = self.clone();
        let (writer, streamed) = tokio::task::spawn_blocking(move || {
            let streamed = this.decrypt_into(&pack.key(), body, &mut writer);
            (writer, streamed)
        })
        .await
        .map_err(WorkerError::stopped("spilling a pack"))?;
        let cut = match streamed {
            Ok(()) => return Ok(writer),
            // The local file failed, not the store: reading again won't help.
            Err(local @ RepoError::TreeSpill { .. }) => return Err(local),
            Err(cut) => cut,
        };
        tracing::debug!(pack = %pack, error = %cut, "reading a tree pack again whole");
        let cipher = self.store.get(&pack.key()).await?;
        let (this, mut writer) = (self.clone(), writer);
        tokio::task::spawn_blocking(move || {
            writer.restart();
            this.decrypt_into(&pack.key(), &cipher[..], &mut writer)
                .map(|()| writer)
        })
        .await
        .map_err(WorkerError::stopped("spilling a pack"))?
    }

    /// Decrypts a whole pack from `cipher` into `writer` (blocking).
    fn decrypt_into(
        &self,
        key: &str,
        cipher: impl Read,
        writer: &mut SpillWriter,
    ) -> Result<(), RepoError> {
        let mut stream = crypt::open(self.identity.age_identities(), cipher).map_err(|source| {
            RepoError::Crypt {
                key: key.into(),
                source,
            }
        })?;
        let mut buffer = vec![0; SEGMENT_PLAIN as usize];
        loop {
            let read = match stream.read(&mut buffer) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(RepoError::Undecodable {
                        key: key.into(),
                        source: e.into(),
                    });
                }
            };
            if read == 0 {
                return Ok(());
            }
            writer.append(key, &mut buffer[..read])?;
        }
    }

    /// Decrypts and verifies one blob out of a partly fetched pack into
    /// `buffers`, through `reader` (opened on `object` when `None`) and its
    /// plaintext position; blobs must come in the order of their offsets.
    fn read_at<'b>(
        &self,
        key: &str,
        object: &SparseObject,
        reader: &mut Option<(PackStream, u64)>,
        blob: &PackedBlob,
        buffers: &'b mut BlobBuffers,
    ) -> Result<&'b [u8], RepoError> {
        let (stream, position) = match reader {
            Some(open) => open,
            None => {
                let stream = crypt::open(self.identity.age_identities(), object.clone()).map_err(
                    |source| RepoError::Crypt {
                        key: key.into(),
                        source,
                    },
                )?;
                reader.insert((stream, 0))
            }
        };
        let damaged = |e: std::io::Error| RepoError::Undecodable {
            key: key.into(),
            source: e.into(),
        };
        if blob.offset < SEGMENT_PLAIN && *position <= blob.offset {
            std::io::copy(
                &mut (&mut *stream).take(blob.offset - *position),
                &mut std::io::sink(),
            )
            .map_err(damaged)?;
        } else {
            stream.seek(SeekFrom::Start(blob.offset)).map_err(damaged)?;
        }
        let BlobBuffers { stored, plain } = buffers;
        stored.resize(blob.length as usize, 0);
        stream.read_exact(stored).map_err(damaged)?;
        *position = blob.offset + u64::from(blob.length);
        self.decode_in(key, stored, blob, plain)
    }

    async fn header(&self, pack: &PackId, info: &PackInfo) -> Result<Bytes, RepoError> {
        if let Some(header) = self.headers.lock().ok().and_then(|h| h.get(pack).cloned()) {
            return Ok(header);
        }
        let header = self
            .store
            .get_range(&pack.key(), 0..info.payload_offset)
            .await?;
        if let Ok(mut headers) = self.headers.lock() {
            headers.insert(*pack, header.clone());
        }
        Ok(header)
    }

    /// Reads, parses and validates a tree blob.
    ///
    /// Fails as [`BlobReader::read`] does, when the blob is not a tree, with
    /// [`RepoError::DamagedTree`] when it breaks a rule of FORMAT.md, and with
    /// [`RepoError::TreeLimit`] once this reader has returned more than its
    /// limit of entries.
    pub async fn read_tree(&self, id: &BlobId) -> Result<Tree, RepoError> {
        let plain = self.read(id).await?;
        let tree = Tree::from_bytes(&plain).map_err(|e| RepoError::Undecodable {
            key: format!("tree {id}"),
            source: e.into(),
        })?;
        tree.validate(|blob| {
            self.index
                .get(blob)
                .map(|l| (l.blob.kind, u64::from(l.blob.raw_length)))
        })
        .map_err(|damage| RepoError::DamagedTree { tree: *id, damage })?;
        let entries = tree.entries.len() as u64;
        let before = self.tree_entries.fetch_add(entries, Ordering::Relaxed);
        if before.saturating_add(entries) > self.tree_entry_limit {
            return Err(RepoError::TreeLimit {
                tree: *id,
                reason: format!(
                    "the snapshot's trees hold more than {} entries (a subtree repeated \
                     without end?)",
                    self.tree_entry_limit
                ),
            });
        }
        Ok(tree)
    }

    /// Fetches a whole pack as stored.
    ///
    /// Fails when the pack is missing.
    pub async fn fetch_pack(&self, pack: &PackId) -> Result<Bytes, RepoError> {
        Ok(self.store.get(&pack.key()).await?)
    }

    /// Opens a whole pack as stored, to read as it arrives
    /// ([`BlobReader::stream_pack`]).
    ///
    /// Fails when the pack is missing.
    pub async fn open_pack_reader(&self, pack: &PackId) -> Result<ObjectReader, RepoError> {
        Ok(self.store.get_reader(&pack.key()).await?)
    }

    /// Decrypts a fetched pack (blocking). age's tags authenticate every
    /// segment and each blob is checked against its id, so the pack's name
    /// need not be hashed here (`check` does that).
    ///
    /// Fails when the bytes do not decrypt.
    pub fn open_pack(&self, pack: &PackId, cipher: &[u8]) -> Result<Vec<u8>, RepoError> {
        let key = pack.key();
        crypt::decrypt(self.identity.age_identities(), cipher)
            .map_err(|source| RepoError::Crypt { key, source })
    }

    /// Decodes one blob out of a decrypted pack and verifies its id.
    ///
    /// Fails when the blob lies outside the pack or does not hash to its id.
    pub fn blob_in(
        &self,
        pack: &PackId,
        plain: &[u8],
        blob: &PackedBlob,
    ) -> Result<Vec<u8>, RepoError> {
        let key = pack.key();
        let range = blob.range();
        let stored = usize::try_from(range.start)
            .ok()
            .zip(usize::try_from(range.end).ok())
            .and_then(|(start, end)| plain.get(start..end))
            .ok_or_else(|| outside(&key, blob))?;
        self.decode(&key, stored, blob)
    }

    /// Reads `blobs` out of a whole pack one at a time, in pack order, as
    /// its bytes `cipher` arrive (blocking): only a segment and one blob are
    /// held, in `buffers` (given back by [`PackBlobs::into_buffers`], for
    /// the next pack), and no plaintext copy of the pack is made. A pack
    /// that does not open yields no blobs.
    pub fn stream_pack<R: Read>(
        &self,
        pack: &PackId,
        cipher: R,
        mut blobs: Vec<PackedBlob>,
        buffers: BlobBuffers,
    ) -> PackBlobs<'_, R> {
        blobs.sort_by_key(|b| b.offset);
        let stream = crypt::open(self.identity.age_identities(), cipher).ok();
        PackBlobs {
            reader: self,
            key: pack.key(),
            stream,
            blobs,
            next: 0,
            position: 0,
            buffers,
        }
    }

    /// Decodes `stored` (decompressed into `plain` when compressed) and
    /// verifies its id.
    fn decode_in<'b>(
        &self,
        key: &str,
        stored: &'b [u8],
        blob: &PackedBlob,
        plain: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], RepoError> {
        match blob::decode_in(stored, blob.compressed, blob.raw_length as usize, plain) {
            Some(plain) if self.matches(plain, blob) => Ok(plain),
            _ => Err(mismatch(key, blob)),
        }
    }

    /// [`Self::decode_in`] into a plaintext of its own.
    fn decode(&self, key: &str, stored: &[u8], blob: &PackedBlob) -> Result<Vec<u8>, RepoError> {
        let mut plain = Vec::new();
        self.decode_in(key, stored, blob, &mut plain)?;
        Ok(if blob.compressed {
            plain
        } else {
            stored.to_vec()
        })
    }

    fn matches(&self, plain: &[u8], blob: &PackedBlob) -> bool {
        self.key.hash(plain) == *blob.id.as_bytes()
    }
}

fn mismatch(key: &str, blob: &PackedBlob) -> RepoError {
    RepoError::Damaged {
        key: key.into(),
        reason: format!("blob {} does not match its id", blob.id),
    }
}

fn outside(key: &str, blob: &PackedBlob) -> RepoError {
    RepoError::Damaged {
        key: key.into(),
        reason: format!("blob {} lies outside the pack", blob.id),
    }
}

/// Blobs read in pack order out of a whole pack as it arrives, from
/// [`BlobReader::stream_pack`].
pub struct PackBlobs<'a, R: Read> {
    reader: &'a BlobReader,
    key: String,
    stream: Option<age::stream::StreamReader<BufReader<R>>>,
    blobs: Vec<PackedBlob>,
    next: usize,
    position: u64,
    buffers: BlobBuffers,
}

/// The buffers one blob is read and decompressed in. Reused from pack to
/// pack, they are allocated once per decoder rather than once per pack,
/// on whichever thread decodes it (each of which the allocator would keep
/// memory for).
#[derive(Debug, Default)]
pub struct BlobBuffers {
    stored: Vec<u8>,
    plain: Vec<u8>,
}

impl BlobBuffers {
    /// The plaintext of `blob` once it was decoded into these buffers: an
    /// uncompressed blob is what was stored, a compressed one what it
    /// decompressed to.
    fn into_plain(self, blob: &PackedBlob) -> Vec<u8> {
        if blob.compressed {
            self.plain
        } else {
            self.stored
        }
    }
}

/// Blobs decoded one at a time into reused [`BlobBuffers`].
pub trait BlobStream {
    /// The next blob's verified plaintext, or the error naming its pack and
    /// the blob; `None` at the end.
    fn next_blob(&mut self) -> Option<(BlobId, Result<&[u8], RepoError>)>;

    /// The buffers, for the next pack.
    fn into_buffers(self) -> BlobBuffers;
}

impl<R: Read> BlobStream for PackBlobs<'_, R> {
    /// `None` also when the pack's bytes stop arriving or decrypting (a
    /// damaged segment, a cut transfer, blobs that overlap): then
    /// [`PackBlobs::unread`] holds the rest.
    fn next_blob(&mut self) -> Option<(BlobId, Result<&[u8], RepoError>)> {
        let stream = self.stream.as_mut()?;
        let blob = *self.blobs.get(self.next)?;
        let skipped = blob.offset.checked_sub(self.position).and_then(|gap| {
            let mut gap_bytes = stream.by_ref().take(gap);
            std::io::copy(&mut gap_bytes, &mut std::io::sink())
                .ok()
                .filter(|&n| n == gap)
        });
        if skipped.is_none() {
            self.stream = None;
            return None;
        }
        let BlobBuffers { stored, plain } = &mut self.buffers;
        stored.resize(blob.length as usize, 0);
        if stream.read_exact(stored).is_err() {
            self.stream = None;
            return None;
        }
        self.next += 1;
        self.position = blob.offset + u64::from(blob.length);
        Some((
            blob.id,
            self.reader.decode_in(&self.key, stored, &blob, plain),
        ))
    }

    fn into_buffers(self) -> BlobBuffers {
        self.buffers
    }
}

impl<R: Read> PackBlobs<'_, R> {
    /// The blobs not yet read: after a decryption failure, those at and
    /// after the damage, to be read blob by blob instead.
    pub fn unread(&self) -> Vec<BlobId> {
        self.blobs[self.next..].iter().map(|b| b.id).collect()
    }
}

/// The ciphertext range of a pack's last age segment. age authenticates the
/// stream's length from it before seeking to a segment boundary.
fn last_segment(info: &PackInfo) -> std::ops::Range<u64> {
    let segments = (info.size - info.payload_offset).div_ceil(SEGMENT_CIPHER);
    let start = info.payload_offset + (segments.max(1) - 1) * SEGMENT_CIPHER;
    start..info.size
}

#[cfg(test)]
mod tests;
