//! Network types: a sandbox's egress policy and its address.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How much of the network a sandbox reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only: no interface but `lo`.
    None,
    /// Only the addresses and names in `allowOut` (minus `denyOut`).
    Allowlist,
    /// Outbound traffic allowed, except what `denyOut` names and what is
    /// always blocked (the host, loopback, link-local and metadata
    /// addresses, private ranges unless allowed).
    #[default]
    Internet,
}

impl NetworkMode {
    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Allowlist => "allowlist",
            Self::Internet => "internet",
        }
    }
}

/// A sandbox's egress policy, as given at create (`network`) and to
/// `PATCH /v1/sandboxes/{id}/network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    /// The mode (default: the daemon's default, `internet` unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<NetworkMode>,
    /// CIDRs (`203.0.113.0/24`), addresses (`198.51.100.7`) and domain names
    /// (`pypi.org`, `*.example.com`) the sandbox may reach. In `internet`
    /// mode, entries here re-allow private ranges that are otherwise blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_out: Vec<String>,
    /// CIDRs and addresses the sandbox may not reach. A deny wins over a CIDR
    /// allow; a domain allow wins for the addresses its name resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_out: Vec<String>,
}

/// A sandbox's network as reported by the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInfo {
    /// The mode in force.
    pub mode: NetworkMode,
    /// Allowed CIDRs, addresses and domains, as given.
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// Denied CIDRs and addresses, as given.
    #[serde(default)]
    pub deny_out: Vec<String>,
    /// The sandbox's IPv4 address while it has a network interface
    /// (`none` mode and stopped sandboxes have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}
