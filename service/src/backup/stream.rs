//! Backing up named byte streams: database dumps, etcd snapshots.
//!
//! The stream is read as it arrives and chunked on a blocking thread, so it
//! is never staged whole on disk or in memory. It becomes one file entry of
//! the snapshot's root, named by the caller.

use std::sync::atomic::Ordering;

use tokio::io::AsyncRead;
use tokio_util::io::SyncIoBridge;

use super::{BackupError, SnapshotBuilder, bump};
use crate::errors::WorkerError;
use crate::repo::RepoError;
use crate::repo::blob::BlobKind;
use crate::repo::keys::KeyRole;
use crate::repo::tree::{Node, NodeKind};

/// Which of the repository's chunkings a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamChunking {
    /// Content-defined (dumps, archives).
    Content,
    /// Fixed-size pages (etcd's bbolt database).
    Pages,
}

impl<K: KeyRole> SnapshotBuilder<K> {
    /// Stores everything `input` yields as the file `name` of this snapshot,
    /// and returns the number of bytes read.
    ///
    /// Fails when `input` fails (nothing then refers to what was stored),
    /// when the name is taken or when the repository fails.
    pub async fn add_stream<R>(
        &mut self,
        name: &str,
        input: R,
        chunking: StreamChunking,
    ) -> Result<u64, BackupError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let config = self.repo.repository().config();
        let chunking = match chunking {
            StreamChunking::Content => config.file_chunking,
            StreamChunking::Pages => config.page_chunking,
        };
        let writer = self.writer.clone();
        let progress = self.progress.clone();
        let reader = SyncIoBridge::new(input);
        let stream_name = name.to_owned();
        let (content, total) = tokio::task::spawn_blocking(move || {
            let mut content = Vec::new();
            let total = chunking.split(reader, |chunk: &[u8]| -> Result<(), StreamFailure> {
                let (id, _) = writer.save(BlobKind::Data, chunk)?;
                content.push(id);
                bump(&progress.bytes, chunk.len() as u64);
                Ok(())
            });
            total.map(|total| (content, total))
        })
        .await
        .map_err(WorkerError::stopped("storing a stream"))
        .map_err(RepoError::from)?
        .map_err(|failure| match failure {
            StreamFailure::Io(source) => BackupError::Stream {
                name: stream_name,
                source,
            },
            StreamFailure::Repo(e) => e.into(),
        })?;
        self.references.extend(self.writer.not_stored(&content));
        let now = chrono::Utc::now();
        self.add_entry(Node {
            mtime_nsec: now.timestamp_subsec_nanos(),
            size: total,
            content,
            ..Node::new(name.as_bytes(), NodeKind::File, 0o600, now.timestamp())
        })?;
        self.summary.files += 1;
        self.summary.files_read += 1;
        self.summary.bytes_read += total;
        self.summary.bytes_total += total;
        self.progress.entries.fetch_add(1, Ordering::Relaxed);
        Ok(total)
    }
}

enum StreamFailure {
    Io(std::io::Error),
    Repo(RepoError),
}

impl From<std::io::Error> for StreamFailure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<RepoError> for StreamFailure {
    fn from(e: RepoError) -> Self {
        Self::Repo(e)
    }
}
