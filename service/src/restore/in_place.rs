//! Where a restore back at host paths may write.
//!
//! The host paths of a volumes or directory snapshot (the manifest's
//! `host_path`s, the folders of the tree) come from the repository, which
//! the service key can write: one could say `/etc`. So every such path is
//! checked before use — absolute and normalised: no `.`, `..` or empty
//! components, no NUL, not `/` itself ([`check_host_path`]) — and an
//! in-place restore writes only to a path that is the live
//! PersistentVolume's path (when the cluster could be asked) or lies under a
//! root the operator named with `--allow-root` ([`InPlacePolicy`]).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Why a host path from a snapshot is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPathError {
    /// The path is not absolute and normalised.
    #[error(
        "the snapshot's host path {path:?} is not an absolute, normalised path (no `.`, `..`, empty components or NUL, not `/`); the snapshot is damaged or forged, restore it into a folder with --target and look at it"
    )]
    NotNormal {
        /// The path as the snapshot has it.
        path: String,
    },
    /// The path is neither the live volume's path nor under an allowed root.
    #[error(
        "refused to restore {unit} in place at {path}: {why}; if that is where it belongs, pass --allow-root {path} (or a folder above it)"
    )]
    NotAllowed {
        /// The unit (`NAMESPACE/PVC` or the folder).
        unit: String,
        /// The path.
        path: String,
        /// What it was compared with.
        why: String,
    },
}

/// Checks that `path`, a host path read from a snapshot, is absolute and
/// normalised.
///
/// Fails with [`HostPathError::NotNormal`] otherwise.
pub fn check_host_path(path: &str) -> Result<(), HostPathError> {
    let not_normal = || HostPathError::NotNormal { path: path.into() };
    let rest = path.strip_prefix('/').ok_or_else(not_normal)?;
    let bad = |part: &str| part.is_empty() || part == "." || part == ".." || part.contains('\0');
    if rest.split('/').any(bad) {
        return Err(not_normal());
    }
    Ok(())
}

/// What an in-place restore may write to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InPlacePolicy {
    /// Folders the operator allowed (`--allow-root`): anything under them.
    pub allowed_roots: Vec<PathBuf>,
    /// The paths of the live PersistentVolumes by unit (`NAMESPACE/PVC`),
    /// when the cluster answered; `None` when it could not be asked.
    pub live_paths: Option<BTreeMap<String, String>>,
}

impl InPlacePolicy {
    /// Whether `unit` may be restored at its host `path`.
    ///
    /// Fails when the path is not normalised, or is neither its live
    /// volume's path nor under an allowed root, saying which flag allows it.
    pub fn check(&self, unit: &str, path: &str) -> Result<(), HostPathError> {
        check_host_path(path)?;
        let live = self.live_paths.as_ref().and_then(|live| live.get(unit));
        if live.is_some_and(|live| live == path) || self.under_allowed_root(path) {
            return Ok(());
        }
        let roots = if self.allowed_roots.is_empty() {
            "no --allow-root was given".to_owned()
        } else {
            format!(
                "it is not under --allow-root {}",
                self.allowed_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let why = match (&self.live_paths, live) {
            (None, _) => format!("the cluster could not be asked for its volume, and {roots}"),
            (Some(_), None) => format!("the cluster has no such volume, and {roots}"),
            (Some(_), Some(live)) => format!("the live volume is at {live}, and {roots}"),
        };
        Err(HostPathError::NotAllowed {
            unit: unit.into(),
            path: path.into(),
            why,
        })
    }

    fn under_allowed_root(&self, path: &str) -> bool {
        let path = Path::new(path);
        self.allowed_roots.iter().any(|root| {
            let root: PathBuf = root
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect();
            root.is_absolute() && path.starts_with(&root)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_must_be_absolute_and_normalised() {
        for good in ["/var/openebs/local/pvc-1", "/mnt/user/media", "/a"] {
            assert_eq!(check_host_path(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/",
            "var/lib",
            "/var/../etc",
            "/var/./lib",
            "/var//lib",
            "/var/lib/",
            "/a\0b",
            "/..",
        ] {
            assert!(check_host_path(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn in_place_writes_only_to_live_paths_or_under_allowed_roots() {
        let mut policy = InPlacePolicy {
            allowed_roots: vec!["/mnt/user/".into()],
            live_paths: None,
        };
        assert_eq!(policy.check("/mnt/user/media", "/mnt/user/media"), Ok(()));
        assert!(policy.check("/mnt/username", "/mnt/username").is_err());
        let refused = policy.check("apps/db", "/etc").err().map(|e| e.to_string());
        let refused = refused.unwrap_or_default();
        assert!(
            refused.contains("/etc") && refused.contains("--allow-root"),
            "{refused}"
        );
        assert!(policy.check("apps/db", "/mnt/user/../../etc").is_err());

        policy.live_paths = Some(BTreeMap::from([(
            "apps/db".to_owned(),
            "/var/openebs/local/pvc-1".to_owned(),
        )]));
        assert_eq!(policy.check("apps/db", "/var/openebs/local/pvc-1"), Ok(()));
        let moved = policy.check("apps/db", "/etc").err().map(|e| e.to_string());
        assert!(
            moved
                .unwrap_or_default()
                .contains("/var/openebs/local/pvc-1"),
            "the refusal names the live path"
        );
        assert!(
            policy
                .check("apps/web", "/var/openebs/local/pvc-1")
                .is_err()
        );
    }
}
