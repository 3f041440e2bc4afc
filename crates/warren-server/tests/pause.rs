//! Pause and resume through the router, against a real SQLite store and fake
//! drivers with and without the capability.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use warren_runtime::{
    Driver, DriverError, ExecOutcome, ExecSpec, Pausable, RuntimeInfo, SandboxSpec,
};
use warren_server::{router, AppState, SandboxService};
use warren_store::Store;

/// A driver that records every call; `pausable` says whether it has the
/// capability.
#[derive(Default)]
struct Recorder {
    pausable: bool,
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }
}

#[async_trait]
impl Driver for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn has_image(&self, image: &str) -> bool {
        image == "host"
    }
    fn pausable(&self) -> Option<&dyn Pausable> {
        self.pausable.then_some(self as &dyn Pausable)
    }
    fn is_alive(&self, _id: &str, _info: &RuntimeInfo) -> bool {
        true
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        self.call(format!("create {}", spec.id));
        Ok(RuntimeInfo {
            pid: 4242,
            start_time: 7,
            agent_socket: PathBuf::from("/nonexistent"),
        })
    }
    async fn adopt(&self, id: &str, _info: &RuntimeInfo) -> Result<(), DriverError> {
        self.call(format!("adopt {id}"));
        Ok(())
    }
    async fn exec(&self, id: &str, _spec: ExecSpec) -> Result<ExecOutcome, DriverError> {
        self.call(format!("exec {id}"));
        Ok(ExecOutcome::default())
    }
    async fn destroy(&self, id: &str, _info: Option<&RuntimeInfo>) -> Result<(), DriverError> {
        self.call(format!("destroy {id}"));
        Ok(())
    }
}

#[async_trait]
impl Pausable for Recorder {
    async fn pause(&self, id: &str) -> Result<(), DriverError> {
        self.call(format!("pause {id}"));
        Ok(())
    }
    async fn resume(&self, id: &str) -> Result<(), DriverError> {
        self.call(format!("resume {id}"));
        Ok(())
    }
}

async fn send(app: &Router, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

fn assert_error(got: (StatusCode, Value), code: &str, mentions: &[&str]) {
    let (status, body) = got;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for m in mentions {
        assert!(message.contains(m), "{message:?} should mention {m:?}");
    }
}

async fn setup(pausable: bool) -> (tempfile::TempDir, Store, Arc<Recorder>, Router, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let driver = Arc::new(Recorder {
        pausable,
        ..Recorder::default()
    });
    let app = router(AppState::new(store.clone(), driver.clone()));
    let (status, created) = send(&app, Method::POST, "/v1/sandboxes", "{}").await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    (dir, store, driver, app, id)
}

#[tokio::test]
async fn pause_and_resume_are_recorded_transitions() {
    let (_dir, store, driver, app, id) = setup(true).await;
    let (status, body) = send(&app, Method::POST, &format!("/v1/sandboxes/{id}/pause"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "paused");
    assert_eq!(body["id"], id.as_str());

    // Twice: 409 naming the current state; the driver is not asked again.
    assert_error(
        send(&app, Method::POST, &format!("/v1/sandboxes/{id}/pause"), "").await,
        "invalid_state",
        &["paused"],
    );

    let (status, body) = send(
        &app,
        Method::POST,
        &format!("/v1/sandboxes/{id}/resume"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "running");
    assert_error(
        send(
            &app,
            Method::POST,
            &format!("/v1/sandboxes/{id}/resume"),
            "",
        )
        .await,
        "invalid_state",
        &["running"],
    );

    assert_eq!(
        driver.calls(),
        [
            format!("create {id}"),
            format!("pause {id}"),
            format!("resume {id}")
        ]
    );
    let kinds: Vec<String> = store
        .list_events(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["creating", "running", "paused", "running"]);
}

#[tokio::test]
async fn a_paused_sandbox_refuses_work_before_it_reaches_the_driver() {
    let (_dir, _store, driver, app, id) = setup(true).await;
    send(&app, Method::POST, &format!("/v1/sandboxes/{id}/pause"), "").await;
    let before = driver.calls();
    let exec = format!("/v1/sandboxes/{id}/exec");
    let processes = format!("/v1/sandboxes/{id}/processes");
    let files = format!("/v1/sandboxes/{id}/files?path=/etc/hostname");
    let changes = format!("/v1/sandboxes/{id}/changes");
    for (method, uri, body) in [
        (Method::POST, exec.as_str(), r#"{"cmd":["true"]}"#),
        (Method::POST, processes.as_str(), r#"{"cmd":["sleep","1"]}"#),
        (Method::GET, processes.as_str(), ""),
        (Method::GET, files.as_str(), ""),
        (Method::GET, changes.as_str(), ""),
    ] {
        let got = send(&app, method.clone(), uri, body).await;
        assert_error(got, "invalid_state", &["paused", "resume"]);
    }
    assert_eq!(driver.calls(), before, "nothing reached the driver");

    // Delete works on a paused sandbox.
    let (status, _) = send(&app, Method::DELETE, &format!("/v1/sandboxes/{id}"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(driver.calls().last().unwrap(), &format!("destroy {id}"));
}

#[tokio::test]
async fn a_driver_without_the_capability_answers_capability_unsupported() {
    let (_dir, _store, driver, app, id) = setup(false).await;
    assert_error(
        send(&app, Method::POST, &format!("/v1/sandboxes/{id}/pause"), "").await,
        "capability_unsupported",
        &["cannot pause"],
    );
    let (status, body) = send(&app, Method::GET, &format!("/v1/sandboxes/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "running");
    assert_eq!(driver.calls(), [format!("create {id}")]);
    // Resume of a running sandbox is a state error first.
    assert_error(
        send(
            &app,
            Method::POST,
            &format!("/v1/sandboxes/{id}/resume"),
            "",
        )
        .await,
        "invalid_state",
        &["running"],
    );
}

#[tokio::test]
async fn recovery_keeps_a_paused_sandbox_paused_without_touching_its_agent() {
    let (_dir, store, driver, app, id) = setup(true).await;
    send(&app, Method::POST, &format!("/v1/sandboxes/{id}/pause"), "").await;
    let (_, running) = send(&app, Method::POST, "/v1/sandboxes", "{}").await;
    let running = running["id"].as_str().unwrap().to_owned();
    let service = SandboxService::new(store.clone(), driver.clone());
    let report = service.recover().await.unwrap();
    assert_eq!((report.adopted, report.failed), (2, 0));
    // A sandbox recorded running is thawed (in case a crash interrupted a
    // pause) before its agent is adopted; the paused one is left frozen.
    let calls = driver.calls();
    let thaw = calls.iter().position(|c| *c == format!("resume {running}"));
    let adopt = calls.iter().position(|c| *c == format!("adopt {running}"));
    assert!(thaw.is_some() && thaw < adopt, "{calls:?}");
    assert!(!calls.contains(&format!("resume {id}")), "{calls:?}");
    let record = store.get_sandbox(&id).await.unwrap().unwrap();
    assert_eq!(record.state, warren_api::SandboxState::Paused);
    assert!(
        !driver.calls().contains(&format!("adopt {id}")),
        "{:?}",
        driver.calls()
    );
}
