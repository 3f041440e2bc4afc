#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Privileged integration tests of change tracking with the namespace
//! driver: a real sandbox changes its root, and the driver lists and
//! archives exactly those changes from the host. They skip (with a printed
//! reason) when not run as root.

mod support;

use std::io::Read;

use support::{require_root, Harness};
use tokio::io::AsyncReadExt;
use warren_runtime::{Change, ChangeKind, Driver, DriverError, NamespaceConfig};

/// What the change tests ask of the harness besides the common helpers.
trait ChangeHarness {
    /// The sandbox's changes, as the driver lists them.
    async fn changes(&self, id: &str) -> Vec<Change>;
    /// The changes archive, read to the end.
    async fn changes_tar(&self, id: &str) -> Vec<u8>;
    /// Everything in the sandbox's directory but its rootfs (for messages).
    fn upper_listing(&self, id: &str) -> String;
}

impl ChangeHarness for Harness {
    async fn changes(&self, id: &str) -> Vec<Change> {
        let tracking = self
            .driver
            .changes()
            .expect("namespace driver tracks changes");
        tracking.changes(id).await.unwrap()
    }

    async fn changes_tar(&self, id: &str) -> Vec<u8> {
        let tracking = self
            .driver
            .changes()
            .expect("namespace driver tracks changes");
        let mut stream = tracking.changes_tar(id).await.unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        bytes
    }

    fn upper_listing(&self, id: &str) -> String {
        let dir = self.data.path().join("sandboxes").join(id);
        let out = std::process::Command::new("find")
            .arg(&dir)
            .args([
                "-path",
                &format!("{}/rootfs", dir.display()),
                "-prune",
                "-o",
            ])
            .arg("-print")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn listing(changes: &[Change]) -> Vec<(&str, ChangeKind, u64, bool)> {
    changes
        .iter()
        .map(|c| (c.path.as_str(), c.kind, c.size, c.is_dir))
        .collect()
}

/// One tar entry: path, type, content of a regular file, link target, uid.
type TarEntry = (String, tar::EntryType, Vec<u8>, Option<String>, u64);

fn tar_entries(bytes: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            let uid = e.header().uid().unwrap();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            (path, kind, content, link, uid)
        })
        .collect()
}

const SCRIPT: &str = "set -e
echo a > /workspace/new
mkdir -p /workspace/d
rm -rf /var/log
ln -s /etc/shadow /workspace/link
chmod 700 /mnt
rm -rf /var/cache && mkdir /var/cache && echo zz > /var/cache/z
mkdir -p /srv/deep/er && chown 1000:1000 /srv/deep/er
";

fn expected_after_script() -> Vec<(&'static str, ChangeKind, u64, bool)> {
    vec![
        ("/mnt", ChangeKind::Modified, 0, true),
        ("/srv/deep", ChangeKind::Added, 0, true),
        ("/srv/deep/er", ChangeKind::Added, 0, true),
        ("/var/cache", ChangeKind::Modified, 0, true),
        ("/var/cache/z", ChangeKind::Added, 3, false),
        ("/var/log", ChangeKind::Deleted, 0, true),
        ("/workspace/d", ChangeKind::Added, 0, true),
        ("/workspace/link", ChangeKind::Added, 0, false),
        ("/workspace/new", ChangeKind::Added, 2, false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_lists_and_archives_exactly_its_changes() {
    require_root!();
    let h = Harness::new();
    let spec = h.spec("chg1");
    h.create(&spec).await;

    // A fresh sandbox has changed nothing, even after running commands.
    let (code, _, err) = h.sh("chg1", "ls / /workspace /tmp > /dev/null").await;
    assert_eq!(code, 0, "{err}");
    let fresh = h.changes("chg1").await;
    assert!(
        fresh.is_empty(),
        "fresh sandbox reports {fresh:?}; its directory holds:\n{}",
        h.upper_listing("chg1")
    );

    let (code, _, err) = h.sh("chg1", SCRIPT).await;
    assert_eq!(code, 0, "{err}");
    let changes = h.changes("chg1").await;
    assert_eq!(listing(&changes), expected_after_script());

    let tar = h.changes_tar("chg1").await;
    assert!(
        !tar.windows(5).any(|w| w == b"root:"),
        "the host's /etc/shadow content leaked into the archive"
    );
    let entries = tar_entries(&tar);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "mnt",
            "srv/deep",
            "srv/deep/er",
            "var/cache",
            "var/cache/.wh..wh..opq",
            "var/cache/z",
            "var/.wh.log",
            "workspace/d",
            "workspace/link",
            "workspace/new",
        ]
    );
    let by_name = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
    let link = by_name("workspace/link");
    assert_eq!(link.1, tar::EntryType::Symlink);
    assert_eq!(link.3.as_deref(), Some("/etc/shadow"));
    assert!(link.2.is_empty());
    let new = by_name("workspace/new");
    assert_eq!(
        (new.1, new.2.as_slice(), new.4),
        (tar::EntryType::Regular, &b"a\n"[..], 0)
    );
    assert_eq!(by_name("var/cache/z").2, b"zz\n");
    assert_eq!(by_name("var/.wh.log").1, tar::EntryType::Regular);
    assert!(by_name("var/.wh.log").2.is_empty());
    // Owners are the sandbox's own ids, not the host's.
    assert_eq!(by_name("srv/deep/er").4, 1000);
    assert_eq!(by_name("srv/deep").4, 0);
    assert_eq!(by_name("mnt").1, tar::EntryType::Directory);

    // Deleting what it added brings the listing back to the deletions only.
    let (code, _, err) = h
        .sh(
            "chg1",
            "rm -rf /workspace/new /workspace/d /workspace/link /srv/deep",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let left: Vec<String> = h
        .changes("chg1")
        .await
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(left, vec!["/mnt", "/var/cache", "/var/cache/z", "/var/log"]);
    h.destroy("chg1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_by_the_sandbox_is_never_followed_on_the_host() {
    require_root!();
    let h = Harness::new();
    h.create(&h.spec("chg2")).await;
    // A directory the sandbox replaces with a symlink to a host directory
    // (the path is the host's: the upper directory is read on the host).
    let host_secret = tempfile::tempdir().unwrap();
    std::fs::write(host_secret.path().join("secret.txt"), "HOSTSECRET").unwrap();
    let script = format!(
        "mkdir -p /workspace/dir && ln -s {} /workspace/dir/escape && ln -s {}/secret.txt /workspace/file",
        host_secret.path().display(),
        host_secret.path().display()
    );
    let (code, _, err) = h.sh("chg2", &script).await;
    assert_eq!(code, 0, "{err}");
    let changes = h.changes("chg2").await;
    assert_eq!(
        listing(&changes),
        vec![
            ("/workspace/dir", ChangeKind::Added, 0, true),
            ("/workspace/dir/escape", ChangeKind::Added, 0, false),
            ("/workspace/file", ChangeKind::Added, 0, false),
        ]
    );
    let tar = h.changes_tar("chg2").await;
    assert!(!tar.windows(10).any(|w| w == b"HOSTSECRET"));
    let kinds: Vec<tar::EntryType> = tar_entries(&tar).iter().map(|e| e.1).collect();
    assert_eq!(
        kinds,
        vec![
            tar::EntryType::Directory,
            tar::EntryType::Symlink,
            tar::EntryType::Symlink
        ]
    );
    h.destroy("chg2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_a_sandbox_disk_and_unknown_sandboxes() {
    require_root!();
    if std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipped: mkfs.ext4 is missing (install e2fsprogs)");
        return;
    }
    let h = Harness::new();
    let mut spec = h.spec("chg3");
    spec.disk_mb = Some(64);
    h.create(&spec).await;
    assert!(
        h.changes("chg3").await.is_empty(),
        "{}",
        h.upper_listing("chg3")
    );
    let (code, _, err) = h
        .sh(
            "chg3",
            "head -c 100000 /dev/zero > /workspace/blob; rm -rf /srv",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        listing(&h.changes("chg3").await),
        vec![
            ("/srv", ChangeKind::Deleted, 0, true),
            ("/workspace/blob", ChangeKind::Added, 100_000, false),
        ]
    );
    let entries = tar_entries(&h.changes_tar("chg3").await);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].0, ".wh.srv");
    assert_eq!(entries[1].2.len(), 100_000);
    h.destroy("chg3").await;

    let tracking = h.driver.changes().unwrap();
    for id in ["chg3", "nosuch", "../..", ""] {
        match tracking.changes(id).await {
            Err(DriverError::NotFound(_)) => {}
            other => panic!("{id:?}: expected NotFound, got {other:?}"),
        }
        assert!(matches!(
            tracking.changes_tar(id).await,
            Err(DriverError::NotFound(_))
        ));
    }
}

/// A hand-made image layer: busybox as /bin/sh, an /etc/app.conf file and
/// a /data directory, owned by the sandbox's root (host uid `base`).
fn busybox_layer(dir: &std::path::Path, base: u32) -> bool {
    let busybox = std::path::Path::new("/bin/busybox");
    if !busybox.is_file() {
        return false;
    }
    for d in ["bin", "etc", "data/keep"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "rm", "echo", "mkdir", "ln"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/app.conf"), "original\n").unwrap();
    std::fs::write(dir.join("data/keep/old"), "old\n").unwrap();
    let out = std::process::Command::new("chown")
        .args(["-R", "-h", &format!("{base}:{base}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(out.success());
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_sandbox_lists_changes_against_its_layers() {
    require_root!();
    let h = Harness::new();
    let layer = h.data.path().join("test-layer");
    if !busybox_layer(&layer, NamespaceConfig::new("/").id_map_base) {
        eprintln!("skipped: /bin/busybox is missing (Debian package busybox-static)");
        return;
    }
    let mut spec = h.spec("chg4");
    spec.image = "test-busybox".into();
    spec.layers = vec![layer.clone()];
    spec.workdir = "/".into();
    h.create(&spec).await;
    let fresh = h.changes("chg4").await;
    assert!(
        fresh.is_empty(),
        "fresh image sandbox reports {fresh:?}; its directory holds:\n{}",
        h.upper_listing("chg4")
    );
    let (code, _, err) = h
        .sh(
            "chg4",
            "echo changed > /etc/app.conf && rm -rf /data/keep && mkdir /data/keep && echo n > /data/keep/new && rm /bin/rm",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        listing(&h.changes("chg4").await),
        vec![
            ("/bin/rm", ChangeKind::Deleted, 0, false),
            ("/data/keep", ChangeKind::Modified, 0, true),
            ("/data/keep/new", ChangeKind::Added, 2, false),
            ("/etc/app.conf", ChangeKind::Modified, 8, false),
        ]
    );
    let names: Vec<String> = tar_entries(&h.changes_tar("chg4").await)
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        names,
        vec![
            "bin/.wh.rm",
            "data/keep",
            "data/keep/.wh..wh..opq",
            "data/keep/new",
            "etc/app.conf",
        ]
    );
    h.destroy("chg4").await;
}
