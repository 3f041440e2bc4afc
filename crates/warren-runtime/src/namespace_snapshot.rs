//! [`Snapshottable`] for the namespace driver: the sandbox's overlay upper
//! directory, copied while the sandbox is frozen, becomes a read-only layer.
//!
//! The copy (`layer_copy`) keeps owners, modes, times, xattrs (the
//! sandbox's overlay is mounted with `userxattr`, so opaque directories
//! carry `user.overlay.opaque`), whiteouts (character devices 0:0), symlinks
//! (never followed) and hard links within the layer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use warren_linux::cgroup::CgroupLayout;

use crate::driver::{DriverError, Pausable, Snapshottable};
use crate::namespace::{NamespaceDriver, LOWERS_RECORD};

fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

impl NamespaceDriver {
    /// The overlay upper directory of sandbox `id` (on its own disk when it
    /// has one).
    fn upper_dir(&self, id: &str) -> Result<PathBuf, DriverError> {
        let unknown = || DriverError::NotFound(format!("no sandbox {id:?} on this host"));
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(unknown());
        }
        let dir = self.sandbox_dir(id);
        [dir.join("disk/upper"), dir.join("upper")]
            .into_iter()
            .find(|p| is_dir(p))
            .ok_or_else(unknown)
    }
}

/// Copies `upper` to `dest` (which must not exist) with everything overlay
/// needs; returns the bytes of regular file data in `dest`.
fn copy_layer(upper: &Path, dest: &Path) -> Result<u64, DriverError> {
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(DriverError::Conflict(format!(
            "{} already exists",
            dest.display()
        )));
    }
    crate::layer_copy::copy_tree(upper, dest).map_err(|source| DriverError::Io {
        context: format!("copy {} to {}", upper.display(), dest.display()),
        source,
    })
}

/// Copies the sandbox's record of the layers it is mounted on (`lowers`)
/// next to the new layer (`<dest>/../lowers.json`): image garbage
/// collection keeps those layers for the snapshot, and the server learns
/// the exact image layers the files were captured on. A sandbox without
/// the record (made before it existed) leaves none.
fn record_lowers(lowers: &Path, dest: &Path) -> Result<(), DriverError> {
    let Some(dir) = dest.parent() else {
        return Ok(());
    };
    let target = dir.join(LOWERS_RECORD);
    match std::fs::copy(lowers, &target) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !lowers.exists() => Ok(()),
        Err(source) => Err(DriverError::Io {
            context: format!("copy {} to {}", lowers.display(), target.display()),
            source,
        }),
    }
}

/// Removes a partly written layer; best effort (the caller reports the
/// original error).
fn remove_partial(dest: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dest) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dest.display(), error = %e, "could not remove a failed snapshot layer");
        }
    }
}

/// How long a thaw waits for the kernel to report the cgroup thawed.
const THAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Thaws a sandbox frozen for a capture: explicitly with [`Self::thaw`],
/// or when dropped (the capture failed, panicked or its future was
/// dropped), so a sandbox recorded running is never left frozen.
struct Thaw {
    cgroups: CgroupLayout,
    parent: String,
    id: String,
    armed: bool,
}

impl Thaw {
    fn thaw(mut self) -> Result<(), DriverError> {
        self.armed = false;
        self.cgroups
            .thaw(&self.parent, &self.id, THAW_TIMEOUT)
            .map_err(|e| DriverError::Io {
                context: format!("thaw sandbox {}", self.id),
                source: std::io::Error::other(e.to_string()),
            })
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (cgroups, parent, id) = (
            self.cgroups.clone(),
            std::mem::take(&mut self.parent),
            std::mem::take(&mut self.id),
        );
        let run = move || {
            if let Err(e) = cgroups.thaw(&parent, &id, THAW_TIMEOUT) {
                tracing::error!(sandbox = %id, error = %e, "could not thaw a sandbox after an interrupted snapshot");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(run)),
            Err(_) => run(),
        }
    }
}

#[async_trait]
impl Snapshottable for NamespaceDriver {
    async fn capture_layer(&self, id: &str, dest: &Path, paused: bool) -> Result<u64, DriverError> {
        let upper = self.upper_dir(id)?;
        let cgroups = self.cgroup_layout().clone();
        let parent = self.cfg.cgroup_parent.clone();
        let thaw = if paused {
            // The copy is only consistent if nothing in the sandbox runs.
            if !cgroups.is_frozen(&parent, id) {
                return Err(DriverError::Conflict(format!(
                    "sandbox {id} is recorded paused but its cgroup is not frozen; resume \
                     and pause it again"
                )));
            }
            None
        } else {
            // Armed before the freeze: dropping this future mid-freeze thaws.
            let thaw = Thaw {
                cgroups,
                parent,
                id: id.to_owned(),
                armed: true,
            };
            // Nothing in the sandbox writes while the copy runs.
            self.pause(id).await?;
            Some(thaw)
        };
        // The copy and the thaw run to their end on a blocking thread even
        // if this future is dropped meanwhile.
        let (src, dst) = (upper, dest.to_path_buf());
        let lowers = self.sandbox_dir(id).join(LOWERS_RECORD);
        let (copied, thawed) = tokio::task::spawn_blocking(move || {
            let copied = copy_layer(&src, &dst)
                .and_then(|bytes| record_lowers(&lowers, &dst).map(|()| bytes));
            // An existing destination is not ours to remove.
            if copied
                .as_ref()
                .is_err_and(|e| !matches!(e, DriverError::Conflict(_)))
            {
                remove_partial(&dst);
            }
            let thawed = thaw.map(Thaw::thaw);
            if copied.is_ok() && matches!(thawed, Some(Err(_))) {
                remove_partial(&dst);
            }
            (copied, thawed)
        })
        .await
        .map_err(|e| DriverError::Io {
            context: format!("copy the layer of sandbox {id}"),
            source: std::io::Error::other(e),
        })?;
        // A failed thaw makes the capture fail (the caller records the
        // sandbox paused: it is frozen).
        if let Some(Err(e)) = thawed {
            return Err(e);
        }
        copied
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    #[test]
    fn copy_keeps_symlinks_hard_links_and_counts_bytes_once() {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(upper.join("d")).unwrap();
        std::fs::write(upper.join("d/a"), vec![7u8; 1000]).unwrap();
        std::fs::hard_link(upper.join("d/a"), upper.join("b")).unwrap();
        symlink("/etc/passwd", upper.join("link")).unwrap();
        let dest = tmp.path().join("layer");
        let bytes = copy_layer(&upper, &dest).unwrap();
        assert_eq!(bytes, 1000);
        let link = std::fs::symlink_metadata(dest.join("link")).unwrap();
        assert!(link.file_type().is_symlink());
        let a = std::fs::metadata(dest.join("d/a")).unwrap();
        let b = std::fs::metadata(dest.join("b")).unwrap();
        assert_eq!(a.ino(), b.ino());
        // An existing destination is refused and left alone.
        assert!(copy_layer(&upper, &dest).is_err());
        assert!(dest.join("d/a").exists());
    }
}
