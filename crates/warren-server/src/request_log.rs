//! Per-request logging and panic containment.

use std::time::Instant;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use warren_api::ErrorCode;

use crate::error::error_response;

/// Logs method, path, status and latency of every request.
pub async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Runs the rest of the stack in its own task so that a panicking handler
/// yields a 500 JSON error instead of a dropped connection.
pub async fn catch_panic(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(join_error) => {
            tracing::error!(error = %join_error, "request handler panicked");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "the request handler failed unexpectedly; this is a bug in Warren".to_owned(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_yields_500() {
        async fn boom() -> &'static str {
            panic!("handler bug")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .layer(axum::middleware::from_fn(super::catch_panic));
        let response = app
            .oneshot(Request::builder().uri("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
