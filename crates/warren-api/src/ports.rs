//! Port types: what a sandbox exposes and what listens inside it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who may reach an exposed port through the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortVisibility {
    /// Needs an API key or a sandbox token with the `ports` scope.
    #[default]
    Private,
    /// Anyone who can reach the daemon's TCP listener.
    Public,
}

/// One exposed port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExposedPort {
    /// TCP port inside the sandbox (1–65535). Kept wide so that a bad value
    /// gets a 422 naming it instead of a parse error.
    pub port: i64,
    /// `private` (default) or `public`.
    #[serde(default)]
    pub visibility: PortVisibility,
}

/// `PUT /v1/sandboxes/{id}/ports`: the whole list of exposed ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetPortsRequest {
    /// Replaces the exposed ports.
    pub ports: Vec<ExposedPort>,
}

/// A socket listening inside the sandbox (read from its `/proc/net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListeningPort {
    /// Port number.
    pub port: u16,
    /// `tcp` or `tcp6`.
    pub protocol: String,
    /// The address it is bound to (`0.0.0.0`, `127.0.0.1`, `::`…).
    pub address: String,
}

/// `GET /v1/sandboxes/{id}/ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortList {
    /// Exposed ports, by port number.
    pub exposed: Vec<ExposedPort>,
    /// TCP sockets listening inside a running sandbox, by port number.
    pub listening: Vec<ListeningPort>,
    /// The proxy URL path prefix for a port: `/v1/sandboxes/{id}/ports/{port}/`.
    pub proxy_path: String,
    /// With `--domain D`: the host name pattern `{port}-{id}.D`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_pattern: Option<String>,
}
