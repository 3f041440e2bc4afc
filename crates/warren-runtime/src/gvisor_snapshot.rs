//! Pausing gVisor sandboxes (`runsc pause`/`runsc resume`) and capturing
//! their files as a layer (snapshots, forks): the overlay upper directory,
//! copied while the sandbox is paused, after a `sync` inside it so gVisor's
//! own page cache has reached the host files.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use crate::driver::{Driver, DriverError, ExecSpec, Pausable, Snapshottable};
use crate::gvisor::GvisorDriver;

#[async_trait]
impl Pausable for GvisorDriver {
    async fn pause(&self, id: &str) -> Result<(), DriverError> {
        self.runsc("runsc pause", &["pause".into(), id.into()])
            .await
            .map(|_| ())
    }

    async fn resume(&self, id: &str) -> Result<(), DriverError> {
        if self.status(id).await.as_deref() != Some("paused") {
            return Ok(());
        }
        self.runsc("runsc resume", &["resume".into(), id.into()])
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Snapshottable for GvisorDriver {
    async fn capture_layer(&self, id: &str, dest: &Path, paused: bool) -> Result<u64, DriverError> {
        let upper = self.paths(id).upper;
        if !upper.is_dir() {
            return Err(DriverError::NotFound(format!(
                "no sandbox {id:?} on this host"
            )));
        }
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(DriverError::Conflict(format!(
                "{} already exists",
                dest.display()
            )));
        }
        if !paused {
            // Files written inside gVisor may sit in its page cache.
            let synced = self
                .exec(
                    id,
                    ExecSpec {
                        argv: vec!["sync".into()],
                        timeout: Some(Duration::from_secs(30)),
                        ..Default::default()
                    },
                )
                .await?;
            if synced.exit_code != 0 {
                return Err(DriverError::Agent(format!(
                    "sync in the sandbox failed: {}",
                    String::from_utf8_lossy(&synced.stderr).trim()
                )));
            }
            self.pause(id).await?;
        }
        let (src, dst) = (upper.clone(), dest.to_path_buf());
        let copied = tokio::task::spawn_blocking(move || crate::layer_copy::copy_tree(&src, &dst))
            .await
            .map_err(|e| DriverError::Io {
                context: "copy layer".into(),
                source: std::io::Error::other(e),
            })
            .and_then(|r| {
                r.map_err(|source| DriverError::Io {
                    context: format!("copy {} to {}", upper.display(), dest.display()),
                    source,
                })
            });
        let resumed = if paused {
            Ok(())
        } else {
            self.resume(id).await
        };
        match copied {
            Ok(bytes) => resumed.map(|()| bytes),
            Err(e) => {
                let _ = std::fs::remove_dir_all(dest);
                Err(e)
            }
        }
    }
}
