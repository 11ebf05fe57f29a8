//! Key material, one type per role.
//!
//! - [`RestoreIdentity`]: the operator's offline age identity. Decrypts
//!   everything: packs (file data and trees), indexes, snapshots, keys.
//! - [`ServiceIdentity`]: the service's age identity. Decrypts only indexes,
//!   snapshot summaries and the keys object: enough to deduplicate, list and
//!   prune, never enough to read file contents or names.
//! - [`Recipients`]: the public halves. Writing takes only these, so the
//!   write path cannot decrypt what it writes.
//! - [`ChunkIdKey`]: the per-repository secret that keys BLAKE3 chunk ids.
//!
//! Identity files are plain age identity files (`AGE-SECRET-KEY-1…` lines,
//! as `age-keygen` and SOPS write them), optionally passphrase-encrypted with
//! `age -p`.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::ExposeSecret;
pub use age::secrecy::SecretString;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// What can go wrong with keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An identity file could not be read.
    #[error("cannot read identity file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An identity file holds no usable X25519 identity.
    #[error(
        "{path} holds no age X25519 identity (AGE-SECRET-KEY-1…); \
         create one with `lifeboat keys generate` or `age-keygen`"
    )]
    NoIdentity {
        /// The file.
        path: PathBuf,
    },
    /// A passphrase-protected identity file could not be decrypted.
    #[error(
        "cannot decrypt identity file {path}: {source}; check the passphrase (LIFEBOAT_PASSPHRASE)"
    )]
    Passphrase {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PassphraseError,
    },
    /// A recipient string is not an age X25519 recipient.
    #[error("{value:?} is not an age recipient (age1…): {reason}")]
    BadRecipient {
        /// The string as given.
        value: String,
        /// The parser's reason.
        reason: String,
    },
    /// Writing a new identity file failed.
    #[error("cannot write identity file {path}: {source}; it must not exist yet")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a passphrase-protected identity file did not open.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// No passphrase was given.
    #[error("the file is passphrase-protected")]
    Missing,
    /// The file is not an age file, or the passphrase does not open it.
    #[error(transparent)]
    Decrypt(#[from] age::DecryptError),
    /// The decrypted identities could not be read (damaged, or not text).
    #[error(transparent)]
    Read(#[from] std::io::Error),
}

/// A set of age X25519 identities loaded from one identity file.
struct IdentitySet {
    identities: Vec<age::x25519::Identity>,
    origin: PathBuf,
}

impl IdentitySet {
    fn from_file(path: &Path, passphrase: Option<&SecretString>) -> Result<Self, KeyError> {
        let raw = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut text = if is_age_file(&raw) {
            decrypt_with_passphrase(path, &raw, passphrase)?
        } else {
            String::from_utf8_lossy(&raw).into_owned()
        };
        let identities: Vec<_> = text
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("AGE-SECRET-KEY-1"))
            .filter_map(|line| age::x25519::Identity::from_str(line).ok())
            .collect();
        text.zeroize();
        if identities.is_empty() {
            return Err(KeyError::NoIdentity {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            identities,
            origin: path.to_owned(),
        })
    }

    fn recipients(&self) -> Vec<Recipient> {
        self.identities
            .iter()
            .map(|identity| Recipient(identity.to_public()))
            .collect()
    }
}

/// Whether the identity file at `path` is passphrase-protected (an age
/// file rather than plain identity lines). An unreadable file counts as not.
pub fn needs_passphrase(path: &Path) -> bool {
    let mut start = [0u8; 40];
    std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut start))
        .is_ok_and(|n| is_age_file(&start[..n]))
}

fn is_age_file(raw: &[u8]) -> bool {
    raw.starts_with(b"age-encryption.org/v1") || raw.starts_with(b"-----BEGIN AGE ENCRYPTED FILE")
}

fn decrypt_with_passphrase(
    path: &Path,
    raw: &[u8],
    passphrase: Option<&SecretString>,
) -> Result<String, KeyError> {
    let fail = |cause: PassphraseError| KeyError::Passphrase {
        path: path.to_owned(),
        source: cause,
    };
    let passphrase = passphrase.ok_or_else(|| fail(PassphraseError::Missing))?;
    let identity = age::scrypt::Identity::new(passphrase.clone());
    let reader = age::armor::ArmoredReader::new(raw);
    let decryptor = age::Decryptor::new(reader).map_err(|e| fail(e.into()))?;
    let mut plain = String::new();
    decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| fail(e.into()))?
        .read_to_string(&mut plain)
        .map_err(|e| fail(e.into()))?;
    Ok(plain)
}

macro_rules! identity_role {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Arc<IdentitySet>);

        impl $name {
            /// Loads the identity file at `path`; `passphrase` opens a file
            /// encrypted with `age -p`.
            ///
            /// Fails when the file is unreadable, holds no X25519 identity, or
            /// is passphrase-protected and the passphrase is missing or wrong.
            pub fn from_file(path: &Path, passphrase: Option<&SecretString>) -> Result<Self, KeyError> {
                IdentitySet::from_file(path, passphrase).map(|set| Self(Arc::new(set)))
            }

            /// The public recipients of this identity.
            pub fn recipients(&self) -> Vec<Recipient> {
                self.0.recipients()
            }

            /// The identities, for age decryption.
            pub(crate) fn age_identities(&self) -> impl Iterator<Item = &dyn age::Identity> {
                self.0.identities.iter().map(|i| i as &dyn age::Identity)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}([redacted] from {})", stringify!($name), self.0.origin.display())
            }
        }
    };
}

identity_role!(
    /// The operator's offline identity: decrypts every object.
    RestoreIdentity
);
identity_role!(
    /// The service's identity: decrypts indexes, snapshot summaries and the
    /// keys object only.
    ServiceIdentity
);

/// Either identity, when the role is known only at run time (a key file
/// given on the command line): what listing, checking and prune accept.
#[derive(Debug, Clone)]
pub enum AnyIdentity {
    /// The restore identity.
    Restore(RestoreIdentity),
    /// The service identity.
    Service(ServiceIdentity),
}

impl AnyIdentity {
    /// Loads an identity file whose role is not known yet; the repository
    /// tells which it is by the recipients it holds.
    pub fn from_file(
        path: &Path,
        passphrase: Option<&SecretString>,
    ) -> Result<IdentityFile, KeyError> {
        IdentitySet::from_file(path, passphrase).map(IdentityFile)
    }

    /// The restore identity, when this is one.
    pub fn as_restore(&self) -> Option<&RestoreIdentity> {
        match self {
            Self::Restore(key) => Some(key),
            Self::Service(_) => None,
        }
    }
}

/// The role of the key a repository is unlocked with
/// ([`UnlockedRepository`](super::UnlockedRepository)'s type parameter):
/// [`ServiceIdentity`] (writes, deduplicates, prunes; reads no data),
/// [`RestoreIdentity`] (reads everything) or [`AnyIdentity`] (either,
/// known at run time). Sealed: there are no other roles.
pub trait KeyRole: sealed::Role + Clone + fmt::Debug + Send + Sync + 'static {}

impl KeyRole for RestoreIdentity {}
impl KeyRole for ServiceIdentity {}
impl KeyRole for AnyIdentity {}

pub(super) mod sealed {
    use super::{AnyIdentity, RestoreIdentity, ServiceIdentity};

    /// What the repository needs of a key role; not nameable outside it.
    pub trait Role {
        /// The identities, for age decryption of metadata objects.
        fn age_identities(&self) -> Box<dyn Iterator<Item = &dyn age::Identity> + '_>;
        /// The restore identity, when this role has one.
        fn restore_identity(&self) -> Option<&RestoreIdentity>;
    }

    impl Role for RestoreIdentity {
        fn age_identities(&self) -> Box<dyn Iterator<Item = &dyn age::Identity> + '_> {
            Box::new(RestoreIdentity::age_identities(self))
        }
        fn restore_identity(&self) -> Option<&RestoreIdentity> {
            Some(self)
        }
    }

    impl Role for ServiceIdentity {
        fn age_identities(&self) -> Box<dyn Iterator<Item = &dyn age::Identity> + '_> {
            Box::new(ServiceIdentity::age_identities(self))
        }
        fn restore_identity(&self) -> Option<&RestoreIdentity> {
            None
        }
    }

    impl Role for AnyIdentity {
        fn age_identities(&self) -> Box<dyn Iterator<Item = &dyn age::Identity> + '_> {
            match self {
                Self::Restore(key) => Role::age_identities(key),
                Self::Service(key) => Role::age_identities(key),
            }
        }
        fn restore_identity(&self) -> Option<&RestoreIdentity> {
            self.as_restore()
        }
    }
}

/// An identity file loaded before its role is known.
pub struct IdentityFile(IdentitySet);

impl IdentityFile {
    /// The public recipients of this identity.
    pub fn recipients(&self) -> Vec<Recipient> {
        self.0.recipients()
    }

    /// Takes the role of restore identity.
    pub fn into_restore(self) -> RestoreIdentity {
        RestoreIdentity(Arc::new(self.0))
    }

    /// Takes the role of service identity.
    pub fn into_service(self) -> ServiceIdentity {
        ServiceIdentity(Arc::new(self.0))
    }
}

impl fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IdentityFile([redacted] from {})",
            self.0.origin.display()
        )
    }
}

/// One public age X25519 recipient (`age1…`).
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(age::x25519::Recipient);

impl Recipient {
    pub(crate) fn as_age(&self) -> &dyn age::Recipient {
        &self.0
    }
}

impl FromStr for Recipient {
    type Err = KeyError;

    fn from_str(value: &str) -> Result<Self, KeyError> {
        age::x25519::Recipient::from_str(value.trim())
            .map(Self)
            .map_err(|reason| KeyError::BadRecipient {
                value: value.to_owned(),
                reason: reason.to_string(),
            })
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who the repository's objects are encrypted to: public keys only, so code
/// holding this can write but never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipients {
    /// The restore recipients: every object.
    pub restore: Vec<Recipient>,
    /// The service recipients: indexes, snapshot summaries and keys.
    pub service: Vec<Recipient>,
}

impl Recipients {
    /// Recipients of objects only the restore key may read (packs).
    pub(crate) fn restore_only(&self) -> impl Iterator<Item = &dyn age::Recipient> {
        self.restore.iter().map(Recipient::as_age)
    }

    /// Recipients of objects both keys read (indexes, snapshots, keys).
    pub(crate) fn both(&self) -> impl Iterator<Item = &dyn age::Recipient> {
        self.restore
            .iter()
            .chain(&self.service)
            .map(Recipient::as_age)
    }
}

/// The per-repository secret keying BLAKE3 chunk ids, so that ids reveal
/// nothing about content to someone without it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChunkIdKey([u8; 32]);

impl ChunkIdKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes, for the keys object.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The keyed BLAKE3 hash of `data`.
    pub fn hash(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }
}

impl fmt::Debug for ChunkIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkIdKey([redacted])")
    }
}

/// Generates a new X25519 identity and writes it to `path` (mode 0600, which
/// must not exist yet), passphrase-encrypted when `passphrase` is given.
/// Returns its recipient.
///
/// Fails when the file exists or cannot be written.
pub fn generate_identity_file(
    path: &Path,
    passphrase: Option<&SecretString>,
) -> Result<Recipient, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let secret = identity.to_string();
    let mut body = format!(
        "# lifeboat identity, created {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        secret.expose_secret()
    );
    let fail = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let written = match passphrase {
        None => file.write_all(body.as_bytes()),
        Some(passphrase) => {
            let encryptor = age::Encryptor::with_user_passphrase(passphrase.clone());
            let armored =
                age::armor::ArmoredWriter::wrap_output(&mut file, age::armor::Format::AsciiArmor)
                    .map_err(fail)?;
            encryptor.wrap_output(armored).and_then(|mut writer| {
                writer.write_all(body.as_bytes())?;
                writer.finish()?.finish()?;
                Ok(())
            })
        }
    };
    body.zeroize();
    written.and_then(|()| file.sync_all()).map_err(fail)?;
    Ok(Recipient(recipient))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_file_loads_with_and_without_passphrase() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let plain = dir.path().join("plain.key");
        let recipient = generate_identity_file(&plain, None)?;
        let loaded = RestoreIdentity::from_file(&plain, None)?;
        assert_eq!(loaded.recipients(), vec![recipient]);
        assert!(format!("{loaded:?}").contains("[redacted]"));

        let locked = dir.path().join("locked.key");
        let pass = SecretString::from("correct horse".to_owned());
        let recipient = generate_identity_file(&locked, Some(&pass))?;
        assert!(!std::fs::read_to_string(&locked)?.contains("AGE-SECRET-KEY"));
        assert_eq!(
            RestoreIdentity::from_file(&locked, Some(&pass))?.recipients(),
            vec![recipient]
        );
        let wrong = SecretString::from("wrong".to_owned());
        assert!(matches!(
            RestoreIdentity::from_file(&locked, Some(&wrong)),
            Err(KeyError::Passphrase {
                source: PassphraseError::Decrypt(_),
                ..
            })
        ));
        assert!(matches!(
            generate_identity_file(&plain, None),
            Err(KeyError::Write { .. })
        ));
        Ok(())
    }

    #[test]
    fn chunk_ids_depend_on_the_key() {
        let (a, b) = (ChunkIdKey::generate(), ChunkIdKey::generate());
        assert_eq!(a.hash(b"x"), a.hash(b"x"));
        assert_ne!(a.hash(b"x"), b.hash(b"x"));
        assert_eq!(format!("{a:?}"), "ChunkIdKey([redacted])");
    }
}
