//! The record of the workloads the rebuild stopped, kept in the work
//! folder so a resumed run scales them back to the right count.

use std::path::Path;

use lifeboat::k8s::workloads::Stopped;

use crate::kubernetes::KubernetesError;

/// Reads what an earlier run stopped, if it recorded anything.
///
/// Fails when the file exists but cannot be read.
pub fn load(path: &Path) -> Result<Option<Stopped>, KubernetesError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
            KubernetesError::DamagedRecord {
                path: path.to_owned(),
                source,
            }
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KubernetesError::Record {
            action: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Records what is stopped (before stopping it).
///
/// Fails when the file cannot be written.
pub fn save(stopped: &Stopped, path: &Path) -> Result<(), KubernetesError> {
    let json = serde_json::to_vec_pretty(stopped).map_err(|source| KubernetesError::Object {
        what: "record of stopped workloads".into(),
        source,
    })?;
    std::fs::write(path, json).map_err(|source| KubernetesError::Record {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}
