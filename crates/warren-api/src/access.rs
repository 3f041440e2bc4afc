//! Access types: API key scopes, per-sandbox tokens and secrets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an API key may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub enum ApiKeyScope {
    /// Everything, including secrets, images, templates and pools.
    #[serde(rename = "admin")]
    Admin,
    /// Create, change and delete sandboxes and their snapshots; read the rest.
    #[serde(rename = "sandboxes:write")]
    SandboxesWrite,
    /// Read sandboxes, snapshots, images, templates and pools.
    #[serde(rename = "sandboxes:read")]
    SandboxesRead,
}

impl ApiKeyScope {
    /// The name used in JSON, the store and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::SandboxesWrite => "sandboxes:write",
            Self::SandboxesRead => "sandboxes:read",
        }
    }

    /// Parses [`Self::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "admin" => Some(Self::Admin),
            "sandboxes:write" => Some(Self::SandboxesWrite),
            "sandboxes:read" => Some(Self::SandboxesRead),
            _ => None,
        }
    }
}

/// What a sandbox token allows, on its one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Read the sandbox, its files, processes, output, events and ports.
    Read,
    /// `read`, plus run commands, manage processes and write files.
    Exec,
    /// Reach its ports through the proxy and the TCP tunnel (and list them).
    Ports,
}

impl TokenScope {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Exec => "exec",
            Self::Ports => "ports",
        }
    }
}

/// Longest token lifetime in seconds (one day).
pub const MAX_TOKEN_TTL_SECS: i64 = 24 * 3600;
/// Token lifetime when the request gives none (one hour).
pub const DEFAULT_TOKEN_TTL_SECS: i64 = 3600;

/// `POST /v1/sandboxes/{id}/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token allows.
    pub scope: TokenScope,
    /// Lifetime in seconds, 1..=86400 (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<i64>,
}

/// A minted sandbox token. The token is shown only here (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxToken {
    /// Send as `Authorization: Bearer <token>`, or as `?token=` on port-proxy
    /// and event-stream routes.
    pub token: String,
    /// The sandbox it is valid for.
    pub sandbox_id: String,
    /// What it allows.
    pub scope: TokenScope,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// `POST /v1/secrets`: creates or replaces a secret (its `Debug` hides the
/// value).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSecretRequest {
    /// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
    pub name: String,
    /// The value (at most 64 KiB); never returned.
    pub value: String,
}

impl std::fmt::Debug for SandboxToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxToken")
            .field("token", &"<redacted>")
            .field("sandbox_id", &self.sandbox_id)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl std::fmt::Debug for CreateSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSecretRequest")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// A secret as listed: its name, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// When it was first set.
    pub created_at: DateTime<Utc>,
    /// When its value last changed.
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/secrets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretList {
    /// Secrets by name.
    pub secrets: Vec<SecretInfo>,
}

#[cfg(test)]
mod tests {
    use super::{CreateSecretRequest, SandboxToken, TokenScope};

    #[test]
    fn debug_hides_secret_values_and_tokens() {
        let secret = CreateSecretRequest {
            name: "OPENAI_API_KEY".into(),
            value: "sk-very-secret-value".into(),
        };
        let shown = format!("{secret:?}");
        assert!(!shown.contains("sk-very-secret-value"), "{shown}");
        assert!(shown.contains("OPENAI_API_KEY"), "{shown}");

        let token = SandboxToken {
            token: "wst_payload.signature".into(),
            sandbox_id: "sb_1".into(),
            scope: TokenScope::Read,
            expires_at: chrono::DateTime::UNIX_EPOCH,
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("wst_payload"), "{shown}");
        assert!(!shown.contains("signature"), "{shown}");
        assert!(shown.contains("sb_1"), "{shown}");
        let shown = format!("{token:#?}");
        assert!(!shown.contains("wst_payload"), "{shown}");
    }
}
