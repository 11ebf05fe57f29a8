//! The stand-in's routes: system, container inspection and exec, with the
//! hijacked stream of `POST /exec/{id}/start`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{API_VERSION, ExecRecord, Shared, lock};

/// Frame types of the multiplexed stream.
const STDOUT: u8 = 1;
const STDERR: u8 = 2;

pub(crate) fn router(state: Shared) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// The path without its `/v1.NN` prefix.
fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    match rest.find('/') {
        Some(at) if rest[..at].split('.').all(|p| p.parse::<u32>().is_ok()) => &rest[at..],
        _ => path,
    }
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(json!({ "message": text }))).into_response()
}

async fn handle(Extract(state): Extract<Shared>, mut request: Request) -> Response {
    let method = request.method().clone();
    let path = unversioned(request.uri().path()).to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, parts.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => "OK".into_response(),
        (&Method::GET, ["version"]) => axum::Json(json!({
            "Version": "27.5.1",
            "ApiVersion": API_VERSION,
            "MinAPIVersion": "1.24",
            "Os": "linux",
            "Arch": "amd64",
        }))
        .into_response(),
        (&Method::GET, ["containers", "json"]) => {
            let wanted = label_filters(request.uri().query());
            let listed: Vec<Value> = lock(&state)
                .containers
                .iter()
                .filter(|(_, c)| c.running)
                .filter(|(_, c)| {
                    wanted.iter().all(|w| match w.split_once('=') {
                        Some((k, v)) => c.labels.get(k).is_some_and(|have| have == v),
                        None => c.labels.contains_key(w),
                    })
                })
                .map(|(name, c)| {
                    let mounts: Vec<Value> = c
                        .binds
                        .iter()
                        .map(|host| json!({ "Type": "bind", "Source": host, "Destination": "/data", "RW": true }))
                        .collect();
                    json!({ "Id": name, "Names": [format!("/{name}")], "State": "running", "Labels": c.labels, "Mounts": mounts })
                })
                .collect();
            axum::Json(listed).into_response()
        }
        (&Method::POST, ["containers", name, verb @ ("stop" | "start")]) => {
            let mut guard = lock(&state);
            let Some(container) = guard.containers.get_mut(*name) else {
                return message(StatusCode::NOT_FOUND, &format!("No such container: {name}"));
            };
            let running = *verb == "start";
            if container.running == running {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            container.running = running;
            guard.lifecycle.push(format!("{verb} {name}"));
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::GET, ["containers", name, "json"]) => inspect_container(&state, name),
        (&Method::POST, ["containers", name, "exec"]) => {
            let name = (*name).to_owned();
            let body = match axum::body::to_bytes(std::mem::take(request.body_mut()), 1 << 20).await
            {
                Ok(body) => body,
                Err(e) => return message(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            create_exec(&state, &name, &body)
        }
        (&Method::POST, ["exec", id, "start"]) => {
            let id = (*id).to_owned();
            start_exec(state, id, request).await
        }
        (&Method::GET, ["exec", id, "json"]) => inspect_exec(&state, id),
        _ => message(
            StatusCode::NOT_FOUND,
            &format!("page not found: {method} {path}"),
        ),
    }
}

/// The `label` filters of a `filters` query parameter (a JSON map).
fn label_filters(query: Option<&str>) -> Vec<String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    pairs
        .iter()
        .filter(|(k, _)| k == "filters")
        .filter_map(|(_, v)| serde_json::from_str::<BTreeMap<String, Vec<String>>>(v).ok())
        .flat_map(|filters| filters.get("label").cloned().unwrap_or_default())
        .collect()
}

fn inspect_container(state: &Shared, name: &str) -> Response {
    let state = lock(state);
    let Some(container) = state.containers.get(name) else {
        return message(StatusCode::NOT_FOUND, &format!("No such container: {name}"));
    };
    let status = if container.running {
        "running"
    } else {
        "exited"
    };
    axum::Json(json!({
        "Id": name,
        "Name": format!("/{name}"),
        "State": { "Status": status, "Running": container.running, "Paused": false, "ExitCode": 0 },
        "Config": { "Env": container.env },
    }))
    .into_response()
}

fn create_exec(state: &Shared, name: &str, body: &[u8]) -> Response {
    let config: Value = match serde_json::from_slice(body) {
        Ok(config) => config,
        Err(e) => return message(StatusCode::BAD_REQUEST, &format!("bad exec config: {e}")),
    };
    let strings = |key: &str| -> Vec<String> {
        config[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut state = lock(state);
    match state.containers.get(name) {
        None => return message(StatusCode::NOT_FOUND, &format!("No such container: {name}")),
        Some(c) if !c.running => {
            return message(
                StatusCode::CONFLICT,
                &format!("container {name} is not running"),
            );
        }
        Some(_) => {}
    }
    let cmd = strings("Cmd");
    if cmd.is_empty() {
        return message(StatusCode::BAD_REQUEST, "No exec command specified");
    }
    let id = format!("{:064x}", rand::random::<u128>());
    state.execs.push(ExecRecord {
        id: id.clone(),
        container: name.to_owned(),
        cmd,
        env: strings("Env"),
        attach_stdin: config["AttachStdin"].as_bool().unwrap_or(false),
        exit_code: None,
        started: false,
    });
    (StatusCode::CREATED, axum::Json(json!({ "Id": id }))).into_response()
}

fn inspect_exec(state: &Shared, id: &str) -> Response {
    let state = lock(state);
    let Some(exec) = state.execs.iter().find(|e| e.id == id) else {
        return message(
            StatusCode::NOT_FOUND,
            &format!("No such exec instance: {id}"),
        );
    };
    axum::Json(json!({
        "ID": exec.id,
        "Running": exec.started && exec.exit_code.is_none(),
        "ExitCode": exec.exit_code,
        "ContainerID": exec.container,
        "ProcessConfig": { "entrypoint": exec.cmd[0], "arguments": exec.cmd[1..] },
    }))
    .into_response()
}

/// What an exec runs: the program found on the container's `PATH`, the
/// environment, the folder.
struct Launch {
    program: Option<PathBuf>,
    record: ExecRecord,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

async fn start_exec(state: Shared, id: String, mut request: Request) -> Response {
    let launch = {
        let mut guard = lock(&state);
        let Some(index) = guard.execs.iter().position(|e| e.id == id) else {
            return message(
                StatusCode::NOT_FOUND,
                &format!("No such exec instance: {id}"),
            );
        };
        if guard.execs[index].started {
            return message(StatusCode::CONFLICT, "exec has already been started");
        }
        guard.execs[index].started = true;
        let record = guard.execs[index].clone();
        let Some(container) = guard.containers.get(&record.container) else {
            return message(StatusCode::NOT_FOUND, "No such container");
        };
        let mut env: Vec<(String, String)> = Vec::new();
        for entry in container.env.iter().chain(&record.env) {
            if let Some((name, value)) = entry.split_once('=') {
                env.retain(|(n, _)| n != name);
                env.push((name.to_owned(), value.to_owned()));
            }
        }
        let path = env
            .iter()
            .find(|(n, _)| n == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Launch {
            program: find_program(&record.cmd[0], &path),
            dir: container.dir.clone(),
            record,
            env,
        }
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let code = match upgrade.await {
            Ok(upgraded) => run(launch, TokioIo::new(upgraded)).await,
            Err(e) => {
                eprintln!("docker stand-in: upgrade failed: {e}");
                -1
            }
        };
        if let Some(exec) = lock(&state).execs.iter_mut().find(|e| e.id == id) {
            exec.exit_code = Some(code);
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Body::empty())
        .unwrap_or_default()
}

/// `name` resolved as `execve` through `PATH` would.
fn find_program(name: &str, path: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    path.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs the exec on the hijacked `stream`; returns its exit code.
async fn run<S>(launch: Launch, stream: S) -> i64
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut from_client, mut to_client) = tokio::io::split(stream);
    let Some(program) = launch.program else {
        let text = format!(
            "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{}\": executable file not found in $PATH: unknown\r\n",
            launch.record.cmd[0]
        );
        let _ = write_frame(&mut to_client, STDOUT, text.as_bytes()).await;
        let _ = to_client.shutdown().await;
        return 127;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(&launch.record.cmd[1..])
        .env_clear()
        .envs(launch.env.iter().map(|(n, v)| (n, v)))
        .current_dir(&launch.dir)
        .stdin(if launch.record.attach_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let text = format!("OCI runtime exec failed: {e}\r\n");
            let _ = write_frame(&mut to_client, STDOUT, text.as_bytes()).await;
            return 126;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
            let _ = stdin.shutdown().await;
        });
    }
    let (frames, mut queue) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let readers = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(forward(out, STDOUT, frames.clone()))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(forward(err, STDERR, frames.clone()))),
    ];
    drop(frames);
    let mut client_gone = false;
    while let Some((kind, bytes)) = queue.recv().await {
        if !client_gone && write_frame(&mut to_client, kind, &bytes).await.is_err() {
            // Like the daemon: the client left, the program's output
            // pipes close and its next write fails.
            client_gone = true;
            queue.close();
        }
    }
    for reader in readers.into_iter().flatten() {
        let _ = reader.await;
    }
    let code = match child.wait().await {
        Ok(status) => status.code().map_or(137, i64::from),
        Err(_) => -1,
    };
    let _ = to_client.shutdown().await;
    code
}

/// Sends what `pipe` yields as frames of `kind` until it ends (or the
/// connection is gone, which closes the pipe).
async fn forward(mut pipe: impl AsyncRead + Unpin, kind: u8, frames: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if frames.send((kind, buffer[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn write_frame(
    to: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    header[0] = kind;
    header[4..].copy_from_slice(&(bytes.len() as u32).to_be_bytes());
    to.write_all(&header).await?;
    to.write_all(bytes).await?;
    to.flush().await
}
