//! A mover's file cache: what the last mover of a claim knew of its files
//! (size, times, inode and data blobs), so that the next one reads only
//! what changed, as lifeboatd's own file cache does for folders it reads.
//!
//! A mover has no disk that outlives it, so its cache is an object in the
//! repository's store, `caches/<JOB>/<ID>` (`JOB` as [`super::job_label`],
//! `ID` the BLAKE3 of the object as stored). It is an age file encrypted
//! with a scrypt passphrase: a [`CacheKey`] that lifeboatd derives per
//! repository, job and claim from a master key it alone keeps in its state
//! folder, and hands to that claim's mover through the run's Secret. The
//! service key opens no cache, and cannot forge one: a cache that lets a
//! backup skip a file decides what the snapshot records for it, so only
//! lifeboatd and the claim's own movers can write one. Which object is a
//! claim's cache lives in lifeboatd's state; losing either costs time (the
//! next mover reads every file), never data.
//!
//! The plaintext, zstd-compressed, is [`MAGIC`] then one record a file:
//! path length (u32), path, size (u64), mtime and ctime (i64 ns), inode
//! (u64), blob count (u32) and the blob ids, integers little-endian.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use age::secrecy::SecretString;
use bytes::Bytes;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::backup::files::Learnt;
use crate::repo::RepoError;
use crate::repo::crypt::{self, CryptError};
use crate::repo::id::{BlobId, content_hash};
use crate::repo::put::put_content_named;
use crate::state::{CachedFile, FileStamp, KnownFiles, KnownFilesBuilder};
use crate::storage::{ObjectStore, StorageError};

/// Where the caches of all jobs are in the store.
pub const PREFIX: &str = "caches/";

/// The first bytes of a cache's plaintext.
const MAGIC: &[u8] = b"lifeboat mover file cache 1\n";

/// scrypt's work factor (log2 N): the passphrase is 256 random bits, so
/// the key stretching that guards a guessable one buys nothing here.
const WORK_FACTOR: u8 = 10;

/// The largest cache object read (about 20 million files).
const MAX_OBJECT: u64 = 2 << 30;
/// The largest plaintext a cache may decompress to.
const MAX_PLAIN: u64 = 8 << 30;
/// The longest path a record may hold.
const MAX_PATH: u32 = 64 * 1024;
/// The most blobs one file's record may list.
const MAX_BLOBS: u32 = 1 << 24;

/// The state folder's file holding the master key.
const MASTER_FILE: &str = "mover-cache.key";

/// Why a cache could not be read or written. A mover goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The object could not be stored as its name says.
    #[error(transparent)]
    Stored(#[from] RepoError),
    /// The object is not a cache this key opens.
    #[error("the mover cache {key} does not open: {source}")]
    Crypt {
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: CryptError,
    },
    /// The object or its plaintext is damaged or too large.
    #[error("the mover cache {key} is damaged: {reason}")]
    Damaged {
        /// The object.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A key file could not be read or written.
    #[error("the mover cache key {path}: {reason}")]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with the fix.
        reason: String,
    },
}

/// The key of one claim's cache.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey([redacted])")
    }
}

impl CacheKey {
    /// The key as the hex text a mover's key file holds.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// Reads a key file written with [`Self::to_hex`].
    ///
    /// Fails when the file cannot be read or holds no key.
    pub fn from_file(path: &Path) -> Result<Self, CacheError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| CacheError::Key {
            path: path.to_owned(),
            reason: format!("{e}; lifeboatd writes it into the run's Secret"),
        })?);
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|_| CacheError::Key {
            path: path.to_owned(),
            reason: "it is not 64 hex digits".into(),
        })?;
        Ok(Self(key))
    }

    fn passphrase(&self) -> SecretString {
        SecretString::from(self.to_hex().to_string())
    }
}

/// The key lifeboatd derives every claim's [`CacheKey`] from (a key
/// of the same kind: 32 secret bytes).
#[derive(Clone, Debug)]
pub struct MasterCacheKey(CacheKey);

impl MasterCacheKey {
    /// The master key in `state_dir`, made (readable by its owner alone)
    /// when there is none.
    ///
    /// Fails when it cannot be read or made.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CacheError> {
        let path = state_dir.join(MASTER_FILE);
        let fail = |reason: String| CacheError::Key {
            path: path.clone(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    fail(
                        "it is not 32 bytes; delete it (the movers then read every file once)"
                            .into(),
                    )
                })?;
                Ok(Self(CacheKey(key)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self(CacheKey(rand::random()));
                std::fs::create_dir_all(state_dir).map_err(|e| fail(e.to_string()))?;
                write_private(&path, &key.0.0).map_err(|e| fail(e.to_string()))?;
                Ok(key)
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// The key of the cache of `claim` of volumes job `job` in repository
    /// `repository` (its id).
    pub fn claim_key(&self, repository: &str, job: &str, claim: &str) -> CacheKey {
        let mut hasher = blake3::Hasher::new_keyed(&self.0.0);
        for part in [repository, job, claim] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        CacheKey(*hasher.finalize().as_bytes())
    }
}

/// Creates `path` holding `bytes`, readable by its owner alone.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The prefix of volumes job `job`'s caches.
pub fn job_prefix(job: &str) -> String {
    format!("{PREFIX}{}/", super::job_label(job))
}

/// Whether `object` is a cache object of job `job`: its prefix and a
/// 64-digit id.
pub fn is_cache_of(job: &str, object: &str) -> bool {
    object
        .strip_prefix(&job_prefix(job))
        .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Stores `learnt` as a cache of job `job` under `key`; returns the
/// object's key.
///
/// Fails when it cannot be encrypted or stored.
pub async fn save(
    store: &Arc<dyn ObjectStore>,
    job: &str,
    learnt: Learnt,
    key: &CacheKey,
) -> Result<String, CacheError> {
    let passphrase = key.passphrase();
    let sealed = tokio::task::spawn_blocking(move || seal(&learnt, passphrase))
        .await
        .map_err(|e| CacheError::Damaged {
            key: job_prefix(job),
            reason: format!("encoding stopped: {e}"),
        })??;
    let object = format!("{}{}", job_prefix(job), hex::encode(content_hash(&sealed)));
    put_content_named(store.as_ref(), &object, Bytes::from(sealed)).await?;
    Ok(object)
}

/// Reads the cache `object` with `key`.
///
/// Fails when it is missing, does not open with `key`, does not match its
/// name, or is damaged or too large.
pub async fn load(
    store: &Arc<dyn ObjectStore>,
    object: &str,
    key: &CacheKey,
) -> Result<KnownFiles, CacheError> {
    let damaged = |reason: String| CacheError::Damaged {
        key: object.to_owned(),
        reason,
    };
    let size = store.size(object).await?;
    if size > MAX_OBJECT {
        return Err(damaged(format!(
            "{size} bytes, more than the {MAX_OBJECT} a cache may have"
        )));
    }
    let sealed = store.get(object).await?;
    let named = object.rsplit('/').next().unwrap_or_default();
    if hex::encode(content_hash(&sealed)) != named {
        return Err(damaged("its bytes do not hash to its name".into()));
    }
    let passphrase = key.passphrase();
    let owned = object.to_owned();
    tokio::task::spawn_blocking(move || open(&sealed, passphrase, &owned))
        .await
        .map_err(|e| damaged(format!("decoding stopped: {e}")))?
}

/// The age file of `learnt` under `passphrase`.
fn seal(learnt: &Learnt, passphrase: SecretString) -> Result<Vec<u8>, CacheError> {
    let failed = |source: CryptError| CacheError::Crypt {
        key: PREFIX.into(),
        source,
    };
    let mut recipient = age::scrypt::Recipient::new(passphrase);
    recipient.set_work_factor(WORK_FACTOR);
    let recipients = [&recipient as &dyn age::Recipient];
    let sealed = crypt::encrypt_to(recipients.into_iter(), Vec::new()).map_err(failed)?;
    let mut compressor =
        zstd::Encoder::new(sealed, 3).map_err(|e| failed(CryptError::Compress(e)))?;
    let written = write_records(&mut compressor, learnt)
        .and_then(|()| compressor.finish())
        .and_then(|sealed| sealed.finish());
    written.map_err(|e| failed(CryptError::EncryptStream(e)))
}

fn write_records(out: &mut impl Write, learnt: &Learnt) -> io::Result<()> {
    out.write_all(MAGIC)?;
    for (path, file) in learnt {
        let too_long = || io::Error::other("a path or blob list too long for a cache record");
        let path_len = u32::try_from(path.len()).map_err(|_| too_long())?;
        let blobs = u32::try_from(file.content.len()).map_err(|_| too_long())?;
        if path_len > MAX_PATH || blobs > MAX_BLOBS {
            // Left out: that file is read again next time.
            continue;
        }
        out.write_all(&path_len.to_le_bytes())?;
        out.write_all(path)?;
        out.write_all(&file.stamp.size.to_le_bytes())?;
        out.write_all(&file.stamp.mtime_ns.to_le_bytes())?;
        out.write_all(&file.stamp.ctime_ns.to_le_bytes())?;
        out.write_all(&file.stamp.inode.to_le_bytes())?;
        out.write_all(&blobs.to_le_bytes())?;
        for id in &file.content {
            out.write_all(id.as_bytes())?;
        }
    }
    Ok(())
}

/// The files of the cache `sealed` (object `object`) under `passphrase`.
fn open(sealed: &[u8], passphrase: SecretString, object: &str) -> Result<KnownFiles, CacheError> {
    let mut identity = age::scrypt::Identity::new(passphrase);
    identity.set_max_work_factor(WORK_FACTOR);
    let identities = [&identity as &dyn age::Identity];
    let plain =
        crypt::open(identities.into_iter(), sealed).map_err(|source| CacheError::Crypt {
            key: object.to_owned(),
            source,
        })?;
    let decoder = zstd::Decoder::new(plain).map_err(|e| CacheError::Damaged {
        key: object.to_owned(),
        reason: e.to_string(),
    })?;
    read_records(decoder.take(MAX_PLAIN)).map_err(|e| CacheError::Damaged {
        key: object.to_owned(),
        reason: e.to_string(),
    })
}

fn read_records(input: impl Read) -> io::Result<KnownFiles> {
    let mut input = io::BufReader::new(input);
    let mut magic = [0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(io::Error::other("it is not a mover cache of this version"));
    }
    let mut files = KnownFilesBuilder::default();
    loop {
        let mut word = [0u8; 4];
        match input.read(&mut word[..1])? {
            0 => return Ok(files.build()),
            _ => input.read_exact(&mut word[1..])?,
        }
        let path_len = u32::from_le_bytes(word);
        if path_len > MAX_PATH {
            return Err(io::Error::other(format!("a path of {path_len} bytes")));
        }
        let mut path = vec![0u8; path_len as usize];
        input.read_exact(&mut path)?;
        let mut fixed = [0u8; 36];
        input.read_exact(&mut fixed)?;
        let field = |at: usize| -> [u8; 8] { fixed[at..at + 8].try_into().unwrap_or_default() };
        let blobs = u32::from_le_bytes(fixed[32..36].try_into().unwrap_or_default());
        if blobs > MAX_BLOBS {
            return Err(io::Error::other(format!("a file of {blobs} blobs")));
        }
        let mut content = Vec::new();
        for _ in 0..blobs {
            let mut id = [0u8; 32];
            input.read_exact(&mut id)?;
            content.push(BlobId::from_bytes(id));
        }
        files.insert(
            &path,
            &CachedFile {
                stamp: FileStamp {
                    size: u64::from_le_bytes(field(0)),
                    mtime_ns: i64::from_le_bytes(field(8)),
                    ctime_ns: i64::from_le_bytes(field(16)),
                    inode: u64::from_le_bytes(field(24)),
                },
                content,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learnt() -> Learnt {
        (0..1000u64)
            .map(|i| {
                (
                    format!("/claim/dir/file-{i}").into_bytes(),
                    CachedFile {
                        stamp: FileStamp {
                            size: i * 7,
                            mtime_ns: -(i as i64),
                            ctime_ns: i as i64 * 3,
                            inode: i + 100,
                        },
                        content: (0..i % 4)
                            .map(|b| BlobId::from_bytes([b as u8; 32]))
                            .collect(),
                    },
                )
            })
            .collect()
    }

    fn key(byte: u8) -> CacheKey {
        CacheKey([byte; 32])
    }

    #[test]
    fn a_sealed_cache_opens_with_its_key_alone() -> anyhow::Result<()> {
        let files = learnt();
        let sealed = seal(&files, key(1).passphrase())?;
        let opened = open(&sealed, key(1).passphrase(), "c")?;
        assert_eq!(opened.len(), files.len());
        for (path, file) in &files {
            assert_eq!(
                opened.content(path, &file.stamp).as_ref(),
                Some(&file.content)
            );
        }
        assert!(matches!(
            open(&sealed, key(2).passphrase(), "c"),
            Err(CacheError::Crypt { .. })
        ));
        // The service key or stock age without the passphrase sees only an
        // scrypt stanza.
        assert!(sealed.starts_with(b"age-encryption.org/v1\n-> scrypt "));
        Ok(())
    }

    #[test]
    fn a_damaged_cache_is_refused_not_half_used() -> anyhow::Result<()> {
        let sealed = seal(&learnt(), key(1).passphrase())?;
        for at in [40, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                open(&bad, key(1).passphrase(), "c").is_err(),
                "flip at {at}"
            );
        }
        assert!(open(&sealed[..sealed.len() - 20], key(1).passphrase(), "c").is_err());
        Ok(())
    }

    #[test]
    fn records_that_claim_too_much_are_refused_before_allocating() {
        let mut plain = MAGIC.to_vec();
        plain.extend(u32::MAX.to_le_bytes());
        assert!(read_records(plain.as_slice()).is_err());
        let mut plain = MAGIC.to_vec();
        plain.extend(1u32.to_le_bytes());
        plain.push(b'a');
        plain.extend([0u8; 32]);
        plain.extend(u32::MAX.to_le_bytes());
        assert!(read_records(plain.as_slice()).is_err());
        // A record cut short.
        let mut plain = MAGIC.to_vec();
        plain.extend(5u32.to_le_bytes());
        plain.extend(b"ab");
        assert!(read_records(plain.as_slice()).is_err());
        assert!(read_records(b"not a cache at all, no".as_slice()).is_err());
    }

    #[test]
    fn claim_keys_differ_by_repository_job_and_claim_and_survive_reloading() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let master = MasterCacheKey::load_or_create(dir.path())?;
        let again = MasterCacheKey::load_or_create(dir.path())?;
        let hex = |k: CacheKey| k.to_hex().to_string();
        assert_eq!(
            hex(master.claim_key("r", "volumes", "apps/a")),
            hex(again.claim_key("r", "volumes", "apps/a"))
        );
        let keys: std::collections::BTreeSet<String> = [
            master.claim_key("r", "volumes", "apps/a"),
            master.claim_key("s", "volumes", "apps/a"),
            master.claim_key("r", "other", "apps/a"),
            master.claim_key("r", "volumes", "apps/b"),
            master.claim_key("r", "volumesa", "pps/b"),
        ]
        .into_iter()
        .map(hex)
        .collect();
        assert_eq!(keys.len(), 5);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(MASTER_FILE))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the master key is its owner's alone");
        assert_eq!(
            format!("{master:?}"),
            "MasterCacheKey(CacheKey([redacted]))"
        );
        Ok(())
    }

    #[test]
    fn cache_objects_are_named_under_their_job() {
        let id = "ab".repeat(32);
        let object = format!("{}{id}", job_prefix("volumes"));
        assert!(is_cache_of("volumes", &object));
        assert!(!is_cache_of("other", &object));
        assert!(!is_cache_of("volumes", &format!("{object}/../x")));
        assert!(!is_cache_of("volumes", "snapshots/ab"));
    }
}
