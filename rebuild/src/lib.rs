//! `lifeboat rebuild` as a library: the Talos cluster rebuilt from its
//! backups in one resumable, timed run — VMs through libvirt, machine
//! configs and etcd through the Talos API, volume data through Kubernetes
//! Jobs, databases with pg_restore.
//!
//! A crate of its own rather than a module of `lifeboat-service`: it links
//! libvirt's C library (the `virt` crate), which `lifeboatd`, running in
//! the cluster, must not need. It uses the service library's restore
//! functions for what it puts back, and asks its caller (the CLI) for the
//! two things that belong to a command line: unlocking the repository
//! (a passphrase may be prompted for) and the PostgreSQL restore of
//! `lifeboat restore`, through [`Restores`].
//!
//! - [`spec`]: the cluster spec (TOML) and its checks;
//! - [`plan`](mod@plan): the steps in order, their ids and descriptions
//!   (`--plan`, as data from [`plan()`]);
//! - [`runner`]: doing a step;
//! - [`domain`]: the libvirt XML of a node's VM and disk;
//! - [`hypervisor`]: libvirt calls on one connection;
//! - [`talos`]: the nodes' Talos API and the fetched Talos files;
//! - [`kubernetes`]: the Kubernetes API of the rebuilt cluster;
//! - [`data`]: volume data back on the nodes by restore Jobs;
//! - [`workloads`]: the workloads using those volumes stopped meanwhile;
//! - [`progress`]: the state file for `--resume` and the timed report;
//! - [`error`]: [`RebuildError`], wrapping each module's error.

pub mod data;
pub mod domain;
pub mod error;
pub mod hypervisor;
pub mod kubernetes;
pub mod patches;
pub mod plan;
pub mod progress;
pub mod runner;
pub mod spec;
pub mod talos;
pub mod workloads;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::keys::RestoreIdentity;
use lifeboat::storage::S3Options;

pub use self::error::RebuildError;
use self::progress::{Progress, Status, StepRecord};
use self::runner::Runner;
use self::spec::{ClusterSpec, PostgresRestore};

/// How often a rebuild's waits (for a node, etcd, the Kubernetes API, a
/// Job, pods) ask again.
const POLL: Duration = Duration::from_millis(500);

/// An error of the caller's, kept as the cause of the rebuild's.
pub type CallerError = Box<dyn std::error::Error + Send + Sync>;

/// What a rebuild is told beside its spec.
#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// The work folder: fetched backups (kept 0700), state and report.
    pub work: PathBuf,
    /// Continue an earlier run at its failed step.
    pub resume: bool,
    /// Destroy and recreate existing VMs and disks of the nodes.
    pub replace: bool,
    /// The repository URL, over `[backups] repository` of the spec.
    pub repository: Option<String>,
    /// The restore key file, over `[backups] identity` of the spec.
    pub identity: Option<PathBuf>,
}

/// Where the repository is.
#[derive(Debug, Clone)]
pub struct RepositoryLocation {
    /// Its URL (a local path as given).
    pub url: String,
    /// Its S3 settings.
    pub s3: S3Options,
}

/// What the rebuild asks of its caller.
#[async_trait::async_trait(?Send)]
pub trait Restores {
    /// Opens the repository at `location` and unlocks it with the restore
    /// key in `identity`.
    ///
    /// Fails when the repository cannot be opened or the key does not
    /// open it.
    async fn unlock(
        &self,
        location: &RepositoryLocation,
        identity: &Path,
    ) -> Result<UnlockedRepository<RestoreIdentity>, CallerError>;

    /// Restores the PostgreSQL snapshot of `entry` into its server, as
    /// `lifeboat restore SNAPSHOT --pg-url URL` does.
    ///
    /// Fails as that restore fails.
    async fn restore_postgres(
        &self,
        repo: &UnlockedRepository<RestoreIdentity>,
        entry: &PostgresRestore,
    ) -> Result<(), CallerError>;
}

/// Told about each step as it starts and ends.
pub trait Observer {
    /// Step `id` starts.
    fn started(&mut self, id: &str);
    /// A step ended as `record` says.
    fn ended(&mut self, record: &StepRecord);
}

/// One step of the plan, as `--plan` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    /// Its id in the state file and report, e.g. `start:talos-cp1`.
    pub id: String,
    /// What it will do, with the exact XML and API calls.
    pub description: String,
}

/// Every step a rebuild of `spec` does, in order, described.
pub fn plan(spec: &ClusterSpec) -> Vec<PlannedStep> {
    plan::all(spec)
        .into_iter()
        .map(|step| PlannedStep {
            id: step.id(spec),
            description: step.describe(spec),
        })
        .collect()
}

/// Each node's machine config as the rebuild will apply it (its patches
/// applied, secrets redacted), when an earlier run fetched the
/// talos-config snapshot into `work`; `None` when it has not.
pub fn effective_configs(
    spec: &ClusterSpec,
    work: &std::path::Path,
) -> Option<Vec<(String, Result<String, RebuildError>)>> {
    let nodes = talos::Nodes { spec, work };
    if !nodes.talos_config_dir().is_dir() {
        return None;
    }
    let config = |node: &spec::NodeSpec| -> Result<String, RebuildError> {
        let path = nodes.machine_config(node)?;
        let base =
            std::fs::read(&path).map_err(|source| talos::NodeError::ReadConfig { path, source })?;
        Ok(patches::redacted(&patches::effective(&base, node)?)?)
    };
    Some(
        spec.nodes
            .iter()
            .map(|node| (node.name.clone(), config(node)))
            .collect(),
    )
}

/// How a run ended: the report (written to [`Outcome::report`]) and, when
/// a step failed, its error.
#[derive(Debug)]
pub struct Outcome {
    /// The steps of this run and the earlier ones.
    pub progress: Progress,
    /// Where the JSON report was written.
    pub report: PathBuf,
    /// The failed step's error ([`RebuildError::Step`]), if one failed
    /// (the run stopped there).
    pub failure: Option<RebuildError>,
}

/// Rebuilds the cluster of `spec`: runs every step not done by an earlier
/// run (with `resume`), stopping at the first that fails, recording each
/// in the state file, and writes the report.
///
/// Fails before the first step when the work folder cannot be made or
/// (with `resume`) the state file cannot be read; a failed step is in
/// [`Outcome::failure`].
pub async fn rebuild(
    spec: &ClusterSpec,
    options: &RebuildOptions,
    restores: &dyn Restores,
    observer: &mut dyn Observer,
) -> Result<Outcome, RebuildError> {
    let work = &options.work;
    std::fs::create_dir_all(work).map_err(RebuildError::io("creating the work folder", work))?;
    restrict(work)?;
    let cluster = spec.identity();
    let mut progress = if options.resume {
        Progress::resume(work, &cluster)?
    } else {
        Progress::new(cluster)
    };
    let mut runner = Runner::new(spec.clone(), options, restores);
    let mut failure = None;
    for step in plan::all(spec) {
        let id = step.id(spec);
        if progress.is_done(&id) {
            continue;
        }
        observer.started(&id);
        let started = Instant::now();
        let result = runner.run(step).await;
        let seconds = started.elapsed().as_secs_f64();
        let (status, detail) = match &result {
            Ok(detail) => (Status::Done, detail.clone()),
            Err(e) => (Status::Failed, lifeboat::errors::describe(e)),
        };
        let record = StepRecord {
            id: id.clone(),
            status,
            seconds,
            detail,
        };
        observer.ended(&record);
        progress.record(work, record)?;
        if let Err(e) = result {
            failure = Some(RebuildError::Step {
                id,
                source: Box::new(e),
            });
            break;
        }
    }
    let report = Progress::report_path(work);
    progress.write(&report)?;
    Ok(Outcome {
        progress,
        report,
        failure,
    })
}

/// Keeps the work folder (it holds the cluster's secrets) to its owner.
fn restrict(dir: &Path) -> Result<(), RebuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(RebuildError::io(
        "restricting to its owner the work folder",
        dir,
    ))
}

/// Specs for the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::spec::ClusterSpec;

    /// A spec of a worker `w1` listed before the control-plane node `cp1`,
    /// the ISO a file, with `extra` TOML (tables) before the nodes.
    pub fn spec(extra: &str) -> ClusterSpec {
        let text = format!(
            r#"
            [libvirt]
            uri = "test:///default"
            iso = "/mnt/user/isos/metal-amd64.iso"
            {extra}
            [[node]]
            name = "w1"
            role = "worker"
            mac = "52:54:00:00:00:02"
            maintenance_address = "10.0.0.51"
            endpoint = "10.0.0.11"
            [[node]]
            name = "cp1"
            role = "controlplane"
            mac = "52:54:00:00:00:01"
            maintenance_address = "10.0.0.50"
            endpoint = "10.0.0.10:50001"
            "#
        );
        let spec: ClusterSpec = toml::from_str(&text).expect("a test spec");
        spec.check().expect("a valid test spec");
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::StateError;
    use crate::testing::spec;

    /// Answers as a caller without a repository would.
    struct NoRepository;

    #[async_trait::async_trait(?Send)]
    impl Restores for NoRepository {
        async fn unlock(
            &self,
            _: &RepositoryLocation,
            _: &Path,
        ) -> Result<UnlockedRepository<RestoreIdentity>, CallerError> {
            Err("no repository in unit tests".into())
        }

        async fn restore_postgres(
            &self,
            _: &UnlockedRepository<RestoreIdentity>,
            _: &PostgresRestore,
        ) -> Result<(), CallerError> {
            Err("no PostgreSQL in unit tests".into())
        }
    }

    /// Records the steps started.
    #[derive(Default)]
    struct Started(Vec<String>);

    impl Observer for Started {
        fn started(&mut self, id: &str) {
            self.0.push(id.to_owned());
        }
        fn ended(&mut self, _: &StepRecord) {}
    }

    fn done(id: &str) -> StepRecord {
        StepRecord {
            id: id.into(),
            status: Status::Done,
            seconds: 1.5,
            detail: "done".into(),
        }
    }

    #[tokio::test]
    async fn a_resumed_run_skips_done_steps_retries_the_failed_one_and_stops_there() {
        let work = tempfile::tempdir().expect("work folder");
        let spec = spec("");
        let ids: Vec<String> = plan(&spec).into_iter().map(|s| s.id).collect();
        // An earlier run did every step but the last, which failed.
        let mut earlier = Progress::new(spec.identity());
        for id in &ids[..ids.len() - 1] {
            earlier.record(work.path(), done(id)).expect("record");
        }
        let last = ids.last().expect("steps").clone();
        earlier
            .record(
                work.path(),
                StepRecord {
                    status: Status::Failed,
                    ..done(&last)
                },
            )
            .expect("record");
        // Make the last step one that fails at once without a network.
        assert_eq!(last, "kubernetes-api");
        let options = RebuildOptions {
            work: work.path().to_owned(),
            resume: true,
            ..RebuildOptions::default()
        };
        let mut started = Started::default();
        let outcome = rebuild(&spec, &options, &NoRepository, &mut started)
            .await
            .expect("a run");
        assert_eq!(
            started.0,
            std::slice::from_ref(&last),
            "only the failed step runs again"
        );
        match &outcome.failure {
            Some(RebuildError::Step { id, source }) => {
                assert_eq!(id, &last);
                assert!(
                    matches!(**source, RebuildError::Kubernetes(_)),
                    "{source:?}"
                );
            }
            other => panic!("the step must fail: {other:?}"),
        }
        let statuses: Vec<Status> = outcome.progress.steps.iter().map(|s| s.status).collect();
        assert_eq!(statuses.len(), ids.len());
        assert!(
            statuses[..ids.len() - 1]
                .iter()
                .all(|s| *s == Status::DoneEarlier)
        );
        assert_eq!(statuses.last(), Some(&Status::Failed));
        assert!(outcome.report.is_file());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(work.path()).expect("work").permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }

    #[tokio::test]
    async fn a_fresh_run_starts_at_the_first_step_and_needs_a_repository() {
        let work = tempfile::tempdir().expect("work folder");
        let options = RebuildOptions {
            work: work.path().join("new"),
            ..RebuildOptions::default()
        };
        let mut started = Started::default();
        let outcome = rebuild(&spec(""), &options, &NoRepository, &mut started)
            .await
            .expect("a run");
        assert_eq!(started.0, ["fetch-backups"]);
        let failure = outcome.failure.expect("no repository given");
        let text = lifeboat::errors::describe(&failure);
        assert!(
            text.contains("step fetch-backups failed") && text.contains("--repo URL"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_state_file_of_another_cluster_is_not_resumed() {
        let work = tempfile::tempdir().expect("work folder");
        let mut earlier = Progress::new(spec("").identity());
        earlier
            .record(work.path(), done("fetch-backups"))
            .expect("record");
        let mut other = spec("");
        other.nodes[1].mac = "52:54:00:00:00:99".into();
        let options = RebuildOptions {
            work: work.path().to_owned(),
            resume: true,
            ..RebuildOptions::default()
        };
        let mut started = Started::default();
        let error = rebuild(&other, &options, &NoRepository, &mut started)
            .await
            .expect_err("another cluster");
        assert!(
            matches!(error, RebuildError::State(StateError::OtherCluster { .. })),
            "{error:?}"
        );
        assert!(started.0.is_empty(), "no step may run");
    }
}
