//! `lifeboat restore` of a kubernetes snapshot: applying the objects is
//! not written yet; the files can be restored with `SNAPSHOT:/`.

use super::Restoring;

/// Refuses, pointing at what works today.
pub async fn run(restoring: &Restoring<'_>) -> anyhow::Result<()> {
    anyhow::bail!(
        "applying kubernetes objects is not implemented in this lifeboat version; restore the \
         object files with `lifeboat restore {}:/ --target DIR` and apply them with kubectl",
        restoring.entry.id.short()
    )
}
