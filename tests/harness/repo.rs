//! Opening an installation's repository in the test process, to write
//! snapshots of kinds whose sources are not built into lifeboatd yet
//! (volumes per the manifest contract, kubernetes) with the library's own
//! [`SnapshotBuilder`](lifeboat::backup::SnapshotBuilder).

use std::path::Path;

use anyhow::Result;
use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::keys::AnyIdentity;
use lifeboat::storage::{self, S3Options};

/// Opens the repository at `url` and unlocks it with the identity file `key`.
///
/// Fails when the repository or the key cannot be read.
pub async fn unlock(url: &str, key: &Path) -> Result<UnlockedRepository<AnyIdentity>> {
    let store = storage::open(url, &S3Options::default()).await?;
    let repo = lifeboat::repo::Repository::open(store).await?;
    let file = AnyIdentity::from_file(key, None)?;
    let identity = repo.identify(file)?;
    Ok(repo.unlock(identity).await?)
}
