//! `pods/exec` over the websocket channel protocol: each binary message
//! starts with its channel (1 stdout, 2 stderr, 3 the final `Status`).
//! The command runs as a local process standing in for the container, with
//! `POD_NAMESPACE`, `POD_NAME` and `CONTAINER` in its environment.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::routes::{authorized, failure, query_pairs};
use super::{Exec, State};

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;

/// The exec endpoint.
pub(crate) async fn handle(
    Shared(state): Shared<Arc<Mutex<State>>>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !authorized(&headers) {
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let pairs = query_pairs(query.as_deref());
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let container = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    let pod_object = {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .store
            .get(&(String::new(), "pods".into(), namespace.clone(), pod.clone()))
            .cloned()
    };
    let Some(pod_object) = pod_object else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{pod}\" not found"),
        );
    };
    let container = match pick_container(&pod_object, container.as_deref()) {
        Ok(container) => container,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    if pod_object["status"]["phase"] != "Running" {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("unable to upgrade connection: pod {pod} is not running"),
        );
    }
    if command.is_empty() {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let Ok(upgrade) = upgrade else {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
        );
    };
    let index = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.execs.push(Exec {
            namespace: namespace.clone(),
            pod: pod.clone(),
            container: container.clone(),
            command: command.clone(),
            exit_code: None,
            abandoned: false,
        });
        state.execs.len() - 1
    };
    upgrade
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            let (exit_code, abandoned) = run(socket, &namespace, &pod, &container, &command).await;
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(exec) = state.execs.get_mut(index) {
                exec.exit_code = exit_code;
                exec.abandoned = abandoned;
            }
        })
        .into_response()
}

/// The container to run in: the named one, or the only one.
fn pick_container(pod: &Value, wanted: Option<&str>) -> Result<String, String> {
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match (wanted, names.as_slice()) {
        (Some(wanted), names) if names.contains(&wanted) => Ok(wanted.to_owned()),
        (Some(wanted), names) => Err(format!(
            "container {wanted} is not valid for pod; choose one of: {}",
            names.join(" ")
        )),
        (None, [only]) => Ok((*only).to_owned()),
        (None, names) => Err(format!(
            "a container name must be specified, choose one of: {}",
            names.join(" ")
        )),
    }
}

/// Runs the command, streams its output and ends with its status. Returns
/// the exit code and whether the client left first.
async fn run(
    mut socket: WebSocket,
    namespace: &str,
    pod: &str,
    container: &str,
    command: &[String],
) -> (Option<i32>, bool) {
    let spawned = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", pod)
        .env("CONTAINER", container)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("exec: \"{}\": {e}", command[0])});
            send_status(&mut socket, &status).await;
            return (None, false);
        }
    };
    let (sender, mut output) = mpsc::channel::<(u8, Vec<u8>)>(16);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(stdout, STDOUT, sender.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(stderr, STDERR, sender.clone()));
    }
    drop(sender);
    let mut streams_open = true;
    let exit = loop {
        tokio::select! {
            chunk = output.recv(), if streams_open => match chunk {
                Some((channel, data)) => {
                    let mut frame = vec![channel];
                    frame.extend(data);
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        return (None, true);
                    }
                }
                None => streams_open = false,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return (None, true),
                Some(Ok(_)) => {}
            },
            status = child.wait(), if !streams_open => break status,
        }
    };
    let code = exit.ok().and_then(|s| s.code());
    let status = match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}}),
        None => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "the command was killed by a signal"}),
    };
    send_status(&mut socket, &status).await;
    (code, false)
}

async fn send_status(socket: &mut WebSocket, status: &Value) {
    let mut frame = vec![STATUS];
    frame.extend(status.to_string().into_bytes());
    let _ = socket.send(Message::Binary(frame.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

/// Sends what `reader` yields on `channel` until it ends.
async fn forward(
    mut reader: impl AsyncRead + Unpin,
    channel: u8,
    sender: mpsc::Sender<(u8, Vec<u8>)>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sender.send((channel, buffer[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
}
