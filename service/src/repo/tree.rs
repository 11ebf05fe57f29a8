//! Trees: one directory's listing, stored as a blob of JSON.
//!
//! A snapshot's root is a tree; a directory node points at its subtree and a
//! file node lists its data blobs in order. Trees sit in packs like data, so
//! they are encrypted to the restore recipients only: names and metadata
//! are never readable with the service key. Serialization is deterministic
//! (entries sorted by name, fixed field order), so an unchanged directory
//! yields the same tree blob and deduplicates.
//!
//! A tree read back is hostile input (the service key can write one): the
//! reader checks it with [`Tree::validate`] against the rules of FORMAT.md
//! before anyone walks it, and a tree that breaks one is damaged.

use serde::{Deserialize, Serialize};

use super::blob::BlobKind;
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
    ///
    /// Fails when serialisation fails (it does not for trees lifeboat
    /// builds; the error is kept rather than an empty blob written).
    pub fn to_bytes(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
        serde_json::to_vec(self)
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

/// Permission bits a node may carry (including setuid, setgid, sticky).
pub const MODE_BITS: u32 = 0o7777;

/// What makes a tree damaged: the entry and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {name:?}: {reason}")]
pub struct TreeDamage {
    /// The entry's name (lossy UTF-8), or its position when the name is unusable.
    pub name: String,
    /// The rule it breaks.
    pub reason: DamageReason,
}

/// A rule of FORMAT.md's "Trees" a tree entry breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DamageReason {
    /// The name is empty.
    #[error("the name is empty")]
    EmptyName,
    /// The name is `.` or `..`.
    #[error("the name is `.` or `..`")]
    DotName,
    /// The name holds a `/` or a NUL byte.
    #[error("the name holds a `/` or a NUL byte")]
    BadByte,
    /// The name equals the previous entry's.
    #[error("the name appears twice")]
    Duplicate,
    /// The name sorts before the previous entry's.
    #[error("the entries are not sorted by name bytes")]
    Unsorted,
    /// Mode bits beyond 0o7777.
    #[error("mode {0:#o} has bits beyond 0o7777")]
    Mode(u32),
    /// Nanoseconds of a second beyond 999 999 999.
    #[error("mtime_nsec {0} is not below one second")]
    Nanoseconds(u32),
    /// A field the entry's type does not have.
    #[error("a {kind} entry has a `{field}` field")]
    Extra {
        /// The entry's type.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field the entry's type needs is absent or empty.
    #[error("a {kind} entry has no `{field}`")]
    Missing {
        /// The entry's type.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A symlink target or hard-link path holds a NUL byte.
    #[error("its `{0}` holds a NUL byte")]
    NulInPath(&'static str),
    /// A content blob is indexed as a tree.
    #[error("content blob {0} is a tree, not data")]
    TreeAsContent(BlobId),
    /// The size differs from the sum of the content blobs' lengths.
    #[error("size {size} differs from its blobs' total length {total}")]
    Size {
        /// The recorded size.
        size: u64,
        /// What the indexed blobs add up to.
        total: u64,
    },
}

impl NodeKind {
    /// The type's name in a tree.
    pub fn label(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::Hardlink => "hardlink",
            Self::Fifo => "fifo",
            Self::Chardev => "chardev",
            Self::Blockdev => "blockdev",
        }
    }
}

impl Tree {
    /// Checks the tree against FORMAT.md's rules: names unique, sorted by
    /// bytes, non-empty, not `.`/`..`, without `/` or NUL; each entry has
    /// exactly the fields its type has; a file's size is the sum of its
    /// blobs' lengths. `blob` tells what the index knows of a content blob
    /// (its kind and plaintext length); a blob it does not know is not
    /// counted (it is reported as missing elsewhere) and skips the size rule.
    ///
    /// Fails with the first entry that breaks a rule.
    pub fn validate(
        &self,
        blob: impl Fn(&BlobId) -> Option<(BlobKind, u64)>,
    ) -> Result<(), TreeDamage> {
        let mut previous: Option<&RawName> = None;
        for (at, node) in self.entries.iter().enumerate() {
            let damage = |reason| TreeDamage {
                name: if node.name.0.is_empty() {
                    format!("#{at}")
                } else {
                    node.name.display().into_owned()
                },
                reason,
            };
            check_name(&node.name.0).map_err(damage)?;
            if let Some(before) = previous {
                match before.cmp(&node.name) {
                    std::cmp::Ordering::Equal => return Err(damage(DamageReason::Duplicate)),
                    std::cmp::Ordering::Greater => return Err(damage(DamageReason::Unsorted)),
                    std::cmp::Ordering::Less => {}
                }
            }
            previous = Some(&node.name);
            check_node(node, &blob).map_err(damage)?;
        }
        Ok(())
    }
}

fn check_name(name: &[u8]) -> Result<(), DamageReason> {
    match name {
        [] => Err(DamageReason::EmptyName),
        b"." | b".." => Err(DamageReason::DotName),
        _ if name.iter().any(|&b| b == b'/' || b == 0) => Err(DamageReason::BadByte),
        _ => Ok(()),
    }
}

/// Which optional fields each type has: (content and size, subtree, target, link, rdev).
fn fields_of(kind: NodeKind) -> [bool; 5] {
    match kind {
        NodeKind::File => [true, false, false, false, false],
        NodeKind::Dir => [false, true, false, false, false],
        NodeKind::Symlink => [false, false, true, false, false],
        NodeKind::Hardlink => [false, false, false, true, false],
        NodeKind::Fifo => [false; 5],
        NodeKind::Chardev | NodeKind::Blockdev => [false, false, false, false, true],
    }
}

fn check_node(
    node: &Node,
    blob: &impl Fn(&BlobId) -> Option<(BlobKind, u64)>,
) -> Result<(), DamageReason> {
    if node.mode & !MODE_BITS != 0 {
        return Err(DamageReason::Mode(node.mode));
    }
    if node.mtime_nsec >= 1_000_000_000 {
        return Err(DamageReason::Nanoseconds(node.mtime_nsec));
    }
    let kind = node.kind.label();
    let [data, subtree, target, link, rdev] = fields_of(node.kind);
    let present = [
        ("content", !node.content.is_empty(), data),
        ("size", node.size != 0, data),
        ("subtree", node.subtree.is_some(), subtree),
        ("target", node.target.is_some(), target),
        ("link", node.link.is_some(), link),
        ("rdev", node.rdev.is_some(), rdev),
    ];
    if let Some((field, ..)) = present.iter().find(|(_, has, allowed)| *has && !allowed) {
        return Err(DamageReason::Extra { kind, field });
    }
    let needed = [
        ("subtree", node.subtree.is_none(), subtree),
        (
            "target",
            node.target.as_ref().is_none_or(|t| t.0.is_empty()),
            target,
        ),
        (
            "link",
            node.link.as_ref().is_none_or(|l| l.0.is_empty()),
            link,
        ),
        ("rdev", node.rdev.is_none(), rdev),
    ];
    if let Some((field, ..)) = needed.iter().find(|(_, absent, wanted)| *absent && *wanted) {
        return Err(DamageReason::Missing { kind, field });
    }
    for (field, path) in [("target", &node.target), ("link", &node.link)] {
        if path.as_ref().is_some_and(|p| p.0.contains(&0)) {
            return Err(DamageReason::NulInPath(field));
        }
    }
    if data {
        let (mut total, mut known) = (0u64, true);
        for id in &node.content {
            match blob(id) {
                Some((BlobKind::Tree, _)) => return Err(DamageReason::TreeAsContent(*id)),
                Some((BlobKind::Data, length)) => total = total.saturating_add(length),
                None => known = false,
            }
        }
        if known && total != node.size {
            return Err(DamageReason::Size {
                size: node.size,
                total,
            });
        }
    }
    Ok(())
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
        let bytes = a.to_bytes()?;
        assert_eq!(bytes, b.to_bytes()?);
        let back = Tree::from_bytes(&bytes)?;
        assert_eq!(
            back.get(b"\xffraw").map(|n| n.name.clone()),
            Some(RawName(b"\xffraw".to_vec()))
        );
        assert!(String::from_utf8_lossy(&bytes).contains("\"hex\":\"ff726177\""));
        Ok(())
    }

    fn valid(tree: &Tree) -> Result<(), TreeDamage> {
        tree.validate(|_| Some((BlobKind::Data, 5)))
    }

    fn reason(tree: &Tree) -> Option<DamageReason> {
        valid(tree).err().map(|damage| damage.reason)
    }

    fn one(node: Node) -> Tree {
        Tree {
            entries: vec![node],
        }
    }

    #[test]
    fn a_tree_the_backup_writes_is_valid() -> anyhow::Result<()> {
        let blob = BlobId::from_bytes([7; 32]);
        let mut tree = Tree {
            entries: vec![
                Node {
                    size: 10,
                    content: vec![blob, blob],
                    ..node(b"file")
                },
                Node {
                    subtree: Some(blob),
                    ..Node::new(b"dir", NodeKind::Dir, 0o4755, 1)
                },
                Node {
                    target: Some(RawName(b"../x".to_vec())),
                    ..Node::new(b"link", NodeKind::Symlink, 0o777, 1)
                },
                Node {
                    link: Some(RawName(b"/a/file".to_vec())),
                    ..Node::new(b"again", NodeKind::Hardlink, 0o644, 1)
                },
                Node::new(b"pipe", NodeKind::Fifo, 0o644, 1),
                Node {
                    rdev: Some(0),
                    ..Node::new(b"null", NodeKind::Chardev, 0o666, 1)
                },
                Node::new(b"\xffraw", NodeKind::File, 0o644, 1),
            ],
        };
        let back = Tree::from_bytes(&tree.to_bytes()?)?;
        valid(&back)?;
        // A blob the index does not know skips the size rule.
        back.validate(|_| None)?;
        Ok(())
    }

    #[test]
    fn each_broken_rule_is_damage_naming_the_entry() {
        let blob = BlobId::from_bytes([7; 32]);
        let pair = |a: &[u8], b: &[u8]| Tree {
            entries: vec![node(a), node(b)],
        };
        let damage = valid(&pair(b"same", b"same")).err();
        assert_eq!(
            damage,
            Some(TreeDamage {
                name: "same".into(),
                reason: DamageReason::Duplicate
            })
        );
        assert_eq!(reason(&pair(b"b", b"a")), Some(DamageReason::Unsorted));
        assert_eq!(reason(&one(node(b""))), Some(DamageReason::EmptyName));
        assert_eq!(reason(&one(node(b"."))), Some(DamageReason::DotName));
        assert_eq!(reason(&one(node(b".."))), Some(DamageReason::DotName));
        assert_eq!(reason(&one(node(b"a/b"))), Some(DamageReason::BadByte));
        assert_eq!(reason(&one(node(b"a\0"))), Some(DamageReason::BadByte));
        assert_eq!(
            reason(&one(Node::new(b"m", NodeKind::File, 0o10644, 1))),
            Some(DamageReason::Mode(0o10644))
        );
        assert_eq!(
            reason(&one(Node {
                mtime_nsec: 1_000_000_000,
                ..node(b"t")
            })),
            Some(DamageReason::Nanoseconds(1_000_000_000))
        );
        let extra = |kind: NodeKind, field| {
            Some(DamageReason::Extra {
                kind: kind.label(),
                field,
            })
        };
        let missing = |kind: NodeKind, field| {
            Some(DamageReason::Missing {
                kind: kind.label(),
                field,
            })
        };
        let link = Some(RawName(b"x".to_vec()));
        assert_eq!(
            reason(&one(Node {
                subtree: Some(blob),
                ..node(b"f")
            })),
            extra(NodeKind::File, "subtree")
        );
        assert_eq!(
            reason(&one(Node {
                target: link.clone(),
                ..node(b"f")
            })),
            extra(NodeKind::File, "target")
        );
        assert_eq!(
            reason(&one(Node {
                rdev: Some(1),
                ..node(b"f")
            })),
            extra(NodeKind::File, "rdev")
        );
        assert_eq!(
            reason(&one(Node::new(b"d", NodeKind::Dir, 0o755, 1))),
            missing(NodeKind::Dir, "subtree")
        );
        assert_eq!(
            reason(&one(Node {
                subtree: Some(blob),
                content: vec![blob],
                ..Node::new(b"d", NodeKind::Dir, 0o755, 1)
            })),
            extra(NodeKind::Dir, "content")
        );
        assert_eq!(
            reason(&one(Node::new(b"l", NodeKind::Symlink, 0o777, 1))),
            missing(NodeKind::Symlink, "target")
        );
        assert_eq!(
            reason(&one(Node {
                target: Some(RawName(Vec::new())),
                ..Node::new(b"l", NodeKind::Symlink, 0o777, 1)
            })),
            missing(NodeKind::Symlink, "target")
        );
        assert_eq!(
            reason(&one(Node {
                target: Some(RawName(b"a\0b".to_vec())),
                ..Node::new(b"l", NodeKind::Symlink, 0o777, 1)
            })),
            Some(DamageReason::NulInPath("target"))
        );
        assert_eq!(
            reason(&one(Node::new(b"h", NodeKind::Hardlink, 0o644, 1))),
            missing(NodeKind::Hardlink, "link")
        );
        assert_eq!(
            reason(&one(Node::new(b"c", NodeKind::Blockdev, 0o644, 1))),
            missing(NodeKind::Blockdev, "rdev")
        );
        assert_eq!(
            reason(&one(Node {
                rdev: Some(3),
                ..Node::new(b"p", NodeKind::Fifo, 0o644, 1)
            })),
            extra(NodeKind::Fifo, "rdev")
        );
        assert_eq!(
            reason(&one(Node {
                size: 9,
                content: vec![blob, blob],
                ..node(b"f")
            })),
            Some(DamageReason::Size { size: 9, total: 10 })
        );
        assert_eq!(
            one(Node {
                content: vec![blob],
                ..node(b"f")
            })
            .validate(|_| Some((BlobKind::Tree, 5)))
            .err()
            .map(|d| d.reason),
            Some(DamageReason::TreeAsContent(blob))
        );
    }
}
