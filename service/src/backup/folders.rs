//! What a folder backup covers: the configured folders, checked and
//! arranged by path, and each folder's exclude patterns.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::BackupError;

/// One folder to back up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Folder {
    /// The folder.
    pub path: PathBuf,
    /// Glob patterns to leave out: without a `/` they match a name anywhere,
    /// with one they match the path relative to the folder.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The folders arranged by path: each name is a folder to archive or an
/// intermediate directory holding more.
#[derive(Debug, Default)]
pub(super) struct Layout {
    pub(super) children: BTreeMap<Vec<u8>, LayoutEntry>,
}

#[derive(Debug)]
pub(super) enum LayoutEntry {
    Folder(PathBuf, Excludes),
    Parent(Layout),
}

pub(super) fn prepare(folders: &[Folder]) -> Result<Layout, BackupError> {
    let mut layout = Layout::default();
    for folder in folders {
        let fail = |reason: String| BackupError::Source {
            path: folder.path.display().to_string(),
            reason,
        };
        let (path, excludes) = checked(folder)?;
        let names: Vec<&OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let Some((last, parents)) = names.split_last() else {
            return Err(fail(
                "back up the folders under / rather than / itself".into(),
            ));
        };
        let mut level = &mut layout;
        for name in parents {
            let entry = level
                .children
                .entry(name.as_bytes().to_vec())
                .or_insert_with(|| LayoutEntry::Parent(Layout::default()));
            level = match entry {
                LayoutEntry::Parent(inner) => inner,
                LayoutEntry::Folder(..) => {
                    return Err(fail("it lies inside another folder of the job".into()));
                }
            };
        }
        if level.children.contains_key(last.as_bytes()) {
            return Err(fail(
                "it is listed twice, or holds another folder of the job".into(),
            ));
        }
        level.children.insert(
            last.as_bytes().to_vec(),
            LayoutEntry::Folder(path.clone(), excludes),
        );
    }
    Ok(layout)
}

/// `folder`'s absolute path and compiled excludes.
///
/// Fails when it is not a readable directory or a pattern is no glob.
pub(super) fn checked(folder: &Folder) -> Result<(PathBuf, Excludes), BackupError> {
    let unreadable = |source| BackupError::Unreadable {
        path: folder.path.display().to_string(),
        source,
    };
    let path = std::path::absolute(&folder.path).map_err(unreadable)?;
    let meta = std::fs::metadata(&path).map_err(unreadable)?;
    if !meta.is_dir() {
        return Err(BackupError::Source {
            path: folder.path.display().to_string(),
            reason: "it is not a directory".into(),
        });
    }
    let excludes =
        Excludes::new(&folder.exclude).map_err(|(pattern, source)| BackupError::Exclude {
            path: folder.path.display().to_string(),
            pattern,
            source,
        })?;
    Ok((path, excludes))
}

/// Exclude patterns of one folder.
#[derive(Debug)]
pub(super) struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    /// Compiles `patterns`.
    ///
    /// Fails with the pattern that is not a glob, or with all of them when
    /// only their set fails to compile.
    fn new(patterns: &[String]) -> Result<Self, (String, globset::Error)> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for pattern in patterns {
            let glob =
                Glob::new(pattern.trim_start_matches('/')).map_err(|e| (pattern.clone(), e))?;
            if pattern.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |set: GlobSetBuilder| set.build().map_err(|e| (patterns.join(", "), e));
        Ok(Self {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    pub(super) fn excludes(&self, name: &OsStr, relative: &Path) -> bool {
        self.names.is_match(name) || self.paths.is_match(relative)
    }
}
