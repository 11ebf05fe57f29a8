//! The HTTP side of the test API server: paths, verbs and `Status` errors
//! as a Kubernetes API server answers them.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as Shared};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use super::catalog::{self, Resource};
use super::store::{Key, Selector, Written};
use super::{State, TOKEN, Write};
use super::{exec, jobs, snapshots};

type SharedState = Arc<Mutex<State>>;

/// The server's routes.
pub(crate) fn router(state: SharedState) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{namespace}/pods/{pod}/exec",
            any(exec::handle),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{pod}/log",
            any(jobs::log),
        )
        .fallback(handle)
        .with_state(state)
}

/// A `metav1.Status` failure.
pub(crate) fn failure(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// Whether the request carries the test token.
pub(crate) fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"))
}

/// The query's pairs (keys may repeat).
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
}

fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The status an established CRD carries.
pub(crate) fn established_status() -> Value {
    json!({"conditions": [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
    ]})
}

/// The served resource and the key of `object`, from its apiVersion and
/// kind.
pub(crate) fn locate(served: &[Resource], object: &Value) -> Option<(Resource, Key)> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    let resource = served
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)?
        .clone();
    let name = object["metadata"]["name"].as_str()?.to_owned();
    let namespace = if resource.namespaced {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    let key = (
        resource.group.clone(),
        resource.plural.clone(),
        namespace,
        name,
    );
    Some((resource, key))
}

/// What a request path names.
struct Target {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/GROUP/VERSION/...` resource paths.
fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
        rest => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(*name)),
        _ => return None,
    };
    Some(Target {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        namespace: namespace.map(Into::into),
        name: name.map(Into::into),
    })
}

/// Every request but exec.
async fn handle(
    Shared(state): Shared<SharedState>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers) {
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let response = answer(&state, &method, &uri, query.as_deref(), &headers, &body);
    let started = {
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut guard.started_jobs)
    };
    for key in started {
        jobs::spawn(state.clone(), key);
    }
    response
}

/// The answer to an authorized request.
fn answer(
    state: &SharedState,
    method: &Method,
    uri: &Uri,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let pairs = query_pairs(query);
    let path = uri.path();
    let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
    guard.tick();
    if path == "/readyz" {
        if guard.unready > 0 {
            guard.unready -= 1;
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "[-]etcd failed: reason withheld\nreadyz check failed\n",
            )
                .into_response();
        }
        return "ok".into_response();
    }
    let served = guard.served();
    match path.trim_end_matches('/') {
        "/api" => return axum::Json(catalog::core_versions()).into_response(),
        "/apis" => return axum::Json(catalog::group_list(&served)).into_response(),
        _ => {}
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let group_version = match segments.as_slice() {
        ["api", version] => Some(("", *version)),
        ["apis", group, version] => Some((*group, *version)),
        _ => None,
    };
    if let Some((group, version)) = group_version {
        return match catalog::resource_list(&served, group, version) {
            Some(list) => axum::Json(list).into_response(),
            None => not_found_path(),
        };
    }
    let Some(target) = parse_target(path) else {
        return not_found_path();
    };
    let Some(resource) = served
        .iter()
        .find(|r| {
            r.group == target.group && r.version == target.version && r.plural == target.plural
        })
        .cloned()
    else {
        return not_found_path();
    };
    if target.namespace.is_some() && !resource.namespaced {
        return not_found_path();
    }
    let state = &mut *guard;
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) if resource.supports("list") => list(state, &resource, &target, &pairs),
        (Method::GET, Some(name)) if resource.supports("get") => {
            get(state, &resource, &target, name)
        }
        (Method::POST, None) if resource.supports("create") => {
            let request =
                WriteRequest::new(&resource, &target, None, "create", &pairs, headers, body);
            write(state, &request)
        }
        (Method::PATCH, Some(name)) if resource.supports("patch") && is_merge_patch(headers) => {
            merge_patch(state, &resource, &target, name, body)
        }
        (Method::PATCH, Some(name)) if resource.supports("patch") => {
            let request = WriteRequest::new(
                &resource,
                &target,
                Some(name),
                "apply",
                &pairs,
                headers,
                body,
            );
            write(state, &request)
        }
        (Method::DELETE, Some(name)) if resource.supports("delete") => {
            delete(state, &resource, &target, name, &pairs)
        }
        _ => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ),
    }
}

fn not_found_path() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn not_found(resource: &Resource, name: &str) -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "{}.{} \"{name}\" not found",
            resource.plural, resource.group
        )
        .replace(". \"", " \""),
    )
}

/// The object as served at `resource`'s version.
fn served_object(resource: &Resource, object: &Value) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = json!(resource.api_version());
    object
}

fn list(
    state: &State,
    resource: &Resource,
    target: &Target,
    pairs: &[(String, String)],
) -> Response {
    let Some(selector) = Selector::parse(query_value(pairs, "labelSelector").unwrap_or("")) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "unable to parse requirement",
        );
    };
    let matching: Vec<&Value> = state
        .store
        .list(resource, target.namespace.as_deref())
        .into_iter()
        .filter(|o| selector.matches(o["metadata"]["labels"].as_object()))
        .collect();
    let start: usize = match query_value(pairs, "continue") {
        Some(token) => match token.strip_prefix("offset-").and_then(|n| n.parse().ok()) {
            Some(start) => start,
            None => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                );
            }
        },
        None => 0,
    };
    let limit = query_value(pairs, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(limit).min(matching.len());
    let items: Vec<Value> = matching
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|o| {
            let mut item = served_object(resource, o);
            if !resource.custom {
                // Lists of built-in kinds carry no per-item type.
                if let Some(map) = item.as_object_mut() {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
            }
            item
        })
        .collect();
    let mut metadata = json!({"resourceVersion": state.store.revision().to_string()});
    if end < matching.len() {
        metadata["continue"] = json!(format!("offset-{end}"));
        metadata["remainingItemCount"] = json!(matching.len() - end);
    }
    axum::Json(json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

fn get(state: &State, resource: &Resource, target: &Target, name: &str) -> Response {
    let key = key_of(resource, target, name);
    match state.store.get(&key) {
        Some(object) => axum::Json(served_object(resource, object)).into_response(),
        None => not_found(resource, name),
    }
}

fn key_of(resource: &Resource, target: &Target, name: &str) -> Key {
    (
        resource.group.clone(),
        resource.plural.clone(),
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

/// A create (`POST`) or server-side apply (`PATCH`) as received.
struct WriteRequest<'a> {
    resource: &'a Resource,
    target: &'a Target,
    name: Option<&'a str>,
    verb: &'a str,
    dry_run: bool,
    field_manager: Option<String>,
    content_type: String,
    body: &'a [u8],
}

impl<'a> WriteRequest<'a> {
    fn new(
        resource: &'a Resource,
        target: &'a Target,
        name: Option<&'a str>,
        verb: &'a str,
        pairs: &[(String, String)],
        headers: &HeaderMap,
        body: &'a [u8],
    ) -> Self {
        Self {
            resource,
            target,
            name,
            verb,
            dry_run: query_value(pairs, "dryRun") == Some("All"),
            field_manager: query_value(pairs, "fieldManager").map(str::to_owned),
            content_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            body,
        }
    }
}

/// Runs a write and records it.
fn write(state: &mut State, request: &WriteRequest<'_>) -> Response {
    let response = checked_write(state, request);
    let object: Option<Value> = serde_yaml_ng::from_slice(request.body).ok();
    let object_name = request
        .name
        .map(str::to_owned)
        .or_else(|| {
            object
                .as_ref()
                .and_then(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        })
        .unwrap_or_default();
    state.writes.push(Write {
        verb: request.verb.into(),
        group: request.resource.group.clone(),
        resource: request.resource.plural.clone(),
        namespace: request.target.namespace.clone().unwrap_or_default(),
        name: object_name,
        dry_run: request.dry_run,
        field_manager: request.field_manager.clone(),
        status: response.status().as_u16(),
    });
    response
}

/// Validates and performs a write as an API server would.
fn checked_write(state: &mut State, request: &WriteRequest<'_>) -> Response {
    let WriteRequest {
        resource,
        target,
        name,
        verb,
        dry_run,
        body,
        ..
    } = *request;
    let field_manager = request.field_manager.as_deref();
    let content_type = request.content_type.as_str();
    if verb == "apply" {
        if !content_type.starts_with("application/apply-patch+yaml") {
            return failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml (got {content_type:?})"
                ),
            );
        }
        if field_manager.is_none() {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            );
        }
    }
    let mut object: Value = match serde_yaml_ng::from_slice(body) {
        Ok(object) => object,
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("error decoding YAML: {e}"),
            );
        }
    };
    if object["apiVersion"].as_str() != Some(&resource.api_version())
        || object["kind"].as_str() != Some(&resource.kind)
    {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "the API version in the data ({}) and the kind ({}) do not match {}/{}",
                object["apiVersion"],
                object["kind"],
                resource.api_version(),
                resource.kind
            ),
        );
    }
    let Some(object_name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    if name.is_some_and(|n| n != object_name) {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        );
    }
    if resource.namespaced {
        let namespace = target.namespace.clone().unwrap_or_default();
        match object["metadata"]["namespace"].as_str() {
            Some(ns) if ns != namespace => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                );
            }
            Some(_) => {}
            None => object["metadata"]["namespace"] = json!(namespace),
        }
        let ns_key: Key = (
            String::new(),
            "namespaces".into(),
            String::new(),
            namespace.clone(),
        );
        if state.store.get(&ns_key).is_none() {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{namespace}\" not found"),
            );
        }
    }
    let key = key_of(resource, target, &object_name);
    let exists = state.store.get(&key).is_some();
    if verb == "create" && exists {
        return failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{object_name}\" already exists", resource.plural),
        );
    }
    if dry_run {
        let code = if exists {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        return (code, axum::Json(served_object(resource, &object))).into_response();
    }
    let manager = field_manager.unwrap_or("unknown");
    let (written, stored) = state.store.apply(key.clone(), object, manager);
    after_write(state, resource, &key, written);
    let code = match written {
        Written::Created => StatusCode::CREATED,
        Written::Updated => StatusCode::OK,
    };
    let stored = state.store.get(&key).cloned().unwrap_or(stored);
    (code, axum::Json(served_object(resource, &stored))).into_response()
}

/// Whether the body is a JSON merge patch (`kubectl patch --type merge`,
/// what `kubectl scale` amounts to for a workload's replicas).
fn is_merge_patch(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/merge-patch+json"))
}

/// Merges the patch into the stored object (maps recursively, everything
/// else replaced) and lets the workload controllers react.
fn merge_patch(
    state: &mut State,
    resource: &Resource,
    target: &Target,
    name: &str,
    body: &[u8],
) -> Response {
    let key = key_of(resource, target, name);
    let response = match (
        state.store.get(&key).is_some(),
        serde_json::from_slice::<Value>(body),
    ) {
        (false, _) => not_found(resource, name),
        (true, Err(e)) => failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("error decoding the merge patch: {e}"),
        ),
        (true, Ok(patch)) => {
            let (_, stored) = state.store.apply(key.clone(), patch, "kubectl-patch");
            scaled(state, &key, &stored);
            axum::Json(served_object(resource, &stored)).into_response()
        }
    };
    state.writes.push(Write {
        verb: "patch".into(),
        group: resource.group.clone(),
        resource: resource.plural.clone(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.into(),
        dry_run: false,
        field_manager: None,
        status: response.status().as_u16(),
    });
    response
}

/// What the Deployment, ReplicaSet and StatefulSet controllers do when a
/// workload is scaled to zero: its pods go away.
fn scaled(state: &mut State, key: &Key, workload: &Value) {
    if workload["spec"]["replicas"].as_u64() != Some(0) || key.0 != "apps" {
        return;
    }
    let owned_by = |object: &Value, kind: &str, name: &str| {
        object["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["kind"] == kind && r["name"] == name))
    };
    let namespace = key.2.as_str();
    let owners: Vec<(&str, String)> = match key.1.as_str() {
        "statefulsets" => vec![("StatefulSet", key.3.clone())],
        "deployments" => state
            .store
            .all()
            .filter(|(k, rs)| {
                k.1 == "replicasets" && k.2 == namespace && owned_by(rs, "Deployment", &key.3)
            })
            .map(|(k, _)| ("ReplicaSet", k.3.clone()))
            .collect(),
        _ => return,
    };
    let pods: Vec<Key> = state
        .store
        .all()
        .filter(|(k, pod)| {
            k.1 == "pods"
                && k.2 == namespace
                && owners.iter().any(|(kind, name)| owned_by(pod, kind, name))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for pod in pods {
        state.store.delete(&pod);
    }
}

/// What the cluster's controllers would do next: establish a new CRD after
/// a delay, run a new Job to its end, provision a new claim's volume, take
/// a new VolumeSnapshot.
fn after_write(state: &mut State, resource: &Resource, key: &Key, written: Written) {
    if written != Written::Created {
        return;
    }
    match (resource.group.as_str(), resource.plural.as_str()) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            state.store.set_status(key, json!({"conditions": []}));
            establish_later(state, key.clone());
        }
        ("batch", "jobs") if state.job_runner.is_some() && !state.fail_jobs => {
            state.store.set_status(key, jobs::active_status());
            if jobs::make_pod(state, key) {
                state.started_jobs.push(key.clone());
            }
        }
        ("batch", "jobs") => {
            let status = jobs::final_status(!state.fail_jobs);
            state.store.set_status(key, status);
        }
        ("", "persistentvolumeclaims") => jobs::provision(state, key),
        ("snapshot.storage.k8s.io", "volumesnapshots") => snapshots::take(state, key),
        _ => {}
    }
}

/// Marks the CRD at `key` established once the configured delay has
/// passed (checked at each request, see [`State::tick`]).
fn establish_later(state: &mut State, key: Key) {
    let due = std::time::Instant::now() + state.establish_delay;
    state.pending_establish.push((due, key));
}

fn delete(
    state: &mut State,
    resource: &Resource,
    target: &Target,
    name: &str,
    pairs: &[(String, String)],
) -> Response {
    let key = key_of(resource, target, name);
    let dry_run = query_value(pairs, "dryRun") == Some("All");
    let response = match state.store.get(&key).cloned() {
        None => not_found(resource, name),
        Some(object) => {
            if !dry_run {
                state.store.delete(&key);
                if key.0 == "batch" && key.1 == "jobs" {
                    jobs::collect_pods(state, &key);
                }
            }
            axum::Json(served_object(resource, &object)).into_response()
        }
    };
    state.writes.push(Write {
        verb: "delete".into(),
        group: resource.group.clone(),
        resource: resource.plural.clone(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.into(),
        dry_run,
        field_manager: None,
        status: response.status().as_u16(),
    });
    response
}
