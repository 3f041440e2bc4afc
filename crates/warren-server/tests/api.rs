//! The router driven in-process against a real SQLite store and a fake driver.
// Test helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use warren_runtime::{Driver, DriverError, ExecOutcome, ExecSpec, RuntimeInfo, SandboxSpec};
use warren_server::{authenticated_router, router, AppState, SandboxService, GONE_AFTER_RESTART};
use warren_store::Store;

#[derive(Default)]
struct FakeDriver {
    /// Sandboxes whose processes are alive.
    alive: Mutex<HashSet<String>>,
    destroyed: Mutex<Vec<String>>,
    fail_create: Mutex<bool>,
    specs: Mutex<Vec<SandboxSpec>>,
    execs: Mutex<Vec<ExecSpec>>,
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn has_image(&self, image: &str) -> bool {
        image == "host"
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        self.specs.lock().unwrap().push(spec.clone());
        if *self.fail_create.lock().unwrap() {
            return Err(DriverError::Create {
                step: "cgroup".into(),
                message: "no memory controller".into(),
            });
        }
        self.alive.lock().unwrap().insert(spec.id.clone());
        Ok(RuntimeInfo {
            pid: 4242,
            start_time: 7,
            agent_socket: PathBuf::from(format!("/run/warren/{}.sock", spec.id)),
        })
    }
    async fn adopt(&self, id: &str, _info: &RuntimeInfo) -> Result<(), DriverError> {
        if self.alive.lock().unwrap().contains(id) {
            Ok(())
        } else {
            Err(DriverError::AgentUnavailable("pid 4242 is gone".into()))
        }
    }
    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecOutcome, DriverError> {
        if !self.alive.lock().unwrap().contains(id) {
            return Err(DriverError::AgentUnavailable("connection refused".into()));
        }
        self.execs.lock().unwrap().push(spec.clone());
        let mut stdout = spec.argv.join(" ").into_bytes();
        stdout.push(0xff);
        Ok(ExecOutcome {
            exit_code: 3,
            stdout,
            stderr: b"err".to_vec(),
            duration: Duration::from_millis(12),
            timed_out: false,
            oom_killed: false,
        })
    }
    async fn destroy(&self, id: &str, _info: Option<&RuntimeInfo>) -> Result<(), DriverError> {
        self.alive.lock().unwrap().remove(id);
        self.destroyed.lock().unwrap().push(id.to_owned());
        Ok(())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    driver: Arc<FakeDriver>,
    app: Router,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let driver = Arc::new(FakeDriver::default());
    let app = router(AppState::new(store.clone(), driver.clone()));
    Harness {
        _dir: dir,
        store,
        driver,
        app,
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}

fn json_request(method: Method, uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

async fn create(app: &Router, body: Value) -> (StatusCode, Value) {
    send(
        app,
        json_request(Method::POST, "/v1/sandboxes", &body.to_string()),
    )
    .await
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, mentions: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

fn ids(body: &Value) -> Vec<String> {
    body["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn create_get_list_delete() {
    let h = harness().await;
    let (status, created) = create(
        &h.app,
        json!({"name": "a", "resources": {"memoryMb": 64, "cpus": 0.5}, "metadata": {"team": "x"}, "env": {"A": "1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 20);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    assert_eq!(created["state"], "running");
    assert_eq!(created["driver"], "fake");
    assert_eq!(created["image"], "host");
    assert_eq!(created["workdir"], "/workspace");
    assert_eq!(created["resources"]["memoryMb"], 64);
    assert_eq!(created["resources"]["pidsLimit"], 4096);
    let spec = h.driver.specs.lock().unwrap()[0].clone();
    assert_eq!(spec.memory_bytes, 64 * 1024 * 1024);
    assert_eq!(spec.env, [("A".to_owned(), "1".to_owned())]);

    let (status, fetched) = send(&h.app, get(&format!("/v1/sandboxes/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);

    let (_, other) = create(&h.app, json!({"metadata": {"team": "y", "env": "prod"}})).await;
    let other_id = other["id"].as_str().unwrap().to_owned();

    let (status, all) = send(&h.app, get("/v1/sandboxes")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), [other_id.clone(), id.clone()], "newest first");
    let (_, team_x) = send(&h.app, get("/v1/sandboxes?metadata.team=x")).await;
    assert_eq!(ids(&team_x), [id.as_str()]);
    let (_, both) = send(
        &h.app,
        get("/v1/sandboxes?metadata.team=y&metadata.env=prod&state=running"),
    )
    .await;
    assert_eq!(ids(&both), [other_id.as_str()]);
    let (_, none) = send(
        &h.app,
        get("/v1/sandboxes?metadata.team=y&metadata.env=dev"),
    )
    .await;
    assert_eq!(ids(&none), Vec::<String>::new());
    let (_, failed) = send(&h.app, get("/v1/sandboxes?state=failed")).await;
    assert_eq!(ids(&failed), Vec::<String>::new());
    let (status, body) = send(&h.app, get("/v1/sandboxes?state=sleeping")).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "sleeping",
    );
    let (status, body) = send(&h.app, get("/v1/sandboxes?colour=red")).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "colour",
    );

    let delete = Request::builder()
        .method(Method::DELETE)
        .uri(format!("/v1/sandboxes/{id}"))
        .body(Body::empty())
        .unwrap();
    let (status, _) = send(&h.app, delete).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(*h.driver.destroyed.lock().unwrap(), [id.as_str()]);
    let (status, body) = send(&h.app, get(&format!("/v1/sandboxes/{id}"))).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", &id);
    let delete_again = Request::builder()
        .method(Method::DELETE)
        .uri(format!("/v1/sandboxes/{id}"))
        .body(Body::empty())
        .unwrap();
    let (status, _) = send(&h.app, delete_again).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let kinds: Vec<String> = h
        .store
        .list_events(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["creating", "running", "deleted"]);
}

#[tokio::test]
async fn invalid_create_requests() {
    let h = harness().await;
    let (status, body) = send(
        &h.app,
        json_request(Method::POST, "/v1/sandboxes", "{\"image\":"),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "",
    );
    let (status, body) = send(
        &h.app,
        json_request(Method::POST, "/v1/sandboxes", r#"{"imagee":"host"}"#),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "imagee",
    );
    let no_type = Request::builder()
        .method(Method::POST)
        .uri("/v1/sandboxes")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = send(&h.app, no_type).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Content-Type",
    );

    let (status, body) = create(&h.app, json!({"resources": {"memoryMb": 0}})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "resources.memoryMb",
    );
    let (status, body) = create(&h.app, json!({"resources": {"cpus": -1}})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "resources.cpus",
    );
    let (status, body) = create(&h.app, json!({"image": "ubuntu:nope"})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "ubuntu:nope",
    );
    let (status, body) = create(&h.app, json!({"workdir": "relative"})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "workdir",
    );

    // Nothing was created by any of these.
    assert!(h.store.list_sandboxes().await.unwrap().is_empty());
    assert!(h.driver.specs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn driver_create_failure_keeps_a_failed_sandbox() {
    let h = harness().await;
    *h.driver.fail_create.lock().unwrap() = true;
    let (status, body) = create(&h.app, json!({})).await;
    assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "no memory controller",
    );
    let (_, failed) = send(&h.app, get("/v1/sandboxes?state=failed")).await;
    let sandboxes = failed["sandboxes"].as_array().unwrap();
    assert_eq!(sandboxes.len(), 1);
    assert!(sandboxes[0]["failureReason"]
        .as_str()
        .unwrap()
        .contains("cgroup"));
}

#[tokio::test]
async fn exec_runs_and_validates() {
    let h = harness().await;
    let (_, created) = create(&h.app, json!({"env": {"A": "1", "B": "1"}})).await;
    let id = created["id"].as_str().unwrap();
    let exec_uri = format!("/v1/sandboxes/{id}/exec");

    let (status, result) = send(
        &h.app,
        json_request(
            Method::POST,
            &exec_uri,
            r#"{"shell":"echo hi","env":{"B":"2"},"timeoutMs":500}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["exitCode"], 3);
    assert_eq!(result["stdout"], "/bin/sh -c echo hi\u{fffd}");
    assert_eq!(result["stderr"], "err");
    assert_eq!(result["durationMs"], 12);
    assert_eq!(result["timedOut"], false);
    let spec = h.driver.execs.lock().unwrap()[0].clone();
    assert_eq!(spec.cwd.as_deref(), Some("/workspace"));
    assert_eq!(
        spec.env,
        [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned())
        ]
    );
    assert_eq!(spec.timeout, Some(Duration::from_millis(500)));

    let (status, body) = send(&h.app, json_request(Method::POST, &exec_uri, "{}")).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "cmd",
    );
    let (status, body) = send(
        &h.app,
        json_request(Method::POST, &exec_uri, r#"{"cmd":[]}"#),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "cmd",
    );
    let (status, body) = send(
        &h.app,
        json_request(
            Method::POST,
            "/v1/sandboxes/nosuchsandbox0000000/exec",
            r#"{"cmd":["ls"]}"#,
        ),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        "nosuchsandbox",
    );

    // The agent dies: exec answers 409 and the sandbox is marked failed.
    h.driver.alive.lock().unwrap().clear();
    let (status, body) = send(
        &h.app,
        json_request(Method::POST, &exec_uri, r#"{"cmd":["ls"]}"#),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "invalid_state",
        "no longer running",
    );
    let (_, sandbox) = send(&h.app, get(&format!("/v1/sandboxes/{id}"))).await;
    assert_eq!(sandbox["state"], "failed");
    assert!(sandbox["failureReason"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    let (status, body) = send(
        &h.app,
        json_request(Method::POST, &exec_uri, r#"{"cmd":["ls"]}"#),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "invalid_state",
        "failed",
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let h = harness().await;
    let (status, body) = send(&h.app, get("/v2/nothing")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "route");
    let put = Request::builder()
        .method(Method::PUT)
        .uri("/v1/sandboxes")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&h.app, put).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    let (status, body) = send(&h.app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let h = harness().await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(17 * 1024 * 1024));
    let (status, body) = send(&h.app, json_request(Method::POST, "/v1/sandboxes", &big)).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "16 MiB",
    );
}

#[tokio::test]
async fn tcp_router_requires_a_valid_key() {
    let h = harness().await;
    let key = h.store.create_api_key("test").await.unwrap();
    let app = authenticated_router(AppState::new(h.store.clone(), h.driver.clone()));
    let with_auth = |value: Option<&str>| {
        let mut builder = Request::builder().uri("/v1/sandboxes");
        if let Some(value) = value {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Body::empty()).unwrap()
    };
    let (status, body) = send(&app, with_auth(None)).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Bearer",
    );
    let (status, body) = send(&app, with_auth(Some("Bearer wrn_0000"))).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid",
    );
    let (status, body) = send(&app, with_auth(Some(&format!("Basic {}", key.secret)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(&app, with_auth(Some(&format!("Bearer {}", key.secret)))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Unknown routes do not reveal themselves without a key.
    let (status, _) = send(&app, get("/v2/nothing")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    // A deleted key stops working.
    h.store.delete_api_key("test").await.unwrap();
    let (status, _) = send(&app, with_auth(Some(&format!("Bearer {}", key.secret)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn recover_adopts_live_sandboxes_and_fails_dead_ones() {
    let h = harness().await;
    let (_, alive) = create(&h.app, json!({})).await;
    let (_, dead) = create(&h.app, json!({})).await;
    let alive_id = alive["id"].as_str().unwrap().to_owned();
    let dead_id = dead["id"].as_str().unwrap().to_owned();
    h.driver.alive.lock().unwrap().remove(&dead_id);

    // A "restarted daemon": a new service over the same store.
    let service = SandboxService::new(h.store.clone(), h.driver.clone());
    let report = service.recover().await.unwrap();
    assert_eq!((report.adopted, report.failed), (1, 1));
    let alive = h.store.get_sandbox(&alive_id).await.unwrap().unwrap();
    assert_eq!(alive.state, warren_api::SandboxState::Running);
    let dead = h.store.get_sandbox(&dead_id).await.unwrap().unwrap();
    assert_eq!(dead.state, warren_api::SandboxState::Failed);
    assert!(dead.failure_reason.unwrap().starts_with(GONE_AFTER_RESTART));
    let kinds: Vec<String> = h
        .store
        .list_events(&dead_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["creating", "running", "failed"]);
}

#[tokio::test]
async fn the_daemon_default_disk_bound_applies_when_a_request_gives_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let driver = Arc::new(FakeDriver::default());
    let app = router(AppState::with_default_disk_mb(store, driver, Some(256)));
    let (status, body) = create(&app, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["resources"]["diskMb"], 256);
    let (status, body) = create(&app, json!({"resources": {"diskMb": 64}})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["resources"]["diskMb"], 64, "an explicit bound wins");
}
