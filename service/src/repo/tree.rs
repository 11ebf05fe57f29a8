//! Trees: one directory's listing, stored as a blob of JSON.
//!
//! A snapshot's root is a tree; a directory node points at its subtree and a
//! file node lists its data blobs in order. Trees sit in packs like data, so
//! they are encrypted to the restore recipients only: names and metadata
//! are never readable with the service key. Serialization is deterministic
//! (entries sorted by name, fixed field order), so an unchanged directory
//! yields the same tree blob and deduplicates.

use serde::{Deserialize, Serialize};

use super::id::BlobId;

/// A file name or symlink target as raw bytes. JSON holds it as a string
/// when it is UTF-8, else as `{"hex": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawName(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawNameRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for RawName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => RawNameRepr::Text(text.to_owned()),
            Err(_) => RawNameRepr::Hex {
                hex: hex::encode(&self.0),
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match RawNameRepr::deserialize(deserializer)? {
            RawNameRepr::Text(text) => Ok(Self(text.into_bytes())),
            RawNameRepr::Hex { hex } => {
                hex::decode(hex).map(Self).map_err(serde::de::Error::custom)
            }
        }
    }
}

impl RawName {
    /// The name for messages, with invalid UTF-8 replaced.
    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file (or a backed-up stream).
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A further name of a file stored earlier in the same snapshot.
    Hardlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    Chardev,
    /// A block device.
    Blockdev,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Its name within the directory.
    pub name: RawName,
    /// What it is.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits, including setuid, setgid and sticky (0o7777).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// File size in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// A file's data blobs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<BlobId>,
    /// A directory's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RawName>,
    /// A hard link's first name, as a path from the snapshot's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<RawName>,
    /// A device's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
}

impl Node {
    /// A `kind` entry called `name` with permission bits `mode`, owned by
    /// root, modified at `mtime` (seconds), with no content yet.
    pub fn new(name: &[u8], kind: NodeKind, mode: u32, mtime: i64) -> Self {
        Self {
            name: RawName(name.to_vec()),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            mtime_nsec: 0,
            size: 0,
            content: Vec::new(),
            subtree: None,
            target: None,
            link: None,
            rdev: None,
        }
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The plaintext of a tree blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// The entries, sorted by name.
    pub entries: Vec<Node>,
}

impl Tree {
    /// The tree's blob plaintext, with entries sorted by name.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a tree blob's plaintext.
    ///
    /// Fails when it is not a tree.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The entry called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.entries
            .binary_search_by(|node| node.name.0.as_slice().cmp(name))
            .ok()
            .map(|at| &self.entries[at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8]) -> Node {
        Node {
            mtime_nsec: 2,
            ..Node::new(name, NodeKind::File, 0o644, 1)
        }
    }

    #[test]
    fn serialization_is_sorted_and_keeps_non_utf8_names() -> anyhow::Result<()> {
        let mut a = Tree {
            entries: vec![node(b"b"), node(b"\xffraw"), node(b"a")],
        };
        let mut b = Tree {
            entries: vec![node(b"a"), node(b"\xffraw"), node(b"b")],
        };
        let bytes = a.to_bytes();
        assert_eq!(bytes, b.to_bytes());
        let back = Tree::from_bytes(&bytes)?;
        assert_eq!(
            back.get(b"\xffraw").map(|n| n.name.clone()),
            Some(RawName(b"\xffraw".to_vec()))
        );
        assert!(String::from_utf8_lossy(&bytes).contains("\"hex\":\"ff726177\""));
        Ok(())
    }
}
