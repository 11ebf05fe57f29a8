//! Writing blobs: deduplicate, compress, pack, encrypt, upload, index.
//!
//! [`BlobWriter::save`] is synchronous and may be called from many threads
//! at once: hashing and compression run on the caller's thread, a pack is
//! encrypted as its blobs are added, straight into a file the store staged
//! for it (a pack is never held in memory), and sealed packs go through a
//! bounded channel to an async uploader that runs a few uploads at a time.
//! A `PackBudget` bounds the packs alive at once, so neither memory nor
//! staged files grow with the data or with a slow store. The uploader
//! writes an index object after every few packs and at the end, always
//! after the packs it lists are stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::RepoError;
use super::blob::{self, BlobKind};
use super::budget::{PackBudget, Permit};
use super::config::RepoConfig;
use super::crypt;
use super::id::{BlobId, IndexId, PackId, content_hash};
use super::id_set::IdSet;
use super::index::{Index, IndexFile, IndexedBlob, IndexedPack};
use super::keys::{ChunkIdKey, Recipients};
use super::meta;
use super::pack::{PackBuilder, PackedBlob};
use super::pack_file::PackFile;
use super::put::{put_content_named, put_staged_content_named};
use crate::errors::WorkerError;
use crate::storage::{ObjectStore, Staged};

/// Packs uploaded at the same time: two keep a home uplink busy.
const PARALLEL_UPLOADS: usize = 2;
/// Sealed packs handed to the uploader before it takes them up.
const QUEUED_PACKS: usize = 1;
/// Packs listed per index object written during a backup.
const PACKS_PER_INDEX: usize = 8;
/// Packs alive at once: one being filled per blob kind, and the uploads.
/// A sealed pack waits in the queue only until an upload ends, and a
/// writer waits for that before it opens another: about 3 full data packs
/// (55 MiB at the default size) are staged at most.
const PACKS_IN_FLIGHT: usize = 2 + PARALLEL_UPLOADS;

/// A pack being filled: its ciphertext so far, in its staged file, and its
/// place in the budget.
struct OpenPack {
    builder: PackBuilder<age::stream::StreamWriter<PackFile>>,
    permit: Permit,
}

/// A pack ready for upload.
struct SealedPack {
    id: PackId,
    staged: Staged,
    size: u64,
    payload_offset: u64,
    blobs: Vec<PackedBlob>,
    /// Given back when the upload ends.
    permit: Permit,
}

/// What a writer stored.
#[derive(Debug, Clone, Default)]
pub struct WriteStats {
    /// New blobs.
    pub blobs_added: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_added: u64,
    /// Bytes of new packs as stored.
    pub bytes_stored: u64,
    /// The packs written. What they hold is in the index objects: a
    /// million blobs' entries kept here until the end took 56 MB.
    pub packs: Vec<PackId>,
    /// The index objects written.
    pub indexes: Vec<IndexId>,
    /// Blobs stored again that the loaded index already held (copies, and
    /// blobs whose packs a prune plan dooms).
    pub restored: Vec<BlobId>,
    /// Every blob stored, in no order. A backup's snapshot references them
    /// all, so that it need not also keep each new blob it references.
    pub stored: Vec<BlobId>,
}

/// What the uploader stored: the packs, their bytes, and the index objects
/// listing them.
struct Uploaded {
    packs: Vec<PackId>,
    bytes: u64,
    indexes: Vec<IndexId>,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    key: ChunkIdKey,
    recipients: Recipients,
    index: Arc<Index>,
    level: i32,
    pack_size: u64,
    /// The blobs this writer stored (or is storing): the index does not
    /// know them yet.
    pending: Mutex<IdSet>,
    /// The pending blobs the loaded index holds too.
    restored: Mutex<Vec<BlobId>>,
    budget: Arc<PackBudget>,
    /// The pack being filled for each blob kind: trees get packs of their
    /// own, so that walking trees reads a few small packs.
    open_packs: [Mutex<Option<OpenPack>>; 2],
    blobs_added: AtomicU64,
    bytes_added: AtomicU64,
}

/// Stores new blobs of one backup. Dropping it without [`BlobWriter::finish`]
/// abandons the unflushed packs (garbage for prune, never a broken repository).
pub struct BlobWriter {
    shared: Arc<Shared>,
    sender: mpsc::Sender<SealedPack>,
    uploader: tokio::task::JoinHandle<Result<Uploaded, RepoError>>,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter").finish_non_exhaustive()
    }
}

impl BlobWriter {
    /// Starts a writer and its uploader on the current tokio runtime.
    pub(crate) fn start(
        store: Arc<dyn ObjectStore>,
        recipients: Recipients,
        key: ChunkIdKey,
        index: Arc<Index>,
        config: &RepoConfig,
    ) -> Self {
        let pack_size = u64::from(config.pack_size);
        let (sender, receiver) = mpsc::channel(QUEUED_PACKS);
        let uploader = tokio::spawn(upload_packs(store.clone(), recipients.clone(), receiver));
        Self {
            shared: Arc::new(Shared {
                store,
                key,
                recipients,
                index,
                level: config.compression_level,
                pack_size,
                pending: Mutex::default(),
                restored: Mutex::default(),
                budget: PackBudget::new(PACKS_IN_FLIGHT),
                open_packs: [Mutex::default(), Mutex::default()],
                blobs_added: AtomicU64::new(0),
                bytes_added: AtomicU64::new(0),
            }),
            sender,
            uploader,
        }
    }

    /// The id `plain` has as a blob.
    pub fn blob_id(&self, plain: &[u8]) -> BlobId {
        BlobId::from_bytes(self.shared.key.hash(plain))
    }

    /// Whether a blob is already stored (outside packs doomed by prune) or queued.
    pub fn has(&self, id: &BlobId) -> bool {
        self.shared.index.reusable(id) || self.stores(id)
    }

    /// Whether this writer stored (or queued) the blob: it will be among
    /// [`WriteStats::stored`].
    fn stores(&self, id: &BlobId) -> bool {
        self.shared.pending.lock().is_ok_and(|p| p.contains(id))
    }

    /// The blobs of `ids` this writer did not store: a snapshot references
    /// those itself, and the others through [`WriteStats::stored`].
    pub fn not_stored<'a>(&'a self, ids: &'a [BlobId]) -> impl Iterator<Item = BlobId> + 'a {
        ids.iter().copied().filter(|id| !self.stores(id))
    }

    /// Stores `plain` as a blob unless it is already stored, and returns its
    /// id and whether it was new. Blocking: call it off the async threads.
    ///
    /// Fails when `plain` is larger than its kind allows
    /// ([`BlobKind::max_raw_length`]), or when the uploader has stopped (the
    /// cause comes from [`BlobWriter::finish`]).
    pub fn save(&self, kind: BlobKind, plain: &[u8]) -> Result<(BlobId, bool), RepoError> {
        self.store(kind, plain, true)
    }

    /// Stores `plain` again even if the index has it (once per writer):
    /// repacking copies used blobs out of mostly unused packs.
    ///
    /// Fails as [`BlobWriter::save`] does.
    pub fn copy(&self, kind: BlobKind, plain: &[u8]) -> Result<BlobId, RepoError> {
        self.store(kind, plain, false).map(|(id, _)| id)
    }

    fn store(
        &self,
        kind: BlobKind,
        plain: &[u8],
        reuse: bool,
    ) -> Result<(BlobId, bool), RepoError> {
        let max = kind.max_raw_length();
        if plain.len() > max as usize {
            return Err(RepoError::BlobTooLarge {
                kind,
                length: plain.len(),
                max,
            });
        }
        let shared = &self.shared;
        let id = self.blob_id(plain);
        if reuse && shared.index.reusable(&id) {
            return Ok((id, false));
        }
        {
            let mut pending = shared.pending.lock().map_err(|_| poisoned())?;
            if !pending.insert(id) {
                return Ok((id, false));
            }
        }
        if shared.index.contains(&id) {
            shared.restored.lock().map_err(|_| poisoned())?.push(id);
        }
        let full = blob::encode_with(plain, shared.level, |stored, compressed| {
            let mut slot = self.slot_with_room(kind, stored.len())?;
            let pack = match &mut *slot {
                Some(pack) => pack,
                None => slot.insert(shared.open_pack()?),
            };
            let added = pack.builder.add(id, kind, stored, compressed, plain.len());
            if let Err(e) = added {
                // Its body may hold part of the blob: no later blob goes in.
                *slot = None;
                return Err(encrypt_failed(e));
            }
            Ok(if pack.builder.len() >= shared.pack_size {
                slot.take()
            } else {
                None
            })
        })?;
        shared.blobs_added.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes_added
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        if let Some(full) = full {
            self.send(full)?;
        }
        Ok((id, true))
    }

    /// The open pack of `kind`, locked, once it has room for a blob of
    /// `stored` bytes: a data pack at least half full that the blob would
    /// push past its room is sealed and sent first (before a new one takes
    /// a place in the budget). At the default sizes (chunks of at most half
    /// a pack) no data pack outgrows its room, and every pack but a
    /// backup's last is at least half full.
    fn slot_with_room(
        &self,
        kind: BlobKind,
        stored: usize,
    ) -> Result<MutexGuard<'_, Option<OpenPack>>, RepoError> {
        let shared = &self.shared;
        loop {
            let mut slot = shared.open_packs[usize::from(kind.code())]
                .lock()
                .map_err(|_| poisoned())?;
            let outgrown = kind == BlobKind::Data
                && slot.as_ref().is_some_and(|pack| {
                    pack.builder.len() >= shared.pack_size / 2
                        && pack.builder.plain_len_with(stored) > shared.pack_room()
                });
            let early = if outgrown { slot.take() } else { None };
            let Some(early) = early else {
                return Ok(slot);
            };
            drop(slot);
            self.send(early)?;
        }
    }

    fn send(&self, pack: OpenPack) -> Result<(), RepoError> {
        let sealed = seal(pack)?;
        self.sender
            .blocking_send(sealed)
            .map_err(|_| RepoError::UploaderStopped)
    }

    /// Flushes the last pack, waits for every upload and writes the final
    /// index object. After it returns, every saved blob is stored and indexed.
    ///
    /// Fails with the first upload error.
    pub async fn finish(self) -> Result<WriteStats, RepoError> {
        let Self {
            shared,
            sender,
            uploader,
        } = self;
        let mut flushed = Ok(());
        for open in &shared.open_packs {
            let last = open.lock().map_err(|_| poisoned())?.take();
            let Some(last) = last.filter(|_| flushed.is_ok()) else {
                continue;
            };
            flushed = match tokio::task::spawn_blocking(move || seal(last)).await {
                Ok(Ok(sealed)) => sender
                    .send(sealed)
                    .await
                    .map_err(|_| RepoError::UploaderStopped),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(WorkerError::stopped("sealing a pack")(e).into()),
            };
        }
        drop(sender);
        let uploaded = uploader
            .await
            .map_err(WorkerError::stopped("the pack uploader"))??;
        flushed?;
        let restored = std::mem::take(&mut *shared.restored.lock().map_err(|_| poisoned())?);
        let stored = std::mem::take(&mut *shared.pending.lock().map_err(|_| poisoned())?);
        Ok(WriteStats {
            blobs_added: shared.blobs_added.load(Ordering::Relaxed),
            bytes_added: shared.bytes_added.load(Ordering::Relaxed),
            bytes_stored: uploaded.bytes,
            packs: uploaded.packs,
            indexes: uploaded.indexes,
            restored,
            stored: stored.into_vec(),
        })
    }
}

impl Shared {
    /// The most plaintext a data pack holds, blob table included: an eighth
    /// above the pack size, for the blob that crosses it.
    fn pack_room(&self) -> u64 {
        self.pack_size + self.pack_size / 8
    }

    /// Opens a pack once the budget allows it, in a file the store stages
    /// for it, encrypted to the restore key from its first byte.
    fn open_pack(&self) -> Result<OpenPack, RepoError> {
        let permit = self.budget.acquire();
        let file = PackFile::new(self.store.stage()?);
        let body =
            crypt::encrypt_to(self.recipients.restore_only(), file).map_err(pack_crypt_failed)?;
        Ok(OpenPack {
            builder: PackBuilder::new(body),
            permit,
        })
    }
}

fn poisoned() -> RepoError {
    WorkerError::Poisoned {
        what: "an open pack",
    }
    .into()
}

/// A pack could not be encrypted.
fn pack_crypt_failed(source: crypt::CryptError) -> RepoError {
    RepoError::Crypt {
        key: "data/".into(),
        source,
    }
}

/// Writing a pack's encrypted stream failed.
fn encrypt_failed(source: std::io::Error) -> RepoError {
    pack_crypt_failed(crypt::CryptError::EncryptStream(source))
}

/// Writes a pack's table, finishes its encryption and names it.
fn seal(pack: OpenPack) -> Result<SealedPack, RepoError> {
    let (body, blobs) = pack.builder.finish().map_err(encrypt_failed)?;
    let written = body.finish().map_err(encrypt_failed)?.finish();
    let payload_offset = written.payload_offset.ok_or_else(|| RepoError::Damaged {
        key: "data/".into(),
        reason: "age wrote no header".into(),
    })?;
    Ok(SealedPack {
        id: PackId::from_bytes(written.hash),
        staged: written.staged,
        size: written.size,
        payload_offset,
        blobs,
        permit: pack.permit,
    })
}

/// Uploads sealed packs, a few at a time, and indexes them.
async fn upload_packs(
    store: Arc<dyn ObjectStore>,
    recipients: Recipients,
    mut receiver: mpsc::Receiver<SealedPack>,
) -> Result<Uploaded, RepoError> {
    let mut running = JoinSet::new();
    let mut unindexed = Vec::new();
    let mut uploaded = Uploaded {
        packs: Vec::new(),
        bytes: 0,
        indexes: Vec::new(),
    };
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            received = receiver.recv(), if open && running.len() < PARALLEL_UPLOADS => match received {
                Some(pack) => {
                    let store = store.clone();
                    running.spawn(async move { upload_one(store.as_ref(), pack).await });
                }
                None => open = false,
            },
            Some(done) = running.join_next() => {
                let pack = done.map_err(WorkerError::stopped("uploading a pack"))??;
                unindexed.push(pack);
                if unindexed.len() >= PACKS_PER_INDEX {
                    uploaded.index(store.as_ref(), &recipients, &mut unindexed).await?;
                }
            }
        }
    }
    if !unindexed.is_empty() {
        uploaded
            .index(store.as_ref(), &recipients, &mut unindexed)
            .await?;
    }
    Ok(uploaded)
}

impl Uploaded {
    /// Writes the index object of `packs`, stored, and counts them.
    async fn index(
        &mut self,
        store: &dyn ObjectStore,
        recipients: &Recipients,
        packs: &mut Vec<IndexedPack>,
    ) -> Result<(), RepoError> {
        self.indexes
            .push(write_index(store, recipients, packs).await?);
        for pack in packs.drain(..) {
            self.packs.push(pack.id);
            self.bytes += pack.size;
        }
        Ok(())
    }
}

async fn upload_one(store: &dyn ObjectStore, pack: SealedPack) -> Result<IndexedPack, RepoError> {
    let SealedPack {
        id,
        staged,
        size,
        payload_offset,
        blobs,
        permit,
    } = pack;
    put_staged_content_named(store, &id.key(), staged, size).await?;
    drop(permit);
    Ok(IndexedPack {
        id,
        size,
        payload_offset,
        blobs: blobs.iter().map(IndexedBlob::from).collect(),
    })
}

/// Writes one index object listing `packs`.
pub(crate) async fn write_index(
    store: &dyn ObjectStore,
    recipients: &Recipients,
    packs: &[IndexedPack],
) -> Result<IndexId, RepoError> {
    let file = IndexFile {
        packs: packs.to_vec(),
    };
    let cipher = meta::seal(&file, recipients.both()).map_err(|source| RepoError::Crypt {
        key: "index/".into(),
        source,
    })?;
    let id = IndexId::from_bytes(content_hash(&cipher));
    put_content_named(store, &id.key(), cipher.into()).await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::check::{ReadData, check};
    use crate::repo::config::InitOptions;
    use crate::repo::test_fixture::{
        TestRepo, pattern, random, save_blobs, snapshot_of, store_blobs, written_packs,
    };

    #[tokio::test]
    async fn data_saved_twice_is_stored_once() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let service = repo.as_service().await?;
        let (a, b) = (pattern(1, 30_000), pattern(2, 20_000));
        let blobs = vec![a.clone(), a.clone(), b.clone()];
        let (writer, saved) = save_blobs(service.writer(), BlobKind::Data, blobs).await?;
        assert_eq!(saved[0].0, writer.blob_id(&a));
        assert_eq!(saved[1].0, saved[0].0, "the same data has the same id");
        assert_ne!(saved[2].0, saved[0].0);
        let new: Vec<bool> = saved.iter().map(|(_, new)| *new).collect();
        assert_eq!(new, [true, false, true], "only the first copy is new");
        assert!(
            writer.has(&saved[0].0) && writer.has(&saved[2].0),
            "a queued blob counts as stored before its pack is"
        );

        let stats = writer.finish().await?;
        assert_eq!(stats.blobs_added, 2);
        assert_eq!(stats.bytes_added, (a.len() + b.len()) as u64);
        assert_eq!(stats.packs.len(), 1);
        assert!(stats.restored.is_empty());
        let reloaded = repo.as_service().await?;
        let mut in_pack: Vec<BlobId> = reloaded.index().pack_blobs(&stats.packs[0]).collect();
        let mut expected = vec![saved[0].0, saved[2].0];
        in_pack.sort();
        expected.sort();
        assert_eq!(in_pack, expected, "the pack holds each blob once");
        let stored = repo.store().list("data/").await?;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].key, stats.packs[0].key());
        assert_eq!(stored[0].size, stats.bytes_stored);
        Ok(())
    }

    #[tokio::test]
    async fn finish_stores_and_indexes_every_blob_with_trees_in_packs_of_their_own()
    -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let service = repo.as_service().await?;
        let (writer, data) =
            save_blobs(service.writer(), BlobKind::Data, vec![pattern(3, 10_000)]).await?;
        let tree = br#"{"entries":[]}"#.to_vec();
        let (writer, tree) = save_blobs(writer, BlobKind::Tree, vec![tree]).await?;
        let (data, tree) = (data[0].0, tree[0].0);
        assert!(
            repo.keys("data/").await?.is_empty() && repo.keys("index/").await?.is_empty(),
            "packs that are not full wait for finish"
        );

        let stats = writer.finish().await?;
        assert_eq!(stats.packs.len(), 2, "data and trees go to separate packs");
        let mut packs: Vec<String> = stats.packs.iter().map(|p| p.key()).collect();
        packs.sort();
        assert_eq!(repo.keys("data/").await?, packs);
        assert_eq!(stats.indexes.len(), 1, "one index object lists both packs");
        assert_eq!(repo.keys("index/").await?, [stats.indexes[0].key()]);

        let reloaded = repo.as_service().await?;
        for pack in &stats.packs {
            assert_eq!(reloaded.index().pack_blobs(pack).count(), 1, "{pack}");
        }
        for (id, kind) in [(data, BlobKind::Data), (tree, BlobKind::Tree)] {
            let location = reloaded.index().get(&id);
            assert_eq!(location.map(|l| l.blob.kind), Some(kind));
            assert!(reloaded.index().reusable(&id));
        }
        assert!(reloaded.snapshots().await?.is_empty(), "no snapshot yet");
        let snapshot = reloaded.save_snapshot(&snapshot_of(data)).await?;
        let listed: Vec<_> = repo
            .as_service()
            .await?
            .snapshots()
            .await?
            .into_iter()
            .map(|e| (e.id, e.snapshot.root))
            .collect();
        assert_eq!(listed, [(snapshot, data)]);
        Ok(())
    }

    #[tokio::test]
    async fn a_writer_dropped_before_finish_leaves_the_repository_as_it_was() -> anyhow::Result<()>
    {
        let repo = TestRepo::new().await?;
        let service = repo.as_service().await?;
        let data = pattern(4, 50_000);
        let (writer, saved) =
            save_blobs(service.writer(), BlobKind::Data, vec![data.clone()]).await?;
        assert!(saved[0].1);
        drop(writer);

        for prefix in ["data/", "index/", "snapshots/"] {
            assert!(repo.keys(prefix).await?.is_empty(), "{prefix} is empty");
        }
        assert_eq!(repo.staged_files()?, Vec::<std::path::PathBuf>::new());
        let report = check(&repo.as_restore().await?, ReadData::All).await?;
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.packs, report.unindexed_packs), (0, 0));

        let after = repo.as_service().await?;
        assert!(!after.index().contains(&saved[0].0));
        let (writer, again) = save_blobs(after.writer(), BlobKind::Data, vec![data]).await?;
        assert_eq!(
            again[0],
            (saved[0].0, true),
            "the next writer stores it anew"
        );
        assert_eq!(writer.finish().await?.packs.len(), 1);
        assert_eq!(repo.staged_files()?, Vec::<std::path::PathBuf>::new());
        Ok(())
    }

    #[tokio::test]
    async fn a_pack_is_sealed_once_it_holds_the_pack_size() -> anyhow::Result<()> {
        let options = InitOptions {
            pack_size: 1 << 20,
            ..InitOptions::default()
        };
        let repo = TestRepo::with_options(&options).await?;
        let service = repo.as_service().await?;
        // Random blobs are stored raw: four of them pass 1 MiB.
        let blobs: Vec<Vec<u8>> = (0..5).map(|_| random(270_000)).collect();
        let (_, stats) = store_blobs(&service, BlobKind::Data, blobs).await?;
        let packs = written_packs(&repo, &stats).await?;
        let mut counts: Vec<usize> = packs.iter().map(|p| p.blobs.len()).collect();
        counts.sort();
        assert_eq!(counts, [1, 4]);
        assert!(packs.iter().all(|p| p.blobs.iter().all(|b| !b.compressed)));
        let stored: u64 = repo
            .store()
            .list("data/")
            .await?
            .iter()
            .map(|o| o.size)
            .sum();
        assert_eq!(stored, stats.bytes_stored);
        assert!(stats.bytes_stored > 5 * 270_000, "{}", stats.bytes_stored);
        assert_eq!(stats.indexes.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_pack_is_sealed_before_a_blob_that_would_outgrow_its_room() -> anyhow::Result<()> {
        let options = InitOptions {
            pack_size: 1 << 20,
            ..InitOptions::default()
        };
        let repo = TestRepo::with_options(&options).await?;
        let service = repo.as_service().await?;
        // Three raw blobs hold 900,000 bytes, under the pack size; a fourth
        // would pass the room of 1 MiB + 128 KiB, so it opens the next pack.
        let blobs: Vec<Vec<u8>> = (0..5).map(|_| random(300_000)).collect();
        let (ids, stats) = store_blobs(&service, BlobKind::Data, blobs.clone()).await?;
        let packs = written_packs(&repo, &stats).await?;
        let mut counts: Vec<usize> = packs.iter().map(|p| p.blobs.len()).collect();
        counts.sort();
        assert_eq!(counts, [2, 3]);
        let room = crypt::cipher_len((1 << 20) + (1 << 17)) as u64;
        assert!(packs.iter().all(|p| p.size <= room), "{packs:?}");
        let reader = repo.as_restore().await?.reader();
        for (id, blob) in ids.iter().zip(&blobs) {
            assert_eq!(&reader.read(id).await?, blob);
        }
        // A pack under half full takes the blob all the same.
        let (_, stats) = store_blobs(
            &service,
            BlobKind::Data,
            vec![random(400_000), random(1_000_000)],
        )
        .await?;
        let packs = written_packs(&repo, &stats).await?;
        let counts: Vec<usize> = packs.iter().map(|p| p.blobs.len()).collect();
        assert_eq!(counts, [2]);
        Ok(())
    }

    #[tokio::test]
    async fn copy_stores_an_indexed_blob_again_once_per_writer() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let data = pattern(5, 40_000);
        let (ids, _) = store_blobs(
            &repo.as_service().await?,
            BlobKind::Data,
            vec![data.clone()],
        )
        .await?;
        let writer = repo.as_service().await?.writer();
        let (writer, copies) = tokio::task::spawn_blocking(move || {
            let saved = writer.save(BlobKind::Data, &data);
            let first = writer.copy(BlobKind::Data, &data);
            let second = writer.copy(BlobKind::Data, &data);
            (writer, (saved, first, second))
        })
        .await?;
        assert_eq!(copies.0?, (ids[0], false), "save reuses the indexed blob");
        assert_eq!((copies.1?, copies.2?), (ids[0], ids[0]));
        let stats = writer.finish().await?;
        assert_eq!(stats.blobs_added, 1, "the second copy is not stored again");
        assert_eq!(stats.packs.len(), 1);
        assert_eq!(stats.restored, ids, "the copy is of an indexed blob");
        assert_eq!(repo.keys("data/").await?.len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_blob_in_a_pack_prune_will_delete_is_stored_again() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let data = pattern(6, 40_000);
        let (ids, stats) = store_blobs(
            &repo.as_service().await?,
            BlobKind::Data,
            vec![data.clone()],
        )
        .await?;
        let mut service = repo.as_service().await?;
        service.avoid_packs([stats.packs[0]]);
        let (writer, saved) = save_blobs(service.writer(), BlobKind::Data, vec![data]).await?;
        assert_eq!(saved[0], (ids[0], true));
        let again = writer.finish().await?;
        assert_ne!(again.packs[0], stats.packs[0]);
        assert_eq!(again.restored, ids);
        Ok(())
    }
}
