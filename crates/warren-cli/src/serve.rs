//! `warren serve`: the daemon in the foreground.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use warren_runtime::{Driver, NamespaceConfig, NamespaceDriver};
use warren_server::ServerConfig;
use warren_store::Store;

use crate::args::{GlobalArgs, ServeArgs};

/// Runs the daemon until ctrl-c or SIGTERM.
pub async fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let data_dir = &global.data_dir;
    let socket_path = global.socket_path();
    let store = Store::open(data_dir)
        .await
        .with_context(|| format!("cannot open the Warren store in {}", data_dir.display()))?;
    let (driver, id_map) = build_driver(data_dir, args)?;
    tracing::info!(
        data_dir = %data_dir.display(),
        socket = %socket_path.display(),
        listen = ?args.listen,
        driver = driver.name(),
        "starting warren daemon"
    );
    let config = ServerConfig {
        data_dir: data_dir.clone(),
        socket_path,
        listen: args.listen,
        default_disk_mb: args.default_disk_mb,
        id_map,
        max_upload_mb: Some(args.max_upload_mb),
        network: args.network.settings(),
        ports: args.ports.settings(),
        access: args.access.settings(),
    };
    let extra = gvisor_driver(data_dir).into_iter().collect();
    warren_server::serve_with_drivers(config, store, driver, extra, shutdown_signal()).await?;
    tracing::info!("warren daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// The isolation driver the daemon uses: the namespace driver, the default.
/// Also returns the uid/gid range (first id, count) its sandboxes map to.
fn build_driver(
    data_dir: &Path,
    args: &ServeArgs,
) -> anyhow::Result<(Arc<dyn Driver>, (u32, u32))> {
    let mut config = NamespaceConfig::new(data_dir);
    config.cgroup_parent = args.cgroup_parent.clone();
    config.favor_cgroup_dynmods = !args.keep_cgroup_options;
    let id_map = (config.id_map_base, config.id_map_count);
    let driver = NamespaceDriver::new(config).with_context(|| {
        format!(
            "cannot prepare the namespace driver in {}",
            data_dir.display()
        )
    })?;
    Ok((Arc::new(driver), id_map))
}

/// The gVisor driver (`driver: "gvisor"` at create) when `runsc` is in PATH
/// and runs; otherwise logged and skipped.
fn gvisor_driver(data_dir: &Path) -> Option<Arc<dyn Driver>> {
    let config = warren_runtime::GvisorConfig::new(data_dir);
    match warren_runtime::runsc_version(&config.runsc) {
        Ok(version) => tracing::info!(%version, "runsc found; gvisor driver available"),
        Err(e) => {
            tracing::info!(reason = %e, "gvisor driver unavailable");
            return None;
        }
    }
    match warren_runtime::GvisorDriver::new(config) {
        Ok(driver) => Some(Arc::new(driver)),
        Err(e) => {
            tracing::warn!(error = %e, "gvisor driver unavailable");
            None
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters, `info` by default.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for people; the auto-started daemon logs to a file.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Resolves on ctrl-c or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; only ctrl-c stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}
