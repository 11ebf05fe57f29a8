//! Check's contract: a clean repository checks clean, and each kind of
//! damage is reported naming the object and what it makes unrestorable.

use super::*;
use crate::repo::crypt::{SEGMENT_CIPHER, SEGMENT_PLAIN};
use crate::repo::id::content_hash;
use crate::repo::test_fixture::{TestRepo, WrittenSnapshot, random, snapshot, write_snapshot};

/// Two files of two whole age segments each (random, so stored raw: they
/// share no segment) and a small one in a directory.
async fn home(repo: &TestRepo) -> anyhow::Result<WrittenSnapshot> {
    let segments = 2 * SEGMENT_PLAIN as usize;
    let files = [
        ("a.bin", random(segments)),
        ("b.bin", random(segments)),
        ("dir/c.txt", b"small".to_vec()),
    ];
    write_snapshot(&repo.as_service().await?, "home", &files).await
}

/// How check names a path of `written` in what a problem affects.
fn user(written: &WrittenSnapshot, path: &str) -> String {
    format!("snapshot {} (home): {path}", written.id.short())
}

/// The pack holding `blob`.
fn pack_of(repo: &UnlockedRepository<impl KeyRole>, blob: &BlobId) -> anyhow::Result<PackId> {
    repo.index()
        .get(blob)
        .map(|l| l.pack)
        .ok_or_else(|| anyhow::anyhow!("blob {blob} is in no index"))
}

#[tokio::test]
async fn a_clean_repository_checks_clean_with_either_key() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    home(&repo).await?;

    let restore = repo.as_restore().await?;
    let report = check(&restore, ReadData::All).await?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        (report.snapshots, report.packs, report.unindexed_packs),
        (1, 2, 0)
    );
    assert_eq!(report.trees, 2, "the root and `dir`");
    assert_eq!((report.packs_read, report.blobs_verified), (2, 5));

    let service = repo.as_service().await?;
    let report = check(&service, ReadData::All).await?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        (report.packs_read, report.blobs_verified, report.trees),
        (2, 0, 0),
        "the service key hashes packs but decrypts nothing"
    );
    for (read_data, packs_read) in [
        (ReadData::None, 0),
        (ReadData::Subset(0.0), 0),
        (ReadData::Subset(100.0), 2),
    ] {
        let report = check(&service, read_data).await?;
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.packs_read, packs_read, "{read_data:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_pack_is_named_with_the_files_it_affects() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let written = home(&repo).await?;
    let restore = repo.as_restore().await?;
    let pack = pack_of(&restore, &written.files["a.bin"])?;
    repo.store().delete(&pack.key()).await?;

    let report = check(&restore, ReadData::None).await?;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.object, pack.key());
    assert!(problem.message.contains("missing"), "{problem:?}");
    let affects = ["/a.bin", "/b.bin", "/dir/c.txt"].map(|path| user(&written, path));
    assert_eq!(problem.affects, affects);
    Ok(())
}

#[tokio::test]
async fn a_truncated_pack_is_named_without_reading_data() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let written = home(&repo).await?;
    let service = repo.as_service().await?;
    let pack = pack_of(&service, &written.trees["dir"])?;
    repo.damage(&pack.key(), |bytes| bytes.truncate(bytes.len() - 10))?;

    let report = check(&service, ReadData::None).await?;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.object, pack.key());
    assert!(
        problem.message.contains("differs from the indexed"),
        "{problem:?}"
    );
    assert_eq!(report.packs_read, 0);
    Ok(())
}

#[tokio::test]
async fn a_flipped_byte_is_found_by_reading_data_and_only_its_file_is_named() -> anyhow::Result<()>
{
    let repo = TestRepo::new().await?;
    let written = home(&repo).await?;
    let restore = repo.as_restore().await?;
    let b = restore
        .index()
        .get(&written.files["b.bin"])
        .ok_or_else(|| anyhow::anyhow!("b.bin is in no index"))?;
    let a = restore
        .index()
        .get(&written.files["a.bin"])
        .ok_or_else(|| anyhow::anyhow!("a.bin is in no index"))?;
    let info = *restore
        .index()
        .pack(&b.pack)
        .ok_or_else(|| anyhow::anyhow!("the pack is in no index"))?;
    let segment = b.blob.offset / SEGMENT_PLAIN + 1;
    assert!(
        a.blob.range().end <= segment * SEGMENT_PLAIN,
        "a.bin lies before the damage"
    );
    assert!(
        b.blob.range().end >= (segment + 1) * SEGMENT_PLAIN,
        "b.bin covers the damaged segment"
    );
    let at = (info.payload_offset + segment * SEGMENT_CIPHER + 100) as usize;
    repo.damage(&b.pack.key(), |bytes| bytes[at] ^= 0x10)?;

    let structure = check(&restore, ReadData::None).await?;
    assert!(
        structure.is_ok(),
        "a structure check reads no pack: {:?}",
        structure.problems
    );

    let service = check(&repo.as_service().await?, ReadData::All).await?;
    assert_eq!(service.problems.len(), 1, "{:?}", service.problems);
    assert_eq!(service.problems[0].object, b.pack.key());
    assert!(
        service.problems[0]
            .message
            .contains("does not match its name"),
        "the service key finds it by the name: {:?}",
        service.problems[0]
    );

    let report = check(&restore, ReadData::All).await?;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.object, b.pack.key());
    assert!(
        problem.message.contains("1 of its 3 blobs are unreadable"),
        "{problem:?}"
    );
    assert_eq!(problem.affects, [user(&written, "/b.bin")]);
    Ok(())
}

#[tokio::test]
async fn a_truncated_index_object_is_named_and_its_blobs_count_as_missing() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let written = home(&repo).await?;
    let index = written.stats.indexes[0].key();
    repo.damage(&index, |bytes| bytes.truncate(bytes.len() / 2))?;

    let report = check(&repo.as_service().await?, ReadData::None).await?;
    let objects: Vec<&str> = report.problems.iter().map(|p| p.object.as_str()).collect();
    assert_eq!(
        objects,
        [index.as_str(), &written.id.key()],
        "{:?}",
        report.problems
    );
    assert!(
        report.problems[1]
            .message
            .contains("5 referenced blobs are in no index"),
        "{:?}",
        report.problems[1]
    );
    assert_eq!(
        (report.packs, report.unindexed_packs),
        (0, 2),
        "its packs are stored but indexed nowhere"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreadable_or_dangling_snapshot_is_named() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let written = home(&repo).await?;
    let service = repo.as_service().await?;
    let garbage = bytes::Bytes::from_static(b"not an age file");
    let garbage_key = format!("snapshots/{}", hex::encode(content_hash(&garbage)));
    repo.store().put_new(&garbage_key, garbage).await?;
    let nowhere = BlobId::from_bytes([9; 32]);
    let root = written.snapshot.root;
    let dangling = service
        .save_snapshot(&snapshot("dangling", root, vec![root, nowhere]))
        .await?;

    let report = check(&service, ReadData::None).await?;
    assert_eq!(report.snapshots, 2, "the readable ones");
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let named = |key: &str| report.problems.iter().find(|p| p.object == key);
    assert!(named(&garbage_key).is_some(), "{:?}", report.problems);
    let problem = named(&dangling.key()).ok_or_else(|| anyhow::anyhow!("{:?}", report.problems))?;
    assert!(
        problem
            .message
            .contains("1 referenced blobs are in no index"),
        "{problem:?}"
    );
    assert_eq!(
        problem.affects,
        [format!("snapshot {} (dangling)", dangling.short())]
    );
    Ok(())
}

#[test]
fn repeated_subtrees_count_every_time_they_are_named() {
    let id = |n: u8| BlobId::from_bytes([n; 32]);
    let mut trees = Subtrees::new();
    trees.insert(id(0), (1, Vec::new()));
    for level in 1..=70u8 {
        trees.insert(id(level), (2, vec![id(level - 1), id(level - 1)]));
    }
    // Level k names 2 entries and twice level k-1: 1, 4, 10, 22, …
    assert_eq!(entries_walked(id(3), &trees), 22);
    assert_eq!(entries_walked(id(70), &trees), u64::MAX);
    // An unreadable subtree counts nothing.
    trees.insert(id(100), (3, vec![id(99)]));
    assert_eq!(entries_walked(id(100), &trees), 3);
}
