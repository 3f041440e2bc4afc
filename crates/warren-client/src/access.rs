//! Access: per-sandbox tokens and secrets.
//!
//! A sandbox token (`wst_…`) is sent exactly like an API key, as
//! `Authorization: Bearer …`: a client made with [`Client::with_token`] is
//! held to the token's sandbox and scope on every listener.

use hyper::Method;
use warren_api::{
    CreateSecretRequest, CreateTokenRequest, SandboxToken, SecretInfo, SecretList, TokenScope,
};

use crate::routes::encode;
use crate::{Client, ClientError};

/// `GET/POST /v1/secrets`.
const SECRETS: &str = "/v1/secrets";

impl Client {
    /// Sends this sandbox token (`wst_…`) instead of an API key.
    pub fn with_token(self, token: impl Into<String>) -> Client {
        self.with_api_key(Some(token.into()))
    }

    /// `POST /v1/sandboxes/{id}/tokens`: mints a token for one sandbox with
    /// `scope`, valid for `ttl_secs` seconds (1..=86400; `None`: one hour).
    /// Needs an API key with `sandboxes:write` (or the local socket); a token
    /// cannot mint tokens.
    pub async fn create_token(
        &self,
        id: &str,
        scope: TokenScope,
        ttl_secs: Option<i64>,
    ) -> Result<SandboxToken, ClientError> {
        let route = format!("/v1/sandboxes/{}/tokens", encode(id));
        let req = CreateTokenRequest { scope, ttl_secs };
        self.call(Method::POST, &route, Some(&req)).await
    }

    /// `POST /v1/secrets`: creates the secret `name` or replaces its value.
    /// The value is never returned by any call.
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<SecretInfo, ClientError> {
        let req = CreateSecretRequest {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        self.call(Method::POST, SECRETS, Some(&req)).await
    }

    /// `GET /v1/secrets`: the secrets' names and times, by name.
    pub async fn secrets(&self) -> Result<Vec<SecretInfo>, ClientError> {
        let list: SecretList = self.call(Method::GET, SECRETS, None::<&()>).await?;
        Ok(list.secrets)
    }

    /// `DELETE /v1/secrets/{name}`: [`ClientError::is_not_found`] when there
    /// is no such secret. Running sandboxes keep the value they were given.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        let route = format!("{SECRETS}/{}", encode(name));
        self.send(Method::DELETE, &route, None::<&()>)
            .await
            .map(drop)
    }
}
