//! The OCI bundle of a gVisor sandbox: its `config.json` and its root
//! overlay, mounted on the host before `runsc run` / `runsc restore`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use warren_linux::host_image::HostImage;
use warren_linux::launch::AgentInitConfig;

use crate::driver::{DriverError, SandboxSpec};

/// Where the agent's socket directory is mounted inside the sandbox.
pub(crate) const SOCKET_DIR_IN_SANDBOX: &str = "/.warren/sock";

/// Capabilities of the agent (PID 1, root inside gVisor's own kernel): the
/// container defaults plus what the agent needs to add users and switch to
/// them. gVisor implements them in its sentry; they do not reach the host.
/// No `CAP_NET_RAW` (there is no network) and no `CAP_MKNOD`.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// Host paths of one sandbox's bundle.
#[derive(Debug, Clone)]
pub(crate) struct BundlePaths {
    /// The bundle directory (`config.json` lives here).
    pub dir: PathBuf,
    /// The merged root, mounted by the driver.
    pub rootfs: PathBuf,
    /// Overlay upper directory: the sandbox's files.
    pub upper: PathBuf,
    /// Overlay work directory.
    pub work: PathBuf,
    /// Host directory bound at [`SOCKET_DIR_IN_SANDBOX`] (0700 root).
    pub sock_dir: PathBuf,
}

impl BundlePaths {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            rootfs: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            sock_dir: dir.join("sock"),
            dir,
        }
    }

    /// The agent socket on the host.
    pub(crate) fn socket(&self) -> PathBuf {
        self.sock_dir.join("agent.sock")
    }
}

fn create_err(step: &str, message: impl std::fmt::Display) -> DriverError {
    DriverError::Create {
        step: step.into(),
        message: message.to_string(),
    }
}

/// Mounts the overlay `lowers` (top first) + the bundle's upper at its rootfs.
pub(crate) fn mount_rootfs(paths: &BundlePaths, lowers: &[PathBuf]) -> Result<(), DriverError> {
    if warren_linux::disk::is_mount_point(&paths.rootfs) {
        return Ok(());
    }
    let mut lower = String::new();
    for (i, l) in lowers.iter().enumerate() {
        let s = l.to_string_lossy();
        if s.contains([':', ',']) {
            return Err(create_err(
                "overlay mount",
                format!("layer path {s:?} contains ':' or ','"),
            ));
        }
        if i > 0 {
            lower.push(':');
        }
        lower.push_str(&s);
    }
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        paths.upper.display(),
        paths.work.display()
    );
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| create_err("overlay mount", e))
    };
    let target = c(&paths.rootfs)?;
    let data = CString::new(data).map_err(|e| create_err("overlay mount", e))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(create_err(
            "overlay mount",
            format!(
                "{}: {}",
                paths.rootfs.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// Unmounts the bundle's rootfs when it is mounted.
pub(crate) fn unmount_rootfs(paths: &BundlePaths) -> Result<(), DriverError> {
    if warren_linux::disk::is_mount_point(&paths.rootfs) {
        warren_linux::disk::unmount(&paths.rootfs).map_err(|source| DriverError::Io {
            context: format!("unmount {}", paths.rootfs.display()),
            source,
        })?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Value {
    json!({
        "destination": target,
        "type": "bind",
        "source": source,
        "options": ["rbind", if read_only { "ro" } else { "rw" }],
    })
}

/// What [`config`] needs besides the spec.
pub(crate) struct BundleInputs<'a> {
    pub paths: &'a BundlePaths,
    pub host_image: &'a HostImage,
    pub agent_binary: &'a Path,
    /// Empty file and empty directory bound over hidden host paths.
    pub empty_file: &'a Path,
    pub empty_dir: &'a Path,
    /// Sandbox-private copies of /etc/passwd and /etc/group.
    pub private_files: &'a [(PathBuf, PathBuf)],
}

/// The bundle's `config.json`.
pub(crate) fn config(spec: &SandboxSpec, inputs: &BundleInputs<'_>) -> Result<Value, DriverError> {
    let init = AgentInitConfig {
        listen_fd: -1,
        listen_path: Some(format!("{SOCKET_DIR_IN_SANDBOX}/agent.sock")),
        workdir: spec.workdir.clone(),
        env: spec.env.clone(),
        user: spec.user.clone(),
    };
    let init = serde_json::to_string(&init).map_err(|e| create_err("encode agent config", e))?;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for b in &inputs.host_image.binds {
        mounts.push(bind(&b.source, &b.target, true));
    }
    for hidden in &inputs.host_image.hidden {
        // Only paths that exist can be covered (the /etc bind is read-only,
        // so gVisor could not create a mount point).
        let Ok(meta) = std::fs::symlink_metadata(hidden) else {
            continue;
        };
        let source = if meta.is_dir() {
            inputs.empty_dir
        } else {
            inputs.empty_file
        };
        mounts.push(bind(source, hidden, true));
    }
    for (source, target) in inputs.private_files {
        mounts.push(bind(source, target, false));
    }
    mounts.push(bind(
        inputs.agent_binary,
        Path::new(warren_linux::launch::AGENT_PATH_IN_SANDBOX),
        true,
    ));
    mounts.push(bind(
        &inputs.paths.sock_dir,
        Path::new(SOCKET_DIR_IN_SANDBOX),
        false,
    ));
    let period: u64 = 100_000;
    let quota = (spec.cpus * period as f64).round() as i64;
    let mut resources = json!({
        "memory": {"limit": spec.memory_bytes},
        "pids": {"limit": spec.pids_limit},
    });
    if quota > 0 {
        resources["cpu"] = json!({"quota": quota, "period": period});
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "noNewPrivileges": true,
            "user": {"uid": 0, "gid": 0},
            "args": [warren_linux::launch::AGENT_PATH_IN_SANDBOX, "init", init],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536}],
        },
        "root": {"path": inputs.paths.rootfs, "readonly": false},
        "hostname": spec.id,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"},
            ],
            "resources": resources,
            "cgroupsPath": format!("/warren-gvisor/{}", spec.id),
        },
    }))
}
