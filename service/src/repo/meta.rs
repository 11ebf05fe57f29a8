//! The codec of metadata objects (keys, indexes, snapshots): JSON, then
//! zstd, then age.
//!
//! Opening one is bounded: its JSON is decompressed up to the kind's
//! [`MetaObject::MAX_PLAIN`] only, and the parsed value is checked with
//! [`MetaObject::validate`] before anyone uses it. An object named by the
//! hash of its bytes (index, snapshot, prune plan) is read from its store
//! as it arrives ([`NamedBody`]) and counts only once all of it matches
//! its name.

use std::io::Read;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::crypt::{self, CryptError};
use super::id::content_hash;
use super::keys::{self, KeyRole};
use super::{DecodeError, RepoError};
use crate::errors::WorkerError;
use crate::storage::{ObjectReader, ObjectStore};

/// Failure to open a metadata object, before it is tied to its key.
#[derive(Debug)]
pub(crate) enum MetaError {
    Crypt(CryptError),
    Decode(DecodeError),
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
            Self::Decode(source) => RepoError::Undecodable {
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

/// The largest JSON plaintext of a metadata object: a snapshot lists every
/// blob it references (67 bytes each), so this allows some 16 million blobs,
/// 16 TiB of data at 1 MiB chunks.
pub const MAX_META_PLAIN: usize = 1 << 30;

/// A kind of metadata object.
pub(crate) trait MetaObject: DeserializeOwned {
    /// The largest JSON plaintext an object of this kind may have.
    const MAX_PLAIN: usize = MAX_META_PLAIN;

    /// Checks what parsing cannot (lengths and offsets against each other).
    ///
    /// Fails with the reason the object is damaged.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Serializes, compresses and encrypts `value`, streaming, and returns the
/// ciphertext.
pub(crate) fn seal<'a, T: Serialize>(
    value: &T,
    recipients: impl Iterator<Item = &'a dyn age::Recipient>,
) -> Result<Vec<u8>, CryptError> {
    seal_into(value, recipients, Vec::new())
}

/// Serializes, compresses and encrypts `value` into `out`, streaming:
/// nothing is held whole (a snapshot of a million blobs is 67 MB of JSON,
/// which compresses to about half), and returns `out`.
pub(crate) fn seal_into<'a, T: Serialize, W: std::io::Write>(
    value: &T,
    recipients: impl Iterator<Item = &'a dyn age::Recipient>,
    out: W,
) -> Result<W, CryptError> {
    let sealed = crypt::encrypt_to(recipients, out)?;
    let compressor = zstd::Encoder::new(sealed, 3).map_err(CryptError::Compress)?;
    let mut json = std::io::BufWriter::with_capacity(64 * 1024, compressor);
    serde_json::to_writer(&mut json, value).map_err(CryptError::Serialize)?;
    let compressor = json
        .into_inner()
        .map_err(|e| CryptError::Compress(e.into_error()))?;
    let sealed = compressor.finish().map_err(CryptError::Compress)?;
    sealed.finish().map_err(CryptError::EncryptStream)
}

/// Decrypts, decompresses, parses and validates a metadata object from
/// `cipher`, all streaming: only the parsed value is held.
pub(crate) fn open<'a, T: MetaObject>(
    cipher: impl Read,
    identities: impl Iterator<Item = &'a dyn age::Identity>,
) -> Result<T, MetaError> {
    let payload = crypt::open(identities, cipher).map_err(MetaError::Crypt)?;
    let mut payload = Watched {
        inner: payload,
        error: None,
    };
    let parsed = parse::<T>(&mut payload);
    match payload.error {
        Some(damage) => Err(MetaError::Crypt(CryptError::DamagedPayload(damage))),
        None => parsed,
    }
}

/// What [`open_named`] made of an object read as it arrives.
pub(crate) enum Named<T> {
    /// The bytes match the name: the object, or why it does not open.
    Opened(Result<T, MetaError>),
    /// The bytes do not match the name.
    Misnamed,
    /// The bytes stopped coming (a body cut off midway): read it again.
    Cut(std::io::Error),
}

/// Opens a metadata object as [`open`] does, from its bytes as they arrive,
/// hashing them on the way: the object counts only once every byte has
/// come and they hash to `name`. Nothing is held whole, however long the
/// object (a snapshot of a million blobs is about 35 MB of ciphertext); at
/// most what a `T` can be is read.
pub(crate) fn open_named<'a, T: MetaObject>(
    cipher: impl Read,
    name: &[u8; 32],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
) -> Named<T> {
    let mut watched = Watched {
        inner: Hashed {
            inner: cipher.take(largest_cipher(T::MAX_PLAIN)),
            hasher: blake3::Hasher::new(),
        },
        error: None,
    };
    let opened = open(&mut watched, identities);
    if watched.error.is_none() {
        // Errors are kept in `watched.error`.
        let _ = std::io::copy(&mut watched, &mut std::io::sink());
    }
    if let Some(cut) = watched.error {
        return Named::Cut(cut);
    }
    if watched.inner.hasher.finalize().as_bytes() == name {
        Named::Opened(opened)
    } else {
        Named::Misnamed
    }
}

/// A metadata object's answer, opened (its delay paid) but not yet read.
pub(crate) struct NamedBody {
    key: String,
    name: [u8; 32],
    body: ObjectReader,
}

impl NamedBody {
    /// Opens object `key`, whose name is the BLAKE3 hash `name` of its bytes.
    ///
    /// Fails when the object is missing or the store does not answer.
    pub(crate) async fn open(
        store: &Arc<dyn ObjectStore>,
        key: &str,
        name: [u8; 32],
    ) -> Result<Self, RepoError> {
        Ok(Self {
            key: key.to_owned(),
            name,
            body: store.get_reader(key).await?,
        })
    }

    /// Reads and opens the object with `identity` as its bytes arrive
    /// ([`open_named`]); a body cut off midway is read again whole from
    /// `store`, with the store's retries.
    ///
    /// Fails when the bytes do not match the name or do not open.
    pub(crate) async fn read<T: MetaObject + Send + 'static>(
        self,
        store: &Arc<dyn ObjectStore>,
        identity: &impl KeyRole,
    ) -> Result<T, RepoError> {
        let Self { key, name, body } = self;
        let named = match open_blocking(body, name, identity).await? {
            Named::Cut(cut) => {
                tracing::debug!(%key, error = %cut, "reading an object again whole");
                let cipher = store.get(&key).await?;
                open_blocking(std::io::Cursor::new(cipher), name, identity).await?
            }
            named => named,
        };
        match named {
            Named::Opened(opened) => opened.map_err(|e| e.at(&key)),
            Named::Misnamed => Err(misnamed(&key)),
            // Bytes held whole are never cut off.
            Named::Cut(cut) => Err(RepoError::Undecodable {
                key,
                source: DecodeError::Read(cut),
            }),
        }
    }
}

/// [`open_named`] on the blocking pool.
async fn open_blocking<T: MetaObject + Send + 'static>(
    cipher: impl Read + Send + 'static,
    name: [u8; 32],
    identity: &impl KeyRole,
) -> Result<Named<T>, RepoError> {
    let identity = identity.clone();
    Ok(tokio::task::spawn_blocking(move || {
        open_named(cipher, &name, keys::sealed::Role::age_identities(&identity))
    })
    .await
    .map_err(WorkerError::stopped("reading a metadata object"))?)
}

/// Reads object `key`, whose name is the BLAKE3 hash `name` of its bytes,
/// as [`NamedBody::read`] does.
///
/// Fails when the object is missing, does not match its name, or does not
/// open.
pub(crate) async fn read_named<T: MetaObject + Send + 'static>(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    name: [u8; 32],
    identity: &impl KeyRole,
) -> Result<T, RepoError> {
    NamedBody::open(store, key, name)
        .await?
        .read(store, identity)
        .await
}

/// The largest ciphertext of a plaintext of `plain` bytes: zstd adds a
/// little to what does not compress, age 16 bytes a 64 KiB segment and a
/// header.
fn largest_cipher(plain: usize) -> u64 {
    let plain = plain as u64;
    plain + plain / 64 + (1 << 16)
}

/// A reader that hashes what passes through.
struct Hashed<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// Decompresses (at most `T::MAX_PLAIN` bytes), parses and validates the
/// plaintext of a metadata object. The JSON is parsed as it is
/// decompressed, never held whole: an index object of a million blobs is
/// hundreds of megabytes of JSON.
pub(crate) fn parse<T: MetaObject>(packed: impl Read) -> Result<T, MetaError> {
    let broken = |e: std::io::Error| MetaError::Decode(DecodeError::Read(e));
    let decoder = zstd::stream::read::Decoder::new(packed).map_err(broken)?;
    let mut json = Bounded {
        inner: decoder,
        left: T::MAX_PLAIN as u64,
        exceeded: false,
    };
    let parsed = serde_json::from_reader::<_, T>(std::io::BufReader::new(&mut json));
    if json.exceeded {
        return Err(MetaError::Format(format!(
            "it decompresses to more than {} bytes",
            T::MAX_PLAIN
        )));
    }
    let value = parsed.map_err(|e| MetaError::Decode(DecodeError::Json(e)))?;
    value.validate().map_err(MetaError::Format)?;
    Ok(value)
}

/// A reader that keeps the first error of `inner` (age's, for a damaged
/// payload; the store's, for a body cut off) and passes a copy on, so that
/// the error can be told from the decompressor's or the parser's
/// afterwards. An interrupted read is no error: it is passed on to retry.
struct Watched<R> {
    inner: R,
    error: Option<std::io::Error>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::Interrupted {
                return e;
            }
            let passed = std::io::Error::new(e.kind(), e.to_string());
            self.error.get_or_insert(e);
            passed
        })
    }
}

/// A reader that fails once more than `left` bytes were read from `inner`.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        match self.left.checked_sub(read as u64) {
            Some(left) => {
                self.left = left;
                Ok(read)
            }
            None => {
                self.exceeded = true;
                Err(std::io::Error::other(
                    "the plaintext is larger than allowed",
                ))
            }
        }
    }
}

/// Checks that an object's bytes hash to the id in its name.
pub(crate) fn verify_name(key: &str, id: &[u8; 32], bytes: &[u8]) -> Result<(), RepoError> {
    if &content_hash(bytes) == id {
        Ok(())
    } else {
        Err(misnamed(key))
    }
}

/// The error for object `key`, whose content does not match its name.
pub(crate) fn misnamed(key: &str) -> RepoError {
    RepoError::Damaged {
        key: key.into(),
        reason: "its content does not match its name (BLAKE3)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
    struct Small(Vec<u8>);

    impl MetaObject for Small {
        const MAX_PLAIN: usize = 1000;
    }

    #[test]
    fn decompression_stops_at_the_kind_s_largest() -> anyhow::Result<()> {
        let fits = zstd::bulk::compress(b"[1,2,3]", 3)?;
        assert_eq!(parse::<Small>(&fits[..]).ok(), Some(Small(vec![1, 2, 3])));
        // A bomb: 64 MiB of spaces compresses to a few KiB.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..64 {
            std::io::Write::write_all(&mut encoder, &spaces)?;
        }
        let bomb = encoder.finish()?;
        assert!(bomb.len() < 1 << 20);
        match parse::<Small>(&bomb[..]) {
            Err(MetaError::Format(reason)) => assert!(reason.contains("more than 1000 bytes")),
            other => anyhow::bail!("the bomb was not refused: {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn a_damaged_payload_is_a_decryption_error_not_a_parse_error() -> anyhow::Result<()> {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let sealed = seal(
            &Small((0..200).collect()),
            std::iter::once(&recipient as &dyn age::Recipient),
        )?;
        let identities = || std::iter::once(&identity as &dyn age::Identity);
        assert_eq!(
            open::<Small>(&sealed[..], identities()).ok(),
            Some(Small((0..200).collect()))
        );

        let start = usize::try_from(crypt::payload_offset(&sealed).unwrap_or(0))?;
        let mut flipped = sealed.clone();
        flipped[start + 3] ^= 1;
        let cut = &sealed[..sealed.len() - 1];
        for damaged in [&flipped[..], cut] {
            match open::<Small>(damaged, identities()) {
                Err(MetaError::Crypt(CryptError::DamagedPayload(_))) => {}
                other => anyhow::bail!("damage not named as such: {other:?}"),
            }
        }
        Ok(())
    }

    /// A reader that gives `bytes`, then fails as a reset connection does.
    struct CutAfter<'a>(&'a [u8]);

    impl Read for CutAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::ErrorKind::ConnectionReset.into());
            }
            let read = self.0.read(buf)?;
            Ok(read)
        }
    }

    #[test]
    fn an_object_read_as_it_arrives_counts_only_when_it_matches_its_name() -> anyhow::Result<()> {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let value = Small((0..200).collect());
        let sealed = seal(&value, std::iter::once(&recipient as &dyn age::Recipient))?;
        let name = content_hash(&sealed);
        let identities = || std::iter::once(&identity as &dyn age::Identity);

        match open_named::<Small>(&sealed[..], &name, identities()) {
            Named::Opened(Ok(opened)) => assert_eq!(opened, value),
            _ => anyhow::bail!("a whole object did not open"),
        }
        let mut other_name = name;
        other_name[0] ^= 1;
        assert!(matches!(
            open_named::<Small>(&sealed[..], &other_name, identities()),
            Named::Misnamed
        ));
        let longer = [&sealed[..], b"trailing bytes"].concat();
        assert!(
            matches!(
                open_named::<Small>(&longer[..], &name, identities()),
                Named::Misnamed
            ),
            "bytes after the object are part of what the name binds"
        );
        for cut_at in [10, sealed.len() / 2, sealed.len() - 1, sealed.len()] {
            match open_named::<Small>(CutAfter(&sealed[..cut_at]), &name, identities()) {
                Named::Cut(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
                _ => anyhow::bail!("a body cut after {cut_at} bytes was not seen as cut"),
            }
        }
        Ok(())
    }
}
