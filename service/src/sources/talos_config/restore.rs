//! Restoring the Talos configuration: every file of the snapshot into a
//! folder, files with mode 0600 and folders 0700 (they hold the cluster's
//! CAs and keys), and a check that the YAML files parse.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::repo::id::BlobId;
use crate::repo::reader::BlobReader;
use crate::restore::RestoreError;
use crate::restore::files::{RestoreOptions, RestoreProgress, RestoreReport, restore};

/// Restores the whole snapshot into `target` and makes it private.
///
/// Fails as [`restore`] does, or when modes cannot be set.
pub async fn restore_private(
    reader: &BlobReader,
    root: BlobId,
    target: &Path,
    force: bool,
    progress: Arc<RestoreProgress>,
) -> Result<RestoreReport, RestoreError> {
    let report = restore(
        reader,
        root,
        "",
        target,
        &RestoreOptions {
            force,
            ..RestoreOptions::default()
        },
        progress,
    )
    .await?;
    make_private(target)?;
    Ok(report)
}

/// Sets mode 0600 on every file and 0700 on every folder under `dir`.
fn make_private(dir: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(dir)? {
        let metadata =
            std::fs::symlink_metadata(&entry).map_err(RestoreError::io("reading", &entry))?;
        let mode = if metadata.is_dir() {
            0o700
        } else if metadata.is_file() {
            0o600
        } else {
            continue;
        };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode))
            .map_err(RestoreError::io("setting the mode of", &entry))?;
    }
    Ok(())
}

/// What a check of restored Talos files found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct YamlCheck {
    /// Regular files found.
    pub files: u64,
    /// YAML files that parsed.
    pub yaml_files: u64,
    /// Files that did not parse, with the parser's message.
    pub problems: Vec<String>,
}

/// Whether a file is checked as YAML: `*.yaml`, `*.yml` and talosconfigs.
fn is_yaml(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".yaml") || name.ends_with(".yml") || name == "talosconfig"
}

/// Parses every YAML file under `dir` (every document of it).
///
/// Fails only when the folder cannot be listed.
pub fn check_yaml(dir: &Path) -> Result<YamlCheck, RestoreError> {
    let mut check = YamlCheck::default();
    for path in walk(dir)? {
        if !path.is_file() || path.is_symlink() {
            continue;
        }
        check.files += 1;
        if !is_yaml(&path) {
            continue;
        }
        let shown = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                check
                    .problems
                    .push(format!("{shown}: cannot be read ({e})"));
                continue;
            }
        };
        let parsed: Result<Vec<serde_yaml_ng::Value>, _> =
            serde_yaml_ng::Deserializer::from_str(&text)
                .map(serde::Deserialize::deserialize)
                .collect();
        match parsed {
            Ok(_) => check.yaml_files += 1,
            Err(e) => check
                .problems
                .push(format!("{shown}: not valid YAML ({e})")),
        }
    }
    Ok(check)
}

/// Every entry under `dir`, parents before children.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, RestoreError> {
    let mut out = Vec::new();
    let mut queue = vec![dir.to_owned()];
    while let Some(current) = queue.pop() {
        for entry in std::fs::read_dir(&current).map_err(RestoreError::io("listing", &current))? {
            let entry = entry.map_err(RestoreError::io("listing", &current))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_yaml_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("secrets.yaml"),
            "cluster:\n  id: x\n---\na: 1\n",
        )?;
        std::fs::write(dir.path().join("worker.yaml"), "a: [1\n")?;
        std::fs::write(dir.path().join("notes.txt"), "a: [1\n")?;
        let check = check_yaml(dir.path())?;
        assert_eq!((check.files, check.yaml_files), (3, 1));
        assert_eq!(check.problems.len(), 1);
        assert!(
            check.problems[0].starts_with("worker.yaml"),
            "{:?}",
            check.problems
        );
        make_private(dir.path())?;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("notes.txt"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Ok(())
    }
}
