//! The built-in `host` image: a read-only view of the host's system
//! directories over a small private root skeleton.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::launch::BindMount;

/// Top-level host entries shown in the sandbox. Symlinks (merged /usr) are
/// recreated, directories are bound read-only.
const SYSTEM_ENTRIES: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt",
];

/// Private, writable directories of the skeleton, with their modes.
const PRIVATE_DIRS: &[(&str, u32)] = &[
    ("tmp", 0o1777),
    ("home", 0o755),
    ("root", 0o700),
    ("workspace", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("var/log", 0o755),
    ("var/cache", 0o755),
    ("var/lib", 0o755),
    ("run", 0o755),
    ("mnt", 0o755),
    ("srv", 0o755),
    ("media", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    (".warren", 0o755),
];

/// Directories of the layer above OCI images: the mount points Warren needs,
/// real directories whatever the image has there (an image's symlink must
/// never steer setup, which runs before pivot_root).
const OCI_BASE_DIRS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    (".warren", 0o755),
];

/// Host secrets never shown, even though /etc is.
const HIDDEN_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssl/private",
    "/etc/sudoers",
    "/etc/sudoers.d",
];

/// The prepared image: a skeleton root for the overlay's lower layer, what to
/// bind into it, and what to hide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImage {
    /// Skeleton root directory.
    pub rootfs: PathBuf,
    /// Host directories bound read-only.
    pub binds: Vec<BindMount>,
    /// Paths hidden inside the sandbox.
    pub hidden: Vec<PathBuf>,
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Builds (idempotently) the top lower layer of OCI-image sandboxes under
/// `dir` and returns its root: the mount points for /proc, /sys, /dev, the
/// agent binary and a /tmp, owned by the sandbox root's host uid. Stacked
/// above the image's layers, its directories hide whatever the image has at
/// those paths (a directory there merges; a symlink or file is hidden).
pub fn prepare_oci_base(dir: &Path, uid: u32, gid: u32) -> io::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&rootfs)?;
    chown(&rootfs, uid, gid)?;
    make_owned_dirs(&rootfs, OCI_BASE_DIRS, uid, gid)?;
    Ok(rootfs)
}

/// Creates `dirs` (with their modes) under `rootfs`, owned by `uid:gid`,
/// and the empty file the agent binary is bound over.
fn make_owned_dirs(rootfs: &Path, dirs: &[(&str, u32)], uid: u32, gid: u32) -> io::Result<()> {
    for (name, mode) in dirs {
        let path = rootfs.join(name);
        std::fs::DirBuilder::new().recursive(true).create(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
        chown(&path, uid, gid)?;
    }
    let agent = rootfs.join(".warren/agent");
    if !agent.exists() {
        std::fs::write(&agent, b"")?;
    }
    Ok(())
}

/// Builds (idempotently) the skeleton under `dir`, owned by the sandbox root's
/// host uid so that the sandbox can create files in /, /tmp, /workspace, ….
/// `host_root` is normally `/`. `extra_hidden` are host paths (such as
/// Warren's own data directory) that must stay invisible.
pub fn prepare(
    dir: &Path,
    host_root: &Path,
    uid: u32,
    gid: u32,
    extra_hidden: &[PathBuf],
) -> io::Result<HostImage> {
    let rootfs = dir.join("rootfs");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&rootfs)?;
    chown(&rootfs, uid, gid)?;
    let mut binds = Vec::new();
    for name in SYSTEM_ENTRIES {
        let host = host_root.join(name);
        let inside = rootfs.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host)?;
            if std::fs::symlink_metadata(&inside).is_err() {
                std::os::unix::fs::symlink(&target, &inside)?;
            }
        } else if meta.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&inside)?;
            binds.push(BindMount {
                source: host,
                target: Path::new("/").join(name),
            });
        }
    }
    make_owned_dirs(&rootfs, PRIVATE_DIRS, uid, gid)?;
    let mut hidden: Vec<PathBuf> = HIDDEN_FILES.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir(host_root.join("etc/ssh")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("ssh_host_") && name.ends_with("_key") {
                hidden.push(Path::new("/etc/ssh").join(name));
            }
        }
    }
    for extra in extra_hidden {
        if binds.iter().any(|b| extra.starts_with(&b.source)) {
            hidden.push(extra.clone());
        }
    }
    Ok(HostImage {
        rootfs,
        binds,
        hidden,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_base_has_the_mount_points_and_the_agent_file() {
        let out = tempfile::tempdir().unwrap();
        let uid = nix_uid();
        let rootfs = prepare_oci_base(out.path(), uid, uid).unwrap();
        for (name, mode) in OCI_BASE_DIRS {
            let meta = std::fs::metadata(rootfs.join(name)).unwrap();
            assert!(meta.is_dir(), "{name}");
            assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{name}");
        }
        assert!(rootfs.join(".warren/agent").is_file());
        // Idempotent: a second daemon start finds it as it is.
        assert_eq!(prepare_oci_base(out.path(), uid, uid).unwrap(), rootfs);
    }

    #[test]
    fn skeleton_mirrors_symlinks_and_binds_directories() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(host.path().join("usr/bin")).unwrap();
        std::fs::create_dir_all(host.path().join("etc/ssh")).unwrap();
        std::fs::write(host.path().join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        std::os::unix::fs::symlink("usr/bin", host.path().join("bin")).unwrap();
        std::fs::create_dir_all(host.path().join("home/alice")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let uid = nix_uid();
        let img = prepare(
            out.path(),
            host.path(),
            uid,
            uid,
            &[host.path().join("etc/warren")],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(img.rootfs.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        let targets: Vec<_> = img.binds.iter().map(|b| b.target.clone()).collect();
        assert_eq!(targets, vec![PathBuf::from("/usr"), PathBuf::from("/etc")]);
        assert!(img.hidden.contains(&PathBuf::from("/etc/shadow")));
        assert!(img
            .hidden
            .contains(&PathBuf::from("/etc/ssh/ssh_host_ed25519_key")));
        assert!(img.hidden.contains(&host.path().join("etc/warren")));
        // /home is private and empty, never the host's.
        assert!(img.rootfs.join("home").is_dir());
        assert!(!img.rootfs.join("home/alice").exists());
        assert!(img.binds.iter().all(|b| !b.source.ends_with("home")));
        // Preparing twice is harmless.
        prepare(out.path(), host.path(), uid, uid, &[]).unwrap();
    }

    fn nix_uid() -> u32 {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    }
}
