//! The codec of metadata objects (keys, indexes, snapshots): JSON, then
//! zstd, then age.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RepoError;
use super::crypt::{self, CryptError};
use super::id::content_hash;

/// Failure to open a metadata object, before it is tied to its key.
#[derive(Debug)]
pub(crate) enum MetaError {
    Crypt(CryptError),
    Format(String),
}

impl MetaError {
    /// The error for the object at `key`.
    pub(crate) fn at(self, key: &str) -> RepoError {
        match self {
            Self::Crypt(source) => RepoError::Crypt {
                key: key.into(),
                source,
            },
            Self::Format(reason) => RepoError::Damaged {
                key: key.into(),
                reason,
            },
        }
    }
}

/// Serializes, compresses and encrypts `value`.
pub(crate) fn seal<'a, T: Serialize>(
    value: &T,
    recipients: impl Iterator<Item = &'a dyn age::Recipient>,
) -> Result<Vec<u8>, CryptError> {
    let json = serde_json::to_vec(value).map_err(|e| CryptError::Encrypt(e.to_string()))?;
    let packed = zstd::bulk::compress(&json, 3).map_err(|e| CryptError::Encrypt(e.to_string()))?;
    crypt::encrypt(recipients, &packed)
}

/// Decrypts, decompresses and parses a metadata object.
pub(crate) fn open<'a, T: DeserializeOwned>(
    cipher: &[u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
) -> Result<T, MetaError> {
    let packed = crypt::decrypt(identities, cipher).map_err(MetaError::Crypt)?;
    let json = zstd::stream::decode_all(packed.as_slice())
        .map_err(|e| MetaError::Format(e.to_string()))?;
    serde_json::from_slice(&json).map_err(|e| MetaError::Format(e.to_string()))
}

/// Checks that an object's bytes hash to the id in its name.
pub(crate) fn verify_name(key: &str, id: &[u8; 32], bytes: &[u8]) -> Result<(), RepoError> {
    if &content_hash(bytes) == id {
        Ok(())
    } else {
        Err(RepoError::Damaged {
            key: key.into(),
            reason: "its content does not match its name (BLAKE3)".into(),
        })
    }
}
