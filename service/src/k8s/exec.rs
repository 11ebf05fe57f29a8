//! Running a command in a pod's container through the exec API (the
//! websocket channel protocol), as `kubectl exec` does.

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt;

use super::K8sError;

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Whether the command exited 0.
    pub success: bool,
    /// The server's message when it did not (`command terminated with
    /// non-zero exit code: ...`).
    pub message: Option<String>,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// Runs `command` in `container` of pod `namespace/pod` and waits for it.
///
/// Fails when the exec cannot be started (no such pod or container, not
/// running, forbidden).
pub async fn exec(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    command: &[String],
) -> Result<ExecOutcome, K8sError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut params = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    if let Some(container) = container {
        params = params.container(container);
    }
    let what = || format!("exec in pod {namespace}/{pod}");
    let mut process = pods
        .exec(pod, command.to_vec(), &params)
        .await
        .map_err(|e| K8sError::api(what(), e))?;
    let status = process.take_status();
    let mut stdout = String::new();
    let mut stderr = String::new();
    let (out, err) = (process.stdout(), process.stderr());
    let read_out = async {
        if let Some(mut out) = out {
            let _ = out.read_to_string(&mut stdout).await;
        }
    };
    let read_err = async {
        if let Some(mut err) = err {
            let _ = err.read_to_string(&mut stderr).await;
        }
    };
    tokio::join!(read_out, read_err);
    let status = match status {
        Some(status) => status.await,
        None => None,
    };
    let _ = process.join().await;
    let success = status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success");
    let message = if success {
        None
    } else {
        Some(
            status
                .and_then(|s| s.message)
                .unwrap_or_else(|| "the exec ended without a status".into()),
        )
    };
    Ok(ExecOutcome {
        success,
        message,
        stdout,
        stderr,
    })
}
