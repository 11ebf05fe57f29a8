//! `deploy/kubernetes` as one folder of a GitOps repository laid out as
//! the reference user's (`kubernetes/base/<app>`,
//! `kubernetes/overlays/<app>/<cluster>`,
//! `kubernetes/clusters/<cluster>/kustomization-<app>.yaml`):
//!
//! - every object file is named `{kind}-{name}.yaml` (Secrets
//!   `secret-{name}.enc.yaml`), one object per file, patches inline;
//! - the Flux `Kustomization` and the Argo CD `Application` point at the
//!   overlay, which renders, and Flux's health checks name objects it
//!   renders; Flux decrypts with the cluster's `sops-age` Secret;
//! - the overlay's `.sops.yaml` selects exactly the Secret files, and its
//!   `encrypted_regex`, applied as SOPS applies it (to every key at any
//!   depth, a match encrypting the key's whole value), encrypts every value
//!   under `data`/`stringData` and nothing else.
//!
//! SOPS itself cannot be installed here (no Debian package, no build from
//! source without Go's module proxy), so the rules are applied with the
//! same regular-expression semantics (RE2, as Go's `regexp` and the
//! `regex` crate share) rather than by running `sops --encrypt`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use lifeboat_tests::deploy::kubernetes::{OVERLAY, rendered};
use lifeboat_tests::deploy::{deploy_dir, describe, find, read_documents};
use regex::Regex;
use serde_json::Value;

/// Every file below `dir`, recursively, hidden ones included.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files(&path)?);
        } else {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
}

#[test]
fn every_object_file_is_named_for_its_kind_and_name() -> Result<()> {
    let roots = [deploy_dir().join("kubernetes"), deploy_dir().join("argocd")];
    let mut objects = 0;
    for root in &roots {
        for path in files(root)? {
            let name = file_name(&path);
            if !name.ends_with(".yaml") || name == ".sops.yaml" {
                continue;
            }
            let documents = read_documents(&path)?;
            if name == "kustomization.yaml" {
                // kustomize's own file; patches are inline, as in the
                // user's repository, not files of their own.
                for document in &documents {
                    for patch in document["patches"].as_array().into_iter().flatten() {
                        ensure!(
                            patch.get("path").is_none(),
                            "{}: a patch in a file of its own ({patch}); write it inline",
                            path.display()
                        );
                    }
                }
                continue;
            }
            ensure!(
                documents.len() == 1,
                "{}: one object per file, found {}",
                path.display(),
                documents.len()
            );
            let object = &documents[0];
            let kind = object["kind"].as_str().context("an object without kind")?;
            let object_name = object["metadata"]["name"]
                .as_str()
                .context("an object without a name")?;
            let suffix = if kind == "Secret" {
                ".enc.yaml"
            } else {
                ".yaml"
            };
            let expected = format!("{}-{object_name}{suffix}", kind.to_ascii_lowercase());
            ensure!(
                name == expected,
                "{}: {} belongs in {expected}",
                path.display(),
                describe(object)
            );
            objects += 1;
        }
    }
    ensure!(objects >= 15, "only {objects} object files found");
    Ok(())
}

/// The folder of `deploy/kubernetes` that a repository path
/// `./kubernetes/<rest>` or `kubernetes/<rest>` names.
fn in_deploy(repository_path: &str) -> Result<String> {
    let rest = repository_path
        .trim_start_matches("./")
        .strip_prefix("kubernetes/")
        .with_context(|| format!("{repository_path} is not under kubernetes/"))?;
    Ok(format!("kubernetes/{}", rest.trim_end_matches('/')))
}

#[test]
fn flux_and_argo_reconcile_the_overlay() -> Result<()> {
    let flux_path = deploy_dir().join("kubernetes/clusters/homelab/kustomization-lifeboat.yaml");
    let flux = read_documents(&flux_path)?
        .pop()
        .context("an empty Flux Kustomization")?;
    ensure!(
        flux["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" && flux["kind"] == "Kustomization",
        "{} is not a Flux Kustomization",
        describe(&flux)
    );
    ensure!(
        flux["metadata"]["namespace"] == "flux-system",
        "Flux objects live in flux-system"
    );
    let spec = &flux["spec"];
    for field in ["interval", "timeout"] {
        ensure!(spec[field].is_string(), "spec.{field} is missing");
    }
    ensure!(
        spec["prune"] == true && spec["wait"] == true,
        "prune and wait"
    );
    ensure!(
        spec["sourceRef"]["kind"] == "GitRepository" && spec["sourceRef"]["name"] == "flux-system",
        "the source is the cluster's own repository: {}",
        spec["sourceRef"]
    );
    ensure!(
        spec["decryption"]["provider"] == "sops"
            && spec["decryption"]["secretRef"]["name"] == "sops-age",
        "Flux decrypts with sops and the sops-age Secret: {}",
        spec["decryption"]
    );
    ensure!(
        spec["dependsOn"]
            .as_array()
            .is_some_and(|d| !d.is_empty() && d.iter().all(|dep| dep["name"].is_string())),
        "dependsOn names the Kustomizations lifeboat needs"
    );
    let overlay = in_deploy(spec["path"].as_str().context("spec.path")?)?;
    ensure!(
        overlay == OVERLAY,
        "Flux reconciles {overlay}, not the example overlay"
    );
    // What Flux applies: the overlay, rendered as kustomize-controller does.
    let documents = rendered(&overlay)?;
    let checks = spec["healthChecks"]
        .as_array()
        .context("spec.healthChecks")?;
    ensure!(!checks.is_empty(), "no health check");
    for check in checks {
        let kind = check["kind"]
            .as_str()
            .context("a health check without kind")?;
        let name = check["name"]
            .as_str()
            .context("a health check without name")?;
        let object = find(&documents, kind, name)?;
        ensure!(
            object["apiVersion"] == check["apiVersion"]
                && object["metadata"]["namespace"] == check["namespace"],
            "the health check {check} does not match {}",
            describe(object)
        );
    }

    let argo_path = deploy_dir().join("argocd/application-lifeboat.yaml");
    let argo = read_documents(&argo_path)?
        .pop()
        .context("an empty Application")?;
    ensure!(
        argo["apiVersion"] == "argoproj.io/v1alpha1" && argo["kind"] == "Application",
        "{} is not an Argo CD Application",
        describe(&argo)
    );
    let source = &argo["spec"]["source"];
    let argo_overlay = in_deploy(source["path"].as_str().context("spec.source.path")?)?;
    ensure!(argo_overlay == OVERLAY, "Argo CD syncs {argo_overlay}");
    let namespace = find(&documents, "Namespace", "lifeboat")?;
    ensure!(
        argo["spec"]["destination"]["namespace"] == namespace["metadata"]["name"],
        "the Application's destination is lifeboat's namespace"
    );
    ensure!(
        argo["spec"]["syncPolicy"]["automated"].is_object(),
        "the Application syncs automatically (what lifeboat's restore suspends)"
    );
    Ok(())
}

/// The overlay's SOPS creation rule: its path and encrypted-key patterns.
struct CreationRule {
    path: Regex,
    keys: Regex,
}

fn creation_rule(overlay: &Path) -> Result<CreationRule> {
    let config = read_documents(&overlay.join(".sops.yaml"))?
        .pop()
        .context("an empty .sops.yaml")?;
    let rules = config["creation_rules"]
        .as_array()
        .context("creation_rules")?;
    ensure!(rules.len() == 1, "one creation rule, found {}", rules.len());
    let rule = &rules[0];
    let path = rule["path_regex"].as_str().context("path_regex")?;
    let keys = rule["encrypted_regex"]
        .as_str()
        .context("encrypted_regex")?;
    // The user's conventions, verbatim.
    ensure!(path == r"\.enc\.yaml$", "path_regex {path}");
    ensure!(keys == "^(data|stringData)$", "encrypted_regex {keys}");
    ensure!(
        rule["age"].as_str().is_some_and(|r| r.starts_with("age1")),
        "the rule names an age recipient"
    );
    Ok(CreationRule {
        path: Regex::new(path)?,
        keys: Regex::new(keys)?,
    })
}

/// The paths of the scalar values SOPS encrypts in `value` (under a key
/// that `keys` matches, at any depth), and of those it leaves in clear.
fn split_values(
    value: &Value,
    keys: &Regex,
    at: &str,
    encrypted: bool,
    out: &mut [Vec<String>; 2],
) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = format!("{at}.{key}");
                split_values(child, keys, &path, encrypted || keys.is_match(key), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                split_values(child, keys, &format!("{at}[{i}]"), encrypted, out);
            }
        }
        _ => out[usize::from(encrypted)].push(at.to_owned()),
    }
}

#[test]
fn sops_rules_encrypt_the_secret_values_and_nothing_else() -> Result<()> {
    let overlay = deploy_dir().join(OVERLAY);
    let rule = creation_rule(&overlay)?;
    let mut matched = BTreeSet::new();
    for path in files(&overlay)? {
        let name = file_name(&path).to_owned();
        if !rule.path.is_match(&path.to_string_lossy()) {
            continue;
        }
        ensure!(
            name.starts_with("secret-"),
            "{name} matches the SOPS rule but is not a secret-*.enc.yaml"
        );
        for document in read_documents(&path)? {
            ensure!(
                document["kind"] == "Secret",
                "{name} holds {}",
                describe(&document)
            );
            let mut split = [Vec::new(), Vec::new()];
            split_values(&document, &rule.keys, "", false, &mut split);
            let [clear, encrypted] = split;
            ensure!(!encrypted.is_empty(), "{name}: SOPS would encrypt nothing");
            for path in &encrypted {
                ensure!(
                    path.starts_with(".data.") || path.starts_with(".stringData."),
                    "{name}: SOPS would encrypt {path}"
                );
            }
            for path in &clear {
                ensure!(
                    !path.starts_with(".data.") && !path.starts_with(".stringData."),
                    "{name}: SOPS would leave {path} in clear"
                );
            }
            ensure!(
                clear.iter().any(|p| p == ".metadata.name") && clear.iter().any(|p| p == ".kind"),
                "{name}: names and kinds stay reviewable"
            );
            matched.insert(
                document["metadata"]["name"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            );
        }
    }
    // Every Secret the overlay renders comes from a file the rule encrypts.
    let rendered_secrets: BTreeSet<String> = rendered(OVERLAY)?
        .iter()
        .filter(|d| d["kind"] == "Secret")
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        !rendered_secrets.is_empty() && rendered_secrets == matched,
        "Secrets rendered {rendered_secrets:?}, encrypted by the rule {matched:?}"
    );
    Ok(())
}
