//! HTTP handlers: parsing and status codes only; the service does the work.

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use warren_api::{
    AttachEvent, CreateSandboxRequest, ErrorBody, ErrorCode, ExecRequest, ExecResult, Health,
    OutputEventData, Process, ProcessList, PtySize, Sandbox, SandboxList, SignalRequest,
    StartProcessRequest, StdinRequest,
};

use crate::api_json::ApiJson;
use crate::error::{error_response, ApiError};
use crate::sandbox_service::ListFilter;
use crate::AppState;

/// Create a sandbox and wait until it is running.
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "The sandbox is running", body = Sandbox),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 422, description = "Impossible values, for example an unknown image", body = ErrorBody),
        (status = 500, description = "The host could not create the sandbox; it is kept as failed", body = ErrorBody),
    )
)]
pub async fn create_sandbox(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let caller = caller.map_or(crate::auth::Caller::Anonymous, |axum::Extension(c)| c);
    crate::access::may_name_secrets(&caller, &req.secrets)?;
    state.service.check_create_rate(&caller, 1)?;
    let sandbox = state.service.create(req).await?;
    Ok((StatusCode::CREATED, Json(sandbox)))
}

/// List sandboxes, newest first.
#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    params(
        ("state" = Option<String>, Query, description = "Only sandboxes in this state"),
        ("metadata.KEY" = Option<String>, Query, description = "Only sandboxes whose metadata KEY has this value; repeatable with different keys"),
    ),
    responses(
        (status = 200, description = "Matching sandboxes", body = SandboxList),
        (status = 400, description = "Unknown filter", body = ErrorBody),
    )
)]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<SandboxList>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let filter = ListFilter::from_query_pairs(pairs)?;
    let sandboxes = state.service.list(&filter).await?;
    Ok(Json(SandboxList { sandboxes }))
}

/// Get one sandbox.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    )
)]
pub async fn get_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.service.get(&id).await?))
}

/// Delete a sandbox: kill its processes and remove its files.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    )
)]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a running sandbox: freeze all its processes in memory. Commands,
/// processes and files are refused (409) until it is resumed.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/pause",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox, now paused", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (invalid_state), or its driver cannot pause (capability_unsupported)", body = ErrorBody),
    )
)]
pub async fn pause_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.service.pause(&id).await?))
}

/// Resume a paused sandbox: thaw its processes where they stopped.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/resume",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox, running again", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not paused (invalid_state), or its driver cannot pause (capability_unsupported)", body = ErrorBody),
    )
)]
pub async fn resume_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.service.resume(&id).await?))
}

/// Run a command to completion inside a running sandbox.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/exec",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The command finished (any exit code)", body = ExecResult),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (for example paused)", body = ErrorBody),
        (status = 422, description = "Neither or both of cmd and shell, or other impossible values", body = ErrorBody),
    )
)]
pub async fn exec_in_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Json<ExecResult>, ApiError> {
    Ok(Json(state.service.exec(&id, req).await?))
}

/// Liveness check.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "daemon",
    security(()),
    responses((status = 200, description = "The daemon is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// This API's OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "daemon",
    security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi())
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; see GET /openapi.json for the API",
    )
}

/// Known routes with the wrong method.
pub async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::InvalidRequest,
        "this route does not support that HTTP method; see GET /openapi.json".to_owned(),
    )
    .into_response()
}

fn parse_pid(id: &str, pid: &str) -> Result<i32, ApiError> {
    pid.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no process {pid:?} in sandbox {id}; pids are positive integers"),
        )
    })
}

/// Start a background process; it keeps running after the call returns.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/processes",
    tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = StartProcessRequest,
    responses(
        (status = 201, description = "The process started", body = Process),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Neither or both of cmd and shell, impossible values, or the program could not start", body = ErrorBody),
    )
)]
pub async fn start_process(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StartProcessRequest>,
) -> Result<(StatusCode, Json<Process>), ApiError> {
    let process = state.service.start_process(&id, req).await?;
    Ok((StatusCode::CREATED, Json(process)))
}

/// List running and recently finished processes (the last 64 finished are kept).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/processes",
    tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Processes, oldest first", body = ProcessList),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn list_processes(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProcessList>, ApiError> {
    let processes = state.service.list_processes(&id).await?;
    Ok(Json(ProcessList { processes }))
}

/// Get one process.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/processes/{pid}",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("pid" = i32, Path, description = "Process id inside the sandbox"),
    ),
    responses(
        (status = 200, description = "The process", body = Process),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn get_process(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Json<Process>, ApiError> {
    let pid = parse_pid(&id, &pid)?;
    Ok(Json(state.service.get_process(&id, pid).await?))
}

/// Query of `GET …/output`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Keep streaming live output until the process exits (default true).
    follow: Option<bool>,
}

/// Stream a process's output as server-sent events.
///
/// Events, in order: `stdout` and `stderr` chunks (data: JSON
/// `OutputEventData`, with the text and the exact bytes in base64), a
/// `dropped` event (`DroppedEventData`) when output was lost to buffer
/// overflow before it was read, and one final `exit` event (`ExitEventData`).
/// Every event's `id` is the byte offset (across stdout and stderr) after it:
/// reconnect with `Last-Event-ID` to get exactly what was missed. With
/// `follow=false` the stream ends after the output kept so far.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/processes/{pid}/output",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("pid" = i32, Path, description = "Process id inside the sandbox"),
        ("follow" = Option<bool>, Query, description = "Keep streaming until the process exits (default true)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this byte offset"),
    ),
    responses(
        (status = 200, description = "An SSE stream of stdout, stderr, dropped and exit events", content_type = "text/event-stream", body = OutputEventData),
        (status = 400, description = "Last-Event-ID is not a byte offset", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn process_output(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    query: Result<Query<OutputQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let pid = parse_pid(&id, &pid)?;
    let from = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::invalid_request(
                    "Last-Event-ID must be the id of an earlier event (a byte offset)",
                )
            })?,
    };
    let rx = state
        .service
        .process_output(&id, pid, from, query.follow.unwrap_or(true))
        .await?;
    Ok(Sse::new(crate::process_stream::events(rx, from))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Write to a process's stdin, and/or close it.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/processes/{pid}/stdin",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("pid" = i32, Path, description = "Process id inside the sandbox"),
    ),
    request_body = StdinRequest,
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The process was started without stdin, closed it, or exited", body = ErrorBody),
    )
)]
pub async fn process_stdin(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<StdinRequest>,
) -> Result<StatusCode, ApiError> {
    let pid = parse_pid(&id, &pid)?;
    let data = req.data.map(String::into_bytes).unwrap_or_default();
    state
        .service
        .process_stdin(&id, pid, data, req.close.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a signal, by name, to a process's group.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/processes/{pid}/signal",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("pid" = i32, Path, description = "Process id inside the sandbox"),
    ),
    request_body = SignalRequest,
    responses(
        (status = 204, description = "Sent"),
        (status = 400, description = "Malformed request or unknown signal name (the message lists the allowed names)", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The process has exited", body = ErrorBody),
    )
)]
pub async fn signal_process(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> Result<StatusCode, ApiError> {
    let pid = parse_pid(&id, &pid)?;
    state.service.signal_process(&id, pid, &req.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the window size of a process started with `pty`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/processes/{pid}/resize",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("pid" = i32, Path, description = "Process id inside the sandbox"),
    ),
    request_body = PtySize,
    responses(
        (status = 204, description = "Resized (the process gets SIGWINCH)"),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The process has no pty, or has exited", body = ErrorBody),
        (status = 422, description = "cols or rows outside 1..=1000", body = ErrorBody),
    )
)]
pub async fn resize_process(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<PtySize>,
) -> Result<StatusCode, ApiError> {
    let pid = parse_pid(&id, &pid)?;
    state.service.resize_process(&id, pid, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET …/attach`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachQuery {
    /// Replay output from this byte offset (default 0: everything kept).
    from: Option<u64>,
}

/// Attach to a process over a WebSocket: stdin in, output out.
///
/// Client → server: binary messages are stdin bytes; text messages are JSON
/// `AttachControl` (`{"type":"resize","cols":N,"rows":N}`,
/// `{"type":"signal","signal":"SIGINT"}`, `{"type":"close_stdin"}`).
/// Server → client: binary messages are output bytes (all output of a pty
/// process; stdout of others), text messages are JSON `AttachEvent`
/// (`output` with base64 stderr of a non-pty process, `dropped`, `error`,
/// then `exit`, after which the socket closes). The process never waits for
/// this reader: a slow reader loses only its own stream (with a counted
/// `dropped`), and a client that leaves leaves the process running.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/processes/{pid}/attach",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("pid" = i32, Path, description = "Process id inside the sandbox"),
        ("from" = Option<u64>, Query, description = "Replay output from this byte offset (default 0)"),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol", body = AttachEvent),
        (status = 400, description = "Not a WebSocket upgrade, or a bad query", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn attach_process(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    query: Result<Query<AttachQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let pid = parse_pid(&id, &pid)?;
    let ws = ws.map_err(|e| {
        ApiError::invalid_request(format!(
            "attach needs a WebSocket upgrade: {}",
            e.body_text()
        ))
    })?;
    let from = query.from.unwrap_or(0);
    let rx = state.service.process_output(&id, pid, from, true).await?;
    Ok(ws.on_upgrade(move |socket| crate::attach::run(socket, state, id, pid, from, rx)))
}
