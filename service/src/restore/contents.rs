//! Reading what a snapshot holds without writing it to disk: its root
//! listing, and small files (manifests, row counts) into memory.

use super::RestoreError;
use crate::repo::id::BlobId;
use crate::repo::reader::BlobReader;
use crate::repo::tree::{Node, NodeKind, Tree};

/// The most a file read into memory may hold.
const SMALL_FILE_LIMIT: u64 = 64 << 20;

/// The snapshot's root listing.
///
/// Fails when the root tree cannot be read.
pub async fn root_tree(reader: &BlobReader, root: BlobId) -> Result<Tree, RestoreError> {
    Ok(reader.read_tree(&root).await?)
}

/// The content of the file `node`, read into memory.
///
/// Fails when it is not a regular file, is larger than 64 MiB, or a blob
/// is missing or damaged.
pub async fn read_small(reader: &BlobReader, node: &Node) -> Result<Vec<u8>, RestoreError> {
    let name = node.name.display().into_owned();
    if node.kind != NodeKind::File || node.size > SMALL_FILE_LIMIT {
        return Err(RestoreError::NoSuchPath {
            path: format!("{name} (as a regular file of at most 64 MiB)"),
        });
    }
    let mut data = Vec::with_capacity(node.size as usize);
    for blob in &node.content {
        data.extend_from_slice(&reader.read(blob).await?);
    }
    Ok(data)
}

/// The root file called `name`, read into memory; `None` when there is none.
///
/// Fails as [`read_small`].
pub async fn read_root_file(
    reader: &BlobReader,
    root: &Tree,
    name: &str,
) -> Result<Option<Vec<u8>>, RestoreError> {
    match root.get(name.as_bytes()) {
        Some(node) => Ok(Some(read_small(reader, node).await?)),
        None => Ok(None),
    }
}
