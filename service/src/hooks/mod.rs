//! Backup hooks for application consistency: commands run before (`pre`)
//! and after (`post`) a job reads its data, either on this host or in a
//! container of a pod through the Kubernetes exec API.
//!
//! Pre hooks run in order; one that fails with `on_error = "fail"` (the
//! default) stops the run before any data is read. Post hooks all run,
//! in order, whenever a pre hook ran — even when the backup failed — so a
//! frozen application is always thawed; their failures are reported and
//! never discard a snapshot.

pub mod annotations;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backup::items::{Item, Outcome};
use crate::field::{duration, resolve_path};
use crate::k8s::{K8sError, connect, exec::exec};

/// A job's `hooks` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run before the data is read.
    #[serde(default)]
    pub pre: Vec<Hook>,
    /// Run after the data is read.
    #[serde(default)]
    pub post: Vec<Hook>,
}

impl Hooks {
    /// Makes the pod hooks' kubeconfig paths relative to `base`.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let targets = self.pre.iter_mut().chain(self.post.iter_mut());
        for path in targets.filter_map(|h| h.pod.as_mut().and_then(|p| p.kubeconfig.as_mut())) {
            resolve_path(path, base);
        }
    }

    /// Runs the pre hooks, then `work`, then the post hooks (always, even
    /// when a pre hook or `work` failed), recording each hook in `items`.
    pub async fn around<T, E: From<HookError>>(
        &self,
        runner: &mut HookRunner,
        items: &mut Vec<Item>,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let pre = runner.run_configured(Phase::Pre, &self.pre, items).await;
        let result = match pre {
            Ok(()) => work.await,
            Err(e) => Err(e.into()),
        };
        // Post hook failures are reported in `items`; they never undo a backup.
        let _ = runner.run_configured(Phase::Post, &self.post, items).await;
        result
    }
}

/// One hook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// A name for reports (default: the command).
    #[serde(default)]
    pub name: Option<String>,
    /// The program and its arguments (no shell: use `["sh", "-c", "..."]`).
    pub command: Vec<String>,
    /// Run in a pod instead of on this host.
    #[serde(default)]
    pub pod: Option<PodTarget>,
    /// How long it may take (default 30 s); it is killed after.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// What a failure does.
    #[serde(default)]
    pub on_error: OnError,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Which pod(s) a hook runs in: those matching `selector` in `namespace`,
/// or the pod(s) using the claim `pvc`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodTarget {
    /// The namespace.
    pub namespace: String,
    /// A label selector (`app=postgres`).
    #[serde(default)]
    pub selector: Option<String>,
    /// A PersistentVolumeClaim the pod mounts.
    #[serde(default)]
    pub pvc: Option<String>,
    /// The container (default: the pod's only or first one).
    #[serde(default)]
    pub container: Option<String>,
    /// A kubeconfig (default: in-cluster or `KUBECONFIG`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

/// What a failing hook does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop the run (pre hooks); report it (post hooks).
    #[default]
    Fail,
    /// Report it and go on.
    Continue,
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the data is read.
    Pre,
    /// After.
    Post,
}

impl Phase {
    /// `pre` or `post`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pre => "pre",
            Self::Post => "post",
        }
    }
}

/// Why a run stopped at a hook.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {phase} hook {name} failed, so no data was read: {reason}; fix the hook or set on_error = \"continue\""
)]
pub struct HookError {
    /// `pre` or `post`.
    pub phase: &'static str,
    /// The hook's name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// Where a hook runs, resolved to concrete places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// This host.
    Local,
    /// A container of a pod.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// Container, if named.
        container: Option<String>,
        /// The hook's own kubeconfig, if it names one.
        kubeconfig: Option<PathBuf>,
    },
}

/// A hook ready to run at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// For reports.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Where.
    pub place: Place,
    /// Limit.
    pub timeout: Duration,
    /// On failure.
    pub on_error: OnError,
}

/// Runs hooks against one cluster connection (made on first use).
#[derive(Default)]
pub struct HookRunner {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    client: Option<kube::Client>,
}

impl std::fmt::Debug for HookRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookRunner")
            .field("kubeconfig", &self.kubeconfig)
            .field("connected", &self.client.is_some())
            .finish()
    }
}

impl HookRunner {
    /// A runner whose pod hooks use `kubeconfig`/`context` unless a hook
    /// names its own kubeconfig.
    pub fn new(kubeconfig: Option<PathBuf>, context: Option<String>) -> Self {
        Self {
            kubeconfig,
            context,
            client: None,
        }
    }

    async fn client(&mut self, kubeconfig: Option<&PathBuf>) -> Result<kube::Client, K8sError> {
        if let Some(path) = kubeconfig {
            return connect(Some(path), None).await;
        }
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// The places `hook` runs at (one per matching pod).
    pub async fn plan(&mut self, hook: &Hook) -> Result<Vec<Planned>, String> {
        let name = hook.name.clone().unwrap_or_else(|| hook.command.join(" "));
        if hook.command.is_empty() {
            return Err(format!("hook {name} has an empty command"));
        }
        let planned = |place| Planned {
            name: name.clone(),
            command: hook.command.clone(),
            place,
            timeout: hook.timeout,
            on_error: hook.on_error,
        };
        let Some(target) = &hook.pod else {
            return Ok(vec![planned(Place::Local)]);
        };
        let client = self
            .client(target.kubeconfig.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let pods = annotations::running_pods(
            &client,
            &target.namespace,
            target.selector.as_deref(),
            target.pvc.as_deref(),
        )
        .await
        .map_err(|e| e.to_string())?;
        if pods.is_empty() {
            return Err(format!(
                "hook {name}: no running pod in namespace {} matches {}",
                target.namespace,
                target
                    .selector
                    .as_deref()
                    .map(|s| format!("selector {s}"))
                    .or_else(|| target.pvc.as_deref().map(|p| format!("claim {p}")))
                    .unwrap_or_else(|| "anything".into())
            ));
        }
        Ok(pods
            .into_iter()
            .map(|(pod, default_container)| {
                planned(Place::Pod {
                    namespace: target.namespace.clone(),
                    pod,
                    container: target.container.clone().or(default_container),
                    kubeconfig: target.kubeconfig.clone(),
                })
            })
            .collect())
    }

    /// Runs one planned hook; `Err` holds why it failed.
    pub async fn run(&mut self, hook: &Planned) -> Result<(), String> {
        let work = async {
            match &hook.place {
                Place::Local => run_local(&hook.command).await,
                Place::Pod {
                    namespace,
                    pod,
                    container,
                    kubeconfig,
                } => {
                    let client = self
                        .client(kubeconfig.as_ref())
                        .await
                        .map_err(|e| e.to_string())?;
                    let outcome =
                        exec(&client, namespace, pod, container.as_deref(), &hook.command)
                            .await
                            .map_err(|e| e.to_string())?;
                    if outcome.success {
                        Ok(())
                    } else {
                        Err(with_stderr(
                            outcome.message.unwrap_or_default(),
                            &outcome.stderr,
                        ))
                    }
                }
            }
        };
        match tokio::time::timeout(hook.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "timed out after {} and was stopped",
                humantime::format_duration(hook.timeout)
            )),
        }
    }

    /// Plans and runs configured `hooks` of `phase` in order; a hook that
    /// cannot be planned (no matching pod) counts as failed.
    pub async fn run_configured(
        &mut self,
        phase: Phase,
        hooks: &[Hook],
        items: &mut Vec<Item>,
    ) -> Result<(), HookError> {
        for hook in hooks {
            match self.plan(hook).await {
                Ok(planned) => self.run_phase(phase, &planned, items).await?,
                Err(reason) => {
                    let name = hook.name.clone().unwrap_or_else(|| hook.command.join(" "));
                    items.push(Item::new(
                        "hook",
                        format!("{} {name}", phase.as_str()),
                        Outcome::Failed,
                        reason.clone(),
                    ));
                    if phase == Phase::Pre && hook.on_error == OnError::Fail {
                        return Err(HookError {
                            phase: phase.as_str(),
                            name,
                            reason,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `hooks` of `phase` in order, recording each as an item. Pre
    /// hooks stop at the first failure that is not `continue`.
    pub async fn run_phase(
        &mut self,
        phase: Phase,
        hooks: &[Planned],
        items: &mut Vec<Item>,
    ) -> Result<(), HookError> {
        for hook in hooks {
            let label = hook_label(phase, hook);
            let started = std::time::Instant::now();
            match self.run(hook).await {
                Ok(()) => items.push(Item::new(
                    "hook",
                    label,
                    Outcome::Stored,
                    format!("ran in {:.1} s", started.elapsed().as_secs_f64()),
                )),
                Err(reason) => {
                    items.push(Item::new("hook", label, Outcome::Failed, reason.clone()));
                    if phase == Phase::Pre && hook.on_error == OnError::Fail {
                        return Err(HookError {
                            phase: phase.as_str(),
                            name: hook.name.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// `pre NAME @ namespace/pod` or `pre NAME`.
fn hook_label(phase: Phase, hook: &Planned) -> String {
    match &hook.place {
        Place::Local => format!("{} {}", phase.as_str(), hook.name),
        Place::Pod { namespace, pod, .. } => {
            format!("{} {} in {namespace}/{pod}", phase.as_str(), hook.name)
        }
    }
}

/// Runs a local command, killing it when the future is dropped.
async fn run_local(command: &[String]) -> Result<(), String> {
    let output = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot start {}: {e}", command[0]))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(with_stderr(
            format!("exited with {}", output.status),
            &String::from_utf8_lossy(&output.stderr),
        ))
    }
}

/// `message`, with the last lines of `stderr` when there are any.
fn with_stderr(message: String, stderr: &str) -> String {
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    if tail.is_empty() {
        message
    } else {
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{message}: {}", tail.join(" / "))
    }
}
