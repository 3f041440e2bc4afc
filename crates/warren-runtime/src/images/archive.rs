//! `import`: OCI image layout and docker-archive tarballs (optionally
//! gzip/zstd compressed as a whole), and plain rootfs tarballs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::blobs::{
    blob_path, io_error, read_small_blob, store_bytes, temp_path, tmp_dir, BlobWriter, PinGuard,
    TempDir,
};
use super::oci::{
    choose_platform, ConfigFile, Descriptor, Manifest, ManifestDoc, RootFs, DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, REF_NAME_ANNOTATION,
};
use super::reference::normalize_name;
use super::store::report;
use super::{ImageError, ImageInfo, ImageProgress, ImageStore};
use crate::files::ByteStream;

/// Metadata files of the two archive formats, kept in memory.
const METADATA_FILES: [&str; 4] = ["oci-layout", "index.json", "manifest.json", "repositories"];

/// What reading an archive produced.
struct ImportedImage {
    manifest_digest: String,
    manifest: Manifest,
    config_bytes: Vec<u8>,
    /// Every blob stored on the way (some may be unused: other platforms,
    /// docker-archive's per-layer json files).
    stored: Vec<String>,
}

impl ImageStore {
    /// Imports an OCI image layout or docker-archive tarball (optionally
    /// gzip- or zstd-compressed as a whole), or a plain rootfs tarball (as a
    /// one-layer image with an empty config), under `name`. The archive is
    /// spooled to disk under the store, never held in memory.
    pub async fn import(
        &self,
        mut archive: ByteStream,
        name: &str,
        progress: Option<mpsc::UnboundedSender<ImageProgress>>,
    ) -> Result<ImageInfo, ImageError> {
        let name = normalize_name(name)?;
        tokio::fs::create_dir_all(tmp_dir(&self.root))
            .await
            .map_err(io_error("create image tmp dir"))?;
        let work = TempDir(temp_path(&self.root, "import"));
        tokio::fs::create_dir(&work.0)
            .await
            .map_err(io_error(format!("create {}", work.0.display())))?;
        let spool = work.0.join("archive");
        let mut file = tokio::fs::File::create(&spool)
            .await
            .map_err(io_error("create import spool file"))?;
        tokio::io::copy(&mut archive, &mut file)
            .await
            .map_err(io_error("receive image archive"))?;
        file.sync_all()
            .await
            .map_err(io_error("sync import spool file"))?;
        drop(file);

        let mut pins = self.pins.pin([]);
        let (root, work_dir, tag_name) = (self.root.clone(), work.0.clone(), name.clone());
        let (imported, returned_pins) = tokio::task::spawn_blocking(move || {
            let result = read_archive(&root, &work_dir, &tag_name, &mut pins);
            (result, pins)
        })
        .await
        .map_err(|e| ImageError::Io {
            context: "import task".to_string(),
            source: io::Error::other(e.to_string()),
        })?;
        let mut pins = returned_pins;
        let imported = match imported {
            Ok(imported) => imported,
            Err(e) => {
                drop(pins);
                return Err(e);
            }
        };
        drop(work);
        report(
            &progress,
            ImageProgress::Resolved {
                digest: imported.manifest_digest.clone(),
                layers: imported.manifest.layers.len(),
            },
        );
        let result = self
            .finish_image(
                &name,
                &imported.manifest_digest,
                &imported.manifest,
                &imported.config_bytes,
                &mut pins,
                &progress,
            )
            .await;
        drop(pins);
        self.discard_unused(&imported.stored)?;
        result
    }
}

/// Decompresses, inspects and stores the archive's blobs. Runs on a
/// blocking thread.
fn read_archive(
    root: &Path,
    work: &Path,
    name: &str,
    pins: &mut PinGuard,
) -> Result<ImportedImage, ImageError> {
    let spool = work.join("archive");
    let (tar_path, tar_digest) = decompress(&spool, &work.join("archive.tar"))?;

    // Pass 1: headers only, to tell the format apart.
    let mut names = Vec::new();
    {
        let file = File::open(&tar_path).map_err(io_error("open spooled archive"))?;
        let mut archive = tar::Archive::new(file);
        for entry in archive
            .entries_with_seek()
            .map_err(|e| ImageError::InvalidArchive(format!("not a tar archive: {e}")))?
        {
            let entry =
                entry.map_err(|e| ImageError::InvalidArchive(format!("bad tar entry: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| ImageError::InvalidArchive(e.to_string()))?;
            if let Some(p) = archive_path(&path) {
                names.push(p);
            }
        }
    }
    let has = |n: &str| names.iter().any(|p| p == n);
    let is_image = has("manifest.json") || (has("index.json") && has("oci-layout"));
    if !is_image {
        return rootfs_image(root, &tar_path, &tar_digest, pins);
    }

    // Pass 2: store every file as a blob, keep the metadata in memory.
    let mut metadata: HashMap<String, Vec<u8>> = HashMap::new();
    let mut files: HashMap<String, String> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut stored = Vec::new();
    let file = File::open(&tar_path).map_err(io_error("open spooled archive"))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    for entry in archive
        .entries()
        .map_err(|e| ImageError::InvalidArchive(format!("not a tar archive: {e}")))?
    {
        let mut entry =
            entry.map_err(|e| ImageError::InvalidArchive(format!("bad tar entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| ImageError::InvalidArchive(e.to_string()))?
            .into_owned();
        let Some(path) = archive_path(&raw) else {
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let is_symlink = entry.header().entry_type() == tar::EntryType::Symlink;
                if let Ok(Some(target)) = entry.link_name() {
                    let base = if is_symlink {
                        Path::new(&path)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(&target)
                    } else {
                        target.into_owned()
                    };
                    if let Some(resolved) = archive_path(&base) {
                        links.insert(path, resolved);
                    }
                }
                continue;
            }
            _ => continue,
        }
        if METADATA_FILES.contains(&path.as_str()) {
            if entry.size() > MAX_MANIFEST_BYTES {
                return Err(ImageError::InvalidArchive(format!("{path} is too big")));
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(io_error(format!("read {path}")))?;
            metadata.insert(path, bytes);
            continue;
        }
        let expected = path
            .strip_prefix("blobs/sha256/")
            .map(|hex| format!("sha256:{hex}"));
        let mut writer = BlobWriter::create(root)?;
        io::copy(&mut entry, &mut writer).map_err(io_error(format!("store {path}")))?;
        // Pinned before it lands, so a concurrent GC cannot take it.
        pins.add([writer.digest()]);
        let (digest, _) = writer.commit(expected.as_deref())?;
        stored.push(digest.clone());
        files.insert(path, digest);
    }
    let lookup = |path: &str| -> Result<String, ImageError> {
        let mut p = archive_path(Path::new(path))
            .ok_or_else(|| ImageError::InvalidArchive(format!("bad path {path}")))?;
        for _ in 0..16 {
            if let Some(d) = files.get(&p) {
                return Ok(d.clone());
            }
            match links.get(&p) {
                Some(next) => p = next.clone(),
                None => break,
            }
        }
        Err(ImageError::InvalidArchive(format!(
            "{path} is missing from the archive"
        )))
    };

    let (manifest_digest, manifest) = if let (Some(index), true) = (
        metadata.get("index.json"),
        metadata.contains_key("oci-layout"),
    ) {
        oci_layout_manifest(root, index, name)?
    } else if let Some(docker) = metadata.get("manifest.json") {
        docker_archive_manifest(root, docker, name, &lookup, pins, &mut stored)?
    } else {
        return Err(ImageError::InvalidArchive(
            "index.json without oci-layout".to_string(),
        ));
    };
    let config_bytes = read_small_blob(root, &manifest.config.digest)?;
    for layer in &manifest.layers {
        if !blob_path(root, &layer.digest)?.exists() {
            return Err(ImageError::InvalidArchive(format!(
                "layer {} is missing",
                layer.digest
            )));
        }
    }
    Ok(ImportedImage {
        manifest_digest,
        manifest,
        config_bytes,
        stored,
    })
}

/// Follows an OCI layout's index (and nested indexes) to one manifest.
fn oci_layout_manifest(
    root: &Path,
    index_json: &[u8],
    name: &str,
) -> Result<(String, Manifest), ImageError> {
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let mut doc = ManifestDoc::parse(index_json, super::oci::OCI_INDEX)?;
    for _ in 0..8 {
        let index = match doc {
            ManifestDoc::Index(index) => index,
            ManifestDoc::Manifest(_) => {
                return Err(ImageError::InvalidArchive(
                    "index.json is not an index".to_string(),
                ))
            }
        };
        let named = index.manifests.iter().find(|d| {
            d.annotations
                .get(REF_NAME_ANNOTATION)
                .is_some_and(|r| r == tag || r == name)
        });
        let chosen = named
            .or_else(|| choose_platform(&index.manifests))
            .or(match index.manifests.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .ok_or_else(|| ImageError::NoMatchingPlatform("the archive's index".to_string()))?
            .clone();
        let bytes = read_small_blob(root, &chosen.digest)?;
        match ManifestDoc::parse(&bytes, &chosen.media_type)? {
            ManifestDoc::Manifest(m) => return Ok((chosen.digest, m)),
            nested => doc = nested,
        }
    }
    Err(ImageError::InvalidArchive(
        "indexes nested too deeply".to_string(),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Builds (and stores) a Docker schema 2 manifest for a docker-archive.
fn docker_archive_manifest(
    root: &Path,
    manifest_json: &[u8],
    name: &str,
    lookup: &dyn Fn(&str) -> Result<String, ImageError>,
    pins: &mut PinGuard,
    stored: &mut Vec<String>,
) -> Result<(String, Manifest), ImageError> {
    let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(manifest_json)
        .map_err(|e| ImageError::InvalidArchive(format!("bad manifest.json: {e}")))?;
    let entry = entries
        .iter()
        .find(|e| {
            e.repo_tags
                .iter()
                .flatten()
                .any(|t| normalize_name(t).is_ok_and(|t| t == name))
        })
        .or(entries.first())
        .ok_or_else(|| ImageError::InvalidArchive("manifest.json lists no image".to_string()))?;
    let descriptor = |media_type: &str, digest: String| -> Result<Descriptor, ImageError> {
        let size = std::fs::metadata(blob_path(root, &digest)?)
            .map_err(io_error(format!("stat blob {digest}")))?
            .len();
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: Default::default(),
        })
    };
    let config = descriptor(
        "application/vnd.docker.container.image.v1+json",
        lookup(&entry.config)?,
    )?;
    let layers = entry
        .layers
        .iter()
        .map(|l| descriptor("application/vnd.docker.image.rootfs.diff.tar", lookup(l)?))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: DOCKER_MANIFEST.to_string(),
        config,
        layers,
    };
    let digest = store_bytes(root, &to_json(&manifest)?)?;
    pins.add([digest.clone()]);
    stored.push(digest.clone());
    Ok((digest, manifest))
}

/// A tarball without image metadata: one layer (the tar itself) and an
/// empty linux/amd64 config.
fn rootfs_image(
    root: &Path,
    tar_path: &Path,
    tar_digest: &str,
    pins: &mut PinGuard,
) -> Result<ImportedImage, ImageError> {
    let size = std::fs::metadata(tar_path)
        .map_err(io_error("stat rootfs tar"))?
        .len();
    pins.add([tar_digest.to_string()]);
    BlobWriter::commit_file(root, tar_path, tar_digest)?;
    let config = ConfigFile {
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
        created: None,
        config: None,
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![tar_digest.to_string()],
        },
    };
    let config_bytes = to_json(&config)?;
    let config_digest = store_bytes(root, &config_bytes)?;
    pins.add([config_digest.clone()]);
    let manifest = Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.to_string(),
        config: Descriptor {
            media_type: OCI_CONFIG.to_string(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
        layers: vec![Descriptor {
            media_type: OCI_LAYER_TAR.to_string(),
            digest: tar_digest.to_string(),
            size,
            platform: None,
            annotations: Default::default(),
        }],
    };
    let manifest_digest = store_bytes(root, &to_json(&manifest)?)?;
    pins.add([manifest_digest.clone()]);
    Ok(ImportedImage {
        manifest_digest: manifest_digest.clone(),
        manifest,
        config_bytes,
        stored: vec![tar_digest.to_string(), config_digest, manifest_digest],
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError::Io {
        context: "encode image json".to_string(),
        source: io::Error::other(e),
    })
}

/// Decompresses `spool` (gzip or zstd, by magic bytes) into `plain`, or
/// uses it as is; returns the tar's path and sha256.
fn decompress(spool: &Path, plain: &Path) -> Result<(PathBuf, String), ImageError> {
    let mut file = File::open(spool).map_err(io_error("open spooled archive"))?;
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .map_err(io_error("read spooled archive"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_error("rewind spooled archive"))?;
    let mut reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(io_error("start zstd"))?)
        }
        _ => {
            let mut hasher = Sha256::new();
            let mut reader = BufReader::new(file);
            io::copy(&mut reader, &mut HashWriter(&mut hasher))
                .map_err(io_error("hash archive"))?;
            return Ok((
                spool.to_path_buf(),
                format!("sha256:{}", hex::encode(hasher.finalize())),
            ));
        }
    };
    let mut out = File::create_new(plain).map_err(io_error("create decompressed archive"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ImageError::InvalidArchive(format!("decompress: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io_error("write decompressed archive"))?;
    }
    drop(reader);
    let _ = std::fs::remove_file(spool);
    Ok((
        plain.to_path_buf(),
        format!("sha256:{}", hex::encode(hasher.finalize())),
    ))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An archive member path as `a/b/c` (leading `./` dropped, `..` resolved
/// lexically); `None` for the root or paths leaving the archive.
fn archive_path(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => parts.push(c.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl ImageStore {
    /// Deletes blobs an import stored that no image ended up using.
    fn discard_unused(&self, stored: &[String]) -> Result<(), ImageError> {
        let _lock = self.lock_records();
        let images = self.list()?;
        for digest in stored {
            let used = images.iter().any(|i| {
                i.digest == *digest
                    || i.config_digest == *digest
                    || i.layers.iter().any(|l| l.digest == *digest)
            });
            if !used && !self.pins.is_pinned(digest) {
                let _ = std::fs::remove_file(blob_path(&self.root, digest)?);
            }
        }
        Ok(())
    }
}
