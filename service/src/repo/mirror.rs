//! Mirroring a repository object for object into a second store.
//!
//! A mirror needs no key: every object is copied as it is stored, so the
//! mirror is the same repository (same `config`, `keys`, ids) and any
//! program reads it as it reads the primary. Each content-named object is
//! checked against its name before it is copied, so damage on the primary
//! is reported, not spread. Objects are copied in the order a backup
//! writes them — packs, then indexes and prune plans, then snapshots — so a
//! mirror cut off mid-sync never shows a snapshot whose data it lacks.
//!
//! What is gone from the primary (a prune's or a forget's work) is deleted
//! from the mirror only once it has been gone for a grace period, counted
//! from the first sync that saw it gone: a primary that loses objects by
//! accident or to an attacker holding the service key does not take the
//! mirror's copies with it at once. `config` and `keys` are never deleted
//! from a mirror, and a mirror whose `config` or `keys` differ from the
//! primary's is refused: it holds another repository.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::config::{CONFIG_KEY, KEYS_KEY};
use super::id::content_hash;
use super::put::{put_content_named, put_fixed};
use crate::storage::{ObjectInfo, ObjectStore, StorageError};

/// The prefixes of the objects a mirror copies, in the order copied.
const COPIED: [&str; 4] = ["data/", "index/", "prune/", "snapshots/"];

/// Objects copied at once.
const COPIES_IN_FLIGHT: usize = 4;

/// The largest object copied: larger than any lifeboat writes (packs are
/// at most 128 MiB, metadata at most 1 GiB of JSON before compression), so
/// a larger one is planted, and is not read into memory.
const MAX_COPIED: u64 = 1 << 30;

/// Failures listed in a report; the rest are counted.
const FAILURES_LISTED: usize = 10;

/// Why a mirror could not be synced at all (one object's failure is in
/// the report instead).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A store could not be listed or read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The primary has no repository.
    #[error("{url} holds no repository (`config` is missing), so there is nothing to mirror")]
    NoRepository {
        /// The primary.
        url: String,
    },
    /// The mirror holds another repository.
    #[error(
        "the mirror {mirror} holds another repository: its `{object}` differs from the primary's. \
         Nothing was copied or deleted; point the mirror at an empty location, or empty this one"
    )]
    Foreign {
        /// The mirror.
        mirror: String,
        /// `config` or `keys`.
        object: &'static str,
    },
}

/// When each mirror object was first seen gone from the primary; kept by
/// the caller between syncs.
pub type GoneSince = BTreeMap<String, DateTime<Utc>>;

/// What a sync did and what it left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Objects copied.
    pub copied: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// Objects deleted from the mirror (gone from the primary for longer
    /// than the grace period).
    pub deleted: u64,
    /// Objects on the mirror gone from the primary, kept until their grace
    /// period ends.
    pub awaiting_deletion: u64,
    /// Objects of the primary the mirror still lacks (failed copies).
    pub pending: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// How objects failed, the first few.
    pub failures: Vec<String>,
}

impl SyncReport {
    /// Whether the mirror holds everything the primary held when listed.
    pub fn complete(&self) -> bool {
        self.pending == 0
    }

    fn fail(&mut self, object: &ObjectInfo, reason: String) {
        self.pending += 1;
        self.pending_bytes += object.size;
        if self.failures.len() < FAILURES_LISTED {
            self.failures.push(format!("{}: {reason}", object.key));
        }
    }
}

/// Copies to `mirror` every object of `primary` it lacks and deletes what
/// has been gone from `primary` for longer than `grace` (recorded in
/// `gone`, which this updates), as of `now`.
///
/// Fails when a store cannot be listed, the primary holds no repository,
/// or the mirror holds another one; one object that cannot be copied or
/// deleted is a failure in the report, tried again next time.
pub async fn sync(
    primary: &Arc<dyn ObjectStore>,
    mirror: &Arc<dyn ObjectStore>,
    gone: &mut GoneSince,
    grace: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<SyncReport, MirrorError> {
    let source = listing(primary).await?;
    let target = listing(mirror).await?;
    let mut report = SyncReport::default();
    for key in [CONFIG_KEY, KEYS_KEY] {
        let Some(object) = source.get(key) else {
            return Err(MirrorError::NoRepository { url: primary.url() });
        };
        let ours = primary.get(key).await?;
        if target.contains_key(key) {
            if mirror.get(key).await? != ours {
                return Err(MirrorError::Foreign {
                    mirror: mirror.url(),
                    object: key,
                });
            }
        } else {
            // Only our own bytes count as a create whose answer was lost.
            match put_fixed(mirror.as_ref(), key, ours).await {
                Ok(()) => {
                    report.copied += 1;
                    report.copied_bytes += object.size;
                }
                Err(e) => report.fail(object, e.to_string()),
            }
        }
    }
    if !report.complete() {
        // Without its identity the mirror is no repository yet: copy the
        // rest next time.
        return Ok(report);
    }
    for prefix in COPIED {
        // Each object the mirror lacks, and whether a copy of another size
        // (a damaged one) is there to replace.
        let wanted: Vec<(ObjectInfo, bool)> = source
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, object)| object)
            .filter(|object| {
                target
                    .get(&object.key)
                    .is_none_or(|t| t.size != object.size)
            })
            .map(|object| (object.clone(), target.contains_key(&object.key)))
            .collect();
        let outcomes: Vec<(ObjectInfo, Result<(), String>)> = futures_util::stream::iter(wanted)
            .map(|(object, replace)| {
                let (primary, mirror) = (primary.clone(), mirror.clone());
                async move {
                    let copied = copy(&primary, &mirror, &object, replace).await;
                    (object, copied)
                }
            })
            .buffer_unordered(COPIES_IN_FLIGHT)
            .collect()
            .await;
        for (object, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    report.copied += 1;
                    report.copied_bytes += object.size;
                }
                Err(reason) => report.fail(&object, reason),
            }
        }
    }
    let grace_ends = |since: &DateTime<Utc>| *since + grace <= now;
    let stale: BTreeSet<&String> = target
        .keys()
        .filter(|key| copied(key) && !source.contains_key(*key))
        .collect();
    gone.retain(|key, _| stale.contains(key));
    for key in stale {
        let since = *gone.entry(key.clone()).or_insert(now);
        if !grace_ends(&since) {
            report.awaiting_deletion += 1;
            continue;
        }
        match mirror.delete(key).await {
            Ok(()) => {
                gone.remove(key);
                report.deleted += 1;
            }
            Err(e) => {
                report.awaiting_deletion += 1;
                if report.failures.len() < FAILURES_LISTED {
                    report.failures.push(format!("{key}: deleting it: {e}"));
                }
            }
        }
    }
    Ok(report)
}

/// Whether a mirror copies (and deletes) the object `key` as the
/// primary's contents change: packs, indexes, plans and snapshots.
fn copied(key: &str) -> bool {
    COPIED.iter().any(|prefix| key.starts_with(prefix))
}

/// Every object of `store`, by key.
async fn listing(
    store: &Arc<dyn ObjectStore>,
) -> Result<BTreeMap<String, ObjectInfo>, StorageError> {
    Ok(store
        .list("")
        .await?
        .into_iter()
        .map(|object| (object.key.clone(), object))
        .collect())
}

/// Copies one content-named object once it is checked against its name;
/// with `replace`, the mirror's copy of another size (a damaged earlier
/// copy) is deleted first.
async fn copy(
    primary: &Arc<dyn ObjectStore>,
    mirror: &Arc<dyn ObjectStore>,
    object: &ObjectInfo,
    replace: bool,
) -> Result<(), String> {
    if object.size > MAX_COPIED {
        return Err(format!(
            "on the primary it has {} bytes, more than any object lifeboat writes, so it was \
             not copied; run `lifeboat check` on the primary",
            object.size
        ));
    }
    let bytes = primary.get(&object.key).await.map_err(|e| e.to_string())?;
    let named = object.key.rsplit('/').next().unwrap_or_default();
    if hex::encode(content_hash(&bytes)) != named {
        return Err(
            "on the primary it does not hash to its name, so it was not copied; \
             run `lifeboat check` on the primary"
                .into(),
        );
    }
    if replace {
        tracing::warn!(
            "the mirror's copy of {} has the wrong size; copying it again",
            object.key
        );
        mirror
            .delete(&object.key)
            .await
            .map_err(|e| e.to_string())?;
    }
    put_content_named(mirror.as_ref(), &object.key, bytes)
        .await
        .map_err(|e| e.to_string())
}

/// How a mirror and its primary differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Objects of the primary the mirror lacks.
    pub missing: Vec<String>,
    /// Objects of the mirror the primary no longer has.
    pub extra: Vec<String>,
    /// Objects both hold with different sizes, or (`config`, `keys`)
    /// different bytes.
    pub differing: Vec<String>,
}

impl Comparison {
    /// Whether they hold the same objects.
    pub fn agree(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }
}

/// Compares the objects of `mirror` with those of `primary` by key and
/// size (and `config`, `keys` byte for byte).
///
/// Fails when either store cannot be listed or read.
pub async fn compare(
    primary: &Arc<dyn ObjectStore>,
    mirror: &Arc<dyn ObjectStore>,
) -> Result<Comparison, StorageError> {
    let source = listing(primary).await?;
    let target = listing(mirror).await?;
    let counted = |key: &str| key == CONFIG_KEY || key == KEYS_KEY || copied(key);
    let sizes = |list: &BTreeMap<String, ObjectInfo>| -> HashMap<String, u64> {
        list.values()
            .filter(|o| counted(&o.key))
            .map(|o| (o.key.clone(), o.size))
            .collect()
    };
    let (a, b) = (sizes(&source), sizes(&target));
    let mut comparison = Comparison::default();
    for (key, size) in &a {
        match b.get(key) {
            None => comparison.missing.push(key.clone()),
            Some(other) if other != size => comparison.differing.push(key.clone()),
            Some(_) => {}
        }
    }
    comparison.extra = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    for key in [CONFIG_KEY, KEYS_KEY] {
        if a.contains_key(key)
            && b.contains_key(key)
            && !comparison.differing.iter().any(|k| k == key)
            && primary.get(key).await? != mirror.get(key).await?
        {
            comparison.differing.push(key.to_owned());
        }
    }
    for list in [
        &mut comparison.missing,
        &mut comparison.extra,
        &mut comparison.differing,
    ] {
        list.sort();
    }
    Ok(comparison)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;
    use bytes::Bytes;

    fn store(dir: &tempfile::TempDir) -> Arc<dyn ObjectStore> {
        Arc::new(LocalStore::new(dir.path().to_owned()))
    }

    async fn put_named(
        store: &Arc<dyn ObjectStore>,
        prefix: &str,
        body: &[u8],
    ) -> anyhow::Result<String> {
        let id = hex::encode(content_hash(body));
        let key = if prefix == "data/" {
            format!("data/{}/{id}", &id[..2])
        } else {
            format!("{prefix}{id}")
        };
        store.put_new(&key, Bytes::copy_from_slice(body)).await?;
        Ok(key)
    }

    /// A sync with no grace period, now.
    async fn sync_now(
        primary: &Arc<dyn ObjectStore>,
        mirror: &Arc<dyn ObjectStore>,
        gone: &mut GoneSince,
    ) -> Result<SyncReport, MirrorError> {
        sync(primary, mirror, gone, chrono::Duration::zero(), Utc::now()).await
    }

    async fn repository(store: &Arc<dyn ObjectStore>) -> anyhow::Result<()> {
        store
            .put_new(CONFIG_KEY, Bytes::from_static(b"{config}"))
            .await?;
        store.put_new(KEYS_KEY, Bytes::from_static(b"keys")).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_mirror_gets_every_object_and_loses_them_only_after_the_grace() -> anyhow::Result<()>
    {
        let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (primary, mirror) = (store(&a), store(&b));
        repository(&primary).await?;
        let pack = put_named(&primary, "data/", b"pack").await?;
        let snapshot = put_named(&primary, "snapshots/", b"snapshot").await?;
        primary
            .put_new("caches/x/00", Bytes::from_static(b"not copied"))
            .await?;
        let mut gone = GoneSince::new();
        let grace = chrono::Duration::hours(1);
        let t0 = Utc::now();
        let report = sync(&primary, &mirror, &mut gone, grace, t0).await?;
        assert_eq!((report.copied, report.pending), (4, 0), "{report:?}");
        assert!(
            compare(&primary, &mirror)
                .await?
                .missing
                .iter()
                .all(|k| k.starts_with("caches/"))
        );
        assert!(compare(&primary, &mirror).await?.agree());

        // A prune deletes the snapshot and pack: the mirror keeps them for
        // the grace period, then lets them go.
        primary.delete(&snapshot).await?;
        primary.delete(&pack).await?;
        let report = sync(&primary, &mirror, &mut gone, grace, t0).await?;
        assert_eq!((report.deleted, report.awaiting_deletion), (0, 2));
        assert!(mirror.size(&pack).await.is_ok());
        let later = t0 + chrono::Duration::minutes(61);
        let report = sync(&primary, &mirror, &mut gone, grace, later).await?;
        assert_eq!((report.deleted, report.awaiting_deletion), (2, 0));
        assert!(gone.is_empty());
        assert!(compare(&primary, &mirror).await?.agree());
        Ok(())
    }

    #[tokio::test]
    async fn damage_on_the_primary_is_not_copied_and_damage_on_the_mirror_is_repaired()
    -> anyhow::Result<()> {
        let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (primary, mirror) = (store(&a), store(&b));
        repository(&primary).await?;
        let good = put_named(&primary, "index/", b"index object").await?;
        let bad = format!("index/{}", hex::encode(content_hash(b"something else")));
        primary
            .put_new(&bad, Bytes::from_static(b"flipped"))
            .await?;
        let mut gone = GoneSince::new();
        let report = sync_now(&primary, &mirror, &mut gone).await?;
        assert_eq!(report.pending, 1);
        assert!(
            report.failures[0].contains("does not hash to its name"),
            "{report:?}"
        );
        assert!(mirror.size(&bad).await.is_err());
        // An object larger than any lifeboat writes is not read at all (a
        // sparse file: its size costs no disk).
        let huge = format!("data/ab/{}", "ab".repeat(32));
        std::fs::create_dir_all(a.path().join("data/ab"))?;
        std::fs::File::create(a.path().join(&huge))?.set_len(MAX_COPIED + 1)?;
        let report = sync_now(&primary, &mirror, &mut gone).await?;
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.starts_with(&huge) && f.contains("more than any object")),
            "{report:?}"
        );
        assert!(mirror.size(&huge).await.is_err());
        primary.delete(&huge).await?;
        // A copy cut short on the mirror is replaced.
        mirror.delete(&good).await?;
        mirror.put_new(&good, Bytes::from_static(b"index")).await?;
        assert_eq!(
            compare(&primary, &mirror).await?.differing,
            vec![good.clone()]
        );
        sync_now(&primary, &mirror, &mut gone).await?;
        assert_eq!(
            mirror.get(&good).await?,
            Bytes::from_static(b"index object")
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_mirror_of_another_repository_is_refused_untouched() -> anyhow::Result<()> {
        let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (primary, mirror) = (store(&a), store(&b));
        repository(&primary).await?;
        put_named(&primary, "data/", b"pack").await?;
        mirror
            .put_new(CONFIG_KEY, Bytes::from_static(b"{other}"))
            .await?;
        let stranger = put_named(&mirror, "data/", b"theirs").await?;
        let mut gone = GoneSince::new();
        let refused = sync_now(&primary, &mirror, &mut gone).await;
        assert!(
            matches!(
                refused,
                Err(MirrorError::Foreign {
                    object: "config",
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(mirror.size(&stranger).await.is_ok());
        assert_eq!(mirror.list("data/").await?.len(), 1);
        Ok(())
    }
}
