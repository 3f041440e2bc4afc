//! End-to-end: snapshots, sandboxes created from them and forks, through
//! the real daemon and CLI on a real kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use harness::Daemon;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `script` with `sh -c` in the sandbox; returns its stdout, panics
/// unless it exits 0.
fn sh(d: &Daemon, id: &str, script: &str) -> String {
    let out = d.warren(&["exec", id, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "{script}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn snapshot(d: &Daemon, id: &str) -> String {
    d.warren_json(&["snapshot", id])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn state(d: &Daemon, id: &str) -> String {
    d.warren_json(&["inspect", id])["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn api(d: &Daemon, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = harness::http_unix(&d.socket, method, path, body).unwrap();
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// Bytes of disk (st_blocks) under `dir`, hard links once, without
/// crossing into other file systems (sandbox disks, mounts).
fn disk_use(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != top.dev() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// The first file named `name` under `dir` (not following symlinks).
fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let kind = entry.file_type().ok()?;
        if entry.file_name() == name && kind.is_file() {
            return Some(entry.path());
        }
        if kind.is_dir() {
            if let Some(found) = find_file(&entry.path(), name) {
                return Some(found);
            }
        }
    }
    None
}

fn data_disk_use(d: &Daemon) -> u64 {
    let mut seen = HashSet::new();
    disk_use(&d.data_dir().join("sandboxes"), &mut seen)
        + disk_use(&d.data_dir().join("snapshots"), &mut seen)
}

const MIB: u64 = 1024 * 1024;

#[test]
fn snapshots_keep_files_deletions_and_opaque_directories_and_isolate_writers() {
    require_root!();
    let d = Daemon::start();
    let parent = d.create(&["--env", "FROM=parent"]);
    sh(
        &d,
        &parent,
        "mkdir -p /workspace/data && echo a > /workspace/data/a && echo b > /workspace/data/b \
         && echo doomed > /workspace/gone.txt && echo v1 > /workspace/file \
         && ln -s file /workspace/link && ln /workspace/file /workspace/hard \
         && chmod 640 /workspace/file && rmdir /srv",
    );
    let snap1 = snapshot(&d, &parent);
    assert!(snap1.starts_with("snap_") && snap1.len() == 25, "{snap1}");
    // Layers hold the sandbox's files (setuid ones too): like images/, only
    // root and the sandboxes' group may enter.
    let dir = std::fs::metadata(d.data_dir().join("snapshots")).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o710);
    assert_eq!((dir.uid(), dir.gid()), (0, 1_000_000));

    // Later changes of the parent are not in the snapshot.
    sh(
        &d,
        &parent,
        "echo v2 > /workspace/file && echo late > /workspace/late",
    );

    let child = d.create(&["--snapshot", &snap1]);
    let seen = sh(
        &d,
        &child,
        "cat /workspace/file /workspace/data/a /workspace/gone.txt; readlink /workspace/link; \
         stat -c %a /workspace/file; stat -c %h /workspace/hard; \
         test -e /workspace/late && echo has-late; test -e /srv && echo has-srv; echo $FROM",
    );
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["v1", "a", "doomed", "file", "640", "2", "parent"],
        "{seen}"
    );
    let sandbox = d.warren_json(&["inspect", &child]);
    assert_eq!(sandbox["snapshot"], snap1.as_str());

    // A deletion and a replaced directory over the snapshot's layer,
    // captured again: whiteouts and opaque directories survive the copy.
    sh(
        &d,
        &child,
        "rm /workspace/gone.txt && rm -rf /workspace/data && mkdir /workspace/data \
         && echo c > /workspace/data/c && echo child > /workspace/mine",
    );
    let snap2 = snapshot(&d, &child);
    let grandchild = d.create(&["--snapshot", &snap2]);
    let seen = sh(
        &d,
        &grandchild,
        "ls -A /workspace/data; test -e /workspace/gone.txt && echo has-gone; \
         cat /workspace/file /workspace/mine; test -e /srv && echo has-srv; true",
    );
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["c", "v1", "child"],
        "{seen}"
    );
    let info = d.warren_json(&["snapshots", "ls"]);
    let snap2_info = info
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == snap2.as_str())
        .unwrap()
        .clone();
    assert_eq!(snap2_info["layerCount"], 2);

    // The child's writes reach neither its parent nor a sibling from the
    // same snapshot.
    let sibling = d.create(&["--snapshot", &snap1]);
    let seen = sh(
        &d,
        &sibling,
        "cat /workspace/gone.txt; ls /workspace/data; test -e /workspace/mine && echo has-mine; true",
    );
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["doomed", "a", "b"],
        "{seen}"
    );
    let seen = sh(
        &d,
        &parent,
        "cat /workspace/file; test -e /workspace/mine && echo has-mine; ls /workspace/data",
    );
    assert_eq!(seen.lines().collect::<Vec<_>>(), ["v2", "a", "b"], "{seen}");

    // Deleting a snapshot in use is refused, naming the users.
    let (status, body) = api(&d, "DELETE", &format!("/v1/snapshots/{snap1}"), None);
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for user in [&child, &sibling, &grandchild, &snap2] {
        assert!(message.contains(user.as_str()), "{user} in {message}");
    }
    let out = d.warren(&["snapshots", "rm", &snap1]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&sibling),
        "{}",
        text(&out.stderr)
    );

    // Once nothing uses them, they go, files included.
    for id in [&grandchild, &child, &sibling] {
        assert!(d.warren(&["rm", id]).status.success());
    }
    let out = d.warren(&["snapshots", "rm", &snap2, &snap1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!d.data_dir().join("snapshots").join(&snap1).exists());
    let (status, _) = api(&d, "GET", &format!("/v1/snapshots/{snap1}"), None);
    assert_eq!(status, 404);
    // Unknown snapshots are 422 at create.
    let (status, body) = api(
        &d,
        "POST",
        "/v1/sandboxes",
        Some(&format!(r#"{{"snapshot":"{snap1}"}}"#)),
    );
    assert_eq!(status, 422, "{body}");
}

#[test]
fn fork_shares_one_copy_of_the_files_and_its_snapshot_goes_with_the_last_fork() {
    require_root!();
    let d = Daemon::start();
    let parent = d.create(&[]);
    sh(
        &d,
        &parent,
        "head -c 104857600 /dev/urandom > /workspace/big && echo marker > /workspace/m && sync",
    );
    let before = data_disk_use(&d);
    let forked = d.warren_json(&["fork", &parent, "-n", "3"]);
    let after = data_disk_use(&d);
    let children: Vec<String> = forked["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 3);
    let fork_snap = forked["snapshot"].as_str().unwrap().to_string();
    let grown = after.saturating_sub(before);
    eprintln!(
        "fork -n 3 of 100 MiB of changes: disk use grew by {:.1} MiB (3 full copies: 300 MiB)",
        grown as f64 / MIB as f64
    );
    // About one copy: more than 90 MiB (the layer), less than two copies
    // (three copies, 300 MiB, would fail here).
    assert!(grown > 90 * MIB, "grew by {grown} bytes");
    assert!(
        grown < 2 * 100 * MIB,
        "grew by {grown} bytes: files are not shared"
    );
    for child in &children {
        assert_eq!(state(&d, child), "running");
        let seen = sh(&d, child, "cat /workspace/m; stat -c %s /workspace/big");
        assert_eq!(seen.lines().collect::<Vec<_>>(), ["marker", "104857600"]);
    }
    // A fork's writes are its own.
    sh(&d, &children[0], "echo zero > /workspace/m");
    assert_eq!(sh(&d, &children[1], "cat /workspace/m").trim(), "marker");
    assert_eq!(sh(&d, &parent, "cat /workspace/m").trim(), "marker");

    let snap = d.warren_json(&["snapshots", "ls"]);
    let listed = snap
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == fork_snap.as_str())
        .expect("the fork snapshot is listed")
        .clone();
    assert_eq!(listed["kind"], "fork");
    assert_eq!(listed["usedBy"].as_array().unwrap().len(), 3);

    // Bad counts are 422 whatever their JSON form; memory forks need a
    // driver that can.
    for count in ["0", "101", "-1", "1.5", "1e30", "18446744073709551617"] {
        let (status, body) = api(
            &d,
            "POST",
            &format!("/v1/sandboxes/{parent}/fork"),
            Some(&format!(r#"{{"count":{count}}}"#)),
        );
        assert_eq!(status, 422, "count {count}: {body}");
    }
    let (status, body) = api(
        &d,
        "POST",
        &format!("/v1/sandboxes/{parent}/fork"),
        Some(r#"{"memory":true}"#),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "capability_unsupported");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("namespace"));

    // The fork snapshot goes with the last fork.
    for child in &children[..2] {
        assert!(d.warren(&["rm", child]).status.success());
    }
    let (status, _) = api(&d, "GET", &format!("/v1/snapshots/{fork_snap}"), None);
    assert_eq!(status, 200, "still used by one fork");
    assert!(d.warren(&["rm", &children[2]]).status.success());
    let (status, _) = api(&d, "GET", &format!("/v1/snapshots/{fork_snap}"), None);
    assert_eq!(status, 404, "the fork snapshot outlived its forks");
    assert!(!d.data_dir().join("snapshots").join(&fork_snap).exists());

    // A deleted sandbox cannot be forked (409 naming its state); an
    // unknown one is 404.
    assert!(d.warren(&["rm", &parent]).status.success());
    let (status, body) = api(
        &d,
        "POST",
        &format!("/v1/sandboxes/{parent}/fork"),
        Some("{}"),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{body}"
    );
    let out = d.warren(&["fork", &parent, "-n", "2"]);
    assert!(!out.status.success());
    // A user snapshot of a fork keeps the fork snapshot; deleting the user
    // snapshot after the last fork releases it.
    let second = d.create(&[]);
    let forked = d.warren_json(&["fork", &second, "-n", "1"]);
    let fork_snap = forked["snapshot"].as_str().unwrap().to_string();
    let child = forked["sandboxes"][0]["id"].as_str().unwrap().to_string();
    let user_snap = snapshot(&d, &child);
    assert!(d.warren(&["rm", &child]).status.success());
    let (status, _) = api(&d, "GET", &format!("/v1/snapshots/{fork_snap}"), None);
    assert_eq!(status, 200, "a user snapshot still stacks it");
    assert!(d.warren(&["snapshots", "rm", &user_snap]).status.success());
    let (status, _) = api(&d, "GET", &format!("/v1/snapshots/{fork_snap}"), None);
    assert_eq!(status, 404, "the fork snapshot outlived its last user");
    assert!(!d.data_dir().join("snapshots").join(&fork_snap).exists());
    assert!(d.warren(&["rm", &second]).status.success());
    assert_eq!(
        text(&out.stderr).trim().lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    let (status, _) = api(
        &d,
        "POST",
        "/v1/sandboxes/nosuchsandbox00000000/fork",
        Some("{}"),
    );
    assert_eq!(status, 404);
}

#[test]
fn paused_sandboxes_can_be_snapshotted_and_forked_and_stay_paused() {
    require_root!();
    let d = Daemon::start();
    let parent = d.create(&[]);
    sh(&d, &parent, "echo kept > /workspace/k");
    assert!(d.warren(&["pause", &parent]).status.success());
    let snap = snapshot(&d, &parent);
    assert_eq!(state(&d, &parent), "paused");
    let forked = d.warren_json(&["fork", &parent]);
    assert_eq!(state(&d, &parent), "paused");
    let child = d.create(&["--snapshot", &snap]);
    assert_eq!(sh(&d, &child, "cat /workspace/k").trim(), "kept");
    let fork_child = forked["sandboxes"][0]["id"].as_str().unwrap();
    assert_eq!(sh(&d, fork_child, "cat /workspace/k").trim(), "kept");
    assert!(d.warren(&["resume", &parent]).status.success());
    assert_eq!(sh(&d, &parent, "cat /workspace/k").trim(), "kept");

    // A sandbox with its own disk: its upper directory lives there; forks
    // get their own disks of the same size.
    let disked = d.create(&["--disk", "64"]);
    sh(&d, &disked, "echo on-disk > /workspace/d");
    let forked = d.warren_json(&["fork", &disked]);
    let fork_child = forked["sandboxes"][0]["id"].as_str().unwrap();
    assert_eq!(sh(&d, fork_child, "cat /workspace/d").trim(), "on-disk");
    assert_eq!(forked["sandboxes"][0]["resources"]["diskMb"], 64);

    // A running sandbox is thawed again after its snapshot.
    let snap2 = snapshot(&d, &parent);
    assert_eq!(state(&d, &parent), "running");
    assert_ne!(snap, snap2);
    // Snapshots of a stopped/failed sandbox or an unknown one are refused.
    let (status, _) = api(
        &d,
        "POST",
        "/v1/sandboxes/nosuchsandbox00000000/snapshots",
        None,
    );
    assert_eq!(status, 404);
}

/// An uncompressed layer tar: (path, mode, Some(content) for files, None
/// for directories) and (path, target) symlinks, all owned by root.
fn layer_tar(entries: &[(&str, u32, Option<&[u8]>)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_mode(*mode);
        match data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .unwrap();
            }
        }
    }
    for (path, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        builder.append_link(&mut header, path, target).unwrap();
    }
    builder.into_inner().unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    use sha2::{Digest, Sha256};
    let hex = hex::encode(Sha256::digest(bytes));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// A one-image OCI layout, tarred: busybox and /app with files in a
/// directory, env `GREETING=hello`, workdir /app.
fn busybox_image_tar(work: &Path) -> Option<std::path::PathBuf> {
    let busybox = std::fs::read("/bin/busybox").ok()?;
    let is_static = std::process::Command::new("file")
        .arg("/bin/busybox")
        .output()
        .map(|o| text(&o.stdout).contains("statically linked"))
        .unwrap_or(true);
    if !is_static {
        return None;
    }
    let applets = ["sh", "cat", "echo", "ls", "rm", "mkdir", "test"];
    let links: Vec<(String, &str)> = applets
        .iter()
        .map(|a| (format!("bin/{a}"), "busybox"))
        .collect();
    let links: Vec<(&str, &str)> = links.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    let layer = layer_tar(
        &[
            ("bin", 0o755, None),
            ("bin/busybox", 0o755, Some(&busybox)),
            ("tmp", 0o1777, None),
            ("app", 0o755, None),
            ("app/hello.txt", 0o644, Some(b"hello\n")),
            ("app/dir", 0o755, None),
            ("app/dir/x", 0o644, Some(b"x\n")),
            ("app/dir/y", 0o644, Some(b"y\n")),
        ],
        &links,
    );
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let diff_id = put_blob(&work.join("scratch"), &layer).0;
    let (layer_digest, layer_size) = put_blob(&layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = put_blob(&layout, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (digest, size) = put_blob(&layout, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let out = work.join("image.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&out).unwrap());
    builder.append_dir_all(".", &layout).unwrap();
    builder.finish().unwrap();
    Some(out)
}

#[test]
fn snapshots_of_oci_image_sandboxes_keep_deletions_of_image_files_and_hold_the_image() {
    require_root!();
    let work = tempfile::tempdir().unwrap();
    let Some(archive) = busybox_image_tar(work.path()) else {
        eprintln!("skipped: /bin/busybox is missing or not static (Debian package busybox-static)");
        return;
    };
    let d = Daemon::start();
    let out = d.warren(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "local/snap:v1",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    let parent = d.create(&["--image", "local/snap:v1"]);
    sh(
        &d,
        &parent,
        "rm /app/hello.txt && rm -rf /app/dir && mkdir /app/dir && echo z > /app/dir/z \
         && echo new > /app/new",
    );
    let snap = snapshot(&d, &parent);
    // The snapshot records the image layers its sandbox ran on (image
    // garbage collection keeps them even if the tag is re-pulled).
    let lowers: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            d.data_dir()
                .join("snapshots")
                .join(&snap)
                .join("lowers.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let image_layers: Vec<&str> = lowers["lowers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .filter(|l| l.contains("/images/l/"))
        .collect();
    assert!(!image_layers.is_empty(), "{lowers}");
    assert!(
        image_layers.iter().all(|l| Path::new(l).is_dir()),
        "{lowers}"
    );
    let child = d.create(&["--snapshot", &snap]);
    let sandbox = d.warren_json(&["inspect", &child]);
    assert_eq!(sandbox["image"], "local/snap:v1");
    let seen = sh(
        &d,
        &child,
        "ls /app/dir; cat /app/new; test -e /app/hello.txt && echo has-hello; echo $GREETING; \
         true",
    );
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["z", "new", "hello"],
        "{seen}"
    );

    // The image stays while a snapshot stacks on it, even without sandboxes.
    for id in [&child, &parent] {
        assert!(d.warren(&["rm", id]).status.success());
    }
    let out = d.warren(&["image", "rm", "local/snap:v1"]);
    assert!(!out.status.success(), "image removed under a snapshot");
    assert!(text(&out.stderr).contains(&snap), "{}", text(&out.stderr));
    let again = d.create(&["--snapshot", &snap]);
    assert_eq!(sh(&d, &again, "cat /app/new").trim(), "new");
    assert!(d.warren(&["rm", &again]).status.success());
    assert!(d.warren(&["snapshots", "rm", &snap]).status.success());
    let out = d.warren(&["image", "rm", "local/snap:v1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn snapshots_survive_a_daemon_restart_and_a_failed_fork_leaves_nothing() {
    require_root!();
    let mut d = Daemon::start();
    let parent = d.create(&[]);
    // A 50 GiB sparse file stays sparse in the snapshot's layer.
    sh(
        &d,
        &parent,
        "echo durable > /workspace/f && truncate -s 50G /workspace/sparse && echo x >> /workspace/sparse",
    );
    let snap = snapshot(&d, &parent);
    let layer = d.data_dir().join("snapshots").join(&snap).join("layer");
    let sparse = find_file(&layer, "sparse").expect("the sparse file is in the layer");
    let meta = std::fs::symlink_metadata(&sparse).unwrap();
    assert_eq!(meta.len(), (50 << 30) + 2);
    assert!(
        meta.blocks() * 512 < 16 * MIB,
        "the layer's copy uses {} bytes on disk",
        meta.blocks() * 512
    );

    // A fork whose copies cannot be created (an empty metadata key is
    // invalid) removes its snapshot and says what failed.
    let (status, body) = api(
        &d,
        "POST",
        &format!("/v1/sandboxes/{parent}/fork"),
        Some(r#"{"count":2,"metadata":{"":"x"}}"#),
    );
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("copy 1 of 2"), "{message}");
    let snaps = d.warren_json(&["snapshots", "ls"]);
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [snap.as_str()], "the failed fork's snapshot is gone");
    let dirs: Vec<_> = std::fs::read_dir(d.data_dir().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, std::slice::from_ref(&snap));
    let sandboxes = d.warren_json(&["ls"]);
    assert_eq!(sandboxes.as_array().map(Vec::len), Some(1), "{sandboxes}");

    // What a crash mid-capture or mid-delete leaves is removed at startup.
    let snaps_dir = d.data_dir().join("snapshots");
    for leftover in [
        ".tmp-snap_crashed",
        "snap_norowxxxxxxxxxxxxxxx",
        ".trash-snap_gone",
    ] {
        std::fs::create_dir_all(snaps_dir.join(leftover).join("layer")).unwrap();
    }
    d.restart();
    let mut dirs: Vec<_> = std::fs::read_dir(&snaps_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, std::slice::from_ref(&snap), "leftovers are removed");
    let child = d.create(&["--snapshot", &snap]);
    assert_eq!(sh(&d, &child, "cat /workspace/f").trim(), "durable");
    let listed = d.warren_json(&["snapshots", "ls"]);
    assert_eq!(listed[0]["usedBy"][0], child.as_str());
}
