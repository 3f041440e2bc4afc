//! The image store: OCI images imported from archives or pulled from
//! registries, kept as content-addressed blobs (sha256 verified on the way
//! in) and unpacked layers shared by every image and sandbox that uses them.
//!
//! CONTRACT (used by the server): the public types and `ImageStore` method
//! signatures below. The implementation lives in the submodules.

use std::path::PathBuf;

mod archive;
mod blobs;
mod oci;
mod reference;
mod registry;
mod store;
mod unpack;

pub use reference::Reference;

/// The image config values that become a sandbox's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `Env` as `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User` (name, uid, or `uid:gid`).
    pub user: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    /// Digest of the (compressed) blob, `sha256:…`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's `diff_id`).
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
}

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    /// Name with tag, e.g. `127.0.0.1:5000/tools/busybox:latest`.
    pub name: String,
    /// Digest of the manifest, `sha256:…`.
    pub digest: String,
    /// Digest of the config blob.
    pub config_digest: String,
    /// Layers, bottom first (as in the manifest).
    pub layers: Vec<LayerInfo>,
    /// Sum of the layer blob sizes.
    pub size: u64,
    /// `architecture` / `os` from the config.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// `created` from the config, when present.
    pub created: Option<String>,
    /// Defaults for sandboxes.
    pub config: ImageConfig,
    /// When Warren stored it (RFC 3339).
    pub stored_at: String,
}

/// Progress of an import or pull, for progress bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageProgress {
    /// The reference was resolved to a manifest.
    Resolved {
        /// Manifest digest.
        digest: String,
        /// Number of layers.
        layers: usize,
    },
    /// Bytes of one layer blob received so far.
    Layer {
        /// Blob digest.
        digest: String,
        /// Bytes so far.
        done: u64,
        /// Total size, when known.
        total: Option<u64>,
    },
    /// The layer was already stored; nothing downloaded.
    LayerExists {
        /// Blob digest.
        digest: String,
    },
    /// The layer is being unpacked.
    Unpacking {
        /// Blob digest.
        digest: String,
    },
}

/// Credentials and transport for a pull.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullOptions {
    /// Allow plain HTTP (always allowed for localhost / 127.0.0.1 / ::1).
    pub insecure: bool,
    /// Basic credentials (also used to fetch bearer tokens).
    pub username: Option<String>,
    /// Password or personal token.
    pub password: Option<String>,
}

/// What removing an image freed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoveSummary {
    /// Layers deleted because no other image uses them.
    pub layers_removed: usize,
    /// Bytes freed on disk (blobs + unpacked layers).
    pub bytes_freed: u64,
}

/// Image store errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No such image.
    #[error("image not found: {0}")]
    NotFound(String),
    /// A malformed reference or name.
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    /// The archive is not an OCI layout or docker-archive, or is malformed.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// Content did not match its digest.
    #[error("digest mismatch for {0}")]
    DigestMismatch(String),
    /// The registry refused or failed.
    #[error("registry error: {0}")]
    Registry(String),
    /// Authentication failed.
    #[error("registry authentication failed: {0}")]
    Unauthorized(String),
    /// No linux/amd64 image in an index.
    #[error("no linux/amd64 image in {0}")]
    NoMatchingPlatform(String),
    /// Local I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What Warren was doing.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The store.
pub struct ImageStore {
    root: PathBuf,
    id_map_base: u32,
    id_map_count: u32,
    /// Digests that imports/pulls in flight still need (GC skips them).
    pins: blobs::Pins,
    /// Serializes record writes with garbage collection.
    records_lock: std::sync::Mutex<()>,
    /// Where sandboxes record the layer dirs they are mounted on
    /// (`<dir>/<id>/lowers.json`); garbage collection keeps those.
    sandboxes_dir: Option<PathBuf>,
    /// The same for snapshots (`<dir>/<id>/lowers.json`: the layers the
    /// snapshot's sandbox ran on, which sandboxes from it stack again).
    snapshots_dir: Option<PathBuf>,
}

/// Keeps an image's layers from being garbage collected while a sandbox is
/// being created from them (after that, the sandbox's `lowers.json` does).
pub struct LayerLease {
    _pins: blobs::PinGuard,
}

impl ImageStore {
    /// Opens (creating) the store under `root`. Layers are unpacked with
    /// owners shifted by `id_map_base` (uid N in the image becomes host uid
    /// `id_map_base + N`, for N < `id_map_count`), so they appear with
    /// their own owners inside sandboxes. `root` is made canonical
    /// (absolute, symlinks resolved). Leftovers of interrupted imports
    /// and pulls (`root/tmp`) are deleted, so open one store per root.
    pub fn open(
        root: impl Into<PathBuf>,
        id_map_base: u32,
        id_map_count: u32,
    ) -> Result<Self, ImageError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| ImageError::Io {
            context: format!("create {}", root.display()),
            source,
        })?;
        // Layer paths are compared with the absolute paths sandboxes record
        // in `lowers.json`: use the canonical root whatever the caller gave.
        let root = std::fs::canonicalize(&root).map_err(|source| ImageError::Io {
            context: format!("resolve {}", root.display()),
            source,
        })?;
        // Leftovers of interrupted downloads and unpacks.
        let _ = std::fs::remove_dir_all(blobs::tmp_dir(&root));
        Ok(Self {
            root,
            id_map_base,
            id_map_count,
            pins: blobs::Pins::default(),
            records_lock: std::sync::Mutex::new(()),
            sandboxes_dir: None,
            snapshots_dir: None,
        })
    }

    /// Makes garbage collection keep every layer dir that a sandbox under
    /// `dir` is mounted on (listed in `<dir>/<id>/lowers.json`), whatever
    /// happens to the image records.
    pub fn with_sandboxes_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sandboxes_dir = Some(dir.into());
        self
    }

    /// Makes garbage collection keep every layer dir a snapshot under `dir`
    /// stacks on (listed in `<dir>/<id>/lowers.json`), whatever happens to
    /// the image records (a re-pulled tag, a removed image).
    pub fn with_snapshots_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshots_dir = Some(dir.into());
        self
    }

    /// Pins the layers of `image` until the lease is dropped.
    pub fn lease_layers(&self, image: &ImageInfo) -> LayerLease {
        LayerLease {
            _pins: self
                .pins
                .pin(image.layers.iter().map(|l| l.diff_id.clone())),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// (uid/gid shift, count) used when unpacking.
    pub fn id_map(&self) -> (u32, u32) {
        (self.id_map_base, self.id_map_count)
    }
}

// The implementation provides, on `ImageStore` (see store.rs, archive.rs,
// registry.rs):
//
//   pub async fn import(&self, archive: ByteStream, name: &str,
//       progress: Option<mpsc::UnboundedSender<ImageProgress>>) -> Result<ImageInfo, ImageError>;
//   pub async fn pull(&self, reference: &str, opts: &PullOptions,
//       progress: Option<mpsc::UnboundedSender<ImageProgress>>) -> Result<ImageInfo, ImageError>;
//   pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError>;
//   pub fn get(&self, name_or_digest: &str) -> Result<ImageInfo, ImageError>;   // NotFound
//   pub fn remove(&self, name_or_digest: &str) -> Result<RemoveSummary, ImageError>;
//   pub fn layer_dirs(&self, image: &ImageInfo) -> Result<Vec<PathBuf>, ImageError>; // TOP FIRST, overlay lowerdir order
//   pub fn normalize_name(name: &str) -> Result<String, ImageError>;  // adds ":latest"
