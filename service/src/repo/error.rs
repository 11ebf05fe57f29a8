//! What can go wrong with a repository: one error type for the format,
//! naming the object and the fix.

use super::crypt::CryptError;
use super::id::BlobId;
use super::keys::KeyError;
use super::{blob, tree};
use crate::storage::StorageError;

/// What can go wrong with a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No repository is there.
    #[error("no lifeboat repository at {url}; create one with `lifeboat init --repo {url}`")]
    NotARepository {
        /// The store.
        url: String,
    },
    /// A location holds objects but no `config`: it is never initialised anew.
    #[error(
        "{url} holds {objects} objects (e.g. {example}) but no `config`: it is a repository whose \
         config was lost or moved, and making a new one would re-key it and orphan every snapshot. \
         Put `config` back, recreate it by hand with the restore key \
         (FORMAT.md, \"Recreating config\"), or point at an empty location"
    )]
    ConfigMissing {
        /// The store.
        url: String,
        /// How many objects it holds.
        objects: usize,
        /// One of them.
        example: String,
    },
    /// A prune deleted, or plans to delete, a pack a new snapshot reuses.
    #[error(
        "a prune running at the same time deleted or marked {packs} packs this backup reused; \
         its snapshot was withdrawn and the backup must run again"
    )]
    PrunedDuringBackup {
        /// How many of the snapshot's packs.
        packs: usize,
    },
    /// `init` found a repository already there.
    #[error("a repository already exists at {url}; use it, or pick an empty location")]
    AlreadyInitialized {
        /// The store.
        url: String,
    },
    /// The `config` object is unusable.
    #[error("the repository config at {url} is invalid: {reason}")]
    BadConfig {
        /// The store.
        url: String,
        /// Why.
        reason: String,
    },
    /// The `config` object is not JSON of a config's shape.
    #[error("the repository config at {url} is invalid: {source}")]
    UnparsableConfig {
        /// The store.
        url: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An identity file matches neither key role.
    #[error(
        "the identity {identity} is neither this repository's restore key nor its service key \
         (restore recipients: {restore}; service recipients: {service})"
    )]
    WrongKey {
        /// The identity file.
        identity: String,
        /// The repository's restore recipients.
        restore: String,
        /// The repository's service recipients.
        service: String,
    },
    /// An operation needs the restore key.
    #[error("{what} needs the restore key; pass the restore identity file, not the service key")]
    NeedsRestoreKey {
        /// The operation.
        what: &'static str,
    },
    /// An object could not be decrypted.
    #[error("object {key}: {source}")]
    Crypt {
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: CryptError,
    },
    /// An object is damaged or malformed.
    #[error(
        "object {key} is damaged: {reason}; run `lifeboat check --read-data` to find all damage"
    )]
    Damaged {
        /// The object.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An object's plaintext cannot be read as its kind.
    #[error(
        "object {key} is damaged: {source}; run `lifeboat check --read-data` to find all damage"
    )]
    Undecodable {
        /// The object.
        key: String,
        /// Why it cannot be read.
        #[source]
        source: DecodeError,
    },
    /// A create of a content-named object found another object under its name.
    #[error(
        "object {key} is already stored but was replaced by something else: {reason}; \
         someone who can write the bucket changed it, run `lifeboat check --read-data`"
    )]
    Replaced {
        /// The object.
        key: String,
        /// How the stored object differs from the one named.
        reason: String,
    },
    /// A tree breaks a rule of FORMAT.md's "Trees".
    #[error("tree {tree} is damaged: {damage}")]
    DamagedTree {
        /// The tree blob.
        tree: BlobId,
        /// The entry and the rule it breaks.
        #[source]
        damage: tree::TreeDamage,
    },
    /// A walk of trees went beyond a bound (depth or total entries).
    #[error("tree {tree}: {reason}")]
    TreeLimit {
        /// The tree where the bound was reached.
        tree: BlobId,
        /// Which bound.
        reason: String,
    },
    /// The file in `TMPDIR` that holds the tree packs read could not be
    /// made, written or read.
    #[error(
        "{action} the tree packs kept in {} (TMPDIR must name a writable folder with room): {source}",
        dir.display()
    )]
    TreeSpill {
        /// What was being done.
        action: &'static str,
        /// The folder (`TMPDIR`).
        dir: std::path::PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A blob is larger than its kind may be.
    #[error("a {kind:?} blob of {length} bytes is larger than the format allows ({max} bytes)")]
    BlobTooLarge {
        /// What it holds.
        kind: blob::BlobKind,
        /// Its plaintext length.
        length: usize,
        /// The largest allowed.
        max: u32,
    },
    /// A blob the snapshot needs is in no index.
    #[error("blob {id} is missing from the repository's index")]
    MissingBlob {
        /// The blob.
        id: BlobId,
    },
    /// No snapshot matches.
    #[error("no snapshot matches {spec:?}; list them with `lifeboat snapshots`")]
    NoSnapshot {
        /// What was asked for.
        spec: String,
    },
    /// Several snapshots match an id prefix.
    #[error("{spec:?} matches several snapshots; give more digits of the id")]
    AmbiguousSnapshot {
        /// What was asked for.
        spec: String,
    },
    /// Keys could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An object could not be serialised.
    #[error("cannot serialise {what}: {source}")]
    Encode {
        /// The object.
        what: &'static str,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The background uploader stopped; the error it stopped with ends
    /// the run.
    #[error("the pack uploader stopped; the error that ends this run says why")]
    UploaderStopped,
    /// A worker task or lock failed because code panicked.
    #[error(transparent)]
    Worker(#[from] crate::errors::WorkerError),
}

/// Why an object's plaintext cannot be read as its kind.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Its decrypted stream or its zstd frames broke off or do not verify.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// It is not JSON of its kind's shape.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}
