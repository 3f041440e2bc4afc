//! The Rust SDK for Warren, a self-hosted sandbox platform for AI agents.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren_client::ClientError> {
//! use warren_client::{Client, CreateSandboxRequest, ExecRequest};
//!
//! let client = Client::from_env()?;
//! let sandbox = client.create_sandbox(&CreateSandboxRequest::default()).await?;
//! let result = client
//!     .exec(
//!         &sandbox.id,
//!         &ExecRequest {
//!             cmd: Some(vec!["echo".into(), "hi".into()]),
//!             ..Default::default()
//!         },
//!     )
//!     .await?;
//! print!("{}", result.stdout);
//! client.delete_sandbox(&sandbox.id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The client talks HTTP/1.1 to the daemon over its unix socket (the default,
//! `/run/warren/warren.sock`) or over TCP with a bearer API key. Every method
//! opens its own connection, so a [`Client`] is cheap to clone and share.

mod access;
mod attach;
mod error;
mod files;
mod images;
mod lifecycle;
mod network;
mod ports;
mod process;
mod routes;
mod snapshots;
mod target;
mod templates;
mod transport;

use std::fmt;
use std::path::{Path, PathBuf};

use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use attach::{AttachIo, Attached};
pub use error::ClientError;
pub use files::{ByteRange, ByteReader, FileDownload, TarCompression, UploadOptions, WatchStream};
pub use images::{PullEvent, PullStream};
pub use lifecycle::EventStream;
pub use process::{OutputEvent, OutputStream};
pub use target::{Target, DEFAULT_SOCKET_PATH};
pub use templates::TemplateBuildStream;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;
pub use warren_api::{
    ApiKeyScope, CreateSecretRequest, CreateTokenRequest, SandboxToken, SecretInfo, SecretList,
    TokenScope,
};
pub use warren_api::{
    AttachControl, AttachEvent, CreateSandboxRequest, ErrorBody, ErrorDetail, ExecRequest,
    ExecResult, Health, Process, ProcessList, PtySize, ResolvedResources, Resources, Sandbox,
    SandboxList, SandboxState, SignalRequest, StartProcessRequest, StdinRequest, SIGNAL_NAMES,
};
pub use warren_api::{
    ChangeKind, FileChange, FileExists, FileKind, FileStat, FindResult, GrepMatch, GrepResult,
    TarUploadResult, WatchEvent, WatchEventKind,
};
pub use warren_api::{
    CreatePoolRequest, CreateTemplateRequest, Pool, Template, TemplateBuildEvent, TemplateRemoved,
    TemplateState,
};
pub use warren_api::{
    CreateSnapshotRequest, ForkRequest, ForkResult, Snapshot, SnapshotKind, SnapshotList,
    MAX_FORK_COUNT,
};
pub use warren_api::{ExposedPort, ListeningPort, PortList, PortVisibility, SetPortsRequest};
pub use warren_api::{
    Image, ImageConfig, ImageLayer, ImageRemoved, PullImageRequest, PullProgress, PullProgressKind,
};
pub use warren_api::{OnTimeout, SandboxEvent, SandboxEventList, UpdateSandboxRequest};

/// Environment variable naming the daemon: `http://host:port` or `unix:/path`.
pub const ENV_URL: &str = "WARREN_URL";
/// Environment variable holding the API key for TCP daemons.
pub const ENV_API_KEY: &str = "WARREN_API_KEY";

/// A handle on one Warren daemon.
#[derive(Clone)]
pub struct Client {
    target: Target,
    api_key: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client for the daemon listening on the unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client {
            target: Target::Unix(path.into()),
            api_key: None,
        }
    }

    /// A client for a TCP daemon at `base_url` (`http://host:port`, optionally
    /// with a path prefix), authenticating with `api_key` when given.
    pub fn tcp(base_url: &str, api_key: Option<String>) -> Result<Client, ClientError> {
        match Target::parse(base_url)? {
            target @ Target::Tcp { .. } => Ok(Client { target, api_key }),
            Target::Unix(_) => Err(ClientError::InvalidUrl {
                url: base_url.to_owned(),
                reason: "expected http://host:port; use Client::unix for sockets".to_owned(),
            }),
        }
    }

    /// A client for `url`, which is either `http://host:port` or
    /// `unix:/path/to/socket`.
    pub fn from_url(url: &str, api_key: Option<String>) -> Result<Client, ClientError> {
        Ok(Client {
            target: Target::parse(url)?,
            api_key,
        })
    }

    /// A client configured from the environment: `WARREN_URL`
    /// (`http://…` or `unix:/path`) and `WARREN_API_KEY`; without
    /// `WARREN_URL`, the default socket [`DEFAULT_SOCKET_PATH`].
    pub fn from_env() -> Result<Client, ClientError> {
        let api_key = non_empty_env(ENV_API_KEY);
        match non_empty_env(ENV_URL) {
            Some(url) => Client::from_url(&url, api_key),
            None => Ok(Client::unix(DEFAULT_SOCKET_PATH).with_api_key(api_key)),
        }
    }

    /// Sets (or clears) the API key sent as `Authorization: Bearer …`.
    pub fn with_api_key(mut self, api_key: Option<String>) -> Client {
        self.api_key = api_key;
        self
    }

    /// Where this client connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The socket path when this client talks to a unix socket.
    pub fn unix_socket_path(&self) -> Option<&Path> {
        match &self.target {
            Target::Unix(path) => Some(path),
            Target::Tcp { .. } => None,
        }
    }

    /// `GET /healthz`: checks that the daemon answers, and its version.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, routes::HEALTH, None::<&()>).await
    }

    /// `POST /v1/sandboxes`: creates a sandbox and returns once it is running.
    pub async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, routes::SANDBOXES, Some(req)).await
    }

    /// `GET /v1/sandboxes`: lists sandboxes, newest first, optionally only
    /// those in `state` and carrying every `(key, value)` label in `metadata`.
    pub async fn list_sandboxes(
        &self,
        state: Option<SandboxState>,
        metadata: &[(String, String)],
    ) -> Result<Vec<Sandbox>, ClientError> {
        let route = routes::list_sandboxes(state, metadata);
        let list: SandboxList = self.call(Method::GET, &route, None::<&()>).await?;
        Ok(list.sandboxes)
    }

    /// `GET /v1/sandboxes/{id}`: one sandbox; [`ClientError::is_not_found`]
    /// when there is no such sandbox.
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::GET, &routes::sandbox(id), None::<&()>)
            .await
    }

    /// `DELETE /v1/sandboxes/{id}`: stops the sandbox and removes its files.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &routes::sandbox(id), None::<&()>)
            .await
            .map(drop)
    }

    /// `POST /v1/sandboxes/{id}/pause`: freezes a running sandbox in memory;
    /// returns it, now `paused`.
    pub async fn pause_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, &routes::pause(id), None::<&()>)
            .await
    }

    /// `POST /v1/sandboxes/{id}/resume`: thaws a paused sandbox; returns it,
    /// `running` again.
    pub async fn resume_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, &routes::resume(id), None::<&()>)
            .await
    }

    /// `POST /v1/sandboxes/{id}/exec`: runs a command to completion and
    /// returns its exit code and output. A non-zero exit code is not an error.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        self.call(Method::POST, &routes::exec(id), Some(req)).await
    }

    /// `POST /v1/sandboxes/{id}/processes`: starts a background process.
    pub async fn start_process(
        &self,
        id: &str,
        req: &StartProcessRequest,
    ) -> Result<Process, ClientError> {
        self.call(Method::POST, &routes::processes(id), Some(req))
            .await
    }

    /// `GET /v1/sandboxes/{id}/processes`: running and recently finished
    /// processes, oldest first.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<Process>, ClientError> {
        let list: ProcessList = self
            .call(Method::GET, &routes::processes(id), None::<&()>)
            .await?;
        Ok(list.processes)
    }

    /// `GET /v1/sandboxes/{id}/processes/{pid}`.
    pub async fn get_process(&self, id: &str, pid: i32) -> Result<Process, ClientError> {
        self.call(Method::GET, &routes::process(id, pid), None::<&()>)
            .await
    }

    /// `GET /v1/sandboxes/{id}/processes/{pid}/output`: the output from byte
    /// offset `from` (`None`: from the start) as it arrives; with `follow`,
    /// until the process exits.
    pub async fn process_output(
        &self,
        id: &str,
        pid: i32,
        from: Option<u64>,
        follow: bool,
    ) -> Result<OutputStream, ClientError> {
        let mut route = format!("{}/output", routes::process(id, pid));
        if !follow {
            route.push_str("?follow=false");
        }
        let headers: Vec<(&'static str, String)> = from
            .map(|f| vec![("last-event-id", f.to_string())])
            .unwrap_or_default();
        let (status, body) =
            transport::stream(&self.target, self.api_key.as_deref(), &route, &headers).await?;
        if (200..300).contains(&status) {
            return Ok(OutputStream::new(body, self.target.to_string()));
        }
        use http_body_util::BodyExt;
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Err(error::api_error(status, &bytes))
    }

    /// `POST /v1/sandboxes/{id}/processes/{pid}/stdin`: writes `data`, then
    /// closes stdin when `close`.
    pub async fn write_stdin(
        &self,
        id: &str,
        pid: i32,
        data: &str,
        close: bool,
    ) -> Result<(), ClientError> {
        let req = StdinRequest {
            data: (!data.is_empty()).then(|| data.to_owned()),
            close: close.then_some(true),
        };
        let route = format!("{}/stdin", routes::process(id, pid));
        self.send(Method::POST, &route, Some(&req)).await.map(drop)
    }

    /// `POST /v1/sandboxes/{id}/processes/{pid}/signal`: sends a signal by
    /// name (`SIGTERM`, `SIGKILL`, … see [`SIGNAL_NAMES`]) to the process's group.
    pub async fn signal_process(
        &self,
        id: &str,
        pid: i32,
        signal: &str,
    ) -> Result<(), ClientError> {
        let req = SignalRequest {
            signal: signal.to_owned(),
        };
        let route = format!("{}/signal", routes::process(id, pid));
        self.send(Method::POST, &route, Some(&req)).await.map(drop)
    }

    /// `POST /v1/sandboxes/{id}/processes/{pid}/resize`: sets a pty
    /// process's window size.
    pub async fn resize_process(
        &self,
        id: &str,
        pid: i32,
        cols: u16,
        rows: u16,
    ) -> Result<(), ClientError> {
        let req = PtySize { cols, rows };
        let route = format!("{}/resize", routes::process(id, pid));
        self.send(Method::POST, &route, Some(&req)).await.map(drop)
    }

    /// `GET /v1/sandboxes/{id}/processes/{pid}/attach`: a WebSocket carrying
    /// stdin in and output out, replaying output from byte offset `from`.
    pub async fn attach(&self, id: &str, pid: i32, from: u64) -> Result<Attached, ClientError> {
        let route = format!("{}/attach?from={from}", routes::process(id, pid));
        attach::connect(&self.target, self.api_key.as_deref(), &route).await
    }

    /// Sends a request and decodes a JSON success body.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let label = format!("{method} {route}");
        let bytes = self.send(method, route, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("invalid JSON in answer to {label}: {e}")))
    }

    /// Sends a request; returns the body of a 2xx answer, else the API error.
    async fn send(
        &self,
        method: Method,
        route: &str,
        body: Option<&impl Serialize>,
    ) -> Result<bytes::Bytes, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        let response =
            transport::send(&self.target, self.api_key.as_deref(), method, route, body).await?;
        if (200..300).contains(&response.status) {
            Ok(response.body)
        } else {
            Err(error::api_error(response.status, &response.body))
        }
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_rejects_unix_urls() {
        assert!(Client::tcp("unix:/x", None).is_err());
        let client = Client::tcp("http://127.0.0.1:7070", Some("k".into())).unwrap();
        assert_eq!(client.unix_socket_path(), None);
    }

    #[test]
    fn debug_hides_the_api_key() {
        let client = Client::tcp("http://h:1", Some("wk_topsecret".into())).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn from_url_accepts_both_kinds() {
        let unix = Client::from_url("unix:/tmp/w.sock", None).unwrap();
        assert_eq!(unix.unix_socket_path(), Some(Path::new("/tmp/w.sock")));
        let tcp = Client::from_url("http://h:2", None).unwrap();
        assert!(matches!(tcp.target(), Target::Tcp { port: 2, .. }));
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error_naming_the_path() {
        let dir = std::env::temp_dir().join(format!("warren-client-test-{}", std::process::id()));
        let client = Client::unix(dir.join("absent.sock"));
        let err = client.health().await.unwrap_err();
        assert!(err.is_daemon_absent(), "{err:?}");
        assert!(err.to_string().contains("absent.sock"));
    }
}
