//! The gVisor driver: each sandbox is a `runsc` container (its own user-space
//! kernel) started from an OCI bundle Warren generates under
//! `<data_dir>/sandboxes/<id>/`. Its root is an overlay the driver mounts on
//! the host (lower: the `host` image skeleton + snapshot layers, upper/work in
//! the sandbox directory, so files persist on the host); the host's system
//! directories are read-only bind mounts in the OCI spec, nothing else of the
//! host is visible. There is no network (`--network=none`).
//!
//! The daemon reaches the agent (PID 1 in the sandbox) over a unix socket the
//! agent binds itself in a bind-mounted 0700 host directory, which runsc's
//! `--host-uds=create` exposes on the host.
//!
//! Resource limits go in the OCI spec's `linux.resources` and runsc applies
//! them to the sandbox's cgroup (`/warren-gvisor/<id>`; this works on hybrid
//! v1+v2 hosts, so `--ignore-cgroups` is not used); runsc's state lives under
//! `<data_dir>/runsc` (`--root`), so `runsc list` there shows only Warren's
//! containers.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use warren_linux::host_image::{self, HostImage};

use crate::agent_conn::AgentConn;
use crate::agent_host::AgentHost;
use crate::driver::{
    Driver, DriverError, ExecOutcome, ExecSpec, MemoryForking, RuntimeInfo, SandboxSpec, Suspending,
};
use crate::gvisor_bundle::{self as bundle, BundleInputs, BundlePaths};
use crate::process_state;

/// File in the sandbox directory naming its current sandbox process
/// (`PID START_TIME`).
const PID_FILE: &str = "sandbox.pid";

/// How long a new (or restored) agent gets to open its socket.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the gVisor driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GvisorConfig {
    /// Warren's data directory.
    pub data_dir: PathBuf,
    /// The `runsc` binary.
    pub runsc: PathBuf,
}

impl GvisorConfig {
    /// The defaults: `runsc` found in PATH.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            runsc: PathBuf::from("runsc"),
        }
    }
}

/// Sandboxes under gVisor's `runsc`.
pub struct GvisorDriver {
    pub(crate) cfg: GvisorConfig,
    agent_path: PathBuf,
    pub(crate) host_image: HostImage,
    empty_file: PathBuf,
    empty_dir: PathBuf,
    agents: Mutex<HashMap<String, Arc<AgentConn>>>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let context = context.into();
    move |source| DriverError::Io { context, source }
}

/// Writes `bytes` to `path` readable by root only (mode 0600, also when the
/// file already existed): a bundle's config.json carries the sandbox's
/// environment, secrets included.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let context = || format!("write {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(context()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod 0600 {}", path.display())))?;
    file.write_all(bytes).map_err(io_err(context()))
}

pub(crate) fn create_err(step: &str, message: impl std::fmt::Display) -> DriverError {
    DriverError::Create {
        step: step.into(),
        message: message.to_string(),
    }
}

/// How long a runsc command may take: checkpoint and restore write or read
/// the sandbox's whole memory, the others are short.
fn runsc_time_limit(args: &[OsString]) -> Duration {
    match args.first().and_then(|a| a.to_str()) {
        Some("checkpoint" | "restore") => Duration::from_secs(300),
        _ => Duration::from_secs(60),
    }
}

fn timed_out(step: &str, limit: Duration) -> DriverError {
    create_err(
        step,
        format!(
            "runsc did not finish within {} s and was killed",
            limit.as_secs()
        ),
    )
}

/// The version line of `runsc --version`, or why it cannot run.
pub fn runsc_version(runsc: &Path) -> Result<String, String> {
    let out = std::process::Command::new(runsc)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", runsc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version: {}",
            runsc.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

impl GvisorDriver {
    /// Checks `runsc`, installs the agent binary and builds the `host` image
    /// skeleton (owned by root: gVisor's root is the host's root, confined
    /// by gVisor's kernel and its file proxy).
    pub fn new(cfg: GvisorConfig) -> Result<Self, DriverError> {
        runsc_version(&cfg.runsc).map_err(|e| create_err("runsc", e))?;
        let data = &cfg.data_dir;
        for dir in ["bin", "images/gvisor-host", "sandboxes", "runsc"] {
            std::fs::create_dir_all(data.join(dir))
                .map_err(io_err(format!("create {}", data.join(dir).display())))?;
        }
        // runsc's state is root's alone. `sandboxes/` is shared with the
        // namespace driver, whose sandboxes' mapped root reaches its layers
        // through the directory's group: 0710 keeps that group's traverse
        // right and shuts every other host user out.
        for (private, mode) in [("runsc", 0o700), ("sandboxes", 0o710)] {
            let dir = data.join(private);
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                .map_err(io_err(format!("chmod {}", dir.display())))?;
        }
        let agent_path = crate::namespace::install_agent(&data.join("bin"))?;
        let data_abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.clone());
        let image_dir = data.join("images/gvisor-host");
        let host_image = host_image::prepare(&image_dir, Path::new("/"), 0, 0, &[data_abs])
            .map_err(io_err("prepare the gVisor host image"))?;
        let empty_file = image_dir.join("empty-file");
        let empty_dir = image_dir.join("empty-dir");
        std::fs::create_dir_all(&empty_dir).map_err(io_err("create empty dir"))?;
        std::fs::write(&empty_file, b"").map_err(io_err("create empty file"))?;
        for p in [&empty_file, &empty_dir] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o500))
                .map_err(io_err(format!("chmod {}", p.display())))?;
        }
        Ok(Self {
            cfg,
            agent_path,
            host_image,
            empty_file,
            empty_dir,
            agents: Mutex::default(),
        })
    }

    pub(crate) fn paths(&self, id: &str) -> BundlePaths {
        BundlePaths::new(self.cfg.data_dir.join("sandboxes").join(id))
    }

    /// runsc's flags shared by every command (they must match between run,
    /// checkpoint and restore).
    fn global_args(&self) -> Vec<OsString> {
        vec![
            "--root".into(),
            self.cfg.data_dir.join("runsc").into_os_string(),
            "--network=none".into(),
            "--host-uds=create".into(),
            // Root writes go to the overlay upper on the host (the sandbox's
            // files persist and snapshots copy them), never to a memory
            // overlay inside runsc whatever this runsc's default is.
            "--overlay2=none".into(),
        ]
    }

    /// Runs a short runsc command; a failure carries runsc's stderr.
    pub(crate) async fn runsc(
        &self,
        step: &str,
        args: &[OsString],
    ) -> Result<Vec<u8>, DriverError> {
        let child = tokio::process::Command::new(&self.cfg.runsc)
            .args(self.global_args())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| create_err(step, format!("{}: {e}", self.cfg.runsc.display())))?;
        // Dropping the output future on expiry kills runsc (kill_on_drop).
        let output = child.wait_with_output();
        tokio::pin!(output);
        let limit = runsc_time_limit(args);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        // runsc waits for sandbox processes to exit; when they are our
        // children (the daemon is a subreaper) it is us who must reap them.
        let out = loop {
            tokio::select! {
                out = &mut output => break out,
                () = &mut deadline => {
                    reap_runsc_zombies();
                    return Err(timed_out(step, limit));
                }
                () = tokio::time::sleep(Duration::from_millis(5)) => reap_runsc_zombies(),
            }
        }
        .map_err(|e| create_err(step, format!("{}: {e}", self.cfg.runsc.display())))?;
        reap_runsc_zombies();
        if !out.status.success() {
            return Err(create_err(
                step,
                format!(
                    "runsc {} failed ({}): {}",
                    args.first()
                        .map(|a| a.to_string_lossy())
                        .unwrap_or_default(),
                    out.status,
                    short(&out.stderr)
                ),
            ));
        }
        Ok(out.stdout)
    }

    /// Runs a runsc command that leaves the sandbox running in the
    /// background (`run --detach`, `restore --detach`): its output goes to
    /// `runsc.log` in the bundle (the sandbox inherits it), in its own
    /// process group so the daemon's terminal signals never reach it.
    pub(crate) async fn runsc_detached(
        &self,
        step: &str,
        paths: &BundlePaths,
        args: &[OsString],
    ) -> Result<(), DriverError> {
        let log_path = paths.dir.join("runsc.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("open {}", log_path.display())))?;
        let len_before = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log2 = log.try_clone().map_err(io_err("dup runsc log"))?;
        let mut child = tokio::process::Command::new(&self.cfg.runsc)
            .args(self.global_args())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| create_err(step, format!("{}: {e}", self.cfg.runsc.display())))?;
        let limit = runsc_time_limit(args);
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status
                .map_err(|e| create_err(step, format!("{}: {e}", self.cfg.runsc.display())))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(timed_out(step, limit));
            }
        };
        if !status.success() {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let start = usize::try_from(len_before).unwrap_or(0).min(text.len());
            return Err(create_err(
                step,
                format!("runsc failed ({status}): {}", short(&text[start..])),
            ));
        }
        Ok(())
    }

    /// The host pid of the container's sandbox process and its start time.
    pub(crate) async fn sandbox_pid(&self, id: &str) -> Result<(i32, u64), DriverError> {
        let out = self
            .runsc("runsc state", &["state".into(), id.into()])
            .await?;
        let state: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| create_err("runsc state", e))?;
        let pid = state
            .get("pid")
            .and_then(serde_json::Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| create_err("runsc state", format!("no pid in {state}")))?;
        let start = process_state::stat(pid).map(|(_, s)| s).unwrap_or_default();
        // The current sandbox process, which a restore (suspend, fork)
        // replaces while the service keeps the RuntimeInfo of the create.
        let record = self.paths(id).dir.join(PID_FILE);
        std::fs::write(&record, format!("{pid} {start}"))
            .map_err(io_err(format!("write {}", record.display())))?;
        Ok((pid, start))
    }

    /// The container's runsc status (`running`, `stopped`, …), if it exists.
    pub(crate) async fn status(&self, id: &str) -> Option<String> {
        let out = self
            .runsc("runsc state", &["state".into(), id.into()])
            .await
            .ok()?;
        let state: serde_json::Value = serde_json::from_slice(&out).ok()?;
        state.get("status")?.as_str().map(str::to_string)
    }

    /// Connects to a (new or restored) agent, waiting for its socket.
    pub(crate) async fn connect_agent(&self, id: &str) -> Result<Arc<AgentConn>, DriverError> {
        let socket = self.paths(id).socket();
        let deadline = Instant::now() + AGENT_START_TIMEOUT;
        loop {
            match connect_socket(&socket).await {
                Ok(conn) => {
                    self.agents
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.to_string(), Arc::clone(&conn));
                    return Ok(conn);
                }
                Err(e) if Instant::now() >= deadline => {
                    let log =
                        std::fs::read(self.paths(id).dir.join("runsc.log")).unwrap_or_default();
                    return Err(create_err(
                        "agent start",
                        format!("{e} (runsc log: {})", short(&log)),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// The sandbox's current process (from its pid file), else `info`'s.
    fn current_process(&self, id: &str, info: &RuntimeInfo) -> (i32, u64) {
        std::fs::read_to_string(self.paths(id).dir.join(PID_FILE))
            .ok()
            .and_then(|text| {
                let mut it = text.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .unwrap_or((info.pid, info.start_time))
    }

    pub(crate) fn forget_conn(&self, id: &str) {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The overlay lowers of a sandbox, top first.
    pub(crate) fn lowers(&self, spec: &SandboxSpec) -> Vec<PathBuf> {
        let mut lowers = spec.snapshot_layers.clone();
        lowers.push(self.host_image.rootfs.clone());
        lowers
    }

    /// Creates the bundle directory, mounts its root and writes config.json
    /// (off the async threads).
    pub(crate) async fn prepare_bundle(
        &self,
        spec: &SandboxSpec,
    ) -> Result<BundlePaths, DriverError> {
        let paths = self.paths(&spec.id);
        let lowers = self.lowers(spec);
        let host_image = self.host_image.clone();
        let files = [
            self.agent_path.clone(),
            self.empty_file.clone(),
            self.empty_dir.clone(),
        ];
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            let [agent_binary, empty_file, empty_dir] = &files;
            for d in [
                &paths.dir,
                &paths.upper,
                &paths.work,
                &paths.rootfs,
                &paths.sock_dir,
            ] {
                std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
            }
            // Only root may reach the agent's socket.
            std::fs::set_permissions(&paths.sock_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err(format!("chmod {}", paths.sock_dir.display())))?;
            let private_files = private_account_files(&paths.dir)?;
            bundle::mount_rootfs(&paths, &lowers)?;
            let inputs = BundleInputs {
                paths: &paths,
                host_image: &host_image,
                agent_binary,
                empty_file,
                empty_dir,
                private_files: &private_files,
            };
            let config = bundle::config(&spec, &inputs)?;
            let path = paths.dir.join("config.json");
            let text = serde_json::to_vec_pretty(&config)
                .map_err(|e| create_err("write config.json", e))?;
            write_private(&path, &text)?;
            Ok(paths)
        })
        .await
        .map_err(|e| DriverError::Io {
            context: "prepare the bundle".into(),
            source: std::io::Error::other(e),
        })?
    }

    async fn launch(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        let paths = self.prepare_bundle(spec).await?;
        let mut args: Vec<OsString> = vec!["run".into(), "--detach".into(), "--bundle".into()];
        args.push(paths.dir.clone().into_os_string());
        args.push(spec.id.clone().into());
        self.runsc_detached("runsc run", &paths, &args).await?;
        let (pid, start_time) = self.sandbox_pid(&spec.id).await?;
        self.connect_agent(&spec.id).await?;
        Ok(RuntimeInfo {
            pid,
            start_time,
            agent_socket: paths.socket(),
        })
    }

    /// Removes the runsc container, the root mount and the sandbox directory.
    /// Idempotent.
    pub(crate) async fn remove(
        &self,
        id: &str,
        info: Option<&RuntimeInfo>,
    ) -> Result<(), DriverError> {
        self.forget_conn(id);
        // A paused container is resumed so that its processes can die.
        if self.status(id).await.as_deref() == Some("paused") {
            let _ = crate::Pausable::resume(self, id).await;
        }
        if let Err(e) = self
            .runsc(
                "runsc delete",
                &["delete".into(), "--force".into(), id.into()],
            )
            .await
        {
            // Gone already is fine; anything else is reported once the rest
            // is cleaned up.
            if self.status(id).await.is_some() {
                return Err(e);
            }
        }
        if let Some(info) = info {
            let (pid, start) = self.current_process(id, info);
            tokio::task::spawn_blocking(move || process_state::kill_and_wait(pid, start))
                .await
                .map_err(|e| DriverError::Io {
                    context: "wait for sandbox exit".into(),
                    source: std::io::Error::other(e),
                })?;
        }
        let paths = self.paths(id);
        crate::gvisor_suspend::unmount_rootfs(&paths).await?;
        remove_cgroups(id).await;
        crate::gvisor_suspend::remove_dir(&paths.dir).await
    }
}

/// The sandbox's own copies of /etc/passwd and /etc/group.
fn private_account_files(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, DriverError> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(io_err(format!("create {}", etc.display())))?;
    let mut files = Vec::new();
    for name in ["passwd", "group"] {
        let host = Path::new("/etc").join(name);
        let copy = etc.join(name);
        if !copy.exists() {
            match std::fs::copy(&host, &copy) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("copy {}", host.display()))(e)),
            }
        }
        files.push((copy, host));
    }
    Ok(files)
}

/// Removes the sandbox's cgroup (`/warren-gvisor/<id>`) in every hierarchy,
/// best effort: runsc usually does, but not when the sandbox was killed.
async fn remove_cgroups(id: &str) {
    let id = id.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = vec![root.join("warren-gvisor").join(&id)];
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.filter_map(Result::ok) {
                dirs.push(entry.path().join("warren-gvisor").join(&id));
            }
        }
        for dir in dirs {
            // rmdir only removes an empty cgroup; a live one stays.
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound
                    && e.raw_os_error() != Some(libc::ENOTDIR)
                {
                    tracing::debug!(dir = %dir.display(), error = %e, "remove gVisor cgroup");
                }
            }
        }
    })
    .await;
}

/// Reaps exited runsc sandbox and gofer processes that were reparented to
/// this process (a child subreaper, see `NamespaceDriver::new`); runsc
/// re-executes itself as `/proc/self/exe`, so their name is `exe`. The runsc
/// commands the driver runs itself are named `runsc` and left to tokio.
fn reap_runsc_zombies() {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(me.as_str()) && head.ends_with("(exe") {
            let mut status = 0;
            // SAFETY: waitpid on one exited child of ours, without blocking.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }
}

/// Opens `path` (a file in a sandbox-writable directory) without following a
/// final symlink and without blocking on a FIFO, and returns it with its
/// metadata.
fn open_nofollow(
    path: &Path,
    flags: libc::c_int,
) -> std::io::Result<(std::os::fd::OwnedFd, libc::stat)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open and st is a live stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((fd, st))
}

/// Connects to the agent socket at `path` in the sandbox-writable socket
/// directory: the final component must be a socket itself (not a symlink
/// the sandbox planted to another sandbox's socket), and the connection
/// goes through the opened inode, so the check cannot be raced.
pub(crate) async fn connect_socket(path: &Path) -> Result<Arc<AgentConn>, DriverError> {
    use std::os::fd::AsRawFd;
    let unavailable =
        |what: String| DriverError::AgentUnavailable(format!("{}: {what}", path.display()));
    let (fd, st) = open_nofollow(path, libc::O_PATH).map_err(|e| unavailable(e.to_string()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(unavailable("not a unix socket".into()));
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let conn = AgentConn::connect(&via).await;
    drop(fd);
    conn.map_err(|e| unavailable(e.to_string()))
}

/// Longest agent verdict the daemon reads from `quiesced`.
const VERDICT_MAX: usize = 512;

/// The agent's verdict in the sandbox-writable file `path`, if it wrote one:
/// a regular file with a single link, read up to [`VERDICT_MAX`] bytes.
/// Anything else (symlink, FIFO, device, hard link) is refused without
/// reading it.
pub(crate) fn read_verdict(path: &Path) -> Result<Option<String>, DriverError> {
    use std::io::Read;
    let refused = |why: &str| create_err("quiesce agent", format!("{}: {why}", path.display()));
    let (fd, st) = match open_nofollow(path, libc::O_RDONLY) {
        Ok(v) => v,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused("is a symlink, not the agent's verdict"))
        }
        Err(e) => return Err(refused(&e.to_string())),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
        return Err(refused("is not a regular file the agent wrote"));
    }
    let mut buf = Vec::with_capacity(VERDICT_MAX);
    std::fs::File::from(fd)
        .take(VERDICT_MAX as u64)
        .read_to_end(&mut buf)
        .map_err(|e| refused(&e.to_string()))?;
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    Ok((!text.is_empty()).then_some(text))
}

/// The last part of a tool's output, for error messages.
pub(crate) fn short(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    // runsc prints Go stack traces after the message: keep the message.
    let text = text.split("\ngoroutine ").next().unwrap_or(text);
    let chars: Vec<char> = text.chars().collect();
    if chars.len() > 2000 {
        chars[chars.len() - 2000..].iter().collect()
    } else {
        text.to_string()
    }
}

#[async_trait]
impl AgentHost for GvisorDriver {
    fn agent_socket(&self, id: &str) -> PathBuf {
        self.paths(id).socket()
    }

    async fn live_conn(&self, id: &str) -> Result<Arc<AgentConn>, DriverError> {
        let existing = self
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        if let Some(conn) = existing.filter(|c| c.is_alive()) {
            return Ok(conn);
        }
        let conn = connect_socket(&self.paths(id).socket()).await?;
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), Arc::clone(&conn));
        Ok(conn)
    }
}

#[async_trait]
impl Driver for GvisorDriver {
    fn name(&self) -> &'static str {
        "gvisor"
    }

    fn has_image(&self, image: &str) -> bool {
        image == "host"
    }

    fn capacity(&self) -> crate::HostCapacity {
        crate::HostCapacity::detect_for(&self.cfg.data_dir)
    }

    fn processes(&self) -> Option<&dyn crate::ProcessControl> {
        Some(self)
    }

    fn files(&self) -> Option<&dyn crate::FileControl> {
        Some(self)
    }

    fn pausable(&self) -> Option<&dyn crate::Pausable> {
        Some(self)
    }

    fn snapshots(&self) -> Option<&dyn crate::Snapshottable> {
        Some(self)
    }

    fn suspending(&self) -> Option<&dyn Suspending> {
        Some(self)
    }

    fn memory_forking(&self) -> Option<&dyn MemoryForking> {
        Some(self)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError> {
        if !spec.layers.is_empty() || !self.has_image(&spec.image) {
            return Err(DriverError::UnknownImage(spec.image.clone()));
        }
        if spec.disk_mb.is_some() {
            return Err(DriverError::Invalid(
                "the gvisor driver does not bound disk yet; omit diskMb".into(),
            ));
        }
        match self.launch(spec).await {
            Ok(info) => Ok(info),
            Err(e) => {
                if let Err(cleanup) = self.remove(&spec.id, None).await {
                    tracing::warn!(id = %spec.id, error = %cleanup, "cleanup after failed create");
                }
                Err(e)
            }
        }
    }

    fn is_alive(&self, id: &str, info: &RuntimeInfo) -> bool {
        let (pid, start) = self.current_process(id, info);
        process_state::is_same_live_process(pid, start)
    }

    async fn adopt(&self, id: &str, info: &RuntimeInfo) -> Result<(), DriverError> {
        if !self.is_alive(id, info) {
            return Err(DriverError::AgentUnavailable(format!(
                "gVisor sandbox process (pid {}) is gone",
                info.pid
            )));
        }
        let conn = connect_socket(&info.agent_socket).await?;
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), conn);
        Ok(())
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecOutcome, DriverError> {
        let conn = self.live_conn(id).await?;
        crate::agent_host::exec(&conn, spec).await
    }

    async fn destroy(&self, id: &str, info: Option<&RuntimeInfo>) -> Result<(), DriverError> {
        self.remove(id, info).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn bundle_config_is_written_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_private(&path, b"{\"env\": [\"KEY=long value\"]}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // An existing, wider file is narrowed and truncated.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn verdicts_are_read_only_from_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "TOPSECRET").unwrap();
        let marker = dir.path().join("quiesced");
        assert!(read_verdict(&marker).unwrap().is_none());

        std::os::unix::fs::symlink(&secret, &marker).unwrap();
        let e = read_verdict(&marker).unwrap_err().to_string();
        assert!(!e.contains("TOPSECRET") && e.contains("symlink"), "{e}");
        std::fs::remove_file(&marker).unwrap();

        // A FIFO nobody writes: refused at once, not read (which would block).
        let c = std::ffi::CString::new(marker.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_verdict(&marker).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(&marker).unwrap();

        // A hard link to another file is not the agent's verdict either.
        std::fs::hard_link(&secret, &marker).unwrap();
        let e = read_verdict(&marker).unwrap_err().to_string();
        assert!(!e.contains("TOPSECRET"), "{e}");
        std::fs::remove_file(&marker).unwrap();

        // Long content is cut at VERDICT_MAX bytes.
        std::fs::write(&marker, "x".repeat(10_000)).unwrap();
        assert_eq!(read_verdict(&marker).unwrap().unwrap().len(), VERDICT_MAX);
        std::fs::write(&marker, "ok\n").unwrap();
        assert_eq!(read_verdict(&marker).unwrap().as_deref(), Some("ok"));
    }

    #[tokio::test]
    async fn sockets_are_not_connected_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.sock");
        let listener = std::os::unix::net::UnixListener::bind(&real).unwrap();
        listener.set_nonblocking(true).unwrap();
        let link = dir.path().join("agent.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = connect_socket(&link).await.err().unwrap().to_string();
        assert!(e.contains("symbolic links") || e.contains("socket"), "{e}");
        assert!(listener.accept().is_err(), "connected through the symlink");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = connect_socket(&file).await.err().unwrap().to_string();
        assert!(e.contains("not a unix socket"), "{e}");
    }
}
