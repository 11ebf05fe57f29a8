//! Several blobs of one pack read with ranged GETs: one GET per run of
//! nearby blobs (a few at once), then the blobs decoded one at a time in
//! the order they lie, through one age reader, into reused buffers.

use std::ops::Range;

use super::{BlobBuffers, BlobReader, BlobStream, PackStream, last_segment};
use crate::errors::WorkerError;
use crate::repo::RepoError;
use crate::repo::crypt::{self, SEGMENT_PLAIN, SparseObject};
use crate::repo::id::{BlobId, PackId};
use crate::repo::pack::PackedBlob;

/// Needed blobs closer than this are fetched with one GET.
const MERGE_GAP: u64 = 256 << 10;
/// Ranged GETs of one pack in flight at once: a distant store's answer
/// delay is paid once per few runs rather than once per run.
const RUNS_IN_FLIGHT: usize = 8;

/// The fetched parts of one pack that hold the blobs asked for, from
/// [`BlobReader::fetch_many`].
pub struct FetchedBlobs {
    key: String,
    object: SparseObject,
    /// The blobs of this pack asked for, in the order they lie.
    wanted: Vec<PackedBlob>,
    /// The blobs asked for that this pack does not hold.
    missing: Vec<BlobId>,
}

impl FetchedBlobs {
    /// Decodes the blobs one at a time (blocking) into `buffers`.
    pub fn decode(self, reader: &BlobReader, buffers: BlobBuffers) -> ManyBlobs<'_> {
        ManyBlobs {
            reader,
            fetched: self,
            stream: None,
            next: 0,
            buffers,
        }
    }
}

/// The blobs of [`FetchedBlobs`], each verified against its id: first
/// those the pack does not hold (as [`RepoError::MissingBlob`]), then the
/// others in pack order. After a blob fails, the next opens the pack afresh.
pub struct ManyBlobs<'a> {
    reader: &'a BlobReader,
    fetched: FetchedBlobs,
    stream: Option<(PackStream, u64)>,
    next: usize,
    buffers: BlobBuffers,
}

impl BlobStream for ManyBlobs<'_> {
    fn next_blob(&mut self) -> Option<(BlobId, Result<&[u8], RepoError>)> {
        if let Some(id) = self.fetched.missing.pop() {
            return Some((id, Err(RepoError::MissingBlob { id })));
        }
        let blob = *self.fetched.wanted.get(self.next)?;
        self.next += 1;
        let FetchedBlobs { key, object, .. } = &self.fetched;
        let read = self
            .reader
            .read_at(key, object, &mut self.stream, &blob, &mut self.buffers);
        if read.is_err() {
            self.stream = None;
        }
        Some((blob.id, read))
    }

    fn into_buffers(self) -> BlobBuffers {
        self.buffers
    }
}

impl BlobReader {
    /// Fetches the parts of `pack` that hold `blobs`, with one ranged GET per
    /// run of nearby blobs, a few at once.
    ///
    /// Fails as a whole only when the pack's header cannot be fetched.
    pub async fn fetch_many(
        &self,
        pack: &PackId,
        blobs: &[BlobId],
    ) -> Result<FetchedBlobs, RepoError> {
        let key = pack.key();
        let Some(info) = self.index.pack(pack).copied() else {
            return Ok(FetchedBlobs {
                key,
                object: SparseObject::new(0),
                wanted: Vec::new(),
                missing: blobs.to_vec(),
            });
        };
        let mut wanted: Vec<PackedBlob> = Vec::new();
        let mut missing = Vec::new();
        for id in blobs {
            match self.index.get(id) {
                Some(location) if location.pack == *pack => wanted.push(location.blob),
                _ => missing.push(*id),
            }
        }
        wanted.sort_by_key(|b| b.offset);
        let mut object = SparseObject::new(info.size);
        object.hold(0, self.header(pack, &info).await?);
        let mut runs: Vec<Range<u64>> = Vec::new();
        for blob in &wanted {
            let range = crypt::cipher_range(info.payload_offset, info.size, &blob.range());
            match runs.last_mut() {
                Some(last) if range.start <= last.end + MERGE_GAP => {
                    last.end = last.end.max(range.end)
                }
                _ => runs.push(range),
            }
        }
        if wanted
            .iter()
            .any(|b| b.offset % SEGMENT_PLAIN == 0 && b.offset > 0)
        {
            let last = last_segment(&info);
            if !runs
                .last()
                .is_some_and(|run| run.start <= last.start && last.end <= run.end)
            {
                runs.push(last);
            }
        }
        runs.retain(|run| !object.holds(run));
        let mut fetching = tokio::task::JoinSet::new();
        let mut runs = runs.into_iter();
        loop {
            while fetching.len() < RUNS_IN_FLIGHT {
                let Some(run) = runs.next() else { break };
                let (store, key) = (self.store.clone(), key.clone());
                fetching.spawn(async move {
                    let start = run.start;
                    store.get_range(&key, run).await.map(|bytes| (start, bytes))
                });
            }
            let Some(fetched) = fetching.join_next().await else {
                break;
            };
            let (start, bytes) = fetched.map_err(WorkerError::stopped("fetching blobs"))??;
            object.hold(start, bytes);
        }
        Ok(FetchedBlobs {
            key,
            object,
            wanted,
            missing,
        })
    }

    /// Reads several blobs of one pack ([`Self::fetch_many`]) and returns
    /// each blob's plaintext or error.
    ///
    /// Fails as a whole only when the pack's header cannot be fetched.
    pub async fn read_many(
        &self,
        pack: &PackId,
        blobs: &[BlobId],
    ) -> Result<Vec<(BlobId, Result<Vec<u8>, RepoError>)>, RepoError> {
        let fetched = self.fetch_many(pack, blobs).await?;
        let this = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut blobs = fetched.decode(&this, BlobBuffers::default());
            let mut read = Vec::new();
            while let Some((id, plain)) = blobs.next_blob() {
                read.push((id, plain.map(<[u8]>::to_vec)));
            }
            read
        })
        .await
        .map_err(WorkerError::stopped("decrypting blobs"))?;
        Ok(read)
    }
}
