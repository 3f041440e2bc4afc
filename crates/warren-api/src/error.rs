use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response: `{"error": {"code": "…", "message": "…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, for example `not_found` or `invalid_value`.
    pub code: String,
    /// A sentence that tells the user what to change.
    pub message: String,
}

/// The error codes Warren returns, with their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the body is not valid JSON or not of the expected shape.
    InvalidRequest,
    /// 401: no API key, or a wrong one.
    Unauthorized,
    /// 404: no such sandbox (or other resource).
    NotFound,
    /// 409: the sandbox is in a state that does not allow the operation.
    InvalidState,
    /// 409: the sandbox's driver cannot do this.
    CapabilityUnsupported,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 422: valid JSON with impossible values.
    InvalidValue,
    /// 500: a bug in Warren.
    Internal,
    /// 503: a dependency (the sandbox's agent) is unavailable.
    Unavailable,
    /// 409: the request conflicts with what exists (a directory where a
    /// file was expected, an existing target, a non-empty directory).
    Conflict,
    /// 403: the sandbox's own permissions refuse the operation.
    PermissionDenied,
    /// 413: more data than the daemon's maximum upload size.
    TooLarge,
    /// 416: the requested byte range is outside the file.
    RangeNotSatisfiable,
    /// 507: the sandbox's disk is full.
    DiskFull,
    /// 404: no image with this name or digest.
    ImageNotFound,
    /// 409: sandboxes still use the image.
    ImageInUse,
    /// 403: the registry refused the credentials given for a pull (not
    /// Warren's own API key).
    RegistryUnauthorized,
    /// 502: the registry failed or answered something unusable.
    RegistryError,
    /// 403: the credentials are valid but do not allow this request (a
    /// sandbox token used on another sandbox or an admin route, an API key
    /// without the scope).
    Forbidden,
    /// 429: too many requests of this kind for this key; see `Retry-After`.
    RateLimited,
    /// 502: nothing listens on the sandbox port the request was proxied to,
    /// or the connection to it failed.
    PortUnreachable,
}

impl ErrorCode {
    /// The snake_case code sent in [`ErrorDetail::code`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::InvalidState => "invalid_state",
            Self::CapabilityUnsupported => "capability_unsupported",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidValue => "invalid_value",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::PermissionDenied => "permission_denied",
            Self::TooLarge => "too_large",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::DiskFull => "disk_full",
            Self::ImageNotFound => "image_not_found",
            Self::ImageInUse => "image_in_use",
            Self::RegistryUnauthorized => "registry_unauthorized",
            Self::RegistryError => "registry_error",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::PortUnreachable => "port_unreachable",
        }
    }

    /// The HTTP status code that goes with this error.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::InvalidState | Self::CapabilityUnsupported => 409,
            Self::PayloadTooLarge => 413,
            Self::InvalidValue => 422,
            Self::Internal => 500,
            Self::Unavailable => 503,
            Self::Conflict => 409,
            Self::PermissionDenied => 403,
            Self::TooLarge => 413,
            Self::RangeNotSatisfiable => 416,
            Self::DiskFull => 507,
            Self::ImageNotFound => 404,
            Self::ImageInUse => 409,
            Self::RegistryUnauthorized => 403,
            Self::RegistryError => 502,
            Self::Forbidden => 403,
            Self::RateLimited => 429,
            Self::PortUnreachable => 502,
        }
    }
}

impl ErrorBody {
    /// Builds an error body from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
            },
        }
    }
}
