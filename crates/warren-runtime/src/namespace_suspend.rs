//! Suspend to disk for the namespace driver: the sandbox's files stay (its
//! writable layer, its lower-layer record and its disk image), every process
//! stops and its cgroups go. Resume starts the sandbox again from those
//! files; memory is not kept.

use std::sync::PoisonError;

use async_trait::async_trait;

use crate::driver::{DriverError, RuntimeInfo, SandboxSpec, Suspending};
use crate::namespace::NamespaceDriver;
use crate::process_state;

/// The lowers record a sandbox's directory keeps (written at launch).
#[derive(serde::Deserialize)]
struct LowersRecord {
    /// Overlay lower directories, top first.
    lowers: Vec<std::path::PathBuf>,
}

#[async_trait]
impl Suspending for NamespaceDriver {
    fn preserves_memory(&self) -> bool {
        false
    }

    async fn suspend(&self, id: &str, info: &RuntimeInfo) -> Result<(), DriverError> {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        // A frozen process does not die of SIGKILL until it is thawed (v1
        // freezer), so a paused sandbox is thawed first.
        self.thaw(id).await?;
        let (pid, start_time) = (info.pid, info.start_time);
        tokio::task::spawn_blocking(move || process_state::kill_and_wait(pid, start_time))
            .await
            .map_err(|e| DriverError::Io {
                context: format!("wait for sandbox {id} to stop"),
                source: std::io::Error::other(e),
            })?;
        // The processes are gone: the sandbox is suspended whatever the
        // cleanup below manages (it is retried by resume and delete).
        let cgroups = self.cgroup_layout().clone();
        let parent = self.cfg.cgroup_parent.clone();
        let disk = self.sandbox_dir(id).join("disk");
        let id_owned = id.to_owned();
        let released = tokio::task::spawn_blocking(move || {
            if let Err(e) = cgroups.remove(&parent, &id_owned) {
                tracing::warn!(sandbox = %id_owned, error = %e, "could not remove the cgroups of a suspended sandbox");
            }
            if let Err(e) = warren_linux::disk::unmount(&disk) {
                tracing::warn!(sandbox = %id_owned, error = %e, "could not unmount the disk of a suspended sandbox");
            }
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(sandbox = %id, error = %e, "cleanup of a suspended sandbox failed");
        }
        Ok(())
    }

    async fn resume_suspended(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        let dir = self.sandbox_dir(&spec.id);
        if !dir.join("upper").is_dir() && !dir.join("disk.img").is_file() {
            return Err(DriverError::NotFound(format!(
                "sandbox {} has no saved files to resume from",
                spec.id
            )));
        }
        // Whatever a daemon that died during an earlier resume left running.
        self.release_processes(&spec.id).await;
        let spec = &self.with_recorded_layers(spec);
        // `launch` reuses the existing writable layer and disk image.
        let pid = match self.launch(spec).await {
            Ok(pid) => pid,
            Err(e) => {
                self.release_processes(&spec.id).await;
                return Err(e);
            }
        };
        let info = self.runtime_info(&spec.id, pid);
        match self.attach_agent(&spec.id, &info).await {
            Ok(()) => Ok(info),
            Err(e) => {
                // Back to suspended: processes and cgroups go, files stay.
                if let Err(stop) = self.suspend(&spec.id, &info).await {
                    tracing::warn!(sandbox = %spec.id, error = %stop, "could not stop a sandbox whose resume failed");
                }
                Err(e)
            }
        }
    }
}

impl NamespaceDriver {
    /// `spec` with the lower layers the sandbox was created with (its
    /// lowers record), not those its image's name resolves to now: a
    /// re-pulled tag must not change the layers under the writable one.
    /// Without a readable record, `spec` as it is.
    fn with_recorded_layers(&self, spec: &SandboxSpec) -> SandboxSpec {
        let path = self
            .sandbox_dir(&spec.id)
            .join(crate::namespace::LOWERS_RECORD);
        let recorded = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LowersRecord>(&bytes).ok());
        let mut spec = spec.clone();
        let Some(LowersRecord { mut lowers }) = recorded else {
            tracing::warn!(sandbox = %spec.id, path = %path.display(), "no lowers record; resuming with the image's current layers");
            return spec;
        };
        if lowers.last() == Some(&self.host_image.rootfs) {
            // Host image: snapshot layers above the host's rootfs.
            lowers.pop();
            spec.layers = Vec::new();
            spec.snapshot_layers = lowers;
        } else if lowers.len() > 1 {
            // OCI image: Warren's base layer, then snapshot and image layers.
            lowers.remove(0);
            spec.snapshot_layers = Vec::new();
            spec.layers = lowers;
        }
        spec
    }

    /// Kills whatever runs in the sandbox's cgroups and removes them and its
    /// disk mount, keeping its files: cleans up after a failed `launch` of a
    /// resume. Idempotent.
    async fn release_processes(&self, id: &str) {
        let cgroups = self.cgroup_layout().clone();
        let parent = self.cfg.cgroup_parent.clone();
        let disk = self.sandbox_dir(id).join("disk");
        let id_owned = id.to_owned();
        let released = tokio::task::spawn_blocking(move || {
            cgroups.kill_all(&parent, &id_owned);
            let cgroups_gone = cgroups
                .remove(&parent, &id_owned)
                .map_err(|e| e.to_string());
            let disk_gone = warren_linux::disk::unmount(&disk).map_err(|e| e.to_string());
            cgroups_gone.and(disk_gone)
        })
        .await;
        match released {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(sandbox = %id, error = %e, "cleanup after a failed resume")
            }
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "cleanup after a failed resume"),
        }
    }
}
