//! The YAML documents of a restored `kubernetes` snapshot, read back from
//! `<group>/<resource>/<namespace>/<name>.yaml`, and their check against
//! the snapshot's inventory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::sources::kubernetes::{CLUSTER_SCOPE, INVENTORY_FILE, Inventory};

/// One stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// API group (`""` for core).
    pub group: String,
    /// Resource plural (the folder it was stored in).
    pub resource: String,
    /// Namespace (`""` for cluster-scoped objects).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The object.
    pub object: Value,
    /// The file it came from.
    pub path: PathBuf,
}

impl Document {
    /// `apps/deployments apps/web` or `namespaces default`.
    pub fn label(&self) -> String {
        let resource = crate::k8s::discovery::qualified_name(&self.group, &self.resource);
        if self.namespace.is_empty() {
            format!("{resource} {}", self.name)
        } else {
            format!("{resource} {}/{}", self.namespace, self.name)
        }
    }

    /// The object's `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }

    /// The object's `kind`.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }
}

/// A file that is not a valid stored object, and why.
pub type Problem = (PathBuf, String);

/// The documents under `dir` (a restored snapshot), and the files that are
/// not valid Kubernetes objects.
pub fn load(dir: &Path) -> std::io::Result<(Vec<Document>, Vec<Problem>)> {
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for group_dir in sorted_dirs(dir)? {
        let group_name = file_name(&group_dir);
        let group = if group_name == "core" {
            String::new()
        } else {
            group_name
        };
        for resource_dir in sorted_dirs(&group_dir)? {
            let resource = file_name(&resource_dir);
            for scope_dir in sorted_dirs(&resource_dir)? {
                let scope = file_name(&scope_dir);
                let namespace = if scope == CLUSTER_SCOPE {
                    String::new()
                } else {
                    scope
                };
                let mut files: Vec<PathBuf> = std::fs::read_dir(&scope_dir)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                    .collect();
                files.sort();
                for path in files {
                    match parse(&path, &namespace) {
                        Ok((name, object)) => documents.push(Document {
                            group: group.clone(),
                            resource: resource.clone(),
                            namespace: namespace.clone(),
                            name,
                            object,
                            path,
                        }),
                        Err(reason) => problems.push((path, reason)),
                    }
                }
            }
        }
    }
    Ok((documents, problems))
}

/// Parses one file: it must be a mapping with apiVersion, kind and a
/// metadata.name equal to the file name, in the folder's namespace.
fn parse(path: &Path, namespace: &str) -> Result<(String, Value), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let expected = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    parse_text(&text, expected, namespace)
}

/// Parses the text of a document stored as `<file_stem>.yaml` in the folder
/// of `namespace` (empty for cluster-scoped), as [`load`] does
/// for each file; returns its name and the object.
///
/// Fails with the reason it is not such a document.
pub fn parse_text(text: &str, expected: &str, namespace: &str) -> Result<(String, Value), String> {
    let object: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    for field in ["apiVersion", "kind"] {
        if object[field].as_str().is_none_or(str::is_empty) {
            return Err(format!("no {field}"));
        }
    }
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or("no metadata.name")?
        .to_owned();
    if name != expected {
        return Err(format!("metadata.name {name:?} differs from the file name"));
    }
    let stored_namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    if stored_namespace != namespace {
        return Err(format!(
            "metadata.namespace {stored_namespace:?} differs from its folder {namespace:?}"
        ));
    }
    Ok((name, object))
}

/// Checks `documents` against the inventory file in `dir`: every resource
/// and namespace holds as many objects as were recorded. Returns the
/// differences, each a sentence.
pub fn check_inventory(dir: &Path, documents: &[Document]) -> Result<Vec<String>, String> {
    let path = dir.join(INVENTORY_FILE);
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let inventory: Inventory = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not an inventory: {e}", path.display()))?;
    let mut found: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for d in documents {
        let scope = if d.namespace.is_empty() {
            CLUSTER_SCOPE.to_owned()
        } else {
            d.namespace.clone()
        };
        *found
            .entry((d.group.clone(), d.resource.clone(), scope))
            .or_default() += 1;
    }
    let mut differences = Vec::new();
    let mut recorded: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for resource in &inventory.resources {
        for (scope, count) in &resource.objects {
            recorded.insert(
                (
                    resource.group.clone(),
                    resource.resource.clone(),
                    scope.clone(),
                ),
                *count,
            );
        }
    }
    for (key, count) in &recorded {
        let got = found.get(key).copied().unwrap_or(0);
        if got != *count {
            let name = crate::k8s::discovery::qualified_name(&key.0, &key.1);
            differences.push(format!(
                "{name} in {}: {got} objects restored, {count} recorded",
                key.2
            ));
        }
    }
    for (key, got) in &found {
        if !recorded.contains_key(key) {
            let name = crate::k8s::discovery::qualified_name(&key.0, &key.1);
            differences.push(format!(
                "{name} in {}: {got} objects restored, none recorded",
                key.2
            ));
        }
    }
    Ok(differences)
}

fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
