//! Reading the files under `deploy/` the way their consumers do, for the
//! tests that hold them to what lifeboat really does:
//!
//! - [`render`]: `kubectl kustomize DIR`, every document as JSON, and
//!   [`read_documents`] for one file;
//! - [`round_trip`]: a document through its k8s-openapi type and back,
//!   failing on any field the type does not know (k8s-openapi's types
//!   ignore unknown fields, so a misspelt or misplaced field would
//!   otherwise pass unseen);
//! - [`kubernetes`]: the Deployment's pod, strict checks of every
//!   document, where a path lands among the mounts;
//! - [`dockerfile`]: a Dockerfile's instructions;
//! - [`unraid`]: an Unraid template's fields and `<Config>` entries;
//! - [`metric_names`]: the `lifeboat_*` metric names a PromQL query uses.

pub mod dockerfile;
pub mod kubernetes;
pub mod unraid;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::process::require_program;

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Renders the kustomization in `dir` with `kubectl kustomize` and returns
/// its documents.
///
/// Fails with the install command when kubectl is missing, with kubectl's
/// message when the kustomization is invalid.
pub fn render(dir: &Path) -> Result<Vec<Value>> {
    let kubectl = require_program(
        "kubectl",
        "apt-get install kubectl (Kubernetes' apt repository)",
    )?;
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).context("kustomize wrote no UTF-8")?;
    documents(&text).context("kustomize's output")
}

/// The documents of one YAML file under `deploy/`, as JSON.
///
/// Fails when the file cannot be read or is not YAML.
pub fn read_documents(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    documents(&text).with_context(|| format!("{}", path.display()))
}

/// The non-empty documents of a YAML stream.
fn documents(text: &str) -> Result<Vec<Value>> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("a document is not YAML")?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// Deserializes `document` into `T`, serializes it back and fails unless
/// nothing was lost or changed on the way, naming the first difference.
///
/// Fails when `document` does not fit `T`.
pub fn round_trip<T: DeserializeOwned + Serialize>(document: &Value) -> Result<T> {
    let typed: T = serde_json::from_value(document.clone())
        .with_context(|| format!("{} does not fit its type", describe(document)))?;
    let back = serde_json::to_value(&typed)?;
    if let Some(difference) = first_difference(document, &back, "") {
        bail!(
            "{}: {difference} (a field its Kubernetes type does not have, or a value of the wrong form)",
            describe(document)
        );
    }
    Ok(typed)
}

/// `Kind/name` of a document.
pub fn describe(document: &Value) -> String {
    format!(
        "{}/{}",
        document["kind"].as_str().unwrap_or("?"),
        document["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The first place where `original` and `back` differ.
fn first_difference(original: &Value, back: &Value, path: &str) -> Option<String> {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    None => return Some(format!("{here} was dropped")),
                    Some(other) => {
                        if let Some(found) = first_difference(value, other, &here) {
                            return Some(found);
                        }
                    }
                }
            }
            b.keys()
                .find(|key| !a.contains_key(*key))
                .map(|key| format!("{path}.{key} was added"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path} is {a} but reads back as {b}")),
    }
}

/// The documents of `kind` in `documents`.
pub fn of_kind<'a>(documents: &'a [Value], api_version: &str, kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|d| d["apiVersion"] == api_version && d["kind"] == kind)
        .collect()
}

/// The one document of `kind` called `name`.
///
/// Fails when there is none.
pub fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind}/{name} among the rendered documents"))
}

/// The environment variables that carry the R2 settings, as the Secret and
/// the Unraid template give them (tests/deploy_image.rs proves lifeboatd
/// reaches a real S3 server with only them).
pub fn r2_variables() -> BTreeSet<String> {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_S3",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// The names of lifeboat's metrics (`lifeboat_…`) that a PromQL query or a
/// Grafana query names, in order of appearance, without repeats.
pub fn metric_names(query: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let bytes = query.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut start = 0;
    while let Some(found) = query[start..].find("lifeboat_") {
        let begin = start + found;
        let mut end = begin;
        while end < bytes.len() && is_name(bytes[end]) {
            end += 1;
        }
        let preceded = begin > 0 && is_name(bytes[begin - 1]);
        let name = &query[begin..end];
        if !preceded && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        start = end;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skip_other_words() {
        assert_eq!(
            metric_names(
                "sum by (job) (increase(lifeboat_job_runs_total{job=~\"$job\"}[1h])) / my_lifeboat_x + lifeboat_job_runs_total"
            ),
            ["lifeboat_job_runs_total"]
        );
    }

    #[test]
    fn a_lost_field_is_named() {
        let document = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "x" },
            "spec": { "prots": [] }
        });
        let error = round_trip::<k8s_openapi::api::core::v1::Service>(&document)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(".spec.prots was dropped"), "{error}");
    }
}
