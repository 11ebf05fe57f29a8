//! `lifeboat.toml` itself: the whole configuration, reading and checking
//! it, and the questions asked of it (a job by name, its time zone and
//! RPO, the state folder).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::cron::Timezone;
use super::job::{self, JobConfig, Origin};
use super::service::{
    CheckTask, DrillTask, MirrorTask, PruneTask, RESERVED_NAMES, ServiceSettings,
};
use crate::drill::DrillJob;
use crate::storage::S3Options;

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
    /// The drill task, if lifeboatd drills restores itself.
    #[serde(default)]
    pub drill: Option<DrillTask>,
    /// Mirrors that get a copy of every object.
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<MirrorTask>,
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
        job::locate_jobs(text, path, &mut config.jobs);
        config.check_job_names()?;
        config.check_mirrors().map_err(invalid)?;
        if let Some(drill) = &config.drill {
            config
                .drill_jobs(&drill.jobs, path)
                .map_err(|e| invalid(format!("[drill] jobs: {e}")))?;
        }
        Ok(config)
    }

    /// Checks that mirrors have distinct names of letters, digits, `-`
    /// and `_`, and none is the repository itself.
    fn check_mirrors(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for mirror in &self.mirrors {
            let name = &mirror.name;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "[[mirror]] name {name:?}: use letters, digits, `-` and `_`"
                ));
            }
            if !seen.insert(name) {
                return Err(format!("two [[mirror]] tables are called {name:?}"));
            }
            if mirror.url == self.repository.url {
                return Err(format!(
                    "[[mirror]] {name} is the repository itself ({}); give it another location",
                    mirror.url
                ));
            }
        }
        Ok(())
    }

    /// The grace an object gone from the primary keeps on `mirror`.
    pub fn mirror_grace(&self, mirror: &MirrorTask) -> Duration {
        mirror
            .grace
            .or(self.prune.as_ref().map(|p| p.grace))
            .unwrap_or(Duration::from_secs(24 * 3600))
    }

    /// The enabled mirror called `name`.
    pub fn mirror(&self, name: &str) -> Option<&MirrorTask> {
        self.mirrors.iter().find(|m| m.enabled && m.name == name)
    }

    /// The jobs `names` (all when empty) with their RPOs, to drill.
    ///
    /// Fails naming the jobs there are when a name is not one, or when
    /// there are none.
    pub fn drill_jobs(&self, names: &[String], path: &Path) -> Result<Vec<DrillJob>, ConfigError> {
        let chosen: Vec<&JobConfig> = if names.is_empty() {
            self.jobs.iter().collect()
        } else {
            names
                .iter()
                .map(|name| self.job(name, path))
                .collect::<Result<_, _>>()?
        };
        if chosen.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "there are no jobs to drill".into(),
            });
        }
        Ok(chosen
            .into_iter()
            .map(|job| DrillJob {
                name: job.name.clone(),
                rpo: self.rpo_of(job),
            })
            .collect())
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
        for mirror in &mut self.mirrors {
            let url = &mut mirror.url;
            if !url.contains("://") && Path::new(url.as_str()).is_relative() {
                *url = base.join(&*url).display().to_string();
            }
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
        if let Some(drill) = &mut self.drill {
            absolute(&mut drill.identity);
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

    /// Fails when a job name is unusable or used twice (naming both places).
    pub(crate) fn check_job_names(&self) -> Result<(), ConfigError> {
        let mut seen: std::collections::HashMap<&str, &Origin> = std::collections::HashMap::new();
        for job in &self.jobs {
            let invalid = |message: String| ConfigError::Invalid {
                path: job.origin.file.clone(),
                message: format!("line {}, field `name`: {message}", job.origin.line),
            };
            if job.name.is_empty() || job.name.contains(['/', ':']) {
                return Err(invalid(format!(
                    "job name {:?} must be non-empty, without '/' or ':'",
                    job.name
                )));
            }
            if RESERVED_NAMES.contains(&job.name.as_str()) {
                return Err(invalid(format!(
                    "{:?} names the service's own task; call the job something else",
                    job.name
                )));
            }
            if let Some(first) = seen.insert(&job.name, &job.origin) {
                return Err(invalid(format!(
                    "a job called {:?} is also defined at {first}; job names must be unique",
                    job.name
                )));
            }
        }
        Ok(())
    }

    /// The time zone `job`'s schedule is read in.
    pub fn timezone_of(&self, job: &JobConfig) -> Timezone {
        job.timezone.unwrap_or(self.service.timezone)
    }

    /// The RPO of `job`.
    pub fn rpo_of(&self, job: &JobConfig) -> Duration {
        job.rpo.unwrap_or(self.service.default_rpo)
    }

    /// The state folder: `state_dir`, else `state` (relative to the
    /// working folder, as for a config that was not loaded from a file).
    pub fn state_folder(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("state"))
    }

    /// The API token file.
    pub fn token_file(&self) -> PathBuf {
        self.service
            .token_file
            .clone()
            .unwrap_or_else(|| self.state_folder().join("api-token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[repository]\nurl = \"repo\"\nservice_identity = \"k\"\n";

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

    #[test]
    fn bad_values_name_the_file_line_and_field() -> anyhow::Result<()> {
        let cases = [
            ("schedule = \"0 5 * * *\"", "seconds"),
            ("timezone = \"Mars/Olympus\"", "time zone"),
            ("rpo = \"soon\"", "duration"),
            ("retention = { keep_last = 0 }", "keeps nothing"),
            ("retention = { keep_lats = 3 }", "keep_lats"),
        ];
        for (line, expected) in cases {
            let text = format!(
                "{BASE}\n[[job]]\nname = \"a\"\nsource = {{ kind = \"directory\" }}\n{line}\n"
            );
            let error = Config::parse(&text, Path::new("/etc/lb.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("/etc/lb.toml") && error.contains("line 8"),
                "{line}: {error}"
            );
            assert!(error.contains(expected), "{line}: {error}");
        }
        let text = format!("{BASE}[service]\nmax_concurrent_jobs = 0\n");
        let error = Config::parse(&text, Path::new("x.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("line 5") && error.contains("nonzero"),
            "{error}"
        );
        let text =
            format!("{BASE}[[job]]\nname = \"prune\"\nsource = {{ kind = \"directory\" }}\n");
        assert!(Config::parse(&text, Path::new("x.toml")).is_err());
        Ok(())
    }
}
