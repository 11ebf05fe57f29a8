//! The reader's contract: what was written reads back exactly, and anything
//! else fails naming the blob or the pack.

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::*;
use crate::repo::DecodeError;
use crate::repo::blob::BlobKind;
use crate::repo::keys::RestoreIdentity;
use crate::repo::test_fixture::{
    TestRepo, pattern, random, store_blobs, write_snapshot, written_packs,
};
use crate::repo::tree::NodeKind;
use crate::storage::StorageError;

/// A few files in nested directories, one spanning several age segments.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("notes.txt", b"the good snapshot".to_vec()),
        ("etc/app.conf", pattern(1, 70_000)),
        ("etc/deep/big.bin", random(200_000)),
    ]
}

#[tokio::test]
async fn a_snapshot_reads_back_exactly_as_written() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let files = files();
    let written = write_snapshot(&repo.as_service().await?, "home", &files).await?;

    let restore = repo.as_restore().await?;
    assert_eq!(restore.read_snapshot(written.id).await?, written.snapshot);
    let reader = restore.reader();
    let root = reader.read_tree(&written.snapshot.root).await?;
    let names: Vec<_> = root.entries.iter().map(|n| n.name.display()).collect();
    assert_eq!(names, ["etc", "notes.txt"], "entries sorted by name");

    let mut found = BTreeMap::new();
    let mut trees = vec![(written.snapshot.root, String::new())];
    while let Some((id, path)) = trees.pop() {
        for node in reader.read_tree(&id).await?.entries {
            let name = format!("{path}{}", node.name.display());
            match node.kind {
                NodeKind::Dir => trees.extend(node.subtree.map(|sub| (sub, format!("{name}/")))),
                NodeKind::File => {
                    let mut data = Vec::new();
                    for blob in &node.content {
                        data.extend(reader.read(blob).await?);
                    }
                    assert_eq!(node.size, data.len() as u64, "{name}");
                    found.insert(name, data);
                }
                other => anyhow::bail!("{name} is a {other:?}, which was never written"),
            }
        }
    }
    let expected: BTreeMap<String, Vec<u8>> =
        files.into_iter().map(|(p, d)| (p.to_owned(), d)).collect();
    assert_eq!(found, expected);
    Ok(())
}

#[tokio::test]
async fn read_many_returns_each_blob_of_the_pack_and_names_the_others_missing() -> anyhow::Result<()>
{
    let repo = TestRepo::new().await?;
    let service = repo.as_service().await?;
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| pattern(i, 90_000)).collect();
    let (ids, stats) = store_blobs(&service, BlobKind::Data, blobs.clone()).await?;
    let (elsewhere, _) = store_blobs(&service, BlobKind::Data, vec![pattern(9, 100)]).await?;
    let unknown = BlobId::from_bytes([7; 32]);
    let pack = stats.packs[0];

    let reader = repo.as_restore().await?.reader();
    let asked = [ids[2], elsewhere[0], ids[0], unknown];
    let mut read: BTreeMap<BlobId, Result<Vec<u8>, RepoError>> =
        reader.read_many(&pack, &asked).await?.into_iter().collect();
    assert_eq!(read.len(), asked.len(), "one result per blob asked");
    for i in [0, 2] {
        let plain = read.remove(&ids[i]).transpose()?;
        assert_eq!(plain.as_ref(), Some(&blobs[i]), "blob {i}");
    }
    for id in [elsewhere[0], unknown] {
        let missing = read.remove(&id);
        assert!(
            matches!(missing, Some(Err(RepoError::MissingBlob { id: named })) if named == id),
            "{missing:?}"
        );
    }

    let absent = PackId::from_bytes([8; 32]);
    let none = reader.read_many(&absent, &ids).await?;
    assert!(
        none.iter()
            .all(|(_, r)| matches!(r, Err(RepoError::MissingBlob { .. }))),
        "a pack in no index has no blobs to read"
    );
    Ok(())
}

#[tokio::test]
async fn a_flipped_byte_in_a_pack_fails_the_read_naming_the_pack() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let files = files();
    let written = write_snapshot(&repo.as_service().await?, "home", &files).await?;
    let restore = repo.as_restore().await?;
    let big = written.files["etc/deep/big.bin"];
    let located = |id: &BlobId| {
        let location = restore.index().get(id);
        let info = location.and_then(|l| restore.index().pack(&l.pack).copied());
        location
            .zip(info)
            .ok_or_else(|| anyhow::anyhow!("blob {id} is in no index"))
    };
    let (data, data_info) = located(&big)?;
    let (tree, _) = located(&written.snapshot.root)?;

    // One byte in the middle of the big blob's ciphertext.
    let middle = (data.blob.offset + u64::from(data.blob.length) / 2) / SEGMENT_PLAIN;
    let at = (data_info.payload_offset + middle * SEGMENT_CIPHER + 1_000) as usize;
    repo.damage(&data.pack.key(), |bytes| bytes[at] ^= 0x20)?;
    let refused = restore.reader().read(&big).await;
    match &refused {
        Err(e) => assert!(e.to_string().contains(&data.pack.key()), "{e}"),
        Ok(_) => anyhow::bail!("a damaged blob was read"),
    }

    // A tree pack is read whole: any flipped byte fails it.
    repo.damage(&tree.pack.key(), |bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    })?;
    let refused = restore.reader().read_tree(&written.snapshot.root).await;
    match &refused {
        Err(e) => assert!(e.to_string().contains(&tree.pack.key()), "{e}"),
        Ok(_) => anyhow::bail!("a damaged tree was read"),
    }
    Ok(())
}

#[tokio::test]
async fn bytes_that_do_not_hash_to_the_blob_id_are_refused_naming_the_blob() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let service = repo.as_service().await?;
    let (ids, stats) = store_blobs(&service, BlobKind::Data, vec![pattern(1, 5_000)]).await?;
    // An index object, as anyone holding the service key could write one,
    // that names another id for the stored bytes.
    let forged = BlobId::from_bytes([3; 32]);
    let mut pack = written_packs(&repo, &stats).await?.remove(0);
    let mut entry = pack.blobs[0];
    assert_eq!(entry.id, ids[0]);
    entry.id = forged;
    pack.blobs.push(entry);
    let recipients = service.repository().recipients();
    crate::repo::writer::write_index(repo.store().as_ref(), recipients, &[pack]).await?;

    let reader = repo.as_restore().await?.reader();
    let refused = reader.read(&forged).await.err();
    assert!(
        matches!(&refused, Some(RepoError::Damaged { key, reason })
            if *key == stats.packs[0].key() && reason.contains(&forged.to_hex())),
        "{refused:?}"
    );
    assert_eq!(reader.read(&ids[0]).await?, pattern(1, 5_000));
    Ok(())
}

#[tokio::test]
async fn the_service_key_opens_no_pack() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let written = write_snapshot(
        &repo.as_service().await?,
        "home",
        &[("secret.txt", b"top secret")],
    )
    .await?;
    let service = repo.as_service().await?;
    assert!(!service.can_read_data());
    assert!(service.data_reader().is_none());

    // Passed off as the restore key, the service key unlocks the repository
    // (keys, index and snapshots are sealed to it) but decrypts no pack.
    let impostor = RestoreIdentity::from_file(repo.service_key(), None)?;
    let unlocked = repo.open().await?.unlock(impostor).await?;
    let snapshot = unlocked.read_snapshot(written.id).await?;
    assert_eq!(snapshot.root, written.snapshot.root);
    let reader = unlocked.reader();
    for (id, read) in [
        (
            written.files["secret.txt"],
            reader.read(&written.files["secret.txt"]).await,
        ),
        (snapshot.root, reader.read(&snapshot.root).await),
    ] {
        let pack = unlocked.index().get(&id).map(|l| l.pack.key());
        assert!(
            matches!(&read, Err(RepoError::Crypt { key, .. }) if Some(key) == pack.as_ref()),
            "{read:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_pack_or_an_unknown_blob_is_named() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let (ids, stats) = store_blobs(
        &repo.as_service().await?,
        BlobKind::Data,
        vec![pattern(1, 1_000)],
    )
    .await?;
    let reader = repo.as_restore().await?.reader();
    let unknown = BlobId::from_bytes([5; 32]);
    assert!(matches!(
        reader.read(&unknown).await,
        Err(RepoError::MissingBlob { id }) if id == unknown
    ));

    let key = stats.packs[0].key();
    repo.store().delete(&key).await?;
    let gone = reader.read(&ids[0]).await;
    assert!(
        matches!(&gone, Err(RepoError::Storage(StorageError::NotFound { key: named, .. })) if *named == key),
        "{gone:?}"
    );
    Ok(())
}

#[tokio::test]
async fn read_tree_refuses_a_data_blob_and_stops_at_the_entry_limit() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let files = files();
    let written = write_snapshot(&repo.as_service().await?, "home", &files).await?;
    let reader = repo.as_restore().await?.reader();
    let data = written.files["notes.txt"];
    let refused = reader.read_tree(&data).await;
    assert!(
        matches!(&refused, Err(RepoError::Undecodable { key, source: DecodeError::Json(_) })
            if *key == format!("tree {data}")),
        "{refused:?}"
    );

    // The root and `etc` name two entries each: three are allowed in all.
    let etc = written.trees["etc"];
    let limited = reader.with_tree_entry_limit(3);
    assert_eq!(
        limited
            .read_tree(&written.snapshot.root)
            .await?
            .entries
            .len(),
        2
    );
    let stopped = limited.read_tree(&etc).await;
    assert!(
        matches!(&stopped, Err(RepoError::TreeLimit { tree, .. }) if *tree == etc),
        "{stopped:?}"
    );
    assert_eq!(
        limited.for_walk().read_tree(&etc).await?.entries.len(),
        2,
        "each walk counts afresh"
    );
    Ok(())
}

/// A store whose bodies read as they arrive stop halfway with a reset
/// connection, as a lossy network cuts them; whole reads (with the store's
/// retries) come through and are noted.
#[derive(Debug)]
struct CutBodies {
    inner: Arc<dyn ObjectStore>,
    whole_reads: Mutex<Vec<String>>,
}

impl CutBodies {
    fn whole_reads(&self) -> Vec<String> {
        self.whole_reads
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl ObjectStore for CutBodies {
    fn url(&self) -> String {
        self.inner.url()
    }
    fn has_conditional_create(&self) -> bool {
        self.inner.has_conditional_create()
    }
    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.inner.put_new(key, data).await
    }
    fn stage(&self) -> Result<crate::storage::Staged, StorageError> {
        self.inner.stage()
    }
    async fn put_staged(
        &self,
        key: &str,
        staged: crate::storage::Staged,
    ) -> Result<(), StorageError> {
        self.inner.put_staged(key, staged).await
    }
    async fn size(&self, key: &str) -> Result<u64, StorageError> {
        self.inner.size(key).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        if let Ok(mut reads) = self.whole_reads.lock() {
            reads.push(key.to_owned());
        }
        self.inner.get(key).await
    }
    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let bytes = self.inner.get(key).await?;
        let half = bytes.slice(..bytes.len() / 2);
        let reset = std::io::Cursor::new(half).chain(ResetReader);
        Ok(Box::new(reset))
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StorageError> {
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<crate::storage::ObjectInfo>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn sweep_leftovers(
        &self,
        older_than: std::time::Duration,
    ) -> Result<crate::storage::Swept, StorageError> {
        self.inner.sweep_leftovers(older_than).await
    }
}

/// A reader whose connection was reset.
struct ResetReader;

impl Read for ResetReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::ConnectionReset.into())
    }
}

#[tokio::test]
async fn metadata_and_tree_packs_cut_off_midway_are_read_again_whole() -> anyhow::Result<()> {
    let repo = TestRepo::new().await?;
    let written = write_snapshot(&repo.as_service().await?, "home", &files()).await?;
    let cut = Arc::new(CutBodies {
        inner: repo.store().clone(),
        whole_reads: Mutex::default(),
    });
    let key = RestoreIdentity::from_file(repo.restore_key(), None)?;
    let restore = crate::repo::Repository::open(cut.clone())
        .await?
        .unlock(key)
        .await?;
    let index_objects = repo.keys("index/").await?;
    assert!(!index_objects.is_empty());
    for object in &index_objects {
        assert!(
            cut.whole_reads().contains(object),
            "{object} was not read again"
        );
    }
    assert_eq!(
        restore.index().blob_count() as u64,
        written.stats.blobs_added
    );
    let before = cut.whole_reads().len();

    assert_eq!(restore.read_snapshot(written.id).await?, written.snapshot);
    let reader = restore.reader();
    let root = reader.read_tree(&written.snapshot.root).await?;
    let names: Vec<_> = root.entries.iter().map(|n| n.name.display()).collect();
    assert_eq!(names, ["etc", "notes.txt"]);
    let etc = written
        .trees
        .get("etc")
        .context("the snapshot has no etc")?;
    let etc = reader.read_tree(etc).await?;
    assert_eq!(
        etc.entries.len(),
        2,
        "the tree pack is read again from disk"
    );
    let again = cut.whole_reads().split_off(before);
    assert_eq!(
        again.len(),
        2,
        "the snapshot and the tree pack, each read again whole once: {again:?}"
    );
    assert_eq!(again[0], written.id.key());
    Ok(())
}
