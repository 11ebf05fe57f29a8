//! The repository format (v1, see `FORMAT.md`).
//!
//! Knows nothing of sources, HTTP, schedules or the CLI: it turns blobs into
//! packs, indexes and snapshots in an [`ObjectStore`](crate::storage::ObjectStore)
//! and back. The typestate is [`Repository`] (config read) →
//! [`UnlockedRepository`] (keys and index loaded with an identity); reading
//! packs needs the restore identity, writing needs only public recipients.

pub mod blob;
mod budget;
pub mod check;
pub mod chunker;
pub mod config;
pub(crate) mod crypt;
mod error;
pub mod id;
pub(crate) mod id_set;
pub mod index;
pub mod keys;
mod load;
pub(crate) mod meta;
pub mod mirror;
pub mod pack;
mod pack_file;
mod plan;
pub mod prune;
pub(crate) mod put;
mod read_budget;
pub mod reader;
pub mod repack;
pub mod snapshot;
#[cfg(test)]
pub(crate) mod test_fixture;
pub mod tree;
mod unlocked;
pub mod writer;

pub use error::{DecodeError, RepoError};
pub use unlocked::UnlockedRepository;

use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{ObjectStore, StorageError};
use config::{CONFIG_KEY, FORMAT_VERSION, InitOptions, KEYS_KEY, KeysObject, RepoConfig};
pub use crypt::CryptError;

use keys::{AnyIdentity, ChunkIdKey, IdentityFile, KeyRole, Recipients};
use load::load_index_and_plans;

/// A repository whose config has been read.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    config: RepoConfig,
    config_bytes: Bytes,
    recipients: Recipients,
}

impl Repository {
    /// Creates a repository in an empty store.
    ///
    /// Fails when one is already there, the options are invalid, or the
    /// store cannot be written.
    pub async fn init(
        store: Arc<dyn ObjectStore>,
        recipients: Recipients,
        options: &InitOptions,
    ) -> Result<Self, RepoError> {
        let url = store.url();
        options.validate().map_err(|reason| RepoError::BadConfig {
            url: url.clone(),
            reason,
        })?;
        if recipients.restore.is_empty() || recipients.service.is_empty() {
            return Err(RepoError::BadConfig {
                url,
                reason: "a repository needs at least one restore and one service recipient".into(),
            });
        }
        match store.get(CONFIG_KEY).await {
            Ok(_) => return Err(RepoError::AlreadyInitialized { url }),
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Self::check_location_is_free(&store).await?;
        let config = RepoConfig::new(options, &recipients);
        let config_bytes = Bytes::from(serde_json::to_vec_pretty(&config).map_err(|source| {
            RepoError::Encode {
                what: CONFIG_KEY,
                source,
            }
        })?);
        let keys = KeysObject::new(&ChunkIdKey::generate(), &config_bytes);
        let keys_cipher =
            meta::seal(&keys, recipients.both()).map_err(|source| RepoError::Crypt {
                key: KEYS_KEY.into(),
                source,
            })?;
        // A lone `keys` is left by an init that crashed: replace it.
        store.delete(KEYS_KEY).await?;
        put::put_fixed(store.as_ref(), KEYS_KEY, keys_cipher.into()).await?;
        put::put_fixed(store.as_ref(), CONFIG_KEY, config_bytes.clone()).await?;
        Ok(Self {
            store,
            config,
            config_bytes,
            recipients,
        })
    }

    /// Checks that a repository may be made in `store`: it holds no
    /// objects. One that holds objects but no `config` lost its config, and
    /// a new repository there would re-key it and orphan every snapshot. A
    /// lone `keys` is what an init that crashed leaves; nothing can refer to
    /// it yet.
    ///
    /// Fails with [`RepoError::ConfigMissing`] when it holds other objects,
    /// or when the store cannot be listed.
    pub async fn check_location_is_free(store: &Arc<dyn ObjectStore>) -> Result<(), RepoError> {
        let held = store.list("").await?;
        match held.iter().find(|o| o.key != KEYS_KEY) {
            Some(object) => Err(RepoError::ConfigMissing {
                url: store.url(),
                objects: held.len(),
                example: object.key.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Opens the repository in `store` by reading its config.
    ///
    /// Fails when there is no repository or its config is invalid.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self, RepoError> {
        let url = store.url();
        let config_bytes = match store.get(CONFIG_KEY).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => return Err(RepoError::NotARepository { url }),
            Err(e) => return Err(e.into()),
        };
        let bad = |reason: String| RepoError::BadConfig {
            url: url.clone(),
            reason,
        };
        let config: RepoConfig = serde_json::from_slice(&config_bytes).map_err(|source| {
            RepoError::UnparsableConfig {
                url: url.clone(),
                source,
            }
        })?;
        config.validate().map_err(&bad)?;
        if config.version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported by this lifeboat (it reads version {FORMAT_VERSION})",
                config.version
            )));
        }
        let recipients = config.recipients()?;
        Ok(Self {
            store,
            config,
            config_bytes,
            recipients,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The recipients objects are encrypted to.
    pub fn recipients(&self) -> &Recipients {
        &self.recipients
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Tells whether an identity file is this repository's restore or
    /// service key.
    ///
    /// Fails with [`RepoError::WrongKey`] when it is neither.
    pub fn identify(&self, file: IdentityFile) -> Result<AnyIdentity, RepoError> {
        let held = file.recipients();
        if held.iter().any(|r| self.recipients.restore.contains(r)) {
            return Ok(AnyIdentity::Restore(file.into_restore()));
        }
        if held.iter().any(|r| self.recipients.service.contains(r)) {
            return Ok(AnyIdentity::Service(file.into_service()));
        }
        let join = |list: &[keys::Recipient]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(RepoError::WrongKey {
            identity: format!("{file:?}"),
            restore: join(&self.recipients.restore),
            service: join(&self.recipients.service),
        })
    }

    /// Reads the keys and the whole index with `identity`, whose role
    /// decides what the unlocked repository can do.
    ///
    /// Fails when the identity opens no key, `config` was altered, or an
    /// index object is unreadable.
    pub async fn unlock<K: KeyRole>(self, identity: K) -> Result<UnlockedRepository<K>, RepoError> {
        let keys_cipher = self.store.get(KEYS_KEY).await?;
        let keys: KeysObject = meta::open(
            &keys_cipher[..],
            keys::sealed::Role::age_identities(&identity),
        )
        .map_err(|e| e.at(KEYS_KEY))?;
        if keys.config_blake3 != blake3::hash(&self.config_bytes).to_hex().as_str() {
            return Err(RepoError::Damaged {
                key: CONFIG_KEY.into(),
                reason: "it differs from the copy sealed in `keys` (altered or corrupted)".into(),
            });
        }
        let chunk_key = keys.chunk_id_key().ok_or_else(|| RepoError::Damaged {
            key: KEYS_KEY.into(),
            reason: "the chunk-id key is malformed".into(),
        })?;
        let (index, index_problems) = load_index_and_plans(&self.store, &identity).await?;
        for (key, problem) in &index_problems {
            tracing::warn!(object = %key, "skipping an unreadable index object: {problem}");
        }
        Ok(UnlockedRepository {
            fingerprint: Fingerprint {
                id: self.config.id.clone(),
                config_blake3: blake3::hash(&self.config_bytes).to_hex().to_string(),
                keys_blake3: blake3::hash(&keys_cipher).to_hex().to_string(),
            },
            repo: self,
            chunk_key,
            identity,
            index: Arc::new(index),
            index_problems,
            tree_entry_limit: reader::MAX_TREE_ENTRIES,
            snapshot_cache: Default::default(),
        })
    }

    /// The `config` object's bytes as read.
    pub fn config_bytes(&self) -> &[u8] {
        &self.config_bytes
    }
}

/// What identifies one repository: its id and the hashes of its two fixed
/// objects, which are never rewritten. A changed fingerprint means someone
/// replaced `config` or `keys`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// The repository id from `config`.
    pub id: String,
    /// BLAKE3 of the `config` object.
    pub config_blake3: String,
    /// BLAKE3 of the `keys` object as stored (encrypted).
    pub keys_blake3: String,
}

/// Parses the id in an object key such as `index/<hex>`.
fn object_id<T: std::str::FromStr>(key: &str, prefix: &str) -> Result<T, RepoError> {
    key.strip_prefix(prefix)
        .and_then(|hex| hex.parse().ok())
        .ok_or_else(|| RepoError::Damaged {
            key: key.into(),
            reason: "its name is not a 64-digit hex id".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::blob::BlobKind;
    use crate::repo::id::BlobId;
    use crate::repo::keys::{RestoreIdentity, ServiceIdentity, generate_identity_file};
    use crate::repo::reader::BlobStream;
    use crate::repo::test_fixture::{TestRepo, pattern, snapshot_of, store_blob, store_blobs};
    use crate::storage::LocalStore;
    use std::io::Read;

    #[tokio::test]
    async fn service_key_writes_restore_key_reads_every_blob_by_ranged_reads() -> anyhow::Result<()>
    {
        let f = TestRepo::new().await?;
        let service = ServiceIdentity::from_file(f.service_key(), None)?;
        let repo = Repository::open(f.store().clone())
            .await?
            .unlock(AnyIdentity::Service(service.clone()))
            .await?;
        assert!(
            matches!(
                repo.into_restore("reading"),
                Err(RepoError::NeedsRestoreKey { what: "reading" })
            ),
            "the service key must not read packs"
        );
        let repo = Repository::open(f.store().clone())
            .await?
            .unlock(service)
            .await?;

        // Blobs of awkward sizes, so that some start exactly on a 64 KiB
        // segment boundary, some span segments and one starts the pack.
        let sizes = [10, 65_526, 65_536, 200_000, 1, 131_072, 70_000];
        let blobs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(i as u32, n))
            .collect();
        let writer = repo.writer();
        let ids = tokio::task::spawn_blocking(move || {
            let ids = blobs
                .iter()
                .map(|b| writer.save(BlobKind::Data, b).map(|(id, _)| id))
                .collect::<Result<Vec<_>, _>>();
            (writer, ids)
        })
        .await?;
        let (writer, ids) = (ids.0, ids.1?);
        let stats = writer.finish().await?;
        assert_eq!(stats.blobs_added, sizes.len() as u64);
        assert_eq!(stats.packs.len(), 1);

        let restore = RestoreIdentity::from_file(f.restore_key(), None)?;
        let repo = Repository::open(f.store().clone())
            .await?
            .unlock(restore)
            .await?;
        let reader = repo.reader();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                reader.read(id).await?,
                pattern(i as u32, sizes[i]),
                "blob {i}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_second_writer_deduplicates_against_the_index() -> anyhow::Result<()> {
        let f = TestRepo::new().await?;
        let service = ServiceIdentity::from_file(f.service_key(), None)?;
        let repo = Repository::open(f.store().clone())
            .await?
            .unlock(AnyIdentity::Service(service))
            .await?;
        let data = pattern(1, 100_000);
        let writer = repo.writer();
        let (writer, first) = tokio::task::spawn_blocking(move || {
            let first = writer.save(BlobKind::Data, &data);
            let again = writer.save(BlobKind::Data, &data);
            (writer, first.and_then(|a| again.map(|b| (a, b))))
        })
        .await?;
        let (a, b) = first?;
        assert!(a.1 && !b.1 && a.0 == b.0);
        writer.finish().await?;

        let service = ServiceIdentity::from_file(f.service_key(), None)?;
        let repo = Repository::open(f.store().clone())
            .await?
            .unlock(AnyIdentity::Service(service))
            .await?;
        assert!(repo.index().contains(&a.0));
        let writer = repo.writer();
        let data = pattern(1, 100_000);
        let (writer, saved) = tokio::task::spawn_blocking(move || {
            let saved = writer.save(BlobKind::Data, &data);
            (writer, saved)
        })
        .await?;
        assert!(!saved?.1, "a stored blob is not stored again");
        assert_eq!(writer.finish().await?.packs.len(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn an_altered_config_or_a_foreign_key_is_refused() -> anyhow::Result<()> {
        let f = TestRepo::new().await?;
        let dir = tempfile::tempdir()?;
        let stranger = dir.path().join("stranger.key");
        generate_identity_file(&stranger, None)?;
        let repo = Repository::open(f.store().clone()).await?;
        let file = AnyIdentity::from_file(&stranger, None)?;
        assert!(matches!(
            repo.identify(file),
            Err(RepoError::WrongKey { .. })
        ));

        let config = f.store().get(CONFIG_KEY).await?;
        let altered = String::from_utf8(config.to_vec())?
            .replace("\"compression_level\": 3", "\"compression_level\": 4");
        f.store().delete(CONFIG_KEY).await?;
        f.store().put_new(CONFIG_KEY, altered.into()).await?;
        let repo = Repository::open(f.store().clone()).await?;
        let service = ServiceIdentity::from_file(f.service_key(), None)?;
        let unlocked = repo.unlock(AnyIdentity::Service(service)).await;
        assert!(matches!(unlocked, Err(RepoError::Damaged { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn init_refuses_an_existing_repository_and_bad_options() -> anyhow::Result<()> {
        let f = TestRepo::new().await?;
        let repo = Repository::open(f.store().clone()).await?;
        let again = Repository::init(
            f.store().clone(),
            repo.recipients().clone(),
            &InitOptions::default(),
        )
        .await;
        assert!(matches!(again, Err(RepoError::AlreadyInitialized { .. })));
        let bad = InitOptions {
            pack_size: 10,
            ..InitOptions::default()
        };
        let dir = tempfile::tempdir()?;
        let empty: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().to_owned()));
        let refused = Repository::init(empty, repo.recipients().clone(), &bad).await;
        assert!(matches!(refused, Err(RepoError::BadConfig { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn init_refuses_a_location_holding_objects_but_replaces_a_lone_keys() -> anyhow::Result<()>
    {
        let f = TestRepo::new().await?;
        let recipients = Repository::open(f.store().clone())
            .await?
            .recipients()
            .clone();
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().to_owned()));
        store.put_new(KEYS_KEY, Bytes::from_static(b"left")).await?;
        store
            .put_new("snapshots/0a", Bytes::from_static(b"a snapshot"))
            .await?;
        let refused =
            Repository::init(store.clone(), recipients.clone(), &InitOptions::default()).await;
        assert!(
            matches!(&refused, Err(RepoError::ConfigMissing { objects: 2, .. })),
            "{refused:?}"
        );
        assert_eq!(store.get(KEYS_KEY).await?, Bytes::from_static(b"left"));
        store.delete("snapshots/0a").await?;
        Repository::init(store.clone(), recipients, &InitOptions::default()).await?;
        assert_ne!(store.get(KEYS_KEY).await?, Bytes::from_static(b"left"));
        Ok(())
    }

    #[tokio::test]
    async fn a_backup_notices_a_prune_that_deletes_what_it_reused() -> anyhow::Result<()> {
        use prune::{PruneOptions, forget, prune};
        let f = TestRepo::new().await?;
        let first = f.as_service().await?;
        let blob = store_blob(&first, pattern(3, 40_000)).await?;
        let old = first.save_snapshot(&snapshot_of(blob)).await?;
        // A backup loads the index and reuses the blob...
        let backup = f.as_service().await?;
        assert!(backup.index().reusable(&blob));
        backup.confirm_references(&[blob], &[]).await?;
        // ...while its only snapshot is forgotten and a prune marks its pack.
        let pruner = f.as_service().await?;
        forget(&pruner, &[old]).await?;
        let now = PruneOptions {
            grace: chrono::Duration::zero(),
            dry_run: false,
        };
        assert_eq!(prune(&pruner, &now).await?.packs_marked, 1);
        let marked = backup.confirm_references(&[blob], &[]).await;
        assert!(
            matches!(marked, Err(RepoError::PrunedDuringBackup { packs: 1 })),
            "{marked:?}"
        );
        // A backup that stored the blob again in a pack of its own does not
        // reuse the marked pack.
        let later = f.as_service().await?;
        let (ids, stats) = store_blobs(&later, BlobKind::Data, vec![pattern(3, 40_000)]).await?;
        assert_eq!((ids, stats.blobs_added), (vec![blob], 1), "stored again");
        assert_eq!(stats.restored, [blob]);
        later.confirm_references(&[blob], &stats.restored).await?;
        let reused = later.confirm_references(&[blob], &[]).await;
        assert!(
            matches!(reused, Err(RepoError::PrunedDuringBackup { packs: 1 })),
            "{reused:?}"
        );
        // Deleted too: the plan is gone, but the index changed.
        let report = prune(&f.as_service().await?, &now).await?;
        assert_eq!(report.packs_deleted, 1);
        let deleted = backup.confirm_references(&[blob], &[]).await;
        assert!(
            matches!(deleted, Err(RepoError::PrunedDuringBackup { packs: 1 })),
            "{deleted:?}"
        );
        // A reloaded backup finds the blob only where it was stored again.
        let location = backup.reload().await?.index().get(&blob).map(|l| l.pack);
        assert_eq!(location, Some(stats.packs[0]));
        Ok(())
    }

    #[tokio::test]
    async fn a_snapshot_is_read_once_per_unlocking_and_forgotten_ones_drop_out()
    -> anyhow::Result<()> {
        let f = TestRepo::new().await?;
        let repo = f.as_service().await?;
        let blob = store_blob(&repo, pattern(1, 5_000)).await?;
        let first = repo.save_snapshot(&snapshot_of(blob)).await?;
        let second = repo.save_snapshot(&snapshot_of(blob)).await?;
        assert_ne!(first, second, "two snapshots at two times");
        assert_eq!(
            f.staged_files()?,
            Vec::<std::path::PathBuf>::new(),
            "a staged snapshot is linked into place"
        );
        let listed = |entries: Vec<snapshot::SnapshotEntry>| -> Vec<id::SnapshotId> {
            entries.into_iter().map(|e| e.id).collect()
        };
        let before = listed(repo.snapshots().await?);
        assert_eq!(before.len(), 2);
        // Damaged behind the store's back after it was read: the listing
        // of this unlocking (and its clones) does not read it again; a new
        // unlocking does, and skips it.
        f.damage(&first.key(), |bytes| bytes.truncate(10))?;
        let clone = repo.clone();
        assert_eq!(listed(clone.snapshots().await?), before);
        let (_, problems) = f.as_service().await?.read_snapshots().await?;
        assert_eq!(problems.len(), 1, "{problems:?}");
        // Forgotten: gone from the listing, cache or not.
        f.store().delete(&second.key()).await?;
        assert_eq!(listed(repo.snapshots().await?), vec![first]);
        Ok(())
    }

    #[tokio::test]
    async fn an_unreadable_snapshot_or_plan_is_skipped_but_stops_prune() -> anyhow::Result<()> {
        use prune::{PLAN_PREFIX, PruneOptions, prune};
        let f = TestRepo::new().await?;
        let repo = f.as_service().await?;
        let blob = store_blob(&repo, pattern(1, 5_000)).await?;
        let good = repo.save_snapshot(&snapshot_of(blob)).await?;
        let garbage = Bytes::from_static(b"not an age file");
        let bad_key = format!("snapshots/{}", hex::encode(id::content_hash(&garbage)));
        f.store().put_new(&bad_key, garbage.clone()).await?;

        let repo = f.as_service().await?;
        let listed: Vec<_> = repo.snapshots().await?.into_iter().map(|e| e.id).collect();
        assert_eq!(listed, vec![good], "the good snapshot is still listed");
        let (_, problems) = repo.read_snapshots().await?;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, bad_key);
        let options = PruneOptions {
            grace: chrono::Duration::hours(1),
            dry_run: true,
        };
        let refused = prune(&repo, &options).await.err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains(&bad_key)),
            "{refused:?}"
        );
        f.store().delete(&bad_key).await?;

        let plan_key = format!("{PLAN_PREFIX}{}", hex::encode(id::content_hash(&garbage)));
        f.store().put_new(&plan_key, garbage).await?;
        let repo = f.as_service().await?;
        assert_eq!(repo.find_snapshot("latest").await?.id, good);
        let refused = prune(&repo, &options).await.err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains(&plan_key)),
            "{refused:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn writers_refuse_blobs_larger_than_readers_accept() -> anyhow::Result<()> {
        let f = TestRepo::new().await?;
        let repo = f.as_service().await?;
        let writer = repo.writer();
        let too_big = vec![0; blob::MAX_DATA_BLOB as usize + 1];
        let refused = tokio::task::spawn_blocking(move || {
            let refused = writer.save(BlobKind::Data, &too_big).map(drop);
            (writer, refused)
        })
        .await?;
        assert!(matches!(refused.1, Err(RepoError::BlobTooLarge { .. })));
        refused.0.finish().await?;
        Ok(())
    }

    #[tokio::test]
    async fn prune_marks_then_deletes_only_unused_packs_after_the_grace_period()
    -> anyhow::Result<()> {
        use prune::{PruneOptions, forget, prune};
        let f = TestRepo::new().await?;
        let repo = f.as_service().await?;
        let old = store_blob(&repo, pattern(1, 50_000)).await?;
        let old_snapshot = repo.save_snapshot(&snapshot_of(old)).await?;
        let repo = f.as_service().await?;
        let kept = store_blob(&repo, pattern(2, 50_000)).await?;
        repo.save_snapshot(&snapshot_of(kept)).await?;
        forget(&repo, &[old_snapshot]).await?;

        let hour = PruneOptions {
            grace: chrono::Duration::hours(1),
            dry_run: false,
        };
        let first = prune(&f.as_service().await?, &hour).await?;
        assert_eq!(
            (first.packs_stored, first.packs_marked, first.packs_deleted),
            (2, 1, 0)
        );
        let again = prune(&f.as_service().await?, &hour).await?;
        assert_eq!(
            (again.packs_marked, again.plans_waiting),
            (0, 1),
            "a marked pack is marked once"
        );

        // A backup while the plan waits stores the doomed blob afresh.
        let repo = f.as_service().await?;
        assert!(repo.index().contains(&old) && !repo.index().reusable(&old));
        let copy = store_blob(&repo, pattern(1, 50_000)).await?;
        assert_eq!(copy, old);
        repo.save_snapshot(&snapshot_of(copy)).await?;

        let now = PruneOptions {
            grace: chrono::Duration::zero(),
            dry_run: false,
        };
        let second = prune(&f.as_service().await?, &now).await?;
        assert_eq!((second.packs_deleted, second.indexes_rewritten), (1, 1));
        assert_eq!(f.store().list("data/").await?.len(), 2);
        assert!(f.store().list(prune::PLAN_PREFIX).await?.is_empty());

        let repo = f.as_restore().await?;
        let reader = repo.reader();
        assert_eq!(reader.read(&old).await?, pattern(1, 50_000));
        assert_eq!(reader.read(&kept).await?, pattern(2, 50_000));
        // The test's snapshots have data blobs as roots, so check structure
        // with the service key, which does not walk trees.
        let report = check::check(&f.as_service().await?, check::ReadData::All).await?;
        assert!(report.is_ok(), "{:?}", report.problems);
        Ok(())
    }

    #[tokio::test]
    async fn repack_copies_used_blobs_out_of_mostly_unused_packs() -> anyhow::Result<()> {
        use prune::{PruneOptions, prune};
        let f = TestRepo::new().await?;
        // One pack: a small used blob and a big unused one.
        let repo = f.as_service().await?;
        let writer = repo.writer();
        let (writer, saved) = tokio::task::spawn_blocking(move || {
            let kept = writer.save(BlobKind::Data, &pattern(1, 10_000));
            let dropped = writer.save(BlobKind::Data, &pattern(2, 90_000));
            (writer, kept.and_then(|k| dropped.map(|_| k.0)))
        })
        .await?;
        let kept = saved?;
        writer.finish().await?;
        repo.save_snapshot(&snapshot_of(kept)).await?;

        let dry = repack::repack(&f.as_restore().await?, 50, true).await?;
        assert_eq!((dry.packs_repacked, dry.packs_written), (1, 0));
        assert_eq!(
            f.store().list("data/").await?.len(),
            1,
            "a dry run writes nothing"
        );
        let done = repack::repack(&f.as_restore().await?, 50, false).await?;
        assert_eq!(
            (done.packs_repacked, done.blobs_copied, done.packs_written),
            (1, 1, 1)
        );
        assert_eq!(
            repack::repack(&f.as_restore().await?, 50, false)
                .await?
                .packs_repacked,
            0,
            "once is enough"
        );

        let now = PruneOptions {
            grace: chrono::Duration::zero(),
            dry_run: false,
        };
        let pruned = prune(&f.as_service().await?, &now).await?;
        assert_eq!(pruned.packs_deleted, 1);
        assert_eq!(f.store().list("data/").await?.len(), 1);
        assert_eq!(
            f.as_restore().await?.reader().read(&kept).await?,
            pattern(1, 10_000)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_streamed_pack_yields_its_blobs_in_order_and_damage_fails_only_the_blobs_in_it()
    -> anyhow::Result<()> {
        use crate::repo::crypt::{SEGMENT_CIPHER, SEGMENT_PLAIN};
        let f = TestRepo::new().await?;
        let repo = f.as_service().await?;
        // Random blobs are stored as they are: blob 3 spans whole segments.
        // Blob 4 compresses.
        let random = |n: usize| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<_>>();
        let mut blobs: Vec<Vec<u8>> = [10, 65_526, 65_536, 200_000].map(random).into();
        blobs.push(b"lifeboat ".repeat(20_000));
        blobs.push(random(70_000));
        let writer = repo.writer();
        let saved = blobs.clone();
        let (writer, ids) = tokio::task::spawn_blocking(move || {
            let ids = saved
                .iter()
                .map(|b| writer.save(BlobKind::Data, b).map(|(id, _)| id))
                .collect::<Result<Vec<_>, _>>();
            (writer, ids)
        })
        .await?;
        let ids = ids?;
        assert_eq!(writer.finish().await?.packs.len(), 1);

        let reader = f.as_restore().await?.reader();
        let located: Vec<_> = ids
            .iter()
            .map(|id| reader.index().get(id))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("a saved blob is in no index"))?;
        let pack = located[0].pack;
        let mut in_order = located.iter().map(|l| l.blob).collect::<Vec<_>>();
        assert!(in_order.iter().any(|b| b.compressed));
        in_order.sort_by_key(|b| b.offset);
        let plain_of = |id: &BlobId| blobs[ids.iter().position(|i| i == id).unwrap_or(0)].clone();

        // Whole: every blob, in pack order, whatever order they were asked in.
        let cipher = reader.fetch_pack(&pack).await?;
        let asked: Vec<_> = located.iter().rev().map(|l| l.blob).collect();
        let mut stream = reader.stream_pack(&pack, &cipher[..], asked.clone(), Default::default());
        let mut read = Vec::new();
        while let Some((id, plain)) = stream.next_blob() {
            assert_eq!(plain?, plain_of(&id).as_slice(), "blob {id}");
            read.push(id);
        }
        assert_eq!(read, in_order.iter().map(|b| b.id).collect::<Vec<_>>());
        assert!(stream.unread().is_empty());

        // A transfer cut after blob 2 (an error, or an early end) yields the
        // blobs before the cut and leaves the rest unread.
        let cut = info_cut(&reader, &pack, &located[2].blob)?;
        let broken = std::io::Error::other("connection reset");
        for body in [
            Box::new((&cipher[..cut]).chain(FailingRead(Some(broken)))) as Box<dyn Read>,
            Box::new(&cipher[..cut]),
        ] {
            let mut stream = reader.stream_pack(&pack, body, asked.clone(), Default::default());
            let mut read = Vec::new();
            while let Some((id, plain)) = stream.next_blob() {
                assert_eq!(plain?, plain_of(&id).as_slice(), "blob {id}");
                read.push(id);
            }
            let unread = stream.unread();
            assert!(read.len() >= 2, "blobs before the cut were lost");
            assert_eq!(read.len() + unread.len(), ids.len());
            assert_eq!(
                read[..],
                in_order[..read.len()]
                    .iter()
                    .map(|b| b.id)
                    .collect::<Vec<_>>()[..]
            );
            assert!(!unread.is_empty(), "a cut transfer yielded every blob");
        }

        // A flipped bit in a segment inside blob 3 stops the stream there.
        let info = *reader
            .index()
            .pack(&pack)
            .ok_or_else(|| anyhow::anyhow!("pack in no index"))?;
        let damaged_blob = located[3].blob;
        let segment = (damaged_blob.offset + u64::from(damaged_blob.length) / 2) / SEGMENT_PLAIN;
        let segment_plain = segment * SEGMENT_PLAIN..(segment + 1) * SEGMENT_PLAIN;
        let mut damaged = cipher.to_vec();
        damaged[(info.payload_offset + segment * SEGMENT_CIPHER + 100) as usize] ^= 4;
        let mut stream = reader.stream_pack(&pack, &damaged[..], asked, Default::default());
        let mut read = Vec::new();
        while let Some((id, plain)) = stream.next_blob() {
            assert_eq!(plain?, plain_of(&id).as_slice(), "blob {id}");
            read.push(id);
        }
        let before: Vec<_> = in_order
            .iter()
            .filter(|b| b.range().end <= segment_plain.start)
            .map(|b| b.id)
            .collect();
        assert_eq!(read, before);
        let unread = stream.unread();
        assert_eq!(unread.len(), ids.len() - before.len());

        // Read blob by blob, only the blobs in the damaged segment fail.
        f.store().delete(&pack.key()).await?;
        f.store().put_new(&pack.key(), damaged.into()).await?;
        let mut failed = Vec::new();
        for (id, result) in reader.read_many(&pack, &unread).await? {
            let blob = in_order.iter().find(|b| b.id == id).copied();
            let in_damage = blob.is_some_and(|b| {
                b.range().start < segment_plain.end && segment_plain.start < b.range().end
            });
            match result {
                Ok(plain) => assert!(!in_damage && plain == plain_of(&id), "blob {id}"),
                Err(e) => {
                    assert!(in_damage, "blob {id} failed outside the damage: {e}");
                    assert!(e.to_string().contains(&pack.key()), "{e}");
                    failed.push(id);
                }
            }
        }
        assert_eq!(failed, vec![damaged_blob.id]);
        Ok(())
    }

    /// The ciphertext length up to the end of the age segment holding the
    /// end of `blob`, plus one byte: a cut there keeps `blob` readable.
    fn info_cut(
        reader: &super::reader::BlobReader,
        pack: &super::id::PackId,
        blob: &super::pack::PackedBlob,
    ) -> anyhow::Result<usize> {
        use crate::repo::crypt::{SEGMENT_CIPHER, SEGMENT_PLAIN};
        let info = *reader
            .index()
            .pack(pack)
            .ok_or_else(|| anyhow::anyhow!("pack in no index"))?;
        let end_segment = (blob.offset + u64::from(blob.length)).div_ceil(SEGMENT_PLAIN);
        Ok(usize::try_from(
            info.payload_offset + end_segment * SEGMENT_CIPHER + 1,
        )?)
    }

    /// A reader that fails once with the error it holds.
    struct FailingRead(Option<std::io::Error>);

    impl Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(self
                .0
                .take()
                .unwrap_or_else(|| std::io::Error::other("failed")))
        }
    }
}
