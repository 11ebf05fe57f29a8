//! Restores in batches far smaller than a real restore's.

use super::*;
use crate::repo::test_fixture::{TestRepo, pattern, write_snapshot};

#[tokio::test]
async fn a_tree_restored_in_many_small_batches_comes_back_whole() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let files: Vec<(String, Vec<u8>)> = (0..120u8)
        .map(|n| {
            let path = format!("d{}/s{}/f{n}", n % 5, n % 3);
            (path, pattern(u32::from(n), 100 + usize::from(n) * 7))
        })
        .collect();
    let listed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(path, data)| (path.as_str(), data.as_slice()))
        .collect();
    let written = write_snapshot(&repo.as_service().await?, "home", &listed).await?;
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
