//! A node's effective machine configuration: the config of its role from
//! the talos-config snapshot with the node's own patches applied, in the
//! two forms `talosctl --config-patch` and the Terraform Talos provider's
//! `config_patches` take:
//!
//! - **strategic merge**: YAML documents. One without `kind` is merged into
//!   the `v1alpha1` document; one with `kind` (`UserVolumeConfig`,
//!   `HostnameConfig`, `KubeTalosAPIAccessConfig`, …) into the document of
//!   the same kind and `name`, or added when there is none. Maps merge
//!   key by key, lists are appended to, `$patch: delete` in a map removes
//!   that key;
//! - **JSON patch** (RFC 6902): a list of operations, applied to the
//!   `v1alpha1` document.
//!
//! The result is validated (one `v1alpha1` document whose `machine.type`
//! is the node's role, no two documents of one kind and name) before it is
//! applied; [`redacted`] shows it without secrets.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::spec::{NodeSpec, Role};

/// Why a node's configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// A patch file cannot be read.
    #[error("cannot read the patch {}; check patches of the node in the spec", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A machine config or patch is not YAML.
    #[error("{what} is not YAML documents")]
    Yaml {
        /// The file.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A JSON patch does not apply.
    #[error("the JSON patch {} does not apply to the v1alpha1 document", path.display())]
    JsonPatch {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: json_patch::PatchError,
    },
    /// A JSON patch's operations do not parse.
    #[error("{} is a list but not of JSON patch operations (op, path, value)", path.display())]
    Operations {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The patched configuration is not a valid one for the node.
    #[error("the machine config of node {node} after its patches is not valid: {problem}")]
    Invalid {
        /// The node.
        node: String,
        /// What is wrong.
        problem: String,
    },
}

/// The configuration to apply to `node`: `base` unchanged when the node
/// has no patches, else `base` with its patches applied, as YAML.
///
/// Fails when a patch cannot be read or applied, or the result is invalid.
pub fn effective(base: &[u8], node: &NodeSpec) -> Result<Vec<u8>, PatchError> {
    if node.patches.is_empty() {
        return Ok(base.to_vec());
    }
    let mut documents = documents(base, "the machine config")?;
    for path in &node.patches {
        let text = std::fs::read(path).map_err(|source| PatchError::Read {
            path: path.clone(),
            source,
        })?;
        apply_patch(&mut documents, &text, path)?;
    }
    validate(&documents, node)?;
    render(&documents)
}

/// Applies one patch file to `documents`.
fn apply_patch(documents: &mut Vec<Value>, text: &[u8], path: &Path) -> Result<(), PatchError> {
    let patches = self::documents(text, &path.display().to_string())?;
    for patch in patches {
        if patch.is_array() {
            let operations: json_patch::Patch =
                serde_json::from_value(patch).map_err(|source| PatchError::Operations {
                    path: path.to_owned(),
                    source,
                })?;
            let target = v1alpha1(documents).ok_or_else(|| PatchError::Invalid {
                node: path.display().to_string(),
                problem: "a JSON patch needs a v1alpha1 document".into(),
            })?;
            json_patch::patch(target, &operations).map_err(|source| PatchError::JsonPatch {
                path: path.to_owned(),
                source,
            })?;
            continue;
        }
        let target = match patch["kind"].as_str() {
            None => v1alpha1(documents),
            Some(kind) => documents
                .iter_mut()
                .find(|d| d["kind"].as_str() == Some(kind) && d["name"] == patch["name"]),
        };
        match target {
            Some(target) => merge(target, &patch),
            None => documents.push(patch),
        }
    }
    Ok(())
}

/// The YAML documents of `text`, as JSON values; empty documents dropped.
fn documents(text: &[u8], what: &str) -> Result<Vec<Value>, PatchError> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_slice(text) {
        let value = Value::deserialize(document).map_err(|source| PatchError::Yaml {
            what: what.to_owned(),
            source,
        })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The `v1alpha1` machine config document (`version: v1alpha1`, no `kind`).
fn v1alpha1(documents: &mut [Value]) -> Option<&mut Value> {
    documents
        .iter_mut()
        .find(|d| d["kind"].is_null() && d["version"] == "v1alpha1")
}

/// A strategic merge: maps key by key, lists appended, `$patch: delete`
/// removing the key it stands in.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                    continue;
                }
                match target.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(target), Value::Array(patch)) => target.extend(patch.iter().cloned()),
        (target, patch) => *target = patch.clone(),
    }
}

/// Checks what every node's configuration must hold.
fn validate(documents: &[Value], node: &NodeSpec) -> Result<(), PatchError> {
    let invalid = |problem: String| PatchError::Invalid {
        node: node.name.clone(),
        problem,
    };
    let main: Vec<&Value> = documents.iter().filter(|d| d["kind"].is_null()).collect();
    let [main] = main[..] else {
        return Err(invalid(format!(
            "{} documents without a kind; there must be one, the v1alpha1 machine config",
            main.len()
        )));
    };
    if main["version"] != "v1alpha1" {
        return Err(invalid("its machine config is not version v1alpha1".into()));
    }
    let role = match node.role {
        Role::Controlplane => "controlplane",
        Role::Worker => "worker",
    };
    if main["machine"]["type"] != role {
        return Err(invalid(format!(
            "machine.type is {}, the node's role is {role}",
            main["machine"]["type"]
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for document in documents.iter().filter(|d| !d["kind"].is_null()) {
        let key = (document["kind"].to_string(), document["name"].to_string());
        if !seen.insert(key.clone()) {
            return Err(invalid(format!(
                "two documents of kind {} named {}",
                key.0, key.1
            )));
        }
    }
    Ok(())
}

/// The documents as one multi-document YAML text.
fn render(documents: &[Value]) -> Result<Vec<u8>, PatchError> {
    let mut text = String::new();
    for document in documents {
        if !text.is_empty() {
            text.push_str("---\n");
        }
        let yaml = serde_yaml_ng::to_string(document).map_err(|source| PatchError::Yaml {
            what: "the patched machine config".into(),
            source,
        })?;
        text.push_str(&yaml);
    }
    Ok(text.into_bytes())
}

/// Words in a key that mark its value as secret.
const SECRET_WORDS: [&str; 3] = ["secret", "token", "key"];

/// `config` (YAML documents) with every secret value replaced by
/// `<redacted>`: values of keys holding "secret", "token" or "key"
/// (certificates, which are public, are kept).
///
/// Fails when the text is not YAML.
pub fn redacted(config: &[u8]) -> Result<String, PatchError> {
    let mut documents = documents(config, "the machine config")?;
    for document in &mut documents {
        redact(document);
    }
    render(&documents).map(|text| String::from_utf8_lossy(&text).into_owned())
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                let lower = key.to_lowercase();
                if SECRET_WORDS.iter().any(|w| lower.contains(w)) && !inner.is_boolean() {
                    *inner = Value::String("<redacted>".into());
                } else {
                    redact(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version: v1alpha1\nmachine:\n  type: worker\n  token: abc\n  install:\n    extensions: [{image: a}]\ncluster:\n  secretboxEncryptionSecret: s3cr3t\n---\napiVersion: v1alpha1\nkind: UserVolumeConfig\nname: data\nprovisioning: {minSize: 10GiB}\n";

    fn node(patches: Vec<PathBuf>) -> NodeSpec {
        let text = "name = \"w1\"\nrole = \"worker\"\nmac = \"52:54:00:00:00:01\"\nmaintenance_address = \"10.0.0.5\"\nendpoint = \"w1.tailnet.ts.net\"\n";
        let mut node: NodeSpec = toml::from_str(text).expect("node");
        node.patches = patches;
        node
    }

    fn parsed(text: &[u8]) -> Vec<Value> {
        documents(text, "test").expect("yaml")
    }

    #[test]
    fn strategic_and_json_patches_apply_in_order_and_documents_merge_by_kind_and_name() {
        let dir = tempfile::tempdir().expect("dir");
        let strategic = dir.path().join("w1.yaml");
        std::fs::write(
            &strategic,
            "machine:\n  network: {hostname: w1}\n  install:\n    extensions: [{image: tailscale}]\n---\napiVersion: v1alpha1\nkind: UserVolumeConfig\nname: data\nprovisioning: {minSize: 50GiB}\n---\napiVersion: v1alpha1\nkind: UserVolumeConfig\nname: mayastor\nprovisioning: {minSize: 100GiB}\n",
        )
        .expect("write");
        let json = dir.path().join("w1.json");
        std::fs::write(
            &json,
            r#"[{"op": "replace", "path": "/machine/network/hostname", "value": "worker-1"}]"#,
        )
        .expect("write");
        let out = effective(BASE.as_bytes(), &node(vec![strategic, json])).expect("effective");
        let documents = parsed(&out);
        assert_eq!(documents.len(), 3);
        assert_eq!(documents[0]["machine"]["network"]["hostname"], "worker-1");
        assert_eq!(
            documents[0]["machine"]["install"]["extensions"],
            serde_json::json!([{"image": "a"}, {"image": "tailscale"}])
        );
        assert_eq!(documents[1]["provisioning"]["minSize"], "50GiB");
        assert_eq!(documents[2]["name"], "mayastor");
        assert_eq!(
            effective(BASE.as_bytes(), &node(Vec::new())).expect("unpatched"),
            BASE.as_bytes(),
            "without patches the snapshot's bytes go as they are"
        );
    }

    #[test]
    fn a_patch_that_breaks_the_config_is_refused_naming_the_problem() {
        let dir = tempfile::tempdir().expect("dir");
        let cases = [
            (
                "role.yaml",
                "machine: {type: controlplane}\n",
                "machine.type",
            ),
            ("delete.yaml", "machine: {$patch: delete}\n", "machine.type"),
            (
                "bad.json",
                r#"[{"op": "remove", "path": "/nope"}]"#,
                "does not apply",
            ),
            ("ops.json", r#"[{"nope": 1}]"#, "JSON patch operations"),
            ("yaml.yaml", "machine: [\n", "not YAML"),
        ];
        for (name, text, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let error = effective(BASE.as_bytes(), &node(vec![path])).expect_err(name);
            let shown = format!(
                "{error}: {}",
                std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            assert!(shown.contains(expected), "{name}: {shown}");
        }
        let missing = effective(BASE.as_bytes(), &node(vec![dir.path().join("none.yaml")]));
        assert!(matches!(missing, Err(PatchError::Read { .. })));
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_is_shown() {
        let shown = redacted(BASE.as_bytes()).expect("redacted");
        assert!(
            !shown.contains("abc") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(
            shown.contains("<redacted>") && shown.contains("UserVolumeConfig"),
            "{shown}"
        );
    }
}
