//! lifeboatd's side of the movers' caches (see [`super::cache`]): which
//! cache object each claim of a volumes job has, kept in the state
//! folder's file cache; the claims' keys for the run's Secret; and, once
//! the movers ended, the objects they left recorded and those no claim
//! has any more deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::{self, CacheKey, MasterCacheKey};
use crate::state::FileCache;
use crate::storage::ObjectStore;

/// The cache objects of one volumes job's claims.
#[derive(Debug)]
pub struct CacheLedger {
    state_dir: PathBuf,
    repository: String,
    job: String,
    master: MasterCacheKey,
    objects: BTreeMap<String, String>,
}

impl CacheLedger {
    /// The ledger of volumes job `job` of repository `repository` (its id)
    /// in `state_dir`; `None`, with a warning, when there is no state
    /// folder or it cannot hold one (the movers then read every file).
    pub fn open(state_dir: Option<&Path>, repository: &str, job: &str) -> Option<Self> {
        let state_dir = state_dir?;
        let opened = MasterCacheKey::load_or_create(state_dir)
            .map_err(|e| e.to_string())
            .and_then(|master| {
                let objects = FileCache::open(state_dir)
                    .and_then(|cache| cache.mover_caches(repository, job))
                    .map_err(|e| e.to_string())?;
                Ok((master, objects))
            });
        match opened {
            Ok((master, objects)) => Some(Self {
                state_dir: state_dir.to_owned(),
                repository: repository.to_owned(),
                job: job.to_owned(),
                master,
                objects,
            }),
            Err(e) => {
                tracing::warn!(job, "the volume movers read every file: {e}");
                None
            }
        }
    }

    /// The key of `claim`'s cache.
    pub fn key(&self, claim: &str) -> CacheKey {
        self.master.claim_key(&self.repository, &self.job, claim)
    }

    /// The cache object `claim`'s last mover left, if any.
    pub fn object(&self, claim: &str) -> Option<&str> {
        self.objects.get(claim).map(String::as_str)
    }

    /// Deletes the job's cache objects no claim has: left by a mover whose
    /// run was killed before it recorded them, or by a lost ledger.
    /// Failures are warnings; the next run tries again.
    pub async fn sweep(&self, store: &Arc<dyn ObjectStore>) {
        let listed = match store.list(&cache::job_prefix(&self.job)).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(job = %self.job, "listing the movers' caches: {e}");
                return;
            }
        };
        for object in listed {
            if !self.objects.values().any(|named| *named == object.key) {
                delete(store, &object.key).await;
            }
        }
    }

    /// Records what this run's movers left: `left` has the new object of
    /// each claim whose mover stored one; the other claims of `claims`
    /// keep theirs, and claims not in `claims` (gone from the cluster or
    /// from the job) lose theirs. The ledger is saved before any object it
    /// no longer names is deleted, so a crash leaves at worst objects the
    /// next [`Self::sweep`] deletes.
    pub async fn settle(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        claims: &[String],
        left: BTreeMap<String, String>,
    ) {
        let mut kept: BTreeMap<String, String> = claims
            .iter()
            .filter_map(|claim| Some((claim.clone(), self.objects.get(claim)?.clone())))
            .collect();
        kept.extend(left.into_iter().filter(|(claim, object)| {
            cache::is_cache_of(&self.job, object) && claims.contains(claim)
        }));
        let saved = FileCache::open(&self.state_dir)
            .and_then(|mut state| state.replace_mover_caches(&self.repository, &self.job, &kept));
        if let Err(e) = saved {
            // The old record stands; what the movers left is swept next time.
            tracing::warn!(job = %self.job, "the next movers read every file: {e}");
            return;
        }
        let dropped: Vec<String> = self
            .objects
            .values()
            .filter(|object| !kept.values().any(|k| k == *object))
            .cloned()
            .collect();
        self.objects = kept;
        for object in dropped {
            delete(store, &object).await;
        }
    }
}

async fn delete(store: &Arc<dyn ObjectStore>, object: &str) {
    if let Err(e) = store.delete(object).await {
        tracing::warn!("deleting the mover cache {object}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;
    use bytes::Bytes;

    async fn put(store: &Arc<dyn ObjectStore>, job: &str, byte: u8) -> anyhow::Result<String> {
        let object = format!("{}{}", cache::job_prefix(job), hex::encode([byte; 32]));
        store.put_new(&object, Bytes::from_static(b"x")).await?;
        Ok(object)
    }

    #[tokio::test]
    async fn what_movers_leave_is_kept_and_what_no_claim_has_is_deleted() -> anyhow::Result<()> {
        let state = tempfile::tempdir()?;
        let repo = tempfile::tempdir()?;
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(repo.path().to_owned()));
        let claims = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut ledger = CacheLedger::open(Some(state.path()), "repo", "volumes")
            .ok_or(anyhow::anyhow!("no ledger"))?;
        let (a1, b1) = (
            put(&store, "volumes", 1).await?,
            put(&store, "volumes", 2).await?,
        );
        let other_job = put(&store, "other", 3).await?;
        ledger
            .settle(
                &store,
                &claims(&["apps/a", "apps/b"]),
                [("apps/a".into(), a1.clone()), ("apps/b".into(), b1.clone())].into(),
            )
            .await;

        // Reopened: a's mover leaves a new cache, b's fails, c is gone
        // from the cluster; a stray object of a killed run is swept.
        let mut ledger = CacheLedger::open(Some(state.path()), "repo", "volumes")
            .ok_or(anyhow::anyhow!("no ledger"))?;
        assert_eq!(ledger.object("apps/a"), Some(a1.as_str()));
        let stray = put(&store, "volumes", 4).await?;
        ledger.sweep(&store).await;
        assert!(
            store.size(&stray).await.is_err(),
            "the stray cache is swept"
        );
        let a2 = put(&store, "volumes", 5).await?;
        ledger
            .settle(
                &store,
                &claims(&["apps/a", "apps/b"]),
                [("apps/a".into(), a2.clone())].into(),
            )
            .await;
        assert_eq!(ledger.object("apps/a"), Some(a2.as_str()));
        assert_eq!(ledger.object("apps/b"), Some(b1.as_str()));
        assert!(store.size(&a1).await.is_err(), "a's old cache is deleted");
        assert!(store.size(&b1).await.is_ok());
        ledger
            .settle(&store, &claims(&["apps/a"]), BTreeMap::new())
            .await;
        assert!(store.size(&b1).await.is_err(), "b's cache goes with b");
        assert!(
            store.size(&other_job).await.is_ok(),
            "another job's caches stay"
        );
        // A part's claim to an object outside the job's caches is ignored.
        ledger
            .settle(
                &store,
                &claims(&["apps/a"]),
                [("apps/a".into(), "snapshots/00".into())].into(),
            )
            .await;
        assert_eq!(ledger.object("apps/a"), Some(a2.as_str()));
        // Keys differ per claim and stay the same across openings.
        let again = CacheLedger::open(Some(state.path()), "repo", "volumes")
            .ok_or(anyhow::anyhow!("no ledger"))?;
        assert_eq!(
            *ledger.key("apps/a").to_hex(),
            *again.key("apps/a").to_hex()
        );
        assert_ne!(
            *ledger.key("apps/a").to_hex(),
            *again.key("apps/b").to_hex()
        );
        Ok(())
    }
}
