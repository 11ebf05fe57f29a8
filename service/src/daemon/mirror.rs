//! The `mirror` task: every enabled `[[mirror]]` synced from the
//! repository (see [`crate::repo::mirror`]), and what each sync did kept in
//! the state folder (`mirrors.json`) across restarts: the objects waiting
//! out their grace period, the last sync, and the last one that left the
//! mirror complete — its lag, on `/metrics` and the status page.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::errors::describe;
use crate::repo::mirror::{self, GoneSince, SyncReport};
use crate::state::json_file;
use crate::storage::{self, ObjectStore};
use crate::text::prometheus::Exposition;

/// The file in the state folder.
pub const MIRRORS_FILE: &str = "mirrors.json";

/// One mirror as its syncs left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorStatus {
    /// Its location.
    pub url: String,
    /// Objects gone from the primary, since when.
    #[serde(default)]
    pub gone: GoneSince,
    /// When the last sync started.
    pub last_sync: Option<DateTime<Utc>>,
    /// What it did, when it ran through.
    pub last_report: Option<SyncReport>,
    /// Why it could not run, when it could not.
    pub last_error: Option<String>,
    /// When the last sync that left nothing pending started: the mirror
    /// holds everything the repository held then.
    pub last_complete: Option<DateTime<Utc>>,
}

impl MirrorStatus {
    /// How far the mirror is behind at `now`: the time since the last
    /// complete sync started.
    pub fn lag(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.last_complete.map(|t| now - t)
    }
}

/// Mirrors by name.
pub type MirrorTable = BTreeMap<String, MirrorStatus>;

/// The table kept in `state`; empty when there is none or it is unreadable.
pub fn load(state: &Path) -> MirrorTable {
    json_file::load(
        state,
        MIRRORS_FILE,
        "mirrors keep what the primary deleted for another grace period",
    )
}

/// Writes `table` into `state` (a whole new file, renamed into place).
///
/// Fails when the file cannot be written.
pub fn save(state: &Path, table: &MirrorTable) -> std::io::Result<()> {
    json_file::save(state, MIRRORS_FILE, table)
}

/// Syncs every enabled mirror of `config` from `primary` and records the
/// outcomes in the state folder; returns each mirror's status, and the
/// failures (a mirror that could not be synced, or objects it still
/// lacks), one sentence each.
pub async fn sync_all(
    config: &Config,
    primary: &Arc<dyn ObjectStore>,
) -> (MirrorTable, Vec<String>) {
    let state = config.state_folder();
    let mut table = load(&state);
    table.retain(|name, _| config.mirror(name).is_some());
    let mut failures = Vec::new();
    for task in config.mirrors.iter().filter(|m| m.enabled) {
        let status = table.entry(task.name.clone()).or_default();
        if status.url != task.url {
            // Another location: what was gone from the old one says
            // nothing of the new.
            *status = MirrorStatus {
                url: task.url.clone(),
                ..MirrorStatus::default()
            };
        }
        let started = Utc::now();
        let grace =
            chrono::Duration::from_std(config.mirror_grace(task)).unwrap_or(chrono::Duration::MAX);
        let synced = match storage::open(&task.url, &task.s3).await {
            Ok(store) => mirror::sync(primary, &store, &mut status.gone, grace, started)
                .await
                .map_err(|e| describe(&e)),
            Err(e) => Err(describe(&e)),
        };
        status.last_sync = Some(started);
        match synced {
            Ok(report) => {
                if report.complete() {
                    status.last_complete = Some(started);
                } else {
                    failures.push(format!(
                        "mirror {} lacks {} object(s) ({} bytes): {}",
                        task.name,
                        report.pending,
                        report.pending_bytes,
                        report.failures.join("; ")
                    ));
                }
                status.last_error = None;
                status.last_report = Some(report);
            }
            Err(error) => {
                failures.push(format!("mirror {}: {error}", task.name));
                status.last_error = Some(error);
            }
        }
    }
    if let Err(e) = save(&state, &table) {
        failures.push(format!(
            "the mirrors' state {} cannot be written: {e}",
            state.join(MIRRORS_FILE).display()
        ));
    }
    (table, failures)
}

/// The mirrors' series, one per mirror, at `now`.
pub fn render(table: &MirrorTable, now: DateTime<Utc>) -> String {
    let mut out = Exposition(String::new());
    let each = |out: &mut Exposition,
                name: &str,
                help: &str,
                value: &dyn Fn(&MirrorStatus) -> Option<f64>| {
        out.family(name, "gauge", help);
        for (mirror, status) in table {
            if let Some(v) = value(status) {
                out.sample(name, &[("mirror", mirror)], v);
            }
        }
    };
    each(
        &mut out,
        "lifeboat_mirror_last_complete_timestamp_seconds",
        "When the last sync that left the mirror holding every object of the repository started, in seconds since the epoch.",
        &|s| {
            s.last_complete
                .map(|t| t.timestamp_millis() as f64 / 1000.0)
        },
    );
    each(
        &mut out,
        "lifeboat_mirror_lag_seconds",
        "Seconds since the last complete sync of the mirror started: how much newer the repository may be.",
        &|s| s.lag(now).map(|d| d.num_milliseconds() as f64 / 1000.0),
    );
    each(
        &mut out,
        "lifeboat_mirror_pending_objects",
        "Objects of the repository the mirror lacked after its last sync.",
        &|s| s.last_report.as_ref().map(|r| r.pending as f64),
    );
    each(
        &mut out,
        "lifeboat_mirror_pending_bytes",
        "Bytes of the objects the mirror lacked after its last sync.",
        &|s| s.last_report.as_ref().map(|r| r.pending_bytes as f64),
    );
    each(
        &mut out,
        "lifeboat_mirror_awaiting_deletion_objects",
        "Objects the repository deleted that the mirror keeps until their grace period ends.",
        &|s| Some(s.gone.len() as f64),
    );
    each(
        &mut out,
        "lifeboat_mirror_up",
        "1 when the mirror's last sync ran through, 0 when it could not reach or use the mirror.",
        &|s| {
            s.last_sync
                .map(|_| f64::from(u8::from(s.last_error.is_none())))
        },
    );
    out.0
}
