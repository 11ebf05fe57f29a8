//! Writes of content-named objects, idempotent over lossy stores.
//!
//! Packs, index objects, snapshots and prune plans are named by the BLAKE3
//! of their bytes as stored ([`id::content_hash`]). A create of such an
//! object that finds its name taken therefore finds it stored already —
//! typically a write whose answer the network lost, retried by the S3
//! client and refused with 412 — and succeeds, once the stored object is
//! shown to be ours as far as that is cheap: its size always, and for small
//! objects its bytes against the name. `config` and `keys`, which are not
//! content-named, are created strictly ([`put_fixed`]): only bytes equal to
//! ours count as our own earlier write.

use bytes::Bytes;

use super::RepoError;
use super::id;
use crate::storage::{ObjectStore, Staged, StorageError};

/// Objects below this size (index objects, snapshots, plans) found already
/// stored are read back and hashed; larger ones (packs) are checked by size.
pub const VERIFY_BYTES_BELOW: u64 = 1024 * 1024;

/// Creates `key`, whose last path segment is the hex of `data`'s content
/// hash, holding `data`; an object already stored under that name counts
/// as written when it has `data`'s size and, below [`VERIFY_BYTES_BELOW`],
/// hashes to its name.
///
/// Fails with [`RepoError::Replaced`] when the stored object is something
/// else, and with the store's error when it cannot be written or checked.
pub(crate) async fn put_content_named(
    store: &dyn ObjectStore,
    key: &str,
    data: Bytes,
) -> Result<(), RepoError> {
    let size = data.len() as u64;
    let created = store.put_new(key, data).await;
    settle_content_named(store, key, size, created).await
}

/// [`put_content_named`] for an object staged in a file
/// ([`ObjectStore::stage`]) of `size` bytes.
pub(crate) async fn put_staged_content_named(
    store: &dyn ObjectStore,
    key: &str,
    staged: Staged,
    size: u64,
) -> Result<(), RepoError> {
    let created = store.put_staged(key, staged).await;
    settle_content_named(store, key, size, created).await
}

/// Accepts a create that found `key` taken when the object stored there is
/// ours: `size` bytes and, below [`VERIFY_BYTES_BELOW`], hashing to its name.
async fn settle_content_named(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    created: Result<(), StorageError>,
) -> Result<(), RepoError> {
    match created {
        Ok(()) => return Ok(()),
        Err(StorageError::AlreadyExists { .. }) => {}
        Err(other) => return Err(other.into()),
    }
    let replaced = |reason: String| RepoError::Replaced {
        key: key.to_owned(),
        reason,
    };
    let stored_size = store.size(key).await?;
    if stored_size != size {
        return Err(replaced(format!(
            "it holds {stored_size} bytes, not the {size} its name stands for"
        )));
    }
    if size < VERIFY_BYTES_BELOW {
        let stored = store.get(key).await?;
        let name = key.rsplit('/').next().unwrap_or(key);
        if hex::encode(id::content_hash(&stored)) != name {
            return Err(replaced(format!(
                "its {size} bytes do not hash to its name"
            )));
        }
    }
    tracing::debug!(key, "object already stored (an earlier attempt landed)");
    Ok(())
}

/// Creates one of the fixed objects (`config`, `keys`) of a new
/// repository. A create refused because the object exists succeeds only
/// when the stored bytes are exactly `data`: this init's own write, whose
/// answer was lost.
///
/// Fails with the store's [`StorageError::AlreadyExists`] when anything
/// else is stored there.
pub(crate) async fn put_fixed(
    store: &dyn ObjectStore,
    key: &str,
    data: Bytes,
) -> Result<(), RepoError> {
    match store.put_new(key, data.clone()).await {
        Ok(()) => Ok(()),
        Err(exists @ StorageError::AlreadyExists { .. }) => {
            if store.get(key).await? == data {
                tracing::debug!(key, "object already stored (an earlier attempt landed)");
                Ok(())
            } else {
                Err(exists.into())
            }
        }
        Err(other) => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;

    fn key_of(data: &[u8]) -> String {
        format!("index/{}", hex::encode(id::content_hash(data)))
    }

    #[tokio::test]
    async fn a_stored_object_counts_as_written_and_a_replaced_one_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = LocalStore::new(dir.path().to_owned());
        let data = Bytes::from_static(b"an index object");
        let key = key_of(&data);
        put_content_named(&store, &key, data.clone()).await?;
        // The write whose answer was lost, done again.
        put_content_named(&store, &key, data.clone()).await?;
        assert_eq!(store.get(&key).await?, data);

        // Same size, other bytes: caught by the hash.
        let other = Bytes::from_static(b"an index 0bject");
        let other_key = key_of(&other);
        store.put_new(&other_key, data.clone()).await?;
        let error = put_content_named(&store, &other_key, other.clone())
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a replaced object was accepted"))?;
        assert!(
            matches!(&error, RepoError::Replaced { key, .. } if *key == other_key),
            "{error}"
        );
        assert!(error.to_string().contains("replaced by something else"));

        // Another size: caught by the size alone.
        let big = Bytes::from(vec![7; 2 * VERIFY_BYTES_BELOW as usize]);
        let big_key = key_of(&big);
        store
            .put_new(&big_key, Bytes::from_static(b"short"))
            .await?;
        let error = put_content_named(&store, &big_key, big).await.err();
        assert!(
            matches!(&error, Some(RepoError::Replaced { reason, .. }) if reason.contains("holds 5 bytes")),
            "{error:?}"
        );
        Ok(())
    }
}
