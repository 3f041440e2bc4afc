//! The one error type every route returns.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use warren_api::{ErrorBody, ErrorCode};
use warren_runtime::images::ImageError;
use warren_store::StoreError;

/// An error answered as `{"error": {"code", "message"}}` with the code's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The error code; it decides the HTTP status.
    pub code: ErrorCode,
    /// A sentence telling the user what to change.
    pub message: String,
    /// Seconds to send as `Retry-After` (429 `rate_limited`).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// The same error, answered with a `Retry-After: secs` header.
    pub fn with_retry_after(self, secs: u64) -> Self {
        Self {
            retry_after_secs: Some(secs),
            ..self
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 422 `invalid_value`.
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, message)
    }

    /// 404 `not_found` for a sandbox id.
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no sandbox with id {id:?}"))
    }

    /// 409 `invalid_state`.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::SandboxNotFound(id) => Self::sandbox_not_found(&id),
            other => Self::internal(format!("store: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code == ErrorCode::Internal {
            tracing::error!(message = %self.message, "internal error");
        }
        let mut response = error_response(self.status(), self.code, self.message);
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

/// A JSON error body with an explicit status (for statuses without an [`ErrorCode`], like 405).
pub(crate) fn error_response(status: StatusCode, code: ErrorCode, message: String) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// Linux `ENOSPC` (no space left on device).
pub(crate) const ENOSPC: i32 = 28;
/// Linux `EDQUOT` (disk quota exceeded).
pub(crate) const EDQUOT: i32 = 122;

/// The API error for an image store error.
pub fn image_error(err: ImageError) -> ApiError {
    match err {
        ImageError::NotFound(name) => ApiError::new(
            ErrorCode::ImageNotFound,
            format!("no image {name:?}; `warren image ls` lists the stored images"),
        ),
        err @ (ImageError::InvalidReference(_)
        | ImageError::InvalidArchive(_)
        | ImageError::NoMatchingPlatform(_)
        | ImageError::DigestMismatch(_)) => ApiError::invalid_value(err.to_string()),
        err @ ImageError::Unauthorized(_) => {
            ApiError::new(ErrorCode::RegistryUnauthorized, err.to_string())
        }
        err @ ImageError::Registry(_) => ApiError::new(ErrorCode::RegistryError, err.to_string()),
        ImageError::Io { context, source }
            if matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT)) =>
        {
            ApiError::new(
                ErrorCode::DiskFull,
                format!(
                    "the image store's disk is full ({context}: {source}); \
                     free space or remove unused images with `warren image rm`"
                ),
            )
        }
        err @ ImageError::Io { .. } => ApiError::internal(format!("image store: {err}")),
    }
}
