//! A JSON body extractor whose rejections use Warren's error body.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use warren_api::ErrorCode;

use crate::error::ApiError;

/// Like [`axum::Json`], but malformed bodies get 400 `invalid_request` (with
/// serde's message) and oversized ones 413 `payload_too_large`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection_error(&rejection)),
        }
    }
}

fn json_rejection_error(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::invalid_request(
            "expected a JSON body with header Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body is larger than the {} MiB limit",
                    crate::BODY_LIMIT_BYTES / (1024 * 1024)
                ),
            )
        }
        other => ApiError::invalid_request(other.body_text()),
    }
}
