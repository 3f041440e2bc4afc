//! HTTP handlers: parsing and status codes only; the service does the work.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use warren_api::{
    CreateSandboxRequest, ErrorBody, ErrorCode, ExecRequest, ExecResult, Health, Sandbox,
    SandboxList,
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
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
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
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
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
