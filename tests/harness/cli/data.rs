//! Test data and a local repository's objects: seeded random bytes and
//! text, writing files, flipping bits, listing objects.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Deterministic test data (SplitMix64): the same seed gives the same bytes
/// on every machine and with every version of every crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` incompressible bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// About `len` bytes of compressible text: lines of words from a small
    /// vocabulary, each line numbered so chunks rarely repeat.
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "etcd",
            "snapshot",
            "pack",
            "blob",
            "index",
            "restore",
            "talos",
            "volume",
            "cluster",
            "backup",
            "chunk",
            "lifeboat",
            "retention",
            "prune",
            "bucket",
            "age",
            "zstd",
        ];
        let mut out = Vec::with_capacity(len + 128);
        let mut line = 0u64;
        while out.len() < len {
            line += 1;
            out.extend_from_slice(format!("{line:08} ").as_bytes());
            for _ in 0..8 + self.below(8) {
                out.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
                out.push(b' ');
            }
            out.push(b'\n');
        }
        out.truncate(len);
        out
    }
}

/// Writes `data` to `path`, creating its parent folders.
///
/// Fails when it cannot be written.
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data)?;
    Ok(())
}

/// Inverts bit `bit` (0–7) of the byte at `offset` in `path`; doing it
/// twice restores the file.
///
/// Fails when the file is shorter or cannot be written.
pub fn flip_bit(path: &Path, offset: u64, bit: u8) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)
        .with_context(|| format!("{} is shorter than {offset} bytes", path.display()))?;
    byte[0] ^= 1 << (bit & 7);
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&byte)?;
    file.sync_all()?;
    Ok(())
}

/// The objects of a local repository under `prefix` (`data`, `index`,
/// `snapshots`) whose names are 64-digit hex ids, sorted; leftover
/// temporary files are not objects.
///
/// Fails when the folder cannot be listed.
pub fn objects(repo: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![repo.join(prefix)];
    while let Some(dir) = stack.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for item in listing {
            let item = item?;
            let path = item.path();
            if item.file_type()?.is_dir() {
                stack.push(path);
            } else if item
                .file_name()
                .to_str()
                .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The object key of a local repository file (`data/ab/ab…`).
pub fn object_key(repo: &Path, object: &Path) -> String {
    object
        .strip_prefix(repo)
        .unwrap_or(object)
        .to_string_lossy()
        .into_owned()
}
