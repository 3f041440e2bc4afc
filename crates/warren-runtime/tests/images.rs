#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The image store against real archives and a real registry: OCI layouts
//! and docker-archives built here from busybox, whiteouts, opaque dirs,
//! owner shift, layer sharing and garbage collection; pulls from a local
//! `docker-registry` fed by `skopeo`.

mod support;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use warren_runtime::images::{ImageError, ImageInfo, ImageStore, PullOptions};
use warren_runtime::ByteStream;

const ID_BASE: u32 = 300_000;
const ID_COUNT: u32 = 65_536;
const BUSYBOX: &str = "/bin/busybox";

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn skip_unless_root() -> bool {
    if !support::is_root() {
        eprintln!("skipping: needs root (mknod, trusted xattrs, chown)");
        return true;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipping: {BUSYBOX} missing (Debian package busybox-static)");
        return true;
    }
    false
}

/// One tar entry of a test layer.
enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, Vec<u8>, u32, (u64, u64)),
    Symlink(&'a str, &'a str),
}

fn layer_tar(items: &[Item<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match item {
            Item::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Item::File(path, data, mode, (uid, gid)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            Item::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Base layer: busybox, a user-owned file, a dir with two files.
fn base_layer() -> Vec<u8> {
    layer_tar(&[
        Item::Dir("bin", 0o755),
        Item::File(
            "bin/busybox",
            std::fs::read(BUSYBOX).unwrap(),
            0o755,
            (0, 0),
        ),
        Item::Symlink("bin/sh", "busybox"),
        Item::Dir("etc", 0o755),
        Item::File("etc/hostname", b"base\n".to_vec(), 0o644, (0, 0)),
        Item::File(
            "etc/passwd",
            b"root:x:0:0::/:/bin/sh\n".to_vec(),
            0o644,
            (0, 0),
        ),
        Item::Dir("home", 0o755),
        Item::File("home/user.txt", b"mine\n".to_vec(), 0o600, (1000, 1000)),
        Item::File("home/suid", b"#!/bin/sh\n".to_vec(), 0o4755, (0, 0)),
        Item::Dir("data", 0o755),
        Item::File("data/a", b"a".to_vec(), 0o644, (0, 0)),
        Item::File("data/b", b"b".to_vec(), 0o644, (0, 0)),
    ])
}

/// Second layer: deletes etc/hostname, makes data/ opaque with a new file.
fn top_layer() -> Vec<u8> {
    layer_tar(&[
        Item::Dir("etc", 0o755),
        Item::File("etc/.wh.hostname", Vec::new(), 0o644, (0, 0)),
        Item::Dir("data", 0o755),
        Item::File("data/.wh..wh..opq", Vec::new(), 0o644, (0, 0)),
        Item::File("data/new", b"new".to_vec(), 0o644, (0, 0)),
    ])
}

/// A built image: blobs by digest plus the documents.
struct TestImage {
    blobs: Vec<(String, Vec<u8>)>,
    manifest_digest: String,
    manifest: Vec<u8>,
    config_digest: String,
    diff_ids: Vec<String>,
    /// Uncompressed layer tars (docker-archive wants those).
    tars: Vec<Vec<u8>>,
    config: Vec<u8>,
}

/// Builds an image from layer tars (compressed with gzip when asked).
fn build_image(arch: &str, tars: Vec<Vec<u8>>, gzip_layers: bool) -> TestImage {
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/home", "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let mut blobs = vec![(sha(&config), config.clone())];
    let mut layers = Vec::new();
    for tar in &tars {
        let (blob, media_type) = if gzip_layers {
            (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        layers.push(json!({"mediaType": media_type, "digest": sha(&blob), "size": blob.len()}));
        blobs.push((sha(&blob), blob));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    blobs.push((sha(&manifest), manifest.clone()));
    TestImage {
        blobs,
        manifest_digest: sha(&manifest),
        config_digest: sha(&config),
        manifest,
        diff_ids,
        tars,
        config,
    }
}

/// The standard two-layer busybox image.
fn busybox_image() -> TestImage {
    build_image("amd64", vec![base_layer(), top_layer()], true)
}

fn descriptor(image: &TestImage, arch: Option<&str>, ref_name: Option<&str>) -> serde_json::Value {
    let mut d = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.manifest_digest,
        "size": image.manifest.len(),
    });
    if let Some(arch) = arch {
        d["platform"] = json!({"architecture": arch, "os": "linux"});
    }
    if let Some(r) = ref_name {
        d["annotations"] = json!({"org.opencontainers.image.ref.name": r});
    }
    d
}

/// Writes an OCI layout directory. `index` is the top-level index.json;
/// `extra` are more blobs (nested indexes).
/// An OCI layout tagged `latest` whose index nests an index of an arm64
/// and an amd64 (busybox) image; returns (amd64, arm64).
fn write_multi_arch_layout(dir: &Path) -> (TestImage, TestImage) {
    let amd = busybox_image();
    let arm = build_image(
        "arm64",
        vec![layer_tar(&[Item::File(
            "arm",
            b"x".to_vec(),
            0o644,
            (0, 0),
        )])],
        true,
    );
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor(&arm, Some("arm64"), None), descriptor(&amd, Some("amd64"), None)],
    }))
    .unwrap();
    let outer = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": sha(&inner), "size": inner.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }]});
    write_layout(dir, &[&amd, &arm], outer, &[inner]);
    (amd, arm)
}

fn write_layout(dir: &Path, images: &[&TestImage], index: serde_json::Value, extra: &[Vec<u8>]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let all = images
        .iter()
        .flat_map(|i| i.blobs.iter().map(|(_, b)| b.clone()))
        .chain(extra.iter().cloned());
    for blob in all {
        let hex = sha(&blob)["sha256:".len()..].to_string();
        std::fs::write(dir.join("blobs/sha256").join(hex), blob).unwrap();
    }
}

fn single_index(image: &TestImage) -> serde_json::Value {
    json!({"schemaVersion": 2, "manifests": [descriptor(image, None, Some("latest"))]})
}

/// Tars up a directory (paths relative to it).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// `docker save` style archive of `image` (plain layer tars, symlinked
/// duplicate layer like old docker versions).
fn docker_archive(image: &TestImage) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    };
    let config_name = format!("{}.json", &image.config_digest["sha256:".len()..]);
    add(&config_name, &image.config);
    let mut layers = Vec::new();
    for (i, tar) in image.tars.iter().enumerate() {
        let path = format!("layer{i}/layer.tar");
        add(&path, tar);
        add(&format!("layer{i}/VERSION"), b"1.0");
        layers.push(path);
    }
    let manifest =
        json!([{"Config": config_name, "RepoTags": ["test/busybox:latest"], "Layers": layers}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("repositories", b"{}");
    b.into_inner().unwrap()
}

fn stream(bytes: Vec<u8>) -> ByteStream {
    Box::pin(std::io::Cursor::new(bytes))
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and a buffer of the given length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.insert(rel);
        }
    }
    out
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The layer dirs in `l/`, checking each has its `.diffid` marker and no
/// marker is left without its dir.
fn count_layers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let (mut dirs, mut markers) = (BTreeSet::new(), BTreeSet::new());
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "diffid") {
            markers.insert(path.with_extension(""));
        } else {
            dirs.insert(path);
        }
    }
    assert_eq!(dirs, markers, "layer dirs and diff_id markers differ");
    dirs.len()
}

/// Checks the unpacked busybox image: contents, whiteout, opaque dir,
/// owner shift, setuid.
fn check_busybox_layers(store: &ImageStore, info: &ImageInfo) {
    let dirs = store.layer_dirs(info).unwrap();
    assert_eq!(dirs.len(), 2);
    let (top, base) = (&dirs[0], &dirs[1]);
    assert!(
        top.to_string_lossy().len() < store.root().to_string_lossy().len() + 24,
        "short layer path {}",
        top.display()
    );
    assert_eq!(
        std::fs::read(base.join("bin/busybox")).unwrap(),
        std::fs::read(BUSYBOX).unwrap()
    );
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(base.join("etc/hostname").is_file());
    assert!(files_under(top).contains("data/new"));
    assert!(
        !files_under(top).iter().any(|f| f.contains(".wh.")),
        "{:?}",
        files_under(top)
    );

    let wh = std::fs::symlink_metadata(top.join("etc/hostname")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(wh.rdev(), 0, "whiteout is 0:0");
    assert_eq!(
        xattr(&top.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&top.join("data"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&base.join("data"), "trusted.overlay.opaque"), None);

    let user = std::fs::symlink_metadata(base.join("home/user.txt")).unwrap();
    assert_eq!((user.uid(), user.gid()), (ID_BASE + 1000, ID_BASE + 1000));
    assert_eq!(user.mode() & 0o7777, 0o600);
    let bb = std::fs::symlink_metadata(base.join("bin/busybox")).unwrap();
    assert_eq!((bb.uid(), bb.gid()), (ID_BASE, ID_BASE));
    assert_eq!(bb.mtime(), 1_700_000_000);
    let suid = std::fs::symlink_metadata(base.join("home/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);
}

#[tokio::test]
async fn oci_layout_and_docker_archive_import_share_layers_and_gc() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let image = busybox_image();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[&image], single_index(&image), &[]);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let info = store
        .import(stream(tar_dir(&layout)), "test/busybox", Some(tx))
        .await
        .unwrap();
    assert_eq!(info.name, "test/busybox:latest");
    assert_eq!(info.digest, image.manifest_digest);
    assert_eq!(info.config_digest, image.config_digest);
    assert_eq!(
        info.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>(),
        image.diff_ids
    );
    assert_eq!(
        (info.architecture.as_str(), info.os.as_str()),
        ("amd64", "linux")
    );
    assert_eq!(info.config.cmd, vec!["/bin/sh"]);
    assert_eq!(info.config.user.as_deref(), Some("1000"));
    assert_eq!(info.config.working_dir.as_deref(), Some("/home"));
    assert_eq!(info.size, info.layers.iter().map(|l| l.size).sum::<u64>());
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(
        matches!(
            events.first(),
            Some(warren_runtime::images::ImageProgress::Resolved { layers: 2, .. })
        ),
        "{events:?}"
    );
    check_busybox_layers(&store, &info);

    // Lookups.
    assert_eq!(store.get("test/busybox").unwrap(), info);
    assert_eq!(store.get(&info.digest).unwrap(), info);
    assert_eq!(
        store.get(&info.digest["sha256:".len()..][..12]).unwrap(),
        info
    );
    assert!(matches!(
        store.get("test/other"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        store.get(&info.digest["sha256:".len()..][..8]),
        Err(ImageError::NotFound(_))
    ));

    // The same image as a gzipped docker-archive under another name: the
    // unpacked layers are shared (same diff_ids).
    let docker = store
        .import(
            stream(gzip(&docker_archive(&image))),
            "test/busybox-docker:v1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(docker.config_digest, image.config_digest);
    assert_eq!(
        docker
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>(),
        image.diff_ids,
        "docker layers are plain tars"
    );
    check_busybox_layers(&store, &docker);
    assert_eq!(
        store.layer_dirs(&docker).unwrap(),
        store.layer_dirs(&info).unwrap()
    );
    let layers_dir = store.root().join("l");
    assert_eq!(count_layers(&layers_dir), 2, "each layer unpacked once");

    // A third image sharing only the base layer.
    let other = build_image(
        "amd64",
        vec![
            base_layer(),
            layer_tar(&[Item::File("extra", b"x".to_vec(), 0o644, (0, 0))]),
        ],
        false,
    );
    let other_layout = tmp.path().join("other");
    write_layout(&other_layout, &[&other], single_index(&other), &[]);
    let third = store
        .import(stream(tar_dir(&other_layout)), "test/other", None)
        .await
        .unwrap();
    assert_eq!(count_layers(&layers_dir), 3);
    assert_eq!(
        store
            .list()
            .unwrap()
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        vec![
            "test/busybox-docker:v1",
            "test/busybox:latest",
            "test/other:latest"
        ]
    );

    // Removing keeps what others use.
    let freed = store.remove("test/busybox-docker:v1").unwrap();
    assert_eq!(freed.layers_removed, 0);
    assert!(freed.bytes_freed > 0, "docker-only blobs freed: {freed:?}");
    check_busybox_layers(&store, &info);
    let freed = store.remove("test/busybox").unwrap();
    assert_eq!(freed.layers_removed, 1, "the top layer only");
    assert!(store.layer_dirs(&third).is_ok());
    assert_eq!(count_layers(&layers_dir), 2);
    let freed = store.remove(&third.digest).unwrap();
    assert_eq!(freed.layers_removed, 2);
    assert_eq!(count_layers(&layers_dir), 0);
    assert_eq!(
        count_entries(&store.root().join("blobs/sha256")),
        0,
        "all blobs freed"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        count_entries(&store.root().join("tmp")),
        0,
        "no temp leftovers"
    );
}

#[tokio::test]
async fn reimport_replaces_and_collects_old_layers() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let first = build_image(
        "amd64",
        vec![layer_tar(&[Item::File("v", b"1".to_vec(), 0o644, (0, 0))])],
        true,
    );
    let second = build_image(
        "amd64",
        vec![layer_tar(&[Item::File("v", b"2".to_vec(), 0o644, (0, 0))])],
        true,
    );
    for (i, image) in [&first, &second].into_iter().enumerate() {
        let dir = tmp.path().join(format!("l{i}"));
        write_layout(&dir, &[image], single_index(image), &[]);
        let info = store
            .import(stream(tar_dir(&dir)), "app", None)
            .await
            .unwrap();
        assert_eq!(info.digest, image.manifest_digest);
    }
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        count_layers(&store.root().join("l")),
        1,
        "old layer collected"
    );
    let info = store.get("app:latest").unwrap();
    let dir = &store.layer_dirs(&info).unwrap()[0];
    assert_eq!(std::fs::read(dir.join("v")).unwrap(), b"2");
    // manifest + config + layer of the second image only
    assert_eq!(count_entries(&store.root().join("blobs/sha256")), 3);
}

#[tokio::test]
async fn rootfs_tarball_nested_index_and_bad_archives() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();

    // A plain rootfs tarball (`tar -C rootfs .`), gzipped.
    let rootfs = layer_tar(&[
        Item::Dir("./", 0o755),
        Item::Dir("./bin", 0o755),
        Item::File(
            "./bin/busybox",
            std::fs::read(BUSYBOX).unwrap(),
            0o755,
            (0, 0),
        ),
    ]);
    let info = store
        .import(stream(gzip(&rootfs)), "debian/rootfs", None)
        .await
        .unwrap();
    assert_eq!(info.layers.len(), 1);
    assert_eq!(info.layers[0].diff_id, sha(&rootfs));
    assert_eq!(info.config, Default::default());
    let dir = &store.layer_dirs(&info).unwrap()[0];
    assert!(dir.join("bin/busybox").is_file());

    // Nested index with two platforms: amd64 is chosen.
    let layout = tmp.path().join("multi");
    let (amd, arm) = write_multi_arch_layout(&layout);
    let info = store
        .import(stream(tar_dir(&layout)), "multi", None)
        .await
        .unwrap();
    assert_eq!(info.digest, amd.manifest_digest);
    assert_eq!(info.architecture, "amd64");
    // The arm64 blobs and the nested index were not kept.
    for (digest, _) in &arm.blobs {
        let hex = &digest["sha256:".len()..];
        assert!(
            !store.root().join("blobs/sha256").join(hex).exists(),
            "unused {digest} kept"
        );
    }

    // Corrupt blob: content does not match its name.
    let bad = tmp.path().join("bad");
    write_layout(&bad, &[&amd], single_index(&amd), &[]);
    let victim = bad
        .join("blobs/sha256")
        .join(&amd.config_digest["sha256:".len()..]);
    std::fs::write(&victim, b"{}").unwrap();
    let err = store
        .import(stream(tar_dir(&bad)), "bad", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch(_)), "{err}");
    assert!(matches!(store.get("bad"), Err(ImageError::NotFound(_))));

    // Not a tar at all.
    let err = store
        .import(stream(b"hello".repeat(200)), "junk", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidArchive(_)), "{err}");
    // Reserved and invalid names.
    assert!(matches!(
        store.import(stream(rootfs.clone()), "host", None).await,
        Err(ImageError::InvalidReference(_))
    ));
    assert!(matches!(
        store.import(stream(rootfs), "Upper", None).await,
        Err(ImageError::InvalidReference(_))
    ));
    assert_eq!(
        count_entries(&store.root().join("tmp")),
        0,
        "no temp leftovers"
    );
}

// ---------------------------------------------------------------- registry

/// A `docker-registry` process, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_tools_missing() -> bool {
    for tool in ["/usr/bin/docker-registry", "/usr/bin/skopeo"] {
        if !Path::new(tool).exists() {
            eprintln!("skipping: {tool} missing (Debian packages docker-registry, skopeo)");
            return true;
        }
    }
    false
}

fn start_registry(htpasswd: Option<&str>) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = dir.path().join("storage");
    let mut config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    );
    if let Some(line) = htpasswd {
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("{line}\n")).unwrap();
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: warren-test\n    path: {}\n",
            path.display()
        ));
    }
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "registry did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    registry
}

fn skopeo_copy(layout: &Path, tag: &str, dest: &str, all: bool, creds: Option<&str>) {
    let mut cmd = Command::new("/usr/bin/skopeo");
    cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
    if all {
        cmd.arg("--all");
    }
    if let Some(creds) = creds {
        cmd.args(["--dest-creds", creds]);
    }
    let out = cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn layer_files(store: &ImageStore, info: &ImageInfo) -> Vec<BTreeSet<String>> {
    store
        .layer_dirs(info)
        .unwrap()
        .iter()
        .map(|d| files_under(d))
        .collect()
}

#[tokio::test]
async fn pull_from_a_local_registry() {
    if skip_unless_root() || registry_tools_missing() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = start_registry(None);
    let host = format!("127.0.0.1:{}", registry.port);

    // The busybox image, pushed and pulled back.
    let image = busybox_image();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[&image], single_index(&image), &[]);
    skopeo_copy(
        &layout,
        "latest",
        &format!("{host}/test/busybox:latest"),
        false,
        None,
    );

    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let local = store
        .import(stream(tar_dir(&layout)), "local/busybox", None)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pulled = store
        .pull(
            &format!("{host}/test/busybox"),
            &PullOptions::default(),
            Some(tx),
        )
        .await
        .unwrap();
    assert_eq!(pulled.name, format!("{host}/test/busybox:latest"));
    assert_eq!(pulled.config_digest, image.config_digest);
    assert_eq!(
        pulled
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>(),
        image.diff_ids
    );
    check_busybox_layers(&store, &pulled);
    assert_eq!(layer_files(&store, &pulled), layer_files(&store, &local));
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    use warren_runtime::images::ImageProgress;
    assert!(
        matches!(
            events.first(),
            Some(ImageProgress::Resolved { layers: 2, .. })
        ),
        "{events:?}"
    );
    if pulled
        .layers
        .iter()
        .zip(&local.layers)
        .all(|(a, b)| a.digest == b.digest)
    {
        // skopeo kept the blobs: the layers were already in the store.
        let exists = events
            .iter()
            .filter(|e| matches!(e, ImageProgress::LayerExists { .. }))
            .count();
        assert_eq!(exists, 2, "{events:?}");
    }

    // Pull by digest, into a fresh store so the layers are downloaded.
    let fresh = ImageStore::open(tmp.path().join("fresh"), ID_BASE, ID_COUNT).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let by_digest = fresh
        .pull(
            &format!("{host}/test/busybox@{}", pulled.digest),
            &PullOptions::default(),
            Some(tx),
        )
        .await
        .unwrap();
    assert_eq!(by_digest.digest, pulled.digest);
    assert_eq!(
        by_digest.name,
        format!(
            "{host}/test/busybox:sha256-{}",
            &pulled.digest["sha256:".len()..]
        )
    );
    check_busybox_layers(&fresh, &by_digest);
    let mut layer_events = 0;
    while let Ok(e) = rx.try_recv() {
        if let ImageProgress::Layer { done, total, .. } = e {
            layer_events += 1;
            assert!(total.is_some_and(|t| done <= t));
        }
    }
    assert!(layer_events >= 2, "progress for each downloaded layer");

    // Multi-arch: amd64 is chosen.
    let multi = tmp.path().join("multi");
    let (amd, _arm) = write_multi_arch_layout(&multi);
    skopeo_copy(
        &multi,
        "latest",
        &format!("{host}/test/multi:latest"),
        true,
        None,
    );
    let info = store
        .pull(
            &format!("{host}/test/multi:latest"),
            &PullOptions::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(info.architecture, "amd64");
    assert_eq!(info.digest, amd.manifest_digest);

    // A missing tag and a wrong digest.
    let err = store
        .pull(
            &format!("{host}/test/busybox:nope"),
            &PullOptions::default(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("test/busybox:nope"), "{err}");
    let err = store
        .pull(
            &format!("{host}/test/nothing"),
            &PullOptions::default(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");

    // An unreachable registry.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = store
        .pull(
            &format!("127.0.0.1:{closed}/x/y"),
            &PullOptions::default(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("cannot reach registry 127.0.0.1:{closed}")),
        "{err}"
    );
    drop(registry);
}

#[tokio::test]
async fn pull_with_basic_auth() {
    if skip_unless_root() || registry_tools_missing() {
        return;
    }
    let hash = bcrypt::hash_with_result("s3cret", 5)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let registry = start_registry(Some(&format!("warren:{hash}")));
    let host = format!("127.0.0.1:{}", registry.port);
    let tmp = tempfile::tempdir().unwrap();
    let image = busybox_image();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[&image], single_index(&image), &[]);
    skopeo_copy(
        &layout,
        "latest",
        &format!("{host}/private/bb:latest"),
        false,
        Some("warren:s3cret"),
    );

    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let reference = format!("{host}/private/bb");
    let err = store
        .pull(&reference, &PullOptions::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized(_)), "{err}");
    let wrong = PullOptions {
        username: Some("warren".into()),
        password: Some("wrong".into()),
        ..Default::default()
    };
    let err = store.pull(&reference, &wrong, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized(_)), "{err}");
    let right = PullOptions {
        username: Some("warren".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let info = store.pull(&reference, &right, None).await.unwrap();
    check_busybox_layers(&store, &info);
}

/// State of the bearer-token front of a registry.
struct TokenFront {
    upstream: String,
    realm: String,
    http: reqwest::Client,
    tokens_issued: std::sync::atomic::AtomicUsize,
}

const TOKEN: &str = "tok-123";
/// base64("warren:s3cret")
const GOOD_BASIC: &str = "Basic d2FycmVuOnMzY3JldA==";

/// Docker Hub style authentication in front of a real registry: 401 with a
/// Bearer challenge, a token endpoint taking basic credentials, then the
/// request forwarded with the token.
async fn token_front(
    axum::extract::State(front): axum::extract::State<std::sync::Arc<TokenFront>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let auth = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if request.uri().path() == "/token" {
        let query = request.uri().query().unwrap_or("");
        let scope_ok = query.contains("scope=repository%3Aprivate%2Fbb%3Apull")
            && query.contains("service=test-registry");
        if auth != GOOD_BASIC || !scope_ok {
            return (StatusCode::UNAUTHORIZED, r#"{"details":"bad credentials"}"#).into_response();
        }
        front
            .tokens_issued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return axum::Json(json!({"token": TOKEN})).into_response();
    }
    if auth != format!("Bearer {TOKEN}") {
        let challenge = format!(
            r#"Bearer realm="{}",service="test-registry",scope="repository:private/bb:pull""#,
            front.realm
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
            .into_response();
    }
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut forward = front.http.get(format!("{}{path}", front.upstream));
    if let Some(accept) = request.headers().get(header::ACCEPT) {
        forward = forward.header(header::ACCEPT, accept.as_bytes());
    }
    let response = forward.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.bytes().await.unwrap();
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[tokio::test]
async fn pull_with_bearer_token() {
    if skip_unless_root() || registry_tools_missing() {
        return;
    }
    let registry = start_registry(None);
    let upstream = format!("127.0.0.1:{}", registry.port);
    let tmp = tempfile::tempdir().unwrap();
    let image = busybox_image();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[&image], single_index(&image), &[]);
    skopeo_copy(
        &layout,
        "latest",
        &format!("{upstream}/private/bb:latest"),
        false,
        None,
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let front = std::sync::Arc::new(TokenFront {
        upstream: format!("http://{upstream}"),
        realm: format!("http://127.0.0.1:{port}/token"),
        http: reqwest::Client::new(),
        tokens_issued: Default::default(),
    });
    let app = axum::Router::new()
        .fallback(token_front)
        .with_state(front.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let reference = format!("127.0.0.1:{port}/private/bb:latest");
    let err = store
        .pull(&reference, &PullOptions::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("bad credentials"), "{err}");
    let creds = PullOptions {
        username: Some("warren".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let info = store.pull(&reference, &creds, None).await.unwrap();
    assert_eq!(info.config_digest, image.config_digest);
    check_busybox_layers(&store, &info);
    assert!(
        front
            .tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    server.abort();
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_imports_of_the_same_layers() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let image = busybox_image();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[&image], single_index(&image), &[]);
    let archive = tar_dir(&layout);
    let docker = docker_archive(&image);
    let (a, b, c) = tokio::join!(
        store.import(stream(archive.clone()), "one", None),
        store.import(stream(archive), "two", None),
        store.import(stream(docker), "three", None),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.digest, b.digest);
    for info in [&a, &b, &c] {
        check_busybox_layers(&store, info);
    }
    assert_eq!(count_layers(&store.root().join("l")), 2);
    assert_eq!(count_entries(&store.root().join("tmp")), 0);
    for name in ["one", "two", "three"] {
        store.remove(name).unwrap();
    }
    assert_eq!(count_layers(&store.root().join("l")), 0);
    assert_eq!(count_entries(&store.root().join("blobs/sha256")), 0);
}

/// What the hostile registry below serves.
struct EvilRegistry {
    manifest: Vec<u8>,
    config: Vec<u8>,
    config_digest: String,
    realm_challenge: String,
}

/// A registry that misbehaves: `evil/bigblob` declares a 10-byte layer and
/// sends endless bytes for it, `evil/errbody` answers with an endless
/// error body, `evil/httprealm` asks for a token from a plain-http realm.
async fn evil_registry(
    axum::extract::State(evil): axum::extract::State<std::sync::Arc<EvilRegistry>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let endless = || {
        axum::body::Body::from_stream(futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024])
        }))
    };
    let path = request.uri().path().to_string();
    if path.starts_with("/v2/evil/errbody/") {
        return (StatusCode::INTERNAL_SERVER_ERROR, endless()).into_response();
    }
    if path.starts_with("/v2/evil/httprealm/") {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, evil.realm_challenge.clone())],
            "",
        )
            .into_response();
    }
    if path == "/v2/evil/bigblob/manifests/latest" {
        return (
            [(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            )],
            evil.manifest.clone(),
        )
            .into_response();
    }
    if path == format!("/v2/evil/bigblob/blobs/{}", evil.config_digest) {
        return evil.config.clone().into_response();
    }
    if path.starts_with("/v2/evil/bigblob/blobs/") {
        return endless().into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

#[tokio::test]
async fn hostile_registry_is_cut_off_and_sweep_frees_its_blobs() {
    if skip_unless_root() {
        return;
    }
    let image = build_image("amd64", vec![layer_tar(&[Item::Dir("etc", 0o755)])], true);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": image.config_digest, "size": image.config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(b"0123456789"), "size": 10}],
    }))
    .unwrap();
    let evil = std::sync::Arc::new(EvilRegistry {
        manifest,
        config: image.config.clone(),
        config_digest: image.config_digest.clone(),
        realm_challenge: r#"Bearer realm="http://auth.warren-test.invalid/token",service="x""#
            .to_string(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(evil_registry).with_state(evil);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    struct Abort(tokio::task::JoinHandle<std::io::Result<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _server = Abort(server);

    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let opts = PullOptions::default();

    // A blob longer than its descriptor: cut off, nothing kept.
    let reference = format!("127.0.0.1:{port}/evil/bigblob");
    let pull = store.pull(&reference, &opts, None);
    let err = tokio::time::timeout(Duration::from_secs(60), pull)
        .await
        .expect("the endless blob was not cut off")
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry(_)), "{err}");
    assert!(err.to_string().contains("more than the 10 bytes"), "{err}");
    let blobs_dir = store.root().join("blobs/sha256");
    // The failed pull left its manifest and config blobs; sweep frees them.
    assert!(count_entries(&blobs_dir) >= 2);
    let summary = store.sweep().unwrap();
    assert!(summary.bytes_freed > 0);
    assert_eq!(count_entries(&blobs_dir), 0, "blobs left after sweep");
    assert_eq!(count_entries(&store.root().join("tmp")), 0);

    // An endless error body is read only up to its cap.
    let reference = format!("127.0.0.1:{port}/evil/errbody");
    let pull = store.pull(&reference, &opts, None);
    let err = tokio::time::timeout(Duration::from_secs(60), pull)
        .await
        .expect("the endless error body was read forever")
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");

    // Credentials are not sent to a plain-http token realm.
    let creds = PullOptions {
        username: Some("warren".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let err = store
        .pull(&format!("127.0.0.1:{port}/evil/httprealm"), &creds, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::Unauthorized(m) if m.contains("refusing to send credentials")),
        "{err}"
    );
}

#[tokio::test]
async fn relative_and_symlinked_roots_are_canonical() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let canonical = std::fs::canonicalize(&real).unwrap();

    // The same store through a path relative to the working directory.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count().saturating_sub(1));
    let relative = Path::new(&up).join(link.strip_prefix("/").unwrap());
    assert!(relative.is_relative());
    let store = ImageStore::open(&relative, ID_BASE, ID_COUNT)
        .unwrap()
        .with_sandboxes_dir(tmp.path().join("sandboxes"));
    assert_eq!(store.root(), canonical);

    let image = busybox_image();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[&image], single_index(&image), &[]);
    let info = store
        .import(stream(tar_dir(&layout)), "canon/bb", None)
        .await
        .unwrap();
    let dirs = store.layer_dirs(&info).unwrap();
    assert!(dirs.iter().all(|d| d.starts_with(&canonical)), "{dirs:?}");

    // A sandbox recorded its lowers through the symlink: the layers stay
    // after the image is removed, and go once the sandbox does.
    let via_link: Vec<_> = dirs
        .iter()
        .map(|d| link.join(d.strip_prefix(&canonical).unwrap()))
        .collect();
    let sandbox = tmp.path().join("sandboxes/sb1");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::write(
        sandbox.join("lowers.json"),
        serde_json::to_vec(&json!({ "lowers": via_link })).unwrap(),
    )
    .unwrap();
    store.remove("canon/bb").unwrap();
    store.sweep().unwrap();
    assert!(
        dirs.iter().all(|d| d.is_dir()),
        "a mounted layer was removed"
    );
    std::fs::remove_dir_all(&sandbox).unwrap();
    let summary = store.sweep().unwrap();
    assert_eq!(summary.layers_removed, dirs.len());
    assert_eq!(
        count_entries(&canonical.join("l")),
        0,
        "layers or markers left"
    );
}

#[tokio::test]
async fn sweep_frees_the_blobs_of_failed_imports() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store"), ID_BASE, ID_COUNT).unwrap();
    let image = busybox_image();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[&image], single_index(&image), &[]);
    // The top layer's blob is missing: the import fails after storing the
    // blobs it read before.
    let (top, _) = image.blobs.iter().rev().nth(1).unwrap();
    std::fs::remove_file(layout.join("blobs/sha256").join(&top["sha256:".len()..])).unwrap();
    let err = store
        .import(stream(tar_dir(&layout)), "broken/bb", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidArchive(_)), "{err}");
    let blobs_dir = store.root().join("blobs/sha256");
    eprintln!(
        "blobs left by the failed import: {}",
        count_entries(&blobs_dir)
    );
    store.sweep().unwrap();
    assert_eq!(count_entries(&blobs_dir), 0, "blobs left after sweep");
    assert_eq!(count_layers(&store.root().join("l")), 0);

    // A stored image keeps its blobs through a sweep.
    let info = store
        .import(stream(docker_archive(&image)), "good/bb", None)
        .await
        .unwrap();
    let before = count_entries(&blobs_dir);
    store.sweep().unwrap();
    assert_eq!(count_entries(&blobs_dir), before);
    assert!(store.layer_dirs(&info).is_ok());
}
