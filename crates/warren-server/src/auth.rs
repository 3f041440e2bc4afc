//! Bearer-token authentication for the TCP listener (the unix socket is
//! protected by its file mode instead).

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use warren_api::ErrorCode;
use warren_store::Store;

use crate::error::ApiError;

/// Paths answered without a key: liveness checks and the API description.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/openapi.json"];

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: rejects requests without a valid API key with 401 `unauthorized`.
pub async fn require_api_key(State(store): State<Store>, req: Request, next: Next) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(token) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
    else {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "missing API key: send the header Authorization: Bearer <key>",
        )
        .into_response();
    };
    match store.verify_api_key(token).await {
        Ok(Some(key)) => {
            tracing::debug!(key = %key.id, "authenticated");
            next.run(req).await
        }
        Ok(None) => ApiError::new(ErrorCode::Unauthorized, "invalid API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_bearer_header() {
        assert_eq!(bearer_token("Bearer wrn_abc"), Some("wrn_abc"));
        assert_eq!(bearer_token("bearer  wrn_abc "), Some("wrn_abc"));
        assert_eq!(bearer_token("Basic dXNlcg=="), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("wrn_abc"), None);
    }
}
