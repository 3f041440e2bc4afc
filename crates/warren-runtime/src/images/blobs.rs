//! Content-addressed blobs: written to a temp file while hashing, verified,
//! then renamed into `blobs/sha256/<hex>`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::reference::parse_digest;
use super::ImageError;

/// Builds an [`ImageError::Io`] naming the step.
pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// `root/blobs/sha256/<hex>` for `digest`.
pub(crate) fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    Ok(root.join("blobs/sha256").join(parse_digest(digest)?))
}

/// `root/tmp`, where partial downloads and unpacks live.
pub(crate) fn tmp_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}

/// A unique name for a temp file or dir in `root/tmp`.
pub(crate) fn temp_path(root: &Path, prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    tmp_dir(root).join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()))
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads a small stored blob (manifest, index, config).
pub(crate) fn read_small_blob(root: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(root, digest)?;
    let meta = std::fs::metadata(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::InvalidArchive(format!("blob {digest} is missing"))
        } else {
            io_error(format!("stat blob {digest}"))(e)
        }
    })?;
    if meta.len() > super::oci::MAX_MANIFEST_BYTES {
        return Err(ImageError::InvalidArchive(format!(
            "blob {digest} is too big for a manifest or config"
        )));
    }
    std::fs::read(&path).map_err(io_error(format!("read blob {digest}")))
}

/// Stores `bytes` as a blob, returning its digest.
pub(crate) fn store_bytes(root: &Path, bytes: &[u8]) -> Result<String, ImageError> {
    let mut writer = BlobWriter::create(root)?;
    writer.write_all(bytes).map_err(io_error("write blob"))?;
    Ok(writer.commit(None)?.0)
}

/// Removes a temp directory when dropped.
pub(crate) struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a blob to a temp file while hashing it.
pub(crate) struct BlobWriter {
    root: PathBuf,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    /// Starts a blob under `root/tmp`.
    pub(crate) fn create(root: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(tmp_dir(root)).map_err(io_error("create image tmp dir"))?;
        let temp = temp_path(root, "blob");
        let file =
            File::create_new(&temp).map_err(io_error(format!("create {}", temp.display())))?;
        Ok(Self {
            root: root.to_path_buf(),
            temp,
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Bytes written so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Digest of the bytes written so far.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Moves an already hashed file at `path` (under `root`) into place as
    /// blob `digest`.
    pub(crate) fn commit_file(root: &Path, path: &Path, digest: &str) -> Result<(), ImageError> {
        let dest = blob_path(root, digest)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("create blobs dir"))?;
        }
        std::fs::rename(path, &dest).map_err(io_error(format!("store blob {digest}")))
    }

    /// Verifies the content against `expected` (when given) and moves it to
    /// its place. Returns `(digest, size)`. On mismatch nothing is kept.
    pub(crate) fn commit(mut self, expected: Option<&str>) -> Result<(String, u64), ImageError> {
        if let Some(file) = self.file.take() {
            let file = file
                .into_inner()
                .map_err(|e| io_error(format!("write {}", self.temp.display()))(e.into_error()))?;
            file.sync_all()
                .map_err(io_error(format!("sync {}", self.temp.display())))?;
        }
        let digest = self.digest();
        if let Some(expected) = expected {
            if expected != digest {
                return Err(ImageError::DigestMismatch(format!(
                    "{expected} (content is {digest})"
                )));
            }
        }
        let dest = blob_path(&self.root, &digest)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("create blobs dir"))?;
        }
        // Identical content may land concurrently; rename replaces it
        // atomically with the same bytes, so the race is harmless.
        std::fs::rename(&self.temp, &dest).map_err(io_error(format!("store blob {digest}")))?;
        self.temp = PathBuf::new();
        Ok((digest, self.size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("blob already committed"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Digests (blobs and diff_ids) in use by imports and pulls that have not
/// written their record yet; garbage collection leaves them alone.
#[derive(Default, Clone)]
pub(crate) struct Pins {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    /// Live guards (imports, pulls and leases in flight), even empty ones.
    guards: Arc<AtomicU64>,
}

impl Pins {
    /// How many guards are alive.
    pub(crate) fn active(&self) -> u64 {
        self.guards.load(Ordering::SeqCst)
    }

    /// Pins `digests` until the returned guard drops.
    pub(crate) fn pin(&self, digests: impl IntoIterator<Item = String>) -> PinGuard {
        self.guards.fetch_add(1, Ordering::SeqCst);
        let mut guard = PinGuard {
            pins: self.clone(),
            digests: Vec::new(),
        };
        guard.add(digests);
        guard
    }

    /// Whether `dir` is the layer dir of a pinned diff id.
    pub(crate) fn pinned_layer_dir(&self, root: &Path, dir: &Path) -> bool {
        let Ok(counts) = self.counts.lock() else {
            return true;
        };
        counts
            .keys()
            .any(|d| super::unpack::layer_dir(root, d).is_ok_and(|l| l == dir))
    }

    /// Whether `digest` is pinned.
    pub(crate) fn is_pinned(&self, digest: &str) -> bool {
        self.counts
            .lock()
            .map(|c| c.contains_key(digest))
            .unwrap_or(true)
    }
}

/// Releases pins on drop.
pub(crate) struct PinGuard {
    pins: Pins,
    digests: Vec<String>,
}

impl PinGuard {
    /// Pins more digests.
    pub(crate) fn add(&mut self, digests: impl IntoIterator<Item = String>) {
        if let Ok(mut counts) = self.pins.counts.lock() {
            for d in digests {
                *counts.entry(d.clone()).or_insert(0) += 1;
                self.digests.push(d);
            }
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.pins.guards.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut counts) = self.pins.counts.lock() {
            for d in &self.digests {
                if let Some(n) = counts.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(d);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn blob_is_verified_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlobWriter::create(dir.path()).unwrap();
        w.write_all(b"hello").unwrap();
        let want = digest_of(b"hello");
        let (digest, size) = w.commit(Some(&want)).unwrap();
        assert_eq!((digest.as_str(), size), (want.as_str(), 5));
        assert_eq!(
            std::fs::read(blob_path(dir.path(), &want).unwrap()).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn digest_mismatch_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlobWriter::create(dir.path()).unwrap();
        w.write_all(b"evil").unwrap();
        let err = w.commit(Some(&digest_of(b"good"))).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch(_)), "{err}");
        assert!(!blob_path(dir.path(), &digest_of(b"good")).unwrap().exists());
        assert!(!blob_path(dir.path(), &digest_of(b"evil")).unwrap().exists());
        assert_eq!(std::fs::read_dir(tmp_dir(dir.path())).unwrap().count(), 0);
    }

    #[test]
    fn pins_count() {
        let pins = Pins::default();
        let a = pins.pin(["x".to_string()]);
        let b = pins.pin(["x".to_string()]);
        drop(a);
        assert!(pins.is_pinned("x"));
        drop(b);
        assert!(!pins.is_pinned("x"));
    }
}
