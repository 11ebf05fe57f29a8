//! The job files of the schedules folder.
//!
//! Every `*.toml` file of the schedules folder may hold `[[job]]` tables and
//! at most one `[prune]` and one `[check]` in all; relative paths in a file
//! are taken from that file's folder. Job names are unique across all files:
//! a clash names both places.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use super::file::Config;
use super::job::{JobConfig, locate_jobs};
use super::service::{CheckTask, PruneTask};

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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::service::default_rpo;

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
