//! The second phase of a restore: fetching the data pack by pack, a few
//! packs at a time — a pack whose needed blobs make up much of it is
//! downloaded whole, otherwise each blob is fetched with a ranged GET — and
//! writing each verified blob at its offsets in every file that uses it.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinSet;

use super::{Outputs, RestoreProgress, Slot};
use crate::errors::WorkerError;
use crate::repo::id::{BlobId, PackId};
use crate::repo::pack::PackedBlob;
use crate::repo::reader::BlobReader;
use crate::restore::RestoreError;

/// Packs fetched at the same time.
const PARALLEL_PACKS: usize = 2;

/// Fetches, verifies and writes every blob; returns the files that failed
/// (snapshot path, cause).
pub(super) async fn fetch_data(
    reader: &BlobReader,
    outputs: &Arc<Outputs>,
    slots: &Arc<HashMap<BlobId, Vec<Slot>>>,
    progress: &Arc<RestoreProgress>,
) -> Result<Vec<(String, String)>, RestoreError> {
    let mut by_pack: HashMap<PackId, Vec<BlobId>> = HashMap::new();
    for blob in slots.keys() {
        if let Some(location) = reader.index().get(blob) {
            by_pack.entry(location.pack).or_default().push(*blob);
        }
    }
    let mut failed = Vec::new();
    let mut running = JoinSet::new();
    let mut packs = by_pack.into_iter();
    loop {
        while running.len() < PARALLEL_PACKS {
            let Some((pack, blobs)) = packs.next() else {
                break;
            };
            let (reader, outputs, slots, progress) = (
                reader.clone(),
                outputs.clone(),
                slots.clone(),
                progress.clone(),
            );
            running.spawn(async move {
                restore_pack(&reader, pack, blobs, &outputs, &slots, &progress).await
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let outcome = done.map_err(WorkerError::stopped("restoring a pack"))?;
        for (blob, cause) in outcome? {
            for slot in slots.get(&blob).into_iter().flatten() {
                failed.push((outputs.files[slot.file].entry.shown.clone(), cause.clone()));
            }
        }
    }
    Ok(failed)
}

/// Restores the blobs of one pack; returns the blobs that failed, with the cause.
async fn restore_pack(
    reader: &BlobReader,
    pack: PackId,
    blobs: Vec<BlobId>,
    outputs: &Arc<Outputs>,
    slots: &Arc<HashMap<BlobId, Vec<Slot>>>,
    progress: &Arc<RestoreProgress>,
) -> Result<Vec<(BlobId, String)>, RestoreError> {
    let index = reader.index();
    let wanted: Vec<PackedBlob> = blobs
        .iter()
        .filter_map(|b| index.get(b))
        .map(|l| l.blob)
        .collect();
    let needed: u64 = wanted.iter().map(|b| u64::from(b.length)).sum();
    let size = index.pack(&pack).map_or(0, |p| p.size);
    if needed * 4 >= size {
        let whole = match reader.fetch_pack(&pack).await {
            Ok(whole) => whole,
            Err(e) => return Ok(blobs.into_iter().map(|b| (b, e.to_string())).collect()),
        };
        let (stream_reader, stream_outputs, stream_slots, stream_progress) = (
            reader.clone(),
            outputs.clone(),
            slots.clone(),
            progress.clone(),
        );
        // Blobs are decrypted, verified and written one at a time as the
        // pack is read, so only its ciphertext and one blob are held. A
        // damaged 64 KiB segment stops the stream: the blobs from there on
        // are read blob by blob instead, which saves every blob outside it.
        let (mut failed, unread) = tokio::task::spawn_blocking(move || {
            let mut stream = stream_reader.stream_pack(&pack, &whole, wanted);
            let mut failed = Vec::new();
            while let Some((blob, data)) = stream.next_blob() {
                match data {
                    Ok(data) => write_slots(
                        &stream_outputs,
                        &stream_slots,
                        &blob,
                        data,
                        &stream_progress,
                    )?,
                    Err(e) => failed.push((blob, e.to_string())),
                }
            }
            Ok::<_, RestoreError>((failed, stream.unread()))
        })
        .await
        .map_err(WorkerError::stopped("streaming a pack"))??;
        if !unread.is_empty() {
            failed.extend(read_blob_by_blob(reader, pack, unread, outputs, slots, progress).await?);
        }
        return Ok(failed);
    }
    read_blob_by_blob(reader, pack, blobs, outputs, slots, progress).await
}

/// Restores blobs of one pack with ranged GETs of the segments that hold
/// them; returns the blobs that failed, with the cause.
async fn read_blob_by_blob(
    reader: &BlobReader,
    pack: PackId,
    blobs: Vec<BlobId>,
    outputs: &Arc<Outputs>,
    slots: &Arc<HashMap<BlobId, Vec<Slot>>>,
    progress: &Arc<RestoreProgress>,
) -> Result<Vec<(BlobId, String)>, RestoreError> {
    let mut failed = Vec::new();
    let read = match reader.read_many(&pack, &blobs).await {
        Ok(read) => read,
        Err(e) => return Ok(blobs.into_iter().map(|b| (b, e.to_string())).collect()),
    };
    for (blob, data) in read {
        match data {
            Ok(data) => {
                let (outputs, slots, progress) = (outputs.clone(), slots.clone(), progress.clone());
                tokio::task::spawn_blocking(move || {
                    write_slots(&outputs, &slots, &blob, &data, &progress)
                })
                .await
                .map_err(WorkerError::stopped("writing restored data"))??;
            }
            Err(e) => failed.push((blob, e.to_string())),
        }
    }
    Ok(failed)
}

/// Writes a blob's plaintext everywhere it belongs.
fn write_slots(
    outputs: &Outputs,
    slots: &HashMap<BlobId, Vec<Slot>>,
    blob: &BlobId,
    data: &[u8],
    progress: &RestoreProgress,
) -> Result<(), RestoreError> {
    for slot in slots.get(blob).into_iter().flatten() {
        outputs.create(slot.file)?;
        let planned = &outputs.files[slot.file];
        let io = |source| RestoreError::Io {
            action: "writing",
            path: PathBuf::from(&planned.entry.shown),
            source,
        };
        let file = outputs
            .dirs
            .open_file(planned.entry.dir, planned.name())
            .map_err(io)?;
        file.write_all_at(data, slot.offset).map_err(io)?;
        progress
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        outputs.wrote_slot(slot.file, &file)?;
    }
    Ok(())
}
