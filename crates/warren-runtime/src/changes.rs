//! What a sandbox changed relative to its image: the optional
//! [`ChangeTracking`] capability. The overlay's upper directory is the exact
//! diff; it is walked on the host without following any symlink.

use async_trait::async_trait;

use crate::driver::DriverError;
use crate::files::ByteStream;

/// How an entry differs from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Not in any lower layer.
    Added,
    /// Replaces an entry of a lower layer (content, mode or owner).
    Modified,
    /// Removed (a whiteout in the upper directory).
    Deleted,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// What happened to it.
    pub kind: ChangeKind,
    /// Size in bytes of a regular file (0 otherwise, and for deletions).
    pub size: u64,
    /// The entry is a directory.
    pub is_dir: bool,
}

/// Listing and exporting a sandbox's changes.
#[async_trait]
pub trait ChangeTracking: Send + Sync {
    /// Every added, modified or deleted path, sorted by path. A directory
    /// that is itself unchanged but holds changes is not listed.
    async fn changes(&self, id: &str) -> Result<Vec<Change>, DriverError>;

    /// The changes as an uncompressed tar in OCI layer form: added and
    /// modified entries with their content, deletions as `.wh.NAME` entries
    /// and replaced directories marked with `.wh..wh..opq`. Owners are the
    /// sandbox's own uids and gids.
    async fn changes_tar(&self, id: &str) -> Result<ByteStream, DriverError>;
}
