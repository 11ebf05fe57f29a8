//! Identifiers of repository objects and blobs.
//!
//! Every id is 32 bytes shown as 64 lowercase hex digits. Blob ids are
//! BLAKE3 keyed with the repository's [`ChunkIdKey`](super::keys::ChunkIdKey)
//! over the blob's plaintext; object ids (packs, indexes, snapshots) are the
//! unkeyed BLAKE3 of the object's bytes as stored, so anyone can check an
//! object against its name without a key.

use std::fmt;
use std::str::FromStr;

/// A hex string that is not a 64-digit id.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not a 64-digit hex id")]
pub struct BadId {
    /// The string as given.
    pub value: String,
}

macro_rules! object_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The id from its raw bytes.
            pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub(crate) fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The id as 64 hex digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, as shown to people.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl FromStr for $name {
            type Err = BadId;

            fn from_str(value: &str) -> Result<Self, BadId> {
                let mut bytes = [0; 32];
                hex::decode_to_slice(value, &mut bytes).map_err(|_| BadId { value: value.to_owned() })?;
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

object_id!(
    /// A blob: a chunk of file data or a tree, named by its keyed hash.
    BlobId
);
object_id!(
    /// A pack object under `data/`.
    PackId
);
object_id!(
    /// An index object under `index/`.
    IndexId
);
object_id!(
    /// A snapshot object under `snapshots/`.
    SnapshotId
);

impl PackId {
    /// The pack's object key: `data/<first two hex digits>/<id>`.
    pub fn key(&self) -> String {
        let hex = self.to_hex();
        format!("data/{}/{hex}", &hex[..2])
    }
}

impl IndexId {
    /// The index's object key.
    pub fn key(&self) -> String {
        format!("index/{self}")
    }
}

impl SnapshotId {
    /// The snapshot's object key.
    pub fn key(&self) -> String {
        format!("snapshots/{self}")
    }
}

/// The unkeyed BLAKE3 of stored bytes: the name of the object holding them.
pub(crate) fn content_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_keys() -> anyhow::Result<()> {
        let id = PackId::from_bytes(content_hash(b"pack"));
        assert_eq!(id.to_hex().parse::<PackId>()?, id);
        assert!(
            id.key()
                .starts_with(&format!("data/{}/", &id.to_hex()[..2]))
        );
        assert!("xyz".parse::<SnapshotId>().is_err());
        let json = serde_json::to_string(&id)?;
        assert_eq!(serde_json::from_str::<PackId>(&json)?, id);
        Ok(())
    }
}
