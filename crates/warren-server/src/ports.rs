//! Sandbox ports: the exposed list (`GET/PUT /v1/sandboxes/{id}/ports`), the
//! HTTP reverse proxy (`/v1/sandboxes/{id}/ports/{port}/…` and, with
//! `--domain D`, hosts `{port}-{id}.D`), WebSocket pass-through and the raw
//! TCP tunnel (`GET …/ports/{port}/tcp`, a WebSocket). The daemon reaches a
//! port through the sandbox's own network namespace, in every network mode,
//! and only while the sandbox's process is alive (a recycled pid never leads
//! into a host process's namespace; see [`warren_runtime::netns`]).

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_api::{
    ErrorBody, ErrorCode, ExposedPort, ListeningPort, PortList, PortVisibility, SandboxState,
    SetPortsRequest, TokenScope,
};
use warren_runtime::netns::{NetnsError, NetnsOwner};
use warren_runtime::{Driver, RuntimeInfo};
use warren_store::SandboxRecord;

use crate::api_json::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::lifetimes::ActivityGuard;
use crate::sandbox_service::{parse_runtime, SandboxService};
use crate::AppState;

/// Daemon-wide port settings (`warren serve` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSettings {
    /// With a domain `D`, requests for host `{port}-{id}.D` go to that port.
    pub domain: Option<String>,
}

/// The service's port state.
#[derive(Default)]
pub(crate) struct PortState {
    /// `--domain`, lowercase, without a leading dot.
    domain: Option<String>,
}

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request extension marking a request rewritten by host routing: its path
/// is the app's own, so `…/tcp` there is never the raw TCP tunnel.
#[derive(Debug, Clone, Copy)]
struct HostRouted;

/// Wraps the whole API so that host-routed requests (`{port}-{id}.D`) are
/// rewritten to `/v1/sandboxes/{id}/ports/{port}/…` before routing and auth.
pub(crate) fn with_host_routing(router: axum::Router, state: crate::AppState) -> axum::Router {
    let Some(domain) = state.service.ports.domain.clone() else {
        return router;
    };
    let rewrite = move |mut req: Request| {
        if let Some(uri) = host_routed_uri(&domain, &req) {
            *req.uri_mut() = uri;
            req.extensions_mut().insert(HostRouted);
        }
        req
    };
    axum::Router::new().fallback_service(
        tower::ServiceBuilder::new()
            .map_request(rewrite)
            .service(router),
    )
}

/// The proxy URI for a request whose host is `{port}-{id}.{domain}`.
fn host_routed_uri(domain: &str, req: &Request) -> Option<Uri> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let (port, id) = parse_routed_host(domain, host)?;
    let rest = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let rest = if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    };
    format!("/v1/sandboxes/{id}/ports/{port}{rest}")
        .parse()
        .ok()
}

/// `8080-abc.warren.test[:443]` with domain `warren.test` → (8080, "abc").
fn parse_routed_host(domain: &str, host: &str) -> Option<(u16, String)> {
    let host = host.trim().to_ascii_lowercase();
    // Drop a `:port` suffix (host names here never hold a colon otherwise).
    let host = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    let host = host.strip_suffix('.').unwrap_or(host);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || id.is_empty() {
        return None;
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some((port.parse().ok()?, id.to_owned()))
}

/// Routes of this module.
pub(crate) fn router() -> axum::Router<crate::AppState> {
    axum::Router::new()
        .route("/v1/sandboxes/{id}/ports", get(list_ports).put(set_ports))
        .route("/v1/sandboxes/{id}/ports/{port}", any(proxy))
        .route("/v1/sandboxes/{id}/ports/{port}/", any(proxy))
        .route("/v1/sandboxes/{id}/ports/{port}/{*path}", any(proxy))
}

/// List a sandbox's exposed ports and the TCP sockets listening inside it.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/ports",
    tag = "ports",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Exposed and listening ports", body = PortList),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is running but its process is gone", body = ErrorBody),
    )
)]
pub(crate) async fn list_ports(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PortList>, ApiError> {
    Ok(Json(state.service.port_list(&id).await?))
}

/// Replace the ports a sandbox exposes (each `private` or `public`).
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/ports",
    tag = "ports",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SetPortsRequest,
    responses(
        (status = 200, description = "The ports after the change", body = PortList),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox's driver cannot reach ports (gVisor)", body = ErrorBody),
        (status = 422, description = "A port outside 1–65535 or given twice", body = ErrorBody),
    )
)]
pub(crate) async fn set_ports(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetPortsRequest>,
) -> Result<Json<PortList>, ApiError> {
    Ok(Json(state.service.set_exposed_ports(&id, req.ports).await?))
}

/// 422 naming the first port outside 1–65535 or given twice.
fn validate_ports(ports: &[ExposedPort]) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for p in ports {
        if !(1..=65535).contains(&p.port) {
            return Err(ApiError::invalid_value(format!(
                "port {} is outside 1–65535",
                p.port
            )));
        }
        if !seen.insert(p.port) {
            return Err(ApiError::invalid_value(format!(
                "port {} is listed twice",
                p.port
            )));
        }
    }
    Ok(())
}

impl SandboxService {
    /// Applies the daemon's port settings (called once by `serve`).
    pub(crate) fn set_port_settings(&mut self, settings: &PortSettings) {
        self.ports.domain = settings
            .domain
            .as_deref()
            .map(|d| d.trim().trim_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty());
    }

    /// The exposed and listening ports of a sandbox. A sandbox recorded as
    /// running whose process is gone is 409 `invalid_state`.
    pub(crate) async fn port_list(&self, id: &str) -> Result<PortList, ApiError> {
        let record = self.record(id).await?;
        let listening = self.listening_ports(&record).await?;
        Ok(self.port_list_of(&record, listening))
    }

    /// The TCP sockets listening in a running sandbox (none when it is not
    /// running or its driver has its own network stack).
    async fn listening_ports(
        &self,
        record: &SandboxRecord,
    ) -> Result<Vec<ListeningPort>, ApiError> {
        let id = record.id.as_str();
        if record.state != SandboxState::Running {
            return Ok(Vec::new());
        }
        let driver = self.driver_of(record)?;
        if !has_netns(driver.as_ref()) {
            return Ok(Vec::new());
        }
        let owner = netns_owner(id, driver.as_ref(), parse_runtime(record))?;
        let found =
            tokio::task::spawn_blocking(move || warren_runtime::netns::listening_tcp(owner))
                .await
                .map_err(|e| {
                    ApiError::internal(format!("listing the ports of sandbox {id}: {e}"))
                })?;
        match found {
            Ok(found) => Ok(found
                .into_iter()
                .map(|l| ListeningPort {
                    port: l.port,
                    protocol: l.protocol.to_owned(),
                    address: l.address,
                })
                .collect()),
            Err(NetnsError::Io { step, source }) => {
                tracing::warn!(sandbox = %id, step, error = %source, "could not list listening ports");
                Ok(Vec::new())
            }
            Err(e) => Err(netns_error(id, e)),
        }
    }

    fn port_list_of(&self, record: &SandboxRecord, listening: Vec<ListeningPort>) -> PortList {
        let id = record.id.as_str();
        let mut exposed = record.lifecycle.ports.clone();
        exposed.sort_by_key(|p| p.port);
        PortList {
            exposed,
            listening,
            proxy_path: format!("/v1/sandboxes/{id}/ports/{{port}}/"),
            host_pattern: self
                .ports
                .domain
                .as_ref()
                .map(|d| format!("{{port}}-{id}.{d}")),
        }
    }

    /// Replaces the exposed ports; records `ports_changed`. A driver without
    /// a network namespace Warren can reach (gVisor) is 409
    /// `capability_unsupported`.
    pub(crate) async fn set_exposed_ports(
        &self,
        id: &str,
        mut ports: Vec<ExposedPort>,
    ) -> Result<PortList, ApiError> {
        validate_ports(&ports)?;
        ports.sort_by_key(|p| p.port);
        let record = {
            let _lock = self.lock(id).await;
            let record = self.record(id).await?;
            let driver = self.driver_of(&record)?;
            if !has_netns(driver.as_ref()) {
                return Err(no_netns(id, driver.as_ref()));
            }
            let mut lifecycle = record.lifecycle.clone();
            lifecycle.ports = ports.clone();
            self.store.set_lifecycle(id, &lifecycle).await?;
            self.record_event(id, "ports_changed", serde_json::json!({ "ports": ports }))
                .await?;
            self.record(id).await?
        };
        // The change is made: a listing that fails does not undo it.
        let listening = match self.listening_ports(&record).await {
            Ok(listening) => listening,
            Err(e) => {
                tracing::debug!(sandbox = %id, error = %e, "no listening ports after a change");
                Vec::new()
            }
        };
        Ok(self.port_list_of(&record, listening))
    }

    /// Checks that `caller` may reach `port` of sandbox `id` and returns the
    /// process whose network namespace holds it (the sandbox resumes first
    /// when it auto-resumes; the request counts as activity).
    async fn port_target(
        &self,
        id: &str,
        port: u16,
        caller: &Caller,
    ) -> Result<NetnsOwner, ApiError> {
        let record = match self.record(id).await {
            Ok(record) => record,
            // Anonymous callers learn nothing about which sandboxes exist.
            Err(e) if *caller == Caller::Anonymous && e.code == ErrorCode::NotFound => {
                return Err(not_public(id, port))
            }
            Err(e) => return Err(e),
        };
        match caller {
            Caller::Local | Caller::Key { .. } => {}
            Caller::Token { sandbox, scope } => {
                if sandbox != id || *scope != TokenScope::Ports {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        format!("this token does not allow reaching the ports of sandbox {id}"),
                    ));
                }
            }
            Caller::Anonymous => {
                let public =
                    record.lifecycle.ports.iter().any(|p| {
                        p.port == i64::from(port) && p.visibility == PortVisibility::Public
                    });
                if !public {
                    return Err(not_public(id, port));
                }
            }
        }
        let record = self.active_record(id, "ports are reachable").await?;
        let driver = self.driver_of(&record)?;
        if !has_netns(driver.as_ref()) {
            return Err(no_netns(id, driver.as_ref()));
        }
        netns_owner(id, driver.as_ref(), parse_runtime(&record))
    }
}

/// Whether the driver runs sandboxes in a network namespace the daemon can
/// enter (the namespace driver; gVisor has its own network stack and
/// answers `None` whatever the sandbox).
fn has_netns(driver: &dyn Driver) -> bool {
    let probe = RuntimeInfo {
        pid: 1,
        start_time: 0,
        agent_socket: Default::default(),
    };
    driver.network_namespace_pid(&probe).is_some()
}

/// 409 `capability_unsupported`: the driver has no reachable namespace.
fn no_netns(id: &str, driver: &dyn Driver) -> ApiError {
    ApiError::new(
        ErrorCode::CapabilityUnsupported,
        format!(
            "the {} driver cannot reach ports inside sandbox {id}",
            driver.name()
        ),
    )
}

/// The process holding a running sandbox's network namespace: its recorded
/// pid and start time (checked at every use, so a recycled pid is refused).
fn netns_owner(
    id: &str,
    driver: &dyn Driver,
    info: Option<RuntimeInfo>,
) -> Result<NetnsOwner, ApiError> {
    let info = info.ok_or_else(|| not_running(id))?;
    let pid = driver
        .network_namespace_pid(&info)
        .ok_or_else(|| no_netns(id, driver))?;
    Ok(NetnsOwner::new(pid, info.start_time))
}

/// 409 `invalid_state`: the sandbox's process is gone. Never names the pid.
fn not_running(id: &str) -> ApiError {
    ApiError::invalid_state(format!("sandbox {id} is not running"))
}

/// The API error for a failed namespace operation other than a connect.
fn netns_error(id: &str, e: NetnsError) -> ApiError {
    match e {
        NetnsError::Gone => not_running(id),
        NetnsError::OwnNamespace => {
            tracing::error!(sandbox = %id, "the sandbox's recorded process is in the daemon's own network namespace; refused");
            ApiError::internal(format!(
                "sandbox {id} has no network namespace of its own; refusing to reach into the daemon's"
            ))
        }
        NetnsError::Io { .. } => ApiError::internal(format!("sandbox {id}: {e}")),
    }
}

/// 401 for an anonymous request to a port that is not public.
fn not_public(id: &str, port: u16) -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        format!(
            "port {port} of sandbox {id} is not public: send an API key or a sandbox token \
             with the ports scope"
        ),
    )
}

/// Connects to `port` in the namespace of `owner`: 502 `port_unreachable`
/// when nothing answers, 409 `invalid_state` when the process is gone.
async fn connect(
    id: &str,
    owner: NetnsOwner,
    port: u16,
) -> Result<tokio::net::TcpStream, ApiError> {
    warren_runtime::netns::connect_tcp(owner, port)
        .await
        .map_err(|e| match e {
            e if e.is_refused() => ApiError::new(
                ErrorCode::PortUnreachable,
                format!("nothing is listening on port {port} in sandbox {id}"),
            ),
            NetnsError::Io { .. } => ApiError::new(
                ErrorCode::PortUnreachable,
                format!("cannot reach port {port} in sandbox {id}: {e}"),
            ),
            e => netns_error(id, e),
        })
}

/// The part of the proxy path after `/v1/sandboxes/{id}/ports/{port}`
/// (raw, as sent), with the query minus Warren credentials.
fn upstream_path(uri: &Uri) -> String {
    let path = uri.path();
    let rest = path
        .strip_prefix("/v1/sandboxes/")
        .and_then(|r| r.splitn(4, '/').nth(3))
        .map(|r| format!("/{r}"))
        .unwrap_or_else(|| "/".to_owned());
    with_query(rest, uri.query())
}

/// `base` followed by `?query` minus its Warren credentials (when anything
/// is left).
fn with_query(base: String, query: Option<&str>) -> String {
    match query.and_then(query_without_credentials) {
        Some(kept) => format!("{base}?{kept}"),
        None => base,
    }
}

/// `query` without the `token` parameters that hold a Warren credential
/// (`wst_…`, `wrn_…`); `None` when nothing is left. Other `token` values
/// belong to the app and are kept.
fn query_without_credentials(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !is_credential_param(pair))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Whether a query pair is `token=wst_…` or `token=wrn_…` (percent-encoded
/// or not).
fn is_credential_param(pair: &str) -> bool {
    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
    if percent_decode(name) != "token" {
        return false;
    }
    let value = percent_decode(value);
    value.starts_with("wst_") || value.starts_with("wrn_")
}

/// Decodes `%XX` escapes and `+` (bytes that do not decode stay as sent).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `Referer` value without the Warren credentials of its query (a page
/// opened with `?token=wst_…` must not hand the token to the app through
/// the `Referer` of its own subresource requests).
fn referer_without_credentials(referer: &str) -> String {
    let (rest, fragment) = match referer.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (referer, None),
    };
    let mut out = match rest.split_once('?') {
        Some((base, query)) => with_query(base.to_owned(), Some(query)),
        None => rest.to_owned(),
    };
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// True when `Connection` lists `upgrade` and an `Upgrade` header is present.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// Removes hop-by-hop headers and those named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The app's response headers as sent to the client: hop-by-hop headers
/// removed, and `Content-Length` dropped when the app also sent
/// `Transfer-Encoding` (the length is then not the body's; RFC 9112 6.3).
fn downstream_headers(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
}

/// True when an `Authorization` value carries a Warren credential.
fn is_warren_credential(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(crate::auth::bearer_token)
        .is_some_and(|t| t.starts_with("wrn_") || t.starts_with("wst_"))
}

/// The request headers sent to the sandbox; `peer` is the client's address
/// (TCP listener), appended to `X-Forwarded-For`.
fn upstream_headers(
    incoming: &HeaderMap,
    port: u16,
    upgrade: bool,
    peer: Option<std::net::SocketAddr>,
) -> HeaderMap {
    let mut headers = incoming.clone();
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(is_warren_credential)
    {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(referer) = incoming.get(header::REFERER) {
        let cleaned = referer
            .to_str()
            .ok()
            .map(referer_without_credentials)
            .and_then(|r| HeaderValue::from_str(&r).ok());
        match cleaned {
            Some(value) => {
                headers.insert(header::REFERER, value);
            }
            // Not text: it cannot be checked, so it is not forwarded.
            None => {
                headers.remove(header::REFERER);
            }
        }
    }
    let host = incoming.get(header::HOST).cloned();
    if let Some(host) = &host {
        headers.insert("x-forwarded-host", host.clone());
    } else if let Ok(value) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) {
        headers.insert(header::HOST, value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(peer) = peer {
        let forwarded_for = match incoming
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(earlier) => format!("{earlier}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
    }
    if upgrade {
        if let Some(to) = upgrade_to {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, to);
        }
    }
    headers
}

/// Any method on `/v1/sandboxes/{id}/ports/{port}[/…]`: the reverse proxy,
/// WebSocket pass-through, and the TCP tunnel on `…/tcp` with a WebSocket
/// upgrade (not on host-routed requests, whose `/tcp` is the app's path).
///
/// Tunnel framing: each binary message carries bytes of the TCP stream, in
/// order, both ways (text messages are taken as their bytes). An **empty
/// binary message is end-of-stream** for its direction (a TCP half-close):
/// when the client sends one, the daemon shuts down the write half of its
/// connection to the app and keeps forwarding the app's answer; when the
/// app closes its side, the daemon sends one and keeps forwarding the
/// client's bytes. Once both directions have ended the daemon sends a Close
/// message. A Close from the client, or either connection failing, ends
/// both directions at once.
async fn proxy(State(state): State<AppState>, req: Request) -> Response {
    match proxy_request(state, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn proxy_request(state: AppState, req: Request) -> Result<Response, ApiError> {
    let (id, port_text, rest) = {
        let path = req.uri().path();
        let mut parts = path
            .strip_prefix("/v1/sandboxes/")
            .unwrap_or_default()
            .splitn(4, '/');
        let id = parts.next().unwrap_or_default().to_owned();
        let _ports = parts.next();
        let port = parts.next().unwrap_or_default().to_owned();
        (id, port, parts.next().map(str::to_owned))
    };
    let port = port_text
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            ApiError::invalid_value(format!("port {port_text:?} is not a number in 1–65535"))
        })?;
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    let owner = state.service.port_target(&id, port, &caller).await?;
    let guard = state.service.activity_guard(&id);
    let upgrade = wants_upgrade(req.headers());
    // A host-routed request's path is the app's: `/tcp` there is the app's.
    let host_routed = req.extensions().get::<HostRouted>().is_some();

    if rest.as_deref() == Some("tcp") && upgrade && !host_routed {
        let (mut parts, _body) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::invalid_request(format!("TCP tunnel: {}", e.body_text())))?;
        let stream = connect(&id, owner, port).await?;
        return Ok(ws.on_upgrade(move |socket| async move {
            tunnel(socket, stream).await;
            drop(guard);
        }));
    }

    let stream = connect(&id, owner, port).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(&id, port, &e))?;
    let conn_id = id.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(sandbox = %conn_id, port, error = %e, "proxied connection ended");
        }
    });
    let mut sender = sender;

    let (mut parts, body) = req.into_parts();
    let client_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let mut upstream = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(upstream_path(&parts.uri))
        .body(body)
        .map_err(|e| ApiError::internal(format!("building the proxied request: {e}")))?;
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    *upstream.headers_mut() = upstream_headers(&parts.headers, port, upgrade, peer);

    let mut response = sender
        .send_request(upstream)
        .await
        .map_err(|e| bad_gateway(&id, port, &e))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::new(
                ErrorCode::PortUnreachable,
                format!("port {port} in sandbox {id} switched protocols without being asked"),
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (parts, _) = response.into_parts();
        tokio::spawn(async move {
            let _in_use = guard;
            match (client_upgrade.await, upstream_upgrade.await) {
                (Ok(client), Ok(upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(error = %e, "a proxied upgrade failed")
                }
            }
        });
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = response.into_parts();
    downstream_headers(&mut parts.headers);
    let body = body.map_frame(move |frame| {
        let _in_use: &ActivityGuard = &guard;
        frame
    });
    Ok(Response::from_parts(parts, Body::new(body)))
}

fn bad_gateway(id: &str, port: u16, e: &hyper::Error) -> ApiError {
    ApiError::new(
        ErrorCode::PortUnreachable,
        format!("port {port} in sandbox {id} did not answer HTTP: {e}"),
    )
}

/// Pipes a WebSocket and a TCP stream with the framing described at
/// [`proxy`]: empty binary messages carry half-closes; the tunnel ends when
/// both directions have ended (then sends Close) or when either side fails
/// or closes the WebSocket.
async fn tunnel(socket: WebSocket, stream: tokio::net::TcpStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut tcp_rx, mut tcp_tx) = stream.into_split();
    let stop = tokio_util::sync::CancellationToken::new();
    let ended = std::sync::atomic::AtomicU8::new(0);
    // Counts one direction as ended; the second one stops the tunnel.
    let direction_ended = || {
        if ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            stop.cancel();
        }
    };
    let upstream = async {
        let mut eof = false;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = ws_rx.next() => message,
            };
            let bytes = match message {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Text(t))) => bytes::Bytes::copy_from_slice(t.as_str().as_bytes()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            };
            if eof {
                // Bytes after the client's end-of-stream have nowhere to go.
                continue;
            }
            if bytes.is_empty() {
                eof = true;
                let _ = tcp_tx.shutdown().await;
                direction_ended();
            } else if tcp_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
        stop.cancel();
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                () = stop.cancelled() => return,
                read = tcp_rx.read(&mut buf) => read,
            };
            match read {
                Ok(0) => {
                    if ws_tx
                        .send(Message::Binary(bytes::Bytes::new()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    direction_ended();
                    return;
                }
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if ws_tx.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        stop.cancel();
    };
    tokio::join!(upstream, downstream);
    let _ = ws_tx.send(Message::Close(None)).await;
}

/// OpenAPI paths and schemas of this module (merged into the document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list_ports, set_ports),
    components(schemas(ExposedPort, ListeningPort, PortList, PortVisibility, SetPortsRequest)),
    tags((name = "ports", description = "Exposed ports, the HTTP proxy and the TCP tunnel"))
)]
pub(crate) struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routed_hosts() {
        assert_eq!(
            parse_routed_host("warren.test", "8080-abc123.warren.test"),
            Some((8080, "abc123".into()))
        );
        assert_eq!(
            parse_routed_host("warren.test", "3000-ABC.Warren.Test:8443"),
            Some((3000, "abc".into()))
        );
        assert_eq!(parse_routed_host("warren.test", "abc.warren.test"), None);
        assert_eq!(parse_routed_host("warren.test", "x-abc.warren.test"), None);
        assert_eq!(parse_routed_host("warren.test", "80-abc.other.test"), None);
        assert_eq!(parse_routed_host("warren.test", "80-abcwarren.test"), None);
        assert_eq!(
            parse_routed_host("warren.test", "99999-abc.warren.test"),
            None
        );
        // The domain must end the host: `.D.evil` is someone else's.
        assert_eq!(
            parse_routed_host("warren.test", "8000-abc.warren.test.evil"),
            None
        );
        assert_eq!(
            parse_routed_host("warren.test", "8000-abc.warren.test.evil:80"),
            None
        );
        assert_eq!(
            parse_routed_host("warren.test", "8000-abc.evilwarren.test"),
            None
        );
        // Ids never hold dots (one label before the domain).
        assert_eq!(
            parse_routed_host("warren.test", "8000-a.b.warren.test"),
            None
        );
        assert_eq!(
            parse_routed_host("warren.test", "8000-.abc.warren.test"),
            None
        );
        assert_eq!(
            parse_routed_host("warren.test", "8000-abc..warren.test"),
            None
        );
    }

    #[test]
    fn upstream_path_keeps_rest_and_drops_token() {
        let uri: Uri = "/v1/sandboxes/abc/ports/80/a/b%20c?x=1&token=wst_x&y=2"
            .parse()
            .unwrap();
        assert_eq!(upstream_path(&uri), "/a/b%20c?x=1&y=2");
        let uri: Uri = "/v1/sandboxes/abc/ports/80".parse().unwrap();
        assert_eq!(upstream_path(&uri), "/");
        let uri: Uri = "/v1/sandboxes/abc/ports/80/?token=wrn_k".parse().unwrap();
        assert_eq!(upstream_path(&uri), "/");
        // Percent-encoded names and values are recognised too.
        let uri: Uri = "/v1/sandboxes/abc/ports/80/?%74oken=wst%5Fx&a"
            .parse()
            .unwrap();
        assert_eq!(upstream_path(&uri), "/?a");
        // The app's own `token` parameter is the app's.
        let uri: Uri = "/v1/sandboxes/abc/ports/80/lab?token=jupyter1&token=wst_x"
            .parse()
            .unwrap();
        assert_eq!(upstream_path(&uri), "/lab?token=jupyter1");
    }

    #[test]
    fn referer_loses_warren_tokens_only() {
        assert_eq!(
            referer_without_credentials("http://h/v1/sandboxes/a/ports/80/p?x=1&token=wst_s#f"),
            "http://h/v1/sandboxes/a/ports/80/p?x=1#f"
        );
        assert_eq!(
            referer_without_credentials("http://h/p?token=wst_s"),
            "http://h/p"
        );
        assert_eq!(
            referer_without_credentials("http://h/p?token=mine"),
            "http://h/p?token=mine"
        );
        assert_eq!(referer_without_credentials("http://h/p"), "http://h/p");

        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::REFERER,
            HeaderValue::from_static("http://h/x?token=wst_secret&y=2"),
        );
        let out = upstream_headers(&incoming, 80, false, None);
        assert_eq!(out.get(header::REFERER).unwrap(), "http://h/x?y=2");
    }

    #[test]
    fn chunked_responses_lose_their_content_length() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-app", HeaderValue::from_static("1"));
        downstream_headers(&mut headers);
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(headers.get("x-app").unwrap(), "1");

        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        downstream_headers(&mut plain);
        assert_eq!(plain.get(header::CONTENT_LENGTH).unwrap(), "10");
    }

    #[test]
    fn strips_warren_credentials_and_hop_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wrn_secret"),
        );
        incoming.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        incoming.insert("x-hop", HeaderValue::from_static("1"));
        incoming.insert("x-app", HeaderValue::from_static("2"));
        incoming.insert(header::HOST, HeaderValue::from_static("h:1"));
        let out = upstream_headers(&incoming, 80, false, None);
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert!(out.get("x-hop").is_none());
        assert!(out.get(header::CONNECTION).is_none());
        assert_eq!(out.get("x-app").unwrap(), "2");
        assert_eq!(out.get("x-forwarded-host").unwrap(), "h:1");

        let mut app_auth = HeaderMap::new();
        app_auth.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app-token"),
        );
        let out = upstream_headers(&app_auth, 80, false, None);
        assert_eq!(out.get(header::AUTHORIZATION).unwrap(), "Bearer app-token");
    }

    #[test]
    fn validates_port_lists() {
        let p = |port| ExposedPort {
            port,
            visibility: PortVisibility::Private,
        };
        assert!(validate_ports(&[p(1), p(65535)]).is_ok());
        let e = validate_ports(&[p(0)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidValue);
        assert!(e.message.contains("port 0"));
        assert!(validate_ports(&[p(70000)])
            .unwrap_err()
            .message
            .contains("70000"));
        assert!(validate_ports(&[p(80), p(80)])
            .unwrap_err()
            .message
            .contains("twice"));
    }
}
