//! Small JSON files in the state folder that the service rewrites whole
//! (what each claim and each mirror last did): read with a fallback, since
//! losing one costs only what it remembered, and replaced atomically.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The value in `state/file`; the default when there is none, or, with a
/// warning saying `lost`, when it is unreadable.
pub fn load<T: DeserializeOwned + Default>(state: &Path, file: &str, lost: &str) -> T {
    let path = state.join(file);
    let Ok(bytes) = std::fs::read(&path) else {
        return T::default();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!("ignoring {} ({e}); {lost}", path.display());
        T::default()
    })
}

/// Writes `value` into `state/file`: a whole new file, renamed into place.
///
/// Fails when the file cannot be written.
pub fn save(state: &Path, file: &str, value: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(state)?;
    let partial = state.join(format!("{file}.partial"));
    std::fs::write(&partial, json)?;
    std::fs::rename(&partial, state.join(file))
}
