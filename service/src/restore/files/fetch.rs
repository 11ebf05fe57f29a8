//! The second phase of a restore: fetching the data pack by pack — a pack
//! whose needed blobs make up much of it is read whole as it arrives,
//! otherwise each blob is fetched with a ranged GET — and writing each
//! verified blob at its offsets in every file that uses it.
//!
//! A few packs are decoded at once (as many as there are cores), and more
//! are requested ahead of them so that a distant store's answer delay is
//! hidden: how many is sized from the delay and the decoding time measured
//! so far. A pack requested ahead holds no buffer of ours until it is
//! decoded, so memory stays at the decoders' blob buffers.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinSet;

use super::{Outputs, RestoreProgress, Slots};
use crate::errors::WorkerError;
use crate::repo::id::{BlobId, PackId};
use crate::repo::pack::PackedBlob;
use crate::repo::reader::{BlobBuffers, BlobReader, BlobStream};
use crate::restore::RestoreError;
use crate::storage::ObjectReader;

/// Packs requested ahead of the decoders at most.
const MAX_PACKS_AHEAD: usize = 32;

/// Blobs that failed, each with the cause.
type BlobFailures = Vec<(BlobId, String)>;

/// Blob failures of one pack and how long it took.
struct PackOutcome {
    failed: BlobFailures,
    /// Measured when the pack was read whole.
    pace: Option<Pace>,
}

/// How long one pack waited for its store's first answer, and how long it
/// took to decode and write after that.
#[derive(Clone, Copy, Default)]
pub(super) struct Pace {
    answer: Duration,
    decode: Duration,
}

impl Pace {
    /// The running average with `sample` weighed in.
    fn blend(self, sample: Pace) -> Pace {
        let mix = |old: Duration, new: Duration| {
            if old.is_zero() {
                new
            } else {
                (old * 3 + new) / 4
            }
        };
        Pace {
            answer: mix(self.answer, sample.answer),
            decode: mix(self.decode, sample.decode),
        }
    }

    /// Packs to request ahead so that each of `decoders` finds its next
    /// pack answered when it is done with the current one.
    fn ahead(self, decoders: usize) -> usize {
        let decode = self.decode.max(Duration::from_millis(1)).as_secs_f64();
        let wanted = (decoders as f64 * self.answer.as_secs_f64() / decode).ceil();
        (wanted as usize).clamp(1, MAX_PACKS_AHEAD)
    }
}

/// Fetches, verifies and writes every blob; returns the files that failed
/// (snapshot path, cause).
pub(super) async fn fetch_data(
    reader: &BlobReader,
    outputs: &Arc<Outputs>,
    slots: &Arc<Slots>,
    progress: &Arc<RestoreProgress>,
    pace: &mut Pace,
) -> Result<Vec<(String, String)>, RestoreError> {
    // Each blob by where it lies in `slots`: 8 bytes where its id takes 32.
    let mut by_pack: HashMap<PackId, Vec<usize>> = HashMap::new();
    for (at, blob) in slots.blobs() {
        if let Some(location) = reader.index().get(&blob) {
            by_pack.entry(location.pack).or_default().push(at);
        }
    }
    let decoders = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let decoding = Arc::new(Decoders {
        free: Semaphore::new(decoders),
        buffers: Mutex::default(),
    });
    let mut failed = Vec::new();
    let mut running = JoinSet::new();
    let mut packs = by_pack.into_iter();
    loop {
        while running.len() < decoders + pace.ahead(decoders) {
            let Some((pack, places)) = packs.next() else {
                break;
            };
            let blobs = places.iter().filter_map(|&at| slots.blob_at(at)).collect();
            let work = PackWork {
                reader: reader.clone(),
                outputs: outputs.clone(),
                slots: slots.clone(),
                progress: progress.clone(),
            };
            let decoding = decoding.clone();
            running.spawn(async move { work.restore_pack(pack, blobs, &decoding).await });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let outcome = done.map_err(WorkerError::stopped("restoring a pack"))??;
        if let Some(sample) = outcome.pace {
            *pace = pace.blend(sample);
        }
        for (blob, cause) in outcome.failed {
            for slot in slots.of(&blob) {
                failed.push((outputs.shown(slot.file), cause.clone()));
            }
        }
    }
    Ok(failed)
}

/// The packs decoded at once, each decoder with its blob buffers kept from
/// pack to pack.
struct Decoders {
    free: Semaphore,
    buffers: Mutex<Vec<BlobBuffers>>,
}

impl Decoders {
    /// Waits for a free decoder.
    async fn acquire(&self) -> Result<SemaphorePermit<'_>, RestoreError> {
        Ok(self
            .free
            .acquire()
            .await
            .map_err(WorkerError::poisoned("the restore's decoders"))?)
    }

    /// Buffers a decoder gave back, or new ones.
    fn take_buffers(&self) -> BlobBuffers {
        self.buffers
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default()
    }

    fn give_back(&self, buffers: BlobBuffers) {
        if let Ok(mut kept) = self.buffers.lock() {
            kept.push(buffers);
        }
    }
}

/// What restoring one pack's blobs needs.
#[derive(Clone)]
struct PackWork {
    reader: BlobReader,
    outputs: Arc<Outputs>,
    slots: Arc<Slots>,
    progress: Arc<RestoreProgress>,
}

impl PackWork {
    /// Restores the blobs of one pack once a decoder is free; returns the
    /// blobs that failed, with the cause.
    async fn restore_pack(
        self,
        pack: PackId,
        blobs: Vec<BlobId>,
        decoding: &Decoders,
    ) -> Result<PackOutcome, RestoreError> {
        let index = self.reader.index();
        let wanted: Vec<PackedBlob> = blobs
            .iter()
            .filter_map(|b| index.get(b))
            .map(|l| l.blob)
            .collect();
        let needed: u64 = wanted.iter().map(|b| u64::from(b.length)).sum();
        let size = index.pack(&pack).map_or(0, |p| p.size);
        if needed * 4 < size {
            // The ranges fetched are held until decoded: fetched by a
            // decoder, so that at most one pack's are held per decoder.
            let _decoder = decoding.acquire().await?;
            let failed = self.read_blob_by_blob(pack, blobs, decoding).await?;
            return Ok(PackOutcome { failed, pace: None });
        }
        let asked = Instant::now();
        let body = match self.reader.open_pack_reader(&pack).await {
            Ok(body) => body,
            Err(e) => {
                let failed = blobs.into_iter().map(|b| (b, e.to_string())).collect();
                return Ok(PackOutcome { failed, pace: None });
            }
        };
        let answer = asked.elapsed();
        let _decoder = decoding.acquire().await?;
        let started = Instant::now();
        let work = self.clone();
        let buffers = decoding.take_buffers();
        let (streamed, buffers) =
            tokio::task::spawn_blocking(move || work.stream_pack(pack, body, wanted, buffers))
                .await
                .map_err(WorkerError::stopped("streaming a pack"))?;
        decoding.give_back(buffers);
        let (mut failed, unread) = streamed?;
        let pace = Pace {
            answer,
            decode: started.elapsed(),
        };
        if !unread.is_empty() {
            failed.extend(self.read_blob_by_blob(pack, unread, decoding).await?);
        }
        Ok(PackOutcome {
            failed,
            pace: Some(pace),
        })
    }

    /// Decrypts, verifies and writes the `wanted` blobs one at a time as
    /// the pack arrives (blocking), so only a segment and one blob are
    /// held. A damaged 64 KiB segment or a cut transfer stops the stream:
    /// the blobs from there on are returned unread, to be read blob by blob,
    /// which saves every blob outside the damage.
    /// `buffers` are given back with the outcome.
    fn stream_pack(
        &self,
        pack: PackId,
        body: ObjectReader,
        wanted: Vec<PackedBlob>,
        buffers: BlobBuffers,
    ) -> (
        Result<(BlobFailures, Vec<BlobId>), RestoreError>,
        BlobBuffers,
    ) {
        let mut stream = self.reader.stream_pack(&pack, body, wanted, buffers);
        let written = self
            .write_blobs(&mut stream)
            .map(|failed| (failed, stream.unread()));
        (written, stream.into_buffers())
    }

    /// Restores blobs of one pack with ranged GETs of the segments that
    /// hold them, decoded with a decoder's buffers (the caller holds the
    /// decoder); returns the blobs that failed, with the cause.
    async fn read_blob_by_blob(
        &self,
        pack: PackId,
        blobs: Vec<BlobId>,
        decoding: &Decoders,
    ) -> Result<BlobFailures, RestoreError> {
        let fetched = match self.reader.fetch_many(&pack, &blobs).await {
            Ok(fetched) => fetched,
            Err(e) => return Ok(blobs.into_iter().map(|b| (b, e.to_string())).collect()),
        };
        let work = self.clone();
        let buffers = decoding.take_buffers();
        let (written, buffers) = tokio::task::spawn_blocking(move || {
            let mut blobs = fetched.decode(&work.reader, buffers);
            let written = work.write_blobs(&mut blobs);
            (written, blobs.into_buffers())
        })
        .await
        .map_err(WorkerError::stopped("writing restored data"))?;
        decoding.give_back(buffers);
        written
    }

    /// Writes every blob of `blobs` that reads (blocking); returns the
    /// others, with the cause.
    fn write_blobs(&self, blobs: &mut impl BlobStream) -> Result<BlobFailures, RestoreError> {
        let mut failed = Vec::new();
        while let Some((blob, data)) = blobs.next_blob() {
            match data {
                Ok(data) => self.write_slots(&blob, data)?,
                Err(e) => failed.push((blob, e.to_string())),
            }
        }
        Ok(failed)
    }

    /// Writes a blob's plaintext everywhere it belongs.
    fn write_slots(&self, blob: &BlobId, data: &[u8]) -> Result<(), RestoreError> {
        let (outputs, progress) = (&self.outputs, &self.progress);
        for slot in self.slots.of(blob) {
            outputs.create(slot.file)?;
            let planned = &outputs.files[slot.file];
            let io = |source| outputs.io_error(slot.file, "writing", source);
            let file = outputs
                .dirs
                .open_file(planned.dir, &planned.name)
                .map_err(io)?;
            file.write_all_at(data, slot.offset).map_err(io)?;
            progress
                .bytes_done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            outputs.wrote_slot(slot.file, &file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(answer_ms: u64, decode_ms: u64) -> Pace {
        Pace {
            answer: Duration::from_millis(answer_ms),
            decode: Duration::from_millis(decode_ms),
        }
    }

    #[test]
    fn packs_ahead_grow_with_the_answer_delay_and_stay_bounded() {
        // A local store answers at once: one pack ahead keeps the decoders fed.
        assert_eq!(pace(0, 40).ahead(2), 1);
        assert_eq!(Pace::default().ahead(2), 1);
        // 40 ms per answer, 40 ms to decode a pack: one more per decoder.
        assert_eq!(pace(40, 40).ahead(2), 2);
        assert_eq!(pace(40, 10).ahead(2), 8);
        // An answer far slower than decoding is capped.
        assert_eq!(pace(5_000, 1).ahead(4), MAX_PACKS_AHEAD);
    }

    #[test]
    fn the_pace_follows_recent_packs() {
        let first = Pace::default().blend(pace(40, 20));
        assert_eq!(first.answer, Duration::from_millis(40));
        let later = (0..20).fold(first, |p, _| p.blend(pace(0, 20)));
        assert!(
            later.answer < Duration::from_millis(1),
            "{:?}",
            later.answer
        );
        assert_eq!(later.decode, Duration::from_millis(20));
    }
}
