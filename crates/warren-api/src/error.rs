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
