//! Storing the spool's WAL files into a snapshot.

use std::path::Path;

use super::WalError;
use super::names::WalFile;
use super::spool::Spool;
use crate::backup::SnapshotBuilder;
use crate::backup::stream::StreamChunking;
use crate::sources::SourceError;

/// What a run stored of the spool.
#[derive(Debug, Default)]
pub(super) struct Stored {
    pub(super) complete: Vec<String>,
    pub(super) partial: bool,
    pub(super) first: Option<String>,
    pub(super) last: Option<String>,
}

/// Whether `path` is an anchor ([`Spool::anchor`]): a `.partial` file no
/// byte was ever written to (no disk blocks).
pub(super) fn is_anchor(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    path.extension().is_some_and(|e| e == "partial")
        && std::fs::metadata(path).is_ok_and(|m| m.blocks() == 0)
}

impl Stored {
    /// Adds what a later pass stored.
    pub(super) fn add(&mut self, later: Stored) {
        self.complete.extend(later.complete);
        self.partial |= later.partial;
        if self.first.is_none() {
            self.first = later.first;
        }
        if later.last.is_some() {
            self.last = later.last;
        }
    }
}

/// Stores the spool's WAL files that are `wanted` at the snapshot's root.
pub(super) async fn store_wal(
    builder: &mut SnapshotBuilder,
    spool: &Spool,
    wanted: impl Fn(&WalFile) -> bool,
) -> Result<Stored, SourceError> {
    let mut stored = Stored::default();
    for found in spool.files().map_err(WalError::spool(spool.dir()))? {
        if !wanted(&found.file) || is_anchor(&found.path) {
            continue;
        }
        let (file, input) = match tokio::fs::File::open(&found.path).await {
            Ok(input) => (found.file, input),
            // Completed and renamed since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let WalFile::Partial(segment) = found.file else {
                    continue;
                };
                let complete = spool.dir().join(segment.name());
                match tokio::fs::File::open(&complete).await {
                    Ok(input) => (WalFile::Segment(segment), input),
                    Err(e) => return Err(WalError::spool(&complete)(e).into()),
                }
            }
            Err(e) => return Err(WalError::spool(&found.path)(e).into()),
        };
        let name = file.name();
        builder
            .add_stream(&name, input, StreamChunking::Content)
            .await?;
        match file {
            WalFile::Segment(_) => stored.complete.push(name.clone()),
            WalFile::Partial(_) => stored.partial = true,
            WalFile::History(_) => continue,
        }
        stored.first.get_or_insert_with(|| name.clone());
        stored.last = Some(name);
    }
    Ok(stored)
}
