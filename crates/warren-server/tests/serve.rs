//! `serve` end to end over a real unix socket, with a driver that has nothing running.
// Test helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_runtime::{Driver, DriverError, ExecOutcome, ExecSpec, RuntimeInfo, SandboxSpec};
use warren_server::{serve, ServerConfig};
use warren_store::Store;

struct NothingAlive;

#[async_trait]
impl Driver for NothingAlive {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn has_image(&self, _image: &str) -> bool {
        false
    }
    async fn create(&self, _spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        Err(DriverError::UnknownImage("x".into()))
    }
    async fn adopt(&self, _id: &str, _info: &RuntimeInfo) -> Result<(), DriverError> {
        Err(DriverError::AgentUnavailable("gone".into()))
    }
    async fn exec(&self, _id: &str, _spec: ExecSpec) -> Result<ExecOutcome, DriverError> {
        Err(DriverError::AgentUnavailable("gone".into()))
    }
    async fn destroy(&self, _id: &str, _info: Option<&RuntimeInfo>) -> Result<(), DriverError> {
        Ok(())
    }
}

async fn http_get(socket: &PathBuf, path: &str) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn serves_on_a_private_unix_socket_and_recovers_first() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let socket_path = dir.path().join("run/warren.sock");
    std::fs::create_dir_all(socket_path.parent().unwrap()).unwrap();
    std::fs::write(&socket_path, b"stale").unwrap();

    let store = Store::open(&data_dir).await.unwrap();
    // A sandbox left "running" by a previous daemon whose process is gone.
    let now = chrono::Utc::now();
    store
        .insert_sandbox(&warren_store::SandboxRecord {
            id: "leftover000000000000".into(),
            name: None,
            state: warren_api::SandboxState::Running,
            image: "host".into(),
            driver: "fake".into(),
            resources: Default::default(),
            env: Default::default(),
            workdir: "/workspace".into(),
            metadata: Default::default(),
            created_at: now,
            updated_at: now,
            failure_reason: None,
            runtime: Some(r#"{"pid":1,"start_time":1,"agent_socket":"/nope"}"#.into()),
            user: None,
            default_command: None,
            lifecycle: Default::default(),
        })
        .await
        .unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        data_dir,
        socket_path: socket_path.clone(),
        listen: None,
        default_disk_mb: None,
        id_map: (1_000_000, 65536),
        max_upload_mb: None,
        network: Default::default(),
        ports: Default::default(),
        access: Default::default(),
    };
    let server = tokio::spawn(serve(
        config,
        store.clone(),
        Arc::new(NothingAlive),
        async {
            let _ = stopped.await;
        },
    ));

    let mut response = String::new();
    for _ in 0..100 {
        if let Ok(meta) = std::fs::metadata(&socket_path) {
            if meta.len() == 0 {
                response = http_get(&socket_path, "/healthz").await;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""status":"ok""#), "{response}");
    let mode = std::fs::metadata(&socket_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let listed = http_get(&socket_path, "/v1/sandboxes?state=failed").await;
    assert!(listed.contains("leftover000000000000"), "{listed}");
    assert!(listed.contains("gone after daemon restart"), "{listed}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!socket_path.exists());
    // The daemon's nftables table outlives it on purpose; the test's goes.
    if let Ok(table) = std::fs::read_to_string(dir.path().join("data/network/nft-table")) {
        let words: Vec<&str> = table.split_whitespace().collect();
        if let [family, name] = words[..] {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", family, name])
                .status();
        }
    }
}
