//! Sandbox networking in the service: the egress policy at create, on a
//! running sandbox (`GET/PATCH /v1/sandboxes/{id}/network`), across suspend,
//! resume, restart and delete. The kernel side (veth, nftables, the DNS
//! resolver) is `warren_runtime::network`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warren_api::{ErrorBody, ErrorCode, NetworkInfo, NetworkMode, NetworkPolicy, SandboxState};
use warren_runtime::network::dns::upstreams_from_resolv_conf;
use warren_runtime::network::{
    compile, CompiledPolicy, HostNetwork, Ipv4Net, NetMode, NetworkConfig,
};
use warren_runtime::{Driver, RuntimeInfo};
use warren_store::SandboxRecord;

use crate::api_json::ApiJson;
use crate::error::ApiError;
use crate::sandbox_service::{parse_runtime, SandboxService};
use crate::AppState;

/// The subnet sandbox addresses come from when `--net-subnet` is not given.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";

/// Daemon-wide network settings (`warren serve` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// Mode of sandboxes whose create request names none (`None`: `internet`
    /// when the host can network sandboxes, else `none`).
    pub default_mode: Option<NetworkMode>,
    /// IPv4 range sandbox addresses come from, e.g. `10.213.0.0/16`
    /// (`None`: the built-in default).
    pub subnet: Option<String>,
    /// Upstream DNS servers of Warren's resolver (`None`: the host's
    /// /etc/resolv.conf).
    pub dns_upstream: Vec<std::net::SocketAddr>,
}

/// The service's network state (the runtime's network manager, once started).
pub(crate) struct NetState {
    /// The host side of networking; `None` when it could not start (or was
    /// never started, as in unit tests).
    host: Option<Arc<HostNetwork>>,
    /// Mode of sandboxes created without one (on drivers with Warren's
    /// networking).
    default_mode: NetworkMode,
    /// Why sandboxes cannot be networked (`host` is `None`).
    unavailable: String,
}

impl Default for NetState {
    fn default() -> Self {
        Self {
            host: None,
            default_mode: NetworkMode::None,
            unavailable: "sandbox networking was not started".to_owned(),
        }
    }
}

/// The runtime's mode for an API mode.
fn net_mode(mode: NetworkMode) -> NetMode {
    match mode {
        NetworkMode::None => NetMode::None,
        NetworkMode::Allowlist => NetMode::Allowlist,
        NetworkMode::Internet => NetMode::Internet,
    }
}

/// Checks a policy: 422 `invalid_value` naming the first bad entry.
fn compiled(info: &NetworkInfo) -> Result<CompiledPolicy, ApiError> {
    compile(net_mode(info.mode), &info.allow_out, &info.deny_out)
        .map_err(|e| ApiError::invalid_value(e.to_string()))
}

/// The policy stored for a sandbox (legacy records without one: `none`).
fn stored_policy(record: &SandboxRecord) -> NetworkInfo {
    record.lifecycle.network.clone().unwrap_or(NetworkInfo {
        mode: NetworkMode::None,
        ..Default::default()
    })
}

/// Whether a driver runs sandboxes in a network namespace Warren configures
/// (the namespace driver), rather than with its own network stack (gVisor,
/// which answers `None` whatever the sandbox).
fn driver_has_netns(driver: &dyn Driver) -> bool {
    let probe = RuntimeInfo {
        pid: 1,
        start_time: 0,
        agent_socket: Default::default(),
    };
    driver.network_namespace_pid(&probe).is_some()
}

/// This daemon's instance name: the first 8 hex digits of the SHA-256 of
/// its canonical data directory (names its nftables table).
fn instance_name(data_dir: &Path) -> String {
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(digest).chars().take(8).collect()
}

/// A change to a sandbox's policy (`PATCH /v1/sandboxes/{id}/network`):
/// what is absent stays as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NetworkChange {
    #[serde(default)]
    mode: Option<NetworkMode>,
    #[serde(default)]
    allow_out: Option<Vec<String>>,
    #[serde(default)]
    deny_out: Option<Vec<String>>,
}

impl SandboxService {
    /// Starts the host side of networking (called once by `serve`). A host
    /// that cannot network sandboxes is not an error: the daemon logs why,
    /// and sandboxes default to (and may only use) `none`.
    pub(crate) async fn start_network(
        &mut self,
        data_dir: &Path,
        settings: &NetworkSettings,
    ) -> anyhow::Result<()> {
        let subnet_text = settings.subnet.as_deref().unwrap_or(DEFAULT_SUBNET);
        let subnet: Ipv4Net = subnet_text
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid sandbox subnet: {e}"))?;
        if subnet.prefix > 29 {
            anyhow::bail!("sandbox subnet {subnet} is too small (at most /29)");
        }
        let dns_upstream = if settings.dns_upstream.is_empty() {
            let text = tokio::fs::read_to_string("/etc/resolv.conf")
                .await
                .unwrap_or_default();
            upstreams_from_resolv_conf(&text)
        } else {
            settings.dns_upstream.clone()
        };
        if dns_upstream.is_empty() {
            tracing::warn!("no upstream DNS server (none given, none in /etc/resolv.conf): sandboxes will not resolve names");
        }
        let config = NetworkConfig {
            subnet,
            dns_upstream,
            instance: instance_name(data_dir),
            state_dir: data_dir.join("network"),
        };
        let instance = config.instance.clone();
        let state_dir = config.state_dir.clone();
        match HostNetwork::start(config).await {
            Ok(host) => {
                // Tells operators (and the test harness) which nftables
                // table is this daemon's; it outlives the daemon on purpose.
                if let Err(e) = tokio::fs::write(
                    state_dir.join("nft-table"),
                    format!("inet {}\n", host.table()),
                )
                .await
                {
                    tracing::warn!(error = %e, "could not record the nftables table name");
                }
                self.net = NetState {
                    host: Some(host),
                    default_mode: settings.default_mode.unwrap_or(NetworkMode::Internet),
                    unavailable: String::new(),
                };
                tracing::info!(
                    %subnet,
                    %instance,
                    default_mode = self.net.default_mode.as_str(),
                    "sandbox networking ready"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "sandbox networking unavailable; sandboxes get network mode none");
                self.net = NetState {
                    host: None,
                    default_mode: NetworkMode::None,
                    unavailable: e.to_string(),
                };
            }
        }
        Ok(())
    }

    /// 409 `capability_unsupported` unless a sandbox of `driver` can have
    /// network mode `mode`.
    fn check_mode_supported(&self, driver: &dyn Driver, mode: NetworkMode) -> Result<(), ApiError> {
        if mode == NetworkMode::None {
            return Ok(());
        }
        if !driver_has_netns(driver) {
            return Err(ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!(
                    "sandboxes of the {} driver have no network (mode none only), not {}",
                    driver.name(),
                    mode.as_str()
                ),
            ));
        }
        if self.net.host.is_none() {
            return Err(ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!(
                    "network mode {} is unavailable: {}",
                    mode.as_str(),
                    self.net.unavailable
                ),
            ));
        }
        Ok(())
    }

    /// The policy a create request asks for, validated (422 naming a bad
    /// entry) and with the daemon's default mode filled in.
    pub(crate) fn network_for_create(
        &self,
        driver: &str,
        requested: Option<&NetworkPolicy>,
    ) -> Result<Option<NetworkInfo>, ApiError> {
        let driver = self.driver_named(Some(driver))?;
        let default_mode = if driver_has_netns(driver.as_ref()) {
            self.net.default_mode
        } else {
            NetworkMode::None
        };
        let info = NetworkInfo {
            mode: requested.and_then(|p| p.mode).unwrap_or(default_mode),
            allow_out: requested.map(|p| p.allow_out.clone()).unwrap_or_default(),
            deny_out: requested.map(|p| p.deny_out.clone()).unwrap_or_default(),
            address: None,
        };
        compiled(&info)?;
        self.check_mode_supported(driver.as_ref(), info.mode)?;
        Ok(Some(info))
    }

    /// Applies `policy` to the running sandbox `record` (whose processes
    /// `info` describes) and stores the address it got. `none` removes its
    /// interface.
    async fn apply_policy(
        &self,
        record: &SandboxRecord,
        info: &RuntimeInfo,
        policy: &NetworkInfo,
    ) -> Result<Option<Ipv4Addr>, ApiError> {
        let id = record.id.as_str();
        let driver = self.driver_of(record)?;
        let Some(pid) = driver.network_namespace_pid(info) else {
            return Ok(None);
        };
        // A recorded pid whose processes died may have been reused by a
        // host process: never configure its namespace.
        if !driver.is_alive(id, info) {
            return Err(ApiError::invalid_state(format!(
                "sandbox {id} is not running any more (its processes are gone); its network cannot change"
            )));
        }
        let compiled = compiled(policy)?;
        let Some(host) = &self.net.host else {
            if policy.mode == NetworkMode::None {
                return Ok(None);
            }
            return Err(ApiError::new(
                ErrorCode::CapabilityUnsupported,
                format!(
                    "sandbox {id} asks for network mode {}, which is unavailable: {}",
                    policy.mode.as_str(),
                    self.net.unavailable
                ),
            ));
        };
        host.apply(id, pid, &compiled).await.map_err(|e| {
            ApiError::internal(format!(
                "setting up the network of sandbox {id} failed: {e}"
            ))
        })
    }

    /// Stores the sandbox's policy with `address` (re-reading the record so
    /// that nothing else in its lifecycle is overwritten).
    async fn store_network(
        &self,
        id: &str,
        policy: &NetworkInfo,
        address: Option<Ipv4Addr>,
    ) -> Result<NetworkInfo, ApiError> {
        let mut lifecycle = self.record(id).await?.lifecycle;
        let stored = NetworkInfo {
            address: address.map(|a| a.to_string()),
            ..policy.clone()
        };
        lifecycle.network = Some(stored.clone());
        self.store.set_lifecycle(id, &lifecycle).await?;
        Ok(stored)
    }

    /// Gives a sandbox whose processes just started (create, resume from
    /// suspend) the network its record asks for, and records its address.
    pub(crate) async fn network_attach(
        &self,
        record: &SandboxRecord,
        info: &RuntimeInfo,
    ) -> Result<(), ApiError> {
        let policy = stored_policy(record);
        if policy.mode == NetworkMode::None {
            return Ok(());
        }
        let address = self.apply_policy(record, info, &policy).await?;
        if let Err(e) = self.store_network(&record.id, &policy, address).await {
            // The caller stops the sandbox; its rules must not outlive it.
            if let Some(host) = &self.net.host {
                if let Err(detach) = host.detach(&record.id).await {
                    tracing::warn!(sandbox = %record.id, error = %detach, "could not remove the network of a sandbox whose address was not recorded");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes a sandbox's network (delete, suspend). Never fails the caller:
    /// problems are logged.
    pub(crate) async fn network_detach(&self, record: &SandboxRecord) {
        let id = record.id.as_str();
        if let Some(host) = &self.net.host {
            if let Err(e) = host.detach(id).await {
                tracing::warn!(sandbox = %id, error = %e, "could not remove the sandbox's network");
            }
        }
        let had_address = record
            .lifecycle
            .network
            .as_ref()
            .is_some_and(|n| n.address.is_some());
        if had_address {
            if let Err(e) = self.store_network(id, &stored_policy(record), None).await {
                tracing::warn!(sandbox = %id, error = %e, "could not clear the sandbox's address");
            }
        }
    }

    /// After a daemon restart: re-applies the firewall rules of an adopted
    /// running sandbox.
    pub(crate) async fn network_recover(&self, record: &SandboxRecord, info: &RuntimeInfo) {
        let policy = stored_policy(record);
        if policy.mode == NetworkMode::None {
            return;
        }
        match self.apply_policy(record, info, &policy).await {
            Ok(address) => {
                if address.map(|a| a.to_string()) != policy.address {
                    if let Err(e) = self.store_network(&record.id, &policy, address).await {
                        tracing::warn!(sandbox = %record.id, error = %e.message, "could not record the sandbox's address");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sandbox = %record.id, error = %e.message, "could not restore the sandbox's network; it has none until its policy is set again");
            }
        }
    }

    /// Re-applies a running sandbox's recorded policy after a change to it
    /// failed half-way (best effort: problems are logged).
    async fn restore_policy(&self, record: &SandboxRecord, info: &RuntimeInfo, old: &NetworkInfo) {
        match self.apply_policy(record, info, old).await {
            Ok(address) => {
                if address.map(|a| a.to_string()) != old.address {
                    if let Err(e) = self.store_network(&record.id, old, address).await {
                        tracing::warn!(sandbox = %record.id, error = %e.message, "could not record the sandbox's address after restoring its network");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sandbox = %record.id, error = %e.message, "could not restore the sandbox's previous network after a failed change; set its policy again");
            }
        }
    }

    /// A sandbox's policy and address (`GET /v1/sandboxes/{id}/network`).
    pub async fn network_of(&self, id: &str) -> Result<NetworkInfo, ApiError> {
        Ok(self.record(id).await?.to_api().network)
    }

    /// Changes a sandbox's policy (`PATCH /v1/sandboxes/{id}/network`).
    /// Running and paused sandboxes get it at once (existing connections
    /// included); suspended and stopped ones keep it for when they start.
    pub(crate) async fn update_network(
        &self,
        id: &str,
        change: NetworkChange,
    ) -> Result<NetworkInfo, ApiError> {
        if change.mode.is_none() && change.allow_out.is_none() && change.deny_out.is_none() {
            return Err(ApiError::invalid_value(
                "nothing to change: give mode, allowOut or denyOut",
            ));
        }
        let _guard = self.lock(id).await;
        let record = self.record(id).await?;
        let current = stored_policy(&record);
        let policy = NetworkInfo {
            mode: change.mode.unwrap_or(current.mode),
            allow_out: change
                .allow_out
                .unwrap_or_else(|| current.allow_out.clone()),
            deny_out: change.deny_out.unwrap_or_else(|| current.deny_out.clone()),
            address: None,
        };
        compiled(&policy)?;
        let driver = Arc::clone(self.driver_of(&record)?);
        self.check_mode_supported(driver.as_ref(), policy.mode)?;
        let stored = match record.state {
            SandboxState::Running | SandboxState::Paused => {
                let info = parse_runtime(&record).ok_or_else(|| {
                    ApiError::internal(format!("sandbox {id} has no runtime information"))
                })?;
                let applied = match self.apply_policy(&record, &info, &policy).await {
                    Ok(address) => self.store_network(id, &policy, address).await,
                    Err(e) => Err(e),
                };
                match applied {
                    Ok(stored) => stored,
                    Err(e) => {
                        // The runtime may have applied (part of) the new
                        // rules: put the old ones back so that the firewall
                        // and the record agree.
                        if e.code == ErrorCode::Internal {
                            self.restore_policy(&record, &info, &current).await;
                        }
                        return Err(e);
                    }
                }
            }
            SandboxState::Suspended | SandboxState::Stopped => {
                self.store_network(id, &policy, None).await?
            }
            other => {
                return Err(ApiError::invalid_state(format!(
                    "sandbox {id} is {}; only a running, paused, suspended or stopped sandbox's network can change",
                    other.as_str()
                )))
            }
        };
        let event = serde_json::json!({
            "mode": stored.mode.as_str(),
            "allowOut": stored.allow_out,
            "denyOut": stored.deny_out,
        });
        self.record_event(id, "network_changed", event).await?;
        tracing::info!(sandbox = %id, mode = stored.mode.as_str(), "sandbox network changed");
        Ok(stored)
    }
}

/// A sandbox's egress policy and address.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/network",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The mode, allowOut and denyOut as given, and the sandbox's IPv4 address while it has an interface", body = NetworkInfo),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    )
)]
pub(crate) async fn get_network(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<NetworkInfo>, ApiError> {
    Ok(Json(state.service.network_of(&id).await?))
}

/// Change a sandbox's egress policy.
///
/// Each field present replaces that part of the policy; an absent field
/// keeps it (`"allowOut": []` clears the list, an absent `mode` keeps the
/// mode). On a running or paused sandbox the new rules apply at once, to
/// existing connections too; a suspended or stopped sandbox keeps the policy
/// and gets it when it starts again. Records a `network_changed` event with
/// the new mode and lists.
#[utoipa::path(
    patch,
    path = "/v1/sandboxes/{id}/network",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = NetworkPolicy,
    responses(
        (status = 200, description = "The policy now in force and the sandbox's address", body = NetworkInfo),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is creating or failed, or its processes are gone (invalid_state), or the mode is unavailable for its driver or on this host (capability_unsupported)", body = ErrorBody),
        (status = 422, description = "A malformed CIDR, address or domain (the message names the entry), or an empty change", body = ErrorBody),
    )
)]
pub(crate) async fn update_network(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    ApiJson(change): ApiJson<NetworkChange>,
) -> Result<Json<NetworkInfo>, ApiError> {
    Ok(Json(state.service.update_network(&id, change).await?))
}

/// Routes of this module.
pub(crate) fn router() -> axum::Router<crate::AppState> {
    axum::Router::new().route(
        "/v1/sandboxes/{id}/network",
        get(get_network).patch(update_network),
    )
}

/// OpenAPI paths and schemas of this module (merged into the document).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_network, update_network),
    components(schemas(NetworkPolicy, NetworkInfo, NetworkMode))
)]
pub(crate) struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_is_eight_hex_digits_and_depends_on_the_dir() {
        let a = instance_name(Path::new("/nonexistent/a"));
        let b = instance_name(Path::new("/nonexistent/b"));
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name() {
        let change: NetworkChange = serde_json::from_str(r#"{"allowOut": []}"#).unwrap();
        assert_eq!(change.mode, None);
        assert_eq!(change.allow_out, Some(Vec::new()));
        assert_eq!(change.deny_out, None);
        assert!(serde_json::from_str::<NetworkChange>(r#"{"allow": []}"#).is_err());
    }
}
