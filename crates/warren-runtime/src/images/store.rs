//! Image records (`images/<sha256 of name>.json`), lookup, removal and
//! garbage collection of blobs and layers no image uses any more.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::blobs::{blob_path, io_error, temp_path, tmp_dir, PinGuard};
use super::oci::{ConfigFile, Manifest};
use super::reference::{normalize_name, parse_digest};
use super::unpack::{
    check_layer_dir, ensure_layer, layer_dir, layer_marker, IdShift, DIFF_ID_MARKER_EXT,
};
use super::{ImageError, ImageInfo, ImageProgress, ImageStore, LayerInfo, RemoveSummary};

/// Sends a progress event when someone listens.
pub(crate) fn report(
    progress: &Option<mpsc::UnboundedSender<ImageProgress>>,
    event: ImageProgress,
) {
    if let Some(tx) = progress {
        let _ = tx.send(event);
    }
}

impl ImageStore {
    /// All stored images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let mut images = self.read_records()?;
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// One image by name (normalized, `:latest` added), by manifest digest
    /// `sha256:…`, or by a unique manifest-digest hex prefix of at least 12
    /// characters.
    pub fn get(&self, name_or_digest: &str) -> Result<ImageInfo, ImageError> {
        let not_found = || ImageError::NotFound(name_or_digest.to_string());
        if name_or_digest.starts_with("sha256:") {
            parse_digest(name_or_digest)?;
            return self
                .read_records()?
                .into_iter()
                .find(|i| i.digest == name_or_digest)
                .ok_or_else(not_found);
        }
        if let Ok(name) = normalize_name(name_or_digest) {
            if let Some(info) = self.read_record(&name)? {
                return Ok(info);
            }
        }
        let is_prefix = name_or_digest.len() >= 12
            && name_or_digest.len() <= 64
            && name_or_digest.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_prefix {
            return Err(not_found());
        }
        let prefix = format!("sha256:{}", name_or_digest.to_ascii_lowercase());
        let mut matches: Vec<ImageInfo> = self
            .read_records()?
            .into_iter()
            .filter(|i| i.digest.starts_with(&prefix))
            .collect();
        matches.dedup_by(|a, b| a.digest == b.digest);
        match matches.len() {
            0 => Err(not_found()),
            1 => Ok(matches.remove(0)),
            _ => Err(ImageError::InvalidReference(format!(
                "{name_or_digest} matches several images"
            ))),
        }
    }

    /// Removes an image record, then deletes the blobs and layer dirs no
    /// remaining image references. The caller makes sure no sandbox uses it.
    pub fn remove(&self, name_or_digest: &str) -> Result<RemoveSummary, ImageError> {
        let _lock = self.lock_records();
        let info = self.get(name_or_digest)?;
        let path = self.record_path(&info.name);
        std::fs::remove_file(&path).map_err(io_error(format!("remove {}", path.display())))?;
        self.collect_garbage(&info)
    }

    /// The unpacked layer directories of `image`, top layer first (overlay
    /// `lowerdir` order). Fails when one is missing or its diff_id marker
    /// does not name the layer.
    pub fn layer_dirs(&self, image: &ImageInfo) -> Result<Vec<PathBuf>, ImageError> {
        image
            .layers
            .iter()
            .rev()
            .map(|layer| {
                let dir = layer_dir(&self.root, &layer.diff_id)?;
                if check_layer_dir(&dir, &layer.diff_id)? {
                    Ok(dir)
                } else {
                    Err(ImageError::NotFound(format!(
                        "layer {} of {} (not unpacked at {})",
                        layer.diff_id,
                        image.name,
                        dir.display()
                    )))
                }
            })
            .collect()
    }

    /// Validates and normalizes an image name (`[host[:port]/]repo[:tag]`,
    /// lowercase repository), adding `:latest`. `host` is reserved.
    pub fn normalize_name(name: &str) -> Result<String, ImageError> {
        normalize_name(name)
    }

    pub(crate) fn id_shift(&self) -> IdShift {
        IdShift {
            base: self.id_map_base,
            count: self.id_map_count,
        }
    }

    /// Unpacks the layers of a manifest whose blobs are all stored and
    /// records the image under `name`, replacing (and garbage collecting)
    /// an older image of that name.
    pub(crate) async fn finish_image(
        &self,
        name: &str,
        manifest_digest: &str,
        manifest: &Manifest,
        config_bytes: &[u8],
        pins: &mut PinGuard,
        progress: &Option<mpsc::UnboundedSender<ImageProgress>>,
    ) -> Result<ImageInfo, ImageError> {
        let config: ConfigFile = serde_json::from_slice(config_bytes)
            .map_err(|e| ImageError::InvalidArchive(format!("bad image config: {e}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::InvalidArchive(format!(
                "manifest has {} layers but config has {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        pins.add(config.rootfs.diff_ids.iter().cloned());
        // A GC that started before the pins were taken may still be
        // deleting a layer dir `ensure_layer` just found: check again under
        // the records lock and unpack again if one vanished.
        for _attempt in 0..3 {
            let layers = self.unpack_layers(manifest, &config, progress).await?;
            let info = ImageInfo {
                name: name.to_string(),
                digest: manifest_digest.to_string(),
                config_digest: manifest.config.digest.clone(),
                size: layers.iter().map(|l| l.size).sum(),
                layers,
                architecture: config.architecture.clone(),
                os: config.os.clone(),
                created: config.created.clone(),
                config: config.image_config(),
                stored_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            };
            let _lock = self.lock_records();
            if self.layer_dirs(&info).is_err() {
                continue;
            }
            let old = self.read_record(name)?;
            self.write_record(&info)?;
            if let Some(old) = old {
                self.collect_garbage(&old)?;
            }
            return Ok(info);
        }
        Err(ImageError::Io {
            context: format!("unpack layers of {name}"),
            source: std::io::Error::other("layer directories kept disappearing"),
        })
    }

    /// Unpacks each layer (on a blocking thread) unless already there.
    async fn unpack_layers(
        &self,
        manifest: &Manifest,
        config: &ConfigFile,
        progress: &Option<mpsc::UnboundedSender<ImageProgress>>,
    ) -> Result<Vec<LayerInfo>, ImageError> {
        let mut layers = Vec::new();
        for (desc, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let blob = blob_path(&self.root, &desc.digest)?;
            parse_digest(diff_id)?;
            report(
                progress,
                ImageProgress::Unpacking {
                    digest: desc.digest.clone(),
                },
            );
            let size = std::fs::metadata(&blob)
                .map_err(io_error(format!("stat blob {}", desc.digest)))?
                .len();
            let (root, diff, ids) = (self.root.clone(), diff_id.clone(), self.id_shift());
            tokio::task::spawn_blocking(move || ensure_layer(&root, &blob, &diff, ids))
                .await
                .map_err(|e| ImageError::Io {
                    context: "unpack task".to_string(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            layers.push(LayerInfo {
                digest: desc.digest.clone(),
                diff_id: diff_id.clone(),
                size,
            });
        }
        Ok(layers)
    }

    pub(crate) fn lock_records(&self) -> std::sync::MutexGuard<'_, ()> {
        self.records_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn records_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.records_dir().join(format!(
            "{}.json",
            hex::encode(Sha256::digest(name.as_bytes()))
        ))
    }

    fn read_record(&self, name: &str) -> Result<Option<ImageInfo>, ImageError> {
        let path = self.record_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => parse_record(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("read {}", path.display()))(e)),
        }
    }

    fn read_records(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let dir = self.records_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format!("list {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(io_error(format!("list {}", dir.display())))?
                .path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes =
                    std::fs::read(&path).map_err(io_error(format!("read {}", path.display())))?;
                out.push(parse_record(&path, &bytes)?);
            }
        }
        Ok(out)
    }

    fn write_record(&self, info: &ImageInfo) -> Result<(), ImageError> {
        let dir = self.records_dir();
        std::fs::create_dir_all(&dir).map_err(io_error("create images dir"))?;
        std::fs::create_dir_all(tmp_dir(&self.root)).map_err(io_error("create tmp dir"))?;
        let bytes = serde_json::to_vec_pretty(info).map_err(|e| ImageError::Io {
            context: "encode image record".to_string(),
            source: std::io::Error::other(e),
        })?;
        let temp = temp_path(&self.root, "record");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create_new(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, self.record_path(&info.name))
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            io_error(format!("write image record for {}", info.name))(e)
        })
    }

    /// Deletes what `gone` used and no stored image or in-flight import
    /// uses. Call with the records lock held.
    fn collect_garbage(&self, gone: &ImageInfo) -> Result<RemoveSummary, ImageError> {
        // Blob digests and diff_ids are separate name spaces: an
        // uncompressed layer blob has its diff_id as digest.
        let mut used_blobs = HashSet::new();
        let mut used_layers = HashSet::new();
        for image in self.read_records()? {
            used_blobs.insert(image.digest.clone());
            used_blobs.insert(image.config_digest.clone());
            for layer in image.layers {
                used_blobs.insert(layer.digest);
                used_layers.insert(layer.diff_id);
            }
        }
        let mut summary = RemoveSummary::default();
        let mut blobs: Vec<&str> = vec![&gone.digest, &gone.config_digest];
        blobs.extend(gone.layers.iter().map(|l| l.digest.as_str()));
        let mut seen = HashSet::new();
        for digest in blobs {
            if used_blobs.contains(digest) || self.pins.is_pinned(digest) || !seen.insert(digest) {
                continue;
            }
            let path = blob_path(&self.root, digest)?;
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                std::fs::remove_file(&path).map_err(io_error(format!("remove blob {digest}")))?;
                summary.bytes_freed += meta.len();
            }
        }
        let mounted = self.layers_in_use_by_sandboxes();
        let mut seen_layers = HashSet::new();
        for layer in &gone.layers {
            if used_layers.contains(&layer.diff_id)
                || self.pins.is_pinned(&layer.diff_id)
                || !seen_layers.insert(&layer.diff_id)
            {
                continue;
            }
            let dir = layer_dir(&self.root, &layer.diff_id)?;
            if mounted.contains(&dir) {
                // A sandbox runs on it; `sweep` frees it once that is gone.
                continue;
            }
            if dir.is_dir() {
                let size = disk_usage(&dir);
                std::fs::remove_dir_all(&dir)
                    .map_err(io_error(format!("remove layer {}", dir.display())))?;
                summary.bytes_freed += size;
                summary.layers_removed += 1;
            }
            remove_marker(&dir)?;
        }
        Ok(summary)
    }
}

impl ImageStore {
    /// Layer dirs that sandboxes are mounted on and snapshots stack on,
    /// from their `lowers.json`.
    fn layers_in_use_by_sandboxes(&self) -> HashSet<PathBuf> {
        #[derive(serde::Deserialize)]
        struct Lowers {
            lowers: Vec<PathBuf>,
        }
        let mut dirs = HashSet::new();
        let roots = [&self.sandboxes_dir, &self.snapshots_dir];
        let entries = roots
            .into_iter()
            .flatten()
            .filter_map(|root| std::fs::read_dir(root).ok())
            .flat_map(|entries| entries.flatten());
        for entry in entries {
            let Ok(bytes) = std::fs::read(entry.path().join("lowers.json")) else {
                continue;
            };
            if let Ok(record) = serde_json::from_slice::<Lowers>(&bytes) {
                // Compared with paths under the (canonical) store root.
                dirs.extend(
                    record
                        .lowers
                        .into_iter()
                        .map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
                );
            }
        }
        dirs
    }

    /// Deletes unpacked layers that no image record, import in flight or
    /// sandbox uses (layers kept for a sandbox after their image was
    /// removed or replaced, and leftovers of failed imports), and, when no
    /// import or pull is in flight, the blobs no image record references
    /// (left by failed imports and pulls).
    pub fn sweep(&self) -> Result<RemoveSummary, ImageError> {
        let _lock = self.lock_records();
        let records = self.read_records()?;
        let mut keep: HashSet<PathBuf> = self.layers_in_use_by_sandboxes();
        let mut used_blobs = HashSet::new();
        for image in &records {
            used_blobs.insert(image.digest.clone());
            used_blobs.insert(image.config_digest.clone());
            for layer in &image.layers {
                keep.insert(layer_dir(&self.root, &layer.diff_id)?);
                used_blobs.insert(layer.digest.clone());
            }
        }
        let mut summary = RemoveSummary::default();
        if let Ok(entries) = std::fs::read_dir(self.root.join("l")) {
            for entry in entries.flatten() {
                let path = entry.path();
                let is_marker = path.extension().is_some_and(|e| e == DIFF_ID_MARKER_EXT);
                let dir = if is_marker {
                    path.with_extension("")
                } else {
                    path
                };
                if keep.contains(&dir) || self.pins.pinned_layer_dir(&self.root, &dir) {
                    continue;
                }
                if is_marker {
                    // Removed with its dir, or alone when the dir is gone.
                    if std::fs::symlink_metadata(&dir).is_err() {
                        remove_marker(&dir)?;
                    }
                    continue;
                }
                let size = disk_usage(&dir);
                std::fs::remove_dir_all(&dir)
                    .map_err(io_error(format!("remove layer {}", dir.display())))?;
                remove_marker(&dir)?;
                summary.bytes_freed += size;
                summary.layers_removed += 1;
            }
        }
        // Imports and pulls pin their blobs only once they know them: with
        // one in flight, leave blobs alone.
        if self.pins.active() > 0 {
            return Ok(summary);
        }
        let blobs_dir = self.root.join("blobs/sha256");
        let Ok(entries) = std::fs::read_dir(&blobs_dir) else {
            return Ok(summary);
        };
        for entry in entries.flatten() {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if used_blobs.contains(&digest) || self.pins.is_pinned(&digest) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                continue;
            }
            std::fs::remove_file(&path)
                .map_err(io_error(format!("remove blob {}", path.display())))?;
            summary.bytes_freed += meta.len();
        }
        Ok(summary)
    }
}

/// Removes the diff_id marker of layer dir `dir`, if any.
fn remove_marker(dir: &Path) -> Result<(), ImageError> {
    let marker = layer_marker(dir);
    match std::fs::remove_file(&marker) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("remove {}", marker.display()))(e)),
    }
}

fn parse_record(path: &Path, bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Io {
        context: format!("parse image record {}", path.display()),
        source: std::io::Error::other(e),
    })
}

/// Bytes used by the regular files under `dir` (hard links counted once).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server runs these on tokio tasks: their futures must be Send.
    #[allow(dead_code)]
    fn futures_are_send(store: &ImageStore, archive: crate::files::ByteStream) {
        fn is_send<T: Send>(_: &T) {}
        is_send(&store.import(archive, "x", None));
        is_send(&store.pull("x", &super::super::PullOptions::default(), None));
    }
}
