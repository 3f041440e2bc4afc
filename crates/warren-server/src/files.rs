//! File API handlers (`/v1/sandboxes/{id}/files…` and `/changes`): query
//! parsing, status codes and streaming. The driver's `FileControl` and
//! `ChangeTracking` do the work inside the sandbox; no path is ever resolved
//! on the host here.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LAST_MODIFIED, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use warren_api::{
    ChangeList, ErrorBody, ErrorCode, FileExists, FileList, FileStat, FindResult, GrepMatch,
    GrepResult, MkdirRequest, MoveRequest, TarUploadResult, WatchEvent, DEFAULT_SEARCH_LIMIT,
    MAX_LIST_DEPTH, MAX_SEARCH_LIMIT,
};
use warren_runtime::{DriverError, GrepSpec, WriteSpec};

use crate::api_json::ApiJson;
use crate::error::ApiError;
use crate::file_transfer::{
    body_from, change_to_api, check_mode, http_date, kind_to_api, parse_compression, parse_mode,
    parse_range, stat_to_api, validate_path, watch_events, zstd_body_from, UploadBody,
};
use crate::AppState;

/// Raw bytes in a request or response body (OpenAPI `string`/`binary`).
pub struct RawBytes;

impl utoipa::PartialSchema for RawBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for RawBytes {}

/// Routes of the file API, merged into the main router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/sandboxes/{id}/files",
            get(download_file).put(upload_file).delete(remove_file),
        )
        .route("/v1/sandboxes/{id}/files/stat", get(stat_file))
        .route("/v1/sandboxes/{id}/files/exists", get(file_exists))
        .route("/v1/sandboxes/{id}/files/list", get(list_files))
        .route("/v1/sandboxes/{id}/files/mkdir", post(make_dir))
        .route("/v1/sandboxes/{id}/files/move", post(move_file))
        .route("/v1/sandboxes/{id}/files/find", get(find_files))
        .route("/v1/sandboxes/{id}/files/grep", get(grep_files))
        .route(
            "/v1/sandboxes/{id}/files/tar",
            get(download_tar).put(upload_tar),
        )
        .route("/v1/sandboxes/{id}/files/watch", get(watch_files))
        .route("/v1/sandboxes/{id}/changes", get(list_changes))
}

type QueryResult<T> = Result<Query<T>, QueryRejection>;

fn query<T>(query: QueryResult<T>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_request(e.body_text()))
}

/// Query of routes that take only a path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
}

/// Query of `PUT …/files`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    path: String,
    mode: Option<String>,
    user: Option<String>,
}

/// Query of `DELETE …/files`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    path: String,
    recursive: Option<bool>,
}

/// Query of `GET …/files/list`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    path: String,
    depth: Option<i64>,
}

/// Query of `GET …/files/find`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindQuery {
    path: String,
    glob: String,
    limit: Option<i64>,
}

/// Query of `GET …/files/grep`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrepQuery {
    path: String,
    pattern: String,
    glob: Option<String>,
    ignore_case: Option<bool>,
    limit: Option<i64>,
}

/// Query of `…/files/tar`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TarQuery {
    path: String,
    compression: Option<String>,
}

/// Query of `GET …/files/watch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    path: String,
    recursive: Option<bool>,
}

/// Query of `GET …/changes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    format: Option<String>,
    compression: Option<String>,
}

/// `limit` of find and grep: 1..=10000, default 1000.
fn search_limit(limit: Option<i64>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_SEARCH_LIMIT),
        Some(n) if (1..=i64::from(MAX_SEARCH_LIMIT)).contains(&n) => {
            u32::try_from(n).map_err(|_| ApiError::invalid_value("limit is out of range"))
        }
        Some(n) => Err(ApiError::invalid_value(format!(
            "limit must be between 1 and {MAX_SEARCH_LIMIT}, got {n}"
        ))),
    }
}

/// Longest `glob` of find and grep (bytes).
pub const MAX_GLOB_BYTES: usize = 1024;
/// Longest `pattern` of grep (bytes).
pub const MAX_PATTERN_BYTES: usize = 4096;

/// 422 naming `field` when `value` is longer than `max` bytes.
fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid_value(format!(
            "{field} is longer than {max} bytes ({} bytes)",
            value.len()
        )));
    }
    Ok(())
}

fn header(value: &str) -> HeaderValue {
    // Every value built here is ASCII (numbers, dates, fixed words).
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn user_param(user: Option<String>) -> Result<Option<String>, ApiError> {
    match user {
        Some(u) if u.is_empty() || u.len() > 256 || u.contains('\0') => Err(
            ApiError::invalid_value("user must be a user name or uid of at most 256 bytes"),
        ),
        other => Ok(other),
    }
}

/// Download a file, streamed; supports one `Range`.
///
/// The answer carries `Content-Length`, `Last-Modified` and `X-Warren-Mode`
/// (octal permission bits, like `0644`). With `Range: bytes=A-B`, `A-` or
/// `-N` the answer is 206 with `Content-Range`; a range outside the file is
/// 416. Symlinks are followed inside the sandbox.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
        ("Range" = Option<String>, Header, description = "One byte range: bytes=A-B, bytes=A- or bytes=-N"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = inline(RawBytes), headers(
            ("Content-Length" = u64, description = "Bytes in the answer"),
            ("Last-Modified" = String, description = "The file's modification time (IMF-fixdate)"),
            ("X-Warren-Mode" = String, description = "The file's permission bits in octal, like 0644"),
        )),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = inline(RawBytes), headers(
            ("Content-Range" = String, description = "bytes FIRST-LAST/SIZE"),
            ("Last-Modified" = String, description = "The file's modification time (IMF-fixdate)"),
            ("X-Warren-Mode" = String, description = "The file's permission bits in octal, like 0644"),
        )),
        (status = 403, description = "The sandbox's permissions refuse reading it", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "A directory, or the sandbox is not running", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
        (status = 422, description = "The path is not absolute, has a NUL or is longer than 4096 bytes", body = ErrorBody),
    )
)]
pub async fn download_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let files = state.service.files_of(&id).await?;
    let range = headers
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let service = &state.service;
    let Some(range) = range else {
        let (stat, stream) = match files.read(&id, &q.path, 0, None).await {
            Ok(opened) => opened,
            Err(e) => return Err(service.file_error(&id, e).await),
        };
        return Ok(file_response(
            StatusCode::OK,
            &stat,
            stat.size,
            None,
            stream,
        ));
    };
    // The size of the file the path leads to (after symlinks).
    let size = match files.read(&id, &q.path, 0, Some(0)).await {
        Ok((stat, _)) => stat.size,
        Err(e) => return Err(service.file_error(&id, e).await),
    };
    let Some((offset, len)) = range.resolve(size) else {
        let mut response = ApiError::new(
            ErrorCode::RangeNotSatisfiable,
            format!("the range is outside {:?}, which has {size} bytes", q.path),
        )
        .into_response();
        response
            .headers_mut()
            .insert(CONTENT_RANGE, header(&format!("bytes */{size}")));
        return Ok(response);
    };
    let (stat, stream) = match files.read(&id, &q.path, offset, Some(len)).await {
        Ok(opened) => opened,
        Err(e) => return Err(service.file_error(&id, e).await),
    };
    // The file may have shrunk since: never promise more than it has.
    let len = len.min(stat.size.saturating_sub(offset));
    let content_range = format!(
        "bytes {offset}-{}/{}",
        (offset + len).saturating_sub(1),
        stat.size
    );
    Ok(file_response(
        StatusCode::PARTIAL_CONTENT,
        &stat,
        len,
        Some(content_range),
        stream,
    ))
}

fn file_response(
    status: StatusCode,
    stat: &warren_runtime::FileStat,
    len: u64,
    content_range: Option<String>,
    stream: warren_runtime::ByteStream,
) -> Response {
    let mut response = (status, body_from(stream)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, header(&len.to_string()));
    headers.insert(LAST_MODIFIED, header(&http_date(stat.mtime)));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        "x-warren-mode",
        header(&format!("{:04o}", stat.mode & 0o7777)),
    );
    if let Some(content_range) = content_range {
        headers.insert(CONTENT_RANGE, header(&content_range));
    }
    response
}

/// Upload a file: the body is the raw bytes, streamed.
///
/// Parent directories are created. The data goes to a temporary file renamed
/// into place at the end, so a refused or broken upload leaves no partial
/// file (and keeps the old one). Bodies larger than the daemon's maximum
/// upload size (`warren serve --max-upload-mb`) get 413.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
        ("mode" = Option<String>, Query, description = "Octal permission bits, like 0644 (default 0644, or the existing file's)"),
        ("user" = Option<String>, Query, description = "Owner of a new file and of created parents (default: the sandbox's user)"),
    ),
    request_body(content = inline(RawBytes), description = "The file's bytes", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Written", body = FileStat),
        (status = 403, description = "The sandbox's permissions refuse writing it", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "A directory is at the path, or the sandbox is not running", body = ErrorBody),
        (status = 413, description = "Larger than the daemon's maximum upload size", body = ErrorBody),
        (status = 422, description = "Bad path or mode", body = ErrorBody),
        (status = 507, description = "The sandbox's disk is full", body = ErrorBody),
    )
)]
pub async fn upload_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FileStat>, ApiError> {
    let body = UploadBody::new(body);
    let result = write_file(&state, &id, q, &headers, &body).await;
    if result.is_err() {
        body.drain_rest();
    }
    result.map(Json)
}

async fn write_file(
    state: &AppState,
    id: &str,
    q: QueryResult<UploadQuery>,
    headers: &HeaderMap,
    body: &UploadBody,
) -> Result<FileStat, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let mode = q
        .mode
        .as_deref()
        .map(|m| parse_mode("mode", m))
        .transpose()?;
    let user = user_param(q.user)?;
    let files = state.service.files_of(id).await?;
    let max = state.service.max_upload_bytes();
    reject_oversized(headers, max)?;
    let spec = WriteSpec {
        path: q.path,
        mode,
        max_bytes: Some(max),
        user,
    };
    match files.write(id, spec, body.reader()).await {
        Ok(stat) => Ok(stat_to_api(stat)),
        Err(e) => Err(state.service.file_error(id, e).await),
    }
}

/// 413 before reading a body whose `Content-Length` already exceeds `max`.
fn reject_oversized(headers: &HeaderMap, max: u64) -> Result<(), ApiError> {
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) if length > max => Err(too_large(length, max)),
        _ => Ok(()),
    }
}

fn too_large(length: u64, max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!(
            "the upload has {length} bytes, more than the daemon's maximum of {max} bytes \
             ({} MiB; warren serve --max-upload-mb)",
            max / (1024 * 1024)
        ),
    )
}

/// Delete a file, a symlink, an empty directory, or with `recursive` a tree.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
        ("recursive" = Option<bool>, Query, description = "Remove a directory and everything in it (default false)"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The sandbox's permissions refuse it", body = ErrorBody),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
        (status = 409, description = "A non-empty directory without recursive, or the sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path, or /", body = ErrorBody),
    )
)]
pub async fn remove_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let files = state.service.files_of(&id).await?;
    match files
        .remove(&id, &q.path, q.recursive.unwrap_or(false))
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// Metadata of one entry (a symlink itself, not its target).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/stat",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
    ),
    responses(
        (status = 200, description = "The entry", body = FileStat),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path", body = ErrorBody),
    )
)]
pub async fn stat_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<PathQuery>,
) -> Result<Json<FileStat>, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let files = state.service.files_of(&id).await?;
    match files.stat(&id, &q.path).await {
        Ok(stat) => Ok(Json(stat_to_api(stat))),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// Whether something is at a path, and what.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/exists",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
    ),
    responses(
        (status = 200, description = "Whether it exists", body = FileExists),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path", body = ErrorBody),
    )
)]
pub async fn file_exists(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<PathQuery>,
) -> Result<Json<FileExists>, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let files = state.service.files_of(&id).await?;
    match files.stat(&id, &q.path).await {
        Ok(stat) => Ok(Json(FileExists {
            exists: true,
            kind: Some(kind_to_api(stat.kind)),
        })),
        Err(DriverError::NotFound(_)) => Ok(Json(FileExists {
            exists: false,
            kind: None,
        })),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// Entries of a directory, sorted by path; `depth` > 1 descends (never
/// through symlinks).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/list",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path of a directory"),
        ("depth" = Option<u32>, Query, description = "1 (default) lists the children; up to 32 levels"),
    ),
    responses(
        (status = 200, description = "The entries", body = FileList),
        (status = 404, description = "No such sandbox or directory", body = ErrorBody),
        (status = 409, description = "Not a directory, or the sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path, or depth outside 1..=32", body = ErrorBody),
    )
)]
pub async fn list_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<ListQuery>,
) -> Result<Json<FileList>, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let depth = match q.depth {
        None => 1,
        Some(d) if (1..=i64::from(MAX_LIST_DEPTH)).contains(&d) => {
            u32::try_from(d).unwrap_or(MAX_LIST_DEPTH)
        }
        Some(d) => {
            return Err(ApiError::invalid_value(format!(
                "depth must be between 1 and {MAX_LIST_DEPTH}, got {d}"
            )))
        }
    };
    let files = state.service.files_of(&id).await?;
    match files.list(&id, &q.path, depth).await {
        Ok(entries) => Ok(Json(FileList {
            entries: entries.into_iter().map(stat_to_api).collect(),
        })),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// Create a directory and its missing parents (`mkdir -p`).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/files/mkdir",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MkdirRequest,
    responses(
        (status = 200, description = "The directory", body = FileStat),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 403, description = "The sandbox's permissions refuse it", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "A file is in the way, or the sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path or mode", body = ErrorBody),
    )
)]
pub async fn make_dir(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MkdirRequest>,
) -> Result<Json<FileStat>, ApiError> {
    validate_path("path", &req.path)?;
    let mode = check_mode("mode", req.mode)?;
    let files = state.service.files_of(&id).await?;
    match files.mkdir(&id, &req.path, mode).await {
        Ok(stat) => Ok(Json(stat_to_api(stat))),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// Rename a file or directory (missing parents of `to` are created).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/files/move",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MoveRequest,
    responses(
        (status = 200, description = "The entry at its new path", body = FileStat),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 403, description = "The sandbox's permissions refuse it", body = ErrorBody),
        (status = 404, description = "No such sandbox or source", body = ErrorBody),
        (status = 409, description = "The target exists (without overwrite), or the sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path", body = ErrorBody),
    )
)]
pub async fn move_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Json<FileStat>, ApiError> {
    validate_path("from", &req.from)?;
    validate_path("to", &req.to)?;
    let files = state.service.files_of(&id).await?;
    let overwrite = req.overwrite.unwrap_or(false);
    match files.rename(&id, &req.from, &req.to, overwrite).await {
        Ok(stat) => Ok(Json(stat_to_api(stat))),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// Entries under `path` whose path relative to it matches `glob`
/// (`*`, `?`, `[…]`, `**`).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/find",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Directory to search"),
        ("glob" = String, Query, description = "Glob matched against paths relative to `path`, like **/*.rs"),
        ("limit" = Option<u32>, Query, description = "At most this many results (default 1000, at most 10000)"),
    ),
    responses(
        (status = 200, description = "Matching entries", body = FindResult),
        (status = 404, description = "No such sandbox or directory", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path, glob or limit", body = ErrorBody),
    )
)]
pub async fn find_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<FindQuery>,
) -> Result<Json<FindResult>, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    check_len("glob", &q.glob, MAX_GLOB_BYTES)?;
    let limit = search_limit(q.limit)?;
    let files = state.service.files_of(&id).await?;
    match files.find(&id, &q.path, &q.glob, limit).await {
        Ok(found) => Ok(Json(FindResult {
            items: found.items.into_iter().map(stat_to_api).collect(),
            truncated: found.truncated,
        })),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// Lines matching a regular expression (Rust `regex` syntax) in the files
/// under `path`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/grep",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Directory (or file) to search"),
        ("pattern" = String, Query, description = "Regular expression"),
        ("glob" = Option<String>, Query, description = "Only files whose name matches this glob"),
        ("ignoreCase" = Option<bool>, Query, description = "Case-insensitive (default false)"),
        ("limit" = Option<u32>, Query, description = "At most this many matches (default 1000, at most 10000)"),
    ),
    responses(
        (status = 200, description = "Matching lines", body = GrepResult),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path, pattern or limit", body = ErrorBody),
    )
)]
pub async fn grep_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<GrepQuery>,
) -> Result<Json<GrepResult>, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    check_len("pattern", &q.pattern, MAX_PATTERN_BYTES)?;
    if let Some(glob) = &q.glob {
        check_len("glob", glob, MAX_GLOB_BYTES)?;
    }
    let spec = GrepSpec {
        root: q.path,
        pattern: q.pattern,
        glob: q.glob,
        ignore_case: q.ignore_case.unwrap_or(false),
        max_matches: search_limit(q.limit)?,
    };
    let files = state.service.files_of(&id).await?;
    match files.grep(&id, spec).await {
        Ok(found) => Ok(Json(GrepResult {
            matches: found
                .items
                .into_iter()
                .map(|m| GrepMatch {
                    path: m.path,
                    line: m.line,
                    text: m.text,
                })
                .collect(),
            truncated: found.truncated,
        })),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// A tar archive of a directory (or one file), streamed; entries are named
/// relative to the path's parent, like `tar -C parent -c name`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/tar",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Directory or file to archive"),
        ("compression" = Option<String>, Query, description = "none (default) or zstd"),
    ),
    responses(
        (status = 200, description = "The tar stream (zstd-compressed with compression=zstd)", content_type = "application/x-tar", body = inline(RawBytes)),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path or compression", body = ErrorBody),
    )
)]
pub async fn download_tar(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<TarQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let zstd = parse_compression(q.compression.as_deref())?;
    let files = state.service.files_of(&id).await?;
    match files.download_tar(&id, &q.path).await {
        Ok(stream) => Ok(tar_response(archive_head_checked(stream).await?, zstd)),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// How much of an archive is read before answering: a failure within it
/// (typically an entry the sandbox's user cannot read, near the start of a
/// small tree) becomes a proper error response instead of a cut-off body.
const ARCHIVE_HEAD_BYTES: usize = 256 * 1024;

/// Reads the start of `stream` (all of it when it is small) and gives back
/// a stream that replays it; an error while reading it is answered as 409.
async fn archive_head_checked(
    mut stream: warren_runtime::ByteStream,
) -> Result<warren_runtime::ByteStream, ApiError> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    while head.len() < ARCHIVE_HEAD_BYTES {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{e} (is every entry readable by the sandbox's user?)"),
                ))
            }
        }
    }
    Ok(Box::pin(std::io::Cursor::new(head).chain(stream)))
}

fn tar_response(stream: warren_runtime::ByteStream, zstd: bool) -> Response {
    let (content_type, body) = if zstd {
        ("application/zstd", zstd_body_from(stream))
    } else {
        ("application/x-tar", body_from(stream))
    };
    ([(CONTENT_TYPE, content_type)], body).into_response()
}

/// Unpack a tar archive into a directory (created if missing). Entries that
/// would land outside it (`..`, absolute names, through symlinks) are refused.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/files/tar",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Directory to unpack into"),
        ("compression" = Option<String>, Query, description = "none (default) or zstd"),
    ),
    request_body(content = inline(RawBytes), description = "A tar archive (zstd-compressed with compression=zstd)", content_type = "application/x-tar"),
    responses(
        (status = 200, description = "Unpacked", body = TarUploadResult),
        (status = 403, description = "The sandbox's permissions refuse it", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "A file is in the way, or the sandbox is not running", body = ErrorBody),
        (status = 413, description = "More content than the daemon's maximum upload size", body = ErrorBody),
        (status = 422, description = "Bad path, compression or archive", body = ErrorBody),
        (status = 507, description = "The sandbox's disk is full", body = ErrorBody),
    )
)]
pub async fn upload_tar(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<TarQuery>,
    body: Body,
) -> Result<Json<TarUploadResult>, ApiError> {
    let body = UploadBody::new(body);
    let result = unpack_tar(&state, &id, q, &body).await;
    if result.is_err() {
        body.drain_rest();
    }
    result.map(Json)
}

async fn unpack_tar(
    state: &AppState,
    id: &str,
    q: QueryResult<TarQuery>,
    body: &UploadBody,
) -> Result<TarUploadResult, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let zstd = parse_compression(q.compression.as_deref())?;
    let files = state.service.files_of(id).await?;
    let stream = if zstd {
        body.zstd_reader()
    } else {
        body.reader()
    };
    let max = state.service.max_upload_bytes();
    match files.upload_tar(id, &q.path, stream, Some(max)).await {
        Ok(summary) => Ok(TarUploadResult {
            entries: summary.entries,
            bytes: summary.bytes,
        }),
        Err(e) => Err(state.service.file_error(id, e).await),
    }
}

/// Watch a path for changes, as server-sent events.
///
/// Each event is named by its kind (`created`, `modified`, `deleted`,
/// `renamed`, `overflow`) and its data is a JSON `WatchEvent`. Comments are
/// sent as keep-alives. The watch ends when the client disconnects.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/watch",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "File or directory to watch"),
        ("recursive" = Option<bool>, Query, description = "Also watch subdirectories (default false)"),
    ),
    responses(
        (status = 200, description = "An SSE stream of watch events", content_type = "text/event-stream", body = WatchEvent),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Bad path", body = ErrorBody),
    )
)]
pub async fn watch_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<WatchQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    validate_path("path", &q.path)?;
    let files = state.service.files_of(&id).await?;
    match files
        .watch(&id, &q.path, q.recursive.unwrap_or(false))
        .await
    {
        Ok(rx) => Ok(Sse::new(watch_events(rx))
            .keep_alive(KeepAlive::default())
            .into_response()),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

/// What the sandbox changed relative to its image, as JSON, or with
/// `format=tar` as a tar stream in OCI layer form (deletions as `.wh.`
/// entries).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/changes",
    tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("format" = Option<String>, Query, description = "json (default) or tar"),
        ("compression" = Option<String>, Query, description = "With format=tar: none (default) or zstd"),
    ),
    responses(
        (status = 200, description = "The changes, sorted by path, or with format=tar the tar stream", content(
            (ChangeList = "application/json"),
            (inline(RawBytes) = "application/x-tar"),
        )),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its driver cannot list changes", body = ErrorBody),
        (status = 422, description = "Unknown format or compression", body = ErrorBody),
    )
)]
pub async fn list_changes(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: QueryResult<ChangesQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let tar = match q.format.as_deref() {
        None | Some("json") => false,
        Some("tar") => true,
        Some(other) => {
            return Err(ApiError::invalid_value(format!(
                "format must be json or tar, got {other:?}"
            )))
        }
    };
    let zstd = parse_compression(q.compression.as_deref())?;
    if zstd && !tar {
        return Err(ApiError::invalid_value(
            "compression applies only to format=tar",
        ));
    }
    let changes = state.service.changes_of(&id).await?;
    if tar {
        return match changes.changes_tar(&id).await {
            Ok(stream) => Ok(tar_response(stream, zstd)),
            Err(e) => Err(state.service.file_error(&id, e).await),
        };
    }
    match changes.changes(&id).await {
        Ok(list) => Ok(Json(ChangeList {
            changes: list.into_iter().map(change_to_api).collect(),
        })
        .into_response()),
        Err(e) => Err(state.service.file_error(&id, e).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_limits() {
        assert_eq!(search_limit(None).unwrap(), 1000);
        assert_eq!(search_limit(Some(10_000)).unwrap(), 10_000);
        assert!(search_limit(Some(10_001)).is_err());
        assert!(search_limit(Some(0)).is_err());
        assert!(search_limit(Some(-1)).is_err());
    }

    #[test]
    fn long_globs_and_patterns_are_422_naming_the_field() {
        assert!(check_len("glob", &"a".repeat(MAX_GLOB_BYTES), MAX_GLOB_BYTES).is_ok());
        let err = check_len("glob", &"**/".repeat(20_000), MAX_GLOB_BYTES).unwrap_err();
        assert_eq!(err.status().as_u16(), 422);
        assert!(err.message.contains("glob"), "{}", err.message);
        let err = check_len("pattern", &"a".repeat(5000), MAX_PATTERN_BYTES).unwrap_err();
        assert!(err.message.contains("pattern"), "{}", err.message);
    }

    #[test]
    fn content_length_over_the_maximum_is_413() {
        let mut headers = HeaderMap::new();
        assert!(reject_oversized(&headers, 10).is_ok());
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(reject_oversized(&headers, 10).is_ok());
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
        let err = reject_oversized(&headers, 10).unwrap_err();
        assert_eq!(err.status().as_u16(), 413);
        assert_eq!(err.code.as_str(), "too_large");
    }
}
