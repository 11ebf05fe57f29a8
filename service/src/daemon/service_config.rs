//! What `lifeboatd serve` reads besides the repository: the `[service]`
//! table, the `[prune]` and `[check]` tasks, and the job files of the
//! schedules folder.
//!
//! ```toml
//! [service]
//! listen = "0.0.0.0:8080"            # default 127.0.0.1:8080
//! token_file = "/config/api-token"   # default <state_dir>/api-token, made on first start
//! schedules_dir = "/config/schedules" # default `schedules` beside this file
//! max_concurrent_jobs = 2
//! shutdown_grace = "25s"
//! default_rpo = "24h"
//! rto = "2h"
//! timezone = "Europe/Berlin"
//! ```
//!
//! Every `*.toml` file of the schedules folder may hold `[[job]]` tables and
//! at most one `[prune]` and one `[check]` in all; relative paths in a file
//! are taken from that file's folder. Job names are unique across all files:
//! a clash names both places.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::config::{Config, ConfigError, JobConfig};
use super::timing::{CronSchedule, Timezone, duration, optional_duration};

/// The `[service]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Where the HTTP server listens. The default, loopback only, exposes
    /// nothing to the network by accident; containers set `0.0.0.0:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The file holding the API's bearer token; created with a random token
    /// on first start when missing. Default `<state_dir>/api-token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The folder of job files. Default `schedules` beside the config file
    /// (then it may be missing); a folder given here must exist.
    #[serde(default)]
    pub schedules_dir: Option<PathBuf>,
    /// How many jobs (backups, prune, check) may run at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_jobs: NonZeroUsize,
    /// How long running jobs may go on after SIGTERM; keep it below the
    /// orchestrator's kill timeout (Kubernetes: 30 s by default).
    #[serde(default = "default_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// The RPO of jobs that set none.
    #[serde(default = "default_rpo", with = "duration")]
    pub default_rpo: Duration,
    /// The recovery time objective, shown on the status page and exported
    /// so alerts can compare restore drills against it.
    #[serde(default, with = "optional_duration")]
    pub rto: Option<Duration>,
    /// The time zone of schedules that name none (default UTC).
    #[serde(default)]
    pub timezone: Timezone,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(1)
}

fn default_grace() -> Duration {
    Duration::from_secs(25)
}

fn default_rpo() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token_file: None,
            schedules_dir: None,
            max_concurrent_jobs: default_concurrency(),
            shutdown_grace: default_grace(),
            default_rpo: default_rpo(),
            rto: None,
            timezone: Timezone::default(),
        }
    }
}

/// The `[prune]` table: removing what no snapshot uses, in two phases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneTask {
    /// When it runs (cron with seconds).
    pub schedule: CronSchedule,
    /// The schedule's time zone (default: the service's).
    #[serde(default)]
    pub timezone: Option<Timezone>,
    /// How long a pack marked unused waits before deletion; longer than
    /// the longest backup of any other program writing the repository.
    #[serde(default = "default_prune_grace", with = "duration")]
    pub grace: Duration,
    /// Whether it is scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_prune_grace() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The `[check]` table: verifying the repository with the service key
/// (structure, and a sample of packs against their hashes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckTask {
    /// When it runs (cron with seconds).
    pub schedule: CronSchedule,
    /// The schedule's time zone (default: the service's).
    #[serde(default)]
    pub timezone: Option<Timezone>,
    /// Percentage of packs downloaded and hashed each time (0–100).
    #[serde(default = "default_subset", deserialize_with = "percentage")]
    pub read_data_subset: f64,
    /// Whether it is scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_subset() -> f64 {
    5.0
}

fn percentage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "{value} is not a percentage from 0 to 100"
        )))
    }
}

pub(crate) fn yes() -> bool {
    true
}

/// Names of the service's own tasks, which jobs cannot take.
pub const RESERVED_NAMES: [&str; 2] = ["prune", "check"];

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

/// One file of the schedules folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    #[serde(default, rename = "job")]
    jobs: Vec<JobConfig>,
    #[serde(default)]
    prune: Option<PruneTask>,
    #[serde(default)]
    check: Option<CheckTask>,
}

/// Notes that `file` gives the table `name`; fails when another file did.
fn claim(name: &str, from: &mut Option<PathBuf>, file: &Path) -> Result<(), ConfigError> {
    if let Some(first) = from {
        return Err(ConfigError::Invalid {
            path: file.to_owned(),
            message: format!("{name} is also given in {}; keep one", first.display()),
        });
    }
    *from = Some(file.to_owned());
    Ok(())
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

impl Config {
    /// Reads `lifeboat.toml` and every job file of its schedules folder:
    /// what `lifeboatd` runs.
    ///
    /// Fails, naming the file, line and field, when any file is unreadable
    /// or invalid, two jobs share a name, or `[prune]` or `[check]` is
    /// given twice; nothing of an invalid configuration is used.
    pub fn load_with_schedules(path: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (dir, required) = match &config.service.schedules_dir {
            Some(dir) => (dir.clone(), true),
            None => (base.join("schedules"), false),
        };
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(config),
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        };
        let mut files: Vec<PathBuf> = listing
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        files.sort();
        let mut prune_from = config.prune.as_ref().map(|_| path.to_owned());
        let mut check_from = config.check.as_ref().map(|_| path.to_owned());
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            let invalid = |message: String| ConfigError::Invalid {
                path: file.clone(),
                message,
            };
            let mut parsed: ScheduleFile =
                toml::from_str(&text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
            locate_jobs(&text, &file, &mut parsed.jobs);
            let folder = file.parent().unwrap_or(Path::new("."));
            for job in &mut parsed.jobs {
                job.resolve_paths(folder);
            }
            config.jobs.append(&mut parsed.jobs);
            if let Some(found) = parsed.prune.take() {
                claim("[prune]", &mut prune_from, &file)?;
                config.prune = Some(found);
            }
            if let Some(found) = parsed.check.take() {
                claim("[check]", &mut check_from, &file)?;
                config.check = Some(found);
            }
        }
        config.check_job_names()?;
        Ok(config)
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

    fn write(path: &Path, text: &str) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(std::fs::write(path, text)?)
    }

    #[test]
    fn schedule_files_add_jobs_and_a_clash_names_both_places() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("lifeboat.toml");
        write(
            &config,
            &format!(
                "{BASE}[[job]]\nname = \"a\"\nsource = {{ kind = \"directory\", paths = [\"x\"] }}\n"
            ),
        )?;
        let job = "[[job]]\nname = \"b\"\nschedule = \"*/5 * * * * *\"\nrpo = \"90s\"\nsource = { kind = \"directory\", paths = [\"data\"] }\n";
        write(
            &dir.path().join("schedules/b.toml"),
            &format!("# b\n{job}[prune]\nschedule = \"0 0 3 * * *\"\n"),
        )?;
        let loaded = Config::load_with_schedules(&config)?;
        let names: Vec<_> = loaded.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let b = &loaded.jobs[1];
        assert_eq!(b.origin.line, 3);
        assert_eq!(loaded.rpo_of(b), Duration::from_secs(90));
        assert_eq!(loaded.rpo_of(&loaded.jobs[0]), default_rpo());
        assert!(loaded.prune.is_some() && loaded.check.is_none());
        let source = format!("{:?}", b.source);
        assert!(
            source.contains(&dir.path().join("schedules/data").display().to_string()),
            "{source}"
        );

        write(
            &dir.path().join("schedules/c.toml"),
            &job.replace("\"b\"", "\"a\""),
        )?;
        let error = Config::load_with_schedules(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("c.toml") && error.contains("line 2"),
            "{error}"
        );
        assert!(error.contains("lifeboat.toml line 5"), "{error}");
        write(
            &dir.path().join("schedules/c.toml"),
            "[prune]\nschedule = \"0 0 4 * * *\"\n",
        )?;
        let error = Config::load_with_schedules(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("[prune] is also given in") && error.contains("b.toml"),
            "{error}"
        );
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

    #[test]
    fn the_shipped_schedules_load() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schedules");
        let config = dir.path().join("lifeboat.toml");
        write(
            &config,
            &format!(
                "{BASE}[service]\nschedules_dir = {:?}\n",
                shipped.display().to_string()
            ),
        )?;
        let loaded = Config::load_with_schedules(&config)?;
        let names: Vec<_> = loaded.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            ["etcd", "kubernetes", "postgres", "talos-config", "volumes"]
        );
        assert!(
            loaded
                .jobs
                .iter()
                .all(|j| j.schedule.is_some() && j.retention.is_some())
        );
        assert!(loaded.prune.is_some() && loaded.check.is_some());
        Ok(())
    }
}
