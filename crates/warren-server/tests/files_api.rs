//! The file routes' checks that come before any driver work, driven
//! in-process against a real SQLite store and a driver without a file API:
//! 404 for an unknown sandbox, 409 for one that is not running or whose
//! driver has no file API, 422 for bad paths. (The file API itself is
//! tested end to end in tests/e2e/files.rs.)
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use warren_runtime::{Driver, DriverError, ExecOutcome, ExecSpec, RuntimeInfo, SandboxSpec};
use warren_server::{router, AppState};
use warren_store::Store;

/// Fails to create sandboxes whose environment has `FAIL`; has no file API
/// and no change tracking.
struct NoFilesDriver;

#[async_trait]
impl Driver for NoFilesDriver {
    fn name(&self) -> &'static str {
        "nofiles"
    }
    fn has_image(&self, image: &str) -> bool {
        image == "host"
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        if spec.env.iter().any(|(k, _)| k == "FAIL") {
            return Err(DriverError::Create {
                step: "overlay mount".into(),
                message: "no".into(),
            });
        }
        Ok(RuntimeInfo {
            pid: 1,
            start_time: 1,
            agent_socket: PathBuf::from("/nonexistent"),
        })
    }
    async fn adopt(&self, _id: &str, _info: &RuntimeInfo) -> Result<(), DriverError> {
        Ok(())
    }
    async fn exec(&self, _id: &str, _spec: ExecSpec) -> Result<ExecOutcome, DriverError> {
        Err(DriverError::AgentUnavailable("fake".into()))
    }
    async fn destroy(&self, _id: &str, _info: Option<&RuntimeInfo>) -> Result<(), DriverError> {
        Ok(())
    }
}

async fn send(app: &Router, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Body::from(body.unwrap_or_default().to_owned()))
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn create(app: &Router, body: &str) -> String {
    let (_, sandbox) = send(app, Method::POST, "/v1/sandboxes", Some(body)).await;
    if let Some(id) = sandbox["id"].as_str() {
        return id.to_owned();
    }
    // A failed create answers 500; the sandbox is kept, listed as failed.
    let (_, list) = send(app, Method::GET, "/v1/sandboxes?state=failed", None).await;
    list["sandboxes"][0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn file_routes_check_the_sandbox_and_the_driver_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let app = router(AppState::new(store, Arc::new(NoFilesDriver)));
    let running = create(&app, "{}").await;
    let failed = create(&app, r#"{"env":{"FAIL":"1"}}"#).await;

    let routes = [
        (Method::GET, "files?path=/a", None),
        (Method::PUT, "files?path=/a", None),
        (Method::DELETE, "files?path=/a", None),
        (Method::GET, "files/stat?path=/a", None),
        (Method::GET, "files/exists?path=/a", None),
        (Method::GET, "files/list?path=/a", None),
        (Method::POST, "files/mkdir", Some(r#"{"path":"/a"}"#)),
        (
            Method::POST,
            "files/move",
            Some(r#"{"from":"/a","to":"/b"}"#),
        ),
        (Method::GET, "files/find?path=/a&glob=*", None),
        (Method::GET, "files/grep?path=/a&pattern=x", None),
        (Method::GET, "files/tar?path=/a", None),
        (Method::PUT, "files/tar?path=/a", None),
        (Method::GET, "files/watch?path=/a", None),
        (Method::GET, "changes", None),
    ];
    for (method, route, body) in routes {
        let uri = format!("/v1/sandboxes/{running}/{route}");
        let (status, err) = send(&app, method.clone(), &uri, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {uri}: {err}");
        assert_eq!(err["error"]["code"], "capability_unsupported", "{uri}");
        assert!(err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nofiles"));

        let uri = format!("/v1/sandboxes/{failed}/{route}");
        let (status, err) = send(&app, method.clone(), &uri, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {uri}: {err}");
        assert_eq!(err["error"]["code"], "invalid_state", "{uri}");
        assert!(err["error"]["message"].as_str().unwrap().contains("failed"));

        let uri = format!("/v1/sandboxes/nosuchid/{route}");
        let (status, err) = send(&app, method.clone(), &uri, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {err}");
    }

    for (method, uri, body, param) in [
        (Method::GET, "files?path=a", None, "path"),
        (Method::GET, "files/stat?path=/a%00", None, "path"),
        (
            Method::POST,
            "files/move",
            Some(r#"{"from":"/a","to":"b"}"#),
            "to",
        ),
        (Method::POST, "files/mkdir", Some(r#"{"path":"x"}"#), "path"),
        (
            Method::POST,
            "files/mkdir",
            Some(r#"{"path":"/x","mode":4096}"#),
            "mode",
        ),
        (Method::GET, "files/list?path=/a&depth=0", None, "depth"),
        (
            Method::GET,
            "files/grep?path=/a&pattern=x&limit=0",
            None,
            "limit",
        ),
        (Method::GET, "changes?format=zip", None, "format"),
    ] {
        let uri = format!("/v1/sandboxes/{running}/{uri}");
        let (status, err) = send(&app, method, &uri, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(param), "{uri}: {message}");
    }

    // Unknown query parameters and missing ones are malformed requests.
    let uri = format!("/v1/sandboxes/{running}/files?path=/a&bogus=1");
    assert_eq!(
        send(&app, Method::GET, &uri, None).await.0,
        StatusCode::BAD_REQUEST
    );
    let uri = format!("/v1/sandboxes/{running}/files/stat");
    assert_eq!(
        send(&app, Method::GET, &uri, None).await.0,
        StatusCode::BAD_REQUEST
    );
}
