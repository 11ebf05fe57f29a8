//! What each volumes job last did with each claim, kept across restarts in
//! the state folder (`volume-claims.json`) for `/metrics` and the status
//! page: the claim's last outcome and reason, the bytes a mover counted,
//! and when it was last stored.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::items::{Item, Outcome};
use crate::state::json_file;
use crate::text::prometheus::Exposition;

/// The file in the state folder.
pub const CLAIMS_FILE: &str = "volume-claims.json";

/// One claim as its job last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimStatus {
    /// The last run's outcome.
    pub outcome: Outcome,
    /// Its detail or reason.
    pub detail: String,
    /// Bytes of data, when counted.
    pub bytes: Option<u64>,
    /// When a run last stored it.
    pub last_stored: Option<DateTime<Utc>>,
}

/// Claims (`NAMESPACE/NAME`) by volumes job.
pub type ClaimTable = BTreeMap<String, BTreeMap<String, ClaimStatus>>;

/// The table kept in `state`; empty when there is none or it is unreadable.
pub fn load(state: &Path) -> ClaimTable {
    json_file::load(state, CLAIMS_FILE, "the next volumes run replaces it")
}

/// Writes `table` into `state` (a whole new file, renamed into place).
///
/// Fails when the file cannot be written.
pub fn save(state: &Path, table: &ClaimTable) -> std::io::Result<()> {
    json_file::save(state, CLAIMS_FILE, table)
}

/// Replaces `job`'s claims with the volume items of a run that ended at
/// `time`; a claim not stored this time keeps when it last was. Returns
/// whether the run reported volumes at all.
pub fn update(table: &mut ClaimTable, job: &str, items: &[Item], time: DateTime<Utc>) -> bool {
    let volumes: Vec<&Item> = items.iter().filter(|i| i.kind == "volume").collect();
    if volumes.is_empty() {
        return false;
    }
    let before = table.remove(job).unwrap_or_default();
    let claims = volumes
        .into_iter()
        .map(|item| {
            let last_stored = if item.outcome == Outcome::Stored {
                Some(time)
            } else {
                before.get(&item.name).and_then(|c| c.last_stored)
            };
            let status = ClaimStatus {
                outcome: item.outcome,
                detail: item.detail.clone(),
                bytes: item.bytes,
                last_stored,
            };
            (item.name.clone(), status)
        })
        .collect();
    table.insert(job.to_owned(), claims);
    true
}

/// The claims' series: one per claim of a volumes job (the claims of the
/// cluster, a bounded set).
pub fn render(table: &ClaimTable) -> String {
    let mut out = Exposition(String::new());
    let each = |out: &mut Exposition, name: &str, value: &dyn Fn(&ClaimStatus) -> Option<f64>| {
        for (job, claims) in table {
            for (claim, status) in claims {
                if let Some(v) = value(status) {
                    out.sample(name, &[("job", job), ("claim", claim)], v);
                }
            }
        }
    };
    out.family(
        "lifeboat_volume_last_success_timestamp_seconds",
        "gauge",
        "When a run of the volumes job last stored the claim, in seconds since the epoch.",
    );
    each(
        &mut out,
        "lifeboat_volume_last_success_timestamp_seconds",
        &|s| s.last_stored.map(|t| t.timestamp_millis() as f64 / 1000.0),
    );
    out.family(
        "lifeboat_volume_bytes",
        "gauge",
        "Bytes of file data in the claim when its mover last read it.",
    );
    each(&mut out, "lifeboat_volume_bytes", &|s| {
        s.bytes.map(|b| b as f64)
    });
    out.family(
        "lifeboat_volume_stored",
        "gauge",
        "1 when the volumes job's last run stored the claim, 0 when it skipped or failed it.",
    );
    each(&mut out, "lifeboat_volume_stored", &|s| {
        Some(f64::from(u8::from(s.outcome == Outcome::Stored)))
    });
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_claim_keeps_when_it_was_last_stored() {
        let mut table = ClaimTable::new();
        let first = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let stored = Item::new("volume", "apps/db", Outcome::Stored, "ok").with_bytes(42);
        assert!(update(&mut table, "volumes", &[stored], first));
        let failed = Item::new("volume", "apps/db", Outcome::Failed, "mover failed");
        let later = first + chrono::Duration::hours(1);
        assert!(update(&mut table, "volumes", &[failed], later));
        let status = &table["volumes"]["apps/db"];
        assert_eq!(status.outcome, Outcome::Failed);
        assert_eq!(status.last_stored, Some(first));
        let text = render(&table);
        assert!(
            text.contains(r#"lifeboat_volume_last_success_timestamp_seconds{job="volumes",claim="apps/db"} 1800000000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lifeboat_volume_stored{job="volumes",claim="apps/db"} 0"#),
            "{text}"
        );
        assert!(!update(&mut table, "etcd", &[], later));
    }
}
