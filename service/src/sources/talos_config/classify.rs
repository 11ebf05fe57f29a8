//! Recognising Talos files by content: the secrets bundle, talosconfigs,
//! machine configs (control plane or worker) and patches, from their
//! top-level YAML keys — no YAML parser needed, and a file's name does not
//! have to follow any convention (the usual names count too).

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{Findings, TalosConfigError};

/// Files larger than this are stored but not inspected (Talos files are
/// tens of KiB).
const INSPECT_LIMIT: u64 = 4 * 1024 * 1024;

/// Folder levels below `dir` that are inspected.
const INSPECT_DEPTH: usize = 4;

/// What a Talos file is, read from its top-level YAML keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TalosFile {
    /// The secrets bundle (`cluster`, `secrets`, `trustdinfo`, `certs`).
    SecretsBundle,
    /// A talosconfig (`context`, `contexts`).
    Talosconfig,
    /// A complete control-plane (or `init`) machine config.
    ControlPlaneConfig,
    /// A complete worker machine config.
    WorkerConfig,
    /// A machine config whose type could not be read.
    MachineConfig,
    /// A config patch: `machine:` or `cluster:` without `version:`, or a
    /// JSON-patch list of `op:` entries.
    Patch,
    /// Anything else.
    Other,
}

/// Inspects the regular files under `dir` that are not excluded, down to
/// [`INSPECT_DEPTH`] levels; what cannot be read is left out (the backup
/// has warned about it).
pub(super) fn inspect_dir(dir: &Path, excludes: &Excludes, findings: &mut Findings) {
    let mut stack = vec![(dir.to_owned(), 0usize)];
    while let Some((folder, depth)) = stack.pop() {
        let Ok(listing) = std::fs::read_dir(&folder) else {
            continue;
        };
        for item in listing.flatten() {
            let path = item.path();
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            if excludes.matches(relative) {
                continue;
            }
            match item.file_type() {
                Ok(kind) if kind.is_dir() && depth < INSPECT_DEPTH => stack.push((path, depth + 1)),
                Ok(kind) if kind.is_file() => findings.add(inspect_file(&path)),
                _ => {}
            }
        }
    }
}

/// What the file at `path` is; [`TalosFile::Other`] when it cannot be read.
pub fn inspect_file(path: &Path) -> TalosFile {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let text = match std::fs::metadata(path) {
        Ok(meta) if meta.len() <= INSPECT_LIMIT => std::fs::read(path).unwrap_or_default(),
        _ => Vec::new(),
    };
    match classify(&String::from_utf8_lossy(&text)) {
        TalosFile::Other if name == "secrets.yaml" || name == "secrets.yml" => {
            TalosFile::SecretsBundle
        }
        TalosFile::Other if name == "talosconfig" => TalosFile::Talosconfig,
        kind => kind,
    }
}

/// What a Talos YAML text is, from its top-level keys (of any of its
/// documents) and the machine type.
pub fn classify(text: &str) -> TalosFile {
    let mut keys = Vec::new();
    let mut machine_type = None;
    let mut list_of_ops = false;
    for line in text.lines() {
        if line.starts_with(['#', ' ', '\t', '-']) || line.is_empty() {
            let item = line.trim_start();
            if line.starts_with('-') && item.trim_start_matches('-').trim_start().starts_with("op:")
            {
                list_of_ops = true;
            }
            machine_type = machine_type.or_else(|| machine_type_of(item));
            continue;
        }
        if let Some((key, _)) = line.split_once(':') {
            keys.push(key.trim().trim_matches(['"', '\'']).to_owned());
        }
    }
    let has = |key: &str| keys.iter().any(|k| k == key);
    if has("certs") && has("secrets") && (has("trustdinfo") || has("cluster")) {
        TalosFile::SecretsBundle
    } else if has("contexts") {
        TalosFile::Talosconfig
    } else if has("version") && has("machine") {
        match machine_type {
            Some("controlplane" | "init") => TalosFile::ControlPlaneConfig,
            Some(_) => TalosFile::WorkerConfig,
            None => TalosFile::MachineConfig,
        }
    } else if has("machine") || has("cluster") || (keys.is_empty() && list_of_ops) {
        TalosFile::Patch
    } else {
        TalosFile::Other
    }
}

/// The machine type an indented `type: controlplane` (`init`, `worker`)
/// line names; other `type:` lines (disk selectors, …) name none.
fn machine_type_of(item: &str) -> Option<&'static str> {
    let value = item.strip_prefix("type:")?;
    let value = value.split(" #").next().unwrap_or_default();
    let value = value.trim().trim_matches(['"', '\'']);
    ["controlplane", "init", "worker"]
        .into_iter()
        .find(|known| *known == value)
}

/// The exclude patterns, matched as the folder backup matches them.
#[derive(Debug)]
pub(super) struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    pub(super) fn new(patterns: &[String]) -> Result<Self, TalosConfigError> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for pattern in patterns {
            let glob = Glob::new(pattern.trim_start_matches('/')).map_err(|e| {
                TalosConfigError::Exclude {
                    pattern: pattern.clone(),
                    message: e.to_string(),
                }
            })?;
            if pattern.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |set: GlobSetBuilder| {
            set.build().map_err(|e| TalosConfigError::Exclude {
                pattern: patterns.join(", "),
                message: e.to_string(),
            })
        };
        Ok(Self {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    pub(super) fn matches(&self, relative: &Path) -> bool {
        relative
            .file_name()
            .is_some_and(|name| self.names.is_match(name))
            || self.paths.is_match(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: &str = "cluster:\n    id: abc\n    secret: def\nsecrets:\n    bootstraptoken: x.y\n    secretboxencryptionsecret: z\ntrustdinfo:\n    token: t\ncerts:\n    etcd:\n        crt: LS0t\n        key: LS0t\n";
    const CONTROLPLANE: &str = "version: v1alpha1 # Indicates the schema\ndebug: false\npersist: true\nmachine:\n    type: controlplane # Defines the role\n    token: abc\n    install:\n        diskSelector:\n            type: ssd\ncluster:\n    id: abc\n---\napiVersion: v1alpha1\nkind: HostnameConfig\n";
    const WORKER: &str = "version: v1alpha1\nmachine:\n    type: 'worker'\ncluster:\n    controlPlane:\n        endpoint: https://10.0.0.10:6443\n";
    const TALOSCONFIG: &str = "context: homelab\ncontexts:\n    homelab:\n        endpoints:\n            - 10.0.0.10\n        ca: LS0t\n";

    #[test]
    fn talos_files_are_recognised_by_content() {
        assert_eq!(classify(SECRETS), TalosFile::SecretsBundle);
        assert_eq!(classify(CONTROLPLANE), TalosFile::ControlPlaneConfig);
        assert_eq!(classify(WORKER), TalosFile::WorkerConfig);
        assert_eq!(classify(TALOSCONFIG), TalosFile::Talosconfig);
        assert_eq!(
            classify("machine:\n  network:\n    hostname: cp1\n"),
            TalosFile::Patch
        );
        assert_eq!(
            classify("- op: add\n  path: /machine/network\n  value: {}\n"),
            TalosFile::Patch
        );
        assert_eq!(classify("terraform {\n}\n"), TalosFile::Other);
        assert_eq!(classify(""), TalosFile::Other);
    }

    #[test]
    fn excludes_match_names_and_relative_paths() -> Result<(), TalosConfigError> {
        let excludes = Excludes::new(&[".terraform".into(), "state/*.tfstate".into()])?;
        assert!(excludes.matches(Path::new("a/.terraform")));
        assert!(excludes.matches(Path::new("state/x.tfstate")));
        assert!(!excludes.matches(Path::new("secrets.yaml")));
        assert!(Excludes::new(&["[".into()]).is_err());
        Ok(())
    }
}
