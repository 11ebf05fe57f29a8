//! The repository's two fixed objects: `config` and `keys`.
//!
//! `config` is the one plaintext object: format version, repository id,
//! chunking, pack size, compression level and the public recipients. It
//! holds nothing secret. `keys` is encrypted to both the restore and the
//! service recipients and holds the chunk-id key plus the BLAKE3 of
//! `config`, so a changed `config` is detected by anyone holding a key.

use serde::{Deserialize, Serialize};

use super::chunker::Chunking;
use super::keys::{ChunkIdKey, Recipient, Recipients};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Object key of the plaintext configuration.
pub const CONFIG_KEY: &str = "config";
/// Object key of the encrypted keys object.
pub const KEYS_KEY: &str = "keys";

/// Settings fixed when a repository is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Format version; 1.
    pub version: u32,
    /// Random id of this repository (32 hex digits).
    pub id: String,
    /// Chunking of files and dumps.
    pub file_chunking: Chunking,
    /// Chunking of page-structured files (etcd's database).
    pub page_chunking: Chunking,
    /// Target size of a pack's plaintext in bytes.
    pub pack_size: u32,
    /// zstd level of blobs (0 stores blobs raw).
    pub compression_level: i32,
    /// Restore recipients (`age1…`): every object is encrypted to them.
    pub restore_recipients: Vec<String>,
    /// Service recipients: indexes, snapshots and keys are encrypted to them too.
    pub service_recipients: Vec<String>,
}

/// Choices a new repository can be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Chunking of files and dumps.
    pub file_chunking: Chunking,
    /// Chunking of page-structured files.
    pub page_chunking: Chunking,
    /// Target pack size in bytes (1–128 MiB).
    pub pack_size: u32,
    /// zstd level (0–19).
    pub compression_level: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            file_chunking: Chunking::FILES,
            page_chunking: Chunking::PAGES,
            pack_size: 16 * 1024 * 1024,
            compression_level: 3,
        }
    }
}

impl InitOptions {
    /// Checks every setting; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        self.file_chunking.validate()?;
        self.page_chunking.validate()?;
        if !(1 << 20..=128 << 20).contains(&self.pack_size) {
            return Err(format!("pack size {} must be 1–128 MiB", self.pack_size));
        }
        if !(0..=19).contains(&self.compression_level) {
            return Err(format!(
                "compression level {} must be 0–19",
                self.compression_level
            ));
        }
        Ok(())
    }
}

impl RepoConfig {
    /// A new configuration with a random id.
    pub fn new(options: &InitOptions, recipients: &Recipients) -> Self {
        Self {
            version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 16]>()),
            file_chunking: options.file_chunking,
            page_chunking: options.page_chunking,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
            restore_recipients: recipients.restore.iter().map(ToString::to_string).collect(),
            service_recipients: recipients.service.iter().map(ToString::to_string).collect(),
        }
    }

    /// Checks the settings read from a repository's `config` as `init`
    /// checks new ones (a hostile config could otherwise make writers
    /// reserve gigabytes per pack).
    ///
    /// Fails with the message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        InitOptions {
            file_chunking: self.file_chunking,
            page_chunking: self.page_chunking,
            pack_size: self.pack_size,
            compression_level: self.compression_level,
        }
        .validate()
    }

    /// The recipients the configuration names.
    ///
    /// Fails when one of them is not an age recipient.
    pub fn recipients(&self) -> Result<Recipients, super::keys::KeyError> {
        let parse = |list: &[String]| -> Result<Vec<Recipient>, super::keys::KeyError> {
            list.iter().map(|r| r.parse::<Recipient>()).collect()
        };
        Ok(Recipients {
            restore: parse(&self.restore_recipients)?,
            service: parse(&self.service_recipients)?,
        })
    }
}

/// The decrypted `keys` object.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysObject {
    /// The chunk-id key, 64 hex digits.
    pub chunk_id_key: String,
    /// BLAKE3 of the `config` object's bytes, 64 hex digits.
    pub config_blake3: String,
}

impl super::meta::MetaObject for KeysObject {
    /// A few keys and a hash: far below 64 KiB.
    const MAX_PLAIN: usize = 64 << 10;
}

impl KeysObject {
    pub(crate) fn new(key: &ChunkIdKey, config_bytes: &[u8]) -> Self {
        Self {
            chunk_id_key: hex::encode(key.expose()),
            config_blake3: blake3::hash(config_bytes).to_hex().to_string(),
        }
    }

    pub(crate) fn chunk_id_key(&self) -> Option<ChunkIdKey> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(&self.chunk_id_key, &mut bytes).ok()?;
        Some(ChunkIdKey::from_bytes(bytes))
    }
}

impl std::fmt::Debug for KeysObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeysObject([redacted])")
    }
}
