//! Restores in batches far smaller than a real restore's.

use super::*;
use crate::repo::test_fixture::{TestRepo, WrittenSnapshot, pattern, write_snapshot};

/// A snapshot of `files` (path and data) in `repo`.
async fn snapshot_of_files(
    repo: &TestRepo,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<WrittenSnapshot> {
    let listed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(path, data)| (path.as_str(), data.as_slice()))
        .collect();
    write_snapshot(&repo.as_service().await?, "home", &listed).await
}

#[tokio::test]
async fn a_tree_restored_in_many_small_batches_comes_back_whole() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let files: Vec<(String, Vec<u8>)> = (0..120u8)
        .map(|n| {
            let path = format!("d{}/s{}/f{n}", n % 5, n % 3);
            (path, pattern(u32::from(n), 100 + usize::from(n) * 7))
        })
        .collect();
    let written = snapshot_of_files(&repo, &files).await?;
    let unlocked = repo.as_restore().await?;
    let target = tempfile::tempdir()?;
    let out = target.path().join("out");
    let limits = BatchLimits { files: 7, slots: 5 };
    let options = RestoreOptions::default();
    let root = written.snapshot.root;
    let reader = unlocked.reader();
    let report =
        restore_in_batches(&reader, root, "", &out, &options, Arc::default(), limits).await?;
    assert_eq!(report.files, 120);
    assert_eq!(report.dirs, 5 + 15);
    for (path, data) in &files {
        assert_eq!(&std::fs::read(out.join(path))?, data, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn a_batch_takes_no_directory_that_would_pass_its_limits() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    // Fifteen folders of eight one-blob files.
    let files: Vec<(String, Vec<u8>)> = (0..120u8)
        .map(|n| (format!("d{}/f{n}", n % 15), pattern(u32::from(n), 100)))
        .collect();
    let written = snapshot_of_files(&repo, &files).await?;
    let reader = repo.as_restore().await?.reader();
    let target = tempfile::tempdir()?;
    let dirs = Dirs::open_target(target.path())?;
    let limits = BatchLimits {
        files: 20,
        slots: 20,
    };
    let mut plan = Plan::new(dirs, Vec::new(), &RestoreOptions::default(), limits);
    let root = reader.read_tree(&written.snapshot.root).await?;
    let mut queue = lay_out_entries(&reader, root, ROOT, b"", &mut plan);
    let mut batches = Vec::new();
    while !queue.is_empty() {
        plan_batch(&reader, &mut queue, &mut plan).await?;
        assert_eq!(plan.files.len(), plan.slots.len());
        batches.push(plan.files.len());
        plan.files.clear();
        plan.slots.clear();
    }
    assert_eq!(batches, [16, 16, 16, 16, 16, 16, 16, 8]);
    Ok(())
}
