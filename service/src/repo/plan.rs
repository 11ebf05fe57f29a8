//! Prune plan objects (`prune/<id>`): the packs a prune found unused and
//! will delete after the grace period, read by every writer so that no
//! backup reuses them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::{IndexId, PackId};
use super::keys::KeyRole;
use super::{RepoError, meta, object_id};
use crate::storage::{ObjectStore, StorageError};

/// Prefix of prune plan objects.
pub const PLAN_PREFIX: &str = "prune/";

/// The plaintext of a prune plan object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrunePlan {
    /// When the packs were found unused.
    pub created: DateTime<Utc>,
    /// The packs to delete once the grace period has passed, if still unused.
    pub packs: Vec<PackId>,
}

impl meta::MetaObject for PrunePlan {}

/// Reads every readable prune plan; an unreadable plan object is skipped
/// with a warning (its packs are then not kept from reuse, and no prune
/// deletes them while it stays unreadable: see [`read_all_plans`]).
///
/// Fails when the store fails.
pub(crate) async fn read_plans(
    store: &Arc<dyn ObjectStore>,
    identity: &impl KeyRole,
) -> Result<Vec<(String, PrunePlan)>, RepoError> {
    let (plans, problems) = read_plans_reporting(store, identity).await?;
    for (key, problem) in &problems {
        tracing::warn!(object = %key, "skipping an unreadable prune plan: {problem}");
    }
    Ok(plans)
}

/// Reads every prune plan, for a run that deletes or marks packs.
///
/// Fails when a plan object is unreadable: acting on partial knowledge
/// could delete data in use.
pub(crate) async fn read_all_plans(
    store: &Arc<dyn ObjectStore>,
    identity: &impl KeyRole,
) -> Result<Vec<(String, PrunePlan)>, RepoError> {
    let (plans, problems) = read_plans_reporting(store, identity).await?;
    match problems.into_iter().next() {
        Some((key, problem)) => Err(RepoError::Damaged {
            key,
            reason: format!("{problem}; prune refuses to run while a prune plan is unreadable"),
        }),
        None => Ok(plans),
    }
}

/// Every readable prune plan, and the plan objects that are not, with why.
async fn read_plans_reporting(
    store: &Arc<dyn ObjectStore>,
    identity: &impl KeyRole,
) -> Result<(Vec<(String, PrunePlan)>, Vec<(String, String)>), RepoError> {
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for object in store.list(PLAN_PREFIX).await? {
        let read = async {
            let id: [u8; 32] = *object_id::<IndexId>(&object.key, PLAN_PREFIX)?.as_bytes();
            match meta::read_named(store, &object.key, id, identity).await {
                Ok(plan) => Ok(Some(plan)),
                // Deleted since the listing: a prune finished it, after its
                // packs and the index objects listing them.
                Err(RepoError::Storage(StorageError::NotFound { .. })) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match read.await {
            Ok(Some(plan)) => plans.push((object.key, plan)),
            Ok(None) => {}
            Err(RepoError::Storage(e)) => return Err(e.into()),
            Err(e) => problems.push((object.key, e.to_string())),
        }
    }
    Ok((plans, problems))
}
