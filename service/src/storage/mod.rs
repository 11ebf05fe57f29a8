//! Object stores: where the repository's objects live.
//!
//! A store moves opaque bytes under slash-separated keys (`data/ab/ab12…`,
//! `snapshots/…`). It never sees a key or a plaintext: everything it holds is
//! already encrypted, except the small plaintext `config` object. Objects are
//! immutable, so the only writes are creates ([`ObjectStore::put_new`],
//! [`ObjectStore::put_staged`]), which refuse to replace an existing object
//! where the store can tell.

mod limits;
mod local;
mod s3;
mod staged;

use std::fmt::Debug;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

pub use local::LocalStore;
pub use s3::{CREDENTIAL_VARIABLES, S3Options, S3Store};
pub use staged::Staged;
pub(crate) use staged::{TEMP_PREFIX, anonymous_file};

/// An object's bytes, read as they arrive rather than held whole. Its reads
/// block: use it off the async runtime (in `spawn_blocking`). A transfer
/// that breaks midway fails a read with the cause.
pub type ObjectReader = Box<dyn std::io::Read + Send>;

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key, relative to the store's root or prefix.
    pub key: String,
    /// The object's size in bytes.
    pub size: u64,
}

/// What can go wrong talking to an object store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {key} does not exist in {store}")]
    NotFound {
        /// The store, as its URL.
        store: String,
        /// The missing object's key.
        key: String,
    },
    /// A create found the object already there.
    #[error("object {key} already exists in {store}; objects are never overwritten")]
    AlreadyExists {
        /// The store, as its URL.
        store: String,
        /// The existing object's key.
        key: String,
    },
    /// A local file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request failed after its retries.
    #[error("S3 {operation} of {key} in {store} failed: {message}")]
    Remote {
        /// The store, as its URL.
        store: String,
        /// The request, e.g. "PutObject".
        operation: &'static str,
        /// The key concerned (empty for listings of the whole store).
        key: String,
        /// The server's or the client's account of the failure, with the fix where known.
        message: String,
    },
    /// A repository URL that names no store this build knows.
    #[error("invalid repository URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused, and what would be accepted.
        reason: String,
    },
}

/// Where objects live: a local directory or an S3-compatible bucket.
#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// The store as a URL, for messages.
    fn url(&self) -> String;

    /// Whether [`ObjectStore::put_new`] is refused atomically by the store
    /// itself when the object exists (local `link`, S3 `If-None-Match: *`).
    fn has_conditional_create(&self) -> bool;

    /// Creates `key` holding `data`. Fails with [`StorageError::AlreadyExists`]
    /// when the object exists and the store can tell; a partly written object
    /// never becomes visible.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StorageError>;

    /// Makes an empty file to write a new object into, for
    /// [`ObjectStore::put_staged`]: a local store makes it beside its
    /// objects, an S3 store in the system's temporary folder (`TMPDIR`),
    /// without a name there.
    /// Blocking: call it off the async threads.
    ///
    /// Fails when that folder cannot hold a new file.
    fn stage(&self) -> Result<Staged, StorageError>;

    /// Creates `key` holding the bytes of `staged`, as [`ObjectStore::put_new`]
    /// does (a local store links the file into place, an S3 store streams it
    /// from disk); the staged file is gone afterwards.
    async fn put_staged(&self, key: &str, staged: Staged) -> Result<(), StorageError>;

    /// The size of an object in bytes, without reading it (`HeadObject` on
    /// S3). Fails with [`StorageError::NotFound`] when absent.
    async fn size(&self, key: &str) -> Result<u64, StorageError>;

    /// Reads a whole object. Fails with [`StorageError::NotFound`] when absent.
    async fn get(&self, key: &str) -> Result<Bytes, StorageError>;

    /// Opens a whole object to read as it arrives, holding only what is
    /// being read. Fails with [`StorageError::NotFound`] when absent.
    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StorageError>;

    /// Reads the bytes `range` of an object (one ranged GET on S3). The range
    /// must lie within the object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError>;

    /// Lists every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Removes the named staged files that creates cut short by a crash left
    /// in a local store, once last written more than `older_than` ago (so
    /// that no create still running loses its file). An S3 store has none:
    /// its objects appear whole, and its staged files have no name.
    ///
    /// Fails when a folder cannot be read or a file removed.
    async fn sweep_leftovers(&self, older_than: Duration) -> Result<Swept, StorageError>;
}

/// What [`ObjectStore::sweep_leftovers`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Opens the store a repository URL names: `s3://bucket/prefix` for S3 and
/// R2, `file:///path` or a plain path for a local directory.
///
/// Fails with [`StorageError::InvalidUrl`] on an unknown scheme or an
/// S3 URL without a bucket.
pub async fn open(url: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, StorageError> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::InvalidUrl {
                url: url.to_owned(),
                reason: "no bucket; write s3://BUCKET/PREFIX".into(),
            });
        }
        return Ok(Arc::new(S3Store::connect(bucket, prefix, s3).await?));
    }
    let path = match url.strip_prefix("file://") {
        Some(path) => path,
        None if url.contains("://") => {
            return Err(StorageError::InvalidUrl {
                url: url.to_owned(),
                reason: "unknown scheme; use s3://BUCKET/PREFIX, file:///PATH or a plain path"
                    .into(),
            });
        }
        None => url,
    };
    if path.is_empty() {
        return Err(StorageError::InvalidUrl {
            url: url.to_owned(),
            reason: "empty path".into(),
        });
    }
    Ok(Arc::new(LocalStore::new(PathBuf::from(path))))
}
