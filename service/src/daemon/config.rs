//! `lifeboat.toml`: the repository and the jobs.
//!
//! ```toml
//! [repository]
//! url = "s3://backups/homelab"            # or a local path
//! service_identity = "/config/service.key"
//! recipients = ["age1…"]                  # restore recipients
//! s3 = { endpoint = "https://<account>.r2.cloudflarestorage.com" }
//!
//! [[job]]
//! name = "appdata"
//! source = { kind = "directory", paths = ["/mnt/user/appdata"] }
//! schedule = "0 15 * * * *"               # cron with seconds; none: run by hand only
//! timezone = "Europe/Berlin"              # default: [service] timezone, else UTC
//! rpo = "1h"                              # default: [service] default_rpo
//! retention = { keep_hourly = 48, keep_daily = 14 }  # none: keep every snapshot
//! jitter = "2m"                           # random delay of scheduled runs
//! enabled = true
//! ```
//!
//! The `[service]`, `[prune]` and `[check]` tables and the schedules folder
//! are described in [`super::service_config`]. Relative paths are taken
//! from the config file's folder. Errors name the file, the line and the
//! field.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::retention::RetentionPolicy;
use super::service_config::{self, CheckTask, Origin, PruneTask, ServiceSettings};
use super::timing::{CronSchedule, Timezone, optional_duration};
use crate::sources::SourceConfig;
use crate::storage::S3Options;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a wrong field (the message gives line and field).
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// No job of that name.
    #[error("config {path} has no job {name:?}; its jobs are: {known}")]
    NoJob {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The jobs it has.
        known: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where backups go.
    pub repository: RepositoryConfig,
    /// Local state (caches); default `state` beside the config file.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// How `lifeboatd serve` runs.
    #[serde(default)]
    pub service: ServiceSettings,
    /// The prune task, if scheduled here.
    #[serde(default)]
    pub prune: Option<PruneTask>,
    /// The check task, if scheduled here.
    #[serde(default)]
    pub check: Option<CheckTask>,
    /// The jobs.
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobConfig>,
}

/// The `[repository]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `s3://bucket/prefix`, `file:///path` or a path.
    pub url: String,
    /// The service's age identity file (created on first use if missing).
    pub service_identity: PathBuf,
    /// Restore recipients (`age1…`). When empty on first use, a restore
    /// identity is generated beside the service identity.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// S3 connection settings.
    #[serde(default)]
    pub s3: S3Options,
}

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
    #[serde(default = "service_config::yes")]
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

impl Config {
    /// Reads and checks a config file.
    ///
    /// Fails when it is unreadable, invalid, or two jobs share a name.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text that was read from `path`.
    ///
    /// Fails when it is invalid or two jobs share a name.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut config: Self =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        service_config::locate_jobs(text, path, &mut config.jobs);
        config.check_job_names()?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let absolute = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        absolute(&mut self.repository.service_identity);
        let url = &mut self.repository.url;
        if !url.contains("://") && Path::new(url.as_str()).is_relative() {
            *url = base.join(&*url).display().to_string();
        }
        let state = self.state_dir.get_or_insert_with(|| PathBuf::from("state"));
        absolute(state);
        for path in [
            &mut self.service.token_file,
            &mut self.service.schedules_dir,
        ]
        .into_iter()
        .flatten()
        {
            absolute(path);
        }
        for job in &mut self.jobs {
            job.resolve_paths(base);
        }
    }

    /// The job called `name`.
    ///
    /// Fails with [`ConfigError::NoJob`] listing the jobs there are.
    pub fn job(&self, name: &str, path: &Path) -> Result<&JobConfig, ConfigError> {
        self.jobs
            .iter()
            .find(|j| j.name == name)
            .ok_or_else(|| ConfigError::NoJob {
                path: path.to_owned(),
                name: name.into(),
                known: self
                    .jobs
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ```toml blocks of a Markdown file that define jobs.
    fn job_examples(markdown: &str) -> Vec<String> {
        markdown
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .filter(|block| block.contains("[[job]]"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_readmes_job_examples_load() -> anyhow::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in ["README.md", "deploy/README.md"] {
            let markdown = std::fs::read_to_string(root.join(file))?;
            let examples = job_examples(&markdown);
            assert!(!examples.is_empty() || file != "README.md");
            for example in examples {
                let text = if example.contains("[repository]") {
                    example.clone()
                } else {
                    format!("[repository]\nurl = \"repo\"\nservice_identity = \"k\"\n{example}")
                };
                if let Err(e) = Config::parse(&text, Path::new("/srv/lifeboat.toml")) {
                    panic!("an example of {file} does not load: {e}\n{example}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = "[repository]\nurl = \"repo\"\nservice_identity = \"k\"\n\n[[job]]\nname = \"a\"\nsource = { kind = \"directory\", pahts = [\"/x\"] }\n";
        let error = Config::parse(text, Path::new("/etc/lifeboat.toml"))
            .err()
            .map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(error.contains("/etc/lifeboat.toml"), "{error}");
        assert!(error.contains("line 7"), "{error}");
        assert!(error.contains("pahts"), "{error}");
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_folder() -> anyhow::Result<()> {
        let text = "[repository]\nurl = \"repo\"\nservice_identity = \"keys/service.key\"\n[[job]]\nname = \"a\"\nsource = { kind = \"directory\", paths = [\"data\"] }\n";
        let config = Config::parse(text, Path::new("/srv/lb/lifeboat.toml"))?;
        assert_eq!(config.repository.url, "/srv/lb/repo");
        assert_eq!(
            config.repository.service_identity,
            Path::new("/srv/lb/keys/service.key")
        );
        assert_eq!(
            config.state_dir.as_deref(),
            Some(Path::new("/srv/lb/state"))
        );
        assert!(config.job("b", Path::new("x")).is_err());
        Ok(())
    }
}
