//! Entry points of the fuzz targets in `fuzz/`: every decoder of bytes that
//! come from a repository (or from a snapshot restored out of one), taking
//! hostile input and returning whether it decoded. A decoder must answer
//! any input with an error: never a panic, an unbounded allocation or an
//! endless loop. The functions call the decoders the programs use; they add
//! no checks of their own.
//!
//! Encrypted inputs are opened with [`FUZZ_IDENTITY`], a fixed age key
//! published here for fuzzing only (the seed corpus is encrypted to it).

use std::str::FromStr;

use crate::repo::blob::{self, BlobKind};
use crate::repo::config::{KeysObject, RepoConfig};
use crate::repo::crypt;
use crate::repo::id::IndexId;
use crate::repo::index::{Index, IndexFile};
use crate::repo::meta;
use crate::repo::pack;
use crate::repo::prune::PrunePlan;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Tree;
use crate::sources::etcd::snapshot_file::SnapshotVerifier;

/// The age identity encrypted fuzz inputs are opened with. It protects
/// nothing: it is public, for fuzzing only.
pub const FUZZ_IDENTITY: &str =
    "AGE-SECRET-KEY-1ETHNZE0QDMYNFXJJV5YSQG00UY2AWENQFZNZ7E8URSE4J5YEKMCQ2CGQVG";

/// Parses a `config` object as `Repository::open` does.
pub fn config(bytes: &[u8]) -> bool {
    serde_json::from_slice::<RepoConfig>(bytes)
        .ok()
        .is_some_and(|config| config.validate().is_ok() && config.recipients().is_ok())
}

/// Decodes the plaintext (zstd-compressed JSON) of the `keys` object.
pub fn keys(packed: &[u8]) -> bool {
    meta::parse::<KeysObject>(packed).is_ok_and(|keys| keys.chunk_id_key().is_some())
}

/// Decodes the plaintext of an index object and adds it to an index.
pub fn index(packed: &[u8]) -> bool {
    let Ok(file) = meta::parse::<IndexFile>(packed) else {
        return false;
    };
    Index::default().add_file(IndexId::from_bytes([0; 32]), file);
    true
}

/// Decodes the plaintext of a snapshot object.
pub fn snapshot(packed: &[u8]) -> bool {
    meta::parse::<Snapshot>(packed).is_ok()
}

/// Decodes the plaintext of a prune plan.
pub fn prune_plan(packed: &[u8]) -> bool {
    meta::parse::<PrunePlan>(packed).is_ok()
}

/// Reads a pack plaintext's trailer and blob table, then decodes every blob
/// the table lists (the codec of [`blob`]).
pub fn pack(plain: &[u8]) -> bool {
    let Ok(table) = pack::read_table(plain) else {
        return false;
    };
    for entry in &table {
        let stored = usize::try_from(entry.range().start)
            .ok()
            .zip(usize::try_from(entry.range().end).ok())
            .and_then(|(start, end)| plain.get(start..end));
        if let Some(stored) = stored {
            blob::decode(stored, entry.compressed, entry.raw_length as usize);
        }
    }
    true
}

/// Decodes one stored blob: byte 0 says whether it is compressed (bit 0),
/// bytes 1–4 are its recorded plaintext length (little-endian), the rest
/// its stored bytes. Lengths are checked first, as the pack table and the
/// index check them.
pub fn blob(input: &[u8]) -> bool {
    let Some((header, stored)) = input.split_first_chunk::<5>() else {
        return false;
    };
    let compressed = header[0] & 1 == 1;
    let raw_length = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let entry = pack::PackedBlob {
        id: crate::repo::id::BlobId::from_bytes([0; 32]),
        kind: BlobKind::Data,
        compressed,
        offset: 0,
        length: u32::try_from(stored.len()).unwrap_or(u32::MAX),
        raw_length,
    };
    if entry.check(stored.len() as u64).is_err() {
        return false;
    }
    blob::decode(stored, compressed, raw_length as usize).is_some()
}

/// Decrypts an age object with [`FUZZ_IDENTITY`], whole and by seeking,
/// then reads its plaintext as a pack (the data object codec).
pub fn sealed_pack(cipher: &[u8]) -> bool {
    let Ok(identity) = age::x25519::Identity::from_str(FUZZ_IDENTITY) else {
        return false;
    };
    let identities = || std::iter::once(&identity as &dyn age::Identity);
    if let Ok(mut reader) = crypt::open_slice(identities(), cipher) {
        use std::io::{Read, Seek, SeekFrom};
        let mut middle = [0; 64];
        let _ = reader
            .seek(SeekFrom::Start(crypt::SEGMENT_PLAIN))
            .and_then(|_| reader.read(&mut middle));
    }
    let Ok(plain) = crypt::decrypt(identities(), cipher) else {
        return false;
    };
    pack(&plain)
}

/// Parses and validates a tree blob's plaintext, every content blob taken
/// for a data blob of one byte.
pub fn tree(plain: &[u8]) -> bool {
    Tree::from_bytes(plain).is_ok_and(|tree| tree.validate(|_| Some((BlobKind::Data, 1))).is_ok())
}

/// Checks the SHA-256 trailer of an etcd snapshot, fed in pieces whose
/// sizes come from the input's first byte.
pub fn etcd_trailer(input: &[u8]) -> bool {
    let Some((&piece, data)) = input.split_first() else {
        return false;
    };
    let mut verifier = SnapshotVerifier::new();
    for part in data.chunks(usize::from(piece).max(1)) {
        verifier.update(part);
    }
    verifier.finish().is_ok()
}

/// Reads a stored Kubernetes document (as a restore or drill reads
/// `<namespace>/<name>.yaml`), then writes it in canonical form.
pub fn kubernetes_document(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let Ok((_, object)) =
        crate::sources::kubernetes::restore::documents::parse_text(text, "fuzzed", "default")
    else {
        return false;
    };
    crate::k8s::canonical::to_yaml(&object).is_ok()
}

/// Inputs of each target made by the library's own writers, for the seed
/// corpus (`fuzz/corpus/<target>/`): `(target, input)` pairs, each accepted
/// by its target.
///
/// Fails when a seed cannot be serialised.
pub fn seeds() -> Result<Vec<(&'static str, Vec<u8>)>, serde_json::Error> {
    use crate::repo::blob::encode_with;
    use crate::repo::config::InitOptions;
    use crate::repo::id::{BlobId, PackId};
    use crate::repo::index::{IndexedBlob, IndexedPack};
    use crate::repo::keys::{ChunkIdKey, Recipient, Recipients};
    use crate::repo::tree::{Node, NodeKind, RawName};

    let mut seeds = Vec::new();
    let compressed = |json: Vec<u8>| zstd::bulk::compress(&json, 3).unwrap_or_default();
    let recipient: Option<Recipient> =
        "age10pa0qnstlemq2caqgxews2f6ytthpkmt7ud95ne3ccgcw4egnajs0skzrx"
            .parse()
            .ok();
    let recipients = Recipients {
        restore: recipient.iter().cloned().collect(),
        service: recipient.iter().cloned().collect(),
    };
    let config = RepoConfig::new(&InitOptions::default(), &recipients);
    let config_bytes = serde_json::to_vec(&config)?;
    let key = ChunkIdKey::from_bytes([3; 32]);
    seeds.push((
        "keys",
        compressed(serde_json::to_vec(&KeysObject::new(&key, &config_bytes))?),
    ));
    seeds.push(("config", config_bytes));

    let text = b"lifeboat ".repeat(400);
    let noise: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut tree = Tree {
        entries: vec![
            // The tree target takes every content blob for one byte long.
            Node {
                size: 1,
                content: vec![BlobId::from_bytes(key.hash(&text))],
                ..Node::new(b"notes.txt", NodeKind::File, 0o644, 1_764_126_000)
            },
            Node {
                subtree: Some(BlobId::from_bytes([9; 32])),
                ..Node::new(b"logs", NodeKind::Dir, 0o755, 1_764_126_000)
            },
            Node {
                target: Some(RawName(b"notes.txt".to_vec())),
                ..Node::new(b"current", NodeKind::Symlink, 0o777, 1_764_126_000)
            },
            Node {
                link: Some(RawName(b"/srv/notes.txt".to_vec())),
                ..Node::new(b"again", NodeKind::Hardlink, 0o644, 1_764_126_000)
            },
            Node {
                rdev: Some(259),
                ..Node::new(b"\xffdisk", NodeKind::Blockdev, 0o660, 1_764_126_000)
            },
        ],
    };
    let tree_bytes = tree.to_bytes()?;
    seeds.push(("tree", tree_bytes.clone()));

    let mut builder = pack::PackBuilder::new(Vec::new());
    let mut indexed = Vec::new();
    for (kind, plain) in [
        (BlobKind::Data, &text[..]),
        (BlobKind::Data, &noise[..]),
        (BlobKind::Tree, &tree_bytes[..]),
    ] {
        let (stored, compressed) = encode_with(plain, 3, |b, c| (b.to_vec(), c));
        let mut header = vec![u8::from(compressed)];
        header.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        header.extend_from_slice(&stored);
        seeds.push(("blob", header));
        builder
            .add(
                BlobId::from_bytes(key.hash(plain)),
                kind,
                &stored,
                compressed,
                plain.len(),
            )
            .map_err(serde_json::Error::io)?;
    }
    let (plain, blobs) = builder.finish().map_err(serde_json::Error::io)?;
    indexed.extend(blobs.iter().map(IndexedBlob::from));
    seeds.push(("pack", plain.clone()));
    let identity = age::x25519::Identity::from_str(FUZZ_IDENTITY).ok();
    if let Some(identity) = &identity {
        let public = identity.to_public();
        let to = || std::iter::once(&public as &dyn age::Recipient);
        if let Ok(cipher) = crypt::encrypt(to(), &plain) {
            seeds.push(("sealed_pack", cipher));
        }
        // A pack of several age segments, so that seeking is exercised.
        let mut big = pack::PackBuilder::new(Vec::new());
        let long: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        big.add(
            BlobId::from_bytes(key.hash(&long)),
            BlobKind::Data,
            &long,
            false,
            long.len(),
        )
        .map_err(serde_json::Error::io)?;
        let (long_plain, _) = big.finish().map_err(serde_json::Error::io)?;
        if let Ok(cipher) = crypt::encrypt(to(), &long_plain) {
            seeds.push(("sealed_pack", cipher));
        }
    }
    let index = IndexFile {
        packs: vec![IndexedPack {
            id: PackId::from_bytes(key.hash(&plain)),
            size: plain.len() as u64 + 300,
            payload_offset: 200,
            blobs: indexed,
        }],
    };
    seeds.push(("index", compressed(serde_json::to_vec(&index)?)));
    let snapshot = serde_json::json!({
        "job": "photos", "source_kind": "directory", "host": "tower",
        "time": "2026-11-26T03:00:00.123Z", "end_time": "2026-11-26T03:01:10.456Z",
        "root": BlobId::from_bytes([9; 32]), "summary": { "files": 1, "dirs": 2 },
        "metadata": { "revision": 12 },
        "references": [BlobId::from_bytes([9; 32]), BlobId::from_bytes([1; 32])],
    });
    seeds.push(("snapshot", compressed(snapshot.to_string().into_bytes())));
    let plan = serde_json::json!({
        "created": "2026-11-26T04:00:00Z", "packs": [PackId::from_bytes([4; 32])],
    });
    seeds.push(("prune_plan", compressed(plan.to_string().into_bytes())));

    for pages in [1usize, 3] {
        use sha2::Digest;
        let data: Vec<u8> = (0..pages * 512).map(|i| (i % 7) as u8).collect();
        let mut input = vec![61];
        input.extend_from_slice(&data);
        input.extend_from_slice(&sha2::Sha256::digest(&data));
        seeds.push(("etcd_trailer", input));
    }
    let document = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "fuzzed", "namespace": "default", "labels": { "app": "x" } },
        "data": { "key": "value", "list": "a\nb" },
    });
    if let Ok(yaml) = crate::k8s::canonical::to_yaml(&document) {
        seeds.push(("kubernetes_document", yaml.into_bytes()));
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed is accepted by its target, so the fuzzers start from
    /// inputs that reach past the first checks. With
    /// `LIFEBOAT_FUZZ_SEEDS=DIR`, the seeds are also written as
    /// `DIR/<target>/<blake3>` (how `fuzz/corpus/` was made).
    #[test]
    fn every_seed_decodes_with_its_target() -> anyhow::Result<()> {
        type Target = (&'static str, fn(&[u8]) -> bool);
        let targets: [Target; 11] = [
            ("config", config),
            ("keys", keys),
            ("index", index),
            ("snapshot", snapshot),
            ("prune_plan", prune_plan),
            ("pack", pack),
            ("blob", blob),
            ("sealed_pack", sealed_pack),
            ("tree", tree),
            ("etcd_trailer", etcd_trailer),
            ("kubernetes_document", kubernetes_document),
        ];
        let seeds = seeds()?;
        for (name, target) in targets {
            let mine: Vec<_> = seeds.iter().filter(|(t, _)| *t == name).collect();
            anyhow::ensure!(!mine.is_empty(), "no seed for {name}");
            for (_, input) in mine {
                anyhow::ensure!(target(input), "{name} refuses its seed");
            }
        }
        if let Some(dir) = std::env::var_os("LIFEBOAT_FUZZ_SEEDS") {
            for (name, input) in &seeds {
                let folder = std::path::Path::new(&dir).join(name);
                std::fs::create_dir_all(&folder)?;
                std::fs::write(folder.join(blake3::hash(input).to_hex().as_str()), input)?;
            }
        }
        Ok(())
    }
}
