//! Warren's HTTP API: routes (parsing and auth only), the sandbox service that
//! owns state transitions, and the OpenAPI document.

mod access;
mod api_json;
mod attach;
mod auth;
mod error;
mod file_transfer;
mod files;
mod images;
mod lifecycle_state;
mod lifetimes;
mod network;
mod openapi;
mod pools;
mod ports;
mod process_stream;
mod request_log;
mod request_validation;
mod routes;
mod sandbox_events;
mod sandbox_service;
mod snapshots;
mod templates;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use warren_runtime::images::ImageStore;
use warren_runtime::Driver;
use warren_store::Store;

pub use access::{AccessSettings, DEFAULT_CREATES_PER_MINUTE};
pub use api_json::ApiJson;
pub use auth::{bearer_token, Caller, Listener};
pub use error::ApiError;
pub use network::{NetworkSettings, DEFAULT_SUBNET};
pub use openapi::openapi;
pub use ports::PortSettings;
pub use request_validation::{validate_create, validate_exec, ValidatedCreate};
pub use sandbox_service::{
    new_sandbox_id, process_to_api, signal_number, ListFilter, RecoveryReport, SandboxService,
    GONE_AFTER_RESTART,
};

/// Largest accepted request body (16 MiB); larger bodies get 413.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// Where `warren serve` listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Data directory (database, sandbox files).
    pub data_dir: PathBuf,
    /// Unix socket for local clients; no auth, mode 0600.
    pub socket_path: PathBuf,
    /// Optional TCP address; requests there need `Authorization: Bearer <key>`.
    pub listen: Option<SocketAddr>,
    /// Disk bound (MiB) for sandboxes whose request gives no `diskMb`;
    /// `None` leaves them unbounded.
    pub default_disk_mb: Option<u64>,
    /// The host uid/gid range sandboxes map their ids to (first id, count);
    /// image layers are unpacked with owners shifted into it.
    pub id_map: (u32, u32),
    /// Largest file or tar upload in MiB (`None`: 4096).
    pub max_upload_mb: Option<u64>,
    /// Sandbox networking.
    pub network: NetworkSettings,
    /// Port proxy.
    pub ports: PortSettings,
    /// Tokens, secrets, rate limits.
    pub access: AccessSettings,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The sandbox service.
    pub service: Arc<SandboxService>,
    /// The store (for API keys).
    pub store: Store,
}

impl AppState {
    /// State with a new service over `store` and `driver`.
    pub fn new(store: Store, driver: Arc<dyn Driver>) -> Self {
        Self::with_default_disk_mb(store, driver, None)
    }

    /// State whose service bounds the disk of sandboxes that ask for no bound.
    pub fn with_default_disk_mb(
        store: Store,
        driver: Arc<dyn Driver>,
        default_disk_mb: Option<u64>,
    ) -> Self {
        Self::with_service(
            store.clone(),
            SandboxService::new(store, driver).with_default_disk_mb(default_disk_mb),
        )
    }

    /// State around a configured service.
    pub fn with_service(store: Store, service: SandboxService) -> Self {
        Self {
            service: Arc::new(service),
            store,
        }
    }
}

fn build_router(state: AppState, listener: Listener) -> Router {
    let mut router = Router::new()
        .route(
            "/v1/sandboxes",
            post(routes::create_sandbox).get(routes::list_sandboxes),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(routes::get_sandbox)
                .delete(routes::delete_sandbox)
                .patch(lifetimes::update_sandbox),
        )
        .route("/v1/sandboxes/{id}/pause", post(routes::pause_sandbox))
        .route("/v1/sandboxes/{id}/resume", post(routes::resume_sandbox))
        .route("/v1/sandboxes/{id}/exec", post(routes::exec_in_sandbox))
        .route(
            "/v1/sandboxes/{id}/processes",
            post(routes::start_process).get(routes::list_processes),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}",
            get(routes::get_process),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/output",
            get(routes::process_output),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/stdin",
            post(routes::process_stdin),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/signal",
            post(routes::signal_process),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/resize",
            post(routes::resize_process),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/attach",
            get(routes::attach_process),
        )
        .merge(files::router())
        .merge(images::router())
        .merge(snapshots::router())
        .merge(lifetimes::router())
        .merge(templates::router())
        .merge(pools::router())
        .merge(network::router())
        .merge(ports::router())
        .merge(access::router())
        .route("/healthz", get(routes::healthz))
        .route("/openapi.json", get(routes::openapi_json))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            lifetimes::track_activity,
        ))
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn(request_log::catch_panic));
    router = router.layer(middleware::from_fn_with_state(
        (state.clone(), listener),
        auth::authenticate,
    ));
    let router = ports::with_host_routing(router, state);
    router.layer(middleware::from_fn(request_log::log_request))
}

/// The API without authentication (served on the unix socket).
pub fn router(state: AppState) -> Router {
    build_router(state, Listener::Unix)
}

/// The API behind bearer-key authentication (served on TCP).
pub fn authenticated_router(state: AppState) -> Router {
    build_router(state, Listener::Tcp)
}

/// Binds the unix socket so that it is never reachable with a wider mode:
/// bind inside a private 0700 directory, chmod 0600, then rename into place.
async fn bind_unix_socket(socket_path: &Path) -> anyhow::Result<UnixListener> {
    let parent = socket_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.exists() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating socket directory {}", parent.display()))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting mode of {}", parent.display()))?;
    }
    if socket_path.exists() {
        if tokio::net::UnixStream::connect(socket_path).await.is_ok() {
            anyhow::bail!(
                "another daemon is listening on {}; stop it first",
                socket_path.display()
            );
        }
        std::fs::remove_file(socket_path)
            .with_context(|| format!("removing stale socket {}", socket_path.display()))?;
    }
    let file_name = socket_path
        .file_name()
        .with_context(|| format!("socket path {} has no file name", socket_path.display()))?;
    let staging = parent.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    let staged_socket = staging.join("sock");
    let bound = (|| -> anyhow::Result<UnixListener> {
        let listener = UnixListener::bind(&staged_socket)
            .with_context(|| format!("binding {}", staged_socket.display()))?;
        std::fs::set_permissions(&staged_socket, std::fs::Permissions::from_mode(0o600))
            .context("setting socket mode 0600")?;
        std::fs::rename(&staged_socket, socket_path)
            .with_context(|| format!("moving socket to {}", socket_path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Runs the daemon's API until `shutdown` completes: recovers sandboxes left by
/// an earlier run, then serves on the unix socket (no auth) and, if configured,
/// on TCP (bearer auth).
pub async fn serve(
    config: ServerConfig,
    store: Store,
    driver: Arc<dyn Driver>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_drivers(config, store, driver, Vec::new(), shutdown).await
}

/// [`serve`] with more drivers than the default one (`driver` at create
/// picks one by name, for example `gvisor`).
pub async fn serve_with_drivers(
    config: ServerConfig,
    store: Store,
    driver: Arc<dyn Driver>,
    extra_drivers: Vec<Arc<dyn Driver>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let images_dir = config.data_dir.join("images");
    let images = ImageStore::open(&images_dir, config.id_map.0, config.id_map.1)
        .with_context(|| format!("opening the image store in {}", images_dir.display()))?
        .with_sandboxes_dir(config.data_dir.join("sandboxes"))
        .with_snapshots_dir(config.data_dir.join("snapshots"));
    match images.sweep() {
        Ok(swept) if swept.layers_removed > 0 => tracing::info!(
            layers = swept.layers_removed,
            bytes = swept.bytes_freed,
            "removed image layers nothing uses any more"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep unused image layers"),
    }
    let service = SandboxService::new(store.clone(), driver)
        .with_default_disk_mb(config.default_disk_mb)
        .with_images(Arc::new(images));
    let service = extra_drivers
        .into_iter()
        .fold(service, SandboxService::with_driver);
    let mut service = match config.max_upload_mb {
        Some(mb) => service.with_max_upload_bytes(mb.saturating_mul(1024 * 1024)),
        None => service,
    };
    service
        .start_access(&config.data_dir, &config.access)
        .await
        .context("setting up tokens and secrets")?;
    service
        .start_network(&config.data_dir, &config.network)
        .await
        .context("setting up sandbox networking")?;
    service.set_port_settings(&config.ports);
    let state = AppState::with_service(store, service);
    state
        .service
        .recover()
        .await
        .context("recovering sandboxes from the previous run")?;
    // Builds cut short and warm pools, before anything is served.
    if let Err(e) = state.service.recover_templates().await {
        tracing::warn!(error = %e, "could not recover interrupted template builds");
    }
    if let Err(e) = state.service.recover_pools().await {
        tracing::warn!(error = %e, "could not recover the warm pools");
    }

    let unix = bind_unix_socket(&config.socket_path).await?;
    tracing::info!(socket = %config.socket_path.display(), data_dir = %config.data_dir.display(), "listening on unix socket");
    let tcp = match config.listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding TCP {addr}"))?;
            tracing::info!(%addr, "listening on TCP (API key required)");
            Some(listener)
        }
        None => None,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let timeouts = lifetimes::spawn_timeout_task(Arc::clone(&state.service), stop_rx.clone());
    let service = Arc::clone(&state.service);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        // A build's NDJSON stream would hold the graceful shutdown.
        service.lifecycle.builds.cancel();
        // Open event streams would hold the graceful shutdown.
        service.lifecycle.events.close();
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let pool_refill = pools::start_refill(Arc::clone(&state.service), stop_rx.clone());
    let builds = Arc::clone(&state.service);

    let unix_server =
        axum::serve(unix, router(state.clone())).with_graceful_shutdown(stopped(stop_rx.clone()));
    let result = match tcp {
        Some(tcp) => {
            let tcp_server = axum::serve(
                tcp,
                authenticated_router(state).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopped(stop_rx));
            tokio::try_join!(
                async { unix_server.await.context("unix socket server") },
                async { tcp_server.await.context("TCP server") },
            )
            .map(|_| ())
        }
        None => unix_server.await.context("unix socket server"),
    };
    // The refill task saw the stop too; let a create in progress finish.
    let _ = pool_refill.await;
    builds.lifecycle.builds.stop().await;
    let _ = std::fs::remove_file(&config.socket_path);
    timeouts.abort();
    tracing::info!("server stopped");
    result
}
