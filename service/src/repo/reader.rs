//! Reading blobs back, each verified against its id.
//!
//! One blob is read with a ranged GET of the age segments that hold it (the
//! pack's header is fetched once and kept); a restore that needs most of a
//! pack fetches the whole pack instead and decrypts it once.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::RepoError;
use super::blob;
use super::crypt::{self, SEGMENT_CIPHER, SEGMENT_PLAIN, SparseObject};
use super::id::{BlobId, PackId};
use super::index::{BlobLocation, Index, PackInfo};
use super::keys::{AnyIdentity, ChunkIdKey};
use super::pack::PackedBlob;
use super::tree::Tree;
use crate::storage::ObjectStore;

/// Reads blobs with the restore key.
#[derive(Clone)]
pub struct BlobReader {
    store: Arc<dyn ObjectStore>,
    identity: Arc<AnyIdentity>,
    key: ChunkIdKey,
    index: Arc<Index>,
    headers: Arc<Mutex<HashMap<PackId, Bytes>>>,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader").finish_non_exhaustive()
    }
}

impl BlobReader {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        identity: Arc<AnyIdentity>,
        key: ChunkIdKey,
        index: Arc<Index>,
    ) -> Self {
        Self {
            store,
            identity,
            key,
            index,
            headers: Arc::default(),
        }
    }

    /// The index this reader resolves blobs with.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    fn locate(&self, id: &BlobId) -> Result<(BlobLocation, PackInfo), RepoError> {
        let location = *self
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
            if blob.offset % SEGMENT_PLAIN == 0 {
                // age authenticates the length from the last segment before
                // seeking to a segment boundary.
                let segments = (info.size - info.payload_offset).div_ceil(SEGMENT_CIPHER);
                let last = info.payload_offset + (segments.max(1) - 1) * SEGMENT_CIPHER;
                if !object.holds(&(last..info.size)) {
                    object.hold(last, self.store.get_range(&key, last..info.size).await?);
                }
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader =
                crypt::open(this.identity.age_identities(), object).map_err(|source| {
                    RepoError::Crypt {
                        key: key.clone(),
                        source,
                    }
                })?;
            let damaged = |e: std::io::Error| RepoError::Damaged {
                key: key.clone(),
                reason: e.to_string(),
            };
            if from_start {
                std::io::copy(&mut (&mut reader).take(blob.offset), &mut std::io::sink())
                    .map_err(damaged)?;
            } else {
                reader.seek(SeekFrom::Start(blob.offset)).map_err(damaged)?;
            }
            let mut stored = vec![0; blob.length as usize];
            reader.read_exact(&mut stored).map_err(damaged)?;
            this.decode(&key, &stored, &blob)
        })
        .await
        .map_err(|e| RepoError::Upload(e.to_string()))?
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

    /// Reads and parses a tree blob.
    ///
    /// Fails as [`BlobReader::read`] does, or when the blob is not a tree.
    pub async fn read_tree(&self, id: &BlobId) -> Result<Tree, RepoError> {
        let plain = self.read(id).await?;
        Tree::from_bytes(&plain).map_err(|e| RepoError::Damaged {
            key: format!("tree {id}"),
            reason: e.to_string(),
        })
    }

    /// Fetches a whole pack as stored.
    ///
    /// Fails when the pack is missing.
    pub async fn fetch_pack(&self, pack: &PackId) -> Result<Bytes, RepoError> {
        Ok(self.store.get(&pack.key()).await?)
    }

    /// Decrypts a fetched pack (blocking), checking its name first.
    ///
    /// Fails when the bytes do not hash to the pack's id or do not decrypt.
    pub fn open_pack(&self, pack: &PackId, cipher: &[u8]) -> Result<Vec<u8>, RepoError> {
        let key = pack.key();
        super::meta::verify_name(&key, pack.as_bytes(), cipher)?;
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
            .ok_or_else(|| RepoError::Damaged {
                key: key.clone(),
                reason: format!("blob {} lies outside the pack", blob.id),
            })?;
        self.decode(&key, stored, blob)
    }

    fn decode(&self, key: &str, stored: &[u8], blob: &PackedBlob) -> Result<Vec<u8>, RepoError> {
        let plain = blob::decode(stored, blob.compressed, blob.raw_length as usize);
        match plain {
            Some(plain) if self.key.hash(&plain) == *blob.id.as_bytes() => Ok(plain),
            _ => Err(RepoError::Damaged {
                key: key.into(),
                reason: format!("blob {} does not match its id", blob.id),
            }),
        }
    }
}
