//! Memory-preserving suspend and forks of gVisor sandboxes, through runsc's
//! checkpoint/restore.
//!
//! gVisor refuses to checkpoint a socket bound to or connected through a
//! host unix socket ("Cannot save endpoint with bound host socket"), and a
//! refused checkpoint stops the container. So before every checkpoint the
//! daemon drops its connections and sends the agent SIGUSR1 (`runsc kill`):
//! the agent closes its listener and every connection and reports
//! `quiesced` in its socket directory. After the restore (or a checkpoint
//! with `--leave-running`) SIGUSR2 makes it bind its socket again.
//!
//! The socket directory is writable by the sandbox: the verdict is read
//! without following links and bounded (see `gvisor::read_verdict`).
//!
//! `--host-uds=create` makes every unix socket a sandbox process binds a
//! host socket, which gVisor cannot checkpoint either: the agent looks for
//! such sockets first and answers `unix PATH`, and the suspend is refused
//! before anything is stopped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::driver::{DriverError, MemoryForking, RuntimeInfo, SandboxSpec, Suspending};
use crate::gvisor::{create_err, read_verdict, GvisorDriver};
use crate::gvisor_bundle::{self as bundle, BundlePaths};

/// How long the agent gets to close its sockets.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(15);

/// The marker the agent writes (see warren-agent `path_listener`).
const QUIESCED_FILE: &str = "quiesced";

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> DriverError {
    move |source| DriverError::Io { context, source }
}

/// A path the sandbox reported, made safe to print: printable ASCII only,
/// at most 200 characters.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, DriverError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DriverError::Io {
            context: what.to_string(),
            source: std::io::Error::other(e),
        })?
}

/// Removes `dir` (recursively) when it exists, off the async threads.
pub(crate) async fn remove_dir(dir: &Path) -> Result<(), DriverError> {
    let dir = dir.to_path_buf();
    blocking("remove directory", move || {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(format!("remove {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    })
    .await
}

/// Mounts the bundle's root off the async threads.
pub(crate) async fn mount_rootfs(
    paths: &BundlePaths,
    lowers: Vec<PathBuf>,
) -> Result<(), DriverError> {
    let paths = paths.clone();
    blocking("mount root", move || bundle::mount_rootfs(&paths, &lowers)).await
}

/// Unmounts the bundle's root off the async threads.
pub(crate) async fn unmount_rootfs(paths: &BundlePaths) -> Result<(), DriverError> {
    let paths = paths.clone();
    blocking("unmount root", move || bundle::unmount_rootfs(&paths)).await
}

impl GvisorDriver {
    async fn signal_agent(&self, id: &str, signal: i32) -> Result<(), DriverError> {
        self.runsc(
            "runsc kill",
            &["kill".into(), id.into(), signal.to_string().into()],
        )
        .await
        .map(|_| ())
    }

    /// Makes the agent let go of every host socket; returns once it did.
    /// When it cannot (a sandbox process holds a bound unix socket, or a
    /// connection stayed open) the agent gets its socket back and nothing
    /// is stopped.
    async fn quiesce(&self, id: &str) -> Result<(), DriverError> {
        self.forget_conn(id);
        let marker = self.paths(id).sock_dir.join(QUIESCED_FILE);
        let _ = std::fs::remove_file(&marker);
        self.signal_agent(id, libc::SIGUSR1).await?;
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        loop {
            let verdict = match read_verdict(&marker) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.reopen(id).await;
                    return Err(e);
                }
            };
            if let Some(text) = verdict {
                if text == "ok" {
                    return Ok(());
                }
                if let Some(path) = text.strip_prefix("unix ") {
                    // The agent kept its listener: only reconnect.
                    let _ = self.signal_agent(id, libc::SIGUSR2).await;
                    let _ = self.connect_agent(id).await;
                    return Err(DriverError::Conflict(format!(
                        "a process holds a bound unix socket ({}): gVisor cannot checkpoint it",
                        printable(path)
                    )));
                }
                // Give the sandbox its socket back before failing.
                let _ = self.reopen(id).await;
                if let Some(n) = text
                    .strip_prefix("busy ")
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    return Err(DriverError::Conflict(format!(
                        "the agent could not close its connections ({n} stayed open)"
                    )));
                }
                return Err(create_err(
                    "quiesce agent",
                    "the agent answered something unexpected",
                ));
            }
            if Instant::now() >= deadline {
                let _ = self.reopen(id).await;
                return Err(create_err(
                    "quiesce agent",
                    "the agent did not close its sockets within 15 s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Has the agent bind its socket again and connects to it.
    async fn reopen(&self, id: &str) -> Result<(), DriverError> {
        // The agent's old socket file: gVisor does not let the sandbox that
        // bound it unlink it (EPERM), so a bind in place would fail. The
        // directory is sandbox-writable; remove_file unlinks a planted
        // symlink itself, never its target.
        let stale = self.paths(id).socket();
        if let Err(e) = std::fs::remove_file(&stale) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(id, error = %e, "remove the agent's old socket");
            }
        }
        self.signal_agent(id, libc::SIGUSR2).await?;
        self.connect_agent(id).await.map(|_| ())
    }

    /// Checkpoints `id` into `image`; `leave_running` keeps it running.
    async fn checkpoint(
        &self,
        id: &str,
        image: &Path,
        leave_running: bool,
    ) -> Result<(), DriverError> {
        let dir = image.to_path_buf();
        blocking("prepare checkpoint", move || {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(io_err(format!("remove {}", dir.display())))?;
            }
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))
        })
        .await?;
        let mut args: Vec<OsString> = vec!["checkpoint".into(), "--image-path".into()];
        args.push(image.as_os_str().to_owned());
        if leave_running {
            args.push("--leave-running".into());
        }
        args.push(id.into());
        self.runsc("runsc checkpoint", &args).await.map(|_| ())
    }

    /// Quiesces and checkpoints `id` (which is then stopped). On failure
    /// the sandbox is left as it was (running, or paused when
    /// `was_paused`), or, when gVisor stopped it anyway,
    /// [`DriverError::Lost`] says so.
    async fn quiesce_and_checkpoint(
        &self,
        id: &str,
        image: &Path,
        was_paused: bool,
    ) -> Result<(), DriverError> {
        let repause = |e: DriverError| async move {
            if was_paused {
                if let Err(p) = crate::Pausable::pause(self, id).await {
                    tracing::warn!(id, error = %p, "re-pause after a failed checkpoint");
                }
            }
            e
        };
        if let Err(e) = self.quiesce(id).await {
            return Err(repause(e).await);
        }
        let Err(e) = self.checkpoint(id, image, false).await else {
            return Ok(());
        };
        let _ = remove_dir(image).await;
        if self.status(id).await.as_deref() == Some("running") {
            let _ = self.reopen(id).await;
            return Err(repause(e).await);
        }
        // A refused checkpoint stops the container: its processes are gone.
        Err(DriverError::Lost(format!(
            "gVisor stopped the sandbox when its checkpoint failed ({e})"
        )))
    }

    /// Removes the stopped container `id` and unmounts its root after a
    /// successful checkpoint; failures are only logged (the checkpoint is
    /// what counts, and a restore removes leftovers first).
    async fn release_checkpointed(&self, id: &str, paths: &BundlePaths, unmount: bool) {
        if let Err(e) = self
            .runsc(
                "runsc delete",
                &["delete".into(), "--force".into(), id.into()],
            )
            .await
        {
            tracing::warn!(id, error = %e, "remove the checkpointed container");
        }
        if !unmount {
            return;
        }
        if let Err(e) = unmount_rootfs(paths).await {
            tracing::warn!(id, error = %e, "unmount the checkpointed root");
        }
    }

    /// Restores container `id` from `image` with the bundle at `paths`.
    async fn restore(
        &self,
        id: &str,
        paths: &BundlePaths,
        image: &Path,
    ) -> Result<RuntimeInfo, DriverError> {
        let mut args: Vec<OsString> =
            vec!["restore".into(), "--detach".into(), "--image-path".into()];
        args.push(image.as_os_str().to_owned());
        args.push("--bundle".into());
        args.push(paths.dir.clone().into_os_string());
        args.push(id.into());
        self.runsc_detached("runsc restore", paths, &args).await?;
        let (pid, start_time) = self.sandbox_pid(id).await?;
        self.reopen(id).await?;
        Ok(RuntimeInfo {
            pid,
            start_time,
            agent_socket: paths.socket(),
        })
    }

    /// Drops a half-restored container `id` and unmounts its root.
    async fn abandon_restore(&self, id: &str, paths: &BundlePaths) {
        self.forget_conn(id);
        let _ = self
            .runsc(
                "runsc delete",
                &["delete".into(), "--force".into(), id.into()],
            )
            .await;
        let _ = unmount_rootfs(paths).await;
    }
}

#[async_trait]
impl Suspending for GvisorDriver {
    fn preserves_memory(&self) -> bool {
        true
    }

    async fn suspend(&self, id: &str, _info: &RuntimeInfo) -> Result<(), DriverError> {
        let paths = self.paths(id);
        // A paused sandbox's agent cannot let go of its sockets: thaw it
        // first (the checkpoint keeps what it was doing either way).
        let was_paused = self.status(id).await.as_deref() == Some("paused");
        crate::Pausable::resume(self, id).await?;
        let image = paths.dir.join("checkpoint");
        self.quiesce_and_checkpoint(id, &image, was_paused).await?;
        // The checkpointed container is stopped; remove it so the restore
        // can create it again under the same id. Its memory is freed.
        self.release_checkpointed(id, &paths, true).await;
        Ok(())
    }

    async fn resume_suspended(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        let paths = self.paths(&spec.id);
        let image = paths.dir.join("checkpoint");
        if !image.join("checkpoint.img").exists() {
            return Err(create_err(
                "resume",
                format!("sandbox {} has no checkpoint", spec.id),
            ));
        }
        // A container left over from the suspend (its delete failed) would
        // make the restore fail.
        let _ = self
            .runsc(
                "runsc delete",
                &["delete".into(), "--force".into(), spec.id.clone().into()],
            )
            .await;
        mount_rootfs(&paths, self.lowers(spec)).await?;
        match self.restore(&spec.id, &paths, &image).await {
            Ok(info) => {
                if let Err(e) = remove_dir(&image).await {
                    tracing::warn!(id = %spec.id, error = %e, "remove the used checkpoint");
                }
                Ok(info)
            }
            Err(e) => {
                // Leave the checkpoint for another try; drop the half-made container.
                self.abandon_restore(&spec.id, &paths).await;
                Err(e)
            }
        }
    }
}

/// Replaces the children's shared files layer `layer` with a copy of the
/// parent's `upper`, taken while the parent is stopped, so that the
/// children's files are from the instant of their memory.
async fn recapture_layer(upper: &Path, layer: &Path) -> Result<(), DriverError> {
    let (upper, layer) = (upper.to_path_buf(), layer.to_path_buf());
    blocking("copy the parent's files", move || {
        match std::fs::remove_dir_all(&layer) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("remove {}", layer.display()))(e))
            }
            _ => {}
        }
        crate::layer_copy::copy_tree(&upper, &layer)
            .map(|_| ())
            .map_err(io_err(format!(
                "copy {} to {}",
                upper.display(),
                layer.display()
            )))
    })
    .await
}

#[async_trait]
impl MemoryForking for GvisorDriver {
    async fn fork_with_memory(
        &self,
        parent: &str,
        _parent_info: &RuntimeInfo,
        children: &[SandboxSpec],
    ) -> Result<Vec<RuntimeInfo>, DriverError> {
        let parent_paths = self.paths(parent);
        let image = parent_paths.dir.join("fork-checkpoint");
        let was_paused = self.status(parent).await.as_deref() == Some("paused");
        crate::Pausable::resume(self, parent).await?;
        // runsc 20221219's `checkpoint --leave-running` leaves the container
        // stopped while its state still says running (`runsc ps`: "cannot
        // get processes of container in state stopped"), so the parent is
        // checkpointed, removed and restored from its own image.
        self.quiesce_and_checkpoint(parent, &image, was_paused)
            .await?;
        let result = self
            .fork_from_image(parent, &parent_paths, &image, children)
            .await;
        // The image is the parent's checkpoint when its restore failed
        // (moved away by then); otherwise it is not needed any more.
        if let Err(e) = remove_dir(&image).await {
            tracing::warn!(parent, error = %e, "remove the fork checkpoint");
        }
        // A paused parent is paused again once it runs from its image.
        if was_paused && self.status(parent).await.as_deref() == Some("running") {
            if let Err(e) = crate::Pausable::pause(self, parent).await {
                tracing::warn!(parent, error = %e, "re-pause the parent after a fork");
            }
        }
        result
    }
}

impl GvisorDriver {
    /// The part of a memory fork after the parent's checkpoint into
    /// `image`: the children's files, the parent's restore, the children.
    async fn fork_from_image(
        &self,
        parent: &str,
        parent_paths: &BundlePaths,
        image: &Path,
        children: &[SandboxSpec],
    ) -> Result<Vec<RuntimeInfo>, DriverError> {
        // The parent is stopped: its files now match the image.
        let shared_layer = children
            .first()
            .and_then(|c| c.snapshot_layers.first())
            .filter(|l| {
                children
                    .iter()
                    .all(|c| c.snapshot_layers.first() == Some(*l))
            });
        let recaptured = match shared_layer {
            Some(layer) => recapture_layer(&parent_paths.upper, layer).await,
            None => Ok(()),
        };
        self.release_checkpointed(parent, parent_paths, false).await;
        // The parent's sandbox process is a new one now: `is_alive` and
        // `adopt` follow the pid file `restore` rewrote. Its root stays
        // mounted.
        let restored = self.restore(parent, parent_paths, image).await;
        if let Err(e) = restored {
            self.abandon_restore(parent, parent_paths).await;
            // Keep its memory as the parent's suspend checkpoint.
            let kept = parent_paths.dir.join("checkpoint");
            let _ = remove_dir(&kept).await;
            let saved = std::fs::rename(image, &kept).is_ok();
            return Err(DriverError::Lost(format!(
                "restoring sandbox {parent} after its fork checkpoint failed ({e}){}",
                if saved {
                    "; its checkpoint is kept"
                } else {
                    ""
                }
            )));
        }
        recaptured?;
        let mut made: Vec<(String, RuntimeInfo)> = Vec::new();
        for child in children {
            let result = async {
                let paths = self.prepare_bundle(child).await?;
                self.restore(&child.id, &paths, image).await
            }
            .await;
            match result {
                Ok(info) => made.push((child.id.clone(), info)),
                Err(e) => {
                    let _ = self.remove(&child.id, None).await;
                    for (id, info) in &made {
                        let _ = self.remove(id, Some(info)).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(made.into_iter().map(|(_, info)| info).collect())
    }
}
