//! A sandbox's egress policy: reading and changing it.

use hyper::Method;
use warren_api::{NetworkInfo, NetworkMode, NetworkPolicy};

use crate::{routes, Client, ClientError};

/// `/v1/sandboxes/{id}/network`.
fn network_route(id: &str) -> String {
    format!("{}/network", routes::sandbox(id))
}

impl Client {
    /// `GET /v1/sandboxes/{id}/network`: the sandbox's mode, its `allowOut`
    /// and `denyOut` lists, and its address while it has one.
    pub async fn network(&self, id: &str) -> Result<NetworkInfo, ClientError> {
        self.call(Method::GET, &network_route(id), None::<&()>)
            .await
    }

    /// `PATCH /v1/sandboxes/{id}/network`: changes the sandbox's egress
    /// policy. A `mode` of `None` keeps the current mode; a non-empty
    /// `allow_out` or `deny_out` replaces that list, an empty one keeps it
    /// (use [`Client::patch_network`] to clear a list). On a running or
    /// paused sandbox the change takes effect at once, existing connections
    /// included; on a suspended or stopped one it is stored and applied
    /// when the sandbox runs again.
    pub async fn update_network(
        &self,
        id: &str,
        policy: &NetworkPolicy,
    ) -> Result<NetworkInfo, ClientError> {
        let non_empty = |list: &[String]| (!list.is_empty()).then(|| list.to_vec());
        self.patch_network(
            id,
            policy.mode,
            non_empty(&policy.allow_out).as_deref(),
            non_empty(&policy.deny_out).as_deref(),
        )
        .await
    }

    /// `PATCH /v1/sandboxes/{id}/network` with each part explicit: `None`
    /// keeps the current mode or list, `Some` replaces it (`Some(&[])`
    /// clears a list).
    pub async fn patch_network(
        &self,
        id: &str,
        mode: Option<NetworkMode>,
        allow_out: Option<&[String]>,
        deny_out: Option<&[String]>,
    ) -> Result<NetworkInfo, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(mode) = mode {
            body.insert("mode".into(), mode.as_str().into());
        }
        if let Some(list) = allow_out {
            body.insert("allowOut".into(), list.into());
        }
        if let Some(list) = deny_out {
            body.insert("denyOut".into(), list.into());
        }
        self.call(
            Method::PATCH,
            &network_route(id),
            Some(&serde_json::Value::Object(body)),
        )
        .await
    }
}
