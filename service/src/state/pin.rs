//! The repository a service writes to, pinned on first use.
//!
//! `lifeboatd` records the repository's id, the hashes of its `config` and
//! `keys` objects and its recipients the first time it opens it, and from
//! then on refuses a repository that differs: a bucket writer without any
//! key could otherwise replace `config` and `keys` with ones that add their
//! own restore recipient, and every later backup would be readable by them.
//! The pin lives in `<state_dir>/repository.json`; deleting it (after a
//! deliberate move to a new repository) pins the next one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::repo::Fingerprint;

/// The file name of the pin in the state folder.
pub const PIN_FILE: &str = "repository.json";

/// What was pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryPin {
    /// The repository URL it was pinned at.
    pub url: String,
    /// Its id and the hashes of `config` and `keys`.
    pub fingerprint: Fingerprint,
    /// Its restore recipients (`age1…`).
    pub restore_recipients: Vec<String>,
    /// When it was pinned.
    pub pinned: chrono::DateTime<chrono::Utc>,
}

/// Why the pin could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The file could not be read or written.
    #[error("{action} the repository pin {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a pin.
    #[error(
        "the repository pin {path} is unreadable ({source}); restore it from a backup of the \
         state folder, or delete it to pin the repository as it is now"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the pin in `dir`, if there is one.
///
/// Fails when it exists but cannot be read or parsed.
pub fn load(dir: &Path) -> Result<Option<RepositoryPin>, PinError> {
    let path = dir.join(PIN_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PinError::Io {
                action: "reading",
                path,
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| PinError::Malformed { path, source })
}

/// Writes the pin into `dir` atomically (a temporary file renamed over it).
///
/// Fails when the folder cannot be written.
pub fn save(dir: &Path, pin: &RepositoryPin) -> Result<(), PinError> {
    let path = dir.join(PIN_FILE);
    let io = |action| {
        let path = path.clone();
        move |source| PinError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating the folder of"))?;
    let json = serde_json::to_vec_pretty(pin).map_err(|source| PinError::Malformed {
        path: path.clone(),
        source,
    })?;
    let temporary = dir.join(format!(".{PIN_FILE}.tmp"));
    std::fs::write(&temporary, json).map_err(io("writing"))?;
    std::fs::rename(&temporary, &path).map_err(io("writing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_round_trips_and_a_damaged_one_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(load(dir.path())?, None);
        let pin = RepositoryPin {
            url: "s3://bucket/lifeboat".into(),
            fingerprint: Fingerprint {
                id: "ab".repeat(16),
                config_blake3: "01".repeat(32),
                keys_blake3: "02".repeat(32),
            },
            restore_recipients: vec!["age1example".into()],
            pinned: chrono::Utc::now(),
        };
        save(dir.path(), &pin)?;
        assert_eq!(load(dir.path())?, Some(pin));
        std::fs::write(dir.path().join(PIN_FILE), b"{")?;
        let damaged = load(dir.path()).expect_err("a damaged pin must not load");
        assert!(damaged.to_string().contains(PIN_FILE), "{damaged}");
        Ok(())
    }
}
