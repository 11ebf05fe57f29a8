//! Field types that the configuration tables of several modules share:
//! durations written the human way ("90s", "1h", "2d 12h") and paths
//! relative to the file that gives them.
//!
//! - `#[serde(with = "crate::field::duration")]` reads and writes a
//!   `Duration`, `#[serde(default, with = "crate::field::optional_duration")]`
//!   an `Option<Duration>`;
//! - `resolve_path` makes a relative path relative to the config file's
//!   folder.
//!
//! It sits below every module with a configuration table (sources, hooks,
//! retention, [`crate::config`]) so that they share one spelling of a
//! duration and one error message, and none of them imports another for
//! these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a duration such as "1h", "90s" or "2d 12h".
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"90s\", \"1h\" or \"7d\": {e}"))
}

/// Serde for a required humantime duration (`#[serde(with = "duration")]`).
pub mod duration {
    use super::*;

    /// Writes the duration as "1h 30m".
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Reads a duration such as "1h"; the error says what is accepted.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional humantime duration
/// (`#[serde(default, with = "optional_duration")]`).
pub mod optional_duration {
    use super::*;

    /// Writes the duration as "1h 30m", or nothing.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads a duration such as "1h"; the error says what is accepted.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

/// Makes `path` relative to `base` (the folder of the file that gave it)
/// when it is relative.
pub(crate) fn resolve_path(path: &mut PathBuf, base: &Path) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err_and(|e| e.contains("\"1h\"")));
    }
}
