//! One `[[job]]`: what it backs up, when, what it keeps, and where it was
//! defined.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cron::{CronSchedule, Timezone};
use crate::field::optional_duration;
use crate::retention::RetentionPolicy;
use crate::sources::SourceConfig;

/// One `[[job]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Unique name.
    pub name: String,
    /// What it backs up.
    pub source: SourceConfig,
    /// Commands run before and after the data is read.
    #[serde(default)]
    pub hooks: crate::hooks::Hooks,
    /// When it runs; `None`: only when triggered.
    #[serde(default)]
    pub schedule: Option<CronSchedule>,
    /// The schedule's time zone (default: the service's).
    #[serde(default)]
    pub timezone: Option<Timezone>,
    /// The most data the job may lose: the age its newest snapshot may
    /// reach (default: the service's `default_rpo`).
    #[serde(default, with = "optional_duration")]
    pub rpo: Option<std::time::Duration>,
    /// Which snapshots to keep after each run; `None` keeps them all.
    #[serde(default, deserialize_with = "retention_that_keeps")]
    pub retention: Option<RetentionPolicy>,
    /// Whether the schedule runs it (a disabled job can still be triggered).
    #[serde(default = "super::service::yes")]
    pub enabled: bool,
    /// Scheduled runs start after a random delay up to this.
    #[serde(default, with = "optional_duration")]
    pub jitter: Option<std::time::Duration>,
    /// Where it was defined.
    #[serde(skip)]
    pub origin: Origin,
}

impl JobConfig {
    /// Makes the source's and the hooks' relative paths relative to `base`.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.source.resolve_paths(base);
        self.hooks.resolve_paths(base);
    }
}

/// A `retention` table, refused when it would keep nothing.
fn retention_that_keeps<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<RetentionPolicy>, D::Error> {
    let policy = RetentionPolicy::deserialize(d)?;
    if !policy.keeps_something() {
        return Err(serde::de::Error::custom(
            "this retention keeps nothing; give at least one keep_* rule, \
             or leave retention out to keep every snapshot",
        ));
    }
    Ok(Some(policy))
}

/// Where a job was defined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// The line of the job's `name`.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)
    }
}

/// Sets each job's [`Origin`] from the position of its `name` in `text`.
pub(crate) fn locate_jobs(text: &str, path: &Path, jobs: &mut [JobConfig]) {
    #[derive(Deserialize)]
    struct Names {
        #[serde(default)]
        job: Vec<NameOnly>,
    }
    #[derive(Deserialize)]
    struct NameOnly {
        name: toml::Spanned<String>,
    }
    let lines: Vec<usize> = toml::from_str::<Names>(text)
        .map(|names| {
            names
                .job
                .iter()
                .map(|j| {
                    text[..j.name.span().start.min(text.len())]
                        .matches('\n')
                        .count()
                        + 1
                })
                .collect()
        })
        .unwrap_or_default();
    for (index, job) in jobs.iter_mut().enumerate() {
        job.origin = Origin {
            file: path.to_owned(),
            line: lines.get(index).copied().unwrap_or(0),
        };
    }
}
