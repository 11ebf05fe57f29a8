//! The configuration `lifeboatd serve` writes on a first start without
//! one: a local repository beside it, keys made on first use, and one
//! directory job backing up the folder `data` every 15 minutes, with prune
//! and check. It is what the README's first command runs.

use std::path::Path;

use super::{Config, ConfigError};

/// The configuration `lifeboatd serve` writes on a first start without one.
pub const STARTER_CONFIG: &str = include_str!("starter.toml");

impl Config {
    /// Writes [`STARTER_CONFIG`] to `path` and makes the `data` folder its
    /// job backs up (with a note in it), unless `path` exists; returns
    /// whether it wrote them.
    ///
    /// Fails when the files cannot be written.
    pub fn write_starter(path: &Path) -> Result<bool, ConfigError> {
        let write = |target: &Path, text: &str| {
            if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(target)
                .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        };
        match write(path, STARTER_CONFIG) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let note = path.with_file_name("data").join("README.txt");
        match write(
            &note,
            "lifeboat backs up this folder (job \"data\" in lifeboat.toml).\n",
        ) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(ConfigError::Read { path: note, source }),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_config_is_written_once_and_loads() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let starter = dir.path().join("new/lifeboat.toml");
        assert!(Config::write_starter(&starter)?);
        assert!(
            !Config::write_starter(&starter)?,
            "an existing config is kept"
        );
        let loaded = Config::load_with_schedules(&starter)?;
        assert_eq!(loaded.jobs.len(), 1);
        assert!(loaded.prune.is_some() && loaded.check.is_some());
        assert!(dir.path().join("new/data/README.txt").is_file());
        assert_eq!(loaded.token_file(), dir.path().join("new/state/api-token"));
        Ok(())
    }
}
