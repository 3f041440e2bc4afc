//! [`ChangeTracking`] for the namespace driver: the sandbox's overlay upper
//! directory, read on the host and compared with its lower layers.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::change_archive::{self, IdShift};
use crate::changes::{Change, ChangeTracking};
use crate::changes_scan::{self, ChangedEntry, OverlayLayers};
use crate::driver::DriverError;
use crate::files::ByteStream;
use crate::namespace::NamespaceDriver;
use crate::rooted_dir::RootedDir;

/// What `launch` records about a sandbox's lower layers.
#[derive(Debug, serde::Deserialize)]
struct LowersFile {
    /// Absolute lower directories, top first.
    lowers: Vec<PathBuf>,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> DriverError {
    move |source| DriverError::Io { context, source }
}

fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

impl NamespaceDriver {
    /// The upper and lower directories of sandbox `id`'s root overlay.
    fn overlay_layers(&self, id: &str) -> Result<OverlayLayers, DriverError> {
        let unknown = || DriverError::NotFound(format!("no sandbox {id:?} on this host"));
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(unknown());
        }
        let dir = self.sandbox_dir(id);
        if !is_dir(&dir) {
            return Err(unknown());
        }
        // With a disk, the upper lives on the sandbox's own file system.
        let upper = [dir.join("disk/upper"), dir.join("upper")]
            .into_iter()
            .find(|p| is_dir(p))
            .ok_or_else(unknown)?;
        let lowers_path = dir.join(crate::namespace::LOWERS_RECORD);
        let lowers = match std::fs::read(&lowers_path) {
            Ok(bytes) => {
                serde_json::from_slice::<LowersFile>(&bytes)
                    .map_err(|e| {
                        io_err(format!("read {}", lowers_path.display()))(std::io::Error::other(e))
                    })?
                    .lowers
            }
            // Sandboxes created before lowers.json existed use the host image.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                vec![self.host_image.rootfs.clone()]
            }
            Err(e) => return Err(io_err(format!("read {}", lowers_path.display()))(e)),
        };
        Ok(OverlayLayers { upper, lowers })
    }

    async fn scan_changes(
        &self,
        id: &str,
    ) -> Result<(OverlayLayers, Vec<ChangedEntry>), DriverError> {
        let layers = self.overlay_layers(id)?;
        let for_scan = layers.clone();
        let entries = tokio::task::spawn_blocking(move || changes_scan::scan(&for_scan))
            .await
            .map_err(|e| {
                io_err("scan sandbox changes".into())(std::io::Error::other(e.to_string()))
            })?
            .map_err(io_err(format!("list changes of sandbox {id}")))?;
        Ok((layers, entries))
    }
}

#[async_trait]
impl ChangeTracking for NamespaceDriver {
    async fn changes(&self, id: &str) -> Result<Vec<Change>, DriverError> {
        let (_, entries) = self.scan_changes(id).await?;
        Ok(entries.into_iter().map(|e| e.change).collect())
    }

    async fn changes_tar(&self, id: &str) -> Result<ByteStream, DriverError> {
        let (layers, entries) = self.scan_changes(id).await?;
        let upper = RootedDir::open(&layers.upper)
            .map_err(io_err(format!("open {}", layers.upper.display())))?;
        let ids = IdShift {
            base: self.cfg.id_map_base,
            count: self.cfg.id_map_count,
        };
        let stream = change_archive::spawn_layer_tar(upper, entries, ids)
            .map_err(io_err(format!("start the changes archive of sandbox {id}")))?;
        Ok(Box::pin(stream))
    }
}
