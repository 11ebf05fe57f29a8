//! Reading the index at unlock: the prune plans first, then every index
//! object, a few at a time; unreadable objects are set aside and reported.

use std::sync::Arc;

use super::id::IndexId;
use super::index::{Index, IndexFile};
use super::keys::KeyRole;
use super::read_budget::{READ_BUDGET_BYTES, ReadBudget};
use super::{RepoError, meta, object_id, plan};
use crate::errors::WorkerError;
use crate::storage::{ObjectStore, StorageError};

/// Times the index is read again when an index object vanished while it
/// was being read (a prune replaced it).
const INDEX_RELOADS: usize = 5;

/// Index objects whose answers are open at once at most (each an answer's
/// delay on S3, paid while others are read): fewer when they are large
/// ([`ReadBudget`], for a body cut off midway, which is read again whole).
/// A body is read only once a decoder is free, as it arrives.
const INDEX_FETCHES: usize = 8;

/// Index objects decoded at once: each holds its parsed listing until it
/// joins the index, tens of megabytes for an index object of a big backup.
const INDEX_DECODES: usize = 2;

/// Reads the prune plans, then every index object, and marks the packs the
/// plans name as not to be reused. Plans come first: a plan is deleted only
/// after its packs and the index objects listing them, so an index read
/// after the plans never offers a pack a plan has deleted. An index object
/// that disappears while the index is read was replaced by a prune: the
/// whole index is listed and read again.
pub(super) async fn load_index_and_plans(
    store: &Arc<dyn ObjectStore>,
    identity: &impl KeyRole,
) -> Result<(Index, IndexProblems), RepoError> {
    let mut attempt = 1;
    loop {
        let plans = plan::read_plans(store, identity).await?;
        match load_index(store, identity).await {
            Ok((mut index, problems)) => {
                for (_, plan) in plans {
                    index.doom(plan.packs);
                }
                return Ok((index, problems));
            }
            Err(RepoError::Storage(StorageError::NotFound { key, .. }))
                if attempt < INDEX_RELOADS =>
            {
                tracing::debug!(object = %key, attempt, "an index object vanished; reading the index again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Objects (index, snapshot, prune plan) that could not be read, with the reason.
pub(super) type IndexProblems = Vec<(String, String)>;

/// Reads every index object, a few at a time. An unreadable index object is
/// set aside: its packs' blobs count as missing (and are stored again by the
/// next backup) rather than making the repository unusable.
async fn load_index(
    store: &Arc<dyn ObjectStore>,
    identity: &impl KeyRole,
) -> Result<(Index, IndexProblems), RepoError> {
    let listed = store.list("index/").await?;
    let mut index = Index::default();
    let mut problems = Vec::new();
    let mut pending = tokio::task::JoinSet::new();
    let mut objects = listed.into_iter();
    let decodes = Arc::new(tokio::sync::Semaphore::new(INDEX_DECODES));
    let budget = ReadBudget::new(READ_BUDGET_BYTES);
    loop {
        while pending.len() < INDEX_FETCHES {
            let Some(object) = objects.next() else { break };
            let (store, identity) = (store.clone(), identity.clone());
            let (decodes, budget) = (decodes.clone(), budget.clone());
            pending.spawn(async move {
                let key = object.key.clone();
                let read = async move {
                    let id = object_id::<IndexId>(&object.key, "index/")?;
                    let _held = budget.hold(object.size).await;
                    let body = meta::NamedBody::open(&store, &object.key, *id.as_bytes()).await?;
                    // Never closed: no permit would only mean no limit.
                    let _decoding = decodes.acquire_owned().await.ok();
                    let file: IndexFile = body.read(&store, &identity).await?;
                    Ok::<_, RepoError>((id, file))
                };
                (key, read.await)
            });
        }
        let Some(done) = pending.join_next().await else {
            break;
        };
        match done.map_err(WorkerError::stopped("reading the index"))? {
            (_, Ok((id, file))) => index.add_file(id, file),
            (_, Err(RepoError::Storage(e))) => return Err(e.into()),
            (key, Err(e)) => problems.push((key, e.to_string())),
        }
    }
    Ok((index, problems))
}
